// SPDX-License-Identifier: GPL-2.0-or-later
//! mekha's checkpoint-restart core: everything that needs no QEMU.
//!
//! Used by the library inside QEMU (`ffi`) and by the coordinator.
//!
//! - [`image`]: the on-disk image format of one VM (versioned headers,
//!   sections, a CRC32C per page and per section), its layout, reading,
//!   inspecting and verifying.
//! - [`store`]: a checkpoint directory: generations and the atomically
//!   committed manifest.
//! - [`mtd`]: the MTD planner (dirty and non-dirty page sets, epochs,
//!   multiplexed transfer cycles, ending conditions).
//! - [`staging`]: the in-memory staging area with its hard memory budget.
//! - [`uring`]: the io_uring writer.
//! - [`persist`]: staging drained through the writer into an image.
//! - [`host`]: kernel facilities of this host.

pub mod host;
pub mod image;
pub mod mtd;
pub mod persist;
pub mod staging;
pub mod store;
pub mod uring;

/// Guest page size mekha tracks and stores (x86 base page).
pub const PAGE_SIZE: usize = 4096;
