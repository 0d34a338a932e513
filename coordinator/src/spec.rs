// SPDX-License-Identifier: GPL-2.0-or-later
//! A cluster spec file (TOML): the VMs of a batch job, their QEMU
//! arguments, their private network, where checkpoints go, and how.
//!
//! ```toml
//! name = "job42"
//! checkpoint_dir = "/scratch/job42/ckpt"     # relative paths: to this file
//! state_dir = "/run/mekha/job42"              # sockets, logs, pids (default: <checkpoint_dir>/../<name>.state)
//! qemu = "/usr/bin/qemu-system-x86_64"        # default: qemu-system-x86_64 on PATH
//!
//! tls_dir = "/etc/mekha/tls"                  # for agents (default: $MEKHA_TLS_DIR or /etc/mekha/tls)
//! key_file = "/etc/mekha/job42.key"           # optional: seal images and manifests under this
//!                                             # image key (`mekha key new`); restarts then refuse
//!                                             # what does not hold under it
//!
//! [network]                                   # optional: one L2 segment for all VMs
//! namespace = "job42"                         # network namespace the QEMUs run in (created if missing;
//!                                             # none: the host's own)
//! bridge = "br0"                              # bridge inside it (created if missing)
//!
//! [checkpoint]                                # all optional
//! mode = "auto"                               # auto | cow | mtd
//! time_budget_ms = 10000
//! staging_mib = 512
//! lease_ms = 5000                             # also the restart's
//! persist_concurrency = 2
//! progress_timeout_ms = 60000                 # a VM stuck this long fails it (and the restart)
//! allow_writable_disks = false                # true: leave disks out, snapshot them yourself (docs/disks.md)
//!
//! [restore]
//! time = "continue"                           # continue | host | catch-up
//! catch_up_ppm = 50000                        # with catch-up: 5% faster than the host
//!
//! [[vm]]
//! name = "node0"
//! args = ["-accel", "kvm", "-m", "4096", "-drive", "file=node0.img,if=virtio,readonly=on"]
//! nic = { mac = "52:54:00:00:00:10" }         # a virtio-net NIC on the bridge (needs [network])
//! host = "n1"                                 # optional: runs on that [[host]] (default: here)
//!
//! [[host]]                                    # another host, reached through its `mekha agent`
//! name = "n1"
//! agent = "n1.cluster:7441"                   # HOST[:PORT]; its TLS certificate must name HOST
//! ```
//!
//! mekha adds to each VM's arguments what it must own: `-name`, a QMP
//! socket in the state directory, the NIC's tap, and `-incoming defer` on
//! restart; the spec's arguments must not set those.
//!
//! On another host, a VM's agent runs it with the same paths (QEMU, disks,
//! checkpoint directory: on a filesystem all hosts share, or, where a host
//! does not share it, that host's own copy keeping its part; see
//! `parts`), its state in `STATE_DIR/HOST/`, and its NIC on that host's
//! bridge: joining the hosts' bridges into one segment (a physical uplink,
//! VXLAN) is the site's network, not mekha's.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ckpt::{CaptureMode, TimePolicy, MIN_LEASE_MS};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    pub checkpoint_dir: PathBuf,
    pub state_dir: Option<PathBuf>,
    #[serde(default = "default_qemu")]
    pub qemu: PathBuf,
    pub tls_dir: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub network: Option<NetworkSpec>,
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    #[serde(default)]
    pub restore: RestoreSpec,
    #[serde(rename = "vm", default)]
    pub vms: Vec<VmSpec>,
    #[serde(rename = "host", default)]
    pub hosts: Vec<HostSpec>,
}

/// A host other than this one, and its agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub name: String,
    pub agent: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub namespace: Option<String>,
    #[serde(default = "default_bridge")]
    pub bridge: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    pub mode: Option<SpecMode>,
    pub time_budget_ms: Option<u64>,
    pub staging_mib: Option<u64>,
    pub lease_ms: Option<u64>,
    pub persist_concurrency: Option<usize>,
    pub progress_timeout_ms: Option<u64>,
    pub allow_writable_disks: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    pub time: Option<SpecTime>,
    pub catch_up_ppm: Option<u32>,
}

/// [`CaptureMode`] as the spec spells it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpecMode {
    Auto,
    Mtd,
    Cow,
}

impl From<SpecMode> for CaptureMode {
    fn from(m: SpecMode) -> CaptureMode {
        match m {
            SpecMode::Auto => CaptureMode::Auto,
            SpecMode::Mtd => CaptureMode::Mtd,
            SpecMode::Cow => CaptureMode::Cow,
        }
    }
}

/// [`TimePolicy`] as the spec spells it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpecTime {
    Continue,
    Host,
    CatchUp,
}

impl From<SpecTime> for TimePolicy {
    fn from(t: SpecTime) -> TimePolicy {
        match t {
            SpecTime::Continue => TimePolicy::Continue,
            SpecTime::Host => TimePolicy::Host,
            SpecTime::CatchUp => TimePolicy::CatchUp,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub nic: Option<NicSpec>,
    pub host: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    pub mac: String,
    /// QEMU NIC model (default virtio-net-pci).
    #[serde(default = "default_nic_model")]
    pub model: String,
}

/// Names mekha puts in file and interface names.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Names of VMs or hosts: plain, not hidden files, unique.
fn check_names<'a>(names: impl Iterator<Item = &'a str>, what: &str, plural: &str) -> Result<(), String> {
    let mut seen = HashSet::new();
    for name in names {
        if !plain(name) || name.starts_with('.') {
            return Err(format!("{what} name {name:?}: use letters, digits, '-', '_' and '.'"));
        }
        if !seen.insert(name) {
            return Err(format!("two {plural} are named {name}"));
        }
    }
    Ok(())
}

fn default_qemu() -> PathBuf {
    PathBuf::from("qemu-system-x86_64")
}

fn default_bridge() -> String {
    "br0".into()
}

fn default_nic_model() -> String {
    "virtio-net-pci".into()
}

/// Options mekha owns on every VM's command line.
const RESERVED: &[&str] = &["-name", "-qmp", "-incoming", "-daemonize", "-pidfile"];

impl Spec {
    /// Reads and checks a spec; relative paths become relative to the
    /// spec file's directory.
    pub fn load(path: &Path) -> Result<Spec, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading spec {}: {e}", path.display()))?;
        let mut spec: Spec = toml::from_str(&text).map_err(|e| format!("spec {}: {e}", path.display()))?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = base.canonicalize().map_err(|e| format!("spec {}: {e}", path.display()))?;
        spec.checkpoint_dir = base.join(&spec.checkpoint_dir);
        spec.state_dir =
            Some(base.join(spec.state_dir.clone().unwrap_or_else(|| {
                spec.checkpoint_dir.parent().unwrap_or(&base).join(format!("{}.state", spec.name))
            })));
        if spec.qemu.components().count() > 1 {
            spec.qemu = base.join(&spec.qemu);
        }
        spec.tls_dir = spec.tls_dir.map(|d| base.join(d));
        spec.key_file = spec.key_file.map(|f| base.join(f));
        spec.check().map_err(|e| format!("spec {}: {e}", path.display()))?;
        Ok(spec)
    }

    /// Checks names, reserved options and references; every spec from
    /// outside (a file, an agent's request) passes here before use.
    pub fn check(&self) -> Result<(), String> {
        if !plain(&self.name) {
            return Err(format!("name {:?}: use letters, digits, '-', '_' and '.'", self.name));
        }
        if self.vms.is_empty() {
            return Err("no [[vm]]".into());
        }
        check_names(self.vms.iter().map(|vm| vm.name.as_str()), "VM", "VMs")?;
        check_names(self.hosts.iter().map(|h| h.name.as_str()), "host", "[[host]]")?;
        for vm in &self.vms {
            if let Some(arg) = vm.args.iter().find(|a| RESERVED.contains(&a.as_str())) {
                return Err(format!("VM {}: {arg} is set by mekha, remove it from args", vm.name));
            }
            if vm.nic.is_some() && self.network.is_none() {
                return Err(format!("VM {} has a nic but the spec has no [network]", vm.name));
            }
            if let Some(host) = &vm.host {
                if !self.hosts.iter().any(|h| &h.name == host) {
                    return Err(format!("VM {} runs on host {host}, which no [[host]] names", vm.name));
                }
            }
        }
        if self.checkpoint.lease_ms.is_some_and(|ms| ms < MIN_LEASE_MS) {
            return Err(format!(
                "checkpoint: lease_ms must be at least {MIN_LEASE_MS} (the coordinator polls every 20 ms)"
            ));
        }
        if self.checkpoint.progress_timeout_ms == Some(0) {
            return Err("checkpoint: progress_timeout_ms must be positive".into());
        }
        if let Some(net) = &self.network {
            let bad_namespace = net.namespace.as_deref().is_some_and(|n| !plain(n));
            if bad_namespace || !plain(&net.bridge) || net.bridge.len() > 15 {
                return Err("network: namespace and bridge must be plain names (bridge at most 15 characters)".into());
            }
        }
        Ok(())
    }

    /// The host VM `vm` runs on; `None`: this one.
    pub fn host_of(&self, vm: &VmSpec) -> Option<&HostSpec> {
        vm.host.as_ref().and_then(|name| self.hosts.iter().find(|h| &h.name == name))
    }

    /// The part of the spec one host runs (`None`: this one): its VMs, and
    /// on another host its own state directory, `STATE_DIR/HOST`.
    pub fn for_host(&self, host: Option<&HostSpec>) -> Spec {
        let mut part = self.clone();
        part.vms.retain(|vm| vm.host.as_deref() == host.map(|h| h.name.as_str()));
        // On its host, a part's VMs run here: a spec of its own, which
        // passes `check` as the agent receiving it checks it.
        for vm in &mut part.vms {
            vm.host = None;
        }
        part.hosts.clear();
        part.state_dir = Some(self.host_state_dir(host));
        part
    }

    /// Every host with VMs (`None`: this one), each with its part.
    pub fn parts(&self) -> Vec<(Option<&HostSpec>, Spec)> {
        let mut parts = Vec::new();
        if self.vms.iter().any(|vm| vm.host.is_none()) {
            parts.push((None, self.for_host(None)));
        }
        for host in &self.hosts {
            if self.vms.iter().any(|vm| vm.host.as_deref() == Some(host.name.as_str())) {
                parts.push((Some(host), self.for_host(Some(host))));
            }
        }
        parts
    }

    /// Every VM's [`qmp_endpoint`](Self::qmp_endpoint), in spec order.
    pub fn qmp_endpoints(&self) -> Vec<PathBuf> {
        self.vms.iter().map(|vm| self.qmp_endpoint(vm)).collect()
    }

    /// How the coordinator reaches the spec's agents.
    pub fn reach(&self) -> crate::transport::Reach {
        crate::transport::Reach { ssh_options: Vec::new(), tls_dir: self.tls_dir.clone() }
    }

    /// Where the coordinator reaches VM `vm`'s QMP socket: a path here, or
    /// `mekha://AGENT/PATH` on another host.
    pub fn qmp_endpoint(&self, vm: &VmSpec) -> PathBuf {
        match self.host_of(vm) {
            None => self.qmp_path(&vm.name),
            Some(host) => {
                let socket = qmp_socket(&self.host_state_dir(Some(host)), &vm.name);
                PathBuf::from(format!("mekha://{}{}", host.agent, socket.display()))
            }
        }
    }

    /// Where a host's part keeps its state: `STATE_DIR/HOST` on another
    /// host, the state directory itself here.
    fn host_state_dir(&self, host: Option<&HostSpec>) -> PathBuf {
        match host {
            Some(h) => self.state_dir().join(&h.name),
            None => self.state_dir().to_owned(),
        }
    }

    pub fn state_dir(&self) -> &Path {
        self.state_dir.as_deref().expect("set by load")
    }

    /// The QMP socket mekha gives VM `name`.
    pub fn qmp_path(&self, name: &str) -> PathBuf {
        qmp_socket(self.state_dir(), name)
    }
}

/// VM `name`'s QMP socket in state directory `dir`.
fn qmp_socket(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.qmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Spec, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, text).unwrap();
        Spec::load(&path)
    }

    #[test]
    fn a_full_spec_loads_with_paths_made_absolute() {
        let spec = load(
            r#"
            name = "job42"
            checkpoint_dir = "ckpt"
            qemu = "bin/qemu"
            [network]
            namespace = "job42"
            [checkpoint]
            mode = "cow"
            lease_ms = 3000
            [restore]
            time = "catch-up"
            [[vm]]
            name = "node0"
            args = ["-m", "256"]
            nic = { mac = "52:54:00:00:00:10" }
            [[vm]]
            name = "node1"
            host = "n2"
            [[host]]
            name = "n2"
            agent = "10.0.0.2:7441"
            "#,
        )
        .unwrap();
        assert!(spec.checkpoint_dir.is_absolute() && spec.checkpoint_dir.ends_with("ckpt"));
        assert!(spec.state_dir().ends_with("job42.state"));
        assert!(spec.qemu.is_absolute());
        assert_eq!(spec.network.as_ref().unwrap().bridge, "br0");
        assert_eq!(spec.vms[0].nic.as_ref().unwrap().model, "virtio-net-pci");
        assert!(spec.qmp_path("node1").ends_with("job42.state/node1.qmp"));
        let state = spec.state_dir().display().to_string();
        assert_eq!(spec.qmp_endpoint(&spec.vms[0]), spec.qmp_path("node0"));
        assert_eq!(
            spec.qmp_endpoint(&spec.vms[1]).to_string_lossy(),
            format!("mekha://10.0.0.2:7441{state}/n2/node1.qmp")
        );
        let parts = spec.parts();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].1.vms.len(), 1);
        assert_eq!(parts[1].1.vms[0].name, "node1");
        assert_eq!(parts[1].0.unwrap().name, "n2");
        // What an agent receives reads back as the same spec, and passes
        // the check the agent makes of it.
        let sent: Spec = serde_json::from_str(&serde_json::to_string(&parts[1].1).unwrap()).unwrap();
        assert_eq!(sent.state_dir(), parts[1].1.state_dir());
        for (_, part) in &parts {
            part.check().unwrap();
        }
    }

    #[test]
    fn mistakes_are_named() {
        let base = "name = \"j\"\ncheckpoint_dir = \"c\"\n";
        for (extra, expected) in [
            ("", "no [[vm]]"),
            ("[[vm]]\nname = \"a\"\n[[vm]]\nname = \"a\"\n", "two VMs are named a"),
            ("[[vm]]\nname = \"a\"\nargs = [\"-qmp\", \"x\"]\n", "-qmp is set by mekha"),
            ("[[vm]]\nname = \"a\"\nnic = { mac = \"52:54:00:00:00:01\" }\n", "no [network]"),
            ("[[vm]]\nname = \"a b\"\n", "VM name"),
            ("[[vm]]\nname = \"a\"\nmemory = 5\n", "unknown field"),
            ("[[vm]]\nname = \"a\"\nhost = \"h\"\n", "no [[host]] names"),
        ] {
            let err = load(&format!("{base}{extra}")).unwrap_err();
            assert!(err.contains(expected), "{err} lacks {expected}");
        }
    }
}
