// HTTP surface in scope (contract 1, 7, 8): /healthz and /readyz (503 when the
// configured Redis is gone), the metrics listener, `POST /api/v1/demo/token`
// only under --demo (and usable tokens for the simulated `demo` fleet), and the
// refusal to start without token configuration.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  assertLocationShape,
  connectError,
  connectWithSession,
  httpRequest,
  publishAccepted,
  record,
  sleep,
  startServer,
  subscribe,
  test,
  tsAt,
  twoReplicas,
  useDeployment,
  useServer,
} from "./lib/harness.mjs";

const get = (url) => httpRequest(url);
const postJson = (url, body) => httpRequest(url, { method: "POST", body });

describe("health, readiness and metrics (two replicas with Redis)", () => {
  const cluster = twoReplicas();

  test("/healthz and /readyz answer 200 on both replicas", async () => {
    for (const s of cluster.servers) {
      assert.equal((await get(`${s.url}/healthz`)).status, 200, `${s.name} /healthz`);
      assert.equal((await get(`${s.url}/readyz`)).status, 200, `${s.name} /readyz`);
    }
  });

  test("/metrics is served on the metrics address", async () => {
    const s = cluster.servers[0];
    const res = await get(`${s.metricsUrl}/metrics`);
    assert.equal(res.status, 200);
  });

  test("POST /api/v1/demo/token does not exist without --demo", async () => {
    const res = await postJson(`${cluster.servers[1].url}/api/v1/demo/token`, { role: "viewer", sub: "x" });
    assert.equal(res.status, 404, res.text);
  });
});

describe("readiness follows Redis", () => {
  const cluster = useDeployment({ replicas: 1 });
  const [server] = cluster.servers;

  test("/readyz turns 503 when Redis is unreachable, /healthz stays 200", async () => {
    assert.equal((await get(`${server.url}/readyz`)).status, 200);
    await cluster.redis.stop();
    let status = 200;
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      status = (await get(`${server.url}/readyz`)).status;
      if (status === 503) break;
      await sleep(250);
    }
    assert.equal(status, 503, "/readyz with Redis down");
    assert.equal((await get(`${server.url}/healthz`)).status, 200, "/healthz is liveness only");
  });

  test("SIGTERM still stops the process while Redis is unreachable", async () => {
    // FLEETGATE_SHUTDOWN_GRACE_SECS is 1; ten seconds is only a bound on "never".
    const { graceful } = await server.stop(10_000);
    assert.ok(graceful, "fleetgate ignored SIGTERM for 10 s with Redis down (it had to be killed)");
  });
});

describe("--demo", () => {
  // No token configuration at all: --demo generates its own secret.
  const server = useServer({ name: "single-demo", args: ["--demo"], env: { FLEETGATE_DEMO_VEHICLES: "5" } });

  test("mints a viewer token for the demo fleet that the server accepts", async () => {
    const res = await postJson(`${server.url}/api/v1/demo/token`, { role: "viewer", sub: "visitor" });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json?.ok, true, res.text);
    assert.equal(typeof res.json.data?.token, "string", res.text);
    const { session } = await connectWithSession(server, res.json.data.token);
    assert.equal(session.fleet, "demo");
    assert.equal(session.role, "viewer");
    assert.equal(session.sub, "visitor");
  });

  test("the simulated demo fleet shows up in the snapshot and moves", async () => {
    const res = await postJson(`${server.url}/api/v1/demo/token`, { fleet: "demo", role: "viewer", sub: "watcher" });
    const { socket } = await connectWithSession(server, res.json.data.token);
    const got = record(socket, "locationupdate");
    let snap = await subscribe(socket, {});
    const deadline = Date.now() + 10_000;
    while (snap.vehicles.length === 0 && Date.now() < deadline) {
      await sleep(500);
      snap = await subscribe(socket, {});
    }
    assert.ok(snap.vehicles.length > 0, "the simulated fleet has vehicles");
    for (const v of snap.vehicles) assertLocationShape(v, { fleet: "demo" });
    const update = await got.waitFor(() => true, 15_000);
    assertLocationShape(update, { fleet: "demo" });
  });

  test("a minted vehicle token publishes for its vehicle", async () => {
    const res = await postJson(`${server.url}/api/v1/demo/token`, { role: "vehicle", sub: "my-bus", ttl: 300 });
    assert.equal(res.status, 200, res.text);
    const { socket, session } = await connectWithSession(server, res.json.data.token);
    assert.equal(session.vehicle, "my-bus");
    assert.ok(session.expiresAt <= Date.now() + 300_000 + 5_000, "ttl bounds the session");
    await publishAccepted(socket, { lat: 37.5, lon: 127, ts: tsAt() });
  });

  test("tokens signed with anything else are still refused", async () => {
    const err = await connectError(server, { auth: { token: "garbage" } });
    assert.equal(err.message, "invalid_token");
  });
});

describe("start-up without token configuration", () => {
  test("refuses to start and names the setting to use", async () => {
    let started;
    try {
      started = await startServer({ name: "single-unconfigured", env: {} });
    } catch (err) {
      assert.match(err.message, /exited before it was ready/);
      assert.match(err.message, /FLEETGATE_JWT_SECRET/);
      return;
    }
    await started.stop();
    assert.fail("fleetgate started without any token configuration");
  });
});
