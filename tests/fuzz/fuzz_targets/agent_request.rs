// SPDX-License-Identifier: GPL-2.0-or-later
//! A request line as an agent reads it (`Request::from_line`), then
//! authorized for each client role as the agent authorizes it
//! (`Policy::authorize`). What the agent accepts, sent again, reads the
//! same; what it authorizes names only paths inside its roots, with no
//! `..` to leave them.

#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mekha_coordinator::agent::{Policy, Request};
use mekha_coordinator::qmp::json_line;
use mekha_coordinator::tls::{Identity, Role};

/// The seeds' paths: VMs' state under /run/mekha, checkpoints under
/// /scratch, the QEMU of docs/cli.md's spec.
const STATE_ROOT: &str = "/run/mekha";
const CHECKPOINT_ROOT: &str = "/scratch";
static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::new(&[STATE_ROOT.into()], &[CHECKPOINT_ROOT.into()], &["/usr/bin/qemu-system-x86_64".into()])
        .expect("a policy")
});

fuzz_target!(|data: &[u8]| {
    let Ok(request) = Request::from_line(data) else { return };
    let line = json_line(&request);
    let again = Request::from_line(&line).expect("an accepted request, sent again");
    assert_eq!(json_line(&again), line);

    for role in [None, Some(Role::Monitor), Some(Role::Operator), Some(Role::Admin)] {
        let client = Identity {
            name: "fuzz".into(),
            serial: "1".into(),
            role,
            hosts: Vec::new(),
            not_before: 0,
            not_after: i64::MAX,
        };
        if POLICY.authorize(&client, &request).is_ok() {
            for (path, root) in reached(&request) {
                let plain = path.components().all(|c| !matches!(c, Component::ParentDir | Component::CurDir));
                assert!(plain && path.starts_with(root), "{} authorized outside {root}", path.display());
            }
        }
    }
});

/// The paths a request has the agent reach, each with the root it must
/// lie in.
fn reached(request: &Request) -> Vec<(PathBuf, &'static str)> {
    match request {
        Request::Storage { dir }
        | Request::PartBegin { dir, .. }
        | Request::PartSeal { dir, .. }
        | Request::PartAbort { dir, .. }
        | Request::PartCheck { dir, .. } => vec![(dir.clone(), CHECKPOINT_ROOT)],
        Request::Qmp { socket } => vec![(socket.clone(), STATE_ROOT)],
        Request::Launch { spec, .. } | Request::Stop { spec, .. } | Request::Status { spec } => {
            let state = spec.state_dir.clone().unwrap_or_default();
            let mut paths = vec![(state.clone(), STATE_ROOT)];
            // What the agent writes for each VM: its QMP socket, log, pid file.
            paths.extend(spec.vms.iter().map(|vm| (Path::new(&state).join(&vm.name), STATE_ROOT)));
            paths
        }
    }
}
