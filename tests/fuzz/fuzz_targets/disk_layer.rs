// SPDX-License-Identifier: GPL-2.0-or-later
//! The disk layer reader on any pair of files (`mekha_fuzz::disk_pair`):
//! a parent at `gen-000001/d.mdisk` and a layer at `gen-000002/d.mdisk`
//! in a checkpoint directory. `LayerReader::open` and `Chain::open`, with
//! and without a key, then everything a restore, `mekha image verify`,
//! `mekha image inspect` and a merge do with a chain that opened. Nothing
//! may panic; an opened chain resolves into runs that cover the disk in
//! order, every data run reads back checked or fails with a typed error,
//! and a merge of an intact chain resolves to the same disk.

#![no_main]

use std::fs;
use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mekha_ckpt_core::disk::{inspect, merge, verify, Chain, DiskError, ExtentData, LayerReader, RunSource};
use mekha_ckpt_core::image::ImageKey;
use mekha_fuzz::disk_pair::DiskPair;
use mekha_fuzz::scratch;

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
    let dir = scratch::temp_dir();
    fs::create_dir(dir.path().join("gen-000001")).unwrap();
    fs::create_dir(dir.path().join("gen-000002")).unwrap();
    dir
});

static KEY: LazyLock<ImageKey> = LazyLock::new(|| ImageKey::from_bytes(&[0x6d; 32]));

/// Where a merge writes, next to the generations.
const MERGED: &str = "merged.mdisk";

/// Resolved disks compared byte by byte up to this size.
const MAX_COMPARED: u64 = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let root = DIR.path();
    let (parent, layer) = (root.join("gen-000001/d.mdisk"), root.join("gen-000002/d.mdisk"));
    DiskPair::decode(data).write_to(&parent, &layer).expect("writing the scratch files");
    // A merge's output from an earlier input must not be a parent now.
    let _ = fs::remove_file(root.join(MERGED));
    for key in [None, Some(&*KEY)] {
        for path in [&parent, &layer] {
            if let Ok(reader) = LayerReader::open(path, key) {
                for (i, extent) in reader.extents().iter().enumerate() {
                    assert!(extent.len > 0 && extent.end() <= reader.identity().virtual_size);
                    if extent.len <= MAX_COMPARED && matches!(extent.data, ExtentData::Data { .. }) {
                        let _ = reader.read_extent(i, &mut vec![0; extent.len as usize]);
                    }
                }
            }
        }
        if let Ok(chain) = Chain::open(root, "gen-000002/d.mdisk", key) {
            exercise(root, &chain, key);
        }
    }
});

fn exercise(root: &Path, chain: &Chain, key: Option<&ImageKey>) {
    let (disk, intact) = resolve(chain);
    let inspection = inspect(chain);
    serde_json::to_string(&inspection).expect("an inspection encodes");
    let report = verify(chain).expect("verifying files that opened");
    let _ = report.problems();
    if !report.is_intact() {
        return;
    }
    assert!(intact, "a read failed its checks where verify found nothing");
    let merged = merge(chain, &root.join(MERGED), key).expect("merging an intact chain");
    assert_eq!((merged.data_bytes, merged.zero_bytes), (inspection.data_bytes, 0));
    let again = Chain::open(root, MERGED, key).expect("a merged layer opens");
    let (again, _) = resolve(&again);
    if let (Some(disk), Some(again)) = (disk, again) {
        assert!(disk == again, "the merged layer resolves to the same disk");
    }
    fs::remove_file(root.join(MERGED)).expect("removing the merged layer");
}

/// The disk the chain resolves to (None when too big to compare), and
/// whether every data run read back checked; checks that the runs cover
/// the disk in order and that only damage fails a read.
fn resolve(chain: &Chain) -> (Option<Vec<u8>>, bool) {
    let size = chain.virtual_size();
    let mut at = 0;
    let mut disk = (size <= MAX_COMPARED).then(|| vec![0u8; size as usize]);
    let mut intact = true;
    for run in chain.runs() {
        assert_eq!(run.offset, at, "runs in order, without gaps");
        assert!(run.len > 0);
        at += run.len;
        if let RunSource::Data { layer, file_offset } = run.source {
            let mut buf = vec![0u8; run.len as usize];
            match chain.read(layer, file_offset, &mut buf) {
                Ok(()) => {}
                Err(DiskError::DataChecksum { .. }) => intact = false,
                Err(e) => panic!("a run the chain resolved cannot be read: {e}"),
            }
            if let Some(disk) = &mut disk {
                disk[run.offset as usize..(run.offset + run.len) as usize].copy_from_slice(&buf);
            }
        }
    }
    assert_eq!(at, size, "runs cover the disk");
    (disk.filter(|_| intact), intact)
}
