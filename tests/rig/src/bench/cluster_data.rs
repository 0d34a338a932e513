// SPDX-License-Identifier: GPL-2.0-or-later
//! What the cluster bench measures, as it goes into results.json. Times
//! ending in `_t` are seconds of the host's CLOCK_REALTIME (QEMU's event
//! timestamps, or the host time the bench saw something); `_ms` are
//! durations.

use std::collections::BTreeMap;

use mekha_coordinator::cluster::{ClusterCheckpoint, ClusterRestore};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::events::TimedEvent;
use super::host::Host;

/// How a cluster is checkpointed and restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `mekha checkpoint --mode cow` / `mekha restore`.
    Mekha,
    /// `mekha checkpoint --mode mtd` / `mekha restore`.
    #[serde(rename = "mekha-mtd")]
    MekhaMtd,
    /// Stock QEMU scripted over QMP.
    Stock,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Mekha, Method::MekhaMtd, Method::Stock];
    /// mekha's methods, in the tables' order.
    pub const MEKHA: [Method; 2] = [Method::Mekha, Method::MekhaMtd];

    pub fn name(self) -> &'static str {
        match self {
            Method::Mekha => "mekha",
            Method::MekhaMtd => "mekha-mtd",
            Method::Stock => "stock",
        }
    }

    /// How the tables name it.
    pub fn label(self) -> &'static str {
        match self {
            Method::Mekha => "mekha copy-on-write",
            Method::MekhaMtd => "mekha MTD",
            Method::Stock => "stock QEMU (scripted QMP)",
        }
    }

    /// The capture mode `mekha checkpoint --mode` is given.
    pub fn mode(self) -> Option<&'static str> {
        match self {
            Method::Mekha => Some("cow"),
            Method::MekhaMtd => Some("mtd"),
            Method::Stock => None,
        }
    }
}

/// One phase of a VM on the timeline: (kind, start, end).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Span(pub String, pub Option<f64>, pub Option<f64>);

impl Span {
    pub fn new(kind: &str, start: Option<f64>, end: Option<f64>) -> Span {
        Span(kind.to_owned(), start, end)
    }
}

/// One VM's checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmCheckpoint {
    pub vm: String,
    /// Its STOP and RESUME events (QEMU's time, the bench's receive time).
    pub stop_t: Option<f64>,
    pub stop_host_t: Option<f64>,
    pub resume_t: f64,
    pub resume_host_t: f64,
    /// RESUME minus STOP.
    pub event_pause_ms: Option<f64>,
    /// mekha's pause-ns; for stock, the events' pause.
    pub pause_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stopped_at_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resumed_at_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub written_bytes: Option<u64>,
    /// Frames toward the guest its image saved (in flight at the cut),
    /// and their bytes: mekha's checkpoint info.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub net_saved_frames: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub net_saved_bytes: Option<u64>,
    /// First time of each status of mekha's progress events.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub statuses: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub progress: Option<Value>,
    /// Stock: when `stop` and `migrate` were sent, when its MIGRATION
    /// completed, and its image's size and allocation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stop_sent_t: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub migrate_sent_t: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub migrated_t: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_alloc_bytes: Option<u64>,
    pub spans: Vec<Span>,
    pub events: Vec<TimedEvent>,
}

/// mekha's own figures of a checkpoint (its `--json` summary, in ms).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MekhaCheckpoint {
    pub latency_ms: Option<f64>,
    pub live_ms: Option<f64>,
    pub stop_skew_ms: Option<f64>,
    /// Spread of the VMs' stopped-at-ns (resumed-at-ns).
    pub stop_spread_ms: Option<f64>,
    pub resume_spread_ms: Option<f64>,
    pub max_pause_ms: Option<f64>,
    pub max_stopped_to_resumed_ms: Option<f64>,
    pub all_ready: bool,
    pub stop_at_ns: i64,
    pub generation: u64,
    pub modes: Vec<String>,
}

/// The steps of stock's scripted checkpoint, from its first command.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StockCheckpoint {
    pub stop_answered_ms: Option<f64>,
    pub written_ms: Option<f64>,
    pub cont_answered_ms: Option<f64>,
    pub fsync_ms: Option<f64>,
    pub cont_accepted_t: Vec<f64>,
    /// Per VM: `cont` refused as the migration was not finalized yet.
    pub cont_refused: Vec<u32>,
    pub cont_spread_ms: Option<f64>,
}

/// A cluster's checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The command started; every image durable.
    pub t0: f64,
    pub t_durable: f64,
    pub latency_ms: Option<f64>,
    pub written_bytes: Option<u64>,
    /// First STOP to last RESUME.
    pub cluster_pause_ms: Option<f64>,
    /// Each VM's STOP to its RESUME: the median and the longest over the
    /// VMs.
    #[serde(default)]
    pub median_vm_pause_ms: Option<f64>,
    pub max_vm_pause_ms: Option<f64>,
    pub suspend_skew_ms: Option<f64>,
    pub resume_skew_ms: Option<f64>,
    pub suspend_skew_host_ms: Option<f64>,
    pub resume_skew_host_ms: Option<f64>,
    /// Frames every image saved, all VMs (mekha).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub net_saved_frames: Option<u64>,
    /// The delayed link (N >= 2).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub net_cut: Option<NetCut>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mekha: Option<MekhaCheckpoint>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stock: Option<StockCheckpoint>,
    pub vms: Vec<VmCheckpoint>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub summary: Option<ClusterCheckpoint>,
}

/// The link with a delay line (toward the cluster's last VM, N >= 2) at
/// the checkpoint: how many frames were in flight on it, and how many the
/// receiver's image saved.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetCut {
    /// The VM behind the delay line.
    pub vm: String,
    pub delay_ms: f64,
    /// Messages per second it received, every stream, in the steady window
    /// before the checkpoint (each a frame: one datagram, or one segment of
    /// a TCP stream sending one message per interval).
    pub rate_msgs_s: Option<f64>,
    /// The bandwidth-delay product: rate x delay, the frames on the link at
    /// any instant.
    pub bdp_frames: Option<f64>,
    /// Frames its image saved (mekha), and saved / BDP.
    pub saved_frames: Option<u64>,
    pub saved_per_bdp: Option<f64>,
    /// Frames the delay line failed to pass on, over the trial (0, or the
    /// run's network figures mean nothing).
    pub line_lost: u64,
}

/// One VM's way back to its steady rate after its restart (see
/// [`super::recovery`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmRecovery {
    pub vm: String,
    /// Compute steps per second before the checkpoint (steady window).
    pub steady_steps_s: Option<f64>,
    /// From its RESUME until its compute rate holds 90% of steady.
    pub back_ms: Option<f64>,
    /// Steady work lost over the first seconds after its RESUME (ms of
    /// steady progress; the window is in the workload).
    pub lost_work_ms: Option<f64>,
    /// Compute rate after the RESUME: (s after it, % of steady).
    pub line: Vec<(f64, f64)>,
    /// Messages received per second, every stream, before the checkpoint.
    pub steady_msgs_s: Option<f64>,
    /// From its RESUME until its receive rate holds 90% of steady.
    pub msgs_back_ms: Option<f64>,
    /// Messages its probe counted lost after the restart, reported before
    /// the guest was back to 90% of its compute rate (when it was slow: a
    /// datagram lost then may be an overrun of its socket), and after.
    pub lost_while_slow: u64,
    pub lost_after: u64,
}

/// One VM's restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmRestart {
    pub vm: String,
    /// Its image loaded (mekha's RESTORE event, stock's MIGRATION completed).
    pub loaded_t: Option<f64>,
    pub resume_t: f64,
    pub resume_host_t: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resumed_at_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub progress: Option<Value>,
    pub spans: Vec<Span>,
    pub events: Vec<TimedEvent>,
}

/// mekha's own figures of a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MekhaRestart {
    pub latency_ms: Option<f64>,
    pub resume_skew_ms: Option<f64>,
    pub resume_spread_ms: Option<f64>,
    pub cli_wall_ms: Option<f64>,
    pub generation: u64,
    pub cli_after_resume_ms: Option<f64>,
}

/// The steps of stock's scripted restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StockRestart {
    pub loaded_ms: Option<f64>,
    pub cont_refused: Vec<u32>,
    pub cont_spread_ms: Option<f64>,
}

/// A cluster's restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Restart {
    pub t0: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cli_exit_t: Option<f64>,
    /// From the first command to the last RESUME event.
    pub restart_ms: Option<f64>,
    pub resume_skew_ms: Option<f64>,
    pub resume_skew_host_ms: Option<f64>,
    pub loaded_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mekha: Option<MekhaRestart>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stock: Option<StockRestart>,
    pub vms: Vec<VmRestart>,
    /// Every VM's way back to its steady rate; the longest over the VMs.
    #[serde(default)]
    pub recovery: Vec<VmRecovery>,
    #[serde(default)]
    pub back_ms: Option<f64>,
    #[serde(default)]
    pub msgs_back_ms: Option<f64>,
    #[serde(default)]
    pub lost_work_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub summary: Option<ClusterRestore>,
}

/// The first computation checksum that differed from the host's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mismatch {
    pub vm: String,
    pub step: u64,
    pub guest: String,
    pub host: String,
}

/// The restored guests' checksums against the host's run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ComputeCheck {
    pub checked: u64,
    pub mismatches: u64,
    pub first_mismatch: Option<Mismatch>,
}

/// Whether the job went on after a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Job {
    /// Streams (`vm<-peer/proto`) without their net_done.
    pub missing: Vec<String>,
    pub links: u64,
    pub expected_links: u64,
    pub lost: u64,
    pub dup: u64,
    pub reordered: u64,
    pub corrupt: u64,
    /// net_done events not `complete`.
    pub incomplete: u64,
    pub received: u64,
    pub rebooted: Vec<String>,
    pub dead: Vec<String>,
    pub net_anomalies: BTreeMap<String, u64>,
    pub dirty_anomalies: u64,
    pub done: u64,
    pub compute_events: BTreeMap<String, usize>,
    /// (step, checksum) of every compute event per VM, until checked.
    #[serde(skip)]
    pub compute_samples: BTreeMap<String, Vec<(u64, String)>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub compute_check: Option<ComputeCheck>,
    pub clean: bool,
}

/// One method on one fresh cluster of `n` VMs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub n: usize,
    pub rep: usize,
    pub method: Method,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub settle_s: Option<f64>,
    /// Why the first boot failed, when the cluster was booted again.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub boot_retry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loadavg_before: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checkpoint: Option<Checkpoint>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub restart: Option<Restart>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub job: Option<Job>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub restart_error: Option<String>,
}

impl Run {
    pub fn new(n: usize, rep: usize, method: Method) -> Run {
        Run {
            n,
            rep,
            method,
            settle_s: None,
            boot_retry: None,
            loadavg_before: None,
            checkpoint: None,
            restart: None,
            job: None,
            error: None,
            restart_error: None,
        }
    }

    /// The run's failure, checkpoint or restart.
    pub fn failure(&self) -> Option<&str> {
        self.error.as_deref().or(self.restart_error.as_deref())
    }
}

/// The workload every VM runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    pub memory_mib: u32,
    pub dirty_mib: u32,
    pub dirty_rate_mib_s: u32,
    pub compute_chunk: u64,
    pub msgs: u64,
    pub msg_interval_ms: u64,
    pub min_rx: u64,
    pub steady_s: f64,
    pub after_s: f64,
    /// The delay line's latency toward the last VM (N >= 2).
    #[serde(default)]
    pub link_delay_ms: f64,
    /// The recovery's threshold (share of steady) and averaging windows,
    /// and the window of the work lost after the restart.
    #[serde(default)]
    pub back_share: f64,
    #[serde(default)]
    pub back_hold_s: f64,
    #[serde(default)]
    pub msgs_back_hold_s: f64,
    #[serde(default)]
    pub lost_window_s: f64,
}

/// results.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub quick: bool,
    pub reps: usize,
    pub sizes: Vec<usize>,
    pub nice: i32,
    pub elapsed_s: f64,
    pub workload: Workload,
    pub host: Host,
    pub runs: Vec<Run>,
    /// Medians per N and method, as the tables show them.
    #[serde(default)]
    pub summary: BTreeMap<String, BTreeMap<String, Value>>,
}
