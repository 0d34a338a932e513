// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha info`: what the mekha library inside a VM's QEMU reports.

use serde::{Deserialize, Serialize};

use crate::qmp::{Qmp, QmpError};

/// `__org.mekha_Info` (qapi/mekha.json in qemu-patches).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Info {
    pub version: String,
    pub build_id: String,
    pub abi_version: u32,
    pub qemu_version: String,
    #[serde(default)]
    pub vm_name: Option<String>,
    pub machine: String,
    pub accelerator: String,
    pub capabilities: Vec<String>,
    pub ram_size: u64,
    pub ram_blocks: Vec<RamBlockInfo>,
}

/// `__org.mekha_RamBlockInfo`.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// Asks the VM behind `qmp` for `__org.mekha_query-info`.
pub async fn query(qmp: &Qmp) -> Result<Info, QmpError> {
    let value = qmp.execute_mekha("query-info", serde_json::Value::Null).await?;
    serde_json::from_value(value).map_err(|e| QmpError::Protocol {
        path: qmp.path().to_path_buf(),
        message: format!("unexpected reply to query-info: {e}"),
    })
}
