// SPDX-License-Identifier: GPL-2.0-or-later
//! The cluster checkpoint benchmark (ci/bench-cluster; not a test, CI
//! never runs it): for each N and repetition, mekha's coordinated
//! checkpoint and restart (`mekha checkpoint --mode cow`, then `--mode
//! mtd`; `mekha restore`) and stock QEMU scripted over QMP, each on a fresh
//! cluster of N VMs. Prints a
//! table per N with the design's targets, and writes results.md and
//! results.json into the output directory (docs/benchmarks.md).
//!
//! It and the QEMUs and CLIs it starts run at nice -10 by default
//! (`--nice`) to damp the noise of other load. Every QEMU is killed and
//! every namespace deleted at exit, on Ctrl-C, SIGTERM and errors; images
//! are deleted once measured.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use mekha_rig::bench::cluster::{workload, Bench};
use mekha_rig::bench::cluster_data::Results;
use mekha_rig::bench::cluster_report::{summarize, summary_json, tables};
use mekha_rig::bench::host::{loadavg, Host};
use mekha_rig::bench::stats::now;
use mekha_rig::bench::{log, run_until_signal, start};

#[derive(Parser)]
#[command(about = "Cluster checkpoint benchmark: mekha beside stock QEMU scripted over QMP")]
// ci/bench-cluster passes --out, and the caller's own --out after it wins.
#[command(args_override_self = true)]
struct Args {
    /// N = 1,3 and one repetition.
    #[arg(long)]
    quick: bool,
    /// Output directory (default target/bench/cluster).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Repetitions (default 3, --quick 1).
    #[arg(long)]
    reps: Option<usize>,
    /// Cluster sizes, comma-separated (default 1,2,3,4; --quick 1,3).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Nice value of the bench, its QEMUs and the mekha CLI (0 leaves it).
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    nice: i32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let sizes = args.sizes.unwrap_or_else(|| if args.quick { vec![1, 3] } else { vec![1, 2, 3, 4] });
    if sizes.iter().any(|&n| !(1..=200).contains(&n)) {
        bail!("cluster sizes must be within 1..200");
    }
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 });
    let (nice, artifacts, out) = start("cluster", "network namespaces, taps", args.nice, args.out)?;
    let sizes_text: Vec<String> = sizes.iter().map(ToString::to_string).collect();
    log(&format!("output in {}; N = {}; {reps} repetition(s)", out.display(), sizes_text.join(",")));

    let mut host = Host::at_start();
    let started = now();
    let mut bench = Bench::new(artifacts, &out)?;
    run_until_signal(bench.run(&sizes, reps))?;
    let elapsed = now() - started;
    host.loadavg_end = loadavg();
    let mut data = Results {
        quick: args.quick,
        reps,
        sizes,
        nice,
        elapsed_s: elapsed,
        workload: workload(),
        host,
        runs: bench.runs,
        summary: Default::default(),
    };
    let summary = summarize(&data);
    data.summary = summary_json(&summary);
    let text = tables(&data, &summary);
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&data)? + "\n")?;
    std::fs::write(out.join("results.md"), &text)?;
    print!("{text}");
    log(&format!("done in {:.1} min", elapsed / 60.0));
    Ok(())
}
