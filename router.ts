/**
 * {@linkcode route}: dispatches connections to handlers by URL pattern, with
 * the web-standard `URLPattern` built into the runtime, like Python
 * `websockets`' `route()`. The router is a connection handler: give it to
 * `serve()` or to Deploy's `handler()` in place of one. Both match every
 * request at the handshake, before anything is upgraded:
 *
 * - no route matches: `404 Not Found`;
 * - a route matches: its pattern's groups, percent-decoded, become
 *   `connection.params`, and its `handler` runs once the connection is
 *   open; a group that isn't valid percent-encoded UTF-8 gets `400 Bad
 *   Request`;
 * - a route with `respond` may answer plain HTTP instead (a health check, a
 *   page, a 401), and a route without `handler` only answers plain HTTP.
 *
 * Requests are matched as `http:` URLs (`https:` over TLS) built from the
 * `Host` header and the request path, the URL that `Deno.serve` gives its
 * handlers too, so host patterns work on both.
 *
 * @example
 * ```ts ignore
 * import { route, serve } from "@denows/websockets";
 *
 * serve(route([
 *   {
 *     pattern: "/echo",
 *     handler: async (ws) => {
 *       for await (const message of ws) await ws.send(message);
 *     },
 *   },
 *   { pattern: "/rooms/:name", handler: (ws) => ws.send(`welcome to ${ws.params.name}`) },
 *   { pattern: "/healthz", respond: () => new Response("OK\n") },
 * ]), { port: 8765 });
 * ```
 *
 * @module
 */

import type { Connection } from "./connection.ts";
import { InvalidMessage } from "./errors.ts";

/**
 * The groups a route's pattern matched, percent-decoded, by name
 * (`connection.params.name` for `/rooms/:name`); a wildcard's group is named
 * by its index (`"0"`). A group that an optional part didn't match is absent.
 *
 * @example
 * ```ts
 * import type { RouteParams } from "@denows/websockets";
 * const params: RouteParams = { name: "tea room" };
 * console.log(params.name); // tea room
 * ```
 */
export type RouteParams = Readonly<Record<string, string>>;

/**
 * A plain HTTP answer for a route: called at the handshake with the request
 * (a WHATWG `Request` whose `url` is the one matched) and the route's
 * params. Return a response to send it instead of upgrading, or `undefined`
 * to go on with the WebSocket handshake (for a route with a `handler`; a
 * route without one then gets 404).
 *
 * @example
 * ```ts
 * import type { RouteResponder } from "@denows/websockets";
 * const health: RouteResponder = () => new Response("OK\n");
 * console.log((health(new Request("http://localhost/healthz"), {}) as Response).status); // 200
 * ```
 */
export type RouteResponder = (
  request: globalThis.Request,
  params: RouteParams,
) => globalThis.Response | undefined | Promise<globalThis.Response | undefined>;

/**
 * One entry of {@linkcode route}: a pattern, and what to do with the
 * requests it matches. At least one of `handler` and `respond` is required.
 *
 * @example
 * ```ts
 * import type { Route } from "@denows/websockets";
 * const echo: Route = {
 *   pattern: "/echo",
 *   handler: async (ws) => {
 *     for await (const message of ws) await ws.send(message);
 *   },
 * };
 * console.log(echo.pattern); // /echo
 * ```
 */
export interface Route<C extends Connection = Connection> {
  /**
   * A pathname pattern (`"/rooms/:name"`, URLPattern syntax), or a
   * `URLPattern` for anything else (a host, a query). A string is the
   * pathname alone: any host, any query matches.
   */
  pattern: string | URLPattern;
  /**
   * Runs once per connection this route accepted, like a handler given to
   * `serve()`.
   *
   * @default {undefined} (a plain HTTP route: `respond` answers)
   */
  handler?: (connection: C) => void | Promise<void>;
  /**
   * Runs before the handshake: a response answers plain HTTP without
   * upgrading, `undefined` goes on with the handshake.
   *
   * @default {undefined} (every matching request is a WebSocket handshake)
   */
  respond?: RouteResponder;
}

/**
 * A route that matched a URL, and its params (percent-decoded).
 *
 * @example
 * ```ts
 * import { route } from "@denows/websockets";
 * const router = route([{ pattern: "/rooms/:name", handler: () => {} }]);
 * console.log(router.match("http://localhost/rooms/tea%20room")?.params); // { name: "tea room" }
 * ```
 */
export interface RouteMatch<C extends Connection = Connection> {
  /** The first route whose pattern matched. */
  readonly route: Route<C>;
  /** Its groups, percent-decoded. */
  readonly params: RouteParams;
}

/**
 * What {@linkcode route} returns: a connection handler that runs the
 * handler of the route its connection matched, and the matching that
 * `serve()` and Deploy's `handler()` run at the handshake.
 *
 * @example
 * ```ts
 * import { route } from "@denows/websockets";
 * const router = route([{ pattern: "/echo", handler: () => {} }]);
 * console.log(router.match("http://localhost/echo") !== undefined); // true
 * console.log(router.match("http://localhost/echo/x")); // undefined
 * ```
 */
export interface Router<C extends Connection = Connection> {
  /**
   * Runs the handler of the route `connection` was matched to (by the
   * server, or with {@linkcode Router.attach}); throws `TypeError` for a
   * connection that wasn't matched.
   */
  (connection: C): Promise<void>;
  /** The routes, in the order they are tried. */
  readonly routes: readonly Route<C>[];
  /**
   * The first route whose pattern matches `url`, with its params
   * percent-decoded; `undefined` when none matches.
   *
   * @throws {InvalidMessage} when a matched group is not valid
   * percent-encoded UTF-8 (servers answer 400).
   * @throws {TypeError} when `url` is not a valid URL.
   */
  match(url: string | URL): RouteMatch<C> | undefined;
  /**
   * Records that `connection` goes to `match`'s route: sets
   * `connection.params`, and the router then runs that route's handler for
   * it. `serve()` and `handler()` do it; call it when you match requests
   * yourself (e.g. before Deploy's `accept()`).
   */
  attach(connection: C, match: RouteMatch<C>): void;
}

/**
 * What a server does with a handshake request, decided by
 * {@linkcode routeRequest}: answer it (`404`, `400`, or a route's plain
 * HTTP response), or go on with the handshake for `match`'s route.
 *
 * @example
 * ```ts
 * import type { RouteDecision } from "@denows/websockets";
 * const decision: RouteDecision = { response: new Response("Not Found\n", { status: 404 }) };
 * console.log(decision.response?.status); // 404
 * ```
 */
export type RouteDecision<C extends Connection = Connection> =
  | { response: globalThis.Response; match?: undefined }
  | { response?: undefined; match: RouteMatch<C> };

const NO_PARAMS: RouteParams = Object.freeze({});
// The route each attached connection goes to (a connection is attached once, at its handshake).
const attached = new WeakMap<Connection, Route<never>>();
const routers = new WeakSet<object>();

// The components of a URLPattern, in the order their groups are merged into params.
const COMPONENTS = [
  "protocol",
  "username",
  "password",
  "hostname",
  "port",
  "pathname",
  "search",
  "hash",
] as const;

/**
 * Makes a router from `routes`, tried in order (the first match wins): give
 * it to `serve()` or Deploy's `handler()` as the connection handler.
 * Requests no route matches get `404 Not Found` at the handshake.
 *
 * @param routes The routes; see {@linkcode Route}.
 * @returns The router: a connection handler with `match()` and `attach()`.
 * @throws {TypeError} for a route without `handler` or `respond`, or a
 * string pattern that isn't valid URLPattern pathname syntax.
 *
 * @example Rooms and an echo endpoint on one server
 * ```ts ignore
 * import { broadcast, type Connection, route, serve } from "@denows/websockets";
 *
 * const rooms = new Map<string, Set<Connection>>();
 * const server = serve(route([
 *   {
 *     pattern: "/echo",
 *     handler: async (ws) => {
 *       for await (const message of ws) await ws.send(message);
 *     },
 *   },
 *   {
 *     pattern: "/rooms/:name",
 *     handler: async (ws) => {
 *       const name = ws.params.name; // percent-decoded
 *       const room = rooms.get(name) ?? new Set();
 *       rooms.set(name, room.add(ws));
 *       try {
 *         for await (const message of ws) broadcast(room, message);
 *       } finally {
 *         room.delete(ws);
 *         if (room.size === 0) rooms.delete(name);
 *       }
 *     },
 *   },
 *   { pattern: "/healthz", respond: () => new Response("OK\n") },
 * ]), { hostname: "127.0.0.1", port: 8765 });
 * ```
 *
 * @example A host pattern
 * ```ts
 * import { route } from "@denows/websockets";
 * const router = route([{
 *   pattern: new URLPattern({ hostname: ":tenant.example.com", pathname: "/ws" }),
 *   handler: (ws) => console.log(ws.params.tenant),
 * }]);
 * console.log(router.match("http://acme.example.com/ws")?.params); // { tenant: "acme" }
 * ```
 */
export function route<C extends Connection = Connection>(routes: Iterable<Route<C>>): Router<C> {
  const list: Route<C>[] = [];
  const patterns: URLPattern[] = [];
  for (const entry of routes) {
    if (entry.handler === undefined && entry.respond === undefined) {
      throw new TypeError(`route ${String(entry.pattern)}: needs a handler or respond`);
    }
    list.push(entry);
    patterns.push(
      typeof entry.pattern === "string"
        ? new URLPattern({ pathname: entry.pattern })
        : entry.pattern,
    );
  }
  Object.freeze(list);

  const router = async (connection: C): Promise<void> => {
    const entry = attached.get(connection) as Route<C> | undefined;
    if (entry?.handler === undefined) {
      throw new TypeError(`connection ${connection.id}: no route was attached to it`);
    }
    await entry.handler(connection);
  };

  function match(url: string | URL): RouteMatch<C> | undefined {
    const input = typeof url === "string" ? url : url.href;
    for (let i = 0; i < patterns.length; i++) {
      const pattern = patterns[i];
      const result = pattern.exec(input);
      if (result === null) continue;
      return { route: list[i], params: paramsOf(pattern, result) };
    }
    return undefined;
  }

  function attach(connection: C, found: RouteMatch<C>): void {
    (connection as { params: RouteParams }).params = found.params;
    attached.set(connection, found.route as Route<never>);
  }

  const result = Object.assign(router, { routes: list, match, attach }) as Router<C>;
  routers.add(result);
  return result;
}

/**
 * Whether `handler` is a router made by {@linkcode route}.
 *
 * @example
 * ```ts
 * import { isRouter, route } from "@denows/websockets";
 * console.log(isRouter(route([])), isRouter(() => {})); // true false
 * ```
 */
export function isRouter<C extends Connection>(
  handler: ((connection: C) => void | Promise<void>) | Router<C>,
): handler is Router<C> {
  return routers.has(handler);
}

// The groups of every component the pattern constrains (a component left out of the pattern
// is "*", whose group would be the whole component), percent-decoded; later components win.
function paramsOf(pattern: URLPattern, result: URLPatternResult): RouteParams {
  let params: Record<string, string> | undefined;
  for (const component of COMPONENTS) {
    if (pattern[component] === "*") continue;
    const groups = result[component].groups;
    for (const name in groups) {
      const value = groups[name];
      if (value === undefined) continue;
      let decoded: string;
      try {
        decoded = decodeURIComponent(value);
      } catch {
        throw new InvalidMessage(
          `invalid percent-encoding in the request URL: ${component} group ${name} is ${value}`,
        );
      }
      (params ??= {})[name] = decoded;
    }
  }
  return params === undefined ? NO_PARAMS : Object.freeze(params);
}

// Characters of a Host header: a registered name, an IPv4 address or an IP literal, and a port.
const HOST_HEADER = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?$/;

/**
 * The URL a handshake request is matched as: `http:` (or `https:` when
 * `secure`), the `Host` header, and the request target; `undefined` when
 * the `Host` header is missing, repeated or malformed, or the target isn't
 * a path.
 *
 * @example
 * ```ts
 * import { requestUrl } from "@denows/websockets";
 * console.log(requestUrl("/rooms/a?x=1", "example.com:8080", true)?.href);
 * // https://example.com:8080/rooms/a?x=1
 * ```
 */
export function requestUrl(
  path: string,
  host: string | undefined,
  secure: boolean,
): URL | undefined {
  if (host === undefined || !HOST_HEADER.test(host) || !path.startsWith("/")) return undefined;
  try {
    return new URL(`${secure ? "https" : "http"}://${host}${path}`);
  } catch {
    return undefined;
  }
}

/**
 * Routes a handshake request to `router`: `404 Not Found` when no route
 * matches, `400 Bad Request` when a group isn't valid percent-encoding, a
 * route's `respond()` answer when it gives one (and 404 for a route without
 * a handler when it doesn't); otherwise the match to go on with. `request`
 * builds the WHATWG request given to `respond()`, only when one is called.
 * `serve()` and Deploy's `handler()` share it.
 *
 * @example
 * ```ts
 * import { route, routeRequest } from "@denows/websockets";
 * const router = route([{ pattern: "/echo", handler: () => {} }]);
 * const url = new URL("http://localhost/nowhere");
 * const decision = await routeRequest(router, url, () => new Request(url));
 * console.log(decision.response?.status); // 404
 * ```
 */
export async function routeRequest<C extends Connection>(
  router: Router<C>,
  url: URL,
  request: () => globalThis.Request,
): Promise<RouteDecision<C>> {
  let found: RouteMatch<C> | undefined;
  try {
    found = router.match(url);
  } catch (error) {
    if (!(error instanceof InvalidMessage)) throw error;
    return { response: plainResponse(400, `Bad Request: ${error.message}.\n`) };
  }
  if (found === undefined) return { response: plainResponse(404, "Not Found\n") };
  const { respond, handler } = found.route;
  if (respond !== undefined) {
    const answer = await respond(request(), found.params);
    if (answer !== undefined) return { response: answer };
  }
  if (handler === undefined) return { response: plainResponse(404, "Not Found\n") };
  return { match: found };
}

function plainResponse(status: number, text: string): globalThis.Response {
  return new globalThis.Response(text, {
    status,
    statusText: status === 404 ? "Not Found" : "Bad Request",
    headers: { "Content-Type": "text/plain; charset=utf-8" },
  });
}
