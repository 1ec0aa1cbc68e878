// The live map page (GET /) in a real browser against `--demo`: it loads
// without errors and without any request leaving the gateway (it has to work
// offline: no tile servers, no CDNs), connects, lists the whole simulated
// fleet with last-seen times, and the fleet visibly moves. Leaves a
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

describe("live map page", { skip }, () => {
  let server;
  let browser;
  let page;
  /** Everything the page did that a user would count as broken. */
  const problems = [];
  /** Requests for anything but the gateway itself (refused, so they fail visibly). */
  const external = [];

  before(async () => {
    server = await startServer({
      name: "demo",
      args: ["--demo"],
      env: { FLEETGATE_DEMO_VEHICLES: String(VEHICLES) },
    });
    const { chromium } = await import("playwright-core");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 800 }, colorScheme: "light" });
    page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error") problems.push(`console.error: ${m.text()}`);
    });
    page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} (${r.failure()?.errorText})`));
    const origin = new URL(server.url).origin;
    await page.route("**/*", (route) => {
      const url = route.request().url();
      if (url.startsWith("data:") || new URL(url).origin === origin) return route.continue();
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

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, "map-page.png") });
  });

  test("nothing went wrong on the way", () => {
    assert.deepEqual(external, [], "the page requested something other than the gateway");
    assert.deepEqual(problems, [], "errors in the page");
  });
});
