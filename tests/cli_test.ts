import assert from "node:assert/strict";
import { serve } from "../server.ts";
import { RawServer, startCli } from "./_helpers.ts";

const cli = new URL("../cli.ts", import.meta.url).pathname;

async function runCli(
  args: string[],
  stdin: string,
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, ...args],
    env,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(stdin));
  await writer.close();
  const output = await child.output();
  return {
    code: output.code,
    stdout: new TextDecoder().decode(output.stdout),
    stderr: new TextDecoder().decode(output.stderr),
  };
}

Deno.test("cli: sends typed lines, prints replies and closes cleanly on end of input", async () => {
  const received: string[] = [];
  const server = serve(async (ws) => {
    await ws.send(new Uint8Array([1, 2]));
    for await (const message of ws) {
      received.push(String(message));
      await ws.send(message);
    }
  }, { hostname: "127.0.0.1", port: 0 });
  const uri = `ws://127.0.0.1:${server.port}/`;
  await using session = startCli([uri]);
  try {
    // Types a line once the previous answer is on screen, as a person would.
    await session.waitFor(/< \(binary\) 2 bytes: 01 02\n/);
    await session.type("first");
    await session.waitFor(/< first\n/);
    await session.type("/ping");
    await session.waitFor(/= pong in [0-9.]+ ms\n/);
    await session.endInput();
    await session.waitFor(/Connection closed: .*\n/);
    const { code } = await session.status;
    assert.equal(code, 0);
    const lines = session.stdout.trim().split("\n");
    assert.deepEqual(lines, [
      `Connected to ${uri}`,
      "< (binary) 2 bytes: 01 02",
      "< first",
      lines[3],
      "Connection closed: 1000 (OK).",
    ]);
    assert.match(lines[3], /^= pong in [0-9.]+ ms$/);
    assert.deepEqual(received, ["first"]);
  } finally {
    await server.close();
  }
});

Deno.test("cli: a refused connection is a one-line error and exit status 1", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const { code, stdout, stderr } = await runCli([`ws://127.0.0.1:${port}/`], "");
  assert.equal(code, 1);
  assert.equal(stdout, "");
  assert.match(stderr, /^Failed to connect to ws:\/\/127\.0\.0\.1:\d+\/: .*refused/i);
  assert.doesNotMatch(stderr, /\bat /);
});

Deno.test("cli: a bad URI is exit status 2 without a stack trace", async () => {
  const { code, stderr } = await runCli(["http://example.com/"], "");
  assert.equal(code, 2);
  assert.equal(
    stderr.trim(),
    "error: http://example.com/ isn't a valid URI: scheme isn't ws or wss",
  );
});

Deno.test("cli: a handshake rejection names the HTTP status", async () => {
  const server = serve(() => {}, {
    hostname: "127.0.0.1",
    port: 0,
    processRequest: (connection) => connection.respond(403, "go away\n"),
  });
  try {
    const { code, stderr } = await runCli([`ws://127.0.0.1:${server.port}/`], "");
    assert.equal(code, 1);
    assert.match(stderr, /server rejected the handshake with HTTP 403 Forbidden/);
  } finally {
    await server.close();
  }
});

Deno.test("cli: --header, --subprotocol and --origin reach the server", async () => {
  let seen: [string | undefined, string | undefined, string | undefined] = [
    undefined,
    undefined,
    undefined,
  ];
  const server = serve(async (ws) => {
    const headers = ws.request!.headers;
    seen = [headers.get("X-Token"), ws.subprotocol, headers.get("Origin")];
    await ws.close();
  }, { hostname: "127.0.0.1", port: 0, subprotocols: ["chat"] });
  try {
    const { code, stdout, stderr } = await runCli([
      "--header",
      "X-Token: abc",
      "--subprotocol",
      "chat",
      "--origin",
      "https://example.com",
      "--no-compression",
      `ws://127.0.0.1:${server.port}/`,
    ], "");
    assert.equal(code, 0, stdout + stderr);
    assert.match(stdout, /\(subprotocol chat\)/);
    assert.deepEqual(seen, ["abc", "chat", "https://example.com"]);
  } finally {
    await server.close();
  }
});

/** A proxy that answers every CONNECT with 407; its URL. */
function refusingProxy(): RawServer {
  return new RawServer(async (peer) => {
    await peer.readHead();
    await peer.write("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n");
  });
}

Deno.test("cli: --proxy connects through the proxy, whose refusal is one line", async () => {
  await using proxy = refusingProxy();
  const { code, stdout, stderr } = await runCli(
    ["--proxy", `http://user:secret@127.0.0.1:${proxy.port}`, "ws://127.0.0.1:9/"],
    "",
  );
  assert.deepEqual([code, stdout, stderr], [
    1,
    "",
    `Failed to connect to ws://127.0.0.1:9/: proxy http://127.0.0.1:${proxy.port} failed: ` +
    "HTTP 407 Proxy Authentication Required\n",
  ]);
});

Deno.test("cli: without --proxy the proxy comes from the environment", async () => {
  await using proxy = refusingProxy();
  const { code, stderr } = await runCli(["ws://127.0.0.1:9/"], "", {
    HTTP_PROXY: `http://127.0.0.1:${proxy.port}`,
    NO_PROXY: "",
  });
  assert.deepEqual([code, stderr], [
    1,
    `Failed to connect to ws://127.0.0.1:9/: proxy http://127.0.0.1:${proxy.port} failed: ` +
    "HTTP 407 Proxy Authentication Required\n",
  ]);
});

Deno.test("cli: a bad --proxy is exit status 2 without a stack trace", async () => {
  const { code, stderr } = await runCli(["--proxy", "ftp://proxy:21", "ws://127.0.0.1:9/"], "");
  assert.deepEqual([code, stderr], [
    2,
    "error: ftp://proxy:21 isn't a valid proxy: scheme isn't http, https, socks5 or socks5h\n",
  ]);
});
