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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::{now_unix_ns, sync_dir, Image, ImageError, ImageKey, Mac};
use crate::private;

pub mod part;

pub use part::{PartsMarker, PARTS_MARKER};

pub const MANIFEST: &str = "MANIFEST.json";
/// The directory's id ([`Store::id`]).
pub const STORE_ID: &str = "STORE_ID";
const MANIFEST_TMP: &str = "MANIFEST.json.tmp";
const LOCK: &str = ".lock";
/// Manifest format this mekha writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// File name extension of images in a generation directory.
pub const IMAGE_EXTENSION: &str = "mekha";
/// Longest VM name: the image's file name (plus `.mekha.partial`) must fit NAME_MAX.
const MAX_VM_NAME: usize = 200;

/// `DIR/MANIFEST.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub generation: u64,
    pub created_unix_ns: u64,
    pub vms: Vec<ManifestVm>,
    /// With an image key: the MAC of this manifest (all its other fields),
    /// hex. A store opened with the key refuses a manifest without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// One VM of a committed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestVm {
    pub name: String,
    /// Relative to the checkpoint directory, e.g. `gen-000007/node1.mekha`.
    pub image: String,
    /// Image file length when committed.
    pub size: u64,
    /// The image's header checksum when committed (identifies the exact image).
    pub header_crc32c: u32,
    /// The host keeping the image in its own copy of the directory, when
    /// that host does not share the directory (see [`part`]); none: here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// With an image key: the image's MAC, hex (a restore refuses any other
    /// image, even one sealed under the same key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Manifest {
    /// The MAC of everything but the `mac` field, under `key`.
    fn compute_mac(&self, key: &ImageKey) -> Mac {
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

    pub fn vm(&self, name: &str) -> Option<&ManifestVm> {
        self.vms.iter().find(|vm| vm.name == name)
    }

    /// Why no commit can have written this manifest, if so. `begin` keeps
    /// only the generation a manifest names (and older ones): an image
    /// anywhere but in that generation's directory would be deleted.
    fn problem(&self) -> Option<String> {
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
    fn image_is_inside(&self) -> bool {
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
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_owned();
        move |source| StoreError::Io { action, path, source }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

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
        let bad = |reason: String| StoreError::BadManifest { path: path.clone(), reason };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if manifest.format > MANIFEST_FORMAT {
            return Err(StoreError::NewerManifest { path, format: manifest.format });
        }
        if manifest.format != MANIFEST_FORMAT {
            return Err(bad(format!("unknown format {}", manifest.format)));
        }
        if let Some(problem) = manifest.problem() {
            return Err(bad(problem));
        }
        if let Some(problem) = self.key.as_ref().and_then(|key| manifest.seal_problem(key)) {
            return Err(StoreError::NotAuthentic { path, reason: problem });
        }
        Ok(Some(manifest))
    }

    /// Seals what this store commits under `key`, and refuses to read what
    /// does not hold under it (manifests and images).
    pub fn with_key(self, key: Option<ImageKey>) -> Store {
        Store { key, ..self }
    }

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
        let lock = self.lock()?;
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
        Ok(Generation { store: self.clone(), number, path, previous, _lock: lock })
    }

    /// Exclusive `flock` on `DIR/.lock`, released when the file closes
    /// (also when the process dies, so it never goes stale). Tried for a
    /// short while: a child forked while an earlier holder had the file
    /// open keeps the lock until it execs, microseconds later.
    fn lock(&self) -> Result<File> {
        let path = self.dir.join(LOCK);
        let file = private::file_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StoreError::NotWritable { path: self.dir.clone(), source })?;
        for attempt in 0.. {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(StoreError::io("locking", &path)(e));
            }
            if attempt == 20 {
                return Err(StoreError::Busy { path: self.dir.clone() });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(file)
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
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        replace_file(&self.dir, STORE_ID, format!("{id}\n").as_bytes())
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

/// Replaces `dir/name` with `bytes` atomically and durably: written to
/// `name.tmp` (owner-only) and synced, renamed, the directory synced. A
/// crash leaves the old file or the new one, and perhaps the `.tmp`.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = write_tmp(dir, name, bytes)?;
    install_tmp(dir, &tmp, name)
}

/// [`replace_file`]'s first half: `dir/name.tmp`, written and synced.
fn write_tmp(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = private::create_file(&tmp).map_err(StoreError::io("writing", &tmp))?;
    file.write_all(bytes).map_err(StoreError::io("writing", &tmp))?;
    file.sync_all().map_err(StoreError::io("syncing", &tmp))?;
    Ok(tmp)
}

/// [`replace_file`]'s second half: `tmp` renamed to `dir/name`, durably.
fn install_tmp(dir: &Path, tmp: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    fs::rename(tmp, &path).map_err(StoreError::io("replacing", &path))?;
    sync_dir(dir).map_err(StoreError::io("syncing", dir))
}

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
    _lock: File,
}

/// Commit steps, for tests that simulate a crash before one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    RenameDir,
    WriteManifest,
    RenameManifest,
    RemoveOld,
}

impl Generation {
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
    /// other hosts sealed under this generation's number (see [`part`]).
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
    fn commit_until<N: AsRef<str>, P: AsRef<Path>>(
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
        if let Ok(entries) = self.store.generation_entries() {
            for (name, entry) in entries {
                let n = entry.number();
                if matches!(entry, GenEntry::Committed(_)) && n < self.number && Some(n) != self.previous {
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
fn seal_images<N: AsRef<str>, P: AsRef<Path>>(
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
fn generation_name(number: u64) -> String {
    format!("gen-{number:06}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GenEntry {
    Committed(u64),
    Partial(u64),
}

impl GenEntry {
    fn parse(name: &str) -> Option<GenEntry> {
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

    fn number(self) -> u64 {
        match self {
            GenEntry::Committed(n) | GenEntry::Partial(n) => n,
        }
    }
}

/// A VM name must make one plain file name.
fn check_vm_name(name: &str) -> Result<()> {
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

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("removing", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Identity, ImageBuilder, RamBlock};

    fn identity(name: &str) -> Identity {
        Identity {
            vm_name: name.into(),
            machine: "pc-i440fx-10.0".into(),
            qemu_version: "10.0.2".into(),
            ram_blocks: vec![RamBlock { name: "pc.ram".into(), length: 1 << 20, page_size: 4096 }],
        }
    }

    /// Writes one image per VM into `generation`; returns the commit list.
    pub(super) fn write_images(generation: &Generation, names: &[&str]) -> Vec<(String, PathBuf)> {
        write_images_in(generation.path(), generation.number(), names)
    }

    /// Writes one image per VM into directory `dir` of generation `number`.
    pub(super) fn write_images_in(dir: &Path, number: u64, names: &[&str]) -> Vec<(String, PathBuf)> {
        write_sealed_images_in(dir, number, names, None)
    }

    /// [`write_images_in`], sealed under `key` if given.
    fn write_sealed_images_in(
        dir: &Path,
        number: u64,
        names: &[&str],
        key: Option<&ImageKey>,
    ) -> Vec<(String, PathBuf)> {
        names
            .iter()
            .map(|&name| {
                let path = dir.join(format!("{name}.{IMAGE_EXTENSION}"));
                let mut builder = ImageBuilder::create(&path, &identity(name)).unwrap();
                if let Some(key) = key {
                    builder.set_key(key);
                }
                builder.write_page(3, &[number as u8; 4096]).unwrap();
                builder.finish(b"device state", None).unwrap();
                (name.to_owned(), path)
            })
            .collect()
    }

    pub(super) fn checkpoint(store: &Store, names: &[&str]) -> Manifest {
        let generation = store.begin().unwrap();
        let vms = write_images(&generation, names);
        generation.commit(&vms).unwrap()
    }

    pub(super) fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.retain(|n| n != LOCK && n != STORE_ID);
        names.sort();
        names
    }

    /// The manifest's generation is there and every image in it opens.
    fn assert_restorable(store: &Store, generation: u64) {
        let manifest = store.latest().unwrap().expect("a committed checkpoint");
        assert_eq!(manifest.generation, generation);
        for vm in &manifest.vms {
            let image = Image::open(&store.resolve(&manifest, &vm.name).unwrap()).unwrap();
            assert_eq!(image.header().header_crc32c, vm.header_crc32c);
            assert_eq!(image.file_len(), vm.size);
            assert_eq!(image.identity().vm_name, vm.name);
        }
    }

    #[test]
    fn open_creates_the_directory_and_refuses_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let store = Store::open(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(store.latest().unwrap(), None);
        assert!(listing(&dir).is_empty(), "the write probe is removed");

        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = Store::open(&file).unwrap_err();
        assert_eq!(err.to_string(), format!("checkpoint directory {} is not a directory", file.display()));
        assert!(matches!(Store::open_existing(&file), Err(StoreError::NotADirectory { .. })));
        assert!(matches!(Store::open_existing(&tmp.path().join("nope")), Err(StoreError::Missing { .. })));
        assert!(matches!(Store::open(&file.join("sub")), Err(StoreError::Io { .. })));
    }

    #[test]
    fn commit_names_every_image() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let generation = store.begin().unwrap();
        assert_eq!(generation.number(), 1);
        assert_eq!(generation.path(), tmp.path().join("gen-000001.partial"));
        assert_eq!(generation.image_path("node1").unwrap(), tmp.path().join("gen-000001.partial/node1.mekha"));
        let vms = write_images(&generation, &["node1", "node2"]);
        let manifest = generation.commit(&vms).unwrap();

        assert_eq!(manifest.generation, 1);
        assert_eq!(manifest.vms[1].name, "node2");
        assert_eq!(manifest.vms[1].image, "gen-000001/node2.mekha");
        assert_eq!(store.latest().unwrap(), Some(manifest.clone()));
        assert_eq!(listing(tmp.path()), ["MANIFEST.json", "gen-000001"]);
        assert_restorable(&store, 1);
        let err = store.resolve(&manifest, "node3").unwrap_err();
        assert_eq!(err.to_string(), "checkpoint generation 1 has no VM node3 (it has: node1, node2)");

        let on_disk: serde_json::Value = serde_json::from_slice(&fs::read(tmp.path().join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(on_disk["format"], 1);
        assert_eq!(on_disk["vms"][0]["image"], "gen-000001/node1.mekha");
    }

    #[test]
    fn generations_without_a_manifest_are_refused_not_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        checkpoint(&store, &["a"]);
        checkpoint(&store, &["a"]);
        // The manifest is lost (deleted by hand, a bad copy, a full disk
        // during someone's edit): the generations may be all that is left.
        fs::remove_file(tmp.path().join(MANIFEST)).unwrap();
        let e = store.begin().unwrap_err();
        assert!(matches!(e, StoreError::NoManifest { .. }), "{e}");
        assert!(e.to_string().contains("gen-000001, gen-000002"), "{e}");
        assert_eq!(listing(tmp.path()), ["gen-000001", "gen-000002"]);
        // A partial generation alone is no checkpoint: it goes.
        fs::remove_dir_all(tmp.path().join("gen-000001")).unwrap();
        fs::rename(tmp.path().join("gen-000002"), tmp.path().join("gen-000002.partial")).unwrap();
        store.begin().unwrap().abort().unwrap();
        assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
    }

    #[test]
    fn a_checkpoint_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ckpt");
        let store = Store::open(&dir).unwrap();
        let manifest = checkpoint(&store, &["a"]);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), private::DIR_MODE);
        assert_eq!(mode(&dir.join("gen-000001")), private::DIR_MODE);
        for file in [MANIFEST, STORE_ID, LOCK, &manifest.vms[0].image] {
            assert_eq!(mode(&dir.join(file)), private::FILE_MODE, "{file}");
        }
    }

    #[test]
    fn the_first_begin_gives_the_directory_a_lasting_id() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.id().unwrap(), None);
        checkpoint(&store, &["a"]);
        let id = store.id().unwrap().unwrap();
        assert_eq!(id.len(), 32, "{id}");
        checkpoint(&store, &["a"]);
        assert_eq!(store.id().unwrap().unwrap(), id);
        let other = Store::open(&tmp.path().join("other")).unwrap();
        checkpoint(&other, &["a"]);
        assert_ne!(other.id().unwrap().unwrap(), id);
    }

    #[test]
    fn one_older_generation_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        for expected in 1..=4 {
            assert_eq!(checkpoint(&store, &["node1"]).generation, expected);
        }
        assert_eq!(listing(tmp.path()), ["MANIFEST.json", "gen-000003", "gen-000004"]);
        assert_restorable(&store, 4);
    }

    #[test]
    fn vm_names_must_be_plain_file_names() {
        let tmp = tempfile::tempdir().unwrap();
        let generation = Store::open(tmp.path()).unwrap().begin().unwrap();
        for bad in ["", "a/b", "..", ".", ".hidden", "a\0b", &"x".repeat(201)] {
            assert!(matches!(generation.image_path(bad), Err(StoreError::BadVmName { .. })), "{bad:?}");
        }
        let err = generation.image_path("../etc").unwrap_err();
        assert_eq!(err.to_string(), "invalid VM name \"../etc\": it contains '/'");
        assert!(generation.image_path("web-1.example_vm").is_ok());
    }

    #[test]
    fn commit_refuses_what_is_not_a_valid_image() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        checkpoint(&store, &["node1"]);

        let generation = store.begin().unwrap();
        let missing = generation.image_path("node1").unwrap();
        let err = generation.commit(&[("node1", &missing)]).unwrap_err();
        assert!(err.to_string().starts_with("VM node1: opening image"), "{err}");

        let generation = store.begin().unwrap();
        let vms = write_images(&generation, &["node1"]);
        let len = fs::metadata(&vms[0].1).unwrap().len();
        OpenOptions::new().write(true).open(&vms[0].1).unwrap().set_len(len - 1).unwrap();
        let err = generation.commit(&vms).unwrap_err();
        assert!(err.to_string().starts_with("VM node1: image"), "{err}");
        assert!(err.to_string().contains("is truncated"), "{err}");

        let generation = store.begin().unwrap();
        let vms = write_images(&generation, &["node1"]);
        let twice = [vms[0].clone(), vms[0].clone()];
        let err = generation.commit(&twice).unwrap_err();
        assert_eq!(err.to_string(), "VM node1 appears twice in the checkpoint");

        let generation = store.begin().unwrap();
        let outside = tmp.path().join("elsewhere.mekha");
        let err = generation.commit(&[("node1", &outside)]).unwrap_err();
        assert!(matches!(err, StoreError::OutsideGeneration { .. }), "{err}");

        assert_restorable(&store, 1);
        assert_eq!(store.begin().unwrap().number(), 6, "numbers never repeat");
    }

    #[test]
    fn one_writer_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let first = store.begin().unwrap();
        let err = store.begin().unwrap_err();
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
        first.abort().unwrap();
        assert!(listing(tmp.path()).is_empty());
        // An aborted generation leaves no trace, so its number is free again.
        assert_eq!(store.begin().unwrap().number(), 1);
    }

    /// A crash before each commit step leaves the previous checkpoint
    /// restorable, and the next begin cleans up and moves on.
    #[test]
    fn crashes_leave_the_previous_checkpoint() {
        for (stop, survivor, left_behind) in [
            (Step::RenameDir, 1, vec!["MANIFEST.json", "gen-000001", "gen-000002.partial"]),
            (Step::WriteManifest, 1, vec!["MANIFEST.json", "gen-000001", "gen-000002"]),
            (Step::RenameManifest, 1, vec!["MANIFEST.json", "MANIFEST.json.tmp", "gen-000001", "gen-000002"]),
            (Step::RemoveOld, 2, vec!["MANIFEST.json", "gen-000001", "gen-000002"]),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let store = Store::open(tmp.path()).unwrap();
            checkpoint(&store, &["node1", "node2"]);

            let generation = store.begin().unwrap();
            let vms = write_images(&generation, &["node1", "node2"]);
            assert_eq!(generation.commit_until(&vms, Vec::new(), Some(stop)).unwrap(), None);
            assert_eq!(listing(tmp.path()), left_behind, "crash before {stop:?}");
            assert_restorable(&store, survivor);

            let next = store.begin().unwrap();
            assert_eq!(next.number(), 3, "crash before {stop:?}");
            let mut expected = vec!["MANIFEST.json".to_owned(), "gen-000001".into()];
            if survivor == 2 {
                expected.push("gen-000002".into());
            }
            expected.push("gen-000003.partial".into());
            assert_eq!(listing(tmp.path()), expected, "cleanup after a crash before {stop:?}");
            assert_restorable(&store, survivor);

            let vms = write_images(&next, &["node1", "node2"]);
            next.commit(&vms).unwrap();
            assert_restorable(&store, 3);
            let kept = format!("gen-00000{survivor}");
            assert_eq!(listing(tmp.path()), ["MANIFEST.json", kept.as_str(), "gen-000003"]);
        }
    }

    #[test]
    fn a_dropped_generation_is_cleaned_up_by_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        checkpoint(&store, &["node1"]);
        let generation = store.begin().unwrap();
        write_images(&generation, &["node1"]);
        let partial_image = generation.path().join("node2.mekha.partial");
        let half_written = ImageBuilder::create(&generation.path().join("node2.mekha"), &identity("node2")).unwrap();
        assert!(partial_image.exists());
        std::mem::forget(half_written); // a crash runs no destructor
        drop(generation);
        assert_restorable(&store, 1);
        assert_eq!(store.begin().unwrap().number(), 3);
        assert_eq!(listing(tmp.path()), ["MANIFEST.json", "gen-000001", "gen-000003.partial"]);
    }

    #[test]
    fn damaged_manifests_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let manifest = checkpoint(&store, &["node1"]);
        let path = tmp.path().join(MANIFEST);
        let write = |m: &Manifest| fs::write(&path, serde_json::to_vec(m).unwrap()).unwrap();

        fs::write(&path, b"{\"format\": 1, \"gener").unwrap();
        assert!(matches!(store.latest(), Err(StoreError::BadManifest { .. })));
        assert!(matches!(store.begin(), Err(StoreError::BadManifest { .. })), "never clean up against a bad manifest");

        write(&Manifest { format: 2, ..manifest.clone() });
        let err = store.latest().unwrap_err();
        assert!(err.to_string().contains("has format 2, which is newer than this mekha (1)"), "{err}");

        let mut escaping = manifest.clone();
        escaping.vms[0].image = "../elsewhere/node1.mekha".into();
        write(&escaping);
        let err = store.latest().unwrap_err();
        assert!(err.to_string().contains("is not inside the checkpoint directory"), "{err}");

        write(&manifest);
        assert_restorable(&store, 1);
    }

    /// Found by the store fuzz target: `begin` removes generations newer
    /// than the manifest's, so a manifest naming an image in one of them
    /// had that image deleted.
    #[test]
    fn a_manifest_naming_images_of_another_generation_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        checkpoint(&store, &["a"]);
        let manifest = checkpoint(&store, &["a"]);
        // A generation a crash left unnamed, and a manifest pointing into it.
        let generation = store.begin().unwrap();
        let vms = write_images(&generation, &["a"]);
        assert_eq!(generation.commit_until(&vms, Vec::new(), Some(Step::WriteManifest)).unwrap(), None);
        let path = tmp.path().join(MANIFEST);
        let write = |m: &Manifest| fs::write(&path, serde_json::to_vec(m).unwrap()).unwrap();
        let mut elsewhere = manifest.clone();
        elsewhere.vms[0].image = "gen-000003/a.mekha".into();
        write(&elsewhere);
        let e = store.begin().unwrap_err();
        assert!(e.to_string().contains("not in the generation's directory gen-000002"), "{e}");
        assert_eq!(listing(tmp.path()), ["MANIFEST.json", "gen-000001", "gen-000002", "gen-000003"]);
        // Generation 0 is none: every generation would be unnamed.
        write(&Manifest { generation: 0, vms: Vec::new(), ..manifest.clone() });
        let e = store.begin().unwrap_err();
        assert!(e.to_string().contains("generation 0"), "{e}");
        assert_eq!(listing(tmp.path()), ["MANIFEST.json", "gen-000001", "gen-000002", "gen-000003"]);
        // A VM twice: a restore could not tell which image is its own.
        let mut twice = manifest.clone();
        twice.vms.push(twice.vms[0].clone());
        write(&twice);
        assert!(store.latest().unwrap_err().to_string().contains("VM a appears twice"));
        write(&manifest);
        assert_restorable(&store, 2);
    }

    #[test]
    fn generation_names_parse() {
        assert_eq!(GenEntry::parse("gen-000007"), Some(GenEntry::Committed(7)));
        assert_eq!(GenEntry::parse("gen-1234567.partial"), Some(GenEntry::Partial(1234567)));
        for other in ["gen-", "gen-.partial", "gen-12x", "MANIFEST.json", "gen-+1", "xgen-1"] {
            assert_eq!(GenEntry::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_keyed_store_seals_its_manifests_and_refuses_what_does_not_hold() {
        let tmp = tempfile::tempdir().unwrap();
        let key = ImageKey::from_bytes(&[7; 32]);
        let store = Store::open(tmp.path()).unwrap().with_key(Some(key.clone()));
        let commit = |names: &[&str]| {
            let generation = store.begin().unwrap();
            let vms = write_sealed_images_in(generation.path(), generation.number(), names, Some(&key));
            generation.commit(&vms).unwrap()
        };
        commit(&["a", "b"]);
        let second = commit(&["a", "b"]);
        assert!(second.mac.is_some() && second.vms.iter().all(|vm| vm.mac.is_some()), "{second:?}");
        assert_eq!(store.latest().unwrap(), Some(second.clone()));
        for vm in &second.vms {
            store.check_image(second.generation, vm).unwrap();
        }
        // Without the key, the same directory reads as always.
        assert_eq!(Store::open_existing(tmp.path()).unwrap().latest().unwrap(), Some(second.clone()));

        // Generation 1's image of a, put in generation 2's place: authentic,
        // and refused, since it is not the one the manifest sealed.
        fs::copy(tmp.path().join("gen-000001/a.mekha"), tmp.path().join("gen-000002/a.mekha")).unwrap();
        let e = store.check_image(2, &second.vms[0]).unwrap_err();
        assert!(e.to_string().contains("is not the one the manifest recorded"), "{e}");

        // A manifest edited to match (what anyone who can write it can do).
        let path = tmp.path().join(MANIFEST);
        let mut edited = second.clone();
        edited.vms[0].header_crc32c ^= 1;
        fs::write(&path, serde_json::to_vec(&edited).unwrap()).unwrap();
        let e = store.latest().unwrap_err();
        assert!(
            matches!(e, StoreError::NotAuthentic { .. }) && e.to_string().contains("does not match its MAC"),
            "{e}"
        );
        edited.mac = None;
        fs::write(&path, serde_json::to_vec(&edited).unwrap()).unwrap();
        assert!(store.latest().unwrap_err().to_string().contains("carries no MAC"));
        let other = Store::open_existing(tmp.path()).unwrap().with_key(Some(ImageKey::from_bytes(&[8; 32])));
        fs::write(&path, serde_json::to_vec(&second).unwrap()).unwrap();
        assert!(other.latest().is_err());

        // Unsealed images are not committed under a key.
        let generation = store.begin().unwrap();
        let vms = write_images(&generation, &["a"]);
        let e = generation.commit(&vms).unwrap_err();
        assert!(e.to_string().contains("carries no MAC"), "{e}");
    }
}
