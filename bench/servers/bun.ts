/**
 * Benchmark peer: Bun's built-in WebSocket server (`Bun.serve` with `server.publish` topics).
 *
 *   bench/node_modules/@oven/bun-linux-x64/bin/bun bench/servers/bun.ts --port 9003 [--deflate]
 *
 * `/echo` sends every message back as received; `/broadcast` publishes every message any client
 * sends to the topic every client on that path subscribes to. `--deflate` turns on Bun's
 * permessage-deflate with its default settings.
 *
 * @module
 */

// The few parts of Bun's API this file uses, so that it also type-checks under Deno.
interface SocketData {
  path: string;
}
interface BunSocket {
  data: SocketData;
  send(message: string | Uint8Array): number;
  subscribe(topic: string): void;
}
interface BunServer {
  upgrade(request: Request, options: { data: SocketData }): boolean;
  publish(topic: string, message: string | Uint8Array): number;
}
interface BunServeOptions {
  hostname: string;
  port: number;
  fetch(request: Request, server: BunServer): Response | undefined;
  websocket: {
    perMessageDeflate: boolean;
    open(ws: BunSocket): void;
    message(ws: BunSocket, message: string | Uint8Array): void;
  };
}
interface BunRuntime {
  argv: string[];
  serve(options: BunServeOptions): BunServer;
}
const bun = (globalThis as unknown as { Bun: BunRuntime }).Bun;

const args = bun.argv.slice(2);
const at = args.indexOf("--port");
const port = at >= 0 ? Number(args[at + 1]) : NaN;
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  throw new RangeError(`--port must be an integer from 1 to 65535, got ${args[at + 1]}`);
}
const perMessageDeflate = args.includes("--deflate");
const topic = "broadcast";

function pathOf(url: string): string {
  const start = url.indexOf("/", url.indexOf("//") + 2);
  const query = url.indexOf("?", start);
  return url.slice(start, query < 0 ? url.length : query);
}

const server = bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(request, server) {
    const path = pathOf(request.url);
    if (path !== "/echo" && path !== "/broadcast") {
      return new Response("not found\n", { status: 404 });
    }
    if (server.upgrade(request, { data: { path } })) return undefined;
    return new Response("expected a WebSocket upgrade\n", { status: 426 });
  },
  websocket: {
    perMessageDeflate,
    open(ws) {
      if (ws.data.path === "/broadcast") ws.subscribe(topic);
    },
    message(ws, message) {
      if (ws.data.path === "/echo") ws.send(message);
      else server.publish(topic, message);
    },
  },
});

console.log(`listening on ws://127.0.0.1:${port}`);
