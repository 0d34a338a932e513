// SPDX-License-Identifier: GPL-2.0-or-later
//! The checkpoint thread: MTD live phase, the pause, background persist.
//!
//! Order of events, and why it is consistent: dirty logging starts and the
//! stale bits are cleared before any page is copied, so every write after
//! a page's copy marks it again; the planner recopies marked pages, and the
//! pause copies every page still marked after a last sync with the vCPUs
//! stopped. The image therefore holds each page as it was at the stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mekha_ckpt_core::image::ImageBuilder;
use mekha_ckpt_core::mtd::{EndReason, MtdParams, MtdPlanner};
use mekha_ckpt_core::persist::Persister;
use mekha_ckpt_core::staging::{PageFilter, StageError, Staging};
use mekha_ckpt_core::uring::{UringWriter, WriterOptions};
use mekha_ckpt_core::PAGE_SIZE;

use super::{ms, Args, Shared, Status};
use crate::guest_ram::GuestRam;
use crate::qemu::{self, Bql, QemuThread};

/// Validated checkpoint parameters.
pub(super) struct Params {
    path: PathBuf,
    mtd: MtdParams,
    staging_budget: Option<u64>,
}

impl Params {
    pub(super) fn from_args(args: &Args) -> Result<Params, String> {
        let mtd = MtdParams {
            epoch: ms(args.epoch_ms, 3000),
            dirty_per_cycle: args.dirty_share.unwrap_or(50),
            clean_per_cycle: args.clean_share.unwrap_or(50),
            live_budget: ms(args.time_budget_ms, 10_000),
            hold: args.hold.unwrap_or(false),
        };
        if mtd.epoch.is_zero() {
            return Err("epoch-ms must be positive".into());
        }
        if mtd.dirty_per_cycle == 0 && mtd.clean_per_cycle == 0 {
            return Err("dirty-share and clean-share cannot both be 0".into());
        }
        let staging_budget = match args.staging_mib {
            Some(0) => return Err("staging-mib must be positive".into()),
            Some(mib) => Some(mib << 20),
            None => None,
        };
        Ok(Params { path: args.path.clone(), mtd, staging_budget })
    }
}

/// Cheap checks of the image path, for a clear error before anything runs.
pub(super) fn check_target(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(|e| format!("image directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if path.file_name().is_none() {
        return Err(format!("{} names no file", path.display()));
    }
    Ok(())
}

/// What the QMP handler prepares under the BQL before the worker starts,
/// so that a refusal (VM not running, migration in progress) is the
/// command's error.
pub(super) struct Prepared {
    ram: GuestRam,
    tracking: Tracking,
    bitmap: Vec<u64>,
}

impl Prepared {
    /// Reads the RAM layout, starts dirty logging and throws away the bits
    /// set before this checkpoint (QEMU marks all RAM dirty at allocation).
    pub(super) fn new(bql: &Bql) -> Result<Prepared, String> {
        let ram = GuestRam::current(bql)?;
        qemu::ckpt::begin(bql)?;
        let tracking = Tracking(true);
        let mut bitmap = Vec::new();
        if let Err(e) = ram.sync_dirty(bql, &mut bitmap) {
            let mut tracking = tracking;
            tracking.stop(bql);
            return Err(e);
        }
        Ok(Prepared { ram, tracking, bitmap })
    }

    /// Gives up before the worker ran (the caller holds the BQL).
    pub(super) fn cancel(mut self, bql: &Bql) {
        self.tracking.stop(bql);
    }
}

/// Thread entry: runs the checkpoint and records its outcome.
pub(super) fn run(shared: Arc<Shared>, params: Params, prepared: Prepared) {
    let _thread = QemuThread::register();
    let started = Instant::now();
    let outcome = checkpoint(&shared, &params, prepared);
    shared.update(|info| {
        info.total_ns = started.elapsed().as_nanos() as u64;
        match outcome {
            Ok(()) => info.status = Status::Completed,
            Err(e) => {
                info.error = Some(e);
                info.status = Status::Failed;
            }
        }
    });
}

/// Undoes `qemu::ckpt::begin` (dirty logging, migration blocker) once.
struct Tracking(bool);

impl Tracking {
    fn stop(&mut self, bql: &Bql) {
        if std::mem::take(&mut self.0) {
            qemu::ckpt::end(bql);
        }
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        if self.0 {
            self.stop(&Bql::lock());
        }
    }
}

fn checkpoint(shared: &Shared, params: &Params, prepared: Prepared) -> Result<(), String> {
    let Prepared { ram, mut tracking, mut bitmap } = prepared;
    let total = ram.total_pages();
    let budget = params.staging_budget.unwrap_or(total * PAGE_SIZE as u64);

    let builder = ImageBuilder::create(&params.path, ram.identity()).map_err(|e| e.to_string())?;
    let result = (|| {
        let staging = Staging::new(total, budget).map_err(|e| format!("staging area: {e}"))?;
        let writer =
            UringWriter::new(builder.file(), WriterOptions::default()).map_err(|e| format!("io_uring writer: {e}"))?;
        let layout = ram.layout().clone();
        let mut persist = Persister::new(staging, writer, move |p| layout.page_offset(p));
        shared.update(|info| info.staging_budget_bytes = budget);

        let (end_reason, live, planner) = live_phase(shared, params, &ram, &mut persist, &mut bitmap)?;
        shared.update(|info| {
            info.end_reason = Some(end_reason_name(end_reason).into());
            info.live_ns = live.as_nanos() as u64;
            info.status = Status::Paused;
        });
        let device_state = pause(shared, &ram, planner, &mut persist, &mut bitmap, &mut tracking)?;

        shared.update(|info| info.status = Status::Persisting);
        persist.flush_all().map_err(|e| format!("writing the image: {e}"))?;
        Ok((device_state, persist))
    })();
    let (device_state, persist) = match result {
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
    let stats = persist.stats();
    shared.update(|info| {
        info.written_bytes = stats.bytes;
        info.direct_io = stats.direct_io;
    });
    builder.set_build_id(env!("MEKHA_BUILD_ID"));
    // The image records how it was made (the INFO section).
    let info_json = serde_json::to_value(&*shared.info.lock().unwrap()).ok();
    builder.finish(&device_state, info_json.as_ref()).map_err(|e| format!("committing the image: {e}"))?;
    Ok(())
}

/// MTD's live phase: copies pages while the guest runs until the planner
/// says it is over. Returns why it ended, how long it took, and the
/// planner for the pause.
fn live_phase(
    shared: &Shared,
    params: &Params,
    ram: &GuestRam,
    persist: &mut Persister,
    bitmap: &mut Vec<u64>,
) -> Result<(EndReason, Duration, MtdPlanner), String> {
    let start = Instant::now();
    let mut planner = MtdPlanner::new(ram.total_pages(), params.mtd.clone());
    let mut pages = Vec::new();
    let mut last_report = Instant::now();
    let reason = loop {
        let elapsed = start.elapsed();
        if planner.next_epoch_due(elapsed) {
            let bql = Bql::lock();
            ram.sync_dirty(&bql, bitmap)?;
            drop(bql);
            planner.on_sync(bitmap);
        }
        if let Some(reason) = planner.live_phase_end(elapsed, shared.end_requested()) {
            break reason;
        }
        pages.clear();
        if planner.next_cycle(&mut pages) == 0 {
            // Hold mode with nothing stale: wait for the end command.
            std::thread::sleep(Duration::from_millis(1));
        }
        copy_pages(ram, persist, &pages, Some(planner.dirty_set()))?;
        if last_report.elapsed() >= Duration::from_millis(50) {
            report(shared, &planner, persist);
            last_report = Instant::now();
        }
    };
    // A last sync while the guest still runs tells how many pages the
    // pause will copy (the live phase may be shorter than an epoch), so
    // that staging has room for them before the VM stops.
    {
        let bql = Bql::lock();
        ram.sync_dirty(&bql, bitmap)?;
    }
    planner.on_sync(bitmap);
    make_room_for_pause(persist, &planner)?;
    // One pass over the stale pages stages the hot set while the guest
    // runs: the pause then overwrites resident staging memory in place
    // instead of faulting fresh pages in.
    let cycles = planner.status().stale / u64::from(params.mtd.dirty_per_cycle.max(1)) + 1;
    for _ in 0..cycles {
        pages.clear();
        if planner.next_cycle(&mut pages) == 0 {
            break;
        }
        copy_pages(ram, persist, &pages, Some(planner.dirty_set()))?;
    }
    report(shared, &planner, persist);
    Ok((reason, start.elapsed(), planner))
}

/// Stops the VM, copies the last stale pages and the device state into
/// memory, restarts the VM. Returns the device state.
fn pause(
    shared: &Shared,
    ram: &GuestRam,
    mut planner: MtdPlanner,
    persist: &mut Persister,
    bitmap: &mut Vec<u64>,
    tracking: &mut Tracking,
) -> Result<Vec<u8>, String> {
    let mut pages = Vec::new();
    let bql = Bql::lock();
    qemu::ckpt::vm_stop(&bql)?;
    let stopped = Instant::now();
    // Whatever happens now, the VM runs again before the BQL is released.
    let result = (|| {
        ram.sync_dirty(&bql, bitmap)?;
        planner.on_sync(bitmap);
        planner.final_pages(&mut pages);
        copy_pages(ram, persist, &pages, None)?;
        qemu::ckpt::save_devices(&bql)
    })();
    qemu::ckpt::vm_start(&bql);
    let pause = stopped.elapsed();
    tracking.stop(&bql);
    drop(bql);
    let device_state = result?;
    shared.update(|info| {
        info.pause_ns = pause.as_nanos() as u64;
        info.final_pages = pages.len() as u64;
        info.device_state_bytes = device_state.len() as u64;
    });
    report(shared, &planner, persist);
    Ok(device_state)
}

/// Copies guest pages into staging, draining staging to disk when its
/// budget is reached: pages outside `hot` (MTD's dirty set) first, since
/// the hot ones will likely be copied again.
fn copy_pages(ram: &GuestRam, persist: &mut Persister, pages: &[u64], hot: Option<&[u64]>) -> Result<(), String> {
    for &page in pages {
        let src = ram.page_ptr(page);
        // SAFETY: page_ptr points at a whole page of guest RAM, which stays
        // mapped for the checkpoint (the block list is fixed while
        // migration is blocked). A running guest may write it meanwhile:
        // the copy is then torn or the zero test wrong, and dirty tracking
        // has marked the page for a later copy.
        if mekha_ckpt_core::page_is_zero(unsafe { &*src.cast::<[u8; PAGE_SIZE]>() }) && persist.record_zero(page) {
            continue;
        }
        loop {
            // SAFETY: as above.
            match unsafe { persist.staging_mut().stage_from_ptr(page, src) } {
                Ok(()) => break,
                Err(StageError::Full) | Err(StageError::InFlight) => make_room(persist, hot)?,
            }
        }
    }
    Ok(())
}

fn make_room(persist: &mut Persister, hot: Option<&[u64]>) -> Result<(), String> {
    let quarter = (persist.staging().budget_bytes() / PAGE_SIZE as u64 / 4).max(1);
    let freed = match hot {
        Some(hot) => persist.drain(quarter, PageFilter::Except(hot)).map_err(write_error)?,
        None => 0,
    };
    if freed == 0 {
        persist.drain(quarter, PageFilter::All).map_err(write_error)?;
    }
    Ok(())
}

/// Before the VM stops, frees staging memory for the pause's copy so that
/// no write happens while the guest waits (pages already staged are
/// overwritten in place and need no more memory).
fn make_room_for_pause(persist: &mut Persister, planner: &MtdPlanner) -> Result<(), String> {
    let status = planner.status();
    let need = status.final_copy_bytes.max(status.dirty_set * PAGE_SIZE as u64).min(persist.staging().budget_bytes());
    while persist.staging().available_bytes() < need {
        let pages = persist.staging().staged_pages();
        let wanted = (need - persist.staging().available_bytes()) / PAGE_SIZE as u64;
        let mut freed = persist.drain(wanted.max(1), PageFilter::Except(planner.dirty_set())).map_err(write_error)?;
        if freed == 0 {
            freed = persist.drain(wanted.max(1), PageFilter::All).map_err(write_error)?;
        }
        if freed == 0 || pages == 0 {
            break;
        }
    }
    if persist.staging().budget_bytes() - persist.staging().resident_bytes() < need {
        persist.staging_mut().release();
    }
    Ok(())
}

fn write_error(e: impl std::fmt::Display) -> String {
    format!("writing staged pages: {e}")
}

fn report(shared: &Shared, planner: &MtdPlanner, persist: &Persister) {
    let s = planner.status();
    let staging = persist.staging();
    let written = persist.stats().bytes;
    shared.update(|info| {
        info.epochs = s.epochs;
        info.dirty_pages = s.dirty_set;
        info.non_dirty_pages = s.non_dirty_set;
        info.stale_pages = s.stale;
        info.copied_pages = s.pages_copied;
        info.staged_bytes = staging.resident_bytes();
        info.staging_peak_bytes = staging.peak_resident_bytes();
        info.written_bytes = written;
    });
}

fn end_reason_name(reason: EndReason) -> &'static str {
    match reason {
        EndReason::NonDirtyEmpty => "non-dirty-empty",
        EndReason::BudgetSpent => "budget-spent",
        EndReason::EndCommand => "end-command",
    }
}
