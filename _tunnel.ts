/**
 * Private: opens a tunnel to a WebSocket server through a proxy, as
 * `_proxy.ts` chose it: HTTP `CONNECT` (RFC 9110 §9.3.6) over TCP or TLS,
 * or SOCKS5 (RFC 1928) with username/password authentication (RFC 1929);
 * then, for `wss:`, TLS to the server inside the tunnel.
 *
 * Everything read from the proxy is bounded: the `CONNECT` response by the
 * handshake's `httpLimits` (its body is never read), SOCKS5 replies by their
 * own format. The caller bounds the time with `signal`, which closes the
 * connection to the proxy.
 *
 * @module
 */

import { Duplex } from "node:stream";
import * as nodeTls from "node:tls";
import { lookup } from "node:dns/promises";
import { describeError } from "./_describe.ts";
import { SocketTransport } from "./_socket_transport.ts";
import type { Proxy } from "./_proxy.ts";
import { parseIp } from "./_proxy.ts";
import type { Transport } from "./transport.ts";
import { InvalidProxyMessage, InvalidProxyStatus, ProxyError, SocksProxyError } from "./errors.ts";
import { buildAuthorizationBasic, Headers } from "./headers.ts";
import { type HttpLimits, ResponseParser } from "./http11.ts";
import type { WebSocketURI } from "./uri.ts";

/** What opening a tunnel needs besides the proxy and the target. */
export interface TunnelOptions {
  /** Extra CA certificates, trusted for the server (`wss:`) and for an `https:` proxy. */
  caCerts?: string[];
  /** Limits of the proxy's `CONNECT` response (header count, line length). */
  httpLimits?: HttpLimits;
  /** `User-Agent` sent to an HTTP proxy, if any. */
  userAgent?: string;
  /** Aborting closes the connection to the proxy (the caller's deadline). */
  signal: AbortSignal;
}

type ProxyConn = Deno.TcpConn | Deno.TlsConn;

const encoder = new TextEncoder();

function closeQuietly(conn: { close(): void }): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

/**
 * Connects to `proxy`, has it open a tunnel to `uri`'s host and port, and
 * returns the tunnel as a transport (TLS to the server inside it for `wss:`).
 *
 * @throws {ProxyError} (or a subclass) when the proxy can't be reached or
 * refuses; the abort reason when `signal` aborts.
 */
export async function openTunnel(
  proxy: Proxy,
  uri: WebSocketURI,
  options: TunnelOptions,
): Promise<Transport> {
  const { signal } = options;
  let conn: ProxyConn;
  try {
    if (proxy.scheme === "https") {
      conn = await Deno.connectTls({
        hostname: proxy.host,
        port: proxy.port,
        caCerts: options.caCerts,
      });
    } else {
      conn = await Deno.connect({ hostname: proxy.host, port: proxy.port, signal });
    }
  } catch (error) {
    signal.throwIfAborted();
    throw new ProxyError(proxy.display, `cannot connect: ${describeError(error)}`, {
      cause: error,
    });
  }
  const onAbort = () => closeQuietly(conn);
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    signal.throwIfAborted();
    if (proxy.scheme === "https") {
      try {
        await (conn as Deno.TlsConn).handshake();
      } catch (error) {
        signal.throwIfAborted();
        throw new ProxyError(proxy.display, `TLS handshake failed: ${describeError(error)}`, {
          cause: error,
        });
      }
    } else {
      (conn as Deno.TcpConn).setNoDelay(true);
    }
    const io = new ProxyIO(conn, proxy, signal);
    if (proxy.scheme === "socks5" || proxy.scheme === "socks5h") {
      await socks5Connect(io, proxy, uri);
    } else {
      await httpConnect(io, proxy, uri, options);
    }
    if (!uri.secure) return conn;
    if (proxy.scheme !== "https") {
      return await Deno.startTls(conn as Deno.TcpConn, {
        hostname: uri.host,
        caCerts: options.caCerts,
      });
    }
    return await tlsInTls(conn as Deno.TlsConn, uri, options);
  } catch (error) {
    closeQuietly(conn);
    throw error;
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

// Reads and writes on the connection to the proxy, turning failures into ProxyErrors (or the
// abort reason, once aborted).
class ProxyIO {
  readonly conn: ProxyConn;
  readonly proxy: Proxy;
  readonly signal: AbortSignal;

  constructor(conn: ProxyConn, proxy: Proxy, signal: AbortSignal) {
    this.conn = conn;
    this.proxy = proxy;
    this.signal = signal;
  }

  #lost(error: unknown, what: string): never {
    this.signal.throwIfAborted();
    throw new ProxyError(this.proxy.display, `connection lost ${what}: ${describeError(error)}`, {
      cause: error,
    });
  }

  async write(bytes: Uint8Array): Promise<void> {
    try {
      while (bytes.length > 0) bytes = bytes.subarray(await this.conn.write(bytes));
    } catch (error) {
      this.#lost(error, "while sending");
    }
  }

  /** Reads some bytes into `buffer`; `null` at the end of the stream. */
  async read(buffer: Uint8Array, what: string): Promise<number | null> {
    let count: number | null;
    try {
      count = await this.conn.read(buffer);
    } catch (error) {
      if (error instanceof Deno.errors.UnexpectedEof) return null;
      this.#lost(error, `while reading ${what}`);
    }
    this.signal.throwIfAborted();
    return count;
  }

  /** Reads exactly `length` bytes (never more: what follows belongs to the tunnel). */
  async readExactly(length: number, what: string): Promise<Uint8Array> {
    const bytes = new Uint8Array(length);
    for (let filled = 0; filled < length;) {
      const count = await this.read(bytes.subarray(filled), what);
      if (count === null) {
        throw new InvalidProxyMessage(
          this.proxy.display,
          `connection closed while reading ${what}`,
        );
      }
      filled += count;
    }
    return bytes;
  }
}

// --------------------------------------------------------------------------- HTTP CONNECT

function authority(uri: WebSocketURI): string {
  return `${uri.host.includes(":") ? `[${uri.host}]` : uri.host}:${uri.port}`;
}

async function httpConnect(
  io: ProxyIO,
  proxy: Proxy,
  uri: WebSocketURI,
  options: TunnelOptions,
): Promise<void> {
  const target = authority(uri);
  const headers = new Headers([["Host", target]]);
  if (options.userAgent !== undefined) headers.append("User-Agent", options.userAgent);
  if (proxy.username !== undefined) {
    headers.append(
      "Proxy-Authorization",
      buildAuthorizationBasic(proxy.username, proxy.password ?? ""),
    );
  }
  const head = encoder.encode(`CONNECT ${target} HTTP/1.1\r\n`);
  const fields = headers.serialize();
  const request = new Uint8Array(head.length + fields.length);
  request.set(head);
  request.set(fields, head.length);
  await io.write(request);

  const parser = new ResponseParser(options.httpLimits, { connect: true });
  // The response ends at its empty line and nothing may follow it before the client speaks:
  // small reads are enough and read nothing of the tunnel's.
  const buffer = new Uint8Array(4096);
  let result;
  try {
    for (;;) {
      const count = await io.read(buffer, "the CONNECT response");
      result = count === null ? parser.feedEof() : parser.feed(buffer.subarray(0, count));
      if (result !== undefined) break;
    }
  } catch (error) {
    if (error instanceof ProxyError || io.signal.aborted) throw error;
    throw new InvalidProxyMessage(proxy.display, describeError(error), { cause: error });
  }
  const { message: response, rest } = result;
  if (response.statusCode < 200 || response.statusCode > 299) {
    throw new InvalidProxyStatus(proxy.display, response);
  }
  if (rest.length !== 0) {
    throw new InvalidProxyMessage(
      proxy.display,
      `${rest.length} unexpected bytes after HTTP ${response.statusCode} to CONNECT`,
    );
  }
}

// --------------------------------------------------------------------------- SOCKS5

const SOCKS_REPLIES: Record<number, string> = {
  1: "general SOCKS server failure",
  2: "connection not allowed by ruleset",
  3: "network unreachable",
  4: "host unreachable",
  5: "connection refused by destination host",
  6: "TTL expired",
  7: "command not supported",
  8: "address type not supported",
};

/** SOCKS5 reply codes worth retrying: the proxy or the path to the server failed. */
export const TRANSIENT_SOCKS_REPLIES: ReadonlySet<number> = new Set([1, 3, 4, 5, 6]);

async function socks5Connect(io: ProxyIO, proxy: Proxy, uri: WebSocketURI): Promise<void> {
  const display = proxy.display;
  const withCredentials = proxy.username !== undefined;
  // Methods offered: no authentication, and username/password when credentials are given.
  await io.write(new Uint8Array(withCredentials ? [5, 2, 0, 2] : [5, 1, 0]));
  const [version, method] = await io.readExactly(2, "the SOCKS5 method selection");
  if (version !== 5) {
    throw new InvalidProxyMessage(display, `not a SOCKS5 reply: version ${version}`);
  }
  if (method === 0xff) {
    throw new SocksProxyError(
      display,
      withCredentials
        ? "no acceptable authentication method"
        : "no acceptable authentication method (the proxy wants credentials)",
    );
  }
  if (method === 2 && withCredentials) {
    const username = encoder.encode(proxy.username);
    const password = encoder.encode(proxy.password ?? "");
    if (username.length > 255 || password.length > 255) {
      throw new SocksProxyError(display, "user name or password longer than 255 bytes");
    }
    await io.write(
      new Uint8Array([1, username.length, ...username, password.length, ...password]),
    );
    const [authVersion, status] = await io.readExactly(2, "the SOCKS5 authentication reply");
    if (authVersion !== 1) {
      throw new InvalidProxyMessage(
        display,
        `invalid SOCKS5 authentication reply: version ${authVersion}`,
      );
    }
    if (status !== 0) {
      throw new SocksProxyError(
        display,
        `authentication failed: user name or password rejected (status ${status})`,
      );
    }
  } else if (method !== 0) {
    throw new InvalidProxyMessage(
      display,
      `proxy chose authentication method ${method}, not offered`,
    );
  }

  const address = await socksAddress(proxy, uri.host);
  await io.write(new Uint8Array([5, 1, 0, ...address, uri.port >> 8, uri.port & 0xff]));
  const [replyVersion, reply, , type] = await io.readExactly(4, "the SOCKS5 reply");
  if (replyVersion !== 5) {
    throw new InvalidProxyMessage(display, `not a SOCKS5 reply: version ${replyVersion}`);
  }
  if (reply !== 0) {
    throw new SocksProxyError(display, SOCKS_REPLIES[reply] ?? "unknown SOCKS5 reply", reply);
  }
  // The address the proxy bound, which nobody needs: read it, no more.
  let length: number;
  if (type === 1) length = 4;
  else if (type === 4) length = 16;
  else if (type === 3) [length] = await io.readExactly(1, "the SOCKS5 reply");
  else throw new InvalidProxyMessage(display, `invalid address type in SOCKS5 reply: ${type}`);
  await io.readExactly(length + 2, "the SOCKS5 reply");
}

// ATYP and address of the CONNECT request: an IP address as is; a name resolved here
// (`socks5:`) or sent for the proxy to resolve (`socks5h:`).
async function socksAddress(proxy: Proxy, host: string): Promise<number[]> {
  let ip = parseIp(host);
  if (ip === undefined && proxy.scheme === "socks5") {
    let address: string;
    try {
      ({ address } = await lookup(host));
    } catch (error) {
      throw new ProxyError(proxy.display, `cannot resolve ${host}: ${describeError(error)}`, {
        cause: error,
      });
    }
    ip = parseIp(address);
  }
  if (ip !== undefined) return [ip.length === 4 ? 1 : 4, ...ip];
  const name = encoder.encode(host);
  if (name.length > 255) {
    throw new SocksProxyError(proxy.display, `host name longer than 255 bytes: ${host}`);
  }
  return [3, name.length, ...name];
}

// --------------------------------------------------------------------------- TLS inside TLS

// node:tls's `ca` replaces the default roots, where Deno's `caCerts` adds to them: add the
// default roots to `caCerts` when the program may read them (`--allow-sys`; never prompting).
function trustedByNodeTls(caCerts: string[] | undefined): string[] | undefined {
  if (caCerts === undefined) return undefined;
  try {
    const descriptor = { name: "sys", kind: "ca" } as unknown as Deno.PermissionDescriptor;
    if (Deno.permissions.querySync(descriptor).state === "granted") {
      // getCACertificates("default") (newer) has what node:tls trusts without `ca`: the bundled
      // roots and the extra ones (NODE_EXTRA_CA_CERTS); rootCertificates the bundled ones.
      const defaults = (nodeTls as { getCACertificates?: (kind: string) => string[] })
        .getCACertificates?.("default") ?? nodeTls.rootCertificates;
      return [...defaults, ...caCerts];
    }
  } catch {
    // a runtime without this permission kind: caCerts alone
  }
  return caCerts;
}

// Deno.startTls() takes a TCP connection only, so TLS to the server inside a TLS connection to
// an `https:` proxy goes through node:tls over the outer connection's streams.
async function tlsInTls(
  conn: Deno.TlsConn,
  uri: WebSocketURI,
  options: TunnelOptions,
): Promise<Transport> {
  const outer = Duplex.fromWeb({ readable: conn.readable, writable: conn.writable });
  const socket: nodeTls.TLSSocket = nodeTls.connect({
    socket: outer,
    servername: parseIp(uri.host) === undefined ? uri.host : undefined,
    host: uri.host,
    ca: trustedByNodeTls(options.caCerts),
  });
  const onAbort = () => socket.destroy();
  options.signal.addEventListener("abort", onAbort, { once: true });
  let onError: ((error: Error) => void) | undefined;
  let onClose: (() => void) | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      onError = reject;
      onClose = () => reject(options.signal.reason ?? new Deno.errors.UnexpectedEof());
      socket.once("secureConnect", () => resolve());
      socket.once("error", onError);
      socket.once("close", onClose);
    });
  } catch (error) {
    socket.on("error", () => {}); // whatever else it reports while going away
    socket.destroy();
    options.signal.throwIfAborted();
    throw error;
  } finally {
    options.signal.removeEventListener("abort", onAbort);
    socket.off("error", onError!);
    socket.off("close", onClose!);
  }
  return new SocketTransport(socket, { localAddr: conn.localAddr, remoteAddr: conn.remoteAddr });
}
