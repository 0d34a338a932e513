// SPDX-License-Identifier: GPL-2.0-or-later
//! A reply line as the coordinator reads it (`Reply::from_line`), and its
//! value as each request's caller reads it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mekha_ckpt_core::store::ManifestVm;
use mekha_coordinator::agent::Reply;
use mekha_coordinator::storage::StorageReport;

fuzz_target!(|data: &[u8]| {
    let Ok(Reply::Ok(value)) = Reply::from_line(data) else { return };
    // A seal's entries, a storage report, a status's pids.
    let _ = serde_json::from_value::<Vec<ManifestVm>>(value.clone());
    let _ = serde_json::from_value::<StorageReport>(value.clone());
    let _ = value["node0"].as_i64();
});
