// The chat demo (examples/chat/): the --seconds run as a subprocess, the
// server's checks of incoming messages, and two people chatting in a real
// browser (Debian's chromium driven by playwright-core).

import assert from "node:assert/strict";
import { chromium, type Page } from "npm:playwright-core@1";
import { connect } from "../client.ts";
import type { StreamConnection } from "../connection.ts";
import { ChatServer } from "../examples/chat/chat_server.ts";
import { parseClientMessage } from "../examples/chat/messages.ts";
import { ignoreWithout } from "./_ci.ts";

const MAIN = new URL("../examples/chat/main.ts", import.meta.url).pathname;
const PAGE = await Deno.readTextFile(new URL("../examples/chat/index.html", import.meta.url));
const CHROMIUM = "/usr/bin/chromium";

function withChat(fn: (chat: ChatServer) => Promise<void>): () => Promise<void> {
  return async () => {
    const chat = new ChatServer({ port: 0, page: PAGE });
    try {
      await fn(chat);
    } finally {
      await chat.close();
    }
  };
}

function chatUrl(chat: ChatServer): string {
  return `ws://127.0.0.1:${chat.port}/chat`;
}

/** Sends `data` and resolves with the close code and reason the server answers with. */
async function closedAfter(
  ws: StreamConnection,
  data: string | Uint8Array,
): Promise<{ code: number; reason: string }> {
  await ws.send(data);
  const { code, reason } = await ws.closed;
  return { code, reason };
}

/** The next message of `type` (and with `key` set, if given), skipping others. */
async function next(
  ws: StreamConnection,
  type: string,
  key?: string,
): Promise<Record<string, unknown>> {
  while (true) {
    const message = JSON.parse(String(await ws.recv()));
    if (message.type === type && (key === undefined || key in message)) return message;
  }
}

async function join(chat: ChatServer, name: string): Promise<StreamConnection> {
  const ws = await connect(chatUrl(chat));
  await ws.send(JSON.stringify({ type: "hello", name }));
  await next(ws, "welcome");
  return ws;
}

// ---- main.ts as a subprocess ----

Deno.test("demo: a --seconds run with 5 bots delivers every message and exits 0", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--port", "0", "--bots", "5", "--seconds", "3", "--rate", "2"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
    signal: AbortSignal.timeout(20_000), // kills the child if it hangs
  }).output();
  const stdout = new TextDecoder().decode(output.stdout);
  const stderr = new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 0, stdout + stderr);
  assert.match(stdout, /^chat demo: open http:\/\/127\.0\.0\.1:\d+\/ in a browser$/m);
  const summary = stdout.trim().split("\n").at(-1) ?? "";
  const match = summary.match(/^demo: (\d+) clients?, (\d+) messages? delivered, (\d+) lost$/);
  assert.ok(match, `no summary line in:\n${stdout}`);
  const [clients, delivered, lost] = match.slice(1).map(Number);
  assert.deepEqual({ clients, lost }, { clients: 5, lost: 0 });
  // 5 bots × 2 messages/s × 3 s, each message delivered to the 5 of them.
  assert.ok(delivered > 0, summary);
  assert.equal(delivered % 5, 0, summary);
});

Deno.test("demo: with one bot the lines speak of 1 client", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--port", "0", "--bots", "1", "--seconds", "1", "--rate", "1"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
    signal: AbortSignal.timeout(20_000),
  }).output();
  const stdout = new TextDecoder().decode(output.stdout);
  assert.equal(output.code, 0, stdout + new TextDecoder().decode(output.stderr));
  const lines = stdout.trim().split("\n");
  assert.equal(lines[2], "1 simulated client chatting, 1 message/s each");
  assert.match(lines.at(-1) ?? "", /^demo: 1 client, \d+ messages? delivered, 0 lost$/);
});

// The first command on a fresh machine: `deno task demo` with an empty Deno
// cache must not install the npm packages the tests and the bench use (they
// are locked in tests/deno.lock and bench/deno.lock, not in a project lock),
// so the task prints nothing before its own lines but Deno's "Task" header.
Deno.test("demo: deno task demo with an empty cache installs nothing first", async () => {
  const denoDir = await Deno.makeTempDir();
  try {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["task", "demo", "--port", "0", "--bots", "1", "--seconds", "1"],
      cwd: new URL("..", import.meta.url).pathname,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", DENO_DIR: denoDir },
      signal: AbortSignal.timeout(60_000),
    }).output();
    const stdout = new TextDecoder().decode(output.stdout);
    const stderr = new TextDecoder().decode(output.stderr);
    assert.equal(output.code, 0, stdout + stderr);
    assert.deepEqual(stderr.trim().split("\n").map((line) => line.split(" ").slice(0, 2)), [
      ["Task", "demo"],
    ]);
    assert.match(stdout, /^chat demo: open http:\/\/127\.0\.0\.1:\d+\/ in a browser\n/);
  } finally {
    await Deno.remove(denoDir, { recursive: true });
  }
});

Deno.test("demo: main.ts rejects a bad option with exit status 2", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "--bots=-1"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(20_000),
  }).output();
  const stderr = new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 2);
  assert.equal(stderr.split("\n")[0], "invalid --bots -1: expected an integer from 0 to 10000");
});

// ---- Message checks ----

Deno.test("demo: parseClientMessage accepts hello, chat and ping, trimming the name", () => {
  assert.deepEqual(parseClientMessage('{"type":"hello","name":"  alice "}'), {
    ok: true,
    message: { type: "hello", name: "alice" },
  });
  assert.deepEqual(
    parseClientMessage('{"type":"chat","text":"hi ✓","id":"m1","sentAt":12.5,"extra":1}'),
    { ok: true, message: { type: "chat", text: "hi ✓", id: "m1", sentAt: 12.5 } },
  );
  assert.deepEqual(parseClientMessage('{"type":"ping","sentAt":0}'), {
    ok: true,
    message: { type: "ping", sentAt: 0 },
  });
});

Deno.test("demo: parseClientMessage rejects malformed JSON and wrong shapes", () => {
  const reasons = [
    "{",
    "[]",
    "null",
    '"hello"',
    "{}",
    '{"type":"nope"}',
    '{"type":"hello"}',
    '{"type":"hello","name":"   "}',
    '{"type":"hello","name":"a\\u0000b"}',
    '{"type":"hello","name":"\\u202Eevil"}',
    '{"type":"chat","text":"hi","id":"m1"}',
    '{"type":"chat","text":"hi","id":7,"sentAt":1}',
    '{"type":"chat","text":" ","id":"m1","sentAt":1}',
    '{"type":"ping","sentAt":"now"}',
  ].map((data) => parseClientMessage(data));
  assert.deepEqual(reasons, [
    { ok: false, reason: "invalid JSON" },
    { ok: false, reason: "a message must be a JSON object" },
    { ok: false, reason: "a message must be a JSON object" },
    { ok: false, reason: "a message must be a JSON object" },
    { ok: false, reason: "type must be a string" },
    { ok: false, reason: 'unknown message type "nope"' },
    { ok: false, reason: "name must be a string" },
    { ok: false, reason: "name is empty" },
    { ok: false, reason: "name contains control characters" },
    { ok: false, reason: "name contains control characters" },
    { ok: false, reason: "sentAt must be a finite number" },
    { ok: false, reason: "id must be a string" },
    { ok: false, reason: "text is empty" },
    { ok: false, reason: "sentAt must be a finite number" },
  ]);
});

Deno.test("demo: parseClientMessage rejects names over 24 and texts over 500 characters", () => {
  const chat = (text: string) => JSON.stringify({ type: "chat", text, id: "m", sentAt: 1 });
  const hello = (name: string) => JSON.stringify({ type: "hello", name });
  assert.deepEqual(
    [
      parseClientMessage(hello("é".repeat(24))).ok,
      parseClientMessage(hello("é".repeat(25))),
      parseClientMessage(hello("x".repeat(100_000))),
      parseClientMessage(chat("😀".repeat(500))).ok,
      parseClientMessage(chat("😀".repeat(501))),
    ],
    [
      true,
      { ok: false, reason: "name is 25 characters, the limit is 24" },
      { ok: false, reason: "name is 100000 characters, the limit is 24" },
      true,
      { ok: false, reason: "text is 501 characters, the limit is 500" },
    ],
  );
});

// ---- The server against bad clients ----

Deno.test(
  "demo: the server closes 1008 on a message that isn't JSON and goes on serving",
  withChat(async (chat) => {
    const bad = await connect(chatUrl(chat));
    assert.deepEqual(await closedAfter(bad, "{not json"), { code: 1008, reason: "invalid JSON" });
    const alice = await join(chat, "alice");
    await alice.send(JSON.stringify({ type: "chat", text: "still here", id: "1", sentAt: 1 }));
    assert.deepEqual(await next(alice, "chat"), {
      type: "chat",
      seq: 1,
      from: "alice",
      text: "still here",
      id: "1",
      sentAt: 1,
    });
    await alice.close();
  }),
);

Deno.test(
  "demo: the server closes 1003 on a binary message",
  withChat(async (chat) => {
    const ws = await connect(chatUrl(chat));
    assert.deepEqual(await closedAfter(ws, new Uint8Array([1, 2, 3])), {
      code: 1003,
      reason: "binary messages are not supported",
    });
  }),
);

Deno.test(
  "demo: the server closes 1008 on an oversize name",
  withChat(async (chat) => {
    const ws = await connect(chatUrl(chat));
    assert.deepEqual(
      await closedAfter(ws, JSON.stringify({ type: "hello", name: "n".repeat(25) })),
      {
        code: 1008,
        reason: "name is 25 characters, the limit is 24",
      },
    );
    assert.equal(chat.members.size, 0);
  }),
);

Deno.test(
  "demo: the server closes 1008 on an oversize text and tells nobody",
  withChat(async (chat) => {
    const alice = await join(chat, "alice");
    const bob = await join(chat, "bob");
    const text = "t".repeat(501);
    assert.deepEqual(
      await closedAfter(bob, JSON.stringify({ type: "chat", text, id: "1", sentAt: 1 })),
      { code: 1008, reason: "text is 501 characters, the limit is 500" },
    );
    assert.deepEqual(await next(alice, "presence", "left"), {
      type: "presence",
      names: ["alice"],
      left: "bob",
    });
    assert.equal(chat.seq, 0);
    await alice.close();
  }),
);

Deno.test(
  "demo: the server closes 1009 on a message over 8 KiB",
  withChat(async (chat) => {
    const ws = await connect(chatUrl(chat));
    const { code } = await closedAfter(
      ws,
      JSON.stringify({ type: "hello", name: "x".repeat(9000) }),
    );
    assert.equal(code, 1009);
  }),
);

Deno.test(
  "demo: the server closes 1008 on chat before hello",
  withChat(async (chat) => {
    const ws = await connect(chatUrl(chat));
    assert.deepEqual(
      await closedAfter(ws, JSON.stringify({ type: "chat", text: "hi", id: "1", sentAt: 1 })),
      { code: 1008, reason: "say hello first: chat before joining" },
    );
  }),
);

Deno.test(
  "demo: the server closes 1008 on a second hello",
  withChat(async (chat) => {
    const ws = await join(chat, "alice");
    assert.deepEqual(await closedAfter(ws, JSON.stringify({ type: "hello", name: "eve" })), {
      code: 1008,
      reason: "already joined: hello is sent once per connection",
    });
  }),
);

Deno.test(
  "demo: the server cuts a long close reason to 123 bytes",
  withChat(async (chat) => {
    const ws = await connect(chatUrl(chat));
    const { code, reason } = await closedAfter(ws, JSON.stringify({ type: "\u0001".repeat(24) }));
    assert.deepEqual({ code, bytes: new TextEncoder().encode(reason).length <= 123 }, {
      code: 1008,
      bytes: true,
    });
    assert.ok(reason.startsWith('unknown message type "\\u0001'), reason);
  }),
);

Deno.test(
  "demo: the server gives a name already taken a suffix",
  withChat(async (chat) => {
    const first = await join(chat, "alice");
    const second = await connect(chatUrl(chat));
    await second.send(JSON.stringify({ type: "hello", name: "alice" }));
    assert.deepEqual(await next(second, "welcome"), {
      type: "welcome",
      name: "alice (2)",
      seq: 0,
      compression: "permessage-deflate",
    });
    await first.close();
    await second.close();
  }),
);

Deno.test(
  "demo: the server serves the page at / and refuses cross-origin WebSocket handshakes",
  withChat(async (chat) => {
    const base = `http://127.0.0.1:${chat.port}`;
    const page = await fetch(`${base}/`);
    const missing = await fetch(`${base}/nope`);
    assert.deepEqual(
      {
        page: [page.status, page.headers.get("content-type"), await page.text()],
        missing: [missing.status, await missing.text()],
      },
      {
        page: [200, "text/html; charset=utf-8", PAGE],
        missing: [404, "Not found\n"],
      },
    );
    await assert.rejects(
      async () => await connect(chatUrl(chat), { origin: "http://evil.example" }),
      (error: Error) => error.name === "InvalidStatus" && error.message.includes("403"),
    );
  }),
);

// ---- Two people in a real browser ----

async function fileExists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

const hasChromium = await fileExists(CHROMIUM);

/**
 * Waits until `fn` is true in `page`, polling every 50 ms (the default,
 * requestAnimationFrame, doesn't run in a page that isn't in front).
 */
async function until(
  page: Page,
  fn: (arg: string | null) => unknown,
  arg: string | null,
  timeout = 5_000,
): Promise<void> {
  await page.waitForFunction(fn, arg, { polling: 50, timeout });
}

// The few DOM members used by the functions that run in the page (Deno's
// type checking has no DOM library).
interface PageElement {
  readonly textContent: string | null;
  getAttribute(name: string): string | null;
  querySelector(selector: string): PageElement | null;
}
declare const document: {
  querySelector(selector: string): PageElement | null;
  querySelectorAll(selector: string): ArrayLike<PageElement> & Iterable<PageElement>;
};

/** Kills (SIGKILL) any process still using `profile` as its user data dir. */
async function killBrowsersUsing(profile: string): Promise<void> {
  for await (const entry of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    let cmdline: string;
    try {
      cmdline = await Deno.readTextFile(`/proc/${entry.name}/cmdline`);
    } catch {
      continue; // gone meanwhile
    }
    if (cmdline.split("\0").includes(`--user-data-dir=${profile}`)) {
      try {
        Deno.kill(Number(entry.name), "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
  }
}

Deno.test({
  name: "demo: two people chat in chromium, see each other online and reconnect after a restart",
  ignore: ignoreWithout(hasChromium),
  // playwright keeps internal timers and pipes across its calls.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    if (!hasChromium) {
      throw new Error(`${CHROMIUM} is missing: install the chromium package (.ci/apt-packages)`);
    }
    const dir = await Deno.makeTempDir({ prefix: "demo_test_" });
    const profile = `${dir}/profile`;
    let chat = new ChatServer({ port: 0, page: PAGE });
    const port = chat.port;
    const url = `http://127.0.0.1:${port}/`;
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-quic",
      ],
      viewport: { width: 960, height: 600 },
      timeout: 15_000,
    });
    try {
      context.setDefaultTimeout(5_000);
      const alice = context.pages()[0] ?? await context.newPage();
      const bob = await context.newPage();
      const errors: string[] = [];
      for (const page of [alice, bob]) {
        page.on("pageerror", (error) => errors.push(String(error)));
        page.on("console", (message) => {
          // Refused reconnections while the server restarts are expected.
          if (message.type() === "error" && !message.text().includes("ERR_CONNECTION_REFUSED")) {
            errors.push(message.text());
          }
        });
      }

      // Both join at the same time (each playwright action takes a while).
      await Promise.all(
        ([[alice, "alice"], [bob, "bob"]] as const).map(async ([page, name]) => {
          await page.goto(url);
          await page.fill("#name", name);
          await page.click("#join");
          await until(page, (name) =>
            document.querySelector("#me")?.textContent === name &&
            document.querySelector("#send")?.getAttribute("disabled") === null, name);
        }),
      );
      await Promise.all(
        [alice, bob].map((page) =>
          until(page, () => document.querySelectorAll("#online li").length === 2, null)
        ),
      );

      // Alice speaks first; Bob answers once he has read her.
      await alice.fill("#text", "hello from alice");
      await alice.press("#text", "Enter");
      await until(
        bob,
        () => document.querySelector("#log")?.textContent?.includes("hello from alice"),
        null,
      );
      await bob.fill("#text", "hi alice, bob here");
      await bob.press("#text", "Enter");

      const seen = (page: Page) =>
        page.evaluate(() => ({
          chat: [...document.querySelectorAll("#log .row:not(.system)")].map((row) => [
            row.querySelector(".from")?.textContent,
            row.querySelector(".text")?.textContent,
          ]),
          online: [...document.querySelectorAll("#online li")].map((li) => li.textContent),
          state: document.querySelector("#state")?.getAttribute("data-state"),
          compression: document.querySelector("#compression")?.textContent,
          mine: [...document.querySelectorAll("#log .row.mine .rtt")].map((rtt) =>
            /^\d+\.\d ms$/.test(rtt.textContent ?? "")
          ),
        }));
      await Promise.all(
        [alice, bob].map((page) =>
          until(page, () => document.querySelectorAll("#log .row:not(.system)").length === 2, null)
        ),
      );
      const expected = {
        chat: [["alice", "hello from alice"], ["bob", "hi alice, bob here"]],
        online: ["alice", "bob"],
        state: "open",
        compression: "permessage-deflate",
        mine: [true],
      };
      assert.deepEqual(await seen(alice), expected);
      assert.deepEqual(await seen(bob), expected);

      // The server negotiated permessage-deflate with the browser itself.
      const members = [...chat.members.values()].map((member) => ({
        name: member.name,
        compression: member.compression,
        chromium: member.userAgent?.includes("Chrome/") ?? false,
      })).sort((a, b) => a.name.localeCompare(b.name));
      assert.deepEqual(members, [
        { name: "alice", compression: "permessage-deflate", chromium: true },
        { name: "bob", compression: "permessage-deflate", chromium: true },
      ]);

      await until(
        alice,
        () => /\d ms$/.test(document.querySelector("#latency")?.textContent ?? ""),
        null,
      );
      const screenshot = `${dir}/demo.png`;
      await alice.screenshot({ path: screenshot });
      console.log(`screenshot: ${screenshot}`);

      // The server restarts on the same port: both pages notice, reconnect and join again.
      await chat.close();
      await Promise.all(
        [alice, bob].map((page) =>
          until(
            page,
            () => document.querySelector("#state")?.getAttribute("data-state") === "closed",
            null,
          )
        ),
      );
      chat = new ChatServer({ port, page: PAGE });
      await Promise.all(
        [alice, bob].map((page) =>
          until(page, () => document.querySelectorAll("#online li").length === 2, null, 10_000)
        ),
      );
      assert.deepEqual([...chat.members.values()].map((member) => member.name).sort(), [
        "alice",
        "bob",
      ]);
      assert.deepEqual(errors, []);
    } finally {
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        await Promise.race([
          context.close(),
          new Promise((resolve) => (timer = setTimeout(resolve, 5_000))),
        ]);
      } finally {
        clearTimeout(timer);
        await killBrowsersUsing(profile);
        await chat.close();
        await Deno.remove(profile, { recursive: true }).catch(() => {});
      }
    }
  },
});
