//! Connection state recovery in process memory, with the rules of the
//! Redis version (`store::redis::recovery`): holder-checked records with
//! a lifetime, and a capped per-fleet log that remembers the newest id it
//! dropped, so a gap that reaches into dropped entries is seen as trimmed.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use async_trait::async_trait;

use super::MemoryStore;
use crate::lock::MutexExt;
use crate::{
    clock::now_ms,
    store::{
        StoreError,
        recovery::{LogId, Missed, RecoveryStore, SocketRecord},
    },
};

struct Record {
    record: SocketRecord,
    expires_at: i64,
}

#[derive(Default)]
struct Log {
    entries: VecDeque<(LogId, String)>,
    last: LogId,
    max_deleted: LogId,
    expires_at: i64,
}

/// The recovery state of the embedded store.
#[derive(Default)]
pub(super) struct Recovery {
    sockets: Mutex<HashMap<(String, String), Record>>,
    logs: Mutex<HashMap<String, Log>>,
}

impl Recovery {
    /// Drops what expired (called by the store's sweeper).
    pub(super) fn sweep(&self, now: i64) {
        self.sockets.lock_or_recover().retain(|_, r| r.expires_at > now);
        self.logs.lock_or_recover().retain(|_, l| l.expires_at > now);
    }
}

#[async_trait]
impl RecoveryStore for MemoryStore {
    async fn save_socket(
        &self,
        fleet: &str,
        pid: &str,
        record: &SocketRecord,
        ttl_ms: i64,
        claim: bool,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut sockets = self.recovery.sockets.lock_or_recover();
        let key = (fleet.to_owned(), pid.to_owned());
        let held = sockets.get(&key).filter(|r| r.expires_at > now).is_some_and(|r| r.record.holder == record.holder);
        if !claim && !held {
            return Ok(false);
        }
        sockets.insert(key, Record { record: record.clone(), expires_at: now.saturating_add(ttl_ms.max(1)) });
        Ok(true)
    }

    async fn touch_sockets(&self, fleet: &str, records: &[(String, String)], ttl_ms: i64) -> Result<(), StoreError> {
        let now = now_ms();
        let mut sockets = self.recovery.sockets.lock_or_recover();
        for (pid, holder) in records {
            if let Some(r) = sockets.get_mut(&(fleet.to_owned(), pid.clone()))
                && r.expires_at > now
                && r.record.holder == *holder
            {
                r.expires_at = now.saturating_add(ttl_ms.max(1));
            }
        }
        Ok(())
    }

    async fn socket(&self, fleet: &str, pid: &str) -> Result<Option<SocketRecord>, StoreError> {
        let now = now_ms();
        let sockets = self.recovery.sockets.lock_or_recover();
        Ok(sockets.get(&(fleet.to_owned(), pid.to_owned())).filter(|r| r.expires_at > now).map(|r| r.record.clone()))
    }

    async fn append_event(
        &self,
        fleet: &str,
        now_ms: i64,
        entry: &str,
        max: u64,
        ttl_ms: i64,
    ) -> Result<LogId, StoreError> {
        let mut logs = self.recovery.logs.lock_or_recover();
        let log = logs.entry(fleet.to_owned()).or_default();
        let ms = u64::try_from(now_ms).unwrap_or(0);
        let id = if ms > log.last.ms { LogId { ms, seq: 0 } } else { LogId { ms: log.last.ms, seq: log.last.seq + 1 } };
        log.last = id;
        log.entries.push_back((id, entry.to_owned()));
        while log.entries.len() as u64 > max.max(1) {
            if let Some((dropped, _)) = log.entries.pop_front() {
                log.max_deleted = dropped;
            }
        }
        log.expires_at = crate::clock::now_ms().saturating_add(ttl_ms.max(1));
        Ok(id)
    }

    async fn events_after(&self, fleet: &str, after: LogId, max: u64) -> Result<Missed, StoreError> {
        let now = now_ms();
        let logs = self.recovery.logs.lock_or_recover();
        let Some(log) = logs.get(fleet).filter(|l| l.expires_at > now) else { return Ok(Missed::Events(Vec::new())) };
        if log.max_deleted > after {
            return Ok(Missed::Trimmed);
        }
        let events: Vec<(LogId, String)> = log.entries.iter().filter(|(id, _)| *id > after).cloned().collect();
        if events.len() as u64 > max {
            return Ok(Missed::Trimmed);
        }
        Ok(Missed::Events(events))
    }
}
