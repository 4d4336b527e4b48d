import assert from "node:assert/strict";
import { serve } from "../server.ts";

Deno.test("examples: the Autobahn client runner walks the cases, echoes, and updates the report", async () => {
  const seen: string[] = [];
  const echoed: (string | number)[] = [];
  const server = serve(async (ws) => {
    const path = ws.request!.path;
    seen.push(path);
    if (path.startsWith("/getCaseCount")) {
      await ws.send("3");
    } else if (path.startsWith("/runCase")) {
      await ws.send(`text ${path}`);
      await ws.send(new Uint8Array([1, 2, 3]));
      echoed.push(await ws.recv() as string);
      echoed.push((await ws.recv() as Uint8Array).length);
      await ws.close();
    }
  }, { hostname: "127.0.0.1", port: 0 });
  try {
    const output = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../examples/autobahn_client.ts", import.meta.url).pathname,
        "--url",
        `ws://127.0.0.1:${server.port}`,
        "--agent",
        "test agent",
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
    assert.deepEqual(seen, [
      "/getCaseCount",
      "/runCase?case=1&agent=test%20agent",
      "/runCase?case=2&agent=test%20agent",
      "/runCase?case=3&agent=test%20agent",
      "/updateReports?agent=test%20agent",
    ]);
    assert.deepEqual(echoed, [
      "text /runCase?case=1&agent=test%20agent",
      3,
      "text /runCase?case=2&agent=test%20agent",
      3,
      "text /runCase?case=3&agent=test%20agent",
      3,
    ]);
  } finally {
    await server.close();
  }
});
