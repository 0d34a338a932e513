// SPDX-License-Identifier: GPL-2.0-or-later
//! Stopping and resuming at a wall-clock instant, so that every VM of a
//! cluster stops at one instant T and resumes at one instant T2.
//!
//! The instants are the host's CLOCK_REALTIME (hosts of a cluster keep it
//! in step with NTP or PTP). The thread naps until shortly before the
//! instant without the BQL, takes the BQL, and spins to the instant: the
//! logical stop (`cpu_disable_ticks` early in `vm_stop`) then comes within
//! microseconds of T. Spinning with the BQL stalls the guest's vCPUs that
//! need it, so the spin stays short; and it is bounded by the monotonic
//! clock (`mekha_ckpt_core::instant`), so a step back of the wall clock
//! cannot stretch it.

pub(crate) use mekha_ckpt_core::instant::{spin_until, wall_ns};
use mekha_ckpt_core::instant::{Target, SPIN_LEAD};
use mekha_ckpt_core::width::saturating_i64;

use crate::qemu::Bql;

/// Takes the BQL at wall-clock `at` (at once when None or past), returning
/// it and the wall-clock time it was reached.
pub(crate) fn lock_at(at: Option<i64>) -> (Bql, i64) {
    let Some(target) = at.map(Target::new) else { return (Bql::lock(), wall_ns()) };
    target.nap();
    let bql = Bql::lock();
    (bql, target.spin())
}

/// Waits until wall-clock `at` with the BQL free, so that QEMU's main loop
/// runs meanwhile (it reads the frames that reach a stopped VM into its
/// hold), then takes the BQL back and spins to the instant. With no
/// instant, or one closer than the spin lead, keeps the BQL and returns
/// at once or spins. Returns the BQL and the wall-clock time on return.
pub(crate) fn wait_unlocked(bql: Bql, at: Option<i64>) -> (Bql, i64) {
    match at {
        Some(at) if at - saturating_i64(SPIN_LEAD.as_nanos()) > wall_ns() => {
            drop(bql);
            lock_at(Some(at))
        }
        _ => {
            let now = spin_until(at);
            (bql, now)
        }
    }
}
