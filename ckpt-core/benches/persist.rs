// SPDX-License-Identifier: GPL-2.0-or-later
//! Persist throughput (staged pages drained with CRCs through io_uring,
//! then fdatasync) against a `dd oflag=direct bs=1M`-like loop of O_DIRECT
//! pwrites on the same disk, in the same run; and the same drain with each
//! page also tagged under an image key (`--key-file`). Files go to `MEKHA_BENCH_DIR`,
//! default the system temp dir.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mekha_ckpt_core::image::ImageKey;
use mekha_ckpt_core::persist::Persister;
use mekha_ckpt_core::staging::Staging;
use mekha_ckpt_core::uring::{UringWriter, WriterOptions};
use mekha_ckpt_core::PAGE_SIZE;

/// 128 MiB per run.
const PAGES: u64 = 32_768;
const BYTES: u64 = PAGES * PAGE_SIZE as u64;
const DD_BLOCK: usize = 1 << 20;
/// Where RAM starts in an image (after the header).
const RAM_START: u64 = 2 << 20;

fn dir() -> PathBuf {
    std::env::var_os("MEKHA_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

fn page_content(page: u64) -> [u8; PAGE_SIZE] {
    let mut data = [0u8; PAGE_SIZE];
    for (i, chunk) in data.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(page << 16 | i as u64 | 1).to_le_bytes());
    }
    data
}

/// Time of one flush_all of PAGES freshly staged pages into a new file,
/// each page tagged under `key` if given.
fn persist_once(key: Option<&ImageKey>) -> (Duration, bool) {
    let file = tempfile::tempfile_in(dir()).unwrap();
    let mut staging = Staging::new(PAGES, BYTES).unwrap();
    for page in 0..PAGES {
        staging.stage(page, &page_content(page)).unwrap();
    }
    let writer = UringWriter::new(&file, WriterOptions::default()).unwrap();
    let mut persister = Persister::new(staging, writer, |p| RAM_START + p * PAGE_SIZE as u64);
    if let Some(key) = key {
        persister.set_key(key);
    }
    let start = Instant::now();
    persister.flush_all().unwrap();
    let elapsed = start.elapsed();
    let stats = persister.stats();
    assert_eq!(stats.bytes, BYTES);
    (elapsed, stats.direct_io)
}

/// A 1 MiB-aligned buffer of the same kind of data.
struct DdBuffer(*mut u8);

impl DdBuffer {
    fn new() -> DdBuffer {
        let layout = std::alloc::Layout::from_size_align(DD_BLOCK, PAGE_SIZE).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null());
        for page in 0..DD_BLOCK / PAGE_SIZE {
            // SAFETY: inside the allocation.
            unsafe {
                std::ptr::copy_nonoverlapping(page_content(page as u64).as_ptr(), ptr.add(page * PAGE_SIZE), PAGE_SIZE)
            };
        }
        DdBuffer(ptr)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: initialised above.
        unsafe { std::slice::from_raw_parts(self.0, DD_BLOCK) }
    }
}

impl Drop for DdBuffer {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(DD_BLOCK, PAGE_SIZE).unwrap();
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.0, layout) };
    }
}

/// Time of the same bytes written by sequential 1 MiB O_DIRECT pwrites and
/// an fdatasync, like `dd oflag=direct bs=1M conv=fdatasync`.
fn dd_direct_once(buf: &DdBuffer) -> Duration {
    let path = tempfile::NamedTempFile::new_in(dir()).unwrap().into_temp_path();
    let file: File = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&path).unwrap();
    // Like the persister, which sizes the image before writing pages.
    file.set_len(RAM_START + BYTES).unwrap();
    let start = Instant::now();
    for i in 0..BYTES / DD_BLOCK as u64 {
        file.write_all_at(buf.bytes(), RAM_START + i * DD_BLOCK as u64).unwrap();
    }
    file.sync_data().unwrap();
    start.elapsed()
}

fn mbps(d: Duration) -> f64 {
    BYTES as f64 / d.as_secs_f64() / 1e6
}

fn ratio() {
    let buf = DdBuffer::new();
    let key = ImageKey::from_bytes(&[7; 32]);
    let (mut dd, mut persist, mut sealed) = (Vec::new(), Vec::new(), Vec::new());
    let mut direct = false;
    // Interleaved, so that all see the same disk weather.
    for _ in 0..5 {
        dd.push(dd_direct_once(&buf));
        let (t, d) = persist_once(None);
        persist.push(t);
        direct = d;
        sealed.push(persist_once(Some(&key)).0);
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        mbps(v[v.len() / 2])
    };
    let (dd, persist, sealed) = (median(dd), median(persist), median(sealed));
    println!("persist vs O_DIRECT pwrite loop, 128 MiB to {} (median of 5):", dir().display());
    println!(
        "  dd-like O_DIRECT 1 MiB: {dd:.0} MB/s, persist (O_DIRECT {direct}): {persist:.0} MB/s, persist/dd = {:.2}",
        persist / dd
    );
    println!("  persist sealed under a key: {sealed:.0} MB/s, sealed/persist = {:.2}", sealed / persist);
}

fn benches(c: &mut Criterion) {
    // Only under `cargo bench`, not when `cargo test` smoke-runs benches.
    if std::env::args().any(|a| a == "--bench") {
        ratio();
    }
    let buf = DdBuffer::new();
    let mut group = c.benchmark_group("persist");
    group.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Bytes(BYTES));
    group.bench_function("flush_all_128MiB", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| black_box(persist_once(None)).0).sum());
    });
    let key = ImageKey::from_bytes(&[7; 32]);
    group.bench_function("flush_all_128MiB_sealed", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| black_box(persist_once(Some(&key))).0).sum());
    });
    group.bench_function("dd_direct_128MiB", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| dd_direct_once(&buf)).sum());
    });
    group.finish();
}

criterion_group!(persist, benches);
criterion_main!(persist);
