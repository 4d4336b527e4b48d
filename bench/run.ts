/**
 * Side-by-side WebSocket server benchmarks: this library against Deno's built-in WebSocket,
 * npm `ws` under Node.js and Bun, all driven by the same C load generator (`bench/loadgen.c`).
 *
 *   deno run -A bench/run.ts [--full] [--deflate] [--servers a,b] [--clients a,b]
 *                            [--scenarios x,y] [--seconds S] [--warmup S] [--repeat N]
 *                            [--crowd N]
 *   deno run -A bench/run.ts --soak [--minutes N] [--tcp node:net] [--no-compression] [--matrix]
 *
 * Each measurement starts a fresh server pinned to CPU 0 (`taskset -c 0`) and the load generator
 * pinned to CPU 1 (`taskset -c 1`), waits for the server's `listening on` line, runs one
 * scenario, and kills the server by PID. Servers run interleaved (rotating the order every
 * repetition), each scenario is repeated (3 times by default), and the tables report medians and
 * each server's ratio to Deno's built-in server from the same run. Results are also written to
 * `bench/results/latest.json`.
 *
 * The client scenarios (`--full`) turn this around: one fixed fast server (Bun's, or this
 * library's through node:net where Bun cannot run) pinned to CPU 1, and each client under test
 * (`bench/clients/`) pinned to CPU 0 running the same closed echo loop.
 *
 * @module
 */

import { walkArgs } from "./_args.ts";
import { soakMain } from "./soak.ts";

const BENCH_DIR = new URL(".", import.meta.url).pathname.replace(/\/$/, "");
const LOADGEN_SOURCE = `${BENCH_DIR}/loadgen.c`;
const LOADGEN = `${BENCH_DIR}/loadgen`;
const NODE_MODULES = `${BENCH_DIR}/node_modules`;
const BUN = `${NODE_MODULES}/@oven/bun-linux-x64/bin/bun`;
const RESULTS = `${BENCH_DIR}/results/latest.json`;
/**
 * The peers' npm packages, pinned. They are installed into bench/node_modules without a
 * package.json: a package.json under bench/ would make Deno treat bench/ as a separate package
 * (other formatting and lint settings than the project's).
 */
const NPM_PACKAGES = ["ws@8.23.0", "bufferutil@4.1.0"];
const NPM_BUN = "@oven/bun-linux-x64@1.4.5";
const SERVER_CPU = "0";
const LOADGEN_CPU = "1";
/** The ratio column divides by this server's median. */
const BASELINE = "deno_builtin";
/** Other processes' CPU use (% of one core) above which a run is flagged as disturbed. */
const BUSY_WARNING = 20;
/** Connections of the crowd scenario (`--crowd`). */
const CROWD = 100_000;
/**
 * Connections the burst and crowd scenarios open at once: half the listen backlog (511) of
 * every server here, so that the backlog never overflows and no SYN is dropped (a dropped SYN
 * is retried after a second, which would measure the backlog rather than the server).
 */
const CONNECTING = 256;

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  full: boolean;
  deflate: boolean;
  servers?: string[];
  clients?: string[];
  scenarios?: string[];
  seconds: number;
  warmup: number;
  repeat: number;
  /** Connections of the crowd scenario. */
  crowd: number;
  /** A checkout of another version whose `ours` servers run beside this one's. */
  baseline?: string;
  /**
   * Connections of each server process of the crowd scenario (not an option: worked out from
   * the open-files limit, see crowdShards()); one entry when one process holds them all.
   */
  crowdShards?: number[];
}

function usage(message?: string): never {
  if (message) console.error(`run.ts: ${message}`);
  console.error(
    "usage: deno run -A bench/run.ts [--full] [--deflate] [--servers a,b] [--clients a,b]\n" +
      "                                [--scenarios x,y] [--seconds S] [--warmup S] [--repeat N]\n" +
      "                                [--crowd N] [--baseline DIR]\n" +
      "       deno run -A bench/run.ts --soak [--minutes N] [--tcp node:net] [--no-compression]\n" +
      "                                       [--matrix] [--steady C] [--rate R]",
  );
  Deno.exit(64);
}

function parseOptions(args: string[]): Options {
  const options: Options = {
    full: false,
    deflate: false,
    seconds: 1,
    warmup: 0.8,
    repeat: 3,
    crowd: CROWD,
  };
  walkArgs(args, usage, ({ name, text, value, number }) => {
    switch (name) {
      case "--full":
        options.full = true;
        break;
      case "--deflate":
        options.deflate = true;
        break;
      case "--servers":
        options.servers = value().split(",").filter(Boolean);
        break;
      case "--clients":
        options.clients = value().split(",").filter(Boolean);
        break;
      case "--scenarios":
        options.scenarios = value().split(",").filter(Boolean);
        break;
      case "--seconds":
        options.seconds = number(0.1, 600);
        break;
      case "--warmup":
        options.warmup = number(0, 60);
        break;
      case "--repeat":
        options.repeat = Math.round(number(1, 100));
        break;
      case "--crowd":
        options.crowd = Math.round(number(10, 1_000_000));
        break;
      case "--baseline":
        options.baseline = value();
        break;
      case "--help":
      case "-h":
        usage();
        break;
      default:
        usage(`unknown option ${text}`);
    }
  });
  return options;
}

// ---------------------------------------------------------------------------------------------
// Servers

export interface Server {
  /** Name used in `--servers` and in the JSON results. */
  name: string;
  /** Column title. */
  title: string;
  /** Command line (without the CPU pinning) for a port and the deflate switch. */
  command(port: number, deflate: boolean): string[];
  /** Why the server cannot run here, or undefined when it can. */
  unavailable(): Promise<string | undefined>;
  /** Only run with `--full` (or when named in `--servers`). */
  fullOnly?: boolean;
  /** Only run in these kinds of scenario. */
  kinds?: Scenario["kind"][];
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

async function output(cmd: string, args: string[]): Promise<string | undefined> {
  try {
    const { success, stdout } = await new Deno.Command(cmd, { args, stdout: "piped" }).output();
    return success ? new TextDecoder().decode(stdout).trim() : undefined;
  } catch {
    return undefined;
  }
}

async function npmInstall(packages: string[]): Promise<string | undefined> {
  const args = ["install", "--prefix", BENCH_DIR, "--no-save", "--no-package-lock"];
  console.log(`installing benchmark dependencies: npm ${[...args, ...packages].join(" ")}`);
  try {
    const { success, stderr } = await new Deno.Command("npm", {
      args: [...args, "--no-audit", "--no-fund", ...packages],
      stdout: "null",
      stderr: "piped",
    }).output();
    return success ? undefined : `npm install failed: ${tail(new TextDecoder().decode(stderr))}`;
  } catch (error) {
    return `npm could not run: ${error instanceof Error ? error.message : error}`;
  }
}

let installed: Promise<{ ws?: string; bun?: string }> | undefined;

/**
 * Installs the peers' packages once, all in one npm call (npm removes what a call does not
 * name); without Bun when Bun cannot be installed. Resolves to the reason each is missing.
 */
function installNodeModules(): Promise<{ ws?: string; bun?: string }> {
  installed ??= (async () => {
    const haveWs = exists(`${NODE_MODULES}/ws/package.json`) &&
      exists(`${NODE_MODULES}/bufferutil/package.json`);
    const bunPossible = Deno.build.os === "linux" && Deno.build.arch === "x86_64";
    if (haveWs && (exists(BUN) || !bunPossible)) return {};
    const failed = await npmInstall([...NPM_PACKAGES, ...(bunPossible ? [NPM_BUN] : [])]);
    if (!failed) return {};
    if (!bunPossible) return { ws: failed };
    const withoutBun = await npmInstall(NPM_PACKAGES);
    return { ws: withoutBun, bun: failed };
  })();
  return installed;
}

const deflateFlag = (deflate: boolean): string[] => deflate ? ["--deflate"] : [];

export const SERVERS: Server[] = [
  {
    name: "deno_builtin",
    title: "Deno built-in",
    command: (port, deflate) => [
      Deno.execPath(),
      "run",
      "--allow-net",
      `${BENCH_DIR}/servers/deno_builtin.ts`,
      ...["--port", `${port}`, ...deflateFlag(deflate)],
    ],
    unavailable: () => Promise.resolve(undefined),
  },
  {
    // serve() as it comes: plain TCP goes through node:net, the default backend.
    name: "ours",
    title: "@denows/websockets",
    command: (port, deflate) => [
      Deno.execPath(),
      "run",
      "-A",
      `${BENCH_DIR}/servers/ours.ts`,
      ...["--port", `${port}`, ...deflateFlag(deflate)],
    ],
    unavailable: () =>
      Promise.resolve(
        exists(`${BENCH_DIR}/servers/ours.ts`) ? undefined : "bench/servers/ours.ts does not exist",
      ),
  },
  {
    name: "ours_deno",
    title: "@denows/websockets (Deno.listen)",
    fullOnly: true,
    command: (port, deflate) => [
      Deno.execPath(),
      "run",
      "-A",
      `${BENCH_DIR}/servers/ours.ts`,
      ...["--port", `${port}`, "--tcp", "Deno.listen", ...deflateFlag(deflate)],
    ],
    unavailable: () =>
      Promise.resolve(
        exists(`${BENCH_DIR}/servers/ours.ts`) ? undefined : "bench/servers/ours.ts does not exist",
      ),
  },
  {
    name: "ws",
    title: "ws (Node)",
    command: (port, deflate) => [
      "node",
      `${BENCH_DIR}/servers/ws_node.mjs`,
      ...["--port", `${port}`, ...deflateFlag(deflate)],
    ],
    unavailable: async () => {
      if ((await output("node", ["--version"])) === undefined) return "node is not installed";
      const { ws } = await installNodeModules();
      return ws ?? (exists(`${NODE_MODULES}/ws/package.json`) ? undefined : "ws is not installed");
    },
  },
  {
    name: "ws_deno",
    title: "ws (Deno)",
    fullOnly: true,
    command: (port, deflate) => [
      Deno.execPath(),
      "run",
      "-A",
      `${BENCH_DIR}/servers/ws_node.mjs`,
      ...["--port", `${port}`, ...deflateFlag(deflate)],
    ],
    unavailable: async () => {
      const { ws } = await installNodeModules();
      return ws ?? (exists(`${NODE_MODULES}/ws/package.json`) ? undefined : "ws is not installed");
    },
  },
  {
    name: "bun",
    title: "Bun",
    command: (port, deflate) => [
      BUN,
      `${BENCH_DIR}/servers/bun.ts`,
      ...["--port", `${port}`, ...deflateFlag(deflate)],
    ],
    unavailable: async () => {
      if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") {
        return `the @oven/bun-linux-x64 package has no binary for ${Deno.build.target}`;
      }
      const { bun } = await installNodeModules();
      if (bun) return bun;
      if (!exists(BUN)) return `npm did not install ${NPM_BUN}`;
      const version = await output(BUN, ["--version"]);
      return version === undefined ? `${BUN} --version failed` : undefined;
    },
  },
  {
    name: "deno_floor",
    title: "Deno.listen floor (no library)",
    kinds: ["idle"],
    fullOnly: true, // keeps the quick set under 3 minutes
    command: (port) => [
      Deno.execPath(),
      "run",
      "--allow-net",
      `${BENCH_DIR}/servers/deno_floor.ts`,
      ...["--port", `${port}`],
    ],
    unavailable: () => Promise.resolve(undefined),
  },
];

// ---------------------------------------------------------------------------------------------
// Clients (the client scenarios)

interface Client {
  /** Name used in `--clients` and in the JSON results. */
  name: string;
  /** Column title. */
  title: string;
  /** Command line (without the CPU pinning) before the driver's arguments. */
  command: string[];
  unavailable(): Promise<string | undefined>;
}

const CLIENTS: Client[] = [
  {
    name: "deno_builtin",
    title: "Deno built-in",
    command: [Deno.execPath(), "run", "-A", `${BENCH_DIR}/clients/deno_builtin.ts`],
    unavailable: () => Promise.resolve(undefined),
  },
  {
    name: "ours",
    title: "@denows/websockets",
    command: [Deno.execPath(), "run", "-A", `${BENCH_DIR}/clients/ours.ts`],
    unavailable: () => Promise.resolve(undefined),
  },
  {
    name: "ws",
    title: "ws (Node)",
    command: ["node", `${BENCH_DIR}/clients/ws_node.mjs`],
    unavailable: () => SERVERS.find((s) => s.name === "ws")!.unavailable(),
  },
  {
    name: "bun",
    title: "Bun",
    command: [BUN, `${BENCH_DIR}/clients/deno_builtin.ts`],
    unavailable: () => SERVERS.find((s) => s.name === "bun")!.unavailable(),
  },
];

/** The server every client scenario runs against: Bun's, else ours. */
let fixedServer: Promise<Server> | undefined;
function clientScenarioServer(): Promise<Server> {
  fixedServer ??= (async () => {
    const bun = SERVERS.find((s) => s.name === "bun")!;
    return (await bun.unavailable()) === undefined ? bun : SERVERS.find((s) => s.name === "ours")!;
  })();
  return fixedServer;
}

// ---------------------------------------------------------------------------------------------
// Scenarios

interface Metric {
  /** Key in the load generator's JSON (or computed by the runner). */
  key: string;
  unit: string;
  digits: number;
  lowerIsBetter?: boolean;
}

interface Scenario {
  id: string;
  title: string;
  kind: "load" | "idle" | "client" | "crowd";
  /** Load generator (or client driver) arguments, without --port, --deflate and timing. */
  args: string[];
  deflate: boolean;
  set: "quick" | "full" | "client";
  metric: Metric;
  details: Metric[];
  /** Connections held open by the idle scenario. */
  conns?: number;
  /** Idle scenarios: sample RSS every second for this many seconds (the settled measurement). */
  settleSeconds?: number;
  /** More rows of the main table, from the same runs (medians of these result keys). */
  extra?: Metric[];
  /** Crowd: connections of each server process, when more than one holds them. */
  shards?: number[];
}

const LATENCY: Metric[] = [
  { key: "p50_us", unit: "p50 µs", digits: 0, lowerIsBetter: true },
  { key: "p99_us", unit: "p99 µs", digits: 0, lowerIsBetter: true },
];
const MSGS: Metric = { key: "msgs_per_s", unit: "msg/s", digits: 0 };
const MBS: Metric = { key: "mb_per_s", unit: "MB/s", digits: 1 };
const DELIVERIES: Metric = { key: "deliveries_per_s", unit: "deliveries/s", digits: 0 };
const DRAIN: Metric = { key: "drain_ms", unit: "drain ms", digits: 1, lowerIsBetter: true };
const HANDSHAKES: Metric = { key: "handshakes_per_s", unit: "handshakes/s", digits: 0 };
const MEMORY: Metric = { key: "kib_per_conn", unit: "KiB/conn", digits: 1, lowerIsBetter: true };
/**
 * How long the settled idle scenario holds its connections while sampling the server's RSS every
 * second. V8 gives back the young generation that a connect burst grew after about 25–30 s
 * without activity (its memory reducer); 60 s leaves room for that on a loaded machine.
 */
const SETTLE_SECONDS = 60;
/** The settled scenario's "settled after": the first sample this close to the minimum. */
const SETTLED_WITHIN_KIB_PER_CONN = 0.2;

function echo(id: string, title: string, conns: number, inflight: number, size: number): Scenario {
  return {
    id,
    title,
    kind: "load",
    args: ["echo", "--conns", `${conns}`, "--inflight", `${inflight}`, "--size", `${size}`],
    deflate: false,
    set: "quick",
    metric: size >= 1024 ? MBS : MSGS,
    details: LATENCY,
  };
}

/**
 * `window`: the sender keeps at most this many messages not yet delivered to every client, so
 * about window × conns frames are queued at most (32 000–40 000 here).
 */
function broadcast(
  id: string,
  title: string,
  conns: number,
  size: number,
  window: number,
): Scenario {
  return {
    id,
    title,
    kind: "load",
    args: ["broadcast", "--conns", `${conns}`, "--size", `${size}`, "--window", `${window}`],
    deflate: false,
    set: "quick",
    metric: DELIVERIES,
    details: [DRAIN, ...LATENCY],
  };
}

function idle(id: string, title: string, conns: number): Scenario {
  return {
    id,
    title,
    kind: "idle",
    args: ["idle", "--conns", `${conns}`],
    deflate: false,
    set: "quick",
    metric: MEMORY,
    details: [],
    conns,
  };
}

/**
 * As `idle()`, but the connections stay open for `SETTLE_SECONDS` while the runner samples the
 * server's RSS every second; the result is the lowest growth seen (see measureIdle()).
 */
function idleSettled(id: string, title: string, conns: number): Scenario {
  const kib = (key: string, unit: string): Metric => ({
    key,
    unit,
    digits: 1,
    lowerIsBetter: true,
  });
  return {
    ...idle(id, title, conns),
    details: [
      kib("first_kib_per_conn", "KiB/conn 0.5 s after all are open"),
      kib("last_kib_per_conn", `KiB/conn at the end of the ${SETTLE_SECONDS} s`),
      {
        key: "settled_after_s",
        unit: `s until within ${SETTLED_WITHIN_KIB_PER_CONN} KiB/conn of the lowest`,
        digits: 1,
      },
    ],
    settleSeconds: SETTLE_SECONDS,
  };
}

const CONNECT_LATENCY: Metric[] = [
  { key: "p50_us", unit: "connect to 101, p50 µs", digits: 0, lowerIsBetter: true },
  { key: "p99_us", unit: "connect to 101, p99 µs", digits: 0, lowerIsBetter: true },
];

/**
 * Loopback source addresses for `conns` clients: one per 5 000, so that the kernel finds a free
 * ephemeral port at once even with the last runs' ports still in TIME_WAIT (a crowded port range
 * makes connect() itself slow, and the load generator would measure that).
 */
function sourcesFor(conns: number): number {
  return Math.max(1, Math.ceil(conns / 5000));
}

/** Broadcasts timed one after the other in the crowd scenario. */
const FANOUT_ROUNDS = 5;

/**
 * The load generator's arguments for `conns` crowd clients, `connecting` of them between
 * `connect()` and the `101` at any time.
 */
function crowdArgs(conns: number, connecting = CONNECTING): string[] {
  return [
    ...["crowd", "--conns", `${conns}`, "--fanout", `${FANOUT_ROUNDS}`],
    ...["--connect-concurrency", `${connecting}`, "--sources", `${sourcesFor(conns)}`],
  ];
}

/**
 * `conns` idle clients on `/broadcast`, connected as fast as the server takes them: memory per
 * connection, handshakes per second, then the time one 32 B broadcast takes to reach them all.
 * `shards`: the connections of each server process, when one process may not hold them all.
 */
function crowd(conns: number, shards: number[] = [conns]): Scenario {
  const processes = shards.length > 1 ? ` over ${shards.length} server processes` : "";
  return {
    id: "crowd",
    title: `${conns.toLocaleString("en-US")} idle clients${processes}: memory per connection`,
    kind: "crowd",
    args: crowdArgs(conns),
    deflate: false,
    set: "full",
    metric: MEMORY,
    details: [...CONNECT_LATENCY, {
      key: "kernel_kib_per_conn",
      unit: "kernel slab memory per connection, both sockets, KiB",
      digits: 1,
      lowerIsBetter: true,
    }, {
      key: "other_cpu_pct",
      unit: "CPU use of other processes meanwhile, % of one core",
      digits: 0,
    }, {
      key: "processes",
      unit: "server processes holding the connections (one load generator each)",
      digits: 0,
    }],
    extra: [
      { ...HANDSHAKES, unit: "handshakes/s while connecting" },
      {
        key: "fanout_median_ms",
        unit: `ms for one 32 B broadcast to reach all, median of ${FANOUT_ROUNDS}`,
        digits: 1,
        lowerIsBetter: true,
      },
    ],
    conns,
    shards: shards.length > 1 ? shards : undefined,
  };
}

function scenarios(
  options: { crowd: number; crowdShards?: number[] } = { crowd: CROWD },
): Scenario[] {
  const quick: Scenario[] = [
    echo("echo-32x1", "echo 32 B, 100 conns × 1 in flight", 100, 1, 32),
    echo("echo-32x16", "echo 32 B, 100 conns × 16 in flight", 100, 16, 32),
    echo("echo-64k", "echo 64 KiB, 10 conns × 16 in flight", 10, 16, 65536),
    broadcast("broadcast-1k", "broadcast 32 B to 1 000", 1000, 32, 32),
    {
      id: "handshake",
      title: "handshakes (open + close), 50 concurrent",
      kind: "load",
      args: ["handshake", "--concurrency", "50"],
      deflate: false,
      set: "quick",
      metric: HANDSHAKES,
      details: LATENCY,
    },
    idle("idle-10k", "memory per idle connection at 10 000", 10000),
  ];
  const full: Scenario[] = [
    broadcast("broadcast-10k", "broadcast 32 B to 10 000", 10000, 32, 4),
    broadcast("broadcast-4k", "broadcast 4 KiB to 1 000", 1000, 4096, 32),
    idle("idle-1k", "memory per idle connection at 1 000", 1000),
    idleSettled(
      "idle-10k-settled",
      `memory per idle connection at 10 000, after ${SETTLE_SECONDS} s idle`,
      10000,
    ),
    echo("echo-1m", "echo 1 MiB, 4 conns × 4 in flight", 4, 4, 1024 * 1024),
    ({
      id: "burst-10k",
      title: `handshakes, 10 000 clients connecting at once (${CONNECTING} at a time)`,
      kind: "load",
      args: [
        ...["crowd", "--conns", "10000", "--path", "/echo", "--hold", "0"],
        ...["--connect-concurrency", `${CONNECTING}`, "--sources", `${sourcesFor(10000)}`],
      ],
      deflate: false,
      set: "full",
      metric: HANDSHAKES,
      details: CONNECT_LATENCY,
    }) satisfies Scenario,
    crowd(options.crowd, options.crowdShards),
  ].map((s) => ({ ...s, set: "full" }));
  const compressed: Scenario[] = [quick[1], quick[2], quick[3], full[2]].map((s) => ({
    ...s,
    id: `${s.id}-deflate`,
    title: `${s.title}, permessage-deflate`,
    deflate: true,
    set: "full",
  }));
  const client: Scenario[] = [quick[0], quick[1], quick[2]].map((s) => ({
    ...s,
    id: s.id.replace("echo", "client"),
    title: `client: ${s.title}`,
    kind: "client",
    args: s.args.slice(1),
    set: "client",
  }));
  return [...quick, ...full, ...compressed, ...client];
}

// ---------------------------------------------------------------------------------------------
// Processes

const children = new Map<number, Deno.ChildProcess>();

export function killAll(): void {
  for (const pid of children.keys()) {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  children.clear();
}

function tail(text: string, max = 600): string {
  const trimmed = text.trim();
  return trimmed.length > max ? `…${trimmed.slice(-max)}` : trimmed;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves with the promise's value, or rejects with `message` after `ms`. */
async function within<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(message)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Reads a byte stream line by line, keeping the last few KiB and calling `onLine`. */
class LineReader {
  text = "";
  readonly done: Promise<void>;
  constructor(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void) {
    this.done = (async () => {
      let pending = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        this.text = (this.text + chunk).slice(-8192);
        pending += chunk;
        let newline;
        while ((newline = pending.indexOf("\n")) >= 0) {
          onLine(pending.slice(0, newline));
          pending = pending.slice(newline + 1);
        }
      }
      if (pending) onLine(pending);
    })().catch(() => {});
  }
}

/** The open-files limit children ask for (raising the hard limit needs CAP_SYS_RESOURCE). */
const FILE_LIMIT = 1_048_576;

/** The open-files limit a child gets here (see spawn()). */
async function childFileLimit(): Promise<number> {
  const text = await output("sh", [
    "-c",
    `ulimit -n ${FILE_LIMIT} 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; ulimit -n`,
  ]);
  return text === "unlimited" ? Infinity : Number(text ?? NaN);
}

/** Files a server or load generator keeps open besides its connections, at most. */
const FILES_BESIDES_CONNECTIONS = 64;
/** The crowd scenario splits its connections over at most this many server processes. */
const MAX_CROWD_PROCESSES = 64;

/**
 * How the crowd scenario spreads `conns` connections over server processes, each driven by a
 * load generator of its own, when a process may open at most `fileLimit` files: one process
 * when it can hold them all, else as few as can, as evenly as can be. The connections of each.
 */
export function crowdShards(conns: number, fileLimit: number): number[] {
  const capacity = Math.max(1, fileLimit - FILES_BESIDES_CONNECTIONS);
  // An unknown limit (NaN): one process, which says what fails if it does.
  const count = Number.isNaN(capacity) ? 1 : Math.max(1, Math.ceil(conns / capacity));
  const each = Math.floor(conns / count);
  return Array.from({ length: count }, (_, i) => each + (i < conns % count ? 1 : 0));
}

/** What one process needs to hold `conns` connections, and how to give it that. */
function crowdNeeds(conns: number): string {
  const needed = conns + FILES_BESIDES_CONNECTIONS;
  let nrOpen = "";
  try {
    nrOpen = Deno.readTextFileSync("/proc/sys/fs/nr_open").trim();
  } catch {
    // not Linux
  }
  return `${conns} connections in one process need an open-files limit of at least ${needed} ` +
    `for the server and for the load generator (\`ulimit -Hn\`; raising the hard limit needs ` +
    `root with CAP_SYS_RESOURCE: as root \`ulimit -n ${FILE_LIMIT}\`; systemd: LimitNOFILE=; ` +
    `Docker: --ulimit nofile=${FILE_LIMIT}:${FILE_LIMIT}; fs.nr_open is ${nrOpen || "?"})`;
}

/**
 * Why `shards` (from crowdShards()) can't run here, with what the machine needs; `undefined`
 * when they can.
 */
export function crowdUnavailable(shards: number[], fileLimit: number): string | undefined {
  if (shards.length <= MAX_CROWD_PROCESSES) return undefined;
  const conns = shards.reduce((sum, n) => sum + n, 0);
  return `processes started here may open ${fileLimit} files, so ${conns} connections would ` +
    `take ${shards.length} server processes, more than the ${MAX_CROWD_PROCESSES} this runner ` +
    `starts. ${crowdNeeds(conns)}; or measure fewer with --crowd ` +
    `${MAX_CROWD_PROCESSES * (fileLimit - FILES_BESIDES_CONNECTIONS)}`;
}

function spawn(cpu: string, cmd: string[], stdin: "null" | "piped" = "null"): Deno.ChildProcess {
  // `exec` keeps the PID: the process we kill is the server or load generator itself.
  // As many open files as allowed: up to FILE_LIMIT where the hard limit may be raised.
  const script = `ulimit -n ${FILE_LIMIT} 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; ` +
    'exec taskset -c "$0" "$@"';
  const child = new Deno.Command("sh", {
    args: ["-c", script, cpu, ...cmd],
    stdin,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  children.set(child.pid, child);
  child.status.then(() => children.delete(child.pid));
  return child;
}

export async function stop(child: Deno.ChildProcess): Promise<void> {
  if (!children.has(child.pid)) return;
  try {
    Deno.kill(child.pid, "SIGTERM");
  } catch {
    // already gone
  }
  try {
    await within(child.status, 2000, "did not stop");
  } catch {
    try {
      Deno.kill(child.pid, "SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
  }
}

export interface RunningServer {
  child: Deno.ChildProcess;
  stderr: LineReader;
}

/** Starts a server and waits for its `listening on` line; `onLine` sees every line it prints. */
export async function startServer(
  server: Server,
  port: number,
  deflate: boolean,
  cpu = SERVER_CPU,
  onLine: (line: string) => void = () => {},
  extraArgs: string[] = [],
): Promise<RunningServer> {
  const child = spawn(cpu, [...server.command(port, deflate), ...extraArgs]);
  let ready: () => void = () => {};
  const listening = new Promise<void>((resolve) => (ready = resolve));
  const expected = `listening on ws://127.0.0.1:${port}`;
  const stdout = new LineReader(child.stdout, (line) => {
    if (line.trim() === expected) ready();
    onLine(line);
  });
  const stderr = new LineReader(child.stderr, () => {});
  const exited = child.status.then((status) => {
    throw new Error(`exited with code ${status.code} before listening`);
  });
  try {
    await within(Promise.race([listening, exited]), 20000, "no 'listening on' line in 20 s");
  } catch (error) {
    await stop(child);
    await Promise.all([stdout.done, stderr.done]);
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`${server.name} ${message}: ${tail(stderr.text + stdout.text)}`);
  }
  return { child, stderr } satisfies RunningServer;
}

export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

const CLOCK_TICKS = 100;

/** User + system CPU seconds of a process (all threads), from /proc/PID/stat. */
function cpuSeconds(pid: number): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

/** Busy (user + nice + system) and stolen CPU seconds of the whole machine, from /proc/stat. */
function machineCpu(): { busy: number; steal: number } {
  try {
    const fields = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/);
    const n = (i: number) => Number(fields[i] ?? 0);
    return { busy: (n(1) + n(2) + n(3)) / CLOCK_TICKS, steal: n(8) / CLOCK_TICKS };
  } catch {
    return { busy: NaN, steal: NaN };
  }
}

/** The kernel's slab memory in KiB (sockets, files, …), from /proc/meminfo; NaN elsewhere. */
function slabKiB(): number {
  try {
    return Number(Deno.readTextFileSync("/proc/meminfo").match(/^Slab:\s+(\d+) kB/m)?.[1] ?? NaN);
  } catch {
    return NaN;
  }
}

/**
 * Starts measuring CPU use: the returned function gives, in % of one core over `wallSeconds`,
 * what the servers (`pids`) used since, what the load generators used (`loadgenCpu` seconds, as
 * they report it), what everything else on the machine used meanwhile, and the time stolen by
 * the hypervisor.
 */
function cpuMeter(pids: number[]): (loadgenCpu: number, wallSeconds: number) => Result {
  const serverBefore = pids.map(cpuSeconds);
  const machineBefore = machineCpu();
  return (loadgenCpu, wallSeconds) => {
    const serverCpu = pids.reduce((sum, pid, i) => sum + cpuSeconds(pid) - serverBefore[i], 0);
    const machineAfter = machineCpu();
    const otherCpu = machineAfter.busy - machineBefore.busy - serverCpu - loadgenCpu;
    const percent = (seconds: number) => Math.round((1000 * seconds) / wallSeconds) / 10;
    return {
      server_cpu_pct: percent(serverCpu),
      loadgen_cpu_pct: percent(loadgenCpu),
      other_cpu_pct: Math.max(0, percent(otherCpu)),
      steal_pct: percent(machineAfter.steal - machineBefore.steal),
    };
  };
}

/** Resident memory of a process in KiB, from /proc/PID/status. */
export function rssKiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const match = status.match(/^VmRSS:\s+(\d+) kB/m);
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]);
}

export type Result = Record<string, number | string | boolean>;

export interface LoadgenRun {
  result: Result;
  wall: number;
}

/**
 * Runs a child pinned to `cpu` that prints one JSON line of results last; rejects with `what`
 * in the message when it hangs past `limitMs`, fails, or prints no JSON.
 */
async function runJson(
  cpu: string,
  cmd: string[],
  limitMs: number,
  what: string,
  onStderrLine: (line: string) => void = () => {},
): Promise<LoadgenRun> {
  const started = performance.now();
  const child = spawn(cpu, cmd);
  const stderr = new LineReader(child.stderr, onStderrLine);
  const stdout = new LineReader(child.stdout, () => {});
  let status: Deno.CommandStatus;
  try {
    status = await within(child.status, limitMs, `${what} hung`);
  } catch (error) {
    await stop(child);
    throw error;
  }
  const wall = (performance.now() - started) / 1000;
  await Promise.all([stdout.done, stderr.done]);
  if (!status.success) throw new Error(`${what} exited with ${status.code}: ${tail(stderr.text)}`);
  const line = stdout.text.trim().split("\n").pop() ?? "";
  try {
    return { result: JSON.parse(line) as Result, wall };
  } catch {
    throw new Error(`${what} printed no JSON: ${tail(stdout.text + stderr.text)}`);
  }
}

/** Runs the load generator; `onReady` runs when it reports its connections are open. */
export async function loadgen(
  args: string[],
  timeoutSeconds: number,
  onReady?: () => Promise<void>,
): Promise<LoadgenRun> {
  let readyWork: Promise<void> = Promise.resolve();
  try {
    return await runJson(
      LOADGEN_CPU,
      [LOADGEN, ...args, "--timeout", `${Math.ceil(timeoutSeconds)}`],
      (timeoutSeconds + 10) * 1000,
      "load generator",
      (line) => {
        if (onReady && /^loadgen: \w+: ready/.test(line)) readyWork = onReady();
      },
    );
  } finally {
    await readyWork;
  }
}

// ---------------------------------------------------------------------------------------------
// Measurements

interface Measurement {
  scenario: string;
  server: string;
  repetition: number;
  ok: boolean;
  error?: string;
  value?: number;
  result?: Result;
}

/**
 * The idle scenarios. The server's RSS is sampled before the connections open and 0.5 s after
 * they all are; the settled scenario (`settleSeconds`) keeps them open and samples again every
 * second for that long, and its result is the lowest growth seen: every sample is taken with all
 * N connections open, so the lowest is memory the server really held them in, once the runtime
 * had given back what the connect burst took. The first and last samples and when it settled
 * go to the details, so a server whose memory grows again shows there.
 */
async function measureIdle(scenario: Scenario, pid: number, common: string[]): Promise<Result> {
  // Warm the server's WebSocket code paths so one-time costs do not count per connection.
  await loadgen(["idle", "--conns", "10", "--hold", "0", ...common], 30);
  await sleep(200);
  const before = rssKiB(pid);
  const conns = scenario.conns ?? 1;
  const window = scenario.settleSeconds ?? 0;
  // The load generator holds past the last sample so that no connection closes before it; its
  // own timeout and the runner's hard limit on it still bound the run.
  const hold = window ? window + 5 : 0.8;
  const samples: number[] = [];
  const run = await loadgen(
    [...scenario.args, "--hold", `${hold}`, ...common],
    hold + 60,
    async () => {
      const ready = performance.now();
      for (let second = 0; second <= window; second++) {
        await sleep(Math.max(0, ready + 500 + 1000 * second - performance.now()));
        samples.push(rssKiB(pid));
      }
    },
  );
  const perConn = samples.map((rss) => (rss - before) / conns);
  const result: Result = {
    ...run.result,
    rss_before_kib: before,
    rss_after_kib: samples[0] ?? NaN,
    kib_per_conn: perConn[0] ?? NaN,
  };
  if (!window) return result;
  const lowest = Math.min(...perConn);
  const settled = perConn.findIndex((kib) => kib - lowest <= SETTLED_WITHIN_KIB_PER_CONN);
  return {
    ...result,
    rss_samples_kib: samples.join(","),
    kib_per_conn: lowest,
    first_kib_per_conn: perConn[0],
    last_kib_per_conn: perConn[perConn.length - 1],
    settled_after_s: settled + 0.5,
  };
}

/**
 * The crowd scenario: RSS per connection once every client is connected, then the load
 * generator's handshakes/s and fan-out times.
 */
async function measureCrowd(scenario: Scenario, pid: number, common: string[]): Promise<Result> {
  await loadgen(["idle", "--conns", "10", "--hold", "0", ...common], 30);
  await sleep(200);
  const before = rssKiB(pid);
  const slabBefore = slabKiB();
  let after = NaN;
  let slabAfter = NaN;
  const conns = scenario.conns ?? 1;
  const cpu = cpuMeter([pid]);
  // The hold gives the server time to settle before RSS is read, then the broadcasts start.
  const run = await loadgen(
    [...scenario.args, "--hold", "2", ...common],
    120 + conns / 500,
    async () => {
      await sleep(1000);
      after = rssKiB(pid);
      slabAfter = slabKiB();
    },
  );
  return {
    ...run.result,
    ...cpu(Number(run.result.cpu_s), run.wall),
    processes: 1,
    rss_before_kib: before,
    rss_after_kib: after,
    kib_per_conn: (after - before) / conns,
    // The kernel's memory for both loopback sockets of each connection (machine-wide: other
    // processes' changes count too).
    kernel_kib_per_conn: (slabAfter - slabBefore) / conns,
  };
}

/** What a load generator run with `--go-stdin` reports of its timing (CLOCK_MONOTONIC ns). */
export interface ShardTimes {
  /** Its first `connect()`. */
  connect_start_ns: number;
  /** Its last `101`. */
  connected_ns: number;
  /** Each broadcast: when its sender sent it. */
  round_sent_ns: number[];
  /** Each broadcast: when its last client had it. */
  round_last_ns: number[];
}

/**
 * Combines the timings of load generators that ran together, each against its own server
 * process: `conns` over the time from the first one's first `connect()` to the last one's last
 * `101`, and for each broadcast the time from the first send to the last receipt of all.
 */
export function combineShards(
  conns: number,
  shards: ShardTimes[],
): { handshakesPerSecond: number; fanoutMs: number[] } {
  const connecting = Math.max(...shards.map((s) => s.connected_ns)) -
    Math.min(...shards.map((s) => s.connect_start_ns));
  const rounds = Math.min(...shards.map((s) => s.round_sent_ns.length));
  const fanoutMs = Array.from(
    { length: rounds },
    (_, round) =>
      (Math.max(...shards.map((s) => s.round_last_ns[round])) -
        Math.min(...shards.map((s) => s.round_sent_ns[round]))) / 1e6,
  );
  return { handshakesPerSecond: conns / (connecting / 1e9), fanoutMs };
}

/**
 * A load generator started with `--go-stdin`: it says "waiting for go" and waits for a line on
 * stdin before connecting, before syncing and before each broadcast.
 */
class GatedLoadgen {
  readonly child: Deno.ChildProcess;
  readonly #stderr: LineReader;
  readonly #stdout: LineReader;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #waits = 0;
  #exited?: Error;
  #waiters: { count: number; resolve: () => void; reject: (error: Error) => void }[] = [];

  constructor(args: string[], timeoutSeconds: number) {
    this.child = spawn(
      LOADGEN_CPU,
      [LOADGEN, ...args, "--go-stdin", "--timeout", `${Math.ceil(timeoutSeconds)}`],
      "piped",
    );
    this.#stdin = this.child.stdin.getWriter();
    this.#stderr = new LineReader(this.child.stderr, (line) => {
      if (line.startsWith("loadgen: crowd: waiting for go")) {
        this.#waits++;
        this.#settle();
      }
    });
    this.#stdout = new LineReader(this.child.stdout, () => {});
    this.child.status.then(async (status) => {
      await this.#stderr.done;
      this.#exited = new Error(
        `a load generator exited with ${status.code}: ${tail(this.#stderr.text)}`,
      );
      this.#settle();
    });
  }

  #settle(): void {
    this.#waiters = this.#waiters.filter((waiter) => {
      if (this.#waits >= waiter.count) waiter.resolve();
      else if (this.#exited) waiter.reject(this.#exited);
      else return true;
      return false;
    });
  }

  /** Resolves once it has waited `count` times; rejects if it exits first. */
  waited(count: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#waiters.push({ count, resolve, reject });
      this.#settle();
    });
  }

  go(): Promise<void> {
    return this.#stdin.write(new TextEncoder().encode("go\n"));
  }

  /** Its JSON line, once it has exited. */
  async result(): Promise<Result> {
    const status = await this.child.status;
    await Promise.all([this.#stdout.done, this.#stderr.done]);
    this.#stdin.close().catch(() => {});
    if (!status.success) {
      throw new Error(`a load generator exited with ${status.code}: ${tail(this.#stderr.text)}`);
    }
    const line = this.#stdout.text.trim().split("\n").pop() ?? "";
    try {
      return JSON.parse(line) as Result;
    } catch {
      throw new Error(`a load generator printed no JSON: ${tail(this.#stdout.text)}`);
    }
  }
}

/**
 * The crowd scenario split over several server processes of the same server, each on its own
 * port with a load generator of its own (its own loopback source addresses), for machines where
 * one process may not open a file per connection. The load generators are gated (`--go-stdin`):
 * all start connecting at once; once all are connected the runner reads every server's RSS
 * (1 s later, as measureCrowd() does), then all sync, then each broadcast starts in all at once
 * and is timed from the first send to the last receipt of all (combineShards()).
 */
async function measureCrowdSharded(
  scenario: Scenario,
  server: Server,
  shards: number[],
): Promise<Result> {
  const conns = shards.reduce((sum, n) => sum + n, 0);
  const timeout = 120 + conns / 500;
  const servers: { port: number; child: Deno.ChildProcess; stderr: LineReader }[] = [];
  const generators: GatedLoadgen[] = [];
  try {
    for (const _ of shards) {
      const port = freePort();
      servers.push({ port, ...(await startServer(server, port, scenario.deflate)) });
    }
    // Warm each server's WebSocket code paths so one-time costs do not count per connection.
    for (const { port } of servers) {
      await loadgen(["idle", "--conns", "10", "--hold", "0", "--port", `${port}`], 30);
    }
    await sleep(200);
    const before = servers.map(({ child }) => rssKiB(child.pid));
    const slabBefore = slabKiB();
    let after: number[] = [];
    let slabAfter = NaN;
    let loadgenRss = NaN;
    let offset = 0;
    const started = performance.now();
    const cpu = cpuMeter(servers.map(({ child }) => child.pid));
    for (const [i, size] of shards.entries()) {
      // CONNECTING in all, as with one process: the servers share one core.
      const connecting = Math.ceil(CONNECTING / shards.length);
      const args = [...crowdArgs(size, connecting), "--source-offset", `${offset}`];
      generators.push(new GatedLoadgen([...args, "--port", `${servers[i].port}`], timeout));
      offset += sourcesFor(size);
    }
    const results = await within(
      (async () => {
        // Gates: connect, sync (after all are connected), then one per broadcast.
        for (let gate = 1; gate <= FANOUT_ROUNDS + 2; gate++) {
          await Promise.all(generators.map((generator) => generator.waited(gate)));
          if (gate === 2) {
            await sleep(1000);
            after = servers.map(({ child }) => rssKiB(child.pid));
            slabAfter = slabKiB();
            loadgenRss = generators.reduce((sum, { child }) => sum + rssKiB(child.pid), 0);
          }
          await Promise.all(generators.map((generator) => generator.go()));
        }
        return await Promise.all(generators.map((generator) => generator.result()));
      })(),
      (timeout + 10) * 1000,
      "the load generators hung",
    );
    const sum = (values: number[]) => values.reduce((total, n) => total + n, 0);
    const numbers = (key: string) => results.map((result) => Number(result[key]));
    const cpuUse = cpu(sum(numbers("cpu_s")), (performance.now() - started) / 1000);
    const { handshakesPerSecond, fanoutMs } = combineShards(
      conns,
      results as unknown as ShardTimes[],
    );
    const growth = servers.map((_, i) => after[i] - before[i]);
    return {
      ...cpuUse,
      scenario: "crowd",
      path: String(results[0].path),
      conns,
      processes: shards.length,
      conns_per_process: shards.join(","),
      sources: offset,
      handshakes_per_s: handshakesPerSecond,
      // connect to 101: the median of the load generators' medians, the highest p99
      p50_us: median(numbers("p50_us")) ?? NaN,
      p99_us: Math.max(...numbers("p99_us")),
      fanout_ms: fanoutMs.map((ms) => ms.toFixed(3)).join(","),
      fanout_median_ms: median(fanoutMs) ?? NaN,
      // sync messages each load generator sent before the broadcasts (1 when none was lost)
      sync_messages: numbers("sync_messages").join(","),
      // copies of them that arrived once the broadcasts had begun (0 when all had drained)
      late_sync_copies: numbers("late_sync_copies").join(","),
      cpu_s: sum(numbers("cpu_s")),
      rss_before_kib: sum(before),
      rss_after_kib: sum(after),
      rss_growth_kib: growth.join(","),
      kib_per_conn: sum(growth) / conns,
      kernel_kib_per_conn: (slabAfter - slabBefore) / conns,
      // The load generators' own memory, all of it, per client.
      loadgen_kib_per_conn: loadgenRss / conns,
    };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const gone = servers.filter(({ child }) => !children.has(child.pid));
    const exits = gone.map(({ stderr }) => ` (a server exited: ${tail(stderr.text, 300)})`);
    throw new Error(`${message}${exits.join("")}`);
  } finally {
    await Promise.all(generators.map(({ child }) => stop(child)));
    await Promise.all(servers.map(({ child }) => stop(child)));
  }
}

async function measureLoad(
  scenario: Scenario,
  pid: number,
  common: string[],
  options: Options,
): Promise<Result> {
  const timing = ["--seconds", `${options.seconds}`, "--warmup", `${options.warmup}`];
  const cpu = cpuMeter([pid]);
  const run = await loadgen(
    [...scenario.args, ...timing, ...common],
    options.seconds + options.warmup + 60,
  );
  return { ...run.result, ...cpu(Number(run.result.cpu_s), run.wall) };
}

async function measure(scenario: Scenario, server: Server, options: Options): Promise<Result> {
  if (scenario.shards) return await measureCrowdSharded(scenario, server, scenario.shards);
  const port = freePort();
  const { child, stderr } = await startServer(server, port, scenario.deflate);
  const common = ["--port", `${port}`, ...deflateFlag(scenario.deflate)];
  try {
    if (scenario.kind === "idle") return await measureIdle(scenario, child.pid, common);
    if (scenario.kind === "crowd") return await measureCrowd(scenario, child.pid, common);
    return await measureLoad(scenario, child.pid, common, options);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const alive = children.has(child.pid);
    throw new Error(`${message}${alive ? "" : ` (server exited: ${tail(stderr.text, 300)})`}`);
  } finally {
    await stop(child);
  }
}

/** Runs one client against a fresh fixed server; the client's CPU use is measured. */
async function measureClient(
  scenario: Scenario,
  client: Client,
  options: Options,
): Promise<Result> {
  const port = freePort();
  const server = await clientScenarioServer();
  const running = await startServer(server, port, false, LOADGEN_CPU);
  try {
    const { result, wall } = await runJson(
      SERVER_CPU,
      [
        ...client.command,
        ...["--url", `ws://127.0.0.1:${port}/echo`, ...scenario.args],
        ...["--warmup", `${options.warmup}`, "--seconds", `${options.seconds}`],
      ],
      (options.seconds + options.warmup + 60) * 1000,
      "client",
    );
    if (Number(result.errors) !== 0 || Number(result.closed) !== 0) {
      throw new Error(`client saw ${result.errors} wrong echoes, ${result.closed} closes`);
    }
    result.wall_s = wall;
    result.server = server.name;
    return result;
  } finally {
    await stop(running.child);
  }
}

function median(values: number[]): number | undefined {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return undefined;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function format(value: number | undefined, digits: number): string {
  if (value === undefined || !Number.isFinite(value)) return "—";
  return value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

interface Cell {
  median?: number;
  ratio?: number;
  values: number[];
  errors: string[];
  /** Whether every run negotiated permessage-deflate (deflate scenarios only). */
  deflate?: boolean;
  details: Record<string, number | undefined>;
}

type Summary = Record<string, Record<string, Cell>>;

const DETAIL_KEYS = ["server_cpu_pct", "loadgen_cpu_pct", "other_cpu_pct"];

/** A column of the tables: a server, or a client in the client scenarios. */
type Column = Pick<Server, "name" | "title">;

function summarize(list: Scenario[], servers: Column[], measurements: Measurement[]): Summary {
  const summary: Summary = {};
  for (const scenario of list) {
    const row: Record<string, Cell> = {};
    for (const server of servers) {
      const runs = measurements.filter((m) =>
        m.scenario === scenario.id && m.server === server.name
      );
      const ok = runs.filter((m) => m.ok);
      const details: Record<string, number | undefined> = {};
      const keys = [...scenario.details, ...(scenario.extra ?? [])].map((d) => d.key);
      for (const key of [...keys, ...DETAIL_KEYS]) {
        details[key] = median(ok.map((m) => Number(m.result?.[key])));
      }
      row[server.name] = {
        values: ok.map((m) => m.value ?? NaN),
        median: median(ok.map((m) => m.value ?? NaN)),
        errors: runs.filter((m) => !m.ok).map((m) => m.error ?? "failed"),
        deflate: scenario.deflate && ok.length
          ? ok.every((m) => m.result?.deflate_negotiated === true)
          : undefined,
        details,
      };
    }
    const base = row[BASELINE]?.median;
    for (const cell of Object.values(row)) {
      if (cell.median !== undefined && base) cell.ratio = cell.median / base;
    }
    summary[scenario.id] = row;
  }
  return summary;
}

function table(title: string, list: Scenario[], servers: Column[], summary: Summary): string {
  const head = `| ${title} | ${servers.map((s) => s.title).join(" | ")} |`;
  const rule = `| --- | ${servers.map(() => "---:").join(" | ")} |`;
  const rows = list.map((scenario) => {
    const m = scenario.metric;
    const label = `${scenario.title} (${m.unit}${m.lowerIsBetter ? ", lower is better" : ""})`;
    const cells = servers.map((server) => {
      const cell = summary[scenario.id][server.name];
      if (cell.median === undefined) return cell.errors.length ? "failed" : "—";
      const ratio = cell.ratio === undefined ? "" : ` (${cell.ratio.toFixed(2)}×)`;
      const mark = cell.deflate === false ? " †" : "";
      const failed = cell.errors.length ? ` [${cell.errors.length} failed]` : "";
      return `${format(cell.median, m.digits)}${ratio}${mark}${failed}`;
    });
    const extra = (scenario.extra ?? []).map((metric) => {
      const base = summary[scenario.id][BASELINE]?.details[metric.key];
      const cells = servers.map((server) => {
        const value = summary[scenario.id][server.name].details[metric.key];
        if (value === undefined) return "—";
        const ratio = base ? ` (${(value / base).toFixed(2)}×)` : "";
        return `${format(value, metric.digits)}${ratio}`;
      });
      const lower = metric.lowerIsBetter ? ", lower is better" : "";
      return `| ${scenario.title.split(":")[0]}: ${metric.unit}${lower} | ${cells.join(" | ")} |`;
    });
    return [`| ${label} | ${cells.join(" | ")} |`, ...extra].join("\n");
  });
  return [head, rule, ...rows].join("\n");
}

function detailsTable(list: Scenario[], servers: Column[], summary: Summary): string {
  const head = `| details (medians) | ${servers.map((s) => s.title).join(" | ")} |`;
  const rule = `| --- | ${servers.map(() => "---:").join(" | ")} |`;
  const rows: string[] = [];
  for (const scenario of list) {
    const metrics: Metric[] = [...scenario.details];
    if (scenario.kind === "load") {
      metrics.push({ key: "cpu", unit: "CPU % server / load generator / other", digits: 0 });
    }
    for (const metric of metrics) {
      const cells = servers.map((server) => {
        const cell = summary[scenario.id][server.name];
        if (cell.median === undefined) return "—";
        if (metric.key !== "cpu") return format(cell.details[metric.key], metric.digits);
        return DETAIL_KEYS.map((key) => format(cell.details[key], 0)).join(" / ");
      });
      rows.push(`| ${scenario.title}: ${metric.unit} | ${cells.join(" | ")} |`);
    }
  }
  return [head, rule, ...rows].join("\n");
}

// ---------------------------------------------------------------------------------------------
// Main

export async function ensureLoadgen(): Promise<void> {
  const source = Deno.statSync(LOADGEN_SOURCE).mtime?.getTime() ?? 0;
  let binary = -1;
  try {
    binary = Deno.statSync(LOADGEN).mtime?.getTime() ?? -1;
  } catch {
    // not built yet
  }
  if (binary >= source) return;
  console.log(`compiling the load generator: gcc -O2 -o ${LOADGEN} ${LOADGEN_SOURCE}`);
  const { success, stderr } = await new Deno.Command("gcc", {
    args: ["-O2", "-o", LOADGEN, LOADGEN_SOURCE],
    stderr: "piped",
  }).output();
  if (!success) throw new Error(`gcc failed: ${new TextDecoder().decode(stderr)}`);
}

async function versions(servers: Server[]): Promise<Record<string, string>> {
  const found: Record<string, string> = { deno: Deno.version.deno };
  if (servers.some((s) => s.name === "ws")) {
    found.node = (await output("node", ["--version"])) ?? "?";
    try {
      found.ws = JSON.parse(Deno.readTextFileSync(`${NODE_MODULES}/ws/package.json`)).version;
    } catch {
      found.ws = "?";
    }
  }
  if (servers.some((s) => s.name === "bun")) found.bun = (await output(BUN, ["--version"])) ?? "?";
  return found;
}

function machine(): { cpu: string; cores: number; os: string } {
  let cpu = "?";
  try {
    cpu = Deno.readTextFileSync("/proc/cpuinfo").match(/^model name\s*:\s*(.+)$/m)?.[1] ?? "?";
  } catch {
    // not Linux
  }
  return { cpu, cores: navigator.hardwareConcurrency, os: `${Deno.build.os} ${Deno.osRelease()}` };
}

function select(options: Options): Scenario[] {
  const all = scenarios(options);
  if (options.scenarios) {
    const unknown = options.scenarios.filter((id) => !all.some((s) => s.id === id));
    if (unknown.length) {
      usage(`unknown scenario ${unknown.join(", ")}; known: ${all.map((s) => s.id).join(", ")}`);
    }
    return all.filter((s) => options.scenarios!.includes(s.id));
  }
  return all.filter((s) =>
    s.deflate ? options.full || options.deflate : s.set === "quick" || options.full
  );
}

/**
 * This library's servers from another checkout (`--baseline DIR`, e.g. a worktree of the commit
 * before a change), to run interleaved with this checkout's: `ours_base` (node:net) and
 * `ours_deno_base` (Deno.listen). The backend is named on the command line, so that a checkout
 * whose default differs runs the same backend.
 */
function baselineServers(dir: string): Server[] {
  const file = `${dir.replace(/\/$/, "")}/bench/servers/ours.ts`;
  const missing = () => Promise.resolve(exists(file) ? undefined : `${file} does not exist`);
  return [["ours_base", ["--tcp", "node:net"], ""], [
    "ours_deno_base",
    ["--tcp", "Deno.listen"],
    " (Deno.listen)",
  ]].map((
    [name, tcp, suffix],
  ) => ({
    name: name as string,
    title: `baseline${suffix}`,
    command: (port: number, deflate: boolean) => [
      Deno.execPath(),
      "run",
      "-A",
      file,
      ...["--port", `${port}`, ...(tcp as string[]), ...deflateFlag(deflate)],
    ],
    unavailable: missing,
  }));
}

async function main(): Promise<void> {
  if (Deno.args.includes("--soak")) {
    // The soak benchmark has options of its own (bench/soak.ts).
    if (!(await soakMain(Deno.args))) Deno.exitCode = 1;
    return;
  }
  const options = parseOptions(Deno.args);
  if (options.baseline !== undefined) SERVERS.push(...baselineServers(options.baseline));
  const fileLimit = await childFileLimit();
  options.crowdShards = crowdShards(options.crowd, fileLimit);
  const selected = select(options);
  const names = options.servers ??
    SERVERS.filter((s) => options.full || !s.fullOnly).map((s) => s.name);
  const unknown = names.filter((n) => !SERVERS.some((s) => s.name === n));
  if (unknown.length) {
    const known = SERVERS.map((s) => s.name).join(", ");
    usage(`unknown server ${unknown.join(", ")}; known: ${known}`);
  }
  const clientNames = options.clients ?? CLIENTS.map((c) => c.name);
  const unknownClients = clientNames.filter((n) => !CLIENTS.some((c) => c.name === n));
  if (unknownClients.length) {
    const known = CLIENTS.map((c) => c.name).join(", ");
    usage(`unknown client ${unknownClients.join(", ")}; known: ${known}`);
  }

  await ensureLoadgen();
  const servers: Server[] = [];
  const skipped: Record<string, string> = {};
  if (selected.some((s) => s.kind === "crowd")) {
    const reason = crowdUnavailable(options.crowdShards, fileLimit);
    if (!reason && options.crowdShards.length > 1) {
      const each = [...new Set(options.crowdShards)].map((n) => n.toLocaleString("en-US"));
      console.log(
        `crowd: processes started here may open ${fileLimit} files; ` +
          `${crowdNeeds(options.crowd)}. So ${options.crowdShards.length} server processes ` +
          `hold ${each.join(" or ")} connections each, on ports of their own, each driven by a ` +
          `load generator of its own (${Math.ceil(CONNECTING / options.crowdShards.length)} ` +
          `connecting at a time each)`,
      );
    }
    if (reason) {
      skipped.crowd = reason;
      console.log(`skipping the crowd scenario: ${reason}`);
      selected.splice(selected.findIndex((s) => s.kind === "crowd"), 1);
    }
  }
  for (const server of SERVERS.filter((s) => names.includes(s.name))) {
    const reason = await server.unavailable();
    if (reason) {
      skipped[server.name] = reason;
      console.log(`skipping ${server.name}: ${reason}`);
    } else {
      servers.push(server);
    }
  }
  if (servers.length === 0) throw new Error("no server to benchmark");
  const clients: Client[] = [];
  if (selected.some((s) => s.kind === "client")) {
    for (const client of CLIENTS.filter((c) => clientNames.includes(c.name))) {
      const reason = await client.unavailable();
      if (reason) {
        skipped[`client ${client.name}`] = reason;
        console.log(`skipping client ${client.name}: ${reason}`);
      } else {
        clients.push(client);
      }
    }
  }

  const env = { machine: machine(), versions: await versions(servers) };
  const versionText = Object.entries(env.versions).map(([k, v]) => `${k} ${v}`).join(", ");
  console.log(
    `servers pinned to CPU ${SERVER_CPU} (taskset -c ${SERVER_CPU}), load generator pinned to ` +
      `CPU ${LOADGEN_CPU} (taskset -c ${LOADGEN_CPU}); loopback only`,
  );
  console.log(`${env.machine.cpu}, ${env.machine.cores} cores, ${env.machine.os}; ${versionText}`);
  const clientScenarios = selected.filter((s) => s.kind === "client");
  const fixed = clientScenarios.length ? await clientScenarioServer() : undefined;
  if (fixed) {
    console.log(
      `client scenarios: clients pinned to CPU ${SERVER_CPU}, the ${fixed.name} server to ` +
        `CPU ${LOADGEN_CPU}`,
    );
  }
  console.log(
    `${selected.length} scenarios × ${servers.length} servers (${clients.length} clients) × ` +
      `${options.repeat} repetitions, ${options.warmup} s warm-up + ${options.seconds} s ` +
      `measured per load run\n`,
  );

  const measurements: Measurement[] = [];
  const columnsOf = (s: Scenario): (Server | Client)[] =>
    s.kind === "client"
      ? clients
      : servers.filter((server) =>
        (server.kinds === undefined || server.kinds.includes(s.kind)) &&
        !(s.deflate && server.name === "deno_floor")
      );
  const total = selected.reduce((n, s) => n + columnsOf(s).length * options.repeat, 0);
  const started = performance.now();
  for (const scenario of selected) {
    const columns = columnsOf(scenario);
    for (let repetition = 0; repetition < options.repeat; repetition++) {
      // Rotate the order so that no server always runs first (or right after the same one).
      const order = columns.map((_, i) => columns[(i + repetition) % columns.length]);
      for (const server of order) {
        const n = measurements.length + 1;
        const label = `[${n}/${total}] ${scenario.id} ${server.name} #${repetition + 1}`;
        const runStarted = performance.now();
        try {
          const result = scenario.kind === "client"
            ? await measureClient(scenario, server as Client, options)
            : await measure(scenario, server as Server, options);
          result.elapsed_s = Math.round(performance.now() - runStarted) / 1000;
          const value = Number(result[scenario.metric.key]);
          measurements.push({
            scenario: scenario.id,
            server: server.name,
            repetition,
            ok: true,
            value,
            result,
          });
          let note = scenario.deflate && result.deflate_negotiated === false
            ? " (deflate not negotiated)"
            : "";
          if (Number(result.processes) > 1) {
            note += ` (${result.processes} server processes, ${result.conns_per_process} each)`;
          }
          if (Number(result.other_cpu_pct) > BUSY_WARNING) {
            note += ` (warning: other processes used ${result.other_cpu_pct}% CPU meanwhile)`;
          }
          const shown = `${format(value, scenario.metric.digits)} ${scenario.metric.unit}`;
          console.log(`${label}: ${shown}${note}`);
        } catch (error) {
          const message = error instanceof Error ? error.message : String(error);
          measurements.push({
            scenario: scenario.id,
            server: server.name,
            repetition,
            ok: false,
            error: message,
          });
          console.log(`${label}: FAILED: ${message}`);
        }
      }
    }
  }
  const elapsed = (performance.now() - started) / 1000;

  const serverScenarios = selected.filter((s) => s.kind !== "client");
  const summary = {
    ...summarize(serverScenarios, servers, measurements),
    ...summarize(clientScenarios, clients, measurements),
  };
  const plain = serverScenarios.filter((s) => !s.deflate);
  const compressed = serverScenarios.filter((s) => s.deflate);
  const out: string[] = [
    `Medians of ${options.repeat} interleaved runs; (×) is the ratio to Deno's built-in server ` +
    `(or client) in this run. Servers on CPU ${SERVER_CPU}, load generator on CPU ` +
    `${LOADGEN_CPU}${
      fixed ? `; clients on CPU ${SERVER_CPU}, ${fixed.name} on CPU ${LOADGEN_CPU}` : ""
    }.`,
  ];
  if (plain.length) out.push("", table("scenario", plain, servers, summary));
  if (compressed.length) {
    out.push("", table("scenario (permessage-deflate)", compressed, servers, summary));
    out.push("", "† the server did not negotiate permessage-deflate and ran uncompressed.");
  }
  if (clientScenarios.length && clients.length) {
    out.push("", table(`client (against ${fixed?.title})`, clientScenarios, clients, summary));
  }
  if (serverScenarios.length) out.push("", detailsTable(serverScenarios, servers, summary));
  if (clientScenarios.length && clients.length) {
    out.push("", detailsTable(clientScenarios, clients, summary));
  }
  for (const [name, reason] of Object.entries(skipped)) out.push("", `Skipped ${name}: ${reason}`);
  out.push("", `Total time: ${elapsed.toFixed(0)} s.`);
  console.log(`\n${out.join("\n")}`);

  Deno.mkdirSync(`${BENCH_DIR}/results`, { recursive: true });
  const report = {
    date: new Date().toISOString(),
    ...env,
    pinning: { server: SERVER_CPU, loadgen: LOADGEN_CPU },
    options,
    servers: servers.map((s) => s.name),
    clients: clients.map((c) => c.name),
    client_scenario_server: fixed?.name,
    skipped,
    scenarios: selected.map(({ id, title, args, deflate, metric }) => ({
      id,
      title,
      args,
      deflate,
      metric,
    })),
    summary,
    measurements,
    seconds: elapsed,
  };
  Deno.writeTextFileSync(RESULTS, JSON.stringify(report, null, 2) + "\n");
  console.log(`\nResults written to ${RESULTS}`);
}

if (import.meta.main) {
  const interrupt = () => {
    killAll();
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", interrupt);
  Deno.addSignalListener("SIGTERM", interrupt);
  try {
    await main();
  } catch (error) {
    console.error(`run.ts: ${error instanceof Error ? error.message : error}`);
    Deno.exitCode = 1;
  } finally {
    killAll();
  }
  Deno.exit();
}
