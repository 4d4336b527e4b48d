/**
 * The permessage-deflate extension (RFC 7692): negotiation on both sides
 * ({@linkcode ClientPerMessageDeflateFactory},
 * {@linkcode ServerPerMessageDeflateFactory}) and the codec
 * ({@linkcode PerMessageDeflate}), on top of the runtime's `node:zlib`.
 *
 * Behaviour worth knowing:
 *
 * - **Invalid compressed data** fails the connection with close code 1007
 *   (invalid frame payload data): a `ProtocolError` with `code` 1007. RSV1 on
 *   a continuation or control frame is a plain protocol error (1002).
 * - **Decompression bombs**: the decompressed size of a message counts against
 *   the `maxSize` allowance *while* inflating, in output chunks of at most
 *   64 KiB; inflating stops with `PayloadTooBig` as soon as the output passes
 *   the allowance, so a small frame that would inflate to gigabytes never
 *   allocates much more than `maxSize`.
 * - **Data after the end of the deflate stream**: a peer may end a message
 *   with a block that has BFINAL set (RFC 7692 §7.2.3.4); the rest of that
 *   message is ignored and the next message starts a new stream.
 * - **8-bit windows**: zlib cannot set up a raw compressor with an 8-bit
 *   window, so when `max_window_bits=8` is negotiated (a server accepting an
 *   offer with `server_max_window_bits=8`, a client told
 *   `client_max_window_bits=8`) this module compresses with a 9-bit window.
 *   That keeps the promise: zlib never emits a match farther back than its
 *   window minus 262 bytes, 250 bytes for a 9-bit window, which is within
 *   the 256 bytes a peer with an 8-bit window keeps. Decompressing is fine
 *   with any window: the decompressor always uses at least 9 bits.
 * - **Memory**: zlib state lives outside the JavaScript heap. It is taken
 *   from a small pool when a message needs it and given back when the
 *   message ends if there is no context takeover, so such a connection holds
 *   no zlib memory between messages. With context takeover the state is kept
 *   for the connection; {@linkcode PerMessageDeflate.prototype.close} gives
 *   it back (it is also given back when the extension is garbage-collected).
 *
 * Measured with Deno 2.9.6 (zlib 1.3.1) on Linux x86-64: extra RSS per
 * connection after compressing and decompressing one 4 KiB JSON message,
 * over 1 000 connections (each side measured in its own process):
 *
 * | negotiated | server | client |
 * | --- | --- | --- |
 * | context takeover, windows 15 (zlib's defaults) | 246 KiB | 246 KiB |
 * | context takeover, windows 12 | 185 KiB | 185 KiB |
 * | `server_no_context_takeover; client_max_window_bits=12` (the defaults) | 23 KiB | 171 KiB |
 * | no context takeover both ways | 6 KiB | 6 KiB |
 *
 * The compressor is the expensive part: about 150 KiB even with small
 * windows, and `memLevel` barely changes it (this zlib hashes with a fixed
 * table size); the decompressor costs its window plus about 10 KiB. Context
 * takeover pays off for short messages: 1 000 chat messages of 107 bytes on
 * average compress to 15% of their size with it and to 87% without it,
 * while a 4 KiB message compresses to 17% either way.
 *
 * Hence the defaults ({@linkcode defaultServerExtensions},
 * {@linkcode defaultClientExtensions}): a server compresses without context
 * takeover (no compressor per connection, and `broadcast()` compresses a
 * message once for all connections; messages under 128 bytes are sent as
 * they are since they would barely shrink) and asks clients for a 4 KiB
 * window (`client_max_window_bits=12`) so that its decompressors stay small;
 * a client, which has few connections, keeps context takeover and
 * compresses every message.
 *
 * @example
 * ```ts
 * import { PerMessageDeflate } from "@denows/websockets/permessage-deflate";
 * import { Frame, Opcode } from "@denows/websockets/frames";
 *
 * const options = {
 *   remoteNoContextTakeover: false,
 *   localNoContextTakeover: false,
 *   remoteMaxWindowBits: 15,
 *   localMaxWindowBits: 15,
 *   threshold: 0,
 * };
 * const sender = new PerMessageDeflate(options);
 * const receiver = new PerMessageDeflate(options);
 * const frame = sender.encode(new Frame(Opcode.TEXT, new TextEncoder().encode("Hello")));
 * console.log(frame.rsv1, frame.data); // true Uint8Array(7) [ 242, 72, 205, 201, 201, 7, 0 ]
 * console.log(new TextDecoder().decode(receiver.decode(frame).data)); // Hello
 * ```
 *
 * @module
 */

import zlib from "node:zlib";
import { NegotiationError, PayloadTooBig, ProtocolError } from "./errors.ts";
import { DuplicateParameter, InvalidParameterName, InvalidParameterValue } from "./errors.ts";
import type {
  ClientExtensionFactory,
  DecodeOptions,
  EncodeOptions,
  Extension,
  ExtensionParameter,
  ServerExtensionFactory,
} from "./extensions.ts";
import { CloseCode, Frame, Opcode } from "./frames.ts";

const NAME = "permessage-deflate";

/** Z_SYNC_FLUSH: every call ends on a byte boundary with an empty stored block. */
const Z_SYNC_FLUSH = 2;

/** The empty stored block that a sync flush ends with (RFC 7692 §7.2.1). */
const TAIL = new Uint8Array([0x00, 0x00, 0xff, 0xff]);

/** Output chunk size: bounds what one call into zlib may produce. */
const CHUNK = 64 * 1024;

/**
 * One output buffer reused by every codec: zlib calls are synchronous, so no
 * two of them overlap. The exact output is copied out of it, which keeps
 * short messages from pinning a 64 KiB buffer.
 */
const SCRATCH = new Uint8Array(CHUNK);

const DEFAULT_THRESHOLD_NO_CONTEXT_TAKEOVER = 128;
const DEFAULT_MEM_LEVEL = 8;
const DEFAULT_LEVEL = 6;

// ---------------------------------------------------------------------------
// zlib access

/** The internals of a `node:zlib` stream this module drives synchronously. */
interface ZlibHandle {
  onerror: ((message: string, errno: number) => void) | undefined;
  writeSync(
    flush: number,
    input: Uint8Array,
    inOffset: number,
    inLength: number,
    output: Uint8Array,
    outOffset: number,
    outLength: number,
  ): void;
  reset(): void;
  close(): void;
}

interface ZlibStreamInternals {
  _handle?: ZlibHandle;
  _writeState?: Uint32Array;
}

/**
 * A raw deflate or inflate stream driven synchronously, keeping its state
 * from one call to the next (which `zlib.deflateRawSync` can't do).
 */
class ZlibCodec {
  readonly key: string;
  #handle: ZlibHandle;
  #state: Uint32Array;
  #error: string | undefined;

  constructor(key: string, stream: unknown) {
    const internals = stream as ZlibStreamInternals;
    const handle = internals._handle;
    const state = internals._writeState;
    if (
      handle === undefined || typeof handle.writeSync !== "function" ||
      typeof handle.reset !== "function" || typeof handle.close !== "function" ||
      !(state instanceof Uint32Array)
    ) {
      throw new TypeError(
        "Cannot use permessage-deflate: this runtime's node:zlib has no synchronous stream handle",
      );
    }
    this.key = key;
    this.#handle = handle;
    this.#state = state;
    // With an error callback installed, zlib reports errors synchronously.
    handle.onerror = (message: string) => {
      this.#error = message;
    };
  }

  /**
   * Runs zlib with Z_SYNC_FLUSH; returns an error message when the data is
   * invalid. `availOut` and `availIn` then tell what is left.
   */
  write(
    input: Uint8Array,
    inOffset: number,
    inLength: number,
    output: Uint8Array,
    outOffset: number,
    outLength: number,
  ): string | undefined {
    this.#error = undefined;
    this.#handle.writeSync(Z_SYNC_FLUSH, input, inOffset, inLength, output, outOffset, outLength);
    return this.#error;
  }

  /** Output space left after the last `write`. */
  get availOut(): number {
    return this.#state[0];
  }

  /** Input left after the last `write`. */
  get availIn(): number {
    return this.#state[1];
  }

  reset(): void {
    this.#handle.reset();
  }

  close(): void {
    this.#handle.close();
  }
}

/** Idle codecs by key, reset and ready; a few per key, the rest are closed. */
const idleCodecs = new Map<string, ZlibCodec[]>();
const MAX_IDLE_PER_KEY = 4;

function acquireDeflater(windowBits: number, memLevel: number, level: number): ZlibCodec {
  const key = `deflate:${windowBits}:${memLevel}:${level}`;
  return idleCodecs.get(key)?.pop() ?? new ZlibCodec(
    key,
    zlib.createDeflateRaw({ windowBits, memLevel, level, chunkSize: zlib.constants.Z_MIN_CHUNK }),
  );
}

function acquireInflater(windowBits: number): ZlibCodec {
  const key = `inflate:${windowBits}`;
  return idleCodecs.get(key)?.pop() ??
    new ZlibCodec(
      key,
      zlib.createInflateRaw({ windowBits, chunkSize: zlib.constants.Z_MIN_CHUNK }),
    );
}

/** Resets a codec and keeps it for reuse, or closes it when enough are idle. */
function releaseCodec(codec: ZlibCodec): void {
  let idle = idleCodecs.get(codec.key);
  if (idle === undefined) idleCodecs.set(codec.key, idle = []);
  if (idle.length < MAX_IDLE_PER_KEY) {
    codec.reset();
    idle.push(codec);
  } else {
    codec.close();
  }
}

/** Codecs an extension holds; separate from it so they can be released after it is collected. */
interface CodecSlots {
  deflater: ZlibCodec | undefined;
  inflater: ZlibCodec | undefined;
}

function releaseSlots(slots: CodecSlots): void {
  if (slots.deflater !== undefined) releaseCodec(slots.deflater);
  if (slots.inflater !== undefined) releaseCodec(slots.inflater);
  slots.deflater = slots.inflater = undefined;
}

const slotsRegistry = new FinalizationRegistry<CodecSlots>(releaseSlots);

/** Joins `parts` then `last[0, lastLength)` into one array of `length` bytes at most. */
function join(
  parts: Uint8Array[],
  last: Uint8Array,
  lastLength: number,
  length: number,
): Uint8Array {
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    const n = Math.min(part.length, length - offset);
    out.set(n === part.length ? part : part.subarray(0, n), offset);
    offset += n;
  }
  out.set(last.subarray(0, Math.min(lastLength, length - offset)), offset);
  return out;
}

/** Compresses `data` with a sync flush; drops the `00 00 ff ff` tail when `final`. */
function deflate(codec: ZlibCodec, data: Uint8Array, final: boolean): Uint8Array {
  const parts: Uint8Array[] = [];
  let out = SCRATCH;
  let total = 0;
  let inOffset = 0;
  let inLength = data.length;
  for (;;) {
    const error = codec.write(data, inOffset, inLength, out, 0, out.length);
    if (error !== undefined) throw new TypeError(`Cannot compress message: zlib failed: ${error}`);
    const produced = out.length - codec.availOut;
    total += produced;
    inOffset += inLength - codec.availIn;
    inLength = codec.availIn;
    if (codec.availOut !== 0) {
      if (total === 0) {
        // Nothing new since the last flush: zlib adds no empty block, so the
        // final fragment carries the header byte of one (RFC 7692 §7.2.3.6).
        return final ? new Uint8Array(1) : new Uint8Array(0);
      }
      // A sync flush that wrote anything ends with the tail.
      const length = final ? total - TAIL.length : total;
      return parts.length === 0 ? out.slice(0, length) : join(parts, out, produced, length);
    }
    // The output buffer is full: keep it and give zlib a fresh one.
    parts.push(out === SCRATCH ? SCRATCH.slice() : out);
    out = new Uint8Array(CHUNK);
  }
}

/** State of inflating one message. */
interface InflateRun {
  parts: Uint8Array[];
  out: Uint8Array;
  used: number;
  size: number;
  maxSize: number;
  /** The deflate stream ended (a block with BFINAL): ignore the rest of the message. */
  ended: boolean;
}

/**
 * Feeds `input` to the inflater, writing into `run`; throws `PayloadTooBig`
 * as soon as the output passes `run.maxSize`: zlib is never given more room
 * than the allowance plus one byte, so the limit bounds the memory used.
 */
function inflateInto(codec: ZlibCodec, input: Uint8Array, run: InflateRun): void {
  let inOffset = 0;
  let inLength = input.length;
  while (!run.ended) {
    if (run.used === run.out.length) {
      run.parts.push(run.out === SCRATCH ? SCRATCH.slice() : run.out);
      run.out = new Uint8Array(CHUNK);
      run.used = 0;
    }
    const room = Math.min(run.out.length - run.used, run.maxSize - run.size + 1);
    const error = codec.write(input, inOffset, inLength, run.out, run.used, room);
    if (error !== undefined) {
      throw new ProtocolError(`invalid compressed data: ${error}`, CloseCode.INVALID_DATA);
    }
    const produced = room - codec.availOut;
    run.used += produced;
    run.size += produced;
    if (run.size > run.maxSize) throw new PayloadTooBig(run.size, run.maxSize);
    inOffset += inLength - codec.availIn;
    inLength = codec.availIn;
    if (codec.availOut !== 0) {
      // Room left: either all input is consumed or the stream has ended.
      if (inLength !== 0) run.ended = true;
      return;
    }
  }
}

// ---------------------------------------------------------------------------
// The extension

function checkWindowBits(name: string, value: number, min: number): void {
  if (!Number.isInteger(value) || value < min || value > 15) {
    const why = min === 9 ? " (zlib cannot compress with an 8-bit window)" : "";
    throw new RangeError(`${name} must be an integer from ${min} to 15${why}: ${value}`);
  }
}

function checkCodecOptions(options: DeflateCodecOptions): void {
  const { threshold, memLevel, level } = options;
  if (threshold !== undefined && !(Number.isInteger(threshold) && threshold >= 0)) {
    throw new RangeError(`threshold must be a non-negative integer: ${threshold}`);
  }
  if (memLevel !== undefined && !(Number.isInteger(memLevel) && memLevel >= 1 && memLevel <= 9)) {
    throw new RangeError(`memLevel must be an integer from 1 to 9: ${memLevel}`);
  }
  if (level !== undefined && !(Number.isInteger(level) && level >= -1 && level <= 9)) {
    throw new RangeError(`level must be an integer from -1 to 9: ${level}`);
  }
}

/**
 * Tuning of the compressor, shared by the extension and both factories.
 *
 * @example
 * ```ts
 * import type { DeflateCodecOptions } from "@denows/websockets/permessage-deflate";
 * const fast: DeflateCodecOptions = { level: 1, threshold: 256 };
 * console.log(fast.level); // 1
 * ```
 */
export interface DeflateCodecOptions {
  /**
   * Messages whose first frame carries fewer bytes are sent uncompressed. The
   * default depends on the compressor: 128 bytes when it is reset after each
   * message (a shorter message then barely shrinks, if at all), 0 with context
   * takeover (short messages that repeat earlier ones shrink a lot).
   *
   * @default {128} without context takeover, {0} with it
   */
  threshold?: number;
  /**
   * zlib memory level, 1–9.
   *
   * @default {8} (zlib's default)
   */
  memLevel?: number;
  /**
   * zlib compression level, -1–9 (0: none, 1: fastest, 9: smallest, -1: zlib's
   * default, 6).
   *
   * @default {6}
   */
  level?: number;
}

/**
 * Parameters of a negotiated {@linkcode PerMessageDeflate}, from this
 * endpoint's point of view ("local" compresses, "remote" is the peer's
 * compressor, which this endpoint decompresses).
 *
 * @example
 * ```ts
 * import type { PerMessageDeflateOptions } from "@denows/websockets/permessage-deflate";
 * const options: PerMessageDeflateOptions = {
 *   remoteNoContextTakeover: false,
 *   localNoContextTakeover: true,
 *   remoteMaxWindowBits: 12,
 *   localMaxWindowBits: 15,
 * };
 * console.log(options.localNoContextTakeover); // true
 * ```
 */
export interface PerMessageDeflateOptions extends DeflateCodecOptions {
  /** The peer resets its compressor after each message: the decompressor is reset too. */
  remoteNoContextTakeover: boolean;
  /** Reset the compressor after each message. */
  localNoContextTakeover: boolean;
  /** The peer's LZ77 window, 8–15 bits. */
  remoteMaxWindowBits: number;
  /** This endpoint's LZ77 window, 9–15 bits (zlib cannot compress with 8). */
  localMaxWindowBits: number;
}

/** Message states of each direction: between messages, inside an uncompressed or compressed one. */
const NONE = 0;
const PLAIN = 1;
const COMPRESSED = 2;

/**
 * The permessage-deflate extension on one connection (RFC 7692): compresses
 * outgoing messages and decompresses incoming ones, keeping the LZ77 window
 * from one message to the next unless no context takeover was negotiated.
 *
 * Usually built by {@linkcode ClientPerMessageDeflateFactory} or
 * {@linkcode ServerPerMessageDeflateFactory} during the handshake.
 *
 * @example
 * ```ts
 * import { PerMessageDeflate } from "@denows/websockets/permessage-deflate";
 * import { Frame, Opcode } from "@denows/websockets/frames";
 *
 * const extension = new PerMessageDeflate({
 *   remoteNoContextTakeover: true,
 *   localNoContextTakeover: true,
 *   remoteMaxWindowBits: 15,
 *   localMaxWindowBits: 15,
 * });
 * const payload = new TextEncoder().encode("a".repeat(1000));
 * const frame = extension.encode(new Frame(Opcode.BINARY, payload));
 * console.log(frame.rsv1, frame.data.length); // true 12
 * console.log(extension.decode(frame, { maxSize: 1000 }).data.length); // 1000
 * console.log(extension.encodeKey); // permessage-deflate;w=15;m=8;l=6;t=128
 * extension.close();
 * ```
 */
export class PerMessageDeflate implements Extension {
  /** `"permessage-deflate"`. */
  readonly name: string = NAME;
  /** RSV1 (`0x40`) marks the first frame of a compressed message. */
  readonly rsvBits: number = 0x40;
  /**
   * Defined when the compressor is reset after each message: `encode` is
   * then the same for every connection with the same key, and `broadcast()`
   * compresses a message once for all of them.
   */
  readonly encodeKey: string | undefined;
  /** The peer resets its compressor after each message. */
  readonly remoteNoContextTakeover: boolean;
  /** This endpoint resets its compressor after each message. */
  readonly localNoContextTakeover: boolean;
  /** The peer's LZ77 window size, in bits. */
  readonly remoteMaxWindowBits: number;
  /** This endpoint's LZ77 window size, in bits. */
  readonly localMaxWindowBits: number;
  /** Messages whose first frame is shorter are sent uncompressed. */
  readonly threshold: number;
  /** zlib memory level of the compressor. */
  readonly memLevel: number;
  /** zlib compression level. */
  readonly level: number;

  #slots: CodecSlots = { deflater: undefined, inflater: undefined };
  #encoding = NONE;
  #decoding = NONE;
  /** The peer's deflate stream ended inside the message being received. */
  #streamEnded = false;

  /**
   * Creates the extension from negotiated parameters.
   *
   * @throws {RangeError} for a window size, `threshold`, `memLevel` or
   * `level` out of range (`localMaxWindowBits` must be 9–15).
   */
  constructor(options: PerMessageDeflateOptions) {
    checkWindowBits("remoteMaxWindowBits", options.remoteMaxWindowBits, 8);
    checkWindowBits("localMaxWindowBits", options.localMaxWindowBits, 9);
    checkCodecOptions(options);
    this.remoteNoContextTakeover = options.remoteNoContextTakeover;
    this.localNoContextTakeover = options.localNoContextTakeover;
    this.remoteMaxWindowBits = options.remoteMaxWindowBits;
    this.localMaxWindowBits = options.localMaxWindowBits;
    this.threshold = options.threshold ??
      (this.localNoContextTakeover ? DEFAULT_THRESHOLD_NO_CONTEXT_TAKEOVER : 0);
    this.memLevel = options.memLevel ?? DEFAULT_MEM_LEVEL;
    this.level = options.level ?? DEFAULT_LEVEL;
    this.encodeKey = this.localNoContextTakeover
      ? `${NAME};w=${this.localMaxWindowBits};m=${this.memLevel};l=${this.level};t=${this.threshold}`
      : undefined;
    slotsRegistry.register(this, this.#slots);
  }

  /**
   * Decodes an incoming frame: decompresses the frames of a message whose
   * first frame has RSV1, and returns a new frame with RSV1 cleared; other
   * frames come back unchanged.
   *
   * @throws {ProtocolError} for RSV1 on a control or continuation frame
   * (code 1002) and for invalid compressed data (code 1007).
   * @throws {PayloadTooBig} as soon as the decompressed data passes
   * `options.maxSize` (the allowance left for this message).
   */
  decode(frame: Frame, options?: DecodeOptions): Frame {
    const opcode = frame.opcode;
    if (opcode >= 8) {
      if (frame.rsv1) throw new ProtocolError("RSV1 on a control frame");
      return frame;
    }
    if (opcode === Opcode.CONT) {
      if (frame.rsv1) throw new ProtocolError("RSV1 on a continuation frame");
      if (this.#decoding !== COMPRESSED) {
        if (frame.fin) this.#decoding = NONE;
        return frame;
      }
    } else {
      if (this.#decoding === COMPRESSED) this.#endDecoding(true);
      if (!frame.rsv1) {
        this.#decoding = frame.fin ? NONE : PLAIN;
        return frame;
      }
      this.#decoding = COMPRESSED;
    }
    const slots = this.#slots;
    const inflater = slots.inflater ??= acquireInflater(Math.max(this.remoteMaxWindowBits, 9));
    const run: InflateRun = {
      parts: [],
      out: SCRATCH,
      used: 0,
      size: 0,
      maxSize: Math.max(0, options?.maxSize ?? Infinity),
      ended: this.#streamEnded,
    };
    try {
      inflateInto(inflater, frame.data, run);
      if (frame.fin) inflateInto(inflater, TAIL, run);
    } catch (error) {
      // The inflater's state is unknown: drop it rather than reuse it.
      inflater.close();
      slots.inflater = undefined;
      this.#decoding = NONE;
      this.#streamEnded = false;
      throw error;
    }
    const data = run.parts.length === 0
      ? run.out.slice(0, run.used)
      : join(run.parts, run.out, run.used, run.size);
    if (frame.fin) {
      this.#endDecoding(run.ended);
    } else {
      this.#streamEnded = run.ended;
    }
    return new Frame(opcode, data, { fin: frame.fin, rsv2: frame.rsv2, rsv3: frame.rsv3 });
  }

  #endDecoding(streamEnded: boolean): void {
    this.#decoding = NONE;
    this.#streamEnded = false;
    const slots = this.#slots;
    if (slots.inflater === undefined) return;
    if (this.remoteNoContextTakeover) {
      releaseCodec(slots.inflater);
      slots.inflater = undefined;
    } else if (streamEnded) {
      // After a final block the peer starts a new deflate stream.
      slots.inflater.reset();
    }
  }

  /**
   * Encodes an outgoing frame. The first frame of a message decides whether
   * the whole message is compressed: yes unless `options.compress` is
   * `false` or the frame carries fewer than `threshold` bytes. A compressed
   * message gets RSV1 on its first frame; control frames come back unchanged.
   */
  encode(frame: Frame, options?: EncodeOptions): Frame {
    const opcode = frame.opcode;
    if (opcode >= 8) return frame;
    if (opcode === Opcode.CONT) {
      if (this.#encoding !== COMPRESSED) {
        if (frame.fin) this.#encoding = NONE;
        return frame;
      }
    } else {
      if (this.#encoding === COMPRESSED) this.#endEncoding();
      if (options?.compress === false || frame.data.length < this.threshold) {
        this.#encoding = frame.fin ? NONE : PLAIN;
        return frame;
      }
      this.#encoding = COMPRESSED;
    }
    const slots = this.#slots;
    const deflater = slots.deflater ??= acquireDeflater(
      this.localMaxWindowBits,
      this.memLevel,
      this.level,
    );
    let data: Uint8Array;
    try {
      data = deflate(deflater, frame.data, frame.fin);
    } catch (error) {
      deflater.close();
      slots.deflater = undefined;
      this.#encoding = NONE;
      throw error;
    }
    if (frame.fin) this.#endEncoding();
    return new Frame(opcode, data, {
      fin: frame.fin,
      rsv1: opcode !== Opcode.CONT,
      rsv2: frame.rsv2,
      rsv3: frame.rsv3,
    });
  }

  #endEncoding(): void {
    this.#encoding = NONE;
    const slots = this.#slots;
    if (this.localNoContextTakeover && slots.deflater !== undefined) {
      releaseCodec(slots.deflater);
      slots.deflater = undefined;
    }
  }

  /**
   * Gives back the zlib state this extension holds (a connection with
   * context takeover holds a compressor and a decompressor) and forgets any
   * message in progress. Call it when the connection ends; it is also done
   * when the extension is garbage-collected. The extension stays usable:
   * the next message starts with a fresh context.
   */
  close(): void {
    releaseSlots(this.#slots);
    this.#encoding = this.#decoding = NONE;
    this.#streamEnded = false;
  }

  /** Same as {@linkcode PerMessageDeflate.prototype.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

// ---------------------------------------------------------------------------
// Negotiation

const WINDOW_BITS = /^(?:[89]|1[0-5])$/;

interface DeflateParams {
  serverNoContextTakeover: boolean;
  clientNoContextTakeover: boolean;
  serverMaxWindowBits: number | undefined;
  /** `true`: offered without a value. */
  clientMaxWindowBits: number | true | undefined;
}

/**
 * Validates extension parameters (RFC 7692 §7.1): each at most once, known
 * names, no value on flags, window sizes 8–15. `client_max_window_bits` may
 * have no value only in an offer.
 */
function parseParams(params: ExtensionParameter[], isOffer: boolean): DeflateParams {
  const parsed: DeflateParams = {
    serverNoContextTakeover: false,
    clientNoContextTakeover: false,
    serverMaxWindowBits: undefined,
    clientMaxWindowBits: undefined,
  };
  const seen = new Set<string>();
  for (const [name, value] of params) {
    if (seen.has(name)) throw new DuplicateParameter(name);
    seen.add(name);
    if (name === "server_no_context_takeover" || name === "client_no_context_takeover") {
      if (value !== undefined) throw new InvalidParameterValue(name, value);
      if (name === "server_no_context_takeover") parsed.serverNoContextTakeover = true;
      else parsed.clientNoContextTakeover = true;
    } else if (name === "server_max_window_bits" || name === "client_max_window_bits") {
      let bits: number | true;
      if (value === undefined) {
        if (name === "server_max_window_bits" || !isOffer) {
          throw new InvalidParameterValue(name, value);
        }
        bits = true;
      } else if (WINDOW_BITS.test(value)) {
        bits = Number(value);
      } else {
        throw new InvalidParameterValue(name, value);
      }
      if (name === "server_max_window_bits") parsed.serverMaxWindowBits = bits as number;
      else parsed.clientMaxWindowBits = bits;
    } else {
      throw new InvalidParameterName(name);
    }
  }
  return parsed;
}

function checkAlreadyAccepted(accepted: readonly Extension[]): void {
  if (accepted.some((extension) => extension.name === NAME)) {
    throw new NegotiationError(`${NAME} was already negotiated`);
  }
}

/**
 * What a client offers and accepts (RFC 7692 §7.1).
 *
 * @example
 * ```ts
 * import type { ClientPerMessageDeflateOptions } from "@denows/websockets/permessage-deflate";
 * const options: ClientPerMessageDeflateOptions = { clientMaxWindowBits: true };
 * console.log(options.clientMaxWindowBits); // true
 * ```
 */
export interface ClientPerMessageDeflateOptions extends DeflateCodecOptions {
  /**
   * Ask the server to reset its compressor after each message (it must agree).
   *
   * @default {false}
   */
  serverNoContextTakeover?: boolean;
  /**
   * Reset this client's compressor after each message, and say so.
   *
   * @default {false}
   */
  clientNoContextTakeover?: boolean;
  /**
   * Ask the server to use at most this window, 8–15 bits (it must agree).
   *
   * @default {undefined} (no limit asked for)
   */
  serverMaxWindowBits?: number;
  /**
   * Use at most this window, 9–15 bits, and say so; or `true`: let the server
   * choose the client's window.
   *
   * @default {undefined} (not offered: the server cannot limit the client's window; `compression: "deflate"` offers `true`)
   */
  clientMaxWindowBits?: number | true;
}

/**
 * Client side of permessage-deflate negotiation: builds the offer and checks
 * the server's answer (RFC 7692 §7.1).
 *
 * @example
 * ```ts
 * import { ClientPerMessageDeflateFactory } from "@denows/websockets/permessage-deflate";
 *
 * const factory = new ClientPerMessageDeflateFactory({ clientMaxWindowBits: true });
 * console.log(factory.getRequestParams()); // [ [ "client_max_window_bits", undefined ] ]
 * const extension = factory.processResponseParams([["client_max_window_bits", "12"]], []);
 * console.log(extension.name); // permessage-deflate
 * ```
 */
export class ClientPerMessageDeflateFactory implements ClientExtensionFactory {
  /** `"permessage-deflate"`. */
  readonly name: string = NAME;
  /** Whether the server is asked to reset its compressor after each message. */
  readonly serverNoContextTakeover: boolean;
  /** Whether this client resets its compressor after each message. */
  readonly clientNoContextTakeover: boolean;
  /** The largest server window asked for, if any. */
  readonly serverMaxWindowBits: number | undefined;
  /** The client window offered: bits, `true` (server chooses) or not offered. */
  readonly clientMaxWindowBits: number | true | undefined;
  /** Compressor tuning for the extensions built. */
  readonly codecOptions: DeflateCodecOptions;

  /**
   * Creates the factory.
   *
   * @throws {RangeError} for a window size, `threshold`, `memLevel` or
   * `level` out of range.
   */
  constructor(options: ClientPerMessageDeflateOptions = {}) {
    if (options.serverMaxWindowBits !== undefined) {
      checkWindowBits("serverMaxWindowBits", options.serverMaxWindowBits, 8);
    }
    if (options.clientMaxWindowBits !== undefined && options.clientMaxWindowBits !== true) {
      checkWindowBits("clientMaxWindowBits", options.clientMaxWindowBits, 9);
    }
    checkCodecOptions(options);
    this.serverNoContextTakeover = options.serverNoContextTakeover ?? false;
    this.clientNoContextTakeover = options.clientNoContextTakeover ?? false;
    this.serverMaxWindowBits = options.serverMaxWindowBits;
    this.clientMaxWindowBits = options.clientMaxWindowBits;
    this.codecOptions = {
      threshold: options.threshold,
      memLevel: options.memLevel,
      level: options.level,
    };
  }

  /** The parameters of the offer, in the order of RFC 7692 §7.1. */
  getRequestParams(): ExtensionParameter[] {
    const params: ExtensionParameter[] = [];
    if (this.serverNoContextTakeover) params.push(["server_no_context_takeover", undefined]);
    if (this.clientNoContextTakeover) params.push(["client_no_context_takeover", undefined]);
    if (this.serverMaxWindowBits !== undefined) {
      params.push(["server_max_window_bits", String(this.serverMaxWindowBits)]);
    }
    if (this.clientMaxWindowBits === true) {
      params.push(["client_max_window_bits", undefined]);
    } else if (this.clientMaxWindowBits !== undefined) {
      params.push(["client_max_window_bits", String(this.clientMaxWindowBits)]);
    }
    return params;
  }

  /**
   * Checks the server's answer and builds the extension.
   *
   * @throws {DuplicateParameter} for a parameter given twice.
   * @throws {InvalidParameterName} for an unknown parameter.
   * @throws {InvalidParameterValue} for a bad value, or a value on a flag.
   * @throws {NegotiationError} when the answer doesn't match the offer, or
   * permessage-deflate was already accepted.
   */
  processResponseParams(
    params: ExtensionParameter[],
    accepted: readonly Extension[],
  ): PerMessageDeflate {
    checkAlreadyAccepted(accepted);
    const answer = parseParams(params, false);
    if (this.serverNoContextTakeover && !answer.serverNoContextTakeover) {
      throw new NegotiationError("expected server_no_context_takeover in the answer");
    }
    const serverBits = answer.serverMaxWindowBits;
    if (this.serverMaxWindowBits !== undefined) {
      if (serverBits === undefined) {
        throw new NegotiationError("expected server_max_window_bits in the answer");
      }
      if (serverBits > this.serverMaxWindowBits) {
        throw new NegotiationError(
          `server_max_window_bits=${serverBits} exceeds the ${this.serverMaxWindowBits} offered`,
        );
      }
    }
    const offered = this.clientMaxWindowBits;
    const clientBits = answer.clientMaxWindowBits as number | undefined;
    let localBits: number;
    if (clientBits === undefined) {
      localBits = offered === undefined || offered === true ? 15 : offered;
    } else if (offered === undefined) {
      throw new NegotiationError("unexpected client_max_window_bits: it was not offered");
    } else if (offered !== true && clientBits > offered) {
      throw new NegotiationError(
        `client_max_window_bits=${clientBits} exceeds the ${offered} offered`,
      );
    } else {
      // 8 bits: compress with 9, whose matches stay within 250 bytes (see the module docs).
      localBits = Math.max(clientBits, 9);
    }
    return new PerMessageDeflate({
      remoteNoContextTakeover: answer.serverNoContextTakeover,
      localNoContextTakeover: this.clientNoContextTakeover || answer.clientNoContextTakeover,
      remoteMaxWindowBits: serverBits ?? 15,
      localMaxWindowBits: localBits,
      ...this.codecOptions,
    });
  }
}

/**
 * What a server accepts and answers (RFC 7692 §7.1).
 *
 * @example
 * ```ts
 * import type { ServerPerMessageDeflateOptions } from "@denows/websockets/permessage-deflate";
 * const options: ServerPerMessageDeflateOptions = { serverNoContextTakeover: true };
 * console.log(options.serverNoContextTakeover); // true
 * ```
 */
export interface ServerPerMessageDeflateOptions extends DeflateCodecOptions {
  /**
   * Reset the server's compressor after each message, and say so.
   *
   * @default {false} (`compression: "deflate"` uses `true`)
   */
  serverNoContextTakeover?: boolean;
  /**
   * Require clients to reset their compressor after each message.
   *
   * @default {false}
   */
  clientNoContextTakeover?: boolean;
  /**
   * Use at most this window, 9–15 bits.
   *
   * @default {15} (or what the client asks for)
   */
  serverMaxWindowBits?: number;
  /**
   * Ask clients that support it to use at most this window, 8–15 bits.
   *
   * @default {undefined} (no limit; `compression: "deflate"` asks for 12)
   */
  clientMaxWindowBits?: number;
  /**
   * Decline offers without `client_max_window_bits` (clients that cannot be
   * limited). Needs `clientMaxWindowBits`.
   *
   * @default {false}
   */
  requireClientMaxWindowBits?: boolean;
}

/**
 * Server side of permessage-deflate negotiation: accepts an offer and builds
 * the answer, or declines it by throwing so that the server tries the next
 * offer (RFC 7692 §7.1).
 *
 * @example
 * ```ts
 * import { ServerPerMessageDeflateFactory } from "@denows/websockets/permessage-deflate";
 *
 * const factory = new ServerPerMessageDeflateFactory({ clientMaxWindowBits: 12 });
 * const [answer, extension] = factory.processRequestParams([["client_max_window_bits", undefined]], []);
 * console.log(answer); // [ [ "client_max_window_bits", "12" ] ]
 * console.log(extension.remoteMaxWindowBits); // 12
 * ```
 */
export class ServerPerMessageDeflateFactory implements ServerExtensionFactory {
  /** `"permessage-deflate"`. */
  readonly name: string = NAME;
  /** Whether the server resets its compressor after each message. */
  readonly serverNoContextTakeover: boolean;
  /** Whether clients must reset their compressor after each message. */
  readonly clientNoContextTakeover: boolean;
  /** The largest server window, if limited. */
  readonly serverMaxWindowBits: number | undefined;
  /** The largest client window asked for, if any. */
  readonly clientMaxWindowBits: number | undefined;
  /** Whether offers without `client_max_window_bits` are declined. */
  readonly requireClientMaxWindowBits: boolean;
  /** Compressor tuning for the extensions built. */
  readonly codecOptions: DeflateCodecOptions;

  /**
   * Creates the factory.
   *
   * @throws {RangeError} for a window size, `threshold`, `memLevel` or
   * `level` out of range.
   * @throws {TypeError} for `requireClientMaxWindowBits` without
   * `clientMaxWindowBits`.
   */
  constructor(options: ServerPerMessageDeflateOptions = {}) {
    if (options.serverMaxWindowBits !== undefined) {
      checkWindowBits("serverMaxWindowBits", options.serverMaxWindowBits, 9);
    }
    if (options.clientMaxWindowBits !== undefined) {
      checkWindowBits("clientMaxWindowBits", options.clientMaxWindowBits, 8);
    }
    checkCodecOptions(options);
    if (options.requireClientMaxWindowBits && options.clientMaxWindowBits === undefined) {
      throw new TypeError("requireClientMaxWindowBits needs clientMaxWindowBits");
    }
    this.serverNoContextTakeover = options.serverNoContextTakeover ?? false;
    this.clientNoContextTakeover = options.clientNoContextTakeover ?? false;
    this.serverMaxWindowBits = options.serverMaxWindowBits;
    this.clientMaxWindowBits = options.clientMaxWindowBits;
    this.requireClientMaxWindowBits = options.requireClientMaxWindowBits ?? false;
    this.codecOptions = {
      threshold: options.threshold,
      memLevel: options.memLevel,
      level: options.level,
    };
  }

  /**
   * Accepts an offer: returns the answer's parameters and the extension.
   *
   * @throws {DuplicateParameter} for a parameter given twice.
   * @throws {InvalidParameterName} for an unknown parameter.
   * @throws {InvalidParameterValue} for a bad value, or a value on a flag.
   * @throws {NegotiationError} when the offer lacks a required
   * `client_max_window_bits`, or permessage-deflate was already accepted.
   */
  processRequestParams(
    params: ExtensionParameter[],
    accepted: readonly Extension[],
  ): [ExtensionParameter[], PerMessageDeflate] {
    checkAlreadyAccepted(accepted);
    const offer = parseParams(params, true);
    const serverNoContextTakeover = offer.serverNoContextTakeover || this.serverNoContextTakeover;
    const clientNoContextTakeover = offer.clientNoContextTakeover || this.clientNoContextTakeover;

    let serverBits = this.serverMaxWindowBits;
    if (offer.serverMaxWindowBits !== undefined) {
      serverBits = Math.min(offer.serverMaxWindowBits, serverBits ?? 15);
    }

    const offered = offer.clientMaxWindowBits;
    let clientBits: number | undefined;
    if (offered === undefined) {
      if (this.requireClientMaxWindowBits) {
        throw new NegotiationError("client_max_window_bits is required but was not offered");
      }
    } else if (this.clientMaxWindowBits === undefined) {
      clientBits = offered === true ? undefined : offered;
    } else {
      clientBits = offered === true
        ? this.clientMaxWindowBits
        : Math.min(offered, this.clientMaxWindowBits);
    }

    const answer: ExtensionParameter[] = [];
    if (serverNoContextTakeover) answer.push(["server_no_context_takeover", undefined]);
    if (clientNoContextTakeover) answer.push(["client_no_context_takeover", undefined]);
    if (serverBits !== undefined) answer.push(["server_max_window_bits", String(serverBits)]);
    if (clientBits !== undefined) answer.push(["client_max_window_bits", String(clientBits)]);
    const extension = new PerMessageDeflate({
      remoteNoContextTakeover: clientNoContextTakeover,
      localNoContextTakeover: serverNoContextTakeover,
      remoteMaxWindowBits: clientBits ?? 15,
      // 8 bits: compress with 9, whose matches stay within 250 bytes (see the module docs).
      localMaxWindowBits: Math.max(serverBits ?? 15, 9),
      ...this.codecOptions,
    });
    return [answer, extension];
  }
}

/**
 * The extension factories a client uses with `compression: "deflate"`: offer
 * permessage-deflate with `client_max_window_bits` (the server may choose the
 * client's window), context takeover both ways (unless the server asks
 * otherwise), level 6, memLevel 8, every message compressed (threshold 0,
 * since short messages shrink well with context takeover).
 *
 * @example
 * ```ts
 * import { defaultClientExtensions } from "@denows/websockets/permessage-deflate";
 * const [factory] = defaultClientExtensions();
 * console.log(factory.name, factory.getRequestParams()); // permessage-deflate [ [ "client_max_window_bits", undefined ] ]
 * ```
 */
export function defaultClientExtensions(): ClientExtensionFactory[] {
  return [new ClientPerMessageDeflateFactory({ clientMaxWindowBits: true })];
}

/**
 * The extension factories a server uses with `compression: "deflate"`:
 * accept permessage-deflate with `server_no_context_takeover` (no compressor
 * per connection; `broadcast()` compresses once for every connection) and
 * `client_max_window_bits=12` when the client supports it (a 4 KiB window
 * keeps each connection's decompressor near 20 KiB), level 6, memLevel 8,
 * messages from 128 bytes compressed (threshold 128). See the module
 * documentation for the measurements behind these choices.
 *
 * @example
 * ```ts
 * import { defaultServerExtensions } from "@denows/websockets/permessage-deflate";
 * const [factory] = defaultServerExtensions();
 * const [answer] = factory.processRequestParams([["client_max_window_bits", undefined]], []);
 * console.log(answer); // [ [ "server_no_context_takeover", undefined ], [ "client_max_window_bits", "12" ] ]
 * ```
 */
export function defaultServerExtensions(): ServerExtensionFactory[] {
  return [
    new ServerPerMessageDeflateFactory({ serverNoContextTakeover: true, clientMaxWindowBits: 12 }),
  ];
}
