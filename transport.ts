/**
 * {@linkcode Transport}: the byte stream a {@linkcode StreamConnection}
 * runs over (`Deno.Conn`, the `node:net` backend), and
 * {@linkcode fromStreams}, which makes one of any pair of Web Streams.
 *
 * @module
 */

/**
 * A byte transport: what {@linkcode StreamConnection} needs from a socket.
 * `Deno.Conn` (TCP, TLS, Unix) implements it as is; `fromStreams()` adapts
 * any pair of Web Streams.
 *
 * @example
 * ```ts ignore
 * import type { Transport } from "@denows/websockets";
 * const transport: Transport = await Deno.connect({ hostname: "127.0.0.1", port: 8765 });
 * ```
 */
export interface Transport {
  /** Reads into `buffer`; resolves to the number of bytes read, or `null` at the end of the stream. */
  read(buffer: Uint8Array): Promise<number | null>;
  /**
   * Optional: resolves with the next chunk the transport received, which the
   * caller then owns, or `null` at the end of the stream. When present it is
   * used instead of `read()`, for transports that receive into buffers of
   * their own (no copy).
   */
  readChunk?(): Promise<Uint8Array | null>;
  /**
   * Optional: the next chunk the transport received, when one is there now
   * (the caller owns it); `null` at the end of the stream; or `undefined`
   * when nothing came yet. After `undefined`, the transport calls `wake`
   * once, with `target` as `this`, as soon as data, the end of the stream or
   * an error comes, or it closes. Throws a read error. Used instead of
   * `readChunk()` when present: a connection waiting this way holds no
   * pending promise (and, with a shared `wake`, no closure).
   */
  takeChunk?<T>(wake: (this: T) => void, target: T): Uint8Array | null | undefined;
  /** Writes some of `data`; resolves to the number of bytes written. */
  write(data: Uint8Array): Promise<number>;
  /**
   * Optional: as `write()`, but returns the number of bytes written itself
   * when the data was written synchronously (no promise to wait for). Never
   * throws: failures are rejected promises.
   */
  writeNow?(data: Uint8Array): number | Promise<number>;
  /** Half-closes: no more writes, reads go on. */
  closeWrite?(): Promise<void>;
  /** Closes both directions and releases the transport. */
  close(): void;
  /**
   * Optional: bytes that `write()` accepted and the operating system hasn't
   * taken yet (counted in the connection's `bufferedAmount`).
   */
  readonly bufferedAmount?: number;
  /**
   * Optional: `true` when `write()` hands data to the operating system
   * synchronously. Connections then coalesce what they send over a whole
   * event-loop turn rather than while a write is in flight.
   */
  readonly syncWrites?: boolean;
  /** Local address, if any. */
  readonly localAddr?: Deno.Addr;
  /** Remote address, if any. */
  readonly remoteAddr?: Deno.Addr;
}

/**
 * Adapts a pair of Web Streams of bytes (e.g. a `Deno.Conn`'s `readable` and
 * `writable`, or a `TransformStream` pair in tests) to a {@linkcode Transport}.
 *
 * @example
 * ```ts
 * import { fromStreams } from "@denows/websockets";
 * const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>();
 * const transport = fromStreams({ readable, writable });
 * await transport.write(new Uint8Array([1, 2, 3]));
 * const buffer = new Uint8Array(8);
 * console.log(await transport.read(buffer)); // 3
 * ```
 */
export function fromStreams(
  streams: { readable: ReadableStream<Uint8Array>; writable: WritableStream<Uint8Array> },
): Transport {
  const reader = streams.readable.getReader();
  const writer = streams.writable.getWriter();
  let leftover: Uint8Array | undefined;
  return {
    async read(buffer: Uint8Array): Promise<number | null> {
      let chunk = leftover;
      leftover = undefined;
      while (chunk === undefined || chunk.length === 0) {
        const result = await reader.read();
        if (result.done) return null;
        chunk = result.value;
      }
      const count = Math.min(chunk.length, buffer.length);
      buffer.set(chunk.subarray(0, count));
      if (count < chunk.length) leftover = chunk.subarray(count);
      return count;
    },
    async write(data: Uint8Array): Promise<number> {
      await writer.write(data.slice());
      return data.length;
    },
    async closeWrite(): Promise<void> {
      await writer.close();
    },
    close(): void {
      reader.cancel().catch(() => {});
      writer.abort().catch(() => {});
    },
  };
}
