/**
 * How values and errors are named in error messages and logs.
 * Runtime-neutral.
 *
 * @module
 */

/** The type of `value` for an error message: `null`, its class name, or `typeof`. */
export function describeType(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "object") return (value as object).constructor?.name ?? "object";
  return typeof value;
}

/** The message of `error` (or `error` as a string), on one line, to quote in another message. */
export function describeError(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).replace(/\s*\n\s*/g, " ");
}
