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
//! one stop instant and the network cut (`checkpoint-end`, see
//! `net_cut`; each VM resumes as soon as its capture allows), and may
//! keep the staged images in memory until it schedules their writes
//! (`persist-hold`, `checkpoint-persist`). What must outlive a coordinator
//! that dies lives here: a checkpoint that does not hear from its
//! coordinator for `lease-ms` gives up (or, once staged, writes its image
//! on its own), and a stopped VM always resumes by itself.
//!
//! The session's state machine (arguments and their checks, statuses,
//! which command may act in which, the lease) is QEMU-free and unit-tested
//! in `mekha_ckpt_core::session::checkpoint`; this module drives QEMU.

mod cow_capture;
mod mtd_capture;
mod pause;
mod worker;

use std::sync::{Arc, Mutex, PoisonError};

pub(crate) use mekha_ckpt_core::session::checkpoint::{
    Abandon, Args, EndArgs, Info, Mode, Params, QueryArgs, Session, Status,
};
use mekha_ckpt_core::session::{Error, ErrorKind, Result};

use crate::qemu::{self, Bql, Event};
use crate::{disks, net_cut, rendezvous};

/// QEMU's event for a checkpoint whose status changed.
fn emit(info: &Info) {
    qemu::emit_event(Event::MEKHA_EVENT_CHECKPOINT, &serde_json::to_value(info).expect("encodes"));
}

static CURRENT: Mutex<Option<Arc<Session>>> = Mutex::new(None);

/// `__org.mekha_checkpoint`: validates and starts the worker.
pub(crate) fn start(args: Args) -> Result<()> {
    let mut current = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
    if current.as_ref().is_some_and(|session| session.status().is_active()) {
        return Err(Error::new(ErrorKind::Busy, "a checkpoint of this VM is already running"));
    }
    let mut params = Params::from_args(&args)?;
    // SAFETY: QMP handlers run in the main loop with the BQL held.
    let bql = unsafe { Bql::assume_held() };
    // Writable disks are captured with RAM, unless the caller snapshots
    // them itself.
    let disks = match args.allow_writable_disks.unwrap_or(false) {
        true => Vec::new(),
        false => disks::capture::writable(&bql)?,
    };
    worker::check_target(&args.path)?;
    params.key = args.key_secret.as_deref().map(|id| qemu::image_key(&bql, id)).transpose()?;
    let prepared = worker::Prepared::new(
        &bql,
        args.mode.unwrap_or(Mode::Auto),
        params.staging_budget,
        disks,
        args.disk_parent.clone(),
    )?;
    net_cut::reset(&bql);
    let info = Info {
        status: Status::Live,
        path: Some(args.path.display().to_string()),
        mode: Some(prepared.mode()),
        mode_reason: prepared.mode_reason().map(str::to_owned),
        ..Info::default()
    };
    emit(&info);
    let shared = Arc::new(Session::new(info, params.lease, Box::new(emit)));
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
        return Err(Error::internal(format!("cannot start the checkpoint thread: {e}")));
    }
    *current = Some(shared);
    Ok(())
}

/// The current checkpoint, if any, with its coordinator's lease renewed.
fn current() -> Option<Arc<Session>> {
    let session = CURRENT.lock().unwrap_or_else(PoisonError::into_inner).clone()?;
    session.heard();
    Some(session)
}

/// The current checkpoint for a command that acts on it, lease renewed.
fn running() -> Result<Arc<Session>> {
    current().ok_or_else(|| Error::wrong_status("no checkpoint is running"))
}

/// `__org.mekha_checkpoint-end`: ends the live phase, at once or with the
/// stop at a wall-clock instant, and begins the network cut.
pub(crate) fn end_live_phase(args: EndArgs) -> Result<()> {
    let now = rendezvous::wall_ns();
    // Bad arguments are refused before the lease is renewed.
    args.check(now)?;
    let cut = args.cut.clone();
    running()?.request_end(args, now)?;
    // SAFETY: QMP handlers run in the main loop with the BQL held.
    net_cut::begin(unsafe { &Bql::assume_held() }, cut.as_ref());
    Ok(())
}

/// `__org.mekha_checkpoint-cancel`: gives up a checkpoint that has not
/// stopped the VM yet, or whose image waits in memory; the VM runs on and
/// nothing is written.
pub(crate) fn cancel() -> Result<()> {
    running()?.cancel()
}

/// `__org.mekha_checkpoint-persist`: a checkpoint started with
/// persist-hold may write its staged image now.
pub(crate) fn release_persist() -> Result<()> {
    running()?.release_persist()
}

/// `__org.mekha_query-checkpoint`; renews the coordinator's lease only
/// when the coordinator asks: anyone may poll the status (libvirt, a
/// periodic `mekha status`), and such polls must not keep alive a
/// checkpoint whose coordinator is gone.
pub(crate) fn query(args: QueryArgs) -> Info {
    let session = match args.renew_lease {
        Some(true) => current(),
        _ => CURRENT.lock().unwrap_or_else(PoisonError::into_inner).clone(),
    };
    session.map(|s| s.info()).unwrap_or_default()
}
