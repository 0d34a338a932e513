// SPDX-License-Identifier: GPL-2.0-or-later
//! A coordinator stopped on purpose at a step of its protocol, for the
//! fault-matrix tests (tests/fault_matrix*.rs). `MEKHA_COORDINATOR_FAULT`:
//! - `STEP` makes `mekha` abort there, with no clean-up, as `kill -9`
//!   would;
//! - `STEP:stop` makes it stop itself there (SIGSTOP), the first time it
//!   gets there, so that the test can fail another part of the cluster (a
//!   QEMU, an agent, a connection) at that step and then let it go on
//!   (SIGCONT).
//!
//! Unset (always, but in those tests), a step costs one environment
//! lookup, once.

use std::sync::atomic::{AtomicBool, Ordering};
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

/// What to do at the configured step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Stop,
}

/// `STEP` or `STEP:ACTION`; an action it does not know is a mistake of
/// the test, said at once rather than never firing.
fn parse(value: &str) -> (&str, Action) {
    match value.split_once(':') {
        None => (value, Action::Abort),
        Some((step, "stop")) => (step, Action::Stop),
        Some((_, other)) => panic!("MEKHA_COORDINATOR_FAULT: unknown action {other:?} (known: stop)"),
    }
}

/// Aborts or stops the process here if `MEKHA_COORDINATOR_FAULT` names
/// `step`.
pub fn step(step: Step) {
    static CONFIGURED: OnceLock<Option<String>> = OnceLock::new();
    static STOPPED: AtomicBool = AtomicBool::new(false);
    let configured = CONFIGURED.get_or_init(|| std::env::var("MEKHA_COORDINATOR_FAULT").ok());
    let Some((name, action)) = configured.as_deref().map(parse) else { return };
    if name != step.name() {
        return;
    }
    match action {
        Action::Abort => {
            eprintln!("mekha: fault injected at {name} (MEKHA_COORDINATOR_FAULT): aborting");
            std::process::abort();
        }
        // Some steps are passed more than once (every poll, every image).
        Action::Stop if !STOPPED.swap(true, Ordering::SeqCst) => {
            eprintln!("mekha: fault injected at {name} (MEKHA_COORDINATOR_FAULT): stopping until SIGCONT");
            // SAFETY: raise has no preconditions; SIGSTOP stops every
            // thread of the process until a SIGCONT.
            unsafe { libc::raise(libc::SIGSTOP) };
        }
        Action::Stop => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_names_its_step_and_action() {
        assert_eq!(parse("live"), ("live", Action::Abort));
        assert_eq!(parse("restore-loading:stop"), ("restore-loading", Action::Stop));
        assert!(std::panic::catch_unwind(|| parse("live:pause")).is_err());
    }
}
