/**
 * Benchmark reference, not a WebSocket library: the least a WebSocket server over `Deno.listen`
 * can keep per open connection. It answers the opening handshake, echoes small frames and keeps
 * one pending 256-byte read per connection, with no other state. The runner uses it only for the
 * idle-memory scenarios, to show the floor that the runtime sets for any library built on
 * `Deno.listen`.
 *
 *   deno run --allow-net bench/servers/deno_floor.ts --port 9001
 *
 * It handles what the idle scenario sends (a handshake request in one read, then frames of at
 * most 125 bytes, one per read) and nothing else.
 *
 * @module
 */

const at = Deno.args.indexOf("--port");
const port = at >= 0 ? Number(Deno.args[at + 1]) : NaN;
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  throw new RangeError(`--port must be an integer from 1 to 65535, got ${Deno.args[at + 1]}`);
}

const encoder = new TextEncoder();
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

async function acceptKey(key: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-1", encoder.encode(key + GUID));
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}

async function handle(conn: Deno.Conn): Promise<void> {
  try {
    const request = new Uint8Array(1024);
    const count = await conn.read(request);
    if (count === null) return;
    const head = new TextDecoder().decode(request.subarray(0, count));
    const key = /^sec-websocket-key:[ \t]*(\S+)/im.exec(head)?.[1];
    if (key === undefined) return;
    await conn.write(encoder.encode(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        `Sec-WebSocket-Accept: ${await acceptKey(key)}\r\n\r\n`,
    ));
    for (;;) {
      const buffer = new Uint8Array(256);
      const n = await conn.read(buffer);
      if (n === null || n < 6) return;
      // One masked frame under 126 bytes: sent back unmasked, with the same opcode.
      const length = buffer[1] & 0x7f;
      if (length > 125 || n < 6 + length) return;
      const out = new Uint8Array(2 + length);
      out[0] = buffer[0];
      out[1] = length;
      for (let i = 0; i < length; i++) out[2 + i] = buffer[6 + i] ^ buffer[2 + (i & 3)];
      await conn.write(out);
      if ((buffer[0] & 0x0f) === 8) return; // close
    }
  } catch {
    // a reset peer: nothing to clean up but the socket
  } finally {
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}

const listener = Deno.listen({ hostname: "127.0.0.1", port });
console.log(`listening on ws://127.0.0.1:${port}`);
for await (const conn of listener) handle(conn);
