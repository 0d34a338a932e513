// SPDX-License-Identifier: GPL-2.0-or-later
//! A cluster spread over two "hosts" (network namespaces, each with its
//! own bridge and an sshd; the bridges joined into one L2 segment), driven
//! by the coordinator from the root namespace through ssh: QMP sockets as
//! `ssh://root@HOST/PATH`. Checkpointed mid-run, every QEMU killed,
//! restarted on its host: the job goes on with nothing lost.

mod common;

use std::time::Duration;

use common::{
    assert_pair_job_went_on, json_of, pair_probe_args, reference_checksum, wait_mid_exchange, PAIR_CHUNK, PAIR_COMPUTE,
};
use mekha_rig::vm::Nic;
use mekha_rig::{FakeHosts, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(120);

fn mekha_over_ssh(
    artifacts: &mekha_rig::Artifacts,
    args: &[&str],
    hosts: &FakeHosts,
    vms: &[Vm],
    dir: &std::path::Path,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(&artifacts.mekha);
    cmd.args(args);
    for o in &hosts.ssh_options {
        cmd.arg("--ssh-option").arg(o);
    }
    for (i, vm) in vms.iter().enumerate() {
        cmd.arg("--qmp").arg(hosts.qmp_url(i, &vm.cli_qmp_path()));
    }
    cmd.arg("--dir").arg(dir).output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_over_two_hosts_checkpoints_and_restarts_through_ssh() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("multihost");
    let images = dir.join("images");
    let mut hosts = FakeHosts::create(2, &dir.join("hosts")).unwrap();
    let ips = ["10.77.0.11", "10.77.0.12"];
    let mut configs = Vec::new();
    let mut vms = Vec::new();
    for i in 0..2 {
        let tap = hosts.hosts[i].netns.add_tap().unwrap();
        let mut config = VmConfig::new(format!("node{i}"));
        config.memory_mib = 256;
        config.nic = Some(Nic { tap, mac: format!("52:54:00:77:00:{:02x}", 11 + i) });
        config.probe_args = pair_probe_args(i, ips);
        vms.push(
            Vm::launch(&artifacts, Some(&hosts.hosts[i].netns), &dir.join(format!("run1/node{i}")), config.clone())
                .unwrap(),
        );
        configs.push(config);
    }
    wait_mid_exchange(&vms.iter().map(|vm| vm.log()).collect::<Vec<_>>(), BOOT);

    let summary = json_of(&mekha_over_ssh(&artifacts, &["checkpoint", "--json"], &hosts, &vms, &images));
    assert_eq!(summary["vms"].as_array().unwrap().len(), 2, "{summary}");
    eprintln!("two-host checkpoint: stop skew {} us", summary["stop_skew_ns"].as_i64().unwrap() / 1000);

    // Both hosts "fail"; their VMs come back on the same hosts.
    for vm in &mut vms {
        vm.kill();
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut restarted = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        let mut config = config.clone();
        config.incoming = true;
        let mut vm =
            Vm::launch(&artifacts, Some(&hosts.hosts[i].netns), &dir.join(format!("run2/node{i}")), config).unwrap();
        vm.qmp().await.unwrap();
        restarted.push(vm);
    }
    json_of(&mekha_over_ssh(&artifacts, &["restore", "--json"], &hosts, &restarted, &images));

    let reference = reference_checksum(PAIR_COMPUTE, PAIR_CHUNK);
    for vm in &restarted {
        assert_pair_job_went_on(&vm.log(), &vm.config.name, &reference);
    }
    // A peer ssh does not authenticate gets nowhere.
    let mut stranger = hosts.ssh_options.clone();
    stranger[0] = "IdentityFile=/dev/null".into();
    hosts.ssh_options = stranger;
    let out = mekha_over_ssh(&artifacts, &["checkpoint"], &hosts, &restarted, &dir.join("stranger"));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}
