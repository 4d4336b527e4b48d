/**
 * Benchmark client: this library's `connect()`.
 *
 *   deno run -A bench/clients/ours.ts --url ws://127.0.0.1:PORT/echo --conns 100 --inflight 16 \
 *     --size 32 --warmup 0.8 --seconds 1
 *
 * Runs the closed loop of `driver.mjs` (see there) and prints one JSON line.
 *
 * @module
 */

import { connect } from "../../client.ts";
// @ts-types="./driver.d.ts"
import { parseArgs, run } from "./driver.mjs";

const options = parseArgs(Deno.args);
await run(options, async (url, onMessage, onClose) => {
  const ws = await connect(url, {
    compression: null,
    maxSize: 64 * 1024 * 1024,
    pingInterval: null,
  });
  (async () => {
    try {
      for await (const message of ws) onMessage(message.length);
    } catch {
      // counted below
    }
    onClose();
  })();
  return (data) => {
    ws.send(data).catch(() => {});
  };
}, console.log);
Deno.exit(0);
