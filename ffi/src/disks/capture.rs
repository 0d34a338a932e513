// SPDX-License-Identifier: GPL-2.0-or-later
//! The capture of every writable disk at the stop instant.
//!
//! Before the stop ([`Capture::prepare`], live phase): each disk gets a
//! sparse capture file of its virtual size, opened as a QEMU `file` node.
//! At the stop ([`Capture::start`], VM stopped, BQL held): one QMP
//! `transaction` adds to every disk a bitmap that tracks the guest's
//! writes from this instant on and starts a `blockdev-backup` job into
//! its capture file. The job's copy-before-write filter makes the copy
//! the disk as it was at the instant while the guest writes on: a guest
//! write to a cluster not yet copied waits for the old cluster's copy,
//! nothing else. A disk with a base (the bitmap made at the last
//! committed checkpoint) copies only the clusters written since
//! (`sync: bitmap`, `bitmap-mode: never`: the base keeps every bit, so a
//! checkpoint that fails or is never committed loses no tracking); the
//! others copy everything. After the resume the worker waits for the
//! jobs ([`Capture::wait`]), closes them ([`Capture::close`]) and packs
//! each capture file into the disk's layer ([`DiskCapture::pack`]).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mekha_ckpt_core::disk::{self, Copied, DiskError, DiskIdentity, LayerKind, LayerWriter};
use mekha_ckpt_core::image::ImageKey;
use mekha_ckpt_core::session::{self, Error, Result};
use serde_json::{json, Value};

use super::tracking::{self, Base};
use crate::qemu::{self, block, Bql};

/// Numbers the captures of this process, for their nodes' and jobs' names.
static NEXT_CAPTURE: AtomicU64 = AtomicU64::new(1);

/// How often the worker looks at the backup jobs.
const JOB_POLL: Duration = Duration::from_millis(10);
/// How long a cancelled job may take to conclude.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// One writable disk being captured.
#[derive(Debug)]
pub(crate) struct DiskCapture {
    pub device: String,
    pub node: String,
    pub format: String,
    pub size: u64,
    /// The sparse file the backup job writes.
    pub capture_file: PathBuf,
    target_node: String,
    job: String,
    /// The bitmap the capture copies since; none for a full copy.
    pub base: Option<Base>,
    /// The bitmap made at the stop, tracking writes from it on.
    pub bitmap: String,
    /// With a base: the clusters written since it, at the stop.
    pub extents: Vec<(u64, u64)>,
}

/// Every writable disk of the VM, captured at one instant.
pub(crate) struct Capture {
    disks: Vec<DiskCapture>,
    started: bool,
}

/// Why a disk cannot be captured, or none.
fn refusal(disk: &qemu::Disk) -> Option<String> {
    if disk.shared_write {
        return Some(
            "another VM or process may write it too (share-rw): its content at an instant is not this VM's".into(),
        );
    }
    if disk.size.is_none() {
        return Some("QEMU cannot tell its size".into());
    }
    None
}

/// The writable disks a checkpoint captures, refused with each disk
/// named when one cannot be.
pub(crate) fn writable(bql: &Bql) -> Result<Vec<qemu::Disk>> {
    let disks: Vec<qemu::Disk> = qemu::disks(bql).into_iter().filter(|d| d.writable && d.inserted).collect();
    let refused: Vec<String> =
        disks.iter().filter_map(|d| refusal(d).map(|why| format!("{} (node {}): {why}", d.device, d.node))).collect();
    if !refused.is_empty() {
        return Err(Error::unsupported(format!(
            "these writable disks cannot be captured: {}; attach them read-only, or snapshot them yourself \
             and pass allow-writable-disks",
            refused.join("; ")
        )));
    }
    Ok(disks)
}

impl Capture {
    /// Opens a capture file next to `image` for each of `disks`, with the
    /// base its copy starts from (see [`tracking::base_for`]).
    pub(crate) fn prepare(bql: &Bql, image: &Path, disks: Vec<qemu::Disk>, parent: Option<&Path>) -> Result<Capture> {
        let mut capture = Capture { disks: Vec::new(), started: false };
        for (i, disk) in disks.into_iter().enumerate() {
            let size = disk.size.unwrap_or(0);
            let key = super::disk_key(&disk.device);
            let capture_file = super::sibling(image, &format!("{key}.capture"));
            // The guest's data: private, as images are.
            let created = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&capture_file)
                .and_then(|f| f.set_len(size));
            if let Err(e) = created {
                let _ = std::fs::remove_file(&capture_file);
                capture.discard(bql);
                return Err(Error::io(format_args!("capture file {}", capture_file.display()), &e));
            }
            // Names of this capture only: a leftover of an earlier one
            // (a node QEMU would not delete yet) cannot collide.
            let serial = NEXT_CAPTURE.fetch_add(1, Ordering::Relaxed);
            let target_node = format!("mekha-capture-{serial}-{i}");
            let job = target_node.clone();
            let base = tracking::base_for(bql, &disk.device, &disk.node, size, parent, &key);
            let bitmap = tracking::new_bitmap_name();
            let entry = DiskCapture {
                device: disk.device,
                node: disk.node,
                format: disk.format,
                size,
                capture_file,
                target_node,
                job,
                base,
                bitmap,
                extents: Vec::new(),
            };
            let added = block::execute(
                bql,
                "blockdev-add",
                json!({
                    "driver": "file",
                    "node-name": entry.target_node,
                    "filename": entry.capture_file,
                    "discard": "unmap",
                    "detect-zeroes": "unmap",
                }),
            );
            if let Err(e) = added {
                let _ = std::fs::remove_file(&entry.capture_file);
                capture.discard(bql);
                return Err(e.context(format!("disk {}: opening its capture file", entry.device)));
            }
            capture.disks.push(entry);
        }
        Ok(capture)
    }

    /// At the stop instant: reads each base's extents and starts every
    /// disk's bitmap and backup job in one transaction.
    pub(crate) fn start(&mut self, bql: &Bql) -> Result<()> {
        if self.disks.is_empty() {
            return Ok(());
        }
        let mut actions = Vec::new();
        for disk in &mut self.disks {
            if let Some(base) = &disk.base {
                disk.extents = block::dirty_extents(bql, &disk.node, &base.bitmap)
                    .map_err(|e| e.context(format!("disk {}: the clusters written since its base", disk.device)))?;
            }
            actions.push(json!({
                "type": "block-dirty-bitmap-add",
                "data": {
                    "node": disk.node,
                    "name": disk.bitmap,
                    "persistent": false,
                    "granularity": LAYER_CLUSTER,
                },
            }));
            let mut backup = json!({
                "job-id": disk.job,
                "device": disk.node,
                "target": disk.target_node,
                "sync": "full",
                "auto-finalize": true,
                "auto-dismiss": false,
            });
            if let Some(base) = &disk.base {
                backup["sync"] = json!("bitmap");
                backup["bitmap"] = json!(base.bitmap);
                backup["bitmap-mode"] = json!("never");
            }
            actions.push(json!({ "type": "blockdev-backup", "data": backup }));
        }
        block::execute(bql, "transaction", json!({ "actions": actions }))
            .map_err(|e| e.context("starting the disks' capture"))?;
        self.started = true;
        for disk in &self.disks {
            block::settle(bql, &disk.node)?;
        }
        Ok(())
    }

    /// Waits for every backup job to conclude (the BQL taken per look,
    /// never held while waiting), telling `progress` the bytes copied so
    /// far, until `deadline` or until `give_up` says why not: whether they
    /// all did. A job's error fails the capture.
    pub(crate) fn wait(
        &mut self,
        deadline: Option<Instant>,
        mut progress: impl FnMut(u64),
        give_up: impl Fn() -> Option<Error>,
    ) -> Result<bool> {
        if !self.started {
            return Ok(true);
        }
        loop {
            let jobs = {
                let bql = Bql::lock();
                block::execute(&bql, "query-jobs", json!({}))?
            };
            let (pending, copied, failed) = self.jobs_state(&jobs);
            progress(copied);
            if pending == 0 {
                return failed.map_or(Ok(true), Err);
            }
            if let Some(why) = give_up() {
                return Err(why);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            std::thread::sleep(JOB_POLL);
        }
    }

    /// This capture's jobs: how many still run, the bytes they copied,
    /// and the first concluded one's error.
    fn jobs_state(&self, jobs: &Value) -> (usize, u64, Option<Error>) {
        let (mut pending, mut copied, mut failed) = (0, 0, None);
        for disk in &self.disks {
            let job = jobs.as_array().into_iter().flatten().find(|j| j["id"] == disk.job);
            let Some(job) = job else {
                let gone = Error::internal(format!("disk {}: its capture job {} is gone", disk.device, disk.job));
                failed.get_or_insert(gone);
                continue;
            };
            copied += job["current-progress"].as_u64().unwrap_or(0);
            if job["status"] != "concluded" {
                pending += 1;
            } else if let Some(error) = job.get("error").and_then(Value::as_str) {
                failed.get_or_insert(Error::qemu(format!("disk {}: capturing it failed: {error}", disk.device)));
            }
        }
        (pending, copied, failed)
    }

    /// Once the jobs concluded: dismisses them and closes the capture
    /// nodes; `succeeded`: the bitmaps made at the stop are kept (see
    /// `tracking`), else dropped.
    pub(crate) fn close(mut self, succeeded: bool) -> Vec<DiskCapture> {
        let bql = Bql::lock();
        self.release(&bql, succeeded);
        std::mem::take(&mut self.disks)
    }

    /// Gives up: running jobs cancelled and waited for (the BQL taken
    /// per look), capture files removed, bitmaps dropped.
    pub(crate) fn cancel(mut self) {
        if self.started {
            {
                let bql = Bql::lock();
                for disk in &self.disks {
                    let _ = block::execute(&bql, "job-cancel", json!({ "id": disk.job, "force": true }));
                }
            }
            // A cancelled job concludes in the main loop, soon; every one
            // must have before its node can go.
            let _ = self.wait(Some(Instant::now() + CANCEL_WAIT), |_| {}, || None);
        }
        self.discard(&Bql::lock());
    }

    /// Drops what the capture made (no job runs any more): its nodes, the
    /// bitmaps made at the stop, its capture files.
    fn discard(&mut self, bql: &Bql) {
        self.release(bql, false);
        for disk in &self.disks {
            let _ = std::fs::remove_file(&disk.capture_file);
        }
    }

    fn release(&mut self, bql: &Bql, succeeded: bool) {
        for disk in &self.disks {
            if self.started {
                if block::execute(bql, "job-dismiss", json!({ "id": disk.job })).is_err() {
                    tracking::dismiss_later(&disk.job);
                }
                if succeeded {
                    tracking::captured(&disk.device, &disk.node, &disk.bitmap);
                } else {
                    let removed = json!({ "node": disk.node, "name": disk.bitmap });
                    let _ = block::execute(bql, "block-dirty-bitmap-remove", removed);
                }
            }
            if block::execute(bql, "blockdev-del", json!({ "node-name": disk.target_node })).is_err() {
                tracking::delete_node_later(&disk.target_node);
            }
        }
        self.started = false;
    }
}

/// The cluster size of every layer a capture writes: QEMU's default
/// dirty-bitmap granularity, so a delta's extents are whole clusters.
pub(crate) const LAYER_CLUSTER: u32 = 64 << 10;

impl DiskCapture {
    /// Packs the concluded capture file into the disk's layer next to
    /// `image` (sealed under `key`), removes the capture file, and says
    /// what the layer holds. Called once the capture succeeded.
    pub(crate) fn pack(&self, image: &Path, key: Option<&ImageKey>) -> Result<session::checkpoint::DiskCapture> {
        let io = |what: &str| {
            let path = self.capture_file.clone();
            let what = what.to_owned();
            move |e: std::io::Error| Error::io(format_args!("{what} {}", path.display()), &e)
        };
        let layer_path = super::layer_path(image, &super::disk_key(&self.device));
        let kind = match &self.base {
            None => LayerKind::Full,
            Some(base) => LayerKind::Delta { parent: base.layer_name.clone(), parent_header_crc32c: base.layer_id },
        };
        let identity = DiskIdentity {
            node_name: self.node.clone(),
            device: self.device.clone(),
            format: self.format.clone(),
            virtual_size: self.size,
        };
        let capture = File::open(&self.capture_file).map_err(io("capture file"))?;
        let layer_error = |e: DiskError| Error::from(e).context(format!("disk {}", self.device));
        let mut writer =
            LayerWriter::create(&layer_path, &identity, LAYER_CLUSTER, kind.clone(), key).map_err(layer_error)?;
        let copied = match &self.base {
            None => Copied::Whole,
            Some(_) => Copied::Since(&self.extents),
        };
        if let Err(e) =
            disk::pack(&capture, &self.capture_file, copied, self.size, u64::from(LAYER_CLUSTER), &mut writer)
        {
            let _ = writer.abort();
            return Err(layer_error(e));
        }
        let summary = writer.finish().map_err(layer_error)?;
        drop(capture);
        std::fs::remove_file(&self.capture_file).map_err(io("removing the capture file"))?;
        tracking::layer_written(&self.device, &self.bitmap, summary.header_crc32c);
        Ok(session::checkpoint::DiskCapture {
            device: self.device.clone(),
            node: self.node.clone(),
            format: self.format.clone(),
            size: self.size,
            kind: kind.name().to_owned(),
            layer: layer_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            layer_id: Some(summary.header_crc32c),
            parent: self.base.as_ref().map(|b| b.layer_name.clone()),
            data_bytes: summary.data_bytes,
            zero_bytes: summary.zero_bytes,
        })
    }
}
