/**
 * Bytes: what counts as bytes (`isBytes`, `toBytes`), joining pieces into one buffer (`concat`,
 * `copyAll`) and the one slab that small buffers are cut from (`allocate`).
 * Runtime-neutral: the protocol core and the connections both use it.
 *
 * @module
 */

import { describeType } from "./_describe.ts";

/**
 * Bytes in any of their usual forms: `Uint8Array` (and Node's `Buffer`),
 * `ArrayBuffer`, `SharedArrayBuffer`, `DataView` or any other
 * `ArrayBufferView` (a `BufferSource`, whatever buffer backs it).
 *
 * @example
 * ```ts
 * import type { BinaryData } from "@denows/websockets";
 * const data: BinaryData = new DataView(new ArrayBuffer(4));
 * console.log(data.byteLength); // 4
 * ```
 */
export type BinaryData = ArrayBuffer | SharedArrayBuffer | ArrayBufferView;

/**
 * A `Uint8Array` view of `data` (no copy), or `TypeError` when `data` isn't
 * bytes.
 *
 * @example
 * ```ts
 * import { toBytes } from "@denows/websockets";
 * console.log(toBytes(new Uint16Array([1])).length); // 2
 * ```
 */
export function toBytes(data: BinaryData): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  if (isBytes(data)) return new Uint8Array(data as ArrayBuffer);
  throw new TypeError(`Cannot send: unsupported message type ${describeType(data)}`);
}

/**
 * Whether `value` is bytes that `send()` and `broadcast()` accept.
 *
 * @example
 * ```ts
 * import { isBytes } from "@denows/websockets";
 * console.log(isBytes(new ArrayBuffer(1)), isBytes("text")); // true false
 * ```
 */
export function isBytes(value: unknown): value is BinaryData {
  return value instanceof ArrayBuffer || ArrayBuffer.isView(value) ||
    (typeof SharedArrayBuffer !== "undefined" && value instanceof SharedArrayBuffer);
}

/** Copies `parts[0, count)` one after the other into `out`, from its start; returns `out`. */
export function copyAll(
  out: Uint8Array,
  parts: readonly Uint8Array[],
  count: number = parts.length,
): Uint8Array {
  let offset = 0;
  for (let i = 0; i < count; i++) {
    out.set(parts[i], offset);
    offset += parts[i].length;
  }
  return out;
}

/** No bytes: one empty array for every place that needs one. Never written to. */
export const EMPTY: Uint8Array = new Uint8Array(0);

/**
 * `parts` joined into new bytes with a buffer of their own (safe to hand to
 * users); `length`, when given, is their total length.
 */
export function concat(parts: readonly Uint8Array[], length?: number): Uint8Array {
  if (length === undefined) {
    length = 0;
    for (let i = 0; i < parts.length; i++) length += parts[i].length;
  }
  return copyAll(new Uint8Array(length), parts);
}

// Small buffers (serialized frames, joined writes) are views of a shared slab: allocating a
// typed array costs far more than a small frame's header and payload. Each view owns its bytes
// for good (the slab is never rewritten, so a write in flight keeps its bytes), and a new slab
// is zero-filled like any new buffer. Never hand a slab view to users: its `buffer` is shared.
const SLAB_SIZE = 16384;
/** The largest buffer cut from the slab; larger ones get a buffer of their own. */
export const SLAB_MAX = 1024;
let slab = new Uint8Array(SLAB_SIZE);
let slabOffset = 0;

/**
 * New zero-filled bytes with a buffer of their own (safe to hand to users),
 * whose `byteOffset` is `phase` (0 to 7).
 */
export function allocateOwn(length: number, phase: number): Uint8Array {
  return phase === 0 ? new Uint8Array(length) : new Uint8Array(length + phase).subarray(phase);
}

/** New zero-filled bytes whose `byteOffset` is `phase` (0 to 7) modulo 8: a slab view when small. */
export function allocate(length: number, phase: number): Uint8Array {
  if (length > SLAB_MAX) return allocateOwn(length, phase);
  // (A slab whose buffer was transferred away has length 0: replaced too.)
  if (slabOffset + phase + length > slab.length) {
    slab = new Uint8Array(SLAB_SIZE);
    slabOffset = 0;
  }
  const start = slabOffset + phase;
  // The next view starts on an 8-byte boundary.
  slabOffset = (start + length + 7) & ~7;
  return slab.subarray(start, start + length);
}

/**
 * The length of `text` in UTF-8 bytes, without encoding it (a lone surrogate
 * counts 3, the length of the U+FFFD it becomes).
 */
export function utf8Length(text: string): number {
  const units = text.length;
  let bytes = units;
  for (let i = 0; i < units; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x80) continue;
    if (code < 0x800) bytes += 1;
    else if (code >= 0xd800 && code <= 0xdbff && i + 1 < units) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 2; // 4 bytes for 2 code units
        i++;
      } else {
        bytes += 2;
      }
    } else bytes += 2;
  }
  return bytes;
}
