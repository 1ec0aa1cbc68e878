//! MQTT ingest: positions published with QoS 1 to
//! `fleetgate/<fleet>/v-<n>/position` on a broker fleetgate subscribes to,
//! at a fixed rate, each outcome read back from the vehicle's ack topic.
//! Reported like the HTTP ingest scenario (an "update" per message), so the
//! server's CPU per update sits next to the other paths'.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

use crate::{
    Common, parse_duration,
    report::{Failures, Report, num},
    stats::{self, Latency},
};

#[derive(Args, Clone)]
pub struct Params {
    /// The broker fleetgate takes positions from (host:port, plain MQTT).
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Messages per second in all.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Distinct vehicles (topics) written.
    #[arg(long, default_value_t = 200)]
    vehicles: usize,
    /// Messages before the window opens.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// The measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// How long after the window outcomes may still arrive and count.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain: Duration,
}

pub async fn run(common: &Common, p: Params) -> anyhow::Result<Report> {
    anyhow::ensure!(p.rate > 0.0 && p.rate.is_finite(), "--rate must be positive");
    anyhow::ensure!(p.vehicles > 0, "--vehicles must be at least 1");
    let procs = common.procs()?;
    let (host, port) = p.broker.rsplit_once(':').context("--broker must be host:port")?;
    let port: u16 = port.parse().context("--broker port")?;
    let mut options = MqttOptions::new(format!("fleetgate-bench-{}", std::process::id()), host, port);
    options.set_keep_alive(Duration::from_secs(30)).set_inflight(1000).set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 10_000);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    let ack_filter = format!("fleetgate/{}/+/ack", common.fleet);
    client.subscribe(&ack_filter, QoS::AtMostOnce).await?;
    // Until the ack subscription is granted, an outcome could be missed.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .context("no SUBACK from the broker")??;

    let period = Duration::from_secs_f64(1.0 / p.rate);
    let t0 = tokio::time::Instant::now();
    let window_at = t0 + p.warmup;
    let end_at = window_at + p.duration;
    let give_up_at = end_at + p.drain;
    // Per vehicle, the send times of messages without an outcome yet: one
    // replica takes a vehicle's messages in order, so outcomes come in order.
    let mut pending: HashMap<String, VecDeque<(Instant, bool)>> = HashMap::new();
    let (mut sent, mut sent_in_window, mut accepted_in_window, mut outcomes) = (0u64, 0u64, 0u64, 0u64);
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let latency = Latency::default();
    let failures = Failures::default();
    let mut due = t0;
    let mut samples = None;
    let mut last_ts = vec![0i64; p.vehicles];
    loop {
        let now = tokio::time::Instant::now();
        if samples.is_none() && now >= window_at {
            samples = Some((procs.sample(), stats::self_cpu_time(), Instant::now()));
        }
        if now >= give_up_at || (now >= end_at && pending.values().all(VecDeque::is_empty)) {
            break;
        }
        let publishing = now < end_at;
        tokio::select! {
            _ = tokio::time::sleep_until(due), if publishing => {
                let v = (sent % p.vehicles as u64) as usize;
                let ts = stats::now_ms().max(last_ts[v] + 1);
                last_ts[v] = ts;
                let payload = format!("{{\"lat\":{:.6},\"lon\":{:.6},\"ts\":{ts},\"speed\":7.5}}", 37.45 + (v % 100) as f64 * 0.002, 126.95 + (v / 100) as f64 * 0.002);
                let vehicle = format!("v-{v}");
                let in_window = tokio::time::Instant::now() >= window_at;
                client.publish(format!("fleetgate/{}/{vehicle}/position", common.fleet), QoS::AtLeastOnce, false, payload).await?;
                pending.entry(vehicle).or_default().push_back((Instant::now(), in_window));
                sent += 1;
                sent_in_window += u64::from(in_window);
                due += period;
            }
            _ = tokio::time::sleep_until(if publishing { end_at } else { give_up_at }) => {}
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(m))) => {
                    outcomes += 1;
                    let vehicle = m.topic.split('/').nth(2).unwrap_or_default();
                    let sent_at = pending.get_mut(vehicle).and_then(VecDeque::pop_front);
                    let body: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                    let accepted = body["data"]["accepted"] == true;
                    if !accepted {
                        let code = body["error"]["code"].as_str().or(body["data"]["reason"].as_str()).unwrap_or("unreadable");
                        *codes.entry(code.to_owned()).or_default() += 1;
                        failures.add(code, "not accepted");
                    }
                    if let Some((at, in_window)) = sent_at && in_window {
                        latency.record(at.elapsed());
                        accepted_in_window += u64::from(accepted);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failures.add("mqtt_error", &e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    let (srv0, tool0, wall0) = samples.context("the window never opened")?;
    let wall = wall0.elapsed().as_secs_f64().min(p.duration.as_secs_f64() + p.drain.as_secs_f64());
    let srv1 = procs.sample();
    let server_cpu = srv1.cpu().saturating_sub(srv0.cpu()).as_secs_f64();
    let tool_cpu = stats::self_cpu_time().saturating_sub(tool0).as_secs_f64();
    let lost: u64 = pending.values().map(|q| q.len() as u64).sum();
    let secs = p.duration.as_secs_f64();
    let results = json!({
        "window_s": secs,
        "requests": sent,
        "requests_in_window": sent_in_window,
        "requests_per_s": sent_in_window as f64 / secs,
        "target_per_s": p.rate,
        "accepted": accepted_in_window,
        "outcomes": outcomes,
        "without_outcome": lost,
        "refused": codes,
        // As the HTTP rows count them: every message not accepted.
        "non_200": codes.values().sum::<u64>() + lost,
        "latency": latency.json(),
        "server": {
            "pids": procs.0,
            "cpu_s": server_cpu,
            "cpu_util": server_cpu / wall.max(1e-9),
            // CPU over the window and the drain, per message of the window it accepted.
            "cpu_us_per_request": (accepted_in_window > 0 && !procs.is_empty()).then(|| server_cpu * 1e6 / accepted_in_window as f64),
            "rss_bytes": srv1.rss,
        },
    });
    let summary = vec![
        format!(
            "{:.0} msg/s (target {:.0}); accepted in window {accepted_in_window} of {sent_in_window}; without an outcome: {lost}",
            sent_in_window as f64 / secs,
            p.rate
        ),
        format!(
            "publish → outcome p50 {} ms, p99 {} ms; server {} µs CPU per update",
            num(&results["latency"]["p50_ms"], 2),
            num(&results["latency"]["p99_ms"], 2),
            num(&results["server"]["cpu_us_per_request"], 0)
        ),
    ];
    let _ = client.disconnect().await;
    Ok(Report {
        scenario: "ingest",
        label: common.label.clone(),
        params: json!({
            "broker": p.broker, "rate": p.rate, "vehicles": p.vehicles, "fleet": common.fleet,
            "warmup_s": p.warmup.as_secs_f64(), "duration_s": secs, "form": "mqtt",
        }),
        results,
        failures: failures.json(),
        tool: json!({ "threads": common.threads, "cpu_s": tool_cpu, "cpu_util": tool_cpu / wall.max(1e-9) }),
        summary,
    })
}
