/**
 * What permessage-deflate costs in memory per connection, for each way it can be negotiated:
 * the growth of a server's and of a client process's resident memory with N connections that
 * each sent and received one 4 KiB JSON message, minus the same without compression.
 *
 *   deno run -A bench/deflate_memory.ts [--conns 1000] [--repeat 3] [--size 4096]
 *
 * For each configuration (in a rotating order, `--repeat` times) it starts a server process and
 * a client process (this file, in the `server` and `clients` roles). The client process opens and
 * closes one connection (one-time costs), then both processes collect garbage and their resident
 * memory (VmRSS) is read; the client opens `--conns` connections that each send one message,
 * which the server echoes; both collect garbage again and their memory is read again. The table
 * shows the median growth per connection, minus the median growth of the uncompressed run: the
 * memory of the compressors and decompressors. Prints a table and one JSON line.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { connect } from "../client.ts";
import type { StreamConnection } from "../connection.ts";
import {
  ClientPerMessageDeflateFactory,
  type ClientPerMessageDeflateOptions,
  ServerPerMessageDeflateFactory,
  type ServerPerMessageDeflateOptions,
} from "../permessage_deflate.ts";
import { serve } from "../server.ts";

/** One way to negotiate permessage-deflate: the server's and the client's settings. */
interface Setup {
  name: string;
  server?: ServerPerMessageDeflateOptions;
  client?: ClientPerMessageDeflateOptions;
}

const BASELINE = "no compression";

const SETUPS: Setup[] = [
  { name: BASELINE },
  {
    name: "context takeover, windows 15",
    server: {},
    client: {},
  },
  {
    name: "context takeover, windows 12",
    server: { serverMaxWindowBits: 12, clientMaxWindowBits: 12 },
    client: { clientMaxWindowBits: true },
  },
  {
    // What `compression: "deflate"` negotiates between this library's server and client.
    name: "the defaults (server_no_context_takeover; client_max_window_bits=12)",
    server: { serverNoContextTakeover: true, clientMaxWindowBits: 12 },
    client: { clientMaxWindowBits: true },
  },
  {
    name: "no context takeover both ways",
    server: { serverNoContextTakeover: true, clientNoContextTakeover: true },
    client: { clientNoContextTakeover: true },
  },
];

const { values } = parseArgs({
  args: Deno.args,
  options: {
    role: { type: "string", default: "main" },
    setup: { type: "string", default: "0" },
    port: { type: "string", default: "0" },
    conns: { type: "string", default: "1000" },
    repeat: { type: "string", default: "3" },
    size: { type: "string", default: "4096" },
  },
});

function positiveInteger(name: string, text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) {
    throw new RangeError(`--${name} must be a positive integer, got ${text}`);
  }
  return value;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Resident memory of this process in KiB, after a full garbage collection. */
function rssAfterGc(): number {
  (globalThis as { gc?: () => void }).gc?.();
  const status = Deno.readTextFileSync("/proc/self/status");
  return Number(status.match(/^VmRSS:\s+(\d+) kB/m)?.[1] ?? NaN);
}

/** A JSON message of about `size` bytes, the same every time: records with repeating keys. */
function jsonMessage(size: number): string {
  let state = 1;
  const next = () => (state = (state * 1103515245 + 12345) & 0x7fffffff);
  const words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"];
  const records: unknown[] = [];
  while (JSON.stringify(records).length < size) {
    records.push({
      id: next() % 100_000,
      user: words[next() % words.length],
      text: `${words[next() % words.length]} ${words[next() % words.length]} ${next() % 1000}`,
      at: 1_700_000_000_000 + next() % 1_000_000,
    });
  }
  return JSON.stringify(records).slice(0, size);
}

/** Reads `stream` line by line. */
async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let text = "";
  for await (const chunk of stream) {
    text += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = text.indexOf("\n")) >= 0) {
      yield text.slice(0, end);
      text = text.slice(end + 1);
    }
  }
}

/** The server role: echoes every message; on each line of stdin, collects garbage and prints its memory. */
async function serverRole(setup: Setup, port: number): Promise<void> {
  const server = serve(async (ws) => {
    for await (const message of ws) await ws.send(message);
  }, {
    hostname: "127.0.0.1",
    port,
    pingInterval: null,
    ...(setup.server === undefined
      ? { compression: null }
      : { extensions: [new ServerPerMessageDeflateFactory(setup.server)] }),
  });
  console.log(`listening on ws://127.0.0.1:${server.port}`);
  for await (const _ of lines(Deno.stdin.readable)) console.log(`rss ${rssAfterGc()}`);
  Deno.exit(0);
}

/** The client role: warms up, then opens `conns` connections that each exchange one message. */
async function clientsRole(setup: Setup, port: number, conns: number, size: number) {
  const url = `ws://127.0.0.1:${port}/`;
  const message = jsonMessage(size);
  const options = {
    pingInterval: null,
    ...(setup.client === undefined
      ? { compression: null }
      : { extensions: [new ClientPerMessageDeflateFactory(setup.client)] }),
  };
  const open: StreamConnection[] = [];
  const exchange = async () => {
    const ws = await connect(url, options);
    await ws.send(message);
    const echo = await ws.recv();
    if (echo !== message) throw new Error("the echo differs from the message sent");
    return ws;
  };
  await (await exchange()).close();
  const input = lines(Deno.stdin.readable);
  console.log(`warm rss ${rssAfterGc()}`);
  await input.next(); // go
  for (let i = 0; i < conns; i += 100) {
    open.push(...await Promise.all(Array.from({ length: Math.min(100, conns - i) }, exchange)));
  }
  // What the server answered, e.g. "permessage-deflate; server_no_context_takeover; …".
  const extensions = open[0].response?.headers.get("Sec-WebSocket-Extensions") ?? "none";
  console.log(`done rss ${rssAfterGc()} extensions ${extensions}`);
  await input.next(); // stop
  Deno.exit(0);
}

/** A child process running this file in `role`, with its lines of output. */
function child(role: string, args: string[]) {
  const process = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--v8-flags=--expose-gc",
      new URL(import.meta.url).pathname,
      "--role",
      role,
      ...args,
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const output = lines(process.stdout);
  const writer = process.stdin.getWriter();
  return {
    process,
    async expect(prefix: string): Promise<string> {
      const { value, done } = await output.next();
      if (done || !value.startsWith(prefix)) {
        throw new Error(`${role}: expected "${prefix}…", got ${done ? "the end" : `"${value}"`}`);
      }
      return value.slice(prefix.length);
    },
    send: (line: string) => writer.write(encoder.encode(`${line}\n`)),
    async stop() {
      try {
        process.kill("SIGKILL");
      } catch {
        // already gone
      }
      await process.status;
    },
  };
}

/** One measurement: KiB per connection that the server and the client process grew by. */
async function measure(index: number, conns: number, size: number) {
  const server = child("server", ["--setup", `${index}`, "--port", "0"]);
  let clients: ReturnType<typeof child> | undefined;
  try {
    const port = Number((await server.expect("listening on ws://127.0.0.1:")).trim());
    clients = child("clients", [
      "--setup",
      `${index}`,
      "--port",
      `${port}`,
      "--conns",
      `${conns}`,
      "--size",
      `${size}`,
    ]);
    const clientBefore = Number(await clients.expect("warm rss "));
    await server.send("measure");
    const serverBefore = Number(await server.expect("rss "));
    await clients.send("go");
    const [clientAfterText, extensions] = (await clients.expect("done rss ")).split(" extensions ");
    await server.send("measure");
    const serverAfter = Number(await server.expect("rss "));
    return {
      server: (serverAfter - serverBefore) / conns,
      client: (Number(clientAfterText) - clientBefore) / conns,
      extensions,
    };
  } finally {
    await clients?.stop();
    await server.stop();
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

async function main(): Promise<void> {
  const conns = positiveInteger("conns", values.conns);
  const repeat = positiveInteger("repeat", values.repeat);
  const size = positiveInteger("size", values.size);
  const runs = SETUPS.map(() => ({ server: [] as number[], client: [] as number[], ext: "" }));
  for (let r = 0; r < repeat; r++) {
    for (let k = 0; k < SETUPS.length; k++) {
      const index = (k + r) % SETUPS.length; // rotate the order every repetition
      const result = await measure(index, conns, size);
      runs[index].server.push(result.server);
      runs[index].client.push(result.client);
      runs[index].ext = result.extensions;
    }
  }
  const baseServer = median(runs[0].server);
  const baseClient = median(runs[0].client);
  const rows = SETUPS.map((setup, i) => ({
    negotiated: setup.name,
    server: i === 0 ? median(runs[i].server) : median(runs[i].server) - baseServer,
    client: i === 0 ? median(runs[i].client) : median(runs[i].client) - baseClient,
    extensions: runs[i].ext,
  }));
  const kib = (value: number) => `${value.toFixed(0)} KiB`;
  const width = Math.max(...rows.map((row) => row.negotiated.length));
  console.log(
    `extra memory per connection, ${conns} connections, one ${size}-byte JSON message each way ` +
      `(medians of ${repeat}; Deno ${Deno.version.deno})`,
  );
  console.log(`${"negotiated".padEnd(width)} | ${"server".padStart(8)} | ${"client".padStart(8)}`);
  for (const row of rows) {
    const label = row === rows[0]
      ? `${row.negotiated} (per connection, not extra)`
      : row.negotiated;
    console.log(
      `${label.padEnd(width)} | ${kib(row.server).padStart(8)} | ${kib(row.client).padStart(8)}`,
    );
  }
  console.log(JSON.stringify({ conns, repeat, size, deno: Deno.version.deno, rows }));
}

const setup = SETUPS[Number(values.setup)];
if (values.role === "server") {
  await serverRole(setup, Number(values.port));
} else if (values.role === "clients") {
  await clientsRole(
    setup,
    Number(values.port),
    positiveInteger("conns", values.conns),
    positiveInteger("size", values.size),
  );
} else {
  await main();
}
