/**
 * An interactive WebSocket client for the terminal, like
 * `python -m websockets`:
 *
 * ```sh
 * deno run -A jsr:@denows/websockets/cli ws://127.0.0.1:8765/
 * ```
 *
 * It prints `Connected to ws://…`, sends each line you type as a Text
 * message, prints what arrives (`< text`, binary as `< (binary) N bytes: hex…`),
 * and on Ctrl-D closes cleanly and prints the close code and reason.
 * `/ping` measures the round-trip time; `/close [code] [reason]` closes.
 *
 * Options: `--header "Name: value"` (repeatable), `--subprotocol NAME`
 * (repeatable), `--origin URL`, `--no-compression`, `--max-size BYTES`,
 * `--proxy URL` (`http://`, `https://`, `socks5://`, `socks5h://`; by
 * default the proxy comes from `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY`
 * and `NO_PROXY`, as for `connect()`).
 *
 * Exit status: 0 after a normal close, 1 when the connection fails or is
 * closed abnormally, 2 for bad usage or a bad URI.
 *
 * @example
 * ```ts ignore
 * import { main } from "@denows/websockets/cli";
 * Deno.exit(await main(["ws://127.0.0.1:8765/"]));
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { connect, type ConnectOptions } from "./client.ts";
import type { StreamConnection } from "./stream_connection.ts";
import {
  ConnectionClosed,
  ConnectionClosedOK,
  InvalidHandshake,
  InvalidProxy,
  InvalidStatus,
  InvalidURI,
} from "./errors.ts";
import { type Close, CloseCode } from "./frames.ts";

const USAGE = `usage: websockets [options] ws[s]://host[:port][/path]

options:
  --header "Name: value"   add a request header (repeatable)
  --subprotocol NAME       offer a subprotocol (repeatable)
  --origin URL             send an Origin header
  --no-compression         don't offer permessage-deflate
  --max-size BYTES         largest incoming message (default 1048576)
  --proxy URL              connect through this proxy: http://, https://,
                           socks5:// or socks5h://[user:pass@]host:port
                           (default: from HTTPS_PROXY / HTTP_PROXY /
                           ALL_PROXY, except hosts in NO_PROXY)
  -h, --help               show this help

commands while connected:
  /ping                    measure the round-trip time
  /close [code] [reason]   close the connection
  Ctrl-D                   close the connection and exit
`;

/** Where the CLI writes; replaceable in tests. */
export interface CliOutput {
  /** Writes a line to standard output. */
  out(line: string): void;
  /** Writes a line to standard error. */
  err(line: string): void;
}

const encoder = new TextEncoder();
const defaultOutput: CliOutput = {
  out: (line) => Deno.stdout.writeSync(encoder.encode(line + "\n")),
  err: (line) => Deno.stderr.writeSync(encoder.encode(line + "\n")),
};

function describeClose(close: Close | undefined): string {
  return close === undefined ? "no close frame" : close.toString();
}

function formatBinary(data: Uint8Array): string {
  const shown = data.subarray(0, 32);
  const hex = Array.from(shown, (byte) => byte.toString(16).padStart(2, "0")).join(" ");
  return `(binary) ${data.length} bytes: ${hex}${data.length > 32 ? " …" : ""}`;
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buffered = "";
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    buffered += text;
    let newline: number;
    while ((newline = buffered.indexOf("\n")) !== -1) {
      yield buffered.slice(0, newline).replace(/\r$/, "");
      buffered = buffered.slice(newline + 1);
    }
  }
  if (buffered !== "") yield buffered;
}

/**
 * Runs the CLI with `args` (without the program name), reading lines from
 * `input`; resolves to the exit status.
 *
 * @example
 * ```ts ignore
 * import { main } from "@denows/websockets/cli";
 * const status = await main(["--no-compression", "ws://127.0.0.1:8765/"]);
 * console.log(status);
 * ```
 */
export async function main(
  args: string[],
  input: ReadableStream<Uint8Array> = Deno.stdin.readable,
  output: CliOutput = defaultOutput,
): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        header: { type: "string", multiple: true },
        subprotocol: { type: "string", multiple: true },
        origin: { type: "string" },
        "no-compression": { type: "boolean" },
        "max-size": { type: "string" },
        proxy: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    output.err(`error: ${(error as Error).message}`);
    output.err(USAGE);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    output.out(USAGE);
    return 0;
  }
  if (positionals.length !== 1) {
    output.err(USAGE);
    return 2;
  }
  const uri = positionals[0];
  const options: ConnectOptions = { pingInterval: null };
  if (values["no-compression"]) options.compression = null;
  if (values.origin !== undefined) options.origin = values.origin;
  if (values.proxy !== undefined) options.proxy = values.proxy;
  if (values.subprotocol !== undefined) options.subprotocols = values.subprotocol;
  if (values["max-size"] !== undefined) {
    const maxSize = Number(values["max-size"]);
    if (!Number.isInteger(maxSize) || maxSize <= 0) {
      output.err(`error: --max-size must be a positive integer, got ${values["max-size"]}`);
      return 2;
    }
    options.maxSize = maxSize;
  }
  if (values.header !== undefined) {
    const headers: [string, string][] = [];
    for (const header of values.header) {
      const colon = header.indexOf(":");
      if (colon <= 0) {
        output.err(`error: --header must look like "Name: value", got ${header}`);
        return 2;
      }
      headers.push([header.slice(0, colon).trim(), header.slice(colon + 1).trim()]);
    }
    options.additionalHeaders = headers;
  }

  let ws: StreamConnection;
  try {
    ws = await connect(uri, options);
  } catch (error) {
    if (error instanceof InvalidURI || error instanceof InvalidProxy) {
      output.err(`error: ${error.message}`);
      return 2;
    }
    if (error instanceof InvalidStatus) {
      output.err(
        `Failed to connect to ${uri}: server rejected the handshake with HTTP ${error.response.statusCode} ${error.response.reasonPhrase}`,
      );
    } else if (error instanceof InvalidHandshake) {
      output.err(`Failed to connect to ${uri}: ${error.message}`);
    } else {
      output.err(`Failed to connect to ${uri}: ${(error as Error).message ?? error}`);
    }
    return 1;
  }
  output.out(`Connected to ${uri}${ws.subprotocol ? ` (subprotocol ${ws.subprotocol})` : ""}`);

  const receiving = (async () => {
    try {
      for await (const message of ws) {
        output.out(typeof message === "string" ? `< ${message}` : `< ${formatBinary(message)}`);
      }
    } catch {
      // reported below from `closed`
    }
  })();

  const sending = (async () => {
    for await (const line of lines(input)) {
      if (ws.state !== 1) break;
      try {
        if (line === "/ping") {
          output.out(`= pong in ${(await ws.ping()).toFixed(2)} ms`);
        } else if (line.startsWith("/close")) {
          const [, code, ...reason] = line.split(" ");
          await ws.close(code ? Number(code) : CloseCode.NORMAL_CLOSURE, reason.join(" "));
          break;
        } else {
          await ws.send(line);
        }
      } catch (error) {
        if (error instanceof ConnectionClosed) break;
        output.err(`error: ${(error as Error).message}`);
      }
    }
    if (ws.state === 1) await ws.close();
  })();

  await Promise.race([sending, ws.closed]);
  const result = await ws.closed;
  await receiving;
  const error = ws.protocol.closeError;
  output.out(
    `Connection closed: ${describeClose(result.rcvd)}${
      result.rcvd === undefined && result.sent !== undefined ? ` (sent ${result.sent})` : ""
    }.`,
  );
  // Don't wait for more input once the server closed the connection.
  input.cancel().catch(() => {});
  return error instanceof ConnectionClosedOK ? 0 : 1;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
