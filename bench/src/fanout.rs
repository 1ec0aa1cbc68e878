//! Fan-out: V vehicles publish H times a second each, W viewers watch whole
//! fleets. After a warm-up, a steady window is measured: accepted updates,
//! positions delivered to viewers (items of `locations` batches included),
//! the delivery ratio, end-to-end latency from each position's `ts`, and
//! the server's CPU per delivery.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use fleetgate_testkit::sio::{self, Packet, Target, Ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    Common, parse_duration,
    ramp::ramp,
    report::{Failures, Report, Window, num},
    stats::{self, Latency, RedisCounters},
};

#[derive(Args, Clone)]
pub struct Params {
    /// Server for both vehicles and viewers (comma-separated list: sockets are spread over it).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Servers for vehicles only (overrides --url for them).
    #[arg(long)]
    vehicle_url: Vec<String>,
    /// Servers for viewers only (overrides --url for them).
    #[arg(long)]
    viewer_url: Vec<String>,
    /// Publishing vehicles.
    #[arg(short = 'V', long, default_value_t = 200)]
    vehicles: usize,
    /// Updates per second per vehicle, spread evenly over the period.
    #[arg(short = 'H', long, default_value_t = 2.0)]
    hz: f64,
    /// Viewers, each subscribed to a whole fleet.
    #[arg(short = 'W', long, default_value_t = 100)]
    viewers: usize,
    /// Number of fleets; vehicles and viewers are dealt round-robin.
    #[arg(long, default_value_t = 1)]
    fleets: usize,
    /// Publishing before the window opens.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// The measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Longest wait after the window for positions still in flight.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    drain: Duration,
    /// Connections opened per second (0: as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// Connections in their opening phase at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// An update whose ack takes longer counts as failed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    ack_timeout: Duration,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Phase {
    Connecting,
    Run(tokio::time::Instant),
    /// Publishing stopped; still reading acks and deliveries.
    Drain,
    Stop,
}

#[derive(Default)]
struct FleetCounts {
    accepted_in_window: AtomicU64,
    /// Sent in the window, ack timed out or never came.
    unacked_in_window: AtomicU64,
    viewers: AtomicU64,
}

#[derive(Default)]
struct Shared {
    window: Window,
    fleets: Vec<FleetCounts>,
    ready: AtomicU64,
    opened_failed: AtomicU64,
    ready_changed: Notify,
    sent: AtomicU64,
    sent_in_window: AtomicU64,
    accepted: AtomicU64,
    pending_acks: AtomicU64,
    deliveries: AtomicU64,
    deliveries_in_window: AtomicU64,
    latency: Latency,
    ack_rtt: Latency,
    schedule_lag: Latency,
    snapshot_positions: AtomicU64,
    failures: Failures,
}

impl Shared {
    fn opened(&self, ok: bool) {
        if ok { &self.ready } else { &self.opened_failed }.fetch_add(1, Relaxed);
        self.ready_changed.notify_one();
    }

    fn viewer_joined(&self, fleet: usize) {
        self.fleets[fleet].viewers.fetch_add(1, Relaxed);
        self.opened(true);
    }

    /// Waits until `target` sockets have opened or failed, or the deadline.
    async fn wait_opened(&self, target: u64, deadline: tokio::time::Instant) {
        while self.ready.load(Relaxed) + self.opened_failed.load(Relaxed) < target {
            if tokio::time::timeout_at(deadline, self.ready_changed.notified()).await.is_err() {
                break;
            }
        }
    }
}

struct Pending {
    id: u64,
    ts: i64,
    sent: Instant,
}

pub async fn run(common: &Common, p: Params) -> anyhow::Result<Report> {
    anyhow::ensure!(p.hz > 0.0 && p.hz.is_finite(), "--hz must be positive");
    anyhow::ensure!(p.fleets >= 1, "--fleets must be at least 1");
    let minter = common.minter()?;
    let procs = common.procs()?;
    let redis_procs = common.redis_procs()?;
    if let Some(a) = &common.redis_addr {
        RedisCounters::read(a).await.with_context(|| format!("--redis-addr {a}"))?;
    }
    let vehicle_targets = sio::targets(
        if p.vehicle_url.is_empty() { std::slice::from_ref(&p.url) } else { &p.vehicle_url },
        &common.path,
    )?;
    let viewer_targets =
        sio::targets(if p.viewer_url.is_empty() { std::slice::from_ref(&p.url) } else { &p.viewer_url }, &common.path)?;
    let fleet_names: Vec<String> = if p.fleets == 1 {
        vec![common.fleet.clone()]
    } else {
        (0..p.fleets).map(|i| format!("{}-{i}", common.fleet)).collect()
    };
    // Tokens are minted before any socket opens so signing never delays the ramp.
    let vehicle_auth = (0..p.vehicles)
        .map(|i| minter.auth("vehicle", &format!("v-{i}"), &fleet_names[i % p.fleets]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let viewer_auth = (0..p.viewers)
        .map(|i| minter.auth("viewer", &format!("w-{i}"), &fleet_names[i % p.fleets]))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let shared =
        Arc::new(Shared { fleets: (0..p.fleets).map(|_| FleetCounts::default()).collect(), ..Default::default() });
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let period = Duration::from_secs_f64(1.0 / p.hz);
    let params = Arc::new(p.clone());

    // Vehicles first: their `vehicle_online` announcements then reach no one.
    let open_budget = |n: usize| {
        let by_rate = if p.connect_rate > 0.0 { n as f64 / p.connect_rate } else { 0.0 };
        tokio::time::Instant::now() + Duration::from_secs_f64(by_rate) + common.connect_timeout + Duration::from_secs(5)
    };
    let deadline = open_budget(p.vehicles);
    let connect_timeout = common.connect_timeout;
    let mut vehicle_auth = vehicle_auth.into_iter();
    let mut vramp = ramp(p.vehicles, p.connect_rate, p.connect_concurrency, |i, permit| {
        let offset = period.mul_f64(i as f64 / p.vehicles.max(1) as f64);
        vehicle(VehicleCtx {
            shared: shared.clone(),
            params: params.clone(),
            target: vehicle_targets[i % vehicle_targets.len()].clone(),
            auth: vehicle_auth.next().unwrap_or_default(),
            fleet: i % p.fleets,
            index: i,
            offset,
            period,
            connect_timeout,
            phase: phase_rx.clone(),
            permit,
        })
    })
    .await;
    shared.wait_opened(p.vehicles as u64, deadline).await;
    let vehicles_ready = shared.ready.load(Relaxed);

    let deadline = open_budget(p.viewers);
    let mut viewer_auth = viewer_auth.into_iter();
    let mut wramp = ramp(p.viewers, p.connect_rate, p.connect_concurrency, |i, permit| {
        let fleet = i % p.fleets;
        viewer(ViewerCtx {
            shared: shared.clone(),
            target: viewer_targets[i % viewer_targets.len()].clone(),
            auth: viewer_auth.next().unwrap_or_default(),
            subscribe: json!({ "fleet": fleet_names[fleet] }).to_string(),
            fleet,
            timeout: connect_timeout.max(params.ack_timeout),
            phase: phase_rx.clone(),
            permit,
        })
    })
    .await;
    shared.wait_opened((p.vehicles + p.viewers) as u64, deadline).await;
    let viewers_ready = shared.ready.load(Relaxed) - vehicles_ready;

    // One start instant for all, each vehicle at its own offset within the
    // period, so the offered load is flat from the first tick.
    let _ = phase_tx.send(Phase::Run(tokio::time::Instant::now() + Duration::from_millis(20)));
    tokio::time::sleep(p.warmup).await;

    let redis_before = match &common.redis_addr {
        Some(a) => RedisCounters::read(a).await.ok(),
        None => None,
    };
    let (srv0, red0, tool0, mach0) =
        (procs.sample(), redis_procs.sample(), stats::self_cpu_time(), stats::MachineCpu::sample());
    let (srv_each0, red_each0) = (procs.cpu_each(), redis_procs.cpu_each());
    let wall0 = Instant::now();
    shared.window.open(stats::now_ms());
    // Viewers per fleet as the window opens: the multiplier of the expected deliveries.
    let watching: Vec<u64> = shared.fleets.iter().map(|f| f.viewers.load(Relaxed)).collect();
    tokio::time::sleep(p.duration).await;
    shared.window.close(stats::now_ms());
    let wall = wall0.elapsed().as_secs_f64();
    let (srv1, red1, tool1, mach1) =
        (procs.sample(), redis_procs.sample(), stats::self_cpu_time(), stats::MachineCpu::sample());
    // Per process: the replicas (and Redis nodes) need not carry equal loads.
    let spent = |before: Vec<Duration>, after: Vec<Duration>| -> Vec<f64> {
        after.iter().zip(before).map(|(a, b)| a.saturating_sub(b).as_secs_f64()).collect()
    };
    let (srv_each, red_each) = (spent(srv_each0, procs.cpu_each()), spent(red_each0, redis_procs.cpu_each()));
    let redis_rates = match (&common.redis_addr, &redis_before) {
        (Some(a), Some(before)) => RedisCounters::read(a).await.ok().map(|after| before.rates(&after, wall)),
        _ => None,
    };
    let rss_each = procs.rss_each();

    let _ = phase_tx.send(Phase::Drain);
    // Updates sent in the window whose ack never came may still have been
    // delivered: they count as expected, so the ratio cannot exceed 1 and a
    // silently dropped update still shows up as missing.
    let expected = |s: &Shared| -> u64 {
        s.fleets
            .iter()
            .zip(&watching)
            .map(|(f, w)| (f.accepted_in_window.load(Relaxed) + f.unacked_in_window.load(Relaxed)) * w)
            .sum()
    };
    let drain_start = Instant::now();
    let mut last = (u64::MAX, Instant::now());
    loop {
        let got = shared.deliveries_in_window.load(Relaxed);
        let acks_out = shared.pending_acks.load(Relaxed);
        if acks_out == 0 && got >= expected(&shared) {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        }
        // Nothing moved for a second with every ack in: what is missing is lost.
        if acks_out == 0 && last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        if drain_start.elapsed() >= p.drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let drained = drain_start.elapsed();
    let _ = phase_tx.send(Phase::Stop);
    // Tasks notice Stop at once; a socket that is stuck is not worth waiting for.
    let all = std::mem::take(&mut vramp.handles).into_iter().chain(std::mem::take(&mut wramp.handles));
    let _ = tokio::time::timeout(Duration::from_secs(5), futures_util::future::join_all(all)).await;

    let s = &shared;
    let secs = s.window.secs();
    let accepted_in_window: u64 = s.fleets.iter().map(|f| f.accepted_in_window.load(Relaxed)).sum();
    let expected = expected(s);
    let delivered = s.deliveries_in_window.load(Relaxed);
    let ratio = (expected > 0).then(|| delivered as f64 / expected as f64);
    let server_cpu = srv1.cpu().saturating_sub(srv0.cpu()).as_secs_f64();
    let redis_cpu = red1.cpu().saturating_sub(red0.cpu()).as_secs_f64();
    let tool_cpu = tool1.saturating_sub(tool0).as_secs_f64();
    let server_user = srv1.user.saturating_sub(srv0.user).as_secs_f64();
    let server_system = srv1.system.saturating_sub(srv0.system).as_secs_f64();
    let per_delivery = |cpu: f64| (delivered > 0 && !procs.is_empty()).then(|| cpu * 1e6 / delivered as f64);
    let per_delivery_us = per_delivery(server_cpu);
    let per_update =
        |cpu: f64| (accepted_in_window > 0 && !procs.is_empty()).then(|| cpu * 1e6 / accepted_in_window as f64);
    let per_cpu_ms = (server_cpu > 0.0).then(|| delivered as f64 / (server_cpu * 1e3));
    let lag_p99 = s.schedule_lag.quantile_ms(0.99);
    // Late by more than a fifth of the period at p99: the offered rate is not what was asked for.
    let fell_behind = lag_p99 > (period.as_secs_f64() * 1e3 / 5.0).max(5.0) || vramp.behind() || wramp.behind();
    let tool_util = tool_cpu / wall / common.threads.max(1) as f64;
    let failures = s.failures.json();

    let results = json!({
        "window_s": secs,
        "vehicles_connected": vehicles_ready,
        "viewers_connected": viewers_ready,
        "updates_sent": s.sent.load(Relaxed),
        "updates_sent_in_window": s.sent_in_window.load(Relaxed),
        "updates_accepted_in_window": accepted_in_window,
        "updates_unacked_in_window": s.fleets.iter().map(|f| f.unacked_in_window.load(Relaxed)).sum::<u64>(),
        "updates_per_s": accepted_in_window as f64 / secs.max(1e-9),
        "target_updates_per_s": p.vehicles as f64 * p.hz,
        "deliveries_in_window": delivered,
        "deliveries_expected": expected,
        "deliveries_total": s.deliveries.load(Relaxed),
        "deliveries_per_s": delivered as f64 / secs.max(1e-9),
        "delivery_ratio": ratio,
        "latency": s.latency.json(),
        "ack": s.ack_rtt.json(),
        "snapshot_positions": s.snapshot_positions.load(Relaxed),
        "drain_ms": drained.as_secs_f64() * 1e3,
        "server": {
            "pids": procs.0,
            "cpu_s": server_cpu,
            "cpu_s_each": srv_each,
            "cpu_util": server_cpu / wall,
            "cpu_us_per_delivery": per_delivery_us,
            "user_s": server_user,
            "system_s": server_system,
            "user_us_per_delivery": per_delivery(server_user),
            "system_us_per_delivery": per_delivery(server_system),
            "deliveries_per_cpu_ms": per_cpu_ms,
            "cpu_us_per_update": per_update(server_cpu),
            "user_us_per_update": per_update(server_user),
            "system_us_per_update": per_update(server_system),
            "rss_bytes": rss_each.iter().sum::<u64>(),
            "rss_bytes_each": rss_each,
            "fds": srv1.fds,
        },
        "redis": {
            "pids": redis_procs.0,
            "cpu_s": redis_cpu,
            "cpu_s_each": red_each,
            "cpu_util": redis_cpu / wall,
            "cpu_us_per_update": (accepted_in_window > 0 && !redis_procs.is_empty())
                .then(|| redis_cpu * 1e6 / accepted_in_window as f64),
            "rss_bytes": red1.rss,
            "info": redis_rates,
        },
    });
    let tool = json!({
        "machine": mach0.json(&mach1, wall, server_cpu + redis_cpu + tool_cpu),
        "threads": common.threads,
        "cpu_s": tool_cpu,
        "cpu_util": tool_util,
        "saturated": tool_util > 0.9,
        "schedule_lag": s.schedule_lag.json(),
        "fell_behind": fell_behind,
        "vehicle_ramp": vramp.json(),
        "viewer_ramp": wramp.json(),
    });
    let mut summary = vec![
        format!(
            "{} vehicles × {} Hz → {} viewers on {} fleet(s); window {:.1} s",
            p.vehicles, p.hz, p.viewers, p.fleets, secs
        ),
        format!(
            "updates/s {:.0} (target {:.0}), deliveries/s {:.0}, ratio {}",
            results["updates_per_s"].as_f64().unwrap_or(0.0),
            p.vehicles as f64 * p.hz,
            results["deliveries_per_s"].as_f64().unwrap_or(0.0),
            num(&results["delivery_ratio"], 5)
        ),
        format!(
            "latency p50 {} ms, p99 {} ms, max {} ms; ack p99 {} ms",
            num(&results["latency"]["p50_ms"], 2),
            num(&results["latency"]["p99_ms"], 2),
            num(&results["latency"]["max_ms"], 2),
            num(&results["ack"]["p99_ms"], 2)
        ),
    ];
    if !procs.is_empty() {
        summary.push(format!(
            "server CPU {:.2} cores, {} µs/delivery, RSS {:.1} MiB",
            server_cpu / wall,
            num(&results["server"]["cpu_us_per_delivery"], 2),
            results["server"]["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        ));
    }
    summary.push(format!(
        "tool CPU {:.0} %{}",
        tool_util * 100.0,
        if fell_behind { ", FELL BEHIND its schedule" } else { "" }
    ));
    Ok(Report {
        scenario: "fanout",
        label: common.label.clone(),
        params: json!({
            "vehicles": p.vehicles, "hz": p.hz, "viewers": p.viewers, "fleets": p.fleets,
            "fleet": common.fleet,
            "vehicle_urls": vehicle_targets.iter().map(|t| &t.http_base).collect::<Vec<_>>(),
            "viewer_urls": viewer_targets.iter().map(|t| &t.http_base).collect::<Vec<_>>(),
            "warmup_s": p.warmup.as_secs_f64(), "duration_s": p.duration.as_secs_f64(),
            "connect_rate": p.connect_rate, "ack_timeout_s": p.ack_timeout.as_secs_f64(),
        }),
        results,
        failures,
        tool,
        summary,
    })
}

struct VehicleCtx {
    shared: Arc<Shared>,
    params: Arc<Params>,
    target: Target,
    auth: String,
    fleet: usize,
    index: usize,
    offset: Duration,
    period: Duration,
    connect_timeout: Duration,
    phase: watch::Receiver<Phase>,
    permit: OwnedSemaphorePermit,
}

async fn vehicle(mut c: VehicleCtx) {
    let s = c.shared.clone();
    let mut ws = match sio::open(&c.target, &c.auth, c.connect_timeout).await {
        Ok(ws) => ws,
        Err(e) => {
            s.failures.add(&format!("vehicle_connect_{}", e.kind()), &e);
            s.opened(false);
            return;
        }
    };
    drop(c.permit);
    s.opened(true);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut next_id = 0u64;
    let mut last_ts = 0i64;
    // Each vehicle drives its own little loop around a point, so positions
    // change without ever leaving a sane range.
    let (base_lat, base_lon) = (37.40 + (c.index % 100) as f64 * 0.003, 126.90 + (c.index / 100 % 100) as f64 * 0.003);
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    let mut due = tokio::time::Instant::now();
    let mut sending = false;
    loop {
        tokio::select! {
            biased;
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => match sio::classify(t.as_str()) {
                    Packet::Ping => {
                        let pong = ws.send(Message::text("3")).await;
                        if pong.is_err() {
                            break;
                        }
                    }
                    Packet::Ack { id, body } => {
                        if let Some(at) = pending.iter().position(|p| p.id == id)
                            && let Some(p) = pending.remove(at)
                        {
                                s.pending_acks.fetch_sub(1, Relaxed);
                                s.ack_rtt.record(p.sent.elapsed());
                                if body.contains("\"accepted\":true") {
                                    s.accepted.fetch_add(1, Relaxed);
                                    if s.window.contains(p.ts) {
                                        s.fleets[c.fleet].accepted_in_window.fetch_add(1, Relaxed);
                                    }
                                } else if body.contains("\"ok\":true") {
                                    s.failures.add("ack_not_accepted", sio::clip(body));
                                } else {
                                    s.failures.add(&format!("ack_error_{}", sio::error_code(body)), sio::clip(body));
                                }
                            }
                    }
                    Packet::Disconnect => {
                        s.failures.add("vehicle_disconnect", "server disconnected the vehicle");
                        break;
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => {
                    s.failures.add("vehicle_disconnect", "connection closed");
                    break;
                }
                Some(Err(e)) => {
                    s.failures.add("vehicle_disconnect", e);
                    break;
                }
                Some(Ok(_)) => {}
            },
            changed = c.phase.changed() => {
                if changed.is_err() {
                    break;
                }
                let phase = *c.phase.borrow_and_update();
                match phase {
                    Phase::Run(t0) => {
                        due = t0 + c.offset;
                        sleep.as_mut().reset(due);
                        sending = true;
                    }
                    Phase::Drain => sending = false,
                    Phase::Stop => break,
                    Phase::Connecting => {}
                }
            }
            () = &mut sleep, if sending => {
                let now = tokio::time::Instant::now();
                s.schedule_lag.record(now.saturating_duration_since(due));
                // Strictly increasing per vehicle: an equal ts would be refused as stale.
                let ts = stats::now_ms().max(last_ts + 1);
                last_ts = ts;
                next_id += 1;
                let angle = next_id as f64 * 0.05;
                let payload = format!(
                    "{{\"lat\":{:.6},\"lon\":{:.6},\"ts\":{ts},\"speed\":8.5,\"heading\":{:.1}}}",
                    base_lat + 0.001 * angle.sin(),
                    base_lon + 0.001 * angle.cos(),
                    (angle.to_degrees() + 90.0).rem_euclid(360.0),
                );
                if let Err(e) = ws.send(Message::text(sio::event(Some(next_id), "locationupdate", &payload))).await {
                    s.failures.add("vehicle_disconnect", e);
                    break;
                }
                s.sent.fetch_add(1, Relaxed);
                if s.window.contains(ts) {
                    s.sent_in_window.fetch_add(1, Relaxed);
                }
                pending.push_back(Pending { id: next_id, ts, sent: Instant::now() });
                s.pending_acks.fetch_add(1, Relaxed);
                while let Some(front) = pending.front()
                    && front.sent.elapsed() > c.params.ack_timeout
                {
                    if s.window.contains(front.ts) {
                        s.fleets[c.fleet].unacked_in_window.fetch_add(1, Relaxed);
                    }
                    pending.pop_front();
                    s.pending_acks.fetch_sub(1, Relaxed);
                    s.failures.add("ack_timeout", format!("no ack within {:?}", c.params.ack_timeout));
                }
                due += c.period;
                // Far behind (a stall of a second or more): start again from now
                // rather than firing a burst the server never asked for.
                if now.saturating_duration_since(due) > Duration::from_secs(1) {
                    due = now;
                }
                sleep.as_mut().reset(due);
            }
        }
    }
    // Unanswered updates at the end: those of the window are lost acks.
    for p in pending.drain(..) {
        s.pending_acks.fetch_sub(1, Relaxed);
        if s.window.contains(p.ts) {
            s.fleets[c.fleet].unacked_in_window.fetch_add(1, Relaxed);
            s.failures.add("ack_missing", "no ack before the run ended");
        }
    }
    close(&mut ws).await;
}

struct ViewerCtx {
    shared: Arc<Shared>,
    target: Target,
    auth: String,
    subscribe: String,
    fleet: usize,
    timeout: Duration,
    phase: watch::Receiver<Phase>,
    permit: OwnedSemaphorePermit,
}

async fn viewer(mut c: ViewerCtx) {
    let s = c.shared.clone();
    let mut ws = match sio::open(&c.target, &c.auth, c.timeout).await {
        Ok(ws) => ws,
        Err(e) => {
            s.failures.add(&format!("viewer_connect_{}", e.kind()), &e);
            s.opened(false);
            return;
        }
    };
    let subscribed = async {
        ws.send(Message::text(sio::event(Some(1), "subscribe", &c.subscribe))).await?;
        sio::await_ack(&mut ws, 1, c.timeout).await
    };
    match subscribed.await {
        Ok(body) if body.contains("\"ok\":true") => {
            s.snapshot_positions.fetch_add(sio::scan_ts(&body, |_| {}) as u64, Relaxed);
        }
        Ok(body) => {
            s.failures.add(&format!("subscribe_{}", sio::error_code(&body)), sio::clip(&body));
            s.opened(false);
            return;
        }
        Err(e) => {
            s.failures.add("subscribe_failed", e);
            s.opened(false);
            return;
        }
    }
    drop(c.permit);
    s.viewer_joined(c.fleet);
    let mut lat = Vec::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => match sio::classify(t.as_str()) {
                    Packet::Event { name: "locationupdate" | "locations", rest } => {
                        let recv = stats::now_us();
                        let (start, end) = s.window.bounds();
                        lat.clear();
                        let n = sio::scan_ts(rest, |ts| {
                            if start <= ts && ts < end {
                                lat.push(recv - ts * 1000);
                            }
                        });
                        s.deliveries.fetch_add(n as u64, Relaxed);
                        if !lat.is_empty() {
                            s.deliveries_in_window.fetch_add(lat.len() as u64, Relaxed);
                            s.latency.record_many(&lat);
                        }
                    }
                    Packet::Ping => {
                        let pong = ws.send(Message::text("3")).await;
                        if pong.is_err() {
                            break;
                        }
                    }
                    Packet::Disconnect => {
                        if !stopping {
                            s.failures.add("viewer_disconnect", "server disconnected the viewer");
                        }
                        break;
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => {
                    if !stopping {
                        s.failures.add("viewer_disconnect", "connection closed");
                    }
                    break;
                }
                Some(Err(e)) => {
                    if !stopping {
                        s.failures.add("viewer_disconnect", e);
                    }
                    break;
                }
                Some(Ok(_)) => {}
            },
            changed = c.phase.changed() => {
                if changed.is_err() || *c.phase.borrow_and_update() == Phase::Stop {
                    stopping = true;
                    break;
                }
            }
        }
    }
    if !stopping {
        s.fleets[c.fleet].viewers.fetch_sub(1, Relaxed);
    }
    close(&mut ws).await;
}

/// A clean close frame, without waiting long for the server's answer.
async fn close(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
}
