// SPDX-License-Identifier: GPL-2.0-or-later
//! Restore of this VM from an image (`__org.mekha_restore`).
//!
//! QEMU runs the checkpointed VM's command line plus `-incoming defer`, so
//! its RAM blocks exist and no vCPU has run. The QMP handler checks the
//! image against this VM; a worker thread verifies every page's checksum
//! and fills guest RAM — by mapping the image's pages (`MAP_PRIVATE`: the
//! guest's writes stay in memory, the file is never changed) or by reading
//! them — and the main loop then loads the device state, queues the
//! network frames that were in flight toward the VM at the checkpoint
//! (`net_hold`), and resumes.
//!
//! A coordinator restores a cluster's VMs paused and resumes them together
//! once all loaded. Until its resume comes, a lease (`lease-ms`) bounds
//! how long a VM waits: a coordinator that is not heard from in time is
//! gone, and the VM, which never ran, must not run alone (it would split
//! the cluster's job) nor wait forever holding its RAM, so QEMU shuts down.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use mekha_ckpt_core::image::{check_compatible, Image, Mac};
use mekha_ckpt_core::session::checkpoint::DiskCapture;
use mekha_ckpt_core::session::{Error, ErrorKind, Lease, Result};
use mekha_ckpt_core::width::{saturating_u64, to_usize};
use mekha_ckpt_core::PAGE_SIZE;

use crate::guest_ram::GuestRam;
use crate::guest_time::{self, RestoreTime};
use crate::qemu::{self, Bql, Event, QemuThread};
use crate::rendezvous;
use crate::{disks, net_hold};
use crate::{fault, guarded};

pub(crate) use mekha_ckpt_core::session::restore::{Args, Info, QueryArgs, ResumeArgs, Status};

static INFO: Mutex<Info> = Mutex::new(Info {
    status: Status::None,
    path: None,
    error: None,
    error_kind: None,
    lazy: false,
    ram_bytes: 0,
    verified_bytes: 0,
    total_ns: 0,
    resume_at_ns: None,
    resumed_at_ns: None,
    net_injected_frames: 0,
    net_dropped_frames: 0,
    mac: None,
});

/// The coordinator's lease on a restore from its command to its resume.
static LEASE: Mutex<Option<Lease>> = Mutex::new(None);
/// Signalled when the resume takes [`LEASE`] away: its watch ends at once.
static LEASE_TAKEN: Condvar = Condvar::new();

/// The coordinator spoke: renews its lease, if one runs.
fn heard() {
    if let Some(lease) = LEASE.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
        lease.heard(Instant::now());
    }
}

/// `__org.mekha_query-restore`; renews the lease only when the
/// coordinator asks (anyone may poll the status).
pub(crate) fn query(args: QueryArgs) -> Info {
    if args.renew_lease == Some(true) {
        heard();
    }
    INFO.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Waits out the lease of a restore from its command to its resume: if
/// the coordinator falls silent first — the VM loading, loaded, or its
/// load failed — fails the restore and shuts QEMU down.
fn watch_lease() {
    let every = {
        let mut lease = LEASE.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let Some(l) = *lease else { return };
            let now = Instant::now();
            if l.expired(now) {
                *lease = None;
                break l.every();
            }
            // A renewal only moves the expiry later: past this one, look
            // again.
            lease = LEASE_TAKEN.wait_timeout(lease, l.left(now)).unwrap_or_else(PoisonError::into_inner).0;
        }
    };
    qemu::main_loop_call(move || {
        // SAFETY: main-loop calls run with the BQL held.
        let bql = unsafe { Bql::assume_held() };
        let snapshot = {
            let mut info = INFO.lock().unwrap_or_else(PoisonError::into_inner);
            // A resume that came meanwhile wins; so does whoever started
            // the VM by other means (`cont`).
            if info.resume_at_ns.is_some() || qemu::ckpt::vm_is_running(&bql) {
                return;
            }
            let why = format!("the coordinator's lease expired: it was not heard from for {} ms", every.as_millis());
            if info.status == Status::Failed {
                crate::qemu::report::error(&format!("{why}; the restore failed, QEMU shuts down"));
            } else {
                info.fail(Error::new(
                    ErrorKind::LeaseExpired,
                    format!(
                        "{why} and never resumed the VM, which did not run; QEMU shuts down (restart the cluster \
                         again)"
                    ),
                ));
                crate::qemu::report::error(info.error.as_deref().unwrap_or_default());
            }
            info.clone()
        };
        shut_down(&bql, &snapshot);
    });
}

fn finish(outcome: Result<()>, started: Instant) {
    let snapshot = {
        let mut info = INFO.lock().unwrap_or_else(PoisonError::into_inner);
        if info.status != Status::Loading {
            // The lease ran out first and said so.
            return;
        }
        info.total_ns = saturating_u64(started.elapsed().as_nanos());
        match outcome {
            Ok(()) => info.status = Status::Completed,
            Err(e) => info.fail(e),
        }
        info.clone()
    };
    emit(&snapshot);
}

/// `__org.mekha_RESTORE`: where the restore stands.
fn emit(info: &Info) {
    qemu::emit_event(Event::MEKHA_EVENT_RESTORE, &serde_json::to_value(info).expect("encodes"));
}

/// Reports a restore whose VM must never run, then shuts QEMU down.
fn shut_down(bql: &Bql, failed: &Info) {
    emit(failed);
    qemu::incoming::shut_down(bql);
}

/// `__org.mekha_restore`: checks, then loads in the background.
pub(crate) fn start(args: Args) -> Result<()> {
    let started = Instant::now();
    // SAFETY: QMP handlers run in the main loop with the BQL held.
    let bql = unsafe { Bql::assume_held() };
    if INFO.lock().unwrap_or_else(PoisonError::into_inner).status == Status::Loading {
        return Err(Error::new(ErrorKind::Busy, "a restore is already running"));
    }
    if !qemu::incoming::pending(&bql) {
        return Err(Error::unsupported(
            "this QEMU does not wait for an incoming VM: start it with the VM's command line plus '-incoming \
             defer', and restore before anything else runs",
        ));
    }
    let time = RestoreTime::new(args.time, args.catch_up_ppm, args.lag_ns)?;
    let start_vm = args.starts();
    let lease = args.lease()?;
    let ram = GuestRam::current(&bql)?;
    let key = args.key_secret.as_deref().map(|id| qemu::image_key(&bql, id)).transpose()?;
    let image = Image::open_with(&args.path, key.as_ref())?;
    check_mac(&image, args.mac.as_deref())?;
    let record = image.time()?;
    let net_frames = image.net_frames()?.unwrap_or_default();
    let compat = check_compatible(image.identity(), ram.identity())
        .map_err(|m| Error::new(ErrorKind::ImageInvalid, m.to_string()))?;
    for warning in &compat.warnings {
        crate::qemu::report::warn(&format!("restore of {}: {warning}", args.path.display()));
    }
    let refusal = match key {
        // A mapping reads the file when the guest first touches a page,
        // long after the check: whoever can write the file could change it.
        Some(_) => Some("with key-secret, guest RAM is read and checked, never mapped from the file".to_owned()),
        None => lazy_refusal(&ram),
    };
    let lazy = match (args.lazy, refusal) {
        (Some(true), Some(why)) => return Err(Error::unsupported(format!("lazy restore is impossible here: {why}"))),
        (Some(false), _) | (None, Some(_)) => false,
        (_, None) => true,
    };
    *INFO.lock().unwrap_or_else(PoisonError::into_inner) = Info {
        status: Status::Loading,
        path: Some(args.path.display().to_string()),
        lazy,
        ram_bytes: image.layout().total_pages() * PAGE_SIZE as u64,
        mac: image.mac().map(|m| m.to_hex()),
        ..Info::default()
    };
    if let Some(every) = lease {
        *LEASE.lock().unwrap_or_else(PoisonError::into_inner) = Some(Lease::new(every, Instant::now()));
        spawn_lease_watch();
    }
    let ram = Arc::new(ram);
    let image_path = args.path.display().to_string();
    let image_path_buf = args.path.clone();
    let captured_disks = captured_disks(&image)?;
    std::thread::Builder::new()
        .name("mekha-restore".into())
        .spawn(move || {
            let _thread = QemuThread::register();
            let loaded = guarded(|| {
                load_ram(&image, &ram, &compat.image_block, lazy)?;
                // Before any guest code runs: the disks as at the instant.
                disks::restore::put_back(&image_path_buf, &captured_disks, key.as_ref())?;
                image.device_state().map_err(Error::from)
            });
            match loaded {
                Ok(device_state) => qemu::main_loop_call(move || {
                    // SAFETY: main-loop calls run with the BQL held.
                    let bql = unsafe { Bql::assume_held() };
                    // The lease ran out while RAM was loading: QEMU shuts
                    // down, the VM must not come to life now.
                    if INFO.lock().unwrap_or_else(PoisonError::into_inner).status != Status::Loading {
                        return;
                    }
                    let outcome = guarded(|| {
                        guest_time::prepare_restore(&bql, record, time);
                        qemu::incoming::load_devices(&bql, &device_state)?;
                        // The frames in flight at the checkpoint go to the
                        // guest first, once it runs.
                        let injected = net_hold::restore(&bql, &net_frames, &image_path);
                        {
                            let mut info = INFO.lock().unwrap_or_else(PoisonError::into_inner);
                            info.net_injected_frames = injected.frames;
                            info.net_dropped_frames = injected.dropped;
                        }
                        qemu::incoming::finish(&bql, start_vm).inspect_err(|_| net_hold::abandon_restore(&bql))
                    });
                    finish(outcome, started);
                    // Loading took this main loop a while: the coordinator
                    // may not have been answered meanwhile.
                    heard();
                }),
                Err(e) => finish(Err(e), started),
            }
        })
        .map_err(|e| Error::internal(format!("cannot start the restore thread: {e}")))?;
    Ok(())
}

/// The disks the image's checkpoint captured (its INFO's `disks`).
fn captured_disks(image: &Image) -> Result<Vec<DiskCapture>> {
    DiskCapture::listed_in(image.info()?)
        .map_err(|e| Error::new(ErrorKind::ImageInvalid, format!("the image's list of captured disks: {e}")))
}

/// Starts the thread of [`watch_lease`]; without it, the lease ends (a
/// thread that cannot start must not shut down a VM).
fn spawn_lease_watch() {
    let spawned = std::thread::Builder::new().name("mekha-restore-lease".into()).spawn(|| {
        if let Err(e) = guarded(|| {
            watch_lease();
            Ok(())
        }) {
            crate::qemu::report::error(&format!("the restore's lease watch failed: {e}"));
        }
    });
    if let Err(e) = spawned {
        crate::qemu::report::error(&format!(
            "cannot watch the restore's lease ({e}): the VM waits for its resume without one"
        ));
        *LEASE.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// `__org.mekha_resume`: resumes a VM restored paused, at a wall-clock
/// instant (one for every VM of a cluster) or at once. Returns at once; a
/// thread naps until shortly before the instant, then takes the BQL and
/// spins to it.
pub(crate) fn resume(args: ResumeArgs) -> Result<()> {
    {
        let mut info = INFO.lock().unwrap_or_else(PoisonError::into_inner);
        if info.status != Status::Completed || info.resume_at_ns.is_some() {
            return Err(Error::wrong_status("no restored VM waits to be resumed"));
        }
        args.check(rendezvous::wall_ns())?;
        info.resume_at_ns = Some(args.at.unwrap_or_else(rendezvous::wall_ns));
    }
    // The coordinator decided: the VM runs at the instant, lease or not.
    let lease = LEASE.lock().unwrap_or_else(PoisonError::into_inner).take();
    LEASE_TAKEN.notify_all();
    let spawned = std::thread::Builder::new().name("mekha-resume".into()).spawn(move || {
        let _thread = QemuThread::register();
        let resumed = guarded(|| {
            let (bql, now) = rendezvous::lock_at(args.at);
            qemu::incoming::resume(&bql).map(|()| now)
        });
        match resumed {
            Ok(now) => INFO.lock().unwrap_or_else(PoisonError::into_inner).resumed_at_ns = Some(now),
            // Its peers run, or will: this VM must not wait paused to
            // run later, alone.
            Err(e) => qemu::main_loop_call(move || {
                // SAFETY: main-loop calls run with the BQL held.
                let bql = unsafe { Bql::assume_held() };
                let snapshot = {
                    let mut info = INFO.lock().unwrap_or_else(PoisonError::into_inner);
                    info.resume_at_ns = None;
                    info.fail(Error::new(e.kind, format!("resuming the restored VM failed: {e}; QEMU shuts down")));
                    crate::qemu::report::error(info.error.as_deref().unwrap_or_default());
                    info.clone()
                };
                shut_down(&bql, &snapshot);
            }),
        }
    });
    if let Err(e) = spawned {
        // Nothing changed: the VM waits as before, under its lease.
        INFO.lock().unwrap_or_else(PoisonError::into_inner).resume_at_ns = None;
        if let Some(l) = lease {
            *LEASE.lock().unwrap_or_else(PoisonError::into_inner) = Some(Lease::new(l.every(), Instant::now()));
            // Its watch may have ended when the lease was taken.
            spawn_lease_watch();
        }
        return Err(Error::internal(format!("cannot start the resume thread: {e}")));
    }
    Ok(())
}

/// Refuses an image other than the one whose MAC the caller expects (an
/// older image of the same VM, sealed under the same key).
fn check_mac(image: &Image, expected: Option<&str>) -> Result<()> {
    let Some(expected) = expected else { return Ok(()) };
    let expected = Mac::parse(expected).map_err(Error::invalid_argument)?;
    match image.mac() {
        None => Err(Error::invalid_argument("mac needs key-secret: a MAC is checked under the image key")),
        Some(mac) if mac == expected => Ok(()),
        Some(mac) => Err(Error::new(
            ErrorKind::NotAuthentic,
            format!(
                "image {} is authentic but not the one expected: its MAC is {mac}, not {expected} (an image of \
             another checkpoint put in its place?); nothing was restored",
                image.path().display()
            ),
        )),
    }
}

/// Set once a restore mapped guest RAM from its image: a private file
/// mapping, which userfaultfd cannot write-protect (the kernel protects
/// anonymous, shmem and hugetlb memory only), so copy-on-write capture is
/// impossible for the rest of this QEMU's life.
static MAPPED_FROM_IMAGE: AtomicBool = AtomicBool::new(false);

/// Why copy-on-write capture cannot protect guest RAM because of a
/// restore, if it cannot.
pub(crate) fn cow_refusal() -> Option<&'static str> {
    MAPPED_FROM_IMAGE.load(Ordering::Relaxed).then_some(
        "guest RAM is mapped from the image it was restored from (a lazy restore), and write protection cannot \
         cover a file mapping: checkpoint this VM with MTD, or restore it with lazy=false",
    )
}

/// Why guest RAM cannot be mapped from the image, if it cannot.
fn lazy_refusal(ram: &GuestRam) -> Option<String> {
    for (i, block) in ram.identity().ram_blocks.iter().enumerate() {
        let (host, _) = ram.block_memory(i);
        if !ram.block_is_anonymous(i) {
            return Some(format!("RAM block {} is shared or file-backed", block.name));
        }
        if block.page_size != PAGE_SIZE as u64 || !(host as usize).is_multiple_of(PAGE_SIZE) {
            return Some(format!("RAM block {} is not backed by 4 KiB pages", block.name));
        }
    }
    None
}

/// Chunk of RAM read at once while verifying.
const CHUNK: usize = 8 << 20;

/// Verifies every page of every block and fills guest RAM: block `b` of
/// the VM from block `image_block[b]` of the image (the same name).
///
/// Only the image's data extents are read (`SEEK_DATA`/`SEEK_HOLE`): a
/// hole is zero pages, whose checksums are checked against the table
/// without reading, and which a bulk restore zeroes in guest RAM (ROM
/// blocks hold QEMU's own content before the restore).
fn load_ram(image: &Image, ram: &GuestRam, image_block: &[usize], lazy: bool) -> Result<()> {
    fault::point(fault::Point::RestoreLoading);
    let layout = image.layout();
    let mut scratch = vec![0u8; if lazy { CHUNK } else { 0 }];
    debug_assert_eq!(image_block.len(), ram.block_count(), "one image block per VM block");
    for (block, &in_image) in image_block.iter().enumerate() {
        let (host, len) = ram.block_memory(block);
        let offset = layout.block_offset(in_image);
        let (first_page, _) = layout.block_pages(in_image);
        let anonymous = ram.block_is_anonymous(block);
        for (start, end, data) in extents(image, offset, len as u64)? {
            let (start, end) = (to_usize(start), to_usize(end));
            if !data {
                check_zero_pages(image, first_page + (start / PAGE_SIZE) as u64, (end - start) / PAGE_SIZE)?;
                // In chunks, so that a large hole in RAM that must be
                // written shows progress.
                for at in (start..end).step_by(CHUNK) {
                    let n = CHUNK.min(end - at);
                    if !lazy {
                        // SAFETY: a range of this block's guest RAM, unused
                        // by any vCPU before the restore completes.
                        unsafe { zero_guest_range(host.add(at), n, anonymous) };
                    }
                    add_verified(n);
                }
                continue;
            }
            let mut done = start;
            while done < end {
                let n = CHUNK.min(end - done);
                // Bulk: read straight into guest RAM. Lazy: read to check
                // only; the pages stay in the page cache for the mapping.
                let buf: &mut [u8] = if lazy {
                    &mut scratch[..n]
                } else {
                    // SAFETY: as above.
                    unsafe { std::slice::from_raw_parts_mut(host.add(done), n) }
                };
                image
                    .file()
                    .read_exact_at(buf, offset + done as u64)
                    .map_err(|e| Error::io(format_args!("reading {}", image.path().display()), &e))?;
                check_pages(image, first_page + (done / PAGE_SIZE) as u64, buf)?;
                add_verified(n);
                done += n;
            }
        }
        if lazy {
            // SAFETY: replaces this block's anonymous guest RAM mapping in
            // place with a private mapping of the verified image pages.
            let mapped = unsafe {
                libc::mmap(
                    host as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    image.file().as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if mapped == libc::MAP_FAILED || mapped as *mut u8 != host {
                let e = std::io::Error::last_os_error();
                return Err(Error::io("mapping the image into guest RAM failed", &e));
            }
            MAPPED_FROM_IMAGE.store(true, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Progress, as a coordinator watching for a stuck restore sees it.
fn add_verified(bytes: usize) {
    INFO.lock().unwrap_or_else(PoisonError::into_inner).verified_bytes += bytes as u64;
}

/// The data and hole extents of `[offset, offset+len)` in the image, as
/// (start, end, is_data) relative to `offset`, page-aligned.
fn extents(image: &Image, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
    let fd = image.file().as_raw_fd();
    let seek = |pos: u64, whence| -> Option<u64> {
        // SAFETY: lseek on our own descriptor.
        let r = unsafe { libc::lseek(fd, pos as libc::off_t, whence) };
        (r >= 0).then_some(r as u64)
    };
    let mut out = Vec::new();
    let (mut pos, end) = (offset, offset + len);
    while pos < end {
        // No SEEK_DATA support, or no data left: treat the rest as data
        // (reading is always correct) or as a hole (ENXIO: none left).
        let data = match seek(pos, libc::SEEK_DATA) {
            Some(d) => d.min(end),
            None if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) => end,
            None => {
                out.push((pos - offset, len, true));
                break;
            }
        };
        let data = data / PAGE_SIZE as u64 * PAGE_SIZE as u64;
        if data > pos {
            out.push((pos - offset, data - offset, false));
        }
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE).unwrap_or(end).min(end).next_multiple_of(PAGE_SIZE as u64).min(end);
        out.push((data - offset, hole - offset, true));
        pos = hole;
    }
    Ok(out)
}

/// A page that fails its checksum, or under a key its tag: changed after
/// it was written.
fn damaged(image: &Image, page: u64) -> Error {
    let (name, at) = image.page_place(page);
    let kind = if image.mac().is_some() { ErrorKind::NotAuthentic } else { ErrorKind::ImageInvalid };
    Error::new(
        kind,
        format!(
            "image {} is damaged: page {page} ({name} + {at:#x}) fails its {}; nothing was restored",
            image.path().display(),
            if image.mac().is_some() { "checksum or its MAC (changed after it was written?)" } else { "checksum" }
        ),
    )
}

fn check_pages(image: &Image, first: u64, data: &[u8]) -> Result<()> {
    for (i, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
        let index = first + i as u64;
        if !image.page_matches(index, page) {
            return Err(damaged(image, index));
        }
    }
    Ok(())
}

fn check_zero_pages(image: &Image, first: u64, count: usize) -> Result<()> {
    match (first..first + count as u64).find(|&page| !image.page_was_zero(page)) {
        Some(page) => Err(damaged(image, page)),
        None => Ok(()),
    }
}

/// Zeroes guest RAM: anonymous private memory is given back to the kernel
/// (it reads as zeros again), other memory is written.
///
/// # Safety
/// `[ptr, ptr+len)` is guest RAM no one else uses now.
unsafe fn zero_guest_range(ptr: *mut u8, len: usize, anonymous: bool) {
    // SAFETY: the caller's range; dropping private anonymous pages zeroes them.
    if anonymous && unsafe { libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_DONTNEED) } == 0 {
        return;
    }
    // SAFETY: the caller's range, which no one else uses.
    unsafe { std::ptr::write_bytes(ptr, 0, len) };
}
