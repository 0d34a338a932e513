// SPDX-License-Identifier: GPL-2.0-or-later
//! The on-disk image of one VM: format 1.2.
//!
//! An image holds one VM's RAM, one CRC32C per RAM page, QEMU's device
//! state, its clocks at the checkpoint instant, the network frames in
//! flight toward it at that instant and a description of the VM, in one
//! (sparse) file; sealed under a key, also a tag per page and a MAC. All
//! integers are little-endian; all checksums are CRC32C (Castagnoli, as computed by
//! SSE4.2's `crc32` instruction, initial value and final xor `0xffffffff`;
//! the CRC32C of `"123456789"` is `0xe3069283`).
//!
//! # File structure
//!
//! ```text
//! 0           header block (4096 bytes)
//! 4096        zeros up to RAM_START
//! 2 MiB       RAM data: each RAM block at a 2 MiB-aligned offset (layout.rs)
//! ram_end     metadata sections, each starting on a 4096-byte boundary
//! ```
//!
//! The file ends where the last section ends. Pages that were never
//! written are holes of the sparse file and read as zeros.
//!
//! # Header block (offset 0, 4096 bytes)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `MEKHAIMG` (ASCII) |
//! | 8 | 2 | format major version: 1 |
//! | 10 | 2 | format minor version: 2 (1.0 had no TIME and no NET_FRAMES section, 1.1 no AUTH and PAGE_TAGS) |
//! | 12 | 4 | flags: none defined in 1.0; readers ignore bits they do not know |
//! | 16 | 8 | creation time, nanoseconds since the Unix epoch |
//! | 24 | 4 | section count `n` (at most 126) |
//! | 28 | 4 | header CRC32C: over all 4096 bytes of the block with these 4 bytes set to zero |
//! | 32 | 4 | page size: 4096 |
//! | 36 | 28 | reserved, zero |
//! | 64 | 32 × n | section directory, then zeros to the end of the block |
//!
//! A reader checks, in this order: the magic; the major version (refuse
//! any other major, since a new major may change everything after the
//! version, checksum included; accept any minor: minor versions only add
//! optional sections, flags or JSON fields); the header CRC32C; the page
//! size.
//!
//! ## Section directory entry (32 bytes)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | kind (below) |
//! | 4 | 4 | flags: bit 0 = required (a reader that does not know the kind must refuse the image); other bits reserved |
//! | 8 | 8 | offset of the section's first byte in the file |
//! | 16 | 8 | length in bytes |
//! | 24 | 4 | CRC32C of the section's bytes (0 for RAM) |
//! | 28 | 4 | reserved, zero |
//!
//! Entries may come in any order. Sections with a length do not overlap
//! each other nor the header block, and lie entirely within the file (a
//! section reaching past the end of the file means a truncated image).
//! Each known kind appears at most once; unknown kinds without the
//! required bit are skipped.
//!
//! ## Section kinds
//!
//! | kind | name | required | contents |
//! |---|---|---|---|
//! | 1 | IDENTITY | yes | UTF-8 JSON: `{"vm": {"vm_name", "machine", "qemu_version", "ram_blocks": [{"name", "length", "page_size"}]}, "mekha": {"version", "build_id"}}` |
//! | 2 | PAGE_CRCS | yes | one u32 CRC32C per page, in global page order (length = 4 × pages) |
//! | 3 | DEVICE_STATE | yes | QEMU's device state stream, opaque |
//! | 4 | RAM | yes | the RAM data: offset `RAM_START` (2 MiB), length `ram_end - RAM_START`, CRC 0 |
//! | 5 | INFO | no | UTF-8 JSON object: free-form checkpoint statistics |
//! | 6 | TIME | no | the clocks at the checkpoint instant (since 1.1): 32 bytes, see below |
//! | 7 | NET_FRAMES | no | the network frames in flight toward the VM at the checkpoint instant (since 1.1), see below |
//! | 8 | AUTH | no | the MAC under the image key and each section's tag (since 1.2), see below |
//! | 9 | PAGE_TAGS | no | each page's tag under the image key: 16 bytes per page, in global page order (since 1.2) |
//!
//! Kind 0 is invalid. IDENTITY, PAGE_CRCS, DEVICE_STATE and RAM must be
//! present. JSON readers ignore fields they do not know.
//!
//! ## TIME (since 1.1)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | the guest's wall clock (QEMU's host clock, which the RTC reads), i64 ns since the Unix epoch |
//! | 8 | 8 | the host's wall clock (CLOCK_REALTIME), i64 ns since the Unix epoch |
//! | 16 | 8 | QEMU's VM clock: i64 ns the VM had run |
//! | 24 | 8 | reserved, zero |
//!
//! Both wall clocks lie between the epoch and `vtime::MAX_WALL_NS` (the
//! year 2116); a reader refuses the section otherwise. A restore without
//! it (a 1.0 image) leaves QEMU's host clock on the host's time
//! (`crate::vtime`).
//!
//! ## NET_FRAMES (since 1.1)
//!
//! The frames each netdev (a NIC's backend, e.g. a tap) had sent toward
//! the guest's NIC when the VM stopped but the guest had not received
//! yet: those a peer sent before the cluster's stop instant and that
//! reached this VM's netdev only afterwards, or that waited in the NIC's
//! queue. A restore gives them to the guest, in this order, before any
//! newer frame. The section is a header, then one record per netdev:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | netdev count `n` |
//! | 4 | 4 | reserved, zero |
//! | 8 | … | `n` netdev records, back to back |
//!
//! A netdev record:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | frame count `f` |
//! | 4 | 4 | virtio-net header length `h`: bytes of header the netdev put before each frame's Ethernet data (0: none) |
//! | 8 | 2 | netdev id length `L`, 1 to 255 |
//! | 10 | 2 | reserved, zero |
//! | 12 | `L` | the netdev id (`-netdev ...,id=`), UTF-8 |
//! | 12 + `L` | … | `f` frame records, oldest first, back to back |
//!
//! A frame record:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | length `len` in bytes, 1 to 69632 (QEMU's `NET_BUFSIZE`) |
//! | 4 | 4 | flags: bit 0 = raw (QEMU's `QEMU_NET_PACKET_FLAG_RAW`); other bits reserved, zero |
//! | 8 | `len` | the frame as the netdev passed it toward the NIC: `h` bytes of header, then the Ethernet frame |
//!
//! No padding anywhere; the section ends with the last frame record. A
//! netdev appears at most once; mekha lists only netdevs that held
//! frames (none held: `n` = 0, an 8-byte section). A reader refuses the section (the image is damaged) when a record runs
//! past its end, bytes follow the last record, an id is empty or not
//! UTF-8 or repeated, a length is out of range or a reserved bit is set.
//! A restore gives a netdev's frames back only to a netdev of the same
//! id whose header length is `h`; it warns about the others and drops
//! them ([`NetFrames`]).
//!
//! ## Sealed images: AUTH and PAGE_TAGS (since 1.2)
//!
//! An image written with an image key ([`ImageKey`]: 32 bytes) is sealed:
//! whoever lacks the key cannot change it without a reader holding the
//! key noticing, which CRCs cannot promise. Keys are derived from it
//! with BLAKE3's `derive_key` and these contexts: `"mekha 2026-12 image
//! page tags"` (P), `"mekha 2026-12 image section tags"` (S), `"mekha
//! 2026-12 image MAC"` (M), `"mekha 2026-12 manifest MAC"` (a manifest's
//! MAC, `crate::store`), and two that seal disk layers (`crate::disk`); the key id is the first 16 bytes of the
//! derivation with `"mekha 2026-12 image key id"`.
//!
//! PAGE_TAGS holds, for every page, the first 16 bytes of BLAKE3 keyed
//! with P over the page's 4096 bytes (a page never written: the tag of
//! zeros). AUTH is:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | version: 1 |
//! | 4 | 4 | tag count `k` |
//! | 8 | 16 | the key id |
//! | 24 | 8 | reserved, zero |
//! | 32 | 40 × `k` | per tagged section: kind (4), reserved (4), BLAKE3 keyed with S over the section's bytes (32) |
//! | 32 + 40`k` | 32 | the MAC |
//!
//! Every section but RAM and AUTH is tagged. The MAC is BLAKE3 keyed
//! with M over: the header's major, minor (2 bytes each), page size (4)
//! and creation time (8); the directory entries (32 bytes each, as in the
//! header) of every section but AUTH, by ascending kind; AUTH's bytes
//! before the MAC. A reader given the key refuses an image without AUTH,
//! one whose key id is another's, and one whose MAC does not match; then
//! it checks each section's and page's tag on the bytes it uses (a
//! restore maps no page from the file, which could change after the
//! check). Readers without the key skip both sections.
//!
//! ## RAM and pages
//!
//! The RAM blocks of IDENTITY, in their order, determine where every page
//! lives ([`layout::Layout`]): block 0's data starts at `RAM_START`
//! (2 MiB); each next block starts at the end of the previous one rounded
//! up to 2 MiB; `ram_end` is the end of the last block rounded up to 2 MiB
//! (`RAM_START` when there are no blocks). Block lengths are whole pages
//! of 4096 bytes. Pages are numbered globally: block 0's pages first, then
//! block 1's. Page `p` of block `b` is at `block_offset(b) + 4096 × p`;
//! its CRC32C is PAGE_CRCS entry `first_page(b) + p`. Every page has an
//! entry: a page never written is zeros and carries `0x98f94189`, the
//! CRC32C of 4096 zero bytes. The padding between blocks is zeros and
//! unchecked. The RAM section's own CRC is 0 and not checked.
//!
//! # Writing
//!
//! [`ImageBuilder`] writes `<name>.partial`, sized to `ram_end` as a sparse
//! file; page writers fill pages in place at fixed offsets (a page written
//! again overwrites itself). `finish` appends the sections from `ram_end`,
//! writes the header last, fsyncs, renames the file to its final name and
//! fsyncs the directory: a file with the final name is always complete.

mod auth;
mod builder;
mod compat;
mod durable;
mod error;
pub mod format;
mod inspect;
pub mod layout;
mod net_frames;
mod reader;
mod verify;

#[cfg(test)]
mod tests;

pub use auth::{ImageKey, Mac, PageTag, PAGE_TAG_LEN};
pub use builder::{FinishedImage, ImageBuilder};
pub use compat::{check_compatible, Compatible, Difference, Mismatch};
pub use error::{ImageError, Result};
pub use format::{page_crc, Producer, Section, SectionKind, ZERO_PAGE_CRC};
pub use inspect::{inspect, inspect_image, BlockSummary, Inspection, SectionSummary, TimeSummary};
pub use layout::{Identity, Layout, RamBlock};
pub use net_frames::{
    NetFrame, NetFrames, NetFramesSummary, NetdevFrames, FRAME_RAW, MAX_FRAME_LEN, MAX_NETDEV_ID_LEN,
};
pub use reader::{HeaderInfo, Image};
pub use verify::{verify, verify_image, BadPage, BadSection, VerifyReport, MAX_REPORTED_BAD_PAGES};

pub(crate) use auth::hex;
pub(crate) use durable::{create_partial, now_unix_ns, parent_dir, sync_dir, with_suffix};
pub(crate) use reader::host_memory;
