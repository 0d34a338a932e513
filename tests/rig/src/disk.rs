// SPDX-License-Identifier: GPL-2.0-or-later
//! Writable disks for the guest probe's disk workload (`probe.disks`):
//! images holding an empty ext4 (raw, or qcow2 converted from one), the
//! QEMU arguments that attach them (`-drive` or `-blockdev`, virtio-blk,
//! virtio-scsi or IDE), the control port the probe takes commands on, and
//! the host's check of what a stopped VM left on them.
//!
//! The host reads a disk without mounting it: e2fsprogs' `debugfs` dumps
//! the file system of a raw image, a qcow2 image is converted to a raw one
//! first (`qemu-img convert`). The tools come from the packages e2fsprogs
//! and qemu-utils (ci/deps installs them).

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
pub use mekha_probe::diskfmt;

use diskfmt::{LogSummary, Mark, BLOCK, LINE, LOG_FILE, MARK_DIR};

use crate::ProbeEvent;

/// The virtio-serial port name the probe reads commands from
/// (`probe.ctl`).
pub const CTL_PORT: &str = "org.mekha.probe.ctl";

/// An image file's format, as QEMU names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// The controller a disk sits on in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// virtio-blk-pci: the guest's /dev/vdX.
    VirtioBlk,
    /// scsi-hd on a virtio-scsi-pci controller: /dev/sdX.
    VirtioScsi,
    /// ide-hd on the i440fx's PIIX3 IDE controller (ata_piix): /dev/sdX.
    /// The guest kernel has no AHCI driver: no disk on an `ahci` device.
    Ide,
}

/// How QEMU's command line names the disk's block node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// `-drive if=none,...`: a BlockBackend with an implicit node.
    Drive,
    /// `-blockdev` for the file and the format node, named `ID-file`, `ID`.
    Blockdev,
}

/// An image holding an ext4 file system labelled as the probe looks for it.
#[derive(Debug, Clone)]
pub struct DiskImage {
    pub path: PathBuf,
    pub format: Format,
    /// The ext4 label: what `probe.disks` names.
    pub label: String,
}

fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

impl DiskImage {
    /// Makes `dir/LABEL.raw` or `dir/LABEL.qcow2`, of `size_mib` MiB,
    /// holding an empty ext4 labelled `label`.
    pub fn create(dir: &Path, label: &str, format: Format, size_mib: u64) -> Result<DiskImage> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{label}.{}", format.as_str()));
        let raw = match format {
            Format::Raw => path.clone(),
            Format::Qcow2 => dir.join(format!(".{label}.mkfs.raw")),
        };
        let _ = std::fs::remove_file(&raw);
        std::fs::File::create(&raw)?.set_len(size_mib << 20)?;
        // -T default: 4 KiB blocks, as on a disk of any size (a small one
        // would get 1 KiB blocks; the probe's O_DIRECT checks read 4 KiB
        // blocks of the file system). -E nodiscard: nothing to discard in a
        // new sparse file.
        run(Command::new("mkfs.ext4").args(["-F", "-q", "-T", "default", "-E", "nodiscard", "-L", label]).arg(&raw))?;
        if format == Format::Qcow2 {
            let _ = std::fs::remove_file(&path);
            run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&path))?;
            std::fs::remove_file(&raw)?;
        }
        Ok(DiskImage { path, format, label: label.to_owned() })
    }

    /// The image as a raw file: itself, or a raw copy of a qcow2 one (in
    /// `scratch`, removed when the view is dropped). `-U`: a running QEMU's
    /// image may be read (its cached writes are not there).
    pub fn raw_view(&self, scratch: &Path) -> Result<RawView> {
        if self.format == Format::Raw {
            return Ok(RawView { path: self.path.clone(), temporary: false });
        }
        std::fs::create_dir_all(scratch)?;
        let path = scratch.join(format!("{}.view.raw", self.label));
        let _ = std::fs::remove_file(&path);
        run(Command::new("qemu-img").args(["convert", "-U", "-f", "qcow2", "-O", "raw"]).arg(&self.path).arg(&path))?;
        Ok(RawView { path, temporary: true })
    }

    /// The QEMU arguments attaching the image as block node `id` on `bus`.
    /// A virtio-scsi disk needs [`scsi_controller`] once in the VM; an IDE
    /// one takes `ide_unit` (0..4: the PIIX3's two buses, two units each).
    pub fn qemu_args(&self, id: &str, bus: Bus, attach: Attach, ide_unit: u32) -> Vec<String> {
        let fmt = self.format.as_str();
        let file = self.path.display();
        let mut args = match attach {
            Attach::Drive => vec!["-drive".into(), format!("if=none,id={id},format={fmt},file={file}")],
            Attach::Blockdev => vec![
                "-blockdev".into(),
                format!("driver=file,filename={file},node-name={id}-file"),
                "-blockdev".into(),
                format!("driver={fmt},file={id}-file,node-name={id}"),
            ],
        };
        let device = match bus {
            Bus::VirtioBlk => format!("virtio-blk-pci,drive={id},id={id}-dev"),
            Bus::VirtioScsi => format!("scsi-hd,drive={id},id={id}-dev,bus={SCSI_CONTROLLER}.0"),
            Bus::Ide => format!("ide-hd,drive={id},id={id}-dev,bus=ide.{},unit={}", ide_unit / 2, ide_unit % 2),
        };
        args.extend(["-device".into(), device]);
        args
    }
}

const SCSI_CONTROLLER: &str = "scsi0";

/// The virtio-scsi controller the [`Bus::VirtioScsi`] disks sit on.
pub fn scsi_controller() -> Vec<String> {
    vec!["-device".into(), format!("virtio-scsi-pci,id={SCSI_CONTROLLER}")]
}

/// The QEMU arguments the disk workload wants besides the disks: a
/// virtio-rng fed by the host (the probe's random lines then differ between
/// two QEMUs restored from one checkpoint) and the control port, whose
/// socket QEMU listens on at `ctl_socket`.
pub fn workload_args(ctl_socket: &Path) -> Vec<String> {
    [
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-pci,rng=rng0",
        "-chardev",
        &format!("socket,id=probectl,path={},server=on,wait=off", ctl_socket.display()),
        "-device",
        "virtio-serial-pci,id=probeser",
        "-device",
        &format!("virtserialport,chardev=probectl,name={CTL_PORT}"),
    ]
    .map(String::from)
    .to_vec()
}

/// The probe's words for writing to the disks labelled `labels`, with
/// commands on the control port.
pub fn probe_args(labels: &[&str]) -> Vec<String> {
    vec![format!("probe.disks={}", labels.join(",")), format!("probe.ctl={CTL_PORT}")]
}

/// A raw file the host reads an image's content from.
pub struct RawView {
    pub path: PathBuf,
    temporary: bool,
}

impl Drop for RawView {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl RawView {
    /// Copies the file system's files into `to` (debugfs `rdump`).
    pub fn dump(&self, to: &Path) -> Result<()> {
        let _ = std::fs::remove_dir_all(to);
        std::fs::create_dir_all(to)?;
        let out = run(Command::new("debugfs").arg("-R").arg(format!("rdump / {}", to.display())).arg(&self.path))?;
        // debugfs reports a failed command on stderr and exits 0 all the same.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let problems: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("debugfs ")).collect();
        ensure!(problems.is_empty(), "debugfs rdump of {}: {}", self.path.display(), problems.join("\n"));
        Ok(())
    }

    /// `e2fsck -fn`: the file system is clean, or the error says what
    /// e2fsck found.
    pub fn fsck(&self) -> Result<()> {
        let out = Command::new("e2fsck").arg("-fn").arg(&self.path).output().context("running e2fsck")?;
        ensure!(
            out.status.success(),
            "e2fsck -fn {} ({}): {}{}",
            self.path.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Where the file system keeps block `block` (of 4 KiB) of file
    /// `path` (absolute in the file system): a byte offset in the image.
    pub fn file_block_offset(&self, path: &str, block: u64) -> Result<u64> {
        let out = run(Command::new("debugfs").arg("-R").arg(format!("bmap {path} {block}")).arg(&self.path))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let physical: u64 = text.trim().parse().with_context(|| {
            format!("debugfs bmap {path} {block}: {text:?} {}", String::from_utf8_lossy(&out.stderr))
        })?;
        ensure!(physical != 0, "{path} has no block {block}");
        Ok(physical * BLOCK as u64)
    }

    /// CRC-32 of `len` bytes from `offset`: what the probe's `crc`
    /// command reports of the same range of its device.
    pub fn crc(&self, offset: u64, len: u64) -> Result<u32> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut data = Vec::new();
        f.take(len).read_to_end(&mut data)?;
        ensure!(data.len() as u64 == len, "{} ends before {offset}+{len}", self.path.display());
        Ok(crc32fast::hash(&data))
    }

    /// Every mark block on the device, wherever the file system put it
    /// (or left it: freed blocks keep their content).
    pub fn marks(&self) -> Result<Vec<Mark>> {
        use std::io::Read;
        let mut f = std::fs::File::open(&self.path)?;
        let mut buf = vec![0u8; 256 * BLOCK];
        let mut marks = Vec::new();
        loop {
            let mut n = 0;
            while n < buf.len() {
                match f.read(&mut buf[n..])? {
                    0 => break,
                    k => n += k,
                }
            }
            marks.extend(diskfmt::scan_marks(&buf[..n]));
            if n < buf.len() {
                return Ok(marks);
            }
        }
    }
}

/// Commands to the probe (`probe.ctl`), through the socket QEMU listens
/// on. The connection stays open: what was sent reaches the guest even
/// while its port is slow to take it.
pub struct Control {
    stream: UnixStream,
}

impl Control {
    /// Connects to `socket`, waiting up to 30 s for QEMU to make it.
    pub fn connect(socket: &Path) -> Result<Control> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match UnixStream::connect(socket) {
                Ok(stream) => return Ok(Control { stream }),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).with_context(|| format!("connecting to {}", socket.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Sends one command (`scan`, `shutdown`).
    pub fn send(&mut self, command: &str) -> Result<()> {
        self.stream.write_all(format!("{command}\n").as_bytes()).context("writing to the control port")
    }
}

/// What a run of the probe said about one disk, from its events.
#[derive(Debug, Clone, Default)]
pub struct Reported {
    /// `(counter, last_crc)` of each `disk` event and of `disk_closed`.
    pub heads: Vec<(u64, u32)>,
    /// The final counters (`disk_closed`), if the run shut down cleanly.
    pub closed: Option<(u64, u32)>,
    /// Every mark made (`disk_mark`).
    pub marks: BTreeSet<Mark>,
    /// `disk_anomaly` events, as JSON.
    pub anomalies: Vec<String>,
}

fn hex_u32(e: &ProbeEvent, field: &str) -> Option<u32> {
    u32::from_str_radix(e.str(field)?, 16).ok()
}

impl Reported {
    /// The marks made once the log had `counter` lines or more: after a
    /// checkpoint taken at `counter`, what a restored disk must not hold.
    pub fn marks_from(&self, counter: u64) -> BTreeSet<Mark> {
        self.marks.iter().filter(|m| m.seq >= counter).copied().collect()
    }

    /// The events of disk `label` among `events` (one run's, in order).
    pub fn from_events(label: &str, events: &[ProbeEvent]) -> Reported {
        let mut r = Reported::default();
        for e in events.iter().filter(|e| e.str("disk") == Some(label)) {
            let head = e.u64("counter").zip(hex_u32(e, "last_crc"));
            match e.ev.as_str() {
                "disk" => r.heads.extend(head),
                "disk_closed" => {
                    r.heads.extend(head);
                    r.closed = head;
                }
                "disk_mark" => {
                    let nonce = e.str("nonce").and_then(|n| u64::from_str_radix(n, 16).ok());
                    if let (Some(seq), Some(nonce)) = (e.u64("seq"), nonce) {
                        r.marks.insert(Mark { seq, nonce });
                    }
                }
                "disk_anomaly" => r.anomalies.push(e.json.to_string()),
                _ => {}
            }
        }
        r
    }
}

/// What the guest read of one disk with O_DIRECT (a `disk_scan` event).
#[derive(Debug, Clone)]
pub struct Scanned {
    /// The device's size and CRC-32 of all of it.
    pub bytes: u64,
    pub crc: u32,
    /// Mark blocks found on the device.
    pub marks: BTreeSet<Mark>,
    /// Those whose file the guest's marks directory lacks: another run's.
    pub orphans: BTreeSet<Mark>,
    /// The log's good lines, its last good line's crc, its first problem.
    pub log_lines: u64,
    pub log_last_crc: u32,
    pub log_error: Option<String>,
}

impl Scanned {
    /// The last scan of disk `label` among `events`.
    pub fn last(label: &str, events: &[ProbeEvent]) -> Option<Scanned> {
        let e = events.iter().rev().find(|e| e.ev == "disk_scan" && e.str("disk") == Some(label))?;
        let log = &e.json["log"];
        let marks = |field: &str| -> Option<BTreeSet<Mark>> {
            let list = e.json[field].as_array()?.iter();
            Some(
                list.filter_map(|m| {
                    let nonce = u64::from_str_radix(m["nonce"].as_str()?, 16).ok()?;
                    Some(Mark { seq: m["seq"].as_u64()?, nonce })
                })
                .collect(),
            )
        };
        Some(Scanned {
            bytes: e.u64("bytes")?,
            crc: hex_u32(e, "crc")?,
            marks: marks("marks")?,
            orphans: marks("orphans")?,
            log_lines: log["lines"].as_u64()?,
            log_last_crc: u32::from_str_radix(log["last_crc"].as_str()?, 16).ok()?,
            log_error: log["error"].as_str().map(str::to_owned),
        })
    }
}

/// What a stopped VM's disk holds, read on the host.
#[derive(Debug, Clone)]
pub struct DiskContent {
    /// The log, checked line by line.
    pub log: LogSummary,
    /// Each line's crc, by seq (the good lines).
    pub line_crcs: Vec<u32>,
    /// The files in the marks directory.
    pub mark_files: BTreeSet<Mark>,
    /// Files in the marks directory whose content is not their mark's.
    pub bad_mark_files: Vec<String>,
    /// Mark blocks anywhere on the device.
    pub device_marks: BTreeSet<Mark>,
}

impl DiskContent {
    /// Reads `image` (of a stopped VM), with `scratch` for the copies.
    pub fn read(image: &DiskImage, scratch: &Path) -> Result<DiskContent> {
        let view = image.raw_view(scratch)?;
        let files = scratch.join(format!("{}.files", image.label));
        view.dump(&files)?;
        let text = std::fs::read(files.join(LOG_FILE)).with_context(|| format!("{}: no {LOG_FILE}", image.label))?;
        let log = diskfmt::check_log(&text);
        let line_crcs = text
            .chunks(LINE)
            .take(usize::try_from(log.lines)?)
            .map(|l| diskfmt::parse_line(l).map(|l| l.crc).unwrap_or(0))
            .collect();
        let mut mark_files = BTreeSet::new();
        let mut bad_mark_files = Vec::new();
        for entry in std::fs::read_dir(files.join(MARK_DIR))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match Mark::from_file_name(&name) {
                Some(m) if std::fs::read(entry.path())? == m.content() => {
                    mark_files.insert(m);
                }
                _ => bad_mark_files.push(name),
            }
        }
        let device_marks = view.marks()?.into_iter().collect();
        Ok(DiskContent { log, line_crcs, mark_files, bad_mark_files, device_marks })
    }

    /// The crc of the log's line `counter - 1`: the chain's head when the
    /// probe had written `counter` lines (0 for none), if the log has it.
    pub fn head_at(&self, counter: u64) -> Option<u32> {
        match counter {
            0 => Some(0),
            c => self.line_crcs.get(usize::try_from(c - 1).ok()?).copied(),
        }
    }

    /// Checks the disk of one run that shut down cleanly against what the
    /// probe reported: a good log (no gap, no duplicate, every crc, the
    /// chain), exactly as long as the final counter and ending in the
    /// reported line; every head reported on the way on the disk; the
    /// marks directory holding exactly the marks made, each intact; no mark
    /// block on the device that the run did not make; no anomaly.
    pub fn check_run(&self, label: &str, run: &Reported) -> Result<()> {
        self.check_log(label, run)?;
        self.check_mark_files(label)?;
        ensure!(
            self.mark_files == run.marks,
            "{label}: mark files {:?} differ from the marks made {:?}",
            self.mark_files,
            run.marks
        );
        let foreign: Vec<_> = self.device_marks.difference(&run.marks).collect();
        ensure!(foreign.is_empty(), "{label}: the device holds marks the run did not make: {foreign:?}");
        Ok(())
    }

    /// Checks the disk of a run restored from a checkpoint of `original`
    /// (killed some time after it) that shut down cleanly. The restored
    /// run's part as [`check_run`](Self::check_run)'s, its first look at
    /// the device (the probe's tail check, before it wrote again) included;
    /// then what the original wrote: its reported heads held by the log up
    /// to one point and none after it (a mix of the two runs fails), its
    /// marks kept by the disk up to one point and none after it, every
    /// mark file made by one of the two runs, and no mark block on the
    /// device without its file (what the original wrote after the
    /// checkpoint, left in blocks the restored file system thinks free).
    /// Says how much of the original was discarded, for the caller to
    /// require that the disk had moved past the checkpoint.
    pub fn check_restored(&self, label: &str, original: &Reported, restored: &Reported) -> Result<RestoreCheck> {
        self.check_log(label, restored)?;
        self.check_mark_files(label)?;
        ensure!(original.anomalies.is_empty(), "{label}: the original run saw anomalies: {:?}", original.anomalies);
        let mut check = RestoreCheck::default();
        for &(c, head) in &original.heads {
            let kept = self.head_at(c) == Some(head);
            match (kept, check.first_discarded_head) {
                (true, None) => check.last_kept_head = Some(c),
                (false, None) => check.first_discarded_head = Some(c),
                (false, Some(_)) => {}
                (true, Some(d)) => bail!(
                    "{label}: the log holds the original's line at counter {c} but not the one at {d}: \
                     a mix of the two runs"
                ),
            }
        }
        let missing: Vec<_> = restored.marks.difference(&self.mark_files).collect();
        ensure!(missing.is_empty(), "{label}: marks the restored run made are not on the disk: {missing:?}");
        let made: BTreeSet<Mark> = original.marks.union(&restored.marks).copied().collect();
        let unknown: Vec<_> = self.mark_files.difference(&made).collect();
        ensure!(unknown.is_empty(), "{label}: mark files neither run made: {unknown:?}");
        let (kept, discarded): (Vec<Mark>, Vec<Mark>) =
            original.marks.iter().partition(|m| self.mark_files.contains(m));
        if let (Some(k), Some(d)) = (kept.iter().map(|m| m.seq).max(), discarded.iter().map(|m| m.seq).min()) {
            ensure!(
                k < d,
                "{label}: the disk keeps the original's mark at {k} but not the one at {d}: a mix of the two runs"
            );
        }
        check.discarded_marks = discarded.len();
        let orphans: Vec<_> = self.device_marks.difference(&self.mark_files).collect();
        ensure!(
            orphans.is_empty(),
            "{label}: the device holds mark blocks of no mark file (written after the checkpoint?): {orphans:?}"
        );
        Ok(check)
    }

    /// The log against one run's report: good, as long as its final
    /// counter, ending in its last line, every reported head on it.
    fn check_log(&self, label: &str, run: &Reported) -> Result<()> {
        if let Some(e) = &self.log.error {
            bail!("{label}: the log is damaged after {} good lines: {e}", self.log.lines);
        }
        ensure!(run.anomalies.is_empty(), "{label}: the probe saw anomalies: {:?}", run.anomalies);
        let Some((counter, crc)) = run.closed else { bail!("{label}: the probe reported no disk_closed") };
        ensure!(self.log.lines > 0, "{label}: the log is empty");
        ensure!(
            self.log.lines == counter && self.log.last_crc == crc,
            "{label}: the log has {} lines ending in {:08x}; the probe's memory said {counter} ending in {crc:08x}",
            self.log.lines,
            self.log.last_crc
        );
        for &(c, head) in &run.heads {
            ensure!(
                self.head_at(c) == Some(head),
                "{label}: at counter {c} the probe reported head {head:08x}, the log has {:?}",
                self.head_at(c)
            );
        }
        Ok(())
    }

    fn check_mark_files(&self, label: &str) -> Result<()> {
        ensure!(self.bad_mark_files.is_empty(), "{label}: damaged or foreign mark files {:?}", self.bad_mark_files);
        Ok(())
    }
}

/// What [`DiskContent::check_restored`] found of the original run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreCheck {
    /// The counter of the original's last reported head the log holds
    /// (before the checkpoint).
    pub last_kept_head: Option<u64>,
    /// The counter of its first reported head the log does not hold
    /// (written after the checkpoint, discarded by the restore).
    pub first_discarded_head: Option<u64>,
    /// Marks the original made that the disk does not hold.
    pub discarded_marks: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Line crcs: the first `common` shared, then `tag`'s own.
    fn crcs(common: u32, total: u32, tag: u32) -> Vec<u32> {
        (0..total).map(|i| if i < common { 1000 + i } else { tag + i }).collect()
    }

    fn content(line_crcs: Vec<u32>, files: &[Mark], device: &[Mark]) -> DiskContent {
        let lines = line_crcs.len() as u64;
        DiskContent {
            log: LogSummary { lines, last_crc: *line_crcs.last().unwrap(), last_counter: Some(lines - 1), error: None },
            line_crcs,
            mark_files: files.iter().copied().collect(),
            bad_mark_files: Vec::new(),
            device_marks: device.iter().copied().collect(),
        }
    }

    fn reported(line_crcs: &[u32], heads: &[u64], closed: bool, marks: &[Mark]) -> Reported {
        let head = |c: u64| (c, line_crcs[usize::try_from(c - 1).unwrap()]);
        Reported {
            heads: heads.iter().map(|&c| head(c)).collect(),
            closed: closed.then(|| head(line_crcs.len() as u64)),
            marks: marks.iter().copied().collect(),
            anomalies: Vec::new(),
        }
    }

    const PRE: Mark = Mark { seq: 3, nonce: 1 };
    const ORIGINAL_POST: Mark = Mark { seq: 13, nonce: 2 };
    const RESTORED_POST: Mark = Mark { seq: 13, nonce: 3 };

    /// Checkpoint after line 10; the original wrote to 20, the restored
    /// run to 25.
    fn runs() -> (Vec<u32>, Vec<u32>, Reported, Reported) {
        let (orig, rest) = (crcs(10, 20, 5000), crcs(10, 25, 9000));
        let original = reported(&orig, &[5, 10, 15, 20], false, &[PRE, ORIGINAL_POST]);
        let restored = reported(&rest, &[12, 20], true, &[RESTORED_POST]);
        (orig, rest, original, restored)
    }

    #[test]
    fn a_disk_rolled_back_to_the_checkpoint_passes() {
        let (_, rest, original, restored) = runs();
        let disk = content(rest, &[PRE, RESTORED_POST], &[PRE, RESTORED_POST]);
        let check = disk.check_restored("d", &original, &restored).unwrap();
        assert_eq!(
            check,
            RestoreCheck { last_kept_head: Some(10), first_discarded_head: Some(15), discarded_marks: 1 }
        );
    }

    #[test]
    fn what_the_original_wrote_after_the_checkpoint_fails() {
        let (orig, rest, original, restored) = runs();
        // Its mark's blocks left on the device.
        let leaked = content(rest.clone(), &[PRE, RESTORED_POST], &[PRE, ORIGINAL_POST, RESTORED_POST]);
        let e = leaked.check_restored("d", &original, &restored).unwrap_err().to_string();
        assert!(e.contains("no mark file"), "{e}");
        // Its mark file still there.
        let kept = content(rest.clone(), &[PRE, ORIGINAL_POST, RESTORED_POST], &[PRE, ORIGINAL_POST, RESTORED_POST]);
        assert!(kept.check_restored("d", &original, &restored).is_ok_and(|c| c.discarded_marks == 0));
        // Its line 20 in the log among the restored run's.
        let mut mixed = rest.clone();
        mixed[19] = orig[19];
        let e = content(mixed, &[PRE, RESTORED_POST], &[PRE, RESTORED_POST])
            .check_restored("d", &original, &restored)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at counter 20"), "{e}");
        // The restored run's memory ahead of its disk.
        let short = content(rest[..24].to_vec(), &[PRE, RESTORED_POST], &[PRE, RESTORED_POST]);
        let e = short.check_restored("d", &original, &restored).unwrap_err().to_string();
        assert!(e.contains("the probe's memory said 25"), "{e}");
    }

    #[test]
    fn one_run_matches_its_disk() {
        let (_, rest, _, restored) = runs();
        let disk = content(rest.clone(), &[RESTORED_POST], &[RESTORED_POST]);
        disk.check_run("d", &restored).unwrap();
        let foreign = content(rest, &[RESTORED_POST], &[RESTORED_POST, PRE]);
        assert!(foreign.check_run("d", &restored).unwrap_err().to_string().contains("did not make"));
    }
}
