// Connects to each URI given, with connect()'s default proxy (from the environment) unless
// `--proxy=URL` comes first, trusting the certificates of `--ca=FILE` if given; prints one line
// per URI: `URI remote port N` (the port the client's socket is connected to: the proxy's or the
// server's) or `URI ErrorName: message`.

import { connect, type ConnectOptions } from "../../client.ts";

const options: ConnectOptions = { openTimeout: 10_000 };
const uris: string[] = [];
for (const arg of Deno.args) {
  if (arg.startsWith("--proxy=")) options.proxy = arg.slice("--proxy=".length);
  else if (arg.startsWith("--ca=")) options.caCerts = [Deno.readTextFileSync(arg.slice(5))];
  else uris.push(arg);
}

for (const uri of uris) {
  try {
    const ws = await connect(uri, options);
    console.log(`${uri} remote port ${(ws.remoteAddr as Deno.NetAddr).port}`);
    await ws.close();
  } catch (error) {
    console.log(`${uri} ${(error as Error).name}: ${(error as Error).message}`);
  }
}
