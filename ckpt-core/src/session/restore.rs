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
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lazy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<TimePolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_ppm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// `__org.mekha_QueryRestoreArgs`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct QueryArgs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_lease: Option<bool>,
}

/// `__org.mekha_RestoreStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    #[default]
    None,
    Loading,
    Completed,
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
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    pub lazy: bool,
    pub ram_bytes: u64,
    pub verified_bytes: u64,
    pub total_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_at_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_at_ns: Option<i64>,
    pub net_injected_frames: u64,
    pub net_dropped_frames: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// `__org.mekha_ResumeArgs`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ResumeArgs {
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
