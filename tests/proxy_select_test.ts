// Choosing a proxy, without sockets: proxy URLs, the environment variables and NO_PROXY.

import assert from "node:assert/strict";
import { bypassProxy, environment, parseIp, parseProxy, proxyFromEnv, readEnv } from "../_proxy.ts";
import { InvalidProxy } from "../errors.ts";
import { parseUri } from "../uri.ts";

function env(values: Record<string, string>): (name: string) => string | undefined {
  return (name) => values[name];
}

// ---------------------------------------------------------------- proxy URLs

Deno.test("proxy: parses an http proxy URL with its port", () => {
  assert.deepEqual(parseProxy("http://proxy.example:3128"), {
    scheme: "http",
    host: "proxy.example",
    port: 3128,
    username: undefined,
    password: undefined,
    display: "http://proxy.example:3128",
  });
});

Deno.test("proxy: fills in the default port of each scheme", () => {
  assert.deepEqual(
    ["http://p", "https://p", "socks5://p", "socks5h://p", "http://p:80"].map((url) =>
      parseProxy(url).port
    ),
    [80, 443, 1080, 1080, 80],
  );
});

Deno.test("proxy: keeps an explicit port 80 on a socks5 proxy", () => {
  assert.equal(parseProxy("socks5://p:80").port, 80);
});

Deno.test("proxy: percent-decodes the credentials and leaves them out of display", () => {
  const proxy = parseProxy("socks5h://us%40er:p%3Ass%20w@127.0.0.1:1080");
  assert.deepEqual(
    [proxy.username, proxy.password, proxy.display],
    ["us@er", "p:ss w", "socks5h://127.0.0.1:1080"],
  );
});

Deno.test("proxy: a user name without a password has an empty password", () => {
  const proxy = parseProxy("http://user@127.0.0.1:3128");
  assert.deepEqual([proxy.username, proxy.password], ["user", ""]);
});

Deno.test("proxy: lower-cases the host and strips IPv6 brackets", () => {
  assert.deepEqual(
    [parseProxy("SOCKS5://Proxy.Example:1080").host, parseProxy("http://[::1]:3128").host],
    ["proxy.example", "::1"],
  );
  assert.equal(parseProxy("http://[::1]:3128").display, "http://[::1]:3128");
});

Deno.test("proxy: assumes http:// for a URL without a scheme, as curl does", () => {
  assert.equal(parseProxy("proxy.example:3128").display, "http://proxy.example:3128");
});

Deno.test("proxy: rejects other schemes, paths and missing hosts with InvalidProxy", () => {
  const reasons = ["ftp://p:21", "http://p:3128/path", "http://p:3128?x", "socks5://", "http://:1"]
    .map((url) => {
      try {
        parseProxy(url);
        return "parsed";
      } catch (error) {
        assert.ok(error instanceof InvalidProxy);
        return error.reason;
      }
    });
  assert.deepEqual(reasons, [
    "scheme isn't http, https, socks5 or socks5h",
    "a proxy URL has no path, query or fragment",
    "a proxy URL has no path, query or fragment",
    "invalid host",
    "not a URL",
  ]);
});

Deno.test("proxy: InvalidProxy never shows the credentials", () => {
  assert.throws(
    () => parseProxy("ftp://user:secret@p:21"),
    (error) =>
      error instanceof InvalidProxy && !error.message.includes("secret") &&
      error.message === "ftp://***@p:21 isn't a valid proxy: " +
          "scheme isn't http, https, socks5 or socks5h",
  );
});

Deno.test("proxy: an HTTP proxy's user name can't contain ':', a SOCKS5 one's can", () => {
  assert.throws(
    () => parseProxy("http://a%3Ab:c@p:1"),
    (error) =>
      error instanceof InvalidProxy &&
      error.reason === "the user name of an HTTP proxy can't contain ':'",
  );
  assert.equal(parseProxy("socks5://a%3Ab:c@p:1").username, "a:b");
});

Deno.test("proxy: rejects invalid percent-encoding in the credentials", () => {
  assert.throws(
    () => parseProxy("http://a%ZZ:b@p:1"),
    (error) => error instanceof InvalidProxy && /invalid/.test(error.reason),
  );
});

// ---------------------------------------------------------------- environment

const ws = parseUri("ws://example.com/");
const wss = parseUri("wss://example.com/");

Deno.test("proxy: ws: uses HTTP_PROXY and wss: uses HTTPS_PROXY", () => {
  const vars = env({ HTTP_PROXY: "http://plain:1", HTTPS_PROXY: "http://secure:2" });
  assert.deepEqual(
    [proxyFromEnv(ws, vars)?.display, proxyFromEnv(wss, vars)?.display],
    ["http://plain:1", "http://secure:2"],
  );
});

Deno.test("proxy: lower-case variables come before upper-case ones", () => {
  const vars = env({ http_proxy: "http://lower:1", HTTP_PROXY: "http://upper:2" });
  assert.equal(proxyFromEnv(ws, vars)?.display, "http://lower:1");
});

Deno.test("proxy: upper-case variables are read when lower-case ones are missing", () => {
  assert.equal(
    proxyFromEnv(wss, env({ HTTPS_PROXY: "socks5h://upper:1080" }))?.display,
    "socks5h://upper:1080",
  );
});

Deno.test("proxy: ALL_PROXY is the fallback of both schemes", () => {
  const vars = env({ all_proxy: "socks5://all:1080", HTTP_PROXY: "http://plain:1" });
  assert.deepEqual(
    [proxyFromEnv(ws, vars)?.display, proxyFromEnv(wss, vars)?.display],
    ["http://plain:1", "socks5://all:1080"],
  );
});

Deno.test("proxy: an empty variable counts as unset", () => {
  const vars = env({ http_proxy: "", HTTP_PROXY: "http://upper:2" });
  assert.equal(proxyFromEnv(ws, vars)?.display, "http://upper:2");
});

Deno.test("proxy: no variable, no proxy", () => {
  assert.equal(proxyFromEnv(ws, env({ HTTPS_PROXY: "http://secure:2" })), undefined);
});

Deno.test("proxy: NO_PROXY exempts a host from the environment's proxy", () => {
  const vars = env({ HTTP_PROXY: "http://p:1", no_proxy: "other.org, example.com" });
  assert.deepEqual(
    [proxyFromEnv(ws, vars), proxyFromEnv(parseUri("ws://example.net/"), vars)?.display],
    [undefined, "http://p:1"],
  );
});

Deno.test("proxy: an invalid proxy in the environment throws InvalidProxy naming the variable", () => {
  assert.throws(
    () => proxyFromEnv(wss, env({ HTTPS_PROXY: "ftp://p" })),
    (error) =>
      error instanceof InvalidProxy &&
      error.reason === "scheme isn't http, https, socks5 or socks5h (from HTTPS_PROXY)",
  );
});

Deno.test("proxy: readEnv and environment() read a variable the program may read", () => {
  // Tests run with -A: PATH is readable. (Without the permission: tests/proxy_test.ts.)
  assert.deepEqual(
    [readEnv("PATH"), environment()("PATH")],
    [Deno.env.get("PATH"), Deno.env.get("PATH")],
  );
});

// ---------------------------------------------------------------- NO_PROXY

function bypassed(noProxy: string, hosts: string[], port = 80): boolean[] {
  return hosts.map((host) => bypassProxy(host, port, noProxy));
}

Deno.test("proxy: NO_PROXY host names match themselves and their subdomains", () => {
  assert.deepEqual(
    bypassed("example.com", ["example.com", "a.example.com", "a.b.example.com", "badexample.com"]),
    [true, true, true, false],
  );
});

Deno.test("proxy: NO_PROXY .example.com and *.example.com match as example.com does", () => {
  assert.deepEqual(
    bypassed(".example.com,*.other.org", ["example.com", "a.example.com", "x.other.org"]),
    [true, true, true],
  );
});

Deno.test("proxy: NO_PROXY matches case-insensitively and ignores a trailing dot", () => {
  assert.deepEqual(bypassed("Example.COM.", ["a.example.com", "EXAMPLE.com."]), [true, true]);
});

Deno.test("proxy: NO_PROXY * matches every host", () => {
  assert.deepEqual(bypassed(" * ", ["example.com", "10.1.2.3", "::1"]), [true, true, true]);
});

Deno.test("proxy: NO_PROXY entries with a port match that port only", () => {
  assert.deepEqual(
    [
      bypassProxy("example.com", 8080, "example.com:8080"),
      bypassProxy("example.com", 80, "example.com:8080"),
      bypassProxy("10.0.0.1", 443, "10.0.0.1:443"),
      bypassProxy("::1", 8080, "[::1]:8080"),
      bypassProxy("::1", 80, "[::1]:8080"),
    ],
    [true, false, true, true, false],
  );
});

Deno.test("proxy: NO_PROXY IP addresses match the same address in any notation", () => {
  assert.deepEqual(
    bypassed("127.0.0.1, ::1, [2001:db8::5]", [
      "127.0.0.1",
      "127.0.0.2",
      "0:0:0:0:0:0:0:1",
      "2001:db8:0:0:0:0:0:5",
      "2001:db8::6",
    ]),
    [true, false, true, true, false],
  );
});

Deno.test("proxy: NO_PROXY CIDR ranges match IPv4 and IPv6 addresses inside them", () => {
  assert.deepEqual(
    bypassed("10.0.0.0/8, 192.168.1.128/25, fd00::/8, 2001:db8::/33", [
      "10.255.1.2",
      "11.0.0.1",
      "192.168.1.200",
      "192.168.1.100",
      "fd12:3456::1",
      "fe80::1",
      "2001:db8:7fff::1",
      "2001:db8:8000::1",
    ]),
    [true, false, true, false, true, false, true, false],
  );
});

Deno.test("proxy: NO_PROXY addresses and ranges never match host names, nor IPv4 IPv6", () => {
  assert.deepEqual(
    bypassed("10.0.0.0/8, 127.0.0.1, ::/0", ["ten.example", "localhost", "10.0.0.1.example"]),
    [false, false, false],
  );
  assert.deepEqual(bypassed("::/0", ["127.0.0.1"]), [false]);
});

Deno.test("proxy: NO_PROXY ignores empty entries and malformed ranges", () => {
  assert.deepEqual(
    bypassed(",, 10.0.0.0/33, 10.0.0.0/x, .", ["10.0.0.1", "example.com"]),
    [false, false],
  );
});

Deno.test("proxy: parseIp reads IPv4 and IPv6 addresses, embedded IPv4 included", () => {
  assert.deepEqual(
    ["1.2.3.4", "256.1.1.1", "::ffff:1.2.3.4", "1::", "host", "1:2"].map((text) => {
      const bytes = parseIp(text);
      return bytes === undefined ? undefined : [...bytes];
    }),
    [
      [1, 2, 3, 4],
      undefined,
      [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4],
      [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
      undefined,
      undefined,
    ],
  );
});
