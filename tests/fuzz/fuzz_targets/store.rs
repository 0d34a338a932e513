// SPDX-License-Identifier: GPL-2.0-or-later
//! A checkpoint directory's markers, as found on disk: the first byte
//! picks `MANIFEST.json`, `PARTS.json` or `STORE_ID`, the rest is the
//! file. The directory also holds committed, unnamed and partial
//! generations, and the store's decisions on them must keep what a marker
//! it accepts names: nothing a committed checkpoint needs is deleted, and
//! nothing at all when a marker is refused. A fourth choice: the entries
//! of another host's part (an agent's answer to a seal), which a commit
//! puts in the manifest: what it commits must read back.

#![no_main]

use std::fs;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use mekha_ckpt_core::store::{Manifest, ManifestVm, PartsMarker, Store, MANIFEST, PARTS_MARKER, STORE_ID};
use mekha_fuzz::scratch;

fuzz_target!(|data: &[u8]| {
    let Some((&which, file)) = data.split_first() else { return };
    let dir = scratch::temp_dir();
    lay_out(dir.path());
    match which % 4 {
        0 => manifest(dir.path(), file),
        1 => parts_marker(dir.path(), file),
        2 => store_id(dir.path(), file),
        _ => sealed_parts(dir.path(), file),
    }
});

/// Two committed generations, one a crash left unnamed, one partial; the
/// VMs of the seeds (`a`, `b`) in each.
fn lay_out(dir: &Path) {
    for generation in ["gen-000001", "gen-000002", "gen-000003"] {
        fs::create_dir(dir.join(generation)).unwrap();
        for vm in ["a", "b"] {
            fs::write(dir.join(generation).join(format!("{vm}.mekha")), vm).unwrap();
        }
    }
    fs::create_dir(dir.join("gen-000004.partial")).unwrap();
}

/// Every file and directory under `dir`, markers and lock aside.
fn listing(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if entry.file_type().unwrap().is_dir() {
            for inner in fs::read_dir(entry.path()).unwrap() {
                names.push(format!("{name}/{}", inner.unwrap().file_name().into_string().unwrap()));
            }
        }
        names.push(name);
    }
    names.retain(|n| ![".lock", STORE_ID, "STORE_ID.tmp", "PARTS.json.tmp"].contains(&n.as_str()));
    names.sort();
    names
}

fn manifest(dir: &Path, file: &[u8]) {
    fs::write(dir.join(MANIFEST), file).unwrap();
    let store = Store::open_existing(dir).unwrap();
    let before = listing(dir);
    let Ok(Some(manifest)) = store.latest() else {
        assert!(store.begin().is_err(), "a checkpoint began over a refused manifest");
        assert_eq!(listing(dir), before, "a refused manifest let data be deleted");
        return;
    };
    // As the store writes it, it reads back.
    let json = serde_json::to_vec_pretty(&manifest).unwrap();
    assert_eq!(serde_json::from_slice::<Manifest>(&json).unwrap(), manifest);
    for vm in &manifest.vms {
        let image = store.resolve(&manifest, &vm.name).unwrap();
        assert!(image.starts_with(dir) && image != dir, "{} escapes the directory", vm.image);
        let _ = store.check_image(manifest.generation, vm);
    }
    if let Ok(next) = store.begin() {
        assert!(next.number() > manifest.generation);
        for vm in &manifest.vms {
            let named = dir.join(&vm.image);
            let existed = before.iter().any(|n| dir.join(n) == named);
            assert!(!existed || named.exists(), "begin deleted {}, which the manifest names", vm.image);
        }
        next.abort().unwrap();
    }
}

fn parts_marker(dir: &Path, file: &[u8]) {
    fs::write(dir.join(PARTS_MARKER), file).unwrap();
    let store = Store::open_existing(dir).unwrap();
    let before = listing(dir);
    let read = PartsMarker::read(dir);
    assert!(store.begin().is_err(), "a checkpoint began in a directory of parts");
    assert_eq!(listing(dir), before);
    if let Ok(Some(marker)) = &read {
        let json = serde_json::to_vec(marker).unwrap();
        assert_eq!(&serde_json::from_slice::<PartsMarker>(&json).unwrap(), marker);
    }
    let ours = |m: &PartsMarker| match &m.cluster {
        Some(cluster) => cluster == "c1",
        None => m.committer == "login1",
    };
    match store.begin_part(5, &[2], "login1", "c1") {
        Ok(_) => assert!(matches!(&read, Ok(Some(m)) if ours(m)), "another cluster's part directory was taken"),
        Err(_) => assert_eq!(listing(dir), before, "a refused part directory lost data"),
    }
}

/// A manifest naming generation 2.
const COMMITTED: &[u8] = br#"{"format":1,"generation":2,"created_unix_ns":0,"vms":[]}"#;

fn store_id(dir: &Path, file: &[u8]) {
    fs::write(dir.join(STORE_ID), file).unwrap();
    let store = Store::open_existing(dir).unwrap();
    let id = store.id();
    fs::write(dir.join(MANIFEST), COMMITTED).unwrap();
    if let Ok(next) = store.begin() {
        assert_eq!(store.id().ok(), id.ok(), "begin changed the directory's id");
        next.abort().unwrap();
    }
}

/// The next generation is 5 (4 is the partial one).
fn sealed_parts(dir: &Path, file: &[u8]) {
    let Ok(parts) = serde_json::from_slice::<Vec<ManifestVm>>(file) else { return };
    fs::write(dir.join(MANIFEST), COMMITTED).unwrap();
    let store = Store::open_existing(dir).unwrap();
    let next = store.begin().unwrap();
    if let Ok(committed) = next.commit_with_parts(&[] as &[(&str, PathBuf)], parts) {
        assert_eq!(store.latest().ok(), Some(Some(committed)), "a commit wrote a manifest that does not read back");
    }
}
