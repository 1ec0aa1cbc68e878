//! Keys from an identity provider (`FLEETGATE_JWT_JWKS_URL`): the cached
//! key set, its scheduled refresh, the refresh on an unknown `kid` (at
//! most one fetch per [`UNKNOWN_KID_REFRESH_EVERY`], shared by every token
//! that asked), and readiness. A failed fetch never replaces the set held:
//! while the provider is down or answers garbage the last good set serves.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Mutex, time::Instant};

use super::{
    fetch::{self, FetchError, Fetcher},
    jwk_set::{self, JwksError},
    keys::{Keys, VerifyingKey},
    load::KeyError,
};
use crate::lock::RwLockExt;
use crate::{clock, config::Config};

/// A token naming an unknown `kid` refreshes the set at most this often,
/// so a stream of made-up kids cannot turn into a stream of fetches.
pub const UNKNOWN_KID_REFRESH_EVERY: Duration = Duration::from_secs(10);

/// Bounds of `FLEETGATE_JWT_JWKS_REFRESH_SECS`.
pub const MIN_REFRESH_SECS: u64 = 1;
pub const MAX_REFRESH_SECS: u64 = 86_400;

/// Retry delays after failed fetches: doubling from the first, capped at
/// the last (and never later than the schedule itself).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Document(#[from] JwksError),
}

/// The identity provider's key set as last fetched.
pub struct RemoteKeys {
    fetcher: Fetcher,
    every: Duration,
    held: RwLock<Arc<[VerifyingKey]>>,
    /// Set by the first good fetch and never cleared: a server that has a
    /// set keeps serving with it.
    fetched: AtomicBool,
    /// When a fetch last started. Held across the fetch, so concurrent
    /// refreshes queue behind it and then find it done.
    last_attempt: Mutex<Option<Instant>>,
    /// Kids of the locally configured keys: those always win, so a JWKS
    /// key under the same kid is skipped.
    local_kids: Vec<String>,
}

impl RemoteKeys {
    /// The provider's set when `FLEETGATE_JWT_JWKS_URL` is set, checked but
    /// not fetched yet (see [`RemoteKeys::keep_fresh`]).
    pub fn from_config(config: &Config, local: &Keys) -> Result<Option<Arc<Self>>, KeyError> {
        let Some(value) = &config.jwt_jwks_url else { return Ok(None) };
        let url = fetch::jwks_url(value)?;
        let secs = config.jwt_jwks_refresh_secs;
        if !(MIN_REFRESH_SECS..=MAX_REFRESH_SECS).contains(&secs) {
            return Err(KeyError::JwksRefresh { secs });
        }
        let local_kids = local.verifying.iter().filter_map(|k| k.kid.clone()).collect();
        Ok(Some(Arc::new(Self {
            fetcher: Fetcher::new(url)?,
            every: Duration::from_secs(secs),
            held: RwLock::new(Arc::from(Vec::new())),
            fetched: AtomicBool::new(false),
            last_attempt: Mutex::new(None),
            local_kids,
        })))
    }

    /// Whether a set was ever fetched (readiness).
    pub fn is_ready(&self) -> bool {
        self.fetched.load(Ordering::Acquire)
    }

    /// The set held now.
    pub(super) fn current(&self) -> Arc<[VerifyingKey]> {
        self.held.read_or_recover().clone()
    }

    fn holds(&self, kid: &str) -> bool {
        self.current().iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Fetches now, first thing, then every FLEETGATE_JWT_JWKS_REFRESH_SECS;
    /// after a failure sooner, backing off, until a fetch succeeds.
    pub async fn keep_fresh(self: Arc<Self>) {
        let mut retry = RETRY_FIRST;
        loop {
            let ok = {
                let mut last = self.last_attempt.lock().await;
                *last = Some(Instant::now());
                self.refresh().await
            };
            let wait = if ok {
                retry = RETRY_FIRST;
                self.every
            } else {
                let wait = retry.min(self.every);
                retry = (retry * 2).min(RETRY_MAX);
                wait
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// A token named `kid`, which the set does not hold: fetch again,
    /// unless a fetch started less than [`UNKNOWN_KID_REFRESH_EVERY`] ago.
    /// Callers arriving during a fetch wait for it instead of starting
    /// their own.
    pub(super) async fn refresh_for_unknown(&self, kid: &str) {
        let mut last = self.last_attempt.lock().await;
        if self.holds(kid) || last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFRESH_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        tracing::debug!(url = %self.fetcher.url(), "jwks: refreshing for an unknown kid");
        self.refresh().await;
    }

    /// One fetch; the set is replaced only by a good document. Callers hold
    /// `last_attempt`.
    async fn refresh(&self) -> bool {
        let url = self.fetcher.url();
        match self.fetch().await {
            Ok((keys, skipped)) => {
                let count = keys.len();
                *self.held.write_or_recover() = Arc::from(keys);
                let first = !self.fetched.swap(true, Ordering::AcqRel);
                metrics::counter!(crate::metrics::names::JWKS_REFRESHES, "outcome" => "ok").increment(1);
                metrics::gauge!(crate::metrics::names::JWKS_KEYS).set(count as f64);
                metrics::gauge!(crate::metrics::names::JWKS_LAST_SUCCESS).set(clock::now_ms() as f64 / 1000.0);
                if first {
                    tracing::info!(%url, keys = count, skipped, "jwks: key set fetched");
                } else {
                    tracing::debug!(%url, keys = count, skipped, "jwks: key set refreshed");
                }
                true
            }
            Err(e) => {
                metrics::counter!(crate::metrics::names::JWKS_REFRESHES, "outcome" => "error").increment(1);
                let held = self.current().len();
                if self.is_ready() {
                    tracing::warn!(%url, error = %e, keys_held = held, "jwks: refresh failed; the last good set stays in use");
                } else {
                    tracing::warn!(%url, error = %e, "jwks: fetch failed; not ready until a key set is fetched");
                }
                false
            }
        }
    }

    async fn fetch(&self) -> Result<(Vec<VerifyingKey>, usize), RefreshError> {
        let body = self.fetcher.get().await?;
        let set = jwk_set::parse(&body)?;
        let mut skipped = set.skipped;
        let keys: Vec<VerifyingKey> = set
            .keys
            .into_iter()
            .filter(|k| {
                let clash = k.kid.as_ref().is_some_and(|kid| self.local_kids.contains(kid));
                if clash {
                    skipped += 1;
                    tracing::warn!(
                        kid = k.kid.as_deref().unwrap_or_default(),
                        "jwks: a key has the kid of a configured key; the configured key is used"
                    );
                }
                !clash
            })
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(skipped).into());
        }
        Ok((keys, skipped))
    }
}
