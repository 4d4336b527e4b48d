// broadcast() over real loopback sockets: serve() on 127.0.0.1, connect()
// clients, and raw TCP clients that misbehave on purpose (never read).

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { broadcast } from "../broadcast.ts";
import { connect, type ConnectOptions } from "../client.ts";
import { type CloseResult, type Connection, type Message, State } from "../connection.ts";
import { ConcurrencyError } from "../errors.ts";
import { Close, Frame, FrameReader, Opcode } from "../frames.ts";
import { ServerPerMessageDeflateFactory } from "../permessage_deflate.ts";
import { serve, type ServeOptions, type Server, type ServerConnection } from "../server.ts";
import { assertTook, delay, waitFor } from "./_helpers.ts";

const HOST = "127.0.0.1";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The next message, or an error if none arrives within `ms`. */
function recvWithin(connection: Connection, ms = 5_000): Promise<Message> {
  return connection.recv({ signal: AbortSignal.timeout(ms) });
}

interface Fixture {
  server: Server;
  url: string;
  /** Messages each server-side connection received, by connection. */
  received: Map<ServerConnection, Message[]>;
  close(): Promise<void>;
}

/** A server whose handler reads and records every message until the connection closes. */
function startServer(options: ServeOptions = {}): Fixture {
  const received = new Map<ServerConnection, Message[]>();
  const server = serve(async (ws) => {
    const messages: Message[] = [];
    received.set(ws, messages);
    for await (const message of ws) messages.push(message);
  }, { hostname: HOST, port: 0, ...options });
  return {
    server,
    url: `ws://${HOST}:${server.port}/`,
    received,
    close: () => server.close(),
  };
}

/** Opens `count` clients and waits until the server sees all of them open. */
async function openClients(
  fixture: Fixture,
  count: number,
  options: ConnectOptions = {},
): Promise<Connection[]> {
  const before = fixture.server.connections.size;
  const clients: Connection[] = [];
  for (let start = 0; start < count; start += 100) {
    const batch = Math.min(100, count - start);
    clients.push(
      ...await Promise.all(Array.from({ length: batch }, () => connect(fixture.url, options))),
    );
  }
  await waitFor(() => fixture.server.connections.size === before + count, "server connections");
  return clients;
}

/** The server-side connection of `client`, found by its port. */
function serverSide(fixture: Fixture, localPort: number): ServerConnection {
  for (const connection of fixture.server.connections) {
    const addr = connection.remoteAddr as Deno.NetAddr | undefined;
    if (addr?.port === localPort) return connection;
  }
  throw new Error(`no server connection from port ${localPort}`);
}

function portOf(client: Connection): number {
  return (client.localAddr as Deno.NetAddr).port;
}

async function closeAll(clients: Connection[]): Promise<void> {
  await Promise.all(clients.map((client) => client.close()));
}

/** Records the bytes each server-side connection queues through `sendSerialized`. */
function recordSerialized(connections: Iterable<ServerConnection>): Uint8Array[] {
  const seen: Uint8Array[] = [];
  for (const connection of connections) {
    const protocol = connection.protocol;
    const original = protocol.sendSerialized.bind(protocol);
    protocol.sendSerialized = (bytes: Uint8Array): void => {
      seen.push(bytes);
      original(bytes);
    };
  }
  return seen;
}

/**
 * A fragmented message source that yields `first`, then waits for `release()`
 * before yielding `last`. `send()` sends a fragment once it knows the next
 * one, so with two or more `first` fragments the message is on the wire.
 */
function pausedFragments(first: string[], last: string): {
  fragments: AsyncIterable<string>;
  started: Promise<void>;
  release(): void;
} {
  let release!: () => void;
  let started!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const startedPromise = new Promise<void>((resolve) => (started = resolve));
  return {
    fragments: (async function* () {
      started();
      yield* first;
      await gate;
      yield last;
    })(),
    started: startedPromise,
    release,
  };
}

// ---------------------------------------------------------------- raw client

interface RawClient {
  conn: Deno.TcpConn;
  /** Bytes received right after the handshake response, already read. */
  leftover: Uint8Array;
  port: number;
}

/** Does the opening handshake by hand (no extensions) and then reads nothing more. */
async function rawClient(port: number): Promise<RawClient> {
  const conn = await Deno.connect({ hostname: HOST, port });
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  const request = `GET / HTTP/1.1\r\nHost: ${HOST}:${port}\r\nUpgrade: websocket\r\n` +
    `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`;
  const bytes = encoder.encode(request);
  for (let offset = 0; offset < bytes.length;) offset += await conn.write(bytes.subarray(offset));
  let buffered = new Uint8Array(0);
  while (true) {
    const chunk = new Uint8Array(4096);
    const count = await conn.read(chunk);
    if (count === null) throw new Error("connection closed during the handshake");
    const joined = new Uint8Array(buffered.length + count);
    joined.set(buffered);
    joined.set(chunk.subarray(0, count), buffered.length);
    buffered = joined;
    const end = decoder.decode(buffered).indexOf("\r\n\r\n");
    if (end !== -1) {
      const head = decoder.decode(buffered.subarray(0, end));
      assert.match(head, /^HTTP\/1\.1 101 /);
      return {
        conn,
        leftover: buffered.slice(end + 4),
        port: (conn.localAddr as Deno.NetAddr).port,
      };
    }
  }
}

/** Reads frames from a raw client until `done(frames)` says so or the server closes the TCP connection. */
async function readFrames(
  client: RawClient,
  done: (frames: Frame[]) => boolean,
  ms = 10_000,
): Promise<Frame[]> {
  const reader = new FrameReader({ mask: false });
  reader.feed(client.leftover);
  client.leftover = new Uint8Array(0);
  const frames: Frame[] = [];
  const deadline = performance.now() + ms;
  while (true) {
    for (let frame = reader.next(); frame !== undefined; frame = reader.next()) frames.push(frame);
    if (done(frames)) return frames;
    if (performance.now() > deadline) throw new Error(`frames: not done within ${ms} ms`);
    const chunk = new Uint8Array(256 * 1024);
    const count = await client.conn.read(chunk);
    if (count === null) return frames;
    reader.feed(chunk.subarray(0, count));
  }
}

async function rawSend(client: RawClient, frame: Frame): Promise<void> {
  const bytes = frame.serialize({ mask: true });
  for (let offset = 0; offset < bytes.length;) {
    offset += await client.conn.write(bytes.subarray(offset));
  }
}

function closeQuietly(client: RawClient): void {
  try {
    client.conn.close();
  } catch {
    // already closed
  }
}

/** 1 MiB whose first byte is `index`, to tell messages apart. */
function bigMessage(index: number): Uint8Array {
  const data = new Uint8Array(1024 * 1024);
  data[0] = index;
  return data;
}

// ---------------------------------------------------------------- message types

Deno.test("broadcast: sends a string as a Text message to every open client", async () => {
  const fixture = startServer();
  const clients = await openClients(fixture, 3);
  try {
    broadcast(fixture.server.connections, "hello, everyone ✓");
    assert.deepEqual(
      await Promise.all(clients.map((client) => recvWithin(client))),
      ["hello, everyone ✓", "hello, everyone ✓", "hello, everyone ✓"],
    );
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

Deno.test("broadcast: sends every kind of bytes as a Binary message", async () => {
  const fixture = startServer();
  const clients = await openClients(fixture, 2);
  const backing = new Uint8Array([9, 9, 1, 2, 3, 9]).buffer;
  const shared = new SharedArrayBuffer(3);
  new Uint8Array(shared).set([7, 8, 9]);
  const cases: [
    string,
    Uint8Array | ArrayBuffer | SharedArrayBuffer | ArrayBufferView,
    number[],
  ][] = [
    ["Uint8Array", new Uint8Array([1, 2, 3]), [1, 2, 3]],
    ["Uint8Array view with an offset", new Uint8Array(backing, 2, 3), [1, 2, 3]],
    ["ArrayBuffer", new Uint8Array([4, 5]).buffer, [4, 5]],
    ["DataView", new DataView(backing, 1, 4), [9, 1, 2, 3]],
    ["Int16Array", new Int16Array([1, -1]), [1, 0, 255, 255]],
    ["Float64Array", new Float64Array([1]), [0, 0, 0, 0, 0, 0, 0xf0, 0x3f]],
    ["Node Buffer (pooled, with an offset)", Buffer.from("héllo"), [...encoder.encode("héllo")]],
    ["SharedArrayBuffer", shared, [7, 8, 9]],
    ["empty Uint8Array", new Uint8Array(0), []],
  ];
  try {
    for (const [name, message, expected] of cases) {
      broadcast(fixture.server.connections, message);
      const got = await Promise.all(clients.map((client) => recvWithin(client)));
      assert.deepEqual(got, [new Uint8Array(expected), new Uint8Array(expected)], name);
    }
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

Deno.test("broadcast: sends one unfragmented frame, even for a large message", async () => {
  const fixture = startServer({ compression: null });
  const raw = await rawClient(fixture.server.port);
  try {
    await waitFor(() => fixture.server.connections.size === 1, "server connection");
    const message = new Uint8Array(3 * 1024 * 1024).fill(0x5a);
    broadcast(fixture.server.connections, message);
    const frames = await readFrames(raw, (frames) => frames.length === 1);
    assert.deepEqual(
      frames.map((frame) => ({ opcode: frame.opcode, fin: frame.fin, rsv1: frame.rsv1 })),
      [{ opcode: Opcode.BINARY, fin: true, rsv1: false }],
    );
    assert.deepEqual(frames[0].data, message);
  } finally {
    closeQuietly(raw);
    await fixture.close();
  }
});

Deno.test("broadcast: client-side connections send it masked, each on its own", async () => {
  const fixture = startServer();
  const clients = await openClients(fixture, 2);
  try {
    broadcast(clients, "from the clients");
    await waitFor(
      () => [...fixture.received.values()].every((messages) => messages.length === 1),
      "messages on the server",
    );
    assert.deepEqual([...fixture.received.values()], [["from the clients"], [
      "from the clients",
    ]]);
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

Deno.test("broadcast: the caller may reuse its buffer as soon as it returns", async () => {
  for (const compression of [null, "deflate"] as const) {
    const fixture = startServer({ compression });
    const clients = await openClients(fixture, 2, { compression });
    try {
      const buffer = new Uint8Array(4096).fill(1);
      broadcast(fixture.server.connections, buffer);
      buffer.fill(2);
      const view = new DataView(buffer.buffer);
      broadcast(fixture.server.connections, view);
      view.setUint8(0, 3);
      const got = await Promise.all(
        clients.map(async (client) => [await recvWithin(client), await recvWithin(client)]),
      );
      const ones = new Uint8Array(4096).fill(1), twos = new Uint8Array(4096).fill(2);
      assert.deepEqual(got, [[ones, twos], [ones, twos]], `compression ${compression}`);
    } finally {
      await closeAll(clients);
      await fixture.close();
    }
  }
});

// ---------------------------------------------------------------- validation

Deno.test("broadcast: throws TypeError for other message types and sends nothing", async () => {
  const fixture = startServer();
  const clients = await openClients(fixture, 2);
  try {
    const invalid: unknown[] = [42, { text: "hi" }, null, undefined, true, ["a"], Symbol("s")];
    for (const message of invalid) {
      let iterated = false;
      const connections = {
        *[Symbol.iterator](): Iterator<Connection> {
          iterated = true;
          yield* fixture.server.connections;
        },
      };
      assert.throws(
        () => broadcast(connections, message as string),
        TypeError,
        `message ${String(message)}`,
      );
      assert.equal(iterated, false);
    }
    // Had anything been sent, it would arrive before this message.
    broadcast(fixture.server.connections, "after");
    assert.deepEqual(
      await Promise.all(clients.map((client) => recvWithin(client))),
      ["after", "after"],
    );
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

Deno.test("broadcast: the TypeError names the message type", () => {
  assert.throws(() => broadcast([], 42 as unknown as string), {
    name: "TypeError",
    message: "Cannot broadcast: unsupported message type number",
  });
  assert.throws(() => broadcast([], null as unknown as string), {
    name: "TypeError",
    message: "Cannot broadcast: unsupported message type null",
  });
  assert.throws(() => broadcast([], new Map() as unknown as string), {
    name: "TypeError",
    message: "Cannot broadcast: unsupported message type Map",
  });
  assert.throws(() => broadcast([], Object.create(null)), {
    name: "TypeError",
    message: "Cannot broadcast: unsupported message type object",
  });
});

Deno.test("broadcast: throws RangeError for a negative or non-numeric maxBufferedAmount", () => {
  for (const maxBufferedAmount of [-1, NaN, "1" as unknown as number]) {
    assert.throws(
      () => broadcast([], "hi", { maxBufferedAmount }),
      RangeError,
      `maxBufferedAmount ${maxBufferedAmount}`,
    );
  }
  assert.throws(() => broadcast([], "hi", { maxBufferedAmount: -1 }), {
    name: "RangeError",
    message: "Cannot broadcast: maxBufferedAmount must be a number of bytes >= 0, got -1",
  });
});

Deno.test("broadcast: throws TypeError for an unknown onSlow", () => {
  assert.throws(
    () => broadcast([], "hi", { maxBufferedAmount: 10, onSlow: "drop" as "skip" }),
    { name: "TypeError", message: 'Cannot broadcast: onSlow must be "close" or "skip", got drop' },
  );
});

// ---------------------------------------------------------------- states

Deno.test("broadcast: skips a connection still in its opening handshake", async () => {
  let captured: ServerConnection | undefined;
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const fixture = startServer({
    processRequest: async (connection) => {
      captured = connection;
      await gate;
      return undefined;
    },
  });
  const opening = connect(fixture.url).then((client) => client);
  try {
    await waitFor(() => captured !== undefined, "handshake request");
    assert.equal(captured!.state, State.CONNECTING);
    broadcast([captured!], "too early");
    release();
    const client = await opening;
    await waitFor(() => fixture.server.connections.size === 1, "server connection");
    broadcast(fixture.server.connections, "on time");
    assert.equal(await recvWithin(client), "on time");
    await client.close();
  } finally {
    release();
    await fixture.close();
  }
});

Deno.test("broadcast: skips closing and closed connections silently", async () => {
  const fixture = startServer();
  const clients = await openClients(fixture, 3);
  try {
    const [closing, closed, open] = clients.map((client) => serverSide(fixture, portOf(client)));
    await closed.close(1000, "bye");
    const closingDone = closing.close(1000, "bye");
    assert.deepEqual([closing.state, closed.state], [State.CLOSING, State.CLOSED]);
    broadcast([closing, closed, open], "only for the open one");
    await closingDone;
    assert.equal(await recvWithin(clients[2]), "only for the open one");
    for (const client of clients.slice(0, 2)) {
      await assert.rejects(recvWithin(client), { name: "ConnectionClosedOK" });
    }
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

// ---------------------------------------------------------------- fragmented sends

Deno.test("broadcast: ConcurrencyError for a connection in a fragmented send; the others get the message", async () => {
  const fixture = startServer();
  const clients = await openClients(fixture, 3);
  try {
    const busy = serverSide(fixture, portOf(clients[0]));
    const paused = pausedFragments(["fr", "ag"], "ment");
    const sending = busy.send(paused.fragments);
    await waitFor(() => busy.sendingFragmented, "fragmented send started");
    let error: unknown;
    try {
      broadcast(fixture.server.connections, "news");
    } catch (caught) {
      error = caught;
    }
    assert.ok(error instanceof ConcurrencyError);
    assert.equal(
      error.message,
      `Cannot broadcast to 1 connection sending a fragmented message (id ${busy.id}); ` +
        "the message was sent to 2 other connections",
    );
    assert.deepEqual(
      await Promise.all(clients.slice(1).map((client) => recvWithin(client))),
      ["news", "news"],
    );
    // The fragmented message isn't disturbed, and broadcasting works again after it.
    paused.release();
    await sending;
    broadcast(fixture.server.connections, "later");
    assert.deepEqual(
      [await recvWithin(clients[0]), await recvWithin(clients[0])],
      ["fragment", "later"],
    );
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

Deno.test("broadcast: ConcurrencyError while a fragmented send waits for its first fragment", async () => {
  const fixture = startServer();
  const clients = await openClients(fixture, 2);
  try {
    const busy = serverSide(fixture, portOf(clients[0]));
    const paused = pausedFragments([], "whole");
    const sending = busy.send(paused.fragments);
    await paused.started;
    assert.equal(busy.sendingFragmented, false);
    assert.throws(() => broadcast(fixture.server.connections, "news"), ConcurrencyError);
    assert.equal(await recvWithin(clients[1]), "news");
    paused.release();
    await sending;
    assert.equal(await recvWithin(clients[0]), "whole");
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

Deno.test("broadcast: one ConcurrencyError counts every busy connection", async () => {
  const fixture = startServer();
  const clients = await openClients(fixture, 3);
  try {
    const busy = clients.slice(0, 2).map((client) => serverSide(fixture, portOf(client)));
    const paused = busy.map(() => pausedFragments(["a", "b"], "c"));
    const sending = busy.map((connection, index) => connection.send(paused[index].fragments));
    await waitFor(() => busy.every((connection) => connection.sendingFragmented), "sends started");
    assert.throws(() => broadcast(fixture.server.connections, "news"), {
      name: "ConcurrencyError",
      message: `Cannot broadcast to 2 connections sending a fragmented message (id ${
        busy.map((connection) => connection.id).join(", ")
      }); the message was sent to 1 other connection`,
    });
    assert.equal(await recvWithin(clients[2]), "news");
    for (const { release } of paused) release();
    await Promise.all(sending);
    assert.deepEqual(
      await Promise.all(clients.slice(0, 2).map((client) => recvWithin(client))),
      ["abc", "abc"],
    );
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

Deno.test("broadcast: the ConcurrencyError names at most 10 connections", () => {
  // Stand-ins with only what broadcast() reads from a busy connection.
  const busy = Array.from(
    { length: 12 },
    (_, index) => ({ id: 100 + index, state: State.OPEN, sendingFragmented: true }),
  ) as unknown as Connection[];
  assert.throws(() => broadcast(busy, "news"), {
    name: "ConcurrencyError",
    message: "Cannot broadcast to 12 connections sending a fragmented message " +
      "(id 100, 101, 102, 103, 104, 105, 106, 107, 108, 109 and 2 more); " +
      "the message was sent to 0 other connections",
  });
});

Deno.test("broadcast: an unexpected error from one connection is rethrown after the others got the message", async () => {
  const fixture = startServer();
  const clients = await openClients(fixture, 2);
  try {
    const failing = serverSide(fixture, portOf(clients[0]));
    const failure = new Error("encoder failed");
    failing.sendShared = (): boolean => {
      throw failure;
    };
    assert.throws(() => broadcast(fixture.server.connections, "news"), (error) => {
      assert.equal(error, failure);
      return true;
    });
    assert.equal(await recvWithin(clients[1]), "news");
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

// ---------------------------------------------------------------- encoded once

Deno.test("broadcast: without extensions, every server connection queues the same bytes", async () => {
  const fixture = startServer({ compression: null });
  const clients = await openClients(fixture, 5);
  try {
    const seen = recordSerialized(fixture.server.connections);
    broadcast(fixture.server.connections, "shared");
    assert.equal(seen.length, 5);
    assert.equal(new Set(seen).size, 1);
    assert.deepEqual(
      seen[0],
      new Frame(Opcode.TEXT, encoder.encode("shared")).serialize({
        mask: false,
      }),
    );
    assert.deepEqual(
      await Promise.all(clients.map((client) => recvWithin(client))),
      Array(5).fill("shared"),
    );
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

Deno.test("broadcast: with server_no_context_takeover, compresses once per configuration", async () => {
  // The default server accepts permessage-deflate with server_no_context_takeover.
  const fixture = startServer();
  const deflating = await openClients(fixture, 4);
  const plain = await openClients(fixture, 2, { compression: null });
  const clients = [...deflating, ...plain];
  try {
    const message = "the same news for everyone; ".repeat(40);
    for (const client of deflating) {
      assert.notEqual(serverSide(fixture, portOf(client)).extensions[0].encodeKey, undefined);
    }
    const seen = recordSerialized(fixture.server.connections);
    broadcast(fixture.server.connections, message);
    assert.equal(seen.length, 6);
    const distinct = [...new Set(seen)];
    assert.equal(distinct.length, 2);
    const compressed = distinct.find((bytes) => (bytes[0] & 0x40) !== 0);
    assert.ok(compressed !== undefined && compressed.length < message.length / 4);
    assert.equal(seen.filter((bytes) => bytes === compressed).length, 4);
    assert.deepEqual(
      await Promise.all(clients.map((client) => recvWithin(client))),
      Array(6).fill(message),
    );
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

Deno.test("broadcast: with context takeover, each connection compresses for itself", async () => {
  const fixture = startServer({ extensions: [new ServerPerMessageDeflateFactory()] });
  const clients = await openClients(fixture, 4);
  try {
    const servers = clients.map((client) => serverSide(fixture, portOf(client)));
    for (const connection of servers) {
      assert.equal(connection.extensions[0].encodeKey, undefined);
    }
    // Give one connection a different compression history first.
    await servers[0].send("a private message first ".repeat(20));
    assert.equal(await recvWithin(clients[0]), "a private message first ".repeat(20));
    const seen = recordSerialized(servers);
    const messages = ["one ".repeat(50), "two ".repeat(50), "one ".repeat(50)];
    for (const message of messages) broadcast(servers, message);
    assert.equal(seen.length, 12);
    assert.equal(new Set(seen).size, 12);
    for (const client of clients) {
      assert.deepEqual(
        [await recvWithin(client), await recvWithin(client), await recvWithin(client)],
        messages,
      );
    }
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

// ---------------------------------------------------------------- slow connections

interface SlowRun {
  fixture: Fixture;
  raw: RawClient;
  slow: ServerConnection;
  fast: Connection;
  fastServer: ServerConnection;
  fastMessages: Message[];
}

/** A server with a raw client that never reads and a normal client that reads everything. */
async function slowSetup(options: ServeOptions = {}): Promise<SlowRun> {
  const fixture = startServer({ compression: null, ...options });
  const raw = await rawClient(fixture.server.port);
  const [fast] = await openClients(fixture, 1, { compression: null, maxSize: 2 * 1024 * 1024 });
  await waitFor(() => fixture.server.connections.size === 2, "server connections");
  const fastMessages: Message[] = [];
  (async () => {
    for await (const message of fast) fastMessages.push(message);
  })().catch(() => {});
  return {
    fixture,
    raw,
    slow: serverSide(fixture, raw.port),
    fast,
    fastServer: serverSide(fixture, portOf(fast)),
    fastMessages,
  };
}

const MAX_BUFFERED = 4 * 1024 * 1024;

Deno.test("broadcast: maxBufferedAmount closes a slow connection with 1013 behind its buffered data", async () => {
  const run = await slowSetup();
  const { fixture, raw, slow, fastServer } = run;
  try {
    let sent = 0;
    for (; sent < 200 && slow.state === State.OPEN; sent++) {
      await waitFor(() => fastServer.bufferedAmount === 0, "fast client drained");
      const wasSlow = slow.bufferedAmount > MAX_BUFFERED;
      broadcast(fixture.server.connections, bigMessage(sent), { maxBufferedAmount: MAX_BUFFERED });
      // Closing starts synchronously, within broadcast().
      assert.equal(slow.state, wasSlow ? State.CLOSING : State.OPEN);
      await delay(1);
    }
    assert.equal(slow.state, State.CLOSING);
    const delivered = sent - 1; // the last broadcast closed it instead
    const frames = await readFrames(raw, (frames) => frames.at(-1)?.opcode === Opcode.CLOSE);
    assert.deepEqual(
      frames.map((frame) => frame.opcode === Opcode.CLOSE ? -1 : frame.data[0]),
      [...Array.from({ length: delivered }, (_, index) => index), -1],
    );
    const close = Close.parse(frames.at(-1)!.data);
    assert.deepEqual(
      { code: close.code, reason: close.reason },
      {
        code: 1013,
        reason: `too slow: more than ${MAX_BUFFERED} bytes buffered (maxBufferedAmount)`,
      },
    );
    await rawSend(raw, new Frame(Opcode.CLOSE, new Close(1013, "").serialize()));
    assert.deepEqual(await readFrames(raw, () => false), []); // then the server closes TCP
    closeQuietly(raw);
    const result = await slow.closed;
    assert.deepEqual(
      { code: result.code, wasClean: result.wasClean, sent: result.sent?.code },
      { code: 1013, wasClean: true, sent: 1013 },
    );
    // The reading client got every message, the closing one included.
    await waitFor(() => run.fastMessages.length === sent, "fast client messages");
    assert.deepEqual(
      run.fastMessages.map((message) => (message as Uint8Array)[0]),
      Array.from({ length: sent }, (_, index) => index),
    );
  } finally {
    closeQuietly(raw);
    await run.fast.close();
    await fixture.close();
  }
});

Deno.test("broadcast: a slow connection that never reads is dropped after closeTimeout", async () => {
  const run = await slowSetup({ closeTimeout: 300 });
  const { fixture, raw, slow, fastServer } = run;
  try {
    for (let sent = 0; sent < 200 && slow.state === State.OPEN; sent++) {
      await waitFor(() => fastServer.bufferedAmount === 0, "fast client drained");
      broadcast(fixture.server.connections, bigMessage(sent), { maxBufferedAmount: MAX_BUFFERED });
      await delay(1);
    }
    assert.equal(slow.state, State.CLOSING);
    const start = performance.now();
    const result: CloseResult = await slow.closed;
    const elapsed = performance.now() - start;
    assert.deepEqual({ code: result.code, wasClean: result.wasClean }, {
      code: 1006,
      wasClean: false,
    });
    assertTook(elapsed, 0, 300, "closed");
    assert.equal(run.fast.state, State.OPEN);
  } finally {
    closeQuietly(raw);
    await run.fast.close();
    await fixture.close();
  }
});

Deno.test('broadcast: onSlow "skip" leaves a slow connection open without the message', async () => {
  const run = await slowSetup();
  const { fixture, raw, slow, fastServer } = run;
  try {
    const expected: number[] = [];
    let skipped = 0;
    let sent = 0;
    for (; sent < 200 && skipped < 3; sent++) {
      await waitFor(() => fastServer.bufferedAmount === 0, "fast client drained");
      if (slow.bufferedAmount > MAX_BUFFERED) skipped++;
      else expected.push(sent);
      broadcast(fixture.server.connections, bigMessage(sent), {
        maxBufferedAmount: MAX_BUFFERED,
        onSlow: "skip",
      });
      await delay(1);
    }
    assert.equal(skipped, 3);
    assert.equal(slow.state, State.OPEN);
    const frames = await readFrames(raw, (frames) => frames.length === expected.length);
    assert.deepEqual(frames.map((frame) => frame.data[0]), expected);
    await waitFor(() => run.fastMessages.length === sent, "fast client messages");
    assert.equal(slow.state, State.OPEN);
  } finally {
    closeQuietly(raw);
    await run.fast.close();
    await fixture.close();
  }
});

// ---------------------------------------------------------------- scale

Deno.test("broadcast: 1 000 clients each receive the message", async () => {
  const fixture = startServer({ compression: null, pingInterval: null });
  const clients = await openClients(fixture, 1000, { compression: null, pingInterval: null });
  try {
    const start = performance.now();
    broadcast(fixture.server.connections, "to a thousand");
    // Generous: this is a capacity test, not a benchmark (`deno task bench` measures speed).
    const got = await Promise.all(clients.map((client) => recvWithin(client, 30_000)));
    const elapsed = performance.now() - start;
    assert.deepEqual(new Set(got), new Set(["to a thousand"]));
    assert.equal(got.length, 1000);
    assert.ok(elapsed < 30_000, `delivered in ${elapsed} ms`);
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});

// ---------------------------------------------------------------- example

Deno.test("broadcast: the example server relays every message to every client", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../examples/broadcast_server.ts", import.meta.url).pathname,
      "--port",
      "0",
      "--hostname",
      HOST,
    ],
    stdout: "piped",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let clients: Connection[] = [];
  try {
    let output = "";
    const deadline = performance.now() + 10_000;
    let match: RegExpMatchArray | null = null;
    while (match === null) {
      if (performance.now() > deadline) throw new Error(`no listening line in ${output}`);
      const { value, done } = await lines.read();
      if (done) throw new Error(`the example exited: ${output}`);
      output += value;
      match = output.match(/^listening on (ws:\/\/127\.0\.0\.1:\d+)\n/m);
    }
    const url = match[1] + "/";
    clients = await Promise.all([1, 2, 3].map(() => connect(url)));
    await clients[1].send("from client 1");
    assert.deepEqual(
      await Promise.all(clients.map((client) => recvWithin(client))),
      ["from client 1", "from client 1", "from client 1"],
    );
    await clients[2].send(new Uint8Array([1, 2]));
    assert.deepEqual(
      await Promise.all(clients.map((client) => recvWithin(client))),
      Array(3).fill(new Uint8Array([1, 2])),
    );
    Deno.kill(child.pid, "SIGTERM");
    const results = await Promise.all(clients.map((client) => client.closed));
    assert.deepEqual(results.map((result) => result.code), [1001, 1001, 1001]);
    const status = await child.status;
    assert.equal(status.code, 0);
  } finally {
    await closeAll(clients);
    try {
      Deno.kill(child.pid, "SIGKILL");
    } catch {
      // already exited
    }
    await lines.cancel().catch(() => {});
    await child.status;
  }
});

// ---------------------------------------------------------------- statistics

Deno.test("broadcast: each connection counts the message it was sent", async () => {
  const fixture = startServer();
  const clients = await openClients(fixture, 3, { compression: null });
  try {
    const connections = [...fixture.server.connections];
    const before = connections.map((connection) => connection.stats);
    broadcast(connections, "héllo"); // 6 bytes of UTF-8
    await Promise.all(clients.map((client) => recvWithin(client)));
    assert.deepEqual(
      connections.map((connection, i) => {
        const after = connection.stats;
        return [
          after.messagesSent - before[i].messagesSent,
          after.bytesSent - before[i].bytesSent,
          after.wireBytesSent - before[i].wireBytesSent,
        ];
      }),
      [[1, 6, 8], [1, 6, 8], [1, 6, 8]],
    );
  } finally {
    await closeAll(clients);
    await fixture.close();
  }
});
