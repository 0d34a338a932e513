// SPDX-License-Identifier: GPL-2.0-or-later
//! A private libvirtd for tests, as a site's libvirt would manage VMs.
//!
//! It runs inside a network namespace the test made (the taps it creates
//! land on that namespace's bridge) with its own configuration, state, log
//! and socket directories: `ip netns exec` gives it a mount namespace of
//! its own, where these are bind-mounted over libvirt's fixed paths, so it
//! never meets a system libvirtd. Its QEMUs run as root, unconfined and
//! without cgroups (the test machine may be a container), their output in
//! files (no virtlogd). Domains are transient: destroyed on drop, with the
//! daemon.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::vm::kernel_append;
use crate::Artifacts;

const LIBVIRTD: &str = "/usr/sbin/libvirtd";

const LIBVIRTD_CONF: &str = r#"unix_sock_group = "root"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_level = 3
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"#;

const QEMU_CONF: &str = r#"user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
"#;

/// libvirt's fixed directories, each backed by `DIR/<name>`.
const MOUNTS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
];

pub struct Libvirtd {
    child: Child,
    dir: PathBuf,
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if let Ok(out) = self.virsh(&["list", "--name"]) {
            for name in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.virsh(&["destroy", name]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Libvirtd {
    /// Starts a libvirtd in `netns`, its directories under `dir`, with the
    /// patched QEMU as the emulator it probes.
    pub fn start(netns: &Netns, dir: &Path, artifacts: &Artifacts) -> Result<Libvirtd> {
        let emulators = artifacts.qemu.parent().context("the QEMU binary's directory")?;
        let path = format!("{}:{}", emulators.display(), std::env::var("PATH").unwrap_or_default());
        let daemon = Libvirtd::spawn(netns, dir, &path)?;
        let out = daemon.virsh(&["version"])?;
        if !out.status.success() {
            bail!("libvirtd cannot use {}: {}", artifacts.qemu.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(daemon)
    }

    /// Starts a libvirtd as on a host without any QEMU: it answers, but
    /// its QEMU driver can run nothing.
    pub fn start_without_qemu(netns: &Netns, dir: &Path) -> Result<Libvirtd> {
        let empty = dir.join("no-emulators");
        std::fs::create_dir_all(&empty)?;
        // Only this directory: the test machine's own QEMU, if any, stays unseen.
        Libvirtd::spawn(netns, dir, &empty.to_string_lossy())
    }

    /// Starts libvirtd with `path` as its PATH and waits until it answers.
    fn spawn(netns: &Netns, dir: &Path, path: &str) -> Result<Libvirtd> {
        if !Path::new(LIBVIRTD).exists() {
            bail!("{LIBVIRTD} is missing: run ci/deps (libvirt-daemon, libvirt-daemon-driver-qemu)");
        }
        let mut script = String::from("set -e\n");
        for (name, target) in MOUNTS {
            std::fs::create_dir_all(dir.join(name))?;
            script += &format!("mkdir -p {target}\nmount --bind \"$0/{name}\" {target}\n");
        }
        // libvirt learns what it can run from the qemu-system-* binaries on
        // its PATH (a domain's <emulator> alone does not do): without one,
        // every hypervisor call fails with "Cannot find suitable emulator".
        script += &format!("exec env PATH=\"$1\" {LIBVIRTD} --pid-file /run/libvirt/libvirtd.pid\n");
        let etc = dir.join("etc");
        std::fs::write(etc.join("libvirtd.conf"), LIBVIRTD_CONF)?;
        std::fs::write(etc.join("qemu.conf"), QEMU_CONF)?;
        for client_conf in ["libvirt.conf", "libvirt-admin.conf"] {
            let system = Path::new("/etc/libvirt").join(client_conf);
            if system.exists() {
                std::fs::copy(&system, etc.join(client_conf))?;
            }
        }
        let child = netns
            .command("sh")
            .args(["-c", &script])
            .arg(dir)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("libvirtd.stderr"))?)
            .spawn()
            .context("starting libvirtd")?;
        let mut daemon = Libvirtd { child, dir: dir.to_owned() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // `uri` needs no working driver: the daemon answers.
            if daemon.virsh(&["uri"]).is_ok_and(|o| o.status.success()) {
                return Ok(daemon);
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("libvirtd.stderr")).unwrap_or_default();
                bail!("libvirtd exited ({status}): {}", log.trim());
            }
            if Instant::now() > deadline {
                bail!("libvirtd does not answer on {}", daemon.socket().display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its read-write socket (the same file from the root mount namespace).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/libvirt-sock")
    }

    /// `qemu:///system` of this daemon.
    pub fn uri(&self) -> String {
        format!("qemu:///system?socket={}", self.socket().display())
    }

    pub fn virsh(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new("virsh").args(["-q", "-c", &self.uri()]).args(args).output()?)
    }

    /// `virsh create` of `domain`; with `incoming`, paused with its QEMU
    /// waiting for a state (see [`Domain::xml`]).
    pub fn create(&self, domain: &Domain, artifacts: &Artifacts, incoming: bool) -> Result<()> {
        let path = self.dir.join(format!("{}.xml", domain.name));
        std::fs::write(&path, domain.xml(artifacts, incoming))?;
        let mut args = vec!["create", path.to_str().unwrap()];
        if incoming {
            args.push("--paused");
        }
        let out = self.virsh(&args)?;
        if !out.status.success() {
            bail!("virsh create {}: {}", domain.name, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// `virsh domstate NAME`.
    pub fn state(&self, name: &str) -> String {
        self.virsh(&["domstate", name])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }
}

/// A domain as a site would write it for a rig guest: TCG, q35 with what
/// virt-install adds by default (an xHCI controller, a virtio balloon, a
/// guest-agent channel), direct kernel boot with the probe's arguments,
/// the serial console appended to `serial`, one virtio NIC on `bridge`;
/// with `incoming`, QEMU waits for its state (`-incoming defer`, passed
/// through libvirt's QEMU namespace).
pub struct Domain<'a> {
    pub name: &'a str,
    pub memory_mib: u32,
    pub probe_args: &'a [String],
    pub serial: &'a Path,
    pub mac: &'a str,
    pub bridge: &'a str,
}

impl Domain<'_> {
    pub fn xml(&self, artifacts: &Artifacts, incoming: bool) -> String {
        let incoming = if incoming {
            "<qemu:commandline><qemu:arg value='-incoming'/><qemu:arg value='defer'/></qemu:commandline>"
        } else {
            ""
        };
        // <acpi/>: without it libvirt 9.0 passes -no-acpi, which QEMU 10
        // no longer has.
        format!(
            "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <seclabel type='none'/>
  <devices>
    <emulator>{qemu}</emulator>
    <controller type='usb' model='qemu-xhci'/>
    <memballoon model='virtio'/>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <serial type='file'><source path='{serial}' append='on'/><target port='0'/></serial>
    <interface type='bridge'>
      <source bridge='{bridge}'/>
      <mac address='{mac}'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
  </devices>
  {incoming}
</domain>
",
            name = self.name,
            memory = self.memory_mib,
            kernel = artifacts.kernel.display(),
            initrd = artifacts.initrd.display(),
            cmdline = kernel_append(self.probe_args),
            qemu = artifacts.qemu.display(),
            serial = self.serial.display(),
            bridge = self.bridge,
            mac = self.mac,
        )
    }
}
