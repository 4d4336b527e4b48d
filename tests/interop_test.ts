// Interoperability over real loopback sockets with other implementations:
// Deno's built-in WebSocket client and Deno.upgradeWebSocket server, npm `ws`
// under Node, and Python's `websockets` (Debian's python3-websockets).
//
// A missing Node or Python peer skips its tests locally (they show as
// ignored); when the CI environment variable is set, it fails them.

import assert from "node:assert/strict";
import { connect } from "../client.ts";
import type { Message, StreamConnection } from "../connection.ts";
import type { ServerConnection } from "../server.ts";
import { ignoreWithout } from "./_ci.ts";
import {
  commandSucceeds,
  deferred,
  echo,
  HOST,
  PeerProcess,
  randomBytes,
  selfSignedCert,
  serveLocal,
  TIMER_SLACK,
  within,
} from "./_helpers.ts";

const PEERS = new URL("./peers/", import.meta.url).pathname;
const MIB = 1024 * 1024;
const UNICODE = "héllo wörld — 你好 🎉";
/** The messages every peer must round-trip unchanged. */
const MESSAGES: Message[] = [
  "hello",
  new Uint8Array([0, 1, 2, 253, 254, 255]),
  "",
  new Uint8Array(0),
  UNICODE,
  "compressible ".repeat(500),
];

function sameBytes(a: Message, b: Message): boolean {
  if (typeof a === "string" || typeof b === "string") return a === b;
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

/** Sends each message and collects the echoes. */
async function roundTrip(ws: StreamConnection, messages: Message[]): Promise<Message[]> {
  const replies: Message[] = [];
  for (const message of messages) {
    await ws.send(message);
    replies.push(await ws.recv());
  }
  return replies;
}

// ---- peers in child processes

interface Peer {
  name: string;
  available: boolean;
  why: string;
  spawn(args: string[]): PeerProcess;
}

async function nodePeer(): Promise<Peer> {
  const spawn = (args: string[]) => new PeerProcess("node", [`${PEERS}ws_peer.mjs`, ...args]);
  const base = { name: "ws (Node)", spawn };
  if (!(await commandSucceeds("node", ["--version"]))) {
    return { ...base, available: false, why: "node is not installed" };
  }
  try {
    await Deno.stat(`${PEERS}node_modules/ws/package.json`);
  } catch {
    const installed = await commandSucceeds("npm", [
      "install",
      "--prefix",
      PEERS,
      "--no-audit",
      "--no-fund",
      "--silent",
    ]);
    if (!installed) return { ...base, available: false, why: "npm install ws failed" };
  }
  return { ...base, available: true, why: "" };
}

async function pythonPeer(): Promise<Peer> {
  const spawn = (args: string[]) =>
    new PeerProcess("/usr/bin/python3", [`${PEERS}websockets_peer.py`, ...args]);
  const available = await commandSucceeds("/usr/bin/python3", ["-c", "import websockets"]);
  return {
    name: "websockets (Python)",
    spawn,
    available,
    why: available
      ? ""
      : "python3-websockets is not installed (apt-get install -y python3-websockets)",
  };
}

const peers = [await nodePeer(), await pythonPeer()];

/** A test against `peer`: ignored locally when the peer is missing, failed in CI. */
function peerTest(peer: Peer, behaviour: string, fn: () => Promise<void>): void {
  Deno.test({
    name: `interop: ${peer.name} ${behaviour}`,
    ignore: ignoreWithout(peer.available),
    fn: async () => {
      if (!peer.available) assert.fail(`${peer.name} peer missing: ${peer.why}`);
      await fn();
    },
  });
}

/** Starts `peer` as a server and returns its URI. */
async function peerServer(peer: Peer): Promise<{ process: PeerProcess; uri: string }> {
  const process = peer.spawn(["server"]);
  try {
    const { port } = await process.next("listening", 10_000);
    return { process, uri: `ws://${HOST}:${port}/` };
  } catch (error) {
    await process.stop();
    throw error;
  }
}

for (const peer of peers) {
  // ---- our client → the peer's server

  peerTest(peer, "server ← our client: messages round-trip, compression negotiated", async () => {
    const { process, uri } = await peerServer(peer);
    try {
      const ws = await connect(uri);
      const replies = await roundTrip(ws, MESSAGES);
      await ws.send(["frag", "men", "ted"]);
      replies.push(await ws.recv());
      await ws.send("!fragments");
      replies.push(await ws.recv());
      assert.deepEqual(replies, [...MESSAGES, "fragmented", "fragmented"]);
      const opened = await process.next("open");
      assert.deepEqual(
        [
          ws.extensions.map((extension) => extension.name),
          String(opened.extensions).startsWith("permessage-deflate"),
        ],
        [["permessage-deflate"], true],
      );
      await ws.close();
    } finally {
      await process.stop();
    }
  });

  peerTest(peer, "server ← our client: a 10 MiB message with maxSize raised", async () => {
    const { process, uri } = await peerServer(peer);
    try {
      const big = randomBytes(10 * MIB, 7);
      const ws = await connect(uri, { maxSize: 16 * MIB });
      await ws.send(big);
      const reply = await ws.recv();
      assert.ok(sameBytes(reply, big), "10 MiB echo differs");
      await ws.close();
    } finally {
      await process.stop();
    }
  });

  peerTest(peer, "server ← our client: pings round-trip both ways", async () => {
    const { process, uri } = await peerServer(peer);
    try {
      const ws = await connect(uri);
      const latency = await within(ws.ping(), TIMER_SLACK, "pong");
      await ws.send("!ping");
      assert.deepEqual([latency >= 0, await ws.recv()], [true, "!pong-ok peer-ping"]);
      await ws.close();
    } finally {
      await process.stop();
    }
  });

  peerTest(peer, "server ← our client: close codes and reasons both ways", async () => {
    const { process, uri } = await peerServer(peer);
    try {
      const ours = await connect(uri);
      await ours.close(4000, "bye ü");
      const theirs = await connect(uri);
      await theirs.send("!close 4001 peer bye");
      const result = await within(theirs.closed, TIMER_SLACK, "peer close");
      const first = await process.next("close");
      assert.deepEqual(
        [
          { code: first.code, reason: first.reason },
          { code: result.code, reason: result.reason, wasClean: result.wasClean },
          (await ours.closed).wasClean,
        ],
        [{ code: 4000, reason: "bye ü" }, { code: 4001, reason: "peer bye", wasClean: true }, true],
      );
    } finally {
      await process.stop();
    }
  });

  // ---- the peer's client → our server

  peerTest(peer, "client → our server: messages round-trip, compression negotiated", async () => {
    const outcome = deferred<unknown>();
    const { server, uri } = serveLocal(async (ws) => {
      const replies = await roundTrip(ws, MESSAGES);
      await ws.send(["frag", "men", "ted"]);
      replies.push(await ws.recv());
      await ws.send("!fragments");
      replies.push(await ws.recv());
      outcome.resolve({ replies, extensions: ws.extensions.map((extension) => extension.name) });
    });
    const process = peer.spawn(["client", uri]);
    try {
      assert.deepEqual(await within(outcome.promise, 10_000, "exchange"), {
        replies: [...MESSAGES, "fragmented", "fragmented"],
        extensions: ["permessage-deflate"],
      });
      const opened = await process.next("open");
      assert.ok(
        String(opened.extensions).startsWith("permessage-deflate"),
        String(opened.extensions),
      );
      assert.deepEqual(await process.next("close"), { event: "close", code: 1000, reason: "" });
      assert.equal((await process.exited()).code, 0);
    } finally {
      await process.stop();
      await server.close();
    }
  });

  peerTest(peer, "client → our server: a 10 MiB message with maxSize raised", async () => {
    const outcome = deferred<boolean>();
    const big = randomBytes(10 * MIB, 11);
    const { server, uri } = serveLocal(async (ws) => {
      await ws.send(big);
      outcome.resolve(sameBytes(await ws.recv(), big));
    }, { maxSize: 16 * MIB });
    const process = peer.spawn(["client", uri]);
    try {
      assert.equal(await within(outcome.promise, 15_000, "10 MiB echo"), true);
      await process.exited();
    } finally {
      await process.stop();
      await server.close();
    }
  });

  peerTest(peer, "client → our server: pings round-trip both ways", async () => {
    const outcome = deferred<unknown>();
    const { server, uri } = serveLocal(async (ws) => {
      const latency = await ws.ping();
      await ws.send("!ping");
      outcome.resolve([latency >= 0, await ws.recv()]);
    });
    const process = peer.spawn(["client", uri]);
    try {
      assert.deepEqual(await within(outcome.promise, 5000, "pings"), [true, "!pong-ok peer-ping"]);
      await process.exited();
    } finally {
      await process.stop();
      await server.close();
    }
  });

  peerTest(peer, "client → our server: close codes and reasons both ways", async () => {
    let count = 0;
    const theirs = deferred<unknown>();
    const { server, uri } = serveLocal(async (ws: ServerConnection) => {
      if (++count === 1) {
        await ws.close(4000, "bye ü");
        return;
      }
      await ws.send("!close 4001 peer bye");
      const result = await ws.closed;
      theirs.resolve({ code: result.code, reason: result.reason, wasClean: result.wasClean });
    });
    const process = peer.spawn(["client", uri, "2"]);
    try {
      assert.deepEqual(await within(theirs.promise, 5000, "peer close"), {
        code: 4001,
        reason: "peer bye",
        wasClean: true,
      });
      assert.deepEqual(
        [await process.next("close"), await process.next("close")],
        [
          { event: "close", code: 4000, reason: "bye ü" },
          { event: "close", code: 4001, reason: "peer bye" },
        ],
      );
      await process.exited();
    } finally {
      await process.stop();
      await server.close();
    }
  });
}

// ---- Deno's built-in WebSocket client → our server

/** Deno's built-in client with its incoming messages queued. */
class BuiltinClient {
  readonly socket: WebSocket;
  readonly opened: Promise<void>;
  readonly closed: Promise<CloseEvent>;
  #messages: Message[] = [];
  #waiters: ((message: Message) => void)[] = [];

  constructor(url: string) {
    this.socket = new WebSocket(url);
    this.socket.binaryType = "arraybuffer";
    this.opened = new Promise((resolve, reject) => {
      this.socket.onopen = () => resolve();
      this.socket.onerror = (event) => reject(new Error(String((event as ErrorEvent).message)));
    });
    this.closed = new Promise((resolve) => (this.socket.onclose = resolve));
    this.socket.onmessage = (event: MessageEvent) => {
      const data = typeof event.data === "string"
        ? event.data
        : new Uint8Array(event.data as ArrayBuffer);
      const waiter = this.#waiters.shift();
      if (waiter !== undefined) waiter(data);
      else this.#messages.push(data);
    };
  }

  recv(): Promise<Message> {
    const message = this.#messages.shift();
    if (message !== undefined) return Promise.resolve(message);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
}

Deno.test("interop: Deno WebSocket → our server: messages, fragments and 10 MiB", async () => {
  const big = randomBytes(10 * MIB, 3);
  const outcome = deferred<unknown>();
  const { server, uri } = serveLocal(async (ws) => {
    const replies = await roundTrip(ws, MESSAGES);
    await ws.send(["frag", "men", "ted"]);
    replies.push(await ws.recv());
    await ws.send(big);
    const bigReply = await ws.recv();
    outcome.resolve({
      replies,
      big: sameBytes(bigReply, big),
      extensions: ws.extensions.length,
      latency: await ws.ping() >= 0,
    });
    await ws.recv().catch(() => {});
  }, { maxSize: 16 * MIB });
  const client = new BuiltinClient(uri);
  try {
    await client.opened;
    const echoing = (async () => {
      for (let i = 0; i < MESSAGES.length + 2; i++) client.socket.send(await client.recv());
    })();
    assert.deepEqual(await within(outcome.promise, 10_000, "exchange"), {
      replies: [...MESSAGES, "fragmented"],
      big: true,
      extensions: 0,
      latency: true,
    });
    await echoing;
  } finally {
    client.socket.close();
    await client.closed;
    await server.close();
  }
});

Deno.test("interop: Deno WebSocket → our server: close codes and reasons both ways", async () => {
  let count = 0;
  const fromClient = deferred<unknown>();
  const { server, uri } = serveLocal(async (ws) => {
    if (++count === 1) {
      await ws.close(4000, "bye ü");
      return;
    }
    await ws.recv().catch(() => {});
    const result = await ws.closed;
    fromClient.resolve({ code: result.code, reason: result.reason, wasClean: result.wasClean });
  });
  try {
    const first = new BuiltinClient(uri);
    const closedByServer = await within(first.closed, TIMER_SLACK, "server close");
    const second = new BuiltinClient(uri);
    await second.opened;
    second.socket.close(4001, "client bye");
    const closedByClient = await second.closed;
    assert.deepEqual(
      [
        [closedByServer.code, closedByServer.reason, closedByServer.wasClean],
        [closedByClient.code, closedByClient.reason],
        await within(fromClient.promise, TIMER_SLACK, "server side"),
      ],
      [[4000, "bye ü", true], [4001, "client bye"], {
        code: 4001,
        reason: "client bye",
        wasClean: true,
      }],
    );
  } finally {
    await server.close();
  }
});

Deno.test("interop: Deno WebSocket → our server over wss: (certificate trusted with --cert)", async () => {
  await using tls = await selfSignedCert();
  const { server } = serveLocal(echo, { tls: { cert: tls.cert, key: tls.key } });
  const process = new PeerProcess(Deno.execPath(), [
    "run",
    "--cert",
    tls.certFile,
    "--allow-net",
    `${PEERS}deno_wss_client.ts`,
    `wss://localhost:${server.port}/`,
  ]);
  try {
    await process.exited(10_000);
    assert.deepEqual(process.events, [
      { event: "open", extensions: "" },
      { event: "message", data: "hello" },
      { event: "message", data: [1, 2, 3] },
      { event: "close", code: 1000, reason: "done", wasClean: true },
    ]);
  } finally {
    await process.stop();
    await server.close();
  }
});

// ---- our client → Deno.serve + Deno.upgradeWebSocket

/** A Deno.serve WebSocket server: echoes, and closes on "!close CODE REASON". */
function denoEchoServer(
  tls?: { cert: string; key: string },
): { server: Deno.HttpServer<Deno.NetAddr>; closes: CloseEvent[] } {
  const closes: CloseEvent[] = [];
  const server = Deno.serve({ hostname: HOST, port: 0, onListen() {}, ...tls }, (request) => {
    const { socket, response } = Deno.upgradeWebSocket(request);
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => {
      if (typeof event.data === "string" && event.data.startsWith("!close ")) {
        const [, code, ...reason] = event.data.split(" ");
        socket.close(Number(code), reason.join(" "));
        return;
      }
      socket.send(event.data);
    };
    socket.onclose = (event) => closes.push(event);
    return response;
  });
  return { server, closes };
}

Deno.test("interop: our client → Deno.upgradeWebSocket: messages, fragments and 10 MiB", async () => {
  const { server } = denoEchoServer();
  try {
    const ws = await connect(`ws://${HOST}:${server.addr.port}/`, { maxSize: 16 * MIB });
    const replies = await roundTrip(ws, MESSAGES);
    await ws.send(["frag", "men", "ted"]);
    replies.push(await ws.recv());
    const big = randomBytes(10 * MIB, 5);
    await ws.send(big);
    const bigReply = await ws.recv();
    const latency = await within(ws.ping(), TIMER_SLACK, "pong");
    assert.deepEqual([replies, sameBytes(bigReply, big), ws.extensions.length, latency >= 0], [
      [...MESSAGES, "fragmented"],
      true,
      0,
      true,
    ]);
    await ws.close();
  } finally {
    await server.shutdown();
  }
});

Deno.test("interop: our client → Deno.upgradeWebSocket: close codes and reasons both ways", async () => {
  const { server, closes } = denoEchoServer();
  const uri = `ws://${HOST}:${server.addr.port}/`;
  try {
    const ours = await connect(uri);
    await ours.close(4000, "bye ü");
    const theirs = await connect(uri);
    await theirs.send("!close 4001 server bye");
    const result = await within(theirs.closed, TIMER_SLACK, "server close");
    await within(
      (async () => {
        while (closes.length < 2) await new Promise((resolve) => setTimeout(resolve, 5));
      })(),
      3000,
      "server close events",
    );
    assert.deepEqual(
      [
        closes.map((event) => [event.code, event.reason]),
        [result.code, result.reason, result.wasClean],
      ],
      [[[4000, "bye ü"], [4001, "server bye"]], [4001, "server bye", true]],
    );
  } finally {
    await server.shutdown();
  }
});

Deno.test("interop: our client → Deno.serve over wss: trusting caCerts", async () => {
  await using tls = await selfSignedCert();
  const { server } = denoEchoServer({ cert: tls.cert, key: tls.key });
  try {
    const ws = await connect(`wss://localhost:${server.addr.port}/`, { caCerts: [tls.cert] });
    assert.deepEqual(await roundTrip(ws, ["secure", new Uint8Array([7])]), [
      "secure",
      new Uint8Array([7]),
    ]);
    await ws.close();
  } finally {
    await server.shutdown();
  }
});
