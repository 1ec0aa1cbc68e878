//! The OsmAnd listener (contract section 13) against a real process: the
//! requests the Traccar Client apps and OsmAnd send, byte for byte, every
//! unit and timestamp form, refused tokens and values, the rate limit, a
//! position reaching a viewer on another replica, and the bounds on the
//! listener's connections (the cap, the idle timeout).

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use fleetgate_testkit::Client;
use serde_json::{Value, json};
use support::{Redis, Server, free_port, http_request_as, now_ms, token, token_for};

const KNOT: f64 = 1852.0 / 3600.0;

struct Osmand {
    server: Server,
    addr: SocketAddr,
}

fn start(extra: &[(&str, String)]) -> Osmand {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = vec![("FLEETGATE_OSMAND_ADDR", addr.to_string())];
    env.extend(extra.iter().cloned());
    Osmand { server: Server::start(&env), addr }
}

fn vehicle_token(fleet: &str, vehicle: &str) -> String {
    token_for(fleet, "vehicle", vehicle)
}

/// Sends a raw HTTP/1.1 request (`head` without the blank line) and returns status and body.
fn send(addr: SocketAddr, head: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The vehicle's stored position as the HTTP API shows it (`None`: 404).
fn stored(server: &Server, fleet: &str, vehicle: &str) -> Option<Value> {
    let viewer = token_for(fleet, "viewer", "map");
    let (status, body) =
        http_request_as(server.addr, "GET", &format!("/api/v1/fleets/{fleet}/vehicles/{vehicle}"), None, Some(&viewer))
            .unwrap();
    match status {
        200 => Some(serde_json::from_str::<Value>(&body).unwrap()["data"].clone()),
        404 => None,
        other => panic!("GET vehicle: {other} {body}"),
    }
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-6)
}

#[test]
fn the_traccar_client_and_osmand_requests_are_stored() {
    let o = start(&[]);
    let t = vehicle_token("f", "bus-1");
    let secs = now_ms() / 1000 - 60;

    // Traccar Client for Android (before 9.0): POST, every parameter in the query, empty body.
    let head = format!(
        "POST /?id={t}&timestamp={secs}&lat=37.5665&lon=126.978&speed=10.0&bearing=90.0&altitude=38.0&accuracy=5.0&batt=87.0 HTTP/1.1"
    );
    let (status, body) = send(o.addr, &head, "");
    assert_eq!((status, &body), (200, &json!({"ok": true, "data": {"accepted": true}})));
    let p = stored(&o.server, "f", "bus-1").expect("stored");
    assert_eq!(p["geometry"]["coordinates"], json!([126.978, 37.5665]));
    assert_eq!(p["properties"]["ts"], secs * 1000, "seconds since epoch");
    assert!(close(&p["properties"]["speed"], 10.0 * KNOT), "knots become m/s: {}", p["properties"]["speed"]);
    assert_eq!(p["properties"]["heading"], 90.0);
    assert_eq!(p["properties"]["accuracy"], 5.0);

    // OsmAnd live tracking: GET with its URL template's parameters (hdop is not read).
    let ms = now_ms() - 50_000;
    let head = format!("GET /?id={t}&lat=37.6&lon=127.0&timestamp={ms}&hdop=1.2&altitude=40&speed=0 HTTP/1.1");
    assert_eq!(send(o.addr, &head, "").0, 200);
    let p = stored(&o.server, "f", "bus-1").unwrap();
    assert_eq!(p["properties"]["ts"], ms, "milliseconds since epoch");
    assert_eq!(p["properties"]["speed"], 0.0);
    assert!(p["properties"].get("heading").is_none());

    // A form body.
    let at = now_ms() - 40_000;
    let stamp = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let form = format!(
        "id={t}&lat=37.7&lon=127.1&timestamp={}&speed=1.5&bearing=-1&accuracy=-1",
        stamp.replace(':', "%3A").replace('+', "%2B")
    );
    let (status, body) = send(o.addr, "POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded", &form);
    assert_eq!(status, 200, "{body}");
    let p = stored(&o.server, "f", "bus-1").unwrap();
    assert_eq!(p["properties"]["ts"], at, "ISO 8601");
    assert!(close(&p["properties"]["speed"], 1.5 * KNOT));
    assert!(p["properties"].get("heading").is_none() && p["properties"].get("accuracy").is_none(), "-1 is unknown");

    // Traccar Client 9+: the location SDK's JSON, speed already in m/s.
    let at = now_ms() - 30_000;
    let stamp = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = json!({
      "location": {
        "timestamp": stamp,
        "coords": { "latitude": 37.8, "longitude": 127.2, "accuracy": 12, "speed": 4.5, "heading": 180, "altitude": 35 },
        "is_moving": true,
        "odometer": 1520.3,
        "event": "motionchange",
        "battery": { "level": 0.81, "is_charging": false },
        "activity": { "type": "in_vehicle" },
        "extras": {}
      },
      "device_id": t
    });
    let (status, reply) = send(o.addr, "POST / HTTP/1.1\r\nContent-Type: application/json", &body.to_string());
    assert_eq!((status, &reply["data"]["accepted"]), (200, &json!(true)), "{reply}");
    let p = stored(&o.server, "f", "bus-1").unwrap();
    assert_eq!(p["properties"]["ts"], at);
    assert_eq!(p["properties"]["speed"], 4.5, "the JSON form's speed is m/s");
    assert_eq!(p["properties"]["heading"], 180.0);
    assert_eq!(p["properties"]["accuracy"], 12.0);

    // An older fix, uploaded late: answered 200, not stored over the newer one.
    let head = format!("GET /?id={t}&lat=1.0&lon=1.0&timestamp={secs} HTTP/1.1");
    let (status, reply) = send(o.addr, &head, "");
    assert_eq!((status, reply), (200, json!({"ok": true, "data": {"accepted": false, "reason": "stale"}})));
    assert_eq!(stored(&o.server, "f", "bus-1").unwrap()["properties"]["ts"], at);

    assert!(o.server.metric("fleetgate_position_updates_total{source=\"osmand\",outcome=\"accepted\"}") >= 4.0);
    assert_eq!(o.server.metric("fleetgate_position_updates_total{source=\"osmand\",outcome=\"stale\"}"), 1.0);
}

#[test]
fn bad_and_unknown_device_ids_are_refused_and_never_stored() {
    let o = start(&[]);
    let expired = token(json!({"sub": "bus-2", "fleet": "f", "role": "vehicle", "exp": now_ms() / 1000 - 10}));
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "bus-2", "fleet": "f", "role": "vehicle", "exp": now_ms() / 1000 + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"someone else's secret"),
    )
    .unwrap();
    let cases = [
        ("GET /?lat=37.5&lon=127.0 HTTP/1.1".to_owned(), 401, "unauthenticated"),
        // Without a valid token nothing about the values is told.
        ("GET /?id=garbage&lat=999&lon=x HTTP/1.1".to_owned(), 401, "invalid_token"),
        ("GET /?id=&lat=37.5&lon=127.0 HTTP/1.1".to_owned(), 401, "unauthenticated"),
        ("GET /?id=357207059646786&lat=37.5&lon=127.0 HTTP/1.1".to_owned(), 401, "invalid_token"),
        (format!("GET /?id={forged}&lat=37.5&lon=127.0 HTTP/1.1"), 401, "invalid_token"),
        (format!("GET /?id={expired}&lat=37.5&lon=127.0 HTTP/1.1"), 401, "token_expired"),
        (format!("GET /?id={}&lat=37.5&lon=127.0 HTTP/1.1", token_for("f", "viewer", "bus-2")), 403, "forbidden"),
        (format!("GET /?id={}&lat=37.5&lon=127.0 HTTP/1.1", token_for("f", "dispatcher", "bus-2")), 403, "forbidden"),
    ];
    for (head, status, code) in &cases {
        let (got, body) = send(o.addr, head, "");
        assert_eq!((got, body["error"]["code"].as_str()), (*status, Some(*code)), "{head}");
    }
    let (status, body) = send(
        o.addr,
        "POST / HTTP/1.1\r\nContent-Type: application/json",
        &json!({"location": {"coords": {"latitude": 37.5, "longitude": 127.0}}, "device_id": "48241179"}).to_string(),
    );
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_token")));
    assert_eq!(stored(&o.server, "f", "bus-2"), None);
    assert_eq!(o.server.metric("fleetgate_device_auth_failures_total{source=\"osmand\"}"), (cases.len() + 1) as f64);
    assert_eq!(o.server.metric("fleetgate_device_auth_failures_total{source=\"mqtt\"}"), 0.0, "registered at zero");
}

#[test]
fn out_of_range_and_garbled_values_name_their_field() {
    let o = start(&[]);
    let t = vehicle_token("f", "bus-3");
    let future = now_ms() / 1000 + 3600;
    let cases = [
        ("lat=91&lon=0.5".to_owned(), "lat"),
        ("lat=37.5&lon=-180.5".to_owned(), "lon"),
        ("lat=0&lon=0".to_owned(), "lat/lon"),
        ("lat=abc&lon=127".to_owned(), "lat"),
        ("lon=127".to_owned(), "lat"),
        ("lat=37.5&lon=127&bearing=360".to_owned(), "bearing"),
        ("lat=37.5&lon=127&speed=fast".to_owned(), "speed"),
        (format!("lat=37.5&lon=127&timestamp={future}"), "ts"),
        ("lat=37.5&lon=127&timestamp=86400".to_owned(), "ts"),
        ("lat=37.5&lon=127&timestamp=tomorrow".to_owned(), "timestamp"),
    ];
    for (q, field) in &cases {
        let (status, body) = send(o.addr, &format!("GET /?id={t}&{q} HTTP/1.1"), "");
        assert_eq!(status, 400, "{q}: {body}");
        assert_eq!(body["error"]["code"], "invalid_payload");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{q}: {message}");
    }
    let json_cases = [
        (
            json!({"location": {"coords": {"latitude": "37.5", "longitude": 127.0}}, "device_id": t}),
            "location.coords.latitude",
        ),
        (
            json!({"location": {"coords": {"latitude": 37.5, "longitude": 127.0}, "timestamp": "noon"}, "device_id": t}),
            "location.timestamp",
        ),
        (
            json!({"location": {"coords": {"latitude": 37.5, "longitude": 200.0}}, "device_id": t}),
            "location.coords.longitude",
        ),
        (json!({"device_id": t}), "location"),
    ];
    for (body, field) in &json_cases {
        let (status, reply) = send(o.addr, "POST / HTTP/1.1\r\nContent-Type: application/json", &body.to_string());
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(reply["error"]["message"].as_str().unwrap().starts_with(field), "{reply}");
    }
    assert_eq!(send(o.addr, "POST / HTTP/1.1\r\nContent-Type: application/json", "{\"location\":").0, 400);
    assert_eq!(stored(&o.server, "f", "bus-3"), None, "nothing refused is stored");
}

#[test]
fn the_per_vehicle_rate_limit_holds_and_the_token_is_never_logged() {
    let dir = std::env::temp_dir().join(format!("fleetgate-osmand-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("stderr.log");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = Server::start_logged(
        &[
            ("FLEETGATE_OSMAND_ADDR", addr.to_string()),
            ("FLEETGATE_RATE_VEHICLE_PER_SEC", "1".into()),
            ("FLEETGATE_LOG", "trace".into()),
        ],
        &log,
    );
    let t = vehicle_token("f", "bus-4");
    let base = now_ms() - 100_000;
    let mut statuses = Vec::new();
    for i in 0..15 {
        statuses.push(send(addr, &format!("GET /?id={t}&lat=37.5&lon=127&timestamp={} HTTP/1.1", base + i), "").0);
    }
    assert!(statuses.contains(&429), "over the per-vehicle rate: {statuses:?}");
    assert_eq!(statuses[0], 200);
    // A bad token too, so the refusal path has logged as well.
    send(addr, "GET /?id=not-a-token-but-secret&lat=37.5&lon=127 HTTP/1.1", "");
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("osmand"), "the log was captured at trace level");
    let signature = t.rsplit('.').next().unwrap();
    assert!(!text.contains(signature) && !text.contains("not-a-token-but-secret"), "a device token reached the log");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_device_position_reaches_a_viewer_on_another_replica() {
    let redis = Redis::start();
    let osmand: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let a = Server::start(&[("FLEETGATE_REDIS_URL", redis.url()), ("FLEETGATE_OSMAND_ADDR", osmand.to_string())]);
    let b = Server::start(&[("FLEETGATE_REDIS_URL", redis.url())]);
    let mut viewer = Client::connect(&b, json!({"token": token_for("f", "viewer", "v")})).await.unwrap();
    viewer.call("subscribe", json!({})).await;
    let t = vehicle_token("f", "bus-5");
    let head = format!("POST /?id={t}&lat=37.55&lon=126.99&speed=20&bearing=45.5 HTTP/1.1");
    let (status, _) = tokio::task::spawn_blocking(move || send(osmand, &head, "")).await.unwrap();
    assert_eq!(status, 200);
    let got = viewer.next("locationupdate", Duration::from_secs(5)).await.expect("delivered across replicas");
    assert_eq!((got["fleet"].as_str(), got["vehicleId"].as_str()), (Some("f"), Some("bus-5")));
    assert!(close(&got["speed"], 20.0 * KNOT), "{got}");
    assert_eq!(got["heading"], 45.5);
    assert!(viewer.collect("locationupdate", Duration::from_millis(400)).await.is_empty(), "exactly once");
    drop(a);
}

const OPEN: &str = "fleetgate_listener_connections{listener=\"osmand\"}";
const CAP_REACHED: &str = "fleetgate_listener_cap_reached_total{listener=\"osmand\"}";
const IDLE_TIMEOUTS: &str = "fleetgate_listener_idle_timeouts_total{listener=\"osmand\"}";

/// Polls `series` until it reads `want`, for up to five seconds.
fn metric_reaches(server: &Server, series: &str, want: f64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if server.metric(series) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Reads until the server closes `s` (an end of stream or a reset), for up
/// to `limit`: how long that took and what was read meanwhile; `None` if
/// it was still open.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while start.elapsed() < limit {
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some((start.elapsed(), got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return Some((start.elapsed(), got));
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    None
}

/// Reads one response off a kept-alive connection: its status and body.
fn read_response(s: &mut TcpStream) -> (u16, Value) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the response ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .expect("content-length");
        if body.len() >= length {
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            return (status, serde_json::from_str(&body[..length]).unwrap_or(Value::Null));
        }
    }
}

#[test]
fn past_the_connection_cap_a_phone_waits_for_a_connection_to_close() {
    let o = start(&[("FLEETGATE_OSMAND_MAX_CONNECTIONS", "3".into())]);
    assert_eq!(o.server.metric(OPEN), 0.0, "registered at zero");
    let mut idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(o.addr).unwrap()).collect();
    assert!(metric_reaches(&o.server, OPEN, 3.0), "three idle connections open: {}", o.server.metric(OPEN));

    // The fourth connects (the kernel queues it) but is not served.
    let t = vehicle_token("f", "bus-6");
    let mut fourth = TcpStream::connect(o.addr).unwrap();
    let request = format!("GET /?id={t}&lat=37.5&lon=127 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", o.addr);
    fourth.write_all(request.as_bytes()).unwrap();
    fourth.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
    let mut byte = [0u8; 1];
    let waiting = fourth.read(&mut byte).map_err(|e| e.kind());
    assert!(matches!(waiting, Err(ErrorKind::WouldBlock | ErrorKind::TimedOut)), "answered at the cap: {waiting:?}");
    assert_eq!(o.server.metric(OPEN), 3.0);
    assert!(o.server.metric(CAP_REACHED) >= 1.0, "reaching the cap is counted");
    assert_eq!(stored(&o.server, "f", "bus-6"), None);

    // One idle connection goes away: the waiting request is taken and answered.
    drop(idle.remove(0));
    fourth.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    fourth.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(stored(&o.server, "f", "bus-6").is_some());
    drop(fourth);
    assert!(metric_reaches(&o.server, OPEN, 2.0), "closed connections give their place back");
    drop(idle);
    assert!(metric_reaches(&o.server, OPEN, 0.0));
}

#[test]
fn silent_slow_and_idle_connections_are_closed_after_the_idle_timeout() {
    let o = start(&[("FLEETGATE_OSMAND_IDLE_TIMEOUT_SECS", "1".into())]);
    let t = vehicle_token("f", "bus-7");
    let limit = Duration::from_secs(5);

    // A peer that connects and sends nothing.
    let mut silent = TcpStream::connect(o.addr).unwrap();
    let (after, got) = closed_within(&mut silent, limit).expect("a silent connection is closed");
    assert!(after >= Duration::from_millis(900), "closed after the timeout, not at once: {after:?}");
    assert!(got.is_empty(), "closed without an answer: {}", String::from_utf8_lossy(&got));

    // One that drips its request head, a byte at a time.
    let mut drip = TcpStream::connect(o.addr).unwrap();
    let start = Instant::now();
    let mut closed = false;
    for byte in format!("GET /?id={t}&lat=37.5&lon=127&x=").bytes().chain(std::iter::repeat(b'0')) {
        if drip.write_all(&[byte]).is_err() || closed_within(&mut drip, Duration::from_millis(150)).is_some() {
            closed = true;
            break;
        }
        if start.elapsed() > limit {
            break;
        }
    }
    assert!(closed, "a dripped head keeps its connection for no longer than the timeout");
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());

    // A phone's kept-alive connection: answered, closed once idle, and the
    // next report, on a new connection, is taken.
    let mut phone = TcpStream::connect(o.addr).unwrap();
    let report = |ts: i64| format!("GET /?id={t}&lat=37.5&lon=127&timestamp={ts} HTTP/1.1\r\nHost: {}\r\n\r\n", o.addr);
    phone.write_all(report(now_ms() - 2000).as_bytes()).unwrap();
    assert_eq!(read_response(&mut phone).0, 200);
    let (after, got) = closed_within(&mut phone, limit).expect("an idle kept-alive connection is closed");
    assert!(after >= Duration::from_millis(800) && got.is_empty(), "{after:?} {}", String::from_utf8_lossy(&got));
    let mut phone = TcpStream::connect(o.addr).unwrap();
    phone.write_all(report(now_ms() - 1000).as_bytes()).unwrap();
    assert_eq!(read_response(&mut phone), (200, json!({"ok": true, "data": {"accepted": true}})));
    drop(phone);

    // A body that does not arrive: answered 400 and closed.
    let mut slow = TcpStream::connect(o.addr).unwrap();
    let head =
        format!("POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n", o.addr);
    slow.write_all(head.as_bytes()).unwrap();
    slow.write_all(format!("{{\"device_id\":\"{t}\",").as_bytes()).unwrap();
    let (status, body) = read_response(&mut slow);
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_payload")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("body"), "{body}");
    assert!(closed_within(&mut slow, limit).is_some(), "closed after the answer");

    assert!(metric_reaches(&o.server, IDLE_TIMEOUTS, 4.0), "each counted once: {}", o.server.metric(IDLE_TIMEOUTS));
    assert!(metric_reaches(&o.server, OPEN, 0.0));
}
