// SPDX-License-Identifier: GPL-2.0-or-later

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::*;

fn args(json: &str) -> Result<Args, String> {
    serde_json::from_str(json).map_err(|e| e.to_string())
}

fn params(json: &str) -> Result<Params, String> {
    Params::from_args(&args(json)?).map_err(|e| {
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
        e.message
    })
}

#[test]
fn arguments_take_their_defaults() {
    let p = params(r#"{"path": "/ckpt/vm.mekha"}"#).unwrap();
    assert_eq!(p.mtd.epoch, Duration::from_secs(3));
    assert_eq!(p.mtd.live_budget, Duration::from_secs(10));
    assert_eq!((p.mtd.dirty_per_cycle, p.mtd.clean_per_cycle), (50, 50));
    assert_eq!((p.staging_budget, p.lease, p.persist_hold, p.mtd.hold), (None, None, false, false));
}

#[test]
fn bad_arguments_are_refused_with_their_name() {
    let cases = [
        (r#"{"path": "/i", "epoch-ms": 0}"#, "epoch-ms must be positive"),
        (r#"{"path": "/i", "dirty-share": 0, "clean-share": 0}"#, "dirty-share and clean-share cannot both be 0"),
        (r#"{"path": "/i", "staging-mib": 0}"#, "staging-mib must be positive"),
        // 2^44 MiB << 20 wraps to 0.
        (r#"{"path": "/i", "staging-mib": 17592186044416}"#, "staging-mib is too large"),
        (r#"{"path": "/i", "lease-ms": 0}"#, "lease-ms must be positive"),
    ];
    for (json, error) in cases {
        assert_eq!(params(json).unwrap_err(), error, "{json}");
    }
    assert!(params(r#"{"path": "/i", "mode": "fast"}"#).unwrap_err().contains("unknown variant `fast`"));
    assert!(params(r#"{"path": "/i", "leese-ms": 5}"#).unwrap_err().contains("unknown field `leese-ms`"));
}

#[test]
fn a_held_live_phase_always_has_a_lease() {
    let held = params(r#"{"path": "/i", "hold": true, "time-budget-ms": 7000}"#).unwrap();
    assert_eq!(held.lease, Some(Duration::from_secs(7)));
    let leased = params(r#"{"path": "/i", "hold": true, "lease-ms": 500}"#).unwrap();
    assert_eq!(leased.lease, Some(Duration::from_millis(500)));
}

#[test]
fn end_args_are_checked() {
    let now = 1_000_000_000_000;
    EndArgs::default().check(now).unwrap();
    EndArgs { stop_at: Some(now + 1), cut: None }.check(now).unwrap();
    let far = EndArgs { stop_at: Some(now + 120_000_000_000), cut: None };
    assert!(far.check(now).unwrap_err().message.starts_with("stop-at is more than 60 s ahead"));
    let peers = |netdev: &str| NetdevPeers { netdev: netdev.into(), macs: vec!["52:54:00:00:00:01".parse().unwrap()] };
    let cut = |netdevs: &[&str]| Some(NetCut { id: 1, peers: netdevs.iter().map(|n| peers(n)).collect() });
    EndArgs { stop_at: None, cut: cut(&["net0", "net1"]) }.check(now).unwrap();
    let twice = EndArgs { stop_at: None, cut: cut(&["net0", "net1", "net0"]) };
    assert_eq!(twice.check(now).unwrap_err(), Error::invalid_argument("cut: netdev \"net0\" is named twice"));
}

/// A session and how many status changes it reported.
fn session(lease: Option<Duration>) -> (Session, Arc<AtomicUsize>) {
    let events = Arc::new(AtomicUsize::new(0));
    let counted = events.clone();
    let info = Info { status: Status::Live, ..Info::default() };
    let on_status = Box::new(move |_: &Info| {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    (Session::new(info, lease, on_status), events)
}

#[test]
fn status_changes_are_reported_progress_alone_is_not() {
    let (s, events) = session(None);
    s.update(|i| i.copied_pages += 10);
    assert_eq!(events.load(Ordering::Relaxed), 0);
    s.update(|i| i.status = Status::Paused);
    s.update(|i| i.pause_ns = 5);
    assert_eq!(events.load(Ordering::Relaxed), 1);
    assert_eq!(s.info().status, Status::Paused);
}

#[test]
fn the_live_phase_ends_once_and_only_while_live() {
    let (s, _) = session(None);
    let now = 1_000_000_000_000;
    let end = EndArgs { stop_at: Some(now + 50_000_000), cut: Some(NetCut { id: 9, peers: Vec::new() }) };
    s.request_end(end.clone(), now).unwrap();
    assert!(s.end_requested());
    assert_eq!(s.end_args(), end);
    assert_eq!(s.info().stop_at_ns, end.stop_at);
    assert_eq!(s.request_end(end, now).unwrap_err(), Error::wrong_status("no checkpoint is in its live phase"));
    let (staged, _) = session(None);
    staged.update(|i| i.status = Status::Staged);
    assert!(staged.request_end(EndArgs::default(), now).is_err());
    // A bad instant changes nothing.
    let (live, _) = session(None);
    assert!(live.request_end(EndArgs { stop_at: Some(now + 120_000_000_000), cut: None }, now).is_err());
    assert!(!live.end_requested());
}

#[test]
fn cancel_is_refused_while_the_vm_is_stopped() {
    for (status, allowed) in [
        (Status::Live, true),
        (Status::Paused, false),
        (Status::Capturing, false),
        (Status::Staged, true),
        (Status::Persisting, false),
        (Status::Completed, false),
        (Status::Failed, false),
    ] {
        let (s, _) = session(None);
        s.update(|i| i.status = status);
        assert_eq!(s.cancel().is_ok(), allowed, "{status:?}");
        assert_eq!(s.abandoned() == Some(Abandon::Cancelled), allowed, "{status:?}");
    }
}

#[test]
fn a_silent_coordinator_loses_its_lease_and_a_word_renews_it() {
    let (s, _) = session(Some(Duration::from_millis(40)));
    assert_eq!(s.abandoned(), None);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(20));
        s.heard();
        assert_eq!(s.abandoned(), None);
    }
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(s.abandoned(), Some(Abandon::LeaseExpired));
    let (unleased, _) = session(None);
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(unleased.abandoned(), None);
}

#[test]
fn persist_is_released_only_for_an_active_checkpoint() {
    let (s, _) = session(None);
    s.update(|i| i.status = Status::Staged);
    s.release_persist().unwrap();
    assert!(s.persist_released());
    let (done, _) = session(None);
    done.update(|i| i.status = Status::Completed);
    assert_eq!(done.release_persist().unwrap_err(), Error::wrong_status("no checkpoint is running"));
}

#[test]
fn a_command_wakes_a_waiting_worker_at_once() {
    let (s, _) = session(None);
    s.update(|i| i.status = Status::Staged);
    let s = Arc::new(s);
    let waiter = {
        let s = s.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            // Far longer than the test may take: only the command ends it.
            let released = s.wait_until(Duration::from_secs(600), Session::persist_released);
            (released, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    s.release_persist().unwrap();
    let (released, waited) = waiter.join().unwrap();
    assert!(released && waited < Duration::from_secs(60), "{released} after {waited:?}");
    // Already true: no wait at all; never true: back after `at_most`.
    assert!(s.wait_until(Duration::from_secs(600), Session::persist_released));
    assert!(!s.wait_until(Duration::from_millis(10), Session::end_requested));
}

#[test]
fn a_wait_for_the_coordinator_ends_at_its_command_or_its_lease() {
    // A silent coordinator: the wait ends once the lease runs out, with
    // no command to wake it.
    let (s, _) = session(Some(Duration::from_millis(40)));
    let settled = |s: &Session| s.end_requested() || s.abandoned().is_some();
    s.wait_for(settled);
    assert_eq!(s.abandoned(), Some(Abandon::LeaseExpired));
    // Without a lease only the command ends it.
    let (s, _) = session(None);
    let s = Arc::new(s);
    let waiter = {
        let s = s.clone();
        std::thread::spawn(move || s.wait_for(|s| s.end_requested() || s.abandoned().is_some()))
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished());
    s.request_end(EndArgs::default(), 1_000_000_000_000).unwrap();
    waiter.join().unwrap();
    assert!(s.end_requested() && s.abandoned().is_none());
}

#[test]
fn a_lease_tells_how_long_it_has_left() {
    let start = Instant::now();
    let mut lease = Lease::new(Duration::from_millis(40), start);
    assert_eq!(lease.left(start), Duration::from_millis(40));
    assert_eq!(lease.left(start + Duration::from_millis(30)), Duration::from_millis(10));
    // Due or past: a millisecond, so that a wait ends past the instant.
    assert_eq!(lease.left(start + Duration::from_millis(40)), Duration::from_millis(1));
    assert_eq!(lease.left(start + Duration::from_secs(9)), Duration::from_millis(1));
    lease.heard(start + Duration::from_millis(30));
    assert_eq!(lease.left(start + Duration::from_millis(40)), Duration::from_millis(30));
}

#[test]
fn status_names_are_the_schema_names() {
    for status in [Status::None, Status::Live, Status::Paused, Status::Capturing, Status::Staged, Status::Persisting]
        .into_iter()
        .chain([Status::Completed, Status::Failed])
    {
        assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
    }
    for mode in [Mode::Auto, Mode::Mtd, Mode::Cow] {
        assert_eq!(serde_json::to_value(mode).unwrap(), mode.as_str());
    }
}
