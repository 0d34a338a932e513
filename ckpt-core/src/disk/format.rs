// SPDX-License-Identifier: GPL-2.0-or-later
//! The on-disk structures of a disk layer: header block, extent entries,
//! AUTH, and the disk's identity (see the module doc of [`crate::disk`]
//! for the format itself).

use serde::Serialize;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// First eight bytes of every disk layer.
pub const MAGIC: [u8; 8] = *b"MEKHADSK";
/// Format major version this mekha writes and reads.
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version this mekha writes (it reads any minor of its major).
pub const FORMAT_MINOR: u16 = 0;
/// Size of the header block at offset 0, where the packed data starts.
pub const HEADER_SIZE: usize = 4096;
/// Smallest cluster size.
pub const MIN_CLUSTER_SIZE: u32 = 4096;
/// Largest cluster size (qcow2's largest cluster).
pub const MAX_CLUSTER_SIZE: u32 = 2 << 20;
/// The cluster size the capture uses (qcow2's default cluster).
pub const DEFAULT_CLUSTER_SIZE: u32 = 64 << 10;
/// Largest virtual size: 64 PiB, far above any disk QEMU serves, and low
/// enough that no offset arithmetic on it overflows.
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 56;
/// Each data extent starts on this boundary in the file (friendly to
/// `O_DIRECT` reads).
pub(crate) const DATA_ALIGN: u64 = 4096;
/// Header flag: the layer carries cluster tags and AUTH.
pub(crate) const FLAG_SEALED: u32 = 1;
pub(crate) const KIND_FULL: u32 = 1;
pub(crate) const KIND_DELTA: u32 = 2;
pub(crate) const EXTENT_DATA: u32 = 1;
pub(crate) const EXTENT_ZERO: u32 = 2;
/// Bytes of a cluster's tag in a sealed layer.
pub(crate) const TAG_LEN: usize = crate::image::PAGE_TAG_LEN;
/// AUTH format version.
pub(crate) const AUTH_VERSION: u32 = 1;
pub(crate) const MAX_NODE_NAME: usize = 255;
pub(crate) const MAX_DEVICE: usize = 255;
pub(crate) const MAX_FORMAT: usize = 32;
pub(crate) const MAX_PARENT: usize = 1024;

/// The fixed fields of the header block (128 bytes at offset 0); the
/// names follow them.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub(crate) struct HeaderFields {
    pub magic: [u8; 8],
    pub major: U16,
    pub minor: U16,
    pub flags: U32,
    pub created_unix_ns: U64,
    pub header_crc32c: U32,
    pub kind: U32,
    pub virtual_size: U64,
    pub cluster_size: U32,
    pub parent_header_crc32c: U32,
    pub extent_count: U64,
    pub data_clusters: U64,
    pub data_end: U64,
    pub table_len: U64,
    pub table_crc32c: U32,
    pub reserved: [u8; 44],
}

/// Offset of the header CRC in the header block.
pub(crate) const HEADER_CRC_AT: usize = 24;

/// One extent table entry (32 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub(crate) struct ExtentEntry {
    pub offset: U64,
    pub length: U64,
    pub kind: U32,
    pub reserved: U32,
    pub file_offset: U64,
}

/// AUTH (56 bytes at the table's end of a sealed layer).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub(crate) struct AuthRecord {
    pub version: U32,
    pub reserved: U32,
    pub key_id: [u8; 16],
    pub mac: [u8; 32],
}

/// Bytes of AUTH the MAC covers (all before the MAC).
pub(crate) const AUTH_SIGNED_LEN: usize = 24;

const _: () = assert!(size_of::<HeaderFields>() == 128);
const _: () = assert!(size_of::<ExtentEntry>() == 32);
const _: () = assert!(size_of::<AuthRecord>() == 56);
const _: () = assert!(std::mem::offset_of!(HeaderFields, header_crc32c) == HEADER_CRC_AT);
const _: () = assert!(std::mem::offset_of!(HeaderFields, virtual_size) == 32);
const _: () = assert!(std::mem::offset_of!(HeaderFields, table_crc32c) == 80);

/// CRC32C of a header block with its CRC field taken as zero.
pub(crate) fn header_crc(block: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&block[..HEADER_CRC_AT]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &block[HEADER_CRC_AT + 4..])
}

/// Which disk a layer belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskIdentity {
    /// The QEMU block node the capture read (e.g. `drive-virtio-disk0`).
    pub node_name: String,
    /// The guest device it backs (its id or QOM path; may be empty).
    pub device: String,
    /// The source image's format, e.g. `qcow2` or `raw`.
    pub format: String,
    /// The disk's size in bytes as the guest sees it.
    pub virtual_size: u64,
}

impl DiskIdentity {
    /// Says what is wrong with the identity, if anything.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.node_name.is_empty() || self.node_name.len() > MAX_NODE_NAME {
            return Err(format!("node name of {} bytes (1 to {MAX_NODE_NAME})", self.node_name.len()));
        }
        if self.device.len() > MAX_DEVICE {
            return Err(format!("device name of {} bytes (at most {MAX_DEVICE})", self.device.len()));
        }
        let format_ok = |f: &str| {
            !f.is_empty()
                && f.len() <= MAX_FORMAT
                && f.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        };
        if !format_ok(&self.format) {
            return Err(format!("source format {:?} (1 to {MAX_FORMAT} of [a-z0-9_-])", self.format));
        }
        if self.virtual_size > MAX_VIRTUAL_SIZE {
            return Err(format!("virtual size {} above {MAX_VIRTUAL_SIZE}", self.virtual_size));
        }
        Ok(())
    }
}

/// Whether a layer stands alone or over a parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LayerKind {
    /// Every cluster of the disk: unlisted ones are zero.
    Full,
    /// The clusters written since the parent's instant: unlisted ones are
    /// the parent's.
    Delta {
        /// The parent layer's file name relative to the checkpoint
        /// directory, e.g. `gen-000007/node1.vda.mdisk`.
        parent: String,
        /// The parent's header CRC32C.
        parent_header_crc32c: u32,
    },
}

impl LayerKind {
    /// `"full"` or `"delta"`.
    pub fn name(&self) -> &'static str {
        match self {
            LayerKind::Full => "full",
            LayerKind::Delta { .. } => "delta",
        }
    }

    /// A delta's parent name, checked.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self {
            LayerKind::Full => Ok(()),
            LayerKind::Delta { parent, .. } => check_parent_name(parent),
        }
    }
}

/// A parent name is a relative path of normal components, so that it
/// stays inside the checkpoint directory it is resolved against.
pub(crate) fn check_parent_name(parent: &str) -> Result<(), String> {
    if parent.is_empty() || parent.len() > MAX_PARENT {
        return Err(format!("parent name of {} bytes (1 to {MAX_PARENT})", parent.len()));
    }
    if parent.contains('\0') || parent.split('/').any(|part| matches!(part, "" | "." | "..")) {
        return Err(format!("parent name {parent:?} is not a relative path of plain names"));
    }
    Ok(())
}

/// Whether `n` is a valid cluster size.
pub(crate) fn cluster_size_ok(n: u32) -> bool {
    n.is_power_of_two() && (MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&n)
}

/// Clusters of `len` bytes (the last one may be partial).
pub(crate) fn clusters_in(len: u64, cluster_size: u32) -> u64 {
    len.div_ceil(u64::from(cluster_size))
}

/// One extent of a layer, as its table lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    /// Disk offset of its first byte (cluster-aligned).
    pub offset: u64,
    /// Length in bytes (whole clusters, unless it ends at the virtual size).
    pub len: u64,
    /// Where its content comes from.
    pub data: ExtentData,
}

impl Extent {
    /// Disk offset just past its last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// What an extent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtentData {
    /// Bytes stored in the layer.
    Data {
        /// File offset of the first byte.
        file_offset: u64,
        /// Index of its first cluster among the layer's data clusters
        /// (its CRC32C's place in the table).
        first_cluster: u64,
    },
    /// Zeros, stored as nothing.
    Zero,
}

/// Encodes the four names after the fixed header fields.
pub(crate) fn encode_names(identity: &DiskIdentity, parent: &str, out: &mut Vec<u8>) {
    for name in [&identity.node_name, &identity.device, &identity.format, parent] {
        out.extend_from_slice(&u16::try_from(name.len()).expect("names are checked short").to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }
}

/// Decodes the four names from the bytes after the fixed header fields:
/// node name, device, format, parent.
pub(crate) fn decode_names(mut bytes: &[u8]) -> Result<[String; 4], String> {
    let mut names: [String; 4] = Default::default();
    for (i, what) in ["node name", "device", "source format", "parent name"].iter().enumerate() {
        let (len, rest) = bytes.split_first_chunk::<2>().ok_or_else(|| format!("the {what} runs past the header"))?;
        let len = usize::from(u16::from_le_bytes(*len));
        let text = rest.get(..len).ok_or_else(|| format!("the {what} runs past the header"))?;
        names[i] = String::from_utf8(text.to_vec()).map_err(|_| format!("the {what} is not UTF-8"))?;
        bytes = &rest[len..];
    }
    Ok(names)
}
