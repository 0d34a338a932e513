// SPDX-License-Identifier: GPL-2.0-or-later
//! Real userfaultfd write protection over real anonymous memory, with
//! writer threads racing the capture.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use super::*;
use crate::staging::Staging;
use crate::uring::{UringWriter, WriterOptions};
use crate::width::{page_bytes, to_usize};

/// An anonymous private mapping, unmapped on drop.
struct Memory {
    base: *mut u8,
    pages: u64,
}

// SAFETY: plain memory; the tests synchronise through write protection.
unsafe impl Send for Memory {}
// SAFETY: as above.
unsafe impl Sync for Memory {}

impl Memory {
    fn new(pages: u64) -> Memory {
        // SAFETY: fresh mapping, checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_bytes(pages),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        Memory { base: base.cast(), pages }
    }

    fn page(&self, page: u64) -> *mut u8 {
        assert!(page < self.pages);
        // SAFETY: in bounds.
        unsafe { self.base.add(page_bytes(page)) }
    }

    fn write(&self, page: u64, data: &[u8; PAGE_SIZE]) {
        // SAFETY: in bounds; concurrent writers write whole pages of the
        // same pattern family, and only the test reads them.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.page(page), PAGE_SIZE) };
    }

    fn region(&self, first_page: u64) -> Region {
        Region { host: self.base, pages: self.pages, first_page }
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.base.cast(), page_bytes(self.pages)) };
    }
}

fn content(page: u64, version: u64) -> [u8; PAGE_SIZE] {
    let mut data = [0u8; PAGE_SIZE];
    if version == 0 {
        return data;
    }
    for (i, chunk) in data.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(page << 32 | version << 16 | i as u64).to_le_bytes());
    }
    data
}

/// Version written before the instant: 0 (zero page) for every fifth
/// page, untouched (also zeros) for every seventh, 1 otherwise.
fn before(page: u64) -> Option<u64> {
    if page % 7 == 3 {
        None
    } else if page.is_multiple_of(5) {
        Some(0)
    } else {
        Some(1)
    }
}

fn persister(file: &File, total: u64, budget_pages: u64) -> Persister {
    let staging = Staging::new(total, budget_pages * PAGE_SIZE as u64).unwrap();
    let writer = UringWriter::new(file, WriterOptions::default()).unwrap();
    Persister::new(staging, writer, |p| p * PAGE_SIZE as u64)
}

/// Two regions (global pages 0.. and 5000..), writers hammering random
/// pages from the instant on; the image holds every page as it was at the
/// instant, and every write after it lands.
fn capture_under_writes(allow_unpopulated: bool, budget_pages: u64) -> CowStats {
    let (a, b) = (Arc::new(Memory::new(3000)), Arc::new(Memory::new(2000)));
    let regions = [a.region(0), b.region(5000)];
    for (mem, first) in [(&a, 0), (&b, 5000)] {
        for i in 0..mem.pages {
            if let Some(v) = before(first + i) {
                mem.write(i, &content(first + i, v));
            }
        }
    }
    // SAFETY: private anonymous, page-aligned, mapped until the end.
    let mut wp = unsafe { WriteProtect::register(&regions, allow_unpopulated) }.unwrap();
    assert_eq!(wp.needs_populate(), !wp.unpopulated);
    wp.populate();
    wp.protect().unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(3));
    // Each writer owns alternate pages, so the last write of each page is
    // known: version 2 + the writer's index.
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (a, b, done, writes, start) = (a.clone(), b.clone(), done.clone(), writes.clone(), start.clone());
            thread::spawn(move || {
                let mut written = std::collections::BTreeSet::new();
                let mut x = 0x9e37_79b9_u64 + w;
                start.wait();
                while !done.load(Ordering::Relaxed) || written.len() < 50 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let global = (x % 2500) * 2 + w;
                    let (mem, first) = if global < 3000 { (&a, 0) } else { (&b, 5000) };
                    let page = if global < 3000 { global } else { 5000 + (global - 3000) % 2000 };
                    mem.write(page - first, &content(page, 2 + w));
                    written.insert(page);
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                written
            })
        })
        .collect();
    start.wait();

    let file = tempfile::tempfile().unwrap();
    let mut persist = persister(&file, 7000, budget_pages);
    let mut reports = 0;
    let stats = wp.capture(&mut persist, &AtomicBool::new(false), |_, _| reports += 1).unwrap();
    done.store(true, Ordering::Relaxed);
    let written: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    drop(wp);
    persist.flush_all().unwrap();

    assert!(reports >= 1);
    assert_eq!(stats.pages, 5000, "{stats:?}");
    assert!(writes.load(Ordering::Relaxed) > 0);
    assert!(persist.staging().peak_resident_bytes() <= budget_pages * PAGE_SIZE as u64);
    let mut back = [0u8; PAGE_SIZE];
    for page in (0..3000).chain(5000..7000) {
        back.fill(0);
        let _ = file.read_at(&mut back, page * PAGE_SIZE as u64).unwrap();
        let want = content(page, before(page).unwrap_or(0));
        assert!(back == want, "page {page}: the image does not hold its content at the instant");
        assert_eq!(persist.page_crcs()[to_usize(page)], crc32c::crc32c(&want), "crc of page {page}");
    }
    // Every write after the instant reached memory.
    for (w, pages) in written.iter().enumerate() {
        for &page in pages {
            let (mem, first) = if page < 3000 { (&a, 0) } else { (&b, 5000) };
            // SAFETY: in bounds; writers are done.
            let now = unsafe { &*mem.page(page - first).cast::<[u8; PAGE_SIZE]>() };
            assert!(now == &content(page, 2 + w as u64), "page {page}: a write after the instant was lost");
        }
    }
    stats
}

fn uffd_wp_available() -> bool {
    let ok = crate::host::Capabilities::probe().userfaultfd_wp;
    if !ok {
        mekha_test_skip::skip("no userfaultfd write protection on this host");
    }
    ok
}

#[test]
fn capture_holds_the_instant_with_populated_pages() {
    if uffd_wp_available() {
        let stats = capture_under_writes(false, 7000);
        eprintln!("{stats:?}");
    }
}

#[test]
fn capture_holds_the_instant_with_unpopulated_protection() {
    if uffd_wp_available() {
        capture_under_writes(true, 7000);
    }
}

/// A writer blocked on a protected page runs on when the capture is
/// dropped without finishing (e.g. after a disk error).
#[test]
fn dropping_releases_blocked_writers() {
    if !uffd_wp_available() {
        return;
    }
    let mem = Arc::new(Memory::new(16));
    mem.write(3, &content(3, 1));
    // SAFETY: as above.
    let mut wp = unsafe { WriteProtect::register(&[mem.region(0)], false) }.unwrap();
    wp.populate();
    wp.protect().unwrap();
    let writer = {
        let mem = mem.clone();
        thread::spawn(move || mem.write(3, &content(3, 9)))
    };
    thread::sleep(Duration::from_millis(100));
    assert!(!writer.is_finished(), "the write went through a protected page");
    drop(wp);
    writer.join().unwrap();
    // SAFETY: in bounds; the writer is done.
    assert!(unsafe { &*mem.page(3).cast::<[u8; PAGE_SIZE]>() } == &content(3, 9));
}

#[test]
fn overlapping_or_foreign_memory_is_refused() {
    if !uffd_wp_available() {
        return;
    }
    // A file mapping cannot be registered as anonymous memory would; the
    // error names the address.
    let file = tempfile::tempfile().unwrap();
    file.set_len(PAGE_SIZE as u64).unwrap();
    // SAFETY: fresh shared file mapping of one page.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE_SIZE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let region = Region { host: base.cast(), pages: 1, first_page: 0 };
    // SAFETY: not what register wants: that is the point; it must refuse.
    let err = unsafe { WriteProtect::register(&[region], false) }.unwrap_err();
    assert!(err.to_string().contains(&format!("{:#x}", base as usize)), "{err}");
    // SAFETY: our mapping.
    unsafe { libc::munmap(base, PAGE_SIZE) };
}

/// A staging budget smaller than what must be copied fails the capture
/// instead of writing staged pages to disk while a writer waits; dropping
/// the capture then releases the writer.
#[test]
fn a_full_staging_fails_the_capture_without_waiting_for_the_disk() {
    if !uffd_wp_available() {
        return;
    }
    let mem = Arc::new(Memory::new(256));
    for page in 0..256 {
        mem.write(page, &content(page, 1));
    }
    // SAFETY: as above.
    let mut wp = unsafe { WriteProtect::register(&[mem.region(0)], false) }.unwrap();
    wp.populate();
    wp.protect().unwrap();
    let writer = {
        let mem = mem.clone();
        thread::spawn(move || mem.write(200, &content(200, 9)))
    };
    let file = tempfile::tempfile().unwrap();
    let mut persist = persister(&file, 256, 64);
    let outcome = wp.capture(&mut persist, &AtomicBool::new(false), |_, _| {});
    assert_eq!(persist.stats().bytes, 0, "the capture wrote to disk while a writer could wait: {outcome:?}");
    let err = outcome.unwrap_err();
    assert!(matches!(err, CowError::StagingFull { .. }) && err.to_string().contains("all of guest RAM"), "{err}");
    drop(wp);
    writer.join().unwrap();
    // SAFETY: in bounds; the writer is done.
    assert!(unsafe { &*mem.page(200).cast::<[u8; PAGE_SIZE]>() } == &content(200, 9));
}

/// An abandoned capture (the pause failed after the protection) returns
/// soon, and dropping it releases every page.
#[test]
fn an_aborted_capture_returns_and_releases_the_writers() {
    if !uffd_wp_available() {
        return;
    }
    let mem = Arc::new(Memory::new(64));
    // SAFETY: as above.
    let mut wp = unsafe { WriteProtect::register(&[mem.region(0)], false) }.unwrap();
    wp.populate();
    wp.protect().unwrap();
    let file = tempfile::tempfile().unwrap();
    let mut persist = persister(&file, 64, 64);
    let err = wp.capture(&mut persist, &AtomicBool::new(true), |_, _| {}).unwrap_err();
    assert!(matches!(err, CowError::Aborted), "{err}");
    drop(wp);
    mem.write(5, &content(5, 3));
}
