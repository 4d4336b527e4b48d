/**
 * The soak benchmark: this library's server under hours-in-minutes of churn, with its memory and
 * file descriptors watched. `deno task bench --soak` runs it (see bench/README.md).
 *
 *   deno run -A bench/run.ts --soak [--minutes N] [--tcp node:net] [--no-compression]
 *                                   [--matrix] [--steady C] [--rate R]
 *
 * The server (`soak_server.ts`) runs in a process of its own; steady and churn clients
 * (`soak_clients.ts`) in two others. Every `sample` seconds the server's RSS, heap, external
 * memory, open file descriptors (`/proc/PID/fd`) and live connections are recorded. The run
 * passes when:
 * - no steady client misses or reorders a broadcast or an echo, or loses its connection;
 * - no process has an unhandled rejection or uncaught error, the server logs no error, and
 *   every churn client ends the way it planned (the server drops clients that never read, and
 *   closes handshakes left silent);
 * - once every client has left (after a grace period), the server's file descriptors are back
 *   to the baseline (± `fdSlack`) and it has no connection left;
 * - the RSS peak of the last third of the run is at most `memoryTolerance` (10 %) above the
 *   peak of the middle third (the first third is warm-up).
 *
 * @module
 */

import { walkArgs } from "./_args.ts";

const BENCH_DIR = new URL(".", import.meta.url).pathname.replace(/\/$/, "");

/** The settings of one soak run. */
export interface SoakOptions {
  /** Length of the churn, in minutes. Default 10. */
  minutes: number;
  /** The server's TCP backend. Default `"Deno.listen"`. */
  tcp: "Deno.listen" | "node:net";
  /** permessage-deflate on (server and clients). Default true. */
  compression: boolean;
  /** Steady clients, open for the whole run. Default 100. */
  steady: number;
  /** Churn clients started a minute. Default 3 000. */
  rate: number;
  /** Seconds between samples. Default 10. */
  sampleSeconds: number;
  /** Seconds allowed, once every client has left, for the connections and descriptors to go. Default 20. */
  graceSeconds: number;
  /** File descriptors above the baseline still accepted at the end. Default 4. */
  fdSlack: number;
  /** How much higher the last third's RSS peak may be than the middle third's. Default 0.10. */
  memoryTolerance: number;
  /**
   * How much more live heap (after a full garbage collection) the server may hold once every
   * client has left than at the end of the warm-up (the first third). Default 0.10.
   */
  liveHeapTolerance: number;
  /** Where the chart and JSON go; `undefined` writes nothing. Default `bench/results`. */
  resultsDir?: string;
  /** Progress lines. Default: `console.log`. */
  log: (line: string) => void;
}

/** The defaults of {@linkcode SoakOptions}. */
export const SOAK_DEFAULTS: SoakOptions = {
  minutes: 10,
  tcp: "Deno.listen",
  compression: true,
  steady: 100,
  rate: 3000,
  sampleSeconds: 10,
  graceSeconds: 20,
  fdSlack: 4,
  memoryTolerance: 0.10,
  liveHeapTolerance: 0.10,
  resultsDir: `${BENCH_DIR}/results`,
  log: (line) => console.log(line),
};

/** The server's keepalive and handshake timeouts in a soak (ms): short, so they act in a run. */
const SERVER_TIMEOUTS = {
  pingInterval: 2000,
  pingTimeout: 4000,
  closeTimeout: 2000,
  openTimeout: 3000,
};
/** How long a never-read client waits before checking that the server dropped it (ms). */
const DROP_WITHIN = SERVER_TIMEOUTS.pingInterval + SERVER_TIMEOUTS.pingTimeout +
  SERVER_TIMEOUTS.closeTimeout + 4000;

/** One sample of the server process. */
export interface SoakSample {
  /** Seconds since the churn started. */
  t: number;
  /** Resident set size, bytes. */
  rss: number;
  /** V8 heap used, bytes. */
  heapUsed: number;
  /** Memory outside the V8 heap held by JavaScript objects (buffers), bytes. */
  external: number;
  /** Open file descriptors. */
  fds: number;
  /** Open WebSocket connections. */
  connections: number;
}

/** What a soak run found. */
export interface SoakReport {
  /** The settings it ran with (without the log function). */
  options: Omit<SoakOptions, "log">;
  /** The server's open file descriptors before any client. */
  baselineFds: number;
  /** Samples during the churn. */
  samples: SoakSample[];
  /** The sample after every client left and the grace period. */
  final: SoakSample;
  /** RSS peaks of the middle and last thirds, bytes. */
  peaks: { middle: number; last: number };
  /** Heap used after a full collection at the end of the warm-up and at the end, bytes. */
  liveHeap: { warm: number; end: number };
  /** The steady clients' result line. */
  steady: Record<string, unknown>;
  /** The churn clients' result line. */
  churn: Record<string, unknown>;
  /** The server's last stats line. */
  server: Record<string, unknown>;
  /** Why it failed; empty when it passed. */
  failures: string[];
  /** Whether every criterion held. */
  passed: boolean;
}

// ---------------------------------------------------------------------------------------------
// Processes

/** A child process whose stdout is read line by line; lines can be waited for by prefix. */
class Child {
  readonly process: Deno.ChildProcess;
  readonly lines: string[] = [];
  stderr = "";
  readonly #waiters: { prefix: string; resolve: (line: string) => void }[] = [];
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly done: Promise<void>;

  constructor(readonly name: string, args: string[]) {
    const process = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", ...args],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.process = process;
    this.#writer = this.process.stdin.getWriter();
    const stdout = (async () => {
      let pending = "";
      for await (const chunk of process.stdout.pipeThrough(new TextDecoderStream())) {
        pending += chunk;
        for (let at; (at = pending.indexOf("\n")) >= 0;) {
          this.#line(pending.slice(0, at));
          pending = pending.slice(at + 1);
        }
      }
      if (pending) this.#line(pending);
    })();
    const stderr = (async () => {
      for await (const chunk of process.stderr.pipeThrough(new TextDecoderStream())) {
        this.stderr = (this.stderr + chunk).slice(-4000);
      }
    })();
    this.done = Promise.all([stdout, stderr]).then(() => {});
  }

  #line(line: string): void {
    const at = this.#waiters.findIndex((w) => line.startsWith(w.prefix));
    if (at >= 0) this.#waiters.splice(at, 1)[0].resolve(line);
    else this.lines.push(line);
  }

  /** The next line starting with `prefix` (one already printed counts), within `ms`. */
  async next(prefix: string, ms: number): Promise<string> {
    const at = this.lines.findIndex((line) => line.startsWith(prefix));
    if (at >= 0) return this.lines.splice(at, 1)[0];
    let resolve!: (line: string) => void;
    const line = new Promise<string>((r) => (resolve = r));
    this.#waiters.push({ prefix, resolve });
    const exited = this.process.status.then((status) => {
      throw new Error(
        `${this.name} exited (code ${status.code}) before printing '${prefix}': ${this.stderr}`,
      );
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${this.name} printed no '${prefix}' line in ${ms} ms`)),
        ms,
      );
    });
    try {
      return await Promise.race([line, exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Writes one command line to its stdin. */
  async send(command: string): Promise<void> {
    await this.#writer.write(new TextEncoder().encode(`${command}\n`));
  }

  /** Ends it: closes stdin, then SIGKILL if it is still running after `ms`. */
  async stop(ms = 5000): Promise<Deno.CommandStatus> {
    await this.#writer.close().catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    const killed = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        try {
          this.process.kill("SIGKILL");
        } catch {
          // gone meanwhile
        }
        resolve();
      }, ms);
    });
    await Promise.race([this.process.status, killed]);
    clearTimeout(timer);
    const status = await this.process.status;
    await this.done;
    return status;
  }
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

function openFds(pid: number): number {
  let n = 0;
  for (const _ of Deno.readDirSync(`/proc/${pid}/fd`)) n++;
  return n;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function parseResult(line: string): Record<string, unknown> {
  return JSON.parse(line.slice(line.indexOf(" ") + 1));
}

// ---------------------------------------------------------------------------------------------
// A run

/** Runs one soak and returns what it found (never throws for a failed criterion). */
export async function runSoak(settings: Partial<SoakOptions> = {}): Promise<SoakReport> {
  const options: SoakOptions = { ...SOAK_DEFAULTS, ...settings };
  const { log } = options;
  const port = freePort();
  const compressionFlag = options.compression ? [] : ["--no-compression"];
  const timeoutFlags = Object.entries(SERVER_TIMEOUTS).flatMap(([name, ms]) => [
    `--${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`,
    `${ms}`,
  ]);
  const failures: string[] = [];
  const server = new Child("server", [
    "--v8-flags=--expose-gc",
    `${BENCH_DIR}/soak_server.ts`,
    ...["--port", `${port}`, "--tcp", options.tcp, ...compressionFlag, ...timeoutFlags],
  ]);
  let steady: Child | undefined;
  let churn: Child | undefined;
  try {
    await server.next("listening on", 30_000);
    const pid = server.process.pid;
    const stats = async (command = "stats"): Promise<Record<string, unknown>> => {
      await server.send(command);
      return parseResult(await server.next(`${command} `, 30_000));
    };
    const sample = async (t: number): Promise<SoakSample> => {
      const s = await stats();
      return {
        t: Math.round(t),
        rss: Number(s.rss),
        heapUsed: Number(s.heapUsed),
        external: Number(s.external),
        fds: openFds(pid),
        connections: Number(s.connections),
      };
    };
    const baselineFds = openFds(pid);
    log(
      `soak: server pid ${pid} (${options.tcp}, ${
        options.compression ? "permessage-deflate" : "no compression"
      }), ${baselineFds} file descriptors open`,
    );

    steady = new Child("steady clients", [
      `${BENCH_DIR}/soak_clients.ts`,
      ...["steady", "--port", `${port}`, "--count", `${options.steady}`, ...compressionFlag],
    ]);
    await steady.next("ready", 60_000);
    const seconds = options.minutes * 60;
    log(
      `soak: ${options.steady} steady clients open; churn of ${options.rate} clients a minute ` +
        `for ${seconds} s, a sample every ${options.sampleSeconds} s`,
    );
    churn = new Child("churn clients", [
      `${BENCH_DIR}/soak_clients.ts`,
      ...["churn", "--port", `${port}`, "--seconds", `${seconds}`, "--rate", `${options.rate}`],
      ...["--open-timeout", `${SERVER_TIMEOUTS.openTimeout}`],
      ...["--drop-within", `${DROP_WITHIN}`, ...compressionFlag],
    ]);
    const started = performance.now();
    const samples: SoakSample[] = [];
    const liveHeap = { warm: 0, end: 0 };
    for (let i = 0;; i++) {
      const due = started + i * options.sampleSeconds * 1000;
      if (due > started + seconds * 1000 + 1) break;
      await sleep(Math.max(0, due - performance.now()));
      const s = await sample((performance.now() - started) / 1000);
      samples.push(s);
      log(row(s));
      if (liveHeap.warm === 0 && s.t >= seconds / 3) {
        liveHeap.warm = Number((await stats("live")).heapUsed);
        log(`soak: live heap after the warm-up: ${mib(liveHeap.warm)} MiB`);
      }
    }
    const churnResult = parseResult(await churn.next("result ", DROP_WITHIN + 60_000));
    await server.send("finish");
    await server.next("finished ", 30_000);
    const steadyResult = parseResult(await steady.next("result ", 60_000));
    for (const child of [churn, steady]) {
      const status = await child.stop();
      if (!status.success) failures.push(`${child.name} exited with code ${status.code}`);
    }

    // Every client has left: the connections and descriptors must follow within the grace period.
    let final = await sample((performance.now() - started) / 1000);
    const graceEnd = performance.now() + options.graceSeconds * 1000;
    while (
      (final.connections > 0 || final.fds > baselineFds + options.fdSlack) &&
      performance.now() < graceEnd
    ) {
      await sleep(1000);
      final = await sample((performance.now() - started) / 1000);
    }
    log(`${row(final)}  (after every client left)`);
    const serverStats = await stats();
    liveHeap.end = Number((await stats("live")).heapUsed);
    log(`soak: live heap at the end: ${mib(liveHeap.end)} MiB`);

    // ---- The criteria ----
    for (const [name, result] of [["steady", steadyResult], ["churn", churnResult]] as const) {
      if (Number(result.unhandled) > 0) {
        failures.push(`${name} clients: ${result.unhandled} unhandled rejections or errors`);
      }
      if (Number(result.problemCount) > 0) {
        failures.push(
          `${name} clients: ${result.problemCount} problems, e.g. ${
            (result.problems as string[]).slice(0, 3).join("; ")
          }`,
        );
      }
    }
    if (!(Number(steadyResult.broadcastsMin) > 0)) {
      failures.push("a steady client received no broadcast");
    }
    if (Number(serverStats.errors) > 0) {
      failures.push(
        `server: ${serverStats.errors} errors, e.g. ${
          (serverStats.errorMessages as string[]).slice(0, 3).join("; ")
        }`,
      );
    }
    if (final.connections !== 0) {
      failures.push(`server: ${final.connections} connections left after every client left`);
    }
    if (final.fds > baselineFds + options.fdSlack) {
      failures.push(
        `server: ${final.fds} file descriptors open at the end, baseline ${baselineFds} ` +
          `(+${options.fdSlack} allowed)`,
      );
    }
    const third = seconds / 3;
    const peak = (from: number, to: number) =>
      Math.max(0, ...samples.filter((s) => s.t >= from && s.t <= to).map((s) => s.rss));
    const peaks = { middle: peak(third, 2 * third), last: peak(2 * third + 0.001, seconds + 1) };
    if (peaks.middle === 0 || peaks.last === 0) {
      failures.push("too few samples to compare the middle and last thirds");
    } else if (peaks.last > peaks.middle * (1 + options.memoryTolerance)) {
      failures.push(
        `memory: the RSS peak of the last third, ${mib(peaks.last)} MiB, is more than ` +
          `${options.memoryTolerance * 100} % above the middle third's, ${mib(peaks.middle)} MiB`,
      );
    }

    if (liveHeap.end > liveHeap.warm * (1 + options.liveHeapTolerance)) {
      failures.push(
        `memory: the live heap once every client left, ${mib(liveHeap.end)} MiB, is more than ` +
          `${options.liveHeapTolerance * 100} % above the live heap after the warm-up, ` +
          `${mib(liveHeap.warm)} MiB`,
      );
    }

    const { log: _, ...recorded } = options;
    return {
      options: recorded,
      baselineFds,
      samples,
      final,
      peaks,
      liveHeap,
      steady: steadyResult,
      churn: churnResult,
      server: serverStats,
      failures,
      passed: failures.length === 0,
    };
  } finally {
    for (const child of [churn, steady]) await child?.stop(1000);
    await server.send("exit").catch(() => {});
    await server.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Output

function mib(bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(1);
}

const HEADER = "    t s    RSS MiB   heap MiB   external MiB    fds   connections";

function row(s: SoakSample): string {
  return `${String(s.t).padStart(7)} ${mib(s.rss).padStart(10)} ${mib(s.heapUsed).padStart(10)} ` +
    `${mib(s.external).padStart(14)} ${String(s.fds).padStart(6)} ${
      String(s.connections).padStart(13)
    }`;
}

/** The name of a combination, as used in file names and headings. */
export function soakLabel(options: Pick<SoakOptions, "tcp" | "compression">): string {
  return `${options.tcp === "node:net" ? "node-net" : "deno-listen"}-${
    options.compression ? "deflate" : "plain"
  }`;
}

/** A run's table, its churn counts and its verdict, as printed. */
export function soakSummary(report: SoakReport): string {
  const { options } = report;
  const lines = [
    `Soak ${soakLabel(options)}: ${options.minutes} min, ${options.steady} steady clients, ` +
    `${options.rate} churn clients a minute; server baseline ${report.baselineFds} fds`,
    HEADER,
    ...report.samples.map(row),
    `${row(report.final)}  (after every client left)`,
    `RSS peak: middle third ${mib(report.peaks.middle)} MiB, last third ${
      mib(report.peaks.last)
    } MiB; live heap: after the warm-up ${mib(report.liveHeap.warm)} MiB, at the end ${
      mib(report.liveHeap.end)
    } MiB`,
    `churn clients started: ${
      JSON.stringify(report.churn.started)
    }; skipped (400 in flight): ${report.churn.skipped}; not started in time: ${report.churn.late}`,
    `steady clients: broadcasts received ${report.steady.broadcastsMin}–${report.steady.broadcastsMax} each, ` +
    `${report.steady.echoes} echoes`,
    `server close codes: ${JSON.stringify(report.server.closeCodes)}; warnings: ${
      JSON.stringify(report.server.warnings)
    }`,
    report.passed ? "PASS" : `FAIL\n${report.failures.map((f) => `  - ${f}`).join("\n")}`,
  ];
  return lines.join("\n");
}

/** A small SVG chart of RSS (left axis) and connections (right axis) over time. */
export function soakChart(report: SoakReport): string {
  const points = [...report.samples, report.final];
  const width = 640, height = 320, left = 60, right = 60, top = 30, bottom = 40;
  const plotW = width - left - right, plotH = height - top - bottom;
  const maxT = Math.max(1, ...points.map((p) => p.t));
  const maxRss = Math.max(1, ...points.map((p) => p.rss)) * 1.1;
  const maxConn = Math.max(1, ...points.map((p) => p.connections)) * 1.1;
  const x = (t: number) => (left + (t / maxT) * plotW).toFixed(1);
  const y = (v: number, max: number) => (top + plotH - (v / max) * plotH).toFixed(1);
  const line = (value: (p: SoakSample) => number, max: number) =>
    points.map((p) => `${x(p.t)},${y(value(p), max)}`).join(" ");
  const ticks = [0, 0.25, 0.5, 0.75, 1];
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${left}" y="18" font-size="13">Soak ${soakLabel(report.options)}: ` +
    `server RSS (blue, MiB) and connections (orange)</text>`,
    `<rect x="${left}" y="${top}" width="${plotW}" height="${plotH}" fill="none" stroke="#999"/>`,
    ...ticks.map((f) =>
      `<text x="${left - 6}" y="${y(f * maxRss, maxRss)}" text-anchor="end" fill="#1f77b4">${
        mib(f * maxRss)
      }</text>` +
      `<text x="${width - right + 6}" y="${y(f * maxConn, maxConn)}" fill="#ff7f0e">${
        Math.round(f * maxConn)
      }</text>` +
      `<text x="${x(f * maxT)}" y="${height - bottom + 16}" text-anchor="middle">${
        Math.round(f * maxT)
      } s</text>`
    ),
    `<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="${
      line((p) => p.rss, maxRss)
    }"/>`,
    `<polyline fill="none" stroke="#ff7f0e" stroke-width="2" points="${
      line((p) => p.connections, maxConn)
    }"/>`,
    `<text x="${left}" y="${height - 6}">${report.passed ? "PASS" : "FAIL"}; ` +
    `last point: after every client left</text>`,
    `</svg>`,
    "",
  ].join("\n");
}

// ---------------------------------------------------------------------------------------------
// Command line (`bench/run.ts --soak …`)

function usage(message?: string): never {
  if (message) console.error(`soak: ${message}`);
  console.error(
    "usage: deno run -A bench/run.ts --soak [--minutes N] [--tcp Deno.listen|node:net]\n" +
      "                                       [--no-compression] [--matrix] [--steady C] [--rate R]\n" +
      "                                       [--sample S]",
  );
  Deno.exit(64);
}

/** Parses the soak's command line (after `--soak`); `matrix` runs all four combinations. */
export function parseSoakArgs(args: string[]): { runs: Partial<SoakOptions>[] } {
  const common: Partial<SoakOptions> = {};
  let tcp: SoakOptions["tcp"] | undefined;
  let compression: boolean | undefined;
  let matrix = false;
  walkArgs(args, usage, ({ name, text, value, number }) => {
    switch (name) {
      case "--soak":
        break;
      case "--help":
      case "-h":
        usage();
        break;
      case "--minutes":
        common.minutes = number(0.1, 24 * 60);
        break;
      case "--tcp": {
        const v = value();
        if (v !== "Deno.listen" && v !== "node:net" && v !== "deno") {
          usage(`--tcp must be Deno.listen or node:net, got ${v}`);
        }
        tcp = v === "node:net" ? "node:net" : "Deno.listen";
        break;
      }
      case "--no-compression":
        compression = false;
        break;
      case "--compression":
        compression = true;
        break;
      case "--matrix":
        matrix = true;
        break;
      case "--steady":
        common.steady = Math.round(number(1, 10_000));
        break;
      case "--rate":
        common.rate = Math.round(number(1, 600_000));
        break;
      case "--sample":
        common.sampleSeconds = number(0.5, 600);
        break;
      default:
        usage(`unknown option ${text}`);
    }
  });
  if (!matrix) return { runs: [{ ...common, tcp, compression }] };
  const runs: Partial<SoakOptions>[] = [];
  for (const t of tcp ? [tcp] : ["Deno.listen", "node:net"] as const) {
    for (const c of compression === undefined ? [true, false] : [compression]) {
      runs.push({ ...common, tcp: t, compression: c });
    }
  }
  return { runs };
}

/** Runs the soak(s) the command line asks for; prints tables; exits non-zero on a failure. */
export async function soakMain(args: string[]): Promise<boolean> {
  const { runs } = parseSoakArgs(args);
  let passed = true;
  const summaries: string[] = [];
  for (const run of runs) {
    // `undefined` fields fall back to the defaults.
    const settings = Object.fromEntries(
      Object.entries(run).filter(([, v]) => v !== undefined),
    ) as Partial<SoakOptions>;
    const report = await runSoak(settings);
    const summary = soakSummary(report);
    summaries.push(summary);
    console.log(`\n${summary}\n`);
    passed &&= report.passed;
    const dir = report.options.resultsDir;
    if (dir !== undefined) {
      Deno.mkdirSync(dir, { recursive: true });
      const name = `${dir}/soak-${soakLabel(report.options)}`;
      Deno.writeTextFileSync(`${name}.svg`, soakChart(report));
      Deno.writeTextFileSync(
        `${name}.json`,
        JSON.stringify({ date: new Date().toISOString(), ...report }, null, 2) + "\n",
      );
      console.log(`chart: ${name}.svg, data: ${name}.json`);
    }
  }
  if (runs.length > 1) console.log(`\n${summaries.join("\n\n")}`);
  console.log(passed ? "\nPASS" : "\nFAIL");
  return passed;
}

if (import.meta.main) {
  Deno.exitCode = (await soakMain(Deno.args)) ? 0 : 1;
}
