// SPDX-License-Identifier: GPL-2.0-or-later
//! The guest's RAM as a checkpoint sees it: the migratable RAM blocks in
//! QEMU's order, their host memory, and one global page numbering matching
//! the image layout.

use std::ffi::CString;

use mekha_ckpt_core::cow::Region;
use mekha_ckpt_core::image::{Identity, Layout, RamBlock as ImageRamBlock};
use mekha_ckpt_core::session::{Error, Result};
use mekha_ckpt_core::width::{page_bytes, to_usize};
use mekha_ckpt_core::PAGE_SIZE;

use crate::qemu::{self, Bql};

struct Block {
    name: CString,
    host: usize,
    /// Private anonymous memory (not shared, not file-backed).
    anonymous: bool,
    pages: u64,
    first_page: u64,
}

/// The RAM blocks a checkpoint copies or a restore fills.
pub(crate) struct GuestRam {
    blocks: Vec<Block>,
    layout: Layout,
    identity: Identity,
}

impl GuestRam {
    /// Reads QEMU's RAM blocks now (BQL held: the block list is stable).
    pub(crate) fn current(_bql: &Bql) -> Result<GuestRam> {
        let id = qemu::vm_identity();
        let qemu_blocks: Vec<_> = qemu::ram_blocks().into_iter().filter(|b| b.migratable).collect();
        if qemu_blocks.is_empty() {
            return Err(Error::unsupported("the VM has no migratable RAM"));
        }
        for b in &qemu_blocks {
            if b.used_length % PAGE_SIZE as u64 != 0 {
                return Err(Error::unsupported(format!("RAM block {} is not a whole number of pages", b.name)));
            }
        }
        let image_blocks: Vec<ImageRamBlock> = qemu_blocks
            .iter()
            .map(|b| ImageRamBlock { name: b.name.clone(), length: b.used_length, page_size: b.page_size })
            .collect();
        let layout = Layout::new(&image_blocks);
        let blocks = qemu_blocks
            .iter()
            .enumerate()
            .map(|(i, b)| Block {
                name: CString::new(b.name.as_str()).expect("idstr has no NUL"),
                host: b.host,
                anonymous: !b.shared && !b.file_backed,
                pages: b.used_length / PAGE_SIZE as u64,
                first_page: layout.block_pages(i).0,
            })
            .collect();
        let identity = Identity {
            vm_name: id.vm_name.unwrap_or_default(),
            machine: id.machine,
            qemu_version: id.qemu_version,
            ram_blocks: image_blocks,
        };
        Ok(GuestRam { blocks, layout, identity })
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn total_pages(&self) -> u64 {
        self.layout.total_pages()
    }

    /// Host memory of global page `page`.
    pub(crate) fn page_ptr(&self, page: u64) -> *const u8 {
        let (block, index) = self.layout.locate(page);
        (self.blocks[block].host + page_bytes(index)) as *const u8
    }

    /// Host memory of block `block` and its length in bytes.
    pub(crate) fn block_memory(&self, block: usize) -> (*mut u8, usize) {
        let b = &self.blocks[block];
        (b.host as *mut u8, page_bytes(b.pages))
    }

    /// Whether block `block` is private anonymous memory.
    pub(crate) fn block_is_anonymous(&self, block: usize) -> bool {
        self.blocks[block].anonymous
    }

    /// Guest RAM for copy-on-write capture: every block, provided all are
    /// private anonymous memory (write protection does not see writes
    /// made through another mapping of shared memory, e.g. vhost-user's).
    pub(crate) fn write_protect_regions(&self) -> Result<Vec<Region>> {
        if let Some(b) = self.blocks.iter().find(|b| !b.anonymous) {
            return Err(Error::unsupported(format!(
                "RAM block {} is shared or file-backed: write protection would miss writes through its other mappings",
                b.name.to_string_lossy()
            )));
        }
        Ok(self
            .blocks
            .iter()
            .map(|b| Region { host: b.host as *mut u8, pages: b.pages, first_page: b.first_page })
            .collect())
    }

    pub(crate) fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Pulls the dirty log and fetches-and-clears every block's bits into
    /// one global bitmap (bit = page written since the previous call).
    pub(crate) fn sync_dirty(&self, bql: &Bql, bitmap: &mut Vec<u64>) -> Result<()> {
        bitmap.clear();
        bitmap.resize(to_usize(self.total_pages().div_ceil(64)), 0);
        qemu::ckpt::dirty_log_sync(bql);
        let mut scratch = Vec::new();
        for b in &self.blocks {
            scratch.clear();
            scratch.resize(to_usize(b.pages.div_ceil(64)), 0u64);
            qemu::ckpt::dirty_log_fetch(bql, &b.name, &mut scratch, b.pages)?;
            or_bits_at(bitmap, &scratch, b.first_page, b.pages);
        }
        Ok(())
    }
}

/// ORs `src` (bits 0..len) into `dst` starting at bit `at`.
fn or_bits_at(dst: &mut [u64], src: &[u64], at: u64, len: u64) {
    if at.is_multiple_of(64) {
        let start = (at / 64) as usize;
        let words = to_usize(len.div_ceil(64));
        for (i, (d, s)) in dst[start..].iter_mut().zip(&src[..words]).enumerate() {
            // Bits past `len` in the last word belong to the next block.
            let valid = if (i + 1) * 64 > to_usize(len) { (1u64 << (len % 64)) - 1 } else { !0 };
            *d |= *s & valid;
        }
        return;
    }
    for i in 0..len {
        if src[(i / 64) as usize] >> (i % 64) & 1 != 0 {
            let bit = at + i;
            dst[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }
}
