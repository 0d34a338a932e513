// SPDX-License-Identifier: GPL-2.0-or-later
//! The fault matrix, QEMU row: on a two-VM cluster, node1's QEMU is
//! killed (SIGKILL) while the coordinator stands at each step of a
//! checkpoint, in both capture modes, and of a restart. After each: the
//! checkpoint fails naming node1 and commits nothing — but for a kill once
//! every image is durable, where the cut is whole and consistent and is
//! committed —, node0 settles and runs (never paused beyond its lease),
//! the latest generation verifies, and the whole cluster restarted from it
//! runs the job on. A restart that loses a VM while the others load runs
//! none of them. The test prints the matrix; docs/fault-matrix.md holds it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fault::{
    checkpoint_verdict, committed_generation, settled_and_running, stderr, stopped_at, verifies, wait_new_event,
    wait_running, CHECKPOINT_STEPS, LEASE_MS, MODES,
};
use common::{cluster_job, json_of, mekha_all, mekha_all_command};
use mekha_rig::{Artifacts, Cluster};

const BOOT: Duration = Duration::from_secs(120);
/// The VM whose QEMU is killed.
const VICTIM: usize = 1;

/// Every VM started again waiting for its state, its files in `dir`.
async fn relaunch_incoming(cluster: &mut Cluster, artifacts: &Artifacts, dir: &Path) {
    cluster.relaunch_incoming(artifacts, dir).unwrap();
    for vm in &mut cluster.vms {
        vm.qmp().await.unwrap();
    }
}

/// The whole cluster restarted from the latest generation of `images`
/// (its files in `dir`): every VM resumes, none rebooted, the job goes on.
async fn restart_from(cluster: &mut Cluster, artifacts: &Artifacts, dir: &Path, images: &Path) {
    relaunch_incoming(cluster, artifacts, dir).await;
    let args = ["restore", "--json", "--lease-ms", LEASE_MS];
    let restored = json_of(&mekha_all(artifacts, &args, &cluster.cli_qmp_paths(), images));
    assert_eq!(restored["generation"].as_u64(), Some(committed_generation(images)), "{restored}");
    for vm in &cluster.vms {
        let log = vm.log();
        wait_new_event(&log, 0, "net", Duration::from_secs(60));
        assert!(!log.events().iter().any(|e| e.ev == "start"), "{}: the guest rebooted", vm.config.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qemu_killed_at_any_step_loses_nothing() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("fault-matrix-qemu");
    let images = dir.join("images");
    let mut cluster = Cluster::launch(&artifacts, &dir.join("boot"), &cluster_job(2, 100_000)).unwrap();
    for vm in &cluster.vms {
        vm.log().wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();
    }
    json_of(&mekha_all(&artifacts, &["checkpoint", "--json"], &cluster.cli_qmp_paths(), &images));
    let victim = format!("node{VICTIM}");
    let mut rows = Vec::new();

    for mode in MODES {
        for step in CHECKPOINT_STEPS {
            let before = committed_generation(&images);
            let args = ["checkpoint", "--mode", mode, "--lease-ms", LEASE_MS];
            let cmd = mekha_all_command(&artifacts, &args, &cluster.cli_qmp_paths(), &images);
            let (reached, out) = stopped_at(cmd, step, |_| cluster.vms[VICTIM].kill());
            let case = format!("{mode}/{step}");
            let settled = settled_and_running(&case, &[cluster.vms[1 - VICTIM].cli_qmp_path()]).await.remove(0);
            let outcome = checkpoint_verdict(&case, step, &out, before, &victim, &artifacts, &images);
            restart_from(&mut cluster, &artifacts, &dir.join(format!("{mode}-{step}")), &images).await;
            rows.push(format!(
                "| QEMU killed | {step} | {mode} | killed after {} ms; {outcome}; node0 {settled}, running; \
                 verifies; restarted from it, the job goes on |",
                reached.as_millis()
            ));
        }
    }

    // Killed while every VM loads: the restart fails naming it, and the
    // other VM, loaded, exits at the end of its lease without having run.
    relaunch_incoming(&mut cluster, &artifacts, &dir.join("restore-loading")).await;
    let cmd = mekha_all_command(&artifacts, &["restore", "--lease-ms", LEASE_MS], &cluster.cli_qmp_paths(), &images);
    let (_, out) = stopped_at(cmd, "restore-loading", |_| cluster.vms[VICTIM].kill());
    assert!(!out.status.success() && stderr(&out).contains(&victim), "{}", stderr(&out));
    let survivor = &mut cluster.vms[1 - VICTIM];
    assert!(survivor.wait_exit(Duration::from_secs(15)).is_some(), "node0 waits on after its lease");
    assert!(survivor.stderr().contains("lease expired"), "{}", survivor.stderr());
    assert!(survivor.log().events().is_empty(), "node0's guest ran: {}", survivor.log().tail(5));
    verifies(&artifacts, &images);
    rows.push(format!(
        "| QEMU killed | restore loading | - | the restart failed naming {victim}; node0 exited at the end of its \
         lease, its guest never ran; generation {} verifies |",
        committed_generation(&images)
    ));

    // Killed once every VM has the resume instant: node0 resumes at the
    // instant and runs on alone; the restart reports the lost VM.
    relaunch_incoming(&mut cluster, &artifacts, &dir.join("restore-resuming")).await;
    let cmd = mekha_all_command(&artifacts, &["restore", "--lease-ms", LEASE_MS], &cluster.cli_qmp_paths(), &images);
    let (_, out) = stopped_at(cmd, "restore-resuming", |_| cluster.vms[VICTIM].kill());
    assert!(!out.status.success() && stderr(&out).contains(&victim), "{}", stderr(&out));
    wait_running(&cluster.vms[1 - VICTIM].cli_qmp_path()).await;
    let log = cluster.vms[1 - VICTIM].log();
    wait_new_event(&log, 0, "compute", Duration::from_secs(60));
    assert!(!log.events().iter().any(|e| e.ev == "start"), "node0 rebooted");
    eprintln!("restore-resuming: {}", stderr(&out).lines().last().unwrap_or_default());
    restart_from(&mut cluster, &artifacts, &dir.join("after"), &images).await;
    rows.push(format!(
        "| QEMU killed | restore resuming | - | node0 resumed at the instant and runs; the restart failed naming \
         {victim}; restarted again from generation {}, the job goes on |",
        committed_generation(&images)
    ));

    eprintln!("| fault | step | mode | outcome |\n|---|---|---|---|\n{}", rows.join("\n"));
}
