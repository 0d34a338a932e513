// SPDX-License-Identifier: GPL-2.0-or-later
//! What can go wrong with a checkpoint directory, worded for the person
//! who has to act.

use std::io;
use std::path::{Path, PathBuf};

use super::manifest::{MANIFEST, MANIFEST_FORMAT};
use crate::image::ImageError;

/// An operation on a checkpoint directory ([`super::Store`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system call failed for a reason the other variants do not name.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What mekha was doing, e.g. "renaming generation to".
        action: &'static str,
        /// The file or directory the call was about.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// The checkpoint directory's path names something that is not a directory.
    #[error("checkpoint directory {} is not a directory", path.display())]
    NotADirectory {
        /// The checkpoint directory's path.
        path: PathBuf,
    },

    /// A checkpoint directory opened for reading does not exist.
    #[error("checkpoint directory {} does not exist", path.display())]
    Missing {
        /// The checkpoint directory's path.
        path: PathBuf,
    },

    /// A file could not be created in the checkpoint directory (probed on
    /// open, and when the lock file is made).
    #[error("checkpoint directory {} is not writable: {source}", path.display())]
    NotWritable {
        /// The checkpoint directory's path.
        path: PathBuf,
        /// Why creating the file failed.
        #[source]
        source: io::Error,
    },

    /// The directory's lock stayed held by another process for about
    /// 200 ms: another checkpoint is being written into it.
    #[error("checkpoint directory {} is in use: another mekha is writing a checkpoint into it", path.display())]
    Busy {
        /// The checkpoint directory's path.
        path: PathBuf,
    },

    /// A `MANIFEST.json` (or a `PARTS.json` marker) is not what a commit
    /// writes: not valid JSON, an unknown format, or names no commit can
    /// have written (generation 0, images outside their generation).
    #[error("manifest {} is damaged: {reason}", path.display())]
    BadManifest {
        /// The manifest or marker file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A store opened with an image key read a manifest that does not hold
    /// under it: no MAC, a MAC that does not match, or one that does not parse.
    #[error("manifest {} is refused: {reason}", path.display())]
    NotAuthentic {
        /// The manifest file.
        path: PathBuf,
        /// Why its MAC does not hold.
        reason: String,
    },

    /// The manifest has a format number above [`MANIFEST_FORMAT`].
    #[error("manifest {} has format {format}, which is newer than this mekha ({MANIFEST_FORMAT}): use a newer mekha", path.display())]
    NewerManifest {
        /// The manifest file.
        path: PathBuf,
        /// The format it declares.
        format: u32,
    },

    /// A VM name cannot name an image file of a generation (empty, with a
    /// `/` or a NUL, starting with `.`, longer than 200 bytes).
    #[error("invalid VM name {name:?}: {reason}")]
    BadVmName {
        /// The name as given.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },

    /// A commit names the same VM twice (among its images or its parts).
    #[error("VM {name} appears twice in the checkpoint")]
    DuplicateVm {
        /// The repeated VM name.
        name: String,
    },

    /// An image kept on another host cannot join the manifest: without its
    /// MAC under a keyed store, or an entry no commit could have written.
    #[error("a part of the checkpoint kept on another host cannot be committed: {reason}")]
    BadPart {
        /// What is wrong with the part's entry.
        reason: String,
    },

    /// An image given to a commit is not directly inside the generation
    /// directory being written.
    #[error("VM {name}: image {} is not in generation directory {}", path.display(), dir.display())]
    OutsideGeneration {
        /// The VM the image is of.
        name: String,
        /// The image as given.
        path: PathBuf,
        /// The generation directory it should be in.
        dir: PathBuf,
    },

    /// An image given to a commit does not open as a valid image (or, with
    /// a key, does not hold under it).
    #[error("VM {name}: {source}")]
    Image {
        /// The VM the image is of.
        name: String,
        /// Why the image was refused.
        #[source]
        source: ImageError,
    },

    /// The manifest names no VM of this name.
    #[error("checkpoint generation {generation} has no VM {name} (it has: {known})")]
    UnknownVm {
        /// The VM asked for.
        name: String,
        /// The manifest's generation.
        generation: u64,
        /// The VMs it names, comma-separated.
        known: String,
    },

    /// [`Store::begin`](super::Store::begin) on a directory that keeps
    /// this host's images of checkpoints committed elsewhere (it has a
    /// `PARTS.json`).
    #[error("checkpoint directory {} holds this host's images of cluster checkpoints committed on {committer}: \
             use another directory here", path.display())]
    HoldsParts {
        /// The checkpoint directory's path.
        path: PathBuf,
        /// The host its `PARTS.json` names as committer.
        committer: String,
    },

    /// The directory holds complete generations but no manifest (and, for
    /// a part, no `PARTS.json`): they may be the only copy of a cluster's
    /// state, so nothing is removed and nothing is started.
    #[error("checkpoint directory {} holds checkpoint generations ({generations}) but no {MANIFEST}: its manifest \
             is lost, or its first checkpoint died between renaming its generation and writing the manifest. \
             Nothing was deleted: check them (mekha image verify DIR/gen-N), then move them away, or use \
             another directory", path.display())]
    NoManifest {
        /// The checkpoint directory's path.
        path: PathBuf,
        /// The generation directories found, comma-separated.
        generations: String,
    },

    /// [`Store::begin_part`](super::Store::begin_part) for a cluster other
    /// than the one whose parts the directory keeps.
    #[error("checkpoint directory {} keeps this host's images of another cluster's checkpoints (committed on \
             {committer}, checkpoint directory id {cluster}): use another directory here", path.display())]
    OtherCluster {
        /// The checkpoint directory's path.
        path: PathBuf,
        /// The committer its `PARTS.json` names.
        committer: String,
        /// The committer's directory id it names (`unknown` in a marker
        /// from before ids).
        cluster: String,
    },

    /// [`Store::begin_part`](super::Store::begin_part) on a directory that
    /// has a manifest of its own.
    #[error("checkpoint directory {} holds committed checkpoints of its own (a MANIFEST.json): \
             it cannot also keep this host's part of a checkpoint committed on another host", path.display())]
    HoldsManifest {
        /// The checkpoint directory's path.
        path: PathBuf,
    },

    /// The image a manifest names is not the one it committed: outside
    /// the directory, not a valid image, or of another length, header CRC
    /// or MAC than recorded.
    #[error("VM {name}: image {} is not the one checkpoint generation {generation} committed: {reason}", path.display())]
    NotCommitted {
        /// The VM the image is of.
        name: String,
        /// The image file.
        path: PathBuf,
        /// The manifest's generation.
        generation: u64,
        /// What differs, `; `-separated.
        reason: String,
    },
}

impl StoreError {
    pub(super) fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_owned();
        move |source| StoreError::Io { action, path, source }
    }
}

/// The result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
