// SPDX-License-Identifier: GPL-2.0-or-later
//! A coordinator killed on purpose at a step of its protocol, for the
//! fault-matrix test (tests/fault_matrix.rs): `MEKHA_COORDINATOR_FAULT=STEP`
//! makes `mekha` abort there, with no clean-up, as `kill -9` would. Unset
//! (always, but in that test), a step costs one environment lookup, once.

use std::sync::OnceLock;

/// The steps of checkpoint and restart where the coordinator can die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Every VM started its checkpoint.
    Prepare,
    /// The live phase runs (one poll answered).
    Live,
    /// Every VM got the stop and resume instants.
    Rendezvous,
    /// A VM has stopped at the instant (it may have resumed already,
    /// capturing or staging its image).
    Stopped,
    /// An image is being written.
    Persisting,
    /// Every image is durable; the manifest is not committed yet.
    Committing,
    /// Every VM loads its image.
    RestoreLoading,
    /// Every VM got the resume instant.
    RestoreResuming,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::Live => "live",
            Step::Rendezvous => "rendezvous",
            Step::Stopped => "stopped",
            Step::Persisting => "persisting",
            Step::Committing => "committing",
            Step::RestoreLoading => "restore-loading",
            Step::RestoreResuming => "restore-resuming",
        }
    }
}

/// Aborts the process here if `MEKHA_COORDINATOR_FAULT` names `step`.
pub fn step(step: Step) {
    static CONFIGURED: OnceLock<Option<String>> = OnceLock::new();
    let configured = CONFIGURED.get_or_init(|| std::env::var("MEKHA_COORDINATOR_FAULT").ok());
    if configured.as_deref() == Some(step.name()) {
        eprintln!("mekha: fault injected at {} (MEKHA_COORDINATOR_FAULT): aborting", step.name());
        std::process::abort();
    }
}
