// SPDX-License-Identifier: GPL-2.0-or-later
//! `Staging::stage` against a plain memcpy of the same pages, in the same
//! run: warm (destination resident: a re-staged hot page) and cold (first
//! touch: page faults included, as for a page staged the first time).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mekha_ckpt_core::staging::Staging;
use mekha_ckpt_core::PAGE_SIZE;

/// 64 MiB: well past the caches, small enough for a quick run.
const PAGES: usize = 16_384;
const BYTES: usize = PAGES * PAGE_SIZE;

#[expect(clippy::cast_possible_truncation, reason = "a fill pattern: the low byte")]
fn source() -> Vec<u8> {
    (0..BYTES).map(|i| (i * 7 + i / 4096) as u8).collect()
}

fn stage_all(staging: &mut Staging, src: &[u8]) {
    for (page, data) in src.chunks_exact(PAGE_SIZE).enumerate() {
        staging.stage(page as u64, data.try_into().unwrap()).unwrap();
    }
}

fn memcpy_all(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.chunks_exact_mut(PAGE_SIZE).zip(src.chunks_exact(PAGE_SIZE)) {
        d.copy_from_slice(s);
    }
}

fn fresh_staging() -> Staging {
    Staging::new(PAGES as u64, BYTES as u64).unwrap()
}

/// Best of `runs` timings of `f` after `setup`, in GB/s.
fn best_gbps<S>(runs: usize, mut setup: impl FnMut() -> S, mut f: impl FnMut(&mut S)) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let mut state = setup();
        let start = Instant::now();
        f(&mut state);
        best = best.min(start.elapsed());
        black_box(&state);
    }
    BYTES as f64 / best.as_secs_f64() / 1e9
}

fn ratios(src: &[u8]) {
    let mut warm_dst = vec![1u8; BYTES];
    let memcpy_warm = best_gbps(
        10,
        || (),
        |_| {
            memcpy_all(black_box(&mut warm_dst), black_box(src));
            black_box(&warm_dst);
        },
    );
    let mut warm = fresh_staging();
    stage_all(&mut warm, src);
    let stage_warm = best_gbps(10, || (), |_| stage_all(black_box(&mut warm), black_box(src)));
    let memcpy_cold = best_gbps(5, || vec![0u8; BYTES], |dst| memcpy_all(dst, src));
    let stage_cold = best_gbps(5, fresh_staging, |s| stage_all(s, src));
    println!("stage vs memcpy, 64 MiB in 4 KiB pages (best of several):");
    println!(
        "  warm: memcpy {memcpy_warm:.2} GB/s, stage {stage_warm:.2} GB/s, stage/memcpy = {:.2}",
        stage_warm / memcpy_warm
    );
    println!(
        "  cold: memcpy {memcpy_cold:.2} GB/s, stage {stage_cold:.2} GB/s, stage/memcpy = {:.2}",
        stage_cold / memcpy_cold
    );
}

fn benches(c: &mut Criterion) {
    let src = source();
    // Only under `cargo bench`, not when `cargo test` smoke-runs benches.
    if std::env::args().any(|a| a == "--bench") {
        ratios(&src);
    }

    let mut group = c.benchmark_group("staging");
    group.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Bytes(BYTES as u64));
    group.bench_function("memcpy_warm", |b| {
        let mut dst = vec![1u8; BYTES];
        b.iter(|| memcpy_all(black_box(&mut dst), &src));
    });
    group.bench_function("stage_warm", |b| {
        let mut staging = fresh_staging();
        b.iter(|| stage_all(black_box(&mut staging), &src));
    });
    group.bench_function("memcpy_cold", |b| {
        b.iter_batched(
            || vec![0u8; BYTES],
            |mut dst| {
                memcpy_all(&mut dst, &src);
                dst
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("stage_cold", |b| {
        b.iter_batched(
            fresh_staging,
            |mut staging| {
                stage_all(&mut staging, &src);
                staging
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(staging, benches);
criterion_main!(staging);
