//! Connection storm: what a fleet does after a network blip or a deploy,
//! when every client reconnects at once. Each connection presents a fresh
//! token the server must verify, waits for the namespace connect (`40`, or
//! the `44` refusal) and closes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use clap::Args;
use fleetgate_testkit::sio;
use serde_json::json;

use crate::{
    Common,
    ramp::ramp,
    report::{Failures, Report, num},
    stats::{self, Latency},
};

#[derive(Args, Clone)]
pub struct Params {
    /// Server (comma-separated list: connections are spread over it).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Handshakes in all.
    #[arg(short = 'n', long, default_value_t = 2000)]
    count: usize,
    /// Target handshakes per second (0: as fast as --concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[derive(Default)]
struct Shared {
    ok: AtomicU64,
    handshake: Latency,
    failures: Failures,
}

pub async fn run(common: &Common, p: Params) -> anyhow::Result<Report> {
    let minter = common.minter()?;
    let procs = common.procs()?;
    let redis_procs = common.redis_procs()?;
    let targets = sio::targets(std::slice::from_ref(&p.url), &common.path)?;
    let auth = (0..p.count)
        .map(|i| minter.auth("viewer", &format!("storm-{i}"), &common.fleet))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shared = Arc::new(Shared::default());
    let timeout = common.connect_timeout;
    let srv0 = procs.sample();
    let tool0 = stats::self_cpu_time();
    let mach0 = stats::MachineCpu::sample();
    let red0 = redis_procs.sample();
    let started = Instant::now();
    let mut auth = auth.into_iter();
    let r = ramp(p.count, p.rate, p.concurrency, |i, permit| {
        let s = shared.clone();
        let target = targets[i % targets.len()].clone();
        let auth = auth.next().unwrap_or_default();
        async move {
            let t = Instant::now();
            match sio::open(&target, &auth, timeout).await {
                Ok(mut ws) => {
                    s.handshake.record(t.elapsed());
                    s.ok.fetch_add(1, Relaxed);
                    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
                }
                Err(e) => s.failures.add(&format!("connect_{}", e.kind()), &e),
            }
            drop(permit);
        }
    })
    .await;
    let ramp_json = r.json();
    let fell_behind = r.behind();
    let _ = futures_util::future::join_all(r.handles).await;
    let secs = started.elapsed().as_secs_f64();
    let srv1 = procs.sample();
    let mach1 = stats::MachineCpu::sample();
    let redis_cpu = redis_procs.sample().cpu().saturating_sub(red0.cpu()).as_secs_f64();
    let tool_cpu = stats::self_cpu_time().saturating_sub(tool0).as_secs_f64();
    let ok = shared.ok.load(Relaxed);
    let server_cpu = srv1.cpu().saturating_sub(srv0.cpu()).as_secs_f64();
    let results = json!({
        "handshakes": ok,
        "elapsed_s": secs,
        "handshakes_per_s": ok as f64 / secs.max(1e-9),
        "handshake": shared.handshake.json(),
        "server": {
            "pids": procs.0,
            "cpu_s": server_cpu,
            "cpu_util": server_cpu / secs.max(1e-9),
            "cpu_us_per_handshake": (ok > 0 && !procs.is_empty()).then(|| server_cpu * 1e6 / ok as f64),
            "rss_bytes": srv1.rss,
            "fds_after": srv1.fds,
        },
    });
    let tool_util = tool_cpu / secs.max(1e-9) / common.threads.max(1) as f64;
    let summary = vec![
        format!(
            "{ok} of {} handshakes in {secs:.2} s = {:.0}/s (target {})",
            p.count,
            ok as f64 / secs.max(1e-9),
            if p.rate > 0.0 { format!("{:.0}/s", p.rate) } else { format!("max, {} in flight", p.concurrency) }
        ),
        format!(
            "handshake p50 {} ms, p99 {} ms, max {} ms; server {} µs CPU each",
            num(&results["handshake"]["p50_ms"], 2),
            num(&results["handshake"]["p99_ms"], 2),
            num(&results["handshake"]["max_ms"], 2),
            num(&results["server"]["cpu_us_per_handshake"], 0)
        ),
        format!("tool CPU {:.0} %{}", tool_util * 100.0, if fell_behind { ", FELL BEHIND its schedule" } else { "" }),
    ];
    Ok(Report {
        scenario: "storm",
        label: common.label.clone(),
        params: json!({
            "count": p.count, "rate": p.rate, "concurrency": p.concurrency, "fleet": common.fleet,
            "url": targets.iter().map(|t| &t.http_base).collect::<Vec<_>>(),
        }),
        results,
        failures: shared.failures.json(),
        tool: json!({
            "machine": mach0.json(&mach1, secs, server_cpu + redis_cpu + tool_cpu),
            "threads": common.threads,
            "cpu_s": tool_cpu,
            "cpu_util": tool_util,
            "saturated": tool_util > 0.9,
            "ramp": ramp_json,
            "fell_behind": fell_behind,
        }),
        summary,
    })
}
