// SPDX-License-Identifier: GPL-2.0-or-later
//! The vocabulary of checkpoints and restores: capture modes, time
//! policies, per-VM options, errors, and the latest committed checkpoint
//! of a directory. The protocols are in `cluster`.

use std::path::Path;
use std::time::Duration;

use mekha_ckpt_core::image::ImageKey;
use mekha_ckpt_core::session::checkpoint;
use mekha_ckpt_core::store::{Manifest, Store};
use mekha_ckpt_core::vtime;

use crate::qmp::QmpError;

/// How guest RAM is captured (`__org.mekha_CheckpointMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureMode {
    /// Copy-on-write where the VM and host allow it, MTD otherwise.
    #[default]
    Auto,
    /// MTD: copy while running, stop for the last dirty pages.
    Mtd,
    /// Copy-on-write: stop only to write-protect RAM.
    Cow,
}

impl From<CaptureMode> for checkpoint::Mode {
    fn from(mode: CaptureMode) -> checkpoint::Mode {
        match mode {
            CaptureMode::Auto => checkpoint::Mode::Auto,
            CaptureMode::Mtd => checkpoint::Mode::Mtd,
            CaptureMode::Cow => checkpoint::Mode::Cow,
        }
    }
}

/// How a restored VM's clocks stand to the host's (`__org.mekha_TimePolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimePolicy {
    /// Every guest clock resumes from the checkpoint instant.
    #[default]
    Continue,
    /// Stock QEMU: the RTC jumps to the host's time.
    Host,
    /// Resume from the instant, then run faster until caught up with the host.
    CatchUp,
}

impl From<TimePolicy> for vtime::TimePolicy {
    fn from(policy: TimePolicy) -> vtime::TimePolicy {
        match policy {
            TimePolicy::Continue => vtime::TimePolicy::Continue,
            TimePolicy::Host => vtime::TimePolicy::Host,
            TimePolicy::CatchUp => vtime::TimePolicy::CatchUp,
        }
    }
}

/// How a restore runs (QMP `__org.mekha_restore` arguments).
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Leave the VM paused once restored.
    pub paused: bool,
    pub time: TimePolicy,
    pub catch_up_ppm: Option<u32>,
    /// The guest wall clock's lag behind the host at resume (one for a
    /// whole cluster), instead of the time since the checkpoint.
    pub lag_ns: Option<i64>,
    /// Each VM's lease until its resume: how long a loaded VM waits for
    /// a silent coordinator before its QEMU shuts down (not with
    /// `paused`: the VMs then wait for whoever resumes them).
    pub lease: Duration,
    /// How long a VM may load without progress before the restart is
    /// given up.
    pub progress_timeout: Duration,
    /// Restore only what holds under this key: the manifest, and in each
    /// VM its image, the very one the manifest sealed.
    pub key: Option<ImageKey>,
}

impl Default for RestoreOptions {
    fn default() -> RestoreOptions {
        RestoreOptions {
            paused: false,
            time: TimePolicy::default(),
            catch_up_ppm: None,
            lag_ns: None,
            lease: DEFAULT_LEASE,
            progress_timeout: DEFAULT_PROGRESS_TIMEOUT,
            key: None,
        }
    }
}

/// A VM's lease on its coordinator, for checkpoint and restart.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// The shortest lease, ms: a few of the coordinator's 20 ms polls and
/// their round trips.
pub const MIN_LEASE_MS: u64 = 100;
/// How long a VM may show no progress in any wait of the coordinator.
pub const DEFAULT_PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Tuning of a checkpoint (QMP `__org.mekha_checkpoint` arguments).
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    pub mode: CaptureMode,
    pub staging_mib: Option<u64>,
    pub epoch_ms: Option<u64>,
    pub dirty_share: Option<u32>,
    pub clean_share: Option<u32>,
    /// Leave the writable disks out (the caller snapshots them).
    pub allow_writable_disks: bool,
    /// Seal the images and the manifest under this key.
    pub key: Option<ImageKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum CkptError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("checkpoint directory: {0}")]
    Store(#[from] mekha_ckpt_core::store::StoreError),
    #[error("{vm}: checkpoint failed: {message}")]
    Failed { vm: String, message: String },
    #[error("{vm}: restore failed: {message}")]
    RestoreFailed { vm: String, message: String },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unreachable(String),
}

/// The latest committed checkpoint of `dir`, or a clear refusal; with
/// `key`, one whose manifest holds under it.
pub fn latest_checkpoint(dir: &Path, key: Option<&ImageKey>) -> Result<(Store, Manifest), CkptError> {
    let store = Store::open_existing(dir)?.with_key(key.cloned());
    let manifest = store
        .latest()?
        .ok_or_else(|| CkptError::Refused(format!("{} holds no committed checkpoint", dir.display())))?;
    Ok((store, manifest))
}
