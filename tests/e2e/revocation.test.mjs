// Session revocation and expiry (contract 3, 7): `DELETE /api/v1/sessions/{id}`
// by the session's owner or a dispatcher of its fleet disconnects every socket
// using the session on both replicas and makes it unresumable; refusals
// (404 unknown, 403 other members and other fleets, 401 without a valid
// bearer) leave the session working. FLEETGATE_SESSION_TTL_SECS ends sessions
// and their sockets on its own.

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
  httpRequest,
  nowSecs,
  sleep,
  subscribe,
  test,
  twoReplicas,
  uid,
  waitForDisconnect,
  wrongSecretToken,
} from "./lib/harness.mjs";

/** How long a refused revocation is given to (wrongly) take effect. */
const SURVIVE_MS = 1_500;
/** Bound for a revoked or expired session's sockets to be dropped. */
const DROP_MS = 5_000;

/** DELETE /api/v1/sessions/{id}; `token` undefined sends no Authorization. */
function revoke(server, sessionId, token, headers = {}) {
  const url = `${server.url}/api/v1/sessions/${encodeURIComponent(sessionId)}`;
  return httpRequest(url, { method: "DELETE", token, headers });
}

function assertRevoked(res) {
  assert.equal(res.status, 200, `revocation: ${res.status} ${res.text}`);
  assert.deepEqual(res.json, { ok: true, data: { revoked: true } }, `revocation body: ${res.text}`);
}

function assertRefused(res, status, code) {
  assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status} ${res.text}`);
  expectError(res.json, code, `DELETE /api/v1/sessions → ${status}`);
}

/** The session behind `socket` still works: connected, usable, resumable elsewhere. */
async function assertAlive(socket, sessionId, resumeOn) {
  await expectNoEvent(socket, "disconnect", SURVIVE_MS);
  assert.ok(socket.connected, "the socket of a session that was not revoked was disconnected");
  expectOk(await emitWithAck(socket, "subscribe", {}), "subscribe on the surviving socket");
  const resumed = await connectWithSession(resumeOn, { session: sessionId });
  assert.equal(resumed.session.sessionId, sessionId);
  resumed.socket.disconnect();
}

describe("revocation across two replicas sharing Redis", () => {
  const cluster = twoReplicas();
  const [A, B] = cluster.servers;

  test("the owner revokes its session: its sockets on both replicas drop and it cannot be resumed", async () => {
    const fleet = uid("fleet");
    const claims = { sub: "viewer-1", fleet, role: "viewer" };
    const onA = await connectWithSession(A, cluster.token(claims));
    const sessionId = onA.session.sessionId;
    const onB = (await connectWithSession(B, { session: sessionId })).socket;
    // Another session of the same principal is not touched.
    const sibling = await connectWithSession(B, cluster.token(claims));
    assert.notEqual(sibling.session.sessionId, sessionId);

    const dropped = Promise.all([waitForDisconnect(onA.socket, DROP_MS), waitForDisconnect(onB, DROP_MS)]);
    dropped.catch(() => {});
    assertRevoked(await revoke(B, sessionId, cluster.token(claims)));
    assert.deepEqual(await dropped, ["io server disconnect", "io server disconnect"], "disconnect reasons on A and B");

    for (const server of [A, B]) {
      const err = await connectError(server, { auth: { session: sessionId } });
      assert.equal(err.message, "session_expired", `resume on ${server.name}`);
    }
    await assertAlive(sibling.socket, sibling.session.sessionId, A);
  });

  test("a dispatcher of the fleet revokes a vehicle's session, also one opened with authenticate", async () => {
    const fleet = uid("fleet");
    const bus = await connect(A);
    const session = expectOk(
      await emitWithAck(bus, "authenticate", { token: cluster.token({ sub: "bus-1", fleet, role: "vehicle" }) }),
    );
    const resumed = (await connectWithSession(B, { session: session.sessionId })).socket;
    const dropped = Promise.all([waitForDisconnect(bus, DROP_MS), waitForDisconnect(resumed, DROP_MS)]);
    dropped.catch(() => {});

    assertRevoked(await revoke(B, session.sessionId, cluster.token({ sub: "disp-1", fleet, role: "dispatcher" })));
    assert.deepEqual(await dropped, ["io server disconnect", "io server disconnect"], "disconnect reasons on A and B");
    const err = await connectError(A, { auth: { session: session.sessionId } });
    assert.equal(err.message, "session_expired");
  });

  test("an unknown session → 404 not_found", async () => {
    const fleet = uid("fleet");
    const disp = cluster.token({ sub: "disp-1", fleet, role: "dispatcher" });
    assertRefused(await revoke(A, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", disp), 404, "not_found");
    assertRefused(await revoke(B, "nope", disp), 404, "not_found");
  });

  test("another member of the fleet who is not a dispatcher → 403 forbidden, and the session survives", async () => {
    const fleet = uid("fleet");
    const victim = await connectWithSession(A, cluster.token({ sub: "disp-9", fleet, role: "dispatcher" }));
    const id = victim.session.sessionId;
    assertRefused(await revoke(B, id, cluster.token({ sub: "viewer-2", fleet, role: "viewer" })), 403, "forbidden");
    assertRefused(await revoke(A, id, cluster.token({ sub: "bus-2", fleet, role: "vehicle" })), 403, "forbidden");
    // A vehicle token whose vehicle claim is the victim's sub is still someone else.
    assertRefused(
      await revoke(A, id, cluster.token({ sub: "driver-3", fleet, role: "vehicle", vehicle: "disp-9" })),
      403,
      "forbidden",
    );
    await assertAlive(victim.socket, id, B);
  });

  test("a dispatcher of another fleet, or the same sub in another fleet, cannot revoke it", async () => {
    const fleet = uid("fleet");
    const other = uid("fleet-other");
    const victim = await connectWithSession(B, cluster.token({ sub: "viewer-5", fleet, role: "viewer" }));
    const id = victim.session.sessionId;
    for (const [what, token] of [
      ["a dispatcher of another fleet", cluster.token({ sub: "disp-1", fleet: other, role: "dispatcher" })],
      ["the same sub in another fleet", cluster.token({ sub: "viewer-5", fleet: other, role: "viewer" })],
    ]) {
      const res = await revoke(A, id, token);
      assert.ok(res.status === 403 || res.status === 404, `${what}: expected 403 or 404, got ${res.status} ${res.text}`);
      expectError(res.json, res.status === 403 ? "forbidden" : "not_found", what);
    }
    await assertAlive(victim.socket, id, A);
  });

  test("no valid bearer → 401, and the session survives", async () => {
    const fleet = uid("fleet");
    const claims = { sub: "viewer-6", fleet, role: "viewer" };
    const victim = await connectWithSession(A, cluster.token(claims));
    const id = victim.session.sessionId;

    assertRefused(await revoke(B, id, undefined), 401, "unauthenticated");
    const bad = [
      ["a garbage bearer", { authorization: "Bearer not-a-jwt" }],
      ["a bearer signed with another secret", { authorization: `Bearer ${wrongSecretToken(claims)}` }],
      ["an expired bearer", { authorization: `Bearer ${cluster.token({ ...claims, exp: nowSecs() - 10 })}` }],
      ["Basic credentials", { authorization: `Basic ${Buffer.from("viewer-6:secret").toString("base64")}` }],
    ];
    for (const [what, headers] of bad) {
      const res = await revoke(A, id, undefined, headers);
      assert.equal(res.status, 401, `${what}: ${res.status} ${res.text}`);
      assert.equal(res.json?.ok, false, `${what}: ${res.text}`);
      assert.ok(
        ["unauthenticated", "invalid_token", "token_expired"].includes(res.json?.error?.code),
        `${what}: unexpected code in ${res.text}`,
      );
    }
    await assertAlive(victim.socket, id, B);
  });
});

describe("session lifetime (FLEETGATE_SESSION_TTL_SECS=2)", () => {
  const cluster = twoReplicas({ env: { FLEETGATE_SESSION_TTL_SECS: "2" } });
  const [A, B] = cluster.servers;

  test("sockets of an expired session are disconnected everywhere and it cannot be resumed", async () => {
    const fleet = uid("fleet");
    const first = await connectWithSession(A, cluster.token({ sub: "viewer-1", fleet, role: "viewer" }));
    const id = first.session.sessionId;
    assert.ok(
      first.session.expiresAt <= Date.now() + 2_000 + 1_000,
      `expiresAt ${first.session.expiresAt} ignores FLEETGATE_SESSION_TTL_SECS=2 (now ${Date.now()})`,
    );
    const onB = (await connectWithSession(B, { session: id })).socket;
    await subscribe(onB, {});
    const viaEvent = await connect(B);
    expectOk(await emitWithAck(viaEvent, "authenticate", { token: cluster.token({ sub: "bus-1", fleet, role: "vehicle" }) }));

    const reasons = await Promise.all([
      waitForDisconnect(first.socket, 2_000 + DROP_MS),
      waitForDisconnect(onB, 2_000 + DROP_MS),
      waitForDisconnect(viaEvent, 2_000 + DROP_MS),
    ]);
    assert.deepEqual(reasons, ["io server disconnect", "io server disconnect", "io server disconnect"]);

    for (const server of [A, B]) {
      const err = await connectError(server, { auth: { session: id } });
      assert.equal(err.message, "session_expired", `resume on ${server.name}`);
    }
  });

  test("a session is resumable while it lives", async () => {
    const fleet = uid("fleet");
    const first = await connectWithSession(B, cluster.token({ sub: "viewer-2", fleet, role: "viewer" }));
    first.socket.disconnect();
    await sleep(300);
    const resumed = await connectWithSession(A, { session: first.session.sessionId });
    assert.equal(resumed.session.sessionId, first.session.sessionId);
  });
});
