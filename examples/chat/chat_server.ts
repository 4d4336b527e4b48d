/**
 * The chat demo's server: one port serves the page over plain HTTP
 * (`processRequest`) and the chat over WebSocket at `/chat`, and every chat
 * message goes to every member with one `broadcast()`.
 *
 * @module
 */

import { broadcast } from "../../broadcast.ts";
import type { Request } from "../../http11.ts";
import { State } from "../../protocol.ts";
import { type HttpAnswer, serve, type Server, type ServerConnection } from "../../server.ts";
import {
  type ChatMessage,
  MAX_MESSAGE_SIZE,
  MAX_NAME_LENGTH,
  parseClientMessage,
  type PresenceMessage,
  type WelcomeMessage,
} from "./messages.ts";

/** Path of the WebSocket endpoint. */
export const CHAT_PATH = "/chat";

/** Options of {@linkcode ChatServer}. */
export interface ChatOptions {
  /** Interface to listen on. Default `"127.0.0.1"`. */
  hostname?: string;
  /** Port to listen on; 0 picks a free one. Default 8000. */
  port?: number;
  /** The HTML page served at `/`. */
  page: string;
  /**
   * A member with more than this many bytes waiting to be sent is closed
   * with 1013 (try again later) rather than buffering without bound.
   * Default 1 MiB.
   */
  maxBufferedAmount?: number;
}

/** Someone who said hello. */
export interface Member {
  /** The name given in the welcome message. */
  readonly name: string;
  /** The extensions negotiated with this member, e.g. `"permessage-deflate"`, or `null`. */
  readonly compression: string | null;
  /** The `User-Agent` of the handshake request, if any. */
  readonly userAgent: string | undefined;
}

/** Running totals, read by the status line. */
export interface ChatCounters {
  /** Open WebSocket connections (members or not). */
  connections: number;
  /** Chat messages accepted since the start. */
  messagesIn: number;
  /** Bytes of payload queued for the clients since the start (before compression). */
  bytesOut: number;
  /** The same bytes on the wire: after compression, with frame headers and handshakes. */
  wireBytesOut: number;
  /** The largest `bufferedAmount` among the connections, in bytes. */
  slowestBufferedAmount: number;
}

const encoder = new TextEncoder();

/** Cuts `reason` to the 123 bytes a close frame has room for, on a character boundary. */
function closeReason(reason: string): string {
  if (encoder.encode(reason).length <= 123) return reason;
  let cut = "";
  for (const character of reason) {
    if (encoder.encode(cut + character + "…").length > 123) break;
    cut += character;
  }
  return cut + "…";
}

/** The value of header `name`, or `undefined` when it is absent or repeated. */
function header(request: Request | undefined, name: string): string | undefined {
  try {
    return request?.headers.get(name);
  } catch {
    return undefined; // several values
  }
}

/**
 * A chat room on one port: `GET /` answers the page, `/chat` is the
 * WebSocket endpoint. Incoming messages are checked with
 * `parseClientMessage()`; a connection that sends anything else is closed
 * (1003 for binary, 1008 for the rest) and nobody else notices.
 *
 * @example
 * ```ts ignore
 * const chat = new ChatServer({ port: 0, page: "<!doctype html>…" });
 * console.log(`http://127.0.0.1:${chat.port}/`);
 * await chat.close();
 * ```
 */
export class ChatServer {
  /** The underlying WebSocket server. */
  readonly server: Server;
  /** The connections that said hello, with who they are. */
  readonly members: Map<ServerConnection, Member> = new Map();
  /** Sequence number of the last chat message broadcast (0 before any). */
  seq: number = 0;
  #messagesIn = 0;
  #chatOpen = true;
  readonly #page: string;
  readonly #maxBufferedAmount: number;
  readonly #memberConnections: Iterable<ServerConnection> = {
    [Symbol.iterator]: () => this.members.keys(),
  };

  /** Starts listening; see {@linkcode ChatOptions}. */
  constructor(options: ChatOptions) {
    this.#page = options.page;
    this.#maxBufferedAmount = options.maxBufferedAmount ?? 1024 * 1024;
    this.server = serve((ws) => this.#handle(ws), {
      hostname: options.hostname ?? "127.0.0.1",
      port: options.port ?? 8000,
      maxSize: MAX_MESSAGE_SIZE,
      pingInterval: 10_000,
      pingTimeout: 10_000,
      closeTimeout: 1_000,
      processRequest: (connection, request) => this.#route(connection, request),
    });
  }

  /** The port listened on. */
  get port(): number {
    return this.server.port;
  }

  /** Running totals for the status line, from the server's statistics. */
  counters(): ChatCounters {
    let slowest = 0;
    for (const connection of this.server.connections) {
      slowest = Math.max(slowest, connection.bufferedAmount);
    }
    const stats = this.server.stats();
    return {
      connections: stats.connections,
      messagesIn: this.#messagesIn,
      bytesOut: stats.bytesSent,
      wireBytesOut: stats.wireBytesSent,
      slowestBufferedAmount: slowest,
    };
  }

  /**
   * Stops accepting chat messages (they are dropped from now on), so that
   * `seq` is final while the clients catch up before shutting down.
   */
  stopChat(): void {
    this.#chatOpen = false;
  }

  /** Closes every connection with 1001 (going away) and stops listening. */
  close(): Promise<void> {
    this.#chatOpen = false;
    return this.server.close();
  }

  #route(connection: ServerConnection, request: Request): HttpAnswer {
    const path = request.path.split("?", 1)[0];
    if (path === CHAT_PATH) {
      // Browsers send Origin: accept only pages served from this host, so
      // another site can't open the chat in its visitors' name.
      const origin = header(request, "Origin");
      if (origin !== undefined) {
        let originHost: string | undefined;
        try {
          originHost = new URL(origin).host;
        } catch {
          originHost = undefined;
        }
        if (originHost === undefined || originHost !== header(request, "Host")) {
          return connection.respond(403, "Cross-origin WebSocket connections are not accepted.\n");
        }
      }
      return undefined; // go on with the WebSocket handshake
    }
    if (path === "/" || path === "/index.html") {
      return new Response(this.#page, {
        headers: {
          "Content-Type": "text/html; charset=utf-8",
          "Cache-Control": "no-store",
          "X-Content-Type-Options": "nosniff",
          "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; " +
            "style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        },
      });
    }
    return new Response("Not found\n", {
      status: 404,
      statusText: "Not Found",
      headers: { "Content-Type": "text/plain; charset=utf-8" },
    });
  }

  #send(connection: ServerConnection, message: object): void {
    if (connection.state !== State.OPEN) return;
    connection.send(JSON.stringify(message)).catch(() => {});
  }

  /** Broadcasts `message` (each connection counts what it was sent: see `counters()`). */
  #broadcast(connections: Iterable<ServerConnection>, message: object): void {
    broadcast(connections, JSON.stringify(message), { maxBufferedAmount: this.#maxBufferedAmount });
  }

  #presence(change: { joined?: string; left?: string }): void {
    const names = [...this.members.values()].map((member) => member.name)
      .sort((a, b) => a.localeCompare(b));
    const message: PresenceMessage = { type: "presence", names, ...change };
    // Everyone, members or not: a visitor sees who is online before joining.
    this.#broadcast(this.server.connections, message);
  }

  #uniqueName(wanted: string): string {
    const taken = new Set([...this.members.values()].map((member) => member.name));
    if (!taken.has(wanted)) return wanted;
    for (let n = 2;; n++) {
      const suffix = ` (${n})`;
      const base = [...wanted].slice(0, MAX_NAME_LENGTH - suffix.length).join("").trimEnd();
      if (!taken.has(base + suffix)) return base + suffix;
    }
  }

  async #handle(ws: ServerConnection): Promise<void> {
    let member: Member | undefined;
    // Newcomers see who is online at once.
    this.#send(ws, {
      type: "presence",
      names: [...this.members.values()].map((m) => m.name).sort((a, b) => a.localeCompare(b)),
    });
    try {
      for await (const data of ws) {
        if (typeof data !== "string") {
          await ws.close(1003, "binary messages are not supported");
          return;
        }
        const parsed = parseClientMessage(data);
        if (!parsed.ok) {
          await ws.close(1008, closeReason(parsed.reason));
          return;
        }
        const message = parsed.message;
        if (message.type === "ping") {
          this.#send(ws, { type: "pong", sentAt: message.sentAt });
        } else if (message.type === "hello") {
          if (member !== undefined) {
            await ws.close(1008, "already joined: hello is sent once per connection");
            return;
          }
          const names = ws.extensions.map((extension) => extension.name);
          member = {
            name: this.#uniqueName(message.name),
            compression: names.length > 0 ? names.join(", ") : null,
            userAgent: header(ws.request, "User-Agent"),
          };
          // The welcome is queued before any later chat message, so `seq`
          // tells the newcomer exactly which messages it will receive.
          const welcome: WelcomeMessage = {
            type: "welcome",
            name: member.name,
            seq: this.seq,
            compression: member.compression,
          };
          this.#send(ws, welcome);
          this.members.set(ws, member);
          this.#presence({ joined: member.name });
        } else {
          if (member === undefined) {
            await ws.close(1008, "say hello first: chat before joining");
            return;
          }
          if (!this.#chatOpen) continue; // shutting down
          this.#messagesIn++;
          const chat: ChatMessage = {
            type: "chat",
            seq: ++this.seq,
            from: member.name,
            text: message.text,
            id: message.id,
            sentAt: message.sentAt,
          };
          this.#broadcast(this.#memberConnections, chat);
        }
      }
    } finally {
      if (member !== undefined && this.members.delete(ws)) {
        this.#presence({ left: member.name });
      }
    }
  }
}
