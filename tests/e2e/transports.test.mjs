// Transports (contract 1): HTTP long-polling only, websocket only and the
// default polling-then-upgrade client all connect, authenticate, publish and
// receive across two replicas; the Socket.IO path is configurable.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  assertLocationShape,
  connect,
  connectError,
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
  useServer,
  waitForEvent,
} from "./lib/harness.mjs";

const cluster = twoReplicas();
const [A, B] = cluster.servers;

const POLLING = { transports: ["polling"], upgrade: false };
const WEBSOCKET = { transports: ["websocket"] };

function transportOf(socket) {
  return socket.io.engine.transport.name;
}

describe("long-polling", () => {
  test("connect, publish on A and receive on B, all over polling", async () => {
    const fleet = uid("fleet");
    const { socket: viewer, session } = await connectWithSession(
      B,
      cluster.token({ sub: "viewer", fleet, role: "viewer" }),
      POLLING,
    );
    assert.equal(transportOf(viewer), "polling");
    assert.equal(session.fleet, fleet);
    const got = record(viewer, "locationupdate");
    await subscribe(viewer, {});

    const { socket: bus } = await connectWithSession(A, cluster.token({ sub: "bus-1", fleet, role: "vehicle" }), POLLING);
    assert.equal(transportOf(bus), "polling");
    const ts = tsAt();
    await publishAccepted(bus, { lat: 37.5, lon: 127, ts, speed: 4 });
    const update = await got.waitFor((u) => u.vehicleId === "bus-1");
    assertLocationShape(update, { fleet, vehicleId: "bus-1" });
    assert.equal(update.ts, ts);
    assert.equal(update.speed, 4);
    assert.equal(transportOf(viewer), "polling");
  });

  test("many updates over polling all arrive", async () => {
    const fleet = uid("fleet");
    const { socket: viewer } = await connectWithSession(A, cluster.token({ sub: "viewer", fleet, role: "viewer" }), POLLING);
    const got = record(viewer, "locationupdate");
    await subscribe(viewer, {});
    const { socket: disp } = await connectWithSession(B, cluster.token({ sub: "disp", fleet, role: "dispatcher" }), POLLING);
    const base = tsAt(-60_000);
    for (let i = 0; i < 20; i += 1) {
      await publishAccepted(disp, { vehicleId: `bus-${i % 4}`, lat: 10 + i / 100, lon: 20, ts: base + i * 100 });
    }
    await got.waitFor((u) => u.ts === base + 19 * 100, 10_000);
    assert.equal(got.items.length, 20);
  });

  test("the authenticate event and a snapshot over polling", async () => {
    const fleet = uid("fleet");
    const disp = (await connectWithSession(A, cluster.token({ sub: "disp", fleet, role: "dispatcher" }))).socket;
    await publishAccepted(disp, { vehicleId: "bus-1", lat: 1.5, lon: 1.5, ts: tsAt() });
    const socket = await connect(B, POLLING);
    expectOk(await emitWithAck(socket, "authenticate", { provider: fleet, token: cluster.token({ sub: "rider", fleet, role: "viewer" }) }));
    const snap = await subscribe(socket, {});
    assert.deepEqual(snap.vehicles.map((v) => v.vehicleId), ["bus-1"]);
  });

  test("refusals reach a polling client as connect_error codes", async () => {
    const err = await connectError(A, { ...POLLING, auth: { token: "garbage" } });
    assert.equal(err.message, "invalid_token");
    const err2 = await connectError(B, { ...POLLING, auth: { session: "nope" } });
    assert.equal(err2.message, "session_expired");
  });

  test("a session resumes over polling on the other replica", async () => {
    const fleet = uid("fleet");
    const first = await connectWithSession(A, cluster.token({ sub: "viewer", fleet, role: "viewer" }), WEBSOCKET);
    const resumed = await connectWithSession(B, { session: first.session.sessionId }, POLLING);
    assert.equal(resumed.session.sessionId, first.session.sessionId);
  });
});

describe("websocket", () => {
  test("connect, publish on B and receive on A over websocket only", async () => {
    const fleet = uid("fleet");
    const { socket: viewer } = await connectWithSession(A, cluster.token({ sub: "viewer", fleet, role: "viewer" }), WEBSOCKET);
    assert.equal(transportOf(viewer), "websocket");
    const got = record(viewer, "locationupdate");
    await subscribe(viewer, { vehicles: ["bus-2"] });
    const { socket: bus } = await connectWithSession(B, cluster.token({ sub: "bus-2", fleet, role: "vehicle" }), WEBSOCKET);
    await publishAccepted(bus, { lat: -23.55, lon: -46.63, ts: tsAt() });
    const update = await got.waitFor((u) => u.vehicleId === "bus-2");
    assertLocationShape(update, { fleet, vehicleId: "bus-2" });
  });

  test("a polling publisher and a websocket subscriber interoperate", async () => {
    const fleet = uid("fleet");
    const { socket: viewer } = await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }), WEBSOCKET);
    const got = record(viewer, "locationupdate");
    await subscribe(viewer, {});
    const { socket: bus } = await connectWithSession(A, cluster.token({ sub: "bus-3", fleet, role: "vehicle" }), POLLING);
    await publishAccepted(bus, { busId: "bus-3", location: { latitude: "51.5", longitude: "-0.12" } });
    const update = await got.waitFor((u) => u.vehicleId === "bus-3");
    assert.equal(update.lat, 51.5);
    assert.equal(update.lon, -0.12);
  });
});

describe("default client (polling, then upgrade)", () => {
  test("upgrades to websocket and keeps working", async () => {
    const fleet = uid("fleet");
    const { socket } = await connectWithSession(A, cluster.token({ sub: "disp", fleet, role: "dispatcher" }), {
      transports: ["polling", "websocket"],
    });
    if (transportOf(socket) !== "websocket") {
      await waitForEvent(socket.io.engine, "upgrade", 10_000);
    }
    assert.equal(transportOf(socket), "websocket");
    const got = record(socket, "locationupdate");
    await subscribe(socket, {});
    await publishAccepted(socket, { vehicleId: "bus-1", lat: 1, lon: 1, ts: tsAt() });
    await got.waitFor((u) => u.vehicleId === "bus-1");
  });
});

describe("configurable Socket.IO path", () => {
  const server = useServer({
    name: "single-custom-path",
    env: { FLEETGATE_JWT_SECRET: cluster.secret, FLEETGATE_SOCKETIO_PATH: "/chat/socket.io/" },
  });

  for (const [name, opts] of [
    ["websocket", WEBSOCKET],
    ["polling", POLLING],
  ]) {
    test(`clients connect under the configured path (${name})`, async () => {
      const fleet = uid("fleet");
      const token = cluster.token({ sub: "viewer", fleet, role: "viewer" });
      const { session } = await connectWithSession(server, token, { ...opts, path: "/chat/socket.io/" });
      assert.equal(session.fleet, fleet);
    });
  }

  test("the default path is not served when another is configured", async () => {
    const fleet = uid("fleet");
    const token = cluster.token({ sub: "viewer", fleet, role: "viewer" });
    await assert.rejects(connect(server, { ...POLLING, auth: { token }, connectTimeoutMs: 5_000 }));
  });
});
