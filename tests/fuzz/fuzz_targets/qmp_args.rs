// SPDX-License-Identifier: GPL-2.0-or-later
//! The library's QMP arguments, as the library reads them (`COMMAND\nJSON`:
//! a command name, then the argument object QEMU hands over), through the
//! same checks (`mekha_ckpt_core::session`), and a checkpoint session
//! driven by what passed. What the checks accept keeps its promises: a
//! staging budget is whole MiB and not zero, a held live phase has a
//! lease, a restore's lease is for a restore left paused, a resume comes
//! after the stop.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mekha_ckpt_core::session::{checkpoint, restore};
use serde::de::DeserializeOwned;

/// The host's wall clock the instants are checked against: fixed, so that
/// a run repeats.
const NOW_NS: i64 = 1_800_000_000_000_000_000;

fn args<T: DeserializeOwned>(json: &[u8]) -> Option<T> {
    serde_json::from_slice(json).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(newline) = data.iter().position(|&b| b == b'\n') else { return };
    let (command, json) = (&data[..newline], &data[newline + 1..]);
    match command {
        b"checkpoint" => {
            let Some(a) = args::<checkpoint::Args>(json) else { return };
            let Ok(p) = checkpoint::Params::from_args(&a) else { return };
            assert!(!p.mtd.epoch.is_zero());
            assert!(p.mtd.dirty_per_cycle > 0 || p.mtd.clean_per_cycle > 0);
            if let Some(budget) = p.staging_budget {
                assert!(budget > 0 && budget % (1 << 20) == 0, "staging budget {budget}");
            }
            assert!(p.lease.is_none_or(|l| !l.is_zero()));
            assert!(!p.mtd.hold || p.lease.is_some(), "a held live phase without a lease");
        }
        b"checkpoint-end" => {
            let Some(end) = args::<checkpoint::EndArgs>(json) else { return };
            let info = checkpoint::Info { status: checkpoint::Status::Live, ..Default::default() };
            let session = checkpoint::Session::new(info, Some(Duration::from_secs(5)), Box::new(|_| {}));
            let accepted = session.request_end(end.clone(), NOW_NS).is_ok();
            assert_eq!(accepted, end.check(NOW_NS).is_ok());
            assert_eq!(session.end_requested(), accepted);
            if accepted {
                assert_eq!(session.end_args(), end);
                if let Some(cut) = &end.cut {
                    // Each NIC named once.
                    let mut netdevs: Vec<&str> = cut.peers.iter().map(|p| p.netdev.as_str()).collect();
                    netdevs.sort_unstable();
                    assert!(netdevs.windows(2).all(|w| w[0] != w[1]), "{cut:?}");
                }
                // Once only.
                assert!(session.request_end(end, NOW_NS).is_err());
            }
        }
        b"query-checkpoint" => {
            let _ = args::<checkpoint::QueryArgs>(json);
        }
        b"restore" => {
            let Some(a) = args::<restore::Args>(json) else { return };
            if let Ok(Some(lease)) = a.lease() {
                assert!(!a.starts() && !lease.is_zero());
            }
        }
        b"resume" => {
            let Some(r) = args::<restore::ResumeArgs>(json) else { return };
            if r.check(NOW_NS).is_ok() {
                assert!(r.at.is_none_or(|at| at <= NOW_NS + 60_000_000_000));
            }
        }
        b"query-restore" => {
            let _ = args::<restore::QueryArgs>(json);
        }
        _ => {}
    }
});
