//! Assembles a serving process from its [`Config`]: the store and adapter
//! of the chosen mode, the gateway, the HTTP router with Socket.IO layered
//! on, the metrics listener, and graceful shutdown.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::DefaultBodyLimit};
use socketioxide::{SocketIo, SocketIoBuilder, adapter::Adapter};
use socketioxide_redis::{FredAdapter, RedisAdapterConfig, RedisAdapterCtr, drivers::fred::FredDriver};
use tokio::sync::{mpsc, watch};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    auth::{Authenticator, Keys, RemoteKeys},
    config::Config,
    demo,
    gateway::{self, Gateway},
    http::{self, HttpState},
    ids,
    redis_target::{RedisMode, RedisTarget, TargetError},
    relay,
    replication::{self, Announcement, Relay},
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

pub async fn serve(config: Config) -> Result<(), ServeError> {
    let metrics = crate::metrics::install()?;
    let upkeep = metrics.spawn_upkeep();
    let keys = Keys::from_config(&config)?;
    crate::redis_tls::install_crypto_provider();
    let target = RedisTarget::from_config(&config)?;
    let remote = RemoteKeys::from_config(&config, &keys)?;
    // Fetches at once; until the first fetch succeeds /readyz answers 503.
    let jwks_refresh = remote.as_ref().map(RemoteKeys::spawn_refresh);
    let auth = Arc::new(Authenticator::new(keys, &config).with_remote(remote));
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let wait_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics_task =
        tokio::spawn(crate::metrics::serve(config.metrics_addr, metrics.clone(), wait_stop(stop_rx.clone())));

    let result = match target {
        None => {
            tracing::info!("embedded mode: one node, state in memory");
            let store: Arc<dyn Store> = MemoryStore::new(Retention::from_config(&config));
            let (layer, io) = socketio_builder(&config).build_layer();
            let gateway = Arc::new(Gateway::new(config.clone(), auth, store, io.clone(), None, ids::new_session_id()));
            gateway::register(&io, gateway.clone());
            run(config.clone(), gateway, io, layer, None, stop_tx, &metrics).await
        }
        Some(target) => {
            let node_id = ids::new_session_id();
            let primary = match &target.mode {
                RedisMode::Sentinel(sentinel) => Some(PrimaryWatch::start(&target, sentinel).await?),
                _ => None,
            };
            let redis_store = RedisStore::new(
                &target,
                config.redis_pool_size,
                Retention::from_config(&config),
                node_id.clone(),
                primary.clone(),
            )?;
            redis_store.preflight(&target).await?;
            let store: Arc<dyn Store> = Arc::new(redis_store);
            let (relay, inbox) = Relay::start(&target, node_id.clone()).await.map_err(ServeError::Replication)?;
            let client = relay::subscriber_client(&target)?;
            if let Some(primary) = &primary {
                primary.reconnect_on_change(vec![relay.client(), client.clone()]);
            }
            let adapter =
                RedisAdapterCtr::new_with_fred_config(client, RedisAdapterConfig::new().with_prefix("fg-sio")).await?;
            let (layer, io) = socketio_builder(&config).with_adapter::<FredAdapter<_>>(adapter).build_layer();
            let gateway = Arc::new(Gateway::new(config.clone(), auth, store, io.clone(), Some(relay), node_id));
            gateway::register(&io, gateway.clone()).await?;
            let tls = target.tls.is_some();
            match &target.mode {
                RedisMode::Cluster { .. } => {
                    tracing::info!(
                        tls,
                        "replica mode: state and rooms shared through a redis cluster (sharded pub/sub)"
                    )
                }
                RedisMode::Sentinel(s) => {
                    tracing::info!(tls, master = %s.master, "replica mode: state and rooms shared through redis (sentinel)")
                }
                RedisMode::Single { .. } => tracing::info!(tls, "replica mode: state and rooms shared through redis"),
            }
            run(config.clone(), gateway, io, layer, Some(inbox), stop_tx, &metrics).await
        }
    };
    let _ = metrics_task.await;
    upkeep.abort();
    if let Some(task) = jwks_refresh {
        task.abort();
    }
    result
}

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

async fn run<A: Adapter>(
    config: Arc<Config>,
    gateway: Arc<Gateway<A>>,
    io: SocketIo<A>,
    layer: socketioxide::layer::SocketIoLayer<A>,
    inbox: Option<mpsc::Receiver<Announcement>>,
    stop: watch::Sender<bool>,
    exporter: &crate::metrics::Exporter,
) -> Result<(), ServeError> {
    if let Some(inbox) = inbox {
        tokio::spawn(replication::run_inbox(gateway.clone(), inbox));
    }
    let demo_task = config.demo.then(|| tokio::spawn(demo::run(gateway.clone(), config.demo_vehicles)));
    let presence_task = tokio::spawn(gateway::presence::run(gateway.clone()));
    let recovery_task = tokio::spawn(gateway::recovery::run(gateway.clone()));
    let deadline_task = tokio::spawn(gateway::deadline::run(gateway.clone()));
    let fanout_tasks = gateway::fanout::spawn(&gateway);
    let geofence_task = tokio::spawn(crate::geofence::sync::run(gateway.geofences.clone()));
    let limits_task = {
        let limits = gateway.limits.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limits.sweep();
            }
        })
    };
    let conflation_task = (config.batch_ms > 0).then(|| {
        tokio::spawn(gateway::fanout::run_conflation(gateway.clone(), Duration::from_millis(config.batch_ms)))
    });

    // Event outputs (section 12): webhooks and NATS, from the fleets' streams.
    let outputs = crate::outputs::Outputs::start(gateway.store.clone(), &config, gateway.node_id.clone()).await?;
    let outputs_stop = outputs.stopper();

    let accepting = Arc::new(AtomicBool::new(true));
    exporter.sample_with(Arc::new(Sampler { gateway: gateway.clone(), accepting: accepting.clone() }));
    let state =
        HttpState { backend: gateway.clone(), accepting: accepting.clone(), webhooks: outputs.webhooks.clone() };
    let app: Router = http::router(Arc::new(state))
        .layer(layer)
        .layer(cors(&config))
        .layer(DefaultBodyLimit::max(config.max_message_bytes));

    let listener =
        tokio::net::TcpListener::bind(config.addr).await.map_err(|err| ServeError::Bind { addr: config.addr, err })?;
    // Device ingest (section 13), off unless configured.
    let devices = crate::device::start(&config, gateway.clone()).await?;
    tracing::info!(addr = %config.addr, path = %config.socketio_req_path(), "listening");

    let grace = config.shutdown_grace();
    // Set when shutdown begins: the whole drain must end by then.
    let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel::<tokio::time::Instant>();
    let shutdown = {
        let io = io.clone();
        let accepting = accepting.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down: closing sockets");
            let deadline = tokio::time::Instant::now() + grace;
            let _ = deadline_tx.send(deadline);
            accepting.store(false, Ordering::Relaxed);
            devices.stop();
            // Leases given up now, so another replica delivers at once.
            outputs_stop.cancel();
            if let Some(t) = demo_task {
                t.abort();
            }
            presence_task.abort();
            recovery_task.abort();
            deadline_task.abort();
            limits_task.abort();
            geofence_task.abort();
            if let Some(t) = conflation_task {
                t.abort();
            }
            // Disconnect packets first, so clients reconnect elsewhere at once.
            // With Redis down the adapter's part of closing cannot finish:
            // bound it by the grace period.
            if tokio::time::timeout_at(deadline, io.close()).await.is_err() {
                tracing::warn!("sockets did not close within the grace period");
            }
        }
    };
    let listener = crate::net::Listener::new(listener, Duration::from_secs(config.write_timeout_secs.max(1)));
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<crate::net::PeerAddr>())
        .with_graceful_shutdown(shutdown);
    tokio::select! {
        r = server => r?,
        _ = async {
            match deadline_rx.await {
                Ok(deadline) => tokio::time::sleep_until(deadline).await,
                Err(_) => std::future::pending().await,
            }
        } => tracing::warn!("grace period over; closing remaining connections"),
    }
    outputs.stop(OUTPUTS_STOP_WITHIN).await;
    fanout_tasks.iter().for_each(tokio::task::JoinHandle::abort);
    if let Some(relay) = gateway.fanout.relay() {
        relay.close().await;
    }
    let _ = stop.send(true);
    Ok(())
}

/// How long the event outputs may take to give their leases up at shutdown.
const OUTPUTS_STOP_WITHIN: Duration = Duration::from_secs(5);

/// The gauges read at each scrape.
struct Sampler<A: Adapter> {
    gateway: Arc<Gateway<A>>,
    accepting: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl<A: Adapter> crate::metrics::Sample for Sampler<A> {
    async fn sample(&self) {
        self.gateway.sample_gauges();
        // The same answer /readyz would give now.
        let ready = self.accepting.load(Ordering::Relaxed)
            && self.gateway.auth.is_ready()
            && self.gateway.store.ping().await.is_ok();
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
