// SPDX-License-Identifier: GPL-2.0-or-later
//! The pause both capture modes share: the stop at the rendezvous
//! instant (frames toward the guest held, the network cut's markers
//! sent, the clocks read), the guard that resumes the VM whatever
//! happens, and the resume as soon as the capture's stop work is done
//! (the held frames released to the guest).

use std::time::{Duration, Instant};

use mekha_ckpt_core::netcut::CutProgress;
use mekha_ckpt_core::session::Result;
use mekha_ckpt_core::vtime::TimeRecord;
use mekha_ckpt_core::width::saturating_u64;

use super::{Info, Session};
use crate::qemu::{self, Bql};
use crate::{fault, guest_time, net_cut, net_hold, rendezvous};

/// What the pause captured besides RAM: the devices and the clocks (the
/// network frames in flight toward the guest are known only once the
/// network cut is complete, see `net_cut`).
pub(super) struct Stopped {
    pub device_state: Vec<u8>,
    pub time: TimeRecord,
}

/// The VM stopped at the rendezvous instant: the BQL this thread holds,
/// when the stop came, and the clocks at it.
pub(super) struct StopWindow {
    pub bql: Bql,
    pub stopped_at: i64,
    pub stopped: Instant,
    pub time: TimeRecord,
    pub resume_guard: ResumeGuard,
}

/// Resumes the VM if dropped armed: a panic (a bug in mekha) between the
/// stop and [`resume_vm`] unwinds through it, and the VM must not stay
/// stopped. The resume runs in the main loop, which takes the BQL once
/// this thread's unwinding has let go of it.
pub(super) struct ResumeGuard {
    armed: bool,
}

impl Drop for ResumeGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        qemu::main_loop_call(|| {
            // SAFETY: main-loop calls run with the BQL held.
            let bql = unsafe { Bql::assume_held() };
            if !qemu::ckpt::vm_is_running(&bql) {
                qemu::ckpt::vm_start(&bql);
            }
            net_hold::release(&bql);
            net_cut::resumed();
            crate::qemu::report::error("the checkpoint failed while the VM was stopped; the VM was resumed");
        });
    }
}

/// Takes the BQL at the stop instant, holds the network frames toward the
/// guest from just before the stop, stops the VM, sends its markers and
/// reads its clocks. Both capture modes stop this way.
pub(super) fn stop_vm(shared: &Session) -> Result<StopWindow> {
    let end = shared.end_args();
    let (bql, stopped_at) = rendezvous::lock_at(end.stop_at);
    net_hold::begin(&bql);
    if let Err(e) = qemu::ckpt::vm_stop(&bql) {
        net_hold::release(&bql);
        return Err(e);
    }
    let resume_guard = ResumeGuard { armed: true };
    let stopped = Instant::now();
    net_cut::stopped(&bql);
    let time = guest_time::capture(&bql);
    fault::point(fault::Point::CheckpointStopped);
    Ok(StopWindow { bql, stopped_at, stopped, time, resume_guard })
}

/// How long the VM was stopped, and when it ran again (wall clock).
pub(super) struct Resumed {
    pub pause: Duration,
    pub resumed_at: i64,
    /// How the network cut stood then.
    pub cut: Option<CutProgress>,
}

impl Resumed {
    /// Records the pause, stopped at `stopped_at`, and how the network
    /// cut stands.
    pub(super) fn record(&self, info: &mut Info, stopped_at: i64) {
        info.pause_ns = saturating_u64(self.pause.as_nanos());
        info.stopped_at_ns = Some(stopped_at);
        info.resumed_at_ns = Some(self.resumed_at);
        if let Some(cut) = &self.cut {
            info.set_cut(cut);
        }
    }
}

/// Resumes the VM stopped at `stopped`, releases the held frames to it,
/// ends dirty logging, and lets go of the BQL.
pub(super) fn resume_vm(bql: Bql, stopped: Instant, tracking: &mut Tracking, mut guard: ResumeGuard) -> Resumed {
    qemu::ckpt::vm_start(&bql);
    guard.armed = false;
    let resumed_at = rendezvous::wall_ns();
    let pause = stopped.elapsed();
    let dropped = net_hold::release(&bql);
    if dropped > 0 {
        qemu::report::warn(&format!("{dropped} frame(s) toward the guest were dropped: its hold was full"));
    }
    net_cut::resumed();
    tracking.stop(&bql);
    drop(bql);
    Resumed { pause, resumed_at, cut: net_cut::progress() }
}

/// Undoes `qemu::ckpt::begin` (dirty logging, migration blocker) once.
pub(super) struct Tracking(bool);

impl Tracking {
    /// After `qemu::ckpt::begin` succeeded.
    pub(super) fn started() -> Tracking {
        Tracking(true)
    }

    pub(super) fn stop(&mut self, bql: &Bql) {
        if std::mem::take(&mut self.0) {
            qemu::ckpt::end(bql);
        }
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        if self.0 {
            self.stop(&Bql::lock());
        }
    }
}
