// SPDX-License-Identifier: GPL-2.0-or-later
//! MTD capture: the live phase copies guest RAM while the guest runs, as
//! the planner multiplexes dirty and non-dirty pages; the pause copies the
//! pages still dirty and the device state.
//!
//! Why the image is consistent: dirty logging starts and the stale bits
//! are cleared before any page is copied, so every write after a page's
//! copy marks it again; the planner recopies marked pages, and the pause
//! copies every page still marked after a last sync with the vCPUs
//! stopped. The image therefore holds each page as it was at the stop.
//!
//! The pause never waits for the disk: the live phase writes staged pages
//! out to make room for the pause's copy while the guest still runs, and
//! pages that do not fit in staging at the stop fail the checkpoint (the
//! VM resumes at once) rather than hold the VM stopped, with the BQL, for
//! as long as the disk takes.

use std::time::{Duration, Instant};

use mekha_ckpt_core::mtd::{EndReason, MtdPlanner};
use mekha_ckpt_core::persist::{PersistError, Persister};
use mekha_ckpt_core::session::{Error, ErrorKind, Result};
use mekha_ckpt_core::staging::{PageFilter, StageError};
use mekha_ckpt_core::width::saturating_u64;
use mekha_ckpt_core::PAGE_SIZE;

use super::pause::{self, StopWindow, Stopped, Tracking};
use super::Params;
use super::{Session, Status};
use crate::disks::capture::Capture as DiskCapture;
use crate::guest_ram::GuestRam;
use crate::qemu::{self, Bql};
use crate::rendezvous;

/// Runs the live phase and the pause; returns what the pause captured.
pub(super) fn capture(
    shared: &Session,
    params: &Params,
    ram: &GuestRam,
    persist: &mut Persister,
    bitmap: &mut Vec<u64>,
    tracking: &mut Tracking,
    disks: &mut DiskCapture,
) -> Result<Stopped> {
    let (end_reason, live, planner) = live_phase(shared, params, ram, persist, bitmap)?;
    shared.update(|info| {
        info.end_reason = Some(end_reason_name(end_reason).into());
        info.live_ns = saturating_u64(live.as_nanos());
        info.status = Status::Paused;
    });
    pause(shared, ram, planner, persist, bitmap, tracking, disks)
}

/// How long before a stop instant the live phase ends: the last sync, the
/// room for the pause and a pass over the stale pages fit in it.
const PREPARE_LEAD_NS: i64 = 20_000_000;

/// MTD's live phase: copies pages while the guest runs until the planner
/// says it is over (with a stop instant, until shortly before it). Returns why it ended, how long it took, and the
/// planner for the pause.
fn live_phase(
    shared: &Session,
    params: &Params,
    ram: &GuestRam,
    persist: &mut Persister,
    bitmap: &mut Vec<u64>,
) -> Result<(EndReason, Duration, MtdPlanner)> {
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
        if let Some(abandon) = shared.abandoned() {
            return Err(abandon.error());
        }
        let end_now = shared.end_requested()
            && shared.end_args().stop_at.is_none_or(|at| rendezvous::wall_ns() >= at - PREPARE_LEAD_NS);
        if let Some(reason) = planner.live_phase_end(elapsed, end_now) {
            break reason;
        }
        pages.clear();
        if planner.next_cycle(&mut pages) == 0 {
            // Hold mode with nothing stale: wait for the end command (or
            // the next look at the clock and the lease).
            shared.wait_until(Duration::from_millis(1), Session::end_requested);
        }
        copy_pages(ram, persist, &pages, WhenFull::Drain { hot: planner.dirty_set() })?;
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
        copy_pages(ram, persist, &pages, WhenFull::Drain { hot: planner.dirty_set() })?;
    }
    report(shared, &planner, persist);
    Ok((reason, start.elapsed(), planner))
}

/// Stops the VM, copies the last stale pages and the device state into
/// memory with the clocks, and restarts the VM at once.
fn pause(
    shared: &Session,
    ram: &GuestRam,
    mut planner: MtdPlanner,
    persist: &mut Persister,
    bitmap: &mut Vec<u64>,
    tracking: &mut Tracking,
    disks: &mut DiskCapture,
) -> Result<Stopped> {
    let mut pages = Vec::new();
    let StopWindow { bql, stopped_at, stopped, time, resume_guard } = pause::stop_vm(shared)?;
    // Whatever happens now, the VM runs again before this thread lets go
    // of the BQL for good, and the frames held meanwhile are released.
    let result = (|| -> Result<Vec<u8>> {
        ram.sync_dirty(&bql, bitmap)?;
        planner.on_sync(bitmap);
        planner.final_pages(&mut pages);
        copy_pages(ram, persist, &pages, WhenFull::Fail).map_err(|e| {
            let message = format!(
                "{e}: the {} MiB of pages left to copy at the stop do not fit in the staging budget ({} MiB), and the \
                 pause does not wait for the disk; the VM runs on. Give the checkpoint more staging memory",
                (pages.len() as u64 * PAGE_SIZE as u64).div_ceil(1 << 20),
                persist.staging().budget_bytes() >> 20
            );
            Error::new(e.kind, message)
        })?;
        let state = qemu::ckpt::save_devices(&bql)?;
        // The disks' copies start last: their I/O would compete with the
        // rest of the pause for the host's CPUs.
        disks.start(&bql)?;
        Ok(state)
    })();
    let resumed = pause::resume_vm(bql, stopped, tracking, resume_guard);
    shared.update(|info| resumed.record(info, stopped_at));
    let device_state = result?;
    shared.update(|info| {
        info.final_pages = pages.len() as u64;
        info.device_state_bytes = device_state.len() as u64;
    });
    report(shared, &planner, persist);
    Ok(Stopped { device_state, time })
}

/// What [`copy_pages`] does when staging is full.
enum WhenFull<'a> {
    /// Writes staged pages out (the guest runs): those outside `hot`
    /// (MTD's dirty set) first, since the hot ones will likely be copied
    /// again.
    Drain { hot: &'a [u64] },
    /// Fails: the VM is stopped, and its pause must not wait for the disk.
    Fail,
}

/// Copies guest pages into staging, making room as `when_full` says.
fn copy_pages(ram: &GuestRam, persist: &mut Persister, pages: &[u64], when_full: WhenFull<'_>) -> Result<()> {
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
                Err(e @ (StageError::Full | StageError::InFlight)) => match when_full {
                    WhenFull::Drain { hot } => make_room(persist, hot)?,
                    WhenFull::Fail => return Err(Error::new(ErrorKind::StagingFull, e.to_string())),
                },
            }
        }
    }
    Ok(())
}

fn make_room(persist: &mut Persister, hot: &[u64]) -> Result<()> {
    let quarter = (persist.staging().budget_bytes() / PAGE_SIZE as u64 / 4).max(1);
    let freed = persist.drain(quarter, PageFilter::Except(hot)).map_err(write_error)?;
    if freed == 0 {
        persist.drain(quarter, PageFilter::All).map_err(write_error)?;
    }
    Ok(())
}

/// Before the VM stops, frees staging memory for the pause's copy so that
/// no write happens while the guest waits (pages already staged are
/// overwritten in place and need no more memory).
fn make_room_for_pause(persist: &mut Persister, planner: &MtdPlanner) -> Result<()> {
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

fn report(shared: &Session, planner: &MtdPlanner, persist: &Persister) {
    let s = planner.status();
    let staging = persist.staging();
    let written = persist.stats().bytes;
    shared.update(|info| {
        info.epochs = s.epochs;
        info.dirty_pages = s.dirty_set;
        info.non_dirty_pages = s.non_dirty_set;
        info.stale_pages = s.stale;
        info.copied_pages = s.pages_copied;
        // Every page copied once: the pause is as short as it gets.
        info.ready = s.non_dirty_set == 0;
        // The final copy at a conservative 1 GB/s (1 byte per ns), plus
        // the device state.
        info.pause_estimate_ns = s.final_copy_bytes + 3_000_000;
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

fn write_error(e: PersistError) -> Error {
    Error::from(e).context("writing staged pages")
}
