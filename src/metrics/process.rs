//! Process metrics (CPU time, memory, file descriptors, threads), read from
//! `/proc/self` at each scrape and written as exposition text.
//!
//! They bypass the `metrics` recorder because its counters are integers:
//! CPU seconds would be truncated to whole seconds and `rate()` over them
//! would be useless on a lightly loaded pod.

use std::fmt::Write;

/// Appends the process families to `out`; nothing where `/proc` is absent.
pub fn render(out: &mut String) {
    #[cfg(target_os = "linux")]
    if let Some(sample) = linux::read() {
        sample.write(out);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = out;
}

/// One reading of the process.
#[derive(Debug, Default)]
struct Sample {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: Option<u64>,
    threads: u64,
    start_time_seconds: f64,
}

impl Sample {
    fn write(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP fleetgate_process_{name} {help}");
            let _ = writeln!(out, "# TYPE fleetgate_process_{name} {kind}");
            let _ = writeln!(out, "fleetgate_process_{name} {value}");
        };
        family("cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.", self.cpu_seconds);
        family("resident_memory_bytes", "gauge", "Resident memory size, in bytes.", self.resident_bytes as f64);
        family("virtual_memory_bytes", "gauge", "Virtual memory size, in bytes.", self.virtual_bytes as f64);
        family("open_fds", "gauge", "Open file descriptors, sockets included.", self.open_fds as f64);
        if let Some(max) = self.max_fds {
            family("max_fds", "gauge", "The soft limit on open file descriptors.", max as f64);
        }
        family("threads", "gauge", "OS threads of the process.", self.threads as f64);
        family(
            "start_time_seconds",
            "gauge",
            "Start time of the process, in seconds since the Unix epoch.",
            self.start_time_seconds,
        );
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use procfs::process::{LimitValue, Process};

    use super::Sample;

    pub(super) fn read() -> Option<Sample> {
        let me = Process::myself().ok()?;
        let stat = me.stat().ok()?;
        let ticks = procfs::ticks_per_second() as f64;
        let max_fds = me.limits().ok().and_then(|l| match l.max_open_files.soft_limit {
            LimitValue::Value(v) => Some(v),
            LimitValue::Unlimited => None,
        });
        let start_time_seconds =
            procfs::boot_time_secs().map(|boot| boot as f64 + stat.starttime as f64 / ticks).unwrap_or(0.0);
        Some(Sample {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_bytes: stat.rss * procfs::page_size(),
            virtual_bytes: stat.vsize,
            open_fds: me.fd_count().map_or(0, |n| n as u64),
            max_fds,
            threads: u64::try_from(stat.num_threads).unwrap_or(0),
            start_time_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_every_family_with_type_and_help() {
        let mut out = String::new();
        super::render(&mut out);
        for name in ["cpu_seconds_total", "resident_memory_bytes", "open_fds", "threads", "start_time_seconds"] {
            assert!(out.contains(&format!("# TYPE fleetgate_process_{name} ")), "{name} missing:\n{out}");
        }
        let rss: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("fleetgate_process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        assert!(rss > 0.0, "{out}");
    }
}
