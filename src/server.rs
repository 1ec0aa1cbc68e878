//! Assembles a serving process from its [`Config`]: the store and adapter
//! of the chosen mode, the gateway, the HTTP router with Socket.IO layered
//! on (an [`App`]), the metrics listener, and graceful shutdown.
//!
//! Shutdown runs on two tokens and one set of tasks. `drain` is cancelled
//! when shutdown begins (SIGTERM or SIGINT): readiness turns 503 at once,
//! device ingest, the event outputs and the gateway's periodic work stop,
//! and every socket is sent a disconnect while connections drain for up
//! to the grace period. `end`, its parent, is cancelled once the drain is
//! over: it stops what had to outlive the drain (fan-out, the metrics
//! listener, the key refresh). Every background task is in one
//! [`JoinSet`], so none outlives the process's parts.

use std::{future::Future, sync::Arc, time::Duration};

use axum::{Router, extract::DefaultBodyLimit};
use socketioxide::{
    SocketIo, SocketIoBuilder,
    adapter::{Adapter, LocalAdapter},
};
use socketioxide_redis::{FredAdapter, RedisAdapterConfig, RedisAdapterCtr, drivers::fred::FredDriver};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_util::sync::{CancellationToken, DropGuard};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    auth::{Authenticator, Keys, RemoteKeys},
    config::Config,
    demo,
    gateway::{self, Gateway},
    http::{self, HttpState},
    ids,
    outputs::Outputs,
    redis_target::{RedisMode, RedisTarget, TargetError},
    redis_tls, relay,
    replication::{self, Relay},
    sentinel::{PrimaryWatch, SentinelError},
    store::{Retention, Store, memory::MemoryStore, redis::RedisStore},
};

/// Why a process could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Keys(#[from] crate::auth::KeyError),
    #[error("cannot listen on {addr}: {err}")]
    Bind { addr: std::net::SocketAddr, err: std::io::Error },
    #[error("metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    /// The Redis settings name no usable target.
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("redis: {0}")]
    Sentinel(#[from] SentinelError),
    #[error("redis: {0}")]
    PubSub(#[from] relay::RelayError),
    /// The Socket.IO adapter's driver could not start.
    #[error("redis: {0}")]
    Adapter(#[from] fred::error::Error),
    /// The `/fleet` namespace could not subscribe to its adapter channels.
    #[error("redis: {0}")]
    Namespace(#[from] socketioxide_redis::InitError<FredDriver>),
    #[error("redis: {0}")]
    Store(#[from] crate::store::redis::ConnectError),
    /// Replication could not start on Redis: it gives its start-up faults
    /// as text, explained in terms of the settings (`redis_tls::explain`).
    #[error("redis: {0}")]
    Replication(String),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Devices(#[from] crate::device::DeviceError),
    #[error("event outputs: {0}")]
    Outputs(#[from] crate::outputs::OutputError),
}

/// Serves until SIGTERM or SIGINT, then drains and returns.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let exporter = crate::metrics::install()?;
    let mut background = Background::new();
    background.until_end(exporter.upkeep());
    let auth = authenticator(&config, &mut background)?;
    let target = RedisTarget::from_config(&config)?;
    let config = Arc::new(config);
    {
        let (addr, exporter, end) = (config.metrics_addr, exporter.clone(), background.end.clone());
        background.tasks.spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, exporter, end.cancelled_owned()).await {
                tracing::warn!(error = %e, %addr, "metrics listener stopped");
            }
        });
    }
    match target {
        None => {
            tracing::info!("embedded mode: one node, state in memory");
            let store = MemoryStore::new(Retention::from_config(&config));
            App::local(config, auth, store, background).await?.serve(&exporter).await
        }
        Some(target) => replica(config, auth, &target, background).await?.serve(&exporter).await,
    }
}

/// The token verifier of `config`; with a JWKS, its refresh runs until
/// the process ends (until the first fetch, `/readyz` answers 503).
fn authenticator(config: &Config, background: &mut Background) -> Result<Arc<Authenticator>, ServeError> {
    let keys = Keys::from_config(config)?;
    // The JWKS client and both Redis drivers build their TLS on it.
    redis_tls::install_crypto_provider();
    let remote = RemoteKeys::from_config(config, &keys)?;
    if let Some(remote) = &remote {
        background.until_end(remote.clone().keep_fresh());
    }
    Ok(Arc::new(Authenticator::new(keys, config).with_remote(remote)))
}

/// The process's background tasks and the tokens that stop them.
struct Background {
    /// Cancelled when the process ends, after the drain.
    end: CancellationToken,
    /// Cancelled when shutdown begins; a child of `end`.
    drain: CancellationToken,
    tasks: JoinSet<()>,
    /// Cancels `end` when dropped, so what watches a token stops too.
    _ended: DropGuard,
}

impl Background {
    fn new() -> Self {
        let end = CancellationToken::new();
        Self { drain: end.child_token(), _ended: end.clone().drop_guard(), end, tasks: JoinSet::new() }
    }

    /// Runs `work` until shutdown begins.
    fn until_drain(&mut self, work: impl Future<Output = ()> + Send + 'static) {
        let drain = self.drain.clone();
        self.tasks.spawn(async move {
            drain.run_until_cancelled(work).await;
        });
    }

    /// Runs `work` until the process ends.
    fn until_end(&mut self, work: impl Future<Output = ()> + Send + 'static) {
        let end = self.end.clone();
        self.tasks.spawn(async move {
            end.run_until_cancelled(work).await;
        });
    }

    /// Keeps a task that was spawned elsewhere until the process ends:
    /// it is aborted then, or when the set is dropped.
    fn adopt_until_end(&mut self, task: JoinHandle<()>) {
        let end = self.end.clone();
        self.tasks.spawn(async move {
            let _abort = AbortOnDrop(task.abort_handle());
            end.run_until_cancelled(task).await;
        });
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One process's serving parts, assembled the same way in both modes: the
/// gateway with its background work and the event outputs running, and
/// the router the listener serves. Dropping it stops its background work.
pub struct App<A: Adapter> {
    router: Router,
    gateway: Arc<Gateway<A>>,
    io: SocketIo<A>,
    background: Background,
}

impl App<LocalAdapter> {
    /// The embedded mode's app on `store`, as `serve` runs it without
    /// Redis, minus the listeners: for driving the router in process
    /// (`tests/http_api.rs`).
    pub async fn embedded(config: Config, store: Arc<MemoryStore>) -> Result<Self, ServeError> {
        let mut background = Background::new();
        let auth = authenticator(&config, &mut background)?;
        Self::local(Arc::new(config), auth, store, background).await
    }

    async fn local(
        config: Arc<Config>,
        auth: Arc<Authenticator>,
        store: Arc<MemoryStore>,
        background: Background,
    ) -> Result<Self, ServeError> {
        let (layer, io) = socketio_builder(&config).build_layer();
        let gateway = Arc::new(Gateway::new(config, auth, store, io.clone(), None, ids::new_session_id()));
        gateway::register(&io, gateway.clone());
        Self::assemble(gateway, io, layer, background).await
    }
}

/// A replica's app: the store, replication and the Socket.IO adapter on
/// `target`.
async fn replica(
    config: Arc<Config>,
    auth: Arc<Authenticator>,
    target: &RedisTarget,
    mut background: Background,
) -> Result<App<impl Adapter>, ServeError> {
    let node_id = ids::new_session_id();
    let primary = match &target.mode {
        RedisMode::Sentinel(sentinel) => Some(PrimaryWatch::start(target, sentinel).await?),
        _ => None,
    };
    let redis_store = RedisStore::new(
        target,
        config.redis_pool_size,
        Retention::from_config(&config),
        node_id.clone(),
        primary.clone(),
    )?;
    redis_store.preflight(target).await?;
    let store: Arc<dyn Store> = Arc::new(redis_store);
    let (relay, inbox) = Relay::start(target, node_id.clone()).await.map_err(ServeError::Replication)?;
    let client = relay::subscriber_client(target)?;
    if let Some(primary) = &primary {
        primary.reconnect_on_change(vec![relay.client(), client.clone()]);
    }
    let adapter =
        RedisAdapterCtr::new_with_fred_config(client, RedisAdapterConfig::new().with_prefix("fg-sio")).await?;
    let (layer, io) = socketio_builder(&config).with_adapter::<FredAdapter<_>>(adapter).build_layer();
    let gateway = Arc::new(Gateway::new(config, auth, store, io.clone(), Some(relay), node_id));
    gateway::register(&io, gateway.clone()).await?;
    background.until_end(replication::run_inbox(gateway.clone(), inbox));
    let tls = target.tls.is_some();
    match &target.mode {
        RedisMode::Cluster { .. } => {
            tracing::info!(tls, "replica mode: state and rooms shared through a redis cluster (sharded pub/sub)")
        }
        RedisMode::Sentinel(s) => {
            tracing::info!(tls, master = %s.master, "replica mode: state and rooms shared through redis (sentinel)")
        }
        RedisMode::Single { .. } => tracing::info!(tls, "replica mode: state and rooms shared through redis"),
    }
    App::assemble(gateway, io, layer, background).await
}

impl<A: Adapter> App<A> {
    /// Starts the gateway's background work and the event outputs, and
    /// builds the router.
    async fn assemble(
        gateway: Arc<Gateway<A>>,
        io: SocketIo<A>,
        layer: socketioxide::layer::SocketIoLayer<A>,
        mut background: Background,
    ) -> Result<Self, ServeError> {
        let config = gateway.config.clone();
        if config.demo {
            background.until_drain(demo::run(gateway.clone(), config.demo_vehicles));
        }
        background.until_drain(gateway::presence::run(gateway.clone()));
        background.until_drain(gateway::recovery::run(gateway.clone()));
        background.until_drain(gateway::deadline::run(gateway.clone()));
        background.until_drain(crate::geofence::sync::run(gateway.geofences.clone()));
        let limits = gateway.limits.clone();
        background.until_drain(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limits.sweep();
            }
        });
        if config.batch_ms > 0 {
            let every = Duration::from_millis(config.batch_ms);
            background.until_drain(gateway::fanout::run_conflation(gateway.clone(), every));
        }
        // Fan-out delivers what is accepted while connections drain.
        for task in gateway::fanout::spawn(&gateway) {
            background.adopt_until_end(task);
        }

        // Event outputs (section 12): webhooks and NATS, from the fleets'
        // streams. Their leases are given up as soon as shutdown begins,
        // so another replica delivers at once.
        let outputs =
            Outputs::start(gateway.store.clone(), &config, gateway.node_id.clone(), background.drain.child_token())
                .await?;

        let state = HttpState {
            backend: gateway.clone(),
            draining: background.drain.clone(),
            webhooks: outputs.webhooks.clone(),
        };
        let router = http::router(Arc::new(state))
            .layer(layer)
            .layer(cors(&config))
            .layer(DefaultBodyLimit::max(config.max_message_bytes));
        let drain = background.drain.clone();
        background.tasks.spawn(async move {
            drain.cancelled().await;
            outputs.stop(OUTPUTS_STOP_WITHIN).await;
        });
        Ok(Self { router, gateway, io, background })
    }

    /// The router the listener serves: the HTTP API, probes and pages,
    /// with Socket.IO layered on.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Begins shutdown, as SIGTERM does: `/readyz` answers 503 from now
    /// on, and what stops with the drain stops (when serving, the sockets
    /// are closed and the connections drain).
    pub fn begin_shutdown(&self) {
        self.background.drain.cancel();
    }

    /// Listens on `FLEETGATE_ADDR` (and the device listeners) until
    /// shutdown, then drains within the grace period and stops the rest.
    async fn serve(self, exporter: &crate::metrics::Exporter) -> Result<(), ServeError> {
        let Self { router, gateway, io, mut background } = self;
        let config = gateway.config.clone();
        let drain = background.drain.clone();
        exporter.sample_with(Arc::new(Sampler { gateway: gateway.clone(), draining: drain.clone() }));

        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|err| ServeError::Bind { addr: config.addr, err })?;
        // Device ingest (section 13), off unless configured.
        // They stop taking positions when the drain begins.
        let _devices = crate::device::start(&config, gateway.clone(), drain.clone()).await?;
        tracing::info!(addr = %config.addr, path = %config.socketio_req_path(), "listening");
        {
            let drain = drain.clone();
            background.until_end(async move {
                shutdown_signal().await;
                drain.cancel();
            });
        }

        let grace = config.shutdown_grace();
        let closing = {
            let (drain, io) = (drain.clone(), io.clone());
            async move {
                drain.cancelled().await;
                tracing::info!("shutting down: closing sockets");
                // Disconnect packets first, so clients reconnect elsewhere at once.
                // With Redis down the adapter's part of closing cannot finish:
                // bound it by the grace period.
                if tokio::time::timeout(grace, io.close()).await.is_err() {
                    tracing::warn!("sockets did not close within the grace period");
                }
            }
        };
        let listener = crate::net::Listener::new(listener, Duration::from_secs(config.write_timeout_secs.max(1)));
        let server = axum::serve(listener, router.into_make_service_with_connect_info::<crate::net::PeerAddr>())
            .with_graceful_shutdown(closing);
        tokio::select! {
            r = server => r?,
            // The whole drain must end within the grace period.
            () = async {
                drain.cancelled().await;
                tokio::time::sleep(grace).await;
            } => tracing::warn!("grace period over; closing remaining connections"),
        }

        background.end.cancel();
        if let Some(relay) = gateway.fanout.relay() {
            relay.close().await;
        }
        // What is left: the event outputs giving their leases up, bounded
        // by their own limit, and the metrics listener's last scrape.
        while background.tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// How long the event outputs may take to give their leases up at shutdown.
const OUTPUTS_STOP_WITHIN: Duration = Duration::from_secs(5);

fn socketio_builder(config: &Config) -> SocketIoBuilder {
    let max = config.max_message_bytes;
    SocketIo::builder()
        .req_path(config.socketio_req_path())
        .max_buffer_size(config.socket_buffer)
        // Frames are small (positions, acks): 1 KiB reads keep an idle
        // socket's buffer small; larger frames take a few more reads.
        .ws_read_buffer_size(1024)
        .ws_write_window(config.write_window())
        .req_parts_filter(gateway::handshake::keep_only(config.client_ip_header.as_deref()))
        .max_payload(max as u64)
        .ws_max_message_size(max)
        .ws_max_frame_size(max)
        .ack_timeout(Duration::from_secs(5))
        .ping_interval(Duration::from_secs(config.ping_interval_secs.max(1)))
        .ping_timeout(Duration::from_secs(config.ping_timeout_secs.max(1)))
}

/// The gauges read at each scrape.
struct Sampler<A: Adapter> {
    gateway: Arc<Gateway<A>>,
    draining: CancellationToken,
}

#[async_trait::async_trait]
impl<A: Adapter> crate::metrics::Sample for Sampler<A> {
    async fn sample(&self) {
        self.gateway.sample_gauges();
        // The same answer /readyz would give now.
        let ready =
            !self.draining.is_cancelled() && self.gateway.auth.is_ready() && self.gateway.store.ping().await.is_ok();
        metrics::gauge!(crate::metrics::names::READY).set(f64::from(u8::from(ready)));
    }
}

fn cors(config: &Config) -> CorsLayer {
    let any = config.cors_origins.iter().any(|o| o == "*");
    let origins = if any || (config.demo && config.cors_origins.is_empty()) {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(config.cors_origins.iter().filter_map(|o| o.parse().ok()))
    };
    CorsLayer::new().allow_origin(origins).allow_methods(tower_http::cors::Any).allow_headers(tower_http::cors::Any)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
