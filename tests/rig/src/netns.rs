// SPDX-License-Identifier: GPL-2.0-or-later
//! A network namespace with a Linux bridge and one tap per VM: the virtual
//! cluster's network. No address outside the namespace is ever reached.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// Name prefix of the namespaces the rig creates, for the stale sweep.
const PREFIX: &str = "mekha-t";
pub const BRIDGE: &str = "br0";

/// A namespace, deleted (with whatever runs in it) on drop.
pub struct Netns {
    name: String,
    taps: u32,
}

impl Netns {
    /// Creates a fresh namespace holding bridge `br0` (up, loopback up).
    pub fn create() -> Result<Netns> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        sweep_stale();
        let name = format!("{PREFIX}{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]).context("creating a network namespace (needs root)")?;
        let ns = Netns { name, taps: 0 };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ns.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a tap enslaved to the bridge and returns its name.
    pub fn add_tap(&mut self) -> Result<String> {
        let tap = format!("tap{}", self.taps);
        self.taps += 1;
        self.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        self.ip(&["link", "set", &tap, "master", BRIDGE])?;
        self.ip(&["link", "set", &tap, "up"])?;
        Ok(tap)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_namespace(&self.name);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn kill_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Deletes namespaces left by rig processes that died without cleaning up.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_namespace(name);
        }
    }
}
