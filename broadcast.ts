/**
 * {@linkcode broadcast}: sends one message to many connections at once,
 * encoding it once, without waiting for any of them.
 *
 * @example
 * ```ts ignore
 * import { broadcast, serve } from "@denows/websockets";
 *
 * // A chat room: every message goes to every connected client.
 * const server = serve(async (ws) => {
 *   for await (const message of ws) broadcast(server.connections, message);
 * }, { hostname: "127.0.0.1", port: 8765 });
 * ```
 *
 * @module
 */

import { type BinaryData, isBytes, toBytes } from "./_bytes.ts";
import { describeType } from "./_describe.ts";
import type { SharedFrames } from "./_shared_frames.ts";
import type { Connection } from "./abstract_connection.ts";
import { ConcurrencyError } from "./errors.ts";
import { CloseCode } from "./frames.ts";
import { State } from "./protocol.ts";

/** What a slow connection gets when it is over `maxBufferedAmount`. */
export type SlowConnectionPolicy = "close" | "skip";

/**
 * Options of {@linkcode broadcast}. Without `maxBufferedAmount`, nothing
 * limits how much a connection that doesn't read buffers, except its
 * keepalive (`pingInterval` / `pingTimeout`).
 *
 * @example
 * ```ts
 * import type { BroadcastOptions } from "@denows/websockets";
 * const options: BroadcastOptions = { maxBufferedAmount: 1024 * 1024, onSlow: "skip" };
 * console.log(options.onSlow); // skip
 * ```
 */
export interface BroadcastOptions {
  /**
   * Largest `bufferedAmount`, in bytes, a connection may have when the message
   * is queued; a connection over it is slow and handled as `onSlow` says.
   *
   * @default {Infinity} (no limit)
   */
  maxBufferedAmount?: number;
  /**
   * What happens to a slow connection: `"close"` starts its closing handshake
   * with code 1013 (try again later) without waiting for it; `"skip"` leaves it
   * open without this message. Ignored without `maxBufferedAmount`.
   *
   * @default {"close"}
   */
  onSlow?: SlowConnectionPolicy;
}

const textEncoder = new TextEncoder();

function ignore(): void {}

/**
 * Sends `message` to every connection in `connections` that is OPEN: a
 * string as one Text frame, bytes (`Uint8Array`, Node's `Buffer`,
 * `ArrayBuffer`, `SharedArrayBuffer`, `DataView` or any other
 * `ArrayBufferView`) as one Binary frame. Never fragments.
 *
 * - **Synchronous, no backpressure.** The message is queued on every
 *   connection before `broadcast()` returns; nothing waits for a slow
 *   connection. Each connection writes its queue on its own, coalesced with
 *   whatever else it sends in the same tick. Without `maxBufferedAmount`, a
 *   connection that doesn't read accumulates messages until keepalive
 *   (`pingInterval` / `pingTimeout`) closes it: keep those low when you
 *   broadcast a lot.
 * - **Copied before returning.** You may reuse or change the buffer you
 *   passed as soon as `broadcast()` returns.
 * - **Encoded once.** The frame is serialized once for every connection
 *   without extensions and once per permessage-deflate configuration with
 *   `server_no_context_takeover` (the server default), then the same bytes
 *   are queued on each of them. A connection that compresses with context
 *   takeover (its compressor keeps state from one message to the next)
 *   compresses the message for itself; client-side connections mask each
 *   frame with a fresh key, so they serialize it for themselves too.
 * - **Skips connections that aren't OPEN silently** (connecting, closing,
 *   closed), so broadcasting to a set that contains closing connections
 *   never fails.
 * - **Slow connections (opt-in).** With `maxBufferedAmount`, a connection
 *   whose `bufferedAmount` is above it doesn't get the message; it is closed
 *   with 1013 (`onSlow: "close"`, the default) or left alone (`"skip"`).
 *   The close frame queues behind the data already buffered and the closing
 *   handshake runs in the background, bounded by the connection's
 *   `closeTimeout`; `broadcast()` doesn't wait for it.
 *
 * @param connections The connections, e.g. `server.connections`; any
 * iterable, read once.
 * @param message A string (Text) or bytes (Binary).
 * @param options Slow connection handling; see {@linkcode BroadcastOptions}.
 * @throws {TypeError} when `message` is neither a string nor bytes, or
 * `onSlow` is unknown; nothing is sent.
 * @throws {RangeError} when `maxBufferedAmount` is negative or not a
 * number; nothing is sent.
 * @throws {ConcurrencyError} when connections are in the middle of sending a
 * fragmented message (`send()` of an iterable): they are left out, the
 * message is still sent to every other connection, and one error counting
 * them is thrown at the end.
 *
 * @example Broadcast to every client of a server
 * ```ts ignore
 * import { broadcast, serve } from "@denows/websockets";
 * const server = serve((ws) => ws.closed.then(() => {}), { hostname: "127.0.0.1" });
 * setInterval(() => broadcast(server.connections, new Date().toISOString()), 1000);
 * ```
 *
 * @example Nothing is sent for an unsupported message type
 * ```ts
 * import { broadcast } from "@denows/websockets";
 * try {
 *   broadcast([], 42 as unknown as string);
 * } catch (error) {
 *   console.log(error instanceof TypeError); // true
 * }
 * ```
 *
 * @example Drop clients that fall more than 1 MiB behind
 * ```ts ignore
 * import { broadcast, serve } from "@denows/websockets";
 * const server = serve((ws) => ws.closed.then(() => {}), { hostname: "127.0.0.1" });
 * const tick = new Uint8Array(64 * 1024);
 * setInterval(() => {
 *   broadcast(server.connections, tick, { maxBufferedAmount: 1024 * 1024, onSlow: "close" });
 * }, 10);
 * ```
 */
export function broadcast(
  connections: Iterable<Connection>,
  message: string | BinaryData,
  options?: BroadcastOptions,
): void {
  // Everything is checked before anything is sent.
  let data: Uint8Array;
  let text: boolean;
  if (typeof message === "string") {
    text = true;
    data = textEncoder.encode(message); // a new buffer: nothing to copy
  } else if (isBytes(message)) {
    text = false;
    // The one copy of the payload: the caller may reuse its buffer at once,
    // and a buffer another thread writes to (SharedArrayBuffer) is read once.
    data = toBytes(message).slice();
  } else {
    throw new TypeError(`Cannot broadcast: unsupported message type ${describeType(message)}`);
  }
  const maxBufferedAmount = options?.maxBufferedAmount ?? Infinity;
  if (typeof maxBufferedAmount !== "number" || !(maxBufferedAmount >= 0)) {
    throw new RangeError(
      `Cannot broadcast: maxBufferedAmount must be a number of bytes >= 0, got ${maxBufferedAmount}`,
    );
  }
  const onSlow = options?.onSlow ?? "close";
  if (onSlow !== "close" && onSlow !== "skip") {
    throw new TypeError(
      `Cannot broadcast: onSlow must be "close" or "skip", got ${String(onSlow)}`,
    );
  }
  const closeSlow = onSlow === "close";

  // Hot path, once per connection: a state check, a comparison, and
  // `sendShared`, which looks the serialized frame up by encoding key and
  // pushes it on the connection's output queue. No closure, promise, frame
  // or buffer per connection, no await: the cost per connection is one
  // queue entry, and the payload is encoded once per key (see above).
  const shared: SharedFrames = { text, data, cache: new Map() };
  let busy: Connection[] | undefined;
  let failure: { error: unknown } | undefined;
  let sent = 0;
  for (const connection of connections) {
    if (connection.state !== State.OPEN) continue;
    if (connection.sendingFragmented) {
      (busy ??= []).push(connection);
      continue;
    }
    if (connection.bufferedAmount > maxBufferedAmount) {
      if (closeSlow) {
        connection.close(
          CloseCode.TRY_AGAIN_LATER,
          `too slow: more than ${maxBufferedAmount} bytes buffered (maxBufferedAmount)`,
        ).catch(ignore);
      }
      continue;
    }
    try {
      if (connection.sendShared(shared)) sent++;
    } catch (error) {
      if (error instanceof ConcurrencyError) {
        // A fragmented send that hasn't queued its first frame yet.
        (busy ??= []).push(connection);
      } else {
        // Not part of the contract (e.g. a failing extension): the others
        // still get the message, then the first such error is rethrown.
        failure ??= { error };
      }
    }
  }
  if (failure !== undefined) throw failure.error;
  if (busy !== undefined) throw busyError(busy, sent);
}

function busyError(busy: Connection[], sent: number): ConcurrencyError {
  const shown = busy.slice(0, 10).map((connection) => connection.id).join(", ");
  const more = busy.length > 10 ? ` and ${busy.length - 10} more` : "";
  const count = busy.length === 1 ? "1 connection" : `${busy.length} connections`;
  return new ConcurrencyError(
    `Cannot broadcast to ${count} sending a fragmented message (id ${shown}${more}); ` +
      `the message was sent to ${sent} other connection${sent === 1 ? "" : "s"}`,
  );
}
