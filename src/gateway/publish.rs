//! The accept path of a position, top to bottom: parse → validate →
//! store → fan out → answer.
//!
//! Updates are batched by fleet without a timer. The first update of an
//! idle fleet starts a batch task at once; updates of that fleet accepted
//! while its store call is in flight (or before the task first runs) queue
//! behind it and go to the store together in the next call: one script
//! call applies their compare-and-sets in arrival order and announces the
//! stored ones in one message (see [`crate::replication`]). A lone update
//! leaves at once; under load a call carries everything that arrived
//! during the one before, so the store's cost per update falls as the rate
//! rises. The round that learns the outcomes hands the stored positions to
//! local fan-out as one round and writes every ack itself: a socket's
//! handler ends when its update is queued.
//!
//! A fleet has at most one call in flight, and its queue is first in,
//! first out, so a socket's updates reach the store in the order they
//! arrived. Each update keeps its own fence (an update answered
//! `unavailable` is never stored) counted from when it was queued.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Instant,
};

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use tokio::sync::oneshot;

use super::{ClientEvent, Gateway, fanout::Outgoing};
use crate::lock::MutexExt;
use crate::{
    auth::Role,
    clock,
    error::{ApiError, ErrorCode},
    position::{Position, PositionUpdate, TimeWindow},
    session::Session,
    store::{PositionWrite, PutOutcome, StoreError},
};

/// The most updates one store call carries: bounds the script's run (Redis
/// serves nobody else meanwhile) and the size of its message.
pub const MAX_BATCH: usize = 256;

/// Where an update came from, for metrics.
pub use crate::metrics::UpdateSource as Source;

/// The `data` of a `locationupdate` ack, and the result of one position
/// sent over HTTP.
#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Accepted {
    pub accepted: bool,
    /// `stale` when not newer than the stored position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

fn count_update(source: Source, result: &Result<Accepted, ApiError>) {
    use crate::metrics::UpdateOutcome;
    let outcome = match result {
        Ok(a) if a.accepted => UpdateOutcome::Accepted,
        Ok(_) => UpdateOutcome::Stale,
        Err(e) => match e.code {
            ErrorCode::InvalidPayload | ErrorCode::PayloadTooLarge => UpdateOutcome::Invalid,
            ErrorCode::Forbidden => UpdateOutcome::Forbidden,
            ErrorCode::RateLimited => UpdateOutcome::RateLimited,
            ErrorCode::Unavailable => UpdateOutcome::Unavailable,
            _ => UpdateOutcome::Error,
        },
    };
    metrics::counter!(crate::metrics::names::POSITION_UPDATES, "source" => source, "outcome" => outcome).increment(1);
}

/// How an update's sender hears its outcome.
pub(super) enum Reply<A: Adapter> {
    /// A socket's event: acked (or answered with an `exception`) by the
    /// round that learns the outcome.
    Socket(ClientEvent<A>),
    /// A caller waiting in process (HTTP, the demo fleet).
    Wait(oneshot::Sender<Result<Accepted, ApiError>>),
}

impl<A: Adapter> Reply<A> {
    fn send(self, source: Source, result: Result<Accepted, ApiError>) {
        count_update(source, &result);
        match self {
            Reply::Socket(req) => req.reply(result),
            Reply::Wait(tx) => {
                // The caller is gone (an HTTP client that hung up): nobody to tell.
                let _ = tx.send(result);
            }
        }
    }
}

// Futures here stay small on purpose: tokio copies a task's whole future
// when it is spawned and again when it completes, and socketioxide spawns
// one per event. A handler future that held the store call, the fan-out
// hand-off and the presence announcement inline measured several KiB, and
// copying it was most of the instructions the server spent per update
// (callgrind); so the handler only queues, and the rare or large awaits
// are boxed.

/// A validated update waiting for its fleet's next store call.
struct Queued<A: Adapter> {
    position: Position,
    /// Its position event, encoded once: the store keeps these bytes,
    /// other replicas receive them, and local sockets get them as they are.
    encoded: Box<RawValue>,
    queued: Instant,
    source: Source,
    reply: Reply<A>,
}

/// The updates of busy fleets: a fleet is listed while its batch task
/// runs, with what queued behind its call in flight.
pub struct Batches<A: Adapter> {
    fleets: Mutex<HashMap<String, Vec<Queued<A>>>>,
}

impl<A: Adapter> Default for Batches<A> {
    fn default() -> Self {
        Self { fleets: Mutex::new(HashMap::new()) }
    }
}

impl<A: Adapter> Batches<A> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Queued<A>>>> {
        // Plain queues: a panic elsewhere leaves them consistent.
        self.fleets.lock_or_recover()
    }

    /// Queues an update behind its fleet's call in flight; gives it back
    /// when the fleet was idle (it is now busy: the caller starts its task).
    fn queue(&self, update: Queued<A>) -> Option<Queued<A>> {
        let mut fleets = self.lock();
        if let Some(queue) = fleets.get_mut(&update.position.fleet) {
            queue.push(update);
            return None;
        }
        fleets.insert(update.position.fleet.clone(), Vec::new());
        Some(update)
    }

    /// Moves what queued for `fleet` into `batch` (up to [`MAX_BATCH`]).
    fn take(&self, fleet: &str, batch: &mut Vec<Queued<A>>) {
        let mut fleets = self.lock();
        if let Some(queue) = fleets.get_mut(fleet) {
            let n = queue.len().min(MAX_BATCH.saturating_sub(batch.len()));
            batch.extend(queue.drain(..n));
        }
    }

    /// Ends the fleet's task if nothing queued; whether it ended.
    fn finish_if_idle(&self, fleet: &str) -> bool {
        let mut fleets = self.lock();
        match fleets.get(fleet) {
            Some(queue) if !queue.is_empty() => false,
            _ => {
                fleets.remove(fleet);
                true
            }
        }
    }
}

/// A fleet's batch task while it runs. Should the task end early (the
/// runtime stopping), the fleet is not left marked busy with updates
/// queued that nobody will send: they are answered `unavailable` (never
/// sent, so never stored) and the fleet is free again.
struct Running<'a, A: Adapter> {
    batches: &'a Batches<A>,
    fleet: String,
    done: bool,
}

impl<A: Adapter> Drop for Running<'_, A> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let queued = self.batches.lock().remove(&self.fleet).unwrap_or_default();
        for q in queued {
            q.reply.send(q.source, Err(ApiError::unavailable()));
        }
    }
}

impl<A: Adapter> Gateway<A> {
    fn window(&self) -> TimeWindow {
        TimeWindow { max_future_ms: self.config.max_future_ms, max_age_ms: self.config.max_age_ms }
    }

    /// A socket's `locationupdate`: parsed, validated and queued; its ack
    /// is written when the store has answered.
    pub(super) async fn publish_event(&self, session: &Session, req: ClientEvent<A>) {
        match PositionUpdate::parse(&req.payload) {
            Ok(update) => self.submit(session, update, Source::Socket, Reply::Socket(req)).await,
            Err(e) => Reply::Socket(req).send(Source::Socket, Err(e)),
        }
    }

    /// Parses, authorises, stores and fans out one `locationupdate` payload
    /// on behalf of `session`, and waits for its outcome.
    pub async fn publish(
        &self,
        session: &Session,
        payload: &serde_json::Value,
        source: Source,
    ) -> Result<Accepted, ApiError> {
        match PositionUpdate::parse(payload) {
            Ok(update) => self.publish_update(session, update, source).await,
            Err(e) => {
                let result = Err(e);
                count_update(source, &result);
                result
            }
        }
    }

    /// Like [`Gateway::publish`], for an update built in process.
    pub async fn publish_update(
        &self,
        session: &Session,
        update: PositionUpdate,
        source: Source,
    ) -> Result<Accepted, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.submit(session, update, source, Reply::Wait(tx)).await;
        // Every queued update is answered; a dropped sender means its task
        // died, and the update's fate is unknown to us.
        rx.await.unwrap_or_else(|_| Err(ApiError::unavailable()))
    }

    /// Validates an update and queues it for its fleet's next store call.
    async fn submit(&self, session: &Session, update: PositionUpdate, source: Source, reply: Reply<A>) {
        let (position, encoded) = match self.validate(session, update) {
            Ok(valid) => valid,
            Err(e) => return reply.send(source, Err(e)),
        };
        let update = Queued { position, encoded, queued: Instant::now(), source, reply };
        let Some(first) = self.batches.queue(update) else { return };
        match self.this.get().and_then(Weak::upgrade) {
            // Its own task: a caller that goes away (an HTTP client hanging
            // up) must not take the updates queued behind it along.
            Some(gateway) => {
                tokio::spawn(async move { gateway.run_batches(first).await });
            }
            // Not registered yet (`register` sets `this`): run here, boxed
            // so that the caller's future stays small (see below).
            None => Box::pin(self.run_batches(first)).await,
        }
    }

    /// Who publishes, for which vehicle, when, and whether it may now: the
    /// position event, encoded once.
    fn validate(&self, session: &Session, mut update: PositionUpdate) -> Result<(Position, Box<RawValue>), ApiError> {
        let vehicle_id = match session.role {
            Role::Viewer => return Err(ApiError::forbidden("viewers cannot publish positions")),
            Role::Vehicle => {
                let own = session.vehicle.as_deref().unwrap_or(&session.sub);
                match update.vehicle_id.take() {
                    Some(v) if v != own => {
                        return Err(ApiError::forbidden("a vehicle token publishes only its own vehicle"));
                    }
                    Some(v) => v,
                    None => own.to_owned(),
                }
            }
            Role::Dispatcher => {
                update.vehicle_id.take().ok_or_else(|| ApiError::invalid("vehicleId: required for dispatchers"))?
            }
        };
        let now = clock::now_ms();
        let ts = update.fix_time(now, self.window())?;
        self.limits.check_vehicle(&session.fleet, &vehicle_id).inspect_err(|_| {
            metrics::counter!(crate::metrics::names::RATE_LIMITED, "limit" => crate::metrics::Limit::Vehicle)
                .increment(1);
        })?;
        let position = Position {
            fleet: session.fleet.clone(),
            vehicle_id,
            lat: update.lat,
            lon: update.lon,
            ts,
            heading: update.heading,
            speed: update.speed,
            accuracy: update.accuracy,
            received_at: now,
        };
        let encoded = serde_json::value::to_raw_value(&position)
            .map_err(|_| ApiError::invalid("payload: not representable as JSON"))?;
        Ok((position, encoded))
    }

    /// A fleet's batch task: stores `first` with whatever queued meanwhile,
    /// then each batch that queued during the call before, until the
    /// fleet's queue is empty.
    async fn run_batches(&self, first: Queued<A>) {
        let mut running = Running { batches: &self.batches, fleet: first.position.fleet.clone(), done: false };
        let mut batch = Vec::with_capacity(8);
        batch.push(first);
        loop {
            self.batches.take(&running.fleet, &mut batch);
            self.store_batch(&running.fleet, std::mem::take(&mut batch)).await;
            if self.batches.finish_if_idle(&running.fleet) {
                running.done = true;
                return;
            }
        }
    }

    /// The store call of a batch, each fix tested against the fleet's
    /// geofences first. Should the geofences have changed since this
    /// replica read them, the store refuses the call whole (nothing
    /// written): the index is read again and the batch tested again.
    async fn put_tested(&self, fleet: &str, batch: &[Queued<A>]) -> Vec<Result<PutOutcome, StoreError>> {
        /// Reloads before giving up (answered `unavailable`): only a
        /// geofence written between every reload and call exhausts them.
        const TRIES: usize = 3;
        let mut index = self.geofences.index(fleet).await;
        for _ in 0..TRIES {
            let fences = match index {
                Ok(fences) => fences,
                Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
            };
            let started = Instant::now();
            let inside: Vec<Vec<String>> =
                batch.iter().map(|q| fences.containing(q.position.lon, q.position.lat)).collect();
            if !fences.is_empty() {
                metrics::histogram!(crate::metrics::names::GEOFENCE_EVALUATION_SECONDS)
                    .record(started.elapsed().as_secs_f64());
            }
            let writes: Vec<PositionWrite<'_>> = batch
                .iter()
                .zip(&inside)
                .map(|(q, inside)| PositionWrite {
                    inside,
                    fences_version: fences.version,
                    ..PositionWrite::new(&q.position, q.encoded.get(), q.queued)
                })
                .collect();
            let outcomes = self.store.put_positions(fleet, &writes).await;
            if !outcomes.iter().any(|o| matches!(o, Err(StoreError::FencesChanged))) {
                return outcomes;
            }
            index = self.geofences.reload(fleet).await;
        }
        batch.iter().map(|_| Err(StoreError::FencesChanged)).collect()
    }

    /// One store call for a batch; then one fan-out round of what it
    /// stored, and every sender's answer.
    async fn store_batch(&self, fleet: &str, batch: Vec<Queued<A>>) {
        let outcomes = self.put_tested(fleet, &batch).await;
        metrics::counter!(crate::metrics::names::INGEST_BATCHES).increment(1);
        let mut round = Vec::with_capacity(batch.len());
        let mut answers = Vec::with_capacity(batch.len());
        let mut failure: Option<StoreError> = None;
        let outcomes = outcomes.into_iter().map(Some).chain(std::iter::repeat_with(|| None));
        for (q, outcome) in batch.into_iter().zip(outcomes) {
            let result = match outcome.unwrap_or(Err(StoreError::Timeout)) {
                Ok(PutOutcome::Accepted { back_online, crossings }) => {
                    let p = q.position;
                    for c in &crossings {
                        metrics::counter!(crate::metrics::names::GEOFENCE_EVENTS, "kind" => c.kind).increment(1);
                    }
                    metrics::histogram!(crate::metrics::names::INGEST_SECONDS)
                        .record((clock::now_ms() - p.received_at).max(0) as f64 / 1000.0);
                    if back_online {
                        // Boxed: it is rare, and its (adapter's) future is
                        // large; inline it would be copied with this task's
                        // state at every spawn.
                        // Ordered just before the position that brought it back.
                        Box::pin(self.announce_online(&p.fleet, &p.vehicle_id, p.received_at - 1)).await;
                    }
                    round.push(Outgoing {
                        fleet: p.fleet,
                        vehicle: p.vehicle_id,
                        lon: p.lon,
                        lat: p.lat,
                        ts: p.ts,
                        encoded: q.encoded,
                        received_at: p.received_at,
                        relayed: false,
                        wire: Default::default(),
                        crossings,
                    });
                    Ok(Accepted { accepted: true, reason: None })
                }
                Ok(PutOutcome::Stale) => Ok(Accepted { accepted: false, reason: Some("stale") }),
                Err(e) => {
                    failure = Some(e);
                    Err(ApiError::unavailable())
                }
            };
            answers.push((q.reply, q.source, result));
        }
        if let Some(e) = failure {
            tracing::warn!(error = %e, fleet, "positions not stored");
        }
        self.log_crossings(&round);
        self.fanout.deliver_round(round).await;
        for (reply, source, result) in answers {
            reply.send(source, result);
        }
    }
}

/// The weak self-reference a gateway hands its batch tasks, set once by
/// [`super::register`].
pub type This<A> = std::sync::OnceLock<Weak<Gateway<A>>>;

/// Lets batch tasks outlive the call that started them.
pub(super) fn bind<A: Adapter>(gateway: &Arc<Gateway<A>>) {
    let _ = gateway.this.set(Arc::downgrade(gateway));
}
