// SPDX-License-Identifier: GPL-2.0-or-later
//! mekha's QMP contract and the library's sessions as state machines,
//! apart from QEMU: each command's name, arguments and reply and each
//! event's data ([`commands`]), the arguments' validation, the statuses
//! and what each allows, the coordinator's lease, and the kinds of error
//! ([`error`]). The library (ffi/) answers and drives QEMU with them, the
//! coordinator and the tests call with them; `tests/qmp_schema.rs` holds
//! them against `qapi/mekha.json`.

pub mod checkpoint;
pub mod commands;
pub mod error;
pub mod library;
pub mod restore;
pub mod time;

pub use commands::{Command, Empty, Event, PREFIX};
pub use error::{Error, ErrorKind, Result};

use std::time::{Duration, Instant};

/// Instants further ahead than this are refused: a coordinator's clock
/// would be badly off, or a typo would stop the VM in a week.
pub const MAX_INSTANT_AHEAD: Duration = Duration::from_secs(60);

/// Refuses an instant `at` (wall clock, ns) further ahead of `now_ns`
/// than [`MAX_INSTANT_AHEAD`]; `name` is the argument's.
pub fn check_instant(name: &str, at: Option<i64>, now_ns: i64) -> Result<()> {
    let horizon = now_ns.saturating_add(crate::width::saturating_i64(MAX_INSTANT_AHEAD.as_nanos()));
    match at {
        Some(at) if at > horizon => Err(Error::invalid_argument(format!(
            "{name} is more than {} s ahead of this host's clock",
            MAX_INSTANT_AHEAD.as_secs()
        ))),
        _ => Ok(()),
    }
}

/// A coordinator's lease: it must be heard from at least every `every`.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    every: Duration,
    last_heard: Instant,
}

impl Lease {
    /// A lease heard from at `now`.
    pub fn new(every: Duration, now: Instant) -> Lease {
        Lease { every, last_heard: now }
    }

    /// How long the coordinator may stay silent.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// The coordinator was heard from at `now`: the lease starts over.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// Whether the coordinator has been silent for longer than the lease.
    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_heard) > self.every
    }

    /// How long from `now` until the lease expires unless heard from
    /// again (never less than a millisecond, so that a wait for it ends
    /// past the instant, not at it).
    pub fn left(&self, now: Instant) -> Duration {
        (self.last_heard + self.every).saturating_duration_since(now).max(Duration::from_millis(1))
    }
}

/// Milliseconds from an optional argument, or a default.
pub(crate) fn ms(value: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(value.unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_only_after_its_time_without_a_word() {
        let t0 = Instant::now();
        let mut lease = Lease::new(Duration::from_millis(100), t0);
        assert!(!lease.expired(t0 + Duration::from_millis(100)));
        assert!(lease.expired(t0 + Duration::from_millis(101)));
        lease.heard(t0 + Duration::from_millis(90));
        assert!(!lease.expired(t0 + Duration::from_millis(180)));
        // A clock read before the last word counts as no time at all.
        assert!(!lease.expired(t0));
    }

    #[test]
    fn instants_far_ahead_are_refused() {
        let now = 1_000_000_000_000;
        check_instant("stop-at", None, now).unwrap();
        check_instant("stop-at", Some(now + 59_000_000_000), now).unwrap();
        let err = check_instant("stop-at", Some(now + 61_000_000_000), now).unwrap_err();
        assert_eq!(err, Error::invalid_argument("stop-at is more than 60 s ahead of this host's clock"));
        check_instant("at", Some(i64::MAX), i64::MAX - 1).unwrap();
    }
}
