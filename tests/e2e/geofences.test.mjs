// Geofences (contract section 11) with the official socket.io-client across
// two replicas (and the Redis Cluster run): enter and exit with the exact
// fields, exactly once per socket with updates alternating between
// replicas, a stale update never entering, geofence-only subscriptions,
// `inside`, and another fleet seeing nothing.

import { describe } from "node:test";
import assert from "node:assert/strict";

import { connectWithSession, expectNoEvent, httpRequest, publish, record, subscribe, test, tsAt, twoReplicas, uid } from "./lib/harness.mjs";

const cluster = twoReplicas();
const [A, B] = cluster.servers;

async function api(server, method, path, token, body) {
  const res = await httpRequest(`${server.url}${path}`, { method, token, body });
  return { status: res.status, body: res.json };
}

const square = [[[10, 10], [10.01, 10], [10.01, 10.01], [10, 10.01], [10, 10]]];

describe("geofences", () => {
  test("enter and exit once per socket across replicas, geofence-only subscribers, inside", async () => {
    const fleet = uid("fleet");
    const ops = cluster.token({ sub: "ops", fleet, role: "dispatcher" });
    const put = await api(A, "PUT", `/api/v1/fleets/${fleet}/geofences/yard`, ops, {
      type: "Feature",
      geometry: { type: "Polygon", coordinates: square },
      properties: { name: "Yard" },
    });
    assert.equal(put.status, 200, JSON.stringify(put.body));
    const circle = await api(B, "PUT", `/api/v1/fleets/${fleet}/geofences/gate`, ops, {
      type: "Feature",
      geometry: { type: "Point", coordinates: [20, 20] },
      properties: { radius: 200 },
    });
    assert.equal(circle.status, 200, JSON.stringify(circle.body));

    const viewerToken = cluster.token({ sub: "viewer", fleet, role: "viewer" });
    const onA = (await connectWithSession(A, viewerToken)).socket;
    const onlyYard = (await connectWithSession(B, viewerToken)).socket;
    const stranger = (await connectWithSession(B, cluster.token({ sub: "s", fleet: uid("other"), role: "viewer" }))).socket;
    const gotA = record(onA, "geofence");
    const gotYard = record(onlyYard, "geofence");
    const yardPositions = record(onlyYard, "locationupdate");
    await subscribe(onA, {});
    await subscribe(onlyYard, { geofences: ["yard"] });
    await subscribe(stranger, {});

    const dA = (await connectWithSession(A, ops)).socket;
    const dB = (await connectWithSession(B, ops)).socket;
    const t = tsAt(-60_000);
    const send = async (socket, lon, lat, ts) => (await publish(socket, { vehicleId: "van-1", lon, lat, ts })).accepted;
    assert.equal(await send(dA, 9.99, 9.99, t), true);
    assert.equal(await send(dB, 10.005, 10.005, t + 1), true); // enter yard
    assert.equal(await send(dA, 10.006, 10.006, t + 2), true); // inside
    assert.equal(await send(dB, 9.9, 9.9, t + 1), false); // stale
    assert.equal(await send(dA, 20, 20.001, t + 3), true); // exit yard, enter gate

    const ev = (geofence, kind, ts, lon, lat) => ({ fleet, vehicleId: "van-1", geofence, kind, ts, lat, lon });
    const expected = [
      ev("yard", "enter", t + 1, 10.005, 10.005),
      ev("yard", "exit", t + 3, 20, 20.001),
      ev("gate", "enter", t + 3, 20, 20.001),
    ];
    await gotA.waitFor((e) => e.geofence === "gate");
    await gotYard.waitFor((e) => e.kind === "exit");
    // Room for a duplicate to arrive before the lists are compared whole.
    await expectNoEvent(onA, "geofence", 1_000, (e) => e.kind === "never");
    assert.deepEqual(gotA.items, expected);
    assert.deepEqual(gotYard.items, expected.slice(0, 2));
    assert.equal(yardPositions.items.length, 0, "a geofence-only subscription carries no positions");
    await expectNoEvent(stranger, "geofence", 500);

    const gate = await api(B, "GET", `/api/v1/fleets/${fleet}/geofences/gate`, viewerToken);
    assert.deepEqual(gate.body.data.properties.inside, ["van-1"]);
    const foreign = await api(A, "GET", `/api/v1/fleets/${fleet}/geofences`, cluster.token({ sub: "x", fleet: uid("other"), role: "dispatcher" }));
    assert.equal(foreign.status, 403);
  });
});
