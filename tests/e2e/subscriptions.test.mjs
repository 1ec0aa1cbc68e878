// Live delivery of server→client `locationupdate` (contract 5.2, 5.3):
// per-vehicle and bbox subscriptions across two replicas, exactly-once delivery
// to a socket subscribed by fleet + vehicle + bbox, `unsubscribe` in its three
// forms, malformed subscribe requests, and the 5.2 event shape (fleet and
// receivedAt present, absent optional fields omitted rather than null).

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  assertLocationShape,
  connectWithSession,
  emitWithAck,
  expectError,
  expectOk,
  publishAccepted,
  record,
  sleep,
  subscribe,
  test,
  tsAt,
  twoReplicas,
  uid,
} from "./lib/harness.mjs";

const cluster = twoReplicas();
const [A, B] = cluster.servers;

/** A fleet with a dispatcher on replica A, and a viewer factory. */
async function setup() {
  const fleet = uid("fleet");
  const disp = (await connectWithSession(A, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
  const viewer = async (server = B) => {
    const socket = (await connectWithSession(server, cluster.token({ sub: uid("viewer"), fleet, role: "viewer" }))).socket;
    return { socket, got: record(socket, "locationupdate") };
  };
  // A fleet-wide watcher that sees everything; used to know when traffic has passed.
  const watcher = await viewer(B);
  await subscribe(watcher.socket, {});
  const marker = async () => {
    const vehicleId = uid("marker");
    await publishAccepted(disp, { vehicleId, lat: -33.86, lon: 151.2, ts: tsAt() });
    await watcher.got.waitFor((u) => u.vehicleId === vehicleId);
    return vehicleId;
  };
  return { fleet, disp, viewer, watcher, marker };
}

describe("per-vehicle subscriptions", () => {
  test("a viewer on B subscribed to bus-1 gets bus-1 from A, never bus-2", async () => {
    const { fleet, disp, viewer, marker } = await setup();
    const v = await viewer(B);
    const data = await subscribe(v.socket, { vehicles: ["bus-1"] });
    assert.equal(data.fleet, fleet);
    await publishAccepted(disp, { vehicleId: "bus-2", lat: 37.1, lon: 127.1, ts: tsAt() });
    await publishAccepted(disp, { vehicleId: "bus-1", lat: 37.2, lon: 127.2, ts: tsAt() });
    const got = await v.got.waitFor((u) => u.vehicleId === "bus-1");
    assertLocationShape(got, { fleet, vehicleId: "bus-1" });
    await marker();
    assert.equal(v.got.count((u) => u.vehicleId !== "bus-1"), 0, JSON.stringify(v.got.items));
  });

  test("a vehicle's own update reaches subscribers on both replicas", async () => {
    const { fleet, viewer } = await setup();
    const onA = await viewer(A);
    const onB = await viewer(B);
    await subscribe(onA.socket, { vehicles: ["bus-7"] });
    await subscribe(onB.socket, { vehicles: ["bus-7"] });
    const bus = (await connectWithSession(B, cluster.token({ sub: "bus-7", fleet, role: "vehicle" }))).socket;
    await publishAccepted(bus, { lat: 48.85, lon: 2.35, ts: tsAt() });
    const [a, b] = await Promise.all([
      onA.got.waitFor((u) => u.vehicleId === "bus-7"),
      onB.got.waitFor((u) => u.vehicleId === "bus-7"),
    ]);
    assert.deepEqual(a, b, "both replicas deliver the same object");
  });

  test("subscriptions add up: two subscribe calls for two vehicles", async () => {
    const { disp, viewer, marker } = await setup();
    const v = await viewer(A);
    await subscribe(v.socket, { vehicles: ["bus-1"] });
    await subscribe(v.socket, { vehicles: ["bus-2"] });
    await publishAccepted(disp, { vehicleId: "bus-1", lat: 1, lon: 1, ts: tsAt() });
    await publishAccepted(disp, { vehicleId: "bus-2", lat: 2, lon: 2, ts: tsAt() });
    await publishAccepted(disp, { vehicleId: "bus-3", lat: 3, lon: 3, ts: tsAt() });
    await v.got.waitFor((u) => u.vehicleId === "bus-1");
    await v.got.waitFor((u) => u.vehicleId === "bus-2");
    await marker();
    assert.equal(v.got.count((u) => u.vehicleId === "bus-3"), 0);
  });
});

describe("bbox subscriptions", () => {
  const SEOUL = [126.5, 37.0, 127.5, 38.0];

  test("in-bbox updates are received, outside ones are not", async () => {
    const { fleet, disp, viewer, marker } = await setup();
    const v = await viewer(B);
    await subscribe(v.socket, { bbox: SEOUL });
    await publishAccepted(disp, { vehicleId: "busan-1", lat: 35.18, lon: 129.08, ts: tsAt() });
    await publishAccepted(disp, { vehicleId: "seoul-1", lat: 37.57, lon: 126.98, ts: tsAt() });
    const got = await v.got.waitFor((u) => u.vehicleId === "seoul-1");
    assertLocationShape(got, { fleet, vehicleId: "seoul-1" });
    await marker();
    assert.equal(v.got.count((u) => u.vehicleId === "busan-1"), 0, JSON.stringify(v.got.items));
  });

  test("a vehicle is delivered while inside and not after it leaves the box", async () => {
    const { disp, viewer, marker } = await setup();
    const v = await viewer(B);
    await subscribe(v.socket, { bbox: SEOUL });
    const ts = tsAt(-10_000);
    await publishAccepted(disp, { vehicleId: "mover", lat: 37.5, lon: 127.0, ts });
    await v.got.waitFor((u) => u.vehicleId === "mover" && u.lat === 37.5);
    await publishAccepted(disp, { vehicleId: "mover", lat: 36.0, lon: 127.0, ts: ts + 1_000 });
    await publishAccepted(disp, { vehicleId: "mover", lat: 37.25, lon: 127.25, ts: ts + 2_000 });
    await v.got.waitFor((u) => u.vehicleId === "mover" && u.lat === 37.25);
    await marker();
    assert.deepEqual(
      v.got.items.filter((u) => u.vehicleId === "mover").map((u) => u.lat),
      [37.5, 37.25],
    );
  });

  test("a point on the box edge is inside", async () => {
    const { disp, viewer, marker } = await setup();
    const v = await viewer(A);
    await subscribe(v.socket, { bbox: [10, 20, 11, 21] });
    await publishAccepted(disp, { vehicleId: "edge-1", lat: 20, lon: 10, ts: tsAt() });
    await publishAccepted(disp, { vehicleId: "edge-2", lat: 21, lon: 11, ts: tsAt() });
    await publishAccepted(disp, { vehicleId: "edge-3", lat: 21.0001, lon: 11, ts: tsAt() });
    await v.got.waitFor((u) => u.vehicleId === "edge-1");
    await v.got.waitFor((u) => u.vehicleId === "edge-2");
    await marker();
    assert.equal(v.got.count((u) => u.vehicleId === "edge-3"), 0);
  });
});

describe("exactly-once delivery", () => {
  test("subscribed by fleet + vehicle + bbox, each update arrives once", async () => {
    const { disp, viewer, marker } = await setup();
    const v = await viewer(B);
    await subscribe(v.socket, {});
    await subscribe(v.socket, { vehicles: ["bus-1"] });
    await subscribe(v.socket, { bbox: [126, 37, 128, 38] });
    await subscribe(v.socket, { bbox: [127, 37.4, 127.1, 37.6] });
    const ts = tsAt(-5_000);
    await publishAccepted(disp, { vehicleId: "bus-1", lat: 37.5, lon: 127.05, ts });
    await publishAccepted(disp, { vehicleId: "bus-1", lat: 37.51, lon: 127.06, ts: ts + 1 });
    await v.got.waitFor((u) => u.vehicleId === "bus-1" && u.ts === ts + 1);
    await marker();
    await sleep(300);
    const copies = v.got.items.filter((u) => u.vehicleId === "bus-1").map((u) => u.ts);
    assert.deepEqual(copies, [ts, ts + 1], "each update exactly once");
    assert.equal(v.got.items.length, 3, `two bus-1 updates and one marker: ${JSON.stringify(v.got.items)}`);
  });

  test("the same viewer subscribed twice to the same vehicle still gets one copy", async () => {
    const { disp, viewer, marker } = await setup();
    const v = await viewer(A);
    await subscribe(v.socket, { vehicles: ["bus-1"] });
    await subscribe(v.socket, { vehicles: ["bus-1"] });
    await publishAccepted(disp, { vehicleId: "bus-1", lat: 5, lon: 5, ts: tsAt() });
    await v.got.waitFor((u) => u.vehicleId === "bus-1");
    await marker();
    await sleep(300);
    assert.equal(v.got.count((u) => u.vehicleId === "bus-1"), 1);
  });
});

describe("unsubscribe", () => {
  test("with vehicles: stops those vehicles only", async () => {
    const { fleet, disp, viewer, marker } = await setup();
    const v = await viewer(B);
    await subscribe(v.socket, { vehicles: ["bus-1", "bus-2"] });
    const ack = expectOk(await emitWithAck(v.socket, "unsubscribe", { vehicles: ["bus-1"] }), "unsubscribe");
    assert.deepEqual(ack, { fleet });
    await publishAccepted(disp, { vehicleId: "bus-1", lat: 1, lon: 1, ts: tsAt() });
    await publishAccepted(disp, { vehicleId: "bus-2", lat: 2, lon: 2, ts: tsAt() });
    await v.got.waitFor((u) => u.vehicleId === "bus-2");
    await marker();
    assert.equal(v.got.count((u) => u.vehicleId === "bus-1"), 0);
  });

  test("with bbox: removes that exact box, other boxes stay", async () => {
    const { fleet, disp, viewer, marker } = await setup();
    const v = await viewer(B);
    await subscribe(v.socket, { bbox: [0, 0, 10, 10] });
    await subscribe(v.socket, { bbox: [20, 20, 30, 30] });
    const ack = expectOk(await emitWithAck(v.socket, "unsubscribe", { bbox: [0, 0, 10, 10] }));
    assert.deepEqual(ack, { fleet });
    await publishAccepted(disp, { vehicleId: "in-first", lat: 5, lon: 5, ts: tsAt() });
    await publishAccepted(disp, { vehicleId: "in-second", lat: 25, lon: 25, ts: tsAt() });
    await v.got.waitFor((u) => u.vehicleId === "in-second");
    await marker();
    assert.equal(v.got.count((u) => u.vehicleId === "in-first"), 0);
  });

  test("with neither: removes every subscription of the socket in the fleet", async () => {
    const { fleet, disp, viewer, marker } = await setup();
    const v = await viewer(A);
    await subscribe(v.socket, {});
    await subscribe(v.socket, { vehicles: ["bus-1"] });
    await subscribe(v.socket, { bbox: [-180, -90, 180, 90] });
    const ack = expectOk(await emitWithAck(v.socket, "unsubscribe", {}));
    assert.deepEqual(ack, { fleet });
    await publishAccepted(disp, { vehicleId: "bus-1", lat: 1, lon: 1, ts: tsAt() });
    await marker();
    await sleep(300);
    assert.deepEqual(v.got.items, [], "nothing after unsubscribing everything");
  });

  test("unsubscribing the fleet-wide subscription with explicit fleet", async () => {
    const { fleet, disp, viewer, marker } = await setup();
    const v = await viewer(B);
    await subscribe(v.socket, { fleet });
    assert.deepEqual(expectOk(await emitWithAck(v.socket, "unsubscribe", { fleet })), { fleet });
    await publishAccepted(disp, { vehicleId: "bus-1", lat: 1, lon: 1, ts: tsAt() });
    await marker();
    await sleep(300);
    assert.deepEqual(v.got.items, []);
  });

  test("unsubscribe from another fleet → forbidden", async () => {
    const { viewer } = await setup();
    const v = await viewer(A);
    expectError(await emitWithAck(v.socket, "unsubscribe", { fleet: uid("other") }), "forbidden");
  });
});

describe("malformed subscribe requests", () => {
  const bad = [
    ["bbox with three numbers", { bbox: [1, 2, 3] }],
    ["bbox with a string", { bbox: [1, 2, "3", 4] }],
    ["bbox latitude out of range", { bbox: [0, -95, 10, 10] }],
    ["bbox longitude out of range", { bbox: [-190, 0, 10, 10] }],
    ["vehicles not an array", { vehicles: "bus-1" }],
    ["vehicles with a bad id", { vehicles: ["bus 1"] }],
  ];
  for (const [name, request] of bad) {
    test(`${name} → invalid_payload`, async () => {
      const { viewer } = await setup();
      const v = await viewer(B);
      expectError(await emitWithAck(v.socket, "subscribe", request), "invalid_payload", `subscribe ${JSON.stringify(request)}`);
      assert.ok(v.socket.connected);
    });
  }
});

describe("event shape (5.2)", () => {
  test("all fields present when sent, with fleet and receivedAt added", async () => {
    const { fleet, disp, viewer } = await setup();
    const v = await viewer(B);
    await subscribe(v.socket, { vehicles: ["full-1"] });
    const sent = { vehicleId: "full-1", lat: 37.5665, lon: 126.978, ts: tsAt(-1_000), heading: 90, speed: 12.5, accuracy: 5 };
    const before = Date.now();
    await publishAccepted(disp, sent);
    const got = await v.got.waitFor((u) => u.vehicleId === "full-1");
    assertLocationShape(got, { fleet, vehicleId: "full-1" });
    assert.deepEqual(
      Object.keys(got).sort(),
      ["accuracy", "fleet", "heading", "lat", "lon", "receivedAt", "speed", "ts", "vehicleId"],
      JSON.stringify(got),
    );
    for (const k of ["lat", "lon", "ts", "heading", "speed", "accuracy"]) assert.equal(got[k], sent[k], k);
    // receivedAt is the server's receive time (same clock as this machine; bounds are generous).
    assert.ok(got.receivedAt >= before - 5_000 && got.receivedAt <= Date.now() + 5_000, `receivedAt ${got.receivedAt}`);
  });

  test("absent optional fields are omitted, never null", async () => {
    const { fleet, disp, viewer } = await setup();
    const v = await viewer(A);
    await subscribe(v.socket, { vehicles: ["bare-1"] });
    await publishAccepted(disp, { vehicleId: "bare-1", lat: 1.5, lon: 2.5, ts: tsAt() });
    const got = await v.got.waitFor((u) => u.vehicleId === "bare-1");
    assertLocationShape(got, { fleet, vehicleId: "bare-1" });
    assert.deepEqual(Object.keys(got).sort(), ["fleet", "lat", "lon", "receivedAt", "ts", "vehicleId"], JSON.stringify(got));
  });

  test("one optional field present, the others omitted", async () => {
    const { disp, viewer } = await setup();
    const v = await viewer(B);
    await subscribe(v.socket, { vehicles: ["part-1"] });
    await publishAccepted(disp, { vehicleId: "part-1", lat: 1.5, lon: 2.5, ts: tsAt(), speed: 0 });
    const got = await v.got.waitFor((u) => u.vehicleId === "part-1");
    assert.equal(got.speed, 0);
    assert.ok(!("heading" in got) && !("accuracy" in got), JSON.stringify(got));
  });

  test("explicit nulls in the input are treated as absent or refused, never echoed as null", async () => {
    const { disp, viewer, marker } = await setup();
    const v = await viewer(B);
    await subscribe(v.socket, { vehicles: ["null-1"] });
    const ack = await emitWithAck(disp, "locationupdate", {
      vehicleId: "null-1",
      lat: 1.5,
      lon: 2.5,
      ts: tsAt(),
      heading: null,
      speed: null,
    });
    if (ack?.ok) {
      const got = await v.got.waitFor((u) => u.vehicleId === "null-1");
      assertLocationShape(got);
      assert.ok(!("heading" in got) && !("speed" in got), JSON.stringify(got));
    } else {
      expectError(ack, "invalid_payload");
      await marker();
      assert.equal(v.got.count(), 0);
    }
  });
});
