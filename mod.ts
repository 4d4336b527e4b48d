/**
 * `@denows/websockets`: a Deno-first WebSocket library (RFC 6455, RFC 7692)
 * with the design of Python's `websockets`: a runtime-neutral protocol core,
 * a client and a server over `Deno.connect` / `Deno.listen` driven through Web
 * Streams, and a `broadcast()` that fans one message out to many connections.
 *
 * @example
 * ```ts
 * import { Close, Frame, Opcode } from "@denows/websockets";
 * const bytes = new Frame(Opcode.CLOSE, new Close(1000, "bye").serialize()).serialize({ mask: false });
 * console.log(bytes.length); // 7
 * ```
 *
 * @module
 */

export * from "./errors.ts";
export * from "./frames.ts";
