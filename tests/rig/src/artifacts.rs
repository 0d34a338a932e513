// SPDX-License-Identifier: GPL-2.0-or-later
//! Where ci/build leaves what the tests run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::probe::{parse_line, ProbeEvent};

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
    /// host by the same probe binary: what an uninterrupted run gives.
    pub fn reference_checksum(&self, steps: u64, chunk: u64) -> Result<String> {
        let done = self.run_probe_computation(steps, chunk, |_| {})?;
        Ok(done.str("checksum").unwrap_or("?").to_owned())
    }

    /// The probe's checksum at every chunk boundary up to `steps`, by
    /// step, from the same host run.
    pub fn reference_checksums(&self, steps: u64, chunk: u64) -> Result<BTreeMap<u64, String>> {
        let mut sums = BTreeMap::new();
        self.run_probe_computation(steps, chunk, |e| {
            if let (Some(step), Some(sum)) = (e.u64("step"), e.str("checksum")) {
                sums.insert(step, sum.to_owned());
            }
        })?;
        Ok(sums)
    }

    /// Runs the probe's computation on the host, giving every `compute`
    /// event to `on_compute`; returns its `compute_done` event. The probe
    /// runs in a network namespace of its own: it binds its port, which a
    /// probe of another test may hold on the host.
    fn run_probe_computation(
        &self,
        steps: u64,
        chunk: u64,
        mut on_compute: impl FnMut(&ProbeEvent),
    ) -> Result<ProbeEvent> {
        use std::io::BufRead;
        let mut child = std::process::Command::new("unshare")
            .arg("--net")
            .arg(&self.probe)
            .args(["--cmdline", &format!("probe.compute={steps} probe.compute_chunk={chunk} probe.clock_ms=0")])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut done = None;
        for line in lines.map_while(std::result::Result::ok) {
            let Some(e) = parse_line(&line) else { continue };
            match e.ev.as_str() {
                "compute" => on_compute(&e),
                "compute_done" => {
                    done = Some(e);
                    break;
                }
                _ => {}
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        done.ok_or_else(|| anyhow::anyhow!("the probe on the host reported no result"))
    }

    /// The artefacts under the workspace's target directory (or
    /// `$CARGO_TARGET_DIR`); `$MEKHA_QEMU` overrides the QEMU binary.
    pub fn locate() -> Result<Artifacts> {
        let target = target_dir();
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

/// The workspace's target directory, or `$CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}
