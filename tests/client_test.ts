// connect() over real loopback sockets: timeouts, redirects, HTTP errors, the
// reconnection loop, TLS, Unix sockets and transports passed in.

import assert from "node:assert/strict";
import { connect, isTransientError } from "../client.ts";
import {
  HandshakeTimeout,
  InvalidHandshake,
  InvalidHeaderValue,
  InvalidMessage,
  InvalidStatus,
  InvalidURI,
  SecurityError,
} from "../errors.ts";
import type { StreamConnection } from "../connection.ts";
import { type Logger, State } from "../protocol.ts";
import { basicAuth } from "../server.ts";
import {
  assertTook,
  deferred,
  delay,
  echo,
  freePort,
  handshakeResponse,
  HOST,
  randomBytes,
  RawServer,
  rejection,
  selfSignedCert,
  serveLocal,
  TIMER_SLACK,
  within,
} from "./_helpers.ts";

const decoder = new TextDecoder();

/** A logger that keeps the info lines. */
function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    debug() {},
    info(message: string) {
      lines.push(message);
    },
    warn() {},
    error() {},
  };
}

/**
 * A `Deno.serve` server on 127.0.0.1: `respond` answers plain HTTP, or
 * returns `undefined` to accept the WebSocket (an echo).
 */
function denoServer(
  respond: (url: URL, request: Request) => Response | undefined,
  tls?: { cert: string; key: string },
): { server: Deno.HttpServer<Deno.NetAddr>; port: number } {
  const server = Deno.serve({
    hostname: HOST,
    port: 0,
    ...(tls === undefined ? {} : { cert: tls.cert, key: tls.key }),
    onListen() {},
  }, (request) => {
    const answer = respond(new URL(request.url), request);
    if (answer !== undefined) return answer;
    const { socket, response } = Deno.upgradeWebSocket(request);
    socket.onmessage = (event) => socket.send(event.data);
    return response;
  });
  return { server, port: server.addr.port };
}

Deno.test("client: openTimeout fails a handshake the server never answers with HandshakeTimeout", async () => {
  const raw = new RawServer(async (peer) => {
    await peer.readToEnd(); // reads the request, never answers
  });
  try {
    const started = performance.now();
    const error = await rejection(connect(raw.uri(), { openTimeout: 200 }));
    const elapsed = performance.now() - started;
    assert.ok(error instanceof HandshakeTimeout);
    assert.deepEqual([error.timeout, error.message], [
      200,
      "opening handshake timed out after 200 ms (openTimeout)",
    ]);
    assertTook(elapsed, 190, 200, "failed");
  } finally {
    await raw.close();
  }
});

Deno.test("client: openTimeout also bounds a response that arrives too slowly", async () => {
  const raw = new RawServer(async (peer) => {
    await peer.readHead();
    await peer.write("HTTP/1.1 101 Switching Protocols\r\n");
    await peer.readToEnd(); // the rest of the response never comes
  });
  try {
    const error = await rejection(connect(raw.uri(), { openTimeout: 200 }));
    assert.ok(error instanceof HandshakeTimeout);
  } finally {
    await raw.close();
  }
});

Deno.test("client: a refused connection throws Deno.errors.ConnectionRefused", async () => {
  const error = await rejection(connect(`ws://${HOST}:${freePort()}/`));
  assert.ok(error instanceof Deno.errors.ConnectionRefused);
  assert.equal(isTransientError(error), true);
});

Deno.test("client: an invalid URI throws InvalidURI before connecting", async () => {
  const error = await rejection(connect("http://127.0.0.1/"));
  assert.ok(error instanceof InvalidURI);
});

Deno.test("client: a wrong Sec-WebSocket-Accept fails the handshake with InvalidHeaderValue", async () => {
  const raw = new RawServer(async (peer) => {
    await peer.readHead();
    await peer.write(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    );
    await peer.readToEnd();
  });
  try {
    const error = await rejection(connect(raw.uri()));
    assert.ok(error instanceof InvalidHeaderValue);
    assert.deepEqual([error.headerName, error.value], [
      "Sec-WebSocket-Accept",
      "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    ]);
  } finally {
    await raw.close();
  }
});

Deno.test("client: a response with too many headers throws SecurityError", async () => {
  const raw = new RawServer(async (peer) => {
    await peer.readHead();
    let head = "HTTP/1.1 101 Switching Protocols\r\n";
    for (let i = 0; i < 200; i++) head += `X-Filler-${i}: ${i}\r\n`;
    await peer.write(head + "\r\n");
    await peer.readToEnd();
  });
  try {
    const error = await rejection(connect(raw.uri()));
    assert.ok(error instanceof SecurityError);
    assert.equal(error.message, "too many HTTP headers: limit is 128");
  } finally {
    await raw.close();
  }
});

Deno.test("client: a malformed response fails at once, even if the server keeps the connection open", async () => {
  for (
    const [response, message] of [
      ["HTTP/1.0 200 OK\r\n\r\n", "unsupported HTTP version; expected HTTP/1.1: HTTP/1.0 200 OK"],
      [
        "HTTP/1.1 101 Switching Protocols\r\nX-Folded: a\r\n b\r\n\r\n",
        "obsolete line folding in HTTP headers:  b",
      ],
    ]
  ) {
    const done = deferred();
    const raw = new RawServer(async (peer) => {
      await peer.readHead();
      await peer.write(response);
      await done.promise; // neither reads nor closes
    });
    try {
      const start = performance.now();
      const error = await rejection(connect(raw.uri()));
      assert.ok(error instanceof InvalidMessage, `${error}`);
      assert.equal(error.message, message);
      // At once, not after openTimeout or closeTimeout (10 s by default).
      assertTook(performance.now() - start, 0, 0, "failed");
    } finally {
      done.resolve();
      await raw.close();
    }
  }
});

Deno.test("client: an error body over httpLimits.maxBodySize throws SecurityError", async () => {
  const raw = new RawServer(async (peer) => {
    await peer.readHead();
    await peer.write(
      "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2000\r\n\r\n" + "x".repeat(2000),
    );
    await peer.readToEnd();
  });
  try {
    const error = await rejection(connect(raw.uri(), { httpLimits: { maxBodySize: 1000 } }));
    assert.ok(error instanceof SecurityError);
    assert.equal(
      error.message,
      "body too large: Content-Length is 2000 bytes; limit is 1000 bytes",
    );
  } finally {
    await raw.close();
  }
});

Deno.test("client: a 4xx answer throws InvalidStatus holding the whole response", async () => {
  const { server, port } = denoServer(() =>
    new Response("no such chat room\n", { status: 404, headers: { "x-reason": "room" } })
  );
  try {
    const error = await rejection(connect(`ws://${HOST}:${port}/room`));
    assert.ok(error instanceof InvalidStatus);
    const response = error.response;
    assert.deepEqual(
      [
        error.message,
        response.statusCode,
        response.reasonPhrase,
        response.headers.get("x-reason"),
        decoder.decode(response.body),
      ],
      [
        "server rejected WebSocket connection: HTTP 404",
        404,
        "Not Found",
        "room",
        "no such chat room\n",
      ],
    );
    assert.equal(isTransientError(error), false);
  } finally {
    await server.shutdown();
  }
});

Deno.test("client: a 5xx answer throws InvalidStatus and counts as transient", async () => {
  const { server, port } = denoServer(() => new Response("overloaded\n", { status: 503 }));
  try {
    const error = await rejection(connect(`ws://${HOST}:${port}/`));
    assert.ok(error instanceof InvalidStatus);
    assert.deepEqual(
      [error.response.statusCode, decoder.decode(error.response.body), isTransientError(error)],
      [503, "overloaded\n", true],
    );
  } finally {
    await server.shutdown();
  }
});

for (const status of [301, 302, 303, 307, 308]) {
  Deno.test(`client: follows a ${status} redirect`, async () => {
    const { server, port } = denoServer((url) =>
      url.pathname === "/old" ? Response.redirect(new URL("/new?x=1", url), status) : undefined
    );
    try {
      const ws = await connect(`ws://${HOST}:${port}/old`);
      await ws.send("moved");
      assert.deepEqual([await ws.recv(), ws.request?.path], ["moved", "/new?x=1"]);
      await ws.close();
    } finally {
      await server.shutdown();
    }
  });
}

Deno.test("client: follows up to 10 redirects, with relative locations", async () => {
  const { server, port } = denoServer((url) => {
    const hops = Number(url.pathname.slice(1));
    if (hops === 0) return undefined;
    return new Response(null, { status: 302, headers: { location: String(hops - 1) } });
  });
  try {
    const ws = await connect(`ws://${HOST}:${port}/10`);
    assert.equal(ws.request?.path, "/0");
    await ws.close();
  } finally {
    await server.shutdown();
  }
});

Deno.test("client: an 11th redirect throws SecurityError", async () => {
  let requests = 0;
  const { server, port } = denoServer((url) => {
    requests++;
    const hops = Number(url.pathname.slice(1));
    if (hops === 0) return undefined;
    return new Response(null, { status: 307, headers: { location: `/${hops - 1}` } });
  });
  try {
    const error = await rejection(connect(`ws://${HOST}:${port}/11`));
    assert.ok(error instanceof SecurityError);
    assert.deepEqual([error.message, requests], ["too many redirects: limit is 10", 11]);
  } finally {
    await server.shutdown();
  }
});

Deno.test("client: maxRedirects lowers the redirect limit", async () => {
  const { server, port } = denoServer((url) =>
    url.pathname === "/a" ? Response.redirect(new URL("/b", url), 301) : undefined
  );
  try {
    const error = await rejection(connect(`ws://${HOST}:${port}/a`, { maxRedirects: 0 }));
    assert.ok(error instanceof SecurityError);
    assert.equal(error.message, "too many redirects: limit is 0");
  } finally {
    await server.shutdown();
  }
});

Deno.test("client: a redirect from wss: to ws: is refused with SecurityError", async () => {
  await using tls = await selfSignedCert();
  const plain = freePort();
  const { server, port } = denoServer(
    () => Response.redirect(`http://${HOST}:${plain}/`, 302),
    tls,
  );
  try {
    const error = await rejection(connect(`wss://localhost:${port}/`, { caCerts: [tls.cert] }));
    assert.ok(error instanceof SecurityError);
    assert.equal(
      error.message,
      `cannot follow redirect to a non-secure URI: ws://${HOST}:${plain}/`,
    );
  } finally {
    await server.shutdown();
  }
});

Deno.test("client: connects over wss: to serve({ tls }) trusting caCerts", async () => {
  await using tls = await selfSignedCert();
  const { server } = serveLocal(echo, { tls: { cert: tls.cert, key: tls.key } });
  try {
    const ws = await connect(`wss://localhost:${server.port}/`, { caCerts: [tls.cert] });
    await ws.send("secret");
    await ws.send(new Uint8Array([1, 2]));
    assert.deepEqual([await ws.recv(), await ws.recv()], ["secret", new Uint8Array([1, 2])]);
    // Large frames, queued in one turn, go out as separate writes: TLS keeps them whole, in order.
    const large = [
      randomBytes(100_000, 1),
      randomBytes(512 * 1024, 2),
      "x",
      randomBytes(20_000, 3),
    ];
    for (const message of large) ws.send(message).catch(() => {});
    for (const expected of large) {
      assert.deepEqual(await within(ws.recv(), 10_000, "large echo over TLS"), expected);
    }
    await ws.close();
    assert.equal((await ws.closed).code, 1000);
  } finally {
    await server.close();
  }
});

Deno.test("client: wss: refuses a certificate it doesn't trust", async () => {
  await using tls = await selfSignedCert();
  const { server } = serveLocal(echo, { tls: { cert: tls.cert, key: tls.key } });
  try {
    const error = await rejection(
      connect(`wss://localhost:${server.port}/`, { openTimeout: 2000 }),
    );
    assert.ok(error instanceof Error && /certificate/i.test(error.message), String(error));
  } finally {
    await server.close();
  }
});

Deno.test("client: connects over a Unix socket to serve({ unix })", async () => {
  const dir = await Deno.makeTempDir({ prefix: "denows-unix-" });
  const path = `${dir}/ws.sock`;
  const server = serveLocal(echo, { unix: path }).server;
  try {
    assert.deepEqual([server.addr.transport, server.port], ["unix", 0]);
    const ws = await connect("ws://localhost/chat", { unix: path });
    await ws.send("over unix");
    assert.deepEqual([await ws.recv(), ws.request?.headers.get("Host")], [
      "over unix",
      "localhost",
    ]);
    await ws.close();
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("client: the sock option runs the handshake over a transport already connected", async () => {
  const { server } = serveLocal(echo);
  const conn = await Deno.connect({ hostname: HOST, port: server.port });
  try {
    const ws = await connect("ws://example.com/path", { sock: conn });
    await ws.send("via sock");
    assert.deepEqual([await ws.recv(), ws.request?.headers.get("Host"), ws.transport === conn], [
      "via sock",
      "example.com",
      true,
    ]);
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("client: origin, subprotocols, extra headers and User-Agent reach the server", async () => {
  const { server, uri } = serveLocal(async (ws) => {
    const headers = ws.request!.headers;
    await ws.send(JSON.stringify({
      origin: headers.get("Origin"),
      agent: headers.get("User-Agent"),
      extra: headers.get("X-Token"),
      subprotocol: ws.subprotocol,
    }));
  }, { subprotocols: ["chat.v2", "chat.v1"] });
  try {
    const ws = await connect(uri, {
      origin: "https://app.example",
      subprotocols: ["chat.v1", "chat.v2"],
      additionalHeaders: { "X-Token": "abc" },
      userAgentHeader: "test-agent/1.0",
    });
    assert.deepEqual([JSON.parse(await ws.recv() as string), ws.subprotocol], [
      {
        origin: "https://app.example",
        agent: "test-agent/1.0",
        extra: "abc",
        subprotocol: "chat.v1",
      },
      "chat.v1",
    ]);
    await ws.closed;
  } finally {
    await server.close();
  }
});

Deno.test("client: user info in the URI is sent as Basic credentials", async () => {
  const { server } = serveLocal((ws) => ws.send("welcome"), {
    processRequest: basicAuth({
      check: (user, password) => user === "alice" && password === "s3 cret",
    }),
  });
  try {
    const ws = await connect(`ws://alice:s3%20cret@${HOST}:${server.port}/`);
    assert.equal(await ws.recv(), "welcome");
    await ws.closed;
    const error = await rejection(connect(`ws://alice:wrong@${HOST}:${server.port}/`));
    assert.ok(error instanceof InvalidStatus);
    assert.equal(error.response.statusCode, 401);
  } finally {
    await server.close();
  }
});

Deno.test("client: compression is negotiated by default and off with compression: null", async () => {
  const { server, uri } = serveLocal(echo);
  try {
    const deflate = await connect(uri);
    const plain = await connect(uri, { compression: null });
    assert.deepEqual([
      deflate.extensions.map((extension) => extension.name),
      plain.extensions.map((extension) => extension.name),
      deflate.response?.headers.get("Sec-WebSocket-Extensions")?.startsWith("permessage-deflate"),
    ], [["permessage-deflate"], [], true]);
    const text = "compress me ".repeat(1000);
    await deflate.send(text);
    assert.equal(await deflate.recv(), text);
    await deflate.close();
    await plain.close();
  } finally {
    await server.close();
  }
});

Deno.test("client: aborting the signal stops a connection attempt with its reason", async () => {
  const raw = new RawServer(async (peer) => {
    await peer.readToEnd();
  });
  try {
    const controller = new AbortController();
    const reason = new Error("user gave up");
    setTimeout(() => controller.abort(reason), 100);
    const started = performance.now();
    const error = await rejection(connect(raw.uri(), { signal: controller.signal }));
    assert.equal(error, reason);
    // When aborted, not after openTimeout (10 s by default).
    assertTook(performance.now() - started, 0, 100, "stopped");
  } finally {
    await raw.close();
  }
});

// ---- the reconnection loop

Deno.test("client: the reconnection loop reconnects after the server drops the connection", async () => {
  let accepted = 0;
  const { server, uri } = serveLocal(async (ws) => {
    accepted++;
    await ws.send(`connection ${accepted}`);
    await ws.recv(); // the client got the message
    ws.transport.close(); // drop it, no closing handshake
    await ws.closed;
  });
  try {
    const received: string[] = [];
    const codes: number[] = [];
    for await (const ws of connect(uri, { backoff: { initialDelay: 50 } })) {
      received.push(await ws.recv() as string);
      await ws.send("ack");
      await rejection(ws.recv());
      codes.push((await ws.closed).code);
      if (received.length === 3) break;
    }
    assert.deepEqual([received, codes], [
      ["connection 1", "connection 2", "connection 3"],
      [1006, 1006, 1006],
    ]);
  } finally {
    await server.close();
  }
});

Deno.test("client: the reconnection loop closes each connection once the body is done with it", async () => {
  const closes: number[] = [];
  const { server, uri } = serveLocal(async (ws) => {
    await ws.send("hi");
    closes.push((await ws.closed).code);
  });
  try {
    const seen: StreamConnection[] = [];
    for await (const ws of connect(uri, { backoff: { initialDelay: 20 } })) {
      assert.equal(await ws.recv(), "hi");
      // The previous one was closed (normally) before this one was opened.
      assert.deepEqual(seen.map((previous) => previous.state), seen.map(() => State.CLOSED));
      seen.push(ws);
      if (seen.length === 3) break;
    }
    assert.equal((await within(seen[2].closed, TIMER_SLACK, "closed after break")).code, 1000);
    assert.equal(server.connections.size, 0);
    assert.deepEqual(closes, [1000, 1000, 1000]);
    // Leaving by an exception closes it too.
    let thrown: StreamConnection | undefined;
    await assert.rejects(async () => {
      for await (const ws of connect(uri)) {
        thrown = ws;
        throw new Error("body failed");
      }
    }, { message: "body failed" });
    assert.equal(thrown?.state, State.CLOSED);
  } finally {
    await server.close();
  }
});

Deno.test("client: the reconnection loop retries refused connections until the server is up", async () => {
  const port = freePort();
  const logger = recordingLogger();
  let server: ReturnType<typeof serveLocal>["server"] | undefined;
  const starting = delay(250).then(() => {
    server = serveLocal((ws) => ws.send("finally"), { port }).server;
  });
  try {
    for await (
      const ws of connect(`ws://${HOST}:${port}/`, { backoff: { initialDelay: 50 }, logger })
    ) {
      assert.equal(await ws.recv(), "finally");
      await ws.closed;
      break;
    }
    const retries = logger.lines.filter((line) => line.startsWith("connect failed"));
    assert.ok(retries.length >= 2, `${retries.length} retries: ${logger.lines}`);
  } finally {
    await starting;
    await server?.close();
  }
});

Deno.test("client: the reconnection loop retries 5xx answers", async () => {
  let requests = 0;
  const { server, port } = denoServer(() =>
    ++requests <= 2 ? new Response("try later\n", { status: 503 }) : undefined
  );
  try {
    for await (const ws of connect(`ws://${HOST}:${port}/`, { backoff: { initialDelay: 20 } })) {
      await ws.send("up");
      assert.equal(await ws.recv(), "up");
      await ws.close();
      break;
    }
    assert.equal(requests, 3);
  } finally {
    await server.shutdown();
  }
});

Deno.test("client: the reconnection loop stops on a 4xx answer with InvalidStatus", async () => {
  let requests = 0;
  const { server, port } = denoServer(() => {
    requests++;
    return new Response("go away\n", { status: 403 });
  });
  try {
    const error = await rejection((async () => {
      for await (const _ of connect(`ws://${HOST}:${port}/`, { backoff: { initialDelay: 20 } })) {
        assert.fail("no connection expected");
      }
    })());
    assert.ok(error instanceof InvalidStatus);
    assert.deepEqual([error.response.statusCode, requests], [403, 1]);
  } finally {
    await server.shutdown();
  }
});

Deno.test("client: the reconnection loop ends quietly when the signal aborts", async () => {
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 200);
  const started = performance.now();
  let yielded = 0;
  await within(
    (async () => {
      for await (
        const _ of connect(`ws://${HOST}:${freePort()}/`, {
          backoff: { initialDelay: 50 },
          signal: controller.signal,
        })
      ) yielded++;
    })(),
    200 + TIMER_SLACK,
    "loop end",
  );
  const elapsed = performance.now() - started;
  assert.equal(yielded, 0);
  assertTook(elapsed, 150, 200, "ended");
});

Deno.test("client: a handshake failure other than HTTP status isn't retried", async () => {
  const raw = new RawServer(async (peer) => {
    await peer.readHead();
    await peer.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
    await peer.readToEnd();
  });
  try {
    const error = await rejection((async () => {
      for await (const _ of connect(raw.uri(), { backoff: { initialDelay: 20 } })) {
        assert.fail("no connection expected");
      }
    })());
    assert.ok(error instanceof InvalidHandshake);
    assert.equal(error.message, "missing Connection header");
  } finally {
    await raw.close();
  }
});

Deno.test("client: the handshake response may carry the first frames", async () => {
  const raw = new RawServer(async (peer) => {
    const head = await peer.readHead();
    const frame = new Uint8Array([0x81, 0x05, ...new TextEncoder().encode("early")]);
    const response = new TextEncoder().encode(handshakeResponse(head!));
    const both = new Uint8Array(response.length + frame.length);
    both.set(response);
    both.set(frame, response.length);
    await peer.write(both);
    await peer.readFrame(true);
  });
  try {
    const ws = await connect(raw.uri(), { compression: null, closeTimeout: 200 });
    assert.equal(await ws.recv(), "early");
    await ws.close();
  } finally {
    await raw.close();
  }
});
