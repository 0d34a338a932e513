// SPDX-License-Identifier: GPL-2.0-or-later
//! The disks put back at a restore: each captured disk, as it was at the
//! checkpoint's instant, written into the VM's disk through its device
//! before any guest code runs.
//!
//! A QEMU waiting with `-incoming` opened its disks inactive, so another
//! process may still have written them after the instant (the VM that
//! died). The restore activates them (taking their locks: a disk still
//! in use elsewhere refuses the restore), then writes the whole disk as
//! resolved from its layer chain: every cluster the chain holds, zeros
//! everywhere else, so that nothing written after the instant is left.
//! Then a bitmap starts tracking the guest's writes, known by the
//! restored layer's id, so the next checkpoint stores only what the
//! guest writes from now on (see `tracking`).

use std::path::Path;

use mekha_ckpt_core::disk::{Chain, Piece};
use mekha_ckpt_core::image::ImageKey;
use mekha_ckpt_core::session::checkpoint::DiskCapture;
use mekha_ckpt_core::session::{Error, ErrorKind, Result};
use mekha_ckpt_core::width::to_usize;
use serde_json::json;

use super::{capture, tracking};
use crate::qemu::{self, block, Bql};

/// Bytes written into a disk under one hold of the BQL.
const STEP: u64 = 8 << 20;

/// What was put back: bytes of data and of zeros written.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PutBack {
    pub data_bytes: u64,
    pub zero_bytes: u64,
}

/// Puts back every disk the image at `image` captured (`captured`, from
/// its INFO), each from its chain under the checkpoint directory
/// (the image's grandparent).
pub(crate) fn put_back(image: &Path, captured: &[DiskCapture], key: Option<&ImageKey>) -> Result<PutBack> {
    if captured.is_empty() {
        return Ok(PutBack::default());
    }
    let live = {
        let bql = Bql::lock();
        block::activate(&bql).map_err(|e| e.context("taking the disks"))?;
        qemu::disks(&bql)
    };
    let mut chains = Vec::new();
    for disk in captured {
        let Some(now) = live.iter().find(|d| d.device == disk.device && d.inserted) else {
            return Err(Error::new(
                ErrorKind::ImageInvalid,
                format!("the checkpoint captured disk {} but this VM has no such disk", disk.device),
            ));
        };
        if now.size != Some(disk.size) {
            return Err(Error::new(
                ErrorKind::ImageInvalid,
                format!("disk {}: {} bytes at the checkpoint, {:?} now", disk.device, disk.size, now.size),
            ));
        }
        if !now.writable {
            return Err(Error::unsupported(format!("disk {} is read-only here: it cannot be put back", disk.device)));
        }
        let Some((root, name)) = disk.chain_start(image) else {
            return Err(Error::invalid_argument(format!("{}: not in a checkpoint directory", image.display())));
        };
        let chain = Chain::open(&root, &name, key)
            .map_err(|e| Error::new(ErrorKind::ImageInvalid, format!("disk {}: {e}", disk.device)))?;
        if chain.virtual_size() != disk.size {
            return Err(Error::new(
                ErrorKind::ImageInvalid,
                format!("disk {}: its layers are of another size", disk.device),
            ));
        }
        chains.push((disk, now.node.clone(), chain));
    }
    let mut total = PutBack::default();
    for (disk, node, chain) in &chains {
        let done = write_disk(&disk.device, chain)?;
        total.data_bytes += done.data_bytes;
        total.zero_bytes += done.zero_bytes;
        let bitmap = tracking::new_bitmap_name();
        let bql = Bql::lock();
        let bitmap_args =
            json!({ "node": node, "name": bitmap, "persistent": false, "granularity": capture::LAYER_CLUSTER });
        block::execute(&bql, "block-dirty-bitmap-add", bitmap_args)?;
        tracking::captured(&disk.device, node, &bitmap);
        tracking::layer_written(&disk.device, &bitmap, chain.newest().header().header_crc32c);
    }
    Ok(total)
}

/// Writes the disk `chain` resolves into `device`'s disk, a step at a
/// time (the BQL let go between steps, so the main loop runs).
fn write_disk(device: &str, chain: &Chain) -> Result<PutBack> {
    let mut done = PutBack::default();
    chain.for_each_piece(to_usize(STEP), |offset, piece| -> Result<()> {
        match piece {
            Piece::Data(bytes) => {
                block::disk_write(&Bql::lock(), device, offset, Some(bytes), 0)?;
                done.data_bytes += bytes.len() as u64;
            }
            // In steps too: zeroing a big range may rewrite metadata.
            Piece::Zero(len) => {
                let mut at = 0;
                while at < len {
                    let step = (len - at).min(STEP);
                    block::disk_write(&Bql::lock(), device, offset + at, None, to_usize(step))?;
                    at += step;
                }
                done.zero_bytes += len;
            }
        }
        Ok(())
    })?;
    Ok(done)
}
