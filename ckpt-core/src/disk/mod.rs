// SPDX-License-Identifier: GPL-2.0-or-later
//! Disk layer files: one writable disk's content at a checkpoint instant,
//! format 1.0.
//!
//! A layer holds, for one disk of one VM in one generation, the clusters
//! the checkpoint captured: all of them (a *full* layer) or those written
//! since the parent generation (a *delta* layer, which names its parent).
//! The disk at a generation is its layer resolved down its chain of
//! parents to a full layer ([`Chain`]): the newest layer listing a cluster
//! wins; a cluster no layer lists is zero. The file is
//! `<vm>.<disk-id>.mdisk` in the generation directory.
//!
//! All integers are little-endian; all checksums are CRC32C (Castagnoli,
//! initial value and final xor `0xffffffff`, as for images: the CRC32C of
//! `"123456789"` is `0xe3069283`).
//!
//! # File structure
//!
//! ```text
//! 0           header block (4096 bytes)
//! 4096        packed data: each data extent's bytes, each starting on a 4096-byte boundary
//! data_end    extent table: n extent entries, c cluster CRCs (and, sealed, c cluster tags)
//! table_end   AUTH (sealed layers only, 56 bytes)
//! ```
//!
//! The file ends exactly where its last part does: a longer file is
//! malformed, a shorter one truncated.
//!
//! # Header block (offset 0, 4096 bytes)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `MEKHADSK` (ASCII) |
//! | 8 | 2 | format major version: 1 |
//! | 10 | 2 | format minor version: 0 |
//! | 12 | 4 | flags: bit 0 = sealed (cluster tags and AUTH present); readers ignore other bits |
//! | 16 | 8 | creation time, nanoseconds since the Unix epoch |
//! | 24 | 4 | header CRC32C: over all 4096 bytes of the block with these 4 bytes set to zero |
//! | 28 | 4 | kind: 1 = full, 2 = delta |
//! | 32 | 8 | the disk's virtual size in bytes, at most 2^56 |
//! | 40 | 4 | cluster size in bytes: a power of two, 4096 to 2 MiB |
//! | 44 | 4 | a delta's parent's header CRC32C (0 in a full layer) |
//! | 48 | 8 | extent count `n` |
//! | 56 | 8 | data cluster count `c` |
//! | 64 | 8 | `data_end`: where the packed data ends and the extent table starts, at least 4096 |
//! | 72 | 8 | the extent table's length: 32`n` + 4`c` (+ 16`c` sealed) |
//! | 80 | 4 | CRC32C of the extent table's bytes |
//! | 84 | 44 | reserved, zero |
//! | 128 | … | four names, each a u16 length `L` then `L` bytes of UTF-8, back to back: |
//! | | | the QEMU node name (1 to 255 bytes), |
//! | | | the guest device (`-device ...,id=` or its QOM path; 0 to 255 bytes), |
//! | | | the source format, e.g. `qcow2` or `raw` (1 to 32 bytes of `[a-z0-9_-]`), |
//! | | | a delta's parent: its file name relative to the checkpoint directory, e.g. `gen-000007/node1.vda.mdisk` (1 to 1024 bytes: names separated by `/`, none empty, `.` or `..`, no NUL; empty in a full layer) |
//! | … | … | zeros to the end of the block |
//!
//! Reserved bytes, here and below, are written as zeros and ignored by
//! readers (a minor version may use them). `n` and `c` are at most the
//! disk's cluster count.
//!
//! A reader checks, in this order: the magic; the major version (refuse
//! any other major, since it may change everything after the version,
//! checksum included; accept any minor: minor versions only add flags and
//! use reserved bytes, which readers ignore); the header CRC32C; then
//! every field above against its range, and the parts' bounds against the
//! file's length. The header CRC32C names the layer: it covers the
//! table's CRC32C, which covers every cluster's CRC32C, which cover the
//! data. A delta records its parent's, so a parent replaced by another
//! file (even another layer of the same disk) is refused.
//!
//! # Packed data
//!
//! Each data extent's bytes are stored once, in one piece, at the file
//! offset its entry gives. Taken in file order, the first starts at 4096,
//! each next at the end of the previous one rounded up to 4096 (zeros in
//! between; an extent's length is whole clusters unless it ends at the
//! disk's end), and the last ends at `data_end` (4096 without data
//! extents). So data extents neither overlap nor leave room for anything
//! else. Writers store data extents in the order they are captured.
//!
//! # Extent table (at `data_end`)
//!
//! `n` entries of 32 bytes, by ascending disk offset:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | disk offset: a multiple of the cluster size |
//! | 8 | 8 | length: not 0; whole clusters, unless the extent ends at the virtual size |
//! | 16 | 4 | kind: 1 = data, 2 = zero |
//! | 20 | 4 | reserved, zero |
//! | 24 | 8 | data: the file offset of its bytes; zero: 0 |
//!
//! Extents lie within the virtual size and do not overlap (they may
//! touch). A zero extent says the disk reads zeros there: it matters in a
//! delta, where it hides the parent's data; in a full layer an unlisted
//! cluster reads zeros too.
//!
//! Then `c` u32 CRC32Cs, one per data cluster: the data extents' clusters
//! in table order, each over the cluster's bytes (the disk's last
//! cluster's CRC covers only its bytes within the virtual size when the
//! virtual size is not whole clusters). `c` is the data extents' cluster
//! count. A sealed layer's table then holds `c` 16-byte tags, one per
//! data cluster in the same order (below).
//!
//! # Sealed layers: tags and AUTH
//!
//! A layer written with an image key ([`ImageKey`](crate::image::ImageKey), the VM's image's) is
//! sealed like an image (see [`crate::image`]): BLAKE3 `derive_key` of the
//! key with `"mekha 2026-12 disk layer cluster tags"` (T) and `"mekha
//! 2026-12 disk layer MAC"` (M). A cluster's tag is the first 16 bytes of
//! BLAKE3 keyed with T over its bytes. AUTH, at the table's end:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | version: 1 |
//! | 4 | 4 | reserved, zero |
//! | 8 | 16 | the key id (as images' AUTH) |
//! | 24 | 32 | the MAC: BLAKE3 keyed with M over the header block with its CRC field zeroed, the extent table, and AUTH's first 24 bytes |
//!
//! A reader given the key refuses a layer that is not sealed, sealed under
//! another key id, or whose MAC does not match; then it checks each
//! cluster's tag (besides its CRC) on the bytes it reads. Readers without
//! the key check CRCs only.
//!
//! # Writing
//!
//! [`LayerWriter`] writes `<name>.partial`: extents come in any order,
//! data is appended as it comes, and `finish` writes the extent table
//! (adjacent extents merged), AUTH, the header last, fsyncs, renames the
//! file to its final name and fsyncs the directory: a file with the final
//! name is always complete.
//!
//! # Reading
//!
//! [`LayerReader::open`] checks everything but the data; reads check each
//! cluster they return. [`Chain::open`] opens a layer and its parents,
//! [`Chain::runs`] resolves the disk into runs in offset order (and
//! [`Chain::for_each_piece`] reads them in checked pieces), [`verify`]
//! checks every cluster of a chain, [`inspect`] summarizes it and [`merge`]
//! folds it into one full layer.

mod chain;

/// The extension of a disk layer file: `<vm>.<disk>.mdisk`.
pub const LAYER_EXTENSION: &str = "mdisk";

mod error;
mod format;
mod inspect;
mod merge;
mod pack;
mod reader;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

pub use chain::{Chain, ChainLayer, Piece, Run, RunSource, MAX_CHAIN_LAYERS};
pub use error::{DiskError, Result};
pub use format::{
    DiskIdentity, Extent, ExtentData, LayerKind, DEFAULT_CLUSTER_SIZE, FORMAT_MAJOR, FORMAT_MINOR, HEADER_SIZE, MAGIC,
    MAX_CLUSTER_SIZE, MAX_VIRTUAL_SIZE, MIN_CLUSTER_SIZE,
};
pub use inspect::{inspect, inspect_layer, ChainInspection, LayerInspection};
pub use merge::merge;
pub use pack::{pack, Copied};
pub use reader::{LayerHeader, LayerReader};
pub use verify::{verify, verify_layer, BadCluster, LayerCheck, VerifyReport, MAX_REPORTED_BAD_CLUSTERS};
pub use writer::{LayerSummary, LayerWriter};
