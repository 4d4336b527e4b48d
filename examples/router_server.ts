/**
 * A server with routes: `/echo` sends every message back to its sender,
 * `/rooms/:name` sends every message to every client in the same room (the
 * sender included, nobody in another room; room names are percent-decoded,
 * so `/rooms/tea%20room` is the room "tea room"), and any other path is
 * answered `404 Not Found` before anything is upgraded.
 *
 * ```sh
 * deno run -A examples/router_server.ts --port 8765 [--hostname 127.0.0.1]
 * ```
 *
 * Prints `listening on ws://HOST:PORT` once ready (`--port 0` picks a free
 * port) and closes every connection with 1001 (going away) on SIGINT or
 * SIGTERM.
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { Connection } from "../connection.ts";
import { broadcast } from "../broadcast.ts";
import { route } from "../router.ts";
import { serve } from "../server.ts";

const USAGE = "usage: router_server.ts [--port 8765] [--hostname 127.0.0.1]";

let values: { port: string; hostname: string; help?: boolean };
try {
  ({ values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string", short: "p", default: "8765" },
      hostname: { type: "string", short: "H", default: "127.0.0.1" },
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
const hostname = values.hostname;

// The members of each room that has any, by room name.
const rooms = new Map<string, Set<Connection>>();

const server = serve(
  route([
    {
      pattern: "/echo",
      handler: async (ws) => {
        for await (const message of ws) await ws.send(message);
      },
    },
    {
      pattern: "/rooms/:name",
      handler: async (ws) => {
        const name = ws.params.name;
        let room = rooms.get(name);
        if (room === undefined) rooms.set(name, room = new Set());
        room.add(ws);
        try {
          for await (const message of ws) broadcast(room, message);
        } finally {
          room.delete(ws);
          if (room.size === 0) rooms.delete(name);
        }
      },
    },
  ]),
  { hostname, port },
);

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
