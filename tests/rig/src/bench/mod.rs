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
pub mod stats;

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

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
