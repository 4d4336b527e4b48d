/**
 * An echo server: every message goes back to its sender as it came, text as
 * Text and bytes as Binary, on every path.
 *
 * ```sh
 * deno run -A examples/echo_server.ts --port 9001 [--hostname 127.0.0.1] [--max-size BYTES] [--no-compression] [--ping-interval MS]
 * ```
 *
 * It is the server we run conformance suites against, so its defaults
 * differ from `serve()`'s: messages up to 16 MiB (`--max-size`, the largest
 * the Autobahn|Testsuite sends) and no keepalive pings (`--ping-interval`,
 * 0 = off), since a test peer may count an unexpected ping against us.
 *
 * Prints `listening on ws://HOST:PORT` once ready (`--port 0` picks a free
 * port) and closes every connection with 1001 (going away) on SIGINT or
 * SIGTERM.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { serve } from "../server.ts";

const USAGE = "usage: echo_server.ts [--port 9001] [--hostname 127.0.0.1] " +
  "[--max-size BYTES (default 16777216)] [--no-compression] [--ping-interval MS (default 0: off)] " +
  "[--tcp node:net|Deno.listen]";

let values: {
  port: string;
  hostname: string;
  "max-size"?: string;
  "no-compression"?: boolean;
  "ping-interval"?: string;
  tcp: string;
  help?: boolean;
};
try {
  ({ values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string", short: "p", default: "9001" },
      hostname: { type: "string", short: "H", default: "127.0.0.1" },
      "max-size": { type: "string" },
      "no-compression": { type: "boolean" },
      "ping-interval": { type: "string" },
      tcp: { type: "string", default: "node:net" },
      help: { type: "boolean", short: "h" },
    },
  }));
} catch (error) {
  console.error(`${(error as Error).message}\n${USAGE}`);
  Deno.exit(2);
}
if (values.help) {
  console.log(USAGE);
  Deno.exit(0);
}
const port = Number(values.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid --port ${values.port}: expected an integer from 0 to 65535\n${USAGE}`);
  Deno.exit(2);
}
let maxSize = 16 * 1024 * 1024;
if (values["max-size"] !== undefined) {
  maxSize = Number(values["max-size"]);
  if (!Number.isSafeInteger(maxSize) || maxSize < 0) {
    console.error(
      `invalid --max-size ${values["max-size"]}: expected a number of bytes\n${USAGE}`,
    );
    Deno.exit(2);
  }
}
let pingInterval: number | null = null;
if (values["ping-interval"] !== undefined) {
  const interval = Number(values["ping-interval"]);
  if (!Number.isSafeInteger(interval) || interval < 0) {
    console.error(
      `invalid --ping-interval ${values["ping-interval"]}: expected milliseconds\n${USAGE}`,
    );
    Deno.exit(2);
  }
  pingInterval = interval === 0 ? null : interval;
}
const hostname = values.hostname;
const tcp = values.tcp;
if (tcp !== "Deno.listen" && tcp !== "node:net") {
  console.error(`invalid --tcp ${tcp}: expected Deno.listen or node:net\n${USAGE}`);
  Deno.exit(2);
}

const server = serve(async (ws) => {
  for await (const message of ws) await ws.send(message);
}, {
  hostname,
  port,
  maxSize,
  pingInterval,
  tcp,
  compression: values["no-compression"] ? null : "deflate",
});

const host = hostname.includes(":") ? `[${hostname}]` : hostname;
console.log(`listening on ws://${host}:${server.port}`);

let stopping = false;
function stop(): void {
  if (stopping) return;
  stopping = true;
  Deno.removeSignalListener("SIGINT", stop);
  Deno.removeSignalListener("SIGTERM", stop);
  server.close();
}
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);
