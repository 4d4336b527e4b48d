/**
 * A broadcast server that scales out: run several processes sharing one
 * Redis, and every message any client of any process sends goes to every
 * client of every process, the sender included.
 *
 * ```sh
 * deno run -A examples/cluster_server.ts --port 9001 --redis redis://127.0.0.1:6379 [--room chat] [--hostname 127.0.0.1]
 * deno run -A examples/cluster_server.ts --port 9002 --redis redis://127.0.0.1:6379
 * ```
 *
 * Without `--redis`, the room stays in this process. Prints
 * `listening on ws://HOST:PORT` once ready (`--port 0` picks a free port);
 * backplane errors go to stderr as `NAME: message` lines; on SIGINT or
 * SIGTERM, closes every connection with 1001 (going away), leaves Redis and
 * exits.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { createClient } from "npm:redis@4";
import { type Backplane, redisBackplane, Room } from "../pubsub.ts";
import { serve } from "../server.ts";

const USAGE = "usage: cluster_server.ts [--port 9001] [--redis redis://127.0.0.1:6379] " +
  "[--room chat] [--hostname 127.0.0.1]";

let values: { port: string; hostname: string; room: string; redis?: string; help?: boolean };
try {
  ({ values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string", short: "p", default: "9001" },
      hostname: { type: "string", short: "H", default: "127.0.0.1" },
      room: { type: "string", default: "chat" },
      redis: { type: "string" },
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

// Two clients: a subscribed Redis connection can't publish. The publisher
// doesn't queue while Redis is down (at-most-once: the failure is reported
// and local clients still get the message); the subscriber reconnects and
// resubscribes by itself.
type Client = ReturnType<typeof createClient>;
let clients: Client[] = [];
let backplane: Backplane | undefined;
if (values.redis !== undefined) {
  const publisher = createClient({ url: values.redis, disableOfflineQueue: true });
  const subscriber = createClient({ url: values.redis });
  clients = [publisher, subscriber];
  for (const client of clients) {
    // Errors before the room is open (Redis down at start-up: connect()
    // keeps trying); once open, the room reports them through onError.
    client.on("error", () => {});
  }
  await Promise.all(clients.map((client) => client.connect()));
  backplane = redisBackplane(publisher, subscriber);
}

const room = new Room(values.room, {
  backplane,
  // A client more than 1 MiB behind is closed with 1013 rather than
  // buffering without bound.
  maxBufferedAmount: 1024 * 1024,
  onError: (error) => console.error(`${error.name}: ${error.message}`),
});
await room.open();

const server = serve(async (ws) => {
  room.add(ws);
  // publish() never rejects: backplane failures go to onError.
  for await (const message of ws) room.publish(message);
}, { hostname, port, pingInterval: 10_000, pingTimeout: 10_000 });

const host = hostname.includes(":") ? `[${hostname}]` : hostname;
console.log(`listening on ws://${host}:${server.port}`);

let stopping = false;
async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  Deno.removeSignalListener("SIGINT", stop);
  Deno.removeSignalListener("SIGTERM", stop);
  console.log("shutting down");
  await server.close();
  // Unsubscribing waits for Redis: bounded, as Redis may be down.
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    room.close(),
    new Promise((resolve) => (timer = setTimeout(resolve, 2_000))),
  ]);
  clearTimeout(timer);
  // disconnect(), not quit(): it doesn't wait for a Redis that may be down.
  await Promise.allSettled(clients.map((client) => client.disconnect()));
  console.log("closed");
}
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);
