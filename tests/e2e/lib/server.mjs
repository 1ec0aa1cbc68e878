// fleetgate processes: the binary under test started on free ports with
// FLEETGATE_* settings, ready once `/readyz` says so, stopped or killed on
// demand; and `test`, node:test's own wrapped so that a failing test's
// message ends with what every server said recently.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { test as nodeTest } from "node:test";

import { answersOk } from "./http.mjs";
import { freePort, isRunning, stopChild, tailBuffer, trackChild, waitForExit } from "./processes.mjs";
import { sleep } from "./wait.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..", "..", "..");

export const BIN = process.env.FLEETGATE_BIN || path.join(repoRoot, "target", "debug", "fleetgate");

const READY_TIMEOUT_MS = 20_000;

/** Every server started by this process, for log tails in failures. */
const servers = [];

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

/** Environment of a child: the caller's, minus any FLEETGATE_* setting. */
function baseEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("FLEETGATE_")) env[k] = v;
  }
  return env;
}

/**
 * The handle of one fleetgate process, before it runs: `start(moreEnv)`
 * launches it and resolves once `GET /readyz` is 200. The handle exists
 * before the process so that a fixture can hand it to a suite while the
 * suite is declared (see `useDeployment`); its `port`, `url`, `env` and
 * `child` are set by `start`.
 *
 * `env` holds FLEETGATE_* settings (`moreEnv` more of them, for what is only
 * known at start, such as a Redis's address); the listen addresses and the
 * log level are filled in.
 */
export function fleetgateServer({ name = "fleetgate", env = {}, args = [] } = {}) {
  let child = null;
  const logs = tailBuffer();
  const server = {
    name,
    port: 0,
    metricsPort: 0,
    url: "",
    metricsUrl: "",
    env: {},
    logs,
    /** How it ended, once it has, for people: `signal SIGKILL`, `code 0`. */
    exited: null,
    /** How it ended, once it has: `{ code, signal }` as Node reports them. */
    exitStatus: null,
    get child() {
      return child;
    },
    async start(moreEnv = {}) {
      if (child) throw new Error(`${name} was started already`);
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
        ...moreEnv,
      };
      for (const [k, v] of Object.entries(fullEnv)) {
        if (v === undefined || v === null) delete fullEnv[k];
        else fullEnv[k] = String(v);
      }
      Object.assign(server, {
        port,
        metricsPort,
        url: `http://127.0.0.1:${port}`,
        metricsUrl: `http://127.0.0.1:${metricsPort}`,
        env: fullEnv,
      });
      child = spawn(BIN, args, { env: fullEnv, stdio: ["ignore", "pipe", "pipe"] });
      trackChild(child);
      const echo = !!process.env.E2E_ECHO_LOGS;
      for (const stream of [child.stdout, child.stderr]) {
        stream.on("data", (d) => {
          logs.push(d);
          if (echo) process.stderr.write(`[${name}] ${d}`);
        });
      }
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
        if (await answersOk(`${server.url}/readyz`)) break;
        if (Date.now() > deadline) {
          await stopChild(child);
          throw new Error(`${name} was not ready within ${READY_TIMEOUT_MS} ms:\n${logs.text}`);
        }
        await sleep(100);
      }
      return server;
    },
    /** SIGTERM (SIGKILL after `graceMs`); resolves with `{ graceful }`. */
    stop: (graceMs) => (child ? stopChild(child, graceMs) : Promise.resolve({ graceful: true })),
    /**
     * Sends `signal` (default SIGKILL) and waits up to `ms` for the exit;
     * resolves with `{ exited, code, signal }` (not killed further if it
     * has not exited by then: `stop()` or the exit hooks do that).
     */
    async kill(signal = "SIGKILL", ms = 10_000) {
      if (!child) return { exited: true, code: null, signal: null };
      if (isRunning(child)) child.kill(signal);
      const exited = await waitForExit(child, ms);
      return { exited, code: child.exitCode, signal: child.signalCode };
    },
  };
  return server;
}

/** Starts one fleetgate process (options as for `fleetgateServer`) and waits until it is ready. */
export function startServer(opts = {}) {
  return fleetgateServer(opts).start();
}
