// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha`: coordinated checkpoint-restart for clusters of QEMU VMs.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::exit;
use cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(cli::run(cli.command)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) => {
            eprintln!("mekha: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
