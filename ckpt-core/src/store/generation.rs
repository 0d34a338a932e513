// SPDX-License-Identifier: GPL-2.0-or-later
//! A generation being written (`gen-N.partial/`) and its commit: the
//! images sealed into manifest entries, the directory renamed, the
//! manifest replaced, older generations removed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};
use super::manifest::{check_vm_name, Manifest, ManifestVm, MANIFEST_FORMAT};
use super::{Store, IMAGE_EXTENSION};
use crate::image::{now_unix_ns, sync_dir, Image, ImageKey};

/// A generation being written: `DIR/gen-<N>.partial/`. Dropping it without
/// [`commit`](Self::commit) leaves the directory for the next
/// [`Store::begin`] to remove, exactly as a crash would.
#[derive(Debug)]
pub struct Generation {
    store: Store,
    number: u64,
    path: PathBuf,
    /// The committed generation when this one began: kept after the commit.
    previous: Option<u64>,
    /// The directory's lock, held until the commit or the drop.
    _lock: File,
}

/// Commit steps, for tests that simulate a crash before one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    RenameDir,
    WriteManifest,
    RenameManifest,
    RemoveOld,
}

impl Generation {
    /// `path` created, `lock` held ([`Store::begin`]).
    pub(super) fn new(store: Store, number: u64, path: PathBuf, previous: Option<u64>, lock: File) -> Generation {
        Generation { store, number, path, previous, _lock: lock }
    }

    /// This generation's number: above every generation the directory
    /// held, committed or not, so numbers never repeat.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The directory to write this generation's images into.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where VM `vm_name`'s image goes: `<path>/<vm_name>.mekha`.
    pub fn image_path(&self, vm_name: &str) -> Result<PathBuf> {
        check_vm_name(vm_name)?;
        Ok(self.path.join(format!("{vm_name}.{IMAGE_EXTENSION}")))
    }

    /// Makes this generation the latest checkpoint. Every image must be in
    /// this generation's directory and open as a valid image.
    pub fn commit<N: AsRef<str>, P: AsRef<Path>>(self, vms: &[(N, P)]) -> Result<Manifest> {
        self.commit_with_parts(vms, Vec::new())
    }

    /// [`commit`](Self::commit), the manifest also naming `parts`: images
    /// other hosts sealed under this generation's number (see [`super::part`]).
    pub fn commit_with_parts<N: AsRef<str>, P: AsRef<Path>>(
        self,
        vms: &[(N, P)],
        parts: Vec<ManifestVm>,
    ) -> Result<Manifest> {
        Ok(self.commit_until(vms, parts, None)?.expect("a commit without a stop runs to the end"))
    }

    /// Removes this generation's directory.
    pub fn abort(self) -> Result<()> {
        fs::remove_dir_all(&self.path).map_err(StoreError::io("removing", &self.path))?;
        sync_dir(&self.store.dir).map_err(StoreError::io("syncing", &self.store.dir))
    }

    /// [`commit_with_parts`](Self::commit_with_parts), stopping before
    /// `stop` as if the process died there (`Ok(None)`).
    pub(super) fn commit_until<N: AsRef<str>, P: AsRef<Path>>(
        self,
        vms: &[(N, P)],
        parts: Vec<ManifestVm>,
        stop: Option<Step>,
    ) -> Result<Option<Manifest>> {
        let final_name = generation_name(self.number);
        let key = self.store.key.as_ref();
        let mut entries = seal_images(&self.path, &final_name, vms, key)?;
        for part in parts {
            if entries.iter().any(|e| e.name == part.name) {
                return Err(StoreError::DuplicateVm { name: part.name });
            }
            if key.is_some() && part.mac.is_none() {
                return Err(StoreError::BadPart { reason: format!("VM {}'s image comes without its MAC", part.name) });
            }
            entries.push(part);
        }
        // Parts come from other hosts: what is committed here must read back.
        let mut manifest = Manifest {
            format: MANIFEST_FORMAT,
            generation: self.number,
            created_unix_ns: now_unix_ns(),
            vms: entries,
            mac: None,
        };
        if let Some(reason) = manifest.problem() {
            return Err(StoreError::BadPart { reason });
        }
        manifest.mac = key.map(|key| manifest.compute_mac(key).to_hex());
        let dir = &self.store.dir;
        if stop == Some(Step::RenameDir) {
            return Ok(None);
        }
        let final_path = dir.join(&final_name);
        fs::rename(&self.path, &final_path).map_err(StoreError::io("renaming generation to", &final_path))?;
        sync_dir(dir).map_err(StoreError::io("syncing", dir))?;
        if stop == Some(Step::WriteManifest) {
            return Ok(None);
        }

        if !self.store.write_manifest(&manifest, stop)? || stop == Some(Step::RemoveOld) {
            return Ok(None);
        }
        // The commit has happened; old generations are only space, so a
        // failure to remove one is left for the next commit.
        // What the kept generations' disk layers build on stays too; all
        // does when that cannot be read.
        let kept: Vec<u64> = [Some(self.number), self.previous].into_iter().flatten().collect();
        let reached = super::chains::reached(dir, &kept);
        if let (Ok(entries), Some(reached)) = (self.store.generation_entries(), reached) {
            for (name, entry) in entries {
                let n = entry.number();
                if matches!(entry, GenEntry::Committed(_)) && n < self.number && !reached.contains(&n) {
                    let _ = fs::remove_dir_all(dir.join(name));
                }
            }
            let _ = sync_dir(dir);
        }
        Ok(Some(manifest))
    }
}

/// Syncs the images of a generation written in `dir`, checks that each is
/// there and valid, and returns their manifest entries as they will be
/// named once `dir` is renamed to `final_name`.
/// With `key`, each image must hold under it, and its MAC is recorded.
pub(super) fn seal_images<N: AsRef<str>, P: AsRef<Path>>(
    dir: &Path,
    final_name: &str,
    vms: &[(N, P)],
    key: Option<&ImageKey>,
) -> Result<Vec<ManifestVm>> {
    let mut entries: Vec<ManifestVm> = Vec::with_capacity(vms.len());
    for (name, path) in vms {
        let (name, path) = (name.as_ref(), path.as_ref());
        check_vm_name(name)?;
        if entries.iter().any(|e| e.name == name) {
            return Err(StoreError::DuplicateVm { name: name.to_owned() });
        }
        let file_name = match path.file_name() {
            Some(f) if path.parent() == Some(dir) => f.to_string_lossy().into_owned(),
            _ => {
                return Err(StoreError::OutsideGeneration {
                    name: name.to_owned(),
                    path: path.to_owned(),
                    dir: dir.to_owned(),
                })
            }
        };
        let image =
            Image::open_with(path, key).map_err(|source| StoreError::Image { name: name.to_owned(), source })?;
        image.file().sync_all().map_err(StoreError::io("syncing", path))?;
        entries.push(ManifestVm {
            name: name.to_owned(),
            image: format!("{final_name}/{file_name}"),
            size: image.file_len(),
            header_crc32c: image.header().header_crc32c,
            host: None,
            mac: image.mac().map(|m| m.to_hex()),
        });
    }
    sync_dir(dir).map_err(StoreError::io("syncing", dir))?;
    Ok(entries)
}

/// `gen-000007`: six digits keep a listing in order for the first million.
pub(super) fn generation_name(number: u64) -> String {
    format!("gen-{number:06}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GenEntry {
    Committed(u64),
    Partial(u64),
}

impl GenEntry {
    pub(super) fn parse(name: &str) -> Option<GenEntry> {
        let rest = name.strip_prefix("gen-")?;
        let (digits, partial) = match rest.strip_suffix(".partial") {
            Some(digits) => (digits, true),
            None => (rest, false),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = digits.parse().ok()?;
        Some(if partial { GenEntry::Partial(n) } else { GenEntry::Committed(n) })
    }

    pub(super) fn number(self) -> u64 {
        match self {
            GenEntry::Committed(n) | GenEntry::Partial(n) => n,
        }
    }
}
