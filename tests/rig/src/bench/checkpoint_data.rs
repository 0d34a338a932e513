// SPDX-License-Identifier: GPL-2.0-or-later
//! What the checkpoint bench measures, as it goes into results.json (the
//! keys the Python bench wrote). `_ms` are durations, `_s` seconds since
//! the checkpoint command, `_mib` MiB, `_mbps` MB/s (10^6 bytes).

use mekha_ckpt_core::session::{checkpoint, restore};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::clocks::ClockAdvance;
use super::cluster_data::Span;
use super::cpu::CpuShare;
use super::host::Host;

/// How a running VM is saved, each on its own freshly booted VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// `__org.mekha_checkpoint` mode=mtd into a file.
    Mekha,
    /// The same with mode=cow.
    MekhaCow,
    /// mekha-cow with the image sealed under a key.
    MekhaSealed,
    /// stop, migrate file:, wait, cont.
    StopMigrate,
    /// migrate file: with the VM running, capped.
    LiveMigrate,
    /// migrate file: with the background-snapshot capability.
    BgSnapshot,
    /// The snapshot-save job into a qcow2 disk.
    SnapshotSave,
}

impl Method {
    /// Every method, in table order.
    pub const ALL: [Method; 7] = [
        Method::Mekha,
        Method::MekhaCow,
        Method::MekhaSealed,
        Method::StopMigrate,
        Method::LiveMigrate,
        Method::BgSnapshot,
        Method::SnapshotSave,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Mekha => "mekha",
            Method::MekhaCow => "mekha-cow",
            Method::MekhaSealed => "mekha-sealed",
            Method::StopMigrate => "stop-migrate",
            Method::LiveMigrate => "live-migrate",
            Method::BgSnapshot => "bg-snapshot",
            Method::SnapshotSave => "snapshot-save",
        }
    }

    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn label(self) -> &'static str {
        match self {
            Method::Mekha => "mekha MTD checkpoint",
            Method::MekhaCow => "mekha copy-on-write checkpoint",
            Method::MekhaSealed => "mekha copy-on-write, sealed under a key",
            Method::StopMigrate => "stock stop + migrate file: + cont",
            Method::LiveMigrate => "stock live migrate file:",
            Method::BgSnapshot => "stock background-snapshot",
            Method::SnapshotSave => "stock snapshot-save (qcow2)",
        }
    }

    pub fn is_mekha(self) -> bool {
        matches!(self, Method::Mekha | Method::MekhaCow | Method::MekhaSealed)
    }
}

/// How an image is restored into a fresh QEMU started with -incoming defer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreKind {
    /// `__org.mekha_restore` lazy, from the mekha (or mekha-cow) image.
    MekhaLazy,
    /// The same with lazy=false.
    MekhaBulk,
    /// The sealed image, with its key.
    MekhaKeyed,
    /// migrate-incoming file: from the stop-migrate image.
    StockIncoming,
}

impl RestoreKind {
    pub const ALL: [RestoreKind; 4] =
        [RestoreKind::MekhaLazy, RestoreKind::MekhaBulk, RestoreKind::MekhaKeyed, RestoreKind::StockIncoming];

    pub fn name(self) -> &'static str {
        match self {
            RestoreKind::MekhaLazy => "mekha-lazy",
            RestoreKind::MekhaBulk => "mekha-bulk",
            RestoreKind::MekhaKeyed => "mekha-keyed",
            RestoreKind::StockIncoming => "stock-incoming",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            RestoreKind::MekhaLazy => "mekha restore, lazy",
            RestoreKind::MekhaBulk => "mekha restore, lazy=false",
            RestoreKind::MekhaKeyed => "mekha restore of a sealed image with its key (read, tags checked)",
            RestoreKind::StockIncoming => "stock migrate-incoming file:",
        }
    }

    /// The checkpoint methods whose image it restores, preferred first.
    pub fn sources(self) -> &'static [Method] {
        match self {
            RestoreKind::MekhaLazy | RestoreKind::MekhaBulk => &[Method::Mekha, Method::MekhaCow],
            RestoreKind::MekhaKeyed => &[Method::MekhaSealed],
            RestoreKind::StockIncoming => &[Method::StopMigrate],
        }
    }
}

/// The guest's workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    pub hot_mib: u32,
    /// The probe's dirty rate limit (0: none).
    pub rate: u32,
    pub steady_s: f64,
    pub tail_s: f64,
}

/// One checkpoint method on one VM. What a method does not have stays
/// out of results.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Run {
    pub size_mib: u32,
    pub method: Option<Method>,
    pub rep: usize,
    pub probe_args: Vec<String>,
    /// The guest work lost from the command to TAIL_S after completion.
    pub lost_ms: f64,
    /// The longest time without a compute event in that window, and its
    /// start.
    pub stall_ms: Option<f64>,
    pub stall_at_s: Option<f64>,
    pub event_interval_ms: Option<f64>,
    /// The same computation without a checkpoint: the noise floor.
    pub control_ms: f64,
    pub steady_rate: f64,
    pub events_per_s: f64,
    pub dirty_mib_per_s: Option<f64>,
    pub loadavg_before: Vec<String>,
    pub cpu_steady: CpuShare,
    pub cpu_window: CpuShare,
    pub spans: Vec<Span>,
    /// `(s, % of the steady rate)` from 1 s before the command.
    pub progress: Vec<(f64, f64)>,
    pub window_s: f64,
    pub ended: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pause_ms: Option<f64>,
    /// STOP to RESUME events.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pause_host_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pause_qemu_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total_qemu_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub live_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub persist_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub staging_peak_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub staging_budget_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_alloc_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub written_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub written_during_live_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub write_mbps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub staged_at_persist_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub persist_staged_mbps: Option<f64>,
    pub direct_io: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mode: Option<checkpoint::Mode>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub wp_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub capture_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fsync_ms: Option<f64>,
    /// mekha's query-checkpoint at completion.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<checkpoint::Info>,
    /// A live migration's: QEMU's downtime, the RAM sent, and when it did
    /// not end within the cap, how long it ran and what it left on disk.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub downtime_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub transferred_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cancelled_after_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub partial_image_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub query_migrate: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub migrate_parameters: Option<MigrateParameters>,
}

/// The stock migration parameters in force (QEMU's defaults).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrateParameters {
    pub max_bandwidth: Option<u64>,
    pub downtime_limit: Option<u64>,
}

/// One restore into a fresh QEMU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restore {
    pub size_mib: u32,
    pub restore: RestoreKind,
    pub rep: usize,
    /// The command to the RESUME event.
    pub running_ms: f64,
    /// The command to the first compute event of the restored guest.
    pub first_progress_ms: f64,
    pub rss_mib: Option<f64>,
    pub rss_1s_mib: Option<f64>,
    pub image_mib: f64,
    /// Not rebooted, no dirty-memory anomaly.
    pub ok: bool,
    pub rebooted: bool,
    pub dirty_anomalies: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<restore::Info>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub query_migrate: Option<Value>,
}

/// One dd oflag=direct run: the disk's direct-write bandwidth.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dd {
    pub bytes: u64,
    pub seconds: f64,
    pub mbps: f64,
}

/// One method of the clock measurement: a checkpoint, QEMU killed, a gap
/// without QEMU, a restore.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClockGap {
    /// `mekha` or `stock`.
    pub method: String,
    pub size_mib: u32,
    pub gap_s: f64,
    pub interval_ms: u64,
    pub probe_args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checkpoint_mode: Option<checkpoint::Mode>,
    /// QEMU's time from the checkpoint's pause to the restored VM running.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host_gap_s: Option<f64>,
    /// mekha's query-time after the restore (or its error).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub time_info: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub samples_before: Option<usize>,
    #[serde(flatten, default)]
    pub advance: Option<ClockAdvance>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// The guest clocks across a restore gap, once per run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Clocks {
    pub gap_s: f64,
    pub interval_ms: u64,
    pub size_mib: u32,
    /// By [`ClockGap::method`].
    pub methods: std::collections::BTreeMap<String, ClockGap>,
}

/// results.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub quick: bool,
    pub reps: usize,
    pub nice: i32,
    pub live_cap_s: f64,
    pub elapsed_s: f64,
    pub workload: Workload,
    pub host: Host,
    pub results: Vec<Run>,
    pub restores: Vec<Restore>,
    pub dd: Vec<Dd>,
    pub controls_ms: Vec<f64>,
    /// The guest clocks across a restore gap, if measured.
    pub clocks: Option<Clocks>,
    /// What failed, the run going on without it.
    #[serde(default)]
    pub errors: Vec<String>,
    /// The medians the tables print.
    #[serde(default)]
    pub summary: Value,
}
