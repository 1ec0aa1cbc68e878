// Shared harness for the end-to-end tests: starts a private redis-server and
// real fleetgate processes on free ports, mints tokens, and wraps the official
// socket.io-client in promise helpers. Every process and socket it creates is
// stopped in `after()` hooks and, as a last resort, when the test process exits.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import net from "node:net";
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

/** Starts a private, non-persistent redis-server on a free port. */
export async function startRedis() {
  const port = await freePort();
  const logs = tailBuffer();
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  children.add(child);
  child.stdout.on("data", (d) => logs.push(d));
  child.stderr.on("data", (d) => logs.push(d));
  let spawnError = null;
  child.on("error", (e) => {
    spawnError = e;
  });

  const deadline = Date.now() + 10_000;
  while (!(await redisPing(port))) {
    if (spawnError) throw new Error(`cannot start redis-server: ${spawnError.message}`);
    if (child.exitCode !== null) throw new Error(`redis-server exited (${child.exitCode}):\n${logs.text}`);
    if (Date.now() > deadline) {
      await stopChild(child);
      throw new Error(`redis-server on port ${port} did not answer PING:\n${logs.text}`);
    }
    await sleep(50);
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    logs,
    stop: () => stopChild(child),
  };
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
  };
  servers.push(server);
  let spawnError = null;
  child.on("error", (e) => {
    spawnError = e;
  });
  child.on("exit", (code, signal) => {
    server.exited = signal ? `signal ${signal}` : `code ${code}`;
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
 * Redis when `redis` is true (the default), or a single in-memory node.
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
    if (redis) cluster.redis = await startRedis();
    const fullEnv = {
      FLEETGATE_JWT_SECRET: secret,
      ...(issuer ? { FLEETGATE_JWT_ISSUER: issuer } : {}),
      ...(audience ? { FLEETGATE_JWT_AUDIENCE: audience } : {}),
      ...(cluster.redis ? { FLEETGATE_REDIS_URL: cluster.redis.url } : {}),
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
