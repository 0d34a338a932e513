// SPDX-License-Identifier: GPL-2.0-or-later
//! Folding a chain into one full layer (retention's compaction): file to
//! file, every byte checked as it is read.

use std::path::Path;

use super::chain::{Chain, RunSource};
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
    let cluster = u64::from(newest.cluster_size());
    let mut writer = LayerWriter::create(out, newest.identity(), newest.cluster_size(), LayerKind::Full, key)?;
    // Whole clusters per piece, so each piece's checksums are checked.
    let chunk_len = READ_CHUNK.max(cluster) / cluster * cluster;
    let mut buf = vec![0u8; to_usize(chunk_len)];
    for run in chain.runs() {
        let RunSource::Data { layer, file_offset } = run.source else { continue };
        let mut done = 0;
        while done < run.len {
            let n = (run.len - done).min(chunk_len);
            let bytes = &mut buf[..to_usize(n)];
            chain.read(layer, file_offset + done, bytes)?;
            writer.add_data(run.offset + done, bytes)?;
            done += n;
        }
    }
    writer.finish()
}
