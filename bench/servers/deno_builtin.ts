/**
 * Benchmark peer: Deno's built-in WebSocket server (`Deno.serve` + `Deno.upgradeWebSocket`).
 *
 *   deno run --allow-net bench/servers/deno_builtin.ts --port 9001 [--deflate]
 *
 * `/echo` sends every message back as received; `/broadcast` sends every message any client
 * sends to every client connected on that path. `Deno.upgradeWebSocket` has no permessage-deflate,
 * so `--deflate` only prints a note and the server runs uncompressed.
 *
 * @module
 */

function portFromArgs(args: string[]): number {
  const at = args.indexOf("--port");
  const port = at >= 0 ? Number(args[at + 1]) : NaN;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RangeError(`--port must be an integer from 1 to 65535, got ${args[at + 1]}`);
  }
  return port;
}

const port = portFromArgs(Deno.args);
if (Deno.args.includes("--deflate")) {
  console.error("deno_builtin: --deflate ignored: Deno.upgradeWebSocket has no permessage-deflate");
}

const room = new Set<WebSocket>();

function pathOf(url: string): string {
  const start = url.indexOf("/", url.indexOf("//") + 2);
  const query = url.indexOf("?", start);
  return url.slice(start, query < 0 ? url.length : query);
}

Deno.serve({
  hostname: "127.0.0.1",
  port,
  onListen: ({ port }) => console.log(`listening on ws://127.0.0.1:${port}`),
}, (request: Request): Response => {
  const path = pathOf(request.url);
  if (path !== "/echo" && path !== "/broadcast") {
    return new Response("not found\n", { status: 404 });
  }
  if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") {
    return new Response("expected a WebSocket upgrade\n", { status: 426 });
  }
  const { socket, response } = Deno.upgradeWebSocket(request);
  socket.binaryType = "arraybuffer";
  if (path === "/echo") {
    socket.onmessage = (event) => socket.send(event.data);
  } else {
    socket.onopen = () => room.add(socket);
    socket.onclose = () => room.delete(socket);
    socket.onmessage = (event) => {
      const message = event.data;
      for (const peer of room) {
        if (peer.readyState === WebSocket.OPEN) peer.send(message);
      }
    };
  }
  socket.onerror = () => {};
  return response;
});
