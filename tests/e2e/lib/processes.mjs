// Child processes and ports: every process the tests start (redis-server,
// fleetgate, nginx) is tracked here so that it is killed even when the test
// process exits early (a failed hook, Ctrl-C); stopping one is SIGTERM, then
// SIGKILL after a grace period. Also the tail of a process's output for
// failure messages, and free ports on 127.0.0.1.

import net from "node:net";

const LOG_TAIL_BYTES = 16 * 1024;

/** Child processes still running (redis and fleetgate). */
const children = new Set();

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

/** Tracks `child` until it exits, so the exit hooks can kill it. */
export function trackChild(child) {
  children.add(child);
  child.on("exit", () => children.delete(child));
}

/** Whether `child` is still running. */
export const isRunning = (child) => child.exitCode === null && child.signalCode === null;

/** The last LOG_TAIL_BYTES of what was pushed. */
export function tailBuffer() {
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

/** Resolves with whether `child` exited within `ms` (true at once if it already had). */
export function waitForExit(child, ms) {
  if (!isRunning(child)) return Promise.resolve(true);
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
export async function stopChild(child, graceMs = 5_000) {
  if (!isRunning(child)) {
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

/** Resolves with whether `port` on 127.0.0.1 can be listened on now. */
export function portIsFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

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
