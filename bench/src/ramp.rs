//! Opening many connections on a schedule. Opening them all at once would
//! measure the accept queue, and a tool that silently falls behind its own
//! schedule reports the wrong rate, so lateness is measured and reported.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};

pub struct Ramp {
    pub handles: Vec<JoinHandle<()>>,
    pub started: usize,
    pub elapsed: Duration,
    /// The tool's own lateness at worst: how long after a connection was
    /// due (or after the previous one got its slot) it actually started.
    pub max_tool_lag: Duration,
    /// Longest wait for a slot: the server finishing handshakes slower than
    /// the schedule asks for. The server's doing, not the tool's.
    pub max_slot_wait: Duration,
    pub rate: f64,
}

impl Ramp {
    pub fn behind(&self) -> bool {
        // A few ms of timer slack is normal; a tenth of a second is not.
        self.max_tool_lag > Duration::from_millis(100)
    }

    pub fn achieved_rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.started as f64 / secs } else { 0.0 }
    }

    pub fn json(&self) -> Value {
        json!({
            "started": self.started,
            "target_rate": self.rate,
            "achieved_rate": self.achieved_rate(),
            "max_tool_lag_ms": self.max_tool_lag.as_secs_f64() * 1e3,
            "max_slot_wait_ms": self.max_slot_wait.as_secs_f64() * 1e3,
            "server_held_back": self.max_slot_wait > Duration::from_millis(100),
            "fell_behind": self.behind(),
        })
    }
}

/// Starts `n` tasks, `rate` per second (0: as fast as `concurrency` allows).
/// Each task gets a permit to drop once its opening phase is over, so at
/// most `concurrency` are opening at a time.
pub async fn ramp<F, Fut>(n: usize, rate: f64, concurrency: usize, mut make: F) -> Ramp
where
    F: FnMut(usize, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let t0 = tokio::time::Instant::now();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    let (mut max_tool_lag, mut max_slot_wait) = (Duration::ZERO, Duration::ZERO);
    let mut last_slot = t0;
    for i in 0..n {
        let due = if rate > 0.0 { t0 + Duration::from_secs_f64(i as f64 / rate) } else { t0 };
        tokio::time::sleep_until(due).await;
        let woke = tokio::time::Instant::now();
        max_tool_lag = max_tool_lag.max(woke.saturating_duration_since(due.max(last_slot)));
        let Ok(permit) = sem.clone().acquire_owned().await else { break };
        last_slot = tokio::time::Instant::now();
        max_slot_wait = max_slot_wait.max(last_slot.saturating_duration_since(woke));
        handles.push(tokio::spawn(make(i, permit)));
    }
    Ramp { started: handles.len(), handles, elapsed: start.elapsed(), max_tool_lag, max_slot_wait, rate }
}
