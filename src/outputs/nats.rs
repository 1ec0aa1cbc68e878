//! The NATS JetStream output (`FLEETGATE_NATS_URL`): every event of every
//! fleet published to `fleetgate.<fleet>.<type>`, its payload the event
//! object as stored, with `Nats-Msg-Id` = the event id, so JetStream drops
//! a message published again after a fault (within the stream's
//! duplicate window). Events are read from the fleet's stream and the
//! cursor moves only past those JetStream acknowledged: while NATS is
//! down the output waits and retries, and loses nothing the stream still
//! keeps.
//!
//! The stream (`FLEETGATE_NATS_STREAM`) is created with subjects
//! `fleetgate.>` when it does not exist; an existing one is used as it is.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream;
use async_trait::async_trait;

use super::{
    OutputError,
    runner::{Progress, Sink},
};
use crate::{
    metrics::{Output, OutputOutcome},
    store::events::Event,
};

/// The subjects the created stream takes.
pub const SUBJECTS: &str = "fleetgate.>";
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(30);
/// How long publishing one batch may take, acks included.
const BATCH_TIMEOUT: Duration = Duration::from_secs(15);

/// The subject of an event: `fleetgate.<fleet>.<type>`.
pub fn subject(fleet: &str, event: &Event) -> String {
    format!("fleetgate.{fleet}.{}", event.kind.as_str())
}

#[derive(Clone)]
pub struct Settings {
    url: String,
    stream: String,
}

impl std::fmt::Debug for Settings {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings").field("stream", &self.stream).finish_non_exhaustive()
    }
}

impl Settings {
    pub fn new(url: &str, stream: &str) -> Result<Self, OutputError> {
        url.parse::<async_nats::ServerAddr>().map_err(|e| OutputError::Config(format!("FLEETGATE_NATS_URL: {e}")))?;
        let valid = !stream.is_empty()
            && stream.len() <= 255
            && !stream.chars().any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'));
        if !valid {
            return Err(OutputError::Config(format!(
                "FLEETGATE_NATS_STREAM: {stream:?} is not a JetStream stream name (no spaces, '.', '*', '>', '/')"
            )));
        }
        Ok(Self { url: url.to_owned(), stream: stream.to_owned() })
    }
}

/// The process's JetStream connection, shared by every fleet's sink.
pub struct Publisher {
    js: jetstream::Context,
    stream: String,
    /// Whether the stream is known to exist.
    ready: AtomicBool,
}

impl Publisher {
    /// Connects in the background (the process starts with NATS down, and
    /// publishes once it is up), reconnecting for as long as it runs.
    pub async fn connect(settings: &Settings) -> Result<Arc<Self>, OutputError> {
        let client = async_nats::ConnectOptions::new()
            .name(concat!("fleetgate/", env!("CARGO_PKG_VERSION")))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(|event| async move { tracing::info!(%event, "nats") })
            .connect(settings.url.as_str())
            .await
            .map_err(|e| OutputError::Config(format!("FLEETGATE_NATS_URL: {e}")))?;
        Ok(Arc::new(Self {
            js: jetstream::new(client),
            stream: settings.stream.clone(),
            ready: AtomicBool::new(false),
        }))
    }

    async fn ensure_stream(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let config = jetstream::stream::Config {
            name: self.stream.clone(),
            subjects: vec![SUBJECTS.to_owned()],
            ..Default::default()
        };
        self.js.get_or_create_stream(config).await.map_err(|e| format!("stream {}: {e}", self.stream))?;
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// One fleet's NATS sink.
pub struct NatsSink {
    publisher: Arc<Publisher>,
    fleet: String,
    /// Failed attempts in a row.
    failures: u32,
}

impl NatsSink {
    pub fn new(publisher: Arc<Publisher>, fleet: String) -> Self {
        Self { publisher, fleet, failures: 0 }
    }

    /// Publishes `events` in order, all sent before any ack is awaited;
    /// how many from the first were acknowledged, and the first error.
    async fn publish(&self, events: &[Event]) -> (usize, Option<String>) {
        if let Err(e) = self.publisher.ensure_stream().await {
            return (0, Some(e));
        }
        let mut acks = Vec::with_capacity(events.len());
        let mut error = None;
        for event in events {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", super::event_id(&self.fleet, event).as_str());
            let sent =
                self.publisher.js.publish_with_headers(subject(&self.fleet, event), headers, event.json.clone().into());
            match sent.await {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        let mut done = 0;
        for (ack, event) in acks.into_iter().zip(events) {
            match ack.await {
                Ok(_) => {
                    super::count(Output::Nats, event, OutputOutcome::Delivered);
                    done += 1;
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        (done, error)
    }
}

#[async_trait]
impl Sink for NatsSink {
    async fn deliver(&mut self, events: &[Event]) -> Progress {
        let (done, error) = match tokio::time::timeout(BATCH_TIMEOUT, self.publish(events)).await {
            Ok(result) => result,
            Err(_) => (0, Some("timed out".to_owned())),
        };
        let Some(error) = error.filter(|_| done < events.len()) else {
            self.failures = 0;
            return Progress { done, wait: None };
        };
        if let Some(event) = events.get(done) {
            super::count(Output::Nats, event, OutputOutcome::Retried);
        }
        self.failures = if done > 0 { 1 } else { self.failures + 1 };
        if self.failures == 1 {
            tracing::warn!(fleet = %self.fleet, error, "publishing to NATS failed; retrying with backoff");
        }
        Progress { done, wait: Some(super::backoff(self.failures, RETRY_BASE, RETRY_CAP)) }
    }
}
