// SPDX-License-Identifier: GPL-2.0-or-later
//! A checkpoint directory: committed generations and the manifest naming
//! the latest one.
//!
//! ```text
//! DIR/MANIFEST.json          the commit point
//! DIR/gen-000007/node1.mekha a committed generation, one image per VM
//! DIR/gen-000006/...         the previous one, kept for safety
//! DIR/gen-000008.partial/    a generation being written
//! DIR/.lock                  held (flock) while a generation is written
//! DIR/STORE_ID               the directory's id, made by its first begin
//! ```
//!
//! A checkpoint exists if and only if `MANIFEST.json` names it. The
//! manifest is replaced atomically (written to `MANIFEST.json.tmp`, synced,
//! renamed, directory synced), and only after the generation it names is
//! complete and synced under its final name. So a crash at any point leaves
//! the previous manifest and its generation intact; whatever the crash left
//! behind (a `.partial` directory, a generation directory no manifest
//! names, a `MANIFEST.json.tmp`) is removed by the next [`Store::begin`].
//! Generation numbers never repeat, even after such a crash.
//!
//! Nothing is removed that the store cannot prove is garbage: generations
//! in a directory without a manifest (lost, or deleted by hand) may be
//! the only copy of a cluster's state, so `begin` refuses such a directory
//! and names them. (The one crash that leaves that state, between the
//! first generation's rename and the first manifest, then needs a hand.)
//!
//! A VM whose host does not share this directory keeps its image in the
//! same-named directory on its own host, driven from here (see [`part`]);
//! the manifest here names it with that host.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::image::{sync_dir, Image, ImageKey};
use crate::private;

mod chains;
mod error;
mod files;
mod generation;
mod lock;
mod manifest;
pub mod part;

pub use error::{Result, StoreError};
pub use generation::Generation;
pub use manifest::{Manifest, ManifestVm, MANIFEST, MANIFEST_FORMAT};
pub use part::{PartsMarker, PARTS_MARKER};

use files::{install_tmp, remove_if_present, replace_file, write_tmp};
use generation::{generation_name, GenEntry, Step};
use manifest::MANIFEST_TMP;

/// The directory's id ([`Store::id`]).
pub const STORE_ID: &str = "STORE_ID";
/// File name extension of images in a generation directory.
pub const IMAGE_EXTENSION: &str = "mekha";

/// A checkpoint directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// Commits seal manifests and check images under it; reads refuse
    /// what does not hold under it.
    key: Option<ImageKey>,
}

impl Store {
    /// Opens `dir` for writing checkpoints, creating it if missing.
    pub fn open(dir: &Path) -> Result<Store> {
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::NotADirectory { path: dir.to_owned() });
        }
        private::create_dir_all(dir).map_err(StoreError::io("creating checkpoint directory", dir))?;
        // Permission bits do not tell (root, read-only mounts): try.
        let probe = dir.join(format!(".probe-{}", std::process::id()));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|source| StoreError::NotWritable { path: dir.to_owned(), source })?;
        fs::remove_file(&probe).map_err(StoreError::io("removing", &probe))?;
        Ok(Store { dir: dir.to_owned(), key: None })
    }

    /// Opens an existing `dir` for reading (restore, inspect): creates
    /// nothing and does not need write access.
    pub fn open_existing(dir: &Path) -> Result<Store> {
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(Store { dir: dir.to_owned(), key: None }),
            Ok(_) => Err(StoreError::NotADirectory { path: dir.to_owned() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::Missing { path: dir.to_owned() }),
            Err(e) => Err(StoreError::io("opening checkpoint directory", dir)(e)),
        }
    }

    /// The checkpoint directory, as given to `open`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The latest committed checkpoint, if any.
    pub fn latest(&self) -> Result<Option<Manifest>> {
        let path = self.dir.join(MANIFEST);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("reading manifest", &path)(e)),
        };
        Manifest::parse(&path, &bytes, self.key.as_ref()).map(Some)
    }

    /// Seals what this store commits under `key`, and refuses to read what
    /// does not hold under it (manifests and images).
    pub fn with_key(self, key: Option<ImageKey>) -> Store {
        Store { key, ..self }
    }

    /// The image key set by [`with_key`](Self::with_key), if any.
    pub fn key(&self) -> Option<&ImageKey> {
        self.key.as_ref()
    }

    /// Where the image of `vm_name` in `manifest` is.
    pub fn resolve(&self, manifest: &Manifest, vm_name: &str) -> Result<PathBuf> {
        match manifest.vm(vm_name) {
            Some(vm) => Ok(self.dir.join(&vm.image)),
            None => Err(StoreError::UnknownVm {
                name: vm_name.to_owned(),
                generation: manifest.generation,
                known: manifest.vms.iter().map(|vm| vm.name.as_str()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// Checks that `vm`'s image in this directory is the one its manifest
    /// committed: there, a valid image, of the recorded length and header.
    pub fn check_image(&self, generation: u64, vm: &ManifestVm) -> Result<()> {
        let path = self.dir.join(&vm.image);
        let refuse =
            |reason: String| StoreError::NotCommitted { name: vm.name.clone(), path: path.clone(), generation, reason };
        if !vm.image_is_inside() {
            return Err(refuse("it is not inside the checkpoint directory".into()));
        }
        let image = Image::open_with(&path, self.key.as_ref()).map_err(|e| refuse(e.to_string()))?;
        match vm.mismatches(image.file_len(), image.header().header_crc32c, image.mac()) {
            problems if problems.is_empty() => Ok(()),
            problems => Err(refuse(problems.join("; "))),
        }
    }

    /// Starts the next generation: takes the directory's lock, removes what
    /// crashed runs left behind and creates `gen-<N>.partial/`.
    pub fn begin(&self) -> Result<Generation> {
        let lock = lock::exclusive(&self.dir)?;
        if let Some(marker) = PartsMarker::read(&self.dir)? {
            return Err(StoreError::HoldsParts { path: self.dir.clone(), committer: marker.committer });
        }
        let previous = self.latest()?.map(|m| m.generation);
        if previous.is_none() {
            self.refuse_unnamed_generations()?;
        }
        self.ensure_id()?;
        let committed = previous.unwrap_or(0);

        let tmp = self.dir.join(MANIFEST_TMP);
        remove_if_present(&tmp)?;
        let mut highest = committed;
        for (name, entry) in self.generation_entries()? {
            highest = highest.max(entry.number());
            // Partial, or complete but never named by a manifest: not a checkpoint.
            if matches!(entry, GenEntry::Partial(_)) || entry.number() > committed {
                let path = self.dir.join(name);
                fs::remove_dir_all(&path).map_err(StoreError::io("removing unfinished generation", &path))?;
            }
        }
        let number = highest + 1;
        let path = self.dir.join(format!("{}.partial", generation_name(number)));
        private::create_dir(&path).map_err(StoreError::io("creating generation directory", &path))?;
        sync_dir(&self.dir).map_err(StoreError::io("syncing", &self.dir))?;
        Ok(Generation::new(self.clone(), number, path, previous, lock))
    }

    /// Refuses a directory holding complete generations that no manifest
    /// names: they may be the only copy of a cluster's state (a lost or
    /// deleted manifest), and the store cannot prove they are garbage.
    fn refuse_unnamed_generations(&self) -> Result<()> {
        let mut names: Vec<String> = self
            .generation_entries()?
            .into_iter()
            .filter(|(_, entry)| matches!(entry, GenEntry::Committed(_)))
            .map(|(name, _)| name)
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        names.sort();
        Err(StoreError::NoManifest { path: self.dir.clone(), generations: names.join(", ") })
    }

    /// This directory's id, made by its first [`begin`](Self::begin): what
    /// a part host knows the cluster (the committer's directory) by.
    pub fn id(&self) -> Result<Option<String>> {
        let path = self.dir.join(STORE_ID);
        match fs::read_to_string(&path) {
            Ok(id) => Ok(Some(id.trim().to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("reading", &path)(e)),
        }
    }

    /// Makes the directory's id if it has none; the caller holds the lock.
    fn ensure_id(&self) -> Result<()> {
        if self.id()?.is_some() {
            return Ok(());
        }
        let mut bytes = [0u8; 16];
        // SAFETY: getrandom fills the buffer it is given.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n != bytes.len() as isize {
            return Err(StoreError::io("making an id for", &self.dir)(io::Error::last_os_error()));
        }
        replace_file(&self.dir, STORE_ID, format!("{}\n", crate::image::hex(&bytes)).as_bytes())
    }

    /// `gen-N` and `gen-N.partial` entries of the directory.
    fn generation_entries(&self) -> Result<Vec<(String, GenEntry)>> {
        let mut entries = Vec::new();
        let read = fs::read_dir(&self.dir).map_err(StoreError::io("listing", &self.dir))?;
        for entry in read {
            let entry = entry.map_err(StoreError::io("listing", &self.dir))?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if let Some(parsed) = GenEntry::parse(&name) {
                entries.push((name, parsed));
            }
        }
        Ok(entries)
    }

    fn write_manifest(&self, manifest: &Manifest, stop: Option<Step>) -> Result<bool> {
        let mut json = serde_json::to_vec_pretty(manifest).expect("a manifest encodes as JSON");
        json.push(b'\n');
        let tmp = write_tmp(&self.dir, MANIFEST, &json)?;
        if stop == Some(Step::RenameManifest) {
            return Ok(false);
        }
        install_tmp(&self.dir, &tmp, MANIFEST)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
