// Expiry of last-known positions (contract 5.1 storage, 5.3 "unexpired"):
// with FLEETGATE_LOCATION_TTL_SECS=1 a position is in the snapshot right after
// it was published and gone from it a few seconds later — across two replicas
// sharing a Redis and on a single in-memory node.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  connectWithSession,
  publishAccepted,
  singleNode,
  sleep,
  subscribe,
  test,
  tsAt,
  twoReplicas,
  uid,
} from "./lib/harness.mjs";

const TTL_ENV = { FLEETGATE_LOCATION_TTL_SECS: "1" };

for (const mode of ["redis", "memory"]) {
  describe(`location TTL (${mode === "redis" ? "two replicas sharing Redis" : "single in-memory node"})`, () => {
    const cluster = mode === "redis" ? twoReplicas({ env: TTL_ENV }) : singleNode({ env: TTL_ENV });
    const pub = cluster.servers[0];
    const sub = cluster.servers[cluster.servers.length - 1];

    test("a position leaves the snapshot after its TTL", async () => {
      const fleet = uid("fleet");
      const disp = (await connectWithSession(pub, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
      await publishAccepted(disp, { vehicleId: "bus-1", lat: 37.5, lon: 127, ts: tsAt() });
      await publishAccepted(disp, { vehicleId: "bus-2", lat: 37.6, lon: 127.1, ts: tsAt() });

      const viewer = (await connectWithSession(sub, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
      const fresh = await subscribe(viewer, {});
      assert.deepEqual(fresh.vehicles.map((v) => v.vehicleId).sort(), ["bus-1", "bus-2"]);

      await sleep(2_500);
      assert.deepEqual(await subscribe(viewer, {}), { fleet, vehicles: [] }, "fleet snapshot after the TTL");
      assert.deepEqual(await subscribe(viewer, { vehicles: ["bus-1"] }), { fleet, vehicles: [] }, "vehicle snapshot");
      assert.deepEqual(await subscribe(viewer, { bbox: [126, 37, 128, 38] }), { fleet, vehicles: [] }, "bbox snapshot");
    });

    test("a newer update after expiry is stored again", async () => {
      const fleet = uid("fleet");
      const disp = (await connectWithSession(pub, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
      await publishAccepted(disp, { vehicleId: "bus-1", lat: 37.5, lon: 127, ts: tsAt() });
      await sleep(2_500);
      await publishAccepted(disp, { vehicleId: "bus-1", lat: 37.7, lon: 127, ts: tsAt() });
      const viewer = (await connectWithSession(sub, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
      const snap = await subscribe(viewer, {});
      assert.equal(snap.vehicles.length, 1);
      assert.equal(snap.vehicles[0].lat, 37.7);
    });

    test("an update refreshes the TTL of its vehicle only", async () => {
      const fleet = uid("fleet");
      const disp = (await connectWithSession(pub, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
      await publishAccepted(disp, { vehicleId: "old", lat: 1, lon: 1, ts: tsAt() });
      await sleep(2_500);
      await publishAccepted(disp, { vehicleId: "new", lat: 2, lon: 2, ts: tsAt() });
      const viewer = (await connectWithSession(sub, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
      const snap = await subscribe(viewer, {});
      assert.deepEqual(snap.vehicles.map((v) => v.vehicleId), ["new"]);
    });
  });
}
