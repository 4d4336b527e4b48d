// A Worker running one WebSocket server whose clients share a Room over the
// BroadcastChannel backplane, as the isolates of a Deno Deploy deployment
// would. Posts {type: "listening", port}; on "stop", closes everything and
// posts {type: "stopped"}; backplane errors are posted as {type: "error"}.

/// <reference lib="deno.worker" />

import { broadcastChannelBackplane, Room } from "../pubsub.ts";
import { serve } from "../server.ts";

const backplane = broadcastChannelBackplane();
const room = new Room("workers", {
  backplane,
  onError: (error) => self.postMessage({ type: "error", name: error.name, message: error.message }),
});
await room.open();
const server = serve(async (ws) => {
  room.add(ws);
  for await (const message of ws) room.publish(message);
}, { hostname: "127.0.0.1", port: 0 });

self.onmessage = async (event: MessageEvent) => {
  if (event.data !== "stop") return;
  await server.close();
  await room.close();
  await backplane.close?.();
  self.postMessage({ type: "stopped" });
  self.close();
};
self.postMessage({ type: "listening", port: server.port });
