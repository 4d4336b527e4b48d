/**
 * Scaling out with a Room over Redis: deliveries per second and publish → receive latency with
 * two server processes sharing one Redis, beside the same load on a single process.
 *
 *   deno run -A bench/cluster_bench.ts [--clients 1000] [--publishers 2] [--size 64]
 *                                      [--window 32] [--seconds 5] [--warmup 1] [--rate 10]
 *                                      [--latency-seconds 10] [--repeat 3]
 *
 * Each scenario starts `examples/cluster_server.ts` processes (one without Redis, or two
 * sharing a redis-server started for the run), opens `--clients` connections split evenly
 * between them with this library's `connect()` (no compression, no keepalive), and picks
 * `--publishers` of those clients spread over the processes. Every message goes to every
 * client, so one message is `--clients` deliveries.
 *
 * - **Throughput**: each publisher keeps `--window` messages in flight (sent and not yet
 *   received by every client) for `--seconds`, after `--warmup`; deliveries/s counts every
 *   client's receipts.
 * - **Latency**: each publisher sends `--rate` messages per second for `--latency-seconds`,
 *   a load far from saturation; p50/p99 of send → receive over every delivery. Each message
 *   is one burst of deliveries, so the p99 rests on the slowest few messages: keep this phase
 *   long. The difference between the
 *   scenarios is what the Redis hop adds. With two processes, latency is also split between
 *   the clients of the publisher's process and those of the other one.
 *
 * Scenarios alternate (single, two processes, single, …) `--repeat` times; the table shows
 * medians.
 *
 * Clients and publishers live in this process, so every timestamp comes from one clock. When
 * `taskset` is there and the machine has two cores or more, this process (the clients) is pinned
 * to CPU 1 and the servers and Redis to CPU 0, so both scenarios get the same server CPU. Read
 * the figures side by side, not as absolutes. Prints a table and one JSON line.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { connect } from "../client.ts";
import type { Connection } from "../connection.ts";
import { type RedisServer, startRedis } from "../tests/_redis.ts";

const EXAMPLE = new URL("../examples/cluster_server.ts", import.meta.url).pathname;
const HOST = "127.0.0.1";
/** Publisher index (1 byte), sequence number (4 bytes), send time in ms (8 bytes). */
const HEADER = 13;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    clients: { type: "string", default: "1000" },
    publishers: { type: "string", default: "2" },
    size: { type: "string", default: "64" },
    window: { type: "string", default: "32" },
    seconds: { type: "string", default: "5" },
    warmup: { type: "string", default: "1" },
    rate: { type: "string", default: "10" },
    "latency-seconds": { type: "string", default: "10" },
    repeat: { type: "string", default: "3" },
  },
});

function option(name: keyof typeof values, min: number): number {
  const value = Number(values[name]);
  if (!Number.isFinite(value) || value < min) {
    console.error(`--${name} must be a number >= ${min}, got ${values[name]}`);
    Deno.exit(64);
  }
  return value;
}

const CLIENTS = option("clients", 2);
const PUBLISHERS = option("publishers", 1);
const SIZE = Math.max(HEADER, option("size", 1));
const WINDOW = option("window", 1);
const SECONDS = option("seconds", 0.1);
const WARMUP = option("warmup", 0);
const RATE = option("rate", 0.1);
const LATENCY_SECONDS = option("latency-seconds", 0.1);
const REPEAT = Math.round(option("repeat", 1));

const SERVER_CPU = "0";
const CLIENT_CPU = "1";

/** Pins every thread of `pid` to `cpu`; false when that isn't possible here. */
async function pin(pid: number, cpu: string): Promise<boolean> {
  if (navigator.hardwareConcurrency < 2) return false;
  try {
    const { success } = await new Deno.Command("taskset", {
      args: ["-a", "-p", "-c", cpu, String(pid)],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch {
    return false; // no taskset
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------------------------
// Server processes

interface ServerProcess {
  url: string;
  stop(): Promise<void>;
}

async function startServer(redis: RedisServer | undefined): Promise<ServerProcess> {
  const args = ["run", "-A", EXAMPLE, "--port", "0", "--hostname", HOST, "--room", "bench"];
  if (redis !== undefined) args.push("--redis", redis.url);
  const child = new Deno.Command(PINNED ? "taskset" : Deno.execPath(), {
    args: PINNED ? ["-c", SERVER_CPU, Deno.execPath(), ...args] : args,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let output = "";
  let match: RegExpMatchArray | null = null;
  const deadline = performance.now() + 20_000;
  while (match === null) {
    if (performance.now() > deadline) throw new Error(`no listening line: ${output}`);
    const { value, done } = await reader.read();
    if (done) throw new Error(`the server exited: ${output}`);
    output += value;
    match = output.match(/^listening on (ws:\/\/\S+)$/m);
  }
  // Keep draining stdout so the server never blocks on it.
  const drained = (async () => {
    while (!(await reader.read()).done) { /* discard */ }
  })();
  return {
    url: `${match[1]}/`,
    async stop() {
      try {
        Deno.kill(child.pid, "SIGTERM");
      } catch {
        // already exited
      }
      const timer = setTimeout(() => {
        try {
          Deno.kill(child.pid, "SIGKILL");
        } catch {
          // exited meanwhile
        }
      }, 10_000);
      await child.status;
      clearTimeout(timer);
      await drained;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Load

interface PhaseResult {
  deliveriesPerSecond: number;
  p50: number;
  p99: number;
  /** Latency to the clients of the publisher's own process. */
  sameP50: number;
  sameP99: number;
  /** Latency to the clients of the other process (through Redis); NaN with one process. */
  otherP50: number;
  otherP99: number;
  messages: number;
}

interface ScenarioResult {
  scenario: string;
  processes: number;
  throughput: PhaseResult;
  latency: PhaseResult;
}

class Latencies {
  #values = new Float64Array(1 << 20);
  #length = 0;

  push(value: number): void {
    if (this.#length === this.#values.length) {
      const bigger = new Float64Array(this.#values.length * 2);
      bigger.set(this.#values);
      this.#values = bigger;
    }
    this.#values[this.#length++] = value;
  }

  get length(): number {
    return this.#length;
  }

  percentile(p: number): number {
    if (this.#length === 0) return NaN;
    const sorted = this.#values.slice(0, this.#length).sort();
    return sorted[Math.min(this.#length - 1, Math.floor((p / 100) * this.#length))];
  }
}

async function openClients(urls: string[]): Promise<Connection[]> {
  const clients: Connection[] = new Array(CLIENTS);
  let next = 0;
  // 50 handshakes at a time, clients assigned to the servers in turn.
  await Promise.all(Array.from({ length: 50 }, async () => {
    while (next < CLIENTS) {
      const index = next++;
      clients[index] = await connect(urls[index % urls.length], {
        compression: null,
        pingInterval: null,
        openTimeout: 30_000,
      });
    }
  }));
  return clients;
}

async function runScenario(
  scenario: string,
  redis: RedisServer | undefined,
  processes: number,
): Promise<ScenarioResult> {
  const servers = await Promise.all(Array.from({ length: processes }, () => startServer(redis)));
  const clients = await openClients(servers.map((server) => server.url));
  // Publishers spread over the servers: client i is on server i % processes.
  const publishers = Array.from(
    { length: PUBLISHERS },
    (_, i) => clients[Math.floor((i * CLIENTS) / PUBLISHERS)],
  );

  let measuring = false;
  let deliveries = 0;
  let latencies = new Latencies();
  let same = new Latencies();
  let other = new Latencies();
  /** Per publisher: deliveries still expected, by sequence number. */
  const pending = publishers.map(() => new Map<number, number>());
  const sequence = publishers.map(() => 0);
  let onComplete: (publisher: number) => void = () => {};

  const publisherProcess = publishers.map((publisher) => clients.indexOf(publisher) % processes);
  const receiving = clients.map(async (client, index) => {
    const home = index % processes;
    try {
      for await (const message of client) {
        if (typeof message === "string" || message.length < HEADER) continue;
        const view = new DataView(message.buffer, message.byteOffset, message.byteLength);
        const publisher = view.getUint8(0);
        const seq = view.getUint32(1);
        if (measuring) {
          deliveries++;
          const latency = performance.now() - view.getFloat64(5);
          latencies.push(latency);
          (publisherProcess[publisher] === home ? same : other).push(latency);
        }
        const map = pending[publisher];
        const left = (map.get(seq) ?? CLIENTS) - 1;
        if (left === 0) {
          map.delete(seq);
          onComplete(publisher);
        } else {
          map.set(seq, left);
        }
      }
    } catch {
      // closed at the end
    }
  });

  const payload = new Uint8Array(SIZE);
  function send(publisher: number): void {
    const seq = sequence[publisher]++;
    const view = new DataView(payload.buffer);
    view.setUint8(0, publisher);
    view.setUint32(1, seq);
    view.setFloat64(5, performance.now());
    pending[publisher].set(seq, CLIENTS);
    publishers[publisher].send(payload).catch(() => {});
  }

  async function phase(
    seconds: number,
    run: (stop: AbortSignal) => void,
  ): Promise<PhaseResult> {
    const controller = new AbortController();
    run(controller.signal);
    await delay(WARMUP * 1000);
    deliveries = 0;
    latencies = new Latencies();
    same = new Latencies();
    other = new Latencies();
    const first = sequence.reduce((sum, count) => sum + count, 0);
    measuring = true;
    const start = performance.now();
    await delay(seconds * 1000);
    const elapsed = (performance.now() - start) / 1000;
    measuring = false;
    const counted = deliveries;
    const messages = sequence.reduce((sum, count) => sum + count, 0) - first;
    controller.abort();
    // Let what is in flight arrive before the next phase.
    const drained = performance.now() + 10_000;
    while (pending.some((map) => map.size > 0) && performance.now() < drained) await delay(10);
    onComplete = () => {};
    return {
      deliveriesPerSecond: counted / elapsed,
      p50: latencies.percentile(50),
      p99: latencies.percentile(99),
      sameP50: same.percentile(50),
      sameP99: same.percentile(99),
      otherP50: other.percentile(50),
      otherP99: other.percentile(99),
      messages,
    };
  }

  const throughput = await phase(SECONDS, (stop) => {
    onComplete = (publisher) => {
      if (!stop.aborted) send(publisher);
    };
    for (let publisher = 0; publisher < PUBLISHERS; publisher++) {
      for (let i = 0; i < WINDOW; i++) send(publisher);
    }
  });

  const latency = await phase(LATENCY_SECONDS, (stop) => {
    const interval = 1000 / RATE;
    publishers.forEach((_, publisher) => {
      // Publishers start evenly staggered within one interval.
      const timeout = setTimeout(() => {
        const timer = setInterval(() => send(publisher), interval);
        stop.addEventListener("abort", () => clearInterval(timer));
        send(publisher);
      }, (publisher * interval) / PUBLISHERS);
      stop.addEventListener("abort", () => clearTimeout(timeout));
    });
  });

  await Promise.all(clients.map((client) => client.close().catch(() => {})));
  await Promise.all(receiving);
  await Promise.all(servers.map((server) => server.stop()));
  return { scenario, processes, throughput, latency };
}

// ---------------------------------------------------------------------------------------------
// Main

function median(values: number[]): number {
  const sorted = values.filter((value) => !Number.isNaN(value)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function medianPhase(phases: PhaseResult[]): PhaseResult {
  const of = (key: keyof PhaseResult) => median(phases.map((phase) => phase[key]));
  return {
    deliveriesPerSecond: of("deliveriesPerSecond"),
    p50: of("p50"),
    p99: of("p99"),
    sameP50: of("sameP50"),
    sameP99: of("sameP99"),
    otherP50: of("otherP50"),
    otherP99: of("otherP99"),
    messages: of("messages"),
  };
}

const PINNED = await pin(Deno.pid, CLIENT_CPU);
const redis = await startRedis();
if (PINNED) await pin(redis.pid, SERVER_CPU);
const runs: ScenarioResult[][] = [[], []];
try {
  for (let i = 0; i < REPEAT; i++) {
    runs[0].push(await runScenario("single process", undefined, 1));
    runs[1].push(await runScenario("2 processes + Redis", redis, 2));
  }
} finally {
  await redis.stop();
}
const results: ScenarioResult[] = runs.map((list) => ({
  scenario: list[0].scenario,
  processes: list[0].processes,
  throughput: medianPhase(list.map((result) => result.throughput)),
  latency: medianPhase(list.map((result) => result.latency)),
}));

const fixed = (value: number, digits = 2) => Number.isNaN(value) ? "-" : value.toFixed(digits);
console.log(
  `\n${CLIENTS} clients, ${PUBLISHERS} publishers, ${SIZE}-byte binary messages; ` +
    `throughput with ${WINDOW} messages in flight per publisher, ` +
    `latency at ${RATE} messages/s per publisher; medians of ${REPEAT} runs; ` +
    (PINNED
      ? `servers and Redis on CPU ${SERVER_CPU}, clients on CPU ${CLIENT_CPU}\n`
      : "not pinned to CPUs\n"),
);
console.log(
  "| scenario | deliveries/s | p50 ms | p99 ms | paced p50 ms | paced p99 ms " +
    "| paced p50 / p99 ms, publisher's process | paced p50 / p99 ms, other process |\n" +
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
);
for (const result of results) {
  const { throughput: t, latency: l } = result;
  console.log(
    `| ${result.scenario} | ${Math.round(t.deliveriesPerSecond)} | ${fixed(t.p50)} | ` +
      `${fixed(t.p99)} | ${fixed(l.p50)} | ${fixed(l.p99)} | ` +
      `${fixed(l.sameP50)} / ${fixed(l.sameP99)} | ${fixed(l.otherP50)} / ${fixed(l.otherP99)} |`,
  );
}
const [single, cluster] = results;
const ratio = cluster.throughput.deliveriesPerSecond / single.throughput.deliveriesPerSecond;
const addedP99 = cluster.latency.p99 - single.latency.p99;
console.log(
  `\ncluster / single deliveries/s: ${ratio.toFixed(2)}x (target >= 0.5x); ` +
    `p99 added at the paced rate: ${addedP99.toFixed(2)} ms (target < 5 ms)`,
);
console.log(JSON.stringify({
  clients: CLIENTS,
  publishers: PUBLISHERS,
  size: SIZE,
  window: WINDOW,
  rate: RATE,
  repeat: REPEAT,
  pinned: PINNED,
  runs,
  ratio,
  addedP99,
}));
