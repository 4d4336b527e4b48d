/**
 * The chat demo's protocol: JSON text messages between the page (or a bot)
 * and the server, and the checks the server runs on every one it receives.
 *
 * Client → server:
 *
 * - `{"type":"hello","name":"alice"}` joins the chat (once per connection);
 * - `{"type":"chat","text":"hi","id":"m1","sentAt":123.4}` says something to
 *   everyone; `id` and `sentAt` come back unchanged in the broadcast so the
 *   sender can measure the round trip;
 * - `{"type":"ping","sentAt":123.4}` asks for a `pong` with the same `sentAt`.
 *
 * Server → client: `welcome` (the name given, which may carry a suffix when
 * the name was taken, the last sequence number and the compression
 * negotiated), `presence` (who is online, and who joined or left), `chat`
 * (with a sequence number, consecutive across the whole chat) and `pong`.
 *
 * @module
 */

/** Longest name, in characters (code points), after trimming. */
export const MAX_NAME_LENGTH = 24;
/** Longest chat text, in characters (code points). */
export const MAX_TEXT_LENGTH = 500;
/** Longest message id, in characters. */
export const MAX_ID_LENGTH = 64;
/**
 * Largest message the server reads, in bytes: room for the longest text
 * written with JSON escapes, far less than the library's 1 MiB default.
 */
export const MAX_MESSAGE_SIZE = 8 * 1024;

/** A message a client may send. */
export type ClientMessage =
  | { type: "hello"; name: string }
  | { type: "chat"; text: string; id: string; sentAt: number }
  | { type: "ping"; sentAt: number };

/** Who is online, sent to every connection when someone joins or leaves. */
export interface PresenceMessage {
  /** Always `"presence"`. */
  type: "presence";
  /** The members' names, sorted. */
  names: string[];
  /** Who just joined, if that is why this was sent. */
  joined?: string;
  /** Who just left, if that is why this was sent. */
  left?: string;
}

/** The answer to `hello`. */
export interface WelcomeMessage {
  /** Always `"welcome"`. */
  type: "welcome";
  /** The name given: the one asked for, with ` (2)`, ` (3)`… when it was taken. */
  name: string;
  /** Sequence number of the last chat message sent before this client joined. */
  seq: number;
  /** The extensions negotiated, e.g. `"permessage-deflate"`, or `null`. */
  compression: string | null;
}

/** A chat message as the server broadcasts it. */
export interface ChatMessage {
  /** Always `"chat"`. */
  type: "chat";
  /** 1 for the first message of the chat, then consecutive. */
  seq: number;
  /** The sender's name. */
  from: string;
  /** What they said. */
  text: string;
  /** The sender's id for this message, unchanged. */
  id: string;
  /** The sender's clock when sending, unchanged. */
  sentAt: number;
}

/** The result of {@linkcode parseClientMessage}. */
export type ParseResult =
  | { ok: true; message: ClientMessage }
  | { ok: false; reason: string };

// Control characters and the bidirectional overrides that could make a name
// or a line display as something else.
const FORBIDDEN = /[\p{Cc}\u202A-\u202E\u2066-\u2069]/u;

function characters(text: string): number {
  let count = 0;
  for (const _ of text) count++;
  return count;
}

function checkText(what: string, value: unknown, limit: number): string | undefined {
  if (typeof value !== "string") return `${what} must be a string`;
  const length = characters(value);
  if (length > limit) return `${what} is ${length} characters, the limit is ${limit}`;
  if (FORBIDDEN.test(value)) return `${what} contains control characters`;
  return undefined;
}

function fail(reason: string): ParseResult {
  return { ok: false, reason };
}

/**
 * Parses and checks one text message from a client. Never throws: anything
 * that isn't a well-formed message within the limits gives `ok: false` and
 * a short reason (under 123 bytes, so it fits in a close frame).
 *
 * @example
 * ```ts
 * import { parseClientMessage } from "./messages.ts";
 * console.log(parseClientMessage('{"type":"hello","name":" alice "}'));
 * // { ok: true, message: { type: "hello", name: "alice" } }
 * ```
 */
export function parseClientMessage(data: string): ParseResult {
  let value: unknown;
  try {
    value = JSON.parse(data);
  } catch {
    return fail("invalid JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return fail("a message must be a JSON object");
  }
  const message = value as Record<string, unknown>;
  switch (message.type) {
    case "hello": {
      const name = typeof message.name === "string" ? message.name.trim() : message.name;
      const problem = checkText("name", name, MAX_NAME_LENGTH);
      if (problem !== undefined) return fail(problem);
      if (name === "") return fail("name is empty");
      return { ok: true, message: { type: "hello", name: name as string } };
    }
    case "chat": {
      const problem = checkText("text", message.text, MAX_TEXT_LENGTH) ??
        checkText("id", message.id, MAX_ID_LENGTH);
      if (problem !== undefined) return fail(problem);
      const text = message.text as string;
      if (text.trim() === "") return fail("text is empty");
      if (!Number.isFinite(message.sentAt)) return fail("sentAt must be a finite number");
      return {
        ok: true,
        message: { type: "chat", text, id: message.id as string, sentAt: message.sentAt as number },
      };
    }
    case "ping":
      if (!Number.isFinite(message.sentAt)) return fail("sentAt must be a finite number");
      return { ok: true, message: { type: "ping", sentAt: message.sentAt as number } };
    default:
      return fail(
        typeof message.type === "string"
          ? `unknown message type ${JSON.stringify(message.type.slice(0, 24))}`
          : "type must be a string",
      );
  }
}
