//! Two replicas sharing one private Redis, and again sharing a private
//! three-primary Redis Cluster, each in plain text and TLS only (a TLS
//! Redis also with client certificates required): positions, sessions
//! and ordering hold across them in every mode.

mod support;

use std::time::Duration;

use fleetgate_testkit::Client;
use serde_json::json;
use support::{Redis, RedisCluster, Server, SharedRedis, TlsRedis, now_ms, token_for};

fn pair(redis: &impl SharedRedis) -> (Server, Server) {
    let env = redis.envs();
    (Server::start(&env), Server::start(&env))
}

/// Each scenario runs in every mode: `<scenario>::one_redis`,
/// `::one_redis_tls`, `::one_redis_mutual_tls`, `::redis_cluster` and
/// `::redis_cluster_tls`.
macro_rules! in_both_modes {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn one_redis() {
                super::$scenario(&super::Redis::start()).await;
            }

            #[tokio::test]
            async fn redis_cluster() {
                super::$scenario(&super::RedisCluster::start()).await;
            }

            #[tokio::test]
            async fn one_redis_tls() {
                super::$scenario(&super::TlsRedis::start(false)).await;
            }

            #[tokio::test]
            async fn one_redis_mutual_tls() {
                super::$scenario(&super::TlsRedis::start(true)).await;
            }

            #[tokio::test]
            async fn redis_cluster_tls() {
                super::$scenario(&super::RedisCluster::start_tls()).await;
            }
        }
    )*};
}

in_both_modes!(
    an_update_on_one_replica_reaches_viewers_on_the_other,
    snapshot_ordering_and_sessions_are_shared,
    bbox_viewers_on_another_replica_get_only_their_box,
    revocation_chat_and_presence_cross_replicas,
);

async fn an_update_on_one_replica_reaches_viewers_on_the_other(redis: &impl SharedRedis) {
    let (a, b) = pair(redis);
    let mut viewer = Client::connect(&b, json!({"token": token_for("f", "viewer", "v")})).await.unwrap();
    let mut other = Client::connect(&b, json!({"token": token_for("g", "viewer", "w")})).await.unwrap();
    viewer.call("subscribe", json!({})).await;
    other.call("subscribe", json!({})).await;
    let mut bus = Client::connect(&a, json!({"token": token_for("f", "vehicle", "bus-1")})).await.unwrap();
    let r = bus.call("locationupdate", json!({"lat": 37.5, "lon": 127.0, "speed": 3.5})).await;
    assert_eq!(r["data"]["accepted"], true);
    let got = viewer.next("locationupdate", Duration::from_secs(5)).await.expect("cross-replica delivery");
    assert_eq!(got["vehicleId"], "bus-1");
    assert_eq!(got["speed"], 3.5);
    assert!(other.collect("locationupdate", Duration::from_millis(400)).await.is_empty(), "other fleet");
    assert!(viewer.collect("locationupdate", Duration::from_millis(400)).await.is_empty(), "exactly once");
}

async fn snapshot_ordering_and_sessions_are_shared(redis: &impl SharedRedis) {
    let (a, b) = pair(redis);
    let mut d = Client::connect(&a, json!({"token": token_for("f", "dispatcher", "d")})).await.unwrap();
    let session = d.next("session", Duration::from_secs(5)).await.unwrap();
    let ts = now_ms();
    for (i, v) in ["bus-1", "bus-2", "bus-3"].iter().enumerate() {
        let r = d.call("locationupdate", json!({"vehicleId": v, "lat": 37.0 + i as f64, "lon": 127.0, "ts": ts})).await;
        assert_eq!(r["data"]["accepted"], true);
    }
    // The same fix time through the other replica is stale: the compare-and-set lives in Redis.
    let mut d2 = Client::connect(&b, json!({"session": session["sessionId"]})).await.unwrap();
    let r = d2.call("locationupdate", json!({"vehicleId": "bus-1", "lat": 40.0, "lon": 127.0, "ts": ts})).await;
    assert_eq!(r["data"], json!({"accepted": false, "reason": "stale"}));

    let mut viewer = Client::connect(&b, json!({"token": token_for("f", "viewer", "v")})).await.unwrap();
    let snap = viewer.call("subscribe", json!({})).await;
    let mut ids: Vec<String> = snap["data"]["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["vehicleId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["bus-1", "bus-2", "bus-3"]);
    let bus1 = snap["data"]["vehicles"].as_array().unwrap().iter().find(|p| p["vehicleId"] == "bus-1").unwrap();
    assert_eq!(bus1["lat"], 37.0, "the stale update did not overwrite");
}

async fn bbox_viewers_on_another_replica_get_only_their_box(redis: &impl SharedRedis) {
    let (a, b) = pair(redis);
    let mut viewer = Client::connect(&b, json!({"token": token_for("f", "viewer", "v")})).await.unwrap();
    viewer.call("subscribe", json!({"bbox": [126.9, 37.4, 127.1, 37.7]})).await;
    let mut d = Client::connect(&a, json!({"token": token_for("f", "dispatcher", "d")})).await.unwrap();
    d.call("locationupdate", json!({"vehicleId": "out", "lat": 35.18, "lon": 129.07})).await;
    d.call("locationupdate", json!({"vehicleId": "in", "lat": 37.5665, "lon": 126.978})).await;
    let got = viewer.collect("locationupdate", Duration::from_millis(800)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["vehicleId"], "in");
}

/// Everything that crosses replicas through the Socket.IO adapter rather
/// than the position relay: revocation, chat, notices, presence.
async fn revocation_chat_and_presence_cross_replicas(redis: &impl SharedRedis) {
    let (a, b) = pair(redis);
    let dispatcher = token_for("f", "dispatcher", "d");

    // Presence: a vehicle connecting on A is announced to a viewer on B.
    let mut viewer = Client::connect(&b, json!({"token": token_for("f", "viewer", "v")})).await.unwrap();
    viewer.call("subscribe", json!({})).await;
    let mut bus = Client::connect(&a, json!({"token": token_for("f", "vehicle", "bus-1")})).await.unwrap();
    let online = viewer.next("vehicle_online", Duration::from_secs(5)).await.expect("vehicle_online across replicas");
    assert_eq!(online["vehicleId"], "bus-1");

    // Chat: a member on B hears a member on A, and the notice of the join.
    let mut member = Client::connect(&b, json!({"token": token_for("f", "viewer", "m")})).await.unwrap();
    assert_eq!(member.call("join_room", json!({"room": "ops"})).await["data"]["room"], "ops");
    let mut speaker = Client::connect(&a, json!({"token": dispatcher.clone()})).await.unwrap();
    speaker.call("join_room", json!({"room": "ops"})).await;
    let notice = member.next("notice", Duration::from_secs(5)).await.expect("join notice across replicas");
    assert_eq!(notice, json!({"room": "ops", "kind": "join", "sub": "d"}));
    let sent = speaker.call("chat", json!({"room": "ops", "text": "hello"})).await;
    let heard = member.next("chat", Duration::from_secs(5)).await.expect("chat across replicas");
    assert_eq!(heard, sent["data"]);
    let history = member.call("history", json!({"room": "ops"})).await;
    assert_eq!(history["data"]["messages"][0]["text"], "hello");

    // Revocation on A disconnects the session's socket on B; resume then fails.
    let session = bus.next("session", Duration::from_secs(5)).await.unwrap();
    let id = session["sessionId"].as_str().unwrap().to_owned();
    let on_b = Client::connect(&b, json!({"session": id})).await.unwrap();
    let (status, body) =
        support::http_request_as(a.addr, "DELETE", &format!("/api/v1/sessions/{id}"), None, Some(&dispatcher)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(on_b.disconnected_within(Duration::from_secs(10)).await, "revoked session's socket on the other replica");
    assert!(bus.disconnected_within(Duration::from_secs(10)).await, "revoked session's socket on this replica");
    assert_eq!(Client::connect(&b, json!({"session": id})).await.err().as_deref(), Some("session_expired"));
    let offline =
        viewer.next("vehicle_offline", Duration::from_secs(5)).await.expect("vehicle_offline across replicas");
    assert_eq!(offline["vehicleId"], "bus-1");
}
