// SPDX-License-Identifier: GPL-2.0-or-later
//! The checkpoint thread: capture (MTD or copy-on-write, see
//! `mtd_capture` and `cow_capture`) into staging, then background persist
//! and the atomic commit of the image.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mekha_ckpt_core::cow::WriteProtect;
use mekha_ckpt_core::host::Capabilities;
use mekha_ckpt_core::image::{ImageBuilder, NetFrames};
use mekha_ckpt_core::persist::Persister;
use mekha_ckpt_core::session::{Error, Result};
use mekha_ckpt_core::staging::{PageFilter, Staging};
use mekha_ckpt_core::uring::{UringWriter, WriterOptions};
use mekha_ckpt_core::width::saturating_u64;
use mekha_ckpt_core::PAGE_SIZE;

use super::pause::Tracking;
use super::{cow_capture, mtd_capture, Abandon, Mode, Params, Session, Status};
use crate::disks::capture::Capture as DiskCapture;
use crate::fault;
use crate::guest_ram::GuestRam;
use crate::qemu::{self, Bql, QemuThread};
use crate::{net_cut, net_hold};

/// Pages written between two progress reports while persisting (64 MiB).
const PERSIST_STEP_PAGES: u64 = (64 << 20) / PAGE_SIZE as u64;

/// Cheap checks of the image path, for a clear error before anything runs.
pub(super) fn check_target(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(format_args!("image directory {}", dir.display()), &e))?;
    if !meta.is_dir() {
        return Err(Error::invalid_argument(format!("{} is not a directory", dir.display())));
    }
    if path.file_name().is_none() {
        return Err(Error::invalid_argument(format!("{} names no file", path.display())));
    }
    Ok(())
}

/// What the QMP handler prepares under the BQL before the worker starts,
/// so that a refusal (VM not running, migration in progress, RAM that
/// copy-on-write cannot protect) is the command's error.
pub(super) struct Prepared {
    ram: GuestRam,
    tracking: Tracking,
    bitmap: Vec<u64>,
    capture: Capture,
    /// Why auto mode chose MTD.
    mode_reason: Option<String>,
    /// The writable disks to capture with RAM.
    disks: Vec<qemu::Disk>,
    /// The VM's image in the generation the disks' layers build on.
    disk_parent: Option<std::path::PathBuf>,
}

/// How RAM is captured, with what it needs.
enum Capture {
    Mtd,
    Cow(WriteProtect),
}

impl Prepared {
    /// Reads the RAM layout, starts dirty logging and throws away the bits
    /// set before this checkpoint (QEMU marks all RAM dirty at allocation),
    /// and for copy-on-write registers guest RAM with a userfaultfd.
    /// `staging_budget`: bytes, none for all of RAM.
    pub(super) fn new(
        bql: &Bql,
        mode: Mode,
        staging_budget: Option<u64>,
        disks: Vec<qemu::Disk>,
        disk_parent: Option<std::path::PathBuf>,
    ) -> Result<Prepared> {
        let ram = GuestRam::current(bql)?;
        let cow = || check_cow_budget(&ram, staging_budget).and_then(|()| register_cow(&ram));
        let (capture, mode_reason) = match mode {
            Mode::Mtd => (Capture::Mtd, None),
            Mode::Cow => (Capture::Cow(cow().map_err(|e| e.context("copy-on-write capture"))?), None),
            Mode::Auto => match cow() {
                Ok(wp) => (Capture::Cow(wp), None),
                Err(e) => (Capture::Mtd, Some(e.message)),
            },
        };
        qemu::ckpt::begin(bql)?;
        net_hold::prepare(bql);
        let mut prepared = Prepared {
            ram,
            tracking: Tracking::started(),
            bitmap: Vec::new(),
            capture,
            mode_reason,
            disks,
            disk_parent,
        };
        if let Err(e) = prepared.ram.sync_dirty(bql, &mut prepared.bitmap) {
            prepared.cancel(bql);
            return Err(e);
        }
        Ok(prepared)
    }

    pub(super) fn mode(&self) -> Mode {
        match self.capture {
            Capture::Mtd => Mode::Mtd,
            Capture::Cow(_) => Mode::Cow,
        }
    }

    pub(super) fn mode_reason(&self) -> Option<&str> {
        self.mode_reason.as_deref()
    }

    /// Gives up before the worker ran (the caller holds the BQL).
    pub(super) fn cancel(mut self, bql: &Bql) {
        self.tracking.stop(bql);
    }
}

/// Copy-on-write copies every page into staging before the guest may
/// change it, and a guest write to a page not copied yet waits for that
/// copy: were staging full, the copy would wait for staged pages to reach
/// the disk, and the guest with it. So staging must hold all of RAM.
fn check_cow_budget(ram: &GuestRam, staging_budget: Option<u64>) -> Result<()> {
    let ram_bytes = ram.total_pages() * PAGE_SIZE as u64;
    match staging_budget {
        Some(budget) if budget / PAGE_SIZE as u64 * (PAGE_SIZE as u64) < ram_bytes => {
            Err(Error::invalid_argument(format!(
                "the staging budget ({} MiB) is smaller than guest RAM ({} MiB): guest writes would wait for the disk \
             once staging is full",
                budget >> 20,
                ram_bytes.div_ceil(1 << 20)
            )))
        }
        _ => Ok(()),
    }
}

/// Registers guest RAM for write protection, or says why it cannot be.
fn register_cow(ram: &GuestRam) -> Result<WriteProtect> {
    if !Capabilities::probe().userfaultfd_wp {
        return Err(Error::unsupported(
            "this host's kernel offers no userfaultfd write protection (or forbids userfaultfd)",
        ));
    }
    if let Some(why) = crate::restore::cow_refusal() {
        return Err(Error::unsupported(why));
    }
    let regions = ram.write_protect_regions()?;
    // Untouched pages are populated rather than protected by the kernel's
    // WP_UNPOPULATED: reading maps huge zero pages where QEMU's RAM is
    // THP-backed, which protect a 2 MiB page table entry each; markers in
    // empty page tables cost one entry per 4 KiB page inside the pause
    // (measured at 2 GiB: 0.35 ms against 2.3 ms).
    // SAFETY: the regions are QEMU's private anonymous RAM blocks, page
    // aligned, distinct, and stay mapped while the migration blocker
    // holds the block list (until the checkpoint ends).
    unsafe { WriteProtect::register(&regions, false) }.map_err(Error::from)
}

/// Thread entry: runs the checkpoint and records its outcome. A panic (a
/// bug in mekha) is an outcome too: the checkpoint fails with it, the VM
/// runs (see [`super::pause::ResumeGuard`]) and the next checkpoint may
/// start. Guards, not `panic = "abort"`: an abort would take the guest
/// down with QEMU.
pub(super) fn run(shared: Arc<Session>, params: Params, prepared: Prepared) {
    let _thread = QemuThread::register();
    let started = Instant::now();
    let outcome = crate::guarded(|| checkpoint(&shared, &params, prepared));
    let failed = outcome.is_err();
    shared.update(|info| {
        info.total_ns = saturating_u64(started.elapsed().as_nanos());
        match outcome {
            Ok(()) => info.status = Status::Completed,
            Err(e) => info.fail(e),
        }
    });
    if failed {
        // Frames held since a peer's early marker must not wait for a
        // stop that will not come. After the status: a checkpoint-end
        // (which begins a cut) is refused from then on.
        net_cut::reset(&Bql::lock());
    }
}

fn checkpoint(shared: &Session, params: &Params, prepared: Prepared) -> Result<()> {
    let Prepared { ram, mut tracking, mut bitmap, capture, disks, disk_parent, .. } = prepared;
    let total = ram.total_pages();
    let budget = params.staging_budget.unwrap_or(total * PAGE_SIZE as u64);

    let builder = ImageBuilder::create(&params.path, ram.identity())?;
    let result = (|| {
        let staging = Staging::new(total, budget).map_err(|e| Error::io("staging area", &e))?;
        let writer =
            UringWriter::new(builder.file(), WriterOptions::default()).map_err(|e| Error::io("io_uring writer", &e))?;
        let layout = ram.layout().clone();
        let mut persist = Persister::new(staging, writer, move |p| layout.page_offset(p));
        if let Some(key) = &params.key {
            persist.set_key(key);
        }
        shared.update(|info| info.staging_budget_bytes = budget);

        let mut disks = DiskCapture::prepare(&Bql::lock(), &params.path, disks, disk_parent.as_deref())?;
        let stopped = match capture {
            Capture::Mtd => {
                mtd_capture::capture(shared, params, &ram, &mut persist, &mut bitmap, &mut tracking, &mut disks)
            }
            Capture::Cow(wp) => cow_capture::capture(shared, params, wp, &mut persist, &mut tracking, &mut disks),
        };
        // Progress for the coordinator, which gives up on a VM that shows
        // none; a cancel or a lapsed lease ends the wait.
        let copied = |bytes| shared.update(|info| info.disk_copied_bytes = Some(bytes));
        let give_up = || shared.abandoned().map(|a| a.error());
        let stopped = match stopped.and_then(|s| disks.wait(None, copied, give_up).map(|_| s)) {
            Ok(s) => s,
            Err(e) => {
                disks.cancel();
                return Err(e);
            }
        };
        let captured = disks.close(true);
        let packed: Result<Vec<_>> = captured.iter().map(|d| d.pack(&params.path, params.key.as_ref())).collect();
        if packed.is_err() {
            for disk in &captured {
                let _ = std::fs::remove_file(&disk.capture_file);
            }
        }
        let packed = packed?;
        shared.update(|info| info.disks = packed);
        // The frames in flight are known once every peer's marker came:
        // before the image is staged, so that a coordinator never writes
        // an image whose cut failed.
        let net_frames = wait_for_cut(shared, params)?;

        if params.persist_hold {
            wait_for_persist(shared)?;
        }
        shared.update(|info| info.status = Status::Persisting);
        fault::point(fault::Point::CheckpointPersisting);
        // A step at a time, so that a coordinator sees the image being
        // written (it gives up on a VM that shows no progress).
        let write_error = |e| Error::from(e).context("writing the image");
        while persist.drain(PERSIST_STEP_PAGES, PageFilter::All).map_err(write_error)? > 0 {
            let written = persist.stats().bytes;
            shared.update(|info| info.written_bytes = written);
        }
        persist.flush_all().map_err(write_error)?;
        Ok((stopped, net_frames, persist))
    })();
    let (stopped, net_frames, persist) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = builder.abort();
            return Err(e);
        }
    };
    let mut builder = builder;
    for (page, crc) in persist.page_crcs().iter().enumerate() {
        builder.set_page_crc(page as u64, *crc);
    }
    if let (Some(key), Some(tags)) = (&params.key, persist.page_tags()) {
        builder.set_key(key);
        for (page, tag) in tags.iter().enumerate() {
            builder.set_page_tag(page as u64, *tag);
        }
    }
    let stats = persist.stats();
    shared.update(|info| {
        info.written_bytes = stats.bytes;
        info.direct_io = stats.direct_io;
    });
    builder.set_build_id(env!("MEKHA_BUILD_ID"));
    builder.set_time(stopped.time);
    builder.set_net_frames(net_frames);
    // The image records how it was made (the INFO section).
    let info_json = serde_json::to_value(shared.info()).ok();
    let finished = builder
        .finish(&stopped.device_state, info_json.as_ref())
        .map_err(|e| Error::from(e).context("committing the image"))?;
    shared.update(|info| info.mac = finished.mac.map(|m| m.to_hex()));
    Ok(())
}

/// How long a VM checkpointed without a lease waits for its peers' markers.
const MARKER_WAIT: Duration = Duration::from_secs(10);

/// Waits for the network cut to complete, at most the lease (from the
/// stop, which is past); returns the frames to save.
fn wait_for_cut(shared: &Session, params: &Params) -> Result<NetFrames> {
    let now = crate::rendezvous::wall_ns();
    let since_stop = u64::try_from(now - shared.info().stopped_at_ns.unwrap_or(now)).unwrap_or(0);
    let left = params.lease.unwrap_or(MARKER_WAIT).saturating_sub(Duration::from_nanos(since_stop));
    net_cut::wait_complete(Instant::now() + left, |cut| shared.update(|info| info.set_cut(cut)))
}

/// With persist-hold: keeps the staged image in memory until the
/// coordinator releases it, cancels it, or stops being heard from (then the
/// image is written anyway: only the coordinator commits it).
fn wait_for_persist(shared: &Session) -> Result<()> {
    shared.update(|info| info.status = Status::Staged);
    let settled = |s: &Session| s.persist_released() || s.abandoned().is_some();
    shared.wait_for(settled);
    match shared.abandoned().filter(|_| !shared.persist_released()) {
        Some(Abandon::Cancelled) => Err(Abandon::Cancelled.error()),
        // Not heard from: written anyway, only the coordinator commits it.
        Some(Abandon::LeaseExpired) | None => Ok(()),
    }
}
