// Redis Cluster mode (FLEETGATE_REDIS_CLUSTER_NODES): fleets spread over
// the shards, each fleet's positions travel on a sharded channel of the
// shard that holds its keys and only to replicas that watch it, and the
// gateway rides out a primary's restart and a primary's failover.
//
// These tests always start their own cluster; the rest of the suite runs
// against a cluster too when E2E_REDIS=cluster.

import { describe } from "node:test";
import assert from "node:assert/strict";

import {
  byVehicle,
  connectWithSession,
  emitWithAck,
  publishAccepted,
  redisCli,
  subscribe,
  test,
  tsAt,
  twoReplicas,
  uid,
  until,
  waitForEvent,
} from "./lib/harness.mjs";

/** Fleet ids whose keys live on `count` different primaries. */
async function fleetsOnDistinctShards(redis, count) {
  const byPrimary = new Map();
  for (let i = 0; i < 200 && byPrimary.size < count; i += 1) {
    const fleet = uid("fleet");
    const node = await redis.primaryOf(`fg:{${fleet}}:idx`);
    if (!byPrimary.has(node.port)) byPrimary.set(node.port, { fleet, node });
  }
  assert.equal(byPrimary.size, count, "could not find fleets on distinct shards");
  return [...byPrimary.values()];
}

/** How many clients of `node` are subscribed to the sharded channel. */
async function shardSubscribers(node, channel) {
  const out = (await redisCli(["-p", String(node.port), "pubsub", "shardnumsub", channel])).trim().split("\n");
  return Number(out[1]);
}

/** Waits until `check` returns `true`; anything else it returns is the diagnostic of the failure. */
async function eventually(what, check, ms = 15_000) {
  let last;
  await until(async () => (last = await check()) === true, ms, () => `${what} (last: ${JSON.stringify(last)})`, 100);
}

/** Publishes until one is accepted (a shard may still be coming back). */
async function publishUntilAccepted(bus, vehicleId, ms = 20_000) {
  let ack;
  return until(
    async () => {
      const update = { vehicleId, lat: 48.85 + Math.random() / 100, lon: 2.35, ts: tsAt() };
      ack = await emitWithAck(bus, "locationupdate", update).catch(() => null);
      return ack?.ok && { update, ack };
    },
    ms,
    () => `no update accepted (last ack: ${JSON.stringify(ack)})`,
  );
}

describe("Redis Cluster: three primaries", () => {
  const cluster = twoReplicas({ redis: { cluster: true } });
  const [A, B] = cluster.servers;

  test("fleets on every shard: stored on their own shard, snapshot and live updates across replicas", async () => {
    const shards = await fleetsOnDistinctShards(cluster.redis, 3);
    for (const { fleet, node } of shards) {
      const viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
      assert.deepEqual((await subscribe(viewer, {})).vehicles, []);
      const bus = (await connectWithSession(A, cluster.token({ sub: "bus-1", fleet, role: "vehicle" }))).socket;
      const live = waitForEvent(viewer, "locationupdate", 5_000, (l) => l.fleet === fleet);
      const update = { vehicleId: "bus-1", lat: 52.52, lon: 13.405, ts: tsAt() };
      await publishAccepted(bus, update);
      const got = await live;
      assert.equal(got.vehicleId, "bus-1");
      assert.equal(got.ts, update.ts);
      // The fleet's position is on the shard its hash tag names.
      const stored = await redisCli(["-p", String(node.port), "hget", `fg:{${fleet}}:pos:bus-1`, "t"]);
      assert.equal(stored.trim(), String(update.ts), `position of ${fleet} not on its shard ${node.port}`);
      const viewer2 = (await connectWithSession(A, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
      const snapshot = await subscribe(viewer2, {});
      assert.equal(byVehicle(snapshot.vehicles, "bus-1")?.ts, update.ts);
      for (const s of [viewer, viewer2, bus]) s.disconnect();
    }
  });

  test("a fleet's channel lives on its shard, subscribed only while a replica watches the fleet", async () => {
    const [{ fleet, node }] = await fleetsOnDistinctShards(cluster.redis, 1);
    const channel = `fg:{${fleet}}:positions`;
    assert.equal(await shardSubscribers(node, channel), 0, "nobody watches the fleet yet");
    const viewerB = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    await subscribe(viewerB, {});
    await eventually("replica B subscribes the fleet's channel", async () => (await shardSubscribers(node, channel)) === 1);
    const viewerA = (await connectWithSession(A, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    await subscribe(viewerA, {});
    await eventually("both replicas subscribe", async () => (await shardSubscribers(node, channel)) === 2);
    viewerA.disconnect();
    viewerB.disconnect();
    await eventually("the channel is left when no one watches", async () => (await shardSubscribers(node, channel)) === 0);
  });

  test("a primary restarts: its fleets answer `unavailable` meanwhile, the others carry on, then all recover", async () => {
    const [down, up] = await fleetsOnDistinctShards(cluster.redis, 2);
    const side = async ({ fleet }) => {
      const viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
      await subscribe(viewer, {});
      const bus = (await connectWithSession(A, cluster.token({ sub: "bus-1", fleet, role: "vehicle" }))).socket;
      return { fleet, viewer, bus };
    };
    const d = await side(down);
    const u = await side(up);

    await down.node.kill("SIGKILL");
    // A write to the dead shard is refused as `unavailable`, never accepted.
    const refused = await emitWithAck(d.bus, "locationupdate", { vehicleId: "bus-1", lat: 1, lon: 1, ts: tsAt() }, 8_000);
    assert.equal(refused.ok, false, JSON.stringify(refused));
    assert.equal(refused.error.code, "unavailable", JSON.stringify(refused));
    // The other shard's fleet is served meanwhile, across replicas.
    const liveUp = waitForEvent(u.viewer, "locationupdate", 5_000, (l) => l.fleet === u.fleet);
    await publishAccepted(u.bus, { vehicleId: "bus-1", lat: 2, lon: 2, ts: tsAt() });
    await liveUp;
    const ready = await fetch(`${A.url}/readyz`);
    assert.equal(ready.status, 200, "a replica stays ready while one shard is down");

    await down.node.restart();
    await cluster.redis.waitHealthy();
    const { update } = await publishUntilAccepted(d.bus, "bus-1");
    // The viewer on the other replica hears the recovered shard again:
    // its sharded subscription came back with the node.
    await eventually("the viewer receives the recovered fleet's update", async () => {
      const next = waitForEvent(d.viewer, "locationupdate", 1_000, (l) => l.fleet === d.fleet).catch(() => null);
      const { update: again } = await publishUntilAccepted(d.bus, "bus-1");
      const got = await next;
      return got?.ts === again.ts || { sent: again.ts, got: got?.ts, first: update.ts };
    }, 20_000);
    for (const s of [d.viewer, d.bus, u.viewer, u.bus]) s.disconnect();
  });
});

describe("Redis Cluster: failover to a replica", () => {
  const cluster = twoReplicas({ redis: { cluster: true, replicasPerMaster: 1 } });
  const [A, B] = cluster.servers;

  test("a primary dies, its replica takes over: updates are accepted and delivered across replicas again", async () => {
    const fleet = uid("fleet");
    const primary = await cluster.redis.primaryOf(`fg:{${fleet}}:idx`);
    const viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    await subscribe(viewer, {});
    const bus = (await connectWithSession(A, cluster.token({ sub: "bus-1", fleet, role: "vehicle" }))).socket;
    const before = waitForEvent(viewer, "locationupdate", 5_000, (l) => l.fleet === fleet);
    await publishAccepted(bus, { vehicleId: "bus-1", lat: 10, lon: 10, ts: tsAt() });
    await before;

    await primary.kill("SIGKILL");
    await eventually("a replica is promoted", async () => {
      const now = await cluster.redis.primaryOf(`fg:{${fleet}}:idx`).catch(() => null);
      return (now && now.port !== primary.port && now.running) || { primary: now?.port };
    }, 30_000);

    await eventually("updates of the fleet reach the viewer on the other replica after the failover", async () => {
      const next = waitForEvent(viewer, "locationupdate", 1_000, (l) => l.fleet === fleet).catch(() => null);
      const { update } = await publishUntilAccepted(bus, "bus-1");
      const got = await next;
      return got?.ts === update.ts || { sent: update.ts, got: got?.ts };
    }, 30_000);
    // A viewer arriving now gets the newest position from the new primary.
    const late = (await connectWithSession(A, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
    assert.ok(byVehicle((await subscribe(late, {})).vehicles, "bus-1"), "snapshot after the failover");
    for (const s of [viewer, bus, late]) s.disconnect();
    // The old primary comes back as a replica of the new one, so the next
    // test again has a replica for every primary.
    await primary.restart();
    await cluster.redis.waitHealthy();
    await eventually("the restarted node rejoins as a replica", async () => {
      const info = await redisCli(["-p", String(primary.port), "info", "replication"]);
      return info.includes("role:slave") || info.slice(0, 200);
    });
    await cluster.redis.waitSynced();
  });

  test("the primary of the Socket.IO adapter's channel dies: events across replicas flow again after the failover", async () => {
    // Presence, chat and revocation cross replicas on the adapter's
    // namespace channel, which lives on one shard.
    const adapterChannel = "fg-sio-request#/fleet#";
    const primary = await cluster.redis.primaryOf(adapterChannel);
    await primary.kill("SIGKILL");
    await eventually("a replica is promoted", async () => {
      const now = await cluster.redis.primaryOf(adapterChannel).catch(() => null);
      return (now && now.port !== primary.port && now.running) || { primary: now?.port };
    }, 30_000);

    await eventually("a vehicle connecting on A is announced to a viewer on B", async () => {
      const fleet = uid("fleet");
      const viewer = (await connectWithSession(B, cluster.token({ sub: "viewer", fleet, role: "viewer" }))).socket;
      await subscribe(viewer, {}).catch(() => null);
      const online = waitForEvent(viewer, "vehicle_online", 2_000, (e) => e.fleet === fleet).catch(() => null);
      const bus = (await connectWithSession(A, cluster.token({ sub: "bus-1", fleet, role: "vehicle" }))).socket;
      const got = await online;
      viewer.disconnect();
      bus.disconnect();
      return got?.vehicleId === "bus-1" || { got };
    }, 30_000);
  });
});
