// SPDX-License-Identifier: GPL-2.0-or-later
//! The guest's disk workload on a plain boot (no checkpoint): what the
//! checkpoint tests of writable disks stand on. One VM writes its logs and
//! marks to three ext4 disks — a qcow2 attached with `-drive` on
//! virtio-blk, a raw one with `-blockdev` on virtio-scsi, a qcow2 with
//! `-blockdev` on IDE — reads them back with O_DIRECT on command, shuts
//! down cleanly; the host then finds on each disk exactly what the probe
//! said it wrote, and a clean file system.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use mekha_rig::disk::diskfmt::{self, Mark, LINE, LOG_FILE, PAYLOAD_BYTES};
use mekha_rig::disk::{self, Attach, Bus, Control, DiskContent, DiskImage, Format, Reported, Scanned};
use mekha_rig::{ProbeEvent, Vm, VmConfig};

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
        let made = Reported::from_events(label, &events).marks;
        assert!(scan.marks.is_subset(&made), "{label}: marks the probe did not make: {scan:?} {made:?}");
    }

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
        image.raw_view(&scratch).unwrap().fsck().unwrap();
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

/// Writes `bytes` at `offset` of the file at `path`.
fn overwrite(path: &std::path::Path, offset: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}
