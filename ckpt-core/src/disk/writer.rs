// SPDX-License-Identifier: GPL-2.0-or-later
//! Writing one disk layer: data appended to a `.partial` file as extents
//! come, then the extent table, AUTH, the header, fsync and the rename
//! that makes the layer exist under its final name.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromZeros, IntoBytes};

use super::error::{DiskError, Result};
use super::format::{
    cluster_size_ok, clusters_in, encode_names, header_crc, AuthRecord, DiskIdentity, ExtentEntry, HeaderFields,
    LayerKind, AUTH_SIGNED_LEN, AUTH_VERSION, DATA_ALIGN, EXTENT_DATA, EXTENT_ZERO, FLAG_SEALED, FORMAT_MAJOR,
    FORMAT_MINOR, HEADER_SIZE, KIND_DELTA, KIND_FULL, MAGIC, TAG_LEN,
};
use crate::image::{create_partial, now_unix_ns, sync_dir};
use crate::image::{parent_dir, with_suffix};
use crate::image::{ImageKey, Mac};

/// A disk layer being written. Dropping it without [`finish`](Self::finish)
/// removes the partial file, like [`abort`](Self::abort).
pub struct LayerWriter {
    path_final: PathBuf,
    path_partial: PathBuf,
    file: File,
    identity: DiskIdentity,
    cluster_size: u32,
    kind: LayerKind,
    key: Option<ImageKey>,
    /// Extents added so far, by disk offset.
    extents: BTreeMap<u64, Pending>,
    /// Where the packed data ends so far.
    data_end: u64,
    created_unix_ns: u64,
    /// Finished or aborted: nothing left for `Drop` to clean.
    settled: bool,
}

/// An extent added, not yet in a table.
struct Pending {
    len: u64,
    /// Data: its file offset and one CRC32C (and tag, sealed) per cluster.
    data: Option<PendingData>,
}

struct PendingData {
    file_offset: u64,
    crcs: Vec<u32>,
    tags: Vec<[u8; TAG_LEN]>,
}

/// What a finished layer holds.
#[derive(Debug, Clone)]
pub struct LayerSummary {
    /// The layer's final path.
    pub path: PathBuf,
    /// Bytes the file holds: what the layer costs in the checkpoint directory.
    pub stored_bytes: u64,
    /// Bytes of the disk stored as data.
    pub data_bytes: u64,
    /// Bytes of the disk recorded as zero extents.
    pub zero_bytes: u64,
    /// Extents in the table (after merging adjacent ones).
    pub extents: u64,
    /// The header's CRC32C, which names this exact layer (a delta over it
    /// records it).
    pub header_crc32c: u32,
    /// The MAC, when sealed.
    pub mac: Option<Mac>,
}

impl LayerWriter {
    /// Starts `<path_final>.partial`, replacing a stale one from a crashed
    /// run. With `key`, the layer is sealed.
    pub fn create(
        path_final: &Path,
        identity: &DiskIdentity,
        cluster_size: u32,
        kind: LayerKind,
        key: Option<&ImageKey>,
    ) -> Result<LayerWriter> {
        let bad = |why: String| DiskError::BadLayout { path: path_final.to_owned(), why };
        identity.check().map_err(bad)?;
        kind.check().map_err(bad)?;
        if !cluster_size_ok(cluster_size) {
            return Err(bad(format!("cluster size {cluster_size} (a power of two, 4 KiB to 2 MiB)")));
        }
        let path_partial = with_suffix(path_final, ".partial");
        let file = create_partial(&path_partial).map_err(DiskError::io("creating disk layer", &path_partial))?;
        Ok(LayerWriter {
            path_final: path_final.to_owned(),
            path_partial,
            file,
            identity: identity.clone(),
            cluster_size,
            kind,
            key: key.cloned(),
            extents: BTreeMap::new(),
            data_end: HEADER_SIZE as u64,
            created_unix_ns: now_unix_ns(),
            settled: false,
        })
    }

    /// Path of the partial file.
    pub fn partial_path(&self) -> &Path {
        &self.path_partial
    }

    /// Stores `data` as the disk's bytes at `offset`: cluster-aligned,
    /// whole clusters unless it ends at the virtual size, overlapping
    /// nothing added before.
    pub fn add_data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        self.check_extent(offset, len)?;
        let file_offset = self.data_end.next_multiple_of(DATA_ALIGN);
        self.file.write_all_at(data, file_offset).map_err(DiskError::io("writing disk layer", &self.path_partial))?;
        let clusters = data.chunks(self.cluster_size as usize);
        let crcs = clusters.clone().map(crc32c::crc32c).collect();
        let tags = match &self.key {
            Some(key) => clusters.map(|c| key.disk_cluster_tag(c)).collect(),
            None => Vec::new(),
        };
        self.data_end = file_offset + len;
        self.extents.insert(offset, Pending { len, data: Some(PendingData { file_offset, crcs, tags }) });
        Ok(())
    }

    /// Records that the disk reads `len` zeros at `offset` (same rules as
    /// [`add_data`](Self::add_data)); nothing is stored.
    pub fn add_zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_extent(offset, len)?;
        self.extents.insert(offset, Pending { len, data: None });
        Ok(())
    }

    fn check_extent(&self, offset: u64, len: u64) -> Result<()> {
        let refuse = |why: String| DiskError::BadExtent { path: self.path_partial.clone(), offset, len, why };
        let size = self.identity.virtual_size;
        let cluster = u64::from(self.cluster_size);
        if len == 0 {
            return Err(refuse("it is empty".into()));
        }
        let end = offset.checked_add(len).filter(|&end| end <= size);
        let Some(end) = end else {
            return Err(refuse(format!("it ends beyond the disk's {size} bytes")));
        };
        if !offset.is_multiple_of(cluster) || (!len.is_multiple_of(cluster) && end != size) {
            return Err(refuse(format!("it is not whole clusters of {cluster} bytes (nor ends at the disk's end)")));
        }
        if let Some((&before, p)) = self.extents.range(..offset).next_back() {
            if before + p.len > offset {
                return Err(refuse(format!("it overlaps the extent {before:#x}+{:#x}", p.len)));
            }
        }
        if let Some((&after, p)) = self.extents.range(offset..).next() {
            if after < end {
                return Err(refuse(format!("it overlaps the extent {after:#x}+{:#x}", p.len)));
            }
        }
        Ok(())
    }

    /// Writes the extent table, AUTH and the header; syncs the file,
    /// renames it to its final name and syncs the directory.
    pub fn finish(mut self) -> Result<LayerSummary> {
        let (entries, crcs, tags, data_bytes, zero_bytes) = self.table();
        let data_clusters = crcs.len() as u64;
        let mut table = Vec::with_capacity(entries.len() * size_of::<ExtentEntry>() + crcs.len() * (4 + TAG_LEN));
        for entry in &entries {
            table.extend_from_slice(entry.as_bytes());
        }
        for crc in &crcs {
            table.extend_from_slice(&crc.to_le_bytes());
        }
        table.extend_from_slice(tags.as_flattened());
        let table_end = self.data_end + table.len() as u64;
        self.file
            .write_all_at(&table, self.data_end)
            .map_err(DiskError::io("writing disk layer", &self.path_partial))?;

        let mut header = self.header_block(entries.len() as u64, data_clusters, &table);
        let mut mac = None;
        let mut size = table_end;
        if let Some(key) = &self.key {
            let mut auth = AuthRecord::new_zeroed();
            auth.version = U32::new(AUTH_VERSION);
            auth.key_id = key.id();
            let mut hasher = key.disk_mac_hasher();
            hasher.update(&header).update(&table).update(&auth.as_bytes()[..AUTH_SIGNED_LEN]);
            auth.mac = *hasher.finalize().as_bytes();
            self.file
                .write_all_at(auth.as_bytes(), table_end)
                .map_err(DiskError::io("writing disk layer", &self.path_partial))?;
            size += size_of::<AuthRecord>() as u64;
            mac = Some(Mac(auth.mac));
        }
        let header_crc32c = header_crc(&header);
        header[24..28].copy_from_slice(&header_crc32c.to_le_bytes());
        // The file ends exactly where its last part does (holes padded data).
        self.file.set_len(size).map_err(DiskError::io("sizing disk layer", &self.path_partial))?;
        self.file.write_all_at(&header, 0).map_err(DiskError::io("writing disk layer", &self.path_partial))?;
        self.file.sync_all().map_err(DiskError::io("syncing disk layer", &self.path_partial))?;
        fs::rename(&self.path_partial, &self.path_final)
            .map_err(DiskError::io("renaming disk layer", &self.path_final))?;
        self.settled = true;
        let dir = parent_dir(&self.path_final);
        sync_dir(dir).map_err(DiskError::io("syncing directory", dir))?;
        Ok(LayerSummary {
            path: self.path_final.clone(),
            stored_bytes: size,
            data_bytes,
            zero_bytes,
            extents: entries.len() as u64,
            header_crc32c,
            mac,
        })
    }

    /// Gives up: removes the partial file.
    pub fn abort(mut self) -> Result<()> {
        self.settled = true;
        fs::remove_file(&self.path_partial).map_err(DiskError::io("removing partial disk layer", &self.path_partial))
    }

    /// The table's entries, CRCs and tags, adjacent extents merged (data
    /// only where their bytes are adjacent in the file too), and the data
    /// and zero bytes.
    fn table(&mut self) -> (Vec<ExtentEntry>, Vec<u32>, Vec<[u8; TAG_LEN]>, u64, u64) {
        let (mut entries, mut crcs, mut tags) = (Vec::<ExtentEntry>::new(), Vec::new(), Vec::new());
        let (mut data_bytes, mut zero_bytes) = (0, 0);
        for (offset, pending) in std::mem::take(&mut self.extents) {
            let (kind, file_offset) = match &pending.data {
                Some(d) => (EXTENT_DATA, d.file_offset),
                None => (EXTENT_ZERO, 0),
            };
            match &pending.data {
                Some(_) => data_bytes += pending.len,
                None => zero_bytes += pending.len,
            }
            if let Some(d) = pending.data {
                crcs.extend(d.crcs);
                tags.extend(d.tags);
            }
            if let Some(last) = entries.last_mut() {
                let last_end = last.offset.get() + last.length.get();
                let file_adjacent = kind == EXTENT_ZERO || last.file_offset.get() + last.length.get() == file_offset;
                // A merged extent stays whole clusters but for the disk's end.
                if last_end == offset && last.kind.get() == kind && file_adjacent {
                    last.length = U64::new(last.length.get() + pending.len);
                    continue;
                }
            }
            entries.push(ExtentEntry {
                offset: U64::new(offset),
                length: U64::new(pending.len),
                kind: U32::new(kind),
                reserved: U32::new(0),
                file_offset: U64::new(file_offset),
            });
        }
        debug_assert_eq!(
            crcs.len() as u64,
            entries
                .iter()
                .filter(|e| e.kind.get() == EXTENT_DATA)
                .map(|e| clusters_in(e.length.get(), self.cluster_size))
                .sum::<u64>()
        );
        (entries, crcs, tags, data_bytes, zero_bytes)
    }

    /// The header block, CRC field zero.
    fn header_block(&self, extent_count: u64, data_clusters: u64, table: &[u8]) -> Vec<u8> {
        let mut fields = HeaderFields::new_zeroed();
        fields.magic = MAGIC;
        fields.major = U16::new(FORMAT_MAJOR);
        fields.minor = U16::new(FORMAT_MINOR);
        fields.flags = U32::new(if self.key.is_some() { FLAG_SEALED } else { 0 });
        fields.created_unix_ns = U64::new(self.created_unix_ns);
        let (kind, parent, parent_crc) = match &self.kind {
            LayerKind::Full => (KIND_FULL, "", 0),
            LayerKind::Delta { parent, parent_header_crc32c } => (KIND_DELTA, parent.as_str(), *parent_header_crc32c),
        };
        fields.kind = U32::new(kind);
        fields.virtual_size = U64::new(self.identity.virtual_size);
        fields.cluster_size = U32::new(self.cluster_size);
        fields.parent_header_crc32c = U32::new(parent_crc);
        fields.extent_count = U64::new(extent_count);
        fields.data_clusters = U64::new(data_clusters);
        fields.data_end = U64::new(self.data_end);
        fields.table_len = U64::new(table.len() as u64);
        fields.table_crc32c = U32::new(crc32c::crc32c(table));
        let mut block = fields.as_bytes().to_vec();
        encode_names(&self.identity, parent, &mut block);
        block.resize(HEADER_SIZE, 0);
        block
    }
}

impl Drop for LayerWriter {
    fn drop(&mut self) {
        if !self.settled {
            // Best effort: a leftover is also removed by the next create().
            let _ = fs::remove_file(&self.path_partial);
        }
    }
}
