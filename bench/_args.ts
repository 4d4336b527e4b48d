/**
 * Command-line walking shared by the benchmark runners: `--name value`, `--name=value` and bare
 * `--flag` arguments, values checked, mistakes reported through the runner's `usage()`.
 *
 * @module
 */

/** What a runner's handler gets for one argument. */
export interface Arg {
  /** The option's name, e.g. `--seconds`. */
  name: string;
  /** The argument as given. */
  text: string;
  /** The option's value (the next argument, or what follows `=`). */
  value(): string;
  /** The option's value as a number from `lo` to `hi`. */
  number(lo: number, hi: number): number;
}

/** Calls `on` for each option in `args`; `usage` reports a missing or bad value and exits. */
export function walkArgs(
  args: string[],
  usage: (message: string) => never,
  on: (arg: Arg) => void,
): void {
  for (let i = 0; i < args.length; i++) {
    const text = args[i];
    const [name, inline] = text.includes("=") ? text.split("=", 2) : [text, undefined];
    const value = (): string => {
      const v = inline ?? args[++i];
      if (v === undefined) usage(`${name} needs a value`);
      return v;
    };
    const number = (lo: number, hi: number): number => {
      const given = value();
      const n = Number(given);
      if (!Number.isFinite(n) || n < lo || n > hi) {
        usage(`${name} must be a number from ${lo} to ${hi}, got ${given}`);
      }
      return n;
    };
    on({ name, text, value, number });
  }
}
