//! Device ingest (contract section 13): positions from devices that cannot
//! speak Socket.IO, the OsmAnd protocol of the Traccar Client apps on its
//! own listener and an MQTT broker's topics. Both hand every position to
//! the gateway's one accept path ([`Gateway::publish`]: validation,
//! compare-and-set ordering, the per-vehicle rate limit, fan-out), so a
//! device position is indistinguishable from a socket one.

pub mod mqtt;
pub mod osmand;
mod timestamp;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value;
use socketioxide::adapter::Adapter;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{Authenticator, Claims, Role},
    clock,
    config::Config,
    error::{ApiError, ErrorCode},
    gateway::{Accepted, Gateway, Source},
    session::Session,
};

/// What device ingest needs from the gateway, object-safe so the listeners
/// do not carry the adapter type.
#[async_trait]
pub trait Ingest: Send + Sync + 'static {
    fn authenticator(&self) -> &Authenticator;
    /// The gateway's accept path, counted under `source`.
    async fn publish(&self, session: &Session, payload: &Value, source: Source) -> Result<Accepted, ApiError>;
}

#[async_trait]
impl<A: Adapter> Ingest for Gateway<A> {
    fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    async fn publish(&self, session: &Session, payload: &Value, source: Source) -> Result<Accepted, ApiError> {
        Gateway::publish(self, session, payload, source).await
    }
}

/// Why device ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("FLEETGATE_OSMAND_ADDR: cannot listen on {addr}: {err}")]
    Bind { addr: std::net::SocketAddr, err: std::io::Error },
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttConfigError),
}

/// The running device listeners, until the `stop` they were started with
/// is cancelled: then the OsmAnd listener finishes its requests and the
/// MQTT client disconnects (its session, and any message not yet
/// acknowledged, stay with the broker).
pub struct Devices {
    /// Held for as long as the server runs.
    _tasks: Vec<JoinHandle<()>>,
}

/// Starts what the configuration turns on (nothing by default).
pub async fn start(config: &Config, ingest: Arc<dyn Ingest>, stop: CancellationToken) -> Result<Devices, DeviceError> {
    preregister();
    let mut tasks = Vec::new();
    if let Some(addr) = config.osmand_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|err| DeviceError::Bind { addr, err })?;
        // The main listener's guard against peers that stop reading, and a
        // cap of its own so phones cannot take the main listener's descriptors.
        let listener = crate::net::Listener::new(listener, Duration::from_secs(config.write_timeout_secs.max(1)))
            .capped(config.osmand_max_connections, crate::metrics::ListenerKind::Osmand);
        tracing::info!(%addr, max_connections = config.osmand_max_connections, "osmand listening");
        let idle = Duration::from_secs(config.osmand_idle_timeout_secs);
        let serve = osmand::serve(listener, ingest.clone(), config.max_message_bytes, idle, stop.clone());
        tasks.push(tokio::spawn(serve));
    }
    if let Some(settings) = mqtt::Settings::from_config(config)? {
        tracing::info!(broker = %settings.redacted_url(), client_id = %settings.client_id, "mqtt ingest on");
        tasks.push(tokio::spawn(mqtt::run(settings, ingest, stop)));
    }
    Ok(Devices { _tasks: tasks })
}

/// The sources of this module, as the auth-failure metric labels them.
const SOURCES: [Source; 2] = [Source::Osmand, Source::Mqtt];

/// The catalogue entry and zero series of this module's own metric.
fn preregister() {
    metrics::describe_counter!(
        "fleetgate_device_auth_failures_total",
        "Device positions refused for their token (bad, expired, or not a vehicle's), by source."
    );
    metrics::describe_counter!(
        "fleetgate_mqtt_connection_errors_total",
        "Times the connection to the MQTT broker failed or was lost (each is retried with backoff)."
    );
    metrics::describe_counter!(
        "fleetgate_mqtt_messages_total",
        "Messages taken from the MQTT broker (redeliveries included)."
    );
    metrics::describe_counter!(
        "fleetgate_mqtt_replies_dropped_total",
        "Outcomes not published to an MQTT ack topic because the client's queue was full."
    );
    metrics::describe_gauge!(
        "fleetgate_mqtt_subscribed",
        "1 while this replica is connected to the MQTT broker with its subscription granted, else 0."
    );
    for source in SOURCES {
        metrics::counter!(crate::metrics::names::DEVICE_AUTH_FAILURES, "source" => source.as_str()).increment(0);
    }
    metrics::counter!(crate::metrics::names::MQTT_CONNECTION_ERRORS).increment(0);
    metrics::counter!(crate::metrics::names::MQTT_REPLIES_DROPPED).increment(0);
    metrics::counter!(crate::metrics::names::MQTT_MESSAGES).increment(0);
    metrics::gauge!(crate::metrics::names::MQTT_SUBSCRIBED).set(0.0);
}

fn count_auth_failure(source: Source) {
    metrics::counter!(crate::metrics::names::DEVICE_AUTH_FAILURES, "source" => source.as_str()).increment(1);
}

/// Counts a position refused before it reached the accept path (it could
/// not be read at all), as the accept path counts its own refusals.
fn count_unreadable(source: Source) {
    metrics::counter!(crate::metrics::names::POSITION_UPDATES, "source" => source.as_str(), "outcome" => "invalid")
        .increment(1);
}

/// A request-scoped session for a vehicle (never stored).
fn vehicle_session(fleet: String, vehicle: String, expires_at: i64) -> Session {
    Session {
        session_id: String::new(),
        sub: vehicle.clone(),
        fleet,
        role: Role::Vehicle,
        vehicle: Some(vehicle),
        vehicles: None,
        expires_at,
    }
}

/// The session of a device whose identifier is its vehicle token: 401 for
/// a bad or expired token, 403 for one that is not a vehicle's.
async fn device_session(auth: &Authenticator, token: &str, source: Source) -> Result<Session, ApiError> {
    let claims: Claims = auth.authenticate(token).await.inspect_err(|_| count_auth_failure(source))?;
    if claims.role != Role::Vehicle {
        count_auth_failure(source);
        return Err(ApiError::new(ErrorCode::Forbidden, "the device identifier must be a vehicle token"));
    }
    let vehicle = claims.vehicle.clone().unwrap_or_else(|| claims.sub.clone());
    let expires_at = claims.exp.saturating_mul(1000).max(clock::now_ms());
    Ok(vehicle_session(claims.fleet, vehicle, expires_at))
}
