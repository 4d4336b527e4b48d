/**
 * A tiny chat on `Deno.serve`: the page at `/`, the WebSocket at `/ws`,
 * every message broadcast to everyone connected.
 *
 * Runs unchanged locally and on Deno Deploy:
 *
 * ```sh
 * deno serve --allow-net examples/deploy_chat.ts   # then open http://localhost:8000/
 * ```
 *
 * On Deno Deploy each isolate has its own set of connections: clients
 * connected to different isolates don't see each other's messages.
 *
 * @module
 */

import { broadcast } from "../broadcast.ts";
import { handler, type PlatformConnection } from "../deploy.ts";

const clients = new Set<PlatformConnection>();

const PAGE = `<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Chat</title>
<style>
  body { font: 16px system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
  #log { list-style: none; padding: 0; height: 60vh; overflow-y: auto; border: 1px solid #ccc; }
  #log li { padding: 0.25rem 0.5rem; }
  form { display: flex; gap: 0.5rem; margin-top: 0.5rem; }
  input { flex: 1; font: inherit; }
</style>
<h1>Chat</h1>
<ul id="log"></ul>
<form id="form"><input id="text" autocomplete="off" maxlength="1000" autofocus><button>Send</button></form>
<script>
  const log = document.getElementById("log");
  const text = document.getElementById("text");
  const show = (line) => {
    const item = document.createElement("li");
    item.textContent = line;
    log.append(item);
    log.scrollTop = log.scrollHeight;
  };
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.onmessage = (event) => show(event.data);
  ws.onclose = (event) => show("disconnected (" + event.code + ")");
  document.getElementById("form").onsubmit = (event) => {
    event.preventDefault();
    if (text.value !== "" && ws.readyState === WebSocket.OPEN) ws.send(text.value);
    text.value = "";
  };
</script>
</html>
`;

/** Serves the page and rejects WebSocket requests from pages of other sites. */
function routes(request: Request): Response | undefined {
  const url = new URL(request.url);
  if (url.pathname === "/") {
    return new Response(PAGE, { headers: { "Content-Type": "text/html; charset=utf-8" } });
  }
  if (url.pathname !== "/ws") return new Response("Not found\n", { status: 404 });
  const origin = request.headers.get("Origin");
  if (origin !== null && origin !== url.origin) {
    return new Response("Forbidden origin\n", { status: 403 });
  }
  return undefined; // the WebSocket handshake
}

async function chat(ws: PlatformConnection): Promise<void> {
  const name = `guest-${ws.id}`;
  clients.add(ws);
  broadcast(clients, `${name} joined`);
  try {
    for await (const message of ws) {
      if (typeof message === "string") broadcast(clients, `${name}: ${message}`);
    }
  } finally {
    clients.delete(ws);
    broadcast(clients, `${name} left`);
  }
}

export default {
  fetch: handler(chat, { processRequest: routes, maxSize: 4096 }),
} satisfies Deno.ServeDefaultExport;
