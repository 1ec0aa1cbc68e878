// Scoped viewer tokens (contract 2, the `vehicles` claim): a rider app's token
// that names the only vehicles it may watch. Every way a viewer can read is
// tried: `subscribe` (whole fleet, bbox, other ids → forbidden), the
// bus-app's `providerjoin`, snapshots, live positions and presence while
// other vehicles of the fleet publish, rooms, re-authentication with a
// narrower token, resuming the session on another replica, the HTTP reads,
// and claims that do not check out. Run against two replicas sharing Redis
// (a Redis Cluster with E2E_REDIS=cluster) and against one embedded node.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  connectError,
  connectWithSession,
  emitWithAck,
  expectError,
  expectOk,
  httpRequest,
  publishAccepted,
  record,
  singleNode,
  subscribe,
  test,
  tsAt,
  uid,
  useDeployment,
  useServer,
} from "./lib/harness.mjs";

const MODES = [
  { name: "two replicas with Redis", redis: true, replicas: 2 },
  { name: "one embedded node", redis: false, replicas: 1 },
];

/** Where each bus is published, all inside BOX. */
const SPOT = {
  "bus-1": { lat: 37.51, lon: 127.01 },
  "bus-2": { lat: 37.52, lon: 127.02 },
  "bus-3": { lat: 37.53, lon: 127.03 },
  "bus-4": { lat: 37.54, lon: 127.04 },
};
const BOX = [126.9, 37.4, 127.2, 37.7];

function http(server, method, path, token, body) {
  return httpRequest(`${server.url}${path}`, { method, token, body });
}

for (const mode of MODES) {
  describe(`scoped viewer tokens (${mode.name})`, () => {
    const cluster = useDeployment({ replicas: mode.replicas, redis: mode.redis });
    const A = cluster.servers[0];
    const B = cluster.servers.at(-1);

    /**
     * A fleet with a dispatcher on A that has published bus-1…bus-4, an
     * unscoped fleet watcher on B (it sees everything, so once it has seen
     * a marker the traffic before it has reached B's sockets), and a
     * factory of scoped viewers.
     */
    async function setup() {
      const fleet = uid("fleet");
      const disp = (await connectWithSession(A, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
      for (const [vehicleId, at] of Object.entries(SPOT)) {
        await publishAccepted(disp, { vehicleId, ...at, ts: tsAt() });
      }
      const watcher = (await connectWithSession(B, cluster.token({ sub: "watcher", fleet, role: "viewer" }))).socket;
      const seen = record(watcher, "locationupdate");
      const presence = { online: record(watcher, "vehicle_online"), offline: record(watcher, "vehicle_offline") };
      await subscribe(watcher, {});
      const scopedToken = (vehicles = ["bus-1", "bus-2"], claims = {}) =>
        cluster.token({ sub: uid("rider"), fleet, role: "viewer", vehicles, ...claims });
      const rider = async (vehicles, server = B) => {
        const { socket, session } = await connectWithSession(server, scopedToken(vehicles));
        return {
          socket,
          session,
          positions: record(socket, "locationupdate"),
          online: record(socket, "vehicle_online"),
          offline: record(socket, "vehicle_offline"),
        };
      };
      /** Publishes a marker and waits until the watcher on B has it. */
      const marker = async () => {
        const vehicleId = uid("marker");
        await publishAccepted(disp, { vehicleId, lat: 37.6, lon: 127.1, ts: tsAt() });
        await seen.waitFor((u) => u.vehicleId === vehicleId);
      };
      return { fleet, disp, watcher, seen, presence, scopedToken, rider, marker };
    }

    test("the session names the token's vehicles", async () => {
      const { fleet, rider } = await setup();
      const { session } = await rider(["bus-2", "bus-1", "bus-2"]);
      assert.equal(session.fleet, fleet);
      assert.equal(session.role, "viewer");
      assert.deepEqual(session.vehicles, ["bus-1", "bus-2"]);
    });

    test("every subscription outside the scope, and every room event, answers forbidden", async () => {
      const { fleet, rider } = await setup();
      const r = await rider();
      const refused = [
        ["subscribe", {}],
        ["subscribe", { fleet }],
        ["subscribe", { bbox: BOX }],
        ["subscribe", { vehicles: ["bus-3"] }],
        ["subscribe", { vehicles: ["bus-1", "bus-3"] }],
        ["subscribe", { vehicles: ["bus-1"], bbox: BOX }],
        ["providerjoin", { providerId: fleet }],
        ["join_room", { room: "ops" }],
        ["chat", { room: "ops", text: "hello" }],
        ["history", { room: "ops" }],
      ];
      for (const [event, payload] of refused) {
        expectError(await emitWithAck(r.socket, event, payload), "forbidden", `${event} ${JSON.stringify(payload)}`);
      }
      // Another fleet stays forbidden, as for any token.
      expectError(await emitWithAck(r.socket, "subscribe", { fleet: uid("other"), vehicles: ["bus-1"] }), "forbidden");
      // None of the refusals left a subscription behind.
      expectOk(await emitWithAck(r.socket, "unsubscribe", {}));
      assert.equal(r.positions.items.length, 0, JSON.stringify(r.positions.items));
    });

    test("the snapshot and the live positions hold only the token's vehicles", async () => {
      const { fleet, disp, rider, marker } = await setup();
      const r = await rider(["bus-1", "bus-2"], B);
      // Refused wider subscriptions leave nothing behind that would deliver.
      expectError(await emitWithAck(r.socket, "subscribe", {}), "forbidden");
      expectError(await emitWithAck(r.socket, "subscribe", { bbox: BOX }), "forbidden");
      expectError(await emitWithAck(r.socket, "providerjoin", { providerId: fleet }), "forbidden");
      const snap = await subscribe(r.socket, { vehicles: ["bus-1", "bus-2"] });
      assert.equal(snap.fleet, fleet);
      assert.deepEqual(snap.vehicles.map((v) => v.vehicleId).sort(), ["bus-1", "bus-2"]);
      // A subset of the scope is fine too, and adds nothing outside it.
      const one = await subscribe(r.socket, { vehicles: ["bus-2"] });
      assert.deepEqual(one.vehicles.map((v) => v.vehicleId), ["bus-2"]);
      for (let i = 1; i <= 3; i += 1) {
        for (const [vehicleId, at] of Object.entries(SPOT)) {
          await publishAccepted(disp, { vehicleId, lat: at.lat + i / 1000, lon: at.lon, ts: tsAt() });
        }
      }
      await r.positions.waitFor((u) => u.vehicleId === "bus-1" && u.lat > SPOT["bus-1"].lat + 0.0025);
      await r.positions.waitFor((u) => u.vehicleId === "bus-2" && u.lat > SPOT["bus-2"].lat + 0.0025);
      await marker();
      const others = r.positions.items.filter((u) => !["bus-1", "bus-2"].includes(u.vehicleId));
      assert.deepEqual(others, [], "positions of vehicles outside the scope arrived");
      // bus-2 is watched twice over but arrives once per update.
      const live = (u) => u.vehicleId === "bus-2" && u.lat > SPOT["bus-2"].lat + 0.0005;
      assert.equal(r.positions.count(live), 3, JSON.stringify(r.positions.items));
    });

    test("presence reaches a scoped viewer only for its vehicles", async () => {
      // Vehicles with no position yet, so each connection is an online change.
      const { fleet, presence, rider, marker } = await setup();
      const r = await rider(["bus-5"], B);
      await subscribe(r.socket, { vehicles: ["bus-5"] });
      const drive = async (vehicle) =>
        (await connectWithSession(A, cluster.token({ sub: vehicle, fleet, role: "vehicle" }))).socket;
      const bus6 = await drive("bus-6");
      const bus5 = await drive("bus-5");
      await r.online.waitFor((e) => e.vehicleId === "bus-5");
      bus6.disconnect();
      await presence.offline.waitFor((e) => e.vehicleId === "bus-6");
      bus5.disconnect();
      await r.offline.waitFor((e) => e.vehicleId === "bus-5");
      await presence.online.waitFor((e) => e.vehicleId === "bus-6");
      await marker();
      const foreign = [...r.online.items, ...r.offline.items].filter((e) => e.vehicleId !== "bus-5");
      assert.deepEqual(foreign, [], "presence of vehicles outside the scope arrived");
    });

    test("re-authenticating with a scoped token drops what lies outside it", async () => {
      const { fleet, disp, scopedToken, marker } = await setup();
      const member = (await connectWithSession(A, cluster.token({ sub: "ops-1", fleet, role: "dispatcher" }))).socket;
      expectOk(await emitWithAck(member, "join_room", { room: "ops" }));
      const notices = record(member, "notice");
      const { socket } = await connectWithSession(B, cluster.token({ sub: "kiosk", fleet, role: "viewer" }));
      const positions = record(socket, "locationupdate");
      await subscribe(socket, {});
      await subscribe(socket, { bbox: BOX });
      await subscribe(socket, { vehicles: ["bus-1", "bus-3"] });
      expectOk(await emitWithAck(socket, "join_room", { room: "ops" }));

      const session = expectOk(await emitWithAck(socket, "authenticate", { token: scopedToken(["bus-1"]) }));
      assert.deepEqual(session.vehicles, ["bus-1"]);
      await notices.waitFor((n) => n.room === "ops" && n.kind === "leave" && n.sub === session.sub);
      expectError(await emitWithAck(socket, "chat", { room: "ops", text: "still here?" }), "forbidden");
      expectError(await emitWithAck(socket, "subscribe", {}), "forbidden");

      const before = positions.items.length;
      for (const vehicleId of ["bus-3", "bus-4", "bus-1"]) {
        await publishAccepted(disp, { vehicleId, ...SPOT[vehicleId], lon: SPOT[vehicleId].lon + 0.001, ts: tsAt() });
      }
      await positions.waitFor((u) => u.vehicleId === "bus-1" && u.lon > SPOT["bus-1"].lon + 0.0005);
      await marker();
      const after = positions.items.slice(before).filter((u) => u.vehicleId !== "bus-1");
      assert.deepEqual(after, [], "positions outside the new scope arrived after re-authentication");

      // An unscoped token widens it again.
      const wide = expectOk(
        await emitWithAck(socket, "authenticate", { token: cluster.token({ sub: "kiosk", fleet, role: "viewer" }) }),
      );
      assert.equal(wide.vehicles, undefined);
      await subscribe(socket, {});
    });

    test("a resumed session keeps its scope, on any replica", async () => {
      const { fleet, rider } = await setup();
      const r = await rider(["bus-1"], A);
      const { socket, session } = await connectWithSession(B, { session: r.session.sessionId });
      assert.deepEqual(session.vehicles, ["bus-1"]);
      assert.equal(session.fleet, fleet);
      expectError(await emitWithAck(socket, "subscribe", {}), "forbidden");
      expectError(await emitWithAck(socket, "subscribe", { vehicles: ["bus-2"] }), "forbidden");
      const snap = await subscribe(socket, { vehicles: ["bus-1"] });
      assert.deepEqual(snap.vehicles.map((v) => v.vehicleId), ["bus-1"]);
    });

    test("claims that do not check out are refused", async () => {
      const { fleet } = await setup();
      const many = Array.from({ length: 257 }, (_, i) => `v${i}`);
      const bad = [
        { role: "dispatcher", vehicles: ["bus-1"] },
        { role: "vehicle", vehicles: ["bus-1"] },
        { role: "viewer", vehicles: [] },
        { role: "viewer", vehicles: null },
        { role: "viewer", vehicles: "bus-1" },
        { role: "viewer", vehicles: ["bus 1"] },
        { role: "viewer", vehicles: many },
      ];
      for (const claims of bad) {
        const token = cluster.token({ sub: "x", fleet, ...claims });
        const err = await connectError(B, { auth: { token } });
        assert.equal(err.message, "invalid_token", JSON.stringify(claims));
        const res = await http(B, "GET", `/api/v1/fleets/${fleet}/vehicles`, token);
        assert.equal(res.status, 401, JSON.stringify(claims));
        assert.equal(res.json?.error?.code, "invalid_token");
      }
      // 256 is the bound, not past it.
      await connectWithSession(B, cluster.token({ sub: "x", fleet, role: "viewer", vehicles: many.slice(0, 256) }));
    });

    test("HTTP reads show only the token's vehicles", async () => {
      const { fleet, scopedToken } = await setup();
      const token = scopedToken(["bus-1", "bus-2", "bus-9"]);
      const list = await http(B, "GET", `/api/v1/fleets/${fleet}/vehicles`, token);
      assert.equal(list.status, 200, list.text);
      assert.deepEqual(list.json.data.features.map((f) => f.id).sort(), ["bus-1", "bus-2"]);
      // A box narrows further and never widens.
      const box = [SPOT["bus-2"].lon - 0.001, SPOT["bus-2"].lat - 0.001, 127.2, 37.7].join(",");
      const inBox = await http(B, "GET", `/api/v1/fleets/${fleet}/vehicles?bbox=${box}`, token);
      assert.deepEqual(inBox.json.data.features.map((f) => f.id), ["bus-2"]);
      const one = await http(B, "GET", `/api/v1/fleets/${fleet}/vehicles/bus-1`, token);
      assert.equal(one.status, 200, one.text);
      assert.equal(one.json.data.id, "bus-1");
      // In the scope without a position: 404 as for anyone.
      assert.equal((await http(B, "GET", `/api/v1/fleets/${fleet}/vehicles/bus-9`, token)).status, 404);
      // Outside the scope: forbidden, whether the vehicle has a position or not.
      for (const other of ["bus-3", "never-seen"]) {
        const res = await http(B, "GET", `/api/v1/fleets/${fleet}/vehicles/${other}`, token);
        assert.equal(res.status, 403, `${other}: ${res.text}`);
        assert.equal(res.json.error.code, "forbidden");
      }
      const writes = [
        ["PUT", `/api/v1/fleets/${fleet}/vehicles/bus-1/location`, { lat: 1, lon: 1 }],
        ["POST", `/api/v1/fleets/${fleet}/locations`, { items: [] }],
        ["POST", `/api/v1/fleets/${fleet}/rooms/ops/messages`, { text: "hi" }],
        ["GET", `/api/v1/fleets/${uid("other")}/vehicles`, undefined],
      ];
      for (const [method, path, body] of writes) {
        const res = await http(B, method, path, token, body);
        assert.equal(res.status, 403, `${method} ${path}: ${res.text}`);
        assert.equal(res.json.error.code, "forbidden");
      }
    });
  });
}

describe("scoped tokens from the --demo token endpoint", () => {
  const server = useServer({ name: "demo", args: ["--demo"], env: { FLEETGATE_DEMO_VEHICLES: "3" } });

  const mint = (body) => httpRequest(`${server.url}/api/v1/demo/token`, { method: "POST", body });

  test("mints a viewer token for some demo buses, which watches only them", async () => {
    const res = await mint({ role: "viewer", sub: "rider", vehicles: ["bus-02"] });
    assert.equal(res.status, 200, res.text);
    const { socket, session } = await connectWithSession(server, res.json.data.token);
    assert.deepEqual(session.vehicles, ["bus-02"]);
    expectError(await emitWithAck(socket, "subscribe", {}), "forbidden");
    const positions = record(socket, "locationupdate");
    await subscribe(socket, { vehicles: ["bus-02"] });
    await positions.waitFor((u) => u.vehicleId === "bus-02");
    // The simulator publishes every bus each second: two more rounds pass.
    await positions.waitFor((u) => positions.count((p) => p.vehicleId === "bus-02") >= 3);
    assert.deepEqual([...new Set(positions.items.map((u) => u.vehicleId))], ["bus-02"]);
  });

  test("refuses a scope it cannot mint, naming the field", async () => {
    for (const body of [
      { role: "dispatcher", vehicles: ["bus-01"] },
      { role: "viewer", vehicles: [] },
      { role: "viewer", vehicles: ["bus 01"] },
    ]) {
      const res = await mint(body);
      assert.equal(res.status, 400, `${JSON.stringify(body)}: ${res.text}`);
      assert.equal(res.json.error.code, "invalid_payload");
      assert.match(res.json.error.message, /vehicles/);
    }
  });
});

describe("scoped viewer tokens with conflation (FLEETGATE_BATCH_MS)", () => {
  const cluster = singleNode({ env: { FLEETGATE_BATCH_MS: "50" } });

  test("a batch holds only the token's vehicles", async () => {
    const [server] = cluster.servers;
    const fleet = uid("fleet");
    const disp = (await connectWithSession(server, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
    const watcher = (await connectWithSession(server, cluster.token({ sub: "w", fleet, role: "viewer" }))).socket;
    const seen = record(watcher, "locations");
    await subscribe(watcher, {});
    const rider = (
      await connectWithSession(server, cluster.token({ sub: "r", fleet, role: "viewer", vehicles: ["bus-1"] }))
    ).socket;
    const batches = record(rider, "locations");
    await subscribe(rider, { vehicles: ["bus-1"] });
    for (let i = 1; i <= 5; i += 1) {
      for (const [vehicleId, at] of Object.entries(SPOT)) {
        await publishAccepted(disp, { vehicleId, lat: at.lat + i / 1000, lon: at.lon, ts: tsAt() });
      }
    }
    const last = (b) => b.items.some((u) => u.vehicleId === "bus-4" && u.lat > SPOT["bus-4"].lat + 0.0045);
    await seen.waitFor(last);
    await batches.waitFor((b) => b.items.some((u) => u.vehicleId === "bus-1" && u.lat > SPOT["bus-1"].lat + 0.0045));
    const foreign = batches.items.flatMap((b) => b.items).filter((u) => u.vehicleId !== "bus-1");
    assert.deepEqual(foreign, [], "a batch carried vehicles outside the scope");
  });
});
