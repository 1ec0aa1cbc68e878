//! The Prometheus exporter: the recorder behind the `metrics` macros, the
//! catalogue of names it exports (help text, units, histogram buckets), the
//! gauges sampled at scrape time, and the `/metrics` listener on its own
//! address.
//!
//! Labels are bounded sets (roles, transports, outcomes, error codes,
//! operations, routes); a fleet, vehicle or session id is never a label.

mod process;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use async_trait::async_trait;
use axum::{Router, extract::State, routing::get};
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How often histogram samples are folded into their buckets when no
/// scrape does it.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Latency buckets in seconds, from 100 µs to 5 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Gauges that are cheaper to read when scraped than to keep current on
/// every change (connections by role and transport, vehicles online,
/// readiness).
#[async_trait]
pub trait Sample: Send + Sync + 'static {
    async fn sample(&self);
}

/// What a scrape needs. The sampler is set once the gateway exists, so the
/// listener can start (and answer) before the rest of the process.
#[derive(Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
    sampler: Arc<OnceLock<Arc<dyn Sample>>>,
}

impl Exporter {
    /// Starts sampling `sampler` at every scrape; only the first call counts.
    pub fn sample_with(&self, sampler: Arc<dyn Sample>) {
        let _ = self.sampler.set(sampler);
    }

    /// Drains histogram samples into their buckets every few seconds.
    ///
    /// The recorder keeps every histogram sample until upkeep folds it
    /// into the buckets; a scrape does that too, but a process nobody
    /// scrapes (the demo, a cluster without Prometheus, a stalled scraper)
    /// would otherwise hold every latency it ever recorded: several per
    /// position, megabytes per minute.
    pub fn spawn_upkeep(&self) -> tokio::task::JoinHandle<()> {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    }

    /// The exposition text, as served on `/metrics`.
    pub async fn render(&self) -> String {
        if let Some(sampler) = self.sampler.get() {
            sampler.sample().await;
        }
        self.handle.run_upkeep();
        let mut text = self.handle.render();
        process::render(&mut text);
        text
    }
}

/// Installs the global recorder. Fails if one is installed already.
pub fn install() -> Result<Exporter, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    preregister();
    metrics::gauge!("fleetgate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(Exporter { handle, sampler: Arc::new(OnceLock::new()) })
}

/// The catalogue. README "Metrics" lists the same names with their labels.
fn describe() {
    describe_gauge!("fleetgate_build_info", "Always 1; the version label tells the running build.");
    describe_gauge!("fleetgate_ready", "1 while this replica would answer /readyz with 200, else 0.");

    // Connections and authentication.
    describe_gauge!("fleetgate_connections", "Open Socket.IO connections on /fleet, by role and transport.");
    describe_counter!("fleetgate_connections_opened_total", "Socket.IO connections accepted on /fleet, by transport.");
    describe_counter!("fleetgate_connections_closed_total", "Socket.IO connections closed on /fleet, by reason.");
    describe_counter!("fleetgate_handshakes_total", "Namespace handshakes, by outcome (ok, refused).");
    describe_counter!("fleetgate_auth_failures_total", "Failed authentications by stage and error code.");
    describe_counter!("fleetgate_auth_timeouts_total", "Sockets disconnected for not authenticating in time.");
    describe_counter!("fleetgate_sessions_created_total", "Sessions created, by role.");
    describe_counter!("fleetgate_sessions_revoked_total", "Sessions revoked through the API.");
    describe_counter!(
        "fleetgate_jwks_refreshes_total",
        "Fetches of the identity provider's JWKS (FLEETGATE_JWT_JWKS_URL), by outcome (ok, error)."
    );
    describe_gauge!("fleetgate_jwks_keys", "Keys of the identity provider's JWKS in use (0 before the first fetch).");
    describe_gauge!(
        "fleetgate_jwks_last_success_timestamp_seconds",
        "Unix time of the last good JWKS fetch (0: never)."
    );

    // Positions.
    describe_counter!("fleetgate_position_updates_total", "Position updates by source and outcome.");
    describe_counter!("fleetgate_event_errors_total", "Client events answered with an error, by code.");
    describe_counter!("fleetgate_broadcasts_total", "Accepted positions fanned out on this replica.");
    describe_counter!("fleetgate_deliveries_total", "Position events handed to local sockets.");
    describe_counter!(
        "fleetgate_emits_dropped_total",
        "Positions a lagging viewer did not get: superseded by a newer one of the same vehicle, or pending when it was disconnected."
    );
    describe_counter!("fleetgate_slow_viewers_total", "Sockets that started lagging (their send buffer was full).");
    describe_counter!(
        "fleetgate_slow_viewers_expelled_total",
        "Lagging sockets given up on after FLEETGATE_SLOW_VIEWER_SECS (sent nothing more, then disconnected)."
    );
    describe_counter!(
        "fleetgate_slow_viewers_disconnected_total",
        "Expelled sockets disconnected by fleetgate (those reading nothing at all end at the next heartbeat instead)."
    );
    describe_gauge!(
        "fleetgate_lagging_sockets",
        "Sockets lagging now, receiving only the newest position per vehicle."
    );
    describe_counter!(
        "fleetgate_write_timeouts_total",
        "Connections closed because writes to them made no progress for FLEETGATE_WRITE_TIMEOUT_SECS."
    );
    describe_counter!("fleetgate_rate_limited_total", "Events and connections refused by a limit, by limit.");
    describe_counter!("fleetgate_relay_received_total", "Positions received from other replicas.");
    describe_counter!("fleetgate_relay_dropped_total", "Positions from other replicas dropped before local fan-out.");
    describe_counter!(
        "fleetgate_ingest_batches_total",
        "Store calls carrying position updates: updates per call = fleetgate_position_updates_total that reached the store ÷ this."
    );
    describe_histogram!(
        "fleetgate_ingest_seconds",
        Unit::Seconds,
        "Time from receiving a position to its being stored (what the sender's ack waits for)."
    );
    describe_histogram!(
        "fleetgate_delivery_lag_seconds",
        Unit::Seconds,
        "Time from a position's acceptance (on any replica) to its hand-off to sockets here, by path (local, relay)."
    );
    describe_gauge!("fleetgate_subscriptions", "Live subscriptions on this replica, by kind.");
    describe_gauge!("fleetgate_vehicles_online", "Vehicles with at least one socket connected to this replica.");
    describe_counter!("fleetgate_presence_changes_total", "Vehicles announced online or offline, by state.");
    describe_counter!("fleetgate_chat_messages_total", "Room messages stored.");

    // Redis and the adapter.
    describe_histogram!(
        "fleetgate_redis_command_seconds",
        Unit::Seconds,
        "Latency of the store's Redis calls, by operation (failed calls included)."
    );
    describe_counter!("fleetgate_redis_errors_total", "Failed Redis calls (errors and timeouts), by operation.");
    describe_counter!(
        "fleetgate_adapter_errors_total",
        "Socket.IO adapter operations across replicas that failed, by operation."
    );

    // HTTP API.
    describe_counter!("fleetgate_http_requests_total", "HTTP requests by method, route and status.");
    describe_histogram!(
        "fleetgate_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method and route."
    );
}

/// Sources of position updates, as labelled.
pub const UPDATE_SOURCES: [&str; 3] = ["socket", "http", "demo"];
/// Outcomes of position updates, as labelled.
pub const UPDATE_OUTCOMES: [&str; 7] =
    ["accepted", "stale", "invalid", "forbidden", "rate_limited", "unavailable", "error"];
/// The `limit` label of `fleetgate_rate_limited_total`.
pub const RATE_LIMITS: [&str; 4] = ["events", "vehicle", "connections", "connections_per_ip"];
/// Cross-replica operations of the adapter, as labelled.
pub const ADAPTER_OPS: [&str; 4] = ["chat", "notice", "presence", "disconnect"];

/// Exposes the counters at zero before anything happens, so dashboards and
/// alerts see a series (and `rate()` a start) from the first scrape.
fn preregister() {
    for source in UPDATE_SOURCES {
        for outcome in UPDATE_OUTCOMES {
            metrics::counter!("fleetgate_position_updates_total", "source" => source, "outcome" => outcome)
                .increment(0);
        }
    }
    for outcome in ["ok", "refused"] {
        metrics::counter!("fleetgate_handshakes_total", "outcome" => outcome).increment(0);
    }
    for state in ["online", "offline"] {
        metrics::counter!("fleetgate_presence_changes_total", "state" => state).increment(0);
    }
    for limit in RATE_LIMITS {
        metrics::counter!("fleetgate_rate_limited_total", "limit" => limit).increment(0);
    }
    for op in ADAPTER_OPS {
        metrics::counter!("fleetgate_adapter_errors_total", "op" => op).increment(0);
    }
    for outcome in ["ok", "error"] {
        metrics::counter!("fleetgate_jwks_refreshes_total", "outcome" => outcome).increment(0);
    }
    metrics::gauge!("fleetgate_jwks_keys").set(0.0);
    metrics::gauge!("fleetgate_jwks_last_success_timestamp_seconds").set(0.0);
    for kind in ["fleet", "vehicle", "bbox"] {
        metrics::gauge!("fleetgate_subscriptions", "kind" => kind).increment(0.0);
    }
    for name in [
        "fleetgate_auth_timeouts_total",
        "fleetgate_sessions_revoked_total",
        "fleetgate_broadcasts_total",
        "fleetgate_deliveries_total",
        "fleetgate_emits_dropped_total",
        "fleetgate_slow_viewers_total",
        "fleetgate_slow_viewers_expelled_total",
        "fleetgate_slow_viewers_disconnected_total",
        "fleetgate_write_timeouts_total",
        "fleetgate_relay_received_total",
        "fleetgate_relay_dropped_total",
        "fleetgate_ingest_batches_total",
        "fleetgate_chat_messages_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}

/// Serves `/metrics` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    exporter: Exporter,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(render)).with_state(exporter);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn render(State(exporter): State<Exporter>) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], exporter.render().await)
}
