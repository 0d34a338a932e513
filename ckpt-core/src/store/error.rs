// SPDX-License-Identifier: GPL-2.0-or-later
//! What can go wrong with a checkpoint directory, worded for the person
//! who has to act.

use std::io;
use std::path::{Path, PathBuf};

use super::manifest::{MANIFEST, MANIFEST_FORMAT};
use crate::image::ImageError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("checkpoint directory {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },

    #[error("checkpoint directory {} does not exist", path.display())]
    Missing { path: PathBuf },

    #[error("checkpoint directory {} is not writable: {source}", path.display())]
    NotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("checkpoint directory {} is in use: another mekha is writing a checkpoint into it", path.display())]
    Busy { path: PathBuf },

    #[error("manifest {} is damaged: {reason}", path.display())]
    BadManifest { path: PathBuf, reason: String },

    #[error("manifest {} is refused: {reason}", path.display())]
    NotAuthentic { path: PathBuf, reason: String },

    #[error("manifest {} has format {format}, which is newer than this mekha ({MANIFEST_FORMAT}): use a newer mekha", path.display())]
    NewerManifest { path: PathBuf, format: u32 },

    #[error("invalid VM name {name:?}: {reason}")]
    BadVmName { name: String, reason: &'static str },

    #[error("VM {name} appears twice in the checkpoint")]
    DuplicateVm { name: String },

    #[error("a part of the checkpoint kept on another host cannot be committed: {reason}")]
    BadPart { reason: String },

    #[error("VM {name}: image {} is not in generation directory {}", path.display(), dir.display())]
    OutsideGeneration { name: String, path: PathBuf, dir: PathBuf },

    #[error("VM {name}: {source}")]
    Image {
        name: String,
        #[source]
        source: ImageError,
    },

    #[error("checkpoint generation {generation} has no VM {name} (it has: {known})")]
    UnknownVm { name: String, generation: u64, known: String },

    #[error("checkpoint directory {} holds this host's images of cluster checkpoints committed on {committer}: \
             use another directory here", path.display())]
    HoldsParts { path: PathBuf, committer: String },

    #[error("checkpoint directory {} holds checkpoint generations ({generations}) but no {MANIFEST}: its manifest \
             is lost, or its first checkpoint died between renaming its generation and writing the manifest. \
             Nothing was deleted: check them (mekha image verify DIR/gen-N), then move them away, or use \
             another directory", path.display())]
    NoManifest { path: PathBuf, generations: String },

    #[error("checkpoint directory {} keeps this host's images of another cluster's checkpoints (committed on \
             {committer}, checkpoint directory id {cluster}): use another directory here", path.display())]
    OtherCluster { path: PathBuf, committer: String, cluster: String },

    #[error("checkpoint directory {} holds committed checkpoints of its own (a MANIFEST.json): \
             it cannot also keep this host's part of a checkpoint committed on another host", path.display())]
    HoldsManifest { path: PathBuf },

    #[error("VM {name}: image {} is not the one checkpoint generation {generation} committed: {reason}", path.display())]
    NotCommitted { name: String, path: PathBuf, generation: u64, reason: String },
}

impl StoreError {
    pub(super) fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_owned();
        move |source| StoreError::Io { action, path, source }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
