//! The server's Prometheus endpoint read at both edges of a window: which
//! counters moved and by how much (geofence events, store batches, …).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::ingest::exchange;

/// Every sample of one scrape, `name{labels}` → value.
pub type Samples = BTreeMap<String, f64>;

/// `GET /metrics` on `addr` (host:port), parsed.
pub async fn scrape(addr: &str) -> anyhow::Result<Samples> {
    let mut conn = None;
    let mut buf = Vec::new();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let resp =
        tokio::time::timeout(std::time::Duration::from_secs(5), exchange(&mut conn, addr, req.as_bytes(), &mut buf))
            .await
            .context("metrics scrape timed out")??;
    if resp.status != 200 {
        bail!("GET /metrics answered {}", resp.status);
    }
    Ok(parse(&String::from_utf8_lossy(&buf[resp.body])))
}

/// The text exposition format: `name{labels} value`, comments skipped.
pub fn parse(text: &str) -> Samples {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.trim().to_owned(), value.trim().parse::<f64>().ok()?))
        })
        .collect()
}

/// What moved between two scrapes `secs` apart: every counter (and
/// histogram or summary `_sum`/`_count`) that changed, in all and per
/// second, and the gauges as they were at the end.
pub fn moved(before: &Samples, after: &Samples, secs: f64) -> Value {
    let mut delta = serde_json::Map::new();
    let mut per_s = serde_json::Map::new();
    let mut gauges = serde_json::Map::new();
    for (key, v) in after {
        let name = key.split('{').next().unwrap_or(key);
        if name.ends_with("_total") || name.ends_with("_sum") || name.ends_with("_count") {
            let d = v - before.get(key).copied().unwrap_or(0.0);
            if d != 0.0 {
                delta.insert(key.clone(), json!(d));
                per_s.insert(key.clone(), json!(d / secs.max(1e-9)));
            }
        } else if !name.ends_with("_bucket") && !key.contains("quantile=") {
            gauges.insert(key.clone(), json!(v));
        }
    }
    json!({ "delta": delta, "per_s": per_s, "gauges": gauges })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_that_moved() {
        let a = parse("# TYPE x counter\nx_total{kind=\"enter\"} 3\nx_total{kind=\"exit\"} 1\ng 5\n");
        let b = parse("x_total{kind=\"enter\"} 7\nx_total{kind=\"exit\"} 1\ng 9\nh_sum 0.5\nh_bucket{le=\"1\"} 2\n");
        let m = moved(&a, &b, 2.0);
        assert_eq!(m["delta"]["x_total{kind=\"enter\"}"], 4.0);
        assert_eq!(m["per_s"]["x_total{kind=\"enter\"}"], 2.0);
        assert!(m["delta"].get("x_total{kind=\"exit\"}").is_none());
        assert_eq!(m["delta"]["h_sum"], 0.5);
        assert_eq!(m["gauges"]["g"], 9.0);
        assert!(m["gauges"].get("h_bucket{le=\"1\"}").is_none());
    }
}
