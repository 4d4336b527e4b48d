// Whether the tests run under CI, decided in one place for every test file (and `.ci/run`'s
// rule that nothing may be ignored there).
//
// Under CI a test that needs a peer (node, python3-websockets, redis-server, chromium) runs
// even when the peer is missing, and fails saying what is missing: CI must never go green by
// skipping. Elsewhere such a test is ignored, which `deno test` shows in its ignored count.

/** Whether a value of the `CI` environment variable means "in CI": set, and not "", "0" or "false". */
export function isCI(value: string | undefined): boolean {
  return value !== undefined && !["", "0", "false"].includes(value.trim().toLowerCase());
}

/** Whether the tests run under CI (the `CI` environment variable, see {@linkcode isCI}). */
export const IN_CI: boolean = isCI(Deno.env.get("CI"));

/**
 * The `ignore` of a test that needs a peer: ignored when the peer is missing, except under CI,
 * where the test runs (and must fail, saying what is missing).
 */
export function ignoreWithout(available: boolean): boolean {
  return !available && !IN_CI;
}
