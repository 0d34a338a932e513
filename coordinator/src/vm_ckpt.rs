// SPDX-License-Identifier: GPL-2.0-or-later
//! Checkpoint and restore of one VM through its QMP socket.
//!
//! The coordinator owns the checkpoint directory (generations and the
//! manifest, `mekha_ckpt_core::store`); the mekha library inside QEMU
//! writes the VM's image into the generation the coordinator opened, and
//! the generation is committed only once that image is complete and
//! durable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mekha_ckpt_core::store::{Manifest, Store};
use serde::Serialize;
use serde_json::{json, Value};

use crate::info;
use crate::qmp::{Qmp, QmpError};

/// How guest RAM is captured (`__org.mekha_CheckpointMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CaptureMode {
    /// Copy-on-write where the VM and host allow it, MTD otherwise.
    #[default]
    Auto,
    /// MTD: copy while running, stop for the last dirty pages.
    Mtd,
    /// Copy-on-write: stop only to write-protect RAM.
    Cow,
}

impl CaptureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Auto => "auto",
            CaptureMode::Mtd => "mtd",
            CaptureMode::Cow => "cow",
        }
    }
}

/// How a restored VM's clocks stand to the host's (`__org.mekha_TimePolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TimePolicy {
    /// Every guest clock resumes from the checkpoint instant.
    #[default]
    Continue,
    /// Stock QEMU: the RTC jumps to the host's time.
    Host,
    /// Resume from the instant, then run faster until caught up with the host.
    CatchUp,
}

impl TimePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TimePolicy::Continue => "continue",
            TimePolicy::Host => "host",
            TimePolicy::CatchUp => "catch-up",
        }
    }
}

/// How a restore runs (QMP `__org.mekha_restore` arguments).
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Leave the VM paused once restored.
    pub paused: bool,
    pub time: TimePolicy,
    pub catch_up_ppm: Option<u32>,
    /// The guest wall clock's lag behind the host at resume (one for a
    /// whole cluster), instead of the time since the checkpoint.
    pub lag_ns: Option<i64>,
}

/// Tuning of a checkpoint (QMP `__org.mekha_checkpoint` arguments).
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    pub mode: CaptureMode,
    pub time_budget_ms: Option<u64>,
    pub staging_mib: Option<u64>,
    pub epoch_ms: Option<u64>,
    pub dirty_share: Option<u32>,
    pub clean_share: Option<u32>,
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
}

/// The outcome of one VM's checkpoint, for `--json` and humans.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointSummary {
    pub vm: String,
    pub generation: u64,
    pub image: PathBuf,
    /// `__org.mekha_query-checkpoint` at completion.
    pub progress: Value,
}

/// The name images are matched by: QEMU's `-name`.
async fn vm_name(qmp: &Qmp) -> Result<String, CkptError> {
    let info = info::query(qmp).await?;
    info.vm_name.filter(|n| !n.is_empty()).ok_or_else(|| {
        CkptError::Refused(format!(
            "the VM behind {} has no name: start QEMU with -name NAME (images are matched to VMs by name)",
            qmp.path().display()
        ))
    })
}

/// Polls a `query-*` command until its status leaves `busy` statuses,
/// calling `progress` with each answer.
async fn wait_status(
    qmp: &Qmp,
    query: &str,
    busy: &[&str],
    mut progress: impl FnMut(&Value),
) -> Result<Value, QmpError> {
    loop {
        let state = qmp.execute_mekha(query, Value::Null).await?;
        progress(&state);
        let status = state["status"].as_str().unwrap_or("");
        if !busy.contains(&status) {
            return Ok(state);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checkpoints the VM behind `qmp` into a new generation of `dir` and
/// commits it. The VM keeps running throughout but for its pause.
pub async fn checkpoint(
    qmp: &Qmp,
    dir: &Path,
    options: &CheckpointOptions,
    progress: impl FnMut(&Value),
) -> Result<CheckpointSummary, CkptError> {
    let name = vm_name(qmp).await?;
    let store = Store::open(dir)?;
    let generation = store.begin()?;
    let image = generation.image_path(&name)?;
    let mut args = json!({ "path": image, "mode": options.mode.as_str() });
    for (key, value) in [
        ("time-budget-ms", options.time_budget_ms),
        ("staging-mib", options.staging_mib),
        ("epoch-ms", options.epoch_ms),
    ] {
        if let Some(v) = value {
            args[key] = v.into();
        }
    }
    for (key, value) in [("dirty-share", options.dirty_share), ("clean-share", options.clean_share)] {
        if let Some(v) = value {
            args[key] = v.into();
        }
    }
    let run = async {
        qmp.execute_mekha("checkpoint", args).await?;
        wait_status(qmp, "query-checkpoint", &["live", "paused", "capturing", "persisting"], progress).await
    };
    let state = match run.await {
        Ok(state) => state,
        Err(e) => {
            let _ = generation.abort();
            return Err(e.into());
        }
    };
    if state["status"] != "completed" {
        let _ = generation.abort();
        return Err(CkptError::Failed {
            vm: name,
            message: state["error"].as_str().unwrap_or("unknown error").to_owned(),
        });
    }
    let number = generation.number();
    generation.commit(&[(name.as_str(), image.as_path())])?;
    Ok(CheckpointSummary { vm: name, generation: number, image, progress: state })
}

/// The outcome of one VM's restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreSummary {
    pub vm: String,
    pub generation: u64,
    pub image: PathBuf,
    /// `__org.mekha_query-restore` at completion.
    pub progress: Value,
}

/// The latest committed checkpoint of `dir`, or a clear refusal.
pub fn latest_checkpoint(dir: &Path) -> Result<(Store, Manifest), CkptError> {
    let store = Store::open_existing(dir)?;
    let manifest = store
        .latest()?
        .ok_or_else(|| CkptError::Refused(format!("{} holds no committed checkpoint", dir.display())))?;
    Ok((store, manifest))
}

/// Restores the VM behind `qmp` (a QEMU started with `-incoming defer`)
/// from the latest committed checkpoint of `dir` and resumes it.
pub async fn restore(
    qmp: &Qmp,
    dir: &Path,
    options: &RestoreOptions,
    progress: impl FnMut(&Value),
) -> Result<RestoreSummary, CkptError> {
    let name = vm_name(qmp).await?;
    let (store, manifest) = latest_checkpoint(dir)?;
    let image = store.resolve(&manifest, &name)?;
    let mut args = json!({ "path": image, "start": !options.paused, "time": options.time.as_str() });
    if let Some(ppm) = options.catch_up_ppm {
        args["catch-up-ppm"] = ppm.into();
    }
    if let Some(lag) = options.lag_ns {
        args["lag-ns"] = lag.into();
    }
    qmp.execute_mekha("restore", args).await?;
    let state = wait_status(qmp, "query-restore", &["loading"], progress).await?;
    if state["status"] != "completed" {
        return Err(CkptError::RestoreFailed {
            vm: name,
            message: state["error"].as_str().unwrap_or("unknown error").to_owned(),
        });
    }
    Ok(RestoreSummary { vm: name, generation: manifest.generation, image, progress: state })
}

/// True when a QMP error says the command is not in this QEMU.
pub fn is_not_mekha(e: &CkptError) -> bool {
    matches!(e, CkptError::Qmp(q) if q.is_command_not_found())
}
