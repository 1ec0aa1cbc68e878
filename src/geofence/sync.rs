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
