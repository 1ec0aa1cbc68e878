//! Keeping every replica's geofence indexes current. A write through one
//! replica reloads that replica's index at once; the others compare the
//! versions of the fleets they index with the store's every
//! [`PERIOD`] and reload those that changed. Correctness does not hang on
//! this: the store refuses a position tested at an old version, and the
//! replica reloads before trying again, so no crossing is ever decided
//! against geofences that are no longer stored. The sync only keeps that
//! refusal off the common path.

use std::{sync::Arc, time::Duration};

use super::Geofences;

/// How often versions are compared: a change is in force everywhere within it.
pub const PERIOD: Duration = Duration::from_millis(500);

/// Fleets asked about per store call.
const CHUNK: usize = 512;

/// A fleet no position used for this long is dropped from this replica
/// (its next position reads its geofences again).
pub const IDLE: Duration = Duration::from_secs(600);

/// Compares versions and reloads what changed, until the task is aborted.
pub async fn run(geofences: Arc<Geofences>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        geofences.sync_once().await;
    }
}

impl Geofences {
    /// One round of [`run`].
    pub async fn sync_once(&self) {
        let idle_ms = i64::try_from(IDLE.as_millis()).unwrap_or(i64::MAX);
        let dropped = self.drop_idle(crate::clock::now_ms().saturating_sub(idle_ms));
        if dropped > 0 {
            tracing::debug!(dropped, "idle fleets' geofence indexes dropped");
        }
        let loaded = self.loaded();
        for chunk in loaded.chunks(CHUNK) {
            let fleets: Vec<String> = chunk.iter().map(|(f, _)| f.clone()).collect();
            let versions = match self.store.geofence_versions(&fleets).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "geofence versions not read; next round");
                    return;
                }
            };
            for ((fleet, have), stored) in chunk.iter().zip(versions) {
                if *have != stored
                    && let Err(e) = self.reload(fleet).await
                {
                    tracing::debug!(error = %e, fleet, "geofences not reloaded; next round");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        geofence::Geofences,
        store::{Retention, memory::MemoryStore},
    };

    fn retention() -> Retention {
        Retention {
            location_ttl_ms: 60_000,
            stale_after_ms: 60_000,
            presence_ttl_ms: 60_000,
            history_max: 10,
            history_ttl_ms: 60_000,
            events_max: 0,
        }
    }

    #[tokio::test]
    async fn idle_fleets_are_dropped_and_read_again_when_used() {
        let geofences = Geofences::new(MemoryStore::new(retention()), 1000, 10);
        geofences.index("quiet").await.unwrap();
        geofences.index("busy").await.unwrap();
        let now = crate::clock::now_ms();
        assert_eq!(geofences.drop_idle(now - 60_000), 0, "both used within the minute");
        assert_eq!(geofences.drop_idle(now + 1), 2);
        assert!(geofences.loaded().is_empty());
        geofences.index("busy").await.unwrap();
        assert_eq!(geofences.loaded().len(), 1, "a fleet used again is read again");
    }
}
