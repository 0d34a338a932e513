// SPDX-License-Identifier: GPL-2.0-or-later
//! What can go wrong with an image, worded for the person who has to act.

use std::io;
use std::path::{Path, PathBuf};

use super::format::{SectionKind, FORMAT_MAJOR};

/// Reading or writing an image failed. Every variant but `Io` and
/// `BadIdentity` means the file is not a sound image ([`ImageError::is_damage`]).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file system call on the image failed (missing file, permissions,
    /// a read error, not a regular file).
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What mekha was doing, e.g. "reading image".
        action: &'static str,
        /// The image file (or, writing, its `.partial` or directory).
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// The file does not start with `MEKHAIMG` (also when it is shorter
    /// than the magic and differs from it).
    #[error("{} is not a mekha image (bad magic)", path.display())]
    BadMagic {
        /// The file read.
        path: PathBuf,
    },

    /// The header's major version is above [`FORMAT_MAJOR`]: nothing after
    /// it can be trusted to mean what this mekha reads.
    #[error("image {} uses format {major}.{minor}, which is newer than this mekha ({FORMAT_MAJOR}.x): use a newer mekha", path.display())]
    NewerFormat {
        /// The image file.
        path: PathBuf,
        /// The major version it declares.
        major: u16,
        /// The minor version it declares.
        minor: u16,
    },

    /// The header's major version is below [`FORMAT_MAJOR`].
    #[error("image {} uses format {major}.{minor}, which this mekha ({FORMAT_MAJOR}.x) does not read", path.display())]
    OlderFormat {
        /// The image file.
        path: PathBuf,
        /// The major version it declares.
        major: u16,
        /// The minor version it declares.
        minor: u16,
    },

    /// The header block's CRC32C does not match the one it stores.
    #[error("image {}: header checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the header is damaged", path.display())]
    HeaderChecksum {
        /// The image file.
        path: PathBuf,
        /// The header's `header_crc32c` field.
        stored: u32,
        /// The CRC32C of the block as read.
        computed: u32,
    },

    /// The file ends before the header block or a section does.
    #[error("image {} is truncated: {what} ends at {end} but the file has {file_len} bytes", path.display())]
    Truncated {
        /// The image file.
        path: PathBuf,
        /// The first piece that does not fit, e.g. "section DEVICE_STATE".
        what: String,
        /// The file offset where that piece ends.
        end: u64,
        /// The file's length in bytes.
        file_len: u64,
    },

    /// The image breaks a rule of the format its checksums held: pages
    /// other than 4096 bytes; a section missing, repeated, overlapping or
    /// larger than mekha reads; an IDENTITY, TIME, NET_FRAMES, INFO or
    /// AUTH that does not decode; a RAM or PAGE_CRCS (or, sealed,
    /// PAGE_TAGS) that does not fit the RAM blocks.
    #[error("image {} is malformed: {reason}", path.display())]
    Malformed {
        /// The image file.
        path: PathBuf,
        /// Which rule, and how it is broken.
        reason: String,
    },

    /// A section carries the required flag but its kind is unknown to this
    /// mekha (written by a newer one).
    #[error("image {} needs section {kind}, which this mekha does not know (written by a newer mekha?)", path.display())]
    UnknownRequiredSection {
        /// The image file.
        path: PathBuf,
        /// The unknown kind.
        kind: SectionKind,
    },

    /// A section's bytes do not match the CRC32C in its directory entry.
    #[error("image {}: section {kind} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})", path.display())]
    SectionChecksum {
        /// The image file.
        path: PathBuf,
        /// The section read.
        kind: SectionKind,
        /// The CRC32C in the directory entry.
        stored: u32,
        /// The CRC32C of the bytes as read.
        computed: u32,
    },

    /// A page read does not match its PAGE_CRCS entry or, opened with a
    /// key, its PAGE_TAGS tag.
    #[error("image {}: page {page} ({block} + {offset_in_block:#x}) checksum mismatch", path.display())]
    PageChecksum {
        /// The image file.
        path: PathBuf,
        /// The global page number.
        page: u64,
        /// The RAM block holding the page.
        block: String,
        /// The page's byte offset in that block.
        offset_in_block: u64,
    },

    /// An image without an AUTH section was opened with a key.
    #[error("image {} carries no MAC (it was written without an image key) and a key was given: refused", path.display())]
    Unsealed {
        /// The image file.
        path: PathBuf,
    },

    /// The image's AUTH names another key id than the key given.
    #[error("image {} was sealed under another image key (id {key_id}, this key's id is {ours}): refused", path.display())]
    OtherKey {
        /// The image file.
        path: PathBuf,
        /// The key id the image's AUTH holds, hex.
        key_id: String,
        /// The given key's id, hex.
        ours: String,
    },

    /// Opened with its key: the MAC or a section's tag does not match
    /// (something changed the file after it was sealed).
    #[error("image {} was changed after it was written: {what} does not match its MAC; refused", path.display())]
    Tampered {
        /// The image file.
        path: PathBuf,
        /// What does not match: "its header or directory", or "section KIND".
        what: String,
    },

    /// The VM description given to the builder cannot be laid out (see
    /// [`super::format::check_identity`]); holds what is wrong.
    #[error("cannot write an image for this VM: {0}")]
    BadIdentity(String),
}

impl ImageError {
    /// Whether the image itself is damaged or unreadable as an image, as
    /// opposed to the system failing to access it (missing file, permissions).
    pub fn is_damage(&self) -> bool {
        !matches!(self, ImageError::Io { .. } | ImageError::BadIdentity(_))
    }

    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.to_owned();
        move |source| ImageError::Io { action, path, source }
    }

    pub(crate) fn malformed(path: &Path, reason: impl Into<String>) -> ImageError {
        ImageError::Malformed { path: path.to_owned(), reason: reason.into() }
    }
}

/// The result of an image operation.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
