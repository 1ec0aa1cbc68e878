//! The per-fleet event stream (contract section 12) at the store, the same
//! from the embedded store, one Redis and a Redis Cluster: every accepted
//! position, presence change, geofence crossing and chat message is an
//! event with the contract's fields, in order, with ids unique across
//! fleets and increasing within one; stale, fenced and refused updates
//! never are; the cap holds and a reader that fell behind learns how many
//! it missed; `FLEETGATE_EVENTS_MAX=0` keeps no stream; plain consumer
//! groups read it; leases and cursors work for the outputs. Last, a real
//! server: an invalid update never reaches the stream.

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use fleetgate::{
    position::Position,
    redis_target::RedisTarget,
    store::{
        ChatMessage, CrossingKind, FenceWrite, PositionWrite, PutOutcome, Retention, Store, StoreError,
        events::{Cursor, Event, EventKind, Lease, StreamId},
        memory::MemoryStore,
        redis::RedisStore,
    },
};
use fleetgate_testkit::Client;
use serde_json::{Value, json};
use support::{Redis, RedisCluster, Server, store::retention, token_for};

const FLEET: &str = "events-fleet";
const NODE: &str = "node-under-test";

fn redis_store(redis: &Redis, retention: Retention) -> RedisStore {
    RedisStore::new(&redis.target(), 1, retention, NODE.into(), None).unwrap()
}

fn cluster_store(cluster: &RedisCluster, retention: Retention) -> RedisStore {
    let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    RedisStore::new(&RedisTarget::cluster(&nodes).unwrap(), 1, retention, NODE.into(), None).unwrap()
}

fn position(fleet: &str, vehicle: &str, ts: i64, lon: f64, lat: f64) -> (Position, String) {
    let p = Position {
        fleet: fleet.into(),
        vehicle_id: vehicle.into(),
        lat,
        lon,
        ts,
        heading: Some(90.5),
        speed: None,
        accuracy: Some(4.0),
        received_at: ts + 3,
    };
    let encoded = serde_json::to_string(&p).unwrap();
    (p, encoded)
}

/// Offers one batch of `(vehicle, ts)` fixes at one place; their outcomes and encoded events.
async fn offer(
    store: &dyn Store,
    fleet: &str,
    updates: &[(&str, i64)],
) -> (Vec<Result<PutOutcome, StoreError>>, Vec<String>) {
    let owned: Vec<(Position, String)> =
        updates.iter().map(|(v, ts)| position(fleet, v, *ts, 13.404954, 52.520008)).collect();
    let writes: Vec<PositionWrite<'_>> = owned.iter().map(|(p, e)| PositionWrite::new(p, e, Instant::now())).collect();
    let outcomes = store.put_positions(fleet, &writes).await;
    (outcomes, owned.into_iter().map(|(_, e)| e).collect())
}

/// Every event of a fleet's stream, read in pages through the API.
async fn all_events(store: &dyn Store, fleet: &str) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    loop {
        let after = out.last().map(Event::cursor);
        let read = store.events().read(fleet, after, 7).await.unwrap();
        if read.events.is_empty() {
            return out;
        }
        assert_eq!(read.skipped, 0, "nothing was trimmed");
        out.extend(read.events);
    }
}

fn parsed(e: &Event) -> Value {
    serde_json::from_str(&e.json).unwrap()
}

/// The contract's envelope of every event: `{ id, type, fleet, ts, data }`,
/// the id `<fleet>/<stream id>`, the ts the store's time of the step.
fn check_envelope(events: &[Event], fleet: &str, since: i64) {
    for (i, e) in events.iter().enumerate() {
        let v = parsed(e);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["data", "fleet", "id", "ts", "type"], "{v}");
        assert_eq!(v["id"], format!("{fleet}/{}", e.id), "{v}");
        assert_eq!(v["type"], e.kind.as_str());
        assert_eq!(v["fleet"], fleet);
        let ts = v["ts"].as_i64().unwrap_or_else(|| panic!("ts: {v}"));
        assert!(ts >= since - 1000 && ts <= support::now_ms() + 1000, "ts {ts} is the time of the step: {v}");
        assert_eq!(e.ordinal, i as u64 + 1, "ordinals count from 1");
        if i > 0 {
            assert!(e.id > events[i - 1].id, "ids increase: {} then {}", events[i - 1].id, e.id);
        }
    }
}

/// Positions, presence, geofence crossings and chat: each an event in
/// the order the store took them, with exact fields; stale ones none.
async fn every_kind_of_event(store: &dyn Store) {
    let since = support::now_ms();
    assert!(store.events().enabled());
    assert!(store.vehicle_connected(FLEET, "bus-1", NODE).await.unwrap());
    assert!(!store.vehicle_connected(FLEET, "bus-1", "other-node").await.unwrap(), "already online: no event");

    let (outcomes, encoded) =
        offer(store, FLEET, &[("bus-1", 100), ("bus-2", 100), ("bus-1", 90), ("bus-1", 100)]).await;
    let accepted: Vec<bool> = outcomes.iter().map(|o| matches!(o, Ok(PutOutcome::Accepted { .. }))).collect();
    assert_eq!(accepted, [true, true, false, false]);

    let FenceWrite::Stored { version, .. } = store.put_geofence(FLEET, "depot", "{}", 10).await.unwrap() else {
        panic!("geofence not stored")
    };
    let inside = ["depot".to_owned()];
    let (enter, enter_encoded) = position(FLEET, "bus-1", 200, 0.15, 0.11);
    let (exit, exit_encoded) = position(FLEET, "bus-1", 300, 0.5, 0.5);
    let write =
        |p, e, inside| PositionWrite { inside, fences_version: version, ..PositionWrite::new(p, e, Instant::now()) };
    let crossed = store.put_positions(FLEET, &[write(&enter, &enter_encoded, &inside[..])]).await;
    assert!(matches!(&crossed[0], Ok(PutOutcome::Accepted { crossings, .. }) if crossings.len() == 1), "{crossed:?}");
    let crossed = store.put_positions(FLEET, &[write(&exit, &exit_encoded, &[][..])]).await;
    assert!(
        matches!(&crossed[0], Ok(PutOutcome::Accepted { crossings, .. }) if crossings[0].kind == CrossingKind::Exit)
    );

    let message = ChatMessage {
        id: String::new(),
        room: "ops".into(),
        from: "dispatch-1".into(),
        text: "gate \"B\" \\ ünïcode\nnew line".into(),
        ts: 1234,
    };
    let message = store.append_message(FLEET, message).await.unwrap();
    let last_seen = store.vehicle_disconnected(FLEET, "bus-1", NODE).await.unwrap();
    assert_eq!(last_seen, None, "another replica still holds a socket");
    let last_seen = store.vehicle_disconnected(FLEET, "bus-1", "other-node").await.unwrap().expect("offline");

    let events = all_events(store, FLEET).await;
    check_envelope(&events, FLEET, since);
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        [VehicleOnline, Position, Position, Position, Geofence, Position, Geofence, Chat, VehicleOffline]
    );
    let data: Vec<Value> = events.iter().map(|e| parsed(e)["data"].clone()).collect();

    let online = &data[0];
    assert_eq!(online.as_object().unwrap().len(), 3, "{online}");
    assert_eq!((&online["fleet"], &online["vehicleId"]), (&json!(FLEET), &json!("bus-1")));
    assert!(online["ts"].as_i64().is_some_and(|ts| ts >= since), "{online}");

    // A position's data is its 5.2 event, the very bytes the store keeps.
    for (event, encoded) in [(1, &encoded[0]), (2, &encoded[1]), (3, &enter_encoded), (5, &exit_encoded)] {
        assert!(events[event].json.ends_with(&format!(r#""data":{encoded}}}"#)), "{}", events[event].json);
    }
    let crossing = |kind, ts, lat, lon| {
        json!({ "fleet": FLEET, "vehicleId": "bus-1", "geofence": "depot", "kind": kind,
            "ts": ts, "lat": lat, "lon": lon })
    };
    assert_eq!(data[4], crossing("enter", 200, 0.11, 0.15));
    assert_eq!(data[6], crossing("exit", 300, 0.5, 0.5));
    assert_eq!(data[7], serde_json::to_value(&message).unwrap());
    assert_eq!(data[7]["id"], message.id);
    assert_eq!(data[8], json!({ "fleet": FLEET, "vehicleId": "bus-1", "lastSeen": last_seen }));

    // Reading after a cursor, and the ends.
    let events_api = store.events();
    let third = events[2].cursor();
    let rest = events_api.read(FLEET, Some(third), 2).await.unwrap();
    assert_eq!(rest.events, events[3..5].to_vec());
    assert_eq!(rest.skipped, 0);
    assert_eq!(events_api.oldest(FLEET).await.unwrap(), Some(events[0].cursor()));
    assert_eq!(events_api.newest(FLEET).await.unwrap(), Some(events[8].cursor()));
    assert!(events_api.read(FLEET, Some(events[8].cursor()), 10).await.unwrap().events.is_empty());
    assert_eq!(events_api.oldest("no-such-fleet").await.unwrap(), None);
    assert!(events_api.read("no-such-fleet", None, 10).await.unwrap().events.is_empty());
    assert_eq!(fleets(store).await, [FLEET]);
}

/// The fleets listed as having events (Redis lists them in the background).
async fn fleets(store: &dyn Store) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut fleets = store.events().fleets().await.unwrap();
        fleets.sort();
        if !fleets.is_empty() || Instant::now() > deadline {
            return fleets;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A vehicle gone stale while connected is swept offline, then comes back
/// online with its next position: `vehicle_offline`, `vehicle_online`,
/// `position`.
async fn swept_and_back_online(store: &dyn Store) {
    assert!(store.vehicle_connected(FLEET, "bus-9", NODE).await.unwrap());
    // Stale after 1 ms: the sweep finds it once that ms has passed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let offline = loop {
        let gone = store.sweep_presence().await.unwrap();
        if let Some(o) = gone.into_iter().find(|o| o.vehicle == "bus-9") {
            break o;
        }
        assert!(Instant::now() < deadline, "never swept");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (outcomes, encoded) = offer(store, FLEET, &[("bus-9", 500)]).await;
    assert!(matches!(outcomes[0], Ok(PutOutcome::Accepted { back_online: true, .. })), "{outcomes:?}");
    let events = all_events(store, FLEET).await;
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    use EventKind::*;
    assert_eq!(kinds, [VehicleOnline, VehicleOffline, VehicleOnline, Position]);
    assert_eq!(
        parsed(&events[1])["data"],
        json!({ "fleet": FLEET, "vehicleId": "bus-9", "lastSeen": offline.last_seen })
    );
    let back = &parsed(&events[2])["data"];
    assert_eq!((&back["fleet"], &back["vehicleId"]), (&json!(FLEET), &json!("bus-9")));
    assert!(events[3].json.ends_with(&format!(r#""data":{}}}"#, encoded[0])));
}

fn stale_in_1ms(events_max: usize) -> Retention {
    Retention { stale_after_ms: 1, ..retention(events_max) }
}

/// Two fleets written side by side: every id unique, increasing per fleet.
async fn ids_across_fleets(store: &dyn Store) {
    let mut ids = std::collections::HashSet::new();
    for round in 0..20 {
        for fleet in ["fleet-a", "fleet-b"] {
            let updates: Vec<(String, i64)> = (0..3).map(|v| (format!("v{v}"), 1000 + round)).collect();
            let updates: Vec<(&str, i64)> = updates.iter().map(|(v, ts)| (v.as_str(), *ts)).collect();
            offer(store, fleet, &updates).await;
        }
    }
    for fleet in ["fleet-a", "fleet-b"] {
        let events = all_events(store, fleet).await;
        assert_eq!(events.len(), 60);
        check_envelope(&events, fleet, 0);
        for e in &events {
            assert!(ids.insert(parsed(e)["id"].as_str().unwrap().to_owned()), "{} twice", e.json);
        }
    }
    assert_eq!(ids.len(), 120);
}

/// The cap: the oldest events go, and a reader behind them is told how many it missed.
async fn capped(store: &dyn Store, cap: usize, exact: bool) {
    let mut first = None;
    for batch in 0..20 {
        let updates: Vec<(String, i64)> = (0..50).map(|v| (format!("v{v}"), 1000 + batch)).collect();
        let updates: Vec<(&str, i64)> = updates.iter().map(|(v, ts)| (v.as_str(), *ts)).collect();
        offer(store, FLEET, &updates).await;
        if first.is_none() {
            first = store.events().oldest(FLEET).await.unwrap();
        }
    }
    let first = first.unwrap();
    assert_eq!(first.ordinal, 1);
    let kept = all_events_unchecked(store).await;
    if exact {
        assert_eq!(kept.len(), cap);
    } else {
        // `MAXLEN ~` trims whole nodes (100 entries by default).
        assert!(kept.len() >= cap && kept.len() <= cap + 100, "kept {}", kept.len());
    }
    let newest = kept.last().unwrap();
    assert_eq!(newest.ordinal, 1000, "every event was counted");
    assert_eq!(store.events().newest(FLEET).await.unwrap(), Some(newest.cursor()));
    let oldest = store.events().oldest(FLEET).await.unwrap().unwrap();
    assert_eq!(oldest, kept[0].cursor());
    let behind = store.events().read(FLEET, Some(first), 10).await.unwrap();
    assert_eq!(behind.events[0].cursor(), oldest, "a reader behind the cap resumes at the oldest kept");
    assert_eq!(behind.skipped, oldest.ordinal - 2, "and is told how many it missed");
}

async fn all_events_unchecked(store: &dyn Store) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    loop {
        let read = store.events().read(FLEET, out.last().map(Event::cursor), 500).await.unwrap();
        if read.events.is_empty() {
            return out;
        }
        out.extend(read.events);
    }
}

/// Leases: one holder at a time, renewed and released only by it, free
/// again once it lapses; a cursor written under a lease only while held.
async fn leases_and_cursors(store: &dyn Store) {
    let events = store.events();
    let a = Lease { name: "webhook:w1", holder: "replica-a" };
    let b = Lease { name: "webhook:w1", holder: "replica-b" };
    assert!(events.acquire_lease(FLEET, a, 60_000).await.unwrap());
    assert!(events.acquire_lease(FLEET, a, 60_000).await.unwrap(), "its holder takes it again");
    assert!(!events.acquire_lease(FLEET, b, 60_000).await.unwrap());
    assert!(!events.renew_lease(FLEET, b, 60_000).await.unwrap());
    assert!(events.renew_lease(FLEET, a, 60_000).await.unwrap());
    assert!(events.acquire_lease("other-fleet", b, 60_000).await.unwrap(), "leases are per fleet");

    let cursor = Cursor { id: StreamId { ms: 1732200000000, seq: 4 }, ordinal: 17 };
    assert_eq!(events.cursor(FLEET, "w1").await.unwrap(), None);
    assert!(!events.set_cursor(FLEET, "w1", cursor, Some(b)).await.unwrap(), "not the holder");
    assert_eq!(events.cursor(FLEET, "w1").await.unwrap(), None);
    assert!(events.set_cursor(FLEET, "w1", cursor, Some(a)).await.unwrap());
    assert_eq!(events.cursor(FLEET, "w1").await.unwrap(), Some(cursor));

    assert!(!events.release_lease(FLEET, b).await.unwrap());
    assert!(events.release_lease(FLEET, a).await.unwrap());
    assert!(!events.set_cursor(FLEET, "w1", cursor, Some(a)).await.unwrap(), "released");
    assert!(events.acquire_lease(FLEET, b, 1).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !events.acquire_lease(FLEET, a, 60_000).await.unwrap() {
        assert!(Instant::now() < deadline, "a lapsed lease is free again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!events.renew_lease(FLEET, b, 60_000).await.unwrap(), "the lapsed holder lost it");

    let later = Cursor { id: StreamId { ms: 1732200000001, seq: 0 }, ordinal: 18 };
    assert!(events.set_cursor(FLEET, "w1", later, None).await.unwrap());
    assert_eq!(events.cursor(FLEET, "w1").await.unwrap(), Some(later));
    events.delete_cursor(FLEET, "w1").await.unwrap();
    assert_eq!(events.cursor(FLEET, "w1").await.unwrap(), None);
}

// The embedded store -------------------------------------------------------

#[tokio::test]
async fn embedded_every_kind_of_event() {
    every_kind_of_event(&*MemoryStore::new(retention(1000))).await;
}

#[tokio::test]
async fn embedded_swept_and_back_online() {
    swept_and_back_online(&*MemoryStore::new(stale_in_1ms(1000))).await;
}

#[tokio::test]
async fn embedded_ids_across_fleets() {
    ids_across_fleets(&*MemoryStore::new(retention(1000))).await;
}

#[tokio::test]
async fn embedded_cap_is_exact() {
    capped(&*MemoryStore::new(retention(150)), 150, true).await;
}

#[tokio::test]
async fn embedded_leases_and_cursors() {
    leases_and_cursors(&*MemoryStore::new(retention(1000))).await;
}

#[tokio::test]
async fn embedded_without_a_stream() {
    let store = MemoryStore::new(retention(0));
    assert!(!store.events().enabled());
    writes_of_every_kind(&*store).await;
    assert!(store.events().read(FLEET, None, 10).await.unwrap().events.is_empty());
    assert_eq!(store.events().newest(FLEET).await.unwrap(), None);
    assert!(store.events().fleets().await.unwrap().is_empty());
}

/// A connect, positions, a chat message, a disconnect.
async fn writes_of_every_kind(store: &dyn Store) {
    assert!(store.vehicle_connected(FLEET, "bus-1", NODE).await.unwrap());
    let (outcomes, _) = offer(store, FLEET, &[("bus-1", 100), ("bus-2", 100)]).await;
    assert!(outcomes.iter().all(|o| matches!(o, Ok(PutOutcome::Accepted { .. }))));
    let message = ChatMessage { id: String::new(), room: "ops".into(), from: "d".into(), text: "hi".into(), ts: 1 };
    store.append_message(FLEET, message).await.unwrap();
    assert!(store.vehicle_disconnected(FLEET, "bus-1", NODE).await.unwrap().is_some());
}

// One Redis ------------------------------------------------------------------

#[tokio::test]
async fn redis_every_kind_of_event() {
    let redis = Redis::start();
    every_kind_of_event(&redis_store(&redis, retention(1000))).await;
}

#[tokio::test]
async fn redis_swept_and_back_online() {
    let redis = Redis::start();
    swept_and_back_online(&redis_store(&redis, stale_in_1ms(1000))).await;
}

#[tokio::test]
async fn redis_ids_across_fleets() {
    let redis = Redis::start();
    ids_across_fleets(&redis_store(&redis, retention(1000))).await;
}

#[tokio::test]
async fn redis_cap_is_approximate_and_readers_behind_it_learn_what_they_missed() {
    let redis = Redis::start();
    capped(&redis_store(&redis, retention(150)), 150, false).await;
}

#[tokio::test]
async fn redis_leases_and_cursors() {
    let redis = Redis::start();
    leases_and_cursors(&redis_store(&redis, retention(1000))).await;
}

#[tokio::test]
async fn redis_without_a_stream_has_no_stream_key() {
    let redis = Redis::start();
    let store = redis_store(&redis, retention(0));
    assert!(!store.events().enabled());
    writes_of_every_kind(&store).await;
    assert_eq!(cli(redis.port, &["EXISTS", &format!("fg:{{{FLEET}}}:events")]), "0");
    assert_eq!(cli(redis.port, &["EXISTS", &format!("fg:{{{FLEET}}}:events:n")]), "0");
    assert_ne!(cli(redis.port, &["EXISTS", &format!("fg:{{{FLEET}}}:idx")]), "0", "the positions were stored");
    assert_eq!(cli(redis.port, &["EXISTS", "fg:events:fleets"]), "0");
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The stream with plain Redis commands: the entry's fields, and a
/// consumer group reading and acknowledging every event.
#[tokio::test]
async fn a_plain_consumer_group_reads_the_stream() {
    let redis = Redis::start();
    let store = redis_store(&redis, retention(1000));
    let (_, encoded) = offer(&store, FLEET, &[("bus-1", 100), ("bus-2", 100), ("bus-1", 200)]).await;
    let key = format!("fg:{{{FLEET}}}:events");
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let created: String =
        redis::cmd("XGROUP").arg("CREATE").arg(&key).arg("history").arg("0").query_async(&mut conn).await.unwrap();
    assert_eq!(created, "OK");
    type Entries = Vec<(String, Vec<(String, Vec<(String, String)>)>)>;
    let read: Entries = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("history")
        .arg("writer-1")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let entries = &read[0].1;
    assert_eq!(entries.len(), 3);
    for (i, (id, fields)) in entries.iter().enumerate() {
        assert_eq!(fields[0].0, "event");
        let event: Value = serde_json::from_str(&fields[0].1).unwrap();
        assert_eq!(event["id"], format!("{FLEET}/{id}"), "the event's id is its entry's");
        assert_eq!(event["type"], "position");
        assert_eq!(event["data"], serde_json::from_str::<Value>(&encoded[[0, 1, 2][i]]).unwrap());
        assert_eq!(fields.len(), 1, "one field");
        assert!(id.ends_with(&format!("-{}", i + 1)), "the id's sequence is the event's ordinal: {id}");
        let acked: i64 = redis::cmd("XACK").arg(&key).arg("history").arg(id).query_async(&mut conn).await.unwrap();
        assert_eq!(acked, 1);
    }
    let pending: Vec<redis::Value> =
        redis::cmd("XPENDING").arg(&key).arg("history").query_async(&mut conn).await.unwrap();
    assert_eq!(pending[0], redis::Value::Int(0), "every event acknowledged");
}

/// An update answered `unavailable` (Redis paused past the store's bound)
/// never appears in the stream, nor do its stored neighbours' events go
/// missing: the fence refuses it when Redis resumes.
#[tokio::test]
async fn a_refused_update_never_appears() {
    let redis = Redis::start();
    let store = redis_store(&redis, retention(1000));
    let (outcomes, _) = offer(&store, FLEET, &[("before", 100)]).await;
    assert!(matches!(outcomes[0], Ok(PutOutcome::Accepted { .. })));
    let calls = || {
        let stats = cli(redis.port, &["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = calls();
    assert_eq!(cli(redis.port, &["CLIENT", "PAUSE", "3000", "ALL"]), "OK");
    let (outcomes, _) = offer(&store, FLEET, &[("refused", 100)]).await;
    assert!(outcomes[0].is_err(), "answered unavailable: {outcomes:?}");
    // Redis runs the paused call once it resumes; the fence refuses it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls() < before + 1 {
        assert!(Instant::now() < deadline, "the paused call never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (outcomes, _) = offer(&store, FLEET, &[("after", 100)]).await;
    assert!(matches!(outcomes[0], Ok(PutOutcome::Accepted { .. })));
    let events = all_events(&store, FLEET).await;
    let vehicles: Vec<Value> = events.iter().map(|e| parsed(e)["data"]["vehicleId"].clone()).collect();
    assert_eq!(vehicles, [json!("before"), json!("after")]);
}

/// A clock behind the stream's last id (it stepped back, or a failover
/// reached a Redis whose clock is behind), with the counter lost too: the
/// next events still get increasing ids, on the last id's time.
#[tokio::test]
async fn ids_keep_increasing_when_the_clock_steps_back() {
    let redis = Redis::start();
    let store = redis_store(&redis, retention(1000));
    offer(&store, FLEET, &[("bus-1", 100)]).await;
    let ahead = support::now_ms() + 3_600_000;
    let key = format!("fg:{{{FLEET}}}:events");
    let future = format!("{ahead}-5");
    let json = format!(r#"{{"id":"{FLEET}/{future}","type":"chat","fleet":"{FLEET}","ts":{ahead},"data":{{}}}}"#);
    assert_eq!(cli(redis.port, &["XADD", &key, &future, "event", &json]), future);
    assert_eq!(cli(redis.port, &["DEL", &format!("fg:{{{FLEET}}}:events:n")]), "1");
    offer(&store, FLEET, &[("bus-1", 200), ("bus-2", 200)]).await;
    offer(&store, FLEET, &[("bus-1", 300)]).await;
    let events = all_events(&store, FLEET).await;
    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    let expected =
        ["-1".to_owned(), format!("{ahead}-5"), format!("{ahead}-6"), format!("{ahead}-7"), format!("{ahead}-8")];
    assert!(ids[0].ends_with(&expected[0]), "{ids:?}");
    assert_eq!(ids[1..], expected[1..], "on the last id's time, with the next ordinals");
    for e in &events[2..] {
        assert_eq!(parsed(e)["id"], format!("{FLEET}/{}", e.id), "the JSON carries the id the entry got");
    }
}

// A Redis Cluster --------------------------------------------------------------

/// Every script's keys, the stream's included, share the fleet's slot.
#[tokio::test]
async fn redis_cluster_every_kind_of_event_and_leases() {
    let cluster = RedisCluster::start();
    every_kind_of_event(&cluster_store(&cluster, retention(1000))).await;
    leases_and_cursors(&cluster_store(&cluster, retention(1000))).await;
    ids_across_fleets(&cluster_store(&cluster, retention(1000))).await;
}

// A server -------------------------------------------------------------------

/// Through a real server: a vehicle's connect and its valid update are
/// events; its invalid update never reaches the stream.
#[tokio::test]
async fn an_invalid_update_never_appears() {
    let redis = Redis::start();
    let server = Server::start(&[("FLEETGATE_REDIS_URL", redis.url()), ("FLEETGATE_EVENTS_MAX", "100".into())]);
    let mut bus = Client::connect(&server, json!({ "token": token_for(FLEET, "vehicle", "bus-1") })).await.unwrap();
    let ts = support::now_ms();
    let invalid = bus.call("locationupdate", json!({ "lat": 91.0, "lon": 13.4, "ts": ts })).await;
    assert_eq!(invalid["error"]["code"], "invalid_payload", "{invalid}");
    let valid = bus.call("locationupdate", json!({ "lat": 52.5, "lon": 13.4, "ts": ts })).await;
    assert_eq!(valid["data"]["accepted"], true, "{valid}");
    let key = format!("fg:{{{FLEET}}}:events");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cli(redis.port, &["XLEN", &key]) != "2" {
        assert!(Instant::now() < deadline, "the connect and the update were not both appended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let store = redis_store(&redis, retention(100));
    let events = all_events(&store, FLEET).await;
    let mut kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["position", "vehicle_online"]);
    let position = events.iter().find(|e| e.kind == EventKind::Position).unwrap();
    let data = &parsed(position)["data"];
    assert_eq!((&data["vehicleId"], &data["lat"], &data["ts"]), (&json!("bus-1"), &json!(52.5), &json!(ts)));
}
