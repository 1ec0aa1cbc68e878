//! Idle sockets: N authenticated viewers that only answer heartbeats. What
//! they cost the server in memory and descriptors is the number that decides
//! how many connections a replica can hold.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use clap::Args;
use fleetgate_testkit::sio::{self, Packet};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    Common, parse_duration,
    ramp::ramp,
    report::{Failures, Report},
    stats::{self, Latency},
};

#[derive(Args, Clone)]
pub struct Params {
    /// Server (comma-separated list: sockets are spread over it).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Sockets to open.
    #[arg(short = 'n', long, default_value_t = 1000)]
    count: usize,
    /// Subscribe each socket to its fleet (viewers that watch but see no traffic).
    #[arg(long)]
    subscribe: bool,
    /// Connections opened per second (0: as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// Connections in their opening phase at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Wait after the last socket opened before reading the server's memory.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    settle: Duration,
}

#[derive(Default)]
struct Shared {
    ready: AtomicU64,
    failed: AtomicU64,
    changed: Notify,
    handshake: Latency,
    disconnects: AtomicU64,
    failures: Failures,
}

pub async fn run(common: &Common, p: Params) -> anyhow::Result<Report> {
    let minter = common.minter()?;
    let procs = common.procs()?;
    let redis_procs = common.redis_procs()?;
    let targets = sio::targets(std::slice::from_ref(&p.url), &common.path)?;
    let auth = (0..p.count)
        .map(|i| minter.auth("viewer", &format!("idle-{i}"), &common.fleet))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let subscribe = json!({ "fleet": common.fleet }).to_string();

    let before = procs.sample();
    let redis_before = redis_procs.sample();
    let tool_before = stats::rss_bytes(std::process::id()).unwrap_or(0);
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let timeout = common.connect_timeout;
    let started = Instant::now();
    let mut auth = auth.into_iter();
    let mut r = ramp(p.count, p.connect_rate, p.connect_concurrency, |i, permit| {
        let s = shared.clone();
        let target = targets[i % targets.len()].clone();
        let auth = auth.next().unwrap_or_default();
        let subscribe = p.subscribe.then(|| subscribe.clone());
        let mut stop = stop_rx.clone();
        async move {
            let t = Instant::now();
            let mut ws = match sio::open(&target, &auth, timeout).await {
                Ok(ws) => ws,
                Err(e) => {
                    s.failures.add(&format!("connect_{}", e.kind()), &e);
                    s.failed.fetch_add(1, Relaxed);
                    s.changed.notify_one();
                    return;
                }
            };
            if let Some(sub) = subscribe {
                let acked = async {
                    ws.send(Message::text(sio::event(Some(1), "subscribe", &sub))).await?;
                    sio::await_ack(&mut ws, 1, timeout).await
                };
                match acked.await {
                    Ok(body) if body.contains("\"ok\":true") => {}
                    Ok(body) => {
                        s.failures.add(&format!("subscribe_{}", sio::error_code(&body)), sio::clip(&body));
                        s.failed.fetch_add(1, Relaxed);
                        s.changed.notify_one();
                        return;
                    }
                    Err(e) => {
                        s.failures.add("subscribe_failed", e);
                        s.failed.fetch_add(1, Relaxed);
                        s.changed.notify_one();
                        return;
                    }
                }
            }
            s.handshake.record(t.elapsed());
            drop(permit);
            s.ready.fetch_add(1, Relaxed);
            s.changed.notify_one();
            let mut stopping = false;
            loop {
                tokio::select! {
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(t))) => match sio::classify(t.as_str()) {
                            Packet::Ping => {
                                let pong = ws.send(Message::text("3")).await;
                                if pong.is_err() {
                                    break;
                                }
                            }
                            Packet::Disconnect => break,
                            _ => {}
                        },
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    },
                    _ = stop.changed() => {
                        stopping = true;
                        break;
                    }
                }
            }
            if stopping {
                let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
            } else {
                s.disconnects.fetch_add(1, Relaxed);
                s.failures.add("disconnect", "an idle socket was closed by the server");
            }
        }
    })
    .await;
    let budget = if p.connect_rate > 0.0 { p.count as f64 / p.connect_rate } else { 0.0 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(budget) + timeout + Duration::from_secs(5);
    while shared.ready.load(Relaxed) + shared.failed.load(Relaxed) < p.count as u64 {
        if tokio::time::timeout_at(deadline, shared.changed.notified()).await.is_err() {
            break;
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(p.settle).await;
    let after = procs.sample();
    let redis_after = redis_procs.sample();
    let tool_after = stats::rss_bytes(std::process::id()).unwrap_or(0);
    let open = shared.ready.load(Relaxed).saturating_sub(shared.disconnects.load(Relaxed));
    let _ = stop_tx.send(true);
    let _ =
        tokio::time::timeout(Duration::from_secs(10), futures_util::future::join_all(std::mem::take(&mut r.handles)))
            .await;

    let per = |a: u64, b: u64| (open > 0).then(|| (a as f64 - b as f64) / open as f64);
    let results = json!({
        "open": open,
        "opened_per_s": shared.ready.load(Relaxed) as f64 / open_secs.max(1e-9),
        "handshake": shared.handshake.json(),
        "server": {
            "pids": procs.0,
            "rss_before_bytes": before.rss,
            "rss_after_bytes": after.rss,
            "rss_per_conn_bytes": if procs.is_empty() { None } else { per(after.rss, before.rss) },
            "fds_before": before.fds,
            "fds_after": after.fds,
            "fds_per_conn": if procs.is_empty() { None } else { per(after.fds as u64, before.fds as u64) },
            "cpu_s_opening": after.cpu().saturating_sub(before.cpu()).as_secs_f64(),
        },
        "redis": {
            "pids": redis_procs.0,
            "rss_per_conn_bytes": if redis_procs.is_empty() { None } else { per(redis_after.rss, redis_before.rss) },
        },
    });
    let summary = vec![
        format!("{} of {} sockets open{}", open, p.count, if p.subscribe { " (subscribed)" } else { "" }),
        format!(
            "server RSS +{:.1} MiB = {} KiB/conn; fds {} → {}",
            (after.rss as f64 - before.rss as f64) / 1048576.0,
            per(after.rss, before.rss).map(|b| format!("{:.1}", b / 1024.0)).unwrap_or_else(|| "–".into()),
            before.fds,
            after.fds
        ),
        format!(
            "handshake p50 {} ms, p99 {} ms; tool RSS {:.1} KiB/conn",
            crate::report::num(&results["handshake"]["p50_ms"], 2),
            crate::report::num(&results["handshake"]["p99_ms"], 2),
            per(tool_after, tool_before).unwrap_or(0.0) / 1024.0
        ),
    ];
    Ok(Report {
        scenario: "idle",
        label: common.label.clone(),
        params: json!({
            "count": p.count, "subscribe": p.subscribe, "fleet": common.fleet,
            "url": targets.iter().map(|t| &t.http_base).collect::<Vec<_>>(),
            "connect_rate": p.connect_rate, "settle_s": p.settle.as_secs_f64(),
        }),
        results,
        failures: shared.failures.json(),
        tool: json!({
            "threads": common.threads,
            "rss_per_conn_bytes": per(tool_after, tool_before),
            "ramp": r.json(),
            "fell_behind": r.behind(),
        }),
        summary,
    })
}
