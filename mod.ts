/**
 * `@denows/websockets`: a Deno-first WebSocket library (RFC 6455, RFC 7692)
 * with the design of Python's `websockets`: a runtime-neutral protocol core,
 * a client and a server over `Deno.connect` / `Deno.listen` (and TLS), and a
 * `broadcast()` that fans one message out to many connections.
 *
 * @example
 * ```ts ignore
 * import { connect, serve } from "@denows/websockets";
 *
 * const server = serve(async (ws) => {
 *   for await (const message of ws) await ws.send(message);
 * }, { hostname: "127.0.0.1", port: 8765 });
 *
 * await using ws = await connect("ws://127.0.0.1:8765/");
 * await ws.send("Hello world!");
 * console.log(await ws.recv()); // Hello world!
 * await server.close();
 * ```
 *
 * @module
 */

export * from "./errors.ts";
export * from "./frames.ts";
export * from "./headers.ts";
export * from "./uri.ts";
export * from "./http11.ts";
export * from "./extensions.ts";
export * from "./protocol.ts";
export * from "./permessage_deflate.ts";
export * from "./connection.ts";
export * from "./client.ts";
export * from "./server.ts";
export * from "./broadcast.ts";
export * from "./deploy.ts";
export {
  type Route,
  route,
  type RouteMatch,
  type RouteParams,
  type Router,
  type RouteResponder,
} from "./router.ts";
export * from "./pubsub.ts";
export * from "./websocket.ts";
