// Connection behaviour over real loopback sockets: messages, fragmentation,
// pings, closing, iteration, streams, and every limit and timeout against a
// misbehaving raw-socket peer.

import assert from "node:assert/strict";
import { concat } from "../_bytes.ts";
import { connect } from "../client.ts";
import { type CloseResult, type Message, StreamConnection, type Transport } from "../connection.ts";
import {
  ConnectionClosedError,
  ConnectionClosedOK,
  InvalidMessage,
  PayloadTooBig,
} from "../errors.ts";
import { Close, Frame, Opcode } from "../frames.ts";
import { ServerProtocol, State } from "../protocol.ts";
import type { ServerConnection } from "../server.ts";
import {
  acceptRaw,
  assertTook,
  deferred,
  delay,
  echo,
  handshakeRequest,
  HOST,
  pendingAfter,
  randomBytes,
  RawPeer,
  RawServer,
  rejection,
  serveLocal,
  TIMER_SLACK,
  waitFor,
  within,
} from "./_helpers.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** What a test compares of a frame. */
function describe(
  frame: Frame | undefined,
): { opcode: number; fin: boolean; data: string } | undefined {
  if (frame === undefined) return undefined;
  return { opcode: frame.opcode, fin: frame.fin, data: decoder.decode(frame.data) };
}

function closeFrame(code: number, reason = ""): Uint8Array {
  return new Frame(Opcode.CLOSE, new Close(code, reason).serialize()).serialize({ mask: false });
}

/** The close code and reason of a close frame read from a peer. */
function closeOf(frame: Frame | undefined): { code: number; reason: string } | undefined {
  if (frame === undefined || frame.opcode !== Opcode.CLOSE) return undefined;
  const { code, reason } = Close.parse(frame.data);
  return { code, reason };
}

/** Reads frames until a close frame (skipping pings) or the end of the stream. */
async function readUntilClose(peer: RawPeer, fromClient = false): Promise<Frame | undefined> {
  while (true) {
    const frame = await peer.readFrame(fromClient);
    if (frame === undefined || frame.opcode === Opcode.CLOSE) return frame;
  }
}

Deno.test("connection: strings go as Text and every kind of bytes as Binary", async () => {
  const { server, uri } = serveLocal(echo);
  const ws = await connect(uri);
  try {
    const received: Message[] = [];
    for (
      const message of [
        "text",
        new Uint8Array([1, 2, 3]),
        new Uint8Array([4, 5]).buffer,
        new DataView(new Uint8Array([6]).buffer),
        new Uint16Array([0x0807]),
      ]
    ) {
      await ws.send(message);
      received.push(await ws.recv());
    }
    assert.deepEqual(received, [
      "text",
      new Uint8Array([1, 2, 3]),
      new Uint8Array([4, 5]),
      new Uint8Array([6]),
      new Uint8Array([7, 8]),
    ]);
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: empty and non-ASCII messages round-trip unchanged", async () => {
  const { server, uri } = serveLocal(echo);
  const ws = await connect(uri);
  try {
    const unicode = "héllo wörld — 你好 🎉 \u{10FFFF}";
    const received: Message[] = [];
    for (const message of ["", new Uint8Array(0), unicode]) {
      await ws.send(message);
      received.push(await ws.recv());
    }
    assert.deepEqual(received, ["", new Uint8Array(0), unicode]);
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: an iterable is sent as one fragmented message, one frame per item", async () => {
  const frames = deferred<unknown[]>();
  const raw = new RawServer(async (peer) => {
    await acceptRaw(peer);
    const seen = [];
    for (let i = 0; i < 6; i++) seen.push(describe(await peer.readFrame(true)));
    frames.resolve(seen);
    await peer.write(closeFrame(1000));
    await readUntilClose(peer, true); // then the server closes TCP
  });
  const ws = await connect(raw.uri(), { compression: null });
  try {
    await ws.send(["Hel", "lo"]);
    await ws.send((async function* () {
      yield new Uint8Array([1]);
      yield new Uint8Array([2]);
      yield new Uint8Array([3]);
    })());
    await ws.send([]); // nothing at all
    await ws.send(["single"]);
    assert.deepEqual(await within(frames.promise, TIMER_SLACK, "frames"), [
      { opcode: Opcode.TEXT, fin: false, data: "Hel" },
      { opcode: Opcode.CONT, fin: true, data: "lo" },
      { opcode: Opcode.BINARY, fin: false, data: "\x01" },
      { opcode: Opcode.CONT, fin: false, data: "\x02" },
      { opcode: Opcode.CONT, fin: true, data: "\x03" },
      { opcode: Opcode.TEXT, fin: true, data: "single" },
    ]);
  } finally {
    await ws.close();
    await raw.close();
  }
});

Deno.test("connection: fragments received are reassembled into one message", async () => {
  const raw = new RawServer(async (peer) => {
    await acceptRaw(peer);
    const fragments = [
      new Frame(Opcode.TEXT, encoder.encode("frag"), { fin: false }),
      new Frame(Opcode.PING, encoder.encode("in between")),
      // A code point split across two fragments.
      new Frame(Opcode.CONT, encoder.encode("men€").subarray(0, 4), { fin: false }),
      new Frame(Opcode.CONT, encoder.encode("men€").subarray(4), { fin: false }),
      new Frame(Opcode.CONT, encoder.encode("ted"), { fin: true }),
      new Frame(Opcode.BINARY, new Uint8Array([1, 2]), { fin: false }),
      new Frame(Opcode.CONT, new Uint8Array([3]), { fin: true }),
    ];
    for (const frame of fragments) await peer.write(frame.serialize({ mask: false }));
    await peer.write(closeFrame(1000));
    await readUntilClose(peer, true);
  });
  const ws = await connect(raw.uri(), { compression: null });
  try {
    assert.deepEqual([await ws.recv(), await ws.recv()], [
      "fragmen€ted",
      new Uint8Array([1, 2, 3]),
    ]);
  } finally {
    await ws.close();
    await raw.close();
  }
});

Deno.test("connection: ping() resolves with the round-trip time when the pong arrives", async () => {
  const { server, uri } = serveLocal(echo);
  const ws = await connect(uri);
  try {
    const latency = await ws.ping();
    const custom = await ws.ping("custom payload");
    assert.deepEqual(
      [typeof latency, latency >= 0 && latency < TIMER_SLACK, custom >= 0, ws.latency === custom],
      ["number", true, true, true],
    );
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: the close code and reason from the client reach the server", async () => {
  const seen = deferred<unknown>();
  const { server, uri } = serveLocal(async (ws) => {
    const error = await rejection(ws.recv());
    const result = await ws.closed;
    seen.resolve({
      error: (error as Error).constructor.name,
      code: result.code,
      reason: result.reason,
      wasClean: result.wasClean,
    });
  });
  const ws = await connect(uri);
  try {
    await ws.close(4000, "bye ✓");
    assert.deepEqual(await within(seen.promise, TIMER_SLACK, "server side"), {
      error: "ConnectionClosedError",
      code: 4000,
      reason: "bye ✓",
      wasClean: true,
    });
    const result = await ws.closed;
    assert.deepEqual(
      { code: result.code, reason: result.reason, sent: result.sent, wasClean: result.wasClean },
      { code: 4000, reason: "bye ✓", sent: new Close(4000, "bye ✓"), wasClean: true },
    );
  } finally {
    await server.close();
  }
});

Deno.test("connection: the close code and reason from the server reach the client", async () => {
  const { server, uri } = serveLocal((ws) => ws.close(4001, "server says bye"));
  const ws = await connect(uri);
  try {
    const error = await rejection(ws.recv());
    assert.ok(error instanceof ConnectionClosedError);
    assert.deepEqual(
      [error.rcvd, error.sent, error.rcvdThenSent, error.code, error.reason],
      [
        new Close(4001, "server says bye"),
        new Close(4001, "server says bye"),
        true,
        4001,
        "server says bye",
      ],
    );
  } finally {
    await server.close();
  }
});

for (const code of [1000, 1001]) {
  Deno.test(`connection: iteration ends quietly on close ${code}`, async () => {
    const { server, uri } = serveLocal(async (ws) => {
      await ws.send("one");
      await ws.send("two");
      await ws.close(code);
    });
    const ws = await connect(uri);
    try {
      const received: Message[] = [];
      for await (const message of ws) received.push(message);
      assert.deepEqual(received, ["one", "two"]);
      assert.equal(ws.state, State.CLOSED);
    } finally {
      await server.close();
    }
  });
}

Deno.test("connection: iteration throws ConnectionClosedError with the frames on close 1011", async () => {
  const { server, uri } = serveLocal(async (ws) => {
    await ws.send("before");
    await ws.close(1011, "broken");
  });
  const ws = await connect(uri);
  try {
    const received: Message[] = [];
    const error = await rejection((async () => {
      for await (const message of ws) received.push(message);
    })());
    assert.ok(error instanceof ConnectionClosedError);
    assert.deepEqual(
      [received, error.rcvd, error.sent, error.rcvdThenSent],
      [["before"], new Close(1011, "broken"), new Close(1011, "broken"), true],
    );
  } finally {
    await server.close();
  }
});

Deno.test("connection: messages received before the close are delivered after it", async () => {
  const { server, uri } = serveLocal(async (ws) => {
    for (const message of ["a", "b", "c"]) await ws.send(message);
    await ws.close(1000, "done");
  });
  const ws = await connect(uri);
  try {
    const result = await within(ws.closed, TIMER_SLACK, "close");
    assert.equal(result.code, 1000);
    assert.deepEqual([await ws.recv(), await ws.recv(), await ws.recv()], ["a", "b", "c"]);
    const error = await rejection(ws.recv());
    assert.ok(error instanceof ConnectionClosedOK);
    assert.deepEqual([error.rcvd, error.sent], [new Close(1000, "done"), new Close(1000, "done")]);
  } finally {
    await server.close();
  }
});

Deno.test("connection: send() on a closed connection throws the close error", async () => {
  const { server, uri } = serveLocal(echo);
  const ws = await connect(uri);
  try {
    await ws.close(1000, "bye");
    const error = await rejection(ws.send("late"));
    assert.ok(error instanceof ConnectionClosedOK);
    assert.deepEqual([error.rcvd, error.sent, error.rcvdThenSent], [
      new Close(1000, "bye"),
      new Close(1000, "bye"),
      false,
    ]);
  } finally {
    await server.close();
  }
});

Deno.test("connection: recv({ signal }) rejects with the abort reason and keeps the message", async () => {
  const release = deferred();
  const { server, uri } = serveLocal(async (ws) => {
    await release.promise;
    await ws.send("later");
    await ws.recv().catch(() => {});
  });
  const ws = await connect(uri);
  try {
    const controller = new AbortController();
    const waiting = ws.recv({ signal: controller.signal });
    const reason = new Error("stop waiting");
    controller.abort(reason);
    assert.equal(await rejection(waiting), reason);
    assert.equal(await rejection(ws.recv({ signal: controller.signal })), reason);
    release.resolve();
    assert.equal(await ws.recv(), "later");
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: readable yields the messages and closes on a normal closure", async () => {
  const { server, uri } = serveLocal(async (ws) => {
    await ws.send("x");
    await ws.send(new Uint8Array([9]));
    await ws.close();
  });
  const ws = await connect(uri);
  try {
    const received = await Array.fromAsync(ws.readable);
    assert.deepEqual(received, ["x", new Uint8Array([9])]);
  } finally {
    await server.close();
  }
});

Deno.test("connection: readable errors with ConnectionClosedError on an abnormal closure", async () => {
  const { server, uri } = serveLocal((ws) => ws.close(1011));
  const ws = await connect(uri);
  try {
    const error = await rejection(Array.fromAsync(ws.readable));
    assert.ok(error instanceof ConnectionClosedError);
    assert.equal(error.code, 1011);
  } finally {
    await server.close();
  }
});

Deno.test("connection: writable sends each chunk and closing it closes the connection", async () => {
  const seen = deferred<unknown>();
  const { server, uri } = serveLocal(async (ws) => {
    const received: Message[] = [];
    for await (const message of ws) received.push(message);
    const result = await ws.closed;
    seen.resolve({ received, code: result.code });
  });
  const ws = await connect(uri);
  try {
    await ReadableStream.from<Message>(["one", new Uint8Array([2]), "three"]).pipeTo(ws.writable);
    assert.deepEqual(await within(seen.promise, TIMER_SLACK, "server side"), {
      received: ["one", new Uint8Array([2]), "three"],
      code: 1000,
    });
    assert.equal(ws.state, State.CLOSED);
  } finally {
    await server.close();
  }
});

Deno.test("connection: await using closes the connection with 1001", async () => {
  const seen = deferred<number>();
  const { server, uri } = serveLocal(async (ws) => {
    await ws.recv().catch(() => {});
    seen.resolve((await ws.closed).code);
  });
  let connection: StreamConnection | undefined;
  try {
    {
      await using ws = await connect(uri);
      connection = ws;
      await ws.send("hi");
    }
    assert.deepEqual([connection.state, await within(seen.promise, TIMER_SLACK, "server side")], [
      State.CLOSED,
      1001,
    ]);
  } finally {
    await server.close();
  }
});

Deno.test("connection: closing during a fragmented send fails the connection with 1011", async () => {
  const seen = deferred<number>();
  const { server, uri } = serveLocal(async (ws) => {
    await ws.recv().catch(() => {});
    seen.resolve((await ws.closed).code);
  });
  const ws = await connect(uri);
  try {
    const gate = deferred();
    const sending = ws.send((async function* () {
      yield "first";
      yield "second";
      await gate.promise;
      yield "never sent";
    })());
    await waitFor(() => ws.sendingFragmented, "the first fragments sent");
    await ws.close();
    gate.resolve();
    assert.ok((await rejection(sending)) instanceof ConnectionClosedError);
    assert.equal(await within(seen.promise, TIMER_SLACK, "server side"), 1011);
  } finally {
    await server.close();
  }
});

// ---- maxSize

Deno.test("connection: a client receiving a message over maxSize closes with 1009", async () => {
  const { server, uri } = serveLocal(async (ws) => {
    await ws.send(new Uint8Array(1025));
    await ws.recv().catch(() => {});
  });
  const ws = await connect(uri, { maxSize: 1024 });
  try {
    const error = await rejection(ws.recv());
    assert.ok(error instanceof ConnectionClosedError);
    assert.ok(error.cause instanceof PayloadTooBig);
    assert.deepEqual([error.sent, error.cause.message], [
      new Close(1009, "message too big: 1025 bytes exceeds maxSize of 1024 bytes"),
      "message too big: 1025 bytes exceeds maxSize of 1024 bytes",
    ]);
  } finally {
    await server.close();
  }
});

Deno.test("connection: a server receiving a message over maxSize closes with 1009", async () => {
  const seen = deferred<unknown>();
  const { server, uri } = serveLocal(async (ws) => {
    const error = await rejection(ws.recv());
    seen.resolve((error as ConnectionClosedError).sent);
  }, { maxSize: 1000 });
  const ws = await connect(uri);
  try {
    await ws.send("x".repeat(1001));
    const error = await rejection(ws.recv());
    assert.ok(error instanceof ConnectionClosedError);
    const expected = new Close(1009, "message too big: 1001 bytes exceeds maxSize of 1000 bytes");
    assert.deepEqual([error.rcvd, await within(seen.promise, TIMER_SLACK, "server side")], [
      expected,
      expected,
    ]);
  } finally {
    await server.close();
  }
});

Deno.test("connection: a message over maxSize spread over fragments closes with 1009", async () => {
  const closes = deferred<unknown>();
  const raw = new RawServer(async (peer) => {
    await acceptRaw(peer);
    await peer.write(
      new Frame(Opcode.BINARY, new Uint8Array(600), { fin: false }).serialize({ mask: false }),
    );
    await peer.write(new Frame(Opcode.CONT, new Uint8Array(600)).serialize({ mask: false }));
    closes.resolve(closeOf(await readUntilClose(peer, true)));
  });
  const ws = await connect(raw.uri(), { maxSize: 1000, compression: null, closeTimeout: 200 });
  try {
    const error = await rejection(ws.recv());
    assert.ok(error instanceof ConnectionClosedError);
    assert.deepEqual(await within(closes.promise, TIMER_SLACK, "close frame"), {
      code: 1009,
      reason: "message too big: 1200 bytes exceeds maxSize of 1000 bytes",
    });
  } finally {
    await raw.close();
  }
});

Deno.test("connection: raising maxSize accepts 10 MiB messages both ways", async () => {
  const big = randomBytes(10 * 1024 * 1024);
  const { server, uri } = serveLocal(echo, { maxSize: 16 * 1024 * 1024 });
  const ws = await connect(uri, { maxSize: 16 * 1024 * 1024 });
  try {
    await ws.send(big);
    const reply = await ws.recv();
    assert.ok(reply instanceof Uint8Array);
    assert.equal(reply.length, big.length);
    assert.ok(reply.every((byte, i) => byte === big[i]), "10 MiB echo differs");
  } finally {
    await ws.close();
    await server.close();
  }
});

// ---- maxQueue and writeLimit: backpressure

Deno.test("connection: large frames trickling in, cut anywhere, arrive whole and in order", async () => {
  // The rest of a large payload is read straight into the message's buffer: cut the frames
  // mid-header, mid-payload and just after a payload, with pauses so that reads return less.
  const messages = [randomBytes(1_000_000, 3), randomBytes(20_000, 4), randomBytes(100, 5)];
  const wire = new Uint8Array(messages.reduce((sum, data) => sum + data.length + 14, 0));
  let length = 0;
  for (const data of messages) {
    const frame = new Frame(Opcode.BINARY, data).serialize({ mask: true });
    wire.set(frame, length);
    length += frame.length;
  }
  const cuts = [1, 9, 100, 300_000, 1_000_013, 1_000_014, 1_000_020, 1_010_000, length];
  const { server } = serveLocal(echo, { maxSize: 2_000_000 });
  const peer = await rawClient(server.port);
  try {
    let from = 0;
    for (const to of cuts) {
      await peer.write(wire.slice(from, to));
      from = to;
      await delay(5);
    }
    for (const data of messages) {
      const frame = await within(peer.readFrame(), 5000, `a ${data.length}-byte echo`);
      assert.equal(frame?.data.length, data.length);
      assert.ok(frame.data.every((byte, i) => byte === data[i]), "same bytes");
    }
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: maxQueue stops reading so the peer's writes block", async () => {
  const messageSize = 300 * 1024; // more than one read, so each read completes one message at most
  const frame = new Frame(Opcode.BINARY, randomBytes(messageSize)).serialize({ mask: false });
  const blocked = deferred<number>();
  const sentTotal = deferred<number>();
  const resume = deferred();
  const client: { ws?: StreamConnection } = {};
  const raw = new RawServer(async (peer) => {
    await acceptRaw(peer);
    let sent = 0;
    // Write until a write stays pending while the client's queue is full: it stopped reading.
    // (A write merely slow on a loaded machine, the queue not full, doesn't count.)
    while (sent < 400) {
      const write = peer.write(frame);
      if (await pendingAfter(write, 300) && client.ws?.messagesQueued === 4) {
        blocked.resolve(sent);
        await write;
        sent++;
        break;
      }
      sent++;
    }
    sentTotal.resolve(sent);
    await resume.promise;
    await peer.write(closeFrame(1000));
    await readUntilClose(peer, true);
  });
  const ws = await connect(raw.uri(), { maxQueue: 4, compression: null, pingInterval: null });
  client.ws = ws;
  try {
    const sentBeforeBlocking = await within(blocked.promise, 20_000, "peer blocked");
    assert.ok(sentBeforeBlocking < 400, `peer never blocked after ${sentBeforeBlocking} messages`);
    assert.equal(ws.messagesQueued, 4);
    let received = 0;
    const reading = (async () => {
      for await (const message of ws) {
        assert.equal((message as Uint8Array).length, messageSize);
        assert.ok(ws.messagesQueued <= 4, `${ws.messagesQueued} messages queued`);
        received++;
      }
    })();
    const total = await within(sentTotal.promise, 10_000, "peer unblocked");
    resume.resolve();
    await within(reading, 10_000, "reading");
    assert.equal(received, total);
  } finally {
    await ws.close();
    await raw.close();
  }
});

Deno.test("connection: pings from a peer that doesn't read stop being read once 1 MiB of pongs waits", async () => {
  const { server } = serveLocal(echo, { pingInterval: null });
  const peer = await rawClient(server.port);
  try {
    // 1 MiB of 125-byte pings per write; the peer never reads the pongs.
    const ping = new Frame(Opcode.PING, new Uint8Array(125)).serialize({ mask: true });
    const chunk = new Uint8Array(ping.length * 8000);
    for (let i = 0; i < 8000; i++) chunk.set(ping, i * ping.length);
    let sent = 0;
    while (sent < 200) {
      if (await pendingAfter(peer.write(chunk), 1000)) break;
      sent++;
    }
    // Without the pause the server read on and queued every pong: 200 MiB.
    assert.ok(sent < 64, `the server read ${sent} MiB of pings`);
    const [connection] = server.connections;
    assert.ok(connection.bufferedAmount < 2 * 1024 * 1024, `${connection.bufferedAmount} queued`);
    assert.equal(connection.state, State.OPEN);
  } finally {
    peer.close();
    await within(server.close(), 15_000, "server close");
  }
});

Deno.test("connection: close() ends while reading is paused on a full queue", async () => {
  // The handler never reads: once maxQueue messages wait, reading pauses. Closing must read on
  // (the client's close frame) and end within closeTimeout either way.
  // Event order rather than a clock: had the server not read on, the client's close frame would
  // never have reached it, and closeTimeout would have ended the connection uncleanly (1006).
  const closed = deferred<CloseResult>();
  const { server, uri } = serveLocal(async (ws) => {
    while (ws.messagesQueued < 2) await delay(10); // the queue is full: reading has paused
    await ws.close(1000, "bye");
    closed.resolve(await ws.closed);
  }, { maxQueue: 2, closeTimeout: 10_000 });
  const ws = await connect(uri);
  try {
    for (let i = 0; i < 20; i++) ws.send(`message ${i}`);
    const result = await within(closed.promise, 9_000, "server close()");
    assert.deepEqual([result.code, result.wasClean], [1000, true]);
    assert.equal((await within(ws.closed, 5000, "client closed")).code, 1000);
  } finally {
    await within(server.close(), 5000, "server.close()");
  }
});

Deno.test("connection: send() waits while the buffer is over writeLimit and the peer doesn't read", async () => {
  const startReading = deferred();
  const raw = new RawServer(async (peer) => {
    await acceptRaw(peer);
    await startReading.promise;
    await readUntilClose(peer, true);
    await peer.write(closeFrame(1000));
  });
  const ws = await connect(raw.uri(), {
    writeLimit: 64 * 1024,
    compression: null,
    pingInterval: null,
  });
  try {
    const chunk = randomBytes(1024 * 1024);
    let sends = 0;
    let pending: Promise<void> | undefined;
    while (sends < 200) {
      const send = ws.send(chunk);
      sends++;
      if (await pendingAfter(send, 300)) {
        pending = send;
        break;
      }
    }
    assert.ok(pending !== undefined, `send() never waited after ${sends} MiB`);
    assert.ok(ws.bufferedAmount > 64 * 1024, `bufferedAmount ${ws.bufferedAmount}`);
    startReading.resolve();
    await within(pending, 10_000, "send after the peer read");
    assert.ok(ws.bufferedAmount <= 64 * 1024, `bufferedAmount ${ws.bufferedAmount}`);
  } finally {
    startReading.resolve();
    await ws.close();
    await raw.close();
  }
});

// ---- keepalive and closeTimeout against peers that don't answer

Deno.test("connection: keepalive closes with 1011 when the server never answers pings", async () => {
  const frames = deferred<unknown[]>();
  const raw = new RawServer(async (peer) => {
    await acceptRaw(peer);
    const seen = [];
    let frame;
    do {
      frame = await peer.readFrame(true);
      seen.push(frame?.opcode);
    } while (frame !== undefined && frame.opcode !== Opcode.CLOSE);
    frames.resolve([seen, closeOf(frame)]);
    await peer.readToEnd();
  });
  const started = performance.now();
  const ws = await connect(raw.uri(), { pingInterval: 100, pingTimeout: 100, closeTimeout: 200 });
  try {
    const result = await within(ws.closed, 400 + TIMER_SLACK, "keepalive");
    const elapsed = performance.now() - started;
    assert.deepEqual(await frames.promise, [
      [Opcode.PING, Opcode.CLOSE],
      { code: 1011, reason: "keepalive ping timeout" },
    ]);
    assert.deepEqual([result.sent, result.code, result.wasClean], [
      new Close(1011, "keepalive ping timeout"),
      1006,
      false,
    ]);
    // A ping after pingInterval, the close after pingTimeout, the end after closeTimeout.
    assertTook(elapsed, 200, 400, "closed");
  } finally {
    await raw.close();
  }
});

Deno.test("connection: keepalive keeps a connection whose peer answers pings", async () => {
  const { server, uri } = serveLocal(echo, { pingInterval: null });
  // pingTimeout is 1 s, not less: a process stalled longer than pingTimeout on a loaded machine
  // runs the timeout before it reads the pong that arrived meanwhile.
  const ws = await connect(uri, { pingInterval: 50, pingTimeout: 1000 });
  try {
    while (ws.latency === 0) await within(delay(10), TIMER_SLACK, "first pong");
    // Then more than a whole ping interval and timeout twice over.
    await delay(2 * (50 + 1000));
    assert.deepEqual([ws.state, ws.latency > 0], [State.OPEN, true]);
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: one keepalive sweep pings every connection and drops only the silent one", async () => {
  const opened: ServerConnection[] = [];
  const { server, uri } = serveLocal(async (ws) => {
    opened.push(ws);
    for await (const _ of ws) { /* idle */ }
  }, { pingInterval: 40, pingTimeout: 200, closeTimeout: 200 });
  const clients = await Promise.all(
    Array.from({ length: 20 }, () => connect(uri, { pingInterval: null })),
  );
  // A peer that completes the handshake and then never answers a ping.
  const silent = await RawPeer.connect(server.port);
  try {
    await silent.write(handshakeRequest(server.port));
    await silent.readHead();
    await within(
      (async () => {
        while (opened.length < 21) await delay(10);
      })(),
      5000,
      "every connection open",
    );
    const silentOne = opened.find((ws) =>
      (ws.remoteAddr as Deno.NetAddr).port === (silent.conn.localAddr as Deno.NetAddr).port
    )!;
    const result = await within(silentOne.closed, 5000, "the silent peer dropped");
    assert.equal(result.code, 1006);
    assert.equal(result.sent?.code, 1011);
    const others = opened.filter((ws) => ws !== silentOne);
    assert.deepEqual(
      others.map((ws) => [ws.state, ws.latency > 0]),
      others.map(() => [State.OPEN, true]),
    );
  } finally {
    silent.close();
    await Promise.all(clients.map((ws) => ws.close()));
    await server.close();
  }
});

Deno.test("connection: closeTimeout bounds a close the server never answers", async () => {
  const closeRead = deferred<unknown>();
  const raw = new RawServer(async (peer) => {
    await acceptRaw(peer);
    closeRead.resolve(closeOf(await readUntilClose(peer, true)));
    await peer.readToEnd(); // never answers, never closes
  });
  const ws = await connect(raw.uri(), { closeTimeout: 300 });
  try {
    const started = performance.now();
    await within(ws.close(1000, "bye"), 300 + TIMER_SLACK, "close");
    const elapsed = performance.now() - started;
    const result = await ws.closed;
    assert.deepEqual(await closeRead.promise, { code: 1000, reason: "bye" });
    assert.deepEqual([result.code, result.wasClean, result.sent], [
      1006,
      false,
      new Close(1000, "bye"),
    ]);
    assertTook(elapsed, 250, 300, "closed");
  } finally {
    await raw.close();
  }
});

Deno.test("connection: closeTimeout bounds the wait for the server to close TCP", async () => {
  const raw = new RawServer(async (peer) => {
    await acceptRaw(peer);
    await readUntilClose(peer, true);
    await peer.write(closeFrame(1000, "bye"));
    await peer.readToEnd(); // answers the close but keeps TCP open
  });
  const ws = await connect(raw.uri(), { closeTimeout: 300 });
  try {
    const started = performance.now();
    await within(ws.close(1000, "bye"), 300 + TIMER_SLACK, "close");
    const elapsed = performance.now() - started;
    const result = await ws.closed;
    assert.deepEqual([result.code, result.wasClean], [1000, true]);
    assertTook(elapsed, 0, 300, "closed");
  } finally {
    await raw.close();
  }
});

Deno.test("connection: a server drops a client that never answers its close within closeTimeout", async () => {
  const closed = deferred<{ code: number; wasClean: boolean; elapsed: number }>();
  const { server } = serveLocal(async (ws) => {
    const started = performance.now();
    await ws.close(1000, "bye");
    const result = await ws.closed;
    closed.resolve({
      code: result.code,
      wasClean: result.wasClean,
      elapsed: performance.now() - started,
    });
  }, { closeTimeout: 300 });
  const peer = await RawPeer.connect(server.port);
  try {
    await peer.write(
      `GET / HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert.ok((await peer.readHead())?.startsWith("HTTP/1.1 101"));
    assert.deepEqual(closeOf(await peer.readFrame()), { code: 1000, reason: "bye" });
    // Never answer: the server closes TCP after closeTimeout.
    const { elapsed, ...result } = await within(closed.promise, 300 + TIMER_SLACK, "server close");
    assert.deepEqual(result, { code: 1006, wasClean: false });
    assertTook(elapsed, 250, 300, "closed");
    assert.equal(await within(peer.readFrame(), TIMER_SLACK, "EOF"), undefined);
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: a server keepalive closes with 1011 when the client never pongs", async () => {
  const closed = deferred<unknown>();
  const { server } = serveLocal(async (ws: ServerConnection) => {
    await ws.recv().catch(() => {});
    const result = await ws.closed;
    closed.resolve(result.sent);
  }, { pingInterval: 100, pingTimeout: 100, closeTimeout: 200 });
  const peer = await RawPeer.connect(server.port);
  try {
    await peer.write(
      `GET / HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert.ok((await peer.readHead())?.startsWith("HTTP/1.1 101"));
    assert.deepEqual(
      [(await peer.readFrame())?.opcode, closeOf(await peer.readFrame())],
      [Opcode.PING, { code: 1011, reason: "keepalive ping timeout" }],
    );
    assert.deepEqual(
      await within(closed.promise, 400 + TIMER_SLACK, "server close"),
      new Close(1011, "keepalive ping timeout"),
    );
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: keepalive drops a peer that never reads, without an unhandled rejection", async () => {
  // The keepalive ping waits behind a full output buffer; when the pong times out the
  // connection ends, and the ping's own promise must not be left rejected with no one awaiting it.
  const unhandled: unknown[] = [];
  const record = (event: PromiseRejectionEvent) => {
    event.preventDefault();
    unhandled.push(event.reason);
  };
  globalThis.addEventListener("unhandledrejection", record);
  const closed = deferred<CloseResult>();
  const { server } = serveLocal(async (ws) => {
    const chunk = new Uint8Array(64 * 1024);
    try {
      while (true) await ws.send(chunk);
    } catch {
      closed.resolve(await ws.closed);
    }
  }, { pingInterval: 100, pingTimeout: 200, closeTimeout: 200, compression: null });
  const peer = await RawPeer.connect(server.port);
  try {
    await peer.write(handshakeRequest(server.port));
    assert.ok((await peer.readHead())?.startsWith("HTTP/1.1 101"));
    const result = await within(closed.promise, 10_000, "server close");
    await delay(100); // unhandled rejections are reported on a later turn of the event loop
    assert.deepEqual([result.code, result.wasClean, result.sent, unhandled], [
      1006,
      false,
      new Close(1011, "keepalive ping timeout"),
      [],
    ]);
  } finally {
    globalThis.removeEventListener("unhandledrejection", record);
    peer.close();
    await server.close();
  }
});

// ---- protocol violations over the wire

/** Opens a raw client connection to `port` through the handshake. */
async function rawClient(port: number): Promise<RawPeer> {
  const peer = await RawPeer.connect(port);
  await peer.write(
    `GET / HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
  );
  assert.ok((await peer.readHead())?.startsWith("HTTP/1.1 101"));
  return peer;
}

Deno.test("connection: a server receiving an unmasked frame closes with 1002 and drops TCP", async () => {
  const { server } = serveLocal(echo);
  const peer = await rawClient(server.port);
  try {
    await peer.write(new Frame(Opcode.TEXT, encoder.encode("unmasked")).serialize({ mask: false }));
    assert.deepEqual(closeOf(await within(peer.readFrame(), TIMER_SLACK, "close frame")), {
      code: 1002,
      reason: "incorrect masking: frame must be masked",
    });
    assert.equal(await within(peer.readFrame(), TIMER_SLACK, "EOF"), undefined);
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: a server receiving invalid UTF-8 text closes with 1007", async () => {
  const { server } = serveLocal(echo);
  const peer = await rawClient(server.port);
  try {
    await peer.write(
      new Frame(Opcode.TEXT, new Uint8Array([0x68, 0xc3, 0x28])).serialize({ mask: true }),
    );
    assert.deepEqual(closeOf(await within(peer.readFrame(), TIMER_SLACK, "close frame")), {
      code: 1007,
      reason: "invalid UTF-8 in text message",
    });
  } finally {
    peer.close();
    await server.close();
  }
});

// ---- messages before a protocol violation (RFC 6455 §7.1.7)

/**
 * A ping, two text messages, a frame with a reserved bit set (a violation: no extension
 * defines it) and another ping, as one write; masked as a client sends them.
 */
function violationAfterMessages(mask: boolean): Uint8Array {
  const frames = [
    new Frame(Opcode.PING, encoder.encode("early")),
    new Frame(Opcode.TEXT, encoder.encode("one")),
    new Frame(Opcode.TEXT, encoder.encode("two")),
    new Frame(Opcode.TEXT, encoder.encode("bad"), { rsv2: true }),
    new Frame(Opcode.PING, encoder.encode("late")),
  ];
  return concat(frames.map((frame) => frame.serialize({ mask })));
}

/** Every frame read until the end of the stream (or a close frame, with `untilClose`). */
async function framesUntilEnd(
  peer: RawPeer,
  fromClient: boolean,
  untilClose = false,
): Promise<({ opcode: number; fin: boolean; data: string } | undefined)[]> {
  const frames = [];
  for (;;) {
    const frame = await peer.readFrame(fromClient);
    if (frame === undefined) return frames;
    frames.push(
      frame.opcode === Opcode.CLOSE
        ? { ...describe(frame)!, data: `${closeOf(frame)?.code}` }
        : describe(frame),
    );
    if (untilClose && frame.opcode === Opcode.CLOSE) return frames;
  }
}

const ANSWERED_BEFORE_FAILING = [
  { opcode: Opcode.PONG, fin: true, data: "early" },
  { opcode: Opcode.TEXT, fin: true, data: "one" },
  { opcode: Opcode.TEXT, fin: true, data: "two" },
  { opcode: Opcode.CLOSE, fin: true, data: "1002" },
];

Deno.test("connection: a server answers the messages that came before a protocol violation, then closes with 1002", async () => {
  const { server } = serveLocal(echo);
  const peer = await rawClient(server.port);
  try {
    await peer.write(violationAfterMessages(true));
    // The pong, the echoes, then the close; nothing after the violation is answered.
    assert.deepEqual(
      await within(framesUntilEnd(peer, false), 5000, "frames"),
      ANSWERED_BEFORE_FAILING,
    );
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: a client answers the messages that came before a protocol violation, then closes with 1002", async () => {
  const frames = deferred<unknown>();
  const raw = new RawServer(async (peer) => {
    await acceptRaw(peer);
    await peer.write(violationAfterMessages(false));
    frames.resolve(await framesUntilEnd(peer, true, true));
  });
  const ws = await connect(raw.uri());
  try {
    const error = await rejection((async () => {
      for await (const message of ws) await ws.send(message);
    })());
    assert.ok(error instanceof ConnectionClosedError);
    assert.deepEqual(await within(frames.promise, 5000, "frames"), ANSWERED_BEFORE_FAILING);
  } finally {
    await raw.close();
  }
});

Deno.test("connection: closeTimeout bounds how long a failure waits for a handler that stops reading", async () => {
  const run = async (closeTimeout: number) => {
    const second = deferred<Message>();
    const { server } = serveLocal(async (ws) => {
      await ws.recv(); // takes "one", never asks for "two"…
      await ws.closed;
      second.resolve(await ws.recv()); // …which is still there once closed
    }, { closeTimeout });
    const peer = await rawClient(server.port);
    return { server, peer, second: second.promise };
  };
  const waiting = await run(60_000);
  const bounded = await run(300);
  try {
    await waiting.peer.write(violationAfterMessages(true));
    await bounded.peer.write(violationAfterMessages(true));
    const close = waiting.peer.readFrame().then(() => waiting.peer.readFrame());
    assert.equal(await pendingAfter(close, 500), true, "no close frame while the handler may read");
    assert.deepEqual(await within(framesUntilEnd(bounded.peer, false), 5000, "frames"), [
      { opcode: Opcode.PONG, fin: true, data: "early" },
      { opcode: Opcode.CLOSE, fin: true, data: "1002" },
    ]);
    assert.equal(await within(bounded.second, 5000, "second message"), "two");
  } finally {
    for (const { server, peer } of [waiting, bounded]) {
      peer.close();
      await server.close();
    }
  }
});

Deno.test("connection: a handler reading with recvStreaming answers what came before a violation too", async () => {
  const { server } = serveLocal(async (ws) => {
    for (;;) {
      let message = "";
      for await (const part of ws.recvStreaming()) message += part;
      await ws.send(message);
    }
  });
  const peer = await rawClient(server.port);
  try {
    await peer.write(violationAfterMessages(true));
    assert.deepEqual(
      await within(framesUntilEnd(peer, false), 5000, "frames"),
      ANSWERED_BEFORE_FAILING,
    );
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: close() while a failure waits sends the violation's close code", async () => {
  const { server } = serveLocal(async (ws) => {
    await ws.recv();
    await ws.close(1000, "bye");
  });
  const peer = await rawClient(server.port);
  try {
    await peer.write(violationAfterMessages(true));
    assert.deepEqual(await within(framesUntilEnd(peer, false), 5000, "frames"), [
      { opcode: Opcode.PONG, fin: true, data: "early" },
      { opcode: Opcode.CLOSE, fin: true, data: "1002" },
    ]);
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: maxSize counts decompressed bytes: a small compressed message over it closes with 1009", async () => {
  const seen = deferred<unknown>();
  const { server, uri } = serveLocal(async (ws) => {
    await ws.send("a".repeat(100_000)); // compresses to a few hundred bytes
    const error = await rejection(ws.recv());
    seen.resolve((error as ConnectionClosedError).rcvd);
  });
  const ws = await connect(uri, { maxSize: 10_000 });
  try {
    assert.deepEqual(ws.extensions.map((extension) => extension.name), ["permessage-deflate"]);
    const error = await rejection(ws.recv());
    assert.ok(error instanceof ConnectionClosedError);
    assert.ok(error.cause instanceof PayloadTooBig);
    assert.deepEqual([error.sent?.code, error.cause.maxSize], [1009, 10_000]);
    assert.deepEqual((await within(seen.promise, TIMER_SLACK, "server side") as Close).code, 1009);
  } finally {
    await server.close();
  }
});

Deno.test("connection: a browser-sized handshake request is read at once, then reads shrink to 256 B", async () => {
  const request = new TextEncoder().encode(
    handshakeRequest(8765, {
      headers: {
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) " +
          "Chrome/131.0.0.0 Safari/537.36",
        Origin: "https://chat.example.com",
        "Accept-Language": "en-GB,en;q=0.9,fr;q=0.8",
        "Accept-Encoding": "gzip, deflate, br, zstd",
        "Cache-Control": "no-cache",
        Pragma: "no-cache",
        "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
      },
    }),
  );
  assert.ok(request.length > 400 && request.length < 1024, `request of ${request.length} B`);
  const readSizes: number[] = [];
  const written: Uint8Array[] = [];
  const secondRead = deferred<void>();
  let pending: Uint8Array | undefined = request;
  const transport: Transport = {
    read(buffer: Uint8Array): Promise<number | null> {
      readSizes.push(buffer.length);
      if (pending === undefined) {
        secondRead.resolve();
        return new Promise(() => {}); // an idle client: the read never completes
      }
      const count = Math.min(pending.length, buffer.length);
      buffer.set(pending.subarray(0, count));
      pending = count === pending.length ? undefined : pending.subarray(count);
      return Promise.resolve(count);
    },
    write(data: Uint8Array): Promise<number> {
      written.push(data.slice());
      return Promise.resolve(data.length);
    },
    close(): void {},
  };
  const protocol = new ServerProtocol();
  const connection = new StreamConnection(protocol, transport, {
    pingInterval: null,
    onHandshake: (event) => {
      if (event.type === "request") protocol.sendResponse(protocol.accept(event.request));
    },
  });
  connection.start();
  await within(connection.handshake, TIMER_SLACK, "handshake");
  await within(secondRead.promise, TIMER_SLACK, "the read after the handshake");
  assert.deepEqual(readSizes, [1024, 256]);
  assert.match(new TextDecoder().decode(written[0]), /^HTTP\/1\.1 101 /);
  connection.abort();
});

// ---- onHandshakeEnd

// A server-side StreamConnection on a real loopback socket: answers the handshake request and
// records what onHandshakeEnd reports; `peer` is the client end, speaking raw bytes.
async function serverConnectionOnLoopback(): Promise<
  { connection: StreamConnection; peer: RawPeer; ended: boolean[]; close(): void }
> {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const [conn, peer] = await Promise.all([
    listener.accept(),
    RawPeer.connect(listener.addr.port),
  ]);
  listener.close();
  const ended: boolean[] = [];
  const protocol = new ServerProtocol();
  const connection = new StreamConnection(protocol, conn, {
    pingInterval: null,
    onHandshake: (event) => {
      if (event.type === "request") protocol.sendResponse(protocol.accept(event.request));
    },
    onHandshakeEnd: (endedConnection, opened) => {
      assert.equal(endedConnection, connection);
      ended.push(opened);
    },
  });
  connection.start();
  return {
    connection,
    peer,
    ended,
    close: () => {
      connection.abort();
      peer.close();
    },
  };
}

Deno.test("connection: onHandshakeEnd reports an opened handshake once; handshake resolves after", async () => {
  const { connection, peer, ended, close } = await serverConnectionOnLoopback();
  try {
    await peer.write(handshakeRequest(0));
    const head = await within(peer.readHead(), TIMER_SLACK, "the 101 response");
    assert.match(head ?? "", /^HTTP\/1\.1 101 /);
    await waitFor(() => ended.length === 1, "onHandshakeEnd");
    // `handshake` asked for only now, once the handshake ended.
    await within(connection.handshake, TIMER_SLACK, "handshake");
    assert.deepEqual(ended, [true]);
  } finally {
    close();
  }
});

Deno.test("connection: onHandshakeEnd reports a failed handshake once; handshake rejects after", async () => {
  const { connection, peer, ended, close } = await serverConnectionOnLoopback();
  try {
    await peer.write("GET / HTTP/1.0\r\n\r\n");
    assert.equal((await within(peer.readResponse(), TIMER_SLACK, "400")).status, 400);
    await waitFor(() => ended.length === 1, "onHandshakeEnd");
    const error = await rejection(connection.handshake);
    assert.ok(error instanceof InvalidMessage, String(error));
    assert.deepEqual(ended, [false]);
  } finally {
    close();
  }
});

// ---- recvStreaming()

/** A client frame (masked) as bytes. */
function clientFrame(opcode: Opcode, data: Uint8Array | string, fin: boolean): Uint8Array {
  const bytes = typeof data === "string" ? encoder.encode(data) : data;
  return new Frame(opcode, bytes, { fin }).serialize({ mask: true });
}

/** The text of the next data frame `peer` reads (skipping pings). */
async function nextText(peer: RawPeer): Promise<string | undefined> {
  while (true) {
    const frame = await within(peer.readFrame(), 5000, "reply");
    if (frame === undefined) return undefined;
    if (frame.opcode === Opcode.PING) continue;
    if (frame.opcode === Opcode.CLOSE) return `close ${Close.parse(frame.data).code}`;
    return decoder.decode(frame.data);
  }
}

Deno.test("connection: recvStreaming() gives each fragment before the message ends", async () => {
  // The handler answers every part: the client sends the next fragment only after that answer,
  // so the message can't have been received whole first.
  const { server } = serveLocal(async (ws) => {
    for await (const part of ws.recvStreaming()) await ws.send(`part ${JSON.stringify(part)}`);
    await ws.send("end");
  });
  const peer = await rawClient(server.port);
  try {
    const bytes = encoder.encode("café ok"); // é is 0xc3 0xa9: split between two fragments
    const replies = [];
    await peer.write(clientFrame(Opcode.TEXT, bytes.subarray(0, 4), false));
    replies.push(await nextText(peer));
    await peer.write(clientFrame(Opcode.CONT, bytes.subarray(4, 6), false));
    replies.push(await nextText(peer));
    await peer.write(clientFrame(Opcode.CONT, bytes.subarray(6), true));
    replies.push(await nextText(peer), await nextText(peer));
    assert.deepEqual(replies, ['part "caf"', 'part "é "', 'part "ok"', "end"]);
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: recvStreaming() gives Binary parts as bytes, and a whole message as one part", async () => {
  const parts = deferred<Message[][]>();
  const { server, uri } = serveLocal(async (ws) => {
    const messages: Message[][] = [];
    for (let i = 0; i < 2; i++) messages.push(await Array.fromAsync(ws.recvStreaming()));
    parts.resolve(messages);
  });
  const ws = await connect(uri, { compression: null });
  try {
    await ws.send([new Uint8Array([1, 2]), new Uint8Array([3])]);
    await ws.send(new Uint8Array([4, 5, 6]));
    assert.deepEqual(await within(parts.promise, 5000, "parts"), [
      [new Uint8Array([1, 2]), new Uint8Array([3])],
      [new Uint8Array([4, 5, 6])],
    ]);
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: recvStreaming() of a message received before the call is one part", async () => {
  const parts = deferred<Message[]>();
  const { server, uri } = serveLocal(async (ws) => {
    while (ws.messagesQueued === 0) await delay(5);
    parts.resolve(await Array.fromAsync(ws.recvStreaming()));
  });
  const ws = await connect(uri);
  try {
    await ws.send(["al", "ready"]);
    assert.deepEqual(await within(parts.promise, 5000, "parts"), ["already"]);
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: invalid UTF-8 in a streamed message closes with 1007 after the valid parts", async () => {
  const got: Message[] = [];
  const ended = deferred<unknown>();
  const { server } = serveLocal(async (ws) => {
    try {
      for await (const part of ws.recvStreaming()) got.push(part);
    } catch (error) {
      ended.resolve(error);
    }
  });
  const peer = await rawClient(server.port);
  try {
    await peer.write(clientFrame(Opcode.TEXT, "valid ", false));
    await peer.write(clientFrame(Opcode.CONT, new Uint8Array([0xe2, 0x82]), false));
    await peer.write(clientFrame(Opcode.CONT, new Uint8Array([0x41]), false));
    assert.equal(await nextText(peer), "close 1007");
    peer.close(); // (the server waits for the client's end of the stream, up to closeTimeout)
    const error = await within(ended.promise, 5000, "the handler's error");
    assert.ok(error instanceof ConnectionClosedError);
    assert.deepEqual(got, ["valid ", ""]);
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: a streamed message over maxSize closes with 1009 at the fragment crossing it", async () => {
  const got: number[] = [];
  const { server } = serveLocal(async (ws) => {
    for await (const part of ws.recvStreaming()) got.push(part.length);
  }, { maxSize: 10 });
  const peer = await rawClient(server.port);
  try {
    await peer.write(clientFrame(Opcode.BINARY, new Uint8Array(6), false));
    await peer.write(clientFrame(Opcode.CONT, new Uint8Array(4), false));
    await peer.write(clientFrame(Opcode.CONT, new Uint8Array(1), true));
    assert.equal(await nextText(peer), "close 1009");
    assert.deepEqual(got, [6, 4]);
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: recvStreaming({ maxSize: Infinity }) takes a message over maxSize", async () => {
  const sizes = deferred<number[]>();
  const { server, uri } = serveLocal(async (ws) => {
    const parts = await Array.fromAsync(ws.recvStreaming({ maxSize: Infinity }));
    sizes.resolve(parts.map((part) => part.length));
    await ws.send("done");
    await ws.recv(); // the next message is limited by maxSize again
  }, { maxSize: 1000 });
  const ws = await connect(uri, { compression: null });
  try {
    await ws.send([new Uint8Array(800), new Uint8Array(800), new Uint8Array(800)]);
    assert.deepEqual(await within(sizes.promise, 5000, "sizes"), [800, 800, 800]);
    assert.equal(await ws.recv(), "done");
    await ws.send(new Uint8Array(1001));
    const closed = await within(ws.closed, 5000, "close");
    assert.equal(closed.code, 1009);
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: recvStreaming({ maxSize: Infinity }) still inflates one compressed frame into at most maxSize", async () => {
  const outcome = deferred<string>();
  const { server, uri } = serveLocal(async (ws) => {
    try {
      for await (const _ of ws.recvStreaming({ maxSize: Infinity }));
      outcome.resolve("whole");
    } catch (error) {
      outcome.resolve((error as Error).name);
    }
  }, { maxSize: 64 * 1024 });
  const ws = await connect(uri);
  try {
    // 1 MiB of zeros compresses to about 1 KiB: one frame that would inflate 16 × maxSize.
    await ws.send(new Uint8Array(1024 * 1024));
    const closed = await within(ws.closed, TIMER_SLACK, "close");
    assert.equal(closed.code, 1009);
    assert.equal(await within(outcome.promise, TIMER_SLACK, "handler"), "ConnectionClosedError");
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: recv() right after leaving a recvStreaming() loop waits for the next message while the rest of the left one arrives", async () => {
  const left = deferred();
  const result = deferred<Message[]>();
  const { server } = serveLocal(async (ws) => {
    const got: Message[] = [];
    for await (const part of ws.recvStreaming()) {
      got.push(part);
      break;
    }
    left.resolve();
    try {
      got.push(await ws.recv());
      for await (const message of ws) got.push(message);
    } catch (error) {
      got.push((error as Error).name);
    }
    result.resolve(got);
  }, { compression: null });
  const peer = await RawPeer.connect(server.port);
  const frame = (opcode: Opcode, text: string, fin: boolean) =>
    new Frame(opcode, encoder.encode(text), { fin }).serialize({ mask: true });
  try {
    await peer.write(handshakeRequest(server.port));
    await peer.readHead();
    await peer.write(frame(Opcode.TEXT, "first part", false));
    await within(left.promise, 5000, "loop left");
    // The rest of the message the loop left comes after recv() was called.
    await peer.write(frame(Opcode.CONT, "dropped", false));
    await peer.write(frame(Opcode.CONT, "dropped too", true));
    await peer.write(frame(Opcode.TEXT, "second message", true));
    await peer.write(frame(Opcode.TEXT, "third message", true));
    await peer.write(frame(Opcode.CLOSE, "", true));
    assert.deepEqual(await within(result.promise, 5000, "result"), [
      "first part",
      "second message",
      "third message",
    ]);
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: recv() while recvStreaming() reads a message is a ConcurrencyError", async () => {
  const result = deferred<unknown[]>();
  const { server, uri } = serveLocal(async (ws) => {
    const parts = ws.recvStreaming();
    const first = await parts.next();
    const during = await rejection(ws.recv());
    const iterating = await rejection(ws[Symbol.asyncIterator]().next());
    const another = (() => {
      try {
        ws.recvStreaming();
      } catch (error) {
        return error;
      }
    })();
    const rest = await Array.fromAsync(parts);
    const after = await ws.recv(); // the stream is over: recv() reads the next message
    result.resolve([first.value, during, iterating, another, rest, after]);
  });
  const ws = await connect(uri);
  try {
    await ws.send(["a", "b"]);
    await ws.send("next");
    const [first, during, iterating, another, rest, after] = await within(
      result.promise,
      5000,
      "result",
    );
    assert.deepEqual(
      [first, rest, after],
      ["a", ["b"], "next"],
    );
    assert.deepEqual(
      [during, iterating, another].map((error) => [
        (error as Error).name,
        (error as Error).message,
      ]),
      [
        [
          "ConcurrencyError",
          "Cannot recv(): recvStreaming() is reading a message; read it to its end first",
        ],
        [
          "ConcurrencyError",
          "Cannot iterate over messages: recvStreaming() is reading a message; read it to its end first",
        ],
        ["ConcurrencyError", "Cannot recvStreaming: another recvStreaming() is reading a message"],
      ],
    );
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: recvStreaming() while recv() waits is a ConcurrencyError", async () => {
  const result = deferred<unknown>();
  const { server, uri } = serveLocal(async (ws) => {
    const waiting = ws.recv();
    try {
      ws.recvStreaming();
    } catch (error) {
      result.resolve(error);
    }
    await waiting;
  });
  const ws = await connect(uri);
  try {
    const error = await within(result.promise, 5000, "error");
    assert.deepEqual([(error as Error).name, (error as Error).message], [
      "ConcurrencyError",
      "Cannot recvStreaming: recv() or an iteration is waiting for a message",
    ]);
    await ws.send("unblock");
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: leaving a recvStreaming() loop early drops the rest of that message", async () => {
  const result = deferred<Message[]>();
  const { server, uri } = serveLocal(async (ws) => {
    const got: Message[] = [];
    for await (const part of ws.recvStreaming()) {
      got.push(part);
      break;
    }
    got.push(await ws.recv());
    result.resolve(got);
  });
  const ws = await connect(uri, { compression: null });
  try {
    // The rest of the first message may come after the loop was left: it is dropped as it comes.
    await ws.send((async function* () {
      yield "first part";
      await delay(50);
      yield "dropped";
    })());
    await ws.send("second message");
    assert.deepEqual(await within(result.promise, 5000, "result"), [
      "first part",
      "second message",
    ]);
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: compressed fragments stream one part per frame", async () => {
  const parts = deferred<string[]>();
  const { server, uri } = serveLocal(async (ws) => {
    parts.resolve(await Array.fromAsync(ws.recvStreaming()) as string[]);
  });
  const ws = await connect(uri); // permessage-deflate on both sides by default
  try {
    assert.deepEqual(ws.extensions.map((extension) => extension.name), ["permessage-deflate"]);
    const fragments = ["a".repeat(5000), "b".repeat(5000), "c".repeat(5000)];
    await ws.send(fragments);
    assert.deepEqual(await within(parts.promise, 5000, "parts"), fragments);
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: reading pauses while a streamed part waits to be taken", async () => {
  const firstPart = deferred();
  const resume = deferred();
  let received = 0;
  const done = deferred<number>();
  const { server, uri } = serveLocal(async (ws) => {
    let total = 0;
    for await (const part of ws.recvStreaming({ maxSize: Infinity })) {
      if (total === 0) {
        firstPart.resolve();
        await resume.promise;
      }
      total += part.length;
    }
    done.resolve(total);
  });
  const ws = await connect(uri, { compression: null });
  try {
    const chunk = new Uint8Array(256 * 1024);
    const count = 256; // 64 MiB
    const sending = ws.send((function* () {
      for (let i = 0; i < count; i++) yield chunk;
    })());
    await within(firstPart.promise, 5000, "first part");
    await delay(500);
    // While the handler holds its first part, the server reads no more than what the kernel's
    // buffers let through before TCP pushes back: far less than the 64 MiB being sent.
    const connection = [...server.connections][0];
    received = connection.protocol.counters.wireBytesReceived;
    assert.ok(received < 24 * 1024 * 1024, `${received} bytes read while paused`);
    resume.resolve();
    await within(sending, 30_000, "upload");
    assert.equal(await within(done.promise, 30_000, "all parts"), count * chunk.length);
  } finally {
    resume.resolve();
    await ws.close();
    await server.close();
  }
});

// ---- statistics

Deno.test("connection: stats count messages and payload and wire bytes both ways", async () => {
  const serverSide = deferred<StreamConnection>();
  const { server, uri } = serveLocal(async (ws) => {
    serverSide.resolve(ws);
    await echo(ws);
  });
  const before = Date.now();
  const ws = await connect(uri, { compression: null });
  try {
    await ws.send("héllo"); // 6 bytes of UTF-8
    await ws.send(new Uint8Array(200));
    await ws.send(["ab", "c"]); // one message in two frames
    for (let i = 0; i < 3; i++) await ws.recv();
    const client = ws.stats;
    const handshakeOut = client.wireBytesSent - ((6 + 6) + (8 + 200) + (6 + 2) + (6 + 1));
    assert.deepEqual(
      {
        messagesReceived: client.messagesReceived,
        bytesReceived: client.bytesReceived,
        messagesSent: client.messagesSent,
        bytesSent: client.bytesSent,
        latency: client.latency,
      },
      { messagesReceived: 3, bytesReceived: 209, messagesSent: 3, bytesSent: 209, latency: 0 },
    );
    assert.ok(handshakeOut > 100 && handshakeOut < 1000, `handshake request: ${handshakeOut}`);
    assert.ok(client.openedAt >= before && client.openedAt <= Date.now());
    const connection = await serverSide.promise;
    const latency = await ws.ping();
    const serverStats = connection.stats;
    // What one side sent is what the other received, on the wire too (pings included).
    assert.deepEqual(
      [serverStats.messagesReceived, serverStats.bytesReceived, serverStats.messagesSent],
      [3, 209, 3],
    );
    assert.equal(serverStats.wireBytesReceived, ws.stats.wireBytesSent);
    assert.equal(ws.stats.latency, latency);
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: stats show what compression saved", async () => {
  const serverSide = deferred<StreamConnection>();
  const { server, uri } = serveLocal(async (ws) => {
    serverSide.resolve(ws);
    await echo(ws);
  });
  const ws = await connect(uri); // permessage-deflate
  try {
    const text = "all work and no play ".repeat(1000); // 21 000 bytes, very compressible
    await ws.send(text);
    assert.equal(await ws.recv(), text);
    const connection = await serverSide.promise;
    const { bytesReceived, wireBytesReceived, bytesSent, wireBytesSent } = connection.stats;
    assert.deepEqual([bytesReceived, bytesSent], [21_000, 21_000]);
    assert.ok(wireBytesReceived < 2_000, `${wireBytesReceived} bytes on the wire`);
    assert.ok(wireBytesSent < 2_000, `${wireBytesSent} bytes on the wire`);
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: a streamed message counts once, with all its bytes", async () => {
  const done = deferred<StreamConnection>();
  const { server, uri } = serveLocal(async (ws) => {
    await Array.fromAsync(ws.recvStreaming());
    done.resolve(ws);
    await ws.closed;
  });
  const ws = await connect(uri, { compression: null });
  try {
    await ws.send(["abc", "de"]);
    const stats = (await within(done.promise, 5000, "stream")).stats;
    assert.deepEqual([stats.messagesReceived, stats.bytesReceived], [1, 5]);
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: reading goes on once the last part of a streamed message is taken", async () => {
  // Both frames come in one read: the last part waits in the queue (reading pauses) until
  // taken, and taking it must let reading resume.
  const { server } = serveLocal(async (ws) => {
    await ws.send(JSON.stringify(await Array.fromAsync(ws.recvStreaming())));
    await ws.send(`then ${await ws.recv()}`);
  });
  const peer = await rawClient(server.port);
  try {
    await peer.write(
      concat([clientFrame(Opcode.TEXT, "abc", false), clientFrame(Opcode.CONT, "de", true)]),
    );
    const streamed = await nextText(peer);
    await peer.write(clientFrame(Opcode.TEXT, "next", true));
    assert.deepEqual([streamed, await nextText(peer)], ['["abc","de"]', "then next"]);
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: leaving a recvStreaming() loop whose last part waits lets reading go on", async () => {
  const { server } = serveLocal(async (ws) => {
    for await (const part of ws.recvStreaming()) {
      await ws.send(`first ${part}`);
      break; // the last part is queued already: it is dropped
    }
    await ws.send(`then ${await ws.recv()}`);
  });
  const peer = await rawClient(server.port);
  try {
    await peer.write(
      concat([clientFrame(Opcode.TEXT, "abc", false), clientFrame(Opcode.CONT, "de", true)]),
    );
    const streamed = await nextText(peer);
    await peer.write(clientFrame(Opcode.TEXT, "next", true));
    assert.deepEqual([streamed, await nextText(peer)], ["first abc", "then next"]);
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("connection: two next() calls on one iteration, both waiting, get one message each", async () => {
  const release = deferred();
  const { server, uri } = serveLocal(async (ws) => {
    await release.promise;
    await ws.send("a");
    await ws.send("b");
    await ws.recv().catch(() => {});
  });
  const ws = await connect(uri);
  try {
    const iteration = ws[Symbol.asyncIterator]();
    const first = iteration.next();
    const second = iteration.next();
    release.resolve();
    assert.deepEqual(await within(Promise.all([first, second]), TIMER_SLACK, "both messages"), [
      { value: "a", done: false },
      { value: "b", done: false },
    ]);
  } finally {
    await ws.close();
    await server.close();
  }
});

Deno.test("connection: connections built from one options object follow its changes", async () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const conns: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const [accepted, dialed] = await Promise.all([
        listener.accept(),
        Deno.connect({ hostname: HOST, port: listener.addr.port }),
      ]);
      conns.push(accepted, dialed);
    }
    const options = { maxQueue: 4, writeLimit: 1000, pingInterval: null };
    const first = new StreamConnection(new ServerProtocol(), conns[0], options);
    const same = new StreamConnection(new ServerProtocol(), conns[2], options);
    options.maxQueue = 8;
    const changed = new StreamConnection(new ServerProtocol(), conns[4], options);
    assert.deepEqual(
      [first, same, changed].map((c) => [c.maxQueue, c.writeLimit, c.pingInterval]),
      [[4, 1000, null], [4, 1000, null], [8, 1000, null]],
    );
    options.maxQueue = 0;
    assert.throws(
      () => new StreamConnection(new ServerProtocol(), conns[4], options),
      new RangeError("maxQueue must be at least 1, got 0"),
    );
  } finally {
    listener.close();
    for (const conn of conns) conn.close();
  }
});
