// SPDX-License-Identifier: GPL-2.0-or-later
//! The rendezvous: the instant every VM of a cluster stops at (and a
//! restart's instant every VM resumes at), on the hosts' wall clocks, and
//! how far each VM landed from them. A checkpointed VM resumes as soon as
//! its own capture is done: frames in flight are the network cut's
//! business, not a common resume instant's.
//!
//! The arithmetic is pure (the wall clock's "now" is an argument), so
//! that the margins are tested without a clock; `wall_ns` and
//! `instant_of` are the only readers of the clocks.

use std::time::{Duration, Instant};

use mekha_ckpt_core::width::saturating_i64;

/// Lead of the stop instant over "now" beyond the command's round trip:
/// the library ends its live phase 20 ms before T to prepare the pause.
const STOP_LEAD: Duration = Duration::from_millis(40);
/// Lead of a restart's resume instant beyond twice the commands' round
/// trip: the library naps until 0.5 ms before the instant.
const RESUME_LEAD: Duration = Duration::from_millis(10);

/// How a checkpoint's rendezvous went.
pub(super) struct Rendezvous {
    /// The stop instant T (wall clock, ns).
    pub(super) stop_at: i64,
    /// From the first command to the end of the live phase.
    pub(super) live: Duration,
    /// Whether every VM was ready (else the time budget ended the live phase).
    pub(super) all_ready: bool,
}

/// A checkpoint's stop instant T (wall clock, ns), from `now`: the
/// commands go out together, as the last queries did, so T leaves twice
/// their slowest round trip and the library's lead.
pub(super) fn checkpoint_instant(now: i64, round_trip: Duration) -> i64 {
    now + nanos(STOP_LEAD + 2 * round_trip)
}

/// A restart's common resume instant (wall clock, ns), from `now`: twice
/// the resume commands' round trip, and a margin for the nap to end.
pub(super) fn restart_instant(now: i64, round_trip: Duration) -> i64 {
    now + nanos(RESUME_LEAD + 2 * round_trip)
}

/// Whether a round of queries that took `round_trip` renewed every lease
/// of length `lease` in time: a slower round may have let one run out
/// unseen.
pub(super) fn renewed_in_time(round_trip: Duration, lease: Duration) -> bool {
    round_trip < lease / 2
}

/// How far after `planned` a VM `reached` its instant, ns (positive:
/// late); 0 when it did not report one.
pub(super) fn skew(reached: Option<i64>, planned: i64) -> i64 {
    reached.map_or(0, |t| t - planned)
}

/// The largest |skew| of `skews`, ns; 0 for none.
pub(super) fn widest(skews: impl IntoIterator<Item = i64>) -> i64 {
    skews.into_iter().map(i64::abs).max().unwrap_or(0)
}

/// How long from wall-clock `now` to wall-clock `wall` (ns); zero if past.
fn until(wall: i64, now: i64) -> Duration {
    Duration::from_nanos((wall - now).max(0) as u64)
}

/// The monotonic instant of wall-clock instant `wall` (ns); now if past.
pub(super) fn instant_of(wall: i64) -> Instant {
    Instant::now() + until(wall, wall_ns())
}

/// The wall clock, ns since the Unix epoch: the clock the instants are on.
pub(super) use mekha_ckpt_core::instant::wall_ns;

fn nanos(d: Duration) -> i64 {
    saturating_i64(d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    #[test]
    fn the_stop_instant_leaves_two_round_trips_and_the_lead() {
        let now = 1_000 * MS;
        assert_eq!(checkpoint_instant(now, Duration::from_millis(3)), now + 40 * MS + 6 * MS);
        assert_eq!(checkpoint_instant(0, Duration::from_millis(250)), 540 * MS);
    }

    #[test]
    fn a_restart_resumes_two_round_trips_and_the_lead_from_now() {
        assert_eq!(restart_instant(7, Duration::ZERO), 7 + 10 * MS);
        assert_eq!(restart_instant(0, Duration::from_micros(1_500)), 13 * MS);
    }

    #[test]
    fn a_round_renews_leases_in_time_only_within_half_of_one() {
        let lease = Duration::from_millis(2_000);
        assert!(renewed_in_time(Duration::from_millis(999), lease));
        assert!(!renewed_in_time(Duration::from_millis(1_000), lease));
        assert!(!renewed_in_time(Duration::from_secs(5), lease));
    }

    #[test]
    fn skews_are_signed_and_the_widest_is_absolute() {
        assert_eq!(skew(Some(105), 100), 5);
        assert_eq!(skew(Some(97), 100), -3);
        assert_eq!(skew(None, 100), 0);
        assert_eq!(widest([5, -7, 2]), 7);
        assert_eq!(widest([]), 0);
    }

    #[test]
    fn an_instant_in_the_past_is_now() {
        assert_eq!(until(100, 250), Duration::ZERO);
        assert_eq!(until(250, 100), Duration::from_nanos(150));
        let before = Instant::now();
        assert!(instant_of(0) >= before && instant_of(0) <= Instant::now());
    }
}
