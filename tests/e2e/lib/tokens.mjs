// Tokens as clients bring them: HS256 JWTs signed with the deployment's
// secret (or a wrong one), and the unsigned `alg: none` kind a server must
// refuse.

import { randomBytes } from "node:crypto";

import jwt from "jsonwebtoken";

/** Now, in the seconds JWT times are counted in. */
export const nowSecs = () => Math.floor(Date.now() / 1000);

/**
 * Signs `claims` (sub, fleet, role, vehicle?, exp?…). `exp` defaults to one
 * hour ahead; pass `exp: undefined` explicitly via `omit: ["exp"]` to leave it out.
 */
export function signToken(
  claims,
  { secret, issuer, audience, algorithm = "HS256", omit = [], ttlSecs = 3600 } = {},
) {
  const payload = { exp: nowSecs() + ttlSecs, ...claims };
  if (issuer && payload.iss === undefined) payload.iss = issuer;
  if (audience && payload.aud === undefined) payload.aud = audience;
  for (const k of omit) delete payload[k];
  for (const [k, v] of Object.entries(payload)) if (v === undefined) delete payload[k];
  return jwt.sign(payload, secret, { algorithm, noTimestamp: false });
}

const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");

/** An unsigned `alg: none` token with the given claims. */
export function noneToken(claims) {
  const payload = { exp: nowSecs() + 3600, ...claims };
  return `${b64url({ alg: "none", typ: "JWT" })}.${b64url(payload)}.`;
}

/** A token signed with a secret the server does not know. */
export function wrongSecretToken(claims, opts = {}) {
  return signToken(claims, { ...opts, secret: `not-the-secret-${randomBytes(8).toString("hex")}` });
}
