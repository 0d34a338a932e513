// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha image inspect|verify` on images written with ckpt-core, intact
//! and damaged in the ways a disk, a copy or a crash damages them.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mekha_ckpt_core::image::format::FORMAT_MINOR;
use mekha_ckpt_core::image::{Identity, Image, ImageBuilder, RamBlock};
use mekha_ckpt_core::store::Store;
use serde_json::{json, Value};

const DAMAGED: i32 = 5;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Both streams, for messages that may go to either.
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn mekha(args: &[&str]) -> Run {
    let Output { status, stdout, stderr } =
        Command::new(env!("CARGO_BIN_EXE_mekha")).args(args).output().expect("runs mekha");
    Run {
        code: status.code().expect("exits normally"),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn identity(name: &str) -> Identity {
    Identity {
        vm_name: name.into(),
        machine: "pc-i440fx-10.0".into(),
        qemu_version: "10.0.2".into(),
        ram_blocks: vec![
            RamBlock { name: "pc.ram".into(), length: 4 << 20, page_size: 4096 },
            RamBlock { name: "vga.vram".into(), length: 64 << 10, page_size: 4096 },
        ],
    }
}

/// Pages 0..10 and 1030 (vga.vram's 7th page) hold data; the rest are zeros.
fn write_image(path: &Path, name: &str) {
    let mut builder = ImageBuilder::create(path, &identity(name)).unwrap();
    for page in (0..10).chain([1030]) {
        builder.write_page(page, &[(page & 0xff) as u8 + 1; 4096]).unwrap();
    }
    builder.finish(b"device state", Some(&json!({ "passes": 2 }))).unwrap();
}

fn flip_bit(path: &Path, offset: u64) {
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x04;
    file.write_all_at(&byte, offset).unwrap();
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn inspect_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node1.mekha");
    write_image(&path, "node1");

    let run = mekha(&["image", "inspect", s(&path)]);
    assert_eq!(run.code, 0, "{}", run.all());
    for expected in [
        &format!("format 1.{FORMAT_MINOR}"),
        "VM node1: machine pc-i440fx-10.0, QEMU 10.0.2",
        "RAM 4.1 MiB in 2 blocks: 1040 pages, 1029 zero",
        "pc.ram",
        "vga.vram",
        "DEVICE_STATE",
        "PAGE_CRCS",
        "info: {\"passes\":2}",
    ] {
        assert!(run.stdout.contains(expected), "{:?} lacks {expected:?}", run.stdout);
    }

    let run = mekha(&["image", "inspect", "--json", s(&path)]);
    assert_eq!(run.code, 0, "{}", run.all());
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    let inspection = &doc["images"][0]["inspection"];
    assert_eq!(inspection["identity"]["vm_name"], "node1");
    assert_eq!(inspection["total_pages"], 1040);
    assert_eq!(inspection["zero_pages"], 1029);
    assert_eq!(inspection["header"]["major"], 1);
    assert_eq!(doc["checkpoint"], Value::Null);
}

#[test]
fn verify_an_intact_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node1.mekha");
    write_image(&path, "node1");

    let run = mekha(&["image", "verify", s(&path)]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains(": OK (1040 pages, 4 sections checked)"), "{}", run.stdout);

    let run = mekha(&["image", "verify", "--json", s(&path)]);
    assert_eq!(run.code, 0, "{}", run.all());
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["intact"], true);
    assert_eq!(doc["images"][0]["report"]["pages_checked"], 1040);
}

#[test]
fn verify_names_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.mekha");
    write_image(&pristine, "node1");
    let image = Image::open(&pristine).unwrap();
    let size = image.file_len();
    let page_1030 = image.page_data_offset(1030);
    drop(image);

    let damaged = dir.path().join("node1.mekha");
    type Damage<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Damage, String)> = vec![
        (
            "truncated",
            Box::new(|p| OpenOptions::new().write(true).open(p).unwrap().set_len(size - 100).unwrap()),
            format!("is truncated: section INFO ends at {size} but the file has {} bytes", size - 100),
        ),
        (
            "page bit",
            Box::new(|p| flip_bit(p, page_1030 + 77)),
            "page 1030 (vga.vram + 0x6000) checksum mismatch".into(),
        ),
        ("zero page gains data", Box::new(|p| flip_bit(p, 2 << 20 | 500 << 12)), "page 500 (pc.ram + 0x1f4000)".into()),
        ("header bit", Box::new(|p| flip_bit(p, 18)), "header checksum mismatch".into()),
        (
            "newer version",
            Box::new(|p| OpenOptions::new().write(true).open(p).unwrap().write_all_at(&[2, 0], 8).unwrap()),
            format!("uses format 2.{FORMAT_MINOR}, which is newer than this mekha (1.x)"),
        ),
        ("bad magic", Box::new(|p| flip_bit(p, 3)), "is not a mekha image (bad magic)".into()),
    ];
    for (what, damage, expected) in cases {
        fs::copy(&pristine, &damaged).unwrap();
        damage(&damaged);
        let run = mekha(&["image", "verify", s(&damaged)]);
        assert_eq!(run.code, DAMAGED, "{what}: {}", run.all());
        assert!(run.stdout.contains("DAMAGED"), "{what}: {}", run.stdout);
        assert!(run.all().contains(&expected), "{what}: {:?} lacks {expected:?}", run.all());
        assert!(run.stderr.contains("is not intact"), "{what}: {}", run.stderr);

        let run = mekha(&["image", "verify", "--json", s(&damaged)]);
        assert_eq!(run.code, DAMAGED, "{what}: {}", run.all());
        let doc: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(doc["intact"], false);
        let problems = doc["images"][0]["problems"].to_string();
        assert!(problems.contains(&expected), "{what}: {problems} lacks {expected:?}");
    }
}

#[test]
fn a_missing_file_is_a_failure_not_damage() {
    let run = mekha(&["image", "verify", "/nonexistent/node1.mekha"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("/nonexistent/node1.mekha"), "{}", run.stderr);
}

fn checkpoint(dir: &Path) -> Vec<PathBuf> {
    let store = Store::open(dir).unwrap();
    for _ in 0..2 {
        let generation = store.begin().unwrap();
        let vms: Vec<(String, PathBuf)> = ["node1", "node2"]
            .iter()
            .map(|name| {
                let path = generation.image_path(name).unwrap();
                write_image(&path, name);
                (name.to_string(), path)
            })
            .collect();
        generation.commit(&vms).unwrap();
    }
    let manifest = store.latest().unwrap().unwrap();
    manifest.vms.iter().map(|vm| store.resolve(&manifest, &vm.name).unwrap()).collect()
}

#[test]
fn a_checkpoint_directory_means_its_latest_generation() {
    let dir = tempfile::tempdir().unwrap();
    let images = checkpoint(dir.path());

    let run = mekha(&["image", "inspect", s(dir.path())]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("generation 2"), "{}", run.stdout);
    assert!(run.stdout.contains("VM node2 ("), "{}", run.stdout);
    assert!(run.stdout.contains("gen-000002/node1.mekha"), "{}", run.stdout);

    let run = mekha(&["image", "verify", s(dir.path())]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.stdout.matches(": OK (").count(), 2, "{}", run.stdout);

    let run = mekha(&["image", "verify", "--json", s(dir.path())]);
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["checkpoint"]["generation"], 2);
    assert_eq!(doc["images"][1]["vm"], "node2");

    flip_bit(&images[1], Image::open(&images[1]).unwrap().page_data_offset(3) + 1);
    let run = mekha(&["image", "verify", s(dir.path())]);
    assert_eq!(run.code, DAMAGED, "{}", run.all());
    assert!(run.stdout.contains("page 3 (pc.ram + 0x3000) checksum mismatch"), "{}", run.stdout);
    assert!(run.stderr.contains("generation 2 is not intact: 1 of 2 images failed verification"), "{}", run.stderr);

    fs::remove_file(&images[0]).unwrap();
    let run = mekha(&["image", "verify", s(dir.path())]);
    assert_eq!(run.code, DAMAGED, "{}", run.all());
    assert!(run.stderr.contains("2 of 2 images"), "{}", run.stderr);
    let run = mekha(&["image", "inspect", s(dir.path())]);
    assert_eq!(run.code, DAMAGED, "{}", run.all());
}

#[test]
fn a_replaced_image_does_not_match_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let images = checkpoint(dir.path());
    write_image(&images[0], "node1"); // valid, but not the committed one
    let run = mekha(&["image", "verify", s(dir.path())]);
    assert_eq!(run.code, DAMAGED, "{}", run.all());
    assert!(run.stdout.contains("differs from the manifest's"), "{}", run.stdout);
}

#[test]
fn an_empty_directory_holds_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = mekha(&["image", "verify", s(dir.path())]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("holds no committed checkpoint"), "{}", run.stderr);
}
