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
//! 3. rendezvous: one stop instant T on the hosts' wall clocks and the
//!    network cut (an id, and each NIC's peers on its segment, see
//!    `segments`) go to every VM; each stops at T, sends a marker on
//!    every NIC, copies what is left and its devices into memory, and
//!    resumes at once; it saves the frames in flight toward it until
//!    every peer's marker came (`mekha_ckpt_core::netcut`);
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
//! committed, and a stopped VM resumes by itself.
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
//!
//! Here: attaching the VMs and what both protocols share (polls, cancel,
//! events); `checkpoint` runs steps 1 to 5, `rendezvous` reckons the
//! instants, `segments` the NICs' peers, `space` checks the storage
//! targets' room, `restore` runs a restart.

mod checkpoint;
mod rendezvous;
mod restore;
mod segments;
mod space;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::join_all;
use mekha_ckpt_core::session::checkpoint::{Info as CheckpointInfo, QueryArgs, Status};
use mekha_ckpt_core::session::commands::{CheckpointCancel, QueryCheckpoint};
use mekha_ckpt_core::session::{Command, Empty};
use tokio::sync::broadcast;

use crate::agent::AgentClient;
use crate::ckpt::{CheckpointOptions, CkptError, DEFAULT_LEASE, DEFAULT_PROGRESS_TIMEOUT};
use crate::info;
use crate::qmp::{Event, Qmp, QmpError};
use crate::transport::{self, Endpoint, Reach, Tunnel};

pub use checkpoint::{checkpoint, ClusterCheckpoint, VmCheckpoint};
pub use restore::{restore, ClusterRestore, VmRestore};

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

/// A QMP client of the VM behind `sock`, in any of the endpoint forms
/// (a socket path, ssh://, mekha://, a libvirt URI#DOMAIN), and the tunnel
/// it runs through, which must live as long as it.
pub async fn open(sock: &Path, reach: &Reach) -> Result<(Qmp, Endpoint, Option<Tunnel>), CkptError> {
    let endpoint = Endpoint::parse(&sock.to_string_lossy()).map_err(CkptError::Refused)?;
    let (stream, tunnel) = transport::connect(&endpoint, reach).await.map_err(CkptError::Unreachable)?;
    Ok((Qmp::over(stream, sock.to_owned()).await?, endpoint, tunnel))
}

/// Connects to every socket (a local path, `ssh://HOST/PATH` or
/// `mekha://HOST/PATH`, see `transport`) and checks the VMs: reachable,
/// patched with mekha, named, names unique.
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
pub(super) const POLL: Duration = Duration::from_millis(20);

/// What a caller sees of the progress: every VM's latest
/// `__org.mekha_query-checkpoint` (or `query-restore`, `T`), in the order
/// of `vms`.
pub type Progress<'a, T> = &'a mut (dyn FnMut(&[T]) + Send);

/// Every VM's `query-checkpoint`, as this coordinator's: it renews the
/// checkpoints' leases (a status poll by anyone else does not).
pub(super) async fn query_all(vms: &[Attached]) -> Result<Vec<CheckpointInfo>, CkptError> {
    query_all_of::<QueryCheckpoint>(vms, &renew_lease(), unreachable_vm).await
}

/// Every VM's answer to mekha's query `C`, asked concurrently; a VM that
/// does not answer is `lost`.
pub(super) async fn query_all_of<C: Command>(
    vms: &[Attached],
    args: &C::Args,
    lost: fn(&str, QmpError) -> CkptError,
) -> Result<Vec<C::Reply>, CkptError> {
    let answers = join_all(vms.iter().map(|vm| vm.qmp.call::<C>(args))).await;
    vms.iter().zip(answers).map(|(vm, a)| a.map_err(|e| lost(&vm.name, e))).collect()
}

pub(super) fn first_failure(vms: &[Attached], states: &[CheckpointInfo]) -> Option<CkptError> {
    vms.iter().zip(states).find(|(_, s)| s.status == Status::Failed).map(|(vm, s)| CkptError::Failed {
        vm: vm.name.clone(),
        message: s.error.clone().unwrap_or_else(|| "unknown error".to_owned()),
    })
}

/// Cancels every VM's checkpoint that can still be cancelled, and waits
/// (boundedly) for those to end, so that the next checkpoint finds them
/// idle; the others finish on their own and are never committed.
pub async fn cancel_all(vms: &[Attached]) {
    let cancels = join_all(vms.iter().map(|vm| vm.qmp.call::<CheckpointCancel>(&Empty {}))).await;
    let deadline = Instant::now() + CANCEL_SETTLE;
    for (vm, _) in vms.iter().zip(cancels).filter(|(_, c)| c.is_ok()) {
        while Instant::now() < deadline {
            match vm.qmp.call::<QueryCheckpoint>(&QueryArgs::default()).await {
                Ok(s) if matches!(s.status, Status::Live | Status::Staged) => tokio::time::sleep(POLL).await,
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

/// Waits for event `name` from any of the VMs, at most `limit`.
pub(super) async fn next_event(events: &mut [broadcast::Receiver<Event>], name: &str, limit: Duration) {
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

/// Arguments of a query that renews the VMs' leases: the coordinator's
/// own (a status poll by anyone else does not).
pub(super) fn renew_lease() -> QueryArgs {
    QueryArgs { renew_lease: Some(true) }
}
