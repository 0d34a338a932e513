// SPDX-License-Identifier: GPL-2.0-or-later
//! Room for the images: each storage target the VMs write to, as their
//! hosts report it, against what its images need.

use std::collections::HashMap;
use std::path::Path;

use super::Attached;
use crate::agent::Request;
use crate::ckpt::CkptError;
use crate::storage::{self, StorageReport};

/// This host's view of `dir`'s storage, and each VM's: from its host's
/// agent, or this host's (a local VM, or one reached by ssh or libvirt:
/// the directory is shared).
pub(super) async fn storage_of(vms: &[Attached], dir: &Path) -> Result<(StorageReport, Vec<StorageReport>), CkptError> {
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
pub(super) fn check_space(storage: &[StorageReport], need: impl Fn(usize) -> u64, what: &str) -> Result<(), CkptError> {
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
