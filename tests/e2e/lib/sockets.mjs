// Socket.IO clients as the tests use them: the official socket.io-client,
// one fresh connection each (never multiplexed, never reconnecting unless
// asked), closed when the deployment stops, and promise helpers for
// connecting, acks and the events a socket receives or must not receive.

import { io } from "socket.io-client";

export const NAMESPACE = "/fleet";

const DEFAULT_ACK_MS = 5_000;
const DEFAULT_EVENT_MS = 5_000;

/** Every socket opened by this process. */
const sockets = new Set();

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

/** Closes every socket opened so far (a deployment's `stop()` does, so that none outlives its servers). */
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

/** Whether `payload` matches `predicate` (a predicate that throws does not match). */
function matches(predicate, payload) {
  try {
    return !!predicate(payload);
  } catch {
    return false;
  }
}

/**
 * Listens for `name` on `socket` until the first event matching `predicate`
 * (then `onMatch(payload)`) or until `ms` passed (then `onTimeout()`).
 */
function firstMatch(socket, name, ms, predicate, { onMatch, onTimeout }) {
  const onEvent = (payload) => {
    if (!matches(predicate, payload)) return;
    clearTimeout(timer);
    socket.off(name, onEvent);
    onMatch(payload);
  };
  const timer = setTimeout(() => {
    socket.off(name, onEvent);
    onTimeout();
  }, ms);
  socket.on(name, onEvent);
}

/**
 * Resolves with the payload of the next `name` event on `socket` matching
 * `predicate`; rejects after `ms`. Attach it before triggering the event.
 */
export function waitForEvent(socket, name, ms = DEFAULT_EVENT_MS, predicate = () => true) {
  return new Promise((resolve, reject) =>
    firstMatch(socket, name, ms, predicate, {
      onMatch: resolve,
      onTimeout: () => reject(new Error(`no "${name}" event within ${ms} ms`)),
    }),
  );
}

/**
 * Resolves after `ms` if no `name` event matching `predicate` arrived on
 * `socket` meanwhile; rejects with the offending payload otherwise.
 */
export function expectNoEvent(socket, name, ms = 1_000, predicate = () => true) {
  return new Promise((resolve, reject) =>
    firstMatch(socket, name, ms, predicate, {
      onMatch: (payload) => reject(new Error(`unexpected "${name}" event: ${JSON.stringify(payload)}`)),
      onTimeout: resolve,
    }),
  );
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
      if (matches(w.predicate, payload)) {
        waiters.splice(waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(payload);
      }
    }
  });
  return {
    items,
    count: (predicate = () => true) => items.filter((p) => matches(predicate, p)).length,
    waitFor(predicate = () => true, ms = DEFAULT_EVENT_MS) {
      const found = items.find((p) => matches(predicate, p));
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

/** Waits for `disconnect` and resolves with its reason. */
export function waitForDisconnect(socket, ms = DEFAULT_EVENT_MS) {
  if (!socket.connected) return Promise.resolve("already disconnected");
  return waitForEvent(socket, "disconnect", ms);
}
