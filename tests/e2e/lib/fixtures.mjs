// The fixtures suites open with: each returns its handle at once, while the
// suite is declared, and registers the `before` hook that starts it and the
// `after` hook that stops it, for the tests of the enclosing file or
// `describe`:
//
//     const cluster = twoReplicas();
//     const [A, B] = cluster.servers;

import { after, before } from "node:test";

import { deployment } from "./deployment.mjs";
import { failoverProxy } from "./proxy.mjs";
import { fleetgateServer } from "./server.mjs";

/** Registers the hooks that start `handle` before the suite's tests and stop it after them. */
function forTheSuite(handle) {
  before(() => handle.start());
  after(() => handle.stop());
  return handle;
}

/** A deployment (options as for `deployment`) for the suite. */
export function useDeployment(opts = {}) {
  return forTheSuite(deployment(opts));
}

/** Two replicas sharing a private Redis (a Redis Cluster with `E2E_REDIS=cluster`), for the suite. */
export function twoReplicas(opts = {}) {
  return useDeployment({ ...opts, replicas: 2 });
}

/** One fleetgate node with everything in memory, for the suite. */
export function singleNode(opts = {}) {
  return useDeployment({ ...opts, replicas: 1, redis: false });
}

/** One fleetgate process of its own (options as for `fleetgateServer`), for the suite. */
export function useServer(opts = {}) {
  return forTheSuite(fleetgateServer(opts));
}

/**
 * A failover proxy in front of `targets` (arguments as for `failoverProxy`),
 * for the suite. Declared after the deployment it fronts, it starts after it.
 */
export function useProxy(targets, opts = {}) {
  return forTheSuite(failoverProxy(targets, opts));
}
