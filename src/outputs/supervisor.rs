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

pub struct Supervisor {
    store: Arc<dyn Store>,
    settings: Settings,
    node: String,
    client: webhook::Client,
    nats: Option<Arc<nats::Publisher>>,
    nudge: Arc<Notify>,
    stop: CancellationToken,
    running: HashMap<Key, Running>,
}

impl Supervisor {
    pub fn new(
        store: Arc<dyn Store>,
        settings: Settings,
        node: String,
        client: webhook::Client,
        nats: Option<Arc<nats::Publisher>>,
        nudge: Arc<Notify>,
        stop: CancellationToken,
    ) -> Self {
        Self { store, settings, node, client, nats, nudge, stop, running: HashMap::new() }
    }

    pub async fn run(mut self) {
        loop {
            match self.discover().await {
                Ok(found) => self.reconcile(found),
                Err(e) => tracing::warn!(error = %e, "event outputs not listed; keeping those running"),
            }
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = self.nudge.notified() => {}
                () = tokio::time::sleep(DISCOVER_EVERY) => {}
            }
        }
        for running in self.running.values() {
            running.stop.cancel();
        }
        let tasks = self.running.drain().map(|(_, r)| r.task);
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

    fn reconcile(&mut self, found: Vec<(Key, Found)>) {
        let wanted: HashSet<Key> = found.iter().map(|(k, _)| k.clone()).collect();
        self.running.retain(|key, running| {
            let keep = wanted.contains(key) && !running.task.is_finished();
            if !keep {
                running.stop.cancel();
            }
            keep
        });
        for (key, output) in found {
            if let Some(running) = self.running.get_mut(&key) {
                if let (Found::Webhook { record, registration, .. }, Some((seen, tx))) = (&output, &mut running.record)
                    && record != seen
                {
                    record.clone_into(seen);
                    let _ = tx.send(Arc::new(registration.clone()));
                }
                continue;
            }
            let running = self.start(&key, output);
            self.running.insert(key, running);
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
