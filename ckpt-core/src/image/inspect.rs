// SPDX-License-Identifier: GPL-2.0-or-later
//! What an image holds, from its header and metadata sections alone (no RAM
//! is read, so this is quick on images of any size).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::Result;
use super::format::{Producer, ZERO_PAGE_CRC};
use super::layout::Identity;
use super::net_frames::NetFramesSummary;
use super::reader::{HeaderInfo, Image};
use crate::width::to_usize;

/// What `mekha image inspect` shows of one image (also as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The image file.
    pub path: PathBuf,
    /// File length in bytes.
    pub file_size: u64,
    /// Bytes the file occupies on disk (less than its length when sparse).
    pub allocated_bytes: u64,
    /// The header's fields.
    pub header: HeaderInfo,
    /// The section directory, sorted by file offset.
    pub sections: Vec<SectionSummary>,
    /// The VM the image was taken from (IDENTITY).
    pub identity: Identity,
    /// The mekha that wrote the image (IDENTITY).
    pub mekha: Producer,
    /// Each RAM block, in the identity's order.
    pub ram_blocks: Vec<BlockSummary>,
    /// Pages of all RAM blocks together.
    pub total_pages: u64,
    /// Pages whose checksum is that of a page of zeros (never written, or zero).
    pub zero_pages: u64,
    /// File offset where the RAM data ends and the metadata sections may start.
    pub ram_end: u64,
    /// The INFO section's statistics, if the image has a readable one.
    pub info: Option<serde_json::Value>,
    /// The clocks at the checkpoint instant (TIME section).
    pub time: Option<TimeSummary>,
    /// The network frames in flight toward the VM (NET_FRAMES section).
    pub net_frames: Option<NetFramesSummary>,
    /// What could not be read but does not stop the inspection (e.g. a damaged INFO).
    pub warnings: Vec<String>,
}

/// An image's TIME section, with the lag it implies.
#[derive(Debug, Clone, Serialize)]
pub struct TimeSummary {
    /// The guest's wall clock (the RTC's time), ns since the Unix epoch.
    pub guest_wall_ns: i64,
    /// The host's wall clock, ns since the Unix epoch.
    pub host_wall_ns: i64,
    /// How far the guest's wall clock lagged the host's, ns (host minus
    /// guest: negative when the guest ran ahead).
    pub lag_ns: i64,
    /// ns the VM had run.
    pub virtual_ns: i64,
}

/// One entry of an image's section directory.
#[derive(Debug, Clone, Serialize)]
pub struct SectionSummary {
    /// Name of the kind, e.g. `DEVICE_STATE`, or `kind N` when unknown.
    pub kind: String,
    /// The kind's number in the directory.
    pub number: u32,
    /// Whether the entry carries the required flag.
    pub required: bool,
    /// Whether this mekha interprets the kind (unknown optional ones are skipped).
    pub known: bool,
    /// File offset of the section's first byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// The CRC32C the directory stores (0 for RAM).
    pub crc32c: u32,
}

/// One RAM block of an image and where its pages are.
#[derive(Debug, Clone, Serialize)]
pub struct BlockSummary {
    /// QEMU's RAMBlock idstr, e.g. `pc.ram`.
    pub name: String,
    /// Bytes in use.
    pub length: u64,
    /// Host page size that backed the block in the checkpointed QEMU, bytes.
    pub page_size: u64,
    /// File offset of the block's first page (2 MiB-aligned).
    pub file_offset: u64,
    /// Global number of the block's first page.
    pub first_page: u64,
    /// The block's pages of 4096 bytes.
    pub pages: u64,
    /// Of those, pages whose checksum is that of a page of zeros.
    pub zero_pages: u64,
}

/// Opens the image at `path` (without a key) and says what it holds,
/// reading no RAM.
pub fn inspect(path: &Path) -> Result<Inspection> {
    inspect_image(&Image::open(path)?)
}

/// [`inspect`] on an image already open.
pub fn inspect_image(image: &Image) -> Result<Inspection> {
    let meta = image.file().metadata().map_err(super::error::ImageError::io("reading image", image.path()))?;
    let layout = image.layout();
    let crcs = image.page_crcs();
    let ram_blocks: Vec<BlockSummary> = image
        .identity()
        .ram_blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (first_page, pages) = layout.block_pages(i);
            let range = to_usize(first_page)..to_usize(first_page + pages);
            BlockSummary {
                name: b.name.clone(),
                length: b.length,
                page_size: b.page_size,
                file_offset: layout.block_offset(i),
                first_page,
                pages,
                zero_pages: crcs[range].iter().filter(|&&c| c == ZERO_PAGE_CRC).count() as u64,
            }
        })
        .collect();
    let sections = image
        .sections()
        .iter()
        .map(|s| SectionSummary {
            kind: s.kind.to_string(),
            number: s.kind.number(),
            required: s.required,
            known: s.kind.is_known(),
            offset: s.offset,
            length: s.length,
            crc32c: s.crc32c,
        })
        .collect();
    let mut warnings = Vec::new();
    let info = image.info().unwrap_or_else(|e| {
        warnings.push(e.to_string());
        None
    });
    let time = match image.time() {
        Ok(t) => t.map(|t| TimeSummary {
            guest_wall_ns: t.guest_wall_ns.get(),
            host_wall_ns: t.host_wall_ns.get(),
            lag_ns: t.lag_ns(),
            virtual_ns: t.virtual_ns.get(),
        }),
        Err(e) => {
            warnings.push(e.to_string());
            None
        }
    };
    let net_frames = image.net_frames().unwrap_or_else(|e| {
        warnings.push(e.to_string());
        None
    });
    Ok(Inspection {
        path: image.path().to_owned(),
        file_size: image.file_len(),
        allocated_bytes: meta.blocks() * 512,
        header: *image.header(),
        sections,
        identity: image.identity().clone(),
        mekha: image.producer().clone(),
        zero_pages: ram_blocks.iter().map(|b| b.zero_pages).sum(),
        ram_blocks,
        total_pages: layout.total_pages(),
        ram_end: layout.ram_end(),
        info,
        time,
        net_frames: net_frames.map(|f| f.summary()),
        warnings,
    })
}
