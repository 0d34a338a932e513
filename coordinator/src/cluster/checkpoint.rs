// SPDX-License-Identifier: GPL-2.0-or-later
//! A cluster checkpoint: prepare, live phase, rendezvous, persist and
//! commit (the protocol is in the parent module's documentation).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::join_all;
use mekha_ckpt_core::netcut::NetdevPeers;
use mekha_ckpt_core::session::checkpoint::{self, EndArgs, NetCut, Status};
use mekha_ckpt_core::session::commands::{Checkpoint, CheckpointEnd, CheckpointPersist, QueryInfo};
use mekha_ckpt_core::session::Empty;
use mekha_ckpt_core::store::Store;
use mekha_ckpt_core::width::saturating_u64;
use serde::{Deserialize, Serialize};

use super::rendezvous::{checkpoint_instant, instant_of, skew, wall_ns, widest, Rendezvous};
use super::segments::{self, NicNames};
use super::space::{check_space, storage_of};
use super::{cancel_all, first_failure, query_all, Attached, ClusterOptions, Progress, POLL};
use crate::ckpt::CkptError;
use crate::fault::{self, Step};
use crate::image_key;
use crate::parts::Parts;
use crate::schedule::{PendingImage, PersistSchedule};
use crate::stall::{StallWatch, Stalled};

/// One VM's part of a committed cluster checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmCheckpoint {
    pub vm: String,
    pub image: PathBuf,
    /// Stop instant reached minus T, ns (positive: late).
    pub stop_skew_ns: i64,
    /// `__org.mekha_query-checkpoint` at completion.
    pub progress: checkpoint::Info,
}

/// A committed cluster checkpoint (`mekha checkpoint --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterCheckpoint {
    pub dir: PathBuf,
    pub generation: u64,
    /// The stop instant T (wall clock, ns); each VM resumed as soon as
    /// its capture allowed.
    pub stop_at_ns: i64,
    /// From the first command to T.
    pub live_ms: f64,
    /// From the first command to the committed manifest.
    pub latency_ms: f64,
    /// Whether every VM was ready at the end of the live phase (else the
    /// time budget ended it).
    pub all_ready: bool,
    /// Largest |skew| over the VMs, ns.
    pub stop_skew_ns: i64,
    /// Longest pause of a VM, ns.
    pub max_pause_ns: u64,
    pub written_bytes: u64,
    /// Network frames in flight at T, saved in the images (the cut's
    /// channel state), all VMs together.
    pub net_saved_frames: u64,
    pub vms: Vec<VmCheckpoint>,
}

/// Runs the protocol above on `vms` into a new generation of `dir`.
pub async fn checkpoint(
    vms: &[Attached],
    dir: &Path,
    options: &ClusterOptions,
    progress: Progress<'_, checkpoint::Info>,
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
    // Each VM's disks are captured since its image in the last committed
    // generation (the same path on every host too).
    let parents: Vec<Option<PathBuf>> =
        vms.iter().map(|vm| previous.as_ref().and_then(|m| m.vm(&vm.name)).map(|v| dir.join(&v.image))).collect();
    let steps = run_checkpoint(vms, &images, &parents, dir, options, progress, started);
    let outcome = cancelling_on_failure(vms, steps).await;
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
        entry.mac = state.and_then(|s| s.mac.clone());
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

    let stop_at = rendezvous.stop_at;
    let per_vm: Vec<VmCheckpoint> = vms
        .iter()
        .zip(images)
        .zip(states)
        .map(|((vm, image), state)| VmCheckpoint {
            vm: vm.name.clone(),
            image,
            stop_skew_ns: skew(state.stopped_at_ns, stop_at),
            progress: state,
        })
        .collect();
    Ok(ClusterCheckpoint {
        dir: dir.to_owned(),
        generation: number,
        stop_at_ns: stop_at,
        live_ms: rendezvous.live.as_secs_f64() * 1e3,
        latency_ms: started.elapsed().as_secs_f64() * 1e3,
        all_ready: rendezvous.all_ready,
        stop_skew_ns: widest(per_vm.iter().map(|v| v.stop_skew_ns)),
        max_pause_ns: per_vm.iter().map(|v| v.progress.pause_ns).max().unwrap_or(0),
        written_bytes: per_vm.iter().map(|v| v.progress.written_bytes).sum(),
        net_saved_frames: per_vm.iter().map(|v| v.progress.net_saved_frames).sum(),
        vms: per_vm,
    })
}

/// Awaits `steps` (steps 1 to 4 of a checkpoint, see [`run_checkpoint`])
/// and, when they fail, cancels every VM's checkpoint (but where a step
/// says otherwise, see [`StepFailed`]).
///
/// The cancel is a scope around the steps, not a guard that cancels on
/// drop: cancelling is a QMP exchange with every VM and a bounded wait
/// for their checkpoints to end, which a `Drop` (synchronous) cannot
/// await, and a task spawned from one may not outlive the runtime of a
/// `mekha` about to exit. So every way out of the steps is a returned
/// error, and the cancel is awaited before the error goes on. A caller
/// that drops this future midway (the command line on a signal) cancels
/// by itself.
async fn cancelling_on_failure<T>(
    vms: &[Attached],
    steps: impl Future<Output = Result<T, StepFailed>>,
) -> Result<T, CkptError> {
    match steps.await {
        Ok(outcome) => Ok(outcome),
        Err(StepFailed { error, cancel }) => {
            if cancel {
                cancel_all(vms).await;
            }
            Err(error)
        }
    }
}

/// Why the steps of a checkpoint stopped, and whether the VMs'
/// checkpoints are to be cancelled (any error `?` turns into one that
/// cancels them).
struct StepFailed {
    error: CkptError,
    cancel: bool,
}

impl From<CkptError> for StepFailed {
    fn from(error: CkptError) -> StepFailed {
        StepFailed { error, cancel: true }
    }
}

impl StepFailed {
    /// A failure that leaves the VMs' checkpoints to end by themselves
    /// (their leases).
    fn leaving_checkpoints(error: CkptError) -> StepFailed {
        StepFailed { error, cancel: false }
    }
}

/// Steps 1 to 4: prepare, live phase, rendezvous, persist. Run inside
/// [`cancelling_on_failure`].
async fn run_checkpoint(
    vms: &[Attached],
    images: &[PathBuf],
    parents: &[Option<PathBuf>],
    dir: &Path,
    options: &ClusterOptions,
    progress: Progress<'_, checkpoint::Info>,
    started: Instant,
) -> Result<(Vec<checkpoint::Info>, Rendezvous), StepFailed> {
    // 1. Prepare.
    let starts = join_all(vms.iter().zip(images).zip(parents).map(|((vm, image), parent)| {
        let args = checkpoint::Args { disk_parent: parent.clone(), ..checkpoint_args(image, options) };
        image_key::call_with::<Checkpoint>(&vm.qmp, options.vm.key.as_ref(), args)
    }))
    .await;
    if let Some((vm, e)) = vms.iter().zip(&starts).find_map(|(vm, r)| r.as_ref().err().map(|e| (vm, e))) {
        return Err(CkptError::Refused(format!("{}: the checkpoint was refused: {e}", vm.name)).into());
    }
    fault::step(Step::Prepare);

    // 2. Live phase, up to the global ending condition.
    let mut round_trip = Duration::ZERO;
    let all_ready = loop {
        let asked = Instant::now();
        let states = query_all(vms).await?;
        round_trip = round_trip.max(asked.elapsed());
        fault::step(Step::Live);
        progress(&states);
        if let Some(e) = first_failure(vms, &states) {
            return Err(e.into());
        }
        let all_ready = states.iter().all(|s| s.ready);
        if all_ready || started.elapsed() >= options.time_budget {
            break all_ready;
        }
        tokio::time::sleep(POLL).await;
    };

    // 3. Rendezvous: one stop instant, and the network cut (which NICs
    // wait for whose markers, from what each NIC has seen by now).
    let asked = Instant::now();
    let (peers, nic_names) = net_peers(vms).await?;
    // A VM's failure that names peers' MACs (a marker that did not come)
    // says whose NICs they are.
    let explain = |e: CkptError| match e {
        CkptError::Failed { vm, message } => CkptError::Failed { vm, message: nic_names.explain(&message) },
        e => e,
    };
    round_trip = round_trip.max(asked.elapsed());
    let stop_at = checkpoint_instant(wall_ns(), round_trip);
    let id = cut_id()?;
    let ends = join_all(vms.iter().zip(peers).map(|(vm, peers)| {
        let end = EndArgs { stop_at: Some(stop_at), cut: Some(NetCut { id, peers }) };
        async move { vm.qmp.call::<CheckpointEnd>(&end).await }
    }))
    .await;
    if let Some((vm, e)) = vms.iter().zip(&ends).find_map(|(vm, r)| r.as_ref().err().map(|e| (vm, e))) {
        // Some VMs will stop at T without it: their images are worthless.
        return Err(CkptError::Refused(format!("{}: the end of the live phase was refused: {e}", vm.name)).into());
    }
    fault::step(Step::Rendezvous);
    let live = started.elapsed();

    // 4. Wait for every image to be staged; check that each storage target
    // has room for its images (if not, nothing is written and the VMs,
    // already running, lose nothing); then schedule the writes. A VM
    // stages its image once its network cut is complete: every peer's
    // marker came (else its checkpoint fails, marker-missing or
    // marker-unexpected). A VM may rightly stand still until the stop
    // instant.
    let done = |s: Status| s == Status::Staged || s == Status::Completed;
    let states = wait_all(vms, progress, done, instant_of(stop_at), options.progress_timeout).await.map_err(explain)?;
    let staged = |i: usize| states[i].staged_bytes;
    let (_, storage) = storage_of(vms, dir).await?;
    // Headers, extent index and device state beyond the staged pages.
    let with_overhead = |i: usize| staged(i) + staged(i) / 64 + (1 << 20);
    check_space(&storage, with_overhead, "the staged images need")?;
    let pending: Vec<PendingImage> =
        (0..vms.len()).map(|i| PendingImage { target: storage[i].target.clone(), bytes: staged(i) }).collect();
    let mut schedule = PersistSchedule::new(&pending, options.persist_concurrency);
    let mut stalls = StallWatch::new(vms.len(), options.progress_timeout);
    let states = loop {
        for i in schedule.start() {
            if let Err(e) = vms[i].qmp.call::<CheckpointPersist>(&Empty {}).await {
                return Err(CkptError::Refused(format!("{}: cannot write the image: {e}", vms[i].name)).into());
            }
            fault::step(Step::Persisting);
        }
        // A VM lost while the images are written leaves the others'
        // checkpoints as they are (as it always did: unlike every other
        // failure here, it cancels none).
        let states = query_all(vms).await.map_err(StepFailed::leaving_checkpoints)?;
        progress(&states);
        if let Some(e) = first_failure(vms, &states) {
            return Err(explain(e).into());
        }
        let written: Vec<usize> = schedule.writing().filter(|&i| states[i].status == Status::Completed).collect();
        for i in written {
            schedule.finished(i);
        }
        if schedule.done() {
            break states;
        }
        // Only the images being written must progress: the others wait
        // for the schedule.
        if let Some(stalled) = stalls.observe(&states, |i| schedule.writing().any(|w| w == i)) {
            return Err(stalled_checkpoint(vms, stalled).into());
        }
        tokio::time::sleep(POLL).await;
    };
    Ok((states, Rendezvous { stop_at, live, all_ready }))
}

/// Each VM's NICs' peers on their segments, from what the NICs have seen,
/// and whose NIC each MAC is.
async fn net_peers(vms: &[Attached]) -> Result<(Vec<Vec<NetdevPeers>>, NicNames), CkptError> {
    let infos = join_all(vms.iter().map(|vm| vm.qmp.call::<QueryInfo>(&Empty {}))).await;
    let mut nics = Vec::new();
    for (vm, info) in vms.iter().zip(infos) {
        let info = info.map_err(|e| CkptError::Refused(format!("{}: cannot read its NICs: {e}", vm.name)))?;
        nics.push(info.nics);
    }
    let names: Vec<String> = vms.iter().map(|vm| vm.name.clone()).collect();
    let peers = segments::peers(&names, &nics).map_err(CkptError::Refused)?;
    Ok((peers, NicNames::new(&names, &nics)))
}

/// A fresh id for a cluster checkpoint's markers: markers of another
/// cluster, or a late one of an earlier checkpoint, never count.
fn cut_id() -> Result<u64, CkptError> {
    let mut id = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| CkptError::Refused("the system's random number generator failed".into()))?;
    Ok(u64::from_ne_bytes(id))
}

fn checkpoint_args(image: &Path, options: &ClusterOptions) -> checkpoint::Args {
    let o = &options.vm;
    checkpoint::Args {
        path: image.to_owned(),
        mode: Some(o.mode.into()),
        hold: Some(true),
        persist_hold: Some(true),
        lease_ms: Some(saturating_u64(options.lease.as_millis())),
        allow_writable_disks: Some(o.allow_writable_disks),
        staging_mib: o.staging_mib,
        epoch_ms: o.epoch_ms,
        dirty_share: o.dirty_share,
        clean_share: o.clean_share,
        ..checkpoint::Args::default()
    }
}

/// Polls until every VM's status passes `done`; gives up when a VM not
/// done shows no progress for `limit` after `watched_from`. A step of
/// [`run_checkpoint`]: its failures cancel the checkpoints there.
async fn wait_all(
    vms: &[Attached],
    progress: Progress<'_, checkpoint::Info>,
    done: impl Fn(Status) -> bool,
    watched_from: Instant,
    limit: Duration,
) -> Result<Vec<checkpoint::Info>, CkptError> {
    let mut stalls = StallWatch::new(vms.len(), limit);
    loop {
        let states = query_all(vms).await?;
        progress(&states);
        if let Some(e) = first_failure(vms, &states) {
            return Err(e);
        }
        if states.iter().any(|s| s.stopped_at_ns.is_some()) {
            fault::step(Step::Stopped);
        }
        let is_done = |i: usize| done(states[i].status);
        if (0..vms.len()).all(is_done) {
            return Ok(states);
        }
        let watched = Instant::now() >= watched_from;
        if let Some(stalled) = stalls.observe(&states, |i| watched && !is_done(i)) {
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
