// SPDX-License-Identifier: GPL-2.0-or-later
//! `__org.mekha_query-info`: the library and what it sees of the VM.

use serde::{Deserialize, Serialize};

/// `__org.mekha_Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Info {
    pub version: String,
    pub build_id: String,
    pub abi_version: u32,
    pub qemu_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    pub machine: String,
    pub accelerator: String,
    pub capabilities: Vec<String>,
    pub ram_size: u64,
    pub ram_blocks: Vec<RamBlockInfo>,
}

/// `__org.mekha_RamBlockInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RamBlockInfo {
    pub name: String,
    pub size: u64,
    pub max_size: u64,
    pub page_size: u64,
    pub shared: bool,
    pub file_backed: bool,
    pub migratable: bool,
}
