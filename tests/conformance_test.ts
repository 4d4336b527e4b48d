/**
 * Conformance with the behaviours checked by the Autobahn|Testsuite, over
 * real sockets: `tests/_autobahn.ts` plays each case as the suite's fuzzing
 * client against `serve()` running an echo handler (as the example echo
 * server does), and as the suite's fuzzing server against a `connect()`
 * client that echoes every message (as a suite client runner does).
 *
 * Each test runs one category in one role and lists every case that the
 * suite would not grade OK (or INFORMATIONAL): NON-STRICT fails too.
 */

import assert from "node:assert/strict";
import { connect, serve } from "../mod.ts";
import {
  type Case,
  type CaseResult,
  catalogue,
  fuzzClient,
  fuzzServer,
  passed,
  utf8Vectors,
} from "./_autobahn.ts";
import { type ListeningScript, startListening } from "./_helpers.ts";

/** Largest message of the suite (case 9.1.6: 16 MiB). */
const MAX_SIZE = 16 * 1024 * 1024;

const CASES = catalogue({
  maxSize: MAX_SIZE,
  // The suite sends 1000 messages in 9.7.x/9.8.x and in each compression case.
  repeats: 100,
  compressionSizes: [1, 4, 10, 11, 17],
  compressionCount: 10,
});

const SETTINGS = { second: 200, serverDropTimeout: 1000 };

function failures(cases: Case[], results: CaseResult[]): string[] {
  const out: string[] = [];
  results.forEach((result, i) => {
    if (passed(cases[i], result)) return;
    out.push(
      `${result.id} ${result.behavior}/${result.behaviorClose}: ${result.result} ` +
        `${result.resultClose} (received ${result.received}, close code ` +
        `${result.remoteCloseCode ?? "none"}) — ${cases[i].description}`,
    );
  });
  return out;
}

async function fuzzEchoServer(cases: Case[]): Promise<CaseResult[]> {
  const server = serve(async (ws) => {
    for await (const message of ws) await ws.send(message);
  }, { hostname: "127.0.0.1", port: 0, maxSize: MAX_SIZE, pingInterval: null });
  try {
    return await fuzzServer("127.0.0.1", server.port, cases, SETTINGS);
  } finally {
    await server.close();
  }
}

async function echoClient(url: string): Promise<void> {
  const ws = await connect(url, { maxSize: MAX_SIZE, pingInterval: null });
  try {
    for await (const message of ws) await ws.send(message);
  } catch {
    // Closed with an error code: the fuzzing server grades how.
  }
  await ws.closed;
}

const CATEGORIES: [string, string][] = [
  ["1", "framing"],
  ["2", "pings and pongs"],
  ["3", "reserved bits"],
  ["4", "reserved opcodes"],
  ["5", "fragmentation"],
  ["6", "UTF-8 handling"],
  ["7", "close handling"],
  ["9", "limits and performance"],
  ["10", "auto-fragmentation"],
  ["12", "permessage-deflate, default offer"],
  ["13", "permessage-deflate parameters"],
];

for (const [category, name] of CATEGORIES) {
  const cases = CASES[category];
  Deno.test(`conformance: server passes Autobahn category ${category} (${name})`, async () => {
    const results = await fuzzEchoServer(cases);
    assert.deepEqual(failures(cases, results), []);
  });
  Deno.test(`conformance: client passes Autobahn category ${category} (${name})`, async () => {
    const results = await fuzzClient(echoClient, cases, SETTINGS);
    assert.deepEqual(failures(cases, results), []);
  });
}

/** Starts examples/echo_server.ts as the suite's runs start it; resolves once it listens. */
function startExampleEchoServer(tcp: string): Promise<ListeningScript> {
  return startListening(new URL("../examples/echo_server.ts", import.meta.url).pathname, [
    ...["--port", "0", "--max-size", String(MAX_SIZE), "--tcp", tcp],
  ]);
}

for (const tcp of ["Deno.listen", "node:net"]) {
  Deno.test(`conformance: examples/echo_server.ts --max-size 16777216 --tcp ${tcp} passes every category`, async () => {
    const server = await startExampleEchoServer(tcp);
    try {
      const notPassing: string[] = [];
      for (const [category] of CATEGORIES) {
        const cases = CASES[category];
        notPassing.push(
          ...failures(cases, await fuzzServer("127.0.0.1", server.port, cases, SETTINGS)),
        );
      }
      assert.deepEqual(notPassing, []);
    } finally {
      await server.stop();
    }
  });
}

Deno.test("conformance: the UTF-8 vectors are graded as a strict decoder reads them", () => {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const disagreements = utf8Vectors().flatMap(([title, vectors]) =>
    vectors.flatMap(([valid, bytes], i) => {
      let decodes = true;
      try {
        decoder.decode(bytes);
      } catch {
        decodes = false;
      }
      return decodes === valid ? [] : [`${title} #${i + 1}`];
    })
  );
  assert.deepEqual(disagreements, []);
});

Deno.test("conformance: the catalogue numbers the UTF-8 cases as the suite does", () => {
  const ids = CASES["6"].map((testCase) => testCase.id);
  assert.deepEqual(
    [ids.length, ids.at(-1), ids.filter((id) => id.startsWith("6.22.")).length],
    [145, "6.23.7", 34],
  );
});
