// SPDX-License-Identifier: GPL-2.0-or-later
//! The pause both capture modes share: the stop at the rendezvous
//! instant (frames toward the guest held, the clocks read), the guard
//! that resumes the VM whatever happens, and the resume (the held frames
//! copied for the image, then released to the guest).

use std::time::{Duration, Instant};

use mekha_ckpt_core::image::NetFrames;
use mekha_ckpt_core::session::Result;
use mekha_ckpt_core::vtime::TimeRecord;
use mekha_ckpt_core::width::saturating_u64;

use super::{EndArgs, Info, Session};
use crate::net_hold;
use crate::qemu::{self, Bql};
use crate::{fault, guest_time, rendezvous};

/// What the pause captured besides RAM: the devices, the clocks and the
/// network frames in flight toward the guest.
pub(super) struct Stopped {
    pub device_state: Vec<u8>,
    pub time: TimeRecord,
    pub net_frames: NetFrames,
}

/// The VM stopped at the rendezvous instant: the BQL this thread holds,
/// when the stop came, and the clocks at it.
pub(super) struct StopWindow {
    pub bql: Bql,
    pub end: EndArgs,
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
            crate::qemu::report::error("the checkpoint failed while the VM was stopped; the VM was resumed");
        });
    }
}

/// Takes the BQL at the stop instant, holds the network frames toward the
/// guest from just before the stop, stops the VM and reads its clocks.
/// Both capture modes stop this way.
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
    let time = guest_time::capture(&bql);
    fault::point(fault::Point::CheckpointStopped);
    Ok(StopWindow { bql, end, stopped_at, stopped, time, resume_guard })
}

/// What resuming the VM gave: the frames held for the image, and how long
/// the VM was stopped.
pub(super) struct Resumed {
    pub net_frames: NetFrames,
    pub net_dropped: u64,
    pub pause: Duration,
}

impl Resumed {
    /// Records the pause, stopped at `stopped_at` and resumed at
    /// `resumed_at` (wall clock), and the frames held meanwhile.
    pub(super) fn record(&self, info: &mut Info, stopped_at: i64, resumed_at: i64) {
        info.pause_ns = saturating_u64(self.pause.as_nanos());
        info.stopped_at_ns = Some(stopped_at);
        info.resumed_at_ns = Some(resumed_at);
        info.set_net(&self.net_frames, self.net_dropped);
    }
}

/// Copies the held frames for the image, resumes the VM stopped at
/// `stopped`, releases the frames to it, ends dirty logging, and lets go
/// of the BQL (the stop window's, or the one a wait handed back).
pub(super) fn resume_vm(bql: Bql, stopped: Instant, tracking: &mut Tracking, mut guard: ResumeGuard) -> Resumed {
    let net_frames = net_hold::snapshot(&bql);
    qemu::ckpt::vm_start(&bql);
    guard.armed = false;
    let net_dropped = net_hold::release(&bql);
    let pause = stopped.elapsed();
    tracking.stop(&bql);
    drop(bql);
    Resumed { net_frames, net_dropped, pause }
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
