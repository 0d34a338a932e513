// SPDX-License-Identifier: GPL-2.0-or-later
//! Exit codes of the `mekha` tool, stable for batch schedulers' scripts.

/// Success.
pub const OK: i32 = 0;
/// Any failure not covered below.
pub const FAILURE: i32 = 1;
/// Bad command line (clap's own code).
pub const USAGE: i32 = 2;
/// A VM could not be reached over QMP.
pub const UNREACHABLE: i32 = 3;
/// A VM's QEMU does not have the mekha patches.
pub const NOT_MEKHA: i32 = 4;
/// An image or checkpoint is damaged (`mekha image verify`/`inspect`).
pub const DAMAGED: i32 = 5;
