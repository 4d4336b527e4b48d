/**
 * {@linkcode StreamConnection}: the sans-I/O protocol over a
 * {@linkcode Transport}: the read loop, the opening handshake's hooks, the
 * write scheduler that coalesces frames into few writes, and the closing
 * handshake with its timeouts.
 *
 * @module
 */

import { EMPTY } from "./_bytes.ts";
import { isNormalClosure } from "./_close.ts";
import { encodeShared, sharedEncodingKey, type SharedFrames } from "./_shared_frames.ts";
import { concatChunks, DIRECT_FROM, hasLargeChunk, splitForWrite } from "./_writer.ts";
import { Connection, type ConnectionOptions } from "./abstract_connection.ts";
import { type ConnectionClosed, ConnectionClosedError } from "./errors.ts";
import type { EncodeOptions, Extension } from "./extensions.ts";
import { CloseCode } from "./frames.ts";
import type { Request, Response } from "./http11.ts";
import { type Protocol, type ProtocolEvent, State, type TrafficCounters } from "./protocol.ts";
import type { Transport } from "./transport.ts";

interface Waiter<T> {
  resolve(value: T): void;
  reject(error: unknown): void;
}

/** Options of {@linkcode StreamConnection}: the connection options plus hooks for the handshake. */
export interface StreamConnectionOptions extends ConnectionOptions {
  /**
   * Called for the `request` (server) or `response` (client) event of the
   * opening handshake, while reading is paused.
   *
   * @default {undefined}
   */
  onHandshake?: (event: ProtocolEvent, connection: StreamConnection) => void | Promise<void>;
  /**
   * Called once the opening handshake ended, with `true` when the
   * connection opened and `false` when the handshake failed (`handshake`
   * rejects with the reason), without a promise and its reactions: for
   * servers that start thousands of connections at once. It is called from
   * the read loop: defer any work that may call back into the connection.
   *
   * @default {undefined}
   */
  onHandshakeEnd?: (connection: StreamConnection, opened: boolean) => void;
  /**
   * Whether the transport delivers what was written to it even when it is
   * closed right after the write, as a TCP or Unix socket does. A server then
   * closes it as soon as the client's close frame came and its own was
   * written, rather than half-closing and waiting for the client to close.
   *
   * @default {false}
   */
  closeAtOnce?: boolean;
}

// The read buffer grows while reads fill it and starts small, so an idle
// connection holds little memory.
const MIN_READ = 256;
// What is left of a read buffer is read into while it has this many bytes (or a whole buffer's).
const MIN_REUSE = 1024;
// The first read: a browser's handshake request (400-700 bytes) in one read. What is left of
// it is under MIN_REUSE, so an idle connection then holds a MIN_READ buffer again.
const HANDSHAKE_READ = 1024;
const MAX_READ = 256 * 1024;
// Reading also pauses while more than this many bytes (or 16 × writeLimit, if more) wait to be
// written, e.g. pongs for a peer that sends pings and doesn't read, and resumes once they are
// under writeLimit: the kernel then pushes back on the peer.
const READ_PAUSE_OUTPUT = 1024 * 1024;
// When this much or more of a frame's payload is still to come, it is read straight into the
// frame's buffer rather than into a read buffer and copied from there.
const DIRECT_READ_FROM = 16 * 1024;
// How the opening handshake ended, while it hasn't and once it opened the connection (a
// failure is the error).
const RUNNING = Symbol("running");
const OPENED = Symbol("opened");

// Microtasks a write waits at most for the application to queue more frames.
const MAX_FLUSH_WAITS = 64;

/**
 * The sans-I/O protocol over a {@linkcode Transport} (a `Deno.Conn` or Web
 * Streams): reads big chunks and hands each to the protocol in one call,
 * coalesces the frames produced while a write is in flight into one write
 * (payloads of 16 KiB and more are written from where they are, not copied
 * into it), pauses reading while `maxQueue` messages wait, runs keepalive
 * and the closing handshake with its timeouts.
 *
 * Made by `connect()` and `serve()`; you rarely construct it yourself.
 *
 * @example
 * ```ts ignore
 * import { ClientProtocol, parseUri, StreamConnection } from "@denows/websockets";
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8765 });
 * const protocol = new ClientProtocol(parseUri("ws://127.0.0.1:8765/"));
 * const connection = new StreamConnection(protocol, conn);
 * ```
 */
export class StreamConnection extends Connection {
  /** The sans-I/O state machine this connection runs. */
  readonly protocol: Protocol;
  // How broadcasts are encoded for this connection: see sharedEncodingKey().
  #sharedKey: string | null | undefined;
  /** The byte transport. */
  readonly transport: Transport;
  // Hooks and flags, shared by every connection of a server.
  readonly #options: StreamConnectionOptions;
  #writing = false;
  #flushScheduled = false;
  #flushWaits = 0;
  #flushQueued = 0;
  #flushOutput = 0;
  #inflight = 0;
  #writeData: Uint8Array | undefined;
  // The pieces of a write of large chunks (see splitForWrite()), the next one's index, and the
  // bytes of those not yet handed to the transport.
  #pieces: Uint8Array[] | undefined;
  #pieceAt = 0;
  #piecesLeft = 0;
  #writeEof = false;
  #drainWaiters: Waiter<void>[] | undefined;
  #transportClosed = false;
  #readSize = HANDSHAKE_READ;
  #slab: Uint8Array = EMPTY;
  // Resumes reading paused by #outputDrained().
  #resumeReading: (() => void) | undefined;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  // Bounds how long a failure waits for the application to read what came before it.
  #failTimer: ReturnType<typeof setTimeout> | undefined;
  #started = false;
  // RUNNING, OPENED, or the error the handshake failed with.
  #handshakeEnd: unknown = RUNNING;
  // `handshake`, made when first asked for, and its resolve and reject while it waits.
  #handshake: Promise<void> | undefined;
  #handshakeResolve: (() => void) | undefined;
  #handshakeReject: ((error: unknown) => void) | undefined;

  /**
   * Wraps `protocol` around `transport`; call `start()` to begin reading.
   * `options` is kept rather than copied (a server's connections share one):
   * its hooks are read when they run, and its limits are those it holds now.
   */
  constructor(protocol: Protocol, transport: Transport, options: StreamConnectionOptions = {}) {
    super(options, protocol.maxSize);
    this.protocol = protocol;
    // Messages received before a protocol violation are delivered and may be answered before
    // the close frame: see #holdFailure().
    protocol.deferFailure = true;
    this.transport = transport;
    this.#options = options;
  }

  /**
   * Resolves when the opening handshake succeeded, rejects with the
   * handshake error. (Made when first asked for: `serve()` learns how each
   * handshake ended through `onHandshakeEnd`.)
   */
  get handshake(): Promise<void> {
    if (this.#handshake === undefined) {
      const end = this.#handshakeEnd;
      this.#handshake = end === RUNNING
        ? new Promise((resolve, reject) => {
          this.#handshakeResolve = resolve;
          this.#handshakeReject = reject;
        })
        : end === OPENED
        ? Promise.resolve()
        : Promise.reject(end);
      this.#handshake.catch(() => {});
    }
    return this.#handshake;
  }

  /**
   * Closes the transport at once, without a closing handshake (the peer sees
   * the TCP connection drop; `closed` reports 1006). Does nothing when the
   * transport is already closed.
   */
  abort(): void {
    this.#abort();
  }

  /** Starts the read loop (and, once open, keepalive). */
  start(): void {
    if (!this.#started) {
      this.#started = true;
      this.#run();
    }
    if (this.protocol.state === State.OPEN) this.#opened();
  }

  /** The protocol's counters: see {@linkcode Protocol.prototype.counters}. */
  protected get counters(): TrafficCounters {
    return this.protocol.counters;
  }

  /** The connection state, from the protocol. */
  get state(): State {
    return this.protocol.state;
  }
  /** Bytes queued for sending and not yet written to the transport. */
  get bufferedAmount(): number {
    // A transport that counts what it holds counts the write in flight too.
    const held = this.transport.bufferedAmount;
    return this.protocol.outputLength +
      (held === undefined ? this.#inflight : held + this.#piecesLeft);
  }
  /** The subprotocol negotiated during the handshake, if any. */
  get subprotocol(): string | undefined {
    return this.protocol.subprotocol;
  }
  /** The extensions negotiated during the handshake. */
  get extensions(): readonly Extension[] {
    return this.protocol.extensions;
  }
  /** The handshake request. */
  get request(): Request | undefined {
    return (this.protocol as { request?: Request }).request;
  }
  /** The handshake response. */
  get response(): Response | undefined {
    return (this.protocol as { response?: Response }).response;
  }
  /** The transport's local address, if it has one. */
  get localAddr(): Deno.Addr | undefined {
    try {
      return this.transport.localAddr;
    } catch {
      return undefined;
    }
  }
  /** The transport's remote address, if it has one. */
  get remoteAddr(): Deno.Addr | undefined {
    try {
      return this.transport.remoteAddr;
    } catch {
      return undefined;
    }
  }
  /** Whether a fragmented message is being sent. */
  get sendingFragmented(): boolean {
    return this.protocol.sendingFragmented;
  }

  /** Queues one frame of a message in the protocol and schedules a write. */
  protected sendFrame(
    kind: "text" | "binary" | "continuation",
    data: string | Uint8Array,
    fin: boolean,
    options: EncodeOptions | undefined,
  ): void {
    const protocol = this.protocol;
    if (kind === "text") protocol.sendText(data, fin, options);
    else if (kind === "binary") protocol.sendBinary(data as Uint8Array, fin, options);
    else protocol.sendContinuation(data, fin);
    this.flushSoon();
  }

  /** Queues a ping frame and schedules a write. */
  protected sendPingFrame(data: Uint8Array): void {
    this.protocol.sendPing(data);
    this.flushSoon();
  }

  /** Queues a pong frame and schedules a write. */
  protected sendPongFrame(data: Uint8Array): void {
    this.protocol.sendPong(data);
    this.flushSoon();
  }

  /** Queues a broadcast message: the shared serialized bytes on a server, a masked frame on a client. Returns `false` when not OPEN. */
  sendShared(frames: SharedFrames): boolean {
    if (this.protocol.state !== State.OPEN) return false;
    this.checkNotFragmenting();
    const protocol = this.protocol;
    if (protocol.isClient) {
      // Client frames are masked with a fresh key each: no sharing possible.
      if (frames.text) protocol.sendText(frames.data);
      else protocol.sendBinary(frames.data);
    } else {
      // The extensions are fixed once open: work out once whether and how this
      // connection can share an encoding, not on every broadcast.
      if (this.#sharedKey === undefined) this.#sharedKey = sharedEncodingKey(protocol.extensions);
      protocol.sendSerialized(
        encodeShared(frames, protocol.extensions, this.#sharedKey),
        frames.data.length,
      );
    }
    this.flushSoon();
    return true;
  }

  /** Resolves once `bufferedAmount` is under `writeLimit`; rejects when the connection closed. */
  protected drain(): Promise<void> {
    if (this.bufferedAmount <= this.writeLimit) {
      if (this.#transportClosed && this.state !== State.OPEN) {
        const error = this.closedError;
        if (error !== undefined) return Promise.reject(error);
      }
      return Promise.resolve();
    }
    if (this.#transportClosed) return Promise.reject(this.closedError ?? this.makeCloseError());
    return new Promise((resolve, reject) => (this.#drainWaiters ??= []).push({ resolve, reject }));
  }

  /** The `ConnectionClosed` error matching the close frames exchanged. */
  protected makeCloseError(): ConnectionClosed {
    return this.protocol.closeError;
  }

  /** Whether the close frames exchanged make a normal closure, without building the error. */
  protected override get closedOK(): boolean {
    if (this.state !== State.CLOSED) return false;
    return isNormalClosure(this.protocol.closeRcvd, this.protocol.closeSent);
  }

  /**
   * Schedules a write of everything the protocol produced, coalesced into one write (large
   * payloads excepted: see splitForWrite()). The write waits while the application makes
   * progress from one microtask to the next (reads a queued message or queues a frame), so that
   * the answers to the messages of one read go in one write.
   */
  flushSoon(): void {
    if (this.#writing || this.#flushScheduled) return;
    this.#flushScheduled = true;
    if (this.transport.syncWrites === true) {
      StreamConnection.#flushAfterTurn(this);
      return;
    }
    this.#flushWaits = 0;
    this.#flushQueued = -1;
    StreamConnection.#checkSoon(this);
  }

  // The connections whose pending write waits for the application, checked in one microtask
  // (not a microtask and a closure each: a broadcast schedules a write on every connection).
  static #toCheck: StreamConnection[] = [];

  static #checkSoon(connection: StreamConnection): void {
    const toCheck = StreamConnection.#toCheck;
    toCheck.push(connection);
    if (toCheck.length === 1) queueMicrotask(StreamConnection.#checkAll);
  }

  // Transports whose writes complete synchronously don't hold frames back while a write is in
  // flight: their connections write once per event-loop turn, after its I/O, so that all that
  // was queued while handling the turn's reads goes in one write (one system call).
  static #afterTurn: StreamConnection[] = [];

  static #flushAfterTurn(connection: StreamConnection): void {
    const queue = StreamConnection.#afterTurn;
    queue.push(connection);
    if (queue.length === 1) setImmediate(StreamConnection.#flushTurn);
  }

  static #flushTurn(): void {
    const queue = StreamConnection.#afterTurn;
    StreamConnection.#afterTurn = [];
    for (let i = 0; i < queue.length; i++) {
      const connection = queue[i];
      connection.#flushScheduled = false;
      connection.#flush();
    }
  }

  static #checkAll(): void {
    const toCheck = StreamConnection.#toCheck;
    StreamConnection.#toCheck = [];
    for (let i = 0; i < toCheck.length; i++) toCheck[i].#flushWhenIdle();
  }

  #flushWhenIdle(): void {
    const queued = this.messagesQueued;
    const output = this.protocol.outputLength;
    if (
      (queued !== this.#flushQueued || output !== this.#flushOutput) &&
      this.#flushWaits < MAX_FLUSH_WAITS && output < this.writeLimit && !this.#transportClosed
    ) {
      this.#flushQueued = queued;
      this.#flushOutput = output;
      this.#flushWaits++;
      StreamConnection.#checkSoon(this);
      return;
    }
    this.#flushScheduled = false;
    this.#flush();
  }

  #flush(): void {
    if (this.#writing) return;
    this.#writing = true;
    this.#writeMore();
  }

  // Takes what the protocol produced and starts writing it, one write at a time. No async
  // function per write: the write's settlement handlers are created once per connection.
  // `#writing` stays set until everything is written (or the transport is closing).
  #writeMore(): void {
    try {
      while (!this.#transportClosed) {
        const chunks = this.protocol.dataToSend();
        if (chunks.length === 0) break;
        let eof = false;
        let length = 0;
        let count = 0;
        for (; count < chunks.length; count++) {
          if (chunks[count].length === 0) {
            eof = true;
            break;
          }
          length += chunks[count].length;
        }
        this.#writeEof = eof;
        if (length !== 0) {
          this.#inflight = length;
          if (count > 1 && length >= DIRECT_FROM && hasLargeChunk(chunks, count)) {
            const pieces = splitForWrite(chunks, count);
            this.#pieces = pieces;
            this.#pieceAt = 1;
            this.#piecesLeft = length - pieces[0].length;
            this.#write(pieces[0]);
            return;
          }
          this.#write(count === 1 ? chunks[0] : concatChunks(chunks, count, length));
          return;
        }
        this.#notifyDrain();
        if (eof) {
          this.#endOutput().then(() => this.#ended(), (error) => this.#writeFailed(error));
          return;
        }
      }
    } catch (error) {
      this.#writeFailed(error);
      return;
    }
    this.#ended();
  }

  #write(data: Uint8Array): void {
    const transport = this.transport;
    for (;;) {
      this.#writeData = data;
      if (transport.writeNow === undefined) {
        this.#whenWritten(transport.write(data));
        return;
      }
      const result = transport.writeNow(data);
      if (typeof result !== "number") {
        this.#whenWritten(result);
        return;
      }
      // Written synchronously: go on at once, without a promise (in a loop: a write of many
      // pieces doesn't recurse).
      const next = this.#afterWrite(result);
      if (next === undefined) return;
      data = next;
    }
  }

  // The settlement handlers of a write that waits, made on the first such write (writes that
  // complete synchronously never need them, and an idle connection then keeps none).
  #onWritten: ((count: number) => void) | undefined;
  #onWriteFailed: ((error: unknown) => void) | undefined;

  #whenWritten(promise: Promise<number>): void {
    promise.then(
      this.#onWritten ??= (count) => this.#written(count),
      this.#onWriteFailed ??= (error) => this.#writeFailed(error),
    );
  }

  #written(count: number): void {
    const next = this.#afterWrite(count);
    if (next === undefined) return;
    try {
      this.#write(next);
    } catch (error) {
      this.#writeFailed(error);
    }
  }

  // After `count` bytes of #writeData went out: the bytes to write next, or `undefined` when
  // this write is over (then the next one has started, or writing ended).
  #afterWrite(count: number): Uint8Array | undefined {
    try {
      const data = this.#writeData!;
      if (count < data.length) return data.subarray(count);
      const pieces = this.#pieces;
      if (pieces !== undefined) {
        if (this.#pieceAt < pieces.length) {
          const next = pieces[this.#pieceAt++];
          this.#piecesLeft -= next.length;
          return next;
        }
        this.#pieces = undefined;
      }
      this.#writeData = undefined;
      this.#inflight = 0;
      this.#notifyDrain();
      if (this.#writeEof) {
        this.#endOutput().then(() => this.#ended(), (error) => this.#writeFailed(error));
        return undefined;
      }
    } catch (error) {
      this.#writeFailed(error);
      return undefined;
    }
    this.#writeMore();
    return undefined;
  }

  #writeFailed(error: unknown): void {
    this.logger?.debug(`connection ${this.id}: write failed: ${error}`);
    this.#writeData = undefined;
    this.#pieces = undefined;
    this.#piecesLeft = 0;
    this.#inflight = 0;
    this.#abort();
    this.#ended();
  }

  // Writing stopped: frames queued during the last write and after it get a new one.
  #ended(): void {
    this.#writing = false;
    const idle = this.#writeIdle;
    if (idle !== undefined) {
      this.#writeIdle = undefined;
      idle();
    }
    if (!this.#transportClosed && this.protocol.outputLength !== 0) this.flushSoon();
  }

  // Resolves once writing stopped (set by #run's end only).
  #writeIdle: (() => void) | undefined;

  #writesDone(): Promise<void> {
    return new Promise((resolve) => (this.#writeIdle = resolve));
  }

  // Resolves once the output is under writeLimit, the connection stops being open or the
  // transport closed (see #releaseReading()).
  #outputDrained(): Promise<void> {
    return new Promise((resolve) => {
      this.#resumeReading = resolve;
      (this.#drainWaiters ??= []).push({ resolve, reject: () => resolve() });
    });
  }

  // Ends a pause of the read loop: the connection is closing, nothing it reads adds up now.
  #releaseReading(): void {
    this.stopWaitingForQueueSpace();
    const resume = this.#resumeReading;
    this.#resumeReading = undefined;
    resume?.();
  }

  #notifyDrain(): void {
    const waiters = this.#drainWaiters;
    if (waiters === undefined || this.bufferedAmount > this.writeLimit) return;
    this.#drainWaiters = undefined;
    for (const waiter of waiters) waiter.resolve();
  }

  // The protocol asked to close the transport: half-close, and bound the
  // wait for the other side's close with closeTimeout.
  async #endOutput(): Promise<void> {
    const protocol = this.protocol;
    // Nothing more is to be read once the end of the stream came, nor on a server once the
    // client's close frame came (a client sends nothing after it, RFC 6455 §5.5.1): close
    // at once, rather than half-close and wait for the client's end of stream, when the
    // transport delivers what was written before the close.
    if (protocol.eofReceived || this.#doneReading) {
      this.#abort();
      return;
    }
    this.#startCloseTimer();
    try {
      if (this.transport.closeWrite !== undefined) await this.transport.closeWrite();
      else this.#abort();
    } catch {
      this.#abort();
    }
  }

  // RFC 6455 §7.1.7 (Fail the WebSocket Connection): the protocol found a violation in what it
  // read and stopped processing data, but what came before the violation is valid. The
  // messages among it were delivered; the close frame goes once the application has read
  // them all and asks for more (so that its answers go first, as the Autobahn|Testsuite's
  // strict grade expects), or after closeTimeout, for an application that doesn't read.
  #holdFailure(): void {
    if (this.caughtUp) {
      this.#completeFailure();
    } else if (this.#failTimer === undefined) {
      this.#failTimer = setTimeout(() => {
        this.logger?.debug(`connection ${this.id}: messages before a failure unread, failing`);
        this.#completeFailure();
      }, this.closeTimeout);
    }
  }

  /** Sends the close frame of a failure held until the application caught up; see `#holdFailure()`. */
  protected override waitingForMessage(): void {
    if (this.protocol.failurePending) this.#completeFailure();
  }

  #completeFailure(): void {
    if (this.#failTimer !== undefined) clearTimeout(this.#failTimer);
    this.#failTimer = undefined;
    const protocol = this.protocol;
    if (!protocol.failurePending) return;
    protocol.completeFailure();
    this.flushSoon();
    if (protocol.closeExpected()) this.#startCloseTimer();
    this.#releaseReading();
  }

  // Resolves once a failure held by #holdFailure() is sent (or the transport closed): the read
  // loop reads nothing meanwhile, so TCP pushes back on a peer that goes on sending.
  #failureSent(): Promise<void> {
    return new Promise((resolve) => (this.#resumeReading = resolve));
  }

  #startCloseTimer(): void {
    if (this.#closeTimer !== undefined || this.#transportClosed) return;
    this.#closeTimer = setTimeout(() => {
      this.logger?.debug(`connection ${this.id}: close timeout, aborting`);
      this.#abort();
    }, this.closeTimeout);
  }

  #abort(): void {
    if (this.#transportClosed) return;
    this.#transportClosed = true;
    try {
      this.transport.close();
    } catch {
      // already closed
    }
    this.#releaseReading();
    this.#onAbort?.();
  }

  // Set while a handshake hook runs, so that aborting doesn't wait for a hook that never returns.
  #onAbort: (() => void) | undefined;

  // The buffer for the next read: what is left of the last one while it is big enough.
  #readBuffer(): Uint8Array {
    const size = this.#readSize;
    if (this.#slab.length < (size < MIN_REUSE ? size : MIN_REUSE)) {
      this.#slab = new Uint8Array(size);
    }
    return this.#slab;
  }

  // The bytes that a read of `count` bytes into `slab` brought.
  #readDone(slab: Uint8Array, count: number): Uint8Array {
    const chunk = slab.subarray(0, count);
    this.#slab = slab.subarray(count);
    // Grow the next buffer when reads fill this one, shrink when they don't.
    if (count === slab.length) this.#readSize = Math.min(this.#readSize * 2, MAX_READ);
    else if (count < this.#readSize >>> 3) {
      this.#readSize = Math.max(this.#readSize >>> 1, MIN_READ);
    }
    return chunk;
  }

  // Whether so much output waits that reading pauses: READ_PAUSE_OUTPUT or 16 × writeLimit,
  // whichever is more (the common case, little output, is decided by the first comparison).
  get #outputTooLarge(): boolean {
    const buffered = this.bufferedAmount;
    return buffered > READ_PAUSE_OUTPUT && buffered > 16 * this.writeLimit;
  }

  // Whether this is a server that closes its transport at once (closeAtOnce) and the client's
  // close frame came: nothing more is to be read.
  get #doneReading(): boolean {
    const protocol = this.protocol;
    return this.#options.closeAtOnce === true && !protocol.isClient &&
      protocol.closeRcvd !== undefined;
  }

  // Runs a connection's read loop again once its transport's takeChunk() has something: one
  // function for every connection, called on the connection (see #run()).
  static #wake(this: StreamConnection): void {
    void this.#run(true);
  }

  // Reads and processes what comes until the connection ends. Over a transport with
  // takeChunk(), a run also ends whenever nothing came yet, and the transport starts the next
  // one when something does (`woken`): a connection waiting for data then holds no suspended
  // function and no pending promise.
  async #run(woken = false): Promise<void> {
    const protocol = this.protocol;
    const transport = this.transport;
    let error: Error | undefined;
    // Set when this run ended to wait for data without a promise (see above).
    let waiting = false;
    try {
      while (!protocol.eofReceived && !this.#transportClosed) {
        // Reading pauses only while open: once closing, nothing read is queued or answered. (A
        // run woken by the transport goes on with the read it was waiting for, as a pending read
        // would: the end of the stream is seen even while output is paused.)
        while (!woken && protocol.state === State.OPEN && !this.#transportClosed) {
          if (protocol.failurePending) await this.#failureSent();
          else if (this.queueFull) await this.waitForQueueSpace();
          else if (this.#outputTooLarge) await this.#outputDrained();
          else break;
        }
        woken = false;
        if (this.#transportClosed) break;
        let chunk: Uint8Array | null;
        // Set when the read went straight into the payload of a large frame: the bytes it brought.
        let direct: number | undefined;
        // The buffer read into, declared here so that each time round resets it: kept from an
        // earlier read (a large frame's payload), it would stay alive as long as the connection
        // then idles in a read.
        let slab: Uint8Array | undefined;
        try {
          // (Not an async helper: one suspended function per idle connection is enough.)
          // The rest of a large payload is read straight into the frame's buffer, whatever
          // the transport; otherwise a transport with buffers of its own hands its chunk over.
          const into = protocol.receiveBuffer(DIRECT_READ_FROM);
          if (into === undefined && transport.takeChunk !== undefined) {
            const taken = transport.takeChunk(StreamConnection.#wake, this);
            if (taken === undefined) {
              waiting = true;
              return;
            }
            chunk = taken;
          } else if (into === undefined && transport.readChunk !== undefined) {
            chunk = await transport.readChunk();
          } else {
            slab = into ?? this.#readBuffer();
            const count = await transport.read(slab);
            if (count !== null && into !== undefined) direct = count;
            chunk = count === null ? null : into ?? this.#readDone(slab, count);
          }
        } catch (readError) {
          if (this.#transportClosed) break;
          this.logger?.debug(`connection ${this.id}: read failed: ${readError}`);
          // During the handshake the read error (e.g. an untrusted TLS
          // certificate) says more than "connection closed": report it.
          if (protocol.state === State.CONNECTING) this.#settleHandshake(readError);
          chunk = null;
        }
        if (chunk === null) {
          protocol.receiveEof();
        } else if (direct !== undefined) {
          protocol.receiveInto(direct);
        } else {
          protocol.receiveData(chunk);
        }
        // Messages are delivered synchronously; only handshake events wait for hooks.
        // (Frames that came with the handshake are parsed once its hook ran.)
        let handshakeEvent = this.#processEvents();
        while (handshakeEvent !== undefined) {
          await handshakeEvent;
          handshakeEvent = this.#processEvents();
        }
        // A handshake message that can't be parsed fails the handshake now, not once the
        // peer closes the connection (the response to a client may never end).
        if (protocol.handshakeError !== undefined) this.#settleHandshake(protocol.handshakeError);
        if (protocol.failurePending) this.#holdFailure();
        if (protocol.outputLength !== 0 || protocol.eofSent) this.flushSoon();
        if (protocol.closeExpected()) this.#startCloseTimer();
        // Nothing follows a client's close frame (RFC 6455 §5.5.1): a server that closes the
        // transport once its own close frame is written reads no more. (A read left pending
        // would only fail when the transport closes, and building that error costs.)
        if (this.#doneReading) break;
      }
    } catch (runError) {
      error = runError instanceof Error ? runError : new Error(String(runError));
      this.logger?.error(`connection ${this.id}: unexpected error`, error);
    } finally {
      if (!waiting) await this.#end(error);
    }
  }

  // The read loop's end. A final write (close frame, response) goes out before closing, for at
  // most closeTimeout: a peer that ended its side of the stream and doesn't read would
  // otherwise hold the write, and the socket, forever.
  async #end(error: Error | undefined): Promise<void> {
    const protocol = this.protocol;
    if (this.#writing || protocol.outputLength !== 0) this.#startCloseTimer();
    while (this.#writing) await this.#writesDone();
    if (!this.#transportClosed && protocol.outputLength !== 0) {
      this.#flush();
      while (this.#writing) await this.#writesDone();
    }
    this.#finish(error);
  }

  /**
   * Has the protocol deliver the next message (or the one half received)
   * frame by frame, for `recvStreaming()`; a message half received gives
   * what came of it at once.
   */
  protected override startStreaming(maxSize: number): void {
    const protocol = this.protocol;
    protocol.streamMessage(maxSize);
    this.#processEvents();
    if (protocol.state !== State.OPEN) {
      // What came already is over the limit: the connection is failing.
      this.flushSoon();
      this.#startCloseTimer();
      this.#releaseReading();
    }
  }

  #processEvents(): Promise<void> | undefined {
    const events = this.protocol.eventsReceived();
    for (let i = 0; i < events.length; i++) {
      const event = events[i];
      switch (event.type) {
        case "message":
          this.deliver(event.data);
          break;
        case "fragment":
          this.deliverPart(event.data, event.fin);
          break;
        case "pong":
          this.acknowledgePings(event.data);
          break;
        case "ping":
        case "close":
          break;
        default: {
          // A handshake event comes before any message: deliver the rest after its hook
          // (at once when the hook answered synchronously).
          const hookDone = this.#handshakeEvent(event);
          if (hookDone === undefined) break;
          return hookDone.then(() => {
            for (let j = i + 1; j < events.length; j++) {
              const rest = events[j];
              if (rest.type === "message") this.deliver(rest.data);
              else if (rest.type === "pong") this.acknowledgePings(rest.data);
            }
          });
        }
      }
    }
    return undefined;
  }

  // Runs the handshake hook; a promise only when the hook returned one.
  #handshakeEvent(event: ProtocolEvent): Promise<void> | undefined {
    let hook: void | Promise<void> | undefined;
    try {
      hook = this.#options.onHandshake?.(event, this);
    } catch (error) {
      this.#handshakeHookFailed(error);
      return undefined;
    }
    if (hook instanceof Promise) return this.#awaitHandshakeHook(hook);
    this.#afterHandshakeHook();
    return undefined;
  }

  async #awaitHandshakeHook(hook: Promise<void>): Promise<void> {
    try {
      hook.catch(() => {}); // a hook that fails after an abort has nobody to tell
      await Promise.race([
        hook,
        new Promise<void>((resolve) => (this.#onAbort = resolve)),
      ]).finally(() => (this.#onAbort = undefined));
    } catch (error) {
      this.#handshakeHookFailed(error);
      return;
    }
    this.#afterHandshakeHook();
  }

  #handshakeHookFailed(error: unknown): void {
    this.logger?.error(`connection ${this.id}: handshake hook failed`, error);
    this.#settleHandshake(error);
    this.#abort();
  }

  #afterHandshakeHook(): void {
    if (this.#transportClosed) return;
    const protocol = this.protocol;
    if (protocol.handshakeError !== undefined) {
      this.#settleHandshake(protocol.handshakeError);
    } else if (protocol.state !== State.CONNECTING) {
      // Open, even if a close frame that came with the handshake already moved it on.
      this.#opened();
    }
  }

  #opened(): void {
    if (this.#handshakeEnd !== RUNNING) return;
    this.#handshakeEnd = OPENED;
    if (this.#readSize === HANDSHAKE_READ) {
      // Back to small reads; the rest of the handshake's buffer isn't kept by an idle connection.
      this.#readSize = MIN_READ;
      this.#slab = EMPTY;
    }
    this.markOpen();
    this.logger?.info(`connection ${this.id} open`);
    const resolve = this.#handshakeResolve;
    this.#handshakeResolve = this.#handshakeReject = undefined;
    resolve?.();
    this.startKeepalive();
    this.#options.onHandshakeEnd?.(this, true);
  }

  #settleHandshake(error: unknown): void {
    if (this.#handshakeEnd !== RUNNING) return;
    this.#handshakeEnd = error;
    const reject = this.#handshakeReject;
    this.#handshakeResolve = this.#handshakeReject = undefined;
    reject?.(error);
    this.#options.onHandshakeEnd?.(this, false);
  }

  #finish(error: Error | undefined): void {
    if (this.#closeTimer !== undefined) clearTimeout(this.#closeTimer);
    this.#closeTimer = undefined;
    if (this.#failTimer !== undefined) clearTimeout(this.#failTimer);
    this.#failTimer = undefined;
    this.#abort();
    const protocol = this.protocol;
    for (const extension of protocol.extensions) {
      try {
        extension.close?.();
      } catch (closeError) {
        this.logger?.warn(
          `connection ${this.id}: closing extension ${extension.name} failed: ${closeError}`,
        );
      }
    }
    if (protocol.state !== State.CLOSED && !protocol.eofReceived) {
      try {
        protocol.receiveEof();
        protocol.eventsReceived();
      } catch {
        // already at EOF
      }
    }
    if (this.#handshakeEnd === RUNNING) {
      this.#settleHandshake(
        protocol.handshakeError ?? error ?? new ConnectionClosedError(undefined, undefined),
      );
    }
    const drainWaiters = this.#drainWaiters;
    if (drainWaiters !== undefined) {
      this.#drainWaiters = undefined;
      const closeError = protocol.closeError;
      for (const waiter of drainWaiters) waiter.reject(closeError);
    }
    const rcvd = protocol.closeRcvd, sent = protocol.closeSent;
    this.terminate({
      code: rcvd?.code ?? CloseCode.ABNORMAL_CLOSURE,
      reason: rcvd?.reason ?? "",
      wasClean: rcvd !== undefined && sent !== undefined,
      rcvd,
      sent,
      error: error ?? protocol.failure ?? protocol.handshakeError,
    });
  }

  /** Fails the connection with `code` and bounds the wait for the TCP close. */
  protected failTransport(code: number, reason: string): void {
    if (this.protocol.state === State.OPEN) {
      this.protocol.failConnection(code, reason);
      this.flushSoon();
      this.#startCloseTimer();
      this.#releaseReading();
    }
  }

  /** Sends a close frame (once) and waits until the transport is closed. */
  protected async closeTransport(code: number, reason: string): Promise<void> {
    const protocol = this.protocol;
    if (protocol.state === State.CONNECTING) {
      this.#abort();
    } else if (protocol.state === State.OPEN) {
      if (protocol.sendingFragmented) {
        // The message can't be finished: fail with 1011 rather than corrupt it.
        protocol.failConnection(CloseCode.INTERNAL_ERROR, "close during a fragmented message");
      } else {
        protocol.sendClose(code, reason);
      }
      this.flushSoon();
      this.#startCloseTimer();
      this.#releaseReading();
    }
    await this.closed;
  }
}
