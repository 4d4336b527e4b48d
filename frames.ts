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
  1000: "OK",
  1001: "going away",
  1002: "protocol error",
  1003: "unsupported data",
  1005: "no status received [internal]",
  1006: "abnormal closure [internal]",
  1007: "invalid frame payload data",
  1008: "policy violation",
  1009: "message too big",
  1010: "mandatory extension",
  1011: "internal error",
  1012: "service restart",
  1013: "try again later",
  1014: "bad gateway",
  1015: "TLS handshake failure [internal]",
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
  /** FIN bit: this is the final fragment of a message. Default `true`. */
  fin?: boolean;
  /** RSV1 bit (used by permessage-deflate). Default `false`. */
  rsv1?: boolean;
  /** RSV2 bit. Default `false`. */
  rsv2?: boolean;
  /** RSV3 bit. Default `false`. */
  rsv3?: boolean;
}

/** Options of {@linkcode Frame.prototype.serialize}. */
export interface SerializeOptions {
  /** Whether to mask the payload: clients mask, servers don't. */
  mask: boolean;
  /** Four bytes to mask with; a random key is drawn when absent. */
  maskingKey?: Uint8Array;
}

/** Options of {@linkcode Frame.parse} and {@linkcode FrameReader}. */
export interface ParseOptions {
  /** Whether frames must be masked: `true` on a server (frames from clients), `false` on a client. */
  mask: boolean;
  /** Largest payload accepted, in bytes, checked before allocating. Default: no limit. */
  maxSize?: number;
  /** Which RSV bits an extension allows, as a bit mask of the first header byte (`0x40` = RSV1). Default `0`. */
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
   * given. Returns a new buffer and never changes `data`.
   */
  serialize(options: SerializeOptions): Uint8Array {
    this.check();
    const maskingKey = options.maskingKey;
    if (maskingKey !== undefined && maskingKey.length !== 4) {
      throw new RangeError(`masking key must be 4 bytes, got ${maskingKey.length}`);
    }
    const length = this.data.length;
    const mask = options.mask;
    const headerLength = (length < 126 ? 2 : length < 65536 ? 4 : 10) + (mask ? 4 : 0);
    const out = new Uint8Array(headerLength + length);
    writeHeader(out, 0, this, length, mask);
    out.set(this.data, headerLength);
    if (mask) {
      const key = options.maskingKey ?? randomMaskingKey();
      out.set(key, headerLength - 4);
      applyMask(out.subarray(headerLength), key);
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
  const headerLength = writeHeader(out, offset, frame, data.length, mask);
  const start = offset + headerLength;
  out.set(data, start);
  if (mask) {
    const key = randomMaskingKey();
    out.set(key, start - 4);
    applyMask(out.subarray(start, start + data.length), key);
  }
  return start + data.length;
}

// Masking keys come from a pool filled 1 024 keys at a time, so that masking
// a small frame doesn't cost a call into the random number generator.
const KEY_POOL_SIZE = 4096;
const keyPool = new Uint8Array(KEY_POOL_SIZE);
let keyPoolOffset = KEY_POOL_SIZE;

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
  if (keyPoolOffset === KEY_POOL_SIZE) {
    crypto.getRandomValues(keyPool);
    keyPoolOffset = 0;
  }
  const key = keyPool.slice(keyPoolOffset, keyPoolOffset + 4);
  keyPoolOffset += 4;
  return key;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * XORs `data` with the 4-byte masking `key`, in place (masking and
 * unmasking are the same operation). Works 32 bits at a time on the aligned
 * middle of the buffer, so it allocates nothing and runs near memory speed.
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
  const length = data.length;
  const k0 = key[0], k1 = key[1], k2 = key[2], k3 = key[3];
  if (length < 32) {
    for (let i = 0; i < length; i++) data[i] ^= key[i & 3];
    return;
  }
  // Bytes before the first 4-byte boundary, one at a time.
  let i = (4 - (data.byteOffset & 3)) & 3;
  for (let j = 0; j < i; j++) data[j] ^= key[j & 3];
  // The aligned middle as 32-bit words: the key rotated to start at byte i.
  const a = key[i & 3], b = key[(i + 1) & 3], c = key[(i + 2) & 3], d = key[(i + 3) & 3];
  const word = LITTLE_ENDIAN
    ? (a | (b << 8) | (c << 16) | (d << 24))
    : ((a << 24) | (b << 16) | (c << 8) | d);
  const words = (length - i) >>> 2;
  const view = new Uint32Array(data.buffer, data.byteOffset + i, words);
  let w = 0;
  const unrolled = words & ~3;
  for (; w < unrolled; w += 4) {
    view[w] ^= word;
    view[w + 1] ^= word;
    view[w + 2] ^= word;
    view[w + 3] ^= word;
  }
  for (; w < words; w++) view[w] ^= word;
  i += words << 2;
  // The tail, one byte at a time.
  for (; i < length; i++) {
    data[i] ^= (i & 3) === 0 ? k0 : (i & 3) === 1 ? k1 : (i & 3) === 2 ? k2 : k3;
  }
}

const EMPTY = new Uint8Array(0);

/**
 * Incremental frame parser: feed it bytes as they arrive, in chunks of any
 * size, and pull complete frames with {@linkcode FrameReader.prototype.next}.
 *
 * Speed: a frame that lies whole in a chunk is returned as a `subarray` view
 * of that chunk, unmasked in place; a frame that spans chunks is copied once
 * into a buffer of its declared length, allocated only after that length was
 * checked against `maxSize`. Nothing is ever concatenated in a loop.
 *
 * `feed()` takes ownership of the chunk: payloads are unmasked in place.
 *
 * Checks, before any payload is read: opcode not reserved, RSV bits allowed,
 * MASK bit as expected, control frames not fragmented and at most 125 bytes,
 * the top bit of a 64-bit length clear ({@linkcode ProtocolError}), and the
 * declared length within `maxSize` ({@linkcode PayloadTooBig}).
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
  /** Largest payload accepted, in bytes; may be lowered or raised between frames. */
  maxSize: number;
  /** RSV bits allowed by negotiated extensions (bit mask of the first header byte). */
  allowedRsv: number;

  #buffer: Uint8Array = EMPTY;
  #position = 0;
  // A frame whose header was read and whose payload is being copied in.
  #partial: Frame | undefined;
  #partialFilled = 0;
  #partialKey: Uint8Array | undefined;

  /** Creates a reader; see {@linkcode ParseOptions}. */
  constructor(options: ParseOptions) {
    this.mask = options.mask;
    this.maxSize = options.maxSize ?? Infinity;
    this.allowedRsv = options.allowedRsv ?? 0;
  }

  /** Bytes received and not yet returned as part of a frame. */
  get bufferedAmount(): number {
    return this.#buffer.length - this.#position + this.#partialFilled;
  }

  /** Adds bytes received from the network. The reader owns `chunk` from now on. */
  feed(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    const left = this.#buffer.length - this.#position;
    if (left === 0) {
      this.#buffer = chunk;
    } else {
      // Only the start of a header (< 14 bytes) is left over when the caller
      // drains next() after every feed(), so this copy is small.
      const merged = new Uint8Array(left + chunk.length);
      merged.set(this.#buffer.subarray(this.#position));
      merged.set(chunk, left);
      this.#buffer = merged;
    }
    this.#position = 0;
  }

  /**
   * Returns the next complete frame, or `undefined` when more bytes are
   * needed. Throws {@linkcode ProtocolError} or {@linkcode PayloadTooBig}
   * when the next frame breaks a rule; frames before it were returned.
   */
  next(): Frame | undefined {
    const buffer = this.#buffer;
    let position = this.#position;
    const available = buffer.length - position;

    const partial = this.#partial;
    if (partial !== undefined) {
      const data = partial.data;
      const count = Math.min(available, data.length - this.#partialFilled);
      data.set(buffer.subarray(position, position + count), this.#partialFilled);
      this.#partialFilled += count;
      this.#position = position + count;
      if (this.#partialFilled < data.length) return undefined;
      if (this.#partialKey !== undefined) applyMask(data, this.#partialKey);
      this.#partial = undefined;
      this.#partialFilled = 0;
      this.#partialKey = undefined;
      return partial;
    }

    if (available < 2) return undefined;
    const first = buffer[position];
    const second = buffer[position + 1];
    const opcode = first & 0x0f;
    if (opcode > 2 && (opcode < 8 || opcode > 10)) {
      throw new ProtocolError(`invalid opcode: ${opcode}`);
    }
    const rsv = first & 0x70;
    if ((rsv & ~this.allowedRsv) !== 0) {
      throw new ProtocolError("reserved bits must be 0");
    }
    const fin = (first & 0x80) !== 0;
    const masked = (second & 0x80) !== 0;
    if (masked !== this.mask) {
      throw new ProtocolError(
        this.mask
          ? "incorrect masking: frame must be masked"
          : "incorrect masking: frame must not be masked",
      );
    }
    let length = second & 0x7f;
    if (opcode >= 8) {
      if (!fin) throw new ProtocolError("fragmented control frame");
      if (length > 125) throw new ProtocolError("control frame too long");
    }
    const headerLength = (length === 126 ? 4 : length === 127 ? 10 : 2) + (masked ? 4 : 0);
    if (available < headerLength) return undefined;
    position += 2;
    if (length === 126) {
      length = (buffer[position] << 8) | buffer[position + 1];
      position += 2;
    } else if (length === 127) {
      const high = ((buffer[position] << 24) | (buffer[position + 1] << 16) |
        (buffer[position + 2] << 8) | buffer[position + 3]) >>> 0;
      if (high >= 0x80000000) {
        throw new ProtocolError("invalid payload length: the most significant bit must be 0");
      }
      const low = ((buffer[position + 4] << 24) | (buffer[position + 5] << 16) |
        (buffer[position + 6] << 8) | buffer[position + 7]) >>> 0;
      length = high * 0x100000000 + low;
      position += 8;
    }
    // Control frames (<= 125 bytes, checked above) don't count toward a message's size.
    if (opcode < 8 && length > this.maxSize) throw new PayloadTooBig(length, this.maxSize);
    let key: Uint8Array | undefined;
    if (masked) {
      key = buffer.subarray(position, position + 4);
      position += 4;
    }
    const options = {
      fin,
      rsv1: (rsv & 0x40) !== 0,
      rsv2: (rsv & 0x20) !== 0,
      rsv3: (rsv & 0x10) !== 0,
    };
    if (buffer.length - position >= length) {
      // Whole in this chunk: a view, unmasked in place.
      const data = buffer.subarray(position, position + length);
      if (key !== undefined) applyMask(data, key);
      this.#position = position + length;
      return new Frame(opcode as Opcode, data, options);
    }
    // Spans chunks: one buffer of the checked length, filled as bytes arrive.
    const data = new Uint8Array(length);
    const count = buffer.length - position;
    data.set(buffer.subarray(position));
    this.#partial = new Frame(opcode as Opcode, data, options);
    this.#partialFilled = count;
    this.#partialKey = key?.slice();
    this.#buffer = EMPTY;
    this.#position = 0;
    return undefined;
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
