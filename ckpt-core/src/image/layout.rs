// SPDX-License-Identifier: GPL-2.0-or-later
//! Where each guest page lives in an image file.
//!
//! Pages have fixed offsets, like QEMU's mapped-ram: a page copied again
//! overwrites its earlier copy, so an image never grows past guest RAM plus
//! alignment, however many passes a checkpoint makes. Each RAM block's data
//! starts on a [`BLOCK_ALIGN`] boundary so that a restore can map it straight
//! into the guest (`mmap(MAP_FIXED|MAP_PRIVATE)` wants file offsets aligned
//! to the host page size; 2 MiB also lets the kernel use huge pages).
//!
//! Pages are numbered globally: block 0's pages first, then block 1's, in
//! the identity's block order.

use serde::{Deserialize, Serialize};

use crate::PAGE_SIZE;

/// Alignment of each RAM block's data in the file.
pub const BLOCK_ALIGN: u64 = 2 << 20;
/// The first RAM block's data starts here; the header sits before it.
pub const RAM_START: u64 = BLOCK_ALIGN;

/// A guest RAM block as recorded in an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamBlock {
    /// QEMU's RAMBlock idstr, e.g. `pc.ram`.
    pub name: String,
    /// Bytes in use (a multiple of [`PAGE_SIZE`]).
    pub length: u64,
    /// Host page size backing the block in the checkpointed QEMU.
    pub page_size: u64,
}

/// What a restore must match: the VM the image was taken from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// QEMU `-name` (empty when unnamed).
    pub vm_name: String,
    /// Machine type, e.g. `pc-i440fx-10.0`.
    pub machine: String,
    /// The QEMU that ran the VM, e.g. `10.0.2`; a restore tolerates
    /// another one when the machine type is the same.
    pub qemu_version: String,
    /// The guest's RAM blocks, in QEMU's order: the order fixes where each
    /// block's pages are in the file ([`Layout`]).
    pub ram_blocks: Vec<RamBlock>,
}

/// Offsets of every RAM block's data, derived from the identity alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    blocks: Vec<BlockPlace>,
    ram_end: u64,
    total_pages: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockPlace {
    data_offset: u64,
    first_page: u64,
    pages: u64,
}

impl Layout {
    /// The layout of `blocks`, in their order: block 0 at [`RAM_START`],
    /// each next one at the previous one's end rounded up to
    /// [`BLOCK_ALIGN`]. The caller checks the blocks first
    /// ([`check_identity`](super::format::check_identity)) so that no
    /// offset overflows.
    pub fn new(blocks: &[RamBlock]) -> Layout {
        let mut offset = RAM_START;
        let mut first_page = 0;
        let blocks = blocks
            .iter()
            .map(|b| {
                let pages = b.length.div_ceil(PAGE_SIZE as u64);
                let place = BlockPlace { data_offset: offset, first_page, pages };
                offset = (offset + pages * PAGE_SIZE as u64).next_multiple_of(BLOCK_ALIGN);
                first_page += pages;
                place
            })
            .collect();
        Layout { blocks, ram_end: offset, total_pages: first_page }
    }

    /// Pages of all blocks together.
    pub fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// End of the RAM data (aligned); metadata sections follow it.
    pub fn ram_end(&self) -> u64 {
        self.ram_end
    }

    /// File offset of block `block`'s data.
    pub fn block_offset(&self, block: usize) -> u64 {
        self.blocks[block].data_offset
    }

    /// Global index of block `block`'s first page, and its page count.
    pub fn block_pages(&self, block: usize) -> (u64, u64) {
        (self.blocks[block].first_page, self.blocks[block].pages)
    }

    /// The block holding global page `page` and the page's index in it.
    pub fn locate(&self, page: u64) -> (usize, u64) {
        let block = self.blocks.partition_point(|b| b.first_page + b.pages <= page);
        assert!(block < self.blocks.len(), "page {page} beyond the image's {} pages", self.total_pages);
        (block, page - self.blocks[block].first_page)
    }

    /// File offset of global page `page`.
    pub fn page_offset(&self, page: u64) -> u64 {
        let (block, index) = self.locate(page);
        self.blocks[block].data_offset + index * PAGE_SIZE as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(name: &str, length: u64) -> RamBlock {
        RamBlock { name: name.into(), length, page_size: 4096 }
    }

    #[test]
    fn blocks_are_aligned_and_pages_numbered_globally() {
        let l = Layout::new(&[block("pc.ram", 3 << 20), block("vga.vram", 8192), block("pc.bios", 256 << 10)]);
        assert_eq!(l.block_offset(0), RAM_START);
        assert_eq!(l.block_offset(1), RAM_START + (4 << 20));
        assert_eq!(l.block_offset(2), RAM_START + (6 << 20));
        assert_eq!(l.total_pages(), 768 + 2 + 64);
        assert_eq!(l.locate(767), (0, 767));
        assert_eq!(l.locate(768), (1, 0));
        assert_eq!(l.locate(770), (2, 0));
        assert_eq!(l.page_offset(769), RAM_START + (4 << 20) + 4096);
        assert_eq!(l.ram_end(), RAM_START + (8 << 20));
    }
}
