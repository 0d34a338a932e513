// SPDX-License-Identifier: GPL-2.0-or-later
//! Faults injected on purpose, for the tests that prove a bug or a hung
//! disk at any step of a checkpoint or restore leaves no VM stopped and
//! nothing stuck.
//!
//! `MEKHA_FAULT=POINT` in QEMU's environment makes the library panic the
//! first time it reaches `POINT`, as a bug there would;
//! `MEKHA_FAULT=POINT:stall` makes that thread block there for good, as
//! one waiting on a dead disk would. Unset (always, but in those tests), a
//! point costs one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    /// A checkpoint's thread, the VM stopped and the BQL held.
    CheckpointStopped,
    /// A checkpoint's thread, the VM running again, the image being written.
    CheckpointPersisting,
    /// A restore's thread, reading and verifying guest RAM.
    RestoreLoading,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::CheckpointStopped => "checkpoint-stopped",
            Point::CheckpointPersisting => "checkpoint-persisting",
            Point::RestoreLoading => "restore-loading",
        }
    }
}

static FIRED: AtomicBool = AtomicBool::new(false);

/// Panics or stalls here if `MEKHA_FAULT` names `point` and has not fired
/// yet.
pub(crate) fn point(point: Point) {
    static CONFIGURED: OnceLock<Option<String>> = OnceLock::new();
    let Some(configured) = CONFIGURED.get_or_init(|| std::env::var("MEKHA_FAULT").ok()) else { return };
    let (name, stall) = match configured.strip_suffix(":stall") {
        Some(name) => (name, true),
        None => (configured.as_str(), false),
    };
    if name != point.name() || FIRED.swap(true, Ordering::Relaxed) {
        return;
    }
    if !stall {
        panic!("fault injected at {} (MEKHA_FAULT)", point.name());
    }
    crate::qemu::report::warn(&format!("fault injected at {}: this thread stalls (MEKHA_FAULT)", point.name()));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
