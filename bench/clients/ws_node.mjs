/**
 * Benchmark client: npm `ws` (with `bufferutil`) under Node.js.
 *
 *   node bench/clients/ws_node.mjs --url ws://127.0.0.1:PORT/echo --conns 100 --inflight 16 \
 *     --size 32 --warmup 0.8 --seconds 1
 *
 * Runs the closed loop of `driver.mjs` (see there) and prints one JSON line.
 */
import { createRequire } from "node:module";
import process from "node:process";
import { parseArgs, run } from "./driver.mjs";

// Loaded through require so that the file needs no import map when type-checked under Deno.
const require = createRequire(import.meta.url);
const { WebSocket } = require("ws");
// ws only uses bufferutil when it can load it; fail instead of measuring the slower fallback.
require("bufferutil");

const options = parseArgs(process.argv.slice(2));
await run(options, (url, onMessage, onClose) =>
  new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
    ws.on("message", (data, isBinary) => onMessage(isBinary ? data.length : -1));
    ws.on("close", onClose);
    ws.on("error", reject);
    ws.on("open", () => resolve((data) => ws.send(data)));
  }), console.log);
process.exit(0);
