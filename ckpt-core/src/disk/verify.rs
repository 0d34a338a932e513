// SPDX-License-Identifier: GPL-2.0-or-later
//! Checking a whole chain: every data cluster's CRC32C and, opened with
//! the key, its tag, in every layer. The structure (header, table, MAC,
//! parent links, the chain ending in a full layer of the same virtual
//! size) was checked when the chain opened.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use serde::Serialize;

use super::chain::Chain;
use super::error::{DiskError, Result};
use super::format::ExtentData;
use super::reader::{LayerReader, READ_CHUNK};
use crate::width::to_usize;

/// Bad clusters listed one by one per layer; the rest are only counted.
pub const MAX_REPORTED_BAD_CLUSTERS: usize = 32;

/// The outcome of [`verify`]: one check per layer, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Each layer's check.
    pub layers: Vec<LayerCheck>,
}

/// One layer's data checked.
#[derive(Debug, Clone, Serialize)]
pub struct LayerCheck {
    /// The layer file.
    pub path: PathBuf,
    /// The layer's MAC, hex, when it was opened with its key: then every
    /// cluster's tag was checked too.
    pub mac: Option<String>,
    /// Data clusters checked: all of the layer's.
    pub clusters_checked: u64,
    /// Clusters whose bytes do not match their checksum (or tag).
    pub bad_clusters: u64,
    /// The first [`MAX_REPORTED_BAD_CLUSTERS`] of them.
    pub first_bad_clusters: Vec<BadCluster>,
}

/// A data cluster that does not match its CRC32C or tag.
#[derive(Debug, Clone, Serialize)]
pub struct BadCluster {
    /// Its disk offset.
    pub disk_offset: u64,
    /// Its file offset.
    pub file_offset: u64,
}

impl VerifyReport {
    /// Whether every cluster of every layer checked out.
    pub fn is_intact(&self) -> bool {
        self.layers.iter().all(|l| l.bad_clusters == 0)
    }

    /// One line per damaged layer, for a person.
    pub fn problems(&self) -> Vec<String> {
        let line = |l: &LayerCheck| {
            let first = l.first_bad_clusters.first().map_or(0, |c| c.disk_offset);
            format!(
                "disk layer {}: {} of {} data clusters do not match their checksum (the first at disk offset {first:#x})",
                l.path.display(),
                l.bad_clusters,
                l.clusters_checked
            )
        };
        self.layers.iter().filter(|l| l.bad_clusters > 0).map(line).collect()
    }
}

/// Checks every data cluster of every layer of `chain`.
pub fn verify(chain: &Chain) -> Result<VerifyReport> {
    let layers = chain.layers().iter().map(|l| verify_layer(&l.reader)).collect::<Result<_>>()?;
    Ok(VerifyReport { layers })
}

/// Checks every data cluster of one layer, read sequentially in large
/// chunks. Only a failed read is an error; bad clusters are reported.
pub fn verify_layer(layer: &LayerReader) -> Result<LayerCheck> {
    let cluster = u64::from(layer.cluster_size());
    let chunk_len = READ_CHUNK.max(cluster);
    let mut buf = vec![0u8; to_usize(chunk_len)];
    let mut check = LayerCheck {
        path: layer.path().to_owned(),
        mac: layer.mac().map(|m| m.to_hex()),
        clusters_checked: 0,
        bad_clusters: 0,
        first_bad_clusters: Vec::new(),
    };
    for extent in layer.extents() {
        let ExtentData::Data { file_offset, first_cluster } = extent.data else { continue };
        let mut done = 0;
        while done < extent.len {
            let n = (extent.len - done).min(chunk_len);
            let bytes = &mut buf[..to_usize(n)];
            layer
                .file()
                .read_exact_at(bytes, file_offset + done)
                .map_err(DiskError::io("reading disk layer", layer.path()))?;
            for (k, data) in bytes.chunks(to_usize(cluster)).enumerate() {
                let at = done + k as u64 * cluster;
                check.clusters_checked += 1;
                if !layer.cluster_matches(first_cluster + at / cluster, data) {
                    check.bad_clusters += 1;
                    if check.first_bad_clusters.len() < MAX_REPORTED_BAD_CLUSTERS {
                        check
                            .first_bad_clusters
                            .push(BadCluster { disk_offset: extent.offset + at, file_offset: file_offset + at });
                    }
                }
            }
            done += n;
        }
    }
    Ok(check)
}
