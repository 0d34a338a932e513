// SPDX-License-Identifier: GPL-2.0-or-later
//! Live checkpoint of this VM (`__org.mekha_checkpoint` and friends).
//!
//! One checkpoint at a time. The QMP handler validates the arguments and
//! starts a worker thread (see `worker`), which reports its progress into
//! the shared [`Info`] that `__org.mekha_query-checkpoint` returns and
//! sends `__org.mekha_CHECKPOINT` events when the status changes.
//!
//! A coordinator drives several VMs' checkpoints together: it holds the
//! live phase open (`hold`) until every VM is `ready`, ends them all with
//! one stop instant and one resume instant (`checkpoint-end`), and may
//! keep the staged images in memory until it schedules their writes
//! (`persist-hold`, `checkpoint-persist`). What must outlive a coordinator
//! that dies lives here: a checkpoint that does not hear from its
//! coordinator for `lease-ms` gives up (or, once staged, writes its image
//! on its own), and a stopped VM always resumes by itself.

mod cow_capture;
mod mtd_capture;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mekha_ckpt_core::image::NetFrames;
use serde::{Deserialize, Serialize};

use crate::qemu::{self, Bql, Event};
use crate::rendezvous;

/// `__org.mekha_CheckpointArgs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct Args {
    pub path: PathBuf,
    pub mode: Option<Mode>,
    pub time_budget_ms: Option<u64>,
    pub staging_mib: Option<u64>,
    pub epoch_ms: Option<u64>,
    pub dirty_share: Option<u32>,
    pub clean_share: Option<u32>,
    pub hold: Option<bool>,
    pub lease_ms: Option<u64>,
    pub persist_hold: Option<bool>,
    pub allow_writable_disks: Option<bool>,
}

/// `__org.mekha_CheckpointEndArgs`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct EndArgs {
    pub stop_at: Option<i64>,
    pub resume_at: Option<i64>,
}

/// `__org.mekha_CheckpointMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mode {
    Auto,
    Mtd,
    Cow,
}

/// `__org.mekha_CheckpointStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Status {
    #[default]
    None,
    Live,
    Paused,
    Capturing,
    Staged,
    Persisting,
    Completed,
    Failed,
}

impl Status {
    fn is_active(self) -> bool {
        matches!(self, Status::Live | Status::Paused | Status::Capturing | Status::Staged | Status::Persisting)
    }
}

/// `__org.mekha_CheckpointInfo`.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Info {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    pub epochs: u64,
    pub dirty_pages: u64,
    pub non_dirty_pages: u64,
    pub stale_pages: u64,
    pub copied_pages: u64,
    pub staged_bytes: u64,
    pub staging_peak_bytes: u64,
    pub staging_budget_bytes: u64,
    pub written_bytes: u64,
    pub pause_ns: u64,
    pub final_pages: u64,
    pub device_state_bytes: u64,
    pub live_ns: u64,
    pub total_ns: u64,
    pub direct_io: bool,
    pub wp_faults: u64,
    pub capture_ns: u64,
    pub ready: bool,
    pub pause_estimate_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_at_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_at_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_at_ns: Option<i64>,
    pub net_held_frames: u64,
    pub net_held_bytes: u64,
    pub net_dropped_frames: u64,
}

impl Info {
    /// Records what the hold kept during the pause.
    pub(crate) fn set_net(&mut self, held: &NetFrames, dropped: u64) {
        self.net_held_frames = held.frame_count();
        self.net_held_bytes = held.byte_count();
        self.net_dropped_frames = dropped;
    }
}

/// What the QMP handlers and the worker share.
pub(crate) struct Shared {
    info: Mutex<Info>,
    /// The end command and its instants, once it came.
    end: Mutex<Option<EndArgs>>,
    end_requested: AtomicBool,
    cancelled: AtomicBool,
    persist_released: AtomicBool,
    /// The coordinator's lease: it must be heard from this often.
    lease: Option<Duration>,
    last_heard: Mutex<Instant>,
}

/// Why the worker must stop waiting for its coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abandon {
    Cancelled,
    LeaseExpired,
}

impl Abandon {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Abandon::Cancelled => "cancelled by the coordinator",
            Abandon::LeaseExpired => "the coordinator's lease expired: it was not heard from in time",
        }
    }
}

impl Shared {
    /// Updates the progress; sends an event when the status changed.
    fn update(&self, f: impl FnOnce(&mut Info)) {
        let (changed, snapshot) = {
            let mut info = self.info.lock().unwrap_or_else(PoisonError::into_inner);
            let before = info.status;
            f(&mut info);
            (info.status != before, info.clone())
        };
        if changed {
            qemu::emit_event(Event::MEKHA_EVENT_CHECKPOINT, &serde_json::to_value(&snapshot).expect("encodes"));
        }
    }

    fn end_requested(&self) -> bool {
        self.end_requested.load(Ordering::Relaxed)
    }

    /// The instants of the end command (none before it, or without them).
    fn end_args(&self) -> EndArgs {
        self.end.lock().unwrap_or_else(PoisonError::into_inner).unwrap_or_default()
    }

    /// The coordinator spoke: renews its lease.
    fn heard(&self) {
        *self.last_heard.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// Whether to give up waiting for the coordinator.
    fn abandoned(&self) -> Option<Abandon> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Some(Abandon::Cancelled);
        }
        match self.lease {
            Some(lease) if self.last_heard.lock().unwrap_or_else(PoisonError::into_inner).elapsed() > lease => {
                Some(Abandon::LeaseExpired)
            }
            _ => None,
        }
    }

    fn persist_released(&self) -> bool {
        self.persist_released.load(Ordering::Relaxed)
    }
}

static CURRENT: Mutex<Option<Arc<Shared>>> = Mutex::new(None);

/// `__org.mekha_checkpoint`: validates and starts the worker.
pub(crate) fn start(args: Args) -> Result<(), String> {
    let mut current = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = current.as_ref() {
        if shared.info.lock().unwrap_or_else(PoisonError::into_inner).status.is_active() {
            return Err("a checkpoint of this VM is already running".into());
        }
    }
    let params = worker::Params::from_args(&args)?;
    // SAFETY: QMP handlers run in the main loop with the BQL held.
    check_disks(unsafe { &Bql::assume_held() }, args.allow_writable_disks.unwrap_or(false))?;
    worker::check_target(&args.path)?;
    // SAFETY: QMP handlers run in the main loop with the BQL held.
    let bql = unsafe { Bql::assume_held() };
    let prepared = worker::Prepared::new(&bql, args.mode.unwrap_or(Mode::Auto), params.staging_budget())?;
    let info = Info {
        status: Status::Live,
        path: Some(args.path.display().to_string()),
        mode: Some(prepared.mode()),
        mode_reason: prepared.mode_reason().map(str::to_owned),
        ..Info::default()
    };
    qemu::emit_event(Event::MEKHA_EVENT_CHECKPOINT, &serde_json::to_value(&info).expect("encodes"));
    let shared = Arc::new(Shared {
        info: Mutex::new(info),
        end: Mutex::new(None),
        end_requested: AtomicBool::new(false),
        cancelled: AtomicBool::new(false),
        persist_released: AtomicBool::new(false),
        lease: params.lease(),
        last_heard: Mutex::new(Instant::now()),
    });
    // The thread takes `prepared` from this slot; if the thread cannot be
    // created, it is taken back and undone here, where the BQL is held.
    let slot = Arc::new(Mutex::new(Some(prepared)));
    let (worker_shared, worker_slot) = (shared.clone(), slot.clone());
    let spawned = std::thread::Builder::new().name("mekha-ckpt".into()).spawn(move || {
        let prepared = worker_slot.lock().unwrap_or_else(PoisonError::into_inner).take().expect("prepared once");
        worker::run(worker_shared, params, prepared)
    });
    if let Err(e) = spawned {
        if let Some(prepared) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
            prepared.cancel(&bql);
        }
        return Err(format!("cannot start the checkpoint thread: {e}"));
    }
    *current = Some(shared);
    Ok(())
}

/// A checkpoint holds RAM and devices, not disk contents: restarting a VM
/// whose disk was written after the instant would pair RAM from before with
/// a disk from after, and corrupt what the guest has on it. So writable
/// disks are refused unless the caller snapshots them itself.
fn check_disks(bql: &Bql, allow_writable: bool) -> Result<(), String> {
    let writable: Vec<String> = qemu::disks(bql)
        .into_iter()
        .filter(|d| d.writable && d.inserted)
        .map(|d| if d.node.is_empty() { d.device } else { format!("{} ({})", d.device, d.node) })
        .collect();
    if writable.is_empty() || allow_writable {
        return Ok(());
    }
    Err(format!(
        "the VM has writable disks: {}. A checkpoint holds RAM and devices, not disk contents, so a restart would \
         pair the RAM of the checkpoint instant with disks written after it. Attach them read-only, or snapshot \
         them yourself at the checkpoint and pass allow-writable-disks",
        writable.join(", ")
    ))
}

/// Instants further ahead than this are refused: a coordinator's clock
/// would be badly off, or a typo would stop the VM in a week.
const MAX_INSTANT_AHEAD: Duration = Duration::from_secs(60);

/// The current checkpoint, if any, with its coordinator's lease renewed.
fn current() -> Option<Arc<Shared>> {
    let shared = CURRENT.lock().unwrap_or_else(PoisonError::into_inner).clone()?;
    shared.heard();
    Some(shared)
}

/// `__org.mekha_checkpoint-end`: ends the live phase, at once or with the
/// stop (and resume) at wall-clock instants.
pub(crate) fn end_live_phase(args: EndArgs) -> Result<(), String> {
    let now = rendezvous::wall_ns();
    let horizon = now + MAX_INSTANT_AHEAD.as_nanos() as i64;
    for (name, at) in [("stop-at", args.stop_at), ("resume-at", args.resume_at)] {
        if at.is_some_and(|at| at > horizon) {
            return Err(format!("{name} is more than {} s ahead of this host's clock", MAX_INSTANT_AHEAD.as_secs()));
        }
    }
    if let (Some(stop), Some(resume)) = (args.stop_at, args.resume_at) {
        if resume <= stop {
            return Err("resume-at must come after stop-at".into());
        }
    }
    let shared = current().ok_or("no checkpoint is running")?;
    let status = shared.info.lock().unwrap_or_else(PoisonError::into_inner).status;
    if status != Status::Live || shared.end_requested() {
        return Err("no checkpoint is in its live phase".into());
    }
    *shared.end.lock().unwrap_or_else(PoisonError::into_inner) = Some(args);
    shared.update(|info| {
        info.stop_at_ns = args.stop_at;
        info.resume_at_ns = args.resume_at;
    });
    shared.end_requested.store(true, Ordering::Relaxed);
    Ok(())
}

/// `__org.mekha_checkpoint-cancel`: gives up a checkpoint that has not
/// stopped the VM yet, or whose image waits in memory; the VM runs on and
/// nothing is written.
pub(crate) fn cancel() -> Result<(), String> {
    let shared = current().ok_or("no checkpoint is running")?;
    let status = shared.info.lock().unwrap_or_else(PoisonError::into_inner).status;
    match status {
        Status::Live | Status::Staged => {
            shared.cancelled.store(true, Ordering::Relaxed);
            Ok(())
        }
        Status::Paused | Status::Capturing => Err("the checkpoint has stopped the VM already: it cannot be cancelled \
                                                   until its image is staged"
            .into()),
        _ => Err("no checkpoint can be cancelled now".into()),
    }
}

/// `__org.mekha_checkpoint-persist`: a checkpoint started with
/// persist-hold may write its staged image now.
pub(crate) fn release_persist() -> Result<(), String> {
    let shared = current().ok_or("no checkpoint is running")?;
    if !shared.info.lock().unwrap_or_else(PoisonError::into_inner).status.is_active() {
        return Err("no checkpoint is running".into());
    }
    shared.persist_released.store(true, Ordering::Relaxed);
    Ok(())
}

/// `__org.mekha_QueryCheckpointArgs`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct QueryArgs {
    pub renew_lease: Option<bool>,
}

/// `__org.mekha_query-checkpoint`; renews the coordinator's lease only
/// when the coordinator asks: anyone may poll the status (libvirt, a
/// periodic `mekha status`), and such polls must not keep alive a
/// checkpoint whose coordinator is gone.
pub(crate) fn query(args: QueryArgs) -> Info {
    let shared = match args.renew_lease {
        Some(true) => current(),
        _ => CURRENT.lock().unwrap_or_else(PoisonError::into_inner).clone(),
    };
    shared.map(|s| s.info.lock().unwrap_or_else(PoisonError::into_inner).clone()).unwrap_or_default()
}

fn ms(value: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(value.unwrap_or(default))
}
