// SPDX-License-Identifier: GPL-2.0-or-later
//! Cluster spec files (`mekha up --spec`) for VMs booting the guest probe:
//! what the demo and the spec-mode tests hand to the `mekha` CLI.

use std::path::Path;

use crate::Artifacts;

/// One `[[vm]]` of a spec.
#[derive(Debug, Clone)]
pub struct SpecVm {
    pub name: String,
    pub memory_mib: u32,
    /// Kernel command line words for the guest probe.
    pub probe_args: Vec<String>,
    /// Where the guest's serial console (the probe's events) goes.
    pub serial: std::path::PathBuf,
    pub mac: String,
    /// The `[[host]]` it runs on; none: the coordinator's.
    pub host: Option<String>,
}

impl SpecVm {
    /// `[[vm]]` with this build's kernel and guest, under TCG, one NIC.
    pub fn toml(&self, artifacts: &Artifacts) -> String {
        let append = crate::vm::kernel_append(&self.probe_args);
        let args: Vec<String> = [
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-no-user-config",
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            "1",
            "-kernel",
            &path(&artifacts.kernel),
            "-initrd",
            &path(&artifacts.initrd),
            "-append",
            &append,
            "-chardev",
            &format!("file,id=serial0,path={},append=on", self.serial.display()),
            "-serial",
            "chardev:serial0",
        ]
        .iter()
        .map(|a| format!("{a:?}"))
        .collect();
        let host = self.host.as_ref().map(|h| format!("host = {h:?}\n")).unwrap_or_default();
        format!(
            "\n[[vm]]\nname = {:?}\nargs = [{}]\nnic = {{ mac = {:?} }}\n{host}",
            self.name,
            args.join(", "),
            self.mac
        )
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
