// Validation of client→server `locationupdate` (contract 5.1, 5.5): every
// range and schema rule answers `invalid_payload` naming the field, role and
// vehicle checks answer `forbidden`, accepted alternative forms (GeoJSON Point,
// the bus-app `busId` + `location.latitude/longitude` form) reach subscribers
// on the other replica as plain 5.2 objects, and rejected updates are never
// broadcast nor cost the socket its connection.

import { before, describe } from "node:test";
import assert from "node:assert/strict";

import {
  assertLocationShape,
  connectWithSession,
  emitWithAck,
  expectError,
  near,
  publishAccepted,
  record,
  subscribe,
  test,
  tsAt,
  twoReplicas,
  uid,
  waitForEvent,
} from "./lib/harness.mjs";

const DAY = 24 * 3600 * 1000;

const cluster = twoReplicas();
const [A, B] = cluster.servers;
const fleet = uid("fleet");
let dispatcher; // on A
let viewer; // on B, subscribed to the whole fleet
let seen; // every locationupdate the viewer got

before(async () => {
  // Top-level `before` hooks may run side by side (Node 20): wait for the fixture's.
  await cluster.start();
  dispatcher = (await connectWithSession(A, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
  viewer = (await connectWithSession(B, cluster.token({ sub: "watcher", fleet, role: "viewer" }))).socket;
  seen = record(viewer, "locationupdate");
  await subscribe(viewer, {});
});

/** Publishes from `socket` and asserts an invalid_payload ack whose message matches `field`. */
async function expectInvalid(socket, update, field) {
  const ack = await emitWithAck(socket, "locationupdate", update);
  const error = expectError(ack, "invalid_payload", `locationupdate ${JSON.stringify(update)}`);
  if (field) {
    assert.match(error.message, field, `message should name the field: ${JSON.stringify(ack)}`);
  }
  return error;
}

describe("invalid_payload by field", () => {
  const v = (suffix) => `bad-${suffix}`;
  const cases = [
    ["lat above 90", () => ({ vehicleId: v(1), lat: 90.0001, lon: 127, ts: tsAt() }), /lat/],
    ["lat below -90", () => ({ vehicleId: v(2), lat: -91, lon: 127, ts: tsAt() }), /lat/],
    ["lon above 180", () => ({ vehicleId: v(3), lat: 37.5, lon: 180.5, ts: tsAt() }), /lon/],
    ["lon below -180", () => ({ vehicleId: v(4), lat: 37.5, lon: -181, ts: tsAt() }), /lon/],
    ["lon as a string", () => ({ vehicleId: v(5), lat: 37.5, lon: "127.0", ts: tsAt() }), /lon/],
    ["lat as a string", () => ({ vehicleId: v(6), lat: "37.5", lon: 127.0, ts: tsAt() }), /lat/],
    ["lat missing", () => ({ vehicleId: v(7), lon: 127.0, ts: tsAt() }), null],
    ["null island (0, 0)", () => ({ vehicleId: v(8), lat: 0, lon: 0, ts: tsAt() }), null],
    ["vehicleId with a space", () => ({ vehicleId: "bus 12", lat: 37.5, lon: 127, ts: tsAt() }), /vehicleId|busId/],
    ["vehicleId with a non-ASCII letter", () => ({ vehicleId: "büs-1", lat: 37.5, lon: 127, ts: tsAt() }), /vehicleId|busId/],
    ["vehicleId with a brace", () => ({ vehicleId: "{bus}", lat: 37.5, lon: 127, ts: tsAt() }), /vehicleId|busId/],
    ["vehicleId of 65 chars", () => ({ vehicleId: "x".repeat(65), lat: 37.5, lon: 127, ts: tsAt() }), /vehicleId|busId/],
    ["empty vehicleId", () => ({ vehicleId: "", lat: 37.5, lon: 127, ts: tsAt() }), /vehicleId|busId/],
    ["vehicleId missing for a dispatcher", () => ({ lat: 37.5, lon: 127, ts: tsAt() }), /vehicleId|busId/],
    ["ts 2 minutes in the future", () => ({ vehicleId: v(9), lat: 37.5, lon: 127, ts: tsAt(120_000) }), /ts/],
    ["ts 8 days old", () => ({ vehicleId: v(10), lat: 37.5, lon: 127, ts: tsAt(-8 * DAY) }), /ts/],
    ["ts in 1970", () => ({ vehicleId: v(11), lat: 37.5, lon: 127, ts: 1000 }), /ts/],
    ["ts not an integer", () => ({ vehicleId: v(12), lat: 37.5, lon: 127, ts: tsAt() + 0.5 }), /ts/],
    ["ts as a string", () => ({ vehicleId: v(13), lat: 37.5, lon: 127, ts: String(tsAt()) }), /ts/],
    ["heading 360", () => ({ vehicleId: v(14), lat: 37.5, lon: 127, ts: tsAt(), heading: 360 }), /heading/],
    ["heading negative", () => ({ vehicleId: v(15), lat: 37.5, lon: 127, ts: tsAt(), heading: -1 }), /heading/],
    ["negative speed", () => ({ vehicleId: v(16), lat: 37.5, lon: 127, ts: tsAt(), speed: -0.5 }), /speed/],
    ["negative accuracy", () => ({ vehicleId: v(17), lat: 37.5, lon: 127, ts: tsAt(), accuracy: -1 }), /accuracy/],
    [
      "GeoJSON Point at null island",
      () => ({ vehicleId: v(18), location: { type: "Point", coordinates: [0, 0] }, ts: tsAt() }),
      null,
    ],
    [
      "GeoJSON Point with latitude out of range",
      () => ({ vehicleId: v(19), location: { type: "Point", coordinates: [127, 95] }, ts: tsAt() }),
      /lat|coordinates/,
    ],
    [
      "bus-app form with a non-numeric latitude",
      () => ({ busId: v(20), location: { latitude: "north", longitude: "127.0" } }),
      /lat/,
    ],
    [
      "bus-app form with latitude out of range",
      () => ({ busId: v(21), location: { latitude: "95", longitude: "127.0" } }),
      /lat/,
    ],
    ["payload that is not an object", () => "hello", null],
  ];

  for (const [name, update, field] of cases) {
    test(`${name} → invalid_payload`, async () => {
      await expectInvalid(dispatcher, update(), field);
    });
  }

  test("an invalid update without an ack → exception { event, code, message }", async () => {
    const exception = waitForEvent(dispatcher, "exception");
    dispatcher.emit("locationupdate", { vehicleId: "bad-exc", lat: 123, lon: 127, ts: tsAt() });
    const ex = await exception;
    assert.equal(ex.event, "locationupdate");
    assert.equal(ex.code, "invalid_payload");
    assert.match(ex.message, /lat/);
  });

  test("validation failures keep the socket connected and are never broadcast", async () => {
    assert.ok(dispatcher.connected, "the publishing socket must still be connected");
    const sentinel = uid("sentinel");
    await publishAccepted(dispatcher, { vehicleId: sentinel, lat: 37.5, lon: 127, ts: tsAt() });
    await seen.waitFor((u) => u.vehicleId === sentinel);
    const leaked = seen.items.filter((u) => typeof u?.vehicleId !== "string" || !/^(ok-|sentinel-|geo-|busapp-)/.test(u.vehicleId));
    assert.deepEqual(leaked, [], "rejected updates must not reach subscribers");
  });
});

describe("accepted edge values and forms", () => {
  const accepted = [
    ["boundaries lat 90 / lon -180", { lat: 90, lon: -180 }],
    ["boundaries lat -90 / lon 180", { lat: -90, lon: 180 }],
    ["lat 0 with lon non-zero", { lat: 0, lon: 5.5 }],
    ["heading 0, speed 0, accuracy 0", { lat: 1, lon: 1, heading: 0, speed: 0, accuracy: 0 }],
    ["heading just below 360", { lat: 1, lon: 1, heading: 359.99 }],
    ["ts 50 s in the future", { lat: 1, lon: 1, ts: tsAt(50_000) }],
    ["ts 6 days old (late upload)", { lat: 1, lon: 1, ts: tsAt(-6 * DAY) }],
  ];
  for (const [name, fields] of accepted) {
    test(`${name} is accepted and delivered`, async () => {
      const vehicleId = uid("ok");
      const update = { vehicleId, ts: tsAt(), ...fields };
      await publishAccepted(dispatcher, update);
      const got = await seen.waitFor((u) => u.vehicleId === vehicleId);
      assertLocationShape(got, { fleet, vehicleId });
      assert.ok(near(got.lat, update.lat) && near(got.lon, update.lon), JSON.stringify(got));
      assert.equal(got.ts, update.ts);
    });
  }

  test("an update without ts is stamped with server time", async () => {
    const vehicleId = uid("ok");
    const before = Date.now();
    await publishAccepted(dispatcher, { vehicleId, lat: 3, lon: 4 });
    const got = await seen.waitFor((u) => u.vehicleId === vehicleId);
    assertLocationShape(got, { fleet, vehicleId });
    // Generous bounds: the server's clock is this machine's clock.
    assert.ok(got.ts >= before - 5_000 && got.ts <= Date.now() + 5_000, `ts ${got.ts} is not server time`);
  });

  test("GeoJSON Point form is accepted as [lon, lat]", async () => {
    const vehicleId = uid("geo");
    const ts = tsAt();
    await publishAccepted(dispatcher, {
      vehicleId,
      location: { type: "Point", coordinates: [127.0123, 37.5123] },
      ts,
      speed: 3.5,
    });
    const got = await seen.waitFor((u) => u.vehicleId === vehicleId);
    assertLocationShape(got, { fleet, vehicleId });
    assert.ok(near(got.lat, 37.5123), `lat ${got.lat}`);
    assert.ok(near(got.lon, 127.0123), `lon ${got.lon}`);
    assert.equal(got.speed, 3.5);
    assert.equal(got.ts, ts);
    assert.ok(!("location" in got), "the broadcast uses lat/lon, not the GeoJSON input form");
  });

  test("bus-app form { busId, location: { latitude: \"37.5\", longitude: \"127.0\" } } is accepted", async () => {
    const busId = uid("busapp");
    const driver = (await connectWithSession(A, cluster.token({ sub: busId, fleet, role: "vehicle" }))).socket;
    await publishAccepted(driver, { busId, location: { latitude: "37.5", longitude: "127.0" } });
    const got = await seen.waitFor((u) => u.vehicleId === busId);
    assertLocationShape(got, { fleet, vehicleId: busId });
    assert.equal(got.lat, 37.5);
    assert.equal(got.lon, 127.0);
    assert.ok(!("busId" in got), "the broadcast names the vehicle vehicleId");
  });

  test("bus-app form with numeric latitude/longitude from a dispatcher is accepted", async () => {
    const busId = uid("busapp");
    await publishAccepted(dispatcher, { busId, location: { latitude: 35.1, longitude: 129.04 }, ts: tsAt() });
    const got = await seen.waitFor((u) => u.vehicleId === busId);
    assert.ok(near(got.lat, 35.1) && near(got.lon, 129.04), JSON.stringify(got));
  });

  test("a vehicle token may omit vehicleId: it defaults to the token's vehicle", async () => {
    const vehicleId = uid("ok");
    const bus = (await connectWithSession(A, cluster.token({ sub: "driver-x", fleet, role: "vehicle", vehicle: vehicleId })))
      .socket;
    await publishAccepted(bus, { lat: 12.25, lon: 45.5, ts: tsAt() });
    const got = await seen.waitFor((u) => u.vehicleId === vehicleId);
    assertLocationShape(got, { fleet, vehicleId });
  });
});

describe("who may publish what", () => {
  test("a vehicle token publishing another vehicle id → forbidden", async () => {
    const own = uid("ok");
    const bus = (await connectWithSession(A, cluster.token({ sub: own, fleet, role: "vehicle" }))).socket;
    expectError(
      await emitWithAck(bus, "locationupdate", { vehicleId: "someone-else", lat: 37.5, lon: 127, ts: tsAt() }),
      "forbidden",
    );
    expectError(
      await emitWithAck(bus, "locationupdate", { busId: "someone-else", location: { latitude: 37.5, longitude: 127 } }),
      "forbidden",
    );
    // Its own id still works on the same socket.
    await publishAccepted(bus, { vehicleId: own, lat: 37.5, lon: 127, ts: tsAt() });
  });

  test("a viewer publishing → forbidden", async () => {
    const watcher = (await connectWithSession(B, cluster.token({ sub: "viewer-p", fleet, role: "viewer" }))).socket;
    expectError(
      await emitWithAck(watcher, "locationupdate", { vehicleId: "bus-1", lat: 37.5, lon: 127, ts: tsAt() }),
      "forbidden",
    );
    assert.ok(watcher.connected);
  });

  test("a forbidden publish is not broadcast", async () => {
    const bus = (await connectWithSession(A, cluster.token({ sub: uid("ok"), fleet, role: "vehicle" }))).socket;
    const target = uid("victim");
    expectError(
      await emitWithAck(bus, "locationupdate", { vehicleId: target, lat: 37.5, lon: 127, ts: tsAt() }),
      "forbidden",
    );
    const sentinel = uid("sentinel");
    await publishAccepted(dispatcher, { vehicleId: sentinel, lat: 37.5, lon: 127, ts: tsAt() });
    await seen.waitFor((u) => u.vehicleId === sentinel);
    assert.equal(seen.count((u) => u.vehicleId === target), 0);
  });
});
