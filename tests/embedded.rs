//! The embedded single node (no Redis): authentication, validation,
//! ordering, subscriptions and fan-out as a client sees them.

mod support;

use std::time::Duration;

use fleetgate_testkit::Client;
use serde_json::{Value, json};
use support::{Server, api::code, now_ms, token, token_for};

const SHORT: Duration = Duration::from_millis(400);
const LONG: Duration = Duration::from_secs(5);

#[tokio::test]
async fn handshake_failures_carry_the_contract_codes() {
    let server = Server::start(&[]);
    let expired = token(json!({"sub": "x", "fleet": "f", "role": "viewer", "exp": now_ms() / 1000 - 5}));
    let future = token(
        json!({"sub": "x", "fleet": "f", "role": "viewer", "exp": now_ms() / 1000 + 600, "nbf": now_ms() / 1000 + 300}),
    );
    let bad_role = token(json!({"sub": "x", "fleet": "f", "role": "admin", "exp": now_ms() / 1000 + 600}));
    let cases = [
        (json!({"token": "not-a-jwt"}), "invalid_token"),
        (json!({"token": expired}), "token_expired"),
        (json!({"token": future}), "invalid_token"),
        (json!({"token": bad_role}), "invalid_token"),
        (json!({"token": token_for("f", "viewer", "x"), "fleet": "other"}), "forbidden"),
        (json!({"session": "does-not-exist"}), "session_expired"),
    ];
    for (auth, expected) in cases {
        let err = Client::connect(&server, auth.clone()).await.err();
        assert_eq!(err.as_deref(), Some(expected), "auth {auth}");
    }
}

#[tokio::test]
async fn handshake_session_and_resume() {
    let server = Server::start(&[]);
    let mut a = Client::connect(&server, json!({"token": token_for("f", "vehicle", "bus-1")})).await.unwrap();
    let session = a.next("session", LONG).await.expect("session event");
    assert_eq!(session["fleet"], "f");
    assert_eq!(session["role"], "vehicle");
    assert_eq!(session["vehicle"], "bus-1");
    assert!(session["expiresAt"].as_i64().unwrap() > now_ms());
    let id = session["sessionId"].as_str().unwrap();
    assert!(id.len() >= 22, "at least 128 random bits");

    let mut b = Client::connect(&server, json!({"session": id})).await.unwrap();
    assert_eq!(b.next("session", LONG).await.unwrap()["sessionId"], id);
    let r = b.call("locationupdate", json!({"lat": 37.5, "lon": 127.0})).await;
    assert_eq!(r, json!({"ok": true, "data": {"accepted": true}}));
}

#[tokio::test]
async fn authenticate_event_flow_and_timeout() {
    // Long enough that a loaded machine still authenticates in time.
    let server = Server::start(&[("FLEETGATE_AUTH_TIMEOUT_SECS", "3".into())]);
    let mut c = Client::connect(&server, Value::Null).await.unwrap();
    let r = c.call("subscribe", json!({})).await;
    assert_eq!(code(&r), "unauthenticated");
    c.emit("locationupdate", json!({"lat": 1, "lon": 1}));
    let ex = c.next("exception", LONG).await.expect("exception without ack");
    assert_eq!(ex["event"], "locationupdate");
    assert_eq!(ex["code"], "unauthenticated");

    let r = c.call("authenticate", json!({"token": token_for("f", "viewer", "v"), "provider": "g"})).await;
    assert_eq!(code(&r), "forbidden");
    let r = c.call("authenticate", json!({"token": token_for("f", "viewer", "v"), "provider": "f"})).await;
    assert_eq!(r["ok"], true);
    assert_eq!(r["data"]["fleet"], "f");
    assert_eq!(r["data"]["role"], "viewer");
    assert!(r["data"].get("vehicle").is_none());

    // Authenticated in time: still connected after the timeout.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(!c.is_disconnected());
    assert_eq!(c.call("subscribe", json!({})).await["ok"], true);

    let idle = Client::connect(&server, Value::Null).await.unwrap();
    assert!(idle.disconnected_within(Duration::from_secs(15)).await, "unauthenticated socket must be dropped");
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let server = Server::start(&[]);
    let mut v = Client::connect(&server, json!({"token": token_for("f", "dispatcher", "d")})).await.unwrap();
    let now = now_ms();
    let cases = [
        (json!({"vehicleId": "b", "lat": 91, "lon": 1}), "lat"),
        (json!({"vehicleId": "b", "lat": 1, "lon": "2"}), "lon"),
        (json!({"vehicleId": "b", "lat": 0, "lon": 0}), "null island"),
        (json!({"vehicleId": "b c", "lat": 1, "lon": 1}), "vehicleId"),
        (json!({"vehicleId": "b", "lat": 1, "lon": 1, "ts": now + 120_000}), "ts"),
        (json!({"vehicleId": "b", "lat": 1, "lon": 1, "ts": 0}), "ts"),
        (json!({"vehicleId": "b", "lat": 1, "lon": 1, "heading": 360}), "heading"),
        (json!({"vehicleId": "b", "lat": 1, "lon": 1, "speed": -1}), "speed"),
        (json!({"lat": 1, "lon": 1}), "vehicleId"),
    ];
    for (payload, field) in cases {
        let r = v.call("locationupdate", payload.clone()).await;
        assert_eq!(code(&r), "invalid_payload", "{payload}");
        assert!(r["error"]["message"].as_str().unwrap().contains(field), "{payload} → {r}");
    }
    let ok = [
        json!({"vehicleId": "b", "location": {"type": "Point", "coordinates": [127.0, 37.5]}}),
        // Another vehicle: without `ts` both take the receipt time, and two
        // in the same millisecond would make the second stale.
        json!({"busId": "c", "location": {"latitude": "37.6", "longitude": "127.1"}}),
    ];
    for payload in ok {
        let r = v.call("locationupdate", payload.clone()).await;
        assert_eq!(r["data"]["accepted"], true, "{payload} → {r}");
    }
}

#[tokio::test]
async fn roles_limit_who_publishes_what() {
    let server = Server::start(&[]);
    let mut bus = Client::connect(&server, json!({"token": token_for("f", "vehicle", "bus-1")})).await.unwrap();
    let r = bus.call("locationupdate", json!({"vehicleId": "bus-2", "lat": 1, "lon": 1})).await;
    assert_eq!(code(&r), "forbidden");
    let mut viewer = Client::connect(&server, json!({"token": token_for("f", "viewer", "v")})).await.unwrap();
    let r = viewer.call("locationupdate", json!({"vehicleId": "bus-1", "lat": 1, "lon": 1})).await;
    assert_eq!(code(&r), "forbidden");
}

#[tokio::test]
async fn stale_and_duplicate_updates_are_dropped() {
    let server = Server::start(&[]);
    let mut bus = Client::connect(&server, json!({"token": token_for("f", "vehicle", "bus-1")})).await.unwrap();
    let mut viewer = Client::connect(&server, json!({"token": token_for("f", "viewer", "v")})).await.unwrap();
    viewer.call("subscribe", json!({})).await;
    let ts = now_ms() - 1000;
    let accepted = json!({"ok": true, "data": {"accepted": true}});
    let stale = json!({"ok": true, "data": {"accepted": false, "reason": "stale"}});
    assert_eq!(bus.call("locationupdate", json!({"lat": 1, "lon": 1, "ts": ts})).await, accepted);
    assert_eq!(bus.call("locationupdate", json!({"lat": 2, "lon": 2, "ts": ts})).await, stale);
    assert_eq!(bus.call("locationupdate", json!({"lat": 2, "lon": 2, "ts": ts - 1})).await, stale);
    let got = viewer.collect("locationupdate", Duration::from_millis(600)).await;
    assert_eq!(got.len(), 1, "only the accepted update is broadcast: {got:?}");
    assert_eq!(got[0]["lat"], 1.0);
}

#[tokio::test]
async fn subscriptions_by_fleet_vehicle_and_bbox_deliver_once() {
    let server = Server::start(&[]);
    let mut d = Client::connect(&server, json!({"token": token_for("f", "dispatcher", "d")})).await.unwrap();
    let seoul = json!({"vehicleId": "bus-1", "lat": 37.5665, "lon": 126.978, "heading": 90.0});
    let busan = json!({"vehicleId": "bus-2", "lat": 35.1796, "lon": 129.0756});
    d.call("locationupdate", seoul.clone()).await;
    d.call("locationupdate", busan.clone()).await;

    let mut boxv = Client::connect(&server, json!({"token": token_for("f", "viewer", "a")})).await.unwrap();
    let snap = boxv.call("subscribe", json!({"bbox": [126.9, 37.4, 127.1, 37.7]})).await;
    let ids: Vec<&str> =
        snap["data"]["vehicles"].as_array().unwrap().iter().map(|p| p["vehicleId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["bus-1"], "bbox snapshot");

    let mut one = Client::connect(&server, json!({"token": token_for("f", "viewer", "b")})).await.unwrap();
    let snap = one.call("subscribe", json!({"vehicles": ["bus-2"]})).await;
    assert_eq!(snap["data"]["vehicles"].as_array().unwrap().len(), 1);
    assert_eq!(snap["data"]["vehicles"][0]["vehicleId"], "bus-2");

    let mut all = Client::connect(&server, json!({"token": token_for("f", "viewer", "c")})).await.unwrap();
    let snap = all.call("subscribe", json!({})).await;
    assert_eq!(snap["data"]["fleet"], "f");
    assert_eq!(snap["data"]["vehicles"].as_array().unwrap().len(), 2);
    // Overlapping subscriptions still mean one delivery per update.
    all.call("subscribe", json!({"vehicles": ["bus-1"]})).await;
    all.call("subscribe", json!({"bbox": [126.0, 37.0, 128.0, 38.0]})).await;

    let mut seoul2 = seoul.clone();
    seoul2["lat"] = json!(37.57);
    seoul2["ts"] = json!(now_ms());
    d.call("locationupdate", seoul2).await;
    let mut busan2 = busan.clone();
    busan2["lat"] = json!(35.18);
    busan2["ts"] = json!(now_ms());
    d.call("locationupdate", busan2).await;

    let got_all = all.collect("locationupdate", SHORT).await;
    assert_eq!(got_all.len(), 2, "exactly once each: {got_all:?}");
    let got_box = boxv.collect("locationupdate", SHORT).await;
    assert_eq!(got_box.len(), 1);
    assert_eq!(got_box[0]["vehicleId"], "bus-1");
    let event = &got_box[0];
    assert_eq!(event["fleet"], "f");
    assert!(event["receivedAt"].is_i64());
    assert!(event.get("speed").is_none(), "absent fields are omitted: {event}");
    let got_one = one.collect("locationupdate", SHORT).await;
    assert_eq!(got_one.len(), 1);
    assert_eq!(got_one[0]["vehicleId"], "bus-2");

    // Unsubscribing from everything stops delivery.
    assert_eq!(all.call("unsubscribe", json!({})).await["ok"], true);
    let mut seoul3 = seoul;
    seoul3["ts"] = json!(now_ms() + 1);
    d.call("locationupdate", seoul3).await;
    assert!(all.collect("locationupdate", SHORT).await.is_empty());
}

#[tokio::test]
async fn fleets_never_see_each_other() {
    let server = Server::start(&[]);
    let mut a = Client::connect(&server, json!({"token": token_for("fleet-a", "viewer", "v")})).await.unwrap();
    let r = a.call("subscribe", json!({"fleet": "fleet-b"})).await;
    assert_eq!(code(&r), "forbidden");
    a.call("subscribe", json!({})).await;
    let mut bus = Client::connect(&server, json!({"token": token_for("fleet-b", "vehicle", "bus-1")})).await.unwrap();
    bus.call("locationupdate", json!({"lat": 10, "lon": 10})).await;
    assert!(a.collect("locationupdate", SHORT).await.is_empty());
    let snap = a.call("subscribe", json!({"vehicles": ["bus-1"]})).await;
    assert_eq!(snap["data"]["vehicles"], json!([]));
}

#[tokio::test]
async fn positions_expire_after_their_ttl() {
    let server = Server::start(&[("FLEETGATE_LOCATION_TTL_SECS", "1".into())]);
    let mut bus = Client::connect(&server, json!({"token": token_for("f", "vehicle", "bus-1")})).await.unwrap();
    bus.call("locationupdate", json!({"lat": 1, "lon": 1})).await;
    let mut v = Client::connect(&server, json!({"token": token_for("f", "viewer", "v")})).await.unwrap();
    assert_eq!(v.call("subscribe", json!({})).await["data"]["vehicles"].as_array().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(v.call("subscribe", json!({})).await["data"]["vehicles"], json!([]));
}

#[tokio::test]
async fn subscriptions_per_socket_are_bounded() {
    let server = Server::start(&[("FLEETGATE_MAX_SUBSCRIPTIONS", "3".into())]);
    let mut v = Client::connect(&server, json!({"token": token_for("f", "viewer", "v")})).await.unwrap();
    assert_eq!(v.call("subscribe", json!({"vehicles": ["a", "b"]})).await["ok"], true);
    let r = v.call("subscribe", json!({"vehicles": ["c", "d"]})).await;
    assert_eq!(code(&r), "payload_too_large");
}

#[tokio::test]
async fn sigterm_closes_sockets_and_exits() {
    let mut server = Server::start(&[]);
    let c = Client::connect(&server, json!({"token": token_for("f", "viewer", "v")})).await.unwrap();
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success(), "clean exit, got {status:?}");
    assert!(c.disconnected_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn metrics_count_connections_updates_and_deliveries() {
    let server = Server::start(&[]);
    let mut v = Client::connect(&server, json!({"token": token_for("f", "viewer", "v")})).await.unwrap();
    v.call("subscribe", json!({})).await;
    let mut bus = Client::connect(&server, json!({"token": token_for("f", "vehicle", "bus-1")})).await.unwrap();
    let ts = now_ms();
    bus.call("locationupdate", json!({"lat": 1, "lon": 1, "ts": ts})).await;
    bus.call("locationupdate", json!({"lat": 1, "lon": 1, "ts": ts})).await;
    bus.call("locationupdate", json!({"lat": 91, "lon": 1})).await;
    v.next("locationupdate", LONG).await.expect("delivered");
    let (status, body) = support::http_get(server.metrics_addr, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    let value = |prefix: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing in\n{body}"))
    };
    assert_eq!(value(r#"fleetgate_position_updates_total{source="socket",outcome="accepted"}"#), 1.0);
    assert_eq!(value(r#"fleetgate_position_updates_total{source="socket",outcome="stale"}"#), 1.0);
    assert_eq!(value(r#"fleetgate_position_updates_total{source="socket",outcome="invalid"}"#), 1.0);
    assert_eq!(value("fleetgate_deliveries_total"), 1.0);
    assert_eq!(value(r#"fleetgate_connections{role="viewer",transport="websocket"}"#), 1.0);
    assert_eq!(value(r#"fleetgate_connections{role="vehicle",transport="websocket"}"#), 1.0);
    assert_eq!(value(r#"fleetgate_connections{role="pending",transport="websocket"}"#), 0.0);
    assert!(body.contains("# HELP fleetgate_deliveries_total"));
}

/// The container health check: `fleetgate healthcheck` asks the server on
/// FLEETGATE_ADDR, and fails once nothing answers there.
#[tokio::test]
async fn healthcheck_subcommand_follows_the_server() {
    let mut server = Server::start(&[]);
    let run = |addr: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
            .arg("healthcheck")
            .env_clear()
            .env("FLEETGATE_ADDR", addr)
            .output()
            .expect("run fleetgate healthcheck")
    };
    // A wildcard listen address is checked on loopback.
    let wildcard = format!("0.0.0.0:{}", server.addr.port());
    let up = run(wildcard.clone());
    assert!(up.status.success(), "healthcheck failed: {}", String::from_utf8_lossy(&up.stderr));
    assert!(server.terminate().success());
    let down = run(wildcard);
    assert_eq!(down.status.code(), Some(1), "healthcheck passed with the server gone");
    assert!(String::from_utf8_lossy(&down.stderr).contains("healthcheck"));
}
