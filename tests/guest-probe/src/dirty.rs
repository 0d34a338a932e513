// SPDX-License-Identifier: GPL-2.0-or-later
//! The memory dirtier: one u64 into every 4 KiB page of a set, pass after
//! pass, paced to a rate.
//!
//! Pass p writes `tag(p, page)` into each page and first checks that the
//! page still holds what pass p - 1 wrote (zero before pass 0): a
//! difference means memory was not preserved (say across a restore) and is
//! reported as a `dirty_anomaly` event (the first few; all are counted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::output::Output;

const PAGE: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE / 8;
/// Pages between two looks at the clock.
const BATCH: u64 = 64;
/// `dirty_anomaly` events printed at most; later mismatches are counted.
const MAX_ANOMALY_EVENTS: u64 = 16;

/// What the dirtier writes into `page` on `pass` (never 0, so a page that
/// lost its contents is told apart from any pass).
pub fn tag(pass: u64, page: u64) -> u64 {
    (pass.wrapping_add(1) << 32) | (page & 0xffff_ffff)
}

#[derive(Default)]
pub struct Stats {
    pub passes: AtomicU64,
    pub pages_written: AtomicU64,
    pub mismatches: AtomicU64,
}

/// How long writing `pages` pages takes at `rate_mib_s` MiB/s (> 0).
fn due_time(rate_mib_s: u64, pages: u64) -> Duration {
    let pages_per_s = rate_mib_s as f64 * (1024.0 * 1024.0 / PAGE as f64);
    Duration::from_secs_f64(pages as f64 / pages_per_s)
}

/// Dirty `mem_mib` MiB forever, one `dirty` event per second.
pub fn run(mem_mib: u64, rate_mib_s: u64, out: &Output, stats: &Arc<Stats>) {
    let pages = usize::try_from(mem_mib).expect("a 64-bit guest") * (1024 * 1024 / PAGE);
    // calloc'ed: untouched pages cost nothing until the first pass.
    let mut mem: Vec<u64> = vec![0; pages * WORDS_PER_PAGE];
    let base = mem.as_mut_ptr();

    // Pacing baseline (reset when far behind, e.g. after the VM was
    // paused, so that the dirtier does not then run flat out to catch up).
    let mut pace_start = Instant::now();
    let mut pace_pages = 0u64;
    // Report window.
    let mut report_start = Instant::now();
    let mut report_pages = 0u64;

    let mut written = 0u64;
    let mut pass = 0u64;
    loop {
        for page in 0..pages {
            // SAFETY: page * WORDS_PER_PAGE < mem.len(); volatile so that the
            // stores are not elided (nothing reads them in this program).
            let word = unsafe { base.add(page * WORDS_PER_PAGE) };
            let expect = if pass == 0 { 0 } else { tag(pass - 1, page as u64) };
            // SAFETY: as above.
            let found = unsafe { word.read_volatile() };
            if found != expect {
                let n = stats.mismatches.fetch_add(1, Ordering::Relaxed);
                if n < MAX_ANOMALY_EVENTS {
                    out.emit(
                        "dirty_anomaly",
                        json!({
                            "pass": pass,
                            "page": page,
                            "expected": format!("{expect:#x}"),
                            "found": format!("{found:#x}"),
                        }),
                    );
                }
            }
            // SAFETY: as above.
            unsafe { word.write_volatile(tag(pass, page as u64)) };
            written += 1;

            if written.is_multiple_of(BATCH) {
                stats.pages_written.store(written, Ordering::Relaxed);
                if rate_mib_s > 0 {
                    let due = due_time(rate_mib_s, written - pace_pages);
                    let elapsed = pace_start.elapsed();
                    if elapsed < due {
                        std::thread::sleep(due - elapsed);
                    } else if elapsed > due + Duration::from_secs(1) {
                        // Far behind: restart the window instead of bursting.
                        pace_start = Instant::now();
                        pace_pages = written;
                    }
                }
                let dt = report_start.elapsed();
                if dt >= Duration::from_secs(1) {
                    let mib = (written - report_pages) as f64 * PAGE as f64 / (1024.0 * 1024.0);
                    let mib_per_s = (mib / dt.as_secs_f64() * 100.0).round() / 100.0;
                    out.emit(
                        "dirty",
                        json!({
                            "passes": stats.passes.load(Ordering::Relaxed),
                            "pages_written": written,
                            "mib_per_s": mib_per_s,
                            "mismatches": stats.mismatches.load(Ordering::Relaxed),
                        }),
                    );
                    report_start = Instant::now();
                    report_pages = written;
                }
            }
        }
        stats.pages_written.store(written, Ordering::Relaxed);
        pass += 1;
        stats.passes.store(pass, Ordering::Relaxed);
        if pages == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_between_passes_and_are_never_zero() {
        assert_ne!(tag(0, 0), 0);
        assert_ne!(tag(0, 5), tag(1, 5));
        assert_ne!(tag(3, 5), tag(3, 6));
    }

    #[test]
    fn pacing() {
        // 1 MiB/s = 256 pages/s.
        assert_eq!(due_time(1, 256), Duration::from_secs(1));
        assert_eq!(due_time(4, 256), Duration::from_millis(250));
    }
}
