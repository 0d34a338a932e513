// SPDX-License-Identifier: GPL-2.0-or-later
//! Firmware and option ROMs, as a new machine meets them: `mekha up` on a
//! host whose option ROMs are missing (Debian's ipxe-qemu not installed,
//! played by hiding its directory in a private mount namespace) names the
//! file and the package before anything starts; and what mekha expects
//! QEMU to load is what the patched QEMU does load, for command lines as
//! users and libvirt write them.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use mekha_coordinator::firmware;
use mekha_rig::SpecVm;

const IPXE_DIR: &str = "/usr/lib/ipxe/qemu";

#[test]
fn up_names_a_missing_option_rom_and_its_package_before_anything_starts() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("firmware-missing-rom");
    let namespace = format!("mekha-fw-{}", std::process::id());
    let vm = SpecVm {
        name: "node0".into(),
        memory_mib: 128,
        probe_args: vec![],
        serial: dir.join("node0.serial"),
        mac: "52:54:00:7e:00:01".into(),
        host: None,
    };
    let spec = dir.join("cluster.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"fw\"\ncheckpoint_dir = {:?}\nqemu = {:?}\n[network]\nnamespace = {namespace:?}\n{}",
            dir.join("ckpt"),
            artifacts.qemu,
            vm.toml(&artifacts)
        ),
    )
    .unwrap();
    assert!(Path::new(IPXE_DIR).join("efi-virtio.rom").exists(), "ci/deps installs ipxe-qemu");

    // A host without ipxe-qemu: its directory empty, for this command only.
    let script = format!("mount -t tmpfs tmpfs {IPXE_DIR} && exec \"$0\" up --spec \"$1\"");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(&artifacts.mekha)
        .arg(&spec)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mekha up started without the NIC's ROM: {stderr}");
    for expected in ["node0", "efi-virtio.rom", "virtio-net-pci", "ipxe-qemu"] {
        assert!(stderr.contains(expected), "no {expected:?} in the error: {stderr}");
    }
    // Nothing started: no namespace made, no QEMU, no pid file.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(&namespace), "up made the network first");
    assert!(!dir.join("fw.state/node0.pid").exists(), "up started a QEMU");
}

/// The files the patched QEMU loads for `args` (its `load_file` trace),
/// started paused and told to quit.
fn loaded_by_qemu(qemu: &Path, args: &[String]) -> BTreeSet<String> {
    let mut child = Command::new(qemu)
        .args(["-S", "-display", "none", "-monitor", "none", "-qmp", "stdio", "-trace", "load_file"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // QMP is read once the machine (with its ROMs) is built.
    child.stdin.take().unwrap().write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "QEMU {args:?} failed: {stderr}");
    // "load_file name NAME location PATH", after the log backend's prefix.
    stderr
        .lines()
        .filter_map(|l| l.split_once("load_file name ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once(" location ").map(|(name, _)| name.to_owned()))
        .collect()
}

#[test]
fn every_file_mekha_expects_is_one_qemu_loads() {
    let artifacts = common::artifacts();
    let kernel = artifacts.kernel.display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["-accel", "tcg"],
        vec!["-accel", "tcg", "-M", "q35"],
        vec!["-accel", "tcg", "-nodefaults", "-kernel", &kernel],
        vec!["-accel", "tcg", "-nodefaults", "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"],
        // (QXL needs SPICE, which this QEMU is built without.)
        vec!["-accel", "tcg", "-M", "q35", "-nic", "user,model=rtl8139", "-vga", "vmware"],
        vec!["-accel", "tcg", "-netdev", "user,id=n0", "-device", "e1000,netdev=n0,romfile=", "-vga", "none"],
        vec!["-accel", "tcg", "-nodefaults", "-device", r#"{"driver":"virtio-vga","id":"video0"}"#],
        // A -global that drops every virtio NIC's ROM.
        vec!["-accel", "tcg", "-nodefaults", "-global", "virtio-net-pci.romfile=", "-netdev", "user,id=n0"]
            .into_iter()
            .chain(["-device", "virtio-net-pci,netdev=n0"])
            .collect(),
        vec!["-accel", "tcg", "-net", "nic,model=e1000e", "-net", "user", "-device", "cirrus-vga"],
    ];
    for case in cases {
        let args: Vec<String> = case.iter().map(|a| a.to_string()).collect();
        let loaded = loaded_by_qemu(&artifacts.qemu, &args);
        let expected: BTreeSet<String> =
            firmware::needed(&args, firmware::is_bzimage).into_iter().map(|n| n.file).collect();
        assert!(!expected.is_empty(), "{case:?}: mekha expects nothing");
        // mekha may leave files to QEMU (kvmvapic.bin), never expect one
        // QEMU does not load: that would refuse a VM that starts.
        let extra: Vec<&String> = expected.difference(&loaded).collect();
        assert!(extra.is_empty(), "{case:?}: mekha expects {extra:?}, which QEMU does not load (it loads {loaded:?})");
        // And the ROMs of devices and the BIOS are all among them.
        let roms = loaded.iter().filter(|f| f.ends_with(".rom") || f.starts_with("vgabios") || f.starts_with("bios"));
        let missed: Vec<&String> = roms.filter(|f| !expected.contains(*f)).collect();
        assert!(missed.is_empty(), "{case:?}: QEMU loads {missed:?}, which mekha does not check");
    }
}
