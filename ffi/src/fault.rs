// SPDX-License-Identifier: GPL-2.0-or-later
//! Faults injected on purpose, for the tests that prove a bug at any step
//! of a checkpoint or restore leaves no VM stopped and nothing stuck.
//!
//! `MEKHA_FAULT=POINT` in QEMU's environment makes the library panic the
//! first time it reaches `POINT`, as a bug there would. Unset (always, but
//! in those tests), a point costs one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    /// A checkpoint's thread, the VM stopped and the BQL held.
    CheckpointStopped,
    /// A checkpoint's thread, the VM running again, the image being written.
    CheckpointPersisting,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::CheckpointStopped => "checkpoint-stopped",
            Point::CheckpointPersisting => "checkpoint-persisting",
        }
    }
}

static FIRED: AtomicBool = AtomicBool::new(false);

/// Panics here if `MEKHA_FAULT` names `point` and has not fired yet.
pub(crate) fn point(point: Point) {
    static CONFIGURED: OnceLock<Option<String>> = OnceLock::new();
    let configured = CONFIGURED.get_or_init(|| std::env::var("MEKHA_FAULT").ok());
    if configured.as_deref() == Some(point.name()) && !FIRED.swap(true, Ordering::Relaxed) {
        panic!("fault injected at {} (MEKHA_FAULT)", point.name());
    }
}
