// Vehicle presence (contract 5.4): `vehicle_online` when a vehicle session's
// first socket connects (token or session handshake, or `authenticate`),
// `vehicle_offline` when its last socket is gone on whichever replica, when it
// stops sending updates for FLEETGATE_STALE_AFTER_SECS, or when the replica
// holding it dies. Events go once to every socket subscribed to the fleet or
// to that vehicle, on both replicas, and never to another fleet.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  connect,
  connectWithSession,
  emitWithAck,
  expectNoEvent,
  expectOk,
  publishAccepted,
  record,
  singleNode,
  sleep,
  subscribe,
  test,
  tsAt,
  twoReplicas,
  uid,
  waitForDisconnect,
} from "./lib/harness.mjs";

/** Time for events in flight to arrive before counting them. */
const SETTLE_MS = 500;

/** A viewer subscribed with `request`, recording both presence events. */
async function presenceViewer(cluster, server, fleet, request = {}) {
  const socket = (await connectWithSession(server, cluster.token({ sub: uid("viewer"), fleet, role: "viewer" }))).socket;
  const online = record(socket, "vehicle_online");
  const offline = record(socket, "vehicle_offline");
  await subscribe(socket, request);
  return { socket, online, offline };
}

function assertTime(value, since, what) {
  assert.equal(typeof value, "number", `${what} must be a number`);
  assert.ok(Number.isInteger(value), `${what} must be integral ms: ${value}`);
  assert.ok(value >= since - 5_000 && value <= Date.now() + 5_000, `${what} is not a plausible ms timestamp: ${value}`);
}

function assertOnline(event, { fleet, vehicleId, since }) {
  assert.ok(event && typeof event === "object", `vehicle_online must be an object: ${JSON.stringify(event)}`);
  assert.equal(event.fleet, fleet, `fleet in ${JSON.stringify(event)}`);
  assert.equal(event.vehicleId, vehicleId, `vehicleId in ${JSON.stringify(event)}`);
  assertTime(event.ts, since, `vehicle_online.ts in ${JSON.stringify(event)}`);
}

function assertOffline(event, { fleet, vehicleId, since }) {
  assert.ok(event && typeof event === "object", `vehicle_offline must be an object: ${JSON.stringify(event)}`);
  assert.equal(event.fleet, fleet, `fleet in ${JSON.stringify(event)}`);
  assert.equal(event.vehicleId, vehicleId, `vehicleId in ${JSON.stringify(event)}`);
  assertTime(event.lastSeen, since, `vehicle_offline.lastSeen in ${JSON.stringify(event)}`);
}

const isVehicle = (vehicleId) => (e) => e.vehicleId === vehicleId;

/** Resolves with the `n`th (1-based) recorded event matching `predicate`. */
async function nth(recorder, predicate, n, ms = 5_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const matches = recorder.items.filter(predicate);
    if (matches.length >= n) return matches[n - 1];
    if (Date.now() > deadline) {
      throw new Error(`expected ${n} matching events within ${ms} ms, got ${JSON.stringify(recorder.items)}`);
    }
    await sleep(50);
  }
}

describe("presence across two replicas sharing Redis", () => {
  const cluster = twoReplicas();
  const [A, B] = cluster.servers;

  test("a vehicle is announced online and offline to fleet subscribers on both replicas", async () => {
    const since = Date.now();
    const fleet = uid("fleet");
    const onA = await presenceViewer(cluster, A, fleet);
    const onB = await presenceViewer(cluster, B, fleet);

    const bus = (await connectWithSession(A, cluster.token({ sub: "bus-1", fleet, role: "vehicle" }))).socket;
    for (const v of [onA, onB]) {
      assertOnline(await v.online.waitFor(isVehicle("bus-1")), { fleet, vehicleId: "bus-1", since });
    }
    assert.equal(onA.offline.items.length + onB.offline.items.length, 0, "offline before the vehicle left");

    bus.disconnect();
    for (const v of [onA, onB]) {
      assertOffline(await v.offline.waitFor(isVehicle("bus-1")), { fleet, vehicleId: "bus-1", since });
    }
    await sleep(SETTLE_MS);
    for (const [name, v] of [["A", onA], ["B", onB]]) {
      assert.equal(v.online.items.length, 1, `viewer on ${name}: online events ${JSON.stringify(v.online.items)}`);
      assert.equal(v.offline.items.length, 1, `viewer on ${name}: offline events ${JSON.stringify(v.offline.items)}`);
    }
  });

  test("the vehicleId is the token's vehicle claim, not its sub", async () => {
    const since = Date.now();
    const fleet = uid("fleet");
    const viewer = await presenceViewer(cluster, B, fleet);
    const bus = (await connectWithSession(A, cluster.token({ sub: "driver-7", fleet, role: "vehicle", vehicle: "bus-42" })))
      .socket;
    assertOnline(await viewer.online.waitFor(), { fleet, vehicleId: "bus-42", since });
    bus.disconnect();
    assertOffline(await viewer.offline.waitFor(), { fleet, vehicleId: "bus-42", since });
  });

  test("a vehicle that authenticates after connecting is announced", async () => {
    const since = Date.now();
    const fleet = uid("fleet");
    const viewer = await presenceViewer(cluster, A, fleet);
    const bus = await connect(B);
    await sleep(300);
    assert.equal(viewer.online.items.length, 0, "an unauthenticated socket is nobody's presence");
    expectOk(await emitWithAck(bus, "authenticate", { token: cluster.token({ sub: "bus-3", fleet, role: "vehicle" }) }));
    assertOnline(await viewer.online.waitFor(isVehicle("bus-3")), { fleet, vehicleId: "bus-3", since });
    bus.disconnect();
    assertOffline(await viewer.offline.waitFor(isVehicle("bus-3")), { fleet, vehicleId: "bus-3", since });
  });

  test("resuming a vehicle session on the other replica brings it back online", async () => {
    const since = Date.now();
    const fleet = uid("fleet");
    const viewer = await presenceViewer(cluster, A, fleet);
    const first = await connectWithSession(A, cluster.token({ sub: "bus-5", fleet, role: "vehicle" }));
    await viewer.online.waitFor(isVehicle("bus-5"));
    first.socket.disconnect();
    await viewer.offline.waitFor(isVehicle("bus-5"));

    const resumed = (await connectWithSession(B, { session: first.session.sessionId })).socket;
    assertOnline(await nth(viewer.online, isVehicle("bus-5"), 2), { fleet, vehicleId: "bus-5", since });
    resumed.disconnect();
    assertOffline(await nth(viewer.offline, isVehicle("bus-5"), 2), { fleet, vehicleId: "bus-5", since });
    await sleep(SETTLE_MS);
    assert.equal(viewer.online.items.length, 2, JSON.stringify(viewer.online.items));
    assert.equal(viewer.offline.items.length, 2, JSON.stringify(viewer.offline.items));
  });

  test("a vehicle connected to both replicas stays online until both sockets are gone", async () => {
    const since = Date.now();
    const fleet = uid("fleet");
    const onA = await presenceViewer(cluster, A, fleet);
    const onB = await presenceViewer(cluster, B, fleet);

    const first = await connectWithSession(A, cluster.token({ sub: "bus-8", fleet, role: "vehicle" }));
    await onA.online.waitFor(isVehicle("bus-8"));
    await onB.online.waitFor(isVehicle("bus-8"));
    const second = (await connectWithSession(B, { session: first.session.sessionId })).socket;
    await sleep(SETTLE_MS);
    assert.equal(onA.online.items.length, 1, `a second socket re-announced the vehicle: ${JSON.stringify(onA.online.items)}`);
    assert.equal(onB.online.items.length, 1, `a second socket re-announced the vehicle: ${JSON.stringify(onB.online.items)}`);

    first.socket.disconnect();
    await Promise.all([
      expectNoEvent(onA.socket, "vehicle_offline", 2_000),
      expectNoEvent(onB.socket, "vehicle_offline", 2_000),
    ]);

    second.disconnect();
    for (const v of [onA, onB]) {
      assertOffline(await v.offline.waitFor(isVehicle("bus-8")), { fleet, vehicleId: "bus-8", since });
    }
    await sleep(SETTLE_MS);
    assert.equal(onA.offline.items.length, 1, JSON.stringify(onA.offline.items));
    assert.equal(onB.offline.items.length, 1, JSON.stringify(onB.offline.items));
  });

  test("subscribers to a vehicle get its presence; subscribers to other vehicles do not", async () => {
    const since = Date.now();
    const fleet = uid("fleet");
    const watchesBus1 = await presenceViewer(cluster, B, fleet, { vehicles: ["bus-1"] });
    const watchesBus2 = await presenceViewer(cluster, A, fleet, { vehicles: ["bus-2"] });

    const bus1 = (await connectWithSession(A, cluster.token({ sub: "bus-1", fleet, role: "vehicle" }))).socket;
    assertOnline(await watchesBus1.online.waitFor(), { fleet, vehicleId: "bus-1", since });
    bus1.disconnect();
    assertOffline(await watchesBus1.offline.waitFor(), { fleet, vehicleId: "bus-1", since });

    // bus-2 as an end marker for the second viewer.
    await connectWithSession(B, cluster.token({ sub: "bus-2", fleet, role: "vehicle" }));
    assertOnline(await watchesBus2.online.waitFor(), { fleet, vehicleId: "bus-2", since });
    await sleep(SETTLE_MS);
    assert.deepEqual(watchesBus2.online.items.map((e) => e.vehicleId), ["bus-2"]);
    assert.deepEqual(watchesBus2.offline.items, []);
    assert.deepEqual(watchesBus1.online.items.map((e) => e.vehicleId), ["bus-1"]);
  });

  test("a socket subscribed to the fleet and to the vehicle gets each event once", async () => {
    const fleet = uid("fleet");
    const viewers = [];
    for (const server of [A, B]) {
      const v = await presenceViewer(cluster, server, fleet);
      await subscribe(v.socket, { vehicles: ["bus-9"] });
      await subscribe(v.socket, { bbox: [-180, -90, 180, 90] });
      viewers.push(v);
    }
    const bus = (await connectWithSession(B, cluster.token({ sub: "bus-9", fleet, role: "vehicle" }))).socket;
    await publishAccepted(bus, { lat: 10.5, lon: 20.5, ts: tsAt() });
    for (const v of viewers) await v.online.waitFor(isVehicle("bus-9"));
    bus.disconnect();
    for (const v of viewers) await v.offline.waitFor(isVehicle("bus-9"));
    await sleep(SETTLE_MS);
    for (const v of viewers) {
      assert.equal(v.online.items.length, 1, `vehicle_online: ${JSON.stringify(v.online.items)}`);
      assert.equal(v.offline.items.length, 1, `vehicle_offline: ${JSON.stringify(v.offline.items)}`);
    }
  });

  test("other fleets, non-vehicle sessions and unsubscribed sockets produce or receive no presence", async () => {
    const since = Date.now();
    const fleetX = uid("fleet-x");
    const fleetY = uid("fleet-y");
    const xViewer = await presenceViewer(cluster, A, fleetX);
    const yOnA = await presenceViewer(cluster, A, fleetY);
    const yOnB = await presenceViewer(cluster, B, fleetY, { vehicles: ["bus-1"] });
    // Authenticated in fleet X but subscribed to nothing.
    const idle = (await connectWithSession(B, cluster.token({ sub: "idle", fleet: fleetX, role: "viewer" }))).socket;
    const idleOnline = record(idle, "vehicle_online");
    const idleOffline = record(idle, "vehicle_offline");

    // Sessions of other roles are no vehicles.
    const disp = (await connectWithSession(B, cluster.token({ sub: "bus-77", fleet: fleetX, role: "dispatcher" }))).socket;
    await connectWithSession(A, cluster.token({ sub: "bus-78", fleet: fleetX, role: "viewer" }));
    await publishAccepted(disp, { vehicleId: "bus-79", lat: 1.5, lon: 1.5, ts: tsAt() });

    // Fleet X's bus-1 comes and goes.
    const busX = (await connectWithSession(B, cluster.token({ sub: "bus-1", fleet: fleetX, role: "vehicle" }))).socket;
    await xViewer.online.waitFor(isVehicle("bus-1"));
    busX.disconnect();
    await xViewer.offline.waitFor(isVehicle("bus-1"));

    // Fleet Y's own bus-1 as an end marker.
    const busY = (await connectWithSession(A, cluster.token({ sub: "bus-1", fleet: fleetY, role: "vehicle" }))).socket;
    for (const v of [yOnA, yOnB]) assertOnline(await v.online.waitFor(), { fleet: fleetY, vehicleId: "bus-1", since });
    await sleep(SETTLE_MS);

    assert.deepEqual(xViewer.online.items.map((e) => e.vehicleId), ["bus-1"], "only vehicle sessions are announced");
    assert.ok(xViewer.online.items.every((e) => e.fleet === fleetX));
    for (const v of [yOnA, yOnB]) {
      assert.equal(v.online.items.length, 1, `fleet Y saw fleet X's presence: ${JSON.stringify(v.online.items)}`);
      assert.deepEqual(v.offline.items, [], "fleet Y saw fleet X's vehicle_offline");
    }
    assert.deepEqual(idleOnline.items, [], "an unsubscribed socket got vehicle_online");
    assert.deepEqual(idleOffline.items, [], "an unsubscribed socket got vehicle_offline");
    busY.disconnect();
  });
});

describe("stale vehicles (FLEETGATE_STALE_AFTER_SECS=2)", () => {
  const cluster = twoReplicas({ env: { FLEETGATE_STALE_AFTER_SECS: "2" } });
  const [A, B] = cluster.servers;

  test("a silent vehicle goes offline while connected, and its next update brings it back online", async () => {
    const since = Date.now();
    const fleet = uid("fleet");
    const onA = await presenceViewer(cluster, A, fleet);
    const onB = await presenceViewer(cluster, B, fleet);

    const quiet = (await connectWithSession(A, cluster.token({ sub: "quiet", fleet, role: "vehicle" }))).socket;
    const chatty = (await connectWithSession(B, cluster.token({ sub: "chatty", fleet, role: "vehicle" }))).socket;
    let lat = 10;
    let failure = null;
    const ticker = setInterval(() => {
      lat += 0.001;
      publishAccepted(chatty, { lat, lon: 20, ts: tsAt() }).catch((e) => {
        failure ??= e;
      });
    }, 400);
    try {
      await publishAccepted(quiet, { lat: 30, lon: 40, ts: tsAt() });
      for (const v of [onA, onB]) {
        await v.online.waitFor(isVehicle("quiet"));
        await v.online.waitFor(isVehicle("chatty"));
      }

      for (const v of [onA, onB]) {
        assertOffline(await v.offline.waitFor(isVehicle("quiet"), 6_000), { fleet, vehicleId: "quiet", since });
      }
      assert.ok(quiet.connected, "going stale does not disconnect the vehicle");

      await publishAccepted(quiet, { lat: 30.001, lon: 40, ts: tsAt() });
      for (const v of [onA, onB]) {
        assertOnline(await nth(v.online, isVehicle("quiet"), 2), { fleet, vehicleId: "quiet", since });
      }
      if (failure) throw failure;
      for (const v of [onA, onB]) {
        assert.equal(v.offline.count(isVehicle("chatty")), 0, `a vehicle sending updates went offline: ${JSON.stringify(v.offline.items)}`);
        assert.equal(v.offline.count(isVehicle("quiet")), 1, JSON.stringify(v.offline.items));
      }
    } finally {
      clearInterval(ticker);
    }
  });
});

describe("a replica killed with SIGKILL (FLEETGATE_PRESENCE_TTL_SECS=2)", () => {
  const cluster = twoReplicas({ env: { FLEETGATE_PRESENCE_TTL_SECS: "2" } });
  const [A, B] = cluster.servers;

  test("its vehicles go offline on the surviving replica; the others stay online", async () => {
    const since = Date.now();
    const fleet = uid("fleet");
    const viewer = await presenceViewer(cluster, B, fleet);
    const doomed = (await connectWithSession(A, cluster.token({ sub: "bus-a", fleet, role: "vehicle" }))).socket;
    await connectWithSession(B, cluster.token({ sub: "bus-b", fleet, role: "vehicle" }));
    await publishAccepted(doomed, { lat: 50, lon: 8, ts: tsAt() });
    await viewer.online.waitFor(isVehicle("bus-a"));
    await viewer.online.waitFor(isVehicle("bus-b"));

    // Healthy replicas keep their vehicles alive past the presence TTL.
    await expectNoEvent(viewer.socket, "vehicle_offline", 3_000);

    const closed = waitForDisconnect(doomed, 15_000).catch(() => {});
    A.child.kill("SIGKILL");
    await closed;
    assertOffline(await viewer.offline.waitFor(isVehicle("bus-a"), 15_000), { fleet, vehicleId: "bus-a", since });
    await sleep(SETTLE_MS);
    assert.equal(viewer.offline.count(isVehicle("bus-b")), 0, `a vehicle on the live replica went offline: ${JSON.stringify(viewer.offline.items)}`);
    assert.equal(viewer.offline.count(isVehicle("bus-a")), 1, JSON.stringify(viewer.offline.items));
  });
});

describe("presence on a single in-memory node", () => {
  const cluster = singleNode();
  const [S] = cluster.servers;

  test("online, a second socket, offline after the last one", async () => {
    const since = Date.now();
    const fleet = uid("fleet");
    const viewer = await presenceViewer(cluster, S, fleet);
    const first = await connectWithSession(S, cluster.token({ sub: "bus-1", fleet, role: "vehicle" }));
    assertOnline(await viewer.online.waitFor(), { fleet, vehicleId: "bus-1", since });
    const second = (await connectWithSession(S, { session: first.session.sessionId })).socket;
    first.socket.disconnect();
    await expectNoEvent(viewer.socket, "vehicle_offline", 1_500);
    second.disconnect();
    assertOffline(await viewer.offline.waitFor(), { fleet, vehicleId: "bus-1", since });
    await sleep(SETTLE_MS);
    assert.equal(viewer.online.items.length, 1, JSON.stringify(viewer.online.items));
    assert.equal(viewer.offline.items.length, 1, JSON.stringify(viewer.offline.items));
  });
});
