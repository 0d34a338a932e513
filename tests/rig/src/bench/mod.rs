// SPDX-License-Identifier: GPL-2.0-or-later
//! The benches' shared parts (docs/benchmarks.md): they run on the rig's
//! VMs and namespaces and time what a user sees, through the `mekha` CLI
//! and QEMU's own QMP events, beside stock QEMU in the same run.
//!
//! Measurement and reporting are apart: [`cluster`] and [`checkpoint`]
//! measure into the types of [`cluster_data`] and [`checkpoint_data`]
//! (results.json), [`cluster_report`] and [`checkpoint_report`] turn them
//! into medians, tables and the design's targets. The timelines are drawn
//! from results.json by ci/bench/cluster_timeline.py and
//! ci/bench/checkpoint_timeline.py.

pub mod checkpoint;
pub mod checkpoint_data;
pub mod checkpoint_report;
pub mod clocks;
pub mod cluster;
pub mod cluster_data;
pub mod cluster_report;
pub mod console;
pub mod cpu;
pub mod events;
pub mod host;
pub mod progress;
pub mod recovery;
pub mod stats;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::Artifacts;

static NAME: OnceLock<String> = OnceLock::new();

/// Names the bench in its log lines.
pub fn set_log_name(name: &str) {
    let _ = NAME.set(name.to_owned());
}

/// One progress line on stderr: `[NAME HH:MM:SS] msg` (UTC).
pub fn log(msg: &str) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    let name = NAME.get().map_or("bench", String::as_str);
    eprintln!("[{name} {:02}:{:02}:{:02}] {msg}", secs / 3600, secs / 60 % 60, secs % 60);
}

/// The output's `vms` and `images` directories, emptied.
pub fn fresh_dirs(out: &Path) -> Result<(PathBuf, PathBuf)> {
    let (vms_dir, images) = (out.join("vms"), out.join("images"));
    for d in [&vms_dir, &images] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    Ok((vms_dir, images))
}

/// Runs a bench to its end on a new runtime, or until SIGINT, SIGTERM or
/// SIGHUP: then its future is dropped (its VMs killed, its namespaces
/// deleted) and the process exits 130.
pub fn run_until_signal(bench: impl Future<Output = ()>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Runtime::new()?;
    let finished = runtime.block_on(async {
        let (mut term, mut hup) = (signal(SignalKind::terminate())?, signal(SignalKind::hangup())?);
        tokio::select! {
            () = bench => Ok::<_, anyhow::Error>(true),
            _ = tokio::signal::ctrl_c() => Ok(false),
            _ = term.recv() => Ok(false),
            _ = hup.recv() => Ok(false),
        }
    })?;
    if !finished {
        log("signal: stopping");
        std::process::exit(130);
    }
    Ok(())
}

/// What a bench binary does before it measures: checks that it runs as
/// root (`why_root` says what for), sets the nice value before any thread
/// starts (threads inherit it), names its log lines `bench-NAME`, finds
/// the artefacts and creates its output directory (`out`, by default
/// target/bench/NAME). The nice value in force, the artefacts, the
/// output directory.
pub fn start(name: &str, why_root: &str, nice: i32, out: Option<PathBuf>) -> Result<(i32, Artifacts, PathBuf)> {
    // SAFETY: a plain system call.
    if unsafe { libc::geteuid() } != 0 {
        bail!("ci/bench-{name} needs root ({why_root})");
    }
    let nice = host::set_nice(nice);
    set_log_name(&format!("bench-{name}"));
    let artifacts = Artifacts::locate()?;
    let out = std::path::absolute(out.unwrap_or_else(|| crate::artifacts::target_dir().join("bench").join(name)))?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    Ok((nice, artifacts, out))
}
