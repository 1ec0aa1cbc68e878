//! Sentinel mode: which Redis is the primary now, and the command
//! connection that follows it.
//!
//! [`PrimaryWatch`] asks the Sentinels for the master's address (checked
//! with `ROLE` by redis-rs) at start-up, then every second and whenever a
//! command hints the primary moved (`READONLY`, a dropped connection, a
//! write no replica took). Both drivers follow what it finds: the store's
//! connections are rebuilt for the new address, fred's pub/sub clients are
//! made to reconnect (fred asks the Sentinels again on reconnect; on its
//! own it would stay subscribed on a demoted primary, which still hears
//! the new primary's replicated publishes but whose own publishes reach
//! no one).
//!
//! [`PrimaryConnection`] is also where a write waits for its replicas:
//! Redis replicates asynchronously, so a write the old primary took just
//! before a failover can vanish with it. Each write is followed, in the
//! same pipeline, by `WAIT <n>`; fewer than `n` replicas holding it turns
//! the reply into an error, and the client is told `unavailable` rather
//! than `ok`.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager},
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};
use tokio::sync::{Notify, watch};

use crate::{
    redis_target::{RedisTarget, SentinelTarget},
    redis_tls,
};

/// How often the Sentinels are asked, failing any hint from a command.
const POLL: Duration = Duration::from_secs(1);

/// Longest one asking of the Sentinels may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Milliseconds a write waits for its replicas: within the store's 2 s
/// bound of a call, with room for the write itself.
const WAIT_MS: u64 = 1000;

/// Why the primary could not be found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    /// The Sentinel client could not be built from the settings.
    #[error(transparent)]
    Client(#[from] RedisError),
    /// No Sentinel named a reachable primary: why, in terms of the
    /// settings to look at (`redis_tls::explain`).
    #[error("{0}")]
    Unreachable(String),
}

/// Why one asking of the Sentinels found no primary.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("no sentinel answered in time")]
    Timeout,
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// The primary the Sentinels name.
#[derive(Clone)]
pub struct Primary {
    /// `host:port` as the Sentinels gave it.
    pub address: String,
    /// A client for it, with the target's TLS and credentials.
    pub client: redis::Client,
}

pub struct PrimaryWatch {
    current: watch::Sender<Primary>,
    recheck: Notify,
}

impl PrimaryWatch {
    /// Asks the Sentinels for the primary (an error here is a start-up
    /// error) and keeps asking in the background.
    pub async fn start(target: &RedisTarget, sentinel: &SentinelTarget) -> Result<Arc<Self>, SentinelError> {
        let mut client = sentinel_client(target, sentinel)?;
        let first = resolve(&mut client).await.map_err(|e| {
            let what = format!("the Sentinels {} (master `{}`)", target.describe(), sentinel.master);
            SentinelError::Unreachable(redis_tls::explain(target.tls.as_ref(), &what, &e.to_string()))
        })?;
        tracing::info!(primary = %first.address, master = %sentinel.master, "redis primary found through sentinel");
        let (current, _) = watch::channel(first);
        let watch = Arc::new(Self { current, recheck: Notify::new() });
        tokio::spawn(follow(Arc::downgrade(&watch), client));
        Ok(watch)
    }

    pub fn current(&self) -> Primary {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Primary> {
        self.current.subscribe()
    }

    /// Asks the Sentinels now rather than at the next poll.
    pub fn recheck(&self) {
        self.recheck.notify_one();
    }

    /// Makes fred's clients reconnect (to the primary the Sentinels name
    /// then) each time the primary moves.
    pub fn reconnect_on_change(&self, clients: Vec<fred::clients::SubscriberClient>) {
        let mut changes = self.subscribe();
        tokio::spawn(async move {
            use fred::interfaces::ClientLike;
            while changes.changed().await.is_ok() {
                for client in &clients {
                    if let Err(e) = client.force_reconnection().await {
                        tracing::warn!(error = %e, "pub/sub reconnection to the new primary failed");
                    }
                }
            }
        });
    }
}

async fn follow(watch: Weak<PrimaryWatch>, mut client: SentinelClient) {
    loop {
        {
            let Some(watch) = watch.upgrade() else { return };
            let _ = tokio::time::timeout(POLL, watch.recheck.notified()).await;
        }
        let found = resolve(&mut client).await;
        let Some(watch) = watch.upgrade() else { return };
        match found {
            Ok(primary) if primary.address != watch.current.borrow().address => {
                tracing::warn!(from = %watch.current.borrow().address, to = %primary.address, "redis primary moved");
                watch.current.send_replace(primary);
            }
            Ok(_) => {}
            Err(e) => {
                metrics::counter!(crate::metrics::names::REDIS_ERRORS, "op" => "sentinel").increment(1);
                tracing::debug!(error = %e, "asking the sentinels for the primary failed");
            }
        }
    }
}

async fn resolve(client: &mut SentinelClient) -> Result<Primary, ResolveError> {
    let found =
        tokio::time::timeout(RESOLVE_TIMEOUT, client.async_get_client()).await.map_err(|_| ResolveError::Timeout)??;
    Ok(Primary { address: found.get_connection_info().addr().to_string(), client: found })
}

fn sentinel_client(target: &RedisTarget, s: &SentinelTarget) -> Result<SentinelClient, RedisError> {
    let tls = target.tls.is_some();
    let sentinels = s.sentinels.iter().map(|n| {
        if tls {
            redis::ConnectionAddr::TcpTls { host: n.host.clone(), port: n.port, insecure: false, tls_params: None }
        } else {
            redis::ConnectionAddr::Tcp(n.host.clone(), n.port)
        }
    });
    let mut builder = SentinelClientBuilder::new(sentinels, &s.master, SentinelServerType::Master)?
        // RESP3, as on the other modes' connections: a connection hears
        // of its own loss and reconnects at once.
        .set_client_to_redis_protocol(redis::ProtocolVersion::RESP3);
    if let Some(tls) = &target.tls {
        builder = builder
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_redis_certificates(tls.redis_certificates())
            .set_client_to_sentinel_certificates(tls.redis_certificates());
    }
    if let Some(user) = &s.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = &s.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(user) = &s.sentinel_username {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = &s.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    builder.build()
}

/// A command connection to the primary that makes writes wait for
/// replicas and tells the [`PrimaryWatch`] (if any) when the primary may
/// have moved.
#[derive(Clone)]
pub struct PrimaryConnection {
    inner: ConnectionManager,
    watch: Option<Arc<PrimaryWatch>>,
    /// Replicas each write must reach (0: no `WAIT`).
    replicas: u32,
    /// Hashes of scripts that only read, sent without a `WAIT`.
    read_scripts: Arc<[String]>,
}

impl PrimaryConnection {
    pub fn new(
        inner: ConnectionManager,
        watch: Option<Arc<PrimaryWatch>>,
        replicas: u32,
        read_scripts: Arc<[String]>,
    ) -> Self {
        Self { inner, watch, replicas, read_scripts }
    }

    /// Errors that say this is not (or no longer) the primary.
    fn note(&self, error: &RedisError) {
        let moved = error.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || error.is_unrecoverable_error()
            || error.kind() == ErrorKind::Client;
        if moved && let Some(watch) = &self.watch {
            watch.recheck();
        }
    }
}

/// Whether `cmd` may write (and so must wait for replicas): everything but
/// the reads the store makes and the scripts it knows only read.
fn is_write(cmd: &Cmd, read_scripts: &[String]) -> bool {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let Some(name) = args.next() else { return false };
    match name.to_ascii_uppercase().as_slice() {
        b"GET" | b"XREVRANGE" | b"XRANGE" | b"SMEMBERS" | b"PING" | b"SCRIPT" | b"WAIT" | b"ROLE" | b"INFO"
        | b"HGET" | b"ZRANGE" | b"ZSCORE" => false,
        b"EVALSHA" => args.next().is_none_or(|sha| !read_scripts.iter().any(|r| r.as_bytes() == sha)),
        _ => true,
    }
}

/// The error of a write fewer replicas took than asked.
fn not_replicated(got: i64, wanted: u32) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "write not replicated",
        format!("{got} of {wanted} replicas acknowledged it in {WAIT_MS} ms"),
    ))
}

impl ConnectionLike for PrimaryConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = if self.replicas > 0 && is_write(cmd, &self.read_scripts) {
                let mut pipe = Pipeline::new();
                pipe.add_command(cmd.clone());
                pipe.cmd("WAIT").arg(self.replicas).arg(WAIT_MS);
                match self.inner.req_packed_commands(&pipe, 0, 2).await {
                    Ok(mut replies) if replies.len() == 2 => {
                        let acked = replies.pop();
                        let reply = replies.pop().map(Value::extract_error);
                        match (reply, acked) {
                            (Some(Err(e)), _) => Err(e),
                            (Some(Ok(reply)), Some(Value::Int(n))) if n >= i64::from(self.replicas) => Ok(reply),
                            (Some(Ok(_)), Some(Value::Int(n))) => Err(not_replicated(n, self.replicas)),
                            (_, other) => Err(RedisError::from((
                                ErrorKind::UnexpectedReturnType,
                                "unexpected WAIT reply",
                                format!("{other:?}"),
                            ))),
                        }
                    }
                    Ok(replies) => Err(RedisError::from((
                        ErrorKind::UnexpectedReturnType,
                        "unexpected pipeline reply",
                        format!("{} replies", replies.len()),
                    ))),
                    Err(e) => Err(e),
                }
            } else {
                self.inner.req_packed_command(cmd).await
            };
            if let Err(e) = &result {
                self.note(e);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        // Pipelines carry presence refreshes only, which the next refresh
        // repeats: not worth a WAIT.
        Box::pin(async move {
            let result = self.inner.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                self.note(e);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::is_write;

    #[test]
    fn writes_wait_for_replicas_and_reads_do_not() {
        let reads = ["abc123".to_owned()];
        let mut set = redis::cmd("SET");
        set.arg("fg:session:x").arg("{}");
        assert!(is_write(&set, &reads));
        let mut script = redis::cmd("EVALSHA");
        script.arg("def456").arg(1).arg("k");
        assert!(is_write(&script, &reads), "an unknown script may write");
        let mut read_script = redis::cmd("EVALSHA");
        read_script.arg("abc123").arg(1).arg("k");
        assert!(!is_write(&read_script, &reads));
        for read in ["GET", "PING", "SMEMBERS", "XREVRANGE", "SCRIPT"] {
            assert!(!is_write(&redis::cmd(read), &reads), "{read}");
        }
    }
}
