// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha`: coordinated checkpoint-restart for clusters of QEMU VMs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mekha_coordinator::qmp::{Qmp, QmpError};
use mekha_coordinator::{exit, info};

/// Exit codes: 0 success, 1 failure, 2 bad usage, 3 a VM unreachable over
/// QMP, 4 a VM whose QEMU lacks the mekha patches.
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

async fn run_info(sockets: Vec<PathBuf>, json: bool) -> Result<(), Failure> {
    let mut all = Vec::new();
    for sock in &sockets {
        let qmp = Qmp::connect(sock).await?;
        let info = info::query(&qmp).await.map_err(Failure::from).map_err(|f| Failure {
            message: format!("{}: {}", sock.display(), f.message),
            ..f
        })?;
        all.push((sock, info));
    }
    if json {
        let doc: Vec<_> = all
            .iter()
            .map(|(sock, info)| serde_json::json!({ "qmp": sock, "info": info }))
            .collect();
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Info { qmp, json } => run_info(qmp, json).await,
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
