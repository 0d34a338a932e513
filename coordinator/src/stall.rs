// SPDX-License-Identifier: GPL-2.0-or-later
//! Deadlines for the coordinator's waits on its VMs.
//!
//! A VM that answers every query but never gets on (its disk hung, a bug)
//! must not hold the coordinator forever: every poll would renew the
//! leases of the other VMs too, pinning their staged images in memory. A
//! fixed deadline per wait would fail a large VM on a slow disk that is
//! still writing; so a wait ends when a VM it waits for has shown no
//! progress — no field of its reported state changed — for a limit.

use std::time::{Duration, Instant};

use mekha_ckpt_core::session::{checkpoint, restore};

/// What a VM reports of a checkpoint or a restore: compared whole, named
/// by its status.
pub trait Reported: Clone + PartialEq {
    fn status_name(&self) -> &'static str;
}

impl Reported for checkpoint::Info {
    fn status_name(&self) -> &'static str {
        self.status.as_str()
    }
}

impl Reported for restore::Info {
    fn status_name(&self) -> &'static str {
        self.status.as_str()
    }
}

/// The progress of the VMs one wait is for.
pub struct StallWatch<T> {
    limit: Duration,
    /// Each VM's last reported state, and when it last changed.
    last: Vec<Option<(T, Instant)>>,
}

/// A VM that made no progress for the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// Its index among the VMs.
    pub vm: usize,
    pub status: String,
    pub idle: Duration,
}

impl<T: Reported> StallWatch<T> {
    pub fn new(vms: usize, limit: Duration) -> StallWatch<T> {
        StallWatch { limit, last: vec![None; vms] }
    }

    /// Takes the VMs' latest states; `waited(i)` says whether the wait is
    /// still for VM `i` (one done, or waiting on the coordinator itself,
    /// need not progress). The first VM stalled for the limit, if any.
    pub fn observe(&mut self, states: &[T], waited: impl Fn(usize) -> bool) -> Option<Stalled> {
        self.observe_at(states, waited, Instant::now())
    }

    fn observe_at(&mut self, states: &[T], waited: impl Fn(usize) -> bool, now: Instant) -> Option<Stalled> {
        let mut stalled = None;
        for (i, state) in states.iter().enumerate() {
            if !waited(i) {
                self.last[i] = None;
                continue;
            }
            match &self.last[i] {
                Some((seen, since)) if seen == state => {
                    let idle = now.duration_since(*since);
                    if idle >= self.limit && stalled.is_none() {
                        let status = state.status_name().to_owned();
                        stalled = Some(Stalled { vm: i, status, idle });
                    }
                }
                _ => self.last[i] = Some((state.clone(), now)),
            }
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use mekha_ckpt_core::session::checkpoint::{Info, Status};

    use super::*;

    fn state(status: Status, written_bytes: u64) -> Info {
        Info { status, written_bytes, ..Info::default() }
    }

    #[test]
    fn a_vm_whose_state_stands_still_for_the_limit_is_stalled() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut watch = StallWatch::new(2, s(10));
        let a = state(Status::Persisting, 1);
        let b = state(Status::Persisting, 5);
        assert_eq!(watch.observe_at(&[a.clone(), b.clone()], |_| true, t0), None);
        // VM 1 writes on; VM 0 stands still, not yet for the limit.
        let b2 = state(Status::Persisting, 9);
        assert_eq!(watch.observe_at(&[a.clone(), b2.clone()], |_| true, t0 + s(9)), None);
        let stalled = watch.observe_at(&[a.clone(), b2.clone()], |_| true, t0 + s(10)).unwrap();
        assert_eq!(stalled, Stalled { vm: 0, status: "persisting".into(), idle: s(10) });
        // VM 1 has stood still since t0 + 9 s only.
        assert_eq!(watch.observe_at(&[a.clone(), b2.clone()], |i| i == 1, t0 + s(18)), None);
    }

    #[test]
    fn a_vm_not_waited_for_starts_afresh_when_waited_for_again() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut watch = StallWatch::new(1, s(10));
        let staged = state(Status::Staged, 0);
        assert_eq!(watch.observe_at(std::slice::from_ref(&staged), |_| false, t0), None);
        // Released for writing 20 s later: its idle time counts from then.
        assert_eq!(watch.observe_at(std::slice::from_ref(&staged), |_| true, t0 + s(20)), None);
        assert_eq!(watch.observe_at(std::slice::from_ref(&staged), |_| true, t0 + s(29)), None);
        assert!(watch.observe_at(&[staged], |_| true, t0 + s(30)).is_some());
    }
}
