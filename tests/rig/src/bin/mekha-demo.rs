// SPDX-License-Identifier: GPL-2.0-or-later
//! The main job's driver (README): boots a small virtual cluster on the
//! patched QEMU, shows what mekha's library in each VM reports and what the
//! guest probes do, then tears everything down.
//!
//! Checkpoint and restart of the cluster join this run as they land.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mekha_rig::{Artifacts, Cluster, ClusterConfig};

const VMS: usize = 3;
const MSGS: u64 = 200;

#[tokio::main]
async fn main() -> Result<()> {
    let artifacts = Artifacts::locate()?;
    let dir = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/demo"));
    let _ = std::fs::remove_dir_all(&dir);
    let config = ClusterConfig {
        vms: VMS,
        memory_mib: 256,
        probe_args: [
            format!("probe.msgs={MSGS}"),
            "probe.msg_interval_ms=20".into(),
            "probe.compute=500000000".into(),
            "probe.compute_chunk=134217728".into(),
            "probe.mem=32".into(),
            "probe.rate=64".into(),
        ]
        .to_vec(),
    };
    println!("booting {VMS} VMs (TCG) on a bridge in a private network namespace; files in {}", dir.display());
    let started = Instant::now();
    let mut cluster = Cluster::launch(&artifacts, &dir, &config)?;
    println!("namespace {}", cluster.netns.name());

    for vm in &mut cluster.vms {
        let qmp = vm.qmp().await?;
        let info =
            mekha_coordinator::info::query(&qmp).await.with_context(|| format!("{}: query-info", vm.config.name))?;
        println!(
            "  {}: mekha {} ({}) in QEMU {} [{}], {} MiB guest RAM, capabilities: {}",
            vm.config.name,
            info.version,
            info.build_id,
            info.qemu_version,
            info.accelerator,
            info.ram_size >> 20,
            info.capabilities.join(", ")
        );
    }

    let deadline = Duration::from_secs(300);
    for vm in &cluster.vms {
        let log = vm.log();
        let start = log.wait_for("start", deadline, |e| e.ev == "start")?;
        let done = log.wait_for("done", deadline, |e| e.ev == "done")?;
        let compute = &done.json["compute"];
        println!(
            "  {}: probe up {:.1} s after guest boot; done: checksum {} after {} steps; dirtied {} pages",
            vm.config.name,
            start.u64("mono_ns").unwrap_or(0) as f64 / 1e9,
            compute["checksum"].as_str().unwrap_or("?"),
            compute["steps"],
            done.json["dirty"]["pages_written"],
        );
        for link in done.json["net"].as_array().into_iter().flatten() {
            println!(
                "      {} {:>3} sent {:>4} received {:>4}  lost {} dup {} reordered {} corrupt {}",
                link["peer"].as_str().unwrap_or("?"),
                link["proto"].as_str().unwrap_or("?"),
                link["sent"],
                link["received"],
                link["lost"],
                link["dup"],
                link["reordered"],
                link["corrupt"],
            );
            if ["lost", "dup", "reordered", "corrupt"].iter().any(|k| link[*k] != 0) {
                bail!("{}: messages were lost, duplicated, reordered or corrupted", vm.config.name);
            }
        }
    }
    println!("cluster ran to completion in {:.1} s; tearing down", started.elapsed().as_secs_f64());
    drop(cluster);
    Ok(())
}
