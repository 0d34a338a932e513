// SPDX-License-Identifier: GPL-2.0-or-later
//! The README's main command does what it says: `mekha-demo` (run by
//! `ci/demo`) takes its embedded 3-VM cluster through `mekha up`,
//! `checkpoint`, a kill of every QEMU, `restart` and `down` in spec mode,
//! and checks that the job went on with nothing lost.

mod common;

use std::path::Path;

#[test]
fn the_main_job_checkpoints_and_restarts_a_cluster_end_to_end() {
    let _artifacts = common::artifacts();
    let dir = common::test_dir("demo");
    let demo = Path::new(env!("MEKHA_TARGET_DIR")).join("release/mekha-demo");
    let out = std::process::Command::new(&demo).arg(&dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for expected in
        ["$ mekha up", "$ mekha checkpoint", "$ mekha restart", "$ mekha down", "nothing lost, same results"]
    {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    // Down removed the network and the VMs.
    let netns = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains("mekha-demo"), "the demo's namespace is left");
}
