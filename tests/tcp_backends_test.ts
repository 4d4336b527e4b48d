// serve()'s two TCP backends, `tcp: "node:net"` (the default) and `tcp: "Deno.listen"`, run
// the same protocol code; these tests run the same behaviours over both, on real loopback
// sockets: data both ways in any size, backpressure, a peer that doesn't read, aborts,
// addresses, IPv6, fallbacks and listen errors.

import assert from "node:assert/strict";
import process from "node:process";
import { resetBindings } from "../_node_net.ts";
import { broadcast } from "../broadcast.ts";
import { connect } from "../client.ts";
import { StreamConnection } from "../connection.ts";
import { Opcode } from "../frames.ts";
import { serve, type Server } from "../server.ts";
import {
  assertTook,
  deferred,
  delay,
  echo,
  handshakeRequest,
  HOST,
  randomBytes,
  RawPeer,
  selfSignedCert,
  serveLocal,
  TIMER_SLACK,
  within,
} from "./_helpers.ts";

const BACKENDS = ["node:net", "Deno.listen"] as const;
const OPTIONS = { compression: null, pingInterval: null } as const;

// Which backend a server connection runs on: node:net sockets come with a byte count the
// runtime still holds (`bufferedAmount`), Deno.Conn has none.
function backendOf(connection: StreamConnection): string {
  return "bufferedAmount" in connection.transport ? "node:net" : "Deno.listen";
}

for (const tcp of BACKENDS) {
  Deno.test(`tcp ${tcp}: serves through the backend asked for`, async () => {
    const seen = deferred<string>();
    const { server, uri } = serveLocal((ws) => {
      seen.resolve(backendOf(ws));
    }, { ...OPTIONS, tcp });
    try {
      const client = await connect(uri, OPTIONS);
      assert.equal(await within(seen.promise, TIMER_SLACK, "handler"), tcp);
      await client.closed;
    } finally {
      await server.close();
    }
  });

  Deno.test(`tcp ${tcp}: echoes text and binary messages of 0 B to 4 MiB, byte for byte`, async () => {
    const { server, uri } = serveLocal(echo, { ...OPTIONS, tcp, maxSize: 8 * 1024 * 1024 });
    const client = await connect(uri, { ...OPTIONS, maxSize: 8 * 1024 * 1024 });
    try {
      for (const size of [0, 1, 125, 126, 65535, 65536, 65550, 1024 * 1024 + 3, 4 * 1024 * 1024]) {
        const bytes = randomBytes(size, size + 7);
        await client.send(bytes);
        assert.deepEqual(await within(client.recv(), 10_000, `echo of ${size} B`), bytes);
      }
      const text = "żółw 🐢 ".repeat(20_000);
      await client.send(text);
      assert.equal(await client.recv(), text);
    } finally {
      await client.close();
      await server.close();
    }
  });

  Deno.test(`tcp ${tcp}: large and small frames queued together go out whole and in order`, async () => {
    // Large payloads (16 KiB and up) are written from where they are, the small frames
    // between them joined: every combination must arrive byte for byte, in order, both ways.
    const messages: (string | Uint8Array)[] = [
      "first",
      randomBytes(16384, 1),
      randomBytes(3, 2),
      randomBytes(100_000, 3),
      "ż".repeat(10_000),
      randomBytes(1024 * 1024, 4),
      randomBytes(16383, 5),
      randomBytes(16385, 6),
      randomBytes(70_000, 7),
      "last",
    ];
    const { server, uri } = serveLocal(async (ws) => {
      for await (const message of ws) {
        if (message !== "go") {
          await ws.send(message);
          continue;
        }
        // All in one turn, with a ping between them.
        for (let i = 0; i < messages.length; i++) {
          ws.send(messages[i]).catch(() => {});
          if (i === 3) ws.ping().catch(() => {});
        }
      }
    }, { ...OPTIONS, tcp, maxSize: 4 * 1024 * 1024 });
    const client = await connect(uri, { ...OPTIONS, maxSize: 4 * 1024 * 1024 });
    try {
      await client.send("go");
      for (const expected of messages) {
        assert.deepEqual(await within(client.recv(), 10_000, "server's frames"), expected);
      }
      // The client's frames (masked, each in its own buffer) queued in one turn, echoed.
      for (const message of messages) client.send(message).catch(() => {});
      for (const expected of messages) {
        assert.deepEqual(await within(client.recv(), 10_000, "echoes"), expected);
      }
    } finally {
      await client.close();
      await server.close();
    }
  });

  Deno.test(`tcp ${tcp}: 2 000 pipelined messages come back complete and in order`, async () => {
    const { server, uri } = serveLocal(echo, { ...OPTIONS, tcp });
    const client = await connect(uri, OPTIONS);
    try {
      const count = 2000;
      for (let i = 0; i < count; i++) client.send(`message ${i} ${"x".repeat(i % 300)}`);
      for (let i = 0; i < count; i++) {
        assert.equal(
          await within(client.recv(), 5000, `echo ${i}`),
          `message ${i} ${"x".repeat(i % 300)}`,
        );
      }
    } finally {
      await client.close();
      await server.close();
    }
  });

  Deno.test(`tcp ${tcp}: a full message queue pauses reading and loses nothing`, async () => {
    const go = deferred();
    const received: string[] = [];
    const done = deferred();
    const { server, uri } = serveLocal(async (ws) => {
      await go.promise; // read nothing until the client sent everything
      for await (const message of ws) {
        received.push(message as string);
        if (received.length === 500) done.resolve();
      }
    }, { ...OPTIONS, tcp, maxQueue: 4 });
    const client = await connect(uri, OPTIONS);
    try {
      const payload = "y".repeat(4000);
      for (let i = 0; i < 500; i++) await client.send(`${i} ${payload}`);
      go.resolve();
      await within(done.promise, 10_000, "all 500 messages");
      assert.deepEqual(received.map((m) => Number(m.split(" ")[0])), [...Array(500).keys()]);
    } finally {
      await client.close();
      await server.close();
    }
  });

  Deno.test(`tcp ${tcp}: a client that never reads is dropped within closeTimeout`, async () => {
    const closed = deferred<number>();
    const { server } = serveLocal(async (ws) => {
      const chunk = randomBytes(256 * 1024);
      while (ws.bufferedAmount < 4 * 1024 * 1024) ws.send(chunk).catch(() => {});
      const started = performance.now();
      ws.close(1000).catch(() => {});
      await ws.closed;
      closed.resolve(performance.now() - started);
    }, { ...OPTIONS, tcp, closeTimeout: 300 });
    const peer = await RawPeer.connect(server.port);
    try {
      await peer.write(handshakeRequest(server.port));
      await peer.readHead(); // and nothing more
      const elapsed = await within(closed.promise, 300 + TIMER_SLACK, "connection closed");
      assertTook(elapsed, 250, 300, "closed");
    } finally {
      peer.close();
      await server.close();
    }
  });

  Deno.test(`tcp ${tcp}: a client that half-closes and never reads while a write waits is dropped within closeTimeout`, async () => {
    const full = deferred();
    const closed = deferred<number>();
    const { server } = serveLocal(async (ws) => {
      await ws.recv(); // reading goes on meanwhile, so the end of the stream is seen
      // More than the kernel's socket buffers take from a peer that doesn't read.
      const chunk = randomBytes(256 * 1024);
      for (let i = 0; i < 128; i++) ws.send(chunk).catch(() => {});
      full.resolve();
      closed.resolve((await ws.closed).code);
    }, { ...OPTIONS, tcp, closeTimeout: 300 });
    const peer = await RawPeer.connect(server.port);
    try {
      await peer.write(handshakeRequest(server.port));
      await peer.readHead(); // and nothing more
      await peer.write(new Uint8Array([0x81, 0x82, 0, 0, 0, 0, 0x67, 0x6f])); // "go"
      await within(full.promise, 5000, "output queued");
      await peer.conn.closeWrite(); // the end of the stream, while the server's write waits
      assert.equal(await within(closed.promise, 5000, "connection closed"), 1006);
    } finally {
      peer.close();
      await server.close();
    }
  });

  Deno.test(`tcp ${tcp}: an idle connection keeps no buffer of the large message it read last`, async () => {
    // Measured in a child process that can force garbage collection: 16 connections each get
    // a 1 MiB message, then a small one, then idle; what they keep is the growth of external
    // memory (ArrayBuffers).
    const url = (path: string) => JSON.stringify(import.meta.resolve(path));
    const code = `
      import { serve } from ${url("../server.ts")};
      import { Frame, Opcode } from ${url("../frames.ts")};
      import { handshakeRequest, RawPeer } from ${url("./_helpers.ts")};
      const server = serve(async (ws) => {
        for (;;) await ws.send(String((await ws.recv()).length));
      }, { hostname: "127.0.0.1", port: 0, tcp: ${JSON.stringify(tcp)}, ...${
      JSON.stringify(OPTIONS)
    } });
      const external = () => (globalThis.gc(), globalThis.gc(), Deno.memoryUsage().external);
      const large = new Frame(Opcode.BINARY, new Uint8Array(1024 * 1024)).serialize({ mask: true });
      const small = new Frame(Opcode.BINARY, new Uint8Array(8)).serialize({ mask: true });
      const peers = [];
      for (let i = 0; i < 16; i++) {
        const peer = await RawPeer.connect(server.port);
        await peer.write(handshakeRequest(server.port));
        await peer.readHead();
        peers.push(peer);
      }
      const before = external();
      for (const peer of peers) {
        await peer.write(large);
        await peer.readFrame();
        await peer.write(small);
        await peer.readFrame();
      }
      console.log(external() - before);
      for (const peer of peers) peer.close();
      await server.close();
    `;
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--v8-flags=--expose-gc", code],
      stdout: "piped",
      stderr: "inherit",
    }).output();
    assert.equal(output.code, 0);
    const kept = Number(new TextDecoder().decode(output.stdout).trim());
    // 16 MiB if each connection kept its last large message.
    assert.ok(kept < 4 * 1024 * 1024, `16 idle connections keep ${kept} bytes`);
  });

  Deno.test(`tcp ${tcp}: a client that drops the socket mid-message ends the connection with 1006`, async () => {
    const result = deferred<number>();
    const { server } = serveLocal(async (ws) => {
      try {
        for await (const _ of ws) { /* nothing */ }
      } finally {
        result.resolve((await ws.closed).code);
      }
    }, { ...OPTIONS, tcp });
    const peer = await RawPeer.connect(server.port);
    await peer.write(handshakeRequest(server.port));
    await peer.readHead();
    // The start of a 1 MiB binary frame, then the socket goes away.
    await peer.write(new Uint8Array([0x82, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4, 5, 6]));
    peer.close();
    try {
      assert.equal(await within(result.promise, TIMER_SLACK, "closed"), 1006);
      // The server goes on serving.
      const client = await connect(`ws://${HOST}:${server.port}/`, OPTIONS);
      await client.close();
    } finally {
      await server.close();
    }
  });

  Deno.test(`tcp ${tcp}: broadcast() reaches 50 clients, every message in order`, async () => {
    const room = new Set<StreamConnection>();
    const { server, uri } = serveLocal(async (ws) => {
      room.add(ws);
      await ws.closed;
      room.delete(ws);
    }, { ...OPTIONS, tcp });
    const clients = await Promise.all(Array.from({ length: 50 }, () => connect(uri, OPTIONS)));
    try {
      await within(
        (async () => {
          while (room.size < 50) await new Promise((resolve) => setTimeout(resolve, 5));
        })(),
        3000,
        "50 connections",
      );
      for (let i = 0; i < 100; i++) broadcast(room, `news ${i}`);
      for (const client of clients) {
        for (let i = 0; i < 100; i++) {
          assert.equal(await within(client.recv(), TIMER_SLACK, `message ${i}`), `news ${i}`);
        }
      }
    } finally {
      await Promise.all(clients.map((client) => client.close()));
      await server.close();
    }
  });

  Deno.test(`tcp ${tcp}: localAddr and remoteAddr are the socket's two ends`, async () => {
    const addrs = deferred<[Deno.Addr | undefined, Deno.Addr | undefined]>();
    const { server, uri } = serveLocal((ws) => {
      addrs.resolve([ws.localAddr, ws.remoteAddr]);
    }, { ...OPTIONS, tcp });
    try {
      const client = await connect(uri, OPTIONS);
      const [local, remote] = await within(addrs.promise, TIMER_SLACK, "addresses");
      assert.deepEqual({ ...local }, { ...client.remoteAddr });
      assert.deepEqual({ ...remote }, { ...client.localAddr });
      await client.closed;
    } finally {
      await server.close();
    }
  });

  Deno.test(`tcp ${tcp}: listens on [::1]`, async () => {
    const server = serve(echo, { ...OPTIONS, tcp, hostname: "::1", port: 0 });
    try {
      assert.equal((server.addr as Deno.NetAddr).hostname, "::1");
      const client = await connect(`ws://[::1]:${server.port}/`, OPTIONS);
      await client.send("over IPv6");
      assert.equal(await client.recv(), "over IPv6");
      await client.close();
    } finally {
      await server.close();
    }
  });

  Deno.test(`tcp ${tcp}: a port in use throws Deno.errors.AddrInUse`, async () => {
    const { server } = serveLocal(echo, { ...OPTIONS, tcp });
    try {
      assert.throws(
        () => serve(echo, { ...OPTIONS, tcp, hostname: HOST, port: server.port }),
        Deno.errors.AddrInUse,
      );
    } finally {
      await server.close();
    }
  });

  Deno.test(`tcp ${tcp}: close() stops accepting at once`, async () => {
    const { server } = serveLocal(echo, { ...OPTIONS, tcp });
    await server.close();
    await assert.rejects(
      () => Deno.connect({ hostname: HOST, port: server.port }),
      Deno.errors.ConnectionRefused,
    );
  });
}

Deno.test("tcp node:net: the server accepts again once connections over the file descriptor limit are gone", async () => {
  // A server in a child process allowed 128 file descriptors; 200 connections exhaust them.
  // (It listens for a signal first: Deno 2.9 panics when its first signal listener comes while
  // no descriptor is left, which the runtime itself may ask for.)
  const code = `
    Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
    import { serve } from ${JSON.stringify(import.meta.resolve("../server.ts"))};
    const server = serve(() => {}, { hostname: "127.0.0.1", port: 0, tcp: "node:net" });
    console.log(server.port);
    await new Promise(() => {});
  `;
  const child = new Deno.Command("bash", {
    args: ["-c", 'ulimit -n 128 && exec "$0" eval "$1"', Deno.execPath(), code],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  try {
    const port = Number((await within(lines.read(), 10_000, "child listening")).value);
    const conns = [];
    for (let i = 0; i < 200; i++) conns.push(await Deno.connect({ hostname: HOST, port }));
    await delay(500);
    for (const conn of conns) conn.close();
    const peer = await RawPeer.connect(port);
    try {
      await peer.write(handshakeRequest(port));
      const head = await within(peer.readHead(), 10_000, "a handshake after descriptors are free");
      assert.equal(head?.split("\r\n")[0], "HTTP/1.1 101 Switching Protocols");
    } finally {
      peer.close();
    }
  } finally {
    child.kill("SIGTERM");
    await lines.cancel();
    await child.status;
  }
});

Deno.test("tcp node:net: a host name is served through Deno.listen", async () => {
  const seen = deferred<string>();
  const server = serve((ws) => {
    seen.resolve(backendOf(ws));
  }, { ...OPTIONS, tcp: "node:net", hostname: "localhost", port: 0 });
  try {
    const client = await connect(`ws://127.0.0.1:${server.port}/`, OPTIONS);
    assert.equal(await within(seen.promise, TIMER_SLACK, "handler"), "Deno.listen");
    await client.closed;
  } finally {
    await server.close();
  }
});

Deno.test("tcp node:net: bufferedAmount counts what the socket still holds for a client that doesn't read", async () => {
  const buffered = deferred<number>();
  const { server } = serveLocal(async (ws) => {
    const chunk = randomBytes(1024 * 1024);
    for (let i = 0; i < 8; i++) ws.send(chunk).catch(() => {});
    // Let the writes reach the socket, which the kernel can't drain.
    await new Promise((resolve) => setTimeout(resolve, 200));
    buffered.resolve(ws.bufferedAmount);
    await ws.close();
  }, { ...OPTIONS, tcp: "node:net", closeTimeout: 200 });
  const peer = await RawPeer.connect(server.port);
  try {
    await peer.write(handshakeRequest(server.port));
    await peer.readHead();
    const amount = await within(buffered.promise, TIMER_SLACK, "bufferedAmount");
    // 8 MiB queued (maybe in one write with the handshake response); the kernel's buffers
    // hold a few MiB at most on loopback, and a write counts until the kernel has all of it.
    assert.ok(
      amount > 1024 * 1024 && amount <= 8 * (1024 * 1024 + 10) + 1024,
      `bufferedAmount ${amount}`,
    );
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("tcp: the default for plain TCP is node:net", async () => {
  const seen = deferred<string>();
  const { server, uri } = serveLocal((ws) => {
    seen.resolve(backendOf(ws));
  }, OPTIONS);
  try {
    const client = await connect(uri, OPTIONS);
    assert.equal(await within(seen.promise, TIMER_SLACK, "handler"), "node:net");
    await client.closed;
  } finally {
    await server.close();
  }
});

Deno.test("tcp: an unknown tcp option value is a TypeError", () => {
  assert.throws(
    () => serve(echo, { tcp: "uv" as unknown as "node:net", hostname: HOST, port: 0 }),
    TypeError,
  );
});

Deno.test("tcp node:net: frames arriving a byte at a time are parsed", async () => {
  const { server } = serveLocal(echo, { ...OPTIONS, tcp: "node:net" });
  const peer = await RawPeer.connect(server.port);
  try {
    await peer.write(handshakeRequest(server.port));
    await peer.readHead();
    const frame = new Uint8Array([
      0x81,
      0x85,
      1,
      2,
      3,
      4,
      ..."hello".split("").map((c, i) => c.charCodeAt(0) ^ [1, 2, 3, 4][i % 4]),
    ]);
    for (const byte of frame) {
      await peer.write(new Uint8Array([byte]));
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    const echoed = await within(peer.readFrame(), TIMER_SLACK, "echo");
    assert.equal(echoed?.opcode, Opcode.TEXT);
    assert.equal(new TextDecoder().decode(echoed?.data), "hello");
  } finally {
    peer.close();
    await server.close();
  }
});

Deno.test("tcp node:net: with tls the server serves wss: through Deno.listenTls", async () => {
  await using tls = await selfSignedCert();
  const seen = deferred<string>();
  const { server } = serveLocal(async (ws) => {
    seen.resolve(backendOf(ws));
    await echo(ws);
  }, { ...OPTIONS, tcp: "node:net", tls: { cert: tls.cert, key: tls.key } });
  try {
    const client = await connect(`wss://localhost:${server.port}/`, {
      ...OPTIONS,
      caCerts: [tls.cert],
    });
    assert.equal(await within(seen.promise, TIMER_SLACK, "handler"), "Deno.listen");
    await client.send("secret");
    assert.equal(await client.recv(), "secret");
    await client.close();
  } finally {
    await server.close();
  }
});

Deno.test("tcp node:net: a runtime without node:net's TCP handles falls back to Deno.listen", async () => {
  const runtime = process as unknown as { binding: (name: string) => unknown };
  const saved = runtime.binding;
  runtime.binding = (name: string) => {
    throw new Error(`no binding ${name}`);
  };
  resetBindings();
  const seen = deferred<string>();
  let server: Server | undefined;
  try {
    server = serve((ws) => {
      seen.resolve(backendOf(ws));
    }, { ...OPTIONS, tcp: "node:net", hostname: HOST, port: 0 });
  } finally {
    runtime.binding = saved;
    resetBindings();
  }
  try {
    const client = await connect(`ws://${HOST}:${server.port}/`, OPTIONS);
    assert.equal(await within(seen.promise, TIMER_SLACK, "handler"), "Deno.listen");
    await client.closed;
  } finally {
    await server.close();
  }
});

Deno.test("tcp node:net: messages kept by the application stay intact while other sockets read", async () => {
  // Every socket reads into one shared buffer: what a message holds must be its own copy.
  const clients = 20, messages = 30;
  const kept: Uint8Array[][] = [];
  const done = deferred<void>();
  const { server, uri } = serveLocal(async (ws) => {
    const mine: Uint8Array[] = [];
    kept.push(mine);
    for await (const message of ws) {
      mine.push(message as Uint8Array);
      if (kept.reduce((n, k) => n + k.length, 0) === clients * messages) done.resolve();
    }
  }, { ...OPTIONS, tcp: "node:net", maxSize: 1 << 20 });
  const sent: Uint8Array[][] = [];
  const sockets = await Promise.all(
    Array.from({ length: clients }, () => connect(uri, { ...OPTIONS, maxSize: 1 << 20 })),
  );
  try {
    await Promise.all(sockets.map(async (socket, c) => {
      const mine: Uint8Array[] = [];
      sent.push(mine);
      for (let m = 0; m < messages; m++) {
        const bytes = randomBytes(m % 3 === 0 ? 70_000 : 1 + m * 7, c * 1000 + m);
        mine.push(bytes);
        await socket.send(bytes);
      }
    }));
    await within(done.promise, 10_000, "every message");
    const key = (list: Uint8Array[]) => list.map((b) => `${b.length}:${b[0]}:${b.at(-1)}`).join();
    assert.deepEqual(new Set(kept.map(key)), new Set(sent.map(key)));
    const sentByKey = new Map(sent.map((list) => [key(list), list]));
    for (const list of kept) assert.deepEqual(list, sentByKey.get(key(list)));
  } finally {
    await Promise.all(sockets.map((socket) => socket.close()));
    await server.close();
  }
});
