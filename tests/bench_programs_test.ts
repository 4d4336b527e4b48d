// The benchmark's own programs work: the client driver runs its closed loop against a real
// server and reports what it counted, the Deno.listen floor server answers a real client, the
// load generator's crowd scenario holds its clients and times broadcasts, heap.ts counts, and
// deflate_memory.ts negotiates the setups it names.
// (Speed is never asserted: `deno task bench` measures it.)

import assert from "node:assert/strict";
import { writeHeapSnapshot } from "node:v8";
import { aggregate, perConnection } from "../bench/heap.ts";
import { combineShards, crowdShards, crowdUnavailable, ensureLoadgen } from "../bench/run.ts";
import { connect } from "../client.ts";
import {
  commandSucceeds,
  freePort,
  type ListeningScript,
  startListening,
  within,
} from "./_helpers.ts";

const BENCH = new URL("../bench/", import.meta.url).pathname;

function startServer(file: string): Promise<ListeningScript> {
  return startListening(`${BENCH}${file}`, ["--port", `${freePort()}`]);
}

async function runClient(
  file: string,
  port: number,
  args: string[],
): Promise<Record<string, number>> {
  const { success, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${BENCH}clients/${file}`,
      ...["--url", `ws://127.0.0.1:${port}/echo`, ...args, "--warmup", "0.1", "--seconds", "0.3"],
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(success, `${file} failed: ${new TextDecoder().decode(stderr)}`);
  return JSON.parse(new TextDecoder().decode(stdout).trim().split("\n").pop()!);
}

for (const client of ["ours.ts", "deno_builtin.ts"]) {
  Deno.test(`bench: the ${client} client echoes through the server and counts every echo`, async () => {
    await using server = await startServer("servers/ours.ts");
    for (
      const args of [["--conns", "4", "--inflight", "4", "--size", "32"], [
        "--conns",
        "2",
        "--inflight",
        "2",
        "--size",
        "70000",
      ]]
    ) {
      const result = await runClient(client, server.port, args);
      assert.ok(result.messages > 0, `no echoes counted: ${JSON.stringify(result)}`);
      assert.equal(result.errors, 0);
      assert.equal(result.closed, 0);
      assert.ok(result.p50_us > 0 && result.p99_us >= result.p50_us, JSON.stringify(result));
      const size = Number(args[5]);
      // MB/s is messages × size over the same window (both rounded in the output).
      const expected = (result.msgs_per_s * size) / 1e6;
      assert.ok(
        Math.abs(result.mb_per_s - expected) <= 0.1 + expected / 100,
        JSON.stringify(result),
      );
    }
  });
}

Deno.test("bench: the client driver refuses an address other than 127.0.0.1", async () => {
  const { success, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${BENCH}clients/ours.ts`, "--url", "ws://example.com/echo"],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(success, false);
  assert.match(new TextDecoder().decode(stderr), /--url must be ws:\/\/127\.0\.0\.1:PORT/);
});

Deno.test("bench: the Deno.listen floor server answers the handshake, echoes and closes", async () => {
  await using server = await startServer("servers/deno_floor.ts");
  const ws = await connect(`ws://127.0.0.1:${server.port}/`, {
    compression: null,
    pingInterval: null,
  });
  await ws.send("hello");
  assert.equal(await within(ws.recv(), 5000, "echo"), "hello");
  await ws.send(new Uint8Array([1, 2, 3]));
  assert.deepEqual(await within(ws.recv(), 5000, "binary echo"), new Uint8Array([1, 2, 3]));
  await within(ws.close(1000, "done"), 5000, "close");
  // The floor server sends the close frame back as it came.
  assert.equal((await ws.closed).code, 1000);
});

// A class that only the heap test creates, so that its count in a snapshot is known exactly.
class BenchHeapMarker {
  constructor(readonly n: number) {}
}

Deno.test("bench: heap.ts counts a heap snapshot's objects by constructor", async () => {
  const markers = Array.from({ length: 1000 }, (_, i) => new BenchHeapMarker(i));
  const dir = await Deno.makeTempDir();
  try {
    const path = writeHeapSnapshot(`${dir}/test.heapsnapshot`);
    const groups = aggregate(JSON.parse(await Deno.readTextFile(path)));
    assert.equal(groups.get("BenchHeapMarker")?.count, markers.length);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bench: heap.ts reports per connection what grew between two snapshots", () => {
  const before = new Map([["A", { count: 10, bytes: 100 }], ["Gone", { count: 2, bytes: 40 }]]);
  const after = new Map([["A", { count: 30, bytes: 500 }], ["B", { count: 10, bytes: 80 }]]);
  assert.deepEqual(perConnection(before, after, 10), [
    { name: "A", count: 2, bytes: 40 },
    { name: "B", count: 1, bytes: 8 },
    { name: "Gone", count: -0.2, bytes: -4 },
  ]);
});

Deno.test({
  name: "bench: the load generator's crowd scenario opens every client and times each broadcast",
  ignore: !(await commandSucceeds("gcc", ["--version"])),
  async fn() {
    await ensureLoadgen();
    await using server = await startServer("servers/ours.ts");
    const { success, stdout, stderr } = await new Deno.Command(`${BENCH}loadgen`, {
      args: [
        ...["crowd", "--port", `${server.port}`, "--conns", "40", "--sources", "2"],
        ...["--hold", "0", "--fanout", "3"],
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const errors = new TextDecoder().decode(stderr);
    assert.ok(success, errors);
    assert.match(errors, /^loadgen: crowd: ready \(40 connections open, \d+ handshakes\/s\)$/m);
    const result = JSON.parse(new TextDecoder().decode(stdout));
    assert.deepEqual(
      [result.conns, result.sources, result.path, result.fanout_ms.length],
      [40, 2, "/broadcast", 3],
    );
    assert.ok(result.handshakes_per_s > 0 && result.fanout_median_ms > 0, JSON.stringify(result));
  },
});

Deno.test({
  name: "bench: the load generator's gated crowd waits for a go line before each step",
  ignore: !(await commandSucceeds("gcc", ["--version"])),
  async fn() {
    await ensureLoadgen();
    await using server = await startServer("servers/ours.ts");
    const child = new Deno.Command(`${BENCH}loadgen`, {
      args: [
        ...["crowd", "--port", `${server.port}`, "--conns", "20", "--sources", "2"],
        ...["--source-offset", "3", "--fanout", "2", "--go-stdin", "--timeout", "30"],
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stdin = child.stdin.getWriter();
    const lines: string[] = [];
    // Answers each wait with one go line, so the steps run one at a time, in order.
    for await (
      const line of child.stderr.pipeThrough(new TextDecoderStream()).pipeThrough(
        new TransformStream<string, string>({
          transform(chunk, controller) {
            for (const line of chunk.split("\n")) if (line) controller.enqueue(line);
          },
        }),
      )
    ) {
      lines.push(line.replace(/\d+ handshakes\/s/, "N handshakes/s"));
      if (line.startsWith("loadgen: crowd: waiting for go")) {
        await stdin.write(new TextEncoder().encode("go\n"));
      }
    }
    await stdin.close();
    const { success } = await child.status;
    const result = JSON.parse(
      new TextDecoder().decode(await new Response(child.stdout).arrayBuffer()),
    );
    assert.ok(success, lines.join("\n"));
    assert.deepEqual(lines, [
      "loadgen: crowd: waiting for go (connect)",
      "loadgen: crowd: ready (20 connections open, N handshakes/s)",
      "loadgen: crowd: waiting for go (sync)",
      "loadgen: crowd: waiting for go (broadcast)",
      "loadgen: crowd: waiting for go (broadcast)",
    ]);
    assert.deepEqual(
      [result.source_offset, result.round_sent_ns.length, result.round_last_ns.length],
      [3, 2, 2],
    );
    // Each step's times follow the one before it.
    const times = [result.connect_start_ns, result.connected_ns];
    for (let round = 0; round < 2; round++) {
      times.push(result.round_sent_ns[round], result.round_last_ns[round]);
    }
    assert.deepEqual(times, [...times].sort((a, b) => a - b), JSON.stringify(result));
  },
});

Deno.test("bench: the crowd is split over as few server processes as the file limit allows", () => {
  assert.deepEqual(crowdShards(100_000, 1_048_576), [100_000]);
  assert.deepEqual(crowdShards(100_000, Infinity), [100_000]);
  assert.deepEqual(crowdShards(100_000, NaN), [100_000]);
  assert.deepEqual(crowdShards(100_000, 20_000), [16_667, 16_667, 16_667, 16_667, 16_666, 16_666]);
  assert.deepEqual(crowdShards(19_936, 20_000), [19_936]);
  assert.deepEqual(crowdShards(19_937, 20_000), [9_969, 9_968]);
});

Deno.test("bench: a crowd needing too many server processes is skipped with what the machine needs", () => {
  assert.equal(crowdUnavailable(crowdShards(1_000_000, 20_000), 20_000), undefined);
  assert.match(
    crowdUnavailable(crowdShards(1_000_000, 1_024), 1_024) ?? "",
    /^processes started here may open 1024 files, so 1000000 connections would take 1042 server processes, more than the 64 .*open-files limit of at least 1000064/,
  );
});

Deno.test("bench: shard timings combine from the first start to the last finish of all", () => {
  const shard = (start: number, connected: number, sent: number[], last: number[]) => ({
    connect_start_ns: start,
    connected_ns: connected,
    round_sent_ns: sent,
    round_last_ns: last,
  });
  assert.deepEqual(
    combineShards(3000, [
      shard(1e9, 1.5e9, [5e9, 7e9], [5.1e9, 7.05e9]),
      shard(1.1e9, 2e9, [5.002e9, 7.001e9], [5.2e9, 7.03e9]),
    ]),
    { handshakesPerSecond: 3000, fanoutMs: [200, 50] },
  );
});

Deno.test("bench: deflate_memory.ts negotiates each permessage-deflate setup it names", async () => {
  const { success, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${BENCH}deflate_memory.ts`, "--conns", "5", "--repeat", "1"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(success, new TextDecoder().decode(stderr));
  const last = new TextDecoder().decode(stdout).trim().split("\n").at(-1) ?? "";
  const { rows } = JSON.parse(last) as {
    rows: { negotiated: string; extensions: string; server: number; client: number }[];
  };
  assert.deepEqual(rows.map(({ negotiated, extensions }) => [negotiated, extensions]), [
    ["no compression", "none"],
    ["context takeover, windows 15", "permessage-deflate"],
    [
      "context takeover, windows 12",
      "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
    ],
    [
      "the defaults (server_no_context_takeover; client_max_window_bits=12)",
      "permessage-deflate; server_no_context_takeover; client_max_window_bits=12",
    ],
    [
      "no context takeover both ways",
      "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    ],
  ]);
  assert.deepEqual(
    rows.map(({ server, client }) => [Number.isFinite(server), Number.isFinite(client)]),
    rows.map(() => [true, true]),
  );
});
