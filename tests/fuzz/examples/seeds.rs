// SPDX-License-Identifier: GPL-2.0-or-later
//! Writes the committed seed corpus (`corpus/TARGET/`) from what mekha
//! itself makes: images by its image builder, markers by its store, specs
//! as docs/cli.md writes them, agent lines as the coordinator and the
//! agent encode them.
//!
//! cargo run --manifest-path tests/fuzz/Cargo.toml --example seeds -- tests/fuzz/corpus

use std::fs;
use std::path::{Path, PathBuf};

use mekha_ckpt_core::disk::{DiskIdentity, LayerKind, LayerWriter};
use mekha_ckpt_core::image::{Identity, ImageBuilder, ImageKey, NetFrames, RamBlock, SectionKind, FRAME_RAW};
use mekha_ckpt_core::store::{ManifestVm, Store, MANIFEST, PARTS_MARKER, STORE_ID};
use mekha_ckpt_core::vtime::TimeRecord;
use mekha_coordinator::agent::{Reply, Request};
use mekha_coordinator::qmp::json_line;
use mekha_coordinator::spec::Spec;
use mekha_fuzz::disk_pair::{DiskPair, FIX_HEADER_CRCS, FIX_PARENT_CRC, FIX_TABLE_CRCS};
use mekha_fuzz::sparse_image::{SparseImage, FIX_HEADER_CRC, FIX_SECTION_CRCS};
use serde_json::json;

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: seeds CORPUS_DIR"));
    let scratch = tempfile::tempdir().unwrap();
    images(&out.join("image"), scratch.path());
    disk_layers(&out.join("disk_layer"), scratch.path());
    net_frames(&out.join("net_frames"));
    net_frames_round_trip(&out.join("net_frames_round_trip"));
    store(&out.join("store"), scratch.path());
    let specs = specs(&out.join("spec"), scratch.path());
    agent(&out.join("agent_request"), &out.join("agent_reply"), &specs, scratch.path());
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn block(name: &str, pages: u64) -> RamBlock {
    RamBlock { name: name.into(), length: pages * 4096, page_size: 4096 }
}

/// A parent and a delta over it, of a disk of 6 clusters of 4 KiB and
/// 100 bytes: plain, sealed (under the target's key), and a full layer
/// alone; each as written and with fix-ups on.
fn disk_layers(out: &Path, scratch: &Path) {
    let identity = DiskIdentity {
        node_name: "drive-virtio0".into(),
        device: "vda".into(),
        format: "qcow2".into(),
        virtual_size: 6 * 4096 + 100,
    };
    let key = ImageKey::from_bytes(&[0x6d; 32]);
    let layer = |name: &str, kind: LayerKind, key: Option<&ImageKey>, data: &[(u64, usize)], zeros: &[u64]| {
        let path = scratch.join(name);
        let mut writer = LayerWriter::create(&path, &identity, 4096, kind, key).unwrap();
        for &(offset, len) in data {
            let bytes: Vec<u8> = (0..len).map(|i| (offset as usize / 4096 * 31 + i) as u8 | 1).collect();
            writer.add_data(offset, &bytes).unwrap();
        }
        for &offset in zeros {
            writer.add_zero(offset, 4096).unwrap();
        }
        let summary = writer.finish().unwrap();
        (fs::read(&path).unwrap(), summary.header_crc32c)
    };
    for (name, key) in [("plain", None), ("sealed", Some(&key))] {
        let (parent, crc) = layer("parent.mdisk", LayerKind::Full, key, &[(0, 2 * 4096), (6 * 4096, 100)], &[4096 * 4]);
        let over = LayerKind::Delta { parent: "gen-000001/d.mdisk".into(), parent_header_crc32c: crc };
        let (delta, _) = layer("delta.mdisk", over, key, &[(4096, 4096), (5 * 4096, 4096)], &[0]);
        let mut pair = DiskPair { fixups: 0, parent, layer: delta };
        write(out, &format!("{name}-exact"), &pair.encode());
        pair.fixups = FIX_TABLE_CRCS | FIX_HEADER_CRCS | FIX_PARENT_CRC;
        write(out, &format!("{name}-fixed"), &pair.encode());
    }
    let (full, _) = layer("full.mdisk", LayerKind::Full, None, &[(2 * 4096, 3 * 4096)], &[]);
    write(
        out,
        "full-alone",
        &DiskPair { fixups: FIX_TABLE_CRCS | FIX_HEADER_CRCS, parent: Vec::new(), layer: full }.encode(),
    );
}

fn frames() -> NetFrames {
    let mut f = NetFrames::default();
    f.push("net0", 12, 0, &[0x52; 60]);
    f.push("hub0port1", 0, FRAME_RAW, &[0x33; 42]);
    f.push("net0", 12, 0, &[0x11; 90]);
    f
}

/// Tiny VMs: a few pages in two or three blocks, some written.
fn images(out: &Path, scratch: &Path) {
    let identity = |blocks| Identity {
        vm_name: "node1".into(),
        machine: "pc-i440fx-10.0".into(),
        qemu_version: "10.0.2".into(),
        ram_blocks: blocks,
    };
    let build = |name: &str, identity: Identity, pages: &[u64], full: bool| {
        let path = scratch.join(format!("{name}.mekha"));
        let mut builder = ImageBuilder::create(&path, &identity).unwrap();
        builder.set_build_id("fuzz-seed");
        for &p in pages {
            let data: Vec<u8> = (0..4096).map(|i| (p as usize * 7 + i) as u8 | 1).collect();
            builder.write_page(p, &data).unwrap();
        }
        if full {
            builder.set_time(TimeRecord::new(1_700_000_000_000_000_000, 1_700_000_000_500_000_000, 42_000_000_000));
            builder.set_net_frames(frames());
            builder.add_section(SectionKind::Unknown(99), false, b"from a newer mekha".to_vec());
        }
        let info = json!({ "passes": 3, "mode": "cow" });
        builder.finish(b"QEVM\0\0\0\x03 device state", full.then_some(&info)).unwrap();
        let mut sparse = SparseImage::of_file(&path).unwrap();
        write(out, &format!("{name}-exact"), &sparse.encode());
        // The same with fix-ups on, for mutations to start from.
        sparse.fixups = FIX_SECTION_CRCS | FIX_HEADER_CRC;
        write(out, &format!("{name}-fixed"), &sparse.encode());
    };
    build("full", identity(vec![block("pc.ram", 4), block("vga.vram", 2), block("pc.bios", 1)]), &[0, 3, 4, 6], true);
    build("plain", identity(vec![block("pc.ram", 2)]), &[1], false);
    build("no-ram", identity(vec![]), &[], false);
}

fn net_frames(out: &Path) {
    write(out, "empty", &NetFrames::default().encode());
    write(out, "three", &frames().encode());
    let mut one = NetFrames::default();
    one.push("n", 10, FRAME_RAW, &[0xab, 0xcd]);
    write(out, "one", &one.encode());
}

fn net_frames_round_trip(out: &Path) {
    // Unstructured bytes: counts, ids, lengths and data drawn from them.
    write(out, "ids-and-frames", b"\x02\x04net0\x09hub0port1\x00\x0c\x00\x00\x00\x01\x3c\x00frame-bytes");
    write(out, "one", &[1, 1, b'n', 0, 0, 0, 0, 0, 1, 0, 0, 0, 0xff]);
}

/// Markers as the store writes them: a cluster checkpoint with a part
/// kept on another host, that host's marker, a directory id.
fn store(out: &Path, scratch: &Path) {
    let committer = Store::open(&scratch.join("store-here")).unwrap();
    let host = Store::open(&scratch.join("store-there")).unwrap();
    for number in 1..=2 {
        let generation = committer.begin().unwrap();
        let id = committer.id().unwrap().unwrap();
        assert_eq!(generation.number(), number);
        let keep: Vec<u64> = committer.latest().unwrap().map(|m| m.generation).into_iter().collect();
        let part = host.begin_part(number, &keep, "login1", &id).unwrap();
        let local = image_in(generation.path(), "a");
        image_in(&part, "b");
        let sealed: Vec<ManifestVm> = host
            .seal_part(number, &["b".into()])
            .unwrap()
            .into_iter()
            .map(|vm| ManifestVm { host: Some("n1:7441".into()), ..vm })
            .collect();
        generation.commit_with_parts(&[("a", local)], sealed).unwrap();
    }
    let with_selector = |selector: u8, file: &Path| [vec![selector], fs::read(file).unwrap()].concat();
    write(out, "manifest", &with_selector(0, &committer.dir().join(MANIFEST)));
    write(out, "parts", &with_selector(1, &host.dir().join(PARTS_MARKER)));
    write(out, "parts-before-ids", &[b"\x01".as_slice(), br#"{"committer":"login1"}"#].concat());
    write(out, "id", &with_selector(2, &committer.dir().join(STORE_ID)));
    // A seal's answer for generation 5, the next one of the target's directory.
    let id = committer.id().unwrap().unwrap();
    let part = host.begin_part(5, &[2], "login1", &id).unwrap();
    image_in(&part, "b");
    let sealed = host.seal_part(5, &["b".into()]).unwrap();
    write(out, "sealed-parts", &[vec![3], serde_json::to_vec(&sealed).unwrap()].concat());
}

fn image_in(dir: &Path, vm: &str) -> PathBuf {
    let path = dir.join(format!("{vm}.mekha"));
    let identity = Identity {
        vm_name: vm.into(),
        machine: "pc".into(),
        qemu_version: "10.0.2".into(),
        ram_blocks: vec![block("pc.ram", 1)],
    };
    ImageBuilder::create(&path, &identity).unwrap().finish(b"state", None).unwrap();
    path
}

/// The spec of docs/cli.md ("Cluster spec"), with more options set.
const README_SPEC: &str = r#"name = "job42"
checkpoint_dir = "/scratch/job42/ckpt"
state_dir = "/run/mekha/job42"
qemu = "/usr/bin/qemu-system-x86_64"
tls_dir = "/etc/mekha/tls"

[network]
namespace = "job42"
bridge = "br0"

[checkpoint]
mode = "auto"
time_budget_ms = 10000
staging_mib = 512
lease_ms = 5000
persist_concurrency = 2

[restore]
time = "catch-up"
catch_up_ppm = 50000

[[vm]]
name = "node0"
args = ["-accel", "kvm", "-m", "4096", "-drive", "file=node0.img,if=virtio,readonly=on"]
nic = { mac = "52:54:00:00:00:10" }

[[vm]]
name = "node1"
args = ["-accel", "kvm", "-m", "4096"]
nic = { mac = "52:54:00:00:00:11", model = "e1000" }
host = "n1"

[[host]]
name = "n1"
agent = "n1:7441"
"#;

const SMALL_SPEC: &str = r#"name = "j"
checkpoint_dir = "ckpt"
[[vm]]
name = "a"
"#;

/// Returns the specs, loaded.
fn specs(out: &Path, scratch: &Path) -> Vec<Spec> {
    let mut loaded = Vec::new();
    for (name, text) in [("readme", README_SPEC), ("small", SMALL_SPEC)] {
        write(out, name, text.as_bytes());
        let path = scratch.join(format!("{name}.toml"));
        fs::write(&path, text).unwrap();
        loaded.push(Spec::load(&path).unwrap());
    }
    loaded
}

fn agent(requests: &Path, replies: &Path, specs: &[Spec], scratch: &Path) {
    let dir = PathBuf::from("/scratch/job42/ckpt");
    let part = specs[0].parts().pop().unwrap().1;
    let lines = [
        ("storage", Request::Storage { dir: dir.clone() }),
        ("launch", Request::Launch { spec: Box::new(part.clone()), incoming: true }),
        ("stop", Request::Stop { spec: Box::new(part.clone()), grace_ms: 5000, network: true }),
        ("status", Request::Status { spec: Box::new(specs[1].clone()) }),
        ("qmp", Request::Qmp { socket: "/run/mekha/job42/n1/node1.qmp".into() }),
        (
            "part-begin",
            Request::PartBegin {
                dir: dir.clone(),
                generation: 8,
                keep: vec![7],
                committer: "login1".into(),
                cluster: "4f1c0e0a9d3b2c1d0e0f101112131415".into(),
            },
        ),
        ("part-seal", Request::PartSeal { dir: dir.clone(), generation: 8, vms: vec!["node1".into()] }),
        ("part-abort", Request::PartAbort { dir: dir.clone(), generation: 8 }),
        ("part-check", Request::PartCheck { dir: dir.clone(), generation: 8, vms: vec![sealed_entry()] }),
    ];
    for (name, request) in lines {
        write(requests, name, &json_line(&request));
    }
    let storage = mekha_coordinator::storage::probe(scratch).unwrap();
    for (name, reply) in [
        ("null", Reply::Ok(json!(null))),
        ("error", Reply::Error("checkpoint directory /x is in use".into())),
        ("sealed", Reply::Ok(json!([sealed_entry()]))),
        ("storage", Reply::Ok(json!(storage))),
        ("pids", Reply::Ok(json!({ "node0": 4242, "node1": null }))),
    ] {
        write(replies, name, &json_line(&reply));
    }
}

fn sealed_entry() -> ManifestVm {
    ManifestVm {
        name: "node1".into(),
        image: "gen-000008/node1.mekha".into(),
        size: 2_113_536,
        header_crc32c: 0x1234_5678,
        host: None,
        mac: None,
    }
}
