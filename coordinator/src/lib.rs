// SPDX-License-Identifier: GPL-2.0-or-later
//! The mekha coordinator: drives QEMU VMs patched with mekha over QMP.
//!
//! The `mekha` command-line tool (the binary's `cli` module: arguments,
//! printing, exit codes) is a thin layer over this library; the system
//! tests use the same library to talk to the VMs they boot.

pub mod agent;
pub mod ckpt;
pub mod cluster;
pub mod fault;
pub mod firmware;
pub mod image_key;
pub mod info;
pub mod launch;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod parts;
pub mod qmp;
pub mod schedule;
pub mod spec;
pub mod stall;
pub mod storage;
pub mod tls;
pub mod transport;
