// SPDX-License-Identifier: GPL-2.0-or-later
//! The fault-matrix tests' shared part: a `mekha` run stopped at a step of
//! its protocol (`MEKHA_COORDINATOR_FAULT=STEP:stop`) while the test fails
//! another part of the cluster, and the checks every case makes of the
//! checkpoint directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mekha_coordinator::qmp::Qmp;
use mekha_rig::{Artifacts, ProbeLog};
use serde_json::Value;

/// The lease of every case: short, so that VMs left alone settle soon.
pub const LEASE_MS: &str = "1000";
pub const MODES: [&str; 2] = ["cow", "mtd"];
pub const CHECKPOINT_STEPS: [&str; 6] = ["prepare", "live", "rendezvous", "stopped", "persisting", "committing"];

/// Runs `cmd` (a `mekha` command) stopped at `step`: once it stopped
/// there, `inject(PID)` fails what it fails, then the run goes on to its
/// end.
/// How long it ran until it stopped, and its output.
pub fn stopped_at(mut cmd: Command, step: &str, inject: impl FnOnce(u32)) -> (Duration, Output) {
    let started = Instant::now();
    let mut child = cmd
        .env("MEKHA_COORDINATOR_FAULT", format!("{step}:stop"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("{step}: mekha ended ({status}) before it got there: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The third field of /proc/PID/stat: T once SIGSTOP took effect.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T')) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{step}: mekha never got there");
        std::thread::sleep(Duration::from_millis(2));
    }
    let reached = started.elapsed();
    inject(pid);
    // SAFETY: a plain signal to the child this function started.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    (reached, child.wait_with_output().unwrap())
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The generation `MANIFEST.json` commits (0: none yet).
pub fn committed_generation(images: &Path) -> u64 {
    std::fs::read(images.join("MANIFEST.json"))
        .map_or(0, |m| serde_json::from_slice::<Value>(&m).unwrap()["generation"].as_u64().unwrap())
}

/// `mekha image verify` of the latest generation passes.
pub fn verifies(artifacts: &Artifacts, images: &Path) {
    let verify = Command::new(&artifacts.mekha).args(["image", "verify"]).arg(images).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

/// Waits for a probe event `ev` logged after the first `since` events.
pub fn wait_new_event(log: &ProbeLog, since: usize, ev: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !log.events().iter().skip(since).any(|e| e.ev == ev) {
        assert!(Instant::now() < deadline, "no {ev} event in {}: {}", log.path().display(), log.tail(5));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (10 s at most) for the VM behind `sock` to run: a VM resumes at
/// the instant it was given, which may be ahead still.
pub async fn wait_running(sock: &Path) {
    let qmp = Qmp::connect(sock).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while qmp.status().await.unwrap().status != "running" {
        assert!(Instant::now() < deadline, "{}: not resumed", sock.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The processes `pid` started (its threads' children).
pub fn children(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let listed = tasks.flatten().map(|t| std::fs::read_to_string(t.path().join("children")).unwrap_or_default());
    listed.flat_map(|l| l.split_whitespace().map(|p| p.parse().unwrap()).collect::<Vec<u32>>()).collect()
}

/// The verdict on a checkpoint that lost node1 (or `way`, the agent or
/// host it is reached through) at `step`, from its output and the
/// generation committed before: once
/// every image is durable (committing) the cut is whole and is committed;
/// before, the checkpoint fails naming node1 and commits nothing. Checks
/// that the latest generation verifies; says what came of it.
pub fn checkpoint_verdict(
    case: &str,
    step: &str,
    out: &Output,
    before: u64,
    way: &str,
    artifacts: &Artifacts,
    images: &Path,
) -> String {
    let committed = committed_generation(images);
    let said = stderr(out);
    eprintln!("{case}: {}", said.lines().last().unwrap_or_default());
    let verdict = if step == "committing" {
        assert!(out.status.success(), "{case}: {said}");
        assert_eq!(committed, before + 1, "{case}");
        format!("committed generation {committed} (every image durable before the fault)")
    } else {
        assert!(!out.status.success(), "{case}: committed without node1");
        assert!(said.contains("node1") || said.contains(way), "{case}: {said}");
        assert_eq!(committed, before, "{case}: a generation was committed");
        format!("failed naming node1; generation {committed} latest")
    };
    verifies(artifacts, images);
    verdict
}

/// The VMs behind `socks` settle their checkpoints and run: what each
/// checkpoint came to.
pub async fn settled_and_running(case: &str, socks: &[PathBuf]) -> Vec<String> {
    let mut outcomes = Vec::new();
    for sock in socks {
        let qmp = Qmp::connect(sock).await.unwrap();
        let settled = crate::common::wait_checkpoint_settled(&qmp).await;
        let status = qmp.status().await.unwrap();
        assert_eq!(status.status, "running", "{case}: {} after {settled:?}", sock.display());
        if let Some(error) = &settled.error {
            eprintln!("{case}: {}'s checkpoint: {error}", sock.display());
        }
        outcomes.push(settled.status.to_string());
    }
    outcomes
}
