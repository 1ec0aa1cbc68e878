//! Every replica's outputs supervisor: every few seconds (and at once when
//! a webhook is registered or deleted here) it lists the outputs there
//! are — each registered webhook of each fleet, and NATS for each fleet
//! with events when it is configured — and keeps one [`runner`] per
//! output. All replicas run one for every output; the output's lease
//! decides which of them delivers.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Settings, nats,
    registration::Registration,
    runner::{self, Identity},
    webhook,
};
use crate::{
    metrics::Output,
    store::{Store, StoreError, webhooks},
};

/// How often the outputs are listed again.
const DISCOVER_EVERY: Duration = Duration::from_secs(2);
/// How long a stopping runner may take to give its lease up.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// A (fleet, consumer) pair.
type Key = (String, String);

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// A webhook's registration as last seen, and where to send a new one.
    record: Option<(String, watch::Sender<Arc<Registration>>)>,
}

/// One output found by a discovery round.
enum Found {
    Webhook { id: String, record: String, registration: Registration },
    Nats,
}

/// What the supervisor works with; the runners it keeps are its own.
pub struct Supervisor {
    pub store: Arc<dyn Store>,
    pub settings: Settings,
    /// This replica's id: the holder of the leases its runners take.
    pub node: String,
    pub client: webhook::Client,
    pub nats: Option<Arc<nats::Publisher>>,
    /// Notified when a webhook is registered or deleted here.
    pub nudge: Arc<Notify>,
    pub stop: CancellationToken,
}

impl Supervisor {
    pub async fn run(self) {
        let mut running = HashMap::new();
        loop {
            match self.discover().await {
                Ok(found) => self.reconcile(&mut running, found),
                Err(e) => tracing::warn!(error = %e, "event outputs not listed; keeping those running"),
            }
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = self.nudge.notified() => {}
                () = tokio::time::sleep(DISCOVER_EVERY) => {}
            }
        }
        for r in running.values() {
            r.stop.cancel();
        }
        let tasks = running.into_values().map(|r| r.task);
        let _ = tokio::time::timeout(STOP_WITHIN, futures_util::future::join_all(tasks)).await;
    }

    async fn discover(&self) -> Result<Vec<(Key, Found)>, StoreError> {
        let mut found = Vec::new();
        if !self.store.events().enabled() {
            return Ok(found);
        }
        let registry = self.store.webhooks();
        for fleet in registry.webhook_fleets().await? {
            for (id, record) in registry.webhooks(&fleet).await? {
                let Some(registration) = Registration::from_record(&record) else {
                    tracing::warn!(fleet, webhook = id, "unreadable webhook registration skipped");
                    continue;
                };
                found.push(((fleet.clone(), webhooks::consumer(&id)), Found::Webhook { id, record, registration }));
            }
        }
        if self.nats.is_some() {
            for fleet in self.store.events().fleets().await? {
                found.push(((fleet, NATS_CONSUMER.to_owned()), Found::Nats));
            }
        }
        Ok(found)
    }

    /// Keeps one runner per output found: starts the new ones, stops
    /// those no longer found (or finished), and hands a changed webhook
    /// registration to its runner.
    fn reconcile(&self, running: &mut HashMap<Key, Running>, found: Vec<(Key, Found)>) {
        let wanted: HashSet<Key> = found.iter().map(|(k, _)| k.clone()).collect();
        running.retain(|key, r| {
            let keep = wanted.contains(key) && !r.task.is_finished();
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for (key, output) in found {
            if let Some(r) = running.get_mut(&key) {
                if let (Found::Webhook { record, registration, .. }, Some((seen, tx))) = (&output, &mut r.record)
                    && record != seen
                {
                    record.clone_into(seen);
                    let _ = tx.send(Arc::new(registration.clone()));
                }
                continue;
            }
            let started = self.start(&key, output);
            running.insert(key, started);
        }
    }

    fn start(&self, key: &Key, output: Found) -> Running {
        let (fleet, consumer) = key.clone();
        let stop = self.stop.child_token();
        let (store, ttl) = (self.store.clone(), self.settings.lease);
        let identity = |output, needs_cursor| Identity {
            fleet: fleet.clone(),
            consumer: consumer.clone(),
            holder: self.node.clone(),
            output,
            needs_cursor,
        };
        match output {
            Found::Webhook { id, record, registration } => {
                let (tx, rx) = watch::channel(Arc::new(registration));
                let sink = webhook::WebhookSink::new(self.client.clone(), fleet.clone(), id, rx);
                let task = tokio::spawn(runner::run(store, identity(Output::Webhook, true), ttl, sink, stop.clone()));
                Running { stop, task, record: Some((record, tx)) }
            }
            Found::Nats => {
                let task = match &self.nats {
                    Some(publisher) => {
                        let sink = nats::NatsSink::new(publisher.clone(), fleet.clone());
                        tokio::spawn(runner::run(store, identity(Output::Nats, false), ttl, sink, stop.clone()))
                    }
                    None => tokio::spawn(async {}),
                };
                Running { stop, task, record: None }
            }
        }
    }
}

/// The NATS output's consumer and lease name in each fleet's stream.
pub const NATS_CONSUMER: &str = "nats";
