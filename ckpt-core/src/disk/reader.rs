// SPDX-License-Identifier: GPL-2.0-or-later
//! Opening a disk layer: header, extent table and (sealed) MAC are checked
//! up front, so a restore never starts from a layer it cannot finish;
//! each data cluster is checked as it is read.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use zerocopy::FromBytes;

use super::error::{DiskError, Result};
use super::format::{
    check_parent_name, cluster_size_ok, clusters_in, decode_names, header_crc, AuthRecord, DiskIdentity, Extent,
    ExtentData, ExtentEntry, HeaderFields, LayerKind, AUTH_SIGNED_LEN, AUTH_VERSION, DATA_ALIGN, EXTENT_DATA,
    EXTENT_ZERO, FLAG_SEALED, FORMAT_MAJOR, HEADER_CRC_AT, HEADER_SIZE, KIND_DELTA, KIND_FULL, MAGIC, TAG_LEN,
};
use crate::image::{hex, host_memory, ImageKey, Mac};
use crate::width::to_usize;

/// The most of an extent table read into memory: 4 GiB covers a fully
/// written 8 TiB disk in 64 KiB clusters, sealed; the host's memory bounds it too.
const MAX_TABLE_LEN: u64 = 4 << 30;

/// Reads are split so that no read needs a huge buffer.
pub(crate) const READ_CHUNK: u64 = 8 << 20;

/// The header's fields, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LayerHeader {
    /// Format major version: always [`FORMAT_MAJOR`] in an opened layer.
    pub major: u16,
    /// Format minor version: any.
    pub minor: u16,
    /// Header flags as stored.
    pub flags: u32,
    /// When the layer was written, ns since the Unix epoch.
    pub created_unix_ns: u64,
    /// The header block's CRC32C, which names this exact layer.
    pub header_crc32c: u32,
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Whether the layer carries tags and a MAC.
    pub sealed: bool,
    /// Where the packed data ends and the extent table starts.
    pub data_end: u64,
    /// The extent table's length in bytes.
    pub table_len: u64,
    /// Data clusters stored (one CRC32C each).
    pub data_clusters: u64,
}

/// A disk layer whose header and extent table are valid (and, opened with
/// a key, whose MAC holds).
pub struct LayerReader {
    path: PathBuf,
    file: File,
    file_len: u64,
    /// The file's device and inode: what a cycle of parents comes back to.
    file_id: (u64, u64),
    header: LayerHeader,
    identity: DiskIdentity,
    kind: LayerKind,
    extents: Vec<Extent>,
    /// The data extents' indices, by file offset.
    data_by_file: Vec<usize>,
    crcs: Vec<u32>,
    sealed: Option<Sealed>,
}

/// What a layer opened with its key checks besides the CRCs.
struct Sealed {
    key: ImageKey,
    mac: Mac,
    tags: Vec<[u8; TAG_LEN]>,
}

impl LayerReader {
    /// Opens a layer, checking its structure and CRCs; with `key`, it must
    /// be sealed under it, its MAC must hold, and reads check tags too.
    pub fn open(path: &Path, key: Option<&ImageKey>) -> Result<LayerReader> {
        let file = File::open(path).map_err(DiskError::io("opening disk layer", path))?;
        let meta = file.metadata().map_err(DiskError::io("reading disk layer", path))?;
        if !meta.is_file() {
            return Err(DiskError::io("reading disk layer", path)(io::Error::other("not a regular file")));
        }
        let file_len = meta.len();
        let malformed = |why: String| DiskError::malformed(path, why);

        let mut block = vec![0u8; HEADER_SIZE];
        let available = to_usize(file_len.min(HEADER_SIZE as u64));
        file.read_exact_at(&mut block[..available], 0).map_err(DiskError::io("reading disk layer", path))?;
        let magic_len = available.min(MAGIC.len());
        if block[..magic_len] != MAGIC[..magic_len] {
            return Err(DiskError::BadMagic { path: path.to_owned() });
        }
        if available < HEADER_SIZE {
            return Err(DiskError::Truncated {
                path: path.to_owned(),
                what: "the header",
                end: HEADER_SIZE as u64,
                file_len,
            });
        }
        let (h, names) = HeaderFields::read_from_prefix(&block).expect("a header block holds the fields");
        let (major, minor) = (h.major.get(), h.minor.get());
        // The version comes before the checksum: another major may checksum differently.
        if major != FORMAT_MAJOR {
            return Err(DiskError::OtherFormat { path: path.to_owned(), major, minor });
        }
        let (stored, computed) = (h.header_crc32c.get(), header_crc(&block));
        if stored != computed {
            return Err(DiskError::HeaderChecksum { path: path.to_owned(), stored, computed });
        }

        let [node_name, device, format, parent] = decode_names(names).map_err(malformed)?;
        let identity = DiskIdentity { node_name, device, format, virtual_size: h.virtual_size.get() };
        identity.check().map_err(|e| malformed(format!("its identity: {e}")))?;
        let cluster_size = h.cluster_size.get();
        if !cluster_size_ok(cluster_size) {
            return Err(malformed(format!("cluster size {cluster_size} (a power of two, 4 KiB to 2 MiB)")));
        }
        let kind = match (h.kind.get(), parent.is_empty()) {
            (KIND_FULL, true) if h.parent_header_crc32c.get() == 0 => LayerKind::Full,
            (KIND_FULL, _) => return Err(malformed("a full layer names a parent".into())),
            (KIND_DELTA, false) => {
                check_parent_name(&parent).map_err(malformed)?;
                LayerKind::Delta { parent, parent_header_crc32c: h.parent_header_crc32c.get() }
            }
            (KIND_DELTA, true) => return Err(malformed("a delta layer names no parent".into())),
            (other, _) => return Err(malformed(format!("layer kind {other} (1 full, 2 delta)"))),
        };

        // Counts, then the parts' bounds, without overflow.
        let sealed = h.flags.get() & FLAG_SEALED != 0;
        let clusters = clusters_in(identity.virtual_size, cluster_size);
        let (extent_count, data_clusters) = (h.extent_count.get(), h.data_clusters.get());
        if extent_count > clusters || data_clusters > clusters {
            return Err(malformed(format!(
                "{extent_count} extents and {data_clusters} data clusters on a disk of {clusters} clusters"
            )));
        }
        let per_cluster = if sealed { 4 + TAG_LEN as u64 } else { 4 };
        let table_len = extent_count * size_of::<ExtentEntry>() as u64 + data_clusters * per_cluster;
        if h.table_len.get() != table_len {
            return Err(malformed(format!(
                "an extent table of {} bytes, but {extent_count} extents and {data_clusters} clusters take {table_len}",
                h.table_len.get()
            )));
        }
        let data_end = h.data_end.get();
        if data_end < HEADER_SIZE as u64 || data_end > u64::MAX / 2 {
            return Err(malformed(format!("the packed data ends at {data_end}")));
        }
        let table_end = data_end + table_len;
        let file_end = table_end + if sealed { size_of::<AuthRecord>() as u64 } else { 0 };
        for (what, end) in [("the packed data", data_end), ("the extent table", table_end), ("AUTH", file_end)] {
            if end > file_len {
                return Err(DiskError::Truncated { path: path.to_owned(), what, end, file_len });
            }
        }
        if file_len > file_end {
            return Err(malformed(format!("{} bytes follow its end at {file_end}", file_len - file_end)));
        }
        let limit = MAX_TABLE_LEN.min(host_memory() / 4);
        if table_len > limit {
            return Err(malformed(format!("an extent table of {table_len} bytes, more than mekha reads ({limit})")));
        }

        let mut table = vec![0u8; to_usize(table_len)];
        file.read_exact_at(&mut table, data_end).map_err(DiskError::io("reading disk layer", path))?;
        let (stored, computed) = (h.table_crc32c.get(), crc32c::crc32c(&table));
        if stored != computed {
            return Err(DiskError::TableChecksum { path: path.to_owned(), stored, computed });
        }
        let mac = match (key, sealed) {
            (Some(_), false) => return Err(DiskError::Unsealed { path: path.to_owned() }),
            (Some(key), true) => Some(check_mac(&file, path, key, &block, &table, table_end)?),
            (None, _) => None,
        };

        let entries_len = to_usize(extent_count) * size_of::<ExtentEntry>();
        let entries = <[ExtentEntry]>::ref_from_bytes(&table[..entries_len]).expect("whole entries");
        let extents = check_extents(entries, &identity, cluster_size, data_clusters).map_err(malformed)?;
        let data_by_file = check_packing(&extents, data_end).map_err(malformed)?;
        let crc_bytes = &table[entries_len..entries_len + to_usize(data_clusters) * 4];
        let crcs = crc_bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        let sealed_state = match (key, mac) {
            (Some(key), Some(mac)) => {
                let tags = table[entries_len + crc_bytes.len()..]
                    .chunks_exact(TAG_LEN)
                    .map(|c| c.try_into().expect("a whole tag"))
                    .collect();
                Some(Sealed { key: key.clone(), mac, tags })
            }
            _ => None,
        };
        let header = LayerHeader {
            major,
            minor,
            flags: h.flags.get(),
            created_unix_ns: h.created_unix_ns.get(),
            header_crc32c: h.header_crc32c.get(),
            cluster_size,
            sealed,
            data_end,
            table_len,
            data_clusters,
        };
        Ok(LayerReader {
            path: path.to_owned(),
            file,
            file_len,
            file_id: (meta.dev(), meta.ino()),
            header,
            identity,
            kind,
            extents,
            data_by_file,
            crcs,
            sealed: sealed_state,
        })
    }

    /// The path the layer was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length: the bytes the layer stores.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The open file, read-only.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn file_id(&self) -> (u64, u64) {
        self.file_id
    }

    /// The header's fields.
    pub fn header(&self) -> &LayerHeader {
        &self.header
    }

    /// The disk the layer belongs to.
    pub fn identity(&self) -> &DiskIdentity {
        &self.identity
    }

    /// Full, or a delta over a parent.
    pub fn kind(&self) -> &LayerKind {
        &self.kind
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u32 {
        self.header.cluster_size
    }

    /// The extent table, by disk offset.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// The MAC, when opened with its key.
    pub fn mac(&self) -> Option<Mac> {
        self.sealed.as_ref().map(|s| s.mac)
    }

    /// Reads `buf.len()` bytes of packed data at `file_offset`, checking
    /// every cluster's CRC32C (and tag, opened with a key). The range
    /// starts at a cluster of a data extent and ends at a cluster's end;
    /// it may run on into data extents that follow in the file without a gap.
    pub fn read_data(&self, file_offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        let bad = |why| DiskError::BadRead { path: self.path.clone(), file_offset, len, why };
        let cluster = u64::from(self.header.cluster_size);
        let (mut pos, mut done) = (file_offset, 0usize);
        while done < buf.len() {
            // The data extent holding `pos`: the last one starting at or before it.
            let i = self.data_by_file.partition_point(|&i| data_place(&self.extents[i]).0 <= pos);
            let Some(extent) = i.checked_sub(1).map(|i| &self.extents[self.data_by_file[i]]) else {
                return Err(bad("no data extent holds it"));
            };
            let (start, first_cluster) = data_place(extent);
            if pos >= start + extent.len {
                return Err(bad("no data extent holds it"));
            }
            if !(pos - start).is_multiple_of(cluster) {
                return Err(bad("it does not start at a cluster"));
            }
            let left = (buf.len() - done) as u64;
            let piece = left.min(start + extent.len - pos);
            if piece < start + extent.len - pos && !piece.is_multiple_of(cluster) {
                return Err(bad("it does not end at a cluster's end"));
            }
            let out = &mut buf[done..done + to_usize(piece)];
            self.file.read_exact_at(out, pos).map_err(DiskError::io("reading disk layer", &self.path))?;
            let index = first_cluster + (pos - start) / cluster;
            for (k, bytes) in out.chunks(to_usize(cluster)).enumerate() {
                let index = index + k as u64;
                if !self.cluster_matches(index, bytes) {
                    let disk_offset = extent.offset + (pos - start) + k as u64 * cluster;
                    return Err(DiskError::DataChecksum { path: self.path.clone(), disk_offset });
                }
            }
            pos += piece;
            done += to_usize(piece);
        }
        Ok(())
    }

    /// Reads the whole of data extent `index` into `buf` (its length).
    pub fn read_extent(&self, index: usize, buf: &mut [u8]) -> Result<()> {
        let extent = &self.extents[index];
        let ExtentData::Data { file_offset, .. } = extent.data else {
            return Err(DiskError::BadRead {
                path: self.path.clone(),
                file_offset: 0,
                len: extent.len,
                why: "a zero extent stores no data",
            });
        };
        assert_eq!(buf.len() as u64, extent.len, "read_extent reads a whole extent");
        self.read_data(file_offset, buf)
    }

    /// Whether `bytes` are data cluster `index` as written: its CRC32C
    /// and, opened with a key, its tag.
    pub(crate) fn cluster_matches(&self, index: u64, bytes: &[u8]) -> bool {
        let index = to_usize(index);
        crc32c::crc32c(bytes) == self.crcs[index]
            && self
                .sealed
                .as_ref()
                .is_none_or(|s| constant_time_eq::constant_time_eq_16(&s.key.disk_cluster_tag(bytes), &s.tags[index]))
    }
}

// By hand: the derived form would print every cluster's checksum.
impl std::fmt::Debug for LayerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerReader")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("identity", &self.identity)
            .field("kind", &self.kind)
            .field("extents", &self.extents.len())
            .field("mac", &self.mac())
            .finish_non_exhaustive()
    }
}

/// A data extent's file offset and first cluster index.
pub(crate) fn data_place(extent: &Extent) -> (u64, u64) {
    match extent.data {
        ExtentData::Data { file_offset, first_cluster } => (file_offset, first_cluster),
        ExtentData::Zero => unreachable!("only data extents are placed in the file"),
    }
}

/// Checks AUTH under `key`: its version, key id and MAC.
fn check_mac(file: &File, path: &Path, key: &ImageKey, block: &[u8], table: &[u8], at: u64) -> Result<Mac> {
    let mut bytes = [0u8; size_of::<AuthRecord>()];
    file.read_exact_at(&mut bytes, at).map_err(DiskError::io("reading disk layer", path))?;
    let auth = AuthRecord::read_from_bytes(&bytes).expect("AUTH's size");
    if auth.version.get() != AUTH_VERSION {
        return Err(DiskError::malformed(
            path,
            format!("AUTH version {} (this mekha reads {AUTH_VERSION})", auth.version.get()),
        ));
    }
    if auth.key_id != key.id() {
        return Err(DiskError::OtherKey { path: path.to_owned(), key_id: hex(&auth.key_id), ours: key.id_hex() });
    }
    let mut hasher = key.disk_mac_hasher();
    hasher.update(&block[..HEADER_CRC_AT]).update(&[0; 4]).update(&block[HEADER_CRC_AT + 4..]);
    hasher.update(table).update(&bytes[..AUTH_SIGNED_LEN]);
    // Constant time: the comparison must not tell how much matched.
    if !constant_time_eq::constant_time_eq_32(hasher.finalize().as_bytes(), &auth.mac) {
        return Err(DiskError::Tampered { path: path.to_owned() });
    }
    Ok(Mac(auth.mac))
}

/// Decodes the table's entries: each within the disk, cluster-aligned,
/// after the previous one, of a known kind; data clusters add up.
fn check_extents(
    entries: &[ExtentEntry],
    identity: &DiskIdentity,
    cluster_size: u32,
    data_clusters: u64,
) -> Result<Vec<Extent>, String> {
    let (size, cluster) = (identity.virtual_size, u64::from(cluster_size));
    let mut extents = Vec::with_capacity(entries.len());
    let (mut previous_end, mut next_cluster) = (0u64, 0u64);
    for (i, e) in entries.iter().enumerate() {
        let (offset, len) = (e.offset.get(), e.length.get());
        let end = offset.checked_add(len).filter(|&end| end <= size);
        let Some(end) = end.filter(|_| len > 0) else {
            return Err(format!("extent {i} ({offset:#x}+{len:#x}) is empty or ends beyond the disk's {size} bytes"));
        };
        if !offset.is_multiple_of(cluster) || (!len.is_multiple_of(cluster) && end != size) {
            return Err(format!("extent {i} ({offset:#x}+{len:#x}) is not whole clusters of {cluster} bytes"));
        }
        if offset < previous_end {
            return Err(format!("extent {i} ({offset:#x}) overlaps or precedes the one before it"));
        }
        let data = match e.kind.get() {
            EXTENT_DATA => {
                let first_cluster = next_cluster;
                next_cluster += clusters_in(len, cluster_size);
                ExtentData::Data { file_offset: e.file_offset.get(), first_cluster }
            }
            EXTENT_ZERO if e.file_offset.get() == 0 => ExtentData::Zero,
            EXTENT_ZERO => return Err(format!("zero extent {i} has a file offset")),
            other => return Err(format!("extent {i} of kind {other} (1 data, 2 zero)")),
        };
        extents.push(Extent { offset, len, data });
        previous_end = end;
    }
    if next_cluster != data_clusters {
        return Err(format!("its data extents hold {next_cluster} clusters, the header says {data_clusters}"));
    }
    Ok(extents)
}

/// Checks that the data extents tile the packed data (module doc) and
/// returns their indices by file offset.
fn check_packing(extents: &[Extent], data_end: u64) -> Result<Vec<usize>, String> {
    let mut by_file: Vec<usize> = (0..extents.len()).filter(|&i| extents[i].data != ExtentData::Zero).collect();
    by_file.sort_by_key(|&i| data_place(&extents[i]).0);
    let mut end = HEADER_SIZE as u64;
    for (n, &i) in by_file.iter().enumerate() {
        let start = data_place(&extents[i]).0;
        let expected = if n == 0 { end } else { end.next_multiple_of(DATA_ALIGN) };
        if start != expected {
            return Err(format!(
                "the data of extent {i} starts at file offset {start:#x}, not {expected:#x} where packing puts it"
            ));
        }
        end = start + extents[i].len;
    }
    if end != data_end {
        return Err(format!("the packed data ends at {end:#x}, the header says {data_end:#x}"));
    }
    Ok(by_file)
}
