// SPDX-License-Identifier: GPL-2.0-or-later
//! Time virtualization math: where a restored VM's clocks stand to the
//! host's, and how fast a lagging guest catches up.
//!
//! A VM's guest-visible wall clock is QEMU's host clock (what the RTC
//! reads): the host's wall clock plus an offset, negative when the guest
//! lags. The VM clock (TSC, kvmclock, timers) already runs only while the
//! VM runs and continues across a restore by itself; the offset makes the
//! wall clock do the same. At a checkpoint instant the image records the
//! guest's wall clock, the host's and the VM clock ([`TimeRecord`]); at the
//! restored VM's first resume the policy picks the new offset.

use serde::{Deserialize, Serialize};
use zerocopy::little_endian::{I64, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// How a restored VM's clocks stand to the host's (`__org.mekha_TimePolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimePolicy {
    /// Every clock resumes from the checkpoint instant: the guest then
    /// lags the host by the time the image spent on disk.
    #[default]
    Continue,
    /// Stock QEMU: the wall clock (RTC) is the host's and jumps by the gap.
    Host,
    /// As `Continue`, then guest time runs faster until the lag is gone.
    CatchUp,
}

impl TimePolicy {
    /// Its name in the schema.
    pub fn as_str(self) -> &'static str {
        match self {
            TimePolicy::Continue => "continue",
            TimePolicy::Host => "host",
            TimePolicy::CatchUp => "catch-up",
        }
    }
}

/// Default catch-up rate: 5% faster than the host (a 30 s lag is gone
/// after 10 minutes), well within what guest timekeeping tolerates.
pub const DEFAULT_CATCH_UP_PPM: u32 = 50_000;

/// The clocks at a checkpoint instant: the image's TIME section (format
/// 1.1; little-endian, 32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TimeRecord {
    /// The guest's wall clock (QEMU's host clock), ns since the Unix epoch.
    pub guest_wall_ns: I64,
    /// The host's wall clock (CLOCK_REALTIME), ns since the Unix epoch.
    pub host_wall_ns: I64,
    /// The VM clock: ns the VM had run.
    pub virtual_ns: I64,
    /// Offset 24: reserved, written as zero.
    pub reserved: U64,
}

const _: () = assert!(size_of::<TimeRecord>() == 32);

impl TimeRecord {
    /// The record of these clocks (ns, as the fields), reserved zero.
    pub fn new(guest_wall_ns: i64, host_wall_ns: i64, virtual_ns: i64) -> TimeRecord {
        TimeRecord {
            guest_wall_ns: I64::new(guest_wall_ns),
            host_wall_ns: I64::new(host_wall_ns),
            virtual_ns: I64::new(virtual_ns),
            reserved: U64::new(0),
        }
    }

    /// How far the guest's wall clock lagged the host's at the instant.
    pub fn lag_ns(&self) -> i64 {
        self.host_wall_ns.get().saturating_sub(self.guest_wall_ns.get())
    }

    /// Whether both wall clocks read a time a clock can: from the Unix
    /// epoch to [`MAX_WALL_NS`]. Err names the clock that does not.
    pub fn check(&self) -> Result<(), String> {
        for (name, ns) in [("guest", self.guest_wall_ns.get()), ("host", self.host_wall_ns.get())] {
            if !(0..=MAX_WALL_NS).contains(&ns) {
                return Err(format!("a wall clock no clock can show: the {name}'s reads {ns} ns since the epoch"));
            }
        }
        Ok(())
    }
}

/// The latest wall clock a TIME record may hold: the year 2116, half of
/// what an i64 of nanoseconds holds, so that the differences of two wall
/// clocks stay far from overflowing.
pub const MAX_WALL_NS: i64 = i64::MAX / 2;

/// The host-clock offset for a VM resuming at host wall time
/// `host_now_ns`: 0 under [`TimePolicy::Host`]; otherwise the guest's
/// wall clock resumes at the checkpoint instant, or lags the host by
/// `lag_ns` when given (one lag for every VM of a cluster). Without a
/// record (an image from before format 1.1) there is no instant to resume
/// from, and the offset is 0 unless a lag is given.
pub fn resume_offset(policy: TimePolicy, record: Option<&TimeRecord>, lag_ns: Option<i64>, host_now_ns: i64) -> i64 {
    match (policy, lag_ns, record) {
        (TimePolicy::Host, _, _) => 0,
        (_, Some(lag), _) => lag.saturating_neg(),
        (_, None, Some(r)) => r.guest_wall_ns.get().saturating_sub(host_now_ns),
        (_, None, None) => 0,
    }
}

/// How much a lagging offset moves toward 0 over `elapsed_ns` of host time
/// at `ppm` parts per million: never past 0, nothing for an offset ahead
/// of the host (a guest ahead waits for nobody: it is left as it is).
pub fn catch_up_step(offset_ns: i64, elapsed_ns: i64, ppm: u32) -> i64 {
    if offset_ns >= 0 || elapsed_ns <= 0 {
        return 0;
    }
    // Positive here; beyond i64 it saturates (and min caps it anyway).
    let step = i64::try_from(i128::from(elapsed_ns) * i128::from(ppm) / 1_000_000).unwrap_or(i64::MAX);
    step.min(-offset_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn continue_resumes_from_the_instant_and_composes() {
        // Checkpointed at host 1000 s with the guest on host time.
        let first = TimeRecord::new(1000 * S, 1000 * S, 50 * S);
        assert_eq!(first.lag_ns(), 0);
        // Restored at host 1030 s: the guest resumes at 1000 s.
        let offset = resume_offset(TimePolicy::Continue, Some(&first), None, 1030 * S);
        assert_eq!(offset, -30 * S);
        // It runs 10 s, is checkpointed again (guest 1010 s at host
        // 1040 s) and restored at host 1100 s: it resumes at 1010 s.
        let second = TimeRecord::new(1040 * S + offset, 1040 * S, 60 * S);
        assert_eq!(second.lag_ns(), 30 * S);
        assert_eq!(resume_offset(TimePolicy::Continue, Some(&second), None, 1100 * S), -90 * S);
        assert_eq!(resume_offset(TimePolicy::CatchUp, Some(&second), None, 1100 * S), -90 * S);
    }

    #[test]
    fn host_policy_drops_any_lag_and_an_explicit_lag_wins() {
        let r = TimeRecord::new(1000 * S, 1030 * S, 0);
        assert_eq!(resume_offset(TimePolicy::Host, Some(&r), Some(5 * S), 2000 * S), 0);
        assert_eq!(resume_offset(TimePolicy::Continue, Some(&r), Some(5 * S), 2000 * S), -5 * S);
        assert_eq!(resume_offset(TimePolicy::Continue, None, None, 2000 * S), 0);
    }

    #[test]
    fn catch_up_is_bounded_and_stops_at_zero() {
        // 5%: 1 s of host time takes 50 ms off the lag.
        assert_eq!(catch_up_step(-30 * S, S, 50_000), 50_000_000);
        assert_eq!(catch_up_step(-10, S, 50_000), 10);
        assert_eq!(catch_up_step(0, S, 50_000), 0);
        assert_eq!(catch_up_step(5 * S, S, 50_000), 0);
        assert_eq!(catch_up_step(-S, -1, 50_000), 0);
        // A 30 s lag is gone after 600 s of 1 s steps, not one step earlier.
        let mut offset = -30 * S;
        let mut steps = 0;
        while offset < 0 {
            offset += catch_up_step(offset, S, DEFAULT_CATCH_UP_PPM);
            steps += 1;
        }
        assert_eq!((offset, steps), (0, 600));
    }

    /// Found by the image fuzz target (a crafted TIME section): the
    /// offsets overflowed instead of staying at the farthest an i64 holds.
    #[test]
    fn extreme_clocks_saturate() {
        let ancient = TimeRecord::new(i64::MIN, i64::MAX, 0);
        assert_eq!(ancient.lag_ns(), i64::MAX);
        assert_eq!(resume_offset(TimePolicy::Continue, Some(&ancient), None, 1), i64::MIN);
        assert_eq!(resume_offset(TimePolicy::Continue, None, Some(i64::MIN), 0), i64::MAX);
        assert_eq!(resume_offset(TimePolicy::CatchUp, Some(&TimeRecord::new(i64::MAX, 0, 0)), None, -1), i64::MAX);
    }

    #[test]
    fn record_round_trips_its_bytes() {
        let r = TimeRecord::new(-1, i64::MAX, 42);
        let bytes = r.as_bytes().to_vec();
        assert_eq!(bytes.len(), 32);
        assert_eq!(TimeRecord::read_from_bytes(&bytes).unwrap(), r);
    }
}
