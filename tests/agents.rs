// SPDX-License-Identifier: GPL-2.0-or-later
//! Spec mode across hosts: two "hosts" (network namespaces, each with its
//! own bridge and a `mekha agent`; the bridges joined into one segment),
//! the coordinator in the root namespace with a client certificate from
//! `mekha tls init`. `mekha up` has each agent start its host's VM; a
//! checkpoint onto a full filesystem is refused with the VMs running; a
//! peer with a certificate of another CA gets nowhere; then checkpoints,
//! every QEMU killed, `mekha restart`: the job goes on with nothing lost;
//! `mekha down`. Host h0 has a disk of its own for the checkpoint
//! directory (h1 shares this machine's): h0 keeps its VM's images there,
//! named by the manifest committed here.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{
    assert_pair_job_went_on, json_of, pair_probe_args, reference_checksum, wait_mid_exchange, PAIR_CHUNK, PAIR_COMPUTE,
};
use mekha_rig::netns::BRIDGE;
use mekha_rig::{FakeHosts, ProbeLog, SpecVm};

const BOOT: Duration = Duration::from_secs(120);

fn mekha(artifacts: &mekha_rig::Artifacts, args: &[&str]) -> Output {
    Command::new(&artifacts.mekha).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pid_of(state: &Path, host: &str, vm: &str) -> i32 {
    std::fs::read_to_string(state.join(host).join(format!("{vm}.pid"))).unwrap().trim().parse().unwrap()
}

/// Unmounts on drop, panics included.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_over_two_hosts_runs_through_their_agents() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("agents");
    let mut hosts = FakeHosts::create(2, &dir.join("hosts")).unwrap();
    let tls = dir.join("tls");
    let addresses: Vec<String> = hosts.hosts.iter().map(|h| h.address.clone()).collect();
    let ca = dir.join("ca");
    let mut init = vec!["tls", "init", "--ca-dir", ca.to_str().unwrap(), "--dir", tls.to_str().unwrap()];
    for a in &addresses {
        init.extend(["--agent", a]);
    }
    let out = mekha(&artifacts, &init);
    assert!(out.status.success(), "{}", stderr(&out));
    // A small filesystem for the full-disk case, mounted before the agents
    // start: each "host" has its own mount namespace, copied at its start.
    let tiny = dir.join("tiny");
    std::fs::create_dir_all(&tiny).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"]).arg(&tiny).status();
    assert!(mounted.unwrap().success());
    let tiny = Tmpfs(tiny);
    let ckpt = dir.join("ckpt");
    hosts.give_own_storage(0, &ckpt);
    // Everything of this test is under its directory: the agents' roots.
    let root = dir.to_str().unwrap();
    let policy = ["--state-root", root, "--checkpoint-root", root, "--qemu", artifacts.qemu.to_str().unwrap()];
    hosts.start_agents(&artifacts.mekha, &tls, &policy, &dir).unwrap();

    let ips = ["10.78.0.11", "10.78.0.12"];
    let state = dir.join("state");
    let mut spec = format!(
        "name = \"agents\"\ncheckpoint_dir = \"ckpt\"\nstate_dir = \"state\"\nqemu = {:?}\ntls_dir = \"tls\"\n\n\
         [network]\nbridge = \"{BRIDGE}\"\n\n[checkpoint]\nmode = \"auto\"\n",
        artifacts.qemu.display().to_string()
    );
    for (i, address) in addresses.iter().enumerate() {
        spec += &format!("\n[[host]]\nname = \"h{i}\"\nagent = \"{}\"\n", hosts.agent_address(i));
        let vm = SpecVm {
            name: format!("node{i}"),
            memory_mib: 256,
            probe_args: pair_probe_args(i, ips),
            serial: dir.join(format!("node{i}.serial")),
            mac: format!("52:54:00:78:00:{:02x}", 11 + i),
            host: Some(format!("h{i}")),
        };
        spec += &vm.toml(&artifacts);
        assert!(!address.is_empty());
    }
    let spec_path = dir.join("cluster.toml");
    std::fs::write(&spec_path, spec).unwrap();
    let spec_arg = spec_path.to_str().unwrap();

    let up = mekha(&artifacts, &["up", "--spec", spec_arg, "--json"]);
    let up = json_of(&up);
    assert!(up["vms"][1]["qmp"].as_str().unwrap().starts_with("mekha://"), "{up}");
    // Each agent started its VM on its own host (in its namespace).
    for (i, host) in hosts.hosts.iter().enumerate() {
        let pid = pid_of(&state, &format!("h{i}"), &format!("node{i}"));
        let vm_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino();
        let host_ns = std::fs::metadata(format!("/run/netns/{}", host.netns.name())).unwrap().ino();
        assert_eq!(vm_ns, host_ns, "node{i} does not run on host h{i}");
    }
    let logs: Vec<ProbeLog> = (0..2).map(|i| ProbeLog::new(dir.join(format!("node{i}.serial")))).collect();
    wait_mid_exchange(&logs, BOOT);

    let status = json_of(&mekha(&artifacts, &["status", "--spec", spec_arg, "--json"]));
    for vm in status["vms"].as_array().unwrap() {
        assert_eq!(vm["state"], "running", "{status}");
    }
    let storage = status["storage"].as_array().unwrap();
    assert_eq!(storage.len(), 2, "{status}");
    // h0 has its own filesystem for the checkpoint directory, h1 sees
    // this machine's: two storage targets.
    assert_ne!(storage[0]["report"]["target"], storage[1]["report"]["target"], "{status}");
    assert!(storage[0]["report"]["free_bytes"].as_u64().unwrap() > 0);

    // A full filesystem: refused once the images' size is known, before
    // anything is written; the VMs run on.
    let endpoints: Vec<String> = status["vms"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, _)| format!("mekha://{}{}/h{i}/node{i}.qmp", hosts.agent_address(i), state.display()))
        .collect();
    let attach = |tls_dir: &Path, ckpt: &Path| {
        let mut cmd = Command::new(&artifacts.mekha);
        cmd.args(["checkpoint", "--tls-dir"]).arg(tls_dir).arg("--dir").arg(ckpt);
        for e in &endpoints {
            cmd.args(["--qmp", e]);
        }
        cmd.output().unwrap()
    };
    let full = attach(&tls, &tiny.0);
    assert_eq!(full.status.code(), Some(1), "{}", stderr(&full));
    assert!(stderr(&full).contains("not enough space"), "{}", stderr(&full));
    assert!(!tiny.0.join("MANIFEST.json").exists());
    drop(tiny);

    // A client certificate of another CA (trusting the agents' CA): the
    // agents refuse it.
    let stranger = dir.join("stranger-tls");
    let stranger_ca = dir.join("stranger-ca");
    let out = mekha(
        &artifacts,
        &["tls", "init", "--ca-dir", stranger_ca.to_str().unwrap(), "--dir", stranger.to_str().unwrap()],
    );
    assert!(out.status.success());
    for file in ["ca.pem", "crl.pem"] {
        std::fs::copy(tls.join(file), stranger.join(file)).unwrap();
    }
    let refused = attach(&stranger, &dir.join("stranger-ckpt"));
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    eprintln!("a stranger's checkpoint: {}", stderr(&refused).trim());
    assert!(!dir.join("stranger-ckpt/MANIFEST.json").exists());

    let status = json_of(&mekha(&artifacts, &["status", "--spec", spec_arg, "--json"]));
    for vm in status["vms"].as_array().unwrap() {
        assert_eq!(vm["state"], "running", "after the refusals: {status}");
    }

    // Two checkpoints: h0 keeps both generations (the latest and the one
    // before, as the directory here does).
    let mut generations = Vec::new();
    for _ in 0..2 {
        let summary = json_of(&mekha(&artifacts, &["checkpoint", "--spec", spec_arg, "--json"]));
        assert_eq!(summary["vms"].as_array().unwrap().len(), 2, "{summary}");
        eprintln!("checkpoint through agents: stop skew {} us", summary["stop_skew_ns"].as_i64().unwrap() / 1000);
        generations.push(format!("gen-{:06}", summary["generation"].as_u64().unwrap()));
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("MANIFEST.json")).unwrap()).unwrap();
    let host_of =
        |vm: &str| manifest["vms"].as_array().unwrap().iter().find(|v| v["name"] == vm).unwrap()["host"].clone();
    assert_eq!(host_of("node0"), hosts.agent_address(0).as_str(), "{manifest}");
    assert!(host_of("node1").is_null(), "{manifest}");
    let latest = &generations[1];
    assert!(!ckpt.join(latest).join("node0.mekha").exists(), "h0's image was written here");
    assert!(ckpt.join(latest).join("node1.mekha").exists());
    // h0's view of the directory, through its agent's mount namespace.
    let on_h0 = PathBuf::from(format!("/proc/{}/root{}", hosts.agent_pid(0).unwrap(), ckpt.display()));
    let mut listing: Vec<String> =
        std::fs::read_dir(&on_h0).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    listing.retain(|n| n != ".lock");
    listing.sort();
    assert_eq!(listing, ["PARTS.json", &generations[0], latest], "h0's copy of the checkpoint directory");
    assert!(on_h0.join(latest).join("node0.mekha").exists());
    // Verified here, an image kept on h0 is not taken for a damaged one.
    let verify = mekha(&artifacts, &["image", "verify", ckpt.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1), "{}", stderr(&verify));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("on host"), "{verify:?}");

    // Both hosts "fail".
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..2 {
        // SAFETY: a plain signal to a QEMU this test had started.
        unsafe { libc::kill(pid_of(&state, &format!("h{i}"), &format!("node{i}")), libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_secs(2));
    // h0's image gone: the restart is refused, naming its VM, before any
    // VM loads anything.
    let image = on_h0.join(latest).join("node0.mekha");
    let away = image.with_extension("away");
    std::fs::rename(&image, &away).unwrap();
    let refused = mekha(&artifacts, &["restart", "--spec", spec_arg]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("node0"), "{}", stderr(&refused));
    eprintln!("restart without h0's image: {}", stderr(&refused).trim());
    std::fs::rename(&away, &image).unwrap();
    let restart = json_of(&mekha(&artifacts, &["restart", "--spec", spec_arg, "--json"]));
    assert_eq!(restart["vms"].as_array().unwrap().len(), 2, "{restart}");

    let reference = reference_checksum(PAIR_COMPUTE, PAIR_CHUNK);
    for (i, log) in logs.iter().enumerate() {
        assert_pair_job_went_on(log, &format!("node{i}"), &reference);
        assert_eq!(log.events().iter().filter(|e| e.ev == "start").count(), 1, "node{i} rebooted");
    }

    let down = mekha(&artifacts, &["down", "--spec", spec_arg]);
    assert!(down.status.success(), "{}", stderr(&down));
    let status = json_of(&mekha(&artifacts, &["status", "--spec", spec_arg, "--json"]));
    for vm in status["vms"].as_array().unwrap() {
        assert!(vm["pid"].is_null(), "still running after down: {status}");
    }
    // The hosts' bridges existed before `up`: they stay.
    hosts.hosts[0].netns.ip(&["link", "show", BRIDGE]).unwrap();
}
