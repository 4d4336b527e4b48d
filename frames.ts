/**
 * WebSocket frames (RFC 6455 §5): {@linkcode Opcode}, {@linkcode CloseCode},
 * {@linkcode Frame}, {@linkcode Close}, the incremental {@linkcode FrameReader}
 * and {@linkcode applyMask}.
 *
 * Nothing here touches I/O: bytes in, frames out, and back.
 *
 * @example
 * ```ts
 * import { Frame, FrameReader, Opcode } from "@denows/websockets/frames";
 * const bytes = new Frame(Opcode.TEXT, new TextEncoder().encode("hi")).serialize({ mask: true });
 * const reader = new FrameReader({ mask: true });
 * reader.feed(bytes);
 * const frame = reader.next()!;
 * console.log(frame.opcode === Opcode.TEXT, new TextDecoder().decode(frame.data)); // true hi
 * ```
 *
 * @module
 */

import { allocate, allocateOwn, EMPTY } from "./_bytes.ts";
import { PayloadTooBig, ProtocolError } from "./errors.ts";

/**
 * Opcode values for WebSocket frames (RFC 6455 §5.2).
 *
 * @example
 * ```ts
 * import { Opcode } from "@denows/websockets/frames";
 * console.log(Opcode.TEXT, Opcode.CLOSE); // 1 8
 * ```
 */
export const Opcode = {
  /** Continuation frame. */
  CONT: 0,
  /** Text frame (UTF-8 payload). */
  TEXT: 1,
  /** Binary frame. */
  BINARY: 2,
  /** Close frame. */
  CLOSE: 8,
  /** Ping frame. */
  PING: 9,
  /** Pong frame. */
  PONG: 10,
} as const;

/**
 * One of the {@linkcode Opcode} values.
 *
 * @example
 * ```ts
 * import { Opcode } from "@denows/websockets/frames";
 * const opcode: Opcode = Opcode.BINARY;
 * console.log(opcode); // 2
 * ```
 */
export type Opcode = (typeof Opcode)[keyof typeof Opcode];

const OPCODE_NAMES: Record<number, string> = {
  0: "CONT",
  1: "TEXT",
  2: "BINARY",
  8: "CLOSE",
  9: "PING",
  10: "PONG",
};

/**
 * Close codes (RFC 6455 §7.4.1 and the IANA "WebSocket Close Code Number"
 * registry).
 *
 * @example
 * ```ts
 * import { CloseCode } from "@denows/websockets/frames";
 * console.log(CloseCode.NORMAL_CLOSURE, CloseCode.MESSAGE_TOO_BIG); // 1000 1009
 * ```
 */
export const CloseCode = {
  /** 1000: the purpose of the connection was fulfilled. */
  NORMAL_CLOSURE: 1000,
  /** 1001: an endpoint is going away (server shutdown, page navigation). */
  GOING_AWAY: 1001,
  /** 1002: protocol error. */
  PROTOCOL_ERROR: 1002,
  /** 1003: a type of data that the endpoint cannot accept. */
  UNSUPPORTED_DATA: 1003,
  /** 1005: no status code was present (never sent on the wire). */
  NO_STATUS_RCVD: 1005,
  /** 1006: the connection closed without a close frame (never sent on the wire). */
  ABNORMAL_CLOSURE: 1006,
  /** 1007: data inconsistent with the message type, e.g. invalid UTF-8 in text. */
  INVALID_DATA: 1007,
  /** 1008: a message violates the endpoint's policy. */
  POLICY_VIOLATION: 1008,
  /** 1009: a message is too big to process. */
  MESSAGE_TOO_BIG: 1009,
  /** 1010: the client expected the server to negotiate an extension. */
  MANDATORY_EXTENSION: 1010,
  /** 1011: the server met an unexpected condition. */
  INTERNAL_ERROR: 1011,
  /** 1012: the service is restarting. */
  SERVICE_RESTART: 1012,
  /** 1013: try again later (temporary condition, e.g. overload). */
  TRY_AGAIN_LATER: 1013,
  /** 1014: a gateway received an invalid response. */
  BAD_GATEWAY: 1014,
  /** 1015: TLS handshake failure (never sent on the wire). */
  TLS_HANDSHAKE: 1015,
} as const;

const CLOSE_CODE_EXPLANATIONS: Record<number, string> = {
  [CloseCode.NORMAL_CLOSURE]: "OK",
  [CloseCode.GOING_AWAY]: "going away",
  [CloseCode.PROTOCOL_ERROR]: "protocol error",
  [CloseCode.UNSUPPORTED_DATA]: "unsupported data",
  [CloseCode.NO_STATUS_RCVD]: "no status received [internal]",
  [CloseCode.ABNORMAL_CLOSURE]: "abnormal closure [internal]",
  [CloseCode.INVALID_DATA]: "invalid frame payload data",
  [CloseCode.POLICY_VIOLATION]: "policy violation",
  [CloseCode.MESSAGE_TOO_BIG]: "message too big",
  [CloseCode.MANDATORY_EXTENSION]: "mandatory extension",
  [CloseCode.INTERNAL_ERROR]: "internal error",
  [CloseCode.SERVICE_RESTART]: "service restart",
  [CloseCode.TRY_AGAIN_LATER]: "try again later",
  [CloseCode.BAD_GATEWAY]: "bad gateway",
  [CloseCode.TLS_HANDSHAKE]: "TLS handshake failure [internal]",
};

/**
 * Whether `code` may appear in a close frame on the wire (RFC 6455 §7.4):
 * an integer in 1000–1003, 1007–1014 or 3000–4999.
 *
 * @example
 * ```ts
 * import { isValidCloseCode } from "@denows/websockets/frames";
 * console.log(isValidCloseCode(1000), isValidCloseCode(1005), isValidCloseCode(4000)); // true false true
 * ```
 */
export function isValidCloseCode(code: number): boolean {
  return Number.isInteger(code) &&
    ((code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
      (code >= 3000 && code <= 4999));
}

/** Options of the {@linkcode Frame} constructor: the header bits other than the opcode. */
export interface FrameOptions {
  /**
   * FIN bit: this is the final fragment of a message.
   *
   * @default {true}
   */
  fin?: boolean;
  /**
   * RSV1 bit (used by permessage-deflate).
   *
   * @default {false}
   */
  rsv1?: boolean;
  /**
   * RSV2 bit.
   *
   * @default {false}
   */
  rsv2?: boolean;
  /**
   * RSV3 bit.
   *
   * @default {false}
   */
  rsv3?: boolean;
}

/** Options of {@linkcode Frame.prototype.serialize}. */
export interface SerializeOptions {
  /** Whether to mask the payload: clients mask, servers don't. */
  mask: boolean;
  /**
   * Four bytes to mask with, when `mask` is `true`.
   *
   * @default {undefined} (a random key is drawn for each frame)
   */
  maskingKey?: Uint8Array;
}

/** Options of {@linkcode Frame.parse} and {@linkcode FrameReader}. */
export interface ParseOptions {
  /** Whether frames must be masked: `true` on a server (frames from clients), `false` on a client. */
  mask: boolean;
  /**
   * Largest payload accepted, in bytes, checked before allocating; a longer
   * frame throws `PayloadTooBig`.
   *
   * @default {Infinity} (no limit)
   */
  maxSize?: number;
  /**
   * Which RSV bits an extension allows, as a bit mask of the first header byte
   * (`0x40` = RSV1); a frame with another RSV bit set throws `ProtocolError`.
   *
   * @default {0} (no RSV bit allowed)
   */
  allowedRsv?: number;
}

const textDecoder = new TextDecoder("utf-8", { fatal: true });
const textEncoder = new TextEncoder();

/**
 * A WebSocket frame: only the opcode, the payload and the header bits. The
 * MASK bit, the payload length and the masking key are handled when parsing
 * and serializing.
 *
 * @example
 * ```ts
 * import { Frame, Opcode } from "@denows/websockets/frames";
 * const frame = new Frame(Opcode.BINARY, new Uint8Array([1, 2, 3]), { fin: false });
 * console.log(frame.serialize({ mask: false })); // Uint8Array(5) [ 2, 3, 1, 2, 3 ]
 * ```
 */
export class Frame {
  /** Opcode. */
  opcode: Opcode;
  /** Payload data. */
  data: Uint8Array;
  /** FIN bit. */
  fin: boolean;
  /** RSV1 bit. */
  rsv1: boolean;
  /** RSV2 bit. */
  rsv2: boolean;
  /** RSV3 bit. */
  rsv3: boolean;

  /** Creates a frame; `fin` defaults to `true` and the RSV bits to `false`. */
  constructor(opcode: Opcode, data: Uint8Array, options: FrameOptions = {}) {
    this.opcode = opcode;
    this.data = data;
    this.fin = options.fin ?? true;
    this.rsv1 = options.rsv1 ?? false;
    this.rsv2 = options.rsv2 ?? false;
    this.rsv3 = options.rsv3 ?? false;
  }

  /** Whether this is a control frame (close, ping or pong). */
  get isControl(): boolean {
    return this.opcode >= 8;
  }

  /**
   * Checks the rules every frame must follow: control frames are not
   * fragmented and carry at most 125 bytes. Throws {@linkcode ProtocolError}.
   */
  check(): void {
    if (this.opcode >= 8) {
      if (this.data.length > 125) throw new ProtocolError("control frame too long");
      if (!this.fin) throw new ProtocolError("fragmented control frame");
    }
  }

  /**
   * Serializes the frame with the minimal length encoding; a masked frame
   * gets a random key unless `maskingKey` (4 bytes, else a `RangeError`) is
   * given. Returns new bytes and never changes `data`.
   *
   * Speed: frames up to 1 KiB are written into views of a shared 16 KiB slab
   * (each view owns its bytes; the slab is never reused), because allocating
   * a small typed array costs more than serializing the frame.
   */
  serialize(options: SerializeOptions): Uint8Array {
    this.check();
    const data = this.data;
    const length = data.length;
    const mask = options.mask;
    const maskingKey = options.maskingKey;
    if (maskingKey !== undefined && maskingKey.length !== 4) {
      throw new RangeError(`masking key must be 4 bytes, got ${maskingKey.length}`);
    }
    const headerLength = frameHeaderLength(length, mask);
    // A masked payload lands at the same offset modulo 8 as `data`, so that
    // it can be masked while copied, a word at a time.
    const out = allocate(headerLength + length, mask ? (data.byteOffset - headerLength) & 7 : 0);
    writeHeader(out, 0, this, length, mask);
    if (mask) {
      const key = maskingKey === undefined ? nextMaskingKey() : packKey(maskingKey);
      writeKey(out, headerLength - 4, key);
      copyMasked(data, 0, out, headerLength, length, key);
    } else {
      out.set(data, headerLength);
    }
    return out;
  }

  /**
   * Parses exactly one complete frame from `bytes`, with the checks of
   * {@linkcode FrameReader}. Throws {@linkcode ProtocolError} when `bytes`
   * holds less or more than one frame. Unmasks in place.
   */
  static parse(bytes: Uint8Array, options: ParseOptions): Frame {
    const reader = new FrameReader(options);
    reader.feed(bytes);
    const frame = reader.next();
    if (frame === undefined) throw new ProtocolError("incomplete frame");
    if (reader.bufferedAmount !== 0) throw new ProtocolError("trailing data after frame");
    return frame;
  }

  /** A short human-readable description, for logs. */
  toString(): string {
    const name = OPCODE_NAMES[this.opcode] ?? String(this.opcode);
    const length = this.data.length;
    let preview = "";
    if (this.opcode === Opcode.TEXT || this.opcode === Opcode.CONT) {
      const head = this.data.subarray(0, 75);
      preview = new TextDecoder().decode(head);
      if (length > 75) preview += "…";
      preview = JSON.stringify(preview) + " ";
    } else if (this.opcode === Opcode.CLOSE) {
      try {
        preview = `${Close.parse(this.data)} `;
      } catch {
        preview = "";
      }
    }
    const fin = this.fin ? "" : ", continued";
    return `${name} ${preview}[${length} bytes${fin}]`;
  }
}

/**
 * Serializes only the header of an unmasked frame (the server side): for
 * sending a large payload as a separate chunk, without copying it.
 *
 * @example
 * ```ts
 * import { Frame, Opcode, serializeHeader } from "@denows/websockets/frames";
 * const frame = new Frame(Opcode.BINARY, new Uint8Array(70_000));
 * console.log(serializeHeader(frame)); // Uint8Array(10) [ 130, 127, 0, 0, 0, 0, 0, 1, 17, 112 ]
 * ```
 */
export function serializeHeader(frame: Frame): Uint8Array {
  frame.check();
  const length = frame.data.length;
  const out = new Uint8Array(frameHeaderLength(length, false));
  writeHeader(out, 0, frame, length, false);
  return out;
}

/**
 * Writes the header of `frame` for a payload of `length` bytes at `offset`
 * and returns the header length. The masking key, when `mask` is true, is the
 * caller's to write in the last four header bytes.
 */
function writeHeader(
  out: Uint8Array,
  offset: number,
  frame: Frame,
  length: number,
  mask: boolean,
): number {
  out[offset] = (frame.fin ? 0x80 : 0) | (frame.rsv1 ? 0x40 : 0) | (frame.rsv2 ? 0x20 : 0) |
    (frame.rsv3 ? 0x10 : 0) | frame.opcode;
  const maskBit = mask ? 0x80 : 0;
  if (length < 126) {
    out[offset + 1] = maskBit | length;
    return mask ? 6 : 2;
  }
  if (length < 65536) {
    out[offset + 1] = maskBit | 126;
    out[offset + 2] = length >>> 8;
    out[offset + 3] = length & 0xff;
    return mask ? 8 : 4;
  }
  out[offset + 1] = maskBit | 127;
  const high = Math.floor(length / 0x100000000);
  const low = length >>> 0;
  out[offset + 2] = high >>> 24;
  out[offset + 3] = (high >>> 16) & 0xff;
  out[offset + 4] = (high >>> 8) & 0xff;
  out[offset + 5] = high & 0xff;
  out[offset + 6] = low >>> 24;
  out[offset + 7] = (low >>> 16) & 0xff;
  out[offset + 8] = (low >>> 8) & 0xff;
  out[offset + 9] = low & 0xff;
  return mask ? 14 : 10;
}

/**
 * The length of the header that {@linkcode Frame.prototype.serialize} writes
 * for a payload of `length` bytes.
 *
 * @example
 * ```ts
 * import { frameHeaderLength } from "@denows/websockets/frames";
 * console.log(frameHeaderLength(5, false), frameHeaderLength(70000, true)); // 2 14
 * ```
 */
export function frameHeaderLength(length: number, mask: boolean): number {
  return (length < 126 ? 2 : length < 65536 ? 4 : 10) + (mask ? 4 : 0);
}

/**
 * Serializes an unmasked frame (the server side) into `out` at `offset`, and
 * returns the offset after it. Used to coalesce several frames into one
 * write buffer without an intermediate copy per frame; `out` must have
 * {@linkcode frameHeaderLength} + payload bytes free.
 *
 * @example
 * ```ts
 * import { Frame, frameHeaderLength, Opcode, serializeInto } from "@denows/websockets/frames";
 * const frame = new Frame(Opcode.PING, new Uint8Array(0));
 * const out = new Uint8Array(frameHeaderLength(0, false));
 * console.log(serializeInto(frame, out, 0, false), out); // 2 Uint8Array(2) [ 137, 0 ]
 * ```
 */
export function serializeInto(
  frame: Frame,
  out: Uint8Array,
  offset: number,
  mask: boolean,
): number {
  frame.check();
  const data = frame.data;
  const length = data.length;
  const start = offset + writeHeader(out, offset, frame, length, mask);
  if (mask) {
    const key = nextMaskingKey();
    writeKey(out, start - 4, key);
    copyMasked(data, 0, out, start, length, key);
  } else {
    out.set(data, start);
  }
  return start + length;
}

// Masking keys come from a pool filled 1 024 keys at a time, so that masking
// a small frame doesn't cost a call into the random number generator. Inside
// this module a key travels as a number: byte j of the key in bits 8j..8j+7.
const KEY_POOL_SIZE = 1024;
const keyPool = new Int32Array(KEY_POOL_SIZE);
let keyPoolIndex = KEY_POOL_SIZE;

function nextMaskingKey(): number {
  if (keyPoolIndex === KEY_POOL_SIZE) {
    crypto.getRandomValues(keyPool);
    keyPoolIndex = 0;
  }
  return keyPool[keyPoolIndex++];
}

function packKey(key: Uint8Array): number {
  return key[0] | (key[1] << 8) | (key[2] << 16) | (key[3] << 24);
}

function writeKey(out: Uint8Array, offset: number, key: number): void {
  out[offset] = key;
  out[offset + 1] = key >>> 8;
  out[offset + 2] = key >>> 16;
  out[offset + 3] = key >>> 24;
}

/**
 * Returns four bytes from a cryptographically secure source, suitable as a
 * masking key (RFC 6455 §5.3).
 *
 * @example
 * ```ts
 * import { randomMaskingKey } from "@denows/websockets/frames";
 * console.log(randomMaskingKey().length); // 4
 * ```
 */
export function randomMaskingKey(): Uint8Array {
  const key = new Uint8Array(4);
  writeKey(key, 0, nextMaskingKey());
  return key;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

// Below this many bytes, creating a typed array view costs more than it saves.
const WORDS_FROM = 96;
// From this many bytes, 64-bit words where they are fast. BigInt64Array
// arithmetic compiles to plain 64-bit operations in V8 (Deno, Node.js), where
// it halves the work of 32-bit words, but allocates per element in
// JavaScriptCore (Bun), where it is about 100 times slower: it is used only
// on runtimes known to run on V8.
const WIDE_FROM = 512;
const WIDE_WORDS = typeof navigator === "object" &&
  /^(Deno|Node\.js)\//.test(String(navigator?.userAgent));
// The 64-bit word: a 32-bit word twice, read as one BigInt.
const wideWordHalves = new Int32Array(2);
const wideWord = new BigInt64Array(wideWordHalves.buffer);

/** The packed `key` as seen `offset` bytes into the data: its byte 0 is `key`'s byte `offset & 3`. */
function rotateKey(key: number, offset: number): number {
  const shift = (offset & 3) << 3;
  return shift === 0 ? key : (key >>> shift) | (key << (32 - shift));
}

/** XORs `data[start..end)` with the packed `key` one byte at a time; byte 0 applies at `start`. */
function maskBytes(data: Uint8Array, start: number, end: number, key: number): void {
  const k0 = key & 0xff, k1 = (key >>> 8) & 0xff, k2 = (key >>> 16) & 0xff, k3 = key >>> 24;
  let i = start;
  for (; i + 3 < end; i += 4) {
    data[i] ^= k0;
    data[i + 1] ^= k1;
    data[i + 2] ^= k2;
    data[i + 3] ^= k3;
  }
  if (i < end) data[i++] ^= k0;
  if (i < end) data[i++] ^= k1;
  if (i < end) data[i] ^= k2;
}

/**
 * XORs `data[start..end)` in place with the packed `key`, whose byte 0
 * applies at `start`. The aligned middle goes a word at a time through a
 * typed array view of the same memory: no copy, no allocation beyond the view.
 */
function maskRange(data: Uint8Array, start: number, end: number, key: number): void {
  const length = end - start;
  if (length < WORDS_FROM) {
    maskBytes(data, start, end, key);
    return;
  }
  const wide = WIDE_WORDS && length >= WIDE_FROM;
  const align = wide ? 7 : 3;
  const prefix = (align + 1 - ((data.byteOffset + start) & align)) & align;
  maskBytes(data, start, start + prefix, key);
  // The key rotated to start at byte `prefix`, in the platform's byte order.
  let word = rotateKey(key, prefix);
  if (!LITTLE_ENDIAN) {
    word = (word << 24) | ((word & 0xff00) << 8) | ((word >>> 8) & 0xff00) | (word >>> 24);
  }
  const from = start + prefix;
  let done: number;
  if (wide) {
    wideWordHalves[0] = word;
    wideWordHalves[1] = word;
    const wordPair = wideWord[0];
    const count = (end - from) >>> 3;
    const view = new BigInt64Array(data.buffer, data.byteOffset + from, count);
    let w = 0;
    for (const unrolled = count & ~3; w < unrolled; w += 4) {
      view[w] ^= wordPair;
      view[w + 1] ^= wordPair;
      view[w + 2] ^= wordPair;
      view[w + 3] ^= wordPair;
    }
    for (; w < count; w++) view[w] ^= wordPair;
    done = count << 3;
  } else {
    const count = (end - from) >>> 2;
    const view = new Int32Array(data.buffer, data.byteOffset + from, count);
    let w = 0;
    for (const unrolled = count & ~3; w < unrolled; w += 4) {
      view[w] ^= word;
      view[w + 1] ^= word;
      view[w + 2] ^= word;
      view[w + 3] ^= word;
    }
    for (; w < count; w++) view[w] ^= word;
    done = count << 2;
  }
  // The tail, one byte at a time (`prefix + done` ≡ `prefix` modulo 4).
  maskBytes(data, from + done, end, rotateKey(key, prefix));
}

/**
 * Writes `source[sourceStart..+length)` XOR the packed `key` (byte 0 at
 * `sourceStart`) into `out` at `outStart`. In one pass, a word at a time, when
 * both sides have the same alignment; otherwise copied, then masked in place.
 */
function copyMasked(
  source: Uint8Array,
  sourceStart: number,
  out: Uint8Array,
  outStart: number,
  length: number,
  key: number,
): void {
  if (length < WORDS_FROM) {
    copyMaskedBytes(source, sourceStart, out, outStart, length, key);
    return;
  }
  const wide = WIDE_WORDS && length >= WIDE_FROM;
  const align = wide ? 7 : 3;
  const sourceAt = source.byteOffset + sourceStart;
  const outAt = out.byteOffset + outStart;
  if (((sourceAt ^ outAt) & align) !== 0) {
    out.set(source.subarray(sourceStart, sourceStart + length), outStart);
    maskRange(out, outStart, outStart + length, key);
    return;
  }
  const prefix = (align + 1 - (sourceAt & align)) & align;
  copyMaskedBytes(source, sourceStart, out, outStart, prefix, key);
  let word = rotateKey(key, prefix);
  if (!LITTLE_ENDIAN) {
    word = (word << 24) | ((word & 0xff00) << 8) | ((word >>> 8) & 0xff00) | (word >>> 24);
  }
  let done: number;
  if (wide) {
    wideWordHalves[0] = word;
    wideWordHalves[1] = word;
    const wordPair = wideWord[0];
    const count = (length - prefix) >>> 3;
    const from = new BigInt64Array(source.buffer, sourceAt + prefix, count);
    const to = new BigInt64Array(out.buffer, outAt + prefix, count);
    let w = 0;
    for (const unrolled = count & ~3; w < unrolled; w += 4) {
      to[w] = from[w] ^ wordPair;
      to[w + 1] = from[w + 1] ^ wordPair;
      to[w + 2] = from[w + 2] ^ wordPair;
      to[w + 3] = from[w + 3] ^ wordPair;
    }
    for (; w < count; w++) to[w] = from[w] ^ wordPair;
    done = prefix + (count << 3);
  } else {
    const count = (length - prefix) >>> 2;
    const from = new Int32Array(source.buffer, sourceAt + prefix, count);
    const to = new Int32Array(out.buffer, outAt + prefix, count);
    let w = 0;
    for (const unrolled = count & ~3; w < unrolled; w += 4) {
      to[w] = from[w] ^ word;
      to[w + 1] = from[w + 1] ^ word;
      to[w + 2] = from[w + 2] ^ word;
      to[w + 3] = from[w + 3] ^ word;
    }
    for (; w < count; w++) to[w] = from[w] ^ word;
    done = prefix + (count << 2);
  }
  copyMaskedBytes(
    source,
    sourceStart + done,
    out,
    outStart + done,
    length - done,
    rotateKey(key, prefix),
  );
}

/** `copyMasked` one byte at a time. */
function copyMaskedBytes(
  source: Uint8Array,
  sourceStart: number,
  out: Uint8Array,
  outStart: number,
  length: number,
  key: number,
): void {
  const k0 = key & 0xff, k1 = (key >>> 8) & 0xff, k2 = (key >>> 16) & 0xff, k3 = key >>> 24;
  const delta = outStart - sourceStart;
  const end = sourceStart + length;
  let i = sourceStart;
  for (; i + 3 < end; i += 4) {
    out[i + delta] = source[i] ^ k0;
    out[i + 1 + delta] = source[i + 1] ^ k1;
    out[i + 2 + delta] = source[i + 2] ^ k2;
    out[i + 3 + delta] = source[i + 3] ^ k3;
  }
  if (i < end) out[i + delta] = source[i++] ^ k0;
  if (i < end) out[i + delta] = source[i++] ^ k1;
  if (i < end) out[i + delta] = source[i] ^ k2;
}

/**
 * XORs `data` with the 4-byte masking `key`, in place (masking and
 * unmasking are the same operation). Works a word (32 bits, or 64 where the
 * engine makes that faster) at a time on the aligned middle of the buffer,
 * through a view of the same memory: no copy.
 *
 * @example
 * ```ts
 * import { applyMask } from "@denows/websockets/frames";
 * const data = new Uint8Array([1, 2, 3, 4, 5]);
 * applyMask(data, new Uint8Array([1, 1, 1, 1]));
 * console.log(data); // Uint8Array(5) [ 0, 3, 2, 5, 4 ]
 * ```
 */
export function applyMask(data: Uint8Array, key: Uint8Array): void {
  maskRange(data, 0, data.length, packKey(key));
}

/**
 * Incremental frame parser: feed it bytes as they arrive, in chunks of any
 * size, and pull complete frames with {@linkcode FrameReader.prototype.next}.
 *
 * Speed: a frame whose payload lies whole in a chunk is returned as a
 * `subarray` view of that chunk, unmasked in place; a payload that spans
 * chunks is copied once into a buffer of its declared length, allocated only
 * after that length was checked against `maxSize`, and unmasked as it fills;
 * a reader of a socket can have the rest of such a payload received straight
 * into that buffer ({@linkcode FrameReader.prototype.payloadSpace}), which
 * saves the copy.
 * A header split between chunks is gathered in a 14-byte scratch buffer, so
 * a chunk is never copied to join it to the previous one, and chunks fed
 * before `next()` is called are queued, never concatenated.
 *
 * `feed()` takes ownership of the chunk: payloads are unmasked in place.
 *
 * Checks, before any payload is read: opcode not reserved, RSV bits allowed,
 * MASK bit as expected, control frames not fragmented and at most 125 bytes
 * (all four from the first two bytes), the top bit of a 64-bit length clear
 * ({@linkcode ProtocolError}), and the declared length of a data frame within
 * `maxSize` ({@linkcode PayloadTooBig}).
 *
 * @example
 * ```ts
 * import { Frame, FrameReader, Opcode } from "@denows/websockets/frames";
 * const bytes = new Frame(Opcode.BINARY, new Uint8Array(300)).serialize({ mask: false });
 * const reader = new FrameReader({ mask: false, maxSize: 1024 });
 * reader.feed(bytes.subarray(0, 100)); // a partial frame: nothing yet
 * console.log(reader.next()); // undefined
 * reader.feed(bytes.slice(100));
 * console.log(reader.next()?.data.length); // 300
 * ```
 */
export class FrameReader {
  /** Whether incoming frames must be masked. */
  readonly mask: boolean;
  /** Largest data frame payload accepted, in bytes; may be lowered or raised between frames. */
  maxSize: number;
  /** RSV bits allowed by negotiated extensions (bit mask of the first header byte). */
  allowedRsv: number;

  // The chunk being read and the position of its first unread byte.
  #buffer: Uint8Array = EMPTY;
  #position = 0;
  // Chunks fed while #buffer still had unread bytes, oldest first (made on demand).
  #queue: Uint8Array[] | undefined;
  #queueHead = 0;
  #queued = 0;
  // The start of a header split between chunks, at most 14 bytes.
  #header: Uint8Array | undefined;
  #headerFilled = 0;
  // A frame whose header was read and whose payload is being copied in.
  #partial: Frame | undefined;
  #partialFilled = 0;
  #partialHeaderLength = 0;
  #partialKey = 0;

  /** Creates a reader; see {@linkcode ParseOptions}. */
  constructor(options: ParseOptions) {
    this.mask = options.mask;
    this.maxSize = options.maxSize ?? Infinity;
    this.allowedRsv = options.allowedRsv ?? 0;
  }

  /** Bytes received and not yet returned as part of a frame, headers of pending frames included. */
  get bufferedAmount(): number {
    const pending = this.#partial === undefined
      ? 0
      : this.#partialHeaderLength + this.#partialFilled;
    return this.#buffer.length - this.#position + this.#queued + this.#headerFilled + pending;
  }

  /**
   * The frame being read, once `next()` returned `undefined` in the middle
   * of its payload: its header is parsed, and the first
   * {@linkcode FrameReader.prototype.pendingFilled} bytes of its `data` have
   * arrived, already unmasked. `undefined` between frames. Lets a caller
   * look at a payload as it arrives (e.g. validate text) without waiting for
   * the whole frame; `next()` returns this same object once it is complete.
   *
   * @example
   * ```ts
   * import { Frame, FrameReader, Opcode } from "@denows/websockets/frames";
   * const bytes = new Frame(Opcode.TEXT, new TextEncoder().encode("hello")).serialize({ mask: true });
   * const reader = new FrameReader({ mask: true });
   * reader.feed(bytes.slice(0, 9)); // the header (6 bytes) and "hel"
   * reader.next();
   * const pending = reader.pending!;
   * console.log(new TextDecoder().decode(pending.data.subarray(0, reader.pendingFilled))); // hel
   * ```
   */
  get pending(): Frame | undefined {
    return this.#partial;
  }

  /** How many bytes of the payload of {@linkcode FrameReader.prototype.pending} have arrived. */
  get pendingFilled(): number {
    return this.#partialFilled;
  }

  /** Adds bytes received from the network. The reader owns `chunk` from now on. */
  feed(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    if (this.#position === this.#buffer.length && this.#queue === undefined) {
      this.#buffer = chunk;
      this.#position = 0;
    } else {
      (this.#queue ??= []).push(chunk);
      this.#queued += chunk.length;
    }
  }

  /**
   * Where the rest of a large frame's payload may be received directly,
   * without passing through a chunk: the unfilled end of the buffer of the
   * frame being read, when every byte fed so far was parsed and at least
   * `minimum` (and at least one) payload bytes are still to come; otherwise
   * `undefined`. Write the bytes received to its start and report them with
   * {@linkcode FrameReader.prototype.payloadReceived}; `next()` returns the
   * frame once it is full. (A masked payload is unmasked as reported.)
   *
   * @example
   * ```ts
   * import { Frame, FrameReader, Opcode } from "@denows/websockets/frames";
   * const bytes = new Frame(Opcode.BINARY, new Uint8Array(70000).fill(7)).serialize({ mask: true });
   * const reader = new FrameReader({ mask: true });
   * reader.feed(bytes.slice(0, 1000));
   * console.log(reader.next()); // undefined
   * const space = reader.payloadSpace(16384)!;
   * space.set(bytes.subarray(1000)); // as a socket read into it would
   * reader.payloadReceived(bytes.length - 1000);
   * console.log(reader.next()?.data.every((byte) => byte === 7)); // true
   * ```
   */
  payloadSpace(minimum: number): Uint8Array | undefined {
    const frame = this.#partial;
    if (
      frame === undefined || this.#position !== this.#buffer.length ||
      this.#queue !== undefined
    ) {
      return undefined;
    }
    const filled = this.#partialFilled;
    const rest = frame.data.length - filled;
    return rest === 0 || rest < minimum ? undefined : frame.data.subarray(filled);
  }

  /**
   * Reports that `count` bytes were written to the start of what
   * {@linkcode FrameReader.prototype.payloadSpace} returned last. Throws
   * `RangeError` when no frame is being read or `count` is more than its
   * payload still lacks.
   *
   * @example
   * ```ts
   * import { Frame, FrameReader, Opcode } from "@denows/websockets/frames";
   * const bytes = new Frame(Opcode.TEXT, new Uint8Array(20000)).serialize({ mask: false });
   * const reader = new FrameReader({ mask: false });
   * reader.feed(bytes.slice(0, 4)); // the header only
   * reader.next();
   * reader.payloadSpace(0)!.set(bytes.subarray(4, 10004));
   * reader.payloadReceived(10000);
   * console.log(reader.next(), reader.bufferedAmount); // undefined 10004
   * ```
   */
  payloadReceived(count: number): void {
    const frame = this.#partial;
    const filled = this.#partialFilled;
    if (frame === undefined || !(count >= 0 && count <= frame.data.length - filled)) {
      throw new RangeError(
        frame === undefined
          ? "no frame is being read"
          : `${count} bytes received, but the frame lacks only ${frame.data.length - filled}`,
      );
    }
    const key = this.#partialKey;
    if (key !== 0) maskRange(frame.data, filled, filled + count, rotateKey(key, filled));
    this.#partialFilled = filled + count;
  }

  /**
   * Returns the next complete frame, or `undefined` when more bytes are
   * needed. Throws {@linkcode ProtocolError} or {@linkcode PayloadTooBig}
   * when the next frame breaks a rule (again on every call: the reader is
   * unusable); frames before it were returned.
   */
  next(): Frame | undefined {
    if (this.#partial !== undefined) return this.#fillPartial();

    let buffer = this.#buffer;
    let position = this.#position;
    if (position === buffer.length && this.#headerFilled === 0) {
      // This chunk is used up: release it, and gather no header from nothing.
      if (!this.#advance()) return undefined;
      buffer = this.#buffer;
      position = this.#position;
    }
    const available = buffer.length - position;
    let header = buffer;
    let at = position;
    let headerLength = 0;
    if (this.#headerFilled === 0 && available >= 2) {
      headerLength = this.#checkStart(buffer[position], buffer[position + 1]);
    }
    if (headerLength !== 0 && available >= headerLength) {
      // The common case: the whole header in this chunk.
      position += headerLength;
    } else {
      if (!this.#gatherHeader()) return undefined;
      header = this.#header!;
      at = 0;
      headerLength = this.#headerFilled;
      buffer = this.#buffer;
      position = this.#position;
    }

    const first = header[at];
    const second = header[at + 1];
    const opcode = (first & 0x0f) as Opcode;
    let length = second & 0x7f;
    let keyAt = at + 2;
    if (length === 126) {
      length = (header[at + 2] << 8) | header[at + 3];
      keyAt += 2;
    } else if (length === 127) {
      const high = ((header[at + 2] << 24) | (header[at + 3] << 16) | (header[at + 4] << 8) |
        header[at + 5]) >>> 0;
      if (high >= 0x80000000) {
        throw new ProtocolError("invalid payload length: the most significant bit must be 0");
      }
      const low = ((header[at + 6] << 24) | (header[at + 7] << 16) | (header[at + 8] << 8) |
        header[at + 9]) >>> 0;
      length = high * 0x100000000 + low;
      keyAt += 8;
    }
    // Control frames (<= 125 bytes, checked above) don't count toward a message's size.
    if (opcode < 8 && length > this.maxSize) throw new PayloadTooBig(length, this.maxSize);
    const key = (second & 0x80) === 0 ? 0 : header[keyAt] | (header[keyAt + 1] << 8) |
      (header[keyAt + 2] << 16) | (header[keyAt + 3] << 24);
    const options = {
      fin: (first & 0x80) !== 0,
      rsv1: (first & 0x40) !== 0,
      rsv2: (first & 0x20) !== 0,
      rsv3: (first & 0x10) !== 0,
    };
    this.#headerFilled = 0;

    const end = position + length;
    if (end <= buffer.length) {
      // Whole in this chunk: a view, unmasked in place (a zero key changes nothing).
      if (key !== 0) maskRange(buffer, position, end, key);
      this.#position = end;
      return new Frame(opcode, buffer.subarray(position, end), options);
    }
    // Spans chunks: one buffer of the checked length, filled as bytes arrive.
    // A masked payload is placed at the same offset modulo 8 as in the chunk,
    // so that chunks whose lengths are multiples of 8 are unmasked while
    // copied, a word at a time.
    const phase = key === 0 ? 0 : (buffer.byteOffset + position) & 7;
    let data: Uint8Array;
    try {
      data = allocateOwn(length, phase);
    } catch {
      // Only without a limit (maxSize: Infinity) can a length be too big to allocate.
      throw new PayloadTooBig(length, this.maxSize, "is more than can be allocated");
    }
    this.#position = position;
    this.#partial = new Frame(opcode, data, options);
    this.#partialHeaderLength = headerLength;
    this.#partialKey = key;
    return this.#fillPartial();
  }

  /** Checks the first two bytes of a header and returns the header's length. */
  #checkStart(first: number, second: number): number {
    const opcode = first & 0x0f;
    if (opcode > 2 && (opcode < 8 || opcode > 10)) {
      throw new ProtocolError(`invalid opcode: ${opcode}`);
    }
    if ((first & 0x70 & ~this.allowedRsv) !== 0) {
      throw new ProtocolError("reserved bits must be 0");
    }
    const masked = (second & 0x80) !== 0;
    if (masked !== this.mask) {
      throw new ProtocolError(
        this.mask
          ? "incorrect masking: frame must be masked"
          : "incorrect masking: frame must not be masked",
      );
    }
    const length = second & 0x7f;
    if (opcode >= 8) {
      if ((first & 0x80) === 0) throw new ProtocolError("fragmented control frame");
      if (length > 125) throw new ProtocolError("control frame too long");
    }
    return (length < 126 ? 2 : length === 126 ? 4 : 10) + (masked ? 4 : 0);
  }

  /**
   * Copies the bytes of a header split between chunks into #header, moving
   * on through queued chunks; returns whether the header is complete.
   */
  #gatherHeader(): boolean {
    const header = this.#header ??= new Uint8Array(14);
    let filled = this.#headerFilled;
    let needed = filled < 2 ? 2 : this.#checkStart(header[0], header[1]);
    for (;;) {
      const buffer = this.#buffer;
      let position = this.#position;
      while (filled < needed && position < buffer.length) header[filled++] = buffer[position++];
      this.#position = position;
      this.#headerFilled = filled;
      if (filled === needed) {
        if (needed !== 2) return true;
        needed = this.#checkStart(header[0], header[1]);
        if (needed === 2) return true;
      } else if (!this.#advance()) {
        return false;
      }
    }
  }

  /** Copies available bytes into the pending frame; returns it once complete. */
  #fillPartial(): Frame | undefined {
    const frame = this.#partial!;
    const data = frame.data;
    const key = this.#partialKey;
    let filled = this.#partialFilled;
    for (;;) {
      const buffer = this.#buffer;
      const position = this.#position;
      const count = Math.min(buffer.length - position, data.length - filled);
      if (count > 0) {
        if (key === 0) {
          data.set(buffer.subarray(position, position + count), filled);
        } else {
          copyMasked(buffer, position, data, filled, count, rotateKey(key, filled));
        }
        filled += count;
        this.#position = position + count;
      }
      if (filled === data.length) break;
      if (!this.#advance()) {
        this.#partialFilled = filled;
        return undefined;
      }
    }
    this.#partial = undefined;
    this.#partialFilled = 0;
    this.#partialHeaderLength = 0;
    this.#partialKey = 0;
    return frame;
  }

  /** Moves to the next queued chunk; returns false (releasing the chunk read) when there is none. */
  #advance(): boolean {
    const queue = this.#queue;
    if (queue === undefined) {
      this.#buffer = EMPTY;
      this.#position = 0;
      return false;
    }
    const chunk = queue[this.#queueHead];
    queue[this.#queueHead++] = EMPTY;
    if (this.#queueHead === queue.length) {
      this.#queue = undefined;
      this.#queueHead = 0;
    }
    this.#queued -= chunk.length;
    this.#buffer = chunk;
    this.#position = 0;
    return true;
  }
}

/**
 * Code and reason of a close frame (RFC 6455 §5.5.1, §7.4).
 *
 * @example
 * ```ts
 * import { Close } from "@denows/websockets/frames";
 * const close = Close.parse(new Close(1001, "bye").serialize());
 * console.log(close.code, close.reason, `${close}`); // 1001 bye 1001 (going away) bye
 * ```
 */
export class Close {
  /** Close code. */
  code: number;
  /** Close reason. */
  reason: string;

  /** Creates a close frame payload; nothing is checked until `check()` / `serialize()`. */
  constructor(code: number, reason: string = "") {
    this.code = code;
    this.reason = reason;
  }

  /**
   * Parses the payload of a close frame. An empty payload means "no status"
   * (code 1005). Throws {@linkcode ProtocolError} for a 1-byte payload, an
   * invalid code or a payload over 125 bytes, and a `ProtocolError` with code
   * 1007 for a reason that isn't valid UTF-8.
   */
  static parse(data: Uint8Array): Close {
    if (data.length === 0) return new Close(CloseCode.NO_STATUS_RCVD, "");
    if (data.length === 1) throw new ProtocolError("close frame too short");
    if (data.length > 125) throw new ProtocolError("close frame too long");
    const code = (data[0] << 8) | data[1];
    let reason: string;
    try {
      reason = textDecoder.decode(data.subarray(2));
    } catch {
      throw new ProtocolError("invalid UTF-8 in close reason", CloseCode.INVALID_DATA);
    }
    const close = new Close(code, reason);
    close.check();
    return close;
  }

  /**
   * Checks that the code may be sent on the wire and that the payload fits
   * in 125 bytes. Throws {@linkcode ProtocolError}.
   */
  check(): void {
    if (!isValidCloseCode(this.code)) throw new ProtocolError(`invalid status code: ${this.code}`);
    if (2 + textEncoder.encode(this.reason).length > 125) {
      throw new ProtocolError("close reason too long: limit is 123 bytes of UTF-8");
    }
  }

  /**
   * Serializes the payload of a close frame. Code 1005 with no reason gives
   * an empty payload ("no status"); any other code is checked first.
   */
  serialize(): Uint8Array {
    if (this.code === CloseCode.NO_STATUS_RCVD && this.reason === "") return new Uint8Array(0);
    this.check();
    const reason = textEncoder.encode(this.reason);
    const out = new Uint8Array(2 + reason.length);
    out[0] = this.code >>> 8;
    out[1] = this.code & 0xff;
    out.set(reason, 2);
    return out;
  }

  /** `"1000 (OK) reason"`, for logs and error messages. */
  toString(): string {
    let explanation = CLOSE_CODE_EXPLANATIONS[this.code];
    if (explanation === undefined) {
      explanation = this.code >= 3000 && this.code < 4000
        ? "registered"
        : this.code >= 4000 && this.code < 5000
        ? "private use"
        : "unknown";
    }
    return this.reason
      ? `${this.code} (${explanation}) ${this.reason}`
      : `${this.code} (${explanation})`;
  }
}
