// An echo peer on the npm `ws` library, for the interoperability tests.
//
//   node ws_peer.mjs server            listens on 127.0.0.1, prints {"event":"listening","port":N}
//   node ws_peer.mjs client URL [N]    connects N times (default 1), one after the other
//
// Every message is echoed with its type (text stays text, binary stays binary).
// Text commands: "!close CODE REASON" closes with that code and reason; "!ping"
// pings and answers "!pong-ok" when the pong arrives; "!fragments" sends a
// fragmented text message. Events go to stdout as JSON lines. The process ends
// when stdin closes (server) or after the last connection (client), and after
// 30 s in any case.
import { WebSocket, WebSocketServer } from "ws";

const MAX_PAYLOAD = 64 * 1024 * 1024;
const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");
setTimeout(() => process.exit(2), 30_000).unref();

function run(ws, headers) {
  emit({
    event: "open",
    extensions: headers["sec-websocket-extensions"] ?? null,
  });
  return new Promise((resolve) => {
    ws.on("message", (data, isBinary) => {
      if (!isBinary) {
        const text = data.toString("utf8");
        if (text.startsWith("!close ")) {
          const [, code, ...reason] = text.split(" ");
          ws.close(Number(code), reason.join(" "));
          return;
        }
        if (text === "!ping") {
          ws.once(
            "pong",
            (payload) => ws.send("!pong-ok " + payload.toString("utf8")),
          );
          ws.ping("peer-ping");
          return;
        }
        if (text === "!fragments") {
          ws.send("frag", { fin: false });
          ws.send("men", { fin: false });
          ws.send("ted", { fin: true });
          return;
        }
      }
      ws.send(data, { binary: isBinary });
    });
    ws.on("error", (error) => emit({ event: "error", message: String(error) }));
    ws.on("close", (code, reason) => {
      emit({ event: "close", code, reason: reason.toString("utf8") });
      resolve();
    });
  });
}

const [mode, url, count] = process.argv.slice(2);
if (mode === "server") {
  const server = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    maxPayload: MAX_PAYLOAD,
    perMessageDeflate: true,
  });
  server.on("connection", (ws) => {
    // The response headers aren't exposed here: report the negotiated extension names.
    run(ws, { "sec-websocket-extensions": ws.extensions || null });
  });
  server.on(
    "listening",
    () => emit({ event: "listening", port: server.address().port }),
  );
  process.stdin.resume();
  process.stdin.on("end", () => {
    for (const client of server.clients) client.terminate();
    server.close(() => process.exit(0));
  });
} else if (mode === "client") {
  for (let i = 0; i < Number(count ?? 1); i++) {
    await new Promise((resolve) => {
      const ws = new WebSocket(url, {
        maxPayload: MAX_PAYLOAD,
        perMessageDeflate: true,
      });
      let headers = {};
      ws.once("upgrade", (response) => (headers = response.headers));
      // Listeners are attached when "open" fires, before any message is emitted.
      ws.once("open", () => run(ws, headers).then(resolve));
      ws.once("error", (error) => {
        emit({ event: "error", message: String(error) });
        process.exit(1);
      });
    });
  }
  process.exit(0);
} else {
  console.error("usage: node ws_peer.mjs server | client URL [N]");
  process.exit(64);
}
