//! The NATS JetStream output (contract section 12) against a private
//! `nats-server -js` started by the test (never the host's own): every
//! event published to `fleetgate.<fleet>.<type>` with `Nats-Msg-Id` = its
//! id, in order, from the embedded node and from two replicas on one
//! Redis; NATS stopped and started again loses nothing, and JetStream's
//! deduplication keeps each event once.

mod support;

use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    Redis, Server, SharedRedis,
    api::{post_chat, put_location},
    free_port, now_ms,
};

const FLEET: &str = "nats-fleet";
const WAIT: Duration = Duration::from_secs(30);

/// A private JetStream server with its store in a temporary directory
/// (kept across restarts), killed on drop.
struct Nats {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl Nats {
    fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("fleetgate-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("nats store directory");
        let mut nats = Self { port, dir, child: None };
        nats.spawn();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let bin = if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (the test script installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One message of the stream: subject, `Nats-Msg-Id`, payload.
#[derive(Debug)]
struct Published {
    subject: String,
    msg_id: String,
    body: Value,
}

/// Waits until the stream `FLEETGATE` holds `n` messages, then reads them all.
async fn published(nats: &Nats, n: u64) -> Vec<Published> {
    let client = async_nats::connect(nats.url()).await.expect("test client connects");
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + WAIT;
    let stream = loop {
        if let Ok(stream) = js.get_stream("FLEETGATE").await
            && stream.get_info().await.is_ok_and(|i| i.state.messages >= n)
        {
            break stream;
        }
        assert!(Instant::now() < deadline, "the stream did not reach {n} messages");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let info = stream.get_info().await.expect("stream info");
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await.expect("message");
        let msg_id = m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()).unwrap_or_default();
        out.push(Published {
            subject: m.subject.to_string(),
            msg_id,
            body: serde_json::from_slice(&m.payload).unwrap_or(Value::Null),
        });
    }
    out
}

/// Each message is an event of the fleet on its subject, with its id as
/// `Nats-Msg-Id`, ids increasing; the stream holds exactly `n`.
fn check(messages: &[Published], n: usize) {
    assert_eq!(messages.len(), n, "{messages:#?}");
    for m in messages {
        let id = m.body["id"].as_str().unwrap_or_default();
        assert_eq!(m.msg_id, id, "Nats-Msg-Id");
        assert_eq!(m.subject, format!("fleetgate.{FLEET}.{}", m.body["type"].as_str().unwrap_or_default()));
        assert_eq!(m.body["fleet"], FLEET);
    }
    let order = |m: &Published| {
        let id = m.msg_id.rsplit('/').next().unwrap_or_default().to_owned();
        let (ms, seq) = id.split_once('-').unwrap_or(("0", "0"));
        (ms.parse::<u64>().unwrap_or(0), seq.parse::<u64>().unwrap_or(0))
    };
    for pair in messages.windows(2) {
        assert!(order(&pair[0]) < order(&pair[1]), "out of order: {} then {}", pair[0].msg_id, pair[1].msg_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_published_once_and_a_nats_restart_loses_nothing() {
    let mut nats = Nats::start();
    let server = Server::start(&[("FLEETGATE_NATS_URL", nats.url())]);
    let ts = now_ms();
    for i in 0..8 {
        put_location(&server, FLEET, &format!("bus-{}", i % 2), ts + i);
    }
    post_chat(&server, FLEET, "first");
    let first = published(&nats, 9).await;
    check(&first, 9);
    assert_eq!(first[0].body["type"], "position");
    assert_eq!(first[0].body["data"]["vehicleId"], "bus-0");
    assert_eq!(first[8].body["data"]["text"], "first");

    // NATS goes away: the events wait in the fleet's stream.
    nats.stop();
    for i in 8..14 {
        put_location(&server, FLEET, "bus-1", ts + i);
    }
    post_chat(&server, FLEET, "while down");
    nats.spawn();
    let all = published(&nats, 16).await;
    check(&all, 16);
    assert_eq!(all[15].body["data"]["text"], "while down");
    // Nothing more comes (no event published twice reaches the stream).
    post_chat(&server, FLEET, "last");
    check(&published(&nats, 17).await, 17);
    assert_eq!(server.metric(r#"fleetgate_output_events_total{output="nats",type="chat",outcome="delivered"}"#), 3.0);
    assert_eq!(server.metric(r#"fleetgate_output_leases{output="nats"}"#), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_publish_each_event_once() {
    let nats = Nats::start();
    let redis = Redis::start();
    let mut env = redis.envs();
    env.push(("FLEETGATE_NATS_URL", nats.url()));
    env.push(("FLEETGATE_OUTPUT_LEASE_SECS", "2".into()));
    let (a, b) = (Server::start(&env), Server::start(&env));
    let ts = now_ms();
    for i in 0..10 {
        put_location(if i % 2 == 0 { &a } else { &b }, FLEET, "bus-1", ts + i);
    }
    post_chat(&b, FLEET, "done");
    check(&published(&nats, 11).await, 11);
    let leases = |s: &Server| s.metric(r#"fleetgate_output_leases{output="nats"}"#);
    assert_eq!(leases(&a) + leases(&b), 1.0, "one replica publishes the fleet");
}
