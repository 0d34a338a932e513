// SPDX-License-Identifier: GPL-2.0-or-later
//! Throughput of disk layers: packing a captured disk into a layer (CRC32C
//! per cluster, and BLAKE3 tags when sealed), and what a restore, `mekha
//! image verify` and retention's merge do with a chain of a full layer and
//! a delta. The files sit in the page cache after the first pass, so
//! this measures mekha's side (syscalls, CRC, BLAKE3, fsync of the page
//! cache's dirty data when writing), not the disk.
//!
//! Needs `[[bench]] name = "disk"` with `harness = false` in Cargo.toml.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mekha_ckpt_core::disk::{
    merge, verify, Chain, DiskIdentity, LayerKind, LayerSummary, LayerWriter, Piece, DEFAULT_CLUSTER_SIZE,
};
use mekha_ckpt_core::image::ImageKey;

const DISK: u64 = 128 << 20;
/// What a capture hands over at a time.
const PIECE: usize = 1 << 20;

fn identity() -> DiskIdentity {
    DiskIdentity { node_name: "drive-virtio0".into(), device: "vda".into(), format: "qcow2".into(), virtual_size: DISK }
}

/// A layer with every `stride`-th MiB of the disk written.
fn layer(path: &Path, kind: LayerKind, stride: u64, key: Option<&ImageKey>) -> LayerSummary {
    let mut writer = LayerWriter::create(path, &identity(), DEFAULT_CLUSTER_SIZE, kind, key).unwrap();
    let mut piece = vec![0u8; PIECE];
    for (i, offset) in (0..DISK).step_by(PIECE).enumerate().filter(|(i, _)| (*i as u64).is_multiple_of(stride)) {
        piece.fill(i.to_le_bytes()[0] | 1);
        piece[..8].copy_from_slice(&offset.to_le_bytes());
        writer.add_data(offset, &piece).unwrap();
    }
    writer.finish().unwrap()
}

fn write_throughput(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("disk layer write");
    group.throughput(Throughput::Bytes(DISK));
    group.sample_size(10);
    let path = dir.path().join("full.mdisk");
    group.bench_function("128 MiB full, 64 KiB clusters", |b| b.iter(|| layer(&path, LayerKind::Full, 1, None)));
    let key = ImageKey::from_bytes(&[7; 32]);
    group.bench_function("128 MiB full, sealed", |b| b.iter(|| layer(&path, LayerKind::Full, 1, Some(&key))));
    group.finish();
}

fn chain_throughput(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let full = layer(&dir.path().join("full.mdisk"), LayerKind::Full, 1, None);
    let over = LayerKind::Delta { parent: "full.mdisk".into(), parent_header_crc32c: full.header_crc32c };
    layer(&dir.path().join("delta.mdisk"), over, 8, None);
    let chain = Chain::open(dir.path(), "delta.mdisk", None).unwrap();

    let mut group = c.benchmark_group("disk chain");
    group.throughput(Throughput::Bytes(DISK));
    group.sample_size(10);
    group.bench_function("restore read: 128 MiB, full + 1/8 delta, 8 MiB pieces", |b| {
        b.iter(|| {
            let mut bytes = 0u64;
            chain
                .for_each_piece(8 << 20, |_, piece| {
                    bytes += match piece {
                        Piece::Data(data) => data.len() as u64,
                        Piece::Zero(len) => len,
                    };
                    Ok::<(), mekha_ckpt_core::disk::DiskError>(())
                })
                .unwrap();
            assert_eq!(bytes, DISK);
        })
    });
    group.bench_function("verify: full + 1/8 delta", |b| b.iter(|| assert!(verify(&chain).unwrap().is_intact())));
    let out = dir.path().join("merged.mdisk");
    group.bench_function("merge: full + 1/8 delta", |b| b.iter(|| merge(&chain, &out, None).unwrap()));
    group.finish();
}

criterion_group!(benches, write_throughput, chain_throughput);
criterion_main!(benches);
