//! The pub/sub client of Redis: fred's subscriber client, which reconnects
//! with backoff, with its channels re-subscribed after each reconnect (see
//! `resubscribe_on_reconnect`). Replication ([`crate::replication`]) and
//! the Socket.IO adapter each run on one.

use std::time::Duration;

use fred::{
    clients::SubscriberClient,
    interfaces::{EventInterface, PubsubInterface},
    types::config::ReconnectPolicy,
};

use crate::{
    metrics::{StoreOp, names},
    redis_target::{RedisTarget, TargetError},
};

/// Why a pub/sub client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Client(#[from] fred::error::Error),
}

// Replication reports its start-up faults as text, this one among them.
impl From<RelayError> for String {
    fn from(e: RelayError) -> Self {
        e.to_string()
    }
}

/// Longest a pub/sub command (subscribe, publish by the adapter) may wait.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// Builds a pub/sub client that reconnects with backoff and re-subscribes
/// after a Redis restart. It is not connected yet: `init` it (the adapter's
/// driver does so itself).
pub fn subscriber_client(target: &RedisTarget) -> Result<SubscriberClient, RelayError> {
    let mut config = target.fred_config()?;
    // Under RESP2 a connection that has subscribed may not publish, and the
    // adapter does both on one client: every cross-replica emit would fail.
    config.version = fred::types::RespVersion::RESP3;
    let client = fred::types::Builder::from_config(config)
        .with_performance_config(|p| {
            // fred's default of 32 drops messages under any real load. Each
            // client pre-allocates about ten channels of this size (65 536
            // cost 78 MiB at idle); the reader hands messages on at once,
            // so a lag of thousands means the process is starved anyway.
            p.broadcast_channel_capacity = 8_192;
            // Without a timeout, commands wait for Redis forever while it is
            // down: emits across replicas and shutdown would hang with it.
            p.default_command_timeout = COMMAND_TIMEOUT;
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build_subscriber_client()?;
    resubscribe_on_reconnect(&client);
    Ok(client)
}

/// Re-subscribes tracked channels after every reconnect.
///
/// fred's own `manage_subscriptions` sends a bare `SUBSCRIBE` when only
/// shard channels are tracked (as with the adapter), which Redis refuses,
/// and then never re-subscribes the shard channels: delivery across
/// replicas would stay dead after a Redis restart.
fn resubscribe_on_reconnect(client: &SubscriberClient) {
    let client = client.clone();
    let mut reconnects = client.reconnect_rx();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match reconnects.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
            let channels: Vec<String> = client.tracked_channels().iter().map(|c| c.to_string()).collect();
            if !channels.is_empty()
                && let Err(e) = client.subscribe(channels).await
            {
                metrics::counter!(names::REDIS_ERRORS, "op" => StoreOp::Resubscribe).increment(1);
                tracing::warn!(error = %e, "re-subscribing channels failed");
            }
            // One SSUBSCRIBE per slot: its channels must all hash there.
            let slots = match fred::util::group_by_hash_slot(client.tracked_shard_channels()) {
                Ok(slots) => slots,
                Err(e) => {
                    tracing::warn!(error = %e, "grouping shard channels failed");
                    continue;
                }
            };
            for channels in slots.into_values() {
                if let Err(e) = client.ssubscribe(Vec::from(channels)).await {
                    metrics::counter!(names::REDIS_ERRORS, "op" => StoreOp::Resubscribe).increment(1);
                    tracing::warn!(error = %e, "re-subscribing shard channels failed");
                }
            }
            tracing::info!("redis pub/sub connected");
        }
    });
}
