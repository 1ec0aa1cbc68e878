//! The Prometheus exporter: the recorder behind the `metrics` macros, the
//! names it knows (with help text and histogram buckets) and the
//! `/metrics` listener on its own address.

use std::net::SocketAddr;

use axum::{Router, extract::State, routing::get};
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds, from 100 µs to 5 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Installs the global recorder. Fails if one is installed already.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    metrics::gauge!("fleetgate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

fn describe() {
    describe_gauge!("fleetgate_build_info", "Always 1; the version label tells the running build.");
    describe_gauge!("fleetgate_connections", "Socket.IO connections open on /fleet.");
    describe_counter!("fleetgate_connections_opened_total", "Socket.IO connections accepted on /fleet.");
    describe_counter!("fleetgate_handshakes_total", "Namespace handshakes attempted.");
    describe_counter!("fleetgate_auth_failures_total", "Failed authentications by stage and error code.");
    describe_counter!("fleetgate_auth_timeouts_total", "Sockets disconnected for not authenticating in time.");
    describe_counter!("fleetgate_sessions_created_total", "Sessions created, by role.");
    describe_counter!("fleetgate_position_updates_total", "Position updates by source and outcome.");
    describe_counter!("fleetgate_event_errors_total", "Client events answered with an error, by code.");
    describe_counter!(
        "fleetgate_emits_dropped_total",
        "Local broadcasts in which at least one socket could not be sent to."
    );
    describe_counter!("fleetgate_relay_dropped_total", "Positions from other replicas dropped before local fan-out.");
    describe_counter!("fleetgate_broadcasts_total", "Accepted positions fanned out on this replica.");
    describe_counter!("fleetgate_deliveries_total", "Position events handed to local sockets.");
    describe_counter!("fleetgate_presence_changes_total", "Vehicles announced online or offline, by state.");
    describe_counter!("fleetgate_chat_messages_total", "Room messages stored.");
    describe_counter!("fleetgate_sessions_revoked_total", "Sessions revoked through the API.");
    describe_gauge!("fleetgate_subscriptions", "Live subscriptions on this replica, by kind.");
    describe_histogram!(
        "fleetgate_ingest_seconds",
        Unit::Seconds,
        "Time from receiving a position to handing it to local fan-out."
    );
}

/// Serves `/metrics` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(render)).with_state(handle);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn render(State(handle): State<PrometheusHandle>) -> String {
    handle.run_upkeep();
    handle.render()
}
