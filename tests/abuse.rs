//! Abuse the gateway must refuse or contain, as clients see it: a viewer
//! that stops reading, event and vehicle rate limits, connection caps.

mod support;

use std::time::{Duration, Instant};

use fleetgate_testkit::Client;
use fleetgate_testkit::sio::{self, Ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Server, api::code, http_request_as, now_ms, token_for};
use tokio_tungstenite::tungstenite::Message;

/// A connected viewer over a bare websocket: dropping it closes the connection.
async fn raw_viewer(server: &Server, fleet: &str) -> Ws {
    let auth = json!({ "token": token_for(fleet, "viewer", "raw") });
    sio::open(&server.into(), &auth.to_string(), Duration::from_secs(10)).await.unwrap()
}

/// A viewer of `fleet` that subscribes and then never reads again, on a
/// socket with a tiny receive buffer so the server's side fills quickly.
async fn stalled_viewer(server: &Server, fleet: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let auth = json!({ "token": token_for(fleet, "viewer", "stalled") });
    let mut ws = sio::handshake(tcp, &server.into(), &auth.to_string()).await.unwrap();
    ws.send(Message::text(sio::event(Some(1), "subscribe", "{}"))).await.unwrap();
    // From here on nothing is read: the websocket is only kept open.
    ws
}

#[tokio::test]
async fn a_viewer_that_stops_reading_is_contained_and_disconnected() {
    let server = Server::start(&[
        ("FLEETGATE_SLOW_VIEWER_SECS", "2".into()),
        ("FLEETGATE_WRITE_TIMEOUT_SECS", "6".into()),
        ("FLEETGATE_MAX_MESSAGE_BYTES", "262144".into()),
        ("FLEETGATE_RATE_VEHICLE_PER_SEC", "0".into()),
    ]);
    let fleet = "slow";
    let mut good = Client::connect(&server, json!({ "token": token_for(fleet, "viewer", "good") })).await.unwrap();
    assert_eq!(good.call("subscribe", json!({})).await["ok"], true);
    let stalled = stalled_viewer(&server, fleet).await;
    let dispatcher = token_for(fleet, "dispatcher", "ops");

    let rss_before = server.rss_kib();
    let (batches, per_batch): (u32, u32) = (150, 200);
    let base = now_ms() - 600_000;
    let mut accepted = 0;
    for b in 0..batches {
        let items: Vec<Value> = (0..per_batch)
            .map(|i| json!({ "vehicleId": format!("v-{i}"), "lat": 10.0 + f64::from(b) * 1e-4, "lon": 20.0, "ts": base + i64::from(b) }))
            .collect();
        let body = json!({ "items": items }).to_string();
        let (status, reply) = http_request_as(
            server.addr,
            "POST",
            &format!("/api/v1/fleets/{fleet}/locations"),
            Some(&body),
            Some(&dispatcher),
        )
        .expect("batch answered");
        assert_eq!(status, 200, "{reply}");
        accepted += reply.matches("\"accepted\":true").count();
        // A pace a (debug-built) test client keeps up with.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(accepted, (batches * per_batch) as usize);

    // The reading viewer is not held back by the stalled one: it ends with
    // every vehicle's newest position (bursts larger than its buffer reach
    // it conflated, newest per vehicle).
    let last_ts = base + i64::from(batches - 1);
    let mut newest = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while newest.values().filter(|ts| **ts == last_ts).count() < per_batch as usize {
        assert!(Instant::now() < deadline, "the reading viewer did not get every vehicle's newest position");
        for p in good.collect("locationupdate", Duration::from_millis(300)).await {
            let ts = p["ts"].as_i64().unwrap_or(0);
            let entry = newest.entry(p["vehicleId"].as_str().unwrap_or_default().to_owned()).or_insert(ts);
            assert!(ts >= *entry, "a vehicle went back in time: {p}");
            *entry = ts;
        }
    }

    // The stalled one is given up on and its connection ends: only the
    // reading viewer is left.
    let viewers = "fleetgate_connections{role=\"viewer\",transport=\"websocket\"}";
    // (Expelled after FLEETGATE_SLOW_VIEWER_SECS; its connection ends when
    // writes to it have been stuck for FLEETGATE_WRITE_TIMEOUT_SECS.)
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric(viewers) != 1.0 {
        if Instant::now() > deadline {
            let dump = support::http_get(server.metrics_addr, "/metrics").map(|(_, b)| b).unwrap_or_default();
            let lines: Vec<&str> = dump
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && (l.contains("connections")
                            || l.contains("slow")
                            || l.contains("lagging")
                            || l.contains("dropped"))
                })
                .collect();
            panic!("the stalled viewer was never disconnected:\n{}", lines.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.metric("fleetgate_slow_viewers_total") >= 1.0);
    assert!(server.metric("fleetgate_slow_viewers_expelled_total") >= 1.0);
    assert!(server.metric("fleetgate_write_timeouts_total") >= 1.0);
    assert!(server.metric("fleetgate_emits_dropped_total") >= 1.0);
    // Memory stays bounded: 30 000 positions (about 5 MiB encoded) went
    // to a socket that took none of them.
    let grown = server.rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    drop(stalled);
    assert!(!good.is_disconnected());
}

#[tokio::test]
async fn events_per_connection_are_rate_limited_without_disconnecting() {
    let server = Server::start(&[("FLEETGATE_RATE_EVENTS_PER_SEC", "5".into())]);
    let mut c = Client::connect(&server, json!({ "token": token_for("rl", "viewer", "v") })).await.unwrap();
    let mut codes = Vec::new();
    for _ in 0..30 {
        let reply = c.call("subscribe", json!({})).await;
        codes.push(if reply["ok"] == true { "ok".to_owned() } else { code(&reply).to_owned() });
    }
    assert!(codes.iter().any(|c| c == "ok"));
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    assert!(codes.iter().all(|c| c == "ok" || c == "rate_limited"), "{codes:?}");
    // The budget refills; the socket was never dropped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.call("subscribe", json!({})).await["ok"], true);
    assert!(!c.is_disconnected());
    // Without an ack the refusal is an `exception` event.
    for _ in 0..30 {
        c.emit("subscribe", json!({}));
    }
    let e = c.next("exception", Duration::from_secs(5)).await.expect("exception event");
    assert_eq!(e["code"], "rate_limited");
}

#[tokio::test]
async fn updates_per_vehicle_are_rate_limited() {
    let server =
        Server::start(&[("FLEETGATE_RATE_VEHICLE_PER_SEC", "2".into()), ("FLEETGATE_RATE_EVENTS_PER_SEC", "0".into())]);
    let mut bus = Client::connect(&server, json!({ "token": token_for("rv", "vehicle", "bus-1") })).await.unwrap();
    let mut other = Client::connect(&server, json!({ "token": token_for("rv", "vehicle", "bus-2") })).await.unwrap();
    let base = now_ms() - 60_000;
    let mut limited = 0;
    let mut accepted = 0;
    for i in 0..40 {
        let reply = bus.call("locationupdate", json!({ "lat": 1.0, "lon": 2.0, "ts": base + i })).await;
        match (reply["ok"].as_bool(), code(&reply)) {
            (Some(true), _) => accepted += 1,
            (_, "rate_limited") => limited += 1,
            _ => panic!("unexpected reply {reply}"),
        }
    }
    // The burst is ten times the rate: 20 pass, the rest wait for the refill.
    assert!((20..=25).contains(&accepted), "accepted {accepted}");
    assert_eq!(accepted + limited, 40);
    // Another vehicle has its own budget.
    let reply = other.call("locationupdate", json!({ "lat": 1.0, "lon": 2.0 })).await;
    assert_eq!(reply["data"]["accepted"], true, "{reply}");
    // HTTP counts against the same budget.
    let (status, body) = http_request_as(
        server.addr,
        "PUT",
        "/api/v1/fleets/rv/vehicles/bus-1/location",
        Some(&json!({ "lat": 1.0, "lon": 2.0 }).to_string()),
        Some(&token_for("rv", "dispatcher", "ops")),
    )
    .unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("rate_limited"), "{body}");
}

#[tokio::test]
async fn connection_caps_are_answered_at_the_handshake() {
    let server = Server::start(&[("FLEETGATE_MAX_CONNECTIONS", "2".into())]);
    let auth = || json!({ "token": token_for("cap", "viewer", "v") });
    let a = raw_viewer(&server, "cap").await;
    let _b = Client::connect(&server, auth()).await.unwrap();
    assert_eq!(Client::connect(&server, auth()).await.err().as_deref(), Some("unavailable"));
    drop(a);
    // The slot comes back once the server has seen the first one go.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(&server, auth()).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e, "unavailable");
                assert!(Instant::now() < deadline, "the closed connection's slot never came back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    let per_ip = Server::start(&[("FLEETGATE_MAX_CONNECTIONS_PER_IP", "1".into())]);
    let _first = Client::connect(&per_ip, auth()).await.unwrap();
    assert_eq!(Client::connect(&per_ip, auth()).await.err().as_deref(), Some("rate_limited"));
    // Refused handshakes do not use up the address's slot.
    assert_eq!(Client::connect(&per_ip, auth()).await.err().as_deref(), Some("rate_limited"));
    assert_eq!(per_ip.metric("fleetgate_rate_limited_total{limit=\"connections_per_ip\"}"), 2.0);
}

/// The response head to a GET carrying `Origin: origin`.
fn head_with_origin(server: &Server, path: &str, origin: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n", server.addr).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase()
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let server = Server::start(&[("FLEETGATE_CORS_ORIGINS", "https://dispatch.example".into())]);
    for path in ["/healthz", "/socket.io/?EIO=4&transport=polling"] {
        let allowed = head_with_origin(&server, path, "https://dispatch.example");
        assert!(allowed.contains("access-control-allow-origin: https://dispatch.example"), "{path}: {allowed}");
        let refused = head_with_origin(&server, path, "https://evil.example");
        assert!(!refused.contains("access-control-allow-origin"), "{path}: {refused}");
    }
    // Nothing configured outside demo mode: no origin is allowed.
    let closed = Server::start(&[]);
    let head = head_with_origin(&closed, "/healthz", "https://dispatch.example");
    assert!(!head.contains("access-control-allow-origin"), "{head}");
}

#[tokio::test]
async fn an_oversized_websocket_message_closes_only_that_connection() {
    let server = Server::start(&[("FLEETGATE_MAX_MESSAGE_BYTES", "4096".into())]);
    let mut bystander = Client::connect(&server, json!({ "token": token_for("big", "viewer", "b") })).await.unwrap();
    let mut ws = raw_viewer(&server, "big").await;
    let huge = format!(r#"42/fleet,["subscribe",{{"vehicles":["{}"]}}]"#, "x".repeat(64 * 1024));
    let _ = ws.send(Message::text(huge)).await;
    // The server ends the connection instead of reading 64 KiB into memory.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "an oversized message must end its connection");
    // Nobody else is affected.
    assert_eq!(bystander.call("subscribe", json!({})).await["ok"], true);
    assert!(Client::connect(&server, json!({ "token": token_for("big", "viewer", "c") })).await.is_ok());
}
