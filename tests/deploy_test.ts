// Tests of deploy.ts over real loopback sockets: Deno.serve on 127.0.0.1,
// our client, Deno's built-in WebSocket client, and a raw TCP peer that
// does only what a test says.

import assert from "node:assert/strict";
import { broadcast } from "../broadcast.ts";
import { connect } from "../client.ts";
import type { Logger } from "../connection.ts";
import {
  ConcurrencyError,
  ConnectionClosedError,
  ConnectionClosedOK,
  InvalidHeader,
  InvalidHeaderValue,
  InvalidMessage,
  InvalidOrigin,
  InvalidState,
  InvalidStatus,
  InvalidUpgrade,
  NegotiationError,
  PayloadTooBig,
  WebSocketError,
} from "../errors.ts";
import { Close } from "../frames.ts";
import { ResponseParser } from "../http11.ts";
import {
  accept,
  type AcceptOptions,
  type AcceptResult,
  handler,
  type HandlerOptions,
  PlatformConnection,
} from "../deploy.ts";
import { serve, type ServerConnection } from "../server.ts";
import { assertTook, delay } from "./_helpers.ts";

const HOST = "127.0.0.1";
const KEY = "dGhlIHNhbXBsZSBub25jZQ==";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function deferred<T = void>(): { promise: Promise<T>; resolve(value: T): void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((res) => (resolve = res));
  return { promise, resolve };
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail("expected a rejection");
}

/** A logger that keeps the errors and drops everything else. */
function recordingLogger(): Logger & { errors: string[] } {
  const errors: string[] = [];
  return {
    errors,
    debug() {},
    info() {},
    warn() {},
    error(message: string, error?: unknown) {
      errors.push(`${message}: ${error instanceof Error ? error.message : String(error)}`);
    },
  };
}

type Fetch = (
  request: Request,
  info: Deno.ServeHandlerInfo,
) => Response | Promise<Response>;

/** Deno.serve on 127.0.0.1 with a free port. */
function listen(fetch: Fetch): { port: number; url: string; close(): Promise<void> } {
  const server = Deno.serve({ hostname: HOST, port: 0, onListen() {} }, fetch);
  const port = server.addr.port;
  return { port, url: `ws://${HOST}:${port}`, close: () => server.shutdown() };
}

/** Serves `fn` with `handler()`, runs `body`, then shuts down. */
async function withHandler(
  fn: (connection: PlatformConnection) => void | Promise<void>,
  options: HandlerOptions,
  body: (url: string, port: number) => Promise<void>,
): Promise<void> {
  const server = listen(handler(fn, { logger: recordingLogger(), ...options }));
  try {
    await body(server.url, server.port);
  } finally {
    await server.close();
  }
}

/** The server side of one connection, handed to the test by `handler()`. */
function capture(): {
  fn: (connection: PlatformConnection) => Promise<void>;
  connection: Promise<PlatformConnection>;
} {
  const got = deferred<PlatformConnection>();
  return {
    fn: async (connection) => {
      got.resolve(connection);
      await connection.closed;
    },
    connection: got.promise,
  };
}

function upgradeHead(port: number, headers: Record<string, string> = {}, method = "GET"): string {
  const all: Record<string, string> = {
    Host: `${HOST}:${port}`,
    Upgrade: "websocket",
    Connection: "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
    ...headers,
  };
  let head = `${method} /chat?room=1 HTTP/1.1\r\n`;
  for (const [name, value] of Object.entries(all)) {
    if (value !== "") head += `${name}: ${value}\r\n`;
  }
  return head + "\r\n";
}

/** A TCP peer that writes and reads exactly what the test says (no pongs, no close replies). */
class RawPeer {
  readonly conn: Deno.TcpConn;
  #buffer = new Uint8Array(0);

  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  static async connect(port: number): Promise<RawPeer> {
    return new RawPeer(await Deno.connect({ hostname: HOST, port }));
  }

  async write(data: string | Uint8Array): Promise<void> {
    let bytes = typeof data === "string" ? encoder.encode(data) : data;
    while (bytes.length !== 0) bytes = bytes.subarray(await this.conn.write(bytes));
  }

  async #fill(): Promise<boolean> {
    const chunk = new Uint8Array(64 * 1024);
    let count: number | null;
    try {
      count = await this.conn.read(chunk);
    } catch {
      return false;
    }
    if (count === null) return false;
    const merged = new Uint8Array(this.#buffer.length + count);
    merged.set(this.#buffer);
    merged.set(chunk.subarray(0, count), this.#buffer.length);
    this.#buffer = merged;
    return true;
  }

  /** Reads one HTTP response (a 101 has no body). */
  async readResponse(): Promise<{ status: number; headers: Map<string, string>; body: string }> {
    const parser = new ResponseParser();
    let result = parser.feed(this.#buffer);
    this.#buffer = new Uint8Array(0);
    while (result === undefined) {
      assert.ok(await this.#fill(), "connection closed before the HTTP response");
      result = parser.feed(this.#buffer);
      this.#buffer = new Uint8Array(0);
    }
    this.#buffer = result.rest.slice();
    const headers = new Map<string, string>();
    for (const [name, value] of result.message.headers.rawItems()) {
      headers.set(name.toLowerCase(), value);
    }
    return {
      status: result.message.statusCode,
      headers,
      body: decoder.decode(result.message.body ?? new Uint8Array(0)),
    };
  }

  /** Reads one small unmasked frame; `undefined` at the end of the stream. */
  async readFrame(): Promise<{ opcode: number; data: Uint8Array } | undefined> {
    while (this.#buffer.length < 2 || this.#buffer.length < 2 + (this.#buffer[1] & 0x7f)) {
      if (!(await this.#fill())) return undefined;
    }
    const length = this.#buffer[1] & 0x7f;
    assert.ok(length < 126, "readFrame only reads small frames");
    const frame = { opcode: this.#buffer[0] & 0x0f, data: this.#buffer.slice(2, 2 + length) };
    this.#buffer = this.#buffer.slice(2 + length);
    return frame;
  }

  /** Reads until the end of the stream; returns the number of bytes. */
  async drain(): Promise<number> {
    let total = this.#buffer.length;
    this.#buffer = new Uint8Array(0);
    const chunk = new Uint8Array(256 * 1024);
    while (true) {
      let count: number | null;
      try {
        count = await this.conn.read(chunk);
      } catch {
        return total;
      }
      if (count === null) return total;
      total += count;
    }
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // already closed
    }
  }
}

/** A masked (with a zero key) client frame. */
function clientFrame(opcode: number, payload: Uint8Array): Uint8Array {
  assert.ok(payload.length < 126);
  const frame = new Uint8Array(6 + payload.length);
  frame[0] = 0x80 | opcode;
  frame[1] = 0x80 | payload.length;
  frame.set(payload, 6);
  return frame;
}

async function echo(connection: PlatformConnection): Promise<void> {
  for await (const message of connection) await connection.send(message);
}

// ---------------------------------------------------------------- messages

Deno.test("deploy: echoes text, binary and empty messages to our client", async () => {
  await withHandler(echo, {}, async (url) => {
    const ws = await connect(`${url}/`);
    const sent = ["hello", new Uint8Array([1, 2, 3]), "", new Uint8Array(0), "é🎉"];
    const received = [];
    for (const message of sent) {
      await ws.send(message);
      received.push(await ws.recv());
    }
    await ws.close();
    assert.deepEqual(received, sent);
    assert.deepEqual(ws.extensions, []);
  });
});

Deno.test("deploy: echoes text and binary to Deno's built-in WebSocket client", async () => {
  await withHandler(echo, {}, async (url) => {
    const ws = new WebSocket(`${url}/`);
    ws.binaryType = "arraybuffer";
    const received: (string | number[])[] = [];
    const done = deferred();
    ws.onmessage = (event) => {
      received.push(
        typeof event.data === "string" ? event.data : [...new Uint8Array(event.data)],
      );
      if (received.length === 3) done.resolve();
    };
    const closed = new Promise<CloseEvent>((resolve) => (ws.onclose = resolve));
    await new Promise((resolve) => (ws.onopen = resolve));
    ws.send("hi");
    ws.send(new Uint8Array([9, 8]));
    ws.send("");
    await done.promise;
    ws.close(1000, "done");
    const event = await closed;
    assert.deepEqual(received, ["hi", [9, 8], ""]);
    assert.deepEqual([event.code, event.reason, event.wasClean], [1000, "done", true]);
  });
});

Deno.test("deploy: the handler gets the request, the subprotocol and the remote address", async () => {
  const seen = deferred<[string | undefined, string | undefined, string | undefined, string]>();
  await withHandler(
    (connection) => {
      const addr = connection.remoteAddr as Deno.NetAddr;
      seen.resolve([
        connection.request?.path,
        connection.subprotocol,
        connection.request?.headers.get("X-Test"),
        `${addr.transport} ${addr.hostname} ${connection.response?.statusCode}`,
      ]);
    },
    { subprotocols: ["chat.v2", "chat.v1"] },
    async (url) => {
      const ws = await connect(`${url}/chat?room=1`, {
        subprotocols: ["chat.v1", "chat.v2"],
        additionalHeaders: { "X-Test": "yes" },
      });
      assert.equal(ws.subprotocol, "chat.v1");
      await ws.closed;
    },
  );
  assert.deepEqual(await seen.promise, ["/chat?room=1", "chat.v1", "yes", "tcp 127.0.0.1 101"]);
});

Deno.test("deploy: send() of an iterable arrives as one message", async () => {
  await withHandler(
    async (connection) => {
      await connection.send(["Hel", "lo", " world"]);
      await connection.send([new Uint8Array([1]), new Uint8Array([2, 3])]);
    },
    {},
    async (url) => {
      const ws = await connect(`${url}/`);
      assert.deepEqual([await ws.recv(), await ws.recv()], [
        "Hello world",
        new Uint8Array([1, 2, 3]),
      ]);
      await ws.closed;
    },
  );
});

Deno.test("deploy: send() before the connection opens waits for it", async () => {
  const server = listen((request) => {
    const { response, connection } = accept(request);
    if (connection !== undefined) {
      assert.equal(connection.state, 0);
      connection.send("early").then(() => connection.close());
    }
    return response;
  });
  try {
    const ws = await connect(`${server.url}/`);
    assert.equal(await ws.recv(), "early");
    await ws.closed;
  } finally {
    await server.close();
  }
});

// ---------------------------------------------------------------- closing

Deno.test("deploy: handler return closes with 1000", async () => {
  await withHandler(() => {}, {}, async (url) => {
    const ws = await connect(`${url}/`);
    const result = await ws.closed;
    assert.deepEqual([result.code, result.reason, result.wasClean], [1000, "", true]);
    assert.ok(await rejection(ws.recv()) instanceof ConnectionClosedOK);
  });
});

Deno.test("deploy: handler exception closes with 1011 and is logged", async () => {
  const logger = recordingLogger();
  await withHandler(
    () => {
      throw new Error("boom");
    },
    { logger },
    async (url) => {
      const ws = await connect(`${url}/`);
      const result = await ws.closed;
      assert.deepEqual([result.code, result.reason], [1011, "internal error"]);
      assert.ok(await rejection(ws.recv()) instanceof ConnectionClosedError);
    },
  );
  assert.deepEqual(logger.errors, [logger.errors[0]]);
  assert.match(logger.errors[0], /error in connection handler: boom$/);
});

Deno.test("deploy: a client close code and reason reach the server connection", async () => {
  const server = capture();
  await withHandler(server.fn, {}, async (url) => {
    const ws = await connect(`${url}/`);
    await ws.close(4001, "client bye");
    const connection = await server.connection;
    const result = await connection.closed;
    assert.deepEqual(result, {
      code: 4001,
      reason: "client bye",
      wasClean: true,
      rcvd: new Close(4001, "client bye"),
      sent: new Close(4001, "client bye"),
      error: undefined,
    });
    const error = await rejection(connection.recv());
    assert.ok(error instanceof ConnectionClosedError);
    assert.deepEqual([error.rcvd, error.sent, error.rcvdThenSent], [
      new Close(4001, "client bye"),
      new Close(4001, "client bye"),
      true,
    ]);
  });
});

Deno.test("deploy: a server close code and reason reach our client", async () => {
  const server = capture();
  await withHandler(server.fn, {}, async (url) => {
    const ws = await connect(`${url}/`);
    const connection = await server.connection;
    await connection.close(4002, "server bye");
    const clientResult = await ws.closed;
    assert.deepEqual([clientResult.code, clientResult.reason], [4002, "server bye"]);
    const error = await rejection(connection.send("late"));
    assert.ok(error instanceof ConnectionClosedError);
    assert.deepEqual([error.rcvd, error.sent, error.rcvdThenSent], [
      new Close(4002, "server bye"),
      new Close(4002, "server bye"),
      false,
    ]);
  });
});

Deno.test("deploy: a server close code reaches Deno's built-in client", async () => {
  const server = capture();
  await withHandler(server.fn, {}, async (url) => {
    const ws = new WebSocket(`${url}/`);
    const closed = new Promise<CloseEvent>((resolve) => (ws.onclose = resolve));
    const connection = await server.connection;
    await connection.close(1001, "going away");
    const event = await closed;
    assert.deepEqual([event.code, event.reason, event.wasClean], [1001, "going away", true]);
    assert.ok(await rejection(connection.recv()) instanceof ConnectionClosedOK);
  });
});

Deno.test("deploy: closed reports the close frame sent and the different one received", async () => {
  const server = capture();
  await withHandler(server.fn, {}, async (_url, port) => {
    const peer = await RawPeer.connect(port);
    await peer.write(upgradeHead(port));
    assert.equal((await peer.readResponse()).status, 101);
    const connection = await server.connection;
    await connection.handshake;
    const closing = connection.close(4003, "ours");
    assert.deepEqual(await peer.readFrame(), {
      opcode: 8,
      data: new Close(4003, "ours").serialize(),
    });
    await peer.write(clientFrame(8, new Close(4004, "theirs").serialize()));
    await closing;
    assert.deepEqual(await connection.closed, {
      code: 4004,
      reason: "theirs",
      wasClean: true,
      rcvd: new Close(4004, "theirs"),
      sent: new Close(4003, "ours"),
      error: undefined,
    });
    const error = await rejection(connection.recv());
    assert.ok(error instanceof ConnectionClosedError);
    assert.equal(error.rcvdThenSent, false);
    peer.close();
  });
});

Deno.test("deploy: an empty close frame from the peer is reported as 1005", async () => {
  const server = capture();
  await withHandler(server.fn, {}, async (_url, port) => {
    const peer = await RawPeer.connect(port);
    await peer.write(upgradeHead(port));
    assert.equal((await peer.readResponse()).status, 101);
    const connection = await server.connection;
    await connection.handshake;
    await peer.write(clientFrame(8, new Uint8Array(0)));
    assert.deepEqual(await peer.readFrame(), { opcode: 8, data: new Uint8Array(0) });
    const result = await connection.closed;
    assert.deepEqual([result.code, result.wasClean, result.rcvd, result.sent], [
      1005,
      true,
      new Close(1005, ""),
      new Close(1005, ""),
    ]);
    assert.ok(await rejection(connection.recv()) instanceof ConnectionClosedOK);
    peer.close();
  });
});

Deno.test("deploy: close() rejects an invalid close code", async () => {
  const server = capture();
  await withHandler(server.fn, {}, async (url) => {
    const ws = await connect(`${url}/`);
    const connection = await server.connection;
    await connection.handshake;
    const error = await rejection(connection.close(1005, ""));
    assert.equal((error as Error).name, "ProtocolError");
    assert.equal(connection.state, 1);
    await ws.close();
  });
});

Deno.test("deploy: an abrupt disconnect ends the connection with 1006", async () => {
  const server = capture();
  await withHandler(server.fn, {}, async (_url, port) => {
    const peer = await RawPeer.connect(port);
    await peer.write(upgradeHead(port));
    assert.equal((await peer.readResponse()).status, 101);
    const connection = await server.connection;
    await connection.handshake;
    peer.close();
    const result = await connection.closed;
    assert.deepEqual(result, {
      code: 1006,
      reason: "",
      wasClean: false,
      rcvd: undefined,
      sent: undefined,
      error: undefined,
    });
  });
});

Deno.test("deploy: close() waits at most closeTimeout for the peer's close frame", async () => {
  const server = capture();
  await withHandler(server.fn, { closeTimeout: 200 }, async (_url, port) => {
    const peer = await RawPeer.connect(port);
    await peer.write(upgradeHead(port));
    assert.equal((await peer.readResponse()).status, 101);
    const connection = await server.connection;
    await connection.handshake;
    const start = performance.now();
    await connection.close(1000, "bye");
    const elapsed = performance.now() - start;
    const frame = await peer.readFrame();
    assert.deepEqual(frame, { opcode: 8, data: new Close(1000, "bye").serialize() });
    assertTook(elapsed, 150, 200, "closed");
    assert.deepEqual(await connection.closed, {
      code: 1006,
      reason: "",
      wasClean: false,
      rcvd: undefined,
      sent: new Close(1000, "bye"),
      error: undefined,
    });
    assert.equal(connection.state, 3);
    peer.close();
  });
});

// ---------------------------------------------------------------- limits

Deno.test("deploy: a binary message over maxSize closes with 1009", async () => {
  const server = capture();
  await withHandler(server.fn, { maxSize: 10 }, async (url) => {
    const ws = await connect(`${url}/`);
    await ws.send(new Uint8Array(10));
    await ws.send(new Uint8Array(11));
    const result = await ws.closed;
    assert.deepEqual(
      [result.code, result.reason],
      [1009, "message too big: 11 bytes exceeds maxSize of 10 bytes"],
    );
    const connection = await server.connection;
    const serverResult = await connection.closed;
    assert.ok(serverResult.error instanceof PayloadTooBig);
    assert.deepEqual(await connection.recv(), new Uint8Array(10));
    assert.ok(await rejection(connection.recv()) instanceof ConnectionClosedError);
  });
});

Deno.test("deploy: a text message over maxSize in UTF-8 bytes closes with 1009", async () => {
  const server = capture();
  await withHandler(server.fn, { maxSize: 10 }, async (url) => {
    const ws = await connect(`${url}/`);
    await ws.send("ééééé"); // 10 bytes
    await ws.send("éééééé"); // 12 bytes, 6 code units
    const result = await ws.closed;
    assert.deepEqual(
      [result.code, result.reason],
      [1009, "message too big: 12 bytes exceeds maxSize of 10 bytes"],
    );
    const connection = await server.connection;
    assert.equal(await connection.recv(), "ééééé");
  });
});

Deno.test("deploy: a message beyond maxQueue unread closes with 1013, queued ones stay", async () => {
  const server = capture();
  await withHandler(server.fn, { maxQueue: 2 }, async (url) => {
    const ws = await connect(`${url}/`);
    await ws.send("one");
    await ws.send("two");
    await ws.send("three");
    const result = await ws.closed;
    assert.deepEqual(
      [result.code, result.reason],
      [1013, "receive queue full: 2 messages unread, the limit is 2 (maxQueue)"],
    );
    const connection = await server.connection;
    assert.ok((await connection.closed).error instanceof WebSocketError);
    assert.deepEqual([await connection.recv(), await connection.recv()], ["one", "two"]);
    assert.ok(await rejection(connection.recv()) instanceof ConnectionClosedError);
  });
});

Deno.test("deploy: send() waits until bufferedAmount is under writeLimit", async () => {
  const server = capture();
  await withHandler(server.fn, { writeLimit: 64 * 1024 }, async (_url, port) => {
    const peer = await RawPeer.connect(port);
    await peer.write(upgradeHead(port));
    assert.equal((await peer.readResponse()).status, 101);
    const connection = await server.connection;
    await connection.handshake;
    const size = 16 * 1024 * 1024;
    let resolved = false;
    const sending = connection.send(new Uint8Array(size)).then(() => (resolved = true));
    await delay(100);
    // The peer doesn't read: the message waits in the socket's buffer.
    assert.deepEqual([resolved, connection.bufferedAmount > 64 * 1024], [false, true]);
    const reading = peer.drain();
    await sending;
    assert.ok(connection.bufferedAmount <= 64 * 1024);
    peer.close();
    await reading;
    await connection.closed;
  });
});

Deno.test("deploy: pingInterval becomes idleTimeout: an unanswered ping closes with 1001", async () => {
  const server = capture();
  await withHandler(server.fn, { pingInterval: 150 }, async (_url, port) => {
    // Measured from before connecting, so that a late turn of the event loop can't make the
    // runtime's timers look early.
    const start = performance.now();
    const peer = await RawPeer.connect(port);
    await peer.write(upgradeHead(port));
    assert.equal((await peer.readResponse()).status, 101);
    const connection = await server.connection;
    await connection.handshake;
    const ping = await peer.readFrame();
    const pingAt = performance.now() - start;
    const close = await peer.readFrame();
    const closeAt = performance.now() - start;
    assert.deepEqual(ping, { opcode: 9, data: new Uint8Array(0) });
    assert.deepEqual(close, {
      opcode: 8,
      data: new Close(1001, "No response from ping frame.").serialize(),
    });
    // idleTimeout is 2 × 150 ms: a ping after half of it without traffic, the close after all.
    assertTook(pingAt, 140, 150, "ping");
    assertTook(closeAt, 280, 300, "close");
    assert.deepEqual(await connection.closed, {
      code: 1006,
      reason: "",
      wasClean: false,
      rcvd: undefined,
      sent: new Close(1001, "No response from ping frame."),
      error: undefined,
    });
    assert.deepEqual([connection.pingInterval, connection.pingTimeout], [150, 150]);
    peer.close();
  });
});

Deno.test("deploy: ping() and pong() reject with InvalidState", async () => {
  const server = capture();
  await withHandler(server.fn, {}, async (url) => {
    const ws = await connect(`${url}/`);
    const connection = await server.connection;
    await connection.handshake;
    const pingError = await rejection(connection.ping());
    const pongError = await rejection(connection.pong());
    assert.ok(pingError instanceof InvalidState);
    assert.ok(pongError instanceof InvalidState);
    assert.equal(
      pingError.message,
      "Cannot ping: ping() is not available on the Deno.serve path; " +
        "keepalive uses the runtime's idleTimeout (pingInterval)",
    );
    await ws.close();
  });
});

// ---------------------------------------------------------------- options

Deno.test("deploy: options that can't apply are rejected with TypeError", () => {
  for (
    const options of [
      { pingTimeout: 1000 },
      { compression: "deflate" },
      { extensions: [{}] },
      { openTimeout: 1000 },
      { serverHeader: "x" },
      { port: 8080 },
      { processRequest: () => undefined },
    ]
  ) {
    assert.throws(
      () => accept(new Request("http://localhost/"), options as AcceptOptions),
      TypeError,
      JSON.stringify(options),
    );
  }
  assert.throws(() => handler(() => {}, { pingTimeout: 1 } as HandlerOptions), TypeError);
  assert.throws(
    () => handler(() => {}, { remoteAddr: undefined, hostname: "x" } as HandlerOptions),
    TypeError,
  );
  // @ts-expect-error pingTimeout is not an option of this path
  assert.throws(() => accept(new Request("http://localhost/"), { pingTimeout: 1 }), TypeError);
});

Deno.test("deploy: compression null, empty extensions and Infinity limits are accepted", () => {
  const result = accept(
    new Request("http://localhost/"),
    { compression: null, extensions: [], maxSize: Infinity, maxQueue: Infinity } as AcceptOptions,
  );
  assert.deepEqual([result.response.status, result.connection], [426, undefined]);
});

Deno.test("deploy: limits out of range are a RangeError", () => {
  for (
    const options of [
      { pingInterval: -1 },
      { maxQueue: 0 },
      { maxSize: -1 },
      { writeLimit: Number.NaN },
      { closeTimeout: -5 },
    ]
  ) {
    assert.throws(() => accept(new Request("http://localhost/"), options), RangeError);
    assert.throws(() => handler(() => {}, options), RangeError);
  }
});

// ---------------------------------------------------------------- rejections

/** Status, the headers that matter and the body of a raw request, answered by `port`. */
async function answer(
  port: number,
  head: string,
): Promise<[number, string | undefined, string | undefined, string]> {
  const peer = await RawPeer.connect(port);
  try {
    await peer.write(head);
    const response = await peer.readResponse();
    return [
      response.status,
      response.headers.get("upgrade"),
      response.headers.get("sec-websocket-version"),
      response.body,
    ];
  } finally {
    peer.close();
  }
}

const REJECTIONS: [string, Record<string, string>, string, number, unknown][] = [
  ["a bad key", { "Sec-WebSocket-Key": "short" }, "GET", 400, InvalidHeaderValue],
  ["a missing key", { "Sec-WebSocket-Key": "" }, "GET", 400, InvalidHeader],
  ["a forbidden origin", { Origin: "https://evil.example" }, "GET", 403, InvalidOrigin],
  ["no upgrade", { Upgrade: "", Connection: "" }, "GET", 426, InvalidUpgrade],
  ["version 8", { "Sec-WebSocket-Version": "8" }, "GET", 426, InvalidHeaderValue],
  ["no shared subprotocol", { "Sec-WebSocket-Protocol": "other" }, "GET", 400, NegotiationError],
  ["a POST", {}, "POST", 400, InvalidMessage],
];

for (const [what, headers, method, status, errorClass] of REJECTIONS) {
  Deno.test(`deploy: rejects ${what} with ${status} like serve(), without upgrading`, async () => {
    const rules = { origins: ["https://good.example", undefined], subprotocols: ["chat"] };
    const results: AcceptResult[] = [];
    const platform = listen((request) => {
      const result = accept(request, { ...rules, logger: recordingLogger() });
      results.push(result);
      return result.response;
    });
    const native = serve(() => {}, { hostname: HOST, port: 0, ...rules, serverHeader: null });
    try {
      const ours = await answer(platform.port, upgradeHead(platform.port, headers, method));
      const theirs = await answer(native.port, upgradeHead(native.port, headers, method));
      assert.deepEqual(ours, theirs);
      assert.equal(ours[0], status);
      assert.equal(results.length, 1);
      assert.equal(results[0].connection, undefined);
      assert.equal(results[0].error?.constructor, errorClass);
    } finally {
      await platform.close();
      await native.close();
    }
  });
}

Deno.test("deploy: a request that isn't an upgrade gets 426 from handler()", async () => {
  await withHandler(echo, {}, async (_url, port) => {
    const response = await fetch(`http://${HOST}:${port}/`);
    assert.deepEqual(
      [response.status, response.headers.get("upgrade"), await response.text()],
      [
        426,
        "websocket",
        "Failed to open a WebSocket connection: missing Connection header.\n\n" +
        "You cannot access a WebSocket server directly with a browser. " +
        "You need a WebSocket client.\n",
      ],
    );
  });
});

Deno.test("deploy: processRequest answers plain HTTP on the same port", async () => {
  const options: HandlerOptions = {
    processRequest: (request, info) => {
      const path = new URL(request.url).pathname;
      if (path === "/health") {
        return new Response(`OK ${(info?.remoteAddr as Deno.NetAddr).hostname}\n`);
      }
      return undefined;
    },
  };
  await withHandler(echo, options, async (url, port) => {
    const health = await fetch(`http://${HOST}:${port}/health`);
    assert.deepEqual([health.status, await health.text()], [200, `OK ${HOST}\n`]);
    const other = await fetch(`http://${HOST}:${port}/other`);
    await other.body?.cancel();
    assert.equal(other.status, 426);
    const ws = await connect(`${url}/ws`);
    await ws.send("still a WebSocket");
    assert.equal(await ws.recv(), "still a WebSocket");
    await ws.close();
  });
});

// ---------------------------------------------------------------- broadcast

Deno.test("deploy: broadcast() reaches platform and serve() connections alike", async () => {
  const all = new Set<PlatformConnection | ServerConnection>();
  const platformReady = deferred();
  const nativeReady = deferred();
  const keep = async (connection: PlatformConnection | ServerConnection) => {
    all.add(connection);
    if (all.size === 2) platformReady.resolve();
    if (all.size === 4) nativeReady.resolve();
    await connection.closed;
  };
  const platform = listen(handler(keep, { logger: recordingLogger() }));
  const native = serve(keep, { hostname: HOST, port: 0 });
  try {
    const clients = [
      await connect(`${platform.url}/`),
      await connect(`${platform.url}/`),
    ];
    await platformReady.promise;
    clients.push(await connect(`ws://${HOST}:${native.port}/`));
    clients.push(await connect(`ws://${HOST}:${native.port}/`));
    await nativeReady.promise;
    broadcast(all, "to everyone");
    broadcast(all, new Uint8Array([1, 2, 3]));
    for (const client of clients) {
      assert.deepEqual([await client.recv(), await client.recv()], [
        "to everyone",
        new Uint8Array([1, 2, 3]),
      ]);
    }
    await Promise.all(clients.map((client) => client.close()));
  } finally {
    await native.close();
    await platform.close();
  }
});

Deno.test("deploy: broadcast() skips closed platform connections", async () => {
  const server = capture();
  await withHandler(server.fn, {}, async (url) => {
    const ws = await connect(`${url}/`);
    const connection = await server.connection;
    await ws.close();
    await connection.closed;
    broadcast([connection], "nobody");
    assert.equal(connection.bufferedAmount, 0);
  });
});

Deno.test("deploy: broadcast() throws ConcurrencyError while a fragmented send collects", async () => {
  const server = capture();
  await withHandler(server.fn, {}, async (url) => {
    const ws = await connect(`${url}/`);
    const connection = await server.connection;
    await connection.handshake;
    const gate = deferred();
    const waiting = deferred();
    async function* fragments(): AsyncGenerator<string> {
      yield "frag";
      waiting.resolve(); // send() took the first fragment and asked for the next
      await gate.promise;
      yield "ment";
    }
    const sending = connection.send(fragments());
    await waiting.promise;
    assert.throws(() => broadcast([connection], "interleaved"), ConcurrencyError);
    gate.resolve();
    await sending;
    broadcast([connection], "after");
    assert.deepEqual([await ws.recv(), await ws.recv()], ["fragment", "after"]);
    await ws.close();
  });
});

// ---------------------------------------------------------------- example

Deno.test("deploy: the chat example serves its page and broadcasts to everyone", async () => {
  const { default: app } = await import("../examples/deploy_chat.ts");
  const server = listen(app.fetch);
  try {
    const page = await fetch(`http://${HOST}:${server.port}/`);
    assert.deepEqual(
      [page.status, page.headers.get("content-type"), (await page.text()).includes("/ws")],
      [200, "text/html; charset=utf-8", true],
    );
    const missing = await fetch(`http://${HOST}:${server.port}/nope`);
    assert.deepEqual([missing.status, await missing.text()], [404, "Not found\n"]);
    const a = await connect(`${server.url}/ws`);
    const aJoined = await a.recv();
    const b = await connect(`${server.url}/ws`);
    const bJoined = await b.recv();
    assert.deepEqual(await a.recv(), bJoined);
    await a.send("hello");
    const line = `${(aJoined as string).replace(" joined", "")}: hello`;
    assert.deepEqual([await a.recv(), await b.recv()], [line, line]);
    await b.close();
    assert.equal(await a.recv(), (bJoined as string).replace("joined", "left"));
    await a.close();
    const foreign = await rejection(
      Promise.resolve(connect(`${server.url}/ws`, { origin: "https://evil.example" })),
    );
    assert.ok(foreign instanceof InvalidStatus);
    assert.equal(foreign.response.statusCode, 403);
  } finally {
    await server.close();
  }
});

Deno.test("deploy: recvStreaming() gives each message whole, as one part", async () => {
  const parts = deferred<unknown[]>();
  await withHandler(
    async (connection) => {
      const got = [];
      for (let i = 0; i < 2; i++) got.push(await Array.fromAsync(connection.recvStreaming()));
      parts.resolve(got);
    },
    {},
    async (url) => {
      const ws = await connect(`${url}/`, { compression: null });
      await ws.send(["frag", "mented"]);
      await ws.send(new Uint8Array([1, 2]));
      assert.deepEqual(await parts.promise, [["fragmented"], [new Uint8Array([1, 2])]]);
      await ws.closed;
    },
  );
});

Deno.test("deploy: recvStreaming({ maxSize }) sets the limit of the message it reads", async () => {
  const sizes = deferred<number[]>();
  await withHandler(
    async (connection) => {
      const parts = await Array.fromAsync(connection.recvStreaming({ maxSize: 100 }));
      sizes.resolve(parts.map((part) => part.length));
      await connection.recv();
    },
    { maxSize: 10 },
    async (url) => {
      const ws = await connect(`${url}/`, { compression: null });
      await ws.send(new Uint8Array(50));
      assert.deepEqual(await sizes.promise, [50]);
      await ws.send(new Uint8Array(50));
      assert.deepEqual(
        [(await ws.closed).code, (await ws.closed).reason],
        [1009, "message too big: 50 bytes exceeds maxSize of 10 bytes"],
      );
    },
  );
});

Deno.test("deploy: stats count messages in UTF-8 bytes, and wire bytes as one frame each", async () => {
  const server = capture();
  await withHandler(server.fn, {}, async (url) => {
    const before = Date.now();
    const ws = await connect(`${url}/`, { compression: null });
    const connection = await server.connection;
    await ws.send("héllo"); // 6 bytes of UTF-8, a 12-byte masked frame
    assert.equal(await connection.recv(), "héllo");
    await connection.send(new Uint8Array(300)); // a 304-byte frame
    await connection.send(["a", "é"]); // collected: one 3-byte message
    await ws.recv();
    await ws.recv();
    const stats = connection.stats;
    assert.deepEqual(stats, {
      messagesReceived: 1,
      bytesReceived: 6,
      wireBytesReceived: 12,
      messagesSent: 2,
      bytesSent: 303,
      wireBytesSent: 304 + 5,
      latency: 0,
      openedAt: stats.openedAt,
    });
    assert.ok(stats.openedAt >= before && stats.openedAt <= Date.now());
    await ws.close();
  });
});
