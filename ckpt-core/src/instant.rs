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
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// Sleeps until shortly ([`SPIN_LEAD`]) before wall-clock `at` (at once
/// when it is closer, or past). The sleep's length is taken from the wall
/// clock once, and slept on the monotonic clock.
pub fn nap_until(at: i64) {
    let wait = at - SPIN_LEAD.as_nanos() as i64 - wall_ns();
    if wait > 0 {
        std::thread::sleep(Duration::from_nanos(wait as u64));
    }
}

/// Spins until wall-clock `at` (returns at once when None or past), bounded
/// by the monotonic clock; returns the wall-clock time on return.
pub fn spin_until(at: Option<i64>) -> i64 {
    spin_on(at, wall_ns, Instant::now)
}

fn spin_on(at: Option<i64>, wall: impl Fn() -> i64, mono: impl Fn() -> Instant) -> i64 {
    let Some(at) = at else { return wall() };
    let now = wall();
    if now >= at {
        return now;
    }
    let bound = mono() + Duration::from_nanos((at - now) as u64) + SLACK;
    loop {
        let now = wall();
        if now >= at || mono() >= bound {
            return now;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_spin_ends_at_the_instant() {
        let at = wall_ns() + 2_000_000;
        let reached = spin_until(Some(at));
        assert!(reached >= at, "returned {} ns early", at - reached);
        assert!(spin_until(None) > 0);
        // A past instant: at once.
        let started = Instant::now();
        spin_until(Some(at - 1_000_000_000));
        assert!(started.elapsed() < Duration::from_millis(1));
    }

    #[test]
    fn a_wall_clock_stepped_back_during_the_spin_does_not_stretch_it() {
        let start = wall_ns();
        let at = start + 1_000_000;
        // The first reading is honest; then the clock steps back by 10 s and
        // crawls from there.
        let calls = Cell::new(0i64);
        let wall = || {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                start
            } else {
                start - 10_000_000_000 + calls.get()
            }
        };
        let started = Instant::now();
        let reached = spin_on(Some(at), wall, Instant::now);
        let took = started.elapsed();
        assert!(reached < at, "the stepped clock cannot have reached the instant");
        assert!(took >= Duration::from_millis(1), "ended before the monotonic bound: {took:?}");
        assert!(took < Duration::from_millis(50), "spun {took:?} for a 1 ms wait");
    }

    #[test]
    fn a_nap_ends_a_spin_lead_before_the_instant() {
        let at = wall_ns() + 20_000_000;
        nap_until(at);
        let left = at - wall_ns();
        assert!(left <= SPIN_LEAD.as_nanos() as i64, "{left} ns left after the nap");
        nap_until(at - 1_000_000_000);
    }
}
