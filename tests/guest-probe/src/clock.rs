// SPDX-License-Identifier: GPL-2.0-or-later
//! Clock sources: CLOCK_MONOTONIC, CLOCK_REALTIME, the TSC and the RTC.

use serde_json::{json, Value};

/// Where the RTC's seconds since the epoch are read from.
const RTC_SINCE_EPOCH: &str = "/sys/class/rtc/rtc0/since_epoch";

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer to our timespec; clock_gettime cannot fail
    // for these clocks with it.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds since the epoch.
pub fn real_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// The time stamp counter, where there is one.
pub fn tsc() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc is available on every x86_64 CPU.
        Some(unsafe { core::arch::x86_64::_rdtsc() })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// The RTC's seconds since the epoch, or `None` without an RTC.
pub fn rtc_s() -> Option<u64> {
    std::fs::read_to_string(RTC_SINCE_EPOCH).ok().and_then(|s| s.trim().parse().ok())
}

/// One sample: CLOCK_MONOTONIC (returned apart, for the event's `mono_ns`)
/// and the fields of a `clock` event.
pub fn sample() -> (u64, Value) {
    let mono = mono_ns();
    let real = real_ns();
    let tsc = tsc();
    let rtc = rtc_s();
    (mono, json!({ "real_ns": real, "tsc": tsc, "rtc_s": rtc }))
}
