/**
 * The received-message queue that every {@linkcode Connection} has: messages
 * wait here until `recv()`, iteration or `readable` takes them; waiters wait
 * here for messages; the read loop waits here for room (`maxQueue`).
 *
 * @module
 */

import { ConcurrencyError, type ConnectionClosed } from "./errors.ts";

/**
 * A message: `string` for Text, `Uint8Array` for Binary.
 *
 * @example
 * ```ts
 * import type { Message } from "@denows/websockets";
 * const message: Message = new Uint8Array([1, 2, 3]);
 * console.log(typeof message === "string" ? "text" : "binary"); // binary
 * ```
 */
export type Message = string | Uint8Array;

/** Options of {@linkcode MessageQueue.prototype.recv}. */
export interface RecvOptions {
  /**
   * Aborts the wait (the message, if one arrives later, stays queued).
   *
   * @default {undefined} (wait until a message arrives or the connection closes)
   */
  signal?: AbortSignal;
}

/**
 * Options of {@linkcode MessageQueue.prototype.recvStreaming}.
 *
 * @example
 * ```ts
 * import type { RecvStreamingOptions } from "@denows/websockets";
 * const options: RecvStreamingOptions = { maxSize: Infinity };
 * console.log(options.maxSize); // Infinity
 * ```
 */
export interface RecvStreamingOptions {
  /**
   * The largest size of this message, in bytes, `Infinity` for no limit: a
   * streamed message may exceed the connection's `maxSize` only when this
   * call says so. Beyond it the connection is closed with 1009 at the
   * fragment that crosses it. Whatever this limit, one compressed frame
   * still inflates to at most the connection's `maxSize`.
   *
   * @default {connection.maxSize}
   */
  maxSize?: number;
}

// The message that recvStreaming() reads part by part: the parts received and not taken yet,
// whether the last one came, who waits for the next, and whether its consumer left (the rest is
// then dropped as it comes).
interface PartStream {
  readonly maxSize: number;
  parts: Message[];
  head: number;
  last: boolean;
  started: boolean;
  abandoned: boolean;
  waiter: RecvWaiter | undefined;
}

// Stands for a waiter's resolve and reject while it doesn't wait.
function ignore(_value: unknown): void {}

// A recv() waiting for a message, or an iteration (`iterating`): resolved with an
// IteratorResult, and ended without an error on a normal closure.
interface RecvWaiter {
  readonly iterating: boolean;
  resolve(value: Message | IteratorResult<Message>): void;
  reject(error: unknown): void;
}

/**
 * The receiving half of a connection, which {@linkcode Connection} extends:
 * messages received and not read yet, the `recv()` calls and iterations
 * waiting for them, and the read loop waiting for room. Messages received
 * before the close are always delivered; then readers get the close error
 * (an iteration ends quietly on a normal closure).
 *
 * (A base class rather than a member, so that delivering a message costs no
 * extra object per connection nor an extra hop per message.)
 *
 * @example
 * ```ts ignore
 * import { connect } from "@denows/websockets";
 * const ws = await connect("ws://127.0.0.1:8765/");
 * for await (const message of ws) console.log(message, ws.messagesQueued);
 * ```
 */
export abstract class MessageQueue implements AsyncIterable<Message> {
  /** Received messages buffered before reading pauses. */
  abstract readonly maxQueue: number;
  /** Largest incoming message in bytes; the default limit of `recvStreaming()`. */
  abstract readonly maxSize: number;

  // Created on demand: an idle connection holds no queue, no waiter list.
  #messages: Message[] | undefined;
  #messagesHead = 0;
  // The oldest recv() waiting, then the others (several wait only when recv() runs concurrently).
  #recvWaiter: RecvWaiter | undefined;
  #recvWaiters: RecvWaiter[] | undefined;
  #queueSpaceWaiter: (() => void) | undefined;
  #ended = false;
  // The message recvStreaming() reads, until its consumer took its last part or left.
  #stream: PartStream | undefined;
  // Whether the application took a message and hasn't asked for another one since.
  #handedOut = false;

  /**
   * Whether the connection is closed and its close error is
   * `ConnectionClosedOK` (a normal closure).
   */
  protected abstract get closedOK(): boolean;
  /** The error describing the close, once closed. */
  protected abstract get closedError(): ConnectionClosed | undefined;

  /**
   * Called by `recvStreaming()` when it waits for a message that hasn't
   * begun to arrive: an implementation that receives frame by frame asks
   * for the next message (or the one half received) as parts, and gives
   * them to {@linkcode MessageQueue.prototype.deliverPart}; one that
   * receives whole messages does nothing, and the next message delivered is
   * one part.
   */
  protected startStreaming(_maxSize: number): void {}

  /**
   * The size limit of the message `recvStreaming()` waits for, while it
   * waits for one to begin (for implementations that receive whole
   * messages); `undefined` otherwise.
   */
  protected get streamingMaxSize(): number | undefined {
    const stream = this.#stream;
    return stream !== undefined && !stream.started ? stream.maxSize : undefined;
  }

  /** Called by implementations for each part of the message `recvStreaming()` reads. */
  protected deliverPart(part: Message, last: boolean): void {
    const stream = this.#stream;
    if (stream === undefined) return;
    stream.started = true;
    if (last) stream.last = true;
    if (stream.abandoned) {
      if (last) this.#stream = undefined;
      return;
    }
    const waiter = stream.waiter;
    if (waiter !== undefined) {
      stream.waiter = undefined;
      if (last) this.#stream = undefined;
      this.#handedOut = true;
      waiter.resolve({ value: part, done: false });
      return;
    }
    stream.parts.push(part);
  }

  /** Called by implementations for each message received. */
  protected deliver(message: Message): void {
    if (this.#stream !== undefined) {
      // A message arriving whole (or, after a stream, before the stream's consumer finished).
      if (!this.#stream.started) {
        this.deliverPart(message, true);
        return;
      }
    }
    const waiter = this.#recvWaiter;
    if (waiter !== undefined) {
      this.#recvWaiter = this.#recvWaiters?.shift();
      this.#handedOut = true;
      waiter.resolve(waiter.iterating ? { value: message, done: false } : message);
      return;
    }
    (this.#messages ??= []).push(message);
  }

  /**
   * Whether the application has caught up with the messages received: none
   * waits in the queue, and it asked for another one after taking the last
   * (or never took one), so it is done with everything it was given.
   */
  protected get caughtUp(): boolean {
    const stream = this.#stream;
    return !this.#handedOut && this.messagesQueued === 0 &&
      (stream === undefined || stream.head === stream.parts.length);
  }

  /**
   * Called when the application asks for a message (or the next part of
   * the message `recvStreaming()` reads) and none is queued: it has caught
   * up (see `caughtUp`). Called once its wait is registered.
   */
  protected waitingForMessage(): void {}

  #addWaiter(waiter: RecvWaiter): void {
    if (this.#recvWaiter === undefined) this.#recvWaiter = waiter;
    else (this.#recvWaiters ??= []).push(waiter);
    this.#handedOut = false;
    this.waitingForMessage();
  }

  /** Number of received messages waiting to be read. */
  get messagesQueued(): number {
    const messages = this.#messages;
    return messages === undefined ? 0 : messages.length - this.#messagesHead;
  }

  /**
   * Whether reading from the network should pause: `maxQueue` messages wait
   * unread, or a part of the message `recvStreaming()` reads does.
   */
  protected get queueFull(): boolean {
    const stream = this.#stream;
    return this.messagesQueued >= this.maxQueue ||
      (stream !== undefined && stream.head < stream.parts.length);
  }

  /** Resolves once there is room in the message queue (or `stopWaitingForQueueSpace()` is called). */
  protected waitForQueueSpace(): Promise<void> {
    if (!this.queueFull || this.#ended) return Promise.resolve();
    return new Promise((resolve) => (this.#queueSpaceWaiter = resolve));
  }

  /** Ends a wait of `waitForQueueSpace()` now, room or not. */
  protected stopWaitingForQueueSpace(): void {
    const waiter = this.#queueSpaceWaiter;
    this.#queueSpaceWaiter = undefined;
    waiter?.();
  }

  #takeMessage(): Message {
    const messages = this.#messages!;
    const message = messages[this.#messagesHead];
    (messages as (Message | undefined)[])[this.#messagesHead] = undefined;
    this.#messagesHead++;
    this.#handedOut = true;
    if (this.#messagesHead === messages.length) {
      this.#messages = undefined;
      this.#messagesHead = 0;
    } else if (this.#messagesHead > 1024 && this.#messagesHead * 2 > messages.length) {
      this.#messages = messages.slice(this.#messagesHead);
      this.#messagesHead = 0;
    }
    const waiter = this.#queueSpaceWaiter;
    if (waiter !== undefined && !this.queueFull) {
      this.#queueSpaceWaiter = undefined;
      waiter();
    }
    return message;
  }

  /**
   * Receives the next message: a `string` for Text, a `Uint8Array` for
   * Binary. Messages already received are returned even after the
   * connection closed; then it throws `ConnectionClosedOK` or
   * `ConnectionClosedError`, carrying the close frames. `signal` aborts the
   * wait with its reason.
   */
  recv(options?: RecvOptions): Promise<Message> {
    if (this.#streaming) return Promise.reject(this.#streamingError("recv()"));
    if (this.messagesQueued !== 0) return Promise.resolve(this.#takeMessage());
    if (this.#ended) return Promise.reject(this.closedError);
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<Message>((resolve, reject) => {
      // Resolved with messages only: `iterating` is false.
      const waiter: RecvWaiter = {
        iterating: false,
        resolve: resolve as RecvWaiter["resolve"],
        reject,
      };
      if (signal !== undefined) {
        const onAbort = () => {
          if (this.#recvWaiter === waiter) {
            this.#recvWaiter = this.#recvWaiters?.shift();
          } else if (this.#recvWaiters !== undefined) {
            const index = this.#recvWaiters.indexOf(waiter);
            if (index !== -1) this.#recvWaiters.splice(index, 1);
          }
          reject(signal.reason);
        };
        signal.addEventListener("abort", onAbort, { once: true });
        waiter.resolve = (message) => {
          signal.removeEventListener("abort", onAbort);
          resolve(message as Message);
        };
        waiter.reject = (error) => {
          signal.removeEventListener("abort", onAbort);
          reject(error);
        };
      }
      this.#addWaiter(waiter);
    });
  }

  /**
   * Iterates over incoming messages until the connection closes: the loop
   * ends quietly on a normal closure (1000, 1001, or no status) and throws
   * `ConnectionClosedError` otherwise.
   */
  [Symbol.asyncIterator](): AsyncIterator<Message> {
    return new MessageQueue.#Iterator(this);
  }

  // An iteration: one small object, no closures (an idle connection's handler keeps one). While
  // its next() waits, it is that wait's waiter, so that waiting allocates only the promise.
  static #Iterator = class implements AsyncIterator<Message>, RecvWaiter {
    readonly #queue: MessageQueue;
    resolve: RecvWaiter["resolve"] = ignore;
    reject: RecvWaiter["reject"] = ignore;
    constructor(queue: MessageQueue) {
      this.#queue = queue;
    }
    get iterating(): boolean {
      return true;
    }
    next(): Promise<IteratorResult<Message>> {
      return this.#queue.#next(this);
    }
    return(): Promise<IteratorResult<Message>> {
      return Promise.resolve({ value: undefined, done: true });
    }
  };

  #next(iteration: RecvWaiter): Promise<IteratorResult<Message>> {
    if (this.#streaming) {
      return Promise.reject(this.#streamingError("iterate over messages"));
    }
    if (this.messagesQueued !== 0) {
      return Promise.resolve({ value: this.#takeMessage(), done: false });
    }
    if (this.#ended) {
      if (this.closedOK) return Promise.resolve({ value: undefined, done: true });
      return Promise.reject(this.closedError);
    }
    // A normal closure ends the iteration without building the close error. A next() called
    // while the iteration's last one still waits gets a waiter of its own.
    const waiting = this.#recvWaiter === iteration ||
      (this.#recvWaiters?.includes(iteration) ?? false);
    return new Promise<IteratorResult<Message>>((resolve, reject) => {
      const waiter: RecvWaiter = waiting ? { iterating: true, resolve: ignore, reject } : iteration;
      waiter.resolve = resolve as RecvWaiter["resolve"];
      waiter.reject = reject;
      this.#addWaiter(waiter);
    });
  }

  // Whether a recvStreaming() consumer reads a message (one whose loop was left doesn't: the
  // rest of its message is dropped as it arrives, and messages after it are delivered as usual).
  get #streaming(): boolean {
    const stream = this.#stream;
    return stream !== undefined && !stream.abandoned;
  }

  #streamingError(what: string): ConcurrencyError {
    return new ConcurrencyError(
      `Cannot ${what}: recvStreaming() is reading a message; read it to its end first`,
    );
  }

  /**
   * Receives the next message part by part, each as it arrives, like Python
   * `websockets`' `recv_streaming()`: Text as strings decoded incrementally
   * (a character split between frames comes out whole in the next string;
   * invalid UTF-8 closes the connection with 1007 at the frame where it
   * becomes invalid), Binary as `Uint8Array` views. A message that came in
   * one frame, or was received whole before this call, is one part.
   *
   * Reading from the network pauses while a part waits to be taken, so a
   * message of any size can be written somewhere as it arrives in bounded
   * memory (the largest frame, after decompression). The message may have
   * up to `options.maxSize` bytes, the connection's `maxSize` by default.
   *
   * One consumer at a time: until the message's last part is taken or the
   * loop is left, `recv()` and iteration throw `ConcurrencyError`; once the
   * loop is left, they wait for the next message while the rest of this one
   * is dropped as it arrives. Another `recvStreaming()` throws
   * `ConcurrencyError` until this message's last part arrived, and so does
   * this call while `recv()` or an iteration waits. Once the connection closed (after the parts already received),
   * the iteration throws the close error.
   *
   * @example Write an upload to a file as it arrives
   * ```ts ignore
   * import { serve } from "@denows/websockets";
   * serve(async (ws) => {
   *   using file = await Deno.open("upload.bin", { write: true, create: true });
   *   for await (const part of ws.recvStreaming({ maxSize: Infinity })) {
   *     if (typeof part !== "string") await file.write(part);
   *   }
   * });
   * ```
   */
  recvStreaming(options?: RecvStreamingOptions): AsyncIterableIterator<Message> {
    const current = this.#stream;
    if (current !== undefined) {
      throw new ConcurrencyError(
        current.abandoned
          ? "Cannot recvStreaming: the rest of the message a recvStreaming() loop left is still arriving"
          : "Cannot recvStreaming: another recvStreaming() is reading a message",
      );
    }
    if (this.#recvWaiter !== undefined) {
      throw new ConcurrencyError(
        "Cannot recvStreaming: recv() or an iteration is waiting for a message",
      );
    }
    const maxSize = options?.maxSize ?? this.maxSize;
    if (!(maxSize >= 0)) {
      throw new RangeError(`maxSize must be a positive number, got ${maxSize}`);
    }
    const stream: PartStream = {
      maxSize,
      parts: [],
      head: 0,
      last: false,
      started: false,
      abandoned: false,
      waiter: undefined,
    };
    this.#stream = stream;
    if (this.messagesQueued !== 0) {
      this.deliverPart(this.#takeMessage(), true);
    } else if (!this.#ended) {
      this.startStreaming(maxSize);
    }
    let done = false;
    const finish = (): IteratorResult<Message> => {
      done = true;
      return { value: undefined, done: true };
    };
    const iterator: AsyncIterableIterator<Message> = {
      next: (): Promise<IteratorResult<Message>> => {
        if (done) return Promise.resolve({ value: undefined, done: true });
        if (stream.head < stream.parts.length) {
          const part = stream.parts[stream.head];
          (stream.parts as (Message | undefined)[])[stream.head++] = undefined;
          this.#handedOut = true;
          if (stream.head === stream.parts.length) {
            stream.parts = [];
            stream.head = 0;
            if (stream.last && this.#stream === stream) this.#stream = undefined;
            this.#queueSpaceFreed();
          }
          return Promise.resolve({ value: part, done: false });
        }
        if (stream.last) return Promise.resolve(finish());
        if (this.#ended) {
          if (this.#stream === stream) this.#stream = undefined;
          done = true;
          return Promise.reject(this.closedError);
        }
        return new Promise<IteratorResult<Message>>((resolve, reject) => {
          stream.waiter = { iterating: true, resolve: resolve as RecvWaiter["resolve"], reject };
          this.#handedOut = false;
          this.waitingForMessage();
        });
      },
      return: (): Promise<IteratorResult<Message>> => {
        if (!done && !stream.last) {
          // Left before the end: what is queued and the rest as it comes are dropped.
          stream.abandoned = true;
          stream.parts = [];
          stream.head = 0;
          if (this.#ended && this.#stream === stream) this.#stream = undefined;
          this.#queueSpaceFreed();
        } else if (this.#stream === stream) {
          // Its last part came: drop what wasn't taken, and let reading go on.
          this.#stream = undefined;
          this.#queueSpaceFreed();
        }
        return Promise.resolve(finish());
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  // Wakes the read loop waiting for room, when there is room now.
  #queueSpaceFreed(): void {
    const waiter = this.#queueSpaceWaiter;
    if (waiter !== undefined && !this.queueFull) {
      this.#queueSpaceWaiter = undefined;
      waiter();
    }
  }

  /** Incoming messages as a `ReadableStream`; it closes on a normal closure and errors otherwise. */
  get readable(): ReadableStream<Message> {
    const iterator = this[Symbol.asyncIterator]();
    return new ReadableStream<Message>({
      pull: async (controller) => {
        const result = await iterator.next();
        if (result.done) controller.close();
        else controller.enqueue(result.value);
      },
    }, { highWaterMark: 0 });
  }

  /**
   * Called once the connection is closed: every waiter gets the end of the
   * messages (the close error, or the end of an iteration on a normal
   * closure); later reads take what is queued, then get the same.
   */
  protected endMessages(): void {
    if (this.#ended) return;
    this.#ended = true;
    // The close error is made when someone needs it: building an error costs a stack trace.
    const recvWaiter = this.#recvWaiter;
    if (recvWaiter !== undefined) {
      this.#recvWaiter = undefined;
      this.#endWaiter(recvWaiter);
    }
    const recvWaiters = this.#recvWaiters;
    if (recvWaiters !== undefined) {
      this.#recvWaiters = undefined;
      for (const waiter of recvWaiters) this.#endWaiter(waiter);
    }
    // A message read part by part that won't be finished: its reader gets the close error once
    // it took the parts that came.
    const stream = this.#stream;
    if (stream !== undefined && !stream.last) {
      if (stream.abandoned) this.#stream = undefined;
      const waiter = stream.waiter;
      if (waiter !== undefined) {
        stream.waiter = undefined;
        this.#stream = undefined;
        waiter.reject(this.closedError);
      }
    }
  }

  #endWaiter(waiter: RecvWaiter): void {
    if (waiter.iterating && this.closedOK) waiter.resolve({ value: undefined, done: true });
    else waiter.reject(this.closedError);
  }
}
