//! Event outputs (contract section 12): every event of a fleet's stream
//! handed on to the fleet's webhooks and, when configured, to NATS
//! JetStream, in order, at least once, by one replica at a time.
//!
//! - [`registration`] reads and checks a webhook registration, and is
//!   what the HTTP API writes through.
//! - `supervisor` runs on every replica: it finds the fleets' outputs
//!   (webhook registrations, fleets with events for NATS) and keeps one
//!   `runner` per (fleet, output).
//! - `runner` takes the output's `lease` on its fleet, reads the
//!   stream after the output's cursor, hands events to the output's sink
//!   ([`webhook`], [`nats`]), and saves the cursor (under the lease) once
//!   they are taken. A replica that dies loses the lease when it lapses,
//!   and another takes over from the saved cursor: nothing is lost, and
//!   what the dead one delivered after its last save is delivered again.
//! - [`guard`] keeps webhooks off private networks.

pub mod guard;
mod lease;
pub mod nats;
pub mod registration;
mod runner;
mod supervisor;
pub mod webhook;

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use registration::{WebhookError, Webhooks};

use crate::{
    config::Config,
    metrics::{Output, OutputOutcome, names},
    store::{Store, events::Event},
};

/// Why the outputs could not start.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("webhook client: {0}")]
    Client(String),
    #[error("{0}")]
    Config(String),
}

/// How the outputs run, from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub lease: Duration,
    pub webhook: webhook::Settings,
    pub nats: Option<nats::Settings>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Result<Self, OutputError> {
        let nats = config.nats_url.as_deref().map(|url| nats::Settings::new(url, &config.nats_stream)).transpose()?;
        if nats.is_some() && config.events_max == 0 {
            return Err(OutputError::Config(
                "FLEETGATE_NATS_URL needs the event stream: FLEETGATE_EVENTS_MAX must be above 0".into(),
            ));
        }
        Ok(Self {
            lease: Duration::from_secs(config.output_lease_secs.max(2)),
            webhook: webhook::Settings::from_config(config),
            nats,
        })
    }
}

/// The running outputs of this replica.
pub struct Outputs {
    /// What the HTTP API registers webhooks through.
    pub webhooks: Arc<Webhooks>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Outputs {
    /// Starts the supervisor. `node` is this replica's id (its leases'
    /// holder); cancelling `cancel` starts stopping the outputs
    /// ([`Outputs::stop`] waits for them).
    pub async fn start(
        store: Arc<dyn Store>,
        config: &Config,
        node: String,
        cancel: CancellationToken,
    ) -> Result<Self, OutputError> {
        let settings = Settings::from_config(config)?;
        let nudge = Arc::new(Notify::new());
        let webhooks =
            Arc::new(Webhooks::new(store.clone(), guard::Guard::new(config.webhook_allow_private), nudge.clone()));
        let client = webhook::Client::new(&settings.webhook)?;
        let nats = match &settings.nats {
            Some(s) => Some(nats::Publisher::connect(s).await?),
            None => None,
        };
        let supervisor = supervisor::Supervisor { store, settings, node, client, nats, nudge, stop: cancel.clone() };
        let task = tokio::spawn(supervisor.run());
        Ok(Self { webhooks, cancel, task })
    }

    /// Stops every runner, each giving its lease up so another replica
    /// takes over at once, waiting at most `within`.
    pub async fn stop(self, within: Duration) {
        self.cancel.cancel();
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("event outputs did not stop in time; their leases lapse by themselves");
        }
    }
}

/// Counts one attempt's outcome for `event`.
fn count(output: Output, event: &Event, outcome: OutputOutcome) {
    metrics::counter!(names::OUTPUT_EVENTS, "output" => output, "type" => event.kind, "outcome" => outcome)
        .increment(1);
    if outcome == OutputOutcome::Delivered {
        // The stream id's time is when the store appended the event.
        let lag_ms = crate::clock::now_ms().saturating_sub(i64::try_from(event.id.ms).unwrap_or(i64::MAX)).max(0);
        metrics::histogram!(names::OUTPUT_LAG_SECONDS, "output" => output).record(lag_ms as f64 / 1000.0);
    }
}

/// The contract `id` of an event of `fleet`.
fn event_id(fleet: &str, event: &Event) -> String {
    format!("{fleet}/{}", event.id)
}

/// Exponential backoff with jitter: about `base` · 2^(attempt−1), at most
/// `cap`, each wait drawn between half and all of it (so outputs that
/// failed together do not retry together).
fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(cap);
    exp.mul_f64(rand::random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let (base, cap) = (Duration::from_millis(500), Duration::from_secs(300));
        for attempt in 1..40 {
            let full = base.saturating_mul(1u32 << (attempt - 1).min(20)).min(cap);
            let wait = backoff(attempt, base, cap);
            assert!(wait >= full / 2 && wait <= full, "attempt {attempt}: {wait:?} of {full:?}");
        }
        assert!(backoff(30, base, cap) <= cap);
    }
}
