// SPDX-License-Identifier: GPL-2.0-or-later
//! Staged pages drained through the io_uring writer into an image file.
//!
//! A [`Persister`] owns the staging area and the writer. Each drain takes
//! Staged runs, splits them where file offsets stop being contiguous (RAM
//! block boundaries) and at [`MAX_WRITE_BYTES`], computes every page's
//! CRC32C from the staged data, submits the writes and waits for them. A
//! written run's memory goes back to the kernel; a failed one is Staged
//! again with its data, to be retried.
//!
//! The image file must read as zeros where nothing was written yet (a new
//! or truncated file): all-zero pages are then left out, keeping the file
//! sparse, unless an earlier non-zero copy of the page was written. Zero
//! detection costs nothing extra: only a page whose CRC equals the zero
//! page's CRC is compared with zeros.

use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::image::{ImageKey, PageTag};
use crate::staging::{PageFilter, Run, Staging};
use crate::uring::UringWriter;
use crate::width::to_usize;
use crate::PAGE_SIZE;

/// Longest single write; bounds how much one request holds in flight.
pub const MAX_WRITE_BYTES: usize = 1 << 20;

/// What drains have done so far: the write throughput.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WriteStats {
    /// Bytes written to the file (zero pages left out do not count).
    pub bytes: u64,
    /// Time spent inside drains and the final sync (CRCs and waiting for
    /// the disk included).
    pub seconds: f64,
    /// Write requests submitted (runs, cut at block boundaries and at
    /// [`MAX_WRITE_BYTES`]).
    pub writes: u64,
    /// Pages written to the file (a page written twice counts twice).
    pub pages_written: u64,
    /// All-zero pages not written because the file already reads as zeros
    /// (staged ones and those recorded by [`Persister::record_zero`]).
    pub zero_pages_skipped: u64,
    /// Writes bypassed the page cache (`O_DIRECT`).
    pub direct_io: bool,
}

impl WriteStats {
    /// Write throughput: `bytes` over `seconds` (0 before any drain).
    pub fn bytes_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// `seconds` as a [`Duration`].
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
}

/// A drain that did not write everything it took.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// These pages are Staged again, data intact; later failures of the
    /// same drain (counted in `more`) were handled the same way.
    #[error("writing pages {first_page}..{} failed ({more} more failed writes): {source}", first_page + pages)]
    Write {
        /// The global page number of the failed write's first page.
        first_page: u64,
        /// Pages in that write.
        pages: u64,
        /// Further writes of the drain that failed too.
        more: usize,
        /// The first failed write's error.
        source: io::Error,
    },
    /// The ring itself failed; pages it held stay InFlight (in memory) and
    /// the persister cannot go on.
    #[error("io_uring failed: {0}")]
    Ring(io::Error),
    /// The final `fdatasync` failed: what was written may not be durable.
    #[error("fdatasync of the image failed: {0}")]
    Sync(io::Error),
    /// Growing the file to the end of its last page, at the first drain,
    /// failed; nothing was taken from staging.
    #[error("sizing the image failed: {0}")]
    Size(io::Error),
}

/// Per-page facts computed before submission, recorded on success.
#[derive(Debug, Clone, Copy)]
struct PageSum {
    crc: u32,
    zero: bool,
    /// Under an image key; zeros without one.
    tag: PageTag,
}

/// One write request: pages contiguous in memory and in the file.
#[derive(Debug)]
struct Chunk {
    run: Run,
    sums: Vec<PageSum>,
}

/// Maps a global page to its file offset.
type PageOffset = Box<dyn Fn(u64) -> u64 + Send>;

/// Staging, writer and image offsets together.
pub struct Persister {
    // Declared before `staging`: its drop waits for the kernel to stop
    // reading staging memory before the mapping goes.
    writer: UringWriter,
    staging: Staging,
    page_offset: PageOffset,
    /// The file reaches past the last page (checked at the first drain).
    sized: bool,
    crcs: Vec<u32>,
    /// With an image key: the key, the zero page's tag and each page's tag
    /// as the file holds it, like `crcs`.
    seal: Option<(ImageKey, PageTag, Vec<PageTag>)>,
    /// Pages whose on-disk copy may be non-zero.
    nonzero_on_disk: Vec<u64>,
    /// Chunks in flight, indexed by token.
    chunks: Vec<Option<Chunk>>,
    free_tokens: Vec<u64>,
    stats: WriteStats,
    zero_crc: u32,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persister").field("writer", &self.writer).field("stats", &self.stats).finish()
    }
}

impl Persister {
    /// `page_offset` maps a global page to its file offset (page aligned,
    /// ascending with the page), e.g. `move |p| layout.page_offset(p)`.
    /// The first drain grows the file (sparse) to the end of the last page
    /// if it is shorter, so that page writes never extend it.
    pub fn new(staging: Staging, writer: UringWriter, page_offset: impl Fn(u64) -> u64 + Send + 'static) -> Persister {
        let total = staging.total_pages();
        let zero_crc = crc32c::crc32c(&[0; PAGE_SIZE]);
        let stats = WriteStats { direct_io: writer.direct(), ..WriteStats::default() };
        Persister {
            writer,
            staging,
            page_offset: Box::new(page_offset),
            sized: total == 0,
            // The file reads as zeros where nothing was written.
            crcs: vec![zero_crc; to_usize(total)],
            seal: None,
            nonzero_on_disk: vec![0; to_usize(total.div_ceil(64))],
            chunks: Vec::new(),
            free_tokens: Vec::new(),
            stats,
            zero_crc,
        }
    }

    /// Tags every page written from now on under `key` (an image sealed
    /// with it); pages not written yet carry the zero page's tag.
    pub fn set_key(&mut self, key: &ImageKey) {
        let zero = key.page_tag(&[0; PAGE_SIZE]);
        self.seal = Some((key.clone(), zero, vec![zero; self.crcs.len()]));
    }

    /// With a key: each page's tag as the file holds it.
    pub fn page_tags(&self) -> Option<&[PageTag]> {
        self.seal.as_ref().map(|(_, _, tags)| tags.as_slice())
    }

    /// The zero page's tag under the key (zeros without one).
    fn zero_tag(&self) -> PageTag {
        self.seal.as_ref().map_or_else(PageTag::default, |(_, zero, _)| *zero)
    }

    /// What the file now holds at `page`: its CRC and, with a key, its tag.
    fn record_sums(&mut self, page: u64, crc: u32, tag: PageTag) {
        self.crcs[to_usize(page)] = crc;
        if let Some((_, _, tags)) = &mut self.seal {
            tags[to_usize(page)] = tag;
        }
    }

    /// The staging area the persister drains.
    pub fn staging(&self) -> &Staging {
        &self.staging
    }

    /// For staging pages; pages being written are refused there.
    pub fn staging_mut(&mut self) -> &mut Staging {
        &mut self.staging
    }

    /// CRC32C of every page as the file holds it after the successful
    /// writes so far (pages never written: the zero page's CRC).
    pub fn page_crcs(&self) -> &[u32] {
        &self.crcs
    }

    /// Write throughput so far.
    pub fn stats(&self) -> WriteStats {
        WriteStats { direct_io: self.writer.direct(), ..self.stats }
    }

    /// Records that guest page `page` is all zeros without staging it,
    /// where the file reads as zeros there and no older copy is staged or
    /// in flight. Returns false when the page must be staged instead.
    pub fn record_zero(&mut self, page: u64) -> bool {
        if bit(&self.nonzero_on_disk, page) || !self.staging.mark_zero(page) {
            return false;
        }
        self.record_sums(page, self.zero_crc, self.zero_tag());
        self.stats.zero_pages_skipped += 1;
        true
    }

    /// Writes up to `max_pages` Staged pages that pass `filter`, lowest
    /// first, and waits for them. Returns how many pages left staging
    /// memory (written or skipped as zero).
    pub fn drain(&mut self, max_pages: u64, filter: PageFilter<'_>) -> Result<u64, PersistError> {
        if !self.sized {
            let end = (self.page_offset)(self.staging.total_pages() - 1) + PAGE_SIZE as u64;
            self.writer.reserve_len(end).map_err(PersistError::Size)?;
            self.sized = true;
        }
        let start = Instant::now();
        let runs = self.staging.take_runs(max_pages, filter);
        let mut outcome = Outcome::default();
        let mut submit_error = None;
        for run in &runs {
            if submit_error.is_some() {
                // The ring is gone: keep the rest staged.
                self.staging.fail(run);
                continue;
            }
            if let Err(e) = self.write_run(run, &mut outcome) {
                submit_error = Some(e);
            }
        }
        let drained = self.writer.drain();
        self.stats.seconds += start.elapsed().as_secs_f64();
        for c in drained.map_err(PersistError::Ring)? {
            self.finish(c.token, c.result, &mut outcome);
        }
        if let Some(e) = submit_error {
            return Err(PersistError::Ring(e));
        }
        match outcome.first_error {
            Some((run, source)) => Err(PersistError::Write {
                first_page: run.first_page,
                pages: run.pages,
                more: outcome.failures - 1,
                source,
            }),
            None => Ok(outcome.pages),
        }
    }

    /// Frees staging memory when [`Staging::stage`] says `Full`: writes the
    /// lowest staged pages, a quarter of the budget at a time (a write
    /// failure leaves them staged and is returned). Returns the pages freed.
    pub fn make_room(&mut self) -> Result<u64, PersistError> {
        let quarter = self.staging.budget_bytes() / PAGE_SIZE as u64 / 4;
        self.drain(quarter.max(1), PageFilter::All)
    }

    /// Writes everything staged and makes the file durable.
    pub fn flush_all(&mut self) -> Result<(), PersistError> {
        self.drain(u64::MAX, PageFilter::All)?;
        let start = Instant::now();
        let synced = self.writer.sync();
        self.stats.seconds += start.elapsed().as_secs_f64();
        synced.map_err(PersistError::Sync)
    }

    /// Takes the persister apart: its staging area, its writer and each
    /// page's CRC32C as the file now holds it (the image's PAGE_CRCS).
    pub fn into_parts(self) -> (Staging, UringWriter, Vec<u32>) {
        (self.staging, self.writer, self.crcs)
    }

    /// Cuts an InFlight run into chunks and submits each as soon as it is
    /// complete (CRCs of the next overlap the disk); zero pages the file
    /// already has are completed on the spot. On a ring error, the pages
    /// not handed to the ring are Staged again.
    fn write_run(&mut self, run: &Run, outcome: &mut Outcome) -> io::Result<()> {
        // Pages below it are submitted or completed.
        let mut handed_off = run.first_page;
        let result = self.write_pages(run, &mut handed_off, outcome);
        let end = run.first_page + run.pages;
        if result.is_err() && handed_off < end {
            self.staging.fail(&Run { first_page: handed_off, pages: end - handed_off });
        }
        result
    }

    fn write_pages(&mut self, run: &Run, handed_off: &mut u64, outcome: &mut Outcome) -> io::Result<()> {
        let mut chunk: Option<Chunk> = None;
        let mut chunk_end_offset = 0;
        for page in run.page_range() {
            let data = self.staging.page_data(page).expect("page in flight");
            let crc = crc32c::crc32c(data);
            let zero = crc == self.zero_crc && crate::page_is_zero(data);
            let tag = match &self.seal {
                Some((key, _, _)) if !zero => key.page_tag(data),
                _ => self.zero_tag(),
            };
            if zero && !bit(&self.nonzero_on_disk, page) {
                if let Some(c) = chunk.take() {
                    self.submit(c, handed_off, outcome)?;
                }
                self.staging.complete(&Run { first_page: page, pages: 1 });
                *handed_off = page + 1;
                self.record_sums(page, crc, tag);
                self.stats.zero_pages_skipped += 1;
                outcome.pages += 1;
                continue;
            }
            let offset = (self.page_offset)(page);
            let sum = PageSum { crc, zero, tag };
            match &mut chunk {
                Some(c) if offset == chunk_end_offset && c.run.bytes() < MAX_WRITE_BYTES => {
                    c.run.pages += 1;
                    c.sums.push(sum);
                }
                _ => {
                    if let Some(c) = chunk.take() {
                        self.submit(c, handed_off, outcome)?;
                    }
                    chunk = Some(Chunk { run: Run { first_page: page, pages: 1 }, sums: vec![sum] });
                }
            }
            chunk_end_offset = offset + PAGE_SIZE as u64;
        }
        if let Some(c) = chunk {
            self.submit(c, handed_off, outcome)?;
        }
        Ok(())
    }

    /// Submits a chunk starting at `*handed_off` and moves that past it.
    fn submit(&mut self, chunk: Chunk, handed_off: &mut u64, outcome: &mut Outcome) -> io::Result<()> {
        debug_assert_eq!(chunk.run.first_page, *handed_off);
        let data = self.staging.run_data(&chunk.run);
        let (buf, len) = (data.as_ptr(), data.len());
        let offset = (self.page_offset)(chunk.run.first_page);
        let end = chunk.run.first_page + chunk.run.pages;
        let token = match self.free_tokens.pop() {
            Some(t) => t,
            None => {
                self.chunks.push(None);
                self.chunks.len() as u64 - 1
            }
        };
        self.chunks[to_usize(token)] = Some(chunk);
        // SAFETY: the chunk's pages are InFlight: staging neither changes
        // nor unmaps them until finish() completes or fails the chunk,
        // which happens only after the writer returned the completion.
        if let Err(e) = unsafe { self.writer.submit(token, buf, len, offset) } {
            self.chunks[to_usize(token)] = None;
            self.free_tokens.push(token);
            return Err(e);
        }
        *handed_off = end;
        self.stats.writes += 1;
        // Finish what is done while the rest is in flight: releases memory
        // early and overlaps the bookkeeping with the disk.
        for c in self.writer.reap(false)? {
            self.finish(c.token, c.result, outcome);
        }
        Ok(())
    }

    fn finish(&mut self, token: u64, result: io::Result<()>, outcome: &mut Outcome) {
        let chunk = self.chunks[to_usize(token)].take().expect("completion of a chunk in flight");
        self.free_tokens.push(token);
        match result {
            Ok(()) => {
                self.staging.complete(&chunk.run);
                for (page, sum) in chunk.run.page_range().zip(&chunk.sums) {
                    self.record_sums(page, sum.crc, sum.tag);
                    set_bit(&mut self.nonzero_on_disk, page, !sum.zero);
                }
                self.stats.bytes += chunk.run.bytes() as u64;
                self.stats.pages_written += chunk.run.pages;
                outcome.pages += chunk.run.pages;
            }
            Err(e) => {
                self.staging.fail(&chunk.run);
                // Part of it may have landed: a later zero copy must be
                // written.
                chunk.run.page_range().for_each(|p| set_bit(&mut self.nonzero_on_disk, p, true));
                outcome.failures += 1;
                outcome.first_error.get_or_insert((chunk.run, e));
            }
        }
    }
}

/// Tally of one drain.
#[derive(Default)]
struct Outcome {
    pages: u64,
    failures: usize,
    first_error: Option<(Run, io::Error)>,
}

fn bit(bits: &[u64], page: u64) -> bool {
    bits[(page / 64) as usize] & (1 << (page % 64)) != 0
}

fn set_bit(bits: &mut [u64], page: u64, value: bool) {
    let (w, b) = ((page / 64) as usize, 1u64 << (page % 64));
    if value {
        bits[w] |= b;
    } else {
        bits[w] &= !b;
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::process::Command;

    use super::*;
    use crate::staging::{PageState, StageError};
    use crate::uring::WriterOptions;

    /// Two RAM blocks like the image layout: 300 pages at 2 MiB, the rest
    /// at the next 2 MiB boundary.
    const SPLIT: u64 = 300;

    fn offset(page: u64) -> u64 {
        const MIB2: u64 = 2 << 20;
        if page < SPLIT {
            MIB2 + page * PAGE_SIZE as u64
        } else {
            2 * MIB2 + (page - SPLIT) * PAGE_SIZE as u64
        }
    }

    fn content(page: u64, version: u64) -> [u8; PAGE_SIZE] {
        let mut data = [0u8; PAGE_SIZE];
        if version == 0 {
            return data;
        }
        let mut x = page.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version;
        for chunk in data.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        data
    }

    fn persister(file: &File, total: u64, budget_pages: u64) -> Persister {
        let staging = Staging::new(total, budget_pages * PAGE_SIZE as u64).unwrap();
        let writer = UringWriter::new(file, WriterOptions::default()).unwrap();
        Persister::new(staging, writer, offset)
    }

    /// Stages, making room when the budget is full.
    fn stage(p: &mut Persister, page: u64, data: &[u8; PAGE_SIZE]) {
        loop {
            match p.staging_mut().stage(page, data) {
                Ok(()) => return,
                Err(StageError::Full) => {
                    assert!(p.make_room().unwrap() > 0);
                }
                Err(StageError::InFlight) => unreachable!("drains wait for their writes"),
            }
        }
    }

    fn check_file(file: &File, p: &Persister, expected: &[u64]) {
        let mut back = [0u8; PAGE_SIZE];
        for (page, &version) in expected.iter().enumerate() {
            let page = page as u64;
            back.fill(0);
            // Pages past the end of a sparse file read as zeros.
            let _ = file.read_at(&mut back, offset(page)).unwrap();
            assert!(back == content(page, version), "page {page} differs from version {version}");
            assert_eq!(p.page_crcs()[to_usize(page)], crc32c::crc32c(&back), "crc of page {page}");
        }
    }

    #[test]
    fn staged_and_restaged_pages_land_with_their_crcs() {
        let total = 700;
        let file = tempfile::tempfile().unwrap();
        let mut p = persister(&file, total, total);
        // Version 0 is a zero page; versions go up on every re-stage.
        let mut expected = vec![0u64; to_usize(total)];
        let mut x = 1u64;
        let mut rand = |n: u64| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut version = 0;
        for round in 0..6 {
            for _ in 0..400 {
                let page = rand(total);
                // Some pages become zero again after being non-zero.
                let v = if rand(5) == 0 { 0 } else { version + 1 };
                version += 1;
                stage(&mut p, page, &content(page, v));
                expected[to_usize(page)] = v;
            }
            match round % 3 {
                0 => p.drain(rand(500), PageFilter::All).unwrap(),
                // Spare a "hot" first word of pages, as for MTD's dirty set.
                1 => p.drain(rand(500), PageFilter::Except(&[!0])).unwrap(),
                _ => 0,
            };
        }
        p.flush_all().unwrap();
        assert_eq!(p.staging().staged_pages(), 0);
        p.staging_mut().release();
        assert_eq!(p.staging().resident_bytes(), 0);
        check_file(&file, &p, &expected);
        let stats = p.stats();
        assert!(stats.zero_pages_skipped > 0 && stats.bytes > 0 && stats.seconds > 0.0, "{stats:?}");
        assert_eq!(stats.bytes, stats.pages_written * PAGE_SIZE as u64);
        eprintln!("{stats:?}");
    }

    #[test]
    fn zero_pages_are_recorded_unless_the_disk_holds_data() {
        let file = tempfile::tempfile().unwrap();
        let mut p = persister(&file, 20, 20);
        stage(&mut p, 1, &content(1, 3));
        stage(&mut p, 2, &content(2, 3));
        assert!(!p.record_zero(1), "a staged copy is pending");
        p.flush_all().unwrap();
        assert!(!p.record_zero(2), "the file holds data there");
        stage(&mut p, 2, &content(2, 0));
        assert!(p.record_zero(5));
        assert_eq!(p.staging().resident_bytes(), 2 * PAGE_SIZE as u64);
        p.flush_all().unwrap();
        let mut expected = vec![0; 20];
        expected[1] = 3;
        check_file(&file, &p, &expected);
        assert_eq!(p.stats().zero_pages_skipped, 1);
    }

    /// The ring takes a write, then entering the kernel fails (EAGAIN,
    /// EBUSY and the like): the write is queued and will still land, so
    /// its pages stay in flight until it completes; were they Staged
    /// again, a new copy could change them under the kernel's read.
    #[test]
    fn a_write_queued_before_entering_the_kernel_failed_keeps_its_pages() {
        let total = 64;
        let file = tempfile::tempfile().unwrap();
        let mut p = persister(&file, total, total);
        for page in 0..total {
            stage(&mut p, page, &content(page, 1));
        }
        p.writer.fail_next_enter(libc::EAGAIN);
        assert_eq!(p.drain(u64::MAX, PageFilter::All).unwrap(), total);
        assert!((0..total).all(|page| p.staging().state(page) == PageState::Written));
        check_file(&file, &p, &[1; 64]);
        // Newer copies of the same pages land too, with their CRCs.
        for page in 0..total {
            stage(&mut p, page, &content(page, 2));
        }
        p.flush_all().unwrap();
        check_file(&file, &p, &[2; 64]);
    }

    #[test]
    fn persister_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<Persister>();
    }

    #[test]
    fn zero_pages_stay_sparse_unless_they_replace_data() {
        let file = tempfile::tempfile().unwrap();
        let mut p = persister(&file, 1000, 1000);
        for page in 0..1000 {
            stage(&mut p, page, &content(page, 0));
        }
        p.flush_all().unwrap();
        let stats = p.stats();
        assert_eq!((stats.pages_written, stats.zero_pages_skipped), (0, 1000));
        assert_eq!(file.metadata().unwrap().len(), offset(999) + PAGE_SIZE as u64);
        assert_eq!(file.metadata().unwrap().blocks(), 0);

        stage(&mut p, 5, &content(5, 1));
        p.flush_all().unwrap();
        stage(&mut p, 5, &content(5, 0));
        stage(&mut p, 6, &content(6, 0));
        p.flush_all().unwrap();
        let stats = p.stats();
        assert_eq!((stats.pages_written, stats.zero_pages_skipped), (2, 1001));
        check_file(&file, &p, &[0; 1000]);
        assert!(file.metadata().unwrap().blocks() <= 16, "zero pages written");
    }

    #[test]
    fn runs_split_at_block_boundaries() {
        let file = tempfile::tempfile().unwrap();
        let total = 2 * SPLIT;
        let mut p = persister(&file, total, total);
        for page in 0..total {
            stage(&mut p, page, &content(page, 1));
        }
        p.flush_all().unwrap();
        let stats = p.stats();
        // 300 pages = 1.17 MiB per block: one full 1 MiB write and a rest.
        assert_eq!(stats.writes, 4);
        check_file(&file, &p, &vec![1; to_usize(total)]);
    }

    #[test]
    fn a_budget_smaller_than_the_data_is_drained_to_make_room() {
        let total = 2000;
        let budget = 50;
        let file = tempfile::tempfile().unwrap();
        let mut p = persister(&file, total, budget);
        let mut expected = vec![0u64; to_usize(total)];
        for pass in 1..=3u64 {
            for page in (0..total).filter(|pg| pg % pass == 0) {
                stage(&mut p, page, &content(page, pass));
                expected[to_usize(page)] = pass;
                assert!(p.staging().resident_bytes() <= p.staging().budget_bytes());
            }
        }
        p.flush_all().unwrap();
        assert_eq!(p.staging().peak_resident_bytes(), budget * PAGE_SIZE as u64);
        check_file(&file, &p, &expected);
    }

    #[test]
    fn failed_writes_keep_the_data_staged() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&mnt).status();
        if !mounted.is_ok_and(|s| s.success()) {
            mekha_test_skip::skip("cannot mount tmpfs");
            return;
        }
        struct Unmount<'a>(&'a std::path::Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(&mnt);
        let file = tempfile::tempfile_in(&mnt).unwrap();
        // 600 pages (2.3 MiB; the header gap is a hole) do not fit in 2 MiB.
        let total = 600;
        let mut p = persister(&file, total, total);
        for page in 0..total {
            stage(&mut p, page, &content(page, 7));
        }
        let err = p.flush_all().unwrap_err();
        let PersistError::Write { first_page, source, .. } = &err else { panic!("{err}") };
        assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert_eq!(p.staging().state(*first_page), PageState::Staged);
        let staged = p.staging().staged_pages();
        assert!(staged > 0 && staged < total, "{staged} pages still staged");
        for page in 0..total {
            if p.staging().state(page) == PageState::Staged {
                assert!(p.staging().page_data(page).unwrap() == &content(page, 7), "page {page} lost");
            }
        }
        // Room made (as if the disk were freed): the retry writes the rest.
        let grown = Command::new("mount").args(["-o", "remount,size=8m"]).arg(&mnt).status().unwrap();
        assert!(grown.success());
        p.flush_all().unwrap();
        check_file(&file, &p, &vec![7; to_usize(total)]);
    }
}
