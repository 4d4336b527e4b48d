// Deno's built-in WebSocket client over wss:, for the interoperability tests.
// Run it with `deno run --cert CERT.pem --allow-net deno_wss_client.ts URL`: the
// certificate is trusted through --cert, as the built-in client takes no CA option.
// It sends "hello" and a 3-byte binary message, prints each echo as a JSON
// line, then closes with 1000 "done" and prints the close event.

const url = Deno.args[0];
const emit = (event: Record<string, unknown>): void => console.log(JSON.stringify(event));
const ws = new WebSocket(url);
ws.binaryType = "arraybuffer";
const timer = setTimeout(() => Deno.exit(2), 10_000);
let received = 0;
ws.onopen = () => {
  emit({ event: "open", extensions: ws.extensions });
  ws.send("hello");
  ws.send(new Uint8Array([1, 2, 3]));
};
ws.onmessage = (event: MessageEvent) => {
  const data = event.data;
  emit({
    event: "message",
    data: typeof data === "string" ? data : Array.from(new Uint8Array(data as ArrayBuffer)),
  });
  if (++received === 2) ws.close(1000, "done");
};
ws.onerror = (event: Event) =>
  emit({ event: "error", message: String((event as ErrorEvent).message) });
ws.onclose = (event: CloseEvent) => {
  emit({ event: "close", code: event.code, reason: event.reason, wasClean: event.wasClean });
  clearTimeout(timer);
};
