// SPDX-License-Identifier: GPL-2.0-or-later
//! A restore's session (`__org.mekha_restore`, `__org.mekha_resume`):
//! its arguments, its statuses and their checks.
//!
//! Statuses: `loading` -> `completed` (running, or paused until a resume)
//! or `failed` (the VM never ran). A restore left paused for a
//! coordinator may carry a lease until its resume.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{check_instant, Error, ErrorKind, Result};
use crate::vtime::TimePolicy;

/// `__org.mekha_RestoreArgs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Args {
    /// The image file.
    pub path: PathBuf,
    /// Resume the VM once restored (default true); false leaves it paused
    /// until `__org.mekha_resume` or `cont`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<bool>,
    /// Map guest RAM from the image instead of reading it (default: where
    /// the RAM is anonymous and no key is given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lazy: Option<bool>,
    /// How the restored VM's clocks stand to the host's (default continue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<TimePolicy>,
    /// With the catch-up policy, how much faster than the host's guest
    /// time runs, parts per million (default 50000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_ppm: Option<u32>,
    /// How far the guest's wall clock lags the host's at the resume, ns,
    /// instead of the time since the checkpoint (one lag for a cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_ns: Option<i64>,
    /// The coordinator's lease, ms, only with `start` false: unless heard
    /// from, the restore fails and QEMU shuts down before the VM runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// The id of the QEMU `secret` object holding the image key: the image
    /// must hold under it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<String>,
    /// With `key_secret`, the image's MAC as its checkpoint reported it,
    /// hex: another authentic image is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// `__org.mekha_QueryRestoreArgs`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct QueryArgs {
    /// The query is the coordinator's own and renews the lease (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_lease: Option<bool>,
}

/// `__org.mekha_RestoreStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// No restore has run in this QEMU.
    #[default]
    None,
    /// Guest RAM and device state are being loaded.
    Loading,
    /// The VM was restored (and runs, unless left paused).
    Completed,
    /// The restore failed; the VM did not run.
    Failed,
}

impl Status {
    /// Its name in the schema.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Loading => "loading",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `__org.mekha_RestoreInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct Info {
    /// Where the restore stands.
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
    /// Whether guest RAM was mapped from the image.
    pub lazy: bool,
    /// Bytes of guest RAM the image restores.
    pub ram_bytes: u64,
    /// Bytes whose checksum was checked so far.
    pub verified_bytes: u64,
    /// From the command to a running (or paused) VM, ns.
    pub total_ns: u64,
    /// The instant `__org.mekha_resume` asked for (host wall clock, ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_at_ns: Option<i64>,
    /// When the VM resumed (host wall clock, ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_at_ns: Option<i64>,
    /// Frames of the image, in flight at the checkpoint, passed on to the
    /// guest in order once the VM ran.
    pub net_injected_frames: u64,
    /// Frames of the image not passed on: their netdev is missing or
    /// cannot take them.
    pub net_dropped_frames: u64,
    /// The image's MAC, hex, once checked under the image key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// `__org.mekha_ResumeArgs`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ResumeArgs {
    /// Resume at this host wall-clock instant (ns since the Unix epoch);
    /// none: at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
}

impl Info {
    /// Records the failure: its message, its kind, the failed status.
    pub fn fail(&mut self, e: Error) {
        self.error = Some(e.message);
        self.error_kind = Some(e.kind);
        self.status = Status::Failed;
    }
}

impl Args {
    /// Whether the VM runs once restored (default) or waits paused.
    pub fn starts(&self) -> bool {
        self.start.unwrap_or(true)
    }

    /// The coordinator's lease, checked: only for a restore left paused.
    pub fn lease(&self) -> Result<Option<Duration>> {
        match self.lease_ms {
            None => Ok(None),
            Some(0) => Err(Error::invalid_argument("lease-ms must be positive")),
            Some(_) if self.starts() => {
                Err(Error::invalid_argument("lease-ms is for a restore left paused (start false)"))
            }
            Some(ms) => Ok(Some(Duration::from_millis(ms))),
        }
    }
}

impl ResumeArgs {
    /// An instant within reach of `now_ns`.
    pub fn check(&self, now_ns: i64) -> Result<()> {
        check_instant("at", self.at, now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(json: &str) -> Result<Args, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn a_lease_is_only_for_a_restore_left_paused() {
        assert_eq!(args(r#"{"path": "/i"}"#).unwrap().lease(), Ok(None));
        let paused = args(r#"{"path": "/i", "start": false, "lease-ms": 2000}"#).unwrap();
        assert_eq!(paused.lease(), Ok(Some(Duration::from_millis(2000))));
        let started = args(r#"{"path": "/i", "lease-ms": 2000}"#).unwrap();
        assert_eq!(started.lease().unwrap_err().message, "lease-ms is for a restore left paused (start false)");
        let zero = args(r#"{"path": "/i", "start": false, "lease-ms": 0}"#).unwrap();
        assert_eq!(zero.lease().unwrap_err().message, "lease-ms must be positive");
    }

    #[test]
    fn unknown_arguments_are_refused() {
        let err = args(r#"{"path": "/i", "leese-ms": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `leese-ms`"), "{err}");
    }

    #[test]
    fn a_resume_far_ahead_is_refused() {
        let now = 1_000_000_000_000;
        ResumeArgs { at: None }.check(now).unwrap();
        ResumeArgs { at: Some(now + 1_000_000) }.check(now).unwrap();
        assert!(ResumeArgs { at: Some(now + 61_000_000_000) }.check(now).is_err());
    }
}
