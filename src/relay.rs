//! Positions accepted on other replicas. The store's update script
//! publishes every accepted position on its fleet's channel; a replica
//! listens to a fleet's channel only while one of its own sockets watches
//! that fleet, and hands what arrives to local fan-out.
//!
//! The channels are sharded (`SSUBSCRIBE`/`SPUBLISH`, Redis 7+): on a
//! Redis Cluster a fleet's channel lives on the shard that holds its keys,
//! so cross-replica traffic spreads over the shards with the fleets, and a
//! replica hears only the fleets its own clients watch.
//!
//! Pub/sub runs on fred's subscriber client, which reconnects with backoff;
//! the channels are re-subscribed after each reconnect (see
//! [`resubscribe_on_reconnect`]).

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use fred::{
    clients::SubscriberClient,
    interfaces::{ClientLike, EventInterface, PubsubInterface},
    types::config::ReconnectPolicy,
};
use tokio::sync::{Mutex, mpsc};

use crate::{
    metrics::{StoreOp, names},
    redis_target::RedisTarget,
    store::redis::position_channel,
};

/// Messages waiting for fan-out before new ones are dropped (and counted):
/// a stalled fan-out must not grow memory without bound.
const INBOX: usize = 8192;

/// Longest a pub/sub command (subscribe, publish by the adapter) may wait.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// Builds a pub/sub client that reconnects with backoff and re-subscribes
/// after a Redis restart. It is not connected yet: `init` it (the adapter's
/// driver does so itself).
pub fn subscriber_client(target: &RedisTarget) -> Result<SubscriberClient, fred::error::Error> {
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

/// A position published by a replica, still encoded.
pub struct Announcement {
    pub encoded: Bytes,
}

pub struct Relay {
    client: SubscriberClient,
    watched: Mutex<HashMap<String, usize>>,
}

impl Relay {
    /// Connects and starts forwarding other replicas' announcements (those
    /// not prefixed with `node_id`) to the returned receiver.
    pub async fn start(
        target: &RedisTarget,
        node_id: String,
    ) -> Result<(Self, mpsc::Receiver<Announcement>), fred::error::Error> {
        let client = subscriber_client(target)?;
        client.init().await?;
        let (tx, rx) = mpsc::channel(INBOX);
        let mut messages = client.message_rx();
        let own_prefix = format!("{node_id} ");
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let msg = match messages.recv().await {
                    Ok(msg) => msg,
                    Err(RecvError::Lagged(n)) => {
                        metrics::counter!(names::RELAY_DROPPED).increment(n);
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let Some(bytes) = msg.value.into_owned_bytes() else { continue };
                if bytes.starts_with(own_prefix.as_bytes()) {
                    continue;
                }
                let Some(space) = bytes.iter().position(|b| *b == b' ') else { continue };
                let encoded = Bytes::from(bytes).slice(space + 1..);
                metrics::counter!(names::RELAY_RECEIVED).increment(1);
                if tx.try_send(Announcement { encoded }).is_err() {
                    metrics::counter!(names::RELAY_DROPPED).increment(1);
                }
            }
        });
        Ok((Self { client, watched: Mutex::new(HashMap::new()) }, rx))
    }

    /// Starts listening to a fleet's positions (counted: one call per watcher).
    pub async fn watch(&self, fleet: &str) -> Result<(), fred::error::Error> {
        let mut watched = self.watched.lock().await;
        if let Some(n) = watched.get_mut(fleet) {
            *n += 1;
            return Ok(());
        }
        if let Err(e) = self.client.ssubscribe(position_channel(fleet)).await {
            metrics::counter!(names::REDIS_ERRORS, "op" => StoreOp::Subscribe).increment(1);
            return Err(e);
        }
        watched.insert(fleet.to_owned(), 1);
        Ok(())
    }

    /// Stops listening once the fleet's last local watcher is gone.
    pub async fn unwatch(&self, fleet: &str) {
        let mut watched = self.watched.lock().await;
        let Some(n) = watched.get_mut(fleet) else { return };
        *n -= 1;
        if *n == 0 {
            watched.remove(fleet);
            if let Err(e) = self.client.sunsubscribe(position_channel(fleet)).await {
                // The subscription is gone from fred's tracked set either way,
                // so it will not come back after a reconnect.
                tracing::debug!(error = %e, "unsubscribe failed");
            }
        }
    }

    pub async fn close(&self) {
        // A courtesy to Redis; not worth delaying the exit for.
        let _ = tokio::time::timeout(Duration::from_millis(300), self.client.quit()).await;
    }
}
