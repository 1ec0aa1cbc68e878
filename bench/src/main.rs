//! `fleetgate-bench`: drives a Socket.IO location server (fleetgate, or any
//! server speaking the same contract) from one core and reports what the
//! server did with the other.
//!
//! Every run prints one JSON line on stdout and a summary on stderr.

mod fanout;
mod geofences;
mod idle;
mod ingest;
mod mqtt;
mod prom;
mod ramp;
mod report;
mod resp;
mod stats;
mod storm;
mod token;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "fleetgate-bench", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Settings every scenario shares.
#[derive(Args, Clone)]
pub struct Common {
    /// HS256 secret the server verifies tokens with.
    #[arg(long, env = "FLEETGATE_JWT_SECRET", hide_env_values = true, global = true)]
    pub secret: Option<String>,
    /// Fleet the scenario acts in (with --fleets N, the prefix of N fleets).
    #[arg(long, default_value = "bench", global = true)]
    pub fleet: String,
    /// Socket.IO path on the server.
    #[arg(long, default_value = "/socket.io/", global = true)]
    pub path: String,
    /// Worker threads of the tool; 1 runs everything on one thread, which
    /// is what keeps the tool on its own core.
    #[arg(long, default_value_t = 1, global = true)]
    pub threads: usize,
    /// Server process to measure (CPU, RSS, descriptors); repeat for replicas.
    #[arg(long = "server-pid", global = true)]
    pub server_pids: Vec<u32>,
    /// Redis process whose CPU and memory to report alongside.
    #[arg(long = "redis-pid", global = true)]
    pub redis_pids: Vec<u32>,
    /// Redis to read INFO counters from (host:port), for command and publish rates.
    #[arg(long, global = true)]
    pub redis_addr: Option<String>,
    /// Free-form tag copied into the JSON line (e.g. the server's name).
    #[arg(long, global = true)]
    pub label: Option<String>,
    /// Time allowed for one socket's websocket upgrade and namespace connect.
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    pub connect_timeout: Duration,
}

impl Common {
    pub fn minter(&self) -> anyhow::Result<token::Minter> {
        token::Minter::new(self.secret.as_deref().context("no secret: pass --secret or set FLEETGATE_JWT_SECRET")?)
    }

    pub fn procs(&self) -> anyhow::Result<stats::Procs> {
        let p = stats::Procs(self.server_pids.clone());
        p.check()?;
        Ok(p)
    }

    pub fn redis_procs(&self) -> anyhow::Result<stats::Procs> {
        let p = stats::Procs(self.redis_pids.clone());
        p.check()?;
        Ok(p)
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// Vehicles publishing, viewers receiving: throughput, delivery ratio, latency, CPU per delivery.
    Fanout(fanout::Params),
    /// Many open sockets doing nothing: memory and descriptors per connection.
    Idle(idle::Params),
    /// Connections opened and closed at a rate: handshakes per second and their time.
    Storm(storm::Params),
    /// HTTP location updates over keep-alive connections.
    Ingest(ingest::Params),
    /// Location updates through an MQTT broker fleetgate subscribes to.
    Mqtt(mqtt::Params),
    /// N geofences in one fleet, then HTTP ingest with vehicles roaming across them.
    Geofences(geofences::Params),
}

/// `250ms`, `10s`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("{s}: expected a duration like 500ms, 10s or 2m"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("{s}: must be a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = if cli.common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cli.common.threads).enable_all().build()
    }
    .context("starting the runtime")?;
    let common = cli.common;
    let report = runtime.block_on(async move {
        match cli.scenario {
            Scenario::Fanout(p) => fanout::run(&common, p).await,
            Scenario::Idle(p) => idle::run(&common, p).await,
            Scenario::Storm(p) => storm::run(&common, p).await,
            Scenario::Ingest(p) => ingest::run(&common, p).await,
            Scenario::Mqtt(p) => mqtt::run(&common, p).await,
            Scenario::Geofences(p) => geofences::run(&common, p).await,
        }
    })?;
    report.emit();
    // Thousands of sockets may still be closing; the numbers are out, so
    // don't wait for them.
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
