// SPDX-License-Identifier: GPL-2.0-or-later
//! Coordinated checkpoint and restart of a set of VMs: one consistent
//! instant for all, one committed cluster checkpoint or none.
//!
//! Checkpoint protocol (every VM's library does the timing itself; the
//! coordinator only decides):
//! 1. prepare: every VM starts its checkpoint with its live phase held
//!    open, a lease, and its image kept in memory once staged; a refusal
//!    of any VM cancels the others;
//! 2. live phase: the coordinator polls every VM (which renews its lease)
//!    until all are `ready` — every page copied once (MTD) or RAM prepared
//!    for protection (copy-on-write) — or the time budget is spent: the
//!    global ending condition;
//! 3. rendezvous: one stop instant T and one resume instant T2 on the
//!    hosts' wall clocks go to every VM; each stops at T, copies what is
//!    left and its devices into memory, and resumes at T2;
//! 4. persist: once each storage target (as the VMs' hosts report it) is
//!    known to have room for its staged images, the coordinator releases
//!    them for writing, a bounded number at a time per target, largest
//!    first (see `schedule`);
//! 5. commit: the manifest naming every image is committed atomically
//!    once all are durable; any failure aborts the generation, and the
//!    previous checkpoint stays the latest.
//!
//! If the coordinator dies midway, each VM's lease runs out: a held live
//! phase gives up with the VM running, a staged image is written but never
//! committed, and a stopped VM resumes at T2 by itself.
//!
//! Restart: every VM (a QEMU started with `-incoming defer`) restores its
//! image paused; only when all have loaded and verified do they resume,
//! together, at one instant — a damaged or missing image of any VM, or a
//! disk it cannot take, stops the restart before any VM runs. The loaded
//! VMs hold a lease until the resume: if the coordinator goes, their
//! QEMUs shut down rather than one of them run alone.
//!
//! No wait is unbounded: a VM waited for that shows no progress for the
//! progress timeout fails the checkpoint or restart (see `stall`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use mekha_ckpt_core::store::Store;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::agent::{AgentClient, Request};
use crate::ckpt::{
    latest_checkpoint, CheckpointOptions, CkptError, RestoreOptions, DEFAULT_LEASE, DEFAULT_PROGRESS_TIMEOUT,
};
use crate::fault::{self, Step};
use crate::image_key;
use crate::info;
use crate::parts::{self, Parts};
use crate::qmp::{Event, Qmp, QmpError, MEKHA_PREFIX};
use crate::schedule::{PendingImage, PersistSchedule};
use crate::stall::{StallWatch, Stalled};
use crate::storage::{self, StorageReport};
use crate::transport::{self, Endpoint, Reach, Tunnel};

/// A VM the coordinator drives: its QMP connection and its name, by which
/// images are matched.
pub struct Attached {
    pub name: String,
    pub qmp: Qmp,
    /// The agent of the VM's host, when reached through one: it reports
    /// the host's storage.
    pub agent: Option<AgentClient>,
    /// The ssh forwarding a remote VM's QMP connection rides on.
    _tunnel: Option<Tunnel>,
}

/// Connects to every socket (a local path, `ssh://HOST/PATH` or
/// `mekha://HOST/PATH`, see `transport`) and checks the VMs: reachable,
/// patched with mekha, named, names unique.
/// A QMP client of the VM behind `sock`, in any of the endpoint forms
/// (a socket path, ssh://, mekha://, a libvirt URI#DOMAIN), and the tunnel
/// it runs through, which must live as long as it.
pub async fn open(sock: &Path, reach: &Reach) -> Result<(Qmp, Endpoint, Option<Tunnel>), CkptError> {
    let endpoint = Endpoint::parse(&sock.to_string_lossy()).map_err(CkptError::Refused)?;
    let (stream, tunnel) = transport::connect(&endpoint, reach).await.map_err(CkptError::Unreachable)?;
    Ok((Qmp::over(stream, sock.to_owned()).await?, endpoint, tunnel))
}

pub async fn attach(sockets: &[PathBuf], reach: &Reach) -> Result<Vec<Attached>, CkptError> {
    let connected = join_all(sockets.iter().map(|sock| async move {
        let (qmp, endpoint, tunnel) = open(sock, reach).await?;
        let info = info::query(&qmp).await?;
        let agent = match &endpoint {
            Endpoint::Agent { address, .. } => Some(reach.agent(address).map_err(CkptError::Unreachable)?),
            _ => None,
        };
        Ok::<_, CkptError>((qmp, info, agent, tunnel))
    }))
    .await;
    let mut vms = Vec::new();
    let mut names = HashSet::new();
    for (sock, outcome) in sockets.iter().zip(connected) {
        let (qmp, info, agent, tunnel) = outcome?;
        let name = info.vm_name.filter(|n| !n.is_empty()).ok_or_else(|| {
            CkptError::Refused(format!(
                "the VM behind {} has no name: start QEMU with -name NAME (images are matched to VMs by name)",
                sock.display()
            ))
        })?;
        if !names.insert(name.clone()) {
            return Err(CkptError::Refused(format!("two of the QMP sockets lead to VMs named {name}")));
        }
        vms.push(Attached { name, qmp, agent, _tunnel: tunnel });
    }
    Ok(vms)
}

/// How the coordinator runs a cluster checkpoint, beyond each VM's tuning.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub vm: CheckpointOptions,
    /// Whole live phase, all VMs: past it they stop together anyway.
    pub time_budget: Duration,
    /// Each VM's lease: how long it waits for a silent coordinator.
    pub lease: Duration,
    /// Images written at once per storage target.
    pub persist_concurrency: usize,
    /// How long a VM may show no progress while the coordinator waits for
    /// it (to stage, to write): past it, the checkpoint is given up.
    pub progress_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            vm: CheckpointOptions::default(),
            time_budget: Duration::from_secs(10),
            lease: DEFAULT_LEASE,
            persist_concurrency: 2,
            progress_timeout: DEFAULT_PROGRESS_TIMEOUT,
        }
    }
}

/// How often the coordinator polls its VMs (and renews their leases).
const POLL: Duration = Duration::from_millis(20);
/// Lead of the stop instant over "now" beyond the command's round trip:
/// the library ends its live phase 20 ms before T to prepare the pause.
const STOP_LEAD: Duration = Duration::from_millis(40);
/// Lead of a restart's resume instant beyond twice the commands' round
/// trip: the library naps until 0.5 ms before the instant.
const RESUME_LEAD: Duration = Duration::from_millis(10);
/// Slack of the resume instant over the slowest VM's pause estimate; also
/// the time frames in flight between stopped VMs have to arrive.
const RESUME_SLACK: Duration = Duration::from_millis(5);

/// One VM's part of a committed cluster checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct VmCheckpoint {
    pub vm: String,
    pub image: PathBuf,
    /// Stop instant reached minus T, ns (positive: late).
    pub stop_skew_ns: i64,
    /// Resume instant reached minus T2, ns (positive: late).
    pub resume_skew_ns: i64,
    /// `__org.mekha_query-checkpoint` at completion.
    pub progress: Value,
}

/// A committed cluster checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterCheckpoint {
    pub dir: PathBuf,
    pub generation: u64,
    /// The stop instant T and the resume instant T2 (wall clock, ns).
    pub stop_at_ns: i64,
    pub resume_at_ns: i64,
    /// From the first command to T.
    pub live_ms: f64,
    /// From the first command to the committed manifest.
    pub latency_ms: f64,
    /// Whether every VM was ready at the end of the live phase (else the
    /// time budget ended it).
    pub all_ready: bool,
    /// Largest |skew| over the VMs, ns.
    pub stop_skew_ns: i64,
    pub resume_skew_ns: i64,
    /// Longest pause of a VM, ns.
    pub max_pause_ns: u64,
    pub written_bytes: u64,
    pub vms: Vec<VmCheckpoint>,
}

/// What a caller sees of the progress: every VM's latest
/// `__org.mekha_query-checkpoint`, in the order of `vms`.
pub type Progress<'a> = &'a mut (dyn FnMut(&[Value]) + Send);

/// Runs the protocol above on `vms` into a new generation of `dir`.
pub async fn checkpoint(
    vms: &[Attached],
    dir: &Path,
    options: &ClusterOptions,
    progress: Progress<'_>,
) -> Result<ClusterCheckpoint, CkptError> {
    let started = Instant::now();
    let store = Store::open(dir)?.with_key(options.vm.key.clone());
    // Prepare, for the storage: room for about what the last checkpoint
    // of these VMs took (it stays until this one is committed).
    let (here, storage) = storage_of(vms, dir).await?;
    let parts = Parts::of(vms, &storage, &here);
    let previous = store.latest().ok().flatten();
    let last_size = |i: usize| previous.as_ref().and_then(|m| m.vm(&vms[i].name)).map_or(0, |v| v.size);
    check_space(&storage, last_size, "the last checkpoint of its VMs took")?;
    let generation = store.begin()?;
    let number = generation.number();
    // begin made the directory's id, if it had none.
    let cluster = store.id()?.unwrap_or_default();
    if let Err(e) = parts.begin(dir, &cluster, number, previous.as_ref().map(|m| m.generation)).await {
        let _ = generation.abort();
        return Err(e);
    }
    // The same path on every host: here, or in a host's own copy of `dir`.
    let mut images = Vec::new();
    for vm in vms {
        images.push(generation.image_path(&vm.name)?);
    }
    let outcome = run_checkpoint(vms, &images, dir, options, progress, started).await;
    let sealed = match outcome {
        Ok(r) => parts.seal(vms, dir, number).await.map(|sealed| (r, sealed)),
        Err(e) => Err(e),
    };
    let ((states, rendezvous), mut sealed) = match sealed {
        Ok(r) => r,
        Err(e) => {
            parts.abort(dir, number).await;
            let _ = generation.abort();
            return Err(e);
        }
    };
    // Images on other hosts: their MACs as their QEMUs reported them
    // (each restore checks its own under the key).
    for entry in &mut sealed {
        let state = vms.iter().zip(&states).find(|(vm, _)| vm.name == entry.name).map(|(_, s)| s);
        entry.mac = state.and_then(|s| s["mac"].as_str()).map(str::to_owned);
    }
    let named: Vec<(&str, &Path)> = vms
        .iter()
        .zip(&images)
        .enumerate()
        .filter(|(i, _)| !parts.holds(*i))
        .map(|(_, (vm, p))| (vm.name.as_str(), p.as_path()))
        .collect();
    fault::step(Step::Committing);
    let manifest = generation.commit_with_parts(&named, sealed)?;
    // Committed: the images live under the generation's final name.
    let images: Vec<PathBuf> = vms.iter().map(|vm| store.resolve(&manifest, &vm.name)).collect::<Result<_, _>>()?;

    let (stop_at, resume_at) = rendezvous.instants;
    let per_vm: Vec<VmCheckpoint> = vms
        .iter()
        .zip(images)
        .zip(states)
        .map(|((vm, image), state)| VmCheckpoint {
            vm: vm.name.clone(),
            image,
            stop_skew_ns: state["stopped-at-ns"].as_i64().map_or(0, |t| t - stop_at),
            resume_skew_ns: state["resumed-at-ns"].as_i64().map_or(0, |t| t - resume_at),
            progress: state,
        })
        .collect();
    Ok(ClusterCheckpoint {
        dir: dir.to_owned(),
        generation: number,
        stop_at_ns: stop_at,
        resume_at_ns: resume_at,
        live_ms: rendezvous.live.as_secs_f64() * 1e3,
        latency_ms: started.elapsed().as_secs_f64() * 1e3,
        all_ready: rendezvous.all_ready,
        stop_skew_ns: per_vm.iter().map(|v| v.stop_skew_ns.abs()).max().unwrap_or(0),
        resume_skew_ns: per_vm.iter().map(|v| v.resume_skew_ns.abs()).max().unwrap_or(0),
        max_pause_ns: per_vm.iter().map(|v| v.progress["pause-ns"].as_u64().unwrap_or(0)).max().unwrap_or(0),
        written_bytes: per_vm.iter().map(|v| v.progress["written-bytes"].as_u64().unwrap_or(0)).sum(),
        vms: per_vm,
    })
}

struct Rendezvous {
    instants: (i64, i64),
    live: Duration,
    all_ready: bool,
}

/// Steps 1 to 4; on any failure, cancels what can be cancelled.
async fn run_checkpoint(
    vms: &[Attached],
    images: &[PathBuf],
    dir: &Path,
    options: &ClusterOptions,
    progress: Progress<'_>,
    started: Instant,
) -> Result<(Vec<Value>, Rendezvous), CkptError> {
    // 1. Prepare.
    let starts = join_all(vms.iter().zip(images).map(|(vm, image)| {
        let args = checkpoint_args(image, options);
        image_key::execute_with(&vm.qmp, options.vm.key.as_ref(), "checkpoint", args)
    }))
    .await;
    if let Some((vm, e)) = vms.iter().zip(&starts).find_map(|(vm, r)| r.as_ref().err().map(|e| (vm, e))) {
        let message = format!("{}: the checkpoint was refused: {e}", vm.name);
        cancel_all(vms).await;
        return Err(CkptError::Refused(message));
    }
    fault::step(Step::Prepare);

    // 2. Live phase, up to the global ending condition.
    let mut round_trip = Duration::ZERO;
    let (states, all_ready) = loop {
        let asked = Instant::now();
        let states = match query_all(vms).await {
            Ok(states) => states,
            Err(e) => {
                cancel_all(vms).await;
                return Err(e);
            }
        };
        round_trip = round_trip.max(asked.elapsed());
        fault::step(Step::Live);
        progress(&states);
        if let Some(e) = first_failure(vms, &states) {
            cancel_all(vms).await;
            return Err(e);
        }
        let all_ready = states.iter().all(|s| s["ready"] == true);
        if all_ready || started.elapsed() >= options.time_budget {
            break (states, all_ready);
        }
        tokio::time::sleep(POLL).await;
    };

    // 3. Rendezvous.
    let pause = states.iter().filter_map(|s| s["pause-estimate-ns"].as_u64()).max().unwrap_or(0);
    let stop_at = wall_ns() + nanos(STOP_LEAD + 2 * round_trip);
    let resume_at = stop_at + (pause as i64) * 3 / 2 + nanos(RESUME_SLACK);
    let ends = join_all(
        vms.iter()
            .map(|vm| vm.qmp.execute_mekha("checkpoint-end", json!({ "stop-at": stop_at, "resume-at": resume_at }))),
    )
    .await;
    if let Some((vm, e)) = vms.iter().zip(&ends).find_map(|(vm, r)| r.as_ref().err().map(|e| (vm, e))) {
        // Some VMs will stop at T without it: their images are worthless.
        let message = format!("{}: the end of the live phase was refused: {e}", vm.name);
        cancel_all(vms).await;
        return Err(CkptError::Refused(message));
    }
    fault::step(Step::Rendezvous);
    let live = started.elapsed();

    // 4. Wait for every image to be staged; check that each storage target
    // has room for its images (if not, nothing is written and the VMs,
    // already running, lose nothing); then schedule the writes.
    // A VM may rightly stand still, stopped, until the resume instant.
    let resumed = instant_of(resume_at);
    let done = |s: &str| s == "staged" || s == "completed";
    let states = wait_all(vms, progress, done, resumed, options.progress_timeout).await?;
    let staged = |i: usize| states[i]["staged-bytes"].as_u64().unwrap_or(0);
    let storage = match storage_of(vms, dir).await {
        Ok((_, s)) => s,
        Err(e) => {
            cancel_all(vms).await;
            return Err(e);
        }
    };
    // Headers, extent index and device state beyond the staged pages.
    let with_overhead = |i: usize| staged(i) + staged(i) / 64 + (1 << 20);
    if let Err(e) = check_space(&storage, with_overhead, "the staged images need") {
        cancel_all(vms).await;
        return Err(e);
    }
    let pending: Vec<PendingImage> =
        (0..vms.len()).map(|i| PendingImage { target: storage[i].target.clone(), bytes: staged(i) }).collect();
    let mut schedule = PersistSchedule::new(&pending, options.persist_concurrency);
    let mut stalls = StallWatch::new(vms.len(), options.progress_timeout);
    let states = loop {
        for i in schedule.start() {
            if let Err(e) = vms[i].qmp.execute_mekha("checkpoint-persist", Value::Null).await {
                cancel_all(vms).await;
                return Err(CkptError::Refused(format!("{}: cannot write the image: {e}", vms[i].name)));
            }
            fault::step(Step::Persisting);
        }
        let states = query_all(vms).await?;
        progress(&states);
        if let Some(e) = first_failure(vms, &states) {
            cancel_all(vms).await;
            return Err(e);
        }
        let written: Vec<usize> = schedule.writing().filter(|&i| states[i]["status"] == "completed").collect();
        for i in written {
            schedule.finished(i);
        }
        if schedule.done() {
            break states;
        }
        // Only the images being written must progress: the others wait
        // for the schedule.
        if let Some(stalled) = stalls.observe(&states, |i| schedule.writing().any(|w| w == i)) {
            cancel_all(vms).await;
            return Err(stalled_checkpoint(vms, stalled));
        }
        tokio::time::sleep(POLL).await;
    };
    Ok((states, Rendezvous { instants: (stop_at, resume_at), live, all_ready }))
}

/// This host's view of `dir`'s storage, and each VM's: from its host's
/// agent, or this host's (a local VM, or one reached by ssh or libvirt:
/// the directory is shared).
async fn storage_of(vms: &[Attached], dir: &Path) -> Result<(StorageReport, Vec<StorageReport>), CkptError> {
    let here = storage::probe(dir).map_err(CkptError::Refused)?;
    let mut seen: HashMap<Option<String>, StorageReport> = HashMap::new();
    let mut reports = Vec::new();
    for vm in vms {
        let key = vm.agent.as_ref().map(|a| a.address().to_owned());
        if !seen.contains_key(&key) {
            let report = match &vm.agent {
                None => here.clone(),
                Some(agent) => {
                    let value = agent
                        .call(&Request::Storage { dir: dir.to_owned() })
                        .await
                        .map_err(|e| CkptError::Unreachable(e.into()))?;
                    serde_json::from_value(value)
                        .map_err(|e| CkptError::Unreachable(format!("agent {}: {e}", agent.address())))?
                }
            };
            seen.insert(key.clone(), report);
        }
        reports.push(seen[&key].clone());
    }
    Ok((here, reports))
}

/// Refuses when a storage target has less free space than its VMs need
/// (`need(i)` bytes for VM `i`).
fn check_space(storage: &[StorageReport], need: impl Fn(usize) -> u64, what: &str) -> Result<(), CkptError> {
    let mut targets: Vec<(&StorageReport, u64)> = Vec::new();
    for (i, report) in storage.iter().enumerate() {
        match targets.iter_mut().find(|(r, _)| r.target == report.target) {
            Some((first, total)) => {
                *total += need(i);
                if report.free_bytes < first.free_bytes {
                    *first = report;
                }
            }
            None => targets.push((report, need(i))),
        }
    }
    match targets.into_iter().find(|(r, total)| r.free_bytes < *total) {
        Some((r, total)) => Err(CkptError::Refused(format!(
            "not enough space for the checkpoint in {} (storage {}): {what} {} MiB, {} MiB are free; \
             nothing was written, every VM runs on, the previous checkpoint (if any) stays",
            r.dir.display(),
            r.target,
            total.div_ceil(1 << 20),
            r.free_bytes >> 20
        ))),
        None => Ok(()),
    }
}

fn checkpoint_args(image: &Path, options: &ClusterOptions) -> Value {
    let o = &options.vm;
    let mut args = json!({
        "path": image,
        "mode": o.mode.as_str(),
        "hold": true,
        "persist-hold": true,
        "lease-ms": options.lease.as_millis() as u64,
        "allow-writable-disks": o.allow_writable_disks,
    });
    for (key, value) in [("staging-mib", o.staging_mib), ("epoch-ms", o.epoch_ms)] {
        if let Some(v) = value {
            args[key] = v.into();
        }
    }
    for (key, value) in [("dirty-share", o.dirty_share), ("clean-share", o.clean_share)] {
        if let Some(v) = value {
            args[key] = v.into();
        }
    }
    args
}

/// Every VM's `query-checkpoint`, as this coordinator's: it renews the
/// checkpoints' leases (a status poll by anyone else does not).
async fn query_all(vms: &[Attached]) -> Result<Vec<Value>, CkptError> {
    query_all_named(vms, "query-checkpoint", renew_lease(), unreachable_vm).await
}

/// Every VM's answer to mekha's query `command`, asked concurrently; a
/// VM that does not answer is `lost`.
async fn query_all_named(
    vms: &[Attached],
    command: &str,
    args: Value,
    lost: fn(&str, QmpError) -> CkptError,
) -> Result<Vec<Value>, CkptError> {
    let answers = join_all(vms.iter().map(|vm| vm.qmp.execute_mekha(command, args.clone()))).await;
    vms.iter().zip(answers).map(|(vm, a)| a.map_err(|e| lost(&vm.name, e))).collect()
}

/// Polls until every VM's status passes `done`; gives up when a VM not
/// done shows no progress for `limit` after `watched_from`.
async fn wait_all(
    vms: &[Attached],
    progress: Progress<'_>,
    done: impl Fn(&str) -> bool,
    watched_from: Instant,
    limit: Duration,
) -> Result<Vec<Value>, CkptError> {
    let mut stalls = StallWatch::new(vms.len(), limit);
    loop {
        let states = match query_all(vms).await {
            Ok(s) => s,
            Err(e) => {
                cancel_all(vms).await;
                return Err(e);
            }
        };
        progress(&states);
        if let Some(e) = first_failure(vms, &states) {
            cancel_all(vms).await;
            return Err(e);
        }
        if states.iter().any(|s| s["stopped-at-ns"].is_i64()) {
            fault::step(Step::Stopped);
        }
        let is_done = |i: usize| done(states[i]["status"].as_str().unwrap_or(""));
        if (0..vms.len()).all(is_done) {
            return Ok(states);
        }
        let watched = Instant::now() >= watched_from;
        if let Some(stalled) = stalls.observe(&states, |i| watched && !is_done(i)) {
            cancel_all(vms).await;
            return Err(stalled_checkpoint(vms, stalled));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn stalled_checkpoint(vms: &[Attached], stalled: Stalled) -> CkptError {
    CkptError::Failed {
        vm: vms[stalled.vm].name.clone(),
        message: format!(
            "it made no progress for {} ms (status {}): the checkpoint was given up and nothing was committed; \
             the previous checkpoint (if any) stays",
            stalled.idle.as_millis(),
            stalled.status
        ),
    }
}

fn first_failure(vms: &[Attached], states: &[Value]) -> Option<CkptError> {
    vms.iter().zip(states).find(|(_, s)| s["status"] == "failed").map(|(vm, s)| CkptError::Failed {
        vm: vm.name.clone(),
        message: s["error"].as_str().unwrap_or("unknown error").to_owned(),
    })
}

/// Cancels every VM's checkpoint that can still be cancelled, and waits
/// (boundedly) for those to end, so that the next checkpoint finds them
/// idle; the others finish on their own and are never committed.
pub async fn cancel_all(vms: &[Attached]) {
    let cancels = join_all(vms.iter().map(|vm| vm.qmp.execute_mekha("checkpoint-cancel", Value::Null))).await;
    let deadline = Instant::now() + CANCEL_SETTLE;
    for (vm, _) in vms.iter().zip(cancels).filter(|(_, c)| c.is_ok()) {
        while Instant::now() < deadline {
            match vm.qmp.execute_mekha("query-checkpoint", Value::Null).await {
                Ok(s) if matches!(s["status"].as_str(), Some("live" | "staged")) => tokio::time::sleep(POLL).await,
                _ => break,
            }
        }
    }
}

/// How long [`cancel_all`] waits for cancelled checkpoints to end.
const CANCEL_SETTLE: Duration = Duration::from_secs(10);

fn unreachable_vm(name: &str, e: QmpError) -> CkptError {
    CkptError::Failed { vm: name.to_owned(), message: format!("lost contact with its QEMU: {e}") }
}

fn lost_restore(name: &str, e: QmpError) -> CkptError {
    CkptError::RestoreFailed { vm: name.to_owned(), message: format!("lost contact with its QEMU: {e}") }
}

/// Waits for event `name` from any of the VMs, at most `limit`.
async fn next_event(events: &mut [broadcast::Receiver<Event>], name: &str, limit: Duration) {
    if events.is_empty() {
        return tokio::time::sleep(limit).await;
    }
    let waits = events.iter_mut().map(|rx| {
        Box::pin(async move {
            loop {
                match rx.recv().await {
                    Ok(e) if e.event == name => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    // The connection is gone: the next query says so.
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        })
    });
    let _ = tokio::time::timeout(limit, futures::future::select_all(waits)).await;
}

/// One VM of a restart.
#[derive(Debug, Clone, Serialize)]
pub struct VmRestore {
    pub vm: String,
    pub image: PathBuf,
    /// Resume instant reached minus the cluster's, ns.
    pub resume_skew_ns: i64,
    /// `__org.mekha_query-restore` once resumed (or loaded, if paused).
    pub progress: Value,
}

/// A restarted cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRestore {
    pub dir: PathBuf,
    pub generation: u64,
    /// The common resume instant (wall clock, ns); none when left paused.
    pub resume_at_ns: Option<i64>,
    pub resume_skew_ns: i64,
    /// From the first command to every VM running (or loaded).
    pub latency_ms: f64,
    pub vms: Vec<VmRestore>,
}

/// Restores every VM from the latest committed checkpoint of `dir`,
/// paused; once all loaded, resumes them at one instant (unless
/// `options.paused`).
pub async fn restore(
    vms: &[Attached],
    dir: &Path,
    options: &RestoreOptions,
    progress: Progress<'_>,
) -> Result<ClusterRestore, CkptError> {
    let started = Instant::now();
    let (store, manifest) = latest_checkpoint(dir, options.key.as_ref())?;
    // Every VM has its image, every image its VM, and each is the one
    // committed, before anything runs.
    let mut images = Vec::new();
    for vm in vms {
        if manifest.vm(&vm.name).is_none() {
            return Err(CkptError::Refused(format!(
                "{}: checkpoint generation {} of {} has no image of this VM (it has: {})",
                vm.name,
                manifest.generation,
                dir.display(),
                manifest.vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        images.push(store.resolve(&manifest, &vm.name).map_err(|e| CkptError::Refused(format!("{}: {e}", vm.name)))?);
    }
    let missing: Vec<&str> =
        manifest.vms.iter().map(|v| v.name.as_str()).filter(|n| !vms.iter().any(|vm| vm.name == *n)).collect();
    if !missing.is_empty() {
        return Err(CkptError::Refused(format!(
            "checkpoint generation {} also holds {}: give every VM of the cluster (--qmp for each)",
            manifest.generation,
            missing.join(", ")
        )));
    }
    parts::check_images(vms, &store, &manifest).await?;

    // Each VM's events wake the waits below as soon as it reports; the
    // polls stay, at their pace, for what an event would not tell.
    let mut events: Vec<broadcast::Receiver<Event>> = vms.iter().map(|vm| vm.qmp.subscribe()).collect();
    let loads = join_all(vms.iter().zip(&images).map(|(vm, image)| {
        // Read, not mapped from the image (the library's default where it
        // can): a mapped file cannot be write-protected, and the restarted
        // VMs must checkpoint again in copy-on-write mode.
        let mut args = json!({ "path": image, "start": false, "time": options.time.as_str(), "lazy": false });
        if let Some(ppm) = options.catch_up_ppm {
            args["catch-up-ppm"] = ppm.into();
        }
        if let Some(lag) = options.lag_ns {
            args["lag-ns"] = lag.into();
        }
        if !options.paused {
            args["lease-ms"] = (options.lease.as_millis().max(1) as u64).into();
        }
        if let Some(mac) = manifest.vm(&vm.name).and_then(|v| v.mac.as_deref()).filter(|_| options.key.is_some()) {
            args["mac"] = mac.into();
        }
        image_key::execute_with(&vm.qmp, options.key.as_ref(), "restore", args)
    }))
    .await;
    for (vm, load) in vms.iter().zip(loads) {
        load.map_err(|e| CkptError::RestoreFailed { vm: vm.name.clone(), message: e.to_string() })?;
    }
    fault::step(Step::RestoreLoading);
    let restored_event = format!("{MEKHA_PREFIX}RESTORE");
    let mut round_trip;
    let mut stalls = StallWatch::new(vms.len(), options.progress_timeout);
    let mut slow_since = None;
    let states = loop {
        let asked = Instant::now();
        let states = query_all_named(vms, "query-restore", renew_lease(), lost_restore).await?;
        round_trip = asked.elapsed();
        progress(&states);
        if let Some((vm, s)) = vms.iter().zip(&states).find(|(_, s)| s["status"] == "failed") {
            return Err(CkptError::RestoreFailed {
                vm: vm.name.clone(),
                message: format!(
                    "{} (no VM of the cluster was resumed)",
                    s["error"].as_str().unwrap_or("unknown error")
                ),
            });
        }
        if states.iter().all(|s| s["status"] == "completed") {
            // A round slower than half the lease may have let a VM's lease
            // run out unseen: resume only on a round that cannot have.
            if options.paused || round_trip < options.lease / 2 {
                break states;
            }
            let since = *slow_since.get_or_insert_with(Instant::now);
            if since.elapsed() > options.progress_timeout {
                return Err(CkptError::Refused(format!(
                    "the VMs answer too slowly to be resumed together safely (round trip {} ms, lease {} ms): \
                     no VM was resumed; a longer --lease-ms helps",
                    round_trip.as_millis(),
                    options.lease.as_millis()
                )));
            }
            continue;
        }
        // The others, loaded, shut down once their leases run out.
        if let Some(stalled) = stalls.observe(&states, |i| states[i]["status"] == "loading") {
            return Err(CkptError::RestoreFailed {
                vm: vms[stalled.vm].name.clone(),
                message: format!(
                    "it made no progress loading its image for {} ms: the restart was given up, no VM of the \
                     cluster was resumed",
                    stalled.idle.as_millis()
                ),
            });
        }
        next_event(&mut events, &restored_event, POLL).await;
    };

    let mut resume_at = None;
    let mut states = states;
    if !options.paused {
        // The resume commands go out together, as the last queries did:
        // twice their round trip, and a margin for the nap to end.
        let at = wall_ns() + nanos(RESUME_LEAD + 2 * round_trip);
        let resumes = join_all(vms.iter().map(|vm| vm.qmp.execute_mekha("resume", json!({ "at": at })))).await;
        for (vm, r) in vms.iter().zip(resumes) {
            r.map_err(|e| CkptError::RestoreFailed { vm: vm.name.clone(), message: e.to_string() })?;
        }
        fault::step(Step::RestoreResuming);
        // Each VM resumes at `at` by itself: past it by the progress
        // timeout, one that has not is stuck.
        let deadline = instant_of(at) + options.progress_timeout;
        states = loop {
            let states = query_all_named(vms, "query-restore", Value::Null, lost_restore).await?;
            if states.iter().all(|s| s["resumed-at-ns"].is_i64()) {
                break states;
            }
            if Instant::now() >= deadline {
                let (vm, _) = vms.iter().zip(&states).find(|(_, s)| !s["resumed-at-ns"].is_i64()).expect("one waits");
                return Err(CkptError::RestoreFailed {
                    vm: vm.name.clone(),
                    message: format!(
                        "it did not resume within {} ms of the cluster's instant (see its QEMU's stderr)",
                        options.progress_timeout.as_millis()
                    ),
                });
            }
            if let Some((vm, _)) = vms.iter().zip(&states).find(|(_, s)| s["resume-at-ns"].is_null()) {
                return Err(CkptError::RestoreFailed {
                    vm: vm.name.clone(),
                    message: "it could not be resumed (see its QEMU's stderr)".into(),
                });
            }
            next_event(&mut events, "RESUME", POLL).await;
        };
        resume_at = Some(at);
    }
    let per_vm: Vec<VmRestore> = vms
        .iter()
        .zip(images)
        .zip(states)
        .map(|((vm, image), state)| VmRestore {
            vm: vm.name.clone(),
            image,
            resume_skew_ns: match (resume_at, state["resumed-at-ns"].as_i64()) {
                (Some(at), Some(t)) => t - at,
                _ => 0,
            },
            progress: state,
        })
        .collect();
    Ok(ClusterRestore {
        dir: dir.to_owned(),
        generation: manifest.generation,
        resume_at_ns: resume_at,
        resume_skew_ns: per_vm.iter().map(|v| v.resume_skew_ns.abs()).max().unwrap_or(0),
        latency_ms: started.elapsed().as_secs_f64() * 1e3,
        vms: per_vm,
    })
}

/// Arguments of a query that renews the VMs' leases: the coordinator's
/// own (a status poll by anyone else does not).
fn renew_lease() -> Value {
    json!({ "renew-lease": true })
}

/// The monotonic instant of wall-clock instant `wall` (ns); now if past.
fn instant_of(wall: i64) -> Instant {
    Instant::now() + Duration::from_nanos((wall - wall_ns()).max(0) as u64)
}

fn wall_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_nanos() as i64
}

fn nanos(d: Duration) -> i64 {
    d.as_nanos() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(target: &str, free_mib: u64) -> StorageReport {
        StorageReport {
            dir: "/ckpt".into(),
            target: target.into(),
            fs_type: "ext4".into(),
            shared: false,
            free_bytes: free_mib << 20,
            total_bytes: 1 << 40,
        }
    }

    #[test]
    fn space_is_counted_per_storage_target() {
        let need = |_| 60 << 20;
        // Two VMs writing to one disk need 120 MiB of its 100.
        let err = check_space(&[report("a:8:1", 100), report("a:8:1", 100)], need, "needs").unwrap_err();
        assert!(err.to_string().contains("storage a:8:1): needs 120 MiB, 100 MiB are free"), "{err}");
        // On two disks, 60 MiB each fits.
        check_space(&[report("a:8:1", 100), report("b:8:1", 100)], need, "needs").unwrap();
        // Hosts seeing one shared target differently: the least free counts.
        let err = check_space(&[report("nfs:fs:/x", 200), report("nfs:fs:/x", 90)], need, "needs").unwrap_err();
        assert!(err.to_string().contains("90 MiB are free"), "{err}");
        check_space(&[report("a:8:1", 0)], |_| 0, "needs").unwrap();
    }
}
