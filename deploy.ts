/**
 * WebSocket servers on `Deno.serve` and Deno Deploy, where there are no raw
 * sockets: {@linkcode accept} checks an upgrade request with the same
 * handshake rules as `serve()` and upgrades it with `Deno.upgradeWebSocket`;
 * {@linkcode handler} turns a connection handler into a `Deno.serve` /
 * `export default { fetch }` handler. Both give a
 * {@linkcode PlatformConnection}: the {@linkcode Connection} interface of
 * the rest of the library over the runtime's `WebSocket`, so your handler
 * code and `broadcast()` work on either.
 *
 * What differs from `serve()` comes from the runtime's `WebSocket`:
 *
 * - keepalive is the runtime's: `pingInterval` becomes `idleTimeout`
 *   (seconds) and `ping()` / `pong()` aren't available;
 * - no compression (the runtime doesn't negotiate permessage-deflate);
 * - a message is checked against `maxSize` once the runtime assembled it,
 *   and `recvStreaming()` gives it as one part;
 * - the runtime can't pause reading: beyond `maxQueue` unread messages the
 *   connection is closed with 1013 (try again later);
 * - `send()` waits under `writeLimit` by polling `bufferedAmount`.
 *
 * @example
 * ```ts ignore
 * import { handler } from "@denows/websockets/deploy";
 *
 * Deno.serve(handler(async (ws) => {
 *   for await (const message of ws) await ws.send(message);
 * }));
 * ```
 *
 * @module
 */

import { concat, utf8Length } from "./_bytes.ts";
import { closeError, truncateReason } from "./_close.ts";
import { zeroCounters } from "./_counters.ts";
import type { SharedFrames } from "./_shared_frames.ts";
import {
  Connection,
  type ConnectionOptions,
  DEFAULTS,
  runHandler,
  type Sendable,
  type SendOptions,
} from "./abstract_connection.ts";
import {
  ConnectionClosed,
  InvalidHandshake,
  InvalidMessage,
  InvalidState,
  PayloadTooBig,
  WebSocketError,
} from "./errors.ts";
import type { EncodeOptions, Extension } from "./extensions.ts";
import { Close, CloseCode, frameHeaderLength } from "./frames.ts";
import { Headers } from "./headers.ts";
import { Request, Response } from "./http11.ts";
import { isRouter, type RouteMatch, routeRequest } from "./router.ts";
import {
  type Logger,
  ServerProtocol,
  type ServerProtocolOptions,
  State,
  type TrafficCounters,
} from "./protocol.ts";

/**
 * Options of {@linkcode accept}: the handshake rules and the limits that
 * apply over the runtime's `WebSocket`. They are the options of `serve()`
 * and `connect()` of the same names, with the same defaults; over the
 * runtime's `WebSocket` some act differently:
 *
 * - `maxSize` is checked once the runtime assembled the message (UTF-8
 *   bytes for Text): a bigger one is dropped and the connection closed with
 *   1009.
 * - `maxQueue`: the runtime can't pause reading, so a message arriving
 *   while `maxQueue` messages wait is dropped and the connection closed
 *   with 1013 (try again later).
 * - `writeLimit`: `send()` polls the socket's `bufferedAmount` every 1 to
 *   16 ms until it is at most `writeLimit`.
 * - `pingInterval`: keepalive is run by the runtime: after `pingInterval`
 *   without receiving anything it sends a ping, and it closes the
 *   connection (1001) if nothing arrives in the next `pingInterval`
 *   (`Deno.upgradeWebSocket`'s `idleTimeout` is `2 × pingInterval / 1000`
 *   seconds). `null` or `0` disables it.
 * - `closeTimeout`: after it, `close()` reports the connection closed
 *   (1006) without the peer's close frame.
 * - `logger`: without one, `handler()` still logs handler errors to
 *   `console`.
 *
 * Options of `serve()` that can't apply here are left out of this type and
 * rejected with `TypeError` at run time if they are passed anyway:
 * `pingTimeout` (the runtime closes a connection that stays silent for
 * `pingInterval` after its ping), `compression` / `extensions` (the runtime
 * doesn't negotiate extensions; `compression: null` and `extensions: []`
 * are accepted), `openTimeout`, `httpLimits`, `serverHeader`,
 * `processResponse`, `maxConnections` (the runtime parses and answers the
 * HTTP request), `processRequest` (use {@linkcode handler}'s, or answer
 * before calling `accept()`), and the listening options `hostname`, `port`,
 * `unix`, `tls`, `signal` (`Deno.serve` listens).
 *
 * @example
 * ```ts
 * import type { AcceptOptions } from "@denows/websockets/deploy";
 * const options: AcceptOptions = {
 *   origins: ["https://chat.example.com"],
 *   subprotocols: ["chat.v1"],
 *   maxSize: 64 * 1024,
 *   pingInterval: 30_000,
 * };
 * console.log(options.maxSize); // 65536
 * ```
 */
export interface AcceptOptions extends
  Pick<
    ConnectionOptions,
    "maxSize" | "maxQueue" | "writeLimit" | "pingInterval" | "closeTimeout" | "logger"
  >,
  Pick<ServerProtocolOptions, "origins" | "subprotocols" | "selectSubprotocol"> {
  /**
   * The peer's address, e.g. `info.remoteAddr` of the `Deno.serve` handler;
   * becomes the connection's `remoteAddr`. `handler()` passes it on for you.
   *
   * @default {undefined}
   */
  remoteAddr?: Deno.Addr;
}

/**
 * A plain HTTP route next to the WebSocket endpoint: return a response to
 * answer the request (a page, a health check, a 401), or `undefined` to go
 * on with the WebSocket handshake.
 *
 * @example
 * ```ts
 * import type { PlatformProcessRequest } from "@denows/websockets/deploy";
 * const routes: PlatformProcessRequest = (request) =>
 *   new URL(request.url).pathname === "/healthz" ? new Response("OK\n") : undefined;
 * console.log((routes(new Request("http://localhost/healthz")) as Response).status); // 200
 * ```
 */
export type PlatformProcessRequest = (
  request: globalThis.Request,
  info?: Deno.ServeHandlerInfo,
) => globalThis.Response | undefined | Promise<globalThis.Response | undefined>;

/**
 * Options of {@linkcode handler}: those of {@linkcode accept} (but
 * `remoteAddr`, taken from `Deno.serve`), plus `processRequest`.
 *
 * @example
 * ```ts
 * import type { HandlerOptions } from "@denows/websockets/deploy";
 * const options: HandlerOptions = {
 *   processRequest: (request) =>
 *     new URL(request.url).pathname === "/" ? new Response("hello\n") : undefined,
 * };
 * console.log(typeof options.processRequest); // function
 * ```
 */
export interface HandlerOptions extends Omit<AcceptOptions, "remoteAddr"> {
  /**
   * Called for every request before the WebSocket handshake; its response, if
   * any, is sent instead. Without it (or when it returns `undefined`), a request
   * that isn't a WebSocket upgrade is answered 426, like `serve()`.
   *
   * @default {undefined}
   */
  processRequest?: PlatformProcessRequest;
}

/**
 * What {@linkcode accept} returns: the response to give `Deno.serve`, always,
 * and the connection when the request was upgraded, or the error that
 * rejected the handshake.
 *
 * @example
 * ```ts ignore
 * import { accept } from "@denows/websockets/deploy";
 * Deno.serve((request) => {
 *   const result = accept(request);
 *   if (result.connection === undefined) console.warn(result.error.message);
 *   else result.connection.send("hello");
 *   return result.response;
 * });
 * ```
 */
export type AcceptResult =
  | {
    /** The 101 response: return it from the `Deno.serve` handler. */
    response: globalThis.Response;
    /** The connection; it opens once the response is sent. */
    connection: PlatformConnection;
    /** No error. */
    error?: undefined;
  }
  | {
    /** The rejection (400, 403, 426 or 500, with a plain-text body): return it. */
    response: globalThis.Response;
    /** No connection: the request was not upgraded. */
    connection: undefined;
    /** Why the handshake was rejected (`InvalidHandshake` and subclasses, or the error a hook threw). */
    error: Error;
  };

/**
 * How {@linkcode PlatformConnection} is made: the runtime's `WebSocket`, what
 * the handshake decided, and the limits of {@linkcode AcceptOptions}. Built
 * by {@linkcode accept}.
 */
export interface PlatformConnectionOptions extends
  Pick<
    ConnectionOptions,
    "maxSize" | "maxQueue" | "writeLimit" | "pingInterval" | "closeTimeout" | "logger"
  > {
  /**
   * The handshake request, in this library's form.
   *
   * @default {undefined}
   */
  request?: Request;
  /**
   * The handshake response, in this library's form.
   *
   * @default {undefined}
   */
  response?: Response;
  /**
   * The subprotocol chosen during the handshake, if any.
   *
   * @default {undefined}
   */
  subprotocol?: string;
  /**
   * The peer's address.
   *
   * @default {undefined}
   */
  remoteAddr?: Deno.Addr;
}

// Polling delays of `send()` waiting for `bufferedAmount` to go down: the
// runtime has no event for it.
const FIRST_POLL_DELAY = 1;
const MAX_POLL_DELAY = 16;

const NO_EXTENSIONS: readonly Extension[] = Object.freeze([]);

// The reason the runtime gives when its keepalive ping went unanswered.
const IDLE_TIMEOUT_REASON = "No response from ping frame.";

// The text of a broadcast Text message, decoded once for every
// PlatformConnection it goes to.
const sharedText = new WeakMap<SharedFrames, string>();
const textDecoder = new TextDecoder();

/**
 * A {@linkcode Connection} over the runtime's `WebSocket` (from
 * `Deno.upgradeWebSocket`), made by {@linkcode accept} and
 * {@linkcode handler}. Same API as the connections of `serve()` —
 * `recv()`, async iteration, `readable` / `writable`, `send()`, `close()`,
 * `closed`, `broadcast()` — with these differences:
 *
 * - **Opening**: the connection is CONNECTING until the runtime sent the 101
 *   response; `handshake` resolves then. `recv()` and `send()` may be called
 *   before: `send()` waits for the connection to open.
 * - **Fragmented sends**: `send()` of an iterable or async iterable collects
 *   the fragments in memory and sends them as one message, since the
 *   runtime can't send fragments. While it collects, `sendingFragmented` is
 *   `true` and `broadcast()` throws `ConcurrencyError` for this connection,
 *   as for the other connections.
 * - **Backpressure**: `send()` resolves once the socket's `bufferedAmount`
 *   is at most `writeLimit`, checked every 1 ms, then 2, 4, 8 and every
 *   16 ms (the runtime has no event for it).
 * - **Receiving part by part**: the runtime delivers whole messages, so
 *   `recvStreaming()` gives each message as one part, checked against the
 *   `maxSize` of that call; memory is the whole message's.
 * - **Limits**: a message over `maxSize` bytes (UTF-8 for Text) is dropped
 *   and the connection closed with 1009; a message arriving while
 *   `maxQueue` messages wait unread is dropped and the connection closed
 *   with 1013 (the runtime can't pause reading). Messages already queued
 *   are still delivered.
 * - **Keepalive** is the runtime's (`idleTimeout`): `ping()` and `pong()`
 *   reject with `InvalidState`, and `latency` stays 0. When the runtime's
 *   ping goes unanswered it closes the connection with 1001; `closed`
 *   then reports the close frame sent and no close frame received.
 * - **Closing**: `close()` waits for the peer's close frame at most
 *   `closeTimeout`; then the connection is reported closed (1006) while the
 *   runtime releases the socket when the peer goes away (the `WebSocket`
 *   API can't abort a socket).
 * - `localAddr` is `undefined`; `extensions` is always empty.
 *
 * @example
 * ```ts ignore
 * import { accept } from "@denows/websockets/deploy";
 * Deno.serve((request) => {
 *   const { response, connection } = accept(request, { maxSize: 64 * 1024 });
 *   connection?.send("welcome");
 *   return response;
 * });
 * ```
 */
export class PlatformConnection extends Connection {
  /** The runtime's `WebSocket`, for what this class doesn't cover; leave `binaryType` alone. */
  readonly socket: WebSocket;
  /** Resolves when the connection is open, rejects with a `ConnectionClosed` error if it closed first. */
  readonly handshake: Promise<void>;
  readonly #request: Request | undefined;
  readonly #response: Response | undefined;
  readonly #remoteAddr: Deno.Addr | undefined;
  readonly #subprotocol: string | undefined;
  #handshakeResolve!: () => void;
  #handshakeReject!: (error: unknown) => void;
  #sent: Close | undefined;
  #rcvd: Close | undefined;
  #rcvdThenSent: boolean | undefined;
  #failure: Error | undefined;
  #failed = false;
  #idleTimedOut = false;
  #terminated = false;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  // The message being collected by a fragmented send().
  #fragments: { text: boolean; parts: (string | Uint8Array)[] } | undefined;
  #drainWaiters: { resolve(): void; reject(error: unknown): void }[] = [];
  #pollTimer: ReturnType<typeof setTimeout> | undefined;
  #pollDelay = FIRST_POLL_DELAY;
  readonly #counters: TrafficCounters = zeroCounters();

  /**
   * Wraps `socket`, a server-side `WebSocket` from `Deno.upgradeWebSocket`
   * that hasn't opened yet; {@linkcode accept} does it for you.
   */
  constructor(socket: WebSocket, options: PlatformConnectionOptions = {}) {
    const pingInterval = options.pingInterval === undefined
      ? DEFAULTS.pingInterval
      : options.pingInterval;
    super({
      maxSize: options.maxSize,
      maxQueue: options.maxQueue,
      writeLimit: options.writeLimit,
      closeTimeout: options.closeTimeout,
      pingInterval,
      // The runtime gives a ping as long as the interval to be answered.
      pingTimeout: pingInterval,
      logger: options.logger,
    });
    this.socket = socket;
    this.#request = options.request;
    this.#response = options.response;
    this.#remoteAddr = options.remoteAddr;
    this.#subprotocol = options.subprotocol;
    this.handshake = new Promise((resolve, reject) => {
      this.#handshakeResolve = resolve;
      this.#handshakeReject = reject;
    });
    this.handshake.catch(() => {});
    socket.binaryType = "arraybuffer";
    socket.addEventListener("open", () => this.#onOpen());
    socket.addEventListener("message", (event) => this.#onMessage(event));
    socket.addEventListener("error", (event) => this.#onError(event));
    socket.addEventListener("close", (event) => this.#onClose(event));
    if (socket.readyState === State.OPEN) this.#onOpen();
  }

  /** The connection state: the socket's, or CLOSED once `closed` resolved. */
  get state(): State {
    return this.#terminated ? State.CLOSED : (this.socket.readyState as State);
  }
  /** The socket's `bufferedAmount`: bytes passed to the runtime and not yet written. */
  get bufferedAmount(): number {
    return this.socket.bufferedAmount;
  }
  /** The subprotocol negotiated during the handshake, if any. */
  get subprotocol(): string | undefined {
    return this.#subprotocol;
  }
  /** Always empty: the runtime doesn't negotiate extensions. */
  get extensions(): readonly Extension[] {
    return NO_EXTENSIONS;
  }
  /** The handshake request: the path with the query, and the headers. */
  get request(): Request | undefined {
    return this.#request;
  }
  /** The handshake response the runtime sends (101 and its headers). */
  get response(): Response | undefined {
    return this.#response;
  }
  /** Always `undefined`: `Deno.serve` doesn't tell a handler its local address. */
  get localAddr(): Deno.Addr | undefined {
    return undefined;
  }
  /** The peer's address, when `accept()` was given it (`handler()` does). */
  get remoteAddr(): Deno.Addr | undefined {
    return this.#remoteAddr;
  }
  /** Whether `send()` is collecting the fragments of an iterable. */
  get sendingFragmented(): boolean {
    return this.#fragments !== undefined;
  }

  /**
   * Sends a message like {@linkcode Connection.prototype.send}; waits for
   * the connection to open first. An iterable or async iterable is
   * collected and sent as one message.
   */
  override async send(message: Sendable, options?: SendOptions): Promise<void> {
    if (this.state === State.CONNECTING) {
      try {
        await this.handshake;
      } catch {
        // Closed before opening: super.send() throws the close error.
      }
    }
    await super.send(message, options);
  }

  /** Not available: the runtime's `WebSocket` can't send pings. Rejects with `InvalidState`. */
  override ping(_data?: string | Uint8Array): Promise<number> {
    return Promise.reject(
      new InvalidState(
        "Cannot ping: ping() is not available on the Deno.serve path; " +
          "keepalive uses the runtime's idleTimeout (pingInterval)",
      ),
    );
  }

  /** Not available: the runtime's `WebSocket` can't send pongs. Rejects with `InvalidState`. */
  override pong(_data?: string | Uint8Array): Promise<void> {
    return Promise.reject(
      new InvalidState(
        "Cannot pong: pong() is not available on the Deno.serve path; " +
          "the runtime answers pings itself",
      ),
    );
  }

  /**
   * Sends a broadcast message with `socket.send()`: the text decoded once
   * for every connection of this kind, or the bytes. Returns `false` when
   * not OPEN; throws `ConcurrencyError` while a fragmented send collects.
   */
  sendShared(frames: SharedFrames): boolean {
    if (this.state !== State.OPEN) return false;
    this.checkNotFragmenting();
    if (frames.text) {
      let text = sharedText.get(frames);
      if (text === undefined) {
        text = textDecoder.decode(frames.data);
        sharedText.set(frames, text);
      }
      this.socket.send(text);
    } else {
      this.socket.send(frames.data);
    }
    this.#countSent(frames.data.length);
    return true;
  }

  /** Sends a whole message, or collects one fragment until the last. */
  protected sendFrame(
    kind: "text" | "binary" | "continuation",
    data: string | Uint8Array,
    fin: boolean,
    _options: EncodeOptions | undefined,
  ): void {
    if (kind !== "continuation") {
      if (fin) {
        this.#sendMessage(data);
        return;
      }
      this.#fragments = { text: kind === "text", parts: [data] };
      return;
    }
    const fragments = this.#fragments;
    if (fragments === undefined) {
      throw new InvalidState("Cannot send a continuation: no fragmented message in progress");
    }
    fragments.parts.push(data);
    if (!fin) return;
    this.#fragments = undefined;
    this.#sendMessage(
      fragments.text
        ? (fragments.parts as string[]).join("")
        : concat(fragments.parts as Uint8Array[]),
    );
  }

  // Sends a whole message and counts it.
  #sendMessage(data: string | Uint8Array): void {
    this.socket.send(data);
    this.#countSent(typeof data === "string" ? utf8Length(data) : data.length);
  }

  // Counts a message of `bytes` bytes sent, as one unmasked frame.
  #countSent(bytes: number): void {
    const counters = this.#counters;
    counters.messagesSent++;
    counters.bytesSent += bytes;
    counters.wireBytesSent += frameHeaderLength(bytes, false) + bytes;
  }

  /**
   * What this connection received and sent: the runtime's `WebSocket` hides
   * the frames, so every message counts as one frame (wire bytes = payload
   * and one frame header), and Text is measured in UTF-8 by a scan of each
   * string.
   */
  protected get counters(): TrafficCounters {
    return this.#counters;
  }

  /** Not reachable: `ping()` is not available. */
  protected sendPingFrame(_data: Uint8Array): void {
    throw new InvalidState("Cannot ping: ping() is not available on the Deno.serve path");
  }

  /** Not reachable: `pong()` is not available. */
  protected sendPongFrame(_data: Uint8Array): void {
    throw new InvalidState("Cannot pong: pong() is not available on the Deno.serve path");
  }

  /** Resolves once `bufferedAmount` is at most `writeLimit`, polling it; rejects once closed. */
  protected drain(): Promise<void> {
    if (this.#terminated) return Promise.reject(this.closedError ?? this.makeCloseError());
    if (this.socket.bufferedAmount <= this.writeLimit) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#drainWaiters.push({ resolve, reject });
      if (this.#pollTimer === undefined) {
        this.#pollDelay = FIRST_POLL_DELAY;
        this.#pollTimer = setTimeout(this.#poll, this.#pollDelay);
      }
    });
  }

  #poll = (): void => {
    this.#pollTimer = undefined;
    if (this.#terminated) return;
    if (this.socket.bufferedAmount <= this.writeLimit) {
      for (const waiter of this.#drainWaiters.splice(0)) waiter.resolve();
      return;
    }
    this.#pollDelay = Math.min(this.#pollDelay * 2, MAX_POLL_DELAY);
    this.#pollTimer = setTimeout(this.#poll, this.#pollDelay);
  };

  /** The `ConnectionClosed` error matching the close frames exchanged so far. */
  protected makeCloseError(): ConnectionClosed {
    return closeError(this.#rcvd, this.#sent, this.#rcvdThenSent, this.#failure);
  }

  /** Sends a close frame (once) and waits until the connection is closed, at most `closeTimeout`. */
  protected async closeTransport(code: number, reason: string): Promise<void> {
    if (this.state === State.CONNECTING) {
      try {
        await this.handshake;
      } catch {
        // Closed before opening.
      }
    }
    if (this.state === State.OPEN) {
      const close = new Close(code, reason);
      close.check();
      // Nothing of a message being collected was sent: drop it, close normally.
      this.#fragments = undefined;
      this.#closeSocket(close);
    }
    await this.closed;
  }

  /** Closes with `code` (e.g. 1009) without waiting, bounded by `closeTimeout`. */
  protected failTransport(code: number, reason: string): void {
    this.#failed = true;
    if (this.state !== State.OPEN) return;
    this.#fragments = undefined;
    this.#closeSocket(new Close(code, truncateReason(reason)));
  }

  #closeSocket(close: Close): void {
    this.#sent = close;
    this.logger?.debug(`connection ${this.id}: > CLOSE ${close}`);
    this.socket.close(close.code, close.reason);
    this.#closeTimer ??= setTimeout(() => {
      this.#closeTimer = undefined;
      this.logger?.debug(`connection ${this.id}: close timeout after ${this.closeTimeout} ms`);
      this.#finish(undefined, false);
    }, this.closeTimeout);
  }

  #onOpen(): void {
    this.markOpen();
    this.logger?.info(`connection ${this.id} open`);
    this.#handshakeResolve();
  }

  #onMessage(event: MessageEvent): void {
    if (this.#failed || this.#terminated) return;
    const data = event.data;
    let message: string | Uint8Array;
    // A message recvStreaming() waits for has the limit of that call.
    const maxSize = this.streamingMaxSize ?? this.maxSize;
    let bytes: number;
    if (typeof data === "string") {
      message = data;
      bytes = utf8Length(data);
    } else if (data instanceof ArrayBuffer) {
      message = new Uint8Array(data);
      bytes = message.length;
    } else {
      this.logger?.warn(`connection ${this.id}: unexpected message data, was binaryType changed?`);
      return;
    }
    // Counted as if the message came in one frame (the runtime doesn't say how it came).
    const counters = this.#counters;
    counters.wireBytesReceived += frameHeaderLength(bytes, true) + bytes;
    if (bytes > maxSize) {
      const error = new PayloadTooBig(bytes, maxSize);
      this.logger?.info(`connection ${this.id}: ${error.message}`);
      this.#failure = error;
      this.failTransport(CloseCode.MESSAGE_TOO_BIG, error.message);
      return;
    }
    if (this.messagesQueued >= this.maxQueue) {
      const error = new WebSocketError(
        `receive queue full: ${this.messagesQueued} messages unread, the limit is ` +
          `${this.maxQueue} (maxQueue)`,
      );
      this.logger?.warn(`connection ${this.id}: ${error.message}`);
      this.#failure = error;
      this.failTransport(CloseCode.TRY_AGAIN_LATER, error.message);
      return;
    }
    counters.messagesReceived++;
    counters.bytesReceived += bytes;
    this.deliver(message);
  }

  #onError(event: Event): void {
    const message = (event as ErrorEvent).message;
    this.logger?.debug(`connection ${this.id}: socket error: ${message}`);
    if (message === IDLE_TIMEOUT_REASON) this.#idleTimedOut = true;
  }

  #onClose(event: CloseEvent): void {
    // The runtime may dispatch more than one close event: the first counts.
    if (this.#terminated) return;
    const code = event.code;
    // No close frame received: an abrupt end (code 0 or 1006), or the
    // runtime's keepalive giving up (the close frame it sent).
    const received = event.wasClean && code !== 0 && code !== CloseCode.ABNORMAL_CLOSURE;
    if (this.#idleTimedOut && this.#sent === undefined) {
      this.#sent = new Close(code, event.reason);
    }
    if (received) {
      this.#rcvd = new Close(code, event.reason);
      if (this.#sent === undefined) {
        // The runtime answers a close frame with the same code and reason.
        this.#sent = new Close(code, event.reason);
        this.#rcvdThenSent = true;
      } else {
        this.#rcvdThenSent = false;
      }
    }
    this.#finish(undefined, received);
  }

  #finish(error: Error | undefined, clean: boolean): void {
    if (this.#terminated) return;
    this.#terminated = true;
    this.#fragments = undefined;
    if (this.#closeTimer !== undefined) clearTimeout(this.#closeTimer);
    this.#closeTimer = undefined;
    if (this.#pollTimer !== undefined) clearTimeout(this.#pollTimer);
    this.#pollTimer = undefined;
    const rcvd = this.#rcvd, sent = this.#sent;
    this.terminate({
      code: rcvd?.code ?? CloseCode.ABNORMAL_CLOSURE,
      reason: rcvd?.reason ?? "",
      wasClean: clean && rcvd !== undefined && sent !== undefined,
      rcvd,
      sent,
      error: error ?? this.#failure,
    });
    const closeError = this.closedError ?? this.makeCloseError();
    for (const waiter of this.#drainWaiters.splice(0)) waiter.reject(closeError);
    this.#handshakeReject(closeError);
  }
}

// Options of serve() / connect() that can't apply on this path, and why.
const UNSUPPORTED: Record<string, string> = {
  pingTimeout: "the runtime closes a connection that stays silent for pingInterval after its ping",
  compression: "the runtime doesn't negotiate permessage-deflate (only null is accepted)",
  extensions: "the runtime doesn't negotiate extensions (only [] is accepted)",
  openTimeout: "the runtime answers the HTTP request",
  httpLimits: "the runtime parses the HTTP request",
  serverHeader: "the runtime writes the 101 response",
  processResponse: "the runtime writes the 101 response",
  maxConnections: "count connections in your handler",
  hostname: "Deno.serve listens",
  port: "Deno.serve listens",
  unix: "Deno.serve listens",
  tls: "Deno.serve listens",
  signal: "Deno.serve listens",
};

function checkOptions(
  options: Record<string, unknown>,
  caller: string,
  extra: Record<string, string>,
): void {
  for (const [name, value] of Object.entries(options)) {
    if (value === undefined) continue;
    if (name === "compression" && value === null) continue;
    if (name === "extensions" && Array.isArray(value) && value.length === 0) continue;
    const why = UNSUPPORTED[name] ?? extra[name];
    if (why !== undefined) {
      throw new TypeError(
        `${caller}: option ${name} is not available on the Deno.serve path: ${why}`,
      );
    }
  }
  const pingInterval = options.pingInterval;
  if (pingInterval !== undefined && pingInterval !== null && !(Number(pingInterval) >= 0)) {
    throw new RangeError(
      `${caller}: pingInterval must be a number of ms >= 0 or null, got ${pingInterval}`,
    );
  }
  for (const [name, min] of LIMITS) {
    const value = options[name];
    if (value !== undefined && !(Number(value) >= min)) {
      throw new RangeError(`${caller}: ${name} must be a number >= ${min}, got ${value}`);
    }
  }
}

// Lowest value of each limit.
const LIMITS: [string, number][] = [
  ["maxSize", 0],
  ["maxQueue", 1],
  ["writeLimit", 0],
  ["closeTimeout", 0],
];

/** Our `Request` from a WHATWG request: the path with the query, and the headers. */
function toRequest(request: globalThis.Request): Request {
  const url = new URL(request.url);
  return new Request(url.pathname + url.search, new Headers(request.headers));
}

// Hop-by-hop and computed headers that the runtime writes itself.
const RUNTIME_HEADERS = new Set(["connection", "content-length", "date"]);

/** A WHATWG response from our `Response`, for `Deno.serve`. */
function toWebResponse(response: Response): globalThis.Response {
  const headers = new globalThis.Headers();
  for (const [name, value] of response.headers.rawItems()) {
    if (!RUNTIME_HEADERS.has(name.toLowerCase())) headers.append(name, value);
  }
  const body = response.body === undefined ? null : response.body.slice().buffer;
  return new globalThis.Response(body, {
    status: response.statusCode,
    statusText: response.reasonPhrase,
    headers,
  });
}

/** Our `Response` from the runtime's 101 response. */
function fromWebResponse(response: globalThis.Response): Response {
  return new Response(
    response.status,
    response.statusText || "Switching Protocols",
    new Headers(response.headers),
  );
}

function reject(
  protocol: ServerProtocol,
  status: number,
  error: Error,
  logger: Logger | undefined,
): AcceptResult {
  const response = protocol.reject(
    status,
    `Failed to open a WebSocket connection: ${error.message}.\n`,
  );
  response.exception = error;
  logger?.info(`handshake answered ${status}: ${error.message}`);
  return { response: toWebResponse(response), connection: undefined, error };
}

/**
 * Checks a WebSocket upgrade request with the same rules as `serve()` and,
 * if it passes, upgrades it with `Deno.upgradeWebSocket`. Call it in a
 * `Deno.serve` handler and return `response` in every case.
 *
 * A bad request is answered, never upgraded: 400 (malformed, e.g. a bad
 * `Sec-WebSocket-Key`, a method other than GET, or no acceptable
 * subprotocol), 403 (origin not in `origins`), 426 (not an upgrade, with
 * `Upgrade: websocket`; or a version other than 13, with
 * `Sec-WebSocket-Version: 13`), 500 (a `selectSubprotocol` that throws
 * something other than a handshake error), with the same plain-text bodies
 * as `serve()`. Then `connection` is `undefined` and `error` says why.
 *
 * On success, `connection` is CONNECTING until the runtime sent the
 * response; `send()` waits for it, `connection.handshake` resolves then.
 *
 * @param request The request `Deno.serve` gave your handler.
 * @param options Handshake rules and limits; see {@linkcode AcceptOptions}.
 * @returns The response to return, and the connection or the error.
 * Only a request that `Deno.serve` gave a handler can be upgraded: the
 * connection of any other request never opens.
 *
 * @throws {TypeError} for an option that can't apply on this path (see
 * {@linkcode AcceptOptions}).
 * @throws {RangeError} for `maxQueue` below 1, or a negative (or NaN)
 * `pingInterval`, `maxSize`, `writeLimit` or `closeTimeout`.
 *
 * @example
 * ```ts ignore
 * import { accept } from "@denows/websockets/deploy";
 *
 * Deno.serve((request) => {
 *   const { response, connection } = accept(request, { subprotocols: ["chat.v1"] });
 *   if (connection !== undefined) {
 *     (async () => {
 *       for await (const message of connection) await connection.send(message);
 *     })().catch(() => {});
 *   }
 *   return response;
 * });
 * ```
 */
export function accept(request: globalThis.Request, options: AcceptOptions = {}): AcceptResult {
  checkOptions(options as Record<string, unknown>, "accept()", {
    processRequest: "pass it to handler(), or answer the request before calling accept()",
  });
  const logger = options.logger;
  const protocol = new ServerProtocol({
    origins: options.origins,
    subprotocols: options.subprotocols,
    selectSubprotocol: options.selectSubprotocol,
    extensions: [],
    maxSize: options.maxSize,
    logger,
  });
  const ours = toRequest(request);
  if (request.method !== "GET") {
    const error = new InvalidMessage(
      `unsupported HTTP method; expected GET: ${request.method} ${ours.path} HTTP/1.1`,
    );
    ours.exception = error;
    return reject(protocol, 400, error, logger);
  }
  const answer = protocol.accept(ours);
  if (answer.statusCode !== 101) {
    const error = answer.exception ?? new InvalidHandshake(`HTTP ${answer.statusCode}`);
    logger?.info(`handshake answered ${answer.statusCode}: ${error.message}`);
    return { response: toWebResponse(answer), connection: undefined, error };
  }
  const pingInterval = options.pingInterval === undefined
    ? DEFAULTS.pingInterval
    : options.pingInterval;
  const idleTimeout = pingInterval === null || pingInterval === 0 ? 0 : (2 * pingInterval) / 1000;
  const { socket, response } = Deno.upgradeWebSocket(request, {
    protocol: protocol.subprotocol,
    idleTimeout,
  });
  const connection = new PlatformConnection(socket, {
    request: ours,
    response: fromWebResponse(response),
    subprotocol: protocol.subprotocol,
    remoteAddr: options.remoteAddr,
    maxSize: options.maxSize,
    maxQueue: options.maxQueue,
    writeLimit: options.writeLimit,
    pingInterval,
    closeTimeout: options.closeTimeout,
    logger,
  });
  return { response, connection };
}

/**
 * Turns a connection handler into a `Deno.serve` handler, for
 * `Deno.serve(handler(fn))` or `export default { fetch: handler(fn) }`
 * (`deno serve`, Deno Deploy).
 *
 * For each request: `processRequest`, if given, may answer it (plain HTTP
 * on the same port); then, when `fn` is a router made by `route()`, the
 * request URL is matched (`404 Not Found` when no route matches, `400` for
 * a group that isn't valid percent-encoding, a route's `respond()` answer);
 * otherwise the request goes through {@linkcode accept} (a request that
 * isn't an upgrade gets 426, like `serve()`). Once the connection is open, `fn` runs; when it returns the
 * connection is closed with 1000, when it throws with 1011 and the error is
 * logged (to `logger`, or `console` without one). A `ConnectionClosed`
 * error thrown after the connection closed is not logged.
 *
 * @param fn Runs once per connection, after the handshake.
 * @param options Handshake rules, limits and `processRequest`; see
 * {@linkcode HandlerOptions}.
 * @returns A function of the request (and `Deno.serve`'s `info`) that
 * resolves to the response.
 * @throws {TypeError} for an option that can't apply on this path, at once.
 * @throws {RangeError} for a limit out of range, at once.
 *
 * @example
 * ```ts ignore
 * import { handler } from "@denows/websockets/deploy";
 *
 * export default {
 *   fetch: handler(async (ws) => {
 *     for await (const message of ws) await ws.send(message);
 *   }, {
 *     processRequest: (request) =>
 *       new URL(request.url).pathname === "/healthz" ? new Response("OK\n") : undefined,
 *   }),
 * } satisfies Deno.ServeDefaultExport;
 * ```
 */
export function handler(
  fn: (connection: PlatformConnection) => void | Promise<void>,
  options: HandlerOptions = {},
): (request: globalThis.Request, info?: Deno.ServeHandlerInfo) => Promise<globalThis.Response> {
  const { processRequest, ...acceptOptions } = options;
  checkOptions(acceptOptions as Record<string, unknown>, "handler()", {
    remoteAddr: "handler() takes it from Deno.serve",
  });
  const logger = options.logger;
  const errorLogger: Pick<Logger, "error"> = logger ?? console;
  const router = isRouter(fn) ? fn : undefined;

  async function run(connection: PlatformConnection): Promise<void> {
    try {
      await connection.handshake;
    } catch {
      return; // the peer left before the connection opened
    }
    await runHandler(connection, fn, errorLogger);
  }

  return async (
    request: globalThis.Request,
    info?: Deno.ServeHandlerInfo,
  ): Promise<globalThis.Response> => {
    if (processRequest !== undefined) {
      const answer = await processRequest(request, info);
      if (answer !== undefined) return answer;
    }
    let match: RouteMatch<PlatformConnection> | undefined;
    if (router !== undefined) {
      const decision = await routeRequest(router, new URL(request.url), () => request);
      if (decision.response !== undefined) return decision.response;
      match = decision.match;
    }
    const result = accept(request, { ...acceptOptions, remoteAddr: info?.remoteAddr });
    if (result.connection !== undefined) {
      if (match !== undefined) router!.attach(result.connection, match);
      run(result.connection).catch((error) => {
        errorLogger.error("unexpected error in connection", error);
      });
    }
    return result.response;
  };
}
