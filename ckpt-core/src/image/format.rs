// SPDX-License-Identifier: GPL-2.0-or-later
//! The on-disk structures of an image: header block, section directory,
//! section kinds and the IDENTITY record (see the module doc of
//! [`crate::image`] for the format itself).

use std::fmt;

use serde::{Deserialize, Serialize};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::layout::Identity;
use crate::PAGE_SIZE;

/// First eight bytes of every image.
pub const MAGIC: [u8; 8] = *b"MEKHAIMG";
/// Format major version this mekha writes and reads.
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version this mekha writes (it reads any minor of its major).
pub const FORMAT_MINOR: u16 = 2;
/// Size of the header block at offset 0.
pub const HEADER_SIZE: usize = 4096;
/// Section directory entries that fit in the header block.
pub const MAX_SECTIONS: usize = (HEADER_SIZE - size_of::<FileHeader>()) / size_of::<SectionEntry>();
/// Writers start every section after the RAM on this boundary (readers
/// need no alignment; it keeps sections friendly to `O_DIRECT` reads).
pub const SECTION_ALIGN: u64 = 4096;
/// Section flag: a reader that does not know the kind must refuse the image.
pub const SECTION_REQUIRED: u32 = 1;
/// The header's `page_size`: [`PAGE_SIZE`], the only size this mekha writes.
pub const PAGE_SIZE_FIELD: u32 = 4096;
const _: () = assert!(PAGE_SIZE_FIELD as usize == PAGE_SIZE);
/// CRC32C of a page of zeros, the checksum of every page never written.
pub const ZERO_PAGE_CRC: u32 = 0x98F9_4189;

/// The fixed part of the header block (64 bytes at offset 0).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct FileHeader {
    /// Offset 0: [`MAGIC`], `MEKHAIMG`.
    pub magic: [u8; 8],
    /// Offset 8: format major version; a reader refuses any major but
    /// [`FORMAT_MAJOR`], before it checks the CRC.
    pub major: U16,
    /// Offset 10: format minor version; any minor of the major is read
    /// (minors only add optional sections, flags and JSON fields).
    pub minor: U16,
    /// Offset 12: flags; none is defined yet, readers ignore bits they do not know.
    pub flags: U32,
    /// Offset 16: when the image was written, ns since the Unix epoch.
    pub created_unix_ns: U64,
    /// Offset 24: directory entries in use, at most [`MAX_SECTIONS`].
    pub section_count: U32,
    /// Offset 28: CRC32C of the whole header block with this field zeroed.
    pub header_crc32c: U32,
    /// Offset 32: bytes per page in RAM and PAGE_CRCS ([`PAGE_SIZE_FIELD`]).
    pub page_size: U32,
    /// Offset 36: reserved, written as zeros.
    pub reserved: [u8; 28],
}

/// One entry of the section directory (32 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SectionEntry {
    /// Offset 0: the [`SectionKind`] number; 0 is invalid.
    pub kind: U32,
    /// Offset 4: bit 0 is [`SECTION_REQUIRED`]; the other bits are reserved.
    pub flags: U32,
    /// Offset 8: file offset of the section's first byte.
    pub offset: U64,
    /// Offset 16: the section's length in bytes.
    pub length: U64,
    /// Offset 24: CRC32C of the section's bytes (0 for RAM, checked page by page).
    pub crc32c: U32,
    /// Offset 28: reserved, written as zero.
    pub reserved: U32,
}

/// The header block: fixed header, then the directory, zero-filled to 4 KiB.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct HeaderBlock {
    /// Bytes 0 to 63.
    pub header: FileHeader,
    /// The directory from byte 64: the first `section_count` entries are
    /// in use, in any order; the rest are zeros.
    pub sections: [SectionEntry; MAX_SECTIONS],
}

const _: () = assert!(size_of::<FileHeader>() == 64);
const _: () = assert!(size_of::<SectionEntry>() == 32);
const _: () = assert!(size_of::<HeaderBlock>() == HEADER_SIZE);

impl HeaderBlock {
    /// The CRC32C stored in `header_crc32c`: over the block with that field zeroed.
    pub fn compute_crc(&self) -> u32 {
        let mut copy = self.clone();
        copy.header.header_crc32c = U32::new(0);
        crc32c::crc32c(copy.as_bytes())
    }

    /// The directory entries in use.
    pub fn entries(&self) -> &[SectionEntry] {
        let count = (self.header.section_count.get() as usize).min(MAX_SECTIONS);
        &self.sections[..count]
    }
}

/// Section kinds. Numbers are part of the format and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionKind {
    /// 1, required: the VM's identity and RAM blocks, and the mekha that
    /// wrote the image ([`IdentityRecord`], JSON).
    Identity,
    /// 2, required: one u32 CRC32C per page, in global page order.
    PageCrcs,
    /// 3, required: QEMU's device state stream, opaque to mekha.
    DeviceState,
    /// 4, required: the RAM data, from `RAM_START` to `ram_end` (its CRC is 0).
    Ram,
    /// 5: free-form checkpoint statistics, a JSON object.
    Info,
    /// The clocks at the checkpoint instant (since 1.1).
    Time,
    /// Network frames in flight toward the VM at the checkpoint (since 1.1).
    NetFrames,
    /// The MAC under the cluster's image key and each section's tag (since 1.2).
    Auth,
    /// Each page's tag under the image key (since 1.2).
    PageTags,
    /// A kind this mekha does not know (from a newer writer).
    Unknown(u32),
}

impl SectionKind {
    /// The kind a directory entry's number names; an unknown number is
    /// kept as [`SectionKind::Unknown`].
    pub fn from_number(n: u32) -> SectionKind {
        match n {
            1 => SectionKind::Identity,
            2 => SectionKind::PageCrcs,
            3 => SectionKind::DeviceState,
            4 => SectionKind::Ram,
            5 => SectionKind::Info,
            6 => SectionKind::Time,
            7 => SectionKind::NetFrames,
            8 => SectionKind::Auth,
            9 => SectionKind::PageTags,
            n => SectionKind::Unknown(n),
        }
    }

    /// The number a directory entry stores for this kind.
    pub fn number(self) -> u32 {
        match self {
            SectionKind::Identity => 1,
            SectionKind::PageCrcs => 2,
            SectionKind::DeviceState => 3,
            SectionKind::Ram => 4,
            SectionKind::Info => 5,
            SectionKind::Time => 6,
            SectionKind::NetFrames => 7,
            SectionKind::Auth => 8,
            SectionKind::PageTags => 9,
            SectionKind::Unknown(n) => n,
        }
    }

    /// Whether this mekha can interpret the section.
    pub fn is_known(self) -> bool {
        !matches!(self, SectionKind::Unknown(_))
    }
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SectionKind::Identity => f.write_str("IDENTITY"),
            SectionKind::PageCrcs => f.write_str("PAGE_CRCS"),
            SectionKind::DeviceState => f.write_str("DEVICE_STATE"),
            SectionKind::Ram => f.write_str("RAM"),
            SectionKind::Info => f.write_str("INFO"),
            SectionKind::Time => f.write_str("TIME"),
            SectionKind::NetFrames => f.write_str("NET_FRAMES"),
            SectionKind::Auth => f.write_str("AUTH"),
            SectionKind::PageTags => f.write_str("PAGE_TAGS"),
            SectionKind::Unknown(n) => write!(f, "kind {n}"),
        }
    }
}

/// A decoded directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// What the section holds.
    pub kind: SectionKind,
    /// The [`SECTION_REQUIRED`] flag: a reader that does not know the kind
    /// must refuse the image.
    pub required: bool,
    /// File offset of the section's first byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// CRC32C of the section's bytes (0 for RAM).
    pub crc32c: u32,
}

impl Section {
    /// File offset just past the section's last byte (saturating: a reader
    /// refuses an entry that ends beyond 2^64 before it uses this).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }

    /// The directory entry a writer stores, reserved field zero.
    pub fn to_entry(&self) -> SectionEntry {
        SectionEntry {
            kind: U32::new(self.kind.number()),
            flags: U32::new(if self.required { SECTION_REQUIRED } else { 0 }),
            offset: U64::new(self.offset),
            length: U64::new(self.length),
            crc32c: U32::new(self.crc32c),
            reserved: U32::new(0),
        }
    }

    /// Decodes a directory entry; flag bits other than required are ignored.
    pub fn from_entry(e: &SectionEntry) -> Section {
        Section {
            kind: SectionKind::from_number(e.kind.get()),
            required: e.flags.get() & SECTION_REQUIRED != 0,
            offset: e.offset.get(),
            length: e.length.get(),
            crc32c: e.crc32c.get(),
        }
    }
}

/// The JSON document of the IDENTITY section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// The VM the image was taken from.
    pub vm: Identity,
    /// The mekha that wrote the image.
    pub mekha: Producer,
}

/// Which mekha wrote an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Producer {
    /// The mekha crate version (`CARGO_PKG_VERSION`), e.g. `0.1.0`.
    pub version: String,
    /// The embedder's build: the QEMU library's source revision and
    /// profile, e.g. `1a2b3c4d5e6f-release`; `unknown` when none was set.
    pub build_id: String,
}

impl Producer {
    /// This mekha, with the build id its embedder knows (the QEMU library
    /// stamps one at build time; this crate has none of its own).
    pub fn this(build_id: &str) -> Producer {
        Producer { version: env!("CARGO_PKG_VERSION").to_owned(), build_id: build_id.to_owned() }
    }
}

/// Checks what the layout relies on: unique, non-empty block names and
/// lengths in whole pages. Returns what is wrong.
pub fn check_identity(identity: &Identity) -> Result<(), String> {
    if identity.ram_blocks.len() > MAX_RAM_BLOCKS {
        return Err(format!("{} RAM blocks, more than {MAX_RAM_BLOCKS}", identity.ram_blocks.len()));
    }
    let total = identity.ram_blocks.iter().try_fold(0u64, |sum, b| sum.checked_add(b.length));
    if total.is_none_or(|t| t > MAX_GUEST_RAM) {
        return Err(format!("the RAM blocks add up to more than {} TiB", MAX_GUEST_RAM >> 40));
    }
    let mut seen = std::collections::HashSet::new();
    for block in &identity.ram_blocks {
        if block.name.is_empty() {
            return Err("a RAM block has an empty name".into());
        }
        if !seen.insert(block.name.as_str()) {
            return Err(format!("RAM block {} appears twice", block.name));
        }
        if block.length % PAGE_SIZE as u64 != 0 {
            return Err(format!(
                "RAM block {} is {} bytes, not a whole number of {PAGE_SIZE}-byte pages",
                block.name, block.length
            ));
        }
    }
    Ok(())
}

/// The most RAM blocks an image may declare (QEMU VMs have tens; hundreds
/// with many DIMMs): with [`MAX_GUEST_RAM`], this keeps every offset of the
/// layout far from overflowing.
pub const MAX_RAM_BLOCKS: usize = 4096;

/// The most guest RAM an image may declare: 4 PiB, x86-64's 52-bit
/// physical address space.
pub const MAX_GUEST_RAM: u64 = 1 << 52;

/// CRC32C of one page's bytes.
pub fn page_crc(page: &[u8]) -> u32 {
    debug_assert_eq!(page.len(), PAGE_SIZE);
    crc32c::crc32c(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_crc_is_the_crc_of_zeros() {
        assert_eq!(page_crc(&[0u8; PAGE_SIZE]), ZERO_PAGE_CRC);
    }

    #[test]
    fn kinds_round_trip_their_numbers() {
        for n in 0..10 {
            assert_eq!(SectionKind::from_number(n).number(), n);
        }
        assert_eq!(MAX_SECTIONS, 126);
    }
}
