/**
 * The soak benchmark's server: this library's `serve()` in a process of its own, so that its
 * memory and file descriptors are measured alone (`bench/soak.ts` starts it).
 *
 *   deno run -A bench/soak_server.ts --port N [--tcp node:net] [--no-compression]
 *                                     [--ping-interval MS] [--ping-timeout MS]
 *                                     [--close-timeout MS] [--open-timeout MS]
 *
 * Paths:
 * - `/steady`: joins the broadcast room (a sequence-numbered text message to every member
 *   20 times a second, `b SEQ …`) and echoes every message back;
 * - `/churn`: echoes every message back (a close frame is echoed by the library, code and all);
 * - `/flood`: joins the broadcast room and sends 16 KiB binary messages as fast as `send()`
 *   lets it, for clients that never read: keepalive and the close timeout must drop them.
 *
 * Commands, one per line on stdin: `stats` prints `stats {JSON}` (connections, memory, errors),
 * `live` the same as `live {JSON}` after a full garbage collection (run with
 * `--v8-flags=--expose-gc`),
 * `finish` stops the broadcasts, sends `end SEQ` (the last sequence number) to the room and
 * prints `finished SEQ`; `exit` closes the server and exits. Uncaught errors, unhandled
 * rejections and every error the library logs are counted and reported in `stats`, never fatal.
 *
 * @module
 */

import { broadcast } from "../broadcast.ts";
import type { Connection } from "../connection.ts";
import type { Logger } from "../protocol.ts";
import { serve, type ServeOptions } from "../server.ts";

/** The numeric options and their defaults (ms). */
const TIMEOUTS = {
  "--ping-interval": 2000,
  "--ping-timeout": 4000,
  "--close-timeout": 2000,
  "--open-timeout": 3000,
};
/** Broadcasts per second to `/steady` and `/flood` members. */
const BROADCAST_RATE = 20;
/** Filler after the sequence number, so that a broadcast is more than a few bytes. */
const FILLER = " " + "soak broadcast payload; ".repeat(8);
/** What `/flood` sends, over and over. */
const FLOOD = crypto.getRandomValues(new Uint8Array(16 * 1024));
/** Error messages kept for the report (the count is complete). */
const KEEP = 10;

function option(name: string): string | undefined {
  const at = Deno.args.indexOf(name);
  return at >= 0 ? Deno.args[at + 1] : undefined;
}

function number(name: string, fallback: number, lo: number, hi: number): number {
  const text = option(name);
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < lo || n > hi) {
    throw new RangeError(`${name} must be an integer from ${lo} to ${hi}, got ${text}`);
  }
  return n;
}

const port = number("--port", 0, 1, 65535);
if (port === 0) throw new RangeError("--port is required");
const tcp = option("--tcp") ?? "Deno.listen";
if (tcp !== "node:net" && tcp !== "Deno.listen") {
  throw new RangeError(`--tcp must be node:net or Deno.listen, got ${tcp}`);
}
const [pingInterval, pingTimeout, closeTimeout, openTimeout] = Object.entries(TIMEOUTS).map((
  [name, fallback],
) => number(name, fallback, 1, 600_000));

// ---- Errors: recorded, never fatal ----

const errors: string[] = [];
let errorCount = 0;
function recordError(what: string, error?: unknown): void {
  errorCount++;
  if (errors.length < KEEP) {
    const detail = error instanceof Error ? `${error.name}: ${error.message}` : String(error ?? "");
    errors.push(`${what}${detail ? `: ${detail}` : ""}`);
  }
}
globalThis.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  recordError("unhandled rejection", event.reason);
});
globalThis.addEventListener("error", (event) => {
  event.preventDefault();
  recordError("uncaught error", event.error);
});

/** Warnings the library logs, counted by their text without the connection number. */
const warnings: Record<string, number> = {};
const logger: Logger = {
  debug() {},
  info() {},
  warn(message) {
    const key = message.replace(/^connection \d+: /, "");
    warnings[key] = (warnings[key] ?? 0) + 1;
  },
  error(message, error) {
    recordError(message, error);
  },
};

// ---- Serving ----

const room = new Set<Connection>();
/** Close codes the server received, by code (1006: none received). */
const closeCodes: Record<string, number> = {};
let opened = 0;

async function echo(ws: Connection): Promise<void> {
  // send() resolves at once while the outgoing buffer is under writeLimit.
  for await (const message of ws) await ws.send(message);
}

async function flood(ws: Connection): Promise<void> {
  while (ws.readyState === 1) await ws.send(FLOOD);
}

const options: ServeOptions = {
  hostname: "127.0.0.1",
  port,
  tcp,
  compression: Deno.args.includes("--no-compression") ? null : "deflate",
  pingInterval,
  pingTimeout,
  closeTimeout,
  openTimeout,
  logger,
};

const server = serve(async (ws) => {
  opened++;
  ws.closed.then(({ code }) => {
    const key = code >= 4000 && code <= 4999 ? "4000-4999" : `${code}`;
    closeCodes[key] = (closeCodes[key] ?? 0) + 1;
  });
  const path = ws.request?.path.split("?")[0];
  try {
    if (path === "/steady" || path === "/flood") {
      room.add(ws);
      await (path === "/flood" ? flood(ws) : echo(ws));
    } else {
      await echo(ws);
    }
  } catch (error) {
    // The peer going away mid-send or mid-read is what churn is made of.
    if (!(error instanceof Error && error.name.startsWith("ConnectionClosed"))) {
      recordError(`handler of ${path}`, error);
    }
  } finally {
    room.delete(ws);
  }
}, options);

let seq = 0;
const ticker = setInterval(() => {
  seq++;
  broadcast(room, `b ${seq}${FILLER}`);
}, 1000 / BROADCAST_RATE);

function stats(): Record<string, unknown> {
  const memory = Deno.memoryUsage();
  return {
    connections: server.connections.size,
    room: room.size,
    opened,
    rss: memory.rss,
    heapUsed: memory.heapUsed,
    heapTotal: memory.heapTotal,
    external: memory.external,
    errors: errorCount,
    errorMessages: errors,
    warnings,
    closeCodes,
    seq,
  };
}

console.log(`listening on ws://127.0.0.1:${server.port}`);

for await (const line of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  for (const command of line.split("\n").map((l) => l.trim()).filter(Boolean)) {
    if (command === "stats") {
      console.log(`stats ${JSON.stringify(stats())}`);
    } else if (command === "live") {
      // The heap that is still reachable: after a full collection (needs --expose-gc).
      (globalThis as { gc?: () => void }).gc?.();
      console.log(`live ${JSON.stringify(stats())}`);
    } else if (command === "finish") {
      clearInterval(ticker);
      broadcast(room, `end ${seq}`);
      console.log(`finished ${seq}`);
    } else if (command === "exit") {
      clearInterval(ticker);
      await server.close();
      Deno.exit(0);
    }
  }
}
clearInterval(ticker);
await server.close();
