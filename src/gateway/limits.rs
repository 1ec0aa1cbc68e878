//! Abuse limits (issue "reliability and security"): events per second per
//! connection, position updates per second per vehicle, and connection caps
//! in all and per client address. Rate limits are GCRA token buckets
//! (`governor`); refusals are the contract's `rate_limited`, and the
//! global cap `unavailable` (the server is full; try another replica).

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::extract::ConnectInfo;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use crate::lock::MutexExt;
use crate::{
    config::Config,
    error::{ApiError, ErrorCode},
};

/// A connection's event budget.
pub type EventLimiter = DefaultDirectRateLimiter;

/// Bursts allowed above the steady rate: a client reconnecting sends its
/// subscriptions and a few updates at once, and a vehicle leaving a tunnel
/// uploads what it recorded meanwhile.
const EVENT_BURST: u32 = 2;
const VEHICLE_BURST: u32 = 10;

fn quota(per_sec: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(per_sec.saturating_mul(burst)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

pub struct Limits {
    events: Option<Quota>,
    vehicles: Option<DefaultKeyedRateLimiter<String>>,
    max_connections: usize,
    max_per_ip: usize,
    client_ip_header: Option<String>,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One accepted connection's place under the caps, given back on drop.
pub struct Slot {
    limits: Arc<Limits>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut per_ip = self.limits.per_ip.lock_or_recover();
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

impl Limits {
    pub fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            events: quota(config.rate_events_per_sec, EVENT_BURST),
            vehicles: quota(config.rate_vehicle_per_sec, VEHICLE_BURST).map(DefaultKeyedRateLimiter::keyed),
            max_connections: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
            client_ip_header: config.client_ip_header.as_ref().map(|h| h.to_ascii_lowercase()),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh event budget for a new connection, if events are limited.
    pub fn event_limiter(&self) -> Option<EventLimiter> {
        self.events.map(EventLimiter::direct)
    }

    /// Takes one update from the vehicle's budget.
    pub fn check_vehicle(&self, fleet: &str, vehicle: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.vehicles else { return Ok(()) };
        // `/` is outside the id grammar: no two pairs share a key.
        limiter
            .check_key(&format!("{fleet}/{vehicle}"))
            .map_err(|_| ApiError::new(ErrorCode::RateLimited, "too many updates for this vehicle"))
    }

    /// Forgets vehicles whose budget is full again (called periodically,
    /// so the keyed state stays as large as the set of active vehicles).
    pub fn sweep(&self) {
        if let Some(limiter) = &self.vehicles {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// The client's address: from the configured proxy header when set
    /// (its last entry: what the nearest proxy saw), else the peer's.
    pub fn client_ip(&self, parts: &axum::http::request::Parts) -> Option<IpAddr> {
        if let Some(name) = &self.client_ip_header {
            let ip = parts
                .headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse().ok());
            if ip.is_some() {
                return ip;
            }
        }
        parts.extensions.get::<ConnectInfo<crate::net::PeerAddr>>().map(|c| c.0.0.ip())
    }

    /// Admits a new connection under the caps.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, ApiError> {
        let open = self.open.fetch_add(1, Ordering::Relaxed);
        // From here on the slot gives the count back, whatever happens.
        let mut slot = Slot { limits: self.clone(), ip: None };
        if self.max_connections > 0 && open >= self.max_connections {
            return Err(ApiError::new(ErrorCode::Unavailable, "this server is at its connection limit"));
        }
        if self.max_per_ip > 0
            && let Some(ip) = ip
        {
            let mut per_ip = self.per_ip.lock_or_recover();
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(ApiError::new(ErrorCode::RateLimited, "too many connections from this address"));
            }
            *n += 1;
            slot.ip = Some(ip);
        }
        Ok(slot)
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn limits(extra: &[&str]) -> Arc<Limits> {
        let mut args = vec!["fleetgate"];
        args.extend_from_slice(extra);
        Limits::new(&crate::config::Cli::parse_from(args).config)
    }

    #[test]
    fn caps_connections_and_gives_slots_back() {
        let l = limits(&["--max-connections", "2", "--max-connections-per-ip", "1"]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = l.admit(Some(a)).unwrap();
        assert_eq!(l.admit(Some(a)).err().unwrap().code, ErrorCode::RateLimited);
        let _second = l.admit(Some(b)).unwrap();
        assert_eq!(l.admit(None).err().unwrap().code, ErrorCode::Unavailable);
        drop(first);
        assert_eq!(l.open_connections(), 1);
        l.admit(Some(a)).unwrap();
    }

    #[test]
    fn vehicle_budget_is_per_vehicle() {
        let l = limits(&["--rate-vehicle-per-sec", "1"]);
        for _ in 0..VEHICLE_BURST {
            l.check_vehicle("f", "a").unwrap();
        }
        assert_eq!(l.check_vehicle("f", "a").unwrap_err().code, ErrorCode::RateLimited);
        l.check_vehicle("f", "b").unwrap();
        l.check_vehicle("g", "a").unwrap();
    }

    #[test]
    fn zero_means_no_limit() {
        let l = limits(&["--rate-vehicle-per-sec", "0", "--rate-events-per-sec", "0", "--max-connections", "0"]);
        assert!(l.event_limiter().is_none());
        for _ in 0..1000 {
            l.check_vehicle("f", "a").unwrap();
        }
        let _slots: Vec<_> = (0..1000).map(|_| l.admit(None).unwrap()).collect();
    }
}
