// SPDX-License-Identifier: GPL-2.0-or-later
//! The guest's disk workload without a checkpoint of disks: what the
//! checkpoint tests of writable disks stand on.
//!
//! - A plain boot: one VM writes its logs and marks to three ext4 disks
//!   (a qcow2 attached with `-drive` on virtio-blk, a raw one with
//!   `-blockdev` on virtio-scsi, a qcow2 with `-blockdev` on IDE), reads
//!   them back with O_DIRECT on command, shuts down cleanly; the host then
//!   finds on each disk exactly what the probe said it wrote, and a clean
//!   file system. Damage made on purpose is caught.
//! - The negative control: a checkpoint that leaves the disk to the caller
//!   (`--allow-writable-disks`), the original writing on, a restore onto
//!   the disk as the original left it: the probe, its scan and the host's
//!   check each catch it.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mekha_rig::disk::diskfmt::{self, Mark, LINE, LOG_FILE, PAYLOAD_BYTES};
use mekha_rig::disk::{self, Attach, Bus, Control, DiskContent, DiskImage, Format, Reported, Scanned};
use mekha_rig::{Artifacts, ProbeEvent, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(120);
/// Lines each disk's log has before the test scans and shuts down.
const LINES: u64 = 60;

#[tokio::test(flavor = "multi_thread")]
async fn logs_on_three_buses_match_the_probe_and_fsck_clean() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("disks");
    let disks = [
        (DiskImage::create(&dir, "vblk", Format::Qcow2, 64).unwrap(), Bus::VirtioBlk, Attach::Drive),
        (DiskImage::create(&dir, "vscsi", Format::Raw, 64).unwrap(), Bus::VirtioScsi, Attach::Blockdev),
        (DiskImage::create(&dir, "ide", Format::Qcow2, 64).unwrap(), Bus::Ide, Attach::Blockdev),
    ];
    let labels: Vec<&str> = disks.iter().map(|(image, ..)| image.label.as_str()).collect();
    let ctl_socket = dir.join("ctl.sock");

    let mut config = VmConfig::new("disks-1");
    config.probe_args = ["mekha.id=1".to_owned(), "probe.clock_ms=1000".to_owned()].to_vec();
    config.probe_args.extend(disk::probe_args(&labels));
    config.extra_args = disk::workload_args(&ctl_socket);
    config.extra_args.extend(disk::scsi_controller());
    for (i, (image, bus, attach)) in (0u32..).zip(&disks) {
        config.extra_args.extend(image.qemu_args(&format!("d{i}"), *bus, *attach, 0));
    }
    let mut vm = Vm::launch(&artifacts, None, &dir.join("run"), config).unwrap();
    vm.qmp().await.unwrap();
    let log = vm.log();
    for label in &labels {
        let open = log.wait_for("disk_open", BOOT, |e| e.ev == "disk_open" && e.str("disk") == Some(label)).unwrap();
        assert_eq!(open.str("random"), Some("hwrng"), "the lines' randomness must come from the host: {:?}", open.json);
    }
    for label in &labels {
        log.wait_for("lines on every disk", BOOT, |e| {
            e.ev == "disk" && e.str("disk") == Some(label) && e.u64("counter").unwrap_or(0) >= LINES
        })
        .unwrap();
    }

    // What the disks hold, read in the guest with O_DIRECT: each log good
    // and at least as long as reported before the scan, marks that the
    // probe made.
    let mut ctl = Control::connect(&ctl_socket).unwrap();
    ctl.send("scan").unwrap();
    let before_scan = log.events();
    for label in &labels {
        log.wait_for("disk_scan", BOOT, |e| e.ev == "disk_scan" && e.str("disk") == Some(label)).unwrap();
        let events = log.events();
        let scan = Scanned::last(label, &events).unwrap();
        let (counter, _) = *Reported::from_events(label, &before_scan).heads.last().unwrap();
        assert_eq!(scan.log_error, None, "{label}: {scan:?}");
        assert!(scan.log_lines >= counter, "{label}: {scan:?}");
        assert_eq!(scan.bytes, 64 << 20, "{label}: {scan:?}");
        assert!(!scan.marks.is_empty(), "{label}: no mark on the device: {scan:?}");
        assert!(scan.orphans.is_empty(), "{label}: marks of no file: {scan:?}");
        let made = Reported::from_events(label, &events).marks;
        assert!(scan.marks.is_subset(&made), "{label}: marks the probe did not make: {scan:?} {made:?}");
    }

    // A range read back with O_DIRECT: a mark's blocks, where the probe
    // says the device holds them.
    let events = log.events();
    let mark = events.iter().find(|e| e.ev == "disk_mark" && e.str("disk") == Some("vscsi")).unwrap();
    let physical = mark.u64("physical").expect("a mark in one piece");
    let nonce = u64::from_str_radix(mark.str("nonce").unwrap(), 16).unwrap();
    let mark_bytes = Mark { seq: mark.u64("seq").unwrap(), nonce }.content();
    let mark_crc = crc32fast::hash(&mark_bytes);
    ctl.send(&format!("crc vscsi {physical} {}", mark_bytes.len())).unwrap();
    let crc = log.wait_for("disk_crc", BOOT, |e| e.ev == "disk_crc").unwrap();
    assert_eq!(crc.str("crc"), Some(format!("{mark_crc:08x}").as_str()), "{:?}", crc.json);

    // A clean shutdown: writers stop, disks unmounted, the VM powers off.
    ctl.send("shutdown").unwrap();
    let status = vm.wait_exit(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "QEMU did not power off cleanly ({status:?}): {}", log.tail(20));
    let events = log.events();
    let exit: Vec<&ProbeEvent> = events.iter().filter(|e| e.ev == "exit").collect();
    assert_eq!(exit.len(), 1, "{exit:?}");
    assert_eq!(exit[0].str("reason"), Some("shutdown"), "{exit:?}");
    assert!(!events.iter().any(|e| e.ev == "error"), "{}", log.tail(40));

    let scratch = dir.join("read");
    for (image, ..) in &disks {
        let reported = Reported::from_events(&image.label, &events);
        assert!(reported.marks.len() >= 2, "{}: marks {:?}", image.label, reported.marks);
        let content = DiskContent::read(image, &scratch).unwrap();
        content.check_run(&image.label, &reported).unwrap();
        let view = image.raw_view(&scratch).unwrap();
        view.fsck().unwrap();
        if image.label == "vscsi" {
            assert_eq!(view.crc(physical, mark_bytes.len() as u64).unwrap(), mark_crc);
        }
    }

    // The checker sees what it is meant to: another run's line spliced
    // into the log, another run's mark left on the device.
    let (raw, ..) = &disks[1];
    let view = raw.raw_view(&scratch).unwrap();
    let reported = Reported::from_events(&raw.label, &events);
    let content = DiskContent::read(raw, &scratch).unwrap();
    let start = view.file_block_offset(&format!("/{LOG_FILE}"), 0).unwrap();
    let prev = content.head_at(5).unwrap();
    let (line, _) = diskfmt::encode_line(5, 5, prev, &[0x5a; PAYLOAD_BYTES]);
    let at = start + 5 * LINE as u64;
    let mut original = vec![0u8; LINE];
    std::fs::File::open(&view.path).unwrap().read_exact_at(&mut original, at).unwrap();
    overwrite(&view.path, at, &line);
    let spliced = DiskContent::read(raw, &scratch).unwrap().check_run(&raw.label, &reported).unwrap_err();
    assert!(spliced.to_string().contains("another run's line"), "{spliced}");
    overwrite(&view.path, at, &original);
    DiskContent::read(raw, &scratch).unwrap().check_run(&raw.label, &reported).unwrap();
    let foreign = Mark { seq: 1, nonce: 0x0123_4567_89ab_cdef };
    overwrite(&view.path, (64 << 20) - 8192, &foreign.content());
    let leaked = DiskContent::read(raw, &scratch).unwrap().check_run(&raw.label, &reported).unwrap_err();
    assert!(leaked.to_string().contains("marks the run did not make"), "{leaked}");
}

/// Starts `config`'s VM in `run` waiting for an incoming state, restores
/// it from the latest checkpoint of `images`, and asks its probe to scan
/// its disks (with O_DIRECT) at once: the restored VM and its control port.
async fn restore_and_scan(artifacts: &Artifacts, mut config: VmConfig, run: &Path, images: &Path) -> (Vm, Control) {
    config.incoming = true;
    let mut restored = Vm::launch(artifacts, None, run, config).unwrap();
    restored.qmp().await.unwrap();
    let mut ctl = Control::connect(&run.join("ctl.sock")).unwrap();
    common::json_of(&common::mekha(artifacts, &["restore", "--json"], &restored.cli_qmp_path(), images));
    ctl.send("scan").unwrap();
    (restored, ctl)
}

/// Writes `bytes` at `offset` of the file at `path`.
fn overwrite(path: &std::path::Path, offset: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

/// The negative control of the checkpoint tests: a restore that leaves the
/// disk as the original VM left it (`--allow-writable-disks`: the caller
/// said it snapshots disks itself, and did not) is caught — by the probe's
/// first look at the device after the restore, by its O_DIRECT scan, and
/// by the host's check of the restored run against the original.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_not_rolled_back_with_memory_is_caught() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("disks-not-rolled-back");
    let images = dir.join("images");
    let image = DiskImage::create(&dir, "log", Format::Raw, 64).unwrap();
    let config = |run: &str| {
        let mut config = VmConfig::new("disks-2");
        config.probe_args = ["mekha.id=2", "probe.clock_ms=1000", "probe.disk_mark_ms=200"].map(String::from).to_vec();
        config.probe_args.extend(disk::probe_args(&["log"]));
        config.extra_args = disk::workload_args(&dir.join(run).join("ctl.sock"));
        config.extra_args.extend(image.qemu_args("d0", Bus::VirtioBlk, Attach::Drive, 0));
        config
    };
    let mut vm = Vm::launch(&artifacts, None, &dir.join("run1"), config("run1")).unwrap();
    vm.qmp().await.unwrap();
    let log1 = vm.log();
    let counter = |log: &mekha_rig::ProbeLog| Reported::from_events("log", &log.events()).heads.last().map(|h| h.0);
    log1.wait_for("lines", BOOT, |e| e.ev == "disk" && e.u64("counter").unwrap_or(0) >= 40).unwrap();

    let out =
        common::mekha(&artifacts, &["checkpoint", "--json", "--allow-writable-disks"], &vm.cli_qmp_path(), &images);
    common::json_of(&out);
    // The original writes on past the checkpoint, then dies.
    let at_checkpoint = counter(&log1).unwrap();
    log1.wait_for("lines after the checkpoint", BOOT, |e| {
        e.ev == "disk" && e.u64("counter").unwrap_or(0) >= at_checkpoint + 80
    })
    .unwrap();
    vm.kill();
    let original = Reported::from_events("log", &log1.events());

    let (mut restored, mut ctl) = restore_and_scan(&artifacts, config("run2"), &dir.join("run2"), &images).await;
    let log2 = restored.log();
    log2.wait_for("disk_scan", BOOT, |e| e.ev == "disk_scan").unwrap();
    let events2 = log2.events();
    let scan = Scanned::last("log", &events2).unwrap();
    // Marks the original made after the checkpoint, on the device, in
    // no file of the restored file system: what the restore should have
    // discarded, seen before the restored guest overwrote them all.
    let restored_marks = Reported::from_events("log", &events2).marks;
    assert!(!scan.orphans.is_empty(), "the scan saw nothing of the original's writes: {scan:?}");
    for orphan in &scan.orphans {
        assert!(original.marks.contains(orphan) && !restored_marks.contains(orphan), "{orphan:?}: {scan:?}");
    }
    // The probe's first look at the log's end, before it wrote again,
    // found the original's next line there.
    let anomalies: Vec<_> = events2.iter().filter(|e| e.ev == "disk_anomaly").collect();
    // At the first tick: the counter in memory is the line the probe is
    // about to write. (Marks come from their own thread, maybe earlier.)
    let tail = anomalies.first().expect("no anomaly after the restore");
    if let Some(first) = events2.iter().find(|e| e.ev == "disk") {
        assert!(tail.json["mono_ns"].as_u64() <= first.json["mono_ns"].as_u64(), "not the first tick: {:?}", tail.json);
    }
    assert_eq!(tail.u64("counter"), tail.u64("line"), "not the next line: {:?}", tail.json);
    for e in anomalies {
        assert_eq!(e.str("kind"), Some("tail"), "{:?}", e.json);
        let line = e.u64("line").unwrap();
        assert_eq!(e.json["found"]["seq"].as_u64(), Some(line), "not the original's line: {:?}", e.json);
        assert!(line >= e.u64("counter").unwrap(), "{:?}", e.json);
    }

    // The host's check of the restored run against the original fails
    // too. (e2fsck may well find the file system clean: the restored
    // guest rewrote the metadata from its memory. That is why the checks
    // above look at content.)
    ctl.send("shutdown").unwrap();
    let status = restored.wait_exit(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {}", log2.tail(20));
    let restored_run = Reported::from_events("log", &log2.events());
    let content = DiskContent::read(&image, &dir.join("read")).unwrap();
    let caught = content.check_restored("log", &original, &restored_run).unwrap_err().to_string();
    assert!(caught.contains("anomalies"), "{caught}");
    // Blind to the probe's own finding, the host still sees the
    // original's marks left on the device.
    let blind = Reported { anomalies: Vec::new(), ..restored_run };
    let caught = content.check_restored("log", &original, &blind).unwrap_err().to_string();
    assert!(caught.contains("no mark file"), "{caught}");
}

/// The disks roll back with memory: three checkpoints of a VM writing
/// logs to a qcow2 (`-drive`, virtio-blk) and a raw disk (`-blockdev`,
/// virtio-scsi) — the first whole, the others the clusters written since
/// the one before — the original writing on past the last, killed; a
/// QEMU started with the same command line plus `-incoming defer` and
/// restored: each disk is as it was at the last checkpoint before any
/// guest code runs (the probe's first look and its O_DIRECT scan find
/// nothing of the original's later writes), each log goes on from
/// exactly the checkpoint's line with the counter in memory, and after a
/// clean shutdown the host finds the logs whole and e2fsck the file
/// systems clean.
#[tokio::test(flavor = "multi_thread")]
async fn disks_roll_back_with_memory() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("disks-rolled-back");
    let images = dir.join("images");
    let disks = [
        (DiskImage::create(&dir, "vblk", Format::Qcow2, 64).unwrap(), Bus::VirtioBlk, Attach::Drive),
        (DiskImage::create(&dir, "vscsi", Format::Raw, 64).unwrap(), Bus::VirtioScsi, Attach::Blockdev),
    ];
    let labels: Vec<&str> = disks.iter().map(|(image, ..)| image.label.as_str()).collect();
    let config = |run: &str| {
        let mut config = VmConfig::new("disks-3");
        config.probe_args = ["mekha.id=3", "probe.clock_ms=1000", "probe.disk_mark_ms=200"].map(String::from).to_vec();
        config.probe_args.extend(disk::probe_args(&labels));
        config.extra_args = disk::workload_args(&dir.join(run).join("ctl.sock"));
        config.extra_args.extend(disk::scsi_controller());
        for (i, (image, bus, attach)) in (0u32..).zip(&disks) {
            config.extra_args.extend(image.qemu_args(&format!("d{i}"), *bus, *attach, 0));
        }
        config
    };
    let mut vm = Vm::launch(&artifacts, None, &dir.join("run1"), config("run1")).unwrap();
    vm.qmp().await.unwrap();
    let log1 = vm.log();
    let counter = |log: &mekha_rig::ProbeLog, label: &str| {
        Reported::from_events(label, &log.events()).heads.last().map_or(0, |h| h.0)
    };
    let wait_lines = |log: &mekha_rig::ProbeLog, lines: u64| {
        for label in &labels {
            log.wait_for("lines", BOOT, |e| {
                e.ev == "disk" && e.str("disk") == Some(label) && e.u64("counter").unwrap_or(0) >= lines
            })
            .unwrap();
        }
    };

    // The pause of the same VM with its disks left out, to compare.
    wait_lines(&log1, 20);
    let args = ["checkpoint", "--json", "--allow-writable-disks"];
    let without = common::json_of(&common::mekha(&artifacts, &args, &vm.cli_qmp_path(), &images));
    let without_ms = without["max_pause_ns"].as_u64().unwrap_or(0) as f64 / 1e6;
    // Three checkpoints while the guest writes: one whole, two deltas.
    let mut summaries = Vec::new();
    for round in 1..=3u64 {
        wait_lines(&log1, 40 * round);
        let out = common::mekha(&artifacts, &["checkpoint", "--json"], &vm.cli_qmp_path(), &images);
        summaries.push(common::json_of(&out));
    }
    for (i, summary) in summaries.iter().enumerate() {
        let captured = summary["vms"][0]["progress"]["disks"].as_array().cloned().unwrap_or_default();
        assert_eq!(captured.len(), 2, "{summary}");
        for disk in &captured {
            let kind = if i == 0 { "full" } else { "delta" };
            assert_eq!(disk["kind"], kind, "checkpoint {}: {summary}", i + 1);
            // A delta holds what ~40 lines, a few marks and the file
            // system's metadata touched: far from the whole log.
            let data = disk["data-bytes"].as_u64().unwrap();
            if i > 0 {
                assert!(data < 8 << 20, "checkpoint {}: a delta of {data} bytes: {summary}", i + 1);
            }
        }
    }
    eprintln!(
        "pause without disks {without_ms:.2} ms; with two disks: {:?} ms",
        summaries.iter().map(|s| s["max_pause_ns"].as_u64().unwrap_or(0) as f64 / 1e6).collect::<Vec<_>>()
    );

    // The original writes on past the last checkpoint, then dies.
    let at_checkpoint: Vec<u64> = labels.iter().map(|l| counter(&log1, l)).collect();
    wait_lines(&log1, at_checkpoint.iter().max().unwrap() + 80);
    vm.kill();
    let events1 = log1.events();

    let (mut restored, mut ctl) = restore_and_scan(&artifacts, config("run2"), &dir.join("run2"), &images).await;
    let log2 = restored.log();
    for label in &labels {
        log2.wait_for("disk_scan", BOOT, |e| e.ev == "disk_scan" && e.str("disk") == Some(label)).unwrap();
    }
    let events2 = log2.events();
    let anomalies: Vec<_> = events2.iter().filter(|e| e.ev == "disk_anomaly").map(|e| &e.json).collect();
    assert!(anomalies.is_empty(), "the restored guest found the original's writes: {anomalies:?}");
    for label in &labels {
        let scan = Scanned::last(label, &events2).unwrap();
        assert_eq!(scan.log_error, None, "{label}: {scan:?}");
        assert!(scan.orphans.is_empty(), "{label}: the original's marks after the checkpoint: {scan:?}");
    }
    wait_lines(&log2, at_checkpoint.iter().max().unwrap() + 20);

    ctl.send("shutdown").unwrap();
    let status = restored.wait_exit(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {}", log2.tail(20));
    let events2 = log2.events();
    let scratch = dir.join("read");
    for (image, ..) in &disks {
        let label = image.label.as_str();
        let original = Reported::from_events(label, &events1);
        let restored_run = Reported::from_events(label, &events2);
        let content = DiskContent::read(image, &scratch).unwrap();
        let check = content.check_restored(label, &original, &restored_run).unwrap();
        // The disk had moved past the checkpoint: the restore discarded
        // lines the original wrote.
        assert!(check.first_discarded_head.is_some(), "{label}: nothing was rolled back: {check:?}");
        image.raw_view(&scratch).unwrap().fsck().unwrap();
    }

    // `mekha image verify` checks every layer of every chain: a flipped
    // byte in the oldest layer (the whole capture) is found, named, and
    // a restore from it is refused before the VM runs.
    let verify = Command::new(&artifacts.mekha).args(["image", "verify"]).arg(&images).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let said = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert!(said.contains("2 disks"), "{said}");
    let oldest = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("gen-"))
        .min()
        .unwrap();
    let layer = std::fs::read_dir(&oldest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "mdisk"))
        .unwrap();
    let mut byte = [0u8; 1];
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&layer).unwrap();
    file.read_exact_at(&mut byte, 8192).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], 8192).unwrap();
    let verify = Command::new(&artifacts.mekha).args(["image", "verify"]).arg(&images).output().unwrap();
    let said = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert_eq!(verify.status.code(), Some(5), "{said}");
    assert!(said.contains("DAMAGED") && said.contains(&*layer.file_name().unwrap().to_string_lossy()), "{said}");
    let mut config3 = config("run3");
    config3.incoming = true;
    let mut refused = Vm::launch(&artifacts, None, &dir.join("run3"), config3).unwrap();
    refused.qmp().await.unwrap();
    let out = common::mekha(&artifacts, &["restore"], &refused.cli_qmp_path(), &images);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a restore from a damaged layer succeeded");
    assert!(said.contains("checksum") && said.contains(".mdisk"), "{said}");
    assert!(refused.log().events().iter().all(|e| e.ev != "disk"), "the guest ran: {}", refused.log().tail(10));
}
