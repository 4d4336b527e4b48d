/**
 * {@linkcode Connection}: one WebSocket connection, whichever side opened
 * it, with one interface and two implementations: {@linkcode StreamConnection}
 * (the sans-I/O protocol over a byte {@linkcode Transport} such as a
 * `Deno.Conn`) and the adapter over the platform `WebSocket` in `deploy.ts`.
 *
 * This module gathers them; each job has a file of its own:
 *
 * | file | job |
 * | --- | --- |
 * | `abstract_connection.ts` | `Connection`, its options and defaults; sending, ping, keepalive, close |
 * | `_message_queue.ts` | the received-message queue: `recv()`, iteration, `readable`, `maxQueue` |
 * | `stream_connection.ts` | `StreamConnection`: read loop, handshake hooks, write scheduler, closing |
 * | `transport.ts` | `Transport` and `fromStreams()` |
 * | `_writer.ts` | joining a write's chunks (the slab) and writing large payloads from where they are |
 * | `_shared_frames.ts` | a message encoded once for many connections (`broadcast()`) |
 * | `_bytes.ts` | `toBytes()`, `isBytes()`, concatenation, the slab small buffers are cut from |
 *
 * @example
 * ```ts ignore
 * import { connect } from "@denows/websockets";
 * const ws = await connect("ws://127.0.0.1:8765/");
 * await ws.send("hello");
 * console.log(await ws.recv());
 * await ws.close();
 * ```
 *
 * @module
 */

export { type BinaryData, isBytes, toBytes } from "./_bytes.ts";
export {
  type Message,
  MessageQueue,
  type RecvOptions,
  type RecvStreamingOptions,
} from "./_message_queue.ts";
export type { SharedFrames } from "./_shared_frames.ts";
export {
  type CloseResult,
  Connection,
  type ConnectionOptions,
  type ConnectionStats,
  DEFAULTS,
  PRODUCT,
  type Sendable,
  type SendOptions,
} from "./abstract_connection.ts";
export { StreamConnection, type StreamConnectionOptions } from "./stream_connection.ts";
export { fromStreams, type Transport } from "./transport.ts";
export { type Logger, State } from "./protocol.ts";
export { ConnectionClosed, ConnectionClosedError, ConnectionClosedOK } from "./errors.ts";
