// fleetgate behind the example reverse proxy (deploy/nginx.conf): the
// official client with `path: "/chat"` connects through nginx over
// websocket, long-polling and polling-then-upgrade, authenticates, publishes
// and receives; the map page, the HTTP API and the health check work through
// it too. The nginx rules are the shipped file itself — only its documented
// placeholders are filled in — so the example cannot drift from what is tested.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe } from "node:test";
import assert from "node:assert/strict";

import {
  answersOk,
  assertLocationShape,
  connect,
  connectWithSession,
  emitWithAck,
  expectOk,
  freePort,
  near,
  publishAccepted,
  record,
  sleep,
  startServer,
  stopChild,
  subscribe,
  test,
  trackChild,
  tsAt,
  twoReplicas,
  uid,
  waitForEvent,
} from "./lib/harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..", "..");
const CONF = path.join(repoRoot, "deploy", "nginx.conf");
const NGINX = process.env.NGINX_BIN || "/usr/sbin/nginx";
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";

const skipNginx = existsSync(NGINX) ? false : `nginx not found at ${NGINX} (install nginx-light or set NGINX_BIN)`;

// ---------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------

/**
 * deploy/nginx.conf with its placeholders filled in. Every line marked
 * `# placeholder:` must be one this function knows, so a new placeholder in
 * the example fails here instead of being silently left at its default.
 */
function proxyRules({ upstreams, listen }) {
  const seen = new Set();
  const lines = readFileSync(CONF, "utf8")
    .split("\n")
    .map((line) => {
      if (/^\s*#/.test(line) || !/#\s*placeholder:/.test(line)) return line;
      const m = /^(\s*)(\w+)\s/.exec(line);
      const [indent, directive] = m ? [m[1], m[2]] : ["", "?"];
      seen.add(directive);
      switch (directive) {
        case "server":
          return upstreams.map((addr) => `${indent}server ${addr};`).join("\n");
        case "listen":
          return `${indent}listen ${listen};`;
        case "server_name":
          return line;
        default:
          throw new Error(`deploy/nginx.conf: unknown placeholder line: ${line.trim()}`);
      }
    });
  for (const d of ["server", "listen", "server_name"]) {
    assert.ok(seen.has(d), `deploy/nginx.conf: no "# placeholder:" line for ${d}`);
  }
  return lines.join("\n");
}

/**
 * Runs nginx in the foreground as the current user, with every file it
 * writes inside a fresh temporary prefix, proxying to `upstreams`.
 */
async function startNginx(upstreams) {
  const port = await freePort();
  const rules = proxyRules({ upstreams, listen: `127.0.0.1:${port}` });
  const dir = mkdtempSync(path.join(os.tmpdir(), "fleetgate-nginx-"));
  writeFileSync(path.join(dir, "fleetgate.conf"), rules);
  // Only a root master switches workers to another user (nobody by
  // default), who could not write to this private directory.
  const user = process.getuid?.() === 0 ? `user ${os.userInfo().username};` : "";
  const main = `
${user}
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 1024; }
http {
    access_log ${dir}/access.log;
    client_body_temp_path ${dir}/client_body;
    proxy_temp_path ${dir}/proxy;
    fastcgi_temp_path ${dir}/fastcgi;
    uwsgi_temp_path ${dir}/uwsgi;
    scgi_temp_path ${dir}/scgi;
    include ${dir}/fleetgate.conf;
}
`;
  const confPath = path.join(dir, "nginx.conf");
  writeFileSync(confPath, main);

  let output = "";
  const child = spawn(NGINX, ["-p", `${dir}/`, "-e", `${dir}/error.log`, "-c", confPath, "-g", "daemon off;"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  trackChild(child);
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const errorLog = () => {
    try {
      return readFileSync(path.join(dir, "error.log"), "utf8").split("\n").slice(-30).join("\n");
    } catch {
      return "(no error.log)";
    }
  };

  const proxy = {
    name: "nginx",
    url: `http://127.0.0.1:${port}`,
    dir,
    errorLog,
    async stop() {
      await stopChild(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };

  // Ready once a request goes all the way through to the gateway.
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) {
      const message = `nginx exited (${child.exitCode}):\n${output}\n${errorLog()}\n--- generated rules ---\n${rules}`;
      await proxy.stop();
      throw new Error(message);
    }
    if (await answersOk(`${proxy.url}/healthz`)) break;
    if (Date.now() > deadline) {
      const message = `nginx did not proxy /healthz within 10 s:\n${output}\n${errorLog()}`;
      await proxy.stop();
      throw new Error(message);
    }
    await sleep(50);
  }
  return proxy;
}

// ---------------------------------------------------------------------------
// Socket.IO through the proxy
// ---------------------------------------------------------------------------

const transportOf = (socket) => socket.io.engine.transport.name;

const MODES = [
  { name: "websocket only", opts: { transports: ["websocket"] }, expect: "websocket" },
  { name: "long-polling only", opts: { transports: ["polling"], upgrade: false }, expect: "polling" },
  { name: "polling, then upgrade", opts: { transports: ["polling", "websocket"] }, expect: "websocket" },
];

describe("Socket.IO under /chat through nginx", { skip: skipNginx }, () => {
  // Two replicas behind one upstream block, as in production: long-polling
  // only works if the proxy keeps each client on one replica.
  const cluster = twoReplicas();
  let proxy;

  before(async () => {
    proxy = await startNginx(cluster.servers.map((s) => `127.0.0.1:${s.port}`));
  });

  after(async () => {
    await proxy?.stop();
  });

  // Failures show what nginx said as well as the servers.
  const proxyTest = (name, fn) =>
    test(name, async (t) => {
      try {
        await fn(t);
      } catch (err) {
        if (proxy) t.diagnostic(`nginx error.log:\n${proxy.errorLog()}`);
        throw err;
      }
    });

  for (const mode of MODES) {
    proxyTest(`${mode.name}: authenticate, publish, and a viewer receives it`, async () => {
      const fleet = uid("fleet");
      const opts = { ...mode.opts, path: "/chat" };

      // The viewer authenticates in the handshake…
      const { socket: viewer, session } = await connectWithSession(
        proxy,
        cluster.token({ sub: "rider", fleet, role: "viewer" }),
        opts,
      );
      assert.equal(session.fleet, fleet);
      assert.equal(session.role, "viewer");
      const got = record(viewer, "locationupdate");
      const snap = await subscribe(viewer, {});
      assert.deepEqual(snap.vehicles, [], "a new fleet has no positions yet");

      // …the vehicle the bus-app way, with the authenticate event.
      const bus = await connect(proxy, opts);
      const auth = expectOk(
        await emitWithAck(bus, "authenticate", { provider: fleet, token: cluster.token({ sub: "bus-7", fleet, role: "vehicle" }) }),
        "authenticate",
      );
      assert.equal(auth.vehicle, "bus-7");

      for (const socket of [viewer, bus]) {
        if (mode.expect === "websocket" && transportOf(socket) !== "websocket") {
          await waitForEvent(socket.io.engine, "upgrade", 10_000);
        }
      }

      const ts = tsAt();
      await publishAccepted(bus, { lat: 37.5547, lon: 126.9707, ts, heading: 90, speed: 8.5 });
      const update = await got.waitFor((u) => u.vehicleId === "bus-7", 10_000);
      assertLocationShape(update, { fleet, vehicleId: "bus-7" });
      assert.ok(near(update.lat, 37.5547) && near(update.lon, 126.9707), JSON.stringify(update));
      assert.equal(update.ts, ts);
      assert.equal(update.speed, 8.5);

      // A second fix arrives too: the session stays usable, not just its first exchange.
      await publishAccepted(bus, { lat: 37.5551, lon: 126.9712, ts: ts + 1_000 });
      await got.waitFor((u) => u.ts === ts + 1_000, 10_000);

      assert.equal(transportOf(viewer), mode.expect, "viewer transport");
      assert.equal(transportOf(bus), mode.expect, "vehicle transport");
    });
  }

  for (const mode of MODES.slice(0, 2)) {
    proxyTest(`${mode.name}: "/chat" without the trailing slash works too`, async () => {
      const fleet = uid("fleet");
      const { session } = await connectWithSession(proxy, cluster.token({ sub: "rider", fleet, role: "viewer" }), {
        ...mode.opts,
        path: "/chat",
        addTrailingSlash: false,
      });
      assert.equal(session.fleet, fleet);
    });
  }

  proxyTest("refusals still reach the client as connect_error codes", async () => {
    for (const mode of MODES.slice(0, 2)) {
      const socket = connectWithSession(proxy, "garbage", { ...mode.opts, path: "/chat" });
      await assert.rejects(socket, (err) => {
        assert.equal(err.cause?.message, "invalid_token", err.message);
        return true;
      });
    }
  });

  proxyTest("HTTP API, health check and map page through the proxy", async () => {
    const fleet = uid("fleet");
    const vehicle = cluster.token({ sub: "bus-9", fleet, role: "vehicle" });
    const put = await fetch(`${proxy.url}/api/v1/fleets/${fleet}/vehicles/bus-9/location`, {
      method: "PUT",
      headers: { authorization: `Bearer ${vehicle}`, "content-type": "application/json" },
      body: JSON.stringify({ lat: 37.56, lon: 126.97, ts: tsAt() }),
    });
    assert.equal(put.status, 200, await put.clone().text());
    assert.deepEqual((await put.json()).data, { accepted: true });

    const get = await fetch(`${proxy.url}/api/v1/fleets/${fleet}/vehicles/bus-9`, {
      headers: { authorization: `Bearer ${cluster.token({ sub: "rider", fleet, role: "viewer" })}` },
    });
    assert.equal(get.status, 200);
    const feature = (await get.json()).data;
    assert.deepEqual(feature.geometry.coordinates, [126.97, 37.56]);

    const health = await fetch(`${proxy.url}/healthz`);
    assert.equal(health.status, 200);
    await health.arrayBuffer();

    const page = await fetch(`${proxy.url}/`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /fleetgate live map/);
    for (const [asset, type] of [["vendor/socket.io.min.js", /javascript/], ["vendor/leaflet.js", /javascript/], ["vendor/leaflet.css", /text\/css/], ["map-config.json", /json/]]) {
      const res = await fetch(`${proxy.url}/${asset}`);
      assert.equal(res.status, 200, asset);
      assert.match(res.headers.get("content-type") ?? "", type, asset);
      await res.arrayBuffer();
    }
  });
});

// ---------------------------------------------------------------------------
// The live map page behind the proxy, in a browser
// ---------------------------------------------------------------------------

const skipBrowser = skipNginx || (existsSync(CHROMIUM) ? false : `chromium not found at ${CHROMIUM} (set CHROMIUM_BIN)`);

describe("the live map page through nginx", { skip: skipBrowser }, () => {
  let server;
  let proxy;
  let browser;

  before(async () => {
    // Tiles off: there is no tile server here, and a failed tile is a console error.
    server = await startServer({ name: "demo", args: ["--demo"], env: { FLEETGATE_DEMO_VEHICLES: "6", FLEETGATE_MAP_TILE_URL: "none" } });
    proxy = await startNginx([`127.0.0.1:${server.port}`]);
    const { chromium } = await import("playwright-core");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    });
  });

  after(async () => {
    await browser?.close();
    await proxy?.stop();
    await server?.stop();
  });

  for (const [name, query] of [
    ["on its default Socket.IO path", ""],
    ["on /chat/", "?path=/chat/"],
  ]) {
    test(`connects, lists the demo fleet and sees it move (${name})`, { timeout: 60_000 }, async () => {
      const page = await browser.newPage();
      const problems = [];
      page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
      page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
      try {
        await page.goto(`${proxy.url}/${query}`);
        await page.waitForSelector("#status[data-state=connected]", { timeout: 20_000 });
        await page.waitForFunction(() => document.querySelectorAll("#vehicles tbody tr[data-vehicle-id]").length === 6, null, {
          timeout: 20_000,
        });
        const before = await page.evaluate(() => window.fleetgate.updates);
        await page.waitForFunction((n) => window.fleetgate.updates > n, before, { timeout: 10_000 });
        const status = await page.textContent("#status");
        assert.match(status, /connected · websocket|connected · polling/);
        assert.deepEqual(problems, []);
      } finally {
        await page.close();
      }
    });
  }
});
