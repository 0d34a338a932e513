// SPDX-License-Identifier: GPL-2.0-or-later
//! The checkpoint bench's report: medians per (size, method) and per
//! (size, restore), the tables of results.md and the design's targets
//! (docs/design.md, "Targets"). Pure functions of [`Results`].

use std::collections::BTreeMap;

use serde::Serialize;

use super::checkpoint_data::{ClockGap, Clocks, Method, RestoreKind, Results, Run};
use super::stats::{fmt, median, ratio};

/// The medians of one method at one size; `_all` keeps every repetition.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MethodSummary {
    pub n: usize,
    pub ended: usize,
    pub pause_ms: Option<f64>,
    pub pause_ms_all: Vec<Option<f64>>,
    pub total_ms: Option<f64>,
    pub image_mib: Option<f64>,
    pub image_alloc_mib: Option<f64>,
    pub write_mbps: Option<f64>,
    pub fsync_ms: Option<f64>,
    pub downtime_ms: Option<f64>,
    /// The median RAM sent by the live migrations cancelled at the cap.
    pub cancelled_sent_mib: Option<f64>,
    pub lost_ms: Option<f64>,
    pub lost_ms_all: Vec<Option<f64>>,
    pub control_ms: Option<f64>,
    pub control_ms_all: Vec<Option<f64>>,
    pub stall_ms: Option<f64>,
    pub event_interval_ms: Option<f64>,
    pub staging_peak_mib: Option<f64>,
    pub staging_budget_mib: Option<f64>,
    pub live_ms: Option<f64>,
    pub persist_ms: Option<f64>,
    pub persist_staged_mbps: Option<f64>,
    pub written_bytes: Option<f64>,
    pub written_during_live_bytes: Option<f64>,
    pub staged_at_persist_bytes: Option<f64>,
    pub direct_io: Vec<bool>,
    /// (steady, window) medians of the vCPU, its wait and the others.
    pub cpu_vcpu: (Option<f64>, Option<f64>),
    pub cpu_vcpu_wait: (Option<f64>, Option<f64>),
    pub cpu_other: (Option<f64>, Option<f64>),
    /// The 1-minute load average before each repetition.
    pub loadavg: Vec<String>,
    pub wp_faults: Option<f64>,
    pub capture_ms: Option<f64>,
    pub final_pages: Option<f64>,
    pub end_reason: Vec<String>,
    pub epochs: Option<f64>,
    pub device_state_bytes: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreSummary {
    pub n: usize,
    pub ok: usize,
    pub running_ms: Option<f64>,
    pub first_progress_ms: Option<f64>,
    pub rss_mib: Option<f64>,
    pub rss_1s_mib: Option<f64>,
    pub image_mib: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SizeSummary {
    pub methods: BTreeMap<Method, MethodSummary>,
    pub restores: BTreeMap<RestoreKind, RestoreSummary>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub dd_mbps: Option<f64>,
    pub dd_all_mbps: Vec<f64>,
    pub sizes: BTreeMap<u32, SizeSummary>,
}

fn med<T>(items: &[&T], f: impl Fn(&T) -> Option<f64>) -> Option<f64> {
    median(&items.iter().map(|x| f(x)).collect::<Vec<_>>())
}

fn summarize_method(method: Method, rs: &[&Run]) -> MethodSummary {
    // What only a save that ended has, over those only.
    let ended: Vec<&Run> = rs.iter().copied().filter(|r| r.ended).collect();
    let u = |v: Option<u64>| v.map(|b| b as f64);
    let mut m = MethodSummary {
        n: rs.len(),
        ended: ended.len(),
        pause_ms: med(&ended, |r| r.pause_ms),
        pause_ms_all: rs.iter().map(|r| r.pause_ms).collect(),
        total_ms: med(&ended, |r| r.total_ms),
        image_mib: med(&ended, |r| r.image_mib),
        image_alloc_mib: med(&ended, |r| r.image_alloc_mib),
        write_mbps: med(&ended, |r| r.write_mbps),
        fsync_ms: med(&ended, |r| r.fsync_ms),
        downtime_ms: med(&ended, |r| r.downtime_ms),
        cancelled_sent_mib: med(&rs.iter().copied().filter(|r| !r.ended).collect::<Vec<_>>(), |r| {
            mib(u(r.transferred_bytes))
        }),
        lost_ms: med(rs, |r| Some(r.lost_ms)),
        lost_ms_all: rs.iter().map(|r| Some(r.lost_ms)).collect(),
        control_ms: med(rs, |r| Some(r.control_ms)),
        control_ms_all: rs.iter().map(|r| Some(r.control_ms)).collect(),
        stall_ms: med(rs, |r| r.stall_ms),
        event_interval_ms: med(rs, |r| r.event_interval_ms),
        staging_peak_mib: med(rs, |r| r.staging_peak_mib),
        staging_budget_mib: med(rs, |r| r.staging_budget_mib),
        live_ms: med(rs, |r| r.live_ms),
        persist_ms: med(rs, |r| r.persist_ms),
        persist_staged_mbps: med(rs, |r| r.persist_staged_mbps),
        written_bytes: med(rs, |r| u(r.written_bytes)),
        written_during_live_bytes: med(rs, |r| u(r.written_during_live_bytes)),
        staged_at_persist_bytes: med(rs, |r| u(r.staged_at_persist_bytes)),
        direct_io: rs.iter().map(|r| r.direct_io).collect(),
        cpu_vcpu: (med(rs, |r| Some(r.cpu_steady.vcpu)), med(rs, |r| Some(r.cpu_window.vcpu))),
        cpu_vcpu_wait: (med(rs, |r| r.cpu_steady.vcpu_wait), med(rs, |r| r.cpu_window.vcpu_wait)),
        cpu_other: (med(rs, |r| Some(r.cpu_steady.other)), med(rs, |r| Some(r.cpu_window.other))),
        loadavg: rs.iter().map(|r| r.loadavg_before.first().cloned().unwrap_or_else(|| "None".into())).collect(),
        ..MethodSummary::default()
    };
    if method == Method::MekhaCow {
        m.wp_faults = med(rs, |r| u(r.wp_faults));
        m.capture_ms = med(rs, |r| r.capture_ms);
    }
    if method == Method::Mekha {
        let infos: Vec<_> = rs.iter().filter_map(|r| r.info.as_ref()).collect();
        m.final_pages = med(&infos, |i| Some(i.final_pages as f64));
        m.epochs = med(&infos, |i| Some(i.epochs as f64));
        m.device_state_bytes = med(&infos, |i| Some(i.device_state_bytes as f64));
        let mut reasons: Vec<String> =
            infos.iter().map(|i| i.end_reason.clone().unwrap_or_else(|| "None".into())).collect();
        reasons.sort();
        reasons.dedup();
        m.end_reason = reasons;
    }
    m
}

/// Medians per (size, method) and per (size, restore).
pub fn summarize(data: &Results) -> Summary {
    let dd_all: Vec<f64> = data.dd.iter().map(|d| d.mbps).collect();
    let mut out = Summary {
        dd_mbps: median(&dd_all.iter().copied().map(Some).collect::<Vec<_>>()),
        dd_all_mbps: dd_all,
        sizes: BTreeMap::new(),
    };
    let mut sizes: Vec<u32> = data.results.iter().map(|r| r.size_mib).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for size in sizes {
        let mut s = SizeSummary::default();
        for method in Method::ALL {
            let rs: Vec<&Run> =
                data.results.iter().filter(|r| r.size_mib == size && r.method == Some(method)).collect();
            if !rs.is_empty() {
                s.methods.insert(method, summarize_method(method, &rs));
            }
        }
        for kind in RestoreKind::ALL {
            let rs: Vec<_> = data.restores.iter().filter(|r| r.size_mib == size && r.restore == kind).collect();
            if rs.is_empty() {
                continue;
            }
            let summary = RestoreSummary {
                n: rs.len(),
                ok: rs.iter().filter(|r| r.ok).count(),
                running_ms: med(&rs, |r| Some(r.running_ms)),
                first_progress_ms: med(&rs, |r| Some(r.first_progress_ms)),
                rss_mib: med(&rs, |r| r.rss_mib),
                rss_1s_mib: med(&rs, |r| r.rss_1s_mib),
                image_mib: med(&rs, |r| Some(r.image_mib)),
            };
            s.restores.insert(kind, summary);
        }
        out.sizes.insert(size, s);
    }
    out
}

fn f(v: Option<f64>, digits: usize) -> String {
    fmt(v, digits, "")
}

fn list(values: &[Option<f64>], digits: usize) -> String {
    values.iter().map(|v| f(*v, digits)).collect::<Vec<_>>().join(", ")
}

fn pct(share: Option<f64>) -> Option<f64> {
    share.map(|s| s * 100.0)
}

fn mib(bytes: Option<f64>) -> Option<f64> {
    bytes.map(|b| b / (1u64 << 20) as f64)
}

/// The main table's row of one method.
fn method_row(data: &Results, dd: Option<f64>, method: Method, m: &MethodSummary) -> String {
    let mut label = method.label().to_owned();
    if method == Method::LiveMigrate {
        label += &format!(" (cap {:.0} s)", data.live_cap_s);
    }
    let mut image = f(m.image_mib, 0);
    if let (Some(alloc), Some(size)) = (m.image_alloc_mib, m.image_mib) {
        if alloc < 0.9 * size {
            image += &format!(" ({} allocated)", f(Some(alloc), 0));
        }
    }
    let write = match m.write_mbps {
        None => "-".to_owned(),
        Some(w) => {
            let share = dd.and_then(|dd| ratio(Some(w), Some(dd))).map(|r| r * 100.0);
            let buffered = if method.is_mekha() { "" } else { " buffered" };
            format!("{} ({}%){buffered}", f(Some(w), 0), f(share, 0))
        }
    };
    let yes = m.direct_io.iter().filter(|&&d| d).count();
    let dio = match yes {
        y if y == m.direct_io.len() => "yes".to_owned(),
        0 => "no".to_owned(),
        y => format!("{y}/{}", m.direct_io.len()),
    };
    let staging = match m.staging_peak_mib {
        Some(_) => format!("{} / {}", f(m.staging_peak_mib, 0), f(m.staging_budget_mib, 0)),
        None => "-".into(),
    };
    let mut ended = format!("{}/{}", m.ended, m.n);
    if m.ended < m.n {
        ended += &format!(
            "; {} did not end in {:.0} s, cancelled after {} MiB sent",
            m.n - m.ended,
            data.live_cap_s,
            f(m.cancelled_sent_mib, 0)
        );
    }
    let mut pause = if m.pause_ms.is_some() { f(m.pause_ms, 1) } else { "n/a".into() };
    if let (Some(d), Method::LiveMigrate) = (m.downtime_ms, method) {
        pause += &format!(" (QEMU downtime {})", f(Some(d), 0));
    }
    format!(
        "| {label} | {pause} | {} | {} | {} | {staging} | {image} | {write} | {} | {dio} | {ended} |",
        f(m.total_ms, 0),
        f(m.lost_ms, 0),
        f(m.stall_ms, 0),
        f(m.fsync_ms, 0)
    )
}

/// The ratios and details under a size's table.
fn ratios(
    size: u32,
    dd: Option<f64>,
    ms: &BTreeMap<Method, MethodSummary>,
    rs: &BTreeMap<RestoreKind, RestoreSummary>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mk = ms.get(&Method::Mekha);
    let positive = |v: Option<f64>| v.filter(|&x| x > 0.0);
    for method in [Method::StopMigrate, Method::BgSnapshot, Method::SnapshotSave, Method::LiveMigrate] {
        let Some(m) = ms.get(&method) else { continue };
        let pr = ratio(m.pause_ms, mk.and_then(|k| k.pause_ms));
        let lr = positive(mk.and_then(|k| k.lost_ms)).and_then(|l| ratio(m.lost_ms, Some(l)));
        let tr = ratio(m.total_ms, mk.and_then(|k| k.total_ms));
        out.push(format!(
            "- {} / mekha: pause {}x, lost work {}x, total {}x",
            method.label(),
            f(pr, 1),
            f(lr, 1),
            f(tr, 2)
        ));
    }
    let cow = ms.get(&Method::MekhaCow);
    if let Some(cow) = cow {
        for method in [Method::BgSnapshot, Method::StopMigrate] {
            let Some(m) = ms.get(&method) else { continue };
            let lr = positive(cow.lost_ms).and_then(|l| ratio(m.lost_ms, Some(l)));
            out.push(format!(
                "- {} / mekha copy-on-write: pause {}x, lost work {}x",
                method.label(),
                f(ratio(m.pause_ms, cow.pause_ms), 1),
                f(lr, 1)
            ));
        }
        if let Some(sealed) = ms.get(&Method::MekhaSealed) {
            out.push(format!(
                "- cost of the key: {} / mekha copy-on-write: pause {}x, total {}x, lost work {} ms vs {} ms",
                Method::MekhaSealed.label(),
                f(ratio(sealed.pause_ms, cow.pause_ms), 2),
                f(ratio(sealed.total_ms, cow.total_ms), 2),
                f(sealed.lost_ms, 0),
                f(cow.lost_ms, 0)
            ));
        }
    }
    if let (Some(keyed), Some(bulk)) = (rs.get(&RestoreKind::MekhaKeyed), rs.get(&RestoreKind::MekhaBulk)) {
        out.push(format!(
            "- cost of the key at restore: {} / {}: to running {}x",
            RestoreKind::MekhaKeyed.label(),
            RestoreKind::MekhaBulk.label(),
            f(ratio(keyed.running_ms, bulk.running_ms), 2)
        ));
    }
    if let Some(cow) = cow {
        out.push(format!(
            "- mekha copy-on-write details: pause all reps {} ms; {} guest writes waited for a copy; every page \
             copied {} ms after the restart; lost all reps: {} ms",
            list(&cow.pause_ms_all, 2),
            f(cow.wp_faults, 0),
            f(cow.capture_ms, 0),
            list(&cow.lost_ms_all, 0)
        ));
    }
    if let (Some(mk), Some(cow)) = (mk, cow) {
        let key = |m: &MethodSummary| m.lost_ms.unwrap_or(1e9);
        let (best, b) = if key(cow) < key(mk) { ("cow", cow) } else { ("mtd", mk) };
        out.push(format!(
            "- least guest work lost at {size} MiB: {best} ({} ms; mtd {}, cow {}); pause mtd {} ms, cow {} ms",
            f(b.lost_ms, 0),
            f(mk.lost_ms, 0),
            f(cow.lost_ms, 0),
            f(mk.pause_ms, 1),
            f(cow.pause_ms, 2)
        ));
    }
    if let Some(mk) = mk {
        let share = dd.filter(|_| mk.write_mbps.is_some()).and_then(|dd| ratio(mk.write_mbps, Some(dd)));
        out.push(format!("- mekha write throughput: {}% of dd oflag=direct (target >= 80%)", f(pct(share), 0)));
        out.push(format!(
            "- mekha details: live phase {} ms (end: {}, {} epochs), final copy {} pages ({} MiB), device state {} \
             KiB, persist {} ms, in which {} MiB staged were checksummed and written or skipped as zero pages ({} \
             MB/s of staged data; {} MiB written in all, {} MiB of it before the pause); pause all reps: {} ms; lost \
             all reps: {} ms",
            f(mk.live_ms, 0),
            mk.end_reason.join(", "),
            f(mk.epochs, 0),
            f(mk.final_pages, 0),
            f(mk.final_pages.map(|p| p * 4096.0 / (1u64 << 20) as f64), 1),
            f(mk.device_state_bytes.filter(|&b| b > 0.0).map(|b| b / 1024.0), 0),
            f(mk.persist_ms, 0),
            f(mib(mk.staged_at_persist_bytes.filter(|&b| b > 0.0)), 0),
            f(mk.persist_staged_mbps, 0),
            f(mib(mk.written_bytes.filter(|&b| b > 0.0)), 0),
            f(mib(mk.written_during_live_bytes), 0),
            list(&mk.pause_ms_all, 1),
            list(&mk.lost_ms_all, 0)
        ));
    }
    out
}

/// results.md: the tables, the targets and the notes.
pub fn tables(data: &Results, summary: &Summary) -> String {
    let mut lines: Vec<String> = Vec::new();
    let dd = summary.dd_mbps;
    let w = &data.workload;
    lines.push(format!(
        "# mekha checkpoint benchmark ({}median of {})",
        if data.quick { "--quick, " } else { "" },
        data.reps
    ));
    lines.push(String::new());
    lines.push(format!(
        "Workload: guest probe rewriting a {} MiB hot set with no rate limit, plus a compute loop; TCG, 1 vCPU; \
         host {} CPUs, kernel {}. Lost work: window from the command to {:.0} s after completion, against the \
         steady rate of the {:.0} s before. dd oflag=direct (512 MiB, conv=fsync): {} MB/s (all: {}).",
        w.hot_mib,
        data.host.cpus,
        data.host.kernel,
        w.tail_s,
        w.steady_s,
        f(dd, 0),
        summary.dd_all_mbps.iter().map(|x| f(Some(*x), 0)).collect::<Vec<_>>().join(", ")
    ));
    for (&size, s) in &summary.sizes {
        let ms = &s.methods;
        lines.extend([String::new(), format!("## {size} MiB VM"), String::new()]);
        lines.push(
            "| method | pause ms | total ms | lost work ms | longest stall ms | staging peak MiB | image MiB | write \
             MB/s (% dd) | +fsync ms | O_DIRECT | ended |"
                .into(),
        );
        lines.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|".into());
        for (&method, m) in ms {
            lines.push(method_row(data, dd, method, m));
        }
        let controls: Vec<Option<f64>> = ms.values().map(|m| m.control_ms).collect();
        let all: Vec<f64> = ms.values().flat_map(|m| m.control_ms_all.iter().flatten().copied()).collect();
        let intervals: Vec<Option<f64>> = ms.values().map(|m| m.event_interval_ms).collect();
        lines.push(format!(
            "| no checkpoint (noise floor: {:.0} s window, every VM) | - | - | {} (range {} .. {}) | {} (event \
             interval) | - | - | - | - | - | - |",
            w.steady_s,
            f(median(&controls), 0),
            f(all.iter().copied().reduce(f64::min), 0),
            f(all.iter().copied().reduce(f64::max), 0),
            f(median(&intervals), 0)
        ));
        lines.push(String::new());
        lines.push("Ratios (same run, medians):".into());
        lines.extend(ratios(size, dd, ms, &s.restores));
        lines.push(String::new());
        lines.push(format!(
            "Host CPU of the VM's QEMU, % of one CPU (steady state -> lost-work window; the vCPU thread from \
             schedstat), and the 1-min load average before each run (host of {} CPUs, load of other users \
             included):",
            data.host.cpus
        ));
        lines.push(String::new());
        lines.push(
            "| method | vCPU thread on a CPU | vCPU thread waiting for a CPU | other QEMU threads (mekha worker, I/O, \
             migration, main loop) | load avg |"
                .into(),
        );
        lines.push("|---|---:|---:|---:|---|".into());
        let arrow = |(a, b): (Option<f64>, Option<f64>)| format!("{} -> {}", f(pct(a), 0), f(pct(b), 0));
        for (&method, m) in ms {
            lines.push(format!(
                "| {} | {} | {} | {} | {} |",
                method.label(),
                arrow(m.cpu_vcpu),
                arrow(m.cpu_vcpu_wait),
                arrow(m.cpu_other),
                m.loadavg.join(", ")
            ));
        }
        if !s.restores.is_empty() {
            lines.extend([String::new(), format!("### Restore, {size} MiB (image page cache dropped before each)")]);
            lines.push(String::new());
            lines.push(
                "| restore | to running ms | to first guest progress ms | RSS after MiB | RSS +1 s MiB | image MiB | \
                 / stock | guest ok |"
                    .into(),
            );
            lines.push("|---|---:|---:|---:|---:|---:|---:|---|".into());
            let stock = s.restores.get(&RestoreKind::StockIncoming).and_then(|r| r.running_ms);
            for (&kind, r) in &s.restores {
                lines.push(format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {}/{} |",
                    kind.label(),
                    f(r.running_ms, 0),
                    f(r.first_progress_ms, 0),
                    f(r.rss_mib, 0),
                    f(r.rss_1s_mib, 0),
                    f(r.image_mib, 0),
                    f(ratio(r.running_ms, stock), 2),
                    r.ok,
                    r.n
                ));
            }
        }
    }
    if let Some(clocks) = &data.clocks {
        lines.extend(clock_table(clocks));
    }
    lines.extend([String::new(), "## Targets (docs/design.md), this run".into(), String::new()]);
    lines.extend(checks(summary, data.clocks.as_ref()));
    lines.push(String::new());
    if let Some(p) = data.results.iter().find_map(|r| r.migrate_parameters.as_ref()) {
        lines.push(format!(
            "Stock migration parameters (defaults, unchanged): max-bandwidth {} MiB/s, downtime-limit {} ms.",
            f(mib(p.max_bandwidth.map(|b| b as f64)), 0),
            p.downtime_limit.map_or("None".into(), |d| d.to_string())
        ));
        lines.push(String::new());
    }
    if !data.errors.is_empty() {
        lines.push("Failed (left out of the tables):".into());
        lines.extend(data.errors.iter().map(|e| format!("- {e}")));
        lines.push(String::new());
    }
    lines.push(
        "Longest stall: the longest time without a `compute` event in the lost-work window (events normally come \
         every 'event interval' ms): the guest's computation made no visible progress for that long, whatever the \
         pause says."
            .into(),
    );
    lines.push(String::new());
    lines.push(
        "Notes: pause of stop+migrate = host time from sending `stop` to the answer to `cont`; of a live migration \
         that ended, from its STOP to the RESUME of the `cont` sent at once after it (QEMU refuses `cont` until the \
         migration is finalized; medians over the runs that ended); background-snapshot's pause = query-migrate \
         `downtime`; snapshot-save's = STOP to RESUME events. Stock images are written through the page cache: \
         their write MB/s is not disk bandwidth, and '+fsync ms' is what an fsync of the finished image took \
         afterwards (mekha's image is durable at completion). Restores read the image from disk (page cache \
         dropped); the stock image of a stopped VM restores paused, so its 'to running' includes the `cont` that \
         resumes it. Lost work is measured in host time on a TCG guest sharing the host's CPUs with QEMU's own \
         threads and any other host load: compare it with the noise floor. A VM's progress line interpolates \
         between compute events (about 30 a second), so a stopped guest shows a small residual rate instead of 0."
            .into(),
    );
    lines.join("\n") + "\n"
}

/// mekha: every clock advances at most this across the gap, ms.
const CLOCK_LIMIT_MS: f64 = 100.0;
/// mekha: the RTC within this of CLOCK_REALTIME after the restore, s.
const RTC_LIMIT_S: f64 = 1.0;

/// A row of the clock table: its label, its figure, its decimals.
type ClockRow = (&'static str, fn(&ClockGap) -> Option<f64>, usize);

const CLOCK_ROWS: [ClockRow; 7] = [
    ("CLOCK_MONOTONIC: advance beyond one sampling interval (ms)", |c| c.advance.as_ref().map(|a| a.mono_ms), 1),
    ("CLOCK_REALTIME: advance beyond one sampling interval (ms)", |c| c.advance.as_ref().map(|a| a.real_ms), 1),
    ("TSC: advance beyond one sampling interval (ms)", |c| c.advance.as_ref().and_then(|a| a.tsc_ms), 1),
    ("RTC - CLOCK_REALTIME after restore (s)", |c| c.advance.as_ref().and_then(|a| a.rtc_minus_real_s), 2),
    (
        "RTC - CLOCK_REALTIME before the checkpoint (s)",
        |c| c.advance.as_ref().and_then(|a| a.rtc_minus_real_before_s),
        2,
    ),
    ("RTC - CLOCK_REALTIME: change across the restore (s)", |c| c.advance.as_ref().and_then(|a| a.rtc_change_s), 2),
    ("host time from the checkpoint to the restored VM running (s)", |c| c.host_gap_s, 1),
];

/// The guest clocks across a restore gap: one column per method.
fn clock_table(clocks: &Clocks) -> Vec<String> {
    let gap = f(Some(clocks.gap_s), 0);
    let mut lines = vec![String::new(), format!("## Guest clocks across a {gap} s restore gap"), String::new()];
    let cols: Vec<(&ClockGap, &str)> = [("mekha", "mekha (continue)"), ("stock", "stock QEMU")]
        .into_iter()
        .filter_map(|(k, label)| clocks.methods.get(k).map(|c| (c, label)))
        .collect();
    lines.push(format!("| clock | {} |", cols.iter().map(|(_, l)| *l).collect::<Vec<_>>().join(" | ")));
    lines.push(format!("|---|{}", "---:|".repeat(cols.len())));
    for (label, value, digits) in CLOCK_ROWS {
        let cells: Vec<String> =
            cols.iter().map(|(c, _)| if c.error.is_some() { "failed".into() } else { f(value(c), digits) }).collect();
        lines.push(format!("| {label} | {} |", cells.join(" | ")));
    }
    lines.push(String::new());
    let failed: Vec<String> =
        cols.iter().filter_map(|(c, label)| c.error.as_ref().map(|e| format!("- {label} failed: {e}"))).collect();
    if !failed.is_empty() {
        lines.extend(failed);
        lines.push(String::new());
    }
    lines.push(format!(
        "{} MiB VM, the same workload, the probe sampling its clocks every {} ms of CLOCK_MONOTONIC; a checkpoint \
         (mekha's, or stock stop + migrate file:), QEMU killed, {gap} s without QEMU, then a restore into a fresh \
         QEMU (mekha's with time continue, or stock migrate-incoming file: + cont). Advance = first sample of the \
         restored guest - last sample the checkpointed guest had taken - one sampling interval: 0 when the clock \
         went on as if no time had passed, about the gap when it jumped (TSC in ms at the rate measured before the \
         checkpoint). RTC - CLOCK_REALTIME is already off by up to 2 s after boot, by chance (the RTC has whole \
         seconds, and QEMU's RTC seconds tick at the sub-second phase of QEMU's start): its change across the \
         restore is 0 when the RTC went on with the system clock (up to 1 s either way from the whole seconds), \
         about the gap when the RTC jumped to the host's time and the system clock did not.",
        clocks.size_mib, clocks.interval_ms
    ));
    lines
}

/// The design's targets, each `- [ok]`, `- [MISS]` or `- [?]` (no figure).
pub fn checks(summary: &Summary, clocks: Option<&Clocks>) -> Vec<String> {
    let mut out = Vec::new();
    let dd = summary.dd_mbps;
    let mut check = |ok: Option<bool>, text: String| {
        let mark = match ok {
            Some(true) => "ok",
            Some(false) => "MISS",
            None => "?",
        };
        out.push(format!("- [{mark}] {text}"));
    };
    let at_most = |v: Option<f64>, limit: f64| Some(v.is_some_and(|v| v <= limit));
    let share = |w: Option<f64>| ratio(w, dd);
    let mut cow_pauses = Vec::new();
    for (&size, s) in &summary.sizes {
        let (ms, rs) = (&s.methods, &s.restores);
        if let Some(cow) = ms.get(&Method::MekhaCow) {
            cow_pauses.push((size, cow.pause_ms));
            check(
                at_most(cow.pause_ms, 2.0),
                format!("{size} MiB: mekha copy-on-write pause {} ms <= 2 ms", f(cow.pause_ms, 2)),
            );
            check(
                at_most(cow.lost_ms, 30.0),
                format!("{size} MiB: mekha copy-on-write lost work {} ms <= 30 ms", f(cow.lost_ms, 0)),
            );
            check(
                Some(cow.staging_peak_mib.zip(cow.staging_budget_mib).is_some_and(|(p, b)| p <= b)),
                format!(
                    "{size} MiB: copy-on-write staging peak {} MiB <= budget {} MiB",
                    f(cow.staging_peak_mib, 0),
                    f(cow.staging_budget_mib, 0)
                ),
            );
            let w = share(cow.write_mbps);
            check(
                Some(w.is_some_and(|w| w >= 0.8)),
                format!(
                    "{size} MiB: copy-on-write write {} MB/s = {}% of dd >= 80%",
                    f(cow.write_mbps, 0),
                    f(pct(w), 0)
                ),
            );
            check(
                Some(cow.ended == cow.n),
                format!("{size} MiB: every copy-on-write checkpoint completed ({}/{})", cow.ended, cow.n),
            );
        }
        let Some(mk) = ms.get(&Method::Mekha) else { continue };
        check(at_most(mk.pause_ms, 30.0), format!("{size} MiB: mekha pause {} ms <= 30 ms", f(mk.pause_ms, 1)));
        if let Some(sm) = ms.get(&Method::StopMigrate) {
            let r = ratio(sm.pause_ms, mk.pause_ms);
            check(
                Some(r.is_some_and(|r| r >= 40.0)),
                format!("{size} MiB: stop+migrate pause / mekha pause = {}x >= 40x", f(r, 1)),
            );
        }
        check(at_most(mk.lost_ms, 30.0), format!("{size} MiB: mekha lost work {} ms <= 30 ms", f(mk.lost_ms, 0)));
        check(
            Some(mk.staging_peak_mib.zip(mk.staging_budget_mib).is_some_and(|(p, b)| p <= b)),
            format!(
                "{size} MiB: staging peak {} MiB <= budget {} MiB",
                f(mk.staging_peak_mib, 0),
                f(mk.staging_budget_mib, 0)
            ),
        );
        let w = share(mk.write_mbps);
        check(
            Some(w.is_some_and(|w| w >= 0.8)),
            format!("{size} MiB: mekha write {} MB/s = {}% of dd >= 80%", f(mk.write_mbps, 0), f(pct(w), 0)),
        );
        let dio: Vec<&str> = mk.direct_io.iter().map(|&d| if d { "True" } else { "False" }).collect();
        check(
            Some(mk.direct_io.iter().all(|&d| d)),
            format!("{size} MiB: mekha image written with O_DIRECT ([{}])", dio.join(", ")),
        );
        check(Some(mk.ended == mk.n), format!("{size} MiB: every mekha checkpoint completed ({}/{})", mk.ended, mk.n));
        let stock = rs.get(&RestoreKind::StockIncoming).and_then(|r| r.running_ms);
        for kind in [RestoreKind::MekhaLazy, RestoreKind::MekhaBulk] {
            if let Some(r) = rs.get(&kind) {
                let q = ratio(r.running_ms, stock);
                check(
                    Some(q.is_some_and(|q| q <= 0.5)),
                    format!("{size} MiB: {} to running / stock = {} <= 0.5", kind.label(), f(q, 2)),
                );
            }
        }
    }
    if cow_pauses.len() > 1 {
        if let (Some(&(small, Some(p0))), Some(&(large, Some(p1)))) = (cow_pauses.first(), cow_pauses.last()) {
            check(
                Some(p1 <= (2.0 * p0).max(2.0)),
                format!(
                    "copy-on-write pause flat as memory grows: {} ms at {small} MiB, {} ms at {large} MiB",
                    f(Some(p0), 2),
                    f(Some(p1), 2)
                ),
            );
        }
    }
    if let Some((clocks, mk)) = clocks.and_then(|c| Some((c, c.methods.get("mekha")?))) {
        let gap = f(Some(clocks.gap_s), 0);
        match (&mk.error, &mk.advance) {
            (None, Some(a)) => {
                let adv = [Some(a.mono_ms), Some(a.real_ms), a.tsc_ms];
                check(
                    Some(adv.iter().all(|v| v.is_some_and(|v| v.abs() <= CLOCK_LIMIT_MS))),
                    format!(
                        "mekha: every clock advances <= {CLOCK_LIMIT_MS:.0} ms across a {gap} s gap (CLOCK_MONOTONIC \
                         {}, CLOCK_REALTIME {}, TSC {} ms)",
                        f(adv[0], 1),
                        f(adv[1], 1),
                        f(adv[2], 1)
                    ),
                );
                check(
                    Some(a.rtc_change_s.is_some_and(|d| d.abs() <= RTC_LIMIT_S)),
                    format!(
                        "mekha: RTC agrees with CLOCK_REALTIME within {RTC_LIMIT_S:.0} s after the restore, as \
                         before the checkpoint (RTC - CLOCK_REALTIME {} s before, {} s after: {} s)",
                        f(a.rtc_minus_real_before_s, 2),
                        f(a.rtc_minus_real_s, 2),
                        f(a.rtc_change_s, 2)
                    ),
                );
            }
            (error, _) => {
                let error = error.as_deref().unwrap_or("no figures");
                check(
                    Some(false),
                    format!(
                        "mekha: every clock advances <= {CLOCK_LIMIT_MS:.0} ms across a {gap} s gap (failed: {error})"
                    ),
                );
                check(
                    Some(false),
                    format!(
                        "mekha: RTC agrees with CLOCK_REALTIME within {RTC_LIMIT_S:.0} s after the restore, as \
                         before the checkpoint (failed)"
                    ),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::checkpoint_data::{Dd, Restore, Workload};
    use crate::bench::host::Host;

    fn run(method: Method, rep: usize, pause: f64, lost: f64) -> Run {
        Run {
            size_mib: 512,
            method: Some(method),
            rep,
            lost_ms: lost,
            control_ms: 1.0,
            pause_ms: Some(pause),
            total_ms: Some(pause * 10.0),
            write_mbps: Some(900.0),
            staging_peak_mib: method.is_mekha().then_some(10.0),
            staging_budget_mib: method.is_mekha().then_some(64.0),
            direct_io: method.is_mekha(),
            ended: true,
            ..Run::default()
        }
    }

    fn restore(kind: RestoreKind, running: f64) -> Restore {
        Restore {
            size_mib: 512,
            restore: kind,
            rep: 0,
            running_ms: running,
            first_progress_ms: running + 5.0,
            rss_mib: Some(100.0),
            rss_1s_mib: Some(120.0),
            image_mib: 80.0,
            ok: true,
            rebooted: false,
            dirty_anomalies: 0,
            info: None,
            query_migrate: None,
        }
    }

    fn results() -> Results {
        Results {
            quick: true,
            reps: 3,
            nice: -10,
            live_cap_s: 20.0,
            elapsed_s: 1.0,
            workload: Workload { hot_mib: 64, rate: 0, steady_s: 3.0, tail_s: 1.0 },
            host: Host { cpus: 2, kernel: "6.1".into(), ..Host::default() },
            results: vec![
                run(Method::Mekha, 0, 20.0, 10.0),
                run(Method::Mekha, 1, 25.0, 40.0),
                run(Method::Mekha, 2, 22.0, 20.0),
                run(Method::MekhaCow, 0, 1.5, 5.0),
                run(Method::StopMigrate, 0, 1000.0, 1100.0),
            ],
            restores: vec![restore(RestoreKind::MekhaLazy, 40.0), restore(RestoreKind::StockIncoming, 100.0)],
            dd: vec![Dd { bytes: 1, seconds: 1.0, mbps: 1000.0 }, Dd { bytes: 1, seconds: 1.0, mbps: 1200.0 }],
            controls_ms: vec![1.0],
            errors: Vec::new(),
            clocks: None,
            summary: serde_json::Value::Null,
        }
    }

    #[test]
    fn medians_per_method_and_restore() {
        let s = summarize(&results());
        assert_eq!(s.dd_mbps, Some(1100.0));
        let size = &s.sizes[&512];
        let mk = &size.methods[&Method::Mekha];
        assert_eq!((mk.n, mk.ended), (3, 3));
        assert_eq!(mk.pause_ms, Some(22.0));
        assert_eq!(mk.lost_ms, Some(20.0));
        assert_eq!(mk.pause_ms_all, vec![Some(20.0), Some(25.0), Some(22.0)]);
        assert_eq!(size.restores[&RestoreKind::MekhaLazy].running_ms, Some(40.0));
    }

    #[test]
    fn targets_are_checked_against_the_medians() {
        let lines = checks(&summarize(&results()), None);
        let find = |needle: &str| lines.iter().find(|l| l.contains(needle)).cloned().unwrap_or_default();
        assert!(find("mekha pause 22.0 ms <= 30 ms").starts_with("- [ok]"), "{lines:?}");
        assert!(find("stop+migrate pause / mekha pause = 45.5x").starts_with("- [ok]"), "{lines:?}");
        assert!(find("copy-on-write pause 1.50 ms").starts_with("- [ok]"), "{lines:?}");
        // 900 MB/s of a 1100 MB/s dd: 82%.
        assert!(find("mekha write 900 MB/s = 82% of dd").starts_with("- [ok]"), "{lines:?}");
        assert!(find("mekha restore, lazy to running / stock = 0.40").starts_with("- [ok]"), "{lines:?}");
        assert!(find("mekha lost work 20 ms").starts_with("- [ok]"), "{lines:?}");
    }

    #[test]
    fn tables_show_each_method_once_in_order() {
        let data = results();
        let text = tables(&data, &summarize(&data));
        let mekha = text.find("| mekha MTD checkpoint | 22.0 | 220 | 20 |").expect(&text);
        let cow = text.find("| mekha copy-on-write checkpoint | 1.5 |").expect(&text);
        let stock = text.find("| stock stop + migrate file: + cont | 1,000.0 |").expect(&text);
        assert!(mekha < cow && cow < stock);
        assert!(text.contains("- stock stop + migrate file: + cont / mekha: pause 45.5x, lost work 55.0x"), "{text}");
        assert!(text.contains("| mekha restore, lazy | 40 | 45 | 100 | 120 | 80 | 0.40 | 1/1 |"), "{text}");
    }

    #[test]
    fn clocks_get_a_column_per_method_and_mekhas_targets() {
        use crate::bench::clocks::{ClockAdvance, ClockSample};
        let sample = ClockSample { t: 0.0, mono_ns: 0.0, real_ns: 0.0, tsc: None, rtc_s: None };
        let advance = ClockAdvance {
            mono_ms: 1.5,
            real_ms: -2.0,
            tsc_ms: Some(3.0),
            tsc_per_ns: Some(2.0),
            rtc_minus_real_s: Some(0.75),
            rtc_minus_real_before_s: Some(0.5),
            rtc_change_s: Some(0.25),
            checkpoint_mono_ns: 0.0,
            before: sample,
            after: sample,
            re_emitted: 0,
        };
        let mekha =
            ClockGap { method: "mekha".into(), advance: Some(advance), host_gap_s: Some(31.0), ..ClockGap::default() };
        let stock = ClockGap { method: "stock".into(), error: Some("no STOP event".into()), ..ClockGap::default() };
        let clocks = Clocks {
            gap_s: 30.0,
            interval_ms: 1000,
            size_mib: 512,
            methods: [("mekha".to_owned(), mekha), ("stock".to_owned(), stock)].into(),
        };
        let table = clock_table(&clocks).join("\n");
        assert!(table.contains("| clock | mekha (continue) | stock QEMU |"), "{table}");
        assert!(
            table.contains("| CLOCK_MONOTONIC: advance beyond one sampling interval (ms) | 1.5 | failed |"),
            "{table}"
        );
        assert!(table.contains("- stock QEMU failed: no STOP event"), "{table}");
        let lines = checks(&Summary::default(), Some(&clocks));
        assert!(lines[0].starts_with("- [ok] mekha: every clock advances <= 100 ms across a 30 s gap"), "{lines:?}");
        assert!(lines[1].starts_with("- [ok] mekha: RTC agrees"), "{lines:?}");
    }
}
