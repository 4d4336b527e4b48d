/**
 * Private: plain TCP through the TCP handles under `node:net`
 * (`serve({ tcp: "node:net" })`), which Deno runs on a libuv-style loop in
 * its runtime. Compared with `Deno.listen` and `Deno.Conn` under the same
 * server code: a write that the kernel takes at once completes synchronously
 * rather than as an async operation, and the event loop only visits sockets
 * that are ready, which keeps fan-out to 10 000 sockets fast.
 *
 * The handles are used directly, without `net.Socket` and Node's stream
 * layer above them (which cost about 2 KiB and a dozen objects per
 * connection, and read at most 64 KiB at a time into a new buffer each):
 *
 * - reads go into one buffer shared by every socket (`useUserBuffer()`),
 *   lent for one read: the bytes are copied out at once, so an idle
 *   connection holds no read buffer; the rest of a large frame's payload is
 *   read straight into the frame's own buffer instead, up to its whole size;
 * - writes go to the handle's `writeBuffer()`, and the stream state that
 *   `node:net` reads after each write tells a synchronous write from a
 *   pending one.
 *
 * Used for TCP servers on an IP address, where the runtime has these
 * handles; otherwise the server uses `Deno.listen`.
 *
 * @module
 */

import process from "node:process";
import type { Transport } from "./transport.ts";

// ---- The handles, as `node:net` uses them underneath ----

/** A TCP handle (`tcp_wrap`'s `TCP`): a listening or a connected socket. */
interface Handle {
  readStart(): number;
  readStop(): number;
  useUserBuffer(buffer: Uint8Array): void;
  onread: ((this: Handle, buffer: ArrayBuffer | undefined, nread?: number) => void) | null;
  writeBuffer(request: WriteRequest, data: Uint8Array): number;
  shutdown(request: ShutdownRequest): number;
  close(callback?: () => void): void;
  setNoDelay(enable: boolean): number;
  getsockname(out: SocketName): number;
  getpeername(out: SocketName): number;
  bind(address: string, port: number): number;
  bind6(address: string, port: number, flags: number): number;
  listen(backlog: number): number;
  accept(client: Handle): number;
  onconnection: ((this: Handle, status: number) => void) | null;
  /** The transport reading and writing through this handle. */
  transport?: HandleTransport;
}
interface SocketName {
  address?: string;
  port?: number;
  family?: string;
}
interface WriteRequest {
  oncomplete(this: WriteRequest, status: number): void;
  transport: HandleTransport;
  waited: boolean;
}
interface ShutdownRequest {
  oncomplete(this: ShutdownRequest, status: number): void;
  resolve(): void;
}

/** What this module needs of the runtime's `node:net` internals. */
interface Bindings {
  TCP: new (type: number) => Handle;
  socket: number;
  server: number;
  /** The stream state the handles report each read's and write's outcome in. */
  state: ArrayLike<number>;
  readBytesOrError: number;
  lastWriteWasAsync: number;
}

let found: Bindings | null | undefined;

/** The handles and stream state, or `undefined` when this runtime doesn't have them. */
function bindings(): Bindings | undefined {
  if (found !== undefined) return found ?? undefined;
  found = null;
  try {
    const binding = (process as unknown as { binding(name: string): Record<string, unknown> })
      .binding;
    const tcp = binding("tcp_wrap") as {
      TCP?: Bindings["TCP"];
      constants?: { SOCKET?: number; SERVER?: number };
    };
    const stream = binding("stream_wrap") as {
      streamBaseState?: ArrayLike<number>;
      kReadBytesOrError?: number;
      kLastWriteWasAsync?: number;
    };
    const prototype = tcp.TCP?.prototype as Partial<Handle> | undefined;
    if (
      typeof tcp.TCP === "function" && prototype !== undefined &&
      ["readStart", "useUserBuffer", "writeBuffer", "shutdown", "accept", "bind6"].every((name) =>
        typeof prototype[name as keyof Handle] === "function"
      ) &&
      typeof tcp.constants?.SOCKET === "number" && typeof tcp.constants.SERVER === "number" &&
      stream.streamBaseState !== undefined && typeof stream.kReadBytesOrError === "number" &&
      typeof stream.kLastWriteWasAsync === "number"
    ) {
      found = {
        TCP: tcp.TCP,
        socket: tcp.constants.SOCKET,
        server: tcp.constants.SERVER,
        state: stream.streamBaseState,
        readBytesOrError: stream.kReadBytesOrError,
        lastWriteWasAsync: stream.kLastWriteWasAsync,
      };
    }
  } catch {
    // not this runtime
  }
  return found ?? undefined;
}

/**
 * Forgets what {@linkcode bindings} found, so that the next listener looks
 * again (tests take the handles away to check the fallback to
 * `Deno.listen`).
 */
export function resetBindings(): void {
  found = undefined;
}

// libuv's end of stream.
const UV_EOF = -4095;
// What one read takes at most, into the shared buffer.
const READ_SIZE = 256 * 1024;
// A read of this much or more switches a socket to buffers of its own (no copy per read) ...
const OWN_READ_FROM = 64 * 1024;
// ... and what is left of such a buffer takes the next read while it has this much.
const OWN_READ_MIN = 32 * 1024;
// Received bytes kept for a reader that doesn't read (its message queue is full) before the
// socket stops reading: then TCP pushes back on the peer.
const KEEP_UNREAD = 64 * 1024;
// How long a closed socket may take to send what it still holds.
const LINGER = 5_000;
// Connections waiting to be accepted.
const BACKLOG = 511;
// How often a listener listens again: the runtime's listening handle stops accepting, without a
// callback, once an accept failed for want of file descriptors (EMFILE), and listening again
// (which changes nothing while it accepts) resumes it once descriptors are free.
const RELISTEN_EVERY = 1_000;

// The buffer every socket reads into, lent for one read at a time (the bytes are copied out
// before the next read): an idle connection holds none. Made on the first connection.
let shared: Uint8Array | undefined;

function sharedBuffer(): Uint8Array {
  return shared ??= new Uint8Array(READ_SIZE);
}

function systemError(status: number, what: string): Error {
  const error = new Deno.errors.ConnectionReset(`${what} failed (status ${status})`);
  return status === -32 ? new Deno.errors.BrokenPipe(`${what} failed: broken pipe`) : error;
}

/** A `Transport` over a TCP handle. */
class HandleTransport implements Transport {
  readonly #handle: Handle;
  // Received and not yet read (only while nobody reads), and their size.
  #unread: Uint8Array[] | undefined;
  #unreadBytes = 0;
  #reading = false;
  #eof = false;
  #closed = false;
  #error: Error | undefined;
  // The reader waiting without a promise (takeChunk), woken once something comes, and the
  // chunk that came for it.
  #wake: ((this: unknown) => void) | undefined;
  #wakeTarget: unknown;
  #handoff: Uint8Array | undefined;
  // The read waiting: a chunk (readChunk) or a count of bytes read into #into (read).
  #readResolve: ((value: Uint8Array | number | null) => void) | undefined;
  #readReject: ((error: Error) => void) | undefined;
  #into: Uint8Array | undefined;
  // The buffer of its own this socket reads into while data streams in (see received()).
  #own: Uint8Array | undefined;
  // The write the handle is finishing, and its size (counted in bufferedAmount).
  #writeResolve: ((count: number) => void) | undefined;
  #writeReject: ((error: Error) => void) | undefined;
  #writeLength = 0;
  // Asked of the socket when first needed (and before it closes, for those who ask later).
  #localAddr: Deno.NetAddr | undefined;
  #remoteAddr: Deno.NetAddr | undefined;

  constructor(handle: Handle) {
    this.#handle = handle;
    handle.transport = this;
    handle.onread = onRead;
    handle.useUserBuffer(sharedBuffer());
    handle.setNoDelay(true);
  }

  /** @internal The handle read `nread` bytes into the buffer it was lent, or failed (< 0). */
  received(nread: number): void {
    if (nread === 0) return;
    if (nread < 0) {
      this.#stopReading();
      if (nread === UV_EOF) this.#eof = true;
      else this.#error ??= systemError(nread, "read");
      if (this.#unread === undefined) this.#settleRead();
      return;
    }
    const into = this.#into;
    if (into !== undefined) {
      // A read straight into a frame's buffer: back to the read buffer for the next one.
      this.#into = undefined;
      this.#handle.useUserBuffer(this.#own ?? sharedBuffer());
      const resolve = this.#readResolve!;
      this.#readResolve = this.#readReject = undefined;
      resolve(nread);
      return;
    }
    const own = this.#own;
    let chunk: Uint8Array;
    if (own !== undefined) {
      // Read into a buffer of its own: the bytes are the chunk, no copy. The rest of the
      // buffer takes the next read while it is large; a read that didn't fill half of it goes
      // back to the shared buffer (the stream slowed down).
      chunk = own.subarray(0, nread);
      const rest = own.subarray(nread);
      this.#own = nread < own.length >>> 1
        ? undefined
        : rest.length >= OWN_READ_MIN
        ? rest
        : new Uint8Array(READ_SIZE);
      this.#handle.useUserBuffer(this.#own ?? sharedBuffer());
    } else {
      chunk = sharedBuffer().slice(0, nread);
      // A large read: data is streaming in, so the next reads go into buffers of their own
      // rather than being copied out of the shared one.
      if (nread >= OWN_READ_FROM) {
        this.#own = new Uint8Array(READ_SIZE);
        this.#handle.useUserBuffer(this.#own);
      }
    }
    const wake = this.#wake;
    if (wake !== undefined) {
      const target = this.#wakeTarget;
      this.#wake = this.#wakeTarget = undefined;
      this.#handoff = chunk;
      wake.call(target);
      return;
    }
    const resolve = this.#readResolve;
    if (resolve !== undefined) {
      this.#readResolve = this.#readReject = undefined;
      resolve(chunk);
      return;
    }
    // Nobody reads right now: keep it; stop reading once enough waits.
    (this.#unread ??= []).push(chunk);
    this.#unreadBytes += nread;
    if (this.#unreadBytes >= KEEP_UNREAD) this.#stopReading();
  }

  // Ends the waiting read with the end of the stream or the error: wakes a reader waiting in
  // takeChunk() (later, when the socket is being closed by a caller: not inside that call).
  #settleRead(): void {
    const wake = this.#wake;
    if (wake !== undefined) {
      const target = this.#wakeTarget;
      this.#wake = this.#wakeTarget = undefined;
      if (this.#closed) queueMicrotask(() => wake.call(target));
      else wake.call(target);
      return;
    }
    const resolve = this.#readResolve, reject = this.#readReject;
    if (resolve === undefined) return;
    this.#readResolve = this.#readReject = undefined;
    if (this.#into !== undefined) {
      this.#into = undefined;
      if (!this.#closed) this.#handle.useUserBuffer(this.#own ?? sharedBuffer());
    }
    if (this.#error !== undefined && !this.#closed) reject!(this.#error);
    else resolve(null);
  }

  #startReading(): void {
    if (this.#reading || this.#eof || this.#closed || this.#error !== undefined) return;
    this.#reading = true;
    const status = this.#handle.readStart();
    if (status < 0) {
      this.#reading = false;
      this.#error = systemError(status, "read");
    }
  }

  #stopReading(): void {
    if (!this.#reading) return;
    this.#reading = false;
    if (!this.#closed) this.#handle.readStop();
  }

  // What was received while nobody read, or undefined.
  #takeUnread(): Uint8Array | undefined {
    const handoff = this.#handoff;
    if (handoff !== undefined) {
      this.#handoff = undefined;
      return handoff;
    }
    const unread = this.#unread;
    if (unread === undefined) return undefined;
    const chunk = unread.shift()!;
    this.#unreadBytes -= chunk.length;
    if (unread.length === 0) this.#unread = undefined;
    return chunk;
  }

  /**
   * The next chunk received (the caller owns it), `null` at the end of the
   * stream, or `undefined` when nothing came yet: then `wake` is called on
   * `target` once something does. Throws the read error.
   */
  takeChunk<T>(wake: (this: T) => void, target: T): Uint8Array | null | undefined {
    const chunk = this.#takeUnread();
    if (chunk !== undefined) {
      this.#startReading();
      return chunk;
    }
    if (this.#closed || this.#eof) return null;
    if (this.#error !== undefined) throw this.#error;
    this.#startReading();
    if (this.#error !== undefined) throw this.#error;
    this.#wake = wake as (this: unknown) => void;
    this.#wakeTarget = target;
    return undefined;
  }

  /** Resolves with the next chunk received (the caller owns it), `null` at the end of the stream. */
  readChunk(): Promise<Uint8Array | null> {
    const chunk = this.#takeUnread();
    if (chunk !== undefined) {
      this.#startReading();
      return Promise.resolve(chunk);
    }
    if (this.#closed || this.#eof) return Promise.resolve(null);
    if (this.#error !== undefined) return Promise.reject(this.#error);
    this.#startReading();
    if (this.#error !== undefined) return Promise.reject(this.#error);
    return new Promise<Uint8Array | null>((resolve, reject) => {
      this.#readResolve = resolve as (value: Uint8Array | number | null) => void;
      this.#readReject = reject;
    });
  }

  /**
   * Reads into `buffer`: straight into it (the handle is lent `buffer` for
   * one read), or from what was received while nobody read.
   */
  read(buffer: Uint8Array): Promise<number | null> {
    if (buffer.length === 0) return Promise.resolve(0);
    const chunk = this.#takeUnread();
    if (chunk !== undefined) {
      const count = Math.min(chunk.length, buffer.length);
      buffer.set(chunk.subarray(0, count));
      if (count < chunk.length) {
        (this.#unread ??= []).unshift(chunk.subarray(count));
        this.#unreadBytes += chunk.length - count;
      }
      this.#startReading();
      return Promise.resolve(count);
    }
    if (this.#closed || this.#eof) return Promise.resolve(null);
    if (this.#error !== undefined) return Promise.reject(this.#error);
    this.#into = buffer;
    this.#handle.useUserBuffer(buffer);
    this.#startReading();
    if (this.#error !== undefined) {
      this.#into = undefined;
      this.#handle.useUserBuffer(this.#own ?? sharedBuffer());
      return Promise.reject(this.#error);
    }
    return new Promise<number | null>((resolve, reject) => {
      this.#readResolve = resolve as (value: Uint8Array | number | null) => void;
      this.#readReject = reject;
    });
  }

  /**
   * Hands `data` to the socket, which keeps a reference to it until written
   * (callers never rewrite what they wrote). Resolves at once when the kernel
   * took it; otherwise once the handle wrote the rest.
   */
  write(data: Uint8Array): Promise<number> {
    const result = this.writeNow(data);
    return typeof result === "number" ? Promise.resolve(result) : result;
  }

  /** As `write()`, returning the count itself when there is nothing to wait for. */
  writeNow(data: Uint8Array): number | Promise<number> {
    if (this.#error !== undefined) return Promise.reject(this.#error);
    if (this.#closed) return Promise.reject(new Deno.errors.BrokenPipe("the socket is closed"));
    const request: WriteRequest = { oncomplete: onWriteComplete, transport: this, waited: false };
    const status = this.#handle.writeBuffer(request, data);
    if (status < 0) {
      this.#error ??= systemError(status, "write");
      return Promise.reject(this.#error);
    }
    if (found!.state[found!.lastWriteWasAsync] === 0) return data.length;
    request.waited = true;
    this.#writeLength = data.length;
    return new Promise((resolve, reject) => {
      this.#writeResolve = resolve;
      this.#writeReject = reject;
    });
  }

  /** @internal Called by a pending write's request when the handle finished it. */
  writeDone(status: number): void {
    if (this.#closed) {
      this.#closeHandle();
      return;
    }
    const length = this.#writeLength;
    this.#writeLength = 0;
    const resolve = this.#writeResolve, reject = this.#writeReject;
    this.#writeResolve = this.#writeReject = undefined;
    if (status < 0) {
      this.#error ??= systemError(status, "write");
      reject?.(this.#error);
    } else {
      resolve?.(length);
    }
  }

  /** Bytes written to the socket that the kernel hasn't taken yet. */
  get bufferedAmount(): number {
    return this.#writeLength;
  }

  /** Half-closes (sends FIN after what was written); reading goes on. */
  closeWrite(): Promise<void> {
    if (this.#closed || this.#error !== undefined) return Promise.resolve();
    return new Promise((resolve) => {
      const request: ShutdownRequest = { oncomplete: onShutdown, resolve };
      if (this.#handle.shutdown(request) < 0) resolve();
    });
  }

  /**
   * Closes both directions; a write the handle is still finishing is sent
   * first (as the kernel does for a closed socket), for at most
   * {@linkcode LINGER} ms.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopReading();
    this.#unread = this.#handoff = undefined;
    this.#unreadBytes = 0;
    this.#own = undefined;
    // A read or a write in progress ends now, as on a closed Deno.Conn.
    this.#settleRead();
    const writing = this.#writeLength !== 0;
    this.#failWrite();
    if (!writing || this.#error !== undefined) {
      this.#closeHandle();
      return;
    }
    // The handle finishes the write first (see writeDone()), or gives up after LINGER.
    Deno.unrefTimer(setTimeout(() => this.#closeHandle(), LINGER));
  }

  #failWrite(): void {
    const reject = this.#writeReject;
    this.#writeResolve = this.#writeReject = undefined;
    this.#writeLength = 0;
    reject?.(new Deno.errors.BrokenPipe("the socket is closed"));
  }

  #handleClosed = false;

  #closeHandle(): void {
    if (this.#handleClosed) return;
    try {
      this.#localAddr ??= this.#name("getsockname");
      this.#remoteAddr ??= this.#name("getpeername");
    } catch {
      // the peer is gone already
    }
    this.#handleClosed = true;
    const handle = this.#handle;
    handle.onread = null;
    handle.transport = undefined;
    handle.close();
  }

  /** Writes reach the kernel synchronously. */
  get syncWrites(): boolean {
    return true;
  }

  /** The local end of the socket. */
  get localAddr(): Deno.NetAddr {
    return this.#localAddr ??= this.#name("getsockname");
  }

  /** The remote end of the socket. */
  get remoteAddr(): Deno.NetAddr {
    return this.#remoteAddr ??= this.#name("getpeername");
  }

  #name(which: "getsockname" | "getpeername"): Deno.NetAddr {
    const out: SocketName = {};
    if (this.#handleClosed || this.#handle[which](out) < 0) {
      throw new Deno.errors.NotConnected("the socket is closed");
    }
    return { transport: "tcp", hostname: out.address ?? "", port: out.port ?? 0 };
  }
}

// One read callback for every handle (no closure per connection).
function onRead(this: Handle, _buffer: ArrayBuffer | undefined, nread?: number): void {
  const transport = this.transport;
  if (transport === undefined) return;
  transport.received(nread ?? found!.state[found!.readBytesOrError]);
}

function onWriteComplete(this: WriteRequest, _status: number): void {
  if (this.waited) this.transport.writeDone(_status);
}

function onShutdown(this: ShutdownRequest): void {
  this.resolve();
}

/** A TCP listener on `node:net`'s handles, made by {@linkcode listenTcp}. */
export interface TcpListener {
  /** The address listened on. */
  readonly addr: Deno.NetAddr;
  /** Stops listening. */
  close(): void;
}

// One connection callback for every listener: the listener is found on its handle.
interface ListeningHandle extends Handle {
  accepted(transport: Transport): void;
  failed(error: Error): void;
}

function onConnection(this: Handle, status: number): void {
  const listening = this as ListeningHandle;
  const found = bindings()!;
  if (status < 0) {
    listening.failed(systemError(status, "accept"));
    return;
  }
  const client = new found.TCP(found.socket);
  const accepted = listening.accept(client);
  if (accepted < 0) {
    listening.failed(systemError(accepted, "accept"));
    return;
  }
  listening.accepted(new HandleTransport(client));
}

/**
 * Listens on `hostname:port` (an IP address) and calls `onSocket` with each
 * accepted connection's transport; `undefined` when this runtime can't (the
 * caller then uses `Deno.listen`, which also reports why listening failed).
 */
export function listenTcp(
  hostname: string,
  port: number,
  onSocket: (transport: Transport) => void,
  onError: (error: Error) => void,
): TcpListener | undefined {
  const found = bindings();
  const ipv6 = hostname.includes(":");
  if (found === undefined || !(ipv6 || /^\d+\.\d+\.\d+\.\d+$/.test(hostname))) return undefined;
  const handle = new found.TCP(found.server) as ListeningHandle;
  const status = ipv6 ? handle.bind6(hostname, port, 0) : handle.bind(hostname, port);
  const out: SocketName = {};
  if (status < 0 || handle.listen(BACKLOG) < 0 || handle.getsockname(out) < 0) {
    handle.close();
    return undefined;
  }
  handle.accepted = onSocket;
  handle.failed = onError;
  handle.onconnection = onConnection;
  const relisten = setInterval(() => handle.listen(BACKLOG), RELISTEN_EVERY);
  Deno.unrefTimer(relisten);
  return {
    addr: { transport: "tcp", hostname: out.address ?? hostname, port: out.port ?? port },
    close(): void {
      clearInterval(relisten);
      handle.onconnection = null;
      handle.close();
    },
  };
}
