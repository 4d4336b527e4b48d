/**
 * Benchmark peer: npm `ws` (with `bufferutil`) under Node.js.
 *
 *   node bench/servers/ws_node.mjs --port 9002 [--deflate]
 *
 * `/echo` sends every message back as received (text stays text, binary stays binary);
 * `/broadcast` sends every message any client sends to every client connected on that path.
 * `--deflate` turns on ws's permessage-deflate with its default settings.
 */
import { createServer } from "node:http";
import { createRequire } from "node:module";
import process from "node:process";

// Loaded through require so that the file needs no import map when type-checked under Deno.
const require = createRequire(import.meta.url);
const { WebSocket, WebSocketServer } = require("ws");

const args = process.argv.slice(2);
const at = args.indexOf("--port");
const port = at >= 0 ? Number(args[at + 1]) : NaN;
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  throw new RangeError(`--port must be an integer from 1 to 65535, got ${args[at + 1]}`);
}
const perMessageDeflate = args.includes("--deflate");

// ws only uses bufferutil when it can load it; fail instead of measuring the slower fallback.
require("bufferutil");

const echo = new WebSocketServer({ noServer: true, perMessageDeflate });
const room = new WebSocketServer({
  noServer: true,
  perMessageDeflate,
  clientTracking: true,
});

const server = createServer((_request, response) => {
  response.writeHead(426, { "content-type": "text/plain" });
  response.end("expected a WebSocket upgrade\n");
});

server.on("upgrade", (request, socket, head) => {
  const query = request.url.indexOf("?");
  const path = query < 0 ? request.url : request.url.slice(0, query);
  if (path === "/echo") {
    echo.handleUpgrade(request, socket, head, (ws) => {
      ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
      ws.on("error", () => {});
    });
  } else if (path === "/broadcast") {
    room.handleUpgrade(request, socket, head, (ws) => {
      ws.on("message", (data, isBinary) => {
        for (const peer of room.clients) {
          if (peer.readyState === WebSocket.OPEN) {
            peer.send(data, { binary: isBinary });
          }
        }
      });
      ws.on("error", () => {});
    });
  } else {
    socket.end(
      "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
  }
});

server.listen(
  port,
  "127.0.0.1",
  () => console.log(`listening on ws://127.0.0.1:${port}`),
);
