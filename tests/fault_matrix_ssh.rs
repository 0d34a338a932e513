// SPDX-License-Identifier: GPL-2.0-or-later
//! The fault matrix, ssh transport row: a two-VM cluster over two "hosts"
//! (network namespaces with their own bridge and sshd), driven from this
//! host through `ssh://` endpoints, as `tests/multihost.rs` does. While
//! the coordinator stands at each step of a checkpoint, in both capture
//! modes, and of a restart, its ssh tunnel to h1 is killed (SIGKILL of
//! that ssh process: node1's monitor connection ends, node1 runs on).
//! After each: the checkpoint fails naming node1 or its host and commits
//! nothing — but once every image is durable, where the cut is whole and
//! is committed —, both VMs settle and run, the latest generation
//! verifies; a restart cut off from h1 while loading runs no VM, the next
//! one runs the job on. The test prints the rows; docs/fault-matrix.md
//! holds them.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::fault::{
    checkpoint_verdict, children, committed_generation, settled_and_running, stderr, stopped_at, wait_new_event,
    wait_running, CHECKPOINT_STEPS, MODES,
};
use common::{cluster_job, json_of};
use mekha_rig::vm::Nic;
use mekha_rig::{Artifacts, FakeHosts, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(120);
/// Two ssh processes per VM carry every command: on a loaded host (two
/// TCG VMs and a build on 2 CPUs) a 1 s lease once ran out between a poll
/// and the next command, failing a checkpoint before its step.
const LEASE_MS: &str = "2000";

/// `mekha ARGS` on `vms` through ssh, into `images`.
fn mekha_ssh(artifacts: &Artifacts, args: &[&str], hosts: &FakeHosts, vms: &[Vm], images: &Path) -> Command {
    let mut cmd = Command::new(&artifacts.mekha);
    cmd.args(args).args(["--lease-ms", LEASE_MS]);
    for o in &hosts.ssh_options {
        cmd.arg("--ssh-option").arg(o);
    }
    for (i, vm) in vms.iter().enumerate() {
        cmd.arg("--qmp").arg(hosts.qmp_url(i, &vm.cli_qmp_path()));
    }
    cmd.arg("--dir").arg(images);
    cmd
}

/// Kills the ssh process of `mekha` (stopped) that tunnels to `address`.
fn cut_tunnel(mekha: u32, address: &str) {
    let destination = format!("root@{address}");
    let tunnels: Vec<u32> = children(mekha)
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
            args.first().is_some_and(|a| a.ends_with(b"ssh")) && args.last() == Some(&destination.as_bytes())
        })
        .collect();
    assert_eq!(tunnels.len(), 1, "mekha's ssh tunnels to {address}: {tunnels:?}");
    // SAFETY: a plain signal to a process of the mekha this test started.
    unsafe { libc::kill(tunnels[0] as i32, libc::SIGKILL) };
}

/// Every VM (re)started on its host, its files in `dir`; `-incoming defer`
/// if `incoming`.
async fn launch(artifacts: &Artifacts, hosts: &FakeHosts, configs: &[VmConfig], dir: &Path, incoming: bool) -> Vec<Vm> {
    let mut vms = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        let config = VmConfig { incoming, ..config.clone() };
        let mut vm = Vm::launch(artifacts, Some(&hosts.hosts[i].netns), &dir.join(format!("node{i}")), config).unwrap();
        vm.qmp().await.unwrap();
        vms.push(vm);
    }
    vms
}

/// Waits for every VM's job to go on (one network event), none rebooted.
fn job_goes_on(vms: &[Vm]) {
    for vm in vms {
        wait_new_event(&vm.log(), 0, "net", Duration::from_secs(60));
        assert!(!vm.log().events().iter().any(|e| e.ev == "start"), "{}: the guest rebooted", vm.config.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ssh_tunnel_cut_at_any_step_loses_nothing() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("fault-matrix-ssh");
    let images = dir.join("images");
    let mut hosts = FakeHosts::create(2, &dir.join("hosts")).unwrap();
    let h1 = hosts.hosts[1].address.clone();
    let ips = ["10.77.0.11", "10.77.0.12"];
    let mut configs = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let mut config = VmConfig::new(format!("node{i}"));
        let tap = hosts.hosts[i].netns.add_tap().unwrap();
        config.nic = Some(Nic { tap, mac: format!("52:54:00:77:00:{:02x}", 11 + i) });
        config.probe_args =
            vec![format!("mekha.id={i}"), format!("mekha.ip={ip}/24"), format!("probe.peers={}", ips[1 - i])];
        config.probe_args.extend(cluster_job(2, 100_000).probe_args);
        configs.push(config);
    }
    let vms = launch(&artifacts, &hosts, &configs, &dir.join("boot"), false).await;
    for vm in &vms {
        vm.log().wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();
    }
    json_of(&mekha_ssh(&artifacts, &["checkpoint", "--json"], &hosts, &vms, &images).output().unwrap());
    let mut rows = Vec::new();

    for mode in MODES {
        for step in CHECKPOINT_STEPS {
            let case = format!("ssh tunnel cut/{mode}/{step}");
            let before = committed_generation(&images);
            let cmd = mekha_ssh(&artifacts, &["checkpoint", "--mode", mode], &hosts, &vms, &images);
            let (reached, out) = stopped_at(cmd, step, |pid| cut_tunnel(pid, &h1));
            let settled = settled_and_running(&case, &vms.iter().map(Vm::cli_qmp_path).collect::<Vec<_>>()).await;
            let outcome = checkpoint_verdict(&case, step, &out, before, &h1, &artifacts, &images);
            rows.push(format!(
                "| ssh tunnel cut | {step} | {mode} | at {} ms; {outcome}; checkpoints {}; VMs running; verifies |",
                reached.as_millis(),
                settled.join("/")
            ));
        }
    }

    // While the VMs load: the restart fails, both QEMUs exit at the end of
    // their leases without their guests having run.
    drop(vms);
    let mut vms = launch(&artifacts, &hosts, &configs, &dir.join("restore-loading"), true).await;
    let cmd = mekha_ssh(&artifacts, &["restore"], &hosts, &vms, &images);
    let (_, out) = stopped_at(cmd, "restore-loading", |pid| cut_tunnel(pid, &h1));
    let said = stderr(&out);
    assert!(!out.status.success() && (said.contains("node1") || said.contains(&h1)), "{said}");
    for vm in &mut vms {
        assert!(vm.wait_exit(Duration::from_secs(15)).is_some(), "{}: waits on after its lease", vm.config.name);
        assert!(vm.stderr().contains("lease expired"), "{}: {}", vm.config.name, vm.stderr());
        assert!(vm.log().events().is_empty(), "{}'s guest ran: {}", vm.config.name, vm.log().tail(5));
    }
    drop(vms);
    let vms = launch(&artifacts, &hosts, &configs, &dir.join("after-loading"), true).await;
    json_of(&mekha_ssh(&artifacts, &["restore", "--json"], &hosts, &vms, &images).output().unwrap());
    job_goes_on(&vms);
    rows.push(format!(
        "| ssh tunnel cut | restore loading | - | the restart failed naming node1; both QEMUs exited at the end of \
         their leases, no guest ran; generation {} verifies; the next restart runs the job on |",
        committed_generation(&images)
    ));

    // Once every VM has the resume instant: both resume together.
    drop(vms);
    let vms = launch(&artifacts, &hosts, &configs, &dir.join("restore-resuming"), true).await;
    let cmd = mekha_ssh(&artifacts, &["restore"], &hosts, &vms, &images);
    let (_, out) = stopped_at(cmd, "restore-resuming", |pid| cut_tunnel(pid, &h1));
    let said = stderr(&out);
    assert!(out.status.success() || said.contains("node1") || said.contains(&h1), "{said}");
    for vm in &vms {
        wait_running(&vm.cli_qmp_path()).await;
    }
    job_goes_on(&vms);
    rows.push(format!(
        "| ssh tunnel cut | restore resuming | - | both VMs resumed at the instant, the job goes on; the restart {} |",
        if out.status.success() { "succeeded" } else { "reported node1 lost" }
    ));

    eprintln!("| fault | step | mode | outcome |\n|---|---|---|---|\n{}", rows.join("\n"));
}
