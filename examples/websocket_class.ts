/**
 * Hands this library's `WebSocket` class to code written for the browser's
 * `WebSocket` API, the way `graphql-ws` (`webSocketImpl`) and reconnecting
 * wrappers take an implementation. The code below the first line of dashes
 * knows nothing of this library; the class gives it a custom header,
 * permessage-deflate and a size limit without a change.
 *
 * Run: deno run --allow-net examples/websocket_class.ts
 */

import { serve, WebSocket, type WebSocketInit } from "../mod.ts";

// ---------------------------------------------------------------------------
// Code written for the browser API: it takes the WebSocket class to use.

/** Sends each question and resolves with the answers once the server replied to all. */
function ask(
  url: string,
  questions: string[],
  webSocketImpl: typeof globalThis.WebSocket = globalThis.WebSocket,
): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const socket = new webSocketImpl(url, ["answers.v1"]);
    const answers: string[] = [];
    socket.onopen = () => {
      for (const question of questions) socket.send(question);
    };
    socket.onmessage = (event: MessageEvent) => {
      answers.push(String(event.data));
      if (answers.length === questions.length) socket.close(1000, "thanks");
    };
    socket.onerror = () => reject(new Error(`cannot connect to ${url}`));
    socket.onclose = (event: CloseEvent) => {
      if (event.wasClean) resolve(answers);
    };
  });
}

// ---------------------------------------------------------------------------
// Our side: a server that says what it saw, and the class with our options.

const server = serve(async (ws) => {
  const token = ws.request?.headers.get("Authorization") ?? "none";
  const compressed = ws.extensions.length > 0 ? "compressed" : "not compressed";
  for await (const question of ws) {
    await ws.send(`${question}: ${ws.subprotocol}, ${compressed}, token ${token}`);
  }
}, { hostname: "127.0.0.1", port: 0, subprotocols: ["answers.v1"] });

/** The browser's constructor, with our options fixed: what `webSocketImpl` wants. */
class AuthenticatedWebSocket extends WebSocket {
  constructor(url: string | URL, protocols?: string | string[] | WebSocketInit) {
    super(url, protocols, {
      additionalHeaders: { Authorization: "Bearer demo-token" },
      maxSize: 64 * 1024,
    });
  }
}

const url = `ws://127.0.0.1:${server.port}/`;
for (const answer of await ask(url, ["first", "second"], AuthenticatedWebSocket)) {
  console.log(answer);
}
// The same code with the built-in (no header, no compression in Deno's client).
for (const answer of await ask(url, ["third"])) console.log(answer);
await server.close();
