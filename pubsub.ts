/**
 * {@linkcode Room}: {@linkcode broadcast} across processes. Each process
 * keeps its own connections in a room; a message published in one process
 * goes at once to that process's members and, through a
 * {@linkcode Backplane} (Redis pub/sub with {@linkcode redisBackplane}, or
 * the built-in `BroadcastChannel` with
 * {@linkcode broadcastChannelBackplane}), to the members of the same room in
 * every other process.
 *
 * Delivery across processes is **at most once**, like Redis pub/sub: a
 * message published while the backplane is down, or while a process is
 * reconnecting to it, reaches that process's own members but not the
 * others. Messages from one publisher arrive in the order they were
 * published; messages from different publishers may interleave differently
 * in different processes.
 *
 * No `Deno.*` here: the module runs on Deno Deploy, in Node and in Bun, and
 * the Redis client is one you create and pass in (the module imports none).
 *
 * @example
 * ```ts ignore
 * import { createClient } from "npm:redis@4";
 * import { serve } from "@denows/websockets";
 * import { redisBackplane, Room } from "@denows/websockets/pubsub";
 *
 * const publisher = createClient({ url: "redis://127.0.0.1:6379", disableOfflineQueue: true });
 * const subscriber = createClient({ url: "redis://127.0.0.1:6379" });
 * publisher.on("error", () => {}); // reported by the room's onError once it is open
 * subscriber.on("error", () => {});
 * await Promise.all([publisher.connect(), subscriber.connect()]);
 *
 * const room = new Room("chat", { backplane: redisBackplane(publisher, subscriber) });
 * await room.open();
 * serve(async (ws) => {
 *   room.add(ws);
 *   for await (const message of ws) room.publish(message);
 * }, { hostname: "127.0.0.1", port: 8765 });
 * ```
 *
 * @module
 */

import { broadcast, type SlowConnectionPolicy } from "./broadcast.ts";
import { type BinaryData, isBytes, toBytes } from "./_bytes.ts";
import { describeError, describeType } from "./_describe.ts";
import type { Connection } from "./abstract_connection.ts";
import { ConcurrencyError, InvalidState, WebSocketError } from "./errors.ts";

// ---------------------------------------------------------------- errors

/**
 * A failure of the backplane: a publish that didn't go out, a subscription
 * that couldn't be made or undone, the Redis connection lost. A room reports
 * these to its `onError` and carries on; the original error is the
 * `cause`.
 *
 * @example
 * ```ts
 * import { BackplaneError } from "@denows/websockets/pubsub";
 * import { WebSocketError } from "@denows/websockets/errors";
 * const error = new BackplaneError("Cannot publish to channel \"chat\": offline");
 * console.log(error instanceof WebSocketError, error.name); // true BackplaneError
 * ```
 */
export class BackplaneError extends WebSocketError {}

/**
 * Raised (and reported to a room's `onError`) for data on a room's channel
 * that isn't one of the room's envelopes: another program publishing on the
 * channel, a truncated envelope, an unknown version or kind, Text that isn't
 * UTF-8. The data is dropped.
 *
 * @example
 * ```ts
 * import { BackplaneError, InvalidEnvelope } from "@denows/websockets/pubsub";
 * const error = new InvalidEnvelope("Invalid envelope on channel \"chat\": 3 bytes");
 * console.log(error instanceof BackplaneError); // true
 * ```
 */
export class InvalidEnvelope extends BackplaneError {}

// ---------------------------------------------------------------- backplane

/**
 * What a {@linkcode Room} needs to reach the other processes: publish bytes
 * on a channel, and subscribe to a channel. Messages must arrive as they
 * were published (same bytes), at most once, in publishing order for each
 * publisher. Whether a subscriber receives what it published itself doesn't
 * matter: a room recognizes and drops its own messages.
 *
 * @example A backplane that only reaches the rooms of this process
 * ```ts
 * import type { Backplane } from "@denows/websockets/pubsub";
 *
 * function inProcessBackplane(): Backplane {
 *   const channels = new Map<string, Set<(data: Uint8Array) => void>>();
 *   return {
 *     publish(channel, data) {
 *       for (const listener of channels.get(channel) ?? []) listener(data.slice());
 *       return Promise.resolve();
 *     },
 *     subscribe(channel, onMessage) {
 *       const listeners = channels.get(channel) ?? new Set();
 *       channels.set(channel, listeners.add(onMessage));
 *       return Promise.resolve(() => {
 *         listeners.delete(onMessage);
 *         return Promise.resolve();
 *       });
 *     },
 *   };
 * }
 * console.log(typeof inProcessBackplane().publish); // function
 * ```
 */
export interface Backplane {
  /**
   * Publishes `data` on `channel`. Resolves once the backplane took it;
   * rejects when it couldn't (the room reports a {@linkcode BackplaneError}).
   * `data` isn't used after the returned promise settles.
   */
  publish(channel: string, data: Uint8Array): Promise<void>;
  /**
   * Starts delivering what is published on `channel` to `onMessage`, and
   * resolves once subscribed, to a function that ends the subscription.
   * `onError`, when given, receives failures of the transport while the
   * subscription lasts (e.g. a lost connection).
   */
  subscribe(
    channel: string,
    onMessage: (data: Uint8Array) => void,
    onError?: (error: Error) => void,
  ): Promise<() => Promise<void>>;
  /** Releases what the backplane itself opened (not the clients passed to it). */
  close?(): Promise<void>;
}

// ---------------------------------------------------------------- envelope

/**
 * Envelope of a message on the backplane, 18 bytes before the payload:
 *
 * | offset | size | content |
 * | --- | --- | --- |
 * | 0 | 1 | 0xB1: magic (high nibble 0xB) and version (low nibble 1) |
 * | 1 | 1 | kind: 1 Text (payload is UTF-8), 2 Binary |
 * | 2 | 16 | origin: random id of the publishing room instance |
 * | 18 | rest | the message, byte for byte |
 *
 * 0xB1 is a UTF-8 continuation byte, so no text another program publishes
 * can be mistaken for an envelope.
 */
const ENVELOPE_MAGIC = 0xb1;
const KIND_TEXT = 1;
const KIND_BINARY = 2;
const ORIGIN_LENGTH = 16;
const HEADER_LENGTH = 2 + ORIGIN_LENGTH;

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

function encodeEnvelope(origin: Uint8Array, message: string | BinaryData): Uint8Array {
  let kind: number;
  let payload: Uint8Array;
  if (typeof message === "string") {
    kind = KIND_TEXT;
    payload = textEncoder.encode(message);
  } else {
    kind = KIND_BINARY;
    payload = toBytes(message);
  }
  const envelope = new Uint8Array(HEADER_LENGTH + payload.length);
  envelope[0] = ENVELOPE_MAGIC;
  envelope[1] = kind;
  envelope.set(origin, 2);
  envelope.set(payload, HEADER_LENGTH);
  return envelope;
}

function sameOrigin(data: Uint8Array, origin: Uint8Array): boolean {
  for (let i = 0; i < ORIGIN_LENGTH; i++) {
    if (data[2 + i] !== origin[i]) return false;
  }
  return true;
}

/** The message in `data`, or `undefined` when this room published it. */
function openEnvelope(
  data: Uint8Array,
  origin: Uint8Array,
  channel: string,
): string | Uint8Array | undefined {
  const invalid = (what: string) =>
    new InvalidEnvelope(`Invalid envelope on channel "${channel}": ${what}; dropped`);
  if (data.length < HEADER_LENGTH) {
    throw invalid(`${data.length} bytes, shorter than the ${HEADER_LENGTH}-byte header`);
  }
  if (data[0] !== ENVELOPE_MAGIC) {
    throw invalid(
      `first byte 0x${hex(data[0])}, expected 0x${hex(ENVELOPE_MAGIC)} (magic and version 1)`,
    );
  }
  const kind = data[1];
  if (kind !== KIND_TEXT && kind !== KIND_BINARY) {
    throw invalid(`kind ${kind}, expected ${KIND_TEXT} (Text) or ${KIND_BINARY} (Binary)`);
  }
  if (sameOrigin(data, origin)) return undefined;
  const payload = data.subarray(HEADER_LENGTH);
  if (kind === KIND_BINARY) return payload;
  try {
    return textDecoder.decode(payload);
  } catch {
    throw invalid(`Text payload of ${payload.length} bytes isn't valid UTF-8`);
  }
}

function hex(byte: number): string {
  return byte.toString(16).padStart(2, "0");
}

function toBackplaneError(error: unknown, context: string): BackplaneError {
  if (error instanceof BackplaneError) return error;
  return new BackplaneError(`${context}: ${describeError(error)}`, { cause: error });
}

// ---------------------------------------------------------------- room

/**
 * Options of {@linkcode Room}.
 *
 * @example
 * ```ts
 * import type { RoomOptions } from "@denows/websockets/pubsub";
 * const options: RoomOptions = {
 *   maxBufferedAmount: 1024 * 1024,
 *   onError: (error) => console.error(error.name, error.message),
 * };
 * console.log(options.maxBufferedAmount); // 1048576
 * ```
 */
export interface RoomOptions {
  /**
   * How messages reach the other processes.
   *
   * @default {undefined} (the room is local to this process)
   */
  backplane?: Backplane;
  /**
   * The backplane channel.
   *
   * @default {undefined} (the room's name)
   */
  channel?: string;
  /**
   * Receives what goes wrong in the background, which the room survives:
   * {@linkcode BackplaneError} (publish or subscription failures, the
   * backplane's connection lost), {@linkcode InvalidEnvelope} (foreign data on
   * the channel, dropped), and a `ConcurrencyError` when a message from another
   * process can't go to members in the middle of a fragmented send.
   *
   * @default {console.error}
   */
  onError?: (error: Error) => void;
  /**
   * Passed to {@linkcode broadcast} for every delivery to the local members.
   *
   * @default {Infinity} (no limit)
   */
  maxBufferedAmount?: number;
  /**
   * Passed to {@linkcode broadcast} with `maxBufferedAmount`.
   *
   * @default {"close"}
   */
  onSlow?: SlowConnectionPolicy;
}

function reportToConsole(error: Error): void {
  console.error(error);
}

const RESOLVED: Promise<void> = Promise.resolve();

function noop(): void {}

/**
 * A set of connections in this process that share messages with the rooms
 * of the same channel in other processes.
 *
 * - `add()` a connection (either implementation: `serve()` / `connect()`,
 *   or `accept()` / `handler()` on Deno.serve); it leaves by itself when it
 *   closes, or with `delete()`.
 * - `publish()` sends a message to every local member at once, through
 *   {@linkcode broadcast} (encoded once, no waiting, slow members handled as
 *   `maxBufferedAmount` / `onSlow` say), and to the backplane. Messages from
 *   other processes go to the local members the same way. A room never
 *   delivers its own message twice: each message carries the id of the
 *   room instance that published it.
 * - `await open()` subscribes to the backplane; until then the room only
 *   publishes. `await close()` unsubscribes.
 * - Text stays Text and Binary stays Binary, byte for byte. Delivery across
 *   processes is at most once, in publishing order for each publisher.
 * - Backplane failures never reject `publish()` or `close()` and never
 *   stop local delivery: they go to `onError`. Once the backplane is back
 *   (node-redis reconnects and resubscribes by itself), messages flow again.
 *
 * @example
 * ```ts ignore
 * import { serve } from "@denows/websockets";
 * import { broadcastChannelBackplane, Room } from "@denows/websockets/pubsub";
 *
 * // Deno Deploy: isolates of one deployment share BroadcastChannel.
 * const room = new Room("chat", { backplane: broadcastChannelBackplane() });
 * await room.open();
 * serve(async (ws) => {
 *   room.add(ws);
 *   for await (const message of ws) room.publish(message);
 * });
 * ```
 *
 * @example A local room
 * ```ts
 * import { Room } from "@denows/websockets/pubsub";
 * const room = new Room("lobby");
 * await room.open(); // nothing to subscribe to without a backplane
 * await room.publish("no one here yet");
 * console.log(room.size); // 0
 * await room.close();
 * ```
 */
export class Room implements AsyncDisposable {
  /** The room's name. */
  readonly name: string;
  /** The backplane channel the room publishes and listens on. */
  readonly channel: string;

  #members = new Set<Connection>();
  /** Connections whose `closed` already has our handler, to attach it once. */
  #watched = new WeakSet<Connection>();
  #backplane: Backplane | undefined;
  #onError: (error: Error) => void;
  #broadcastOptions: { maxBufferedAmount?: number; onSlow?: SlowConnectionPolicy };
  #origin: Uint8Array = crypto.getRandomValues(new Uint8Array(ORIGIN_LENGTH));
  #opening: Promise<void> | undefined;
  #unsubscribe: (() => Promise<void>) | undefined;
  #closing: Promise<void> | undefined;

  /**
   * Creates the room; it is local until {@linkcode Room.prototype.open}
   * subscribes to the backplane.
   *
   * @param name The room's name, and its channel unless `options.channel` is given.
   * @param options Backplane, error handler and slow member policy.
   * @throws {TypeError} when `name` or `channel` isn't a non-empty string,
   * `onSlow` is unknown, or `backplane` / `onError` have the wrong shape.
   * @throws {RangeError} when `maxBufferedAmount` is negative or not a number.
   */
  constructor(name: string, options: RoomOptions = {}) {
    if (typeof name !== "string" || name === "") {
      throw new TypeError(`Cannot create room: name must be a non-empty string, got ${show(name)}`);
    }
    const channel = options.channel ?? name;
    if (typeof channel !== "string" || channel === "") {
      throw new TypeError(
        `Cannot create room "${name}": channel must be a non-empty string, got ${show(channel)}`,
      );
    }
    const { backplane, onError, maxBufferedAmount, onSlow } = options;
    if (
      backplane !== undefined &&
      (typeof backplane?.publish !== "function" || typeof backplane?.subscribe !== "function")
    ) {
      throw new TypeError(
        `Cannot create room "${name}": backplane must have publish() and subscribe() methods`,
      );
    }
    if (onError !== undefined && typeof onError !== "function") {
      throw new TypeError(`Cannot create room "${name}": onError must be a function`);
    }
    if (
      maxBufferedAmount !== undefined &&
      (typeof maxBufferedAmount !== "number" || !(maxBufferedAmount >= 0))
    ) {
      throw new RangeError(
        `Cannot create room "${name}": maxBufferedAmount must be a number of bytes >= 0, ` +
          `got ${show(maxBufferedAmount)}`,
      );
    }
    if (onSlow !== undefined && onSlow !== "close" && onSlow !== "skip") {
      throw new TypeError(
        `Cannot create room "${name}": onSlow must be "close" or "skip", got ${show(onSlow)}`,
      );
    }
    this.name = name;
    this.channel = channel;
    this.#backplane = backplane;
    this.#onError = onError ?? reportToConsole;
    this.#broadcastOptions = { maxBufferedAmount, onSlow };
  }

  /** The number of local members. */
  get size(): number {
    return this.#members.size;
  }

  /** The local members (a live set). */
  get connections(): ReadonlySet<Connection> {
    return this.#members;
  }

  /** Whether `connection` is a local member. */
  has(connection: Connection): boolean {
    return this.#members.has(connection);
  }

  /**
   * Adds `connection` to the local members. It leaves by itself once it is
   * closed (when its `closed` promise resolves). Adding a member twice does
   * nothing.
   *
   * @throws {InvalidState} when the room is closed.
   */
  add(connection: Connection): void {
    if (this.#closing !== undefined) {
      throw new InvalidState(`Cannot add a connection to room "${this.name}": the room is closed`);
    }
    this.#members.add(connection);
    if (!this.#watched.has(connection)) {
      this.#watched.add(connection);
      connection.closed.then(() => this.#members.delete(connection));
    }
  }

  /** Removes `connection` from the local members; returns whether it was one. */
  delete(connection: Connection): boolean {
    return this.#members.delete(connection);
  }

  /**
   * Subscribes to the backplane, so that messages published in other
   * processes reach the local members. Resolves once subscribed (at once
   * without a backplane). Calling it again returns the same promise; after
   * a failure, it tries again.
   *
   * @throws {BackplaneError} (rejects) when the backplane refused the
   * subscription; the cause is the backplane's error.
   * @throws {InvalidState} (rejects) when the room is closed.
   */
  open(): Promise<void> {
    if (this.#closing !== undefined) {
      return Promise.reject(
        new InvalidState(`Cannot open room "${this.name}": the room is closed`),
      );
    }
    this.#opening ??= this.#subscribe();
    return this.#opening;
  }

  async #subscribe(): Promise<void> {
    const backplane = this.#backplane;
    if (backplane === undefined) return;
    try {
      this.#unsubscribe = await backplane.subscribe(
        this.channel,
        (data) => this.#receive(data),
        (error) => this.#report(toBackplaneError(error, `Backplane of room "${this.name}" failed`)),
      );
    } catch (error) {
      this.#opening = undefined;
      throw toBackplaneError(error, `Cannot subscribe to channel "${this.channel}"`);
    }
  }

  /** A message from the backplane: to every local member, unless we sent it. */
  #receive(data: Uint8Array): void {
    if (this.#closing !== undefined) return;
    let message: string | Uint8Array | undefined;
    try {
      message = openEnvelope(data, this.#origin, this.channel);
    } catch (error) {
      this.#report(error as Error);
      return;
    }
    if (message === undefined) return;
    try {
      broadcast(this.#members, message, this.#broadcastOptions);
    } catch (error) {
      this.#report(error as Error);
    }
  }

  /**
   * Sends `message` to every local member at once and publishes it to the
   * other processes: a string as Text, bytes as Binary. The local delivery
   * is {@linkcode broadcast}'s, done before `publish()` returns; the
   * returned promise resolves once the backplane took the message, or
   * failed to (reported to `onError`): it never rejects.
   *
   * @param message A string (Text) or bytes (Binary); the room copies it,
   * so the buffer may be reused at once.
   * @returns A promise that resolves once the message is handed to the
   * backplane (or its failure reported).
   * @throws {TypeError} when `message` is neither a string nor bytes;
   * nothing is sent.
   * @throws {ConcurrencyError} when local members are in the middle of a
   * fragmented send: they are skipped, every other member and the backplane
   * still get the message, as with {@linkcode broadcast}.
   * @throws {InvalidState} when the room is closed.
   */
  publish(message: string | BinaryData): Promise<void> {
    if (this.#closing !== undefined) {
      throw new InvalidState(`Cannot publish to room "${this.name}": the room is closed`);
    }
    let busy: ConcurrencyError | undefined;
    try {
      broadcast(this.#members, message, this.#broadcastOptions);
    } catch (error) {
      // broadcast() checks the message before sending anything: a
      // TypeError means nothing was sent, locally or to the backplane.
      if (!(error instanceof ConcurrencyError)) throw error;
      busy = error;
    }
    const published = this.#backplane === undefined
      ? RESOLVED
      : this.#forward(this.#backplane, encodeEnvelope(this.#origin, message));
    if (busy !== undefined) throw busy;
    return published;
  }

  #forward(backplane: Backplane, envelope: Uint8Array): Promise<void> {
    let published: Promise<void>;
    try {
      published = backplane.publish(this.channel, envelope);
    } catch (error) {
      published = Promise.reject(error);
    }
    return Promise.resolve(published).then(noop, (error) => {
      this.#report(toBackplaneError(error, `Cannot publish to channel "${this.channel}"`));
    });
  }

  #report(error: Error): void {
    try {
      this.#onError(error);
    } catch (thrown) {
      // The room keeps going whatever the handler does.
      console.error(`onError of room "${this.name}" threw`, thrown);
    }
  }

  /**
   * Unsubscribes from the backplane and empties the room (its members stay
   * open: close them yourself). Resolves once unsubscribed; a failure to
   * unsubscribe goes to `onError`, so it never rejects. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#members.clear();
    if (this.#opening !== undefined) {
      try {
        await this.#opening;
      } catch {
        return; // never subscribed
      }
    }
    const unsubscribe = this.#unsubscribe;
    this.#unsubscribe = undefined;
    if (unsubscribe === undefined) return;
    try {
      await unsubscribe();
    } catch (error) {
      this.#report(toBackplaneError(error, `Cannot unsubscribe from channel "${this.channel}"`));
    }
  }

  /** Closes the room when used with `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

function show(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

// ---------------------------------------------------------------- Redis

/**
 * What {@linkcode redisBackplane} calls on the publishing client: a
 * connected client of npm `redis` (node-redis v4 or v5) fits.
 *
 * @example
 * ```ts ignore
 * import { createClient } from "npm:redis@4";
 * import type { RedisPublisher } from "@denows/websockets/pubsub";
 * const publisher: RedisPublisher = createClient({ disableOfflineQueue: true });
 * ```
 */
export interface RedisPublisher {
  /**
   * `PUBLISH channel message`. `message` is a Node `Buffer`; it is typed
   * `never` so that any client's signature fits without this module
   * depending on Node's types.
   */
  publish(channel: string, message: never): Promise<unknown>;
  /** Adds an event listener (`"error"`, `"ready"`); used when present. */
  on?(event: string, listener: (error: Error) => void): unknown;
  /** Removes an event listener; used when present. */
  off?(event: string, listener: (error: Error) => void): unknown;
}

/**
 * What {@linkcode redisBackplane} calls on the subscribing client (a
 * connected client of npm `redis` in subscriber mode: it can't publish, so
 * it must be another client than the publisher).
 *
 * @example
 * ```ts ignore
 * import { createClient } from "npm:redis@4";
 * import type { RedisSubscriber } from "@denows/websockets/pubsub";
 * const subscriber: RedisSubscriber = createClient();
 * ```
 */
export interface RedisSubscriber {
  /** `SUBSCRIBE channel`, calling `listener` with each message as a `Buffer` (`bufferMode`). */
  subscribe(
    channel: string,
    listener: (message: Uint8Array, channel: Uint8Array) => void,
    bufferMode: true,
  ): Promise<unknown>;
  /** Removes `listener`; `UNSUBSCRIBE` once the channel has no listener left. */
  unsubscribe(
    channel: string,
    listener: (message: Uint8Array, channel: Uint8Array) => void,
    bufferMode: true,
  ): Promise<unknown>;
  /** Adds an event listener (`"error"`, `"ready"`); used when present. */
  on?(event: string, listener: (error: Error) => void): unknown;
  /** Removes an event listener; used when present. */
  off?(event: string, listener: (error: Error) => void): unknown;
  /**
   * Whether the client is connected and ready; when `false`, unsubscribing
   * doesn't wait for Redis to be back.
   */
  readonly isReady?: boolean;
}

interface BufferConstructorLike {
  from(buffer: ArrayBufferLike, byteOffset: number, length: number): Uint8Array;
}

/**
 * node-redis sends only strings and `Buffer`s. Wherever node-redis runs
 * (Node, Bun, Deno), `Buffer` is a global, so no `node:buffer` import is
 * needed here (which would keep this module from loading in browsers).
 */
function toNodeBuffer(data: Uint8Array): Uint8Array {
  const NodeBuffer = (globalThis as { Buffer?: BufferConstructorLike }).Buffer;
  if (NodeBuffer === undefined || data.constructor !== Uint8Array) return data;
  return NodeBuffer.from(data.buffer, data.byteOffset, data.byteLength); // a view, no copy
}

/**
 * Reports the first `error` event of `client` after each `ready` (the
 * client keeps emitting one per reconnection attempt while Redis is down);
 * returns a function that removes the listeners.
 */
function watchClient(
  client: RedisPublisher | RedisSubscriber,
  role: string,
  onError: (error: Error) => void,
): () => void {
  if (typeof client.on !== "function") return noop;
  let down = false;
  const onClientError = (error: Error) => {
    if (down) return;
    down = true;
    onError(
      new BackplaneError(`Redis ${role} connection failed: ${describeError(error)}`, {
        cause: error,
      }),
    );
  };
  const onReady = () => (down = false);
  client.on("error", onClientError);
  client.on("ready", onReady);
  return () => {
    client.off?.("error", onClientError);
    client.off?.("ready", onReady);
  };
}

/**
 * A {@linkcode Backplane} over Redis pub/sub, with two connected clients of
 * npm `redis` (node-redis v4 or v5) that you create, connect and close:
 * `publisher` publishes (`PUBLISH`), `subscriber` listens (`SUBSCRIBE`,
 * in buffer mode). Binary-safe both ways: envelopes go out and come back as
 * `Buffer`s.
 *
 * - **At most once.** Redis pub/sub keeps nothing: a process that is
 *   disconnected when a message is published never gets it.
 * - **Reconnection.** node-redis reconnects by itself and resubscribes
 *   the subscriber's channels when it does; messages flow again without
 *   anything to do here. While rooms are subscribed, the first `error`
 *   event of each client after it was ready goes to their `onError` as a
 *   {@linkcode BackplaneError}. The backplane adds one `error` and one
 *   `ready` listener per client however many rooms share it, and these
 *   also keep an `error` event from crashing the process.
 * - **Offline publishing.** Create the publisher with
 *   `disableOfflineQueue: true`: a publish while Redis is down then fails
 *   at once (reported to `onError`) instead of queueing in memory until
 *   Redis is back.
 *
 * @param publisher A connected client used for `PUBLISH` only.
 * @param subscriber Another connected client, used for `SUBSCRIBE`.
 * @returns The backplane, for {@linkcode RoomOptions.backplane}; any
 * number of rooms may share it.
 * @throws {TypeError} when a client lacks a method used, or both are the
 * same client (a subscribed client can't publish).
 *
 * @example
 * ```ts ignore
 * import { createClient } from "npm:redis@4";
 * import { redisBackplane, Room } from "@denows/websockets/pubsub";
 *
 * const publisher = createClient({ url: "redis://127.0.0.1:6379", disableOfflineQueue: true });
 * const subscriber = publisher.duplicate({ disableOfflineQueue: false });
 * publisher.on("error", () => {});
 * subscriber.on("error", () => {});
 * await Promise.all([publisher.connect(), subscriber.connect()]);
 * const room = new Room("chat", {
 *   backplane: redisBackplane(publisher, subscriber),
 *   onError: (error) => console.error(`${error.name}: ${error.message}`),
 * });
 * await room.open();
 * ```
 */
export function redisBackplane(publisher: RedisPublisher, subscriber: RedisSubscriber): Backplane {
  if (typeof publisher?.publish !== "function") {
    throw new TypeError("Cannot use Redis: the publisher has no publish() method");
  }
  if (typeof subscriber?.subscribe !== "function" || typeof subscriber.unsubscribe !== "function") {
    throw new TypeError(
      "Cannot use Redis: the subscriber has no subscribe() and unsubscribe() methods",
    );
  }
  if ((publisher as unknown) === subscriber) {
    throw new TypeError(
      "Cannot use Redis: publisher and subscriber must be two clients " +
        "(a subscribed client can't publish); create the subscriber with publisher.duplicate()",
    );
  }
  // One pair of event listeners per client, however many rooms subscribe
  // (no listener pile-up on the clients), fanned out to the rooms' onError.
  const errorHandlers = new Set<{ report: (error: Error) => void }>();
  let stopWatching: (() => void) | undefined;
  const reportAll = (error: Error) => {
    for (const handler of errorHandlers) handler.report(error);
  };
  function watch(report: (error: Error) => void): () => void {
    const handler = { report };
    errorHandlers.add(handler);
    if (stopWatching === undefined) {
      const stops = [
        watchClient(publisher, "publisher", reportAll),
        watchClient(subscriber, "subscriber", reportAll),
      ];
      stopWatching = () => stops.forEach((stop) => stop());
    }
    return () => {
      if (!errorHandlers.delete(handler) || errorHandlers.size !== 0) return;
      stopWatching?.();
      stopWatching = undefined;
    };
  }

  return {
    async publish(channel: string, data: Uint8Array): Promise<void> {
      await publisher.publish(channel, toNodeBuffer(data) as never);
    },
    async subscribe(
      channel: string,
      onMessage: (data: Uint8Array) => void,
      onError?: (error: Error) => void,
    ): Promise<() => Promise<void>> {
      let subscribed = true;
      const listener = (message: Uint8Array) => {
        if (subscribed) onMessage(message);
      };
      const unwatch = onError === undefined ? noop : watch(onError);
      try {
        await subscriber.subscribe(channel, listener, true);
      } catch (error) {
        subscribed = false;
        unwatch();
        throw error;
      }
      return async () => {
        if (!subscribed) return;
        subscribed = false;
        unwatch();
        const unsubscribed = Promise.resolve(subscriber.unsubscribe(channel, listener, true));
        if (subscriber.isReady === false) {
          // Redis is unreachable: the client sends UNSUBSCRIBE once it is back
          // (or gives up when it is closed); don't wait for that.
          unsubscribed.catch(noop);
          return;
        }
        await unsubscribed;
      };
    },
  };
}

// ---------------------------------------------------------------- BroadcastChannel

/**
 * A {@linkcode Backplane} over the built-in `BroadcastChannel`: between the
 * isolates of a Deno Deploy deployment, or between the Workers of one
 * process (Deno, browsers). Nothing to install or connect. Delivery is at
 * most once and in order for each publisher, as `BroadcastChannel`
 * guarantees.
 *
 * Data of another type than bytes posted on the channel by another program
 * is reported as {@linkcode InvalidEnvelope}; a message that can't be
 * deserialized (`messageerror`) as {@linkcode BackplaneError}.
 * `close()` closes the channels the backplane opened for publishing;
 * subscriptions close when their room closes.
 *
 * @returns The backplane, for {@linkcode RoomOptions.backplane}.
 *
 * @example
 * ```ts
 * import { broadcastChannelBackplane, Room } from "@denows/websockets/pubsub";
 * const backplane = broadcastChannelBackplane();
 * const room = new Room("chat", { backplane });
 * await room.open();
 * await room.publish("hello, other isolates");
 * await room.close();
 * await backplane.close?.();
 * ```
 */
export function broadcastChannelBackplane(): Backplane {
  const senders = new Map<string, BroadcastChannel>();
  let closed = false;
  return {
    publish(channel: string, data: Uint8Array): Promise<void> {
      if (closed) {
        return Promise.reject(
          new BackplaneError(`Cannot publish to channel "${channel}": the backplane is closed`),
        );
      }
      let sender = senders.get(channel);
      if (sender === undefined) {
        sender = new BroadcastChannel(channel);
        senders.set(channel, sender);
      }
      // Structured clone copies the whole buffer behind a view: post exactly the bytes.
      sender.postMessage(data.byteLength === data.buffer.byteLength ? data : data.slice());
      return RESOLVED;
    },
    subscribe(
      channel: string,
      onMessage: (data: Uint8Array) => void,
      onError?: (error: Error) => void,
    ): Promise<() => Promise<void>> {
      if (closed) {
        return Promise.reject(
          new BackplaneError(`Cannot subscribe to channel "${channel}": the backplane is closed`),
        );
      }
      const receiver = new BroadcastChannel(channel);
      receiver.onmessage = (event: MessageEvent) => {
        const data: unknown = event.data;
        if (data instanceof Uint8Array) onMessage(data);
        else if (isBytes(data)) onMessage(toBytes(data));
        else {
          onError?.(
            new InvalidEnvelope(
              `Invalid envelope on channel "${channel}": ${describeType(data)}, expected bytes; ` +
                "dropped",
            ),
          );
        }
      };
      receiver.onmessageerror = () => {
        onError?.(
          new BackplaneError(`Cannot deserialize a message on channel "${channel}"; dropped`),
        );
      };
      let subscribed = true;
      return Promise.resolve(() => {
        if (subscribed) {
          subscribed = false;
          receiver.close();
        }
        return RESOLVED;
      });
    },
    close(): Promise<void> {
      closed = true;
      for (const sender of senders.values()) sender.close();
      senders.clear();
      return RESOLVED;
    },
  };
}
