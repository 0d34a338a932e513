// SPDX-License-Identifier: GPL-2.0-or-later
//! What can go wrong with a disk layer or a chain of them, worded for the
//! person who has to act.

use std::io;
use std::path::{Path, PathBuf};

use super::format::FORMAT_MAJOR;

/// Writing, reading or resolving disk layers failed. [`DiskError::is_damage`]
/// tells a damaged file from a failed system call or a wrong request.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A file system call failed (missing file, permissions, a read
    /// error, not a regular file).
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What mekha was doing, e.g. "reading disk layer".
        action: &'static str,
        /// The layer file (or, writing, its `.partial` or directory).
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// The file does not start with `MEKHADSK`.
    #[error("{} is not a mekha disk layer (bad magic)", path.display())]
    BadMagic {
        /// The file read.
        path: PathBuf,
    },

    /// The header's major version is not [`FORMAT_MAJOR`].
    #[error("disk layer {} uses format {major}.{minor}, which this mekha ({FORMAT_MAJOR}.x) does not read", path.display())]
    OtherFormat {
        /// The layer file.
        path: PathBuf,
        /// The major version it declares.
        major: u16,
        /// The minor version it declares.
        minor: u16,
    },

    /// The header block's CRC32C does not match the one it stores.
    #[error("disk layer {}: header checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the header is damaged", path.display())]
    HeaderChecksum {
        /// The layer file.
        path: PathBuf,
        /// The stored CRC.
        stored: u32,
        /// The CRC of the block as read.
        computed: u32,
    },

    /// The file ends before a part of the layer does.
    #[error("disk layer {} is truncated: {what} ends at {end} but the file has {file_len} bytes", path.display())]
    Truncated {
        /// The layer file.
        path: PathBuf,
        /// The first part that does not fit, e.g. "the extent table".
        what: &'static str,
        /// The file offset where that part ends.
        end: u64,
        /// The file's length in bytes.
        file_len: u64,
    },

    /// The layer breaks a rule of the format its checksums held (a field
    /// out of range, extents out of order or overlapping, packed data
    /// that does not tile, trailing bytes).
    #[error("disk layer {} is malformed: {reason}", path.display())]
    Malformed {
        /// The layer file.
        path: PathBuf,
        /// Which rule, and how it is broken.
        reason: String,
    },

    /// The extent table does not match its CRC32C.
    #[error("disk layer {}: extent table checksum mismatch (stored {stored:#010x}, computed {computed:#010x})", path.display())]
    TableChecksum {
        /// The layer file.
        path: PathBuf,
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the table as read.
        computed: u32,
    },

    /// A data cluster read does not match its CRC32C or, opened with a
    /// key, its tag.
    #[error("disk layer {}: the data cluster at disk offset {disk_offset:#x} does not match its checksum", path.display())]
    DataChecksum {
        /// The layer file.
        path: PathBuf,
        /// The cluster's disk offset.
        disk_offset: u64,
    },

    /// A layer without AUTH was opened with a key.
    #[error("disk layer {} carries no MAC (it was written without an image key) and a key was given: refused", path.display())]
    Unsealed {
        /// The layer file.
        path: PathBuf,
    },

    /// The layer was sealed under another key.
    #[error("disk layer {} was sealed under another image key (id {key_id}, this key's id is {ours}): refused", path.display())]
    OtherKey {
        /// The layer file.
        path: PathBuf,
        /// The key id its AUTH holds, hex.
        key_id: String,
        /// The given key's id, hex.
        ours: String,
    },

    /// Opened with its key, the MAC does not match.
    #[error("disk layer {} was changed after it was written: its MAC does not match; refused", path.display())]
    Tampered {
        /// The layer file.
        path: PathBuf,
    },

    /// A delta's parent is not the layer it was written over, or does not
    /// fit it (another header CRC, virtual size or cluster size).
    #[error("disk layer {} names parent {parent}, which {why}", path.display())]
    WrongParent {
        /// The delta.
        path: PathBuf,
        /// The parent's name as the delta records it.
        parent: String,
        /// How the parent found differs.
        why: String,
    },

    /// Following parents came back to a layer already in the chain.
    #[error("disk layer {} is its own ancestor (through {parent}): the chain has a cycle", path.display())]
    Cycle {
        /// The layer reached twice.
        path: PathBuf,
        /// The parent name that closed the cycle.
        parent: String,
    },

    /// The chain has more layers than [`super::MAX_CHAIN_LAYERS`].
    #[error("disk layer {} has a chain of more than {max} layers: merge it", path.display())]
    ChainTooDeep {
        /// The newest layer.
        path: PathBuf,
        /// The bound.
        max: usize,
    },

    /// An extent given to the writer is out of the disk, not aligned, or
    /// overlaps one given before.
    #[error("disk layer {}: extent {offset:#x}+{len:#x} refused: {why}", path.display())]
    BadExtent {
        /// The partial layer file.
        path: PathBuf,
        /// The extent's disk offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// What is wrong with it.
        why: String,
    },

    /// A read asked for bytes the layer does not store as data, or cut a
    /// cluster (whose checksum then cannot be checked).
    #[error("disk layer {}: cannot read {len} bytes at file offset {file_offset:#x}: {why}", path.display())]
    BadRead {
        /// The layer file.
        path: PathBuf,
        /// The file offset asked for.
        file_offset: u64,
        /// The length asked for.
        len: u64,
        /// Why it cannot be read.
        why: &'static str,
    },

    /// The identity, cluster size or parent given to the writer cannot be
    /// written (see [`super::DiskIdentity`]).
    #[error("cannot write disk layer {}: {why}", path.display())]
    BadLayout {
        /// The layer to be written.
        path: PathBuf,
        /// What cannot be written.
        why: String,
    },
}

impl DiskError {
    /// Whether a layer file is damaged or not a layer (as opposed to a
    /// system call failing or a caller's wrong request).
    pub fn is_damage(&self) -> bool {
        !matches!(
            self,
            DiskError::Io { .. }
                | DiskError::BadExtent { .. }
                | DiskError::BadRead { .. }
                | DiskError::BadLayout { .. }
        )
    }

    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiskError {
        let path = path.to_owned();
        move |source| DiskError::Io { action, path, source }
    }

    pub(crate) fn malformed(path: &Path, reason: impl Into<String>) -> DiskError {
        DiskError::Malformed { path: path.to_owned(), reason: reason.into() }
    }
}

/// The result of a disk layer operation.
pub type Result<T, E = DiskError> = std::result::Result<T, E>;
