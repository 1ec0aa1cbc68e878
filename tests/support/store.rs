//! Fixtures of the tests that drive a `Store` directly (`tests/events.rs`,
//! `tests/store_batch.rs`) rather than through a server.

use fleetgate::{
    redis_target::{RedisMode, RedisTarget},
    store::Retention,
};

use super::Redis;

/// A minute for every TTL, ten history entries, a stream of `events_max`.
pub fn retention(events_max: usize) -> Retention {
    Retention {
        location_ttl_ms: 60_000,
        stale_after_ms: 60_000,
        presence_ttl_ms: 60_000,
        history_max: 10,
        history_ttl_ms: 60_000,
        events_max,
    }
}

impl Redis {
    /// This server as one plain Redis, as `FLEETGATE_REDIS_URL` names it.
    pub fn target(&self) -> RedisTarget {
        RedisTarget { mode: RedisMode::Single { url: self.url() }, tls: None, wait_replicas: 0 }
    }
}
