// SPDX-License-Identifier: GPL-2.0-or-later
//! The cluster bench's measurement: mekha's coordinated checkpoint and
//! restart of N VMs beside stock QEMU driven the way a user would script
//! it, each on a fresh cluster (docs/benchmarks.md says what it measures
//! and why).
//!
//! Every cluster is the rig's ([`Cluster`]: N TCG VMs named node0.. on a
//! bridge in a network namespace, the probes computing, dirtying memory
//! and exchanging sequenced TCP and UDP messages with every peer). The
//! bench holds each VM's first monitor and records its events
//! ([`EventLog`]); the `mekha` CLI gets the second. The checkpoint comes
//! once every probe has received [`MIN_RX`] messages on every link, then
//! [`STEADY_S`] more (the window of the steady rates).
//!
//! From N = 2 the link toward the last VM goes through a [`DelayLine`] of
//! [`LINK_DELAY`], as between hosts: frames are in flight toward it at the
//! checkpoint, and what its image saved is set against the link's
//! bandwidth-delay product. After the restart each guest's compute and
//! receive rates are followed until they hold [`BACK_SHARE`] of what they
//! were before (see [`super::recovery`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use mekha_coordinator::cluster::{ClusterCheckpoint, ClusterRestore};
use mekha_coordinator::qmp::{Qmp, QmpError};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::cluster_data::{
    Checkpoint, ComputeCheck, Job, MekhaCheckpoint, MekhaRestart, Method, Mismatch, NetCut, Restart, Run, Span,
    StockCheckpoint, StockRestart, VmCheckpoint, VmRecovery, VmRestart, Workload,
};
use super::console::{Console, TimedProbeEvent};
use super::events::{EventLog, TimedEvent};
use super::host::{drop_cache, loadavg};
use super::progress::{lost_ms, progress_series, rate_between, step_at, Point};
use super::recovery::{back_after, lost_split, messages, steps};
use super::stats::{median, ms, now, plain, ratio, spread, spread_all};
use super::{fresh_dirs, log};
use crate::{Artifacts, Cluster, ClusterConfig, DelayLine};

pub const MEM_MIB: u32 = 256;
pub const DIRTY_MIB: u32 = 32;
/// MiB/s.
pub const DIRTY_RATE: u32 = 64;
/// Never ends during a run.
const COMPUTE_STEPS: u64 = 1 << 62;
/// Steps between compute events.
pub const COMPUTE_CHUNK: u64 = 1 << 23;
/// Messages per peer per protocol.
pub const MSGS: u64 = 1000;
/// 20 s of exchange per link.
pub const MSG_INTERVAL_MS: u64 = 20;
/// Messages received on every link before the checkpoint.
pub const MIN_RX: u64 = 50;
/// Then this long before the checkpoint: the steady window, over which
/// the guests' rates are measured (the probes report messages once a
/// second).
pub const STEADY_S: f64 = 3.0;
/// The checkpointed cluster runs on this long before it is killed.
pub const AFTER_S: f64 = 1.0;
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// One checkpoint or restart, at most.
const CMD_TIMEOUT: Duration = Duration::from_secs(600);
/// After the restart, beyond the messages left at MSG_INTERVAL_MS.
const JOB_TIMEOUT_S: f64 = 120.0;
/// Compute events wanted from every restored VM.
const COMPUTE_AFTER: usize = 3;
const PROTOS: [&str; 2] = ["tcp", "udp"];
const RESUME_TIMEOUT: Duration = Duration::from_secs(30);
/// The latency of the link toward the last VM (N >= 2), as between hosts:
/// frames are always in flight toward it at the checkpoint.
pub const LINK_DELAY: Duration = Duration::from_millis(50);
/// A restarted guest is back once its rate holds this share of its steady
/// rate over BACK_HOLD_S (compute) or MSGS_BACK_HOLD_S (messages, reported
/// once a second).
pub const BACK_SHARE: f64 = 0.9;
pub const BACK_HOLD_S: f64 = 1.0;
pub const MSGS_BACK_HOLD_S: f64 = 2.0;
/// The work lost after a restart is counted over this long.
pub const LOST_WINDOW_S: f64 = 2.0;
/// The progress line after a restart spans this long.
const LINE_S: f64 = 5.0;
/// The guests are followed this long after the restart at least: the
/// progress line, and a receive rate averaged over MSGS_BACK_HOLD_S after
/// it (the job may be done sooner).
const FOLLOW_S: f64 = LINE_S + MSGS_BACK_HOLD_S + 1.0;

pub fn workload() -> Workload {
    Workload {
        memory_mib: MEM_MIB,
        dirty_mib: DIRTY_MIB,
        dirty_rate_mib_s: DIRTY_RATE,
        compute_chunk: COMPUTE_CHUNK,
        msgs: MSGS,
        msg_interval_ms: MSG_INTERVAL_MS,
        min_rx: MIN_RX,
        steady_s: STEADY_S,
        after_s: AFTER_S,
        link_delay_ms: LINK_DELAY.as_secs_f64() * 1000.0,
        back_share: BACK_SHARE,
        back_hold_s: BACK_HOLD_S,
        msgs_back_hold_s: MSGS_BACK_HOLD_S,
        lost_window_s: LOST_WINDOW_S,
    }
}

/// A (peer, protocol) stream a probe receives.
type Link = (String, String);

/// The bench's hold on one VM of a cluster: its first monitor, that
/// monitor's events, and its console's probe events.
struct Node {
    name: String,
    qmp: Arc<Qmp>,
    events: EventLog,
    console: Console,
    links: Vec<Link>,
}

impl Node {
    /// The latest `ev` event per link.
    fn latest(&self, ev: &str) -> BTreeMap<Link, TimedProbeEvent> {
        latest(&self.console.events(), ev)
    }
}

fn latest(events: &[TimedProbeEvent], ev: &str) -> BTreeMap<Link, TimedProbeEvent> {
    let mut out = BTreeMap::new();
    for e in events.iter().filter(|e| e.event.ev == ev) {
        if let Some(peer) = e.event.str("peer") {
            out.insert((peer.to_owned(), e.event.str("proto").unwrap_or("").to_owned()), e.clone());
        }
    }
    out
}

/// Where `mekha checkpoint` writes and logs, and its capture mode.
struct CliTrial<'a> {
    ckdir: &'a Path,
    log_dir: &'a Path,
    mode: &'a str,
}

/// A run of the mekha CLI: its `--json` summary, the host times it
/// started and exited, each VM's event mark before it and its RESUME.
struct CliRun<T> {
    summary: T,
    t0: f64,
    t1: f64,
    marks: Vec<usize>,
    resumed: Vec<TimedEvent>,
}

/// A trial's cluster and the delay line toward its last VM (N >= 2).
struct Net {
    // Field order is drop order: the line's taps before the namespace.
    delay: Option<DelayLine>,
    cluster: Cluster,
}

/// One method on one fresh cluster: where its files go.
struct Trial {
    /// `nN-rREP-METHOD`: names its directories and its log lines.
    tag: String,
    method: Method,
    /// Its checkpoint's directory (mekha) or images (stock).
    ckdir: PathBuf,
    /// Its VMs' directories and the CLI's output.
    run_dir: PathBuf,
    /// The image files written, to delete once measured.
    images: Vec<PathBuf>,
}

impl Trial {
    fn cleanup(&self) {
        for p in &self.images {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(&self.ckdir);
    }
}

/// The bench: where it writes, what it measured so far.
pub struct Bench {
    artifacts: Artifacts,
    vms_dir: PathBuf,
    images: PathBuf,
    pub runs: Vec<Run>,
}

impl Bench {
    pub fn new(artifacts: Artifacts, out: &Path) -> Result<Bench> {
        let (vms_dir, images) = fresh_dirs(out)?;
        Ok(Bench { artifacts, vms_dir, images, runs: Vec::new() })
    }

    /// Every method for every size and repetition; the order of the methods
    /// alternates between repetitions.
    pub async fn run(&mut self, sizes: &[usize], reps: usize) {
        for &n in sizes {
            for rep in 0..reps {
                let mut order = Method::ALL.to_vec();
                if rep % 2 == 1 {
                    order.reverse();
                }
                for method in order {
                    let run = self.measure(n, rep, method).await;
                    self.runs.push(run);
                }
            }
        }
        self.verify_compute();
        let _ = std::fs::remove_dir_all(&self.images);
    }

    async fn measure(&self, n: usize, rep: usize, method: Method) -> Run {
        let tag = format!("n{n}-r{rep}-{}", method.name());
        log(&format!("{tag}: booting {n} VM(s)"));
        let mut trial =
            Trial { method, ckdir: self.images.join(&tag), run_dir: self.vms_dir.join(&tag), images: Vec::new(), tag };
        let mut r = Run::new(n, rep, method);
        let _ = std::fs::create_dir_all(&trial.run_dir);
        let (mut net, originals, t_stop) = match self.checkpointed(&mut trial, n, &mut r).await {
            Ok(c) => c,
            Err(e) => {
                log(&format!("{}: checkpoint failed: {e:#}", trial.tag));
                r.error = Some(format!("checkpoint: {e:#}"));
                trial.cleanup();
                return r;
            }
        };
        if let Err(e) = self.restarted(&trial, &mut net.cluster, &originals, t_stop, &mut r).await {
            log(&format!("{}: restart failed: {e:#}", trial.tag));
            r.restart_error = Some(format!("{e:#}"));
        }
        if let (Some(line), Some(cut)) = (&net.delay, r.checkpoint.as_mut().and_then(|c| c.net_cut.as_mut())) {
            cut.line_lost = line.lost();
        }
        drop(net);
        trial.cleanup();
        r
    }

    /// Boots a cluster, checkpoints it, lets it run on AFTER_S and kills
    /// its VMs: the cluster (its namespace kept), the probe events its
    /// guests printed, and the host time of the first STOP.
    async fn checkpointed(
        &self,
        trial: &mut Trial,
        n: usize,
        r: &mut Run,
    ) -> Result<(Net, Vec<Vec<TimedProbeEvent>>, Option<f64>)> {
        let tag = trial.tag.clone();
        let (mut net, nodes) = self.boot_settled(&tag, n, r).await?;
        r.loadavg_before = Some(loadavg());
        let mut ck = match trial.method.mode() {
            Some(mode) => {
                let qmps = net.cluster.cli_qmp_paths();
                let cli = CliTrial { ckdir: &trial.ckdir, log_dir: &trial.run_dir, mode };
                self.checkpoint_mekha(&nodes, &qmps, &cli, &mut trial.images).await?
            }
            None => checkpoint_stock(&nodes, &trial.ckdir, &mut trial.images).await?,
        };
        let stops: Vec<Option<f64>> = ck.vms.iter().map(|v| v.stop_t).collect();
        let resumes: Vec<Option<f64>> = ck.vms.iter().map(|v| Some(v.resume_t)).collect();
        let all_stops = stops.iter().all(Option::is_some);
        let first_stop = stops.iter().flatten().copied().reduce(f64::min);
        let last_resume = resumes.iter().flatten().copied().reduce(f64::max);
        ck.cluster_pause_ms = if all_stops { ms(last_resume.zip(first_stop).map(|(a, b)| a - b)) } else { None };
        ck.max_vm_pause_ms = ck.vms.iter().filter_map(|v| v.event_pause_ms).reduce(f64::max);
        ck.median_vm_pause_ms = median(&ck.vms.iter().map(|v| v.event_pause_ms).collect::<Vec<_>>());
        if net.delay.is_some() {
            ck.net_cut = Some(net_cut(&nodes, &ck));
        }
        ck.suspend_skew_ms = if all_stops { ms(spread(&stops)) } else { None };
        ck.resume_skew_ms = ms(spread(&resumes));
        ck.suspend_skew_host_ms = ms(spread(&ck.vms.iter().map(|v| v.stop_host_t).collect::<Vec<_>>()));
        ck.resume_skew_host_ms = ms(spread(&ck.vms.iter().map(|v| Some(v.resume_host_t)).collect::<Vec<_>>()));
        let t_stop = ck.vms.iter().filter_map(|v| v.stop_host_t).reduce(f64::min);
        log(&format!(
            "{tag}: checkpoint: per-VM pause {} ms (longest {} ms), cluster pause {} ms, suspend skew {} ms, resume \
             skew {} ms, latency {} ms, {} MiB written, {} frames saved",
            plain(ck.median_vm_pause_ms, 2),
            plain(ck.max_vm_pause_ms, 2),
            plain(ck.cluster_pause_ms, 1),
            plain(ck.suspend_skew_ms, 3),
            plain(ck.resume_skew_ms, 3),
            plain(ck.latency_ms, 0),
            plain(ck.written_bytes.map(|b| b as f64 / (1u64 << 20) as f64), 1),
            plain(ck.net_saved_frames.map(|f| f as f64), 0),
        ));
        r.checkpoint = Some(ck);
        tokio::time::sleep(Duration::from_secs_f64(AFTER_S)).await;
        for (vm, node) in net.cluster.vms.iter_mut().zip(&nodes) {
            if !vm.is_running() {
                bail!("{}: QEMU died after the checkpoint: {}", node.name, vm.stderr());
            }
        }
        for vm in &mut net.cluster.vms {
            vm.kill();
        }
        // The frames still on the delay line reach a tap without its QEMU:
        // let them go before the restarted VMs take the taps.
        if net.delay.is_some() {
            tokio::time::sleep(LINK_DELAY * 4).await;
        }
        let originals = nodes.iter().map(|n| n.console.events()).collect();
        Ok((net, originals, t_stop))
    }

    /// Starts the killed cluster again waiting for its images, restarts it
    /// and checks that its job went on.
    async fn restarted(
        &self,
        trial: &Trial,
        cluster: &mut Cluster,
        originals: &[Vec<TimedProbeEvent>],
        t_stop: Option<f64>,
        r: &mut Run,
    ) -> Result<()> {
        let tag = &trial.tag;
        let files = match trial.method {
            Method::Mekha | Method::MekhaMtd => image_files(&trial.ckdir),
            Method::Stock => trial.images.clone(),
        };
        for path in &files {
            drop_cache(path)?;
        }
        cluster.relaunch_incoming(&self.artifacts, &self.vms_dir.join(tag).join("restart"))?;
        let nodes = connect(cluster).await?;
        for node in &nodes {
            let status = node.qmp.execute("query-status", Value::Null).await?;
            if status["status"] != "inmigrate" {
                bail!("{}: QEMU not waiting for an incoming migration: {status}", node.name);
            }
        }
        let mut rs = match trial.method {
            Method::Mekha | Method::MekhaMtd => {
                self.restart_mekha(&nodes, &cluster.cli_qmp_paths(), &trial.ckdir, &trial.run_dir).await?
            }
            Method::Stock => restart_stock(&nodes, &trial.images).await?,
        };
        let resumes: Vec<Option<f64>> = rs.vms.iter().map(|v| Some(v.resume_t)).collect();
        let last_resume = resumes.iter().flatten().copied().reduce(f64::max);
        rs.restart_ms = ms(last_resume.map(|t| t - rs.t0));
        rs.resume_skew_ms = ms(spread(&resumes));
        rs.resume_skew_host_ms = ms(spread(&rs.vms.iter().map(|v| Some(v.resume_host_t)).collect::<Vec<_>>()));
        let loaded = rs.vms.iter().map(|v| v.loaded_t.unwrap_or(v.resume_t)).reduce(f64::max);
        rs.loaded_ms = ms(loaded.map(|t| t - rs.t0));
        log(&format!(
            "{tag}: restart: all running after {} ms, resume skew {} ms; waiting for the job",
            plain(rs.restart_ms, 0),
            plain(rs.resume_skew_ms, 3)
        ));
        r.restart = Some(rs);
        let restart = r.restart.as_ref().expect("measured above");
        // The rates after the restart are followed this long at least.
        let followed = restart.vms.iter().map(|v| v.resume_t).fold(restart.t0, f64::max) + FOLLOW_S;
        let job = job_check(cluster, &nodes, originals, t_stop.unwrap_or(restart.t0), followed).await;
        log(&format!(
            "{tag}: job after the restart: {} ({}/{} links, lost {}, dup {}, reordered {}, corrupt {}, missing {}, \
             rebooted {:?}, anomalies {:?} / {})",
            if job.clean { "clean" } else { "NOT clean" },
            job.links,
            job.expected_links,
            job.lost,
            job.dup,
            job.reordered,
            job.corrupt,
            job.missing.len(),
            job.rebooted,
            job.net_anomalies,
            job.dirty_anomalies
        ));
        r.job = Some(job);
        if let (Some(ck), Some(rs)) = (r.checkpoint.as_ref(), r.restart.as_mut()) {
            recover(ck, rs, &nodes, originals);
            log(&format!(
                "{tag}: back to {:.0}% of the steady rate after {} ms (compute), {} ms (messages); steady work lost \
                 in the first {LOST_WINDOW_S} s: {} ms",
                BACK_SHARE * 100.0,
                plain(rs.back_ms, 0),
                plain(rs.msgs_back_ms, 0),
                plain(rs.lost_work_ms, 0)
            ));
        }
        let end = now();
        for v in &mut r.restart.as_mut().unwrap().vms {
            v.spans.push(Span::new("running (restored)", Some(v.resume_t), Some(end)));
        }
        Ok(())
    }

    /// A fresh cluster exchanging messages; booted once more if the first
    /// did not get there (a guest that panicked at boot, say).
    async fn boot_settled(&self, tag: &str, n: usize, r: &mut Run) -> Result<(Net, Vec<Node>)> {
        let mut attempt = 1;
        loop {
            let sub = if attempt == 1 { "run" } else { "run-again" };
            let outcome = async {
                let mut cluster = self.boot(&format!("{tag}/{sub}"), n)?;
                let delay = match cluster.vms.last().and_then(|vm| vm.config.nic.as_ref()) {
                    Some(nic) if n >= 2 => Some(DelayLine::insert(&cluster.netns, &nic.tap, LINK_DELAY)?),
                    _ => None,
                };
                let nodes = connect(&mut cluster).await?;
                let settle = settle(&mut cluster, &nodes).await?;
                Ok::<_, anyhow::Error>((Net { delay, cluster }, nodes, settle))
            }
            .await;
            match outcome {
                Ok((net, nodes, settle)) => {
                    r.settle_s = Some(settle);
                    return Ok((net, nodes));
                }
                Err(e) if attempt == 1 => {
                    log(&format!("{tag}: the cluster did not come up ({e:#}); booting it again"));
                    r.boot_retry = Some(format!("{e:#}"));
                    attempt = 2;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn boot(&self, tag: &str, n: usize) -> Result<Cluster> {
        let config = ClusterConfig {
            vms: n,
            memory_mib: MEM_MIB,
            probe_args: vec![
                format!("probe.mem={DIRTY_MIB}"),
                format!("probe.rate={DIRTY_RATE}"),
                format!("probe.compute={COMPUTE_STEPS}"),
                format!("probe.compute_chunk={COMPUTE_CHUNK}"),
                "probe.clock_ms=0".into(),
                format!("probe.msgs={MSGS}"),
                format!("probe.msg_interval_ms={MSG_INTERVAL_MS}"),
            ],
        };
        Cluster::launch(&self.artifacts, &self.vms_dir.join(tag), &config)
    }

    /// Runs `mekha VERB --json --qmp ... --dir DIR` on the VMs' second
    /// monitors and waits for every VM's RESUME event after it.
    async fn mekha<T: DeserializeOwned>(
        &self,
        verb: &str,
        extra: &[&str],
        nodes: &[Node],
        cli_qmps: &[PathBuf],
        ckdir: &Path,
        log_dir: &Path,
    ) -> Result<CliRun<T>> {
        let marks: Vec<usize> = nodes.iter().map(|n| n.events.mark()).collect();
        let mut cmd = tokio::process::Command::new(&self.artifacts.mekha);
        cmd.args([verb, "--json"]).args(extra);
        for q in cli_qmps {
            cmd.arg("--qmp").arg(q);
        }
        cmd.arg("--dir").arg(ckdir).kill_on_drop(true);
        let t0 = now();
        let out = tokio::time::timeout(CMD_TIMEOUT, cmd.output())
            .await
            .map_err(|_| anyhow!("mekha {verb}: no end within {CMD_TIMEOUT:?}"))??;
        let t1 = now();
        std::fs::write(log_dir.join(format!("mekha-{verb}.stdout")), &out.stdout)?;
        std::fs::write(log_dir.join(format!("mekha-{verb}.stderr")), &out.stderr)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // Its last 1500 characters: the error is at the end.
            let chars: Vec<char> = stderr.trim().chars().collect();
            let tail: String = chars[chars.len().saturating_sub(1500)..].iter().collect();
            bail!("mekha {verb} exited {}: {tail}", out.status);
        }
        let summary = serde_json::from_slice(&out.stdout).with_context(|| {
            let head = String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(500)]).into_owned();
            format!("mekha {verb}: no JSON summary: {head:?}")
        })?;
        let resumed = wait_resumed(nodes, &marks).await?;
        Ok(CliRun { summary, t0, t1, marks, resumed })
    }

    async fn checkpoint_mekha(
        &self,
        nodes: &[Node],
        cli_qmps: &[PathBuf],
        trial: &CliTrial<'_>,
        images: &mut Vec<PathBuf>,
    ) -> Result<Checkpoint> {
        let extra = ["--mode", trial.mode];
        let cli: CliRun<ClusterCheckpoint> =
            self.mekha("checkpoint", &extra, nodes, cli_qmps, trial.ckdir, trial.log_dir).await?;
        let CliRun { summary: s, t0, t1, marks, resumed } = cli;
        let mut vms = Vec::new();
        for ((node, &mark), res) in nodes.iter().zip(&marks).zip(resumed) {
            let v = s.vms.iter().find(|v| v.vm == node.name).ok_or_else(|| anyhow!("no summary of {}", node.name))?;
            images.push(v.image.clone());
            let prog = &v.progress;
            let stop = node.events.first(mark, "STOP", |_| true);
            let mut statuses = BTreeMap::new();
            for e in node.events.since(mark).iter().filter(|e| e.event == "__org.mekha_CHECKPOINT") {
                statuses.entry(e.status().unwrap_or("None").to_owned()).or_insert(e.qemu_t);
            }
            let stopped = prog.stopped_at_ns.filter(|&t| t != 0);
            let resumed_at = prog.resumed_at_ns.filter(|&t| t != 0);
            let t_stop = stop.as_ref().map(|e| e.qemu_t);
            let t_live = statuses.get("live").copied().unwrap_or(t0);
            let t_paused = stopped.map(|t| t as f64 / 1e9).or(t_stop);
            let t_running = resumed_at.map(|t| t as f64 / 1e9).unwrap_or(res.qemu_t);
            let mode = prog.mode.map(|m| m.as_str().to_owned());
            // Copy-on-write only prepares RAM for protection before the stop.
            let first = if mode.as_deref() == Some("cow") { "preparing" } else { "live" };
            let mut spans =
                vec![Span::new(first, Some(t_live), t_paused), Span::new("paused", t_paused, Some(t_running))];
            let mut t_after = Some(t_running);
            if statuses.contains_key("capturing") {
                let end = ["staged", "persisting", "completed"].iter().find_map(|k| statuses.get(*k).copied());
                spans.push(Span::new("capturing", Some(t_running), end));
                t_after = end.or(t_after);
            }
            if let (Some(&staged), Some(&persisting)) = (statuses.get("staged"), statuses.get("persisting")) {
                let start = t_after.map_or(staged, |t| t.max(staged));
                spans.push(Span::new("staged", Some(start), Some(persisting)));
            }
            if let Some(&persisting) = statuses.get("persisting") {
                spans.push(Span::new("persisting", Some(persisting), Some(*statuses.get("completed").unwrap_or(&t1))));
            }
            vms.push(VmCheckpoint {
                vm: node.name.clone(),
                stop_t: t_stop,
                stop_host_t: stop.as_ref().map(|e| e.host_t),
                resume_t: res.qemu_t,
                resume_host_t: res.host_t,
                event_pause_ms: ms(t_stop.map(|t| res.qemu_t - t)),
                pause_ms: Some(prog.pause_ns as f64 / 1e6),
                stopped_at_ns: stopped,
                resumed_at_ns: resumed_at,
                mode,
                written_bytes: Some(prog.written_bytes),
                net_saved_frames: Some(prog.net_saved_frames),
                net_saved_bytes: Some(prog.net_saved_bytes),
                statuses,
                progress: Some(serde_json::to_value(prog).expect("JSON encodes")),
                spans,
                events: node.events.since(mark),
                ..VmCheckpoint::default()
            });
        }
        let stops: Vec<Option<f64>> = vms.iter().map(|v| v.stopped_at_ns.map(|t| t as f64)).collect();
        let resumes: Vec<Option<f64>> = vms.iter().map(|v| v.resumed_at_ns.map(|t| t as f64)).collect();
        let mut modes: Vec<String> = vms.iter().map(|v| v.mode.clone().unwrap_or_else(|| "None".into())).collect();
        modes.sort();
        modes.dedup();
        let mekha = MekhaCheckpoint {
            latency_ms: Some(s.latency_ms),
            live_ms: Some(s.live_ms),
            stop_skew_ms: Some(s.stop_skew_ns as f64 / 1e6),
            stop_spread_ms: spread_all(&stops).map(|x| x / 1e6),
            resume_spread_ms: spread_all(&resumes).map(|x| x / 1e6),
            max_pause_ms: Some(s.max_pause_ns as f64 / 1e6),
            max_stopped_to_resumed_ms: stops
                .iter()
                .zip(&resumes)
                .filter_map(|(t, r)| Some((r.as_ref()? - t.as_ref()?) / 1e6))
                .reduce(f64::max),
            all_ready: s.all_ready,
            stop_at_ns: s.stop_at_ns,
            generation: s.generation,
            modes,
        };
        let net_saved_frames = vms.iter().filter_map(|v| v.net_saved_frames).sum();
        Ok(Checkpoint {
            t0,
            t_durable: t1,
            latency_ms: Some((t1 - t0) * 1000.0),
            written_bytes: Some(s.written_bytes),
            net_saved_frames: Some(net_saved_frames),
            mekha: Some(mekha),
            vms,
            summary: Some(s),
            ..Checkpoint::default()
        })
    }

    async fn restart_mekha(
        &self,
        nodes: &[Node],
        cli_qmps: &[PathBuf],
        ckdir: &Path,
        log_dir: &Path,
    ) -> Result<Restart> {
        let cli: CliRun<ClusterRestore> = self.mekha("restore", &[], nodes, cli_qmps, ckdir, log_dir).await?;
        let CliRun { summary: s, t0, t1, marks, resumed } = cli;
        let mut vms = Vec::new();
        for ((node, &mark), res) in nodes.iter().zip(&marks).zip(resumed) {
            let prog = s.vms.iter().find(|v| v.vm == node.name).map(|v| &v.progress);
            let loaded = node.events.first(mark, "__org.mekha_RESTORE", |_| true).map(|e| e.qemu_t);
            let end = loaded.unwrap_or(res.qemu_t);
            vms.push(VmRestart {
                vm: node.name.clone(),
                loaded_t: loaded,
                resume_t: res.qemu_t,
                resume_host_t: res.host_t,
                resumed_at_ns: prog.and_then(|p| p.resumed_at_ns),
                spans: vec![
                    Span::new("loading", Some(t0), Some(end)),
                    Span::new("loaded, paused", Some(end), Some(res.qemu_t)),
                ],
                progress: Some(prog.map_or(json!({}), |p| serde_json::to_value(p).expect("JSON encodes"))),
                events: node.events.since(mark),
            });
        }
        let resumes: Vec<Option<f64>> = vms.iter().map(|v| v.resumed_at_ns.map(|t| t as f64)).collect();
        let last_resume = vms.iter().map(|v| v.resume_t).reduce(f64::max);
        let mekha = MekhaRestart {
            latency_ms: Some(s.latency_ms),
            resume_skew_ms: Some(s.resume_skew_ns as f64 / 1e6),
            resume_spread_ms: spread_all(&resumes).map(|x| x / 1e6),
            cli_wall_ms: Some((t1 - t0) * 1000.0),
            generation: s.generation,
            cli_after_resume_ms: ms(last_resume.map(|t| t1 - t)),
        };
        Ok(Restart { t0, cli_exit_t: Some(t1), mekha: Some(mekha), vms, summary: Some(s), ..Restart::default() })
    }

    /// The restored guests' computation against the host's.
    fn verify_compute(&mut self) {
        let top = self
            .runs
            .iter()
            .filter_map(|r| r.job.as_ref())
            .flat_map(|j| j.compute_samples.values().flatten().map(|(step, _)| *step))
            .max();
        let Some(top) = top else { return };
        let started = now();
        let reference = match self.artifacts.reference_checksums(top, COMPUTE_CHUNK) {
            Ok(r) => r,
            Err(e) => {
                log(&format!("computation reference failed: {e:#}"));
                return;
            }
        };
        log(&format!("computation reference up to step {top} on the host: {:.1} s", now() - started));
        for job in self.runs.iter_mut().filter_map(|r| r.job.as_mut()) {
            let samples = std::mem::take(&mut job.compute_samples);
            if samples.is_empty() {
                continue;
            }
            let check = job.compute_check.get_or_insert_with(ComputeCheck::default);
            for (vm, ss) in samples {
                for (step, sum) in ss {
                    let Some(host) = reference.get(&step) else { continue };
                    check.checked += 1;
                    if *host != sum {
                        check.mismatches += 1;
                        check.first_mismatch.get_or_insert(Mismatch {
                            vm: vm.clone(),
                            step,
                            guest: sum,
                            host: host.clone(),
                        });
                    }
                }
            }
            if check.mismatches > 0 {
                job.clean = false;
            }
        }
    }
}

/// Connects to every VM's first monitor and follows its console.
async fn connect(cluster: &mut Cluster) -> Result<Vec<Node>> {
    let names: Vec<String> = cluster.vms.iter().map(|v| v.config.name.clone()).collect();
    let mut nodes = Vec::new();
    for (i, vm) in cluster.vms.iter_mut().enumerate() {
        let qmp = Arc::new(vm.qmp().await?);
        let events = EventLog::record(&qmp);
        let console = Console::follow(&vm.dir.join("serial.log"));
        let peers = (0..names.len()).filter(|&j| j != i).map(|j| format!("10.77.0.{}", 11 + j));
        let links = peers.flat_map(|p| PROTOS.map(|proto| (p.clone(), proto.to_owned()))).collect();
        nodes.push(Node { name: vm.config.name.clone(), qmp, events, console, links });
    }
    Ok(nodes)
}

/// Waits until every probe computes, dirties and has received MIN_RX
/// messages on every link, then STEADY_S more; the seconds it took.
async fn settle(cluster: &mut Cluster, nodes: &[Node]) -> Result<f64> {
    let started = now();
    let deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
    loop {
        let mut short = Vec::new();
        for node in nodes {
            let events = node.console.events();
            if !events.iter().any(|e| e.event.ev == "compute") {
                short.push(format!("{}: no compute event", node.name));
            }
            if !events.iter().any(|e| e.event.ev == "dirty" && e.event.u64("pages_written").unwrap_or(0) > 0) {
                short.push(format!("{}: no dirty event", node.name));
            }
            let latest = latest(&events, "net");
            for link in &node.links {
                let got = latest.get(link).and_then(|e| e.event.u64("received")).unwrap_or(0);
                if got < MIN_RX {
                    short.push(format!("{}<-{}/{}:{got}", node.name, link.0, link.1));
                }
            }
        }
        if short.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the probes are not computing and exchanging after {BOOT_TIMEOUT:?}: {}", short.join(", "));
        }
        for (vm, node) in cluster.vms.iter_mut().zip(nodes) {
            if !vm.is_running() {
                bail!("{}: QEMU died during boot: {}", node.name, vm.stderr());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(STEADY_S)).await;
    Ok(now() - started)
}

/// Sends `command` to every VM at once, then waits for every answer: the
/// host time each was sent and answered; fails after every answer arrived.
async fn send_all(nodes: &[Node], command: &str, args: impl Fn(usize) -> Value) -> Result<Vec<(f64, f64)>> {
    let asks = nodes.iter().enumerate().map(|(i, node)| {
        let args = args(i);
        async move {
            let sent = now();
            let answer = node.qmp.execute(command, args).await;
            (sent, now(), answer.map_err(|e| format!("{}: {command}: {e}", node.name)))
        }
    });
    let answers = futures::future::join_all(asks).await;
    let errors: Vec<String> = answers.iter().filter_map(|(_, _, a)| a.as_ref().err().cloned()).collect();
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(answers.into_iter().map(|(s, g, _)| (s, g)).collect())
}

/// `cont` to every VM at once; again to those whose migration QEMU has not
/// finalized yet (MIGRATION completed comes a moment before, and `cont` is
/// refused until then). The host times of the accepted answers, and the
/// refusals per VM.
async fn cont_all(nodes: &[Node]) -> Result<(Vec<f64>, Vec<u32>)> {
    let deadline = now() + 30.0;
    let mut accepted = vec![0.0; nodes.len()];
    let mut refused = vec![0u32; nodes.len()];
    let mut pending: Vec<usize> = (0..nodes.len()).collect();
    while !pending.is_empty() {
        let asks = pending.iter().map(|&i| async move { (i, nodes[i].qmp.execute("cont", Value::Null).await, now()) });
        let mut retry = Vec::new();
        for (i, answer, t) in futures::future::join_all(asks).await {
            match answer {
                Ok(_) => accepted[i] = t,
                Err(QmpError::Command { desc, .. }) if desc.contains("not finalized") && now() <= deadline => {
                    refused[i] += 1;
                    retry.push(i);
                }
                Err(e) => bail!("{}: cont: {e}", nodes[i].name),
            }
        }
        pending = retry;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok((accepted, refused))
}

async fn enable_events(nodes: &[Node]) -> Result<()> {
    for node in nodes {
        node.qmp
            .execute("migrate-set-capabilities", json!({"capabilities": [{"capability": "events", "state": true}]}))
            .await?;
    }
    Ok(())
}

/// Each VM's MIGRATION completed event; fails on another end.
async fn wait_migrations(nodes: &[Node], marks: &[usize]) -> Result<Vec<TimedEvent>> {
    let mut done = Vec::new();
    for (node, &mark) in nodes.iter().zip(marks) {
        let ended = |e: &TimedEvent| matches!(e.status(), Some("completed" | "failed" | "cancelled"));
        let e = node.events.wait(mark, "MIGRATION", CMD_TIMEOUT, ended).await;
        match e {
            Some(e) if e.status() == Some("completed") => done.push(e),
            other => {
                let info = match node.qmp.execute("query-migrate", Value::Null).await {
                    Ok(v) => v.to_string(),
                    Err(x) => format!("query-migrate failed: {x}"),
                };
                let how = other.as_ref().and_then(TimedEvent::status).unwrap_or("did not end").to_owned();
                bail!("{}: migration {how}: {info}", node.name);
            }
        }
    }
    Ok(done)
}

/// Each VM's first RESUME event since its mark.
async fn wait_resumed(nodes: &[Node], marks: &[usize]) -> Result<Vec<TimedEvent>> {
    let mut out = Vec::new();
    for (node, &mark) in nodes.iter().zip(marks) {
        match node.events.wait(mark, "RESUME", RESUME_TIMEOUT, |_| true).await {
            Some(e) => out.push(e),
            None => {
                let status = node.qmp.execute("query-status", Value::Null).await;
                bail!("{}: no RESUME event (status {status:?})", node.name);
            }
        }
    }
    Ok(out)
}

/// fsyncs every file concurrently: the host time each one returned.
async fn fsync_all(paths: &[PathBuf]) -> Result<Vec<f64>> {
    let syncs = paths.iter().cloned().map(|p| {
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&p).and_then(|f| f.sync_all()).with_context(|| format!("fsync {}", p.display()))?;
            Ok::<_, anyhow::Error>(now())
        })
    });
    futures::future::join_all(syncs).await.into_iter().map(|r| r?).collect()
}

/// Stock QEMU, scripted: `stop` to all, `migrate` file: each, every
/// completion awaited, `cont` to all, the images fsync'ed.
async fn checkpoint_stock(nodes: &[Node], image_dir: &Path, images: &mut Vec<PathBuf>) -> Result<Checkpoint> {
    std::fs::create_dir_all(image_dir)?;
    let paths: Vec<PathBuf> = nodes.iter().map(|n| image_dir.join(format!("{}.migrate", n.name))).collect();
    images.extend(paths.iter().cloned());
    enable_events(nodes).await?;
    let marks: Vec<usize> = nodes.iter().map(|n| n.events.mark()).collect();
    let t0 = now();
    let stops = send_all(nodes, "stop", |_| Value::Null).await?;
    let t_stopped = now();
    let migs = send_all(nodes, "migrate", |i| json!({"uri": format!("file:{}", paths[i].display())})).await?;
    let done = wait_migrations(nodes, &marks).await?;
    let t_written = now();
    let (conts, refused) = cont_all(nodes).await?;
    let t_cont = now();
    let fsyncs = fsync_all(&paths).await?;
    let t_durable = fsyncs.iter().copied().fold(t_cont, f64::max);
    let resumed = wait_resumed(nodes, &marks).await?;
    let mut vms = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mark = marks[i];
        let stop = node.events.first(mark, "STOP", |_| true).ok_or_else(|| anyhow!("{}: no STOP event", node.name))?;
        let setup = node.events.first(mark, "MIGRATION", |e| e.status() == Some("setup"));
        let res = &resumed[i];
        let meta = std::fs::metadata(&paths[i])?;
        let pause = Some((res.qemu_t - stop.qemu_t) * 1000.0);
        vms.push(VmCheckpoint {
            vm: node.name.clone(),
            stop_t: Some(stop.qemu_t),
            stop_host_t: Some(stop.host_t),
            resume_t: res.qemu_t,
            resume_host_t: res.host_t,
            stop_sent_t: Some(stops[i].0),
            migrate_sent_t: Some(migs[i].0),
            migrated_t: Some(done[i].qemu_t),
            pause_ms: pause,
            event_pause_ms: pause,
            image_bytes: Some(meta.len()),
            image_alloc_bytes: Some(std::os::unix::fs::MetadataExt::blocks(&meta) * 512),
            spans: vec![
                Span::new("paused", Some(stop.qemu_t), Some(res.qemu_t)),
                Span::new("persisting", Some(setup.map_or(migs[i].0, |e| e.qemu_t)), Some(done[i].qemu_t)),
                Span::new("fsync", Some(t_cont), Some(fsyncs[i])),
            ],
            events: node.events.since(mark),
            ..VmCheckpoint::default()
        });
    }
    let written = vms.iter().filter_map(|v| v.image_bytes).sum();
    let stock = StockCheckpoint {
        stop_answered_ms: Some((t_stopped - t0) * 1000.0),
        written_ms: Some((t_written - t0) * 1000.0),
        cont_answered_ms: Some((t_cont - t0) * 1000.0),
        fsync_ms: Some((t_durable - t_cont) * 1000.0),
        cont_spread_ms: ms(spread(&conts.iter().copied().map(Some).collect::<Vec<_>>())),
        cont_accepted_t: conts,
        cont_refused: refused,
    };
    Ok(Checkpoint {
        t0,
        t_durable,
        latency_ms: Some((t_durable - t0) * 1000.0),
        written_bytes: Some(written),
        stock: Some(stock),
        vms,
        ..Checkpoint::default()
    })
}

/// Stock QEMU, scripted: `migrate-incoming` file: to each VM, every
/// completion awaited, `cont` to all (the image of a stopped VM restores
/// stopped: its user resumes it).
async fn restart_stock(nodes: &[Node], paths: &[PathBuf]) -> Result<Restart> {
    enable_events(nodes).await?;
    let marks: Vec<usize> = nodes.iter().map(|n| n.events.mark()).collect();
    let t0 = now();
    send_all(nodes, "migrate-incoming", |i| json!({"uri": format!("file:{}", paths[i].display())})).await?;
    let done = wait_migrations(nodes, &marks).await?;
    let t_loaded = now();
    let (conts, refused) = cont_all(nodes).await?;
    let resumed = wait_resumed(nodes, &marks).await?;
    let vms = nodes
        .iter()
        .zip(&marks)
        .zip(done.iter().zip(resumed))
        .map(|((node, &mark), (d, res))| VmRestart {
            vm: node.name.clone(),
            loaded_t: Some(d.qemu_t),
            resume_t: res.qemu_t,
            resume_host_t: res.host_t,
            spans: vec![
                Span::new("loading", Some(t0), Some(d.qemu_t)),
                Span::new("loaded, paused", Some(d.qemu_t), Some(res.qemu_t)),
            ],
            events: node.events.since(mark),
            ..VmRestart::default()
        })
        .collect();
    let stock = StockRestart {
        loaded_ms: Some((t_loaded - t0) * 1000.0),
        cont_refused: refused,
        cont_spread_ms: ms(spread(&conts.into_iter().map(Some).collect::<Vec<_>>())),
    };
    Ok(Restart { t0, stock: Some(stock), vms, ..Restart::default() })
}

/// Whether the job went on after the restart: every link's net_done (a
/// stream already done at the checkpoint counts from the checkpointed
/// guest's own log, what it printed before `t_stop`), anomalies,
/// reboots, the computation going on. Waits at least until `until` (host
/// time), for the rates after the restart.
async fn job_check(
    cluster: &mut Cluster,
    nodes: &[Node],
    originals: &[Vec<TimedProbeEvent>],
    t_stop: f64,
    until: f64,
) -> Job {
    let deadline = now() + JOB_TIMEOUT_S + (MSGS * MSG_INTERVAL_MS) as f64 / 1000.0;
    let before: Vec<BTreeMap<Link, TimedProbeEvent>> = originals
        .iter()
        .map(|events| latest(events, "net_done").into_iter().filter(|(_, e)| e.t < t_stop).collect())
        .collect();
    let done_links = |i: usize, node: &Node| {
        let mut d = before[i].clone();
        d.extend(node.latest("net_done"));
        d
    };
    let mut missing;
    loop {
        missing = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let done = done_links(i, node);
            for link in node.links.iter().filter(|l| !done.contains_key(*l)) {
                missing.push(format!("{}<-{}/{}", node.name, link.0, link.1));
            }
        }
        let computing = nodes
            .iter()
            .all(|n| n.console.events().iter().filter(|e| e.event.ev == "compute").count() >= COMPUTE_AFTER);
        let all_alive = cluster.vms.iter_mut().all(|vm| vm.is_running());
        if (missing.is_empty() && computing && now() >= until) || now() > deadline || !all_alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut job = Job { missing, ..Job::default() };
    for (i, (node, vm)) in nodes.iter().zip(cluster.vms.iter_mut()).enumerate() {
        let events = node.console.events();
        if !vm.is_running() {
            job.dead.push(node.name.clone());
        }
        if events.iter().any(|e| e.event.ev == "start") {
            job.rebooted.push(node.name.clone());
        }
        for e in &events {
            match e.event.ev.as_str() {
                "net_anomaly" => {
                    *job.net_anomalies.entry(e.event.str("kind").unwrap_or("?").to_owned()).or_default() += 1
                }
                "dirty_anomaly" => job.dirty_anomalies += 1,
                "done" => job.done += 1,
                _ => {}
            }
        }
        // Counters: net_done where there is one, else the last `net`.
        let mut finals = latest(&events, "net");
        finals.extend(done_links(i, node));
        for link in &node.links {
            let Some(e) = finals.get(link) else { continue };
            job.links += 1;
            let count = |k: &str| e.event.u64(k).unwrap_or(0);
            job.lost += count("lost");
            job.dup += count("dup");
            job.reordered += count("reordered");
            job.corrupt += count("corrupt");
            job.received += count("received");
            if e.event.ev == "net_done" && e.event.json.get("complete").and_then(Value::as_bool) != Some(true) {
                job.incomplete += 1;
            }
        }
        let comp: Vec<(u64, String)> = events
            .iter()
            .filter(|e| e.event.ev == "compute")
            .filter_map(|e| Some((e.event.u64("step")?, e.event.str("checksum")?.to_owned())))
            .collect();
        job.compute_events.insert(node.name.clone(), comp.len());
        job.compute_samples.insert(node.name.clone(), comp);
    }
    job.expected_links = nodes.iter().map(|n| n.links.len() as u64).sum();
    job.clean = job.missing.is_empty()
        && job.rebooted.is_empty()
        && job.dead.is_empty()
        && job.dirty_anomalies == 0
        && job.net_anomalies.is_empty()
        && job.incomplete == 0
        && job.lost + job.dup + job.reordered + job.corrupt == 0
        && job.compute_events.values().all(|&c| c >= COMPUTE_AFTER);
    job
}

/// The delayed link at the checkpoint: the last VM's steady receive rate,
/// the bandwidth-delay product and the frames its image saved.
fn net_cut(nodes: &[Node], ck: &Checkpoint) -> NetCut {
    let delay_s = LINK_DELAY.as_secs_f64();
    let node = nodes.last().expect("a delay line has a VM behind it");
    let received = messages(&node.console.events());
    let rate = rate_between(&received, ck.t0 - STEADY_S, ck.t0).ok();
    let bdp = rate.map(|r| r * delay_s);
    let saved = ck.vms.iter().find(|v| v.vm == node.name).and_then(|v| v.net_saved_frames);
    NetCut {
        vm: node.name.clone(),
        delay_ms: delay_s * 1000.0,
        rate_msgs_s: rate,
        bdp_frames: bdp,
        saved_frames: saved,
        saved_per_bdp: ratio(saved.map(|s| s as f64), bdp),
        line_lost: 0,
    }
}

/// Every restarted VM's way back to the rates it had before the
/// checkpoint: its compute steps and messages received against host time,
/// from its RESUME on (its progress at the resume is its progress at its
/// STOP: the image's).
fn recover(ck: &Checkpoint, rs: &mut Restart, nodes: &[Node], originals: &[Vec<TimedProbeEvent>]) {
    let steady = (ck.t0 - STEADY_S, ck.t0);
    for ((node, before), (vck, vrs)) in nodes.iter().zip(originals).zip(ck.vms.iter().zip(&rs.vms)) {
        let after = node.console.events();
        let resumed = vrs.resume_t;
        let mut v = VmRecovery { vm: node.name.clone(), ..VmRecovery::default() };
        let done_before = steps(before);
        let rate = rate_between(&done_before, steady.0, steady.1).ok();
        v.steady_steps_s = rate;
        let at_stop = vck.stop_t.and_then(|t| step_at(&done_before, t).ok());
        if let (Some(rate), Some(at_stop)) = (rate, at_stop) {
            let mut points: Vec<Point> = vec![(resumed, at_stop)];
            points.extend(steps(&after).into_iter().filter(|p| p.0 > resumed));
            v.back_ms = ms(back_after(&points, rate, resumed, BACK_SHARE, BACK_HOLD_S));
            v.lost_work_ms = lost_ms(&points, rate, resumed, resumed + LOST_WINDOW_S).ok();
            v.line = progress_series(&points, rate, resumed, resumed, resumed + LINE_S);
        }
        // The receive counters reach the log once a second: the last report
        // before the STOP, then the restored guest's.
        let stop = vck.stop_t.unwrap_or(ck.t0);
        let mut joined: Vec<TimedProbeEvent> = before.iter().filter(|e| e.t < stop).cloned().collect();
        joined.extend(after.iter().filter(|e| e.t > resumed).cloned());
        let received = messages(&joined);
        v.steady_msgs_s = rate_between(&received, steady.0, steady.1).ok();
        v.msgs_back_ms =
            v.steady_msgs_s.and_then(|r| ms(back_after(&received, r, resumed, BACK_SHARE, MSGS_BACK_HOLD_S)));
        (v.lost_while_slow, v.lost_after) = lost_split(&after, v.back_ms.map(|b| resumed + b / 1000.0));
        rs.recovery.push(v);
    }
    let longest = |get: fn(&VmRecovery) -> Option<f64>| -> Option<f64> {
        let all: Vec<Option<f64>> = rs.recovery.iter().map(get).collect();
        all.iter().all(Option::is_some).then(|| all.into_iter().flatten().reduce(f64::max)).flatten()
    };
    rs.back_ms = longest(|v| v.back_ms);
    rs.msgs_back_ms = longest(|v| v.msgs_back_ms);
    rs.lost_work_ms = longest(|v| v.lost_work_ms);
}

fn image_files(ckdir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![ckdir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "mekha") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
