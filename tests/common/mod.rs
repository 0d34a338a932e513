// SPDX-License-Identifier: GPL-2.0-or-later
//! Helpers shared by the system tests.

#![allow(dead_code)] // each test binary uses its own share of these

pub mod fault;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mekha_ckpt_core::session::checkpoint::{self, Status};
use mekha_ckpt_core::session::commands::{CheckpointEvent, QueryCheckpoint};
use mekha_coordinator::qmp::Qmp;
use mekha_rig::{Artifacts, ClusterConfig};
use serde_json::Value;

/// A fresh directory for one test's VMs (QMP sockets, serial logs, QEMU's
/// stderr), kept after the run so a failure can be read.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("MEKHA_TARGET_DIR")).join("system-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the test directory");
    dir
}

/// The artefacts ci/build made; the system tests need them and root.
pub fn artifacts() -> Artifacts {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the system tests need root (network namespaces, taps)");
    Artifacts::locate().expect("locating the patched QEMU and the guest rig")
}

/// Runs `mekha ARGS --qmp QMP --dir DIR`.
pub fn mekha(artifacts: &Artifacts, args: &[&str], qmp: &Path, dir: &Path) -> Output {
    Command::new(&artifacts.mekha).args(args).arg("--qmp").arg(qmp).arg("--dir").arg(dir).output().unwrap()
}

/// The `--json` summary of a `mekha` run that must have succeeded.
pub fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "mekha failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json output")
}

/// The `--json` summary of a `mekha` run that must have succeeded, as
/// the coordinator's type of it (`ClusterCheckpoint`, `ClusterRestore`).
pub fn summary_of<T: serde::de::DeserializeOwned>(out: &Output) -> T {
    serde_json::from_value(json_of(out)).expect("the summary's type")
}

/// The job of the two-host tests: each VM exchanges `PAIR_MSGS` TCP and
/// UDP messages with the other and computes.
pub const PAIR_MSGS: u64 = 300;
pub const PAIR_COMPUTE: u64 = 3 << 30;
pub const PAIR_CHUNK: u64 = 1 << 28;

/// Probe arguments of VM `i` of that job, at `ips[i]`.
pub fn pair_probe_args(i: usize, ips: [&str; 2]) -> Vec<String> {
    vec![
        format!("mekha.id={i}"),
        format!("mekha.ip={}/24", ips[i]),
        format!("probe.peers={}", ips[1 - i]),
        format!("probe.msgs={PAIR_MSGS}"),
        "probe.msg_interval_ms=20".into(),
        format!("probe.compute={PAIR_COMPUTE}"),
        format!("probe.compute_chunk={PAIR_CHUNK}"),
        "probe.mem=16".into(),
        "probe.rate=32".into(),
    ]
}

/// Waits until every probe computes and has received some of its
/// messages (not all): the job is mid-exchange.
pub fn wait_mid_exchange(logs: &[mekha_rig::ProbeLog], boot: Duration) {
    for log in logs {
        log.wait_for("compute", boot, |e| e.ev == "compute").unwrap();
    }
    let started = std::time::Instant::now();
    while logs.iter().any(|log| log.received() < 20) {
        assert!(started.elapsed() < boot, "the probes exchange nothing");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for the end of VM `vm`'s part of that job and checks that it went
/// on across the restart: every message received, none lost, duplicated,
/// reordered or corrupted, and the computation's checksum = `reference`.
pub fn assert_pair_job_went_on(log: &mekha_rig::ProbeLog, vm: &str, reference: &str) {
    let done = log.wait_for("done", Duration::from_secs(600), |e| e.ev == "done").unwrap();
    for link in done.json["net"].as_array().expect("net summary") {
        for counter in ["lost", "dup", "reordered", "corrupt"] {
            assert_eq!(link[counter], 0, "{vm}: {counter} in {link}");
        }
        assert_eq!(link["received"], PAIR_MSGS, "{vm}: {link}");
    }
    assert_eq!(done.json["compute"]["checksum"].as_str(), Some(reference), "{vm}");
}

/// What an uninterrupted run of the probe's computation gives.
pub fn reference_checksum(steps: u64, chunk: u64) -> String {
    artifacts().reference_checksum(steps, chunk).expect("the probe's reference run")
}

/// Runs `mekha ARGS --qmp Q1 --qmp Q2 ... --dir DIR`.
pub fn mekha_all(artifacts: &Artifacts, args: &[&str], qmps: &[PathBuf], dir: &Path) -> Output {
    mekha_all_command(artifacts, args, qmps, dir).output().unwrap()
}

/// `mekha ARGS --qmp Q1 --qmp Q2 ... --dir DIR`, to run.
pub fn mekha_all_command(artifacts: &Artifacts, args: &[&str], qmps: &[PathBuf], dir: &Path) -> Command {
    let mut cmd = Command::new(&artifacts.mekha);
    cmd.args(args);
    for qmp in qmps {
        cmd.arg("--qmp").arg(qmp);
    }
    cmd.arg("--dir").arg(dir);
    cmd
}

/// Waits for the checkpoint to be completed or failed, from its events:
/// polling query-checkpoint would renew the lease of a coordinator that
/// is meant to be gone.
pub async fn wait_checkpoint_settled(qmp: &Qmp) -> checkpoint::Info {
    let mut events = qmp.subscribe();
    let settled = |s: &checkpoint::Info| matches!(s.status, Status::Completed | Status::Failed);
    let state = qmp.call::<QueryCheckpoint>(&Default::default()).await.unwrap();
    if settled(&state) {
        return state;
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let e = events.recv().await.expect("QMP events");
            if let Some(state) = e.mekha::<CheckpointEvent>().filter(settled) {
                return state;
            }
        }
    })
    .await
    .expect("the checkpoint did not settle in 60 s")
}

/// The cluster job of the cluster tests: `vms` VMs of 256 MiB, each
/// computing and exchanging `msgs` sequenced TCP and UDP messages with
/// every other (`probe.msgs`; a large number: the exchange runs all along).
pub fn cluster_job(vms: usize, msgs: u64) -> ClusterConfig {
    ClusterConfig {
        vms,
        memory_mib: 256,
        probe_args: vec![
            format!("probe.msgs={msgs}"),
            "probe.msg_interval_ms=20".into(),
            format!("probe.compute={CLUSTER_COMPUTE}"),
            format!("probe.compute_chunk={CLUSTER_CHUNK}"),
            "probe.mem=16".into(),
            "probe.rate=32".into(),
            "probe.clock_ms=1000".into(),
        ],
    }
}

/// The computation of [`cluster_job`]'s probes.
pub const CLUSTER_COMPUTE: u64 = 3 << 30;
pub const CLUSTER_CHUNK: u64 = 1 << 28;
