//! The result of a run: one JSON line on stdout for scripts, and a short
//! summary on stderr for the person watching.

use std::{
    collections::BTreeMap,
    fmt::Display,
    sync::{
        Mutex,
        atomic::{AtomicI64, Ordering},
    },
};

use serde_json::{Value, json};

/// Failures by kind, with the first few messages kept as evidence.
#[derive(Default)]
pub struct Failures {
    counts: Mutex<BTreeMap<String, u64>>,
    samples: Mutex<Vec<String>>,
}

const SAMPLES: usize = 8;

impl Failures {
    pub fn add(&self, kind: &str, detail: impl Display) {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()).entry(kind.to_owned()).or_default() += 1;
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() < SAMPLES {
            s.push(format!("{kind}: {detail}"));
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }

    pub fn json(&self) -> Value {
        json!({
            "total": self.total(),
            "by_kind": *self.counts.lock().unwrap_or_else(|p| p.into_inner()),
            "samples": *self.samples.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }
}

/// The steady window, in ms since the epoch, compared with the `ts` the tool
/// put into each position or request. Classifying by send time, not arrival
/// time, is what lets in-flight work at both edges be counted exactly.
pub struct Window {
    start: AtomicI64,
    end: AtomicI64,
}

impl Default for Window {
    fn default() -> Self {
        Self { start: AtomicI64::new(i64::MAX), end: AtomicI64::new(i64::MAX) }
    }
}

impl Window {
    pub fn open(&self, ms: i64) {
        self.start.store(ms, Ordering::Release);
    }

    pub fn close(&self, ms: i64) {
        self.end.store(ms, Ordering::Release);
    }

    pub fn bounds(&self) -> (i64, i64) {
        (self.start.load(Ordering::Acquire), self.end.load(Ordering::Acquire))
    }

    pub fn contains(&self, ts: i64) -> bool {
        let (s, e) = self.bounds();
        s <= ts && ts < e
    }

    pub fn secs(&self) -> f64 {
        let (s, e) = self.bounds();
        if s == i64::MAX || e == i64::MAX { 0.0 } else { (e - s).max(1) as f64 / 1e3 }
    }
}

pub struct Report {
    pub scenario: &'static str,
    pub label: Option<String>,
    pub params: Value,
    pub results: Value,
    pub failures: Value,
    pub tool: Value,
    pub summary: Vec<String>,
}

impl Report {
    pub fn emit(&self) {
        let line = json!({
            "scenario": self.scenario,
            "label": self.label,
            "ts": crate::stats::now_ms(),
            "params": self.params,
            "results": self.results,
            "failures": self.failures,
            "tool": self.tool,
        });
        println!("{line}");
        let label = self.label.as_deref().map(|l| format!(" [{l}]")).unwrap_or_default();
        eprintln!("── {}{label}", self.scenario);
        for l in &self.summary {
            eprintln!("   {l}");
        }
        if self.tool["machine"]["contended"].as_bool() == Some(true) {
            eprintln!(
                "   other processes kept {:.2} cores busy during the window: these numbers are disturbed",
                self.tool["machine"]["other_cores"].as_f64().unwrap_or(0.0)
            );
        }
        let total = self.failures.get("total").and_then(Value::as_u64).unwrap_or(0);
        if total > 0 {
            eprintln!("   failures: {}", self.failures["by_kind"]);
            if let Some(samples) = self.failures["samples"].as_array() {
                for s in samples.iter().take(3) {
                    eprintln!("     e.g. {}", s.as_str().unwrap_or_default());
                }
            }
        }
    }
}

/// Formats an optional number for the summary.
pub fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map(|f| format!("{f:.digits$}")).unwrap_or_else(|| "–".into())
}
