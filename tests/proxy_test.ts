// connect() through proxies over real loopback sockets: Debian's tinyproxy (HTTP CONNECT, and
// behind a TLS front as an https: proxy) and microsocks (SOCKS5), each started here on a free
// port with its own configuration; the environment variables in child processes; and raw
// proxies that misbehave.

import assert from "node:assert/strict";
import { lookup } from "node:dns/promises";
import { connect, type ConnectOptions, isTransientError } from "../client.ts";
import type { StreamConnection } from "../stream_connection.ts";
import {
  HandshakeTimeout,
  InvalidProxy,
  InvalidProxyMessage,
  InvalidProxyStatus,
  ProxyError,
  SocksProxyError,
} from "../errors.ts";
import { serve, type Server } from "../server.ts";
import { ignoreWithout } from "./_ci.ts";
import {
  acceptRaw,
  assertTook,
  deferred,
  delay,
  freePort,
  HOST,
  RawPeer,
  RawServer,
  rejection,
  selfSignedCert,
  startCli,
  type TlsFiles,
  within,
} from "./_helpers.ts";

const decoder = new TextDecoder();

async function installed(command: string): Promise<boolean> {
  try {
    await new Deno.Command(command, { args: ["-h"], stdout: "null", stderr: "null" }).output();
    return true;
  } catch {
    return false;
  }
}

const HAVE = {
  tinyproxy: await installed("tinyproxy"),
  microsocks: await installed("microsocks"),
};

/** A test that needs `peer`: ignored locally when it is missing, failed in CI. */
function proxyTest(
  peer: keyof typeof HAVE | undefined,
  behaviour: string,
  fn: () => Promise<void>,
): void {
  Deno.test({
    name: `proxy: ${behaviour}`,
    ignore: ignoreWithout(peer === undefined || HAVE[peer]),
    fn: async () => {
      if (peer !== undefined && !HAVE[peer]) {
        assert.fail(`${peer} is not installed (apt-get install -y ${peer})`);
      }
      await fn();
    },
  });
}

/** Waits until something accepts TCP connections on 127.0.0.1:`port`. */
async function waitForPort(port: number, child: Deno.ChildProcess, what: string): Promise<void> {
  const exited = child.status.then((status) => status);
  for (let tries = 0; tries < 200; tries++) {
    try {
      (await Deno.connect({ hostname: HOST, port })).close();
      return;
    } catch {
      const status = await Promise.race([exited, delay(50).then(() => undefined)]);
      if (status !== undefined) throw new Error(`${what} exited with ${status.code}`);
    }
  }
  throw new Error(`${what} did not listen on ${port}`);
}

/** A peer process that listens on a port; stopped by PID. */
abstract class ProxyProcess implements AsyncDisposable {
  abstract readonly port: number;
  abstract readonly child: Deno.ChildProcess;

  /** What the proxy logged so far. */
  abstract log(): Promise<string>;

  /** Waits until the log matches `pattern` (logs are written as connections come). */
  async logMatching(pattern: RegExp): Promise<string> {
    for (let tries = 0; tries < 100; tries++) {
      const log = await this.log();
      if (pattern.test(log)) return log;
      await delay(50);
    }
    assert.fail(`no ${pattern} in the proxy's log:\n${await this.log()}`);
  }

  async stop(): Promise<void> {
    try {
      this.child.kill("SIGTERM");
    } catch {
      // already exited
    }
    await this.child.status;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/** tinyproxy with a configuration of its own: CONNECT allowed to `connectPorts` only. */
class Tinyproxy extends ProxyProcess {
  readonly port: number;
  readonly child: Deno.ChildProcess;
  readonly dir: string;
  readonly stderr: Promise<string>;

  private constructor(port: number, child: Deno.ChildProcess, dir: string) {
    super();
    this.port = port;
    this.child = child;
    this.dir = dir;
    this.stderr = new Response(child.stderr).text();
  }

  static async start(
    options: { connectPorts: number[]; auth?: [string, string] },
  ): Promise<Tinyproxy> {
    const dir = await Deno.makeTempDir({ prefix: "denows-tinyproxy-" });
    const port = freePort();
    const lines = [
      `Port ${port}`,
      `Listen ${HOST}`,
      `Allow ${HOST}`,
      // tinyproxy only CONNECTs to the ports listed (443 and 563 in Debian's own configuration).
      ...options.connectPorts.map((connectPort) => `ConnectPort ${connectPort}`),
      `LogFile "${dir}/tinyproxy.log"`,
      "LogLevel Connect",
      "Timeout 60",
    ];
    if (options.auth !== undefined) lines.push(`BasicAuth ${options.auth[0]} ${options.auth[1]}`);
    await Deno.writeTextFile(`${dir}/tinyproxy.conf`, lines.join("\n") + "\n");
    const child = new Deno.Command("tinyproxy", {
      args: ["-d", "-c", `${dir}/tinyproxy.conf`],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const proxy = new Tinyproxy(port, child, dir);
    try {
      await waitForPort(port, child, "tinyproxy");
    } catch (error) {
      await proxy.stop();
      throw new Error(`${error}: ${await proxy.stderr}`);
    }
    return proxy;
  }

  url(credentials?: string): string {
    return `http://${credentials === undefined ? "" : `${credentials}@`}${HOST}:${this.port}`;
  }

  async log(): Promise<string> {
    try {
      return await Deno.readTextFile(`${this.dir}/tinyproxy.log`);
    } catch {
      return "";
    }
  }

  override async stop(): Promise<void> {
    await super.stop();
    await this.stderr.catch(() => "");
    await Deno.remove(this.dir, { recursive: true });
  }
}

/** microsocks, which logs `client[N] ADDRESS: connected to HOST:PORT` for each tunnel. */
class Microsocks extends ProxyProcess {
  readonly port: number;
  readonly child: Deno.ChildProcess;
  #output = "";
  readonly #reading: Promise<void>;

  private constructor(port: number, child: Deno.ChildProcess) {
    super();
    this.port = port;
    this.child = child;
    const merge = async (stream: ReadableStream<Uint8Array>) => {
      for await (const text of stream.pipeThrough(new TextDecoderStream())) this.#output += text;
    };
    this.#reading = Promise.all([merge(child.stdout), merge(child.stderr)]).then(() => {});
  }

  static async start(options: { auth?: [string, string] } = {}): Promise<Microsocks> {
    const port = freePort();
    const args = ["-i", HOST, "-p", String(port)];
    if (options.auth !== undefined) args.push("-u", options.auth[0], "-P", options.auth[1]);
    const child = new Deno.Command("microsocks", {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const proxy = new Microsocks(port, child);
    try {
      await waitForPort(port, child, "microsocks");
    } catch (error) {
      await proxy.stop();
      throw error;
    }
    return proxy;
  }

  url(scheme: "socks5" | "socks5h", credentials?: string): string {
    return `${scheme}://${credentials === undefined ? "" : `${credentials}@`}${HOST}:${this.port}`;
  }

  log(): Promise<string> {
    return Promise.resolve(this.#output);
  }

  override async stop(): Promise<void> {
    await super.stop();
    await this.#reading.catch(() => {});
  }
}

/**
 * An `https:` proxy: a TLS front (as stunnel would be) that passes each connection on to
 * tinyproxy, so that the client speaks TLS to the proxy and CONNECT inside it.
 */
class TlsFront implements AsyncDisposable {
  readonly listener: Deno.TlsListener;
  readonly port: number;
  readonly #conns = new Set<Deno.Conn>();
  readonly #pipes = new Set<Promise<unknown>>();
  readonly #loop: Promise<void>;

  constructor(tls: TlsFiles, backendPort: number) {
    const listener = Deno.listenTls({ hostname: HOST, port: 0, cert: tls.cert, key: tls.key });
    this.listener = listener;
    this.port = listener.addr.port;
    this.#loop = (async () => {
      for await (const front of listener) {
        this.#conns.add(front);
        const back = await Deno.connect({ hostname: HOST, port: backendPort });
        this.#conns.add(back);
        const pipes = Promise.allSettled([
          front.readable.pipeTo(back.writable),
          back.readable.pipeTo(front.writable),
        ]);
        this.#pipes.add(pipes);
      }
    })().catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.listener.close();
    await this.#loop;
    for (const conn of this.#conns) {
      try {
        conn.close();
      } catch {
        // closed by its pipe
      }
    }
    await Promise.all(this.#pipes);
  }
}

/** An echo server (`ws:` or `wss:`) that records the remote port of each connection. */
class EchoServer implements AsyncDisposable {
  readonly server: Server;
  readonly remotePorts: number[] = [];
  readonly uri: string;

  constructor(options: { tls?: TlsFiles; hostname?: string; uriHost?: string } = {}) {
    this.server = serve(async (ws) => {
      this.remotePorts.push((ws.remoteAddr as Deno.NetAddr).port);
      for await (const message of ws) await ws.send(message);
    }, {
      hostname: options.hostname ?? HOST,
      port: 0,
      tls: options.tls === undefined ? undefined : { cert: options.tls.cert, key: options.tls.key },
    });
    const scheme = options.tls === undefined ? "ws" : "wss";
    this.uri = `${scheme}://${options.uriHost ?? HOST}:${this.server.port}/`;
  }

  get port(): number {
    return this.server.port;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.server.close();
  }
}

/**
 * Echoes a message through `ws`, then checks that the proxy on `proxyPort` carried it: the
 * client is connected to the proxy, and the server saw the connection come from elsewhere.
 */
async function assertCarried(
  ws: StreamConnection,
  server: EchoServer,
  proxyPort: number,
): Promise<void> {
  try {
    await ws.send("through the proxy");
    assert.equal(await ws.recv(), "through the proxy");
    assert.equal((ws.remoteAddr as Deno.NetAddr).port, proxyPort);
    assert.equal(server.remotePorts.length, 1);
    assert.notEqual(server.remotePorts[0], (ws.localAddr as Deno.NetAddr).port);
  } finally {
    await ws.close();
  }
}

// ---------------------------------------------------------------- tinyproxy (HTTP CONNECT)

proxyTest("tinyproxy", "ws: through an HTTP proxy: tinyproxy logs the CONNECT", async () => {
  await using server = new EchoServer();
  await using proxy = await Tinyproxy.start({ connectPorts: [server.port] });
  const ws = await connect(server.uri, { proxy: proxy.url() });
  await assertCarried(ws, server, proxy.port);
  await proxy.logMatching(new RegExp(`CONNECT ${HOST}:${server.port} HTTP/1.1`));
});

proxyTest("tinyproxy", "wss: through an HTTP proxy with credentials", async () => {
  await using tls = await selfSignedCert();
  await using server = new EchoServer({ tls, uriHost: "localhost" });
  await using proxy = await Tinyproxy.start({
    connectPorts: [server.port],
    auth: ["alice", "s3cret"],
  });
  const ws = await connect(server.uri, { proxy: proxy.url("alice:s3cret"), caCerts: [tls.cert] });
  await assertCarried(ws, server, proxy.port);
  await proxy.logMatching(new RegExp(`CONNECT localhost:${server.port} HTTP/1.1`));
});

proxyTest(
  "tinyproxy",
  "no credentials for a proxy that wants them: InvalidProxyStatus 407",
  async () => {
    await using server = new EchoServer();
    await using proxy = await Tinyproxy.start({ connectPorts: [server.port], auth: ["a", "b"] });
    const error = await rejection(connect(server.uri, { proxy: proxy.url() }));
    assert.ok(error instanceof InvalidProxyStatus);
    assert.equal(
      error.message,
      `proxy ${proxy.url()} failed: HTTP 407 Proxy Authentication Required`,
    );
    assert.equal(isTransientError(error), false);
    assert.deepEqual(server.remotePorts, []);
  },
);

proxyTest("tinyproxy", "wrong credentials: tinyproxy's 401 as InvalidProxyStatus", async () => {
  await using server = new EchoServer();
  await using proxy = await Tinyproxy.start({ connectPorts: [server.port], auth: ["a", "b"] });
  const error = await rejection(connect(server.uri, { proxy: proxy.url("a:wrong") }));
  // tinyproxy answers a wrong password with 401, a missing one with 407.
  assert.ok(error instanceof InvalidProxyStatus);
  assert.equal(error.message, `proxy ${proxy.url()} failed: HTTP 401 Unauthorized`);
  assert.equal(error.message.includes("wrong"), false);
  assert.deepEqual(server.remotePorts, []);
});

proxyTest("tinyproxy", "a port the proxy doesn't CONNECT to: InvalidProxyStatus 403", async () => {
  await using server = new EchoServer();
  await using proxy = await Tinyproxy.start({ connectPorts: [server.port + 1] });
  const error = await rejection(connect(server.uri, { proxy: proxy.url() }));
  assert.ok(error instanceof InvalidProxyStatus);
  assert.equal(error.response.statusCode, 403);
  assert.equal(error.message, `proxy ${proxy.url()} failed: HTTP 403 Access violation`);
});

proxyTest("tinyproxy", "a redirect chooses the proxy again for the new URI", async () => {
  await using target = new EchoServer();
  await using redirector = new RawServer(async (peer) => {
    await peer.readHead();
    await peer.write(`HTTP/1.1 302 Found\r\nLocation: ${target.uri}\r\nContent-Length: 0\r\n\r\n`);
  });
  await using proxy = await Tinyproxy.start({ connectPorts: [redirector.port, target.port] });
  const ws = await connect(redirector.uri(), { proxy: proxy.url() });
  await assertCarried(ws, target, proxy.port);
  await proxy.logMatching(
    new RegExp(`CONNECT ${HOST}:${redirector.port} [^]*CONNECT ${HOST}:${target.port}`),
  );
});

// ---------------------------------------------------------------- an https: proxy

proxyTest("tinyproxy", "ws: through an https: proxy (TLS to the proxy)", async () => {
  await using tls = await selfSignedCert();
  await using server = new EchoServer();
  await using proxy = await Tinyproxy.start({ connectPorts: [server.port], auth: ["a", "b"] });
  await using front = new TlsFront(tls, proxy.port);
  const ws = await connect(server.uri, {
    proxy: `https://a:b@localhost:${front.port}`,
    caCerts: [tls.cert],
  });
  await assertCarried(ws, server, front.port);
  await proxy.logMatching(new RegExp(`CONNECT ${HOST}:${server.port} HTTP/1.1`));
});

proxyTest("tinyproxy", "wss: through an https: proxy: TLS inside TLS, 1 MiB echoed", async () => {
  await using tls = await selfSignedCert();
  await using server = new EchoServer({ tls, uriHost: "localhost" });
  await using proxy = await Tinyproxy.start({ connectPorts: [server.port] });
  await using front = new TlsFront(tls, proxy.port);
  const ws = await connect(server.uri, {
    proxy: `https://localhost:${front.port}`,
    caCerts: [tls.cert],
    maxSize: 2 * 1024 * 1024,
  });
  try {
    const big = new Uint8Array(1024 * 1024).map((_, i) => i * 7);
    await ws.send(big);
    assert.deepEqual(await ws.recv(), big);
  } finally {
    await assertCarried(ws, server, front.port);
  }
  await proxy.logMatching(new RegExp(`CONNECT localhost:${server.port} HTTP/1.1`));
});

proxyTest("tinyproxy", "an https: proxy whose certificate isn't trusted: ProxyError", async () => {
  await using tls = await selfSignedCert();
  await using server = new EchoServer();
  await using proxy = await Tinyproxy.start({ connectPorts: [server.port] });
  await using front = new TlsFront(tls, proxy.port);
  const error = await rejection(connect(server.uri, { proxy: `https://localhost:${front.port}` }));
  assert.ok(error instanceof ProxyError);
  assert.match(error.message, /^proxy https:\/\/localhost:\d+ failed: TLS handshake failed: /);
  assert.deepEqual(server.remotePorts, []);
});

// ---------------------------------------------------------------- microsocks (SOCKS5)

proxyTest("microsocks", "ws: through a SOCKS5 proxy: microsocks logs the tunnel", async () => {
  await using server = new EchoServer();
  await using proxy = await Microsocks.start();
  const ws = await connect(server.uri, { proxy: proxy.url("socks5") });
  await assertCarried(ws, server, proxy.port);
  await proxy.logMatching(new RegExp(`connected to ${HOST}:${server.port}`));
});

proxyTest("microsocks", "wss: through a SOCKS5 proxy with credentials (RFC 1929)", async () => {
  await using tls = await selfSignedCert();
  // socks5: the client resolves localhost and sends the first address: the server listens there.
  const { address } = await lookup("localhost");
  await using server = new EchoServer({ tls, hostname: address, uriHost: "localhost" });
  await using proxy = await Microsocks.start({ auth: ["bob", "hunter2"] });
  const ws = await connect(server.uri, {
    proxy: proxy.url("socks5", "bob:hunter2"),
    caCerts: [tls.cert],
  });
  await assertCarried(ws, server, proxy.port);
});

proxyTest("microsocks", "percent-encoded credentials reach the SOCKS5 proxy decoded", async () => {
  await using server = new EchoServer();
  await using proxy = await Microsocks.start({ auth: ["al@ice", "pa:ss w\u00f6rd"] });
  const ws = await connect(server.uri, {
    proxy: proxy.url("socks5", "al%40ice:pa%3Ass%20w%C3%B6rd"),
  });
  await assertCarried(ws, server, proxy.port);
});

proxyTest(
  "microsocks",
  "socks5h: the proxy resolves the host name; socks5: the client does",
  async () => {
    // The server listens where `localhost` resolves first, as microsocks will resolve it.
    const { address } = await lookup("localhost");
    await using server = new EchoServer({ hostname: address, uriHost: "localhost" });
    await using proxy = await Microsocks.start();
    const remote = await connect(server.uri, { proxy: proxy.url("socks5h") });
    await remote.send("x");
    await remote.recv();
    await remote.close();
    await proxy.logMatching(new RegExp(`connected to localhost:${server.port}`));
    const local = await connect(server.uri, { proxy: proxy.url("socks5") });
    await local.send("x");
    await local.recv();
    await local.close();
    const host = address.includes(":") ? `\\[?${address}\\]?` : address.replaceAll(".", "\\.");
    await proxy.logMatching(new RegExp(`connected to ${host}:${server.port}`));
    assert.equal(server.remotePorts.length, 2);
  },
);

proxyTest("microsocks", "wss: through socks5h with credentials", async () => {
  await using tls = await selfSignedCert();
  const { address } = await lookup("localhost");
  await using server = new EchoServer({ tls, hostname: address, uriHost: "localhost" });
  await using proxy = await Microsocks.start({ auth: ["bob", "hunter2"] });
  const ws = await connect(server.uri, {
    proxy: proxy.url("socks5h", "bob:hunter2"),
    caCerts: [tls.cert],
  });
  await assertCarried(ws, server, proxy.port);
  await proxy.logMatching(new RegExp(`connected to localhost:${server.port}`));
});

proxyTest("microsocks", "wrong SOCKS5 credentials: SocksProxyError, not transient", async () => {
  await using server = new EchoServer();
  await using proxy = await Microsocks.start({ auth: ["bob", "hunter2"] });
  const error = await rejection(connect(server.uri, { proxy: proxy.url("socks5", "bob:nope") }));
  assert.ok(error instanceof SocksProxyError);
  // RFC 1929: any status but 0 is a failure (microsocks sends 1 or 2, depending on its version).
  const status = /status (\d+)\)$/.exec(error.message)?.[1];
  assert.equal(
    error.message,
    `proxy ${proxy.url("socks5")} failed: authentication failed: ` +
      `user name or password rejected (status ${status})`,
  );
  assert.notEqual(status, "0");
  assert.equal(isTransientError(error), false);
  assert.deepEqual(server.remotePorts, []);
});

proxyTest(
  "microsocks",
  "no credentials for a SOCKS5 proxy that wants them: SocksProxyError",
  async () => {
    await using server = new EchoServer();
    await using proxy = await Microsocks.start({ auth: ["bob", "hunter2"] });
    const error = await rejection(connect(server.uri, { proxy: proxy.url("socks5") }));
    assert.ok(error instanceof SocksProxyError);
    assert.equal(
      error.message,
      `proxy ${proxy.url("socks5")} failed: ` +
        "no acceptable authentication method (the proxy wants credentials)",
    );
  },
);

proxyTest(
  "microsocks",
  "a SOCKS5 proxy that can't reach the server: reply 5, transient",
  async () => {
    await using proxy = await Microsocks.start();
    const error = await rejection(
      connect(`ws://${HOST}:${freePort()}/`, { proxy: proxy.url("socks5") }),
    );
    assert.ok(error instanceof SocksProxyError);
    assert.equal(error.reply, 5);
    assert.equal(
      error.message,
      `proxy ${proxy.url("socks5")} failed: connection refused by destination host (reply 5)`,
    );
    assert.equal(isTransientError(error), true);
  },
);

// ---------------------------------------------------------------- the environment

const envClient = new URL("./peers/proxy_env_client.ts", import.meta.url).pathname;

/** Runs the env client with exactly `env` (and PATH, HOME); one result per URI. */
async function runEnvClient(
  env: Record<string, string>,
  uris: string[],
  permissions: string[] = ["--allow-net", "--allow-env"],
): Promise<string[]> {
  const passed: Record<string, string> = {};
  for (const name of ["PATH", "HOME", "DENO_DIR"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) passed[name] = value;
  }
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", ...permissions, envClient, ...uris],
    clearEnv: true,
    env: { ...passed, NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(output.code, 0, decoder.decode(output.stderr));
  return decoder.decode(output.stdout).trim().split("\n");
}

proxyTest("tinyproxy", "HTTP_PROXY and NO_PROXY from the environment (child process)", async () => {
  await using proxied = new EchoServer();
  await using direct = new EchoServer();
  await using proxy = await Tinyproxy.start({ connectPorts: [proxied.port, direct.port] });
  const lines = await runEnvClient(
    { HTTP_PROXY: proxy.url(), NO_PROXY: `example.com, ${HOST}:${direct.port}` },
    [proxied.uri, direct.uri],
  );
  assert.deepEqual(lines, [
    `${proxied.uri} remote port ${proxy.port}`,
    `${direct.uri} remote port ${direct.port}`,
  ]);
  await proxy.logMatching(new RegExp(`CONNECT ${HOST}:${proxied.port} HTTP/1.1`));
  assert.doesNotMatch(await proxy.log(), new RegExp(`CONNECT ${HOST}:${direct.port}`));
});

proxyTest("microsocks", "lower-case all_proxy wins over ALL_PROXY (child process)", async () => {
  await using server = new EchoServer();
  await using proxy = await Microsocks.start();
  const lines = await runEnvClient(
    { all_proxy: proxy.url("socks5h"), ALL_PROXY: `http://${HOST}:${freePort()}` },
    [server.uri],
  );
  assert.deepEqual(lines, [`${server.uri} remote port ${proxy.port}`]);
  await proxy.logMatching(new RegExp(`connected to ${HOST}:${server.port}`));
});

proxyTest(
  undefined,
  "without --allow-env the environment's proxy is ignored, no error",
  async () => {
    await using server = new EchoServer();
    // A proxy that would refuse: the client must not even try it.
    const lines = await runEnvClient(
      { HTTP_PROXY: `http://${HOST}:${freePort()}` },
      [server.uri],
      ["--allow-net"],
    );
    assert.deepEqual(lines, [`${server.uri} remote port ${server.port}`]);
  },
);

proxyTest(undefined, "--allow-env for some variables: those are read, the others not", async () => {
  await using proxy = new RawServer(async (peer) => {
    await peer.readHead();
    await peer.write("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
  });
  const refused = `http://${HOST}:${freePort()}`;
  const lines = await runEnvClient(
    // http_proxy (lower case, read first) isn't allowed: HTTP_PROXY applies.
    { http_proxy: refused, HTTP_PROXY: `http://${HOST}:${proxy.port}` },
    [`ws://${HOST}:9/`],
    ["--allow-net", "--allow-env=HTTP_PROXY"],
  );
  assert.deepEqual(lines, [
    `ws://${HOST}:9/ InvalidProxyStatus: proxy http://${HOST}:${proxy.port} failed: ` +
    "HTTP 407 Proxy Authentication Required",
  ]);
});

proxyTest(
  "tinyproxy",
  "a redirect out of NO_PROXY goes through the environment's proxy",
  async () => {
    await using target = new EchoServer();
    await using redirector = new RawServer(async (peer) => {
      await peer.readHead();
      await peer.write(
        `HTTP/1.1 302 Found\r\nLocation: ${target.uri}\r\nContent-Length: 0\r\n\r\n`,
      );
    });
    await using proxy = await Tinyproxy.start({ connectPorts: [target.port] });
    const lines = await runEnvClient(
      { http_proxy: proxy.url(), no_proxy: `${HOST}:${redirector.port}` },
      [redirector.uri()],
    );
    assert.deepEqual(lines, [`${redirector.uri()} remote port ${proxy.port}`]);
    await proxy.logMatching(new RegExp(`CONNECT ${HOST}:${target.port} HTTP/1.1`));
    assert.doesNotMatch(await proxy.log(), new RegExp(`CONNECT ${HOST}:${redirector.port}`));
  },
);

proxyTest(
  undefined,
  "the option null ignores the environment; an invalid proxy throws InvalidProxy",
  async () => {
    await using server = new EchoServer();
    const ws = await connect(server.uri, { proxy: null });
    assert.equal((ws.remoteAddr as Deno.NetAddr).port, server.port);
    await ws.close();
    const error = await rejection(connect(server.uri, { proxy: "socks4://127.0.0.1:1080" }));
    assert.ok(error instanceof InvalidProxy);
    assert.equal(isTransientError(error), false);
  },
);

// ---------------------------------------------------------------- hostile raw proxies

/** A raw proxy: `answer` gets each connection; the test learns when the client closed it. */
function rawProxy(answer: (peer: RawPeer) => Promise<void>): RawServer & { closed: Promise<void> } {
  const closed = deferred();
  const server = new RawServer(async (peer) => {
    try {
      await answer(peer);
      await peer.readToEnd(); // until the client closes its side
    } finally {
      closed.resolve();
    }
  });
  return Object.assign(server, { closed: closed.promise });
}

async function failThrough(
  proxy: RawServer,
  options: ConnectOptions = {},
  uri = `ws://${HOST}:9/`,
): Promise<unknown> {
  return await rejection(connect(uri, { proxy: `http://${HOST}:${proxy.port}`, ...options }));
}

proxyTest(
  undefined,
  "raw: a 407 nobody asked for is InvalidProxyStatus, its body unread",
  async () => {
    const wrote = deferred<number>();
    await using proxy = rawProxy(async (peer) => {
      const head = await peer.readHead();
      assert.equal(head?.includes("Proxy-Authorization"), false);
      await peer.write(
        "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 1000000000\r\n\r\n",
      );
      // An endless body: the client must stop at the head.
      let total = 0;
      try {
        for (; total < 1_000_000_000; total += 65536) await peer.write(new Uint8Array(65536));
      } catch {
        // the client closed
      }
      wrote.resolve(total);
    });
    const error = await failThrough(proxy);
    assert.ok(error instanceof InvalidProxyStatus);
    assert.equal(
      error.message,
      `proxy http://${HOST}:${proxy.port} failed: HTTP 407 Proxy Authentication Required`,
    );
    assert.equal(error.response.body, undefined);
    assert.ok(await within(wrote.promise, 10_000, "the proxy's endless body") < 1_000_000_000);
    await within(proxy.closed, 10_000, "the client closing");
  },
);

proxyTest(
  undefined,
  "raw: the CONNECT request names the target, with Host and credentials",
  async () => {
    const head = deferred<string>();
    await using proxy = rawProxy(async (peer) => {
      head.resolve((await peer.readHead())!);
      await peer.write("HTTP/1.1 502 Bad Gateway\r\n\r\n");
    });
    const error = await rejection(
      connect("ws://[::1]:8765/chat", {
        proxy: `http://us%C3%A9r:p%40ss@${HOST}:${proxy.port}`,
        userAgentHeader: "test-agent",
      }),
    );
    assert.ok(error instanceof InvalidProxyStatus);
    assert.equal(isTransientError(error), true);
    assert.equal(
      await head.promise,
      "CONNECT [::1]:8765 HTTP/1.1\r\nHost: [::1]:8765\r\nUser-Agent: test-agent\r\n" +
        `Proxy-Authorization: Basic ${btoa("us\u00c3\u00a9r:p@ss")}`,
    );
  },
);

proxyTest(
  undefined,
  "raw: garbage instead of HTTP is InvalidProxyMessage, not transient",
  async () => {
    await using proxy = rawProxy(async (peer) => {
      await peer.readHead();
      await peer.write("SSH-2.0-OpenSSH_9.2\r\n");
    });
    const error = await failThrough(proxy);
    assert.ok(error instanceof InvalidProxyMessage);
    assert.equal(
      error.message,
      `proxy http://${HOST}:${proxy.port} failed: invalid HTTP status line: SSH-2.0-OpenSSH_9.2`,
    );
    assert.equal(isTransientError(error), false);
    await within(proxy.closed, 10_000, "the client closing");
  },
);

proxyTest(undefined, "raw: endless bytes without a line end stop at maxLineLength", async () => {
  await using proxy = rawProxy(async (peer) => {
    await peer.readHead();
    try {
      for (;;) await peer.write(new Uint8Array(4096).fill(0x41));
    } catch {
      // the client closed
    }
  });
  const error = await failThrough(proxy, { httpLimits: { maxLineLength: 1000 } });
  assert.ok(error instanceof InvalidProxyMessage);
  assert.equal(
    error.message,
    `proxy http://${HOST}:${proxy.port} failed: line too long: limit is 1000 bytes`,
  );
});

proxyTest(undefined, "raw: too many header lines stop at maxNumHeaders", async () => {
  await using proxy = rawProxy(async (peer) => {
    await peer.readHead();
    await peer.write("HTTP/1.1 200 OK\r\n" + "X-Filler: 1\r\n".repeat(5) + "\r\n");
  });
  const error = await failThrough(proxy, { httpLimits: { maxNumHeaders: 4 } });
  assert.ok(error instanceof InvalidProxyMessage);
  assert.equal(
    error.message,
    `proxy http://${HOST}:${proxy.port} failed: too many HTTP headers: limit is 4`,
  );
});

proxyTest(
  undefined,
  "raw: a close in the middle of the reply is InvalidProxyMessage, transient",
  async () => {
    const closedAt = [
      ["HTTP/1.1 200 Conn", "status line"],
      ["HTTP/1.1 200 Connection established\r\nVia: x\r\n", "response headers"],
    ];
    for (const [partial, where] of closedAt) {
      await using proxy = new RawServer(async (peer) => {
        await peer.readHead();
        await peer.write(partial);
      });
      const error = await failThrough(proxy);
      assert.ok(error instanceof InvalidProxyMessage);
      assert.equal(
        error.message,
        `proxy http://${HOST}:${proxy.port} failed: connection closed while reading HTTP ${where}`,
      );
      assert.equal(isTransientError(error), true);
    }
  },
);

proxyTest(
  undefined,
  "raw: bytes after the 200 before the client spoke: InvalidProxyMessage",
  async () => {
    await using proxy = rawProxy(async (peer) => {
      await peer.readHead();
      await peer.write("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 101 Switching");
    });
    const error = await failThrough(proxy);
    assert.ok(error instanceof InvalidProxyMessage);
    assert.match(error.message, /failed: \d+ unexpected bytes after HTTP 200 to CONNECT$/);
  },
);

proxyTest(
  undefined,
  "raw: a silent proxy is HandshakeTimeout naming the proxy; nothing hangs",
  async () => {
    await using proxy = rawProxy(async (peer) => {
      await peer.readHead();
    });
    const started = performance.now();
    const error = await failThrough(proxy, { openTimeout: 300 });
    assert.ok(error instanceof HandshakeTimeout);
    assert.equal(
      error.message,
      `opening handshake timed out after 300 ms (openTimeout) waiting for proxy http://${HOST}:${proxy.port}`,
    );
    assert.equal(isTransientError(error), true);
    await within(proxy.closed, 10_000, "the client closing the silent proxy's connection");
    assertTook(performance.now() - started, 290, 300, "failed and closed");
  },
);

proxyTest(undefined, "raw: a proxy that refuses connections is ProxyError, transient", async () => {
  const port = freePort();
  const error = await rejection(connect(`ws://${HOST}:9/`, { proxy: `socks5://${HOST}:${port}` }));
  assert.ok(error instanceof ProxyError);
  assert.ok(error.cause instanceof Deno.errors.ConnectionRefused);
  assert.match(
    error.message,
    new RegExp(`^proxy socks5://${HOST}:${port} failed: cannot connect: `),
  );
  assert.equal(isTransientError(error), true);
});

/** Reads exactly `length` bytes from a raw peer's socket. */
async function readBytes(peer: RawPeer, length: number): Promise<number[]> {
  const bytes = new Uint8Array(length);
  for (let filled = 0; filled < length;) {
    const count = await peer.conn.read(bytes.subarray(filled));
    if (count === null) throw new Error("closed");
    filled += count;
  }
  return [...bytes];
}

/** A raw SOCKS5 proxy: reads the greeting and request, records the request, answers `reply`. */
function rawSocks(reply: number[], requests: number[][]): RawServer & { closed: Promise<void> } {
  return rawProxy(async (peer) => {
    const [, count] = await readBytes(peer, 2);
    await readBytes(peer, count);
    await peer.write(new Uint8Array([5, 0]));
    const head = await readBytes(peer, 4);
    const address = head[3] === 1
      ? await readBytes(peer, 4)
      : head[3] === 4
      ? await readBytes(peer, 16)
      : await readBytes(peer, 1).then(async (
        [length],
      ) => [length, ...await readBytes(peer, length)]);
    requests.push([...head, ...address, ...await readBytes(peer, 2)]);
    await peer.write(new Uint8Array(reply));
  });
}

proxyTest(
  undefined,
  "raw: socks5h sends the host name, socks5 the address it resolved",
  async () => {
    const requests: number[][] = [];
    // Reply 2: connection not allowed by ruleset.
    await using proxy = rawSocks([5, 2, 0, 1, 0, 0, 0, 0, 0, 0], requests);
    const { address } = await lookup("localhost");
    for (const scheme of ["socks5h", "socks5"]) {
      const error = await rejection(
        connect("ws://localhost:8765/", { proxy: `${scheme}://${HOST}:${proxy.port}` }),
      );
      assert.ok(error instanceof SocksProxyError);
      assert.equal(error.reply, 2);
      assert.equal(isTransientError(error), false);
    }
    const name = [..."localhost"].map((c) => c.charCodeAt(0));
    const resolved = address.includes(":") ? [4] : [1, ...address.split(".").map(Number)];
    assert.deepEqual(requests[0], [5, 1, 0, 3, name.length, ...name, 0x22, 0x3d]);
    assert.deepEqual(requests[1].slice(0, 4 + resolved.length - 1), [5, 1, 0, ...resolved]);
  },
);

proxyTest(
  undefined,
  "raw: a SOCKS5 error reply is SocksProxyError with its code named",
  async () => {
    await using proxy = rawSocks([5, 4, 0, 1, 0, 0, 0, 0, 0, 0], []);
    const error = await rejection(
      connect(`ws://${HOST}:9/`, { proxy: `socks5://${HOST}:${proxy.port}` }),
    );
    assert.ok(error instanceof SocksProxyError);
    assert.equal(
      error.message,
      `proxy socks5://${HOST}:${proxy.port} failed: host unreachable (reply 4)`,
    );
    assert.equal(isTransientError(error), true);
  },
);

proxyTest(
  undefined,
  "raw: HTTP from a SOCKS5 proxy, or a close mid-reply: InvalidProxyMessage",
  async () => {
    await using http = rawProxy(async (peer) => {
      await readBytes(peer, 3);
      await peer.write("HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    const garbage = await rejection(
      connect(`ws://${HOST}:9/`, { proxy: `socks5://${HOST}:${http.port}` }),
    );
    assert.ok(garbage instanceof InvalidProxyMessage);
    assert.equal(
      garbage.message,
      `proxy socks5://${HOST}:${http.port} failed: not a SOCKS5 reply: version 72`,
    );
    await using cut = new RawServer(async (peer) => {
      await readBytes(peer, 3);
      await peer.write(new Uint8Array([5, 0]));
      await readBytes(peer, 10);
      await peer.write(new Uint8Array([5, 0, 0, 1, 127]));
    });
    const closed = await rejection(
      connect(`ws://${HOST}:9/`, { proxy: `socks5://${HOST}:${cut.port}` }),
    );
    assert.ok(closed instanceof InvalidProxyMessage);
    assert.equal(
      closed.message,
      `proxy socks5://${HOST}:${cut.port} failed: connection closed while reading the SOCKS5 reply`,
    );
    assert.equal(isTransientError(closed), true);
  },
);

proxyTest(
  undefined,
  "raw: the reconnecting iterator retries a 503 proxy and stops at a 407",
  async () => {
    const statuses = ["503 Service Unavailable", "503 Service Unavailable", "407 Proxy Auth"];
    let attempts = 0;
    await using proxy = new RawServer(async (peer) => {
      await peer.readHead();
      await peer.write(`HTTP/1.1 ${statuses[Math.min(attempts++, 2)]}\r\n\r\n`);
    });
    const iterate = async () => {
      for await (
        const ws of connect(`ws://${HOST}:9/`, {
          proxy: `http://${HOST}:${proxy.port}`,
          backoff: { initialDelay: 10, maxDelay: 20 },
        })
      ) {
        await ws.close();
      }
    };
    const error = await rejection(iterate());
    assert.ok(error instanceof InvalidProxyStatus);
    assert.equal(error.response.statusCode, 407);
    assert.equal(attempts, 3);
  },
);

proxyTest("tinyproxy", "the CLI talks through --proxy", async () => {
  await using server = new EchoServer();
  await using proxy = await Tinyproxy.start({ connectPorts: [server.port] });
  await using cli = startCli(["--proxy", proxy.url(), server.uri]);
  await cli.waitFor("Connected");
  await cli.type("hello");
  await cli.waitFor("< hello\n");
  await cli.endInput();
  await cli.waitFor("Connection closed: 1000 (OK).\n");
  assert.equal((await cli.status).code, 0);
  assert.equal(cli.stdout, `Connected to ${server.uri}\n< hello\nConnection closed: 1000 (OK).\n`);
  assert.equal(server.remotePorts.length, 1);
  await proxy.logMatching(new RegExp(`CONNECT ${HOST}:${server.port} HTTP/1.1`));
});

/** A raw SOCKS5 proxy that answers with `answers`, one write after each message of the client. */
function scriptedSocks(answers: number[][]): RawServer & { closed: Promise<void> } {
  return rawProxy(async (peer) => {
    for (const answer of answers) {
      const chunk = new Uint8Array(1024);
      if (await peer.conn.read(chunk) === null) return;
      await peer.write(new Uint8Array(answer));
    }
  });
}

/** Connects to `uri` through a scripted SOCKS5 proxy; the error and the proxy's URL. */
async function socksFailure(
  answers: number[][],
  options: { credentials?: string; uri?: string } = {},
): Promise<[unknown, string]> {
  await using proxy = scriptedSocks(answers);
  const credentials = options.credentials === undefined ? "" : `${options.credentials}@`;
  const error = await rejection(
    connect(options.uri ?? `ws://${HOST}:9/`, {
      proxy: `socks5://${credentials}${HOST}:${proxy.port}`,
    }),
  );
  await within(proxy.closed, 10_000, "the client closing");
  return [error, `socks5://${HOST}:${proxy.port}`];
}

proxyTest(
  undefined,
  "raw: a SOCKS5 method that wasn't offered is InvalidProxyMessage",
  async () => {
    const [error, proxy] = await socksFailure([[5, 2]]);
    assert.ok(error instanceof InvalidProxyMessage);
    assert.equal(
      error.message,
      `proxy ${proxy} failed: proxy chose authentication method 2, not offered`,
    );
  },
);

proxyTest(undefined, "raw: a bad SOCKS5 authentication reply is InvalidProxyMessage", async () => {
  const [error, proxy] = await socksFailure([[5, 2], [5, 0]], { credentials: "u:p" });
  assert.ok(error instanceof InvalidProxyMessage);
  assert.equal(
    error.message,
    `proxy ${proxy} failed: invalid SOCKS5 authentication reply: version 5`,
  );
});

proxyTest(undefined, "raw: a SOCKS5 reply of another version is InvalidProxyMessage", async () => {
  const [error, proxy] = await socksFailure([[5, 0], [4, 90, 0, 0, 0, 0, 0, 0]]);
  assert.ok(error instanceof InvalidProxyMessage);
  assert.equal(error.message, `proxy ${proxy} failed: not a SOCKS5 reply: version 4`);
});

proxyTest(
  undefined,
  "raw: a SOCKS5 reply with an unknown address type is InvalidProxyMessage",
  async () => {
    const [error, proxy] = await socksFailure([[5, 0], [5, 0, 0, 9, 0, 0]]);
    assert.ok(error instanceof InvalidProxyMessage);
    assert.equal(error.message, `proxy ${proxy} failed: invalid address type in SOCKS5 reply: 9`);
  },
);

proxyTest(
  undefined,
  "raw: SOCKS5 credentials over 255 bytes fail before they are sent",
  async () => {
    const [error, proxy] = await socksFailure([[5, 2]], { credentials: `${"u".repeat(256)}:p` });
    assert.ok(error instanceof SocksProxyError);
    assert.equal(
      error.message,
      `proxy ${proxy} failed: user name or password longer than 255 bytes`,
    );
  },
);

proxyTest(
  undefined,
  "raw: a socks5h host name over 255 bytes fails before it is sent",
  async () => {
    const host = `${"a".repeat(60)}.`.repeat(5) + "example";
    await using proxy = scriptedSocks([[5, 0]]);
    const error = await rejection(
      connect(`ws://${host}/`, { proxy: `socks5h://${HOST}:${proxy.port}` }),
    );
    assert.ok(error instanceof SocksProxyError);
    assert.equal(
      error.message,
      `proxy socks5h://${HOST}:${proxy.port} failed: host name longer than 255 bytes: ${host}`,
    );
  },
);

proxyTest(undefined, "raw: socks5 with a name that doesn't resolve is ProxyError", async () => {
  const [error, proxy] = await socksFailure([[5, 0]], { uri: "ws://nonexistent.invalid/" });
  assert.ok(error instanceof ProxyError);
  assert.match(
    error.message,
    new RegExp(`^proxy ${proxy} failed: cannot resolve nonexistent.invalid: `),
  );
  assert.equal(isTransientError(error), false);
});

proxyTest(
  undefined,
  "raw: SOCKS5 replies binding a name or an IPv6 address open the tunnel",
  async () => {
    const bound = [
      [5, 0, 0, 3, 9, ..."localhost"].map((x) => typeof x === "string" ? x.charCodeAt(0) : x),
      [5, 0, 0, 4, ...new Array(16).fill(0)],
    ];
    for (const reply of bound) {
      // The proxy is also the server: after its reply, it answers the WebSocket handshake itself.
      await using proxy = rawProxy(async (peer) => {
        const chunk = new Uint8Array(1024);
        await peer.conn.read(chunk);
        await peer.write(new Uint8Array([5, 0]));
        await peer.conn.read(chunk);
        await peer.write(new Uint8Array([...reply, 0x1f, 0x90]));
        await acceptRaw(peer);
      });
      const ws = await connect(`ws://${HOST}:8080/`, { proxy: `socks5://${HOST}:${proxy.port}` });
      assert.equal((ws.remoteAddr as Deno.NetAddr).port, proxy.port);
      ws.abort();
      await within(proxy.closed, 10_000, "the client closing");
    }
  },
);

proxyTest(
  "tinyproxy",
  "wss: through a proxy checks the server's certificate, not the proxy's",
  async () => {
    await using proxyTls = await selfSignedCert();
    await using serverTls = await selfSignedCert();
    await using server = new EchoServer({ tls: serverTls, uriHost: "localhost" });
    await using proxy = await Tinyproxy.start({ connectPorts: [server.port] });
    await using front = new TlsFront(proxyTls, proxy.port);
    // Trusting the proxy's certificate only: both the plain and the TLS proxy lead to a server
    // whose certificate isn't trusted.
    for (const url of [proxy.url(), `https://localhost:${front.port}`]) {
      const error = await rejection(connect(server.uri, { proxy: url, caCerts: [proxyTls.cert] }));
      assert.ok(error instanceof Error && /certificate/i.test(error.message), String(error));
    }
    await proxy.logMatching(new RegExp(`CONNECT localhost:${server.port}[^]*CONNECT localhost`));
  },
);

proxyTest(
  undefined,
  "raw: silence after an https: proxy's 200 (TLS inside TLS) is HandshakeTimeout",
  async () => {
    await using tls = await selfSignedCert();
    const listener = Deno.listenTls({ hostname: HOST, port: 0, cert: tls.cert, key: tls.key });
    const closed = deferred<Uint8Array>();
    const serving = (async () => {
      const conn = await listener.accept();
      const peer = new RawPeer(conn);
      try {
        await peer.readHead();
        await peer.write("HTTP/1.1 200 Connection established\r\n\r\n");
        closed.resolve(await peer.readToEnd()); // the client's TLS hello, then its close
      } finally {
        peer.close();
      }
    })();
    try {
      const error = await rejection(
        connect(`wss://localhost:9/`, {
          proxy: `https://localhost:${listener.addr.port}`,
          caCerts: [tls.cert],
          openTimeout: 500,
        }),
      );
      assert.ok(error instanceof HandshakeTimeout);
      assert.equal(
        error.message,
        "opening handshake timed out after 500 ms (openTimeout) " +
          `waiting for proxy https://localhost:${listener.addr.port}`,
      );
      const hello = await within(closed.promise, 10_000, "the client closing");
      assert.equal(hello[0], 0x16); // a TLS handshake record: the inner ClientHello
    } finally {
      listener.close();
      await serving;
    }
  },
);

proxyTest(
  "tinyproxy",
  "wss: through an https: proxy trusts caCerts and the default roots, given --allow-sys",
  async () => {
    await using proxyTls = await selfSignedCert();
    await using serverTls = await selfSignedCert();
    await using server = new EchoServer({ tls: serverTls, uriHost: "localhost" });
    await using proxy = await Tinyproxy.start({ connectPorts: [server.port] });
    await using front = new TlsFront(proxyTls, proxy.port);
    // The server's certificate is a default root (NODE_EXTRA_CA_CERTS); the proxy's is in caCerts.
    const run = (permissions: string[]) =>
      runEnvClient({ NODE_EXTRA_CA_CERTS: serverTls.certFile }, [
        `--proxy=https://localhost:${front.port}`,
        `--ca=${proxyTls.certFile}`,
        server.uri,
      ], permissions);
    assert.deepEqual(await run(["--allow-net", "--allow-read", "--allow-env", "--allow-sys"]), [
      `${server.uri} remote port ${front.port}`,
    ]);
    // Without --allow-sys the default roots can't be read for node:tls: caCerts alone.
    const [line] = await run(["--allow-net", "--allow-read", "--allow-env"]);
    assert.match(line, /certificate/);
  },
);
