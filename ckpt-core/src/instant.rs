// SPDX-License-Identifier: GPL-2.0-or-later
//! Waiting for an instant of the host's wall clock (a cluster's stop and
//! resume instants are CLOCK_REALTIME, which NTP or PTP keeps in step
//! across hosts) without trusting that clock to move forward.
//!
//! The last stretch of such a wait is a spin, and the thread spinning may
//! hold QEMU's big lock with the VM stopped: a step back of the wall clock
//! by Δ during the spin must not freeze QEMU for Δ. Every wait is therefore
//! bounded by the monotonic clock too: it ends when the wall clock reaches
//! the instant, or when as much monotonic time has passed as the wall
//! clock said was left at the start (plus a little slack), whichever
//! comes first.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long before the instant a wait stops sleeping and starts to spin.
pub const SPIN_LEAD: Duration = Duration::from_micros(500);

/// What a wait may overrun its monotonic bound by (the wall clock slewing
/// slower than the monotonic one ends the spin this early at most).
pub const SLACK: Duration = Duration::from_micros(200);

/// The host's wall clock, ns since the Unix epoch.
pub fn wall_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| crate::width::saturating_i64(d.as_nanos()))
}

/// A wall-clock instant to wait for, with its monotonic bound: taken once,
/// when the wait starts, so that a step of the wall clock during the nap
/// or the spin cannot stretch either.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    wall: i64,
    bound: Instant,
}

impl Target {
    /// Wall-clock instant `at`, due as the wall clock reads now.
    pub fn new(at: i64) -> Target {
        Target::new_on(at, wall_ns(), Instant::now())
    }

    fn new_on(at: i64, wall_now: i64, mono_now: Instant) -> Target {
        let left = Duration::from_nanos(at.saturating_sub(wall_now).max(0) as u64);
        Target { wall: at, bound: mono_now + left + SLACK }
    }

    /// Sleeps until shortly ([`SPIN_LEAD`]) before the instant (at once
    /// when it is closer, or past).
    pub fn nap(&self) {
        if let Some(nap) = self.nap_on(wall_ns(), Instant::now()) {
            std::thread::sleep(nap);
        }
    }

    /// How long [`nap`](Self::nap) sleeps when the clocks read so.
    fn nap_on(&self, wall_now: i64, mono_now: Instant) -> Option<Duration> {
        let left = self.bound.saturating_duration_since(mono_now).saturating_sub(SLACK);
        let wall_left = Duration::from_nanos(self.wall.saturating_sub(wall_now).max(0) as u64);
        // The sooner of the two clocks' ends: a step forward shortens the
        // nap, a step back does not lengthen it.
        left.min(wall_left).checked_sub(SPIN_LEAD)
    }

    /// Spins until the instant; returns the wall-clock time on return.
    pub fn spin(&self) -> i64 {
        self.spin_on(wall_ns, Instant::now)
    }

    fn spin_on(&self, wall: impl Fn() -> i64, mono: impl Fn() -> Instant) -> i64 {
        loop {
            let now = wall();
            if now >= self.wall || mono() >= self.bound {
                return now;
            }
            std::hint::spin_loop();
        }
    }
}

/// Spins until wall-clock `at` (returns at once when None or past), bounded
/// by the monotonic clock; returns the wall-clock time on return.
pub fn spin_until(at: Option<i64>) -> i64 {
    at.map_or_else(wall_ns, |at| Target::new(at).spin())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_spin_ends_at_the_instant() {
        let spun = Instant::now();
        let at = wall_ns() + 2_000_000;
        let reached = spin_until(Some(at));
        // At the instant; or, if the host's clock was stepped back meanwhile
        // (seen on a test VM, by 1.4 ms), once the 2 ms have passed.
        assert!(
            reached >= at || spun.elapsed() >= Duration::from_millis(2),
            "returned {} ns early, after {:?}",
            at - reached,
            spun.elapsed()
        );
        assert!(spin_until(None) > 0);
        // A past instant: at once.
        let started = Instant::now();
        spin_until(Some(at - 1_000_000_000));
        assert!(started.elapsed() < Duration::from_millis(1));
    }

    #[test]
    fn a_wall_clock_stepped_back_during_the_spin_does_not_stretch_it() {
        let start = wall_ns();
        let target = Target::new_on(start + 1_000_000, start, Instant::now());
        // The clock steps back by 10 s at once and crawls from there.
        let calls = Cell::new(0i64);
        let wall = || {
            calls.set(calls.get() + 1);
            start - 10_000_000_000 + calls.get()
        };
        let started = Instant::now();
        let reached = target.spin_on(wall, Instant::now);
        let took = started.elapsed();
        assert!(reached < start, "the stepped clock cannot have reached the instant");
        assert!(took >= Duration::from_micros(900), "ended before the monotonic bound: {took:?}");
        assert!(took < Duration::from_millis(50), "spun {took:?} for a 1 ms wait");
    }

    #[test]
    fn a_step_back_before_the_wait_began_its_nap_does_not_stretch_it() {
        // The instant was set 5 ms ahead; by the time the nap starts, the
        // wall clock has stepped back by 10 s.
        let target = Target::new_on(wall_ns() + 5_000_000, wall_ns(), Instant::now());
        let target = Target { wall: target.wall + 10_000_000_000, ..target };
        let started = Instant::now();
        target.nap();
        target.spin();
        assert!(started.elapsed() < Duration::from_millis(60), "waited {:?}", started.elapsed());
    }

    #[test]
    fn a_nap_ends_a_spin_lead_before_the_instant() {
        // Computed from given clock readings: how long the OS then lets
        // the thread sleep past it is the spin's to absorb, not the nap's.
        let (wall, mono) = (1_000_000_000_000, Instant::now());
        let target = Target::new_on(wall + 20_000_000, wall, mono);
        assert_eq!(target.nap_on(wall, mono), Some(Duration::from_millis(20) - SPIN_LEAD));
        let later = mono + Duration::from_millis(5);
        assert_eq!(target.nap_on(wall + 5_000_000, later), Some(Duration::from_millis(15) - SPIN_LEAD));
        // Within the lead, or past the instant: no nap.
        assert_eq!(target.nap_on(wall + 19_600_000, mono + Duration::from_micros(19_600)), None);
        assert_eq!(target.nap_on(wall + 30_000_000, later), None);
        // A wall clock stepped forward shortens it; one stepped back does not lengthen it.
        assert_eq!(target.nap_on(wall + 10_000_000, mono), Some(Duration::from_millis(10) - SPIN_LEAD));
        assert_eq!(target.nap_on(wall - 10_000_000_000, later), Some(Duration::from_millis(15) - SPIN_LEAD));
    }
}
