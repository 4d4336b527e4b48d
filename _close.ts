/**
 * Rules about closing that every side and every runtime path shares: what
 * counts as a normal closure, the error that reports a close, and how a
 * close reason is cut to fit a close frame. Runtime-neutral.
 *
 * @module
 */

import { type ConnectionClosed, ConnectionClosedError, ConnectionClosedOK } from "./errors.ts";
import { type Close, CloseCode } from "./frames.ts";

/**
 * Whether the closing handshake ended normally: close frames were both
 * received and sent, each with 1000 (normal closure), 1001 (going away) or
 * no status. It is what `ConnectionClosedOK` stands for, and what ends an
 * iteration over a connection without an error.
 */
export function isNormalClosure(rcvd: Close | undefined, sent: Close | undefined): boolean {
  return rcvd !== undefined && sent !== undefined && isNormalCode(rcvd.code) &&
    isNormalCode(sent.code);
}

function isNormalCode(code: number): boolean {
  return code === CloseCode.NORMAL_CLOSURE || code === CloseCode.GOING_AWAY ||
    code === CloseCode.NO_STATUS_RCVD;
}

/**
 * The error to throw for a closed connection: `ConnectionClosedOK` after a
 * normal closure (see {@linkcode isNormalClosure}), `ConnectionClosedError`
 * otherwise, with `cause` (the failure that closed it) when there is one.
 */
export function closeError(
  rcvd: Close | undefined,
  sent: Close | undefined,
  rcvdThenSent: boolean | undefined,
  cause: Error | undefined,
): ConnectionClosed {
  const options = cause === undefined ? undefined : { cause };
  return isNormalClosure(rcvd, sent)
    ? new ConnectionClosedOK(rcvd, sent, rcvdThenSent, options)
    : new ConnectionClosedError(rcvd, sent, rcvdThenSent, options);
}

/** The most bytes of UTF-8 a close reason can have: a close frame's 125 less the code's 2. */
export const MAX_REASON_BYTES = 123;
const ELLIPSIS = "...";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * `reason` as it fits in a close frame: unchanged when its UTF-8 is at most
 * 123 bytes, else cut at a character boundary and ended with `"..."`, 123
 * bytes at most in all. Never cuts a character (a code point) in two.
 */
export function truncateReason(reason: string): string {
  // A string longer than this many UTF-16 units can't fit (each unit is 1 to 3 bytes).
  if (reason.length <= MAX_REASON_BYTES / 3) return reason;
  const bytes = encoder.encode(reason);
  if (bytes.length <= MAX_REASON_BYTES) return reason;
  let end = MAX_REASON_BYTES - ELLIPSIS.length;
  // Back to the first byte of the character that byte `end` belongs to (10xxxxxx continues one).
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--;
  return decoder.decode(bytes.subarray(0, end)) + ELLIPSIS;
}
