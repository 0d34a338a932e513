// SPDX-License-Identifier: GPL-2.0-or-later
//! Folding a chain into one full layer (retention's compaction): file to
//! file, every byte checked as it is read.

use std::path::Path;

use super::chain::{Chain, Piece};
use super::error::Result;
use super::format::LayerKind;
use super::reader::READ_CHUNK;
use super::writer::{LayerSummary, LayerWriter};
use crate::image::ImageKey;
use crate::width::to_usize;

/// Writes `out`, a full layer of the disk `chain` resolves to (the
/// newest layer's identity and cluster size), sealed with `key` if given.
/// Zero runs are left unlisted: a full layer's unlisted clusters are zero.
pub fn merge(chain: &Chain, out: &Path, key: Option<&ImageKey>) -> Result<LayerSummary> {
    let newest = chain.newest();
    let mut writer = LayerWriter::create(out, newest.identity(), newest.cluster_size(), LayerKind::Full, key)?;
    chain.for_each_piece(to_usize(READ_CHUNK), |offset, piece| match piece {
        Piece::Data(bytes) => writer.add_data(offset, bytes),
        Piece::Zero(_) => Ok(()),
    })?;
    writer.finish()
}
