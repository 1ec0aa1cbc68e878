// The envelope the gateway answers in, acks and HTTP bodies alike:
// `{ ok: true, data }` or `{ ok: false, error: { code, message } }`.

import assert from "node:assert/strict";

/** Asserts a `{ ok: true, data }` envelope and returns `data`. */
export function expectOk(ack, what = "ack") {
  assert.ok(ack && typeof ack === "object", `${what}: expected an envelope object, got ${JSON.stringify(ack)}`);
  assert.equal(ack.ok, true, `${what}: expected ok: true, got ${JSON.stringify(ack)}`);
  assert.ok("data" in ack, `${what}: ok envelope without data: ${JSON.stringify(ack)}`);
  return ack.data;
}

/** Asserts a `{ ok: false, error: { code, message } }` envelope with `code`; returns the error. */
export function expectError(ack, code, what = "ack") {
  assert.ok(ack && typeof ack === "object", `${what}: expected an envelope object, got ${JSON.stringify(ack)}`);
  assert.equal(ack.ok, false, `${what}: expected ok: false with ${code}, got ${JSON.stringify(ack)}`);
  assert.ok(ack.error && typeof ack.error === "object", `${what}: no error object: ${JSON.stringify(ack)}`);
  assert.equal(ack.error.code, code, `${what}: wrong error code in ${JSON.stringify(ack)}`);
  assert.equal(typeof ack.error.message, "string", `${what}: error.message must be a string: ${JSON.stringify(ack)}`);
  return ack.error;
}
