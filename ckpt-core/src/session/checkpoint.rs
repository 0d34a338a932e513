// SPDX-License-Identifier: GPL-2.0-or-later
//! A live checkpoint's session (`__org.mekha_checkpoint` and friends):
//! its arguments, its statuses, what each command may do in each, and the
//! coordinator's lease.
//!
//! Statuses: `live` (pages copied while the VM runs; a coordinator may
//! hold it open) -> `paused` (the VM stopped) -> `capturing` (copy-on-write
//! copies behind the running VM) -> `staged` (the image in memory, maybe
//! held for the coordinator) -> `persisting` -> `completed`; or `failed`
//! from any of them. A live or staged checkpoint can be cancelled; one
//! that stopped the VM cannot, until its image is staged.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{check_instant, ms, Error, ErrorKind, Lease, Result};
use crate::image::{ImageKey, NetFrames};
use crate::mtd::MtdParams;

/// How long one sleep of [`Session::wait_for`] lasts without a lease: only
/// a command ends such a wait, this merely bounds each sleep.
const NO_LEASE_WAKE: Duration = Duration::from_secs(3600);

/// `__org.mekha_CheckpointArgs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Args {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_budget_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staging_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty_share: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clean_share: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist_hold: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_writable_disks: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<String>,
}

/// `__org.mekha_CheckpointEndArgs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EndArgs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<i64>,
}

/// `__org.mekha_CheckpointMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Auto,
    Mtd,
    Cow,
}

impl Mode {
    /// Its name in the schema.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Mtd => "mtd",
            Mode::Cow => "cow",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `__org.mekha_CheckpointStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    #[default]
    None,
    Live,
    Paused,
    Capturing,
    Staged,
    Persisting,
    Completed,
    Failed,
}

impl Status {
    /// Its name in the schema.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Live => "live",
            Status::Paused => "paused",
            Status::Capturing => "capturing",
            Status::Staged => "staged",
            Status::Persisting => "persisting",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, Status::Live | Status::Paused | Status::Capturing | Status::Staged | Status::Persisting)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `__org.mekha_CheckpointInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct Info {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    pub epochs: u64,
    pub dirty_pages: u64,
    pub non_dirty_pages: u64,
    pub stale_pages: u64,
    pub copied_pages: u64,
    pub staged_bytes: u64,
    pub staging_peak_bytes: u64,
    pub staging_budget_bytes: u64,
    pub written_bytes: u64,
    pub pause_ns: u64,
    pub final_pages: u64,
    pub device_state_bytes: u64,
    pub live_ns: u64,
    pub total_ns: u64,
    pub direct_io: bool,
    pub wp_faults: u64,
    pub capture_ns: u64,
    pub ready: bool,
    pub pause_estimate_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_at_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_at_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_at_ns: Option<i64>,
    pub net_held_frames: u64,
    pub net_held_bytes: u64,
    pub net_dropped_frames: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Info {
    /// Records the failure: its message, its kind, the failed status.
    pub fn fail(&mut self, e: Error) {
        self.error = Some(e.message);
        self.error_kind = Some(e.kind);
        self.status = Status::Failed;
    }

    /// Records what the hold kept during the pause.
    pub fn set_net(&mut self, held: &NetFrames, dropped: u64) {
        self.net_held_frames = held.frame_count();
        self.net_held_bytes = held.byte_count();
        self.net_dropped_frames = dropped;
    }
}

/// `__org.mekha_QueryCheckpointArgs`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct QueryArgs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_lease: Option<bool>,
}

impl EndArgs {
    /// Instants within reach of `now_ns`, the resume after the stop.
    pub fn check(&self, now_ns: i64) -> Result<()> {
        check_instant("stop-at", self.stop_at, now_ns)?;
        check_instant("resume-at", self.resume_at, now_ns)?;
        if let (Some(stop), Some(resume)) = (self.stop_at, self.resume_at) {
            if resume <= stop {
                return Err(Error::invalid_argument("resume-at must come after stop-at"));
            }
        }
        Ok(())
    }
}

/// Validated checkpoint parameters.
#[derive(Debug, Clone)]
pub struct Params {
    pub path: PathBuf,
    pub mtd: MtdParams,
    /// The staging budget asked for, bytes (none: all of guest RAM).
    pub staging_budget: Option<u64>,
    pub lease: Option<Duration>,
    pub persist_hold: bool,
    /// Seals the image under this key (the embedder resolves `key-secret`).
    pub key: Option<ImageKey>,
}

impl Params {
    pub fn from_args(args: &Args) -> Result<Params> {
        let mtd = MtdParams {
            epoch: ms(args.epoch_ms, 3000),
            dirty_per_cycle: args.dirty_share.unwrap_or(50),
            clean_per_cycle: args.clean_share.unwrap_or(50),
            live_budget: ms(args.time_budget_ms, 10_000),
            hold: args.hold.unwrap_or(false),
        };
        if mtd.epoch.is_zero() {
            return Err(Error::invalid_argument("epoch-ms must be positive"));
        }
        if mtd.dirty_per_cycle == 0 && mtd.clean_per_cycle == 0 {
            return Err(Error::invalid_argument("dirty-share and clean-share cannot both be 0"));
        }
        let staging_budget = match args.staging_mib {
            Some(0) => return Err(Error::invalid_argument("staging-mib must be positive")),
            // A shift would wrap (2^44 MiB << 20 is 0: a budget that
            // never fits a page, and a checkpoint that spins forever).
            Some(mib) => {
                Some(mib.checked_mul(1 << 20).ok_or_else(|| Error::invalid_argument("staging-mib is too large"))?)
            }
            None => None,
        };
        let lease = match args.lease_ms {
            Some(0) => return Err(Error::invalid_argument("lease-ms must be positive")),
            // A held live phase ends only on its coordinator's command:
            // without a lease, one that is never heard from again would
            // hold forever.
            None if mtd.hold => Some(mtd.live_budget),
            ms => ms.map(Duration::from_millis),
        };
        Ok(Params {
            path: args.path.clone(),
            mtd,
            staging_budget,
            lease,
            persist_hold: args.persist_hold.unwrap_or(false),
            key: None,
        })
    }
}

/// Why the worker must stop waiting for its coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandon {
    Cancelled,
    LeaseExpired,
}

impl Abandon {
    pub fn message(self) -> &'static str {
        match self {
            Abandon::Cancelled => "cancelled by the coordinator",
            Abandon::LeaseExpired => "the coordinator's lease expired: it was not heard from in time",
        }
    }

    /// The checkpoint's failure.
    pub fn error(self) -> Error {
        let kind = match self {
            Abandon::Cancelled => ErrorKind::Cancelled,
            Abandon::LeaseExpired => ErrorKind::LeaseExpired,
        };
        Error::new(kind, self.message())
    }
}

/// What a checkpoint's commands and its worker share.
pub struct Session {
    info: Mutex<Info>,
    /// The end command and its instants, once it came.
    end: Mutex<Option<EndArgs>>,
    end_requested: AtomicBool,
    cancelled: AtomicBool,
    persist_released: AtomicBool,
    lease: Mutex<Option<Lease>>,
    /// Commands so far (end, cancel, persist release), and the worker's
    /// wake-up when one comes ([`Session::wait_until`]).
    commands: Mutex<u64>,
    command_came: Condvar,
    /// Called with the progress whenever the status changed (QMP events).
    on_status: Box<dyn Fn(&Info) + Send + Sync>,
}

impl Session {
    /// A session at `info`, under `lease` if any, telling `on_status`.
    pub fn new(info: Info, lease: Option<Duration>, on_status: Box<dyn Fn(&Info) + Send + Sync>) -> Session {
        Session {
            info: Mutex::new(info),
            end: Mutex::new(None),
            end_requested: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            persist_released: AtomicBool::new(false),
            lease: Mutex::new(lease.map(|every| Lease::new(every, Instant::now()))),
            commands: Mutex::new(0),
            command_came: Condvar::new(),
            on_status,
        }
    }

    /// The progress now.
    pub fn info(&self) -> Info {
        self.info.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn status(&self) -> Status {
        self.info.lock().unwrap_or_else(PoisonError::into_inner).status
    }

    /// Updates the progress; tells `on_status` when the status changed.
    pub fn update(&self, f: impl FnOnce(&mut Info)) {
        let (changed, snapshot) = {
            let mut info = self.info.lock().unwrap_or_else(PoisonError::into_inner);
            let before = info.status;
            f(&mut info);
            (info.status != before, info.clone())
        };
        if changed {
            (self.on_status)(&snapshot);
        }
    }

    /// The coordinator spoke: renews its lease.
    pub fn heard(&self) {
        if let Some(lease) = self.lease.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            lease.heard(Instant::now());
        }
    }

    /// `checkpoint-end`: ends the live phase, at once or at the stop
    /// instant (`now_ns`: the host's wall clock).
    pub fn request_end(&self, args: EndArgs, now_ns: i64) -> Result<()> {
        args.check(now_ns)?;
        if self.status() != Status::Live || self.end_requested() {
            return Err(Error::wrong_status("no checkpoint is in its live phase"));
        }
        *self.end.lock().unwrap_or_else(PoisonError::into_inner) = Some(args);
        self.update(|info| {
            info.stop_at_ns = args.stop_at;
            info.resume_at_ns = args.resume_at;
        });
        self.end_requested.store(true, Ordering::Relaxed);
        self.wake();
        Ok(())
    }

    /// `checkpoint-cancel`: only before the VM stops, or once the image
    /// waits in memory.
    pub fn cancel(&self) -> Result<()> {
        match self.status() {
            Status::Live | Status::Staged => {
                self.cancelled.store(true, Ordering::Relaxed);
                self.wake();
                Ok(())
            }
            Status::Paused | Status::Capturing => Err(Error::wrong_status(
                "the checkpoint has stopped the VM already: it cannot be cancelled until its image is staged",
            )),
            _ => Err(Error::wrong_status("no checkpoint can be cancelled now")),
        }
    }

    /// `checkpoint-persist`: a held image may be written now.
    pub fn release_persist(&self) -> Result<()> {
        if !self.status().is_active() {
            return Err(Error::wrong_status("no checkpoint is running"));
        }
        self.persist_released.store(true, Ordering::Relaxed);
        self.wake();
        Ok(())
    }

    pub fn end_requested(&self) -> bool {
        self.end_requested.load(Ordering::Relaxed)
    }

    /// The instants of the end command (none before it, or without them).
    pub fn end_args(&self) -> EndArgs {
        self.end.lock().unwrap_or_else(PoisonError::into_inner).unwrap_or_default()
    }

    /// Whether to give up waiting for the coordinator.
    pub fn abandoned(&self) -> Option<Abandon> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Some(Abandon::Cancelled);
        }
        let lease = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
        lease.filter(|l| l.expired(Instant::now())).map(|_| Abandon::LeaseExpired)
    }

    pub fn persist_released(&self) -> bool {
        self.persist_released.load(Ordering::Relaxed)
    }

    /// Blocks until `done` holds, or for `at_most`: a command wakes the
    /// wait at once, so that it need not poll; `at_most` is how often it
    /// looks at what no command signals (the lease, the clock). Returns
    /// whether `done` holds.
    pub fn wait_until(&self, at_most: Duration, done: impl Fn(&Session) -> bool) -> bool {
        let commands = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under the lock a command takes to wake us: none is missed.
        if done(self) {
            return true;
        }
        let seen = *commands;
        let woken = self.command_came.wait_timeout_while(commands, at_most, |n| *n == seen);
        drop(woken.unwrap_or_else(PoisonError::into_inner));
        done(self)
    }

    /// Blocks until `done` holds, where `done` depends on the commands and
    /// the lease only (an end, a cancel, a persist release, a silent
    /// coordinator): a command wakes the wait, and the lease's expiry is
    /// waited for as such (a renewal only moves it later, so the wait
    /// wakes at the old instant and waits on).
    pub fn wait_for(&self, done: impl Fn(&Session) -> bool) {
        loop {
            let left = self.lease.lock().unwrap_or_else(PoisonError::into_inner).map(|l| l.left(Instant::now()));
            if self.wait_until(left.unwrap_or(NO_LEASE_WAKE), &done) {
                return;
            }
        }
    }

    /// A command came: its flag is set; wakes [`wait_until`](Self::wait_until).
    fn wake(&self) {
        *self.commands.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.command_came.notify_all();
    }
}

#[cfg(test)]
mod tests;
