// Connects to each URI given, with connect()'s default proxy (from the environment), and
// prints one line per URI: `URI remote port N` (the port the client's socket is connected to:
// the proxy's or the server's) or `URI ErrorName: message`.

import { connect } from "../../client.ts";

for (const uri of Deno.args) {
  try {
    const ws = await connect(uri, { openTimeout: 10_000 });
    console.log(`${uri} remote port ${(ws.remoteAddr as Deno.NetAddr).port}`);
    await ws.close();
  } catch (error) {
    console.log(`${uri} ${(error as Error).name}: ${(error as Error).message}`);
  }
}
