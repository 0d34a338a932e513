// SPDX-License-Identifier: GPL-2.0-or-later
//! The dirty bitmaps that make a disk's next capture incremental.
//!
//! Each capture adds to its disk a bitmap made at the stop instant. Once
//! the capture's layer is written it is known by the layer's id (its
//! header CRC); a later checkpoint whose parent generation holds that
//! layer copies only the clusters the bitmap marks, and names the layer
//! as its parent. The parent is always the newest committed generation,
//! so every other bitmap of the disk is dropped then: one made by a
//! checkpoint that failed or was never committed, or an older one.
//! A QEMU restarted from a generation gets, at its restore, a bitmap
//! known by that generation's layer id (see `restore`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde_json::json;

use mekha_ckpt_core::disk;

use crate::qemu::{block, Bql};

/// The base a disk's capture copies since: its bitmap and the layer it
/// was made for.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    pub bitmap: String,
    /// The parent layer's name relative to the checkpoint directory
    /// (`gen-000007/node1.vda-1234abcd.mdisk`) and its id.
    pub layer_name: String,
    pub layer_id: u32,
}

#[derive(Debug)]
struct Tracked {
    node: String,
    bitmap: String,
    /// The id of the layer written from the capture made with it; none
    /// until it is written.
    layer_id: Option<u32>,
}

#[derive(Default)]
struct State {
    /// Per disk (device id).
    bitmaps: HashMap<String, Vec<Tracked>>,
    /// Jobs and nodes a failed cleanup left, retried at the next capture.
    jobs: Vec<String>,
    nodes: Vec<String>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static NEXT_BITMAP: AtomicU64 = AtomicU64::new(1);

/// Layers in a disk's chain at most: the capture after the last of them
/// is whole again. It bounds what a restore reads and what retention
/// keeps of older generations.
pub(crate) const MAX_CHAIN: usize = 8;

fn with<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    f(state.get_or_insert_with(State::default))
}

/// A bitmap name of this process, never reused.
pub(crate) fn new_bitmap_name() -> String {
    format!("mekha-{}", NEXT_BITMAP.fetch_add(1, Ordering::Relaxed))
}

/// The base for `device`'s next capture: the bitmap known by the id of
/// its layer in `parent`'s generation, if there is one; every other
/// bitmap of the disk is dropped. Also retries a failed cleanup.
pub(crate) fn base_for(
    bql: &Bql,
    device: &str,
    node: &str,
    size: u64,
    parent: Option<&Path>,
    key: &str,
) -> Option<Base> {
    let leftovers = with(|s| (std::mem::take(&mut s.jobs), std::mem::take(&mut s.nodes)));
    for job in leftovers.0 {
        let _ = block::execute(bql, "job-dismiss", json!({ "id": job }));
    }
    for node in leftovers.1 {
        let _ = block::execute(bql, "blockdev-del", json!({ "node-name": node }));
    }
    let layer_name = parent.and_then(|p| super::name_in_checkpoint(&super::layer_path(p, key)));
    let root = parent.and_then(Path::parent).and_then(Path::parent);
    let chain = match (root, &layer_name) {
        (Some(root), Some(name)) => disk::Chain::open(root, name, None).ok(),
        _ => None,
    };
    // The parent layer's id (its data is not read: a capture over it only
    // names it). A chain at its bound starts anew with a whole capture;
    // so does a disk resized since (a chain is of one size).
    let layer_id = chain
        .filter(|c| c.layers().len() < MAX_CHAIN && c.virtual_size() == size)
        .map(|c| c.newest().header().header_crc32c);
    let (keep, drop): (Vec<Tracked>, Vec<Tracked>) = with(|s| {
        s.bitmaps
            .remove(device)
            .unwrap_or_default()
            .into_iter()
            .partition(|t| t.layer_id.is_some() && t.layer_id == layer_id && t.node == node)
    });
    for t in drop {
        let _ = block::execute(bql, "block-dirty-bitmap-remove", json!({ "node": t.node, "name": t.bitmap }));
    }
    let base = match (keep.first(), layer_name, layer_id) {
        (Some(t), Some(layer_name), Some(layer_id)) => Some(Base { bitmap: t.bitmap.clone(), layer_name, layer_id }),
        _ => None,
    };
    if !keep.is_empty() {
        with(|s| s.bitmaps.insert(device.to_owned(), keep));
    }
    base
}

/// A capture made with `bitmap` succeeded; its layer is not written yet.
pub(crate) fn captured(device: &str, node: &str, bitmap: &str) {
    with(|s| {
        s.bitmaps.entry(device.to_owned()).or_default().push(Tracked {
            node: node.to_owned(),
            bitmap: bitmap.to_owned(),
            layer_id: None,
        })
    });
}

/// The layer of the capture made with `bitmap` is written, as `layer_id`.
pub(crate) fn layer_written(device: &str, bitmap: &str, layer_id: u32) {
    with(|s| {
        for t in s.bitmaps.get_mut(device).into_iter().flatten() {
            if t.bitmap == bitmap {
                t.layer_id = Some(layer_id);
            }
        }
    });
}

pub(crate) fn dismiss_later(job: &str) {
    with(|s| s.jobs.push(job.to_owned()));
}

pub(crate) fn delete_node_later(node: &str) {
    with(|s| s.nodes.push(node.to_owned()));
}
