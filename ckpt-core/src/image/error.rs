// SPDX-License-Identifier: GPL-2.0-or-later
//! What can go wrong with an image, worded for the person who has to act.

use std::io;
use std::path::{Path, PathBuf};

use super::format::{SectionKind, FORMAT_MAJOR};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What mekha was doing, e.g. "reading image".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{} is not a mekha image (bad magic)", path.display())]
    BadMagic { path: PathBuf },

    #[error("image {} uses format {major}.{minor}, which is newer than this mekha ({FORMAT_MAJOR}.x): use a newer mekha", path.display())]
    NewerFormat { path: PathBuf, major: u16, minor: u16 },

    #[error("image {} uses format {major}.{minor}, which this mekha ({FORMAT_MAJOR}.x) does not read", path.display())]
    OlderFormat { path: PathBuf, major: u16, minor: u16 },

    #[error("image {}: header checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the header is damaged", path.display())]
    HeaderChecksum { path: PathBuf, stored: u32, computed: u32 },

    #[error("image {} is truncated: {what} ends at {end} but the file has {file_len} bytes", path.display())]
    Truncated {
        path: PathBuf,
        /// The first piece that does not fit, e.g. "section DEVICE_STATE".
        what: String,
        end: u64,
        file_len: u64,
    },

    #[error("image {} is malformed: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },

    #[error("image {} needs section {kind}, which this mekha does not know (written by a newer mekha?)", path.display())]
    UnknownRequiredSection { path: PathBuf, kind: SectionKind },

    #[error("image {}: section {kind} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})", path.display())]
    SectionChecksum { path: PathBuf, kind: SectionKind, stored: u32, computed: u32 },

    #[error("image {}: page {page} ({block} + {offset_in_block:#x}) checksum mismatch", path.display())]
    PageChecksum { path: PathBuf, page: u64, block: String, offset_in_block: u64 },

    #[error("image {} carries no MAC (it was written without an image key) and a key was given: refused", path.display())]
    Unsealed { path: PathBuf },

    #[error("image {} was sealed under another image key (id {key_id}, this key's id is {ours}): refused", path.display())]
    OtherKey { path: PathBuf, key_id: String, ours: String },

    #[error("image {} was changed after it was written: {what} does not match its MAC; refused", path.display())]
    Tampered { path: PathBuf, what: String },

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

pub type Result<T, E = ImageError> = std::result::Result<T, E>;
