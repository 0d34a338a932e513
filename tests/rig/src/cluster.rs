// SPDX-License-Identifier: GPL-2.0-or-later
//! A virtual cluster: N VMs on one bridge in a fresh network namespace,
//! each running the guest probe with every other VM as its peer.

use std::path::Path;

use anyhow::Result;

use crate::vm::Nic;
use crate::{Artifacts, Netns, Vm, VmConfig};

/// The cluster's subnet; it exists only inside the namespace.
const SUBNET: &str = "10.77.0";

/// What every VM of the cluster runs.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub vms: usize,
    pub memory_mib: u32,
    /// `probe.*` words given to every VM (peers and addresses are added).
    pub probe_args: Vec<String>,
}

/// The VMs and their namespace; dropping it kills the VMs, then deletes
/// the namespace.
pub struct Cluster {
    // Field order is drop order: VMs before their namespace.
    pub vms: Vec<Vm>,
    pub netns: Netns,
}

impl Cluster {
    /// Boots the cluster; VM `i` is named `node{i}`, with address
    /// 10.77.0.{11+i} and its files in `dir/node{i}`.
    pub fn launch(artifacts: &Artifacts, dir: &Path, config: &ClusterConfig) -> Result<Cluster> {
        Cluster::launch_with(artifacts, dir, config, |_, _| {})
    }

    /// [`Cluster::launch`], with `adjust(i, config)` changing VM `i`'s
    /// configuration (a disk, a fault) before it starts.
    pub fn launch_with(
        artifacts: &Artifacts,
        dir: &Path,
        config: &ClusterConfig,
        adjust: impl Fn(usize, &mut VmConfig),
    ) -> Result<Cluster> {
        let mut netns = Netns::create()?;
        let ips: Vec<String> = (0..config.vms).map(|i| format!("{SUBNET}.{}", 11 + i)).collect();
        let mut vms = Vec::with_capacity(config.vms);
        for i in 0..config.vms {
            let tap = netns.add_tap()?;
            let peers: Vec<&str> = ips.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, ip)| ip.as_str()).collect();
            let mut vm = VmConfig::new(format!("node{i}"));
            vm.memory_mib = config.memory_mib;
            vm.nic = Some(Nic { tap, mac: format!("52:54:00:77:00:{:02x}", 11 + i) });
            vm.probe_args = vec![format!("mekha.id={i}"), format!("mekha.ip={}/24", ips[i])];
            if !peers.is_empty() {
                vm.probe_args.push(format!("probe.peers={}", peers.join(",")));
            }
            vm.probe_args.extend(config.probe_args.iter().cloned());
            adjust(i, &mut vm);
            vms.push(Vm::launch(artifacts, Some(&netns), &dir.join(format!("node{i}")), vm)?);
        }
        Ok(Cluster { vms, netns })
    }

    /// Kills every VM and starts each again with its command line plus
    /// `-incoming defer`, on the same tap, its files in `dir/node{i}`: a
    /// cluster waiting to be restored.
    pub fn relaunch_incoming(&mut self, artifacts: &Artifacts, dir: &Path) -> Result<()> {
        self.relaunch_incoming_with(artifacts, dir, |_, _| {})
    }

    /// [`Cluster::relaunch_incoming`], with `adjust(i, config)` changing
    /// VM `i`'s configuration for this start only.
    pub fn relaunch_incoming_with(
        &mut self,
        artifacts: &Artifacts,
        dir: &Path,
        adjust: impl Fn(usize, &mut VmConfig),
    ) -> Result<()> {
        for vm in &mut self.vms {
            vm.kill();
        }
        for (i, vm) in self.vms.iter_mut().enumerate() {
            let mut config = vm.config.clone();
            config.incoming = true;
            adjust(i, &mut config);
            *vm = Vm::launch(artifacts, Some(&self.netns), &dir.join(format!("node{i}")), config)?;
        }
        Ok(())
    }

    /// The second QMP socket of every VM (the one the mekha CLI uses).
    pub fn cli_qmp_paths(&self) -> Vec<std::path::PathBuf> {
        self.vms.iter().map(Vm::cli_qmp_path).collect()
    }
}
