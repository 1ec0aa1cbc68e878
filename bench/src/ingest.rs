//! HTTP ingest: `PUT /api/v1/fleets/{fleet}/vehicles/{vehicle}/location`
//! with a dispatcher token (or, with `--form osmand`, the OsmAnd request of
//! the Traccar Client apps with a vehicle token per vehicle), at a fixed
//! rate over keep-alive connections.
//! HTTP/1.1 is written by hand: one request per connection at a time,
//! Content-Length bodies, nothing else to pay for.
//!
//! Vehicles circle a point of a grid each by default; with `--roam` they
//! drive across an area instead (the geofence scenario's vehicles, which
//! must cross geofence edges).

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
use fleetgate_testkit::sio;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    Common, parse_duration,
    prom::{moved, scrape},
    report::{Failures, Report, Window, num},
    stats::{self, Latency, RedisCounters},
};

#[derive(Args, Clone)]
pub struct Params {
    /// Server.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// Requests per second in all.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Keep-alive connections the requests are spread over.
    #[arg(short = 'c', long, default_value_t = 8)]
    pub connections: usize,
    /// Distinct vehicles written (at least one per connection).
    #[arg(long, default_value_t = 200)]
    pub vehicles: usize,
    /// Requests before the window opens.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many requests in all (0: run for warm-up + duration).
    #[arg(short = 'n', long, default_value_t = 0)]
    pub count: u64,
    /// A request without a response in this time counts as failed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// What each request is: the HTTP API's PUT, or an OsmAnd `GET /?id=…`
    /// (then --url is fleetgate's FLEETGATE_OSMAND_ADDR listener).
    #[arg(long, value_enum, default_value_t = Form::Http)]
    pub form: Form,
    /// Vehicles drive across this area (`south,west,north,east` in degrees)
    /// instead of circling a grid point each.
    #[arg(long, value_parser = Area::parse)]
    pub roam: Option<Area>,
    /// With --roam: metres a vehicle moves between two of its updates.
    #[arg(long, default_value_t = 15.0)]
    pub step_m: f64,
    /// The server's Prometheus endpoint (`http://host:port`): counters that
    /// moved over the window are reported (geofence events, store batches…).
    #[arg(long)]
    pub metrics_url: Option<String>,
}

/// A lon/lat box vehicles roam in.
#[derive(Clone, Copy, Debug)]
pub struct Area {
    pub south: f64,
    pub west: f64,
    pub north: f64,
    pub east: f64,
}

impl Area {
    fn parse(s: &str) -> Result<Self, String> {
        let v: Vec<f64> =
            s.split(',').map(|x| x.trim().parse::<f64>()).collect::<Result<_, _>>().map_err(|e| format!("{s}: {e}"))?;
        let [south, west, north, east] = v[..] else { return Err(format!("{s}: expected south,west,north,east")) };
        if !(south < north && west < east) {
            return Err(format!("{s}: expected south < north and west < east"));
        }
        Ok(Self { south, west, north, east })
    }

    pub fn json(&self) -> Value {
        json!([self.south, self.west, self.north, self.east])
    }
}

/// Where one roaming vehicle is, in metres from the area's south-west
/// corner, and where it heads.
struct Roamer {
    x: f64,
    y: f64,
    heading: f64,
    rng: u64,
}

/// A small deterministic generator (splitmix64): the same vehicles take
/// the same paths in every run.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1).
pub fn unit(state: &mut u64) -> f64 {
    (splitmix(state) >> 11) as f64 / (1u64 << 53) as f64
}

/// Metres per degree of latitude on the mean Earth sphere.
pub const M_PER_DEG: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;

impl Roamer {
    fn new(vehicle: usize, area: &Area) -> Self {
        let mut rng = 0x5EED_u64 ^ (vehicle as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
        let (w, h) = area.size_m();
        Self { x: unit(&mut rng) * w, y: unit(&mut rng) * h, heading: unit(&mut rng) * std::f64::consts::TAU, rng }
    }

    /// One step: a gentle random turn, then forward, bouncing off the edges.
    fn step(&mut self, area: &Area, step_m: f64) -> (f64, f64) {
        let (w, h) = area.size_m();
        self.heading += (unit(&mut self.rng) - 0.5) * 0.6;
        self.x += step_m * self.heading.cos();
        self.y += step_m * self.heading.sin();
        if self.x < 0.0 || self.x > w {
            self.x = self.x.clamp(0.0, w);
            self.heading = std::f64::consts::PI - self.heading;
        }
        if self.y < 0.0 || self.y > h {
            self.y = self.y.clamp(0.0, h);
            self.heading = -self.heading;
        }
        area.lat_lon_at(self.x, self.y)
    }
}

impl Area {
    /// Width and height in metres (plate carrée at the middle latitude).
    pub fn size_m(&self) -> (f64, f64) {
        ((self.east - self.west) * M_PER_DEG * self.mid_cos(), (self.north - self.south) * M_PER_DEG)
    }

    fn mid_cos(&self) -> f64 {
        ((self.south + self.north) / 2.0).to_radians().cos()
    }

    /// (lat, lon) of the point `x` metres east and `y` north of the south-west corner.
    pub fn lat_lon_at(&self, x: f64, y: f64) -> (f64, f64) {
        (self.south + y / M_PER_DEG, self.west + x / (M_PER_DEG * self.mid_cos()))
    }
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
    accepted_in_window: AtomicU64,
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
    if let Some(a) = &common.redis_addr {
        RedisCounters::read(a).await.with_context(|| format!("--redis-addr {a}"))?;
    }
    let metrics = p.metrics_url.as_deref().map(|u| sio::Target::parse(u, "/")).transpose()?;
    if let Some(m) = &metrics {
        scrape(&m.addr).await.with_context(|| format!("--metrics-url {}", m.http_base))?;
    }
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
            roamers: p.roam.map(|a| owned.iter().map(|v| Roamer::new(*v, &a)).collect()).unwrap_or_default(),
            roam: p.roam,
            step_m: p.step_m,
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
    // Read outside the CPU samples, so their own cost is not in the window.
    let metrics0 = match &metrics {
        Some(m) => scrape(&m.addr).await.ok(),
        None => None,
    };
    let redis_before = match &common.redis_addr {
        Some(a) => RedisCounters::read(a).await.ok(),
        None => None,
    };
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
    let red1 = redis_procs.sample();
    let redis_cpu = red1.cpu().saturating_sub(red0.cpu()).as_secs_f64();
    let tool_cpu = stats::self_cpu_time().saturating_sub(tool0).as_secs_f64();
    let redis_rates = match (&common.redis_addr, &redis_before) {
        (Some(a), Some(before)) => RedisCounters::read(a).await.ok().map(|after| before.rates(&after, wall)),
        _ => None,
    };
    let metrics_moved = match (&metrics, &metrics0) {
        (Some(m), Some(before)) => scrape(&m.addr).await.ok().map(|after| moved(before, &after, wall)),
        _ => None,
    };
    let _ = tokio::time::timeout(p.timeout + Duration::from_secs(1), futures_util::future::join_all(handles)).await;

    let s = &shared;
    let secs = s.window.secs();
    let in_window = s.in_window.load(Relaxed);
    let status = s.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let non_200: u64 = status.iter().filter(|(k, _)| **k != 200).map(|(_, v)| v).sum();
    let server_cpu = srv1.cpu().saturating_sub(srv0.cpu()).as_secs_f64();
    let server_user = srv1.user.saturating_sub(srv0.user).as_secs_f64();
    let server_system = srv1.system.saturating_sub(srv0.system).as_secs_f64();
    let accepted_in_window = s.accepted_in_window.load(Relaxed);
    let per_request = |cpu: f64, known: bool| (in_window > 0 && known).then(|| cpu * 1e6 / in_window as f64);
    let per_accepted =
        |cpu: f64, known: bool| (accepted_in_window > 0 && known).then(|| cpu * 1e6 / accepted_in_window as f64);
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
        "accepted_in_window": accepted_in_window,
        "status": status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "non_200": non_200,
        "latency": s.latency.json(),
        "server": {
            "pids": procs.0,
            "cpu_s": server_cpu,
            "cpu_util": server_cpu / wall.max(1e-9),
            "cpu_us_per_request": per_request(server_cpu, !procs.is_empty()),
            "user_s": server_user,
            "system_s": server_system,
            "user_us_per_request": per_request(server_user, !procs.is_empty()),
            "system_us_per_request": per_request(server_system, !procs.is_empty()),
            "cpu_us_per_update": per_accepted(server_cpu, !procs.is_empty()),
            "user_us_per_update": per_accepted(server_user, !procs.is_empty()),
            "system_us_per_update": per_accepted(server_system, !procs.is_empty()),
            "rss_bytes": srv1.rss,
        },
        "redis": {
            "pids": redis_procs.0,
            "cpu_s": redis_cpu,
            "cpu_util": redis_cpu / wall.max(1e-9),
            "cpu_us_per_update": per_accepted(redis_cpu, !redis_procs.is_empty()),
            "rss_bytes": red1.rss,
            "info": redis_rates,
        },
        "metrics": metrics_moved,
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
            "roam": p.roam.map(|a| a.json()), "step_m": p.roam.map(|_| p.step_m),
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
    /// Per owned vehicle, with --roam.
    roamers: Vec<Roamer>,
    roam: Option<Area>,
    step_m: f64,
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
        let (lat, lon) = match (c.roam.as_ref(), c.roamers.get_mut(k)) {
            (Some(area), Some(r)) => r.step(area, c.step_m),
            _ => (
                37.45 + (v % 100) as f64 * 0.002 + 0.001 * angle.sin(),
                126.95 + (v / 100 % 100) as f64 * 0.002 + 0.001 * angle.cos(),
            ),
        };
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
                    if s.window.contains(ts) {
                        s.accepted_in_window.fetch_add(1, Relaxed);
                    }
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

pub struct Response {
    pub status: u16,
    pub accepted: bool,
    pub keep_alive: bool,
    /// Where the body is in the read buffer.
    pub body: std::ops::Range<usize>,
}

/// Sends one request on the kept-alive connection (opening it if needed)
/// and reads one response (its body is left in `buf`, at `Response::body`).
pub async fn exchange(
    conn: &mut Option<TcpStream>,
    addr: &str,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> anyhow::Result<Response> {
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
    Ok(Response { status, accepted, keep_alive, body: head_end..head_end + length })
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
