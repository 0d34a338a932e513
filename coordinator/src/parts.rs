// SPDX-License-Identifier: GPL-2.0-or-later
//! Cluster checkpoints across hosts that do not share the checkpoint
//! directory: each such host keeps its VMs' images in its own copy of the
//! directory (`mekha_ckpt_core::store::part`), driven through its agent,
//! and the manifest committed here names them with their host.
//!
//! A host shares the directory when its agent reports the same storage
//! target for it as this host sees (one NFS export, one local disk of one
//! host); VMs reached without an agent (local, ssh) are taken to share it.
//!
//! Commit order: every host seals its part (images synced, directory
//! renamed), then the manifest here is committed. A failure before the
//! commit aborts every part; a host's sealed part that no manifest names
//! (the coordinator died in between) is dropped by its next begin, which
//! keeps only the generation the manifest here names.

use std::collections::HashMap;
use std::path::Path;

use futures::future::join_all;
use mekha_ckpt_core::store::{Manifest, ManifestVm, Store};

use crate::agent::{AgentClient, AgentError, Request};
use crate::ckpt::CkptError;
use crate::cluster::Attached;
use crate::storage::{self, StorageReport};

/// The hosts keeping parts of one checkpoint, and their VMs.
pub struct Parts<'a> {
    hosts: Vec<PartHost<'a>>,
}

struct PartHost<'a> {
    agent: &'a AgentClient,
    /// Indices into the checkpoint's VMs.
    vms: Vec<usize>,
}

impl<'a> Parts<'a> {
    /// VMs whose host sees another storage target for the directory
    /// (`storage[i]`, from its agent) than this host does (`here`).
    pub fn of(vms: &'a [Attached], storage: &[StorageReport], here: &StorageReport) -> Parts<'a> {
        let mut hosts: Vec<PartHost<'a>> = Vec::new();
        for (i, vm) in vms.iter().enumerate() {
            let Some(agent) = &vm.agent else { continue };
            if storage[i].target == here.target {
                continue;
            }
            match hosts.iter_mut().find(|h| h.agent.address() == agent.address()) {
                Some(host) => host.vms.push(i),
                None => hosts.push(PartHost { agent, vms: vec![i] }),
            }
        }
        Parts { hosts }
    }

    /// Whether VM `i`'s image stays on its host.
    pub fn holds(&self, i: usize) -> bool {
        self.hosts.iter().any(|h| h.vms.contains(&i))
    }

    /// Starts every host's part of `generation` of the checkpoint directory
    /// with id `cluster`; `keep`: the generation the manifest here names, if
    /// any. On a failure, aborts those begun.
    pub async fn begin(&self, dir: &Path, cluster: &str, generation: u64, keep: Option<u64>) -> Result<(), CkptError> {
        let committer = storage::host_name();
        let begins = join_all(self.hosts.iter().map(|host| {
            let request = Request::PartBegin {
                dir: dir.to_owned(),
                generation,
                keep: keep.into_iter().collect(),
                committer: committer.clone(),
                cluster: cluster.to_owned(),
            };
            async move { host.agent.call(&request).await }
        }))
        .await;
        if let Some(e) = begins.into_iter().find_map(Result::err) {
            self.abort(dir, generation).await;
            return Err(part_error("a host cannot start its part of the checkpoint", e));
        }
        Ok(())
    }

    /// Seals every host's part: the manifest entries of their images.
    pub async fn seal(&self, vms: &[Attached], dir: &Path, generation: u64) -> Result<Vec<ManifestVm>, CkptError> {
        let seals = join_all(self.hosts.iter().map(|host| {
            let names = host.vms.iter().map(|&i| vms[i].name.clone()).collect();
            let request = Request::PartSeal { dir: dir.to_owned(), generation, vms: names };
            async move { host.agent.call(&request).await }
        }))
        .await;
        let mut entries = Vec::new();
        for (host, sealed) in self.hosts.iter().zip(seals) {
            let sealed = sealed.map_err(|e| part_error("a host cannot seal its part of the checkpoint", e))?;
            let sealed: Vec<ManifestVm> = serde_json::from_value(sealed)
                .map_err(|e| CkptError::Unreachable(format!("agent {}: {e}", host.agent.address())))?;
            entries
                .extend(sealed.into_iter().map(|vm| ManifestVm { host: Some(host.agent.address().to_owned()), ..vm }));
        }
        Ok(entries)
    }

    /// Drops every host's unfinished part (best effort: a host that cannot
    /// be reached drops it at its next begin).
    pub async fn abort(&self, dir: &Path, generation: u64) {
        join_all(self.hosts.iter().map(|host| {
            let request = Request::PartAbort { dir: dir.to_owned(), generation };
            async move { host.agent.call(&request).await }
        }))
        .await;
    }
}

/// `e` names the agent: `what` says what its host could not do.
fn part_error(what: &str, e: AgentError) -> CkptError {
    match e {
        AgentError::Unreachable { .. } => CkptError::Unreachable(e.into()),
        AgentError::Failed { .. } => CkptError::Refused(format!("{what}: {e}")),
    }
}

/// Before a restore: every VM's image is the one `manifest` committed —
/// checked here for the images in `store`, by their host's agent for those
/// kept on another host.
pub async fn check_images(vms: &[Attached], store: &Store, manifest: &Manifest) -> Result<(), CkptError> {
    let generation = manifest.generation;
    let mut remote: HashMap<&str, (&AgentClient, Vec<ManifestVm>)> = HashMap::new();
    for vm in vms {
        let Some(entry) = manifest.vm(&vm.name) else { continue };
        let Some(host) = &entry.host else {
            store.check_image(generation, entry).map_err(|e| CkptError::Refused(e.to_string()))?;
            continue;
        };
        let Some(agent) = &vm.agent else {
            return Err(CkptError::Refused(format!(
                "{}: its image is kept on host {host}, which does not share {}: \
                 reach the VM through that host's agent (mekha://{host}/SOCKET or the spec's host)",
                vm.name,
                store.dir().display()
            )));
        };
        remote.entry(agent.address()).or_insert_with(|| (agent, Vec::new())).1.push(entry.clone());
    }
    let checks = join_all(remote.into_values().map(|(agent, entries)| async move {
        let request = Request::PartCheck { dir: store.dir().to_owned(), generation, vms: entries };
        agent.call(&request).await
    }))
    .await;
    match checks.into_iter().find_map(Result::err) {
        Some(e) => Err(part_error("an image kept on another host is not the committed one", e)),
        None => Ok(()),
    }
}
