// SPDX-License-Identifier: GPL-2.0-or-later
//! Generates the Rust side of the QEMU boundary from `include/mekha.h`, the
//! single source of truth, and stamps the build with an identifier.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let header = "include/mekha.h";
    println!("cargo:rerun-if-changed={header}");
    println!("cargo:include={}", PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include").display());

    let bindings = bindgen::Builder::default()
        .header(header)
        .allowlist_function("mekha_.*")
        .allowlist_type("Mekha.*")
        .allowlist_var("MEKHA_.*")
        .rustified_enum("MekhaStatus")
        .rustified_enum("MekhaEvent")
        .rustified_enum("MekhaReport")
        .rustified_enum("MekhaNetVerdict")
        .use_core()
        .generate_comments(true)
        .layout_tests(true)
        .generate()
        .expect("bindgen failed on include/mekha.h");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("mekha_h.rs");
    bindings.write_to_file(&out).expect("writing bindings");

    println!("cargo:rustc-env=MEKHA_BUILD_ID={}", build_id());
    for path in ["../.git/HEAD", "../.git/refs/heads"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// Source revision and profile, e.g. `1a2b3c4d5e6f-release`.
fn build_id() -> String {
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let profile = std::env::var("PROFILE").unwrap_or_default();
    format!("{rev}-{profile}")
}
