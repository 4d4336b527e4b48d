/**
 * The HTTP/1.1 messages of the opening handshake: {@linkcode Request} and
 * {@linkcode Response}, their serialization, and incremental parsers
 * ({@linkcode RequestParser}, {@linkcode ResponseParser}) that enforce limits
 * on the number of headers, the length of a line and the size of a body
 * before reading further.
 *
 * Header bytes are decoded as ISO-8859-1, one character per byte.
 *
 * @example
 * ```ts
 * import { ResponseParser } from "@denows/websockets/http11";
 * const parser = new ResponseParser();
 * const head = new TextEncoder().encode(
 *   "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
 * );
 * const bytes = new Uint8Array([...head, 0x81, 0x00]); // the handshake and a frame
 * const result = parser.feed(bytes)!;
 * console.log(result.message.statusCode, result.rest); // 101 Uint8Array(2) [ 129, 0 ]
 * ```
 *
 * @module
 */

import { allocate, concat, EMPTY } from "./_bytes.ts";
import { InvalidHeaderValue, InvalidMessage, InvalidState, SecurityError } from "./errors.ts";
import { Headers, parseConnection } from "./headers.ts";

/**
 * Limits that protect a parser from an oversized or malicious message. Each
 * is checked before more data is read, and breaking one throws
 * `SecurityError` with a message that names the limit.
 *
 * @example
 * ```ts
 * import { type HttpLimits, RequestParser } from "@denows/websockets/http11";
 * const limits: HttpLimits = { maxNumHeaders: 32, maxLineLength: 4096 };
 * const parser = new RequestParser(limits);
 * console.log(parser instanceof RequestParser); // true
 * ```
 */
export interface HttpLimits {
  /**
   * Most header lines accepted (trailers of a chunked body included).
   *
   * @default {128}
   */
  maxNumHeaders?: number;
  /**
   * Longest line accepted, in bytes, without its CRLF.
   *
   * @default {8192}
   */
  maxLineLength?: number;
  /**
   * Largest response body accepted, in bytes, after chunked decoding.
   *
   * @default {1_048_576} (1 MiB)
   */
  maxBodySize?: number;
}

/**
 * A message parsed by {@linkcode RequestParser} or
 * {@linkcode ResponseParser}, with the bytes received after it (e.g.
 * WebSocket frames that arrived in the same chunk as the handshake).
 *
 * @example
 * ```ts
 * import { type ParseResult, Request } from "@denows/websockets/http11";
 * import { Headers } from "@denows/websockets/headers";
 * const result: ParseResult<Request> = { message: new Request("/", new Headers()), rest: new Uint8Array() };
 * console.log(result.message.path); // /
 * ```
 */
export interface ParseResult<T> {
  /** The parsed message. */
  message: T;
  /**
   * The bytes that followed the message, possibly empty; possibly a view of
   * the last chunk fed rather than a copy.
   */
  rest: Uint8Array;
}

const DEFAULT_MAX_NUM_HEADERS = 128;
const DEFAULT_MAX_LINE_LENGTH = 8192;
const DEFAULT_MAX_BODY_SIZE = 1024 * 1024;

const CR = 0x0d;
const LF = 0x0a;

// Shortens text read from the wire before it goes into an error message.
function excerpt(text: string): string {
  return text.length > 200 ? `${text.slice(0, 200)}...` : text;
}

// Reused by decodeLatin1: `String.fromCharCode.apply` over a plain array of
// codes is several times faster than spreading a typed array.
const latin1Codes: number[] = [];

// The text of bytes[start, end) (no view made for it).
function decodeLatin1(bytes: Uint8Array, start: number, end: number): string {
  let text = "";
  for (let i = start; i < end; i += 4096) {
    const stop = Math.min(i + 4096, end);
    latin1Codes.length = stop - i;
    for (let j = i; j < stop; j++) latin1Codes[j - i] = bytes[j];
    text += String.fromCharCode.apply(null, latin1Codes);
  }
  return text;
}

const textEncoder = new TextEncoder();

// A message as bytes: `head` (start line and header block, characters up to U+00FF only, as
// the callers check) one byte per character, then `body`; one buffer, written once, a view of
// the shared slab when small (see allocate()). An ASCII head (nearly every one) is its own
// UTF-8 encoding: the runtime's encoder writes it faster than a loop does. (Any other
// character takes two bytes in UTF-8: the encoder then writes more bytes than it reads, and
// the loop writes the head again.)
function serializeMessage(head: string, body?: Uint8Array): Uint8Array {
  const length = head.length;
  const bytes = allocate(length + (body === undefined ? 0 : body.length), 0);
  const { read, written } = textEncoder.encodeInto(head, bytes);
  if (read !== length || written !== length) {
    for (let i = 0; i < length; i++) bytes[i] = head.charCodeAt(i);
  }
  if (body !== undefined) bytes.set(body, length);
  return bytes;
}

// request-target: visible ASCII characters only.
function isValidTarget(target: string): boolean {
  if (target.length === 0) return false;
  for (let i = 0; i < target.length; i++) {
    const code = target.charCodeAt(i);
    if (code < 0x21 || code > 0x7e) return false;
  }
  return true;
}

// reason-phrase = *( HTAB / SP / VCHAR / obs-text )
function isValidReason(reason: string): boolean {
  for (let i = 0; i < reason.length; i++) {
    const code = reason.charCodeAt(i);
    if (!(code === 0x09 || (code >= 0x20 && code <= 0x7e) || (code >= 0x80 && code <= 0xff))) {
      return false;
    }
  }
  return true;
}

/**
 * A WebSocket handshake request: `GET path HTTP/1.1` and headers, no body.
 *
 * @example
 * ```ts
 * import { Headers } from "@denows/websockets/headers";
 * import { Request } from "@denows/websockets/http11";
 * const request = new Request("/chat?room=1", new Headers({ Host: "example.com" }));
 * console.log(new TextDecoder().decode(request.serialize())); // GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\n\r\n
 * ```
 */
export class Request {
  /** The request target, including the query, e.g. `/chat?room=1`. */
  path: string;
  /** The request headers. */
  headers: Headers;
  /** The error raised while processing this request, if any. */
  exception?: Error;

  /** Creates a request for `path` with `headers`. */
  constructor(path: string, headers: Headers, exception?: Error) {
    this.path = path;
    this.headers = headers;
    if (exception !== undefined) this.exception = exception;
  }

  /**
   * Parses one complete request; see {@linkcode RequestParser} for the rules.
   *
   * @throws {InvalidMessage} if `bytes` holds an incomplete request or
   * anything after it, or a malformed request.
   * @throws {SecurityError} if a limit is exceeded.
   * @throws {InvalidHeader} subclasses for invalid header names or values.
   */
  static parse(bytes: Uint8Array, limits?: HttpLimits): Request {
    const result = new RequestParser(limits).feed(bytes);
    if (result === undefined) {
      throw new InvalidMessage("incomplete HTTP request");
    }
    if (result.rest.length > 0) {
      throw new InvalidMessage(`${result.rest.length} unexpected bytes after HTTP request`);
    }
    return result.message;
  }

  /**
   * The request as bytes: the request line, the headers and the empty line.
   * New bytes; a small request is written into a view of a shared slab, as
   * `Frame.prototype.serialize` writes a small frame (each view owns its
   * bytes; the slab is never reused).
   *
   * @throws {InvalidMessage} if `path` is empty or has a character other
   * than visible ASCII.
   */
  serialize(): Uint8Array {
    if (!isValidTarget(this.path)) {
      throw new InvalidMessage(`invalid HTTP request target: ${JSON.stringify(this.path)}`);
    }
    return serializeMessage(`GET ${this.path} HTTP/1.1\r\n${this.headers}`);
  }
}

/**
 * A WebSocket handshake response: status line, headers and an optional body.
 *
 * `body` is `undefined` for responses that can't have one (1xx, 204, 304);
 * otherwise it is the body, possibly empty. `serialize()` writes headers and
 * body as they are: set `Content-Length` yourself when sending a body.
 *
 * @example
 * ```ts
 * import { Headers } from "@denows/websockets/headers";
 * import { Response } from "@denows/websockets/http11";
 * const body = new TextEncoder().encode("Forbidden\n");
 * const headers = new Headers({ "Content-Length": String(body.length) });
 * const response = new Response(403, "Forbidden", headers, body);
 * console.log(response.serialize().length); // 56
 * ```
 */
export class Response {
  /** The status code, from 100 to 599. */
  statusCode: number;
  /** The reason phrase, e.g. `Switching Protocols`. */
  reasonPhrase: string;
  /** The response headers. */
  headers: Headers;
  /** The body, `undefined` when the response has none. */
  body?: Uint8Array;
  /** The error raised while processing this response, if any. */
  exception?: Error;

  /** Creates a response. */
  constructor(
    statusCode: number,
    reasonPhrase: string,
    headers: Headers,
    body?: Uint8Array,
    exception?: Error,
  ) {
    this.statusCode = statusCode;
    this.reasonPhrase = reasonPhrase;
    this.headers = headers;
    if (body !== undefined) this.body = body;
    if (exception !== undefined) this.exception = exception;
  }

  /**
   * Parses one complete response; a response without `Content-Length` or
   * chunked encoding has a body that runs to the end of `bytes`. See
   * {@linkcode ResponseParser} for the rules.
   *
   * @throws {InvalidMessage} if `bytes` holds an incomplete response or
   * anything after it, or a malformed response.
   * @throws {SecurityError} if a limit is exceeded.
   * @throws {InvalidHeader} subclasses for invalid header names or values.
   */
  static parse(bytes: Uint8Array, limits?: HttpLimits): Response {
    const parser = new ResponseParser(limits);
    const result = parser.feed(bytes) ?? parser.feedEof();
    if (result.rest.length > 0) {
      throw new InvalidMessage(`${result.rest.length} unexpected bytes after HTTP response`);
    }
    return result.message;
  }

  /**
   * The response as bytes: status line, headers, empty line, then the body.
   * New bytes; a response of up to 1 KiB is written into a view of a shared
   * slab, as `Frame.prototype.serialize` writes a small frame (each view
   * owns its bytes; the slab is never reused).
   *
   * @throws {InvalidMessage} if the status code isn't an integer from 100 to
   * 599 or the reason phrase has a control character other than HTAB or a
   * character above U+00FF.
   */
  serialize(): Uint8Array {
    const { statusCode, reasonPhrase } = this;
    if (!Number.isInteger(statusCode) || statusCode < 100 || statusCode > 599) {
      throw new InvalidMessage(`invalid HTTP status code: ${statusCode}`);
    }
    if (!isValidReason(reasonPhrase)) {
      throw new InvalidMessage(`invalid HTTP reason phrase: ${JSON.stringify(reasonPhrase)}`);
    }
    return serializeMessage(`HTTP/1.1 ${statusCode} ${reasonPhrase}\r\n${this.headers}`, this.body);
  }
}

// The bytes of the message being parsed: unread bytes live in buf[start, end). A chunk fed while
// nothing is unread is parsed where it is, without a copy (a handshake usually comes whole in
// one read); bytes still unread when the feed ends are copied into a buffer of the queue's own
// (see keep()), since the caller may reuse its chunk. Later chunks are appended there, with the
// buffer doubling when full, so buffering costs O(n) overall; lines are searched for in new
// bytes only.
class ByteQueue {
  #buf: Uint8Array = EMPTY;
  #start = 0;
  #end = 0;
  // Where the search for LF resumes: bytes in [start, scan) hold no LF.
  #scan = 0;
  // Whether #buf is the queue's own buffer rather than the chunk being fed.
  #owned = false;

  get available(): number {
    return this.#end - this.#start;
  }

  push(chunk: Uint8Array): void {
    const length = chunk.length;
    const unread = this.#end - this.#start;
    if (unread === 0) {
      this.#buf = chunk;
      this.#start = this.#scan = 0;
      this.#end = length;
      this.#owned = false;
      return;
    }
    // Unread bytes are in a buffer of the queue's own: keep() ran when the last feed ended.
    if (this.#end + length > this.#buf.length) {
      if (unread + length <= this.#buf.length) {
        this.#buf.copyWithin(0, this.#start, this.#end);
      } else {
        const buf = new Uint8Array(Math.max(unread + length, this.#buf.length * 2, 1024));
        buf.set(this.#buf.subarray(this.#start, this.#end));
        this.#buf = buf;
      }
      this.#scan -= this.#start;
      this.#start = 0;
      this.#end = unread;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += length;
  }

  // Copies the unread bytes, if they are still in the chunk fed, into a buffer of the queue's own.
  keep(): void {
    const unread = this.#end - this.#start;
    if (this.#owned || unread === 0) return;
    const buf = new Uint8Array(Math.max(unread * 2, 1024));
    buf.set(this.#buf.subarray(this.#start, this.#end));
    this.#buf = buf;
    this.#scan -= this.#start;
    this.#start = 0;
    this.#end = unread;
    this.#owned = true;
  }

  // The next line without its CRLF, or undefined if it is incomplete.
  readLine(maxLength: number, what: string): string | undefined {
    const buf = this.#buf;
    const start = this.#start;
    const end = this.#end;
    let lf = this.#scan;
    while (lf < end && buf[lf] !== LF) lf++;
    if (lf === end) {
      this.#scan = end;
      // Fail as soon as the line can't fit, even before its end arrives;
      // a final CR may be the start of the CRLF.
      const length = end - start;
      if (length > maxLength + 1 || (length === maxLength + 1 && buf[end - 1] !== CR)) {
        throw new SecurityError(`line too long: limit is ${maxLength} bytes`);
      }
      return undefined;
    }
    if (lf === start || buf[lf - 1] !== CR) {
      const line = decodeLatin1(buf, start, lf);
      throw new InvalidMessage(`bare LF at end of HTTP ${what}: ${excerpt(line)}`);
    }
    if (lf - 1 - start > maxLength) {
      throw new SecurityError(`line too long: limit is ${maxLength} bytes`);
    }
    this.#start = this.#scan = lf + 1;
    return decodeLatin1(buf, start, lf - 1);
  }

  // A copy of the next `length` bytes (at most `available`).
  take(length: number): Uint8Array {
    const bytes = this.#buf.slice(this.#start, this.#start + length);
    this.#start += length;
    if (this.#scan < this.#start) this.#scan = this.#start;
    return bytes;
  }

  // Every unread byte, as a view (of the chunk fed, when they came in it); the queue is not
  // used afterwards.
  rest(): Uint8Array {
    const bytes = this.#buf.subarray(this.#start, this.#end);
    this.#start = this.#end;
    return bytes;
  }
}

type Phase =
  | "start-line"
  | "headers"
  | "body-length"
  | "chunk-size"
  | "chunk-data"
  | "chunk-end"
  | "trailers"
  | "body-eof"
  | "done";

function checkLimit(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 0) {
    throw new RangeError(`${name} must be a non-negative integer: ${value}`);
  }
  return value;
}

// The state machine shared by both parsers: start line, header lines, then
// the body framing chosen by `onHead`.
class MessageReader {
  readonly kind: "request" | "response";
  readonly maxNumHeaders: number;
  readonly maxLineLength: number;
  readonly maxBodySize: number;
  readonly queue: ByteQueue = new ByteQueue();
  phase: Phase = "start-line";
  headers: Headers = new Headers();
  numHeaders = 0;
  bodyParts: Uint8Array[] = [];
  bodySize = 0;
  // Bytes left in the Content-Length body or in the current chunk.
  remaining = 0;
  hasBody = false;
  error: unknown = undefined;
  #onStartLine: (line: string) => void;
  #onHead: (reader: MessageReader) => void;

  // `onStartLine` validates the first line; `onHead` runs after the empty
  // line that ends the headers and sets `phase` to the body framing.
  constructor(
    kind: "request" | "response",
    limits: HttpLimits | undefined,
    onStartLine: (line: string) => void,
    onHead: (reader: MessageReader) => void,
  ) {
    this.kind = kind;
    this.maxNumHeaders = checkLimit(
      "maxNumHeaders",
      limits?.maxNumHeaders,
      DEFAULT_MAX_NUM_HEADERS,
    );
    this.maxLineLength = checkLimit(
      "maxLineLength",
      limits?.maxLineLength,
      DEFAULT_MAX_LINE_LENGTH,
    );
    this.maxBodySize = checkLimit("maxBodySize", limits?.maxBodySize, DEFAULT_MAX_BODY_SIZE);
    this.#onStartLine = onStartLine;
    this.#onHead = onHead;
  }

  // Feeds bytes; returns whether the message is complete.
  feed(chunk: Uint8Array): boolean {
    this.#checkUsable();
    try {
      this.queue.push(chunk);
      if (this.#advance()) return true;
      this.queue.keep();
      return false;
    } catch (error) {
      this.error = error;
      throw error;
    }
  }

  // Signals the end of the stream; throws unless the body runs to it.
  feedEof(): void {
    this.#checkUsable();
    if (this.phase === "body-eof") {
      this.phase = "done";
      return;
    }
    const where = this.phase === "start-line"
      ? (this.kind === "request" ? "request line" : "status line")
      : `${this.kind} ${this.phase === "headers" ? "headers" : "body"}`;
    this.error = new InvalidMessage(`connection closed while reading HTTP ${where}`);
    throw this.error;
  }

  body(): Uint8Array {
    return this.bodyParts.length === 1 ? this.bodyParts[0] : concat(this.bodyParts);
  }

  #checkUsable(): void {
    if (this.error !== undefined) throw this.error;
    if (this.phase === "done") {
      throw new InvalidState(`HTTP ${this.kind} parser already returned a message`);
    }
  }

  #readLine(what: string): string | undefined {
    return this.queue.readLine(this.maxLineLength, what);
  }

  #readBody(): void {
    const length = Math.min(this.remaining, this.queue.available);
    if (length > 0) {
      this.bodyParts.push(this.queue.take(length));
      this.remaining -= length;
    }
  }

  #advance(): boolean {
    for (;;) {
      switch (this.phase) {
        case "start-line": {
          const line = this.#readLine(this.kind === "request" ? "request line" : "status line");
          if (line === undefined) return false;
          this.#onStartLine(line);
          this.phase = "headers";
          break;
        }
        case "headers": {
          const line = this.#readLine("header line");
          if (line === undefined) return false;
          if (line === "") this.#onHead(this);
          else this.#parseHeaderLine(line, this.headers);
          break;
        }
        case "body-length": {
          this.#readBody();
          if (this.remaining > 0) return false;
          this.phase = "done";
          break;
        }
        case "chunk-size": {
          const line = this.#readLine("chunk size line");
          if (line === undefined) return false;
          this.#parseChunkSize(line);
          break;
        }
        case "chunk-data": {
          this.#readBody();
          if (this.remaining > 0) return false;
          this.phase = "chunk-end";
          break;
        }
        case "chunk-end": {
          const line = this.#readLine("chunk data");
          if (line === undefined) return false;
          if (line !== "") {
            throw new InvalidMessage(`expected CRLF after chunk data, got: ${excerpt(line)}`);
          }
          this.phase = "chunk-size";
          break;
        }
        case "trailers": {
          const line = this.#readLine("trailer line");
          if (line === undefined) return false;
          // Trailers are validated and counted, then dropped.
          if (line === "") this.phase = "done";
          else this.#parseHeaderLine(line, new Headers());
          break;
        }
        case "body-eof": {
          const length = this.queue.available;
          if (this.bodySize + length > this.maxBodySize) {
            throw new SecurityError(
              `body too large: ${this.bodySize + length} bytes received; ` +
                `limit is ${this.maxBodySize} bytes`,
            );
          }
          if (length > 0) this.bodyParts.push(this.queue.take(length));
          this.bodySize += length;
          return false;
        }
        case "done":
          return true;
      }
    }
  }

  #parseHeaderLine(line: string, headers: Headers): void {
    if (this.numHeaders >= this.maxNumHeaders) {
      throw new SecurityError(`too many HTTP headers: limit is ${this.maxNumHeaders}`);
    }
    const first = line.charCodeAt(0);
    if (first === 0x20 || first === 0x09) {
      throw new InvalidMessage(`obsolete line folding in HTTP headers: ${excerpt(line)}`);
    }
    const colon = line.indexOf(":");
    if (colon === -1) throw new InvalidMessage(`invalid HTTP header line: ${excerpt(line)}`);
    const name = line.slice(0, colon);
    // Strip OWS around the value. (append() checks the name and the value.)
    let start = colon + 1;
    let end = line.length;
    while (start < end && (line[start] === " " || line[start] === "\t")) start++;
    while (end > start && (line[end - 1] === " " || line[end - 1] === "\t")) end--;
    headers.append(common(name), common(line.slice(start, end)));
    this.numHeaders++;
  }

  #parseChunkSize(line: string): void {
    // chunk-size [ chunk-ext ]: hex digits, then optional extensions, ignored.
    const match = /^([0-9A-Fa-f]+)[ \t]*(?:;.*)?$/.exec(line);
    if (match === null) throw new InvalidMessage(`invalid HTTP chunk size line: ${excerpt(line)}`);
    const size = parseInt(match[1], 16);
    if (size === 0) {
      this.phase = "trailers";
      return;
    }
    if (this.bodySize + size > this.maxBodySize) {
      throw new SecurityError(
        `body too large: chunk of 0x${excerpt(match[1])} bytes after ${this.bodySize} bytes; ` +
          `limit is ${this.maxBodySize} bytes`,
      );
    }
    this.bodySize += size;
    this.remaining = size;
    this.phase = "chunk-data";
  }
}

// Header names and values that nearly every handshake has, spelled as they usually are: a
// parsed header that matches one keeps this string rather than a copy of its own, so that a
// server's idle connections don't each hold a copy of "Sec-WebSocket-Version: 13".
const COMMON = new Map(
  [
    "Host",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Accept",
    "Origin",
    "User-Agent",
    "Accept-Encoding",
    "Accept-Language",
    "Cache-Control",
    "Pragma",
    "Cookie",
    "Authorization",
    "Server",
    "Date",
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "origin",
    "user-agent",
    "websocket",
    "Upgrade",
    "keep-alive, Upgrade",
    "13",
    "no-cache",
    "gzip, deflate, br, zstd",
    "gzip, deflate, br",
    "permessage-deflate; client_max_window_bits",
  ].map((text) => [text, text]),
);

function common(text: string): string {
  return COMMON.get(text) ?? text;
}

function parseContentLength(headers: Headers): number | undefined {
  const values = headers.getAll("Content-Length");
  if (values.length === 0) return undefined;
  // Repeated identical values are tolerated (RFC 9110 §8.6).
  const value = values[0];
  if (!/^[0-9]+$/.test(value) || values.some((other) => other !== value)) {
    throw new InvalidHeaderValue("Content-Length", values.join(", "));
  }
  return Number(value);
}

// The request target parsed last, whose string the next request for the same target reuses.
let lastPath = "";

/**
 * Incremental parser for a handshake request, as a server receives it.
 *
 * Feed it bytes as they arrive; it returns the request and the bytes after
 * it once the request is complete. Rules:
 *
 * - request line `GET <target> HTTP/1.1`: other methods and versions are
 *   rejected; the target (visible ASCII) is kept verbatim as `path`;
 * - lines end with CRLF; a bare LF, a line folded with leading whitespace
 *   (obs-fold) or a header line without `:` is rejected;
 * - no body: `Content-Length` other than `0`, or any `Transfer-Encoding`,
 *   throws `InvalidMessage`;
 * - `maxNumHeaders`, `maxLineLength` ({@linkcode HttpLimits}) are enforced
 *   with `SecurityError`, a line as soon as it grows past the limit.
 *
 * After returning a request, or throwing, the parser is finished: `feed`
 * throws the same error again, or `InvalidState` after success.
 *
 * @example
 * ```ts
 * import { RequestParser } from "@denows/websockets/http11";
 * const parser = new RequestParser();
 * const encoder = new TextEncoder();
 * console.log(parser.feed(encoder.encode("GET /chat HTTP/1.1\r\nHost: exa"))); // undefined
 * const result = parser.feed(encoder.encode("mple.com\r\n\r\n"))!;
 * console.log(result.message.path, result.message.headers.get("host")); // /chat example.com
 * ```
 */
export class RequestParser {
  #reader: MessageReader;
  #path = "";
  #request: Request | undefined;

  /**
   * Creates a parser with the given limits.
   *
   * @throws {RangeError} if a limit is not a non-negative integer.
   */
  constructor(limits?: HttpLimits) {
    this.#reader = new MessageReader(
      "request",
      limits,
      (line) => this.#onStartLine(line),
      (reader) => this.#onHead(reader),
    );
  }

  /**
   * Feeds the next bytes received; returns `undefined` while the request is
   * incomplete, then the request and the bytes that followed it.
   *
   * @throws {InvalidMessage} for a malformed request.
   * @throws {SecurityError} when a limit is exceeded.
   * @throws {InvalidHeader} subclasses for invalid header names or values.
   * @throws {InvalidState} if the parser already returned a request.
   */
  feed(chunk: Uint8Array): ParseResult<Request> | undefined {
    if (!this.#reader.feed(chunk)) return undefined;
    return { message: this.#request!, rest: this.#reader.queue.rest() };
  }

  /**
   * Signals that the connection closed; a request can't end there, so this
   * always throws.
   *
   * @throws {InvalidMessage} saying what was being read.
   * @throws {InvalidState} if the parser already returned a request.
   */
  feedEof(): never {
    this.#reader.feedEof();
    // Unreachable: a request never runs to the end of the connection.
    throw new InvalidState("HTTP request parser received end of stream");
  }

  #onStartLine(line: string): void {
    const first = line.indexOf(" ");
    const second = first === -1 ? -1 : line.indexOf(" ", first + 1);
    if (second === -1 || line.indexOf(" ", second + 1) !== -1) {
      throw new InvalidMessage(`invalid HTTP request line: ${excerpt(line)}`);
    }
    const method = line.slice(0, first);
    const target = line.slice(first + 1, second);
    const version = line.slice(second + 1);
    if (version !== "HTTP/1.1") {
      throw new InvalidMessage(`unsupported HTTP version; expected HTTP/1.1: ${excerpt(line)}`);
    }
    if (method !== "GET") {
      throw new InvalidMessage(`unsupported HTTP method; expected GET: ${excerpt(line)}`);
    }
    if (!isValidTarget(target)) {
      throw new InvalidMessage(`invalid HTTP request target: ${excerpt(line)}`);
    }
    // Clients of one server mostly ask for the same path: they share its string.
    if (target === lastPath) this.#path = lastPath;
    else this.#path = lastPath = target;
  }

  #onHead(reader: MessageReader): void {
    const headers = reader.headers;
    if (headers.has("Transfer-Encoding")) {
      throw new InvalidMessage("unsupported HTTP request body: Transfer-Encoding in request");
    }
    const contentLength = parseContentLength(headers);
    if (contentLength !== undefined && contentLength !== 0) {
      throw new InvalidMessage(
        `unsupported HTTP request body: Content-Length: ${contentLength}`,
      );
    }
    this.#request = new Request(this.#path, headers);
    reader.phase = "done";
  }
}

/**
 * Options of {@linkcode ResponseParser}.
 *
 * @example
 * ```ts
 * import { ResponseParser } from "@denows/websockets/http11";
 * const parser = new ResponseParser(undefined, { connect: true });
 * const bytes = new TextEncoder().encode("HTTP/1.0 200 Connection established\r\n\r\n");
 * console.log(parser.feed(bytes)!.message.statusCode); // 200
 * ```
 */
export interface ResponseParserOptions {
  /**
   * The response answers a `CONNECT` request sent to a proxy: `HTTP/1.0` is
   * accepted as well as `HTTP/1.1`, and the response ends at the empty line
   * whatever its status. What follows is left in `rest` unread: after a 2xx
   * it belongs to the tunnel (RFC 9110 §9.3.6); after another status the
   * body is not wanted, and the caller closes the connection.
   *
   * @default {false}
   */
  connect?: boolean;
}

/**
 * Incremental parser for a handshake response, as a client receives it.
 *
 * Feed it bytes as they arrive; it returns the response and the bytes after
 * it once the response is complete. Rules:
 *
 * - status line `HTTP/1.1 NNN reason`: other versions are rejected; the
 *   status code is three digits from 100 to 599; the reason phrase (possibly
 *   empty) has no control character but HTAB;
 * - lines end with CRLF; bare LF, obs-fold and header lines without `:` are
 *   rejected;
 * - body: none for 1xx, 204 and 304 (a `101 Switching Protocols` ends at the
 *   empty line and everything after it is `rest`); otherwise
 *   `Transfer-Encoding: chunked` (decoded, trailers dropped), else
 *   `Content-Length`, else everything until the connection closes (call
 *   {@linkcode ResponseParser.prototype.feedEof}). Other transfer codings,
 *   or both headers at once, are rejected;
 * - `maxNumHeaders`, `maxLineLength` and `maxBodySize`
 *   ({@linkcode HttpLimits}) are enforced with `SecurityError`; a declared
 *   `Content-Length` or chunk size over the limit fails before its bytes are read.
 *
 * After returning a response, or throwing, the parser is finished.
 *
 * @example
 * ```ts
 * import { ResponseParser } from "@denows/websockets/http11";
 * const parser = new ResponseParser();
 * const bytes = new TextEncoder().encode("HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!");
 * const { message } = parser.feed(bytes)!;
 * console.log(message.statusCode, new TextDecoder().decode(message.body)); // 404 nope!
 * ```
 */
export class ResponseParser {
  #reader: MessageReader;
  #statusCode = 0;
  #reasonPhrase = "";
  #connect: boolean;

  /**
   * Creates a parser with the given limits.
   *
   * @throws {RangeError} if a limit is not a non-negative integer.
   */
  constructor(limits?: HttpLimits, options: ResponseParserOptions = {}) {
    this.#connect = options.connect ?? false;
    this.#reader = new MessageReader(
      "response",
      limits,
      (line) => this.#onStartLine(line),
      (reader) => this.#onHead(reader),
    );
  }

  /**
   * Feeds the next bytes received; returns `undefined` while the response is
   * incomplete, then the response and the bytes that followed it.
   *
   * @throws {InvalidMessage} for a malformed response.
   * @throws {SecurityError} when a limit is exceeded.
   * @throws {InvalidHeader} subclasses for invalid header names or values.
   * @throws {InvalidState} if the parser already returned a response.
   */
  feed(chunk: Uint8Array): ParseResult<Response> | undefined {
    if (!this.#reader.feed(chunk)) return undefined;
    return this.#result();
  }

  /**
   * Signals that the connection closed: completes a response whose body runs
   * to the end of the connection.
   *
   * @throws {InvalidMessage} `connection closed while reading HTTP ...`
   * (status line, response headers or response body) if the response is
   * incomplete.
   * @throws {InvalidState} if the parser already returned a response.
   */
  feedEof(): ParseResult<Response> {
    this.#reader.feedEof();
    return this.#result();
  }

  #result(): ParseResult<Response> {
    const reader = this.#reader;
    const response = new Response(
      this.#statusCode,
      this.#reasonPhrase,
      reader.headers,
      reader.hasBody ? reader.body() : undefined,
    );
    return { message: response, rest: reader.queue.rest() };
  }

  #onStartLine(line: string): void {
    const match = /^([^ ]*) ([^ ]*)(?: (.*))?$/s.exec(line);
    if (match === null) throw new InvalidMessage(`invalid HTTP status line: ${excerpt(line)}`);
    const [, version, code, reason = ""] = match;
    if (version !== "HTTP/1.1" && !(this.#connect && version === "HTTP/1.0")) {
      throw new InvalidMessage(`unsupported HTTP version; expected HTTP/1.1: ${excerpt(line)}`);
    }
    if (!/^[0-9]{3}$/.test(code) || Number(code) < 100 || Number(code) > 599) {
      throw new InvalidMessage(`invalid HTTP status code: ${excerpt(line)}`);
    }
    if (!isValidReason(reason)) {
      throw new InvalidMessage(`invalid HTTP reason phrase: ${excerpt(line)}`);
    }
    this.#statusCode = Number(code);
    this.#reasonPhrase = reason;
  }

  #onHead(reader: MessageReader): void {
    const statusCode = this.#statusCode;
    if (this.#connect || statusCode < 200 || statusCode === 204 || statusCode === 304) {
      reader.phase = "done";
      return;
    }
    reader.hasBody = true;
    const headers = reader.headers;
    const contentLength = parseContentLength(headers);
    if (headers.has("Transfer-Encoding")) {
      const value = headers.getAll("Transfer-Encoding").join(", ");
      if (contentLength !== undefined) {
        throw new InvalidMessage(
          "both Transfer-Encoding and Content-Length in HTTP response",
        );
      }
      const codings = parseTransferCodings("Transfer-Encoding", value);
      if (codings.length !== 1 || codings[0].toLowerCase() !== "chunked") {
        throw new InvalidHeaderValue(
          "Transfer-Encoding",
          value,
          `unsupported transfer coding: ${value}`,
        );
      }
      reader.phase = "chunk-size";
    } else if (contentLength !== undefined) {
      if (contentLength > reader.maxBodySize) {
        throw new SecurityError(
          `body too large: Content-Length is ${excerpt(headers.getAll("Content-Length")[0])} ` +
            `bytes; limit is ${reader.maxBodySize} bytes`,
        );
      }
      reader.remaining = contentLength;
      reader.bodySize = contentLength;
      reader.phase = "body-length";
    } else {
      reader.phase = "body-eof";
    }
  }
}

// Transfer-Encoding is a list of tokens (parameters are not supported).
function parseTransferCodings(name: string, value: string): string[] {
  try {
    return parseConnection(value);
  } catch {
    throw new InvalidHeaderValue(name, value, `unsupported transfer coding: ${value}`);
  }
}

const REASON_PHRASES: Record<number, string> = {
  100: "Continue",
  101: "Switching Protocols",
  200: "OK",
  201: "Created",
  202: "Accepted",
  204: "No Content",
  301: "Moved Permanently",
  302: "Found",
  303: "See Other",
  304: "Not Modified",
  307: "Temporary Redirect",
  308: "Permanent Redirect",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  409: "Conflict",
  410: "Gone",
  413: "Content Too Large",
  426: "Upgrade Required",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

/**
 * The standard reason phrase of an HTTP status code (RFC 9110), or a
 * generic one by class (`"Error"` for an unknown 4xx/5xx, `"OK"` for 2xx…).
 *
 * @example
 * ```ts
 * import { reasonPhrase } from "@denows/websockets/http11";
 * console.log(reasonPhrase(426), reasonPhrase(299)); // Upgrade Required OK
 * ```
 */
export function reasonPhrase(statusCode: number): string {
  const phrase = REASON_PHRASES[statusCode];
  if (phrase !== undefined) return phrase;
  if (statusCode < 200) return "Informational";
  if (statusCode < 300) return "OK";
  if (statusCode < 400) return "Redirection";
  return "Error";
}
