// The live map page (GET /) in a real browser against `--demo`, offline: it
// loads without errors and without any request leaving the gateway but map
// tiles (no CDNs), which fail as with no network, so the page falls back to
// its coordinate grid. It connects, lists the whole simulated fleet with
// last-seen times, the fleet visibly moves, and the fleet's geofences are
// drawn, with an arrival flashed and listed and a departure listed. Leaves a
// screenshot in test-artifacts/map-page.png for a human look.

import { existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe } from "node:test";
import assert from "node:assert/strict";

import { startServer, sleep, test } from "./lib/harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..", "..");
const ARTIFACTS = path.join(repoRoot, "test-artifacts");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const VEHICLES = 25;

const skip = existsSync(CHROMIUM) ? false : `chromium not found at ${CHROMIUM} (install Debian's chromium or set CHROMIUM_BIN)`;

const ROWS = "#vehicles tbody tr[data-vehicle-id]";
// A tile server that is never there (.invalid never resolves; the requests are aborted as offline anyway).
const TILE_ORIGIN = "https://tiles.invalid";
const TILE_URL = `${TILE_ORIGIN}/{z}/{x}/{y}.png`;
const isTile = (url) => typeof url === "string" && url.startsWith(`${TILE_ORIGIN}/`);

describe("live map page", { skip }, () => {
  let server;
  let browser;
  let page;
  /** Everything the page did that a user would count as broken. */
  const problems = [];
  /** Requests for anything but the gateway itself or the tiles (refused, so they fail visibly). */
  const external = [];
  /** Tile requests, answered as if the machine were offline. */
  const tiles = [];

  before(async () => {
    server = await startServer({
      name: "demo",
      args: ["--demo"],
      env: { FLEETGATE_DEMO_VEHICLES: String(VEHICLES), FLEETGATE_MAP_TILE_URL: TILE_URL },
    });
    const { chromium } = await import("playwright-core");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 800 }, colorScheme: "light" });
    page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
    // A tile that fails to load is expected here (and logged by the browser as an error).
    page.on("console", (m) => {
      if (m.type() === "error" && !isTile(m.location()?.url)) problems.push(`console.error: ${m.text()}`);
    });
    page.on("requestfailed", (r) => isTile(r.url()) || problems.push(`request failed: ${r.url()} (${r.failure()?.errorText})`));
    const origin = new URL(server.url).origin;
    await page.route("**/*", (route) => {
      const url = route.request().url();
      if (url.startsWith("data:") || new URL(url).origin === origin) return route.continue();
      if (isTile(url)) {
        tiles.push(url);
        return route.abort("internetdisconnected");
      }
      external.push(url);
      return route.abort("blockedbyclient");
    });
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test("loads, connects and lists the demo fleet with last-seen times", { timeout: 60_000 }, async () => {
    const res = await page.goto(`${server.url}/`);
    assert.equal(res.status(), 200);
    assert.match(await page.title(), /fleetgate/);

    await page.waitForSelector("#status[data-state=connected]", { timeout: 20_000 });
    assert.match(await page.textContent("#status"), /^connected · (polling|websocket)$/);
    assert.equal(await page.textContent("#fleet"), "demo");

    await page.waitForFunction((sel) => document.querySelectorAll(sel).length >= 25, ROWS, { timeout: 20_000 });
    assert.equal(await page.locator(ROWS).count(), VEHICLES);
    assert.equal(await page.textContent("#vehicle-count"), String(VEHICLES));

    const rows = await page.$$eval(ROWS, (trs) =>
      trs.map((tr) => ({
        id: tr.dataset.vehicleId,
        label: tr.querySelector(".id")?.textContent,
        lastSeen: tr.querySelector("td.last-seen")?.textContent,
        lastSeenTitle: tr.querySelector("td.last-seen")?.title,
        offline: tr.classList.contains("offline"),
      })),
    );
    const expectedIds = Array.from({ length: VEHICLES }, (_, i) => `bus-${String(i + 1).padStart(2, "0")}`);
    assert.deepEqual(rows.map((r) => r.id), expectedIds, "rows: the whole demo fleet, in order");
    for (const r of rows) {
      assert.equal(r.label, r.id, `row ${r.id} shows its id`);
      assert.match(r.lastSeen ?? "", /^\d+s ago$/, `row ${r.id} shows a recent last-seen time`);
      assert.ok(r.lastSeenTitle, `row ${r.id} has the full last-seen time on hover`);
      assert.equal(r.offline, false, `row ${r.id} is not greyed out`);
    }
    assert.equal(await page.isVisible("#notice"), false, "no error notice");
  });

  test("with the tiles unreachable the map falls back to its coordinate grid", { timeout: 30_000 }, async () => {
    await page.waitForFunction(() => window.fleetgate.basemap === "grid", null, { timeout: 20_000 });
    assert.match(await page.textContent("#basemap-note"), /tiles unreachable/i);
    assert.ok(tiles.length > 0, "the page asked for tiles");
    for (const url of tiles) assert.match(url, /^https:\/\/tiles\.invalid\/\d+\/\d+\/\d+\.png$/, "tiles follow the configured template");
    // The grid is drawn: grey lines and labels on its canvas under the tiles.
    const inked = await page.evaluate(() => {
      const c = document.getElementById("grid");
      const { data } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n += 1;
      return n;
    });
    assert.ok(inked > 1000, `the grid is drawn (${inked} pixels)`);
    assert.match(await page.textContent(".leaflet-control-attribution"), /© OpenStreetMap contributors/);
  });

  test("the fleet moves: positions, last-seen times and the map update", { timeout: 60_000 }, async () => {
    const positions = () =>
      page.evaluate(() =>
        Object.fromEntries([...window.fleetgate.vehicles.values()].map((v) => [v.vehicleId, { lat: v.lat, lon: v.lon, ts: v.ts }])),
      );
    const mapImage = () => page.evaluate(() => document.getElementById("map").toDataURL());

    const first = await positions();
    const firstMap = await mapImage();
    assert.equal(Object.keys(first).length, VEHICLES);

    // The simulator sends every vehicle once a second; allow plenty of slack.
    await page.waitForFunction(
      (before) =>
        [...window.fleetgate.vehicles.values()].every(
          (v) => before[v.vehicleId] && v.ts > before[v.vehicleId].ts && (v.lat !== before[v.vehicleId].lat || v.lon !== before[v.vehicleId].lon),
        ),
      first,
      { timeout: 15_000 },
    );
    assert.notEqual(await mapImage(), firstMap, "the map redraws as the vehicles move");

    // A few seconds on, every row still reads as just seen: the table follows the updates.
    await sleep(3_000);
    const seen = await page.$$eval(`${ROWS} td.last-seen`, (tds) => tds.map((td) => td.textContent));
    assert.equal(seen.length, VEHICLES);
    for (const text of seen) {
      const secs = Number(/^(\d+)s ago$/.exec(text)?.[1]);
      assert.ok(secs <= 10, `last-seen "${text}" should stay fresh while the fleet reports every second`);
    }

    // Something is painted where the vehicles are: coloured markers, not just the grid.
    const coloured = await page.evaluate(() => {
      const c = document.getElementById("map");
      const { data } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
      let n = 0;
      for (let i = 0; i < data.length; i += 4) {
        const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
        if (a > 200 && Math.max(r, g, b) - Math.min(r, g, b) > 60) n += 1;
      }
      return n;
    });
    assert.ok(coloured > VEHICLES * 20, `the map shows coloured vehicle markers (${coloured} coloured pixels)`);
  });

  test("geofences are drawn; an arrival flashes and is listed, a departure is listed", { timeout: 60_000 }, async () => {
    const minted = await fetch(`${server.url}/api/v1/demo/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ fleet: "demo", role: "dispatcher", sub: "e2e-ops" }),
    });
    const dispatcher = (await minted.json()).data.token;
    const put = async (id, feature) => {
      const res = await fetch(`${server.url}/api/v1/fleets/demo/geofences/${id}`, {
        method: "PUT",
        headers: { authorization: `Bearer ${dispatcher}`, "content-type": "application/json" },
        body: JSON.stringify(feature),
      });
      assert.equal(res.status, 200, await res.clone().text());
    };
    const square = (lon, lat, d) => [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d], [lon - d, lat - d]];
    // The demo seeds fences of its own; this test counts only its own.
    for (const seeded of ["city-hall", "north-depot"]) {
      const res = await fetch(`${server.url}/api/v1/fleets/demo/geofences/${seeded}`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${dispatcher}` },
      });
      assert.ok(res.status === 200 || res.status === 404, `delete ${seeded}: ${res.status}`);
    }

    // A polygon with a hole, listed on the Refresh button.
    await put("yard", {
      type: "Feature",
      properties: { name: "Yard <b>north</b>" },
      geometry: { type: "Polygon", coordinates: [square(126.978, 37.6, 0.01), square(126.978, 37.6, 0.004)] },
    });
    await page.click("#fence-refresh");
    await page.waitForFunction(() => window.fleetgate.geofences.has("yard"), null, { timeout: 10_000 });
    assert.equal(await page.locator(".leaflet-overlay-pane path.fence").count(), 1, "the polygon is drawn");

    // A circle round one bus, made while the page is open: the bus's next fix is an arrival,
    // and the page lists the fence it has not seen yet.
    const bus = await page.evaluate(() => {
      const v = window.fleetgate.vehicles.get("bus-03");
      return { lat: v.lat, lon: v.lon };
    });
    await put("stop-3", { type: "Feature", properties: { name: "Stop 3", radius: 1500 }, geometry: { type: "Point", coordinates: [bus.lon, bus.lat] } });
    await page.waitForFunction(
      () => window.fleetgate.fenceEvents.some((e) => e.vehicleId === "bus-03" && e.geofence === "stop-3" && e.kind === "enter"),
      null,
      { timeout: 15_000 },
    );
    await page.waitForFunction(() => window.fleetgate.geofences.has("stop-3"), null, { timeout: 10_000 });
    assert.equal(await page.locator(".leaflet-overlay-pane path.fence").count(), 2, "the circle is drawn too");
    assert.equal(await page.textContent("#fence-count"), "2");
    const flashed = await page.evaluate(() => ({
      fence: window.fleetgate.geofences.get("stop-3").flashedAt,
      vehicle: window.fleetgate.vehicles.get("bus-03").flashStart,
    }));
    assert.ok(flashed.fence > 0, "the fence flashed");
    assert.ok(Number.isFinite(flashed.vehicle), "the vehicle flashed");
    const lines = () => page.$$eval("#fence-events li", (lis) => lis.map((li) => ({ kind: li.className, text: li.textContent })));
    const arrival = (await lines()).find((l) => l.kind === "enter" && /bus-03 arrived at Stop 3$/.test(l.text));
    assert.ok(arrival, `an arrival line: ${JSON.stringify(await lines())}`);
    await sleep(400); // mid-flash, for the picture
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, "map-page.png") });

    // Moving the fence away from the bus: its next fix is a departure.
    await put("stop-3", { type: "Feature", properties: { name: "Stop 3", radius: 10 }, geometry: { type: "Point", coordinates: [bus.lon + 0.5, bus.lat] } });
    await page.waitForFunction(
      () => window.fleetgate.fenceEvents.some((e) => e.vehicleId === "bus-03" && e.geofence === "stop-3" && e.kind === "exit"),
      null,
      { timeout: 15_000 },
    );
    assert.ok((await lines()).some((l) => l.kind === "exit" && /bus-03 left Stop 3$/.test(l.text)), "a departure line");
    // A fence's name is shown as text, never as markup.
    const tip = await page.evaluate(() => {
      const content = window.fleetgate.geofences.get("yard").layer.getTooltip().getContent();
      return { text: content.textContent, elements: content.children.length };
    });
    assert.deepEqual(tip, { text: "Yard <b>north</b>", elements: 0 });
  });

  test("nothing went wrong on the way", () => {
    assert.deepEqual(external, [], "the page requested something other than the gateway");
    assert.deepEqual(problems, [], "errors in the page");
  });
});
