//! How each store call is made: bounded in time (a hung Redis is
//! `unavailable`, not a hung client), retried on a refused connection,
//! measured under its operation's name, and, for writes a sender may give
//! up on, fenced on Redis's clock so a late write never lands.

use std::{future::Future, sync::atomic::Ordering, time::Duration};

use super::{RedisStore, connection::Connection};
use crate::{
    clock::now_ms,
    metrics::{StoreOp, names},
    store::StoreError,
};

/// Longest a store call may take before the client is told `unavailable`.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long before the caller gives up a fenced write stops being
/// applied: room for the reply to travel back and for the error of the
/// clock offset estimate.
pub(super) const FENCE_MARGIN: Duration = Duration::from_millis(500);

/// Replies slower than this round trip do not recalibrate the clock offset.
pub(super) const CALIBRATION_MAX_RTT: Duration = Duration::from_millis(250);

impl RedisStore {
    /// Learns the clock offset from a reply stamped with Redis's time
    /// `redis_now`, to a call sent at `sent_ms` that took `rtt`.
    pub(super) fn calibrate(&self, redis_now: i64, sent_ms: i64, rtt: Duration) {
        if rtt <= CALIBRATION_MAX_RTT {
            let half = i64::try_from(rtt.as_millis() / 2).unwrap_or(0);
            self.clock_offset_ms.store(redis_now - (sent_ms + half), Ordering::Relaxed);
        }
    }

    /// Bounds a store call so a hung Redis turns into `unavailable`, not a
    /// hung client, and measures it under the name of its operation.
    ///
    /// A call refused for want of a connection is made again (on the next
    /// pooled connection, up to once per connection): a `ConnectionManager`
    /// whose reconnection failed while Redis was down reports that stale
    /// failure to its next call, starting a new attempt only then, even when
    /// Redis has long been back; without the retries the first call on each
    /// pooled connection after an outage would be answered `unavailable`. A
    /// refused connection means the command was never sent, so retrying is
    /// safe for writes too. While Redis is down every try is refused at once
    /// (or after the manager's short reconnection backoff), so calls still
    /// fail fast.
    pub(super) async fn bounded<T, F, Fut>(&self, op: StoreOp, call: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.bounded_until(op, tokio::time::Instant::now() + CALL_TIMEOUT, call).await
    }

    /// [`RedisStore::bounded`] with its own end: a batch ends when its
    /// newest update's sender would give up.
    pub(super) async fn bounded_until<T, F, Fut>(
        &self,
        op: StoreOp,
        until: tokio::time::Instant,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let started = std::time::Instant::now();
        let tries = self.pool_len() + 1;
        let attempts = async {
            let mut tried = 1;
            loop {
                match call().await {
                    Err(StoreError::Redis(e)) if e.is_connection_refusal() && tried < tries => tried += 1,
                    other => return other,
                }
            }
        };
        let result = tokio::time::timeout_at(until, attempts).await.map_err(|_| StoreError::Timeout).and_then(|r| r);
        metrics::histogram!(names::REDIS_COMMAND_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!(names::REDIS_ERRORS, "op" => op).increment(1);
        }
        result
    }

    /// A fenced script call (see `lua/put_positions.lua`) under [`RedisStore::bounded`]:
    /// `invoke` gets a connection, the send time and the deadline on
    /// Redis's clock, and returns the script's outcome (`None`: refused past
    /// the deadline) with Redis's time, which recalibrates the clock offset.
    pub(super) async fn fenced<T, F, Fut>(&self, op: StoreOp, invoke: F) -> Result<T, StoreError>
    where
        F: Fn(Connection, i64, i64) -> Fut,
        Fut: Future<Output = Result<(Option<T>, i64), StoreError>>,
    {
        // The caller gives up CALL_TIMEOUT after this; the write must not
        // land later than shortly before that.
        let started = std::time::Instant::now();
        let fence_ms = i64::try_from((CALL_TIMEOUT - FENCE_MARGIN).as_millis()).unwrap_or(0);
        self.bounded(op, || async {
            let conn = self.conn().await?;
            let mut retried = false;
            loop {
                let sent = std::time::Instant::now();
                let sent_ms = now_ms();
                let left_ms = fence_ms - i64::try_from(started.elapsed().as_millis()).unwrap_or(fence_ms);
                let deadline = sent_ms + self.clock_offset_ms.load(Ordering::Relaxed) + left_ms;
                let (outcome, redis_now) = invoke(conn.clone(), sent_ms, deadline).await?;
                let rtt = sent.elapsed();
                self.calibrate(redis_now, sent_ms, rtt);
                match outcome {
                    Some(v) => return Ok(v),
                    // A refusal that is back quickly says the offset was off
                    // (clocks apart), not that the call was late: nothing
                    // was written, so try once more with the offset just
                    // learnt.
                    None if !retried && rtt <= CALIBRATION_MAX_RTT => retried = true,
                    None => return Err(StoreError::Timeout),
                }
            }
        })
        .await
    }
}
