// SPDX-License-Identifier: GPL-2.0-or-later
//! The checkpoint directory: commits, crashes, refusals.

use super::lock::LOCK;
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
fn write_sealed_images_in(dir: &Path, number: u64, names: &[&str], key: Option<&ImageKey>) -> Vec<(String, PathBuf)> {
    names
        .iter()
        .map(|&name| {
            let path = dir.join(format!("{name}.{IMAGE_EXTENSION}"));
            let mut builder = ImageBuilder::create(&path, &identity(name)).unwrap();
            if let Some(key) = key {
                builder.set_key(key);
            }
            builder.write_page(3, &[(number & 0xff) as u8; 4096]).unwrap();
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
    assert!(matches!(e, StoreError::NotAuthentic { .. }) && e.to_string().contains("does not match its MAC"), "{e}");
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
