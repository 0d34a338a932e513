// SPDX-License-Identifier: GPL-2.0-or-later
//! VMs a site's libvirt manages, reached through libvirt's remote API over
//! ssh (`qemu+ssh://`): a private libvirtd on a fake host (a network
//! namespace with an sshd), two domains on its bridge running the pair job
//! with libvirt holding their only QMP monitor. `mekha checkpoint --qmp
//! 'qemu+ssh://root@HOST/system?...#DOMAIN'` (QMP passthrough; a second
//! client watches the QEMU events libvirt relays); both domains destroyed
//! and created again paused, waiting for their state; `mekha restore`
//! through libvirt: the job goes on with nothing lost, and libvirt sees
//! its domains running.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::{
    assert_pair_job_went_on, json_of, mekha_all, pair_probe_args, reference_checksum, wait_mid_exchange, PAIR_CHUNK,
    PAIR_COMPUTE,
};
use mekha_coordinator::qmp::Qmp;
use mekha_coordinator::transport::{self, Endpoint, Reach};
use mekha_rig::libvirt::{Domain, Libvirtd};
use mekha_rig::netns::BRIDGE;
use mekha_rig::{FakeHosts, ProbeLog};

const BOOT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn libvirt_domains_checkpoint_and_restore_through_libvirts_remote_api() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("libvirt");
    let hosts = FakeHosts::create(1, &dir.join("hosts")).unwrap();
    let libvirtd = Libvirtd::start(&hosts.hosts[0].netns, &dir.join("libvirtd"), &artifacts).unwrap();

    // libvirt's ssh transport runs `ssh`; this wrapper adds the fake
    // host's key and options (no known_hosts of the test machine touched).
    let wrapper = dir.join("ssh");
    let options: String = hosts.ssh_options.iter().map(|o| format!(" -o '{o}'")).collect();
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec ssh -o BatchMode=yes{options} \"$@\"\n")).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let uri = format!(
        "qemu+ssh://root@{}/system?socket={}&command={}",
        hosts.hosts[0].address,
        libvirtd.socket().display(),
        wrapper.display()
    );

    let ips = ["10.79.0.11", "10.79.0.12"];
    let names = ["lv-node0", "lv-node1"];
    let args: Vec<Vec<String>> = (0..2).map(|i| pair_probe_args(i, ips)).collect();
    let serials: Vec<PathBuf> = names.iter().map(|n| dir.join(format!("{n}.serial"))).collect();
    let macs = ["52:54:00:79:00:11", "52:54:00:79:00:12"];
    let domain = |i: usize| Domain {
        name: names[i],
        memory_mib: 256,
        probe_args: &args[i],
        serial: &serials[i],
        mac: macs[i],
        bridge: BRIDGE,
    };
    for i in 0..2 {
        libvirtd.create(&domain(i), &artifacts, false).unwrap();
    }
    let logs: Vec<ProbeLog> = serials.iter().map(|s| ProbeLog::new(s.clone())).collect();
    wait_mid_exchange(&logs, BOOT);

    let endpoints: Vec<PathBuf> = names.iter().map(|n| PathBuf::from(format!("{uri}#{n}"))).collect();
    // A second client of node0's QEMU, through libvirt: the events it relays.
    let endpoint = Endpoint::parse(&endpoints[0].to_string_lossy()).unwrap();
    let (stream, _) = transport::connect(&endpoint, &Reach::default()).await.unwrap();
    let watcher = Qmp::over(stream, endpoints[0].clone()).await.unwrap();
    let mut events = watcher.subscribe();
    let status = watcher.status().await.unwrap();
    assert_eq!(status.status, "running", "{status:?}");

    let images = dir.join("images");
    let summary = json_of(&mekha_all(&artifacts, &["checkpoint", "--json"], &endpoints, &images));
    assert_eq!(summary["vms"].as_array().unwrap().len(), 2, "{summary}");
    eprintln!(
        "checkpoint through libvirt: pause {:.1} ms, stop skew {} us",
        summary["max_pause_ns"].as_u64().unwrap() as f64 / 1e6,
        summary["stop_skew_ns"].as_i64().unwrap() / 1000
    );
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event.event);
    }
    for expected in ["STOP", "RESUME"] {
        assert!(seen.iter().any(|e| e == expected), "no {expected} event relayed by libvirt: {seen:?}");
    }
    drop(watcher);

    // The host "fails": libvirt's domains are gone.
    std::thread::sleep(Duration::from_secs(1));
    for name in names {
        assert!(libvirtd.virsh(&["destroy", name]).unwrap().status.success());
    }
    // Created again as a site would to receive a state: paused, QEMU
    // waiting for it.
    for i in 0..2 {
        libvirtd.create(&domain(i), &artifacts, true).unwrap();
    }
    let restore = json_of(&mekha_all(&artifacts, &["restore", "--json"], &endpoints, &images));
    assert_eq!(restore["vms"].as_array().unwrap().len(), 2, "{restore}");
    for name in names {
        assert_eq!(libvirtd.state(name), "running", "libvirt's view of {name}");
    }

    let reference = reference_checksum(PAIR_COMPUTE, PAIR_CHUNK);
    for (log, name) in logs.iter().zip(names) {
        assert_pair_job_went_on(log, name, &reference);
        assert_eq!(log.events().iter().filter(|e| e.ev == "start").count(), 1, "{name} rebooted");
    }
}

/// A host whose libvirt has no QEMU it can run (the failure a new machine
/// without a qemu-system binary on libvirtd's PATH meets): mekha names
/// libvirt's own reason, not a missing domain or a hang.
#[test]
fn a_libvirt_that_cannot_use_its_qemu_is_reported_with_libvirts_reason() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("libvirt-no-qemu");
    let netns = mekha_rig::netns::Netns::create().unwrap();
    let libvirtd = Libvirtd::start_without_qemu(&netns, &dir.join("libvirtd")).unwrap();
    let endpoint = format!("{}#lv-node0", libvirtd.uri());
    let out = std::process::Command::new(&artifacts.mekha).args(["info", "--qmp", &endpoint]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mekha info succeeded without a QEMU: {stderr}");
    assert!(
        stderr.contains("libvirt cannot use its QEMU") && stderr.contains("emulator"),
        "libvirt's reason is not in the error: {stderr}"
    );
}
