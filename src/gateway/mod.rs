//! The Socket.IO side: the `/fleet` namespace and its handlers. The path
//! every position takes (parse → validate → store → fan out), shared with
//! the HTTP API, is [`publish`]. Handlers are generic over the adapter so
//! the embedded node and the Redis-backed replicas run the same code.

mod auth;
mod client_event;
mod conn;
pub mod deadline;
pub mod fanout;
pub mod handshake;
pub mod limits;
mod location;
pub mod presence;
pub mod publish;
pub mod recovery;
pub mod rooms;
pub mod viewer;

use std::sync::Arc;

use socketioxide::{SocketIo, adapter::Adapter, extract::SocketRef, handler::ConnectHandler, socket::DisconnectReason};
use tracing::Instrument;

pub use client_event::ClientEvent;
pub use conn::Conn;
pub use fanout::Fanout;
pub use publish::{Accepted, Source};

use crate::{
    auth::{Authenticator, Role},
    config::Config,
    error::{ApiError, ErrorCode},
    metrics::{AdapterOp, CloseReason, Limit, Transport, names},
    store::Store,
};

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
    pub deadlines: deadline::Deadlines<A>,
    /// Every fleet's geofence index on this replica (section 11).
    pub geofences: Arc<crate::geofence::Geofences>,
    /// Updates queued behind their fleet's store call in flight.
    batches: publish::Batches<A>,
    /// This gateway, for the batch tasks it starts.
    this: publish::This<A>,
}

impl<A: Adapter> Gateway<A> {
    pub fn new(
        config: Arc<Config>,
        auth: Arc<Authenticator>,
        store: Arc<dyn Store>,
        io: SocketIo<A>,
        relay: Option<crate::replication::Relay>,
        node_id: String,
    ) -> Self {
        let settings = fanout::Settings {
            conflate: config.batch_ms > 0,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            slow_viewer_timeout: std::time::Duration::from_secs(config.slow_viewer_secs),
        };
        Self {
            limits: limits::Limits::new(&config),
            geofences: crate::geofence::Geofences::new(
                store.clone(),
                config.geofence_max_vertices,
                config.geofences_max,
            ),
            deadlines: deadline::Deadlines::default(),
            config,
            auth,
            store,
            fanout: Fanout::new(io.clone(), relay, settings),
            io,
            node_id,
            local_vehicles: presence::LocalVehicles::default(),
            batches: publish::Batches::default(),
            this: publish::This::new(),
        }
    }
}

/// The room of every socket using a session, for revocation.
pub fn session_room(session_id: &str) -> String {
    format!("s/{session_id}")
}

impl<A: Adapter> Gateway<A> {
    /// The fleet namespace (`/fleet`): `None` only before it is registered.
    pub(crate) fn ns(&self) -> Option<socketioxide::operators::BroadcastOperators<A>> {
        self.fanout.ns()
    }

    /// Revokes a session: deletes it and disconnects its sockets on every
    /// replica. Whether it existed.
    pub async fn revoke(&self, session_id: &str) -> Result<bool, ApiError> {
        let existed = self.store.delete_session(session_id).await?;
        if let Some(ns) = self.ns()
            && let Err(e) = ns.to(session_room(session_id)).disconnect().await
        {
            adapter_failed(AdapterOp::Disconnect, &e);
            tracing::warn!(error = %e, "revoked session's sockets not all disconnected");
        }
        metrics::counter!(names::SESSIONS_REVOKED).increment(1);
        Ok(existed)
    }
}

/// Registers the `/fleet` namespace. With a Redis adapter the returned
/// future must be awaited, or the namespace never exists.
pub fn register<A: Adapter + socketioxide_core::adapter::DefinedAdapter>(
    io: &SocketIo<A>,
    gateway: Arc<Gateway<A>>,
) -> A::InitRes {
    publish::bind(&gateway);
    let on_connect = {
        let gateway = gateway.clone();
        move |socket: SocketRef<A>| {
            let gateway = gateway.clone();
            async move { on_connect(socket, gateway) }
        }
    };
    let handshake = move |socket: SocketRef<A>, auth: socketioxide::extract::TryData<serde_json::Value>| {
        let gateway = gateway.clone();
        // The id it arrived with (a restored socket takes back its old one
        // after this; its own span then says which).
        let span = tracing::info_span!("handshake", sid = %socket.id);
        async move {
            let conn = auth::handshake(&socket, auth.0.ok(), &gateway).await?;
            // Handlers go on before the connect packet is sent: the connect
            // handler runs as a spawned task, and a client may emit as soon
            // as it sees the packet.
            attach_handlers(&socket, conn, gateway);
            Ok::<(), &'static str>(())
        }
        .instrument(span)
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
    if gateway.recovery_enabled() {
        let span = conn.open_span(socket.id);
        tokio::spawn(async move { recovery::on_connected(&socket, &conn, &gateway).await }.instrument(span));
    }
}

/// The client→server events of the namespace (sections 3, 5 and 6).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    Authenticate,
    LocationUpdate,
    Subscribe,
    Unsubscribe,
    ProviderJoin,
    JoinRoom,
    LeaveRoom,
    Chat,
    History,
}

impl Route {
    const ALL: [Route; 9] = [
        Route::Authenticate,
        Route::LocationUpdate,
        Route::Subscribe,
        Route::Unsubscribe,
        Route::ProviderJoin,
        Route::JoinRoom,
        Route::LeaveRoom,
        Route::Chat,
        Route::History,
    ];

    fn event(self) -> &'static str {
        match self {
            Route::Authenticate => "authenticate",
            Route::LocationUpdate => "locationupdate",
            Route::Subscribe => "subscribe",
            Route::Unsubscribe => "unsubscribe",
            Route::ProviderJoin => "providerjoin",
            Route::JoinRoom => "join_room",
            Route::LeaveRoom => "leave_room",
            Route::Chat => "chat",
            Route::History => "history",
        }
    }

    fn from_event(event: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.event() == event)
    }

    /// Whether the event may change what a socket watches or its rooms
    /// (which a recovering socket's record keeps).
    fn changes_what_is_watched(self) -> bool {
        matches!(
            self,
            Route::Authenticate
                | Route::Subscribe
                | Route::Unsubscribe
                | Route::ProviderJoin
                | Route::JoinRoom
                | Route::LeaveRoom
        )
    }
}

/// Serves the socket's events through one handler that routes them by
/// name: socketioxide keeps a map of handlers per socket, and nine boxed
/// handlers in it were about 0.9 KiB of every idle connection. Events with
/// no route are ignored, as socketioxide ignores events nobody handles.
fn attach_handlers<A: Adapter>(socket: &SocketRef<A>, conn: Arc<Conn>, gateway: Arc<Gateway<A>>) {
    socket.extensions.insert(conn.clone());
    let span = conn.open_span(socket.id);
    {
        let (gateway, conn, span) = (gateway.clone(), conn.clone(), span.clone());
        socket.on_fallback(move |req: ClientEvent<A>| {
            // socketioxide calls this synchronously for each packet, in
            // arrival order, and spawns the future it returns: the event
            // budget is charged and a place in a queue is taken here, in
            // order, and a refused event never waits for a turn.
            let route = Route::from_event(&req.event);
            let allowed = route.is_none() || conn.allow_event();
            let turn = match route {
                Some(Route::LocationUpdate) if allowed => Some(conn.queue_update()),
                _ => None,
            };
            let (gateway, conn, span) = (gateway.clone(), conn.clone(), span.clone());
            async move {
                let Some(route) = route else { return };
                let socket = route.changes_what_is_watched().then(|| req.socket.clone());
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
                // The hot route runs inline; the others are boxed, so the
                // future spawned for every position stays as small as its
                // own path (tokio moves it several times before it runs).
                match route {
                    Route::LocationUpdate => return location::on_location_update(req, conn, gateway).await,
                    Route::Authenticate => Box::pin(auth::on_authenticate(req, conn.clone(), gateway.clone())).await,
                    Route::Subscribe => Box::pin(viewer::on_subscribe(req, conn.clone(), gateway.clone())).await,
                    Route::Unsubscribe => Box::pin(viewer::on_unsubscribe(req, conn.clone(), gateway.clone())).await,
                    Route::ProviderJoin => Box::pin(viewer::on_provider_join(req, conn.clone(), gateway.clone())).await,
                    Route::JoinRoom => Box::pin(rooms::on_join(req, conn.clone(), gateway.clone())).await,
                    Route::LeaveRoom => Box::pin(rooms::on_leave(req, conn.clone(), gateway.clone())).await,
                    Route::Chat => Box::pin(rooms::on_chat(req, conn.clone(), gateway.clone())).await,
                    Route::History => return Box::pin(rooms::on_history(req, conn, gateway)).await,
                }
                if let Some(socket) = socket {
                    Box::pin(recovery::after_change(&socket, &conn, &gateway)).await;
                }
            }
            .instrument(span)
        });
    }
    socket.on_disconnect(move |socket: SocketRef<A>, reason: DisconnectReason| {
        let (gateway, conn, span) = (gateway.clone(), conn.clone(), span.clone());
        async move {
            metrics::counter!(names::CONNECTIONS_CLOSED, "reason" => CloseReason::from(reason)).increment(1);
            // Before its subscriptions are dropped: its record keeps them.
            recovery::on_disconnect(&socket, &conn, &gateway).await;
            gateway.deadlines.clear(&conn);
            conn.release_slot();
            gateway.fanout.forget_socket(socket.id);
            viewer::forget(&socket, &conn, &gateway).await;
            if let Some((fleet, vehicle)) = conn.take_presence() {
                gateway.vehicle_socket_closed(&fleet, &vehicle).await;
            }
        }
        .instrument(span)
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
        if let Some(ns) = self.ns() {
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
