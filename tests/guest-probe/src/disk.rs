// SPDX-License-Identifier: GPL-2.0-or-later
//! The disk workload: on each disk named by `probe.disks` (ext4 labels the
//! host gave with `mkfs.ext4 -L`), a log of sequenced, chained, checksummed
//! lines and now and then a mark file (formats: `mekha_probe::diskfmt`),
//! written and fsynced tick after tick, the line count kept in memory too.
//!
//! Disks are found by label, not by device name: which of `sda`/`sdb` an
//! IDE or a SCSI disk gets depends on the order the drivers probe them.
//! Each is mounted at `/mnt/LABEL`.
//!
//! The log's first blocks are allocated when it is made (`fallocate`), so
//! where each line will go is fixed. Before each line the writer reads the
//! block of the disk holding the log's end and the block after it, with
//! O_DIRECT from the device (where FIEMAP says the file system put them):
//! past the lines this run wrote they must hold zeros (what a new image's
//! free blocks hold). A restored VM whose disk still held what the
//! original wrote after the checkpoint fails that check on its first tick,
//! before it writes again (`disk_anomaly`, kind `tail`). The line's seq
//! comes from the file's size and its counter from memory: a disagreement
//! is kind `file`.
//!
//! [`Disks::scan`] reads each whole device with O_DIRECT (the control
//! port's `scan`), [`Disks::shutdown`] stops the writers and unmounts.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mekha_probe::diskfmt::{self, Mark, BLOCK, LINE, LOG_FILE, MARK_DIR, PAYLOAD_BYTES};
use serde_json::{json, Value};

use crate::output::Output;

/// How long the disks may take to show up (SCSI scans asynchronously).
const FIND_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of log allocated ahead (32768 lines, 27 minutes at the default
/// tick): past them the tail check sees only blocks already written.
const PREALLOCATE: libc::off_t = 4 << 20;
/// Bytes per O_DIRECT read of a whole device.
const SCAN_CHUNK: usize = 1 << 20;
/// Marks listed in a `disk_scan` event at most (the rest counted).
const MAX_SCAN_MARKS: usize = 4096;
/// ext4's superblock: at 1024, magic at +56, volume label at +120.
const SUPER: usize = 1024;
const EXT4_MAGIC: u16 = 0xef53;

/// What `probe.disk*` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// ext4 labels of the disks to write to.
    pub labels: Vec<String>,
    /// Pause between two lines.
    pub tick_ms: u64,
    /// Lines per fsync (1: every line).
    pub sync_every: u64,
    /// Pause between two marks (0: no marks).
    pub mark_ms: u64,
}

/// A buffer aligned for O_DIRECT, zeroed.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, BLOCK).expect("a valid layout");
        // SAFETY: len > 0 (callers pass BLOCK multiples).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Aligned { ptr, layout }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr holds layout.size() initialised bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

// SAFETY: the buffer is owned by the Aligned alone, like a Vec's.
unsafe impl Send for Aligned {}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Reads `buf.len()` bytes at `offset` (fewer at the end of the file).
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads a file opened with O_DIRECT into `buf` (aligned, whole blocks)
/// until `size` bytes or its end. Not [`read_full_at`]: after a read
/// short at the file's end, another at that unaligned offset is EINVAL.
fn read_direct_to(file: &File, buf: &mut [u8], size: u64) -> io::Result<usize> {
    let mut done = 0;
    while (done as u64) < size && done < buf.len() {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn open_direct(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path)
}

/// The ext4 label of the file system on `dev`, if it holds one.
fn ext4_label(dev: &Path) -> Option<String> {
    let mut sb = [0u8; SUPER + 256];
    File::open(dev).ok()?.read_exact(&mut sb).ok()?;
    if u16::from_le_bytes([sb[SUPER + 56], sb[SUPER + 57]]) != EXT4_MAGIC {
        return None;
    }
    let label = &sb[SUPER + 120..SUPER + 136];
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    Some(String::from_utf8_lossy(&label[..end]).into_owned())
}

/// The device holding the ext4 file system labelled `label`.
fn find_device(label: &str) -> io::Result<PathBuf> {
    let deadline = Instant::now() + FIND_TIMEOUT;
    loop {
        for entry in std::fs::read_dir("/sys/block")?.flatten() {
            let dev = Path::new("/dev").join(entry.file_name());
            if ext4_label(&dev).as_deref() == Some(label) {
                return Ok(dev);
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no ext4 file system labelled {label:?}")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cstring(s: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(s.as_os_str().as_encoded_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn mount_ext4(dev: &Path, mnt: &Path) -> io::Result<()> {
    std::fs::create_dir_all(mnt)?;
    let (dev_c, mnt_c) = (cstring(dev)?, cstring(mnt)?);
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let rc = unsafe { libc::mount(dev_c.as_ptr(), mnt_c.as_ptr(), c"ext4".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn fs_block_size(mnt: &Path) -> io::Result<u64> {
    let mnt_c = cstring(mnt)?;
    // SAFETY: all-zero is a valid statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs to fill, both ours.
    if unsafe { libc::statvfs(mnt_c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bsize)
}

fn umount(mnt: &Path) -> io::Result<()> {
    let mnt_c = cstring(mnt)?;
    // SAFETY: a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(mnt_c.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Random bytes: from the host through virtio-rng (/dev/hwrng) when the
/// VM has one, so that two QEMUs restored from one checkpoint draw
/// different bytes (the guest kernel's own generator is in the restored
/// memory); else from the guest kernel.
pub struct Random {
    hwrng: Option<File>,
}

impl Random {
    pub fn open() -> Random {
        Random { hwrng: File::open("/dev/hwrng").ok() }
    }

    pub fn source(&self) -> &'static str {
        if self.hwrng.is_some() {
            "hwrng"
        } else {
            "getrandom"
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if let Some(f) = &mut self.hwrng {
            return f.read_exact(buf);
        }
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: a valid, writable range of buf.
            let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            } else {
                done += n as usize;
            }
        }
        Ok(())
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// FIEMAP's request for one extent (linux/fiemap.h).
#[repr(C)]
#[derive(Default)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extent: FiemapExtent,
}

#[repr(C)]
#[derive(Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// _IOWR('f', 11, struct fiemap).
const FS_IOC_FIEMAP: libc::c_ulong = 0xc020_660b;
/// Extents not (yet) on the device.
const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;

/// Where on the device the file's byte `offset` is, if it is allocated.
/// An unwritten (preallocated) block counts: the device holds zeros there
/// on a new image, or what a write after a checkpoint left.
fn physical_offset(file: &File, offset: u64) -> io::Result<Option<u64>> {
    let mut map = Fiemap { start: offset, length: 1, extent_count: 1, ..Fiemap::default() };
    // SAFETY: a struct fiemap with room for extent_count (1) extents.
    if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let e = &map.extent;
    let unusable = FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC;
    if map.mapped_extents == 0 || e.flags & unusable != 0 || offset < e.logical || offset >= e.logical + e.length {
        return Ok(None);
    }
    Ok(Some(e.physical + (offset - e.logical)))
}

/// What a writer shows the rest of the probe.
#[derive(Default)]
struct Stats {
    lines: AtomicU64,
    synced: AtomicU64,
    last_crc: AtomicU32,
    marks: AtomicU64,
    anomalies: AtomicU64,
}

/// One disk's log.
struct DiskLog {
    label: String,
    dev: PathBuf,
    mnt: PathBuf,
    stats: Stats,
}

impl DiskLog {
    fn fields(&self) -> serde_json::Map<String, Value> {
        let s = &self.stats;
        let mut m = serde_json::Map::new();
        m.insert("disk".into(), self.label.clone().into());
        m.insert("counter".into(), s.lines.load(Ordering::Acquire).into());
        m.insert("synced".into(), s.synced.load(Ordering::Acquire).into());
        m.insert("last_crc".into(), format!("{:08x}", s.last_crc.load(Ordering::Acquire)).into());
        m.insert("marks".into(), s.marks.load(Ordering::Acquire).into());
        m.insert("anomalies".into(), s.anomalies.load(Ordering::Acquire).into());
        m
    }

    fn anomaly(&self, out: &Output, kind: &str, mut fields: serde_json::Map<String, Value>) {
        self.stats.anomalies.fetch_add(1, Ordering::AcqRel);
        fields.insert("disk".into(), self.label.clone().into());
        fields.insert("kind".into(), kind.into());
        out.emit("disk_anomaly", Value::Object(fields));
    }
}

/// The writer's own state: its memory of what it wrote.
struct Writer {
    log: Arc<DiskLog>,
    file: File,
    device: File,
    random: Random,
    /// Lines written: the counter kept in memory.
    counter: u64,
    /// Lines fsynced.
    synced: u64,
    prev: u32,
    /// The device block holding the log's end as this run wrote it.
    tail: Vec<u8>,
    tail_index: u64,
    direct_buf: Aligned,
    /// The last `tail` anomaly's device offset and line.
    last_tail: Option<(u64, u64)>,
}

impl Writer {
    /// Checks the log's last block, and the block after it, as the device
    /// holds them against what this run wrote there: past its last line,
    /// zeros. The block after matters when the last one is full: the
    /// original's next line after a checkpoint went there.
    fn check_tail(&mut self, out: &Output) -> io::Result<()> {
        for index in [self.tail_index, self.tail_index + 1] {
            let Some(physical) = physical_offset(&self.file, index * BLOCK as u64)? else { continue };
            let buf = self.direct_buf.as_mut();
            read_full_at(&self.device, buf, physical)?;
            let first = index * (BLOCK / LINE) as u64;
            for (slot, disk) in (0u64..).zip(buf.chunks(LINE)) {
                let line = first + slot;
                let mine = if index == self.tail_index {
                    let at = usize::try_from(slot).expect("a slot of a block") * LINE;
                    &self.tail[at..at + LINE]
                } else {
                    &[0u8; LINE][..]
                };
                let zero = disk.iter().all(|&b| b == 0);
                let good = if line < self.synced {
                    disk == mine
                } else if line < self.counter {
                    disk == mine || zero
                } else {
                    zero
                };
                if !good {
                    // Once per place: the same foreign line stays until
                    // this run's lines reach it.
                    if self.last_tail == Some((physical, line)) {
                        return Ok(());
                    }
                    self.last_tail = Some((physical, line));
                    let found = diskfmt::parse_line(disk).map(|l| json!({"seq": l.seq, "counter": l.counter}));
                    let mut f = serde_json::Map::new();
                    f.insert("line".into(), line.into());
                    f.insert("counter".into(), self.counter.into());
                    f.insert("synced".into(), self.synced.into());
                    f.insert("physical".into(), physical.into());
                    f.insert("found".into(), found.unwrap_or_else(|e| format!("{e:?}").into()));
                    self.log.anomaly(out, "tail", f);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn write_line(&mut self, out: &Output) -> io::Result<()> {
        let size = self.file.metadata()?.len();
        let seq = size / LINE as u64;
        if size % LINE as u64 != 0 || seq != self.counter {
            let f = json!({"size": size, "counter": self.counter}).as_object().cloned().unwrap_or_default();
            self.log.anomaly(out, "file", f);
        }
        let mut payload = [0u8; PAYLOAD_BYTES];
        self.random.fill(&mut payload)?;
        let (line, crc) = diskfmt::encode_line(seq, self.counter, self.prev, &payload);
        self.file.write_all(&line)?;
        let at = seq * LINE as u64;
        let index = at / BLOCK as u64;
        if index != self.tail_index {
            self.tail.fill(0);
            self.tail_index = index;
        }
        // LINE divides BLOCK: a line never crosses a block.
        let in_block = usize::try_from(at % BLOCK as u64).expect("less than BLOCK");
        self.tail[in_block..in_block + LINE].copy_from_slice(&line);
        self.counter += 1;
        self.prev = crc;
        let stats = &self.log.stats;
        stats.lines.store(self.counter, Ordering::Release);
        stats.last_crc.store(crc, Ordering::Release);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
        self.synced = self.counter;
        self.log.stats.synced.store(self.synced, Ordering::Release);
        Ok(())
    }

    fn write_mark(&mut self, out: &Output) -> io::Result<()> {
        let mark = Mark { seq: self.counter, nonce: self.random.u64()? };
        let dir = self.log.mnt.join(MARK_DIR);
        let path = dir.join(mark.file_name());
        let mut f = OpenOptions::new().write(true).create_new(true).open(&path)?;
        f.write_all(&mark.content())?;
        f.sync_all()?;
        File::open(&dir)?.sync_all()?;
        // Where the device holds it, when in one piece: a range to read
        // back (the control port's `crc`, the host's image).
        let first = physical_offset(&f, 0)?;
        let contiguous = (1..diskfmt::MARK_BLOCKS as u64).try_fold(true, |ok, b| {
            let at = physical_offset(&f, b * BLOCK as u64)?;
            Ok::<_, io::Error>(ok && first.is_some() && at == first.map(|p| p + b * BLOCK as u64))
        })?;
        self.log.stats.marks.fetch_add(1, Ordering::AcqRel);
        out.emit(
            "disk_mark",
            json!({
                "disk": self.log.label,
                "seq": mark.seq,
                "nonce": format!("{:016x}", mark.nonce),
                "file": path,
                "physical": first.filter(|_| contiguous),
            }),
        );
        Ok(())
    }

    fn run(mut self, cfg: &Config, stop: &AtomicBool, out: &Output) -> io::Result<()> {
        let tick = Duration::from_millis(cfg.tick_ms);
        let mark_every = Duration::from_millis(cfg.mark_ms);
        let second = Duration::from_secs(1);
        let mut next_tick = Instant::now();
        let mut next_mark = Instant::now();
        let mut next_report = Instant::now() + second;
        while !stop.load(Ordering::Acquire) {
            self.check_tail(out)?;
            self.write_line(out)?;
            if self.counter.is_multiple_of(cfg.sync_every) {
                self.sync()?;
            }
            let now = Instant::now();
            if cfg.mark_ms > 0 && now >= next_mark {
                self.write_mark(out)?;
                next_mark = now + mark_every;
            }
            if now >= next_report {
                out.emit("disk", Value::Object(self.log.fields()));
                next_report = now + second;
            }
            next_tick += tick;
            if next_tick <= now {
                next_tick = now + tick; // skip, do not burst, after a stall
            }
            std::thread::sleep(next_tick.saturating_duration_since(Instant::now()));
        }
        self.sync()
    }
}

/// Every disk's log and its writer.
pub struct Disks {
    cfg: Config,
    logs: Vec<Arc<DiskLog>>,
    stop: AtomicBool,
    writers: Mutex<Vec<JoinHandle<()>>>,
}

impl Disks {
    /// Finds, mounts and opens every disk, then starts a writer on each.
    pub fn start(cfg: Config, out: &Arc<Output>) -> io::Result<Arc<Disks>> {
        let mut writers = Vec::new();
        for label in &cfg.labels {
            let dev = find_device(label)?;
            let mnt = Path::new("/mnt").join(label);
            mount_ext4(&dev, &mnt).map_err(|e| io::Error::new(e.kind(), format!("mounting {}: {e}", dev.display())))?;
            // The tail check and the marks take a file system block for
            // BLOCK bytes.
            let fs_block = fs_block_size(&mnt)?;
            if fs_block != BLOCK as u64 {
                return Err(io::Error::other(format!(
                    "{label}: blocks of {fs_block} bytes, not {BLOCK} (mkfs.ext4 -b {BLOCK})"
                )));
            }
            std::fs::create_dir_all(mnt.join(MARK_DIR))?;
            let file = OpenOptions::new().append(true).create(true).read(true).open(mnt.join(LOG_FILE))?;
            let existing = file.metadata()?.len();
            if existing != 0 {
                return Err(io::Error::other(format!("{}: the log exists already ({existing} bytes)", label)));
            }
            // The log's blocks allocated now (unwritten, reading as zeros):
            // where its next lines go is known before they are written,
            // so the tail check finds them there after a restore.
            // SAFETY: a descriptor of ours; no memory is passed.
            if unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, PREALLOCATE) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let random = Random::open();
            out.emit(
                "disk_open",
                json!({"disk": label, "dev": dev, "mnt": mnt, "random": random.source(), "log": mnt.join(LOG_FILE)}),
            );
            let log = Arc::new(DiskLog { label: label.clone(), dev: dev.clone(), mnt, stats: Stats::default() });
            writers.push(Writer {
                log,
                file,
                device: open_direct(&dev)?,
                random,
                counter: 0,
                synced: 0,
                prev: 0,
                tail: vec![0; BLOCK],
                tail_index: 0,
                direct_buf: Aligned::new(BLOCK),
                last_tail: None,
            });
        }
        let disks = Arc::new(Disks {
            logs: writers.iter().map(|w| w.log.clone()).collect(),
            cfg,
            stop: AtomicBool::new(false),
            writers: Mutex::new(Vec::new()),
        });
        for w in writers {
            let (d, o) = (disks.clone(), out.clone());
            let label = w.log.label.clone();
            let handle = std::thread::Builder::new().name(format!("disk-{label}")).spawn(move || {
                if let Err(e) = w.run(&d.cfg, &d.stop, &o) {
                    o.error(format!("disk {label}: {e}"));
                }
            })?;
            disks.writers.lock().unwrap_or_else(|e| e.into_inner()).push(handle);
        }
        Ok(disks)
    }

    /// Reads each whole device and each log file with O_DIRECT (what the
    /// disk holds, not the page cache): one `disk_scan` event per disk.
    pub fn scan(&self, out: &Output) {
        for log in &self.logs {
            match scan_one(log) {
                Ok(fields) => out.emit("disk_scan", Value::Object(fields)),
                Err(e) => out.error(format!("scanning disk {}: {e}", log.label)),
            }
        }
    }

    /// CRC-32 of `len` bytes of disk `label`'s device from `offset` (both
    /// multiples of 512, for O_DIRECT), read with O_DIRECT: a `disk_crc`
    /// event, to hold against the same range of an image on the host.
    pub fn crc(&self, label: &str, offset: u64, len: u64, out: &Output) {
        let Some(log) = self.logs.iter().find(|l| l.label == label) else {
            return out.error(format!("ctl: no disk {label:?}"));
        };
        match crc_range(&log.dev, offset, len) {
            Ok(crc) => {
                out.emit("disk_crc", json!({"disk": label, "offset": offset, "len": len, "crc": format!("{crc:08x}")}))
            }
            Err(e) => out.error(format!("crc of disk {label} at {offset}+{len}: {e}")),
        }
    }

    /// Stops the writers (each syncs its log), then unmounts every disk:
    /// one `disk_closed` event each, with the final counters.
    pub fn shutdown(&self, out: &Output) {
        self.stop.store(true, Ordering::Release);
        let handles = std::mem::take(&mut *self.writers.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
        for log in &self.logs {
            let mut fields = log.fields();
            if let Err(e) = umount(&log.mnt) {
                out.error(format!("unmounting {}: {e}", log.mnt.display()));
            }
            fields.insert("unmounted".into(), true.into());
            out.emit("disk_closed", Value::Object(fields));
        }
    }
}

fn scan_one(log: &DiskLog) -> io::Result<serde_json::Map<String, Value>> {
    let device = open_direct(&log.dev)?;
    let mut buf = Aligned::new(SCAN_CHUNK);
    let mut crc = crc32fast::Hasher::new();
    let mut marks = std::collections::BTreeSet::new();
    let mut bytes = 0u64;
    let context = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    loop {
        let n = read_full_at(&device, buf.as_mut(), bytes)
            .map_err(|e| context(&format!("reading {} at {bytes}", log.dev.display()), e))?;
        let data = &buf.as_mut()[..n];
        crc.update(data);
        marks.extend(diskfmt::scan_marks(data));
        bytes += n as u64;
        if n < SCAN_CHUNK {
            break;
        }
    }
    // Listed after the device was read: a mark made meanwhile has its
    // file, a mark block without one is no write of this file system's.
    let files: std::collections::BTreeSet<Mark> = std::fs::read_dir(log.mnt.join(MARK_DIR))?
        .filter_map(|e| Mark::from_file_name(&e.ok()?.file_name().to_string_lossy()))
        .collect();
    let orphans: Vec<&Mark> = marks.difference(&files).collect();
    let list = |marks: &mut dyn Iterator<Item = &Mark>| -> Vec<Value> {
        marks.take(MAX_SCAN_MARKS).map(|m| json!({"seq": m.seq, "nonce": format!("{:016x}", m.nonce)})).collect()
    };
    // The log through the file system, bypassing the page cache.
    let file = open_direct(&log.mnt.join(LOG_FILE))?;
    let size = file.metadata()?.len();
    let len = usize::try_from(size).map_err(io::Error::other)?.div_ceil(BLOCK).max(1) * BLOCK;
    let mut text = Aligned::new(len);
    let n = read_direct_to(&file, text.as_mut(), size)
        .map_err(|e| context(&format!("reading {LOG_FILE} ({size} bytes)"), e))?;
    let summary = diskfmt::check_log(&text.as_mut()[..n]);
    let mut m = serde_json::Map::new();
    m.insert("disk".into(), log.label.clone().into());
    m.insert("dev".into(), log.dev.display().to_string().into());
    m.insert("bytes".into(), bytes.into());
    m.insert("crc".into(), format!("{:08x}", crc.finalize()).into());
    m.insert("marks".into(), list(&mut marks.iter()).into());
    m.insert("marks_found".into(), marks.len().into());
    m.insert("orphans".into(), list(&mut orphans.iter().copied()).into());
    m.insert("orphans_found".into(), orphans.len().into());
    m.insert(
        "log".into(),
        json!({
            "bytes": n,
            "lines": summary.lines,
            "last_crc": format!("{:08x}", summary.last_crc),
            "error": summary.error.map(|e| e.to_string()),
        }),
    );
    Ok(m)
}

fn crc_range(dev: &Path, offset: u64, len: u64) -> io::Result<u32> {
    if !offset.is_multiple_of(512) || !len.is_multiple_of(512) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "offset and length must be multiples of 512"));
    }
    let device = open_direct(dev)?;
    let mut buf = Aligned::new(SCAN_CHUNK);
    let mut crc = crc32fast::Hasher::new();
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from((len - done).min(SCAN_CHUNK as u64)).expect("at most SCAN_CHUNK");
        let n = read_full_at(&device, &mut buf.as_mut()[..want], offset + done)?;
        if n < want {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past the end of the device"));
        }
        crc.update(&buf.as_mut()[..n]);
        done += n as u64;
    }
    Ok(crc.finalize())
}
