// SPDX-License-Identifier: GPL-2.0-or-later
//! `__org.mekha_query-info`: the library and what it sees of the VM.

use serde::{Deserialize, Serialize};

use crate::netcut::Mac;

/// `__org.mekha_Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Info {
    /// The mekha library's version.
    pub version: String,
    /// The library's exact build: source revision and profile, e.g.
    /// `1a2b3c4d5e6f-release`.
    pub build_id: String,
    /// Version of the C boundary between QEMU and the library.
    pub abi_version: u32,
    /// The QEMU the library is linked into, e.g. `10.0.2`.
    pub qemu_version: String,
    /// The VM's `-name`; none when unnamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    /// The machine type, e.g. `pc-i440fx-10.0`.
    pub machine: String,
    /// The accelerator in use, e.g. `tcg` or `kvm`.
    pub accelerator: String,
    /// What the library offers in this process, as probed on this host
    /// (e.g. `io-uring`, `userfaultfd`, `userfaultfd-wp`).
    pub capabilities: Vec<String>,
    /// Bytes of guest RAM in migratable blocks.
    pub ram_size: u64,
    /// The VM's RAM blocks.
    pub ram_blocks: Vec<RamBlockInfo>,
    /// The VM's NICs and what their netdevs have seen (none from a mekha
    /// before 0.3).
    #[serde(default)]
    pub nics: Vec<NicInfo>,
}

/// `__org.mekha_NicInfo`: a NIC, as the network cut needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NicInfo {
    /// The id of the NIC's netdev.
    pub netdev: String,
    /// The NIC's MAC address, as configured.
    pub mac: Mac,
    /// Source MACs of frames that reached the NIC through its netdev
    /// since the machine was built (at most
    /// [`MAX_NEIGHBOURS`](crate::netcut::MAX_NEIGHBOURS), the most recent).
    pub neighbours: Vec<Mac>,
}

/// `__org.mekha_RamBlockInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RamBlockInfo {
    /// QEMU's RAMBlock idstr, e.g. `pc.ram`.
    pub name: String,
    /// Bytes in use by the guest.
    pub size: u64,
    /// Bytes reserved for the block (more than `size` when resizeable).
    pub max_size: u64,
    /// Size of the host pages backing the block, bytes.
    pub page_size: u64,
    /// Whether the block is mapped shared (e.g. `share=on`): copy-on-write
    /// cannot protect it.
    pub shared: bool,
    /// Whether a file or memfd backs the block.
    pub file_backed: bool,
    /// Whether the block is part of the migration stream (and so of an image).
    pub migratable: bool,
}
