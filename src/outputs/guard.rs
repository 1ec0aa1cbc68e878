//! Keeps webhooks off the deployment's own network (server-side request
//! forgery): a webhook URL whose host is, or resolves to, a loopback,
//! link-local, private or otherwise non-public address is refused, unless
//! `FLEETGATE_WEBHOOK_ALLOW_PRIVATE=true`.
//!
//! The check is made on the addresses a name resolves to, by the HTTP
//! client's own resolver ([`Resolver`]): the connection goes to an address
//! that passed, never to one looked up again afterwards (which a DNS
//! answer that changes between two lookups could point inside). Hosts
//! that are IP literals never reach a resolver and are checked before the
//! request ([`Guard::check_url`]). Proxies and redirects are off in the
//! client, so nothing else picks the address.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
};

/// How long a registration waits for its URL's host to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a webhook target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{host} is a loopback, link-local or private address (FLEETGATE_WEBHOOK_ALLOW_PRIVATE=true allows it)")]
    Private { host: String },
    #[error("{host} does not resolve")]
    Unresolved { host: String },
    /// 0.0.0.0 or `::`: they reach the local host.
    #[error("{host} is not an address a webhook can be sent to")]
    Unspecified { host: String },
}

/// Which addresses webhooks may reach.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    allow_private: bool,
}

impl Guard {
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }

    /// Whether a webhook may connect to `ip`. "Unspecified" (0.0.0.0,
    /// `::`) is never a target: it reaches the local host.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if ip.is_unspecified() {
            return false;
        }
        self.allow_private || is_public(ip)
    }

    /// The URL's host checked: an IP literal directly, a name by resolving
    /// it (every address it resolves to must be allowed, so a registration
    /// is refused when any could reach inside).
    pub async fn check_url(&self, url: &Url) -> Result<(), Refused> {
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.check_ip(ip, host);
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let addrs: Vec<SocketAddr> = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            _ => Vec::new(),
        };
        if addrs.is_empty() {
            return Err(Refused::Unresolved { host });
        }
        if addrs.iter().any(|a| !self.allows(a.ip())) {
            return Err(Refused::Private { host });
        }
        Ok(())
    }

    /// Only the IP-literal part of [`Guard::check_url`], for each request:
    /// names are checked by the [`Resolver`] as they are connected to.
    pub fn check_literal(&self, url: &Url) -> Result<(), Refused> {
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => self.check_ip(ip, host.to_owned()),
            Err(_) => Ok(()),
        }
    }

    fn check_ip(&self, ip: IpAddr, host: String) -> Result<(), Refused> {
        if ip.is_unspecified() {
            Err(Refused::Unspecified { host })
        } else if self.allows(ip) {
            Ok(())
        } else {
            Err(Refused::Private { host })
        }
    }
}

/// Whether `ip` is a public unicast address. Everything special-purpose
/// (RFC 6890 and successors) is out: loopback, private, shared (CGNAT),
/// link-local (cloud metadata services live there), unique-local,
/// documentation, benchmarking, multicast, broadcast and reserved
/// ranges; IPv4 embedded in IPv6 (mapped, compatible, NAT64, 6to4) is
/// judged as the IPv4 address it carries.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (b & 0xc0) == 64)
        // IETF protocol assignments, 192.0.0.0/24.
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking, 198.18.0.0/15.
        || (a == 198 && (b & 0xfe) == 18)
        // Reserved, 240.0.0.0/4.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local, fc00::/7.
        || (s[0] & 0xfe00) == 0xfc00
        // Link-local, fe80::/10, and the deprecated site-local, fec0::/10.
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        // Documentation, 2001:db8::/32 and 3fff::/20.
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] & 0xfff0) == 0x3ff0
        // Discard-only, 100::/64.
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0))
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), -compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(tail(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(tail(s[1], s[2]));
    }
    None
}

/// The webhook client's resolver: the system's (`getaddrinfo`, through
/// tokio), keeping only the addresses the guard allows.
pub struct Resolver {
    guard: Guard,
}

impl Resolver {
    pub fn new(guard: Guard) -> Arc<Self> {
        Arc::new(Self { guard })
    }
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.iter().copied().filter(|a| guard.allows(a.ip())).collect();
            if allowed.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> = if found.is_empty() {
                    Box::new(Refused::Unresolved { host })
                } else {
                    Box::new(Refused::Private { host })
                };
                return Err(refused);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The guard's refusal somewhere in `err`'s chain of causes.
pub fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for ok in ["1.1.1.1", "8.8.8.8", "100.128.0.1", "2606:4700::1111", "2a00:1450::1", "::ffff:1.1.1.1"] {
            assert!(public(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:c0a8:0101::1",
        ] {
            assert!(!public(bad), "{bad}");
        }
    }

    #[test]
    fn allow_private_allows_all_but_unspecified() {
        let open = Guard::new(true);
        assert!(open.allows("127.0.0.1".parse().unwrap()));
        assert!(open.allows("10.0.0.1".parse().unwrap()));
        assert!(!open.allows("0.0.0.0".parse().unwrap()));
        assert!(!open.allows("::".parse().unwrap()));
        assert!(!Guard::new(false).allows("127.0.0.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn urls_are_checked_on_their_resolved_addresses() {
        let closed = Guard::new(false);
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(matches!(closed.check_url(&url("http://127.0.0.1:9/x")).await, Err(Refused::Private { .. })));
        assert!(matches!(closed.check_url(&url("http://[::1]:9/x")).await, Err(Refused::Private { .. })));
        assert!(matches!(closed.check_url(&url("http://localhost:9/x")).await, Err(Refused::Private { .. })));
        assert!(closed.check_url(&url("http://1.1.1.1/x")).await.is_ok());
        assert!(closed.check_literal(&url("http://[::ffff:7f00:1]/")).is_err());
        assert!(closed.check_literal(&url("http://localhost/")).is_ok(), "names are the resolver's");
        let open = Guard::new(true);
        assert!(open.check_url(&url("http://localhost:9/x")).await.is_ok());
    }

    #[tokio::test]
    async fn the_resolver_hands_out_only_allowed_addresses() {
        let name: Name = "localhost".parse().unwrap();
        let err = Resolver::new(Guard::new(false)).resolve(name).await.err().expect("refused");
        assert!(matches!(refusal(&*err), Some(Refused::Private { .. })), "{err}");
        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<SocketAddr> = Resolver::new(Guard::new(true)).resolve(name).await.unwrap().collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
