// SPDX-License-Identifier: GPL-2.0-or-later
//! The in-memory staging area: a mirror of guest RAM, in global page order,
//! holding copied pages until they are on disk, within a hard memory budget.
//!
//! One anonymous private mapping spans all guest pages (`MAP_NORESERVE`:
//! nothing is reserved or resident until a page is staged). Each page is in
//! one of four states:
//!
//! - `Empty`: never staged, not resident.
//! - `Staged`: holds data not written yet; staging it again overwrites it in
//!   place.
//! - `InFlight`: being written to disk: must not change, so staging refuses
//!   it until the write completes or fails.
//! - `Written`: on disk. Its memory stays resident until a release gives it
//!   back to the kernel (`MADV_DONTNEED`); staging it again reuses it.
//!
//! Memory goes back in batches, not per write: every `MADV_DONTNEED` costs
//! a TLB shootdown on each CPU running the process — vCPU threads
//! included — and per-write releases (thousands a second) slowed a running
//! guest to half speed. [`Staging::release`] gives back every Written page
//! at once, coalesced into as few ranges as the Staged and InFlight pages
//! allow; [`Staging::stage`] calls it when the budget is full, and the
//! mapping goes whole when the staging area is dropped.
//!
//! Memory accounting: resident bytes are the Staged, InFlight and
//! unreleased Written pages times [`PAGE_SIZE`]; [`Staging::stage`] refuses
//! a page that would take them past the budget (rounded down to whole
//! pages) even after a release, so the budget is never exceeded.
//! Transparent huge pages are turned off for the mapping,
//! so the kernel's resident set of the mapping equals that count (a 4 KiB
//! copy could otherwise fault in 2 MiB). Outside the budget: three bitmaps
//! (3 bits per guest page: 192 KiB for 2 GiB of RAM) and the kernel's page
//! tables for the touched range.
//!
//! [`Staging::mark_zero`] records a page that is all zeros without staging
//! it: a fresh VM's RAM is mostly zeros, and copying them only to find out
//! at write time that they need not be written cost memory and time.

use std::io;
use std::ops::Range;
use std::ptr::NonNull;

use crate::width::{page_bytes, to_usize};
use crate::PAGE_SIZE;

/// Where a page is in its way to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    /// Never staged nor recorded as zero: holds no memory.
    Empty,
    /// Holds data not written yet; staging the page again overwrites it.
    Staged,
    /// Handed to the writer: its data must not change until the write
    /// completes (Written) or fails (Staged again).
    InFlight,
    /// On disk, or recorded as all zeros by [`Staging::mark_zero`]. A
    /// written page's memory stays resident until the next
    /// [`Staging::release`].
    Written,
}

/// Why [`Staging::stage`] refused a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// One more resident page would exceed the budget: drain to disk first.
    #[error("staging memory budget is full")]
    Full,
    /// The page is being written: reap its completion first.
    #[error("page is being written to disk")]
    InFlight,
}

/// Consecutive pages handed out together for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// The global page number of the run's first page.
    pub first_page: u64,
    /// Pages in the run, at least one.
    pub pages: u64,
}

impl Run {
    /// The run's global page numbers.
    pub fn page_range(&self) -> Range<u64> {
        self.first_page..self.first_page + self.pages
    }

    /// The run's length in bytes.
    pub fn bytes(&self) -> usize {
        page_bytes(self.pages)
    }
}

/// Which Staged pages [`Staging::take_runs`] may pick. Bitmaps are one bit
/// per global page, LSB first, like the dirty bitmaps; words past their end
/// count as zero.
#[derive(Debug, Clone, Copy)]
pub enum PageFilter<'a> {
    /// Every Staged page.
    All,
    /// Only pages whose bit is set.
    Only(&'a [u64]),
    /// Only pages whose bit is clear, e.g. pages outside MTD's dirty set,
    /// which are unlikely to be staged again.
    Except(&'a [u64]),
}

impl PageFilter<'_> {
    fn mask(&self, word: usize) -> u64 {
        match self {
            PageFilter::All => !0,
            PageFilter::Only(bits) => bits.get(word).copied().unwrap_or(0),
            PageFilter::Except(bits) => !bits.get(word).copied().unwrap_or(0),
        }
    }
}

/// The staging area of one VM.
#[derive(Debug)]
pub struct Staging {
    base: NonNull<u8>,
    total_pages: u64,
    budget_pages: u64,
    /// State bits; a page is in at most one of them (none = Empty).
    staged: Vec<u64>,
    inflight: Vec<u64>,
    written: Vec<u64>,
    /// Written pages still resident (a subset of `written`).
    unreleased: Vec<u64>,
    unreleased_pages: u64,
    /// Staged, InFlight and unreleased pages.
    resident_pages: u64,
    peak_resident_pages: u64,
}

// SAFETY: the mapping is owned by the Staging and only reached through it;
// `&self` methods only read.
unsafe impl Send for Staging {}
// SAFETY: as above.
unsafe impl Sync for Staging {}

impl Staging {
    /// Maps address space for `total_pages` pages; at most `budget_bytes`
    /// (rounded down to pages) of them will ever be resident.
    pub fn new(total_pages: u64, budget_bytes: u64) -> io::Result<Staging> {
        let len = page_bytes(total_pages);
        let base = if len == 0 {
            NonNull::dangling()
        } else {
            // SAFETY: a fresh anonymous mapping; the result is checked.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            // Best effort: without it the accounting could be off by huge
            // pages, but a kernel without THP has no huge pages to avoid.
            // SAFETY: advice on our own mapping.
            unsafe { libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) };
            NonNull::new(addr.cast()).expect("mmap returned NULL")
        };
        let words = to_usize(total_pages.div_ceil(64));
        Ok(Staging {
            base,
            total_pages,
            budget_pages: budget_bytes / PAGE_SIZE as u64,
            staged: vec![0; words],
            inflight: vec![0; words],
            written: vec![0; words],
            unreleased: vec![0; words],
            unreleased_pages: 0,
            resident_pages: 0,
            peak_resident_pages: 0,
        })
    }

    /// Pages the area spans: every page of guest RAM, in global order.
    pub fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// Copies `src` into `page`'s slot. Panics if `page` is out of range.
    #[inline]
    pub fn stage(&mut self, page: u64, src: &[u8; PAGE_SIZE]) -> Result<(), StageError> {
        // SAFETY: `src` is a readable page.
        unsafe { self.stage_from_ptr(page, src.as_ptr()) }
    }

    /// [`Self::stage`] from a raw pointer, e.g. straight from guest memory.
    ///
    /// # Safety
    /// `src` must be readable for [`PAGE_SIZE`] bytes and not overlap the
    /// staging area. Concurrent writes to `src` (a running guest) only make
    /// the copy torn, which dirty tracking repairs with a later copy.
    #[inline]
    pub unsafe fn stage_from_ptr(&mut self, page: u64, src: *const u8) -> Result<(), StageError> {
        assert!(page < self.total_pages, "page {page} beyond staging's {} pages", self.total_pages);
        let (w, bit) = word_bit(page);
        if self.staged[w] & bit == 0 {
            if self.inflight[w] & bit != 0 {
                return Err(StageError::InFlight);
            }
            if self.unreleased[w] & bit != 0 {
                // Resident already: no room needed.
                self.unreleased[w] &= !bit;
                self.unreleased_pages -= 1;
            } else {
                if self.resident_pages >= self.budget_pages {
                    self.release();
                }
                if self.resident_pages >= self.budget_pages {
                    return Err(StageError::Full);
                }
                self.resident_pages += 1;
                self.peak_resident_pages = self.peak_resident_pages.max(self.resident_pages);
            }
            self.staged[w] |= bit;
            self.written[w] &= !bit;
        }
        // SAFETY: in bounds (checked above); the caller vouches for `src`.
        unsafe { std::ptr::copy_nonoverlapping(src, self.slot(page), PAGE_SIZE) };
        Ok(())
    }

    /// Where `page` is on its way to disk. Panics if `page` is out of range.
    pub fn state(&self, page: u64) -> PageState {
        assert!(page < self.total_pages);
        let (w, bit) = word_bit(page);
        if self.staged[w] & bit != 0 {
            PageState::Staged
        } else if self.inflight[w] & bit != 0 {
            PageState::InFlight
        } else if self.written[w] & bit != 0 {
            PageState::Written
        } else {
            PageState::Empty
        }
    }

    /// A Staged or InFlight page's data.
    pub fn page_data(&self, page: u64) -> Option<&[u8; PAGE_SIZE]> {
        match self.state(page) {
            // SAFETY: resident slot inside the mapping, as long as `self`.
            PageState::Staged | PageState::InFlight => Some(unsafe { &*self.slot(page).cast::<[u8; PAGE_SIZE]>() }),
            PageState::Empty | PageState::Written => None,
        }
    }

    /// Records that `page` is all zeros, if that needs no memory: true when
    /// it was Empty or Written (the caller knows whether the disk already
    /// reads as zeros there), false when a staged copy must be overwritten
    /// or is being written. The page then counts as Written, not resident.
    pub fn mark_zero(&mut self, page: u64) -> bool {
        assert!(page < self.total_pages, "page {page} beyond staging's {} pages", self.total_pages);
        let (w, bit) = word_bit(page);
        if (self.staged[w] | self.inflight[w]) & bit != 0 {
            return false;
        }
        self.written[w] |= bit;
        true
    }

    /// Bytes of Staged, InFlight and unreleased Written pages: the
    /// kernel's resident set of the mapping.
    pub fn resident_bytes(&self) -> u64 {
        self.resident_pages * PAGE_SIZE as u64
    }

    /// Budget left once Written pages are released.
    pub fn available_bytes(&self) -> u64 {
        (self.budget_pages - (self.resident_pages - self.unreleased_pages)) * PAGE_SIZE as u64
    }

    /// The most [`resident_bytes`](Self::resident_bytes) ever reached, at
    /// most the budget.
    pub fn peak_resident_bytes(&self) -> u64 {
        self.peak_resident_pages * PAGE_SIZE as u64
    }

    /// The budget as enforced: whole pages.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_pages * PAGE_SIZE as u64
    }

    /// Pages waiting to be written (not counting InFlight ones).
    pub fn staged_pages(&self) -> u64 {
        self.staged.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Picks up to `max_pages` Staged pages that pass `filter`, lowest
    /// first, as runs of consecutive pages, and marks them InFlight. Each
    /// run must end in [`Self::complete`] or [`Self::fail`] (whole or in
    /// pieces).
    pub fn take_runs(&mut self, max_pages: u64, filter: PageFilter<'_>) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        let mut left = max_pages;
        for w in 0..self.staged.len() {
            if left == 0 {
                break;
            }
            let mut avail = self.staged[w] & filter.mask(w);
            while avail != 0 && left > 0 {
                let start = avail.trailing_zeros();
                let len = u64::from((avail >> start).trailing_ones()).min(left);
                let taken = ones(len) << start;
                avail &= !taken;
                self.staged[w] &= !taken;
                self.inflight[w] |= taken;
                left -= len;
                let first_page = w as u64 * 64 + u64::from(start);
                match runs.last_mut() {
                    Some(run) if run.first_page + run.pages == first_page => run.pages += len,
                    _ => runs.push(Run { first_page, pages: len }),
                }
            }
        }
        runs
    }

    /// An InFlight run's data: contiguous and page-aligned (fit for
    /// `O_DIRECT`). It stays valid and unchanged until the run is completed
    /// or failed, even after the borrow ends.
    pub fn run_data(&self, run: &Run) -> &[u8] {
        self.assert_inflight(run);
        // SAFETY: in bounds and resident (checked); staging refuses to
        // touch InFlight pages.
        unsafe { std::slice::from_raw_parts(self.slot(run.first_page), run.bytes()) }
    }

    /// The run is on disk: marks it Written; its memory goes back at the
    /// next [`Self::release`].
    pub fn complete(&mut self, run: &Run) {
        self.assert_inflight(run);
        for page in run.page_range() {
            let (w, bit) = word_bit(page);
            self.inflight[w] &= !bit;
            self.written[w] |= bit;
            self.unreleased[w] |= bit;
        }
        self.unreleased_pages += run.pages;
    }

    /// Gives the memory of every Written page back to the kernel, in as
    /// few `madvise` calls as the Staged and InFlight pages between them
    /// allow (a range may span Empty pages: dropping what is not there
    /// costs only the page-table walk). Returns the pages released.
    pub fn release(&mut self) -> u64 {
        let released = self.unreleased_pages;
        if released == 0 {
            return 0;
        }
        // The current range: [start, end) holds no Staged/InFlight page
        // and at least one unreleased one.
        let mut range: Option<(u64, u64)> = None;
        for w in 0..self.unreleased.len() {
            let busy = self.staged[w] | self.inflight[w];
            let mut unreleased = std::mem::take(&mut self.unreleased[w]);
            let base = w as u64 * 64;
            if busy == 0 {
                if unreleased != 0 {
                    let first = base + u64::from(unreleased.trailing_zeros());
                    let last = base + 63 - u64::from(unreleased.leading_zeros());
                    range = match range {
                        Some((start, _)) => Some((start, last + 1)),
                        None => Some((first, last + 1)),
                    };
                }
                continue;
            }
            // Bit by bit where busy pages cut ranges.
            while unreleased != 0 {
                let bit = unreleased.trailing_zeros();
                unreleased &= unreleased - 1;
                let page = base + u64::from(bit);
                let busy_between = match range {
                    // Busy pages of this word between the range's end and this page.
                    Some((_, end)) if end > base => busy & ones(u64::from(bit)) & !ones(end - base) != 0,
                    Some(_) => busy & ones(u64::from(bit)) != 0,
                    None => false,
                };
                range = match range {
                    Some((start, _)) if !busy_between => Some((start, page + 1)),
                    Some(r) => {
                        self.madvise_free(r);
                        Some((page, page + 1))
                    }
                    None => Some((page, page + 1)),
                };
            }
            // A busy page after the range's end closes it.
            if let Some((start, end)) = range {
                let after = if end > base { busy & !ones(end - base) } else { busy };
                if after != 0 {
                    self.madvise_free((start, end));
                    range = None;
                }
            }
        }
        if let Some(r) = range {
            self.madvise_free(r);
        }
        self.resident_pages -= released;
        self.unreleased_pages = 0;
        released
    }

    fn madvise_free(&self, (start, end): (u64, u64)) {
        // SAFETY: our own private anonymous pages, none Staged or InFlight;
        // they read back as zeros if ever touched again.
        let rc = unsafe { libc::madvise(self.slot(start).cast(), page_bytes(end - start), libc::MADV_DONTNEED) };
        debug_assert_eq!(rc, 0, "madvise: {}", io::Error::last_os_error());
    }

    /// The run's write failed: its pages are Staged again, data intact.
    pub fn fail(&mut self, run: &Run) {
        self.assert_inflight(run);
        for page in run.page_range() {
            let (w, bit) = word_bit(page);
            self.inflight[w] &= !bit;
            self.staged[w] |= bit;
        }
    }

    fn assert_inflight(&self, run: &Run) {
        assert!(run.pages > 0 && run.first_page + run.pages <= self.total_pages, "bad run {run:?}");
        for page in run.page_range() {
            let (w, bit) = word_bit(page);
            assert!(self.inflight[w] & bit != 0, "page {page} of {run:?} is not in flight");
        }
    }

    fn slot(&self, page: u64) -> *mut u8 {
        // SAFETY: callers pass pages below total_pages.
        unsafe { self.base.as_ptr().add(page_bytes(page)) }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.total_pages > 0 {
            // SAFETY: our mapping; no borrow of it outlives `self`.
            unsafe { libc::munmap(self.base.as_ptr().cast(), page_bytes(self.total_pages)) };
        }
    }
}

fn word_bit(page: u64) -> (usize, u64) {
    ((page / 64) as usize, 1 << (page % 64))
}

/// A mask of the `n` lowest bits, n <= 64.
fn ones(n: u64) -> u64 {
    if n >= 64 {
        !0
    } else {
        (1 << n) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_of(byte: u8) -> [u8; PAGE_SIZE] {
        let mut page = [byte; PAGE_SIZE];
        page[0] = !byte;
        page
    }

    /// Pages of the mapping the kernel has resident, from mincore(2).
    fn kernel_resident_pages(staging: &Staging) -> u64 {
        let len = page_bytes(staging.total_pages);
        let mut vec = vec![0u8; to_usize(staging.total_pages)];
        // SAFETY: our mapping; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(staging.base.as_ptr().cast(), len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 != 0).count() as u64
    }

    #[test]
    fn states_follow_stage_take_complete_fail() {
        let mut s = Staging::new(200, 200 * PAGE_SIZE as u64).unwrap();
        assert_eq!(s.state(7), PageState::Empty);
        s.stage(7, &page_of(1)).unwrap();
        s.stage(8, &page_of(2)).unwrap();
        s.stage(130, &page_of(3)).unwrap();
        assert_eq!(s.state(7), PageState::Staged);
        assert_eq!(s.resident_bytes(), 3 * PAGE_SIZE as u64);
        // Re-staging overwrites in place.
        s.stage(7, &page_of(4)).unwrap();
        assert_eq!(s.resident_bytes(), 3 * PAGE_SIZE as u64);
        assert_eq!(s.page_data(7).unwrap(), &page_of(4));

        let runs = s.take_runs(u64::MAX, PageFilter::All);
        assert_eq!(runs, [Run { first_page: 7, pages: 2 }, Run { first_page: 130, pages: 1 }]);
        assert_eq!(s.state(8), PageState::InFlight);
        assert_eq!(s.stage(8, &page_of(9)), Err(StageError::InFlight));
        let data = s.run_data(&runs[0]);
        assert_eq!(data.len(), 2 * PAGE_SIZE);
        assert_eq!(data.as_ptr() as usize % PAGE_SIZE, 0);
        assert_eq!(&data[..PAGE_SIZE], &page_of(4));
        assert_eq!(&data[PAGE_SIZE..], &page_of(2));

        s.complete(&runs[0]);
        s.fail(&runs[1]);
        assert_eq!((s.state(7), s.state(8), s.state(130)), (PageState::Written, PageState::Written, PageState::Staged));
        assert_eq!(s.page_data(130).unwrap(), &page_of(3));
        // Written pages stay resident until released.
        assert_eq!(s.resident_bytes(), 3 * PAGE_SIZE as u64);
        assert_eq!(s.available_bytes(), 199 * PAGE_SIZE as u64);
        assert_eq!(kernel_resident_pages(&s), 3);
        assert_eq!(s.release(), 2);
        assert_eq!(s.resident_bytes(), PAGE_SIZE as u64);
        assert_eq!(kernel_resident_pages(&s), 1);

        // A written page comes back.
        s.stage(8, &page_of(5)).unwrap();
        assert_eq!(s.state(8), PageState::Staged);
        assert_eq!(s.page_data(8).unwrap(), &page_of(5));
        assert_eq!(s.peak_resident_bytes(), 3 * PAGE_SIZE as u64);
    }

    #[test]
    fn take_runs_honours_max_and_filter() {
        let mut s = Staging::new(300, u64::MAX).unwrap();
        for page in (60..140).chain(250..300) {
            s.stage(page, &page_of((page & 0xff) as u8)).unwrap();
        }
        let mut only = vec![0u64; 5];
        for page in (100..260).filter(|p| p % 50 != 0) {
            only[page / 64] |= 1 << (page % 64);
        }
        let runs = s.take_runs(30, PageFilter::Only(&only));
        assert_eq!(runs, [Run { first_page: 101, pages: 30 }]);
        let runs = s.take_runs(1000, PageFilter::Except(&only));
        assert_eq!(
            runs,
            [Run { first_page: 60, pages: 41 }, Run { first_page: 250, pages: 1 }, Run { first_page: 260, pages: 40 }],
            "runs cross word boundaries"
        );
        let runs = s.take_runs(1000, PageFilter::All);
        assert_eq!(runs, [Run { first_page: 131, pages: 9 }, Run { first_page: 251, pages: 9 }]);
        assert!(s.take_runs(1000, PageFilter::All).is_empty());
        assert_eq!(s.staged_pages(), 0);
    }

    #[test]
    fn full_budget_refuses_until_drained() {
        let mut s = Staging::new(100, 10 * PAGE_SIZE as u64 + 100).unwrap();
        assert_eq!(s.budget_bytes(), 10 * PAGE_SIZE as u64);
        for page in 0..10 {
            s.stage(page, &page_of(1)).unwrap();
        }
        assert_eq!(s.stage(10, &page_of(1)), Err(StageError::Full));
        // Overwriting a staged page needs no room.
        s.stage(3, &page_of(2)).unwrap();
        let runs = s.take_runs(4, PageFilter::All);
        // In flight still counts.
        assert_eq!(s.stage(10, &page_of(1)), Err(StageError::Full));
        s.complete(&runs[0]);
        for page in 10..14 {
            s.stage(page, &page_of(1)).unwrap();
        }
        assert_eq!(s.stage(14, &page_of(1)), Err(StageError::Full));
        assert_eq!(s.peak_resident_bytes(), s.budget_bytes());
    }

    /// Random staging, draining and failures: the accounting, the
    /// kernel's resident set and the data all agree, and the budget holds.
    #[test]
    fn budget_is_never_exceeded_and_data_survives() {
        let total = 1000u64;
        let budget = 64;
        let mut s = Staging::new(total, budget * PAGE_SIZE as u64).unwrap();
        let mut expected: Vec<Option<u8>> = vec![None; to_usize(total)];
        let mut x = 12345u64;
        let mut rand = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut full = 0;
        for step in 0..20_000u64 {
            match rand(12) {
                1.. => {
                    let page = rand(total);
                    let byte = (step & 0xff) as u8;
                    match s.stage(page, &page_of(byte)) {
                        Ok(()) => expected[to_usize(page)] = Some(byte),
                        Err(StageError::Full) => full += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                0 => {
                    for run in s.take_runs(rand(40), PageFilter::All) {
                        for page in run.page_range() {
                            let offset = page_bytes(page - run.first_page);
                            let want = page_of(expected[to_usize(page)].unwrap());
                            assert_eq!(&s.run_data(&run)[offset..offset + PAGE_SIZE], &want);
                        }
                        if rand(4) == 0 {
                            s.fail(&run);
                        } else {
                            s.complete(&run);
                            run.page_range().for_each(|p| expected[to_usize(p)] = None);
                        }
                    }
                    if rand(3) == 0 {
                        s.release();
                    }
                }
            }
            assert!(s.resident_bytes() <= s.budget_bytes());
            if step % 256 == 0 {
                assert_eq!(kernel_resident_pages(&s), s.resident_bytes() / PAGE_SIZE as u64);
            }
        }
        assert!(full > 100, "the budget was never reached");
        assert_eq!(s.peak_resident_bytes(), s.budget_bytes());
        for page in 0..total {
            assert_eq!(s.page_data(page).map(|d| d[1]), expected[to_usize(page)], "page {page}");
        }
    }

    /// Release gives back exactly the Written pages, whatever Staged and
    /// InFlight pages lie between them, in few calls.
    #[test]
    fn release_spares_staged_and_inflight_pages() {
        let total = 640;
        let mut s = Staging::new(total, u64::MAX).unwrap();
        for page in 0..total {
            s.stage(page, &page_of((page & 0xff) as u8)).unwrap();
        }
        // Write all but a scattered set: single pages, runs across word
        // boundaries, whole busy words.
        let keep = |p: u64| p.is_multiple_of(97) || (120..140).contains(&p) || (256..320).contains(&p) || p == 639;
        let mut only = vec![0u64; 10];
        (0..total).filter(|&p| !keep(p)).for_each(|p| only[to_usize(p) / 64] |= 1 << (p % 64));
        let runs = s.take_runs(u64::MAX, PageFilter::Only(&only));
        for run in &runs {
            s.complete(run);
        }
        // Some kept pages are in flight, the rest staged.
        let inflight = s.take_runs(40, PageFilter::All);
        let kept = (0..total).filter(|&p| keep(p)).count() as u64;
        assert_eq!(s.release(), total - kept);
        assert_eq!(s.release(), 0);
        assert_eq!(kernel_resident_pages(&s), kept);
        assert_eq!(s.resident_bytes(), kept * PAGE_SIZE as u64);
        for page in (0..total).filter(|&p| keep(p)) {
            assert_eq!(s.page_data(page).unwrap(), &page_of((page & 0xff) as u8), "page {page}");
        }
        for run in &inflight {
            s.complete(run);
        }
        assert_eq!(s.release(), 40);
    }

    #[test]
    fn full_budget_releases_written_pages_first() {
        let mut s = Staging::new(100, 10 * PAGE_SIZE as u64).unwrap();
        for page in 0..10 {
            s.stage(page, &page_of(1)).unwrap();
        }
        for run in s.take_runs(6, PageFilter::All) {
            s.complete(&run);
        }
        assert_eq!(s.resident_bytes(), 10 * PAGE_SIZE as u64);
        // Re-staging a written, still resident page needs no room.
        s.stage(2, &page_of(2)).unwrap();
        assert_eq!(s.resident_bytes(), 10 * PAGE_SIZE as u64);
        // A new page makes staging release the other five.
        s.stage(50, &page_of(3)).unwrap();
        assert_eq!(s.resident_bytes(), 6 * PAGE_SIZE as u64);
        assert_eq!(kernel_resident_pages(&s), 6);
        assert_eq!(s.peak_resident_bytes(), 10 * PAGE_SIZE as u64);
    }

    #[test]
    fn zero_pages_are_marked_without_memory() {
        let mut s = Staging::new(10, 2 * PAGE_SIZE as u64).unwrap();
        assert!(s.mark_zero(3));
        assert_eq!(s.state(3), PageState::Written);
        assert_eq!(s.resident_bytes(), 0);
        s.stage(4, &page_of(1)).unwrap();
        assert!(!s.mark_zero(4), "a staged copy must be overwritten");
        let runs = s.take_runs(1, PageFilter::All);
        assert!(!s.mark_zero(4), "a page in flight cannot change");
        s.complete(&runs[0]);
        assert!(s.mark_zero(4));
        assert_eq!(kernel_resident_pages(&s), 1, "marking does not release");
    }

    #[test]
    #[should_panic(expected = "beyond staging")]
    fn out_of_range_page_panics() {
        let mut s = Staging::new(10, u64::MAX).unwrap();
        let _ = s.stage(10, &page_of(0));
    }

    #[test]
    fn empty_staging_is_fine() {
        let mut s = Staging::new(0, 0).unwrap();
        assert!(s.take_runs(10, PageFilter::All).is_empty());
    }
}
