/**
 * Runs the Autobahn|Testsuite's fuzzing server cases with our client: for
 * every case it connects, echoes every message back as it came, and finally
 * asks the suite to write its report.
 *
 * ```sh
 * wstest -m fuzzingserver -s fuzzingserver.json     # the suite, listening on :9001
 * deno run -A examples/autobahn_client.ts --url ws://127.0.0.1:9001 [--agent denows] [--cases 1-517]
 * ```
 *
 * Settings: messages up to 16 MiB (the largest the suite sends), no
 * keepalive pings, compression offered (the suite's 12.x and 13.x cases).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { connect } from "../client.ts";
import { ConnectionClosed } from "../errors.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    url: { type: "string", default: "ws://127.0.0.1:9001" },
    agent: { type: "string", default: "denows" },
    cases: { type: "string" },
  },
});
const base = values.url.replace(/\/$/, "");
const agent = encodeURIComponent(values.agent);
const options = { maxSize: 16 * 1024 * 1024, pingInterval: null, openTimeout: 30_000 };

async function caseCount(): Promise<number> {
  const ws = await connect(`${base}/getCaseCount`, options);
  const count = Number(await ws.recv());
  await ws.close();
  return count;
}

async function runCase(index: number): Promise<void> {
  let ws;
  try {
    ws = await connect(`${base}/runCase?case=${index}&agent=${agent}`, options);
  } catch (error) {
    console.log(`case ${index}: handshake failed: ${(error as Error).message}`);
    return;
  }
  try {
    for await (const message of ws) await ws.send(message);
  } catch (error) {
    // Cases that end with a protocol error are expected to: the suite grades the close.
    if (!(error instanceof ConnectionClosed)) throw error;
  }
}

const count = await caseCount();
let first = 1, last = count;
if (values.cases !== undefined) {
  const [from, to] = values.cases.split("-").map(Number);
  first = from;
  last = to ?? from;
}
for (let index = first; index <= last; index++) {
  await runCase(index);
  if (index % 50 === 0) console.log(`${index} / ${count} cases`);
}
const ws = await connect(`${base}/updateReports?agent=${agent}`, options);
await ws.closed;
console.log(`ran cases ${first}-${last} of ${count}; report updated for agent ${values.agent}`);
