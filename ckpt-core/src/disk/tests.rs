// SPDX-License-Identifier: GPL-2.0-or-later
//! Disk layers on real files: round trips, every corruption refused,
//! chains resolved against an in-memory model of the disk.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use zerocopy::{FromBytes, IntoBytes};

use super::format::{header_crc, ExtentEntry, HeaderFields, HEADER_CRC_AT};
use super::*;
use crate::image::ImageKey;
use crate::test_rng::Rng;
use crate::width::to_usize;

/// A small cluster keeps the files small; the format is the same.
const CS: u32 = 4096;
const C: u64 = CS as u64;

fn identity(virtual_size: u64) -> DiskIdentity {
    DiskIdentity { node_name: "drive-virtio0".into(), device: "vda".into(), format: "qcow2".into(), virtual_size }
}

fn key() -> ImageKey {
    ImageKey::from_bytes(&[7; 32])
}

/// Deterministic bytes that differ per seed and position.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..len).map(|_| rng.next().to_le_bytes()[0]).collect()
}

/// What a layer gets: data or zeros at an offset.
#[derive(Debug, Clone)]
enum Op {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

/// Writes a layer from `ops` (in their order) and applies them to `model`.
fn write_layer(
    path: &Path,
    size: u64,
    kind: LayerKind,
    key: Option<&ImageKey>,
    ops: &[Op],
    model: &mut Vec<u8>,
) -> LayerSummary {
    let mut writer = LayerWriter::create(path, &identity(size), CS, kind.clone(), key).unwrap();
    if kind == LayerKind::Full {
        model.clear();
        model.resize(to_usize(size), 0);
    }
    for op in ops {
        match op {
            Op::Data(offset, bytes) => {
                writer.add_data(*offset, bytes).unwrap();
                model[to_usize(*offset)..to_usize(*offset) + bytes.len()].copy_from_slice(bytes);
            }
            Op::Zero(offset, len) => {
                writer.add_zero(*offset, *len).unwrap();
                model[to_usize(*offset)..to_usize(offset + len)].fill(0);
            }
        }
    }
    writer.finish().unwrap()
}

fn delta_over(parent: &str, summary: &LayerSummary) -> LayerKind {
    LayerKind::Delta { parent: parent.into(), parent_header_crc32c: summary.header_crc32c }
}

/// The disk a chain resolves to, read run by run; checks the runs'
/// invariants on the way.
fn resolve(chain: &Chain) -> Vec<u8> {
    let runs = chain.runs();
    let mut disk = vec![0xeeu8; to_usize(chain.virtual_size())];
    let mut at = 0;
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run.offset, at, "runs are in order and leave no gap: {runs:?}");
        assert!(run.len > 0);
        if i > 0 {
            let last = runs[i - 1];
            let mergeable = match (last.source, run.source) {
                (RunSource::Zero, RunSource::Zero) => true,
                (RunSource::Data { layer: a, file_offset: fa }, RunSource::Data { layer: b, file_offset: fb }) => {
                    a == b && fa + last.len == fb
                }
                _ => false,
            };
            assert!(!mergeable, "adjacent runs {last:?} and {run:?} were not merged");
        }
        let out = &mut disk[to_usize(run.offset)..to_usize(run.offset + run.len)];
        match run.source {
            RunSource::Zero => out.fill(0),
            RunSource::Data { layer, file_offset } => chain.read(layer, file_offset, out).unwrap(),
        }
        at += run.len;
    }
    assert_eq!(at, chain.virtual_size(), "runs cover the disk");
    disk
}

/// The disk a chain resolves to, as [`Chain::for_each_piece`] hands it
/// on in pieces of at most `max` bytes; checks the pieces on the way.
fn by_pieces(chain: &Chain, max: usize) -> Vec<u8> {
    let mut disk = Vec::new();
    chain
        .for_each_piece(max, |offset, piece| {
            assert_eq!(offset, disk.len() as u64, "pieces in order, without gaps");
            match piece {
                Piece::Data(bytes) => {
                    assert!(!bytes.is_empty() && bytes.len() <= max.max(to_usize(C)));
                    let end = offset + bytes.len() as u64;
                    assert!(bytes.len() % to_usize(C) == 0 || end == chain.virtual_size(), "whole clusters");
                    disk.extend_from_slice(bytes);
                }
                Piece::Zero(len) => disk.resize(disk.len() + to_usize(len), 0),
            }
            Ok::<(), DiskError>(())
        })
        .unwrap();
    assert_eq!(disk.len() as u64, chain.virtual_size());
    disk
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

fn flip(path: &Path, at: u64) {
    let file = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
}

/// A layer of 10 clusters and 1000 bytes: data at clusters 3-4, zeros at
/// 7, the partial last cluster, added out of order.
fn sample(dir: &Path, key: Option<&ImageKey>) -> (PathBuf, LayerSummary, Vec<u8>) {
    let path = dir.join("full.mdisk");
    let size = 10 * C + 1000;
    let ops = [Op::Data(10 * C, pattern(1, 1000)), Op::Zero(7 * C, C), Op::Data(3 * C, pattern(2, 2 * CS as usize))];
    let mut model = Vec::new();
    let summary = write_layer(&path, size, LayerKind::Full, key, &ops, &mut model);
    (path, summary, model)
}

#[test]
fn a_full_layer_reads_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let (path, summary, model) = sample(dir.path(), None);
    assert!(!dir.path().join("full.mdisk.partial").exists());
    assert_eq!(summary.stored_bytes, file_len(&path));
    assert_eq!((summary.data_bytes, summary.zero_bytes, summary.extents), (2 * C + 1000, C, 3));
    assert!(summary.mac.is_none());

    let layer = LayerReader::open(&path, None).unwrap();
    assert_eq!(layer.identity(), &identity(10 * C + 1000));
    assert_eq!(layer.kind(), &LayerKind::Full);
    assert_eq!(layer.header().header_crc32c, summary.header_crc32c);
    assert_eq!((layer.header().major, layer.header().minor), (FORMAT_MAJOR, FORMAT_MINOR));
    let offsets: Vec<(u64, u64)> = layer.extents().iter().map(|e| (e.offset, e.len)).collect();
    assert_eq!(offsets, [(3 * C, 2 * C), (7 * C, C), (10 * C, 1000)]);
    let mut buf = vec![0; 1000];
    layer.read_extent(2, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 1000));
    assert!(matches!(layer.read_extent(1, &mut buf), Err(DiskError::BadRead { .. })));

    let chain = Chain::open(dir.path(), "full.mdisk", None).unwrap();
    assert_eq!(resolve(&chain), model);
    assert_eq!(by_pieces(&chain, 1), model);
    // The consumer's error stops the walk and comes back.
    let mut calls = 0;
    let stopped = chain.for_each_piece(usize::MAX, |_, _| {
        calls += 1;
        Err(DiskError::malformed(Path::new("consumer"), "stop"))
    });
    assert!(matches!(stopped, Err(DiskError::Malformed { .. })) && calls == 1);
    let runs = chain.runs();
    assert_eq!(runs.len(), 4, "zeros, data, zeros, data: {runs:?}");
    let inspection = inspect(&chain);
    assert_eq!((inspection.data_bytes, inspection.zero_bytes), (2 * C + 1000, 8 * C));
    assert_eq!(inspection.layers[0].extents, 3);
    serde_json::to_string(&inspection).unwrap();
    assert!(verify(&chain).unwrap().is_intact());
}

#[test]
fn deltas_resolve_newest_first_and_zeros_hide_older_data() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("gen-000001")).unwrap();
    fs::create_dir_all(dir.path().join("gen-000002")).unwrap();
    fs::create_dir_all(dir.path().join("gen-000003")).unwrap();
    let size = 16 * C + 123;
    let mut model = Vec::new();
    let full = write_layer(
        &dir.path().join("gen-000001/d.mdisk"),
        size,
        LayerKind::Full,
        None,
        &[Op::Data(0, pattern(1, 8 * CS as usize)), Op::Data(16 * C, pattern(2, 123))],
        &mut model,
    );
    let gen1 = model.clone();
    let delta1 = write_layer(
        &dir.path().join("gen-000002/d.mdisk"),
        size,
        delta_over("gen-000001/d.mdisk", &full),
        None,
        &[Op::Data(2 * C, pattern(3, CS as usize)), Op::Zero(4 * C, 2 * C), Op::Data(12 * C, pattern(4, CS as usize))],
        &mut model,
    );
    let gen2 = model.clone();
    write_layer(
        &dir.path().join("gen-000003/d.mdisk"),
        size,
        delta_over("gen-000002/d.mdisk", &delta1),
        None,
        &[
            Op::Zero(0, C),
            Op::Data(12 * C, pattern(5, 4 * CS as usize)[..to_usize(3 * C)].to_vec()),
            Op::Data(16 * C, pattern(6, 123)),
        ],
        &mut model,
    );
    let chain = Chain::open(dir.path(), "gen-000003/d.mdisk", None).unwrap();
    assert_eq!(chain.layers().len(), 3);
    assert_eq!(chain.layers()[2].name, "gen-000001/d.mdisk");
    assert_eq!(resolve(&chain), model);
    assert!(verify(&chain).unwrap().is_intact());
    // An older kept generation resolves the same way.
    assert_eq!(resolve(&Chain::open(dir.path(), "gen-000002/d.mdisk", None).unwrap()), gen2);
    assert_eq!(resolve(&Chain::open(dir.path(), "gen-000001/d.mdisk", None).unwrap()), gen1);
    // The delta's zeros win over the full layer's data.
    assert_eq!(chain.runs()[0], Run { offset: 0, len: C, source: RunSource::Zero });
}

#[test]
fn merge_writes_the_resolved_disk_as_one_full_layer() {
    let dir = tempfile::tempdir().unwrap();
    let size = 12 * C + 7;
    let mut model = Vec::new();
    let full = write_layer(
        &dir.path().join("a.mdisk"),
        size,
        LayerKind::Full,
        None,
        &[Op::Data(0, pattern(1, 12 * CS as usize + 7))],
        &mut model,
    );
    write_layer(
        &dir.path().join("b.mdisk"),
        size,
        delta_over("a.mdisk", &full),
        None,
        &[Op::Zero(C, 3 * C), Op::Data(6 * C, pattern(2, CS as usize))],
        &mut model,
    );
    let chain = Chain::open(dir.path(), "b.mdisk", None).unwrap();
    for key in [None, Some(&key())] {
        let out = dir.path().join("merged.mdisk");
        let summary = merge(&chain, &out, key).unwrap();
        assert_eq!(summary.data_bytes, size - 3 * C);
        let merged = Chain::open(dir.path(), "merged.mdisk", key).unwrap();
        assert_eq!(merged.layers().len(), 1);
        assert_eq!(merged.newest().kind(), &LayerKind::Full);
        assert_eq!(resolve(&merged), model);
        assert!(verify(&merged).unwrap().is_intact());
        // Merged data extents are as big as the runs: one before the zeros, one after.
        assert_eq!(merged.newest().extents().len(), 2);
    }
}

#[test]
fn big_extents_cross_read_chunks_in_default_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = u64::from(DEFAULT_CLUSTER_SIZE);
    let size = 160 * cluster + 512;
    let path = dir.path().join("big.mdisk");
    let mut writer = LayerWriter::create(&path, &identity(size), DEFAULT_CLUSTER_SIZE, LayerKind::Full, None).unwrap();
    let data = pattern(9, to_usize(size - cluster));
    // In pieces, as a capture hands them over: they merge into one extent.
    for (i, piece) in data.chunks(to_usize(16 * cluster)).enumerate() {
        writer.add_data(cluster + i as u64 * 16 * cluster, piece).unwrap();
    }
    let summary = writer.finish().unwrap();
    assert_eq!(summary.extents, 1);
    let chain = Chain::open(dir.path(), "big.mdisk", None).unwrap();
    let disk = resolve(&chain);
    assert!(disk[..to_usize(cluster)].iter().all(|&b| b == 0));
    assert_eq!(&disk[to_usize(cluster)..], &data[..]);
    assert_eq!(verify(&chain).unwrap().layers[0].clusters_checked, 160);
    let merged = merge(&chain, &dir.path().join("m.mdisk"), None).unwrap();
    assert_eq!(merged.data_bytes, size - cluster);
}

#[test]
fn the_writer_refuses_bad_extents_and_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.mdisk");
    let size = 8 * C + 100;
    let mut w = LayerWriter::create(&path, &identity(size), CS, LayerKind::Full, None).unwrap();
    w.add_data(2 * C, &pattern(1, 2 * CS as usize)).unwrap();
    w.add_zero(6 * C, C).unwrap();
    let refused = |r: Result<()>, what: &str| match r {
        Err(DiskError::BadExtent { why, .. }) => assert!(why.contains(what), "{why}"),
        other => panic!("expected BadExtent ({what}), got {other:?}"),
    };
    refused(w.add_data(C, &pattern(2, 2 * CS as usize)), "overlaps");
    refused(w.add_data(3 * C, &pattern(2, CS as usize)), "overlaps");
    refused(w.add_zero(2 * C, C), "overlaps");
    refused(w.add_zero(5 * C, 2 * C), "overlaps");
    refused(w.add_data(8 * C, &pattern(3, 200)), "beyond");
    refused(w.add_zero(9 * C, C), "beyond");
    refused(w.add_zero(u64::MAX - C + 1, C), "beyond");
    refused(w.add_data(100, &pattern(3, CS as usize)), "whole clusters");
    refused(w.add_data(0, &pattern(3, 100)), "whole clusters");
    refused(w.add_zero(0, 0), "empty");
    // Refusals leave the writer as it was.
    w.add_data(0, &pattern(4, 2 * CS as usize)).unwrap();
    w.add_data(8 * C, &pattern(5, 100)).unwrap();
    let summary = w.finish().unwrap();
    // 0-2 and 2-4 are adjacent on disk but not in the file: two extents.
    assert_eq!(summary.extents, 4);

    let bad = |identity: DiskIdentity, cluster: u32, kind: LayerKind| {
        let r = LayerWriter::create(&dir.path().join("x.mdisk"), &identity, cluster, kind, None);
        assert!(matches!(r, Err(DiskError::BadLayout { .. })), "{:?}", r.map(|_| ()));
    };
    for cluster in [0, 2048, 4097, 3 << 12, 4 << 20] {
        bad(identity(C), cluster, LayerKind::Full);
    }
    bad(DiskIdentity { node_name: String::new(), ..identity(C) }, CS, LayerKind::Full);
    bad(DiskIdentity { format: "QCOW2".into(), ..identity(C) }, CS, LayerKind::Full);
    bad(DiskIdentity { device: "d".repeat(256), ..identity(C) }, CS, LayerKind::Full);
    bad(identity(MAX_VIRTUAL_SIZE + 1), CS, LayerKind::Full);
    for parent in ["", "/gen-1/a.mdisk", "../a.mdisk", "gen-1/../a.mdisk", "./a", "a//b", "a/", "a/./b"] {
        bad(identity(C), CS, LayerKind::Delta { parent: parent.into(), parent_header_crc32c: 1 });
    }
}

#[test]
fn abort_and_drop_remove_the_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.mdisk");
    let partial = dir.path().join("a.mdisk.partial");
    let mut w = LayerWriter::create(&path, &identity(4 * C), CS, LayerKind::Full, None).unwrap();
    w.add_data(0, &pattern(1, CS as usize)).unwrap();
    assert!(partial.exists());
    w.abort().unwrap();
    assert!(!partial.exists() && !path.exists());
    drop(LayerWriter::create(&path, &identity(4 * C), CS, LayerKind::Full, None).unwrap());
    assert!(!partial.exists() && !path.exists());
    // A stale partial from a crash is replaced.
    fs::write(&partial, b"stale").unwrap();
    LayerWriter::create(&path, &identity(4 * C), CS, LayerKind::Full, None).unwrap().finish().unwrap();
    assert!(!partial.exists());
    let chain = Chain::open(dir.path(), "a.mdisk", None).unwrap();
    assert_eq!(chain.runs(), [Run { offset: 0, len: 4 * C, source: RunSource::Zero }]);
}

/// The offsets where each part of a layer starts and ends.
struct Parts {
    data_end: u64,
    table_end: u64,
    file_end: u64,
}

fn parts(path: &Path) -> Parts {
    let layer = LayerReader::open(path, None).unwrap();
    let h = layer.header();
    Parts { data_end: h.data_end, table_end: h.data_end + h.table_len, file_end: layer.file_len() }
}

#[test]
fn a_flipped_byte_anywhere_is_refused() {
    for sealed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let k = key();
        let key = sealed.then_some(&k);
        let (path, _, _) = sample(dir.path(), key);
        let pristine = fs::read(&path).unwrap();
        let p = parts(&path);
        let reset = || fs::write(&path, &pristine).unwrap();
        let open = || LayerReader::open(&path, key);

        let cases: &[(u64, &str)] = &[
            (0, "BadMagic"),
            (8, "OtherFormat"),
            (10, "HeaderChecksum"),
            (40, "HeaderChecksum"),
            (130, "HeaderChecksum"),
            (4000, "HeaderChecksum"),
            (p.data_end, "TableChecksum"),
            (p.table_end - 1, "TableChecksum"),
        ];
        for &(at, expected) in cases {
            flip(&path, at);
            let err = open().unwrap_err();
            assert!(format!("{err:?}").starts_with(expected), "flip at {at}: {err:?}");
            assert!(err.is_damage());
            reset();
        }
        // Data: the layer opens, reads and verify find the cluster.
        let layer = open().unwrap();
        let (file_offset, disk_offset) = match layer.extents()[0].data {
            ExtentData::Data { file_offset, .. } => (file_offset, layer.extents()[0].offset),
            ExtentData::Zero => unreachable!(),
        };
        flip(&path, file_offset + C + 5);
        let mut buf = vec![0; to_usize(2 * C)];
        match layer.read_data(file_offset, &mut buf) {
            Err(DiskError::DataChecksum { disk_offset: at, .. }) => assert_eq!(at, disk_offset + C),
            other => panic!("{other:?}"),
        }
        let chain = Chain::open(dir.path(), "full.mdisk", key).unwrap();
        let report = verify(&chain).unwrap();
        assert!(!report.is_intact());
        assert_eq!(report.layers[0].bad_clusters, 1);
        assert_eq!(report.layers[0].first_bad_clusters[0].disk_offset, disk_offset + C);
        assert_eq!(report.problems().len(), 1);
        reset();
        if sealed {
            for at in p.table_end..p.table_end + 4 {
                flip(&path, at);
                assert!(matches!(open(), Err(DiskError::Malformed { .. })), "AUTH version at {at}");
                reset();
            }
            flip(&path, p.table_end + 4);
            assert!(matches!(open(), Err(DiskError::Tampered { .. })), "AUTH's reserved bytes are signed");
            reset();
            flip(&path, p.table_end + 8);
            assert!(matches!(open(), Err(DiskError::OtherKey { .. })));
            reset();
            flip(&path, p.file_end - 1);
            assert!(matches!(open(), Err(DiskError::Tampered { .. })));
            reset();
        }
        assert!(open().is_ok());
    }
}

#[test]
fn a_truncated_or_extended_layer_is_refused() {
    for sealed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = sample(dir.path(), sealed.then_some(&key()));
        let pristine = fs::read(&path).unwrap();
        let p = parts(&path);
        let mut cuts = vec![0, 7, 8, 4095, 4096, p.data_end - 1, p.data_end, p.table_end - 1];
        if sealed {
            cuts.extend([p.table_end, p.file_end - 1]);
        }
        for cut in cuts {
            fs::write(&path, &pristine[..to_usize(cut)]).unwrap();
            match LayerReader::open(&path, None) {
                Err(DiskError::Truncated { file_len, .. }) => assert_eq!(file_len, cut),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        let mut longer = pristine.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        assert!(matches!(LayerReader::open(&path, None), Err(DiskError::Malformed { .. })));
    }
}

/// Rewrites the header's fields (and, if given, the extent entries) of an
/// unsealed layer, with fresh CRCs: a forgery only the format's rules catch.
fn forge(path: &Path, fields: impl FnOnce(&mut HeaderFields), entries: impl FnOnce(&mut Vec<ExtentEntry>)) {
    let mut bytes = fs::read(path).unwrap();
    let h = HeaderFields::read_from_prefix(&bytes).unwrap().0;
    let (data_end, n) = (to_usize(h.data_end.get()), to_usize(h.extent_count.get()));
    let table_end = data_end + to_usize(h.table_len.get());
    let mut list = <[ExtentEntry]>::ref_from_bytes(&bytes[data_end..data_end + 32 * n]).unwrap().to_vec();
    entries(&mut list);
    assert_eq!(list.len(), n, "forge keeps the table's length");
    bytes[data_end..data_end + 32 * n].copy_from_slice(list.as_bytes());
    let table_crc = crc32c::crc32c(&bytes[data_end..table_end]);
    let mut h = HeaderFields::read_from_prefix(&bytes).unwrap().0;
    h.table_crc32c = table_crc.into();
    fields(&mut h);
    bytes[..128].copy_from_slice(h.as_bytes());
    let crc = header_crc(&bytes[..HEADER_SIZE]);
    bytes[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    fs::write(path, bytes).unwrap();
}

#[test]
fn forged_fields_and_tables_are_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = sample(dir.path(), None);
    let pristine = fs::read(&path).unwrap();
    type Fields = fn(&mut HeaderFields);
    type Entries = fn(&mut Vec<ExtentEntry>);
    let keep_fields: Fields = |_| {};
    let keep_entries: Entries = |_| {};
    let cases: Vec<(&str, Fields, Entries)> = vec![
        ("kind 3", |h| h.kind = 3.into(), keep_entries),
        ("delta without parent", |h| h.kind = 2.into(), keep_entries),
        ("full with a parent CRC", |h| h.parent_header_crc32c = 9.into(), keep_entries),
        ("cluster size", |h| h.cluster_size = 3000.into(), keep_entries),
        ("cluster size too big", |h| h.cluster_size = (4u32 << 20).into(), keep_entries),
        ("virtual size", |h| h.virtual_size = (MAX_VIRTUAL_SIZE + 1).into(), keep_entries),
        ("smaller disk", |h| h.virtual_size = (9 * C).into(), keep_entries),
        ("extent count", |h| h.extent_count = 2.into(), keep_entries),
        ("cluster count", |h| h.data_clusters = 2.into(), keep_entries),
        ("huge count", |h| h.extent_count = u64::MAX.into(), keep_entries),
        ("data end", |h| h.data_end = 100.into(), keep_entries),
        ("data end beyond", |h| h.data_end = u64::MAX.into(), keep_entries),
        ("unsorted", keep_fields, |e| e.swap(0, 1)),
        ("overlap", keep_fields, |e| e[1].offset = e[0].offset),
        ("unaligned", keep_fields, |e| e[0].offset = (3 * C + 512).into()),
        ("empty extent", keep_fields, |e| e[1].length = 0.into()),
        ("beyond the disk", keep_fields, |e| e[2].length = (1001).into()),
        ("partial cluster inside", keep_fields, |e| e[1].length = (C - 1).into()),
        ("kind", keep_fields, |e| e[1].kind = 7.into()),
        ("zero with data", keep_fields, |e| e[1].file_offset = 4096.into()),
        ("data moved", keep_fields, |e| e[0].file_offset = (e[0].file_offset.get() + 4096).into()),
        ("data shared", keep_fields, |e| e[2].file_offset = e[0].file_offset),
        ("data kind swap", keep_fields, |e| e[1].kind = 1.into()),
    ];
    for (what, fields, entries) in cases {
        forge(&path, fields, entries);
        let r = LayerReader::open(&path, None);
        assert!(matches!(r, Err(DiskError::Malformed { .. }) | Err(DiskError::Truncated { .. })), "{what}: {r:?}");
        fs::write(&path, &pristine).unwrap();
    }
    // The same forgery under a key: the MAC no longer holds.
    let (path, _, _) = sample(dir.path(), Some(&key()));
    forge(&path, |h| h.created_unix_ns = 1.into(), |_| {});
    assert!(LayerReader::open(&path, None).is_ok());
    assert!(matches!(LayerReader::open(&path, Some(&key())), Err(DiskError::Tampered { .. })));
}

#[test]
fn sealed_layers_need_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let (path, summary, model) = sample(dir.path(), Some(&key()));
    let layer = LayerReader::open(&path, Some(&key())).unwrap();
    assert_eq!(layer.mac(), summary.mac);
    assert!(layer.header().sealed);
    assert_eq!(resolve(&Chain::open(dir.path(), "full.mdisk", Some(&key())).unwrap()), model);
    // Without the key it reads as any layer; under another key it is refused.
    assert_eq!(resolve(&Chain::open(dir.path(), "full.mdisk", None).unwrap()), model);
    let other = ImageKey::from_bytes(&[8; 32]);
    assert!(matches!(LayerReader::open(&path, Some(&other)), Err(DiskError::OtherKey { .. })));
    let report = verify(&Chain::open(dir.path(), "full.mdisk", Some(&key())).unwrap()).unwrap();
    assert_eq!(report.layers[0].mac, summary.mac.map(|m| m.to_hex()));
    // An unsealed layer opened with a key is refused.
    let (path, _, _) = sample(dir.path(), None);
    assert!(matches!(LayerReader::open(&path, Some(&key())), Err(DiskError::Unsealed { .. })));
}

#[test]
fn reads_must_cover_whole_clusters_of_data() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = sample(dir.path(), None);
    let layer = LayerReader::open(&path, None).unwrap();
    let ExtentData::Data { file_offset, .. } = layer.extents()[0].data else { unreachable!() };
    let mut buf = vec![0; to_usize(C)];
    layer.read_data(file_offset + C, &mut buf).unwrap();
    for (at, len) in [(file_offset + 1, C), (file_offset, C - 1), (0, C), (file_offset + 2 * C, C), (u64::MAX, 1)] {
        let r = layer.read_data(at, &mut buf[..to_usize(len)]);
        assert!(matches!(r, Err(DiskError::BadRead { .. })), "{at:#x}+{len}: {r:?}");
    }
    // Within the last extent, its partial cluster reads whole.
    let ExtentData::Data { file_offset, .. } = layer.extents()[2].data else { unreachable!() };
    layer.read_data(file_offset, &mut buf[..1000]).unwrap();
}

#[test]
fn parents_must_be_the_layers_the_deltas_were_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut model = Vec::new();
    let size = 4 * C;
    let a = write_layer(
        &root.join("a.mdisk"),
        size,
        LayerKind::Full,
        None,
        &[Op::Data(0, pattern(1, CS as usize))],
        &mut model,
    );
    write_layer(
        &root.join("b.mdisk"),
        size,
        LayerKind::Full,
        None,
        &[Op::Data(0, pattern(2, CS as usize))],
        &mut model,
    );
    write_layer(
        &root.join("d.mdisk"),
        size,
        delta_over("a.mdisk", &a),
        None,
        &[Op::Data(C, pattern(3, CS as usize))],
        &mut model,
    );
    assert!(Chain::open(root, "d.mdisk", None).is_ok());

    // Another full layer of the same disk put in the parent's place.
    fs::rename(root.join("a.mdisk"), root.join("a.saved")).unwrap();
    fs::copy(root.join("b.mdisk"), root.join("a.mdisk")).unwrap();
    assert!(matches!(Chain::open(root, "d.mdisk", None), Err(DiskError::WrongParent { .. })));
    // The parent missing.
    fs::remove_file(root.join("a.mdisk")).unwrap();
    let err = Chain::open(root, "d.mdisk", None).unwrap_err();
    assert!(matches!(err, DiskError::Io { .. }) && !err.is_damage(), "{err:?}");
    fs::rename(root.join("a.saved"), root.join("a.mdisk")).unwrap();

    // A delta over a layer of another size, or another cluster size.
    write_layer(&root.join("e.mdisk"), 5 * C, delta_over("a.mdisk", &a), None, &[], &mut vec![0; to_usize(5 * C)]);
    match Chain::open(root, "e.mdisk", None) {
        Err(DiskError::WrongParent { why, .. }) => assert!(why.contains("bytes"), "{why}"),
        other => panic!("{other:?}"),
    }
    let big = LayerWriter::create(&root.join("f.mdisk"), &identity(size), 2 * CS, delta_over("a.mdisk", &a), None);
    big.unwrap().finish().unwrap();
    match Chain::open(root, "f.mdisk", None) {
        Err(DiskError::WrongParent { why, .. }) => assert!(why.contains("clusters"), "{why}"),
        other => panic!("{other:?}"),
    }

    // Its own parent, directly or through a link.
    let own = LayerKind::Delta { parent: "c.mdisk".into(), parent_header_crc32c: 0 };
    write_layer(&root.join("c.mdisk"), size, own, None, &[], &mut vec![0; to_usize(size)]);
    assert!(matches!(Chain::open(root, "c.mdisk", None), Err(DiskError::Cycle { .. })));
    let via = LayerKind::Delta { parent: "link".into(), parent_header_crc32c: 0 };
    write_layer(&root.join("g.mdisk"), size, via, None, &[], &mut vec![0; to_usize(size)]);
    std::os::unix::fs::symlink(root.join("g.mdisk"), root.join("link")).unwrap();
    assert!(matches!(Chain::open(root, "g.mdisk", None), Err(DiskError::Cycle { .. })));

    // A sealed chain needs every layer sealed.
    let k = key();
    let s = write_layer(&root.join("s.mdisk"), size, delta_over("a.mdisk", &a), Some(&k), &[], &mut model);
    assert!(s.mac.is_some());
    assert!(matches!(Chain::open(root, "s.mdisk", Some(&k)), Err(DiskError::Unsealed { .. })));
}

#[test]
fn chains_deeper_than_the_bound_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let size = 2 * C;
    let mut model = Vec::new();
    let mut last = write_layer(&root.join("0"), size, LayerKind::Full, None, &[], &mut model);
    for i in 1..=MAX_CHAIN_LAYERS {
        let ops = [Op::Data((i as u64 % 2) * C, pattern(i as u64, CS as usize))];
        last = write_layer(
            &root.join(i.to_string()),
            size,
            delta_over(&(i - 1).to_string(), &last),
            None,
            &ops,
            &mut model,
        );
    }
    let ok = Chain::open(root, &(MAX_CHAIN_LAYERS - 1).to_string(), None).unwrap();
    assert_eq!(ok.layers().len(), MAX_CHAIN_LAYERS);
    let deep = Chain::open(root, &MAX_CHAIN_LAYERS.to_string(), None);
    assert!(matches!(deep, Err(DiskError::ChainTooDeep { .. })), "{deep:?}");
}

#[test]
fn random_chains_resolve_like_a_model_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for seed in 0..60u64 {
        let mut rng = Rng(seed);
        let clusters = 1 + rng.below(40);
        let tail = if rng.below(2) == 0 { 0 } else { 1 + rng.below(C - 1) };
        let size = clusters * C + tail;
        let total = clusters + u64::from(tail > 0);
        let key = (seed % 3 == 0).then(key);
        let mut model = Vec::new();
        let mut generations: Vec<(String, Vec<u8>)> = Vec::new();
        let mut last: Option<LayerSummary> = None;
        for g in 0..1 + rng.below(5) {
            // Random disjoint cluster ranges, added in a random order.
            let mut ops = Vec::new();
            let mut c = rng.below(4);
            while c < total {
                let n = (1 + rng.below(6)).min(total - c);
                let (offset, len) = (c * C, (n * C).min(size - c * C));
                if rng.below(3) == 0 {
                    ops.push(Op::Zero(offset, len));
                } else {
                    ops.push(Op::Data(offset, pattern(seed * 100 + g * 10 + c, to_usize(len))));
                }
                c += n + rng.below(5);
            }
            for i in (1..ops.len()).rev() {
                ops.swap(i, to_usize(rng.below(i as u64 + 1)));
            }
            let name = format!("s{seed}-g{g}.mdisk");
            let kind = match &last {
                None => LayerKind::Full,
                Some(parent) => delta_over(&generations.last().unwrap().0, parent),
            };
            last = Some(write_layer(&root.join(&name), size, kind, key.as_ref(), &ops, &mut model));
            generations.push((name, model.clone()));
        }
        for (name, expected) in &generations {
            let chain = Chain::open(root, name, key.as_ref()).unwrap();
            assert_eq!(&resolve(&chain), expected, "seed {seed}, {name}");
            assert!(verify(&chain).unwrap().is_intact());
        }
        let (name, expected) = generations.last().unwrap();
        let chain = Chain::open(root, name, key.as_ref()).unwrap();
        assert_eq!(&by_pieces(&chain, to_usize(3 * C + 5)), expected, "seed {seed} in pieces");
        let merged = format!("s{seed}-merged.mdisk");
        merge(&chain, &root.join(&merged), key.as_ref()).unwrap();
        assert_eq!(&resolve(&Chain::open(root, &merged, key.as_ref()).unwrap()), expected, "seed {seed} merged");
    }
}

#[test]
fn an_empty_disk_resolves_to_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_layer(&dir.path().join("e.mdisk"), 0, LayerKind::Full, None, &[], &mut Vec::new());
    let chain = Chain::open(dir.path(), "e.mdisk", None).unwrap();
    assert!(chain.runs().is_empty());
    assert_eq!(inspect(&chain).zero_bytes, 0);
}
