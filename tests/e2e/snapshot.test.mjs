// Snapshot on subscribe (contract 5.3): the `subscribe` ack carries the
// last-known position of every vehicle in scope — whole fleet, a vehicle list
// or a bbox — as 5.2 objects, including positions published on the other
// replica before the subscriber connected.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  assertLocationShape,
  byVehicle,
  connectWithSession,
  publish,
  publishAccepted,
  subscribe,
  test,
  tsAt,
  twoReplicas,
  uid,
} from "./lib/harness.mjs";

const cluster = twoReplicas();
const [A, B] = cluster.servers;

/** A fleet with three vehicles published on replica A (each by its own vehicle token). */
async function fleetWithThree() {
  const fleet = uid("fleet");
  const ts = tsAt(-5_000);
  const vehicles = [
    { vehicleId: "bus-1", lat: 37.5665, lon: 126.978, ts, heading: 90, speed: 12.5, accuracy: 5 },
    { vehicleId: "bus-2", lat: 37.4, lon: 127.1, ts: ts + 1 },
    { vehicleId: "bus-3", lat: 35.1796, lon: 129.0756, ts: ts + 2, speed: 0 },
  ];
  for (const v of vehicles) {
    const bus = (await connectWithSession(A, cluster.token({ sub: v.vehicleId, fleet, role: "vehicle" }))).socket;
    await publishAccepted(bus, v);
    bus.disconnect();
  }
  return { fleet, vehicles };
}

function assertMatches(got, sent, fleet) {
  assert.ok(got, `vehicle ${sent.vehicleId} missing from the snapshot`);
  assertLocationShape(got, { fleet, vehicleId: sent.vehicleId });
  assert.equal(got.lat, sent.lat);
  assert.equal(got.lon, sent.lon);
  assert.equal(got.ts, sent.ts);
  for (const k of ["heading", "speed", "accuracy"]) {
    if (k in sent) assert.equal(got[k], sent[k], `${k} of ${sent.vehicleId}`);
    else assert.ok(!(k in got), `${k} must be omitted for ${sent.vehicleId}: ${JSON.stringify(got)}`);
  }
}

describe("subscribe snapshot", () => {
  test("a viewer on replica B sees all three vehicles published on replica A", async () => {
    const { fleet, vehicles } = await fleetWithThree();
    const viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    const data = await subscribe(viewer, {});
    assert.equal(data.fleet, fleet);
    assert.ok(Array.isArray(data.vehicles), `vehicles must be an array: ${JSON.stringify(data)}`);
    assert.equal(data.vehicles.length, 3, JSON.stringify(data.vehicles));
    for (const v of vehicles) assertMatches(byVehicle(data.vehicles, v.vehicleId), v, fleet);
  });

  test("the same snapshot is served on replica A", async () => {
    const { fleet, vehicles } = await fleetWithThree();
    const viewer = (await connectWithSession(A, cluster.token({ sub: "viewer", fleet, role: "dispatcher" }))).socket;
    const data = await subscribe(viewer, { fleet });
    assert.equal(data.fleet, fleet);
    assert.deepEqual(data.vehicles.map((v) => v.vehicleId).sort(), ["bus-1", "bus-2", "bus-3"]);
    for (const v of vehicles) assertMatches(byVehicle(data.vehicles, v.vehicleId), v, fleet);
  });

  test("vehicles filter: only the listed vehicles", async () => {
    const { fleet, vehicles } = await fleetWithThree();
    const viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    const data = await subscribe(viewer, { vehicles: ["bus-1", "bus-3", "bus-unknown"] });
    assert.equal(data.fleet, fleet);
    assert.deepEqual(data.vehicles.map((v) => v.vehicleId).sort(), ["bus-1", "bus-3"]);
    assertMatches(byVehicle(data.vehicles, "bus-1"), vehicles[0], fleet);
    assertMatches(byVehicle(data.vehicles, "bus-3"), vehicles[2], fleet);
  });

  test("bbox filter: only vehicles inside the box (Seoul, not Busan)", async () => {
    const { fleet } = await fleetWithThree();
    const viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    const data = await subscribe(viewer, { bbox: [126.5, 37.0, 127.5, 38.0] });
    assert.deepEqual(data.vehicles.map((v) => v.vehicleId).sort(), ["bus-1", "bus-2"]);
  });

  test("bbox filter is inclusive on its edges", async () => {
    const { fleet } = await fleetWithThree();
    const viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    // bus-2 sits exactly on the south-east corner, bus-1 exactly on the west edge.
    const data = await subscribe(viewer, { bbox: [126.978, 37.0, 127.1, 37.4] });
    assert.deepEqual(data.vehicles.map((v) => v.vehicleId).sort(), ["bus-2"]);
    const data2 = await subscribe(viewer, { bbox: [126.978, 37.4, 127.1, 37.5665] });
    assert.deepEqual(data2.vehicles.map((v) => v.vehicleId).sort(), ["bus-1", "bus-2"]);
  });

  test("a bbox with nothing inside gives an empty snapshot", async () => {
    const { fleet } = await fleetWithThree();
    const viewer = (await connectWithSession(A, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    const data = await subscribe(viewer, { bbox: [-10, -10, -5, -5] });
    assert.deepEqual(data, { fleet, vehicles: [] });
  });

  test("an empty fleet gives an empty snapshot", async () => {
    const fleet = uid("fleet");
    const viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    assert.deepEqual(await subscribe(viewer, {}), { fleet, vehicles: [] });
  });

  test("the snapshot holds the newest position only, never a stale one", async () => {
    const fleet = uid("fleet");
    const disp = (await connectWithSession(A, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
    const ts = tsAt(-3_000);
    await publishAccepted(disp, { vehicleId: "bus-9", lat: 1.5, lon: 1.5, ts });
    await publishAccepted(disp, { vehicleId: "bus-9", lat: 2.5, lon: 2.5, ts: ts + 1_000, heading: 45 });
    assert.deepEqual(await publish(disp, { vehicleId: "bus-9", lat: 3.5, lon: 3.5, ts: ts + 500 }), {
      accepted: false,
      reason: "stale",
    });
    const viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    const data = await subscribe(viewer, {});
    assert.equal(data.vehicles.length, 1);
    assertMatches(data.vehicles[0], { vehicleId: "bus-9", lat: 2.5, lon: 2.5, ts: ts + 1_000, heading: 45 }, fleet);
  });

  test("the bus-app form is stored like any other update", async () => {
    const fleet = uid("fleet");
    const bus = (await connectWithSession(A, cluster.token({ sub: "bus-42", fleet, role: "vehicle" }))).socket;
    await publishAccepted(bus, { busId: "bus-42", location: { latitude: "37.5", longitude: "127.0" } });
    const viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    const data = await subscribe(viewer, { vehicles: ["bus-42"] });
    assert.equal(data.vehicles.length, 1);
    assertLocationShape(data.vehicles[0], { fleet, vehicleId: "bus-42" });
    assert.equal(data.vehicles[0].lat, 37.5);
    assert.equal(data.vehicles[0].lon, 127.0);
  });
});
