/**
 * An echo client: sends every line read from stdin as a Text message and
 * prints every message received, one per line (Binary messages as
 * `<N bytes: hex>`). At the end of stdin it waits for the replies to the
 * lines sent, closes the connection cleanly (1000) and exits; when the
 * server closes the connection first, it exits at once.
 *
 * ```sh
 * printf 'hello\nworld\n' | deno run -A examples/echo_client.ts ws://127.0.0.1:9001/
 * ```
 *
 * Exits with 0 after a clean close, 1 when the connection fails or closes
 * with an error, 2 on a usage error.
 *
 * @module
 */

import { connect } from "../client.ts";
import type { Message, StreamConnection } from "../connection.ts";

const uri = Deno.args[0];
if (uri === undefined || Deno.args.length !== 1) {
  console.error("usage: echo_client.ts URI");
  Deno.exit(2);
}

function show(message: Message): string {
  if (typeof message === "string") return message;
  const hex = Array.from(message, (byte) => byte.toString(16).padStart(2, "0")).join("");
  return `<${message.length} bytes: ${hex}>`;
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let pending = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    pending += chunk;
    let newline: number;
    while ((newline = pending.indexOf("\n")) !== -1) {
      yield pending.slice(0, newline).replace(/\r$/, "");
      pending = pending.slice(newline + 1);
    }
  }
  if (pending !== "") yield pending;
}

let ws: StreamConnection;
try {
  ws = await connect(uri);
} catch (error) {
  console.error(`cannot connect to ${uri}: ${(error as Error).message}`);
  Deno.exit(1);
}

let sent = 0;
let received = 0;
let allReceived: (() => void) | undefined;

// Prints replies as they arrive; ends when the connection closes.
const printing = (async () => {
  for await (const message of ws) {
    console.log(show(message));
    received++;
    if (received >= sent) allReceived?.();
  }
})();
printing.catch(() => {}); // handled below

// Sends stdin's lines until it ends or the connection closes (the server may close first).
const input = lines(Deno.stdin.readable);
const closed = ws.closed.then(() => undefined);
try {
  for (;;) {
    const next = await Promise.race([input.next(), closed]);
    if (next === undefined || next.done) break;
    await ws.send(next.value);
    sent++;
  }
  // Replies still in flight would be lost if we closed now.
  if (received < sent) {
    await Promise.race([new Promise<void>((resolve) => (allReceived = resolve)), ws.closed]);
  }
  await ws.close(1000);
} catch {
  // The connection closed while sending: the reason is reported below.
}
try {
  await printing;
} catch (error) {
  console.error(`connection closed: ${(error as Error).message}`);
  Deno.exit(1);
}
// A read of stdin may still be pending: exit rather than wait for it.
Deno.exit(0);
