// SPDX-License-Identifier: GPL-2.0-or-later
//! Throughput of `verify`: reading RAM in large chunks and checking every
//! page's CRC32C, and, for an image sealed under a key, every page's tag
//! too (what a restore with `--key-file` adds). The image sits in the
//! page cache after the first pass, so this measures mekha's side
//! (syscalls, CRC, BLAKE3), not the disk.
//!
//! Needs `[[bench]] name = "image"` with `harness = false` in Cargo.toml.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mekha_ckpt_core::image::{verify, verify_image, Identity, Image, ImageBuilder, ImageKey, RamBlock};
use mekha_ckpt_core::PAGE_SIZE;

const RAM: u64 = 128 << 20;

fn identity() -> Identity {
    Identity {
        vm_name: "bench".into(),
        machine: "pc-i440fx-10.0".into(),
        qemu_version: "10.0.2".into(),
        ram_blocks: vec![RamBlock { name: "pc.ram".into(), length: RAM, page_size: 4096 }],
    }
}

/// An image with every page written (`dense`) or none (all holes),
/// sealed under `key` if given.
fn image(dir: &std::path::Path, dense: bool, key: Option<&ImageKey>) -> std::path::PathBuf {
    let name =
        format!("{}{}.mekha", if dense { "dense" } else { "sparse" }, if key.is_some() { "-sealed" } else { "" });
    let path = dir.join(name);
    let mut builder = ImageBuilder::create(&path, &identity()).unwrap();
    if let Some(key) = key {
        builder.set_key(key);
    }
    if dense {
        let mut page = vec![0u8; PAGE_SIZE];
        for p in 0..RAM / PAGE_SIZE as u64 {
            page.fill((p & 0xff) as u8 | 1);
            page[..8].copy_from_slice(&p.to_le_bytes());
            builder.write_page(p, &page).unwrap();
        }
    }
    builder.finish(b"device state", None).unwrap().path
}

fn verify_throughput(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Bytes(RAM));
    group.sample_size(10);
    for (name, dense) in [("128 MiB, every page written", true), ("128 MiB, never written", false)] {
        let path = image(dir.path(), dense, None);
        group.bench_function(name, |b| b.iter(|| assert!(verify(&path).unwrap().is_intact())));
    }
    let key = ImageKey::from_bytes(&[7; 32]);
    let path = image(dir.path(), true, Some(&key));
    group.bench_function("128 MiB, every page written, sealed", |b| {
        b.iter(|| assert!(verify_image(&Image::open_sealed(&path, &key).unwrap()).unwrap().is_intact()))
    });
    group.finish();
}

criterion_group!(benches, verify_throughput);
criterion_main!(benches);
