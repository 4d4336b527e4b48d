// Room and its backplanes over real sockets and real processes: serve() and
// Deno.serve connections in one room, a real redis-server (tests/_redis.ts),
// two examples/cluster_server.ts processes sharing it, and two Workers
// sharing a BroadcastChannel.

import assert from "node:assert/strict";
import { createClient } from "npm:redis@4";
import { connect } from "../client.ts";
import { type Connection, type Message, State } from "../connection.ts";
import { handler } from "../deploy.ts";
import { ConcurrencyError, InvalidState, WebSocketError } from "../errors.ts";
import {
  BackplaneError,
  broadcastChannelBackplane,
  InvalidEnvelope,
  redisBackplane,
  Room,
  type RoomOptions,
} from "../pubsub.ts";
import { serve, type Server, type ServerConnection } from "../server.ts";
import { ignoreWithout } from "./_ci.ts";
import { delay, waitFor } from "./_helpers.ts";
import { findRedisServer, redisCommand, type RedisServer, startRedis } from "./_redis.ts";

const HOST = "127.0.0.1";
const EXAMPLE = new URL("../examples/cluster_server.ts", import.meta.url).pathname;
const WORKER = new URL("./_pubsub_worker.ts", import.meta.url);

// Without redis-server (and no way to install it) the Redis tests are skipped
// where everyone sees it, except under CI, where they fail.
const HAVE_REDIS = (await findRedisServer()) !== undefined;
const SKIP_REDIS = ignoreWithout(HAVE_REDIS);
if (SKIP_REDIS) {
  console.warn(
    "pubsub_test: redis-server is missing and couldn't be installed: Redis tests SKIPPED",
  );
}

/** Everything a connection receives, in order, collected in the background. */
class Inbox {
  readonly messages: Message[] = [];
  readonly done: Promise<void>;

  constructor(readonly connection: Connection) {
    this.done = (async () => {
      try {
        for await (const message of connection) this.messages.push(message);
      } catch {
        // closed with an error: the test looks at `closed`
      }
    })();
  }

  /** Waits until `count` messages arrived, then returns them all. */
  async take(count: number, ms = 5_000): Promise<Message[]> {
    await waitFor(() => this.messages.length >= count, `${count} messages`, ms);
    return this.messages.slice();
  }

  /** Asserts that nothing more than `count` messages arrives within `ms`. */
  async nothingAfter(count: number, ms = 250): Promise<void> {
    await delay(ms);
    assert.deepEqual(this.messages.slice(count), []);
  }
}

interface LocalFixture {
  server: Server;
  room: Room;
  /** The server-side connections, in the order the clients connected. */
  members: ServerConnection[];
  clients: Connection[];
  inboxes: Inbox[];
  close(): Promise<void>;
}

/** A serve() server whose handler adds every connection to `room`, and `count` clients. */
async function localRoom(count: number, room: Room): Promise<LocalFixture> {
  const members: ServerConnection[] = [];
  const server = serve(async (ws) => {
    room.add(ws);
    members.push(ws);
    for await (const message of ws) room.publish(message);
  }, { hostname: HOST, port: 0 });
  const clients: Connection[] = [];
  for (let i = 0; i < count; i++) {
    clients.push(await connect(`ws://${HOST}:${server.port}/`));
    await waitFor(() => members.length === i + 1, "server side open");
  }
  return {
    server,
    room,
    members,
    clients,
    inboxes: clients.map((client) => new Inbox(client)),
    async close() {
      await Promise.all(clients.map((client) => client.close()));
      await server.close();
      await room.close();
    },
  };
}

const BINARY = Uint8Array.from({ length: 256 }, (_, i) => i);
const TEXT = "héllo, wörld ✓ 🚀";

// ---------------------------------------------------------------- local room

Deno.test("pubsub: publish sends Text and Binary to every local member, byte for byte", async () => {
  const fixture = await localRoom(3, new Room("local"));
  try {
    await fixture.room.publish(TEXT);
    await fixture.room.publish(BINARY);
    await fixture.room.publish(new DataView(BINARY.buffer, 254, 2));
    for (const inbox of fixture.inboxes) {
      assert.deepEqual(await inbox.take(3), [TEXT, BINARY, new Uint8Array([254, 255])]);
    }
    assert.equal(fixture.room.size, 3);
  } finally {
    await fixture.close();
  }
});

Deno.test("pubsub: publish queues the message on every member before it returns", async () => {
  const fixture = await localRoom(2, new Room("sync", { backplane: broadcastChannelBackplane() }));
  try {
    assert.deepEqual(fixture.members.map((member) => member.bufferedAmount), [0, 0]);
    const published = fixture.room.publish("now");
    assert.deepEqual(fixture.members.map((member) => member.bufferedAmount > 0), [true, true]);
    await published;
    for (const inbox of fixture.inboxes) assert.deepEqual(await inbox.take(1), ["now"]);
  } finally {
    await fixture.close();
  }
});

Deno.test("pubsub: a closed connection leaves the room by itself", async () => {
  const fixture = await localRoom(2, new Room("leave"));
  try {
    const [first] = fixture.members;
    await fixture.clients[0].close();
    await first.closed;
    await delay(0);
    assert.deepEqual([fixture.room.size, fixture.room.has(first)], [1, false]);
    await fixture.room.publish("after");
    assert.deepEqual(await fixture.inboxes[1].take(1), ["after"]);
  } finally {
    await fixture.close();
  }
});

Deno.test("pubsub: delete removes a member, which gets nothing more", async () => {
  const fixture = await localRoom(2, new Room("delete"));
  try {
    assert.deepEqual(
      [fixture.room.delete(fixture.members[0]), fixture.room.delete(fixture.members[0])],
      [true, false],
    );
    fixture.room.add(fixture.members[1]); // twice: still one member
    assert.deepEqual([...fixture.room.connections], [fixture.members[1]]);
    await fixture.room.publish("only one");
    assert.deepEqual(await fixture.inboxes[1].take(1), ["only one"]);
    await fixture.inboxes[0].nothingAfter(0);
  } finally {
    await fixture.close();
  }
});

Deno.test("pubsub: members from serve() and from handler() on Deno.serve share a room", async () => {
  const room = new Room("mixed");
  const fixture = await localRoom(1, room);
  const controller = new AbortController();
  const platform = Deno.serve(
    { hostname: HOST, port: 0, signal: controller.signal, onListen: () => {} },
    handler(async (ws) => {
      room.add(ws);
      for await (const message of ws) room.publish(message);
    }),
  );
  const platformClient = await connect(`ws://${HOST}:${platform.addr.port}/`);
  const platformInbox = new Inbox(platformClient);
  try {
    await waitFor(() => room.size === 2, "both members");
    await platformClient.send(TEXT);
    await fixture.clients[0].send(BINARY);
    const expected = [TEXT, BINARY];
    assert.deepEqual(await platformInbox.take(2), expected);
    assert.deepEqual(await fixture.inboxes[0].take(2), expected);
  } finally {
    await platformClient.close();
    await fixture.close();
    controller.abort();
    await platform.finished;
  }
});

Deno.test("pubsub: a slow member is closed with 1013, as broadcast() does", async () => {
  const fixture = await localRoom(1, new Room("slow", { maxBufferedAmount: 0 }));
  try {
    fixture.room.publish("first");
    fixture.room.publish("second"); // "first" is still buffered: over maxBufferedAmount 0
    const result = await fixture.clients[0].closed;
    assert.deepEqual(await fixture.inboxes[0].take(1), ["first"]);
    assert.deepEqual({ code: result.code, reason: result.reason }, {
      code: 1013,
      reason: "too slow: more than 0 bytes buffered (maxBufferedAmount)",
    });
  } finally {
    await fixture.close();
  }
});

Deno.test('pubsub: onSlow "skip" leaves a slow member open without the message', async () => {
  const fixture = await localRoom(1, new Room("skip", { maxBufferedAmount: 0, onSlow: "skip" }));
  try {
    fixture.room.publish("first");
    fixture.room.publish("skipped");
    await waitFor(() => fixture.members[0].bufferedAmount === 0, "drained");
    await fixture.room.publish("third");
    assert.deepEqual(await fixture.inboxes[0].take(2), ["first", "third"]);
    assert.equal(fixture.members[0].state, State.OPEN);
  } finally {
    await fixture.close();
  }
});

Deno.test("pubsub: publish throws ConcurrencyError for a member in a fragmented send; the others get it", async () => {
  const fixture = await localRoom(2, new Room("busy"));
  try {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const fragmented = fixture.members[0].send((async function* () {
      yield "fr";
      yield "ag"; // the first fragment goes out once the next one is known
      await gate;
      yield "ment";
    })());
    await waitFor(() => fixture.members[0].sendingFragmented, "fragmented send started");
    assert.throws(() => fixture.room.publish("during"), ConcurrencyError);
    assert.deepEqual(await fixture.inboxes[1].take(1), ["during"]);
    release();
    await fragmented;
    assert.deepEqual(await fixture.inboxes[0].take(1), ["fragment"]);
    assert.deepEqual(await fixture.inboxes[1].take(1), ["during"]);
  } finally {
    await fixture.close();
  }
});

// ---------------------------------------------------------------- validation

Deno.test("pubsub: new Room throws TypeError for a name or channel that isn't a non-empty string", () => {
  assert.throws(() => new Room(""), TypeError);
  assert.throws(() => new Room(42 as unknown as string), TypeError);
  assert.throws(() => new Room("ok", { channel: "" }), TypeError);
});

Deno.test("pubsub: new Room throws RangeError for a negative or non-numeric maxBufferedAmount", () => {
  assert.throws(() => new Room("r", { maxBufferedAmount: -1 }), RangeError);
  assert.throws(() => new Room("r", { maxBufferedAmount: NaN }), RangeError);
  assert.throws(
    () => new Room("r", { maxBufferedAmount: "1" as unknown as number }),
    RangeError,
  );
});

Deno.test("pubsub: new Room throws TypeError for an unknown onSlow, a bad backplane or onError", () => {
  const bad = (options: unknown) => () => new Room("r", options as RoomOptions);
  assert.throws(bad({ onSlow: "drop" }), TypeError);
  assert.throws(bad({ backplane: {} }), TypeError);
  assert.throws(bad({ onError: "log" }), TypeError);
});

Deno.test("pubsub: publish throws TypeError for an unsupported message and sends nothing", async () => {
  const errors: Error[] = [];
  const backplane = broadcastChannelBackplane();
  const listener = new Room("typed", { backplane, onError: (error) => errors.push(error) });
  const fixture = await localRoom(1, listener);
  const sender = new Room("typed", { backplane });
  try {
    await listener.open();
    assert.throws(() => sender.publish(42 as unknown as string), TypeError);
    await sender.publish("valid");
    assert.deepEqual(await fixture.inboxes[0].take(1), ["valid"]);
    await fixture.inboxes[0].nothingAfter(1);
    assert.deepEqual(errors, []);
  } finally {
    await sender.close();
    await fixture.close();
    await backplane.close?.();
  }
});

Deno.test("pubsub: a closed room refuses add, publish and open with InvalidState", async () => {
  const room = new Room("closed");
  await room.close();
  await room.close(); // idempotent
  const fixture = await localRoom(0, new Room("other"));
  try {
    assert.throws(() => room.publish("x"), InvalidState);
    await assert.rejects(room.open(), InvalidState);
    const client = await connect(`ws://${HOST}:${fixture.server.port}/`);
    await waitFor(() => fixture.members.length === 1, "member");
    assert.throws(() => room.add(fixture.members[0]), InvalidState);
    await client.close();
  } finally {
    await fixture.close();
  }
});

Deno.test("pubsub: BackplaneError and InvalidEnvelope are WebSocketErrors named after their class", () => {
  const error = new InvalidEnvelope("bad", { cause: 1 });
  assert.deepEqual(
    [
      error instanceof BackplaneError,
      error instanceof WebSocketError,
      error.name,
      new BackplaneError("x").name,
    ],
    [true, true, "InvalidEnvelope", "BackplaneError"],
  );
});

// ---------------------------------------------------------------- BroadcastChannel

Deno.test("pubsub: a room drops its own messages coming back from the backplane", async () => {
  const backplane = broadcastChannelBackplane();
  const errors: Error[] = [];
  const a = await localRoom(1, new Room("echo", { backplane, onError: (e) => errors.push(e) }));
  const b = await localRoom(1, new Room("echo", { backplane, onError: (e) => errors.push(e) }));
  try {
    await a.room.open();
    await b.room.open();
    await a.clients[0].send(TEXT);
    await b.clients[0].send(BINARY);
    // Each room's own subscription hears its message too: dropped, not delivered twice.
    assert.deepEqual(new Set(await a.inboxes[0].take(2)), new Set([TEXT, BINARY]));
    assert.deepEqual(new Set(await b.inboxes[0].take(2)), new Set([TEXT, BINARY]));
    await a.inboxes[0].nothingAfter(2);
    await b.inboxes[0].nothingAfter(2);
    assert.deepEqual(errors, []);
  } finally {
    await a.close();
    await b.close();
    await backplane.close?.();
  }
});

Deno.test("pubsub: the BroadcastChannel backplane reports data that isn't bytes as InvalidEnvelope", async () => {
  const errors: Error[] = [];
  const backplane = broadcastChannelBackplane();
  const fixture = await localRoom(
    1,
    new Room("foreign", { backplane, onError: (e) => errors.push(e) }),
  );
  const foreign = new BroadcastChannel("foreign");
  try {
    await fixture.room.open();
    foreign.postMessage({ hello: "room" });
    await waitFor(() => errors.length === 1, "error reported");
    assert.deepEqual(errors.map((error) => [error.constructor, error.message]), [[
      InvalidEnvelope,
      'Invalid envelope on channel "foreign": Object, expected bytes; dropped',
    ]]);
    await fixture.inboxes[0].nothingAfter(0, 50);
  } finally {
    foreign.close();
    await fixture.close();
    await backplane.close?.();
  }
});

Deno.test("pubsub: open() rejects with BackplaneError when the backplane can't subscribe", async () => {
  const backplane = broadcastChannelBackplane();
  await backplane.close?.();
  const room = new Room("refused", { backplane });
  const error = await room.open().then(() => undefined, (error: unknown) => error);
  assert.ok(error instanceof BackplaneError);
  assert.equal(
    error.message,
    'Cannot subscribe to channel "refused": the backplane is closed',
  );
  await room.close();
});

Deno.test("pubsub: a failed publish goes to onError and the local members still get it", async () => {
  const backplane = broadcastChannelBackplane();
  const errors: Error[] = [];
  const fixture = await localRoom(
    1,
    new Room("failing", { backplane, onError: (e) => errors.push(e) }),
  );
  try {
    await backplane.close?.();
    await fixture.room.publish("still local"); // resolves: the failure is reported
    assert.deepEqual(await fixture.inboxes[0].take(1), ["still local"]);
    assert.deepEqual(errors.map((error) => [error.constructor, error.message]), [[
      BackplaneError,
      'Cannot publish to channel "failing": the backplane is closed',
    ]]);
  } finally {
    await fixture.close();
  }
});

Deno.test("pubsub: two Workers share a room over BroadcastChannel", async () => {
  const workers = [0, 1].map(() => new Worker(WORKER, { type: "module" }));
  const events: { type: string; port?: number; name?: string; message?: string }[][] = [[], []];
  const failures: string[] = [];
  workers.forEach((worker, i) => {
    worker.onmessage = (event) => events[i].push(event.data);
    worker.onerror = (event) => {
      event.preventDefault();
      failures.push(event.message);
    };
  });
  const clients: Connection[] = [];
  try {
    // Loading a Worker type-checks its module first: allow for a busy machine.
    await waitFor(
      () => failures.length > 0 || events.every((list) => list.some((e) => e.type === "listening")),
      "workers listening",
      30_000,
    );
    assert.deepEqual(failures, []);
    const ports = events.map((list) => list.find((e) => e.type === "listening")!.port!);
    for (const port of [ports[0], ports[1], ports[1]]) {
      clients.push(await connect(`ws://${HOST}:${port}/`));
    }
    const inboxes = clients.map((client) => new Inbox(client));
    await clients[0].send(TEXT);
    await clients[1].send(BINARY);
    for (const inbox of inboxes) {
      const got = await inbox.take(2);
      assert.deepEqual(new Set(got), new Set([TEXT, BINARY]));
    }
    for (const inbox of inboxes) await inbox.nothingAfter(2, 100);
    assert.deepEqual(events.flat().filter((e) => e.type === "error"), []);
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    workers.forEach((worker) => worker.postMessage("stop"));
    await waitFor(
      () => events.every((list) => list.some((e) => e.type === "stopped")),
      "workers stopped",
      10_000,
    ).finally(() => workers.forEach((worker) => worker.terminate()));
  }
});

// ---------------------------------------------------------------- Redis, in this process

type RedisClient = ReturnType<typeof createClient>;

interface RedisRoom {
  room: Room;
  errors: Error[];
  clients: RedisClient[];
  close(): Promise<void>;
}

/** A Room over two node-redis clients of `redis`, reporting into `errors`. */
async function redisRoom(redis: RedisServer, name: string): Promise<RedisRoom> {
  const publisher = createClient({ url: redis.url, disableOfflineQueue: true });
  const subscriber = createClient({ url: redis.url });
  const clients = [publisher, subscriber];
  for (const client of clients) client.on("error", () => {});
  await Promise.all(clients.map((client) => client.connect()));
  const errors: Error[] = [];
  const room = new Room(name, {
    backplane: redisBackplane(publisher, subscriber),
    onError: (error) => errors.push(error),
  });
  await room.open();
  return {
    room,
    errors,
    clients,
    async close() {
      await room.close();
      await Promise.allSettled(clients.map((client) => client.disconnect()));
    },
  };
}

function envelope(kind: number, origin: number, payload: number[] | string): Uint8Array {
  const bytes = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
  return new Uint8Array([0xb1, kind, ...new Array(16).fill(origin), ...bytes]);
}

/** How many clients Redis counts as subscribed to `channel`. */
async function subscribers(redis: RedisServer, channel: string): Promise<unknown> {
  const reply = await redisCommand(redis.port, ["PUBSUB", "NUMSUB", channel]);
  return Array.isArray(reply) ? reply[1] : reply;
}

Deno.test({
  name: "pubsub: garbage on the Redis channel is dropped and reported as InvalidEnvelope",
  ignore: SKIP_REDIS,
  async fn() {
    const redis = await startRedis();
    const subject = await redisRoom(redis, "garbage");
    const fixture = await localRoom(1, subject.room);
    try {
      const garbage: (string | Uint8Array)[] = [
        "hello from another program",
        new Uint8Array([0xb1, 1, 2]),
        new Uint8Array([0xb2, ...envelope(2, 7, [1]).subarray(1)]),
        envelope(9, 7, [1]),
        envelope(1, 7, [0x68, 0xff, 0xfe]),
      ];
      for (const data of garbage) await redisCommand(redis.port, ["PUBLISH", "garbage", data]);
      // A well-formed envelope from another publisher, published the same raw way.
      await redisCommand(redis.port, ["PUBLISH", "garbage", envelope(2, 7, [0, 255, 13, 10])]);
      await redisCommand(redis.port, ["PUBLISH", "garbage", envelope(1, 7, TEXT)]);
      assert.deepEqual(await fixture.inboxes[0].take(2), [new Uint8Array([0, 255, 13, 10]), TEXT]);
      const prefix = 'Invalid envelope on channel "garbage": ';
      assert.deepEqual(subject.errors.map((error) => [error.constructor, error.message]), [
        [InvalidEnvelope, `${prefix}first byte 0x68, expected 0xb1 (magic and version 1); dropped`],
        [InvalidEnvelope, `${prefix}3 bytes, shorter than the 18-byte header; dropped`],
        [InvalidEnvelope, `${prefix}first byte 0xb2, expected 0xb1 (magic and version 1); dropped`],
        [InvalidEnvelope, `${prefix}kind 9, expected 1 (Text) or 2 (Binary); dropped`],
        [InvalidEnvelope, `${prefix}Text payload of 3 bytes isn't valid UTF-8; dropped`],
      ]);
      await fixture.inboxes[0].nothingAfter(2, 50);
    } finally {
      await fixture.close();
      await subject.close();
      await redis.stop();
    }
  },
});

Deno.test({
  name: "pubsub: close() unsubscribes from Redis",
  ignore: SKIP_REDIS,
  async fn() {
    const redis = await startRedis();
    const subject = await redisRoom(redis, "leaving");
    const fixture = await localRoom(1, subject.room);
    try {
      assert.equal(await subscribers(redis, "leaving"), 1);
      await subject.room.close();
      assert.deepEqual(
        [await subscribers(redis, "leaving"), subject.room.size],
        [0, 0],
      );
      await redisCommand(redis.port, ["PUBLISH", "leaving", envelope(1, 7, "too late")]);
      await fixture.inboxes[0].nothingAfter(0);
      assert.deepEqual(subject.errors, []);
    } finally {
      await fixture.close();
      await subject.close();
      await redis.stop();
    }
  },
});

Deno.test({
  name: "pubsub: with Redis down, publish reaches local members and onError gets BackplaneError",
  ignore: SKIP_REDIS,
  async fn() {
    const redis = await startRedis();
    const subject = await redisRoom(redis, "outage");
    const fixture = await localRoom(1, subject.room);
    try {
      await redis.stop();
      await waitFor(() => subject.errors.length >= 2, "both connections reported lost");
      await subject.room.publish("while down"); // resolves: the failure is reported
      assert.deepEqual(await fixture.inboxes[0].take(1), ["while down"]);
      const described = subject.errors.map((error) => [error.constructor, error.message]);
      for (const role of ["publisher", "subscriber"]) {
        assert.ok(
          described.some(([type, message]) =>
            type === BackplaneError && `${message}`.startsWith(`Redis ${role} connection failed: `)
          ),
          `${role} loss in ${JSON.stringify(described)}`,
        );
      }
      const failed = subject.errors.at(-1)!;
      assert.deepEqual(
        [failed.constructor, failed.message, (failed.cause as Error).constructor.name],
        [
          BackplaneError,
          'Cannot publish to channel "outage": The client is offline',
          "ClientOfflineError",
        ],
      );
    } finally {
      await fixture.close();
      await subject.close();
      await redis.stop();
    }
  },
});

Deno.test({
  name:
    "pubsub: rooms sharing a Redis backplane add one listener per client and all hear of a loss",
  ignore: SKIP_REDIS,
  async fn() {
    const redis = await startRedis();
    const publisher = createClient({ url: redis.url, disableOfflineQueue: true });
    const subscriber = createClient({ url: redis.url });
    const clients = [publisher, subscriber];
    for (const client of clients) client.on("error", () => {});
    const counts = () => clients.map((client) => client.listenerCount("error"));
    try {
      await Promise.all(clients.map((client) => client.connect()));
      const backplane = redisBackplane(publisher, subscriber);
      const before = counts();
      const errors: Error[][] = [];
      const rooms = Array.from({ length: 20 }, (_, i) => {
        const list: Error[] = [];
        errors.push(list);
        return new Room(`room ${i}`, { backplane, onError: (error) => list.push(error) });
      });
      await Promise.all(rooms.map((room) => room.open()));
      assert.deepEqual(counts(), before.map((count) => count + 1));
      await redis.stop();
      await waitFor(() => errors.every((list) => list.length === 2), "every room told");
      assert.deepEqual(
        errors.map((list) => list.map((error) => error.message.split(":")[0]).sort()),
        rooms.map(
          () => ["Redis publisher connection failed", "Redis subscriber connection failed"],
        ),
      );
      await Promise.all(rooms.map((room) => room.close()));
      assert.deepEqual(counts(), before);
    } finally {
      await Promise.allSettled(clients.map((client) => client.disconnect()));
      await redis.stop();
    }
  },
});

// ---------------------------------------------------------------- Redis, two processes

interface ClusterProcess {
  url: string;
  /** stdout and stderr so far. */
  output(): string;
  running(): boolean;
  /** SIGTERM, then the exit code (SIGKILL after 10 s). */
  stop(): Promise<number>;
}

async function startClusterServer(redis: RedisServer): Promise<ClusterProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      EXAMPLE,
      "--port",
      "0",
      "--hostname",
      HOST,
      "--redis",
      redis.url,
      "--room",
      "cluster",
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let output = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) output += text;
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  let exited = false;
  const status = child.status.finally(() => (exited = true));
  const stop = async () => {
    if (!exited) {
      Deno.kill(child.pid, "SIGTERM");
      const timer = setTimeout(() => !exited && Deno.kill(child.pid, "SIGKILL"), 10_000);
      await status;
      clearTimeout(timer);
    }
    await pumps;
    return (await status).code;
  };
  try {
    await waitFor(() => /^listening on ws:/m.test(output) || exited, "listening line", 20_000);
  } catch (error) {
    await stop();
    throw error;
  }
  const match = output.match(/^listening on (ws:\/\/127\.0\.0\.1:\d+)$/m);
  if (match === null) {
    await stop();
    throw new Error(`the example didn't start: ${output}`);
  }
  return { url: `${match[1]}/`, output: () => output, running: () => !exited, stop };
}

/** What publisher `name` sends: Text and Binary in turn, each one distinct. */
function messagesOf(index: number, count: number): Message[] {
  return Array.from(
    { length: count },
    (_, i) =>
      i % 2 === 0
        ? `${index}:${i}:${TEXT}`
        : new Uint8Array([index, i, 0, 255, 0x80, 13, 10, ...BINARY.subarray(0, i)]),
  );
}

function publisherOf(message: Message): number {
  return typeof message === "string" ? Number(message.split(":")[0]) : message[0];
}

Deno.test({
  name: "pubsub: two processes sharing Redis deliver every message to every client exactly once",
  ignore: SKIP_REDIS,
  async fn() {
    const redis = await startRedis();
    const servers: ClusterProcess[] = [];
    const clients: Connection[] = [];
    try {
      servers.push(...await Promise.all([startClusterServer(redis), startClusterServer(redis)]));
      for (const server of [servers[0], servers[0], servers[1], servers[1]]) {
        clients.push(await connect(server.url));
      }
      const inboxes = clients.map((client) => new Inbox(client));
      const count = 20;
      await Promise.all(clients.map(async (client, index) => {
        for (const message of messagesOf(index, count)) await client.send(message);
      }));
      for (const inbox of inboxes) {
        const got = await inbox.take(clients.length * count, 10_000);
        // Per publisher: every message once, byte for byte, in the order sent.
        for (let index = 0; index < clients.length; index++) {
          assert.deepEqual(
            got.filter((message) => publisherOf(message) === index),
            messagesOf(index, count),
          );
        }
      }
      for (const inbox of inboxes) await inbox.nothingAfter(clients.length * count, 100);
      assert.deepEqual(servers.map((server) => server.output().includes("Error")), [false, false]);
    } finally {
      await Promise.all(clients.map((client) => client.close()));
      const codes = await Promise.all(servers.map((server) => server.stop()));
      await redis.stop();
      assert.deepEqual(codes, servers.map(() => 0));
    }
  },
});

Deno.test({
  name: "pubsub: two processes survive Redis going down and deliver across again once it is back",
  ignore: SKIP_REDIS,
  async fn() {
    let redis = await startRedis();
    const servers: ClusterProcess[] = [];
    const clients: Connection[] = [];
    try {
      servers.push(...await Promise.all([startClusterServer(redis), startClusterServer(redis)]));
      for (const server of [servers[0], servers[0], servers[1]]) {
        clients.push(await connect(server.url));
      }
      const [a1, a2, b1] = clients.map((client) => new Inbox(client));
      await clients[0].send("before");
      for (const inbox of [a1, a2, b1]) assert.deepEqual(await inbox.take(1), ["before"]);

      await redis.stop();
      await waitFor(
        () =>
          servers.every((server) =>
            /^BackplaneError: Redis .* connection failed/m.test(server.output())
          ),
        "both processes report the lost connection",
      );
      await clients[0].send("while down");
      // The local clients still get it; the other process can't (at most once).
      for (const inbox of [a1, a2]) assert.deepEqual(await inbox.take(2), ["before", "while down"]);
      await waitFor(
        () => /^BackplaneError: Cannot publish to channel "cluster"/m.test(servers[0].output()),
        "the failed publish reported",
      );
      await b1.nothingAfter(1, 100);
      assert.deepEqual(servers.map((server) => server.running()), [true, true]);

      redis = await startRedis(redis.port);
      // node-redis reconnects and resubscribes by itself: probe until a message crosses.
      const crossed = (inbox: Inbox, prefix: string) =>
        inbox.messages.some((message) => typeof message === "string" && message.startsWith(prefix));
      for (let probe = 0; !crossed(b1, "probe "); probe++) {
        assert.ok(probe < 300, "delivery from A to B didn't resume within 30 s");
        await clients[0].send(`probe ${probe}`);
        await delay(100);
      }
      for (let probe = 0; !crossed(a2, "reverse "); probe++) {
        assert.ok(probe < 300, "delivery from B to A didn't resume within 30 s");
        await clients[2].send(`reverse ${probe}`);
        await delay(100);
      }
    } finally {
      await Promise.all(clients.map((client) => client.close()));
      const codes = await Promise.all(servers.map((server) => server.stop()));
      await redis.stop();
      assert.deepEqual(codes, servers.map(() => 0));
    }
  },
});
