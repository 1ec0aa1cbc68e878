// Tenant isolation (contract 2, 5.3): a token never grants anything outside
// its own fleet. Viewers of fleet A never receive fleet B's updates (even for
// the same vehicle id), cannot subscribe to fleet B, and snapshots never mix
// fleets — across two replicas sharing one Redis.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  connectWithSession,
  emitWithAck,
  expectError,
  publishAccepted,
  record,
  subscribe,
  test,
  tsAt,
  twoReplicas,
  uid,
  waitForEvent,
} from "./lib/harness.mjs";

const cluster = twoReplicas();
const [A, B] = cluster.servers;

describe("tenant isolation", () => {
  test("a fleet A viewer never gets fleet B updates, even for the same vehicle id", async () => {
    const fleetA = uid("fleet-a");
    const fleetB = uid("fleet-b");
    const viewerA = (await connectWithSession(B, cluster.token({ sub: "viewer-a", fleet: fleetA, role: "viewer" }))).socket;
    const viewerB = (await connectWithSession(A, cluster.token({ sub: "viewer-b", fleet: fleetB, role: "viewer" }))).socket;
    const gotA = record(viewerA, "locationupdate");
    const gotB = record(viewerB, "locationupdate");
    await subscribe(viewerA, {});
    await subscribe(viewerA, { vehicles: ["bus-1"] });
    await subscribe(viewerA, { bbox: [-180, -90, 180, 90] });
    await subscribe(viewerB, {});

    const busB = (await connectWithSession(A, cluster.token({ sub: "bus-1", fleet: fleetB, role: "vehicle" }))).socket;
    const dispB = (await connectWithSession(B, cluster.token({ sub: "disp-b", fleet: fleetB, role: "dispatcher" }))).socket;
    const ts = tsAt(-1_000);
    await publishAccepted(busB, { lat: 10, lon: 10, ts });
    await publishAccepted(dispB, { vehicleId: "bus-2", lat: 11, lon: 11, ts });

    // Fleet A's own traffic, as an end marker for viewer A.
    const busA = (await connectWithSession(A, cluster.token({ sub: "bus-1", fleet: fleetA, role: "vehicle" }))).socket;
    await publishAccepted(busA, { lat: 20, lon: 20, ts: tsAt() });

    await gotB.waitFor((u) => u.vehicleId === "bus-2");
    await gotB.waitFor((u) => u.vehicleId === "bus-1");
    await gotA.waitFor((u) => u.vehicleId === "bus-1" && u.lat === 20);
    // Let anything in flight from fleet B arrive before judging.
    await new Promise((r) => setTimeout(r, 500));

    assert.deepEqual(
      gotA.items.filter((u) => u.fleet !== fleetA || u.lat !== 20),
      [],
      "viewer A received another fleet's updates",
    );
    assert.equal(gotA.items.length, 1, `exactly one update for viewer A: ${JSON.stringify(gotA.items)}`);
    assert.ok(gotB.items.every((u) => u.fleet === fleetB), JSON.stringify(gotB.items));
    assert.equal(gotB.count((u) => u.lat === 20), 0, "viewer B received fleet A's update");
  });

  test("subscribing to another fleet → forbidden, for every role", async () => {
    const own = uid("fleet-a");
    const other = uid("fleet-b");
    for (const [role, server] of [
      ["viewer", A],
      ["dispatcher", B],
      ["vehicle", A],
    ]) {
      const socket = (await connectWithSession(server, cluster.token({ sub: `${role}-1`, fleet: own, role }))).socket;
      expectError(await emitWithAck(socket, "subscribe", { fleet: other }), "forbidden", `${role} subscribing to ${other}`);
      expectError(
        await emitWithAck(socket, "subscribe", { fleet: other, vehicles: ["bus-1"] }),
        "forbidden",
        `${role} subscribing to a vehicle of ${other}`,
      );
      // The socket survives and its own fleet still works.
      assert.ok(socket.connected);
      const data = await subscribe(socket, { fleet: own });
      assert.equal(data.fleet, own);
    }
  });

  test("a forbidden subscribe without an ack → exception { event: \"subscribe\", code: \"forbidden\" }", async () => {
    const own = uid("fleet-a");
    const socket = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet: own, role: "viewer" }))).socket;
    const exception = waitForEvent(socket, "exception");
    socket.emit("subscribe", { fleet: uid("fleet-b") });
    const ex = await exception;
    assert.equal(ex.event, "subscribe");
    assert.equal(ex.code, "forbidden");
    assert.equal(typeof ex.message, "string");
    assert.ok(socket.connected, "a forbidden event does not cost the connection");
  });

  test("a forbidden subscribe leaks neither a snapshot nor later updates", async () => {
    const fleetA = uid("fleet-a");
    const fleetB = uid("fleet-b");
    const dispB = (await connectWithSession(A, cluster.token({ sub: "disp-b", fleet: fleetB, role: "dispatcher" }))).socket;
    await publishAccepted(dispB, { vehicleId: "secret-1", lat: 45, lon: 45, ts: tsAt(-1_000) });

    const viewerA = (await connectWithSession(B, cluster.token({ sub: "viewer-a", fleet: fleetA, role: "viewer" }))).socket;
    const gotA = record(viewerA, "locationupdate");
    const ack = await emitWithAck(viewerA, "subscribe", { fleet: fleetB });
    expectError(ack, "forbidden");
    assert.ok(!("data" in ack), `a refused subscribe must carry no data: ${JSON.stringify(ack)}`);

    await publishAccepted(dispB, { vehicleId: "secret-1", lat: 46, lon: 46, ts: tsAt() });
    // End marker in fleet A, after subscribing to it.
    await subscribe(viewerA, {});
    const dispA = (await connectWithSession(A, cluster.token({ sub: "disp-a", fleet: fleetA, role: "dispatcher" }))).socket;
    await publishAccepted(dispA, { vehicleId: "marker", lat: 1, lon: 1, ts: tsAt() });
    await gotA.waitFor((u) => u.vehicleId === "marker");
    assert.equal(gotA.count((u) => u.vehicleId === "secret-1"), 0);
  });

  test("snapshots never mix fleets that share vehicle ids", async () => {
    const fleetA = uid("fleet-a");
    const fleetB = uid("fleet-b");
    const dispA = (await connectWithSession(A, cluster.token({ sub: "disp", fleet: fleetA, role: "dispatcher" }))).socket;
    const dispB = (await connectWithSession(B, cluster.token({ sub: "disp", fleet: fleetB, role: "dispatcher" }))).socket;
    const ts = tsAt(-2_000);
    await publishAccepted(dispA, { vehicleId: "bus-1", lat: 1.25, lon: 1.25, ts });
    await publishAccepted(dispB, { vehicleId: "bus-1", lat: 2.25, lon: 2.25, ts: ts + 10 });
    await publishAccepted(dispB, { vehicleId: "bus-2", lat: 2.5, lon: 2.5, ts });

    // The same ts in the other fleet is not "stale": ordering is per fleet and vehicle.
    await publishAccepted(dispA, { vehicleId: "bus-2", lat: 1.5, lon: 1.5, ts });

    const viewerA = (await connectWithSession(B, cluster.token({ sub: "v", fleet: fleetA, role: "viewer" }))).socket;
    const viewerB = (await connectWithSession(A, cluster.token({ sub: "v", fleet: fleetB, role: "viewer" }))).socket;
    const snapA = await subscribe(viewerA, {});
    const snapB = await subscribe(viewerB, {});
    const simple = (list) =>
      list.map((v) => `${v.fleet}/${v.vehicleId}@${v.lat}`).sort();
    assert.deepEqual(simple(snapA.vehicles), [`${fleetA}/bus-1@1.25`, `${fleetA}/bus-2@1.5`]);
    assert.deepEqual(simple(snapB.vehicles), [`${fleetB}/bus-1@2.25`, `${fleetB}/bus-2@2.5`]);
  });
});
