//! The Prometheus exporter: the recorder behind the `metrics` macros, the
//! catalogue of names it exports (help text, units, histogram buckets), the
//! gauges sampled at scrape time, and the `/metrics` listener on its own
//! address.
//!
//! Names live in [`names`], closed label sets are the types of [`labels`];
//! routes are the router's patterns. A fleet, vehicle or session id is
//! never a label.

pub mod labels;
pub mod names;
mod process;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use async_trait::async_trait;
use axum::{Router, extract::State, routing::get};
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

pub use self::labels::RecoveryFallback;
pub use self::labels::{
    AdapterOp, AuthStage, CloseReason, DeliveryPath, HandshakeOutcome, Limit, ListenerKind, Output, OutputOutcome,
    PresenceState, StoreOp, SubscriptionKind, Transport, UpdateOutcome, UpdateSource,
};
use crate::{auth::Role, error::ErrorCode};

/// How often histogram samples are folded into their buckets when no
/// scrape does it.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Latency buckets in seconds, from 100 µs to 5 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Buckets of an output's delivery lag, in seconds: from a few ms (a live
/// output) to the hours a webhook may retry for.
const OUTPUT_LAG_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

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
    pub fn upkeep(&self) -> impl Future<Output = ()> + Send + 'static {
        let handle = self.handle.clone();
        async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        }
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
pub fn install() -> Result<Exporter, BuildError> {
    // A full name's buckets are looked up before a suffix's.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(names::OUTPUT_LAG_SECONDS.into()), &OUTPUT_LAG_BUCKETS)?
        .install_recorder()?;
    describe();
    preregister();
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(Exporter { handle, sampler: Arc::new(OnceLock::new()) })
}

/// The catalogue. README "Metrics" lists the same names with their labels.
fn describe() {
    describe_gauge!(names::BUILD_INFO, "Always 1; the version label tells the running build.");
    describe_gauge!(names::READY, "1 while this replica would answer /readyz with 200, else 0.");

    // Connections and authentication.
    describe_gauge!(names::CONNECTIONS, "Open Socket.IO connections on /fleet, by role and transport.");
    describe_counter!(names::CONNECTIONS_OPENED, "Socket.IO connections accepted on /fleet, by transport.");
    describe_counter!(names::CONNECTIONS_CLOSED, "Socket.IO connections closed on /fleet, by reason.");
    describe_counter!(names::HANDSHAKES, "Namespace handshakes, by outcome (ok, refused).");
    describe_counter!(names::AUTH_FAILURES, "Failed authentications by stage and error code.");
    describe_counter!(names::AUTH_TIMEOUTS, "Sockets disconnected for not authenticating in time.");
    describe_counter!(names::SESSIONS_CREATED, "Sessions created, by role.");
    describe_counter!(names::SESSIONS_REVOKED, "Sessions revoked through the API.");
    describe_counter!(
        names::JWKS_REFRESHES,
        "Fetches of the identity provider's JWKS (FLEETGATE_JWT_JWKS_URL), by outcome (ok, error)."
    );
    describe_gauge!(names::JWKS_KEYS, "Keys of the identity provider's JWKS in use (0 before the first fetch).");
    describe_gauge!(names::JWKS_LAST_SUCCESS, "Unix time of the last good JWKS fetch (0: never).");

    // Positions.
    describe_counter!(names::POSITION_UPDATES, "Position updates by source and outcome.");
    describe_counter!(names::EVENT_ERRORS, "Client events answered with an error, by code.");
    describe_counter!(names::BROADCASTS, "Accepted positions fanned out on this replica.");
    describe_counter!(names::DELIVERIES, "Position events handed to local sockets.");
    describe_counter!(
        names::EMITS_DROPPED,
        "Positions a lagging viewer did not get: superseded by a newer one of the same vehicle, or pending when it was disconnected."
    );
    describe_counter!(names::SLOW_VIEWERS, "Sockets that started lagging (their send buffer was full).");
    describe_counter!(
        names::SLOW_VIEWERS_EXPELLED,
        "Lagging sockets given up on after FLEETGATE_SLOW_VIEWER_SECS (sent nothing more, then disconnected)."
    );
    describe_counter!(
        names::SLOW_VIEWERS_DISCONNECTED,
        "Expelled sockets disconnected by fleetgate (those reading nothing at all end at the next heartbeat instead)."
    );
    describe_gauge!(names::LAGGING_SOCKETS, "Sockets lagging now, receiving only the newest position per vehicle.");
    describe_counter!(
        names::WRITE_TIMEOUTS,
        "Connections closed because writes to them made no progress for FLEETGATE_WRITE_TIMEOUT_SECS."
    );
    describe_counter!(names::RATE_LIMITED, "Events and connections refused by a limit, by limit.");
    describe_gauge!(
        names::LISTENER_CONNECTIONS,
        "Open connections on a listener with a connection cap (osmand: FLEETGATE_OSMAND_MAX_CONNECTIONS), by listener."
    );
    describe_counter!(
        names::LISTENER_CAP_REACHED,
        "Times a listener reached its connection cap and stopped accepting until a connection closed (new ones wait in the kernel's accept queue meanwhile), by listener."
    );
    describe_counter!(
        names::LISTENER_IDLE_TIMEOUTS,
        "Connections closed for sending no complete request within the idle timeout (osmand: FLEETGATE_OSMAND_IDLE_TIMEOUT_SECS): kept-alive connections left idle, and silent or slow peers, by listener."
    );
    describe_counter!(names::RELAY_RECEIVED, "Positions received from other replicas.");
    describe_counter!(
        names::RELAY_DROPPED,
        "Positions from other replicas dropped before local fan-out (on a subscriber lag, whole messages: each one or more positions)."
    );
    describe_counter!(
        names::INGEST_BATCHES,
        "Store calls carrying position updates: updates per call = fleetgate_position_updates_total that reached the store ÷ this."
    );
    describe_histogram!(
        names::INGEST_SECONDS,
        Unit::Seconds,
        "Time from receiving a position to its being stored (what the sender's ack waits for)."
    );
    describe_histogram!(
        names::DELIVERY_LAG_SECONDS,
        Unit::Seconds,
        "Time from a position's acceptance (on any replica) to its hand-off to sockets here, by path (local, relay)."
    );
    describe_gauge!(names::SUBSCRIPTIONS, "Live subscriptions on this replica, by kind.");
    describe_gauge!(names::VEHICLES_ONLINE, "Vehicles with at least one socket connected to this replica.");
    describe_counter!(names::PRESENCE_CHANGES, "Vehicles announced online or offline, by state.");
    describe_counter!(names::CHAT_MESSAGES, "Room messages stored.");
    describe_counter!(
        names::RECOVERY_ATTEMPTS,
        "Reconnections that asked to recover a socket (a pid in the handshake)."
    );
    describe_counter!(names::RECOVERY_SUCCESSES, "Sockets restored with everything they missed.");
    describe_counter!(names::RECOVERY_FALLBACKS, "Recovery attempts that got a fresh socket instead, by reason.");
    describe_counter!(names::RECOVERY_REPLAYED, "Events (positions included) replayed to restored sockets.");

    // Redis and the adapter.
    describe_histogram!(
        names::REDIS_COMMAND_SECONDS,
        Unit::Seconds,
        "Latency of the store's Redis calls, by operation (failed calls included)."
    );
    describe_counter!(names::REDIS_ERRORS, "Failed Redis calls (errors and timeouts), by operation.");
    describe_counter!(names::ADAPTER_ERRORS, "Socket.IO adapter operations across replicas that failed, by operation.");

    // Geofences.
    describe_counter!(
        names::GEOFENCE_EVENTS,
        "Geofence crossings decided by this replica's store calls, by kind (enter, exit): each crossing counted once across replicas."
    );
    describe_counter!(names::GEOFENCE_DELIVERIES, "geofence events handed to local sockets.");
    describe_counter!(
        names::GEOFENCE_EVENTS_DROPPED,
        "geofence events a socket did not get because its send buffer was full."
    );
    describe_gauge!(names::GEOFENCES, "Geofences indexed on this replica, over all fleets.");
    describe_counter!(
        names::GEOFENCE_RELOADS,
        "Reads of a fleet's geofences into this replica's index (first use, a change seen by the sync, or a refused write)."
    );
    describe_histogram!(
        names::GEOFENCE_EVALUATION_SECONDS,
        Unit::Seconds,
        "Time to find the geofences holding every fix of one store call."
    );

    // Event outputs.
    describe_counter!(
        names::EVENTS_APPENDED,
        "Events this replica's store calls appended to their fleets' event streams, by type: each event counted once across replicas."
    );
    describe_counter!(
        names::OUTPUT_EVENTS,
        "Attempts to hand an event to an output (webhook, nats), by type and outcome: delivered, retried (it failed and will be tried again), failed (given up on)."
    );
    describe_counter!(
        names::OUTPUT_EVENTS_SKIPPED,
        "Events an output never got because it fell behind its fleet's stream cap (FLEETGATE_EVENTS_MAX) and they were dropped first."
    );
    describe_histogram!(
        names::OUTPUT_LAG_SECONDS,
        Unit::Seconds,
        "Time from an event being stored to an output taking it (its 2xx or JetStream ack), by output."
    );
    describe_gauge!(names::OUTPUT_LEASES, "Fleet outputs this replica delivers now (the leases it holds), by output.");

    // HTTP API.
    describe_counter!(names::HTTP_REQUESTS, "HTTP requests by method, route and status.");
    describe_histogram!(
        names::HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP request latency by method and route."
    );
}

/// The HTTP routes every replica serves from the start (the probes): their
/// series exist before the first request. Other routes and statuses are an
/// open set and appear with their first request.
const PROBE_ROUTES: [&str; 2] = ["/healthz", "/readyz"];

/// Exposes every counter and histogram at zero, with each of its known
/// label values, before anything happens: dashboards and alerts see a
/// series (and `rate()` a start) from the first scrape.
fn preregister() {
    for source in UpdateSource::ALL {
        for outcome in UpdateOutcome::ALL {
            metrics::counter!(names::POSITION_UPDATES, "source" => *source, "outcome" => *outcome).increment(0);
        }
    }
    for outcome in HandshakeOutcome::ALL {
        metrics::counter!(names::HANDSHAKES, "outcome" => *outcome).increment(0);
    }
    for stage in AuthStage::ALL {
        for code in ErrorCode::ALL {
            metrics::counter!(names::AUTH_FAILURES, "stage" => *stage, "code" => code.as_str()).increment(0);
        }
    }
    for code in ErrorCode::ALL {
        metrics::counter!(names::EVENT_ERRORS, "code" => code.as_str()).increment(0);
    }
    for role in Role::ALL {
        metrics::counter!(names::SESSIONS_CREATED, "role" => role.as_str()).increment(0);
    }
    for outcome in ["ok", "error"] {
        metrics::counter!(names::JWKS_REFRESHES, "outcome" => outcome).increment(0);
    }
    metrics::gauge!(names::JWKS_KEYS).set(0.0);
    metrics::gauge!(names::JWKS_LAST_SUCCESS).set(0.0);
    for transport in Transport::ALL {
        metrics::counter!(names::CONNECTIONS_OPENED, "transport" => *transport).increment(0);
    }
    for reason in CloseReason::ALL {
        metrics::counter!(names::CONNECTIONS_CLOSED, "reason" => *reason).increment(0);
    }
    for state in PresenceState::ALL {
        metrics::counter!(names::PRESENCE_CHANGES, "state" => *state).increment(0);
    }
    for limit in Limit::ALL {
        metrics::counter!(names::RATE_LIMITED, "limit" => *limit).increment(0);
    }
    for listener in ListenerKind::ALL {
        metrics::gauge!(names::LISTENER_CONNECTIONS, "listener" => *listener).set(0.0);
        metrics::counter!(names::LISTENER_CAP_REACHED, "listener" => *listener).increment(0);
        metrics::counter!(names::LISTENER_IDLE_TIMEOUTS, "listener" => *listener).increment(0);
    }
    for op in AdapterOp::ALL {
        metrics::counter!(names::ADAPTER_ERRORS, "op" => *op).increment(0);
    }
    for kind in SubscriptionKind::ALL {
        metrics::gauge!(names::SUBSCRIPTIONS, "kind" => *kind).increment(0.0);
    }
    for reason in RecoveryFallback::ALL {
        metrics::counter!(names::RECOVERY_FALLBACKS, "reason" => *reason).increment(0);
    }
    for path in DeliveryPath::ALL {
        let _ = metrics::histogram!(names::DELIVERY_LAG_SECONDS, "path" => *path);
    }
    let _ = metrics::histogram!(names::INGEST_SECONDS);
    for kind in crate::geofence::CrossingKind::ALL {
        metrics::counter!(names::GEOFENCE_EVENTS, "kind" => *kind).increment(0);
    }
    metrics::counter!(names::GEOFENCE_DELIVERIES).increment(0);
    metrics::counter!(names::GEOFENCE_EVENTS_DROPPED).increment(0);
    metrics::counter!(names::GEOFENCE_RELOADS).increment(0);
    metrics::gauge!(names::GEOFENCES).set(0.0);
    let _ = metrics::histogram!(names::GEOFENCE_EVALUATION_SECONDS);
    for kind in crate::store::events::EventKind::ALL {
        metrics::counter!(names::EVENTS_APPENDED, "type" => *kind).increment(0);
    }
    for output in Output::ALL {
        for kind in crate::store::events::EventKind::ALL {
            for outcome in OutputOutcome::ALL {
                metrics::counter!(names::OUTPUT_EVENTS, "output" => *output, "type" => *kind, "outcome" => *outcome)
                    .increment(0);
            }
        }
        metrics::counter!(names::OUTPUT_EVENTS_SKIPPED, "output" => *output).increment(0);
        let _ = metrics::histogram!(names::OUTPUT_LAG_SECONDS, "output" => *output);
        metrics::gauge!(names::OUTPUT_LEASES, "output" => *output).set(0.0);
    }
    for route in PROBE_ROUTES {
        metrics::counter!(names::HTTP_REQUESTS, "method" => "GET", "route" => route, "status" => "200").increment(0);
        let _ = metrics::histogram!(names::HTTP_REQUEST_DURATION_SECONDS, "method" => "GET", "route" => route);
    }
    for name in [
        names::AUTH_TIMEOUTS,
        names::SESSIONS_REVOKED,
        names::BROADCASTS,
        names::DELIVERIES,
        names::EMITS_DROPPED,
        names::SLOW_VIEWERS,
        names::SLOW_VIEWERS_EXPELLED,
        names::SLOW_VIEWERS_DISCONNECTED,
        names::WRITE_TIMEOUTS,
        names::RELAY_RECEIVED,
        names::RELAY_DROPPED,
        names::INGEST_BATCHES,
        names::CHAT_MESSAGES,
        names::RECOVERY_ATTEMPTS,
        names::RECOVERY_SUCCESSES,
        names::RECOVERY_REPLAYED,
    ] {
        metrics::counter!(name).increment(0);
    }
}

/// Exposes the Redis series at zero for every store operation; called when
/// the store is Redis, so an in-memory replica shows no Redis metrics.
pub fn preregister_redis() {
    for op in StoreOp::ALL {
        metrics::counter!(names::REDIS_ERRORS, "op" => *op).increment(0);
        let _ = metrics::histogram!(names::REDIS_COMMAND_SECONDS, "op" => *op);
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
