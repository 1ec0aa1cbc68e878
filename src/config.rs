//! The one configuration of a fleetgate process, read from flags and
//! `FLEETGATE_*` environment variables (the names are part of the wire
//! contract, section 8 and throughout).
//!
//! It is longer than the other modules on purpose: every setting is one
//! documented field here, so an operator (and `--help`) finds them all in
//! one place, and the few derived values (`*_ms`, `Duration`s) sit beside
//! the fields they come from.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Command line of the `fleetgate` binary. Serving is the default command.
#[derive(Debug, Parser)]
#[command(name = "fleetgate", version, about = "Real-time location gateway for vehicle fleets")]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Socket.IO, the HTTP API and metrics (the default).
    Serve,
    /// Mint a token with the configured key, for operators and scripts.
    Token(TokenArgs),
    /// Exit 0 if the server on FLEETGATE_ADDR answers /healthz (for container health checks).
    Healthcheck,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Fleet (tenant) the token acts in.
    #[arg(long)]
    pub fleet: String,
    /// `vehicle`, `viewer` or `dispatcher`.
    #[arg(long)]
    pub role: String,
    /// Principal id.
    #[arg(long)]
    pub sub: String,
    /// For vehicle tokens, the only vehicle id it may publish for (defaults to `sub`).
    #[arg(long)]
    pub vehicle: Option<String>,
    /// For viewer tokens, the only vehicle ids it may watch (`a,b,c`, at most
    /// 256): a scoped token for a rider app. Without it a viewer watches the whole fleet.
    #[arg(long, value_delimiter = ',')]
    pub vehicles: Option<Vec<String>>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

/// Every setting of a fleetgate process.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address for Socket.IO, the HTTP API and the map page.
    #[arg(long, env = "FLEETGATE_ADDR", default_value = "0.0.0.0:3000", global = true)]
    pub addr: SocketAddr,

    /// Address of the Prometheus endpoint (`/metrics`).
    #[arg(long, env = "FLEETGATE_METRICS_ADDR", default_value = "0.0.0.0:9464", global = true)]
    pub metrics_addr: SocketAddr,

    /// Socket.IO request path, for path-rewriting proxies.
    #[arg(long, env = "FLEETGATE_SOCKETIO_PATH", default_value = "/socket.io/", global = true)]
    pub socketio_path: String,

    /// Redis URL; unset runs a single node with everything in memory.
    // URLs carry passwords: `--help` must not print the environment's value.
    #[arg(long, env = "FLEETGATE_REDIS_URL", hide_env_values = true, global = true)]
    pub redis_url: Option<String>,

    /// Redis Cluster seed nodes instead of the URL: `host:port,…`, or
    /// `redis://[:password@]host:port,…`.
    #[arg(long, env = "FLEETGATE_REDIS_CLUSTER_NODES", value_delimiter = ',', hide_env_values = true, global = true)]
    pub redis_cluster_nodes: Vec<String>,

    /// Redis command connections; each is multiplexed, and they are used in turn.
    #[arg(long, env = "FLEETGATE_REDIS_POOL_SIZE", default_value_t = 4, global = true)]
    pub redis_pool_size: usize,

    /// PEM CA certificate(s) that Redis's TLS certificate must chain to
    /// (`rediss://` targets); unset: the system roots.
    #[arg(long, env = "FLEETGATE_REDIS_TLS_CA_FILE", global = true)]
    pub redis_tls_ca_file: Option<PathBuf>,

    /// PEM client certificate for mutual TLS to Redis (with FLEETGATE_REDIS_TLS_KEY_FILE).
    #[arg(long, env = "FLEETGATE_REDIS_TLS_CERT_FILE", global = true)]
    pub redis_tls_cert_file: Option<PathBuf>,

    /// PEM private key of FLEETGATE_REDIS_TLS_CERT_FILE.
    #[arg(long, env = "FLEETGATE_REDIS_TLS_KEY_FILE", global = true)]
    pub redis_tls_key_file: Option<PathBuf>,

    /// Redis Sentinels instead of the URL: `host:port,…` (or
    /// `rediss://host:port,…` for TLS); needs FLEETGATE_REDIS_SENTINEL_MASTER.
    #[arg(long, env = "FLEETGATE_REDIS_SENTINELS", value_delimiter = ',', hide_env_values = true, global = true)]
    pub redis_sentinels: Vec<String>,

    /// The master (set) name the Sentinels watch, e.g. `mymaster`.
    #[arg(long, env = "FLEETGATE_REDIS_SENTINEL_MASTER", global = true)]
    pub redis_sentinel_master: Option<String>,

    /// Password of the Sentinels themselves (`requirepass` of sentinel.conf).
    #[arg(long, env = "FLEETGATE_REDIS_SENTINEL_PASSWORD", hide_env_values = true, global = true)]
    pub redis_sentinel_password: Option<String>,

    /// Password of the Redis primary found through Sentinel (in the other
    /// modes it goes in the URL).
    #[arg(long, env = "FLEETGATE_REDIS_PASSWORD", hide_env_values = true, global = true)]
    pub redis_password: Option<String>,

    /// ACL user of the Redis primary found through Sentinel (default: `default`).
    #[arg(long, env = "FLEETGATE_REDIS_USERNAME", global = true)]
    pub redis_username: Option<String>,

    /// Replicas that must have a write before it is acknowledged (Redis
    /// `WAIT`), so a failover cannot lose it. Default: 1 with Sentinel,
    /// 0 otherwise; at most 16.
    #[arg(long, env = "FLEETGATE_REDIS_WAIT_REPLICAS", global = true,
          value_parser = clap::value_parser!(u32).range(0..=16))]
    pub redis_wait_replicas: Option<u32>,

    /// HS256 shared secret, without a key id (taken whole, commas included).
    #[arg(long, env = "FLEETGATE_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,

    /// HS256 secrets with key ids, `kid:secret,kid:secret`, newest first (the first signs).
    #[arg(long, env = "FLEETGATE_JWT_SECRETS", hide_env_values = true, global = true)]
    pub jwt_secrets: Option<String>,

    /// PEM public keys (RS256 or ES256) that verify tokens, comma separated;
    /// each file's stem is its key id (`2026-11.pem` is kid `2026-11`).
    #[arg(long, env = "FLEETGATE_JWT_PUBLIC_KEY_FILE", global = true)]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Directory whose `*.pem` public keys all verify tokens, kid = file stem
    /// (a mounted Kubernetes Secret).
    #[arg(long, env = "FLEETGATE_JWT_KEYS_DIR", global = true)]
    pub jwt_keys_dir: Option<PathBuf>,

    /// PEM private key of one of the public keys (whose kid it signs under),
    /// used only by `fleetgate token`.
    #[arg(long, env = "FLEETGATE_JWT_PRIVATE_KEY_FILE", global = true)]
    pub jwt_private_key_file: Option<PathBuf>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "FLEETGATE_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "FLEETGATE_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// Clock leeway in seconds for `exp` and `nbf` (at most 86400).
    #[arg(long, env = "FLEETGATE_JWT_LEEWAY_SECS", default_value_t = 0, global = true)]
    pub jwt_leeway_secs: u64,

    /// JWKS document of an identity provider (its OIDC `jwks_uri`) whose
    /// RS256, ES256 and EdDSA keys verify tokens by `kid`, besides the
    /// configured keys. `https://` (`http://` only to a loopback address).
    #[arg(long, env = "FLEETGATE_JWT_JWKS_URL", global = true)]
    pub jwt_jwks_url: Option<String>,

    /// Seconds between scheduled refreshes of the JWKS (1 to 86400); a
    /// token naming an unknown `kid` refreshes it at once, at most every 10 s.
    #[arg(long, env = "FLEETGATE_JWT_JWKS_REFRESH_SECS", default_value_t = 300, global = true)]
    pub jwt_jwks_refresh_secs: u64,

    /// Seconds a socket may stay connected without authenticating.
    #[arg(long, env = "FLEETGATE_AUTH_TIMEOUT_SECS", default_value_t = 10, global = true)]
    pub auth_timeout_secs: u64,

    /// Upper bound of a session's lifetime (also bounded by the token's `exp`).
    #[arg(long, env = "FLEETGATE_SESSION_TTL_SECS", default_value_t = 10800, global = true)]
    pub session_ttl_secs: u64,

    /// How far a fix time may lie ahead of server time.
    #[arg(long, env = "FLEETGATE_MAX_FUTURE_MS", default_value_t = 60_000, global = true)]
    pub max_future_ms: i64,

    /// How far a fix time may lie behind server time.
    #[arg(long, env = "FLEETGATE_MAX_AGE_MS", default_value_t = 604_800_000, global = true)]
    pub max_age_ms: i64,

    /// Lifetime of a vehicle's last-known position.
    #[arg(long, env = "FLEETGATE_LOCATION_TTL_SECS", default_value_t = 10800, global = true)]
    pub location_ttl_secs: u64,

    /// Conflation window in ms (0 = every update is sent on its own).
    #[arg(long, env = "FLEETGATE_BATCH_MS", default_value_t = 0, global = true)]
    pub batch_ms: u64,

    /// Seconds without an update after which a vehicle counts as offline.
    #[arg(long, env = "FLEETGATE_STALE_AFTER_SECS", default_value_t = 60, global = true)]
    pub stale_after_secs: u64,

    /// Seconds after which a replica that stopped refreshing its vehicles'
    /// presence (it died) no longer keeps them online.
    #[arg(long, env = "FLEETGATE_PRESENCE_TTL_SECS", default_value_t = 30, global = true)]
    pub presence_ttl_secs: u64,

    /// Messages kept per room.
    #[arg(long, env = "FLEETGATE_HISTORY_MAX", default_value_t = 1000, global = true)]
    pub history_max: usize,

    /// Lifetime of a room's history after its last message.
    #[arg(long, env = "FLEETGATE_HISTORY_TTL_SECS", default_value_t = 604_800, global = true)]
    pub history_ttl_secs: u64,

    /// Events kept per fleet in its event stream (contract section 12),
    /// for webhooks, NATS and consumer groups to read; 0 = no stream. The
    /// README gives the memory this costs per fleet.
    #[arg(long, env = "FLEETGATE_EVENTS_MAX", default_value_t = 10_000, global = true)]
    pub events_max: usize,

    /// Rooms one socket may join.
    #[arg(long, env = "FLEETGATE_MAX_ROOMS", default_value_t = 64, global = true)]
    pub max_rooms: usize,

    /// Subscriptions (vehicle ids plus boxes) one socket may hold.
    #[arg(long, env = "FLEETGATE_MAX_SUBSCRIPTIONS", default_value_t = 1000, global = true)]
    pub max_subscriptions: usize,

    /// Largest websocket message and HTTP body accepted, in bytes.
    #[arg(long, env = "FLEETGATE_MAX_MESSAGE_BYTES", default_value_t = 65_536, global = true)]
    pub max_message_bytes: usize,

    /// Packets buffered per socket; past that a viewer is lagging and gets
    /// only the newest position of each vehicle once it catches up.
    #[arg(long, env = "FLEETGATE_SOCKET_BUFFER", default_value_t = 1024, global = true)]
    pub socket_buffer: usize,

    /// Seconds a viewer may stay lagging (its buffer full) before it is disconnected.
    #[arg(long, env = "FLEETGATE_SLOW_VIEWER_SECS", default_value_t = 10, global = true)]
    pub slow_viewer_secs: u64,

    /// Seconds between Engine.IO pings (a client that does not answer, or
    /// whose buffer is too full to take the ping, is disconnected).
    #[arg(long, env = "FLEETGATE_PING_INTERVAL_SECS", default_value_t = 25, global = true)]
    pub ping_interval_secs: u64,

    /// Seconds a write to a client may make no progress before its
    /// connection is closed (a peer that stopped reading).
    #[arg(long, env = "FLEETGATE_WRITE_TIMEOUT_SECS", default_value_t = 30, global = true)]
    pub write_timeout_secs: u64,

    /// Seconds a client has to answer a ping.
    #[arg(long, env = "FLEETGATE_PING_TIMEOUT_SECS", default_value_t = 20, global = true)]
    pub ping_timeout_secs: u64,

    /// Milliseconds an event to a websocket may wait for others bound to
    /// the same socket, to leave in one write (contract section 9). A
    /// socket written nothing in the last window is written at once.
    /// 0 = every event written at once; at most 1000.
    #[arg(long, env = "FLEETGATE_WRITE_WINDOW_MS", global = true,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub write_window_ms: Option<u64>,

    /// The previous name of FLEETGATE_WRITE_WINDOW_MS, read when that is
    /// unset (with a warning); removed in the next release.
    #[arg(long, env = "FLEETGATE_WRITE_DELAY_MS", global = true, hide = true,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub write_delay_ms: Option<u64>,

    /// Events per second one connection may send (burst: twice that; 0 = no limit).
    #[arg(long, env = "FLEETGATE_RATE_EVENTS_PER_SEC", default_value_t = 100, global = true)]
    pub rate_events_per_sec: u32,

    /// Position updates per second one vehicle may send through this
    /// replica, over sockets and HTTP (burst: ten times that; 0 = no limit).
    #[arg(long, env = "FLEETGATE_RATE_VEHICLE_PER_SEC", default_value_t = 20, global = true)]
    pub rate_vehicle_per_sec: u32,

    /// Socket.IO connections this process accepts (0 = no limit).
    #[arg(long, env = "FLEETGATE_MAX_CONNECTIONS", default_value_t = 100_000, global = true)]
    pub max_connections: usize,

    /// Socket.IO connections from one client address (0 = no limit; behind
    /// a proxy, set FLEETGATE_CLIENT_IP_HEADER).
    #[arg(long, env = "FLEETGATE_MAX_CONNECTIONS_PER_IP", default_value_t = 0, global = true)]
    pub max_connections_per_ip: usize,

    /// Header a trusted proxy sets to the client's address (e.g.
    /// `x-forwarded-for`, whose last entry is used); unset: the peer address.
    #[arg(long, env = "FLEETGATE_CLIENT_IP_HEADER", global = true)]
    pub client_ip_header: Option<String>,

    /// Seconds given to connections to drain on SIGTERM.
    #[arg(long, env = "FLEETGATE_SHUTDOWN_GRACE_SECS", default_value_t = 20, global = true)]
    pub shutdown_grace_secs: u64,

    /// Origins allowed by CORS (comma separated, `*` for any).
    #[arg(long, env = "FLEETGATE_CORS_ORIGINS", value_delimiter = ',', global = true)]
    pub cors_origins: Vec<String>,

    /// Run the demo: generated key, simulated fleet `demo`, token endpoint.
    #[arg(long, env = "FLEETGATE_DEMO", global = true)]
    pub demo: bool,

    /// Vehicles in the simulated demo fleet.
    #[arg(long, env = "FLEETGATE_DEMO_VEHICLES", default_value_t = 25, global = true)]
    pub demo_vehicles: usize,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "FLEETGATE_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log format: `text` or `json`.
    #[arg(long, env = "FLEETGATE_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,

    // Device ingest (contract section 13).
    /// Address of the OsmAnd listener for the Traccar Client apps and OsmAnd
    /// live tracking (Traccar's port is 5055); unset = off.
    #[arg(long, env = "FLEETGATE_OSMAND_ADDR", global = true)]
    pub osmand_addr: Option<SocketAddr>,

    /// Connections the OsmAnd listener holds open at once (0 = no limit);
    /// at the cap, new ones wait in the kernel's accept queue until one
    /// closes. Bounds the descriptors phones (or a flood) can take from the
    /// rest of the process.
    #[arg(long, env = "FLEETGATE_OSMAND_MAX_CONNECTIONS", default_value_t = 10_000, global = true)]
    pub osmand_max_connections: usize,

    /// Seconds an OsmAnd connection may go without delivering a request
    /// (1 to 3600): one that sends no complete request head within them of
    /// opening, or of the answer to its previous request (an idle
    /// kept-alive connection), is closed, and a body must arrive within
    /// them of its head.
    #[arg(long, env = "FLEETGATE_OSMAND_IDLE_TIMEOUT_SECS", default_value_t = 30, global = true,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub osmand_idle_timeout_secs: u64,

    /// MQTT broker to take positions from, `mqtt://[user:password@]host[:port]`
    /// or `mqtts://…` (TLS); unset = off.
    // The URL carries a password: `--help` must not print the environment's value.
    #[arg(long, env = "FLEETGATE_MQTT_URL", hide_env_values = true, global = true)]
    pub mqtt_url: Option<String>,

    /// Fleets whose MQTT topics this deployment takes (comma separated; empty = any).
    #[arg(long, env = "FLEETGATE_MQTT_FLEETS", value_delimiter = ',', global = true)]
    pub mqtt_fleets: Vec<String>,

    /// MQTT client id, stable per replica so its persistent session (and
    /// what the broker handed it) survives a restart; default the host
    /// name (the pod name).
    #[arg(long, env = "FLEETGATE_MQTT_CLIENT_ID", global = true)]
    pub mqtt_client_id: Option<String>,

    /// PEM CA bundle that verifies an `mqtts://` broker instead of the system roots.
    #[arg(long, env = "FLEETGATE_MQTT_TLS_CA_FILE", global = true)]
    pub mqtt_tls_ca_file: Option<PathBuf>,

    // The live map page (`/`).
    /// Tile URL template of the map page's base map (`{z}`, `{x}`, `{y}`,
    /// and Leaflet's `{s}`, `{r}`, `{-y}`): `https://…`, `http://…`, or a
    /// path on this origin (`/tiles/{z}/{x}/{y}.png`); `none` draws only
    /// the coordinate grid.
    #[arg(long, env = "FLEETGATE_MAP_TILE_URL", default_value = DEFAULT_MAP_TILE_URL,
          value_parser = tile_url, global = true)]
    pub map_tile_url: String,

    /// Attribution shown over the map tiles, as plain text (the tile
    /// server's licence usually requires it).
    #[arg(long, env = "FLEETGATE_MAP_TILE_ATTRIBUTION", default_value = DEFAULT_MAP_TILE_ATTRIBUTION, global = true)]
    pub map_tile_attribution: String,

    // Geofences (contract section 11).
    /// Most positions over all rings of one geofence.
    #[arg(long, env = "FLEETGATE_GEOFENCE_MAX_VERTICES", default_value_t = 10_000, global = true)]
    pub geofence_max_vertices: usize,

    /// Most geofences per fleet.
    #[arg(long, env = "FLEETGATE_GEOFENCES_MAX", default_value_t = 10_000, global = true)]
    pub geofences_max: usize,

    // Event outputs (contract section 12).
    /// Seconds a webhook keeps retrying one event (exponential backoff with
    /// jitter) before counting it as failed and going on to the next.
    #[arg(long, env = "FLEETGATE_WEBHOOK_RETRY_SECS", default_value_t = 3600, global = true)]
    pub webhook_retry_secs: u64,

    /// Allow webhook URLs that resolve to loopback, link-local or private
    /// addresses (refused by default: a webhook must not reach the
    /// deployment's own network).
    #[arg(long, env = "FLEETGATE_WEBHOOK_ALLOW_PRIVATE", global = true)]
    pub webhook_allow_private: bool,

    /// Seconds one webhook POST may take, connecting and reading the
    /// answer included (1 to 300).
    #[arg(long, env = "FLEETGATE_WEBHOOK_TIMEOUT_SECS", default_value_t = 10, global = true,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub webhook_timeout_secs: u64,

    /// POSTs one replica has in flight at once to one endpoint (scheme,
    /// host and port), over all the webhooks that point there (1 to 256).
    #[arg(long, env = "FLEETGATE_WEBHOOK_CONCURRENCY", default_value_t = 4, global = true,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub webhook_concurrency: u32,

    /// NATS server to publish every event to, on JetStream
    /// (`nats://[user:password@]host:port`, `tls://…`); unset = off.
    // The URL may carry a password: `--help` must not print the environment's value.
    #[arg(long, env = "FLEETGATE_NATS_URL", hide_env_values = true, global = true)]
    pub nats_url: Option<String>,

    /// The JetStream stream the events go to; created with subjects
    /// `fleetgate.>` when it does not exist.
    #[arg(long, env = "FLEETGATE_NATS_STREAM", default_value = "FLEETGATE", global = true)]
    pub nats_stream: String,

    /// Seconds an output's lease on a fleet lasts unrenewed: how long a
    /// replica that died without giving it up holds up that fleet's
    /// deliveries (2 to 600).
    #[arg(long, env = "FLEETGATE_OUTPUT_LEASE_SECS", default_value_t = 10, global = true,
          value_parser = clap::value_parser!(u64).range(2..=600))]
    pub output_lease_secs: u64,

    /// Connection state recovery (contract section 10): how long after the
    /// server last heard from an opted-in client it may reconnect, to any
    /// replica, and get back its socket and what it missed. 0 turns
    /// recovery off (no `pid` in the CONNECT reply, no offsets).
    #[arg(long, env = "FLEETGATE_RECOVERY_SECS", default_value_t = 120, global = true)]
    pub recovery_secs: u64,

    /// Presence, chat and notice events kept per fleet for recovery: a
    /// client that missed more than this many of its fleet's events gets a
    /// fresh socket instead.
    #[arg(long, env = "FLEETGATE_RECOVERY_EVENTS_MAX", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000), global = true)]
    pub recovery_events_max: u64,
}

/// The write window when none is configured: chosen with `bench/run.sh`
/// (README, Performance): the CPU per delivery levels off past it, and
/// it keeps p99 latency well under the contract's 25 ms ceiling.
pub const DEFAULT_WRITE_WINDOW_MS: u64 = 10;

/// OpenStreetMap's own tile server: fine for a demo and light use; its
/// usage policy asks heavy users to run or rent their own.
pub const DEFAULT_MAP_TILE_URL: &str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png";
pub const DEFAULT_MAP_TILE_ATTRIBUTION: &str = "© OpenStreetMap contributors";

/// Refuses at start-up a tile template that could only ever show broken
/// tiles, rather than leaving the operator to find out in a browser.
fn tile_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s == "none" {
        return Ok(String::new());
    }
    if !(s.starts_with("https://") || s.starts_with("http://") || s.starts_with('/')) {
        return Err("a tile URL starts with https://, http:// or / (or is `none`)".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a tile URL has no spaces or control characters".into());
    }
    let missing: Vec<&str> = [("{z}", "{z}"), ("{x}", "{x}"), ("{y}", "{-y}")]
        .into_iter()
        .filter(|(a, b)| !s.contains(a) && !s.contains(b))
        .map(|(a, _)| a)
        .collect();
    if !missing.is_empty() {
        return Err(format!("the tile URL template lacks {}", missing.join(", ")));
    }
    Ok(s.to_owned())
}

impl Config {
    /// Section 9's write window, from `FLEETGATE_WRITE_WINDOW_MS` or its
    /// old name.
    pub fn write_window(&self) -> Duration {
        let ms = match (self.write_window_ms, self.write_delay_ms) {
            (Some(ms), _) => ms,
            (None, Some(ms)) => {
                tracing::warn!(
                    "FLEETGATE_WRITE_DELAY_MS is deprecated: set FLEETGATE_WRITE_WINDOW_MS (same meaning) instead"
                );
                ms
            }
            (None, None) => DEFAULT_WRITE_WINDOW_MS,
        };
        Duration::from_millis(ms)
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The map page's tile URL template; `None` when tiles are off.
    pub fn map_tiles(&self) -> Option<&str> {
        Some(self.map_tile_url.as_str()).filter(|u| !u.is_empty())
    }

    /// The Socket.IO path with the trailing slash socketioxide matches on
    /// stripped, so `/chat` and `/chat/` mean the same.
    pub fn socketio_req_path(&self) -> String {
        let trimmed = self.socketio_path.trim_end_matches('/');
        if trimmed.is_empty() { "/socket.io".to_owned() } else { trimmed.to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Cli::try_parse_from(std::iter::once("fleetgate").chain(args.iter().copied())).map(|cli| cli.config)
    }

    #[test]
    fn the_write_window_takes_its_old_name_as_an_alias() {
        let ms = |args: &[&str]| parse(args).map(|c| c.write_window().as_millis());
        assert_eq!(ms(&[]).ok(), Some(u128::from(DEFAULT_WRITE_WINDOW_MS)));
        assert_eq!(ms(&["--write-window-ms", "0"]).ok(), Some(0));
        assert_eq!(ms(&["--write-delay-ms", "7"]).ok(), Some(7));
        assert_eq!(ms(&["--write-window-ms", "3", "--write-delay-ms", "7"]).ok(), Some(3));
        assert!(parse(&["--write-window-ms", "1001"]).is_err());
    }

    #[test]
    fn the_tile_url_is_a_template_or_none() {
        let tiles = |args: &[&str]| parse(args).map(|c| c.map_tiles().map(str::to_owned));
        assert_eq!(tiles(&[]).ok(), Some(Some(DEFAULT_MAP_TILE_URL.to_owned())));
        assert_eq!(tiles(&["--map-tile-url", "none"]).ok(), Some(None));
        assert_eq!(tiles(&["--map-tile-url", ""]).ok(), Some(None));
        let own = "/tiles/{z}/{x}/{-y}.png";
        assert_eq!(tiles(&["--map-tile-url", own]).ok(), Some(Some(own.to_owned())));
        for bad in ["tile.example/{z}/{x}/{y}.png", "https://t.example/{z}/{x}.png", "https://t.example/{z} /{x}/{y}"] {
            assert!(tiles(&["--map-tile-url", bad]).is_err(), "{bad}");
        }
    }
}
