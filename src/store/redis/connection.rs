//! The store's command connections to Redis: to one Redis, to a cluster,
//! or to the primary a Sentinel names (rebuilt when it names another),
//! how they are made (RESP3, TLS, timeouts) and how a call takes one.

use std::{
    sync::{Arc, RwLock, atomic::Ordering},
    time::Duration,
};

use redis::{
    Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo},
};

use super::{RedisStore, call::CALL_TIMEOUT, positions::POSITIONS};
use crate::{
    metrics::StoreOp,
    redis_target::{RedisMode, RedisTarget},
    redis_tls::RedisTls,
    sentinel::{PrimaryConnection, PrimaryWatch},
    store::StoreError,
};

/// Why the store could not be set up, or Redis not reached before serving.
/// Nothing here quotes a password: URLs are redacted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("FLEETGATE_REDIS_URL ({url}): {source}")]
    Url { url: String, source: redis::RedisError },
    #[error("redis connection: {0}")]
    Connection(redis::RedisError),
    #[error("redis cluster: {0}")]
    Cluster(redis::RedisError),
    #[error("sentinel mode without its primary watch")]
    NoPrimaryWatch,
    #[error(transparent)]
    Store(StoreError),
    /// The first round trip failed; the text says what to fix (TLS, auth).
    #[error("{0}")]
    Refused(String),
    #[error("Redis at {0} did not answer within 5 s")]
    NoAnswer(String),
}

/// The pool of connections to `target`; in Sentinel mode, to the primary
/// `primary` names, rebuilt each time it names another.
pub(super) fn pool(
    target: &RedisTarget,
    pool_size: usize,
    primary: Option<Arc<PrimaryWatch>>,
) -> Result<Arc<RwLock<Vec<Connection>>>, ConnectError> {
    let read_scripts: Arc<[String]> = Arc::from([POSITIONS.get_hash().to_owned()]);
    let wait_replicas = target.wait_replicas;
    let waited = move |client: redis::Client, watch: Option<Arc<PrimaryWatch>>| {
        let managers = single_managers(client, pool_size)?;
        Ok::<_, ConnectError>(if wait_replicas == 0 && watch.is_none() {
            managers.into_iter().map(Connection::Single).collect::<Vec<_>>()
        } else {
            managers
                .into_iter()
                .map(|m| {
                    Connection::Primary(PrimaryConnection::new(m, watch.clone(), wait_replicas, read_scripts.clone()))
                })
                .collect()
        })
    };
    let connections = match (&target.mode, &primary) {
        (RedisMode::Single { url }, _) => waited(single_client(url, target.tls.as_ref())?, None)?,
        (RedisMode::Cluster { nodes, username, password }, _) => cluster_connections(
            nodes.iter().map(|n| n.url(target.tls.is_some())).collect(),
            target.tls.as_ref(),
            username.as_deref(),
            password.as_deref(),
            pool_size,
        )?,
        (RedisMode::Sentinel(_), Some(watch)) => waited(watch.current().client, Some(watch.clone()))?,
        (RedisMode::Sentinel(_), None) => return Err(ConnectError::NoPrimaryWatch),
    };
    let connections = Arc::new(RwLock::new(connections));
    if let Some(watch) = primary {
        // A new primary: new connections; calls in flight on the old
        // ones finish (or fail) there.
        let (slots, mut changes) = (Arc::downgrade(&connections), watch.subscribe());
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let client = changes.borrow_and_update().client.clone();
                let Some(slots) = slots.upgrade() else { return };
                match waited(client, Some(watch.clone())) {
                    Ok(fresh) => {
                        if let Ok(mut current) = slots.write() {
                            *current = fresh;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "connecting to the new redis primary failed"),
                }
            }
        });
    }
    Ok(connections)
}

/// A command connection: to one Redis, to a cluster (which routes each
/// command by its key's slot and follows the topology by itself), or to
/// a primary whose writes wait for replicas (Sentinel mode, or
/// `FLEETGATE_REDIS_WAIT_REPLICAS`).
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Primary(PrimaryConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Primary(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Primary(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Primary(c) => c.get_db(),
        }
    }
}

impl RedisStore {
    /// The next connection in turn. Each is multiplexed (any number of
    /// calls in flight, pipelined) and reconnects by itself, so taking one
    /// costs nothing: a checked-out pool connection cost a PING round trip
    /// per call.
    pub(super) async fn conn(&self) -> Result<Connection, StoreError> {
        let connections = self.connections.read().map_err(|_| StoreError::Corrupt("connection pool".into()))?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % connections.len().max(1);
        connections.get(i).cloned().ok_or(StoreError::Timeout)
    }

    pub(super) fn pool_len(&self) -> usize {
        self.connections.read().map_or(1, |c| c.len())
    }

    /// Makes one round trip on each kind of connection before serving, so
    /// that a TLS or authentication problem is a start-up error that says
    /// what to fix, not a stream of `unavailable` answers.
    pub async fn preflight(&self, target: &RedisTarget) -> Result<(), ConnectError> {
        let mut conn = self.conn().await.map_err(ConnectError::Store)?;
        let ping = async {
            match &mut conn {
                Connection::Cluster(c) => {
                    let all = RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::AllSucceeded),
                    ));
                    c.route_command(redis::cmd("PING"), all).await.map(|_| ())
                }
                c => redis::cmd("PING").query_async::<()>(c).await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), ping).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ConnectError::Refused(crate::redis_tls::explain(
                target.tls.as_ref(),
                &target.describe(),
                &format!("{e:?}"),
            ))),
            Err(_) => Err(ConnectError::NoAnswer(target.describe())),
        }
    }

    pub(super) async fn ping_any(&self) -> Result<(), StoreError> {
        self.bounded(StoreOp::Ping, || async {
            let mut conn = self.conn().await?;
            match &mut conn {
                Connection::Single(c) => redis::cmd("PING").query_async::<()>(c).await?,
                Connection::Primary(c) => redis::cmd("PING").query_async::<()>(c).await?,
                // Ready while any primary answers: with one shard down the
                // fleets of the others are still served, and pulling every
                // replica out of service would stop those too.
                Connection::Cluster(c) => {
                    let any_primary = RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::OneSucceeded),
                    ));
                    c.route_command(redis::cmd("PING"), any_primary).await?;
                }
            }
            Ok(())
        })
        .await
    }
}

/// A client of one Redis, with the target's TLS when `rediss://`.
fn single_client(url: &str, tls: Option<&RedisTls>) -> Result<redis::Client, ConnectError> {
    // Errors quoting the URL would quote its password.
    let redacted = |source| ConnectError::Url { url: crate::redis_target::redact(url), source };
    // RESP3, so that each connection hears of its own loss (a push from
    // the driver) and reconnects at once, rather than failing the next
    // call made on it after Redis is back. (The relay's pub/sub already
    // needs RESP3, so this asks nothing more of Redis.)
    let info = url.into_connection_info().map_err(redacted)?;
    let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    match tls {
        Some(tls) => redis::Client::build_with_tls(info, tls.redis_certificates()).map_err(redacted),
        None => redis::Client::open(info).map_err(redacted),
    }
}

/// Multiplexed connections to one Redis.
fn single_managers(client: redis::Client, pool_size: usize) -> Result<Vec<ConnectionManager>, ConnectError> {
    // redis-rs gives up on a reply after 500 ms by default, which a busy
    // host can exceed; the 2 s bound of every store call governs instead.
    // Reconnection backs off briefly and gives up early: a call made
    // while Redis is down must fail within that bound, and the next call
    // starts a new attempt, so recovery follows Redis within a second.
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    (0..pool_size.max(1))
        .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ConnectError::Connection)
}

/// Connections to a cluster. Each one holds a link to every primary and
/// routes by slot, following `MOVED` and refreshing the slot map after a
/// failover. Like the single-Redis connections they connect in the
/// background and reconnect by themselves; it is the pub/sub clients that
/// must reach Redis for the process to start.
fn cluster_connections(
    seeds: Vec<String>,
    tls: Option<&RedisTls>,
    username: Option<&str>,
    password: Option<&str>,
    pool_size: usize,
) -> Result<Vec<Connection>, ConnectError> {
    let mut builder = ClusterClient::builder(seeds)
        .use_protocol(redis::ProtocolVersion::RESP3)
        // Redirections and reconnections within the 2 s bound of a call;
        // a write is retried only when it was not applied (a redirection
        // or a refused connection), or it is fenced (positions, chat).
        .retries(3)
        .min_retry_wait(20)
        .max_retry_wait(400);
    if let Some(tls) = tls {
        builder = builder.tls(redis::TlsMode::Secure).certs(tls.redis_certificates());
    }
    if let Some(user) = username {
        builder = builder.username(user);
    }
    if let Some(password) = password {
        builder = builder.password(password);
    }
    let client = builder.build().map_err(ConnectError::Cluster)?;
    // The connection's config takes over the client's timeouts.
    let config =
        redis::cluster::ClusterConfig::new().set_connection_timeout(CALL_TIMEOUT).set_response_timeout(CALL_TIMEOUT);
    Ok((0..pool_size.max(1))
        .map(|_| Connection::Cluster(client.get_pending_async_connection_with_config(config.clone())))
        .collect())
}
