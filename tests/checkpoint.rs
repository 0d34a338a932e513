// SPDX-License-Identifier: GPL-2.0-or-later
//! Live checkpoint of one VM with the `mekha` CLI, restore into a fresh
//! QEMU, and the refusals that keep a committed checkpoint safe.

mod common;

use common::{json_of, mekha, reference_checksum, summary_of, wait_checkpoint_settled};

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mekha_ckpt_core::session::checkpoint::{Args, Mode, QueryArgs, Status};
use mekha_ckpt_core::session::commands::{Checkpoint, CheckpointCancel, QueryCheckpoint};
use mekha_ckpt_core::session::{restore, Empty, ErrorKind};
use mekha_coordinator::cluster::{ClusterCheckpoint, ClusterRestore};
use mekha_rig::{ProbeLog, Vm, VmConfig};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(120);
/// Steps of the probe's computation: long enough to span the checkpoint.
const COMPUTE: u64 = 3 << 30;
const CHUNK: u64 = 1 << 28;

fn probe_vm(name: &str, memory_mib: u32, dirty_mib: u32) -> VmConfig {
    let mut config = VmConfig::new(name);
    config.memory_mib = memory_mib;
    config.probe_args = vec![
        "mekha.id=1".into(),
        format!("probe.mem={dirty_mib}"),
        format!("probe.compute={COMPUTE}"),
        format!("probe.compute_chunk={CHUNK}"),
        "probe.clock_ms=1000".into(),
    ];
    config
}

/// Every path under `dir`, as strings.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path.display().to_string());
    }
    out
}

fn last_step(log: &ProbeLog) -> u64 {
    log.events().iter().filter(|e| e.ev == "compute").filter_map(|e| e.u64("step")).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn mtd_checkpoint_under_dirtying_restores_to_the_same_result() {
    checkpoint_under_dirtying_restores_to_the_same_result("mtd", "mtd", [vec![], vec![]]).await;
}

/// Two NUMA nodes of equal size whose memory backends the restore's
/// command line lists the other way round (QEMU then orders their RAM
/// blocks the other way): each node gets its own RAM back, found by name.
#[tokio::test(flavor = "multi_thread")]
async fn numa_nodes_listed_in_another_order_get_their_own_ram_back() {
    let object = |id: &str| ["-object".to_owned(), format!("memory-backend-ram,id={id},size=192M")];
    let numa = ["-numa", "node,nodeid=0,memdev=m0", "-numa", "node,nodeid=1,memdev=m1"].map(String::from);
    let args = |first: &str, second: &str| [&object(first)[..], &object(second), &numa].concat();
    checkpoint_under_dirtying_restores_to_the_same_result("numa", "mtd", [args("m0", "m1"), args("m1", "m0")]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cow_checkpoint_under_dirtying_restores_to_the_same_result() {
    if !mekha_ckpt_core::host::Capabilities::probe().userfaultfd_wp {
        mekha_test_skip::skip("this host has no userfaultfd write protection");
        return;
    }
    checkpoint_under_dirtying_restores_to_the_same_result("cow", "cow", [vec![], vec![]]).await;
}

/// Checkpoints a VM whose guest rewrites 64 MiB without pause, kills it,
/// restores a fresh QEMU from the image: the guest goes on to the result
/// of an uninterrupted run, every page as it left it. `args`: extra QEMU
/// arguments of the checkpointed VM and of the restored one.
async fn checkpoint_under_dirtying_restores_to_the_same_result(name: &str, mode: &str, args: [Vec<String>; 2]) {
    let artifacts = common::artifacts();
    let dir = common::test_dir(&format!("checkpoint-restore-{name}"));
    let images = dir.join("images");
    let [args, restore_args] = args;
    let mut config = probe_vm(&format!("ck-{name}"), 384, 64);
    config.extra_args = args;
    let mut vm = Vm::launch(&artifacts, None, &dir.join("run1"), config.clone()).unwrap();
    vm.qmp().await.unwrap();
    let log = vm.log();
    log.wait_for("dirtying", BOOT, |e| e.ev == "dirty" && e.u64("pages_written").unwrap_or(0) > 0).unwrap();
    log.wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();

    // MTD drains a budget smaller than RAM; copy-on-write needs one that
    // holds all of it (with the ROMs), so that no guest write waits for
    // the disk.
    let staging_mib: u64 = if mode == "cow" { 400 } else { 128 };
    let out = mekha(
        &artifacts,
        &["checkpoint", "--json", "--mode", mode, "--staging-mib", &staging_mib.to_string()],
        &vm.cli_qmp_path(),
        &images,
    );
    let summary: ClusterCheckpoint = summary_of(&out);
    let progress = &summary.vms[0].progress;
    assert_eq!(progress.status, Status::Completed, "{summary:?}");
    assert_eq!(progress.mode.map(Mode::as_str), Some(mode), "{summary:?}");
    assert!(progress.staging_peak_bytes <= staging_mib << 20, "{summary:?}");
    match mode {
        "mtd" => assert!(progress.final_pages > 0, "the guest dirtied nothing? {summary:?}"),
        // The guest's writes hit protected pages: the copy-on-write path
        // really ran, not only the sweep.
        _ => assert!(progress.wp_faults > 0, "no guest write waited for a copy? {summary:?}"),
    }
    let step_at_checkpoint = last_step(&log);

    // The image is intact.
    let verify = Command::new(&artifacts.mekha).args(["image", "verify"]).arg(&images).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));

    // The checkpointed VM kept running; now it dies.
    log.wait_for("progress after the checkpoint", BOOT, |e| {
        e.ev == "compute" && e.u64("step").unwrap() > step_at_checkpoint
    })
    .unwrap();
    vm.kill();

    config.incoming = true;
    config.extra_args = restore_args;
    let mut restored = Vm::launch(&artifacts, None, &dir.join("run2"), config).unwrap();
    restored.qmp().await.unwrap();
    let out = mekha(&artifacts, &["restore", "--json"], &restored.cli_qmp_path(), &images);
    let summary: ClusterRestore = summary_of(&out);
    assert_eq!(summary.vms[0].progress.status, restore::Status::Completed, "{summary:?}");

    // The guest goes on from where the checkpoint left it: no reboot, the
    // computation continues and ends with the uninterrupted result, and
    // the dirtier finds every page as it left it.
    let log2 = restored.log();
    let done = log2.wait_for("compute_done", Duration::from_secs(600), |e| e.ev == "compute_done").unwrap();
    let events = log2.events();
    assert!(!events.iter().any(|e| e.ev == "start"), "the restored guest rebooted");
    let first = events.iter().find(|e| e.ev == "compute").expect("compute after restore");
    assert!(first.u64("step").unwrap() > 0);
    assert_eq!(done.str("checksum").unwrap(), reference_checksum(COMPUTE, CHUNK));
    let anomalies: Vec<_> = events.iter().filter(|e| e.ev == "dirty_anomaly").collect();
    assert!(anomalies.is_empty(), "guest memory changed across the restore: {anomalies:?}");
    assert!(restored.is_running(), "{}", restored.stderr());
}

/// Write protection cannot see writes through another mapping of shared
/// RAM (a vhost-user backend's): copy-on-write is refused there with a
/// clear error, auto falls back to MTD and says why, and the VM runs on.
#[tokio::test(flavor = "multi_thread")]
async fn copy_on_write_is_refused_for_shared_ram_and_auto_uses_mtd() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("checkpoint-shared-ram");
    let images = dir.join("images");
    let mut config = probe_vm("ck-shared", 256, 16);
    config.extra_args =
        ["-object", "memory-backend-memfd,id=ram0,size=256M,share=on", "-machine", "memory-backend=ram0"]
            .map(String::from)
            .to_vec();
    let mut vm = Vm::launch(&artifacts, None, &dir.join("run"), config).unwrap();
    vm.qmp().await.unwrap();
    let log = vm.log();
    log.wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();

    let out = mekha(&artifacts, &["checkpoint", "--mode", "cow"], &vm.cli_qmp_path(), &images);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "copy-on-write over shared RAM was accepted");
    assert!(stderr.contains("copy-on-write") && stderr.contains("shared or file-backed"), "{stderr}");

    let summary: ClusterCheckpoint =
        summary_of(&mekha(&artifacts, &["checkpoint", "--json"], &vm.cli_qmp_path(), &images));
    let progress = &summary.vms[0].progress;
    assert_eq!(progress.mode, Some(Mode::Mtd), "{summary:?}");
    assert!(progress.mode_reason.as_deref().unwrap().contains("ram0"), "{summary:?}");
    assert_eq!(summary.generation, 1, "the refused checkpoint left a generation: {summary:?}");
    let step = last_step(&log);
    log.wait_for("progress after the checkpoints", BOOT, |e| e.ev == "compute" && e.u64("step").unwrap() > step)
        .unwrap();
    assert!(vm.is_running(), "{}", vm.stderr());
}

/// A checkpoint captures every disk the guest can write, each into a
/// layer next to the image (read-only disks are left alone); a disk
/// another user may write too (`share-rw`) is refused, naming it, unless
/// the caller says it snapshots its disks itself.
#[tokio::test(flavor = "multi_thread")]
async fn writable_disks_are_captured_and_shared_ones_refused() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("checkpoint-disks");
    let images = dir.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["rw.raw", "ro.raw", "shared.raw"] {
        std::fs::File::create(dir.join(name)).unwrap().set_len(16 << 20).unwrap();
    }
    // Data at the checkpoint, in a disk otherwise a hole.
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("rw.raw"))
        .unwrap()
        .write_all_at(&[0xa5; 65536], 1 << 20)
        .unwrap();
    let mut config = probe_vm("ck-disks", 256, 8);
    let drive = |id: &str, file: &str, extra: &str| {
        format!("if=none,id={id},format=raw,file={}{extra}", dir.join(file).display())
    };
    config.extra_args = [
        "-drive".into(),
        drive("d0", "rw.raw", ""),
        "-device".into(),
        "virtio-blk-pci,drive=d0,id=disk-rw".into(),
        "-drive".into(),
        drive("d1", "ro.raw", ",readonly=on"),
        "-device".into(),
        "virtio-blk-pci,drive=d1,id=disk-ro".into(),
        "-drive".into(),
        drive("d2", "shared.raw", ""),
        "-device".into(),
        "virtio-blk-pci,drive=d2,id=disk-shared,share-rw=on".into(),
    ]
    .to_vec();
    let mut vm = Vm::launch(&artifacts, None, &dir.join("run"), config).unwrap();
    vm.qmp().await.unwrap();
    vm.log().wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();

    // A staging budget whose size in bytes does not fit 64 bits is refused
    // (it used to wrap to 0, and the checkpoint spun forever).
    let huge = (1u64 << 44).to_string();
    let args = ["checkpoint", "--allow-writable-disks", "--staging-mib", &huge];
    let out = mekha(&artifacts, &args, &vm.cli_qmp_path(), &images);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("staging-mib is too large"), "{stderr}");

    let out = mekha(&artifacts, &["checkpoint"], &vm.cli_qmp_path(), &images);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a VM with a shared writable disk was checkpointed");
    assert!(stderr.contains("disk-shared") && stderr.contains("share-rw"), "{stderr}");
    assert!(!stderr.contains("disk-ro") && !stderr.contains("disk-rw"), "another disk was named: {stderr}");
    let summary =
        json_of(&mekha(&artifacts, &["checkpoint", "--json", "--allow-writable-disks"], &vm.cli_qmp_path(), &images));
    assert_eq!(summary["generation"], 1, "{summary}");
    let captured = summary["vms"][0]["progress"]["disks"].clone();
    assert!(captured.is_null(), "disks were captured with --allow-writable-disks: {captured}");

    drop(vm);

    // Without the shared disk, the writable one is captured whole: its
    // 64 KiB of data, the rest known as zeros.
    let mut config = probe_vm("ck-disks-2", 256, 8);
    config.extra_args =
        ["-drive".into(), drive("d0", "rw.raw", ""), "-device".into(), "virtio-blk-pci,drive=d0,id=disk-rw".into()]
            .to_vec();
    let mut vm = Vm::launch(&artifacts, None, &dir.join("run2"), config).unwrap();
    vm.qmp().await.unwrap();
    vm.log().wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();
    let summary = json_of(&mekha(&artifacts, &["checkpoint", "--json"], &vm.cli_qmp_path(), &images));
    assert_eq!(summary["generation"], 2, "{summary}");
    let disks = summary["vms"][0]["progress"]["disks"].as_array().cloned().unwrap_or_default();
    assert_eq!(disks.len(), 1, "{summary}");
    assert!(disks[0]["device"].as_str().unwrap().contains("/disk-rw/"), "{summary}");
    assert_eq!(disks[0]["kind"], "full", "{summary}");
    assert_eq!(disks[0]["data-bytes"], 65536, "{summary}");
    let layer = images.join("gen-000002").join(disks[0]["layer"].as_str().unwrap());
    assert!(layer.exists(), "{} is missing", layer.display());
    assert!(vm.is_running(), "{}", vm.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_or_interrupted_checkpoints_never_replace_the_good_one() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("checkpoint-faults");
    let images = dir.join("images");
    let config = probe_vm("ck-2", 256, 16);
    let mut vm = Vm::launch(&artifacts, None, &dir.join("run1"), config.clone()).unwrap();
    let qmp = vm.qmp().await.unwrap();
    vm.log().wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();

    // A bad directory is refused without touching the VM.
    let file = dir.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = mekha(&artifacts, &["checkpoint"], &vm.cli_qmp_path(), &file);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-a-dir"), "{}", String::from_utf8_lossy(&out.stderr));

    // A full disk fails the checkpoint cleanly: the VM runs on, nothing is
    // committed, no partial file is left. The coordinator refuses before
    // writing, once the staged image's size is known; a VM's own write
    // that meets ENOSPC (space taken meanwhile) fails as cleanly.
    let small = dir.join("small-disk");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"]).arg(&small).status().unwrap();
    assert!(mounted.success());
    let out = mekha(&artifacts, &["checkpoint"], &vm.cli_qmp_path(), &small);
    let refused_stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let refused_leftovers: Vec<_> = walk(&small);
    let image = small.join("direct.mekha");
    qmp.call::<Checkpoint>(&Args { path: image, ..Args::default() }).await.unwrap();
    let written = wait_checkpoint_settled(&qmp).await;
    let leftovers: Vec<_> = walk(&small);
    let _ = Command::new("umount").arg(&small).status();
    assert_eq!(out.status.code(), Some(1), "{refused_stderr}");
    assert!(refused_stderr.contains("not enough space"), "{refused_stderr}");
    assert!(!refused_leftovers.iter().any(|p| p.ends_with("MANIFEST.json")), "{refused_leftovers:?}");
    assert_eq!(written.status, Status::Failed, "{written:?}");
    assert_eq!(written.error_kind, Some(ErrorKind::NoSpace), "{written:?}");
    assert!(written.error.as_deref().unwrap_or("").contains("No space left"), "{written:?}");
    for files in [&refused_leftovers, &leftovers] {
        assert!(files.iter().all(|p| !p.ends_with(".mekha") && !p.ends_with(".partial")), "{files:?}");
    }
    assert_eq!(qmp.status().await.unwrap().status, "running");

    // A good checkpoint: generation 1.
    json_of(&mekha(&artifacts, &["checkpoint", "--json"], &vm.cli_qmp_path(), &images));

    // A second one dies with its QEMU in the middle of the live phase.
    let generation2 = images.join("gen-000002.partial");
    let args = Args {
        path: generation2.join("ck-2.mekha"),
        hold: Some(true),
        time_budget_ms: Some(600_000),
        ..Args::default()
    };
    std::fs::create_dir_all(&generation2).unwrap();
    qmp.call::<Checkpoint>(&args).await.unwrap();
    // One at a time.
    let again = qmp.call::<Checkpoint>(&args).await.unwrap_err();
    assert!(again.to_string().contains("already running"), "{again}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    vm.kill();

    // The first checkpoint is still the latest and restores.
    let manifest: Value = serde_json::from_slice(&std::fs::read(images.join("MANIFEST.json")).unwrap()).unwrap();
    assert_eq!(manifest["generation"], 1);

    // A restore needs a QEMU waiting with -incoming defer.
    let mut plain = Vm::launch(&artifacts, None, &dir.join("plain"), config.clone()).unwrap();
    plain.qmp().await.unwrap();
    let out = mekha(&artifacts, &["restore"], &plain.cli_qmp_path(), &images);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-incoming defer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    plain.kill();

    // A damaged image is refused, naming the damage, and the VM never runs.
    let image = images.join(manifest["vms"][0]["image"].as_str().unwrap());
    let pristine = std::fs::read(&image).unwrap();
    let mut damaged = pristine.clone();
    damaged[(2 << 20) + 4096 * 100 + 7] ^= 0x40;
    std::fs::write(&image, &damaged).unwrap();
    let verify = Command::new(&artifacts.mekha).args(["image", "verify"]).arg(&images).output().unwrap();
    assert_eq!(verify.status.code(), Some(5), "{}", String::from_utf8_lossy(&verify.stdout));
    let mut incoming = config.clone();
    incoming.incoming = true;
    let mut target = Vm::launch(&artifacts, None, &dir.join("run2"), incoming.clone()).unwrap();
    let target_qmp = target.qmp().await.unwrap();
    let out = mekha(&artifacts, &["restore"], &target.cli_qmp_path(), &images);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checksum") && stderr.contains("page 100"), "{stderr}");
    assert_ne!(target_qmp.status().await.unwrap().status, "running");
    target.kill();

    // Repaired, it restores and runs.
    std::fs::write(&image, &pristine).unwrap();
    let mut target = Vm::launch(&artifacts, None, &dir.join("run3"), incoming).unwrap();
    target.qmp().await.unwrap();
    json_of(&mekha(&artifacts, &["restore", "--json"], &target.cli_qmp_path(), &images));
    let log = target.log();
    log.wait_for("compute after restore", BOOT, |e| e.ev == "compute").unwrap();
    assert!(!log.events().iter().any(|e| e.ev == "start"));
}

/// A checkpoint whose coordinator is gone gives up when its lease runs
/// out, however often others poll its status (libvirt, a periodic
/// `mekha status`): only the coordinator's own queries renew the lease.
#[tokio::test(flavor = "multi_thread")]
async fn status_polls_do_not_keep_a_dead_coordinators_checkpoint_alive() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("checkpoint-lease-polls");
    let mut vm = Vm::launch(&artifacts, None, &dir.join("run"), probe_vm("ck-lease", 256, 8)).unwrap();
    let qmp = vm.qmp().await.unwrap();
    vm.log().wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();
    // A held live phase waits for its coordinator's end command forever,
    // but for the lease.
    let start = |name: &str| Args {
        path: dir.join(name),
        mode: Some(Mode::Mtd),
        hold: Some(true),
        lease_ms: Some(1500),
        time_budget_ms: Some(60_000),
        ..Args::default()
    };
    let poll = |renew: bool| {
        let qmp = &qmp;
        async move {
            let args = QueryArgs { renew_lease: renew.then_some(true) };
            qmp.call::<QueryCheckpoint>(&args).await.unwrap()
        }
    };

    // The coordinator's polls keep it alive well past the lease.
    qmp.call::<Checkpoint>(&start("renewed.mekha")).await.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let state = poll(true).await;
        assert_eq!(state.status, Status::Live, "renewed by its coordinator, yet: {state:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    qmp.call::<CheckpointCancel>(&Empty {}).await.unwrap();
    wait_checkpoint_settled(&qmp).await;

    // Polled by someone else only: it gives up once the lease has run out.
    qmp.call::<Checkpoint>(&start("orphan.mekha")).await.unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let state = poll(false).await;
        if state.status != Status::Live || Instant::now() > until {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state.status, Status::Failed, "a status poll kept the checkpoint alive: {state:?}");
    assert_eq!(state.error_kind, Some(ErrorKind::LeaseExpired), "{state:?}");
    assert!(state.error.as_deref().unwrap_or("").contains("lease expired"), "{state:?}");
    assert!(vm.is_running(), "{}", vm.stderr());
}

/// A bug in mekha (a panic, injected with `MEKHA_FAULT`) while the VM is
/// stopped, or while its image is written, fails that checkpoint and
/// nothing else: the VM runs on, and the next checkpoint works (no status
/// stuck "active", no lock left poisoned).
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_a_checkpoint_fails_it_and_leaves_the_vm_running() {
    let artifacts = common::artifacts();
    for point in ["checkpoint-stopped", "checkpoint-persisting"] {
        let dir = common::test_dir(&format!("checkpoint-panic-{point}"));
        let images = dir.join("images");
        let mut config = probe_vm(&format!("ck-{point}"), 256, 8);
        config.env = vec![("MEKHA_FAULT".into(), point.into())];
        let mut vm = Vm::launch(&artifacts, None, &dir.join("run"), config).unwrap();
        let qmp = vm.qmp().await.unwrap();
        let log = vm.log();
        log.wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();

        let out = mekha(&artifacts, &["checkpoint", "--mode", "mtd"], &vm.cli_qmp_path(), &images);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{point}: the checkpoint with a panic succeeded");
        assert!(stderr.contains("internal error") && stderr.contains(point), "{point}: {stderr}");

        let status = qmp.status().await.unwrap();
        assert_eq!(status.status, "running", "{point}: the VM was left {status:?}");
        let step = last_step(&log);
        log.wait_for("progress after the failed checkpoint", BOOT, |e| {
            e.ev == "compute" && e.u64("step").unwrap() > step
        })
        .unwrap();

        let summary = json_of(&mekha(&artifacts, &["checkpoint", "--json"], &vm.cli_qmp_path(), &images));
        assert_eq!(summary["generation"], 1, "{point}: {summary}");
        assert!(vm.is_running(), "{}", vm.stderr());
    }
}
