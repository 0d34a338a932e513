// SPDX-License-Identifier: GPL-2.0-or-later
//! The checkpoint benchmark (not a test; CI never runs it): mekha's MTD,
//! copy-on-write and sealed checkpoints beside stock QEMU's stop+migrate,
//! live migrate, background-snapshot and snapshot-save on the reference
//! workload of the design's "Targets", each on a freshly booted VM, then
//! restores of their images. Prints a table per VM size and writes
//! results.md and results.json into the output directory
//! (docs/benchmarks.md).
//! Then, once per run, the guest clocks across a restore gap: a mekha
//! checkpoint and a stock stop + migrate, QEMU killed, --clock-gap
//! seconds without QEMU, a restore into a fresh QEMU.
//!
//! It and the QEMUs and dd it starts run at nice -10 by default (`--nice`)
//! to damp the noise of other load. Every QEMU is killed at exit, on
//! Ctrl-C, SIGTERM and errors; images are deleted once measured.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use mekha_rig::bench::checkpoint::{workload, Bench, Options};
use mekha_rig::bench::checkpoint_data::{Method, Results};
use mekha_rig::bench::checkpoint_report::{summarize, tables};
use mekha_rig::bench::host::{loadavg, Host};
use mekha_rig::bench::stats::now;
use mekha_rig::bench::{log, run_until_signal, start};

/// The --methods value of the clock measurement.
const CLOCKS: &str = "clocks";

#[derive(Parser)]
#[command(about = "Checkpoint benchmark: mekha's checkpoints beside stock QEMU's ways of saving a running VM")]
#[command(args_override_self = true)]
struct Args {
    /// 512 MiB only, one repetition, live migration capped at 20 s.
    #[arg(long)]
    quick: bool,
    /// Output directory (default target/bench/checkpoint).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Repetitions (default 3, --quick 1).
    #[arg(long)]
    reps: Option<usize>,
    /// Cap of stock live migration, s (default 60, --quick 20).
    #[arg(long)]
    live_cap: Option<f64>,
    /// VM sizes in MiB, comma-separated (default 512,2048; --quick 512).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<u32>>,
    /// Subset of mekha,mekha-cow,mekha-sealed,stop-migrate,live-migrate,
    /// bg-snapshot,snapshot-save,clocks (default: all; clocks: the guest
    /// clocks across a restore gap, once per run, after the others).
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
    /// Leave out clocks.
    #[arg(long)]
    no_clocks: bool,
    /// Seconds without QEMU between checkpoint and restore in clocks
    /// (also with --quick).
    #[arg(long, default_value_t = 30.0)]
    clock_gap: f64,
    /// Nice value of the bench, its QEMUs and dd (0 leaves it).
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    nice: i32,
}

/// The methods asked for, in table order, and whether the clocks are.
fn methods(asked: Option<Vec<String>>, no_clocks: bool) -> Result<(Vec<Method>, bool)> {
    let Some(asked) = asked else { return Ok((Method::ALL.to_vec(), !no_clocks)) };
    let mut out = Vec::new();
    let mut clocks = false;
    for name in &asked {
        match Method::from_name(name) {
            Some(m) => out.push(m),
            None if name == CLOCKS => clocks = !no_clocks,
            None => bail!("unknown method {name}"),
        }
    }
    out.sort();
    out.dedup();
    Ok((out, clocks))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (methods, clocks) = methods(args.methods, args.no_clocks)?;
    let sizes = args.sizes.unwrap_or_else(|| if args.quick { vec![512] } else { vec![512, 2048] });
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 });
    let live_cap = args.live_cap.unwrap_or(if args.quick { 20.0 } else { 60.0 });
    let (nice, artifacts, out) = start("checkpoint", "drop_caches, nice", args.nice, args.out)?;
    log(&format!("output in {}; {reps} repetition(s); live migration capped at {live_cap:.0} s", out.display()));

    let mut host = Host::at_start();
    let started = now();
    let mut bench = Bench::new(artifacts, &out)?;
    let clock_gap_s = clocks.then_some(args.clock_gap);
    let opts = Options { sizes, reps, methods, live_cap_s: live_cap, clock_gap_s };
    run_until_signal(bench.run(&opts))?;
    let elapsed = now() - started;
    host.loadavg_end = loadavg();
    let mut data = Results {
        quick: args.quick,
        reps,
        nice,
        live_cap_s: live_cap,
        elapsed_s: elapsed,
        workload: workload(),
        host,
        results: std::mem::take(&mut bench.results),
        restores: std::mem::take(&mut bench.restores),
        dd: std::mem::take(&mut bench.dd),
        controls_ms: std::mem::take(&mut bench.controls),
        errors: std::mem::take(&mut bench.errors),
        clocks: bench.clocks.take(),
        summary: Default::default(),
    };
    let summary = summarize(&data);
    data.summary = serde_json::to_value(&summary)?;
    let text = tables(&data, &summary);
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&data)? + "\n")?;
    std::fs::write(out.join("results.md"), &text)?;
    print!("{text}");
    log(&format!("done in {:.1} min", elapsed / 60.0));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_default_to_all_in_table_order_and_the_clocks() {
        assert_eq!(methods(None, false).unwrap(), (Method::ALL.to_vec(), true));
        assert_eq!(methods(None, true).unwrap(), (Method::ALL.to_vec(), false));
        let asked = vec!["stop-migrate".to_owned(), "mekha".to_owned(), "clocks".to_owned()];
        assert_eq!(methods(Some(asked.clone()), true).unwrap(), (vec![Method::Mekha, Method::StopMigrate], false));
        assert_eq!(methods(Some(asked), false).unwrap(), (vec![Method::Mekha, Method::StopMigrate], true));
        assert_eq!(methods(Some(vec!["clocks".into()]), false).unwrap(), (vec![], true));
        assert!(methods(Some(vec!["nope".into()]), false).is_err());
    }
}
