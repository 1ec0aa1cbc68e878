// A small TCP failover proxy standing in for a load balancer in front of
// the replicas, so that the official client's own reconnection moves to
// another replica when its own dies (the fault and recovery tests).

import net from "node:net";

/**
 * A tiny TCP load balancer in front of `targets` (servers, or anything with
 * `name` and `port`), not listening yet: `start()` listens on a free port.
 * Each new connection goes to the first target, in order, that accepts it,
 * so while the first is up every client lands there and once it is gone
 * (refused) clients reconnecting through the proxy land on the next. Bytes
 * are relayed untouched (websocket and polling alike); when either side
 * closes, so does the other, which is what a client sees of its replica
 * dying. It looks like a server to `openSocket` and `connect` (`name`,
 * `url`); `targets` may be reassigned; `routed` lists the target name of
 * every connection made so far. `stop()` closes everything.
 */
export function failoverProxy(targets, { name = "proxy" } = {}) {
  const open = new Set();
  const proxy = {
    name,
    targets: [...targets],
    routed: [],
    port: 0,
    url: "",
    async start() {
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
    },
    async stop() {
      for (const s of open) s.destroy();
      open.clear();
      if (srv.listening) await new Promise((resolve) => srv.close(() => resolve()));
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
  return proxy;
}

/** Starts a failover proxy (arguments as for `failoverProxy`) listening on a free port. */
export function startProxy(targets, opts = {}) {
  return failoverProxy(targets, opts).start();
}
