// Conflation (contract 5.2, FLEETGATE_BATCH_MS > 0): subscribers receive
// `locations` events `{ fleet, items }` holding at most one (the newest)
// position per vehicle per window instead of individual `locationupdate`
// events, and the newest position of every vehicle gets through — across two
// replicas sharing a Redis.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  assertLocationShape,
  connectWithSession,
  publishAccepted,
  record,
  sleep,
  subscribe,
  test,
  tsAt,
  twoReplicas,
  uid,
} from "./lib/harness.mjs";

const cluster = twoReplicas({ env: { FLEETGATE_BATCH_MS: "200" } });
const [A, B] = cluster.servers;

describe("conflation with FLEETGATE_BATCH_MS=200", () => {
  test("batches carry the newest position per vehicle, never locationupdate", async () => {
    const fleet = uid("fleet");
    const viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    const batches = record(viewer, "locations");
    const singles = record(viewer, "locationupdate");
    await subscribe(viewer, {});

    const disp = (await connectWithSession(A, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
    const base = tsAt(-10_000);
    const last = {};
    for (let i = 0; i < 10; i += 1) {
      const vehicleId = `bus-${i % 3}`;
      const ts = base + i * 10;
      await publishAccepted(disp, { vehicleId, lat: 10 + i, lon: 20, ts });
      last[vehicleId] = ts;
    }

    try {
      for (const [vehicleId, ts] of Object.entries(last)) {
        await batches.waitFor((b) => b.items.some((it) => it.vehicleId === vehicleId && it.ts === ts), 5_000);
      }
    } finally {
      assert.equal(
        singles.items.length,
        0,
        `no locationupdate with conflation on, got ${singles.items.length}: ${JSON.stringify(singles.items).slice(0, 500)}`,
      );
    }
    await sleep(500);
    assert.equal(singles.items.length, 0, `no locationupdate with conflation on: ${JSON.stringify(singles.items)}`);
    let delivered = 0;
    for (const batch of batches.items) {
      assert.equal(batch.fleet, fleet, JSON.stringify(batch));
      assert.ok(Array.isArray(batch.items) && batch.items.length > 0, JSON.stringify(batch));
      const ids = batch.items.map((it) => it.vehicleId);
      assert.equal(new Set(ids).size, ids.length, `one item per vehicle per batch: ${JSON.stringify(batch)}`);
      for (const it of batch.items) {
        assertLocationShape(it, { fleet });
        delivered += 1;
      }
    }
    assert.ok(delivered <= 10, `never more items than updates: ${delivered}`);
    // The newest position of each vehicle is the last one it got.
    for (const [vehicleId, ts] of Object.entries(last)) {
      const seen = batches.items.flatMap((b) => b.items).filter((it) => it.vehicleId === vehicleId).map((it) => it.ts);
      assert.equal(seen[seen.length - 1], ts, `${vehicleId} ends on its newest position: ${seen}`);
      assert.deepEqual([...seen].sort((a, b) => a - b), seen, `${vehicleId} positions arrive in order`);
    }
  });

  test("filters still apply to batches", async () => {
    const fleet = uid("fleet");
    const viewer = (await connectWithSession(A, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    const batches = record(viewer, "locations");
    const singles = record(viewer, "locationupdate");
    await subscribe(viewer, { vehicles: ["bus-1"] });
    const disp = (await connectWithSession(B, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
    await publishAccepted(disp, { vehicleId: "bus-2", lat: 1, lon: 1, ts: tsAt() });
    await publishAccepted(disp, { vehicleId: "bus-1", lat: 2, lon: 2, ts: tsAt() });
    try {
      await batches.waitFor((b) => b.items.some((it) => it.vehicleId === "bus-1"), 5_000);
    } finally {
      assert.equal(singles.items.length, 0, `no locationupdate with conflation on: ${JSON.stringify(singles.items)}`);
    }
    await sleep(500);
    const ids = batches.items.flatMap((b) => b.items.map((it) => it.vehicleId));
    assert.deepEqual(ids, ["bus-1"]);
  });
});
