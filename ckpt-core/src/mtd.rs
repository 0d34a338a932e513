// SPDX-License-Identifier: GPL-2.0-or-later
//! The MTD planner: which guest pages to copy into staging, and when the
//! live phase is over.
//!
//! MTD (memory-bound timed-multiplex data transfer, after MPLM) keeps guest
//! pages in two sets. The *non-dirty set* holds pages never written since
//! the checkpoint began and not copied yet; the *dirty set* holds every page
//! written at least once. A dirty page is *stale* while it is written since
//! its last copy (or never copied). Time runs in epochs: at each boundary
//! the caller syncs the hypervisor's dirty bitmap into [`MtdPlanner::on_sync`].
//! Between boundaries, transfer cycles multiplex up to `dirty_per_cycle`
//! stale pages (round robin over the dirty set) with up to `clean_per_cycle`
//! pages of the non-dirty set. The live phase ends when the non-dirty set is
//! empty (unless in hold mode), when the time budget is spent, or on an end
//! command; the pause then copies [`MtdPlanner::final_pages`].
//!
//! The planner does no I/O and reads no clock: the caller passes the time
//! elapsed since the checkpoint began. The expected loop:
//!
//! ```text
//! start dirty logging (clean bitmap), t0 = now
//! loop {
//!     if planner.next_epoch_due(t) { planner.on_sync(&sync_dirty_bitmap()) }
//!     if planner.live_phase_end(t, end_command_received).is_some() { break }
//!     if planner.next_cycle(&mut pages) == 0 { sleep until the epoch is due }
//!     copy `pages` into staging
//! }
//! stop the VM; planner.on_sync(&sync_dirty_bitmap()); planner.final_pages(&mut pages);
//! copy `pages`; save devices; resume the VM
//! ```
//!
//! Correctness rests on one invariant: a page whose copy may be older than
//! guest memory is stale or still in the non-dirty set. [`MtdPlanner::next_cycle`]
//! marks pages copied before the caller copies them; a guest write between
//! that mark and the copy lands after the bitmap sync that preceded it, so
//! the next sync marks the page stale again (at worst one copy too many).
//!
//! Sets are bitmaps of u64 words, one bit per global page, LSB first, the
//! layout of QEMU's dirty bitmaps. A sync costs one pass over the words; a
//! cycle costs the pages it returns plus the empty words its cursors skip,
//! which is at most one pass over the bitmap per epoch for the dirty set and
//! one pass per checkpoint for the non-dirty set.

use std::time::Duration;

use serde::Serialize;

use crate::width::to_usize;
use crate::PAGE_SIZE;

/// Tunables of one checkpoint's live phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtdParams {
    /// Stale pages of the dirty set copied per transfer cycle.
    pub dirty_per_cycle: u32,
    /// Pages of the non-dirty set copied per transfer cycle (with 0 the
    /// non-dirty set never drains: only the budget or a command ends).
    pub clean_per_cycle: u32,
    /// Time between dirty bitmap syncs (zero: sync before every cycle).
    pub epoch: Duration,
    /// The live phase never lasts longer than this, whatever the dirty rate.
    pub live_budget: Duration,
    /// Coordinated mode: once the non-dirty set is empty, keep cycling the
    /// dirty set until an end command instead of ending.
    pub hold: bool,
}

impl Default for MtdParams {
    /// MPLM's defaults: 50 dirty then 50 non-dirty pages a cycle, 3 s epochs.
    fn default() -> MtdParams {
        MtdParams {
            dirty_per_cycle: 50,
            clean_per_cycle: 50,
            epoch: Duration::from_secs(3),
            live_budget: Duration::from_secs(60),
            hold: false,
        }
    }
}

/// Why the live phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// Every page has been copied at least once (not in hold mode).
    NonDirtyEmpty,
    /// The live budget ran out; uncopied pages go to the pause.
    BudgetSpent,
    /// The caller (coordinator) asked to end.
    EndCommand,
}

/// Counters of a planner, cheap to take at any time. Set sizes are in
/// pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MtdStatus {
    /// Dirty bitmap syncs so far.
    pub epochs: u64,
    /// Transfer cycles that returned pages.
    pub cycles: u64,
    /// Pages written at least once since the checkpoint began.
    pub dirty_set: u64,
    /// Pages neither written nor copied yet.
    pub non_dirty_set: u64,
    /// Dirty pages written since their last copy.
    pub stale: u64,
    /// Page copies handed out, repeats included.
    pub pages_copied: u64,
    /// What the pause would copy if the live phase ended now.
    pub final_copy_bytes: u64,
    /// Set once [`MtdPlanner::live_phase_end`] reported an end.
    pub end: Option<EndReason>,
}

/// The MTD state of one VM's checkpoint.
#[derive(Debug, Clone)]
pub struct MtdPlanner {
    params: MtdParams,
    total_pages: u64,
    /// Pages written at least once.
    dirty: Vec<u64>,
    /// Pages neither written nor copied.
    non_dirty: Vec<u64>,
    /// Dirty pages written since their last copy (a subset of `dirty`).
    stale: Vec<u64>,
    dirty_count: u64,
    non_dirty_count: u64,
    stale_count: u64,
    /// Round-robin position in the dirty set (a page index).
    dirty_cursor: u64,
    /// Everything below it has left the non-dirty set.
    clean_cursor: u64,
    epochs: u64,
    cycles: u64,
    pages_copied: u64,
    next_sync_at: Duration,
    end: Option<EndReason>,
}

impl MtdPlanner {
    /// A planner for `total_pages` global pages, all non-dirty and uncopied.
    pub fn new(total_pages: u64, params: MtdParams) -> MtdPlanner {
        let words = bitmap_words(total_pages);
        let mut non_dirty = vec![!0u64; words];
        if let Some(last) = non_dirty.last_mut() {
            *last = last_word_mask(total_pages);
        }
        MtdPlanner {
            next_sync_at: params.epoch,
            params,
            total_pages,
            dirty: vec![0; words],
            non_dirty,
            stale: vec![0; words],
            dirty_count: 0,
            non_dirty_count: total_pages,
            stale_count: 0,
            dirty_cursor: 0,
            clean_cursor: 0,
            epochs: 0,
            cycles: 0,
            pages_copied: 0,
            end: None,
        }
    }

    /// The tunables the planner was made with.
    pub fn params(&self) -> &MtdParams {
        &self.params
    }

    /// Global pages the planner covers: all of guest RAM.
    pub fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// Words a dirty bitmap passed to [`Self::on_sync`] must have.
    pub fn bitmap_words(&self) -> usize {
        self.dirty.len()
    }

    /// The dirty set as a bitmap (pages written at least once), e.g. to
    /// write pages that are unlikely to be staged again first.
    pub fn dirty_set(&self) -> &[u64] {
        &self.dirty
    }

    /// True when an epoch is over (`elapsed` is the time since the live
    /// phase began): the caller syncs the dirty bitmap into
    /// [`Self::on_sync`] now. The next epoch starts at `elapsed`, so a late
    /// sync delays the following ones instead of bunching them.
    pub fn next_epoch_due(&mut self, elapsed: Duration) -> bool {
        let due = elapsed >= self.next_sync_at;
        if due {
            self.next_sync_at = elapsed + self.params.epoch;
        }
        due
    }

    /// Takes a synced dirty bitmap (bit set = page written since the
    /// previous sync; exactly [`Self::bitmap_words`] words; bits past the
    /// last page are ignored). Written pages join the dirty set and become
    /// stale.
    pub fn on_sync(&mut self, dirty_bits: &[u64]) {
        assert_eq!(dirty_bits.len(), self.dirty.len(), "dirty bitmap of the wrong size");
        let last = self.dirty.len().wrapping_sub(1);
        for (w, &bits) in dirty_bits.iter().enumerate() {
            if bits == 0 {
                continue;
            }
            let bits = if w == last { bits & last_word_mask(self.total_pages) } else { bits };
            self.dirty_count += u64::from((bits & !self.dirty[w]).count_ones());
            self.dirty[w] |= bits;
            self.stale_count += u64::from((bits & !self.stale[w]).count_ones());
            self.stale[w] |= bits;
            self.non_dirty_count -= u64::from((bits & self.non_dirty[w]).count_ones());
            self.non_dirty[w] &= !bits;
        }
        self.epochs += 1;
    }

    /// Plans one transfer cycle: clears `out` and fills it with up to
    /// `dirty_per_cycle` stale pages then up to `clean_per_cycle` non-dirty
    /// pages, which count as copied from now on: the caller must copy them
    /// right away. Returns how many; 0 means nothing to copy until the next
    /// sync (or, with the non-dirty set empty, that the live phase is over).
    pub fn next_cycle(&mut self, out: &mut Vec<u64>) -> usize {
        out.clear();
        let stale = take_round_robin(
            &mut self.stale,
            &mut self.dirty_cursor,
            self.total_pages,
            self.stale_count.min(u64::from(self.params.dirty_per_cycle)),
            out,
        );
        self.stale_count -= stale;
        let clean = take_round_robin(
            &mut self.non_dirty,
            &mut self.clean_cursor,
            self.total_pages,
            self.non_dirty_count.min(u64::from(self.params.clean_per_cycle)),
            out,
        );
        self.non_dirty_count -= clean;
        if !out.is_empty() {
            self.cycles += 1;
            self.pages_copied += out.len() as u64;
        }
        out.len()
    }

    /// Whether the live phase is over, and why. Checked in this order:
    /// non-dirty set empty (not in hold mode), end command, budget spent
    /// (not in hold mode either: there the coordinator that holds the live
    /// phase open owns the budget). Once it reports an end it keeps
    /// reporting the same one.
    pub fn live_phase_end(&mut self, elapsed: Duration, end_requested: bool) -> Option<EndReason> {
        if self.end.is_none() {
            self.end = if self.non_dirty_count == 0 && !self.params.hold {
                Some(EndReason::NonDirtyEmpty)
            } else if end_requested {
                Some(EndReason::EndCommand)
            } else if elapsed >= self.params.live_budget && !self.params.hold {
                Some(EndReason::BudgetSpent)
            } else {
                None
            };
        }
        self.end
    }

    /// What the pause copies, called after the last sync with the VM
    /// stopped: clears `out` and fills it, ascending, with every stale page
    /// and every page never copied. They count as copied from now on.
    pub fn final_pages(&mut self, out: &mut Vec<u64>) -> usize {
        out.clear();
        for (w, (stale, non_dirty)) in self.stale.iter_mut().zip(self.non_dirty.iter_mut()).enumerate() {
            push_bits(out, w, *stale | *non_dirty);
            *stale = 0;
            *non_dirty = 0;
        }
        self.stale_count = 0;
        self.non_dirty_count = 0;
        self.pages_copied += out.len() as u64;
        out.len()
    }

    /// The planner's counters now.
    pub fn status(&self) -> MtdStatus {
        MtdStatus {
            epochs: self.epochs,
            cycles: self.cycles,
            dirty_set: self.dirty_count,
            non_dirty_set: self.non_dirty_count,
            stale: self.stale_count,
            pages_copied: self.pages_copied,
            // Stale pages are dirty, so the two sets never overlap.
            final_copy_bytes: (self.stale_count + self.non_dirty_count) * PAGE_SIZE as u64,
            end: self.end,
        }
    }
}

fn bitmap_words(pages: u64) -> usize {
    to_usize(pages.div_ceil(64))
}

/// Valid bits of the last word of a bitmap of `pages` bits.
fn last_word_mask(pages: u64) -> u64 {
    match pages % 64 {
        0 => !0,
        rest => (1 << rest) - 1,
    }
}

fn push_bits(out: &mut Vec<u64>, word_index: usize, mut word: u64) {
    while word != 0 {
        out.push(word_index as u64 * 64 + u64::from(word.trailing_zeros()));
        word &= word - 1;
    }
}

/// Clears and appends to `out` the first `want` set bits at or after
/// `*cursor`, wrapping around, and leaves the cursor after the last one.
/// `want` must not exceed the number of set bits, which bounds the scan to
/// one pass.
fn take_round_robin(bits: &mut [u64], cursor: &mut u64, total: u64, want: u64, out: &mut Vec<u64>) -> u64 {
    let mut taken = 0;
    let mut pos = *cursor;
    // One pass plus the start word again finds `want` bits; more would
    // mean the counters and the bitmap disagree.
    let mut words_left = bits.len() + 1;
    while taken < want {
        assert!(words_left > 0, "MTD counters out of step with the bitmap");
        words_left -= 1;
        let w = (pos / 64) as usize;
        let mut word = bits[w] & (!0u64 << (pos % 64));
        while word != 0 && taken < want {
            let bit = word.trailing_zeros();
            word &= word - 1;
            bits[w] &= !(1u64 << bit);
            let page = w as u64 * 64 + u64::from(bit);
            out.push(page);
            pos = page + 1;
            taken += 1;
        }
        if taken < want {
            pos = (w as u64 + 1) * 64;
        }
        if pos >= total {
            pos = 0;
        }
    }
    *cursor = pos;
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn params(dirty: u32, clean: u32) -> MtdParams {
        MtdParams { dirty_per_cycle: dirty, clean_per_cycle: clean, ..MtdParams::default() }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A guest whose memory is one version number per page, the dirty
    /// bitmap the hypervisor keeps for it, and the copy MTD makes of it.
    struct Sim {
        memory: Vec<u64>,
        copy: Vec<Option<u64>>,
        bitmap: Vec<u64>,
        version: u64,
    }

    impl Sim {
        fn new(pages: u64) -> Sim {
            Sim {
                memory: vec![0; to_usize(pages)],
                copy: vec![None; to_usize(pages)],
                bitmap: vec![0; bitmap_words(pages)],
                version: 0,
            }
        }

        fn write(&mut self, page: u64) {
            self.version += 1;
            self.memory[to_usize(page)] = self.version;
            self.bitmap[to_usize(page) / 64] |= 1 << (page % 64);
        }

        fn sync(&mut self, planner: &mut MtdPlanner) {
            planner.on_sync(&self.bitmap);
            self.bitmap.fill(0);
        }

        fn copy(&mut self, pages: &[u64]) {
            for &p in pages {
                self.copy[to_usize(p)] = Some(self.memory[to_usize(p)]);
            }
        }

        /// Pages whose copy is missing or older than memory.
        fn behind(&self) -> Vec<u64> {
            (0..self.memory.len()).filter(|&p| self.copy[p] != Some(self.memory[p])).map(|p| p as u64).collect()
        }
    }

    #[test]
    fn all_clean_guest_ends_after_one_pass_with_nothing_stale() {
        let total = 1000;
        let mut planner = MtdPlanner::new(total, params(50, 50));
        let mut sim = Sim::new(total);
        let mut pages = Vec::new();
        let mut cycles = 0;
        let mut seen = vec![false; to_usize(total)];
        while planner.live_phase_end(secs(1), false).is_none() {
            let n = planner.next_cycle(&mut pages);
            assert!(n > 0 && n <= 50, "cycle of {n} pages");
            for &p in &pages {
                assert!(!seen[to_usize(p)], "page {p} copied twice");
                seen[to_usize(p)] = true;
            }
            sim.copy(&pages);
            cycles += 1;
        }
        assert_eq!(cycles, total.div_ceil(50));
        assert_eq!(planner.live_phase_end(secs(1), false), Some(EndReason::NonDirtyEmpty));
        sim.sync(&mut planner);
        assert_eq!(planner.status().final_copy_bytes, 0);
        assert_eq!(planner.final_pages(&mut pages), 0);
        assert!(sim.behind().is_empty());
        let status = planner.status();
        assert_eq!((status.pages_copied, status.cycles, status.epochs), (total, total.div_ceil(50), 1));
    }

    #[test]
    fn hot_set_written_every_epoch_is_exactly_what_the_pause_copies() {
        let total = 4096 + 17;
        let hot: Vec<u64> = (0..total).filter(|p| p % 7 == 3).collect();
        let mut planner = MtdPlanner::new(total, params(50, 50));
        let mut sim = Sim::new(total);
        let mut pages = Vec::new();
        let mut t = Duration::ZERO;
        let mut epochs_since_write = 1;
        loop {
            // The guest rewrites its hot set once per epoch, mid-epoch.
            if epochs_since_write == 1 {
                hot.iter().for_each(|&p| sim.write(p));
                epochs_since_write = 0;
            }
            if planner.next_epoch_due(t) {
                sim.sync(&mut planner);
                epochs_since_write += 1;
            }
            if planner.live_phase_end(t, false).is_some() {
                break;
            }
            planner.next_cycle(&mut pages);
            sim.copy(&pages);
            t += Duration::from_millis(100);
        }
        assert_eq!(planner.live_phase_end(t, false), Some(EndReason::NonDirtyEmpty));
        assert_eq!(planner.status().dirty_set, hot.len() as u64);
        hot.iter().for_each(|&p| sim.write(p));
        sim.sync(&mut planner);
        assert_eq!(planner.status().final_copy_bytes, (hot.len() * PAGE_SIZE) as u64);
        planner.final_pages(&mut pages);
        assert_eq!(pages, hot);
        sim.copy(&pages);
        assert!(sim.behind().is_empty());
    }

    #[test]
    fn budget_ends_the_live_phase_and_uncopied_pages_go_to_the_pause() {
        let total = 10_000;
        let budget = secs(10);
        let p = MtdParams { live_budget: budget, ..params(50, 50) };
        let mut planner = MtdPlanner::new(total, p);
        let mut sim = Sim::new(total);
        let mut rng = Rng(7);
        let mut pages = Vec::new();
        let mut t = Duration::ZERO;
        // 100 ms a cycle: 100 cycles cannot copy 10000 pages.
        loop {
            for _ in 0..30 {
                sim.write(rng.below(total));
            }
            if planner.next_epoch_due(t) {
                sim.sync(&mut planner);
            }
            if let Some(end) = planner.live_phase_end(t, false) {
                assert_eq!(end, EndReason::BudgetSpent);
                break;
            }
            planner.next_cycle(&mut pages);
            sim.copy(&pages);
            t += Duration::from_millis(100);
        }
        assert_eq!(t, budget);
        let uncopied = sim.copy.iter().filter(|c| c.is_none()).count();
        assert!(uncopied > 2000, "{uncopied} pages uncopied");
        sim.sync(&mut planner);
        let behind = sim.behind();
        planner.final_pages(&mut pages);
        assert!(pages.len() >= uncopied);
        assert!(behind.iter().all(|p| pages.binary_search(p).is_ok()));
        sim.copy(&pages);
        assert!(sim.behind().is_empty());
    }

    #[test]
    fn hold_mode_cycles_the_dirty_set_until_the_end_command() {
        let total = 640;
        // The budget does not end a held live phase: its coordinator does.
        let p = MtdParams { hold: true, live_budget: secs(1), ..params(10, 50) };
        let mut planner = MtdPlanner::new(total, p);
        let mut sim = Sim::new(total);
        let mut pages = Vec::new();
        let mut t = Duration::ZERO;
        for step in 0..2000u64 {
            sim.write(step % 32);
            if planner.next_epoch_due(t) {
                sim.sync(&mut planner);
            }
            assert_eq!(planner.live_phase_end(t, false), None, "ended at step {step}");
            planner.next_cycle(&mut pages);
            sim.copy(&pages);
            t += Duration::from_millis(100);
        }
        let status = planner.status();
        assert_eq!(status.non_dirty_set, 0);
        assert!(status.pages_copied > total + 100, "dirty set not cycled: {status:?}");
        assert_eq!(planner.live_phase_end(t, true), Some(EndReason::EndCommand));
        // Sticky: the reason does not change afterwards.
        assert_eq!(planner.live_phase_end(t + secs(2000), false), Some(EndReason::EndCommand));
    }

    #[test]
    fn dirty_share_is_round_robin_and_bounded() {
        let total = 200;
        let mut planner = MtdPlanner::new(total, params(3, 1000));
        let mut pages = Vec::new();
        planner.next_cycle(&mut pages);
        assert_eq!(pages.len(), 200);
        let mut bits = vec![0u64; 4];
        for p in [5u64, 70, 130, 199] {
            bits[to_usize(p) / 64] |= 1 << (p % 64);
        }
        // Bits past the last page are ignored.
        bits[3] |= 1 << 63;
        planner.on_sync(&bits);
        assert_eq!(planner.status().stale, 4);
        planner.next_cycle(&mut pages);
        assert_eq!(pages, [5, 70, 130]);
        planner.on_sync(&bits);
        planner.next_cycle(&mut pages);
        assert_eq!(pages, [199, 5, 70], "round robin resumes after the last page copied");
        planner.next_cycle(&mut pages);
        assert_eq!(pages, [130]);
        assert_eq!(planner.next_cycle(&mut pages), 0);
    }

    #[test]
    fn epochs_start_when_they_are_found_due() {
        let mut planner = MtdPlanner::new(64, MtdParams::default());
        assert!(!planner.next_epoch_due(Duration::from_millis(2999)));
        assert!(planner.next_epoch_due(Duration::from_millis(3500)));
        assert!(!planner.next_epoch_due(Duration::from_millis(3500)), "due once per epoch");
        assert!(!planner.next_epoch_due(Duration::from_millis(6499)));
        assert!(planner.next_epoch_due(Duration::from_millis(6500)));
    }

    #[test]
    fn zero_clean_share_ends_only_by_budget_or_command() {
        let p = MtdParams { live_budget: secs(5), ..params(10, 0) };
        let mut planner = MtdPlanner::new(100, p);
        let mut pages = Vec::new();
        assert_eq!(planner.next_cycle(&mut pages), 0);
        assert_eq!(planner.live_phase_end(secs(4), false), None);
        assert_eq!(planner.live_phase_end(secs(5), false), Some(EndReason::BudgetSpent));
        assert_eq!(planner.final_pages(&mut pages), 100);
    }

    /// The property that matters: whatever the writes and whenever the
    /// syncs, copying the final pages makes the copy equal guest memory,
    /// and the pause copies no page that was neither written nor left
    /// uncopied.
    #[test]
    fn copy_equals_memory_after_final_pages() {
        for seed in 0..400 {
            let mut rng = Rng(seed);
            let total = 1 + rng.below(700);
            let p = MtdParams {
                dirty_per_cycle: u32::try_from(rng.below(20)).unwrap(),
                clean_per_cycle: u32::try_from(rng.below(20)).unwrap(),
                epoch: Duration::from_millis(1 + rng.below(50)),
                live_budget: Duration::from_millis(rng.below(3000)),
                hold: rng.below(2) == 0,
            };
            let mut planner = MtdPlanner::new(total, p);
            let mut sim = Sim::new(total);
            let mut written = vec![false; to_usize(total)];
            let hot = 1 + rng.below(total);
            let write_rate = rng.below(10);
            let mut pages = Vec::new();
            let mut t = Duration::ZERO;
            loop {
                let mut write = |sim: &mut Sim, rng: &mut Rng| {
                    // Mostly a hot region, sometimes anywhere.
                    let page = if rng.below(4) == 0 { rng.below(total) } else { rng.below(hot) };
                    sim.write(page);
                    written[to_usize(page)] = true;
                };
                for _ in 0..rng.below(write_rate + 1) {
                    write(&mut sim, &mut rng);
                }
                // Syncs come late or early, not only at epoch boundaries.
                if planner.next_epoch_due(t) || rng.below(20) == 0 {
                    sim.sync(&mut planner);
                }
                let end_requested = rng.below(500) == 0;
                if planner.live_phase_end(t, end_requested).is_some() {
                    break;
                }
                planner.next_cycle(&mut pages);
                // The guest runs while the cycle's pages are being copied.
                let split = to_usize(rng.below(pages.len() as u64 + 1));
                sim.copy(&pages[..split]);
                for _ in 0..rng.below(3) {
                    write(&mut sim, &mut rng);
                }
                sim.copy(&pages[split..]);
                t += Duration::from_millis(rng.below(5));
            }
            // Writes before the VM stops, then the last sync.
            for _ in 0..rng.below(20) {
                let page = rng.below(total);
                sim.write(page);
                written[to_usize(page)] = true;
            }
            sim.sync(&mut planner);
            let behind = sim.behind();
            let status = planner.status();
            planner.final_pages(&mut pages);
            assert_eq!(status.final_copy_bytes, (pages.len() * PAGE_SIZE) as u64, "seed {seed}");
            assert!(pages.windows(2).all(|w| w[0] < w[1]), "seed {seed}: not ascending");
            for p in &behind {
                assert!(pages.binary_search(p).is_ok(), "seed {seed}: page {p} behind but not in final pages");
            }
            for &p in &pages {
                let i = to_usize(p);
                assert!(written[i] || sim.copy[i].is_none(), "seed {seed}: page {p} copied again needlessly");
            }
            sim.copy(&pages);
            assert!(sim.behind().is_empty(), "seed {seed}");
            assert_eq!(planner.status().final_copy_bytes, 0);
        }
    }
}
