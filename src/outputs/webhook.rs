//! Delivery to one webhook: each event it wants is POSTed alone, its body
//! the event object exactly as stored, signed with the webhook's secret
//! (`X-Fleetgate-Signature: sha256=<hex HMAC-SHA256 of the body>`). Any
//! 2xx is delivery; anything else (another status, a timeout, a refused
//! connection) is retried with exponential backoff and jitter, in order
//! (the next event waits), for `FLEETGATE_WEBHOOK_RETRY_SECS` from the
//! event's first attempt; then the event is counted as failed, logged, and
//! the webhook goes on with the next one. A target the address guard
//! refuses fails at once.
//!
//! Bounded: one client for the process with connect and total timeouts, no
//! proxy, no redirects (a redirect is a non-2xx answer), at most
//! [`MAX_RESPONSE_BYTES`] of an answer read, and at most
//! `FLEETGATE_WEBHOOK_CONCURRENCY` requests in flight per endpoint.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use reqwest::{Url, header, redirect};
use sha2::Sha256;
use tokio::sync::{Semaphore, watch};

use super::{
    OutputError,
    guard::{self, Guard},
    registration::{Registration, url_for_log},
    runner::{Progress, Sink},
};
use crate::lock::MutexExt;
use crate::{
    config::Config,
    metrics::{Output, OutputOutcome},
    store::events::Event,
};

/// The most of an answer read (and thrown away): enough to keep the
/// connection reusable after a small body, never a large one.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The first retry's wait; each next one doubles, up to [`RETRY_CAP`].
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(300);
/// How long a sink delivers before letting its cursor be saved.
const SAVE_EVERY: Duration = Duration::from_secs(1);

pub const SIGNATURE_HEADER: &str = "x-fleetgate-signature";
pub const EVENT_ID_HEADER: &str = "x-fleetgate-event-id";
pub const EVENT_TYPE_HEADER: &str = "x-fleetgate-event-type";
pub const WEBHOOK_ID_HEADER: &str = "x-fleetgate-webhook-id";
pub const ATTEMPT_HEADER: &str = "x-fleetgate-delivery-attempt";

#[derive(Debug, Clone)]
pub struct Settings {
    pub retry_for: Duration,
    pub timeout: Duration,
    pub concurrency: usize,
    pub allow_private: bool,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            retry_for: Duration::from_secs(config.webhook_retry_secs),
            timeout: Duration::from_secs(config.webhook_timeout_secs.max(1)),
            concurrency: usize::try_from(config.webhook_concurrency.max(1)).unwrap_or(1),
            allow_private: config.webhook_allow_private,
        }
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length: the refusal is for fixed-size keys.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The process's webhook client, with the address guard as its resolver,
/// and the per-endpoint limits.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    guard: Guard,
    settings: Settings,
    endpoints: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Self, OutputError> {
        let guard = Guard::new(settings.allow_private);
        let tls = crate::auth::tls_config(false).map_err(|e| OutputError::Client(e.to_string()))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(guard::Resolver::new(guard))
            .no_proxy()
            .redirect(redirect::Policy::none())
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(settings.concurrency)
            .user_agent(concat!("fleetgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OutputError::Client(e.to_string()))?;
        Ok(Self { http, guard, settings: settings.clone(), endpoints: Arc::default() })
    }

    /// The limit of requests in flight to `url`'s endpoint.
    fn endpoint(&self, url: &Url) -> Arc<Semaphore> {
        let key = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(0)
        );
        let mut endpoints = self.endpoints.lock_or_recover();
        // Endpoints nobody uses any more go (only this map holds them).
        if endpoints.len() > 64 {
            endpoints.retain(|_, s| Arc::strong_count(s) > 1);
        }
        endpoints.entry(key).or_insert_with(|| Arc::new(Semaphore::new(self.settings.concurrency))).clone()
    }

    /// One POST of `event` to `hook`.
    async fn post(&self, hook: &Target, fleet: &str, event: &Event, attempt: u32) -> Result<(), Failure> {
        self.guard.check_literal(&hook.url).map_err(Failure::Refused)?;
        let endpoint = self.endpoint(&hook.url);
        let _permit = endpoint.acquire().await.map_err(|_| Failure::Other("endpoint limit closed".into()))?;
        let response = self
            .http
            .post(hook.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(&hook.registration.secret, event.json.as_bytes()))
            .header(EVENT_ID_HEADER, super::event_id(fleet, event))
            .header(EVENT_TYPE_HEADER, event.kind.as_str())
            .header(WEBHOOK_ID_HEADER, hook.id.as_str())
            .header(ATTEMPT_HEADER, attempt.to_string())
            .body(event.json.clone())
            .send()
            .await
            .map_err(|e| match guard::refusal(&e) {
                Some(refused) => Failure::Refused(refused.clone()),
                None => Failure::Other(describe(&e)),
            })?;
        let status = response.status();
        drain(response).await;
        if status.is_success() { Ok(()) } else { Err(Failure::Status(status.as_u16())) }
    }
}

/// Reads and drops up to [`MAX_RESPONSE_BYTES`] of an answer; a longer one
/// is cut off (its connection is closed rather than reused).
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > MAX_RESPONSE_BYTES {
            return;
        }
    }
}

/// A request error with its causes (reqwest's own message is terse), and
/// never the URL's query.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Why one attempt was not delivery.
#[derive(Debug)]
enum Failure {
    Status(u16),
    Refused(guard::Refused),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(s) => write!(f, "answered HTTP {s}"),
            Self::Refused(r) => write!(f, "refused: {r}"),
            Self::Other(e) => f.write_str(e),
        }
    }
}

/// A webhook as its sink delivers to it.
struct Target {
    id: String,
    url: Url,
    registration: Arc<Registration>,
}

/// The event being retried.
struct Pending {
    id: crate::store::events::StreamId,
    attempts: u32,
    since: Instant,
}

/// The sink of one webhook. Its registration can change while it runs
/// (a `PUT` over it): the supervisor sends the new one.
pub struct WebhookSink {
    client: Client,
    fleet: String,
    id: String,
    registration: watch::Receiver<Arc<Registration>>,
    pending: Option<Pending>,
}

impl WebhookSink {
    pub fn new(client: Client, fleet: String, id: String, registration: watch::Receiver<Arc<Registration>>) -> Self {
        Self { client, fleet, id, registration, pending: None }
    }

    fn target(&mut self) -> Option<Target> {
        let registration = self.registration.borrow_and_update().clone();
        let url = Url::parse(&registration.url).ok()?;
        Some(Target { id: self.id.clone(), url, registration })
    }
}

#[async_trait]
impl Sink for WebhookSink {
    async fn deliver(&mut self, events: &[Event]) -> Progress {
        let started = Instant::now();
        let Some(target) = self.target() else {
            // Stored registrations were checked; one that no longer parses waits.
            tracing::warn!(fleet = %self.fleet, webhook = %self.id, "webhook URL unreadable; waiting for a new registration");
            return Progress { done: 0, wait: Some(RETRY_CAP) };
        };
        let retry_for = self.client.settings.retry_for;
        for (i, event) in events.iter().enumerate() {
            if i > 0 && started.elapsed() >= SAVE_EVERY {
                return Progress { done: i, wait: None };
            }
            if !target.registration.wants(event.kind) {
                continue;
            }
            let pending = match self.pending.take() {
                Some(p) if p.id == event.id => p,
                _ => Pending { id: event.id, attempts: 0, since: Instant::now() },
            };
            let attempt = pending.attempts + 1;
            let failure = match self.client.post(&target, &self.fleet, event, attempt).await {
                Ok(()) => {
                    super::count(Output::Webhook, event, OutputOutcome::Delivered);
                    continue;
                }
                Err(failure) => failure,
            };
            let event_id = super::event_id(&self.fleet, event);
            let url = url_for_log(&target.url);
            let out_of_time = pending.since.elapsed() >= retry_for;
            if out_of_time || matches!(failure, Failure::Refused(_)) {
                super::count(Output::Webhook, event, OutputOutcome::Failed);
                tracing::warn!(
                    fleet = %self.fleet, webhook = %self.id, url, event = event_id, attempts = attempt, error = %failure,
                    "webhook event failed for good: going on with the next event"
                );
                continue;
            }
            super::count(Output::Webhook, event, OutputOutcome::Retried);
            let left = retry_for.saturating_sub(pending.since.elapsed());
            let wait = super::backoff(attempt, RETRY_BASE, RETRY_CAP).min(left);
            if attempt == 1 {
                tracing::warn!(
                    fleet = %self.fleet, webhook = %self.id, url, event = event_id, error = %failure,
                    "webhook delivery failed; retrying with backoff"
                );
            } else {
                tracing::debug!(
                    fleet = %self.fleet, webhook = %self.id, url, event = event_id, attempts = attempt, error = %failure,
                    retry_in_ms = wait.as_millis() as u64, "webhook delivery failed again"
                );
            }
            self.pending = Some(Pending { attempts: attempt, ..pending });
            return Progress { done: i, wait: Some(wait) };
        }
        Progress { done: events.len(), wait: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
