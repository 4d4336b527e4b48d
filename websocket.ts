/**
 * {@linkcode WebSocket}: the browser's `WebSocket` API (WHATWG HTML, as
 * Deno's built-in implements it) over {@linkcode connect}, for code written
 * against that API (`graphql-ws`'s `webSocketImpl`, reconnecting wrappers,
 * realtime SDKs). Change one import and the code gets compression, custom
 * headers, size limits, timeouts and keepalive; it does not replace
 * `globalThis.WebSocket`.
 *
 * @example
 * ```ts ignore
 * import { WebSocket } from "@denows/websockets/websocket";
 *
 * const ws = new WebSocket("ws://127.0.0.1:8765/", [], {
 *   additionalHeaders: { Authorization: "Bearer secret" },
 * });
 * ws.onopen = () => ws.send("Hello world!");
 * ws.onmessage = (event) => {
 *   console.log(event.data);
 *   ws.close();
 * };
 * ```
 *
 * @module
 */

import { utf8Length } from "./_bytes.ts";
import { connect, type ConnectOptions } from "./client.ts";
import { Headers } from "./headers.ts";
import { State } from "./protocol.ts";
import type { StreamConnection } from "./stream_connection.ts";

/**
 * The second argument of the {@linkcode WebSocket} constructor in its object
 * form, as Deno's built-in accepts it: the subprotocols to offer and extra
 * request headers.
 *
 * @example
 * ```ts ignore
 * import { WebSocket } from "@denows/websockets/websocket";
 * const ws = new WebSocket("ws://127.0.0.1:8765/", {
 *   protocols: ["chat"],
 *   headers: { Authorization: "Bearer secret" },
 * });
 * ```
 */
export interface WebSocketInit {
  /**
   * Subprotocols to offer, in order of preference.
   *
   * @default {[]}
   */
  protocols?: string | string[];
  /**
   * Extra request headers, added to `additionalHeaders`.
   *
   * @default {undefined}
   */
  headers?: HeadersInit;
  /**
   * Not supported: a `Deno.HttpClient` configures Deno's built-in only. Any
   * value other than `undefined` or `null` throws `TypeError`; use the
   * third argument's options (`caCerts`, `proxy`, …) instead.
   *
   * @default {undefined}
   */
  client?: unknown;
}

/**
 * The options of the {@linkcode WebSocket} constructor (its third argument,
 * our extension to the browser API): every option of {@linkcode connect}
 * (`additionalHeaders`, `compression`, `proxy`, `maxSize`, `openTimeout`,
 * `pingInterval`, `pingTimeout`, `closeTimeout`, `origin`, `caCerts`,
 * `logger`, `signal`, …), with the same defaults (the proxy, too, comes from
 * the environment unless `proxy` says otherwise), except:
 *
 * - `subprotocols` comes from the constructor's `protocols` argument;
 * - `maxRedirects` defaults to 0, as a browser's `WebSocket` doesn't follow
 *   redirects (a redirect fails the connection); set it to follow them.
 *
 * Aborting `signal` while connecting fails the connection (`error`, then
 * `close` with 1006), like `close()` does.
 *
 * @example
 * ```ts ignore
 * import { WebSocket, type WebSocketOptions } from "@denows/websockets/websocket";
 * const options: WebSocketOptions = {
 *   additionalHeaders: { Authorization: "Bearer secret" },
 *   maxSize: 16 * 1024 * 1024,
 *   pingInterval: 10_000,
 *   compression: null,
 * };
 * const ws = new WebSocket("wss://example.com/feed", "feed.v1", options);
 * ```
 */
export type WebSocketOptions = Omit<ConnectOptions, "subprotocols" | "backoff">;

// The readyState values, as the standard numbers them.
const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

// What the standard's HTTP token is made of: subprotocol names must match.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

// A close() while a Blob is read: the closing handshake waits for the sends before it.
interface CloseRequest {
  code: number;
  reason: string;
}

type Outgoing = string | Uint8Array | Blob | CloseRequest;

// An event handler attribute (`onopen`, …): the function, and the listener that calls it,
// registered once at the place in the listener list where it was first set.
interface HandlerSlot {
  handler: EventHandler | null;
  listener: (event: Event) => void;
}

type EventHandler = (this: globalThis.WebSocket, event: Event) => unknown;

/**
 * A WebSocket client with the browser's API (the WHATWG HTML standard, as
 * Deno's built-in `WebSocket` implements it), built on {@linkcode connect}:
 * `readyState`, `url`, `protocol`, `extensions`, `binaryType`,
 * `bufferedAmount`, `send()`, `close()`, and the `open`, `message`, `error`
 * and `close` events (`on…` attributes and `addEventListener`). Hand it to
 * code that takes a `WebSocket` implementation; it is a class of its own and
 * does not replace `globalThis.WebSocket`.
 *
 * The third argument takes {@linkcode connect}'s options
 * ({@linkcode WebSocketOptions}): headers, compression (permessage-deflate
 * is offered by default, so `extensions` reports it when the server accepts
 * it), size limits, timeouts, keepalive, logger.
 *
 * Where it differs from Deno's built-in on purpose (see
 * `docs/websocket_class.md`): `extensions` reports the negotiated
 * permessage-deflate; a failed connection's `error` is a plain `Event` and
 * its `close` event has code 1006 (Deno's: an `ErrorEvent` and code 0); a
 * message's `origin` is the URL's origin (Deno's: the whole URL); events are
 * not trusted (`isTrusted` is `false`); and `connect()`'s limits apply
 * (`maxSize` 1 MiB, `openTimeout` 10 s, keepalive pings every 20 s).
 *
 * @example Echo
 * ```ts ignore
 * import { WebSocket } from "@denows/websockets";
 *
 * const ws = new WebSocket("ws://127.0.0.1:8765/");
 * ws.binaryType = "arraybuffer";
 * ws.addEventListener("open", () => ws.send("Hello world!"));
 * ws.addEventListener("message", (event) => {
 *   console.log(event.data); // Hello world!
 *   ws.close(1000, "done");
 * });
 * ws.addEventListener("close", (event) => console.log(event.code, event.wasClean));
 * ```
 *
 * @example Where a WebSocket implementation is expected
 * ```ts ignore
 * import { WebSocket, type WebSocketInit } from "@denows/websockets";
 *
 * // Code written for the browser API takes the class it should use.
 * function subscribe(url: string, impl: typeof globalThis.WebSocket): void {
 *   const socket = new impl(url, "feed.v1");
 *   socket.onmessage = (event) => console.log(event.data);
 * }
 *
 * // Our options, fixed in a subclass that has the browser's constructor.
 * class FeedSocket extends WebSocket {
 *   constructor(url: string | URL, protocols?: string | string[] | WebSocketInit) {
 *     super(url, protocols, { additionalHeaders: { Authorization: "Bearer secret" } });
 *   }
 * }
 * subscribe("ws://127.0.0.1:8765/", FeedSocket);
 * ```
 */
export class WebSocket extends EventTarget {
  /** `readyState` while the connection is being opened: 0. */
  static readonly CONNECTING: number = CONNECTING;
  /** `readyState` once the connection is open: 1. */
  static readonly OPEN: number = OPEN;
  /** `readyState` during the closing handshake: 2. */
  static readonly CLOSING: number = CLOSING;
  /** `readyState` once the connection is closed (or could not be opened): 3. */
  static readonly CLOSED: number = CLOSED;

  #readyState: number = CONNECTING;
  readonly #url: string;
  readonly #origin: string;
  #protocol = "";
  #extensions = "";
  #binaryType: BinaryType = "blob";
  readonly #abort = new AbortController();
  #connection: StreamConnection | undefined;
  #handlers: Map<string, HandlerSlot> | undefined;

  // Sends waiting behind a Blob being read, in order, and their payload bytes.
  #outgoing: Outgoing[] = [];
  #outgoingBytes = 0;
  // Sends handed to the connection and not yet written: their payload bytes and the bytes
  // they took on the wire, oldest first (see #settleBuffered).
  #sentPayload: number[] = [];
  #sentWire: number[] = [];
  #sentHead = 0;
  #sentPayloadBytes = 0;
  #sentWireBytes = 0;

  /**
   * Opens a connection to `url` (`ws:`, `wss:`, or `http:` / `https:`,
   * which become `ws:` / `wss:`), offering `protocols`; `options` are
   * {@linkcode connect}'s. Throws a `SyntaxError` `DOMException` for a URL
   * that doesn't parse, has another scheme or a fragment, and for duplicate
   * or invalid protocols; everything else (a refused connection, a rejected
   * handshake) is reported by the `error` and `close` events.
   */
  constructor(
    url: string | URL,
    protocols?: string | string[] | WebSocketInit | null,
    options: WebSocketOptions = {},
  ) {
    super();
    if (arguments.length === 0) {
      throw new TypeError(
        "Failed to construct 'WebSocket': 1 argument required, but only 0 present",
      );
    }
    const parsed = parseWebSocketUrl(String(url));
    this.#url = parsed.href;
    this.#origin = parsed.origin;

    let offered: string[];
    let headers: HeadersInit | undefined;
    if (protocols === undefined || protocols === null) {
      offered = [];
    } else if (typeof protocols === "string") {
      offered = [protocols];
    } else if (typeof protocols === "object" && Symbol.iterator in protocols) {
      offered = Array.from(protocols, String);
    } else if (typeof protocols === "object") {
      const init = protocols as WebSocketInit;
      if (init.client !== undefined && init.client !== null) {
        throw new TypeError(
          "Failed to construct 'WebSocket': `client` (a Deno.HttpClient) is not supported; " +
            "pass connect() options (caCerts, proxy, …) as the third argument",
        );
      }
      offered = init.protocols === undefined
        ? []
        : typeof init.protocols === "string"
        ? [init.protocols]
        : Array.from(init.protocols, String);
      headers = init.headers;
    } else {
      offered = [String(protocols)];
    }
    checkProtocols(offered);

    const signal = options.signal === undefined
      ? this.#abort.signal
      : AbortSignal.any([options.signal, this.#abort.signal]);
    const connectOptions: ConnectOptions = {
      maxRedirects: 0,
      ...options,
      subprotocols: offered,
      additionalHeaders: mergeHeaders(options.additionalHeaders, headers),
      signal,
    };
    this.#run(connect(this.#url, connectOptions));
  }

  /** 0: connecting. */
  get CONNECTING(): number {
    return CONNECTING;
  }
  /** 1: open. */
  get OPEN(): number {
    return OPEN;
  }
  /** 2: closing. */
  get CLOSING(): number {
    return CLOSING;
  }
  /** 3: closed. */
  get CLOSED(): number {
    return CLOSED;
  }

  /** `CONNECTING` (0), `OPEN` (1), `CLOSING` (2) or `CLOSED` (3). */
  get readyState(): number {
    return this.#readyState;
  }

  /** The URL, parsed and serialized (`http:` and `https:` given become `ws:` and `wss:`). */
  get url(): string {
    return this.#url;
  }

  /** The subprotocol the server selected; `""` until open, and when none was. */
  get protocol(): string {
    return this.#protocol;
  }

  /**
   * The extensions the server accepted, as its `Sec-WebSocket-Extensions`
   * header says (e.g. `permessage-deflate; server_max_window_bits=12`); `""`
   * until open, and when none was.
   */
  get extensions(): string {
    return this.#extensions;
  }

  /**
   * How binary messages are delivered: `"blob"` (the default) as `Blob`,
   * `"arraybuffer"` as `ArrayBuffer`. Other values are ignored, as the
   * standard and Deno's built-in do.
   */
  get binaryType(): BinaryType {
    return this.#binaryType;
  }
  set binaryType(value: BinaryType) {
    const type = String(value);
    if (type === "blob" || type === "arraybuffer") this.#binaryType = type;
  }

  /**
   * Bytes of application data (UTF-8 text, binary data) passed to `send()`
   * and not yet handed to the network: it grows by each message's length as
   * `send()` is called and shrinks as the connection writes. Framing and
   * compression are not counted. 0 unless open, as in Deno's built-in.
   */
  get bufferedAmount(): number {
    if (this.#readyState !== OPEN) return 0;
    this.#settleBuffered();
    return this.#outgoingBytes + this.#sentPayloadBytes;
  }

  /** Called with the `open` event. */
  get onopen(): ((this: globalThis.WebSocket, event: Event) => unknown) | null {
    return this.#getHandler("open");
  }
  set onopen(handler: ((this: globalThis.WebSocket, event: Event) => unknown) | null) {
    this.#setHandler("open", handler);
  }

  /** Called with each `message` event (a `MessageEvent`). */
  get onmessage(): ((this: globalThis.WebSocket, event: MessageEvent) => unknown) | null {
    return this.#getHandler("message");
  }
  set onmessage(handler: ((this: globalThis.WebSocket, event: MessageEvent) => unknown) | null) {
    this.#setHandler("message", handler as EventHandler | null);
  }

  /** Called with the `error` event, fired before `close` when the connection failed. */
  get onerror(): ((this: globalThis.WebSocket, event: Event) => unknown) | null {
    return this.#getHandler("error");
  }
  set onerror(handler: ((this: globalThis.WebSocket, event: Event) => unknown) | null) {
    this.#setHandler("error", handler);
  }

  /** Called with the `close` event (a `CloseEvent`). */
  get onclose(): ((this: globalThis.WebSocket, event: CloseEvent) => unknown) | null {
    return this.#getHandler("close");
  }
  set onclose(handler: ((this: globalThis.WebSocket, event: CloseEvent) => unknown) | null) {
    this.#setHandler("close", handler as EventHandler | null);
  }

  /**
   * Sends a string as a Text message, or an `ArrayBuffer`, an
   * `ArrayBufferView` or a `Blob` as a Binary message; messages go out in
   * the order of the calls, a `Blob` included. Throws an
   * `InvalidStateError` `DOMException` while connecting; does nothing once
   * closing or closed (as Deno's built-in).
   */
  send(data: string | ArrayBufferLike | Blob | ArrayBufferView): void {
    if (arguments.length === 0) {
      throw new TypeError(
        "Failed to execute 'send' on 'WebSocket': 1 argument required, but only 0 present",
      );
    }
    let message: string | Uint8Array | Blob;
    if (data instanceof Blob) message = data;
    else if (data instanceof ArrayBuffer) message = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) {
      message = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    } else if (typeof SharedArrayBuffer !== "undefined" && data instanceof SharedArrayBuffer) {
      throw new TypeError("Failed to execute 'send' on 'WebSocket': a SharedArrayBuffer");
    } else message = String(data).toWellFormed();
    if (this.#readyState === CONNECTING) {
      throw new DOMException("'readyState' not OPEN", "InvalidStateError");
    }
    if (this.#readyState !== OPEN) return;
    if (this.#outgoing.length === 0 && !(message instanceof Blob)) {
      this.#write(message);
      return;
    }
    this.#outgoingBytes += payloadLength(message);
    // The bytes of a Blob arrive later: what follows waits for them.
    this.#outgoing.push(message instanceof Uint8Array ? message.slice() : message);
    if (this.#outgoing.length === 1) this.#pump();
  }

  /**
   * Starts the closing handshake with `code` (1000 or 3000–4999) and
   * `reason` (at most 123 bytes of UTF-8); without either, the close frame
   * is empty (received as 1005). While connecting, fails the connection
   * (`error`, then `close` with 1006). Throws an `InvalidAccessError`
   * `DOMException` for another code and a `SyntaxError` one for a longer
   * reason.
   */
  close(code?: number, reason?: string): void {
    let closeCode: number | undefined;
    if (code !== undefined) {
      closeCode = clampUnsignedShort(code);
      if (closeCode !== 1000 && !(closeCode >= 3000 && closeCode <= 4999)) {
        throw new DOMException(
          `The close code must be either 1000 or in the range of 3000 to 4999: received ${closeCode}`,
          "InvalidAccessError",
        );
      }
    }
    let closeReason = "";
    if (reason !== undefined) {
      closeReason = String(reason).toWellFormed();
      if (utf8Length(closeReason) > 123) {
        throw new DOMException(
          "The close reason may not be longer than 123 bytes",
          "SyntaxError",
        );
      }
    }
    if (this.#readyState === CONNECTING) {
      this.#readyState = CLOSING;
      this.#abort.abort(new DOMException("closed while connecting", "AbortError"));
    } else if (this.#readyState === OPEN) {
      this.#readyState = CLOSING;
      // No code and no reason: an empty close frame. A reason needs a code before it.
      const request: CloseRequest = {
        code: closeCode ?? (closeReason === "" ? 1005 : 1000),
        reason: closeReason,
      };
      if (this.#outgoing.length === 0) this.#closeNow(request);
      else this.#outgoing.push(request);
    }
  }

  // ---- Opening, receiving, closing ----

  async #run(connecting: PromiseLike<StreamConnection>): Promise<void> {
    let connection: StreamConnection;
    try {
      connection = await connecting;
    } catch {
      this.#closed({ code: 1006, reason: "", wasClean: false });
      return;
    }
    if (this.#readyState !== CONNECTING) {
      // close() came while the handshake was completing: fail the connection.
      connection.abort();
      await connection.closed;
      this.#closed({ code: 1006, reason: "", wasClean: false });
      return;
    }
    this.#connection = connection;
    this.#protocol = connection.subprotocol ?? "";
    this.#extensions = connection.response?.headers.getAll("Sec-WebSocket-Extensions")
      .join(", ") ?? "";
    this.#readyState = OPEN;
    this.dispatchEvent(new Event("open"));
    // Every message received is dispatched, those that came before the close frame included.
    while (true) {
      let message: string | Uint8Array;
      try {
        message = await connection.recv();
      } catch {
        break;
      }
      this.#dispatchMessage(message);
    }
    this.#closed(await connection.closed);
  }

  #dispatchMessage(message: string | Uint8Array): void {
    let data: string | Blob | ArrayBuffer;
    if (typeof message === "string") data = message;
    else {
      // An ArrayBuffer of the message's bytes alone (a view may share a larger buffer).
      const buffer = message.byteOffset === 0 && message.byteLength === message.buffer.byteLength &&
          message.buffer instanceof ArrayBuffer
        ? message.buffer
        : message.slice().buffer;
      data = this.#binaryType === "blob" ? new Blob([buffer]) : buffer;
    }
    this.dispatchEvent(new MessageEvent("message", { data, origin: this.#origin }));
  }

  #closed(result: { code: number; reason: string; wasClean: boolean }): void {
    this.#readyState = CLOSED;
    this.#outgoing = [];
    this.#outgoingBytes = 0;
    if (!result.wasClean) this.dispatchEvent(new Event("error"));
    this.dispatchEvent(
      new CloseEvent("close", {
        code: result.code,
        reason: result.reason,
        wasClean: result.wasClean,
      }),
    );
  }

  // ---- Sending ----

  /** Hands a message to the connection now, and counts it until it is written. */
  #write(message: string | Uint8Array): void {
    const connection = this.#connection!;
    if (connection.state !== State.OPEN) return;
    this.#settleBuffered();
    const before = connection.bufferedAmount;
    // A message that can't be sent any more (the connection is closing) is dropped.
    connection.send(message).catch(() => {});
    const wire = connection.bufferedAmount - before;
    const payload = payloadLength(message);
    if (payload === 0) return;
    this.#sentPayload.push(payload);
    // Nothing measured (written at once, or not queued yet): counted until the buffer empties.
    this.#sentWire.push(wire > 0 ? wire : Infinity);
    this.#sentPayloadBytes += payload;
    this.#sentWireBytes += wire > 0 ? wire : 0;
  }

  /**
   * Forgets the sends the connection has written. The connection writes in
   * order, so the oldest sends went first: of the wire bytes our sends took,
   * those no longer in the connection's buffer were written. (Control frames
   * in the buffer only delay the count; an empty buffer means all written.)
   */
  #settleBuffered(): void {
    if (this.#sentHead === this.#sentPayload.length) return;
    const pending = this.#connection!.bufferedAmount;
    if (pending === 0) {
      this.#sentPayload = [];
      this.#sentWire = [];
      this.#sentHead = 0;
      this.#sentPayloadBytes = 0;
      this.#sentWireBytes = 0;
      return;
    }
    let written = this.#sentWireBytes - pending;
    while (this.#sentHead < this.#sentPayload.length) {
      const wire = this.#sentWire[this.#sentHead];
      if (wire > written) break;
      written -= wire;
      this.#sentWireBytes -= wire;
      this.#sentPayloadBytes -= this.#sentPayload[this.#sentHead];
      this.#sentHead++;
    }
  }

  /** Sends what waits behind a Blob, in order, reading each Blob as its turn comes. */
  async #pump(): Promise<void> {
    const outgoing = this.#outgoing;
    while (outgoing.length !== 0 && outgoing === this.#outgoing) {
      const item = outgoing[0];
      if (item instanceof Blob) {
        let bytes: Uint8Array;
        try {
          bytes = new Uint8Array(await item.arrayBuffer());
        } catch {
          bytes = new Uint8Array(0);
        }
        if (outgoing !== this.#outgoing) return; // closed meanwhile
        this.#outgoingBytes -= item.size;
        this.#write(bytes);
      } else if (typeof item === "string" || item instanceof Uint8Array) {
        this.#outgoingBytes -= payloadLength(item);
        this.#write(item);
      } else {
        this.#closeNow(item);
      }
      outgoing.shift();
    }
  }

  #closeNow(request: CloseRequest): void {
    // The close event comes from #run once the connection is closed.
    this.#connection!.close(request.code, request.reason).catch(() => {});
  }

  // ---- Event handler attributes ----

  #getHandler<T>(type: string): T | null {
    return (this.#handlers?.get(type)?.handler ?? null) as T | null;
  }

  #setHandler(type: string, handler: EventHandler | null): void {
    const value = typeof handler === "function" ? handler : null;
    const handlers = this.#handlers ??= new Map();
    const slot = handlers.get(type);
    if (slot !== undefined) {
      if (value === null) {
        this.removeEventListener(type, slot.listener);
        handlers.delete(type);
      } else {
        slot.handler = value;
      }
      return;
    }
    if (value === null) return;
    const created: HandlerSlot = {
      handler: value,
      listener: (event: Event) => {
        created.handler?.call(this, event);
      },
    };
    handlers.set(type, created);
    this.addEventListener(type, created.listener);
  }
}

// The constants are read-only on the class, as the standard defines them.
for (const [name, value] of [["CONNECTING", 0], ["OPEN", 1], ["CLOSING", 2], ["CLOSED", 3]]) {
  Object.defineProperty(WebSocket, name, { value, writable: false, configurable: false });
}

/**
 * Parses a WebSocket URL as the standard does: `http:` / `https:` become
 * `ws:` / `wss:`; another scheme, a fragment or a URL that doesn't parse
 * throws a `SyntaxError` `DOMException`. Relative URLs resolve against
 * `location` when the runtime has one (`deno run --location`).
 */
function parseWebSocketUrl(input: string): URL {
  let url: URL;
  try {
    url = new URL(input, locationHref());
  } catch (error) {
    throw new DOMException(
      error instanceof Error ? error.message : `Invalid URL: ${input}`,
      "SyntaxError",
    );
  }
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new DOMException(
      `Only ws & wss schemes are allowed in a WebSocket URL: received ${url.protocol}`,
      "SyntaxError",
    );
  }
  if (url.hash !== "" || url.href.endsWith("#")) {
    throw new DOMException("Fragments are not allowed in a WebSocket URL", "SyntaxError");
  }
  return url;
}

function locationHref(): string | undefined {
  try {
    // Deno throws when it runs without --location.
    return (globalThis as { location?: { href: string } }).location?.href;
  } catch {
    return undefined;
  }
}

/** Throws a `SyntaxError` `DOMException` for a repeated (case-insensitively) or invalid protocol. */
function checkProtocols(protocols: readonly string[]): void {
  if (new Set(protocols.map((protocol) => protocol.toLowerCase())).size !== protocols.length) {
    throw new DOMException("Cannot supply the same protocol multiple times", "SyntaxError");
  }
  for (const protocol of protocols) {
    if (!TOKEN.test(protocol)) {
      throw new DOMException(`Invalid protocol value: ${JSON.stringify(protocol)}`, "SyntaxError");
    }
  }
}

/** The `additionalHeaders` option with the constructor's `headers` appended. */
function mergeHeaders(
  additional: ConnectOptions["additionalHeaders"],
  init: HeadersInit | undefined,
): ConnectOptions["additionalHeaders"] {
  if (init === undefined) return additional;
  const merged = new Headers(additional);
  for (const [name, value] of new globalThis.Headers(init)) merged.append(name, value);
  return merged;
}

/** WebIDL's `[Clamp] unsigned short`: NaN is 0, ties round to even. */
function clampUnsignedShort(value: unknown): number {
  const number = Number(value);
  if (Number.isNaN(number)) return 0;
  const clamped = Math.min(Math.max(number, 0), 65535);
  const floor = Math.floor(clamped);
  const fraction = clamped - floor;
  if (fraction > 0.5 || (fraction === 0.5 && floor % 2 === 1)) return floor + 1;
  return floor;
}

function payloadLength(message: string | Uint8Array | Blob): number {
  if (typeof message === "string") return utf8Length(message);
  return message instanceof Blob ? message.size : message.byteLength;
}
