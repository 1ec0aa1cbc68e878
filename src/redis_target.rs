//! Where the shared state lives: one Redis (`FLEETGATE_REDIS_URL`), a
//! Redis Cluster (`FLEETGATE_REDIS_CLUSTER_NODES`) or one Redis found
//! through Sentinel (`FLEETGATE_REDIS_SENTINELS`), over TLS or not, and how
//! each of the two drivers (redis-rs for commands, fred for pub/sub) is
//! pointed at it.
//!
//! A cluster is reached through seed nodes; the drivers discover the rest
//! of the topology (and follow it through failovers) with `CLUSTER SLOTS`.
//! Sentinel mode is followed by [`crate::sentinel`].

use fred::types::config::{Config as FredConfig, ServerConfig};

use crate::{
    config::Config,
    redis_tls::{RedisTls, TlsError},
};

/// Why the Redis settings name no usable target. Each names its setting.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(
        "set one of FLEETGATE_REDIS_URL (one Redis), FLEETGATE_REDIS_CLUSTER_NODES (a Redis Cluster) or \
         FLEETGATE_REDIS_SENTINELS (Redis through Sentinel), not both {}",
        .0.join(" and ")
    )]
    Modes(Vec<&'static str>),
    #[error(
        "{0} is for Sentinel mode (with FLEETGATE_REDIS_SENTINELS); with a URL or cluster nodes, put credentials \
         in them (redis://user:password@host:port)"
    )]
    SentinelOnly(&'static str),
    #[error("FLEETGATE_REDIS_URL: must start with redis:// or rediss:// (TLS)")]
    Scheme,
    #[error("{setting}: `{entry}` is not host:port, redis://host:port or rediss://host:port")]
    NodeScheme { setting: &'static str, entry: String },
    #[error("{setting}: `{entry}` is not host:port")]
    NodeAddress { setting: &'static str, entry: String },
    #[error("{0} names no node")]
    NoNodes(&'static str),
    #[error("{0}: mixes redis:// and rediss:// entries; TLS is all or nothing")]
    MixedTls(&'static str),
    #[error("FLEETGATE_REDIS_SENTINELS needs FLEETGATE_REDIS_SENTINEL_MASTER (the master set name, e.g. mymaster)")]
    NoMaster,
    #[error(
        "FLEETGATE_REDIS_TLS_* is set but no Redis is (FLEETGATE_REDIS_URL, FLEETGATE_REDIS_CLUSTER_NODES or \
         FLEETGATE_REDIS_SENTINELS)"
    )]
    TlsWithoutRedis,
    #[error("FLEETGATE_REDIS_TLS_* is set but the Redis address is redis:// (plain text): use rediss:// for TLS")]
    TlsInPlainText,
    #[error("FLEETGATE_REDIS_WAIT_REPLICAS is for one Redis or Sentinel mode, not a Redis Cluster")]
    WaitOnCluster,
    /// fred's reading of `FLEETGATE_REDIS_URL`, its password taken out.
    #[error("{0}")]
    Url(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The Redis deployment a replica shares its state through, and how it
/// is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisTarget {
    pub mode: RedisMode,
    /// `Some`: every connection (nodes and sentinels) is TLS (`rediss://`).
    pub tls: Option<RedisTls>,
    /// Replicas a write must reach before it is acknowledged (`WAIT`).
    pub wait_replicas: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisMode {
    /// One Redis server (or a proxy that looks like one).
    Single { url: String },
    /// A Redis Cluster: seed nodes, plus credentials given in any seed's URL.
    Cluster { nodes: Vec<SeedNode>, username: Option<String>, password: Option<String> },
    /// The primary a set of Sentinels names.
    Sentinel(SentinelTarget),
}

/// The Sentinels, the master they watch, and the credentials of both.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    pub sentinels: Vec<SeedNode>,
    pub master: String,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

// Passwords stay out of logs and panics.
impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("sentinel_password", &self.sentinel_password.is_some())
            .field("password", &self.password.is_some())
            .finish()
    }
}

/// One seed node of a cluster, or one Sentinel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedNode {
    pub host: String,
    pub port: u16,
}

/// Node entries as parsed: addresses, whether they asked for TLS, and any
/// credentials given in them.
struct Nodes {
    nodes: Vec<SeedNode>,
    tls: bool,
    username: Option<String>,
    password: Option<String>,
}

impl RedisTarget {
    /// The target the configuration names: `None` for the embedded mode.
    pub fn from_config(config: &Config) -> Result<Option<Self>, TargetError> {
        let trimmed = |list: &[String]| -> Vec<String> {
            list.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect()
        };
        let (cluster, sentinels) = (trimmed(&config.redis_cluster_nodes), trimmed(&config.redis_sentinels));
        let named: Vec<&'static str> = [
            config.redis_url.as_ref().map(|_| "FLEETGATE_REDIS_URL"),
            (!cluster.is_empty()).then_some("FLEETGATE_REDIS_CLUSTER_NODES"),
            (!sentinels.is_empty()).then_some("FLEETGATE_REDIS_SENTINELS"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if named.len() > 1 {
            return Err(TargetError::Modes(named));
        }
        if sentinels.is_empty() {
            for (value, name) in [
                (config.redis_sentinel_master.is_some(), "FLEETGATE_REDIS_SENTINEL_MASTER"),
                (config.redis_sentinel_password.is_some(), "FLEETGATE_REDIS_SENTINEL_PASSWORD"),
                (config.redis_password.is_some(), "FLEETGATE_REDIS_PASSWORD"),
                (config.redis_username.is_some(), "FLEETGATE_REDIS_USERNAME"),
            ] {
                if value {
                    return Err(TargetError::SentinelOnly(name));
                }
            }
        }
        let tls_files = config.redis_tls_ca_file.is_some()
            || config.redis_tls_cert_file.is_some()
            || config.redis_tls_key_file.is_some();
        let (mode, tls) = if let Some(url) = &config.redis_url {
            let tls = if url.starts_with("rediss://") {
                true
            } else if url.starts_with("redis://") {
                false
            } else {
                return Err(TargetError::Scheme);
            };
            (RedisMode::Single { url: url.clone() }, tls)
        } else if !cluster.is_empty() {
            let entries: Vec<&str> = cluster.iter().map(String::as_str).collect();
            let parsed = parse_nodes("FLEETGATE_REDIS_CLUSTER_NODES", &entries)?;
            let mode = RedisMode::Cluster { nodes: parsed.nodes, username: parsed.username, password: parsed.password };
            (mode, parsed.tls)
        } else if !sentinels.is_empty() {
            let entries: Vec<&str> = sentinels.iter().map(String::as_str).collect();
            let parsed = parse_nodes("FLEETGATE_REDIS_SENTINELS", &entries)?;
            let master = config
                .redis_sentinel_master
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .ok_or(TargetError::NoMaster)?
                .to_owned();
            let mode = RedisMode::Sentinel(SentinelTarget {
                sentinels: parsed.nodes,
                master,
                sentinel_username: parsed.username,
                sentinel_password: config.redis_sentinel_password.clone().or(parsed.password),
                username: config.redis_username.clone(),
                password: config.redis_password.clone(),
            });
            (mode, parsed.tls)
        } else {
            if tls_files {
                return Err(TargetError::TlsWithoutRedis);
            }
            return Ok(None);
        };
        let tls = match (tls, tls_files) {
            (true, _) => Some(RedisTls::from_config(config)?.unwrap_or_else(RedisTls::system_roots)),
            // Certificates configured for a plain-text target: a typo in
            // the scheme must not silently send everything in the clear.
            (false, true) => return Err(TargetError::TlsInPlainText),
            (false, false) => None,
        };
        let wait_replicas =
            config.redis_wait_replicas.unwrap_or(if matches!(mode, RedisMode::Sentinel(_)) { 1 } else { 0 });
        if wait_replicas > 0 && matches!(mode, RedisMode::Cluster { .. }) {
            return Err(TargetError::WaitOnCluster);
        }
        Ok(Some(Self { mode, tls, wait_replicas }))
    }

    /// Parses seed nodes given as `host:port` or `redis[s]://[user:pass@]host:port` (plain text).
    pub fn cluster(entries: &[&str]) -> Result<Self, TargetError> {
        let parsed = parse_nodes("FLEETGATE_REDIS_CLUSTER_NODES", entries)?;
        let mode = RedisMode::Cluster { nodes: parsed.nodes, username: parsed.username, password: parsed.password };
        Ok(Self { mode, tls: parsed.tls.then(RedisTls::system_roots), wait_replicas: 0 })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.mode, RedisMode::Cluster { .. })
    }

    /// What the logs may call this target (no credentials).
    pub fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        let list = |nodes: &[SeedNode]| nodes.iter().map(|n| n.address()).collect::<Vec<_>>().join(",");
        match &self.mode {
            RedisMode::Single { url } => redact(url),
            RedisMode::Cluster { nodes, .. } => format!("{scheme}://{} (cluster)", list(nodes)),
            RedisMode::Sentinel(s) => format!("{scheme}://{} (sentinels of {})", list(&s.sentinels), s.master),
        }
    }

    /// fred's configuration of this target (the pub/sub side).
    pub fn fred_config(&self) -> Result<FredConfig, TargetError> {
        let mut config = match &self.mode {
            RedisMode::Single { url } => {
                FredConfig::from_url(strip_query(url)).map_err(|e| TargetError::Url(redact_error(&e, url)))?
            }
            RedisMode::Cluster { nodes, username, password } => FredConfig {
                server: ServerConfig::new_clustered(nodes.iter().map(|n| (n.host.clone(), n.port)).collect()),
                username: username.clone(),
                password: password.clone(),
                ..FredConfig::default()
            },
            RedisMode::Sentinel(s) => FredConfig {
                server: ServerConfig::Sentinel {
                    hosts: s
                        .sentinels
                        .iter()
                        .map(|n| fred::types::config::Server::new(n.host.clone(), n.port))
                        .collect(),
                    service_name: s.master.clone(),
                    username: s.sentinel_username.clone(),
                    password: s.sentinel_password.clone(),
                },
                username: s.username.clone(),
                password: s.password.clone(),
                ..FredConfig::default()
            },
        };
        // Sentinels and nodes alike: never a plain-text connection when
        // TLS was asked for.
        config.tls = match &self.tls {
            Some(tls) => Some(tls.fred_config()?),
            None => None,
        };
        Ok(config)
    }
}

impl SeedNode {
    /// The node as a redis-rs connection URL (the command side).
    pub fn url(&self, tls: bool) -> String {
        format!("{}://{}", if tls { "rediss" } else { "redis" }, self.address())
    }

    /// `host:port`, bracketed for IPv6.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses `host:port` or `redis[s]://[user:pass@]host:port` entries; bare
/// entries follow the scheme of the others, which must agree.
fn parse_nodes(setting: &'static str, entries: &[&str]) -> Result<Nodes, TargetError> {
    let mut nodes = Vec::with_capacity(entries.len());
    let (mut username, mut password) = (None, None);
    let (mut plain, mut tls) = (false, false);
    for entry in entries {
        let rest = if let Some(rest) = entry.strip_prefix("redis://") {
            plain = true;
            Some(rest)
        } else if let Some(rest) = entry.strip_prefix("rediss://") {
            tls = true;
            Some(rest)
        } else {
            None
        };
        let (credentials, address) = match rest {
            Some(rest) => {
                let rest = rest.split(['/', '?']).next().unwrap_or(rest);
                match rest.rsplit_once('@') {
                    Some((credentials, address)) => (Some(credentials), address),
                    None => (None, rest),
                }
            }
            None if entry.contains("://") => {
                return Err(TargetError::NodeScheme { setting, entry: redact(entry) });
            }
            None => (None, *entry),
        };
        if let Some(credentials) = credentials {
            let (user, pass) = match credentials.split_once(':') {
                Some((user, pass)) => (user, pass),
                None => ("", credentials),
            };
            if !user.is_empty() {
                username = Some(user.to_owned());
            }
            if !pass.is_empty() {
                password = Some(pass.to_owned());
            }
        }
        let node = address
            .rsplit_once(':')
            .and_then(|(host, port)| {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Some(SeedNode { host: host.to_owned(), port: port.parse().ok()? })
            })
            .filter(|n| !n.host.is_empty())
            .ok_or_else(|| TargetError::NodeAddress { setting, entry: redact(entry) })?;
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(TargetError::NoNodes(setting));
    }
    if plain && tls {
        return Err(TargetError::MixedTls(setting));
    }
    Ok(Nodes { nodes, tls, username, password })
}

/// `?protocol=resp3` and friends are for other drivers; fred takes none.
fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// An entry or URL as it may be logged: without its credentials.
pub fn redact(entry: &str) -> String {
    match entry.rsplit_once('@') {
        Some((before, address)) => {
            let scheme = before.split_once("://").map_or("redis", |(s, _)| s);
            format!("{scheme}://…@{address}")
        }
        None => entry.to_owned(),
    }
}

/// A driver's URL error, which may quote the URL, without the URL's password.
fn redact_error(error: &impl std::fmt::Display, url: &str) -> String {
    let text = error.to_string();
    match url.split_once("://").and_then(|(_, rest)| rest.rsplit_once('@')).map(|(creds, _)| creds) {
        Some(credentials) if !credentials.is_empty() => text.replace(credentials, "…"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_nodes_in_both_spellings() {
        let t = RedisTarget::cluster(&["10.0.0.1:7000", "redis://:s3cret@redis-1.svc:7001", "[::1]:7002"]).unwrap();
        let RedisMode::Cluster { nodes, username, password } = &t.mode else { panic!("not a cluster") };
        assert_eq!(nodes[0], SeedNode { host: "10.0.0.1".into(), port: 7000 });
        assert_eq!(nodes[1], SeedNode { host: "redis-1.svc".into(), port: 7001 });
        assert_eq!(nodes[2], SeedNode { host: "::1".into(), port: 7002 });
        assert_eq!(username, &None);
        assert_eq!(password.as_deref(), Some("s3cret"));
        assert_eq!(nodes[2].url(false), "redis://[::1]:7002");
        assert_eq!(nodes[0].url(true), "rediss://10.0.0.1:7000");
    }

    /// The target of `args`, or the text of its error.
    fn target(args: &[&str]) -> Result<Option<RedisTarget>, String> {
        use clap::Parser;
        let args = std::iter::once("fleetgate").chain(args.iter().copied());
        RedisTarget::from_config(&crate::config::Cli::parse_from(args).config).map_err(|e| e.to_string())
    }

    #[test]
    fn one_redis_a_cluster_or_neither_but_not_both() {
        assert_eq!(target(&[]).unwrap(), None);
        assert!(!target(&["--redis-url", "redis://r:6379"]).unwrap().unwrap().is_cluster());
        assert!(target(&["--redis-cluster-nodes", "a:1,b:2"]).unwrap().unwrap().is_cluster());
        let both = target(&["--redis-url", "redis://r:6379", "--redis-cluster-nodes", "a:1"]).unwrap_err();
        assert!(both.contains("not both"), "{both}");
        let three = target(&["--redis-url", "redis://r:6379", "--redis-sentinels", "s:26379"]).unwrap_err();
        assert!(three.contains("FLEETGATE_REDIS_URL and FLEETGATE_REDIS_SENTINELS"), "{three}");
    }

    #[test]
    fn bad_entries_are_refused_without_echoing_secrets() {
        for bad in ["localhost", "host:notaport", ":7000", "http://h:1"] {
            assert!(RedisTarget::cluster(&[bad]).is_err(), "{bad}");
        }
        let err = RedisTarget::cluster(&["redis://user:topsecret@host"]).unwrap_err().to_string();
        assert!(!err.contains("topsecret"), "{err}");
    }

    #[test]
    fn tls_follows_the_scheme_and_is_never_dropped_silently() {
        let single = target(&["--redis-url", "rediss://u:p@r:6380"]).unwrap().unwrap();
        assert!(single.tls.is_some());
        assert!(!single.describe().contains(":p@"), "{}", single.describe());
        let cluster = target(&["--redis-cluster-nodes", "rediss://a:1,b:2"]).unwrap().unwrap();
        assert!(cluster.tls.is_some(), "bare seeds follow the others");
        let mixed = target(&["--redis-cluster-nodes", "rediss://a:1,redis://b:2"]).unwrap_err();
        assert!(mixed.contains("all or nothing"), "{mixed}");
        let plain = target(&["--redis-url", "redis://r:6379", "--redis-tls-ca-file", "/etc/hostname"]).unwrap_err();
        assert!(plain.contains("use rediss://"), "{plain}");
    }

    #[test]
    fn sentinel_mode_needs_its_master_and_owns_its_passwords() {
        let t = target(&[
            "--redis-sentinels",
            "s1:26379, s2:26379",
            "--redis-sentinel-master",
            "mymaster",
            "--redis-password",
            "pw",
        ])
        .unwrap()
        .unwrap();
        let RedisMode::Sentinel(s) = &t.mode else { panic!("not sentinel") };
        assert_eq!(s.sentinels.len(), 2);
        assert_eq!(s.master, "mymaster");
        assert_eq!(t.wait_replicas, 1, "sentinel mode waits for a replica by default");
        assert!(!format!("{t:?}").contains("pw"), "{t:?}");
        let no_master = target(&["--redis-sentinels", "s1:26379"]).unwrap_err();
        assert!(no_master.contains("FLEETGATE_REDIS_SENTINEL_MASTER"), "{no_master}");
        let stray = target(&["--redis-url", "redis://r:6379", "--redis-password", "pw"]).unwrap_err();
        assert!(stray.starts_with("FLEETGATE_REDIS_PASSWORD is for Sentinel mode"), "{stray}");
        assert_eq!(target(&["--redis-url", "redis://r:6379"]).unwrap().unwrap().wait_replicas, 0);
    }
}
