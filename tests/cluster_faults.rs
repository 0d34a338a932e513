// SPDX-License-Identifier: GPL-2.0-or-later
//! A cluster whose parts fail in ways that used to hold it forever or
//! split it: a VM that answers but never gets on (its thread stuck as on
//! a dead disk), a coordinator that gives up between a restart's load and
//! its resume, a disk that cannot be taken at restart. Every wait of the
//! coordinator ends, no VM waits paused beyond its lease, and no VM of a
//! failed restart runs.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cluster_job, json_of, mekha_all};
use mekha_ckpt_core::session::commands::RestoreEvent;
use mekha_ckpt_core::session::{restore, ErrorKind};
use mekha_coordinator::qmp::{Event, Qmp};
use mekha_rig::Cluster;
use serde_json::Value;
use tokio::sync::broadcast;

const BOOT: Duration = Duration::from_secs(120);

fn stall(point: &str) -> (String, String) {
    ("MEKHA_FAULT".to_owned(), format!("{point}:stall"))
}

async fn wait_computing(cluster: &Cluster) {
    for vm in &cluster.vms {
        vm.log().wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();
    }
}

/// Runs `mekha ARGS` on every VM of the cluster; its output and how long
/// it took.
fn timed_mekha(cluster: &Cluster, args: &[&str], dir: &Path) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = mekha_all(&common::artifacts(), args, &cluster.cli_qmp_paths(), dir);
    (out, started.elapsed())
}

async fn status(sock: &Path) -> String {
    let qmp = Qmp::connect(sock).await.unwrap();
    qmp.status().await.unwrap().status
}

/// A VM whose checkpoint thread hangs while it writes its image (status
/// "persisting" for good): the coordinator gives up after the progress
/// timeout, names the VM, commits nothing, and every VM runs on.
#[tokio::test(flavor = "multi_thread")]
async fn a_vm_stuck_writing_its_image_fails_the_checkpoint_in_bounded_time() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("cluster-faults-stuck-write");
    let images = dir.join("images");
    let cluster = Cluster::launch_with(&artifacts, &dir.join("run"), &cluster_job(2, 100_000), |i, vm| {
        if i == 1 {
            vm.env.push(stall("checkpoint-persisting"));
        }
    })
    .unwrap();
    wait_computing(&cluster).await;

    let (out, took) = timed_mekha(&cluster, &["checkpoint", "--mode", "mtd", "--progress-timeout-ms", "3000"], &images);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a checkpoint with a stuck VM was committed: {stderr}");
    assert!(stderr.contains("node1") && stderr.contains("no progress"), "{stderr}");
    // Boot-free: the live phase, the stop, staging, 3 s without progress.
    assert!(took < Duration::from_secs(60), "the coordinator waited {took:?}");
    let committed = std::fs::read(images.join("MANIFEST.json"))
        .map_or(0, |m| serde_json::from_slice::<Value>(&m).unwrap()["generation"].as_u64().unwrap());
    assert_eq!(committed, 0, "a generation was committed");
    for sock in cluster.cli_qmp_paths() {
        assert_eq!(status(&sock).await, "running");
    }
}

/// Waits for `name` from `events`, at most `limit`; every event seen.
async fn collect_until(events: &mut broadcast::Receiver<Event>, name: &str, limit: Duration) -> (bool, Vec<Event>) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    let hit = e.event == name;
                    seen.push(e);
                    if hit {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    })
    .await
    .is_ok();
    (found, seen)
}

/// A VM that never finishes loading its image: the restart fails naming
/// it once it made no progress for the timeout, and the VM that did load
/// is never resumed: its coordinator gone, its lease runs out and its
/// QEMU exits (host-error, even with libvirt's -no-shutdown) without the
/// guest having run.
#[tokio::test(flavor = "multi_thread")]
async fn a_vm_stuck_loading_fails_the_restart_and_no_vm_runs() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("cluster-faults-stuck-load");
    let images = dir.join("images");
    let mut cluster = Cluster::launch(&artifacts, &dir.join("run1"), &cluster_job(2, 100_000)).unwrap();
    wait_computing(&cluster).await;
    json_of(&mekha_all(&artifacts, &["checkpoint", "--json"], &cluster.cli_qmp_paths(), &images));

    cluster
        .relaunch_incoming_with(&artifacts, &dir.join("run2"), |i, vm| {
            // As libvirt starts QEMU: a shutdown must still end it.
            vm.extra_args.push("-no-shutdown".into());
            if i == 1 {
                vm.env.push(stall("restore-loading"));
            }
        })
        .unwrap();
    let watcher = cluster.vms[0].qmp().await.unwrap();
    cluster.vms[1].qmp().await.unwrap();
    let mut events = watcher.subscribe();
    let (out, took) =
        timed_mekha(&cluster, &["restore", "--lease-ms", "2000", "--progress-timeout-ms", "3000"], &images);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a restart with a stuck VM succeeded: {stderr}");
    assert!(stderr.contains("node1") && stderr.contains("no progress"), "{stderr}");
    assert!(took < Duration::from_secs(30), "the coordinator waited {took:?}");

    // node0 loaded, then heard no more from its coordinator.
    let (shut_down, seen) = collect_until(&mut events, "SHUTDOWN", Duration::from_secs(10)).await;
    let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert!(shut_down, "node0 did not shut down after its lease: {names:?}");
    assert!(!names.contains(&"RESUME"), "node0 ran: {names:?}");
    let shutdown = seen.iter().find(|e| e.event == "SHUTDOWN").unwrap();
    assert_eq!(shutdown.data["reason"], "host-error", "{:?}", shutdown.data);
    let restored = seen.iter().rev().find_map(|e| e.mekha::<RestoreEvent>()).expect("a RESTORE event");
    assert_eq!(restored.status, restore::Status::Failed, "{restored:?}");
    assert_eq!(restored.error_kind, Some(ErrorKind::LeaseExpired), "{restored:?}");
    assert!(restored.error.as_deref().unwrap().contains("lease expired"), "{restored:?}");
    assert!(cluster.vms[0].wait_exit(Duration::from_secs(10)).is_some(), "node0's QEMU did not exit");
    // The checkpoint is untouched: the next restart can use it.
    let verify = Command::new(&artifacts.mekha).args(["image", "verify"]).arg(&images).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

/// A writable disk of node1 whose image another QEMU still holds at
/// restart (the old VM not quite dead): taking it fails node1's restore
/// while every VM is still paused, so no VM of the cluster runs — where it
/// used to fail node1's resume after node0 had resumed (a split cluster).
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_that_cannot_be_taken_fails_the_restart_before_any_vm_runs() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("cluster-faults-disk-lock");
    let images = dir.join("images");
    let disk = dir.join("node1-data.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let drive = format!("file={},format=raw,if=none,id=data", disk.display());
    let mut cluster = Cluster::launch_with(&artifacts, &dir.join("run1"), &cluster_job(2, 100_000), |i, vm| {
        if i == 1 {
            vm.extra_args.extend([
                "-drive".into(),
                drive.clone(),
                "-device".into(),
                "virtio-blk-pci,drive=data".into(),
            ]);
        }
    })
    .unwrap();
    wait_computing(&cluster).await;
    // The disk is not written here: the test is about who may take it.
    let checkpoint = ["checkpoint", "--json", "--allow-writable-disks"];
    json_of(&mekha_all(&artifacts, &checkpoint, &cluster.cli_qmp_paths(), &images));

    cluster.relaunch_incoming(&artifacts, &dir.join("run2")).unwrap();
    let watcher = cluster.vms[0].qmp().await.unwrap();
    cluster.vms[1].qmp().await.unwrap();
    // Another QEMU with the disk attached for writing: it shares the
    // image with no other writer (QEMU's image locks).
    let mut holder = Command::new(&artifacts.qemu)
        .args(["-nodefaults", "-display", "none", "-S", "-drive", &drive, "-device", "virtio-blk-pci,drive=data"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(holder.try_wait().unwrap().is_none(), "the holding QEMU exited");

    let mut events = watcher.subscribe();
    let out = mekha_all(&artifacts, &["restore", "--lease-ms", "2000"], &cluster.cli_qmp_paths(), &images);
    let _ = holder.kill();
    let _ = holder.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the restart succeeded with node1's disk held elsewhere: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("node1") && stderr.contains("lock"), "{stderr}");
    let (_, seen) = collect_until(&mut events, "SHUTDOWN", Duration::from_secs(10)).await;
    let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert!(!names.contains(&"RESUME"), "node0 ran while node1 could not: {names:?}");
    assert!(names.contains(&"SHUTDOWN"), "node0 stayed paused after its lease: {names:?}");
}
