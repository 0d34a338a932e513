// SPDX-License-Identifier: GPL-2.0-or-later
//! Network frames in flight at a coordinated checkpoint: two VMs on a
//! bridge exchange sequenced UDP and TCP messages at a high rate and are
//! checkpointed together, both stopping at one instant T, each resuming
//! right after its capture. Frames one VM sent before T that had not
//! reached the other's guest (those ahead of the sender's marker) are
//! saved in the receiver's image and given to its guest: no message is
//! lost, duplicated or reordered, neither in the VMs that go on after the
//! checkpoint nor in the VMs restored from the images.
//!
//! Between the two VMs' own QEMUs frames spend microseconds in flight, and
//! both main loops stop reading their taps shortly before T (each
//! checkpoint thread takes its QEMU's big lock then, to stop at T
//! exactly): which frames fly at T is chance. So the link toward one VM
//! has a latency, as between hosts: a delay line in the namespace gives
//! it 5 ms, and frames toward that VM are always in flight at T.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mekha_ckpt_core::instant::wall_ns;
use mekha_ckpt_core::session::checkpoint::{self, EndArgs, Mode, NetCut, NetdevPeers, Status};
use mekha_ckpt_core::session::commands::{
    Checkpoint, CheckpointEnd, QueryCheckpoint, QueryInfo, QueryRestore, Restore, Resume,
};
use mekha_ckpt_core::session::{restore, Command, Empty};
use mekha_coordinator::qmp::Qmp;
use mekha_rig::{Cluster, ClusterConfig, DelayLine, Netns, ProbeLog, Vm};
use serde_json::{json, Value};

const VMS: usize = 2;
/// Messages per stream: at one per millisecond the exchange spans the
/// checkpoint and a good while after it, in both worlds.
const MSGS: u64 = 20_000;
const MSG_INTERVAL_MS: u64 = 1;
const BOOT: Duration = Duration::from_secs(240);
/// Time for the probes to finish their exchange after a checkpoint or a
/// restore (TCG guests, two on two host cores).
const EXCHANGE: Duration = Duration::from_secs(300);
/// The stop instant's distance from the command.
const STOP_AHEAD_NS: i64 = 100_000_000;

/// The latency of the link toward the last VM.
const LINK_DELAY: Duration = Duration::from_millis(5);

/// Runs query `C` with `args` on every VM until `done` holds for all
/// replies; fails on a reply that `failed` names. The test is the
/// checkpoints' coordinator: its polls renew their leases.
async fn poll_all<C: Command>(
    qmps: &[Qmp],
    args: &C::Args,
    timeout: Duration,
    done: impl Fn(&C::Reply) -> bool,
    failed: impl Fn(&C::Reply) -> bool,
) -> Vec<C::Reply>
where
    C::Reply: std::fmt::Debug,
{
    let command = C::NAME;
    let deadline = Instant::now() + timeout;
    loop {
        let mut replies = Vec::new();
        for qmp in qmps {
            replies.push(qmp.call::<C>(args).await.unwrap());
        }
        if let Some(bad) = replies.iter().find(|r| failed(r)) {
            panic!("{command}: {bad:?}");
        }
        if replies.iter().all(&done) {
            return replies;
        }
        assert!(Instant::now() < deadline, "{command} not done within {timeout:?}: {replies:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the probe reported `net_done` for each of its streams (one
/// per peer and protocol), and checks every message of each arrived once,
/// in order and intact, and that the probe saw no anomaly at all.
fn check_exchange(log: &ProbeLog, what: &str, diagnose: impl Fn() -> String) -> Vec<Value> {
    let deadline = Instant::now() + EXCHANGE;
    let streams = 2 * (VMS - 1);
    let done = loop {
        let done: Vec<Value> = log.events().into_iter().filter(|e| e.ev == "net_done").map(|e| e.json).collect();
        if done.len() >= streams {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {streams} streams done within {EXCHANGE:?} in {}:\n{}",
            done.len(),
            log.path().display(),
            log.tail(20)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for link in &done {
        for counter in ["lost", "dup", "reordered", "corrupt"] {
            assert_eq!(link[counter], 0, "{what}: {counter} in {link}; the links' counters:\n{}", diagnose());
        }
        assert_eq!((link["sent"].as_u64(), link["received"].as_u64()), (Some(MSGS), Some(MSGS)), "{what}: {link}");
        assert_eq!((&link["complete"], &link["clean"]), (&json!(true), &json!(true)), "{what}: {link}");
    }
    let anomalies: Vec<Value> =
        log.events().into_iter().filter(|e| e.ev == "net_anomaly" || e.ev == "error").map(|e| e.json).collect();
    assert!(anomalies.is_empty(), "{what}: {anomalies:?}");
    done
}

/// The counters of the namespace's links (where a frame was dropped).
fn link_stats(netns: &Netns) -> String {
    let out = netns.command("ip").args(["-s", "link", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Messages received per stream in the probe's latest `net` events.
fn received(log: &ProbeLog, proto: &str) -> u64 {
    log.events()
        .iter()
        .filter(|e| e.ev == "net" && e.str("proto") == Some(proto))
        .filter_map(|e| e.u64("received"))
        .max()
        .unwrap_or(0)
}

fn image(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node{i}.mekha"))
}

/// One cluster at a time: four TCG VMs on two cores would slow both.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn cow_checkpoint_holds_the_frames_in_flight() {
    if !mekha_ckpt_core::host::Capabilities::probe().userfaultfd_wp {
        mekha_test_skip::skip("this host has no userfaultfd write protection");
        return;
    }
    frames_in_flight_are_neither_lost_nor_duplicated(Mode::Cow).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mtd_checkpoint_holds_the_frames_in_flight() {
    frames_in_flight_are_neither_lost_nor_duplicated(Mode::Mtd).await;
}

async fn frames_in_flight_are_neither_lost_nor_duplicated(mode: Mode) {
    let _one = ONE_AT_A_TIME.lock().await;
    let artifacts = common::artifacts();
    let dir = common::test_dir(&format!("net-hold-{mode}"));
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let config = ClusterConfig {
        vms: VMS,
        memory_mib: 256,
        probe_args: vec![format!("probe.msgs={MSGS}"), format!("probe.msg_interval_ms={MSG_INTERVAL_MS}")],
    };
    let mut cluster = Cluster::launch(&artifacts, &dir, &config).unwrap();
    let late_vm = VMS - 1;
    let tap = cluster.vms[late_vm].config.nic.as_ref().unwrap().tap.clone();
    let delay_line = DelayLine::insert(&cluster.netns, &tap, LINK_DELAY).unwrap();
    let mut qmps = Vec::new();
    for vm in &mut cluster.vms {
        qmps.push(vm.qmp().await.unwrap());
    }

    // The exchange runs at full rate both ways.
    for vm in &cluster.vms {
        let log = vm.log();
        log.wait_for("UDP messages", BOOT, |e| {
            e.ev == "net" && e.str("proto") == Some("udp") && e.u64("received").unwrap_or(0) > 2000
        })
        .unwrap();
    }

    // A coordinated checkpoint, through QMP as a coordinator does it.
    for (i, qmp) in qmps.iter().enumerate() {
        let args = checkpoint::Args {
            path: image(&images, i),
            mode: Some(mode),
            hold: Some(true),
            time_budget_ms: Some(60_000),
            ..Default::default()
        };
        qmp.call::<Checkpoint>(&args).await.unwrap();
    }
    let failed = |r: &checkpoint::Info| r.status == Status::Failed;
    let renew = checkpoint::QueryArgs { renew_lease: Some(true) };
    poll_all::<QueryCheckpoint>(&qmps, &renew, Duration::from_secs(60), |r| r.ready, failed).await;
    // The network cut: every VM's NIC waits for the other's marker (one
    // bridge: the test knows the topology a coordinator works out).
    let mut nics = Vec::new();
    for qmp in &qmps {
        let info = qmp.call::<QueryInfo>(&Empty {}).await.unwrap();
        assert_eq!(info.nics.len(), 1, "{info:?}");
        nics.push(info.nics[0].clone());
    }
    let stop_at = wall_ns() + STOP_AHEAD_NS;
    for (i, qmp) in qmps.iter().enumerate() {
        let macs = nics.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, n)| n.mac).collect();
        let cut =
            NetCut { id: 0x6e65_7468_6f6c_6400, peers: vec![NetdevPeers { netdev: nics[i].netdev.clone(), macs }] };
        qmp.call::<CheckpointEnd>(&EndArgs { stop_at: Some(stop_at), cut: Some(cut) }).await.unwrap();
    }
    let at_checkpoint: Vec<u64> = cluster.vms.iter().map(|vm| received(&vm.log(), "udp")).collect();
    let completed = |r: &checkpoint::Info| r.status == Status::Completed;
    let infos = poll_all::<QueryCheckpoint>(&qmps, &renew, Duration::from_secs(120), completed, failed).await;
    let held: Vec<u64> = infos.iter().map(|i| i.net_saved_frames).collect();
    for (i, info) in infos.iter().enumerate() {
        eprintln!(
            "node{i}: {} frames ({} bytes) saved, {} dropped; mode {:?}, stopped {} ns after T, pause {} us; ~{} UDP \
             messages received before the checkpoint",
            info.net_saved_frames,
            info.net_saved_bytes,
            info.net_dropped_frames,
            info.mode,
            info.stopped_at_ns.unwrap() - stop_at,
            info.pause_ns / 1000,
            at_checkpoint[i],
        );
        assert_eq!(info.net_dropped_frames, 0, "{info:?}");
        assert!(info.cut_complete && info.cut_waiting.is_empty(), "{info:?}");
    }
    // The peer sends a message per millisecond each over UDP and TCP:
    // several were on the delayed link at T.
    assert!(held[late_vm] > 0, "nothing was in flight toward node{late_vm} at T: {infos:?}");

    // (a) The checkpointed VMs go on: every message arrives once, in order.
    let diagnose = || format!("delay line: {} frames lost\n{}", delay_line.lost(), link_stats(&cluster.netns));
    for vm in &cluster.vms {
        check_exchange(&vm.log(), &format!("{} after the checkpoint", vm.config.name), diagnose);
    }

    // (b) Both die; fresh QEMUs on the same taps restore the images paused
    // and resume together: the probes go on from the checkpoint instant.
    for vm in &mut cluster.vms {
        vm.kill();
    }
    let mut restored_qmps = Vec::new();
    for i in 0..VMS {
        let mut config = cluster.vms[i].config.clone();
        config.incoming = true;
        cluster.vms[i] =
            Vm::launch(&artifacts, Some(&cluster.netns), &dir.join(format!("node{i}-restored")), config).unwrap();
        restored_qmps.push(cluster.vms[i].qmp().await.unwrap());
    }
    for (i, qmp) in restored_qmps.iter().enumerate() {
        let args = restore::Args { path: image(&images, i), start: Some(false), ..Default::default() };
        qmp.call::<Restore>(&args).await.unwrap();
    }
    let loaded = |r: &restore::Info| r.status == restore::Status::Completed;
    let not_loaded = |r: &restore::Info| r.status == restore::Status::Failed;
    let restores =
        poll_all::<QueryRestore>(&restored_qmps, &Default::default(), Duration::from_secs(120), loaded, not_loaded)
            .await;
    let at = wall_ns() + 300_000_000;
    for qmp in &restored_qmps {
        qmp.call::<Resume>(&restore::ResumeArgs { at: Some(at) }).await.unwrap();
    }
    for (i, restore) in restores.iter().enumerate() {
        eprintln!(
            "node{i} restored: {} frames injected, {} dropped",
            restore.net_injected_frames, restore.net_dropped_frames
        );
        assert_eq!(restore.net_injected_frames, held[i], "{restore:?}");
        assert_eq!(restore.net_dropped_frames, 0, "{restore:?}");
    }
    for vm in &cluster.vms {
        let log = vm.log();
        check_exchange(&log, &format!("{} restored", vm.config.name), diagnose);
        assert!(!log.events().iter().any(|e| e.ev == "start"), "{} rebooted", vm.config.name);
    }
    for vm in &mut cluster.vms {
        assert!(vm.is_running(), "{} died: {}", vm.config.name, vm.stderr());
    }
    eprintln!("{}", diagnose());
    assert_eq!(delay_line.lost(), 0, "the delay line failed to pass frames on");
    eprintln!(
        "{} messages checked in each world ({MSGS} per stream, UDP and TCP both ways); frames held per VM: {held:?}",
        2 * VMS as u64 * MSGS
    );
}
