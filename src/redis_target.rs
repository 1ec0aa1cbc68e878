//! Where the shared state lives: one Redis (`FLEETGATE_REDIS_URL`) or a
//! Redis Cluster (`FLEETGATE_REDIS_CLUSTER_NODES`), and how each of the two
//! drivers (redis-rs for commands, fred for pub/sub) is pointed at it.
//!
//! A cluster is reached through seed nodes; the drivers discover the rest
//! of the topology (and follow it through failovers) with `CLUSTER SLOTS`.

use fred::types::config::{Config as FredConfig, ServerConfig};

use crate::config::Config;

/// The Redis deployment a replica shares its state through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis server (or a proxy that looks like one).
    Single { url: String },
    /// A Redis Cluster: seed nodes, plus credentials given in any seed's URL.
    Cluster { nodes: Vec<SeedNode>, username: Option<String>, password: Option<String> },
}

/// One seed node of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedNode {
    pub host: String,
    pub port: u16,
}

impl RedisTarget {
    /// The target the configuration names: `None` for the embedded mode.
    pub fn from_config(config: &Config) -> Result<Option<Self>, String> {
        let nodes: Vec<&str> = config.redis_cluster_nodes.iter().map(|n| n.trim()).filter(|n| !n.is_empty()).collect();
        match (&config.redis_url, nodes.is_empty()) {
            (Some(_), false) => {
                Err("set FLEETGATE_REDIS_URL (one Redis) or FLEETGATE_REDIS_CLUSTER_NODES (a Redis Cluster), not both"
                    .into())
            }
            (Some(url), true) => Ok(Some(Self::Single { url: url.clone() })),
            (None, false) => Self::cluster(&nodes).map(Some),
            (None, true) => Ok(None),
        }
    }

    /// Parses seed nodes given as `host:port` or `redis://[user:pass@]host:port`.
    pub fn cluster(entries: &[&str]) -> Result<Self, String> {
        let mut nodes = Vec::with_capacity(entries.len());
        let (mut username, mut password) = (None, None);
        for entry in entries {
            let (credentials, address) = match entry.strip_prefix("redis://") {
                Some(rest) => {
                    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
                    match rest.rsplit_once('@') {
                        Some((credentials, address)) => (Some(credentials), address),
                        None => (None, rest),
                    }
                }
                None if entry.contains("://") => {
                    return Err(format!(
                        "FLEETGATE_REDIS_CLUSTER_NODES: `{}` is not host:port or redis://host:port",
                        redact(entry)
                    ));
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
                .ok_or_else(|| format!("FLEETGATE_REDIS_CLUSTER_NODES: `{}` is not host:port", redact(entry)))?;
            nodes.push(node);
        }
        if nodes.is_empty() {
            return Err("FLEETGATE_REDIS_CLUSTER_NODES names no node".into());
        }
        Ok(Self::Cluster { nodes, username, password })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// fred's configuration of this target (the pub/sub side).
    pub fn fred_config(&self) -> Result<FredConfig, fred::error::Error> {
        match self {
            Self::Single { url } => FredConfig::from_url(strip_query(url)),
            Self::Cluster { nodes, username, password } => Ok(FredConfig {
                server: ServerConfig::new_clustered(nodes.iter().map(|n| (n.host.clone(), n.port)).collect()),
                username: username.clone(),
                password: password.clone(),
                ..FredConfig::default()
            }),
        }
    }
}

impl SeedNode {
    /// The node as a redis-rs connection URL (the command side).
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("redis://[{}]:{}", self.host, self.port)
        } else {
            format!("redis://{}:{}", self.host, self.port)
        }
    }
}

/// `?protocol=resp3` and friends are for other drivers; fred takes none.
fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// An entry as it may be logged: without its credentials.
fn redact(entry: &str) -> String {
    match entry.rsplit_once('@') {
        Some((_, address)) => format!("redis://…@{address}"),
        None => entry.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_nodes_in_both_spellings() {
        let t = RedisTarget::cluster(&["10.0.0.1:7000", "redis://:s3cret@redis-1.svc:7001", "[::1]:7002"]).unwrap();
        let RedisTarget::Cluster { nodes, username, password } = &t else { panic!("not a cluster") };
        assert_eq!(nodes[0], SeedNode { host: "10.0.0.1".into(), port: 7000 });
        assert_eq!(nodes[1], SeedNode { host: "redis-1.svc".into(), port: 7001 });
        assert_eq!(nodes[2], SeedNode { host: "::1".into(), port: 7002 });
        assert_eq!(username, &None);
        assert_eq!(password.as_deref(), Some("s3cret"));
        assert_eq!(nodes[2].url(), "redis://[::1]:7002");
    }

    fn target(args: &[&str]) -> Result<Option<RedisTarget>, String> {
        use clap::Parser;
        let args = std::iter::once("fleetgate").chain(args.iter().copied());
        RedisTarget::from_config(&crate::config::Cli::parse_from(args).config)
    }

    #[test]
    fn one_redis_a_cluster_or_neither_but_not_both() {
        assert_eq!(target(&[]).unwrap(), None);
        assert!(!target(&["--redis-url", "redis://r:6379"]).unwrap().unwrap().is_cluster());
        assert!(target(&["--redis-cluster-nodes", "a:1,b:2"]).unwrap().unwrap().is_cluster());
        let both = target(&["--redis-url", "redis://r:6379", "--redis-cluster-nodes", "a:1"]).unwrap_err();
        assert!(both.contains("not both"), "{both}");
    }

    #[test]
    fn bad_entries_are_refused_without_echoing_secrets() {
        for bad in ["localhost", "host:notaport", ":7000", "rediss://h:1"] {
            assert!(RedisTarget::cluster(&[bad]).is_err(), "{bad}");
        }
        let err = RedisTarget::cluster(&["redis://user:topsecret@host"]).unwrap_err();
        assert!(!err.contains("topsecret"), "{err}");
    }
}
