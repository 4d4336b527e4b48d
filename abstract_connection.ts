/**
 * {@linkcode Connection}, the one interface of a WebSocket connection
 * whichever side opened it, and what it is made of: options and their
 * defaults, sending (whole or fragmented messages), ping, keepalive and
 * close. Receiving is {@linkcode MessageQueue}'s. The implementations are
 * {@linkcode StreamConnection} (`stream_connection.ts`) and the adapter
 * over the platform `WebSocket` (`deploy.ts`).
 *
 * @module
 */

import { type BinaryData, isBytes, toBytes } from "./_bytes.ts";
import { describeType } from "./_describe.ts";
import { type Message, MessageQueue } from "./_message_queue.ts";
import type { SharedFrames } from "./_shared_frames.ts";
import { ConcurrencyError, ConnectionClosed, ConnectionClosedOK, InvalidState } from "./errors.ts";
import type { EncodeOptions, Extension } from "./extensions.ts";
import { type Close, CloseCode } from "./frames.ts";
import type { Request, Response } from "./http11.ts";
import { type Logger, State, stateName, type TrafficCounters } from "./protocol.ts";

const NO_PARAMS: Readonly<Record<string, string>> = Object.freeze({});

/**
 * A snapshot of a connection's statistics, from
 * {@linkcode Connection.prototype.stats}: the {@linkcode TrafficCounters}
 * (messages, payload bytes and wire bytes, both ways), the latest ping
 * latency and when the connection opened.
 *
 * @example
 * ```ts
 * import type { ConnectionStats } from "@denows/websockets";
 * const stats: ConnectionStats = {
 *   messagesReceived: 10, bytesReceived: 4000, wireBytesReceived: 1500,
 *   messagesSent: 10, bytesSent: 4000, wireBytesSent: 1200,
 *   latency: 0.4, openedAt: Date.now(),
 * };
 * console.log(`compression saved ${stats.bytesSent - stats.wireBytesSent} bytes`);
 * ```
 */
export interface ConnectionStats extends TrafficCounters {
  /** The last round-trip time measured by `ping()` or keepalive, in ms (0 before any). */
  latency: number;
  /** When the opening handshake completed, in ms since the epoch (`Date.now()`); 0 before. */
  openedAt: number;
}

/**
 * What {@linkcode Connection.prototype.send} accepts: a string (Text), bytes
 * (Binary: `Uint8Array`, `ArrayBuffer`, any `ArrayBufferView`), or an
 * iterable / async iterable of strings or of bytes, sent as one fragmented
 * message, one frame per item.
 *
 * @example
 * ```ts
 * import type { Sendable } from "@denows/websockets";
 * const fragments: Sendable = ["Hel", "lo"];
 * console.log(Array.isArray(fragments)); // true
 * ```
 */
export type Sendable =
  | string
  | BinaryData
  | Iterable<string | BinaryData>
  | AsyncIterable<string | BinaryData>;

/** Options of {@linkcode Connection.prototype.send}. */
export interface SendOptions {
  /**
   * `false` sends this message uncompressed even when compression was
   * negotiated.
   *
   * @default {true}
   */
  compress?: boolean;
}

/**
 * How a connection ended, the value of {@linkcode Connection.prototype.closed}.
 *
 * @example
 * ```ts
 * import type { CloseResult } from "@denows/websockets";
 * const result: CloseResult = { code: 1000, reason: "", wasClean: true };
 * console.log(result.code); // 1000
 * ```
 */
export interface CloseResult {
  /** The close code received, 1005 for an empty close frame, 1006 when none was received. */
  code: number;
  /** The close reason received. */
  reason: string;
  /** Whether the closing handshake completed (close frames exchanged). */
  wasClean: boolean;
  /** The close frame received, if any. */
  rcvd?: Close;
  /** The close frame sent, if any. */
  sent?: Close;
  /** The error that ended the connection, when it ended with one. */
  error?: Error;
}

/** Options shared by every connection: limits, timeouts, logging. */
export interface ConnectionOptions {
  /**
   * Keepalive: interval between pings, in ms, while the connection is open;
   * `null` disables keepalive. One timer checks every connection of the
   * process, so a ping goes out between `pingInterval` and 1.25 ×
   * `pingInterval` after the last pong.
   *
   * @default {20_000}
   */
  pingInterval?: number | null;
  /**
   * Time to wait for the pong of a keepalive ping, in ms; when it doesn't
   * come (within 1.25 × `pingTimeout`), the connection closes with 1011.
   * `null` waits forever.
   *
   * @default {20_000}
   */
  pingTimeout?: number | null;
  /**
   * Time for the closing handshake and the TCP close, in ms; then the socket
   * is closed (and `closed` reports 1006 when no close frame came back).
   * When the peer breaks the protocol, it is also the longest the close
   * frame waits for the application to read the messages that came before
   * the violation (it goes as soon as the application asks for the next).
   *
   * @default {10_000}
   */
  closeTimeout?: number;
  /**
   * Largest incoming message, after decompression, in bytes; a bigger one
   * closes the connection with 1009. `Infinity` disables the limit (a frame
   * announcing more than can be allocated still closes with 1009).
   *
   * @default {1_048_576} (1 MiB)
   */
  maxSize?: number;
  /**
   * Received messages buffered while the application doesn't read; past
   * this, reading from the socket pauses and TCP pushes back on the peer.
   *
   * @default {16}
   */
  maxQueue?: number;
  /**
   * High-water mark of the outgoing buffer, in bytes: `send()` waits while
   * more than this is buffered.
   *
   * @default {32_768} (32 KiB)
   */
  writeLimit?: number;
  /**
   * Where logs go: `{ debug, info, warn, error }`; `console` fits.
   *
   * @default {undefined} (no logging)
   */
  logger?: Logger;
}

/** The defaults of {@linkcode ConnectionOptions}, in one place. */
export const DEFAULTS: {
  readonly openTimeout: number;
  readonly pingInterval: number;
  readonly pingTimeout: number;
  readonly closeTimeout: number;
  readonly maxSize: number;
  readonly maxQueue: number;
  readonly writeLimit: number;
} = {
  openTimeout: 10_000,
  pingInterval: 20_000,
  pingTimeout: 20_000,
  closeTimeout: 10_000,
  maxSize: 1024 * 1024,
  maxQueue: 16,
  writeLimit: 32 * 1024,
};

/**
 * How this library names itself in `User-Agent` (client) and `Server`
 * (server) headers by default: the runtime and the library's version.
 *
 * @example
 * ```ts
 * import { PRODUCT } from "@denows/websockets";
 * console.log(PRODUCT.endsWith("@denows/websockets/0.1.0")); // true
 * ```
 */
export const PRODUCT: string = `Deno/${
  typeof Deno !== "undefined" ? Deno.version.deno : "unknown"
} @denows/websockets/0.1.0`;

// The resolved limits of a connection: one object for every connection built from the same
// options object (a server's connections share one), so that each connection holds a pointer
// rather than seven fields.
interface ConnectionSettings {
  readonly maxSize: number;
  readonly maxQueue: number;
  readonly writeLimit: number;
  readonly closeTimeout: number;
  readonly pingInterval: number | null;
  readonly pingTimeout: number | null;
  readonly logger: Logger | undefined;
}

const settingsCache = new WeakMap<ConnectionOptions, ConnectionSettings>();

// The settings `options` give, with defaults and `maxSize`: the ones made last time from the same
// options object when they are still what it says (it may have changed since), else new ones.
function settingsOf(options: ConnectionOptions, maxSize: number): ConnectionSettings {
  const maxQueue = options.maxQueue ?? DEFAULTS.maxQueue;
  const writeLimit = options.writeLimit ?? DEFAULTS.writeLimit;
  const closeTimeout = options.closeTimeout ?? DEFAULTS.closeTimeout;
  const pingInterval = options.pingInterval === undefined
    ? DEFAULTS.pingInterval
    : options.pingInterval;
  const pingTimeout = options.pingTimeout === undefined
    ? DEFAULTS.pingTimeout
    : options.pingTimeout;
  const logger = options.logger;
  const cached = settingsCache.get(options);
  if (
    cached !== undefined && cached.maxSize === maxSize && cached.maxQueue === maxQueue &&
    cached.writeLimit === writeLimit && cached.closeTimeout === closeTimeout &&
    cached.pingInterval === pingInterval && cached.pingTimeout === pingTimeout &&
    cached.logger === logger
  ) {
    return cached;
  }
  if (!(maxQueue >= 1)) throw new RangeError(`maxQueue must be at least 1, got ${maxQueue}`);
  if (!(maxSize >= 0)) throw new RangeError(`maxSize must be a positive number, got ${maxSize}`);
  const settings: ConnectionSettings = {
    maxSize,
    maxQueue,
    writeLimit,
    closeTimeout,
    pingInterval,
    pingTimeout,
    logger,
  };
  settingsCache.set(options, settings);
  return settings;
}

let nextId = 1;

/**
 * One WebSocket connection, client or server side: the interface that
 * `connect()`, `serve()`, `accept()` / `handler()` (Deno.serve / Deploy)
 * give you, and that `broadcast()` works on.
 *
 * - Receive with `recv()`, `for await (const message of connection)` (ends
 *   quietly on close 1000/1001, throws `ConnectionClosedError` otherwise) or
 *   the `readable` stream. Messages received before the close are always
 *   delivered.
 * - Send with `send()`: a string goes as Text, bytes as Binary, an iterable
 *   or async iterable as one fragmented message. `send()` resolves once the
 *   outgoing buffer is under `writeLimit`.
 * - `ping()` resolves to the round-trip time in ms; `close()` runs the
 *   closing handshake, bounded by `closeTimeout`; `closed` resolves with how
 *   the connection ended.
 *
 * @example
 * ```ts ignore
 * import { type Connection, serve } from "@denows/websockets";
 * async function echo(connection: Connection): Promise<void> {
 *   for await (const message of connection) await connection.send(message);
 * }
 * serve(echo, { port: 8765 });
 * ```
 */
export abstract class Connection extends MessageQueue implements AsyncDisposable {
  /** A number unique to this connection in this process, for logs. */
  readonly id: number = nextId++;
  /** The last round-trip time measured by `ping()` or keepalive, in ms (0 before any). */
  latency: number = 0;
  /**
   * The groups of the route pattern this connection matched, percent-decoded
   * (see `route()`): `connection.params.name` for `/rooms/:name`. Empty
   * when no router was involved.
   */
  readonly params: Readonly<Record<string, string>> = NO_PARAMS;
  #openedAt = 0;

  // The limits, shared by every connection built from the same options (see settingsOf()).
  readonly #settings: ConnectionSettings;

  /** Largest incoming message in bytes. */
  get maxSize(): number {
    return this.#settings.maxSize;
  }
  /** Received messages buffered before reading pauses. */
  get maxQueue(): number {
    return this.#settings.maxQueue;
  }
  /** High-water mark of the outgoing buffer that `send()` waits under. */
  get writeLimit(): number {
    return this.#settings.writeLimit;
  }
  /** Time allowed for the closing handshake, in ms (and for reading what came before a violation). */
  get closeTimeout(): number {
    return this.#settings.closeTimeout;
  }
  /** Interval between keepalive pings in ms, or `null`. */
  get pingInterval(): number | null {
    return this.#settings.pingInterval;
  }
  /** Time allowed for a keepalive pong in ms, or `null`. */
  get pingTimeout(): number | null {
    return this.#settings.pingTimeout;
  }
  /** Where frame traces and state changes go, if anywhere. */
  protected get logger(): Logger | undefined {
    return this.#settings.logger;
  }

  // Created on demand: an idle connection holds no ping map.
  #closedError: ConnectionClosed | undefined;
  // `closed` is made when someone asks for it: most connections end without anyone waiting.
  #closed: Promise<CloseResult> | undefined;
  #closedResolve: ((result: CloseResult) => void) | undefined;
  #closedResult: CloseResult | undefined;
  #sendLock: Promise<void> | undefined;
  #pings:
    | Map<string, { sentAt: number; resolve(ms: number): void; reject(error: unknown): void }>
    | undefined;
  // Keepalive: when the next ping is due, and when the one waiting for its pong was sent (0 when
  // none waits), in whole ms of performance.now(); and that ping's payload, as a number.
  #keepaliveDue = 0;
  #keepaliveSent = 0;
  #keepaliveKey = 0;

  /**
   * Sets the limits; see {@linkcode ConnectionOptions}. `maxSize` overrides
   * `options.maxSize` (a connection whose protocol has its own limit).
   */
  constructor(options: ConnectionOptions = {}, maxSize?: number) {
    super();
    this.#settings = settingsOf(options, maxSize ?? options.maxSize ?? DEFAULTS.maxSize);
  }

  /** Resolves with how the connection ended; never rejects. */
  get closed(): Promise<CloseResult> {
    if (this.#closed === undefined) {
      const result = this.#closedResult;
      this.#closed = result !== undefined
        ? Promise.resolve(result)
        : new Promise((resolve) => (this.#closedResolve = resolve));
    }
    return this.#closed;
  }

  // ---- State, implemented by each transport ----

  /** The connection state: CONNECTING (0), OPEN (1), CLOSING (2) or CLOSED (3). */
  abstract get state(): State;
  /** Bytes queued for sending and not yet handed to the network. */
  abstract get bufferedAmount(): number;
  /** The subprotocol negotiated during the handshake, if any. */
  abstract get subprotocol(): string | undefined;
  /** The extensions negotiated during the handshake. */
  abstract get extensions(): readonly Extension[];
  /** The handshake request (what the client sent). */
  abstract get request(): Request | undefined;
  /** The handshake response (what the server sent). */
  abstract get response(): Response | undefined;
  /** The local address, when the transport has one. */
  abstract get localAddr(): Deno.Addr | undefined;
  /** The remote address, when the transport has one. */
  abstract get remoteAddr(): Deno.Addr | undefined;

  /**
   * What this connection received and sent so far (plain numbers,
   * incremented in place as messages go: no object per message). Payload
   * bytes are the application's, wire bytes those on the socket, frame
   * headers, control frames and the handshake included.
   */
  protected abstract get counters(): TrafficCounters;

  /**
   * A snapshot of this connection's statistics: messages, payload bytes
   * and wire bytes both ways (`bytesSent - wireBytesSent` is what
   * compression saved), the latest ping latency, and when it opened. Each
   * read makes one small object; the counting itself allocates nothing.
   *
   * @example
   * ```ts ignore
   * const { messagesReceived, bytesReceived, wireBytesReceived } = ws.stats;
   * console.log(`${messagesReceived} messages, ${bytesReceived} bytes (${wireBytesReceived} on the wire)`);
   * ```
   */
  get stats(): ConnectionStats {
    const counters = this.counters;
    return {
      messagesReceived: counters.messagesReceived,
      bytesReceived: counters.bytesReceived,
      wireBytesReceived: counters.wireBytesReceived,
      messagesSent: counters.messagesSent,
      bytesSent: counters.bytesSent,
      wireBytesSent: counters.wireBytesSent,
      latency: this.latency,
      openedAt: this.#openedAt,
    };
  }

  /** Called by implementations when the opening handshake completed: `stats.openedAt`. */
  protected markOpen(): void {
    if (this.#openedAt === 0) this.#openedAt = Date.now();
  }

  /** The same as `state`, named like the browser's `WebSocket.readyState`. */
  get readyState(): State {
    return this.state;
  }

  /** Whether the connection is in the middle of sending a fragmented message. */
  abstract get sendingFragmented(): boolean;

  /** Queues one frame of a message; returns after queueing (no waiting). */
  protected abstract sendFrame(
    kind: "text" | "binary" | "continuation",
    data: string | Uint8Array,
    fin: boolean,
    options: EncodeOptions | undefined,
  ): void;
  /** Waits until the outgoing buffer is under `writeLimit`, or throws when the connection closes. */
  protected abstract drain(): Promise<void>;
  /** Sends a ping frame. */
  protected abstract sendPingFrame(data: Uint8Array): void;
  /** Sends a pong frame. */
  protected abstract sendPongFrame(data: Uint8Array): void;
  /** Starts the closing handshake and waits until the connection is closed (bounded by closeTimeout). */
  protected abstract closeTransport(code: number, reason: string): Promise<void>;
  /** Fails the connection with `code` (e.g. 1011 on keepalive timeout). */
  protected abstract failTransport(code: number, reason: string): void;
  /** The error to raise when the connection is closed. */
  protected abstract makeCloseError(): ConnectionClosed;

  /** Outgoing messages as a `WritableStream`: each chunk is `send()`; closing the stream closes the connection. */
  get writable(): WritableStream<Message> {
    return new WritableStream<Message>({
      write: (message) => this.send(message),
      close: () => this.close(),
      abort: () => this.close(CloseCode.GOING_AWAY),
    }, { highWaterMark: 1 });
  }

  /**
   * Called by implementations once the connection is closed: wakes every
   * waiter with the close error and resolves `closed`.
   */
  protected terminate(result: CloseResult): void {
    if (this.#closedResult !== undefined) return;
    this.#closedResult = result;
    this.stopKeepalive();
    this.endMessages();
    const pings = this.#pings;
    if (pings !== undefined) {
      this.#pings = undefined;
      for (const ping of pings.values()) ping.reject(this.closedError);
    }
    this.stopWaitingForQueueSpace();
    if (this.logger !== undefined) {
      this.logger.info(`connection ${this.id} closed: ${this.closedError!.message}`);
    }
    const resolve = this.#closedResolve;
    this.#closedResolve = undefined;
    resolve?.(result);
  }

  /**
   * Whether the connection is closed and its close error is
   * `ConnectionClosedOK` (a normal closure). Implementations may answer
   * without building the error.
   */
  protected get closedOK(): boolean {
    return this.closedError instanceof ConnectionClosedOK;
  }

  /** The error describing the close, once closed. */
  protected get closedError(): ConnectionClosed | undefined {
    if (this.#closedError === undefined && this.#closedResult !== undefined) {
      this.#closedError = this.makeCloseError();
    }
    return this.#closedError;
  }

  // ---- Sending ----

  /**
   * Sends a message: a string as Text, bytes (`Uint8Array`, `ArrayBuffer`,
   * any `ArrayBufferView`) as Binary, an iterable or async iterable (of
   * strings, or of bytes, not both) as one fragmented message.
   *
   * Resolves once the outgoing buffer is under `writeLimit`. Throws
   * `ConnectionClosed` when the connection is closing or closed, and
   * `TypeError` for an unsupported message type.
   */
  send(message: Sendable, options?: SendOptions): Promise<void> {
    // Fast path: a whole message while nothing else is being sent; no async frame.
    if (this.#sendLock === undefined && this.state === State.OPEN) {
      try {
        if (typeof message === "string") {
          this.sendFrame("text", message, true, options);
          return this.drain();
        }
        if (message instanceof Uint8Array) {
          this.sendFrame("binary", message, true, options);
          return this.drain();
        }
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return this.#sendSlow(message, options);
  }

  async #sendSlow(message: Sendable, options?: SendOptions): Promise<void> {
    while (this.#sendLock !== undefined) await this.#sendLock;
    this.checkOpen();
    if (typeof message === "string") {
      this.sendFrame("text", message, true, options);
    } else if (isBytes(message)) {
      this.sendFrame("binary", toBytes(message), true, options);
    } else if (
      message !== null && typeof message === "object" &&
      (Symbol.iterator in message || Symbol.asyncIterator in message)
    ) {
      await this.#sendFragments(message, options);
      return;
    } else {
      throw new TypeError(`Cannot send: unsupported message type ${describeType(message)}`);
    }
    await this.drain();
  }

  async #sendFragments(
    fragments: Iterable<string | BinaryData> | AsyncIterable<string | BinaryData>,
    options: SendOptions | undefined,
  ): Promise<void> {
    let release!: () => void;
    this.#sendLock = new Promise((resolve) => (release = resolve));
    try {
      const iterator = Symbol.asyncIterator in fragments
        ? (fragments as AsyncIterable<string | BinaryData>)[Symbol.asyncIterator]()
        : (fragments as Iterable<string | BinaryData>)[Symbol.iterator]();
      let kind: "text" | "binary" | undefined;
      let previous: string | Uint8Array | undefined;
      while (true) {
        const result = await iterator.next();
        if (result.done) break;
        const fragment = result.value;
        const fragmentKind = typeof fragment === "string"
          ? "text"
          : isBytes(fragment)
          ? "binary"
          : undefined;
        if (fragmentKind === undefined) {
          throw new TypeError(`Cannot send: unsupported fragment type ${describeType(fragment)}`);
        }
        if (kind === undefined) kind = fragmentKind;
        else if (kind !== fragmentKind) {
          throw new TypeError("Cannot send: all fragments must be of the same type");
        }
        const data = typeof fragment === "string" ? fragment : toBytes(fragment);
        // Each fragment is sent once the next one is known, so the last goes with fin.
        if (previous !== undefined) {
          this.checkOpen();
          this.sendFrame(this.sendingFragmented ? "continuation" : kind, previous, false, options);
          await this.drain();
        }
        previous = data;
      }
      if (kind === undefined) {
        // An empty iterable sends nothing, like Python websockets.
        return;
      }
      this.checkOpen();
      this.sendFrame(this.sendingFragmented ? "continuation" : kind, previous!, true, options);
    } catch (error) {
      // A fragmented message can't be left half-sent: fail the connection.
      if (this.sendingFragmented && this.state === State.OPEN) {
        this.failTransport(CloseCode.INTERNAL_ERROR, "error while sending a fragmented message");
      }
      throw error;
    } finally {
      this.#sendLock = undefined;
      release();
    }
    await this.drain();
  }

  /** Throws the close error unless the connection is OPEN. */
  protected checkOpen(): void {
    const state = this.state;
    if (state === State.OPEN) return;
    if (state === State.CONNECTING) {
      throw new InvalidState(`Cannot send: the connection is ${stateName(state)}`);
    }
    throw this.closedError ?? this.makeCloseError();
  }

  /**
   * Throws `ConcurrencyError` if a fragmented message is being sent: used
   * by `broadcast()`, which must not interleave a message into it.
   */
  protected checkNotFragmenting(): void {
    if (this.sendingFragmented || this.#sendLock !== undefined) {
      throw new ConcurrencyError(
        `Cannot broadcast: connection ${this.id} is sending a fragmented message`,
      );
    }
  }

  /**
   * Sends a ping and resolves to the round-trip time in ms when the
   * matching pong arrives (a pong also acknowledges earlier pings). `data`
   * defaults to 4 random bytes; at most 125 bytes.
   */
  async ping(data?: string | Uint8Array): Promise<number> {
    this.checkOpen();
    let payload: Uint8Array;
    if (data === undefined) {
      do {
        payload = crypto.getRandomValues(new Uint8Array(4));
      } while (this.#pings?.has(String(payload)));
    } else {
      payload = typeof data === "string" ? new TextEncoder().encode(data) : data.slice();
      if (this.#pings?.has(String(payload))) {
        throw new ConcurrencyError("Cannot ping: already waiting for a pong with the same data");
      }
    }
    if (payload.length > 125) {
      throw new RangeError(`Cannot ping: payload is ${payload.length} bytes, the limit is 125`);
    }
    const promise = new Promise<number>((resolve, reject) => {
      (this.#pings ??= new Map()).set(String(payload), {
        sentAt: performance.now(),
        resolve,
        reject,
      });
    });
    this.sendPingFrame(payload);
    // When drain() throws (the connection ended while the output was full), the pong's promise
    // is rejected too, and nobody would await it: mark it handled.
    promise.catch(() => {});
    await this.drain();
    return promise;
  }

  /** Sends an unsolicited pong (a unidirectional heartbeat). */
  async pong(data: string | Uint8Array = new Uint8Array(0)): Promise<void> {
    this.checkOpen();
    const payload = typeof data === "string" ? new TextEncoder().encode(data) : data;
    if (payload.length > 125) {
      throw new RangeError(`Cannot pong: payload is ${payload.length} bytes, the limit is 125`);
    }
    this.sendPongFrame(payload);
    await this.drain();
  }

  /**
   * Called by implementations when a pong arrives: resolves its ping and
   * every earlier one, and answers the keepalive ping.
   */
  protected acknowledgePings(data: Uint8Array): void {
    if (this.#keepaliveSent !== 0) this.#keepalivePong(data, performance.now());
    const pings = this.#pings;
    if (pings === undefined) return;
    const key = String(data);
    if (!pings.has(key)) return;
    const now = performance.now();
    for (const [pingKey, ping] of pings) {
      pings.delete(pingKey);
      const latency = now - ping.sentAt;
      if (pingKey === key) {
        this.latency = latency;
        ping.resolve(latency);
        break;
      }
      ping.resolve(latency);
    }
  }

  /**
   * Starts sending keepalive pings every `pingInterval`: a ping goes out
   * `pingInterval` after the last pong, and the connection fails with 1011
   * when its pong doesn't come within `pingTimeout`.
   */
  protected startKeepalive(): void {
    const interval = this.pingInterval;
    if (interval === null || !(interval > 0) || this.#closedResult !== undefined) return;
    this.#keepaliveDue = Math.ceil(performance.now() + interval);
    this.#keepaliveSent = 0;
    Connection.#keepalive.add(this);
    const timeout = this.pingTimeout;
    Connection.#sweepSoon(Math.min(interval, timeout !== null && timeout > 0 ? timeout : interval));
  }

  /** Stops keepalive pings. */
  protected stopKeepalive(): void {
    Connection.#keepalive.delete(this);
  }

  // Every connection with keepalive, checked by one timer for the whole process rather than a
  // timer (and a closure) each: a ping goes out between pingInterval and 1.25 × pingInterval
  // after the last pong, and a missing pong is noticed between pingTimeout and
  // 1.25 × pingTimeout after its ping (the sweep runs every quarter of the shortest of them).
  static #keepalive = new Set<Connection>();
  static #sweepTimer: ReturnType<typeof setTimeout> | undefined;
  static #sweepEvery = Infinity;

  static #sweepSoon(shortest: number): void {
    const every = Math.max(1, shortest / 4);
    if (every < Connection.#sweepEvery) {
      Connection.#sweepEvery = every;
      if (Connection.#sweepTimer !== undefined) clearTimeout(Connection.#sweepTimer);
      Connection.#sweepTimer = undefined;
    }
    if (Connection.#sweepTimer === undefined) {
      Connection.#sweepTimer = setTimeout(Connection.#sweep, Connection.#sweepEvery);
      // The connections' own I/O keeps the process running, not this timer.
      Deno.unrefTimer(Connection.#sweepTimer as unknown as number);
    }
  }

  static #sweep(): void {
    Connection.#sweepTimer = undefined;
    const now = performance.now();
    for (const connection of Connection.#keepalive) connection.#checkKeepalive(now);
    if (Connection.#keepalive.size === 0) {
      Connection.#sweepEvery = Infinity;
      return;
    }
    Connection.#sweepTimer = setTimeout(Connection.#sweep, Connection.#sweepEvery);
    Deno.unrefTimer(Connection.#sweepTimer as unknown as number);
  }

  #checkKeepalive(now: number): void {
    if (this.state !== State.OPEN || this.#closedResult !== undefined) {
      Connection.#keepalive.delete(this);
      return;
    }
    if (this.#keepaliveSent !== 0) {
      const timeout = this.pingTimeout;
      if (timeout !== null && now - this.#keepaliveSent >= timeout) {
        Connection.#keepalive.delete(this);
        this.logger?.warn(`connection ${this.id}: keepalive ping timeout`);
        this.failTransport(CloseCode.INTERNAL_ERROR, "keepalive ping timeout");
      }
      return;
    }
    if (now < this.#keepaliveDue) return;
    const payload = crypto.getRandomValues(new Uint8Array(4));
    this.#keepaliveKey = new DataView(payload.buffer).getUint32(0);
    this.#keepaliveSent = Math.max(1, Math.floor(now));
    try {
      this.sendPingFrame(payload);
    } catch {
      Connection.#keepalive.delete(this); // closing meanwhile
    }
  }

  // A pong came: it answers the keepalive ping (any pong shows the peer is alive; the one
  // carrying the ping's payload also gives the round-trip time).
  #keepalivePong(data: Uint8Array, now: number): void {
    const sent = this.#keepaliveSent;
    if (sent === 0) return;
    if (
      data.length === 4 &&
      new DataView(data.buffer, data.byteOffset, 4).getUint32(0) === this.#keepaliveKey
    ) {
      this.latency = now - sent;
    }
    this.#keepaliveSent = 0;
    this.#keepaliveDue = Math.ceil(now + (this.pingInterval ?? 0));
  }

  /**
   * Performs the closing handshake with `code` (default 1000) and `reason`
   * and resolves once the connection is closed, after at most
   * `closeTimeout` (then the transport is aborted). Idempotent: closing a
   * closing or closed connection waits for the same end.
   */
  async close(code: number = CloseCode.NORMAL_CLOSURE, reason: string = ""): Promise<void> {
    await this.closeTransport(code, reason);
  }

  /** Closes the connection with 1001 (going away) when used with `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close(CloseCode.GOING_AWAY);
  }

  /** Queues an already-encoded frame shared by a broadcast; see `broadcast()`. */
  abstract sendShared(frames: SharedFrames): boolean;
}

/**
 * Runs a connection handler the way `serve()` and Deploy's `handler()` do,
 * and never rejects: when `handler` returns, the connection is closed
 * (1000); when it throws while the connection is open, the error is logged
 * and the connection closed with 1011; when it throws after the close, the
 * error is logged unless it is the `ConnectionClosed` that told the handler
 * of the close.
 */
export function runHandler<C extends Connection>(
  connection: C,
  handler: (connection: C) => void | Promise<void>,
  logger: Pick<Logger, "error"> | undefined,
  done?: (connection: C) => void,
): Promise<void> {
  // Not an async function: while the handler waits, the connection keeps one promise reaction
  // rather than a suspended function of its own. `done` runs once the connection is closed.
  let returned: void | Promise<void>;
  try {
    returned = handler(connection);
  } catch (error) {
    return handlerFailed(connection, error, logger, done);
  }
  if (!(returned instanceof Promise)) return closeAfterHandler(connection, logger, done);
  return returned.then(
    () => closeAfterHandler(connection, logger, done),
    (error) => handlerFailed(connection, error, logger, done),
  );
}

async function closeAfterHandler<C extends Connection>(
  connection: C,
  logger: Pick<Logger, "error"> | undefined,
  done: ((connection: C) => void) | undefined,
): Promise<void> {
  try {
    await connection.close();
  } catch (error) {
    await handlerFailed(connection, error, logger, undefined);
  }
  done?.(connection);
}

async function handlerFailed<C extends Connection>(
  connection: C,
  error: unknown,
  logger: Pick<Logger, "error"> | undefined,
  done: ((connection: C) => void) | undefined,
): Promise<void> {
  await reportHandlerError(connection, error, logger);
  done?.(connection);
}

async function reportHandlerError(
  connection: Connection,
  error: unknown,
  logger: Pick<Logger, "error"> | undefined,
): Promise<void> {
  try {
    const state = connection.state;
    if (state === State.OPEN || state === State.CONNECTING) {
      logger?.error(`connection ${connection.id}: error in connection handler`, error);
      await connection.close(CloseCode.INTERNAL_ERROR, "internal error");
    } else if (!(error instanceof ConnectionClosed)) {
      logger?.error(`connection ${connection.id}: error in connection handler`, error);
    }
  } catch (closeError) {
    logger?.error("unexpected error in connection", closeError);
  }
}
