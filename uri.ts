/**
 * Parse and validate WebSocket URIs (`ws:` and `wss:`, RFC 6455 §3).
 *
 * {@linkcode parseUri} splits a URI into the parts a client needs to open a
 * connection: whether to use TLS, the host and port to connect to, the
 * resource name for the request line, and the credentials for HTTP Basic
 * authentication. It accepts IRIs and converts them to URI form.
 *
 * This module uses no runtime-specific API: it runs in Deno, Node, Bun and
 * browsers.
 *
 * @example
 * ```ts
 * import { parseUri } from "@denows/websockets/uri";
 * const uri = parseUri("wss://example.com/chat?room=1");
 * console.log(uri.host, uri.port, uri.resourceName); // example.com 443 /chat?room=1
 * ```
 *
 * @module
 */

import { InvalidURI } from "./errors.ts";

/**
 * A parsed WebSocket URI.
 *
 * Every field is in URI form: an IRI given to {@linkcode parseUri} has its
 * host converted with IDNA (punycode) and its path, query and user info
 * percent-encoded as UTF-8. User info is not decoded.
 *
 * `host` is normalized to lower case. An IPv6 address is stored without its
 * brackets (`::1`, like the host name a socket API takes); {@linkcode
 * WebSocketURI.toString} puts them back.
 *
 * @example
 * ```ts
 * import { WebSocketURI } from "@denows/websockets/uri";
 * const uri = new WebSocketURI(false, "::1", 8080, "/x", "", undefined, undefined);
 * console.log(uri.toString()); // ws://[::1]:8080/x
 * ```
 */
export class WebSocketURI {
  /** `true` for a `wss` URI, `false` for a `ws` URI. */
  readonly secure: boolean;
  /** Host name or IP address, in lower case; an IPv6 address has no brackets. */
  readonly host: string;
  /** Port, always set: 80 or 443 when the URI does not give one. */
  readonly port: number;
  /** Path, possibly empty (`ws://host` has the path `""`); it never contains `?`. */
  readonly path: string;
  /** Query without its leading `?`, empty when the URI has no query. */
  readonly query: string;
  /** User name in URI (percent-encoded) form, `undefined` when the URI has no user info. */
  readonly username: string | undefined;
  /** Password in URI (percent-encoded) form, `undefined` when the URI has no user info. */
  readonly password: string | undefined;

  /**
   * Creates a WebSocket URI from its parts. The parts are stored as given;
   * use {@linkcode parseUri} to parse and validate a URI string.
   */
  constructor(
    secure: boolean,
    host: string,
    port: number,
    path: string,
    query: string,
    username?: string,
    password?: string,
  ) {
    this.secure = secure;
    this.host = host;
    this.port = port;
    this.path = path;
    this.query = query;
    this.username = username;
    this.password = password;
  }

  /**
   * The resource name sent in the request line: the path (`/` when it is
   * empty), followed by `?` and the query when the query is not empty.
   *
   * @example
   * ```ts
   * import { parseUri } from "@denows/websockets/uri";
   * console.log(parseUri("ws://example.com?x=1").resourceName); // /?x=1
   * ```
   */
  get resourceName(): string {
    const path = this.path === "" ? "/" : this.path;
    return this.query === "" ? path : `${path}?${this.query}`;
  }

  /**
   * The user name and password, in URI (percent-encoded) form, or
   * `undefined` when the URI has no user info.
   *
   * @example
   * ```ts
   * import { parseUri } from "@denows/websockets/uri";
   * console.log(parseUri("ws://alice:secret@example.com/").userInfo); // ["alice", "secret"]
   * ```
   */
  get userInfo(): [username: string, password: string] | undefined {
    if (this.username === undefined) return undefined;
    return [this.username, this.password ?? ""];
  }

  /**
   * The URI in string form: the scheme, the user info when present, the host
   * (in brackets for an IPv6 address), the port when it is not the default
   * for the scheme, and the {@linkcode WebSocketURI.resourceName}.
   *
   * @example
   * ```ts
   * import { parseUri } from "@denows/websockets/uri";
   * console.log(parseUri("WSS://Example.COM:443").toString()); // wss://example.com/
   * ```
   */
  toString(): string {
    const scheme = this.secure ? "wss" : "ws";
    const userInfo = this.username === undefined ? "" : `${this.username}:${this.password ?? ""}@`;
    const host = this.host.includes(":") ? `[${this.host}]` : this.host;
    const port = this.port === (this.secure ? 443 : 80) ? "" : `:${this.port}`;
    return `${scheme}://${userInfo}${host}${port}${this.resourceName}`;
  }
}

const MAX_PORT = 65535;

/** Spaces, C0 and C1 controls, DEL, and UTF-16 surrogates without their other half. */
const FORBIDDEN =
  // deno-lint-ignore no-control-regex -- control characters are what this pattern finds
  /[\x00-\x20\x7F-\x9F]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * Characters kept as they are in a path, query or user info: RFC 3986
 * unreserved characters, delimiters, and `%` (checked separately so that
 * existing percent-encoded octets are kept).
 */
const KEPT = /^[A-Za-z0-9\-._~:/?#[\]@!$&'()*+,;=]$/;

/** Characters allowed in a registered name (RFC 3986 §3.2.2), plus any non-ASCII character. */
const HOST_NAME = /^[A-Za-z0-9\-._~!$&'()*+,;=%\u0080-\uFFFF]+$/;

/** Characters allowed in an IPv6 address. */
const IPV6_ADDRESS = /^[0-9A-Fa-f:.]+$/;

/** Characters that make a host name go through IDNA: non-ASCII, or percent-encoded octets. */
const NEEDS_IDNA = /[\u0080-\uFFFF%]/;

const HEX_DIGITS = /^[0-9A-Fa-f]{2}$/;

/**
 * Converts an IRI component to URI form: every character that is neither an
 * RFC 3986 unreserved character nor a delimiter is percent-encoded as UTF-8.
 * A `%` that starts a percent-encoded octet is kept, so nothing is encoded
 * twice; a `%` that does not is encoded as `%25`.
 */
function quote(component: string): string {
  let result = "";
  let index = 0;
  for (const char of component) {
    if (KEPT.test(char)) {
      result += char;
    } else if (char === "%") {
      result += HEX_DIGITS.test(component.slice(index + 1, index + 3)) ? "%" : "%25";
    } else {
      result += encodeURIComponent(char);
    }
    index += char.length;
  }
  return result;
}

/** Returns whether `hostname` is accepted by the WHATWG URL parser, and its ASCII form. */
function toAsciiHost(hostname: string): string | undefined {
  try {
    return new URL(`http://${hostname}/`).hostname;
  } catch {
    return undefined;
  }
}

/** Parses `host[:port]` from the authority; returns the host and the port, if any. */
function parseHostPort(uri: string, hostPort: string): [string, string | undefined] {
  let host: string;
  let rest: string;
  if (hostPort.startsWith("[")) {
    const end = hostPort.indexOf("]");
    if (end < 0) throw new InvalidURI(uri, `invalid host: ${hostPort} has no closing bracket`);
    const address = hostPort.slice(1, end);
    rest = hostPort.slice(end + 1);
    if (rest !== "" && !rest.startsWith(":")) {
      throw new InvalidURI(
        uri,
        `invalid host: unexpected ${rest} after ${hostPort.slice(0, end + 1)}`,
      );
    }
    if (!IPV6_ADDRESS.test(address) || toAsciiHost(`[${address}]`) === undefined) {
      throw new InvalidURI(uri, `invalid host: [${address}] isn't an IPv6 address`);
    }
    host = address.toLowerCase();
  } else {
    const colon = hostPort.indexOf(":");
    const name = colon < 0 ? hostPort : hostPort.slice(0, colon);
    rest = colon < 0 ? "" : hostPort.slice(colon);
    if (name === "") throw new InvalidURI(uri, "hostname isn't provided");
    const ascii = HOST_NAME.test(name) ? toAsciiHost(name) : undefined;
    if (ascii === undefined) throw new InvalidURI(uri, `invalid host: ${name}`);
    host = NEEDS_IDNA.test(name) ? ascii : name.toLowerCase();
  }
  return [host, rest === "" ? undefined : rest.slice(1)];
}

/** Validates the port given after the host; `undefined` or `""` means the default port. */
function parsePort(uri: string, port: string | undefined, secure: boolean): number {
  if (port === undefined || port === "") return secure ? 443 : 80;
  if (!/^[0-9]+$/.test(port)) throw new InvalidURI(uri, `port isn't a number: ${port}`);
  const value = Number(port);
  if (value > MAX_PORT) {
    throw new InvalidURI(uri, `port ${port} is out of range: the limit is ${MAX_PORT}`);
  }
  if (value === 0) {
    throw new InvalidURI(uri, "port 0 can't be connected to: ports range from 1 to 65535");
  }
  return value;
}

/**
 * Parses and validates a WebSocket URI.
 *
 * The URI is split as RFC 3986 describes (scheme, authority, path, query);
 * the path and query are kept as written, without resolving dot segments or
 * changing `\` to `/`. The result is in URI form:
 *
 * - the scheme is `ws` or `wss`, in any case;
 * - the host is required and lower-cased; a non-ASCII (or percent-encoded)
 *   host name is converted to ASCII with IDNA (`høst` → `xn--hst-0na`); an
 *   IPv6 address is written in brackets and stored without them;
 * - the port defaults to 80 for `ws` and 443 for `wss`; an explicit port must
 *   range from 1 to 65535;
 * - in the path, query and user info, characters outside RFC 3986's
 *   unreserved characters and delimiters (non-ASCII characters, `"`, `<`,
 *   `>`, `\`, `^`, `` ` ``, `{`, `|`, `}`) are percent-encoded as UTF-8;
 *   percent-encoded octets already present are kept, never encoded twice, and a
 *   `%` that starts none becomes `%25`;
 * - user info must have a user name and a password (`user:password@`); both
 *   stay percent-encoded.
 *
 * @param uri The WebSocket URI (or IRI) to parse.
 * @returns The parsed URI.
 * @throws {InvalidURI} When `uri` contains a space or a control character,
 * its scheme isn't `ws` or `wss`, it has no host or an invalid host, an
 * invalid port, a fragment (even an empty `#`), or a user name without a
 * password.
 *
 * @example
 * ```ts
 * import { parseUri } from "@denows/websockets/uri";
 * const uri = parseUri("ws://üser:påss@høst/πass?qùéry");
 * console.log(uri.host); // xn--hst-0na
 * console.log(uri.port); // 80
 * console.log(uri.path); // /%CF%80ass
 * console.log(uri.query); // q%C3%B9%C3%A9ry
 * console.log(uri.userInfo); // ["%C3%BCser", "p%C3%A5ss"]
 * ```
 */
export function parseUri(uri: string): WebSocketURI {
  if (typeof uri !== "string") {
    throw new TypeError(`Cannot parse URI: expected a string, got ${typeof uri}`);
  }
  const forbidden = FORBIDDEN.exec(uri);
  if (forbidden !== null) {
    const code = forbidden[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, "0");
    const what = code === "0020"
      ? "a space"
      : /^D[89A-F]/.test(code)
      ? `an unpaired surrogate U+${code}`
      : `a control character U+${code}`;
    throw new InvalidURI(uri, `contains ${what} at index ${forbidden.index}`);
  }

  const colon = uri.indexOf(":");
  const scheme = colon < 0 ? "" : uri.slice(0, colon).toLowerCase();
  if (scheme !== "ws" && scheme !== "wss") throw new InvalidURI(uri, "scheme isn't ws or wss");
  const secure = scheme === "wss";

  let rest = uri.slice(colon + 1);
  if (rest.includes("#")) throw new InvalidURI(uri, "fragment identifier is meaningless");
  if (!rest.startsWith("//")) throw new InvalidURI(uri, "hostname isn't provided");
  rest = rest.slice(2);

  const authorityEnd = rest.search(/[/?]/);
  const authority = authorityEnd < 0 ? rest : rest.slice(0, authorityEnd);
  const pathAndQuery = authorityEnd < 0 ? "" : rest.slice(authorityEnd);
  const questionMark = pathAndQuery.indexOf("?");
  const path = questionMark < 0 ? pathAndQuery : pathAndQuery.slice(0, questionMark);
  const query = questionMark < 0 ? "" : pathAndQuery.slice(questionMark + 1);

  // The user info ends at the last "@": a "@" before it belongs to the user info.
  const at = authority.lastIndexOf("@");
  let username: string | undefined;
  let password: string | undefined;
  if (at >= 0) {
    const userInfo = authority.slice(0, at);
    const separator = userInfo.indexOf(":");
    if (separator < 0) throw new InvalidURI(uri, "username provided without password");
    username = quote(userInfo.slice(0, separator));
    password = quote(userInfo.slice(separator + 1));
  }

  const [host, port] = parseHostPort(uri, authority.slice(at + 1));
  return new WebSocketURI(
    secure,
    host,
    parsePort(uri, port, secure),
    quote(path),
    quote(query),
    username,
    password,
  );
}
