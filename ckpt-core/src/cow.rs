// SPDX-License-Identifier: GPL-2.0-or-later
//! Copy-on-write capture: guest RAM is write-protected (userfaultfd) at the
//! checkpoint instant, and every page is copied into staging before the
//! guest may change it, while the guest runs.
//!
//! The VM stops only to write-protect its RAM and save its devices, so the
//! pause does not depend on the dirty rate. From the protection on, one
//! thread serves both sources of copies: write faults first (a vCPU, or a
//! QEMU thread writing guest RAM, waits for them), then a sweep over all
//! pages in address order. A page is copied once, then its protection is
//! removed, which wakes whoever waits on it. That thread must never write
//! guest RAM itself nor wait for a thread that may (one holding a lock such
//! a writer holds): a writer blocked on a page only its own thread could
//! release waits forever.
//!
//! The capture never writes to disk: a faulting writer waits for a memory
//! copy only. Staging must hold every page of guest RAM (callers check the
//! budget first); a staging area that fills up all the same fails the
//! capture, which releases every page, instead of making writers wait for
//! the disk.
//!
//! Write protection misses writes that do not go through this process's
//! page tables: another process's mapping of shared memory (vhost-user)
//! and device DMA (VFIO). Callers use it for private anonymous RAM only.
//!
//! Before Linux 6.4 (no `UFFD_FEATURE_WP_UNPOPULATED`), protection skips
//! pages never touched, so [`WriteProtect::populate`] maps each of them
//! (read one byte: the shared zero page, no memory) before the instant.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use userfaultfd::{Event, EventBuffer, FeatureFlags, RegisterMode, Uffd, UffdBuilder};

use crate::persist::Persister;
use crate::staging::StageError;
use crate::width::{page_bytes, to_usize};
use crate::PAGE_SIZE;

/// `UFFD_FEATURE_WP_UNPOPULATED` (Linux 6.4): protection covers pages
/// never touched. Not in the bindings built from older kernel headers.
const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;

/// Pages the sweep copies between two looks for faults: 256 KiB, a few
/// tens of microseconds of copying, which bounds a faulting writer's wait.
const SWEEP_PAGES: u64 = 64;

/// Fault messages read at once.
const EVENT_BATCH: usize = 64;

/// A stretch of guest RAM: host memory and its global page numbers.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    /// The first byte, page-aligned, in this process's address space.
    pub host: *mut u8,
    /// Length in pages of [`PAGE_SIZE`] bytes (empty regions are ignored).
    pub pages: u64,
    /// The global page number of the region's first page: where its pages
    /// go in staging and in the image.
    pub first_page: u64,
}

// SAFETY: a description of memory owned elsewhere; the capture reads it
// only while the owner keeps it mapped (the caller's contract).
unsafe impl Send for Region {}

/// A copy-on-write capture failed; dropping the [`WriteProtect`] then
/// releases every page still protected.
#[derive(Debug, thiserror::Error)]
pub enum CowError {
    /// No userfaultfd with write-protect faults could be opened (a kernel
    /// without them, or one that denies userfaultfd to this process).
    #[error("userfaultfd write protection is not available: {0}")]
    Unavailable(userfaultfd::Error),
    /// The kernel refused to register a region in write-protect mode
    /// (e.g. memory that is not private anonymous).
    #[error("registering guest RAM at {addr:#x} (+{len:#x}) for write protection: {source}")]
    Register {
        /// The region's first host address.
        addr: usize,
        /// The region's length in bytes.
        len: usize,
        /// The kernel's error.
        source: userfaultfd::Error,
    },
    /// Write-protecting a region at the checkpoint instant failed; nothing
    /// stays protected.
    #[error("write-protecting guest RAM: {0}")]
    Protect(userfaultfd::Error),
    /// Removing the protection of copied pages failed.
    #[error("releasing guest RAM pages: {0}")]
    Unprotect(userfaultfd::Error),
    /// Reading fault messages from the userfaultfd failed.
    #[error("reading write faults: {0}")]
    Events(userfaultfd::Error),
    /// A fault arrived for a host address (held here) in no registered region.
    #[error("write fault at {0:#x}, outside guest RAM")]
    Stray(usize),
    /// Staging could not take a page without writing to disk first (a
    /// writer may be waiting on the page): it must hold all of guest RAM.
    #[error(
        "the staging budget ({} MiB) is full: copy-on-write needs room for all of guest RAM, so that no guest \
         write waits for the disk",
        .budget_bytes >> 20
    )]
    StagingFull {
        /// The staging area's budget in bytes.
        budget_bytes: u64,
    },
    /// The caller set the capture's `abort` flag.
    #[error("the capture was abandoned")]
    Aborted,
}

/// What a capture did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CowStats {
    /// Write faults served: writes to guest RAM that waited for a copy.
    pub faults: u64,
    /// Pages copied because of a fault (the rest came from the sweep).
    pub fault_copies: u64,
    /// Pages copied or recorded as zero in all.
    pub pages: u64,
    /// From the first copy to the last page released.
    pub capture: Duration,
}

/// Guest RAM registered with a userfaultfd for write protection. Dropping
/// it removes any protection left and unregisters, so that no writer can
/// stay blocked, whatever happened.
pub struct WriteProtect {
    uffd: Uffd,
    /// Sorted by host address.
    regions: Vec<Region>,
    /// The kernel protects untouched pages too (no populate needed).
    unpopulated: bool,
    protected: bool,
}

impl std::fmt::Debug for WriteProtect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteProtect")
            .field("regions", &self.regions)
            .field("unpopulated", &self.unpopulated)
            .field("protected", &self.protected)
            .finish()
    }
}

impl WriteProtect {
    /// Opens a userfaultfd and registers every region in write-protect
    /// mode; nothing is protected yet. `allow_unpopulated`: use the
    /// kernel's protection of untouched pages where it has it.
    ///
    /// # Safety
    /// The regions must be private anonymous memory, page-aligned, that
    /// stays mapped until this is dropped, and must not overlap.
    pub unsafe fn register(regions: &[Region], allow_unpopulated: bool) -> Result<WriteProtect, CowError> {
        let create = |features: u64| {
            UffdBuilder::new()
                .close_on_exec(true)
                .non_blocking(true)
                // Faults raised by the kernel on the process's behalf
                // (KVM, vhost-net, O_DIRECT reads into guest RAM) must be
                // caught too.
                .user_mode_only(false)
                .require_features(FeatureFlags::PAGEFAULT_FLAG_WP | FeatureFlags::from_bits_retain(features))
                .create()
        };
        let (uffd, unpopulated) = match create(if allow_unpopulated { FEATURE_WP_UNPOPULATED } else { 0 }) {
            Ok(uffd) => (uffd, allow_unpopulated),
            Err(_) if allow_unpopulated => (create(0).map_err(CowError::Unavailable)?, false),
            Err(e) => return Err(CowError::Unavailable(e)),
        };
        let mut regions = regions.to_vec();
        regions.retain(|r| r.pages > 0);
        regions.sort_by_key(|r| r.host as usize);
        let mut wp = WriteProtect { uffd, regions: Vec::new(), unpopulated, protected: false };
        for region in regions {
            let len = page_bytes(region.pages);
            wp.uffd
                .register_with_mode(region.host.cast(), len, RegisterMode::WRITE_PROTECT)
                .map_err(|source| CowError::Register { addr: region.host as usize, len, source })?;
            // Registered regions only: drop unregisters exactly these.
            wp.regions.push(region);
        }
        Ok(wp)
    }

    /// Whether [`Self::populate`] has work to do on this kernel.
    pub fn needs_populate(&self) -> bool {
        !self.unpopulated
    }

    /// Maps every untouched page (one read each) so that protection covers
    /// it; a no-op where the kernel protects untouched pages itself. Run
    /// it while the guest runs: it takes a minor fault per untouched page.
    pub fn populate(&self) {
        if self.unpopulated {
            return;
        }
        for region in &self.regions {
            for page in 0..to_usize(region.pages) {
                // SAFETY: inside the region (the caller's contract); a
                // volatile read is not optimized out.
                unsafe { std::ptr::read_volatile(region.host.add(page * PAGE_SIZE)) };
            }
        }
    }

    /// Write-protects all regions: the checkpoint instant. Call it with the
    /// VM stopped. On an error nothing stays protected.
    pub fn protect(&mut self) -> Result<(), CowError> {
        self.protected = true;
        for region in &self.regions {
            if let Err(e) = self.uffd.write_protect(region.host.cast(), page_bytes(region.pages)) {
                self.release_all();
                return Err(CowError::Protect(e));
            }
        }
        Ok(())
    }

    /// Copies every page as it was at [`Self::protect`] into `persist`'s
    /// staging (zero pages only recorded; nothing is written to disk),
    /// serving write faults first, and releases each page once copied;
    /// `progress` hears of it every 50 ms and at the end. Returns when
    /// every page is copied and released, or soon after `abort` is set. On
    /// an error, drop `self` to release the rest.
    pub fn capture(
        &mut self,
        persist: &mut Persister,
        abort: &AtomicBool,
        mut progress: impl FnMut(&CowStats, &Persister),
    ) -> Result<CowStats, CowError> {
        assert!(self.protected, "capture before protect");
        let started = Instant::now();
        let total_pages = self.regions.iter().map(|r| r.first_page + r.pages).max().unwrap_or(0);
        let mut copied = vec![0u64; to_usize(total_pages.div_ceil(64))];
        let mut stats = CowStats::default();
        let mut events = EventBuffer::new(EVENT_BATCH);
        let mut last_progress = Instant::now();
        for index in 0..self.regions.len() {
            let region = self.regions[index];
            let mut next = 0;
            while next < region.pages {
                if abort.load(Ordering::Relaxed) {
                    return Err(CowError::Aborted);
                }
                self.serve_faults(persist, &mut copied, &mut events, &mut stats)?;
                let end = (next + SWEEP_PAGES).min(region.pages);
                for i in next..end {
                    copy_once(persist, &region, i, &mut copied, &mut stats)?;
                }
                // SAFETY: inside the region.
                let start = unsafe { region.host.add(page_bytes(next)) };
                self.uffd
                    .remove_write_protection(start.cast(), page_bytes(end - next), true)
                    .map_err(CowError::Unprotect)?;
                next = end;
                if last_progress.elapsed() >= Duration::from_millis(50) {
                    stats.capture = started.elapsed();
                    progress(&stats, persist);
                    last_progress = Instant::now();
                }
            }
        }
        // Faults queued for pages released meanwhile: their writers were
        // woken by the release; reading the messages keeps nothing stale.
        self.serve_faults(persist, &mut copied, &mut events, &mut stats)?;
        self.protected = false;
        stats.capture = started.elapsed();
        progress(&stats, persist);
        Ok(stats)
    }

    /// Copies the pages of pending write faults and releases them.
    fn serve_faults(
        &self,
        persist: &mut Persister,
        copied: &mut [u64],
        events: &mut EventBuffer,
        stats: &mut CowStats,
    ) -> Result<(), CowError> {
        loop {
            let mut faults = Vec::new();
            for event in self.uffd.read_events(events).map_err(CowError::Events)? {
                if let Event::Pagefault { addr, .. } = event.map_err(CowError::Events)? {
                    faults.push(addr as usize & !(PAGE_SIZE - 1));
                }
            }
            if faults.is_empty() {
                return Ok(());
            }
            for addr in faults {
                stats.faults += 1;
                let (region, index) = self.locate(addr).ok_or(CowError::Stray(addr))?;
                if copy_once(persist, &region, index, copied, stats)? {
                    stats.fault_copies += 1;
                }
                self.uffd.remove_write_protection(addr as *mut _, PAGE_SIZE, true).map_err(CowError::Unprotect)?;
            }
        }
    }

    /// The region holding host address `addr`, and the page's index in it.
    fn locate(&self, addr: usize) -> Option<(Region, u64)> {
        let i = self.regions.partition_point(|r| r.host as usize <= addr).checked_sub(1)?;
        let r = self.regions[i];
        let index = ((addr - r.host as usize) / PAGE_SIZE) as u64;
        (index < r.pages).then_some((r, index))
    }

    /// Removes every protection, waking any writer; errors are moot here
    /// (the range is ours and registered).
    fn release_all(&mut self) {
        for region in &self.regions {
            let _ = self.uffd.remove_write_protection(region.host.cast(), page_bytes(region.pages), true);
        }
        self.protected = false;
    }
}

impl Drop for WriteProtect {
    fn drop(&mut self) {
        self.release_all();
        for region in &self.regions {
            let _ = self.uffd.unregister(region.host.cast(), page_bytes(region.pages));
        }
    }
}

/// Stages page `index` of `region` unless already copied; returns whether
/// it copied. Zero pages are only recorded.
fn copy_once(
    persist: &mut Persister,
    region: &Region,
    index: u64,
    copied: &mut [u64],
    stats: &mut CowStats,
) -> Result<bool, CowError> {
    let page = region.first_page + index;
    let (w, bit) = ((page / 64) as usize, 1u64 << (page % 64));
    if copied[w] & bit != 0 {
        return Ok(false);
    }
    // SAFETY: inside the region, which is write-protected: nobody changes
    // the page until it is released after this copy.
    let src = unsafe { region.host.add(page_bytes(index)) };
    // SAFETY: as above: a whole page of the region, unchanged meanwhile.
    let data = unsafe { &*src.cast::<[u8; PAGE_SIZE]>() };
    if !(crate::page_is_zero(data) && persist.record_zero(page)) {
        // SAFETY: as above; staging memory never overlaps guest RAM.
        match unsafe { persist.staging_mut().stage_from_ptr(page, src) } {
            Ok(()) => {}
            // Making room would write to disk while a writer may wait.
            Err(StageError::Full) | Err(StageError::InFlight) => {
                return Err(CowError::StagingFull { budget_bytes: persist.staging().budget_bytes() });
            }
        }
    }
    copied[w] |= bit;
    stats.pages += 1;
    Ok(true)
}

#[cfg(test)]
mod tests;
