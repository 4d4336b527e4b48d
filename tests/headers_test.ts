import assert from "node:assert/strict";
import { InvalidHeaderFormat, InvalidHeaderValue } from "../errors.ts";
import {
  buildAuthorizationBasic,
  buildExtension,
  buildSubprotocol,
  type ExtensionHeader,
  Headers,
  isToken,
  MultipleValuesError,
  parseAuthorizationBasic,
  parseConnection,
  parseExtension,
  parseSubprotocol,
  parseUpgrade,
  validateHeaderName,
  validateHeaderValue,
} from "../headers.ts";

// ---------------------------------------------------------------------------
// Headers

Deno.test("headers: an empty Headers has no headers", () => {
  const headers = new Headers();
  assert.equal(headers.size, 0);
  assert.deepEqual([...headers.rawItems()], []);
  assert.equal(headers.get("host"), undefined);
});

Deno.test("headers: constructor accepts a record", () => {
  const headers = new Headers({ Host: "example.com", Upgrade: "websocket" });
  assert.deepEqual([...headers.rawItems()], [["Host", "example.com"], ["Upgrade", "websocket"]]);
});

Deno.test("headers: constructor accepts pairs with repeated names", () => {
  const headers = new Headers([["Via", "a"], ["Host", "h"], ["via", "b"]]);
  assert.deepEqual(headers.getAll("VIA"), ["a", "b"]);
  assert.deepEqual([...headers.rawItems()], [["Via", "a"], ["Host", "h"], ["via", "b"]]);
});

Deno.test("headers: constructor accepts a Map", () => {
  const headers = new Headers(new Map([["Host", "example.com"]]));
  assert.deepEqual([...headers.rawItems()], [["Host", "example.com"]]);
});

Deno.test("headers: constructor accepts a WHATWG Headers", () => {
  const web = new globalThis.Headers([["Host", "example.com"], ["X-A", "1"]]);
  const headers = new Headers(web);
  assert.deepEqual([...headers.rawItems()], [["host", "example.com"], ["x-a", "1"]]);
});

Deno.test("headers: constructor copies another Headers independently", () => {
  const original = new Headers([["Via", "a"], ["Via", "b"]]);
  const copy = new Headers(original);
  copy.append("Via", "c");
  assert.deepEqual(original.getAll("via"), ["a", "b"]);
  assert.deepEqual(copy.getAll("via"), ["a", "b", "c"]);
});

Deno.test("headers: constructor validates record entries", () => {
  assert.throws(() => new Headers({ "Bad Name": "x" }), InvalidHeaderFormat);
  assert.throws(() => new Headers({ Good: "a\nb" }), InvalidHeaderValue);
});

Deno.test("headers: constructor validates pairs", () => {
  assert.throws(() => new Headers([["", "x"]]), InvalidHeaderFormat);
  assert.throws(() => new Headers([["Good", "\0"]]), InvalidHeaderValue);
});

Deno.test("headers: get returns undefined when absent", () => {
  assert.equal(new Headers({ Host: "h" }).get("Origin"), undefined);
});

Deno.test("headers: get returns the single value case-insensitively", () => {
  const headers = new Headers({ "Sec-WebSocket-Key": "abc" });
  assert.equal(headers.get("sec-websocket-key"), "abc");
  assert.equal(headers.get("SEC-WEBSOCKET-KEY"), "abc");
});

Deno.test("headers: get throws MultipleValuesError naming the header", () => {
  const headers = new Headers([["Via", "a"], ["via", "b"]]);
  assert.throws(() => headers.get("VIA"), MultipleValuesError);
  assert.throws(() => headers.get("VIA"), {
    name: "MultipleValuesError",
    message: "multiple values for header VIA",
    headerName: "VIA",
  });
});

Deno.test("headers: MultipleValuesError is an Error named after its class", () => {
  const error = new MultipleValuesError("Via");
  assert.ok(error instanceof Error);
  assert.equal(error.name, "MultipleValuesError");
  assert.equal(error.message, "multiple values for header Via");
});

Deno.test("headers: append adds values after existing ones", () => {
  const headers = new Headers({ Via: "a" });
  headers.append("VIA", "b");
  assert.deepEqual(headers.getAll("via"), ["a", "b"]);
  assert.deepEqual([...headers.rawItems()], [["Via", "a"], ["VIA", "b"]]);
});

Deno.test("headers: append accepts ISO-8859-1 values and HTAB", () => {
  const headers = new Headers();
  headers.append("X-Name", "café\tÿ");
  assert.equal(headers.get("x-name"), "café\tÿ");
});

Deno.test("headers: append accepts an empty value", () => {
  const headers = new Headers();
  headers.append("X-Empty", "");
  assert.equal(headers.get("x-empty"), "");
});

Deno.test("headers: append rejects an empty name", () => {
  assert.throws(() => new Headers().append("", "x"), InvalidHeaderFormat);
});

Deno.test("headers: append rejects names that are not tokens", () => {
  for (const name of ["Bad Name", "Name:", "Nämé", "a\r\nb", "(x)", "a/b", "a\tb"]) {
    assert.throws(() => new Headers().append(name, "x"), InvalidHeaderFormat, name);
  }
});

Deno.test("headers: append accepts every tchar in names", () => {
  const headers = new Headers();
  headers.append("!#$%&'*+-.^_`|~09AZaz", "x");
  assert.equal(headers.get("!#$%&'*+-.^_`|~09azaz"), "x");
});

Deno.test("headers: append rejects CR, LF and NUL in values", () => {
  for (const value of ["a\r\nb", "a\rb", "a\nb", "a\0b"]) {
    assert.throws(
      () => new Headers().append("X", value),
      InvalidHeaderValue,
      JSON.stringify(value),
    );
  }
});

Deno.test("headers: append rejects characters above U+00FF in values", () => {
  assert.throws(() => new Headers().append("X", "→"), InvalidHeaderValue);
  assert.throws(() => new Headers().append("X", "😀"), InvalidHeaderValue);
});

Deno.test("headers: invalid value error names the header and the character", () => {
  assert.throws(() => new Headers().append("X-Name", "a→"), {
    name: "InvalidHeaderValue",
    message: "invalid X-Name header: forbidden character U+2192 at 1",
    headerName: "X-Name",
    value: "a→",
  });
});

Deno.test("headers: invalid name error gives the position", () => {
  assert.throws(() => new Headers().append("Bad Name", "x"), {
    name: "InvalidHeaderFormat",
    message: "invalid Bad Name header: invalid character in header name at 3 in Bad Name",
  });
});

Deno.test("headers: a failed append leaves the headers unchanged", () => {
  const headers = new Headers({ A: "1" });
  assert.throws(() => headers.append("B", "\n"), InvalidHeaderValue);
  assert.deepEqual([...headers.rawItems()], [["A", "1"]]);
});

Deno.test("headers: set replaces every value with one", () => {
  const headers = new Headers([["Via", "a"], ["Host", "h"], ["via", "b"]]);
  headers.set("VIA", "c");
  assert.deepEqual([...headers.rawItems()], [["Host", "h"], ["VIA", "c"]]);
  assert.equal(headers.get("via"), "c");
});

Deno.test("headers: set adds an absent header", () => {
  const headers = new Headers();
  headers.set("Host", "h");
  assert.deepEqual([...headers.rawItems()], [["Host", "h"]]);
});

Deno.test("headers: set validates before removing", () => {
  const headers = new Headers({ Via: "a" });
  assert.throws(() => headers.set("Via", "\n"), InvalidHeaderValue);
  assert.throws(() => headers.set("V ia", "b"), InvalidHeaderFormat);
  assert.deepEqual([...headers.rawItems()], [["Via", "a"]]);
});

Deno.test("headers: delete removes every value and reports it", () => {
  const headers = new Headers([["Via", "a"], ["Host", "h"], ["VIA", "b"]]);
  assert.equal(headers.delete("via"), true);
  assert.deepEqual([...headers.rawItems()], [["Host", "h"]]);
  assert.equal(headers.has("via"), false);
  assert.equal(headers.size, 1);
});

Deno.test("headers: delete of an absent header returns false", () => {
  const headers = new Headers({ Host: "h" });
  assert.equal(headers.delete("Via"), false);
  assert.deepEqual([...headers.rawItems()], [["Host", "h"]]);
});

Deno.test("headers: getAll returns an empty array when absent", () => {
  assert.deepEqual(new Headers().getAll("via"), []);
});

Deno.test("headers: getAll returns a fresh array", () => {
  const headers = new Headers([["Via", "a"]]);
  const values = headers.getAll("via");
  values.push("mutated");
  assert.deepEqual(headers.getAll("via"), ["a"]);
});

Deno.test("headers: rawItems yields copies of the pairs", () => {
  const headers = new Headers({ Host: "h" });
  for (const pair of headers.rawItems()) pair[1] = "mutated";
  assert.equal(headers.get("host"), "h");
});

Deno.test("headers: has is case-insensitive", () => {
  const headers = new Headers({ Upgrade: "websocket" });
  assert.equal(headers.has("upgrade"), true);
  assert.equal(headers.has("UPGRADE"), true);
  assert.equal(headers.has("Connection"), false);
});

Deno.test("headers: size counts distinct names", () => {
  const headers = new Headers([["Via", "a"], ["via", "b"], ["Host", "h"]]);
  assert.equal(headers.size, 2);
});

Deno.test("headers: iteration yields distinct lower-cased names in order", () => {
  const headers = new Headers([["Via", "a"], ["Host", "h"], ["VIA", "b"]]);
  assert.deepEqual([...headers], ["via", "host"]);
  assert.deepEqual([...headers.keys()], ["via", "host"]);
});

Deno.test("headers: clear removes everything", () => {
  const headers = new Headers([["Via", "a"], ["Host", "h"]]);
  headers.clear();
  assert.equal(headers.size, 0);
  assert.deepEqual([...headers.rawItems()], []);
  assert.equal(headers.get("via"), undefined);
});

Deno.test("headers: update appends from another Headers", () => {
  const headers = new Headers({ Via: "a" });
  headers.update(new Headers([["via", "b"], ["Host", "h"]]));
  assert.deepEqual([...headers.rawItems()], [["Via", "a"], ["via", "b"], ["Host", "h"]]);
});

Deno.test("headers: update appends from a record and from pairs", () => {
  const headers = new Headers();
  headers.update({ A: "1" });
  headers.update([["B", "2"], ["a", "3"]]);
  assert.deepEqual([...headers.rawItems()], [["A", "1"], ["B", "2"], ["a", "3"]]);
});

Deno.test("headers: copy is equal and independent", () => {
  const headers = new Headers([["Via", "a"]]);
  const copy = headers.copy();
  assert.equal(copy.equals(headers), true);
  copy.append("Host", "h");
  assert.equal(headers.has("host"), false);
});

Deno.test("headers: equals compares names case-insensitively", () => {
  const a = new Headers([["Host", "h"], ["Via", "1"]]);
  const b = new Headers([["via", "1"], ["HOST", "h"]]);
  assert.equal(a.equals(b), true);
});

Deno.test("headers: equals compares values in order", () => {
  const a = new Headers([["Via", "1"], ["Via", "2"]]);
  assert.equal(a.equals(new Headers([["Via", "2"], ["Via", "1"]])), false);
  assert.equal(a.equals(new Headers([["Via", "1"]])), false);
  assert.equal(a.equals(new Headers([["Via", "1"], ["Via", "2"]])), true);
});

Deno.test("headers: equals detects different names", () => {
  const a = new Headers({ Host: "h" });
  assert.equal(a.equals(new Headers({ Origin: "h" })), false);
  assert.equal(a.equals(new Headers({ Host: "h", Origin: "o" })), false);
  assert.equal(a.equals(new Headers({ Host: "x" })), false);
});

Deno.test("headers: toString writes lines then an empty line", () => {
  const headers = new Headers([["Host", "h"], ["Via", "a"], ["via", "b"]]);
  assert.equal(headers.toString(), "Host: h\r\nVia: a\r\nvia: b\r\n\r\n");
  assert.equal(new Headers().toString(), "\r\n");
});

Deno.test("headers: serialize encodes as ISO-8859-1", () => {
  const headers = new Headers({ X: "café" });
  assert.deepEqual(
    headers.serialize(),
    Uint8Array.of(0x58, 0x3a, 0x20, 0x63, 0x61, 0x66, 0xe9, 0x0d, 0x0a, 0x0d, 0x0a),
  );
});

Deno.test("headers: isToken", () => {
  assert.equal(isToken("permessage-deflate"), true);
  assert.equal(isToken(""), false);
  assert.equal(isToken("a b"), false);
  assert.equal(isToken("é"), false);
});

Deno.test("headers: validateHeaderName and validateHeaderValue", () => {
  assert.equal(validateHeaderName("Host"), undefined);
  assert.equal(validateHeaderValue("Host", "é"), undefined);
  assert.throws(() => validateHeaderName("a:b"), InvalidHeaderFormat);
  assert.throws(() => validateHeaderValue("Host", "\n"), InvalidHeaderValue);
});

// ---------------------------------------------------------------------------
// Connection and Upgrade

Deno.test("headers: parseConnection parses a token list", () => {
  assert.deepEqual(parseConnection("Upgrade"), ["Upgrade"]);
  assert.deepEqual(parseConnection("keep-alive, Upgrade"), ["keep-alive", "Upgrade"]);
  assert.deepEqual(parseConnection("keep-alive,Upgrade"), ["keep-alive", "Upgrade"]);
});

Deno.test("headers: parseConnection tolerates empty elements and OWS", () => {
  assert.deepEqual(parseConnection(" , ,\tUpgrade , ,keep-alive ,"), ["Upgrade", "keep-alive"]);
  assert.deepEqual(parseConnection("Upgrade ,"), ["Upgrade"]);
});

Deno.test("headers: parseConnection rejects an empty list", () => {
  assert.throws(() => parseConnection(""), InvalidHeaderFormat);
  assert.throws(() => parseConnection(" , , "), InvalidHeaderFormat);
});

Deno.test("headers: parseConnection rejects non-tokens", () => {
  assert.throws(() => parseConnection("Upgrade;"), InvalidHeaderFormat);
  assert.throws(() => parseConnection("Up grade"), InvalidHeaderFormat);
  assert.throws(() => parseConnection("Upgrade, @"), InvalidHeaderFormat);
});

Deno.test("headers: parse error says what was expected and where", () => {
  assert.throws(() => parseConnection("Up grade"), {
    name: "InvalidHeaderFormat",
    message: "invalid Connection header: expected comma at 3 in Up grade",
    headerName: "Connection",
    value: "Up grade",
  });
  assert.throws(() => parseConnection("a, @"), {
    message: "invalid Connection header: expected token at 3 in a, @",
  });
});

Deno.test("headers: parseUpgrade parses protocols with versions", () => {
  assert.deepEqual(parseUpgrade("websocket"), ["websocket"]);
  assert.deepEqual(parseUpgrade("HTTP/2.0, SHTTP/1.3, websocket"), [
    "HTTP/2.0",
    "SHTTP/1.3",
    "websocket",
  ]);
});

Deno.test("headers: parseUpgrade rejects malformed protocols", () => {
  assert.throws(() => parseUpgrade("websocket/"), InvalidHeaderFormat);
  assert.throws(() => parseUpgrade("/13"), InvalidHeaderFormat);
  assert.throws(() => parseUpgrade("a/b/c"), InvalidHeaderFormat);
  assert.throws(() => parseUpgrade(""), InvalidHeaderFormat);
});

// ---------------------------------------------------------------------------
// Sec-WebSocket-Extensions

Deno.test("headers: parseExtension parses names and parameters", () => {
  assert.deepEqual(parseExtension("permessage-deflate"), [["permessage-deflate", []]]);
  assert.deepEqual(
    parseExtension(
      "permessage-deflate; client_max_window_bits; server_max_window_bits=10, x-foo",
    ),
    [
      ["permessage-deflate", [["client_max_window_bits", undefined], [
        "server_max_window_bits",
        "10",
      ]]],
      ["x-foo", []],
    ],
  );
});

Deno.test("headers: parseExtension allows OWS around separators", () => {
  assert.deepEqual(parseExtension("a ;b = 1 ;\tc , d"), [["a", [["b", "1"], ["c", undefined]]], [
    "d",
    [],
  ]]);
});

Deno.test("headers: parseExtension unquotes quoted values", () => {
  assert.deepEqual(parseExtension('a; b="10"; c="x\\-y"'), [["a", [["b", "10"], ["c", "x-y"]]]]);
});

Deno.test("headers: parseExtension rejects a quoted value that is not a token", () => {
  assert.throws(() => parseExtension('a; b="1 0"'), InvalidHeaderFormat);
  assert.throws(() => parseExtension('a; b=""'), InvalidHeaderFormat);
  assert.throws(() => parseExtension('a; b="1 0"'), {
    message:
      'invalid Sec-WebSocket-Extensions header: invalid quoted header content at 5 in a; b="1 0"',
  });
});

Deno.test("headers: parseExtension reads HTAB and obs-text in quoted strings, then rejects them", () => {
  // They are valid quoted-string characters but not token characters.
  for (const header of ['a; b="x\ty"', 'a; b="x\u00e9"', 'a; b="x\\\ty"', 'a; b="\\\u00e9"']) {
    assert.throws(() => parseExtension(header), {
      name: "InvalidHeaderFormat",
      message:
        `invalid Sec-WebSocket-Extensions header: invalid quoted header content at 5 in ${header}`,
    });
  }
});

Deno.test("headers: parseExtension rejects malformed quoted strings", () => {
  assert.throws(() => parseExtension('a; b="10'), InvalidHeaderFormat);
  assert.throws(() => parseExtension('a; b="1\\'), InvalidHeaderFormat);
  assert.throws(() => parseExtension('a; b="1\\\n"'), InvalidHeaderFormat);
  assert.throws(() => parseExtension('a; b="1\x7f"'), InvalidHeaderFormat);
});

Deno.test("headers: parseExtension rejects malformed extensions", () => {
  for (const header of ["", "a;", "a; =1", "a; b=", "a; b=,", "a=1", "; a", "a b", "a; b c"]) {
    assert.throws(() => parseExtension(header), InvalidHeaderFormat, header);
  }
});

Deno.test("headers: buildExtension builds a header value", () => {
  assert.equal(
    buildExtension([
      ["permessage-deflate", [["client_max_window_bits", undefined], [
        "server_max_window_bits",
        "10",
      ]]],
      ["x-foo", []],
    ]),
    "permessage-deflate; client_max_window_bits; server_max_window_bits=10, x-foo",
  );
});

Deno.test("headers: buildExtension output parses back", () => {
  const extensions: ExtensionHeader[] = [
    ["a", [["b", "1"], ["c", undefined]]],
    ["d", []],
  ];
  assert.deepEqual(parseExtension(buildExtension(extensions)), extensions);
});

Deno.test("headers: buildExtension rejects an empty list and non-tokens", () => {
  assert.throws(() => buildExtension([]), InvalidHeaderValue);
  assert.throws(() => buildExtension([["a b", []]]), InvalidHeaderValue);
  assert.throws(() => buildExtension([["a", [["b c", undefined]]]]), InvalidHeaderValue);
  assert.throws(() => buildExtension([["a", [["b", "1 0"]]]]), InvalidHeaderValue);
});

// ---------------------------------------------------------------------------
// Sec-WebSocket-Protocol

Deno.test("headers: parseSubprotocol parses a token list", () => {
  assert.deepEqual(parseSubprotocol("chat"), ["chat"]);
  assert.deepEqual(parseSubprotocol("chat, superchat,v2.json"), ["chat", "superchat", "v2.json"]);
});

Deno.test("headers: parseSubprotocol rejects malformed lists", () => {
  for (const header of ["", ",", "chat;", "chat superchat", "ch@t"]) {
    assert.throws(() => parseSubprotocol(header), InvalidHeaderFormat, header);
  }
});

Deno.test("headers: buildSubprotocol joins names", () => {
  assert.equal(buildSubprotocol(["chat"]), "chat");
  assert.equal(buildSubprotocol(["chat", "superchat"]), "chat, superchat");
});

Deno.test("headers: buildSubprotocol rejects an empty list and non-tokens", () => {
  assert.throws(() => buildSubprotocol([]), InvalidHeaderValue);
  assert.throws(() => buildSubprotocol(["chat", "a,b"]), InvalidHeaderValue);
});

// ---------------------------------------------------------------------------
// Authorization: Basic

Deno.test("headers: buildAuthorizationBasic encodes user:pass", () => {
  assert.equal(
    buildAuthorizationBasic("Aladdin", "open sesame"),
    "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
  );
});

Deno.test("headers: buildAuthorizationBasic encodes UTF-8", () => {
  assert.equal(buildAuthorizationBasic("test", "123£"), "Basic dGVzdDoxMjPCow==");
});

Deno.test("headers: buildAuthorizationBasic rejects a colon in the username", () => {
  assert.throws(() => buildAuthorizationBasic("a:b", "c"), InvalidHeaderValue);
});

Deno.test("headers: parseAuthorizationBasic decodes credentials", () => {
  assert.deepEqual(parseAuthorizationBasic("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="), [
    "Aladdin",
    "open sesame",
  ]);
  assert.deepEqual(parseAuthorizationBasic("basic  dGVzdDoxMjPCow== "), ["test", "123£"]);
});

Deno.test("headers: parseAuthorizationBasic keeps colons in the password", () => {
  const header = buildAuthorizationBasic("user", "p:a:ss");
  assert.deepEqual(parseAuthorizationBasic(header), ["user", "p:a:ss"]);
});

Deno.test("headers: parseAuthorizationBasic round-trips long credentials", () => {
  const password = "é".repeat(10_000);
  assert.deepEqual(parseAuthorizationBasic(buildAuthorizationBasic("u", password)), [
    "u",
    password,
  ]);
});

Deno.test("headers: parseAuthorizationBasic rejects other schemes", () => {
  assert.throws(() => parseAuthorizationBasic("Bearer abc"), InvalidHeaderValue);
});

Deno.test("headers: parseAuthorizationBasic rejects malformed values", () => {
  for (
    const header of ["", " Basic abc=", "Basic", "Basic\tQQ==", "Basic ", "Basic a b", "Basic @"]
  ) {
    assert.throws(() => parseAuthorizationBasic(header), InvalidHeaderFormat, header);
  }
});

Deno.test("headers: parseAuthorizationBasic rejects invalid base64", () => {
  assert.throws(() => parseAuthorizationBasic("Basic QQ"), InvalidHeaderValue);
  assert.throws(() => parseAuthorizationBasic("Basic Q-Q="), InvalidHeaderValue);
});

Deno.test("headers: parseAuthorizationBasic rejects credentials that aren't UTF-8", () => {
  // base64 of the bytes 0xff 0x3a 0x61 ("\xff:a").
  assert.throws(() => parseAuthorizationBasic("Basic /zph"), InvalidHeaderValue);
});

Deno.test("headers: parseAuthorizationBasic rejects credentials without a colon", () => {
  assert.throws(() => parseAuthorizationBasic(`Basic ${btoa("nocolon")}`), InvalidHeaderValue);
});
