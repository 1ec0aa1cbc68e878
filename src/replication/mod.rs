//! Replication: how positions accepted on one replica reach the viewers of
//! the others.
//!
//! The store's update script publishes each batch of a fleet's stored
//! positions as one message on the fleet's sharded channel (format and
//! channel names in [`wire`]). A replica listens to a fleet's channel only
//! while one of its own sockets watches that fleet ([`Relay::watch`]), skips
//! its own messages, and hands each message's positions to local fan-out
//! as one round ([`run_inbox`]).
//!
//! The channels are sharded (`SSUBSCRIBE`/`SPUBLISH`, Redis 7+): on a Redis
//! Cluster a fleet's channel lives on the shard that holds its keys, so
//! cross-replica traffic spreads over the shards with the fleets, and a
//! replica hears only the fleets its own clients watch.
//!
//! Pub/sub runs on fred's subscriber client, built (and re-subscribed
//! after each reconnect) by [`crate::relay::subscriber_client`].

pub mod wire;

use std::{collections::HashMap, sync::Arc, time::Duration};

use fred::{
    clients::SubscriberClient,
    interfaces::{ClientLike, EventInterface, PubsubInterface},
};
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use tokio::sync::{Mutex, mpsc};

use crate::{
    gateway::{Gateway, fanout::Outgoing},
    position::PositionKey,
    redis_target::RedisTarget,
};

pub use wire::position_channel;

/// Messages (batches) waiting for fan-out before new ones are dropped (and
/// counted): a stalled fan-out must not grow memory without bound.
const INBOX: usize = 8192;

/// A batch of positions another replica stored, still encoded.
pub struct Announcement(wire::Message);

pub struct Relay {
    client: SubscriberClient,
    watched: Mutex<HashMap<String, usize>>,
}

impl Relay {
    /// Connects and starts forwarding other replicas' messages (those not
    /// from `node_id`) to the returned receiver; [`run_inbox`] delivers them.
    pub async fn start(target: &RedisTarget, node_id: String) -> Result<(Self, mpsc::Receiver<Announcement>), String> {
        let client = crate::relay::subscriber_client(target)?;
        // The first connection is the pub/sub side's start-up check: a
        // certificate that does not verify fails here, and says so.
        client
            .init()
            .await
            .map_err(|e| crate::redis_tls::explain(target.tls.as_ref(), &target.describe(), &e.to_string()))?;
        let (tx, rx) = mpsc::channel(INBOX);
        let mut messages = client.message_rx();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let msg = match messages.recv().await {
                    Ok(msg) => msg,
                    Err(RecvError::Lagged(n)) => {
                        // Whole messages, of unknown size: the subscriber
                        // lagged before they were read.
                        metrics::counter!(crate::metrics::names::RELAY_DROPPED).increment(n);
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let Some(bytes) = msg.value.into_owned_bytes() else { continue };
                let Some(message) = wire::Message::decode(bytes.into()) else { continue };
                if message.is_from(&node_id) {
                    continue;
                }
                let n = message.len() as u64;
                metrics::counter!(crate::metrics::names::RELAY_RECEIVED).increment(n);
                if tx.try_send(Announcement(message)).is_err() {
                    metrics::counter!(crate::metrics::names::RELAY_DROPPED).increment(n);
                }
            }
        });
        Ok((Self { client, watched: Mutex::new(HashMap::new()) }, rx))
    }

    /// The pub/sub client, to be made to follow a new primary.
    pub fn client(&self) -> SubscriberClient {
        self.client.clone()
    }

    /// Starts listening to a fleet's positions (counted: one call per watcher).
    pub async fn watch(&self, fleet: &str) -> Result<(), fred::error::Error> {
        let mut watched = self.watched.lock().await;
        if let Some(n) = watched.get_mut(fleet) {
            *n += 1;
            return Ok(());
        }
        if let Err(e) = self.client.ssubscribe(position_channel(fleet)).await {
            metrics::counter!(crate::metrics::names::REDIS_ERRORS, "op" => "subscribe").increment(1);
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

/// The positions of a message, each with the geofence crossings that
/// follow it, ready for fan-out; other lines are skipped.
fn round(a: &Announcement) -> Vec<Outgoing> {
    let mut out: Vec<Outgoing> = Vec::new();
    for event in a.0.events() {
        if let Some(crossings) = wire::crossings(&event) {
            if let Some(last) = out.last_mut() {
                last.crossings.extend(crossings);
            }
            continue;
        }
        let Ok(key) = serde_json::from_slice::<PositionKey>(&event) else { continue };
        let Ok(encoded) = serde_json::from_slice::<Box<RawValue>>(&event) else { continue };
        out.push(Outgoing {
            fleet: key.fleet.into_owned(),
            vehicle: key.vehicle_id.into_owned(),
            lon: key.lon,
            lat: key.lat,
            ts: key.ts,
            encoded,
            received_at: key.received_at,
            relayed: true,
            wire: Default::default(),
            crossings: Vec::new(),
        });
    }
    out
}

/// Hands each message from other replicas to local fan-out, one round per
/// message, until the relay stops.
pub async fn run_inbox<A: Adapter>(gateway: Arc<Gateway<A>>, mut inbox: mpsc::Receiver<Announcement>) {
    while let Some(a) = inbox.recv().await {
        gateway.fanout.deliver_round(round(&a)).await;
    }
}
