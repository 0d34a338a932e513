// SPDX-License-Identifier: GPL-2.0-or-later
//! The rendezvous: the instants every VM of a cluster stops and resumes
//! at, on the hosts' wall clocks.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lead of the stop instant over "now" beyond the command's round trip:
/// the library ends its live phase 20 ms before T to prepare the pause.
pub(super) const STOP_LEAD: Duration = Duration::from_millis(40);
/// Lead of a restart's resume instant beyond twice the commands' round
/// trip: the library naps until 0.5 ms before the instant.
pub(super) const RESUME_LEAD: Duration = Duration::from_millis(10);
/// Slack of the resume instant over the slowest VM's pause estimate; also
/// the time frames in flight between stopped VMs have to arrive.
pub(super) const RESUME_SLACK: Duration = Duration::from_millis(5);

/// How a checkpoint's rendezvous went.
pub(super) struct Rendezvous {
    /// The stop instant T and the resume instant T2 (wall clock, ns).
    pub(super) instants: (i64, i64),
    /// From the first command to the end of the live phase.
    pub(super) live: Duration,
    /// Whether every VM was ready (else the time budget ended the live phase).
    pub(super) all_ready: bool,
}

/// The monotonic instant of wall-clock instant `wall` (ns); now if past.
pub(super) fn instant_of(wall: i64) -> Instant {
    Instant::now() + Duration::from_nanos((wall - wall_ns()).max(0) as u64)
}

pub(super) fn wall_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_nanos() as i64
}

pub(super) fn nanos(d: Duration) -> i64 {
    d.as_nanos() as i64
}
