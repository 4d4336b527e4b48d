import assert from "node:assert/strict";
import { connect } from "../client.ts";
import { type CloseResult, type Message, StreamConnection } from "../connection.ts";
import { ServerProtocol } from "../protocol.ts";
import { fromStreams } from "../transport.ts";
import { HOST, serveLocal } from "./_helpers.ts";

// What a CloseResult says, without the close frames' objects.
function outcome(result: CloseResult): [number, string, boolean] {
  return [result.code, result.reason, result.wasClean];
}

Deno.test("transport: a client over fromStreams of a TCP socket talks to serve() both ways", async () => {
  const received: Message[] = [];
  const { server } = serveLocal(async (ws) => {
    await ws.send("welcome");
    for await (const message of ws) {
      received.push(message);
      await ws.send(message);
    }
  }, { compression: null });
  try {
    const conn = await Deno.connect({ hostname: HOST, port: server.port });
    const ws = await connect(`ws://${HOST}:${server.port}/`, {
      sock: fromStreams(conn),
      compression: null,
    });
    const answers = [await ws.recv()];
    await ws.send("hello");
    answers.push(await ws.recv());
    await ws.send(new Uint8Array([1, 2, 3]));
    answers.push(await ws.recv());
    // A message bigger than one read of the stream: it comes in several chunks.
    const large = "x".repeat(200_000);
    await ws.send(large);
    answers.push(await ws.recv());
    await ws.close();
    assert.deepEqual(answers, ["welcome", "hello", new Uint8Array([1, 2, 3]), large]);
    assert.deepEqual(received, ["hello", new Uint8Array([1, 2, 3]), large]);
    assert.deepEqual(outcome(await ws.closed), [1000, "", true]);
  } finally {
    await server.close();
  }
});

Deno.test("transport: a server connection over fromStreams of an accepted TCP socket answers a client", async () => {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const serverSide = (async () => {
    const conn = await listener.accept();
    const protocol = new ServerProtocol();
    const connection = new StreamConnection(protocol, fromStreams(conn), {
      onHandshake: (event) => {
        if (event.type === "request") protocol.sendResponse(protocol.accept(event.request));
      },
    });
    connection.start();
    await connection.handshake;
    const message = await connection.recv();
    await connection.send(`echo: ${message}`);
    await connection.close(4000, "done");
    return outcome(await connection.closed);
  })();
  try {
    const ws = await connect(`ws://${HOST}:${port}/`, { compression: null });
    await ws.send("ping me");
    const answer = await ws.recv();
    await ws.closed;
    assert.deepEqual(
      [answer, outcome(await ws.closed), await serverSide],
      ["echo: ping me", [4000, "done", true], [4000, "done", true]],
    );
  } finally {
    listener.close();
  }
});
