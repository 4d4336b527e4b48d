/**
 * Private: a {@linkcode Transport} over a `node:net` or `node:tls` socket
 * (any stream socket with Node's `data`/`end`/`drain` events), for
 * connections that run over such a socket: TLS inside a proxy tunnel.
 * Reads take the chunks the socket emits; writes go through
 * `socket.write()`.
 *
 * @module
 */

import type { Socket } from "node:net";
import type { Transport } from "./transport.ts";

const kTransport = Symbol("transport");
type TransportSocket = Socket & { [kTransport]?: SocketTransport };

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

  /** Bytes written to the socket that the kernel hasn't taken yet. */
  get bufferedAmount(): number {
    return this.#socket.writableLength;
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

// How long a closed socket may take to send what it still holds.
const LINGER = 5_000;

function destroy(this: Socket): void {
  this.destroy();
}

function netAddr(address: string | undefined, port: number | undefined): Deno.NetAddr {
  return { transport: "tcp", hostname: address ?? "", port: port ?? 0 };
}
