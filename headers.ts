/**
 * HTTP headers for the opening handshake: {@linkcode Headers}, a
 * case-insensitive multi-value map that keeps the original names and order,
 * and parsers / builders for the header values the handshake uses
 * (`Connection`, `Upgrade`, `Sec-WebSocket-Extensions`,
 * `Sec-WebSocket-Protocol`, `Authorization: Basic`).
 *
 * Parsers follow the grammar of RFC 9110 (token, quoted-string, `#` lists)
 * and RFC 6455 §4 and §9.1. They throw `InvalidHeaderFormat` with the
 * position where parsing failed.
 *
 * @example
 * ```ts
 * import { Headers, parseConnection } from "@denows/websockets/headers";
 * const headers = new Headers({ Connection: "keep-alive, Upgrade" });
 * console.log(parseConnection(headers.get("connection")!)); // ["keep-alive", "Upgrade"]
 * ```
 *
 * @module
 */

import { InvalidHeaderFormat, InvalidHeaderValue } from "./errors.ts";

/**
 * Raised by {@linkcode Headers.prototype.get} when a header has more than one
 * value. The message names the header.
 *
 * @example
 * ```ts
 * import { Headers, MultipleValuesError } from "@denows/websockets/headers";
 * const headers = new Headers([["Via", "a"], ["Via", "b"]]);
 * try {
 *   headers.get("via");
 * } catch (error) {
 *   console.log(error instanceof MultipleValuesError); // true
 * }
 * ```
 */
export class MultipleValuesError extends Error {
  /** The header that has several values, as passed to `get`. */
  readonly headerName: string;
  /** Creates the error for the header `name`. */
  constructor(name: string) {
    super(`multiple values for header ${name}`);
    this.name = "MultipleValuesError";
    this.headerName = name;
  }
}

/**
 * What a {@linkcode Headers} can be built from or updated with: another
 * `Headers`, a WHATWG `Headers`, a record of names to values, or an iterable
 * of `[name, value]` pairs (where a name may repeat).
 *
 * @example
 * ```ts
 * import { Headers, type HeadersInput } from "@denows/websockets/headers";
 * const input: HeadersInput = [["Via", "a"], ["Via", "b"]];
 * console.log(new Headers(input).getAll("via")); // ["a", "b"]
 * ```
 */
export type HeadersInput =
  | Headers
  | globalThis.Headers
  | Record<string, string>
  | Iterable<[string, string]>;

// Lookup table of RFC 9110 tchar, indexed by char code (< 128).
const TCHAR = new Uint8Array(128);
for (const char of "!#$%&'*+-.^_`|~0123456789") TCHAR[char.charCodeAt(0)] = 1;
for (let code = 0x41; code <= 0x5a; code++) TCHAR[code] = TCHAR[code + 0x20] = 1;

function isTchar(code: number): boolean {
  return code < 128 && TCHAR[code] === 1;
}

/**
 * Whether `value` is an RFC 9110 token: one or more of the letters, digits
 * and ``!#$%&'*+-.^_`|~``.
 *
 * @example
 * ```ts
 * import { isToken } from "@denows/websockets/headers";
 * console.log(isToken("permessage-deflate"), isToken("a b"), isToken("")); // true false false
 * ```
 */
export function isToken(value: string): boolean {
  if (value.length === 0) return false;
  for (let i = 0; i < value.length; i++) {
    if (!isTchar(value.charCodeAt(i))) return false;
  }
  return true;
}

/**
 * Checks that `name` is a valid header name (an RFC 9110 token).
 *
 * @throws {InvalidHeaderFormat} if it is empty or has a character that is not
 * allowed in a token; the error gives its position.
 *
 * @example
 * ```ts
 * import { validateHeaderName } from "@denows/websockets/headers";
 * validateHeaderName("Sec-WebSocket-Key"); // ok
 * try {
 *   validateHeaderName("Bad Name");
 * } catch (error) {
 *   console.log((error as Error).name); // InvalidHeaderFormat
 * }
 * ```
 */
export function validateHeaderName(name: string): void {
  if (name.length === 0) {
    throw new InvalidHeaderFormat(name, "empty header name", name, 0);
  }
  for (let i = 0; i < name.length; i++) {
    if (!isTchar(name.charCodeAt(i))) {
      throw new InvalidHeaderFormat(name, "invalid character in header name", name, i);
    }
  }
}

/**
 * Checks that `value` can be sent as the value of header `name`: only
 * ISO-8859-1 characters (code points up to U+00FF, sent as one byte each) and
 * no CR, LF or NUL (RFC 9110 §5.5), so a value can never split a header line.
 *
 * @throws {InvalidHeaderValue} naming the header, the character and its
 * position.
 *
 * @example
 * ```ts
 * import { validateHeaderValue } from "@denows/websockets/headers";
 * validateHeaderValue("X-Name", "café"); // ok: é is U+00E9
 * try {
 *   validateHeaderValue("X-Name", "a\r\nb");
 * } catch (error) {
 *   console.log((error as Error).name); // InvalidHeaderValue
 * }
 * ```
 */
export function validateHeaderValue(name: string, value: string): void {
  for (let i = 0; i < value.length; i++) {
    const code = value.charCodeAt(i);
    if (code > 0xff || code === 0x0d || code === 0x0a || code === 0x00) {
      const hex = code.toString(16).toUpperCase().padStart(4, "0");
      throw new InvalidHeaderValue(
        name,
        value,
        `invalid ${name} header: forbidden character U+${hex} at ${i}`,
      );
    }
  }
}

// Up to this many items (names and values), Headers holds them in an array of exactly their size.
const EXACT_ITEMS = 32;

/**
 * HTTP headers: a case-insensitive map from header names to one or more
 * values that keeps every `[name, value]` pair in insertion order with the
 * name as it was given.
 *
 * - `get(name)` returns `undefined` when there is no value, the value when
 *   there is exactly one, and throws {@linkcode MultipleValuesError} when
 *   there are several; `getAll(name)` returns every value.
 * - `append(name, value)` adds a value; `set(name, value)` replaces all values
 *   with one; `delete(name)` removes every value (slow: it rebuilds the list
 *   of pairs).
 * - Iteration (`for…of`, `keys()`) yields each distinct name once, lower-cased;
 *   `rawItems()` yields every pair as given.
 *
 * Names must be tokens and values ISO-8859-1 without CR, LF or NUL; see
 * {@linkcode validateHeaderName} and {@linkcode validateHeaderValue}.
 *
 * @example
 * ```ts
 * import { Headers } from "@denows/websockets/headers";
 * const headers = new Headers({ Host: "example.com" });
 * headers.append("Sec-WebSocket-Protocol", "chat");
 * headers.append("Sec-WebSocket-Protocol", "superchat");
 * console.log(headers.get("host")); // example.com
 * console.log(headers.getAll("sec-websocket-protocol")); // ["chat", "superchat"]
 * console.log([...headers]); // ["host", "sec-websocket-protocol"]
 * ```
 */
export class Headers implements Iterable<string> {
  // Every pair in order, flat: name as given, value, name, value… Lookups
  // scan it: a handshake has a handful of headers (at most maxNumHeaders),
  // and one array per instance holds far less memory than a map of arrays.
  #items: string[] = [];

  /**
   * Creates headers, optionally filled from another `Headers`, a WHATWG
   * `Headers`, a record or `[name, value]` pairs.
   *
   * @throws {InvalidHeaderFormat} for an invalid name.
   * @throws {InvalidHeaderValue} for an invalid value.
   */
  constructor(init?: HeadersInput) {
    if (init !== undefined) this.update(init);
  }

  /** The number of distinct header names. */
  get size(): number {
    let size = 0;
    for (let i = 0; i < this.#items.length; i += 2) {
      if (this.#indexOf(this.#items[i]) === i) size++;
    }
    return size;
  }

  /**
   * The value of header `name` (case-insensitive): `undefined` if absent, the
   * value if there is exactly one.
   *
   * @throws {MultipleValuesError} if the header has several values.
   */
  get(name: string): string | undefined {
    const index = this.#indexOf(name);
    if (index === -1) return undefined;
    if (this.#indexOf(name, index + 2) !== -1) throw new MultipleValuesError(name);
    return this.#items[index + 1];
  }

  /** Every value of header `name` (case-insensitive), in order; a new array, possibly empty. */
  getAll(name: string): string[] {
    const values: string[] = [];
    const items = this.#items;
    for (let i = 0; i < items.length; i += 2) {
      if (sameName(items[i], name)) values.push(items[i + 1]);
    }
    return values;
  }

  /** Whether header `name` (case-insensitive) has at least one value. */
  has(name: string): boolean {
    return this.#indexOf(name) !== -1;
  }

  /**
   * Adds `value` to header `name`, after its existing values.
   *
   * @throws {InvalidHeaderFormat} if `name` is not a token.
   * @throws {InvalidHeaderValue} if `value` has a character above U+00FF, CR,
   * LF or NUL.
   */
  append(name: string, value: string): void {
    validateHeaderName(name);
    validateHeaderValue(name, value);
    this.#add(name, value);
  }

  /**
   * Replaces every value of header `name` with `value`, which goes at the end
   * of {@linkcode Headers.prototype.rawItems}.
   *
   * @throws {InvalidHeaderFormat} if `name` is not a token.
   * @throws {InvalidHeaderValue} if `value` is not a valid header value.
   */
  set(name: string, value: string): void {
    validateHeaderName(name);
    validateHeaderValue(name, value);
    this.delete(name);
    this.#add(name, value);
  }

  /** Removes every value of header `name`; returns whether there was any. */
  delete(name: string): boolean {
    if (this.#indexOf(name) === -1) return false;
    const items = this.#items;
    const kept: string[] = [];
    for (let i = 0; i < items.length; i += 2) {
      if (!sameName(items[i], name)) kept.push(items[i], items[i + 1]);
    }
    this.#items = kept;
    return true;
  }

  /** Removes every header. */
  clear(): void {
    this.#items = [];
  }

  /**
   * Appends every header of `other` (a `Headers`, a WHATWG `Headers`, a
   * record or `[name, value]` pairs) to these headers.
   *
   * @throws {InvalidHeaderFormat} for an invalid name.
   * @throws {InvalidHeaderValue} for an invalid value.
   */
  update(other: HeadersInput): void {
    if (other instanceof Headers) {
      // Already validated.
      const items = other.#items;
      for (let i = 0; i < items.length; i += 2) this.#add(items[i], items[i + 1]);
    } else if (isIterable(other)) {
      for (const [name, value] of other) this.append(name, value);
    } else {
      for (const [name, value] of Object.entries(other)) this.append(name, value);
    }
  }

  /** A copy of these headers, independent of them. */
  copy(): Headers {
    return new Headers(this);
  }

  /**
   * Whether `other` holds the same headers: the same names (compared
   * case-insensitively) with the same values in the same order for each name.
   * The relative order of different names does not matter.
   */
  equals(other: Headers): boolean {
    if (other.size !== this.size) return false;
    const items = this.#items;
    for (let i = 0; i < items.length; i += 2) {
      const name = items[i];
      if (this.#indexOf(name) !== i) continue; // each name once
      const values = this.getAll(name);
      const otherValues = other.getAll(name);
      if (otherValues.length !== values.length) return false;
      for (let j = 0; j < values.length; j++) {
        if (values[j] !== otherValues[j]) return false;
      }
    }
    return true;
  }

  /** Every `[name, value]` pair in insertion order, with names as given. */
  rawItems(): IterableIterator<[string, string]> {
    const pairs: [string, string][] = [];
    const items = this.#items;
    for (let i = 0; i < items.length; i += 2) pairs.push([items[i], items[i + 1]]);
    return pairs[Symbol.iterator]();
  }

  /** Each distinct header name once, lower-cased, in order of first appearance. */
  keys(): IterableIterator<string> {
    const keys: string[] = [];
    const items = this.#items;
    for (let i = 0; i < items.length; i += 2) {
      if (this.#indexOf(items[i]) === i) keys.push(items[i].toLowerCase());
    }
    return keys[Symbol.iterator]();
  }

  /** Same as {@linkcode Headers.prototype.keys}. */
  [Symbol.iterator](): IterableIterator<string> {
    return this.keys();
  }

  /**
   * The header block as sent on the wire: one `Name: value\r\n` line per pair
   * in insertion order, then the empty line `\r\n` that ends the block.
   */
  toString(): string {
    const items = this.#items;
    const parts: string[] = [];
    for (let i = 0; i < items.length; i += 2) parts.push(items[i], ": ", items[i + 1], "\r\n");
    parts.push("\r\n");
    return parts.join("");
  }

  /** {@linkcode Headers.prototype.toString} as ISO-8859-1 bytes (one byte per character). */
  serialize(): Uint8Array {
    const text = this.toString();
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  #add(name: string, value: string): void {
    const items = this.#items;
    const length = items.length;
    if (length >= EXACT_ITEMS) {
      items.push(name, value);
      return;
    }
    // A handful of pairs grows by exactly one pair, into a new array of exactly their size
    // (push() and a spread leave room): a connection keeps its handshake's request and response
    // headers, where push() would leave room for about 8 more pairs in each. (Copied in a loop:
    // concat() with strings takes the runtime's slow path, a few times slower per handshake.)
    const grown = new Array<string>(length + 2);
    for (let i = 0; i < length; i++) grown[i] = items[i];
    grown[length] = name;
    grown[length + 1] = value;
    this.#items = grown;
  }

  // The index in #items of the first pair named `name` at or after `from`, or -1.
  #indexOf(name: string, from: number = 0): number {
    const items = this.#items;
    for (let i = from; i < items.length; i += 2) {
      if (sameName(items[i], name)) return i;
    }
    return -1;
  }
}

// Whether two header names are equal ignoring ASCII case (valid names are ASCII tokens).
function sameName(a: string, b: string): boolean {
  if (a === b) return true;
  const length = a.length;
  if (length !== b.length) return false;
  for (let i = 0; i < length; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    const lower = x | 0x20;
    if ((x ^ y) !== 0x20 || lower < 0x61 || lower > 0x7a) return false;
  }
  return true;
}

function isIterable(value: object): value is Iterable<[string, string]> {
  return typeof (value as Partial<Iterable<unknown>>)[Symbol.iterator] === "function";
}

// ---------------------------------------------------------------------------
// Header value grammar (RFC 9110 §5.6).

function skipOWS(header: string, pos: number): number {
  while (pos < header.length) {
    const code = header.charCodeAt(pos);
    if (code !== 0x20 && code !== 0x09) break;
    pos++;
  }
  return pos;
}

function parseToken(header: string, pos: number, name: string): [string, number] {
  let end = pos;
  while (end < header.length && isTchar(header.charCodeAt(end))) end++;
  if (end === pos) throw new InvalidHeaderFormat(name, "expected token", header, pos);
  return [header.slice(pos, end), end];
}

// quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE; returns the unquoted content.
function parseQuotedString(header: string, pos: number, name: string): [string, number] {
  // The caller has checked that header[pos] is the opening DQUOTE.
  let value = "";
  let i = pos + 1;
  while (i < header.length) {
    const code = header.charCodeAt(i);
    if (code === 0x22) return [value, i + 1];
    if (code === 0x5c) {
      const next = i + 1 < header.length ? header.charCodeAt(i + 1) : -1;
      if (!(next === 0x09 || (next >= 0x20 && next <= 0x7e) || (next >= 0x80 && next <= 0xff))) {
        throw new InvalidHeaderFormat(name, "invalid quoted-pair", header, i);
      }
      value += header[i + 1];
      i += 2;
      continue;
    }
    if (!(code === 0x09 || (code >= 0x20 && code <= 0x7e) || (code >= 0x80 && code <= 0xff))) {
      throw new InvalidHeaderFormat(name, "invalid character in quoted string", header, i);
    }
    value += header[i];
    i++;
  }
  throw new InvalidHeaderFormat(name, "unterminated quoted string", header, i);
}

// A `1#item` list (RFC 9110 §5.6.1): empty elements are tolerated, but at
// least one element is required.
function parseList<T>(
  parseItem: (header: string, pos: number, name: string) => [T, number],
  header: string,
  name: string,
): T[] {
  const items: T[] = [];
  let pos = skipOWS(header, 0);
  // Skip leading empty elements.
  while (header[pos] === ",") pos = skipOWS(header, pos + 1);
  for (;;) {
    const [item, end] = parseItem(header, pos, name);
    items.push(item);
    pos = skipOWS(header, end);
    if (pos === header.length) return items;
    if (header[pos] !== ",") throw new InvalidHeaderFormat(name, "expected comma", header, pos);
    // Skip the comma and any empty elements after it.
    while (header[pos] === ",") pos = skipOWS(header, pos + 1);
    if (pos === header.length) return items;
  }
}

/**
 * Parses a `Connection` header value: a comma-separated list of tokens
 * (RFC 9110 §7.6.1), returned as given; compare them case-insensitively.
 *
 * @throws {InvalidHeaderFormat} if the value is not a non-empty list of tokens.
 *
 * @example
 * ```ts
 * import { parseConnection } from "@denows/websockets/headers";
 * console.log(parseConnection("keep-alive, Upgrade")); // ["keep-alive", "Upgrade"]
 * ```
 */
export function parseConnection(header: string): string[] {
  return parseList(parseToken, header, "Connection");
}

function parseUpgradeProtocol(header: string, pos: number, name: string): [string, number] {
  // protocol = protocol-name ["/" protocol-version]
  let [, end] = parseToken(header, pos, name);
  if (header[end] === "/") [, end] = parseToken(header, end + 1, name);
  return [header.slice(pos, end), end];
}

/**
 * Parses an `Upgrade` header value: a comma-separated list of protocols,
 * each a token optionally followed by `/` and a version token
 * (RFC 9110 §7.8), returned as given; compare them case-insensitively.
 *
 * @throws {InvalidHeaderFormat} if the value is not a non-empty list of protocols.
 *
 * @example
 * ```ts
 * import { parseUpgrade } from "@denows/websockets/headers";
 * console.log(parseUpgrade("HTTP/2.0, websocket")); // ["HTTP/2.0", "websocket"]
 * ```
 */
export function parseUpgrade(header: string): string[] {
  return parseList(parseUpgradeProtocol, header, "Upgrade");
}

/**
 * An extension parameter: its name and its value, `undefined` when the
 * parameter has no value (e.g. `client_max_window_bits`).
 *
 * @example
 * ```ts
 * import type { ExtensionParameter } from "@denows/websockets/headers";
 * const params: ExtensionParameter[] = [["server_max_window_bits", "10"], ["client_no_context_takeover", undefined]];
 * console.log(params.length); // 2
 * ```
 */
export type ExtensionParameter = [string, string | undefined];

/**
 * One extension of a `Sec-WebSocket-Extensions` header: its name and its
 * parameters, in order.
 *
 * @example
 * ```ts
 * import type { ExtensionHeader } from "@denows/websockets/headers";
 * const extension: ExtensionHeader = ["permessage-deflate", [["client_max_window_bits", undefined]]];
 * console.log(extension[0]); // permessage-deflate
 * ```
 */
export type ExtensionHeader = [name: string, params: ExtensionParameter[]];

function parseExtensionParameter(
  header: string,
  pos: number,
  name: string,
): [ExtensionParameter, number] {
  // extension-param = token [ "=" ( token | quoted-string ) ]
  const [paramName, nameEnd] = parseToken(header, pos, name);
  pos = skipOWS(header, nameEnd);
  if (header[pos] !== "=") return [[paramName, undefined], nameEnd];
  pos = skipOWS(header, pos + 1);
  if (header[pos] !== '"') {
    const [value, end] = parseToken(header, pos, name);
    return [[paramName, value], end];
  }
  const [value, end] = parseQuotedString(header, pos, name);
  // RFC 6455 §9.1: a quoted value must be a token once unquoted.
  if (!isToken(value)) {
    throw new InvalidHeaderFormat(name, "invalid quoted header content", header, pos);
  }
  return [[paramName, value], end];
}

function parseExtensionItem(header: string, pos: number, name: string): [ExtensionHeader, number] {
  // extension = extension-token *( ";" extension-param )
  const [extensionName, nameEnd] = parseToken(header, pos, name);
  const params: ExtensionParameter[] = [];
  let end = nameEnd;
  for (;;) {
    pos = skipOWS(header, end);
    if (header[pos] !== ";") return [[extensionName, params], end];
    const [param, paramEnd] = parseExtensionParameter(header, skipOWS(header, pos + 1), name);
    params.push(param);
    end = paramEnd;
  }
}

/**
 * Parses a `Sec-WebSocket-Extensions` header value (RFC 6455 §9.1) into a
 * list of extensions with their parameters. Parameter values may be tokens or
 * quoted strings; a quoted value is unquoted and must then be a token.
 *
 * @throws {InvalidHeaderFormat} if the value doesn't match the grammar.
 *
 * @example
 * ```ts
 * import { parseExtension } from "@denows/websockets/headers";
 * console.log(parseExtension('permessage-deflate; client_max_window_bits="10", x-foo'));
 * // [["permessage-deflate", [["client_max_window_bits", "10"]]], ["x-foo", []]]
 * ```
 */
export function parseExtension(header: string): ExtensionHeader[] {
  return parseList(parseExtensionItem, header, "Sec-WebSocket-Extensions");
}

function checkToken(header: string, what: string, value: string): void {
  if (!isToken(value)) {
    throw new InvalidHeaderValue(
      header,
      value,
      `invalid ${header} header: ${what} must be a token: ${JSON.stringify(value)}`,
    );
  }
}

/**
 * Builds a `Sec-WebSocket-Extensions` header value from extensions and their
 * parameters, e.g. `permessage-deflate; client_max_window_bits, x-foo`.
 *
 * @throws {InvalidHeaderValue} if the list is empty or a name or value is
 * not a token.
 *
 * @example
 * ```ts
 * import { buildExtension } from "@denows/websockets/headers";
 * console.log(buildExtension([
 *   ["permessage-deflate", [["client_max_window_bits", undefined]]],
 *   ["x-foo", [["level", "3"]]],
 * ])); // permessage-deflate; client_max_window_bits, x-foo; level=3
 * ```
 */
export function buildExtension(extensions: ExtensionHeader[]): string {
  const header = "Sec-WebSocket-Extensions";
  if (extensions.length === 0) {
    throw new InvalidHeaderValue(header, "", `invalid ${header} header: no extensions`);
  }
  return extensions.map(([name, params]) => {
    checkToken(header, "extension name", name);
    let text = name;
    for (const [paramName, value] of params) {
      checkToken(header, "parameter name", paramName);
      if (value === undefined) {
        text += `; ${paramName}`;
      } else {
        checkToken(header, "parameter value", value);
        text += `; ${paramName}=${value}`;
      }
    }
    return text;
  }).join(", ");
}

/**
 * Parses a `Sec-WebSocket-Protocol` header value: a comma-separated list of
 * subprotocol tokens (RFC 6455 §4.1).
 *
 * @throws {InvalidHeaderFormat} if the value is not a non-empty list of tokens.
 *
 * @example
 * ```ts
 * import { parseSubprotocol } from "@denows/websockets/headers";
 * console.log(parseSubprotocol("chat, superchat")); // ["chat", "superchat"]
 * ```
 */
export function parseSubprotocol(header: string): string[] {
  return parseList(parseToken, header, "Sec-WebSocket-Protocol");
}

/**
 * Builds a `Sec-WebSocket-Protocol` header value from subprotocol names.
 *
 * @throws {InvalidHeaderValue} if the list is empty or a name is not a token.
 *
 * @example
 * ```ts
 * import { buildSubprotocol } from "@denows/websockets/headers";
 * console.log(buildSubprotocol(["chat", "superchat"])); // chat, superchat
 * ```
 */
export function buildSubprotocol(protocols: string[]): string {
  const header = "Sec-WebSocket-Protocol";
  if (protocols.length === 0) {
    throw new InvalidHeaderValue(header, "", `invalid ${header} header: no subprotocols`);
  }
  for (const protocol of protocols) checkToken(header, "subprotocol", protocol);
  return protocols.join(", ");
}

function bytesToBinaryString(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return text;
}

/**
 * Builds an `Authorization` header value for HTTP Basic authentication
 * (RFC 7617): `Basic ` and the base64 of the UTF-8 bytes of
 * `username:password`.
 *
 * @throws {InvalidHeaderValue} if `username` contains `:`.
 *
 * @example
 * ```ts
 * import { buildAuthorizationBasic } from "@denows/websockets/headers";
 * console.log(buildAuthorizationBasic("Aladdin", "open sesame")); // Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==
 * ```
 */
export function buildAuthorizationBasic(username: string, password: string): string {
  if (username.includes(":")) {
    throw new InvalidHeaderValue(
      "Authorization",
      undefined,
      "invalid Authorization header: the username must not contain ':'",
    );
  }
  const bytes = new TextEncoder().encode(`${username}:${password}`);
  return `Basic ${btoa(bytesToBinaryString(bytes))}`;
}

const TOKEN68 = /^[A-Za-z0-9\-._~+/]+=*/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Parses an `Authorization` header value for HTTP Basic authentication
 * (RFC 7617) into `[username, password]`. The scheme is case-insensitive;
 * the credentials are decoded as UTF-8.
 *
 * @throws {InvalidHeaderFormat} if the value doesn't match `scheme SP token68`.
 * @throws {InvalidHeaderValue} if the scheme isn't Basic, or the credentials
 * aren't base64 of UTF-8 `username:password`.
 *
 * @example
 * ```ts
 * import { parseAuthorizationBasic } from "@denows/websockets/headers";
 * console.log(parseAuthorizationBasic("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")); // ["Aladdin", "open sesame"]
 * ```
 */
export function parseAuthorizationBasic(header: string): [username: string, password: string] {
  const name = "Authorization";
  const [scheme, schemeEnd] = parseToken(header, 0, name);
  if (scheme.toLowerCase() !== "basic") {
    throw new InvalidHeaderValue(
      name,
      header,
      `invalid ${name} header: unsupported scheme: ${scheme}`,
    );
  }
  if (header[schemeEnd] !== " ") {
    throw new InvalidHeaderFormat(name, "expected space after scheme", header, schemeEnd);
  }
  let pos = schemeEnd;
  while (header[pos] === " ") pos++;
  const match = TOKEN68.exec(header.slice(pos));
  if (match === null) throw new InvalidHeaderFormat(name, "expected token68", header, pos);
  const credentials = match[0];
  pos = skipOWS(header, pos + credentials.length);
  if (pos !== header.length) {
    throw new InvalidHeaderFormat(name, "expected end of header", header, pos);
  }
  if (!BASE64.test(credentials)) {
    throw new InvalidHeaderValue(
      name,
      header,
      `invalid ${name} header: expected base64-encoded credentials`,
    );
  }
  const binary = atob(credentials);
  const bytes = Uint8Array.from(binary, (char) => char.charCodeAt(0));
  let userPass: string;
  try {
    userPass = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new InvalidHeaderValue(name, header, `invalid ${name} header: credentials aren't UTF-8`);
  }
  const colon = userPass.indexOf(":");
  if (colon === -1) {
    throw new InvalidHeaderValue(
      name,
      header,
      `invalid ${name} header: expected username:password`,
    );
  }
  return [userPass.slice(0, colon), userPass.slice(colon + 1)];
}
