// SPDX-License-Identifier: GPL-2.0-or-later
//! The MTD planner's hot loops at 512 MiB and 2 GiB of guest RAM: the
//! reference workload rewrites 1/8 of memory (64 MiB of 512 MiB) every
//! epoch.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mekha_ckpt_core::mtd::{MtdParams, MtdPlanner};
use mekha_ckpt_core::width::to_usize;

const SIZES: [(&str, u64); 2] = [("512MiB", 131_072), ("2GiB", 524_288)];

/// A dirty bitmap: a contiguous hot eighth plus every 97th page.
fn hot_bitmap(pages: u64) -> Vec<u64> {
    let mut bits = vec![0u64; to_usize(pages.div_ceil(64))];
    for page in (pages / 4..pages / 4 + pages / 8).chain((0..pages).step_by(97)) {
        bits[(page / 64) as usize] |= 1 << (page % 64);
    }
    bits
}

fn planner(pages: u64, hold: bool) -> MtdPlanner {
    MtdPlanner::new(pages, MtdParams { hold, ..MtdParams::default() })
}

fn benches(c: &mut Criterion) {
    for (name, pages) in SIZES {
        let bits = hot_bitmap(pages);
        let mut group = c.benchmark_group(format!("mtd/{name}"));
        group.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));

        group.throughput(Throughput::Elements(pages));
        group.bench_function("on_sync", |b| {
            let mut p = planner(pages, true);
            b.iter(|| p.on_sync(black_box(&bits)));
        });

        // Steady state of the dirty-only phase: cycles over a stale hot
        // set, re-synced whenever it runs dry.
        group.throughput(Throughput::Elements(50));
        group.bench_function("next_cycle_dirty", |b| {
            let mut p = planner(pages, true);
            let mut out = Vec::new();
            while p.next_cycle(&mut out) > 0 {}
            b.iter(|| {
                if p.next_cycle(&mut out) == 0 {
                    p.on_sync(&bits);
                }
                black_box(out.len())
            });
        });

        // A whole live phase, planner work only: cycles until the
        // non-dirty set is empty, a sync every 2000 cycles.
        group.throughput(Throughput::Elements(pages));
        group.bench_function("live_phase", |b| {
            b.iter_batched(
                || (planner(pages, false), Vec::with_capacity(100)),
                |(mut p, mut out)| {
                    let mut until_sync = 2000;
                    while p.live_phase_end(Duration::ZERO, false).is_none() {
                        until_sync -= 1;
                        if until_sync == 0 {
                            p.on_sync(&bits);
                            until_sync = 2000;
                        }
                        p.next_cycle(&mut out);
                    }
                    p.on_sync(&bits);
                    p.final_pages(&mut out);
                    black_box(out.len())
                },
                BatchSize::LargeInput,
            );
        });
        group.finish();
    }
}

criterion_group!(mtd, benches);
criterion_main!(mtd);
