// SPDX-License-Identifier: GPL-2.0-or-later
//! What a chain of disk layers holds, from headers and extent tables
//! alone (no data is read), for `mekha image inspect`.

use std::path::PathBuf;

use serde::Serialize;

use super::chain::{Chain, RunSource};
use super::format::{DiskIdentity, ExtentData, LayerKind};
use super::reader::{LayerHeader, LayerReader};

/// One layer as `mekha image inspect` shows it (also as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct LayerInspection {
    /// The layer file.
    pub path: PathBuf,
    /// The header's fields.
    pub header: LayerHeader,
    /// The disk: node, device, source format, virtual size.
    pub disk: DiskIdentity,
    /// Full or delta, with a delta's parent.
    pub layer: LayerKind,
    /// Extents in the table.
    pub extents: u64,
    /// Bytes of the disk stored as data.
    pub data_bytes: u64,
    /// Bytes of the disk recorded as zeros.
    pub zero_bytes: u64,
    /// Bytes the file holds.
    pub stored_bytes: u64,
}

/// A chain as `mekha image inspect` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChainInspection {
    /// Each layer, newest first; the last is full.
    pub layers: Vec<LayerInspection>,
    /// Runs the resolved disk takes (after merging adjacent ones).
    pub runs: u64,
    /// Bytes of the resolved disk read from some layer's data.
    pub data_bytes: u64,
    /// Bytes of the resolved disk that are zeros.
    pub zero_bytes: u64,
    /// Bytes all layers hold together.
    pub stored_bytes: u64,
}

/// Summarizes one layer.
pub fn inspect_layer(layer: &LayerReader) -> LayerInspection {
    let (mut data_bytes, mut zero_bytes) = (0, 0);
    for e in layer.extents() {
        match e.data {
            ExtentData::Data { .. } => data_bytes += e.len,
            ExtentData::Zero => zero_bytes += e.len,
        }
    }
    LayerInspection {
        path: layer.path().to_owned(),
        header: *layer.header(),
        disk: layer.identity().clone(),
        layer: layer.kind().clone(),
        extents: layer.extents().len() as u64,
        data_bytes,
        zero_bytes,
        stored_bytes: layer.file_len(),
    }
}

/// Summarizes a chain and the disk it resolves to.
pub fn inspect(chain: &Chain) -> ChainInspection {
    let layers: Vec<LayerInspection> = chain.layers().iter().map(|l| inspect_layer(&l.reader)).collect();
    let runs = chain.runs();
    let data_bytes = runs.iter().filter(|r| matches!(r.source, RunSource::Data { .. })).map(|r| r.len).sum();
    ChainInspection {
        stored_bytes: layers.iter().map(|l| l.stored_bytes).sum(),
        layers,
        runs: runs.len() as u64,
        data_bytes,
        zero_bytes: chain.virtual_size() - data_bytes,
    }
}
