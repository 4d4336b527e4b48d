/**
 * {@linkcode connect}: open a WebSocket client connection over
 * `Deno.connect` (`ws:`), `Deno.connectTls` (`wss:`), a Unix socket or a
 * transport you already have. `await connect(uri)` opens one connection;
 * `for await (const ws of connect(uri))` reconnects with exponential backoff.
 *
 * @example
 * ```ts ignore
 * import { connect } from "@denows/websockets";
 * await using ws = await connect("ws://127.0.0.1:8765/");
 * await ws.send("Hello world!");
 * console.log(await ws.recv());
 * ```
 *
 * @module
 */

import { type ConnectionOptions, DEFAULTS, PRODUCT } from "./abstract_connection.ts";
import { StreamConnection } from "./stream_connection.ts";
import type { Transport } from "./transport.ts";
import { parseProxy, type Proxy, proxyFromEnv } from "./_proxy.ts";
import { openTunnel, TRANSIENT_SOCKS_REPLIES } from "./_tunnel.ts";
import {
  HandshakeTimeout,
  InvalidHandshake,
  InvalidProxyStatus,
  InvalidStatus,
  InvalidURI,
  ProxyError,
  SecurityError,
  SocksProxyError,
} from "./errors.ts";
import type { ClientExtensionFactory } from "./extensions.ts";
import type { Headers } from "./headers.ts";
import type { HttpLimits } from "./http11.ts";
import { defaultClientExtensions } from "./permessage_deflate.ts";
import { ClientProtocol } from "./protocol.ts";
import { parseUri, type WebSocketURI } from "./uri.ts";

/** The `User-Agent` header sent by default. */
export const USER_AGENT: string = PRODUCT;

/**
 * Options of the reconnection loop of {@linkcode connect}: the delay before
 * each new attempt starts at `initialDelay`, is multiplied by `factor` after
 * each failed attempt up to `maxDelay`, with random jitter, and starts over
 * once a connection opened.
 */
export interface BackoffOptions {
  /**
   * First delay before reconnecting, in ms.
   *
   * @default {1_000}
   */
  initialDelay?: number;
  /**
   * Multiplier applied to the delay after each failed attempt.
   *
   * @default {1.618}
   */
  factor?: number;
  /**
   * Longest delay, in ms.
   *
   * @default {60_000}
   */
  maxDelay?: number;
}

/**
 * Options of {@linkcode connect}: those of every connection (limits,
 * timeouts, keepalive) and those of the client's handshake.
 */
export interface ConnectOptions extends ConnectionOptions {
  /**
   * Value of the `Origin` header.
   *
   * @default {undefined} (no `Origin` header)
   */
  origin?: string;
  /**
   * Subprotocols to offer, in order of preference.
   *
   * @default {undefined} (none offered)
   */
  subprotocols?: string[];
  /**
   * Extension factories to offer; replaces the ones `compression` adds.
   *
   * @default {undefined} (the ones `compression` adds)
   */
  extensions?: ClientExtensionFactory[];
  /**
   * `"deflate"` offers permessage-deflate (RFC 7692); `null` disables
   * compression.
   *
   * @default {"deflate"}
   */
  compression?: "deflate" | null;
  /**
   * Extra request headers: a record, pairs or {@linkcode Headers}.
   *
   * @default {undefined}
   */
  additionalHeaders?: Headers | Record<string, string> | Iterable<[string, string]>;
  /**
   * Value of the `User-Agent` header; `null` leaves it out.
   *
   * @default {USER_AGENT} (`Deno/<version> @denows/websockets/<version>`)
   */
  userAgentHeader?: string | null;
  /**
   * Time allowed for connecting and the whole opening handshake, in ms; then
   * `connect()` throws `HandshakeTimeout`.
   *
   * @default {10_000}
   */
  openTimeout?: number;
  /**
   * Aborts connecting, and ends the reconnection loop quietly.
   *
   * @default {undefined}
   */
  signal?: AbortSignal;
  /**
   * Extra CA certificates (PEM) trusted for `wss:`, and for an `https:`
   * proxy, besides the system's.
   *
   * @default {undefined}
   */
  caCerts?: string[];
  /**
   * The proxy to connect through: an `http://`, `https://`, `socks5://` or
   * `socks5h://` URL, with `user:password@` for proxies that want
   * credentials; `null` connects directly. By default (`undefined`) the
   * environment decides, as curl does: `https_proxy` / `HTTPS_PROXY` for
   * `wss:`, `http_proxy` / `HTTP_PROXY` for `ws:`, else `all_proxy` /
   * `ALL_PROXY`, except for hosts that `no_proxy` / `NO_PROXY` lists; and
   * no proxy when `--allow-env` doesn't allow reading them. Not used with
   * `unix` or `sock`. See docs/proxies.md.
   *
   * @default {undefined}
   */
  proxy?: string | null;
  /**
   * Connect to this Unix socket path instead of the URI's host and port.
   *
   * @default {undefined}
   */
  unix?: string;
  /**
   * Run the handshake over this already connected transport (e.g. a
   * `Deno.Conn`, or `fromStreams()`) instead of connecting.
   *
   * @default {undefined}
   */
  sock?: Transport;
  /**
   * Redirects (301, 302, 303, 307, 308) followed at most; one more throws
   * `SecurityError`.
   *
   * @default {10}
   */
  maxRedirects?: number;
  /**
   * Limits of the handshake response: header count, line length, body size.
   *
   * @default {{ maxNumHeaders: 128, maxLineLength: 8192, maxBodySize: 1_048_576 }}
   */
  httpLimits?: HttpLimits;
  /**
   * Delays of the reconnection loop (`for await (const ws of connect(url))`).
   *
   * @default {{ initialDelay: 1_000, factor: 1.618, maxDelay: 60_000 }}
   */
  backoff?: BackoffOptions;
}

const REDIRECT_CODES = new Set([301, 302, 303, 307, 308]);

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Whether a failed connection attempt is worth retrying: refused, reset or
 * timed out connections, handshakes cut short, and 5xx answers, from the
 * server or from a proxy; SOCKS5 replies saying the proxy or the path to the
 * server failed (1, 3, 4, 5, 6). 4xx answers (a proxy's `407` too), other
 * SOCKS5 refusals, bad URIs and proxies, and security errors are not.
 *
 * @example
 * ```ts
 * import { isTransientError } from "@denows/websockets";
 * import { SocksProxyError } from "@denows/websockets/errors";
 * console.log(isTransientError(new SocksProxyError("socks5://127.0.0.1:1080", "refused", 5))); // true
 * ```
 */
export function isTransientError(error: unknown): boolean {
  if (error instanceof InvalidStatus) return error.response.statusCode >= 500;
  if (error instanceof HandshakeTimeout) return true;
  if (error instanceof InvalidProxyStatus) return error.response.statusCode >= 500;
  if (error instanceof SocksProxyError) {
    return error.reply !== undefined && TRANSIENT_SOCKS_REPLIES.has(error.reply);
  }
  if (error instanceof ProxyError && error.cause !== undefined) {
    return isTransientError(error.cause);
  }
  if (error instanceof SecurityError || error instanceof InvalidURI) return false;
  if (error instanceof InvalidHandshake) {
    return /connection closed|closed before/.test(error.message);
  }
  if (typeof Deno !== "undefined" && error instanceof Error) {
    const errors = Deno.errors;
    return error instanceof errors.ConnectionRefused || error instanceof errors.ConnectionReset ||
      error instanceof errors.ConnectionAborted || error instanceof errors.TimedOut ||
      error instanceof errors.NotConnected || error instanceof errors.BrokenPipe ||
      error instanceof errors.UnexpectedEof;
  }
  return false;
}

/** The `User-Agent` sent, to the server and to an HTTP proxy. */
function userAgent(options: ConnectOptions): string | undefined {
  return options.userAgentHeader === null ? undefined : (options.userAgentHeader ?? USER_AGENT);
}

/** The proxy to connect to `uri` through, if any; chosen again for every URI (redirects). */
function chooseProxy(uri: WebSocketURI, options: ConnectOptions): Proxy | undefined {
  if (options.sock !== undefined || options.unix !== undefined || options.proxy === null) {
    return undefined;
  }
  return options.proxy === undefined ? proxyFromEnv(uri) : parseProxy(options.proxy);
}

async function openTransport(
  uri: WebSocketURI,
  options: ConnectOptions,
  proxy: Proxy | undefined,
  signal: AbortSignal,
): Promise<Transport> {
  if (options.sock !== undefined) return options.sock;
  if (options.unix !== undefined) {
    return await Deno.connect({ transport: "unix", path: options.unix });
  }
  if (proxy !== undefined) {
    return await openTunnel(proxy, uri, {
      caCerts: options.caCerts,
      httpLimits: options.httpLimits,
      userAgent: userAgent(options),
      signal,
    });
  }
  const hostname = uri.host;
  if (uri.secure) {
    return await Deno.connectTls({ hostname, port: uri.port, caCerts: options.caCerts });
  }
  const conn = await Deno.connect({ hostname, port: uri.port });
  conn.setNoDelay(true);
  return conn;
}

/** One connection attempt: transport, handshake, no redirects. */
async function openOnce(
  uri: WebSocketURI,
  options: ConnectOptions,
  deadline: number,
): Promise<StreamConnection> {
  const signal = options.signal;
  signal?.throwIfAborted();
  const openTimeout = options.openTimeout ?? DEFAULTS.openTimeout;
  const proxy = chooseProxy(uri, options);
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort: (() => void) | undefined;
  let connection: StreamConnection | undefined;
  let transport: Transport | undefined;
  // Aborted when the attempt fails by time or by `signal`: ends the proxy hop under way.
  const attempt = new AbortController();
  const failure = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      // Until the transport is open, the proxy (if any) is what is taking too long.
      const error = new HandshakeTimeout(
        openTimeout,
        transport === undefined ? proxy?.display : undefined,
      );
      attempt.abort(error);
      reject(error);
    }, Math.max(0, deadline - Date.now()));
    if (signal !== undefined) {
      onAbort = () => {
        attempt.abort(signal.reason);
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
    }
  });
  try {
    const opening = openTransport(uri, options, proxy, attempt.signal);
    try {
      transport = await Promise.race([opening, failure]);
    } catch (error) {
      // A transport that opens after the deadline or the abort is closed at once.
      opening.then((late) => late.close(), () => {});
      throw error;
    }
    const extensions = options.extensions ??
      (options.compression === null ? [] : defaultClientExtensions());
    const protocol = new ClientProtocol(uri, {
      origin: options.origin,
      extensions,
      subprotocols: options.subprotocols,
      additionalHeaders: options.additionalHeaders,
      userAgentHeader: userAgent(options),
      maxSize: options.maxSize,
      httpLimits: options.httpLimits,
      logger: options.logger,
    });
    protocol.sendRequest(protocol.connect());
    connection = new StreamConnection(protocol, transport, options);
    connection.start();
    connection.flushSoon();
    await Promise.race([connection.handshake, failure]);
    return connection;
  } catch (error) {
    if (connection !== undefined) {
      connection.abort();
      await connection.closed;
    } else if (transport !== undefined) {
      try {
        transport.close();
      } catch {
        // already closed
      }
    }
    throw error;
  } finally {
    clearTimeout(timer);
    if (onAbort !== undefined) signal?.removeEventListener("abort", onAbort);
    failure.catch(() => {});
  }
}

async function openWithRedirects(
  uriString: string,
  options: ConnectOptions,
): Promise<StreamConnection> {
  let uri = parseUri(uriString);
  const maxRedirects = options.maxRedirects ?? 10;
  const deadline = Date.now() + (options.openTimeout ?? DEFAULTS.openTimeout);
  for (let redirects = 0;; redirects++) {
    try {
      return await openOnce(uri, options, deadline);
    } catch (error) {
      if (
        !(error instanceof InvalidStatus) || !REDIRECT_CODES.has(error.response.statusCode) ||
        options.sock !== undefined || options.unix !== undefined
      ) {
        throw error;
      }
      const location = error.response.headers.get("Location");
      if (location === undefined) throw error;
      if (redirects >= maxRedirects) {
        throw new SecurityError(`too many redirects: limit is ${maxRedirects}`);
      }
      const base = `${uri.secure ? "https" : "http"}://${
        uri.host.includes(":") ? `[${uri.host}]` : uri.host
      }:${uri.port}${uri.resourceName}`;
      let target: string;
      try {
        const resolved = new URL(location, base);
        const scheme = resolved.protocol === "https:" || resolved.protocol === "wss:"
          ? "wss:"
          : resolved.protocol === "http:" || resolved.protocol === "ws:"
          ? "ws:"
          : resolved.protocol;
        target = scheme + resolved.href.slice(resolved.protocol.length);
      } catch {
        throw new InvalidHandshake(`invalid redirect Location: ${location}`);
      }
      const next = parseUri(target);
      if (uri.secure && !next.secure) {
        throw new SecurityError(`cannot follow redirect to a non-secure URI: ${target}`);
      }
      options.logger?.info(`redirected to ${target}`);
      uri = next;
    }
  }
}

/**
 * What {@linkcode connect} returns: await it for one connection, or iterate
 * it to reconnect whenever the connection is lost.
 *
 * @example
 * ```ts ignore
 * import { connect } from "@denows/websockets";
 * for await (const ws of connect("ws://127.0.0.1:8765/")) {
 *   try {
 *     for await (const message of ws) console.log(message);
 *   } catch {
 *     continue; // connection lost: reconnect
 *   }
 * }
 * ```
 */
export class Connect implements PromiseLike<StreamConnection>, AsyncIterable<StreamConnection> {
  /** The URI to connect to. */
  readonly uri: string;
  /** The options given to `connect()`. */
  readonly options: ConnectOptions;
  #promise: Promise<StreamConnection> | undefined;

  /** Prepares a connection to `uri`; nothing happens until awaited or iterated. */
  constructor(uri: string, options: ConnectOptions = {}) {
    this.uri = uri;
    this.options = options;
  }

  /** Opens the connection (once) and settles with it. */
  then<T1 = StreamConnection, T2 = never>(
    onFulfilled?: ((value: StreamConnection) => T1 | PromiseLike<T1>) | null,
    onRejected?: ((reason: unknown) => T2 | PromiseLike<T2>) | null,
  ): Promise<T1 | T2> {
    this.#promise ??= openWithRedirects(this.uri, this.options);
    return this.#promise.then(onFulfilled, onRejected);
  }

  /**
   * Yields a new connection each time the previous one is done with,
   * retrying transient failures (refused, reset, timeouts, 5xx) with
   * exponential backoff and jitter; stops on other errors (e.g. 4xx) and
   * when `signal` aborts. A connection is closed (normally, 1000) when the
   * loop's body is done with it: when the next one is asked for, and when the
   * loop ends by `break`, `return` or an exception.
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<StreamConnection, void, undefined> {
    const backoff = this.options.backoff ?? {};
    const initialDelay = backoff.initialDelay ?? 1000;
    const factor = backoff.factor ?? 1.618;
    const maxDelay = backoff.maxDelay ?? 60_000;
    const signal = this.options.signal;
    let delay = initialDelay;
    while (!signal?.aborted) {
      let connection: StreamConnection;
      try {
        connection = await openWithRedirects(this.uri, this.options);
      } catch (error) {
        if (signal?.aborted) return;
        if (!isTransientError(error)) throw error;
        this.options.logger?.info(`connect failed (${error}); retrying in ${Math.round(delay)} ms`);
        try {
          await sleep(delay * (0.5 + Math.random() * 0.5), signal);
        } catch {
          return;
        }
        delay = Math.min(delay * factor, maxDelay);
        continue;
      }
      delay = initialDelay;
      try {
        yield connection;
      } finally {
        // The loop's body is done with it (went on, broke out or threw): close it, so that
        // connections don't pile up open.
        await connection.close();
      }
    }
  }
}

/**
 * Opens a WebSocket connection to `uri` (`ws:` or `wss:`): `await
 * connect(uri)` resolves to a {@linkcode StreamConnection} once the opening
 * handshake succeeded, bounded by `openTimeout`. Redirects (301, 302, 303,
 * 307, 308) are followed up to `maxRedirects`, never from `wss:` to `ws:`;
 * other answers throw `InvalidStatus` holding the response.
 *
 * `for await (const ws of connect(uri))` reconnects with exponential backoff
 * on transient errors.
 *
 * @example
 * ```ts ignore
 * import { connect } from "@denows/websockets";
 * const ws = await connect("ws://127.0.0.1:8765/", { subprotocols: ["chat"], openTimeout: 5_000 });
 * await ws.send("hello");
 * console.log(await ws.recv(), ws.subprotocol);
 * await ws.close();
 * ```
 */
export function connect(uri: string, options: ConnectOptions = {}): Connect {
  return new Connect(uri, options);
}
