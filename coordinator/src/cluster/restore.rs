// SPDX-License-Identifier: GPL-2.0-or-later
//! A cluster restart: every VM loads its image paused, then all resume at
//! one instant.

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::future::join_all;
use mekha_ckpt_core::session::commands::{QueryRestore, Restore, RestoreEvent, Resume};
use mekha_ckpt_core::session::restore::{self, QueryArgs, ResumeArgs, Status};
use mekha_ckpt_core::session::Event as _;
use mekha_ckpt_core::width::saturating_u64;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::rendezvous::{instant_of, renewed_in_time, restart_instant, skew, wall_ns, widest};
use super::{next_event, query_all_of, Attached, Progress, POLL};
use crate::ckpt::{latest_checkpoint, CkptError, RestoreOptions};
use crate::fault::{self, Step};
use crate::image_key;
use crate::parts;
use crate::qmp::{Event, QmpError};
use crate::stall::StallWatch;

fn lost_restore(name: &str, e: QmpError) -> CkptError {
    CkptError::RestoreFailed { vm: name.to_owned(), message: format!("lost contact with its QEMU: {e}") }
}

/// One VM of a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRestore {
    pub vm: String,
    pub image: PathBuf,
    /// Resume instant reached minus the cluster's, ns.
    pub resume_skew_ns: i64,
    /// `__org.mekha_query-restore` once resumed (or loaded, if paused).
    pub progress: restore::Info,
}

/// A restarted cluster (`mekha restore --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    progress: Progress<'_, restore::Info>,
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
        let args = restore::Args {
            path: image.clone(),
            start: Some(false),
            time: Some(options.time.into()),
            lazy: Some(false),
            catch_up_ppm: options.catch_up_ppm,
            lag_ns: options.lag_ns,
            lease_ms: (!options.paused).then(|| saturating_u64(options.lease.as_millis().max(1))),
            mac: manifest.vm(&vm.name).and_then(|v| v.mac.clone()).filter(|_| options.key.is_some()),
            ..restore::Args::default()
        };
        image_key::call_with::<Restore>(&vm.qmp, options.key.as_ref(), args)
    }))
    .await;
    for (vm, load) in vms.iter().zip(loads) {
        load.map_err(|e| CkptError::RestoreFailed { vm: vm.name.clone(), message: e.to_string() })?;
    }
    fault::step(Step::RestoreLoading);
    let renew = QueryArgs { renew_lease: Some(true) };
    let mut round_trip;
    let mut stalls = StallWatch::new(vms.len(), options.progress_timeout);
    let mut slow_since = None;
    let states = loop {
        let asked = Instant::now();
        let states = query_all_of::<QueryRestore>(vms, &renew, lost_restore).await?;
        round_trip = asked.elapsed();
        progress(&states);
        if let Some((vm, s)) = vms.iter().zip(&states).find(|(_, s)| s.status == Status::Failed) {
            return Err(CkptError::RestoreFailed {
                vm: vm.name.clone(),
                message: format!(
                    "{} (no VM of the cluster was resumed)",
                    s.error.as_deref().unwrap_or("unknown error")
                ),
            });
        }
        if states.iter().all(|s| s.status == Status::Completed) {
            // A round slower than half the lease may have let a VM's lease
            // run out unseen: resume only on a round that cannot have.
            if options.paused || renewed_in_time(round_trip, options.lease) {
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
        if let Some(stalled) = stalls.observe(&states, |i| states[i].status == Status::Loading) {
            return Err(CkptError::RestoreFailed {
                vm: vms[stalled.vm].name.clone(),
                message: format!(
                    "it made no progress loading its image for {} ms: the restart was given up, no VM of the \
                     cluster was resumed",
                    stalled.idle.as_millis()
                ),
            });
        }
        next_event(&mut events, RestoreEvent::NAME, POLL).await;
    };

    let mut resume_at = None;
    let mut states = states;
    if !options.paused {
        // The resume commands go out together, as the last queries did:
        // twice their round trip, and a margin for the nap to end.
        let at = restart_instant(wall_ns(), round_trip);
        let resume = ResumeArgs { at: Some(at) };
        let resumes = join_all(vms.iter().map(|vm| vm.qmp.call::<Resume>(&resume))).await;
        for (vm, r) in vms.iter().zip(resumes) {
            r.map_err(|e| CkptError::RestoreFailed { vm: vm.name.clone(), message: e.to_string() })?;
        }
        fault::step(Step::RestoreResuming);
        // Each VM resumes at `at` by itself: past it by the progress
        // timeout, one that has not is stuck.
        let deadline = instant_of(at) + options.progress_timeout;
        states = loop {
            let states = query_all_of::<QueryRestore>(vms, &QueryArgs::default(), lost_restore).await?;
            if states.iter().all(|s| s.resumed_at_ns.is_some()) {
                break states;
            }
            if Instant::now() >= deadline {
                let (vm, _) = vms.iter().zip(&states).find(|(_, s)| s.resumed_at_ns.is_none()).expect("one waits");
                return Err(CkptError::RestoreFailed {
                    vm: vm.name.clone(),
                    message: format!(
                        "it did not resume within {} ms of the cluster's instant (see its QEMU's stderr)",
                        options.progress_timeout.as_millis()
                    ),
                });
            }
            if let Some((vm, _)) = vms.iter().zip(&states).find(|(_, s)| s.resume_at_ns.is_none()) {
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
            resume_skew_ns: resume_at.map_or(0, |at| skew(state.resumed_at_ns, at)),
            progress: state,
        })
        .collect();
    Ok(ClusterRestore {
        dir: dir.to_owned(),
        generation: manifest.generation,
        resume_at_ns: resume_at,
        resume_skew_ns: widest(per_vm.iter().map(|v| v.resume_skew_ns)),
        latency_ms: started.elapsed().as_secs_f64() * 1e3,
        vms: per_vm,
    })
}
