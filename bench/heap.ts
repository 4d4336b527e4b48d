/**
 * Where the memory of idle connections goes: a V8 heap snapshot of this library's server before
 * and after N idle connections (`bench/loadgen idle`), aggregated by object type and divided by
 * N, beside the growth of the server's resident memory.
 *
 *   deno run -A bench/heap.ts [--servers ours,ours_deno] [--conns 10000] [--top 30]
 *
 * For each server (`ours`: the default, `tcp: "node:net"`; `ours_deno`: `tcp: "Deno.listen"`) it
 * starts `bench/servers/ours.ts --heap-snapshots DIR`, opens and closes 10 connections (one-time
 * costs), takes snapshot A (SIGUSR2; V8 collects garbage first), opens N connections that exchange
 * one 32 B message each and stay open, samples VmRSS, takes snapshot B, and prints bytes per
 * connection of B − A by object type: JS objects by constructor, closures by function name,
 * internal arrays, strings, contexts, and ArrayBuffer backing stores (`external`, grouped by
 * size). Snapshots are deleted afterwards.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  ensureLoadgen,
  freePort,
  killAll,
  loadgen,
  rssKiB,
  SERVERS,
  sleep,
  startServer,
  stop,
} from "./run.ts";

interface Snapshot {
  snapshot: {
    meta: {
      node_fields: string[];
      node_types: (string[] | string)[];
      location_fields?: string[];
    };
    node_count: number;
  };
  nodes: number[];
  strings: string[];
  locations?: number[];
}

/** Bytes and count of one kind of heap object. */
export interface Group {
  count: number;
  bytes: number;
}

/** The group a heap node belongs to: what a reader recognises (constructor, function, …). */
function groupName(type: string, name: string, size: number): string {
  switch (type) {
    case "object":
      return name;
    case "closure":
      return `closure ${name || "(anonymous)"}`;
    case "string":
    case "concatenated string":
    case "sliced string":
      return "(strings)";
    case "code":
      return "(compiled code)";
    case "number":
      return "(heap numbers)";
    case "native":
      // ArrayBuffer backing stores, outside the JS heap.
      if (name.includes("JSArrayBufferData")) return `external: ArrayBuffer data of ${size} B`;
      return `native ${name}`;
    case "array":
      return `(internal array) ${name}`;
    case "hidden":
      return `(hidden) ${name}`;
    default:
      return `(${type}) ${name}`;
  }
}

/**
 * Names for anonymous closures: `closure (anonymous) FILE:LINE`, from the snapshot's locations
 * (each closure's script and line). Keyed by node offset.
 */
function anonymousClosures(snapshot: Snapshot): Map<number, string> {
  const { meta } = snapshot.snapshot;
  const { nodes, strings, locations } = snapshot;
  const names = new Map<number, string>();
  const lf = meta.location_fields;
  if (locations === undefined || lf === undefined) return names;
  const types = meta.node_types[0] as string[];
  const nameAt = meta.node_fields.indexOf("name");
  const objectAt = lf.indexOf("object_index");
  const scriptAt = lf.indexOf("script_object_index");
  const lineAt = lf.indexOf("line");
  for (let i = 0; i < locations.length; i += lf.length) {
    const node = locations[i + objectAt];
    if (types[nodes[node]] !== "closure" || strings[nodes[node + nameAt]] !== "") continue;
    const script = strings[nodes[locations[i + scriptAt] + nameAt]] ?? "";
    const file = script.replace(/^.*\//, "") || "?";
    names.set(node, `closure (anonymous) ${file}:${locations[i + lineAt] + 1}`);
  }
  return names;
}

/** Self sizes of a `.heapsnapshot` file's nodes, summed by group. */
export function aggregate(snapshot: Snapshot): Map<string, Group> {
  const { meta } = snapshot.snapshot;
  const fields = meta.node_fields.length;
  const typeAt = meta.node_fields.indexOf("type");
  const nameAt = meta.node_fields.indexOf("name");
  const sizeAt = meta.node_fields.indexOf("self_size");
  const types = meta.node_types[0] as string[];
  const { nodes, strings } = snapshot;
  const where = anonymousClosures(snapshot);
  const groups = new Map<string, Group>();
  for (let i = 0; i < nodes.length; i += fields) {
    const size = nodes[i + sizeAt];
    const key = where.get(i) ??
      groupName(types[nodes[i + typeAt]], strings[nodes[i + nameAt]], size);
    const group = groups.get(key);
    if (group === undefined) groups.set(key, { count: 1, bytes: size });
    else {
      group.count++;
      group.bytes += size;
    }
  }
  return groups;
}

/** What grew from `before` to `after`, per connection, largest first. */
export function perConnection(
  before: Map<string, Group>,
  after: Map<string, Group>,
  conns: number,
): { name: string; count: number; bytes: number }[] {
  const rows = [];
  for (const [name, group] of after) {
    const old = before.get(name) ?? { count: 0, bytes: 0 };
    rows.push({
      name,
      count: (group.count - old.count) / conns,
      bytes: (group.bytes - old.bytes) / conns,
    });
  }
  for (const [name, group] of before) {
    if (!after.has(name)) {
      rows.push({ name, count: -group.count / conns, bytes: -group.bytes / conns });
    }
  }
  return rows.sort((a, b) => b.bytes - a.bytes);
}

async function readSnapshot(path: string): Promise<Map<string, Group>> {
  const groups = aggregate(JSON.parse(await Deno.readTextFile(path)) as Snapshot);
  await Deno.remove(path);
  return groups;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      servers: { type: "string", default: "ours,ours_deno" },
      conns: { type: "string", default: "10000" },
      top: { type: "string", default: "30" },
    },
  });
  const conns = Number(values.conns);
  const top = Number(values.top);
  await ensureLoadgen();
  const dir = await Deno.makeTempDir({ prefix: "heap-" });
  try {
    for (const name of values.servers.split(",")) {
      const server = SERVERS.find((s) => s.name === name);
      if (server === undefined || !["ours", "ours_deno"].includes(name)) {
        throw new Error(`--servers takes ours and ours_deno, got ${name}`);
      }
      const port = freePort();
      let wrote: (path: string) => void = () => {};
      const usage: Deno.MemoryUsage[] = [];
      const running = await startServer(server, port, false, undefined, (line) => {
        if (line.startsWith("heap snapshot: ")) wrote(line.slice("heap snapshot: ".length));
        if (line.startsWith("memory usage: ")) usage.push(JSON.parse(line.slice(14)));
      }, ["--heap-snapshots", dir]);
      const snapshot = (): Promise<string> =>
        new Promise((resolve) => {
          wrote = resolve;
          Deno.kill(running.child.pid, "SIGUSR2");
        });
      try {
        const common = ["--port", `${port}`];
        await loadgen(["idle", "--conns", "10", "--hold", "0", ...common], 30);
        await sleep(200);
        const pathA = await snapshot();
        const rssBefore = rssKiB(running.child.pid);
        let rssAfter = NaN;
        let pathB = "";
        // The snapshot is taken (synchronously, in the server) well within the hold.
        await loadgen(["idle", "--conns", `${conns}`, "--hold", "3", ...common], 120, async () => {
          await sleep(500);
          rssAfter = rssKiB(running.child.pid);
          pathB = await snapshot();
        });
        const rows = perConnection(await readSnapshot(pathA), await readSnapshot(pathB), conns);
        const heap = rows.filter((r) => !r.name.startsWith("external")).reduce(
          (sum, r) => sum + r.bytes,
          0,
        );
        const external = rows.filter((r) => r.name.startsWith("external")).reduce(
          (sum, r) => sum + r.bytes,
          0,
        );
        const rss = ((rssAfter - rssBefore) * 1024) / conns;
        console.log(`\n${server.title}, ${conns} idle connections (bytes per connection)\n`);
        console.log("| object | count | bytes |\n| --- | ---: | ---: |");
        for (const row of rows.filter((r) => Math.abs(r.bytes) >= 1).slice(0, top)) {
          console.log(`| ${row.name} | ${row.count.toFixed(2)} | ${row.bytes.toFixed(0)} |`);
        }
        console.log(`| **JS heap, total** | | **${heap.toFixed(0)}** |`);
        console.log(`| **ArrayBuffer data, total** | | **${external.toFixed(0)}** |`);
        const grew = (key: keyof Deno.MemoryUsage) => (usage[1][key] - usage[0][key]) / conns;
        console.log(
          `| **V8 heap in use, before collecting garbage** | | **${
            grew("heapUsed").toFixed(0)
          }** |`,
        );
        console.log(`| **V8 heap committed** | | **${grew("heapTotal").toFixed(0)}** |`);
        console.log(`| **RSS growth** | | **${rss.toFixed(0)}** |`);
      } finally {
        await stop(running.child);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (error) {
    console.error(`heap.ts: ${error instanceof Error ? error.message : error}`);
    Deno.exitCode = 1;
  } finally {
    killAll();
  }
}
