/**
 * A small re-implementation of the behaviour of the Autobahn|Testsuite
 * cases, over real sockets, to check the library the way the real suite
 * does: as a fuzzing client against a server (`fuzzServer`) and as a
 * fuzzing server against a client (`fuzzClient`).
 *
 * Each case opens a connection, sends exactly the frames the case
 * describes (masked when acting as the client), records what the peer
 * under test sends back (messages, pongs, pings) and how the connection
 * ends (who closed, which close code, whether the closing handshake
 * completed), and grades that like the suite: the events must equal one of
 * the expected lists (OK or NON-STRICT) and the close must match the
 * expected close; `passed()` accepts OK (and INFORMATIONAL), not NON-STRICT. On top of the suite's own grading, anything the peer
 * under test does wrong on the wire (unmasked client frames, reserved bits,
 * invalid UTF-8, frames after its close frame…) fails the case, and so
 * does a peer that never reacts to a protocol violation.
 *
 * Times are scaled: one suite "second" is `Settings.second` milliseconds.
 *
 * @module
 */

import zlib from "node:zlib";

// ---------------------------------------------------------------- wire helpers

const encoder = new TextEncoder();
const fatalDecoder = new TextDecoder("utf-8", { fatal: true });

/** UTF-8 bytes of a string. */
export function utf8(text: string): Uint8Array<ArrayBuffer> {
  return encoder.encode(text);
}

/** Bytes from numbers. */
export function hex(...values: number[]): Uint8Array {
  return new Uint8Array(values);
}

/** Concatenates byte arrays. */
export function concat(parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** `pattern` repeated (and cut) to exactly `length` bytes. */
export function repeatTo(pattern: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  if (pattern.length === 0) return out;
  let filled = Math.min(pattern.length, length);
  out.set(pattern.subarray(0, filled));
  while (filled < length) {
    const count = Math.min(filled, length - filled);
    out.copyWithin(filled, 0, count);
    filled += count;
  }
  return out;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function isValidUtf8(bytes: Uint8Array): boolean {
  try {
    fatalDecoder.decode(bytes);
    return true;
  } catch {
    return false;
  }
}

/** Close codes a close frame may carry (RFC 6455 §7.4, IANA registry). */
function isValidCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
    (code >= 3000 && code <= 4999);
}

/** Options of one frame, as the suite's `sendFrame` takes them. */
export interface SendFrameOptions {
  /** Opcode, including reserved ones. */
  opcode: number;
  /** Payload; a string is sent as UTF-8. */
  payload?: Uint8Array | string;
  /** FIN bit; default true. */
  fin?: boolean;
  /** RSV bits as the integer 0–7 written in bits 4–6 of the first byte (1 = RSV3, 4 = RSV1). */
  rsv?: number;
  /** Repeat the payload up to this length. */
  payloadLength?: number;
  /** Write the frame in chops of this many bytes, each on its own (as `sync`). */
  chopSize?: number;
  /** Write the frame on its own, then let the event loop turn once. */
  sync?: boolean;
  /** Override the masking that the role implies. */
  mask?: boolean;
}

function toBytes(payload: Uint8Array | string | undefined): Uint8Array {
  if (payload === undefined) return new Uint8Array(0);
  return typeof payload === "string" ? utf8(payload) : payload;
}

/** Serializes one frame; masks it with a random key when `mask` is true. */
export function buildFrame(
  opcode: number,
  payload: Uint8Array,
  options: { fin?: boolean; rsv?: number; mask: boolean },
): Uint8Array {
  const length = payload.length;
  const lengthBytes = length < 126 ? 0 : length < 65536 ? 2 : 8;
  const headerLength = 2 + lengthBytes + (options.mask ? 4 : 0);
  const out = new Uint8Array(headerLength + length);
  out[0] = ((options.fin ?? true) ? 0x80 : 0) | ((options.rsv ?? 0) << 4) | (opcode & 0x0f);
  const maskBit = options.mask ? 0x80 : 0;
  if (lengthBytes === 0) {
    out[1] = maskBit | length;
  } else if (lengthBytes === 2) {
    out[1] = maskBit | 126;
    out[2] = length >>> 8;
    out[3] = length & 0xff;
  } else {
    out[1] = maskBit | 127;
    new DataView(out.buffer).setBigUint64(2, BigInt(length));
  }
  out.set(payload, headerLength);
  if (options.mask) {
    const key = crypto.getRandomValues(new Uint8Array(4));
    out.set(key, headerLength - 4);
    const data = out.subarray(headerLength);
    for (let i = 0; i < data.length; i++) data[i] ^= key[i & 3];
  }
  return out;
}

/** A frame as received, unmasked. */
interface WireFrame {
  fin: boolean;
  rsv: number;
  opcode: number;
  masked: boolean;
  payload: Uint8Array;
}

/**
 * Incremental frame parser: the header is gathered byte by byte, the
 * payload is copied into a buffer of the declared length as it arrives.
 */
class FrameParser {
  #header = new Uint8Array(14);
  #headerFilled = 0;
  #frame: WireFrame | undefined;
  #key: Uint8Array | undefined;
  #filled = 0;

  /** Feeds a chunk; calls `onFrame` for each complete frame. */
  feed(chunk: Uint8Array, onFrame: (frame: WireFrame) => void): void {
    let offset = 0;
    while (offset < chunk.length || (this.#frame !== undefined && this.#complete())) {
      if (this.#frame === undefined) {
        // Gather the header.
        const needed = this.#headerNeeded();
        while (this.#headerFilled < needed() && offset < chunk.length) {
          this.#header[this.#headerFilled++] = chunk[offset++];
        }
        if (this.#headerFilled < needed()) return;
        this.#startFrame();
        continue;
      }
      const frame = this.#frame;
      const count = Math.min(frame.payload.length - this.#filled, chunk.length - offset);
      frame.payload.set(chunk.subarray(offset, offset + count), this.#filled);
      this.#filled += count;
      offset += count;
      if (this.#complete()) {
        if (this.#key !== undefined) {
          const key = this.#key;
          const data = frame.payload;
          for (let i = 0; i < data.length; i++) data[i] ^= key[i & 3];
        }
        this.#frame = undefined;
        this.#headerFilled = 0;
        onFrame(frame);
      }
    }
  }

  #complete(): boolean {
    return this.#frame !== undefined && this.#filled === this.#frame.payload.length;
  }

  #headerNeeded(): () => number {
    return () => {
      if (this.#headerFilled < 2) return 2;
      const length = this.#header[1] & 0x7f;
      const masked = (this.#header[1] & 0x80) !== 0;
      return 2 + (length === 126 ? 2 : length === 127 ? 8 : 0) + (masked ? 4 : 0);
    };
  }

  #startFrame(): void {
    const header = this.#header;
    const masked = (header[1] & 0x80) !== 0;
    let length = header[1] & 0x7f;
    let position = 2;
    if (length === 126) {
      length = (header[2] << 8) | header[3];
      position = 4;
    } else if (length === 127) {
      const big = new DataView(header.buffer).getBigUint64(2);
      if (big > BigInt(256 * 1024 * 1024)) throw new Error(`frame too long for the fuzzer: ${big}`);
      length = Number(big);
      position = 10;
    }
    this.#key = masked ? header.slice(position, position + 4) : undefined;
    this.#frame = {
      fin: (header[0] & 0x80) !== 0,
      rsv: (header[0] >> 4) & 0x07,
      opcode: header[0] & 0x0f,
      masked,
      payload: new Uint8Array(length),
    };
    this.#filled = 0;
  }
}

// ---------------------------------------------------------------- permessage-deflate

const TAIL = hex(0x00, 0x00, 0xff, 0xff);

/** A permessage-deflate offer, with the suite's names (from the client's point of view). */
export interface DeflateOffer {
  /** The client lets the server ask for `client_no_context_takeover`. */
  acceptNoContextTakeover: boolean;
  /** The client lets the server choose `client_max_window_bits` (offers it without a value). */
  acceptMaxWindowBits: boolean;
  /** The client asks for `server_no_context_takeover`. */
  requestNoContextTakeover: boolean;
  /** The client asks for `server_max_window_bits` (0: not asked). */
  requestMaxWindowBits: number;
}

/** How the fuzzing server accepts an offer. */
export interface DeflateAccept {
  /** The offer accepted. */
  offer: DeflateOffer;
  /** Ask the client for `client_no_context_takeover`. */
  requestNoContextTakeover: boolean;
  /** Ask the client for `client_max_window_bits` (0: not asked). */
  requestMaxWindowBits: number;
}

/** Builds an offer; defaults as the suite's. */
export function deflateOffer(
  requestNoContextTakeover = false,
  requestMaxWindowBits = 0,
): DeflateOffer {
  return {
    acceptNoContextTakeover: true,
    acceptMaxWindowBits: true,
    requestNoContextTakeover,
    requestMaxWindowBits,
  };
}

/** The `Sec-WebSocket-Extensions` value of a list of offers. */
export function offerHeader(offers: DeflateOffer[]): string {
  return offers.map((offer) => {
    let value = "permessage-deflate";
    if (offer.acceptNoContextTakeover) value += "; client_no_context_takeover";
    if (offer.acceptMaxWindowBits) value += "; client_max_window_bits";
    if (offer.requestNoContextTakeover) value += "; server_no_context_takeover";
    if (offer.requestMaxWindowBits !== 0) {
      value += `; server_max_window_bits=${offer.requestMaxWindowBits}`;
    }
    return value;
  }).join(", ");
}

/** The `Sec-WebSocket-Extensions` value answering an accepted offer. */
export function acceptHeader(accept: DeflateAccept): string {
  let value = "permessage-deflate";
  if (accept.offer.requestNoContextTakeover) value += "; server_no_context_takeover";
  if (accept.offer.requestMaxWindowBits !== 0) {
    value += `; server_max_window_bits=${accept.offer.requestMaxWindowBits}`;
  }
  if (accept.requestNoContextTakeover) value += "; client_no_context_takeover";
  if (accept.requestMaxWindowBits !== 0) {
    value += `; client_max_window_bits=${accept.requestMaxWindowBits}`;
  }
  return value;
}

type ExtensionParams = Map<string, string | true>;

/** Parses `name; a; b=1, name2` into `[name, params]` pairs (values may be quoted). */
function parseExtensions(value: string): [string, ExtensionParams][] {
  const out: [string, ExtensionParams][] = [];
  for (const item of value.split(",")) {
    const parts = item.split(";").map((part) => part.trim());
    if (parts[0] === "") continue;
    const params: ExtensionParams = new Map();
    for (const part of parts.slice(1)) {
      const [name, raw] = part.split("=").map((piece) => piece.trim());
      if (params.has(name)) throw new Error(`duplicate extension parameter ${name}`);
      params.set(name, raw === undefined ? true : raw.replace(/^"(.*)"$/, "$1"));
    }
    out.push([parts[0], params]);
  }
  return out;
}

function windowBitsParam(value: string | true | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (value === true || !/^(?:[89]|1[0-5])$/.test(value)) {
    throw new Error(`invalid ${name}: ${value}`);
  }
  return Number(value);
}

/** What this fuzzing peer uses once permessage-deflate is negotiated. */
export interface DeflateSession {
  /** Window of this peer's compressor. */
  localWindowBits: number;
  /** This peer resets its compressor after each message. */
  localNoContextTakeover: boolean;
  /** Window the peer under test promised for its compressor. */
  remoteWindowBits: number;
  /** The peer under test promised to reset its compressor after each message. */
  remoteNoContextTakeover: boolean;
}

/** Compresses messages; with context takeover through a zlib stream. */
class Compressor {
  readonly #windowBits: number;
  readonly #noContextTakeover: boolean;
  #stream: zlib.DeflateRaw | undefined;
  #output: Uint8Array[] = [];

  constructor(windowBits: number, noContextTakeover: boolean) {
    this.#windowBits = Math.max(windowBits, 9);
    this.#noContextTakeover = noContextTakeover;
  }

  async compress(data: Uint8Array): Promise<Uint8Array> {
    let out: Uint8Array;
    if (this.#noContextTakeover) {
      out = zlib.deflateRawSync(data, {
        windowBits: this.#windowBits,
        finishFlush: zlib.constants.Z_SYNC_FLUSH,
      });
    } else {
      if (this.#stream === undefined) {
        this.#stream = zlib.createDeflateRaw({ windowBits: this.#windowBits });
        this.#stream.on("data", (chunk: Uint8Array) => this.#output.push(chunk));
      }
      const stream = this.#stream;
      stream.write(data);
      await new Promise<void>((resolve) => stream.flush(zlib.constants.Z_SYNC_FLUSH, resolve));
      out = concat(this.#output);
      this.#output = [];
    }
    if (out.length >= 4 && bytesEqual(out.subarray(out.length - 4), TAIL)) {
      out = out.subarray(0, out.length - 4);
    }
    return out;
  }

  close(): void {
    this.#stream?.close();
    this.#stream = undefined;
  }
}

/**
 * Decompresses messages with the window the peer under test promised; with
 * context takeover, by inflating the whole stream so far (the sessions here
 * are short) and keeping the new output, which proves that the peer's
 * back-references stay within the promised window and context.
 */
class Decompressor {
  readonly #windowBits: number;
  readonly #noContextTakeover: boolean;
  #stream: Uint8Array[] = [];
  #produced = 0;

  constructor(windowBits: number, noContextTakeover: boolean) {
    this.#windowBits = windowBits;
    this.#noContextTakeover = noContextTakeover;
  }

  decompress(data: Uint8Array): Uint8Array {
    if (this.#noContextTakeover) {
      return zlib.inflateRawSync(concat([data, TAIL]), {
        windowBits: this.#windowBits,
        finishFlush: zlib.constants.Z_SYNC_FLUSH,
      });
    }
    this.#stream.push(data, TAIL);
    const all = zlib.inflateRawSync(concat(this.#stream), {
      windowBits: this.#windowBits,
      finishFlush: zlib.constants.Z_SYNC_FLUSH,
    });
    const out = all.subarray(this.#produced);
    this.#produced = all.length;
    return out;
  }
}

// ---------------------------------------------------------------- cases and grading

/** An event recorded by the fuzzing peer, as the suite records them. */
export type Event =
  | { type: "message"; data: Uint8Array; binary: boolean }
  | { type: "ping"; data: Uint8Array }
  | { type: "pong"; data: Uint8Array }
  | { type: "timeout"; label: string };

/** A message event. */
export function message(data: Uint8Array | string, binary = false): Event {
  return { type: "message", data: toBytes(data), binary };
}

/** A pong event. */
export function pong(data: Uint8Array | string = new Uint8Array(0)): Event {
  return { type: "pong", data: toBytes(data) };
}

/** A timeout event, recorded by cases that wait between steps. */
export function timeout(label: string): Event {
  return { type: "timeout", label };
}

function eventsEqual(a: Event[], b: Event[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i], y = b[i];
    if (x.type !== y.type) return false;
    if (x.type === "timeout") {
      if (x.label !== (y as typeof x).label) return false;
    } else {
      if (!bytesEqual(x.data, (y as typeof x).data)) return false;
      if (x.type === "message" && x.binary !== (y as typeof x).binary) return false;
    }
  }
  return true;
}

function describeEvents(events: Event[]): string {
  return "[" + events.map((event) => {
    if (event.type === "timeout") return `timeout ${event.label}`;
    const head = event.data.length > 24
      ? `${event.data.length} bytes`
      : JSON.stringify(new TextDecoder().decode(event.data));
    return event.type === "message"
      ? `${event.binary ? "binary" : "text"} ${head}`
      : `${event.type} ${head}`;
  }).join(", ") + "]";
}

/** The suite's verdicts. */
export type Behavior =
  | "OK"
  | "NON-STRICT"
  | "FAILED"
  | "WRONG CODE"
  | "UNCLEAN"
  | "FAILED BY CLIENT"
  | "INFORMATIONAL"
  | "UNIMPLEMENTED";

/** How the connection must end. */
export interface ExpectedClose {
  /** Whether the fuzzing peer starts the closing handshake (otherwise the peer under test fails the connection). */
  closedByMe: boolean;
  /** Close codes accepted from the peer under test (an empty close frame or none is accepted too). */
  codes: number[];
  /** Whether the closing handshake must complete. */
  requireClean: boolean;
  /** Closing by the wrong side fails the case outright (UTF-8 cases). */
  wrongEndpointIsFatal?: boolean;
}

/** One case: its id, what it does once open, and how it is graded. */
export interface Case {
  /** "1.1.1" etc. */
  id: string;
  /** What the case does. */
  description: string;
  /** permessage-deflate: offers made as client, accept policy as server. */
  deflate?: {
    offers: DeflateOffer[];
    accept(offers: DeflateOffer[]): DeflateAccept | undefined;
  };
  /** Runs once the connection is open: sets expectations, sends frames, arms timers. */
  onOpen(peer: Peer): void;
  /** Replaces the default handling of messages (record, then close when done). */
  onMessage?(peer: Peer, data: Uint8Array, binary: boolean): void;
  /** Adjusts the verdict once the connection is closed. */
  onConnectionLost?(peer: Peer, result: CaseResult): void;
  /**
   * Verdicts that count as passing for this case. Default: OK and
   * INFORMATIONAL; NON-STRICT (graded only where the suite lists it) fails.
   */
  allowed?: Behavior[];
  /** Upper bound for the whole case in ms (default 10 000). */
  limit?: number;
}

/** The verdict of one case. */
export interface CaseResult {
  /** Case id. */
  id: string;
  /** Verdict on the events. */
  behavior: Behavior;
  /** Verdict on the close. */
  behaviorClose: Behavior;
  /** Why, for the events. */
  result: string;
  /** Why, for the close. */
  resultClose: string;
  /** What the fuzzing peer recorded. */
  received: string;
  /** Close code sent by the peer under test, if any. */
  remoteCloseCode: number | undefined;
  /** Time taken, ms. */
  duration: number;
}

/** Whether a result counts as passing for its case. */
export function passed(testCase: Case, result: CaseResult): boolean {
  const allowed = testCase.allowed ?? ["OK", "INFORMATIONAL"];
  return allowed.includes(result.behavior) &&
    (result.behaviorClose === "OK" || result.behaviorClose === "INFORMATIONAL");
}

/** Timing of the emulation. */
export interface Settings {
  /** Milliseconds per suite second (waits and kill timers are scaled by it). Default 200. */
  second?: number;
  /** How long a client waits for the server to close TCP after the closing handshake, ms. Default 1000. */
  serverDropTimeout?: number;
}

type PeerState = "open" | "closing" | "closed";

/**
 * The fuzzing side of one connection, with the operations the suite's
 * cases use. `role` is the role of the fuzzing side: "client" tests a
 * server, "server" tests a client.
 */
export class Peer {
  /** The fuzzing side's role. */
  readonly role: "client" | "server";
  /** Events expected, by verdict. */
  expected: Partial<Record<Behavior, Event[]>> = {};
  /** Expected close. */
  expectedClose: ExpectedClose = { closedByMe: true, codes: [1000], requireClean: true };
  /** Events recorded. */
  received: Event[] = [];
  /** Don't close after the expected events arrived (cases sending bad closes). */
  suppressClose = false;
  /** Split outgoing messages into frames of this many bytes (0: one frame). */
  autoFragmentSize = 0;
  /** Negotiated permessage-deflate, if any. */
  deflate: DeflateSession | undefined;
  /** Verdict forced by the case (e.g. UNIMPLEMENTED), if any. */
  forced: { behavior: Behavior; result: string } | undefined;
  /** Scratch space for cases. */
  data: Record<string, unknown> = {};

  state: PeerState = "open";
  closedByMe = false;
  droppedByMe = false;
  wasClean = false;
  remoteCloseCode: number | undefined;
  /** Protocol errors made by the peer under test. */
  readonly violations: string[] = [];

  readonly #conn: Deno.Conn;
  readonly #case: Case;
  readonly #second: number;
  readonly #serverDropTimeout: number;
  #writes: Promise<void> = Promise.resolve();
  #batch: Uint8Array[] = [];
  #timers = new Set<ReturnType<typeof setTimeout>>();
  #tcpClosed = false;
  #remoteClosed = false;
  #handshakeDone = false;
  #parser = new FrameParser();
  #fragments: Uint8Array[] = [];
  #messageOpcode = 0;
  #messageCompressed = false;
  #compressor: Compressor | undefined;
  #decompressor: Decompressor | undefined;
  #finishedResolve!: () => void;
  /** Resolves once the TCP connection is closed. */
  readonly finished: Promise<void>;

  constructor(conn: Deno.Conn, role: "client" | "server", testCase: Case, settings: Settings) {
    this.#conn = conn;
    this.role = role;
    this.#case = testCase;
    this.#second = settings.second ?? 200;
    this.#serverDropTimeout = settings.serverDropTimeout ?? 1000;
    this.finished = new Promise((resolve) => (this.#finishedResolve = resolve));
  }

  /** Suite seconds to ms. */
  seconds(value: number): number {
    return value * this.#second;
  }

  /** Whether the TCP connection is closed. */
  get tcpClosed(): boolean {
    return this.#tcpClosed;
  }

  // ---- sending

  // Frames sent in one go (the same tick, no chops, no sync) leave in one
  // write, as the suite's reactor batches them; chops and sync frames leave
  // one by one, each write followed by one turn of the event loop (the
  // suite re-enters its reactor after each, 10 µs later): a peer reading
  // fast sees them apart, a busy one may read several at once.
  #write(bytes: Uint8Array, chopSize = 0, sync = false): void {
    if (chopSize === 0 && !sync) {
      this.#batch.push(bytes);
      if (this.#batch.length === 1) {
        this.#enqueue(async () => {
          const batch = concat(this.#batch);
          this.#batch = [];
          if (!this.#tcpClosed) await writeAll(this.#conn, batch);
        });
      }
      return;
    }
    this.#enqueue(async () => {
      const step = chopSize > 0 ? chopSize : bytes.length;
      for (let offset = 0; offset < bytes.length; offset += step) {
        if (this.#tcpClosed) return;
        await writeAll(this.#conn, bytes.subarray(offset, offset + step));
        await nextTurn();
      }
    });
  }

  #enqueue(task: () => Promise<void>): void {
    this.#writes = this.#writes.then(task).catch(() => {
      // The peer under test may close the connection at any time: ignore write errors.
    });
  }

  /** Sends one frame, as given (reserved opcodes and bits included). */
  sendFrame(options: SendFrameOptions): void {
    if (this.#tcpClosed) return;
    let payload = toBytes(options.payload);
    if (options.payloadLength !== undefined) payload = repeatTo(payload, options.payloadLength);
    const frame = buildFrame(options.opcode, payload, {
      fin: options.fin,
      rsv: options.rsv,
      mask: options.mask ?? this.role === "client",
    });
    this.#write(frame, options.chopSize, options.sync);
  }

  /** Writes raw bytes (e.g. a frame header, then its payload in pieces). */
  sendRaw(bytes: Uint8Array): void {
    if (this.#tcpClosed) return;
    this.#write(bytes);
  }

  /** The header of a frame with `length` bytes of payload, and the mask key used (or undefined). */
  frameHeader(opcode: number, length: number, fin = true): [Uint8Array, Uint8Array | undefined] {
    const frame = buildFrame(opcode, new Uint8Array(length), { fin, mask: this.role === "client" });
    const headerLength = frame.length - length;
    const header = frame.slice(0, headerLength);
    return [header, this.role === "client" ? header.slice(headerLength - 4) : undefined];
  }

  /** Masks `payload` in place from `offset` within the frame's payload, with `key`. */
  static maskAt(payload: Uint8Array, key: Uint8Array | undefined, offset: number): Uint8Array {
    const out = payload.slice();
    if (key !== undefined) { for (let i = 0; i < out.length; i++) out[i] ^= key[(offset + i) & 3]; }
    return out;
  }

  /** Sends a message: compressed when deflate was negotiated, fragmented per `autoFragmentSize`. */
  sendMessage(payload: Uint8Array | string, binary = false): void {
    if (this.#tcpClosed) return;
    const data = toBytes(payload);
    const opcode = binary ? 2 : 1;
    const mask = this.role === "client";
    const fragmentSize = this.autoFragmentSize;
    const compressor = this.#compressor;
    this.#enqueue(async () => {
      const body = compressor !== undefined ? await compressor.compress(data) : data;
      const rsv = compressor !== undefined ? 4 : 0;
      if (fragmentSize <= 0 || body.length <= fragmentSize) {
        if (this.#tcpClosed) return;
        await writeAll(this.#conn, buildFrame(opcode, body, { rsv, mask }));
        return;
      }
      const frames: Uint8Array[] = [];
      for (let offset = 0; offset < body.length; offset += fragmentSize) {
        const end = Math.min(offset + fragmentSize, body.length);
        frames.push(buildFrame(offset === 0 ? opcode : 0, body.subarray(offset, end), {
          fin: end === body.length,
          rsv: offset === 0 ? rsv : 0,
          mask,
        }));
      }
      if (this.#tcpClosed) return;
      await writeAll(this.#conn, concat(frames));
    });
  }

  /** Sends a ping. */
  sendPing(payload: Uint8Array | string = new Uint8Array(0)): void {
    this.sendFrame({ opcode: 9, payload });
  }

  /**
   * Sends a close frame with `code` and raw `reason` bytes (anything, even
   * invalid); starts the closing handshake when the connection is open.
   */
  sendCloseFrame(code?: number, reason: Uint8Array | string = new Uint8Array(0)): void {
    if (this.#tcpClosed) return;
    const reasonBytes = toBytes(reason);
    let payload: Uint8Array;
    if (code === undefined) {
      payload = reasonBytes;
    } else {
      payload = new Uint8Array(2 + reasonBytes.length);
      payload[0] = code >>> 8;
      payload[1] = code & 0xff;
      payload.set(reasonBytes, 2);
    }
    if (this.state === "open") {
      this.closedByMe = true;
      this.state = "closing";
    }
    this.sendFrame({ opcode: 8, payload });
  }

  /** Starts the closing handshake (once) with `code`. */
  sendClose(code = 1000, reason = ""): void {
    if (this.state !== "open") return;
    this.sendCloseFrame(code, reason);
  }

  // ---- timers

  #timer(ms: number, fn: () => void): void {
    const id = setTimeout(() => {
      this.#timers.delete(id);
      fn();
    }, ms);
    this.#timers.add(id);
  }

  /** Runs `fn` after `seconds` suite seconds, unless the connection closed. */
  continueLater(seconds: number, fn: () => void): void {
    this.#timer(this.seconds(seconds), () => {
      if (!this.#tcpClosed) fn();
    });
  }

  /** Starts the closing handshake after `seconds` if still open. */
  closeAfter(seconds: number): void {
    this.#timer(this.seconds(seconds), () => this.sendClose(1000));
  }

  /** Drops the TCP connection after `seconds` if still connected. */
  killAfter(seconds: number): void {
    this.#timer(this.seconds(seconds), () => this.kill());
  }

  /** Drops the TCP connection now. */
  kill(): void {
    if (this.#tcpClosed) return;
    this.droppedByMe = true;
    this.wasClean = false;
    this.#closeTcp();
  }

  // ---- receiving

  /** Records the default way: append, then close once the expected events arrived. */
  record(event: Event): void {
    this.received.push(event);
    this.finishWhenDone();
  }

  /**
   * Starts the closing handshake once the events match every expected list,
   * as the suite does; with no expected list (the compression and round-trip
   * cases), any recorded event, such as a keepalive ping, closes at once.
   */
  finishWhenDone(): void {
    for (const list of Object.values(this.expected)) {
      if (!eventsEqual(this.received, list!)) return;
    }
    if (this.expectedClose.closedByMe && !this.suppressClose) {
      this.sendClose(this.expectedClose.codes[0]);
    }
  }

  #violation(what: string): void {
    this.violations.push(what);
  }

  /** Begins the session: arms the case and reads until the connection closes. */
  start(initial: Uint8Array, deflate: DeflateSession | undefined): void {
    this.#handshakeDone = true;
    this.deflate = deflate;
    if (deflate !== undefined) {
      this.#compressor = new Compressor(deflate.localWindowBits, deflate.localNoContextTakeover);
      this.#decompressor = new Decompressor(
        deflate.remoteWindowBits,
        deflate.remoteNoContextTakeover,
      );
    }
    try {
      this.#case.onOpen(this);
    } catch (error) {
      this.#violation(`case error: ${error}`);
    }
    if (initial.length !== 0) this.#feed(initial);
    this.#readLoop();
  }

  async #readLoop(): Promise<void> {
    const buffer = new Uint8Array(256 * 1024);
    while (!this.#tcpClosed) {
      let count: number | null;
      try {
        count = await this.#conn.read(buffer);
      } catch {
        count = null;
      }
      if (count === null) break;
      this.#feed(buffer.subarray(0, count));
    }
    this.#onEof();
  }

  #feed(chunk: Uint8Array): void {
    try {
      this.#parser.feed(chunk, (frame) => this.#onFrame(frame));
    } catch (error) {
      this.#violation(String(error));
      this.kill();
    }
  }

  #onFrame(frame: WireFrame): void {
    if (this.#remoteClosed) {
      this.#violation(`frame (opcode ${frame.opcode}) after the close frame`);
      return;
    }
    const mustMask = this.role === "server";
    if (frame.masked !== mustMask) {
      this.#violation(mustMask ? "unmasked frame from a client" : "masked frame from a server");
    }
    const opcode = frame.opcode;
    if (opcode >= 8) {
      if (!frame.fin) this.#violation("fragmented control frame");
      if (frame.payload.length > 125) this.#violation("control frame over 125 bytes");
      if (frame.rsv !== 0) this.#violation(`RSV bits ${frame.rsv} on a control frame`);
      if (opcode === 9) {
        if (this.state === "open") this.sendFrame({ opcode: 10, payload: frame.payload });
        this.record({ type: "ping", data: frame.payload });
      } else if (opcode === 10) {
        this.record({ type: "pong", data: frame.payload });
      } else if (opcode === 8) {
        this.#onClose(frame.payload);
      } else {
        this.#violation(`reserved opcode ${opcode}`);
      }
      return;
    }
    if (opcode > 2) {
      this.#violation(`reserved opcode ${opcode}`);
      return;
    }
    if ((frame.rsv & 0x3) !== 0) this.#violation(`RSV bits ${frame.rsv} on a data frame`);
    const rsv1 = (frame.rsv & 0x4) !== 0;
    if (opcode === 0) {
      if (this.#messageOpcode === 0) this.#violation("continuation frame without a message");
      if (rsv1) this.#violation("RSV1 on a continuation frame");
    } else {
      if (this.#messageOpcode !== 0) this.#violation("new message inside a fragmented message");
      if (rsv1 && this.deflate === undefined) this.#violation("RSV1 without permessage-deflate");
      this.#messageOpcode = opcode;
      this.#messageCompressed = rsv1 && this.deflate !== undefined;
      this.#fragments = [];
    }
    this.#fragments.push(frame.payload);
    if (!frame.fin) return;
    let data = this.#fragments.length === 1 ? this.#fragments[0] : concat(this.#fragments);
    const binary = this.#messageOpcode === 2;
    this.#fragments = [];
    this.#messageOpcode = 0;
    if (this.#messageCompressed) {
      try {
        data = this.#decompressor!.decompress(data);
      } catch (error) {
        this.#violation(`invalid compressed message: ${error}`);
        this.kill();
        return;
      }
    }
    if (!binary && !isValidUtf8(data)) this.#violation("invalid UTF-8 in a text message");
    if (this.#case.onMessage !== undefined) {
      this.#case.onMessage(this, data, binary);
    } else {
      this.record({ type: "message", data, binary });
    }
  }

  #onClose(payload: Uint8Array): void {
    this.#remoteClosed = true;
    if (payload.length === 1) this.#violation("close frame with a 1-byte payload");
    if (payload.length >= 2) {
      const code = (payload[0] << 8) | payload[1];
      this.remoteCloseCode = code;
      if (!isValidCloseCode(code)) this.#violation(`invalid close code ${code}`);
      if (!isValidUtf8(payload.subarray(2))) this.#violation("invalid UTF-8 close reason");
    }
    if (this.state === "open") {
      // Reply to the closing handshake started by the peer under test.
      this.state = "closing";
      this.sendFrame({ opcode: 8, payload: hex(0x03, 0xe8) });
    }
    this.wasClean = true;
    if (this.role === "server") {
      this.#closeTcp();
    } else {
      // A client waits for the server to close the TCP connection.
      this.#timer(this.#serverDropTimeout, () => {
        if (this.#tcpClosed) return;
        this.wasClean = false;
        this.kill();
      });
    }
  }

  #onEof(): void {
    if (!this.#remoteClosed && !this.#tcpClosed) this.wasClean = false;
    this.#closeTcp();
  }

  #closeTcp(): void {
    if (this.#tcpClosed) return;
    this.#tcpClosed = true;
    this.state = "closed";
    // Let what was queued (e.g. the close reply) go out first.
    this.#writes.finally(() => {
      try {
        this.#conn.close();
      } catch {
        // already closed
      }
      for (const id of this.#timers) clearTimeout(id);
      this.#timers.clear();
      this.#compressor?.close();
      this.#finishedResolve();
    });
  }

  /** Grades the case the way the suite does, plus the wire checks. */
  grade(started: number): CaseResult {
    const result: CaseResult = {
      id: this.#case.id,
      behavior: "FAILED",
      behaviorClose: "FAILED",
      result: "Actual events differ from any expected.",
      resultClose: "TCP connection was dropped without close handshake",
      received: describeEvents(this.received),
      remoteCloseCode: this.remoteCloseCode,
      duration: Math.round(performance.now() - started),
    };
    for (const [behavior, events] of Object.entries(this.expected)) {
      if (eventsEqual(this.received, events!)) {
        result.behavior = behavior as Behavior;
        result.result = "Actual events match at least one expected.";
        break;
      }
    }
    const expected = this.expectedClose;
    if (!this.#handshakeDone) {
      result.resultClose = "The WebSocket opening handshake was never completed!";
    } else if (expected.closedByMe !== this.closedByMe) {
      result.resultClose = "The connection was failed by the wrong endpoint";
    } else if (expected.requireClean && !this.wasClean) {
      result.behaviorClose = "UNCLEAN";
      result.resultClose = "The spec requires the connection to be failed cleanly here";
    } else if (
      this.remoteCloseCode !== undefined && !expected.codes.includes(this.remoteCloseCode)
    ) {
      result.behaviorClose = "WRONG CODE";
      result.resultClose = `The close code should have been ${expected.codes.join(",")} or empty`;
    } else if (this.role === "client" && this.droppedByMe) {
      result.behaviorClose = "FAILED BY CLIENT";
      result.resultClose = "It is preferred that the server close the TCP connection";
    } else if (!expected.closedByMe && this.droppedByMe) {
      // Stricter than the suite: the peer under test never reacted.
      result.resultClose = "The peer under test did not fail the connection";
    } else {
      result.behaviorClose = "OK";
      result.resultClose = "Connection was properly closed";
    }
    if (expected.wrongEndpointIsFatal && expected.closedByMe !== this.closedByMe) {
      result.behavior = "FAILED";
    }
    if (this.forced !== undefined) {
      result.behavior = this.forced.behavior;
      result.result = this.forced.result;
    }
    this.#case.onConnectionLost?.(this, result);
    if (this.violations.length !== 0) {
      result.behavior = "FAILED";
      result.result = `Protocol violations: ${this.violations.join("; ")}`;
    }
    return result;
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) offset += await conn.write(bytes.subarray(offset));
}

/** Resolves after one turn of the event loop (its I/O included). */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

// ---------------------------------------------------------------- handshakes

async function acceptValue(key: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    utf8(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"),
  );
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}

/** Reads an HTTP head (up to the blank line); returns it and the bytes after it. */
async function readHead(conn: Deno.Conn): Promise<[string, Uint8Array]> {
  let data: Uint8Array = new Uint8Array(0);
  const buffer = new Uint8Array(16 * 1024);
  while (true) {
    const count = await conn.read(buffer);
    if (count === null) throw new Error("connection closed during the handshake");
    data = concat([data, buffer.subarray(0, count)]);
    for (let i = 3; i < data.length; i++) {
      if (data[i - 3] === 13 && data[i - 2] === 10 && data[i - 1] === 13 && data[i] === 10) {
        return [new TextDecoder().decode(data.subarray(0, i + 1)), data.slice(i + 1)];
      }
    }
    if (data.length > 64 * 1024) throw new Error("HTTP head too long");
  }
}

function parseHead(head: string): [string, Map<string, string[]>] {
  const lines = head.split("\r\n").filter((line) => line !== "");
  const headers = new Map<string, string[]>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    const name = line.slice(0, colon).trim().toLowerCase();
    const values = headers.get(name) ?? [];
    values.push(line.slice(colon + 1).trim());
    headers.set(name, values);
  }
  return [lines[0], headers];
}

/** Opens the handshake as a client; returns the bytes after the response and the deflate session. */
async function clientHandshake(
  conn: Deno.Conn,
  host: string,
  path: string,
  offers: DeflateOffer[] | undefined,
): Promise<[Uint8Array, DeflateSession | undefined]> {
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  let request = `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\n` +
    `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n`;
  if (offers !== undefined) request += `Sec-WebSocket-Extensions: ${offerHeader(offers)}\r\n`;
  await writeAll(conn, utf8(request + "\r\n"));
  const [head, rest] = await readHead(conn);
  const [status, headers] = parseHead(head);
  if (!/^HTTP\/1\.1 101 /.test(status)) throw new Error(`handshake refused: ${status}`);
  if (headers.get("sec-websocket-accept")?.[0] !== await acceptValue(key)) {
    throw new Error("wrong Sec-WebSocket-Accept");
  }
  const extensions = (headers.get("sec-websocket-extensions") ?? []).flatMap(parseExtensions);
  if (extensions.length === 0) return [rest, undefined];
  if (offers === undefined) throw new Error("extension answered without an offer");
  if (extensions.length !== 1 || extensions[0][0] !== "permessage-deflate") {
    throw new Error(`unexpected extensions answered: ${headers.get("sec-websocket-extensions")}`);
  }
  const params = extensions[0][1];
  for (const name of params.keys()) {
    if (
      ![
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
      ].includes(name)
    ) throw new Error(`unknown permessage-deflate parameter ${name}`);
  }
  for (const name of ["server_no_context_takeover", "client_no_context_takeover"]) {
    if (params.has(name) && params.get(name) !== true) throw new Error(`${name} has a value`);
  }
  const serverBits = windowBitsParam(
    params.get("server_max_window_bits"),
    "server_max_window_bits",
  );
  const clientBits = windowBitsParam(
    params.get("client_max_window_bits"),
    "client_max_window_bits",
  );
  const serverNoContext = params.has("server_no_context_takeover");
  // The answer must fit one of the offers (RFC 7692 §7.1).
  const fits = offers.some((offer) =>
    (!offer.requestNoContextTakeover || serverNoContext) &&
    (offer.requestMaxWindowBits === 0 ||
      (serverBits !== undefined && serverBits <= offer.requestMaxWindowBits)) &&
    (clientBits === undefined || offer.acceptMaxWindowBits)
  );
  if (!fits) throw new Error(`answer fits no offer: ${headers.get("sec-websocket-extensions")}`);
  return [rest, {
    localWindowBits: clientBits ?? 15,
    localNoContextTakeover: params.has("client_no_context_takeover"),
    remoteWindowBits: serverBits ?? 15,
    remoteNoContextTakeover: serverNoContext,
  }];
}

/** Answers the handshake as a server; returns the request path, the rest and the deflate session. */
async function serverHandshake(
  conn: Deno.Conn,
  accept: ((offers: DeflateOffer[]) => DeflateAccept | undefined) | undefined,
): Promise<[string, Uint8Array, DeflateSession | undefined]> {
  const [head, rest] = await readHead(conn);
  const [requestLine, headers] = parseHead(head);
  const match = /^GET (\S+) HTTP\/1\.1$/.exec(requestLine);
  if (match === null) throw new Error(`bad request line: ${requestLine}`);
  const key = headers.get("sec-websocket-key")?.[0];
  if (
    key === undefined || headers.get("sec-websocket-version")?.[0] !== "13" ||
    !/websocket/i.test(headers.get("upgrade")?.join(",") ?? "") ||
    !/upgrade/i.test(headers.get("connection")?.join(",") ?? "")
  ) {
    await writeAll(conn, utf8("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"));
    throw new Error("bad handshake request");
  }
  let response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
    `Connection: Upgrade\r\nSec-WebSocket-Accept: ${await acceptValue(key)}\r\n`;
  let session: DeflateSession | undefined;
  if (accept !== undefined) {
    const offers: DeflateOffer[] = [];
    for (
      const [name, params] of (headers.get("sec-websocket-extensions") ?? []).flatMap(
        parseExtensions,
      )
    ) {
      if (name !== "permessage-deflate") continue;
      // The suite's reading of an offer (accepting no context takeover by default).
      offers.push({
        acceptNoContextTakeover: true,
        acceptMaxWindowBits: params.has("client_max_window_bits"),
        requestNoContextTakeover: params.has("server_no_context_takeover"),
        requestMaxWindowBits: windowBitsParam(
          params.get("server_max_window_bits"),
          "server_max_window_bits",
        ) ?? 0,
      });
    }
    const accepted = accept(offers);
    if (accepted !== undefined) {
      response += `Sec-WebSocket-Extensions: ${acceptHeader(accepted)}\r\n`;
      session = {
        localWindowBits: accepted.offer.requestMaxWindowBits || 15,
        localNoContextTakeover: accepted.offer.requestNoContextTakeover,
        remoteWindowBits: accepted.requestMaxWindowBits || 15,
        remoteNoContextTakeover: accepted.requestNoContextTakeover,
      };
    }
  }
  await writeAll(conn, utf8(response + "\r\n"));
  return [match[1], rest, session];
}

// ---------------------------------------------------------------- runners

async function within<T>(promise: Promise<T>, ms: number, onTimeout: () => void): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          onTimeout();
          reject(new Error(`timed out after ${ms} ms`));
        }, ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Runs `cases` as the suite's fuzzing client against the server at
 * `hostname:port`, one connection per case, one after the other.
 */
export async function fuzzServer(
  hostname: string,
  port: number,
  cases: Case[],
  settings: Settings = {},
): Promise<CaseResult[]> {
  const results: CaseResult[] = [];
  for (const testCase of cases) {
    const started = performance.now();
    const conn = await Deno.connect({ hostname, port });
    conn.setNoDelay(true);
    const peer = new Peer(conn, "client", testCase, settings);
    try {
      const [rest, session] = await within(
        clientHandshake(
          conn,
          `${hostname}:${port}`,
          `/runCase?case=${testCase.id}`,
          testCase.deflate?.offers,
        ),
        5000,
        () => conn.close(),
      );
      peer.start(rest, session);
      await within(peer.finished, testCase.limit ?? 10_000, () => peer.kill());
      results.push(peer.grade(started));
    } catch (error) {
      peer.kill();
      await peer.finished.catch(() => {});
      results.push(crashed(testCase, started, error));
    }
  }
  return results;
}

/**
 * Runs `cases` as the suite's fuzzing server against a client: for each
 * case, calls `runClient(url)` (which connects to `url` and echoes every
 * message) and plays the case on the connection it opens.
 */
export async function fuzzClient(
  runClient: (url: string) => Promise<void>,
  cases: Case[],
  settings: Settings = {},
): Promise<CaseResult[]> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  const results: CaseResult[] = [];
  try {
    for (const testCase of cases) {
      const started = performance.now();
      const client = runClient(`ws://127.0.0.1:${port}/runCase?case=${testCase.id}&agent=denows`)
        .catch(() => {});
      const conn = await within(listener.accept(), 5000, () => {});
      conn.setNoDelay(true);
      const peer = new Peer(conn, "server", testCase, settings);
      try {
        const [, rest, session] = await within(
          serverHandshake(conn, testCase.deflate?.accept),
          5000,
          () => conn.close(),
        );
        peer.start(rest, session);
        await within(peer.finished, testCase.limit ?? 10_000, () => peer.kill());
        results.push(peer.grade(started));
      } catch (error) {
        peer.kill();
        await peer.finished.catch(() => {});
        results.push(crashed(testCase, started, error));
      }
      await within(client, 5000, () => {});
    }
  } finally {
    listener.close();
  }
  return results;
}

function crashed(testCase: Case, started: number, error: unknown): CaseResult {
  return {
    id: testCase.id,
    behavior: "FAILED",
    behaviorClose: "FAILED",
    result: `Case aborted: ${error instanceof Error ? error.message : error}`,
    resultClose: "",
    received: "",
    remoteCloseCode: undefined,
    duration: Math.round(performance.now() - started),
  };
}

// ---------------------------------------------------------------- the cases

const NORMAL = 1000;
const PROTOCOL_ERROR = 1002;
const INVALID_PAYLOAD = 1007;

/** Expect `events` then a clean close started by the fuzzing side with 1000. */
function expectEcho(peer: Peer, events: Event[]): void {
  peer.expected = { OK: events };
  peer.expectedClose = { closedByMe: true, codes: [NORMAL], requireClean: true };
}

/** Expect the peer under test to fail the connection with one of `codes` (or drop TCP). */
function expectFail(
  peer: Peer,
  codes: number[],
  ok: Event[] = [],
  nonStrict?: Event[],
  wrongEndpointIsFatal = false,
): void {
  peer.expected = nonStrict === undefined ? { OK: ok } : { OK: ok, "NON-STRICT": nonStrict };
  peer.expectedClose = { closedByMe: false, codes, requireClean: false, wrongEndpointIsFatal };
}

/** A wrong close code fails the case (the 7.x close cases). */
function wrongCodeFails(_peer: Peer, result: CaseResult): void {
  if (result.behaviorClose === "WRONG CODE") {
    result.behavior = "FAILED";
    result.result = result.resultClose;
  }
}

function informational(_peer: Peer, result: CaseResult): void {
  result.behavior = "INFORMATIONAL";
  result.behaviorClose = "INFORMATIONAL";
}

const HELLO = "Hello, world!";
const BINARY_SMALL = hex(0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff);

/** Category 1: framing (text and binary messages of edge sizes). */
function framingCases(): Case[] {
  const cases: Case[] = [];
  const sizes = [0, 125, 126, 127, 128, 65535, 65536];
  for (const [group, binary] of [[1, false], [2, true]] as const) {
    const pattern = binary ? hex(0xfe) : utf8("*");
    const kind = binary ? "binary" : "text";
    sizes.forEach((size, index) => {
      cases.push({
        id: `1.${group}.${index + 1}`,
        description: `Send ${kind} message with payload length ${size}`,
        onOpen(peer) {
          const payload = repeatTo(pattern, size);
          expectEcho(peer, [message(payload, binary)]);
          peer.sendFrame({ opcode: binary ? 2 : 1, payload });
          peer.killAfter(10);
        },
      });
    });
    cases.push({
      id: `1.${group}.8`,
      description: `Send ${kind} message with payload length 65536, in chops of 997 octets`,
      onOpen(peer) {
        const payload = repeatTo(pattern, 65536);
        expectEcho(peer, [message(payload, binary)]);
        peer.sendFrame({ opcode: binary ? 2 : 1, payload, chopSize: 997 });
        peer.killAfter(10);
      },
    });
  }
  return cases;
}

/** Category 2: pings and pongs. */
function pingCases(): Case[] {
  const pingEcho = (id: string, description: string, payload: Uint8Array, chop = 0): Case => ({
    id,
    description,
    onOpen(peer) {
      expectEcho(peer, [pong(payload)]);
      peer.sendFrame({ opcode: 9, payload, chopSize: chop, sync: chop > 0 });
      peer.killAfter(10);
    },
  });
  const tenPings = (id: string, chop: number): Case => ({
    id,
    description: `Send 10 pings with payload${chop ? ", in chops of 1 octet" : ""}`,
    onOpen(peer) {
      const payloads = Array.from({ length: 10 }, (_, i) => utf8(`payload-${i}`));
      expectEcho(peer, payloads.map((payload) => pong(payload)));
      for (const payload of payloads) {
        peer.sendFrame({ opcode: 9, payload, chopSize: chop, sync: chop > 0 });
      }
      peer.killAfter(10);
    },
  });
  return [
    pingEcho("2.1", "Send ping without payload", new Uint8Array(0)),
    pingEcho("2.2", "Send ping with small text payload", utf8(HELLO)),
    pingEcho("2.3", "Send ping with small binary payload", BINARY_SMALL),
    pingEcho("2.4", "Send ping with 125-byte binary payload", repeatTo(hex(0xfe), 125)),
    {
      id: "2.5",
      description: "Send ping with 126-byte binary payload",
      onOpen(peer) {
        expectFail(peer, [PROTOCOL_ERROR]);
        peer.sendFrame({ opcode: 9, payload: repeatTo(hex(0xfe), 126) });
        peer.killAfter(5);
      },
    },
    pingEcho(
      "2.6",
      "Send ping with 125-byte payload in chops of 1 octet",
      repeatTo(hex(0xfe), 125),
      1,
    ),
    {
      id: "2.7",
      description: "Send unsolicited pong without payload",
      onOpen(peer) {
        expectEcho(peer, []);
        peer.sendFrame({ opcode: 10 });
        peer.closeAfter(1);
        peer.killAfter(10);
      },
    },
    {
      id: "2.8",
      description: "Send unsolicited pong with payload",
      onOpen(peer) {
        expectEcho(peer, []);
        peer.sendFrame({ opcode: 10, payload: "unsolicited pong payload" });
        peer.closeAfter(1);
        peer.killAfter(10);
      },
    },
    {
      id: "2.9",
      description: "Send unsolicited pong with payload, then ping with payload",
      onOpen(peer) {
        expectEcho(peer, [pong("ping payload")]);
        peer.sendFrame({ opcode: 10, payload: "unsolicited pong payload" });
        peer.sendFrame({ opcode: 9, payload: "ping payload" });
        peer.killAfter(10);
      },
    },
    tenPings("2.10", 0),
    tenPings("2.11", 1),
  ];
}

/** How frames are written: in one go, each on its own ("frame"), or byte by byte ("octet"). */
type Chops = "" | "frame" | "octet";

function chopOptions(mode: Chops): { chopSize: number; sync: boolean } {
  return { chopSize: mode === "octet" ? 1 : 0, sync: mode !== "" };
}

/**
 * Sends a text message, then the frame `bad` (a protocol violation), then a
 * ping, each frame written as the suite writes it: all in one go, each on
 * its own (`sync`), or in chops of one byte. The message arrived before the
 * violation: strict is its echo then the close; no echo is NON-STRICT.
 */
function textThenViolation(peer: Peer, bad: SendFrameOptions, mode: Chops): void {
  expectFail(peer, [PROTOCOL_ERROR], [message(HELLO)], []);
  const chops = chopOptions(mode);
  peer.sendFrame({ opcode: 1, payload: HELLO, ...chops });
  peer.sendFrame({ ...bad, ...chops });
  peer.sendFrame({ opcode: 9, ...chops });
  peer.killAfter(1);
}

/** Category 3: reserved bits. */
function reservedBitCases(): Case[] {
  const textThenBad = (id: string, rsv: number, mode: Chops): Case => ({
    id,
    description: `Send small text message, then again with RSV = ${rsv}, then a ping` +
      (mode ? ` (${mode}-wise chops)` : ""),
    onOpen(peer) {
      textThenViolation(peer, { opcode: 1, payload: HELLO, rsv }, mode);
    },
  });
  const bad = (id: string, description: string, frame: SendFrameOptions): Case => ({
    id,
    description,
    onOpen(peer) {
      expectFail(peer, [PROTOCOL_ERROR]);
      peer.sendFrame(frame);
      peer.killAfter(1);
    },
  });
  return [
    bad("3.1", "Send small text message with RSV = 1", { opcode: 1, payload: HELLO, rsv: 1 }),
    textThenBad("3.2", 2, ""),
    textThenBad("3.3", 3, "frame"),
    textThenBad("3.4", 4, "octet"),
    bad("3.5", "Send small binary message with RSV = 5", {
      opcode: 2,
      payload: BINARY_SMALL,
      rsv: 5,
    }),
    // The suite's 3.6 is described as a ping but sends a Binary frame: as it does.
    bad("3.6", "Send small binary message with RSV = 6", { opcode: 2, payload: HELLO, rsv: 6 }),
    bad("3.7", "Send close with RSV = 7", { opcode: 8, rsv: 7 }),
  ];
}

/** Category 4: reserved opcodes. */
function opcodeCases(): Case[] {
  const cases: Case[] = [];
  for (const [group, base] of [[1, 3], [2, 11]] as const) {
    for (let index = 0; index < 5; index++) {
      const opcode = base + index;
      const afterText = index >= 2;
      // As the suite: x.2 carries its own payload, x.4 and x.5 the text message's.
      const payload = index === 1 ? "reserved opcode payload" : index >= 3 ? HELLO : undefined;
      const mode: Chops = index === 4 ? "octet" : "";
      cases.push({
        id: `4.${group}.${index + 1}`,
        description: (afterText ? "Send small text message, then " : "Send ") +
          `frame with reserved ${group === 1 ? "non-" : ""}control opcode ${opcode}` +
          (payload !== undefined ? " and payload" : "") + (afterText ? ", then a ping" : "") +
          (mode ? " (octet-wise chops)" : ""),
        onOpen(peer) {
          if (afterText) {
            textThenViolation(peer, { opcode, payload }, mode);
            return;
          }
          expectFail(peer, [PROTOCOL_ERROR]);
          peer.sendFrame({ opcode, payload });
          peer.killAfter(1);
        },
      });
    }
  }
  return cases;
}

/** Category 5: fragmentation. */
function fragmentationCases(): Case[] {
  const modes: [Chops, string][] = [["", ""], ["frame", "frame-wise"], ["octet", "octet-wise"]];
  const cases: Case[] = [];
  for (const [id, opcode] of [["5.1", 9], ["5.2", 10]] as const) {
    cases.push({
      id,
      description: `Send ${opcode === 9 ? "ping" : "pong"} fragmented into 2 fragments`,
      onOpen(peer) {
        expectFail(peer, [PROTOCOL_ERROR]);
        peer.sendFrame({ opcode, payload: "fragment1", fin: false });
        peer.sendFrame({ opcode: 0, payload: "fragment2" });
        peer.killAfter(5);
      },
    });
  }
  modes.forEach(([mode, label], i) => {
    cases.push({
      id: `5.${3 + i}`,
      description: `Send text message fragmented into 2 fragments${
        label ? `, ${label} chops` : ""
      }`,
      onOpen(peer) {
        expectEcho(peer, [message("fragment1fragment2")]);
        const chops = chopOptions(mode);
        peer.sendFrame({ opcode: 1, payload: "fragment1", fin: false, ...chops });
        peer.sendFrame({ opcode: 0, payload: "fragment2", ...chops });
        peer.killAfter(10);
      },
    });
  });
  modes.forEach(([mode, label], i) => {
    cases.push({
      id: `5.${6 + i}`,
      description: "Send text message fragmented into 2 fragments, a ping between them" +
        (label ? `, ${label} chops` : ""),
      onOpen(peer) {
        expectEcho(peer, [pong("ping payload"), message("fragment1fragment2")]);
        const chops = chopOptions(mode);
        peer.sendFrame({ opcode: 1, payload: "fragment1", fin: false, ...chops });
        peer.sendFrame({ opcode: 9, payload: "ping payload", ...chops });
        peer.sendFrame({ opcode: 0, payload: "fragment2", ...chops });
        peer.killAfter(10);
      },
    });
  });
  for (const [start, fin] of [[9, true], [12, false]] as const) {
    modes.forEach(([mode, label], i) => {
      cases.push({
        id: `5.${start + i}`,
        description: `Send continuation frame with FIN = ${fin} and nothing to continue, ` +
          `then a text message${label ? `, ${label} chops` : ""}`,
        onOpen(peer) {
          expectFail(peer, [PROTOCOL_ERROR]);
          const chops = chopOptions(mode);
          peer.sendFrame({ opcode: 0, payload: "non-continuation payload", fin, ...chops });
          peer.sendFrame({ opcode: 1, payload: HELLO, ...chops });
          peer.killAfter(5);
        },
      });
    });
  }
  cases.push({
    id: "5.15",
    description: "Send text message in 2 fragments, then a continuation with nothing to " +
      "continue, then a text message",
    onOpen(peer) {
      expectFail(peer, [PROTOCOL_ERROR], [message("fragment1fragment2")], []);
      peer.sendFrame({ opcode: 1, payload: "fragment1", fin: false });
      peer.sendFrame({ opcode: 0, payload: "fragment2", fin: true });
      peer.sendFrame({ opcode: 0, payload: "fragment3", fin: false });
      peer.sendFrame({ opcode: 1, payload: "fragment4", fin: true });
      peer.killAfter(1);
    },
  });
  for (const [id, fin] of [["5.16", false], ["5.17", true]] as const) {
    cases.push({
      id,
      description: `Twice: continuation (FIN = ${fin}) with nothing to continue, then a text ` +
        "message in 2 fragments",
      onOpen(peer) {
        expectFail(peer, [PROTOCOL_ERROR]);
        for (let i = 0; i < 2; i++) {
          peer.sendFrame({ opcode: 0, payload: "fragment1", fin });
          peer.sendFrame({ opcode: 1, payload: "fragment2", fin: false });
          peer.sendFrame({ opcode: 0, payload: "fragment3", fin: true });
        }
        peer.killAfter(5);
      },
    });
  }
  cases.push({
    id: "5.18",
    description: "Send text message in 2 fragments, both with the text opcode",
    onOpen(peer) {
      expectFail(peer, [PROTOCOL_ERROR]);
      peer.sendFrame({ opcode: 1, payload: "fragment1", fin: false });
      peer.sendFrame({ opcode: 1, payload: "fragment2", fin: true });
      peer.killAfter(5);
    },
  });
  for (const [id, sync] of [["5.19", false], ["5.20", true]] as const) {
    cases.push({
      id,
      description: "Send text message in 5 fragments with pings in between and a pause" +
        (sync ? ", each frame on its own" : ""),
      onOpen(peer) {
        expectEcho(peer, [
          pong("pongme 1!"),
          pong("pongme 2!"),
          message("fragment1fragment2fragment3fragment4fragment5"),
        ]);
        peer.sendFrame({ opcode: 1, payload: "fragment1", fin: false, sync });
        peer.sendFrame({ opcode: 0, payload: "fragment2", fin: false, sync });
        peer.sendFrame({ opcode: 9, payload: "pongme 1!", sync });
        peer.continueLater(1, () => {
          peer.sendFrame({ opcode: 0, payload: "fragment3", fin: false, sync });
          peer.sendFrame({ opcode: 0, payload: "fragment4", fin: false, sync });
          peer.sendFrame({ opcode: 9, payload: "pongme 2!", sync });
          peer.sendFrame({ opcode: 0, payload: "fragment5", fin: true, sync });
        });
        peer.killAfter(10);
      },
    });
  }
  return cases;
}

/**
 * The UTF-8 decoder stress vectors (Markus Kuhn's UTF-8-test.txt), grouped
 * as the suite groups them in cases 6.5 to 6.23: [title, [valid, bytes][]].
 */
export function utf8Vectors(): [string, [boolean, Uint8Array][]][] {
  const groups: [string, [boolean, Uint8Array][]][] = [];
  const kosme = hex(0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5);
  const v = (...bytes: number[]): [boolean, Uint8Array] => [true, hex(...bytes)];
  const x = (...bytes: number[]): [boolean, Uint8Array] => [false, hex(...bytes)];
  const word = (bytes: number[]): [boolean, Uint8Array] => [
    true,
    concat([utf8("hello"), hex(...bytes), utf8("world")]),
  ];
  groups.push(["Some valid UTF-8 sequences", [
    word([0x24]),
    word([0xc2, 0xa2]),
    word([0xe2, 0x82, 0xac]),
    word([0xf0, 0xa4, 0xad, 0xa2]),
    [true, kosme],
  ]]);
  const boundaries = new Set([2, 5, 7, 9, 11]);
  groups.push([
    "All prefixes of a valid UTF-8 string that contains multi-byte code points",
    Array.from({ length: kosme.length }, (_, i) => [boundaries.has(i + 1), kosme.slice(0, i + 1)]),
  ]);
  groups.push(["First possible sequence of a certain length", [
    v(0x00),
    v(0xc2, 0x80),
    v(0xe0, 0xa0, 0x80),
    v(0xf0, 0x90, 0x80, 0x80),
  ]]);
  groups.push(["First possible sequence length 5/6 (invalid codepoints)", [
    x(0xf8, 0x88, 0x80, 0x80, 0x80),
    x(0xfc, 0x84, 0x80, 0x80, 0x80, 0x80),
  ]]);
  groups.push(["Last possible sequence of a certain length", [
    v(0x7f),
    v(0xdf, 0xbf),
    v(0xef, 0xbf, 0xbf),
    v(0xf4, 0x8f, 0xbf, 0xbf),
  ]]);
  groups.push(["Last possible sequence length 4/5/6 (invalid codepoints)", [
    x(0xf7, 0xbf, 0xbf, 0xbf),
    x(0xfb, 0xbf, 0xbf, 0xbf, 0xbf),
    x(0xfd, 0xbf, 0xbf, 0xbf, 0xbf, 0xbf),
  ]]);
  groups.push(["Other boundary conditions", [
    v(0xed, 0x9f, 0xbf),
    v(0xee, 0x80, 0x80),
    v(0xef, 0xbf, 0xbd),
    v(0xf4, 0x8f, 0xbf, 0xbf),
    x(0xf4, 0x90, 0x80, 0x80),
  ]]);
  const range = (from: number, to: number): number[] =>
    Array.from({ length: to - from }, (_, i) => from + i);
  groups.push(["Unexpected continuation bytes", [
    x(0x80),
    x(0xbf),
    x(0x80, 0xbf),
    x(0x80, 0xbf, 0x80),
    x(0x80, 0xbf, 0x80, 0xbf),
    x(0x80, 0xbf, 0x80, 0xbf, 0x80),
    x(0x80, 0xbf, 0x80, 0xbf, 0x80, 0xbf),
    x(...range(0x80, 0xbf)),
  ]]);
  groups.push([
    "Lonely start characters",
    [[0xc0, 0xdf], [0xe0, 0xef], [0xf0, 0xf7], [0xf8, 0xfb], [0xfc, 0xfd]].map((
      [from, to],
    ) => x(...range(from, to).flatMap((byte) => [byte, 0x20]))),
  ]);
  const missing = [
    [0xc0],
    [0xe0, 0x80],
    [0xf0, 0x80, 0x80],
    [0xf8, 0x80, 0x80, 0x80],
    [0xfc, 0x80, 0x80, 0x80, 0x80],
    [0xdf],
    [0xef, 0xbf],
    [0xf7, 0xbf, 0xbf],
    [0xfb, 0xbf, 0xbf, 0xbf],
    [0xfd, 0xbf, 0xbf, 0xbf, 0xbf],
  ];
  groups.push([
    "Sequences with last continuation byte missing",
    missing.map((bytes) => x(...bytes)),
  ]);
  groups.push(["Concatenation of incomplete sequences", [x(...missing.flat())]]);
  groups.push(["Impossible bytes", [x(0xfe), x(0xff), x(0xfe, 0xfe, 0xff, 0xff)]]);
  groups.push(["Examples of an overlong ASCII character", [
    x(0xc0, 0xaf),
    x(0xe0, 0x80, 0xaf),
    x(0xf0, 0x80, 0x80, 0xaf),
    x(0xf8, 0x80, 0x80, 0x80, 0xaf),
    x(0xfc, 0x80, 0x80, 0x80, 0x80, 0xaf),
  ]]);
  groups.push(["Maximum overlong sequences", [
    x(0xc1, 0xbf),
    x(0xe0, 0x9f, 0xbf),
    x(0xf0, 0x8f, 0xbf, 0xbf),
    x(0xf8, 0x87, 0xbf, 0xbf, 0xbf),
    x(0xfc, 0x83, 0xbf, 0xbf, 0xbf, 0xbf),
  ]]);
  groups.push(["Overlong representation of the NUL character", [
    x(0xc0, 0x80),
    x(0xe0, 0x80, 0x80),
    x(0xf0, 0x80, 0x80, 0x80),
    x(0xf8, 0x80, 0x80, 0x80, 0x80),
    x(0xfc, 0x80, 0x80, 0x80, 0x80, 0x80),
  ]]);
  const single = [[0xa0, 0x80], [0xad, 0xbf], [0xae, 0x80], [0xaf, 0xbf], [0xb0, 0x80], [
    0xbe,
    0x80,
  ], [0xbf, 0xbf]];
  groups.push(["Single UTF-16 surrogates", single.map((tail) => x(0xed, ...tail))]);
  const high = [[0xa0, 0x80], [0xad, 0xbf], [0xae, 0x80], [0xaf, 0xbf]];
  const low = [[0xb0, 0x80], [0xbf, 0xbf]];
  groups.push([
    "Paired UTF-16 surrogates",
    high.flatMap((h) => low.map((l) => x(0xed, ...h, 0xed, ...l))),
  ]);
  const nonCharacters: [boolean, Uint8Array][] = [v(0xef, 0xbf, 0xbe), v(0xef, 0xbf, 0xbf)];
  for (const first of [0xf0, 0xf1, 0xf2, 0xf3, 0xf4]) {
    for (const second of [0x8f, 0x9f, 0xaf, 0xbf]) {
      if (first === 0xf4 && second !== 0x8f) continue; // beyond U+10FFFF
      if (first === 0xf0 && second === 0x8f) continue; // overlong
      for (const last of [0xbe, 0xbf]) nonCharacters.push(v(first, second, 0xbf, last));
    }
  }
  groups.push(["Non-character code points (valid UTF-8)", nonCharacters]);
  groups.push(["Unicode specials (i.e. replacement char)", [
    v(0xef, 0xbf, 0xb9),
    v(0xef, 0xbf, 0xba),
    v(0xef, 0xbf, 0xbb),
    v(0xef, 0xbf, 0xbc),
    v(0xef, 0xbf, 0xbd),
    v(0xef, 0xbf, 0xbe),
    v(0xef, 0xbf, 0xbf),
  ]]);
  return groups;
}

/** Category 6: UTF-8 handling. */
function utf8Cases(): Case[] {
  const cases: Case[] = [];
  const fragmentsEcho = (id: string, description: string, parts: Uint8Array[]): Case => ({
    id,
    description,
    onOpen(peer) {
      expectEcho(peer, [message(concat(parts))]);
      parts.forEach((part, i) => {
        peer.sendFrame({ opcode: i === 0 ? 1 : 0, payload: part, fin: i === parts.length - 1 });
      });
      peer.killAfter(10);
    },
  });
  cases.push(fragmentsEcho("6.1.1", "Send text message of length 0", [new Uint8Array(0)]));
  cases.push(fragmentsEcho("6.1.2", "Send text message in 3 empty fragments", [
    new Uint8Array(0),
    new Uint8Array(0),
    new Uint8Array(0),
  ]));
  cases.push(
    fragmentsEcho("6.1.3", "Send text message in 3 fragments, first and last empty", [
      new Uint8Array(0),
      utf8("middle frame payload"),
      new Uint8Array(0),
    ]),
  );
  const mixed = utf8("Hello-µ@ßöäüàá-UTF-8!!");
  const kosme = hex(0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5);
  const octets = (bytes: Uint8Array): Uint8Array[] => Array.from(bytes, (byte) => hex(byte));
  cases.push(fragmentsEcho("6.2.1", "Send valid UTF-8 text message in one fragment", [mixed]));
  cases.push(fragmentsEcho(
    "6.2.2",
    "Send valid UTF-8 text message in 2 fragments split on a code point boundary",
    [utf8("Hello-µ@ßöä"), utf8("üàá-UTF-8!!")],
  ));
  cases.push(fragmentsEcho(
    "6.2.3",
    "Send valid UTF-8 text message in fragments of 1 octet",
    octets(mixed),
  ));
  cases.push(fragmentsEcho(
    "6.2.4",
    "Send valid UTF-8 text message (κόσμε) in fragments of 1 octet",
    octets(kosme),
  ));
  const invalid = concat([kosme, hex(0xed, 0xa0, 0x80), utf8("edited")]);
  cases.push({
    id: "6.3.1",
    description: "Send invalid UTF-8 text message unfragmented",
    onOpen(peer) {
      expectFail(peer, [INVALID_PAYLOAD], [], undefined, true);
      peer.sendFrame({ opcode: 1, payload: invalid });
      peer.killAfter(5);
    },
  });
  cases.push({
    id: "6.3.2",
    description: "Send invalid UTF-8 text message in fragments of 1 octet",
    onOpen(peer) {
      expectFail(peer, [INVALID_PAYLOAD], [], undefined, true);
      const parts = octets(invalid);
      parts.forEach((part, i) => {
        peer.sendFrame({ opcode: i === 0 ? 1 : 0, payload: part, fin: i === parts.length - 1 });
      });
      peer.killAfter(5);
    },
  });
  // 6.4.x: fail fast on invalid UTF-8 in the middle of a message.
  const part1 = kosme;
  const part2 = hex(0xf4, 0x90, 0x80, 0x80);
  const part3 = utf8("edited");
  const whole = concat([part1, part2, part3]);
  const threeParts: [string, Uint8Array[]][] = [
    ["6.4.1", [part1, part2, part3]],
    ["6.4.2", [whole.subarray(0, 12), whole.subarray(12, 13), whole.subarray(13)]],
  ];
  for (const [id, parts] of threeParts) {
    cases.push({
      id,
      description: "Send invalid UTF-8 text message in 3 frames with pauses; the second " +
        "frame makes it invalid",
      onOpen(peer) {
        expectFail(peer, [INVALID_PAYLOAD], [timeout("A")], [timeout("A"), timeout("B")], true);
        peer.sendFrame({ opcode: 1, payload: parts[0], fin: false });
        peer.continueLater(1, () => {
          if (peer.state !== "open") return;
          peer.received.push(timeout("A"));
          peer.sendFrame({ opcode: 0, payload: parts[1], fin: false });
          peer.continueLater(1, () => {
            if (peer.state !== "open") return;
            peer.received.push(timeout("B"));
            peer.sendFrame({ opcode: 0, payload: parts[2], fin: true });
            peer.killAfter(1);
          });
        });
      },
    });
  }
  const chopped: [string, Uint8Array[]][] = [
    ["6.4.3", [part1, part2, part3]],
    ["6.4.4", [whole.subarray(0, 12), whole.subarray(12, 13), whole.subarray(13)]],
  ];
  for (const [id, parts] of chopped) {
    cases.push({
      id,
      description: "Send invalid UTF-8 text message in one frame written in 3 chops with " +
        "pauses; the second chop makes it invalid",
      // Failing when the frame is complete instead of at the second chop is NON-STRICT: text
      // is validated as it arrives.
      onOpen(peer) {
        expectFail(peer, [INVALID_PAYLOAD], [timeout("A")], [timeout("A"), timeout("B")], true);
        const [header, key] = peer.frameHeader(1, whole.length);
        peer.sendRaw(concat([header, Peer.maskAt(parts[0], key, 0)]));
        peer.continueLater(1, () => {
          if (peer.state !== "open") return;
          peer.received.push(timeout("A"));
          peer.sendRaw(Peer.maskAt(parts[1], key, parts[0].length));
          peer.continueLater(1, () => {
            if (peer.state !== "open") return;
            peer.received.push(timeout("B"));
            peer.sendRaw(Peer.maskAt(parts[2], key, parts[0].length + parts[1].length));
            peer.killAfter(1);
          });
        });
      },
    });
  }
  utf8Vectors().forEach(([title, vectors], group) => {
    vectors.forEach(([valid, payload], index) => {
      cases.push({
        id: `6.${group + 5}.${index + 1}`,
        description: `${title}: send ${valid ? "valid" : "invalid"} UTF-8 text message ` +
          `0x${Array.from(payload, (b) => b.toString(16).padStart(2, "0")).join("")}`,
        onOpen(peer) {
          if (valid) expectEcho(peer, [message(payload)]);
          else expectFail(peer, [INVALID_PAYLOAD], [], undefined, true);
          peer.sendFrame({ opcode: 1, payload });
          peer.killAfter(5);
        },
      });
    });
  });
  return cases;
}

/** Category 7: closing handshake. */
function closeCases(): Case[] {
  const cases: Case[] = [
    {
      id: "7.1.1",
      description: "Send a message, then close once it is echoed",
      onOpen(peer) {
        expectEcho(peer, [message("Hello World!")]);
        peer.sendFrame({ opcode: 1, payload: "Hello World!" });
        peer.killAfter(10);
      },
    },
    {
      id: "7.1.2",
      description: "Send two close frames",
      onOpen(peer) {
        expectEcho(peer, []);
        peer.sendClose(NORMAL);
        peer.sendFrame({ opcode: 8, payload: hex(0x03, 0xe8) });
        peer.killAfter(10);
      },
    },
    {
      id: "7.1.3",
      description: "Send a ping after a close frame",
      onOpen(peer) {
        expectEcho(peer, []);
        peer.sendClose(NORMAL);
        peer.sendFrame({ opcode: 9, payload: HELLO });
        peer.killAfter(10);
      },
    },
    {
      id: "7.1.4",
      description: "Send a text message after a close frame",
      onOpen(peer) {
        expectEcho(peer, []);
        peer.sendClose(NORMAL);
        peer.sendFrame({ opcode: 1, payload: HELLO });
        peer.killAfter(10);
      },
    },
    {
      id: "7.1.5",
      description: "Send message fragment 1, then a close frame, then fragment 2",
      onOpen(peer) {
        expectEcho(peer, []);
        peer.sendFrame({ opcode: 1, payload: "fragment1", fin: false });
        peer.sendClose(NORMAL);
        peer.sendFrame({ opcode: 0, payload: "fragment2" });
        peer.killAfter(10);
      },
    },
    {
      id: "7.1.6",
      description: "Send a 256 KiB message, then a message, a close frame and a ping",
      onConnectionLost: informational,
      onOpen(peer) {
        peer.suppressClose = true;
        peer.expected = { OK: [message("Hello World!")], "NON-STRICT": [] };
        peer.expectedClose = { closedByMe: true, codes: [NORMAL], requireClean: true };
        peer.sendFrame({ opcode: 1, payload: "BAsd7&jh23", payloadLength: 256 * 1024 });
        peer.sendFrame({ opcode: 1, payload: "Hello World!" });
        peer.sendClose(NORMAL);
        peer.sendFrame({ opcode: 9 });
        peer.killAfter(10);
      },
    },
  ];
  const closeWith = (
    id: string,
    description: string,
    code: number | undefined,
    reason: Uint8Array,
    codes: number[],
    clean: boolean,
  ): Case => ({
    id,
    description,
    onConnectionLost: wrongCodeFails,
    onOpen(peer) {
      peer.suppressClose = true;
      peer.expected = { OK: [] };
      peer.expectedClose = { closedByMe: true, codes, requireClean: clean };
      peer.sendCloseFrame(code, reason);
      peer.killAfter(5);
    },
  });
  cases.push(
    closeWith("7.3.1", "Send close with no payload", undefined, new Uint8Array(0), [NORMAL], true),
  );
  cases.push(
    closeWith("7.3.2", "Send close with payload length 1", undefined, utf8("a"), [
      PROTOCOL_ERROR,
    ], false),
  );
  cases.push(
    closeWith("7.3.3", "Send close with code 1000 and no reason", NORMAL, new Uint8Array(0), [
      NORMAL,
    ], true),
  );
  cases.push(
    closeWith("7.3.4", "Send close with code and a short reason", NORMAL, utf8("Hello World!"), [
      NORMAL,
    ], true),
  );
  cases.push(
    closeWith(
      "7.3.5",
      "Send close with code and a 123-byte reason",
      NORMAL,
      repeatTo(
        utf8("*"),
        123,
      ),
      [NORMAL],
      true,
    ),
  );
  cases.push(
    closeWith(
      "7.3.6",
      "Send close with code and a 124-byte reason",
      NORMAL,
      repeatTo(
        utf8("*"),
        124,
      ),
      [PROTOCOL_ERROR],
      false,
    ),
  );
  cases.push(closeWith(
    "7.5.1",
    "Send close with an invalid UTF-8 reason",
    NORMAL,
    concat([
      hex(0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80),
      utf8("edited"),
    ]),
    [PROTOCOL_ERROR, INVALID_PAYLOAD],
    false,
  ));
  [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999].forEach(
    (code, i) => {
      cases.push(closeWith(
        `7.7.${i + 1}`,
        `Send close with valid code ${code}`,
        code,
        new Uint8Array(0),
        [NORMAL, code],
        true,
      ));
    },
  );
  [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999].forEach((code, i) => {
    cases.push(closeWith(
      `7.9.${i + 1}`,
      `Send close with invalid code ${code}`,
      code,
      new Uint8Array(0),
      [PROTOCOL_ERROR],
      false,
    ));
  });
  // Codes 1012-1015 were invalid in older suites; 1012-1014 are registered now, 1015 never goes on
  // the wire: check that 1015 fails and 1012-1014 are echoed (graded like 7.7.x).
  cases.push(closeWith("7.9.x-1015", "Send close with code 1015", 1015, new Uint8Array(0), [
    PROTOCOL_ERROR,
  ], false));
  [1012, 1013, 1014].forEach((code) => {
    cases.push(closeWith(`7.7.x-${code}`, `Send close with code ${code}`, code, new Uint8Array(0), [
      NORMAL,
      code,
    ], true));
  });
  for (const [id, code] of [["7.13.1", 5000], ["7.13.2", 65535]] as const) {
    cases.push({
      id,
      description: `Send close with code ${code}`,
      onConnectionLost: informational,
      onOpen(peer) {
        peer.suppressClose = true;
        peer.expected = { OK: [] };
        peer.expectedClose = {
          closedByMe: true,
          codes: [NORMAL, code, PROTOCOL_ERROR],
          requireClean: false,
        };
        peer.data.strictCodes = [PROTOCOL_ERROR];
        peer.sendCloseFrame(code);
        peer.killAfter(5);
      },
    });
  }
  return cases;
}

/** Category 9: limits and performance (sizes up to `maxSize`). */
function limitCases(maxSize: number, repeats: number): Case[] {
  const cases: Case[] = [];
  const echoOnce = (
    id: string,
    description: string,
    payload: Uint8Array,
    binary: boolean,
    send: (peer: Peer) => void,
  ): Case => ({
    id,
    description,
    limit: 60_000,
    onOpen(peer) {
      expectEcho(peer, [message(payload, binary)]);
      send(peer);
      peer.killAfter(250);
    },
  });
  const sizes = [64, 256, 1024, 4096, 8192, 16384].map((k) => k * 1024);
  for (const [group, binary] of [[1, false], [2, true]] as const) {
    const pattern = binary ? hex(0x00, 0xfe, 0x23, 0xfa, 0xf0) : utf8("BAsd7&jh23");
    sizes.forEach((size, i) => {
      if (size > maxSize) return;
      const payload = repeatTo(pattern, size);
      cases.push(echoOnce(
        `9.${group}.${i + 1}`,
        `Send ${binary ? "binary" : "text"} message of ${size} bytes`,
        payload,
        binary,
        (peer) => peer.sendFrame({ opcode: binary ? 2 : 1, payload }),
      ));
    });
  }
  const fragmentSizes = [64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304];
  for (const [group, binary] of [[3, false], [4, true]] as const) {
    const size = 4 * 1024 * 1024;
    if (size > maxSize) continue;
    const payload = repeatTo(binary ? hex(0x00, 0xfe, 0x23, 0xfa, 0xf0) : utf8("*"), size);
    fragmentSizes.forEach((fragment, i) => {
      cases.push(echoOnce(
        `9.${group}.${i + 1}`,
        `Send ${size}-byte ${binary ? "binary" : "text"} message in fragments of ${fragment}`,
        payload,
        binary,
        (peer) => {
          peer.autoFragmentSize = fragment;
          peer.sendMessage(payload, binary);
        },
      ));
    });
  }
  for (const [group, binary] of [[5, false], [6, true]] as const) {
    const payload = repeatTo(binary ? hex(0xfe) : utf8("*"), 1024 * 1024);
    [64, 128, 256, 512, 1024, 2048].forEach((chop, i) => {
      cases.push(echoOnce(
        `9.${group}.${i + 1}`,
        `Send 1 MiB ${binary ? "binary" : "text"} message in chops of ${chop} octets`,
        payload,
        binary,
        (peer) => peer.sendFrame({ opcode: binary ? 2 : 1, payload, chopSize: chop }),
      ));
    });
  }
  for (const [group, binary] of [[7, false], [8, true]] as const) {
    [0, 16, 64, 256, 1024, 4096].forEach((size, i) => {
      const payload = repeatTo(binary ? hex(0xfe) : utf8("*"), size);
      cases.push({
        id: `9.${group}.${i + 1}`,
        description: `Send ${repeats} ${binary ? "binary" : "text"} messages of ${size} ` +
          "bytes, one after the echo of the other",
        limit: 60_000,
        onOpen(peer) {
          peer.expected = {};
          peer.expectedClose = { closedByMe: true, codes: [NORMAL], requireClean: true };
          peer.forced = { behavior: "FAILED", result: "not all messages were echoed" };
          peer.data.count = 1;
          peer.sendFrame({ opcode: binary ? 2 : 1, payload });
          peer.killAfter(250);
        },
        onMessage(peer, data, isBinary) {
          if (isBinary !== binary || !bytesEqual(data, payload)) {
            peer.forced = { behavior: "FAILED", result: "echoed message differs" };
            peer.sendClose(NORMAL);
            return;
          }
          const count = peer.data.count as number;
          if (count < repeats) {
            peer.data.count = count + 1;
            peer.sendFrame({ opcode: binary ? 2 : 1, payload });
          } else {
            peer.forced = { behavior: "OK", result: "all messages echoed" };
            peer.sendClose(NORMAL);
          }
        },
      });
    });
  }
  return cases;
}

/** Category 10: auto-fragmentation. */
function autoFragmentationCases(): Case[] {
  return [{
    id: "10.1.1",
    description: "Send text message of 65536 bytes auto-fragmented in frames of 1300",
    onOpen(peer) {
      const payload = repeatTo(utf8("*"), 65536);
      expectEcho(peer, [message(payload)]);
      peer.autoFragmentSize = 1300;
      peer.sendMessage(payload);
      peer.killAfter(10);
    },
  }];
}

/** Deterministic test data for the compression cases. */
function testData(kind: "text" | "json" | "binary", length: number): Uint8Array {
  let seed = kind === "text" ? 1 : kind === "json" ? 2 : 3;
  const random = (): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed;
  };
  if (kind === "binary") {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = (random() >> 16) % (i % 512 < 256 ? 16 : 256);
    return out;
  }
  const words = [
    "Habe",
    "nun",
    "ach",
    "Philosophie",
    "Juristerei",
    "und",
    "Medizin",
    "leider",
    "auch",
    "Theologie",
    "durchaus",
    "studiert",
    "mit",
    "heißem",
    "Bemühn",
    "Größe",
  ];
  let text = "";
  let id = 0;
  while (text.length < length * 1.2) {
    if (kind === "json") {
      text += JSON.stringify({
        id: id++,
        name: words[random() % words.length],
        tags: [words[random() % words.length], words[random() % words.length]],
        value: random() % 10000,
      }) + ",\n";
    } else {
      text += words[random() % words.length] + (random() % 9 === 0 ? ".\n" : " ");
    }
  }
  // Cut on a code point boundary near `length`... any cut is fine for the source: slices are
  // taken on character boundaries below.
  return utf8(text);
}

/** Takes `length` bytes from `source` at `from`, wrapping, extended to a UTF-8 boundary. */
function slice(source: Uint8Array, from: number, length: number, text: boolean): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = source[(from + i) % source.length];
  if (!text) return out;
  // Replace bytes of cut multi-byte characters at both ends with ASCII.
  for (let i = 0; i < 4 && i < out.length && (out[i] & 0xc0) === 0x80; i++) out[i] = 0x2e;
  const end = out.length - 1;
  for (let i = 0; i < 4 && end - i >= 0; i++) {
    const byte = out[end - i];
    if ((byte & 0x80) === 0) break;
    if ((byte & 0xc0) === 0xc0) {
      const need = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : 2;
      if (i + 1 < need) { for (let j = end - i; j <= end; j++) out[j] = 0x2e; }
      break;
    }
  }
  return out;
}

type Accept = (offers: DeflateOffer[]) => DeflateAccept | undefined;

const acceptAny: Accept = (offers) =>
  offers.length
    ? { offer: offers[0], requestNoContextTakeover: false, requestMaxWindowBits: 0 }
    : undefined;

function acceptWith(noContextTakeover: boolean, windowBits: number): Accept {
  return (offers) => {
    for (const offer of offers) {
      if (noContextTakeover && !offer.acceptNoContextTakeover) continue;
      if (windowBits !== 0 && !offer.acceptMaxWindowBits) continue;
      return {
        offer,
        requestNoContextTakeover: noContextTakeover,
        requestMaxWindowBits: windowBits,
      };
    }
    return undefined;
  };
}

function compressionCase(
  id: string,
  description: string,
  offers: DeflateOffer[],
  accept: Accept,
  data: Uint8Array,
  binary: boolean,
  size: number,
  fragment: number,
  count: number,
): Case {
  const sendOne = (peer: Peer): void => {
    const from = (peer.data.position as number) ?? 0;
    const payload = slice(data, from, size, !binary);
    peer.data.position = (from + size) % data.length;
    peer.data.expect = payload;
    peer.data.sent = ((peer.data.sent as number) ?? 0) + 1;
    peer.sendMessage(payload, binary);
  };
  return {
    id,
    description,
    deflate: { offers, accept },
    limit: 60_000,
    onOpen(peer) {
      peer.expected = {};
      peer.expectedClose = { closedByMe: true, codes: [NORMAL], requireClean: true };
      if (peer.deflate === undefined) {
        peer.forced = { behavior: "UNIMPLEMENTED", result: "permessage-deflate not negotiated" };
        peer.sendClose(NORMAL);
        return;
      }
      peer.forced = { behavior: "FAILED", result: "not all messages were echoed" };
      peer.autoFragmentSize = fragment;
      sendOne(peer);
      peer.killAfter(250);
    },
    onMessage(peer, received, isBinary) {
      const expected = peer.data.expect as Uint8Array;
      if (isBinary !== binary || !bytesEqual(received, expected)) {
        peer.forced = {
          behavior: "FAILED",
          result:
            `echoed message differs (got ${received.length} bytes, expected ${expected.length})`,
        };
        peer.sendClose(NORMAL);
      } else if ((peer.data.sent as number) < count) {
        sendOne(peer);
      } else {
        peer.forced = { behavior: "OK", result: "all messages echoed" };
        peer.sendClose(NORMAL);
      }
    },
  };
}

/** The (size, auto-fragment) pairs of the compression cases, in the suite's order. */
export const COMPRESSION_SIZES: [number, number][] = [
  [16, 0],
  [64, 0],
  [256, 0],
  [1024, 0],
  [4096, 0],
  [8192, 0],
  [16384, 0],
  [32768, 0],
  [65536, 0],
  [131072, 0],
  [8192, 256],
  [16384, 256],
  [32768, 256],
  [65536, 256],
  [131072, 256],
  [131072, 1024],
  [131072, 4096],
  [131072, 32768],
];

/**
 * Category 12: permessage-deflate with the default offer, on five kinds of
 * data; `pick` selects the size indexes (1-based) to run.
 */
function deflateDefaultCases(pick: number[], count: number): Case[] {
  const kinds: [string, "text" | "json" | "binary", boolean][] = [
    ["human readable text", "text", false],
    ["bitmap-like binary", "binary", true],
    ["binary document", "binary", true],
    ["large JSON", "json", false],
    ["large HTML-like text", "text", false],
  ];
  const cases: Case[] = [];
  kinds.forEach(([label, kind, binary], group) => {
    const data = testData(kind, 256 * 1024);
    for (const index of pick) {
      const [size, fragment] = COMPRESSION_SIZES[index - 1];
      cases.push(compressionCase(
        `12.${group + 1}.${index}`,
        `Send ${count} compressed ${label} messages of ${size} bytes, auto-fragment ${fragment}, ` +
          "default offer",
        [deflateOffer()],
        acceptAny,
        data,
        binary,
        size,
        fragment,
        count,
      ));
    }
  });
  return cases;
}

/** Category 13: permessage-deflate parameter combinations 13.1–13.7. */
function deflateParameterCases(pick: number[], count: number): Case[] {
  const combos: [string, Accept, DeflateOffer[]][] = [
    ["offer (False, 0) / accept (False, 0)", acceptWith(false, 0), [deflateOffer()]],
    ["offer (True, 0) / accept (True, 0)", acceptWith(true, 0), [deflateOffer(true, 0)]],
    ["offer (False, 8) / accept (False, 8)", acceptWith(false, 8), [deflateOffer(false, 8)]],
    ["offer (False, 15) / accept (False, 15)", acceptWith(false, 15), [deflateOffer(false, 15)]],
    ["offer (True, 8) / accept (True, 8)", acceptWith(true, 8), [deflateOffer(true, 8)]],
    ["offer (True, 15) / accept (True, 15)", acceptWith(true, 15), [deflateOffer(true, 15)]],
    [
      "offers [(True, 8), (True, 0), (False, 0)] / accept [(True, 8), (True, 0), (False, 0)]",
      (offers) => acceptWith(true, 8)(offers) ?? acceptWith(true, 0)(offers) ?? acceptAny(offers),
      [deflateOffer(true, 8), deflateOffer(true, 0), deflateOffer()],
    ],
  ];
  const data = testData("json", 256 * 1024);
  const cases: Case[] = [];
  combos.forEach(([label, accept, offers], group) => {
    for (const index of pick) {
      const [size, fragment] = COMPRESSION_SIZES[index - 1];
      cases.push(compressionCase(
        `13.${group + 1}.${index}`,
        `Send ${count} compressed JSON messages of ${size} bytes, auto-fragment ${fragment}, ` +
          label,
        offers,
        accept,
        data,
        false,
        size,
        fragment,
        count,
      ));
    }
  });
  return cases;
}

/** Options selecting how much of the suite to run. */
export interface CatalogueOptions {
  /** Largest message of category 9 (default 4 MiB). */
  maxSize?: number;
  /** Messages of the 9.7/9.8 round-trip cases (suite: 1000). */
  repeats?: number;
  /** Size indexes (1–18) of the compression cases to run. */
  compressionSizes?: number[];
  /** Messages per compression case (suite: 1000). */
  compressionCount?: number;
}

/** The cases, by category number. */
export function catalogue(options: CatalogueOptions = {}): Record<string, Case[]> {
  const sizes = options.compressionSizes ?? [1, 4, 10, 11, 17];
  const count = options.compressionCount ?? 10;
  return {
    "1": framingCases(),
    "2": pingCases(),
    "3": reservedBitCases(),
    "4": opcodeCases(),
    "5": fragmentationCases(),
    "6": utf8Cases(),
    "7": closeCases(),
    "9": limitCases(options.maxSize ?? 4 * 1024 * 1024, options.repeats ?? 1000),
    "10": autoFragmentationCases(),
    "12": deflateDefaultCases(sizes, count),
    "13": deflateParameterCases(sizes, count),
  };
}
