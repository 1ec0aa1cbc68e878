// One private redis-server: started on a free port (never 6379), with the
// handle the fault tests use to fake its outages (pause, kill, restart),
// and `redis-cli` for tests that look at what the gateway stored.

import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

import { freePort, isRunning, stopChild, tailBuffer, trackChild, waitForExit } from "./processes.mjs";
import { sleep } from "./wait.mjs";

/** Whether a Redis on `port` answers PING within half a second. */
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
export async function redisProcess({ port, args, name = `redis-${port}` }) {
  const logs = tailBuffer();
  let child = null;
  let paused = false;

  async function launch() {
    child = spawn("redis-server", args, { stdio: ["ignore", "pipe", "pipe"] });
    paused = false;
    const current = child;
    trackChild(current);
    current.stdout.on("data", (d) => logs.push(d));
    current.stderr.on("data", (d) => logs.push(d));
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

  const running = () => child !== null && isRunning(child);

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
export function persistenceArgs(persist, dir) {
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
