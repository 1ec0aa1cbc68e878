// A private Redis Cluster (`redis-server --cluster-enabled yes` on free
// ports, joined by `redis-cli --cluster create`), with a handle for faults
// on one node or all, and the choice the whole suite makes between it and a
// single Redis (`E2E_REDIS=cluster`).

import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

import { freePort, portIsFree } from "./processes.mjs";
import { persistenceArgs, redisCli, redisProcess, startRedis } from "./redis.mjs";
import { until } from "./wait.mjs";

/** A free port whose cluster bus port (port + 10000) is free too. */
async function freeClusterPort() {
  for (;;) {
    const port = await freePort();
    if (port + 10_000 > 65_535) continue;
    if (await portIsFree(port + 10_000)) return port;
  }
}

/**
 * Starts a private Redis Cluster: `masters` primaries (3 by default), each
 * with `replicasPerMaster` replicas, on free ports, and waits until every
 * node reports `cluster_state:ok`.
 *
 * The handle has the outage methods of a single Redis, applied to every
 * node (so a test written against one Redis runs against the cluster), and
 * more for one node at a time:
 * - `nodes`: every node's process handle (`pause`, `kill`, `restart`, …);
 * - `primaries()`: the ports of the current primaries, and `primaryOf(key)`;
 * - `waitHealthy()`: resolves once the cluster is whole again (each live
 *   node says `cluster_state:ok`, and every slot has a live primary), and
 *   `waitSynced()` once every replica has its primary's data;
 * - `env`: FLEETGATE_REDIS_CLUSTER_NODES naming the seeds.
 */
export async function startRedisCluster({ persist = false, masters = 3, replicasPerMaster = 0 } = {}) {
  const count = masters * (1 + replicasPerMaster);
  const dirs = [];
  const nodes = [];
  const stopAll = async () => {
    const results = await Promise.all(nodes.map((n) => n.stopProcess()));
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
    return { graceful: results.every((r) => r.graceful) };
  };
  try {
    for (let i = 0; i < count; i += 1) {
      const port = await freeClusterPort();
      const dir = mkdtempSync(path.join(os.tmpdir(), "fleetgate-e2e-rcluster-"));
      dirs.push(dir);
      const node = await redisProcess({
        port,
        name: `redis-cluster-${i}`,
        args: [
          "--port", String(port),
          "--bind", "127.0.0.1",
          "--cluster-enabled", "yes",
          "--cluster-config-file", path.join(dir, "nodes.conf"),
          // Failure detection (and a replica's promotion) within seconds.
          "--cluster-node-timeout", "1500",
          // Replicas sync at once, and may take over however long ago
          // they last heard from their primary.
          "--repl-diskless-sync-delay", "0",
          "--cluster-replica-validity-factor", "0",
          ...persistenceArgs(persist, dir),
        ],
      });
      node.stopProcess = node.stop;
      nodes.push(node);
    }
    await redisCli([
      "--cluster", "create",
      ...nodes.map((n) => `127.0.0.1:${n.port}`),
      "--cluster-replicas", String(replicasPerMaster),
      "--cluster-yes",
    ]);
  } catch (err) {
    await stopAll();
    throw err;
  }

  const handle = {
    kind: "cluster",
    nodes,
    env: { FLEETGATE_REDIS_CLUSTER_NODES: nodes.map((n) => `127.0.0.1:${n.port}`).join(",") },
    /** Ports of the nodes that serve slots now, per `CLUSTER SLOTS` of a live node. */
    async slots() {
      for (const n of nodes.filter((x) => x.running)) {
        try {
          const out = await redisCli(["-p", String(n.port), "--json", "cluster", "slots"], { timeoutMs: 2_000 });
          return JSON.parse(out).map(([from, to, primary]) => ({ from, to, port: primary[1] }));
        } catch {
          // try the next node
        }
      }
      throw new Error("no live cluster node answers CLUSTER SLOTS");
    },
    async primaries() {
      return [...new Set((await this.slots()).map((s) => s.port))];
    },
    /** The node (handle) that is primary for `key` now. */
    async primaryOf(key) {
      const live = nodes.find((x) => x.running);
      const slot = Number((await redisCli(["-p", String(live.port), "cluster", "keyslot", key])).trim());
      const range = (await this.slots()).find((s) => slot >= s.from && slot <= s.to);
      return nodes.find((n) => n.port === range?.port);
    },
    async waitHealthy(ms = 30_000) {
      const healthy = async () => {
        for (const n of nodes.filter((x) => x.running)) {
          const info = await redisCli(["-p", String(n.port), "cluster", "info"], { timeoutMs: 2_000 }).catch(() => "");
          if (!info.includes("cluster_state:ok")) return false;
        }
        const primaries = await this.primaries().catch(() => null);
        return !!primaries && primaries.every((p) => nodes.find((n) => n.port === p)?.running);
      };
      await until(healthy, ms, "the Redis Cluster did not become healthy");
    },
    /** Resolves once every live replica node has its primary's data (one that can take over). */
    async waitSynced(ms = 30_000) {
      const synced = async () => {
        for (const n of nodes.filter((x) => x.running)) {
          const info = await redisCli(["-p", String(n.port), "info", "replication"]).catch(() => "");
          if (!info.includes("role:master") && !info.includes("master_link_status:up")) return false;
        }
        return true;
      };
      await until(synced, ms, "a replica did not sync with its primary", 100);
    },
    pause() {
      nodes.forEach((n) => n.pause());
    },
    resume() {
      nodes.forEach((n) => n.resume());
    },
    async kill(signal = "SIGKILL") {
      await Promise.all(nodes.map((n) => n.kill(signal)));
    },
    async restart() {
      await Promise.all(nodes.map((n) => n.restart()));
      await this.waitHealthy();
    },
    stop: stopAll,
  };
  try {
    await handle.waitHealthy();
    await handle.waitSynced();
  } catch (err) {
    await stopAll();
    throw err;
  }
  return handle;
}

/** Whether this run shares state through a Redis Cluster (`E2E_REDIS=cluster`). */
export const clusterMode = process.env.E2E_REDIS === "cluster";

/**
 * The Redis the end-to-end tests share between replicas: a single
 * redis-server, or a 3-primary Redis Cluster when `E2E_REDIS=cluster` (or
 * `cluster: true`), so the same suite runs in both modes. Options as for
 * `startRedis`, and for `startRedisCluster` in cluster mode.
 */
export function startSharedRedis({ cluster = clusterMode, ...opts } = {}) {
  return cluster ? startRedisCluster(opts) : startRedis(opts);
}
