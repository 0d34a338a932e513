// SPDX-License-Identifier: GPL-2.0-or-later
//! The fault matrix, coordinator row: a two-VM cluster whose coordinator
//! is killed (aborted, as by `kill -9`: `MEKHA_COORDINATOR_FAULT`) at each
//! step of a checkpoint, in both capture modes, and of a restart. After
//! each: every VM settles and runs (none paused beyond its lease), nothing
//! is committed, the last committed generation verifies; a restart killed
//! while loading leaves no QEMU behind, one killed after the resume
//! instant went out runs the job on from that generation. The test prints
//! the matrix; docs/fault-matrix.md holds it.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::fault::{committed_generation, verifies, CHECKPOINT_STEPS, LEASE_MS, MODES};
use common::{cluster_job, json_of, mekha_all, mekha_all_command, wait_checkpoint_settled};
use mekha_coordinator::qmp::Qmp;
use mekha_rig::{Artifacts, Cluster};

const BOOT: Duration = Duration::from_secs(120);

/// `mekha ARGS` on every VM, killed at `step`.
fn mekha_killed_at(artifacts: &Artifacts, step: &str, args: &[&str], cluster: &Cluster, dir: &Path) -> Output {
    let mut cmd = mekha_all_command(artifacts, args, &cluster.cli_qmp_paths(), dir);
    let out = cmd.env("MEKHA_COORDINATOR_FAULT", step).output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{step}: the coordinator was not killed at its step ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_at_any_step_loses_nothing() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("fault-matrix");
    let images = dir.join("images");
    let mut cluster = Cluster::launch(&artifacts, &dir.join("run1"), &cluster_job(2, 100_000)).unwrap();
    for vm in &cluster.vms {
        vm.log().wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();
    }
    json_of(&mekha_all(&artifacts, &["checkpoint", "--json"], &cluster.cli_qmp_paths(), &images));
    let mut rows = Vec::new();

    for mode in MODES {
        for step in CHECKPOINT_STEPS {
            let killed = Instant::now();
            let args = ["checkpoint", "--mode", mode, "--lease-ms", LEASE_MS];
            mekha_killed_at(&artifacts, step, &args, &cluster, &images);
            let killed = killed.elapsed();
            let mut outcomes = Vec::new();
            for sock in cluster.cli_qmp_paths() {
                let qmp = Qmp::connect(&sock).await.unwrap();
                let settled = wait_checkpoint_settled(&qmp).await;
                let status = qmp.status().await.unwrap();
                assert_eq!(status.status, "running", "{mode}/{step}: {status:?} after {settled:?}");
                outcomes.push(settled.status.to_string());
            }
            assert_eq!(committed_generation(&images), 1, "{mode}/{step}: a generation was committed");
            verifies(&artifacts, &images);
            rows.push(format!(
                "| coordinator | {step} | {mode} | killed after {} ms; checkpoints {}; VMs running; generation 1 \
                 latest, verifies |",
                killed.as_millis(),
                outcomes.join("/")
            ));
        }
    }

    // A restart killed while the VMs load: their leases run out, every
    // QEMU exits without its guest having run.
    cluster.relaunch_incoming(&artifacts, &dir.join("run2")).unwrap();
    for vm in &mut cluster.vms {
        vm.qmp().await.unwrap();
    }
    let killed = Instant::now();
    mekha_killed_at(&artifacts, "restore-loading", &["restore", "--lease-ms", LEASE_MS], &cluster, &images);
    for vm in &mut cluster.vms {
        let exited = vm.wait_exit(Duration::from_secs(15));
        assert!(exited.is_some(), "{}: a QEMU waits on after its lease", vm.config.name);
        assert!(vm.stderr().contains("lease expired"), "{}: {}", vm.config.name, vm.stderr());
    }
    rows.push(format!(
        "| coordinator | restore loading | - | every QEMU exited {} ms after the restore began (lease {LEASE_MS} \
         ms), no guest ran; generation 1 verifies |",
        killed.elapsed().as_millis()
    ));
    verifies(&artifacts, &images);

    // Killed once every VM has its resume instant: they resume together
    // and the job goes on, without a reboot.
    cluster.relaunch_incoming(&artifacts, &dir.join("run3")).unwrap();
    for vm in &mut cluster.vms {
        vm.qmp().await.unwrap();
    }
    mekha_killed_at(&artifacts, "restore-resuming", &["restore", "--lease-ms", LEASE_MS], &cluster, &images);
    for vm in &mut cluster.vms {
        let qmp = vm.qmp().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while qmp.status().await.unwrap().status != "running" {
            assert!(Instant::now() < deadline, "{}: not resumed", vm.config.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = vm.log();
        log.wait_for("net", Duration::from_secs(60), |e| e.ev == "net").unwrap();
        assert!(!log.events().iter().any(|e| e.ev == "start"), "{}: the guest rebooted", vm.config.name);
    }
    rows.push("| coordinator | restore resuming | - | both VMs resumed at the instant; the job goes on |".into());

    eprintln!("| fault | step | mode | outcome |\n|---|---|---|---|\n{}", rows.join("\n"));
}
