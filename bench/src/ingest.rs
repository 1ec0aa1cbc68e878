//! HTTP ingest: `PUT /api/v1/fleets/{fleet}/vehicles/{vehicle}/location`
//! with a dispatcher token (or, with `--form osmand`, the OsmAnd request of
//! the Traccar Client apps with a vehicle token per vehicle), at a fixed
//! rate over keep-alive connections.
//! HTTP/1.1 is written by hand: one request per connection at a time,
//! Content-Length bodies, nothing else to pay for.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    Common, parse_duration,
    report::{Failures, Report, Window, num},
    sio,
    stats::{self, Latency},
};

#[derive(Args, Clone)]
pub struct Params {
    /// Server.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Requests per second in all.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Keep-alive connections the requests are spread over.
    #[arg(short = 'c', long, default_value_t = 8)]
    connections: usize,
    /// Distinct vehicles written (at least one per connection).
    #[arg(long, default_value_t = 200)]
    vehicles: usize,
    /// Requests before the window opens.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// The measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many requests in all (0: run for warm-up + duration).
    #[arg(short = 'n', long, default_value_t = 0)]
    count: u64,
    /// A request without a response in this time counts as failed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// What each request is: the HTTP API's PUT, or an OsmAnd `GET /?id=…`
    /// (then --url is fleetgate's FLEETGATE_OSMAND_ADDR listener).
    #[arg(long, value_enum, default_value_t = Form::Http)]
    form: Form,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Http,
    Osmand,
}

#[derive(Default)]
struct Shared {
    window: Window,
    issued: AtomicU64,
    done: AtomicU64,
    in_window: AtomicU64,
    accepted: AtomicU64,
    status: Mutex<BTreeMap<u16, u64>>,
    latency: Latency,
    schedule_lag: Latency,
    /// Requests that were due while the previous one on their connection was still out.
    started_late: AtomicU64,
    failures: Failures,
}

pub async fn run(common: &Common, p: Params) -> anyhow::Result<Report> {
    anyhow::ensure!(p.rate > 0.0 && p.rate.is_finite(), "--rate must be positive");
    anyhow::ensure!(p.connections > 0, "--connections must be at least 1");
    let minter = common.minter()?;
    let procs = common.procs()?;
    let redis_procs = common.redis_procs()?;
    let target = sio::Target::parse(&p.url, &common.path)?;
    let token = minter.mint("dispatcher", "bench-dispatcher", &common.fleet)?;
    let vehicles = p.vehicles.max(p.connections);
    let shared = Arc::new(Shared::default());
    let t0 = tokio::time::Instant::now() + Duration::from_millis(20);
    let end_at = t0 + p.warmup + p.duration;
    let period = Duration::from_secs_f64(p.connections as f64 / p.rate);
    let mut handles = Vec::new();
    for c in 0..p.connections {
        let owned: Vec<usize> = (c..vehicles).step_by(p.connections).collect();
        // OsmAnd devices carry their vehicle's own token.
        let device_tokens = match p.form {
            Form::Http => Vec::new(),
            Form::Osmand => owned
                .iter()
                .map(|v| minter.mint("vehicle", &format!("v-{v}"), &common.fleet))
                .collect::<Result<_, _>>()?,
        };
        let ctx = ConnCtx {
            shared: shared.clone(),
            addr: target.addr.clone(),
            fleet: common.fleet.clone(),
            token: token.clone(),
            device_tokens,
            owned,
            due: t0 + period.mul_f64(c as f64 / p.connections as f64),
            period,
            end_at,
            count: p.count,
            timeout: p.timeout,
        };
        handles.push(tokio::spawn(connection(ctx)));
    }
    tokio::time::sleep_until(t0 + p.warmup).await;
    let srv0 = procs.sample();
    let tool0 = stats::self_cpu_time();
    let mach0 = stats::MachineCpu::sample();
    let red0 = redis_procs.sample();
    let wall0 = Instant::now();
    shared.window.open(stats::now_ms());
    tokio::time::sleep_until(end_at).await;
    shared.window.close(stats::now_ms());
    let wall = wall0.elapsed().as_secs_f64();
    let srv1 = procs.sample();
    let mach1 = stats::MachineCpu::sample();
    let redis_cpu = redis_procs.sample().cpu().saturating_sub(red0.cpu()).as_secs_f64();
    let tool_cpu = stats::self_cpu_time().saturating_sub(tool0).as_secs_f64();
    let _ = tokio::time::timeout(p.timeout + Duration::from_secs(1), futures_util::future::join_all(handles)).await;

    let s = &shared;
    let secs = s.window.secs();
    let in_window = s.in_window.load(Relaxed);
    let status = s.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let non_200: u64 = status.iter().filter(|(k, _)| **k != 200).map(|(_, v)| v).sum();
    let server_cpu = srv1.cpu().saturating_sub(srv0.cpu()).as_secs_f64();
    let lag_p99 = s.schedule_lag.quantile_ms(0.99);
    let fell_behind = lag_p99 > (period.as_secs_f64() * 1e3 / 5.0).max(5.0);
    let achieved = in_window as f64 / secs.max(1e-9);
    let rate_met = achieved >= 0.98 * p.rate || p.count > 0;
    let tool_util = tool_cpu / wall.max(1e-9) / common.threads.max(1) as f64;
    let results = json!({
        "window_s": secs,
        "requests": s.done.load(Relaxed),
        "requests_in_window": in_window,
        "requests_per_s": achieved,
        "target_per_s": p.rate,
        "rate_met": rate_met,
        "started_late": s.started_late.load(Relaxed),
        "accepted": s.accepted.load(Relaxed),
        "status": status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "non_200": non_200,
        "latency": s.latency.json(),
        "server": {
            "pids": procs.0,
            "cpu_s": server_cpu,
            "cpu_util": server_cpu / wall.max(1e-9),
            "cpu_us_per_request": (in_window > 0 && !procs.is_empty()).then(|| server_cpu * 1e6 / in_window as f64),
            "rss_bytes": srv1.rss,
        },
    });
    let failures = s.failures.json();
    let summary = vec![
        format!(
            "{achieved:.0} req/s (target {:.0}{}) over {} connections; non-200: {non_200}",
            p.rate,
            if rate_met { "" } else { ", NOT MET: the server answered too slowly" },
            p.connections
        ),
        format!(
            "latency p50 {} ms, p99 {} ms, max {} ms; server {} µs CPU per request",
            num(&results["latency"]["p50_ms"], 2),
            num(&results["latency"]["p99_ms"], 2),
            num(&results["latency"]["max_ms"], 2),
            num(&results["server"]["cpu_us_per_request"], 0)
        ),
        format!("tool CPU {:.0} %{}", tool_util * 100.0, if fell_behind { ", FELL BEHIND its schedule" } else { "" }),
    ];
    Ok(Report {
        scenario: "ingest",
        label: common.label.clone(),
        params: json!({
            "url": target.http_base, "rate": p.rate, "connections": p.connections, "vehicles": vehicles,
            "fleet": common.fleet, "warmup_s": p.warmup.as_secs_f64(), "duration_s": p.duration.as_secs_f64(),
            "count": p.count, "form": match p.form { Form::Http => "http", Form::Osmand => "osmand" },
        }),
        results,
        failures,
        tool: json!({
            "machine": mach0.json(&mach1, wall, server_cpu + redis_cpu + tool_cpu),
            "threads": common.threads,
            "cpu_s": tool_cpu,
            "cpu_util": tool_util,
            "saturated": tool_util > 0.9,
            "schedule_lag": s.schedule_lag.json(),
            "fell_behind": fell_behind,
        }),
        summary,
    })
}

struct ConnCtx {
    shared: Arc<Shared>,
    addr: String,
    fleet: String,
    token: String,
    /// Per owned vehicle, for `--form osmand`.
    device_tokens: Vec<String>,
    owned: Vec<usize>,
    due: tokio::time::Instant,
    period: Duration,
    end_at: tokio::time::Instant,
    count: u64,
    timeout: Duration,
}

async fn connection(mut c: ConnCtx) {
    let s = c.shared.clone();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    let mut last_ts = vec![0i64; c.owned.len()];
    let mut turn = 0usize;
    loop {
        // One request at a time per connection: a request due while the
        // previous one is still out starts late because of the server, and
        // is counted as such rather than as the tool's own lateness.
        let waited = c.due > tokio::time::Instant::now();
        tokio::time::sleep_until(c.due).await;
        let now = tokio::time::Instant::now();
        if now >= c.end_at || c.owned.is_empty() {
            break;
        }
        if c.count > 0 && s.issued.fetch_add(1, Relaxed) >= c.count {
            break;
        }
        if waited {
            s.schedule_lag.record(now.saturating_duration_since(c.due));
        } else {
            s.started_late.fetch_add(1, Relaxed);
        }
        let k = turn % c.owned.len();
        turn += 1;
        let ts = stats::now_ms().max(last_ts[k] + 1);
        last_ts[k] = ts;
        let v = c.owned[k];
        let angle = turn as f64 * 0.05;
        let (lat, lon) = (
            37.45 + (v % 100) as f64 * 0.002 + 0.001 * angle.sin(),
            126.95 + (v / 100 % 100) as f64 * 0.002 + 0.001 * angle.cos(),
        );
        let body = format!("{{\"lat\":{lat:.6},\"lon\":{lon:.6},\"ts\":{ts},\"speed\":7.5}}");
        let req = if let Some(device) = c.device_tokens.get(k) {
            // What Traccar Client sends: every parameter in the query, no body.
            format!(
                "POST /?id={device}&timestamp={ts}&lat={lat:.6}&lon={lon:.6}&speed=14.6&bearing=90.0&accuracy=5.0&batt=80.0 HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
                c.addr
            )
        } else {
            format!(
                "PUT /api/v1/fleets/{}/vehicles/v-{v}/location HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                c.fleet,
                c.addr,
                c.token,
                body.len()
            )
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(c.timeout, exchange(&mut conn, &c.addr, req.as_bytes(), &mut buf)).await;
        s.done.fetch_add(1, Relaxed);
        match outcome {
            Ok(Ok(resp)) => {
                *s.status.lock().unwrap_or_else(|e| e.into_inner()).entry(resp.status).or_default() += 1;
                if s.window.contains(ts) {
                    s.in_window.fetch_add(1, Relaxed);
                    s.latency.record(started.elapsed());
                }
                if resp.status == 200 && resp.accepted {
                    s.accepted.fetch_add(1, Relaxed);
                } else if resp.status == 200 {
                    s.failures.add("not_accepted", "200 without accepted:true");
                } else {
                    s.failures.add(&format!("http_{}", resp.status), "non-200 response");
                }
                if !resp.keep_alive {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                s.failures.add("http_error", e);
                conn = None;
            }
            Err(_) => {
                s.failures.add("http_timeout", format!("no response within {:?}", c.timeout));
                conn = None;
            }
        }
        c.due += c.period;
        if now.saturating_duration_since(c.due) > Duration::from_secs(1) {
            c.due = now;
        }
    }
}

struct Response {
    status: u16,
    accepted: bool,
    keep_alive: bool,
}

/// Sends one request on the kept-alive connection (opening it if needed)
/// and reads one response.
async fn exchange(conn: &mut Option<TcpStream>, addr: &str, req: &[u8], buf: &mut Vec<u8>) -> anyhow::Result<Response> {
    if conn.is_none() {
        let s = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        *conn = Some(s);
    }
    let Some(stream) = conn.as_mut() else { bail!("no connection") };
    stream.write_all(req).await.context("writing the request")?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    let (head_end, status, length, keep_alive) = loop {
        let n = stream.read(&mut chunk).await.context("reading the response")?;
        if n == 0 {
            bail!("connection closed before a response");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
            let (status, length, keep_alive) = parse_head(head)?;
            break (end + 4, status, length, keep_alive);
        }
        if buf.len() > 64 * 1024 {
            bail!("response head over 64 KiB");
        }
    };
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.context("reading the body")?;
        if n == 0 {
            bail!("connection closed in the body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..head_end + length];
    let accepted = body.windows(15).any(|w| w == b"\"accepted\":true");
    Ok(Response { status, accepted, keep_alive })
}

/// Status, Content-Length and whether the connection stays open.
fn parse_head(head: &str) -> anyhow::Result<(u16, usize, bool)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).context("malformed status line")?;
    let mut length = None;
    let mut keep_alive = true;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("malformed Content-Length")?);
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            keep_alive = false;
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            bail!("chunked responses are not supported");
        }
    }
    Ok((status, length.context("response without Content-Length")?, keep_alive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let (s, l, k) = parse_head("HTTP/1.1 200 OK\r\ncontent-length: 42\r\ncontent-type: application/json").unwrap();
        assert_eq!((s, l, k), (200, 42, true));
        let (s, _, k) = parse_head("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close").unwrap();
        assert_eq!((s, k), (401, false));
        assert!(parse_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").is_err());
    }
}
