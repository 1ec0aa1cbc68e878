// Tokens from an identity provider (contract section 2, FLEETGATE_JWT_JWKS_URL)
// through the official socket.io-client: a JWKS served by a local HTTP server
// (keys made with node:crypto), an RS256 token in the handshake, an ES256 token
// through `authenticate`, the same tokens as HTTP bearer tokens, and the
// refusals a client sees (unknown kid, HS256 "signed" with a public key, alg none).

import http from "node:http";
import { generateKeyPairSync } from "node:crypto";
import { after, before, describe } from "node:test";
import assert from "node:assert/strict";

import jwt from "jsonwebtoken";

import {
  connectError,
  connectWithSession,
  emitWithAck,
  expectOk,
  noneToken,
  nowSecs,
  openSocket,
  publishAccepted,
  startServer,
  subscribe,
  test,
  uid,
  waitForEvent,
} from "./lib/harness.mjs";

const ISSUER = "https://id.example.com/realms/fleet";
const AUDIENCE = "fleetgate";

function keyPair(type, kid) {
  const { publicKey, privateKey } =
    type === "rsa"
      ? generateKeyPairSync("rsa", { modulusLength: 2048 })
      : generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwk = { ...publicKey.export({ format: "jwk" }), kid, use: "sig", alg: type === "rsa" ? "RS256" : "ES256" };
  const pem = publicKey.export({ format: "pem", type: "spki" });
  return { kid, jwk, pem, privateKey, algorithm: jwk.alg };
}

function tokenOf(key, claims, { kid = key.kid } = {}) {
  const payload = { iss: ISSUER, aud: AUDIENCE, exp: nowSecs() + 600, ...claims };
  return jwt.sign(payload, key.privateKey, { algorithm: key.algorithm, keyid: kid });
}

let provider;
let requests = 0;
let server;
const rsa = keyPair("rsa", "rsa-2026-11");
const ec = keyPair("ec", "ec-2026-11");
const fleet = uid("jwks");

describe("tokens from an identity provider's JWKS", () => {
  before(async () => {
    provider = http.createServer((req, res) => {
      requests += 1;
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ keys: [rsa.jwk, ec.jwk] }));
    });
    await new Promise((r) => provider.listen(0, "127.0.0.1", r));
    server = await startServer({
      name: "jwks",
      env: {
        FLEETGATE_JWT_JWKS_URL: `http://127.0.0.1:${provider.address().port}/protocol/openid-connect/certs`,
        FLEETGATE_JWT_ISSUER: ISSUER,
        FLEETGATE_JWT_AUDIENCE: AUDIENCE,
      },
    });
  });

  after(async () => {
    await server?.stop();
    await new Promise((r) => provider?.close(r) ?? r());
  });

  test("an RS256 token in the handshake and an ES256 token through authenticate", async () => {
    const vehicleToken = tokenOf(rsa, { sub: "bus-7", fleet, role: "vehicle" });
    const { socket: vehicle, session } = await connectWithSession(server, vehicleToken);
    assert.equal(session.fleet, fleet);
    assert.equal(session.vehicle, "bus-7");

    const viewer = openSocket(server);
    await waitForEvent(viewer, "connect");
    const auth = await emitWithAck(viewer, "authenticate", {
      token: tokenOf(ec, { sub: "rider-1", fleet, role: "viewer" }),
      provider: fleet,
    });
    expectOk(auth, "authenticate with an ES256 token");
    assert.equal(auth.data.role, "viewer");
    await subscribe(viewer, {});
    const seen = waitForEvent(viewer, "locationupdate");
    await publishAccepted(vehicle, { lat: 37.5, lon: 127.0 });
    assert.equal((await seen).vehicleId, "bus-7");
  });

  test("the same tokens over HTTP", async () => {
    for (const key of [rsa, ec]) {
      const res = await fetch(`${server.url}/api/v1/fleets/${fleet}/vehicles`, {
        headers: { authorization: `Bearer ${tokenOf(key, { sub: "d", fleet, role: "dispatcher" })}` },
      });
      assert.equal(res.status, 200, key.kid);
      await res.arrayBuffer();
    }
  });

  test("refusals: unknown kid, algorithm confusion, alg none", async () => {
    const claims = { sub: "x", fleet, role: "dispatcher", iss: ISSUER, aud: AUDIENCE };
    const refused = {
      "unknown kid": tokenOf(rsa, claims, { kid: "never-published" }),
      "HS256 with the RSA public key PEM": jwt.sign({ ...claims, exp: nowSecs() + 600 }, rsa.pem, {
        algorithm: "HS256",
        keyid: rsa.kid,
      }),
      "alg none": noneToken(claims),
    };
    for (const [what, token] of Object.entries(refused)) {
      const err = await connectError(server, { auth: { token } });
      assert.equal(err.message, "invalid_token", what);
      const res = await fetch(`${server.url}/api/v1/fleets/${fleet}/vehicles`, {
        headers: { authorization: `Bearer ${token}` },
      });
      assert.equal(res.status, 401, `${what} over HTTP`);
      assert.equal((await res.json()).error.code, "invalid_token");
    }
    // The refreshes they may trigger are limited to one per 10 s (counted in tests/jwks.rs).
    assert.ok(requests >= 1 && requests <= 3, `${requests} JWKS requests`);
  });
});
