// SPDX-License-Identifier: GPL-2.0-or-later
//! Build script of the system tests: tells them where ci/build leaves its
//! artefacts, and warns early when they are missing.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    println!("cargo:rustc-env=MEKHA_TARGET_DIR={}", target.display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    for artefact in ["qemu/bin/qemu-system-x86_64", "guest/vmlinuz", "guest/initrd.img"] {
        let path = target.join(artefact);
        if !path.exists() {
            println!("cargo:warning={} is missing: the system tests need ci/build to run first", path.display());
        }
    }
}
