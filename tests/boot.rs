// SPDX-License-Identifier: GPL-2.0-or-later
//! One VM on the patched QEMU: mekha's QMP command is in the schema and is
//! answered by the Rust library, which reads the VM through QEMU; the mekha
//! CLI reports the same; the guest probe runs and reports.

mod common;

use std::process::Command;
use std::time::Duration;

use mekha_rig::{Vm, VmConfig};
use serde_json::Value;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn mekha_query_info_is_answered_from_rust() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("boot");
    let mut config = VmConfig::new("boot-1");
    config.memory_mib = 320;
    config.probe_args = [
        "mekha.id=1",
        "probe.mem=16",
        "probe.rate=32",
        "probe.compute=400000000000",
        "probe.compute_chunk=67108864",
        "probe.clock_ms=500",
    ]
    .map(String::from)
    .to_vec();
    let mut vm = Vm::launch(&artifacts, None, &dir, config).unwrap();
    let qmp = vm.qmp().await.unwrap();

    // The command is registered and introspectable.
    let commands = qmp.execute("query-commands", Value::Null).await.unwrap();
    assert!(
        commands.as_array().unwrap().iter().any(|c| c["name"] == "__org.mekha_query-info"),
        "query-commands lacks __org.mekha_query-info: {commands}"
    );
    let schema = qmp.execute("query-qmp-schema", Value::Null).await.unwrap();
    let schema = schema.as_array().unwrap();
    let command = schema
        .iter()
        .find(|e| e["name"] == "__org.mekha_query-info")
        .expect("query-qmp-schema lacks __org.mekha_query-info");
    assert_eq!(command["meta-type"], "command");
    let ret = schema.iter().find(|e| e["name"] == command["ret-type"]).expect("its return type");
    let members: Vec<&str> = ret["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    for m in [
        "version",
        "build-id",
        "abi-version",
        "qemu-version",
        "vm-name",
        "machine",
        "accelerator",
        "capabilities",
        "ram-size",
        "ram-blocks",
    ] {
        assert!(members.contains(&m), "return type lacks member {m}: {members:?}");
    }

    // The answer comes from Rust, which read the VM through QEMU.
    let info = mekha_coordinator::info::query(&qmp).await.unwrap();
    assert_eq!(info.vm_name.as_deref(), Some("boot-1"));
    assert_eq!(info.qemu_version, "10.0.2");
    assert_eq!(info.accelerator, "tcg");
    assert!(info.machine.starts_with("pc-i440fx-"), "machine {}", info.machine);
    assert_eq!(info.abi_version, header_abi_version(), "the library was built from another ffi/include/mekha.h");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert!(!info.build_id.starts_with("unknown"), "build id {}", info.build_id);
    let ram = info.ram_blocks.iter().find(|b| b.name == "pc.ram").expect("pc.ram block");
    assert_eq!(ram.size, 320 * MIB);
    assert!(ram.migratable && !ram.shared && !ram.file_backed);
    let total: u64 = info.ram_blocks.iter().filter(|b| b.migratable).map(|b| b.size).sum();
    assert_eq!(info.ram_size, total);
    assert!(info.capabilities.iter().any(|c| c == "io-uring"), "capabilities {:?}", info.capabilities);

    // The CLI says the same, as JSON.
    // The CLI on the VM's second monitor while the test holds the first.
    let out = Command::new(&artifacts.mekha).args(["info", "--json", "--qmp"]).arg(vm.cli_qmp_path()).output().unwrap();
    assert!(out.status.success(), "mekha info: {}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc[0]["info"]["vm-name"], "boot-1");
    assert_eq!(doc[0]["info"]["ram-size"], info.ram_size);

    // A socket with nothing behind it: exit code 3 and a message.
    let out = Command::new(&artifacts.mekha).args(["info", "--qmp"]).arg(dir.join("nothing.sock")).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing.sock"));

    // The probe boots and works: clocks advance, pages get dirtied, the
    // computation progresses.
    let log = vm.log();
    let boot = Duration::from_secs(120);
    log.wait_for("start", boot, |e| e.ev == "start").unwrap();
    log.wait_for("dirty", boot, |e| e.ev == "dirty" && e.u64("pages_written").unwrap_or(0) > 0).unwrap();
    log.wait_for("second compute", boot, |e| e.ev == "compute" && e.u64("step").unwrap_or(0) >= 2 << 26).unwrap();
    let clocks: Vec<_> = log.events().into_iter().filter(|e| e.ev == "clock").collect();
    assert!(clocks.len() >= 2, "clock samples: {clocks:?}");
    let (a, b) = (&clocks[0], &clocks[clocks.len() - 1]);
    assert!(b.u64("mono_ns") > a.u64("mono_ns") && b.u64("real_ns") > a.u64("real_ns") && b.u64("tsc") > a.u64("tsc"));
    assert!(vm.is_running(), "QEMU died: {}", vm.stderr());
}

/// `MEKHA_ABI_VERSION` of the boundary header in this checkout.
fn header_abi_version() -> u32 {
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ffi/include/mekha.h")).unwrap();
    header
        .lines()
        .find_map(|l| l.strip_prefix("#define MEKHA_ABI_VERSION "))
        .and_then(|v| v.trim().parse().ok())
        .expect("MEKHA_ABI_VERSION in mekha.h")
}
