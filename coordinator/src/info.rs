// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha info`: what the mekha library inside a VM's QEMU reports.

use mekha_ckpt_core::session::commands::QueryInfo;
pub use mekha_ckpt_core::session::library::{Info, RamBlockInfo};
use mekha_ckpt_core::session::Empty;

use crate::qmp::{Qmp, QmpError};

/// Asks the VM behind `qmp` for `__org.mekha_query-info`.
pub async fn query(qmp: &Qmp) -> Result<Info, QmpError> {
    qmp.call::<QueryInfo>(&Empty {}).await
}
