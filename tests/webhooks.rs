//! Webhooks (contract section 12) against a real receiver started by the
//! test: signed POSTs of every event in order, through the receiver's
//! errors; the type filter; events from the registration on only; a
//! webhook behind the stream's cap resuming at the oldest kept event and
//! counting what it skipped; two replicas on one Redis, the one holding
//! the lease stopped or killed and the other taking over with nothing
//! lost; replicas on one Redis and on a Redis Cluster delivering each
//! event once; the registration API (no secret ever shown, bad input named
//! by field, roles and tenants) and the address guard; the demo; an event
//! given up on after the retry period.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use support::{
    Redis, Server, SharedRedis,
    api::{http_json, post_chat, put_location},
    now_ms, token_for,
};

const FLEET: &str = "hooks";
const SECRET: &str = "whsec-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(30);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    id: String,
    header_id: String,
    kind: String,
    signature: String,
    body: String,
    /// What the receiver answered.
    status: u16,
}

#[derive(Default)]
struct Behaviour {
    hits: Mutex<Vec<Hit>>,
    /// Answer 503 to this many more requests.
    fail_next: AtomicUsize,
    /// Answer 503 while set.
    failing: AtomicBool,
}

/// A webhook receiver on a free local port.
struct Receiver {
    addr: SocketAddr,
    state: Arc<Behaviour>,
}

impl Receiver {
    async fn start() -> Self {
        let state = Arc::new(Behaviour::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/hook", post(receive)).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// The events answered 2xx, in the order they came.
    fn delivered(&self) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.status == 200).collect()
    }

    /// Waits until `done` holds for the delivered events.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = Instant::now() + WAIT;
        loop {
            let delivered = self.delivered();
            if done(&delivered) {
                return delivered;
            }
            assert!(Instant::now() < deadline, "{what}: got {} deliveries: {:?}", delivered.len(), ids(&delivered));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(State(state): State<Arc<Behaviour>>, headers: HeaderMap, body: String) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let fail = state.failing.load(Ordering::SeqCst)
        || state.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let status = if fail { 503 } else { 200 };
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    state.hits.lock().unwrap().push(Hit {
        id: parsed["id"].as_str().unwrap_or_default().to_owned(),
        header_id: header("x-fleetgate-event-id"),
        kind: parsed["type"].as_str().unwrap_or_default().to_owned(),
        signature: header("x-fleetgate-signature"),
        body,
        status,
    });
    StatusCode::from_u16(status).unwrap()
}

fn ids(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

/// The stream id of an event id `<fleet>/<ms>-<seq>`, for ordering.
fn order(id: &str) -> (u64, u64) {
    let (_, sid) = id.split_once('/').expect("fleet/stream id");
    let (ms, seq) = sid.split_once('-').expect("ms-seq");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

fn check_signature(hit: &Hit) {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(hit.body.as_bytes());
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(hit.signature, expected, "signature of {}", hit.id);
    assert_eq!(hit.header_id, hit.id, "X-Fleetgate-Event-Id");
}

fn dispatcher() -> String {
    token_for(FLEET, "dispatcher", "ops")
}

fn register(server: &Server, id: &str, body: &Value) -> (u16, Value) {
    http_json(server.addr, "PUT", &format!("/api/v1/fleets/{FLEET}/webhooks/{id}"), Some(body), &dispatcher())
}

fn hook(url: &str) -> Value {
    json!({ "url": url, "secret": SECRET })
}

/// Every delivered event in order, each signed, each id once in `expected`
/// order: the first delivery of each id must come in stream order.
fn check_complete_in_order(delivered: &[Hit], expected: usize) {
    let mut firsts: Vec<&Hit> = Vec::new();
    for hit in delivered {
        check_signature(hit);
        if !firsts.iter().any(|h| h.id == hit.id) {
            firsts.push(hit);
        }
    }
    assert_eq!(firsts.len(), expected, "distinct events delivered: {:?}", ids(delivered));
    for pair in firsts.windows(2) {
        assert!(order(&pair[0].id) < order(&pair[1].id), "out of order: {} then {}", pair[0].id, pair[1].id);
    }
}

fn private_env() -> Vec<(&'static str, String)> {
    vec![("FLEETGATE_WEBHOOK_ALLOW_PRIVATE", "true".into()), ("FLEETGATE_OUTPUT_LEASE_SECS", "2".into())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_delivers_every_event_signed_and_in_order_through_receiver_errors() {
    let receiver = Receiver::start().await;
    let server = Server::start(&private_env());
    let (status, reply) = register(&server, "crm", &hook(&receiver.url()));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["data"], json!({ "id": "crm", "url": receiver.url(), "created": true }));
    // The first attempts fail: each is retried, and nothing overtakes it.
    receiver.state.fail_next.store(3, Ordering::SeqCst);
    let ts = now_ms();
    for i in 0..12 {
        put_location(&server, FLEET, &format!("bus-{}", i % 3), ts + i);
    }
    post_chat(&server, FLEET, "all done");
    let delivered = receiver.wait_for("13 events", |d| d.len() >= 13).await;
    check_complete_in_order(&delivered, 13);
    assert_eq!(delivered.len(), 13, "one delivery each on one replica");
    assert_eq!(delivered.last().map(|h| h.kind.as_str()), Some("chat"));
    let failed: Vec<Hit> = receiver.hits().into_iter().filter(|h| h.status != 200).collect();
    assert_eq!(failed.len(), 3);
    assert!(failed.iter().all(|h| h.id == delivered[0].id), "the first event is retried until taken");
    let body: Value = serde_json::from_str(&delivered[0].body).unwrap();
    assert_eq!(body["fleet"], FLEET);
    assert_eq!(body["type"], "position");
    assert_eq!(body["data"]["vehicleId"], "bus-0");
    assert_eq!(body["data"]["ts"], ts);
    let retried = server.metric(r#"fleetgate_output_events_total{output="webhook",type="position",outcome="retried"}"#);
    let ok = server.metric(r#"fleetgate_output_events_total{output="webhook",type="position",outcome="delivered"}"#);
    assert_eq!((retried, ok), (3.0, 12.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gets_the_types_it_asked_for_from_its_registration_on() {
    let (all, chats) = (Receiver::start().await, Receiver::start().await);
    let server = Server::start(&private_env());
    let ts = now_ms();
    // Before any webhook: never delivered.
    put_location(&server, FLEET, "early", ts);
    post_chat(&server, FLEET, "before");
    assert_eq!(register(&server, "all", &hook(&all.url())).0, 200);
    let typed = json!({ "url": chats.url(), "secret": SECRET, "types": ["chat"] });
    let (status, reply) = register(&server, "chats", &typed);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["data"]["types"], json!(["chat"]));
    for i in 1..=4 {
        put_location(&server, FLEET, "bus-1", ts + i);
        post_chat(&server, FLEET, &format!("m{i}"));
    }
    let got = all.wait_for("8 events", |d| d.len() >= 8).await;
    check_complete_in_order(&got, 8);
    assert_eq!(server.metric(r#"fleetgate_output_events_skipped_total{output="webhook"}"#), 0.0);
    let bodies: Vec<Value> = got.iter().map(|h| serde_json::from_str(&h.body).unwrap()).collect();
    assert!(bodies.iter().all(|b| b["data"]["vehicleId"] != "early" && b["data"]["text"] != "before"), "{bodies:?}");
    let got = chats.wait_for("4 chats", |d| d.len() >= 4).await;
    check_complete_in_order(&got, 4);
    assert!(got.iter().all(|h| h.kind == "chat"));
    let texts: Vec<Value> =
        got.iter().map(|h| serde_json::from_str::<Value>(&h.body).unwrap()["data"]["text"].clone()).collect();
    assert_eq!(texts, vec![json!("m1"), json!("m2"), json!("m3"), json!("m4")]);
    // Deleted: nothing more.
    let (status, _) =
        http_json(server.addr, "DELETE", &format!("/api/v1/fleets/{FLEET}/webhooks/chats"), None, &dispatcher());
    assert_eq!(status, 200);
    post_chat(&server, FLEET, "after");
    all.wait_for("the last chat", |d| d.len() >= 9).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(chats.delivered().len(), 4, "a deleted webhook gets nothing more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_behind_the_cap_resumes_at_the_oldest_kept_event_and_counts_the_skipped() {
    let receiver = Receiver::start().await;
    let mut env = private_env();
    env.push(("FLEETGATE_EVENTS_MAX", "5".into()));
    let server = Server::start(&env);
    assert_eq!(register(&server, "slow", &hook(&receiver.url())).0, 200);
    receiver.state.failing.store(true, Ordering::SeqCst);
    let ts = now_ms();
    put_location(&server, FLEET, "bus-1", ts);
    // The first event is being retried when the rest arrive.
    let deadline = Instant::now() + WAIT;
    while receiver.hits().is_empty() {
        assert!(Instant::now() < deadline, "no first attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 1..20 {
        put_location(&server, FLEET, "bus-1", ts + i);
    }
    receiver.state.failing.store(false, Ordering::SeqCst);
    let delivered = receiver.wait_for("the 5 kept events", |d| d.len() >= 5).await;
    check_complete_in_order(&delivered, 5);
    let last_ts: Vec<i64> = delivered
        .iter()
        .map(|h| serde_json::from_str::<Value>(&h.body).unwrap()["data"]["ts"].as_i64().unwrap())
        .collect();
    assert_eq!(last_ts, (15..20).map(|i| ts + i).collect::<Vec<_>>());
    assert_eq!(server.metric(r#"fleetgate_output_events_skipped_total{output="webhook"}"#), 15.0);
}

/// Two replicas on one Redis; the one delivering is stopped (`kill`: as if
/// it died, so its lease must lapse; else SIGTERM, which gives it up), and
/// the other takes over. Every event arrives; an event is delivered twice
/// only around the takeover.
async fn takeover(kill: bool) {
    let redis = Redis::start();
    let receiver = Receiver::start().await;
    let mut env = redis.envs();
    env.extend(private_env());
    let mut replicas = vec![Server::start(&env), Server::start(&env)];
    assert_eq!(register(&replicas[0], "crm", &hook(&receiver.url())).0, 200);
    let ts = now_ms();
    for i in 0..10 {
        put_location(&replicas[i % 2], FLEET, "bus-1", ts + i as i64);
    }
    receiver.wait_for("the first 10", |d| d.len() >= 10).await;
    let holding = |s: &Server| s.metric(r#"fleetgate_output_leases{output="webhook"}"#) == 1.0;
    let holder = replicas.iter().position(holding).expect("one replica holds the lease");
    assert!(!holding(&replicas[1 - holder]), "exactly one holder");
    // The receiver slows the holder down with errors, so the stop comes
    // while events are still to deliver.
    receiver.state.fail_next.store(2, Ordering::SeqCst);
    for i in 10..20 {
        put_location(&replicas[1 - holder], FLEET, "bus-1", ts + i);
    }
    let mut stopped = replicas.remove(holder);
    if kill {
        drop(stopped);
    } else {
        assert!(stopped.terminate().success());
    }
    let survivor = &replicas[0];
    for i in 20..30 {
        put_location(survivor, FLEET, "bus-1", ts + i);
    }
    let delivered = receiver
        .wait_for("all 30", |d| {
            let mut seen: Vec<&str> = d.iter().map(|h| h.id.as_str()).collect();
            seen.sort_unstable();
            seen.dedup();
            seen.len() >= 30
        })
        .await;
    check_complete_in_order(&delivered, 30);
    // Stream order, except once: the survivor starts again from the last
    // saved cursor, at or before what the stopped one delivered.
    let backwards = delivered.windows(2).filter(|w| order(&w[1].id) <= order(&w[0].id)).count();
    assert!(backwards <= 1, "delivered out of order more than at the takeover: {:?}", ids(&delivered));
    assert!(holding(survivor));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_holding_the_lease_is_taken_over_without_loss() {
    takeover(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_gives_its_lease_up_without_loss() {
    takeover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_never_show_their_secret_and_bad_input_names_the_field() {
    let receiver = Receiver::start().await;
    let server = Server::start(&private_env());
    let path = |id: &str| format!("/api/v1/fleets/{FLEET}/webhooks/{id}");
    assert_eq!(register(&server, "b", &hook(&receiver.url())).0, 200);
    let typed = json!({ "url": receiver.url(), "secret": SECRET, "types": ["geofence", "position"] });
    assert_eq!(register(&server, "a", &typed).0, 200);
    // Replaced: same id, new settings, not created.
    let (status, reply) = register(&server, "a", &json!({ "url": receiver.url(), "secret": "another-secret-0123" }));
    assert_eq!((status, &reply["data"]["created"]), (200, &json!(false)), "{reply}");
    let (status, list) =
        http_json(server.addr, "GET", &format!("/api/v1/fleets/{FLEET}/webhooks"), None, &dispatcher());
    assert_eq!(status, 200);
    assert_eq!(list["data"], json!([{ "id": "a", "url": receiver.url() }, { "id": "b", "url": receiver.url() }]));
    assert!(!list.to_string().contains("secret") && !list.to_string().contains(SECRET));

    for (body, field) in [
        (json!({ "secret": SECRET }), "url: required"),
        (json!({ "url": "ftp://example.com/", "secret": SECRET }), "url: must be http"),
        (json!({ "url": "https://u:p@example.com/", "secret": SECRET }), "url: credentials"),
        (json!({ "url": receiver.url() }), "secret: required"),
        (json!({ "url": receiver.url(), "secret": "short" }), "secret: must be 16"),
        (json!({ "url": receiver.url(), "secret": SECRET, "types": ["chat", "telemetry"] }), "types[1]"),
        (json!({ "url": receiver.url(), "secret": SECRET, "types": [] }), "types:"),
        (json!({ "url": receiver.url(), "secret": SECRET, "retries": 3 }), "retries: unknown field"),
        (json!("https://example.com"), "payload"),
    ] {
        let (status, reply) = register(&server, "bad", &body);
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["error"]["code"], "invalid_payload");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(field), "{body}: {message}");
    }
    let (status, reply) = http_json(server.addr, "PUT", &path("bad%20id"), Some(&hook(&receiver.url())), &dispatcher());
    assert_eq!((status, reply["error"]["message"].as_str().unwrap_or_default().starts_with("webhook:")), (400, true));

    // Dispatchers of the fleet only.
    for token in
        [token_for(FLEET, "viewer", "v"), token_for(FLEET, "vehicle", "bus-1"), token_for("other", "dispatcher", "d")]
    {
        assert_eq!(http_json(server.addr, "GET", &format!("/api/v1/fleets/{FLEET}/webhooks"), None, &token).0, 403);
        assert_eq!(http_json(server.addr, "PUT", &path("x"), Some(&hook(&receiver.url())), &token).0, 403);
        assert_eq!(http_json(server.addr, "DELETE", &path("a"), None, &token).0, 403);
    }
    assert_eq!(http_json(server.addr, "DELETE", &path("a"), None, &dispatcher()).0, 200);
    let (status, reply) = http_json(server.addr, "DELETE", &path("a"), None, &dispatcher());
    assert_eq!((status, &reply["error"]["code"]), (404, &json!("not_found")));
    let (_, list) = http_json(server.addr, "GET", &format!("/api/v1/fleets/{FLEET}/webhooks"), None, &dispatcher());
    assert_eq!(list["data"], json!([{ "id": "b", "url": receiver.url() }]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_unless_allowed() {
    let receiver = Receiver::start().await;
    let server = Server::start(&[]);
    let port = receiver.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        "http://10.0.0.8/hook".to_owned(),
        "http://192.168.1.10/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://[::ffff:127.0.0.1]/hook".to_owned(),
    ] {
        let (status, reply) = register(&server, "local", &hook(&url));
        assert_eq!(status, 400, "{url}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("url:") && message.contains("FLEETGATE_WEBHOOK_ALLOW_PRIVATE"), "{url}: {message}");
    }
    let (status, reply) = register(&server, "local", &hook("http://0.0.0.0/hook"));
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap_or_default().starts_with("url:"), "{reply}");
    let (_, list) = http_json(server.addr, "GET", &format!("/api/v1/fleets/{FLEET}/webhooks"), None, &dispatcher());
    assert_eq!(list["data"], json!([]));
    // Allowed, the same receiver gets its events.
    let open = Server::start(&private_env());
    assert_eq!(register(&open, "local", &hook(&format!("http://localhost:{port}/hook"))).0, 200);
    post_chat(&open, FLEET, "hello");
    let got = receiver.wait_for("the chat", |d| !d.is_empty()).await;
    check_complete_in_order(&got, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replicas_deliver_each_event_once_with_the_webhook_registered_on_either() {
    replicas_deliver_each_event_once(&Redis::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_replicas_deliver_each_event_once() {
    replicas_deliver_each_event_once(&support::RedisCluster::start()).await;
}

async fn replicas_deliver_each_event_once(redis: &impl SharedRedis) {
    let receiver = Receiver::start().await;
    let mut env = redis.envs();
    env.extend(private_env());
    let (a, b) = (Server::start(&env), Server::start(&env));
    // Before the webhook: neither delivered nor counted as skipped.
    post_chat(&a, FLEET, "before");
    assert_eq!(register(&a, "crm", &hook(&receiver.url())).0, 200);
    let (_, list) = http_json(b.addr, "GET", &format!("/api/v1/fleets/{FLEET}/webhooks"), None, &dispatcher());
    assert_eq!(list["data"], json!([{ "id": "crm", "url": receiver.url() }]), "shared through Redis");
    let ts = now_ms();
    for i in 0..10 {
        put_location(if i % 2 == 0 { &a } else { &b }, FLEET, &format!("bus-{}", i % 4), ts + i);
    }
    post_chat(&b, FLEET, "over");
    let delivered = receiver.wait_for("11 events", |d| d.len() >= 11).await;
    check_complete_in_order(&delivered, 11);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.delivered().len(), 11, "each event once");
    assert!(delivered.iter().all(|h| !h.body.contains("before")));
    let skipped = r#"fleetgate_output_events_skipped_total{output="webhook"}"#;
    assert_eq!(a.metric(skipped) + b.metric(skipped), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_delivers_its_simulated_fleet_to_a_webhook() {
    let receiver = Receiver::start().await;
    let env = [
        ("FLEETGATE_JWT_SECRET", String::new()),
        ("FLEETGATE_WEBHOOK_ALLOW_PRIVATE", "true".into()),
        ("FLEETGATE_DEMO_VEHICLES", "3".into()),
    ];
    let server = Server::start_with_args(&env, &["--demo"]);
    let request = json!({ "fleet": "demo", "role": "dispatcher", "sub": "ops" }).to_string();
    let (status, reply) = support::http_request(server.addr, "POST", "/api/v1/demo/token", Some(&request)).unwrap();
    assert_eq!(status, 200, "{reply}");
    let token: Value = serde_json::from_str(&reply).unwrap();
    let token = token["data"]["token"].as_str().unwrap().to_owned();
    let body = json!({ "url": receiver.url(), "secret": SECRET, "types": ["position"] });
    let (status, reply) = http_json(server.addr, "PUT", "/api/v1/fleets/demo/webhooks/live", Some(&body), &token);
    assert_eq!(status, 200, "{reply}");
    let got = receiver.wait_for("the demo's positions", |d| d.len() >= 5).await;
    check_signature(&got[0]);
    assert!(got.iter().all(|h| h.kind == "position" && h.id.starts_with("demo/")));
    for pair in got.windows(2) {
        assert!(order(&pair[0].id) < order(&pair[1].id), "in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_not_taken_within_the_retry_period_is_counted_as_failed_and_the_next_goes_on() {
    let receiver = Receiver::start().await;
    let mut env = private_env();
    env.push(("FLEETGATE_WEBHOOK_RETRY_SECS", "1".into()));
    let server = Server::start(&env);
    assert_eq!(register(&server, "crm", &hook(&receiver.url())).0, 200);
    receiver.state.failing.store(true, Ordering::SeqCst);
    post_chat(&server, FLEET, "lost");
    let failed = r#"fleetgate_output_events_total{output="webhook",type="chat",outcome="failed"}"#;
    let deadline = Instant::now() + WAIT;
    while server.metric(failed) < 1.0 {
        assert!(Instant::now() < deadline, "the event was never given up on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempts = receiver.hits().len();
    assert!(attempts >= 2, "retried before giving up: {attempts} attempts");
    receiver.state.failing.store(false, Ordering::SeqCst);
    post_chat(&server, FLEET, "kept");
    let got = receiver.wait_for("the next event", |d| !d.is_empty()).await;
    let text: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(text["data"]["text"], "kept");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.delivered().len(), 1, "the failed event is not sent again");
    assert_eq!(server.metric(failed), 1.0);
}
