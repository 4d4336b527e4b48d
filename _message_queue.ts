/**
 * The received-message queue that every {@linkcode Connection} has: messages
 * wait here until `recv()`, iteration or `readable` takes them; waiters wait
 * here for messages; the read loop waits here for room (`maxQueue`).
 *
 * @module
 */

import type { ConnectionClosed } from "./errors.ts";

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

// A recv() waiting for a message, or an iteration (`iterating`): resolved with an
// IteratorResult, and ended without an error on a normal closure.
interface RecvWaiter {
  iterating: boolean;
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

  // Created on demand: an idle connection holds no queue, no waiter list.
  #messages: Message[] | undefined;
  #messagesHead = 0;
  // The oldest recv() waiting, then the others (several wait only when recv() runs concurrently).
  #recvWaiter: RecvWaiter | undefined;
  #recvWaiters: RecvWaiter[] | undefined;
  #queueSpaceWaiter: (() => void) | undefined;
  #ended = false;

  /**
   * Whether the connection is closed and its close error is
   * `ConnectionClosedOK` (a normal closure).
   */
  protected abstract get closedOK(): boolean;
  /** The error describing the close, once closed. */
  protected abstract get closedError(): ConnectionClosed | undefined;

  /** Called by implementations for each message received. */
  protected deliver(message: Message): void {
    const waiter = this.#recvWaiter;
    if (waiter !== undefined) {
      this.#recvWaiter = this.#recvWaiters?.shift();
      waiter.resolve(waiter.iterating ? { value: message, done: false } : message);
      return;
    }
    (this.#messages ??= []).push(message);
  }

  /** Number of received messages waiting to be read. */
  get messagesQueued(): number {
    const messages = this.#messages;
    return messages === undefined ? 0 : messages.length - this.#messagesHead;
  }

  /** Whether reading from the network should pause: `maxQueue` messages wait unread. */
  protected get queueFull(): boolean {
    return this.messagesQueued >= this.maxQueue;
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
      if (this.#recvWaiter === undefined) this.#recvWaiter = waiter;
      else (this.#recvWaiters ??= []).push(waiter);
    });
  }

  /**
   * Iterates over incoming messages until the connection closes: the loop
   * ends quietly on a normal closure (1000, 1001, or no status) and throws
   * `ConnectionClosedError` otherwise.
   */
  [Symbol.asyncIterator](): AsyncIterator<Message> {
    return {
      next: (): Promise<IteratorResult<Message>> => {
        if (this.messagesQueued !== 0) {
          return Promise.resolve({ value: this.#takeMessage(), done: false });
        }
        if (this.#ended) {
          if (this.closedOK) return Promise.resolve({ value: undefined, done: true });
          return Promise.reject(this.closedError);
        }
        // A normal closure ends the iteration without building the close error.
        return new Promise<IteratorResult<Message>>((resolve, reject) => {
          const waiter: RecvWaiter = {
            iterating: true,
            resolve: resolve as RecvWaiter["resolve"],
            reject,
          };
          if (this.#recvWaiter === undefined) this.#recvWaiter = waiter;
          else (this.#recvWaiters ??= []).push(waiter);
        });
      },
      return: (): Promise<IteratorResult<Message>> => {
        return Promise.resolve({ value: undefined, done: true });
      },
    };
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
  }

  #endWaiter(waiter: RecvWaiter): void {
    if (waiter.iterating && this.closedOK) waiter.resolve({ value: undefined, done: true });
    else waiter.reject(this.closedError);
  }
}
