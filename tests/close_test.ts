import assert from "node:assert/strict";
import { closeError, isNormalClosure, MAX_REASON_BYTES, truncateReason } from "../_close.ts";
import { ConnectionClosedError, ConnectionClosedOK } from "../errors.ts";
import { Close, CloseCode } from "../frames.ts";

const utf8 = (text: string): number => new TextEncoder().encode(text).length;

Deno.test("close: a reason of at most 123 bytes is kept as it is", () => {
  const reason = "é".repeat(61) + "r"; // 123 bytes
  assert.equal(truncateReason(reason), reason);
});

Deno.test("close: a long reason of 2-byte characters is cut to 123 bytes with an ellipsis", () => {
  const reason = truncateReason("é".repeat(100));
  assert.equal(reason, "é".repeat(60) + "...");
  assert.equal(utf8(reason), MAX_REASON_BYTES);
});

Deno.test("close: a 3-byte character across the cut is left out whole", () => {
  // "a" then 3-byte characters: byte 120 is the last byte of the 40th "€".
  const reason = truncateReason("a" + "€".repeat(50));
  assert.equal(reason, "a" + "€".repeat(39) + "...");
  assert.equal(utf8(reason), 121);
});

Deno.test("close: a 4-byte character (a surrogate pair) across the cut is left out whole", () => {
  // "ab" then 4-byte characters: byte 120 is the third byte of the 30th "😀".
  const reason = truncateReason("ab" + "😀".repeat(40));
  assert.equal(reason, "ab" + "😀".repeat(29) + "...");
  assert.equal(utf8(reason), 121);
});

Deno.test("close: a cut reason is a whole-character prefix of at most 123 bytes", () => {
  const alphabet = ["a", "é", "€", "😀"];
  for (let length = 40; length <= 140; length++) {
    for (let shift = 0; shift < alphabet.length; shift++) {
      let text = "";
      for (let i = 0; i < length; i++) text += alphabet[(i + shift) % alphabet.length];
      const reason = truncateReason(text);
      assert.ok(utf8(reason) <= MAX_REASON_BYTES, `${length}/${shift}: ${utf8(reason)} bytes`);
      if (reason === text) continue;
      const kept = reason.slice(0, -3);
      assert.equal([text.startsWith(kept), reason.endsWith("...")].join(), "true,true");
      // The prefix ends between two code points, not inside a surrogate pair.
      assert.ok(!/[\uD800-\uDBFF]$/.test(kept), `${length}/${shift}: cut inside a pair`);
    }
  }
});

Deno.test("close: close frames 1000, 1001 or no status both ways are a normal closure", () => {
  const codes = [CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD];
  const results = codes.flatMap((rcvd) =>
    codes.map((sent) => isNormalClosure(new Close(rcvd, ""), new Close(sent, "")))
  );
  assert.deepEqual(results, Array(9).fill(true));
});

Deno.test("close: another code, or a close frame missing on one side, is not normal", () => {
  const ok = new Close(CloseCode.NORMAL_CLOSURE, "");
  const error = new Close(CloseCode.INTERNAL_ERROR, "");
  assert.deepEqual(
    [
      isNormalClosure(ok, error),
      isNormalClosure(error, ok),
      isNormalClosure(ok, undefined),
      isNormalClosure(undefined, ok),
    ],
    [false, false, false, false],
  );
});

Deno.test("close: closeError is ConnectionClosedOK after a normal closure, with the frames", () => {
  const rcvd = new Close(CloseCode.GOING_AWAY, "bye"), sent = new Close(CloseCode.GOING_AWAY, "");
  const error = closeError(rcvd, sent, true, undefined);
  assert.ok(error instanceof ConnectionClosedOK);
  assert.deepEqual([error.rcvd, error.sent, error.rcvdThenSent, error.cause], [
    rcvd,
    sent,
    true,
    undefined,
  ]);
});

Deno.test("close: closeError is ConnectionClosedError otherwise, with the failure as cause", () => {
  const cause = new Error("boom");
  const sent = new Close(CloseCode.INTERNAL_ERROR, "internal error");
  const error = closeError(undefined, sent, undefined, cause);
  assert.ok(error instanceof ConnectionClosedError);
  assert.deepEqual([error.rcvd, error.sent, error.code, error.cause], [
    undefined,
    sent,
    CloseCode.ABNORMAL_CLOSURE,
    cause,
  ]);
});
