// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha`: coordinated checkpoint-restart for clusters of QEMU VMs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mekha_coordinator::qmp::{Qmp, QmpError};
use mekha_coordinator::vm_ckpt::{self, CaptureMode, CheckpointOptions, CkptError, RestoreOptions, TimePolicy};
use mekha_coordinator::{exit, image_cmd, info};

/// Exit codes: 0 success, 1 failure, 2 bad usage, 3 a VM unreachable over
/// QMP, 4 a VM whose QEMU lacks the mekha patches, 5 an image or checkpoint
/// is damaged (`image verify`, `image inspect`).
#[derive(Parser)]
#[command(name = "mekha", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what the mekha library in each VM's QEMU reports.
    Info {
        /// QMP socket of a VM (repeat for several VMs).
        #[arg(long = "qmp", value_name = "SOCK", required = true)]
        qmp: Vec<PathBuf>,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Checkpoint the VM behind a QMP socket into a checkpoint directory;
    /// exits 0 once the checkpoint is committed.
    Checkpoint {
        /// QMP socket of the VM.
        #[arg(long = "qmp", value_name = "SOCK")]
        qmp: PathBuf,
        /// Checkpoint directory (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// How guest RAM is captured: cow stops the VM only to
        /// write-protect its RAM (pause independent of the dirty rate);
        /// mtd copies while it runs and stops for the last dirty pages;
        /// auto takes cow where RAM is private anonymous and the kernel
        /// has userfaultfd write protection.
        #[arg(long, value_enum, default_value_t = CaptureMode::Auto)]
        mode: CaptureMode,
        /// End the live phase after this long, whatever the dirty rate.
        #[arg(long, value_name = "MS")]
        time_budget_ms: Option<u64>,
        /// Memory budget of the staging area in MiB (default: guest RAM).
        #[arg(long, value_name = "MIB")]
        staging_mib: Option<u64>,
        /// MTD epoch: dirty-bitmap sync interval.
        #[arg(long, value_name = "MS")]
        epoch_ms: Option<u64>,
        /// Print one JSON summary instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Restore the VM behind a QMP socket (QEMU started with the VM's
    /// command line plus `-incoming defer`) from the latest committed
    /// checkpoint of a directory, and resume it.
    Restore {
        /// QMP socket of the waiting QEMU.
        #[arg(long = "qmp", value_name = "SOCK")]
        qmp: PathBuf,
        /// Checkpoint directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Leave the VM paused after the restore (resume with QMP `cont`).
        #[arg(long)]
        paused: bool,
        /// How the restored VM's clocks stand to the host's: continue
        /// (every clock resumes from the checkpoint instant), host (stock:
        /// the RTC jumps by the gap), catch-up (continue, then run guest
        /// time faster until it has caught up with the host).
        #[arg(long, value_enum, default_value_t = TimePolicy::Continue)]
        time: TimePolicy,
        /// Catch-up rate in parts per million (default 50000: 5% faster).
        #[arg(long, value_name = "PPM")]
        catch_up_ppm: Option<u32>,
        /// The guest wall clock's lag behind the host at resume, instead
        /// of the time since the checkpoint (give every VM of a cluster
        /// the same).
        #[arg(long, value_name = "NS", allow_negative_numbers = true)]
        lag_ns: Option<i64>,
        /// Print one JSON summary instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show how a VM's clocks stand to the host's, or change its time
    /// policy (`--policy`).
    Time {
        /// QMP socket of the VM.
        #[arg(long = "qmp", value_name = "SOCK")]
        qmp: PathBuf,
        /// New policy: continue keeps the current lag, host drops it (the
        /// RTC jumps to the host's time), catch-up runs guest time faster
        /// until the lag is gone.
        #[arg(long, value_enum)]
        policy: Option<TimePolicy>,
        /// Catch-up rate in parts per million (default 50000).
        #[arg(long, value_name = "PPM", requires = "policy")]
        catch_up_ppm: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inspect or verify checkpoint images (a file, or a checkpoint directory).
    Image {
        #[command(subcommand)]
        command: image_cmd::ImageCommand,
    },
}

/// A failure with the exit code it maps to.
struct Failure {
    code: i32,
    message: String,
}

impl From<QmpError> for Failure {
    fn from(e: QmpError) -> Failure {
        let code = match &e {
            QmpError::Connect { .. } | QmpError::Closed { .. } | QmpError::Protocol { .. } => exit::UNREACHABLE,
            e if e.is_command_not_found() => exit::NOT_MEKHA,
            _ => exit::FAILURE,
        };
        let message = if code == exit::NOT_MEKHA {
            format!("{e} (this QEMU was not built with the mekha patches)")
        } else {
            e.to_string()
        };
        Failure { code, message }
    }
}

async fn run_time(sock: PathBuf, policy: Option<TimePolicy>, ppm: Option<u32>, json: bool) -> Result<(), Failure> {
    let qmp = Qmp::connect(&sock).await?;
    if let Some(policy) = policy {
        let mut args = serde_json::json!({ "policy": policy.as_str() });
        if let Some(ppm) = ppm {
            args["catch-up-ppm"] = ppm.into();
        }
        qmp.execute_mekha("set-time", args).await?;
    }
    let t = qmp.execute_mekha("query-time", serde_json::Value::Null).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&t).expect("JSON encodes"));
        return Ok(());
    }
    let s = |k: &str| t[k].as_i64().unwrap_or(0) as f64 / 1e9;
    let catching = match t["catching-up"].as_bool() {
        Some(true) => format!(", catching up at {} ppm", t["catch-up-ppm"]),
        _ => String::new(),
    };
    println!(
        "{}: time policy {}, guest wall clock {:.3} s behind the host{catching}; VM clock {:.3} s (catch-up moved it {:.3} s)",
        sock.display(),
        t["policy"].as_str().unwrap_or("?"),
        s("lag-ns"),
        s("virtual-ns"),
        s("advanced-ns"),
    );
    Ok(())
}

async fn run_info(sockets: Vec<PathBuf>, json: bool) -> Result<(), Failure> {
    let mut all = Vec::new();
    for sock in &sockets {
        let qmp = Qmp::connect(sock).await?;
        let info = info::query(&qmp)
            .await
            .map_err(Failure::from)
            .map_err(|f| Failure { message: format!("{}: {}", sock.display(), f.message), ..f })?;
        all.push((sock, info));
    }
    if json {
        let doc: Vec<_> = all.iter().map(|(sock, info)| serde_json::json!({ "qmp": sock, "info": info })).collect();
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON encodes"));
        return Ok(());
    }
    for (sock, info) in all {
        println!(
            "{}: VM {} ({}, {}), QEMU {}, mekha {} ({}), {} MiB RAM in {} blocks, capabilities: {}",
            sock.display(),
            info.vm_name.as_deref().unwrap_or("(unnamed)"),
            info.machine,
            info.accelerator,
            info.qemu_version,
            info.version,
            info.build_id,
            info.ram_size >> 20,
            info.ram_blocks.len(),
            if info.capabilities.is_empty() { "none".to_owned() } else { info.capabilities.join(", ") },
        );
    }
    Ok(())
}

impl From<CkptError> for Failure {
    fn from(e: CkptError) -> Failure {
        match e {
            CkptError::Qmp(q) => Failure::from(q),
            e => Failure { code: exit::FAILURE, message: e.to_string() },
        }
    }
}

/// Progress on a terminal (stderr), one line rewritten in place.
fn progress_line(enabled: bool) -> impl FnMut(&serde_json::Value) {
    move |state| {
        if !enabled {
            return;
        }
        let mib = |k: &str| state[k].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64;
        let line = match state["status"].as_str().unwrap_or("") {
            "loading" => format!("restore: verified {:.0} MiB", mib("verified-bytes")),
            status if state["mode"] == "cow" => format!(
                "checkpoint: {status:<10} copy-on-write, copied {} pages, {} guest writes waited, staged {:.0} MiB, written {:.0} MiB",
                state["copied-pages"], state["wp-faults"], mib("staged-bytes"), mib("written-bytes")
            ),
            status => format!(
                "checkpoint: {status:<10} epochs {} copied {} pages, non-dirty {} dirty {} stale {}, staged {:.0} MiB, written {:.0} MiB",
                state["epochs"], state["copied-pages"], state["non-dirty-pages"], state["dirty-pages"],
                state["stale-pages"], mib("staged-bytes"), mib("written-bytes")
            ),
        };
        eprint!("\r\x1b[K{line}");
    }
}

/// Runs one VM's checkpoint or restore with progress on a terminal, and
/// prints the JSON summary when asked. Returns the summary when the
/// caller prints text instead.
async fn run_with_progress<S: serde::Serialize, F: std::future::Future<Output = Result<S, CkptError>>>(
    dir: &std::path::Path,
    generation: impl Fn(&S) -> u64,
    json: bool,
    run: impl FnOnce(Box<dyn FnMut(&serde_json::Value) + Send>) -> F,
) -> Result<Option<S>, Failure> {
    use std::io::IsTerminal;
    let tty = !json && std::io::stderr().is_terminal();
    let summary = run(Box::new(progress_line(tty))).await;
    if tty {
        eprintln!();
    }
    let summary = summary?;
    if !json {
        return Ok(Some(summary));
    }
    let doc = serde_json::json!({ "dir": dir, "generation": generation(&summary), "vms": [summary] });
    println!("{}", serde_json::to_string_pretty(&doc).expect("JSON encodes"));
    Ok(None)
}

async fn run_checkpoint(sock: PathBuf, dir: PathBuf, options: CheckpointOptions, json: bool) -> Result<(), Failure> {
    let qmp = Qmp::connect(&sock).await?;
    let summary = run_with_progress(
        &dir,
        |s: &vm_ckpt::CheckpointSummary| s.generation,
        json,
        |progress| vm_ckpt::checkpoint(&qmp, &dir, &options, progress),
    )
    .await?;
    if let Some(summary) = summary {
        let p = &summary.progress;
        let ms = |k: &str| p[k].as_u64().unwrap_or(0) as f64 / 1e6;
        let how = match p["mode"].as_str() {
            Some("cow") => format!(
                "copy-on-write, {} guest writes waited for a copy, copied in {:.0} ms",
                p["wp-faults"],
                ms("capture-ns")
            ),
            _ => format!(
                "{} pages copied in the pause; live phase {:.0} ms, ended by {}",
                p["final-pages"],
                ms("live-ns"),
                p["end-reason"].as_str().unwrap_or("?")
            ),
        };
        println!(
            "{}: checkpoint generation {} committed in {} ({:.0} ms; paused {:.2} ms; {how}; staging peak {} MiB)",
            summary.vm,
            summary.generation,
            dir.display(),
            ms("total-ns"),
            ms("pause-ns"),
            p["staging-peak-bytes"].as_u64().unwrap_or(0) >> 20,
        );
        if let Some(reason) = p["mode-reason"].as_str() {
            println!("{}: copy-on-write was not possible, MTD used: {reason}", summary.vm);
        }
    }
    Ok(())
}

async fn run_restore(sock: PathBuf, dir: PathBuf, options: RestoreOptions, json: bool) -> Result<(), Failure> {
    let qmp = Qmp::connect(&sock).await?;
    let summary = run_with_progress(
        &dir,
        |s: &vm_ckpt::RestoreSummary| s.generation,
        json,
        |progress| vm_ckpt::restore(&qmp, &dir, &options, progress),
    )
    .await?;
    if let Some(summary) = summary {
        let p = &summary.progress;
        println!(
            "{}: restored from generation {} in {:.0} ms ({} MiB, {}), {}",
            summary.vm,
            summary.generation,
            p["total-ns"].as_u64().unwrap_or(0) as f64 / 1e6,
            p["ram-bytes"].as_u64().unwrap_or(0) >> 20,
            if p["lazy"] == true { "mapped lazily" } else { "read" },
            if options.paused { "paused" } else { "running" },
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Info { qmp, json } => run_info(qmp, json).await,
            Command::Time { qmp, policy, catch_up_ppm, json } => run_time(qmp, policy, catch_up_ppm, json).await,
            Command::Checkpoint { qmp, dir, mode, time_budget_ms, staging_mib, epoch_ms, json } => {
                let options = CheckpointOptions { mode, time_budget_ms, staging_mib, epoch_ms, ..Default::default() };
                run_checkpoint(qmp, dir, options, json).await
            }
            Command::Restore { qmp, dir, paused, time, catch_up_ppm, lag_ns, json } => {
                run_restore(qmp, dir, RestoreOptions { paused, time, catch_up_ppm, lag_ns }, json).await
            }
            Command::Image { command } => {
                image_cmd::run(command).map_err(|f| Failure { code: f.code, message: f.message })
            }
        }
    });
    match result {
        Ok(()) => ExitCode::from(exit::OK as u8),
        Err(f) => {
            eprintln!("mekha: {}", f.message);
            ExitCode::from(f.code as u8)
        }
    }
}
