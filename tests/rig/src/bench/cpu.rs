// SPDX-License-Identifier: GPL-2.0-or-later
//! The host CPU a QEMU process got, from /proc: its vCPU thread (named
//! `CPU 0/TCG` when QEMU runs with `-name ...,debug-threads=on`) on a CPU
//! and runnable but waiting for one, and all its other threads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stats::now;

/// Cumulative CPU seconds of one QEMU at one host instant.
#[derive(Debug, Clone, Default)]
pub struct CpuTimes {
    pub t: f64,
    /// The whole process, exited threads included.
    pub total: f64,
    /// utime + stime per thread name.
    pub threads: BTreeMap<String, f64>,
    /// The vCPU threads on a CPU and waiting for one (schedstat), if read.
    pub vcpu_run: Option<f64>,
    pub vcpu_wait: Option<f64>,
}

/// Shares of one host CPU between two [`CpuTimes`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuShare {
    pub vcpu: f64,
    pub vcpu_wait: Option<f64>,
    /// Every thread but the vCPU's (mekha's worker, I/O, migration, the
    /// main loop).
    pub other: f64,
}

impl CpuTimes {
    /// Samples process `pid`; what cannot be read stays zero.
    pub fn sample(pid: u32) -> CpuTimes {
        let tick = clock_tick();
        let mut out = CpuTimes { t: now(), ..Default::default() };
        let Some((_, total)) = read_stat(&format!("/proc/{pid}/stat"), tick) else { return out };
        out.total = total;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
        for task in tasks.flatten() {
            let dir = task.path();
            let Some((name, secs)) = read_stat(&dir.join("stat").to_string_lossy(), tick) else { continue };
            if name.starts_with("CPU ") {
                if let Some((run, wait)) = read_schedstat(&dir.join("schedstat")) {
                    *out.vcpu_run.get_or_insert(0.0) += run;
                    *out.vcpu_wait.get_or_insert(0.0) += wait;
                }
            }
            *out.threads.entry(name).or_default() += secs;
        }
        out
    }

    /// The shares of one CPU from `self` to `later`.
    pub fn share_until(&self, later: &CpuTimes) -> CpuShare {
        let span = later.t - self.t;
        let vcpu_ticks: f64 = later
            .threads
            .iter()
            .filter(|(k, _)| k.starts_with("CPU "))
            .map(|(k, v)| v - self.threads.get(k).copied().unwrap_or(0.0))
            .sum::<f64>()
            / span;
        let total = (later.total - self.total) / span;
        let (vcpu, vcpu_wait) = match (self.vcpu_run.zip(self.vcpu_wait), later.vcpu_run.zip(later.vcpu_wait)) {
            (Some((r0, w0)), Some((r1, w1))) => ((r1 - r0) / span, Some((w1 - w0) / span)),
            _ => (vcpu_ticks, None),
        };
        CpuShare { vcpu, vcpu_wait, other: (total - vcpu_ticks).max(0.0) }
    }
}

fn clock_tick() -> f64 {
    // SAFETY: a plain library call without arguments to check.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if tick > 0 {
        tick as f64
    } else {
        100.0
    }
}

/// A /proc stat file's command name and utime + stime in seconds.
fn read_stat(path: &str, tick: f64) -> Option<(String, f64)> {
    parse_stat(&std::fs::read_to_string(path).ok()?, tick)
}

fn parse_stat(text: &str, tick: f64) -> Option<(String, f64)> {
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    let name = text[open + 1..close].to_owned();
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / tick))
}

/// schedstat: ns on a CPU, ns runnable waiting; in seconds.
fn read_schedstat(path: &std::path::Path) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some((it.next()?? / 1e9, it.next()?? / 1e9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_the_name_and_cpu_seconds() {
        let line = "4242 (CPU 0/TCG) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100";
        assert_eq!(parse_stat(line, 100.0), Some(("CPU 0/TCG".into(), 3.0)));
        assert_eq!(parse_stat("1 (x) S 1", 100.0), None);
    }

    #[test]
    fn shares_split_the_vcpu_from_the_other_threads() {
        let threads = |v: f64, w: f64| BTreeMap::from([("CPU 0/TCG".to_owned(), v), ("worker".to_owned(), w)]);
        let a = CpuTimes { t: 0.0, total: 1.0, threads: threads(0.5, 0.5), vcpu_run: None, vcpu_wait: None };
        let b = CpuTimes { t: 2.0, total: 3.0, threads: threads(2.0, 1.0), vcpu_run: None, vcpu_wait: None };
        let s = a.share_until(&b);
        assert_eq!((s.vcpu, s.vcpu_wait, s.other), (0.75, None, 0.25));
        let a = CpuTimes { vcpu_run: Some(1.0), vcpu_wait: Some(0.0), ..a };
        let b = CpuTimes { vcpu_run: Some(2.5), vcpu_wait: Some(0.5), ..b };
        let s = a.share_until(&b);
        assert_eq!((s.vcpu, s.vcpu_wait), (0.75, Some(0.25)));
    }
}
