// SPDX-License-Identifier: GPL-2.0-or-later
//! Live checkpoint of this VM (`__org.mekha_checkpoint` and friends).
//!
//! One checkpoint at a time. The QMP handler validates the arguments and
//! starts a worker thread (see `worker`), which reports its progress into
//! the shared [`Info`] that `__org.mekha_query-checkpoint` returns and
//! sends `__org.mekha_CHECKPOINT` events when the status changes.

mod cow_capture;
mod mtd_capture;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::qemu::{self, Bql, Event};

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
    Persisting,
    Completed,
    Failed,
}

impl Status {
    fn is_active(self) -> bool {
        matches!(self, Status::Live | Status::Paused | Status::Capturing | Status::Persisting)
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
}

/// What the QMP handlers and the worker share.
pub(crate) struct Shared {
    info: Mutex<Info>,
    end_requested: AtomicBool,
}

impl Shared {
    /// Updates the progress; sends an event when the status changed.
    fn update(&self, f: impl FnOnce(&mut Info)) {
        let (changed, snapshot) = {
            let mut info = self.info.lock().unwrap();
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
}

static CURRENT: Mutex<Option<Arc<Shared>>> = Mutex::new(None);

/// `__org.mekha_checkpoint`: validates and starts the worker.
pub(crate) fn start(args: Args) -> Result<(), String> {
    let mut current = CURRENT.lock().unwrap();
    if let Some(shared) = current.as_ref() {
        if shared.info.lock().unwrap().status.is_active() {
            return Err("a checkpoint of this VM is already running".into());
        }
    }
    let params = worker::Params::from_args(&args)?;
    worker::check_target(&args.path)?;
    // SAFETY: QMP handlers run in the main loop with the BQL held.
    let bql = unsafe { Bql::assume_held() };
    let prepared = worker::Prepared::new(&bql, args.mode.unwrap_or(Mode::Auto))?;
    let info = Info {
        status: Status::Live,
        path: Some(args.path.display().to_string()),
        mode: Some(prepared.mode()),
        mode_reason: prepared.mode_reason().map(str::to_owned),
        ..Info::default()
    };
    qemu::emit_event(Event::MEKHA_EVENT_CHECKPOINT, &serde_json::to_value(&info).expect("encodes"));
    let shared = Arc::new(Shared { info: Mutex::new(info), end_requested: AtomicBool::new(false) });
    // The thread takes `prepared` from this slot; if the thread cannot be
    // created, it is taken back and undone here, where the BQL is held.
    let slot = Arc::new(Mutex::new(Some(prepared)));
    let (worker_shared, worker_slot) = (shared.clone(), slot.clone());
    let spawned = std::thread::Builder::new().name("mekha-ckpt".into()).spawn(move || {
        let prepared = worker_slot.lock().unwrap().take().expect("prepared once");
        worker::run(worker_shared, params, prepared)
    });
    if let Err(e) = spawned {
        if let Some(prepared) = slot.lock().unwrap().take() {
            prepared.cancel(&bql);
        }
        return Err(format!("cannot start the checkpoint thread: {e}"));
    }
    *current = Some(shared);
    Ok(())
}

/// `__org.mekha_checkpoint-end`.
pub(crate) fn end_live_phase() -> Result<(), String> {
    let current = CURRENT.lock().unwrap();
    match current.as_ref() {
        Some(shared) if shared.info.lock().unwrap().status == Status::Live => {
            shared.end_requested.store(true, Ordering::Relaxed);
            Ok(())
        }
        _ => Err("no checkpoint is in its live phase".into()),
    }
}

/// `__org.mekha_query-checkpoint`.
pub(crate) fn query() -> Info {
    CURRENT.lock().unwrap().as_ref().map(|s| s.info.lock().unwrap().clone()).unwrap_or_default()
}

fn ms(value: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(value.unwrap_or(default))
}
