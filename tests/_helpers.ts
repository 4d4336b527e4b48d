// Shared helpers for the tests that run over real loopback sockets: raw
// misbehaving peers, deadlines, TLS certificates and child-process peers.

import assert from "node:assert/strict";
import { type Frame, FrameReader } from "../frames.ts";
import { acceptKey } from "../protocol.ts";
import { type Handler, serve, type ServeOptions, type Server } from "../server.ts";

export const HOST = "127.0.0.1";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Resolves after `ms`. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A promise with its resolve and reject functions. */
export interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

/** Creates a {@linkcode Deferred}. */
export function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void, reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Settles like `promise`, or rejects when it takes longer than `ms` (the timer is always cleared). */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * How late a timer may fire in a test, in ms. The suite runs `--parallel` on loaded machines,
 * where timers and I/O run seconds late; an upper bound on a timeout is its nominal time plus
 * this. It stays well under the library's default timeouts (10 s and more), so a test still
 * fails when an option is ignored (its default would apply) or the timeout never fires.
 */
export const TIMER_SLACK = 5_000;

/**
 * Asserts that `elapsed` ms is at least `atLeast` (a timeout never fires early: a lower bound
 * can't flake, a machine is never faster than its clock) and under `nominal + TIMER_SLACK`.
 */
export function assertTook(elapsed: number, atLeast: number, nominal: number, what: string): void {
  const limit = nominal + TIMER_SLACK;
  assert.ok(
    elapsed >= atLeast && elapsed < limit,
    `${what} after ${Math.round(elapsed)} ms, expected from ${atLeast} ms to under ${limit} ms`,
  );
}

/** Polls `condition` every few ms; throws if it isn't true within `ms`. */
export async function waitFor(
  condition: () => boolean,
  what: string,
  ms: number = TIMER_SLACK,
): Promise<void> {
  const deadline = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`${what}: not true within ${ms} ms`);
    await delay(2);
  }
}

/** Whether `promise` is still pending after `ms`. */
export async function pendingAfter(promise: Promise<unknown>, ms: number): Promise<boolean> {
  const timeout = Symbol("timeout");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const result = await Promise.race([
    promise.then(() => undefined, () => undefined),
    new Promise<symbol>((resolve) => (timer = setTimeout(() => resolve(timeout), ms))),
  ]);
  clearTimeout(timer);
  return result === timeout;
}

/** Awaits `promise` and returns what it rejected with; fails when it resolves. */
export async function rejection(promise: PromiseLike<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail("expected a rejection");
}

/** Deterministic pseudo-random bytes (incompressible enough for size tests). */
export function randomBytes(length: number, seed = 1): Uint8Array {
  const bytes = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

/** An echo handler: every message goes back as it came. */
export const echo: Handler = async (ws) => {
  for await (const message of ws) await ws.send(message);
};

/** A server on 127.0.0.1 with a free port, and its `ws:` URI. */
export function serveLocal(
  handler: Handler,
  options: ServeOptions = {},
): { server: Server; uri: string } {
  const server = serve(handler, { hostname: HOST, port: 0, ...options });
  return { server, uri: `ws://${HOST}:${server.port}/` };
}

/** A free TCP port on 127.0.0.1 (nothing listens on it when this returns). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** A WebSocket handshake request as a raw HTTP string. */
export function handshakeRequest(
  port: number,
  options: { path?: string; key?: string; headers?: Record<string, string> } = {},
): string {
  const headers: Record<string, string> = {
    Host: `${HOST}:${port}`,
    Upgrade: "websocket",
    Connection: "Upgrade",
    "Sec-WebSocket-Key": options.key ?? "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
    ...options.headers,
  };
  let text = `GET ${options.path ?? "/"} HTTP/1.1\r\n`;
  for (const [name, value] of Object.entries(headers)) {
    if (value !== "") text += `${name}: ${value}\r\n`;
  }
  return text + "\r\n";
}

/** The 101 answer to a handshake request head, as a raw HTTP string. */
export function handshakeResponse(requestHead: string, extraHeaders = ""): string {
  const key = /^sec-websocket-key:\s*(\S+)\s*$/im.exec(requestHead)?.[1];
  assert.ok(key !== undefined, `no Sec-WebSocket-Key in ${requestHead}`);
  return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
    `Sec-WebSocket-Accept: ${acceptKey(key)}\r\n${extraHeaders}\r\n`;
}

/** A parsed HTTP response head. */
export interface HttpHead {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/**
 * A peer speaking raw bytes over a TCP connection: it does exactly what the
 * test says, nothing more (no pongs, no close replies).
 */
export class RawPeer {
  readonly conn: Deno.Conn;
  #buffer = new Uint8Array(0);
  #reader: FrameReader | undefined;
  #closed = false;

  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }

  /** Connects to 127.0.0.1:`port`. */
  static async connect(port: number): Promise<RawPeer> {
    return new RawPeer(await Deno.connect({ hostname: HOST, port }));
  }

  /** Writes a string (Latin-1 is enough for HTTP) or bytes, all of it. */
  async write(data: string | Uint8Array): Promise<void> {
    let bytes = typeof data === "string" ? encoder.encode(data) : data;
    while (bytes.length !== 0) bytes = bytes.subarray(await this.conn.write(bytes));
  }

  /** Reads more bytes into the buffer; `false` at the end of the stream or on a reset. */
  async #fill(): Promise<boolean> {
    const chunk = new Uint8Array(64 * 1024);
    let count: number | null;
    try {
      count = await this.conn.read(chunk);
    } catch (error) {
      if (error instanceof Deno.errors.ConnectionReset) return false;
      throw error;
    }
    if (count === null) return false;
    const merged = new Uint8Array(this.#buffer.length + count);
    merged.set(this.#buffer);
    merged.set(chunk.subarray(0, count), this.#buffer.length);
    this.#buffer = merged;
    return true;
  }

  /** Reads an HTTP head (up to the empty line); `undefined` when the stream ends first. */
  async readHead(): Promise<string | undefined> {
    while (true) {
      const end = indexOfHeadEnd(this.#buffer);
      if (end !== -1) {
        const head = decoder.decode(this.#buffer.subarray(0, end));
        this.#buffer = this.#buffer.slice(end + 4);
        return head;
      }
      if (!(await this.#fill())) return undefined;
    }
  }

  /** Reads a whole HTTP response (head and a `Content-Length` body, or up to EOF). */
  async readResponse(): Promise<HttpHead> {
    const head = await this.readHead();
    assert.ok(head !== undefined, "connection closed before an HTTP response");
    const [statusLine, ...lines] = head.split("\r\n");
    const headers: Record<string, string> = {};
    for (const line of lines) {
      const colon = line.indexOf(":");
      headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
    }
    const length = headers["content-length"];
    if (length !== undefined) {
      while (this.#buffer.length < Number(length)) {
        if (!(await this.#fill())) break;
      }
    } else {
      while (await this.#fill());
    }
    const body = decoder.decode(this.#buffer);
    this.#buffer = new Uint8Array(0);
    return { status: Number(statusLine.split(" ")[1]), headers, body };
  }

  /** Reads the next frame (masked ones when `fromClient`); `undefined` at the end of the stream. */
  async readFrame(fromClient = false): Promise<Frame | undefined> {
    const reader = this.#reader ??= new FrameReader({ mask: fromClient, maxSize: Infinity });
    while (true) {
      if (this.#buffer.length !== 0) {
        reader.feed(this.#buffer);
        this.#buffer = new Uint8Array(0);
      }
      const frame = reader.next();
      if (frame !== undefined) return frame;
      if (!(await this.#fill())) return undefined;
    }
  }

  /** Reads until the other side closes; resolves with the bytes read (at most `limit`). */
  async readToEnd(limit = 1024 * 1024): Promise<Uint8Array> {
    while (this.#buffer.length < limit && await this.#fill());
    return this.#buffer;
  }

  /** Closes the socket (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // already closed by a failed read or write
    }
  }
}

/** Sends `request` on a new raw connection to 127.0.0.1:`port` and reads the whole response. */
export async function rawExchange(port: number, request: string): Promise<HttpHead> {
  const peer = await RawPeer.connect(port);
  try {
    await peer.write(request);
    return await within(peer.readResponse(), 5000, "HTTP response");
  } finally {
    peer.close();
  }
}

function indexOfHeadEnd(bytes: Uint8Array): number {
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) {
      return i;
    }
  }
  return -1;
}

/**
 * A raw TCP server on 127.0.0.1 for client tests: each accepted connection is
 * handed to `onConnection` as a {@linkcode RawPeer}, closed afterwards.
 */
export class RawServer {
  readonly listener: Deno.Listener;
  readonly port: number;
  readonly #tasks = new Set<Promise<void>>();
  readonly #peers = new Set<RawPeer>();
  readonly #loop: Promise<void>;

  constructor(onConnection: (peer: RawPeer) => Promise<void>) {
    const listener = Deno.listen({ hostname: HOST, port: 0 });
    this.listener = listener;
    this.port = (listener.addr as Deno.NetAddr).port;
    this.#loop = (async () => {
      for await (const conn of listener) {
        const peer = new RawPeer(conn);
        this.#peers.add(peer);
        const task = onConnection(peer).catch(() => {}).finally(() => {
          peer.close();
          this.#peers.delete(peer);
          this.#tasks.delete(task);
        });
        this.#tasks.add(task);
      }
    })().catch(() => {});
  }

  /** A `ws:` URI pointing at this server. */
  uri(path = "/"): string {
    return `ws://${HOST}:${this.port}${path}`;
  }

  /** Stops listening, closes every connection and waits for the handlers. */
  async close(): Promise<void> {
    this.listener.close();
    await this.#loop;
    for (const peer of this.#peers) peer.close();
    await Promise.all([...this.#tasks]);
  }

  /** As `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** A raw server peer: reads the handshake request and answers 101. */
export async function acceptRaw(peer: RawPeer, extraHeaders = ""): Promise<string> {
  const head = await peer.readHead();
  assert.ok(head !== undefined, "connection closed before the handshake request");
  await peer.write(handshakeResponse(head, extraHeaders));
  return head;
}

/** A self-signed certificate for `localhost` and 127.0.0.1, made with `openssl`; disposing removes it. */
export interface TlsFiles extends AsyncDisposable {
  cert: string;
  key: string;
  certFile: string;
}

/** Generates a self-signed certificate in a new temporary directory. */
export async function selfSignedCert(): Promise<TlsFiles> {
  const dir = await Deno.makeTempDir({ prefix: "denows-tls-" });
  const certFile = `${dir}/cert.pem`, keyFile = `${dir}/key.pem`;
  const { success, stderr } = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-addext",
      "basicConstraints=critical,CA:FALSE", // a leaf certificate: CA certificates are refused as such
      "-keyout",
      keyFile,
      "-out",
      certFile,
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.ok(success, `openssl failed: ${decoder.decode(stderr)}`);
  return {
    cert: await Deno.readTextFile(certFile),
    key: await Deno.readTextFile(keyFile),
    certFile,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

/** Whether a command runs and exits with 0. */
export async function commandSucceeds(command: string, args: string[]): Promise<boolean> {
  try {
    const { success } = await new Deno.Command(command, {
      args,
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch {
    return false;
  }
}

/** An event line printed by a peer script. */
export type PeerEvent = Record<string, unknown> & { event: string };

/**
 * A peer script in a child process that prints JSON events, one per line.
 * `stop()` closes its stdin, waits a little, then kills it by PID.
 */
export class PeerProcess {
  readonly child: Deno.ChildProcess;
  readonly events: PeerEvent[] = [];
  #waiters: { type: string; resolve(event: PeerEvent): void }[] = [];
  #stdout: Promise<void>;
  #stderr: Promise<string>;
  #seen = 0;

  constructor(command: string, args: string[], options: { cwd?: string } = {}) {
    this.child = new Deno.Command(command, {
      args,
      cwd: options.cwd,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#stdout = this.#readLines();
    this.#stderr = new Response(this.child.stderr).text();
  }

  async #readLines(): Promise<void> {
    let pending = "";
    for await (const chunk of this.child.stdout.pipeThrough(new TextDecoderStream())) {
      pending += chunk;
      let newline: number;
      while ((newline = pending.indexOf("\n")) !== -1) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        if (line.trim() === "") continue;
        const event = JSON.parse(line) as PeerEvent;
        this.events.push(event);
        const index = this.#waiters.findIndex((waiter) => waiter.type === event.event);
        if (index !== -1) this.#waiters.splice(index, 1)[0].resolve(event);
      }
    }
  }

  /** The next event of `type` not returned yet (in order), within `ms`. */
  async next(type: string, ms = 5000): Promise<PeerEvent> {
    for (let i = this.#seen; i < this.events.length; i++) {
      if (this.events[i].event === type) {
        this.#seen = i + 1;
        return this.events[i];
      }
    }
    const waiter = deferred<PeerEvent>();
    this.#waiters.push({ type, resolve: waiter.resolve });
    try {
      const event = await within(waiter.promise, ms, `peer event ${type}`);
      this.#seen = this.events.indexOf(event) + 1;
      return event;
    } catch (error) {
      const stderr = await Promise.race([this.#stderr, delay(100).then(() => "")]);
      throw new Error(`${error}; events: ${JSON.stringify(this.events)}; stderr: ${stderr}`);
    }
  }

  /** Ends the peer: closes stdin, then kills it by PID if it doesn't exit within `ms`. */
  async stop(ms = 2000): Promise<Deno.CommandStatus> {
    try {
      await this.child.stdin.close();
    } catch {
      // already closed
    }
    const exited = await Promise.race([this.child.status.then(() => true), delay(ms)]);
    if (exited !== true) {
      try {
        this.child.kill("SIGKILL");
      } catch {
        // exited meanwhile
      }
    }
    const status = await this.child.status;
    await this.#stdout.catch(() => {});
    await this.#stderr.catch(() => "");
    return status;
  }

  /** Waits for the peer to exit by itself (within `ms`), then cleans up as `stop()`. */
  async exited(ms = 5000): Promise<Deno.CommandStatus> {
    await within(this.child.status, ms, "peer exit");
    return await this.stop();
  }
}

/** A script started by {@linkcode startListening}: its port, and how to end it. */
export interface ListeningScript extends AsyncDisposable {
  port: number;
  stop(): Promise<void>;
}

/**
 * Runs a Deno script (`deno run -A path ...args`) that prints `listening on ws://HOST:PORT`
 * when it is ready; resolves with that port. `stop()` ends it by PID.
 */
export async function startListening(path: string, args: string[]): Promise<ListeningScript> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", path, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let output = "";
  let port: number | undefined;
  while (port === undefined) {
    const { value, done } = await lines.read();
    if (done) break;
    output += value;
    const match = /listening on ws:\/\/[^\s]+:(\d+)/.exec(output);
    if (match !== null) port = Number(match[1]);
  }
  const stop = async (): Promise<void> => {
    try {
      child.kill("SIGTERM");
    } catch {
      // already exited
    }
    await lines.cancel();
    await child.status;
  };
  if (port === undefined) {
    await stop();
    throw new Error(`${path} did not start: ${output}`);
  }
  return { port, stop, [Symbol.asyncDispose]: stop };
}

/** The command-line client run as a child process, typed into line by line. */
export interface CliSession extends AsyncDisposable {
  /** Everything the client printed so far. */
  readonly stdout: string;
  /** Types `line` and Enter. */
  type(line: string): Promise<void>;
  /** Ends the client's input (Ctrl-D). */
  endInput(): Promise<void>;
  /** Reads the client's output until it contains `expected`. */
  waitFor(expected: RegExp | string): Promise<void>;
  /** The client's exit status. */
  readonly status: Promise<Deno.CommandStatus>;
}

/** Starts `cli.ts` with `args` (stderr dropped); disposing it stops reading and waits for the exit. */
export function startCli(args: string[]): CliSession {
  const cli = new URL("../cli.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const writer = child.stdin.getWriter();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stdout = "";
  const seen = (expected: RegExp | string): boolean =>
    typeof expected === "string" ? stdout.includes(expected) : expected.test(stdout);
  return {
    get stdout(): string {
      return stdout;
    },
    type: (line) => writer.write(encoder.encode(`${line}\n`)),
    endInput: () => writer.close(),
    async waitFor(expected) {
      while (!seen(expected)) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`output ended before ${expected}: ${stdout}`);
        stdout += value;
      }
    },
    status: child.status,
    async [Symbol.asyncDispose]() {
      reader.releaseLock();
      await child.stdout.cancel().catch(() => {});
      await child.status;
    },
  };
}
