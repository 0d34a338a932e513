// SPDX-License-Identifier: GPL-2.0-or-later
//! mekha's checkpoint-restart core: everything that needs no QEMU.
//!
//! Used by the library inside QEMU (`ffi`) and by the coordinator.

pub mod host;
