// SPDX-License-Identifier: GPL-2.0-or-later
//! A layer and its parents down to a full layer, and the disk they
//! resolve to: the newest layer listing a cluster wins.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{DiskError, Result};
use super::format::{ExtentData, LayerKind};
use super::reader::LayerReader;
use crate::image::ImageKey;
use crate::width::to_usize;

/// The most layers a chain may have. Each is an open file; retention
/// merges chains long before this.
pub const MAX_CHAIN_LAYERS: usize = 256;

/// One layer of a chain.
#[derive(Debug)]
pub struct ChainLayer {
    /// Its name relative to the checkpoint directory.
    pub name: String,
    /// The open layer.
    pub reader: LayerReader,
}

/// A layer and all its parents, newest first, ending in a full layer; all
/// of one virtual size and cluster size.
#[derive(Debug)]
pub struct Chain {
    root: PathBuf,
    layers: Vec<ChainLayer>,
}

/// A piece of the resolved disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Run {
    /// Disk offset of its first byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where its bytes are.
    pub source: RunSource,
}

/// Where a run's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunSource {
    /// In a layer's packed data ([`Chain::read`]).
    Data {
        /// The layer's index in [`Chain::layers`] (0: the newest).
        layer: usize,
        /// File offset of the run's first byte in that layer.
        file_offset: u64,
    },
    /// Zeros.
    Zero,
}

/// A piece of the resolved disk, as [`Chain::for_each_piece`] hands it on.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// These bytes, read and checked.
    Data(&'a [u8]),
    /// This many zeros.
    Zero(u64),
}

impl Chain {
    /// Opens layer `name` (relative to the checkpoint directory `root`)
    /// and its parents, each checked against what its child recorded.
    pub fn open(root: &Path, name: &str, key: Option<&ImageKey>) -> Result<Chain> {
        let newest = LayerReader::open(&root.join(name), key)?;
        let mut seen = HashSet::from([newest.file_id()]);
        let mut layers = vec![ChainLayer { name: name.to_owned(), reader: newest }];
        loop {
            let child = &layers.last().expect("the newest at least").reader;
            let LayerKind::Delta { parent, parent_header_crc32c } = child.kind() else { break };
            if layers.len() == MAX_CHAIN_LAYERS {
                return Err(DiskError::ChainTooDeep { path: root.join(name), max: MAX_CHAIN_LAYERS });
            }
            let wrong =
                |why: String| DiskError::WrongParent { path: child.path().to_owned(), parent: parent.clone(), why };
            let reader = LayerReader::open(&root.join(parent), key)?;
            if !seen.insert(reader.file_id()) {
                return Err(DiskError::Cycle { path: reader.path().to_owned(), parent: parent.clone() });
            }
            let found = reader.header().header_crc32c;
            if found != *parent_header_crc32c {
                return Err(wrong(format!(
                    "is another layer (header CRC {found:#010x}, the delta was written over {parent_header_crc32c:#010x})"
                )));
            }
            let (size, ours) = (reader.identity().virtual_size, child.identity().virtual_size);
            if size != ours {
                return Err(wrong(format!("is a disk of {size} bytes, not {ours}")));
            }
            let (cluster, ours) = (reader.cluster_size(), child.cluster_size());
            if cluster != ours {
                return Err(wrong(format!("has clusters of {cluster} bytes, not {ours}")));
            }
            layers.push(ChainLayer { name: parent.clone(), reader });
        }
        Ok(Chain { root: root.to_owned(), layers })
    }

    /// The checkpoint directory the names are relative to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The layers, newest first; the last is a full layer.
    pub fn layers(&self) -> &[ChainLayer] {
        &self.layers
    }

    /// The newest layer: the one the chain was opened at.
    pub fn newest(&self) -> &LayerReader {
        &self.layers[0].reader
    }

    /// The disk's size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.newest().identity().virtual_size
    }

    /// Reads `buf.len()` bytes of layer `layer`'s packed data at
    /// `file_offset`, checked (see [`LayerReader::read_data`]): a
    /// [`RunSource::Data`] run, whole or split at clusters.
    pub fn read(&self, layer: usize, file_offset: u64, buf: &mut [u8]) -> Result<()> {
        self.layers[layer].reader.read_data(file_offset, buf)
    }

    /// Walks the disk at the newest layer in offset order: each data run
    /// read in pieces of at most `max_piece` bytes (whole clusters, one at
    /// least), each checked, and each zero run whole, handed to `write`
    /// with its disk offset. Stops at the first error of either.
    pub fn for_each_piece<E: From<DiskError>>(
        &self,
        max_piece: usize,
        mut write: impl FnMut(u64, Piece<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let cluster = u64::from(self.newest().cluster_size());
        let piece_len = (max_piece as u64 / cluster).max(1) * cluster;
        let mut buf = Vec::new();
        for run in self.runs() {
            let RunSource::Data { layer, file_offset } = run.source else {
                write(run.offset, Piece::Zero(run.len))?;
                continue;
            };
            let mut done = 0;
            while done < run.len {
                let n = to_usize((run.len - done).min(piece_len));
                buf.resize(n, 0);
                self.read(layer, file_offset + done, &mut buf)?;
                write(run.offset + done, Piece::Data(&buf))?;
                done += n as u64;
            }
        }
        Ok(())
    }

    /// The disk at the newest layer, as runs in offset order covering all
    /// of it, adjacent runs from the same place merged.
    pub fn runs(&self) -> Vec<Run> {
        let mut runs = Vec::new();
        // What no newer layer lists yet, in offset order.
        let mut uncovered: Vec<(u64, u64)> = match self.virtual_size() {
            0 => Vec::new(),
            size => vec![(0, size)],
        };
        for (index, layer) in self.layers.iter().enumerate() {
            let extents = layer.reader.extents();
            let mut still = Vec::new();
            for (start, end) in uncovered {
                let mut cursor = start;
                let first = extents.partition_point(|e| e.end() <= start);
                for e in extents[first..].iter().take_while(|e| e.offset < end) {
                    let (a, b) = (e.offset.max(start), e.end().min(end));
                    if a > cursor {
                        still.push((cursor, a));
                    }
                    let source = match e.data {
                        ExtentData::Data { file_offset, .. } => {
                            RunSource::Data { layer: index, file_offset: file_offset + (a - e.offset) }
                        }
                        ExtentData::Zero => RunSource::Zero,
                    };
                    runs.push(Run { offset: a, len: b - a, source });
                    cursor = b;
                }
                if cursor < end {
                    still.push((cursor, end));
                }
            }
            uncovered = still;
            if *layer.reader.kind() == LayerKind::Full {
                break;
            }
        }
        // The full layer's unlisted clusters: zeros.
        runs.extend(uncovered.into_iter().map(|(a, b)| Run { offset: a, len: b - a, source: RunSource::Zero }));
        runs.sort_unstable_by_key(|r| r.offset);
        merge_adjacent(runs)
    }
}

/// Joins runs that continue each other: zeros after zeros, data after the
/// same layer's data that precedes it in the file.
fn merge_adjacent(runs: Vec<Run>) -> Vec<Run> {
    let mut merged: Vec<Run> = Vec::with_capacity(runs.len());
    for run in runs {
        if let Some(last) = merged.last_mut() {
            let continues = match (last.source, run.source) {
                (RunSource::Zero, RunSource::Zero) => true,
                (RunSource::Data { layer: a, file_offset: fa }, RunSource::Data { layer: b, file_offset: fb }) => {
                    a == b && fa + last.len == fb
                }
                _ => false,
            };
            if continues && last.offset + last.len == run.offset {
                last.len += run.len;
                continue;
            }
        }
        merged.push(run);
    }
    merged
}
