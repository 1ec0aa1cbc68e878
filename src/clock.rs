//! Wall-clock time, as the contract counts it: milliseconds since the Unix
//! epoch (fix times, `receivedAt`, deadlines, TTLs).

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
