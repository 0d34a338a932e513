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
use crate::image::ImageKey;
use crate::mtd::MtdParams;
use crate::netcut::CutProgress;
pub use crate::netcut::NetdevPeers;

/// How long one sleep of [`Session::wait_for`] lasts without a lease: only
/// a command ends such a wait, this merely bounds each sleep.
const NO_LEASE_WAKE: Duration = Duration::from_secs(3600);

/// `__org.mekha_CheckpointArgs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Args {
    /// The image file to write; it appears only when complete and durable.
    pub path: PathBuf,
    /// How RAM is captured (default [`Mode::Auto`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// The live phase's time budget, ms (default 10000): it ends then
    /// whatever the dirty rate, unless held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_budget_ms: Option<u64>,
    /// The staging area's memory budget, MiB (default: all of guest RAM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staging_mib: Option<u64>,
    /// MTD's dirty-bitmap sync interval, ms (default 3000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch_ms: Option<u64>,
    /// Stale pages of the dirty set copied per transfer cycle (default 50).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty_share: Option<u32>,
    /// Pages of the non-dirty set copied per transfer cycle (default 50).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clean_share: Option<u32>,
    /// Keep the live phase open until `checkpoint-end` (a coordinator's
    /// global ending condition; default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<bool>,
    /// The coordinator's lease, ms (default none; with `hold`, the time budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// Keep the staged image in memory until `checkpoint-persist` (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist_hold: Option<bool>,
    /// Leave the writable disks out: the caller snapshots them (default
    /// false: each is captured at the instant, see [`DiskCapture`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_writable_disks: Option<bool>,
    /// The id of the QEMU `secret` object holding the image key to seal
    /// the image under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<String>,
    /// The VM's image in the generation the disks' layers build on (the
    /// last committed one); without it every disk is captured whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_parent: Option<PathBuf>,
}

/// `__org.mekha_CheckpointEndArgs`. The VM resumes as soon as the
/// pause's copy is done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EndArgs {
    /// Stop the VM at this host wall-clock instant (ns since the Unix
    /// epoch) instead of at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_at: Option<i64>,
    /// The cluster checkpoint's network cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut: Option<NetCut>,
}

/// `__org.mekha_NetCut`: a network cut by markers ([`crate::netcut`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NetCut {
    /// The cluster checkpoint's id, the same for every VM.
    pub id: u64,
    /// Per NIC, the peers whose markers to wait for.
    pub peers: Vec<NetdevPeers>,
}

/// `__org.mekha_CheckpointMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Copy-on-write where it works (private anonymous RAM, userfaultfd
    /// write protection), MTD otherwise.
    Auto,
    /// RAM copied while the guest runs, dirty pages again; the pause
    /// copies the last dirty pages (it grows with the dirty rate).
    Mtd,
    /// The VM stops only to write-protect its RAM; each page is copied
    /// before the guest may change it ([`crate::cow`]).
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
    /// No checkpoint has run in this QEMU.
    #[default]
    None,
    /// RAM is copied into staging while the guest runs.
    Live,
    /// The VM is stopped for the final copy.
    Paused,
    /// The VM runs again with its RAM write-protected (copy-on-write).
    Capturing,
    /// The VM runs again; its image waits in memory for `checkpoint-persist`.
    Staged,
    /// The VM runs again; the staged image is being written.
    Persisting,
    /// The image is complete and durable at its path.
    Completed,
    /// The checkpoint failed: the VM runs, any earlier image is untouched.
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

    /// Whether a checkpoint is running: neither none nor finished, so
    /// another cannot start.
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
    /// Where the checkpoint stands.
    pub status: Status,
    /// The image file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Why it failed (only when failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The kind of `error`, for a program to act on (only when failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// How RAM is captured: mtd or cow, never auto (none before any checkpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Why auto chose MTD, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode_reason: Option<String>,
    /// Why the live phase ended: `non-dirty-empty`, `budget-spent` or
    /// `end-command` ([`crate::mtd::EndReason`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// Dirty-bitmap syncs so far.
    pub epochs: u64,
    /// Pages in the dirty set (written since the checkpoint began).
    pub dirty_pages: u64,
    /// Pages in the non-dirty set: not written, not copied yet.
    pub non_dirty_pages: u64,
    /// Pages written since their last copy.
    pub stale_pages: u64,
    /// Page copies made, repeats included.
    pub copied_pages: u64,
    /// Bytes the staging area holds now (its resident set).
    pub staged_bytes: u64,
    /// The most bytes the staging area ever held.
    pub staging_peak_bytes: u64,
    /// The staging area's budget as enforced, bytes.
    pub staging_budget_bytes: u64,
    /// Bytes written to the image file so far.
    pub written_bytes: u64,
    /// How long the VM was stopped, ns.
    pub pause_ns: u64,
    /// Pages copied while the VM was stopped (MTD).
    pub final_pages: u64,
    /// Size of QEMU's device state, bytes.
    pub device_state_bytes: u64,
    /// Length of the live phase, ns.
    pub live_ns: u64,
    /// From the start to completion (or to now), ns.
    pub total_ns: u64,
    /// Whether the image was written with `O_DIRECT`.
    pub direct_io: bool,
    /// Guest writes that waited for their page's copy (copy-on-write).
    pub wp_faults: u64,
    /// From the VM's restart to the last page copied, ns (copy-on-write).
    pub capture_ns: u64,
    /// The live phase has done what it can (every page copied once, or
    /// RAM prepared for protection): a coordinator ends every VM's live
    /// phase together once all are ready.
    pub ready: bool,
    /// How long the pause would take now, ns: a coordinator sets its
    /// resume instant by the largest.
    pub pause_estimate_ns: u64,
    /// The stop instant `checkpoint-end` asked for (host wall clock, ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_at_ns: Option<i64>,
    /// When the VM stopped (host wall clock, ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at_ns: Option<i64>,
    /// When the VM resumed (host wall clock, ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_at_ns: Option<i64>,
    /// Network frames toward the guest in flight at the stop (the cut's
    /// channel state), saved in the image; the running guest gets them
    /// too, in order.
    pub net_saved_frames: u64,
    /// Bytes of those frames.
    pub net_saved_bytes: u64,
    /// Frames in flight at the stop the image had no room for: the
    /// running guest gets them, a restore does not.
    pub net_dropped_frames: u64,
    /// Every peer's marker arrived: the frames to save are all known.
    pub cut_complete: bool,
    /// Per NIC, the peers whose marker has not arrived yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut_waiting: Vec<NetdevPeers>,
    /// The image's MAC, hex, once written under an image key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The writable disks captured with RAM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskCapture>,
    /// Bytes the disks' copies have made so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_copied_bytes: Option<u64>,
}

/// `__org.mekha_DiskCapture`: a writable disk captured at the
/// checkpoint's instant, into a layer file next to the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DiskCapture {
    /// The disk's device: its id, or its QOM path without one.
    pub device: String,
    /// Its root block node.
    pub node: String,
    /// The root node's driver.
    pub format: String,
    /// Virtual size, bytes.
    pub size: u64,
    /// `full` or `delta` (the clusters written since `parent`'s capture).
    pub kind: String,
    /// The layer file's name, in the image's directory.
    pub layer: String,
    /// The layer's id (its header CRC32C), once written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_id: Option<u32>,
    /// A delta's parent layer, relative to the image's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Bytes of disk data the layer holds.
    pub data_bytes: u64,
    /// Bytes the layer records as zeroes.
    pub zero_bytes: u64,
}

impl DiskCapture {
    /// The disks an image's INFO (its checkpoint's [`Info`]) lists; none
    /// for an image of a VM without captured disks.
    pub fn listed_in(info: Option<serde_json::Value>) -> serde_json::Result<Vec<DiskCapture>> {
        match info.and_then(|mut info| info.get_mut("disks").map(serde_json::Value::take)) {
            Some(disks) => serde_json::from_value(disks),
            None => Ok(Vec::new()),
        }
    }

    /// Where this disk's layer chain starts for the image at `image`
    /// (`DIR/gen-NNNNNN/vm.mekha`): the checkpoint directory, and the
    /// layer's name in it (`gen-NNNNNN/<layer>`).
    pub fn chain_start(&self, image: &std::path::Path) -> Option<(PathBuf, String)> {
        let generation = image.parent()?.canonicalize().ok()?;
        let name = format!("{}/{}", generation.file_name()?.to_str()?, self.layer);
        Some((generation.parent()?.to_owned(), name))
    }
}

impl Info {
    /// Records the failure: its message, its kind, the failed status.
    pub fn fail(&mut self, e: Error) {
        self.error = Some(e.message);
        self.error_kind = Some(e.kind);
        self.status = Status::Failed;
    }

    /// Records how the network cut stands.
    pub fn set_cut(&mut self, cut: &CutProgress) {
        self.net_saved_frames = cut.saved_frames;
        self.net_saved_bytes = cut.saved_bytes;
        self.net_dropped_frames = cut.dropped_frames;
        self.cut_complete = cut.complete;
        self.cut_waiting = cut.waiting.clone();
    }
}

/// `__org.mekha_QueryCheckpointArgs`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct QueryArgs {
    /// The query is the coordinator's own and renews the lease (default
    /// false: anyone else's poll must not keep a checkpoint alive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_lease: Option<bool>,
}

impl EndArgs {
    /// The instant within reach of `now_ns`, each NIC named once.
    pub fn check(&self, now_ns: i64) -> Result<()> {
        check_instant("stop-at", self.stop_at, now_ns)?;
        let peers = self.cut.iter().flat_map(|c| &c.peers);
        let mut netdevs: Vec<&str> = peers.map(|p| p.netdev.as_str()).collect();
        netdevs.sort_unstable();
        if let Some(w) = netdevs.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::invalid_argument(format!("cut: netdev {:?} is named twice", w[0])));
        }
        Ok(())
    }
}

/// Validated checkpoint parameters.
#[derive(Debug, Clone)]
pub struct Params {
    /// The image file to write.
    pub path: PathBuf,
    /// The live phase's tunables (also the time budget and hold of a
    /// copy-on-write capture).
    pub mtd: MtdParams,
    /// The staging budget asked for, bytes (none: all of guest RAM).
    pub staging_budget: Option<u64>,
    /// The coordinator's lease: asked for, or the time budget of a held
    /// live phase, which only a command ends otherwise.
    pub lease: Option<Duration>,
    /// Keep the staged image in memory until `checkpoint-persist`.
    pub persist_hold: bool,
    /// Seals the image under this key (the embedder resolves `key-secret`).
    pub key: Option<ImageKey>,
}

impl Params {
    /// Checks `args` and fills in the defaults; says what is wrong. The
    /// key is left for the embedder to resolve from `key-secret`.
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
    /// `checkpoint-cancel` came.
    Cancelled,
    /// The coordinator was not heard from within its lease.
    LeaseExpired,
}

impl Abandon {
    /// Why, worded for the checkpoint's error.
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

    /// The status now.
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
        self.update(|info| info.stop_at_ns = args.stop_at);
        *self.end.lock().unwrap_or_else(PoisonError::into_inner) = Some(args);
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

    /// Whether `checkpoint-end` came.
    pub fn end_requested(&self) -> bool {
        self.end_requested.load(Ordering::Relaxed)
    }

    /// The instants of the end command (none before it, or without them).
    pub fn end_args(&self) -> EndArgs {
        self.end.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default()
    }

    /// Whether to give up waiting for the coordinator.
    pub fn abandoned(&self) -> Option<Abandon> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Some(Abandon::Cancelled);
        }
        let lease = self.lease.lock().unwrap_or_else(PoisonError::into_inner);
        lease.filter(|l| l.expired(Instant::now())).map(|_| Abandon::LeaseExpired)
    }

    /// Whether `checkpoint-persist` came.
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
