// SPDX-License-Identifier: GPL-2.0-or-later
//! `__org.mekha_query-info`: the library and what it sees of the VM.

use serde::Serialize;

use crate::{boundary, qemu};

/// Reply of `__org.mekha_query-info` (qapi/mekha.json, `__org.mekha_Info`).
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Info {
    version: &'static str,
    build_id: &'static str,
    abi_version: u32,
    qemu_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    vm_name: Option<String>,
    machine: String,
    accelerator: String,
    capabilities: Vec<&'static str>,
    ram_size: u64,
    ram_blocks: Vec<RamBlockInfo>,
}

/// `__org.mekha_RamBlockInfo`.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct RamBlockInfo {
    name: String,
    size: u64,
    max_size: u64,
    page_size: u64,
    shared: bool,
    file_backed: bool,
    migratable: bool,
}

pub(crate) fn query_info() -> Info {
    let id = qemu::vm_identity();
    let blocks = qemu::ram_blocks();
    Info {
        version: env!("CARGO_PKG_VERSION"),
        build_id: env!("MEKHA_BUILD_ID"),
        abi_version: boundary::MEKHA_ABI_VERSION,
        qemu_version: id.qemu_version,
        vm_name: id.vm_name,
        machine: id.machine,
        accelerator: id.accelerator,
        capabilities: mekha_ckpt_core::host::Capabilities::probe().names(),
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
    }
}
