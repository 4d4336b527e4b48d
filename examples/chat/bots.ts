/**
 * Simulated chat clients for the demo: each one joins with `connect()`,
 * says something at a steady rate, and checks that it receives every chat
 * message the server broadcasts while it is a member, in order.
 *
 * @module
 */

import { connect } from "../../client.ts";
import type { StreamConnection } from "../../connection.ts";
import { State } from "../../protocol.ts";

const LINES = [
  "hello everyone",
  "anyone here?",
  "the weather is nice today",
  "just deployed a new build",
  "coffee time",
  "did you see the latest release notes?",
  "brb",
  "this chat runs on permessage-deflate",
  "ping me if you need anything",
  "back",
];

/** What a bot saw; see {@linkcode Bot.lost}. */
export interface BotReport {
  /** The name the server gave. */
  name: string;
  /** Chat messages sent. */
  sent: number;
  /** Chat messages received (its own included). */
  received: number;
  /** Messages it should have received by `finalSeq` but didn't. */
  lost: number;
  /** Messages received out of sequence (a gap, a repeat or a reordering). */
  outOfOrder: number;
}

/**
 * One simulated client. The server numbers chat messages consecutively and
 * tells a newcomer the number of the last one sent before it joined, so a
 * bot knows exactly which messages it must receive.
 */
export class Bot {
  /** The connection to the server. */
  readonly ws: StreamConnection;
  /** The name the server gave (set once welcomed). */
  name: string = "";
  /** Sequence number of the last chat message before this bot joined. */
  joinSeq: number = -1;
  /** Sequence number of the last chat message received. */
  lastSeq: number = -1;
  /** Chat messages received. */
  received: number = 0;
  /** Chat messages received out of sequence. */
  outOfOrder: number = 0;
  /** Chat messages sent. */
  sent: number = 0;
  /** Round trips of its own messages (send → broadcast back), in ms. */
  readonly latencies: number[] = [];
  readonly #pending = new Map<string, number>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #sending: Promise<void> = Promise.resolve();
  #stopped = false;
  /** Where in LINES this bot starts, so that bots don't all say the same thing. */
  readonly #offset: number;
  readonly #welcomed: Promise<void>;
  readonly #reading: Promise<void>;

  private constructor(ws: StreamConnection, wantedName: string) {
    this.ws = ws;
    this.#offset = [...wantedName].reduce((sum, character) => sum + character.codePointAt(0)!, 0) *
      7;
    let welcomed!: () => void;
    this.#welcomed = new Promise((resolve) => (welcomed = resolve));
    this.#reading = this.#read(welcomed);
    this.ws.send(JSON.stringify({ type: "hello", name: wantedName })).catch(() => {});
  }

  /** Connects to `url`, joins as `name` and resolves once welcomed (within 5 s). */
  static async join(url: string, name: string): Promise<Bot> {
    const ws = await connect(url, { openTimeout: 5_000, closeTimeout: 2_000 });
    const bot = new Bot(ws, name);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        bot.#welcomed,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`${name}: no welcome within 5 s`)), 5_000);
        }),
      ]);
    } catch (error) {
      await ws.close();
      throw error;
    } finally {
      clearTimeout(timer);
    }
    return bot;
  }

  async #read(welcomed: () => void): Promise<void> {
    try {
      for await (const data of this.ws) {
        if (typeof data !== "string") continue;
        const message = JSON.parse(data);
        if (message.type === "welcome") {
          this.name = message.name;
          this.joinSeq = this.lastSeq = message.seq;
          welcomed();
        } else if (message.type === "chat" && this.joinSeq >= 0) {
          if (message.seq !== this.lastSeq + 1) this.outOfOrder++;
          if (message.seq > this.lastSeq) {
            this.lastSeq = message.seq;
            this.received++;
          }
          const sentAt = message.from === this.name ? this.#pending.get(message.id) : undefined;
          if (sentAt !== undefined) {
            this.#pending.delete(message.id);
            this.latencies.push(performance.now() - sentAt);
          }
        }
      }
    } catch {
      // Closed abnormally: whatever is missing counts as lost.
    }
  }

  /** Sends one chat message every `intervalMs`, the first after `offsetMs`. */
  start(intervalMs: number, offsetMs: number): void {
    const tick = () => {
      if (this.#stopped || this.ws.state !== State.OPEN) return;
      const id = `${this.name}-${this.sent}`;
      const text = LINES[(this.sent * 3 + this.#offset) % LINES.length];
      this.#pending.set(id, performance.now());
      this.sent++;
      this.#sending = this.ws.send(
        JSON.stringify({ type: "chat", text, id, sentAt: Date.now() }),
      ).catch(() => {});
      this.#timer = setTimeout(tick, intervalMs);
    };
    this.#timer = setTimeout(tick, offsetMs);
  }

  /** Stops sending; resolves once the last message is handed to the network. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#sending;
  }

  /** Messages broadcast up to `finalSeq` that this bot hasn't received. */
  lost(finalSeq: number): number {
    if (this.joinSeq < 0) return 0;
    return Math.max(0, finalSeq - this.joinSeq - this.received);
  }

  /** A summary of what this bot saw, counting losses up to `finalSeq`. */
  report(finalSeq: number): BotReport {
    return {
      name: this.name,
      sent: this.sent,
      received: this.received,
      lost: this.lost(finalSeq),
      outOfOrder: this.outOfOrder,
    };
  }

  /** Closes the connection (1000) and waits for the reader to finish. */
  async close(): Promise<void> {
    await this.stop();
    await this.ws.close();
    await this.#reading;
  }
}
