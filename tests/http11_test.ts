import assert from "node:assert/strict";
import {
  InvalidHeaderFormat,
  InvalidHeaderValue,
  InvalidMessage,
  InvalidState,
  SecurityError,
} from "../errors.ts";
import { Headers } from "../headers.ts";
import { type ParseResult, Request, RequestParser, Response, ResponseParser } from "../http11.ts";

// One byte per character, so tests can write any byte as \xNN.
function bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (char) => char.charCodeAt(0));
}

function text(data: Uint8Array | undefined): string | undefined {
  return data === undefined ? undefined : String.fromCharCode(...data);
}

// mulberry32: a small seeded PRNG, so random splits are reproducible.
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Feeds `data` in chunks cut at random points. When the message completes
// before the last chunk, the chunks not fed are added to `rest`.
function feedSplit<T>(
  feed: (chunk: Uint8Array) => ParseResult<T> | undefined,
  data: Uint8Array,
  random: () => number,
): ParseResult<T> | undefined {
  const cuts = new Set<number>();
  const count = Math.floor(random() * 8);
  for (let i = 0; i < count; i++) cuts.add(Math.floor(random() * data.length));
  const points = [0, ...[...cuts].sort((a, b) => a - b), data.length];
  let result: ParseResult<T> | undefined;
  for (let i = 0; i + 1 < points.length; i++) {
    result = feed(data.slice(points[i], points[i + 1]));
    if (result !== undefined && i + 2 < points.length) {
      // Bytes after the message that were not fed yet belong to `rest`.
      return {
        message: result.message,
        rest: new Uint8Array([...result.rest, ...data.slice(points[i + 1])]),
      };
    }
  }
  return result;
}

const REQUEST = "GET /chat?room=1 HTTP/1.1\r\n" +
  "Host: server.example.com\r\n" +
  "Upgrade: websocket\r\n" +
  "Connection: Upgrade\r\n" +
  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
  "Sec-WebSocket-Version: 13\r\n" +
  "\r\n";

const RESPONSE_101 = "HTTP/1.1 101 Switching Protocols\r\n" +
  "Upgrade: websocket\r\n" +
  "Connection: Upgrade\r\n" +
  "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" +
  "\r\n";

function parseRequest(data: string): ParseResult<Request> | undefined {
  return new RequestParser().feed(bytes(data));
}

function parseResponse(data: string): ParseResult<Response> | undefined {
  return new ResponseParser().feed(bytes(data));
}

// ---------------------------------------------------------------------------
// Request

Deno.test("http11: parses a handshake request", () => {
  const result = parseRequest(REQUEST)!;
  assert.equal(result.message.path, "/chat?room=1");
  assert.deepEqual([...result.message.headers.rawItems()], [
    ["Host", "server.example.com"],
    ["Upgrade", "websocket"],
    ["Connection", "Upgrade"],
    ["Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="],
    ["Sec-WebSocket-Version", "13"],
  ]);
  assert.equal(result.message.exception, undefined);
  assert.deepEqual(result.rest, new Uint8Array());
});

Deno.test("http11: request parser returns the bytes after the request", () => {
  const result = parseRequest(REQUEST + "\x81\x85extra")!;
  assert.deepEqual(result.rest, bytes("\x81\x85extra"));
});

Deno.test("http11: request parser returns undefined until the request is complete", () => {
  const parser = new RequestParser();
  assert.equal(parser.feed(bytes("GET / HTTP/1.1\r\nHost: a\r\n")), undefined);
  assert.equal(parser.feed(bytes("\r")), undefined);
  assert.equal(parser.feed(new Uint8Array()), undefined);
  const result = parser.feed(bytes("\n"))!;
  assert.equal(result.message.path, "/");
  assert.equal(result.message.headers.get("host"), "a");
});

Deno.test("http11: request parser keeps a copy of an incomplete request's bytes", () => {
  // The caller reads into one buffer again and again, as a read loop does.
  const buffer = new Uint8Array(64);
  const parser = new RequestParser();
  const feedThrough = (text: string) => {
    buffer.set(bytes(text));
    const result = parser.feed(buffer.subarray(0, text.length));
    buffer.fill(0x58); // "X": what the next read would overwrite
    return result;
  };
  assert.equal(feedThrough("GET /a HTTP/1.1\r\nHo"), undefined);
  assert.equal(feedThrough("st: b\r"), undefined);
  const result = feedThrough("\n\r\nrest")!;
  assert.equal(result.message.path, "/a");
  assert.deepEqual([...result.message.headers.rawItems()], [["Host", "b"]]);
  assert.equal(text(result.rest), "rest");
});

Deno.test("http11: parses a request without headers", () => {
  const result = parseRequest("GET / HTTP/1.1\r\n\r\n")!;
  assert.equal(result.message.path, "/");
  assert.equal(result.message.headers.size, 0);
});

Deno.test("http11: header values are stripped of OWS", () => {
  const result = parseRequest(
    "GET / HTTP/1.1\r\nHost: \t a b \t\r\nX-Empty:\r\nX-Blank:  \r\n\r\n",
  )!;
  assert.deepEqual([...result.message.headers.rawItems()], [
    ["Host", "a b"],
    ["X-Empty", ""],
    ["X-Blank", ""],
  ]);
});

Deno.test("http11: header bytes are decoded as ISO-8859-1", () => {
  const result = parseRequest("GET / HTTP/1.1\r\nX-Name: caf\xe9 \x80\xff\r\n\r\n")!;
  assert.equal(result.message.headers.get("x-name"), "caf\u00e9 \u0080\u00ff");
});

Deno.test("http11: repeated request headers keep every value", () => {
  const result = parseRequest("GET / HTTP/1.1\r\nVia: a\r\nvia: b\r\n\r\n")!;
  assert.deepEqual(result.message.headers.getAll("Via"), ["a", "b"]);
});

Deno.test("http11: request with Content-Length 0 is accepted", () => {
  const result = parseRequest("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")!;
  assert.equal(result.message.headers.get("content-length"), "0");
});

Deno.test("http11: request with a body is rejected", () => {
  assert.throws(
    () => parseRequest("GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
    InvalidMessage,
  );
  assert.throws(
    () => parseRequest("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    InvalidMessage,
  );
});

Deno.test("http11: request with an invalid Content-Length is rejected", () => {
  assert.throws(
    () => parseRequest("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
    InvalidHeaderValue,
  );
  assert.throws(
    () => parseRequest("GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n"),
    InvalidHeaderValue,
  );
});

Deno.test("http11: malformed request lines are rejected", () => {
  for (
    const line of [
      "GET /",
      "GET / HTTP/1.1 x",
      "GET  / HTTP/1.1",
      "",
      "GET /\x01 HTTP/1.1",
      "GET / HTTP/1.1\r",
      "GET /\xe9 HTTP/1.1",
    ]
  ) {
    assert.throws(() => parseRequest(`${line}\r\n\r\n`), InvalidMessage, JSON.stringify(line));
  }
});

Deno.test("http11: request line error says what was read", () => {
  assert.throws(() => parseRequest("GET /\r\n"), {
    name: "InvalidMessage",
    message: "invalid HTTP request line: GET /",
  });
});

Deno.test("http11: request line is checked before the headers arrive", () => {
  assert.throws(() => new RequestParser().feed(bytes("GET /\r\n")), InvalidMessage);
});

Deno.test("http11: long request lines are shortened in error messages", () => {
  const target = "/" + "a".repeat(300);
  assert.throws(() => parseRequest(`GET ${target}\r\n`), {
    message: `invalid HTTP request line: GET ${target.slice(0, 196)}...`,
  });
});

Deno.test("http11: methods other than GET are rejected", () => {
  assert.throws(() => parseRequest("POST / HTTP/1.1\r\n\r\n"), {
    name: "InvalidMessage",
    message: "unsupported HTTP method; expected GET: POST / HTTP/1.1",
  });
  assert.throws(() => parseRequest("get / HTTP/1.1\r\n\r\n"), InvalidMessage);
});

Deno.test("http11: request versions other than HTTP/1.1 are rejected", () => {
  assert.throws(() => parseRequest("GET / HTTP/1.0\r\n\r\n"), {
    name: "InvalidMessage",
    message: "unsupported HTTP version; expected HTTP/1.1: GET / HTTP/1.0",
  });
  assert.throws(() => parseRequest("GET / HTTP/2\r\n\r\n"), InvalidMessage);
});

Deno.test("http11: bare LF line endings are rejected", () => {
  assert.throws(() => parseRequest("GET / HTTP/1.1\n\n"), InvalidMessage);
  assert.throws(() => parseRequest("GET / HTTP/1.1\r\nHost: a\n\r\n"), InvalidMessage);
  assert.throws(() => parseRequest("GET / HTTP/1.1\r\nHost: a\r\n\n"), InvalidMessage);
  assert.throws(() => parseRequest("GET / HTTP/1.1\r\n\n"), {
    message: "bare LF at end of HTTP header line: ",
  });
});

Deno.test("http11: obs-fold is rejected", () => {
  assert.throws(() => parseRequest("GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n"), {
    name: "InvalidMessage",
    message: "obsolete line folding in HTTP headers:  b",
  });
  assert.throws(() => parseRequest("GET / HTTP/1.1\r\n\tX-A: a\r\n\r\n"), InvalidMessage);
});

Deno.test("http11: header lines without a colon are rejected", () => {
  assert.throws(() => parseRequest("GET / HTTP/1.1\r\nHost\r\n\r\n"), {
    name: "InvalidMessage",
    message: "invalid HTTP header line: Host",
  });
});

Deno.test("http11: invalid header names are rejected", () => {
  for (const line of ["Host : a", ": a", "Ho st: a", "H\xe9: a", "H\rx: a"]) {
    assert.throws(
      () => parseRequest(`GET / HTTP/1.1\r\n${line}\r\n\r\n`),
      InvalidHeaderFormat,
      JSON.stringify(line),
    );
  }
});

Deno.test("http11: invalid header values are rejected", () => {
  assert.throws(() => parseRequest("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n"), InvalidHeaderValue);
  assert.throws(() => parseRequest("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"), InvalidHeaderValue);
});

Deno.test("http11: request parser rethrows its error when fed again", () => {
  const parser = new RequestParser();
  let first: unknown;
  try {
    parser.feed(bytes("POST / HTTP/1.1\r\n"));
  } catch (error) {
    first = error;
  }
  assert.ok(first instanceof InvalidMessage);
  assert.throws(() => parser.feed(bytes("\r\n")), (error) => error === first);
});

Deno.test("http11: request parser refuses data after returning a request", () => {
  const parser = new RequestParser();
  parser.feed(bytes(REQUEST));
  assert.throws(() => parser.feed(bytes("x")), InvalidState);
  assert.throws(() => parser.feedEof(), InvalidState);
});

Deno.test("http11: request parser end of stream says what was being read", () => {
  const parser = new RequestParser();
  assert.throws(() => parser.feedEof(), {
    name: "InvalidMessage",
    message: "connection closed while reading HTTP request line",
  });
  const headersParser = new RequestParser();
  headersParser.feed(bytes("GET / HTTP/1.1\r\nHost"));
  assert.throws(() => headersParser.feedEof(), {
    name: "InvalidMessage",
    message: "connection closed while reading HTTP request headers",
  });
});

Deno.test("http11: Request.parse parses a complete request", () => {
  const request = Request.parse(bytes(REQUEST));
  assert.equal(request.path, "/chat?room=1");
  assert.equal(request.headers.get("Sec-WebSocket-Version"), "13");
});

Deno.test("http11: Request.parse rejects incomplete input and trailing bytes", () => {
  assert.throws(() => Request.parse(bytes("GET / HTTP/1.1\r\n")), {
    name: "InvalidMessage",
    message: "incomplete HTTP request",
  });
  assert.throws(() => Request.parse(bytes(REQUEST + "xy")), {
    name: "InvalidMessage",
    message: "2 unexpected bytes after HTTP request",
  });
});

Deno.test("http11: Request.serialize writes the request line and headers", () => {
  const headers = new Headers([["Host", "example.com"], ["Upgrade", "websocket"]]);
  const request = new Request("/chat?room=1", headers);
  assert.equal(
    text(request.serialize()),
    "GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\r\n",
  );
});

Deno.test("http11: a serialized request parses back to the same request", () => {
  const request = Request.parse(bytes(REQUEST));
  assert.equal(text(request.serialize()), REQUEST);
});

Deno.test("http11: Request.serialize rejects invalid targets", () => {
  for (const path of ["", "/a b", "/a\r\nX: y", "/é"]) {
    assert.throws(() => new Request(path, new Headers()).serialize(), InvalidMessage, path);
  }
});

Deno.test("http11: Request keeps an exception", () => {
  const error = new Error("boom");
  const request = new Request("/", new Headers(), error);
  assert.equal(request.exception, error);
});

// ---------------------------------------------------------------------------
// Response

Deno.test("http11: parses a 101 response and returns the frames after it", () => {
  const result = parseResponse(RESPONSE_101 + "\x81\x02hi")!;
  assert.equal(result.message.statusCode, 101);
  assert.equal(result.message.reasonPhrase, "Switching Protocols");
  assert.equal(result.message.headers.get("sec-websocket-accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  assert.equal(result.message.body, undefined);
  assert.deepEqual(result.rest, bytes("\x81\x02hi"));
});

Deno.test("http11: a 101 response ignores Content-Length and Transfer-Encoding", () => {
  const result = parseResponse(
    "HTTP/1.1 101 Switching Protocols\r\nContent-Length: 4\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
  )!;
  assert.equal(result.message.body, undefined);
  assert.deepEqual(result.rest, bytes("abcd"));
});

Deno.test("http11: 1xx, 204 and 304 responses have no body", () => {
  for (const status of ["100 Continue", "204 No Content", "304 Not Modified"]) {
    const result = parseResponse(`HTTP/1.1 ${status}\r\nContent-Length: 3\r\n\r\nabc`)!;
    assert.equal(result.message.body, undefined, status);
    assert.deepEqual(result.rest, bytes("abc"), status);
  }
});

Deno.test("http11: parses a body by Content-Length", () => {
  const result = parseResponse("HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!next")!;
  assert.equal(result.message.statusCode, 404);
  assert.equal(text(result.message.body), "nope!");
  assert.deepEqual(result.rest, bytes("next"));
});

Deno.test("http11: Content-Length 0 gives an empty body", () => {
  const result = parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")!;
  assert.deepEqual(result.message.body, new Uint8Array());
});

Deno.test("http11: repeated identical Content-Length is accepted", () => {
  const result = parseResponse(
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
  )!;
  assert.equal(text(result.message.body), "ok");
});

Deno.test("http11: invalid Content-Length is rejected", () => {
  for (const value of ["-1", "1.0", "0x10", "", "1, 1", "abc"]) {
    assert.throws(
      () => parseResponse(`HTTP/1.1 200 OK\r\nContent-Length: ${value}\r\n\r\n`),
      InvalidHeaderValue,
      value,
    );
  }
  assert.throws(
    () => parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
    InvalidHeaderValue,
  );
});

Deno.test("http11: Content-Length body waits for all its bytes", () => {
  const parser = new ResponseParser();
  assert.equal(parser.feed(bytes("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")), undefined);
  assert.equal(parser.feed(bytes("cd")), undefined);
  const result = parser.feed(bytes("ef\x81"))!;
  assert.equal(text(result.message.body), "abcdef");
  assert.deepEqual(result.rest, bytes("\x81"));
});

Deno.test("http11: decodes a chunked body", () => {
  const result = parseResponse(
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
      "5\r\nhello\r\n1;name=value\r\n \r\nA \r\n0123456789\r\n0\r\n\r\nrest",
  )!;
  assert.equal(text(result.message.body), "hello 0123456789");
  assert.deepEqual(result.rest, bytes("rest"));
});

Deno.test("http11: chunked body accepts any case and trailers, which are dropped", () => {
  const result = parseResponse(
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n" +
      "3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
  )!;
  assert.equal(text(result.message.body), "abc");
  assert.equal(result.message.headers.has("x-trailer"), false);
});

Deno.test("http11: an empty chunked body", () => {
  const result = parseResponse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n000\r\n\r\n")!;
  assert.deepEqual(result.message.body, new Uint8Array());
});

Deno.test("http11: invalid chunk size lines are rejected", () => {
  for (const line of ["", "x", "-1", "0x5", "5 x", " 5"]) {
    assert.throws(
      () => parseResponse(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${line}\r\n`),
      InvalidMessage,
      line,
    );
  }
});

Deno.test("http11: chunk data must end with CRLF", () => {
  assert.throws(
    () => parseResponse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n"),
    {
      name: "InvalidMessage",
      message: "expected CRLF after chunk data, got: d",
    },
  );
});

Deno.test("http11: invalid trailers are rejected", () => {
  assert.throws(
    () =>
      parseResponse(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nBad Trailer: 1\r\n\r\n",
      ),
    InvalidHeaderFormat,
  );
});

Deno.test("http11: transfer codings other than chunked are rejected", () => {
  for (const value of ["gzip", "gzip, chunked", "chunked, chunked", "chunked;x=1", "", "@"]) {
    assert.throws(
      () => parseResponse(`HTTP/1.1 200 OK\r\nTransfer-Encoding: ${value}\r\n\r\n`),
      InvalidHeaderValue,
      value,
    );
  }
});

Deno.test("http11: Transfer-Encoding with Content-Length is rejected", () => {
  assert.throws(
    () =>
      parseResponse(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
      ),
    InvalidMessage,
  );
});

Deno.test("http11: a body without length runs to the end of the connection", () => {
  const parser = new ResponseParser();
  assert.equal(parser.feed(bytes("HTTP/1.1 500 Internal Server Error\r\n\r\nfail")), undefined);
  assert.equal(parser.feed(bytes("ure")), undefined);
  const result = parser.feedEof();
  assert.equal(result.message.statusCode, 500);
  assert.equal(text(result.message.body), "failure");
  assert.deepEqual(result.rest, new Uint8Array());
});

Deno.test("http11: an empty body that runs to the end of the connection", () => {
  const parser = new ResponseParser();
  assert.equal(parser.feed(bytes("HTTP/1.1 200 OK\r\n\r\n")), undefined);
  assert.deepEqual(parser.feedEof().message.body, new Uint8Array());
});

Deno.test("http11: end of stream during a response says what was being read", () => {
  const cases: [string, string][] = [
    ["", "status line"],
    ["HTTP/1.1 200", "status line"],
    ["HTTP/1.1 200 OK\r\nA: b", "response headers"],
    ["HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab", "response body"],
    ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", "response body"],
  ];
  for (const [data, where] of cases) {
    const parser = new ResponseParser();
    parser.feed(bytes(data));
    assert.throws(() => parser.feedEof(), {
      name: "InvalidMessage",
      message: `connection closed while reading HTTP ${where}`,
    });
  }
});

Deno.test("http11: response parser refuses data after returning a response", () => {
  const parser = new ResponseParser();
  parser.feed(bytes(RESPONSE_101));
  assert.throws(() => parser.feed(bytes("x")), InvalidState);
  assert.throws(() => parser.feedEof(), InvalidState);
});

Deno.test("http11: response parser rethrows its error at end of stream", () => {
  const parser = new ResponseParser();
  assert.throws(() => parser.feed(bytes("HTTP/1.0 200 OK\r\n")), InvalidMessage);
  assert.throws(() => parser.feedEof(), {
    message: "unsupported HTTP version; expected HTTP/1.1: HTTP/1.0 200 OK",
  });
});

Deno.test("http11: reason phrase may be empty or missing", () => {
  assert.equal(parseResponse("HTTP/1.1 204 \r\n\r\n")!.message.reasonPhrase, "");
  assert.equal(parseResponse("HTTP/1.1 204\r\n\r\n")!.message.reasonPhrase, "");
});

Deno.test("http11: reason phrase keeps spaces, HTAB and ISO-8859-1", () => {
  const result = parseResponse("HTTP/1.1 204 No  Content\there \xe9\r\n\r\n")!;
  assert.equal(result.message.reasonPhrase, "No  Content\there \u00e9");
});

Deno.test("http11: malformed status lines are rejected", () => {
  for (
    const line of [
      "HTTP/1.1",
      "HTTP/1.1 20 OK",
      "HTTP/1.1 2000 OK",
      "HTTP/1.1 099 OK",
      "HTTP/1.1 600 OK",
      "HTTP/1.1 abc OK",
      "HTTP/1.1  200 OK",
      "HTTP/1.1 200 O\x01K",
      "HTTP/1.1 200 OK\x7f",
      "HTTP/1.0 200 OK",
      "http/1.1 200 OK",
      "",
    ]
  ) {
    assert.throws(() => parseResponse(`${line}\r\n\r\n`), InvalidMessage, JSON.stringify(line));
  }
});

Deno.test("http11: status line error says what was read", () => {
  assert.throws(() => parseResponse("HTTP/1.1 20 OK\r\n"), {
    name: "InvalidMessage",
    message: "invalid HTTP status code: HTTP/1.1 20 OK",
  });
  assert.throws(() => parseResponse("HTTP/1.1\r\n"), {
    name: "InvalidMessage",
    message: "invalid HTTP status line: HTTP/1.1",
  });
  assert.throws(() => parseResponse("HTTP/1.1 200 \x01\r\n"), {
    name: "InvalidMessage",
    message: "invalid HTTP reason phrase: HTTP/1.1 200 \x01",
  });
});

Deno.test("http11: invalid response header lines are rejected", () => {
  assert.throws(() => parseResponse("HTTP/1.1 200 OK\r\nNo colon\r\n\r\n"), InvalidMessage);
  assert.throws(() => parseResponse("HTTP/1.1 200 OK\r\nA b: c\r\n\r\n"), InvalidHeaderFormat);
  assert.throws(() => parseResponse("HTTP/1.1 200 OK\r\nA: \0\r\n\r\n"), InvalidHeaderValue);
});

Deno.test("http11: Response.parse parses a complete response", () => {
  const response = Response.parse(bytes("HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno"));
  assert.equal(response.statusCode, 403);
  assert.equal(text(response.body), "no");
});

Deno.test("http11: Response.parse reads a body to the end of the input", () => {
  const response = Response.parse(bytes("HTTP/1.1 403 Forbidden\r\n\r\nno"));
  assert.equal(text(response.body), "no");
});

Deno.test("http11: Response.parse rejects incomplete input and trailing bytes", () => {
  assert.throws(() => Response.parse(bytes("HTTP/1.1 101 Switching")), InvalidMessage);
  assert.throws(() => Response.parse(bytes(RESPONSE_101 + "\x81")), {
    name: "InvalidMessage",
    message: "1 unexpected bytes after HTTP response",
  });
});

Deno.test("http11: Response.serialize writes status line, headers and body", () => {
  const body = bytes("Forbidden\n");
  const response = new Response(403, "Forbidden", new Headers({ "Content-Length": "10" }), body);
  assert.equal(
    text(response.serialize()),
    "HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\nForbidden\n",
  );
});

Deno.test("http11: Response.serialize without body", () => {
  const response = new Response(101, "Switching Protocols", new Headers({ Upgrade: "websocket" }));
  assert.equal(
    text(response.serialize()),
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
  );
});

Deno.test("http11: Response.serialize encodes the reason phrase as ISO-8859-1", () => {
  const response = new Response(200, "Café", new Headers());
  assert.deepEqual(response.serialize(), bytes("HTTP/1.1 200 Caf\xe9\r\n\r\n"));
});

Deno.test("http11: a serialized response parses back to the same response", () => {
  const body = bytes("\x00\xffbody");
  const headers = new Headers([["Content-Length", "6"], ["X-A", "é"]]);
  const parsed = Response.parse(new Response(418, "I'm a teapot", headers, body).serialize());
  assert.equal(parsed.statusCode, 418);
  assert.equal(parsed.reasonPhrase, "I'm a teapot");
  assert.equal(parsed.headers.equals(headers), true);
  assert.deepEqual(parsed.body, body);
});

Deno.test("http11: Response.serialize rejects invalid status codes", () => {
  for (const code of [99, 600, 200.5, NaN]) {
    assert.throws(() => new Response(code, "OK", new Headers()).serialize(), InvalidMessage);
  }
});

Deno.test("http11: Response.serialize rejects invalid reason phrases", () => {
  for (const reason of ["O\r\nK", "→", "a\0"]) {
    assert.throws(() => new Response(200, reason, new Headers()).serialize(), InvalidMessage);
  }
});

Deno.test("http11: Response keeps body and exception", () => {
  const error = new Error("boom");
  const body = bytes("x");
  const response = new Response(500, "Error", new Headers(), body, error);
  assert.equal(response.body, body);
  assert.equal(response.exception, error);
});

// ---------------------------------------------------------------------------
// Limits

function manyHeaders(count: number): string {
  let text = "";
  for (let i = 0; i < count; i++) text += `X-Header-${i}: ${i}\r\n`;
  return text;
}

Deno.test("http11: 128 headers are accepted", () => {
  const result = parseRequest(`GET / HTTP/1.1\r\n${manyHeaders(128)}\r\n`)!;
  assert.equal(result.message.headers.size, 128);
});

Deno.test("http11: 129 headers are rejected", () => {
  assert.throws(() => parseRequest(`GET / HTTP/1.1\r\n${manyHeaders(129)}\r\n`), {
    name: "SecurityError",
    message: "too many HTTP headers: limit is 128",
  });
  assert.throws(
    () => parseResponse(`HTTP/1.1 101 Switching Protocols\r\n${manyHeaders(129)}\r\n`),
    SecurityError,
  );
});

Deno.test("http11: the header limit is configurable", () => {
  const parser = new RequestParser({ maxNumHeaders: 2 });
  assert.throws(() => parser.feed(bytes(`GET / HTTP/1.1\r\n${manyHeaders(3)}`)), {
    name: "SecurityError",
    message: "too many HTTP headers: limit is 2",
  });
  assert.equal(
    new RequestParser({ maxNumHeaders: 2 }).feed(bytes(`GET / HTTP/1.1\r\n${manyHeaders(2)}\r\n`))!
      .message.headers.size,
    2,
  );
});

Deno.test("http11: trailers count towards the header limit", () => {
  const parser = new ResponseParser({ maxNumHeaders: 2 });
  const data = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: 1\r\nB: 2\r\n\r\n";
  assert.throws(() => parser.feed(bytes(data)), SecurityError);
});

Deno.test("http11: a line of 8192 bytes is accepted", () => {
  const value = "a".repeat(8192 - "X: ".length);
  const result = parseRequest(`GET / HTTP/1.1\r\nX: ${value}\r\n\r\n`)!;
  assert.equal(result.message.headers.get("x"), value);
});

Deno.test("http11: a complete line of 8193 bytes is rejected", () => {
  const value = "a".repeat(8193 - "X: ".length);
  assert.throws(() => parseRequest(`GET / HTTP/1.1\r\nX: ${value}\r\n\r\n`), {
    name: "SecurityError",
    message: "line too long: limit is 8192 bytes",
  });
});

Deno.test("http11: a line fails once it passes 8192 bytes, before its end", () => {
  const parser = new RequestParser();
  parser.feed(bytes("GET / HTTP/1.1\r\nX: "));
  const chunk = bytes("a".repeat(100));
  let fed = "X: ".length;
  let error: unknown;
  while (error === undefined && fed < 20_000) {
    try {
      assert.equal(parser.feed(chunk), undefined);
      fed += chunk.length;
    } catch (caught) {
      error = caught;
      fed += chunk.length;
    }
  }
  assert.ok(error instanceof SecurityError);
  assert.equal(error.message, "line too long: limit is 8192 bytes");
  // The first chunk that takes the line past 8192 bytes fails.
  assert.equal(fed, 8203);
});

Deno.test("http11: a line of exactly the limit waits for its LF after CR", () => {
  const parser = new RequestParser({ maxLineLength: 16 });
  assert.equal(parser.feed(bytes("GET /0123456789 ")), undefined);
  assert.equal(parser.feed(bytes("\r")), undefined);
  assert.throws(
    () => new RequestParser({ maxLineLength: 16 }).feed(bytes("GET /0123456789 H")),
    SecurityError,
  );
});

Deno.test("http11: a status line over the limit is rejected before its end", () => {
  const parser = new ResponseParser({ maxLineLength: 20 });
  assert.equal(parser.feed(bytes("HTTP/1.1 200 ")), undefined);
  assert.throws(() => parser.feed(bytes("a".repeat(9))), {
    name: "SecurityError",
    message: "line too long: limit is 20 bytes",
  });
});

Deno.test("http11: a body of 1 MiB is accepted", () => {
  const body = "a".repeat(1024 * 1024);
  const result = parseResponse(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`)!;
  assert.equal(result.message.body!.length, 1024 * 1024);
});

Deno.test("http11: Content-Length over 1 MiB is rejected before reading the body", () => {
  const parser = new ResponseParser();
  assert.throws(() => parser.feed(bytes("HTTP/1.1 200 OK\r\nContent-Length: 1048577\r\n\r\n")), {
    name: "SecurityError",
    message: "body too large: Content-Length is 1048577 bytes; limit is 1048576 bytes",
  });
});

Deno.test("http11: a huge Content-Length is rejected", () => {
  assert.throws(
    () => parseResponse(`HTTP/1.1 200 OK\r\nContent-Length: ${"9".repeat(400)}\r\n\r\n`),
    SecurityError,
  );
});

Deno.test("http11: a chunked body over 1 MiB is rejected", () => {
  const parser = new ResponseParser();
  parser.feed(bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"));
  const chunk = bytes(`10000\r\n${"a".repeat(0x10000)}\r\n`);
  for (let i = 0; i < 16; i++) assert.equal(parser.feed(chunk), undefined);
  assert.throws(() => parser.feed(bytes("1\r\n")), {
    name: "SecurityError",
    message: "body too large: chunk of 0x1 bytes after 1048576 bytes; limit is 1048576 bytes",
  });
});

Deno.test("http11: a huge chunk size is rejected before reading the chunk", () => {
  assert.throws(
    () =>
      parseResponse(
        `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${"f".repeat(40)}\r\n`,
      ),
    SecurityError,
  );
});

Deno.test("http11: a body to end of connection over 1 MiB is rejected as it grows", () => {
  const parser = new ResponseParser();
  parser.feed(bytes("HTTP/1.1 200 OK\r\n\r\n"));
  const chunk = new Uint8Array(64 * 1024);
  for (let i = 0; i < 16; i++) assert.equal(parser.feed(chunk), undefined);
  assert.throws(() => parser.feed(new Uint8Array(1)), {
    name: "SecurityError",
    message: "body too large: 1048577 bytes received; limit is 1048576 bytes",
  });
});

Deno.test("http11: the body limit is configurable", () => {
  const parser = new ResponseParser({ maxBodySize: 3 });
  assert.throws(
    () => parser.feed(bytes("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")),
    SecurityError,
  );
  const ok = new ResponseParser({ maxBodySize: 3 }).feed(
    bytes("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
  )!;
  assert.equal(text(ok.message.body), "abc");
});

Deno.test("http11: invalid limits are rejected", () => {
  assert.throws(() => new RequestParser({ maxNumHeaders: -1 }), RangeError);
  assert.throws(() => new ResponseParser({ maxLineLength: 1.5 }), RangeError);
  assert.throws(() => new ResponseParser({ maxBodySize: NaN }), RangeError);
});

// ---------------------------------------------------------------------------
// Random splits

Deno.test("http11: a request split at random points parses the same", () => {
  const data = bytes(REQUEST + "\x81\x85\x00\x00\x00\x00hello");
  const expected = new RequestParser().feed(data)!;
  const random = prng(0x5eed);
  for (let i = 0; i < 300; i++) {
    const parser = new RequestParser();
    const result = feedSplit((chunk) => parser.feed(chunk), data, random)!;
    assert.equal(result.message.path, "/chat?room=1");
    assert.deepEqual([...result.message.headers.rawItems()], [
      ...expected.message.headers.rawItems(),
    ]);
    assert.deepEqual(result.rest, bytes("\x81\x85\x00\x00\x00\x00hello"));
  }
});

Deno.test("http11: responses split at random points parse the same", () => {
  const messages = [
    RESPONSE_101 + "\x81\x02hi\x88\x00",
    "HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\nForbidden\nextra",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
    "5\r\nhello\r\n1;ext=1\r\n \r\nb\r\n0123456789a\r\n0\r\nT: 1\r\n\r\nafter",
  ];
  const random = prng(42);
  for (const message of messages) {
    const data = bytes(message);
    const expected = new ResponseParser().feed(data)!;
    for (let i = 0; i < 200; i++) {
      const parser = new ResponseParser();
      const result = feedSplit((chunk) => parser.feed(chunk), data, random)!;
      assert.equal(result.message.statusCode, expected.message.statusCode);
      assert.equal(result.message.reasonPhrase, expected.message.reasonPhrase);
      assert.deepEqual([...result.message.headers.rawItems()], [
        ...expected.message.headers.rawItems(),
      ]);
      assert.deepEqual(result.message.body, expected.message.body);
      assert.deepEqual(result.rest, expected.rest);
    }
  }
});

Deno.test("http11: a body to end of connection split at random points parses the same", () => {
  const data = bytes("HTTP/1.1 500 Internal Server Error\r\nX: y\r\n\r\nsomething failed");
  const random = prng(7);
  for (let i = 0; i < 200; i++) {
    const parser = new ResponseParser();
    assert.equal(feedSplit((chunk) => parser.feed(chunk), data, random), undefined);
    const result = parser.feedEof();
    assert.equal(result.message.statusCode, 500);
    assert.equal(result.message.headers.get("x"), "y");
    assert.equal(text(result.message.body), "something failed");
    assert.deepEqual(result.rest, new Uint8Array());
  }
});

Deno.test("http11: one byte at a time parses the same", () => {
  const data = bytes(RESPONSE_101 + "\x81\x00");
  const parser = new ResponseParser();
  for (let i = 0; i < data.length - 3; i++) {
    assert.equal(parser.feed(data.subarray(i, i + 1)), undefined);
  }
  const result = parser.feed(data.subarray(data.length - 3))!;
  assert.equal(result.message.statusCode, 101);
  assert.deepEqual(result.rest, bytes("\x81\x00"));
});

Deno.test("http11: a CONNECT response ends at its empty line; the tunnel's bytes are rest", () => {
  const result = new ResponseParser(undefined, { connect: true })
    .feed(bytes("HTTP/1.1 200 Connection established\r\nVia: 1.1 proxy\r\n\r\n\x16\x03\x01"));
  assert.ok(result !== undefined);
  assert.deepEqual(
    [result.message.statusCode, result.message.reasonPhrase, result.message.headers.get("Via")],
    [200, "Connection established", "1.1 proxy"],
  );
  assert.equal(result.message.body, undefined);
  assert.equal(text(result.rest), "\x16\x03\x01");
});

Deno.test("http11: a CONNECT response may be HTTP/1.0, as tinyproxy sends it", () => {
  const result = new ResponseParser(undefined, { connect: true })
    .feed(bytes("HTTP/1.0 200 Connection established\r\n\r\n"));
  assert.equal(result?.message.statusCode, 200);
});

Deno.test("http11: a handshake response may not be HTTP/1.0", () => {
  assert.throws(
    () => new ResponseParser().feed(bytes("HTTP/1.0 101 Switching Protocols\r\n\r\n")),
    new InvalidMessage(
      "unsupported HTTP version; expected HTTP/1.1: HTTP/1.0 101 Switching Protocols",
    ),
  );
});

Deno.test("http11: a failed CONNECT's body is not read: it stays in rest", () => {
  const result = new ResponseParser(undefined, { connect: true }).feed(
    bytes("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 99999999\r\n\r\n<html>"),
  );
  assert.ok(result !== undefined);
  assert.deepEqual([result.message.statusCode, result.message.body], [407, undefined]);
  assert.equal(text(result.rest), "<html>");
});

Deno.test("http11: a CONNECT response keeps the header limits", () => {
  const parser = new ResponseParser({ maxNumHeaders: 1 }, { connect: true });
  assert.throws(
    () => parser.feed(bytes("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n")),
    new SecurityError("too many HTTP headers: limit is 1"),
  );
});
