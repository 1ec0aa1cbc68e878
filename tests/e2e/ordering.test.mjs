// Ordering of location updates (contract 5.1): an update with a ts older than
// or equal to the stored one is answered `accepted: false, reason: "stale"`,
// is not stored and is not broadcast — on one replica and across two replicas
// sharing a Redis, where the compare-and-set must be atomic.

import { before, describe } from "node:test";
import assert from "node:assert/strict";

import {
  connectWithSession,
  publish,
  publishAccepted,
  record,
  subscribe,
  test,
  tsAt,
  twoReplicas,
  uid,
} from "./lib/harness.mjs";

const STALE = { accepted: false, reason: "stale" };

const cluster = twoReplicas();
const [A, B] = cluster.servers;
const fleet = uid("fleet");
let dispA;
let dispB;
let viewer;
let seen;

before(async () => {
  // Top-level `before` hooks may run side by side (Node 20): wait for the fixture's.
  await cluster.start();
  dispA = (await connectWithSession(A, cluster.token({ sub: "disp-a", fleet, role: "dispatcher" }))).socket;
  dispB = (await connectWithSession(B, cluster.token({ sub: "disp-b", fleet, role: "dispatcher" }))).socket;
  viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
  seen = record(viewer, "locationupdate");
  await subscribe(viewer, {});
});

/** Publishes a marker update for a fresh vehicle and waits until the viewer saw it. */
async function drain() {
  const vehicleId = uid("marker");
  await publishAccepted(dispA, { vehicleId, lat: 1, lon: 1, ts: tsAt() });
  await seen.waitFor((u) => u.vehicleId === vehicleId);
}

async function snapshotOf(vehicleId) {
  const data = await subscribe(viewer, { vehicles: [vehicleId] });
  return data.vehicles.find((v) => v.vehicleId === vehicleId);
}

describe("stale updates on one replica", () => {
  test("the same ts twice: the second is stale", async () => {
    const vehicleId = uid("bus");
    const ts = tsAt(-10_000);
    await publishAccepted(dispA, { vehicleId, lat: 37.1, lon: 127.1, ts });
    assert.deepEqual(await publish(dispA, { vehicleId, lat: 37.2, lon: 127.2, ts }), STALE);
    await drain();
    const copies = seen.items.filter((u) => u.vehicleId === vehicleId);
    assert.equal(copies.length, 1, `only the first update is broadcast: ${JSON.stringify(copies)}`);
    assert.equal(copies[0].lat, 37.1);
    const stored = await snapshotOf(vehicleId);
    assert.equal(stored.lat, 37.1, "the duplicate must not overwrite the stored position");
  });

  test("an older ts is stale, a newer one is accepted", async () => {
    const vehicleId = uid("bus");
    const ts = tsAt(-10_000);
    await publishAccepted(dispA, { vehicleId, lat: 10, lon: 10, ts });
    assert.deepEqual(await publish(dispA, { vehicleId, lat: 11, lon: 11, ts: ts - 1 }), STALE);
    assert.deepEqual(await publish(dispA, { vehicleId, lat: 12, lon: 12, ts: ts - 5_000 }), STALE);
    await publishAccepted(dispA, { vehicleId, lat: 13, lon: 13, ts: ts + 1 });
    await seen.waitFor((u) => u.vehicleId === vehicleId && u.lat === 13);
    await drain();
    const lats = seen.items.filter((u) => u.vehicleId === vehicleId).map((u) => u.lat);
    assert.deepEqual(lats, [10, 13]);
    assert.equal((await snapshotOf(vehicleId)).lat, 13);
  });

  test("a vehicle token gets stale answers for its own vehicle", async () => {
    const vehicleId = uid("bus");
    const bus = (await connectWithSession(B, cluster.token({ sub: vehicleId, fleet, role: "vehicle" }))).socket;
    const ts = tsAt(-1_000);
    await publishAccepted(bus, { lat: 5, lon: 5, ts });
    assert.deepEqual(await publish(bus, { lat: 5, lon: 5, ts }), STALE);
    assert.deepEqual(await publish(bus, { busId: vehicleId, location: { latitude: "6", longitude: "6" }, ts: ts - 1 }), STALE);
  });

  test("staleness is per vehicle", async () => {
    const one = uid("bus");
    const two = uid("bus");
    const ts = tsAt(-2_000);
    await publishAccepted(dispA, { vehicleId: one, lat: 1, lon: 2, ts });
    await publishAccepted(dispA, { vehicleId: two, lat: 1, lon: 2, ts: ts - 1_000 });
  });
});

describe("stale updates across replicas", () => {
  test("the same ts on replica B after replica A is stale", async () => {
    const vehicleId = uid("bus");
    const ts = tsAt(-10_000);
    await publishAccepted(dispA, { vehicleId, lat: 20, lon: 20, ts });
    assert.deepEqual(await publish(dispB, { vehicleId, lat: 21, lon: 21, ts }), STALE);
    await drain();
    assert.deepEqual(
      seen.items.filter((u) => u.vehicleId === vehicleId).map((u) => u.lat),
      [20],
    );
  });

  test("an older ts on replica A after replica B is stale", async () => {
    const vehicleId = uid("bus");
    const ts = tsAt(-10_000);
    await publishAccepted(dispB, { vehicleId, lat: 30, lon: 30, ts });
    assert.deepEqual(await publish(dispA, { vehicleId, lat: 31, lon: 31, ts: ts - 100 }), STALE);
    await publishAccepted(dispA, { vehicleId, lat: 32, lon: 32, ts: ts + 100 });
    assert.deepEqual(await publish(dispB, { vehicleId, lat: 33, lon: 33, ts: ts + 50 }), STALE);
    await seen.waitFor((u) => u.vehicleId === vehicleId && u.lat === 32);
    await drain();
    assert.deepEqual(
      seen.items.filter((u) => u.vehicleId === vehicleId).map((u) => u.lat).sort((a, b) => a - b),
      [30, 32],
    );
  });

  test("concurrent publishes of one ts on both replicas: exactly one is accepted", async () => {
    for (let round = 0; round < 5; round += 1) {
      const vehicleId = uid("race");
      const ts = tsAt(-1_000);
      const results = await Promise.all([
        publish(dispA, { vehicleId, lat: 40, lon: 40, ts }),
        publish(dispB, { vehicleId, lat: 41, lon: 41, ts }),
      ]);
      const acceptedCount = results.filter((r) => r.accepted === true).length;
      assert.equal(acceptedCount, 1, `round ${round}: ${JSON.stringify(results)}`);
      for (const r of results) {
        if (!r.accepted) assert.deepEqual(r, STALE);
      }
    }
  });

  test("interleaved increasing updates from both replicas are all accepted and delivered", async () => {
    const vehicleId = uid("bus");
    const base = tsAt(-20_000);
    for (let i = 0; i < 6; i += 1) {
      const sock = i % 2 === 0 ? dispA : dispB;
      await publishAccepted(sock, { vehicleId, lat: 50 + i, lon: 50, ts: base + i * 1_000 });
    }
    await seen.waitFor((u) => u.vehicleId === vehicleId && u.lat === 55);
    await drain();
    // Delivery order across replicas is not part of the contract; the set is.
    const lats = seen.items.filter((u) => u.vehicleId === vehicleId).map((u) => u.lat);
    assert.deepEqual([...lats].sort((a, b) => a - b), [50, 51, 52, 53, 54, 55]);
    assert.equal((await snapshotOf(vehicleId)).lat, 55);
  });
});
