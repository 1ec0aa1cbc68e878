// Deployments under test: replicas of fleetgate sharing one private Redis
// (or a single in-memory node), started and stopped as one, and the HS256
// tokens they accept. Suites declare theirs through `fixtures.mjs`.

import { randomBytes } from "node:crypto";

import { startSharedRedis } from "./redis-cluster.mjs";
import { fleetgateServer } from "./server.mjs";
import { closeAllSockets } from "./sockets.mjs";
import { signToken } from "./tokens.mjs";

const REPLICA_NAMES = ["A", "B", "C", "D"];

/**
 * A test deployment, not started yet: `replicas` fleetgate processes, sharing
 * one private Redis (see `startSharedRedis`: a Redis Cluster when
 * `E2E_REDIS=cluster`) when `redis` is true (the default) or an object of
 * `startRedis` / `startRedisCluster` options (e.g. `{ persist: true }`), or
 * a single in-memory node. `env` and `args` go to every replica; `jwt`
 * settings are what tokens minted through `token()` carry.
 *
 * `servers` holds the replicas' handles from the start; `start()` starts
 * Redis and then them (stopping what it started if one fails) and resolves
 * with the deployment, once however often it is called; `stop()` closes
 * every socket the tests opened and stops everything.
 */
export function deployment({
  replicas = 2,
  redis = true,
  env = {},
  args = [],
  secret = randomBytes(24).toString("hex"),
  issuer,
  audience,
} = {}) {
  let started = null;
  const d = {
    secret,
    issuer,
    audience,
    redis: null,
    servers: Array.from({ length: replicas }, (_, i) =>
      fleetgateServer({ name: `replica-${REPLICA_NAMES[i] ?? i}`, args }),
    ),
    start() {
      started ??= launch();
      return started;
    },
    async stop() {
      closeAllSockets();
      await Promise.all(d.servers.map((s) => s.stop()));
      if (d.redis) await d.redis.stop();
    },
    /** A signed token for this deployment (HS256, its secret, iss/aud). */
    token(claims, opts = {}) {
      return signToken(claims, { secret, issuer, audience, ...opts });
    },
  };

  async function launch() {
    try {
      if (redis) d.redis = await startSharedRedis(typeof redis === "object" ? redis : {});
      const fullEnv = {
        FLEETGATE_JWT_SECRET: secret,
        ...(issuer ? { FLEETGATE_JWT_ISSUER: issuer } : {}),
        ...(audience ? { FLEETGATE_JWT_AUDIENCE: audience } : {}),
        ...(d.redis ? d.redis.env : {}),
        ...env,
      };
      for (const server of d.servers) await server.start(fullEnv);
    } catch (err) {
      await d.stop();
      throw err;
    }
    return d;
  }

  return d;
}

/** Starts a deployment (options as for `deployment`) and resolves with it once every replica is ready. */
export function startCluster(opts = {}) {
  return deployment(opts).start();
}
