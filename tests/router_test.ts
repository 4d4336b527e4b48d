// route(): matching without sockets, then serve() and Deploy's handler() over real loopback
// sockets with Deno's built-in WebSocket client and raw requests, and the example server.

import assert from "node:assert/strict";
import { connect } from "../client.ts";
import type { Connection } from "../connection.ts";
import { handler } from "../deploy.ts";
import { InvalidMessage } from "../errors.ts";
import { requestUrl, route, type Router } from "../router.ts";
import type { ServerConnection } from "../server.ts";
import {
  deferred,
  echo,
  handshakeRequest,
  HOST,
  rawExchange,
  RawPeer,
  selfSignedCert,
  serveLocal,
  startListening,
  within,
} from "./_helpers.ts";

const noop = (): void => {};

// What each socket opened by openWebSocket() received and nobody took yet, and who waits.
const inboxes = new WeakMap<
  WebSocket,
  { messages: unknown[]; waiters: ((data: unknown) => void)[] }
>();

/**
 * Opens Deno's built-in WebSocket client on `url` and waits until it is open; what it receives
 * is kept from the start for nextMessage() (events may come in the same turn as the open).
 */
async function openWebSocket(url: string): Promise<WebSocket> {
  const socket = new WebSocket(url);
  const inbox = { messages: [] as unknown[], waiters: [] as ((data: unknown) => void)[] };
  inboxes.set(socket, inbox);
  socket.addEventListener("message", (event) => {
    const waiter = inbox.waiters.shift();
    if (waiter !== undefined) waiter(event.data);
    else inbox.messages.push(event.data);
  });
  const opened = deferred();
  socket.onopen = () => opened.resolve();
  socket.onerror = (event) => opened.reject(new Error(`${url}: ${(event as ErrorEvent).message}`));
  await within(opened.promise, 5000, `open ${url}`);
  return socket;
}

/** The next message `socket` (from openWebSocket()) receives. */
function nextMessage(socket: WebSocket): Promise<unknown> {
  const inbox = inboxes.get(socket)!;
  if (inbox.messages.length !== 0) return Promise.resolve(inbox.messages.shift());
  return within(new Promise((resolve) => inbox.waiters.push(resolve)), 5000, "message");
}

/** Closes `socket` and waits for its close event. */
async function closeWebSocket(socket: WebSocket): Promise<void> {
  if (socket.readyState === WebSocket.CLOSED) return;
  const closed = new Promise((resolve) =>
    socket.addEventListener("close", resolve, { once: true })
  );
  socket.close();
  await within(closed, 5000, "close");
}

// A router with an echo route, a room route that answers with its params, and a health check.
function testRouter(): Router {
  return route([
    { pattern: "/echo", handler: echo as (connection: Connection) => Promise<void> },
    {
      pattern: "/rooms/:name",
      handler: async (ws) => {
        await ws.send(JSON.stringify(ws.params));
      },
    },
    { pattern: "/healthz", respond: () => new Response("OK\n") },
  ]);
}

// ---- matching, without sockets

Deno.test("router: match gives the first route that matches and its params", () => {
  const router = testRouter();
  const found = router.match("http://example.com/rooms/lobby?x=1");
  assert.deepEqual(
    { pattern: found?.route.pattern, params: found?.params },
    { pattern: "/rooms/:name", params: { name: "lobby" } },
  );
});

Deno.test("router: a path nested one level too deep matches nothing", () => {
  const router = testRouter();
  assert.deepEqual(
    ["/rooms/a/b", "/echo/x", "/rooms/", "/echo/"].map((path) =>
      router.match(`http://example.com${path}`)
    ),
    [undefined, undefined, undefined, undefined],
  );
});

Deno.test("router: params are percent-decoded", () => {
  const router = testRouter();
  assert.deepEqual(router.match("http://example.com/rooms/tea%20room%E2%82%AC%2F1")?.params, {
    name: "tea room€/1",
  });
});

Deno.test("router: invalid percent-encoding in a group throws InvalidMessage", () => {
  const router = testRouter();
  let error: unknown;
  try {
    router.match("http://example.com/rooms/%E2%82");
  } catch (caught) {
    error = caught;
  }
  assert.ok(error instanceof InvalidMessage);
  assert.equal(
    error.message,
    "invalid percent-encoding in the request URL: pathname group name is %E2%82",
  );
});

Deno.test("router: a host pattern's groups join the pathname's", () => {
  const router = route([{
    pattern: new URLPattern({ hostname: ":tenant.example.com", pathname: "/ws/:channel" }),
    handler: noop,
  }]);
  assert.deepEqual(
    [
      router.match("http://acme.example.com:8080/ws/news")?.params,
      router.match("http://acme.example.org/ws/news"),
    ],
    [{ tenant: "acme", channel: "news" }, undefined],
  );
});

Deno.test("router: a route without handler or respond is a TypeError", () => {
  assert.throws(() => route([{ pattern: "/x" }]), {
    name: "TypeError",
    message: "route /x: needs a handler or respond",
  });
});

Deno.test("router: requestUrl builds the URL from Host and the path, and refuses a bad Host", () => {
  assert.deepEqual(
    [
      requestUrl("/a?b=1", "example.com:8080", false)?.href,
      requestUrl("/a", "[::1]:80", true)?.href,
      requestUrl("//evil.example/x", "example.com", false)?.href,
      requestUrl("/a", "evil.example/x", false),
      requestUrl("/a", "user@example.com", false),
      requestUrl("/a", undefined, false),
      requestUrl("*", "example.com", false),
    ],
    [
      "http://example.com:8080/a?b=1",
      "https://[::1]:80/a",
      "http://example.com//evil.example/x",
      undefined,
      undefined,
      undefined,
      undefined,
    ],
  );
});

Deno.test("router: calling a router with a connection it didn't attach is a TypeError", async () => {
  const router = testRouter();
  const connection = { id: 7 } as unknown as Connection;
  await assert.rejects(router(connection), {
    name: "TypeError",
    message: "connection 7: no route was attached to it",
  });
});

// ---- serve()

Deno.test("router: serve() dispatches Deno's WebSocket client to the route of its path", async () => {
  const { server } = serveLocal(testRouter());
  const base = `ws://${HOST}:${server.port}`;
  const echoSocket = await openWebSocket(`${base}/echo`);
  const roomSocket = await openWebSocket(`${base}/rooms/tea%20room`);
  try {
    const roomReply = nextMessage(roomSocket);
    const echoReply = nextMessage(echoSocket);
    echoSocket.send("hello");
    assert.deepEqual([await echoReply, await roomReply], ["hello", '{"name":"tea room"}']);
  } finally {
    await closeWebSocket(echoSocket);
    await closeWebSocket(roomSocket);
    await server.close();
  }
});

Deno.test("router: serve() answers 404 to paths no route matches, nested ones included", async () => {
  let handled = 0;
  const router = route([
    { pattern: "/echo", handler: () => void handled++ },
    { pattern: "/rooms/:name", handler: () => void handled++ },
  ]);
  const { server } = serveLocal(router);
  try {
    const statuses = [];
    for (const path of ["/nope", "/rooms/a/b", "/echo/x", "/", "/rooms/"]) {
      const response = await rawExchange(server.port, handshakeRequest(server.port, { path }));
      statuses.push({ path, status: response.status, body: response.body });
    }
    assert.deepEqual(statuses, [
      { path: "/nope", status: 404, body: "Not Found\n" },
      { path: "/rooms/a/b", status: 404, body: "Not Found\n" },
      { path: "/echo/x", status: 404, body: "Not Found\n" },
      { path: "/", status: 404, body: "Not Found\n" },
      { path: "/rooms/", status: 404, body: "Not Found\n" },
    ]);
    assert.equal(handled, 0);
  } finally {
    await server.close();
  }
});

Deno.test("router: serve() answers 400 to a group that isn't valid percent-encoding", async () => {
  const { server } = serveLocal(testRouter());
  try {
    const response = await rawExchange(
      server.port,
      handshakeRequest(server.port, { path: "/rooms/%FF" }),
    );
    assert.deepEqual({ status: response.status, body: response.body }, {
      status: 400,
      body:
        "Bad Request: invalid percent-encoding in the request URL: pathname group name is %FF.\n",
    });
  } finally {
    await server.close();
  }
});

Deno.test("router: serve() answers 400 to a malformed Host header", async () => {
  const { server } = serveLocal(testRouter());
  try {
    const response = await rawExchange(
      server.port,
      handshakeRequest(server.port, { path: "/echo", headers: { Host: "a@b" } }),
    );
    assert.deepEqual({ status: response.status, body: response.body }, {
      status: 400,
      body: "Failed to open a WebSocket connection: invalid Host header.\n",
    });
  } finally {
    await server.close();
  }
});

Deno.test("router: serve() matches host patterns against the Host header", async () => {
  const params = deferred<Record<string, string>>();
  const router = route([{
    pattern: new URLPattern({ hostname: ":tenant.example.com", pathname: "/ws" }),
    handler: (ws) => params.resolve({ ...ws.params }),
  }]);
  const { server } = serveLocal(router);
  try {
    const other = await rawExchange(
      server.port,
      handshakeRequest(server.port, { path: "/ws", headers: { Host: "acme.example.org" } }),
    );
    const peer = await RawPeer.connect(server.port);
    try {
      await peer.write(
        handshakeRequest(server.port, { path: "/ws", headers: { Host: "acme.example.com:80" } }),
      );
      const head = await within(peer.readHead(), 5000, "101");
      assert.deepEqual(
        [other.status, head?.split("\r\n")[0], await within(params.promise, 5000, "params")],
        [404, "HTTP/1.1 101 Switching Protocols", { tenant: "acme" }],
      );
    } finally {
      peer.close();
    }
  } finally {
    await server.close();
  }
});

Deno.test("router: serve() answers a plain GET with a route's respond()", async () => {
  const { server } = serveLocal(testRouter());
  try {
    const response = await rawExchange(
      server.port,
      `GET /healthz HTTP/1.1\r\nHost: ${HOST}:${server.port}\r\n\r\n`,
    );
    assert.deepEqual({ status: response.status, body: response.body }, {
      status: 200,
      body: "OK\n",
    });
  } finally {
    await server.close();
  }
});

Deno.test("router: a respond() that returns undefined lets the handshake go on", async () => {
  const seen: string[] = [];
  const router = route<ServerConnection>([{
    pattern: "/private/:name",
    respond: (request, params) => {
      seen.push(`${new URL(request.url).pathname} ${params.name}`);
      return request.headers.get("Authorization") === "Bearer ok"
        ? undefined
        : new Response("Unauthorized\n", { status: 401 });
    },
    handler: (ws) => ws.send(ws.params.name),
  }]);
  const { server } = serveLocal(router);
  try {
    const denied = await rawExchange(
      server.port,
      handshakeRequest(server.port, { path: "/private/a" }),
    );
    const peer = await RawPeer.connect(server.port);
    try {
      await peer.write(
        handshakeRequest(server.port, {
          path: "/private/b",
          headers: { Authorization: "Bearer ok" },
        }),
      );
      await within(peer.readHead(), 5000, "101");
      const frame = await within(peer.readFrame(), 5000, "frame");
      assert.deepEqual(
        [denied.status, new TextDecoder().decode(frame?.data), seen],
        [401, "b", ["/private/a a", "/private/b b"]],
      );
    } finally {
      peer.close();
    }
  } finally {
    await server.close();
  }
});

Deno.test("router: a respond() that throws is answered 500 and logged", async () => {
  const errors: string[] = [];
  const router = route([{
    pattern: "/boom",
    respond: () => {
      throw new Error("boom");
    },
  }]);
  const { server } = serveLocal(router, {
    logger: { debug: noop, info: noop, warn: noop, error: (message) => errors.push(message) },
  });
  try {
    const response = await rawExchange(
      server.port,
      handshakeRequest(server.port, { path: "/boom" }),
    );
    assert.deepEqual(
      [response.status, errors.map((line) => line.replace(/\d+/, "N"))],
      [500, ["connection N: error in a route's respond()"]],
    );
  } finally {
    await server.close();
  }
});

Deno.test("router: serve()'s processRequest runs before the routes", async () => {
  const { server } = serveLocal(testRouter(), {
    processRequest: (connection, request) =>
      request.path === "/nope" ? connection.respond(418, "first\n") : undefined,
  });
  try {
    const response = await rawExchange(
      server.port,
      handshakeRequest(server.port, { path: "/nope" }),
    );
    assert.deepEqual({ status: response.status, body: response.body }, {
      status: 418,
      body: "first\n",
    });
  } finally {
    await server.close();
  }
});

// ---- Deploy's handler()

Deno.test("router: Deploy's handler() answers 404, plain HTTP, and routes with params", async () => {
  const router = route([
    { pattern: "/rooms/:name", handler: (ws) => ws.send(ws.params.name) },
    { pattern: "/healthz", respond: () => new Response("OK\n") },
  ]);
  const controller = new AbortController();
  const served = Deno.serve(
    { hostname: HOST, port: 0, signal: controller.signal, onListen: noop },
    handler(router),
  );
  const base = `${HOST}:${served.addr.port}`;
  try {
    const missing = await fetch(`http://${base}/rooms/a/b`);
    const health = await fetch(`http://${base}/healthz`);
    const socket = await openWebSocket(`ws://${base}/rooms/caf%C3%A9`);
    const message = nextMessage(socket);
    try {
      assert.deepEqual(
        [missing.status, await missing.text(), health.status, await health.text(), await message],
        [404, "Not Found\n", 200, "OK\n", "café"],
      );
    } finally {
      await closeWebSocket(socket);
    }
  } finally {
    controller.abort();
    await served.finished;
  }
});

Deno.test("router: Deploy's handler() answers 400 to a group that isn't valid percent-encoding", async () => {
  let handled = 0;
  const router = route([{ pattern: "/rooms/:name", handler: () => void handled++ }]);
  const controller = new AbortController();
  const served = Deno.serve(
    { hostname: HOST, port: 0, signal: controller.signal, onListen: noop },
    handler(router),
  );
  try {
    const response = await rawExchange(
      served.addr.port,
      handshakeRequest(served.addr.port, { path: "/rooms/%C3" }),
    );
    assert.deepEqual([response.status, response.body, handled], [
      400,
      "Bad Request: invalid percent-encoding in the request URL: pathname group name is %C3.\n",
      0,
    ]);
  } finally {
    controller.abort();
    await served.finished;
  }
});

Deno.test("router: serve() over TLS matches requests as https: URLs", async () => {
  await using tls = await selfSignedCert();
  const router = route([
    { pattern: new URLPattern({ protocol: "https", pathname: "/secure" }), handler: noop },
  ]);
  const secure = serveLocal(router, { tls: { cert: tls.cert, key: tls.key } }).server;
  const plain = serveLocal(router).server;
  try {
    const ws = await connect(`wss://localhost:${secure.port}/secure`, { caCerts: [tls.cert] });
    await ws.closed;
    const refused = await rawExchange(
      plain.port,
      handshakeRequest(plain.port, { path: "/secure" }),
    );
    assert.deepEqual([(await ws.closed).code, refused.status], [1000, 404]);
  } finally {
    await secure.close();
    await plain.close();
  }
});

// ---- the example

Deno.test("router: examples/router_server.ts echoes, shares rooms, and answers 404", async () => {
  await using script = await startListening("examples/router_server.ts", [
    "--port",
    "0",
    "--hostname",
    HOST,
  ]);
  const base = `ws://${HOST}:${script.port}`;
  const sockets: WebSocket[] = [];
  try {
    const echoSocket = await openWebSocket(`${base}/echo`);
    const [a1, a2, b] = [
      await openWebSocket(`${base}/rooms/tea%20room`),
      await openWebSocket(`${base}/rooms/tea%20room`),
      await openWebSocket(`${base}/rooms/other`),
    ];
    sockets.push(echoSocket, a1, a2, b);
    const echoed = nextMessage(echoSocket);
    echoSocket.send("ping");
    assert.equal(await echoed, "ping");
    // Everyone in "tea room", the sender included, gets it; "other" doesn't.
    const toA1 = nextMessage(a1), toA2 = nextMessage(a2);
    a1.send("hello room");
    assert.deepEqual([await toA1, await toA2], ["hello room", "hello room"]);
    // b then hears its own message and nothing before it.
    b.send("only b");
    assert.equal(await nextMessage(b), "only b");
    const statuses = [];
    for (const path of ["/rooms/a/b", "/echo/x", "/nothing"]) {
      statuses.push(
        (await rawExchange(script.port, handshakeRequest(script.port, { path }))).status,
      );
    }
    assert.deepEqual(statuses, [404, 404, 404]);
  } finally {
    for (const socket of sockets) await closeWebSocket(socket);
  }
});
