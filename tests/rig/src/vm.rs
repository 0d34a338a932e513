// SPDX-License-Identifier: GPL-2.0-or-later
//! A QEMU VM booting the guest rig under TCG.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mekha_coordinator::qmp::Qmp;

use crate::{Artifacts, Netns, ProbeLog};

/// How to start one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// QEMU `-name`.
    pub name: String,
    pub memory_mib: u32,
    /// Kernel command line words for the guest probe (`probe.*`, `mekha.*`).
    pub probe_args: Vec<String>,
    /// Tap in the cluster's namespace and the guest's MAC, if networked.
    pub nic: Option<Nic>,
    /// More QEMU arguments, appended last.
    pub extra_args: Vec<String>,
    /// Start with `-incoming defer`, waiting for a restore.
    pub incoming: bool,
    /// More environment for QEMU (e.g. `MEKHA_FAULT`).
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Nic {
    pub tap: String,
    pub mac: String,
}

impl VmConfig {
    pub fn new(name: impl Into<String>) -> VmConfig {
        VmConfig {
            name: name.into(),
            memory_mib: 256,
            probe_args: Vec::new(),
            nic: None,
            extra_args: Vec::new(),
            incoming: false,
            env: Vec::new(),
        }
    }
}

/// The guest kernel's command line around the probe's words.
pub fn kernel_append(probe_args: &[String]) -> String {
    // no_timer_check: on a loaded host a TCG guest may fail the IO-APIC
    // timer check at boot and panic.
    ["console=ttyS0", "quiet", "loglevel=3", "panic=-1", "no_timer_check"]
        .into_iter()
        .map(str::to_owned)
        .chain(probe_args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A running QEMU, killed on drop.
pub struct Vm {
    pub config: VmConfig,
    pub dir: PathBuf,
    child: Child,
}

impl Vm {
    /// Starts QEMU, inside `netns` when given, with its QMP socket, serial
    /// log and QEMU's own stderr in `dir`.
    pub fn launch(artifacts: &Artifacts, netns: Option<&Netns>, dir: &Path, config: VmConfig) -> Result<Vm> {
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::remove_file(dir.join("qmp.sock"));
        let _ = std::fs::remove_file(dir.join("cli-qmp.sock"));
        let mut cmd = match netns {
            Some(ns) => ns.command(&artifacts.qemu),
            None => Command::new(&artifacts.qemu),
        };
        let append = kernel_append(&config.probe_args);
        cmd.args(["-accel", "tcg", "-nodefaults", "-display", "none", "-no-reboot", "-no-user-config"])
            // debug-threads=on names QEMU's threads ("CPU 0/TCG"): the
            // benches account the vCPU thread's CPU apart.
            .args(["-name", &format!("guest={},debug-threads=on", config.name)])
            .args(["-m", &config.memory_mib.to_string(), "-smp", "1"])
            .arg("-kernel")
            .arg(&artifacts.kernel)
            .arg("-initrd")
            .arg(&artifacts.initrd)
            .args(["-append", &append])
            .arg("-chardev")
            .arg(format!("file,id=serial0,path={}", dir.join("serial.log").display()))
            .args(["-serial", "chardev:serial0"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()))
            // A second monitor, as when a manager such as libvirt holds the
            // first: the mekha CLI talks to this one.
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", dir.join("cli-qmp.sock").display()));
        if let Some(nic) = &config.nic {
            cmd.args(["-netdev", &format!("tap,id=net0,ifname={},script=no,downscript=no", nic.tap)])
                .args(["-device", &format!("virtio-net-pci,netdev=net0,mac={},romfile=", nic.mac)]);
        }
        cmd.args(&config.extra_args).envs(config.env.iter().map(|(k, v)| (k, v)));
        if config.incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let stderr = std::fs::File::create(dir.join("qemu.stderr"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", artifacts.qemu.display()))?;
        Ok(Vm { config, dir: dir.to_path_buf(), child })
    }

    /// The monitor the test itself talks to (`Vm::qmp`).
    pub fn qmp_path(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// The second monitor, for the `mekha` CLI.
    pub fn cli_qmp_path(&self) -> PathBuf {
        self.dir.join("cli-qmp.sock")
    }

    pub fn log(&self) -> ProbeLog {
        ProbeLog::new(self.dir.join("serial.log"))
    }

    /// Connects to the VM's QMP socket, waiting for QEMU to create it.
    pub async fn qmp(&mut self) -> Result<Qmp> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("QEMU exited ({status}): {}", self.stderr());
            }
            if self.qmp_path().exists() {
                if let Ok(qmp) = Qmp::connect(self.qmp_path()).await {
                    return Ok(qmp);
                }
            }
            if Instant::now() > deadline {
                bail!("no QMP socket at {} after 30 s", self.qmp_path().display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// QEMU's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("qemu.stderr")).unwrap_or_default()
    }

    /// True while QEMU runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for QEMU to exit; its exit status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => return None,
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
