// SPDX-License-Identifier: GPL-2.0-or-later
//! The cluster bench's summary (medians per N and method), its tables and
//! the design targets it checks (docs/design.md, "Targets").

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::cluster_data::{Method, Results, Run};
use super::stats::{fmt, median, ratio};

/// The table's columns: each method, then stock over each of mekha's.
const COLUMNS: [Method; 3] = Method::ALL;

/// docs/design.md: suspend skew <= 1 ms on one host.
pub const SKEW_LIMIT_MS: f64 = 1.0;
/// Restore to running <= 0.5x stock migrate-incoming.
pub const RESTART_RATIO: f64 = 0.5;
/// Issue 18: a VM's pause in copy-on-write mode, by QEMU's STOP and
/// RESUME events, once each VM resumes right after its own capture.
pub const COW_PAUSE_MS: f64 = 1.0;

type Get = fn(&Run) -> Option<f64>;

/// A figure of the table, both methods: label, key, digits, scale.
pub struct Row {
    pub label: &'static str,
    pub key: &'static str,
    pub digits: usize,
    pub scale: f64,
    pub get: Get,
}

/// A figure of one method (or, in HOST_DETAILS, of both): label, key,
/// digits.
pub struct Detail {
    pub label: &'static str,
    pub key: &'static str,
    pub digits: usize,
    pub get: Get,
}

fn ck(r: &Run) -> Option<&super::cluster_data::Checkpoint> {
    r.checkpoint.as_ref()
}
fn rs(r: &Run) -> Option<&super::cluster_data::Restart> {
    r.restart.as_ref()
}

pub const ROWS: [Row; 13] = [
    Row {
        label: "per-VM pause, median over the VMs: its STOP to its RESUME (ms)",
        key: "checkpoint.median_vm_pause_ms",
        digits: 2,
        scale: 1.0,
        get: |r| ck(r)?.median_vm_pause_ms,
    },
    Row {
        label: "cluster pause: first STOP to last RESUME (ms)",
        key: "checkpoint.cluster_pause_ms",
        digits: 1,
        scale: 1.0,
        get: |r| ck(r)?.cluster_pause_ms,
    },
    Row {
        label: "longest pause of one VM: its STOP to its RESUME (ms)",
        key: "checkpoint.max_vm_pause_ms",
        digits: 2,
        scale: 1.0,
        get: |r| ck(r)?.max_vm_pause_ms,
    },
    Row {
        label: "suspend skew: spread of the STOP events (ms)",
        key: "checkpoint.suspend_skew_ms",
        digits: 3,
        scale: 1.0,
        get: |r| ck(r)?.suspend_skew_ms,
    },
    Row {
        label: "resume skew: spread of the RESUME events (ms)",
        key: "checkpoint.resume_skew_ms",
        digits: 3,
        scale: 1.0,
        get: |r| ck(r)?.resume_skew_ms,
    },
    Row {
        label: "checkpoint latency: command to every image durable (ms)",
        key: "checkpoint.latency_ms",
        digits: 0,
        scale: 1.0,
        get: |r| ck(r)?.latency_ms,
    },
    Row {
        label: "bytes written (MiB)",
        key: "checkpoint.written_bytes",
        digits: 1,
        scale: 1.0 / (1u64 << 20) as f64,
        get: |r| ck(r)?.written_bytes.map(|b| b as f64),
    },
    Row {
        label: "restart time: first command to every VM running (ms)",
        key: "restart.restart_ms",
        digits: 0,
        scale: 1.0,
        get: |r| rs(r)?.restart_ms,
    },
    Row {
        label: "restart resume skew: spread of the RESUME events (ms)",
        key: "restart.resume_skew_ms",
        digits: 3,
        scale: 1.0,
        get: |r| rs(r)?.resume_skew_ms,
    },
    Row {
        label: "frames toward the guests saved in the images, all VMs",
        key: "checkpoint.net_saved_frames",
        digits: 0,
        scale: 1.0,
        get: |r| ck(r)?.net_saved_frames.map(|f| f as f64),
    },
    Row {
        label: "after the restart: RESUME to 90% of the steady compute rate (ms, slowest VM)",
        key: "restart.back_ms",
        digits: 0,
        scale: 1.0,
        get: |r| rs(r)?.back_ms,
    },
    Row {
        label: "after the restart: RESUME to 90% of the steady receive rate (ms, slowest VM)",
        key: "restart.msgs_back_ms",
        digits: 0,
        scale: 1.0,
        get: |r| rs(r)?.msgs_back_ms,
    },
    Row {
        label: "after the restart: steady work lost in its first 2 s (ms, most of a VM)",
        key: "restart.lost_work_ms",
        digits: 0,
        scale: 1.0,
        get: |r| rs(r)?.lost_work_ms,
    },
];

/// The delayed link of the runs of one (N, method): medians.
#[derive(Debug, Default)]
pub struct CutSummary {
    pub vm: String,
    pub delay_ms: f64,
    pub rate_msgs_s: Option<f64>,
    pub bdp_frames: Option<f64>,
    pub saved_frames: Option<f64>,
    pub saved_per_bdp: Option<f64>,
    pub line_lost: u64,
}

impl CutSummary {
    fn of(runs: &[&Run]) -> Option<CutSummary> {
        let cuts: Vec<_> = runs.iter().filter_map(|r| r.checkpoint.as_ref()?.net_cut.as_ref()).collect();
        let first = cuts.first()?;
        let m = |get: fn(&super::cluster_data::NetCut) -> Option<f64>| {
            median(&cuts.iter().map(|c| get(c)).collect::<Vec<_>>())
        };
        Some(CutSummary {
            vm: first.vm.clone(),
            delay_ms: first.delay_ms,
            rate_msgs_s: m(|c| c.rate_msgs_s),
            bdp_frames: m(|c| c.bdp_frames),
            saved_frames: m(|c| c.saved_frames.map(|f| f as f64)),
            saved_per_bdp: m(|c| c.saved_per_bdp),
            line_lost: cuts.iter().map(|c| c.line_lost).sum(),
        })
    }
}

pub const MEKHA_DETAILS: [Detail; 11] = [
    Detail {
        label: "stop spread, mekha's stopped-at-ns (ms)",
        key: "checkpoint.stop_spread_ms",
        digits: 3,
        get: |r| ck(r)?.mekha.as_ref()?.stop_spread_ms,
    },
    Detail {
        label: "resume spread, mekha's resumed-at-ns (ms)",
        key: "checkpoint.resume_spread_ms",
        digits: 3,
        get: |r| ck(r)?.mekha.as_ref()?.resume_spread_ms,
    },
    Detail {
        label: "largest |stop - T| (stop_skew_ns, ms)",
        key: "checkpoint.stop_skew_ms",
        digits: 3,
        get: |r| ck(r)?.mekha.as_ref()?.stop_skew_ms,
    },
    Detail {
        label: "longest pause-ns of a VM (ms)",
        key: "checkpoint.max_pause_ms",
        digits: 2,
        get: |r| ck(r)?.mekha.as_ref()?.max_pause_ms,
    },
    Detail {
        label: "longest resumed-at-ns - stopped-at-ns of a VM (ms)",
        key: "checkpoint.max_stopped_to_resumed_ms",
        digits: 2,
        get: |r| ck(r)?.mekha.as_ref()?.max_stopped_to_resumed_ms,
    },
    Detail {
        label: "live phase: first command to T (live_ms)",
        key: "checkpoint.live_ms",
        digits: 0,
        get: |r| ck(r)?.mekha.as_ref()?.live_ms,
    },
    Detail {
        label: "CLI latency_ms: first command to manifest committed",
        key: "checkpoint.latency_ms",
        digits: 0,
        get: |r| ck(r)?.mekha.as_ref()?.latency_ms,
    },
    Detail {
        label: "restart: CLI latency_ms (first command to every VM running)",
        key: "restart.latency_ms",
        digits: 0,
        get: |r| rs(r)?.mekha.as_ref()?.latency_ms,
    },
    Detail {
        label: "restart: largest |resume - T| (resume_skew_ns, ms)",
        key: "restart.resume_skew_ms",
        digits: 3,
        get: |r| rs(r)?.mekha.as_ref()?.resume_skew_ms,
    },
    Detail {
        label: "restart: CLI wall time (ms)",
        key: "restart.cli_wall_ms",
        digits: 0,
        get: |r| rs(r)?.mekha.as_ref()?.cli_wall_ms,
    },
    Detail {
        label: "restart: CLI exit after the last RESUME event (ms)",
        key: "restart.cli_after_resume_ms",
        digits: 0,
        get: |r| rs(r)?.mekha.as_ref()?.cli_after_resume_ms,
    },
];

fn sum(v: &[u32]) -> f64 {
    v.iter().map(|&x| f64::from(x)).sum()
}

pub const STOCK_DETAILS: [Detail; 8] = [
    Detail {
        label: "every `stop` answered (ms after the first was sent)",
        key: "checkpoint.stop_answered_ms",
        digits: 1,
        get: |r| ck(r)?.stock.as_ref()?.stop_answered_ms,
    },
    Detail {
        label: "every image written: MIGRATION completed (ms)",
        key: "checkpoint.written_ms",
        digits: 0,
        get: |r| ck(r)?.stock.as_ref()?.written_ms,
    },
    Detail {
        label: "every `cont` answered (ms)",
        key: "checkpoint.cont_answered_ms",
        digits: 0,
        get: |r| ck(r)?.stock.as_ref()?.cont_answered_ms,
    },
    Detail {
        label: "spread of the accepted `cont` answers (ms)",
        key: "checkpoint.cont_spread_ms",
        digits: 1,
        get: |r| ck(r)?.stock.as_ref()?.cont_spread_ms,
    },
    Detail {
        label: "`cont` refused as not finalized yet (times, all VMs)",
        key: "checkpoint.cont_refused",
        digits: 0,
        get: |r| Some(sum(&ck(r)?.stock.as_ref()?.cont_refused)),
    },
    Detail {
        label: "fsync of the images after `cont` (ms)",
        key: "checkpoint.fsync_ms",
        digits: 0,
        get: |r| ck(r)?.stock.as_ref()?.fsync_ms,
    },
    Detail {
        label: "restart: every migrate-incoming completed (ms)",
        key: "restart.loaded_ms",
        digits: 0,
        get: |r| rs(r)?.stock.as_ref()?.loaded_ms,
    },
    Detail {
        label: "restart: `cont` refused as not finalized yet (times)",
        key: "restart.cont_refused",
        digits: 0,
        get: |r| Some(sum(&rs(r)?.stock.as_ref()?.cont_refused)),
    },
];

/// Both methods: the skews from the host times at which the bench received
/// the events (QEMU's own timestamps are in the table).
pub const HOST_DETAILS: [Detail; 3] = [
    Detail {
        label: "suspend skew",
        key: "checkpoint.suspend_skew_host_ms",
        digits: 3,
        get: |r| ck(r)?.suspend_skew_host_ms,
    },
    Detail {
        label: "resume skew",
        key: "checkpoint.resume_skew_host_ms",
        digits: 3,
        get: |r| ck(r)?.resume_skew_host_ms,
    },
    Detail {
        label: "restart resume skew",
        key: "restart.resume_skew_host_ms",
        digits: 3,
        get: |r| rs(r)?.resume_skew_host_ms,
    },
];

/// The jobs after the restarts of one (N, method), added up.
#[derive(Debug, Default)]
pub struct JobTotals {
    pub runs: usize,
    pub clean: usize,
    pub lost: u64,
    pub dup: u64,
    pub reordered: u64,
    pub corrupt: u64,
    pub incomplete: u64,
    pub dirty_anomalies: u64,
    pub missing: usize,
    pub rebooted: usize,
    pub links: u64,
    pub expected_links: u64,
    pub net_anomalies: BTreeMap<String, u64>,
    /// None when no run's computation was checked.
    pub compute_checked: Option<u64>,
    pub compute_mismatches: Option<u64>,
}

/// The medians of one (N, method).
#[derive(Debug, Default)]
pub struct MethodSummary {
    pub runs: usize,
    pub errors: Vec<String>,
    pub boot_retries: Vec<String>,
    /// Per ROWS: the median and every run's value.
    pub rows: Vec<(Option<f64>, Vec<Option<f64>>)>,
    /// Per MEKHA_DETAILS or STOCK_DETAILS, by the method.
    pub details: Vec<Option<f64>>,
    /// Per HOST_DETAILS.
    pub host: Vec<Option<f64>>,
    pub job: JobTotals,
    /// mekha's capture modes.
    pub modes: Vec<String>,
    /// The delayed link, N >= 2.
    pub cut: Option<CutSummary>,
    /// Messages counted lost after the restarts, while a guest was below
    /// 90% of its steady rate and after, all runs.
    pub lost_while_slow: u64,
    pub lost_after: u64,
}

impl MethodSummary {
    fn of(method: Method, runs: &[&Run]) -> MethodSummary {
        let values = |get: Get| runs.iter().map(|r| get(r)).collect::<Vec<_>>();
        let mut m = MethodSummary {
            runs: runs.len(),
            errors: runs.iter().filter_map(|r| r.failure().map(str::to_owned)).collect(),
            boot_retries: runs.iter().filter_map(|r| r.boot_retry.clone()).collect(),
            rows: ROWS.iter().map(|row| values(row.get)).map(|v| (median(&v), v)).collect(),
            details: details(method).iter().map(|d| median(&values(d.get))).collect(),
            host: HOST_DETAILS.iter().map(|d| median(&values(d.get))).collect(),
            ..MethodSummary::default()
        };
        let jobs: Vec<_> = runs.iter().filter_map(|r| r.job.as_ref()).collect();
        let t = &mut m.job;
        t.runs = jobs.len();
        for j in &jobs {
            t.clean += usize::from(j.clean);
            t.lost += j.lost;
            t.dup += j.dup;
            t.reordered += j.reordered;
            t.corrupt += j.corrupt;
            t.incomplete += j.incomplete;
            t.dirty_anomalies += j.dirty_anomalies;
            t.missing += j.missing.len();
            t.rebooted += j.rebooted.len();
            t.links += j.links;
            t.expected_links += j.expected_links;
            for (k, v) in &j.net_anomalies {
                *t.net_anomalies.entry(k.clone()).or_default() += v;
            }
            if let Some(c) = &j.compute_check {
                *t.compute_checked.get_or_insert(0) += c.checked;
                *t.compute_mismatches.get_or_insert(0) += c.mismatches;
            }
        }
        let mut modes: Vec<String> = runs
            .iter()
            .filter_map(|r| r.checkpoint.as_ref()?.mekha.as_ref())
            .flat_map(|m| m.modes.iter().cloned())
            .collect();
        modes.sort();
        modes.dedup();
        m.modes = modes;
        m.cut = CutSummary::of(runs);
        for v in runs.iter().filter_map(|r| r.restart.as_ref()).flat_map(|r| &r.recovery) {
            m.lost_while_slow += v.lost_while_slow;
            m.lost_after += v.lost_after;
        }
        m
    }

    /// The median of the table's row `key`.
    pub fn row(&self, key: &str) -> Option<f64> {
        ROWS.iter().position(|r| r.key == key).and_then(|i| self.rows.get(i)?.0)
    }

    /// The median of the method's detail `key`.
    pub fn detail(&self, method: Method, key: &str) -> Option<f64> {
        details(method).iter().position(|d| d.key == key).and_then(|i| *self.details.get(i)?)
    }

    fn to_json(&self, method: Method) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("runs".into(), json!(self.runs));
        o.insert("errors".into(), json!(self.errors));
        o.insert("boot_retries".into(), json!(self.boot_retries));
        for (row, (median, all)) in ROWS.iter().zip(&self.rows) {
            o.insert(row.key.into(), json!(median));
            o.insert(format!("{}_all", row.key), json!(all));
        }
        for (d, v) in details(method).iter().zip(&self.details) {
            o.insert(format!("{}.{}", method.name(), d.key), json!(v));
        }
        for (d, v) in HOST_DETAILS.iter().zip(&self.host) {
            o.insert(format!("host.{}", d.key), json!(v));
        }
        let t = &self.job;
        o.insert(
            "job".into(),
            json!({"runs": t.runs, "clean": t.clean, "lost": t.lost, "dup": t.dup, "reordered": t.reordered,
                   "corrupt": t.corrupt, "incomplete": t.incomplete, "dirty_anomalies": t.dirty_anomalies,
                   "missing": t.missing, "rebooted": t.rebooted, "links": t.links,
                   "expected_links": t.expected_links, "net_anomalies": t.net_anomalies,
                   "compute_checked": t.compute_checked, "compute_mismatches": t.compute_mismatches}),
        );
        o.insert("modes".into(), json!(self.modes));
        if let Some(c) = &self.cut {
            o.insert(
                "net_cut".into(),
                json!({"vm": c.vm, "delay_ms": c.delay_ms, "rate_msgs_s": c.rate_msgs_s, "bdp_frames": c.bdp_frames,
                       "saved_frames": c.saved_frames, "saved_per_bdp": c.saved_per_bdp, "line_lost": c.line_lost}),
            );
        }
        o.insert("lost_while_slow".into(), json!(self.lost_while_slow));
        o.insert("lost_after".into(), json!(self.lost_after));
        Value::Object(o)
    }
}

fn details(method: Method) -> &'static [Detail] {
    match method {
        Method::Mekha | Method::MekhaMtd => &MEKHA_DETAILS,
        Method::Stock => &STOCK_DETAILS,
    }
}

/// Per N (in the order of `sizes`), the summary of each method measured.
pub type Summary = Vec<(usize, BTreeMap<Method, MethodSummary>)>;

pub fn summarize(data: &Results) -> Summary {
    data.sizes
        .iter()
        .map(|&n| {
            let per = Method::ALL
                .iter()
                .filter_map(|&method| {
                    let runs: Vec<&Run> = data.runs.iter().filter(|r| r.n == n && r.method == method).collect();
                    (!runs.is_empty()).then(|| (method, MethodSummary::of(method, &runs)))
                })
                .collect();
            (n, per)
        })
        .collect()
}

/// The summary as results.json keeps it: N, then method, then key.
pub fn summary_json(summary: &Summary) -> BTreeMap<String, BTreeMap<String, Value>> {
    summary
        .iter()
        .map(|(n, per)| (n.to_string(), per.iter().map(|(m, s)| (m.name().to_owned(), s.to_json(*m))).collect()))
        .collect()
}

fn job_cell(m: Option<&MethodSummary>) -> String {
    let Some(m) = m else { return "-".into() };
    let t = &m.job;
    if t.runs == 0 {
        return "not measured".into();
    }
    let verdict = if t.clean == t.runs { "clean" } else { "NOT clean" };
    let s = format!(
        "{verdict} {}/{}: lost {}, dup {}, reordered {}, corrupt {}",
        t.clean, t.runs, t.lost, t.dup, t.reordered, t.corrupt
    );
    let mut extra = Vec::new();
    if t.missing > 0 {
        extra.push(format!("{} stream(s) not done", t.missing));
    }
    if t.incomplete > 0 {
        extra.push(format!("{} done incomplete", t.incomplete));
    }
    if t.rebooted > 0 {
        extra.push(format!("{} rebooted", t.rebooted));
    }
    if !t.net_anomalies.is_empty() {
        let a: Vec<String> = t.net_anomalies.iter().map(|(k, v)| format!("{k} {v}")).collect();
        extra.push(format!("anomalies {}", a.join(", ")));
    }
    if t.dirty_anomalies > 0 {
        extra.push(format!("{} memory anomalies", t.dirty_anomalies));
    }
    if let Some(w) = t.compute_mismatches.filter(|&w| w > 0) {
        extra.push(format!("{w} wrong checksums"));
    }
    if extra.is_empty() {
        s
    } else {
        format!("{s} ({})", extra.join("; "))
    }
}

/// results.md: the tables per N, the targets, the notes.
pub fn tables(data: &Results, summary: &Summary) -> String {
    let w = &data.workload;
    let h = &data.host;
    let mut lines = vec![
        format!("# mekha cluster benchmark ({}median of {})", if data.quick { "--quick, " } else { "" }, data.reps),
        String::new(),
        format!(
            "Each VM: TCG, 1 vCPU, {} MiB; guest probe computing, dirtying {} MiB at {} MiB/s, and exchanging {} \
             sequenced TCP and UDP messages per peer and protocol ({} ms apart) with every other VM over a bridge in \
             a network namespace; checkpoint once every link received {} messages. Fresh VMs per method; the \
             images' page cache dropped before each restart. Host: {} CPUs, kernel {}, load average {} at the \
             start, {} at the end.",
            w.memory_mib,
            w.dirty_mib,
            w.dirty_rate_mib_s,
            w.msgs,
            w.msg_interval_ms,
            w.min_rx,
            h.cpus,
            h.kernel,
            h.loadavg_start.join(" "),
            h.loadavg_end.join(" ")
        ),
    ];
    for (n, per) in summary {
        let heads: Vec<&str> = COLUMNS.iter().map(|m| m.label()).collect();
        let ratios: Vec<String> = Method::MEKHA.iter().map(|m| format!("stock / {}", m.label())).collect();
        lines.extend([
            String::new(),
            format!("## N = {n} VM{}", if *n > 1 { "s" } else { "" }),
            String::new(),
            format!("| | {} | {} |", heads.join(" | "), ratios.join(" | ")),
            format!("|---|{}", "---:|".repeat(COLUMNS.len() + Method::MEKHA.len())),
        ]);
        for row in &ROWS {
            let value = |m: Method| per.get(&m).and_then(|s| s.row(row.key)).map(|v| v * row.scale);
            let b = value(Method::Stock);
            let cells: Vec<String> = COLUMNS.iter().map(|&m| fmt(value(m), row.digits, "")).collect();
            let ratios: Vec<String> = Method::MEKHA
                .iter()
                .map(|&m| {
                    let a = value(m);
                    // A ratio of a figure at or below zero (no skew, no
                    // work lost) says nothing.
                    let positive = |v: Option<f64>| v.is_some_and(|v| v > 0.0);
                    let r = if positive(a) && positive(b) { ratio(b, a) } else { None };
                    fmt(r, 1, "x")
                })
                .collect();
            lines.push(format!("| {} | {} | {} |", row.label, cells.join(" | "), ratios.join(" | ")));
        }
        let jobs: Vec<String> = COLUMNS.iter().map(|m| job_cell(per.get(m))).collect();
        lines.push(format!(
            "| job after the restart (probes' net_done, anomalies) | {} |{}",
            jobs.join(" | "),
            " |".repeat(Method::MEKHA.len())
        ));
        for method in COLUMNS {
            let Some(m) = per.get(&method) else { continue };
            if !m.errors.is_empty() {
                lines.push(String::new());
                lines.push(format!(
                    "{}: {} of {} run(s) failed: {}",
                    method.label(),
                    m.errors.len(),
                    m.runs,
                    m.errors.join(" | ")
                ));
            }
            if !m.boot_retries.is_empty() {
                lines.push(String::new());
                lines.push(format!(
                    "{}: the cluster was booted again in {} run(s), the first boot having failed: {}",
                    method.label(),
                    m.boot_retries.len(),
                    m.boot_retries.join(" | ")
                ));
            }
        }
        lines.extend(cut_lines(per));
        lines.extend(recovery_lines(per));
        for method in COLUMNS {
            let Some(m) = per.get(&method) else { continue };
            let figures: Vec<String> = details(method)
                .iter()
                .map(|d| format!("{} {}", d.label, fmt(m.detail(method, d.key), d.digits, "")))
                .collect();
            let head = match method {
                Method::Stock => "stock details".to_owned(),
                _ => {
                    let modes = if m.modes.is_empty() { "-".into() } else { m.modes.join(", ") };
                    format!("{}: mekha's own figures (capture mode {modes})", method.label())
                }
            };
            lines.push(String::new());
            lines.push(format!("{head}: {}.", figures.join("; ")));
        }
        lines.push(String::new());
        let host: Vec<String> = HOST_DETAILS
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let v: Vec<String> =
                    COLUMNS.iter().map(|m| fmt(per.get(m).and_then(|s| s.host[i]), d.digits, "")).collect();
                format!("{} {}", d.label, v.join(" / "))
            })
            .collect();
        let names: Vec<&str> = COLUMNS.iter().map(|m| m.name()).collect();
        lines.push(format!(
            "Skews from the host times at which this bench received the events (ms, {}): {}.",
            names.join(" / "),
            host.join("; ")
        ));
        if data.reps > 1 {
            let every: Vec<String> = ROWS
                .iter()
                .enumerate()
                .filter(|(_, row)| row.key.ends_with("_ms"))
                .map(|(i, row)| {
                    let per_method: Vec<String> = Method::ALL
                        .iter()
                        .filter_map(|m| per.get(m).map(|s| (m, s)))
                        .map(|(m, s)| {
                            let all: Vec<String> =
                                s.rows[i].1.iter().map(|v| fmt(v.map(|v| v * row.scale), row.digits, "")).collect();
                            format!("{} {}", m.name(), all.join("/"))
                        })
                        .collect();
                    format!("{} {}", row.label.split(':').next().unwrap_or(row.label), per_method.join(", "))
                })
                .collect();
            lines.push(String::new());
            lines.push(format!("Every repetition (ms): {}.", every.join("; ")));
        }
    }
    lines.extend([String::new(), "## Targets (docs/design.md), this run".into(), String::new()]);
    lines.extend(checks(summary));
    lines.push(String::new());
    lines.push(
        "Notes: every time is a QMP event timestamp of QEMU (the host's CLOCK_REALTIME) or a host time of this \
         bench on the same clock. mekha's checkpoint latency and restart time start when the `mekha` CLI is spawned \
         (its own latency_ms, from its first QMP command, is in its figures); stock's when the first QMP command is \
         sent on connections already open. A stock image is written through the page cache, so its latency \
         includes an fsync of every image after `cont` (mekha's images are durable when its manifest is \
         committed). stock / mekha > 1: mekha is that many times shorter. A suspend skew of one VM is 0 by \
         definition. The job check waits for every stream's net_done (those done before the checkpoint count from \
         the checkpointed guest's log) and compares the computation's checksums after the restart with a host run \
         of the probe; the computation never ends, so the probes never print `done`."
            .into(),
    );
    lines.join("\n") + "\n"
}

/// The delayed link of each mekha method: frames in flight (the
/// bandwidth-delay product) against the frames its image saved.
fn cut_lines(per: &BTreeMap<Method, MethodSummary>) -> Vec<String> {
    let mut parts = Vec::new();
    let mut head = None;
    for method in Method::MEKHA {
        let Some(c) = per.get(&method).and_then(|m| m.cut.as_ref()) else { continue };
        head.get_or_insert_with(|| {
            format!(
                "Network cut: a delay line of {} ms on the link toward {}, which received {} messages/s before the \
                 checkpoint: a bandwidth-delay product of {} frames",
                fmt(Some(c.delay_ms), 0, ""),
                c.vm,
                fmt(c.rate_msgs_s, 0, ""),
                fmt(c.bdp_frames, 1, "")
            )
        });
        let lost =
            if c.line_lost > 0 { format!(" (the delay line lost {} frames)", c.line_lost) } else { String::new() };
        parts.push(format!(
            "{} saved {} frames toward it = {} of the product{lost}",
            method.label(),
            fmt(c.saved_frames, 0, ""),
            fmt(c.saved_per_bdp, 2, "x")
        ));
    }
    match head {
        Some(head) => vec![
            String::new(),
            format!("{head}; {}; stock saves none (its images hold no frame in flight).", parts.join("; ")),
        ],
        None => Vec::new(),
    }
}

/// Each method's way back to the steady rates after the restart, and the
/// messages lost while the guests were slow and after.
fn recovery_lines(per: &BTreeMap<Method, MethodSummary>) -> Vec<String> {
    let parts: Vec<String> = COLUMNS
        .iter()
        .filter_map(|&method| {
            let m = per.get(&method)?;
            let back = m.row("restart.back_ms");
            let msgs = m.row("restart.msgs_back_ms");
            (back.is_some() || msgs.is_some() || m.lost_while_slow + m.lost_after > 0).then(|| {
                format!(
                    "{}: compute back after {} ms, receiving after {} ms; messages counted lost after the restart {} \
                     while a guest was slow, {} after",
                    method.label(),
                    fmt(back, 0, ""),
                    fmt(msgs, 0, ""),
                    m.lost_while_slow,
                    m.lost_after
                )
            })
        })
        .collect();
    if parts.is_empty() {
        return Vec::new();
    }
    vec![
        String::new(),
        format!(
            "After the restart (from each VM's RESUME until its rate holds 90% of what it was before the checkpoint; \
             the slowest VM): {}. A datagram lost while its receiver was slow is an overrun of the restarted guest, \
             stock's as much as mekha's; one lost with the guests at their steady rate, or by mekha and not by the \
             stock run, points at the checkpoint.",
            parts.join("; ")
        ),
    ]
}

/// One line of the targets: `[ok]`, `[MISS]`, or `[?]` when unmeasured.
fn check(out: &mut Vec<String>, ok: Option<bool>, text: String) {
    let mark = match ok {
        Some(true) => "ok",
        Some(false) => "MISS",
        None => "?",
    };
    out.push(format!("- [{mark}] {text}"));
}

/// The design's cluster targets, checked against this run's medians.
pub fn checks(summary: &Summary) -> Vec<String> {
    let mut out = Vec::new();
    for (n, per) in summary {
        let st = per.get(&Method::Stock);
        if let Some(cow) = per.get(&Method::Mekha) {
            let pause = cow.row("checkpoint.median_vm_pause_ms");
            check(
                &mut out,
                pause.map(|v| v <= COW_PAUSE_MS),
                format!(
                    "N={n}: {} per-VM pause {} ms <= {COW_PAUSE_MS} ms (its STOP to its RESUME, median; stock: {} ms)",
                    Method::Mekha.label(),
                    fmt(pause, 2, ""),
                    fmt(st.and_then(|s| s.row("checkpoint.median_vm_pause_ms")), 0, "")
                ),
            );
        }
        for method in Method::MEKHA {
            let Some(mk) = per.get(&method) else { continue };
            let name = method.label();
            if *n >= 2 {
                let own = mk.detail(method, "checkpoint.stop_spread_ms");
                let ev = mk.row("checkpoint.suspend_skew_ms");
                check(
                    &mut out,
                    own.map(|v| v <= SKEW_LIMIT_MS),
                    format!(
                        "N={n}: {name} suspend skew {} ms <= {SKEW_LIMIT_MS} ms (spread of the VMs' stopped-at-ns, \
                         median)",
                        fmt(own, 3, "")
                    ),
                );
                check(
                    &mut out,
                    ev.map(|v| v <= SKEW_LIMIT_MS),
                    format!(
                        "N={n}: {name} suspend skew {} ms <= {SKEW_LIMIT_MS} ms (spread of the STOP events, as for \
                         stock: {} ms)",
                        fmt(ev, 3, ""),
                        fmt(st.and_then(|s| s.row("checkpoint.suspend_skew_ms")), 3, "")
                    ),
                );
                let t = &mk.job;
                if t.runs > 0 {
                    check(
                        &mut out,
                        Some(t.lost + t.dup + t.reordered == 0 && t.missing == 0),
                        format!(
                            "N={n}: zero lost, duplicated or reordered messages across {name}'s checkpoint and \
                             restart (lost {}, dup {}, reordered {}, streams not done {}, over {} run(s))",
                            t.lost, t.dup, t.reordered, t.missing, t.runs
                        ),
                    );
                } else {
                    check(
                        &mut out,
                        None,
                        format!("N={n}: messages across {name}'s checkpoint and restart: not measured"),
                    );
                }
            }
            let t = &mk.job;
            if t.runs > 0 {
                let sums = match (t.compute_checked, t.compute_mismatches) {
                    (Some(c), w) => format!("checked {c}x, {} wrong", w.unwrap_or(0)),
                    (None, _) => "unchecked".into(),
                };
                check(
                    &mut out,
                    Some(t.clean == t.runs),
                    format!(
                        "N={n}: the job went on cleanly after every {name} restart ({}/{}: no reboot, no anomaly, \
                         computation checksums {sums})",
                        t.clean, t.runs
                    ),
                );
            }
            let (a, b) = (mk.row("restart.restart_ms"), st.and_then(|s| s.row("restart.restart_ms")));
            let r = ratio(a, b);
            check(
                &mut out,
                r.map(|r| r <= RESTART_RATIO),
                format!(
                    "N={n}: {name} restart time / stock = {} <= {RESTART_RATIO} ({} ms vs {} ms)",
                    fmt(r, 2, ""),
                    fmt(a, 0, ""),
                    fmt(b, 0, "")
                ),
            );
        }
        for method in COLUMNS {
            let Some(m) = per.get(&method) else { continue };
            check(
                &mut out,
                Some(m.errors.is_empty()),
                format!("N={n}: every {} run completed ({}/{})", method.name(), m.runs - m.errors.len(), m.runs),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cluster_data::*;
    use crate::bench::host::Host;

    fn run(n: usize, method: Method, pause_ms: f64, restart_ms: f64, stop_spread_ms: f64) -> Run {
        let mut r = Run::new(n, 0, method);
        let mut ck = Checkpoint {
            cluster_pause_ms: Some(pause_ms),
            median_vm_pause_ms: Some(pause_ms / 2.0),
            suspend_skew_ms: Some(0.5),
            latency_ms: Some(1234.4),
            written_bytes: Some(300 << 20),
            ..Checkpoint::default()
        };
        match method {
            Method::Mekha | Method::MekhaMtd => {
                ck.mekha = Some(MekhaCheckpoint {
                    stop_spread_ms: Some(stop_spread_ms),
                    modes: vec![method.mode().unwrap().into()],
                    ..MekhaCheckpoint::default()
                });
                ck.net_saved_frames = Some(12);
                ck.net_cut = Some(NetCut {
                    vm: "node2".into(),
                    delay_ms: 50.0,
                    rate_msgs_s: Some(200.0),
                    bdp_frames: Some(10.0),
                    saved_frames: Some(9),
                    saved_per_bdp: Some(0.9),
                    line_lost: 0,
                });
            }
            Method::Stock => {
                ck.stock = Some(StockCheckpoint { cont_refused: vec![1, 2, 0], ..StockCheckpoint::default() })
            }
        }
        r.checkpoint = Some(ck);
        r.restart = Some(Restart {
            restart_ms: Some(restart_ms),
            back_ms: Some(restart_ms / 2.0),
            recovery: vec![VmRecovery { lost_while_slow: 2, lost_after: 1, ..VmRecovery::default() }],
            ..Restart::default()
        });
        r.job = Some(Job {
            clean: true,
            links: 4,
            expected_links: 4,
            compute_check: Some(ComputeCheck { checked: 10, ..ComputeCheck::default() }),
            ..Job::default()
        });
        r
    }

    fn results(runs: Vec<Run>, reps: usize) -> Results {
        Results {
            quick: true,
            reps,
            sizes: vec![1, 3],
            nice: -10,
            elapsed_s: 60.0,
            workload: crate::bench::cluster::workload(),
            host: Host {
                cpus: 2,
                kernel: "6.1".into(),
                loadavg_start: vec!["1".into()],
                loadavg_end: vec!["2".into()],
            },
            runs,
            summary: BTreeMap::new(),
        }
    }

    #[test]
    fn medians_per_size_and_method() {
        let data = results(
            vec![
                run(3, Method::Mekha, 8.0, 500.0, 0.02),
                run(3, Method::Mekha, 10.0, 700.0, 0.04),
                run(3, Method::Mekha, 9.0, 600.0, 0.03),
                run(3, Method::Stock, 1000.0, 640.0, 0.0),
            ],
            3,
        );
        let summary = summarize(&data);
        assert_eq!(summary.len(), 2);
        assert!(summary[0].1.is_empty(), "no run of N=1");
        let mk = &summary[1].1[&Method::Mekha];
        assert_eq!(mk.runs, 3);
        assert_eq!(mk.row("checkpoint.cluster_pause_ms"), Some(9.0));
        assert_eq!(mk.detail(Method::Mekha, "checkpoint.stop_spread_ms"), Some(0.03));
        assert_eq!(mk.job.compute_checked, Some(30));
        assert_eq!(mk.modes, ["cow"]);
        // Stock's refusals add up over its VMs.
        let st = &summary[1].1[&Method::Stock];
        assert_eq!(st.detail(Method::Stock, "checkpoint.cont_refused"), Some(3.0));
        let json = summary_json(&summary);
        assert_eq!(json["3"]["mekha"]["checkpoint.cluster_pause_ms"], 9.0);
        assert_eq!(json["3"]["stock"]["stock.checkpoint.cont_refused"], 3.0);
    }

    #[test]
    fn targets_are_checked_against_the_medians() {
        let data = results(
            vec![
                run(1, Method::Mekha, 5.0, 250.0, 0.0),
                run(1, Method::Stock, 800.0, 150.0, 0.0),
                run(3, Method::Mekha, 8.0, 300.0, 0.02),
                run(3, Method::Stock, 1000.0, 640.0, 0.0),
            ],
            1,
        );
        let lines = checks(&summarize(&data));
        assert!(lines.contains(
            &"- [MISS] N=1: mekha copy-on-write restart time / stock = 1.67 <= 0.5 (250 ms vs 150 ms)".into()
        ));
        assert!(lines
            .contains(&"- [ok] N=3: mekha copy-on-write restart time / stock = 0.47 <= 0.5 (300 ms vs 640 ms)".into()));
        assert!(lines.contains(
            &"- [ok] N=3: mekha copy-on-write suspend skew 0.020 ms <= 1 ms (spread of the VMs' stopped-at-ns, median)"
                .into()
        ));
        assert!(lines.contains(
            &"- [MISS] N=3: mekha copy-on-write per-VM pause 4.00 ms <= 1 ms (its STOP to its RESUME, median; stock: \
              500 ms)"
                .into()
        ));
        // The skew of the STOP events is only checked from N = 2.
        assert!(!lines.iter().any(|l| l.contains("N=1: mekha copy-on-write suspend skew")));
        // No MTD run: nothing checked of it.
        assert!(!lines.iter().any(|l| l.contains("MTD")), "{lines:?}");
        assert!(lines.contains(&"- [ok] N=3: every stock run completed (1/1)".into()));
    }

    #[test]
    fn a_failed_run_misses_its_target_and_shows_in_the_table() {
        let mut failed = Run::new(3, 0, Method::Mekha);
        failed.error = Some("checkpoint: boom".into());
        let data = results(vec![failed, run(3, Method::Stock, 1000.0, 640.0, 0.0)], 1);
        let summary = summarize(&data);
        let lines = checks(&summary);
        assert!(lines.contains(&"- [MISS] N=3: every mekha run completed (0/1)".into()));
        assert!(lines.contains(
            &"- [?] N=3: mekha copy-on-write suspend skew - ms <= 1 ms (spread of the VMs' stopped-at-ns, median)"
                .into()
        ));
        assert!(lines
            .contains(&"- [?] N=3: messages across mekha copy-on-write's checkpoint and restart: not measured".into()));
        let text = tables(&data, &summary);
        assert!(text.contains("mekha copy-on-write: 1 of 1 run(s) failed: checkpoint: boom"), "{text}");
        assert!(text
            .contains("| job after the restart (probes' net_done, anomalies) | not measured | - | clean 1/1: lost 0"));
    }

    #[test]
    fn the_table_puts_stock_over_mekha() {
        let data = results(
            vec![
                run(3, Method::Mekha, 8.0, 500.0, 0.02),
                run(3, Method::MekhaMtd, 20.0, 520.0, 0.02),
                run(3, Method::Stock, 1099.1, 645.0, 0.0),
            ],
            1,
        );
        let text = tables(&data, &summarize(&data));
        assert!(text.starts_with("# mekha cluster benchmark (--quick, median of 1)\n"), "{text}");
        assert!(text.contains("\n## N = 3 VMs\n"));
        assert!(text.contains(
            "| | mekha copy-on-write | mekha MTD | stock QEMU (scripted QMP) | stock / mekha copy-on-write | stock / \
             mekha MTD |\n|---|---:|---:|---:|---:|---:|\n"
        ));
        assert!(
            text.contains("| cluster pause: first STOP to last RESUME (ms) | 8.0 | 20.0 | 1,099.1 | 137.4x | 55.0x |"),
            "{text}"
        );
        assert!(text.contains(
            "| per-VM pause, median over the VMs: its STOP to its RESUME (ms) | 4.00 | 10.00 | 549.55 | 137.4x | 55.0x |"
        ));
        assert!(text.contains("| bytes written (MiB) | 300.0 | 300.0 | 300.0 | 1.0x | 1.0x |"));
        assert!(
            text.contains("| restart time: first command to every VM running (ms) | 500 | 520 | 645 | 1.3x | 1.2x |")
        );
        assert!(text.contains("| frames toward the guests saved in the images, all VMs | 12 | 12 | - | - | - |"));
        assert!(text.contains(
            "Network cut: a delay line of 50 ms on the link toward node2, which received 200 messages/s before the \
             checkpoint: a bandwidth-delay product of 10.0 frames; mekha copy-on-write saved 9 frames toward it = \
             0.90x of the product; mekha MTD saved 9"
        ));
        assert!(text.contains(
            "stock QEMU (scripted QMP): compute back after 322 ms, receiving after - ms; messages counted lost after \
             the restart 2 while a guest was slow, 1 after."
        ));
        assert!(text.contains(
            "mekha copy-on-write: mekha's own figures (capture mode cow): stop spread, mekha's stopped-at-ns (ms) 0.020;"
        ));
        assert!(text.contains("mekha MTD: mekha's own figures (capture mode mtd):"));
        assert!(text.contains("stock details: every `stop` answered (ms after the first was sent) -;"));
        assert!(!text.contains("Every repetition"), "one repetition: no list");
    }

    #[test]
    fn results_read_back_as_written() {
        let data =
            results(vec![run(3, Method::Mekha, 8.0, 500.0, 0.02), run(3, Method::MekhaMtd, 9.0, 500.0, 0.02)], 1);
        let text = serde_json::to_string(&data).unwrap();
        let back: Results = serde_json::from_str(&text).unwrap();
        assert_eq!(back.runs[0].method, Method::Mekha);
        assert_eq!(back.runs[1].method, Method::MekhaMtd);
        assert_eq!(back.runs[0].checkpoint.as_ref().unwrap().cluster_pause_ms, Some(8.0));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["runs"][0]["method"], "mekha");
        assert_eq!(v["runs"][1]["method"], "mekha-mtd");
    }
}
