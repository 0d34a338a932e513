// SPDX-License-Identifier: GPL-2.0-or-later
//! Helpers shared by the system tests.

use std::path::PathBuf;

use mekha_rig::Artifacts;

/// A fresh directory for one test's VMs (QMP sockets, serial logs, QEMU's
/// stderr), kept after the run so a failure can be read.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("MEKHA_TARGET_DIR")).join("system-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the test directory");
    dir
}

/// The artefacts ci/build made; the system tests need them and root.
pub fn artifacts() -> Artifacts {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the system tests need root (network namespaces, taps)");
    Artifacts::locate().expect("locating the patched QEMU and the guest rig")
}
