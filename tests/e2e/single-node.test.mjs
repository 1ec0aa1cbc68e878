// Embedded single-node mode (contract 8, FLEETGATE_REDIS_URL unset): the same
// contract holds with everything in memory — handshake and resume, snapshot,
// stale handling, filters, exactly-once delivery, tenant isolation, polling.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  assertLocationShape,
  connect,
  connectError,
  connectWithSession,
  emitWithAck,
  expectError,
  expectOk,
  publish,
  publishAccepted,
  record,
  singleNode,
  sleep,
  subscribe,
  test,
  tsAt,
  uid,
} from "./lib/harness.mjs";

const cluster = singleNode();
const [S] = cluster.servers;

describe("single node in memory", () => {
  test("readyz is 200 without Redis", async () => {
    const res = await fetch(`${S.url}/readyz`);
    assert.equal(res.status, 200);
  });

  test("handshake, session event and resume", async () => {
    const fleet = uid("fleet");
    const first = await connectWithSession(S, cluster.token({ sub: "bus-1", fleet, role: "vehicle" }));
    assert.equal(first.session.vehicle, "bus-1");
    const resumed = await connectWithSession(S, { session: first.session.sessionId });
    assert.equal(resumed.session.sessionId, first.session.sessionId);
    assert.equal((await connectError(S, { auth: { session: "nope" } })).message, "session_expired");
    assert.equal(
      (await connectError(S, { auth: { token: cluster.token({ sub: "x", fleet, role: "viewer", exp: Math.floor(Date.now() / 1000) - 5 }) } })).message,
      "token_expired",
    );
  });

  test("authenticate event with provider, unauthenticated before it", async () => {
    const fleet = uid("fleet");
    const socket = await connect(S);
    expectError(await emitWithAck(socket, "subscribe", {}), "unauthenticated");
    expectError(
      await emitWithAck(socket, "authenticate", { provider: "elsewhere", token: cluster.token({ sub: "r", fleet, role: "viewer" }) }),
      "forbidden",
    );
    expectOk(await emitWithAck(socket, "authenticate", { provider: fleet, token: cluster.token({ sub: "r", fleet, role: "viewer" }) }));
    expectOk(await emitWithAck(socket, "subscribe", {}));
  });

  test("snapshot with vehicles and bbox filters", async () => {
    const fleet = uid("fleet");
    const disp = (await connectWithSession(S, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
    await publishAccepted(disp, { vehicleId: "bus-1", lat: 37.5665, lon: 126.978, ts: tsAt() });
    await publishAccepted(disp, { vehicleId: "bus-2", lat: 37.4, lon: 127.1, ts: tsAt() });
    await publishAccepted(disp, { vehicleId: "bus-3", lat: 35.18, lon: 129.08, ts: tsAt() });
    const viewer = (await connectWithSession(S, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    const all = await subscribe(viewer, {});
    assert.equal(all.fleet, fleet);
    assert.deepEqual(all.vehicles.map((v) => v.vehicleId).sort(), ["bus-1", "bus-2", "bus-3"]);
    for (const v of all.vehicles) assertLocationShape(v, { fleet });
    const some = await subscribe(viewer, { vehicles: ["bus-2"] });
    assert.deepEqual(some.vehicles.map((v) => v.vehicleId), ["bus-2"]);
    const boxed = await subscribe(viewer, { bbox: [126.5, 37.0, 127.5, 38.0] });
    assert.deepEqual(boxed.vehicles.map((v) => v.vehicleId).sort(), ["bus-1", "bus-2"]);
  });

  test("duplicates and older updates are stale", async () => {
    const fleet = uid("fleet");
    const disp = (await connectWithSession(S, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
    const ts = tsAt(-5_000);
    await publishAccepted(disp, { vehicleId: "bus-1", lat: 1, lon: 1, ts });
    assert.deepEqual(await publish(disp, { vehicleId: "bus-1", lat: 1, lon: 1, ts }), { accepted: false, reason: "stale" });
    assert.deepEqual(await publish(disp, { vehicleId: "bus-1", lat: 1, lon: 1, ts: ts - 1 }), { accepted: false, reason: "stale" });
  });

  test("bbox and vehicle subscriptions, exactly once when overlapping", async () => {
    const fleet = uid("fleet");
    const disp = (await connectWithSession(S, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
    const all = (await connectWithSession(S, cluster.token({ sub: "all", fleet, role: "viewer" }))).socket;
    const allGot = record(all, "locationupdate");
    await subscribe(all, {});
    const v = (await connectWithSession(S, cluster.token({ sub: "v", fleet, role: "viewer" }))).socket;
    const got = record(v, "locationupdate");
    await subscribe(v, { bbox: [126, 37, 128, 38] });
    await subscribe(v, { vehicles: ["bus-1"] });
    await subscribe(v, {});
    const w = (await connectWithSession(S, cluster.token({ sub: "w", fleet, role: "viewer" }))).socket;
    const wGot = record(w, "locationupdate");
    await subscribe(w, { bbox: [126, 37, 128, 38] });

    await publishAccepted(disp, { vehicleId: "bus-1", lat: 37.5, lon: 127, ts: tsAt() });
    await publishAccepted(disp, { vehicleId: "far-1", lat: 10, lon: 10, ts: tsAt() });
    await allGot.waitFor((u) => u.vehicleId === "far-1");
    await wGot.waitFor((u) => u.vehicleId === "bus-1");
    await got.waitFor((u) => u.vehicleId === "far-1");
    await sleep(300);
    assert.equal(got.count((u) => u.vehicleId === "bus-1"), 1, JSON.stringify(got.items));
    assert.equal(wGot.count((u) => u.vehicleId === "far-1"), 0, "outside the box");
  });

  test("tenant isolation", async () => {
    const fleetA = uid("fleet-a");
    const fleetB = uid("fleet-b");
    const viewerA = (await connectWithSession(S, cluster.token({ sub: "va", fleet: fleetA, role: "viewer" }))).socket;
    const gotA = record(viewerA, "locationupdate");
    await subscribe(viewerA, {});
    expectError(await emitWithAck(viewerA, "subscribe", { fleet: fleetB }), "forbidden");
    const dispB = (await connectWithSession(S, cluster.token({ sub: "db", fleet: fleetB, role: "dispatcher" }))).socket;
    const dispA = (await connectWithSession(S, cluster.token({ sub: "da", fleet: fleetA, role: "dispatcher" }))).socket;
    await publishAccepted(dispB, { vehicleId: "bus-1", lat: 2, lon: 2, ts: tsAt() });
    await publishAccepted(dispA, { vehicleId: "marker", lat: 3, lon: 3, ts: tsAt() });
    await gotA.waitFor((u) => u.vehicleId === "marker");
    await sleep(200);
    assert.deepEqual(gotA.items.map((u) => u.fleet), [fleetA]);
  });

  test("long-polling connect, publish and receive", async () => {
    const fleet = uid("fleet");
    const polling = { transports: ["polling"], upgrade: false };
    const viewer = (await connectWithSession(S, cluster.token({ sub: "v", fleet, role: "viewer" }), polling)).socket;
    assert.equal(viewer.io.engine.transport.name, "polling");
    const got = record(viewer, "locationupdate");
    await subscribe(viewer, {});
    const bus = (await connectWithSession(S, cluster.token({ sub: "bus-1", fleet, role: "vehicle" }), polling)).socket;
    await publishAccepted(bus, { busId: "bus-1", location: { latitude: 37.5, longitude: 127.0 } });
    const u = await got.waitFor((x) => x.vehicleId === "bus-1");
    assertLocationShape(u, { fleet, vehicleId: "bus-1" });
  });
});
