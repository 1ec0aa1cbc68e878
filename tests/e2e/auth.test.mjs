// Authentication and sessions (contract sections 2-4): handshake refusals by
// error code, the `session` event, the `authenticate` event flow with the
// bus-app `provider` alias, `unauthenticated` in ack and `exception` form,
// the auth timeout, and session resume across two replicas sharing a Redis.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  connect,
  connectError,
  connectWithSession,
  emitWithAck,
  expectError,
  expectNoEvent,
  expectOk,
  noneToken,
  nowSecs,
  publishAccepted,
  record,
  signToken,
  sleep,
  subscribe,
  test,
  tsAt,
  twoReplicas,
  uid,
  useServer,
  waitForDisconnect,
  waitForEvent,
  wrongSecretToken,
} from "./lib/harness.mjs";

const ISSUER = "fleet-auth";
const AUDIENCE = "fleetgate";

const cluster = twoReplicas({ issuer: ISSUER, audience: AUDIENCE });
const [A, B] = cluster.servers;

function assertSession(session, { sub, fleet, role, vehicle, exp }) {
  assert.ok(session && typeof session === "object", `session must be an object: ${JSON.stringify(session)}`);
  assert.equal(typeof session.sessionId, "string");
  assert.ok(session.sessionId.length >= 22, `sessionId too short for 128 random bits: ${session.sessionId}`);
  assert.equal(session.sub, sub);
  assert.equal(session.fleet, fleet);
  assert.equal(session.role, role);
  if (vehicle === undefined) {
    assert.ok(!("vehicle" in session), `vehicle must be omitted for role ${role}: ${JSON.stringify(session)}`);
  } else {
    assert.equal(session.vehicle, vehicle);
  }
  assert.equal(typeof session.expiresAt, "number", `expiresAt must be ms since epoch: ${JSON.stringify(session)}`);
  assert.ok(session.expiresAt > Date.now(), `expiresAt must lie in the future: ${JSON.stringify(session)}`);
  if (exp !== undefined) {
    assert.ok(session.expiresAt <= exp * 1000, `session outlives its token: ${session.expiresAt} > ${exp * 1000}`);
  }
}

describe("handshake authentication", () => {
  test("a vehicle token gets a session event whose vehicle defaults to sub", async () => {
    const fleet = uid("fleet");
    const exp = nowSecs() + 600;
    const { session } = await connectWithSession(A, cluster.token({ sub: "bus-7", fleet, role: "vehicle", exp }));
    assertSession(session, { sub: "bus-7", fleet, role: "vehicle", vehicle: "bus-7", exp });
  });

  test("a vehicle token with a vehicle claim gets that vehicle", async () => {
    const fleet = uid("fleet");
    const { session } = await connectWithSession(
      B,
      cluster.token({ sub: "driver-1", fleet, role: "vehicle", vehicle: "bus-99" }),
    );
    assertSession(session, { sub: "driver-1", fleet, role: "vehicle", vehicle: "bus-99" });
  });

  test("viewer and dispatcher sessions carry no vehicle, even with a vehicle claim", async () => {
    const fleet = uid("fleet");
    for (const role of ["viewer", "dispatcher"]) {
      const { session } = await connectWithSession(A, cluster.token({ sub: `${role}-1`, fleet, role }));
      assertSession(session, { sub: `${role}-1`, fleet, role });
      const withClaim = await connectWithSession(B, cluster.token({ sub: `${role}-2`, fleet, role, vehicle: "bus-1" }));
      assertSession(withClaim.session, { sub: `${role}-2`, fleet, role });
    }
  });

  test("auth.fleet equal to the token's fleet is accepted", async () => {
    const fleet = uid("fleet");
    const { session } = await connectWithSession(A, {
      token: cluster.token({ sub: "v1", fleet, role: "viewer" }),
      fleet,
    });
    assertSession(session, { sub: "v1", fleet, role: "viewer" });
  });

  test("session ids are distinct per authentication", async () => {
    const fleet = uid("fleet");
    const token = cluster.token({ sub: "v1", fleet, role: "viewer" });
    const one = await connectWithSession(A, token);
    const two = await connectWithSession(A, token);
    assert.notEqual(one.session.sessionId, two.session.sessionId);
  });
});

describe("handshake refusals carry the error code as connect_error message", () => {
  const claims = (over = {}) => ({ sub: "u1", fleet: "acme", role: "viewer", ...over });
  const cases = [
    ["bad signature", () => wrongSecretToken(claims(), { issuer: ISSUER, audience: AUDIENCE }), "invalid_token"],
    ["garbage token", () => "this-is-not-a-jwt", "invalid_token"],
    ["three garbage segments", () => "aaa.bbb.ccc", "invalid_token"],
    ["alg none", () => noneToken({ ...claims(), iss: ISSUER, aud: AUDIENCE }), "invalid_token"],
    [
      "algorithm confusion (HS384 with the same secret)",
      () => cluster.token(claims(), { algorithm: "HS384" }),
      "invalid_token",
    ],
    ["expired 5 s ago", () => cluster.token(claims({ exp: nowSecs() - 5 })), "token_expired"],
    ["nbf in the future", () => cluster.token(claims({ nbf: nowSecs() + 600 })), "invalid_token"],
    ["wrong issuer", () => cluster.token(claims({ iss: "someone-else" })), "invalid_token"],
    ["missing issuer", () => cluster.token(claims(), { omit: ["iss"] }), "invalid_token"],
    ["wrong audience", () => cluster.token(claims({ aud: "other-service" })), "invalid_token"],
    ["missing audience", () => cluster.token(claims(), { omit: ["aud"] }), "invalid_token"],
    ["missing sub", () => cluster.token(claims(), { omit: ["sub"] }), "invalid_token"],
    ["missing fleet", () => cluster.token(claims(), { omit: ["fleet"] }), "invalid_token"],
    ["missing role", () => cluster.token(claims(), { omit: ["role"] }), "invalid_token"],
    ["missing exp", () => cluster.token(claims(), { omit: ["exp"] }), "invalid_token"],
    ["unknown role", () => cluster.token(claims({ role: "admin" })), "invalid_token"],
  ];

  cases.forEach(([name, token, code], i) => {
    test(`${name} → ${code}`, async () => {
      const server = i % 2 === 0 ? A : B;
      const err = await connectError(server, { auth: { token: token() } });
      assert.equal(err.message, code);
    });
  });

  test("unknown session → session_expired", async () => {
    const err = await connectError(A, { auth: { session: "nope" } });
    assert.equal(err.message, "session_expired");
  });

  test("well-formed but unknown session id → session_expired", async () => {
    const err = await connectError(B, { auth: { session: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" } });
    assert.equal(err.message, "session_expired");
  });

  test("auth.fleet different from the token's fleet → forbidden", async () => {
    const err = await connectError(A, {
      auth: { token: cluster.token(claims({ fleet: "acme" })), fleet: "globex" },
    });
    assert.equal(err.message, "forbidden");
  });

  test("a namespace other than /fleet is refused", async () => {
    const token = cluster.token(claims());
    const err = await connectError(A, { namespace: "/other", auth: { token } });
    assert.ok(err instanceof Error);
  });
});

describe("authenticate event (bus-app flow)", () => {
  test("connect without auth, then authenticate { token } → session in the ack", async () => {
    const fleet = uid("fleet");
    const exp = nowSecs() + 900;
    const socket = await connect(A);
    const ack = await emitWithAck(socket, "authenticate", {
      token: cluster.token({ sub: "bus-1", fleet, role: "vehicle", exp }),
    });
    assertSession(expectOk(ack, "authenticate"), { sub: "bus-1", fleet, role: "vehicle", vehicle: "bus-1", exp });
    // Authenticated: a publish now goes through.
    await publishAccepted(socket, { lat: 37.5, lon: 127.0, ts: tsAt() });
  });

  test("authenticate with matching fleet is accepted", async () => {
    const fleet = uid("fleet");
    const socket = await connect(B);
    const ack = await emitWithAck(socket, "authenticate", {
      token: cluster.token({ sub: "viewer-1", fleet, role: "viewer" }),
      fleet,
    });
    assertSession(expectOk(ack), { sub: "viewer-1", fleet, role: "viewer" });
    const data = await subscribe(socket, {});
    assert.equal(data.fleet, fleet);
  });

  test("provider is an alias of fleet", async () => {
    const fleet = uid("fleet");
    const socket = await connect(A);
    const ack = await emitWithAck(socket, "authenticate", {
      provider: fleet,
      token: cluster.token({ sub: "rider-1", fleet, role: "viewer" }),
    });
    assertSession(expectOk(ack), { sub: "rider-1", fleet, role: "viewer" });
  });

  test("mismatching provider → forbidden", async () => {
    const socket = await connect(A);
    const ack = await emitWithAck(socket, "authenticate", {
      provider: "globex",
      token: cluster.token({ sub: "rider-1", fleet: "acme", role: "viewer" }),
    });
    expectError(ack, "forbidden", "authenticate with another provider");
  });

  test("mismatching fleet → forbidden", async () => {
    const socket = await connect(B);
    const ack = await emitWithAck(socket, "authenticate", {
      fleet: "globex",
      token: cluster.token({ sub: "rider-1", fleet: "acme", role: "viewer" }),
    });
    expectError(ack, "forbidden", "authenticate with another fleet");
  });

  test("bad tokens are refused in the ack with their code", async () => {
    const cases = [
      [wrongSecretToken({ sub: "x", fleet: "acme", role: "viewer" }, { issuer: ISSUER, audience: AUDIENCE }), "invalid_token"],
      ["garbage", "invalid_token"],
      [noneToken({ sub: "x", fleet: "acme", role: "viewer", iss: ISSUER, aud: AUDIENCE }), "invalid_token"],
      [cluster.token({ sub: "x", fleet: "acme", role: "viewer", exp: nowSecs() - 5 }), "token_expired"],
    ];
    for (const [token, code] of cases) {
      const socket = await connect(A);
      const ack = await emitWithAck(socket, "authenticate", { token });
      expectError(ack, code, `authenticate with a ${code} token`);
      socket.disconnect();
    }
  });
});

describe("events before authentication", () => {
  test("with an ack → unauthenticated", async () => {
    const socket = await connect(A);
    expectError(await emitWithAck(socket, "subscribe", {}), "unauthenticated", "subscribe before auth");
  });

  test("locationupdate with an ack → unauthenticated", async () => {
    const socket = await connect(B);
    expectError(
      await emitWithAck(socket, "locationupdate", { vehicleId: "bus-1", lat: 37.5, lon: 127, ts: tsAt() }),
      "unauthenticated",
      "locationupdate before auth",
    );
  });

  test("without an ack → exception { event, code, message }", async () => {
    const socket = await connect(A);
    const exception = waitForEvent(socket, "exception");
    socket.emit("subscribe", {});
    const ex = await exception;
    assert.equal(ex.event, "subscribe");
    assert.equal(ex.code, "unauthenticated");
    assert.equal(typeof ex.message, "string");
  });

  test("locationupdate without an ack → exception naming locationupdate", async () => {
    const socket = await connect(B);
    const exception = waitForEvent(socket, "exception");
    socket.emit("locationupdate", { vehicleId: "bus-1", lat: 37.5, lon: 127, ts: tsAt() });
    const ex = await exception;
    assert.equal(ex.event, "locationupdate");
    assert.equal(ex.code, "unauthenticated");
  });
});

describe("session resume", () => {
  test("a session from replica A resumes on replica B without the token", async () => {
    const fleet = uid("fleet");
    const first = await connectWithSession(A, cluster.token({ sub: "disp-1", fleet, role: "dispatcher" }));
    const resumed = await connectWithSession(B, { session: first.session.sessionId });
    assert.equal(resumed.session.sessionId, first.session.sessionId);
    assert.equal(resumed.session.sub, "disp-1");
    assert.equal(resumed.session.fleet, fleet);
    assert.equal(resumed.session.role, "dispatcher");
    assert.ok(!("vehicle" in resumed.session));

    // The resumed socket acts with the session's rights.
    const viewer = (await connectWithSession(A, cluster.token({ sub: "viewer-1", fleet, role: "viewer" }))).socket;
    await subscribe(viewer, {});
    const got = record(viewer, "locationupdate");
    await publishAccepted(resumed.socket, { vehicleId: "bus-5", lat: 10.5, lon: 20.25, ts: tsAt() });
    const update = await got.waitFor((u) => u.vehicleId === "bus-5");
    assert.equal(update.fleet, fleet);
  });

  test("a resumed vehicle session keeps its vehicle", async () => {
    const fleet = uid("fleet");
    const first = await connectWithSession(B, cluster.token({ sub: "bus-3", fleet, role: "vehicle" }));
    const resumed = await connectWithSession(A, { session: first.session.sessionId });
    assert.equal(resumed.session.vehicle, "bus-3");
    await publishAccepted(resumed.socket, { lat: 1.5, lon: 2.5, ts: tsAt() });
    expectError(
      await emitWithAck(resumed.socket, "locationupdate", { vehicleId: "bus-4", lat: 1.5, lon: 2.5, ts: tsAt() }),
      "forbidden",
    );
  });

  test("resume with auth.fleet of another fleet → forbidden", async () => {
    const fleet = uid("fleet");
    const first = await connectWithSession(A, cluster.token({ sub: "viewer-4", fleet, role: "viewer" }));
    const err = await connectError(B, { auth: { session: first.session.sessionId, fleet: uid("other") } });
    assert.equal(err.message, "forbidden");
  });

  test("a session from the authenticate event resumes on the other replica", async () => {
    const fleet = uid("fleet");
    const socket = await connect(A);
    const session = expectOk(
      await emitWithAck(socket, "authenticate", { token: cluster.token({ sub: "viewer-9", fleet, role: "viewer" }) }),
    );
    const resumed = await connectWithSession(B, { session: session.sessionId });
    assert.equal(resumed.session.sessionId, session.sessionId);
    assert.equal(resumed.session.fleet, fleet);
  });

  test("a session that outlived its token can no longer be resumed", async () => {
    const fleet = uid("fleet");
    const exp = nowSecs() + 2;
    const first = await connectWithSession(A, cluster.token({ sub: "viewer-2", fleet, role: "viewer", exp }));
    assert.ok(first.session.expiresAt <= exp * 1000);
    first.socket.disconnect();
    await sleep(Math.max(0, first.session.expiresAt - Date.now()) + 1_500);
    const err = await connectError(B, { auth: { session: first.session.sessionId } });
    assert.equal(err.message, "session_expired");
  });

  test("an expired session disconnects its socket", async () => {
    const fleet = uid("fleet");
    const exp = nowSecs() + 2;
    const { socket, session } = await connectWithSession(B, cluster.token({ sub: "viewer-3", fleet, role: "viewer", exp }));
    const wait = Math.max(0, session.expiresAt - Date.now()) + 6_000;
    const reason = await waitForDisconnect(socket, wait);
    assert.equal(reason, "io server disconnect");
  });
});

describe("auth timeout", () => {
  const server = useServer({
    name: "single-auth-timeout",
    env: { FLEETGATE_JWT_SECRET: cluster.secret, FLEETGATE_AUTH_TIMEOUT_SECS: "1" },
  });

  test("a socket that never authenticates is disconnected by the server", async () => {
    const socket = await connect(server);
    const reason = await waitForDisconnect(socket, 8_000);
    assert.equal(reason, "io server disconnect");
  });

  test("a socket that authenticates in time stays connected", async () => {
    const fleet = uid("fleet");
    const socket = await connect(server);
    expectOk(
      await emitWithAck(socket, "authenticate", { token: signToken({ sub: "v", fleet, role: "viewer" }, { secret: cluster.secret }) }),
    );
    await expectNoEvent(socket, "disconnect", 2_500);
    assert.ok(socket.connected);
    expectOk(await emitWithAck(socket, "subscribe", {}));
  });

  test("a handshake-authenticated socket stays connected", async () => {
    const fleet = uid("fleet");
    const { socket } = await connectWithSession(
      server,
      signToken({ sub: "v", fleet, role: "viewer" }, { secret: cluster.secret }),
    );
    await expectNoEvent(socket, "disconnect", 2_500);
    assert.ok(socket.connected);
  });
});
