// SPDX-License-Identifier: GPL-2.0-or-later
//! Coordinated checkpoint and restart of a virtual cluster with the
//! `mekha` CLI in attach mode: three VMs on a bridge inside a network
//! namespace, the probes exchanging sequenced TCP and UDP messages and
//! computing; checkpointed mid-run at one instant, every QEMU killed, the
//! cluster restarted from the images, and the job simply goes on. Then
//! the faults: a VM that dies midway, a coordinator that disappears, a
//! damaged image.

mod common;

use std::time::{Duration, Instant};

use common::{
    cluster_job, json_of, mekha_all, reference_checksum, wait_checkpoint_settled, wait_mid_exchange,
    CLUSTER_CHUNK as CHUNK, CLUSTER_COMPUTE as COMPUTE,
};
use mekha_ckpt_core::session::checkpoint::{Args, EndArgs, Mode, Status};
use mekha_ckpt_core::session::commands::{Checkpoint, CheckpointEnd, CheckpointEvent};
use mekha_ckpt_core::session::ErrorKind;
use mekha_ckpt_core::width::to_usize;
use mekha_coordinator::qmp::Qmp;
use mekha_rig::Cluster;
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(120);
const MSGS: u64 = 400;

/// Messages a VM's probe has received so far, over all links.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_checkpoint_and_restart_loses_nothing() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("cluster-ckpt");
    let images = dir.join("images");
    let mut cluster = Cluster::launch(&artifacts, &dir.join("run1"), &cluster_job(3, MSGS)).unwrap();
    wait_mid_exchange(&cluster.vms.iter().map(|vm| vm.log()).collect::<Vec<_>>(), BOOT);

    let summary = json_of(&mekha_all(&artifacts, &["checkpoint", "--json"], &cluster.cli_qmp_paths(), &images));
    assert_eq!(summary["generation"], 1, "{summary}");
    assert_eq!(summary["vms"].as_array().unwrap().len(), 3, "{summary}");
    // One instant: every VM stopped within a millisecond of T (generous
    // for a loaded 2-CPU test host; the bench reports the real skew).
    let skew = summary["stop_skew_ns"].as_i64().unwrap();
    assert!(skew < 5_000_000, "stop skew {skew} ns: {summary}");
    eprintln!(
        "cluster checkpoint: stop skew {} us, longest pause {} us, {} frames in flight saved",
        skew / 1000,
        summary["max_pause_ns"].as_u64().unwrap() / 1000,
        summary["net_saved_frames"].as_u64().unwrap()
    );
    let verify = std::process::Command::new(&artifacts.mekha).args(["image", "verify"]).arg(&images).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));

    // The checkpointed cluster runs on; then every QEMU dies, and the
    // cluster restarts from the images after a gap.
    std::thread::sleep(Duration::from_secs(2));
    cluster.relaunch_incoming(&artifacts, &dir.join("run2")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    for vm in &mut cluster.vms {
        vm.qmp().await.unwrap();
    }
    let restored = json_of(&mekha_all(&artifacts, &["restore", "--json"], &cluster.cli_qmp_paths(), &images));
    assert_eq!(restored["generation"], 1, "{restored}");
    eprintln!("cluster restart: resume skew {} us", restored["resume_skew_ns"].as_i64().unwrap() / 1000);

    let reference = reference_checksum(COMPUTE, CHUNK);
    for vm in &cluster.vms {
        let log = vm.log();
        let done = log.wait_for("done", Duration::from_secs(600), |e| e.ev == "done").unwrap();
        let events = log.events();
        assert!(!events.iter().any(|e| e.ev == "start"), "{}: the restored guest rebooted", vm.config.name);
        let net = done.json["net"].as_array().expect("net summary");
        assert_eq!(net.len(), 4, "{}: {net:?}", vm.config.name);
        for link in net {
            for counter in ["lost", "dup", "reordered", "corrupt"] {
                assert_eq!(link[counter], 0, "{}: {counter} in {link}", vm.config.name);
            }
            assert_eq!((link["sent"].as_u64(), link["received"].as_u64()), (Some(MSGS), Some(MSGS)), "{link}");
        }
        let anomalies: Vec<_> = events.iter().filter(|e| e.ev.ends_with("_anomaly")).collect();
        assert!(anomalies.is_empty(), "{}: {anomalies:?}", vm.config.name);
        assert_eq!(done.json["compute"]["checksum"].as_str(), Some(reference.as_str()), "{}", vm.config.name);
    }
}

/// A VM killed during a cluster checkpoint: the checkpoint fails naming
/// it, nothing is committed, the previous checkpoint stays the latest and
/// restorable, and the surviving VM runs (never left paused).
#[tokio::test(flavor = "multi_thread")]
async fn a_vm_dying_midway_commits_nothing() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("cluster-ckpt-vm-dies");
    let images = dir.join("images");
    let mut cluster = Cluster::launch(&artifacts, &dir.join("run"), &cluster_job(2, 100_000)).unwrap();
    for vm in &cluster.vms {
        vm.log().wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();
    }
    let qmps = cluster.cli_qmp_paths();
    json_of(&mekha_all(&artifacts, &["checkpoint", "--json", "--mode", "mtd"], &qmps, &images));

    // node1 dies as soon as its live phase begins.
    let events = cluster.vms[1].qmp().await.unwrap();
    let mut live = events.subscribe();
    let child = std::process::Command::new(&artifacts.mekha)
        .args(["checkpoint", "--mode", "mtd", "--qmp"])
        .arg(&qmps[0])
        .arg("--qmp")
        .arg(&qmps[1])
        .arg("--dir")
        .arg(&images)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(e) = live.recv().await {
            if e.mekha::<CheckpointEvent>().is_some_and(|info| info.status == Status::Live) {
                return;
            }
        }
    })
    .await
    .expect("node1's checkpoint never started");
    cluster.vms[1].kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a checkpoint without node1 was committed: {stderr}");
    assert!(stderr.contains("node1"), "the error does not name the dead VM: {stderr}");

    let manifest: Value = serde_json::from_slice(&std::fs::read(images.join("MANIFEST.json")).unwrap()).unwrap();
    assert_eq!(manifest["generation"], 1, "{manifest}");
    let verify = std::process::Command::new(&artifacts.mekha).args(["image", "verify"]).arg(&images).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let qmp = Qmp::connect(&qmps[0]).await.unwrap();
    // Cancelled, or (if it had stopped already) written but never
    // committed; either way it settles and runs.
    wait_checkpoint_settled(&qmp).await;
    assert_eq!(qmp.status().await.unwrap().status, "running");
}

/// A coordinator that disappears mid-protocol: the library's lease brings
/// every VM back on its own, in the live phase and at the rendezvous.
#[tokio::test(flavor = "multi_thread")]
async fn a_vanished_coordinator_never_leaves_a_vm_paused() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("cluster-ckpt-lease");
    let cluster = Cluster::launch(&artifacts, &dir.join("run"), &cluster_job(2, 100_000)).unwrap();
    for vm in &cluster.vms {
        vm.log().wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();
    }
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();

    // Live phase held open, then silence: each VM gives up on its own.
    for (i, sock) in cluster.cli_qmp_paths().iter().enumerate() {
        let qmp = Qmp::connect(sock).await.unwrap();
        let path = images.join(format!("held{i}.mekha"));
        let args = Args { path, hold: Some(true), lease_ms: Some(1000), ..Args::default() };
        qmp.call::<Checkpoint>(&args).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for sock in cluster.cli_qmp_paths() {
        let qmp = Qmp::connect(&sock).await.unwrap();
        let state = wait_checkpoint_settled(&qmp).await;
        assert_eq!(state.status, Status::Failed, "{state:?}");
        assert_eq!(state.error_kind, Some(ErrorKind::LeaseExpired), "{state:?}");
        assert!(state.error.as_deref().unwrap().contains("lease expired"), "{state:?}");
        assert_eq!(qmp.status().await.unwrap().status, "running");
    }
    assert!(!images.join("held0.mekha").exists() && !images.join("held1.mekha").exists());

    // Stopped at a rendezvous, then silence: each resumes by itself after
    // its capture and, its image staged, writes it without being told to.
    let mut qmps = Vec::new();
    for (i, sock) in cluster.cli_qmp_paths().iter().enumerate() {
        let qmp = Qmp::connect(sock).await.unwrap();
        let path = images.join(format!("staged{i}.mekha"));
        let args = Args {
            path,
            hold: Some(true),
            lease_ms: Some(1000),
            persist_hold: Some(true),
            mode: Some(Mode::Mtd),
            ..Args::default()
        };
        qmp.call::<Checkpoint>(&args).await.unwrap();
        qmps.push(qmp);
    }
    let now = mekha_ckpt_core::instant::wall_ns();
    let stop_at = now + 300_000_000;
    for qmp in &qmps {
        qmp.call::<CheckpointEnd>(&EndArgs { stop_at: Some(stop_at), cut: None }).await.unwrap();
    }
    drop(qmps);
    for sock in cluster.cli_qmp_paths() {
        let qmp = Qmp::connect(&sock).await.unwrap();
        let state = wait_checkpoint_settled(&qmp).await;
        assert_eq!(state.status, Status::Completed, "{state:?}");
        let (stopped, resumed) = (state.stopped_at_ns.unwrap(), state.resumed_at_ns.unwrap());
        assert!(stopped >= stop_at && resumed >= stopped, "{state:?}");
        assert!(state.cut_complete, "{state:?}");
        assert_eq!(qmp.status().await.unwrap().status, "running");
    }
}

/// A damaged image of one VM refuses the restart, naming that VM, and no
/// VM of the cluster runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_image_refuses_the_whole_restart() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("cluster-ckpt-damaged");
    let images = dir.join("images");
    let mut cluster = Cluster::launch(&artifacts, &dir.join("run1"), &cluster_job(2, 100_000)).unwrap();
    for vm in &cluster.vms {
        vm.log().wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();
    }
    let summary = json_of(&mekha_all(&artifacts, &["checkpoint", "--json"], &cluster.cli_qmp_paths(), &images));
    let image = summary["vms"][1]["image"].as_str().unwrap().to_owned();
    // Flip a bit in a non-zero page of node1's RAM.
    let inspect =
        std::process::Command::new(&artifacts.mekha).args(["image", "inspect", "--json", &image]).output().unwrap();
    let inspection: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let ram_offset = inspection["images"][0]["inspection"]["ram_blocks"][0]["file_offset"].as_u64().unwrap();
    let data = std::fs::read(&image).unwrap();
    let page = (0..4096u64)
        .map(|p| ram_offset + (1 << 20) + p * 4096)
        .find(|&off| data[to_usize(off)..to_usize(off) + 4096].iter().any(|&b| b != 0))
        .expect("a non-zero page");
    let mut data = data;
    data[to_usize(page) + 17] ^= 0x10;
    std::fs::write(&image, &data).unwrap();

    cluster.relaunch_incoming(&artifacts, &dir.join("run2")).unwrap();
    for vm in &mut cluster.vms {
        vm.qmp().await.unwrap();
    }
    let out = mekha_all(&artifacts, &["restore"], &cluster.cli_qmp_paths(), &images);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a damaged image was restored");
    assert!(stderr.contains("node1"), "the error does not name the VM: {stderr}");
    for sock in cluster.cli_qmp_paths() {
        let qmp = Qmp::connect(&sock).await.unwrap();
        let status = qmp.status().await.unwrap();
        assert_ne!(status.status, "running", "a VM of a refused restart runs: {status:?}");
    }
}

/// Batch schedulers' habit (Slurm's --signal): with --on-signal, SIGUSR1
/// takes a checkpoint and waits again, SIGTERM takes one and exits 0,
/// printing one JSON summary per checkpoint.
#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_on_sigusr1_and_on_sigterm_then_exits() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("cluster-ckpt-signals");
    let images = dir.join("images");
    let cluster = Cluster::launch(&artifacts, &dir.join("run"), &cluster_job(1, 0)).unwrap();
    cluster.vms[0].log().wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();
    let child = std::process::Command::new(&artifacts.mekha)
        .args(["checkpoint", "--on-signal", "--json", "--qmp"])
        .arg(&cluster.cli_qmp_paths()[0])
        .arg("--dir")
        .arg(&images)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let generation = || -> u64 {
        std::fs::read(images.join("MANIFEST.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|m| m["generation"].as_u64())
            .unwrap_or(0)
    };
    let wait_generation = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while generation() < n {
            assert!(Instant::now() < deadline, "no checkpoint generation {n}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The handlers are installed once it runs; give it a moment.
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: plain signals to our child.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    wait_generation(1);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(generation(), 2);
    let summaries = String::from_utf8_lossy(&out.stdout).matches("\"generation\"").count();
    assert_eq!(summaries, 2, "{}", String::from_utf8_lossy(&out.stdout));
}
