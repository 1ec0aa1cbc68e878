//! Two replicas on a Redis found through Sentinel (a primary, its replica
//! and two Sentinels, all started here), in plain text and TLS only: a
//! forced `SENTINEL FAILOVER` under traffic. Acks and delivery resume
//! without restarting fleetgate, every update answered `ok` before, during
//! or after the failover is there afterwards, and nothing else than `ok`
//! or `unavailable` is ever answered.

mod support;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use fleetgate_testkit::Client;
use serde_json::json;
use support::{SentinelRedis, Server, SharedRedis, now_ms, token_for};

#[tokio::test]
async fn a_failover_loses_no_acknowledged_update() {
    failover_under_traffic(SentinelRedis::start(false)).await;
}

#[tokio::test]
async fn a_failover_over_tls_loses_no_acknowledged_update() {
    failover_under_traffic(SentinelRedis::start(true)).await;
}

/// Publishes one position of a new vehicle; `Some(ts)` when it was acknowledged.
async fn publish(d: &mut Client, n: usize) -> Option<i64> {
    let ts = now_ms();
    let r =
        d.call("locationupdate", json!({"vehicleId": format!("bus-{n}"), "lat": 37.5, "lon": 127.0, "ts": ts})).await;
    if r["ok"] == true {
        assert_eq!(r["data"]["accepted"], true, "{r}");
        Some(ts)
    } else {
        assert_eq!(r["error"]["code"], "unavailable", "only ok or unavailable: {r}");
        None
    }
}

async fn failover_under_traffic(redis: SentinelRedis) {
    let env = redis.envs();
    let (a, b) = (Server::start(&env), Server::start(&env));
    let mut viewer = Client::connect(&b, json!({"token": token_for("f", "viewer", "v")})).await.unwrap();
    viewer.call("subscribe", json!({})).await;
    let mut d = Client::connect(&a, json!({"token": token_for("f", "dispatcher", "d")})).await.unwrap();
    let mut acked: HashMap<String, i64> = HashMap::new();
    let mut n = 0;

    for _ in 0..10 {
        let ts = publish(&mut d, n).await.expect("acknowledged before the failover");
        acked.insert(format!("bus-{n}"), ts);
        n += 1;
    }
    let got = viewer.next("locationupdate", Duration::from_secs(5)).await.expect("delivery before the failover");
    assert_eq!(got["vehicleId"], "bus-0");

    let old_primary = redis.primary;
    let failover = tokio::task::spawn_blocking(move || {
        redis.fail_over();
        redis
    });
    let mut unavailable = 0;
    while !failover.is_finished() {
        match publish(&mut d, n).await {
            Some(ts) => {
                acked.insert(format!("bus-{n}"), ts);
            }
            None => unavailable += 1,
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let redis = failover.await.unwrap();
    assert_ne!(redis.current_primary(), Some(old_primary), "the primary moved");

    // Acks resume with the same fleetgate processes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ok_after = 0;
    let mut last = None;
    while ok_after < 10 {
        assert!(Instant::now() < deadline, "acks did not resume after the failover ({ok_after} ok)");
        match publish(&mut d, n).await {
            Some(ts) => {
                acked.insert(format!("bus-{n}"), ts);
                last = Some(format!("bus-{n}"));
                ok_after += 1;
            }
            None => unavailable += 1,
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Delivery resumes: the viewer on the other replica hears the updates made after it.
    let last = last.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = viewer.next("locationupdate", deadline - tokio::time::Instant::now()).await;
        let got = got.unwrap_or_else(|| panic!("delivery did not resume after the failover (waiting for {last})"));
        if got["vehicleId"] == last.as_str() {
            break;
        }
    }

    // The adapter side follows too: chat across the replicas.
    let mut member = Client::connect(&b, json!({"token": token_for("f", "viewer", "m")})).await.unwrap();
    member.call("join_room", json!({"room": "ops"})).await;
    let mut speaker = Client::connect(&a, json!({"token": token_for("f", "dispatcher", "s")})).await.unwrap();
    speaker.call("join_room", json!({"room": "ops"})).await;
    let sent = speaker.call("chat", json!({"room": "ops", "text": "after the failover"})).await;
    assert_eq!(sent["ok"], true, "{sent}");
    assert_eq!(member.next("chat", Duration::from_secs(5)).await.expect("chat across replicas"), sent["data"]);

    // Every acknowledged update is stored, read through either replica.
    for server in [&a, &b] {
        let mut reader = Client::connect(server, json!({"token": token_for("f", "viewer", "r")})).await.unwrap();
        let snap = reader.call("subscribe", json!({})).await;
        let stored: HashMap<String, i64> = snap["data"]["vehicles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["vehicleId"].as_str().unwrap().to_owned(), p["ts"].as_i64().unwrap()))
            .collect();
        let lost: Vec<(&String, &i64)> = acked.iter().filter(|(v, ts)| stored.get(*v) != Some(ts)).collect();
        assert!(lost.is_empty(), "acknowledged but missing after the failover: {lost:?}");
    }
    eprintln!("{} updates acknowledged, {unavailable} answered unavailable", acked.len());
}
