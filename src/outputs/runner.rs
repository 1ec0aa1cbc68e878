//! One (fleet, output) on this replica: waits for the output's lease,
//! then reads the fleet's stream after the output's cursor, hands each
//! batch to the output's [`Sink`], and saves the cursor past what the
//! sink took, under the lease. Repeats until the lease is lost (then
//! waits for it again) or the runner is stopped (then gives it up).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::lease::Held;
use crate::{
    metrics::{Output, names},
    store::{
        Store,
        events::{Cursor, Event},
    },
};

/// Events read from the stream at once.
const BATCH: usize = 100;
/// How often a holder with nothing to deliver looks for new events: at
/// first, then twice as long after each empty read, up to [`POLL_IDLE`]
/// (an idle fleet costs one read a second; a busy one is read at once).
const POLL: Duration = Duration::from_millis(200);
const POLL_IDLE: Duration = Duration::from_secs(1);
/// How long after a failed store call a holder tries again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// What a sink did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// How many of the batch's first events it is done with (taken,
    /// filtered out, or given up on): the cursor moves past them.
    pub done: usize,
    /// Wait this long before going on (an attempt failed).
    pub wait: Option<Duration>,
}

/// Where an output hands its events.
#[async_trait]
pub trait Sink: Send {
    /// Hands on `events` (the next ones after the cursor, oldest first), in
    /// order, stopping at the first that is not taken. May stop early to
    /// let the cursor be saved.
    async fn deliver(&mut self, events: &[Event]) -> Progress;
}

/// Who a runner is: its fleet, its consumer (cursor and lease name) and
/// this replica as lease holder.
pub struct Identity {
    pub fleet: String,
    pub consumer: String,
    pub holder: String,
    pub output: Output,
    /// Whether a missing cursor means the output is gone (a webhook's is
    /// set when it is created) rather than "from the oldest kept event".
    pub needs_cursor: bool,
}

/// Runs until `stop`.
pub async fn run(store: Arc<dyn Store>, id: Identity, ttl: Duration, mut sink: impl Sink, stop: CancellationToken) {
    // Non-holders try for the lease a few times per lifetime, at jittered
    // moments so the replicas do not all ask together.
    let retry = || ttl.mul_f64(rand::random_range(0.2..0.4));
    while !stop.is_cancelled() {
        let Some(held) = Held::acquire(&store, &id.fleet, &id.consumer, &id.holder, id.output, ttl).await else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(retry()) => continue,
            }
        };
        deliver_while_held(&store, &id, &held, &mut sink, &stop).await;
        let lost = held.lost().is_cancelled();
        held.release().await;
        if !lost {
            // Stopped, or the output is gone: nothing more to do here.
            return;
        }
    }
}

async fn deliver_while_held(
    store: &Arc<dyn Store>,
    id: &Identity,
    held: &Held,
    sink: &mut impl Sink,
    stop: &CancellationToken,
) {
    let (fleet, consumer, output) = (id.fleet.as_str(), id.consumer.as_str(), id.output);
    let events = store.events();
    let mut cursor = loop {
        match events.cursor(fleet, consumer).await {
            Ok(None) if id.needs_cursor => {
                tracing::debug!(fleet, consumer, "no cursor: the output is gone");
                return;
            }
            Ok(cursor) => break cursor,
            Err(e) => {
                tracing::warn!(fleet, consumer, error = %e, "output cursor not read; retrying");
                if !pause(STORE_RETRY, held, stop).await {
                    return;
                }
            }
        }
    };
    // The gap already counted at this cursor: a batch that waits for a
    // retry is read again, and its gap must not count twice.
    let mut counted: (Option<Cursor>, u64) = (cursor, 0);
    let mut poll = POLL;
    loop {
        if held.lost().is_cancelled() || stop.is_cancelled() {
            return;
        }
        let read = match events.read(fleet, cursor, BATCH).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(fleet, consumer, error = %e, "output read from the event stream failed; retrying");
                if !pause(STORE_RETRY, held, stop).await {
                    return;
                }
                continue;
            }
        };
        if read.skipped > 0 {
            let before = if counted.0 == cursor { counted.1 } else { 0 };
            if read.skipped > before {
                let missed = read.skipped - before;
                metrics::counter!(names::OUTPUT_EVENTS_SKIPPED, "output" => output).increment(missed);
                tracing::warn!(
                    fleet,
                    consumer,
                    skipped = missed,
                    "output fell behind the event stream's cap (FLEETGATE_EVENTS_MAX): resuming at the oldest kept event"
                );
            }
            counted = (cursor, read.skipped.max(before));
        }
        if read.events.is_empty() {
            if !pause(poll, held, stop).await {
                return;
            }
            poll = (poll * 2).min(POLL_IDLE);
            continue;
        }
        poll = POLL;
        let progress = tokio::select! {
            () = held.lost().cancelled() => return,
            () = stop.cancelled() => return,
            progress = sink.deliver(&read.events) => progress,
        };
        if let Some(last) = progress.done.checked_sub(1).and_then(|i| read.events.get(i)) {
            let next = last.cursor();
            match events.set_cursor(fleet, consumer, next, Some(held.lease())).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(fleet, consumer, "output cursor not saved: the lease is gone");
                    held.mark_lost();
                    return;
                }
                // Delivered all the same: go on from there, and save with
                // the next batch (a takeover meanwhile repeats these).
                Err(e) => {
                    tracing::warn!(fleet, consumer, error = %e, "output cursor not saved; saved with the next batch")
                }
            }
            cursor = Some(next);
        }
        if let Some(wait) = progress.wait
            && !pause(wait, held, stop).await
        {
            return;
        }
    }
}

/// Sleeps for `d`; false when the lease was lost or the runner stopped meanwhile.
async fn pause(d: Duration, held: &Held, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = held.lost().cancelled() => false,
        () = stop.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}
