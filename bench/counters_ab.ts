/**
 * What the traffic counters (`connection.stats`, `server.stats()`) cost:
 * pipelined echo (`echo-32x16`) with this commit's code and with the same
 * code minus the counter increments in `protocol.ts`, in interleaved runs
 * (ABBA order), through `bench/run.ts`.
 *
 *   deno task bench:counters [--pairs 8] [--seconds 3] [--warmup 2]
 *
 * Both copies are `git archive HEAD` in temporary directories (commit your
 * changes first). Prints each run, the medians, the ratio of each pair
 * (with / without), and the same for messages per second of server CPU
 * (less sensitive to other load on the machine).
 *
 * @module
 */

import { parseArgs } from "node:util";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    pairs: { type: "string", default: "8" },
    seconds: { type: "string", default: "3" },
    warmup: { type: "string", default: "2" },
  },
});

const root = new URL("..", import.meta.url).pathname;

async function run(command: string, args: string[], cwd: string): Promise<string> {
  const output = await new Deno.Command(command, { args, cwd, stderr: "inherit" }).output();
  if (!output.success) throw new Error(`${command} ${args.join(" ")} failed in ${cwd}`);
  return new TextDecoder().decode(output.stdout);
}

/** A copy of HEAD in a new temporary directory. */
async function checkout(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "denows-counters-" });
  const archive = `${dir}.tar`;
  await run("git", ["archive", "-o", archive, "HEAD"], root);
  await run("tar", ["-xf", archive, "-C", dir], root);
  await Deno.remove(archive);
  return dir;
}

// The counter increments of protocol.ts, one statement a line, and the lines that only serve them.
function withoutCounters(source: string): string {
  return source
    .replace(/^[ \t]*(this\.)?counters\.\w+(\+\+| \+= [^;]*);\n/gm, "")
    .replace(/^([ \t]*)if \(fin\) counters\.messagesSent\+\+;\n[ \t]*else \{/gm, "$1if (!fin) {")
    .replace(/^[ \t]*const counters = this\.counters;\n/gm, "");
}

const withDir = await checkout();
const withoutDir = await checkout();
const protocolPath = `${withoutDir}/protocol.ts`;
const stripped = withoutCounters(await Deno.readTextFile(protocolPath));
if (/counters\.\w+\s*(\+\+|\+=)/.test(stripped)) throw new Error("counters left in protocol.ts");
await Deno.writeTextFile(protocolPath, stripped);

interface Result {
  variant: string;
  messagesPerSecond: number;
  serverCpu: number;
}

async function measure(variant: "with" | "without"): Promise<Result> {
  const dir = variant === "with" ? withDir : withoutDir;
  const table = await run(Deno.execPath(), [
    "run",
    "-A",
    "bench/run.ts",
    "--servers",
    "ours",
    "--scenarios",
    "echo-32x16",
    "--seconds",
    values.seconds,
    "--warmup",
    values.warmup,
    "--repeat",
    "1",
  ], dir);
  const rate = /\(msg\/s\) \| ([\d,]+)/.exec(table)?.[1];
  const cpu = /CPU % server \/ load generator \/ other \| (\d+)/.exec(table)?.[1];
  if (rate === undefined || cpu === undefined) throw new Error(`no result in:\n${table}`);
  const result = {
    variant,
    messagesPerSecond: Number(rate.replaceAll(",", "")),
    serverCpu: Number(cpu),
  };
  console.log(JSON.stringify(result));
  return result;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

try {
  const pairs: [Result, Result][] = [];
  for (let i = 0; i < Number(values.pairs); i++) {
    const order: ("with" | "without")[] = i % 2 === 0 ? ["with", "without"] : ["without", "with"];
    const first = await measure(order[0]);
    const second = await measure(order[1]);
    pairs.push(order[0] === "with" ? [first, second] : [second, first]);
  }
  const perCpu = (result: Result) => result.messagesPerSecond / (result.serverCpu / 100);
  const ratios = pairs.map(([a, b]) => a.messagesPerSecond / b.messagesPerSecond);
  const cpuRatios = pairs.map(([a, b]) => perCpu(a) / perCpu(b));
  console.log(JSON.stringify({
    medianWith: median(pairs.map(([a]) => a.messagesPerSecond)),
    medianWithout: median(pairs.map(([, b]) => b.messagesPerSecond)),
    pairRatios: ratios.map((ratio) => Number(ratio.toFixed(3))),
    medianPairRatio: Number(median(ratios).toFixed(3)),
    medianPairRatioPerServerCpu: Number(median(cpuRatios).toFixed(3)),
  }));
} finally {
  await Deno.remove(withDir, { recursive: true });
  await Deno.remove(withoutDir, { recursive: true });
}
