// SPDX-License-Identifier: GPL-2.0-or-later
//! mekha's checkpoint-restart core: everything that needs no QEMU.
//!
//! Used by the library inside QEMU (`ffi`) and by the coordinator.
//!
//! - [`image`]: the on-disk image format of one VM (versioned headers,
//!   sections, a CRC32C per page and per section), its layout, reading,
//!   inspecting and verifying.
//! - [`disk`]: disk layer files (a writable disk's clusters at a
//!   checkpoint, full or a delta over a parent), chains of them, verify,
//!   inspect and merge.
//! - [`store`]: a checkpoint directory: generations and the atomically
//!   committed manifest.
//! - [`netcut`]: the network cut of a cluster checkpoint, by markers.
//! - [`mtd`]: the MTD planner (dirty and non-dirty page sets, epochs,
//!   multiplexed transfer cycles, ending conditions).
//! - [`staging`]: the in-memory staging area with its hard memory budget.
//! - [`uring`]: the io_uring writer.
//! - [`persist`]: staging drained through the writer into an image.
//! - [`cow`]: copy-on-write capture through userfaultfd write protection.
//! - [`host`]: kernel facilities of this host.
//! - [`vtime`]: time virtualization: the TIME record and offset math.
//! - [`width`]: conversions between the integer widths the code mixes.

// The crate the library and the coordinator build on: every public item
// says what it is (CI's clippy run makes this an error).
#![warn(missing_docs)]

pub mod cow;
pub mod disk;
pub mod host;
pub mod image;
pub mod instant;
pub mod mtd;
pub mod netcut;
pub mod persist;
pub mod private;
pub mod session;
pub mod staging;
pub mod store;
#[cfg(test)]
mod test_rng;
pub mod uring;
pub mod vtime;
pub mod width;

/// Guest page size mekha tracks and stores (x86 base page).
pub const PAGE_SIZE: usize = 4096;

/// Whether a page is all zeros: the first word alone (most non-zero pages
/// differ there), then 64-byte blocks of ORed words, which the compiler
/// vectorizes; unaligned pages are fine.
#[inline]
pub fn page_is_zero(page: &[u8; PAGE_SIZE]) -> bool {
    let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().expect("8 bytes"));
    word(&page[..8]) == 0
        && page.chunks_exact(64).all(|block| block.chunks_exact(8).fold(0, |acc, w| acc | word(w)) == 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_pages_are_told_apart() {
        let mut page = [0u8; super::PAGE_SIZE];
        assert!(super::page_is_zero(&page));
        for at in [0, 7, 8, 2049, 4095] {
            page[at] = 1;
            assert!(!super::page_is_zero(&page), "byte {at}");
            page[at] = 0;
        }
    }
}
