// The ingest path under concurrency (contract 5.1, 5.2): many vehicles of
// one fleet publishing at once through two replicas, each update answered
// with its own outcome (fresh ones accepted, older-or-equal ones stale),
// every accepted one seen by a viewer on the other replica in ts order per
// vehicle, and coordinates delivered with exactly the digits they were sent
// with.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  connectWithSession,
  emitWithAck,
  expectOk,
  publishAccepted,
  record,
  subscribe,
  test,
  tsAt,
  twoReplicas,
  uid,
  until,
} from "./lib/harness.mjs";

const VEHICLES_PER_REPLICA = 12;
const UPDATES_PER_VEHICLE = 16;

const cluster = twoReplicas();
const [A, B] = cluster.servers;
const fleet = uid("fleet");

async function viewerOn(server) {
  const { socket } = await connectWithSession(server, cluster.token({ sub: uid("viewer"), fleet, role: "viewer" }));
  const seen = record(socket, "locationupdate");
  await subscribe(socket, {});
  return { socket, seen };
}

/**
 * A vehicle's fix times, in sending order: mostly increasing, with repeats
 * and steps back that must be refused, and what each should be answered.
 */
function schedule(base) {
  const offsets = [];
  let step = 0;
  for (let i = 0; i < UPDATES_PER_VEHICLE; i += 1) {
    if (i % 5 === 2) offsets.push(step); // the same ts again
    else if (i % 7 === 4) offsets.push(step - 3); // older than the stored one
    else offsets.push((step += 10));
  }
  let newest = -Infinity;
  return offsets.map((o) => {
    const ts = base + o;
    const fresh = ts > newest;
    newest = Math.max(newest, ts);
    return { ts, fresh };
  });
}

async function metric(server, name) {
  const text = await (await fetch(`${server.metricsUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : 0;
}

describe("concurrent updates of one fleet through two replicas", () => {
  test("each update gets its own outcome; the other replica's viewer sees every accepted one, in ts order", async () => {
    const viewers = { A: await viewerOn(A), B: await viewerOn(B) };
    const base = tsAt(-60_000);
    const vehicles = [];
    for (const [name, server] of [["A", A], ["B", B]]) {
      for (let i = 0; i < VEHICLES_PER_REPLICA; i += 1) {
        const vehicleId = uid(`veh-${name}`);
        const { socket } = await connectWithSession(server, cluster.token({ sub: vehicleId, fleet, role: "vehicle" }));
        vehicles.push({ vehicleId, socket, replica: name, plan: schedule(base + i) });
      }
    }
    const batchesBefore = (await metric(A, "fleetgate_ingest_batches_total")) + (await metric(B, "fleetgate_ingest_batches_total"));

    // Everything at once: no update waits for another's ack.
    const acks = await Promise.all(
      vehicles.flatMap((v) =>
        v.plan.map(({ ts }, i) =>
          emitWithAck(v.socket, "locationupdate", { lat: 10 + i / 1000, lon: 20 + i / 1000, ts }, 20_000),
        ),
      ),
    );
    let k = 0;
    let sent = 0;
    for (const v of vehicles) {
      for (const { ts, fresh } of v.plan) {
        const data = expectOk(acks[k++], `${v.vehicleId} ts ${ts}`);
        assert.deepEqual(data, fresh ? { accepted: true } : { accepted: false, reason: "stale" }, `${v.vehicleId} ts ${ts}`);
        sent += 1;
      }
    }

    // Each replica's viewer sees the other replica's accepted updates, in
    // ts order per vehicle, and nothing else of them.
    for (const v of vehicles) {
      const other = viewers[v.replica === "A" ? "B" : "A"];
      const expected = v.plan.filter((p) => p.fresh).map((p) => p.ts);
      const got = () => other.seen.items.filter((u) => u.vehicleId === v.vehicleId).map((u) => u.ts);
      await until(
        () => got().length >= expected.length,
        15_000,
        () => `${v.vehicleId}: viewer on the other replica saw ${JSON.stringify(got())}, expected ${JSON.stringify(expected)}`,
      );
      assert.deepEqual(got(), expected, `${v.vehicleId} as seen across replicas`);
    }

    // They went to the store in shared calls, not one call each.
    const batches =
      (await metric(A, "fleetgate_ingest_batches_total")) + (await metric(B, "fleetgate_ingest_batches_total")) - batchesBefore;
    assert.ok(batches > 0 && batches < sent, `${sent} updates took ${batches} store calls`);
  });

  test("coordinates reach the other replica's viewer with the digits they were sent with", async () => {
    const viewer = await viewerOn(B);
    const vehicleId = uid("exact");
    const { socket } = await connectWithSession(A, cluster.token({ sub: vehicleId, fleet, role: "vehicle" }));
    // Values whose nearest double serde_json's default (fast) parser misses
    // by one in the last place; 52.520008123456789 is a coordinate as a
    // sender might write it, with more digits than a double keeps.
    const sent = { lat: 11.517519135030627, lon: -27.897876157010366, speed: 3.0712717054658922, heading: 52.520008123456789 };
    await publishAccepted(socket, { ...sent, ts: tsAt() });
    const got = await viewer.seen.waitFor((u) => u.vehicleId === vehicleId);
    for (const key of Object.keys(sent)) {
      assert.equal(String(got[key]), String(sent[key]), `${key} as delivered`);
    }
    const snapshot = await subscribe(viewer.socket, { vehicles: [vehicleId] });
    const stored = snapshot.vehicles.find((v) => v.vehicleId === vehicleId);
    assert.ok(stored, "in the snapshot");
    for (const key of Object.keys(sent)) {
      assert.equal(String(stored[key]), String(sent[key]), `${key} as stored`);
    }
  });
});
