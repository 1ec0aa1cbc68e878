// The fleet vocabulary of the tests: fresh ids, fix times, publishing and
// subscribing with the ack checked, and the shape of a 5.2 location.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";

import { expectOk } from "./envelopes.mjs";
import { emitWithAck } from "./sockets.mjs";

let counter = 0;

/** A fresh id of the contract's grammar, unique within this run. */
export function uid(prefix = "id") {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}-${randomBytes(3).toString("hex")}`;
}

/** A fix time `offsetMs` from now, as an integer. */
export const tsAt = (offsetMs = 0) => Date.now() + offsetMs;

/** Publishes a location with an ack and returns the ack's `data`. */
export async function publish(socket, update) {
  return expectOk(await emitWithAck(socket, "locationupdate", update), `locationupdate ${JSON.stringify(update)}`);
}

/** Publishes and asserts it was accepted. */
export async function publishAccepted(socket, update) {
  const data = await publish(socket, update);
  assert.deepEqual(data, { accepted: true }, `expected accepted: true for ${JSON.stringify(update)}`);
  return data;
}

/** Subscribes and returns the ack's `data` (`{ fleet, vehicles }`). */
export async function subscribe(socket, request = {}) {
  return expectOk(await emitWithAck(socket, "subscribe", request), `subscribe ${JSON.stringify(request)}`);
}

/** Asserts `obj` is a well-formed 5.2 location object. */
export function assertLocationShape(obj, { fleet, vehicleId } = {}) {
  assert.ok(obj && typeof obj === "object", `location must be an object: ${JSON.stringify(obj)}`);
  for (const k of ["fleet", "vehicleId"]) assert.equal(typeof obj[k], "string", `${k} must be a string in ${JSON.stringify(obj)}`);
  for (const k of ["lat", "lon", "ts", "receivedAt"]) {
    assert.equal(typeof obj[k], "number", `${k} must be a number in ${JSON.stringify(obj)}`);
  }
  assert.ok(Number.isInteger(obj.ts), `ts must be an integer: ${JSON.stringify(obj)}`);
  assert.ok(Number.isInteger(obj.receivedAt), `receivedAt must be an integer: ${JSON.stringify(obj)}`);
  for (const [k, v] of Object.entries(obj)) {
    assert.notEqual(v, null, `${k} is null in ${JSON.stringify(obj)}; absent fields must be omitted`);
  }
  for (const k of ["heading", "speed", "accuracy"]) {
    if (k in obj) assert.equal(typeof obj[k], "number", `${k} must be a number in ${JSON.stringify(obj)}`);
  }
  if (fleet !== undefined) assert.equal(obj.fleet, fleet, `fleet in ${JSON.stringify(obj)}`);
  if (vehicleId !== undefined) assert.equal(obj.vehicleId, vehicleId, `vehicleId in ${JSON.stringify(obj)}`);
}

/** Numbers compare equal within 1e-6 (positions may pass through f64/strings). */
export function near(a, b, eps = 1e-6) {
  return typeof a === "number" && Math.abs(a - b) <= eps;
}

/** The entry for `vehicleId` in a list of locations (a snapshot, recorded updates). */
export function byVehicle(list, vehicleId) {
  return list.find((v) => v.vehicleId === vehicleId);
}
