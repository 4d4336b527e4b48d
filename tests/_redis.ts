// A real redis-server for the tests and benchmarks: found (or installed with apt-get when
// missing), started on a free loopback port without persistence, stopped by PID. Plus a raw
// RESP client, for what a test must do behind the library's back (publish garbage, count
// subscribers).

const HOST = "127.0.0.1";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

async function runs(command: string, args: string[]): Promise<boolean> {
  try {
    const { success } = await new Deno.Command(command, {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch {
    return false; // not installed
  }
}

let found: Promise<string | undefined> | undefined;

/**
 * The redis-server command, installing Debian's package when it is missing and we are root;
 * `undefined` when it can't be had.
 */
export function findRedisServer(): Promise<string | undefined> {
  found ??= (async () => {
    if (await runs("redis-server", ["--version"])) return "redis-server";
    if (Deno.uid() === 0) {
      console.warn("redis-server is missing: installing it with apt-get");
      const env = { DEBIAN_FRONTEND: "noninteractive" };
      const signal = AbortSignal.timeout(240_000);
      for (const args of [["update", "-qq"], ["install", "-y", "-qq", "redis-server"]]) {
        try {
          await new Deno.Command("apt-get", {
            args,
            env,
            signal,
            stdin: "null",
            stdout: "null",
            stderr: "inherit",
          }).output();
        } catch {
          break;
        }
      }
      if (await runs("redis-server", ["--version"])) return "redis-server";
    }
    return undefined;
  })();
  return found;
}

/** A loopback TCP port that was free a moment ago. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** A running redis-server. */
export interface RedisServer {
  readonly port: number;
  /** `redis://127.0.0.1:PORT`. */
  readonly url: string;
  readonly pid: number;
  /** Stops it (SIGTERM to its PID, SIGKILL after 5 s) and waits until it exited. */
  stop(): Promise<void>;
}

/**
 * Starts `redis-server` on `port` (default: a free one) bound to 127.0.0.1, without RDB or AOF
 * persistence, and resolves once it answers PING. Throws when redis-server is missing (callers
 * decide to skip before) or doesn't answer within 10 s.
 */
export async function startRedis(port: number = freePort()): Promise<RedisServer> {
  const command = await findRedisServer();
  if (command === undefined) {
    throw new Error("redis-server is not installed and could not be installed with apt-get");
  }
  const child = new Deno.Command(command, {
    args: [
      "--port",
      String(port),
      "--bind",
      HOST,
      "--save",
      "",
      "--appendonly",
      "no",
      "--loglevel",
      "warning",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  let exited = false;
  const status = child.status.finally(() => (exited = true));
  const stop = async () => {
    if (!exited) {
      try {
        Deno.kill(child.pid, "SIGTERM");
      } catch {
        // exited meanwhile
      }
      const timer = setTimeout(() => {
        try {
          Deno.kill(child.pid, "SIGKILL");
        } catch {
          // exited meanwhile
        }
      }, 5_000);
      await status;
      clearTimeout(timer);
    }
    await status;
  };
  const deadline = performance.now() + 10_000;
  while (!(await ping(port))) {
    if (exited || performance.now() > deadline) {
      await stop();
      throw new Error(`redis-server on port ${port} didn't answer PING within 10 s`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return { port, url: `redis://${HOST}:${port}`, pid: child.pid, stop };
}

/** Whether a Redis server on `port` answers PING. */
export async function ping(port: number): Promise<boolean> {
  try {
    return (await redisCommand(port, ["PING"])) === "PONG";
  } catch {
    return false;
  }
}

/** A reply of Redis: simple string, integer, bulk string (bytes) or array. */
export type Reply = string | number | Uint8Array | null | Reply[];

/**
 * Sends one command over a fresh connection (a raw client: strings and bytes go as they are)
 * and returns the reply. Throws for an error reply or after 5 s.
 */
export async function redisCommand(port: number, args: (string | Uint8Array)[]): Promise<Reply> {
  const conn = await Deno.connect({ hostname: HOST, port });
  const timer = setTimeout(() => conn.close(), 5_000);
  try {
    const parts: Uint8Array[] = [encoder.encode(`*${args.length}\r\n`)];
    for (const arg of args) {
      const bytes = typeof arg === "string" ? encoder.encode(arg) : arg;
      parts.push(encoder.encode(`$${bytes.length}\r\n`), bytes, encoder.encode("\r\n"));
    }
    const request = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
    let offset = 0;
    for (const part of parts) {
      request.set(part, offset);
      offset += part.length;
    }
    for (let written = 0; written < request.length;) {
      written += await conn.write(request.subarray(written));
    }
    const reader = new ReplyReader(conn);
    return await reader.read();
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // closed by the timer
    }
  }
}

class ReplyReader {
  #conn: Deno.Conn;
  #buffer = new Uint8Array(0);

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  async #fill(): Promise<void> {
    const chunk = new Uint8Array(64 * 1024);
    const n = await this.#conn.read(chunk);
    if (n === null) throw new Error("Redis closed the connection before replying");
    const buffer = new Uint8Array(this.#buffer.length + n);
    buffer.set(this.#buffer);
    buffer.set(chunk.subarray(0, n), this.#buffer.length);
    this.#buffer = buffer;
  }

  async #line(): Promise<string> {
    for (;;) {
      const end = this.#buffer.findIndex((byte, i) => byte === 13 && this.#buffer[i + 1] === 10);
      if (end >= 0) {
        const line = decoder.decode(this.#buffer.subarray(0, end));
        this.#buffer = this.#buffer.subarray(end + 2);
        return line;
      }
      await this.#fill();
    }
  }

  async read(): Promise<Reply> {
    const line = await this.#line();
    const rest = line.slice(1);
    switch (line[0]) {
      case "+":
        return rest;
      case "-":
        throw new Error(`Redis error: ${rest}`);
      case ":":
        return Number(rest);
      case "$": {
        const length = Number(rest);
        if (length < 0) return null;
        while (this.#buffer.length < length + 2) await this.#fill();
        const bytes = this.#buffer.slice(0, length);
        this.#buffer = this.#buffer.subarray(length + 2);
        return bytes;
      }
      case "*": {
        const count = Number(rest);
        if (count < 0) return null;
        const items: Reply[] = [];
        for (let i = 0; i < count; i++) items.push(await this.read());
        return items;
      }
      default:
        throw new Error(`Unexpected Redis reply: ${line}`);
    }
  }
}
