/**
 * Every error this library throws, in one hierarchy rooted at
 * {@linkcode WebSocketError}.
 *
 * ```text
 * WebSocketError
 * ├── ConnectionClosed
 * │   ├── ConnectionClosedOK
 * │   └── ConnectionClosedError
 * ├── InvalidURI
 * ├── InvalidProxy
 * ├── InvalidHandshake
 * │   ├── HandshakeTimeout
 * │   ├── ProxyError
 * │   │   ├── InvalidProxyMessage
 * │   │   ├── InvalidProxyStatus
 * │   │   └── SocksProxyError
 * │   ├── SecurityError
 * │   ├── InvalidMessage
 * │   ├── InvalidStatus
 * │   ├── InvalidHeader
 * │   │   ├── InvalidHeaderFormat
 * │   │   ├── InvalidHeaderValue
 * │   │   ├── InvalidOrigin
 * │   │   └── InvalidUpgrade
 * │   └── NegotiationError
 * │       ├── DuplicateParameter
 * │       ├── InvalidParameterName
 * │       └── InvalidParameterValue
 * ├── ProtocolError
 * ├── PayloadTooBig
 * ├── InvalidState
 * └── ConcurrencyError
 * ```
 *
 * `MultipleValuesError` (raised by `Headers.get`) lives in `headers.ts`.
 *
 * @example
 * ```ts
 * import { ConnectionClosed, WebSocketError } from "@denows/websockets/errors";
 * const error: unknown = new ConnectionClosed(undefined, undefined);
 * if (error instanceof WebSocketError) console.log(error.name, error.message);
 * ```
 *
 * @module
 */

import { type Close, CloseCode } from "./frames.ts";
import type { Response } from "./http11.ts";

/**
 * Base class of every error raised by this library.
 *
 * @example
 * ```ts
 * import { WebSocketError } from "@denows/websockets/errors";
 * try {
 *   throw new WebSocketError("something failed");
 * } catch (error) {
 *   console.log(error instanceof WebSocketError); // true
 * }
 * ```
 */
export class WebSocketError extends Error {
  /** Creates the error; `name` is set to the class name. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

function describeCloses(
  rcvd: Close | undefined,
  sent: Close | undefined,
  rcvdThenSent: boolean | undefined,
): string {
  if (rcvd === undefined && sent === undefined) return "no close frame received or sent";
  if (rcvd === undefined) return `sent ${sent}; no close frame received`;
  if (sent === undefined) return `received ${rcvd}; no close frame sent`;
  return rcvdThenSent
    ? `received ${rcvd}; then sent ${sent}`
    : `sent ${sent}; then received ${rcvd}`;
}

/**
 * Raised when trying to interact with a closed connection.
 *
 * It carries the close frames received and sent, like Python `websockets`:
 * `rcvd`, `sent` and `rcvdThenSent` (`true` when the close frame was received
 * before one was sent, `undefined` unless both exist).
 *
 * @example
 * ```ts
 * import { ConnectionClosed } from "@denows/websockets/errors";
 * import { Close } from "@denows/websockets/frames";
 * const error = new ConnectionClosed(new Close(1000, "bye"), new Close(1000, "bye"), true);
 * console.log(error.message); // received 1000 (OK) bye; then sent 1000 (OK) bye
 * console.log(error.code); // 1000
 * ```
 */
export class ConnectionClosed extends WebSocketError {
  /** The close frame received from the peer, if any. */
  readonly rcvd: Close | undefined;
  /** The close frame sent to the peer, if any. */
  readonly sent: Close | undefined;
  /** Whether the close frame was received before one was sent (`undefined` unless both exist). */
  readonly rcvdThenSent: boolean | undefined;

  /** Creates the error from the close frames exchanged. */
  constructor(
    rcvd: Close | undefined,
    sent: Close | undefined,
    rcvdThenSent?: boolean,
    options?: ErrorOptions,
  ) {
    const order = rcvd !== undefined && sent !== undefined ? rcvdThenSent : undefined;
    super(describeCloses(rcvd, sent, order), options);
    this.rcvd = rcvd;
    this.sent = sent;
    this.rcvdThenSent = order;
  }

  /** The close code received, or 1006 (abnormal closure) when no close frame was received. */
  get code(): number {
    return this.rcvd?.code ?? CloseCode.ABNORMAL_CLOSURE;
  }

  /** The close reason received, or `""`. */
  get reason(): string {
    return this.rcvd?.reason ?? "";
  }
}

/**
 * Like {@linkcode ConnectionClosed}, when the connection terminated properly:
 * close frames with code 1000 (OK) or 1001 (going away), or no code, were
 * both received and sent.
 *
 * @example
 * ```ts
 * import { ConnectionClosedOK } from "@denows/websockets/errors";
 * import { Close } from "@denows/websockets/frames";
 * const error = new ConnectionClosedOK(new Close(1001, ""), new Close(1001, ""), true);
 * console.log(error.code); // 1001
 * ```
 */
export class ConnectionClosedOK extends ConnectionClosed {}

/**
 * Like {@linkcode ConnectionClosed}, when the connection terminated with an
 * error: a close frame with another code was exchanged, or the closing
 * handshake did not complete (code 1006).
 *
 * @example
 * ```ts
 * import { ConnectionClosedError } from "@denows/websockets/errors";
 * const error = new ConnectionClosedError(undefined, undefined);
 * console.log(error.code); // 1006
 * ```
 */
export class ConnectionClosedError extends ConnectionClosed {}

/**
 * Raised when connecting to a URI that isn't a valid WebSocket URI.
 *
 * @example
 * ```ts
 * import { InvalidURI } from "@denows/websockets/errors";
 * const error = new InvalidURI("http://example.com/", "scheme isn't ws or wss");
 * console.log(error.message); // http://example.com/ isn't a valid URI: scheme isn't ws or wss
 * ```
 */
export class InvalidURI extends WebSocketError {
  /** The URI that was rejected. */
  readonly uri: string;
  /** Why it was rejected. */
  readonly reason: string;
  /** Creates the error for `uri`, saying why it was rejected. */
  constructor(uri: string, reason: string) {
    super(`${uri} isn't a valid URI: ${reason}`);
    this.uri = uri;
    this.reason = reason;
  }
}

/**
 * Base class for errors raised while the opening handshake fails.
 *
 * @example
 * ```ts
 * import { InvalidHandshake } from "@denows/websockets/errors";
 * console.log(new InvalidHandshake("no response").message);
 * ```
 */
export class InvalidHandshake extends WebSocketError {}

/**
 * Raised when the opening handshake doesn't complete within `openTimeout`.
 *
 * @example
 * ```ts
 * import { HandshakeTimeout } from "@denows/websockets/errors";
 * console.log(new HandshakeTimeout(10_000).message); // opening handshake timed out after 10000 ms (openTimeout)
 * ```
 */
export class HandshakeTimeout extends InvalidHandshake {
  /** The limit that applied, in ms. */
  readonly timeout: number;
  /** The proxy (without credentials) that hadn't opened the tunnel yet, if any. */
  readonly proxy: string | undefined;
  /**
   * Creates the error for the `openTimeout` that expired; `proxy` names the
   * proxy when the time ran out while it was still opening the tunnel.
   */
  constructor(timeout: number, proxy?: string) {
    super(
      `opening handshake timed out after ${timeout} ms (openTimeout)` +
        (proxy === undefined ? "" : ` waiting for proxy ${proxy}`),
    );
    this.timeout = timeout;
    this.proxy = proxy;
  }
}

/**
 * Raised when a proxy URL isn't valid: not `http:`, `https:`, `socks5:` or
 * `socks5h:`, no host, a path, query or fragment, user info that isn't
 * valid percent-encoding, or a user name with `:` for an HTTP proxy.
 *
 * @example
 * ```ts
 * import { InvalidProxy } from "@denows/websockets/errors";
 * const error = new InvalidProxy("ftp://proxy:21", "scheme isn't http, https, socks5 or socks5h");
 * console.log(error.message); // ftp://proxy:21 isn't a valid proxy: scheme isn't http, https, socks5 or socks5h
 * ```
 */
export class InvalidProxy extends WebSocketError {
  /** The proxy URL that was rejected (without credentials). */
  readonly proxy: string;
  /** Why it was rejected. */
  readonly reason: string;
  /** Creates the error for `proxy`, saying why it was rejected. */
  constructor(proxy: string, reason: string) {
    super(`${proxy} isn't a valid proxy: ${reason}`);
    this.proxy = proxy;
    this.reason = reason;
  }
}

/**
 * Raised when connecting through a proxy fails: the proxy can't be reached,
 * closes the connection, or refuses to open the tunnel. Subclasses say how
 * the proxy answered; `cause` holds the underlying error, if any. The
 * message is one line and names the proxy, never its credentials.
 *
 * @example
 * ```ts
 * import { ProxyError } from "@denows/websockets/errors";
 * const error = new ProxyError("http://127.0.0.1:3128", "connection refused");
 * console.log(error.message); // proxy http://127.0.0.1:3128 failed: connection refused
 * ```
 */
export class ProxyError extends InvalidHandshake {
  /** The proxy URL, without credentials. */
  readonly proxy: string;
  /** Creates the error for `proxy`, saying what went wrong. */
  constructor(proxy: string, message: string, options?: ErrorOptions) {
    super(`proxy ${proxy} failed: ${message}`, options);
    this.proxy = proxy;
  }
}

/**
 * Raised when a proxy's answer can't be understood: not HTTP (or not
 * SOCKS5), over a limit of `httpLimits`, data where none was expected, or
 * the connection closed in the middle of it.
 *
 * @example
 * ```ts
 * import { InvalidProxyMessage } from "@denows/websockets/errors";
 * const error = new InvalidProxyMessage("http://127.0.0.1:3128", "invalid HTTP status line: hello");
 * console.log(error.message); // proxy http://127.0.0.1:3128 failed: invalid HTTP status line: hello
 * ```
 */
export class InvalidProxyMessage extends ProxyError {}

/**
 * Raised when an HTTP proxy answers `CONNECT` with a status other than 2xx,
 * e.g. `407 Proxy Authentication Required`; `response` holds the status
 * line and headers (the body is not read).
 *
 * @example
 * ```ts
 * import { InvalidProxyStatus } from "@denows/websockets/errors";
 * import { Headers } from "@denows/websockets/headers";
 * import { Response } from "@denows/websockets/http11";
 * const response = new Response(407, "Proxy Authentication Required", new Headers());
 * const error = new InvalidProxyStatus("http://127.0.0.1:3128", response);
 * console.log(error.message); // proxy http://127.0.0.1:3128 failed: HTTP 407 Proxy Authentication Required
 * ```
 */
export class InvalidProxyStatus extends ProxyError {
  /** The proxy's response, without its body. */
  readonly response: Response;
  /** Creates the error for the proxy's `response`. */
  constructor(proxy: string, response: Response) {
    super(proxy, `HTTP ${response.statusCode} ${response.reasonPhrase}`.trimEnd());
    this.response = response;
  }
}

/**
 * Raised when a SOCKS5 proxy refuses: no authentication method acceptable,
 * wrong user name or password (RFC 1929), or a `CONNECT` reply other than
 * success (RFC 1928 §6), whose code is `reply`.
 *
 * @example
 * ```ts
 * import { SocksProxyError } from "@denows/websockets/errors";
 * const error = new SocksProxyError("socks5://127.0.0.1:1080", "connection refused by destination host", 5);
 * console.log(error.message); // proxy socks5://127.0.0.1:1080 failed: connection refused by destination host (reply 5)
 * ```
 */
export class SocksProxyError extends ProxyError {
  /** The reply code of the proxy's answer to `CONNECT`, `undefined` when it refused earlier. */
  readonly reply: number | undefined;
  /** Creates the error: what the proxy refused and, for a `CONNECT` reply, its code. */
  constructor(proxy: string, message: string, reply?: number) {
    super(proxy, reply === undefined ? message : `${message} (reply ${reply})`);
    this.reply = reply;
  }
}

/**
 * Raised when a handshake request or response breaks a security rule: too
 * many headers, a line or a body over its limit.
 *
 * @example
 * ```ts
 * import { SecurityError } from "@denows/websockets/errors";
 * console.log(new SecurityError("too many HTTP headers: limit is 128").message);
 * ```
 */
export class SecurityError extends InvalidHandshake {}

/**
 * Raised when a handshake request or response is malformed.
 *
 * @example
 * ```ts
 * import { InvalidMessage } from "@denows/websockets/errors";
 * console.log(new InvalidMessage("invalid HTTP request line: GET /").message);
 * ```
 */
export class InvalidMessage extends InvalidHandshake {}

/**
 * Raised when a handshake response rejects the WebSocket upgrade (any status
 * other than 101). `response` holds the whole response, so callers can follow
 * redirects or read the error body.
 *
 * @example
 * ```ts
 * import { InvalidStatus } from "@denows/websockets/errors";
 * import { Headers } from "@denows/websockets/headers";
 * import { Response } from "@denows/websockets/http11";
 * const error = new InvalidStatus(new Response(403, "Forbidden", new Headers()));
 * console.log(error.message, error.response.statusCode); // server rejected WebSocket connection: HTTP 403 403
 * ```
 */
export class InvalidStatus extends InvalidHandshake {
  /** The response that rejected the upgrade. */
  readonly response: Response;
  /** Creates the error for `response`. */
  constructor(response: Response) {
    super(`server rejected WebSocket connection: HTTP ${response.statusCode}`);
    this.response = response;
  }
}

/**
 * Raised when an HTTP header doesn't have a valid format or value.
 *
 * @example
 * ```ts
 * import { InvalidHeader } from "@denows/websockets/errors";
 * const error = new InvalidHeader("Sec-WebSocket-Accept", "abc");
 * console.log(error.message); // invalid Sec-WebSocket-Accept header: abc
 * ```
 */
export class InvalidHeader extends InvalidHandshake {
  /** The header's name. */
  readonly headerName: string;
  /** The header's value, `undefined` when the header is missing. */
  readonly value: string | undefined;
  /** Creates the error; `value` `undefined` means the header is missing. */
  constructor(name: string, value?: string, message?: string) {
    super(
      message ??
        (value === undefined
          ? `missing ${name} header`
          : value === ""
          ? `empty ${name} header`
          : `invalid ${name} header: ${value}`),
    );
    this.headerName = name;
    this.value = value;
  }
}

/**
 * Raised when an HTTP header cannot be parsed: the format of the header
 * doesn't match the grammar for that header.
 *
 * @example
 * ```ts
 * import { InvalidHeaderFormat } from "@denows/websockets/errors";
 * const error = new InvalidHeaderFormat("Sec-WebSocket-Protocol", "expected token", "chat,,", 5);
 * console.log(error.message); // invalid Sec-WebSocket-Protocol header: expected token at 5 in chat,,
 * ```
 */
export class InvalidHeaderFormat extends InvalidHeader {
  /** Creates the error: what was expected, in which header, at which position. */
  constructor(name: string, error: string, header: string, pos: number) {
    super(name, header, `invalid ${name} header: ${error} at ${pos} in ${header}`);
  }
}

/**
 * Raised when an HTTP header has a wrong value: the format is correct but the
 * value is not acceptable (e.g. a bad `Sec-WebSocket-Key`), or a header value
 * contains a forbidden character.
 *
 * @example
 * ```ts
 * import { InvalidHeaderValue } from "@denows/websockets/errors";
 * console.log(new InvalidHeaderValue("Sec-WebSocket-Version", "8").message);
 * ```
 */
export class InvalidHeaderValue extends InvalidHeader {}

/**
 * Raised when the `Origin` header in a request isn't allowed.
 *
 * @example
 * ```ts
 * import { InvalidOrigin } from "@denows/websockets/errors";
 * console.log(new InvalidOrigin("https://evil.example").message); // invalid Origin header: https://evil.example
 * ```
 */
export class InvalidOrigin extends InvalidHeader {
  /** Creates the error for the rejected origin (`undefined`: no `Origin` header). */
  constructor(origin: string | undefined) {
    super("Origin", origin);
  }
}

/**
 * Raised when the `Upgrade` or `Connection` header isn't correct.
 *
 * @example
 * ```ts
 * import { InvalidUpgrade } from "@denows/websockets/errors";
 * console.log(new InvalidUpgrade("Upgrade", "h2c").message); // invalid Upgrade header: h2c
 * ```
 */
export class InvalidUpgrade extends InvalidHeader {}

/**
 * Raised when negotiating an extension or a subprotocol fails.
 *
 * @example
 * ```ts
 * import { NegotiationError } from "@denows/websockets/errors";
 * console.log(new NegotiationError("unsupported subprotocol: chat").message);
 * ```
 */
export class NegotiationError extends InvalidHandshake {}

/**
 * Raised when an extension parameter appears twice.
 *
 * @example
 * ```ts
 * import { DuplicateParameter } from "@denows/websockets/errors";
 * console.log(new DuplicateParameter("server_max_window_bits").message);
 * ```
 */
export class DuplicateParameter extends NegotiationError {
  /** The repeated parameter's name. */
  readonly parameterName: string;
  /** Creates the error for the repeated parameter. */
  constructor(name: string) {
    super(`duplicate parameter: ${name}`);
    this.parameterName = name;
  }
}

/**
 * Raised when an extension parameter has an unknown name.
 *
 * @example
 * ```ts
 * import { InvalidParameterName } from "@denows/websockets/errors";
 * console.log(new InvalidParameterName("foo").message); // invalid parameter name: foo
 * ```
 */
export class InvalidParameterName extends NegotiationError {
  /** The unknown parameter's name. */
  readonly parameterName: string;
  /** Creates the error for the unknown parameter. */
  constructor(name: string) {
    super(`invalid parameter name: ${name}`);
    this.parameterName = name;
  }
}

/**
 * Raised when an extension parameter has an invalid value.
 *
 * @example
 * ```ts
 * import { InvalidParameterValue } from "@denows/websockets/errors";
 * console.log(new InvalidParameterValue("client_max_window_bits", "16").message);
 * ```
 */
export class InvalidParameterValue extends NegotiationError {
  /** The parameter's name. */
  readonly parameterName: string;
  /** The rejected value (`undefined` when a value was required and missing). */
  readonly value: string | undefined;
  /** Creates the error for the parameter and its rejected value. */
  constructor(name: string, value: string | undefined) {
    super(
      value === undefined
        ? `missing value for parameter ${name}`
        : `invalid value for parameter ${name}: ${value}`,
    );
    this.parameterName = name;
    this.value = value;
  }
}

/**
 * Raised when the other side breaks the WebSocket protocol (RFC 6455); the
 * connection is failed with `code`: 1002, or 1007 for invalid data such as
 * text that is not UTF-8.
 *
 * @example
 * ```ts
 * import { ProtocolError } from "@denows/websockets/errors";
 * const error = new ProtocolError("invalid UTF-8 in text message", 1007);
 * console.log(error.message, error.code); // invalid UTF-8 in text message 1007
 * ```
 */
export class ProtocolError extends WebSocketError {
  /** The close code the connection is failed with: 1002 (protocol error) or 1007 (invalid data). */
  readonly code: number;
  /** Creates the error; `code` defaults to 1002 (protocol error). */
  constructor(message: string, code: number = CloseCode.PROTOCOL_ERROR, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

/**
 * Raised when a message exceeds `maxSize` (close code 1009), or when a frame
 * announces more bytes than can be allocated at all (`maxSize: Infinity`).
 * The message says how big it was, or at least became, and the limit.
 *
 * @example
 * ```ts
 * import { PayloadTooBig } from "@denows/websockets/errors";
 * const error = new PayloadTooBig(2_000_000, 1_048_576);
 * console.log(error.message); // message too big: 2000000 bytes exceeds maxSize of 1048576 bytes
 * ```
 */
export class PayloadTooBig extends WebSocketError {
  /** The size reached when the limit was crossed, in bytes. */
  readonly size: number;
  /** The limit that applied, in bytes. */
  readonly maxSize: number;
  /**
   * Creates the error from the size reached and the limit; `why`, if given,
   * replaces "exceeds maxSize of … bytes" in the message.
   */
  constructor(size: number, maxSize: number, why?: string) {
    super(`message too big: ${size} bytes ${why ?? `exceeds maxSize of ${maxSize} bytes`}`);
    this.size = size;
    this.maxSize = maxSize;
  }
}

/**
 * Raised when an operation is forbidden in the current state; the message
 * names the state.
 *
 * @example
 * ```ts
 * import { InvalidState } from "@denows/websockets/errors";
 * console.log(new InvalidState("cannot send text frame in state CLOSED").message);
 * ```
 */
export class InvalidState extends WebSocketError {}

/**
 * Raised when receiving or sending messages concurrently in a way that would
 * interleave them, e.g. `broadcast()` while a connection is in the middle of
 * sending a fragmented message (Python `websockets` raises `RuntimeError` there).
 *
 * @example
 * ```ts
 * import { ConcurrencyError } from "@denows/websockets/errors";
 * console.log(new ConcurrencyError("connection is sending a fragmented message").message);
 * ```
 */
export class ConcurrencyError extends WebSocketError {}
