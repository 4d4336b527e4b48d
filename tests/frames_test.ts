import assert from "node:assert/strict";
import {
  applyMask,
  Close,
  CloseCode,
  Frame,
  frameHeaderLength,
  FrameReader,
  isValidCloseCode,
  Opcode,
  type ParseOptions,
  randomMaskingKey,
  serializeInto,
} from "../frames.ts";
import { PayloadTooBig, ProtocolError } from "../errors.ts";

const encode = (text: string): Uint8Array => new TextEncoder().encode(text);

/** Bytes from a list of numbers and byte arrays, for writing wire data by hand. */
function bytes(...parts: (number | Uint8Array)[]): Uint8Array {
  const out: number[] = [];
  for (const part of parts) {
    if (typeof part === "number") out.push(part);
    else out.push(...part);
  }
  return new Uint8Array(out);
}

/** `length` bytes counting up from `start`, modulo 256. */
function pattern(length: number, start = 0): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (start + i) & 0xff;
  return out;
}

/** The fields of a frame as a plain object, for whole-value comparisons. */
function fields(frame: Frame): {
  opcode: number;
  data: Uint8Array;
  fin: boolean;
  rsv1: boolean;
  rsv2: boolean;
  rsv3: boolean;
} {
  const { opcode, fin, rsv1, rsv2, rsv3 } = frame;
  return { opcode, data: Uint8Array.from(frame.data), fin, rsv1, rsv2, rsv3 };
}

/** Asserts that `fn` throws exactly a `ProtocolError` with `message` and close `code`. */
function assertProtocolError(fn: () => unknown, message: string, code = 1002): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof ProtocolError);
    assert.equal(error.constructor, ProtocolError);
    assert.deepEqual({ message: error.message, code: error.code }, { message, code });
    return true;
  });
}

/** Asserts that `fn` throws exactly a `PayloadTooBig` for `size` over `maxSize`. */
function assertPayloadTooBig(fn: () => unknown, size: number, maxSize: number): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof PayloadTooBig);
    assert.equal(error.constructor, PayloadTooBig);
    assert.deepEqual(
      { message: error.message, size: error.size, maxSize: error.maxSize },
      {
        message: `message too big: ${size} bytes exceeds maxSize of ${maxSize} bytes`,
        size,
        maxSize,
      },
    );
    return true;
  });
}

/** Feeds `input` to a fresh reader in one chunk and returns the first frame or the error. */
function readOne(input: Uint8Array, options: ParseOptions): Frame | undefined {
  const reader = new FrameReader(options);
  reader.feed(input);
  return reader.next();
}

/** A small deterministic PRNG (mulberry32), so that property tests are reproducible. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A random integer in [min, max]. */
function randomInt(random: () => number, min: number, max: number): number {
  return min + Math.floor(random() * (max - min + 1));
}

function randomBytes(random: () => number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (random() * 256) | 0;
  return out;
}

const DATA_OPCODES: Opcode[] = [Opcode.CONT, Opcode.TEXT, Opcode.BINARY];
const CONTROL_OPCODES: Opcode[] = [Opcode.CLOSE, Opcode.PING, Opcode.PONG];

/** A random valid frame: any opcode, header bits and length, payloads over 65535 bytes included. */
function randomFrame(random: () => number): Frame {
  const control = random() < 0.25;
  const opcode = control
    ? CONTROL_OPCODES[randomInt(random, 0, 2)]
    : DATA_OPCODES[randomInt(random, 0, 2)];
  const kind = random();
  const length = control
    ? randomInt(random, 0, 125)
    : kind < 0.6
    ? randomInt(random, 0, 125)
    : kind < 0.9
    ? randomInt(random, 126, 65535)
    : randomInt(random, 65536, 200_000);
  return new Frame(opcode, randomBytes(random, length), {
    fin: control || random() < 0.7,
    rsv1: random() < 0.3,
    rsv2: random() < 0.3,
    rsv3: random() < 0.3,
  });
}

/** The reference implementation of masking: one byte at a time. */
function naiveMask(data: Uint8Array, key: Uint8Array): Uint8Array {
  const out = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = data[i] ^ key[i % 4];
  return out;
}

/** Concatenates byte arrays (test helper; the library never does this in a loop). */
function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Feeds `stream` cut into `chunks` to a reader, draining it after every chunk. */
function readAll(chunks: Uint8Array[], options: ParseOptions): Frame[] {
  const reader = new FrameReader(options);
  const frames: Frame[] = [];
  for (const chunk of chunks) {
    reader.feed(chunk);
    for (let frame = reader.next(); frame !== undefined; frame = reader.next()) {
      frames.push(frame);
    }
  }
  assert.equal(reader.bufferedAmount, 0);
  return frames;
}

/** Cuts `stream` into views of random sizes between 1 and `maxChunk` bytes. */
function randomChunks(random: () => number, stream: Uint8Array, maxChunk: number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let offset = 0; offset < stream.length;) {
    const size = randomInt(random, 1, maxChunk);
    chunks.push(stream.subarray(offset, offset + size));
    offset += size;
  }
  return chunks;
}

const RFC_KEY = new Uint8Array([0x37, 0xfa, 0x21, 0x3d]);
const MASKED_HELLO = new Uint8Array([0x7f, 0x9f, 0x4d, 0x51, 0x58]);

// ---- Constants ----

Deno.test("frames: Opcode has the RFC 6455 values", () => {
  assert.deepEqual(
    { ...Opcode },
    { CONT: 0, TEXT: 1, BINARY: 2, CLOSE: 8, PING: 9, PONG: 10 },
  );
});

Deno.test("frames: CloseCode has the RFC 6455 and IANA values", () => {
  assert.deepEqual({ ...CloseCode }, {
    NORMAL_CLOSURE: 1000,
    GOING_AWAY: 1001,
    PROTOCOL_ERROR: 1002,
    UNSUPPORTED_DATA: 1003,
    NO_STATUS_RCVD: 1005,
    ABNORMAL_CLOSURE: 1006,
    INVALID_DATA: 1007,
    POLICY_VIOLATION: 1008,
    MESSAGE_TOO_BIG: 1009,
    MANDATORY_EXTENSION: 1010,
    INTERNAL_ERROR: 1011,
    SERVICE_RESTART: 1012,
    TRY_AGAIN_LATER: 1013,
    BAD_GATEWAY: 1014,
    TLS_HANDSHAKE: 1015,
  });
});

// ---- Frame ----

Deno.test("frames: Frame defaults fin to true and the RSV bits to false", () => {
  const data = encode("x");
  assert.deepEqual(fields(new Frame(Opcode.TEXT, data)), {
    opcode: 1,
    data,
    fin: true,
    rsv1: false,
    rsv2: false,
    rsv3: false,
  });
});

Deno.test("frames: Frame keeps the header bits it is given", () => {
  const frame = new Frame(Opcode.BINARY, new Uint8Array(0), {
    fin: false,
    rsv1: true,
    rsv2: true,
    rsv3: true,
  });
  assert.deepEqual(fields(frame), {
    opcode: 2,
    data: new Uint8Array(0),
    fin: false,
    rsv1: true,
    rsv2: true,
    rsv3: true,
  });
});

Deno.test("frames: Frame.isControl is true exactly for close, ping and pong", () => {
  const all = [...DATA_OPCODES, ...CONTROL_OPCODES];
  assert.deepEqual(
    all.map((opcode) => new Frame(opcode, new Uint8Array(0)).isControl),
    [false, false, false, true, true, true],
  );
});

Deno.test("frames: Frame.check accepts a 125-byte control frame", () => {
  for (const opcode of CONTROL_OPCODES) {
    assert.doesNotThrow(() => new Frame(opcode, new Uint8Array(125)).check());
  }
  assert.equal(new Frame(Opcode.PING, new Uint8Array(125)).serialize({ mask: false }).length, 127);
});

Deno.test("frames: Frame.check rejects a control frame over 125 bytes", () => {
  for (const opcode of CONTROL_OPCODES) {
    const frame = new Frame(opcode, new Uint8Array(126));
    assertProtocolError(() => frame.check(), "control frame too long");
    assertProtocolError(() => frame.serialize({ mask: false }), "control frame too long");
    assertProtocolError(() => frame.serialize({ mask: true }), "control frame too long");
  }
});

Deno.test("frames: Frame.check rejects a fragmented control frame", () => {
  for (const opcode of CONTROL_OPCODES) {
    const frame = new Frame(opcode, new Uint8Array(0), { fin: false });
    assertProtocolError(() => frame.check(), "fragmented control frame");
    assertProtocolError(() => frame.serialize({ mask: false }), "fragmented control frame");
  }
});

Deno.test("frames: Frame.check accepts data frames of any length and fragmentation", () => {
  for (const opcode of DATA_OPCODES) {
    assert.doesNotThrow(() => new Frame(opcode, new Uint8Array(70_000), { fin: false }).check());
  }
});

// ---- RFC 6455 §5.7 examples ----

const RFC_EXAMPLES: { name: string; wire: Uint8Array; frame: Frame; mask: boolean }[] = [
  {
    name: "a single-frame unmasked text message",
    wire: bytes(0x81, 0x05, encode("Hello")),
    frame: new Frame(Opcode.TEXT, encode("Hello")),
    mask: false,
  },
  {
    name: "a single-frame masked text message",
    wire: bytes(0x81, 0x85, RFC_KEY, MASKED_HELLO),
    frame: new Frame(Opcode.TEXT, encode("Hello")),
    mask: true,
  },
  {
    name: "the first fragment of an unmasked text message",
    wire: bytes(0x01, 0x03, encode("Hel")),
    frame: new Frame(Opcode.TEXT, encode("Hel"), { fin: false }),
    mask: false,
  },
  {
    name: "the last fragment of an unmasked text message",
    wire: bytes(0x80, 0x02, encode("lo")),
    frame: new Frame(Opcode.CONT, encode("lo")),
    mask: false,
  },
  {
    name: "an unmasked ping",
    wire: bytes(0x89, 0x05, encode("Hello")),
    frame: new Frame(Opcode.PING, encode("Hello")),
    mask: false,
  },
  {
    name: "a masked pong",
    wire: bytes(0x8a, 0x85, RFC_KEY, MASKED_HELLO),
    frame: new Frame(Opcode.PONG, encode("Hello")),
    mask: true,
  },
  {
    name: "a 256-byte unmasked binary message",
    wire: bytes(0x82, 0x7e, 0x01, 0x00, pattern(256)),
    frame: new Frame(Opcode.BINARY, pattern(256)),
    mask: false,
  },
  {
    name: "a 64 KiB unmasked binary message",
    wire: bytes(0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0, pattern(65536)),
    frame: new Frame(Opcode.BINARY, pattern(65536)),
    mask: false,
  },
];

for (const example of RFC_EXAMPLES) {
  Deno.test(`frames: parses RFC 6455 §5.7 ${example.name}`, () => {
    const frame = Frame.parse(example.wire.slice(), { mask: example.mask });
    assert.deepEqual(fields(frame), fields(example.frame));
  });

  Deno.test(`frames: serializes RFC 6455 §5.7 ${example.name}`, () => {
    const options = example.mask ? { mask: true, maskingKey: RFC_KEY } : { mask: false };
    assert.deepEqual(example.frame.serialize(options), example.wire);
  });
}

Deno.test("frames: parses the RFC 6455 §5.7 fragmented message from one stream", () => {
  const stream = bytes(0x01, 0x03, encode("Hel"), 0x80, 0x02, encode("lo"));
  assert.deepEqual(readAll([stream], { mask: false }).map(fields), [
    fields(new Frame(Opcode.TEXT, encode("Hel"), { fin: false })),
    fields(new Frame(Opcode.CONT, encode("lo"))),
  ]);
});

// ---- Length encodings ----

const LENGTH_HEADERS: [number, number[]][] = [
  [0, [0x00]],
  [125, [0x7d]],
  [126, [0x7e, 0x00, 0x7e]],
  [65535, [0x7e, 0xff, 0xff]],
  [65536, [0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]],
];

for (const [length, encoding] of LENGTH_HEADERS) {
  Deno.test(`frames: serializes a ${length}-byte payload with the minimal length encoding`, () => {
    const data = pattern(length, 7);
    const unmasked = new Frame(Opcode.BINARY, data).serialize({ mask: false });
    assert.deepEqual(unmasked, bytes(0x82, ...encoding, data));
    const masked = new Frame(Opcode.BINARY, data).serialize({ mask: true, maskingKey: RFC_KEY });
    assert.deepEqual(
      masked,
      bytes(0x82, encoding[0] | 0x80, ...encoding.slice(1), RFC_KEY, naiveMask(data, RFC_KEY)),
    );
  });

  Deno.test(`frames: parses a ${length}-byte payload in the minimal length encoding`, () => {
    const data = pattern(length, 7);
    const unmasked = Frame.parse(bytes(0x82, ...encoding, data), { mask: false });
    assert.deepEqual(fields(unmasked), fields(new Frame(Opcode.BINARY, data)));
    const masked = Frame.parse(
      bytes(0x82, encoding[0] | 0x80, ...encoding.slice(1), RFC_KEY, naiveMask(data, RFC_KEY)),
      { mask: true },
    );
    assert.deepEqual(fields(masked), fields(new Frame(Opcode.BINARY, data)));
  });
}

Deno.test("frames: serializes a length over 2^32 in the 64-bit encoding", () => {
  // Only the header is checked: a frame whose data claims a length of 2^32 + 5.
  const data = { length: 2 ** 32 + 5 } as unknown as Uint8Array;
  const frame = new Frame(Opcode.BINARY, data);
  const out = new Uint8Array(10);
  assert.throws(() => serializeInto(frame, out, 0, false), RangeError);
  assert.deepEqual(out, bytes(0x82, 0x7f, 0, 0, 0, 1, 0, 0, 0, 5));
});

Deno.test("frames: parses a 64-bit length up to 2^63 - 1 and checks it against maxSize", () => {
  const header = bytes(0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff);
  assertPayloadTooBig(() => readOne(header, { mask: false, maxSize: 1 }), 2 ** 63, 1);
  const small = bytes(0x82, 0x7f, 0, 0, 0, 1, 0, 0, 0, 5);
  assertPayloadTooBig(
    () => readOne(small, { mask: false, maxSize: 2 ** 32 }),
    2 ** 32 + 5,
    2 ** 32,
  );
});

Deno.test("frames: frameHeaderLength is 2, 4 or 10 bytes by length, plus 4 when masked", () => {
  const lengths = [0, 125, 126, 65535, 65536, 2 ** 40];
  assert.deepEqual(lengths.map((length) => frameHeaderLength(length, false)), [2, 2, 4, 4, 10, 10]);
  assert.deepEqual(lengths.map((length) => frameHeaderLength(length, true)), [6, 6, 8, 8, 14, 14]);
});

Deno.test("frames: frameHeaderLength matches the header serialize() writes", () => {
  for (const length of [0, 1, 125, 126, 127, 65535, 65536, 70000]) {
    for (const mask of [false, true]) {
      const out = new Frame(Opcode.BINARY, new Uint8Array(length)).serialize({ mask });
      assert.equal(out.length - length, frameHeaderLength(length, mask));
    }
  }
});

// ---- FrameReader validation ----

for (const opcode of [3, 4, 5, 6, 7, 11, 12, 13, 14, 15]) {
  Deno.test(`frames: FrameReader rejects reserved opcode ${opcode}`, () => {
    assertProtocolError(
      () => readOne(bytes(0x80 | opcode, 0x00), { mask: false }),
      `invalid opcode: ${opcode}`,
    );
    assertProtocolError(
      () => readOne(bytes(0x80 | opcode, 0x80, 0, 0, 0, 0), { mask: true }),
      `invalid opcode: ${opcode}`,
    );
  });
}

Deno.test("frames: FrameReader accepts the six defined opcodes", () => {
  const opcodes = [...DATA_OPCODES, ...CONTROL_OPCODES];
  assert.deepEqual(
    opcodes.map((opcode) => readOne(bytes(0x80 | opcode, 0x00), { mask: false })?.opcode),
    [0, 1, 2, 8, 9, 10],
  );
});

Deno.test("frames: FrameReader rejects each RSV bit when no extension allows it", () => {
  for (const rsv of [0x40, 0x20, 0x10, 0x70]) {
    assertProtocolError(
      () => readOne(bytes(0x82 | rsv, 0x00), { mask: false }),
      "reserved bits must be 0",
    );
    assertProtocolError(
      () => readOne(bytes(0x82 | rsv, 0x00), { mask: false, allowedRsv: 0 }),
      "reserved bits must be 0",
    );
  }
});

Deno.test("frames: FrameReader accepts RSV1 when allowedRsv has it and still rejects RSV2 and RSV3", () => {
  const frame = readOne(bytes(0xc1, 0x00), { mask: false, allowedRsv: 0x40 })!;
  assert.deepEqual(fields(frame), {
    opcode: 1,
    data: new Uint8Array(0),
    fin: true,
    rsv1: true,
    rsv2: false,
    rsv3: false,
  });
  for (const rsv of [0x20, 0x10, 0x60]) {
    assertProtocolError(
      () => readOne(bytes(0x81 | rsv, 0x00), { mask: false, allowedRsv: 0x40 }),
      "reserved bits must be 0",
    );
  }
});

Deno.test("frames: FrameReader reports each RSV bit allowed by allowedRsv", () => {
  const read = (first: number) =>
    fields(readOne(bytes(first, 0x00), { mask: false, allowedRsv: 0x70 })!);
  assert.deepEqual(
    [read(0x42), read(0x22), read(0x12), read(0x72)].map(({ fin, rsv1, rsv2, rsv3 }) => [
      fin,
      rsv1,
      rsv2,
      rsv3,
    ]),
    [
      [false, true, false, false],
      [false, false, true, false],
      [false, false, false, true],
      [false, true, true, true],
    ],
  );
});

Deno.test("frames: FrameReader allowedRsv can change between frames", () => {
  const reader = new FrameReader({ mask: false });
  reader.feed(bytes(0xc1, 0x00, 0xc1, 0x00));
  assertProtocolError(() => reader.next(), "reserved bits must be 0");
  reader.allowedRsv = 0x40;
  assert.equal(reader.next()?.rsv1, true);
  assert.equal(reader.next()?.rsv1, true);
});

Deno.test("frames: a client's FrameReader rejects a masked frame", () => {
  assertProtocolError(
    () => readOne(bytes(0x81, 0x85, RFC_KEY, MASKED_HELLO), { mask: false }),
    "incorrect masking: frame must not be masked",
  );
});

Deno.test("frames: a server's FrameReader rejects an unmasked frame", () => {
  assertProtocolError(
    () => readOne(bytes(0x81, 0x05, encode("Hello")), { mask: true }),
    "incorrect masking: frame must be masked",
  );
});

Deno.test("frames: FrameReader rejects a fragmented control frame from its first two bytes", () => {
  for (const opcode of CONTROL_OPCODES) {
    assertProtocolError(
      () => readOne(bytes(opcode, 0x00), { mask: false }),
      "fragmented control frame",
    );
  }
});

Deno.test("frames: FrameReader rejects a control frame over 125 bytes from its first two bytes", () => {
  for (const opcode of CONTROL_OPCODES) {
    for (const length of [0x7e, 0x7f]) {
      assertProtocolError(
        () => readOne(bytes(0x80 | opcode, length), { mask: false }),
        "control frame too long",
      );
    }
  }
});

Deno.test("frames: FrameReader rejects a 64-bit length with the most significant bit set", () => {
  const header = bytes(0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0x05);
  assertProtocolError(
    () => readOne(header, { mask: false }),
    "invalid payload length: the most significant bit must be 0",
  );
  const all = bytes(0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0);
  assertProtocolError(
    () => readOne(all, { mask: true, maxSize: 1 }),
    "invalid payload length: the most significant bit must be 0",
  );
});

Deno.test("frames: FrameReader rejects a 2^40-byte length over maxSize from the header alone", () => {
  const reader = new FrameReader({ mask: true, maxSize: 1024 * 1024 });
  // The 14 header bytes and nothing else: a reader that allocated from the
  // declared length would fail with a RangeError or run out of memory.
  reader.feed(bytes(0x82, 0xff, 0, 0, 0x01, 0, 0, 0, 0, 0, RFC_KEY));
  assertPayloadTooBig(() => reader.next(), 2 ** 40, 1024 * 1024);
  assert.equal(reader.bufferedAmount, 14);
});

Deno.test("frames: without maxSize, a length too big to allocate is PayloadTooBig, not a RangeError", () => {
  for (const high of [0x40, 0x01]) { // 2^62 (no typed array that long) and 2^56 (no such memory)
    const reader = new FrameReader({ mask: false });
    reader.feed(bytes(0x82, 0x7f, high, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3));
    assert.throws(() => reader.next(), (error: unknown) => {
      assert.ok(error instanceof PayloadTooBig);
      const size = high * 2 ** 56;
      assert.deepEqual([error.message, error.size, error.maxSize], [
        `message too big: ${size} bytes is more than can be allocated`,
        size,
        Infinity,
      ]);
      return true;
    });
  }
});

Deno.test("frames: FrameReader rejects a 16-bit length over maxSize before the payload arrives", () => {
  assertPayloadTooBig(
    () => readOne(bytes(0x82, 0x7e, 0x01, 0x00), { mask: false, maxSize: 255 }),
    256,
    255,
  );
});

Deno.test("frames: FrameReader rejects a 7-bit length over maxSize", () => {
  assertPayloadTooBig(() => readOne(bytes(0x82, 0x05), { mask: false, maxSize: 4 }), 5, 4);
});

Deno.test("frames: FrameReader accepts a payload of exactly maxSize bytes", () => {
  const frame = readOne(bytes(0x82, 0x7e, 0x01, 0x00, pattern(256)), {
    mask: false,
    maxSize: 256,
  });
  assert.deepEqual(fields(frame!), fields(new Frame(Opcode.BINARY, pattern(256))));
});

Deno.test("frames: FrameReader maxSize doesn't apply to control frames", () => {
  // The protocol lowers maxSize to what is left of a message; a ping between
  // fragments must still get through.
  const ping = readOne(bytes(0x89, 0x7d, pattern(125)), { mask: false, maxSize: 0 });
  assert.deepEqual(fields(ping!), fields(new Frame(Opcode.PING, pattern(125))));
});

Deno.test("frames: FrameReader maxSize can change between frames", () => {
  const reader = new FrameReader({ mask: false, maxSize: 10 });
  reader.feed(bytes(0x82, 0x05, pattern(5), 0x82, 0x05, pattern(5)));
  assert.deepEqual(reader.next()?.data, pattern(5));
  reader.maxSize = 4;
  assertPayloadTooBig(() => reader.next(), 5, 4);
  reader.maxSize = 5;
  assert.deepEqual(reader.next()?.data, pattern(5));
});

Deno.test("frames: FrameReader maxSize defaults to no limit", () => {
  const reader = new FrameReader({ mask: false });
  assert.deepEqual([reader.maxSize, reader.allowedRsv, reader.mask], [Infinity, 0, false]);
});

Deno.test("frames: FrameReader returns the frames before a broken rule, then throws", () => {
  const reader = new FrameReader({ mask: false });
  reader.feed(bytes(0x81, 0x01, 0x41, 0x83, 0x00, 0x81, 0x01, 0x42));
  assert.deepEqual(fields(reader.next()!), fields(new Frame(Opcode.TEXT, encode("A"))));
  assertProtocolError(() => reader.next(), "invalid opcode: 3");
  assertProtocolError(() => reader.next(), "invalid opcode: 3");
});

// ---- FrameReader incremental parsing ----

Deno.test("frames: FrameReader returns undefined until a header is complete", () => {
  const wire = new Frame(Opcode.BINARY, pattern(70_000)).serialize({ mask: true });
  const reader = new FrameReader({ mask: true });
  const seen: (Frame | undefined)[] = [];
  for (let i = 0; i < 14; i++) {
    reader.feed(wire.subarray(i, i + 1));
    seen.push(reader.next());
  }
  assert.deepEqual(seen, new Array(14).fill(undefined));
  reader.feed(wire.subarray(14));
  assert.deepEqual(fields(reader.next()!), fields(new Frame(Opcode.BINARY, pattern(70_000))));
});

Deno.test("frames: FrameReader next() on an empty reader returns undefined", () => {
  const reader = new FrameReader({ mask: false });
  assert.deepEqual([reader.next(), reader.bufferedAmount], [undefined, 0]);
});

Deno.test("frames: FrameReader feed() of an empty chunk changes nothing", () => {
  const reader = new FrameReader({ mask: false });
  reader.feed(new Uint8Array(0));
  assert.deepEqual([reader.next(), reader.bufferedAmount], [undefined, 0]);
  reader.feed(bytes(0x82, 0x03, 1));
  reader.feed(new Uint8Array(0));
  assert.deepEqual([reader.next(), reader.bufferedAmount], [undefined, 3]);
  reader.feed(new Uint8Array(0));
  assert.deepEqual([reader.next(), reader.bufferedAmount], [undefined, 3]);
  reader.feed(bytes(2, 3));
  assert.deepEqual([reader.next()?.data, reader.bufferedAmount], [bytes(1, 2, 3), 0]);
});

Deno.test("frames: FrameReader bufferedAmount counts bytes not yet returned in a frame", () => {
  const reader = new FrameReader({ mask: false });
  const amounts: number[] = [];
  const step = (chunk: Uint8Array | undefined, expected: number | undefined) => {
    if (chunk !== undefined) reader.feed(chunk);
    amounts.push(reader.bufferedAmount);
    if (expected !== undefined) assert.equal(reader.next()?.data.length, expected);
  };
  step(bytes(0x82, 0x01, 1, 0x82), 1); // one frame and the first byte of the next
  step(undefined, undefined);
  step(bytes(0x7e, 0x01, 0x00, 9, 9), undefined); // a 256-byte frame starts
  step(undefined, undefined);
  step(new Uint8Array(100), undefined);
  step(undefined, undefined);
  step(bytes(pattern(154), 0x82, 0x00), 256);
  step(undefined, 0);
  step(undefined, undefined);
  assert.deepEqual(amounts, [4, 1, 6, 6, 106, 106, 262, 2, 0]);
});

Deno.test("frames: FrameReader bufferedAmount counts a header split between chunks", () => {
  const reader = new FrameReader({ mask: true });
  const wire = new Frame(Opcode.BINARY, pattern(300)).serialize({ mask: true });
  const amounts: number[] = [];
  for (let i = 0; i < 8; i++) {
    reader.feed(wire.subarray(i, i + 1));
    assert.equal(reader.next(), undefined);
    amounts.push(reader.bufferedAmount);
  }
  assert.deepEqual(amounts, [1, 2, 3, 4, 5, 6, 7, 8]);
  reader.feed(wire.subarray(8, 20));
  assert.deepEqual([reader.next(), reader.bufferedAmount], [undefined, 20]);
  reader.feed(wire.subarray(20));
  assert.deepEqual([reader.next()?.data, reader.bufferedAmount], [pattern(300), 0]);
});

Deno.test("frames: FrameReader returns a frame whole in a chunk as a view of it, unmasked in place", () => {
  const wire = bytes(0x81, 0x85, RFC_KEY, MASKED_HELLO);
  const frame = readOne(wire, { mask: true })!;
  assert.equal(frame.data.buffer, wire.buffer);
  assert.equal(frame.data.byteOffset, 6);
  assert.deepEqual(wire.subarray(6), encode("Hello"));
});

Deno.test("frames: FrameReader copies a frame spanning chunks into one buffer of its length", () => {
  const data = pattern(1000);
  const wire = new Frame(Opcode.BINARY, data).serialize({ mask: false });
  const reader = new FrameReader({ mask: false });
  const chunks = [wire.slice(0, 300), wire.slice(300, 700), wire.slice(700)];
  const results: (Frame | undefined)[] = [];
  for (const chunk of chunks) {
    reader.feed(chunk);
    results.push(reader.next());
  }
  assert.deepEqual(results.slice(0, 2), [undefined, undefined]);
  const frame = results[2]!;
  assert.deepEqual(frame.data, data);
  assert.deepEqual([frame.data.byteOffset, frame.data.buffer.byteLength], [0, 1000]);
});

Deno.test("frames: FrameReader places a masked payload spanning chunks at its chunk offset modulo 8", () => {
  const data = pattern(1000);
  for (let lead = 0; lead < 8; lead++) {
    // `lead` bytes of an earlier frame, then the masked frame, in 64-byte chunks.
    const before = new Frame(Opcode.BINARY, pattern(lead)).serialize({ mask: true });
    const wire = concat([before, new Frame(Opcode.BINARY, data).serialize({ mask: true })]);
    const chunks = randomChunks(() => 63 / 64, wire, 64);
    const frames = readAll(chunks, { mask: true });
    assert.deepEqual(frames[1].data, data);
    const payloadAt = before.length + 8;
    assert.equal(frames[1].data.byteOffset, payloadAt & 7);
  }
});

Deno.test("frames: FrameReader keeps the key of a frame spanning chunks when the first chunk is reused", () => {
  const data = pattern(100);
  const wire = new Frame(Opcode.BINARY, data).serialize({ mask: true });
  const reader = new FrameReader({ mask: true });
  const first = wire.slice(0, 50);
  reader.feed(first);
  assert.equal(reader.next(), undefined);
  first.fill(0); // the caller gave the chunk away; the key must not be read from it again
  reader.feed(wire.slice(50));
  assert.deepEqual(reader.next()?.data, data);
});

Deno.test("frames: FrameReader parses the rest of a chunk after a spanning frame", () => {
  const one = new Frame(Opcode.BINARY, pattern(300)).serialize({ mask: false });
  const two = new Frame(Opcode.TEXT, encode("after")).serialize({ mask: false });
  const stream = concat([one, two]);
  assert.deepEqual(
    readAll([stream.subarray(0, 10), stream.subarray(10)], { mask: false }).map(fields),
    [
      fields(new Frame(Opcode.BINARY, pattern(300))),
      fields(new Frame(Opcode.TEXT, encode("after"))),
    ],
  );
});

Deno.test("frames: FrameReader gives the same frames when several chunks are fed before draining", () => {
  const random = prng(7);
  const frames = Array.from({ length: 50 }, () => randomFrame(random));
  const stream = concat(frames.map((frame) => frame.serialize({ mask: false })));
  const reader = new FrameReader({ mask: false, allowedRsv: 0x70 });
  for (const chunk of randomChunks(random, stream, 5000)) reader.feed(chunk);
  const parsed: Frame[] = [];
  for (let frame = reader.next(); frame !== undefined; frame = reader.next()) parsed.push(frame);
  assert.deepEqual(parsed.map(fields), frames.map(fields));
  assert.equal(reader.bufferedAmount, 0);
});

Deno.test("frames: FrameReader gives the same frames when one-byte chunks are fed before draining", () => {
  const random = prng(9);
  const frames = Array.from({ length: 30 }, () => randomFrame(random));
  const stream = concat(frames.map((frame) => frame.serialize({ mask: true })));
  const reader = new FrameReader({ mask: true, allowedRsv: 0x70 });
  for (let i = 0; i < stream.length; i++) reader.feed(stream.subarray(i, i + 1));
  assert.equal(reader.bufferedAmount, stream.length);
  const parsed: Frame[] = [];
  for (let frame = reader.next(); frame !== undefined; frame = reader.next()) parsed.push(frame);
  assert.deepEqual(parsed.map(fields), frames.map(fields));
  assert.equal(reader.bufferedAmount, 0);
});

Deno.test("frames: FrameReader doesn't copy the next chunk to join a header split between chunks", () => {
  const one = new Frame(Opcode.BINARY, pattern(10)).serialize({ mask: false });
  const two = new Frame(Opcode.BINARY, pattern(300, 1)).serialize({ mask: false });
  const stream = concat([one, two]);
  const first = stream.subarray(0, one.length + 1); // the first byte of the second header
  const second = stream.slice(one.length + 1);
  const reader = new FrameReader({ mask: false });
  reader.feed(first);
  assert.deepEqual(reader.next()?.data, pattern(10));
  assert.equal(reader.next(), undefined);
  reader.feed(second);
  const frame = reader.next()!;
  assert.deepEqual(frame.data, pattern(300, 1));
  // The payload is a view of the second chunk, not of a joined copy.
  assert.deepEqual([frame.data.buffer === second.buffer, frame.data.byteOffset], [true, 3]);
});

Deno.test("frames: FrameReader reports a rule broken in a split header on every call", () => {
  const reader = new FrameReader({ mask: false, maxSize: 10 });
  reader.feed(bytes(0x82));
  assert.equal(reader.next(), undefined);
  reader.feed(bytes(0x7e, 0x01));
  assert.equal(reader.next(), undefined);
  reader.feed(bytes(0x00));
  assertPayloadTooBig(() => reader.next(), 256, 10);
  assertPayloadTooBig(() => reader.next(), 256, 10);

  const other = new FrameReader({ mask: false });
  other.feed(bytes(0x83));
  assert.equal(other.next(), undefined);
  other.feed(bytes(0x00));
  assertProtocolError(() => other.next(), "invalid opcode: 3");
  assertProtocolError(() => other.next(), "invalid opcode: 3");
});

Deno.test("frames: FrameReader checks a 64-bit length split between chunks", () => {
  const reader = new FrameReader({ mask: false });
  reader.feed(bytes(0x82, 0x7f, 0x80, 0));
  assert.equal(reader.next(), undefined);
  reader.feed(bytes(0, 0, 0, 0, 0, 1));
  assertProtocolError(
    () => reader.next(),
    "invalid payload length: the most significant bit must be 0",
  );
});

Deno.test("frames: FrameReader reads a frame with an all-zero key spanning chunks", () => {
  const wire = new Frame(Opcode.BINARY, pattern(100)).serialize({
    mask: true,
    maskingKey: new Uint8Array(4),
  });
  assert.deepEqual(wire.subarray(6), pattern(100));
  assert.deepEqual(readAll([wire.subarray(0, 40), wire.subarray(40)], { mask: true }).map(fields), [
    fields(new Frame(Opcode.BINARY, pattern(100))),
  ]);
});

Deno.test("frames: FrameReader unmasks a spanning payload cut at any offset", () => {
  const data = pattern(1000, 3);
  for (let cut = 6; cut < 20; cut++) {
    const wire = new Frame(Opcode.BINARY, data).serialize({ mask: true });
    const chunks = [wire.subarray(0, cut), wire.subarray(cut, cut + 333), wire.subarray(cut + 333)];
    assert.deepEqual(readAll(chunks, { mask: true })[0].data, data, `cut at ${cut}`);
  }
});

Deno.test("frames: FrameReader parses an empty masked frame", () => {
  const frame = readOne(bytes(0x82, 0x80, RFC_KEY), { mask: true })!;
  assert.deepEqual(fields(frame), fields(new Frame(Opcode.BINARY, new Uint8Array(0))));
});

// ---- Frame.parse ----

Deno.test("frames: Frame.parse rejects incomplete input", () => {
  for (
    const wire of [new Uint8Array(0), bytes(0x81), bytes(0x81, 0x05, 0x48), bytes(0x82, 0x7e, 0x01)]
  ) {
    assertProtocolError(() => Frame.parse(wire, { mask: false }), "incomplete frame");
  }
});

Deno.test("frames: Frame.parse rejects trailing data after the frame", () => {
  assertProtocolError(
    () => Frame.parse(bytes(0x81, 0x01, 0x41, 0x00), { mask: false }),
    "trailing data after frame",
  );
  assertProtocolError(
    () => Frame.parse(bytes(0x81, 0x01, 0x41, 0x81, 0x01, 0x42), { mask: false }),
    "trailing data after frame",
  );
});

Deno.test("frames: Frame.parse applies maxSize and allowedRsv", () => {
  assertPayloadTooBig(
    () => Frame.parse(bytes(0x82, 0x03, 1, 2, 3), { mask: false, maxSize: 2 }),
    3,
    2,
  );
  const frame = Frame.parse(bytes(0xa2, 0x01, 1), { mask: false, allowedRsv: 0x20 });
  assert.deepEqual(fields(frame), fields(new Frame(Opcode.BINARY, bytes(1), { rsv2: true })));
});

// ---- serialize ----

Deno.test("frames: Frame.serialize writes FIN and RSV bits into the first byte", () => {
  const cases: [FrameOptionsTuple, number][] = [
    [[true, false, false, false], 0x82],
    [[false, false, false, false], 0x02],
    [[true, true, false, false], 0xc2],
    [[true, false, true, false], 0xa2],
    [[true, false, false, true], 0x92],
    [[false, true, true, true], 0x72],
  ];
  for (const [[fin, rsv1, rsv2, rsv3], first] of cases) {
    const frame = new Frame(Opcode.BINARY, new Uint8Array(0), { fin, rsv1, rsv2, rsv3 });
    assert.deepEqual(frame.serialize({ mask: false }), bytes(first, 0x00));
  }
});

type FrameOptionsTuple = [boolean, boolean, boolean, boolean];

Deno.test("frames: Frame.serialize masking leaves the frame's data unchanged", () => {
  const data = pattern(1000);
  const frame = new Frame(Opcode.BINARY, data);
  const out = frame.serialize({ mask: true });
  assert.deepEqual(data, pattern(1000));
  assert.deepEqual(
    fields(Frame.parse(out, { mask: true })),
    fields(new Frame(Opcode.BINARY, pattern(1000))),
  );
});

Deno.test("frames: Frame.serialize draws a fresh masking key for every frame", () => {
  const frame = new Frame(Opcode.TEXT, encode("Hello"));
  const keys = new Set<string>();
  for (let i = 0; i < 100; i++) keys.add(frame.serialize({ mask: true }).subarray(2, 6).join());
  assert.ok(keys.size >= 99, `only ${keys.size} distinct keys in 100 frames`);
});

Deno.test("frames: Frame.serialize rejects a masking key that isn't 4 bytes", () => {
  const frame = new Frame(Opcode.TEXT, encode("Hello"));
  for (const length of [0, 3, 5]) {
    assert.throws(() => frame.serialize({ mask: true, maskingKey: new Uint8Array(length) }), {
      name: "RangeError",
      message: `masking key must be 4 bytes, got ${length}`,
    });
  }
});

Deno.test("frames: Frame.serialize ignores maskingKey when not masking", () => {
  const frame = new Frame(Opcode.TEXT, encode("Hello"));
  assert.deepEqual(
    frame.serialize({ mask: false, maskingKey: RFC_KEY }),
    bytes(0x81, 0x05, encode("Hello")),
  );
});

Deno.test("frames: Frame.serialize gives every result bytes of its own", () => {
  const outputs: Uint8Array[] = [];
  for (let i = 0; i < 2000; i++) {
    outputs.push(new Frame(Opcode.BINARY, pattern(i % 40)).serialize({ mask: false }));
  }
  for (const out of outputs) out.fill(0xee);
  assert.deepEqual(new Set(outputs.flatMap((out) => [...out])), new Set([0xee]));
  const fresh = new Frame(Opcode.BINARY, pattern(3)).serialize({ mask: false });
  assert.deepEqual(fresh, bytes(0x82, 0x03, 0, 1, 2));
});

Deno.test("frames: Frame.serialize still works after a result's buffer was transferred away", () => {
  const first = new Frame(Opcode.BINARY, pattern(3)).serialize({ mask: false });
  (first.buffer as ArrayBuffer).transfer();
  assert.equal(first.length, 0);
  const second = new Frame(Opcode.BINARY, pattern(3)).serialize({ mask: false });
  assert.deepEqual(second, bytes(0x82, 0x03, 0, 1, 2));
});

Deno.test("frames: Frame.serialize masks payloads at every alignment and length", () => {
  const random = prng(10);
  for (let offset = 0; offset < 8; offset++) {
    for (const length of [0, 5, 95, 96, 97, 125, 126, 511, 512, 513, 1000, 1021, 2000, 70_001]) {
      const backing = randomBytes(random, offset + length);
      const data = backing.subarray(offset);
      const copy = data.slice();
      const out = new Frame(Opcode.BINARY, data).serialize({ mask: true, maskingKey: RFC_KEY });
      const headerLength = frameHeaderLength(length, true);
      assert.deepEqual(out.subarray(headerLength), naiveMask(copy, RFC_KEY), `${offset}/${length}`);
      assert.deepEqual(out.subarray(headerLength - 4, headerLength), RFC_KEY);
      assert.deepEqual(data, copy);
    }
  }
});

Deno.test("frames: serializeInto masks payloads at every offset of the output", () => {
  const random = prng(11);
  for (const length of [10, 200, 600, 3000]) {
    const data = randomBytes(random, length);
    for (let offset = 0; offset < 8; offset++) {
      const out = new Uint8Array(offset + frameHeaderLength(length, true) + length);
      assert.equal(serializeInto(new Frame(Opcode.BINARY, data), out, offset, true), out.length);
      const frame = Frame.parse(out.subarray(offset), { mask: true });
      assert.deepEqual(frame.data, data, `${offset}/${length}`);
    }
  }
});

Deno.test("frames: Frame.serialize gives a large unmasked frame a buffer of its own", () => {
  const out = new Frame(Opcode.BINARY, pattern(2000)).serialize({ mask: false });
  assert.deepEqual([out.byteOffset, out.buffer.byteLength], [0, 2004]);
});

Deno.test("frames: Frame.serialize copies a masking key given as a view", () => {
  const keyBytes = bytes(0xff, 0x37, 0xfa, 0x21, 0x3d, 0xff).subarray(1, 5);
  const out = new Frame(Opcode.TEXT, encode("Hello")).serialize({
    mask: true,
    maskingKey: keyBytes,
  });
  assert.deepEqual(out, bytes(0x81, 0x85, RFC_KEY, MASKED_HELLO));
});

// ---- serializeInto ----

Deno.test("frames: serializeInto writes several frames back to back and returns the next offset", () => {
  const frames = [
    new Frame(Opcode.TEXT, encode("Hel"), { fin: false }),
    new Frame(Opcode.PING, new Uint8Array(0)),
    new Frame(Opcode.CONT, encode("lo")),
    new Frame(Opcode.BINARY, pattern(300)),
  ];
  const size = frames.reduce(
    (sum, f) => sum + frameHeaderLength(f.data.length, false) + f.data.length,
    0,
  );
  const out = new Uint8Array(size + 3);
  let offset = 3;
  const offsets: number[] = [];
  for (const frame of frames) {
    offset = serializeInto(frame, out, offset, false);
    offsets.push(offset);
  }
  assert.deepEqual(offsets, [8, 10, 14, 318]);
  assert.deepEqual(
    out.subarray(3),
    concat(frames.map((frame) => frame.serialize({ mask: false }))),
  );
  assert.deepEqual(out.subarray(0, 3), new Uint8Array(3));
});

Deno.test("frames: serializeInto masks with a random key when asked", () => {
  const frames = [new Frame(Opcode.TEXT, encode("Hello")), new Frame(Opcode.BINARY, pattern(200))];
  const size = frames.reduce(
    (sum, f) => sum + frameHeaderLength(f.data.length, true) + f.data.length,
    0,
  );
  const out = new Uint8Array(size);
  let offset = 0;
  for (const frame of frames) offset = serializeInto(frame, out, offset, true);
  assert.equal(offset, size);
  assert.deepEqual(readAll([out], { mask: true }).map(fields), frames.map(fields));
  assert.deepEqual(frames[1].data, pattern(200));
});

Deno.test("frames: serializeInto checks the frame first", () => {
  const out = new Uint8Array(200);
  assertProtocolError(
    () => serializeInto(new Frame(Opcode.PING, new Uint8Array(126)), out, 0, false),
    "control frame too long",
  );
  assertProtocolError(
    () => serializeInto(new Frame(Opcode.CLOSE, new Uint8Array(0), { fin: false }), out, 0, true),
    "fragmented control frame",
  );
  assert.deepEqual(out, new Uint8Array(200));
});

// ---- Property tests ----

for (const mask of [false, true]) {
  Deno.test(`frames: random frames survive serialize → parse (${mask ? "masked" : "unmasked"})`, () => {
    const random = prng(mask ? 1 : 2);
    for (let i = 0; i < 300; i++) {
      const frame = randomFrame(random);
      const expected = fields(frame);
      const wire = frame.serialize({ mask });
      assert.equal(wire.length, frameHeaderLength(frame.data.length, mask) + frame.data.length);
      const parsed = Frame.parse(wire, { mask, allowedRsv: 0x70 });
      assert.deepEqual(fields(parsed), expected);
    }
  });

  Deno.test(`frames: any split of a stream gives the same frames (${mask ? "masked" : "unmasked"})`, () => {
    const random = prng(mask ? 3 : 4);
    const frames = Array.from({ length: 120 }, () => randomFrame(random));
    const expected = frames.map(fields);
    const stream = concat(frames.map((frame) => frame.serialize({ mask })));
    const options = { mask, allowedRsv: 0x70 };
    // Each reading gets its own copy: the reader unmasks in place.
    assert.deepEqual(readAll([stream.slice()], options).map(fields), expected);
    for (const maxChunk of [2, 7, 100, 5000, 70_000, 300_000]) {
      const chunks = randomChunks(random, stream.slice(), maxChunk);
      assert.deepEqual(readAll(chunks, options).map(fields), expected, `chunks up to ${maxChunk}`);
    }
  });

  Deno.test(`frames: a stream fed one byte at a time gives the same frames (${mask ? "masked" : "unmasked"})`, () => {
    const random = prng(mask ? 5 : 6);
    const frames = Array.from({ length: 40 }, () => randomFrame(random));
    frames.push(new Frame(Opcode.BINARY, pattern(65536)), new Frame(Opcode.TEXT, pattern(70_000)));
    const expected = frames.map(fields);
    const stream = concat(frames.map((frame) => frame.serialize({ mask }))).slice();
    const chunks = Array.from({ length: stream.length }, (_, i) => stream.subarray(i, i + 1));
    assert.deepEqual(readAll(chunks, { mask, allowedRsv: 0x70 }).map(fields), expected);
  });

  Deno.test(`frames: payloads read straight into payloadSpace() give the same frames (${mask ? "masked" : "unmasked"})`, () => {
    const random = prng(mask ? 7 : 8);
    const frames = Array.from({ length: 150 }, () => randomFrame(random));
    const expected = frames.map(fields);
    for (const minimum of [0, 1, 16384]) {
      const stream = concat(frames.map((frame) => frame.serialize({ mask })));
      const reader = new FrameReader({ mask, allowedRsv: 0x70 });
      const parsed: Frame[] = [];
      let direct = 0;
      // As a connection reads: into the frame being read when it offers room, else a new chunk.
      for (let offset = 0; offset < stream.length;) {
        const space = reader.payloadSpace(minimum);
        const size = Math.min(randomInt(random, 1, 100_000), stream.length - offset);
        if (space !== undefined) {
          assert.ok(space.length >= minimum);
          const count = Math.min(size, space.length);
          space.set(stream.subarray(offset, offset + count));
          reader.payloadReceived(count);
          offset += count;
          direct++;
        } else {
          reader.feed(stream.slice(offset, offset + size));
          offset += size;
        }
        for (let frame = reader.next(); frame !== undefined; frame = reader.next()) {
          parsed.push(frame);
        }
      }
      assert.deepEqual(parsed.map(fields), expected, `minimum ${minimum}`);
      assert.equal(reader.bufferedAmount, 0);
      assert.ok(direct > 10, `${direct} direct reads with minimum ${minimum}`);
    }
  });
}

Deno.test("frames: payloadSpace offers room only when every byte fed was parsed and enough is to come", () => {
  const wire = new Frame(Opcode.BINARY, pattern(40_000)).serialize({ mask: true });
  const reader = new FrameReader({ mask: true });
  assert.equal(reader.payloadSpace(0), undefined, "no frame is being read");
  reader.feed(wire.slice(0, 1000));
  assert.equal(reader.payloadSpace(0), undefined, "fed, not yet parsed");
  assert.equal(reader.next(), undefined);
  assert.equal(reader.payloadSpace(0)!.length, 40_000 - (1000 - 8));
  assert.equal(reader.payloadSpace(39_009), undefined, "less than the minimum is to come");
  assert.equal(reader.payloadSpace(39_008)?.length, 39_008);
  reader.feed(wire.slice(1000, 2000));
  assert.equal(reader.payloadSpace(0), undefined, "a chunk is waiting");
  assert.equal(reader.next(), undefined);
  // Bytes written at an odd offset are unmasked with the key rotated to that offset.
  const space = reader.payloadSpace(0)!;
  space.set(wire.subarray(2000, 2003));
  reader.payloadReceived(3);
  assert.equal(reader.bufferedAmount, 2003);
  reader.payloadSpace(0)!.set(wire.subarray(2003));
  reader.payloadReceived(wire.length - 2003);
  assert.equal(reader.payloadSpace(0), undefined, "nothing more is to come");
  assert.deepEqual(reader.next()!.data, pattern(40_000));
  assert.equal(reader.bufferedAmount, 0);
});

Deno.test("frames: pending shows the unmasked bytes of a frame still arriving, fed or read directly", () => {
  const payload = pattern(40_000);
  const wire = new Frame(Opcode.TEXT, payload, { fin: false }).serialize({ mask: true });
  const reader = new FrameReader({ mask: true });
  const seen: [number, boolean][] = [];
  const look = () => {
    const pending = reader.pending;
    if (pending === undefined) return seen.push([-1, false]);
    const filled = reader.pendingFilled;
    const arrived = pending.data.subarray(0, filled);
    seen.push([filled, arrived.every((byte, i) => byte === payload[i])]);
  };
  look();
  reader.feed(wire.slice(0, 5)); // part of the header
  assert.equal(reader.next(), undefined);
  look();
  reader.feed(wire.slice(5, 1001));
  assert.equal(reader.next(), undefined);
  look();
  reader.payloadSpace(0)!.set(wire.subarray(1001, 30_003));
  reader.payloadReceived(29_002);
  look();
  const pending = reader.pending;
  reader.feed(wire.slice(30_003));
  const frame = reader.next()!;
  look();
  assert.deepEqual(seen, [[-1, false], [-1, false], [993, true], [29_995, true], [-1, false]]);
  assert.equal(frame, pending, "the same object, once complete");
  assert.deepEqual([frame.opcode, frame.fin, frame.data], [Opcode.TEXT, false, payload]);
});

Deno.test("frames: payloadReceived refuses counts that don't fit the frame being read", () => {
  const reader = new FrameReader({ mask: false });
  assert.throws(() => reader.payloadReceived(1), {
    name: "RangeError",
    message: "no frame is being read",
  });
  reader.feed(bytes(0x82, 126, 0x01, 0x00, 1, 2)); // 256 bytes declared, 2 came
  assert.equal(reader.next(), undefined);
  assert.throws(() => reader.payloadReceived(255), {
    name: "RangeError",
    message: "255 bytes received, but the frame lacks only 254",
  });
  assert.throws(() => reader.payloadReceived(-1), RangeError);
  reader.payloadReceived(0);
  assert.equal(reader.bufferedAmount, 6);
});

// ---- applyMask ----

Deno.test("frames: applyMask matches a byte-at-a-time reference at every alignment and length", () => {
  const random = prng(8);
  const lengths = [...Array.from({ length: 71 }, (_, i) => i), 127, 1000, 65536 + 3, 262_147];
  for (let offset = 0; offset < 8; offset++) {
    for (const length of lengths) {
      const key = randomBytes(random, 4);
      const buffer = randomBytes(random, offset + length + 8);
      const expected = buffer.slice();
      expected.set(naiveMask(buffer.subarray(offset, offset + length), key), offset);
      applyMask(buffer.subarray(offset, offset + length), key);
      // Whole buffer: the bytes around the view must be untouched.
      assert.deepEqual(buffer, expected, `offset ${offset}, length ${length}`);
    }
  }
});

Deno.test("frames: applyMask works on a view whose buffer is not 4-byte sized", () => {
  const buffer = new ArrayBuffer(103);
  const data = new Uint8Array(buffer, 1, 101);
  data.set(pattern(101));
  applyMask(data, RFC_KEY);
  assert.deepEqual(data, naiveMask(pattern(101), RFC_KEY));
});

Deno.test("frames: applyMask takes the key from a view", () => {
  const key = bytes(9, 0x37, 0xfa, 0x21, 0x3d, 9).subarray(1, 5);
  for (const length of [5, 100]) {
    const data = pattern(length);
    applyMask(data, key);
    assert.deepEqual(data, naiveMask(pattern(length), RFC_KEY));
  }
});

Deno.test("frames: applyMask applied twice restores the data", () => {
  const data = crypto.getRandomValues(new Uint8Array(1000)).subarray(3);
  const copy = data.slice();
  const key = new Uint8Array([1, 2, 3, 4]);
  applyMask(data, key);
  applyMask(data, key);
  assert.deepEqual(data, copy);
});

Deno.test("frames: applyMask with an all-zero key changes nothing", () => {
  const data = pattern(100);
  applyMask(data, new Uint8Array(4));
  assert.deepEqual(data, pattern(100));
});

// ---- randomMaskingKey ----

Deno.test("frames: randomMaskingKey returns 4 fresh bytes on every call, across pool refills", () => {
  const keys: Uint8Array[] = [];
  for (let i = 0; i < 3000; i++) keys.push(randomMaskingKey());
  assert.deepEqual(new Set(keys.map((key) => key.length)), new Set([4]));
  // Each key owns its bytes: changing one changes no other and not the pool.
  assert.deepEqual(new Set(keys.map((key) => key.buffer.byteLength)), new Set([4]));
  const distinct = new Set(keys.map((key) => key.join())).size;
  assert.ok(distinct >= 2990, `only ${distinct} distinct keys in 3000`);
});

// ---- Close ----

Deno.test("frames: Close parses an empty payload as 1005 (no status)", () => {
  assert.deepEqual(Close.parse(new Uint8Array(0)), new Close(1005, ""));
});

Deno.test("frames: Close rejects a 1-byte payload", () => {
  assertProtocolError(() => Close.parse(bytes(0x03)), "close frame too short");
});

Deno.test("frames: Close parses a code without a reason", () => {
  assert.deepEqual(Close.parse(bytes(0x03, 0xe8)), new Close(1000, ""));
});

Deno.test("frames: Close parses a code and a UTF-8 reason", () => {
  assert.deepEqual(
    Close.parse(bytes(0x03, 0xe9, encode("au revoir, été"))),
    new Close(1001, "au revoir, été"),
  );
});

const VALID_CODES = [
  1000,
  1001,
  1002,
  1003,
  1007,
  1008,
  1009,
  1010,
  1011,
  1012,
  1013,
  1014,
  3000,
  3999,
  4000,
  4999,
];
const INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535];

Deno.test("frames: Close parses every valid code class", () => {
  assert.deepEqual(
    VALID_CODES.map((code) => Close.parse(bytes(code >> 8, code & 0xff, encode("r")))),
    VALID_CODES.map((code) => new Close(code, "r")),
  );
});

Deno.test("frames: Close rejects every invalid code class with 1002", () => {
  for (const code of INVALID_CODES) {
    assertProtocolError(
      () => Close.parse(bytes(code >> 8, code & 0xff)),
      `invalid status code: ${code}`,
    );
  }
});

Deno.test("frames: Close rejects an invalid UTF-8 reason with 1007", () => {
  const invalid = [
    bytes(0xff),
    bytes(0xc3), // truncated 2-byte sequence
    bytes(0xe2, 0x82), // truncated 3-byte sequence
    bytes(0xc0, 0xaf), // overlong encoding
    bytes(0xed, 0xa0, 0x80), // UTF-16 surrogate
    bytes(0xf4, 0x90, 0x80, 0x80), // over U+10FFFF
    bytes(0x6f, 0x6b, 0x80),
  ];
  for (const reason of invalid) {
    assertProtocolError(
      () => Close.parse(bytes(0x03, 0xe8, reason)),
      "invalid UTF-8 in close reason",
      1007,
    );
  }
});

Deno.test("frames: Close reports an invalid reason before an invalid code", () => {
  assertProtocolError(
    () => Close.parse(bytes(0x03, 0xec, 0xff)),
    "invalid UTF-8 in close reason",
    1007,
  );
});

Deno.test("frames: Close parses a 125-byte payload and rejects 126 bytes", () => {
  const reason = "x".repeat(123);
  assert.deepEqual(Close.parse(bytes(0x03, 0xe8, encode(reason))), new Close(1000, reason));
  assertProtocolError(
    () => Close.parse(bytes(0x03, 0xe8, encode(reason + "x"))),
    "close frame too long",
  );
});

Deno.test("frames: Close.check accepts every valid code and rejects every invalid one", () => {
  for (const code of VALID_CODES) assert.doesNotThrow(() => new Close(code, "").check());
  for (const code of INVALID_CODES) {
    assertProtocolError(() => new Close(code, "").check(), `invalid status code: ${code}`);
  }
});

Deno.test("frames: Close limits the reason to 123 bytes of UTF-8, not characters", () => {
  assert.doesNotThrow(() => new Close(1000, "é".repeat(61) + "x").check()); // 123 bytes
  assertProtocolError(
    () => new Close(1000, "é".repeat(62)).check(), // 124 bytes, 62 characters
    "close reason too long: limit is 123 bytes of UTF-8",
  );
  assertProtocolError(
    () => new Close(1000, "é".repeat(62)).serialize(),
    "close reason too long: limit is 123 bytes of UTF-8",
  );
});

Deno.test("frames: Close serializes the code in network order followed by the reason", () => {
  assert.deepEqual(new Close(1001, "bye").serialize(), bytes(0x03, 0xe9, encode("bye")));
  assert.deepEqual(new Close(4999).serialize(), bytes(0x13, 0x87));
});

Deno.test("frames: Close serializes 1005 with no reason as an empty payload", () => {
  assert.deepEqual(new Close(1005, "").serialize(), new Uint8Array(0));
  assert.deepEqual(new Close(CloseCode.NO_STATUS_RCVD).serialize(), new Uint8Array(0));
});

Deno.test("frames: Close refuses to serialize a code that may not be sent", () => {
  assertProtocolError(() => new Close(1005, "reason").serialize(), "invalid status code: 1005");
  assertProtocolError(() => new Close(1006).serialize(), "invalid status code: 1006");
  assertProtocolError(() => new Close(999, "").serialize(), "invalid status code: 999");
});

Deno.test("frames: Close round-trips code and reason", () => {
  for (const code of VALID_CODES) {
    for (const reason of ["", "ok", "é".repeat(61)]) {
      assert.deepEqual(Close.parse(new Close(code, reason).serialize()), new Close(code, reason));
    }
  }
});

Deno.test("frames: Close's reason defaults to empty", () => {
  assert.deepEqual({ ...new Close(1000) }, { code: 1000, reason: "" });
});

Deno.test("frames: Close toString names the code and appends the reason", () => {
  const cases: [Close, string][] = [
    [new Close(1000, ""), "1000 (OK)"],
    [new Close(1000, "bye"), "1000 (OK) bye"],
    [new Close(1001, ""), "1001 (going away)"],
    [new Close(1002, ""), "1002 (protocol error)"],
    [new Close(1003, ""), "1003 (unsupported data)"],
    [new Close(1005, ""), "1005 (no status received [internal])"],
    [new Close(1006, ""), "1006 (abnormal closure [internal])"],
    [new Close(1007, ""), "1007 (invalid frame payload data)"],
    [new Close(1008, ""), "1008 (policy violation)"],
    [new Close(1009, ""), "1009 (message too big)"],
    [new Close(1010, ""), "1010 (mandatory extension)"],
    [new Close(1011, ""), "1011 (internal error)"],
    [new Close(1012, ""), "1012 (service restart)"],
    [new Close(1013, ""), "1013 (try again later)"],
    [new Close(1014, ""), "1014 (bad gateway)"],
    [new Close(1015, ""), "1015 (TLS handshake failure [internal])"],
    [new Close(3000, "x"), "3000 (registered) x"],
    [new Close(3999, ""), "3999 (registered)"],
    [new Close(4000, "x"), "4000 (private use) x"],
    [new Close(4999, ""), "4999 (private use)"],
    [new Close(1004, ""), "1004 (unknown)"],
    [new Close(2999, ""), "2999 (unknown)"],
    [new Close(5000, "y"), "5000 (unknown) y"],
  ];
  assert.deepEqual(cases.map(([close]) => `${close}`), cases.map(([, text]) => text));
});

// ---- isValidCloseCode ----

Deno.test("frames: isValidCloseCode accepts 1000-1003, 1007-1014 and 3000-4999 only", () => {
  assert.deepEqual(VALID_CODES.map(isValidCloseCode), VALID_CODES.map(() => true));
  assert.deepEqual(INVALID_CODES.map(isValidCloseCode), INVALID_CODES.map(() => false));
});

Deno.test("frames: isValidCloseCode rejects codes that aren't integers", () => {
  assert.deepEqual([1000.5, NaN, Infinity, -1000].map(isValidCloseCode), [
    false,
    false,
    false,
    false,
  ]);
  assertProtocolError(() => new Close(1000.5).serialize(), "invalid status code: 1000.5");
});

// ---- Frame.toString ----

Deno.test("frames: Frame.toString shows a text frame with a quoted preview", () => {
  assert.equal(`${new Frame(Opcode.TEXT, encode("Hello"))}`, `TEXT "Hello" [5 bytes]`);
  assert.equal(
    `${new Frame(Opcode.TEXT, encode('say "hi"\n'))}`,
    `TEXT "say \\"hi\\"\\n" [9 bytes]`,
  );
});

Deno.test("frames: Frame.toString cuts a long text preview at 75 bytes", () => {
  const text = "a".repeat(100);
  assert.equal(`${new Frame(Opcode.TEXT, encode(text))}`, `TEXT "${"a".repeat(75)}…" [100 bytes]`);
  assert.equal(
    `${new Frame(Opcode.TEXT, encode("b".repeat(75)))}`,
    `TEXT "${"b".repeat(75)}" [75 bytes]`,
  );
});

Deno.test("frames: Frame.toString shows fragments with a preview and continuation", () => {
  assert.equal(
    `${new Frame(Opcode.TEXT, encode("Hel"), { fin: false })}`,
    `TEXT "Hel" [3 bytes, continued]`,
  );
  assert.equal(`${new Frame(Opcode.CONT, encode("lo"))}`, `CONT "lo" [2 bytes]`);
});

Deno.test("frames: Frame.toString shows only the length of binary, ping and pong frames", () => {
  assert.deepEqual(
    [
      `${new Frame(Opcode.BINARY, pattern(3))}`,
      `${new Frame(Opcode.BINARY, pattern(3), { fin: false })}`,
      `${new Frame(Opcode.PING, encode("Hello"))}`,
      `${new Frame(Opcode.PONG, new Uint8Array(0))}`,
    ],
    ["BINARY [3 bytes]", "BINARY [3 bytes, continued]", "PING [5 bytes]", "PONG [0 bytes]"],
  );
});

Deno.test("frames: Frame.toString shows the code and reason of a close frame", () => {
  assert.deepEqual(
    [
      `${new Frame(Opcode.CLOSE, new Close(1000, "bye").serialize())}`,
      `${new Frame(Opcode.CLOSE, new Uint8Array(0))}`,
      `${new Frame(Opcode.CLOSE, bytes(0x03))}`,
      `${new Frame(Opcode.CLOSE, bytes(0x03, 0xe8, 0xff))}`,
    ],
    [
      "CLOSE 1000 (OK) bye [5 bytes]",
      "CLOSE 1005 (no status received [internal]) [0 bytes]",
      "CLOSE [1 bytes]",
      "CLOSE [3 bytes]",
    ],
  );
});

Deno.test("frames: Frame.toString shows an unknown opcode as a number", () => {
  assert.equal(`${new Frame(3 as Opcode, pattern(2))}`, "3 [2 bytes]");
});
