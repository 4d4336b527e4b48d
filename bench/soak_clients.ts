/**
 * The soak benchmark's clients (`bench/soak.ts` starts them), in a process of their own.
 *
 *   deno run -A bench/soak_clients.ts steady --port N --count C [--no-compression]
 *   deno run -A bench/soak_clients.ts churn --port N --seconds S --rate R [--no-compression]
 *                                           [--open-timeout MS] [--drop-within MS]
 *
 * `steady`: C clients of this library on `/steady`, open for the whole run. Each checks that the
 * server's broadcasts (`b SEQ …`, 20 a second) arrive without a gap and in order, and sends
 * 4 sequence-numbered binary messages a second, checking that their echoes come back in order.
 * It prints `ready` once all are open; on the server's `end SEQ` each checks it saw SEQ last,
 * waits for its echoes and closes with 1000.
 *
 * `churn`: R clients a minute for S seconds, each connecting and leaving one way, in turn (when
 * the machine can't keep the pace, the turns left after S seconds are counted as `late`; while
 * 400 are in flight, a turn is `skipped`):
 * - `clean`: this library's client, 3 echoes, close 1000;
 * - `app-code`: the same, closing with a code from 4000 to 4999 (the server echoes it);
 * - `close-mid-frame`: raw TCP, handshake, half a frame, then the socket is closed (no close
 *   frame);
 * - `reset`: the same through node:net, ending with a TCP reset (`resetAndDestroy()`);
 * - `half-request`: raw TCP, half a handshake request, then the socket is closed;
 * - `silent`: raw TCP sending nothing; the server must close it after its `openTimeout`;
 * - `never-read`: raw TCP, handshake on `/flood` (the server sends as fast as it can), then never
 *   reads: the server must drop it (keepalive, close timeout) within `--drop-within` ms.
 *
 * Both print one line `result {JSON}` at the end: counts, and the problems seen (a gap, a
 * reordered message, an unexpected close, a churn client that didn't end as planned, an
 * unhandled rejection or uncaught error), each counted, the first few quoted.
 *
 * @module
 */

import net from "node:net";
import { connect } from "../client.ts";
import type { Connection } from "../connection.ts";
import { Frame, Opcode } from "../frames.ts";

const KEEP = 10;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function option(name: string): string | undefined {
  const at = Deno.args.indexOf(name);
  return at >= 0 ? Deno.args[at + 1] : undefined;
}

function number(name: string, fallback: number | undefined, lo: number, hi: number): number {
  const text = option(name);
  if (text === undefined) {
    if (fallback === undefined) throw new RangeError(`${name} is required`);
    return fallback;
  }
  const n = Number(text);
  if (!Number.isFinite(n) || n < lo || n > hi) {
    throw new RangeError(`${name} must be a number from ${lo} to ${hi}, got ${text}`);
  }
  return n;
}

const role = Deno.args[0];
const port = number("--port", undefined, 1, 65535);
const compression = Deno.args.includes("--no-compression") ? null : "deflate";
const base = `ws://127.0.0.1:${port}`;

// ---- Problems: counted, the first few kept ----

const problems: string[] = [];
let problemCount = 0;
function problem(text: string): void {
  problemCount++;
  if (problems.length < KEEP) problems.push(text);
}
let unhandled = 0;
globalThis.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  unhandled++;
  problem(`unhandled rejection: ${describe(event.reason)}`);
});
globalThis.addEventListener("error", (event) => {
  event.preventDefault();
  unhandled++;
  problem(`uncaught error: ${describe(event.error)}`);
});

function describe(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// ---- Steady clients ----

/** Echo messages a second per steady client. */
const ECHO_RATE = 4;

interface SteadyResult {
  broadcasts: number;
  echoes: number;
}

async function steadyClient(index: number, ready: () => void): Promise<SteadyResult> {
  const ws = await connect(`${base}/steady?client=${index}`, {
    compression,
    pingInterval: 2000,
    pingTimeout: 10_000,
  });
  ready();
  let last: number | undefined;
  let broadcasts = 0;
  let sent = 0;
  let echoed = 0;
  let ended = false;
  const label = `steady client ${index}`;
  const sender = (async () => {
    const message = new Uint8Array(64);
    const view = new DataView(message.buffer);
    while (!ended) {
      view.setUint32(0, sent++);
      await ws.send(message);
      await sleep(1000 / ECHO_RATE);
    }
  })().catch(() => {}); // a connection lost early is reported below, by its close code
  let allEchoed: () => void = () => {};
  const echoesDone = new Promise<void>((resolve) => (allEchoed = resolve));
  let finish: Promise<void> | undefined;
  try {
    for await (const message of ws) {
      if (typeof message !== "string") {
        const n = new DataView(message.buffer, message.byteOffset).getUint32(0);
        if (n !== echoed) problem(`${label}: echo ${n} arrived when ${echoed} was next`);
        echoed = n + 1;
        if (ended && echoed === sent) allEchoed();
      } else if (message.startsWith("b ")) {
        const seq = Number(message.slice(2, message.indexOf(" ", 2)));
        if (last !== undefined && seq !== last + 1) {
          problem(`${label}: broadcast ${seq} arrived after ${last}`);
        }
        last = seq;
        broadcasts++;
      } else if (message.startsWith("end ")) {
        const final = Number(message.slice(4));
        if (last !== final) problem(`${label}: the last broadcast was ${final}, it saw ${last}`);
        ended = true;
        // The loop must go on reading the echoes meanwhile: finish in the background.
        finish = (async () => {
          await sender;
          if (echoed !== sent) await within(echoesDone, 10_000, `${label}: echoes`);
          await ws.close(1000);
        })();
      }
    }
    await finish;
  } catch (error) {
    problem(`${label}: ${describe(error)}`);
  }
  ended = true;
  const { code } = await ws.closed;
  if (code !== 1000) problem(`${label}: closed with ${code}`);
  return { broadcasts, echoes: echoed };
}

async function steady(): Promise<void> {
  const count = number("--count", undefined, 1, 10_000);
  let open = 0;
  const results = await Promise.all(
    Array.from({ length: count }, async (_, i) => {
      try {
        return await steadyClient(i, () => {
          if (++open === count) console.log("ready");
        });
      } catch (error) {
        problem(`steady client ${i}: ${describe(error)}`);
        return { broadcasts: 0, echoes: 0 };
      }
    }),
  );
  const broadcasts = results.map((r) => r.broadcasts);
  console.log(`result ${
    JSON.stringify({
      clients: count,
      broadcastsMin: Math.min(...broadcasts),
      broadcastsMax: Math.max(...broadcasts),
      echoes: results.reduce((n, r) => n + r.echoes, 0),
      unhandled,
      problemCount,
      problems,
    })
  }`);
}

// ---- Churn clients ----

function handshakeRequest(path: string): string {
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  return `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
    `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
    (compression ? "Sec-WebSocket-Extensions: permessage-deflate\r\n" : "") + "\r\n";
}

/** Reads a raw connection until the end of the response head; returns the status line. */
async function readResponseHead(conn: Deno.Conn): Promise<string> {
  const buffer = new Uint8Array(4096);
  let head = "";
  while (!head.includes("\r\n\r\n")) {
    const n = await conn.read(buffer);
    if (n === null) throw new Error(`connection closed during the handshake: ${head}`);
    head += decoder.decode(buffer.subarray(0, n));
  }
  return head.slice(0, head.indexOf("\r\n"));
}

/** Reads until the end of the stream (or a reset); resolves with the bytes read. */
async function drain(conn: Deno.Conn): Promise<number> {
  const buffer = new Uint8Array(256 * 1024);
  let total = 0;
  try {
    for (let n; (n = await conn.read(buffer)) !== null;) total += n;
  } catch (error) {
    if (!(error instanceof Deno.errors.ConnectionReset)) throw error;
  }
  return total;
}

function textFrame(text: string): Uint8Array {
  return new Frame(Opcode.TEXT, encoder.encode(text)).serialize({ mask: true });
}

async function libraryClient(code: number): Promise<void> {
  const ws: Connection = await connect(`${base}/churn`, { compression, pingInterval: null });
  for (let i = 0; i < 3; i++) await ws.send(`churn ${i}`);
  for (let i = 0; i < 3; i++) {
    const echo = await ws.recv();
    if (echo !== `churn ${i}`) throw new Error(`echo ${i} was ${String(echo)}`);
  }
  await ws.close(code, "churn");
  const closed = await ws.closed;
  if (closed.code !== code) throw new Error(`closed with ${closed.code}, expected ${code}`);
}

async function closeMidFrame(): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(encoder.encode(handshakeRequest("/churn")));
    const status = await readResponseHead(conn);
    if (!status.includes(" 101 ")) throw new Error(`handshake answered ${status}`);
    const frame = textFrame("a message the server never sees whole");
    await conn.write(frame.subarray(0, frame.length >> 1));
  } finally {
    conn.close();
  }
}

function reset(): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    let head = "";
    socket.on("error", reject);
    socket.on("connect", () => socket.write(handshakeRequest("/churn")));
    socket.on("data", (data: Uint8Array) => {
      head += decoder.decode(data);
      if (!head.includes("\r\n\r\n")) return;
      socket.removeAllListeners("data");
      if (!head.startsWith("HTTP/1.1 101 ")) {
        socket.destroy();
        reject(new Error(`handshake answered ${head.slice(0, head.indexOf("\r\n"))}`));
        return;
      }
      const frame = textFrame("cut short by a reset");
      socket.write(frame.subarray(0, 5), () => {
        socket.resetAndDestroy();
        resolve();
      });
    });
  });
}

async function halfRequest(): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const request = encoder.encode(handshakeRequest("/churn"));
  try {
    await conn.write(request.subarray(0, request.length >> 1));
  } finally {
    conn.close();
  }
}

async function silent(openTimeout: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const bytes = await within(drain(conn), openTimeout + 10_000, "silent: server close");
    if (bytes !== 0) throw new Error(`silent: the server sent ${bytes} bytes`);
  } finally {
    conn.close();
  }
}

async function neverRead(dropWithin: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(encoder.encode(handshakeRequest("/flood")));
    const status = await readResponseHead(conn);
    if (!status.includes(" 101 ")) throw new Error(`handshake answered ${status}`);
    // Read nothing while the server's keepalive and close timeouts run out, then check that the
    // server ended the connection: what it sent is read to its end in a few seconds.
    await sleep(dropWithin);
    await within(drain(conn), 10_000, "never-read: the server had not dropped the client");
  } finally {
    conn.close();
  }
}

const KINDS = [
  "clean",
  "app-code",
  "clean",
  "close-mid-frame",
  "half-request",
  "app-code",
  "reset",
  "clean",
  "silent",
  "close-mid-frame",
  "app-code",
  "reset",
  "clean",
  "half-request",
  "never-read",
] as const;
type Kind = (typeof KINDS)[number];

/** Clients of these kinds at once at most (each holds its socket for seconds). */
const MAX_HOLDING: Partial<Record<Kind, number>> = { "never-read": 8, silent: 50 };
/** Churn clients in flight at most; beyond, a client's turn is skipped (and counted). */
const MAX_IN_FLIGHT = 400;

async function churn(): Promise<void> {
  const seconds = number("--seconds", undefined, 0.1, 86_400);
  const rate = number("--rate", 3000, 1, 600_000);
  const openTimeout = number("--open-timeout", 3000, 1, 600_000);
  const dropWithin = number("--drop-within", 12_000, 1, 600_000);
  const started: Record<string, number> = {};
  const done: Record<string, number> = {};
  const holding: Record<string, number> = {};
  let skipped = 0;
  let inFlight = 0;
  const running = new Set<Promise<void>>();
  const run = (kind: Kind): Promise<void> => {
    switch (kind) {
      case "clean":
        return libraryClient(1000);
      case "app-code":
        return libraryClient(4000 + Math.floor(Math.random() * 1000));
      case "close-mid-frame":
        return closeMidFrame();
      case "reset":
        return reset();
      case "half-request":
        return halfRequest();
      case "silent":
        return silent(openTimeout);
      case "never-read":
        return neverRead(dropWithin);
    }
  };
  const interval = 60_000 / rate;
  const start = performance.now();
  const planned = Math.ceil((seconds * 1000) / interval);
  let late = 0;
  for (let i = 0; i < planned; i++) {
    // The churn lasts `seconds` of real time: on a machine too busy to keep the pace, the turns
    // left when the time is up are not started (and are counted).
    if (performance.now() - start >= seconds * 1000) {
      late = planned - i;
      break;
    }
    const due = start + i * interval;
    const wait = due - performance.now();
    if (wait > 1) await sleep(wait);
    let kind: Kind = KINDS[i % KINDS.length];
    const limit = MAX_HOLDING[kind];
    if (limit !== undefined && (holding[kind] ?? 0) >= limit) kind = "clean";
    if (inFlight >= MAX_IN_FLIGHT) {
      skipped++;
      continue;
    }
    started[kind] = (started[kind] ?? 0) + 1;
    holding[kind] = (holding[kind] ?? 0) + 1;
    inFlight++;
    const client = run(kind).then(
      () => void (done[kind] = (done[kind] ?? 0) + 1),
      (error) => problem(`${kind} client: ${describe(error)}`),
    ).finally(() => {
      holding[kind]--;
      inFlight--;
      running.delete(client);
    });
    running.add(client);
  }
  await Promise.all(running);
  console.log(`result ${
    JSON.stringify({
      started,
      done,
      skipped,
      late,
      unhandled,
      problemCount,
      problems,
    })
  }`);
}

// The benchmark's end (or death) closes stdin: nothing of a client process outlives it.
(async () => {
  for await (const _ of Deno.stdin.readable);
  Deno.exit(problemCount === 0 ? 0 : 1);
})();

if (role === "steady") {
  await steady();
} else if (role === "churn") {
  await churn();
} else {
  throw new RangeError(`the first argument must be steady or churn, got ${role}`);
}
