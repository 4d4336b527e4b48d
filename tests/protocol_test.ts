import assert from "node:assert/strict";
import {
  acceptKey,
  ClientProtocol,
  type ClientProtocolOptions,
  DEFAULT_MAX_SIZE,
  type Logger,
  type Protocol,
  type ProtocolEvent,
  ServerProtocol,
  type ServerProtocolOptions,
  State,
  stateName,
} from "../protocol.ts";
import {
  ConnectionClosedError,
  ConnectionClosedOK,
  InvalidHandshake,
  InvalidHeader,
  InvalidHeaderFormat,
  InvalidHeaderValue,
  InvalidMessage,
  InvalidOrigin,
  InvalidState,
  InvalidStatus,
  InvalidUpgrade,
  InvalidURI,
  NegotiationError,
  PayloadTooBig,
  ProtocolError,
  SecurityError,
  WebSocketError,
} from "../errors.ts";
import type {
  ClientExtensionFactory,
  DecodeOptions,
  Extension,
  ExtensionParameter,
  ServerExtensionFactory,
} from "../extensions.ts";
import { Close, Frame, FrameReader, isValidCloseCode, Opcode } from "../frames.ts";
import { Headers } from "../headers.ts";
import { Request, Response, ResponseParser } from "../http11.ts";
import { parseUri } from "../uri.ts";

// ---------------------------------------------------------------- Helpers

const encoder = new TextEncoder();
// The example of RFC 6455 §1.3.
const KEY = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

function utf8(value: string): Uint8Array {
  return encoder.encode(value);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** A frame as a client sends it: masked. */
function masked(frame: Frame): Uint8Array {
  return frame.serialize({ mask: true });
}

/** A frame as a server sends it: unmasked. */
function unmasked(frame: Frame): Uint8Array {
  return frame.serialize({ mask: false });
}

/** Frame bytes with any first byte, without the checks of `Frame.serialize`. */
function rawFrame(first: number, payload: Uint8Array, mask: boolean): Uint8Array {
  const length = payload.length;
  const maskBit = mask ? 0x80 : 0;
  const header: number[] = [first];
  if (length < 126) {
    header.push(maskBit | length);
  } else if (length < 65536) {
    header.push(maskBit | 126, length >> 8, length & 0xff);
  } else {
    header.push(maskBit | 127, 0, 0, 0, 0, length >>> 24, (length >> 16) & 0xff);
    header.push((length >> 8) & 0xff, length & 0xff);
  }
  const key = [0x12, 0x34, 0x56, 0x78];
  if (mask) header.push(...key);
  const body = payload.map((byte, i) => mask ? byte ^ key[i % 4] : byte);
  return concat(new Uint8Array(header), body);
}

function closeFrame(code: number, reason: string = ""): Frame {
  return new Frame(Opcode.CLOSE, new Close(code, reason).serialize());
}

function text(data: string, fin: boolean = true): Frame {
  return new Frame(Opcode.TEXT, utf8(data), { fin });
}

function binary(data: Uint8Array, fin: boolean = true): Frame {
  return new Frame(Opcode.BINARY, data, { fin });
}

function cont(data: Uint8Array, fin: boolean = true): Frame {
  return new Frame(Opcode.CONT, data, { fin });
}

interface Output {
  frames: Frame[];
  eof: boolean;
}

/** Takes what a protocol has to send and parses it as frames; the EOF marker must come last. */
function output(protocol: Protocol): Output {
  const chunks = protocol.dataToSend();
  const reader = new FrameReader({ mask: protocol.isClient, allowedRsv: 0x70 });
  const frames: Frame[] = [];
  let eof = false;
  chunks.forEach((chunk, index) => {
    if (chunk.length === 0) {
      assert.equal(index, chunks.length - 1, "the EOF marker is the last chunk");
      eof = true;
      return;
    }
    reader.feed(chunk.slice());
    for (let frame = reader.next(); frame !== undefined; frame = reader.next()) frames.push(frame);
  });
  assert.equal(reader.bufferedAmount, 0, "no partial frame is sent");
  return { frames, eof };
}

const decoder = new TextDecoder();

function latin1(bytes: Uint8Array): string {
  return String.fromCharCode(...bytes);
}

/** Splits a response a server sends into the response and whether EOF follows it. */
function responseOutput(server: ServerProtocol): { response: Response; eof: boolean } {
  const chunks = server.dataToSend();
  const eof = chunks.length > 0 && chunks[chunks.length - 1].length === 0;
  const bytes = concat(...chunks);
  const parser = new ResponseParser();
  const result = parser.feed(bytes) ?? parser.feedEof();
  assert.equal(result.rest.length, 0);
  return { response: result.message, eof };
}

const REQUEST_HEADERS: [string, string][] = [
  ["Host", "example.com"],
  ["Upgrade", "websocket"],
  ["Connection", "Upgrade"],
  ["Sec-WebSocket-Key", KEY],
  ["Sec-WebSocket-Version", "13"],
];

type HeaderChanges = Record<string, string | string[] | null>;

/** The default handshake headers, with `changes` replacing (or, with null, removing) some. */
function headerPairs(base: [string, string][], changes: HeaderChanges): [string, string][] {
  const pairs = base.filter(([name]) => !(name in changes));
  for (const [name, value] of Object.entries(changes)) {
    if (value === null) continue;
    for (const item of typeof value === "string" ? [value] : value) pairs.push([name, item]);
  }
  return pairs;
}

function handshakeRequest(changes: HeaderChanges = {}): Request {
  return new Request("/chat", new Headers(headerPairs(REQUEST_HEADERS, changes)));
}

function requestBytes(changes: HeaderChanges = {}): Uint8Array {
  return handshakeRequest(changes).serialize();
}

function responseBytes(
  key: string,
  changes: HeaderChanges = {},
  statusLine: string = "HTTP/1.1 101 Switching Protocols",
): Uint8Array {
  const pairs = headerPairs([
    ["Upgrade", "websocket"],
    ["Connection", "Upgrade"],
    ["Sec-WebSocket-Accept", acceptKey(key)],
  ], changes);
  return utf8(
    [statusLine, ...pairs.map(([name, value]) => `${name}: ${value}`), "", ""].join("\r\n"),
  );
}

function takeRequest(server: ServerProtocol): Request {
  const events = server.eventsReceived();
  assert.equal(events.length, 1);
  const event = events[0];
  assert.ok(event.type === "request");
  return event.request;
}

function takeResponse(client: ClientProtocol): Response {
  const events = client.eventsReceived();
  assert.equal(events.length, 1);
  const event = events[0];
  assert.ok(event.type === "response");
  return event.response;
}

/** A client that sent its handshake request; returns it and its key. */
function startClient(
  options: ClientProtocolOptions = {},
  uri: string = "ws://example.com/chat",
): { client: ClientProtocol; key: string } {
  const client = new ClientProtocol(parseUri(uri), options);
  const request = client.connect();
  client.sendRequest(request);
  client.dataToSend();
  return { client, key: request.headers.get("Sec-WebSocket-Key")! };
}

function openClient(options: ClientProtocolOptions = {}): ClientProtocol {
  const { client, key } = startClient(options);
  client.receiveData(responseBytes(key));
  assert.equal(client.state, State.OPEN);
  client.eventsReceived();
  return client;
}

function openServer(options: ServerProtocolOptions = {}): ServerProtocol {
  const server = new ServerProtocol(options);
  server.receiveData(requestBytes());
  server.sendResponse(server.accept(takeRequest(server)));
  assert.equal(server.state, State.OPEN);
  server.dataToSend();
  return server;
}

/** Feeds a frame to a protocol the way its peer sends it. */
function feed(protocol: Protocol, frame: Frame): void {
  protocol.receiveData(protocol.isClient ? unmasked(frame) : masked(frame));
}

/**
 * Checks that `protocol` failed the connection with `code` and `reason`:
 * the close frame it sent, the EOF marker (server only), the state, the
 * failure's exact class, then the error after the TCP connection closes.
 */
function assertFailed(
  protocol: Protocol,
  code: number,
  reason: string,
  errorClass: typeof ProtocolError | typeof PayloadTooBig,
): void {
  assert.deepEqual(output(protocol), {
    frames: [closeFrame(code, reason)],
    eof: !protocol.isClient,
  });
  assert.equal(protocol.state, State.CLOSING);
  assert.ok(protocol.failure instanceof errorClass);
  assert.equal(protocol.failure.constructor, errorClass);
  assert.equal(protocol.failure.message, reason);
  if (protocol.failure instanceof ProtocolError) assert.equal(protocol.failure.code, code);
  assert.deepEqual(protocol.closeSent, new Close(code, reason));
  assert.equal(protocol.closeExpected(), true);
  // Nothing received afterwards is processed.
  feed(protocol, text("ignored"));
  assert.deepEqual(protocol.eventsReceived(), []);
  assert.deepEqual(output(protocol), { frames: [], eof: false });
  protocol.receiveEof();
  assert.equal(protocol.state, State.CLOSED);
  assert.deepEqual(output(protocol), { frames: [], eof: protocol.isClient });
  const error = protocol.closeError;
  assert.ok(error instanceof ConnectionClosedError);
  assert.deepEqual(
    [error.code, error.rcvd, error.sent, error.rcvdThenSent, error.cause],
    [1006, undefined, new Close(code, reason), undefined, protocol.failure],
  );
}

function assertInvalidState(fn: () => void, message: string): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof InvalidState);
    assert.equal(error.constructor, InvalidState);
    assert.equal(error.message, message);
    return true;
  });
}

/** Moves everything `from` has to send to `to`, EOF included. */
function transfer(from: Protocol, to: Protocol): void {
  for (const chunk of from.dataToSend()) {
    if (chunk.length === 0) {
      if (!to.eofReceived) to.receiveEof();
    } else {
      to.receiveData(chunk.slice());
    }
  }
}

// ---------------------------------------------------------------- Test extension

/**
 * An extension that inverts the bits of data frames. Like permessage-deflate,
 * it sets RSV1 on the first frame of a message it transformed, and only there.
 */
class FlipExtension implements Extension {
  readonly name = "x-flip";
  readonly rsvBits = 0x40;
  #decoding = false;
  decode(frame: Frame, options?: DecodeOptions): Frame {
    if (frame.isControl) return frame;
    if (frame.opcode !== Opcode.CONT) this.#decoding = frame.rsv1;
    if (!this.#decoding) return frame;
    if (frame.data.length > (options?.maxSize ?? Infinity)) {
      throw new PayloadTooBig(frame.data.length, options!.maxSize!);
    }
    // RSV1 on a continuation frame is left for the protocol to reject.
    return new Frame(frame.opcode, frame.data.map((byte) => byte ^ 0xff), {
      fin: frame.fin,
      rsv1: frame.opcode === Opcode.CONT && frame.rsv1,
    });
  }
  encode(frame: Frame): Frame {
    if (frame.isControl) return frame;
    return new Frame(frame.opcode, frame.data.map((byte) => byte ^ 0xff), {
      fin: frame.fin,
      rsv1: frame.opcode !== Opcode.CONT,
    });
  }
}

/** Decodes by calling `behaviour`, to test how the protocol handles decoder failures. */
class ThrowingExtension implements Extension {
  readonly name = "x-throw";
  readonly rsvBits = 0;
  constructor(readonly behaviour: (frame: Frame) => Frame) {}
  decode(frame: Frame): Frame {
    return this.behaviour(frame);
  }
  encode(frame: Frame): Frame {
    return frame;
  }
}

/** Offers x-flip with the given parameters; rejects answers with a `bad` parameter. */
class FlipClientFactory implements ClientExtensionFactory {
  readonly name: string = "x-flip";
  constructor(readonly params: ExtensionParameter[] = []) {}
  getRequestParams(): ExtensionParameter[] {
    return this.params;
  }
  processResponseParams(params: ExtensionParameter[]): Extension {
    if (params.some(([name]) => name === "bad")) {
      throw new NegotiationError("x-flip: unexpected parameter: bad");
    }
    return new FlipExtension();
  }
}

/** Accepts x-flip offers unless they carry a `decline` parameter. */
class FlipServerFactory implements ServerExtensionFactory {
  readonly name: string = "x-flip";
  processRequestParams(
    params: ExtensionParameter[],
    accepted: readonly Extension[],
  ): [ExtensionParameter[], Extension] {
    if (params.some(([name]) => name === "decline")) {
      throw new NegotiationError("x-flip: declined");
    }
    if (accepted.some((extension) => extension.name === "x-flip")) {
      throw new NegotiationError("x-flip: already accepted");
    }
    return [params.filter(([name]) => name === "level"), new FlipExtension()];
  }
}

/** Opens a server and a client with x-flip negotiated between them. */
function openPairWithFlip(): { client: ClientProtocol; server: ServerProtocol } {
  const client = new ClientProtocol(parseUri("ws://example.com/"), {
    extensions: [new FlipClientFactory()],
  });
  const server = new ServerProtocol({ extensions: [new FlipServerFactory()] });
  client.sendRequest(client.connect());
  transfer(client, server);
  server.sendResponse(server.accept(takeRequest(server)));
  transfer(server, client);
  takeResponse(client);
  return { client, server };
}

// ---------------------------------------------------------------- Basics

Deno.test("protocol: acceptKey gives the RFC 6455 §1.3 value", () => {
  assert.equal(acceptKey(KEY), ACCEPT);
});

Deno.test("protocol: acceptKey agrees with Web Crypto's SHA-1 for keys of every length", async () => {
  // Key and GUID from 36 to 236 bytes: every padding case, one to four blocks, and a non-ASCII
  // key (UTF-8 encoded, as the RFC's algorithm reads it).
  const keys = Array.from({ length: 201 }, (_, length) => "k".repeat(length));
  keys.push("clé-ü");
  const expected = await Promise.all(keys.map(async (key) => {
    const data = new TextEncoder().encode(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-1", data));
    return btoa(String.fromCharCode(...digest));
  }));
  assert.deepEqual(keys.map(acceptKey), expected);
});

Deno.test("protocol: stateName names every state", () => {
  assert.deepEqual(
    [State.CONNECTING, State.OPEN, State.CLOSING, State.CLOSED].map(stateName),
    ["CONNECTING", "OPEN", "CLOSING", "CLOSED"],
  );
});

Deno.test("protocol: new protocols start CONNECTING with the default maxSize", () => {
  const client = new ClientProtocol(parseUri("ws://example.com/"));
  const server = new ServerProtocol();
  assert.deepEqual(
    [client.state, client.isClient, client.maxSize, server.state, server.isClient, server.maxSize],
    [State.CONNECTING, true, DEFAULT_MAX_SIZE, State.CONNECTING, false, DEFAULT_MAX_SIZE],
  );
  assert.equal(DEFAULT_MAX_SIZE, 1048576);
});

Deno.test("protocol: an illegal state transition throws InvalidState naming both states", () => {
  class Probe extends ServerProtocol {
    force(state: State): void {
      this.setState(state);
    }
  }
  const probe = new Probe();
  assertInvalidState(
    () => probe.force(State.CLOSING),
    "invalid state transition from CONNECTING to CLOSING",
  );
  probe.force(State.CLOSED);
  assertInvalidState(() => probe.force(State.OPEN), "invalid state transition from CLOSED to OPEN");
});

// ---------------------------------------------------------------- Receiving data

Deno.test("protocol: server receives a text message", () => {
  const server = openServer();
  feed(server, text("café"));
  assert.deepEqual(server.eventsReceived(), [{ type: "message", data: "café" }]);
});

Deno.test("protocol: client receives a binary message", () => {
  const client = openClient();
  feed(client, binary(new Uint8Array([1, 2, 3])));
  assert.deepEqual(client.eventsReceived(), [
    { type: "message", data: new Uint8Array([1, 2, 3]) },
  ]);
});

Deno.test("protocol: server receives an empty text and an empty binary message", () => {
  const server = openServer();
  feed(server, text(""));
  feed(server, binary(new Uint8Array(0)));
  assert.deepEqual(server.eventsReceived(), [
    { type: "message", data: "" },
    { type: "message", data: new Uint8Array(0) },
  ]);
});

/**
 * Feeds `wire` as a connection does when it reads large payloads directly: the first `head`
 * bytes as a chunk, then into receiveBuffer() in pieces of at most `piece` bytes while it offers
 * room, the rest as chunks. Returns how many bytes went in directly.
 */
function receiveDirectly(
  protocol: Protocol,
  wire: Uint8Array,
  head: number,
  piece: number,
): number {
  protocol.receiveData(wire.slice(0, head));
  let offset = head;
  let direct = 0;
  while (offset < wire.length) {
    const space = protocol.receiveBuffer(16384);
    if (space === undefined) {
      protocol.receiveData(wire.slice(offset, offset + piece));
      offset += Math.min(piece, wire.length - offset);
      continue;
    }
    const count = Math.min(space.length, piece, wire.length - offset);
    space.set(wire.subarray(offset, offset + count));
    protocol.receiveInto(count);
    offset += count;
    direct += count;
  }
  return direct;
}

Deno.test("protocol: a large payload read into receiveBuffer() makes the same messages as fed bytes", () => {
  const server = openServer();
  const big = "é".repeat(50_000); // 100 000 bytes of UTF-8
  const wire = concat(masked(text(big)), masked(binary(new Uint8Array(20_000).fill(9))));
  // 50 001 puts the cut inside a code point.
  const direct = receiveDirectly(server, wire, 50_001, 30_000);
  // The rest of the first frame (14-byte header) went in directly; the second came in one chunk.
  assert.equal(direct, 100_014 - 50_001);
  assert.deepEqual(server.eventsReceived(), [
    { type: "message", data: big },
    { type: "message", data: new Uint8Array(20_000).fill(9) },
  ]);
});

Deno.test("protocol: a large payload read into receiveBuffer() goes through the extensions", () => {
  const { client, server } = openPairWithFlip();
  client.sendBinary(new Uint8Array(70_000).fill(3));
  const [wire] = client.dataToSend();
  receiveDirectly(server, wire, 100, 10_000);
  assert.deepEqual(server.eventsReceived(), [
    { type: "message", data: new Uint8Array(70_000).fill(3) },
  ]);
});

Deno.test("protocol: invalid UTF-8 read into receiveBuffer() fails with 1007", () => {
  const server = openServer();
  const payload = new Uint8Array(40_000).fill(0x61);
  payload[30_000] = 0xff;
  receiveDirectly(server, masked(new Frame(Opcode.TEXT, payload)), 10, 40_000);
  assertFailed(server, 1007, "invalid UTF-8 in text message", ProtocolError);
});

Deno.test("protocol: receiveBuffer() offers room only while a frame's payload is being read", () => {
  const { client } = startClient();
  assert.equal(client.receiveBuffer(0), undefined, "connecting");
  const server = openServer();
  assert.equal(server.receiveBuffer(0), undefined, "no frame is being read");
  const wire = masked(binary(new Uint8Array(20_000)));
  server.receiveData(wire.slice(0, 10));
  assert.equal(server.receiveBuffer(0)!.length, 20_000 - 2);
  assert.equal(server.receiveBuffer(20_000), undefined, "less than asked is to come");
  server.failConnection(1011, "keepalive ping timeout");
  assert.equal(server.receiveBuffer(0), undefined, "after a failure");
  server.receiveInto(5); // ignored, like bytes fed after a failure
  server.receiveData(wire.slice(10));
  assert.deepEqual(server.eventsReceived(), []);
  server.receiveEof();
  assert.equal(server.receiveBuffer(0), undefined, "after the end of the stream");
  assertInvalidState(
    () => server.receiveInto(1),
    "cannot receive data after the end of the stream",
  );
});

Deno.test("protocol: server reassembles a fragmented text message", () => {
  const server = openServer();
  feed(server, text("hello ", false));
  assert.equal(server.receivingFragmented, true);
  feed(server, cont(utf8("wor"), false));
  assert.deepEqual(server.eventsReceived(), []);
  feed(server, cont(utf8("ld")));
  assert.equal(server.receivingFragmented, false);
  assert.deepEqual(server.eventsReceived(), [{ type: "message", data: "hello world" }]);
});

Deno.test("protocol: client reassembles a fragmented binary message", () => {
  const client = openClient();
  feed(client, binary(new Uint8Array([1, 2]), false));
  feed(client, cont(new Uint8Array([3])));
  feed(client, binary(new Uint8Array([4]), false));
  feed(client, cont(new Uint8Array(0)));
  assert.deepEqual(client.eventsReceived(), [
    { type: "message", data: new Uint8Array([1, 2, 3]) },
    { type: "message", data: new Uint8Array([4]) },
  ]);
});

/** `copies` back-to-back copies of `unit`, as one chunk. */
function repeated(unit: Uint8Array, copies: number, after?: Uint8Array): Uint8Array {
  const out = new Uint8Array(unit.length * copies + (after?.length ?? 0));
  for (let i = 0; i < copies; i++) out.set(unit, i * unit.length);
  if (after !== undefined) out.set(after, unit.length * copies);
  return out;
}

Deno.test("protocol: empty and tiny fragments make the right message", () => {
  const server = openServer();
  const emptyText = masked(new Frame(Opcode.CONT, new Uint8Array(0), { fin: false }));
  server.receiveData(concat(
    // "é" split between the first fragment and the third
    masked(new Frame(Opcode.TEXT, utf8("é").subarray(0, 1), { fin: false })),
    repeated(emptyText, 1000),
    masked(cont(utf8("é").subarray(1), false)),
    repeated(masked(cont(utf8("ab"), false)), 3000),
    masked(new Frame(Opcode.PING, utf8("between"))),
    masked(cont(new Uint8Array(2000).fill(0x7a), false)),
    repeated(emptyText, 10),
    masked(cont(utf8("!"))),
  ));
  assert.deepEqual(server.eventsReceived(), [
    { type: "ping", data: utf8("between") },
    { type: "message", data: "é" + "ab".repeat(3000) + "z".repeat(2000) + "!" },
  ]);
  const client = openClient();
  client.receiveData(concat(
    unmasked(binary(new Uint8Array([1]), false)),
    repeated(unmasked(cont(new Uint8Array(0), false)), 500),
    unmasked(cont(new Uint8Array(5000).fill(2), false)),
    unmasked(cont(new Uint8Array([3]))),
  ));
  const expected = new Uint8Array(5002).fill(2);
  expected[0] = 1;
  expected[5001] = 3;
  assert.deepEqual(client.eventsReceived(), [{ type: "message", data: expected }]);
});

Deno.test("protocol: two million empty fragments cost no memory", () => {
  // Kept one object each, they took 250 MB of heap here.
  const server = openServer();
  server.receiveData(masked(binary(new Uint8Array([1]), false)));
  const chunk = repeated(masked(cont(new Uint8Array(0), false)), 10_000);
  const before = Deno.memoryUsage().heapUsed;
  for (let i = 0; i < 200; i++) server.receiveData(chunk.slice());
  const grown = Deno.memoryUsage().heapUsed - before;
  assert.ok(grown < 50e6, `heap grew by ${(grown / 1e6).toFixed(1)} MB`);
  server.receiveData(masked(cont(new Uint8Array([2]))));
  assert.deepEqual(server.eventsReceived(), [{ type: "message", data: new Uint8Array([1, 2]) }]);
});

Deno.test("protocol: tiny fragments don't keep the chunks they came in", () => {
  // Kept as views, 2 000 one-byte fragments kept 2 000 chunks of 50 KB of pings alive: 100 MB.
  const server = openServer();
  server.receiveData(masked(binary(new Uint8Array([0]), false)));
  const chunk = repeated(
    masked(new Frame(Opcode.PING, new Uint8Array(125))),
    400,
    masked(cont(new Uint8Array([1]), false)),
  );
  const before = Deno.memoryUsage().external;
  for (let i = 0; i < 2000; i++) {
    server.receiveData(chunk.slice());
    server.eventsReceived();
    server.dataToSend();
  }
  const grown = Deno.memoryUsage().external - before;
  assert.ok(grown < 40e6, `external memory grew by ${(grown / 1e6).toFixed(1)} MB`);
  server.receiveData(masked(cont(new Uint8Array(0))));
  const [message] = server.eventsReceived().filter((event) => event.type === "message");
  assert.deepEqual(message, { type: "message", data: new Uint8Array(2001).fill(1).fill(0, 0, 1) });
});

Deno.test("protocol: control frames may come between fragments", () => {
  const server = openServer();
  feed(server, text("a", false));
  feed(server, new Frame(Opcode.PING, utf8("p")));
  feed(server, cont(utf8("b")));
  assert.deepEqual(server.eventsReceived(), [
    { type: "ping", data: utf8("p") },
    { type: "message", data: "ab" },
  ]);
  assert.deepEqual(output(server), { frames: [new Frame(Opcode.PONG, utf8("p"))], eof: false });
});

Deno.test("protocol: server parses frames split at every byte", () => {
  const server = openServer();
  const bytes = concat(masked(text("split")), masked(binary(new Uint8Array(300).fill(7))));
  for (let i = 0; i < bytes.length; i++) server.receiveData(bytes.slice(i, i + 1));
  assert.deepEqual(server.eventsReceived(), [
    { type: "message", data: "split" },
    { type: "message", data: new Uint8Array(300).fill(7) },
  ]);
});

Deno.test("protocol: server parses several frames in one chunk", () => {
  const server = openServer();
  server.receiveData(concat(masked(text("one")), masked(text("two")), masked(text("three"))));
  assert.deepEqual(server.eventsReceived(), [
    { type: "message", data: "one" },
    { type: "message", data: "two" },
    { type: "message", data: "three" },
  ]);
});

Deno.test("protocol: a code point split across fragments is accepted", () => {
  const server = openServer();
  const bytes = utf8("é€😀");
  for (let i = 0; i < bytes.length; i++) {
    feed(
      server,
      new Frame(i === 0 ? Opcode.TEXT : Opcode.CONT, bytes.slice(i, i + 1), {
        fin: i === bytes.length - 1,
      }),
    );
  }
  assert.deepEqual(server.eventsReceived(), [{ type: "message", data: "é€😀" }]);
  assert.equal(server.state, State.OPEN);
});

// ---------------------------------------------------------------- Protocol violations

Deno.test("protocol: server fails with 1002 on an unmasked frame", () => {
  const server = openServer();
  server.receiveData(unmasked(text("hi")));
  assertFailed(server, 1002, "incorrect masking: frame must be masked", ProtocolError);
});

Deno.test("protocol: client fails with 1002 on a masked frame", () => {
  const client = openClient();
  client.receiveData(masked(text("hi")));
  assertFailed(client, 1002, "incorrect masking: frame must not be masked", ProtocolError);
});

Deno.test("protocol: server fails with 1002 on RSV1 without an extension", () => {
  const server = openServer();
  server.receiveData(masked(new Frame(Opcode.TEXT, utf8("hi"), { rsv1: true })));
  assertFailed(server, 1002, "reserved bits must be 0", ProtocolError);
});

Deno.test("protocol: client fails with 1002 on RSV2 or RSV3 without an extension", () => {
  for (const options of [{ rsv2: true }, { rsv3: true }]) {
    const client = openClient();
    client.receiveData(unmasked(new Frame(Opcode.BINARY, new Uint8Array(1), options)));
    assertFailed(client, 1002, "reserved bits must be 0", ProtocolError);
  }
});

Deno.test("protocol: server fails with 1002 on reserved opcodes", () => {
  for (const opcode of [3, 7, 11, 15]) {
    const server = openServer();
    server.receiveData(rawFrame(0x80 | opcode, new Uint8Array(0), true));
    assertFailed(server, 1002, `invalid opcode: ${opcode}`, ProtocolError);
  }
});

Deno.test("protocol: server fails with 1002 on a continuation frame without a start", () => {
  const server = openServer();
  feed(server, cont(utf8("x")));
  assertFailed(server, 1002, "unexpected continuation frame", ProtocolError);
});

Deno.test("protocol: server fails with 1002 on a new data frame inside a fragmented message", () => {
  const server = openServer();
  feed(server, text("a", false));
  feed(server, binary(new Uint8Array([1])));
  assertFailed(server, 1002, "expected a continuation frame", ProtocolError);
});

Deno.test("protocol: server fails with 1002 on a fragmented control frame", () => {
  const server = openServer();
  server.receiveData(rawFrame(Opcode.PING, utf8("x"), true));
  assertFailed(server, 1002, "fragmented control frame", ProtocolError);
});

Deno.test("protocol: client fails with 1002 on a control frame over 125 bytes", () => {
  const client = openClient();
  client.receiveData(rawFrame(0x80 | Opcode.PONG, new Uint8Array(126), false));
  assertFailed(client, 1002, "control frame too long", ProtocolError);
});

Deno.test("protocol: a control frame of exactly 125 bytes is accepted", () => {
  const client = openClient();
  feed(client, new Frame(Opcode.PONG, new Uint8Array(125).fill(1)));
  assert.deepEqual(client.eventsReceived(), [
    { type: "pong", data: new Uint8Array(125).fill(1) },
  ]);
});

Deno.test("protocol: server fails with 1002 on a 64-bit length with its top bit set", () => {
  const server = openServer();
  server.receiveData(new Uint8Array([0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4]));
  assertFailed(
    server,
    1002,
    "invalid payload length: the most significant bit must be 0",
    ProtocolError,
  );
});

// ---------------------------------------------------------------- Deferred failures

/** A server with deferFailure that received two messages, then a frame with RSV2 set. */
function heldFailure(): ServerProtocol {
  const server = openServer({ deferFailure: true });
  server.receiveData(concat(
    masked(text("one")),
    masked(text("two")),
    masked(new Frame(Opcode.TEXT, utf8("bad"), { rsv2: true })),
    masked(new Frame(Opcode.PING, utf8("late"))),
  ));
  return server;
}

Deno.test("protocol: with deferFailure, a violation holds its close frame until completeFailure", () => {
  const server = heldFailure();
  assert.deepEqual(server.eventsReceived(), [
    { type: "message", data: "one" },
    { type: "message", data: "two" },
  ]);
  assert.deepEqual(
    [server.failurePending, server.state, server.failure?.message, output(server)],
    [true, State.OPEN, "reserved bits must be 0", { frames: [], eof: false }],
  );
  // Nothing more is processed, and the answers still go out.
  feed(server, text("ignored"));
  assert.deepEqual(server.eventsReceived(), []);
  server.sendText("one");
  server.completeFailure();
  assert.deepEqual(output(server), {
    frames: [text("one"), closeFrame(1002, "reserved bits must be 0")],
    eof: true,
  });
  assert.deepEqual([server.failurePending, server.state], [false, State.CLOSING]);
  server.completeFailure(); // nothing held any more
  assert.deepEqual(output(server), { frames: [], eof: false });
});

Deno.test("protocol: sendClose or failConnection while a failure is held sends the violation's code", () => {
  const outcomes = [
    (server: ServerProtocol) => server.sendClose(1000, "bye"),
    (server: ServerProtocol) => server.failConnection(1011, "keepalive ping timeout"),
  ].map((act) => {
    const server = heldFailure();
    act(server);
    return [server.failurePending, output(server), server.closeSent];
  });
  const failed = [
    false,
    { frames: [closeFrame(1002, "reserved bits must be 0")], eof: true },
    new Close(1002, "reserved bits must be 0"),
  ];
  assert.deepEqual(outcomes, [failed, failed]);
});

Deno.test("protocol: the end of the stream drops a held failure", () => {
  const server = heldFailure();
  server.receiveEof();
  server.completeFailure();
  assert.deepEqual(
    [server.failurePending, server.state, output(server), server.closeError.code],
    [false, State.CLOSED, { frames: [], eof: true }, 1006],
  );
});

Deno.test("protocol: without deferFailure, a violation closes at once after the messages before it", () => {
  const server = openServer();
  server.receiveData(concat(
    masked(text("one")),
    masked(new Frame(Opcode.TEXT, utf8("bad"), { rsv2: true })),
  ));
  assert.deepEqual(server.eventsReceived(), [{ type: "message", data: "one" }]);
  assert.equal(server.failurePending, false);
  assertFailed(server, 1002, "reserved bits must be 0", ProtocolError);
});

Deno.test("protocol: server fails with 1007 on invalid UTF-8 in a single text frame", () => {
  const server = openServer();
  feed(server, new Frame(Opcode.TEXT, new Uint8Array([0x61, 0xff])));
  assertFailed(server, 1007, "invalid UTF-8 in text message", ProtocolError);
});

Deno.test("protocol: a truncated code point in a single text frame fails with 1007", () => {
  const client = openClient();
  feed(client, new Frame(Opcode.TEXT, new Uint8Array([0xc3])));
  assertFailed(client, 1007, "invalid UTF-8 in text message", ProtocolError);
});

Deno.test("protocol: fragmented invalid UTF-8 fails at the fragment where it becomes invalid", () => {
  const server = openServer();
  feed(server, new Frame(Opcode.TEXT, utf8("valid "), { fin: false }));
  // A lead byte whose continuation is still to come: valid so far.
  feed(server, cont(new Uint8Array([0xe2, 0x82]), false));
  assert.deepEqual(output(server), { frames: [], eof: false });
  assert.equal(server.failure, undefined);
  // 0x41 can't continue the sequence.
  feed(server, cont(new Uint8Array([0x41]), false));
  assertFailed(server, 1007, "invalid UTF-8 in text message", ProtocolError);
});

// Invalid UTF-8 sequences, each between valid text, and where each becomes invalid: the offset,
// in the payload, of the first byte that no valid text can have there.
const KOSME = new Uint8Array([0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5]);
const INVALID_TEXT: [string, Uint8Array, number][] = [
  // The Autobahn|Testsuite's 6.4.x: U+110000 (out of range) after "κόσμε".
  ["out of range", concat(KOSME, new Uint8Array([0xf4, 0x90, 0x80, 0x80]), utf8("edited")), 12],
  ["surrogate", concat(utf8("ab"), new Uint8Array([0xed, 0xa0, 0x80]), utf8("cd")), 3],
  ["overlong", concat(utf8("ab"), new Uint8Array([0xc0, 0x80]), utf8("cd")), 2],
  ["cut short", concat(utf8("ab"), new Uint8Array([0xe2, 0x82]), utf8("cd")), 4],
  ["stray continuation", concat(utf8("ab"), new Uint8Array([0x80]), utf8("cd")), 2],
];

/**
 * Feeds `wire` (one text frame, or fragments) to a fresh protocol in the pieces that `cuts`
 * delimit and returns the index of the piece after which it had failed the connection.
 */
function failingPiece(open: () => Protocol, wire: Uint8Array, cuts: number[]): number {
  const protocol = open();
  const bounds = [0, ...cuts, wire.length];
  for (let i = 0; i + 1 < bounds.length; i++) {
    protocol.receiveData(wire.slice(bounds[i], bounds[i + 1]));
    if (protocol.failure !== undefined) {
      assertFailed(protocol, 1007, "invalid UTF-8 in text message", ProtocolError);
      return i;
    }
  }
  return -1;
}

for (const [role, open] of [["server", openServer], ["client", openClient]] as const) {
  Deno.test(`protocol: ${role} fails invalid UTF-8 at the read that brings it, in the middle of a frame`, () => {
    for (const [name, payload, invalidAt] of INVALID_TEXT) {
      const frame = new Frame(Opcode.TEXT, payload);
      const wire = role === "server" ? masked(frame) : unmasked(frame);
      const at = wire.length - payload.length + invalidAt; // the invalid byte on the wire
      // Cut in two at every position: the first piece fails only if it holds the invalid byte.
      const outcomes: number[] = [];
      const expected: number[] = [];
      for (let cut = 1; cut < wire.length; cut++) {
        outcomes.push(failingPiece(open, wire, [cut]));
        expected.push(cut > at ? 0 : 1);
      }
      assert.deepEqual(outcomes, expected, name);
      // One byte at a time: it fails at the invalid byte itself.
      const bytewise = Array.from({ length: wire.length - 1 }, (_, i) => i + 1);
      assert.equal(failingPiece(open, wire, bytewise), at, name);
    }
  });
}

Deno.test("protocol: invalid UTF-8 in a continuation frame fails at the read that brings it", () => {
  const [, payload, invalidAt] = INVALID_TEXT[0];
  const wire = concat(
    masked(new Frame(Opcode.TEXT, utf8("first "), { fin: false })),
    masked(cont(payload)),
  );
  const at = wire.length - payload.length + invalidAt;
  assert.deepEqual(
    [failingPiece(openServer, wire, [at]), failingPiece(openServer, wire, [at + 1])],
    [1, 0],
  );
});

Deno.test("protocol: invalid UTF-8 read into receiveBuffer() fails with the read that brings it", () => {
  const server = openServer();
  const payload = new Uint8Array(40_000).fill(0x61);
  payload[30_000] = 0xff;
  const wire = masked(new Frame(Opcode.TEXT, payload));
  const header = wire.length - payload.length;
  server.receiveData(wire.slice(0, 100));
  const space = server.receiveBuffer(16384)!;
  space.set(wire.subarray(100, header + 30_000)); // everything before the invalid byte
  server.receiveInto(header + 30_000 - 100);
  assert.equal(server.failure, undefined);
  server.receiveBuffer(0)!.set(wire.subarray(header + 30_000, header + 30_001));
  server.receiveInto(1);
  assertFailed(server, 1007, "invalid UTF-8 in text message", ProtocolError);
});

Deno.test("protocol: a text frame arriving in pieces, cut anywhere, makes the same message", () => {
  const message = "κόσμε 😀 ".repeat(4);
  const wire = masked(text(message));
  const received: ProtocolEvent[][] = [];
  for (let cut = 1; cut < wire.length; cut++) {
    const server = openServer();
    server.receiveData(wire.slice(0, cut));
    server.receiveData(wire.slice(cut));
    received.push(server.eventsReceived());
  }
  // One byte at a time too: many small pieces are validated, then decoded whole.
  const server = openServer();
  for (let i = 0; i < wire.length; i++) server.receiveData(wire.slice(i, i + 1));
  received.push(server.eventsReceived());
  assert.deepEqual(received, Array(wire.length).fill([{ type: "message", data: message }]));
});

Deno.test("protocol: a compressed text frame is validated once complete and inflated", () => {
  const { client, server } = openPairWithFlip();
  // The flip extension (RSV1) transforms payloads: its text can't be validated as it arrives.
  client.sendText(new Uint8Array([0x61, 0xff, 0x62]));
  const [wire] = client.dataToSend();
  server.receiveData(wire.slice(0, wire.length - 1));
  assert.equal(server.failure, undefined);
  server.receiveData(wire.slice(wire.length - 1));
  assertFailed(server, 1007, "invalid UTF-8 in text message", ProtocolError);
});

Deno.test("protocol: a fragmented text message ending inside a code point fails with 1007", () => {
  const server = openServer();
  feed(server, new Frame(Opcode.TEXT, new Uint8Array([0xf0, 0x9f]), { fin: false }));
  assert.equal(server.failure, undefined);
  feed(server, cont(new Uint8Array([0x98])));
  assertFailed(server, 1007, "invalid UTF-8 in text message", ProtocolError);
});

Deno.test("protocol: a message of exactly maxSize bytes is accepted, in one frame or many", () => {
  const server = openServer({ maxSize: 10 });
  feed(server, binary(new Uint8Array(10)));
  feed(server, text("abcdef", false));
  feed(server, cont(utf8("ghij")));
  assert.deepEqual(server.eventsReceived(), [
    { type: "message", data: new Uint8Array(10) },
    { type: "message", data: "abcdefghij" },
  ]);
  assert.equal(server.state, State.OPEN);
});

Deno.test("protocol: server fails with 1009 on a frame over maxSize", () => {
  const server = openServer({ maxSize: 10 });
  feed(server, binary(new Uint8Array(11)));
  assertFailed(
    server,
    1009,
    "message too big: 11 bytes exceeds maxSize of 10 bytes",
    PayloadTooBig,
  );
});

Deno.test("protocol: with maxSize Infinity, a length too big to allocate fails with 1009", () => {
  const client = openClient({ maxSize: Infinity });
  client.receiveData(new Uint8Array([0x82, 0x7f, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2])); // 2^62 bytes
  assertFailed(
    client,
    1009,
    `message too big: ${2 ** 62} bytes is more than can be allocated`,
    PayloadTooBig,
  );
});

Deno.test("protocol: fragments fail with 1009 at the fragment that crosses maxSize", () => {
  const client = openClient({ maxSize: 10 });
  feed(client, binary(new Uint8Array(6), false));
  feed(client, cont(new Uint8Array(4), false));
  assert.deepEqual(output(client), { frames: [], eof: false });
  feed(client, cont(new Uint8Array(1)));
  const failure = client.failure;
  assertFailed(
    client,
    1009,
    "message too big: 11 bytes exceeds maxSize of 10 bytes",
    PayloadTooBig,
  );
  assert.ok(failure instanceof PayloadTooBig);
  assert.deepEqual([failure.size, failure.maxSize], [11, 10]);
});

Deno.test("protocol: control frames don't count toward maxSize", () => {
  const server = openServer({ maxSize: 4 });
  feed(server, binary(new Uint8Array(4), false));
  feed(server, new Frame(Opcode.PING, new Uint8Array(100)));
  feed(server, cont(new Uint8Array(0)));
  assert.deepEqual(server.eventsReceived(), [
    { type: "ping", data: new Uint8Array(100) },
    { type: "message", data: new Uint8Array(4) },
  ]);
});

Deno.test("protocol: maxSize Infinity accepts a large message", () => {
  const server = openServer({ maxSize: Infinity });
  feed(server, binary(new Uint8Array(2 * DEFAULT_MAX_SIZE)));
  const events = server.eventsReceived();
  assert.equal(events.length, 1);
  assert.ok(events[0].type === "message");
  assert.equal(events[0].data.length, 2 * DEFAULT_MAX_SIZE);
});

Deno.test("protocol: server fails with 1002 on a 1-byte close frame", () => {
  const server = openServer();
  feed(server, new Frame(Opcode.CLOSE, new Uint8Array([0x03])));
  assertFailed(server, 1002, "close frame too short", ProtocolError);
});

Deno.test("protocol: server fails with 1002 on invalid close codes", () => {
  for (const code of [0, 999, 1004, 1005, 1006, 1015, 2999, 5000]) {
    const server = openServer();
    feed(server, new Frame(Opcode.CLOSE, new Uint8Array([code >> 8, code & 0xff])));
    assertFailed(server, 1002, `invalid status code: ${code}`, ProtocolError);
    assert.equal(server.closeRcvd, undefined);
  }
});

Deno.test("protocol: client fails with 1007 on invalid UTF-8 in a close reason", () => {
  const client = openClient();
  feed(client, new Frame(Opcode.CLOSE, new Uint8Array([0x03, 0xe8, 0xc3, 0x28])));
  assertFailed(client, 1007, "invalid UTF-8 in close reason", ProtocolError);
});

Deno.test("protocol: RSV bits an extension allows are still rejected on control frames", () => {
  const { server } = openPairWithFlip();
  server.receiveData(masked(new Frame(Opcode.PING, utf8("x"), { rsv1: true })));
  assertFailed(server, 1002, "reserved bits must be 0", ProtocolError);
});

Deno.test("protocol: RSV bits an extension leaves set on a data frame fail with 1002", () => {
  const { client } = openPairWithFlip();
  // x-flip clears RSV1 only on frames it decodes: a continuation keeps RSV1 set.
  feed(client, new Frame(Opcode.BINARY, new Uint8Array([0xfe]), { rsv1: true, fin: false }));
  feed(client, new Frame(Opcode.CONT, new Uint8Array([1]), { rsv1: true }));
  assertFailed(client, 1002, "reserved bits must be 0", ProtocolError);
});

Deno.test("protocol: RSV bits no negotiated extension uses fail with 1002", () => {
  const { server } = openPairWithFlip();
  server.receiveData(masked(new Frame(Opcode.TEXT, utf8("x"), { rsv2: true })));
  assertFailed(server, 1002, "reserved bits must be 0", ProtocolError);
});

/** Doubles each frame's payload, checking the allowance as permessage-deflate does. */
const doubling: Extension = {
  name: "x-double",
  rsvBits: 0,
  encode: (frame) => frame,
  decode: (frame, options) => {
    const size = frame.data.length * 2;
    if (size > options!.maxSize!) throw new PayloadTooBig(size, options!.maxSize!);
    return new Frame(frame.opcode, new Uint8Array(size), { fin: frame.fin });
  },
};

Deno.test("protocol: a PayloadTooBig from an extension's decoder fails with 1009", () => {
  const server = openServer({ maxSize: 10 });
  server.extensions = [doubling];
  feed(server, binary(new Uint8Array(3), false));
  // 3 bytes on the wire fit the 4 left, but decode to 6.
  feed(server, cont(new Uint8Array(3)));
  assertFailed(
    server,
    1009,
    "message too big: 12 bytes exceeds maxSize of 10 bytes",
    PayloadTooBig,
  );
});

Deno.test("protocol: an extension producing more than maxSize fails with 1009", () => {
  const server = openServer({ maxSize: 5 });
  server.extensions = [
    new ThrowingExtension((frame) => new Frame(frame.opcode, new Uint8Array(6))),
  ];
  feed(server, binary(new Uint8Array(1)));
  assertFailed(server, 1009, "message too big: 6 bytes exceeds maxSize of 5 bytes", PayloadTooBig);
});

Deno.test("protocol: an unexpected error while decoding fails with 1011", () => {
  const error = new TypeError("decoder exploded");
  const server = openServer();
  server.extensions = [
    new ThrowingExtension(() => {
      throw error;
    }),
  ];
  feed(server, text("x"));
  assert.deepEqual(output(server), { frames: [closeFrame(1011, "internal error")], eof: true });
  assert.equal(server.failure, error);
  assert.equal(server.state, State.CLOSING);
});

Deno.test("protocol: a non-Error thrown while decoding fails with 1011", () => {
  const client = openClient();
  client.extensions = [
    new ThrowingExtension(() => {
      throw "decoder exploded";
    }),
  ];
  feed(client, text("x"));
  assert.deepEqual(output(client), { frames: [closeFrame(1011, "internal error")], eof: false });
  assert.ok(client.failure instanceof Error);
  assert.equal(client.failure.constructor, Error);
  assert.equal(client.failure.message, "decoder exploded");
});

// ---------------------------------------------------------------- Ping and pong

Deno.test("protocol: server answers a ping with a pong of the same payload", () => {
  const server = openServer();
  feed(server, new Frame(Opcode.PING, utf8("are you there?")));
  assert.deepEqual(server.eventsReceived(), [{ type: "ping", data: utf8("are you there?") }]);
  assert.deepEqual(output(server), {
    frames: [new Frame(Opcode.PONG, utf8("are you there?"))],
    eof: false,
  });
});

Deno.test("protocol: client answers a ping with a masked pong of the same payload", () => {
  const client = openClient();
  feed(client, new Frame(Opcode.PING, new Uint8Array([1, 2, 3])));
  const chunks = client.dataToSend();
  assert.equal(chunks.length, 1);
  assert.equal(chunks[0][1] & 0x80, 0x80);
  assert.deepEqual(
    Frame.parse(chunks[0], { mask: true }),
    new Frame(Opcode.PONG, new Uint8Array([1, 2, 3])),
  );
});

Deno.test("protocol: an empty ping gets an empty pong", () => {
  const server = openServer();
  feed(server, new Frame(Opcode.PING, new Uint8Array(0)));
  assert.deepEqual(output(server), {
    frames: [new Frame(Opcode.PONG, new Uint8Array(0))],
    eof: false,
  });
});

Deno.test("protocol: a pong is reported as an event and not answered", () => {
  const client = openClient();
  feed(client, new Frame(Opcode.PONG, utf8("latency")));
  assert.deepEqual(client.eventsReceived(), [{ type: "pong", data: utf8("latency") }]);
  assert.deepEqual(output(client), { frames: [], eof: false });
});

Deno.test("protocol: a ping received while closing is reported but not answered", () => {
  const server = openServer();
  server.sendClose(1000);
  server.dataToSend();
  feed(server, new Frame(Opcode.PING, utf8("x")));
  assert.deepEqual(server.eventsReceived(), [{ type: "ping", data: utf8("x") }]);
  assert.deepEqual(output(server), { frames: [], eof: false });
});

// ---------------------------------------------------------------- Closing handshake

Deno.test("protocol: server echoes a close frame, then closes the transport", () => {
  const server = openServer();
  feed(server, closeFrame(1000, "bye"));
  assert.deepEqual(server.eventsReceived(), [{ type: "close", close: new Close(1000, "bye") }]);
  assert.deepEqual(output(server), { frames: [closeFrame(1000, "bye")], eof: true });
  assert.deepEqual(
    [server.state, server.closeRcvd, server.closeSent, server.closeRcvdThenSent],
    [State.CLOSING, new Close(1000, "bye"), new Close(1000, "bye"), true],
  );
  server.receiveEof();
  assert.equal(server.state, State.CLOSED);
  assert.deepEqual(output(server), { frames: [], eof: false });
});

Deno.test("protocol: client echoes a close frame, then waits for the server to close", () => {
  const client = openClient();
  feed(client, closeFrame(1001, "restart"));
  assert.deepEqual(client.eventsReceived(), [
    { type: "close", close: new Close(1001, "restart") },
  ]);
  assert.deepEqual(output(client), { frames: [closeFrame(1001, "restart")], eof: false });
  assert.equal(client.state, State.CLOSING);
  assert.equal(client.closeExpected(), true);
  client.receiveEof();
  assert.equal(client.state, State.CLOSED);
  assert.equal(client.closeExpected(), false);
  assert.deepEqual(output(client), { frames: [], eof: true });
  const error = client.closeError;
  assert.ok(error instanceof ConnectionClosedOK);
  assert.deepEqual(
    [error.code, error.reason, error.rcvdThenSent],
    [1001, "restart", true],
  );
});

Deno.test("protocol: an empty close frame is echoed empty and reported as 1005", () => {
  const server = openServer();
  feed(server, new Frame(Opcode.CLOSE, new Uint8Array(0)));
  assert.deepEqual(server.eventsReceived(), [{ type: "close", close: new Close(1005, "") }]);
  assert.deepEqual(output(server), {
    frames: [new Frame(Opcode.CLOSE, new Uint8Array(0))],
    eof: true,
  });
});

Deno.test("protocol: server initiates the close and closes the transport on the answer", () => {
  const server = openServer();
  server.sendClose(1000, "done");
  assert.deepEqual(output(server), { frames: [closeFrame(1000, "done")], eof: false });
  assert.deepEqual([server.state, server.closeExpected()], [State.CLOSING, true]);
  feed(server, closeFrame(1000, "done"));
  assert.deepEqual(server.eventsReceived(), [{ type: "close", close: new Close(1000, "done") }]);
  assert.deepEqual(output(server), { frames: [], eof: true });
  assert.equal(server.closeRcvdThenSent, false);
  server.receiveEof();
  const error = server.closeError;
  assert.ok(error instanceof ConnectionClosedOK);
  assert.deepEqual([error.rcvdThenSent, error.sent, error.rcvd], [
    false,
    new Close(1000, "done"),
    new Close(1000, "done"),
  ]);
});

Deno.test("protocol: client initiates the close and waits for the server's EOF", () => {
  const client = openClient();
  client.sendClose(4000, "custom");
  assert.deepEqual(output(client), { frames: [closeFrame(4000, "custom")], eof: false });
  feed(client, closeFrame(4000, "custom"));
  assert.deepEqual(output(client), { frames: [], eof: false });
  assert.deepEqual([client.state, client.closeExpected(), client.closeRcvdThenSent], [
    State.CLOSING,
    true,
    false,
  ]);
  client.receiveEof();
  assert.deepEqual(output(client), { frames: [], eof: true });
  assert.equal(client.state, State.CLOSED);
});

Deno.test("protocol: sendClose without a code sends an empty close frame", () => {
  const server = openServer();
  server.sendClose();
  assert.deepEqual(output(server), {
    frames: [new Frame(Opcode.CLOSE, new Uint8Array(0))],
    eof: false,
  });
  assert.deepEqual(server.closeSent, new Close(1005, ""));
});

Deno.test("protocol: sendClose rejects a code that may not be sent and stays OPEN", () => {
  const server = openServer();
  assert.throws(() => server.sendClose(1006), ProtocolError);
  assert.throws(() => server.sendClose(1000, "x".repeat(124)), ProtocolError);
  assert.deepEqual([server.state, server.closeSent, server.dataToSend()], [
    State.OPEN,
    undefined,
    [],
  ]);
});

Deno.test("protocol: data frames received after sending a close frame are discarded", () => {
  const server = openServer();
  server.sendClose(1000);
  server.dataToSend();
  feed(server, text("late"));
  feed(server, binary(new Uint8Array([1]), false));
  feed(server, cont(new Uint8Array([2])));
  assert.deepEqual(server.eventsReceived(), []);
  assert.equal(server.failure, undefined);
  feed(server, closeFrame(1000));
  assert.deepEqual(server.eventsReceived(), [{ type: "close", close: new Close(1000) }]);
});

Deno.test("protocol: nothing after a received close frame is processed", () => {
  const server = openServer();
  server.receiveData(concat(masked(closeFrame(1000)), masked(text("after")), utf8("garbage")));
  assert.deepEqual(server.eventsReceived(), [{ type: "close", close: new Close(1000) }]);
  assert.deepEqual(output(server), { frames: [closeFrame(1000)], eof: true });
  server.receiveData(masked(text("later")));
  assert.deepEqual(server.eventsReceived(), []);
  assert.equal(server.failure, undefined);
});

Deno.test("protocol: a close frame in the middle of a fragmented message is echoed", () => {
  const client = openClient();
  feed(client, text("part", false));
  feed(client, closeFrame(1001));
  assert.deepEqual(client.eventsReceived(), [{ type: "close", close: new Close(1001) }]);
  assert.deepEqual(output(client), { frames: [closeFrame(1001)], eof: false });
});

Deno.test("protocol: EOF without a close frame gives ConnectionClosedError with code 1006", () => {
  const server = openServer();
  server.receiveEof();
  assert.deepEqual([server.state, server.eofReceived, server.eofSent], [State.CLOSED, true, true]);
  assert.deepEqual(output(server), { frames: [], eof: true });
  const error = server.closeError;
  assert.ok(error instanceof ConnectionClosedError);
  assert.deepEqual(
    [error.code, error.reason, error.rcvd, error.sent, error.rcvdThenSent, error.cause],
    [1006, "", undefined, undefined, undefined, undefined],
  );
  assert.equal(error.message, "no close frame received or sent");
});

Deno.test("protocol: client EOF while open closes its side too", () => {
  const client = openClient();
  client.receiveEof();
  assert.deepEqual(output(client), { frames: [], eof: true });
  assert.equal(client.state, State.CLOSED);
  assert.ok(client.closeError instanceof ConnectionClosedError);
});

Deno.test("protocol: EOF after sending a close frame gives ConnectionClosedError", () => {
  const server = openServer();
  server.sendClose(1000);
  server.receiveEof();
  const error = server.closeError;
  assert.ok(error instanceof ConnectionClosedError);
  assert.deepEqual([error.code, error.sent, error.rcvd], [1006, new Close(1000), undefined]);
});

Deno.test("protocol: closeError is OK when both close codes are 1000, 1001 or 1005", () => {
  for (const [rcvd, sent] of [[1000, 1000], [1001, 1000], [1005, 1001], [1000, 1005]]) {
    const server = openServer();
    server.sendClose(sent === 1005 ? undefined : sent);
    feed(
      server,
      rcvd === 1005 ? new Frame(Opcode.CLOSE, new Uint8Array(0)) : closeFrame(rcvd),
    );
    server.receiveEof();
    const error = server.closeError;
    assert.equal(error.constructor, ConnectionClosedOK, `${rcvd}/${sent}`);
    assert.deepEqual([error.rcvd?.code, error.sent?.code, error.rcvdThenSent], [
      rcvd,
      sent,
      false,
    ]);
  }
});

Deno.test("protocol: closeError is an Error when a close code isn't OK", () => {
  for (const [rcvd, sent] of [[1002, 1000], [1000, 1011], [4000, 4000]]) {
    const server = openServer();
    server.sendClose(sent);
    feed(server, closeFrame(rcvd));
    server.receiveEof();
    const error = server.closeError;
    assert.equal(error.constructor, ConnectionClosedError, `${rcvd}/${sent}`);
    assert.deepEqual([error.code, error.sent?.code], [rcvd, sent]);
  }
});

Deno.test("protocol: closeError reports the order of the close frames", () => {
  const first = openServer();
  feed(first, closeFrame(1000));
  first.receiveEof();
  assert.equal(first.closeError.rcvdThenSent, true);
  assert.equal(
    first.closeError.message,
    "received 1000 (OK); then sent 1000 (OK)",
  );
  const second = openServer();
  second.sendClose(1000);
  feed(second, closeFrame(1000));
  second.receiveEof();
  assert.equal(second.closeError.rcvdThenSent, false);
  assert.equal(second.closeError.message, "sent 1000 (OK); then received 1000 (OK)");
});

// ---------------------------------------------------------------- Sending

Deno.test("protocol: server sends unmasked frames with the shortest length encoding", () => {
  const server = openServer();
  server.sendText("hi");
  server.sendBinary(new Uint8Array(200));
  server.sendBinary(new Uint8Array(70000));
  const bytes = concat(...server.dataToSend());
  assert.deepEqual([...bytes.subarray(0, 4)], [0x81, 2, 0x68, 0x69]);
  assert.deepEqual([...bytes.subarray(4, 8)], [0x82, 126, 0, 200]);
  assert.deepEqual(
    [...bytes.subarray(208, 218)],
    [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70],
  );
  assert.equal(bytes.length, 4 + 204 + 10 + 70000);
});

Deno.test("protocol: server sends a large frame under 64 KiB with a 16-bit length", () => {
  const server = openServer();
  const data = new Uint8Array(5000).fill(3);
  server.sendBinary(data);
  const chunks = server.dataToSend();
  assert.deepEqual(chunks, [new Uint8Array([0x82, 126, 0x13, 0x88]), data]);
});

Deno.test("protocol: client sends masked frames", () => {
  const client = openClient();
  client.sendText("hello");
  const chunks = client.dataToSend();
  assert.equal(chunks.length, 1);
  assert.equal(chunks[0][1], 0x80 | 5);
  assert.deepEqual(Frame.parse(chunks[0], { mask: true }), text("hello"));
});

Deno.test("protocol: outputLength counts the bytes queued and dataToSend clears it", () => {
  const server = openServer();
  server.sendText("abc");
  server.sendBinary(new Uint8Array(0));
  assert.equal(server.outputLength, 5 + 2);
  server.dataToSend();
  assert.equal(server.outputLength, 0);
  assert.deepEqual(server.dataToSend(), []);
});

Deno.test("protocol: sendText accepts bytes that are already UTF-8", () => {
  const server = openServer();
  server.sendText(utf8("ü"));
  assert.deepEqual(output(server), { frames: [text("ü")], eof: false });
});

Deno.test("protocol: fragmented messages are sent with continuation frames", () => {
  const server = openServer();
  server.sendText("a", false);
  assert.equal(server.sendingFragmented, true);
  server.sendContinuation("b", false);
  server.sendContinuation(utf8("c"), true);
  assert.equal(server.sendingFragmented, false);
  server.sendBinary(new Uint8Array([1]), false);
  server.sendPing(utf8("between"));
  server.sendContinuation(new Uint8Array([2]), true);
  assert.deepEqual(output(server), {
    frames: [
      text("a", false),
      cont(utf8("b"), false),
      cont(utf8("c")),
      binary(new Uint8Array([1]), false),
      new Frame(Opcode.PING, utf8("between")),
      cont(new Uint8Array([2])),
    ],
    eof: false,
  });
});

Deno.test("protocol: sendPing and sendPong send control frames", () => {
  const client = openClient();
  client.sendPing();
  client.sendPong(utf8("unsolicited"));
  assert.deepEqual(output(client), {
    frames: [
      new Frame(Opcode.PING, new Uint8Array(0)),
      new Frame(Opcode.PONG, utf8("unsolicited")),
    ],
    eof: false,
  });
});

Deno.test("protocol: a ping over 125 bytes is refused", () => {
  const server = openServer();
  assert.throws(() => server.sendPing(new Uint8Array(126)), ProtocolError);
  const client = openClient();
  assert.throws(() => client.sendPong(new Uint8Array(126)), ProtocolError);
  assert.deepEqual([server.dataToSend(), client.dataToSend()], [[], []]);
});

Deno.test("protocol: sendSerialized queues frame bytes as they are", () => {
  const server = openServer();
  const bytes = unmasked(text("shared"));
  server.sendSerialized(bytes);
  assert.deepEqual(server.dataToSend(), [bytes]);
});

Deno.test("protocol: sending in CONNECTING throws InvalidState naming the state", () => {
  const server = new ServerProtocol();
  assertInvalidState(() => server.sendText("x"), "cannot send text frame in state CONNECTING");
  assertInvalidState(
    () => server.sendBinary(new Uint8Array(0)),
    "cannot send binary frame in state CONNECTING",
  );
  assertInvalidState(() => server.sendPing(), "cannot send ping in state CONNECTING");
  assertInvalidState(() => server.sendPong(), "cannot send pong in state CONNECTING");
  assertInvalidState(() => server.sendClose(), "cannot send close frame in state CONNECTING");
  assertInvalidState(
    () => server.sendSerialized(new Uint8Array(2)),
    "cannot send data frame in state CONNECTING",
  );
  assertInvalidState(
    () => server.sendContinuation("x", true),
    "cannot send continuation frame in state CONNECTING",
  );
});

Deno.test("protocol: sending in CLOSING throws InvalidState naming the state", () => {
  const client = openClient();
  client.sendClose(1000);
  assertInvalidState(() => client.sendText("x"), "cannot send text frame in state CLOSING");
  assertInvalidState(() => client.sendPing(), "cannot send ping in state CLOSING");
  assertInvalidState(() => client.sendClose(1000), "cannot send close frame in state CLOSING");
});

Deno.test("protocol: sending in CLOSED throws InvalidState naming the state", () => {
  const server = openServer();
  server.receiveEof();
  assertInvalidState(
    () => server.sendBinary(new Uint8Array(1)),
    "cannot send binary frame in state CLOSED",
  );
  assertInvalidState(() => server.sendPong(), "cannot send pong in state CLOSED");
});

Deno.test("protocol: sendContinuation without a fragmented message throws InvalidState", () => {
  const server = openServer();
  assertInvalidState(
    () => server.sendContinuation("x", true),
    "cannot send a continuation frame: no fragmented message is being sent",
  );
});

Deno.test("protocol: a new message while fragmenting throws InvalidState", () => {
  const server = openServer();
  server.sendBinary(new Uint8Array([1]), false);
  const message = "cannot start a new message: a fragmented message is being sent";
  assertInvalidState(() => server.sendText("x"), message);
  assertInvalidState(() => server.sendBinary(new Uint8Array(0)), message);
  assertInvalidState(() => server.sendSerialized(unmasked(text("x"))), message);
});

Deno.test("protocol: sendSerialized as a client throws InvalidState", () => {
  const client = openClient();
  assertInvalidState(
    () => client.sendSerialized(new Uint8Array(2)),
    "cannot send pre-serialized frames as a client",
  );
});

Deno.test("protocol: receiving after EOF throws InvalidState", () => {
  const server = openServer();
  server.receiveEof();
  assertInvalidState(
    () => server.receiveData(new Uint8Array(1)),
    "cannot receive data after the end of the stream",
  );
  assertInvalidState(() => server.receiveEof(), "end of stream already received");
});

// ---------------------------------------------------------------- failConnection

Deno.test("protocol: failConnection in OPEN sends a close frame; a server closes the transport", () => {
  const server = openServer();
  server.failConnection(1008, "policy");
  assert.deepEqual(output(server), { frames: [closeFrame(1008, "policy")], eof: true });
  assert.deepEqual([server.state, server.closeSent, server.failure], [
    State.CLOSING,
    new Close(1008, "policy"),
    undefined,
  ]);
});

Deno.test("protocol: failConnection in OPEN on a client sends a close frame and waits", () => {
  const client = openClient();
  client.failConnection(1011);
  assert.deepEqual(output(client), { frames: [closeFrame(1011)], eof: false });
  assert.deepEqual([client.state, client.closeExpected()], [State.CLOSING, true]);
  feed(client, closeFrame(1011));
  assert.deepEqual(client.eventsReceived(), []);
});

Deno.test("protocol: failConnection with 1006 sends no close frame", () => {
  const server = openServer();
  server.failConnection(1006);
  assert.deepEqual(output(server), { frames: [], eof: true });
  assert.deepEqual([server.state, server.closeSent], [State.CLOSING, undefined]);
});

Deno.test("protocol: failConnection truncates a long reason on a code point boundary", () => {
  const server = openServer();
  server.failConnection(1011, "é".repeat(100));
  const reason = "é".repeat(60) + "...";
  assert.equal(utf8(reason).length, 123);
  assert.deepEqual(output(server), { frames: [closeFrame(1011, reason)], eof: true });
});

Deno.test("protocol: failConnection keeps a reason of exactly 123 bytes", () => {
  const server = openServer();
  server.failConnection(1011, "r".repeat(123));
  assert.deepEqual(output(server), { frames: [closeFrame(1011, "r".repeat(123))], eof: true });
});

Deno.test("protocol: failConnection in CONNECTING closes a server's transport", () => {
  const server = new ServerProtocol();
  server.failConnection(1011);
  assert.deepEqual(output(server), { frames: [], eof: true });
  assert.equal(server.state, State.CONNECTING);
  server.receiveData(requestBytes());
  assert.deepEqual(server.eventsReceived(), []);
  server.receiveEof();
  assert.equal(server.state, State.CLOSED);
});

Deno.test("protocol: a server can't send a handshake response after failConnection", () => {
  const server = new ServerProtocol();
  server.receiveData(requestBytes());
  const request = takeRequest(server);
  server.failConnection(1011);
  assertInvalidState(
    () => server.sendResponse(server.accept(request)),
    "cannot send a handshake response in state CONNECTING",
  );
  assert.deepEqual([server.state, server.dataToSend()], [State.CONNECTING, [new Uint8Array(0)]]);
});

Deno.test("protocol: failConnection in CONNECTING on a client sends nothing", () => {
  const { client, key } = startClient();
  client.failConnection(1011);
  assert.deepEqual(output(client), { frames: [], eof: false });
  client.receiveData(responseBytes(key));
  assert.deepEqual([client.state, client.eventsReceived()], [State.CONNECTING, []]);
  client.receiveEof();
  assert.deepEqual(output(client), { frames: [], eof: true });
});

Deno.test("protocol: failConnection in CLOSING sends no second close frame", () => {
  const server = openServer();
  server.sendClose(1000);
  server.dataToSend();
  server.failConnection(1002, "late");
  assert.deepEqual(output(server), { frames: [], eof: true });
  assert.deepEqual([server.state, server.closeSent], [State.CLOSING, new Close(1000)]);
  const client = openClient();
  client.sendClose(1000);
  client.dataToSend();
  client.failConnection(1002);
  assert.deepEqual(output(client), { frames: [], eof: false });
});

Deno.test("protocol: failConnection in CLOSED does nothing", () => {
  const server = openServer();
  server.receiveEof();
  server.dataToSend();
  server.failConnection(1011);
  assert.deepEqual([server.state, server.dataToSend()], [State.CLOSED, []]);
});

// ---------------------------------------------------------------- Client handshake

Deno.test("protocol: connect builds the handshake request", () => {
  const client = new ClientProtocol(parseUri("ws://example.com/chat?room=1"));
  const request = client.connect();
  const key = request.headers.get("Sec-WebSocket-Key")!;
  assert.equal(request.path, "/chat?room=1");
  assert.deepEqual([...request.headers.rawItems()], [
    ["Host", "example.com"],
    ["Upgrade", "websocket"],
    ["Connection", "Upgrade"],
    ["Sec-WebSocket-Key", key],
    ["Sec-WebSocket-Version", "13"],
  ]);
});

Deno.test("protocol: connect draws a new random 16-byte key each time", () => {
  const client = new ClientProtocol(parseUri("ws://example.com/"));
  const keys = [client.connect(), client.connect()].map((request) =>
    request.headers.get("Sec-WebSocket-Key")!
  );
  for (const key of keys) {
    assert.match(key, /^[A-Za-z0-9+/]{22}==$/);
    assert.equal(atob(key).length, 16);
  }
  assert.notEqual(keys[0], keys[1]);
});

Deno.test("protocol: connect puts the port in Host only when it isn't the default", () => {
  const hosts = [
    "ws://example.com/",
    "ws://example.com:80/",
    "ws://example.com:8080/",
    "wss://example.com/",
    "wss://example.com:443/",
    "wss://example.com:80/",
    "ws://example.com:443/",
  ].map((uri) => new ClientProtocol(parseUri(uri)).connect().headers.get("Host"));
  assert.deepEqual(hosts, [
    "example.com",
    "example.com",
    "example.com:8080",
    "example.com",
    "example.com",
    "example.com:80",
    "example.com:443",
  ]);
});

Deno.test("protocol: connect puts an IPv6 host in brackets", () => {
  const hosts = ["ws://[::1]/", "ws://[::1]:8080/", "wss://[2001:db8::7]/"].map((uri) =>
    new ClientProtocol(parseUri(uri)).connect().headers.get("Host")
  );
  assert.deepEqual(hosts, ["[::1]", "[::1]:8080", "[2001:db8::7]"]);
});

Deno.test("protocol: connect sends Basic credentials from the URI's user info", () => {
  const headers = new ClientProtocol(parseUri("ws://user:pass@example.com/")).connect().headers;
  assert.equal(headers.get("Authorization"), `Basic ${btoa("user:pass")}`);
  const encoded = new ClientProtocol(parseUri("ws://us%20er:p%40ss@example.com/")).connect();
  assert.equal(encoded.headers.get("Authorization"), `Basic ${btoa("us er:p@ss")}`);
});

Deno.test("protocol: connect rejects user info that isn't percent-encoded UTF-8", () => {
  const client = new ClientProtocol(parseUri("ws://user:%E9@example.com/"));
  assert.throws(() => client.connect(), (error: unknown) => {
    assert.ok(error instanceof InvalidURI);
    assert.deepEqual([error.uri, error.reason], [
      "ws://user:%E9@example.com/",
      "user info isn't percent-encoded UTF-8",
    ]);
    return true;
  });
});

Deno.test("protocol: connect sends Origin, subprotocols, extensions and User-Agent", () => {
  const client = new ClientProtocol(parseUri("ws://example.com/"), {
    origin: "https://example.com",
    subprotocols: ["chat.v2", "chat.v1"],
    extensions: [new FlipClientFactory([["level", "1"], ["fast", undefined]])],
    userAgentHeader: "denows/0.1",
    additionalHeaders: { "X-Trace": "abc" },
  });
  const request = client.connect();
  const key = request.headers.get("Sec-WebSocket-Key")!;
  assert.deepEqual([...request.headers.rawItems()], [
    ["Host", "example.com"],
    ["Origin", "https://example.com"],
    ["Upgrade", "websocket"],
    ["Connection", "Upgrade"],
    ["Sec-WebSocket-Key", key],
    ["Sec-WebSocket-Version", "13"],
    ["Sec-WebSocket-Extensions", "x-flip; level=1; fast"],
    ["Sec-WebSocket-Protocol", "chat.v2, chat.v1"],
    ["X-Trace", "abc"],
    ["User-Agent", "denows/0.1"],
  ]);
});

Deno.test("protocol: additionalHeaders may be pairs or Headers and may set User-Agent", () => {
  const fromPairs = new ClientProtocol(parseUri("ws://example.com/"), {
    additionalHeaders: [["X-A", "1"], ["X-A", "2"]],
  }).connect().headers;
  assert.deepEqual(fromPairs.getAll("X-A"), ["1", "2"]);
  const fromHeaders = new ClientProtocol(parseUri("ws://example.com/"), {
    additionalHeaders: new Headers({ "User-Agent": "custom" }),
    userAgentHeader: "denows/0.1",
  }).connect().headers;
  assert.deepEqual(fromHeaders.getAll("User-Agent"), ["custom"]);
});

Deno.test("protocol: sendRequest queues the serialized request", () => {
  const client = new ClientProtocol(parseUri("ws://example.com/"));
  const request = client.connect();
  client.sendRequest(request);
  assert.deepEqual(client.dataToSend(), [request.serialize()]);
  assert.equal(client.request, request);
});

Deno.test("protocol: sendRequest twice throws InvalidState", () => {
  const { client } = startClient();
  assertInvalidState(
    () => client.sendRequest(client.connect()),
    "cannot send a handshake request in state CONNECTING",
  );
});

Deno.test("protocol: receiving a response before sending the request throws InvalidState", () => {
  const client = new ClientProtocol(parseUri("ws://example.com/"));
  assertInvalidState(
    () => client.receiveData(responseBytes(KEY)),
    "cannot receive a handshake response before sending the request",
  );
});

Deno.test("protocol: client accepts a valid 101 response and opens", () => {
  const { client, key } = startClient();
  const bytes = responseBytes(key);
  client.receiveData(bytes.slice(0, 20));
  assert.deepEqual([client.state, client.eventsReceived()], [State.CONNECTING, []]);
  client.receiveData(bytes.slice(20));
  const response = takeResponse(client);
  assert.deepEqual(
    [client.state, response.statusCode, response.exception, client.response, client.handshakeError],
    [State.OPEN, 101, undefined, response, undefined],
  );
  assert.deepEqual([client.extensions, client.subprotocol], [[], undefined]);
});

Deno.test("protocol: client accepts Upgrade and Connection case-insensitively and in lists", () => {
  const { client, key } = startClient();
  client.receiveData(
    responseBytes(key, { Upgrade: "WebSocket", Connection: ["keep-alive", "UPGRADE"] }),
  );
  assert.equal(client.state, State.OPEN);
});

Deno.test("protocol: client uses the key of the request it sends", () => {
  const client = new ClientProtocol(parseUri("ws://example.com/"));
  const request = client.connect();
  request.headers.set("Sec-WebSocket-Key", KEY);
  client.sendRequest(request);
  client.receiveData(responseBytes(KEY));
  assert.equal(client.state, State.OPEN);
});

Deno.test("protocol: client processes frames in the same chunk as the 101 response", () => {
  const { client, key } = startClient();
  client.receiveData(concat(responseBytes(key), unmasked(text("first")), unmasked(text("sec"))));
  const events = client.eventsReceived();
  assert.equal(events.length, 3);
  assert.equal(events[0].type, "response");
  assert.deepEqual(events.slice(1), [
    { type: "message", data: "first" },
    { type: "message", data: "sec" },
  ]);
});

Deno.test("protocol: client fails with 1002 on a masked frame right after the response", () => {
  const { client, key } = startClient();
  client.receiveData(concat(responseBytes(key), masked(text("x"))));
  takeResponse(client);
  assertFailed(client, 1002, "incorrect masking: frame must not be masked", ProtocolError);
});

/** Feeds `bytes` as the response and returns the handshake error, checking the failure path. */
function clientHandshakeError(
  bytes: (key: string) => Uint8Array,
  options: ClientProtocolOptions = {},
): { error: Error; response: Response } {
  const { client, key } = startClient(options);
  client.receiveData(bytes(key));
  const response = takeResponse(client);
  const error = client.handshakeError;
  assert.ok(error !== undefined);
  assert.equal(response.exception, error);
  assert.deepEqual(output(client), { frames: [], eof: true });
  assert.deepEqual([client.state, client.closeExpected()], [State.CONNECTING, true]);
  client.receiveData(unmasked(text("ignored")));
  assert.deepEqual(client.eventsReceived(), []);
  client.receiveEof();
  assert.deepEqual([client.state, client.closeExpected()], [State.CLOSED, false]);
  assert.deepEqual(output(client), { frames: [], eof: false });
  const closed = client.closeError;
  assert.ok(closed instanceof ConnectionClosedError);
  assert.equal(closed.cause, error);
  return { error, response };
}

function assertHeaderError(
  error: Error,
  errorClass: typeof InvalidHeader,
  headerName: string,
  value: string | undefined,
): void {
  assert.equal(error.constructor, errorClass);
  assert.ok(error instanceof InvalidHeader);
  assert.deepEqual([error.headerName, error.value], [headerName, value]);
}

Deno.test("protocol: client rejects a non-101 response with InvalidStatus holding it", () => {
  const { error, response } = clientHandshakeError((key) =>
    concat(
      responseBytes(
        key,
        { "Content-Length": "9", "Content-Type": "text/plain" },
        "HTTP/1.1 403 Forbidden",
      ),
      utf8("forbidden"),
    )
  );
  assert.ok(error instanceof InvalidStatus);
  assert.equal(error.constructor, InvalidStatus);
  assert.equal(error.response, response);
  assert.equal(error.message, "server rejected WebSocket connection: HTTP 403");
  assert.deepEqual(
    [response.statusCode, response.reasonPhrase, decoder.decode(response.body)],
    [403, "Forbidden", "forbidden"],
  );
});

Deno.test("protocol: client rejects a redirect with InvalidStatus", () => {
  const { error, response } = clientHandshakeError(() =>
    utf8("HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")
  );
  assert.equal(error.constructor, InvalidStatus);
  assert.equal(response.headers.get("Location"), "/elsewhere");
});

Deno.test("protocol: client reads a 4xx body that runs to EOF", () => {
  const { client } = startClient();
  client.receiveData(utf8("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such"));
  assert.deepEqual(client.eventsReceived(), []);
  client.receiveData(utf8(" path"));
  client.receiveEof();
  const response = takeResponse(client);
  assert.equal(decoder.decode(response.body), "no such path");
  assert.ok(response.exception instanceof InvalidStatus);
  assert.equal(client.handshakeError, response.exception);
  assert.equal(client.state, State.CLOSED);
  assert.deepEqual(output(client), { frames: [], eof: true });
});

Deno.test("protocol: client rejects a response without Connection: Upgrade", () => {
  const missing = clientHandshakeError((key) => responseBytes(key, { Connection: null }));
  assertHeaderError(missing.error, InvalidUpgrade, "Connection", undefined);
  const wrong = clientHandshakeError((key) => responseBytes(key, { Connection: "close" }));
  assertHeaderError(wrong.error, InvalidUpgrade, "Connection", "close");
});

Deno.test("protocol: client rejects a response without Upgrade: websocket", () => {
  const missing = clientHandshakeError((key) => responseBytes(key, { Upgrade: null }));
  assertHeaderError(missing.error, InvalidUpgrade, "Upgrade", undefined);
  const wrong = clientHandshakeError((key) => responseBytes(key, { Upgrade: "h2c" }));
  assertHeaderError(wrong.error, InvalidUpgrade, "Upgrade", "h2c");
  const several = clientHandshakeError((key) => responseBytes(key, { Upgrade: "websocket, h2c" }));
  assertHeaderError(several.error, InvalidUpgrade, "Upgrade", "websocket, h2c");
});

Deno.test("protocol: client rejects a missing Sec-WebSocket-Accept with InvalidHeader", () => {
  const { error } = clientHandshakeError((key) =>
    responseBytes(key, { "Sec-WebSocket-Accept": null })
  );
  assertHeaderError(error, InvalidHeader, "Sec-WebSocket-Accept", undefined);
});

Deno.test("protocol: client rejects a duplicate Sec-WebSocket-Accept with InvalidHeader", () => {
  let accept = "";
  const { error } = clientHandshakeError((key) => {
    accept = acceptKey(key);
    return responseBytes(key, { "Sec-WebSocket-Accept": [accept, accept] });
  });
  assertHeaderError(error, InvalidHeader, "Sec-WebSocket-Accept", `${accept}, ${accept}`);
  assert.equal(error.message, "more than one Sec-WebSocket-Accept header found");
});

Deno.test("protocol: client rejects a wrong Sec-WebSocket-Accept with InvalidHeaderValue", () => {
  const { error } = clientHandshakeError(() =>
    responseBytes(KEY, { "Sec-WebSocket-Accept": ACCEPT })
  );
  assertHeaderError(error, InvalidHeaderValue, "Sec-WebSocket-Accept", ACCEPT);
});

Deno.test("protocol: client negotiates an offered extension", () => {
  const { client, key } = startClient({ extensions: [new FlipClientFactory()] });
  client.receiveData(responseBytes(key, { "Sec-WebSocket-Extensions": "x-flip" }));
  assert.equal(client.state, State.OPEN);
  assert.deepEqual(client.extensions, [new FlipExtension()]);
});

Deno.test("protocol: client rejects an extension when it offered none", () => {
  const { error } = clientHandshakeError((key) =>
    responseBytes(key, { "Sec-WebSocket-Extensions": "x-flip" })
  );
  assert.equal(error.constructor, InvalidHandshake);
  assert.equal(error.message, "no extensions supported");
});

Deno.test("protocol: client rejects an extension it didn't offer with NegotiationError", () => {
  const { error } = clientHandshakeError(
    (key) => responseBytes(key, { "Sec-WebSocket-Extensions": "x-other; a=1" }),
    { extensions: [new FlipClientFactory()] },
  );
  assert.equal(error.constructor, NegotiationError);
  assert.equal(error.message, "unsupported extension: x-other; a=1");
});

Deno.test("protocol: client reports the factory's NegotiationError for bad parameters", () => {
  const { error } = clientHandshakeError(
    (key) => responseBytes(key, { "Sec-WebSocket-Extensions": "x-flip; bad" }),
    { extensions: [new FlipClientFactory()] },
  );
  assert.equal(error.constructor, NegotiationError);
  assert.equal(error.message, "x-flip: unexpected parameter: bad");
});

Deno.test("protocol: client tries the next factory of the same name", () => {
  class Strict extends FlipClientFactory {
    override processResponseParams(): Extension {
      throw new NegotiationError("strict: no");
    }
  }
  const { client, key } = startClient({
    extensions: [new Strict(), new FlipClientFactory()],
  });
  client.receiveData(responseBytes(key, { "Sec-WebSocket-Extensions": "x-flip" }));
  assert.deepEqual([client.state, client.extensions], [State.OPEN, [new FlipExtension()]]);
});

Deno.test("protocol: an unexpected error in a client factory fails the handshake", () => {
  class Broken extends FlipClientFactory {
    override processResponseParams(): Extension {
      throw new TypeError("factory bug");
    }
  }
  const { error } = clientHandshakeError(
    (key) => responseBytes(key, { "Sec-WebSocket-Extensions": "x-flip" }),
    { extensions: [new Broken()] },
  );
  assert.equal(error.constructor, TypeError);
  assert.equal(error.message, "factory bug");
});

Deno.test("protocol: a non-Error thrown by a client factory becomes InvalidHandshake", () => {
  class Broken extends FlipClientFactory {
    override processResponseParams(): Extension {
      throw "factory bug";
    }
  }
  const { error } = clientHandshakeError(
    (key) => responseBytes(key, { "Sec-WebSocket-Extensions": "x-flip" }),
    { extensions: [new Broken()] },
  );
  assert.equal(error.constructor, InvalidHandshake);
  assert.equal(error.message, "factory bug");
});

Deno.test("protocol: client negotiates an offered subprotocol", () => {
  const { client, key } = startClient({ subprotocols: ["chat.v1", "chat.v2"] });
  client.receiveData(responseBytes(key, { "Sec-WebSocket-Protocol": "chat.v2" }));
  assert.deepEqual([client.state, client.subprotocol], [State.OPEN, "chat.v2"]);
});

Deno.test("protocol: client rejects a subprotocol when it offered none", () => {
  const { error } = clientHandshakeError((key) =>
    responseBytes(key, { "Sec-WebSocket-Protocol": "chat" })
  );
  assert.equal(error.constructor, InvalidHandshake);
  assert.equal(error.message, "no subprotocols supported");
});

Deno.test("protocol: client rejects a subprotocol it didn't offer with NegotiationError", () => {
  const { error } = clientHandshakeError(
    (key) => responseBytes(key, { "Sec-WebSocket-Protocol": "superchat" }),
    { subprotocols: ["chat"] },
  );
  assert.equal(error.constructor, NegotiationError);
  assert.equal(error.message, "unsupported subprotocol: superchat");
});

Deno.test("protocol: client rejects several subprotocols with InvalidHeader", () => {
  for (const value of ["chat, superchat", ["chat", "superchat"]]) {
    const { error } = clientHandshakeError(
      (key) => responseBytes(key, { "Sec-WebSocket-Protocol": value }),
      { subprotocols: ["chat", "superchat"] },
    );
    assertHeaderError(error, InvalidHeader, "Sec-WebSocket-Protocol", "chat, superchat");
    assert.equal(error.message, "multiple subprotocols: chat, superchat");
  }
});

Deno.test("protocol: client fails on a malformed response without a response event", () => {
  const { client } = startClient();
  client.receiveData(utf8("HTTP/1.0 101 Switching Protocols\r\n\r\n"));
  assert.deepEqual(client.eventsReceived(), []);
  assert.equal(client.handshakeError?.constructor, InvalidMessage);
  assert.equal(client.response, undefined);
  assert.deepEqual(output(client), { frames: [], eof: true });
  client.receiveEof();
  assert.equal(client.state, State.CLOSED);
});

Deno.test("protocol: client fails when the response exceeds the handshake limits", () => {
  const { client, key } = startClient({ httpLimits: { maxNumHeaders: 2 } });
  client.receiveData(responseBytes(key));
  assert.equal(client.handshakeError?.constructor, SecurityError);
  assert.deepEqual(output(client), { frames: [], eof: true });
});

Deno.test("protocol: EOF in the middle of the response fails the handshake", () => {
  const { client, key } = startClient();
  client.receiveData(responseBytes(key).slice(0, 40));
  client.receiveEof();
  const error = client.handshakeError;
  assert.equal(error?.constructor, InvalidMessage);
  assert.equal(error?.message, "connection closed while reading HTTP response headers");
  assert.deepEqual([client.state, client.eventsReceived()], [State.CLOSED, []]);
  assert.deepEqual(output(client), { frames: [], eof: true });
  assert.equal(client.closeError.cause, error);
});

Deno.test("protocol: EOF before any response byte fails the handshake", () => {
  const { client } = startClient();
  client.receiveEof();
  assert.equal(client.handshakeError?.constructor, InvalidMessage);
  assert.equal(
    client.handshakeError?.message,
    "connection closed while reading HTTP status line",
  );
  assert.deepEqual(output(client), { frames: [], eof: true });
});

Deno.test("protocol: EOF before the request was sent fails the handshake", () => {
  const client = new ClientProtocol(parseUri("ws://example.com/"));
  client.receiveEof();
  assert.equal(client.handshakeError?.constructor, InvalidHandshake);
  assert.equal(client.handshakeError?.message, "connection closed before the handshake");
  assert.deepEqual([client.state, client.dataToSend()], [State.CLOSED, [new Uint8Array(0)]]);
});

// ---------------------------------------------------------------- Server handshake

Deno.test("protocol: server emits the request and accepts it with 101", () => {
  const server = new ServerProtocol();
  const bytes = requestBytes();
  server.receiveData(bytes.slice(0, 10));
  assert.deepEqual(server.eventsReceived(), []);
  server.receiveData(bytes.slice(10));
  const request = takeRequest(server);
  assert.deepEqual(
    [request.path, [...request.headers.rawItems()], server.request],
    ["/chat", REQUEST_HEADERS, request],
  );
  const response = server.accept(request);
  assert.equal(response.statusCode, 101);
  assert.equal(response.reasonPhrase, "Switching Protocols");
  assert.match(response.headers.get("Date")!, /GMT$/);
  assert.deepEqual(
    [...response.headers.rawItems()].filter(([name]) => name !== "Date"),
    [["Upgrade", "websocket"], ["Connection", "Upgrade"], ["Sec-WebSocket-Accept", ACCEPT]],
  );
  server.sendResponse(response);
  assert.deepEqual([server.state, server.response, server.handshakeError], [
    State.OPEN,
    response,
    undefined,
  ]);
  assert.deepEqual(server.dataToSend(), [response.serialize()]);
});

Deno.test("protocol: server adds the Server header when configured", () => {
  const server = new ServerProtocol({ serverHeader: "denows/0.1" });
  assert.equal(server.accept(handshakeRequest()).headers.get("Server"), "denows/0.1");
  assert.equal(server.reject(404, "nope\n").headers.get("Server"), "denows/0.1");
});

/** Checks a rejected handshake: status, extra headers and exact error class. */
function assertRejected(
  response: Response,
  statusCode: number,
  errorClass: new (...args: never[]) => Error,
  headers: [string, string][] = [],
): void {
  assert.equal(response.statusCode, statusCode);
  assert.equal(response.exception?.constructor, errorClass);
  const expected = new Headers(headers);
  for (const [name] of headers) {
    assert.deepEqual(response.headers.getAll(name), expected.getAll(name));
  }
  assert.equal(response.headers.get("Connection"), "close");
  assert.equal(response.headers.get("Content-Length"), String(response.body?.length));
  assert.ok(
    decoder.decode(response.body).startsWith("Failed to open a WebSocket connection"),
  );
}

Deno.test("protocol: server answers 426 with Upgrade: websocket on a bad Upgrade", () => {
  for (const upgrade of [null, "h2c"]) {
    const server = new ServerProtocol();
    const request = handshakeRequest({ Upgrade: upgrade });
    const response = server.accept(request);
    assertRejected(response, 426, InvalidUpgrade, [["Upgrade", "websocket"]]);
    assert.equal(request.exception, response.exception);
    assert.equal(server.handshakeError, response.exception);
  }
});

Deno.test("protocol: server answers 400 on a malformed Upgrade header", () => {
  const response = new ServerProtocol().accept(handshakeRequest({ Upgrade: "" }));
  assertRejected(response, 400, InvalidHeaderFormat);
});

Deno.test("protocol: server accepts Upgrade among other protocols", () => {
  const server = new ServerProtocol();
  assert.equal(server.accept(handshakeRequest({ Upgrade: "h2c, WebSocket" })).statusCode, 101);
});

Deno.test("protocol: server answers 426 with Upgrade: websocket on a bad Connection", () => {
  for (const connection of [null, "keep-alive"]) {
    const response = new ServerProtocol().accept(handshakeRequest({ Connection: connection }));
    assertRejected(response, 426, InvalidUpgrade, [["Upgrade", "websocket"]]);
    const error = response.exception as InvalidUpgrade;
    assert.deepEqual([error.headerName, error.value], ["Connection", connection ?? undefined]);
  }
});

Deno.test("protocol: server answers 400 on a missing or duplicate Host (RFC 6455 §4.2.1)", () => {
  const cases: [string[] | null, string][] = [
    [null, "missing Host header"],
    [["a.example", "b.example"], "more than one Host header found"],
  ];
  for (const [host, message] of cases) {
    const response = new ServerProtocol().accept(handshakeRequest({ Host: host }));
    assertRejected(response, 400, InvalidHeader);
    assert.equal(response.exception?.message, message);
  }
});

Deno.test("protocol: server answers 400 on a missing, duplicate or malformed key", () => {
  const cases: [string | string[] | null, typeof InvalidHeader][] = [
    [null, InvalidHeader],
    [[KEY, KEY], InvalidHeader],
    ["dGhlIHNhbXBsZSBub25jZQ", InvalidHeaderValue],
    ["YWJj", InvalidHeaderValue],
    ["dGhlIHNhbXBsZSBub25jZXh4eA==", InvalidHeaderValue],
    ["dGhlIHNhbXBsZSBub25j*Q==", InvalidHeaderValue],
  ];
  for (const [key, errorClass] of cases) {
    const response = new ServerProtocol().accept(handshakeRequest({ "Sec-WebSocket-Key": key }));
    assertRejected(response, 400, errorClass);
  }
});

Deno.test("protocol: server answers 426 with Sec-WebSocket-Version: 13 on another version", () => {
  for (const version of ["8", "14"]) {
    const response = new ServerProtocol().accept(
      handshakeRequest({ "Sec-WebSocket-Version": version }),
    );
    assertRejected(response, 426, InvalidHeaderValue, [["Sec-WebSocket-Version", "13"]]);
  }
});

Deno.test("protocol: server answers 400 on a missing or duplicate version", () => {
  for (const version of [null, ["13", "13"]]) {
    const response = new ServerProtocol().accept(
      handshakeRequest({ "Sec-WebSocket-Version": version }),
    );
    assertRejected(response, 400, InvalidHeader);
    assert.equal(response.headers.has("Sec-WebSocket-Version"), false);
  }
});

Deno.test("protocol: server accepts origins listed as strings", () => {
  const server = new ServerProtocol({ origins: ["https://a.example", "https://b.example"] });
  const request = handshakeRequest({ Origin: "https://b.example" });
  assert.equal(server.accept(request).statusCode, 101);
});

Deno.test("protocol: server answers 403 on an origin not listed", () => {
  const server = new ServerProtocol({ origins: ["https://a.example"] });
  const response = server.accept(handshakeRequest({ Origin: "https://evil.example" }));
  assertRejected(response, 403, InvalidOrigin);
  assert.equal((response.exception as InvalidOrigin).value, "https://evil.example");
});

Deno.test("protocol: server answers 403 on a missing origin unless undefined is listed", () => {
  const strict = new ServerProtocol({ origins: ["https://a.example"] });
  assertRejected(strict.accept(handshakeRequest()), 403, InvalidOrigin);
  const lenient = new ServerProtocol({ origins: ["https://a.example", undefined] });
  assert.equal(lenient.accept(handshakeRequest()).statusCode, 101);
  // undefined only accepts requests without Origin.
  const onlyMissing = new ServerProtocol({ origins: [undefined] });
  assertRejected(
    onlyMissing.accept(handshakeRequest({ Origin: "https://a.example" })),
    403,
    InvalidOrigin,
  );
});

Deno.test("protocol: a RegExp origin must match the whole origin", () => {
  const server = new ServerProtocol({ origins: [/https:\/\/[a-z]+\.example\.com/g] });
  const statuses = [
    "https://app.example.com",
    "https://app.example.com",
    "https://app.example.com.evil.net",
    "evil+https://app.example.com",
    "https://APP.example.com",
  ].map((origin) => server.accept(handshakeRequest({ Origin: origin })).statusCode);
  assert.deepEqual(statuses, [101, 101, 403, 403, 403]);
});

Deno.test("protocol: a RegExp origin with alternatives matches any whole alternative", () => {
  const server = new ServerProtocol({
    origins: [/https:\/\/example\.com|https:\/\/example\.com:8443/i],
  });
  const statuses = [
    "https://example.com",
    "https://EXAMPLE.com:8443",
    "https://example.com:8444",
  ].map((origin) => server.accept(handshakeRequest({ Origin: origin })).statusCode);
  assert.deepEqual(statuses, [101, 101, 403]);
});

Deno.test("protocol: server answers 400 on several Origin headers", () => {
  const server = new ServerProtocol({ origins: ["https://a.example"] });
  const response = server.accept(
    handshakeRequest({ Origin: ["https://a.example", "https://a.example"] }),
  );
  assertRejected(response, 400, InvalidHeader);
});

Deno.test("protocol: server ignores Origin when origins is undefined", () => {
  const server = new ServerProtocol();
  assert.equal(server.accept(handshakeRequest({ Origin: "https://any.example" })).statusCode, 101);
});

Deno.test("protocol: server picks the first offered subprotocol it supports", () => {
  const server = new ServerProtocol({ subprotocols: ["b", "c"] });
  const response = server.accept(handshakeRequest({ "Sec-WebSocket-Protocol": ["a, c", "b"] }));
  assert.equal(response.headers.get("Sec-WebSocket-Protocol"), "c");
  assert.equal(server.subprotocol, "c");
});

Deno.test("protocol: server answers 400 when no offered subprotocol is supported", () => {
  const server = new ServerProtocol({ subprotocols: ["b"] });
  const response = server.accept(handshakeRequest({ "Sec-WebSocket-Protocol": "a" }));
  assertRejected(response, 400, NegotiationError);
  assert.equal(response.exception?.message, "invalid subprotocol; expected one of b");
});

Deno.test("protocol: server without subprotocols or without offers selects none", () => {
  const none = new ServerProtocol();
  const response = none.accept(handshakeRequest({ "Sec-WebSocket-Protocol": "a" }));
  assert.deepEqual([response.statusCode, response.headers.has("Sec-WebSocket-Protocol")], [
    101,
    false,
  ]);
  const noOffer = new ServerProtocol({ subprotocols: ["a"] });
  assert.equal(noOffer.accept(handshakeRequest()).headers.has("Sec-WebSocket-Protocol"), false);
  assert.equal(noOffer.subprotocol, undefined);
});

Deno.test("protocol: selectSubprotocol chooses among the offered subprotocols", () => {
  const calls: [string[], string][] = [];
  const server = new ServerProtocol({
    subprotocols: ["ignored"],
    selectSubprotocol: (offered, request) => {
      calls.push([offered, request.path]);
      return offered[offered.length - 1];
    },
  });
  const response = server.accept(handshakeRequest({ "Sec-WebSocket-Protocol": "a, b" }));
  assert.equal(response.headers.get("Sec-WebSocket-Protocol"), "b");
  assert.deepEqual(calls, [[["a", "b"], "/chat"]]);
});

Deno.test("protocol: selectSubprotocol may select none", () => {
  const server = new ServerProtocol({ selectSubprotocol: () => undefined });
  const response = server.accept(handshakeRequest({ "Sec-WebSocket-Protocol": "a" }));
  assert.deepEqual([response.statusCode, server.subprotocol], [101, undefined]);
});

Deno.test("protocol: selectSubprotocol returning one not offered gives 400", () => {
  const server = new ServerProtocol({ selectSubprotocol: () => "z" });
  const response = server.accept(handshakeRequest({ "Sec-WebSocket-Protocol": "a" }));
  assertRejected(response, 400, NegotiationError);
  assert.equal(response.exception?.message, "selected subprotocol wasn't offered: z");
});

Deno.test("protocol: a NegotiationError from selectSubprotocol gives 400", () => {
  const server = new ServerProtocol({
    selectSubprotocol: () => {
      throw new NegotiationError("no acceptable subprotocol");
    },
  });
  assertRejected(server.accept(handshakeRequest()), 400, NegotiationError);
});

Deno.test("protocol: an unexpected error from selectSubprotocol gives 500", () => {
  const server = new ServerProtocol({
    selectSubprotocol: () => {
      throw new TypeError("bug");
    },
  });
  const response = server.accept(handshakeRequest());
  assert.equal(response.statusCode, 500);
  assert.equal(response.exception?.constructor, TypeError);
  assert.equal(
    decoder.decode(response.body),
    "Failed to open a WebSocket connection.\nSee server log for more information.\n",
  );
});

Deno.test("protocol: a non-Error thrown by selectSubprotocol gives 400 InvalidHandshake", () => {
  const server = new ServerProtocol({
    selectSubprotocol: () => {
      throw "no";
    },
  });
  const response = server.accept(handshakeRequest());
  assertRejected(response, 400, InvalidHandshake);
  assert.equal(response.exception?.message, "no");
});

Deno.test("protocol: server negotiates an offered extension", () => {
  const server = new ServerProtocol({ extensions: [new FlipServerFactory()] });
  const response = server.accept(
    handshakeRequest({ "Sec-WebSocket-Extensions": "x-other, x-flip; level=2; fast" }),
  );
  assert.equal(response.headers.get("Sec-WebSocket-Extensions"), "x-flip; level=2");
  assert.deepEqual(server.extensions, [new FlipExtension()]);
});

Deno.test("protocol: server declines an offer on NegotiationError and accepts the next", () => {
  const server = new ServerProtocol({ extensions: [new FlipServerFactory()] });
  const response = server.accept(
    handshakeRequest({
      "Sec-WebSocket-Extensions": ["x-flip; decline", "x-flip; level=1", "x-flip; level=3"],
    }),
  );
  // The third offer is declined too: x-flip is already accepted.
  assert.equal(response.headers.get("Sec-WebSocket-Extensions"), "x-flip; level=1");
  assert.equal(server.extensions.length, 1);
});

Deno.test("protocol: server accepts no extension when every offer is declined", () => {
  const server = new ServerProtocol({ extensions: [new FlipServerFactory()] });
  const response = server.accept(
    handshakeRequest({ "Sec-WebSocket-Extensions": "x-flip; decline" }),
  );
  assert.deepEqual([response.statusCode, response.headers.has("Sec-WebSocket-Extensions")], [
    101,
    false,
  ]);
  assert.deepEqual(server.extensions, []);
});

Deno.test("protocol: server without extensions ignores offers", () => {
  const server = new ServerProtocol();
  const response = server.accept(handshakeRequest({ "Sec-WebSocket-Extensions": "x-flip" }));
  assert.equal(response.headers.has("Sec-WebSocket-Extensions"), false);
});

Deno.test("protocol: an unexpected error from a server factory gives 500", () => {
  class Broken extends FlipServerFactory {
    override processRequestParams(): [ExtensionParameter[], Extension] {
      throw new RangeError("factory bug");
    }
  }
  const server = new ServerProtocol({ extensions: [new Broken()] });
  const response = server.accept(handshakeRequest({ "Sec-WebSocket-Extensions": "x-flip" }));
  assert.deepEqual([response.statusCode, response.exception?.constructor], [500, RangeError]);
});

Deno.test("protocol: a malformed extension header gives 400", () => {
  const server = new ServerProtocol({ extensions: [new FlipServerFactory()] });
  const response = server.accept(handshakeRequest({ "Sec-WebSocket-Extensions": "x-flip;;" }));
  assert.equal(response.statusCode, 400);
  assert.ok(response.exception instanceof InvalidHeader);
});

Deno.test("protocol: server answers a malformed request with 400, then closes", () => {
  const server = new ServerProtocol();
  server.receiveData(utf8("POST /chat HTTP/1.1\r\nHost: example.com\r\n\r\n"));
  assert.deepEqual(server.eventsReceived(), []);
  const { response, eof } = responseOutput(server);
  assert.deepEqual([response.statusCode, response.reasonPhrase, eof], [400, "Bad Request", true]);
  assert.equal(
    decoder.decode(response.body),
    "Failed to open a WebSocket connection: " +
      "unsupported HTTP method; expected GET: POST /chat HTTP/1.1.\n",
  );
  assert.equal(server.handshakeError?.constructor, InvalidMessage);
  assert.equal(server.response?.exception, server.handshakeError);
  assert.deepEqual([server.state, server.closeExpected()], [State.CONNECTING, true]);
  server.receiveData(utf8("more"));
  assert.deepEqual(server.dataToSend(), []);
  server.receiveEof();
  assert.deepEqual([server.state, server.closeExpected(), server.dataToSend()], [
    State.CLOSED,
    false,
    [],
  ]);
  assert.equal(server.closeError.cause, server.handshakeError);
});

Deno.test("protocol: server answers 400 when the request breaks the handshake limits", () => {
  const server = new ServerProtocol({ httpLimits: { maxNumHeaders: 3 } });
  server.receiveData(requestBytes());
  const { response, eof } = responseOutput(server);
  assert.deepEqual([response.statusCode, eof], [400, true]);
  assert.equal(server.handshakeError?.constructor, SecurityError);
});

Deno.test("protocol: server answers 400 when a request line is too long", () => {
  const server = new ServerProtocol({ httpLimits: { maxLineLength: 64 } });
  server.receiveData(utf8(`GET /${"a".repeat(100)}`));
  const { response, eof } = responseOutput(server);
  assert.deepEqual([response.statusCode, eof], [400, true]);
  assert.equal(server.handshakeError?.constructor, SecurityError);
});

Deno.test("protocol: reject builds a plain-text response", () => {
  const server = new ServerProtocol();
  const response = server.reject(404, "no such path\n");
  assert.deepEqual(
    [response.statusCode, response.reasonPhrase, decoder.decode(response.body)],
    [404, "Not Found", "no such path\n"],
  );
  assert.deepEqual(
    [...response.headers.rawItems()].filter(([name]) => name !== "Date"),
    [
      ["Connection", "close"],
      ["Content-Length", "13"],
      ["Content-Type", "text/plain; charset=utf-8"],
    ],
  );
  assert.equal(server.reject(418, "teapot").reasonPhrase, "Error");
});

Deno.test("protocol: sending a rejection closes the transport and fails the handshake", () => {
  const server = new ServerProtocol();
  server.receiveData(requestBytes());
  takeRequest(server);
  const response = server.reject(401, "who are you?\n");
  server.sendResponse(response);
  const sent = server.dataToSend();
  assert.deepEqual(sent, [response.serialize(), new Uint8Array(0)]);
  const error = server.handshakeError;
  assert.equal(error?.constructor, InvalidHandshake);
  assert.equal(error?.message, "handshake rejected with HTTP 401");
  assert.deepEqual([server.state, server.closeExpected()], [State.CONNECTING, true]);
  server.receiveEof();
  assert.equal(server.state, State.CLOSED);
});

Deno.test("protocol: sending the rejection accept() built keeps its exception", () => {
  const server = new ServerProtocol();
  server.receiveData(requestBytes({ "Sec-WebSocket-Version": "8" }));
  const response = server.accept(takeRequest(server));
  server.sendResponse(response);
  assert.equal(server.handshakeError, response.exception);
  assert.equal(responseOutput(server).eof, true);
});

Deno.test("protocol: sendResponse twice throws InvalidState", () => {
  const server = openServer();
  assertInvalidState(
    () => server.sendResponse(server.reject(400, "x")),
    "cannot send a handshake response in state OPEN",
  );
  const rejected = new ServerProtocol();
  rejected.sendResponse(rejected.reject(400, "x"));
  assertInvalidState(
    () => rejected.sendResponse(rejected.reject(400, "x")),
    "cannot send a handshake response in state CONNECTING",
  );
});

Deno.test("protocol: frames in the same chunk as the request wait for sendResponse(101)", () => {
  const server = new ServerProtocol();
  server.receiveData(concat(requestBytes(), masked(text("early"))));
  const request = takeRequest(server);
  server.receiveData(masked(new Frame(Opcode.PING, utf8("p"))));
  assert.deepEqual(server.eventsReceived(), []);
  const response = server.accept(request);
  server.sendResponse(response);
  assert.deepEqual(server.eventsReceived(), [
    { type: "message", data: "early" },
    { type: "ping", data: utf8("p") },
  ]);
  const chunks = server.dataToSend();
  assert.deepEqual(chunks[0], response.serialize());
  assert.deepEqual(
    Frame.parse(concat(...chunks.slice(1)), { mask: false }),
    new Frame(Opcode.PONG, utf8("p")),
  );
});

Deno.test("protocol: early frames that break a rule fail the connection after the 101", () => {
  const server = new ServerProtocol();
  server.receiveData(concat(requestBytes(), unmasked(text("x")), masked(text("y"))));
  server.sendResponse(server.accept(takeRequest(server)));
  const chunks = server.dataToSend();
  assert.equal(latin1(chunks[0]).startsWith("HTTP/1.1 101"), true);
  assert.deepEqual(
    Frame.parse(concat(...chunks.slice(1, -1)), { mask: false }),
    closeFrame(1002, "incorrect masking: frame must be masked"),
  );
  assert.deepEqual(chunks[chunks.length - 1], new Uint8Array(0));
  assert.deepEqual(server.eventsReceived(), []);
});

Deno.test("protocol: early frames are dropped when the handshake is rejected", () => {
  const server = new ServerProtocol();
  server.receiveData(concat(requestBytes(), masked(text("early"))));
  takeRequest(server);
  server.sendResponse(server.reject(403, "no\n"));
  assert.deepEqual(server.eventsReceived(), []);
});

Deno.test("protocol: EOF while reading the request fails the handshake", () => {
  const server = new ServerProtocol();
  server.receiveData(utf8("GET / HTTP/1.1\r\n"));
  server.receiveEof();
  assert.equal(server.handshakeError?.constructor, InvalidHandshake);
  assert.equal(server.handshakeError?.message, "connection closed while reading the HTTP request");
  assert.deepEqual([server.state, server.dataToSend()], [State.CLOSED, [new Uint8Array(0)]]);
});

Deno.test("protocol: EOF before the response is sent fails the handshake", () => {
  const server = new ServerProtocol();
  server.receiveData(requestBytes());
  takeRequest(server);
  server.receiveEof();
  assert.equal(server.handshakeError?.message, "connection closed during the handshake");
  assert.equal(server.state, State.CLOSED);
  assertInvalidState(
    () => server.sendResponse(server.reject(400, "late")),
    "cannot send a handshake response in state CLOSED",
  );
});

Deno.test("protocol: EOF after a rejection keeps the rejection's error", () => {
  const server = new ServerProtocol();
  server.receiveData(utf8("BREW /pot HTTP/1.1\r\n\r\n"));
  const error = server.handshakeError;
  server.receiveEof();
  assert.equal(server.handshakeError, error);
});

// ---------------------------------------------------------------- In memory, both sides

function openPair(
  clientOptions: ClientProtocolOptions = {},
  serverOptions: ServerProtocolOptions = {},
): { client: ClientProtocol; server: ServerProtocol } {
  const client = new ClientProtocol(parseUri("ws://example.com/chat"), clientOptions);
  const server = new ServerProtocol(serverOptions);
  client.sendRequest(client.connect());
  transfer(client, server);
  server.sendResponse(server.accept(takeRequest(server)));
  transfer(server, client);
  takeResponse(client);
  return { client, server };
}

Deno.test("protocol: client and server complete the handshake and exchange messages", () => {
  const { client, server } = openPair({ subprotocols: ["chat"] }, { subprotocols: ["chat"] });
  assert.deepEqual([client.state, server.state, client.subprotocol, server.subprotocol], [
    State.OPEN,
    State.OPEN,
    "chat",
    "chat",
  ]);
  client.sendText("héllo 😀");
  client.sendBinary(new Uint8Array([0, 255]));
  client.sendText("");
  client.sendBinary(new Uint8Array(0));
  client.sendText("frag", false);
  client.sendContinuation("ment", false);
  client.sendContinuation("ed 😀", true);
  transfer(client, server);
  assert.deepEqual(server.eventsReceived(), [
    { type: "message", data: "héllo 😀" },
    { type: "message", data: new Uint8Array([0, 255]) },
    { type: "message", data: "" },
    { type: "message", data: new Uint8Array(0) },
    { type: "message", data: "fragmented 😀" },
  ]);
  server.sendBinary(new Uint8Array(100000).fill(9));
  server.sendText("ünïcödé", false);
  server.sendContinuation("!", true);
  transfer(server, client);
  assert.deepEqual(client.eventsReceived(), [
    { type: "message", data: new Uint8Array(100000).fill(9) },
    { type: "message", data: "ünïcödé!" },
  ]);
});

Deno.test("protocol: client and server exchange pings and pongs", () => {
  const { client, server } = openPair();
  client.sendPing(utf8("c"));
  transfer(client, server);
  transfer(server, client);
  server.sendPing(utf8("s"));
  transfer(server, client);
  transfer(client, server);
  assert.deepEqual(server.eventsReceived(), [
    { type: "ping", data: utf8("c") },
    { type: "pong", data: utf8("s") },
  ]);
  assert.deepEqual(client.eventsReceived(), [
    { type: "pong", data: utf8("c") },
    { type: "ping", data: utf8("s") },
  ]);
});

Deno.test("protocol: the client closes and both sides end with ConnectionClosedOK", () => {
  const { client, server } = openPair();
  client.sendClose(1000, "bye");
  transfer(client, server);
  assert.deepEqual(server.eventsReceived(), [{ type: "close", close: new Close(1000, "bye") }]);
  transfer(server, client);
  assert.deepEqual(client.eventsReceived(), [{ type: "close", close: new Close(1000, "bye") }]);
  assert.equal(client.state, State.CLOSED);
  transfer(client, server);
  assert.equal(server.state, State.CLOSED);
  assert.deepEqual([client.dataToSend(), server.dataToSend()], [[], []]);
  const [clientError, serverError] = [client.closeError, server.closeError];
  assert.ok(clientError instanceof ConnectionClosedOK);
  assert.ok(serverError instanceof ConnectionClosedOK);
  assert.deepEqual([clientError.rcvdThenSent, serverError.rcvdThenSent], [false, true]);
});

Deno.test("protocol: the server closes and both sides end with ConnectionClosedOK", () => {
  const { client, server } = openPair();
  server.sendClose(1001, "shutdown");
  transfer(server, client);
  transfer(client, server);
  assert.equal(server.closeExpected(), true);
  transfer(server, client);
  transfer(client, server);
  assert.deepEqual([client.state, server.state], [State.CLOSED, State.CLOSED]);
  assert.deepEqual(
    [client.closeError.code, client.closeError.rcvdThenSent, server.closeError.rcvdThenSent],
    [1001, true, false],
  );
  assert.ok(client.closeError instanceof ConnectionClosedOK);
  assert.ok(server.closeError instanceof ConnectionClosedOK);
});

Deno.test("protocol: client and server exchange messages through a negotiated extension", () => {
  const { client, server } = openPairWithFlip();
  assert.deepEqual([client.extensions, server.extensions], [
    [new FlipExtension()],
    [new FlipExtension()],
  ]);
  client.sendText("flip", false);
  client.sendContinuation("ped", true);
  const chunks = client.dataToSend();
  assert.equal(chunks[0][0], 0x40 | Opcode.TEXT);
  for (const chunk of chunks) server.receiveData(chunk);
  server.sendBinary(new Uint8Array([1, 2]));
  server.sendPing(utf8("p"));
  transfer(server, client);
  transfer(client, server);
  assert.deepEqual(server.eventsReceived(), [
    { type: "message", data: "flipped" },
    { type: "pong", data: utf8("p") },
  ]);
  assert.deepEqual(client.eventsReceived(), [
    { type: "message", data: new Uint8Array([1, 2]) },
    { type: "ping", data: utf8("p") },
  ]);
});

Deno.test("protocol: sendText and sendBinary pass encode options to extensions", () => {
  const seen: (boolean | undefined)[] = [];
  const server = openServer();
  server.extensions = [{
    name: "x-spy",
    rsvBits: 0,
    decode: (frame) => frame,
    encode: (frame, options) => {
      seen.push(options?.compress);
      return frame;
    },
  }];
  server.sendText("a", true, { compress: false });
  server.sendBinary(new Uint8Array(1), false, { compress: true });
  server.sendContinuation(new Uint8Array(1), false);
  server.sendContinuation(new Uint8Array(1), true);
  server.sendText("b");
  assert.deepEqual(seen, [false, true, true, true, undefined]);
});

Deno.test("protocol: the logger receives frame traces and state changes", () => {
  const lines: string[] = [];
  const logger: Logger = {
    debug: (message) => lines.push(message),
    info: () => {},
    warn: () => {},
    error: () => {},
  };
  const { client, server } = openPair({ logger }, { logger });
  client.sendText("hi");
  transfer(client, server);
  server.failConnection(1008, "no");
  transfer(server, client);
  assert.deepEqual(lines, [
    "> GET /chat HTTP/1.1",
    "< GET /chat HTTP/1.1",
    "> HTTP/1.1 101 Switching Protocols",
    "= connection is OPEN",
    "< HTTP/1.1 101 Switching Protocols",
    "= connection is OPEN",
    '> TEXT "hi" [2 bytes]',
    '< TEXT "hi" [2 bytes]',
    "! failing connection with code 1008: no",
    "> CLOSE 1008 (policy violation) no [4 bytes]",
    "= connection is CLOSING",
    "> EOF",
    "< CLOSE 1008 (policy violation) no [4 bytes]",
    "> CLOSE 1008 (policy violation) no [4 bytes]",
    "= connection is CLOSING",
    "< EOF",
    "= connection is CLOSED",
    "> EOF",
  ]);
});

// ---------------------------------------------------------------- Fuzz

/** A small, fast, seeded PRNG (mulberry32). */
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

const VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999];
const FUZZ_TEXTS = ["", "a", "hello", "é", "€uro", "😀", "mixed é€😀 text", "x".repeat(130)];

function randomBytes(random: () => number, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (random() * 256) | 0;
  return bytes;
}

function pick<T>(random: () => number, items: readonly T[]): T {
  return items[(random() * items.length) | 0];
}

/** A stream of valid frames, as the peer of a client (mask false) or a server (mask true) sends it. */
function validStream(random: () => number, mask: boolean): Uint8Array {
  const frames: Frame[] = [];
  const count = 1 + ((random() * 6) | 0);
  for (let i = 0; i < count; i++) {
    const kind = random();
    if (kind < 0.25) {
      frames.push(text(pick(random, FUZZ_TEXTS)));
    } else if (kind < 0.4) {
      const length = random() < 0.05 ? 70000 : random() < 0.2 ? 300 : (random() * 40) | 0;
      frames.push(binary(randomBytes(random, length)));
    } else if (kind < 0.6) {
      const bytes = utf8(pick(random, FUZZ_TEXTS) + pick(random, FUZZ_TEXTS));
      const cut = (random() * (bytes.length + 1)) | 0;
      frames.push(new Frame(Opcode.TEXT, bytes.slice(0, cut), { fin: false }));
      if (random() < 0.5) frames.push(new Frame(Opcode.PING, randomBytes(random, 3)));
      frames.push(cont(bytes.slice(cut)));
    } else if (kind < 0.7) {
      frames.push(binary(randomBytes(random, 5), false));
      frames.push(cont(randomBytes(random, 5), false));
      frames.push(cont(randomBytes(random, 2)));
    } else if (kind < 0.8) {
      frames.push(new Frame(Opcode.PING, randomBytes(random, (random() * 126) | 0)));
    } else if (kind < 0.9) {
      frames.push(new Frame(Opcode.PONG, randomBytes(random, (random() * 10) | 0)));
    } else {
      frames.push(closeFrame(pick(random, VALID_CODES), pick(random, FUZZ_TEXTS.slice(0, 7))));
    }
  }
  return concat(...frames.map((frame) => frame.serialize({ mask })));
}

function mutate(random: () => number, bytes: Uint8Array, mask: boolean): Uint8Array {
  const choice = random();
  if (choice < 0.1) return randomBytes(random, (random() * 64) | 0);
  if (choice < 0.45) {
    const out = bytes.slice();
    const flips = 1 + ((random() * 3) | 0);
    for (let i = 0; i < flips && out.length > 0; i++) {
      out[(random() * out.length) | 0] ^= 1 << ((random() * 8) | 0);
    }
    return out;
  }
  if (choice < 0.6) return bytes.slice(0, (random() * bytes.length) | 0);
  if (choice < 0.8) {
    const other = validStream(random, mask);
    const at = (random() * (bytes.length + 1)) | 0;
    const from = (random() * (other.length + 1)) | 0;
    return concat(bytes.subarray(0, at), other.subarray(from));
  }
  if (choice < 0.9) {
    const start = (random() * bytes.length) | 0;
    const end = start + ((random() * 8) | 0);
    return concat(bytes.subarray(0, start), bytes.subarray(end));
  }
  return bytes; // unchanged: valid streams must go through cleanly
}

function randomChunks(random: () => number, bytes: Uint8Array): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  let position = 0;
  while (position < bytes.length) {
    // Mostly small pieces; larger ones for large streams, to bound the number of calls.
    const size = random() < 0.3 ? 1 : 1 + ((random() * Math.max(40, bytes.length >> 4)) | 0);
    chunks.push(bytes.slice(position, position + size));
    position += size;
  }
  if (random() < 0.5) chunks.push(bytes.slice(position)); // an empty chunk too, sometimes
  return chunks;
}

/** Checks the invariants that must hold whatever the bytes received. */
function checkInvariants(protocol: Protocol, closesSent: { count: number }, label: string): void {
  assert.ok(
    protocol.state === State.OPEN || protocol.state === State.CLOSING ||
      protocol.state === State.CLOSED,
    `${label}: state ${protocol.state}`,
  );
  const failure = protocol.failure;
  if (failure !== undefined) {
    assert.ok(failure instanceof WebSocketError, `${label}: ${failure}`);
    assert.ok(failure instanceof ProtocolError || failure instanceof PayloadTooBig, label);
    assert.notEqual(protocol.state, State.OPEN, label);
  }
  const chunks = protocol.dataToSend();
  const reader = new FrameReader({ mask: protocol.isClient });
  chunks.forEach((chunk, index) => {
    if (chunk.length === 0) {
      assert.equal(index, chunks.length - 1, `${label}: EOF last`);
      assert.equal(protocol.isClient && !protocol.eofReceived, false, `${label}: client EOF`);
      return;
    }
    reader.feed(chunk.slice());
    for (let frame = reader.next(); frame !== undefined; frame = reader.next()) {
      assert.ok(frame.opcode === Opcode.PONG || frame.opcode === Opcode.CLOSE, label);
      if (frame.opcode === Opcode.CLOSE) {
        closesSent.count++;
        assert.equal(closesSent.count, 1, `${label}: one close frame`);
        if (frame.data.length !== 0) {
          const close = Close.parse(frame.data);
          assert.ok(isValidCloseCode(close.code), `${label}: code ${close.code}`);
          if (failure instanceof ProtocolError) assert.equal(close.code, failure.code, label);
          if (failure instanceof PayloadTooBig) assert.equal(close.code, 1009, label);
        }
      }
    }
  });
  assert.equal(reader.bufferedAmount, 0, `${label}: whole frames`);
  for (const event of protocol.eventsReceived()) {
    if (event.type === "message") {
      assert.ok(typeof event.data === "string" || event.data instanceof Uint8Array, label);
    }
  }
}

/** How often each outcome happened: a close code sent on failure, "closed" or "open". */
type Outcomes = Map<string, number>;

function outcome(protocol: Protocol): string {
  if (protocol.failure instanceof ProtocolError) return String(protocol.failure.code);
  if (protocol.failure instanceof PayloadTooBig) return "1009";
  return protocol.closeRcvd !== undefined ? "closed" : "open";
}

function fuzzOne(
  random: () => number,
  protocol: Protocol,
  bytes: Uint8Array,
  label: string,
  outcomes: Outcomes,
): void {
  const closesSent = { count: 0 };
  try {
    for (const chunk of randomChunks(random, bytes)) {
      protocol.receiveData(chunk);
      checkInvariants(protocol, closesSent, label);
      if (random() < 0.01 && protocol.state === State.OPEN) {
        protocol.sendClose(1000);
        closesSent.count++;
        protocol.dataToSend();
      }
    }
    if (random() < 0.5) {
      protocol.receiveEof();
      checkInvariants(protocol, closesSent, label);
      assert.equal(protocol.state, State.CLOSED, label);
      const error = protocol.closeError;
      assert.ok(error instanceof ConnectionClosedOK || error instanceof ConnectionClosedError);
    }
    const key = outcome(protocol);
    outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
  } catch (error) {
    if (error instanceof assert.AssertionError) throw error;
    assert.fail(`${label}: unexpected ${error instanceof Error ? error.stack : error}`);
  }
}

Deno.test("protocol: random and mutated frame streams never break the state machine", () => {
  const random = prng(0x5eed);
  const outcomes: Outcomes = new Map();
  for (let i = 0; i < 3000; i++) {
    const maxSize = random() < 0.3 ? 64 : undefined;
    const server = openServer({ maxSize });
    const toServer = mutate(random, validStream(random, true), true);
    fuzzOne(random, server, toServer, `server #${i}`, outcomes);
    const client = openClient({ maxSize });
    const toClient = mutate(random, validStream(random, false), false);
    fuzzOne(random, client, toClient, `client #${i}`, outcomes);
  }
  // The streams reach every kind of ending, so the invariants were checked on each.
  assert.deepEqual([...outcomes.keys()].sort(), ["1002", "1007", "1009", "closed", "open"]);
  for (const [key, count] of outcomes) assert.ok(count >= 20, `${key}: ${count}`);
});

Deno.test("protocol: mutated handshakes only fail with named errors", () => {
  const random = prng(0xcafe);
  const request = requestBytes({ "Sec-WebSocket-Protocol": "chat", Origin: "https://a.example" });
  for (let i = 0; i < 1000; i++) {
    const server = new ServerProtocol({
      subprotocols: ["chat"],
      origins: ["https://a.example"],
      extensions: [new FlipServerFactory()],
      httpLimits: { maxNumHeaders: 16, maxLineLength: 256 },
    });
    const bytes = random() < 0.9 ? mutate(random, request, true) : request;
    try {
      for (const chunk of randomChunks(random, bytes)) server.receiveData(chunk);
      for (const event of server.eventsReceived()) {
        assert.ok(event.type === "request");
        const response = server.accept(event.request);
        assert.ok([101, 400, 403, 426].includes(response.statusCode), `${response.statusCode}`);
        server.sendResponse(response);
      }
      if (server.handshakeError !== undefined) {
        assert.ok(server.handshakeError instanceof WebSocketError, `${server.handshakeError}`);
      }
      server.dataToSend();
      server.receiveEof();
    } catch (error) {
      if (error instanceof assert.AssertionError) throw error;
      assert.fail(`request #${i}: unexpected ${error instanceof Error ? error.stack : error}`);
    }
  }
  for (let i = 0; i < 1000; i++) {
    const { client, key } = startClient({
      subprotocols: ["chat"],
      extensions: [new FlipClientFactory()],
    });
    const response = responseBytes(key, {
      "Sec-WebSocket-Protocol": "chat",
      "Sec-WebSocket-Extensions": "x-flip",
    });
    const bytes = random() < 0.9 ? mutate(random, response, false) : response;
    try {
      for (const chunk of randomChunks(random, bytes)) client.receiveData(chunk);
      client.receiveEof();
      const events: ProtocolEvent[] = client.eventsReceived();
      assert.ok(events.length <= 1 || events[0].type === "response");
      if (client.handshakeError !== undefined) {
        assert.ok(client.handshakeError instanceof WebSocketError, `${client.handshakeError}`);
      }
      assert.equal(client.state, State.CLOSED);
    } catch (error) {
      if (error instanceof assert.AssertionError) throw error;
      assert.fail(`response #${i}: unexpected ${error instanceof Error ? error.stack : error}`);
    }
  }
});

// ---------------------------------------------------------------- Streaming messages

Deno.test("protocol: a streamed text message comes as fragments, a split character whole in the next", () => {
  const server = openServer();
  server.streamMessage();
  const bytes = utf8("café ok"); // é is 0xc3 0xa9
  feed(server, new Frame(Opcode.TEXT, bytes.subarray(0, 4), { fin: false }));
  feed(server, cont(bytes.subarray(4, 6), false));
  feed(server, cont(bytes.subarray(6)));
  feed(server, text("next"));
  assert.deepEqual(server.eventsReceived(), [
    { type: "fragment", data: "caf", fin: false },
    { type: "fragment", data: "é ", fin: false },
    { type: "fragment", data: "ok", fin: true },
    { type: "message", data: "next" },
  ]);
});

Deno.test("protocol: a streamed binary message comes as views of the bytes received", () => {
  const client = openClient();
  client.streamMessage();
  const chunk = concat(unmasked(binary(new Uint8Array([1, 2]), false)), unmasked(cont(utf8("x"))));
  client.receiveData(chunk);
  const events = client.eventsReceived();
  assert.deepEqual(events, [
    { type: "fragment", data: new Uint8Array([1, 2]), fin: false },
    { type: "fragment", data: utf8("x"), fin: true },
  ]);
  assert.equal((events[0] as { data: Uint8Array }).data.buffer, chunk.buffer);
});

Deno.test("protocol: an unfragmented streamed message is one fragment", () => {
  const server = openServer();
  server.streamMessage();
  feed(server, binary(new Uint8Array([7])));
  assert.deepEqual(server.eventsReceived(), [
    { type: "fragment", data: new Uint8Array([7]), fin: true },
  ]);
});

Deno.test("protocol: streaming a half-received message gives what came so far first", () => {
  const server = openServer();
  const bytes = utf8("né!");
  feed(server, new Frame(Opcode.TEXT, bytes.subarray(0, 2), { fin: false }));
  server.streamMessage();
  feed(server, cont(bytes.subarray(2)));
  assert.deepEqual(server.eventsReceived(), [
    { type: "fragment", data: "n", fin: false },
    { type: "fragment", data: "é!", fin: true },
  ]);
});

Deno.test("protocol: streamed text frames arriving in pieces keep their text, whenever streamMessage is called", () => {
  const bytes = utf8("né€😀 done");
  const wire = concat(
    masked(new Frame(Opcode.TEXT, bytes.subarray(0, 2), { fin: false })), // "n" and half of "é"
    masked(cont(bytes.subarray(2))),
  );
  const outcomes: ProtocolEvent[][] = [];
  const expected: ProtocolEvent[][] = [];
  // streamMessage() before the first byte (-1) or after any byte; the wire one byte at a time.
  for (let at = -1; at < wire.length; at++) {
    const server = openServer();
    if (at === -1) server.streamMessage();
    const events: ProtocolEvent[] = [];
    for (let i = 0; i < wire.length; i++) {
      server.receiveData(wire.slice(i, i + 1));
      if (i === at) server.streamMessage();
      events.push(...server.eventsReceived());
    }
    outcomes.push(events);
    expected.push(
      at === wire.length - 1 ? [{ type: "message", data: "né€😀 done" }] : [
        { type: "fragment", data: "n", fin: false },
        { type: "fragment", data: "é€😀 done", fin: true },
      ],
    );
  }
  assert.deepEqual(outcomes, expected);
});

Deno.test("protocol: invalid UTF-8 in a streamed message fails with 1007 at its fragment", () => {
  const server = openServer();
  server.streamMessage();
  feed(server, new Frame(Opcode.TEXT, utf8("valid "), { fin: false }));
  feed(server, cont(new Uint8Array([0xe2, 0x82]), false));
  assert.deepEqual(server.eventsReceived(), [
    { type: "fragment", data: "valid ", fin: false },
    { type: "fragment", data: "", fin: false },
  ]);
  feed(server, cont(new Uint8Array([0x41]), false));
  assertFailed(server, 1007, "invalid UTF-8 in text message", ProtocolError);
});

Deno.test("protocol: a streamed message may exceed maxSize up to the limit of its call", () => {
  const server = openServer({ maxSize: 4 });
  server.streamMessage(Infinity);
  feed(server, binary(new Uint8Array(5), false));
  feed(server, cont(new Uint8Array(5)));
  assert.deepEqual(server.eventsReceived(), [
    { type: "fragment", data: new Uint8Array(5), fin: false },
    { type: "fragment", data: new Uint8Array(5), fin: true },
  ]);
  assert.equal(server.state, State.OPEN);
});

Deno.test("protocol: a streamed message fails with 1009 at the fragment that crosses its limit", () => {
  const server = openServer({ maxSize: 100 });
  server.streamMessage(10);
  feed(server, binary(new Uint8Array(6), false));
  feed(server, cont(new Uint8Array(4), false));
  assert.equal(server.eventsReceived().length, 2);
  feed(server, cont(new Uint8Array(1)));
  assertFailed(
    server,
    1009,
    "message too big: 11 bytes exceeds maxSize of 10 bytes",
    PayloadTooBig,
  );
});

Deno.test("protocol: an extension decodes one frame of a streamed message into at most maxSize", () => {
  const server = openServer({ maxSize: 4 });
  server.extensions = [doubling];
  server.streamMessage(Infinity);
  // The message may pass maxSize: 4 + 4 bytes, each frame within it once decoded.
  feed(server, binary(new Uint8Array(2), false));
  feed(server, cont(new Uint8Array(2), false));
  assert.deepEqual(server.eventsReceived(), [
    { type: "fragment", data: new Uint8Array(4), fin: false },
    { type: "fragment", data: new Uint8Array(4), fin: false },
  ]);
  // 3 bytes on the wire decode to 6: over maxSize in one frame.
  feed(server, cont(new Uint8Array(3)));
  assertFailed(
    server,
    1009,
    "message too big: 6 bytes in one frame of a streamed message exceeds maxSize of 4 bytes",
    PayloadTooBig,
  );
});

Deno.test("protocol: after a streamed message, messages over maxSize fail again", () => {
  const server = openServer({ maxSize: 4 });
  server.streamMessage(Infinity);
  feed(server, binary(new Uint8Array(5)));
  assert.deepEqual(server.eventsReceived(), [
    { type: "fragment", data: new Uint8Array(5), fin: true },
  ]);
  feed(server, binary(new Uint8Array(5)));
  assertFailed(
    server,
    1009,
    "message too big: 5 bytes exceeds maxSize of 4 bytes",
    PayloadTooBig,
  );
});

Deno.test("protocol: streamMessage while a message is streamed throws InvalidState", () => {
  const server = openServer();
  server.streamMessage();
  assert.throws(() => server.streamMessage(), {
    name: "InvalidState",
    message: "cannot stream a message: a message is being streamed already",
  });
});

// ---------------------------------------------------------------- Counters

Deno.test("protocol: counters count messages, payload bytes and wire bytes both ways", () => {
  const server = openServer();
  const handshake = { ...server.counters };
  feed(server, text("héllo")); // 6 bytes of UTF-8 in a 6 + 6 byte masked frame
  feed(server, binary(new Uint8Array(3), false));
  feed(server, cont(new Uint8Array(2)));
  server.sendText("hi");
  server.sendBinary(new Uint8Array(200));
  server.sendPing(utf8("p"));
  const after = server.counters;
  assert.deepEqual({
    messagesReceived: after.messagesReceived,
    bytesReceived: after.bytesReceived,
    wireBytesReceived: after.wireBytesReceived - handshake.wireBytesReceived,
    messagesSent: after.messagesSent,
    bytesSent: after.bytesSent,
    wireBytesSent: after.wireBytesSent - handshake.wireBytesSent,
  }, {
    messagesReceived: 2,
    bytesReceived: 11,
    wireBytesReceived: (6 + 6) + (6 + 3) + (6 + 2),
    messagesSent: 2,
    bytesSent: 202,
    wireBytesSent: (2 + 2) + (4 + 200) + (2 + 1),
  });
  assert.ok(handshake.wireBytesReceived > 100 && handshake.wireBytesSent > 100);
});

Deno.test("protocol: sendSerialized counts the payload length it is given", () => {
  const server = openServer();
  const before = { ...server.counters };
  const bytes = unmasked(text("shared"));
  server.sendSerialized(bytes, 6);
  assert.deepEqual(
    [
      server.counters.messagesSent - before.messagesSent,
      server.counters.bytesSent - before.bytesSent,
      server.counters.wireBytesSent - before.wireBytesSent,
    ],
    [1, 6, bytes.length],
  );
});
