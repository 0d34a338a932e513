// SPDX-License-Identifier: GPL-2.0-or-later
//! `MANIFEST.json`, a checkpoint directory's commit point: which
//! generation is the latest checkpoint and where each VM's image is; with
//! an image key, sealed by a MAC.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::generation::generation_name;
use crate::image::{ImageKey, Mac};

/// File name of the manifest in a checkpoint directory.
pub const MANIFEST: &str = "MANIFEST.json";
pub(super) const MANIFEST_TMP: &str = "MANIFEST.json.tmp";
/// Manifest format this mekha writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// Longest VM name: the image's file name (plus `.mekha.partial`) must fit NAME_MAX.
const MAX_VM_NAME: usize = 200;

/// `DIR/MANIFEST.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`]; a reader refuses any other.
    pub format: u32,
    /// The committed generation, from 1: its images are in `gen-<N>/`
    /// (six digits at least).
    pub generation: u64,
    /// When the commit made the manifest, ns since the Unix epoch.
    pub created_unix_ns: u64,
    /// Every VM of the checkpoint, each named once.
    pub vms: Vec<ManifestVm>,
    /// With an image key: the MAC of this manifest (all its other fields),
    /// hex. A store opened with the key refuses a manifest without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// One VM of a committed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestVm {
    /// The VM's name, once per manifest; a plain file name, after which
    /// [`Generation::image_path`](super::Generation::image_path) names its image.
    pub name: String,
    /// Relative to the checkpoint directory, e.g. `gen-000007/node1.mekha`.
    pub image: String,
    /// Image file length when committed.
    pub size: u64,
    /// The image's header checksum when committed (identifies the exact image).
    pub header_crc32c: u32,
    /// The host keeping the image in its own copy of the directory, when
    /// that host does not share the directory (see [`super::part`]); none: here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// With an image key: the image's MAC, hex (a restore refuses any other
    /// image, even one sealed under the same key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Manifest {
    /// The manifest `path` holds (`bytes`), refused unless a commit can
    /// have written it (and, with `key`, unless it holds under it).
    pub(super) fn parse(path: &Path, bytes: &[u8], key: Option<&ImageKey>) -> Result<Manifest> {
        let bad = |reason: String| StoreError::BadManifest { path: path.to_owned(), reason };
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if manifest.format > MANIFEST_FORMAT {
            return Err(StoreError::NewerManifest { path: path.to_owned(), format: manifest.format });
        }
        if manifest.format != MANIFEST_FORMAT {
            return Err(bad(format!("unknown format {}", manifest.format)));
        }
        if let Some(problem) = manifest.problem() {
            return Err(bad(problem));
        }
        if let Some(reason) = key.and_then(|key| manifest.seal_problem(key)) {
            return Err(StoreError::NotAuthentic { path: path.to_owned(), reason });
        }
        Ok(manifest)
    }

    /// The MAC of everything but the `mac` field, under `key`.
    pub(super) fn compute_mac(&self, key: &ImageKey) -> Mac {
        let unsealed = Manifest { mac: None, ..self.clone() };
        key.manifest_mac(&serde_json::to_vec(&unsealed).expect("a manifest encodes as JSON"))
    }

    /// Why this manifest does not hold under `key`, if it does not.
    fn seal_problem(&self, key: &ImageKey) -> Option<String> {
        let Some(stored) = &self.mac else {
            return Some("it carries no MAC (it was committed without an image key) and a key was given".into());
        };
        match Mac::parse(stored) {
            Ok(stored) if stored == self.compute_mac(key) => None,
            Ok(_) => Some(format!(
                "it does not match its MAC under image key {}: changed after it was committed, or sealed under \
                 another key",
                key.id_hex()
            )),
            Err(e) => Some(format!("its MAC is not valid: {e}")),
        }
    }

    /// The entry of the VM named `name`, if the checkpoint has it.
    pub fn vm(&self, name: &str) -> Option<&ManifestVm> {
        self.vms.iter().find(|vm| vm.name == name)
    }

    /// Why no commit can have written this manifest, if so. `begin` keeps
    /// only the generation a manifest names (and older ones): an image
    /// anywhere but in that generation's directory would be deleted.
    pub(super) fn problem(&self) -> Option<String> {
        if self.generation == 0 {
            return Some("it names generation 0 (generations start at 1)".into());
        }
        let dir = generation_name(self.generation);
        for (i, vm) in self.vms.iter().enumerate() {
            if let Err(e) = check_vm_name(&vm.name) {
                return Some(e.to_string());
            }
            if !vm.image_is_inside() {
                return Some(format!("VM {}'s image {:?} is not inside the checkpoint directory", vm.name, vm.image));
            }
            if Path::new(&vm.image).parent() != Some(Path::new(&dir)) {
                return Some(format!(
                    "VM {}'s image {:?} is not in the generation's directory {dir}",
                    vm.name, vm.image
                ));
            }
            if self.vms[..i].iter().any(|v| v.name == vm.name) {
                return Some(format!("VM {} appears twice", vm.name));
            }
        }
        None
    }
}

impl ManifestVm {
    /// Whether `image` names a file inside the checkpoint directory.
    pub(super) fn image_is_inside(&self) -> bool {
        !self.image.is_empty() && Path::new(&self.image).components().all(|c| matches!(c, Component::Normal(_)))
    }

    /// Where an image (its file's length, its header checksum) differs
    /// from what this entry recorded at commit.
    /// `mac`: the image's MAC, checked under the store's key (none without).
    pub fn mismatches(&self, file_size: u64, header_crc32c: u32, mac: Option<Mac>) -> Vec<String> {
        let mut problems = Vec::new();
        if self.size != file_size {
            problems.push(format!("the file has {file_size} bytes but the manifest recorded {}", self.size));
        }
        if self.header_crc32c != header_crc32c {
            problems.push(format!(
                "header checksum {header_crc32c:#010x} differs from the manifest's {:#010x} (not the image that was committed)",
                self.header_crc32c
            ));
        }
        if let Some(mac) = mac.map(|m| m.to_hex()) {
            if self.mac.as_deref() != Some(mac.as_str()) {
                problems.push(format!(
                    "its MAC {mac} is not the one the manifest recorded (another image sealed under the same key)"
                ));
            }
        }
        problems
    }
}

/// A VM name must make one plain file name.
pub(super) fn check_vm_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.contains('/') {
        "it contains '/'"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else if name.starts_with('.') {
        "it starts with '.'"
    } else if name.len() > MAX_VM_NAME {
        "it is longer than 200 bytes"
    } else {
        return Ok(());
    };
    Err(StoreError::BadVmName { name: name.to_owned(), reason })
}
