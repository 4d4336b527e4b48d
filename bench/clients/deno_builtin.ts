/**
 * Benchmark client: the runtime's built-in `WebSocket` (Deno's; the same file runs under Bun as
 * Bun's client).
 *
 *   deno run -A bench/clients/deno_builtin.ts --url ws://127.0.0.1:PORT/echo --conns 100 \
 *     --inflight 16 --size 32 --warmup 0.8 --seconds 1
 *
 * Runs the closed loop of `driver.mjs` (see there) and prints one JSON line.
 *
 * @module
 */

// @ts-types="./driver.d.ts"
import { parseArgs, run } from "./driver.mjs";

declare const Bun: { argv: string[] } | undefined;
const args = typeof Bun === "undefined" ? Deno.args : Bun.argv.slice(2);

const options = parseArgs(args);
await run(options, (url, onMessage, onClose) =>
  new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event: MessageEvent<ArrayBuffer | string>) => {
      const data = event.data;
      onMessage(typeof data === "string" ? -1 : data.byteLength);
    };
    ws.onclose = onClose;
    ws.onerror = () => reject(new Error(`could not connect to ${url}`));
    ws.onopen = () => resolve((data: Uint8Array) => ws.send(data));
  }), console.log);
const exit = (globalThis as { process?: { exit(code: number): never } }).process?.exit;
if (typeof Bun === "undefined") Deno.exit(0);
else exit?.(0);
