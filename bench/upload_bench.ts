/**
 * Memory of a large upload received with `recvStreaming()`: a server (a
 * child process, so that only its memory is measured) writes one message
 * part by part to a file as it arrives; this process sends it in fragments
 * of `--fragment` KiB from one reused buffer, with our client.
 *
 *   deno task bench:upload [--mib 1024] [--fragment 1024] [--deflate]
 *
 * Prints one JSON line: the message size, the time and throughput, and the
 * server's resident memory before the upload and at its peak (`VmRSS`,
 * `VmHWM` from `/proc/self/status`; Linux only). With `--deflate` the
 * message is compressed (the fragments are random bytes, so compression
 * saves nothing and the server inflates every frame). Keepalive is off on
 * both sides: on a loaded machine, compressing 1 MiB frames of random bytes
 * can keep the client's output full for longer than its ping timeout.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { connect } from "../client.ts";
import { serve } from "../server.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    mib: { type: "string", default: "1024" },
    fragment: { type: "string", default: "1024" },
    deflate: { type: "boolean", default: false },
    server: { type: "boolean", default: false },
    out: { type: "string" },
  },
});

/** Resident memory now and at its peak, in MiB, from /proc/self/status. */
function memory(): { rssMiB: number; peakMiB: number } {
  const status = Deno.readTextFileSync("/proc/self/status");
  const kib = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)![1]);
  return { rssMiB: kib("VmRSS") / 1024, peakMiB: kib("VmHWM") / 1024 };
}

if (values.server) {
  // The server: one connection, one message streamed to `--out`, then a report back as Text.
  const server = serve(async (ws) => {
    const before = memory();
    using file = await Deno.open(values.out!, { write: true, create: true, truncate: true });
    let bytes = 0;
    let parts = 0;
    for await (const part of ws.recvStreaming({ maxSize: Infinity })) {
      const data = part as Uint8Array;
      for (let written = 0; written < data.length;) {
        written += await file.write(data.subarray(written));
      }
      bytes += data.length;
      parts++;
    }
    await ws.send(JSON.stringify({ bytes, parts, before, after: memory() }));
  }, {
    hostname: "127.0.0.1",
    port: 0,
    compression: values.deflate ? "deflate" : null,
    pingInterval: null,
  });
  console.log(`listening on ws://127.0.0.1:${server.port}`);
} else {
  const total = Number(values.mib) * 1024 * 1024;
  const fragment = new Uint8Array(Number(values.fragment) * 1024);
  crypto.getRandomValues(fragment.subarray(0, Math.min(fragment.length, 65536)));
  for (let i = 65536; i < fragment.length; i += 65536) {
    fragment.copyWithin(i, 0, Math.min(65536, fragment.length - i));
  }
  const out = await Deno.makeTempFile({ prefix: "denows-upload-" });
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", import.meta.filename!, "--server", "--out", out].concat(
      values.deflate ? ["--deflate"] : [],
    ),
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let output = "";
    let port: number | undefined;
    while (port === undefined) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`the server did not start: ${output}`);
      output += value;
      port = Number(/listening on ws:\/\/[^:]+:(\d+)/.exec(output)?.[1]) || undefined;
    }
    const ws = await connect(`ws://127.0.0.1:${port}/`, {
      compression: values.deflate ? "deflate" : null,
      pingInterval: null,
    });
    const started = performance.now();
    await ws.send((function* () {
      for (let sent = 0; sent < total; sent += fragment.length) {
        yield fragment.subarray(0, Math.min(fragment.length, total - sent));
      }
    })());
    const report = JSON.parse(await ws.recv() as string);
    const seconds = (performance.now() - started) / 1000;
    await ws.close();
    console.log(JSON.stringify({
      mib: total / 1024 / 1024,
      fragmentKiB: fragment.length / 1024,
      deflate: values.deflate,
      parts: report.parts,
      seconds: Number(seconds.toFixed(2)),
      mbPerSecond: Number((total / 1e6 / seconds).toFixed(1)),
      serverRssBeforeMiB: Math.round(report.before.rssMiB),
      serverRssPeakMiB: Math.round(report.after.peakMiB),
      written: (await Deno.stat(out)).size === total,
    }));
    await reader.cancel();
  } finally {
    try {
      child.kill("SIGTERM");
    } catch {
      // already gone
    }
    await child.status;
    await Deno.remove(out);
  }
}
