import assert from "node:assert/strict";
import {
  ClientPerMessageDeflateFactory,
  defaultClientExtensions,
  defaultServerExtensions,
  PerMessageDeflate,
  type PerMessageDeflateOptions,
  ServerPerMessageDeflateFactory,
} from "../permessage_deflate.ts";
import {
  DuplicateParameter,
  InvalidParameterName,
  InvalidParameterValue,
  NegotiationError,
  PayloadTooBig,
  ProtocolError,
} from "../errors.ts";
import type { Extension, ExtensionParameter } from "../extensions.ts";
import { Frame, Opcode } from "../frames.ts";
import zlib from "node:zlib";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const bytes = (...values: number[]): Uint8Array => new Uint8Array(values);
const text = (value: string): Uint8Array => encoder.encode(value);

/** The codec with context takeover, 15-bit windows and no threshold unless overridden. */
function deflate(options: Partial<PerMessageDeflateOptions> = {}): PerMessageDeflate {
  return new PerMessageDeflate({
    remoteNoContextTakeover: false,
    localNoContextTakeover: false,
    remoteMaxWindowBits: 15,
    localMaxWindowBits: 15,
    threshold: 0,
    ...options,
  });
}

/** A compressed message frame as received. */
function compressed(data: Uint8Array, options: { fin?: boolean } = {}): Frame {
  return new Frame(Opcode.TEXT, data, { rsv1: true, fin: options.fin ?? true });
}

/** Asserts that `fn` throws an instance of exactly `type` (not a subclass), and returns it. */
function throwsExactly<T extends Error>(
  fn: () => unknown,
  type: new (...args: never[]) => T,
): T {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof Error, "expected an error");
  assert.equal(caught.constructor, type, `expected ${type.name}, got ${caught.constructor.name}`);
  return caught as T;
}

function randomBytes(length: number): Uint8Array {
  const data = new Uint8Array(length);
  for (let offset = 0; offset < length; offset += 65536) {
    crypto.getRandomValues(data.subarray(offset, Math.min(length, offset + 65536)));
  }
  return data;
}

/** Compresses `total` zero bytes in fragments of `chunk`, joined into one frame. */
function zeroBomb(total: number, chunk: number): Frame {
  const sender = deflate({ localNoContextTakeover: true });
  const zeros = new Uint8Array(chunk);
  const payloads: Uint8Array[] = [];
  for (let sent = 0; sent < total; sent += chunk) {
    const first = sent === 0;
    const fin = sent + chunk >= total;
    payloads.push(
      sender.encode(new Frame(first ? Opcode.BINARY : Opcode.CONT, zeros, { fin })).data,
    );
  }
  const data = new Uint8Array(payloads.reduce((sum, payload) => sum + payload.length, 0));
  let offset = 0;
  for (const payload of payloads) {
    data.set(payload, offset);
    offset += payload.length;
  }
  return new Frame(Opcode.BINARY, data, { rsv1: true });
}

// ---------------------------------------------------------------------------
// RFC 7692 §7.2.3 examples

Deno.test("permessage-deflate: compresses Hello as in RFC 7692 §7.2.3.1", () => {
  const frame = deflate().encode(new Frame(Opcode.TEXT, text("Hello")));
  assert.deepEqual(frame, compressed(bytes(0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00)));
});

Deno.test("permessage-deflate: decompresses Hello as in RFC 7692 §7.2.3.1", () => {
  const frame = deflate().decode(compressed(bytes(0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00)));
  assert.deepEqual(frame, new Frame(Opcode.TEXT, text("Hello")));
});

Deno.test("permessage-deflate: decompresses the fragmented message of RFC 7692 §7.2.3.1", () => {
  const extension = deflate();
  const first = extension.decode(compressed(bytes(0xf2, 0x48, 0xcd), { fin: false }));
  const last = extension.decode(new Frame(Opcode.CONT, bytes(0xc9, 0xc9, 0x07, 0x00)));
  assert.deepEqual(
    [first, last],
    [
      new Frame(Opcode.TEXT, text("He"), { fin: false }),
      new Frame(Opcode.CONT, text("llo")),
    ],
  );
});

Deno.test("permessage-deflate: shares the window between messages as in RFC 7692 §7.2.3.2", () => {
  const extension = deflate();
  const frames = [1, 2].map(() => extension.encode(new Frame(Opcode.TEXT, text("Hello"))));
  assert.deepEqual(frames, [
    compressed(bytes(0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00)),
    compressed(bytes(0xf2, 0x00, 0x11, 0x00, 0x00)),
  ]);
});

Deno.test("permessage-deflate: decompresses with the shared window of RFC 7692 §7.2.3.2", () => {
  const extension = deflate();
  const messages = [
    bytes(0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00),
    bytes(0xf2, 0x00, 0x11, 0x00, 0x00),
  ].map((data) => decoder.decode(extension.decode(compressed(data)).data));
  assert.deepEqual(messages, ["Hello", "Hello"]);
});

Deno.test("permessage-deflate: without context takeover compresses repeats identically", () => {
  const extension = deflate({ localNoContextTakeover: true });
  const frames = [1, 2].map(() => extension.encode(new Frame(Opcode.TEXT, text("Hello"))));
  const hello = compressed(bytes(0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00));
  assert.deepEqual(frames, [hello, hello]);
});

Deno.test("permessage-deflate: without context takeover decompresses each message afresh", () => {
  const extension = deflate({ remoteNoContextTakeover: true });
  const hello = bytes(0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00);
  const messages = [1, 2].map(() => decoder.decode(extension.decode(compressed(hello)).data));
  assert.deepEqual(messages, ["Hello", "Hello"]);
});

Deno.test("permessage-deflate: decompresses the uncompressed block of RFC 7692 §7.2.3.3", () => {
  const data = bytes(0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00);
  assert.deepEqual(deflate().decode(compressed(data)), new Frame(Opcode.TEXT, text("Hello")));
});

Deno.test("permessage-deflate: ignores data after a BFINAL block as in RFC 7692 §7.2.3.4", () => {
  const extension = deflate();
  const final = extension.decode(compressed(bytes(0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00)));
  // The next message starts a new deflate stream.
  const next = extension.decode(compressed(bytes(0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00)));
  assert.deepEqual([final, next], [
    new Frame(Opcode.TEXT, text("Hello")),
    new Frame(Opcode.TEXT, text("Hello")),
  ]);
});

Deno.test("permessage-deflate: ignores fragments after a BFINAL block", () => {
  const extension = deflate();
  const first = extension.decode(compressed(bytes(0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00), {
    fin: false,
  }));
  const second = extension.decode(new Frame(Opcode.CONT, bytes(0x01, 0x02, 0x03), { fin: false }));
  const last = extension.decode(new Frame(Opcode.CONT, bytes(0x00)));
  assert.deepEqual([first, second, last], [
    new Frame(Opcode.TEXT, text("Hello"), { fin: false }),
    new Frame(Opcode.CONT, new Uint8Array(0), { fin: false }),
    new Frame(Opcode.CONT, new Uint8Array(0)),
  ]);
});

Deno.test("permessage-deflate: decompresses two DEFLATE blocks in one message (RFC 7692 §7.2.3.5)", () => {
  const data = bytes(0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00);
  assert.deepEqual(deflate().decode(compressed(data)), new Frame(Opcode.TEXT, text("Hello")));
});

Deno.test("permessage-deflate: decompresses an empty final fragment (RFC 7692 §7.2.3.6)", () => {
  const extension = deflate();
  // The first fragment ends with a sync flush; the empty fragment is one zero byte.
  const data = bytes(0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00, 0x00, 0xff, 0xff);
  const first = extension.decode(compressed(data, { fin: false }));
  const last = extension.decode(new Frame(Opcode.CONT, bytes(0x00)));
  assert.deepEqual([first, last], [
    new Frame(Opcode.TEXT, text("Hello"), { fin: false }),
    new Frame(Opcode.CONT, new Uint8Array(0)),
  ]);
});

// ---------------------------------------------------------------------------
// Round trips

function roundTrip(
  sender: PerMessageDeflate,
  receiver: PerMessageDeflate,
  frames: Frame[],
): Frame[] {
  return frames.map((frame) => receiver.decode(sender.encode(frame), { maxSize: 1 << 24 }));
}

Deno.test("permessage-deflate: round-trips text and binary messages with context takeover", () => {
  const sender = deflate();
  const receiver = deflate();
  const frames = [
    new Frame(Opcode.TEXT, text("café ".repeat(100))),
    new Frame(Opcode.BINARY, bytes(0, 1, 2, 3, 255)),
    new Frame(Opcode.TEXT, text("café ".repeat(100))),
  ];
  assert.deepEqual(roundTrip(sender, receiver, frames), frames);
});

Deno.test("permessage-deflate: a repeated message shrinks with context takeover", () => {
  const extension = deflate();
  const message = text(JSON.stringify({ type: "chat", user: "alice", text: "hello everyone" }));
  const sizes = [1, 2].map(() => extension.encode(new Frame(Opcode.TEXT, message)).data.length);
  assert.ok(sizes[1] * 5 < sizes[0], `sizes: ${sizes}`);
});

Deno.test("permessage-deflate: round-trips messages without context takeover", () => {
  const sender = deflate({ localNoContextTakeover: true });
  const receiver = deflate({ remoteNoContextTakeover: true });
  const frames = [1, 2, 3].map((i) => new Frame(Opcode.TEXT, text(`message ${i} `.repeat(50))));
  assert.deepEqual(roundTrip(sender, receiver, frames), frames);
});

Deno.test("permessage-deflate: round-trips a fragmented message, RSV1 on the first frame only", () => {
  const sender = deflate();
  const receiver = deflate();
  const frames = [
    new Frame(Opcode.TEXT, text("Hello, "), { fin: false }),
    new Frame(Opcode.CONT, text("fragmented "), { fin: false }),
    new Frame(Opcode.CONT, text("world")),
  ];
  const encoded = frames.map((frame) => sender.encode(frame));
  assert.deepEqual(encoded.map((frame) => frame.rsv1), [true, false, false]);
  assert.deepEqual(encoded.map((frame) => receiver.decode(frame)), frames);
});

Deno.test("permessage-deflate: round-trips fragmented messages without context takeover", () => {
  const sender = deflate({ localNoContextTakeover: true });
  const receiver = deflate({ remoteNoContextTakeover: true });
  const frames = [1, 2].flatMap(() => [
    new Frame(Opcode.BINARY, text("abc".repeat(40)), { fin: false }),
    new Frame(Opcode.CONT, text("abc".repeat(40))),
  ]);
  const encoded = frames.map((frame) => sender.encode(frame));
  // Each message starts from an empty window, so both encode the same.
  assert.deepEqual(encoded.slice(2), encoded.slice(0, 2));
  assert.deepEqual(encoded.map((frame) => receiver.decode(frame)), frames);
});

Deno.test("permessage-deflate: many concurrent fragmented messages without context takeover", () => {
  // More messages in flight than idle codecs are kept: the extra codecs are closed.
  const pairs = Array.from({ length: 6 }, () => [
    deflate({ localNoContextTakeover: true }),
    deflate({ remoteNoContextTakeover: true }),
  ]);
  const firsts = pairs.map(([sender, receiver]) =>
    receiver.decode(sender.encode(new Frame(Opcode.TEXT, text("first half"), { fin: false })))
  );
  const lasts = pairs.map(([sender, receiver]) =>
    receiver.decode(sender.encode(new Frame(Opcode.CONT, text(" second half"))))
  );
  assert.deepEqual(
    firsts.map((first, i) => decoder.decode(first.data) + decoder.decode(lasts[i].data)),
    Array(6).fill("first half second half"),
  );
});

Deno.test("permessage-deflate: an empty final fragment is sent as one zero byte", () => {
  const sender = deflate();
  const receiver = deflate();
  const first = sender.encode(new Frame(Opcode.TEXT, text("Hel"), { fin: false }));
  const last = sender.encode(new Frame(Opcode.CONT, new Uint8Array(0)));
  assert.deepEqual(last, new Frame(Opcode.CONT, bytes(0x00)));
  const decoded = [first, last].map((frame) => decoder.decode(receiver.decode(frame).data));
  assert.deepEqual(decoded, ["Hel", ""]);
  // The stream is still in sync for the next message.
  const next = receiver.decode(sender.encode(new Frame(Opcode.TEXT, text("Hello"))));
  assert.deepEqual(next, new Frame(Opcode.TEXT, text("Hello")));
});

Deno.test("permessage-deflate: round-trips empty messages with context takeover", () => {
  const sender = deflate();
  const receiver = deflate();
  const frames = [1, 2, 3].map(() => new Frame(Opcode.BINARY, new Uint8Array(0)));
  const encoded = frames.map((frame) => sender.encode(frame));
  assert.deepEqual(encoded.map((frame) => frame.data), [bytes(0x00), bytes(0x00), bytes(0x00)]);
  assert.deepEqual(encoded.map((frame) => receiver.decode(frame)), frames);
});

Deno.test("permessage-deflate: round-trips a message larger than one output chunk", () => {
  const sender = deflate();
  const receiver = deflate();
  // Random data doesn't compress: the compressed payload spans several 64 KiB chunks.
  const frame = new Frame(Opcode.BINARY, randomBytes(300_000));
  const encoded = sender.encode(frame);
  assert.ok(encoded.data.length > 300_000);
  assert.deepEqual(receiver.decode(encoded, { maxSize: 300_000 }), frame);
});

Deno.test("permessage-deflate: round-trips a large compressible fragmented message", () => {
  const sender = deflate({ localMaxWindowBits: 9, remoteMaxWindowBits: 9 });
  const receiver = deflate({ localMaxWindowBits: 9, remoteMaxWindowBits: 9 });
  const chunk = text("0123456789abcdef".repeat(16_384));
  const frames = [
    new Frame(Opcode.BINARY, chunk, { fin: false }),
    new Frame(Opcode.CONT, chunk),
  ];
  assert.deepEqual(roundTrip(sender, receiver, frames), frames);
});

Deno.test("permessage-deflate: sends messages under the threshold uncompressed", () => {
  const extension = deflate({ threshold: 6 });
  const short = new Frame(Opcode.TEXT, text("Hello"));
  assert.equal(extension.encode(short), short);
  const long = extension.encode(new Frame(Opcode.TEXT, text("Hello!")));
  assert.equal(long.rsv1, true);
});

Deno.test("permessage-deflate: the default threshold is 128 without context takeover, else 0", () => {
  const thresholds = [false, true].map((localNoContextTakeover) =>
    new PerMessageDeflate({
      remoteNoContextTakeover: false,
      localNoContextTakeover,
      remoteMaxWindowBits: 15,
      localMaxWindowBits: 15,
    }).threshold
  );
  assert.deepEqual(thresholds, [0, 128]);
});

Deno.test("permessage-deflate: compress: false sends the message uncompressed", () => {
  const extension = deflate();
  const frame = new Frame(Opcode.TEXT, text("Hello ".repeat(100)));
  assert.equal(extension.encode(frame, { compress: false }), frame);
});

Deno.test("permessage-deflate: the first frame decides for the whole fragmented message", () => {
  const extension = deflate({ threshold: 10 });
  const frames = [
    new Frame(Opcode.TEXT, text("short"), { fin: false }),
    new Frame(Opcode.CONT, text("a long continuation frame"), { fin: false }),
    new Frame(Opcode.CONT, text("another long continuation")),
  ];
  const encoded = frames.map((frame) => extension.encode(frame));
  assert.deepEqual(encoded, frames);
  const optedOut = [
    extension.encode(new Frame(Opcode.TEXT, text("x".repeat(100)), { fin: false }), {
      compress: false,
    }),
    extension.encode(new Frame(Opcode.CONT, text("x".repeat(100))), { compress: true }),
  ];
  assert.deepEqual(optedOut.map((frame) => frame.data.length), [100, 100]);
});

Deno.test("permessage-deflate: control frames pass through encode, even within a message", () => {
  const sender = deflate();
  const receiver = deflate();
  const ping = new Frame(Opcode.PING, text("ping"));
  const first = sender.encode(new Frame(Opcode.TEXT, text("Hel"), { fin: false }));
  assert.equal(sender.encode(ping), ping);
  assert.equal(receiver.decode(ping), ping);
  const last = sender.encode(new Frame(Opcode.CONT, text("lo")));
  assert.deepEqual(
    [first, last].map((frame) => decoder.decode(receiver.decode(frame).data)).join(""),
    "Hello",
  );
});

Deno.test("permessage-deflate: uncompressed frames pass through decode", () => {
  const extension = deflate();
  const frames = [
    new Frame(Opcode.TEXT, text("plain")),
    new Frame(Opcode.BINARY, text("frag"), { fin: false }),
    new Frame(Opcode.CONT, text("ment")),
  ];
  for (const frame of frames) assert.equal(extension.decode(frame), frame);
});

Deno.test("permessage-deflate: keeps RSV2 and RSV3 for other extensions", () => {
  const sender = deflate();
  const receiver = deflate();
  const frame = new Frame(Opcode.BINARY, text("Hello"), { rsv2: true, rsv3: true });
  const encoded = sender.encode(frame);
  assert.deepEqual([encoded.rsv1, encoded.rsv2, encoded.rsv3], [true, true, true]);
  assert.deepEqual(receiver.decode(encoded), frame);
});

Deno.test("permessage-deflate: a new message ends an unfinished one on both sides", () => {
  const sender = deflate();
  const receiver = deflate();
  receiver.decode(sender.encode(new Frame(Opcode.TEXT, text("never finished"), { fin: false })));
  const frame = new Frame(Opcode.TEXT, text("Hello"));
  // The receiver resets its window, so the sender must start afresh too.
  sender.close();
  assert.deepEqual(receiver.decode(sender.encode(frame)), frame);
  // An unfinished outgoing message ends when the next one starts.
  sender.encode(new Frame(Opcode.TEXT, text("abandoned"), { fin: false }));
  const plain = new Frame(Opcode.TEXT, text("x"));
  assert.equal(sender.encode(plain, { compress: false }), plain);
});

Deno.test("permessage-deflate: close() starts the next message with an empty window", () => {
  const extension = deflate();
  const hello = new Frame(Opcode.TEXT, text("Hello"));
  extension.encode(hello);
  extension.close();
  assert.deepEqual(
    extension.encode(hello),
    compressed(bytes(0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00)),
  );
});

Deno.test("permessage-deflate: Symbol.dispose closes the extension", () => {
  const extension = deflate();
  const hello = new Frame(Opcode.TEXT, text("Hello"));
  extension.encode(hello);
  {
    using disposable = extension;
    assert.equal(disposable.name, "permessage-deflate");
  }
  assert.deepEqual(
    extension.encode(hello),
    compressed(bytes(0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00)),
  );
});

// ---------------------------------------------------------------------------
// encodeKey

Deno.test("permessage-deflate: encodeKey is defined only without local context takeover", () => {
  const keys = [false, true].map((localNoContextTakeover) =>
    deflate({ localNoContextTakeover, localMaxWindowBits: 12 }).encodeKey
  );
  assert.deepEqual(keys, [undefined, "permessage-deflate;w=12;m=8;l=6;t=0"]);
});

Deno.test("permessage-deflate: extensions with the same encodeKey encode the same bytes", () => {
  const a = deflate({ localNoContextTakeover: true, threshold: 10 });
  const b = deflate({ localNoContextTakeover: true, threshold: 10 });
  const message = new Frame(Opcode.TEXT, text("broadcast me ".repeat(20)));
  a.encode(new Frame(Opcode.TEXT, text("something else entirely, twice over")));
  assert.equal(a.encodeKey, b.encodeKey);
  assert.deepEqual(a.encode(message), b.encode(message));
});

// ---------------------------------------------------------------------------
// Bad input

Deno.test("permessage-deflate: RSV1 on a continuation frame is a protocol error", () => {
  const extension = deflate();
  extension.decode(compressed(bytes(0xf2, 0x48), { fin: false }));
  const error = throwsExactly(
    () => extension.decode(new Frame(Opcode.CONT, bytes(0xcd), { rsv1: true })),
    ProtocolError,
  );
  assert.deepEqual([error.message, error.code], ["RSV1 on a continuation frame", 1002]);
});

Deno.test("permessage-deflate: RSV1 on a control frame is a protocol error", () => {
  const error = throwsExactly(
    () => deflate().decode(new Frame(Opcode.PING, text("hi"), { rsv1: true })),
    ProtocolError,
  );
  assert.deepEqual([error.message, error.code], ["RSV1 on a control frame", 1002]);
});

Deno.test("permessage-deflate: corrupt compressed data is a protocol error with code 1007", () => {
  const error = throwsExactly(
    () => deflate().decode(compressed(bytes(0xff, 0xff, 0xff))),
    ProtocolError,
  );
  assert.deepEqual([error.message, error.code], [
    "invalid compressed data: invalid block type",
    1007,
  ]);
});

Deno.test("permessage-deflate: after corrupt data the next message starts afresh", () => {
  const extension = deflate();
  assert.throws(() => extension.decode(compressed(bytes(0xff, 0xff, 0xff))), ProtocolError);
  const frame = extension.decode(compressed(bytes(0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00)));
  assert.deepEqual(frame, new Frame(Opcode.TEXT, text("Hello")));
});

Deno.test("permessage-deflate: a decompression bomb stops at maxSize without allocating", () => {
  const bomb = zeroBomb(64 << 20, 1 << 20);
  assert.ok(bomb.data.length < 128 * 1024, `bomb is ${bomb.data.length} bytes`);
  const before = Deno.memoryUsage().rss;
  const error = throwsExactly(
    () => deflate().decode(bomb, { maxSize: 1 << 20 }),
    PayloadTooBig,
  );
  const growth = Deno.memoryUsage().rss - before;
  assert.deepEqual([error.size, error.maxSize], [(1 << 20) + 1, 1 << 20]);
  assert.ok(growth < 16 << 20, `RSS grew by ${growth} bytes`);
});

Deno.test("permessage-deflate: a message of exactly maxSize passes", () => {
  const frame = deflate().decode(zeroBomb(1 << 20, 1 << 18), { maxSize: 1 << 20 });
  assert.deepEqual(frame, new Frame(Opcode.BINARY, new Uint8Array(1 << 20)));
});

Deno.test("permessage-deflate: a message one byte over maxSize is too big", () => {
  const error = throwsExactly(
    () => deflate().decode(zeroBomb(1 << 20, 1 << 20), { maxSize: (1 << 20) - 1 }),
    PayloadTooBig,
  );
  assert.deepEqual([error.size, error.maxSize], [1 << 20, (1 << 20) - 1]);
});

Deno.test("permessage-deflate: maxSize applies to each fragment's allowance", () => {
  const sender = deflate();
  const receiver = deflate();
  const first = sender.encode(new Frame(Opcode.TEXT, text("a".repeat(600)), { fin: false }));
  const last = sender.encode(new Frame(Opcode.CONT, text("a".repeat(600))));
  assert.equal(receiver.decode(first, { maxSize: 1000 }).data.length, 600);
  const error = throwsExactly(() => receiver.decode(last, { maxSize: 400 }), PayloadTooBig);
  assert.deepEqual([error.size, error.maxSize], [401, 400]);
});

Deno.test("permessage-deflate: rejects parameters out of range", () => {
  const cases: Partial<PerMessageDeflateOptions>[] = [
    { localMaxWindowBits: 8 },
    { localMaxWindowBits: 16 },
    { remoteMaxWindowBits: 7 },
    { remoteMaxWindowBits: 12.5 },
    { threshold: -1 },
    { threshold: 1.5 },
    { memLevel: 0 },
    { memLevel: 10 },
    { level: -2 },
    { level: 10 },
  ];
  for (const options of cases) throwsExactly(() => deflate(options), RangeError);
});

Deno.test("permessage-deflate: decompresses data from an 8-bit window with a 9-bit one", () => {
  const extension = deflate({ remoteMaxWindowBits: 8 });
  const frame = extension.decode(compressed(bytes(0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00)));
  assert.deepEqual(frame, new Frame(Opcode.TEXT, text("Hello")));
});

// ---------------------------------------------------------------------------
// Client negotiation

function accept(
  factory: ClientPerMessageDeflateFactory,
  params: ExtensionParameter[],
  accepted: Extension[] = [],
): PerMessageDeflate {
  return factory.processResponseParams(params, accepted);
}

/** The negotiated parameters of an extension, for whole-value comparisons. */
function negotiated(extension: PerMessageDeflate): PerMessageDeflateOptions {
  return {
    remoteNoContextTakeover: extension.remoteNoContextTakeover,
    localNoContextTakeover: extension.localNoContextTakeover,
    remoteMaxWindowBits: extension.remoteMaxWindowBits,
    localMaxWindowBits: extension.localMaxWindowBits,
  };
}

const DEFAULTS: PerMessageDeflateOptions = {
  remoteNoContextTakeover: false,
  localNoContextTakeover: false,
  remoteMaxWindowBits: 15,
  localMaxWindowBits: 15,
};

Deno.test("permessage-deflate: client offers no parameters by default", () => {
  assert.deepEqual(new ClientPerMessageDeflateFactory().getRequestParams(), []);
});

Deno.test("permessage-deflate: client offers every parameter in order", () => {
  const factory = new ClientPerMessageDeflateFactory({
    serverNoContextTakeover: true,
    clientNoContextTakeover: true,
    serverMaxWindowBits: 10,
    clientMaxWindowBits: 12,
  });
  assert.deepEqual(factory.getRequestParams(), [
    ["server_no_context_takeover", undefined],
    ["client_no_context_takeover", undefined],
    ["server_max_window_bits", "10"],
    ["client_max_window_bits", "12"],
  ]);
});

Deno.test("permessage-deflate: client offers client_max_window_bits without a value", () => {
  const factory = new ClientPerMessageDeflateFactory({ clientMaxWindowBits: true });
  assert.deepEqual(factory.getRequestParams(), [["client_max_window_bits", undefined]]);
});

Deno.test("permessage-deflate: client accepts an empty answer", () => {
  const extension = accept(new ClientPerMessageDeflateFactory(), []);
  assert.deepEqual(negotiated(extension), DEFAULTS);
});

Deno.test("permessage-deflate: client accepts what the server adds on its own", () => {
  const extension = accept(new ClientPerMessageDeflateFactory(), [
    ["server_no_context_takeover", undefined],
    ["client_no_context_takeover", undefined],
    ["server_max_window_bits", "10"],
  ]);
  assert.deepEqual(negotiated(extension), {
    remoteNoContextTakeover: true,
    localNoContextTakeover: true,
    remoteMaxWindowBits: 10,
    localMaxWindowBits: 15,
  });
});

Deno.test("permessage-deflate: client resets its context when it offered to", () => {
  const factory = new ClientPerMessageDeflateFactory({ clientNoContextTakeover: true });
  assert.deepEqual(negotiated(accept(factory, [])), { ...DEFAULTS, localNoContextTakeover: true });
});

Deno.test("permessage-deflate: client accepts what it asked of the server", () => {
  const factory = new ClientPerMessageDeflateFactory({
    serverNoContextTakeover: true,
    serverMaxWindowBits: 12,
  });
  const extension = accept(factory, [
    ["server_no_context_takeover", undefined],
    ["server_max_window_bits", "11"],
  ]);
  assert.deepEqual(negotiated(extension), {
    ...DEFAULTS,
    remoteNoContextTakeover: true,
    remoteMaxWindowBits: 11,
  });
});

Deno.test("permessage-deflate: client uses the window the server chooses for it", () => {
  const factory = new ClientPerMessageDeflateFactory({ clientMaxWindowBits: true });
  const windows = [[], [["client_max_window_bits", "10"]]].map((params) =>
    accept(factory, params as ExtensionParameter[]).localMaxWindowBits
  );
  assert.deepEqual(windows, [15, 10]);
});

Deno.test("permessage-deflate: client keeps the window it offered, or a smaller one", () => {
  const factory = new ClientPerMessageDeflateFactory({ clientMaxWindowBits: 12 });
  const windows = [[], [["client_max_window_bits", "12"]], [["client_max_window_bits", "9"]]].map(
    (params) => accept(factory, params as ExtensionParameter[]).localMaxWindowBits,
  );
  assert.deepEqual(windows, [12, 12, 9]);
});

Deno.test("permessage-deflate: client carries its codec options to the extension", () => {
  const factory = new ClientPerMessageDeflateFactory({ threshold: 7, memLevel: 4, level: 1 });
  const extension = accept(factory, []);
  assert.deepEqual([extension.threshold, extension.memLevel, extension.level], [7, 4, 1]);
});

Deno.test("permessage-deflate: client rejects a duplicate parameter", () => {
  const params: ExtensionParameter[] = [
    ["server_max_window_bits", "10"],
    ["server_max_window_bits", "10"],
  ];
  throwsExactly(() => accept(new ClientPerMessageDeflateFactory(), params), DuplicateParameter);
});

Deno.test("permessage-deflate: client rejects an unknown parameter", () => {
  const error = throwsExactly(
    () => accept(new ClientPerMessageDeflateFactory(), [["foo", undefined]]),
    InvalidParameterName,
  );
  assert.equal(error.parameterName, "foo");
});

Deno.test("permessage-deflate: client rejects invalid parameter values", () => {
  const factory = new ClientPerMessageDeflateFactory({ clientMaxWindowBits: true });
  const cases: ExtensionParameter[] = [
    ["server_no_context_takeover", "1"],
    ["client_no_context_takeover", ""],
    ["server_max_window_bits", undefined],
    ["server_max_window_bits", "7"],
    ["server_max_window_bits", "16"],
    ["server_max_window_bits", "010"],
    ["server_max_window_bits", "1O"],
    ["client_max_window_bits", undefined],
    ["client_max_window_bits", "abc"],
  ];
  for (const param of cases) {
    const error = throwsExactly(() => accept(factory, [param]), InvalidParameterValue);
    assert.deepEqual([error.parameterName, error.value], param);
  }
});

Deno.test("permessage-deflate: client rejects a second permessage-deflate", () => {
  const factory = new ClientPerMessageDeflateFactory();
  const first = accept(factory, []);
  throwsExactly(() => accept(factory, [], [first]), NegotiationError);
});

Deno.test("permessage-deflate: client requires server_no_context_takeover it asked for", () => {
  const factory = new ClientPerMessageDeflateFactory({ serverNoContextTakeover: true });
  throwsExactly(() => accept(factory, []), NegotiationError);
});

Deno.test("permessage-deflate: client requires server_max_window_bits it asked for", () => {
  const factory = new ClientPerMessageDeflateFactory({ serverMaxWindowBits: 10 });
  throwsExactly(() => accept(factory, []), NegotiationError);
});

Deno.test("permessage-deflate: client rejects a server window larger than asked", () => {
  const factory = new ClientPerMessageDeflateFactory({ serverMaxWindowBits: 10 });
  throwsExactly(() => accept(factory, [["server_max_window_bits", "11"]]), NegotiationError);
});

Deno.test("permessage-deflate: client rejects client_max_window_bits it didn't offer", () => {
  const factory = new ClientPerMessageDeflateFactory();
  throwsExactly(() => accept(factory, [["client_max_window_bits", "10"]]), NegotiationError);
});

Deno.test("permessage-deflate: client rejects a client window larger than offered", () => {
  const factory = new ClientPerMessageDeflateFactory({ clientMaxWindowBits: 10 });
  throwsExactly(() => accept(factory, [["client_max_window_bits", "11"]]), NegotiationError);
});

Deno.test("permessage-deflate: client accepts an 8-bit client window, compressing with 9 bits", () => {
  const factory = new ClientPerMessageDeflateFactory({ clientMaxWindowBits: true });
  const extension = accept(factory, [["client_max_window_bits", "8"]]);
  assert.deepEqual(negotiated(extension), { ...DEFAULTS, localMaxWindowBits: 9 });
});

Deno.test("permessage-deflate: client factory rejects options out of range", () => {
  const cases = [
    { clientMaxWindowBits: 8 },
    { clientMaxWindowBits: 16 },
    { serverMaxWindowBits: 7 },
    { serverMaxWindowBits: 16 },
    { memLevel: 0 },
  ];
  for (const options of cases) {
    throwsExactly(() => new ClientPerMessageDeflateFactory(options), RangeError);
  }
});

Deno.test("permessage-deflate: client may ask for an 8-bit server window", () => {
  const factory = new ClientPerMessageDeflateFactory({ serverMaxWindowBits: 8 });
  const extension = accept(factory, [["server_max_window_bits", "8"]]);
  assert.equal(extension.remoteMaxWindowBits, 8);
});

// ---------------------------------------------------------------------------
// Server negotiation

function answer(
  factory: ServerPerMessageDeflateFactory,
  params: ExtensionParameter[],
  accepted: Extension[] = [],
): [ExtensionParameter[], PerMessageDeflateOptions] {
  const [response, extension] = factory.processRequestParams(params, accepted);
  return [response, negotiated(extension)];
}

Deno.test("permessage-deflate: server accepts an empty offer with an empty answer", () => {
  assert.deepEqual(answer(new ServerPerMessageDeflateFactory(), []), [[], DEFAULTS]);
});

Deno.test("permessage-deflate: server echoes the context takeover flags offered", () => {
  const offer: ExtensionParameter[] = [
    ["server_no_context_takeover", undefined],
    ["client_no_context_takeover", undefined],
  ];
  assert.deepEqual(answer(new ServerPerMessageDeflateFactory(), offer), [offer, {
    ...DEFAULTS,
    remoteNoContextTakeover: true,
    localNoContextTakeover: true,
  }]);
});

Deno.test("permessage-deflate: server imposes its context takeover options", () => {
  const factory = new ServerPerMessageDeflateFactory({
    serverNoContextTakeover: true,
    clientNoContextTakeover: true,
  });
  assert.deepEqual(answer(factory, []), [
    [["server_no_context_takeover", undefined], ["client_no_context_takeover", undefined]],
    { ...DEFAULTS, remoteNoContextTakeover: true, localNoContextTakeover: true },
  ]);
});

Deno.test("permessage-deflate: server answers the smaller of offered and allowed server windows", () => {
  const cases: [number | undefined, ExtensionParameter[], number][] = [
    [undefined, [["server_max_window_bits", "10"]], 10],
    [12, [["server_max_window_bits", "10"]], 10],
    [9, [["server_max_window_bits", "12"]], 9],
    [12, [], 12],
  ];
  for (const [serverMaxWindowBits, offer, expected] of cases) {
    const factory = new ServerPerMessageDeflateFactory({ serverMaxWindowBits });
    assert.deepEqual(answer(factory, offer), [
      [["server_max_window_bits", String(expected)]],
      { ...DEFAULTS, localMaxWindowBits: expected },
    ]);
  }
});

Deno.test("permessage-deflate: server accepts an 8-bit server window, compressing with 9 bits", () => {
  assert.deepEqual(
    answer(new ServerPerMessageDeflateFactory(), [["server_max_window_bits", "8"]]),
    [
      [["server_max_window_bits", "8"]],
      { ...DEFAULTS, localMaxWindowBits: 9 },
    ],
  );
});

Deno.test("permessage-deflate: messages compressed for an 8-bit window inflate with 8 bits", () => {
  // Text that repeats itself 300 bytes back: a wider window would reach past 256 bytes.
  const data = new Uint8Array(20_000);
  let seed = 1;
  for (let i = 0; i < data.length; i++) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    data[i] = i >= 300 && seed % 4 !== 0 ? data[i - 300] : 97 + ((seed >> 16) % 26);
  }
  const eightBits = { windowBits: 8, finishFlush: zlib.constants.Z_SYNC_FLUSH };
  assert.throws(() => zlib.inflateRawSync(zlib.deflateRawSync(data), eightBits), Error);
  const [, extension] = new ServerPerMessageDeflateFactory().processRequestParams(
    [["server_max_window_bits", "8"]],
    [],
  );
  const stream: number[] = [];
  for (let offset = 0; offset < data.length; offset += 5000) {
    const frame = extension.encode(new Frame(Opcode.BINARY, data.subarray(offset, offset + 5000)));
    stream.push(...frame.data, 0x00, 0x00, 0xff, 0xff);
  }
  assert.deepEqual(new Uint8Array(zlib.inflateRawSync(new Uint8Array(stream), eightBits)), data);
});

Deno.test("permessage-deflate: server sets the client window when the client allows it", () => {
  const factory = new ServerPerMessageDeflateFactory({ clientMaxWindowBits: 12 });
  const cases: [ExtensionParameter[], ExtensionParameter[], number][] = [
    [[["client_max_window_bits", undefined]], [["client_max_window_bits", "12"]], 12],
    [[["client_max_window_bits", "10"]], [["client_max_window_bits", "10"]], 10],
    [[["client_max_window_bits", "14"]], [["client_max_window_bits", "12"]], 12],
    [[], [], 15],
  ];
  for (const [offer, expected, remoteMaxWindowBits] of cases) {
    assert.deepEqual(answer(factory, offer), [expected, { ...DEFAULTS, remoteMaxWindowBits }]);
  }
});

Deno.test("permessage-deflate: server without a client window option takes the client's", () => {
  const factory = new ServerPerMessageDeflateFactory();
  const cases: [ExtensionParameter[], ExtensionParameter[], number][] = [
    [[["client_max_window_bits", undefined]], [], 15],
    [[["client_max_window_bits", "10"]], [["client_max_window_bits", "10"]], 10],
    [[["client_max_window_bits", "8"]], [["client_max_window_bits", "8"]], 8],
  ];
  for (const [offer, expected, remoteMaxWindowBits] of cases) {
    assert.deepEqual(answer(factory, offer), [expected, { ...DEFAULTS, remoteMaxWindowBits }]);
  }
});

Deno.test("permessage-deflate: server declines offers without a required client window", () => {
  const factory = new ServerPerMessageDeflateFactory({
    clientMaxWindowBits: 10,
    requireClientMaxWindowBits: true,
  });
  throwsExactly(() => answer(factory, []), NegotiationError);
  assert.deepEqual(answer(factory, [["client_max_window_bits", undefined]])[0], [
    ["client_max_window_bits", "10"],
  ]);
});

Deno.test("permessage-deflate: server carries its codec options to the extension", () => {
  const factory = new ServerPerMessageDeflateFactory({ threshold: 7, memLevel: 4, level: 1 });
  const [, extension] = factory.processRequestParams([], []);
  assert.deepEqual([extension.threshold, extension.memLevel, extension.level], [7, 4, 1]);
});

Deno.test("permessage-deflate: server rejects a duplicate parameter", () => {
  const params: ExtensionParameter[] = [
    ["client_max_window_bits", undefined],
    ["client_max_window_bits", "10"],
  ];
  throwsExactly(() => answer(new ServerPerMessageDeflateFactory(), params), DuplicateParameter);
});

Deno.test("permessage-deflate: server rejects an unknown parameter", () => {
  const error = throwsExactly(
    () => answer(new ServerPerMessageDeflateFactory(), [["mux", "1"]]),
    InvalidParameterName,
  );
  assert.equal(error.parameterName, "mux");
});

Deno.test("permessage-deflate: server rejects invalid parameter values", () => {
  const cases: ExtensionParameter[] = [
    ["server_no_context_takeover", "yes"],
    ["client_no_context_takeover", "0"],
    ["server_max_window_bits", undefined],
    ["server_max_window_bits", "16"],
    ["client_max_window_bits", "7"],
    ["client_max_window_bits", "+9"],
  ];
  for (const param of cases) {
    const error = throwsExactly(
      () => answer(new ServerPerMessageDeflateFactory(), [param]),
      InvalidParameterValue,
    );
    assert.deepEqual([error.parameterName, error.value], param);
  }
});

Deno.test("permessage-deflate: server declines a second permessage-deflate", () => {
  const factory = new ServerPerMessageDeflateFactory();
  const [, first] = factory.processRequestParams([], []);
  throwsExactly(() => answer(factory, [], [first]), NegotiationError);
});

Deno.test("permessage-deflate: server factory rejects options out of range", () => {
  const cases = [
    { serverMaxWindowBits: 8 },
    { serverMaxWindowBits: 16 },
    { clientMaxWindowBits: 7 },
    { level: 11 },
  ];
  for (const options of cases) {
    throwsExactly(() => new ServerPerMessageDeflateFactory(options), RangeError);
  }
});

Deno.test("permessage-deflate: server factory needs clientMaxWindowBits to require it", () => {
  throwsExactly(
    () => new ServerPerMessageDeflateFactory({ requireClientMaxWindowBits: true }),
    TypeError,
  );
});

Deno.test("permessage-deflate: server may limit the client to an 8-bit window", () => {
  const factory = new ServerPerMessageDeflateFactory({ clientMaxWindowBits: 8 });
  assert.deepEqual(answer(factory, [["client_max_window_bits", undefined]]), [
    [["client_max_window_bits", "8"]],
    { ...DEFAULTS, remoteMaxWindowBits: 8 },
  ]);
});

// ---------------------------------------------------------------------------
// Both sides together, and the defaults

function negotiate(
  client: ClientPerMessageDeflateFactory,
  server: ServerPerMessageDeflateFactory,
): [PerMessageDeflate, PerMessageDeflate] {
  const [response, serverExtension] = server.processRequestParams(client.getRequestParams(), []);
  return [client.processResponseParams(response, []), serverExtension];
}

Deno.test("permessage-deflate: negotiated extensions talk to each other both ways", () => {
  const [client, server] = negotiate(
    new ClientPerMessageDeflateFactory({ clientMaxWindowBits: true, serverMaxWindowBits: 10 }),
    new ServerPerMessageDeflateFactory({ clientMaxWindowBits: 9, clientNoContextTakeover: true }),
  );
  assert.deepEqual([negotiated(client), negotiated(server)], [
    {
      remoteNoContextTakeover: false,
      localNoContextTakeover: true,
      remoteMaxWindowBits: 10,
      localMaxWindowBits: 9,
    },
    {
      remoteNoContextTakeover: true,
      localNoContextTakeover: false,
      remoteMaxWindowBits: 9,
      localMaxWindowBits: 10,
    },
  ]);
  const messages = [1, 2, 3].map((i) => new Frame(Opcode.TEXT, text(`message ${i} `.repeat(30))));
  assert.deepEqual(roundTrip(client, server, messages), messages);
  assert.deepEqual(roundTrip(server, client, messages), messages);
});

Deno.test("permessage-deflate: default client offers client_max_window_bits", () => {
  const factories = defaultClientExtensions();
  assert.equal(factories.length, 1);
  assert.ok(factories[0] instanceof ClientPerMessageDeflateFactory);
  assert.deepEqual(factories[0].getRequestParams(), [["client_max_window_bits", undefined]]);
});

Deno.test("permessage-deflate: default server answers a browser's offer", () => {
  const [factory] = defaultServerExtensions();
  assert.ok(factory instanceof ServerPerMessageDeflateFactory);
  const [response, extension] = factory.processRequestParams(
    [["client_max_window_bits", undefined]],
    [],
  );
  assert.deepEqual(response, [
    ["server_no_context_takeover", undefined],
    ["client_max_window_bits", "12"],
  ]);
  assert.deepEqual(
    [negotiated(extension as PerMessageDeflate), extension.encodeKey],
    [
      { ...DEFAULTS, localNoContextTakeover: true, remoteMaxWindowBits: 12 },
      "permessage-deflate;w=15;m=8;l=6;t=128",
    ],
  );
});

Deno.test("permessage-deflate: default client and server agree", () => {
  const [client, server] = negotiate(
    defaultClientExtensions()[0] as ClientPerMessageDeflateFactory,
    defaultServerExtensions()[0] as ServerPerMessageDeflateFactory,
  );
  assert.deepEqual(
    [client.remoteNoContextTakeover, client.localMaxWindowBits, client.threshold],
    [true, 12, 0],
  );
  const messages = [
    new Frame(Opcode.TEXT, text("hi")),
    new Frame(Opcode.TEXT, text("hi ".repeat(99))),
  ];
  assert.deepEqual(roundTrip(client, server, messages), messages);
  assert.deepEqual(roundTrip(server, client, messages), messages);
});
