//! The Socket.IO side: the `/fleet` namespace, its handlers, and the path
//! every accepted position takes (validate → store → fan out), shared with
//! the HTTP API. Handlers are generic over the adapter so the embedded node
//! and the Redis-backed replicas run the same code.

mod auth;
mod conn;
pub mod fanout;
pub mod limits;
mod location;
pub mod presence;
mod request;
pub mod rooms;
pub mod viewer;

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::{SocketIo, adapter::Adapter, extract::SocketRef, handler::ConnectHandler, socket::DisconnectReason};

pub use conn::Conn;
pub use fanout::Fanout;
pub use request::Request;

use crate::{
    auth::{Authenticator, Role},
    config::Config,
    error::{ApiError, ErrorCode},
    ids,
    metrics::{AdapterOp, CloseReason, Limit, Transport, UpdateOutcome, names},
    position::{Position, PositionKey, PositionUpdate, TimeWindow},
    relay::Announcement,
    session::Session,
    store::{PutOutcome, Store},
};

/// Where an update came from, for metrics.
pub use crate::metrics::UpdateSource as Source;

/// The `data` of a `locationupdate` ack.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Accepted {
    pub accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

fn count_update(source: Source, result: &Result<Accepted, ApiError>) {
    let outcome = match result {
        Ok(a) if a.accepted => UpdateOutcome::Accepted,
        Ok(_) => UpdateOutcome::Stale,
        Err(e) => match e.code {
            ErrorCode::InvalidPayload | ErrorCode::PayloadTooLarge => UpdateOutcome::Invalid,
            ErrorCode::Forbidden => UpdateOutcome::Forbidden,
            ErrorCode::RateLimited => UpdateOutcome::RateLimited,
            ErrorCode::Unavailable => UpdateOutcome::Unavailable,
            _ => UpdateOutcome::Error,
        },
    };
    metrics::counter!(names::POSITION_UPDATES, "source" => source, "outcome" => outcome).increment(1);
}

/// Counts a cross-replica operation of the adapter that failed.
fn adapter_failed(op: AdapterOp, e: &dyn std::fmt::Display) {
    metrics::counter!(names::ADAPTER_ERRORS, "op" => op).increment(1);
    tracing::warn!(error = %e, op = op.as_str(), "adapter operation failed");
}

/// Everything the handlers share.
pub struct Gateway<A: Adapter> {
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    pub store: Arc<dyn Store>,
    pub fanout: Fanout<A>,
    pub io: SocketIo<A>,
    /// This replica's id (its announcements and presence claims carry it).
    pub node_id: String,
    pub local_vehicles: presence::LocalVehicles,
    pub limits: Arc<limits::Limits>,
}

impl<A: Adapter> Gateway<A> {
    pub fn new(
        config: Arc<Config>,
        auth: Arc<Authenticator>,
        store: Arc<dyn Store>,
        io: SocketIo<A>,
        relay: Option<crate::relay::Relay>,
        node_id: String,
    ) -> Self {
        let settings = fanout::Settings {
            conflate: config.batch_ms > 0,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            slow_viewer_timeout: std::time::Duration::from_secs(config.slow_viewer_secs),
        };
        Self {
            limits: limits::Limits::new(&config),
            config,
            auth,
            store,
            fanout: Fanout::new(io.clone(), relay, settings),
            io,
            node_id,
            local_vehicles: presence::LocalVehicles::default(),
        }
    }
}

/// The room of every socket using a session, for revocation.
pub fn session_room(session_id: &str) -> String {
    format!("s/{session_id}")
}

impl<A: Adapter> Gateway<A> {
    fn window(&self) -> TimeWindow {
        TimeWindow { max_future_ms: self.config.max_future_ms, max_age_ms: self.config.max_age_ms }
    }

    /// Parses, authorises, stores and fans out one `locationupdate` payload
    /// on behalf of `session`.
    pub async fn publish(
        &self,
        session: &Session,
        payload: &serde_json::Value,
        source: Source,
    ) -> Result<Accepted, ApiError> {
        let result = match PositionUpdate::parse(payload) {
            Ok(update) => self.try_publish(session, update).await,
            Err(e) => Err(e),
        };
        count_update(source, &result);
        result
    }

    /// Like [`Gateway::publish`], for an update built in process.
    pub async fn publish_update(
        &self,
        session: &Session,
        update: PositionUpdate,
        source: Source,
    ) -> Result<Accepted, ApiError> {
        let result = self.try_publish(session, update).await;
        count_update(source, &result);
        result
    }

    async fn try_publish(&self, session: &Session, update: PositionUpdate) -> Result<Accepted, ApiError> {
        let vehicle_id = match session.role {
            Role::Viewer => return Err(ApiError::forbidden("viewers cannot publish positions")),
            Role::Vehicle => {
                let own = session.vehicle.as_deref().unwrap_or(&session.sub);
                match update.vehicle_id.as_deref() {
                    Some(v) if v != own => {
                        return Err(ApiError::forbidden("a vehicle token publishes only its own vehicle"));
                    }
                    _ => own.to_owned(),
                }
            }
            Role::Dispatcher => {
                update.vehicle_id.clone().ok_or_else(|| ApiError::invalid("vehicleId: required for dispatchers"))?
            }
        };
        let now = ids::now_ms();
        let ts = update.fix_time(now, self.window())?;
        self.limits.check_vehicle(&session.fleet, &vehicle_id).inspect_err(|_| {
            metrics::counter!(names::RATE_LIMITED, "limit" => Limit::Vehicle).increment(1);
        })?;
        let position = Position {
            fleet: session.fleet.clone(),
            vehicle_id,
            lat: update.lat,
            lon: update.lon,
            ts,
            heading: update.heading,
            speed: update.speed,
            accuracy: update.accuracy,
            received_at: now,
        };
        // Encoded once: the store keeps these bytes, other replicas receive
        // them, and local sockets get them without re-serialisation.
        let encoded = serde_json::value::to_raw_value(&position)
            .map_err(|_| ApiError::invalid("payload: not representable as JSON"))?;
        match self.store.put_position(&position, encoded.get()).await {
            Ok(PutOutcome::Accepted { back_online }) => {
                metrics::histogram!(names::INGEST_SECONDS).record((ids::now_ms() - now).max(0) as f64 / 1000.0);
                if back_online {
                    self.announce_online(&position.fleet, &position.vehicle_id).await;
                }
                self.fanout
                    .deliver(fanout::Outgoing {
                        fleet: position.fleet,
                        vehicle: position.vehicle_id,
                        lon: position.lon,
                        lat: position.lat,
                        ts: position.ts,
                        encoded,
                        received_at: now,
                        relayed: false,
                        wire: Default::default(),
                    })
                    .await;
                Ok(Accepted { accepted: true, reason: None })
            }
            Ok(PutOutcome::Stale) => Ok(Accepted { accepted: false, reason: Some("stale") }),
            Err(e) => {
                tracing::warn!(error = %e, "position not stored");
                Err(ApiError::unavailable())
            }
        }
    }

    /// Revokes a session: deletes it and disconnects its sockets on every
    /// replica. Whether it existed.
    pub async fn revoke(&self, session_id: &str) -> Result<bool, ApiError> {
        let existed = self.store.delete_session(session_id).await.map_err(|e| {
            tracing::warn!(error = %e, "session not deleted");
            ApiError::unavailable()
        })?;
        if let Some(ns) = self.io.of(fanout::NAMESPACE)
            && let Err(e) = ns.to(session_room(session_id)).disconnect().await
        {
            adapter_failed(AdapterOp::Disconnect, &e);
            tracing::warn!(error = %e, "revoked session's sockets not all disconnected");
        }
        metrics::counter!(names::SESSIONS_REVOKED).increment(1);
        Ok(existed)
    }

    /// Fans out a position another replica accepted.
    pub async fn deliver_announcement(&self, a: Announcement) {
        let Ok(key) = serde_json::from_slice::<PositionKey>(&a.encoded) else { return };
        let Ok(encoded) = serde_json::from_slice::<Box<RawValue>>(&a.encoded) else { return };
        self.fanout
            .deliver(fanout::Outgoing {
                fleet: key.fleet.into_owned(),
                vehicle: key.vehicle_id.into_owned(),
                lon: key.lon,
                lat: key.lat,
                ts: key.ts,
                encoded,
                received_at: key.received_at,
                relayed: true,
                wire: Default::default(),
            })
            .await;
    }
}

/// Registers the `/fleet` namespace. With a Redis adapter the returned
/// future must be awaited, or the namespace never exists.
pub fn register<A: Adapter + socketioxide_core::adapter::DefinedAdapter>(
    io: &SocketIo<A>,
    gateway: Arc<Gateway<A>>,
) -> A::InitRes {
    let on_connect = {
        let gateway = gateway.clone();
        move |socket: SocketRef<A>| {
            let gateway = gateway.clone();
            async move { on_connect(socket, gateway) }
        }
    };
    let handshake = move |socket: SocketRef<A>, auth: socketioxide::extract::TryData<serde_json::Value>| {
        let gateway = gateway.clone();
        async move {
            let conn = auth::handshake(&socket, auth.0.ok(), &gateway).await?;
            // Handlers go on before the connect packet is sent: the connect
            // handler runs as a spawned task, and a client may emit as soon
            // as it sees the packet.
            attach_handlers(&socket, conn, gateway);
            Ok::<(), &'static str>(())
        }
    };
    io.ns(fanout::NAMESPACE, on_connect.with(handshake))
}

/// Runs after the connect packet went out.
fn on_connect<A: Adapter>(socket: SocketRef<A>, gateway: Arc<Gateway<A>>) {
    let Some(conn) = socket.extensions.get::<Arc<Conn>>() else {
        // The handshake middleware always inserts it; without it nothing can be served.
        let _ = socket.disconnect();
        return;
    };
    metrics::counter!(names::CONNECTIONS_OPENED, "transport" => Transport::from(socket.transport_type())).increment(1);
    auth::on_connected(&socket, &conn, &gateway);
}

fn attach_handlers<A: Adapter>(socket: &SocketRef<A>, conn: Arc<Conn>, gateway: Arc<Gateway<A>>) {
    socket.extensions.insert(conn.clone());
    macro_rules! route {
        ($event:literal, $handler:path) => {
            route!($event, $handler, |_conn: &Conn| None::<conn::Turn>)
        };
        ($event:literal, $handler:path, $queue:expr) => {{
            let (gateway, conn) = (gateway.clone(), conn.clone());
            socket.on($event, move |req: Request<A>| {
                // socketioxide calls this synchronously for each packet, in
                // arrival order, and spawns the future it returns: the event
                // budget is charged and a place in a queue is taken here, in
                // order, and a refused event never waits for a turn.
                let allowed = conn.allow_event();
                let turn = if allowed { ($queue)(&conn) } else { None };
                let (gateway, conn) = (gateway.clone(), conn.clone());
                async move {
                    if !allowed {
                        metrics::counter!(names::RATE_LIMITED, "limit" => Limit::Events).increment(1);
                        req.reply::<()>(Err(ApiError::new(ErrorCode::RateLimited, "too many events on this connection")));
                        return;
                    }
                    let _done = match turn {
                        Some((before, done)) => {
                            if let Some(before) = before {
                                let _ = before.await;
                            }
                            Some(done)
                        }
                        None => None,
                    };
                    $handler(req, conn, gateway).await
                }
            });
        }};
    }
    route!("authenticate", auth::on_authenticate);
    route!("locationupdate", location::on_location_update, |conn: &Conn| Some(conn.queue_update()));
    route!("subscribe", viewer::on_subscribe);
    route!("unsubscribe", viewer::on_unsubscribe);
    route!("providerjoin", viewer::on_provider_join);
    route!("join_room", rooms::on_join);
    route!("leave_room", rooms::on_leave);
    route!("chat", rooms::on_chat);
    route!("history", rooms::on_history);
    socket.on_disconnect(move |socket: SocketRef<A>, reason: DisconnectReason| {
        let (gateway, conn) = (gateway.clone(), conn.clone());
        async move {
            metrics::counter!(names::CONNECTIONS_CLOSED, "reason" => CloseReason::from(reason)).increment(1);
            conn.cancel_timer();
            conn.release_slot();
            gateway.fanout.forget_socket(socket.id);
            viewer::forget(&socket, &conn, &gateway).await;
            if let Some((fleet, vehicle)) = conn.take_presence() {
                gateway.vehicle_socket_closed(&fleet, &vehicle).await;
            }
        }
    });
}

/// Roles as the connections gauge labels them; `pending` has not authenticated yet.
const CONNECTION_ROLES: [&str; 4] = ["vehicle", "viewer", "dispatcher", "pending"];

impl<A: Adapter> Gateway<A> {
    /// Sets the gauges read at scrape time: open connections by role and
    /// transport (a polling socket that upgrades moves over), and vehicles
    /// connected here.
    pub fn sample_gauges(&self) {
        let mut counts = [[0u32; Transport::ALL.len()]; CONNECTION_ROLES.len()];
        if let Some(ns) = self.io.of(fanout::NAMESPACE) {
            for socket in ns.local().sockets() {
                let role = match socket.extensions.get::<Arc<Conn>>().and_then(|c| c.session()).map(|s| s.role) {
                    Some(Role::Vehicle) => 0,
                    Some(Role::Viewer) => 1,
                    Some(Role::Dispatcher) => 2,
                    None => 3,
                };
                // `ALL` lists the variants in declaration order.
                let transport = Transport::from(socket.transport_type()) as usize;
                counts[role][transport] += 1;
            }
        }
        for (role, row) in CONNECTION_ROLES.iter().zip(counts) {
            for (transport, n) in Transport::ALL.iter().zip(row) {
                metrics::gauge!(names::CONNECTIONS, "role" => *role, "transport" => *transport).set(f64::from(n));
            }
        }
        metrics::gauge!(names::VEHICLES_ONLINE).set(self.local_vehicles.count() as f64);
        metrics::gauge!(names::LAGGING_SOCKETS).set(self.fanout.lagging() as f64);
    }
}
