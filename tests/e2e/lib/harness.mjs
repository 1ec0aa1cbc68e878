// Shared harness for the end-to-end tests: starts a private redis-server and
// real fleetgate processes on free ports, mints tokens, and wraps the official
// socket.io-client in promise helpers. Every process and socket it creates is
// stopped in `after()` hooks and, as a last resort, when the test process exits.

import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { test as nodeTest } from "node:test";
import assert from "node:assert/strict";

import jwt from "jsonwebtoken";
import { io } from "socket.io-client";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..", "..", "..");

export const BIN = process.env.FLEETGATE_BIN || path.join(repoRoot, "target", "debug", "fleetgate");
export const NAMESPACE = "/fleet";

const DEFAULT_ACK_MS = 5_000;
const DEFAULT_EVENT_MS = 5_000;
const READY_TIMEOUT_MS = 20_000;
const LOG_TAIL_BYTES = 16 * 1024;

// ---------------------------------------------------------------------------
// Process bookkeeping
// ---------------------------------------------------------------------------

/** Child processes still running (redis and fleetgate). */
const children = new Set();
/** Every server started by this process, for log tails in failures. */
const servers = [];
/** Every socket opened by this process. */
const sockets = new Set();

function killAllSync() {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}

process.on("exit", killAllSync);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, () => {
    killAllSync();
    process.exit(128 + (signal === "SIGINT" ? 2 : signal === "SIGTERM" ? 15 : 1));
  });
}

function tailBuffer() {
  let text = "";
  return {
    push(chunk) {
      text += chunk.toString();
      if (text.length > LOG_TAIL_BYTES) text = text.slice(text.length - LOG_TAIL_BYTES);
    },
    get text() {
      return text;
    },
  };
}

function waitForExit(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/**
 * SIGTERM, then SIGKILL after `graceMs`. Resolves with whether the process
 * ended on SIGTERM alone (or had already ended).
 */
async function stopChild(child, graceMs = 5_000) {
  if (child.exitCode !== null || child.signalCode !== null) {
    children.delete(child);
    return { graceful: true };
  }
  child.kill("SIGTERM");
  const graceful = await waitForExit(child, graceMs);
  if (!graceful) {
    child.kill("SIGKILL");
    await waitForExit(child, 2_000);
  }
  children.delete(child);
  return { graceful };
}

/** Log tails of every server started so far, for failure messages. */
export function serverLogs() {
  return servers
    .map((s) => {
      const state = s.exited ? ` (exited: ${s.exited})` : "";
      const body = s.logs.text.trim() || "(no output)";
      return `--- ${s.name} ${s.url}${state} ---\n${body.split("\n").slice(-40).join("\n")}`;
    })
    .join("\n");
}

/**
 * node:test's `test`, reporting the servers' recent output as a diagnostic
 * when the test fails, so a failing run shows what the server said.
 */
export function test(name, opts, fn) {
  if (typeof opts === "function") {
    fn = opts;
    opts = {};
  }
  return nodeTest(name, opts, async (t) => {
    try {
      await fn(t);
    } catch (err) {
      const logs = serverLogs();
      if (logs) t.diagnostic(`server output:\n${logs}`);
      throw err;
    }
  });
}

// ---------------------------------------------------------------------------
// Ports, ids, clocks
// ---------------------------------------------------------------------------

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

let counter = 0;
/** A fresh id of the contract's grammar, unique within this run. */
export function uid(prefix = "id") {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}-${randomBytes(3).toString("hex")}`;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value (resolving with it); rejects with `what` (or `what()`) after `ms`. */
export async function until(fn, ms, what, every = 200) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${typeof what === "function" ? what() : what} (waited ${ms} ms)`);
    await sleep(every);
  }
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

function redisPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    let data = "";
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.on("error", () => done(false));
    sock.on("connect", () => sock.write("PING\r\n"));
    sock.on("data", (d) => {
      data += d.toString();
      if (data.includes("\r\n")) done(data.startsWith("+PONG"));
    });
  });
}

/**
 * One redis-server process on `port` with `args`, and the handle that fakes
 * its outages:
 * - `pause()` / `resume()`: SIGSTOP / SIGCONT (connections stay open and
 *   commands hang, as with a stalled or partitioned Redis);
 * - `kill(signal = "SIGKILL")`: ends the process and resolves once it exited;
 * - `restart()`: starts redis-server again on the same port (and directory),
 *   after killing the running one if there is one, and waits for PING.
 */
async function redisProcess({ port, args, name = `redis-${port}` }) {
  const logs = tailBuffer();
  let child = null;
  let paused = false;

  async function launch() {
    child = spawn("redis-server", args, { stdio: ["ignore", "pipe", "pipe"] });
    paused = false;
    const current = child;
    children.add(current);
    current.stdout.on("data", (d) => logs.push(d));
    current.stderr.on("data", (d) => logs.push(d));
    current.on("exit", () => children.delete(current));
    let spawnError = null;
    current.on("error", (e) => {
      spawnError = e;
    });
    const deadline = Date.now() + 10_000;
    while (!(await redisPing(port))) {
      if (spawnError) throw new Error(`cannot start redis-server: ${spawnError.message}`);
      if (current.exitCode !== null) throw new Error(`${name} exited (${current.exitCode}):\n${logs.text}`);
      if (Date.now() > deadline) {
        await stopChild(current);
        throw new Error(`${name} on port ${port} did not answer PING:\n${logs.text}`);
      }
      await sleep(50);
    }
  }

  const running = () => child && child.exitCode === null && child.signalCode === null;

  await launch();
  return {
    name,
    port,
    logs,
    get child() {
      return child;
    },
    get running() {
      return running();
    },
    /** SIGSTOP: Redis stops answering but keeps its connections and port. */
    pause() {
      if (running() && !paused) {
        child.kill("SIGSTOP");
        paused = true;
      }
    },
    /** SIGCONT after `pause()`. */
    resume() {
      if (running() && paused) {
        child.kill("SIGCONT");
        paused = false;
      }
    },
    /** Sends `signal` (SIGKILL by default) and resolves once Redis exited. */
    async kill(signal = "SIGKILL") {
      if (!running()) return;
      const current = child;
      if (paused && signal !== "SIGKILL") current.kill("SIGCONT");
      current.kill(signal);
      if (!(await waitForExit(current, 10_000))) throw new Error(`${name} ignored ${signal} for 10 s`);
      children.delete(current);
    },
    /** Starts Redis again on the same port (killing a running one first). */
    async restart() {
      if (running()) await this.kill("SIGKILL");
      await launch();
    },
    async stop() {
      if (child && paused) child.kill("SIGCONT");
      paused = false;
      return child ? await stopChild(child) : { graceful: true };
    },
  };
}

/** Arguments that keep (or do not keep) a node's data across restarts. */
function persistenceArgs(persist, dir) {
  const args = ["--save", "", "--dir", dir];
  if (persist) args.push("--appendonly", "yes", "--appendfsync", "always");
  else args.push("--appendonly", "no");
  return args;
}

/**
 * Starts a private redis-server on a free port (non-persistent by default).
 *
 * Options (all optional):
 * - `persist: true`: an append-only file fsynced on every write
 *   (`appendfsync always`) in a temporary directory, so a reply Redis sent
 *   survives even a SIGKILL of Redis and `restart()` brings the data back.
 *
 * The handle has the outage methods of a Redis process (`pause`, `resume`,
 * `kill`, `restart`), `url`, and `env`: the FLEETGATE_* settings that point
 * a replica at it.
 */
export async function startRedis({ persist = false } = {}) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), "fleetgate-e2e-redis-"));
  const node = await redisProcess({
    port,
    args: ["--port", String(port), "--bind", "127.0.0.1", ...persistenceArgs(persist, dir)],
  });
  const url = `redis://127.0.0.1:${port}`;
  const stopProcess = node.stop;
  return Object.assign(node, {
    kind: "single",
    url,
    dir,
    env: { FLEETGATE_REDIS_URL: url },
    async stop() {
      const result = await stopProcess.call(node);
      rmSync(dir, { recursive: true, force: true });
      return result;
    },
  });
}

/** Runs `redis-cli` with `args`; resolves with its output. */
export function redisCli(args, { timeoutMs = 30_000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile("redis-cli", args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`redis-cli ${args.join(" ")}: ${err.message}\n${stdout}${stderr}`));
      else resolve(stdout);
    });
  });
}

/** A free port whose cluster bus port (port + 10000) is free too. */
async function freeClusterPort() {
  for (;;) {
    const port = await freePort();
    if (port + 10_000 > 65_535) continue;
    const bus = await new Promise((resolve) => {
      const srv = net.createServer();
      srv.unref();
      srv.on("error", () => resolve(false));
      srv.listen(port + 10_000, "127.0.0.1", () => srv.close(() => resolve(true)));
    });
    if (bus) return port;
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

// ---------------------------------------------------------------------------
// fleetgate
// ---------------------------------------------------------------------------

/** Environment of a child: the caller's, minus any FLEETGATE_* setting. */
function baseEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("FLEETGATE_")) env[k] = v;
  }
  return env;
}

/**
 * Starts one fleetgate process and waits until `GET /readyz` is 200.
 * `env` holds FLEETGATE_* settings; addresses and log level are filled in.
 */
export async function startServer({ name = "fleetgate", env = {}, args = [] } = {}) {
  if (!existsSync(BIN)) {
    throw new Error(`fleetgate binary not found at ${BIN} (build it with \`cargo build\` or set FLEETGATE_BIN)`);
  }
  const port = await freePort();
  const metricsPort = await freePort();
  const fullEnv = {
    ...baseEnv(),
    FLEETGATE_ADDR: `127.0.0.1:${port}`,
    FLEETGATE_METRICS_ADDR: `127.0.0.1:${metricsPort}`,
    FLEETGATE_LOG: process.env.E2E_SERVER_LOG || "warn",
    FLEETGATE_SHUTDOWN_GRACE_SECS: "1",
    ...env,
  };
  for (const [k, v] of Object.entries(fullEnv)) {
    if (v === undefined || v === null) delete fullEnv[k];
    else fullEnv[k] = String(v);
  }
  const logs = tailBuffer();
  const child = spawn(BIN, args, { env: fullEnv, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  const echo = !!process.env.E2E_ECHO_LOGS;
  child.stdout.on("data", (d) => {
    logs.push(d);
    if (echo) process.stderr.write(`[${name}] ${d}`);
  });
  child.stderr.on("data", (d) => {
    logs.push(d);
    if (echo) process.stderr.write(`[${name}] ${d}`);
  });

  const server = {
    name,
    port,
    metricsPort,
    url: `http://127.0.0.1:${port}`,
    metricsUrl: `http://127.0.0.1:${metricsPort}`,
    env: fullEnv,
    logs,
    exited: null,
    child,
    /** SIGTERM (SIGKILL after `graceMs`); resolves with `{ graceful }`. */
    stop: (graceMs) => stopChild(child, graceMs),
    /** How it ended, once it has: `{ code, signal }` as Node reports them. */
    exitStatus: null,
    /**
     * Sends `signal` (default SIGKILL) and waits up to `ms` for the exit;
     * resolves with `{ exited, code, signal }` (not killed further if it
     * has not exited by then: `stop()` or the exit hooks do that).
     */
    async kill(signal = "SIGKILL", ms = 10_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const exited = await waitForExit(child, ms);
      if (exited) children.delete(child);
      return { exited, code: child.exitCode, signal: child.signalCode };
    },
  };
  servers.push(server);
  let spawnError = null;
  child.on("error", (e) => {
    spawnError = e;
  });
  child.on("exit", (code, signal) => {
    server.exited = signal ? `signal ${signal}` : `code ${code}`;
    server.exitStatus = { code, signal };
  });

  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (spawnError) throw new Error(`cannot start ${BIN}: ${spawnError.message}`);
    if (server.exited) throw new Error(`${name} exited before it was ready (${server.exited}):\n${logs.text}`);
    try {
      const res = await fetch(`${server.url}/readyz`, { signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stopChild(child);
      throw new Error(`${name} was not ready within ${READY_TIMEOUT_MS} ms:\n${logs.text}`);
    }
    await sleep(100);
  }
  return server;
}

/**
 * A test deployment: `replicas` fleetgate processes, sharing one private
 * Redis (see `startSharedRedis`: a Redis Cluster when `E2E_REDIS=cluster`)
 * when `redis` is true (the default) or an object of `startRedis` options
 * (e.g. `{ persist: true }`), or a single in-memory node.
 * `jwt` settings are what tokens minted through `cluster.token` carry.
 */
export async function startCluster({
  replicas = 2,
  redis = true,
  env = {},
  args = [],
  secret = randomBytes(24).toString("hex"),
  issuer,
  audience,
} = {}) {
  const cluster = {
    secret,
    issuer,
    audience,
    redis: null,
    servers: [],
    async stop() {
      closeAllSockets();
      await Promise.all(this.servers.map((s) => s.stop()));
      if (this.redis) await this.redis.stop();
    },
    /** A signed token for this deployment (HS256, its secret, iss/aud). */
    token(claims, opts = {}) {
      return signToken(claims, { secret, issuer, audience, ...opts });
    },
  };
  try {
    if (redis) cluster.redis = await startSharedRedis(typeof redis === "object" ? redis : {});
    const fullEnv = {
      FLEETGATE_JWT_SECRET: secret,
      ...(issuer ? { FLEETGATE_JWT_ISSUER: issuer } : {}),
      ...(audience ? { FLEETGATE_JWT_AUDIENCE: audience } : {}),
      ...(cluster.redis ? cluster.redis.env : {}),
      ...env,
    };
    const names = ["A", "B", "C", "D"];
    for (let i = 0; i < replicas; i += 1) {
      cluster.servers.push(
        await startServer({ name: `replica-${names[i] ?? i}`, env: fullEnv, args }),
      );
    }
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}

// ---------------------------------------------------------------------------
// Failover TCP proxy
// ---------------------------------------------------------------------------

/**
 * A tiny TCP load balancer in front of `targets` (servers, or anything with
 * `name` and `port`): each new connection goes to the first target, in
 * order, that accepts it, so while the first is up every client lands there
 * and once it is gone (refused) clients reconnecting through the proxy land
 * on the next. Bytes are relayed untouched (websocket and polling alike);
 * when either side closes, so does the other, which is what a client sees
 * of its replica dying. It looks like a server to `openSocket` and
 * `connect` (`name`, `url`); `targets` may be reassigned; `routed` lists the
 * target name of every connection made so far. `stop()` closes everything.
 */
export async function startProxy(targets, { name = "proxy" } = {}) {
  const open = new Set();
  const proxy = {
    name,
    targets: [...targets],
    routed: [],
    port: 0,
    url: "",
    async stop() {
      for (const s of open) s.destroy();
      open.clear();
      await new Promise((resolve) => srv.close(() => resolve()));
    },
  };
  const track = (s) => {
    open.add(s);
    s.on("close", () => open.delete(s));
    s.on("error", () => {});
  };
  const srv = net.createServer((client) => {
    client.pause();
    track(client);
    let upstream = null;
    client.on("close", () => upstream?.destroy());
    const attempt = (i) => {
      if (client.destroyed) return;
      const target = proxy.targets[i];
      if (!target) {
        client.destroy();
        return;
      }
      const conn = net.connect({ host: "127.0.0.1", port: target.port });
      track(conn);
      let connected = false;
      conn.once("connect", () => {
        if (client.destroyed) {
          conn.destroy();
          return;
        }
        connected = true;
        upstream = conn;
        proxy.routed.push(target.name);
        conn.setNoDelay(true);
        client.setNoDelay(true);
        client.pipe(conn);
        conn.pipe(client);
        client.resume();
      });
      conn.on("error", () => {
        if (!connected) attempt(i + 1);
      });
      conn.on("close", () => {
        if (connected) client.destroy();
      });
    };
    attempt(0);
  });
  srv.on("error", () => {});
  await new Promise((resolve, reject) => {
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      srv.off("error", reject);
      resolve();
    });
  });
  proxy.port = srv.address().port;
  proxy.url = `http://127.0.0.1:${proxy.port}`;
  return proxy;
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

const nowSecs = () => Math.floor(Date.now() / 1000);

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

export { nowSecs };

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

/**
 * A new, tracked Socket.IO client for `server` (never multiplexed, never
 * reconnecting). It starts connecting at once.
 */
export function openSocket(server, { auth, transports = ["websocket"], namespace = NAMESPACE, ...rest } = {}) {
  const socket = io(server.url + namespace, {
    auth,
    transports,
    forceNew: true,
    reconnection: false,
    timeout: 10_000,
    ...rest,
  });
  sockets.add(socket);
  return socket;
}

export function closeAllSockets() {
  for (const s of sockets) {
    try {
      s.disconnect();
      s.io.engine?.close();
    } catch {
      // ignore
    }
  }
  sockets.clear();
}

function waitConnect(socket, ms, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`${what}: not connected within ${ms} ms`));
    }, ms);
    const onConnect = () => {
      cleanup();
      resolve(socket);
    };
    const onError = (err) => {
      cleanup();
      const e = new Error(`${what}: connect_error "${err?.message}"`);
      e.cause = err;
      reject(e);
    };
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("connect", onConnect);
      socket.off("connect_error", onError);
    };
    if (socket.connected) return onConnect();
    socket.on("connect", onConnect);
    socket.on("connect_error", onError);
  });
}

/** Connects and resolves with the socket once `connect` fired; rejects on `connect_error`. */
export async function connect(server, opts = {}) {
  const socket = openSocket(server, opts);
  await waitConnect(socket, opts.connectTimeoutMs ?? 10_000, `connect to ${server.name}`);
  return socket;
}

/**
 * Connects with `auth: { token }` (or another `auth` object) and waits for
 * both `connect` and the server's `session` event.
 */
export async function connectWithSession(server, auth, opts = {}) {
  const socket = openSocket(server, { ...opts, auth: typeof auth === "string" ? { token: auth } : auth });
  const session = waitForEvent(socket, "session", opts.sessionTimeoutMs ?? DEFAULT_EVENT_MS);
  session.catch(() => {});
  await waitConnect(socket, opts.connectTimeoutMs ?? 10_000, `connect to ${server.name}`);
  return { socket, session: await session };
}

/**
 * Expects the connection to be refused; resolves with the `connect_error`
 * error (its `message` is the contract's code).
 */
export function connectError(server, opts = {}, ms = 10_000) {
  const socket = openSocket(server, opts);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.disconnect();
      reject(new Error(`expected connect_error from ${server.name}, got nothing within ${ms} ms`));
    }, ms);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.disconnect();
      reject(new Error(`expected connect_error from ${server.name}, but the socket connected`));
    });
    socket.once("connect_error", (err) => {
      clearTimeout(timer);
      socket.disconnect();
      resolve(err);
    });
  });
}

/** Emits with an ack and resolves with the ack's payload; rejects after `ms`. */
/** A fetch response as tests read it: status, body text, and the body as JSON (undefined when it is not JSON). */
export async function readResponse(res) {
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json };
}

export async function emitWithAck(socket, event, payload, ms = DEFAULT_ACK_MS) {
  try {
    return payload === undefined
      ? await socket.timeout(ms).emitWithAck(event)
      : await socket.timeout(ms).emitWithAck(event, payload);
  } catch (err) {
    throw new Error(`no ack for "${event}" ${JSON.stringify(payload)} within ${ms} ms (${err?.message})`);
  }
}

/**
 * Resolves with the payload of the next `name` event on `socket` matching
 * `predicate`; rejects after `ms`. Attach it before triggering the event.
 */
export function waitForEvent(socket, name, ms = DEFAULT_EVENT_MS, predicate = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off(name, onEvent);
      reject(new Error(`no "${name}" event within ${ms} ms`));
    }, ms);
    const onEvent = (...args) => {
      const payload = args[0];
      let match = false;
      try {
        match = predicate(payload);
      } catch {
        match = false;
      }
      if (!match) return;
      clearTimeout(timer);
      socket.off(name, onEvent);
      resolve(payload);
    };
    socket.on(name, onEvent);
  });
}

/**
 * Resolves after `ms` if no `name` event matching `predicate` arrived on
 * `socket` meanwhile; rejects with the offending payload otherwise.
 */
export function expectNoEvent(socket, name, ms = 1_000, predicate = () => true) {
  return new Promise((resolve, reject) => {
    const onEvent = (...args) => {
      const payload = args[0];
      let match = false;
      try {
        match = predicate(payload);
      } catch {
        match = false;
      }
      if (!match) return;
      clearTimeout(timer);
      socket.off(name, onEvent);
      reject(new Error(`unexpected "${name}" event: ${JSON.stringify(payload)}`));
    };
    const timer = setTimeout(() => {
      socket.off(name, onEvent);
      resolve();
    }, ms);
    socket.on(name, onEvent);
  });
}

/**
 * Records every `name` event on `socket` from now on.
 * `waitFor(predicate, ms)` resolves with the first recorded (or later) match.
 */
export function record(socket, name) {
  const items = [];
  const waiters = [];
  socket.on(name, (payload) => {
    items.push(payload);
    for (const w of [...waiters]) {
      if (safe(w.predicate, payload)) {
        waiters.splice(waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(payload);
      }
    }
  });
  return {
    items,
    count: (predicate = () => true) => items.filter((p) => safe(predicate, p)).length,
    waitFor(predicate = () => true, ms = DEFAULT_EVENT_MS) {
      const found = items.find((p) => safe(predicate, p));
      if (found !== undefined) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const w = { predicate, resolve };
        w.timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(
            new Error(
              `no matching "${name}" event within ${ms} ms; got ${items.length}: ${JSON.stringify(items).slice(0, 2000)}`,
            ),
          );
        }, ms);
        waiters.push(w);
      });
    },
  };
}

function safe(predicate, payload) {
  try {
    return !!predicate(payload);
  } catch {
    return false;
  }
}

/** Waits for `disconnect` and resolves with its reason. */
export function waitForDisconnect(socket, ms = DEFAULT_EVENT_MS) {
  if (!socket.connected) return Promise.resolve("already disconnected");
  return waitForEvent(socket, "disconnect", ms);
}

// ---------------------------------------------------------------------------
// Envelope assertions
// ---------------------------------------------------------------------------

/** Asserts a `{ ok: true, data }` envelope and returns `data`. */
export function expectOk(ack, what = "ack") {
  assert.ok(ack && typeof ack === "object", `${what}: expected an envelope object, got ${JSON.stringify(ack)}`);
  assert.equal(ack.ok, true, `${what}: expected ok: true, got ${JSON.stringify(ack)}`);
  assert.ok("data" in ack, `${what}: ok envelope without data: ${JSON.stringify(ack)}`);
  return ack.data;
}

/** Asserts a `{ ok: false, error: { code, message } }` envelope with `code`; returns the error. */
export function expectError(ack, code, what = "ack") {
  assert.ok(ack && typeof ack === "object", `${what}: expected an envelope object, got ${JSON.stringify(ack)}`);
  assert.equal(ack.ok, false, `${what}: expected ok: false with ${code}, got ${JSON.stringify(ack)}`);
  assert.ok(ack.error && typeof ack.error === "object", `${what}: no error object: ${JSON.stringify(ack)}`);
  assert.equal(ack.error.code, code, `${what}: wrong error code in ${JSON.stringify(ack)}`);
  assert.equal(typeof ack.error.message, "string", `${what}: error.message must be a string: ${JSON.stringify(ack)}`);
  return ack.error;
}

// ---------------------------------------------------------------------------
// Domain helpers
// ---------------------------------------------------------------------------

/** Publishes a location with an ack and returns the ack's `data`. */
export async function publish(socket, update) {
  return expectOk(await emitWithAck(socket, "locationupdate", update), `locationupdate ${JSON.stringify(update)}`);
}

/** Publishes and asserts it was accepted. */
export async function publishAccepted(socket, update) {
  const data = await publish(socket, update);
  assert.deepEqual(data, { accepted: true }, `expected accepted: true for ${JSON.stringify(update)}`);
  return data;
}

/** Subscribes and returns the ack's `data` (`{ fleet, vehicles }`). */
export async function subscribe(socket, request = {}) {
  return expectOk(await emitWithAck(socket, "subscribe", request), `subscribe ${JSON.stringify(request)}`);
}

/** Asserts `obj` is a well-formed 5.2 location object. */
export function assertLocationShape(obj, { fleet, vehicleId } = {}) {
  assert.ok(obj && typeof obj === "object", `location must be an object: ${JSON.stringify(obj)}`);
  for (const k of ["fleet", "vehicleId"]) assert.equal(typeof obj[k], "string", `${k} must be a string in ${JSON.stringify(obj)}`);
  for (const k of ["lat", "lon", "ts", "receivedAt"]) {
    assert.equal(typeof obj[k], "number", `${k} must be a number in ${JSON.stringify(obj)}`);
  }
  assert.ok(Number.isInteger(obj.ts), `ts must be an integer: ${JSON.stringify(obj)}`);
  assert.ok(Number.isInteger(obj.receivedAt), `receivedAt must be an integer: ${JSON.stringify(obj)}`);
  for (const [k, v] of Object.entries(obj)) {
    assert.notEqual(v, null, `${k} is null in ${JSON.stringify(obj)}; absent fields must be omitted`);
  }
  for (const k of ["heading", "speed", "accuracy"]) {
    if (k in obj) assert.equal(typeof obj[k], "number", `${k} must be a number in ${JSON.stringify(obj)}`);
  }
  if (fleet !== undefined) assert.equal(obj.fleet, fleet, `fleet in ${JSON.stringify(obj)}`);
  if (vehicleId !== undefined) assert.equal(obj.vehicleId, vehicleId, `vehicleId in ${JSON.stringify(obj)}`);
}

/** Numbers compare equal within 1e-6 (positions may pass through f64/strings). */
export function near(a, b, eps = 1e-6) {
  return typeof a === "number" && Math.abs(a - b) <= eps;
}

/** A vehicle id in `fleet`'s ack/updates list. */
export function byVehicle(list, vehicleId) {
  return list.find((v) => v.vehicleId === vehicleId);
}

/** A fix time `offsetMs` from now, as an integer. */
export const tsAt = (offsetMs = 0) => Date.now() + offsetMs;
