/**
 * The chat demo: a chat server and its web page on one port, with optional
 * simulated clients.
 *
 * ```sh
 * deno run -A examples/chat/main.ts [--port 8000] [--hostname 127.0.0.1]
 *   [--bots N] [--rate R] [--seconds S]
 * ```
 *
 * Prints the URL to open, then a status line (connections, messages/s,
 * bytes/s out, before compression and on the wire, from `server.stats()`,
 * the slowest client's buffered amount) updated in place when
 * standard output is a terminal, every 5 s otherwise. `--bots N` connects N
 * clients that each send R messages per second (default 0.5) and check that
 * they receive every message broadcast while they are in. The demo stops on
 * Ctrl-C, SIGTERM or after `--seconds S`, then prints (when bots ran)
 *
 * ```text
 * demo: N clients, M messages delivered, 0 lost
 * ```
 *
 * where M counts the chat messages the bots received and "lost" the ones
 * they should have received but didn't. Exit status: 0, or 1 when a message
 * was lost or out of order, 2 for bad usage.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Bot } from "./bots.ts";
import { CHAT_PATH, ChatServer } from "./chat_server.ts";
import { State } from "../../protocol.ts";

const USAGE = `usage: deno run -A examples/chat/main.ts [options]

options:
  --port PORT          port of the page and the WebSocket (default 8000, 0 picks a free one)
  --hostname HOST      interface to listen on (default 127.0.0.1)
  --bots N             connect N simulated clients (default 0)
  --rate R             messages per second each simulated client sends (default 0.5)
  --seconds S          stop after S seconds and print a summary (default: run until Ctrl-C)
  -h, --help           show this help`;

const encoder = new TextEncoder();
const write = (text: string): void => {
  Deno.stdout.writeSync(encoder.encode(text));
};

/** `count` and `noun`, plural unless the count is 1: "1 client", "3 clients". */
function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function usageError(message: string): never {
  console.error(`${message}\n${USAGE}`);
  Deno.exit(2);
}

function number(
  name: string,
  value: string,
  check: (n: number) => boolean,
  expected: string,
): number {
  const n = Number(value);
  if (value.trim() === "" || !check(n)) {
    usageError(`invalid --${name} ${value}: expected ${expected}`);
  }
  return n;
}

function formatBytes(bytes: number): string {
  if (bytes < 1000) return `${Math.round(bytes)} B`;
  if (bytes < 1_000_000) return `${(bytes / 1000).toFixed(1)} kB`;
  return `${(bytes / 1_000_000).toFixed(1)} MB`;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? 0 : sorted[Math.floor(sorted.length / 2)];
}

let values: {
  port: string;
  hostname: string;
  bots: string;
  rate: string;
  seconds?: string;
  help?: boolean;
};
try {
  ({ values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string", short: "p", default: "8000" },
      hostname: { type: "string", short: "H", default: "127.0.0.1" },
      bots: { type: "string", default: "0" },
      rate: { type: "string", default: "0.5" },
      seconds: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  }));
} catch (error) {
  usageError((error as Error).message);
}
if (values.help) {
  console.log(USAGE);
  Deno.exit(0);
}
const port = number(
  "port",
  values.port,
  (n) => Number.isInteger(n) && n >= 0 && n <= 65535,
  "an integer from 0 to 65535",
);
const botCount = number(
  "bots",
  values.bots,
  (n) => Number.isInteger(n) && n >= 0 && n <= 10_000,
  "an integer from 0 to 10000",
);
const rate = number(
  "rate",
  values.rate,
  (n) => n > 0 && n <= 1000,
  "a number above 0, at most 1000",
);
const seconds = values.seconds === undefined
  ? undefined
  : number("seconds", values.seconds, (n) => n > 0 && n <= 86_400, "a number above 0");

const page = await (await fetch(new URL("./index.html", import.meta.url))).text();
let chat: ChatServer;
try {
  chat = new ChatServer({ hostname: values.hostname, port, page });
} catch (error) {
  console.error(
    `cannot listen on ${values.hostname}:${port}: ${(error as Error).message} (try another --port)`,
  );
  Deno.exit(1);
}

const wildcard = values.hostname === "0.0.0.0" || values.hostname === "::";
const host = wildcard ? "localhost" : values.hostname;
const authority = `${host.includes(":") ? `[${host}]` : host}:${chat.port}`;
console.log(`chat demo: open http://${authority}/ in a browser`);
console.log(`WebSocket endpoint: ws://${authority}${CHAT_PATH}`);

const bots: Bot[] = [];
if (botCount > 0) {
  const url = `ws://${authority.replace(/^localhost:/, "127.0.0.1:")}${CHAT_PATH}`;
  const interval = 1000 / rate;
  try {
    for (let start = 0; start < botCount; start += 100) {
      const batch = await Promise.all(
        Array.from(
          { length: Math.min(100, botCount - start) },
          (_, i) => Bot.join(url, `bot-${start + i + 1}`),
        ),
      );
      bots.push(...batch);
    }
  } catch (error) {
    console.error(`cannot connect the simulated clients: ${(error as Error).message}`);
    await Promise.all(bots.map((bot) => bot.close()));
    await chat.close();
    Deno.exit(1);
  }
  // Spread the bots over one interval so the chat flows at a steady rate.
  bots.forEach((bot, i) => bot.start(interval, (interval * (i + 1)) / botCount));
  console.log(
    `${plural(botCount, "simulated client")} chatting, ${plural(rate, "message")}/s each`,
  );
}
console.log(
  seconds === undefined ? "press Ctrl-C to stop" : `stopping after ${seconds} s`,
);

// ---- Status line ----

const tty = Deno.stdout.isTerminal();
// Rates are averaged over the last 2 s (the last 5 s without a terminal).
const rateWindow = tty ? 2000 : 5000;
const samples = [{ time: performance.now(), ...chat.counters() }];
let statusShown = false;
function status(): void {
  const now = { time: performance.now(), ...chat.counters() };
  samples.push(now);
  while (samples.length > 2 && now.time - samples[1].time >= rateWindow) samples.shift();
  const first = samples[0];
  const elapsed = Math.max(1e-3, (now.time - first.time) / 1000);
  const line =
    `${plural(now.connections, "connection")} | ${
      ((now.messagesIn - first.messagesIn) / elapsed).toFixed(1)
    } msg/s | ${formatBytes((now.bytesOut - first.bytesOut) / elapsed)}/s out (${
      formatBytes((now.wireBytesOut - first.wireBytesOut) / elapsed)
    }/s on the wire) | ` +
    `slowest client buffers ${formatBytes(now.slowestBufferedAmount)}`;
  if (tty) {
    write(`\r\x1b[2K${line}`);
    statusShown = true;
  } else {
    console.log(line);
  }
}
const statusTimer = setInterval(status, tty ? 500 : 5000);

// ---- Shutdown ----

async function until(condition: () => boolean, ms: number): Promise<void> {
  const deadline = performance.now() + ms;
  while (!condition() && performance.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

let stopping: Promise<never> | undefined;

async function shutdown(): Promise<never> {
  clearInterval(statusTimer);
  if (statusShown) write("\r\x1b[2K");
  // Freeze the chat, let the bots catch up with the last message (bounded),
  // then count what each should have received.
  await Promise.all(bots.map((bot) => bot.stop()));
  const sent = bots.reduce((sum, bot) => sum + bot.sent, 0);
  await until(() => chat.counters().messagesIn >= sent, 1000); // in flight to the server
  chat.stopChat();
  const finalSeq = chat.seq;
  await until(
    () => bots.every((bot) => bot.ws.state !== State.OPEN || bot.lastSeq >= finalSeq),
    3000,
  );
  const reports = bots.map((bot) => bot.report(finalSeq));
  const latencies = bots.flatMap((bot) => bot.latencies);
  await Promise.all(bots.map((bot) => bot.close()));
  await chat.close();

  const delivered = reports.reduce((sum, report) => sum + report.received, 0);
  const lost = reports.reduce((sum, report) => sum + report.lost, 0);
  const outOfOrder = reports.reduce((sum, report) => sum + report.outOfOrder, 0);
  if (bots.length > 0 || seconds !== undefined) {
    if (latencies.length > 0) {
      console.log(
        `round trip of the bots' own messages: median ${median(latencies).toFixed(1)} ms, ` +
          `max ${Math.max(...latencies).toFixed(1)} ms`,
      );
    }
    if (outOfOrder > 0) console.log(`demo: ${plural(outOfOrder, "message")} received out of order`);
    console.log(
      `demo: ${plural(bots.length, "client")}, ${
        plural(delivered, "message")
      } delivered, ${lost} lost`,
    );
  } else {
    console.log("demo: stopped");
  }
  Deno.exit(lost === 0 && outOfOrder === 0 ? 0 : 1);
}

function stop(): void {
  if (stopping !== undefined) {
    Deno.exit(130); // a second Ctrl-C: don't wait
  }
  stopping = shutdown();
}
Deno.addSignalListener("SIGINT", stop);
if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", stop);
if (seconds !== undefined) setTimeout(stop, seconds * 1000);
