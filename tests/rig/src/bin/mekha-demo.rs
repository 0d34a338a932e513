// SPDX-License-Identifier: GPL-2.0-or-later
//! The main job's driver (README `ci/demo`): a small virtual cluster,
//! checkpointed and restarted end to end with the `mekha` CLI in spec
//! mode, as a batch job would.
//!
//! It writes its embedded default spec (three TCG VMs running the guest
//! probe on a bridge in a private network namespace), then: `mekha up`;
//! waits until the probes are mid-exchange; `mekha checkpoint`; kills every
//! QEMU as a host failure would; `mekha restart`; waits for every probe to
//! finish, and checks that the job simply went on: no reboot, no TCP or
//! UDP message lost, duplicated, reordered or corrupted, and every VM's
//! computation equal to an uninterrupted run's; `mekha down`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mekha_rig::{Artifacts, ProbeLog, SpecVm};

const VMS: usize = 3;
const MSGS: u64 = 400;
const COMPUTE: u64 = 3 << 30;
const CHUNK: u64 = 1 << 28;
const NAMESPACE: &str = "mekha-demo";

fn main() -> Result<()> {
    let artifacts = Artifacts::locate()?;
    let dir = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/demo"));
    let dir = std::path::absolute(&dir)?;
    let spec = dir.join("cluster.toml");
    if spec.exists() {
        // A previous demo that did not finish: take its cluster down.
        let _ = mekha(&artifacts, &["down", "--spec"], &spec);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(&spec, default_spec(&artifacts, &dir))?;
    println!("spec: {} ({VMS} TCG VMs on a bridge in network namespace {NAMESPACE})", spec.display());

    let started = Instant::now();
    step("mekha up", mekha(&artifacts, &["up", "--spec"], &spec)?)?;
    let logs: Vec<ProbeLog> = (0..VMS).map(|i| ProbeLog::new(dir.join(format!("node{i}.serial")))).collect();
    let outcome = run(&artifacts, &spec, &logs, started);
    // Whatever happened, the cluster goes down.
    let down = mekha(&artifacts, &["down", "--spec"], &spec);
    outcome?;
    step("mekha down", down?)?;
    println!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn run(artifacts: &Artifacts, spec: &Path, logs: &[ProbeLog], started: Instant) -> Result<()> {
    for log in logs {
        log.wait_for("the probe computing", Duration::from_secs(120), |e| e.ev == "compute")?;
    }
    while logs.iter().any(|log| log.received() < 30) {
        if started.elapsed() > Duration::from_secs(240) {
            bail!("the probes exchange no messages");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("the job runs: probes mid-exchange ({} messages received so far by node0)", logs[0].received());
    step("mekha status", mekha(artifacts, &["status", "--spec"], spec)?)?;
    step("mekha checkpoint", mekha(artifacts, &["checkpoint", "--spec"], spec)?)?;

    std::thread::sleep(Duration::from_secs(2));
    println!("killing every QEMU (a host failure) after the cluster ran on for 2 s");
    kill_all(spec)?;
    std::thread::sleep(Duration::from_secs(3));
    step("mekha restart", mekha(artifacts, &["restart", "--spec"], spec)?)?;

    let reference = artifacts.reference_checksum(COMPUTE, CHUNK)?;
    for (i, log) in logs.iter().enumerate() {
        let done = log.wait_for("done", Duration::from_secs(600), |e| e.ev == "done")?;
        let starts = log.events().iter().filter(|e| e.ev == "start").count();
        if starts != 1 {
            bail!("node{i}: the guest booted {starts} times: the restart rebooted it");
        }
        let checksum = done.json["compute"]["checksum"].as_str().unwrap_or("?").to_owned();
        println!(
            "  node{i}: computation done, checksum {checksum} ({})",
            if checksum == reference { "same as an uninterrupted run" } else { "DIFFERS from an uninterrupted run" }
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
                bail!("node{i}: messages were lost, duplicated, reordered or corrupted across the restart");
            }
        }
        if checksum != reference {
            bail!("node{i}: the computation's result differs from an uninterrupted run ({reference})");
        }
    }
    println!("the job went on across the checkpoint and the restart: nothing lost, same results");
    Ok(())
}

/// The embedded default spec, with this build's QEMU and guest.
fn default_spec(artifacts: &Artifacts, dir: &Path) -> String {
    let ips: Vec<String> = (0..VMS).map(|i| format!("10.77.0.{}", 11 + i)).collect();
    let mut out = format!(
        "# mekha demo cluster (written by mekha-demo)\n\
         name = \"demo\"\n\
         checkpoint_dir = \"checkpoints\"\n\
         state_dir = \"state\"\n\
         qemu = {:?}\n\n\
         [network]\nnamespace = \"{NAMESPACE}\"\n\n\
         [checkpoint]\nmode = \"auto\"\n",
        artifacts.qemu.display().to_string()
    );
    for i in 0..VMS {
        let peers: Vec<&str> = ips.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, ip)| ip.as_str()).collect();
        let vm = SpecVm {
            name: format!("node{i}"),
            memory_mib: 256,
            probe_args: format!(
                "mekha.id={i} mekha.ip={}/24 probe.peers={} probe.msgs={MSGS} probe.msg_interval_ms=20 \
                 probe.compute={COMPUTE} probe.compute_chunk={CHUNK} probe.mem=32 probe.rate=64",
                ips[i],
                peers.join(",")
            )
            .split(' ')
            .map(str::to_owned)
            .collect(),
            serial: dir.join(format!("node{i}.serial")),
            mac: format!("52:54:00:77:00:{:02x}", 11 + i),
            host: None,
        };
        out += &vm.toml(artifacts);
    }
    out
}

fn mekha(artifacts: &Artifacts, args: &[&str], spec: &Path) -> Result<std::process::Output> {
    Command::new(&artifacts.mekha).args(args).arg(spec).output().context("running mekha")
}

/// Prints a mekha command's output; fails on a non-zero exit.
fn step(what: &str, out: std::process::Output) -> Result<()> {
    println!("$ {what}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    Ok(())
}

/// Kills every QEMU of the spec with SIGKILL (pids from its state).
fn kill_all(spec: &Path) -> Result<()> {
    let state = spec.parent().unwrap().join("state");
    for i in 0..VMS {
        let pid: i32 = std::fs::read_to_string(state.join(format!("node{i}.pid")))?.trim().parse()?;
        // SAFETY: a plain signal to a process of ours.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    Ok(())
}
