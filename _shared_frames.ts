/**
 * A message encoded once for many connections (what `broadcast()` queues):
 * {@linkcode SharedFrames}, and how a connection's extensions decide whether
 * it can share an encoding with others.
 *
 * @module
 */

import type { Extension } from "./extensions.ts";
import { Frame, Opcode } from "./frames.ts";

/**
 * A message encoded once for many connections by `broadcast()`: the bytes of
 * the serialized frame for each encoding key (`""` for connections without
 * an extension that changes the bytes), computed on demand.
 *
 * @example
 * ```ts
 * import type { SharedFrames } from "@denows/websockets";
 * const shared: SharedFrames = { text: true, data: new Uint8Array(0), cache: new Map() };
 * console.log(shared.text); // true
 * ```
 */
export interface SharedFrames {
  /** Whether the message is Text (else Binary). */
  readonly text: boolean;
  /** The message payload (UTF-8 for Text). */
  readonly data: Uint8Array;
  /** Serialized frames, by encoding key. */
  readonly cache: Map<string, Uint8Array>;
}

/**
 * The key under which connections with these extensions share one encoding
 * of a message, or `null` when an extension carries state between messages
 * (e.g. a compression context) and each message must be encoded for this
 * connection alone.
 */
export function sharedEncodingKey(extensions: readonly Extension[]): string | null {
  let key = "";
  for (const extension of extensions) {
    if (extension.encodeKey === undefined) return null;
    key += extension.encodeKey + "\n";
  }
  return key;
}

/**
 * The bytes of a shared message for connections with these extensions and
 * encoding `key` (from {@linkcode sharedEncodingKey}): encoded once per key,
 * and serialized without a mask.
 */
export function encodeShared(
  frames: SharedFrames,
  extensions: readonly Extension[],
  key: string | null,
): Uint8Array {
  if (key === null) return serializeShared(frames, extensions);
  let bytes = frames.cache.get(key);
  if (bytes === undefined) {
    bytes = serializeShared(frames, extensions);
    frames.cache.set(key, bytes);
  }
  return bytes;
}

function serializeShared(frames: SharedFrames, extensions: readonly Extension[]): Uint8Array {
  let frame = new Frame(frames.text ? Opcode.TEXT : Opcode.BINARY, frames.data);
  for (const extension of extensions) frame = extension.encode(frame);
  return frame.serialize({ mask: false });
}
