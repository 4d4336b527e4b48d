/**
 * Private: plain TCP through `node:net` (`serve({ tcp: "node:net" })`), which
 * Deno runs on a libuv-style loop in its runtime. Compared with `Deno.listen`
 * and `Deno.Conn` under the same server code: a write that the kernel takes
 * at once completes synchronously rather than as an async operation, and the
 * event loop only visits sockets that are ready, which keeps fan-out to
 * 10 000 sockets fast; reads come in chunks of at most 64 KiB through Node's
 * stream layer, which makes large messages and single round trips slower.
 *
 * Writes go straight to the socket's handle (`writeBuffer()`, which
 * `socket.write()` ends in) where `process.binding("stream_wrap")` gives the
 * stream state telling a synchronous write from a pending one; otherwise
 * through `socket.write()`.
 *
 * Used for TCP servers on an IP address, where the runtime has what is
 * needed; otherwise the server uses `Deno.listen`.
 *
 * @module
 */

import { isIP, type Server as NetServer, type Socket } from "node:net";
import { createServer } from "node:net";
import process from "node:process";
import type { Transport } from "./transport.ts";

const kTransport = Symbol("transport");
type TransportSocket = Socket & { [kTransport]?: SocketTransport };
// The internal `node:net` method the listener relies on: it binds and listens synchronously
// (`listen()` resolves its host first, so the address would only be known later).
type ListenSync = (address: string, port: number, addressType: number, backlog: number) => void;

/** A `Transport` over a `node:net` socket. */
export class SocketTransport implements Transport {
  readonly #socket: Socket;
  #chunks: Uint8Array[] | undefined;
  #eof = false;
  #error: Error | undefined;
  #readResolve: ((chunk: Uint8Array | null) => void) | undefined;
  #readReject: ((error: Error) => void) | undefined;
  // The write waiting for the socket's buffer to drain.
  #writeResolve: ((count: number) => void) | undefined;
  #writeReject: ((error: Error) => void) | undefined;
  #writeLength = 0;
  readonly localAddr: Deno.NetAddr;
  readonly remoteAddr: Deno.NetAddr;
  /** Writes reach the kernel synchronously. */
  readonly syncWrites = true;

  /**
   * Wraps `socket`; `addrs` replaces the socket's own addresses (a TLS
   * socket over another stream has none).
   */
  constructor(socket: Socket, addrs?: { localAddr: Deno.NetAddr; remoteAddr: Deno.NetAddr }) {
    this.#socket = socket;
    (socket as TransportSocket)[kTransport] = this;
    this.localAddr = addrs?.localAddr ?? netAddr(socket.localAddress, socket.localPort);
    this.remoteAddr = addrs?.remoteAddr ?? netAddr(socket.remoteAddress, socket.remotePort);
    socket.on("data", SocketTransport.#onData);
    socket.on("end", SocketTransport.#onEnd);
    socket.on("error", SocketTransport.#onError);
    socket.on("close", SocketTransport.#onEnd);
  }

  static #onData = function (this: TransportSocket, chunk: Uint8Array): void {
    const self = this[kTransport]!;
    // A Buffer would be handed to the application in messages: make it a plain Uint8Array view.
    const bytes = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const resolve = self.#readResolve;
    if (resolve !== undefined) {
      self.#readResolve = self.#readReject = undefined;
      resolve(bytes);
      return;
    }
    // Nobody reads (the message queue is full): keep it, and stop reading.
    (self.#chunks ??= []).push(bytes);
    this.pause();
  };

  static #onEnd = function (this: TransportSocket): void {
    const self = this[kTransport]!;
    self.#eof = true;
    const resolve = self.#readResolve;
    if (resolve !== undefined && self.#chunks === undefined) {
      self.#readResolve = self.#readReject = undefined;
      resolve(null);
    }
    if (self.#writeReject !== undefined && this.destroyed) {
      self.#failWrite(new Deno.errors.BrokenPipe("the socket is closed"));
    }
  };

  static #onError = function (this: TransportSocket, error: Error): void {
    const self = this[kTransport]!;
    self.#error ??= error;
    const reject = self.#readReject;
    if (reject !== undefined) {
      self.#readResolve = self.#readReject = undefined;
      reject(error);
    }
    self.#failWrite(error);
  };

  static #onDrain = function (this: TransportSocket): void {
    const self = this[kTransport]!;
    const resolve = self.#writeResolve;
    if (resolve === undefined) return;
    self.#writeResolve = self.#writeReject = undefined;
    resolve(self.#writeLength);
  };

  #failWrite(error: Error): void {
    const reject = this.#writeReject;
    if (reject === undefined) return;
    this.#writeResolve = this.#writeReject = undefined;
    reject(error);
  }

  /** Resolves with the next chunk received (the caller owns it), `null` at the end of the stream. */
  readChunk(): Promise<Uint8Array | null> {
    const chunks = this.#chunks;
    if (chunks !== undefined) {
      const chunk = chunks.shift()!;
      if (chunks.length === 0) {
        this.#chunks = undefined;
        if (!this.#eof) this.#socket.resume();
      }
      return Promise.resolve(chunk);
    }
    if (this.#error !== undefined) return Promise.reject(this.#error);
    if (this.#eof) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      this.#readResolve = resolve;
      this.#readReject = reject;
    });
  }

  /** Copies the next chunk into `buffer` (used only where `readChunk` isn't). */
  async read(buffer: Uint8Array): Promise<number | null> {
    const chunk = await this.readChunk();
    if (chunk === null) return null;
    const count = Math.min(chunk.length, buffer.length);
    buffer.set(chunk.subarray(0, count));
    if (count < chunk.length) (this.#chunks ??= []).unshift(chunk.subarray(count));
    return count;
  }

  /**
   * Hands `data` to the socket, which keeps a reference to it (callers never
   * rewrite what they wrote). Resolves at once when the kernel took it, or
   * when what the socket holds is under its high-water mark (counted in
   * `bufferedAmount`); otherwise once the socket's buffer drained.
   */
  write(data: Uint8Array): Promise<number> {
    const result = this.writeNow(data);
    return typeof result === "number" ? Promise.resolve(result) : result;
  }

  /** As `write()`, returning the count itself when there is nothing to wait for. */
  writeNow(data: Uint8Array): number | Promise<number> {
    const socket = this.#socket;
    if (this.#error !== undefined) return Promise.reject(this.#error);
    if (socket.destroyed || !socket.writable) {
      return Promise.reject(new Deno.errors.BrokenPipe("the socket is closed"));
    }
    const handle = (socket as unknown as { _handle?: StreamHandle | null })._handle;
    if (
      directWrites && DIRECT !== undefined && handle != null &&
      typeof handle.writeBuffer === "function" &&
      socket.writableLength === 0
    ) {
      return this.#writeDirect(handle, data);
    }
    // No write callback: one would be called with an error if the socket is closed right
    // after a last write, which happens on every close. (write() says false for anything over
    // the high-water mark, even when the kernel took all of it: then nothing is left to wait for.)
    if (socket.write(data) || socket.writableLength === 0) return data.length;
    this.#writeLength = data.length;
    socket.once("drain", SocketTransport.#onDrain);
    return new Promise((resolve, reject) => {
      this.#writeResolve = resolve;
      this.#writeReject = reject;
    });
  }

  // Writes straight to the socket's handle, past Node's stream layer (what `socket.write()`
  // does underneath, without its bookkeeping): about a quarter more deliveries per second when
  // broadcasting to 10 000 sockets.
  // A write the kernel took at once is done; otherwise the handle finishes it and calls the
  // request's `oncomplete`.
  #writeDirect(handle: StreamHandle, data: Uint8Array): number | Promise<number> {
    const request: WriteRequest = { oncomplete: onWriteComplete, transport: this, waited: false };
    let status: number;
    try {
      status = handle.writeBuffer(request, data);
    } catch (error) {
      return Promise.reject(error);
    }
    if (status !== 0) return Promise.reject(writeError(status));
    if (DIRECT!.state[DIRECT!.lastWriteWasAsync] === 0) return data.length;
    request.waited = true;
    this.#directLength = data.length;
    return new Promise((resolve, reject) => {
      this.#writeResolve = resolve;
      this.#writeReject = reject;
    });
  }

  // The direct write that the handle is finishing, for bufferedAmount.
  #directLength = 0;

  /** @internal Called by a direct write's request when the handle finished it. */
  directWriteDone(status: number): void {
    const length = this.#directLength;
    this.#directLength = 0;
    if (status < 0) {
      this.#failWrite(writeError(status));
      return;
    }
    const resolve = this.#writeResolve;
    if (resolve === undefined) return;
    this.#writeResolve = this.#writeReject = undefined;
    resolve(length);
  }

  /** Bytes written to the socket that the kernel hasn't taken yet. */
  get bufferedAmount(): number {
    return this.#socket.writableLength + this.#directLength;
  }

  /** Half-closes (sends FIN after what was written); reading goes on. */
  closeWrite(): Promise<void> {
    const socket = this.#socket;
    if (socket.destroyed || socket.writableFinished) return Promise.resolve();
    return new Promise((resolve) => {
      socket.once("finish", resolve);
      socket.once("close", resolve);
      socket.end();
    });
  }

  /**
   * Closes both directions; what the socket still holds of earlier writes is
   * sent first (as the kernel does for a closed socket), for at most
   * {@linkcode LINGER} ms.
   */
  close(): void {
    // A read in progress ends now, as on a closed Deno.Conn.
    this.#eof = true;
    this.#chunks = undefined;
    const resolve = this.#readResolve;
    if (resolve !== undefined) {
      this.#readResolve = this.#readReject = undefined;
      resolve(null);
    }
    if (this.#writeReject !== undefined) {
      this.#failWrite(new Deno.errors.BrokenPipe("the socket is closed"));
    }
    const socket = this.#socket;
    if (socket.writableLength === 0 || socket.destroyed || this.#error !== undefined) {
      socket.destroy();
      return;
    }
    socket.once("finish", destroy);
    socket.end();
    Deno.unrefTimer(setTimeout(() => socket.destroy(), LINGER));
  }
}

// The socket handle's write, as `node:net` uses it underneath `socket.write()`.
interface StreamHandle {
  writeBuffer(request: WriteRequest, data: Uint8Array): number;
}
interface WriteRequest {
  oncomplete(this: WriteRequest, status: number): void;
  transport: SocketTransport;
  waited: boolean;
}

function onWriteComplete(this: WriteRequest, status: number): void {
  if (this.waited) this.transport.directWriteDone(status);
}

function writeError(status: number): Error {
  return new Deno.errors.BrokenPipe(`socket write failed (status ${status})`);
}

// What direct writes need to know whether the kernel took a write at once: the stream state
// that `node:net` reads after each write. Without it (another runtime, another version),
// writes go through `socket.write()`.
const DIRECT: { state: ArrayLike<number>; lastWriteWasAsync: number } | undefined = (() => {
  try {
    const binding = (process as unknown as {
      binding(name: string): {
        streamBaseState?: ArrayLike<number>;
        kLastWriteWasAsync?: number;
      };
    }).binding("stream_wrap");
    const state = binding.streamBaseState;
    const index = binding.kLastWriteWasAsync;
    if (state === undefined || typeof index !== "number") return undefined;
    return { state, lastWriteWasAsync: index };
  } catch {
    return undefined;
  }
})();

let directWrites = true;

/**
 * Turns direct handle writes off (or back on) for sockets' next writes, so
 * that the `socket.write()` path can be tested where both exist; returns the
 * previous setting.
 */
export function setDirectWrites(enabled: boolean): boolean {
  const previous = directWrites;
  directWrites = enabled;
  return previous;
}

// How long a closed socket may take to send what it still holds.
const LINGER = 5_000;

function destroy(this: Socket): void {
  this.destroy();
}

function netAddr(address: string | undefined, port: number | undefined): Deno.NetAddr {
  return { transport: "tcp", hostname: address ?? "", port: port ?? 0 };
}

/** A TCP listener on `node:net`, made by {@linkcode listenTcp}. */
export interface TcpListener {
  /** The address listened on. */
  readonly addr: Deno.NetAddr;
  /** Stops listening. */
  close(): void;
}

/**
 * Listens on `hostname:port` (an IP address) and calls `onSocket` with each
 * accepted connection's transport; `undefined` when this runtime can't (the
 * caller then uses `Deno.listen`, which also reports why listening failed).
 */
export function listenTcp(
  hostname: string,
  port: number,
  onSocket: (transport: SocketTransport) => void,
  onError: (error: Error) => void,
): TcpListener | undefined {
  const family = isIP(hostname);
  if (family === 0) return undefined;
  let server: NetServer;
  try {
    server = createServer(
      { allowHalfOpen: true, noDelay: true },
      (socket) => {
        onSocket(new SocketTransport(socket));
      },
    );
  } catch {
    return undefined;
  }
  const listen = (server as unknown as { _listen2?: ListenSync })._listen2;
  if (typeof listen !== "function") return undefined;
  let listening = false;
  // (A failure to listen is also reported as an error event, later: the caller reports it.)
  server.on("error", (error: Error) => {
    if (listening) onError(error);
  });
  try {
    listen.call(server, hostname, port, family, 511);
  } catch {
    return undefined;
  }
  const address = server.address();
  if (address === null || typeof address === "string") {
    server.close();
    return undefined;
  }
  listening = true;
  return {
    addr: { transport: "tcp", hostname: address.address, port: address.port },
    close(): void {
      server.close();
    },
  };
}
