// SPDX-License-Identifier: GPL-2.0-or-later
//! Where ci/build leaves what the tests run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Paths of the patched QEMU, the guest kernel and initramfs, and the CLI.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub mekha: PathBuf,
    /// The guest probe, a static binary that also runs on the host.
    pub probe: PathBuf,
}

impl Artifacts {
    /// The probe's checksum after `steps` steps of `chunk`, computed on the
    /// host by the same probe binary: what an uninterrupted run gives. The
    /// probe runs in a network namespace of its own: it binds its port,
    /// which a probe of another test may hold on the host.
    pub fn reference_checksum(&self, steps: u64, chunk: u64) -> Result<String> {
        use std::io::BufRead;
        let mut child = std::process::Command::new("unshare")
            .arg("--net")
            .arg(&self.probe)
            .args(["--cmdline", &format!("probe.compute={steps} probe.compute_chunk={chunk} probe.clock_ms=0")])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let done = lines.map_while(std::result::Result::ok).find(|l| l.contains("\"compute_done\""));
        let _ = child.kill();
        let _ = child.wait();
        let Some(done) = done else { bail!("the probe on the host reported no result") };
        let v: serde_json::Value = serde_json::from_str(&done[done.find('{').unwrap_or(0)..])?;
        Ok(v["checksum"].as_str().unwrap_or("?").to_owned())
    }

    /// The artefacts under the workspace's target directory (or
    /// `$CARGO_TARGET_DIR`); `$MEKHA_QEMU` overrides the QEMU binary.
    pub fn locate() -> Result<Artifacts> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        let qemu = std::env::var_os("MEKHA_QEMU")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("qemu/bin/qemu-system-x86_64"));
        let artifacts = Artifacts {
            qemu,
            kernel: target.join("guest/vmlinuz"),
            initrd: target.join("guest/initrd.img"),
            mekha: target.join("release/mekha"),
            probe: target.join("x86_64-unknown-linux-gnu/release/mekha-probe"),
        };
        for path in [&artifacts.qemu, &artifacts.kernel, &artifacts.initrd, &artifacts.mekha, &artifacts.probe] {
            if !path.exists() {
                bail!("{} is missing: run ci/build first (the README's test command does)", path.display());
            }
        }
        Ok(artifacts)
    }
}
