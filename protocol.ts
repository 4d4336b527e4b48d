/**
 * The sans-I/O WebSocket state machine, for both roles: bytes in → events
 * out, calls in → bytes out. No sockets, no timers, no runtime APIs:
 * `connection.ts` moves the bytes and runs the timers around it.
 *
 * - {@linkcode ClientProtocol} builds the opening handshake request and
 *   checks the response;
 * - {@linkcode ServerProtocol} checks the request and builds the response;
 * - both then parse frames, reassemble messages, answer pings, run the
 *   closing handshake and fail the connection with the RFC's close codes.
 *
 * @example
 * ```ts
 * import { ClientProtocol, ServerProtocol } from "@denows/websockets/protocol";
 * import { parseUri } from "@denows/websockets/uri";
 *
 * const client = new ClientProtocol(parseUri("ws://example.com/chat"));
 * const server = new ServerProtocol();
 * client.sendRequest(client.connect());
 * for (const chunk of client.dataToSend()) server.receiveData(chunk);
 * const [event] = server.eventsReceived();
 * if (event.type === "request") server.sendResponse(server.accept(event.request));
 * for (const chunk of server.dataToSend()) client.receiveData(chunk);
 * client.eventsReceived();
 * client.sendText("hello");
 * for (const chunk of client.dataToSend()) server.receiveData(chunk);
 * console.log(server.eventsReceived()); // [ { type: "message", data: "hello" } ]
 * ```
 *
 * @module
 */

import { concat, EMPTY } from "./_bytes.ts";
import { zeroCounters } from "./_counters.ts";
import { closeError, truncateReason } from "./_close.ts";
import { sha1 } from "./_sha1.ts";
import {
  ConnectionClosed,
  InvalidHandshake,
  InvalidHeader,
  InvalidHeaderValue,
  InvalidOrigin,
  InvalidState,
  InvalidStatus,
  InvalidUpgrade,
  InvalidURI,
  NegotiationError,
  PayloadTooBig,
  ProtocolError,
} from "./errors.ts";
import type {
  ClientExtensionFactory,
  EncodeOptions,
  Extension,
  ServerExtensionFactory,
} from "./extensions.ts";
import { Close, CloseCode, Frame, FrameReader, Opcode, serializeHeader } from "./frames.ts";
import {
  buildAuthorizationBasic,
  buildExtension,
  buildSubprotocol,
  type ExtensionHeader,
  type ExtensionParameter,
  Headers,
  MultipleValuesError,
  parseConnection,
  parseExtension,
  parseSubprotocol,
  parseUpgrade,
} from "./headers.ts";
import {
  type HttpLimits,
  reasonPhrase,
  Request,
  RequestParser,
  Response,
  ResponseParser,
} from "./http11.ts";
import type { WebSocketURI } from "./uri.ts";

/**
 * Connection states (RFC 6455 §4, §7): `CONNECTING → OPEN → CLOSING →
 * CLOSED`, as in the `readyState` of the browser's `WebSocket`.
 *
 * @example
 * ```ts
 * import { State } from "@denows/websockets/protocol";
 * console.log(State.OPEN); // 1
 * ```
 */
export const State = {
  /** The opening handshake is in progress. */
  CONNECTING: 0,
  /** The handshake succeeded; messages flow both ways. */
  OPEN: 1,
  /** A close frame was sent or received; the closing handshake is in progress. */
  CLOSING: 2,
  /** The TCP connection is closed (or the handshake failed). */
  CLOSED: 3,
} as const;

/**
 * One of the {@linkcode State} values.
 *
 * @example
 * ```ts
 * import { State } from "@denows/websockets/protocol";
 * const state: State = State.CLOSED;
 * console.log(state); // 3
 * ```
 */
export type State = (typeof State)[keyof typeof State];

const STATE_NAMES = ["CONNECTING", "OPEN", "CLOSING", "CLOSED"] as const;

/**
 * The name of a {@linkcode State}, for messages and logs.
 *
 * @example
 * ```ts
 * import { State, stateName } from "@denows/websockets/protocol";
 * console.log(stateName(State.CLOSING)); // CLOSING
 * ```
 */
export function stateName(state: State): string {
  return STATE_NAMES[state];
}

// Legal state transitions; anything else is a bug in the caller or here.
const TRANSITIONS: Record<State, readonly State[]> = {
  [State.CONNECTING]: [State.OPEN, State.CLOSED],
  [State.OPEN]: [State.CLOSING, State.CLOSED],
  [State.CLOSING]: [State.CLOSED],
  [State.CLOSED]: [],
};

/**
 * A minimal logger: `console` fits, and so do most logging libraries.
 *
 * @example
 * ```ts
 * import type { Logger } from "@denows/websockets/protocol";
 * const logger: Logger = console;
 * logger.debug("= connection is OPEN");
 * ```
 */
export interface Logger {
  /** Frame traces and state changes. */
  debug(message: string): void;
  /** Handshakes and closes. */
  info(message: string): void;
  /** Unexpected but handled conditions. */
  warn(message: string): void;
  /** Errors, e.g. an exception in a connection handler. */
  error(message: string, error?: unknown): void;
}

/**
 * What the protocol received, returned by
 * {@linkcode Protocol.prototype.eventsReceived}:
 *
 * - `request` (server) / `response` (client): the opening handshake;
 * - `message`: a complete message, `string` for Text, `Uint8Array` for Binary;
 * - `fragment`: a part of the message streamed after
 *   {@linkcode Protocol.prototype.streamMessage}, as it arrives: Text
 *   decoded incrementally, Binary as a view; `fin` on its last part;
 * - `ping` / `pong`: control frames (pings are answered automatically);
 * - `close`: the close frame received (`code` 1005 when it had no payload).
 *
 * @example
 * ```ts
 * import type { ProtocolEvent } from "@denows/websockets/protocol";
 * const event: ProtocolEvent = { type: "message", data: "hi" };
 * console.log(event.type); // message
 * ```
 */
export type ProtocolEvent =
  | { type: "request"; request: Request }
  | { type: "response"; response: Response }
  | { type: "message"; data: string | Uint8Array }
  | { type: "fragment"; data: string | Uint8Array; fin: boolean }
  | { type: "ping"; data: Uint8Array }
  | { type: "pong"; data: Uint8Array }
  | { type: "close"; close: Close };

/**
 * What a connection received and sent since it was created, kept by
 * {@linkcode Protocol} as plain numbers incremented in place (no object per
 * message). Payload bytes are the application's (after decompression when
 * received, before compression when sent; UTF-8 for Text); wire bytes are
 * the bytes on the transport, handshake, frame headers and control frames
 * included, so `bytesSent - wireBytesSent` shows what compression saved.
 *
 * @example
 * ```ts
 * import type { TrafficCounters } from "@denows/websockets/protocol";
 * const counters: TrafficCounters = {
 *   messagesReceived: 1, bytesReceived: 5, wireBytesReceived: 11,
 *   messagesSent: 1, bytesSent: 5, wireBytesSent: 7,
 * };
 * console.log(counters.wireBytesSent - counters.bytesSent); // 2
 * ```
 */
export interface TrafficCounters {
  /** Data messages received whole (a streamed message counts once its last part came). */
  messagesReceived: number;
  /** Payload bytes of the data frames received. */
  bytesReceived: number;
  /** Bytes read from the transport. */
  wireBytesReceived: number;
  /** Data messages sent (a fragmented one counts once its last frame is queued). */
  messagesSent: number;
  /** Payload bytes of the data frames sent. */
  bytesSent: number;
  /** Bytes queued for the transport. */
  wireBytesSent: number;
}

/** Options shared by {@linkcode ClientProtocol} and {@linkcode ServerProtocol}. */
export interface ProtocolOptions {
  /**
   * Largest incoming message, after decompression, in bytes; `Infinity` disables
   * the limit.
   *
   * @default {1_048_576} (1 MiB)
   */
  maxSize?: number;
  /**
   * Limits of the handshake's HTTP message (header count, line length, body
   * size).
   *
   * @default {{ maxNumHeaders: 128, maxLineLength: 8192, maxBodySize: 1_048_576 }}
   */
  httpLimits?: HttpLimits;
  /**
   * Where frame traces go (debug level).
   *
   * @default {undefined} (no logging)
   */
  logger?: Logger;
  /**
   * Hold the close frame of a violation found in received data until
   * {@linkcode Protocol.prototype.completeFailure}, so that the messages
   * received before it can be answered first (see
   * {@linkcode Protocol.prototype.failurePending}). `StreamConnection` turns
   * it on.
   *
   * @default {false} (the close frame is queued at once)
   */
  deferFailure?: boolean;
}

const EOF = new Uint8Array(0);
const SERIALIZE_UNMASKED = { mask: false } as const;
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const textEncoder = new TextEncoder();
const GUID_BYTES = textEncoder.encode(GUID);
const textDecoder = new TextDecoder("utf-8", { fatal: true });

/** The default `maxSize`: 1 MiB. */
export const DEFAULT_MAX_SIZE = 1024 * 1024;

/**
 * Computes `Sec-WebSocket-Accept` from `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
 *
 * @example
 * ```ts
 * import { acceptKey } from "@denows/websockets/protocol";
 * console.log(acceptKey("dGhlIHNhbXBsZSBub25jZQ==")); // s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
 * ```
 */
export function acceptKey(key: string): string {
  // The key and the GUID as UTF-8: the key's bytes are written here when it is ASCII, as every
  // valid key is, which costs less than a call into TextEncoder.
  const length = key.length;
  const bytes = new Uint8Array(length + GUID_BYTES.length);
  for (let i = 0; i < length; i++) {
    const code = key.charCodeAt(i);
    if (code > 0x7f) return bytesToBase64(sha1(textEncoder.encode(key + GUID)));
    bytes[i] = code;
  }
  bytes.set(GUID_BYTES, length);
  return bytesToBase64(sha1(bytes));
}

// A received fragment is kept as it is (a view of the bytes it arrived in) only if it is this
// large and covers at least a quarter of its buffer; smaller ones are copied into a shared tail.
const KEEP_FRAGMENT_FROM = 1024;
const TAIL_MIN = 1024;
const TAIL_MAX = 1024 * 1024;

/**
 * The fragments of a message being received, as bytes. Memory stays proportional to the
 * message's size however it is fragmented: empty fragments cost nothing, small ones (or small
 * views of a large read buffer, which would keep the whole buffer) are copied into a tail
 * buffer rather than kept as one object each, and the tail grows geometrically.
 */
class Fragments {
  readonly #parts: Uint8Array[] = [];
  size = 0;
  #tail: Uint8Array = EMPTY;
  #tailUsed = 0;

  add(data: Uint8Array): void {
    const length = data.length;
    if (length === 0) return;
    this.size += length;
    if (length >= KEEP_FRAGMENT_FROM && length * 4 >= data.buffer.byteLength) {
      this.#closeTail();
      this.#parts.push(data);
      return;
    }
    if (this.#tailUsed + length > this.#tail.length) {
      this.#closeTail();
      this.#tail = new Uint8Array(
        Math.max(length, Math.min(Math.max(this.size, TAIL_MIN), TAIL_MAX)),
      );
    }
    this.#tail.set(data, this.#tailUsed);
    this.#tailUsed += length;
  }

  // Moves the tail's bytes to the parts; what is left of the tail buffer goes on as the tail.
  #closeTail(): void {
    const used = this.#tailUsed;
    if (used === 0) return;
    this.#parts.push(this.#tail.subarray(0, used));
    this.#tail = this.#tail.subarray(used);
    this.#tailUsed = 0;
  }

  /** The message's bytes, in one buffer. */
  join(): Uint8Array {
    this.#closeTail();
    const parts = this.#parts;
    if (parts.length === 1) return parts[0];
    return concat(parts, this.size);
  }
}

// The close code and reason to fail the connection with for `error` (1002, 1007, 1009 or 1011),
// and the error to remember as the failure.
function failureClose(error: unknown): [number, string, Error] {
  if (error instanceof ProtocolError) return [error.code, error.message, error];
  if (error instanceof PayloadTooBig) return [CloseCode.MESSAGE_TOO_BIG, error.message, error];
  if (error instanceof Error) return [CloseCode.INTERNAL_ERROR, "internal error", error];
  return [CloseCode.INTERNAL_ERROR, "internal error", new Error(String(error))];
}

// A text frame whose payload is arriving in pieces: how much of it was validated, and, for a
// message in one frame, the text decoded so far (undefined: decode it whole at the end).
interface PendingText {
  frame: Frame;
  validated: number;
  pieces: string[] | undefined;
}

// Whether `frame` carries text as it is on the wire: a Text frame starting a message, or a
// continuation of a text message, in both cases one that no extension transforms.
function isText(frame: Frame, recvOpcode: Opcode | undefined, recvCompressed: boolean): boolean {
  if (frame.opcode === Opcode.TEXT) {
    return recvOpcode === undefined && !frame.rsv1 && !frame.rsv2 && !frame.rsv3;
  }
  return frame.opcode === Opcode.CONT && recvOpcode === Opcode.TEXT && !recvCompressed;
}

/**
 * The value of header `name`, which must appear once: `InvalidHeader` when it
 * appears several times, or when it is missing and `required`.
 */
function singleHeader(headers: Headers, name: string, required = true): string | undefined {
  let value: string | undefined;
  try {
    value = headers.get(name); // (no list of values made for the usual single one)
  } catch (error) {
    if (!(error instanceof MultipleValuesError)) throw error;
    const values = headers.getAll(name);
    throw new InvalidHeader(name, values.join(", "), `more than one ${name} header found`);
  }
  if (value === undefined && required) throw new InvalidHeader(name);
  return value;
}

/**
 * Checks that list header `name` (`Connection`, `Upgrade`) has `token` (lower case) among its
 * values, compared case-insensitively: `InvalidUpgrade` when it hasn't, `InvalidHeaderFormat`
 * when a value isn't a list that `parse` reads. A header that is just the token, as browsers
 * send it, needs no parsing.
 */
function requireToken(
  headers: Headers,
  name: string,
  parse: (value: string) => string[],
  token: string,
): void {
  const values = headers.getAll(name);
  if (values.length === 1 && values[0].toLowerCase() === token) return;
  const tokens = values.flatMap(parse);
  if (!tokens.some((value) => value.toLowerCase() === token)) {
    throw new InvalidUpgrade(name, tokens.length ? tokens.join(", ") : undefined);
  }
}

const BASE64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
// Reused by bytesToBase64() for the digits' codes.
const base64Codes: number[] = [];

// Base64 with padding, for a key or a digest (a few bytes): the digits' codes go into one
// array and become one string, rather than a string per byte and a call into btoa().
function bytesToBase64(bytes: Uint8Array): string {
  const length = bytes.length;
  const codes = base64Codes;
  codes.length = Math.ceil(length / 3) * 4;
  let at = 0;
  for (let i = 0; i < length; i += 3) {
    const b0 = bytes[i];
    const b1 = i + 1 < length ? bytes[i + 1] : 0;
    const b2 = i + 2 < length ? bytes[i + 2] : 0;
    codes[at++] = BASE64_DIGITS.charCodeAt(b0 >> 2);
    codes[at++] = BASE64_DIGITS.charCodeAt(((b0 & 3) << 4) | (b1 >> 4));
    codes[at++] = i + 1 < length ? BASE64_DIGITS.charCodeAt(((b1 & 15) << 2) | (b2 >> 6)) : 0x3d;
    codes[at++] = i + 2 < length ? BASE64_DIGITS.charCodeAt(b2 & 63) : 0x3d;
  }
  return String.fromCharCode.apply(null, codes);
}

// The extensions of a connection that negotiated none: one frozen list for all of them.
const NO_EXTENSIONS: readonly Extension[] = Object.freeze([]);

/**
 * The part of the state machine shared by both roles: frames, messages,
 * pings and the closing handshake. Use {@linkcode ClientProtocol} or
 * {@linkcode ServerProtocol}.
 *
 * Feed bytes with {@linkcode Protocol.prototype.receiveData} and
 * {@linkcode Protocol.prototype.receiveEof}; read what happened with
 * {@linkcode Protocol.prototype.eventsReceived}; send with the `send*`
 * methods; write what {@linkcode Protocol.prototype.dataToSend} returns to
 * the network, and close the transport when it returns an empty chunk.
 *
 * @example
 * ```ts
 * import { ServerProtocol, State } from "@denows/websockets/protocol";
 * const server = new ServerProtocol();
 * console.log(server.state === State.CONNECTING); // true
 * ```
 */
export abstract class Protocol {
  /** `true` on the client side: outgoing frames are masked, incoming ones must not be. */
  abstract readonly isClient: boolean;
  /** Largest incoming message in bytes. */
  readonly maxSize: number;
  /** Extensions negotiated during the handshake, in order. */
  extensions: readonly Extension[] = NO_EXTENSIONS;
  /** The subprotocol negotiated during the handshake, if any. */
  subprotocol: string | undefined;
  /** The close frame received, once received. */
  closeRcvd: Close | undefined;
  /** The close frame sent, once sent. */
  closeSent: Close | undefined;
  /** Whether the close frame was received before one was sent (`undefined` until both happened). */
  closeRcvdThenSent: boolean | undefined;
  /** The error that made the opening handshake fail, if it failed. */
  handshakeError: Error | undefined;
  /** The error that made this side fail the connection (protocol violation, message too big…), if any. */
  failure: Error | undefined;
  /**
   * Whether a violation found in received data waits for
   * {@linkcode Protocol.prototype.completeFailure} to send its close frame;
   * see {@linkcode ProtocolOptions.deferFailure}. Set it before data arrives.
   */
  deferFailure: boolean;
  /** Whether the end of the incoming stream was received. */
  eofReceived = false;
  /** Whether the end of the outgoing stream was requested. */
  eofSent = false;
  /** What was received and sent so far; see {@linkcode TrafficCounters}. */
  readonly counters: TrafficCounters = zeroCounters();

  /** Where frame traces and state changes go, if anywhere. */
  protected readonly logger: Logger | undefined;
  /** Limits of the handshake HTTP message. */
  protected readonly httpLimits: HttpLimits | undefined;
  /** The frame reader, created when the connection opens. */
  protected reader: FrameReader | undefined;
  #state: State = State.CONNECTING;
  // Made on demand: an idle connection holds no event or output list.
  #events: ProtocolEvent[] | undefined;
  #output: Uint8Array[] | undefined;
  #outputLength = 0;
  // Incoming fragmented message: its opcode, whether it is compressed (an RSV bit on its first
  // frame: extensions transform it), its bytes so far, and the text decoder.
  #recvOpcode: Opcode | undefined;
  #recvCompressed = false;
  #recvFragments: Fragments | undefined;
  #recvDecoder: TextDecoder | undefined;
  // The text frame whose payload is arriving in pieces, validated as they come.
  #pendingText: PendingText | undefined;
  // Outgoing fragmented message: the opcode of its first frame, if any.
  #sendOpcode: Opcode | undefined;
  #sendOptions: EncodeOptions | undefined;
  #discarding = false;
  // The close frame of a failure held back by deferFailure.
  #pendingFailure: { code: number; reason: string } | undefined;
  // Set by streamMessage(): the size limit of the message delivered as fragment events, and its
  // bytes so far (0 otherwise).
  #streamMaxSize: number | undefined;
  #streamSize = 0;

  /** Creates the shared state; see {@linkcode ProtocolOptions}. */
  constructor(options: ProtocolOptions = {}) {
    this.maxSize = options.maxSize ?? DEFAULT_MAX_SIZE;
    this.deferFailure = options.deferFailure ?? false;
    this.logger = options.logger;
    this.httpLimits = options.httpLimits;
  }

  // Bytes of the fragmented message being received so far.
  get #recvSize(): number {
    return this.#recvFragments?.size ?? this.#streamSize;
  }

  // The size limit of the message being received.
  get #recvMaxSize(): number {
    return this.#streamMaxSize ?? this.maxSize;
  }

  /** The current state. */
  get state(): State {
    return this.#state;
  }

  /** Whether a fragmented message is being sent (a frame with `fin` false was sent, the final one not yet). */
  get sendingFragmented(): boolean {
    return this.#sendOpcode !== undefined;
  }

  /** Whether a fragmented message is being received. */
  get receivingFragmented(): boolean {
    return this.#recvOpcode !== undefined;
  }

  /** Bytes queued by the `send*` methods and not yet taken by {@linkcode Protocol.prototype.dataToSend}. */
  get outputLength(): number {
    return this.#outputLength;
  }

  /** Moves to `state`; throws `InvalidState` for a transition the table forbids. */
  protected setState(state: State): void {
    if (!TRANSITIONS[this.#state].includes(state)) {
      throw new InvalidState(
        `invalid state transition from ${STATE_NAMES[this.#state]} to ${STATE_NAMES[state]}`,
      );
    }
    this.logger?.debug(`= connection is ${STATE_NAMES[state]}`);
    this.#state = state;
  }

  /** Returns the events received since the last call, and forgets them. */
  eventsReceived(): ProtocolEvent[] {
    const events = this.#events;
    if (events === undefined) return [];
    this.#events = undefined;
    return events;
  }

  /**
   * Returns the byte chunks to write since the last call, and forgets them;
   * write them in order, ideally in one write. An empty chunk means: close
   * the transport (half-close, then close) after writing what precedes it.
   */
  dataToSend(): Uint8Array[] {
    const output = this.#output;
    if (output === undefined) return [];
    this.#output = undefined;
    this.#outputLength = 0;
    return output;
  }

  /**
   * Whether the other side is expected to close the TCP connection soon:
   * after this side sent a close frame, or when the handshake failed. The
   * caller then bounds the wait with a timeout (`closeTimeout`).
   */
  closeExpected(): boolean {
    return (this.#state === State.CLOSING || this.handshakeError !== undefined) &&
      !this.eofReceived;
  }

  /**
   * The error to throw for a closed connection: `ConnectionClosedOK` when
   * close frames with 1000, 1001 or no status were both received and sent,
   * `ConnectionClosedError` otherwise. Its `cause` is the failure, if any.
   */
  get closeError(): ConnectionClosed {
    return closeError(
      this.closeRcvd,
      this.closeSent,
      this.closeRcvdThenSent,
      this.failure ?? this.handshakeError,
    );
  }

  // ---- Receiving ----

  /** Feeds bytes received from the network; the protocol owns `data` from now on. */
  receiveData(data: Uint8Array): void {
    if (this.eofReceived) throw new InvalidState("cannot receive data after the end of the stream");
    if (this.#discarding) return;
    this.counters.wireBytesReceived += data.length;
    if (this.#state === State.CONNECTING) {
      const rest = this.receiveHandshake(data);
      if (rest === undefined || rest.length === 0 || this.state !== State.OPEN) return;
      data = rest;
    }
    this.reader!.feed(data);
    this.#parseFrames();
  }

  /**
   * Where the next bytes received may go directly: the rest of the payload
   * of a large frame whose first bytes came, once every byte received before
   * was parsed and at least `minimum` bytes are still to come (see
   * {@linkcode FrameReader.prototype.payloadSpace}); otherwise `undefined`.
   * Reading into it saves a copy and a buffer per read. Report what was
   * written there with {@linkcode Protocol.prototype.receiveInto}, before
   * feeding anything else.
   *
   * @example
   * ```ts
   * import { ClientProtocol, ServerProtocol } from "@denows/websockets/protocol";
   * import { parseUri } from "@denows/websockets/uri";
   * const client = new ClientProtocol(parseUri("ws://example.com/"));
   * const server = new ServerProtocol();
   * client.sendRequest(client.connect());
   * for (const chunk of client.dataToSend()) server.receiveData(chunk);
   * const [event] = server.eventsReceived();
   * if (event.type === "request") server.sendResponse(server.accept(event.request));
   * for (const chunk of server.dataToSend()) client.receiveData(chunk);
   * client.sendBinary(new Uint8Array(100000).fill(1));
   * const [bytes] = client.dataToSend();
   * server.receiveData(bytes.subarray(0, 1000));
   * const space = server.receiveBuffer(16384)!;
   * space.set(bytes.subarray(1000)); // as a socket read into it would
   * server.receiveInto(bytes.length - 1000);
   * const [message] = server.eventsReceived();
   * if (message.type === "message") console.log(message.data.length); // 100000
   * ```
   */
  receiveBuffer(minimum: number): Uint8Array | undefined {
    if (this.eofReceived || this.#discarding || this.#state === State.CONNECTING) return undefined;
    return this.reader?.payloadSpace(minimum);
  }

  /**
   * Reports that `count` bytes received were written to the start of what
   * {@linkcode Protocol.prototype.receiveBuffer} returned, and handles the
   * frame if that completed it.
   *
   * @example
   * ```ts
   * import { ServerProtocol } from "@denows/websockets/protocol";
   * const server = new ServerProtocol();
   * console.log(server.receiveBuffer(1)); // undefined: no frame is being read
   * ```
   */
  receiveInto(count: number): void {
    if (this.eofReceived) throw new InvalidState("cannot receive data after the end of the stream");
    if (this.#discarding) return;
    this.counters.wireBytesReceived += count;
    this.reader!.payloadReceived(count);
    this.#parseFrames();
  }

  #parseFrames(): void {
    const reader = this.reader!;
    try {
      while (!this.#discarding) {
        reader.maxSize = this.#recvMaxSize - this.#recvSize;
        const frame = reader.next();
        if (frame === undefined) {
          if (reader.pending !== undefined) this.#validatePendingText(reader);
          break;
        }
        this.receiveFrame(frame);
      }
    } catch (error) {
      // The reader and the extensions check a frame against what is left of
      // maxSize: report the size of the whole message against maxSize itself.
      const maxSize = this.#recvMaxSize;
      const failure = error instanceof PayloadTooBig && error.maxSize !== maxSize &&
          error.maxSize === maxSize - this.#recvSize
        ? new PayloadTooBig(this.#recvSize + error.size, maxSize)
        : error;
      if (this.deferFailure && this.#state === State.OPEN) {
        // RFC 6455 §7.1.7: nothing after the violation is processed; what came before it was
        // valid, and the caller lets its messages be answered before completeFailure().
        const [code, reason, cause] = failureClose(failure);
        if (this.failure === undefined) this.failure = cause;
        this.#pendingFailure = { code, reason };
        this.logger?.debug(`! failing connection with code ${code}: ${reason} (held)`);
        this.#discarding = true;
      } else {
        this.failOnError(failure);
      }
    }
  }

  /**
   * Whether this side found a violation in the data received (`failure`
   * says which) and holds back its close frame, with
   * {@linkcode ProtocolOptions.deferFailure}: nothing received is processed
   * any more, the state stays OPEN so that the messages received before the
   * violation can still be answered, and
   * {@linkcode Protocol.prototype.completeFailure} sends the close frame.
   * `sendClose()` and `failConnection()` send it too (with the violation's
   * code); the end of the stream drops it.
   *
   * @example
   * ```ts
   * import { Frame, Opcode } from "@denows/websockets/frames";
   * import { ServerProtocol } from "@denows/websockets/protocol";
   * import { Request } from "@denows/websockets/http11";
   * import { Headers } from "@denows/websockets/headers";
   * const server = new ServerProtocol({ deferFailure: true });
   * server.sendResponse(server.accept(new Request("/", new Headers({
   *   Host: "example.com", Upgrade: "websocket", Connection: "Upgrade",
   *   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13",
   * }))));
   * server.dataToSend();
   * server.receiveData(new Uint8Array([
   *   ...new Frame(Opcode.TEXT, new TextEncoder().encode("hi")).serialize({ mask: true }),
   *   0xf1, 0x80, 0, 0, 0, 0, // a frame with a reserved bit set
   * ]));
   * console.log(server.eventsReceived(), server.failurePending); // [ { type: "message", data: "hi" } ] true
   * server.sendText("hi"); // the answer goes first
   * server.completeFailure(); // then the close frame (1002)
   * console.log(server.dataToSend().length); // 3: the answer, the close frame, the end of the stream
   * ```
   */
  get failurePending(): boolean {
    return this.#pendingFailure !== undefined;
  }

  /**
   * Sends the close frame of the failure held back (see
   * {@linkcode Protocol.prototype.failurePending}); does nothing when none is.
   *
   * @example
   * ```ts
   * import { ServerProtocol } from "@denows/websockets/protocol";
   * const server = new ServerProtocol({ deferFailure: true });
   * server.completeFailure(); // nothing is held: nothing happens
   * console.log(server.failurePending); // false
   * ```
   */
  completeFailure(): void {
    const pending = this.#pendingFailure;
    if (pending !== undefined) this.fail(pending.code, pending.reason, undefined);
  }

  /**
   * Validates the bytes of a text frame's payload that arrived since the last
   * read, so that invalid UTF-8 fails at the read that brought it, not when
   * the frame is complete (a sender may pause in the middle of a frame). Only
   * frames that extensions leave as they are (no RSV bit on the message's
   * first frame): compressed text is validated once inflated, frame by frame.
   * The payload is decoded once: a whole message's pieces are kept as text.
   */
  #validatePendingText(reader: FrameReader): void {
    const frame = reader.pending!;
    const filled = reader.pendingFilled;
    let pending = this.#pendingText;
    if (pending === undefined || pending.frame !== frame) {
      pending = undefined;
      if (
        filled === 0 || this.#state !== State.OPEN ||
        !isText(frame, this.#recvOpcode, this.#recvCompressed)
      ) return;
      // The text of a message in one frame, or of a streamed message's frame, is kept as it is
      // decoded; other fragments' is decoded again once the message is whole.
      const keep = (frame.opcode === Opcode.TEXT && frame.fin) || this.#streamMaxSize !== undefined;
      pending = this.#pendingText = { frame, validated: 0, pieces: keep ? [] : undefined };
    } else if (filled === pending.validated) {
      return;
    }
    const decoder = this.#recvDecoder ??= new TextDecoder("utf-8", { fatal: true });
    let piece: string;
    try {
      piece = decoder.decode(frame.data.subarray(pending.validated, filled), { stream: true });
    } catch {
      this.#recvDecoder = undefined;
      throw new ProtocolError("invalid UTF-8 in text message", CloseCode.INVALID_DATA);
    }
    pending.validated = filled;
    const pieces = pending.pieces;
    if (pieces === undefined) return;
    if (piece !== "") pieces.push(piece);
    // Many small pieces would cost far more as strings than as bytes: past a few, keep them
    // only while they average KEEP_FRAGMENT_FROM bytes; otherwise decode the frame whole at the end.
    if (
      pieces.length > 8 && filled < pieces.length * KEEP_FRAGMENT_FROM &&
      this.#streamMaxSize === undefined
    ) pending.pieces = undefined;
  }

  /** Signals that the other side closed its end of the stream (TCP FIN). */
  receiveEof(): void {
    if (this.eofReceived) throw new InvalidState("end of stream already received");
    this.eofReceived = true;
    if (this.#state === State.CONNECTING) this.receiveHandshakeEof();
    this.logger?.debug("< EOF");
    if (this.#state !== State.CLOSED) this.setState(State.CLOSED);
    if (!this.eofSent) this.sendEof();
    this.#discarding = true;
    this.#pendingFailure = undefined;
  }

  /** Handles handshake bytes; returns the bytes that followed the handshake, if complete. */
  protected abstract receiveHandshake(data: Uint8Array): Uint8Array | undefined;

  /** Handles the end of the stream during the handshake. */
  protected abstract receiveHandshakeEof(): void;

  /** Fails the connection with the close code that fits `error` (1002, 1007, 1009 or 1011). */
  protected failOnError(error: unknown): void {
    const [code, reason, cause] = failureClose(error);
    this.fail(code, reason, cause);
  }

  /** Handles one incoming frame: data frames are reassembled into messages. */
  protected receiveFrame(frame: Frame): void {
    if (this.logger) this.logger.debug(`< ${frame}`);
    const opcode = frame.opcode;
    if (opcode >= 8) {
      this.receiveControlFrame(frame);
      return;
    }
    // The part of a text frame validated as it arrived (see #validatePendingText()).
    let pending = this.#pendingText;
    if (pending !== undefined) {
      this.#pendingText = undefined;
      if (pending.frame !== frame) pending = undefined;
    }
    if (this.#state !== State.OPEN) return; // after sending a close frame, data frames are discarded
    if (opcode === Opcode.CONT) {
      if (this.#recvOpcode === undefined) throw new ProtocolError("unexpected continuation frame");
    } else if (this.#recvOpcode !== undefined) {
      throw new ProtocolError("expected a continuation frame");
    }
    const compressed = frame.rsv1 || frame.rsv2 || frame.rsv3;
    const extensions = this.extensions;
    const maxSize = this.#recvMaxSize;
    if (extensions.length !== 0) {
      const remaining = maxSize - this.#recvSize;
      // A streamed message may grow past the connection's maxSize when its caller says so, but
      // the extensions still decode one frame into at most maxSize bytes: a small compressed
      // frame can't become a part of any size.
      const limit = remaining > this.maxSize ? this.maxSize : remaining;
      try {
        for (let i = extensions.length - 1; i >= 0; i--) {
          frame = extensions[i].decode(frame, { maxSize: limit });
        }
      } catch (error) {
        if (limit === remaining || !(error instanceof PayloadTooBig)) throw error;
        throw new PayloadTooBig(
          error.size,
          limit,
          `in one frame of a streamed message exceeds maxSize of ${limit} bytes`,
        );
      }
    }
    if (frame.rsv1 || frame.rsv2 || frame.rsv3) throw new ProtocolError("reserved bits must be 0");
    const data = frame.data;
    const size = this.#recvSize + data.length;
    if (size > maxSize) throw new PayloadTooBig(size, maxSize);
    if (this.#streamMaxSize !== undefined) {
      this.#receiveFragment(opcode, data, frame.fin, pending);
      return;
    }
    const counters = this.counters;
    if (opcode !== Opcode.CONT && frame.fin) {
      counters.messagesReceived++;
      counters.bytesReceived += data.length;
      // A whole message in one frame: the common case, without copies.
      if (opcode === Opcode.TEXT) {
        let text: string;
        try {
          const pieces = pending?.pieces;
          if (pieces !== undefined) {
            // Its first bytes were decoded as they arrived: decode the rest only.
            pieces.push(this.#recvDecoder!.decode(data.subarray(pending!.validated)));
            text = pieces.join("");
          } else {
            if (pending !== undefined) this.#recvDecoder = undefined; // left mid-stream
            text = textDecoder.decode(data);
          }
        } catch {
          this.#recvDecoder = undefined;
          throw new ProtocolError("invalid UTF-8 in text message", CloseCode.INVALID_DATA);
        }
        (this.#events ??= []).push({ type: "message", data: text });
      } else {
        (this.#events ??= []).push({ type: "message", data });
      }
      return;
    }
    if (opcode !== Opcode.CONT) {
      this.#recvOpcode = opcode;
      this.#recvCompressed = compressed;
    }
    if (this.#recvOpcode === Opcode.TEXT) {
      // Validated fragment by fragment (and within a fragment as it arrives): invalid text
      // fails where it becomes invalid, while a code point split across fragments is fine.
      // (The text is decoded again, whole, at the end: strings of many small fragments would
      // cost far more than bytes.)
      const decoder = this.#recvDecoder ??= new TextDecoder("utf-8", { fatal: true });
      try {
        decoder.decode(pending === undefined ? data : data.subarray(pending.validated), {
          stream: !frame.fin,
        });
      } catch {
        this.#recvDecoder = undefined;
        throw new ProtocolError("invalid UTF-8 in text message", CloseCode.INVALID_DATA);
      }
    }
    const fragments = this.#recvFragments ??= new Fragments();
    fragments.add(data);
    if (!frame.fin) return;
    const bytes = fragments.join();
    counters.messagesReceived++;
    counters.bytesReceived += bytes.length;
    const message = this.#recvOpcode === Opcode.TEXT ? textDecoder.decode(bytes) : bytes;
    this.#recvOpcode = undefined;
    this.#recvFragments = undefined;
    (this.#events ??= []).push({ type: "message", data: message });
  }

  /**
   * Delivers the message being received, or else the next one, as
   * `fragment` events rather than one `message` event: each data frame's
   * payload as it arrives (what came of it before this call in the first
   * event), Text decoded incrementally and validated across frames, Binary
   * as views of the bytes received. The message may have up to `maxSize`
   * bytes (default: the protocol's `maxSize`); beyond, the connection fails
   * with 1009 at the frame that crosses it. Messages after it are
   * reassembled again.
   *
   * @example
   * ```ts
   * import { ClientProtocol, ServerProtocol } from "@denows/websockets/protocol";
   * import { parseUri } from "@denows/websockets/uri";
   * const client = new ClientProtocol(parseUri("ws://example.com/"));
   * const server = new ServerProtocol();
   * client.sendRequest(client.connect());
   * for (const chunk of client.dataToSend()) server.receiveData(chunk);
   * const [event] = server.eventsReceived();
   * if (event.type === "request") server.sendResponse(server.accept(event.request));
   * for (const chunk of server.dataToSend()) client.receiveData(chunk);
   * const bytes = new TextEncoder().encode("café"); // é is 2 bytes
   * client.sendText(bytes.subarray(0, 4), false);
   * client.sendContinuation(bytes.subarray(4), true);
   * server.streamMessage();
   * for (const chunk of client.dataToSend()) server.receiveData(chunk);
   * console.log(server.eventsReceived());
   * // [ { type: "fragment", data: "caf", fin: false }, { type: "fragment", data: "é", fin: true } ]
   * ```
   */
  streamMessage(maxSize: number = this.maxSize): void {
    if (!(maxSize >= 0)) throw new RangeError(`maxSize must be a positive number, got ${maxSize}`);
    if (this.#streamMaxSize !== undefined) {
      throw new InvalidState("cannot stream a message: a message is being streamed already");
    }
    this.#streamMaxSize = maxSize;
    const fragments = this.#recvFragments;
    if (fragments === undefined) {
      this.#keepPendingText(undefined);
      return;
    }
    // A message half received: what came so far is its first part.
    this.#recvFragments = undefined;
    this.#streamSize = fragments.size;
    if (fragments.size > maxSize) {
      this.failOnError(new PayloadTooBig(fragments.size, maxSize));
      return;
    }
    // (The validating decoder goes on from the end of these bytes: this one is thrown away.)
    const decoder = new TextDecoder("utf-8", { fatal: true });
    if (fragments.size !== 0) {
      const bytes = fragments.join();
      this.counters.bytesReceived += bytes.length;
      const data = this.#recvOpcode === Opcode.TEXT
        ? decoder.decode(bytes, { stream: true })
        : bytes;
      (this.#events ??= []).push({ type: "fragment", data, fin: false });
    }
    this.#keepPendingText(decoder);
  }

  // A streamed text frame's part is its text: the first bytes of a frame arriving in pieces,
  // only validated so far, are decoded (by `decoder`, which stands where the message's
  // validating decoder stood before them) and the frame's text is kept from now on.
  #keepPendingText(decoder: TextDecoder | undefined): void {
    const pending = this.#pendingText;
    if (pending === undefined || pending.pieces !== undefined) return;
    decoder ??= new TextDecoder("utf-8", { fatal: true });
    const bytes = pending.frame.data.subarray(0, pending.validated);
    pending.pieces = [decoder.decode(bytes, { stream: true })];
  }

  // A data frame of a streamed message: one fragment event. `pending`: the part of the frame
  // decoded as it arrived.
  #receiveFragment(
    opcode: Opcode,
    data: Uint8Array,
    fin: boolean,
    pending: PendingText | undefined,
  ): void {
    if (opcode !== Opcode.CONT) this.#recvOpcode = opcode;
    let part: string | Uint8Array = data;
    if (this.#recvOpcode === Opcode.TEXT) {
      const decoder = this.#recvDecoder ??= new TextDecoder("utf-8", { fatal: true });
      try {
        if (pending === undefined) {
          part = decoder.decode(data, { stream: !fin });
        } else {
          pending.pieces!.push(decoder.decode(data.subarray(pending.validated), { stream: !fin }));
          part = pending.pieces!.join("");
        }
      } catch {
        this.#recvDecoder = undefined;
        throw new ProtocolError("invalid UTF-8 in text message", CloseCode.INVALID_DATA);
      }
    }
    const counters = this.counters;
    counters.bytesReceived += data.length;
    this.#streamSize += data.length;
    if (fin) {
      counters.messagesReceived++;
      this.#recvOpcode = undefined;
      this.#streamMaxSize = undefined;
      this.#streamSize = 0;
    }
    (this.#events ??= []).push({ type: "fragment", data: part, fin });
  }

  /** Handles a ping, pong or close frame. */
  protected receiveControlFrame(frame: Frame): void {
    if (frame.rsv1 || frame.rsv2 || frame.rsv3) throw new ProtocolError("reserved bits must be 0");
    const data = frame.data;
    if (frame.opcode === Opcode.PING) {
      // Answer with a pong of the same payload while open (RFC 6455 §5.5.2).
      if (this.#state === State.OPEN) this.sendFrame(new Frame(Opcode.PONG, data.slice()));
      (this.#events ??= []).push({ type: "ping", data });
    } else if (frame.opcode === Opcode.PONG) {
      (this.#events ??= []).push({ type: "pong", data });
    } else {
      const close = Close.parse(data);
      this.closeRcvd = close;
      if (this.#state === State.OPEN) {
        // Echo the close frame (RFC 6455 §5.5.1), then the server closes TCP first.
        this.sendFrame(new Frame(Opcode.CLOSE, close.serialize()));
        this.closeSent = close;
        this.closeRcvdThenSent = true;
        this.setState(State.CLOSING);
      } else if (this.closeRcvdThenSent === undefined && this.closeSent !== undefined) {
        this.closeRcvdThenSent = false;
      }
      if (!this.isClient) this.sendEof();
      (this.#events ??= []).push({ type: "close", close });
      // Nothing after a close frame is processed (RFC 6455 §5.5.1).
      this.#discarding = true;
    }
  }

  // ---- Sending ----

  /** Throws `InvalidState` naming the state unless the connection is OPEN. */
  protected checkCanSend(what: string): void {
    if (this.#state !== State.OPEN) {
      throw new InvalidState(`cannot send ${what} in state ${STATE_NAMES[this.#state]}`);
    }
  }

  /**
   * Sends a Text frame: the first or only frame of a message. `fin` false
   * starts a fragmented message, continued with
   * {@linkcode Protocol.prototype.sendContinuation}.
   */
  sendText(data: string | Uint8Array, fin: boolean = true, options?: EncodeOptions): void {
    this.sendDataFrame(
      Opcode.TEXT,
      typeof data === "string" ? textEncoder.encode(data) : data,
      fin,
      options,
    );
  }

  /** Sends a Binary frame: the first or only frame of a message. */
  sendBinary(data: Uint8Array, fin: boolean = true, options?: EncodeOptions): void {
    this.sendDataFrame(Opcode.BINARY, data, fin, options);
  }

  /** Sends a continuation frame of the fragmented message being sent. */
  sendContinuation(data: string | Uint8Array, fin: boolean): void {
    this.checkCanSend("continuation frame");
    if (this.#sendOpcode === undefined) {
      throw new InvalidState(
        "cannot send a continuation frame: no fragmented message is being sent",
      );
    }
    const bytes = typeof data === "string" ? textEncoder.encode(data) : data;
    this.sendFrame(new Frame(Opcode.CONT, bytes, { fin }), this.#sendOptions);
    this.counters.bytesSent += bytes.length;
    if (fin) {
      this.counters.messagesSent++;
      this.#sendOpcode = undefined;
      this.#sendOptions = undefined;
    }
  }

  /** Sends the first (or only) frame of a Text or Binary message. */
  protected sendDataFrame(
    opcode: Opcode,
    data: Uint8Array,
    fin: boolean,
    options: EncodeOptions | undefined,
  ): void {
    this.checkCanSend(opcode === Opcode.TEXT ? "text frame" : "binary frame");
    if (this.#sendOpcode !== undefined) {
      throw new InvalidState("cannot start a new message: a fragmented message is being sent");
    }
    this.sendFrame(new Frame(opcode, data, { fin }), options);
    const counters = this.counters;
    counters.bytesSent += data.length;
    if (fin) counters.messagesSent++;
    else {
      this.#sendOpcode = opcode;
      this.#sendOptions = options;
    }
  }

  /**
   * Queues bytes of a data frame that is already serialized and encoded for
   * this connection's extensions (what `broadcast()` shares between
   * connections). Server side only: client frames are masked one by one.
   * `payloadLength`, the message's bytes before encoding, is counted in
   * {@linkcode Protocol.prototype.counters} (default 0).
   */
  sendSerialized(bytes: Uint8Array, payloadLength: number = 0): void {
    this.checkCanSend("data frame");
    if (this.#sendOpcode !== undefined) {
      throw new InvalidState("cannot start a new message: a fragmented message is being sent");
    }
    if (this.isClient) throw new InvalidState("cannot send pre-serialized frames as a client");
    this.pushOutput(bytes);
    this.counters.messagesSent++;
    this.counters.bytesSent += payloadLength;
  }

  /** Sends a ping with up to 125 bytes of payload. */
  sendPing(data: Uint8Array = EMPTY): void {
    this.checkCanSend("ping");
    this.sendFrame(new Frame(Opcode.PING, data));
  }

  /** Sends a pong with up to 125 bytes of payload. */
  sendPong(data: Uint8Array = EMPTY): void {
    this.checkCanSend("pong");
    this.sendFrame(new Frame(Opcode.PONG, data));
  }

  /**
   * Starts the closing handshake: sends a close frame with `code` and
   * `reason` (no code: an empty close frame, received as 1005). The state
   * becomes CLOSING. Throws `ProtocolError` for a code that may not be sent,
   * or a reason over 123 bytes.
   */
  sendClose(code?: number, reason: string = ""): void {
    this.checkCanSend("close frame");
    if (this.#pendingFailure !== undefined) {
      this.completeFailure(); // the peer learns why
      return;
    }
    const close = code === undefined
      ? new Close(CloseCode.NO_STATUS_RCVD, "")
      : new Close(code, reason);
    const payload = close.serialize();
    this.sendFrame(new Frame(Opcode.CLOSE, payload));
    this.closeSent = close;
    this.setState(State.CLOSING);
  }

  /**
   * Fails the connection (RFC 6455 §7.1.7): sends a close frame with `code`
   * (unless 1006) while open, then a server closes the transport at once
   * while a client waits for the server to close it; nothing received
   * afterwards is processed.
   */
  failConnection(code: number, reason: string = ""): void {
    this.fail(code, reason, undefined);
  }

  /** Fails the connection with `code`, remembering `error` as the failure. */
  protected fail(code: number, reason: string, error: Error | undefined): void {
    const pending = this.#pendingFailure;
    if (pending !== undefined) {
      // A violation found earlier is the first reason to fail: its close frame goes now.
      this.#pendingFailure = undefined;
      code = pending.code;
      reason = pending.reason;
    }
    if (error !== undefined && this.failure === undefined) this.failure = error;
    this.logger?.debug(`! failing connection with code ${code}: ${reason}`);
    if (this.#state === State.OPEN) {
      if (code !== CloseCode.ABNORMAL_CLOSURE) {
        const close = new Close(code, truncateReason(reason));
        this.sendFrame(new Frame(Opcode.CLOSE, close.serialize()));
        this.closeSent = close;
      }
      this.setState(State.CLOSING);
    }
    if (!this.isClient && !this.eofSent) this.sendEof();
    this.#discarding = true;
  }

  /** Encodes `frame` with the extensions and queues its bytes. */
  protected sendFrame(frame: Frame, options?: EncodeOptions): void {
    const extensions = this.extensions;
    for (let i = 0; i < extensions.length; i++) frame = extensions[i].encode(frame, options);
    if (this.logger) this.logger.debug(`> ${frame}`);
    if (this.isClient) {
      this.pushOutput(frame.serialize({ mask: true }));
    } else {
      const length = frame.data.length;
      if (length < 4096) {
        // Small frames: header and payload in one buffer (a view of a shared slab when small).
        this.pushOutput(frame.serialize(SERIALIZE_UNMASKED));
      } else {
        // Large frames: header and payload as two chunks, so the payload isn't
        // copied here; the connection copies a tick's chunks once into one write.
        this.pushOutput(serializeHeader(frame));
        this.pushOutput(frame.data);
      }
    }
  }

  /** Queues an event for `eventsReceived()`. */
  protected pushEvent(event: ProtocolEvent): void {
    (this.#events ??= []).push(event);
  }

  /** Queues bytes for `dataToSend()`. */
  protected pushOutput(bytes: Uint8Array): void {
    (this.#output ??= []).push(bytes);
    this.#outputLength += bytes.length;
    this.counters.wireBytesSent += bytes.length;
  }

  /** Queues the end-of-stream marker: the transport is to be closed. */
  protected sendEof(): void {
    if (this.eofSent) return;
    this.eofSent = true;
    this.logger?.debug("> EOF");
    (this.#output ??= []).push(EOF);
  }

  /** Ignores every byte received from now on. */
  protected startDiscarding(): void {
    this.#discarding = true;
  }
}

// The Date header value, formatted at most once per second.
let dateSecond = -1;
let dateText = "";
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(now).toUTCString();
  }
  return dateText;
}

// ---------------------------------------------------------------- Client

/** Options of {@linkcode ClientProtocol}. */
export interface ClientProtocolOptions extends ProtocolOptions {
  /**
   * Value of the `Origin` header.
   *
   * @default {undefined} (no `Origin` header)
   */
  origin?: string;
  /**
   * Extensions to offer, in order of preference.
   *
   * @default {undefined} (none offered)
   */
  extensions?: ClientExtensionFactory[];
  /**
   * Subprotocols to offer, in order of preference.
   *
   * @default {undefined} (none offered)
   */
  subprotocols?: string[];
  /**
   * Extra request headers.
   *
   * @default {undefined}
   */
  additionalHeaders?: Headers | Record<string, string> | Iterable<[string, string]>;
  /**
   * Value of the `User-Agent` header.
   *
   * @default {undefined} (no `User-Agent` header)
   */
  userAgentHeader?: string;
}

/**
 * The client side: {@linkcode ClientProtocol.prototype.connect} builds the
 * handshake request; the response is parsed and checked as bytes arrive.
 *
 * A failed handshake sets `handshakeError` (e.g. `InvalidStatus`, holding the
 * response, for redirects and 4xx/5xx answers), stores it on the response's
 * `exception` and emits the `response` event.
 *
 * @example
 * ```ts
 * import { ClientProtocol } from "@denows/websockets/protocol";
 * import { parseUri } from "@denows/websockets/uri";
 * const client = new ClientProtocol(parseUri("ws://example.com/"), { subprotocols: ["chat"] });
 * const request = client.connect();
 * console.log(request.path, request.headers.get("Sec-WebSocket-Protocol")); // / chat
 * ```
 */
export class ClientProtocol extends Protocol {
  /** `true`: outgoing frames are masked, incoming ones must not be. */
  get isClient(): boolean {
    return true;
  }
  /** The URI connected to. */
  readonly uri: WebSocketURI;
  /** The handshake request, once built. */
  request: Request | undefined;
  /** The handshake response, once received. */
  response: Response | undefined;
  readonly #options: ClientProtocolOptions;
  #key = "";
  #parser: ResponseParser | undefined;

  /** Creates the client side for `uri`. */
  constructor(uri: WebSocketURI, options: ClientProtocolOptions = {}) {
    super(options);
    this.uri = uri;
    this.#options = options;
  }

  /** Builds the opening handshake request (RFC 6455 §4.1). Send it with `sendRequest`. */
  connect(): Request {
    const uri = this.uri;
    const options = this.#options;
    const headers = new Headers();
    const defaultPort = uri.secure ? 443 : 80;
    const host = uri.host.includes(":") ? `[${uri.host}]` : uri.host;
    headers.append("Host", uri.port === defaultPort ? host : `${host}:${uri.port}`);
    const userInfo = uri.userInfo;
    if (userInfo !== undefined) {
      let credentials: string[];
      try {
        credentials = userInfo.map(decodeURIComponent);
      } catch {
        throw new InvalidURI(uri.toString(), "user info isn't percent-encoded UTF-8");
      }
      headers.append("Authorization", buildAuthorizationBasic(credentials[0], credentials[1]));
    }
    if (options.origin !== undefined) headers.append("Origin", options.origin);
    headers.append("Upgrade", "websocket");
    headers.append("Connection", "Upgrade");
    const key = new Uint8Array(16);
    crypto.getRandomValues(key);
    this.#key = bytesToBase64(key);
    headers.append("Sec-WebSocket-Key", this.#key);
    headers.append("Sec-WebSocket-Version", "13");
    const factories = options.extensions ?? [];
    if (factories.length !== 0) {
      headers.append(
        "Sec-WebSocket-Extensions",
        buildExtension(factories.map((factory) => [factory.name, factory.getRequestParams()])),
      );
    }
    const subprotocols = options.subprotocols ?? [];
    if (subprotocols.length !== 0) {
      headers.append("Sec-WebSocket-Protocol", buildSubprotocol(subprotocols));
    }
    if (options.additionalHeaders !== undefined) headers.update(options.additionalHeaders);
    if (options.userAgentHeader !== undefined && !headers.has("User-Agent")) {
      headers.append("User-Agent", options.userAgentHeader);
    }
    return new Request(uri.resourceName, headers);
  }

  /** Queues the handshake request for sending. */
  sendRequest(request: Request): void {
    if (this.state !== State.CONNECTING || this.request !== undefined) {
      throw new InvalidState(`cannot send a handshake request in state ${stateName(this.state)}`);
    }
    const key = request.headers.get("Sec-WebSocket-Key");
    if (key !== undefined) this.#key = key;
    this.request = request;
    this.logger?.debug(`> GET ${request.path} HTTP/1.1`);
    this.pushOutput(request.serialize());
  }

  /** Handles handshake bytes; returns the bytes that followed the handshake, if complete. */
  protected receiveHandshake(data: Uint8Array): Uint8Array | undefined {
    if (this.request === undefined) {
      throw new InvalidState("cannot receive a handshake response before sending the request");
    }
    const parser = this.#parser ??= new ResponseParser(this.httpLimits);
    let result;
    try {
      result = parser.feed(data);
    } catch (error) {
      this.#handshakeFailed(undefined, error);
      return undefined;
    }
    if (result === undefined) return undefined;
    this.#parser = undefined; // its buffers aren't needed any more
    this.#handleResponse(result.message);
    return result.rest;
  }

  /** Handles the end of the stream during the handshake. */
  protected receiveHandshakeEof(): void {
    if (this.handshakeError !== undefined || this.request === undefined) {
      if (this.handshakeError === undefined) {
        this.handshakeError = new InvalidHandshake("connection closed before the handshake");
      }
      return;
    }
    try {
      const parser = this.#parser ??= new ResponseParser(this.httpLimits);
      this.#handleResponse(parser.feedEof().message);
    } catch (error) {
      this.#handshakeFailed(undefined, error);
    }
  }

  #handleResponse(response: Response): void {
    this.response = response;
    this.logger?.debug(`< HTTP/1.1 ${response.statusCode} ${response.reasonPhrase}`);
    try {
      this.processResponse(response);
    } catch (error) {
      this.#handshakeFailed(response, error);
      return;
    }
    this.reader = new FrameReader({
      mask: false,
      maxSize: this.maxSize,
      allowedRsv: this.extensions.reduce((bits, extension) => bits | extension.rsvBits, 0),
    });
    this.setState(State.OPEN);
    this.pushEvent({ type: "response", response });
  }

  #handshakeFailed(response: Response | undefined, error: unknown): void {
    const exception = error instanceof Error ? error : new InvalidHandshake(String(error));
    this.handshakeError = exception;
    if (response !== undefined) {
      response.exception = exception;
      this.pushEvent({ type: "response", response });
    }
    this.sendEof();
    this.startDiscarding();
  }

  /** Checks the handshake response (RFC 6455 §4.1, §4.2.2) and negotiates extensions and subprotocol. */
  private processResponse(response: Response): void {
    if (response.statusCode !== 101) throw new InvalidStatus(response);
    const headers = response.headers;
    requireToken(headers, "Connection", parseConnection, "upgrade");
    const upgrade = headers.getAll("Upgrade").flatMap(parseUpgrade);
    if (upgrade.length !== 1 || upgrade[0].toLowerCase() !== "websocket") {
      throw new InvalidUpgrade("Upgrade", upgrade.length ? upgrade.join(", ") : undefined);
    }
    const accept = singleHeader(headers, "Sec-WebSocket-Accept")!;
    if (accept !== acceptKey(this.#key)) {
      throw new InvalidHeaderValue("Sec-WebSocket-Accept", accept);
    }
    const extensions = this.#negotiateExtensions(headers);
    this.extensions = extensions.length === 0 ? NO_EXTENSIONS : extensions;
    this.subprotocol = this.#negotiateSubprotocol(headers);
  }

  #negotiateExtensions(headers: Headers): Extension[] {
    const accepted: Extension[] = [];
    const values = headers.getAll("Sec-WebSocket-Extensions");
    if (values.length === 0) return accepted;
    const factories = this.#options.extensions ?? [];
    if (factories.length === 0) throw new InvalidHandshake("no extensions supported");
    const answers: ExtensionHeader[] = values.flatMap(parseExtension);
    for (const [name, params] of answers) {
      let extension: Extension | undefined;
      let lastError: unknown;
      for (const factory of factories) {
        if (factory.name !== name) continue;
        try {
          extension = factory.processResponseParams(params, accepted);
          break;
        } catch (error) {
          if (!(error instanceof NegotiationError)) throw error;
          lastError = error;
        }
      }
      if (extension === undefined) {
        if (lastError !== undefined) throw lastError;
        throw new NegotiationError(`unsupported extension: ${buildExtension([[name, params]])}`);
      }
      accepted.push(extension);
    }
    return accepted;
  }

  #negotiateSubprotocol(headers: Headers): string | undefined {
    const values = headers.getAll("Sec-WebSocket-Protocol");
    if (values.length === 0) return undefined;
    const offered = this.#options.subprotocols ?? [];
    if (offered.length === 0) throw new InvalidHandshake("no subprotocols supported");
    const chosen = values.flatMap(parseSubprotocol);
    if (chosen.length !== 1) {
      throw new InvalidHeader(
        "Sec-WebSocket-Protocol",
        chosen.join(", "),
        `multiple subprotocols: ${chosen.join(", ")}`,
      );
    }
    if (!offered.includes(chosen[0])) {
      throw new NegotiationError(`unsupported subprotocol: ${chosen[0]}`);
    }
    return chosen[0];
  }
}

// ---------------------------------------------------------------- Server

/**
 * Which origins a server accepts: a string matches exactly, a `RegExp` must
 * match the whole origin, `undefined` accepts requests without an `Origin`
 * header (e.g. non-browser clients).
 *
 * @example
 * ```ts
 * import type { OriginPattern } from "@denows/websockets/protocol";
 * const origins: OriginPattern[] = ["https://example.com", /https:\/\/[a-z]+\.example\.com/, undefined];
 * console.log(origins.length); // 3
 * ```
 */
export type OriginPattern = string | RegExp | undefined;

/**
 * Chooses a subprotocol among those the client offered; `undefined` for none.
 * Throwing a `NegotiationError` rejects the handshake with 400.
 *
 * @example
 * ```ts
 * import type { SelectSubprotocol } from "@denows/websockets/protocol";
 * const select: SelectSubprotocol = (offered) => offered.includes("chat.v2") ? "chat.v2" : undefined;
 * console.log(select(["chat.v1", "chat.v2"], undefined!)); // chat.v2
 * ```
 */
export type SelectSubprotocol = (offered: string[], request: Request) => string | undefined;

/** Options of {@linkcode ServerProtocol}. */
export interface ServerProtocolOptions extends ProtocolOptions {
  /**
   * Accepted origins; others are rejected with 403.
   *
   * @default {undefined} (any origin)
   */
  origins?: OriginPattern[];
  /**
   * Extensions the server supports, in order of preference.
   *
   * @default {undefined} (none)
   */
  extensions?: ServerExtensionFactory[];
  /**
   * Subprotocols the server supports; the first one the client offered is
   * chosen.
   *
   * @default {undefined} (none)
   */
  subprotocols?: string[];
  /**
   * Custom subprotocol selection, replacing the `subprotocols` rule.
   *
   * @default {undefined} (the `subprotocols` rule)
   */
  selectSubprotocol?: SelectSubprotocol;
  /**
   * Value of the `Server` header.
   *
   * @default {undefined} (no `Server` header)
   */
  serverHeader?: string;
}

/**
 * The server side: parses the handshake request (emitted as a `request`
 * event), checks it with {@linkcode ServerProtocol.prototype.accept}, which
 * returns the 101 response or the rejection, and sends it with
 * {@linkcode ServerProtocol.prototype.sendResponse}.
 *
 * Rejections: a malformed request or a bad header → 400; a missing or wrong
 * `Upgrade` / `Connection` → 426 with `Upgrade: websocket`;
 * `Sec-WebSocket-Version` other than 13 → 426 with
 * `Sec-WebSocket-Version: 13`; an origin not in `origins` → 403. The error
 * is stored on the response's `exception` and in `handshakeError`.
 *
 * @example
 * ```ts
 * import { ServerProtocol } from "@denows/websockets/protocol";
 * import { Headers } from "@denows/websockets/headers";
 * import { Request } from "@denows/websockets/http11";
 * const server = new ServerProtocol();
 * const response = server.accept(new Request("/", new Headers({ Host: "example.com" })));
 * console.log(response.statusCode, response.exception?.name); // 426 InvalidUpgrade
 * ```
 */
export class ServerProtocol extends Protocol {
  /** `false`: outgoing frames are not masked, incoming ones must be. */
  get isClient(): boolean {
    return false;
  }
  /** The handshake request, once received. */
  request: Request | undefined;
  /** The handshake response, once sent. */
  response: Response | undefined;
  readonly #options: ServerProtocolOptions;
  #parser: RequestParser | undefined;

  /** Creates the server side. */
  constructor(options: ServerProtocolOptions = {}) {
    super(options);
    this.#options = options;
  }

  /** Handles handshake bytes; returns the bytes that followed the handshake, if complete. */
  protected receiveHandshake(data: Uint8Array): Uint8Array | undefined {
    if (this.request !== undefined) {
      // Bytes after the request and before the response: keep them for the frame reader.
      (this.#pending ??= []).push(data);
      return undefined;
    }
    const parser = this.#parser ??= new RequestParser(this.httpLimits);
    let result;
    try {
      result = parser.feed(data);
    } catch (error) {
      const exception = error instanceof Error ? error : new InvalidHandshake(String(error));
      this.handshakeError = exception;
      const response = this.reject(
        400,
        `Failed to open a WebSocket connection: ${exception.message}.\n`,
      );
      response.exception = exception;
      this.sendResponse(response);
      return undefined;
    }
    if (result === undefined) return undefined;
    this.#parser = undefined; // its buffers aren't needed any more
    this.request = result.message;
    this.logger?.debug(`< GET ${this.request.path} HTTP/1.1`);
    if (result.rest.length !== 0) (this.#pending ??= []).push(result.rest);
    this.pushEvent({ type: "request", request: this.request });
    return undefined;
  }

  // Bytes that came after the request, before the response was sent.
  #pending: Uint8Array[] | undefined;

  /** Handles the end of the stream during the handshake. */
  protected receiveHandshakeEof(): void {
    if (this.handshakeError === undefined && this.response === undefined) {
      this.handshakeError = new InvalidHandshake(
        this.request === undefined
          ? "connection closed while reading the HTTP request"
          : "connection closed during the handshake",
      );
    }
  }

  /**
   * Checks the handshake request and returns the response to send: 101
   * with the negotiated extensions and subprotocol, or a rejection whose
   * `exception` says what was wrong.
   */
  accept(request: Request): Response {
    let accept: string, extensionHeader: string | undefined, subprotocol: string | undefined;
    let extensions: Extension[];
    try {
      [accept, extensionHeader, extensions, subprotocol] = this.#processRequest(request);
    } catch (error) {
      const exception = error instanceof Error ? error : new InvalidHandshake(String(error));
      request.exception = exception;
      this.handshakeError = exception;
      let response: Response;
      if (exception instanceof InvalidOrigin) {
        response = this.reject(
          403,
          `Failed to open a WebSocket connection: ${exception.message}.\n`,
        );
      } else if (exception instanceof InvalidUpgrade) {
        response = this.reject(
          426,
          `Failed to open a WebSocket connection: ${exception.message}.\n\n` +
            "You cannot access a WebSocket server directly with a browser. You need a WebSocket client.\n",
        );
        response.headers.set("Upgrade", "websocket");
      } else if (
        exception instanceof InvalidHeaderValue && exception.headerName === "Sec-WebSocket-Version"
      ) {
        response = this.reject(
          426,
          `Failed to open a WebSocket connection: ${exception.message}.\n`,
        );
        response.headers.set("Sec-WebSocket-Version", "13");
      } else if (exception instanceof InvalidHandshake) {
        response = this.reject(
          400,
          `Failed to open a WebSocket connection: ${exception.message}.\n`,
        );
      } else {
        response = this.reject(
          500,
          "Failed to open a WebSocket connection.\nSee server log for more information.\n",
        );
      }
      response.exception = exception;
      return response;
    }
    this.extensions = extensions.length === 0 ? NO_EXTENSIONS : extensions;
    this.subprotocol = subprotocol;
    const headers = new Headers();
    headers.append("Date", httpDate());
    headers.append("Upgrade", "websocket");
    headers.append("Connection", "Upgrade");
    headers.append("Sec-WebSocket-Accept", accept);
    if (extensionHeader !== undefined) headers.append("Sec-WebSocket-Extensions", extensionHeader);
    if (subprotocol !== undefined) headers.append("Sec-WebSocket-Protocol", subprotocol);
    if (this.#options.serverHeader !== undefined) {
      headers.append("Server", this.#options.serverHeader);
    }
    return new Response(101, "Switching Protocols", headers);
  }

  #processRequest(
    request: Request,
  ): [string, string | undefined, Extension[], string | undefined] {
    const headers = request.headers;
    requireToken(headers, "Connection", parseConnection, "upgrade");
    // RFC 6455 §4.2.1 requires "websocket"; other protocols may be listed too (RFC 7230 §6.7).
    requireToken(headers, "Upgrade", parseUpgrade, "websocket");
    // RFC 6455 §4.2.1 (and RFC 7230 §5.4): exactly one Host header.
    singleHeader(headers, "Host");
    const key = singleHeader(headers, "Sec-WebSocket-Key")!;
    // 22 base64 digits and the padding: 16 bytes, base64-encoded.
    if (!/^[A-Za-z0-9+/]{22}==$/.test(key)) {
      throw new InvalidHeaderValue("Sec-WebSocket-Key", key);
    }
    const version = singleHeader(headers, "Sec-WebSocket-Version")!;
    if (version !== "13") throw new InvalidHeaderValue("Sec-WebSocket-Version", version);
    this.#checkOrigin(headers);
    const [extensionHeader, extensions] = this.#negotiateExtensions(headers);
    const subprotocol = this.#negotiateSubprotocol(request);
    return [acceptKey(key), extensionHeader, extensions, subprotocol];
  }

  #checkOrigin(headers: Headers): void {
    const origins = this.#options.origins;
    if (origins === undefined) return;
    const origin = singleHeader(headers, "Origin", false);
    for (const pattern of origins) {
      if (pattern === undefined) {
        if (origin === undefined) return;
      } else if (origin !== undefined) {
        if (typeof pattern === "string") {
          if (pattern === origin) return;
        } else {
          // Anchored around the whole pattern, so that an alternative that
          // matches a prefix (`a|ab` on "ab") doesn't hide one that matches it all.
          const flags = pattern.flags.replace("g", "").replace("y", "");
          const match = new RegExp(`^(?:${pattern.source})$`, flags).exec(origin);
          if (match !== null && match[0] === origin) return;
        }
      }
    }
    throw new InvalidOrigin(origin);
  }

  #negotiateExtensions(headers: Headers): [string | undefined, Extension[]] {
    const accepted: Extension[] = [];
    const answers: ExtensionHeader[] = [];
    const factories = this.#options.extensions ?? [];
    const values = headers.getAll("Sec-WebSocket-Extensions");
    if (values.length === 0 || factories.length === 0) return [undefined, accepted];
    const offers: ExtensionHeader[] = values.flatMap(parseExtension);
    for (const [name, params] of offers) {
      for (const factory of factories) {
        if (factory.name !== name) continue;
        let answer: [ExtensionParameter[], Extension];
        try {
          answer = factory.processRequestParams(params, accepted);
        } catch (error) {
          // Decline this offer and try the next one.
          if (error instanceof NegotiationError) continue;
          throw error;
        }
        answers.push([name, answer[0]]);
        accepted.push(answer[1]);
        break;
      }
    }
    return [answers.length ? buildExtension(answers) : undefined, accepted];
  }

  #negotiateSubprotocol(request: Request): string | undefined {
    const offered = request.headers.getAll("Sec-WebSocket-Protocol").flatMap(parseSubprotocol);
    const select = this.#options.selectSubprotocol;
    if (select !== undefined) {
      const chosen = select(offered, request);
      if (chosen !== undefined && !offered.includes(chosen)) {
        throw new NegotiationError(`selected subprotocol wasn't offered: ${chosen}`);
      }
      return chosen;
    }
    const supported = this.#options.subprotocols ?? [];
    if (supported.length === 0 || offered.length === 0) return undefined;
    const chosen = offered.find((protocol) => supported.includes(protocol));
    if (chosen === undefined) {
      throw new NegotiationError(
        `invalid subprotocol; expected one of ${supported.join(", ")}`,
      );
    }
    return chosen;
  }

  /**
   * Builds an HTTP response with a plain-text body, to reject the handshake
   * or answer a plain HTTP request (`Connection: close`).
   */
  reject(statusCode: number, text: string): Response {
    const body = textEncoder.encode(text);
    const headers = new Headers();
    headers.append("Date", httpDate());
    headers.append("Connection", "close");
    headers.append("Content-Length", String(body.length));
    headers.append("Content-Type", "text/plain; charset=utf-8");
    if (this.#options.serverHeader !== undefined) {
      headers.append("Server", this.#options.serverHeader);
    }
    return new Response(statusCode, reasonPhrase(statusCode), headers, body);
  }

  /**
   * Queues the handshake response. A 101 response opens the connection;
   * anything else ends it: the transport is closed after the response.
   */
  sendResponse(response: Response): void {
    // After failConnection(), the transport is closing: no response may follow.
    if (this.state !== State.CONNECTING || this.response !== undefined || this.eofSent) {
      throw new InvalidState(`cannot send a handshake response in state ${stateName(this.state)}`);
    }
    this.response = response;
    this.logger?.debug(`> HTTP/1.1 ${response.statusCode} ${response.reasonPhrase}`);
    this.pushOutput(response.serialize());
    if (response.statusCode === 101) {
      this.reader = new FrameReader({
        mask: true,
        maxSize: this.maxSize,
        allowedRsv: this.extensions.reduce((bits, extension) => bits | extension.rsvBits, 0),
      });
      this.setState(State.OPEN);
      const pending = this.#pending ?? [];
      this.#pending = undefined;
      for (const chunk of pending) {
        if (this.eofReceived) break;
        this.receiveData(chunk);
      }
    } else {
      this.handshakeError ??= response.exception ??
        new InvalidHandshake(`handshake rejected with HTTP ${response.statusCode}`);
      this.sendEof();
      this.startDiscarding();
    }
  }
}
