//! One output's lease on one fleet, held while this replica delivers: taken
//! when free, renewed a few times per lifetime, and counted as lost as
//! soon as a renewal is refused, or when renewals have failed for long
//! enough that it may have lapsed. Every cursor write is made under it
//! (refused once it has passed to another holder), so two replicas never
//! both advance one output.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{Output, names},
    store::{
        Store,
        events::{EventStream, Lease},
    },
};

/// A lease this replica holds until [`Held::lost`] fires or it is released.
pub struct Held {
    store: Arc<dyn Store>,
    fleet: String,
    name: String,
    holder: String,
    output: Output,
    /// Cancelled when the lease is, or may be, someone else's.
    lost: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
}

impl Held {
    /// Takes `name` on `fleet` for `ttl` if it is free (or already ours).
    pub async fn acquire(
        store: &Arc<dyn Store>,
        fleet: &str,
        name: &str,
        holder: &str,
        output: Output,
        ttl: Duration,
    ) -> Option<Self> {
        let lease = Lease { name, holder };
        let asked = Instant::now();
        match store.events().acquire_lease(fleet, lease, ms(ttl)).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(fleet, lease = name, error = %e, "output lease not taken");
                return None;
            }
        }
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew(
            store.clone(),
            fleet.to_owned(),
            name.to_owned(),
            holder.to_owned(),
            ttl,
            asked,
            lost.clone(),
        ));
        metrics::gauge!(names::OUTPUT_LEASES, "output" => output).increment(1.0);
        tracing::info!(fleet, lease = name, "output lease taken: delivering from this replica");
        Some(Self {
            store: store.clone(),
            fleet: fleet.to_owned(),
            name: name.to_owned(),
            holder: holder.to_owned(),
            output,
            lost,
            renewer,
        })
    }

    pub fn lease(&self) -> Lease<'_> {
        Lease { name: &self.name, holder: &self.holder }
    }

    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Marks the lease lost (a guarded write was refused).
    pub fn mark_lost(&self) {
        self.lost.cancel();
    }

    /// Gives the lease up (so another replica takes over at once) unless
    /// it is lost already.
    pub async fn release(self) {
        self.renewer.abort();
        if !self.lost.is_cancelled() {
            let events: &dyn EventStream = self.store.events();
            if let Err(e) = events.release_lease(&self.fleet, self.lease()).await {
                tracing::debug!(fleet = %self.fleet, lease = %self.name, error = %e, "output lease not released; it lapses");
            }
        }
        self.lost.cancel();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
        self.lost.cancel();
        metrics::gauge!(names::OUTPUT_LEASES, "output" => self.output).decrement(1.0);
        tracing::info!(fleet = %self.fleet, lease = %self.name, "output lease given up");
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Renews every third of the lifetime. `valid_from` is when the last
/// successful call was sent: the lease runs at least `ttl` from then, so
/// it is surely ours until then plus `ttl`, less a margin for clocks.
async fn renew(
    store: Arc<dyn Store>,
    fleet: String,
    name: String,
    holder: String,
    ttl: Duration,
    mut valid_from: Instant,
    lost: CancellationToken,
) {
    let every = ttl / 3;
    let margin = ttl / 5;
    loop {
        tokio::select! {
            () = lost.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let asked = Instant::now();
        let lease = Lease { name: &name, holder: &holder };
        let renewal = tokio::time::timeout(every, store.events().renew_lease(&fleet, lease, ms(ttl))).await;
        match renewal {
            Ok(Ok(true)) => valid_from = asked,
            Ok(Ok(false)) => {
                tracing::warn!(
                    fleet,
                    lease = name,
                    "output lease taken by another replica (or the output was deleted)"
                );
                lost.cancel();
                return;
            }
            Ok(Err(e)) => tracing::warn!(fleet, lease = name, error = %e, "output lease not renewed; retrying"),
            Err(_) => tracing::warn!(fleet, lease = name, "output lease renewal timed out; retrying"),
        }
        if Instant::now() + every >= valid_from + ttl - margin {
            tracing::warn!(fleet, lease = name, "output lease may have lapsed: stopping deliveries");
            lost.cancel();
            return;
        }
    }
}
