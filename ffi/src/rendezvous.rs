// SPDX-License-Identifier: GPL-2.0-or-later
//! Stopping at a wall-clock instant, so that every VM of a cluster stops
//! at one instant T (a restore resumes at one instant the same way).
//!
//! The instants are the host's CLOCK_REALTIME (hosts of a cluster keep it
//! in step with NTP or PTP). The thread naps until shortly before the
//! instant without the BQL, takes the BQL, and spins to the instant: the
//! logical stop (`cpu_disable_ticks` early in `vm_stop`) then comes within
//! microseconds of T. Spinning with the BQL stalls the guest's vCPUs that
//! need it, so the spin stays short; and it is bounded by the monotonic
//! clock (`mekha_ckpt_core::instant`), so a step back of the wall clock
//! cannot stretch it.

pub(crate) use mekha_ckpt_core::instant::wall_ns;
use mekha_ckpt_core::instant::Target;

use crate::qemu::Bql;

/// Takes the BQL at wall-clock `at` (at once when None or past), returning
/// it and the wall-clock time it was reached.
pub(crate) fn lock_at(at: Option<i64>) -> (Bql, i64) {
    let Some(target) = at.map(Target::new) else { return (Bql::lock(), wall_ns()) };
    target.nap();
    let bql = Bql::lock();
    (bql, target.spin())
}
