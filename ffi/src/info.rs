// SPDX-License-Identifier: GPL-2.0-or-later
//! `__org.mekha_query-info`: the library and what it sees of the VM.

use mekha_ckpt_core::session::library::{Info, RamBlockInfo};

use crate::{boundary, qemu};

pub(crate) fn query_info() -> Info {
    let id = qemu::vm_identity();
    let blocks = qemu::ram_blocks();
    Info {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        build_id: env!("MEKHA_BUILD_ID").to_owned(),
        abi_version: boundary::MEKHA_ABI_VERSION,
        qemu_version: id.qemu_version,
        vm_name: id.vm_name,
        machine: id.machine,
        accelerator: id.accelerator,
        capabilities: mekha_ckpt_core::host::Capabilities::probe().names().into_iter().map(str::to_owned).collect(),
        ram_size: blocks.iter().filter(|b| b.migratable).map(|b| b.used_length).sum(),
        ram_blocks: blocks
            .into_iter()
            .map(|b| RamBlockInfo {
                name: b.name,
                size: b.used_length,
                max_size: b.max_length,
                page_size: b.page_size,
                shared: b.shared,
                file_backed: b.file_backed,
                migratable: b.migratable,
            })
            .collect(),
        // SAFETY: QMP handlers run in the main loop with the BQL held.
        nics: crate::net_cut::nics(unsafe { &qemu::Bql::assume_held() }),
    }
}
