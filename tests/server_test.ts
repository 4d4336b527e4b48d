// serve() over real loopback sockets: handshake rejections with their exact
// HTTP statuses, hooks, handler errors, shutdown and many connections.

import assert from "node:assert/strict";
import { connect } from "../client.ts";
import type { Logger, StreamConnection } from "../connection.ts";
import { ConnectionClosedError, InvalidStatus } from "../errors.ts";
import { Close } from "../frames.ts";
import { Headers } from "../headers.ts";
import { Response } from "../http11.ts";
import { basicAuth, serve, SERVER_HEADER } from "../server.ts";
import {
  assertTook,
  deferred,
  delay,
  echo,
  handshakeRequest,
  HOST,
  type HttpHead,
  pendingAfter,
  randomBytes,
  rawExchange,
  RawPeer,
  rejection,
  selfSignedCert,
  serveLocal,
  TIMER_SLACK,
  within,
} from "./_helpers.ts";

/** The status, selected headers and body of a response, for whole-value comparisons. */
function summary(response: HttpHead, headers: string[] = []): Record<string, unknown> {
  const picked: Record<string, string | undefined> = {};
  for (const name of headers) picked[name] = response.headers[name];
  return { status: response.status, headers: picked, body: response.body };
}

// ---- handshake rejections, with their HTTP status

Deno.test("server: a malformed request is answered 400", async () => {
  const { server } = serveLocal(echo);
  try {
    const response = await rawExchange(server.port, "HELLO\r\n\r\n");
    assert.deepEqual(summary(response, ["connection"]), {
      status: 400,
      headers: { connection: "close" },
      body: "Failed to open a WebSocket connection: invalid HTTP request line: HELLO.\n",
    });
  } finally {
    await server.close();
  }
});

Deno.test("server: a request with a bad Sec-WebSocket-Key is answered 400", async () => {
  const { server } = serveLocal(echo);
  try {
    const response = await rawExchange(
      server.port,
      handshakeRequest(server.port, { key: "not-a-key" }),
    );
    assert.deepEqual(summary(response), {
      status: 400,
      headers: {},
      body: "Failed to open a WebSocket connection: invalid Sec-WebSocket-Key header: not-a-key.\n",
    });
  } finally {
    await server.close();
  }
});

Deno.test("server: a request without Sec-WebSocket-Key is answered 400", async () => {
  const { server } = serveLocal(echo);
  try {
    const response = await rawExchange(
      server.port,
      handshakeRequest(server.port, { headers: { "Sec-WebSocket-Key": "" } }),
    );
    assert.deepEqual(summary(response), {
      status: 400,
      headers: {},
      body: "Failed to open a WebSocket connection: missing Sec-WebSocket-Key header.\n",
    });
  } finally {
    await server.close();
  }
});

Deno.test("server: a request over the header count limit is answered 400", async () => {
  const { server } = serveLocal(echo, { httpLimits: { maxNumHeaders: 8 } });
  try {
    const headers: Record<string, string> = {};
    for (let i = 0; i < 10; i++) headers[`X-Extra-${i}`] = "1";
    const response = await rawExchange(server.port, handshakeRequest(server.port, { headers }));
    assert.deepEqual(summary(response), {
      status: 400,
      headers: {},
      body: "Failed to open a WebSocket connection: too many HTTP headers: limit is 8.\n",
    });
  } finally {
    await server.close();
  }
});

Deno.test("server: a request with a header line over 8 192 bytes is answered 400", async () => {
  const { server } = serveLocal(echo);
  try {
    const response = await rawExchange(
      server.port,
      handshakeRequest(server.port, { headers: { "X-Long": "a".repeat(9000) } }),
    );
    assert.deepEqual(summary(response), {
      status: 400,
      headers: {},
      body: "Failed to open a WebSocket connection: line too long: limit is 8192 bytes.\n",
    });
  } finally {
    await server.close();
  }
});

Deno.test("server: an Origin not in origins is answered 403", async () => {
  const { server } = serveLocal(echo, { origins: ["https://good.example"] });
  try {
    const response = await rawExchange(
      server.port,
      handshakeRequest(server.port, { headers: { Origin: "https://evil.example" } }),
    );
    assert.deepEqual(summary(response), {
      status: 403,
      headers: {},
      body: "Failed to open a WebSocket connection: invalid Origin header: https://evil.example.\n",
    });
    const good = await connect(`ws://${HOST}:${server.port}/`, { origin: "https://good.example" });
    await good.close();
  } finally {
    await server.close();
  }
});

Deno.test("server: an unsupported Sec-WebSocket-Version is answered 426", async () => {
  const { server } = serveLocal(echo);
  try {
    const response = await rawExchange(
      server.port,
      handshakeRequest(server.port, { headers: { "Sec-WebSocket-Version": "8" } }),
    );
    assert.deepEqual(summary(response, ["sec-websocket-version"]), {
      status: 426,
      headers: { "sec-websocket-version": "13" },
      body: "Failed to open a WebSocket connection: invalid Sec-WebSocket-Version header: 8.\n",
    });
  } finally {
    await server.close();
  }
});

Deno.test("server: a plain HTTP request without Upgrade is answered 426", async () => {
  const { server } = serveLocal(echo);
  try {
    const response = await rawExchange(
      server.port,
      `GET / HTTP/1.1\r\nHost: ${HOST}:${server.port}\r\n\r\n`,
    );
    assert.deepEqual(summary(response, ["upgrade"]), {
      status: 426,
      headers: { upgrade: "websocket" },
      body: "Failed to open a WebSocket connection: missing Connection header.\n\n" +
        "You cannot access a WebSocket server directly with a browser. You need a WebSocket client.\n",
    });
  } finally {
    await server.close();
  }
});

Deno.test("server: a request with Connection: Upgrade but no Upgrade header is answered 426", async () => {
  const { server } = serveLocal(echo);
  try {
    const response = await rawExchange(
      server.port,
      handshakeRequest(server.port, { headers: { Upgrade: "" } }),
    );
    assert.deepEqual([response.status, response.headers.upgrade, response.body.split("\n")[0]], [
      426,
      "websocket",
      "Failed to open a WebSocket connection: missing Upgrade header.",
    ]);
  } finally {
    await server.close();
  }
});

Deno.test("server: handshakes beyond maxConnections are answered 503", async () => {
  const { server, uri } = serveLocal(echo, { maxConnections: 1 });
  const first = await connect(uri);
  try {
    const response = await rawExchange(server.port, handshakeRequest(server.port));
    assert.deepEqual(summary(response), {
      status: 503,
      headers: {},
      body: "Too many connections: the limit is 1.\n",
    });
    await first.close();
    await within(
      (async () => {
        while (server.connections.size !== 0) await new Promise((r) => setTimeout(r, 5));
      })(),
      2000,
      "connection removed",
    );
    const second = await connect(uri);
    await second.close();
  } finally {
    await first.close();
    await server.close();
  }
});

Deno.test("server: basicAuth answers 401 with WWW-Authenticate without valid credentials", async () => {
  const { server } = serveLocal(echo, {
    processRequest: basicAuth({
      realm: "chat",
      check: (user, password) => user === "alice" && password === "secret",
    }),
  });
  try {
    const missing = await rawExchange(server.port, handshakeRequest(server.port));
    const wrong = await rawExchange(
      server.port,
      handshakeRequest(server.port, { headers: { Authorization: `Basic ${btoa("alice:nope")}` } }),
    );
    assert.deepEqual(
      [summary(missing, ["www-authenticate"]), summary(wrong, ["www-authenticate"])],
      [
        {
          status: 401,
          headers: { "www-authenticate": 'Basic realm="chat", charset="UTF-8"' },
          body: "Missing credentials\n",
        },
        {
          status: 401,
          headers: { "www-authenticate": 'Basic realm="chat", charset="UTF-8"' },
          body: "Invalid credentials\n",
        },
      ],
    );
    const ws = await connect(`ws://alice:secret@${HOST}:${server.port}/`);
    await ws.close();
  } finally {
    await server.close();
  }
});

// ---- openTimeout against slow clients

Deno.test("server: a client sending half a request is dropped within openTimeout", async () => {
  const { server } = serveLocal(echo, { openTimeout: 200 });
  const started = performance.now(); // before the server's timer can start
  const peer = await RawPeer.connect(server.port);
  try {
    await peer.write(`GET / HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: webso`);
    const rest = await within(peer.readToEnd(), 200 + TIMER_SLACK, "server closes");
    const elapsed = performance.now() - started;
    assert.deepEqual(rest, new Uint8Array(0));
    assertTook(elapsed, 190, 200, "dropped");
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("server: a client sending nothing is dropped within openTimeout", async () => {
  const { server } = serveLocal(echo, { openTimeout: 200 });
  const started = performance.now(); // before the server's timer can start
  const peer = await RawPeer.connect(server.port);
  try {
    const rest = await within(peer.readToEnd(), 200 + TIMER_SLACK, "server closes");
    const elapsed = performance.now() - started;
    assert.deepEqual(rest, new Uint8Array(0));
    assertTook(elapsed, 190, 200, "dropped");
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("server: a client that leaves before the handshake doesn't stop the server", async () => {
  const { server, uri } = serveLocal(echo);
  try {
    (await RawPeer.connect(server.port)).close();
    const half = await RawPeer.connect(server.port);
    await half.write("GET / HTTP/1.1\r\n");
    half.close();
    const ws = await connect(uri);
    await ws.send("still serving");
    assert.equal(await ws.recv(), "still serving");
    await ws.close();
  } finally {
    await server.close();
  }
});

// ---- hooks

Deno.test("server: processRequest answers plain HTTP with a WHATWG Response", async () => {
  const { server, uri } = serveLocal(echo, {
    processRequest: (_connection, request) =>
      request.path === "/healthz"
        ? new globalThis.Response("OK\n", { status: 200, headers: { "X-Health": "good" } })
        : undefined,
  });
  try {
    const response = await rawExchange(
      server.port,
      `GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`,
    );
    assert.deepEqual(summary(response, ["x-health", "content-length", "connection"]), {
      status: 200,
      headers: { "x-health": "good", "content-length": "3", connection: "close" },
      body: "OK\n",
    });
    const ws = await connect(uri);
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("server: processRequest answers with our Response and respond()", async () => {
  const { server } = serveLocal(echo, {
    processRequest: (connection, request) => {
      if (request.path === "/teapot") {
        const body = new TextEncoder().encode("short and stout\n");
        return new Response(
          418,
          "I'm a teapot",
          new Headers({ "Content-Length": String(body.length), Connection: "close" }),
          body,
        );
      }
      return connection.respond(404, "nothing here\n");
    },
  });
  try {
    const teapot = await rawExchange(server.port, `GET /teapot HTTP/1.1\r\nHost: x\r\n\r\n`);
    const missing = await rawExchange(server.port, handshakeRequest(server.port));
    assert.deepEqual([summary(teapot), summary(missing, ["content-type"])], [
      { status: 418, headers: {}, body: "short and stout\n" },
      {
        status: 404,
        headers: { "content-type": "text/plain; charset=utf-8" },
        body: "nothing here\n",
      },
    ]);
  } finally {
    await server.close();
  }
});

Deno.test("server: processRequest may be async and see the request", async () => {
  const { server, uri } = serveLocal(echo, {
    processRequest: async (_connection, request) => {
      await new Promise((resolve) => setTimeout(resolve, 10));
      return request.headers.get("X-Allowed") === "yes"
        ? undefined
        : new globalThis.Response("no\n", { status: 403 });
    },
  });
  try {
    const error = await rejection(connect(uri));
    assert.ok(error instanceof InvalidStatus);
    assert.equal(error.response.statusCode, 403);
    const ws = await connect(uri, { additionalHeaders: { "X-Allowed": "yes" } });
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("server: a processRequest that throws is answered 500 and the server keeps serving", async () => {
  const errors: string[] = [];
  const { server, uri } = serveLocal(echo, {
    processRequest: (_connection, request) => {
      if (request.path === "/bug") throw new Error("hook bug");
      return undefined;
    },
    logger: { debug() {}, info() {}, warn() {}, error: (message) => errors.push(message) },
  });
  try {
    const response = await rawExchange(
      server.port,
      handshakeRequest(server.port, { path: "/bug" }),
    );
    assert.deepEqual(summary(response), {
      status: 500,
      headers: {},
      body: "Failed to open a WebSocket connection.\nSee server log for more information.\n",
    });
    assert.deepEqual(errors.map((line) => line.replace(/\d+/, "N")), [
      "connection N: error in processRequest",
    ]);
    const ws = await connect(uri);
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("server: a processResponse that throws is answered 500", async () => {
  const { server } = serveLocal(echo, {
    processResponse: () => {
      throw new Error("hook bug");
    },
    logger: { debug() {}, info() {}, warn() {}, error() {} },
  });
  try {
    const response = await rawExchange(server.port, handshakeRequest(server.port));
    assert.deepEqual(summary(response), {
      status: 500,
      headers: {},
      body: "Failed to open a WebSocket connection.\nSee server log for more information.\n",
    });
  } finally {
    await server.close();
  }
});

Deno.test("server: processResponse adds a header to the 101 response", async () => {
  const { server, uri } = serveLocal(echo, {
    processResponse: (_connection, request, response) => {
      response.headers.append("X-Request-Path", request.path);
      return undefined;
    },
  });
  try {
    const ws = await connect(uri + "chat?room=1");
    assert.deepEqual([ws.response?.statusCode, ws.response?.headers.get("X-Request-Path")], [
      101,
      "/chat?room=1",
    ]);
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("server: processResponse may replace the response", async () => {
  const { server, uri } = serveLocal(echo, {
    processResponse: () => new globalThis.Response("maintenance\n", { status: 503 }),
  });
  try {
    const error = await rejection(connect(uri));
    assert.ok(error instanceof InvalidStatus);
    assert.deepEqual(
      [error.response.statusCode, new TextDecoder().decode(error.response.body)],
      [503, "maintenance\n"],
    );
  } finally {
    await server.close();
  }
});

Deno.test("server: the Server header is sent by default and left out with null", async () => {
  const withHeader = serveLocal(echo);
  const without = serveLocal(echo, { serverHeader: null });
  try {
    const a = await connect(withHeader.uri);
    const b = await connect(without.uri);
    assert.deepEqual([a.response?.headers.get("Server"), b.response?.headers.get("Server")], [
      SERVER_HEADER,
      undefined,
    ]);
    await a.close();
    await b.close();
  } finally {
    await withHeader.server.close();
    await without.server.close();
  }
});

Deno.test("server: selectSubprotocol picks among the offered subprotocols", async () => {
  const { server, uri } = serveLocal((ws) => ws.send(String(ws.subprotocol)), {
    selectSubprotocol: (offered) => offered.find((name) => name.endsWith(".v2")),
  });
  try {
    const ws = await connect(uri, { subprotocols: ["chat.v1", "chat.v2"] });
    assert.deepEqual([ws.subprotocol, await ws.recv()], ["chat.v2", "chat.v2"]);
    await ws.closed;
  } finally {
    await server.close();
  }
});

// ---- handlers, shutdown, scale

Deno.test("server: a handler exception closes with 1011 and the server keeps serving", async () => {
  let calls = 0;
  const { server, uri } = serveLocal(async (ws) => {
    if (++calls === 1) throw new Error("handler bug");
    await echo(ws);
  }, { logger: { debug() {}, info() {}, warn() {}, error() {} } });
  try {
    const broken = await connect(uri);
    const error = await rejection(broken.recv());
    assert.ok(error instanceof ConnectionClosedError);
    assert.deepEqual(error.rcvd, new Close(1011, "internal error"));
    const ws = await connect(uri);
    await ws.send("fine");
    assert.equal(await ws.recv(), "fine");
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("server: the connection closes with 1000 when the handler returns", async () => {
  const { server, uri } = serveLocal(() => {});
  try {
    const ws = await connect(uri);
    const result = await within(ws.closed, TIMER_SLACK, "close");
    assert.deepEqual([result.code, result.wasClean], [1000, true]);
  } finally {
    await server.close();
  }
});

Deno.test("server: close() closes every connection with 1001 and stops accepting", async () => {
  const { server, uri } = serveLocal(echo);
  const clients: StreamConnection[] = [];
  for (let i = 0; i < 3; i++) clients.push(await connect(uri));
  assert.equal(server.connections.size, 3);
  await within(server.close(), TIMER_SLACK, "server.close()");
  const results = await Promise.all(clients.map((ws) => ws.closed));
  assert.deepEqual(results.map((result) => [result.code, result.reason]), [
    [1001, "server shutting down"],
    [1001, "server shutting down"],
    [1001, "server shutting down"],
  ]);
  assert.equal(server.connections.size, 0);
  const error = await rejection(connect(uri));
  assert.ok(error instanceof Deno.errors.ConnectionRefused);
  await server.finished;
});

Deno.test("server: close() drops handshakes still in progress after closeTimeout", async () => {
  // processRequest never answers: the handshake stays in progress.
  const inProgress = deferred();
  const { server } = serveLocal(echo, {
    closeTimeout: 300,
    openTimeout: 10_000,
    processRequest: () => {
      inProgress.resolve();
      return new Promise(() => {});
    },
  });
  const peer = await RawPeer.connect(server.port);
  try {
    await peer.write(`GET / HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    await within(inProgress.promise, TIMER_SLACK, "processRequest called");
    const started = performance.now();
    await within(server.close(), 300 + TIMER_SLACK, "server.close()");
    const closing = performance.now() - started;
    // Nothing outlives close(): the socket is already closed (else EOF would come only after
    // openTimeout, 10 s).
    assert.deepEqual(await within(peer.readToEnd(), TIMER_SLACK, "EOF"), new Uint8Array(0));
    assertTook(closing, 250, 300, "close() ended");
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("server: close() drops at once connections that haven't sent a whole request", async () => {
  // closeTimeout and openTimeout well over TIMER_SLACK: "at once" is told apart from either.
  const { server } = serveLocal(echo, { closeTimeout: 15_000, openTimeout: 20_000 });
  const idle = await RawPeer.connect(server.port);
  const partial = await RawPeer.connect(server.port);
  try {
    await partial.write(`GET / HTTP/1.1\r\nHost: ${HOST}\r\n`);
    await delay(50);
    const started = performance.now();
    await within(server.close(), 2 * TIMER_SLACK, "server.close()");
    const closing = performance.now() - started;
    assert.deepEqual(await within(idle.readToEnd(), TIMER_SLACK, "EOF"), new Uint8Array(0));
    assert.deepEqual(await within(partial.readToEnd(), TIMER_SLACK, "EOF"), new Uint8Array(0));
    assertTook(closing, 0, 0, "close() ended");
  } finally {
    idle.close();
    partial.close();
    await server.close();
  }
});

Deno.test("server: aborting the signal closes the server", async () => {
  const controller = new AbortController();
  const { server, uri } = serveLocal(echo, { signal: controller.signal });
  const ws = await connect(uri);
  controller.abort();
  await within(server.finished, TIMER_SLACK, "server finished");
  assert.equal((await ws.closed).code, 1001);
});

Deno.test("server: await using closes the server", async () => {
  let ws: StreamConnection;
  {
    await using server = serveLocal(echo).server;
    ws = await connect(`ws://${HOST}:${server.port}/`);
  }
  assert.equal((await ws.closed).code, 1001);
});

Deno.test("server: handles 1000 concurrent connections", async () => {
  const { server, uri } = serveLocal(echo, { compression: null, pingInterval: null });
  const clients: StreamConnection[] = [];
  try {
    const started = performance.now();
    // Connect in batches so the listen backlog never overflows.
    for (let batch = 0; batch < 10; batch++) {
      clients.push(
        ...await Promise.all(
          Array.from(
            { length: 100 },
            () => connect(uri, { compression: null, pingInterval: null }),
          ),
        ),
      );
    }
    assert.equal(server.connections.size, 1000);
    await Promise.all(clients.map((ws, i) => ws.send(`message ${i}`)));
    const replies = await Promise.all(clients.map((ws) => ws.recv()));
    assert.deepEqual(replies, clients.map((_, i) => `message ${i}`));
    await Promise.all(clients.map((ws) => ws.close()));
    // Generous: this is a capacity test, not a benchmark (`deno task bench` measures speed).
    const elapsed = performance.now() - started;
    assert.ok(elapsed < 60_000, `took ${elapsed} ms`);
  } finally {
    await Promise.all(clients.map((ws) => ws.close()));
    await server.close();
  }
});

// ---- the echo examples, run as their users run them

const EXAMPLES = new URL("../examples/", import.meta.url).pathname;

Deno.test("server: the echo examples echo stdin lines, honour the flags and stop on SIGTERM", async () => {
  const server = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${EXAMPLES}echo_server.ts`,
      "--port",
      "0",
      "--max-size",
      "1000",
      "--no-compression",
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdout = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const stderr = new globalThis.Response(server.stderr).text();
  try {
    let output = "";
    while (!output.includes("\n")) {
      const { value, done } = await within(stdout.read(), 10_000, "listening line");
      if (done) break;
      output += value;
    }
    const uri = /^listening on (ws:\/\/127\.0\.0\.1:\d+)\n$/.exec(output)?.[1];
    assert.ok(uri !== undefined, `unexpected output: ${output}`);

    const client = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${EXAMPLES}echo_client.ts`, `${uri}/any/path`],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = client.stdin.getWriter();
    await writer.write(new TextEncoder().encode("hello\nwörld\n\nlast line without newline"));
    await writer.close();
    const result = await within(client.output(), 10_000, "echo client");
    assert.deepEqual(
      [
        result.code,
        new TextDecoder().decode(result.stdout),
        new TextDecoder().decode(result.stderr),
      ],
      [0, "hello\nwörld\n\nlast line without newline\n", ""],
    );

    const ws = await connect(uri);
    assert.deepEqual(ws.extensions, []);
    await ws.send(new Uint8Array([1, 2, 3]));
    assert.deepEqual(await ws.recv(), new Uint8Array([1, 2, 3]));
    await ws.send("x".repeat(1001));
    const error = await rejection(ws.recv());
    assert.ok(error instanceof ConnectionClosedError);
    assert.equal(error.code, 1009);

    server.kill("SIGTERM");
    assert.equal((await within(server.status, 5000, "server exit")).code, 0);
  } finally {
    try {
      server.kill("SIGKILL");
    } catch {
      // already exited
    }
    await server.status;
    await stdout.cancel();
    await stderr;
  }
});

Deno.test("server: the echo client exits as soon as the server closes, stdin still open", async () => {
  for (const [code, exitCode] of [[1000, 0], [1011, 1]]) {
    const { server, uri } = serveLocal(async (ws) => {
      await ws.send("m1");
      await ws.close(code, "going away now");
    });
    const client = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${EXAMPLES}echo_client.ts`, uri],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = client.stdin.getWriter();
    try {
      await writer.write(new TextEncoder().encode("a line\n")); // and stdin stays open
      const result = await within(client.output(), 5000, `echo client after close ${code}`);
      const stderr = new TextDecoder().decode(result.stderr);
      assert.equal(result.code, exitCode, stderr);
      assert.ok(new TextDecoder().decode(result.stdout).startsWith("m1\n"));
      if (code !== 1000) assert.match(stderr, /^connection closed: .*1011.*going away now/);
    } finally {
      try {
        client.kill("SIGKILL");
      } catch {
        // already exited
      }
      await writer.close().catch(() => {});
      await client.status;
      await server.close();
    }
  }
});

Deno.test("server: send() waits for a client that doesn't read, and close() still ends within closeTimeout", async () => {
  const waited = deferred<number>();
  const sendError = deferred<unknown>();
  const { server } = serveLocal(async (ws) => {
    const chunk = randomBytes(1024 * 1024);
    try {
      while (true) {
        const send = ws.send(chunk);
        if (await pendingAfter(send, 200)) {
          waited.resolve(ws.bufferedAmount);
          await send;
        }
      }
    } catch (error) {
      sendError.resolve(error);
    }
  }, { closeTimeout: 300, compression: null, pingInterval: null });
  const peer = await RawPeer.connect(server.port);
  try {
    await peer.write(handshakeRequest(server.port));
    await peer.readHead(); // and nothing more: the client never reads
    const buffered = await within(waited.promise, 10_000, "send waiting");
    assert.ok(buffered > 32 * 1024, `bufferedAmount ${buffered}`);
    const started = performance.now();
    await within(server.close(), 300 + TIMER_SLACK, "server.close()");
    const elapsed = performance.now() - started;
    const error = await within(sendError.promise, TIMER_SLACK, "send error");
    assert.ok(error instanceof ConnectionClosedError);
    assert.deepEqual([error.sent, error.rcvd], [
      new Close(1001, "server shutting down"),
      undefined,
    ]);
    assertTook(elapsed, 250, 300, "close() ended");
  } finally {
    peer.close();
    await server.close();
  }
});

// ---- an existing listener

Deno.test("server: serve({ listener }) serves on a listener the caller made, and closes it", async () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const server = serve(echo, { listener });
  const ws = await connect(`ws://${HOST}:${port}/`);
  try {
    await ws.send("on your listener");
    assert.deepEqual([server.port, await ws.recv()], [port, "on your listener"]);
  } finally {
    await ws.close();
    await server.close();
  }
  await assert.rejects(listener.accept(), Deno.errors.BadResource);
});

Deno.test("server: serve({ listener }) takes a TLS listener and serves wss:", async () => {
  await using tls = await selfSignedCert();
  const listener = Deno.listenTls({ hostname: HOST, port: 0, cert: tls.cert, key: tls.key });
  const server = serve(echo, { listener });
  try {
    const ws = await connect(`wss://localhost:${server.port}/`, { caCerts: [tls.cert] });
    await ws.send("secret");
    assert.equal(await ws.recv(), "secret");
    await ws.close();
    assert.deepEqual([(await ws.closed).code, (await ws.closed).wasClean], [1000, true]);
  } finally {
    await server.close();
  }
});

Deno.test("server: serve({ listener }) with a listening option is a TypeError", () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  try {
    assert.throws(() => serve(echo, { listener, port: 8080 }), {
      name: "TypeError",
      message: "serve(): option port can't be given with listener",
    });
  } finally {
    listener.close();
  }
});

// ---- statistics

Deno.test("server: stats() totals the traffic of open and closed connections", async () => {
  const { server, uri } = serveLocal(echo, {
    compression: null,
    processRequest: (connection, request) =>
      request.path === "/healthz" ? connection.respond(200, "OK\n") : undefined,
  });
  try {
    const empty = server.stats();
    const first = await connect(uri, { compression: null });
    const second = await connect(uri, { compression: null });
    await first.send("abc");
    await second.send(new Uint8Array(10));
    await first.recv();
    await second.recv();
    const open = server.stats();
    await first.close();
    await within(
      (async () => {
        while (server.connections.size !== 1) await delay(5);
      })(),
      5000,
      "first connection gone",
    );
    const afterClose = server.stats();
    const health = await rawExchange(
      server.port,
      `GET /healthz HTTP/1.1\r\nHost: ${HOST}:${server.port}\r\n\r\n`,
    );
    await delay(50);
    const last = server.stats();
    assert.deepEqual(empty, {
      messagesReceived: 0,
      bytesReceived: 0,
      wireBytesReceived: 0,
      messagesSent: 0,
      bytesSent: 0,
      wireBytesSent: 0,
      connections: 0,
      opening: 0,
      connectionsOpened: 0,
      notUpgraded: 0,
    });
    const pick = (stats: typeof open) => ({
      messagesReceived: stats.messagesReceived,
      bytesReceived: stats.bytesReceived,
      messagesSent: stats.messagesSent,
      bytesSent: stats.bytesSent,
      connections: stats.connections,
      connectionsOpened: stats.connectionsOpened,
      notUpgraded: stats.notUpgraded,
    });
    const both = {
      messagesReceived: 2,
      bytesReceived: 13,
      messagesSent: 2,
      bytesSent: 13,
      connectionsOpened: 2,
      notUpgraded: 0,
    };
    assert.deepEqual(
      [pick(open), pick(afterClose), pick(last), health.status],
      [
        { ...both, connections: 2 },
        { ...both, connections: 1 },
        { ...both, connections: 1, notUpgraded: 1 },
        200,
      ],
    );
    // The closed connection's wire bytes stay counted (its close frames added some);
    // the plain HTTP exchange adds its request and response.
    assert.ok(afterClose.wireBytesReceived > open.wireBytesReceived);
    assert.ok(last.wireBytesSent > afterClose.wireBytesSent);
    await second.close();
  } finally {
    await server.close();
  }
});

// ---------------------------------------------------------------- handler failures

function errorLog(): { errors: string[]; logger: Logger } {
  const errors: string[] = [];
  const logger: Logger = {
    debug() {},
    info() {},
    warn() {},
    error: (message) => errors.push(message.replace(/\d+/, "N")),
  };
  return { errors, logger };
}

Deno.test("server: a handler that throws while open closes with 1011 and is logged once", async () => {
  const { errors, logger } = errorLog();
  const { server, uri } = serveLocal(() => {
    throw new Error("boom");
  }, { logger });
  try {
    const ws = await connect(uri);
    const result = await ws.closed;
    assert.deepEqual(
      [result.code, result.reason, errors],
      [1011, "internal error", ["connection N: error in connection handler"]],
    );
  } finally {
    await server.close();
  }
});

Deno.test("server: the ConnectionClosed a handler gets after the close is not logged", async () => {
  const { errors, logger } = errorLog();
  const done = deferred();
  const { server, uri } = serveLocal(async (ws) => {
    try {
      await ws.recv(); // throws ConnectionClosedError once the client left without a close frame
    } finally {
      done.resolve();
    }
  }, { logger });
  try {
    const ws = await connect(uri);
    ws.abort();
    await done.promise;
    await ws.closed;
    await server.close();
    assert.deepEqual(errors, []);
  } finally {
    await server.close();
  }
});

Deno.test("server: another error a handler throws after the close is logged", async () => {
  const { errors, logger } = errorLog();
  const done = deferred();
  const { server, uri } = serveLocal(async (ws) => {
    try {
      await ws.closed;
      throw new TypeError("late bug");
    } finally {
      done.resolve();
    }
  }, { logger });
  try {
    const ws = await connect(uri);
    await ws.close();
    await done.promise;
    await server.close();
    assert.deepEqual(errors, ["connection N: error in connection handler"]);
  } finally {
    await server.close();
  }
});
