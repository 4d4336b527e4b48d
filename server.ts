/**
 * {@linkcode serve}: a WebSocket server over `Deno.listen` (TCP),
 * `Deno.listenTls` (`tls` option) or a Unix socket. Each connection runs
 * your handler once its opening handshake succeeded; when the handler
 * returns the connection is closed.
 *
 * @example
 * ```ts ignore
 * import { serve } from "@denows/websockets";
 * const server = serve(async (ws) => {
 *   for await (const message of ws) await ws.send(message);
 * }, { hostname: "127.0.0.1", port: 8765 });
 * console.log(`listening on ws://127.0.0.1:${server.port}`);
 * ```
 *
 * @module
 */

import { type ConnectionOptions, DEFAULTS, PRODUCT, runHandler } from "./abstract_connection.ts";
import { StreamConnection, type StreamConnectionOptions } from "./stream_connection.ts";
import type { Transport } from "./transport.ts";
import { addCounters, zeroCounters } from "./_counters.ts";
import { listenTcp, type TcpListener } from "./_node_net.ts";
import { HandshakeTimeout, InvalidHandshake } from "./errors.ts";
import { CloseCode } from "./frames.ts";
import type { ServerExtensionFactory } from "./extensions.ts";
import { Headers, parseAuthorizationBasic } from "./headers.ts";
import { type HttpLimits, reasonPhrase, type Request, Response } from "./http11.ts";
import { defaultServerExtensions } from "./permessage_deflate.ts";
import { isRouter, requestUrl, type Router, routeRequest } from "./router.ts";
import {
  type Logger,
  type OriginPattern,
  type ProtocolEvent,
  type SelectSubprotocol,
  ServerProtocol,
  type ServerProtocolOptions,
  State,
  type TrafficCounters,
} from "./protocol.ts";

/** The `Server` header sent by default. */
export const SERVER_HEADER: string = PRODUCT;

/**
 * What `processRequest` may return: our `Response`, a WHATWG `Response`
 * (its body is read in full), or `undefined` to go on with the handshake.
 *
 * @example
 * ```ts
 * import type { HttpAnswer } from "@denows/websockets";
 * const answer: HttpAnswer = new globalThis.Response("ok\n", { status: 200 });
 * console.log(answer instanceof globalThis.Response); // true
 * ```
 */
export type HttpAnswer = Response | globalThis.Response | undefined;

/**
 * The handshake hook called for every request before the WebSocket
 * handshake: return a response to answer plain HTTP on the same port (a
 * health check, a page, a 401), or `undefined` to continue.
 *
 * @example
 * ```ts
 * import type { ProcessRequest } from "@denows/websockets";
 * const health: ProcessRequest = (_connection, request) =>
 *   request.path === "/healthz" ? new globalThis.Response("OK\n") : undefined;
 * console.log(typeof health); // function
 * ```
 */
export type ProcessRequest = (
  connection: ServerConnection,
  request: Request,
) => HttpAnswer | Promise<HttpAnswer>;

/**
 * The hook called with the response about to be sent; return a replacement,
 * or `undefined` to send it (possibly modified in place).
 *
 * @example
 * ```ts
 * import type { ProcessResponse } from "@denows/websockets";
 * const addHeader: ProcessResponse = (_connection, _request, response) => {
 *   response.headers.append("X-Served-By", "example");
 *   return undefined;
 * };
 * console.log(typeof addHeader); // function
 * ```
 */
export type ProcessResponse = (
  connection: ServerConnection,
  request: Request,
  response: Response,
) => HttpAnswer | Promise<HttpAnswer>;

/** Certificate and key (PEM) for `Deno.listenTls`. */
export interface TlsOptions {
  /** Certificate chain, PEM. */
  cert: string;
  /** Private key, PEM. */
  key: string;
}

/**
 * Options of {@linkcode serve}: those of every connection (limits, timeouts,
 * keepalive), where to listen, and the server's handshake.
 */
export interface ServeOptions extends ConnectionOptions {
  /**
   * A listener you already have (`Deno.listen()`, `Deno.listenTls()`, a Unix
   * socket), like Python `websockets`' `sock=`: the server accepts from it
   * rather than listening itself, and owns it from then on
   * (`server.close()` closes it). Not with `hostname`, `port`, `unix`,
   * `tls` or `tcp` (`TypeError`).
   *
   * @default {undefined} (the server listens itself)
   *
   * @example
   * ```ts ignore
   * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
   * const server = serve((ws) => ws.close(), { listener });
   * ```
   */
  listener?: Deno.Listener;
  /**
   * Interface to listen on.
   *
   * @default {"0.0.0.0"}
   */
  hostname?: string;
  /**
   * Port to listen on; `0` picks a free one (see `server.port`).
   *
   * @default {0}
   */
  port?: number;
  /**
   * Listen on this Unix socket path instead of TCP.
   *
   * @default {undefined}
   */
  unix?: string;
  /**
   * Serve `wss:` with this certificate and key (`Deno.listenTls`).
   *
   * @default {undefined} (plain `ws:`)
   */
  tls?: TlsOptions;
  /**
   * The runtime API that serves plain TCP: `"node:net"` or `"Deno.listen"`.
   * Both run the same protocol code. `"node:net"` (the TCP handles under
   * `node:net`, used directly) is the default because it measured faster on
   * every benchmark row but one (64 KiB echoes, within noise) and holds less
   * memory per connection: its writes complete synchronously and its event
   * loop visits only ready sockets, so `broadcast()` to 10 000 clients runs
   * about 2.4 times as fast (figures in the performance guide,
   * `docs/performance.md`). It applies to
   * an IP address `hostname` where the runtime provides what it needs,
   * otherwise `Deno.listen` is used; TLS and Unix sockets always use
   * `Deno.listenTls` / `Deno.listen`.
   *
   * @default {"node:net"}
   */
  tcp?: "node:net" | "Deno.listen";
  /**
   * Accepted `Origin` values: strings match exactly, `RegExp`s match the
   * whole origin, `undefined` in the list accepts requests without `Origin`.
   * Other requests get 403. Set it on any server that browsers reach with
   * cookies (cross-site WebSocket hijacking).
   *
   * @default {undefined} (any origin)
   */
  origins?: OriginPattern[];
  /**
   * Subprotocols supported; the first one the client offered that is in
   * this list is chosen.
   *
   * @default {undefined} (none)
   */
  subprotocols?: string[];
  /**
   * Custom subprotocol selection: `(offered, request) => string | undefined`.
   *
   * @default {undefined} (the first offered that `subprotocols` lists)
   */
  selectSubprotocol?: SelectSubprotocol;
  /**
   * Extension factories supported; replaces the ones `compression` adds.
   *
   * @default {undefined} (the ones `compression` adds)
   */
  extensions?: ServerExtensionFactory[];
  /**
   * `"deflate"` accepts permessage-deflate (RFC 7692) with the server
   * defaults; `null` disables compression.
   *
   * @default {"deflate"}
   */
  compression?: "deflate" | null;
  /**
   * Hook before the handshake, e.g. to answer plain HTTP or authenticate:
   * return a response to send it instead, or `undefined` to go on.
   *
   * @default {undefined}
   */
  processRequest?: ProcessRequest;
  /**
   * Hook on the handshake response: change it (add a header) or return
   * another one.
   *
   * @default {undefined}
   */
  processResponse?: ProcessResponse;
  /**
   * Value of the `Server` header; `null` leaves it out.
   *
   * @default {SERVER_HEADER} (`Deno/<version> @denows/websockets/<version>`)
   */
  serverHeader?: string | null;
  /**
   * Time allowed for the opening handshake, in ms;
   * then the socket is closed. Checked every `openTimeout / 4`, so a
   * handshake is dropped within 1.25 × `openTimeout`.
   *
   * @default {10_000}
   */
  openTimeout?: number;
  /**
   * Open connections at most; handshakes beyond are answered with 503.
   *
   * @default {Infinity} (no limit)
   */
  maxConnections?: number;
  /**
   * Limits of the handshake request: header count and line length.
   *
   * @default {{ maxNumHeaders: 128, maxLineLength: 8192 }}
   */
  httpLimits?: HttpLimits;
  /**
   * Closes the server (as `server.close()`) when aborted.
   *
   * @default {undefined}
   */
  signal?: AbortSignal;
}

/**
 * A server-side connection: a {@linkcode StreamConnection} with a helper to
 * build plain HTTP responses in `processRequest`.
 *
 * @example
 * ```ts ignore
 * import { serve } from "@denows/websockets";
 * serve((ws) => ws.close(), {
 *   processRequest: (connection, request) =>
 *     request.path === "/healthz" ? connection.respond(200, "OK\n") : undefined,
 * });
 * ```
 */
export class ServerConnection extends StreamConnection {
  /** Builds a plain-text HTTP response (e.g. for `processRequest`). */
  respond(statusCode: number, text: string): Response {
    return (this.protocol as ServerProtocol).reject(statusCode, text);
  }
}

/**
 * A connection handler: runs once per connection after the handshake; the
 * connection closes (1000) when it returns, or 1011 when it throws.
 *
 * @example
 * ```ts
 * import type { Handler } from "@denows/websockets";
 * const echo: Handler = async (ws) => {
 *   for await (const message of ws) await ws.send(message);
 * };
 * console.log(typeof echo); // function
 * ```
 */
export type Handler = (connection: ServerConnection) => void | Promise<void>;

async function toResponse(answer: Response | globalThis.Response): Promise<Response> {
  if (answer instanceof Response) return answer;
  const headers = new Headers();
  answer.headers.forEach((value, name) => headers.append(name, value));
  const body = new Uint8Array(await answer.arrayBuffer());
  headers.set("Content-Length", String(body.length));
  if (!headers.has("Connection")) headers.append("Connection", "close");
  return new Response(
    answer.status,
    answer.statusText || reasonPhrase(answer.status),
    headers,
    body,
  );
}

/**
 * A snapshot of a server's statistics, from {@linkcode Server.prototype.stats}:
 * the {@linkcode TrafficCounters} of every connection since the server
 * started (closed ones included), and connection counts.
 *
 * @example
 * ```ts ignore
 * import { serve } from "@denows/websockets";
 * const server = serve((ws) => ws.close(), { port: 0 });
 * const { connections, connectionsOpened, wireBytesReceived } = server.stats();
 * ```
 */
export interface ServerStats extends TrafficCounters {
  /** Connections open now (their handler runs): `server.connections.size`. */
  connections: number;
  /** Connections in their opening handshake now. */
  opening: number;
  /** Connections opened since the server started (their handshake succeeded). */
  connectionsOpened: number;
  /**
   * Requests that didn't open a connection: answered without upgrading
   * (plain HTTP, 404, a handshake error), timed out, or left by the peer.
   */
  notUpgraded: number;
}

// A WHATWG request for a route's respond(): the URL matched and the handshake request's headers.
function toWebRequest(url: URL, request: Request): globalThis.Request {
  return new globalThis.Request(url, { headers: [...request.headers.rawItems()] });
}

// Whether a transport is a TLS connection (a Deno.TlsConn, from listenTls or a listener given).
function isTls(transport: Transport): boolean {
  return typeof (transport as Partial<Deno.TlsConn>).handshake === "function";
}

/**
 * A running server, made by {@linkcode serve}: it owns the listener, the
 * connections (in their handshake and open), the sweep that drops
 * handshakes older than `openTimeout`, and `close()`.
 *
 * Each accepted transport goes: {@linkcode ServerConnection} made and
 * started → the opening handshake, whose hooks run in one place (the
 * request is answered by `processRequest`, the connection limit, shutting
 * down, or the WebSocket upgrade; then `processResponse`) → the handler,
 * once the handshake succeeded → closed when the handler returns.
 *
 * @example
 * ```ts ignore
 * import { serve } from "@denows/websockets";
 * await using server = serve((ws) => ws.close(), { hostname: "127.0.0.1" });
 * console.log(server.addr, server.connections.size);
 * ```
 */
export class Server implements AsyncDisposable {
  /** The address listened on. */
  readonly addr: Deno.Addr;
  /** The port listened on (0 for a Unix socket). */
  readonly port: number;
  /** Resolves once the server is closed. */
  readonly finished: Promise<void>;

  readonly #handler: Handler;
  readonly #router: Router<ServerConnection> | undefined;
  readonly #options: ServeOptions;
  readonly #logger: Logger | undefined;
  readonly #openTimeout: number;
  readonly #closeTimeout: number;
  readonly #listener: Deno.Listener | undefined;
  readonly #tcpListener: TcpListener | undefined;
  readonly #connectionOptions: StreamConnectionOptions;
  // The same for TLS connections, which don't close at once (see the constructor).
  readonly #tlsConnectionOptions: StreamConnectionOptions;
  readonly #protocolOptions: ServerProtocolOptions;
  // Connections whose handler runs.
  readonly #connections = new Set<ServerConnection>();
  // Connections in their opening handshake, with the time it started (oldest first).
  readonly #inHandshake = new Map<ServerConnection, number>();
  // Connections whose handshake or handler hasn't finished, counted rather than
  // tracked one promise each; close() waits for the count to reach zero.
  #active = 0;
  #idleResolve: (() => void) | undefined;
  #closing = false;
  #closed = false;
  // The traffic of the connections that ended (see stats()), and connection counts.
  readonly #closedTotals: TrafficCounters = zeroCounters();
  #connectionsOpened = 0;
  #notUpgraded = 0;
  // One timer per server drops handshakes older than openTimeout, rather than a timer per
  // connection: a handshake ends between openTimeout and 1.25 × openTimeout after it began.
  #sweepTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #sweepEvery: number;
  readonly #acceptLoopDone: Promise<void>;
  #finishedResolve!: () => void;
  #closePromise: Promise<void> | undefined;

  /** Starts listening and serving with `handler`; the same as {@linkcode serve}. */
  constructor(handler: Handler, options: ServeOptions = {}) {
    if (options.tcp !== undefined && options.tcp !== "node:net" && options.tcp !== "Deno.listen") {
      throw new TypeError(`tcp must be "node:net" or "Deno.listen", got ${String(options.tcp)}`);
    }
    if (options.listener !== undefined) {
      for (const name of ["hostname", "port", "unix", "tls", "tcp"] as const) {
        if (options[name] !== undefined) {
          throw new TypeError(`serve(): option ${name} can't be given with listener`);
        }
      }
    }
    this.#handler = handler;
    this.#router = isRouter(handler) ? handler : undefined;
    this.#options = options;
    this.#logger = options.logger;
    this.#openTimeout = options.openTimeout ?? DEFAULTS.openTimeout;
    this.#closeTimeout = options.closeTimeout ?? DEFAULTS.closeTimeout;
    this.#sweepEvery = Math.max(this.#openTimeout / 4, 1);
    this.#connectionOptions = {
      ...options,
      onHandshake: this.#onHandshake,
      onHandshakeEnd: this.#onHandshakeEnd,
      closeAtOnce: true,
    };
    // A TLS connection closes with a close_notify that a half-close sends: keep that.
    this.#tlsConnectionOptions = { ...this.#connectionOptions, closeAtOnce: false };
    this.#protocolOptions = {
      origins: options.origins,
      extensions: options.extensions ??
        (options.compression === null ? [] : defaultServerExtensions()),
      subprotocols: options.subprotocols,
      selectSubprotocol: options.selectSubprotocol,
      serverHeader: options.serverHeader === null
        ? undefined
        : (options.serverHeader ?? SERVER_HEADER),
      maxSize: options.maxSize,
      httpLimits: options.httpLimits,
      logger: this.#logger,
    };
    this.finished = new Promise<void>((resolve) => (this.#finishedResolve = resolve));
    [this.#listener, this.#tcpListener] = this.#listen(options);
    this.#acceptLoopDone = this.#acceptLoop();
    options.signal?.addEventListener("abort", () => this.close(), { once: true });
    const addr = this.#listener?.addr ?? this.#tcpListener!.addr;
    this.addr = addr;
    this.port = addr.transport === "tcp" || addr.transport === "udp" ? addr.port : 0;
  }

  /** The open connections (a live set). */
  get connections(): ReadonlySet<ServerConnection> {
    return this.#connections;
  }

  /**
   * A snapshot of the server's statistics for dashboards: the traffic of
   * every connection since the server started (closed ones included, and
   * requests answered without upgrading), and connection counts. Costs one
   * pass over the open connections (six additions each) and one object.
   *
   * @example
   * ```ts ignore
   * setInterval(() => {
   *   const { connections, messagesReceived, bytesSent, wireBytesSent } = server.stats();
   *   console.log(`${connections} open, ${messagesReceived} messages in, ` +
   *     `compression saved ${bytesSent - wireBytesSent} bytes`);
   * }, 1000);
   * ```
   */
  stats(): ServerStats {
    const totals = this.#closedTotals;
    const stats: ServerStats = {
      messagesReceived: totals.messagesReceived,
      bytesReceived: totals.bytesReceived,
      wireBytesReceived: totals.wireBytesReceived,
      messagesSent: totals.messagesSent,
      bytesSent: totals.bytesSent,
      wireBytesSent: totals.wireBytesSent,
      connections: this.#connections.size,
      opening: this.#inHandshake.size,
      connectionsOpened: this.#connectionsOpened,
      notUpgraded: this.#notUpgraded,
    };
    for (const connection of this.#connections) addCounters(stats, connection.protocol.counters);
    return stats;
  }

  /**
   * Stops accepting, closes every connection with 1001 (going away) and
   * waits for them, up to `closeTimeout`. Idempotent.
   */
  close(): Promise<void> {
    return this.#closePromise ??= this.#close();
  }

  /** Closes the server when used with `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ---- Accepting ----

  // Plain TCP on an IP address goes through node:net (the default) when the runtime
  // allows (see _node_net.ts); otherwise, and for TLS and Unix sockets, through Deno.listen.
  #listen(options: ServeOptions): [Deno.Listener | undefined, TcpListener | undefined] {
    if (options.listener !== undefined) return [options.listener, undefined];
    if (options.unix !== undefined) {
      return [Deno.listen({ transport: "unix", path: options.unix }), undefined];
    }
    const hostname = options.hostname ?? "0.0.0.0";
    const port = options.port ?? 0;
    if (options.tls !== undefined) {
      const { cert, key } = options.tls;
      return [Deno.listenTls({ hostname, port, cert, key }), undefined];
    }
    if ((options.tcp ?? "node:net") === "node:net") {
      const tcpListener = listenTcp(
        hostname,
        port,
        (transport) => this.#closing ? transport.close() : this.#accepted(transport),
        (error) => this.#logger?.warn(`accept failed: ${error}`),
      );
      if (tcpListener !== undefined) return [undefined, tcpListener];
    }
    return [Deno.listen({ hostname, port }), undefined];
  }

  async #acceptLoop(): Promise<void> {
    const listener = this.#listener;
    if (listener === undefined) return;
    while (true) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (this.#closing) return;
        if (error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted) {
          return;
        }
        // E.g. too many open files: wait a little and go on serving.
        this.#logger?.warn(`accept failed: ${error}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
        continue;
      }
      this.#accepted(conn);
    }
  }

  // Starts the connection; once its opening handshake ended (#onHandshakeEnd), the handler
  // runs or the failure is counted. (No async function nor promise per handshake: a burst of
  // connections pays for each in garbage collection.)
  #accepted(transport: Transport): void {
    this.#active++;
    try {
      this.#open(transport);
    } catch (error) {
      this.#logger?.error("unexpected error in connection", error);
      this.#taskDone();
    }
  }

  // Makes and starts the connection, whose opening handshake the sweep bounds from now on.
  #open(transport: Transport): ServerConnection {
    const conn = transport as Deno.TcpConn;
    if (conn.setNoDelay !== undefined && this.#options.unix === undefined) {
      try {
        conn.setNoDelay(true);
      } catch {
        // not TCP
      }
    }
    const protocol = new ServerProtocol(this.#protocolOptions);
    const connection = new ServerConnection(
      protocol,
      transport,
      isTls(transport) ? this.#tlsConnectionOptions : this.#connectionOptions,
    );
    this.#inHandshake.set(connection, performance.now());
    if (this.#sweepTimer === undefined && !this.#closed) {
      this.#sweepTimer = setTimeout(this.#sweep, this.#sweepEvery);
    }
    connection.start();
    return connection;
  }

  // Called from the connection's read loop: the handler runs after it, in a microtask, as it
  // would after a promise.
  #onHandshakeEnd = (connection: StreamConnection, opened: boolean): void => {
    const serverConnection = connection as ServerConnection;
    queueMicrotask(
      opened ? () => this.#opened(serverConnection) : () => this.#notOpened(serverConnection),
    );
  };

  #opened(connection: ServerConnection): void {
    this.#inHandshake.delete(connection);
    this.#run(connection);
  }

  // Answered with an HTTP error, timed out, or the peer left; the connection ends by itself.
  #notOpened(connection: ServerConnection): void {
    this.#inHandshake.delete(connection);
    this.#notUpgraded++;
    addCounters(this.#closedTotals, connection.protocol.counters);
    this.#taskDone();
  }

  // Calls #taskDone() once the handler finished. (No async function here: an idle connection
  // keeps only the handler's own.)
  #run(connection: ServerConnection): void {
    this.#connections.add(connection);
    this.#connectionsOpened++;
    runHandler(connection, this.#handler, this.#logger, this.#handlerDone);
  }

  #handlerDone = (connection: ServerConnection): void => {
    this.#connections.delete(connection);
    addCounters(this.#closedTotals, connection.protocol.counters);
    this.#taskDone();
  };

  #taskDone(): void {
    if (--this.#active === 0 && this.#idleResolve !== undefined) {
      this.#idleResolve();
      this.#idleResolve = undefined;
    }
  }

  #sweep = (): void => {
    this.#sweepTimer = undefined;
    const now = performance.now();
    for (const [connection, started] of this.#inHandshake) {
      if (now - started < this.#openTimeout) break;
      this.#inHandshake.delete(connection);
      if (connection.state === State.CONNECTING) {
        const timeout = new HandshakeTimeout(this.#openTimeout);
        this.#logger?.info(`connection ${connection.id}: ${timeout.message}`);
        connection.abort();
      }
    }
    if (this.#inHandshake.size !== 0 && !this.#closed) {
      this.#sweepTimer = setTimeout(this.#sweep, this.#sweepEvery);
    }
  };

  // ---- The opening handshake: every hook, in this order ----

  // One handshake hook for every connection: the protocol is found on the connection.
  #onHandshake = (event: ProtocolEvent, connection: StreamConnection): Promise<void> | void => {
    if (event.type !== "request") return;
    const options = this.#options;
    if (
      options.processRequest === undefined && options.processResponse === undefined &&
      this.#router === undefined
    ) {
      // No hook to wait for: answer at once, without a promise (most servers, every handshake).
      this.#send(
        connection as ServerConnection,
        this.#decide(connection as ServerConnection, event.request),
      );
      return;
    }
    return this.#handshake(connection as ServerConnection, event.request);
  };

  // Answers the handshake request: decides the response (#respond), lets processResponse
  // change it, sends it.
  async #handshake(connection: ServerConnection, request: Request): Promise<void> {
    let response = await this.#respond(connection, request);
    const processResponse = this.#options.processResponse;
    if (processResponse !== undefined) {
      try {
        const answer = await processResponse(connection, request, response);
        if (answer !== undefined) response = await toResponse(answer);
      } catch (error) {
        response = this.#hookFailed(connection, "processResponse", error);
      }
    }
    this.#send(connection, response);
  }

  #send(connection: ServerConnection, response: Response): void {
    const protocol = connection.protocol as ServerProtocol;
    if (protocol.state !== State.CONNECTING) return; // the peer went away meanwhile
    protocol.sendResponse(response);
    connection.flushSoon();
    const status = response.statusCode;
    if (status !== 101) {
      this.#logger?.info(
        `connection ${connection.id}: handshake answered ${status}${
          response.exception ? `: ${response.exception.message}` : ""
        }`,
      );
    }
  }

  // The response to a handshake request, before processResponse: processRequest's answer, if
  // it gives one; else the router's (404, 400, a route's plain HTTP answer), if the handler is
  // one; else 503 over the connection limit or while shutting down; else the WebSocket upgrade
  // (or the 400 / 403 / 426 the protocol's checks give).
  async #respond(connection: ServerConnection, request: Request): Promise<Response> {
    const options = this.#options;
    if (options.processRequest !== undefined) {
      try {
        const answer = await options.processRequest(connection, request);
        if (answer !== undefined) return await toResponse(answer);
      } catch (error) {
        return this.#hookFailed(connection, "processRequest", error);
      }
    }
    if (this.#router !== undefined) {
      const answer = await this.#route(this.#router, connection, request);
      if (answer !== undefined) return answer;
    }
    return this.#decide(connection, request);
  }

  // The response once the hooks and the router had their say: 503 over the connection limit
  // or while shutting down, else the upgrade (or the protocol's 400 / 403 / 426).
  #decide(connection: ServerConnection, request: Request): Response {
    const protocol = connection.protocol as ServerProtocol;
    const maxConnections = this.#options.maxConnections;
    if (
      maxConnections !== undefined &&
      this.#connections.size + this.#inHandshake.size > maxConnections
    ) {
      const response = protocol.reject(
        503,
        `Too many connections: the limit is ${maxConnections}.\n`,
      );
      response.exception = new InvalidHandshake(`too many connections: limit is ${maxConnections}`);
      return response;
    }
    if (this.#closing) return protocol.reject(503, "Server is shutting down.\n");
    return protocol.accept(request);
  }

  // Matches the request against the router's routes: the answer when the request doesn't go on
  // to the handshake (no route, bad Host, a route's plain HTTP answer), otherwise `undefined`
  // once the connection is attached to its route.
  async #route(
    router: Router<ServerConnection>,
    connection: ServerConnection,
    request: Request,
  ): Promise<Response | undefined> {
    let host: string | undefined;
    try {
      host = request.headers.get("Host");
    } catch {
      host = undefined; // several Host headers
    }
    const url = requestUrl(request.path, host, isTls(connection.transport));
    if (url === undefined) {
      const what = request.path.startsWith("/") ? "Host header" : "request target";
      return connection.respond(400, `Failed to open a WebSocket connection: invalid ${what}.\n`);
    }
    try {
      const decision = await routeRequest(router, url, () => toWebRequest(url, request));
      if (decision.response !== undefined) return await toResponse(decision.response);
      router.attach(connection, decision.match);
      return undefined;
    } catch (error) {
      return this.#hookFailed(connection, "a route's respond()", error);
    }
  }

  // A hook that throws is a bug in the application: answer 500, log it, go on serving.
  #hookFailed(connection: ServerConnection, hook: string, error: unknown): Response {
    this.#logger?.error(`connection ${connection.id}: error in ${hook}`, error);
    const response = connection.respond(
      500,
      "Failed to open a WebSocket connection.\nSee server log for more information.\n",
    );
    response.exception = error instanceof Error ? error : new Error(String(error));
    return response;
  }

  // ---- Closing ----

  async #close(): Promise<void> {
    this.#closing = true;
    try {
      this.#listener?.close();
      this.#tcpListener?.close();
    } catch {
      // already closed
    }
    await this.#acceptLoopDone;
    // Connections that haven't sent a request yet (e.g. a browser's spare
    // sockets) have nothing to finish: drop them now.
    for (const connection of this.#inHandshake.keys()) {
      if (connection.request === undefined) {
        connection.abort();
      }
    }
    const all = [...this.#connections];
    await Promise.all(
      all.map((connection) => connection.close(CloseCode.GOING_AWAY, "server shutting down")),
    );
    // Handshakes in progress end within openTimeout; bound the wait by closeTimeout too.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#active === 0
        ? undefined
        : new Promise<void>((resolve) => (this.#idleResolve = resolve)),
      new Promise((resolve) => (timer = setTimeout(resolve, this.#closeTimeout))),
    ]);
    clearTimeout(timer);
    // Handshakes still in progress are dropped so that no socket outlives close().
    const dropped = [...this.#inHandshake.keys()];
    for (const connection of dropped) {
      connection.abort();
    }
    await Promise.all(dropped.map((connection) => connection.closed));
    this.#closed = true;
    clearTimeout(this.#sweepTimer);
    this.#sweepTimer = undefined;
    this.#finishedResolve();
  }
}

/**
 * Starts a WebSocket server and returns once it is listening: every
 * connection's opening handshake is checked (origins, subprotocols,
 * extensions, limits; failures answered 400 / 403 / 426 / 503), then
 * `handler` runs. Nothing a peer does can stop the server serving others.
 *
 * `handler` may be a router made by `route()`: each request is then matched
 * at the handshake, after `processRequest` (404 when no route matches, 400
 * for a `Host` header or a group that can't be used, a route's plain HTTP
 * answer), and the route's handler runs with `connection.params` set.
 *
 * @example
 * ```ts ignore
 * import { serve } from "@denows/websockets";
 * const server = serve(async (ws) => {
 *   for await (const message of ws) await ws.send(message);
 * }, { hostname: "127.0.0.1", port: 8765, maxSize: 4 * 1024 * 1024 });
 * // later
 * await server.close();
 * ```
 */
export function serve(handler: Handler, options: ServeOptions = {}): Server {
  return new Server(handler, options);
}

/**
 * Builds a `processRequest` hook that requires HTTP Basic authentication:
 * requests without valid credentials get 401 with `WWW-Authenticate`.
 * `check` receives the user name and password.
 *
 * @example
 * ```ts ignore
 * import { basicAuth, serve } from "@denows/websockets";
 * serve((ws) => ws.close(), {
 *   processRequest: basicAuth({ realm: "chat", check: (user, password) => user === "alice" && password === "s3cret" }),
 * });
 * ```
 */
export function basicAuth(options: {
  /**
   * The realm named in the `WWW-Authenticate` challenge.
   *
   * @default {"websocket"}
   */
  realm?: string;
  /** Whether the user name and password are valid. */
  check: (username: string, password: string) => boolean | Promise<boolean>;
}): ProcessRequest {
  const realm = options.realm ?? "websocket";
  return async (connection, request) => {
    const unauthorized = (text: string): Response => {
      const response = connection.respond(401, text);
      response.headers.append("WWW-Authenticate", `Basic realm="${realm}", charset="UTF-8"`);
      return response;
    };
    let header: string | undefined;
    try {
      header = request.headers.get("Authorization");
    } catch {
      return unauthorized("Unsupported credentials\n");
    }
    if (header === undefined) return unauthorized("Missing credentials\n");
    let username: string, password: string;
    try {
      [username, password] = parseAuthorizationBasic(header);
    } catch {
      return unauthorized("Unsupported credentials\n");
    }
    if (!(await options.check(username, password))) return unauthorized("Invalid credentials\n");
    return undefined;
  };
}
