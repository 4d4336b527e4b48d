/**
 * The closed loop every benchmark client runs, shared by the Deno, Node and Bun clients so that
 * only the WebSocket library differs between them.
 *
 * Options (from the command line): `--url ws://127.0.0.1:PORT/echo`, `--conns N`, `--inflight K`,
 * `--size BYTES`, `--warmup S`, `--seconds S`. Each of the N connections keeps K binary messages
 * of BYTES bytes in flight: every echo that comes back is checked (its length) and answered with
 * the next message. Counting starts after the warm-up; at the end one JSON line goes to stdout:
 * `{"msgs_per_s", "mb_per_s", "p50_us", "p99_us", "messages", "errors", "seconds"}`.
 */

/**
 * @param {string[]} args
 * @returns {{url: string, conns: number, inflight: number, size: number, warmup: number, seconds: number}}
 */
export function parseArgs(args) {
  const options = { url: "", conns: 100, inflight: 1, size: 32, warmup: 0.8, seconds: 1 };
  for (let i = 0; i < args.length; i += 2) {
    const name = args[i].replace(/^--/, "");
    const value = args[i + 1];
    if (!(name in options) || value === undefined) {
      throw new TypeError(`unknown option or missing value: ${args[i]}`);
    }
    options[name] = name === "url" ? value : Number(value);
  }
  if (!/^ws:\/\/127\.0\.0\.1:\d+\//.test(options.url)) {
    throw new TypeError(`--url must be ws://127.0.0.1:PORT/..., got ${options.url}`);
  }
  for (const name of ["conns", "inflight", "size"]) {
    if (!Number.isInteger(options[name]) || options[name] < 1) {
      throw new RangeError(`--${name} must be a positive integer, got ${options[name]}`);
    }
  }
  return options;
}

/**
 * Runs the loop and prints the result.
 *
 * `open(url, onMessage, onClose)` connects one client and resolves to a function that sends a
 * Uint8Array; `onMessage(byteLength)` is called for every message received.
 *
 * @param {ReturnType<typeof parseArgs>} options
 * @param {(url: string, onMessage: (length: number) => void, onClose: () => void) => Promise<(data: Uint8Array) => void>} open
 * @param {(text: string) => void} print
 */
export async function run(options, open, print) {
  const payload = new Uint8Array(options.size);
  for (let i = 0; i < payload.length; i++) payload[i] = i & 0xff;
  const now = () => performance.now();
  // RTT samples of the measured window; at most MAX_SAMPLES, then every other one is dropped.
  const MAX_SAMPLES = 1 << 21;
  let samples = new Float64Array(MAX_SAMPLES);
  let sampleCount = 0;
  let sampleStep = 1;
  let sampleSkip = 0;
  let measuring = false;
  let stopped = false;
  let messages = 0;
  let errors = 0;
  let closed = 0;

  const sends = [];
  for (let c = 0; c < options.conns; c++) {
    // Send times of the messages in flight on this connection (echoes come back in order).
    const times = new Float64Array(options.inflight);
    let head = 0;
    let tail = 0;
    let send = (_data) => {};
    const onMessage = (length) => {
      if (stopped) return;
      const rtt = now() - times[head];
      head = (head + 1) % options.inflight;
      if (length !== options.size) errors++;
      if (measuring) {
        messages++;
        if (++sampleSkip >= sampleStep) {
          sampleSkip = 0;
          if (sampleCount === MAX_SAMPLES) {
            const kept = new Float64Array(MAX_SAMPLES);
            for (let i = 0; i < MAX_SAMPLES / 2; i++) kept[i] = samples[2 * i];
            samples = kept;
            sampleCount = MAX_SAMPLES / 2;
            sampleStep *= 2;
          }
          samples[sampleCount++] = rtt;
        }
      }
      times[tail] = now();
      tail = (tail + 1) % options.inflight;
      send(payload);
    };
    send = await open(options.url, onMessage, () => closed++);
    sends.push(() => {
      for (let k = 0; k < options.inflight; k++) {
        times[tail] = now();
        tail = (tail + 1) % options.inflight;
        send(payload);
      }
    });
  }
  for (const start of sends) start();
  await new Promise((resolve) => setTimeout(resolve, options.warmup * 1000));
  measuring = true;
  const started = now();
  await new Promise((resolve) => setTimeout(resolve, options.seconds * 1000));
  const seconds = (now() - started) / 1000;
  measuring = false;
  stopped = true;
  const sorted = samples.subarray(0, sampleCount).sort();
  const percentile = (p) =>
    sorted.length
      ? Math.round(1000 * sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))])
      : null;
  print(JSON.stringify({
    msgs_per_s: Math.round(messages / seconds),
    mb_per_s: Math.round((messages * options.size) / seconds / 1e5) / 10,
    p50_us: percentile(0.5),
    p99_us: percentile(0.99),
    messages,
    errors,
    closed,
    seconds: Math.round(seconds * 1000) / 1000,
  }));
}
