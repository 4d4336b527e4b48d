/** Options of a benchmark client run (see driver.mjs). */
export interface ClientOptions {
  url: string;
  conns: number;
  inflight: number;
  size: number;
  warmup: number;
  seconds: number;
}

/** Parses `--url`, `--conns`, `--inflight`, `--size`, `--warmup`, `--seconds`. */
export function parseArgs(args: string[]): ClientOptions;

/** Runs the closed echo loop over `open`'s connections and prints one JSON line. */
export function run(
  options: ClientOptions,
  open: (
    url: string,
    onMessage: (length: number) => void,
    onClose: () => void,
  ) => Promise<(data: Uint8Array) => void>,
  print: (text: string) => void,
): Promise<void>;
