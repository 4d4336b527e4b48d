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

import { type ConnectionOptions, DEFAULTS, PRODUCT } from "./abstract_connection.ts";
import { StreamConnection, type StreamConnectionOptions } from "./stream_connection.ts";
import type { Transport } from "./transport.ts";
import { listenTcp, type TcpListener } from "./_node_net.ts";
import { HandshakeTimeout, InvalidHandshake } from "./errors.ts";
import type { ServerExtensionFactory } from "./extensions.ts";
import { Headers, parseAuthorizationBasic } from "./headers.ts";
import { type HttpLimits, reasonPhrase, type Request, Response } from "./http11.ts";
import { defaultServerExtensions } from "./permessage_deflate.ts";
import {
  type OriginPattern,
  type ProtocolEvent,
  type SelectSubprotocol,
  ServerProtocol,
  State,
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

/** Options of {@linkcode serve}; every limit has a default, see the README. */
export interface ServeOptions extends ConnectionOptions {
  /** Interface to listen on. Default `"0.0.0.0"`. */
  hostname?: string;
  /** Port to listen on; 0 picks a free one. Default 0. */
  port?: number;
  /** Listen on this Unix socket path instead of TCP. */
  unix?: string;
  /** Serve `wss:` with this certificate and key. */
  tls?: TlsOptions;
  /**
   * The runtime API that serves plain TCP: `"Deno.listen"` (default) or
   * `"node:net"`. Both run the same protocol code. `"node:net"` is for fan-out
   * to many thousands of connections: its writes complete synchronously and
   * its event loop visits only ready sockets, so `broadcast()` to 10 000
   * clients runs about 2.7 times as fast; `"Deno.listen"` is faster for
   * large messages, single round trips and handshakes (figures in the
   * README's performance section). `"node:net"` applies to an IP address `hostname`
   * where the runtime provides what it needs, otherwise `Deno.listen` is
   * used; TLS and Unix sockets always use `Deno.listenTls` / `Deno.listen`.
   */
  tcp?: "node:net" | "Deno.listen";
  /** Accepted `Origin` values; default: any. `undefined` in the list accepts requests without `Origin`. */
  origins?: OriginPattern[];
  /** Subprotocols supported; the first one the client offered is chosen. */
  subprotocols?: string[];
  /** Custom subprotocol selection. */
  selectSubprotocol?: SelectSubprotocol;
  /** Extensions supported; replaces the ones `compression` would add. */
  extensions?: ServerExtensionFactory[];
  /** `"deflate"` (default) accepts permessage-deflate; `null` disables compression. */
  compression?: "deflate" | null;
  /** Hook before the handshake, e.g. to answer plain HTTP or authenticate. */
  processRequest?: ProcessRequest;
  /** Hook on the handshake response. */
  processResponse?: ProcessResponse;
  /** Value of the `Server` header; `null` leaves it out. Default {@linkcode SERVER_HEADER}. */
  serverHeader?: string | null;
  /** Time allowed for the opening handshake, in ms. Default 10 000. */
  openTimeout?: number;
  /** Connections at most; beyond, handshakes are answered with 503. Default: no limit. */
  maxConnections?: number;
  /** Limits of the handshake request: header count, line length. */
  httpLimits?: HttpLimits;
  /** Closes the server (as `server.close()`) when aborted. */
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
 * A running server, returned by {@linkcode serve}.
 *
 * @example
 * ```ts ignore
 * import { serve } from "@denows/websockets";
 * await using server = serve((ws) => ws.close(), { hostname: "127.0.0.1" });
 * console.log(server.addr, server.connections.size);
 * ```
 */
export interface Server extends AsyncDisposable {
  /** The address listened on. */
  readonly addr: Deno.Addr;
  /** The port listened on (0 for a Unix socket). */
  readonly port: number;
  /** The open connections (a live set). */
  readonly connections: ReadonlySet<ServerConnection>;
  /**
   * Stops accepting, closes every connection with 1001 (going away) and
   * waits for them, up to `closeTimeout`.
   */
  close(): Promise<void>;
  /** Resolves once the server is closed. */
  readonly finished: Promise<void>;
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

// Thrown by a server's handshake step when the handshake didn't succeed (nothing to report).
const HANDSHAKE_FAILED = Symbol("handshake failed");

/**
 * Starts a WebSocket server and returns once it is listening: every
 * connection's opening handshake is checked (origins, subprotocols,
 * extensions, limits; failures answered 400 / 403 / 426 / 503), then
 * `handler` runs. Nothing a peer does can stop the server serving others.
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
  // Plain TCP on an IP address goes through node:net when asked for and the runtime
  // allows (see _node_net.ts); otherwise, and for TLS and Unix sockets, through Deno.listen.
  if (options.tcp !== undefined && options.tcp !== "node:net" && options.tcp !== "Deno.listen") {
    throw new TypeError(`tcp must be "node:net" or "Deno.listen", got ${String(options.tcp)}`);
  }
  let listener: Deno.Listener | undefined;
  let tcpListener: TcpListener | undefined;
  if (options.unix !== undefined) {
    listener = Deno.listen({ transport: "unix", path: options.unix });
  } else if (options.tls !== undefined) {
    listener = Deno.listenTls({
      hostname: options.hostname ?? "0.0.0.0",
      port: options.port ?? 0,
      cert: options.tls.cert,
      key: options.tls.key,
    });
  } else {
    const hostname = options.hostname ?? "0.0.0.0";
    const port = options.port ?? 0;
    if (options.tcp === "node:net") {
      tcpListener = listenTcp(hostname, port, (transport) => {
        if (closing) {
          transport.close();
          return;
        }
        active++;
        handle(transport);
      }, (error) => logger?.warn(`accept failed: ${error}`));
    }
    if (tcpListener === undefined) listener = Deno.listen({ hostname, port });
  }
  const connections = new Set<ServerConnection>();
  // Connections whose handshake or handler hasn't finished, counted rather than
  // tracked one promise each; close() waits for the count to reach zero.
  let active = 0;
  let idleResolve: (() => void) | undefined;
  function taskDone(): void {
    if (--active === 0 && idleResolve !== undefined) {
      idleResolve();
      idleResolve = undefined;
    }
  }
  const logger = options.logger;
  const extensions = options.extensions ??
    (options.compression === null ? [] : defaultServerExtensions());
  const openTimeout = options.openTimeout ?? DEFAULTS.openTimeout;
  const closeTimeout = options.closeTimeout ?? DEFAULTS.closeTimeout;
  let closing = false;
  let closed = false;
  // Connections in their opening handshake, with the time it started (oldest first).
  const inHandshake = new Map<ServerConnection, number>();
  // One timer per server drops handshakes older than openTimeout, rather than a timer per
  // connection: a handshake ends between openTimeout and 1.25 × openTimeout after it began.
  let sweepTimer: ReturnType<typeof setTimeout> | undefined;
  const sweepEvery = Math.max(openTimeout / 4, 1);
  function sweep(): void {
    sweepTimer = undefined;
    const now = performance.now();
    for (const [connection, started] of inHandshake) {
      if (now - started < openTimeout) break;
      inHandshake.delete(connection);
      if (connection.state === State.CONNECTING) {
        logger?.info(`connection ${connection.id}: ${new HandshakeTimeout(openTimeout).message}`);
        connection.abort();
      }
    }
    if (inHandshake.size !== 0 && !closed) sweepTimer = setTimeout(sweep, sweepEvery);
  }

  // A hook that throws is a bug in the application: answer 500, log it, go on serving.
  function hookFailed(
    protocol: ServerProtocol,
    connection: ServerConnection,
    hook: string,
    error: unknown,
  ): Response {
    logger?.error(`connection ${connection.id}: error in ${hook}`, error);
    const response = protocol.reject(
      500,
      "Failed to open a WebSocket connection.\nSee server log for more information.\n",
    );
    response.exception = error instanceof Error ? error : new Error(String(error));
    return response;
  }

  // One handshake hook for every connection: the protocol is found on the connection.
  async function onHandshake(event: ProtocolEvent, current: StreamConnection): Promise<void> {
    if (event.type !== "request") return;
    const request = event.request;
    const self = current as ServerConnection;
    const protocol = self.protocol as ServerProtocol;
    let response: Response | undefined;
    if (options.processRequest !== undefined) {
      try {
        const answer = await options.processRequest(self, request);
        if (answer !== undefined) response = await toResponse(answer);
      } catch (error) {
        response = hookFailed(protocol, self, "processRequest", error);
      }
    }
    if (response === undefined) {
      if (
        options.maxConnections !== undefined &&
        connections.size + inHandshake.size > options.maxConnections
      ) {
        response = protocol.reject(
          503,
          `Too many connections: the limit is ${options.maxConnections}.\n`,
        );
        response.exception = new InvalidHandshake(
          `too many connections: limit is ${options.maxConnections}`,
        );
      } else if (closing) {
        response = protocol.reject(503, "Server is shutting down.\n");
      } else {
        response = protocol.accept(request);
      }
    }
    if (options.processResponse !== undefined) {
      try {
        const answer = await options.processResponse(self, request, response);
        if (answer !== undefined) response = await toResponse(answer);
      } catch (error) {
        response = hookFailed(protocol, self, "processResponse", error);
      }
    }
    if (protocol.state !== State.CONNECTING) return; // the peer went away meanwhile
    protocol.sendResponse(response);
    self.flushSoon();
    const status = response.statusCode;
    if (status !== 101) {
      logger?.info(
        `connection ${self.id}: handshake answered ${status}${
          response.exception ? `: ${response.exception.message}` : ""
        }`,
      );
    }
  }

  const connectionOptions: StreamConnectionOptions = {
    ...options,
    onHandshake,
    // A TLS connection closes with a close_notify that a half-close sends: keep that.
    closeAtOnce: options.tls === undefined,
  };
  const protocolOptions = {
    origins: options.origins,
    extensions,
    subprotocols: options.subprotocols,
    selectSubprotocol: options.selectSubprotocol,
    serverHeader: options.serverHeader === null
      ? undefined
      : (options.serverHeader ?? SERVER_HEADER),
    maxSize: options.maxSize,
    httpLimits: options.httpLimits,
    logger,
  };

  // Never rejects; calls taskDone() once the handshake failed or the handler finished.
  async function handle(conn: Transport): Promise<void> {
    let connection: ServerConnection;
    try {
      connection = await handshake(conn);
    } catch (error) {
      if (error !== HANDSHAKE_FAILED) unexpectedError(error);
      taskDone();
      return;
    }
    // The handler runs in a function of its own, so that nothing of the handshake stays referenced.
    runHandler(connection);
  }

  async function handshake(conn: Transport): Promise<ServerConnection> {
    if ((conn as Deno.TcpConn).setNoDelay !== undefined && options.unix === undefined) {
      try {
        (conn as Deno.TcpConn).setNoDelay(true);
      } catch {
        // not TCP
      }
    }
    const protocol = new ServerProtocol(protocolOptions);
    const connection = new ServerConnection(protocol, conn, connectionOptions);
    inHandshake.set(connection, performance.now());
    if (sweepTimer === undefined && !closed) sweepTimer = setTimeout(sweep, sweepEvery);
    connection.start();
    try {
      await connection.handshake;
    } catch {
      // Answered with an HTTP error, timed out, or the peer left; the connection ends by itself.
      throw HANDSHAKE_FAILED;
    } finally {
      inHandshake.delete(connection);
    }
    return connection;
  }

  // Never rejects; calls taskDone() once the handler finished.
  async function runHandler(connection: ServerConnection): Promise<void> {
    connections.add(connection);
    try {
      await handler(connection);
      await connection.close();
    } catch (error) {
      try {
        if (connection.state === State.OPEN || connection.state === State.CONNECTING) {
          logger?.error(`connection ${connection.id}: error in connection handler`, error);
          await connection.close(1011, "internal error");
        } else if (!(error instanceof Error && error.name.startsWith("ConnectionClosed"))) {
          logger?.error(`connection ${connection.id}: error in connection handler`, error);
        }
      } catch (closeError) {
        unexpectedError(closeError);
      }
    } finally {
      connections.delete(connection);
      taskDone();
    }
  }

  function unexpectedError(error: unknown): void {
    logger?.error("unexpected error in connection", error);
  }

  async function acceptLoop(): Promise<void> {
    if (listener === undefined) return;
    while (true) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (closing) return;
        if (error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted) {
          return;
        }
        // E.g. too many open files: wait a little and go on serving.
        logger?.warn(`accept failed: ${error}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
        continue;
      }
      active++;
      handle(conn);
    }
  }

  const acceptLoopDone = acceptLoop();
  let finishedResolve!: () => void;
  const finished = new Promise<void>((resolve) => (finishedResolve = resolve));
  let closePromise: Promise<void> | undefined;

  async function close(): Promise<void> {
    closing = true;
    try {
      listener?.close();
      tcpListener?.close();
    } catch {
      // already closed
    }
    await acceptLoopDone;
    // Connections that haven't sent a request yet (e.g. a browser's spare
    // sockets) have nothing to finish: drop them now.
    for (const connection of inHandshake.keys()) {
      if (connection.request === undefined) {
        connection.abort();
      }
    }
    const all = [...connections];
    await Promise.all(all.map((connection) => connection.close(1001, "server shutting down")));
    // Handshakes in progress end within openTimeout; bound the wait by closeTimeout too.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      active === 0 ? undefined : new Promise<void>((resolve) => (idleResolve = resolve)),
      new Promise((resolve) => (timer = setTimeout(resolve, closeTimeout))),
    ]);
    clearTimeout(timer);
    // Handshakes still in progress are dropped so that no socket outlives close().
    const dropped = [...inHandshake.keys()];
    for (const connection of dropped) {
      connection.abort();
    }
    await Promise.all(dropped.map((connection) => connection.closed));
    closed = true;
    clearTimeout(sweepTimer);
    sweepTimer = undefined;
    finishedResolve();
  }

  options.signal?.addEventListener("abort", () => {
    closePromise ??= close();
  }, { once: true });

  const addr = listener?.addr ?? tcpListener!.addr;
  return {
    addr,
    port: addr.transport === "tcp" || addr.transport === "udp" ? addr.port : 0,
    connections,
    finished,
    close(): Promise<void> {
      closePromise ??= close();
      return closePromise;
    },
    [Symbol.asyncDispose](): Promise<void> {
      closePromise ??= close();
      return closePromise;
    },
  };
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
  realm?: string;
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
