/**
 * Benchmark server: this library (`serve()` + `broadcast()`).
 *
 *   deno run -A bench/servers/ours.ts --port 9001 [--deflate] [--tcp node:net|Deno.listen]
 *                                     [--heap-snapshots DIR]
 *
 * `/echo` sends every message back as received; `/broadcast` sends every message any client
 * sends to every client connected on that path, with `broadcast()`. Compression is off unless
 * `--deflate` is given. With `--heap-snapshots DIR`, each SIGUSR2 writes a V8 heap snapshot into
 * DIR and prints `heap snapshot: PATH` (`bench/heap.ts` uses it).
 *
 * @module
 */

import { writeHeapSnapshot } from "node:v8";
import { broadcast } from "../../broadcast.ts";
import type { Connection } from "../../connection.ts";
import { serve } from "../../server.ts";

const at = Deno.args.indexOf("--port");
const port = at >= 0 ? Number(Deno.args[at + 1]) : NaN;
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  throw new RangeError(
    `--port must be an integer from 1 to 65535, got ${Deno.args[at + 1]}`,
  );
}
const deflate = Deno.args.includes("--deflate");
// `--tcp` picks the TCP backend; without it, serve()'s default (node:net for plain TCP).
const tcpAt = Deno.args.indexOf("--tcp");
const tcp = tcpAt >= 0 ? Deno.args[tcpAt + 1] : undefined;
if (tcp !== undefined && tcp !== "node:net" && tcp !== "Deno.listen") {
  throw new RangeError(`--tcp must be node:net or Deno.listen, got ${tcp}`);
}

const room = new Set<Connection>();

serve(async (ws) => {
  const path = ws.request?.path.split("?")[0];
  if (path === "/broadcast") {
    room.add(ws);
    try {
      for await (const message of ws) broadcast(room, message);
    } finally {
      room.delete(ws);
    }
  } else {
    // send() resolves at once while the outgoing buffer is under writeLimit.
    for await (const message of ws) await ws.send(message);
  }
}, {
  hostname: "127.0.0.1",
  port,
  compression: deflate ? "deflate" : null,
  maxSize: 64 * 1024 * 1024,
  pingInterval: null,
  tcp,
});
const snapshotsAt = Deno.args.indexOf("--heap-snapshots");
if (snapshotsAt >= 0) {
  const dir = Deno.args[snapshotsAt + 1];
  let count = 0;
  Deno.addSignalListener("SIGUSR2", () => {
    // Before the snapshot collects garbage: the heap as the idle measurement sees it.
    console.log(`memory usage: ${JSON.stringify(Deno.memoryUsage())}`);
    const path = writeHeapSnapshot(`${dir}/${Deno.pid}-${++count}.heapsnapshot`);
    console.log(`heap snapshot: ${path}`);
  });
}
console.log(`listening on ws://127.0.0.1:${port}`);
