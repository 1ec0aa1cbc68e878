//! MQTT ingest (contract section 13) against a real mosquitto started here
//! and real fleetgate processes: a shared subscription splits the stream
//! between replicas and nothing is taken twice, a replica killed mid-stream
//! loses no QoS 1 message, malformed payloads are refused on the ack topic
//! and never stored, and a broker restart is survived.

mod support;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use support::{Certs, Mosquitto, Redis, Server, http_request_as, now_ms, token_for};
use tokio::sync::{mpsc, watch};

const WAIT: Duration = Duration::from_secs(30);

fn replica(broker: &Mosquitto, redis: Option<&Redis>, client_id: &str, extra: &[(&str, String)]) -> Server {
    let mut env = vec![("FLEETGATE_MQTT_URL", broker.url()), ("FLEETGATE_MQTT_CLIENT_ID", client_id.to_owned())];
    if let Some(redis) = redis {
        env.push(("FLEETGATE_REDIS_URL", redis.url()));
    }
    env.extend(extra.iter().cloned());
    let server = Server::start(&env);
    wait_subscribed(&server);
    server
}

fn wait_subscribed(server: &Server) {
    let deadline = Instant::now() + WAIT;
    while server.metric("fleetgate_mqtt_subscribed") != 1.0 {
        assert!(Instant::now() < deadline, "fleetgate did not subscribe to the broker");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A device-side client: publishes positions, reads `fleetgate/+/+/ack`.
struct Device {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<(String, Value)>,
    /// How many times its ack subscription was granted (once per connect).
    subscribed: watch::Receiver<u32>,
}

impl Device {
    async fn connect(broker: &Mosquitto, id: &str) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
        options.set_keep_alive(Duration::from_secs(5)).set_inflight(100);
        let (client, mut events) = AsyncClient::new(options, 10_000);
        let (tx, acks) = mpsc::unbounded_channel();
        let (granted, subscribed) = watch::channel(0u32);
        let resubscribe = client.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = resubscribe.try_subscribe("fleetgate/+/+/ack", QoS::AtMostOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => granted.send_modify(|n| *n += 1),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let body = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if tx.send((p.topic.clone(), body)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let mut device = Self { client, acks, subscribed };
        device.wait_subscribed(1).await;
        device
    }

    async fn wait_subscribed(&mut self, times: u32) {
        tokio::time::timeout(WAIT, self.subscribed.wait_for(|n| *n >= times))
            .await
            .expect("the device's ack subscription")
            .unwrap();
    }

    async fn publish(&self, fleet: &str, vehicle: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(format!("fleetgate/{fleet}/{vehicle}/position"), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    async fn next_ack(&mut self, within: Duration) -> Option<(String, Value)> {
        tokio::time::timeout(within, self.acks.recv()).await.ok().flatten()
    }

    /// Every ack until `n` have come, and then any more within a short while.
    async fn acks(&mut self, n: usize) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next_ack(WAIT).await {
                Some(a) => out.push(a),
                None => panic!("{} of {n} acks came", out.len()),
            }
        }
        while let Some(a) = self.next_ack(Duration::from_millis(500)).await {
            out.push(a);
        }
        out
    }
}

fn position(lat: f64, ts: i64) -> Vec<u8> {
    json!({"lat": lat, "lon": 127.0, "ts": ts, "speed": 3.0}).to_string().into_bytes()
}

/// The fleet's stored positions by vehicle, as the HTTP API shows them.
fn fleet(server: &Server, fleet: &str) -> HashMap<String, Value> {
    try_fleet(server, fleet).expect("GET the fleet's vehicles")
}

/// [`fleet`], `None` while the server cannot answer.
fn try_fleet(server: &Server, fleet: &str) -> Option<HashMap<String, Value>> {
    let viewer = token_for(fleet, "viewer", "map");
    let (status, body) =
        http_request_as(server.addr, "GET", &format!("/api/v1/fleets/{fleet}/vehicles"), None, Some(&viewer))?;
    if status != 200 {
        return None;
    }
    let body: Value = serde_json::from_str(&body).unwrap();
    let features = body["data"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["id"].as_str().unwrap().to_owned(), f["properties"].clone()))
        .collect();
    Some(features)
}

fn outcomes(server: &Server) -> f64 {
    ["accepted", "stale", "invalid", "forbidden", "rate_limited", "unavailable", "error"]
        .iter()
        .map(|o| server.metric(&format!("fleetgate_position_updates_total{{source=\"mqtt\",outcome=\"{o}\"}}")))
        .sum()
}

#[tokio::test]
async fn two_replicas_share_the_stream_and_nothing_is_taken_twice() {
    let (broker, redis) = (Mosquitto::start(), Redis::start());
    let a = replica(&broker, Some(&redis), "replica-a", &[]);
    let b = replica(&broker, Some(&redis), "replica-b", &[]);
    let mut device = Device::connect(&broker, "devices-1").await;
    let (vehicles, per_vehicle) = (20, 10);
    let base = now_ms() - 60_000;
    for k in 0..per_vehicle {
        for v in 0..vehicles {
            device.publish("f", &format!("bus-{v}"), position(37.0 + k as f64 / 100.0, base + k)).await;
        }
    }
    let n = vehicles * per_vehicle;
    let acks = device.acks(n as usize).await;
    assert_eq!(acks.len(), n as usize, "one outcome per message");
    for (topic, ack) in &acks {
        assert!(topic.starts_with("fleetgate/f/bus-") && topic.ends_with("/ack"), "{topic}");
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let (on_a, on_b) = (outcomes(&a), outcomes(&b));
    assert_eq!(on_a + on_b, n as f64, "every message taken exactly once (a: {on_a}, b: {on_b})");
    assert!(on_a > 0.0 && on_b > 0.0, "each replica takes a share (a: {on_a}, b: {on_b})");
    // Messages of one vehicle may land on both replicas; the compare-and-set keeps the newest.
    let stored = fleet(&b, "f");
    assert_eq!(stored.len(), vehicles as usize);
    for (vehicle, p) in &stored {
        assert_eq!(p["ts"], base + per_vehicle - 1, "{vehicle}");
        assert_eq!(p["speed"], 3.0);
    }
}

#[tokio::test]
async fn a_replica_killed_mid_stream_loses_no_message() {
    let (broker, redis) = (Mosquitto::start(), Redis::start());
    let mut a = Some(replica(&broker, Some(&redis), "replica-a", &[]));
    let b = replica(&broker, Some(&redis), "replica-b", &[]);
    let mut device = Device::connect(&broker, "devices-2").await;
    let (first, n) = (100, 400);
    let ts = now_ms() - 60_000;
    let client = device.client.clone();
    let publish = |range: std::ops::Range<usize>| {
        let client = client.clone();
        async move {
            for i in range {
                let topic = format!("fleetgate/f/car-{i}/position");
                client.publish(topic, QoS::AtLeastOnce, false, position(37.5, ts)).await.unwrap();
            }
        }
    };
    publish(0..first).await;
    for _ in 0..first {
        device.next_ack(WAIT).await.expect("outcomes while streaming");
    }
    // Writes held up: what the replicas take now is in their hands, not
    // stored, when one of them is killed.
    let paused = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "client", "pause", "3000", "write"])
        .output()
        .unwrap();
    assert!(paused.status.success());
    let taken = a.as_ref().unwrap().metric("fleetgate_mqtt_messages_total");
    publish(first..n).await;
    let deadline = Instant::now() + WAIT;
    while a.as_ref().unwrap().metric("fleetgate_mqtt_messages_total") < taken + 10.0 {
        assert!(Instant::now() < deadline, "replica a took nothing more");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = a.take().unwrap();
    unsafe { libc::kill(killed.pid() as i32, libc::SIGKILL) };
    drop(killed);
    // It comes back under the same client id and takes what its session holds.
    let _a = replica(&broker, Some(&redis), "replica-a", &[]);
    let deadline = Instant::now() + WAIT;
    loop {
        let stored = try_fleet(&b, "f").map_or(0, |s| s.len());
        if stored == n {
            break;
        }
        assert!(Instant::now() < deadline, "{stored} of {n} messages stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn malformed_payloads_are_refused_on_the_ack_topic_and_never_stored() {
    let broker = Mosquitto::start();
    let server = replica(&broker, None, "replica-m", &[("FLEETGATE_MQTT_FLEETS", "f,ops".into())]);
    let mut device = Device::connect(&broker, "devices-3").await;
    let ts = now_ms() - 1000;
    let refused: [(&[u8], &str, &str); 6] = [
        (b"not json", "invalid_payload", "payload"),
        (b"[37.5, 127.0]", "invalid_payload", "payload"),
        (br#"{"lat": 91, "lon": 127}"#, "invalid_payload", "lat"),
        (br#"{"lat": "37.5", "lon": 127}"#, "invalid_payload", "lat"),
        (br#"{"lat": 37.5, "lon": 127, "heading": 400}"#, "invalid_payload", "heading"),
        (br#"{"vehicleId": "bus-other", "lat": 37.5, "lon": 127}"#, "forbidden", ""),
    ];
    for (payload, _, _) in &refused {
        device.publish("f", "bus-m", payload.to_vec()).await;
    }
    for (payload, code, field) in &refused {
        let (topic, ack) = device.next_ack(WAIT).await.expect("a refusal");
        assert_eq!(topic, "fleetgate/f/bus-m/ack");
        assert_eq!(ack["ok"], false, "{}: {ack}", String::from_utf8_lossy(payload));
        assert_eq!(ack["error"]["code"], *code, "{}: {ack}", String::from_utf8_lossy(payload));
        assert!(ack["error"]["message"].as_str().unwrap().starts_with(field), "{ack}");
    }
    // A fleet this deployment does not take: nobody answers, nothing is stored.
    device.publish("g", "bus-m", position(37.5, ts)).await;
    // The bus-app form, and a 5.1 object, are taken.
    device
        .publish(
            "f",
            "bus-app",
            br#"{"busId": "bus-app", "location": {"latitude": "37.51", "longitude": "127.01"}}"#.to_vec(),
        )
        .await;
    let (topic, ack) = device.next_ack(WAIT).await.unwrap();
    assert_eq!((topic.as_str(), &ack), ("fleetgate/f/bus-app/ack", &json!({"ok": true, "data": {"accepted": true}})));
    device.publish("f", "bus-ok", position(37.52, ts)).await;
    let (topic, _) = device.next_ack(WAIT).await.unwrap();
    assert_eq!(topic, "fleetgate/f/bus-ok/ack", "the other fleet's message got no outcome");
    let stored = fleet(&server, "f");
    assert_eq!(stored.keys().cloned().collect::<HashSet<_>>(), HashSet::from(["bus-app".into(), "bus-ok".into()]));
    assert!(fleet(&server, "g").is_empty());
    assert_eq!(server.metric("fleetgate_position_updates_total{source=\"mqtt\",outcome=\"invalid\"}"), 5.0);
    assert_eq!(server.metric("fleetgate_position_updates_total{source=\"mqtt\",outcome=\"forbidden\"}"), 1.0);
}

#[tokio::test]
async fn a_broker_restart_is_survived() {
    let mut broker = Mosquitto::start();
    let server = replica(&broker, None, "replica-r", &[]);
    let mut device = Device::connect(&broker, "devices-4").await;
    let ts = now_ms() - 10_000;
    device.publish("f", "bus-r", position(37.5, ts)).await;
    assert_eq!(device.next_ack(WAIT).await.unwrap().1["data"]["accepted"], true);

    broker.restart();
    let deadline = Instant::now() + WAIT;
    while server.metric("fleetgate_mqtt_connection_errors_total") < 1.0 {
        assert!(Instant::now() < deadline, "the lost connection was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_subscribed(&server);
    device.wait_subscribed(2).await;
    device.publish("f", "bus-r", position(37.6, ts + 1)).await;
    let (_, ack) = device.next_ack(WAIT).await.expect("an outcome after the restart");
    assert_eq!(ack["data"]["accepted"], true, "{ack}");
    assert_eq!(fleet(&server, "f")["bus-r"]["ts"], ts + 1);
}

/// The suite's test certificates (`support::Certs`: a CA, a server
/// certificate for localhost signed by it, and a CA that signed nothing),
/// under the names the broker's configuration below uses.
fn certificates(dir: &std::path::Path) {
    let certs = Certs::generate();
    for (from, to) in [
        ("ca.crt", "ca.pem"),
        ("server.crt", "server.pem"),
        ("server.key", "server.key"),
        ("other-ca.crt", "other-ca.pem"),
    ] {
        std::fs::copy(certs.path(from), dir.join(to)).expect("copy a test certificate");
    }
}

const BROKER_PASSWORD: &str = "br0ker:p@ss";

#[tokio::test]
async fn tls_and_a_password_reach_a_broker_that_requires_them() {
    let broker = Mosquitto::start_with(|dir| {
        certificates(dir);
        let passwd = dir.join("passwd");
        for (user, password) in [("fleetgate", BROKER_PASSWORD), ("tracker", "tracker-pass")] {
            let create: &[&str] = if passwd.exists() { &[] } else { &["-c"] };
            let ok = std::process::Command::new("mosquitto_passwd")
                .args(create)
                .arg("-b")
                .arg(&passwd)
                .args([user, password])
                .status()
                .expect("mosquitto_passwd (package mosquitto)");
            assert!(ok.success());
        }
        // mosquitto started as root drops to its own user: it must be able to read them.
        for entry in std::fs::read_dir(dir).unwrap() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(entry.unwrap().path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let d = dir.display();
        format!(
            "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nallow_anonymous false\npassword_file {d}/passwd\n"
        )
    });
    let dir = broker.dir().to_owned();
    let url = format!(
        "mqtts://fleetgate:{}@localhost:{}",
        BROKER_PASSWORD.replace(':', "%3A").replace('@', "%40"),
        broker.port
    );
    let log = dir.join("fleetgate.log");
    let env = [
        ("FLEETGATE_MQTT_URL", url.clone()),
        ("FLEETGATE_MQTT_CLIENT_ID", "replica-tls".into()),
        ("FLEETGATE_MQTT_TLS_CA_FILE", dir.join("ca.pem").display().to_string()),
        ("FLEETGATE_LOG", "debug".into()),
    ];
    let server = Server::start_logged(&env, &log);
    wait_subscribed(&server);

    // A tracker over the same TLS listener, with its own user.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut options = MqttOptions::new("tracker-1", "localhost", broker.port);
    options.set_credentials("tracker", "tracker-pass").set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)),
    ));
    let (client, mut events) = AsyncClient::new(options, 10);
    client.subscribe("fleetgate/f/bus-tls/ack", QoS::AtMostOnce).await.unwrap();
    client
        .publish("fleetgate/f/bus-tls/position", QoS::AtLeastOnce, false, position(37.5, now_ms() - 1000))
        .await
        .unwrap();
    let ack = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => break serde_json::from_slice::<Value>(&p.payload).unwrap(),
                Ok(_) => {}
                Err(e) => panic!("tracker: {e}"),
            }
        }
    })
    .await
    .expect("an outcome over TLS");
    assert_eq!(ack, json!({"ok": true, "data": {"accepted": true}}));
    assert!(fleet(&server, "f").contains_key("bus-tls"));
    drop(server);

    // A broker certificate the configured CA did not sign: never connected, and said so.
    let env = [
        ("FLEETGATE_MQTT_URL", url),
        ("FLEETGATE_MQTT_CLIENT_ID", "replica-tls-2".into()),
        ("FLEETGATE_MQTT_TLS_CA_FILE", dir.join("other-ca.pem").display().to_string()),
        ("FLEETGATE_LOG", "debug".into()),
    ];
    let log2 = dir.join("fleetgate-2.log");
    let server = Server::start_logged(&env, &log2);
    let deadline = Instant::now() + WAIT;
    while server.metric("fleetgate_mqtt_connection_errors_total") < 1.0 {
        assert!(Instant::now() < deadline, "an unverified broker was not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.metric("fleetgate_mqtt_subscribed"), 0.0);
    drop(server);
    for log in [&log, &log2] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(text.contains("mqtt"), "the log was captured");
        assert!(
            !text.contains(BROKER_PASSWORD) && !text.contains("br0ker%3Ap%40ss"),
            "the broker password reached the log"
        );
    }
    let text = std::fs::read_to_string(&log2).unwrap();
    assert!(text.to_lowercase().contains("certificate"), "the refusal names the certificate: {text}");
}
