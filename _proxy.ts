/**
 * Private: which proxy a client connection goes through. Parses proxy URLs
 * (`http:`, `https:`, `socks5:`, `socks5h:`), reads the defaults from the
 * environment as curl and Python `websockets` do (`HTTPS_PROXY` for `wss:`,
 * `HTTP_PROXY` for `ws:`, `ALL_PROXY` for either, lower case first), and
 * applies `NO_PROXY`. The tunnel itself is opened by `_tunnel.ts`.
 *
 * @module
 */

import { InvalidProxy } from "./errors.ts";
import type { WebSocketURI } from "./uri.ts";

/** The kinds of proxies supported. */
export type ProxyScheme = "http" | "https" | "socks5" | "socks5h";

/** A parsed proxy URL. */
export interface Proxy {
  readonly scheme: ProxyScheme;
  /** Host name or IP address, in lower case; an IPv6 address has no brackets. */
  readonly host: string;
  readonly port: number;
  /** The user name, percent-decoded; `undefined` without credentials. */
  readonly username: string | undefined;
  /** The password, percent-decoded (`""` when the URL has a user name only). */
  readonly password: string | undefined;
  /** The URL without credentials, for messages: `http://127.0.0.1:3128`. */
  readonly display: string;
}

const DEFAULT_PORTS: Record<ProxyScheme, number> = {
  http: 80,
  https: 443,
  socks5: 1080,
  socks5h: 1080,
};

/** Replaces the user info of a URL-like string, so that messages never show credentials. */
export function redact(url: string): string {
  return url.replace(/^([^/?#]*\/\/)[^/?#]*@/, "$1***@");
}

/**
 * Parses a proxy URL. Without a scheme (`proxy.example:3128`, as some
 * environments set it) `http://` is assumed, as curl does.
 *
 * @throws {InvalidProxy} for another scheme, no host, a path, query or
 * fragment, or user info that isn't valid percent-encoding.
 */
export function parseProxy(url: string): Proxy {
  const shown = redact(url);
  const text = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(url) ? url : `http://${url}`;
  let parsed: URL;
  try {
    parsed = new URL(text);
  } catch {
    throw new InvalidProxy(shown, "not a URL");
  }
  const scheme = parsed.protocol.slice(0, -1) as ProxyScheme;
  if (!(scheme in DEFAULT_PORTS)) {
    throw new InvalidProxy(shown, "scheme isn't http, https, socks5 or socks5h");
  }
  // `socks5:` isn't a scheme the URL standard knows: parse the same authority as `http:` to get
  // a host in canonical form (lower case, IDNA, IPv4 and IPv6 normalized).
  let host: string;
  try {
    host = new URL(`http://${text.slice(scheme.length + 3)}`).hostname;
  } catch {
    throw new InvalidProxy(shown, "invalid host");
  }
  if (host === "") throw new InvalidProxy(shown, "no host");
  if ((parsed.pathname !== "" && parsed.pathname !== "/") || parsed.search || parsed.hash) {
    throw new InvalidProxy(shown, "a proxy URL has no path, query or fragment");
  }
  if (host.startsWith("[")) host = host.slice(1, -1);
  const port = parsed.port === "" ? DEFAULT_PORTS[scheme] : Number(parsed.port);
  let username: string | undefined;
  let password: string | undefined;
  if (parsed.username !== "" || parsed.password !== "") {
    try {
      username = decodeURIComponent(parsed.username);
      password = decodeURIComponent(parsed.password);
    } catch {
      throw new InvalidProxy(shown, "invalid percent-encoding in user info");
    }
    // Basic credentials are `user:password`: the user name can't have a colon (RFC 7617).
    if (username.includes(":") && (scheme === "http" || scheme === "https")) {
      throw new InvalidProxy(shown, "the user name of an HTTP proxy can't contain ':'");
    }
  }
  const hostPart = host.includes(":") ? `[${host}]` : host;
  return { scheme, host, port, username, password, display: `${scheme}://${hostPart}:${port}` };
}

/** Reads an environment variable. */
export type EnvReader = (name: string) => string | undefined;

/**
 * A reader of the environment that never prompts: when `--allow-env` covers
 * every variable it reads them directly (one permission query per reader);
 * otherwise it reads only the variables the program may read, and the
 * others are `undefined`.
 */
export function environment(): EnvReader {
  let all = false;
  try {
    all = Deno.permissions.querySync({ name: "env" }).state === "granted";
  } catch {
    // not Deno, or no permissions API: per-variable queries below fail the same way
  }
  return all ? readGranted : readEnv;
}

function readGranted(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

/** Reads one environment variable if the program may read it, without prompting. */
export function readEnv(name: string): string | undefined {
  try {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
      return undefined;
    }
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

// The first variable of `names` that is set and not empty, lower case first.
function firstSet(names: string[], env: EnvReader): [name: string, value: string] | undefined {
  for (const name of names) {
    for (const variant of [name.toLowerCase(), name.toUpperCase()]) {
      const value = env(variant)?.trim();
      if (value !== undefined && value !== "") return [variant, value];
    }
  }
  return undefined;
}

/**
 * The proxy URL the environment sets for `uri`: `https_proxy` /
 * `HTTPS_PROXY` for `wss:`, `http_proxy` / `HTTP_PROXY` for `ws:`, else
 * `all_proxy` / `ALL_PROXY`; `undefined` when none is set or `no_proxy` /
 * `NO_PROXY` matches the URI's host and port.
 *
 * @throws {InvalidProxy} when the variable that applies isn't a valid proxy URL.
 */
export function proxyFromEnv(
  uri: WebSocketURI,
  env: EnvReader = environment(),
): Proxy | undefined {
  const found = firstSet([uri.secure ? "https_proxy" : "http_proxy", "all_proxy"], env);
  if (found === undefined) return undefined;
  const noProxy = firstSet(["no_proxy"], env);
  if (noProxy !== undefined && bypassProxy(uri.host, uri.port, noProxy[1])) return undefined;
  try {
    return parseProxy(found[1]);
  } catch (error) {
    if (!(error instanceof InvalidProxy)) throw error;
    throw new InvalidProxy(error.proxy, `${error.reason} (from ${found[0]})`);
  }
}

/**
 * Whether `NO_PROXY` (a comma-separated list) exempts `host`:`port` from
 * the proxy. Entries are matched without resolving names:
 *
 * - `*` matches every host;
 * - a host name matches itself and its subdomains; a leading `.` or `*.`
 *   means the same (`example.com`, `.example.com` and `*.example.com` all
 *   match `example.com` and `a.example.com`);
 * - an IP address matches that address (IPv6 with or without brackets);
 *   `address/bits` matches a CIDR range, IPv4 or IPv6;
 * - `entry:port` (`[v6]:port` for IPv6) matches that port only.
 */
export function bypassProxy(host: string, port: number, noProxy: string): boolean {
  const hostName = host.toLowerCase().replace(/\.$/, "");
  const hostAddress = parseIp(hostName);
  for (let entry of noProxy.split(",")) {
    entry = entry.trim().toLowerCase();
    if (entry === "") continue;
    if (entry === "*") return true;
    // The port: after a bracketed IPv6 address, or after the only colon of a name or IPv4.
    let entryPort: number | undefined;
    const bracketed = /^\[([^\]]*)\](?::(\d+))?$/.exec(entry);
    if (bracketed !== null) {
      entry = bracketed[1];
      if (bracketed[2] !== undefined) entryPort = Number(bracketed[2]);
    } else {
      const portMatch = /^([^:]*):(\d+)$/.exec(entry);
      if (portMatch !== null) {
        entry = portMatch[1];
        entryPort = Number(portMatch[2]);
      }
    }
    if (entryPort !== undefined && entryPort !== port) continue;
    if (matchesEntry(hostName, hostAddress, entry)) return true;
  }
  return false;
}

function matchesEntry(host: string, address: Uint8Array | undefined, entry: string): boolean {
  const slash = entry.indexOf("/");
  if (slash !== -1) {
    const network = parseIp(entry.slice(0, slash));
    const bitsText = entry.slice(slash + 1);
    if (address === undefined || network === undefined || !/^\d+$/.test(bitsText)) return false;
    const bits = Number(bitsText);
    if (network.length !== address.length || bits > network.length * 8) return false;
    return samePrefix(address, network, bits);
  }
  const entryAddress = parseIp(entry);
  if (entryAddress !== undefined || address !== undefined) {
    return entryAddress !== undefined && address !== undefined &&
      entryAddress.length === address.length &&
      samePrefix(address, entryAddress, address.length * 8);
  }
  const name = entry.replace(/^\*?\./, "").replace(/\.$/, "");
  return name !== "" && (host === name || host.endsWith(`.${name}`));
}

function samePrefix(a: Uint8Array, b: Uint8Array, bits: number): boolean {
  let i = 0;
  for (; bits >= 8; bits -= 8, i++) if (a[i] !== b[i]) return false;
  if (bits === 0) return true;
  const mask = (0xff << (8 - bits)) & 0xff;
  return (a[i] & mask) === (b[i] & mask);
}

/** The bytes of an IPv4 (4) or IPv6 (16) address, `undefined` for anything else. */
export function parseIp(text: string): Uint8Array | undefined {
  if (/^\d+\.\d+\.\d+\.\d+$/.test(text)) {
    const parts = text.split(".").map(Number);
    return parts.every((part) => part <= 255) ? new Uint8Array(parts) : undefined;
  }
  if (!text.includes(":") || !/^[0-9a-f:.]+$/i.test(text)) return undefined;
  let hostname: string;
  try {
    // The URL parser validates the address and writes it as eight (or fewer, with ::) groups.
    hostname = new URL(`http://[${text}]/`).hostname.slice(1, -1);
  } catch {
    return undefined;
  }
  const [head, tail] = hostname.split("::");
  const headGroups = head === "" ? [] : head.split(":");
  const tailGroups = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups = tail === undefined
    ? headGroups
    : [...headGroups, ...Array(8 - headGroups.length - tailGroups.length).fill("0"), ...tailGroups];
  const bytes = new Uint8Array(16);
  groups.forEach((group, i) => {
    const value = parseInt(group, 16);
    bytes[2 * i] = value >> 8;
    bytes[2 * i + 1] = value & 0xff;
  });
  return bytes;
}
