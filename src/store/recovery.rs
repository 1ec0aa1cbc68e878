//! What connection state recovery keeps (contract section 10): each
//! opted-in socket's record under its private id, and a bounded per-fleet
//! log of the recoverable events that are not positions (presence, chat,
//! notices, geofence crossings). Missed positions need no log: they come
//! from the last-known positions the store keeps anyway.
//!
//! Both live beside the fleet's other keys (Redis: `fg:{<fleet>}:recovery`
//! for the log, `fg:{<fleet>}:rsock:<pid>` for a record), so any replica can
//! restore a socket whose replica died.

use std::fmt;

use async_trait::async_trait;

use super::StoreError;

/// A place in a fleet's recoverable history, `<ms>-<seq>`: the id of an
/// event in the fleet's log, `<receivedAt>-0` for a position, and
/// `<receivedAt>-<n>` for its `n`th geofence crossing. Ordered
/// by time, then sequence; this is the offset clients see (section 10).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogId {
    pub ms: u64,
    pub seq: u64,
}

impl LogId {
    pub const ZERO: LogId = LogId { ms: 0, seq: 0 };

    /// The offset of a position received at `received_at` (ms).
    pub fn position(received_at: i64) -> Self {
        Self { ms: u64::try_from(received_at).unwrap_or(0), seq: 0 }
    }

    /// The offset of the `index`th geofence crossing of a position received
    /// at `received_at`: just after the position, so a client that saw the
    /// position but not the crossing gets it replayed.
    pub fn crossing(received_at: i64, index: usize) -> Self {
        Self { seq: u64::try_from(index).unwrap_or(u64::MAX - 1).saturating_add(1), ..Self::position(received_at) }
    }

    /// Reads `<ms>-<seq>` (both at most 20 digits); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = super::parse_ms_seq(s)?;
        Some(Self { ms, seq })
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A socket's recovery record as stored: who holds it now and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRecord {
    /// The connection that holds the record (a restored socket takes it
    /// over; the one it replaced can then no longer write it).
    pub holder: String,
    /// The state, JSON (`gateway::recovery::State`).
    pub state: String,
}

/// The events after an offset, oldest first, or why they cannot be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missed {
    Events(Vec<(LogId, String)>),
    /// Some of them were trimmed from the log (it is capped).
    Trimmed,
}

#[async_trait]
pub trait RecoveryStore: Send + Sync {
    /// Writes a socket's record with a lifetime of `ttl_ms`. `claim`: take
    /// it over for `holder` whoever held it; otherwise written only while
    /// `holder` still holds it. Whether it was written.
    async fn save_socket(
        &self,
        fleet: &str,
        pid: &str,
        record: &SocketRecord,
        ttl_ms: i64,
        claim: bool,
    ) -> Result<bool, StoreError>;

    /// Extends the lifetime of the records of `(pid, holder)` to `ttl_ms`,
    /// each only while its holder still holds it: one call per fleet.
    async fn touch_sockets(&self, fleet: &str, records: &[(String, String)], ttl_ms: i64) -> Result<(), StoreError>;

    /// A live record.
    async fn socket(&self, fleet: &str, pid: &str) -> Result<Option<SocketRecord>, StoreError>;

    /// Appends an event (`entry`, JSON) to the fleet's log, capped at `max`
    /// entries and kept `ttl_ms` after the last append; its id is on `now_ms`
    /// unless the log already holds a later one.
    async fn append_event(
        &self,
        fleet: &str,
        now_ms: i64,
        entry: &str,
        max: u64,
        ttl_ms: i64,
    ) -> Result<LogId, StoreError>;

    /// The events logged after `after`, at most `max`, or
    /// [`Missed::Trimmed`] when one of them is gone.
    async fn events_after(&self, fleet: &str, after: LogId, max: u64) -> Result<Missed, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_read_back_and_order_by_time_then_sequence() {
        let a = LogId::parse("1732200000000-0").unwrap();
        let b = LogId::parse("1732200000000-3").unwrap();
        let c = LogId::parse("1732200000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1732200000000-3");
        assert_eq!(LogId::position(1732200000001), c);
        assert!(
            LogId::crossing(1732200000001, 0) > c && LogId::crossing(1732200000001, 0).to_string() == "1732200000001-1"
        );
        for bad in ["", "1", "-1", "1-", "a-1", "1-2-3", "1 -2", "123456789012345678901-0"] {
            assert_eq!(LogId::parse(bad), None, "{bad}");
        }
    }
}
