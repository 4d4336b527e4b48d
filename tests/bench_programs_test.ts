// The benchmark's own programs work: the client driver runs its closed loop against a real
// server and reports what it counted, and the Deno.listen floor server answers a real client.
// (Speed is never asserted: `deno task bench` measures it.)

import assert from "node:assert/strict";
import { connect } from "../client.ts";
import { freePort, type ListeningScript, startListening, within } from "./_helpers.ts";

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
