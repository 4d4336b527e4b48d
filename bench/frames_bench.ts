/**
 * Frame parsing, masking and serializing: ours against npm `ws` 8, in one run.
 *
 *     deno bench -A bench/frames_bench.ts
 *
 * `ws` is measured twice in the same process: with its `bufferutil` native
 * addon (loaded through Node-API; `ws` uses it for payloads of 32 bytes and
 * more) and with its pure JavaScript fallback (a second copy of `ws`'s modules
 * loaded with `WS_NO_BUFFER_UTIL=1`). When the addon doesn't load, the
 * "ws + bufferutil" rows are left out and a line says so.
 *
 * Fairness: every implementation gets its own copy of the same bytes, cut into
 * the same 64 KiB chunks, and must hand over every frame (ours: `next()` until
 * `undefined`; `ws`: a `message` listener). Both unmask in place, so a buffer
 * alternates between masked and unmasked across iterations for both alike:
 * payloads are binary, never validated, and parse the same either way. A check
 * before the benchmarks asserts that all of them see the same frames.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createRequire } from "node:module";
import process from "node:process";
// Imported so that `ws`'s optional peer dependency resolves.
import "npm:bufferutil@4.1.0";
import "npm:ws@8.23.0";
import { applyMask, Frame, FrameReader, Opcode } from "../frames.ts";

type WsMask = (
  source: Uint8Array,
  mask: Uint8Array,
  output: Uint8Array,
  offset: number,
  length: number,
) => void;

interface WsReceiver {
  on(
    event: "message",
    listener: (data: Uint8Array, isBinary: boolean) => void,
  ): this;
  on(event: "error", listener: (error: Error) => void): this;
  write(chunk: Uint8Array): boolean;
}

interface Ws {
  Receiver: new (options: {
    isServer: boolean;
    maxPayload: number;
    allowSynchronousEvents: boolean;
  }) => WsReceiver;
  Sender: {
    frame(
      data: Uint8Array,
      options: {
        fin: boolean;
        opcode: number;
        mask: boolean;
        readOnly: boolean;
      },
    ): Uint8Array[];
  };
  unmask(buffer: Uint8Array, mask: Uint8Array): void;
  mask: WsMask;
  name: string;
}

const require = createRequire(import.meta.resolve("npm:ws@8.23.0"));

/** Loads `ws`'s receiver, sender and buffer utilities, fresh, as they load with `env`. */
function loadWs(name: string, noBufferUtil: boolean): Ws {
  for (const key of Object.keys(require.cache)) {
    if (key.includes("/ws/")) delete require.cache[key];
  }
  if (noBufferUtil) process.env.WS_NO_BUFFER_UTIL = "1";
  try {
    const bufferUtil = require("./lib/buffer-util.js");
    return {
      Receiver: require("./lib/receiver.js"),
      Sender: require("./lib/sender.js"),
      unmask: bufferUtil.unmask,
      mask: bufferUtil.mask,
      name,
    };
  } finally {
    if (noBufferUtil) delete process.env.WS_NO_BUFFER_UTIL;
  }
}

function nativeBufferUtilLoads(): boolean {
  try {
    const addon = createRequire(import.meta.resolve("npm:bufferutil@4.1.0"))(
      "bufferutil",
    );
    return String(addon.unmask).includes("[native code]");
  } catch {
    return false;
  }
}

const implementations: Ws[] = [];
if (nativeBufferUtilLoads()) {
  implementations.push(loadWs("ws + bufferutil", false));
} else {
  console.log(
    "bufferutil's native addon did not load: only ws's JavaScript fallback runs",
  );
}
implementations.push(loadWs("ws (JS fallback)", true));

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 64 * KiB;

/** Deterministic payload bytes. */
function payload(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let state = seed;
  for (let i = 0; i < length; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    out[i] = state >>> 24;
  }
  return out;
}

/** Masked binary frames of `size`-byte payloads, `total` bytes of wire data or just over. */
function maskedStream(size: number, total: number): Uint8Array {
  const frames: Uint8Array[] = [];
  let length = 0;
  for (let i = 0; length < total; i++) {
    const wire = new Frame(Opcode.BINARY, payload(size, i)).serialize({
      mask: true,
    });
    frames.push(wire);
    length += wire.length;
  }
  const out = new Uint8Array(length);
  let offset = 0;
  for (const wire of frames) {
    out.set(wire, offset);
    offset += wire.length;
  }
  return out;
}

/** A copy of `stream` in `Buffer` chunks of `CHUNK` bytes, views of one buffer. */
function chunked(stream: Uint8Array): Buffer[] {
  const copy = Buffer.from(stream);
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < copy.length; offset += CHUNK) {
    chunks.push(copy.subarray(offset, offset + CHUNK));
  }
  return chunks;
}

interface Totals {
  frames: number;
  bytes: number;
}

function parseOurs(chunks: Uint8Array[]): Totals {
  const reader = new FrameReader({ mask: true, maxSize: MiB });
  let frames = 0;
  let bytes = 0;
  for (const chunk of chunks) {
    reader.feed(chunk);
    for (
      let frame = reader.next();
      frame !== undefined;
      frame = reader.next()
    ) {
      frames++;
      bytes += frame.data.length;
    }
  }
  return { frames, bytes };
}

function parseWs(ws: Ws, chunks: Uint8Array[]): Totals {
  const receiver = new ws.Receiver({
    isServer: true,
    maxPayload: MiB,
    allowSynchronousEvents: true,
  });
  const totals = { frames: 0, bytes: 0 };
  receiver.on("message", (data) => {
    totals.frames++;
    totals.bytes += data.length;
  });
  receiver.on("error", (error) => {
    throw error;
  });
  for (const chunk of chunks) receiver.write(chunk);
  return totals;
}

/** A checksum of every payload the reader returns, to compare implementations once. */
function checksumOurs(chunks: Uint8Array[]): number {
  const reader = new FrameReader({ mask: true, maxSize: MiB });
  let sum = 0;
  for (const chunk of chunks) {
    reader.feed(chunk);
    for (
      let frame = reader.next();
      frame !== undefined;
      frame = reader.next()
    ) {
      for (const byte of frame.data) sum = (Math.imul(sum, 31) + byte) >>> 0;
    }
  }
  return sum;
}

function checksumWs(ws: Ws, chunks: Uint8Array[]): number {
  const receiver = new ws.Receiver({
    isServer: true,
    maxPayload: MiB,
    allowSynchronousEvents: true,
  });
  let sum = 0;
  receiver.on("message", (data) => {
    for (const byte of data) sum = (Math.imul(sum, 31) + byte) >>> 0;
  });
  for (const chunk of chunks) receiver.write(chunk);
  return sum;
}

function sameFrames(name: string, stream: Uint8Array): void {
  const expected = checksumOurs(chunked(stream));
  for (const ws of implementations) {
    const actual = checksumWs(ws, chunked(stream));
    if (actual !== expected) {
      throw new Error(`${name}: ${ws.name} saw other payloads than ours`);
    }
  }
}

// ---- Parsing ----

const parseCases = [
  {
    group: "parse 1 MiB of 32-byte masked frames (64 KiB chunks)",
    stream: maskedStream(32, MiB),
  },
  {
    group: "parse one 1 MiB masked frame (64 KiB chunks)",
    stream: maskedStream(MiB, 1),
  },
];

for (const { group, stream } of parseCases) {
  sameFrames(group, stream);
  const oursChunks = chunked(stream);
  const expected = parseOurs(chunked(stream));
  Deno.bench("ours: FrameReader", { group, baseline: true }, () => {
    const totals = parseOurs(oursChunks);
    if (totals.frames !== expected.frames) throw new Error("lost frames");
  });
  for (const ws of implementations) {
    const wsChunks = chunked(stream);
    Deno.bench(`${ws.name}: Receiver`, { group }, () => {
      const totals = parseWs(ws, wsChunks);
      if (totals.frames !== expected.frames) throw new Error("lost frames");
    });
  }
}

// ---- Unmasking ----

const KEY = new Uint8Array([0x37, 0xfa, 0x21, 0x3d]);

for (const size of [64 * KiB, MiB]) {
  const group = `unmask ${size === MiB ? "1 MiB" : "64 KiB"}`;
  const ours = payload(size, 1);
  Deno.bench(
    "ours: applyMask",
    { group, baseline: true },
    () => applyMask(ours, KEY),
  );
  for (const ws of implementations) {
    const data = Buffer.from(payload(size, 1));
    const key = Buffer.from(KEY);
    Deno.bench(`${ws.name}: unmask`, { group }, () => ws.unmask(data, key));
  }
}

// ---- Serializing ----

for (const size of [32, 64 * KiB]) {
  for (const mask of [false, true]) {
    const group = `serialize ${size === 32 ? "32 B" : "64 KiB"} ${mask ? "masked" : "unmasked"}`;
    const frame = new Frame(Opcode.BINARY, payload(size, 2));
    Deno.bench("ours: Frame.serialize", { group, baseline: true }, () => {
      frame.serialize({ mask });
    });
    for (const ws of implementations) {
      const data = Buffer.from(payload(size, 2));
      // `readOnly: true`, as `ws` sends a Buffer it doesn't own: a masked
      // frame is masked into a new buffer, the caller's data is untouched.
      const options = {
        fin: true,
        opcode: Opcode.BINARY,
        mask,
        readOnly: true,
      };
      Deno.bench(`${ws.name}: Sender.frame`, { group }, () => {
        ws.Sender.frame(data, options);
      });
      if (!mask) {
        // Unmasked, ws returns the header and the caller's payload as two
        // buffers (it writes them with writev); joined, the output is one
        // buffer like ours.
        Deno.bench(`${ws.name}: Sender.frame, joined`, { group }, () => {
          Buffer.concat(ws.Sender.frame(data, options));
        });
      }
    }
  }
}
