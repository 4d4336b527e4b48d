import assert from "node:assert/strict";
import { parseUri, WebSocketURI } from "../uri.ts";
import { InvalidURI } from "../errors.ts";

type Fields = {
  secure: boolean;
  host: string;
  port: number;
  path: string;
  query: string;
  username: string | undefined;
  password: string | undefined;
};

/** The fields of a parsed URI as a plain object, for whole-value comparisons. */
function fields(uri: string): Fields {
  const { secure, host, port, path, query, username, password } = parseUri(uri);
  return { secure, host, port, path, query, username, password };
}

function plain(
  secure: boolean,
  host: string,
  port: number,
  path: string,
  query = "",
  username?: string,
  password?: string,
): Fields {
  return { secure, host, port, path, query, username, password };
}

/** Asserts that `uri` is rejected with exactly `InvalidURI` and `reason`. */
function assertRejected(uri: string, reason: string): void {
  assert.throws(() => parseUri(uri), (error: unknown) => {
    assert.ok(error instanceof InvalidURI);
    assert.equal(error.constructor, InvalidURI);
    assert.deepEqual(
      { uri: error.uri, reason: error.reason, message: error.message },
      { uri, reason, message: `${uri} isn't a valid URI: ${reason}` },
    );
    return true;
  });
}

// Accepted forms

Deno.test("uri: parses a ws URI with the default port", () => {
  assert.deepEqual(fields("ws://localhost/"), plain(false, "localhost", 80, "/"));
});

Deno.test("uri: parses a wss URI with the default port", () => {
  assert.deepEqual(fields("wss://localhost/"), plain(true, "localhost", 443, "/"));
});

Deno.test("uri: keeps an explicit port", () => {
  assert.deepEqual(fields("ws://localhost:8080/"), plain(false, "localhost", 8080, "/"));
});

Deno.test("uri: keeps an explicit default port", () => {
  assert.deepEqual(fields("wss://localhost:443/"), plain(true, "localhost", 443, "/"));
});

Deno.test("uri: keeps a port written with leading zeros as its number", () => {
  assert.deepEqual(fields("ws://localhost:0080/"), plain(false, "localhost", 80, "/"));
});

Deno.test("uri: uses the default port when the port after the colon is empty", () => {
  assert.deepEqual(fields("wss://localhost:/"), plain(true, "localhost", 443, "/"));
});

Deno.test("uri: accepts port 65535", () => {
  assert.deepEqual(fields("ws://localhost:65535/"), plain(false, "localhost", 65535, "/"));
});

Deno.test("uri: accepts port 1", () => {
  assert.deepEqual(fields("ws://localhost:1"), plain(false, "localhost", 1, ""));
});

Deno.test("uri: gives an empty path when the URI has none", () => {
  assert.deepEqual(fields("ws://localhost"), plain(false, "localhost", 80, ""));
});

Deno.test("uri: keeps the path and the query apart", () => {
  assert.deepEqual(
    fields("ws://localhost/path?query"),
    plain(false, "localhost", 80, "/path", "query"),
  );
});

Deno.test("uri: parses a query without a path", () => {
  assert.deepEqual(fields("ws://localhost?x"), plain(false, "localhost", 80, "", "x"));
});

Deno.test("uri: keeps a question mark inside the query", () => {
  assert.deepEqual(
    fields("ws://localhost/a?b=c?d&e=?"),
    plain(false, "localhost", 80, "/a", "b=c?d&e=?"),
  );
});

Deno.test("uri: gives an empty query for a lone question mark", () => {
  assert.deepEqual(fields("ws://localhost/a?"), plain(false, "localhost", 80, "/a", ""));
});

Deno.test("uri: parses user info", () => {
  assert.deepEqual(
    fields("ws://user:pass@localhost/"),
    plain(false, "localhost", 80, "/", "", "user", "pass"),
  );
});

Deno.test("uri: accepts an empty password", () => {
  assert.deepEqual(
    fields("ws://user:@localhost/"),
    plain(false, "localhost", 80, "/", "", "user", ""),
  );
});

Deno.test("uri: keeps colons after the first one in the password", () => {
  assert.deepEqual(
    fields("ws://user:pa:ss@localhost:9000/"),
    plain(false, "localhost", 9000, "/", "", "user", "pa:ss"),
  );
});

Deno.test("uri: ends the user info at the last @", () => {
  assert.deepEqual(
    fields("ws://us@er:pass@localhost/"),
    plain(false, "localhost", 80, "/", "", "us@er", "pass"),
  );
});

Deno.test("uri: keeps percent-encoded user info encoded", () => {
  assert.deepEqual(
    fields("ws://us%40er:p%3Ass@localhost/"),
    plain(false, "localhost", 80, "/", "", "us%40er", "p%3Ass"),
  );
});

Deno.test("uri: keeps an @ in the path out of the user info", () => {
  assert.deepEqual(
    fields("ws://localhost/a@b"),
    plain(false, "localhost", 80, "/a@b"),
  );
});

Deno.test("uri: lower-cases the scheme and the host but not the path or query", () => {
  assert.deepEqual(
    fields("WSS://LocalHost.EXAMPLE/Path?Q=V"),
    plain(true, "localhost.example", 443, "/Path", "Q=V"),
  );
});

Deno.test("uri: accepts a mixed-case ws scheme", () => {
  assert.deepEqual(fields("Ws://localhost/"), plain(false, "localhost", 80, "/"));
});

Deno.test("uri: parses an IPv6 address with a port and stores it without brackets", () => {
  assert.deepEqual(fields("ws://[::1]:8080/x"), plain(false, "::1", 8080, "/x"));
});

Deno.test("uri: parses an IPv6 address without a port", () => {
  assert.deepEqual(fields("wss://[::1]"), plain(true, "::1", 443, ""));
});

Deno.test("uri: lower-cases an IPv6 address and keeps it as written", () => {
  assert.deepEqual(
    fields("ws://[2001:DB8:0:0::1]:/"),
    plain(false, "2001:db8:0:0::1", 80, "/"),
  );
});

Deno.test("uri: parses an IPv6 address with user info", () => {
  assert.deepEqual(
    fields("ws://u:p@[::ffff:127.0.0.1]:1/"),
    plain(false, "::ffff:127.0.0.1", 1, "/", "", "u", "p"),
  );
});

Deno.test("uri: parses an IPv4 address", () => {
  assert.deepEqual(fields("ws://127.0.0.1:8765/"), plain(false, "127.0.0.1", 8765, "/"));
});

Deno.test("uri: keeps an ASCII host name as written", () => {
  assert.deepEqual(
    fields("ws://my_host-1.example./"),
    plain(false, "my_host-1.example.", 80, "/"),
  );
});

Deno.test("uri: converts an IRI to URI form", () => {
  assert.deepEqual(
    fields("ws://üser:påss@høst/πass?qùéry"),
    plain(false, "xn--hst-0na", 80, "/%CF%80ass", "q%C3%B9%C3%A9ry", "%C3%BCser", "p%C3%A5ss"),
  );
});

Deno.test("uri: converts an upper-case non-ASCII host with IDNA in lower case", () => {
  assert.deepEqual(fields("ws://HØST.Example/"), plain(false, "xn--hst-0na.example", 80, "/"));
});

Deno.test("uri: decodes a percent-encoded host name and converts it with IDNA", () => {
  assert.deepEqual(fields("ws://h%C3%B8st/"), plain(false, "xn--hst-0na", 80, "/"));
});

Deno.test("uri: converts a host given in punycode like its Unicode form", () => {
  assert.deepEqual(fields("ws://xn--hst-0na/"), plain(false, "xn--hst-0na", 80, "/"));
});

Deno.test("uri: encodes characters outside the BMP as UTF-8", () => {
  assert.deepEqual(
    fields("ws://localhost/😀?😀"),
    plain(false, "localhost", 80, "/%F0%9F%98%80", "%F0%9F%98%80"),
  );
});

Deno.test("uri: does not encode percent-encoded octets twice", () => {
  assert.deepEqual(
    fields("ws://localhost/%CF%80ass%2fπ?q%C3%B9=ù"),
    plain(false, "localhost", 80, "/%CF%80ass%2f%CF%80", "q%C3%B9=%C3%B9"),
  );
});

Deno.test("uri: encodes a % that starts no percent-encoded octet", () => {
  assert.deepEqual(
    fields("ws://a:100%@localhost/100%?x=%4g&y=%"),
    plain(false, "localhost", 80, "/100%25", "x=%254g&y=%25", "a", "100%25"),
  );
});

Deno.test("uri: encodes ASCII characters that RFC 3986 does not allow in a path or query", () => {
  assert.deepEqual(
    fields('ws://localhost/a\\b|c^d`e{f}"<>?{"k":[1]}'),
    plain(false, "localhost", 80, "/a%5Cb%7Cc%5Ed%60e%7Bf%7D%22%3C%3E", "%7B%22k%22:[1]%7D"),
  );
});

Deno.test("uri: keeps RFC 3986 delimiters in the path and query as written", () => {
  assert.deepEqual(
    fields("ws://localhost/:@!$&'()*+,;=[]-._~?/?:@!$&'()*+,;=[]"),
    plain(false, "localhost", 80, "/:@!$&'()*+,;=[]-._~", "/?:@!$&'()*+,;=[]"),
  );
});

Deno.test("uri: keeps dot segments and repeated slashes in the path", () => {
  assert.deepEqual(
    fields("ws://localhost/a/../b/./c//d"),
    plain(false, "localhost", 80, "/a/../b/./c//d"),
  );
});

// Rejected forms

Deno.test("uri: rejects an http URI", () => {
  assertRejected("http://localhost/", "scheme isn't ws or wss");
});

Deno.test("uri: rejects a URI without a scheme", () => {
  assertRejected("localhost/path", "scheme isn't ws or wss");
});

Deno.test("uri: rejects a scheme that only starts with ws", () => {
  assertRejected("wsx://localhost/", "scheme isn't ws or wss");
});

Deno.test("uri: rejects an empty string", () => {
  assertRejected("", "scheme isn't ws or wss");
});

Deno.test("uri: rejects a URI without an authority", () => {
  assertRejected("ws:localhost/path", "hostname isn't provided");
});

Deno.test("uri: rejects an empty authority", () => {
  assertRejected("ws:///path", "hostname isn't provided");
});

Deno.test("uri: rejects a URI made of the scheme only", () => {
  assertRejected("wss://", "hostname isn't provided");
});

Deno.test("uri: rejects a port without a host", () => {
  assertRejected("ws://:8080/", "hostname isn't provided");
});

Deno.test("uri: rejects user info without a host", () => {
  assertRejected("ws://user:pass@/", "hostname isn't provided");
});

Deno.test("uri: rejects a fragment", () => {
  assertRejected("ws://localhost/path#frag", "fragment identifier is meaningless");
});

Deno.test("uri: rejects an empty fragment", () => {
  assertRejected("ws://localhost/#", "fragment identifier is meaningless");
});

Deno.test("uri: rejects a fragment right after the host", () => {
  assertRejected("ws://localhost#", "fragment identifier is meaningless");
});

Deno.test("uri: rejects a user name without a password", () => {
  assertRejected("ws://user@localhost/", "username provided without password");
});

Deno.test("uri: rejects an empty user info", () => {
  assertRejected("ws://@localhost/", "username provided without password");
});

Deno.test("uri: rejects port 65536", () => {
  assertRejected("ws://localhost:65536/", "port 65536 is out of range: the limit is 65535");
});

Deno.test("uri: rejects a very large port", () => {
  assertRejected(
    "ws://localhost:99999999999999999999/",
    "port 99999999999999999999 is out of range: the limit is 65535",
  );
});

Deno.test("uri: rejects port 0", () => {
  assertRejected("ws://localhost:0/", "port 0 can't be connected to: ports range from 1 to 65535");
});

Deno.test("uri: rejects a non-numeric port", () => {
  assertRejected("ws://localhost:http/", "port isn't a number: http");
});

Deno.test("uri: rejects a negative port", () => {
  assertRejected("ws://localhost:-1/", "port isn't a number: -1");
});

Deno.test("uri: rejects a second colon after the host", () => {
  assertRejected("ws://localhost:80:90/", "port isn't a number: 80:90");
});

Deno.test("uri: rejects a non-numeric port after an IPv6 address", () => {
  assertRejected("ws://[::1]:x/", "port isn't a number: x");
});

Deno.test("uri: rejects a space", () => {
  assertRejected("ws://localhost/a b", "contains a space at index 16");
});

Deno.test("uri: rejects a leading space", () => {
  assertRejected(" ws://localhost/", "contains a space at index 0");
});

Deno.test("uri: rejects a newline", () => {
  assertRejected("ws://localhost/\r\nX: y", "contains a control character U+000D at index 15");
});

Deno.test("uri: rejects a NUL character", () => {
  assertRejected("ws://local\0host/", "contains a control character U+0000 at index 10");
});

Deno.test("uri: rejects DEL", () => {
  assertRejected("ws://localhost/\x7F", "contains a control character U+007F at index 15");
});

Deno.test("uri: rejects a C1 control character", () => {
  assertRejected("ws://localhost/\x85", "contains a control character U+0085 at index 15");
});

Deno.test("uri: rejects an unpaired high surrogate", () => {
  assertRejected("ws://localhost/\uD83D", "contains an unpaired surrogate U+D83D at index 15");
});

Deno.test("uri: rejects an unpaired low surrogate", () => {
  assertRejected("ws://localhost/\uDE00x", "contains an unpaired surrogate U+DE00 at index 15");
});

Deno.test("uri: rejects a backslash in the host", () => {
  assertRejected("ws://local\\host/", "invalid host: local\\host");
});

Deno.test("uri: rejects a forbidden character in the host", () => {
  assertRejected("ws://local<host>/", "invalid host: local<host>");
});

Deno.test("uri: rejects a bracket inside a host name", () => {
  assertRejected("ws://local]host/", "invalid host: local]host");
});

Deno.test("uri: rejects a host ending in an invalid IPv4 address", () => {
  assertRejected("ws://1.2.3.256/", "invalid host: 1.2.3.256");
});

Deno.test("uri: rejects a host that IDNA cannot convert", () => {
  assertRejected("ws://\u00AD/", "invalid host: \u00AD");
});

Deno.test("uri: rejects a percent-encoded host that decodes to nothing valid", () => {
  assertRejected("ws://a%zz/", "invalid host: a%zz");
});

Deno.test("uri: rejects an IPv6 address without a closing bracket", () => {
  assertRejected("ws://[::1/", "invalid host: [::1 has no closing bracket");
});

Deno.test("uri: rejects text after an IPv6 address", () => {
  assertRejected("ws://[::1]x:80/", "invalid host: unexpected x:80 after [::1]");
});

Deno.test("uri: rejects an invalid IPv6 address", () => {
  assertRejected("ws://[1:2:3]/", "invalid host: [1:2:3] isn't an IPv6 address");
});

Deno.test("uri: rejects empty brackets", () => {
  assertRejected("ws://[]/", "invalid host: [] isn't an IPv6 address");
});

Deno.test("uri: rejects an IPv6 zone identifier", () => {
  assertRejected("ws://[fe80::1%25eth0]/", "invalid host: [fe80::1%25eth0] isn't an IPv6 address");
});

Deno.test("uri: rejects a host name in brackets", () => {
  assertRejected("ws://[localhost]/", "invalid host: [localhost] isn't an IPv6 address");
});

Deno.test("uri: rejects a value that is not a string with TypeError", () => {
  assert.throws(
    () => parseUri(42 as unknown as string),
    new TypeError("Cannot parse URI: expected a string, got number"),
  );
});

// WebSocketURI

Deno.test("uri: WebSocketURI stores its fields as given", () => {
  const uri = new WebSocketURI(true, "example.com", 8443, "/p", "q", "u", "p");
  assert.deepEqual(
    { ...uri },
    plain(true, "example.com", 8443, "/p", "q", "u", "p"),
  );
});

Deno.test("uri: WebSocketURI leaves user info undefined when omitted", () => {
  const uri = new WebSocketURI(false, "example.com", 80, "", "");
  assert.deepEqual({ ...uri }, plain(false, "example.com", 80, ""));
});

Deno.test("uri: parseUri returns a WebSocketURI", () => {
  assert.deepEqual(
    parseUri("ws://u:p@example.com:81/p?q"),
    new WebSocketURI(false, "example.com", 81, "/p", "q", "u", "p"),
  );
});

Deno.test("uri: resourceName is / for an empty path", () => {
  assert.equal(parseUri("ws://localhost").resourceName, "/");
});

Deno.test("uri: resourceName is the path without a query", () => {
  assert.equal(parseUri("ws://localhost/a/b").resourceName, "/a/b");
});

Deno.test("uri: resourceName appends a non-empty query", () => {
  assert.equal(parseUri("ws://localhost/a?b=c?d").resourceName, "/a?b=c?d");
});

Deno.test("uri: resourceName is / and the query for an empty path with a query", () => {
  assert.equal(parseUri("ws://localhost?x").resourceName, "/?x");
});

Deno.test("uri: resourceName drops an empty query", () => {
  assert.equal(parseUri("ws://localhost/a?").resourceName, "/a");
});

Deno.test("uri: userInfo is undefined without user info", () => {
  assert.equal(parseUri("ws://localhost/").userInfo, undefined);
});

Deno.test("uri: userInfo is the user name and password", () => {
  assert.deepEqual(parseUri("ws://user:pass@localhost/").userInfo, ["user", "pass"]);
});

Deno.test("uri: userInfo keeps the IRI user info in URI form", () => {
  assert.deepEqual(parseUri("ws://üser:påss@høst/").userInfo, ["%C3%BCser", "p%C3%A5ss"]);
});

Deno.test("uri: userInfo gives an empty password when only the user name was constructed", () => {
  assert.deepEqual(new WebSocketURI(false, "h", 80, "", "", "u").userInfo, ["u", ""]);
});

Deno.test("uri: toString omits the default port", () => {
  assert.equal(parseUri("WS://LOCALHOST:80/a?b").toString(), "ws://localhost/a?b");
});

Deno.test("uri: toString omits the default wss port", () => {
  assert.equal(parseUri("wss://localhost:443").toString(), "wss://localhost/");
});

Deno.test("uri: toString keeps a port that is not the default", () => {
  assert.equal(parseUri("wss://localhost:80/").toString(), "wss://localhost:80/");
});

Deno.test("uri: toString puts an IPv6 address in brackets", () => {
  assert.equal(parseUri("ws://[::1]:8080/x").toString(), "ws://[::1]:8080/x");
});

Deno.test("uri: toString includes user info", () => {
  assert.equal(parseUri("ws://u:p@[::1]/").toString(), "ws://u:p@[::1]/");
});

Deno.test("uri: toString gives the URI form of an IRI", () => {
  assert.equal(
    parseUri("wss://üser:påss@høst:8443/πass?qùéry").toString(),
    "wss://%C3%BCser:p%C3%A5ss@xn--hst-0na:8443/%CF%80ass?q%C3%B9%C3%A9ry",
  );
});

Deno.test("uri: toString writes an empty password when only the user name was constructed", () => {
  assert.equal(new WebSocketURI(false, "h", 80, "", "", "u").toString(), "ws://u:@h/");
});

Deno.test("uri: toString output parses back to the same URI", () => {
  const uri = parseUri("wss://us@er:p:w@[2001:db8::1]:9/a/../b?c?d");
  assert.deepEqual(parseUri(uri.toString()), uri);
});

Deno.test("uri: template literals use toString", () => {
  assert.equal(`${parseUri("ws://localhost:8765")}`, "ws://localhost:8765/");
});
