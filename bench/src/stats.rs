//! What the tool measures besides its own traffic: latency histograms, the
//! server processes' CPU, memory and descriptors from /proc, and Redis
//! command counters from INFO.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

pub fn now_ms() -> i64 {
    now_us() / 1000
}

/// Log-linear buckets: values below 2^SUB exactly, above that 2^(SUB-1)
/// buckets per power of two, so any value is off by less than 1/128.
const SUB: u32 = 8;
const BUCKETS: usize = (1 << SUB) + (64 - SUB as usize) * (1 << (SUB - 1));

fn bucket(v: u64) -> usize {
    if v < (1 << SUB) {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let top = (v >> (msb - (SUB - 1))) as usize; // in [2^(SUB-1), 2^SUB)
    (1 << SUB) + (msb - SUB) as usize * (1 << (SUB - 1)) + (top - (1 << (SUB - 1)))
}

/// The middle of a bucket's range.
fn bucket_value(i: usize) -> u64 {
    if i < (1 << SUB) {
        return i as u64;
    }
    let j = i - (1 << SUB);
    let msb = SUB + (j >> (SUB - 1)) as u32;
    let top = ((1 << (SUB - 1)) + (j & ((1 << (SUB - 1)) - 1))) as u64;
    let low = top << (msb - (SUB - 1));
    low + ((1u64 << (msb - (SUB - 1))) >> 1)
}

/// A histogram of microseconds. A few dozen lines instead of a dependency:
/// hdrhistogram would turn on num-traits' default feature and make a
/// workspace build recompile half of the gateway's dependencies.
struct Histogram {
    counts: Vec<u64>,
    len: u64,
    sum: u128,
    max: u64,
}

impl Histogram {
    fn new() -> Self {
        Self { counts: vec![0; BUCKETS], len: 0, sum: 0, max: 0 }
    }

    fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.len += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    fn quantile(&self, q: f64) -> u64 {
        if self.len == 0 {
            return 0;
        }
        let rank = ((q * self.len as f64).ceil() as u64).clamp(1, self.len);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_value(i).min(self.max);
            }
        }
        self.max
    }
}

/// A latency distribution in microseconds, shared by every task of a run.
pub struct Latency(Mutex<Histogram>);

impl Default for Latency {
    fn default() -> Self {
        Self(Mutex::new(Histogram::new()))
    }
}

impl Latency {
    pub fn record_us(&self, us: i64) {
        self.lock().record(us.max(0) as u64);
    }

    pub fn record(&self, d: Duration) {
        self.record_us(d.as_micros() as i64);
    }

    /// Records several values under one lock (a batch of positions).
    pub fn record_many(&self, values: &[i64]) {
        let mut h = self.lock();
        for v in values {
            h.record((*v).max(0) as u64);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histogram> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.lock().quantile(q) as f64 / 1e3
    }

    /// Count, mean and the usual quantiles, in ms.
    pub fn json(&self) -> Value {
        let h = self.lock();
        if h.len == 0 {
            return json!({ "count": 0, "mean_ms": null, "p50_ms": null, "p90_ms": null, "p99_ms": null, "p999_ms": null, "max_ms": null });
        }
        let ms = |v: u64| v as f64 / 1e3;
        json!({
            "count": h.len,
            "mean_ms": h.sum as f64 / h.len as f64 / 1e3,
            "p50_ms": ms(h.quantile(0.50)),
            "p90_ms": ms(h.quantile(0.90)),
            "p99_ms": ms(h.quantile(0.99)),
            "p999_ms": ms(h.quantile(0.999)),
            "max_ms": ms(h.max),
        })
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// user + system CPU time of a whole process (all threads, exited ones too).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let (user, system) = cpu_times(pid)?;
    Ok(user + system)
}

/// User and system CPU time of a whole process, apart: user space is the
/// server's own work, system time mostly the kernel's TCP path.
pub fn cpu_times(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `after` starts at field 3.
    let (user, system): (u64, u64) = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some((u.parse::<u64>().ok()?, s.parse::<u64>().ok()?)))
        .context("malformed stat")?;
    let secs = |t: u64| Duration::from_secs_f64(t as f64 / clock_ticks());
    Ok((secs(user), secs(system)))
}

pub fn self_cpu_time() -> Duration {
    cpu_time(std::process::id()).unwrap_or_default()
}

/// VmRSS in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).context("malformed VmRSS")?;
    Ok(kb * 1024)
}

pub fn fd_count(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd")).with_context(|| format!("listing /proc/{pid}/fd"))?.count())
}

/// The processes being measured (a server, or its replicas), read together.
#[derive(Clone, Default)]
pub struct Procs(pub Vec<u32>);

#[derive(Clone, Copy, Default)]
pub struct ProcSample {
    pub user: Duration,
    pub system: Duration,
    pub rss: u64,
    pub fds: usize,
}

impl ProcSample {
    /// User plus system CPU time.
    pub fn cpu(&self) -> Duration {
        self.user + self.system
    }
}

impl Procs {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn check(&self) -> anyhow::Result<()> {
        for pid in &self.0 {
            cpu_time(*pid).with_context(|| format!("process {pid}"))?;
        }
        Ok(())
    }

    /// Sums over the processes; a process that is gone counts as zero (the
    /// failure shows up as failed connections instead).
    pub fn sample(&self) -> ProcSample {
        let mut s = ProcSample::default();
        for pid in &self.0 {
            let (user, system) = cpu_times(*pid).unwrap_or_default();
            s.user += user;
            s.system += system;
            s.rss += rss_bytes(*pid).unwrap_or_default();
            s.fds += fd_count(*pid).unwrap_or_default();
        }
        s
    }

    /// CPU time of each process, in order (zero for one that is gone).
    pub fn cpu_each(&self) -> Vec<Duration> {
        self.0.iter().map(|p| cpu_time(*p).unwrap_or_default()).collect()
    }

    pub fn rss_each(&self) -> Vec<u64> {
        self.0.iter().map(|p| rss_bytes(*p).unwrap_or_default()).collect()
    }
}

/// Calls per command (`cmdstat_*`) and the total, from one Redis.
#[derive(Clone, Default)]
pub struct RedisCounters {
    pub calls: BTreeMap<String, u64>,
    pub total: u64,
}

impl RedisCounters {
    pub async fn read(addr: &str) -> anyhow::Result<Self> {
        let mut out = Self::default();
        for line in info(addr, "commandstats").await?.lines() {
            // cmdstat_publish:calls=12,usec=34,…
            let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
            if let Some(calls) = rest.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|v| v.parse().ok()) {
                out.calls.insert(name.to_owned(), calls);
            }
        }
        for line in info(addr, "stats").await?.lines() {
            if let Some(v) = line.strip_prefix("total_commands_processed:") {
                out.total = v.trim().parse().unwrap_or(0);
            }
        }
        Ok(out)
    }

    /// Rates between two readings, per second; the INFO calls themselves are
    /// a handful and not worth subtracting.
    pub fn rates(&self, later: &Self, secs: f64) -> Value {
        let mut per_cmd = serde_json::Map::new();
        for (name, after) in &later.calls {
            let d = after.saturating_sub(*self.calls.get(name).unwrap_or(&0));
            if d > 0 {
                per_cmd.insert(name.clone(), json!(d as f64 / secs));
            }
        }
        let get = |n: &str| {
            later.calls.get(n).copied().unwrap_or(0).saturating_sub(self.calls.get(n).copied().unwrap_or(0)) as f64
                / secs
        };
        json!({
            "commands_per_s": later.total.saturating_sub(self.total) as f64 / secs,
            "publish_per_s": get("publish") + get("spublish"),
            "per_command_per_s": per_cmd,
        })
    }
}

/// One `INFO <section>` over RESP, without a client library.
async fn info(addr: &str, section: &str) -> anyhow::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .context("redis connect timed out")?
        .with_context(|| format!("connecting to redis at {addr}"))?;
    s.write_all(format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len()).as_bytes()).await?;
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("redis closed the connection");
            }
            buf.extend_from_slice(&chunk[..n]);
            let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else { continue };
            let header = std::str::from_utf8(&buf[..eol])?;
            let Some(len) = header.strip_prefix('$') else { bail!("unexpected INFO reply {header}") };
            let len: usize = len.parse()?;
            if buf.len() >= eol + 2 + len {
                return Ok(String::from_utf8_lossy(&buf[eol + 2..eol + 2 + len]).into_owned());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), read).await.context("redis INFO timed out")?
}

/// Whole-machine CPU from /proc/stat, to tell whether something besides the
/// measured processes was competing for the cores during a window.
#[derive(Clone, Copy, Default)]
pub struct MachineCpu {
    busy: u64,
    steal: u64,
}

impl MachineCpu {
    pub fn sample() -> Self {
        let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return Self::default() };
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return Self::default() };
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
        Self { busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7), steal: at(7) }
    }

    /// Cores busy over the interval, cores busy with anything but `measured`
    /// (CPU seconds of the processes the run accounts for), and stolen cores.
    pub fn json(&self, later: &Self, wall: f64, measured: f64) -> Value {
        let secs = |ticks: u64| ticks as f64 / clock_ticks();
        let wall = wall.max(1e-9);
        let busy = secs(later.busy.saturating_sub(self.busy));
        let other = ((busy - measured) / wall).max(0.0);
        json!({
            "busy_cores": busy / wall,
            "other_cores": other,
            "steal_cores": secs(later.steal.saturating_sub(self.steal)) / wall,
            "contended": other > 0.25,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for v in (0..10_000u64).chain([1 << 20, 3_600_000_000, u64::MAX / 2, u64::MAX]) {
            let i = bucket(v);
            assert!(i < BUCKETS && i >= last, "{v}");
            last = i;
            let mid = bucket_value(i);
            assert!(mid.abs_diff(v) as f64 <= (v as f64 / 128.0).max(0.5), "{v} → {mid}");
        }
    }

    #[test]
    fn quantiles() {
        let l = Latency::default();
        for v in 1..=1000 {
            l.record_us(v * 1000);
        }
        let p50 = l.quantile_ms(0.5);
        assert!((p50 - 500.0).abs() < 500.0 / 128.0, "{p50}");
        assert_eq!(l.json()["max_ms"], 1000.0);
        assert_eq!(l.json()["count"], 1000);
    }
}
