// SPDX-License-Identifier: GPL-2.0-or-later
//! Images sealed under a cluster key (`mekha key new`, `--key-file`): a
//! two-VM cluster checkpointed and restarted with the key goes on as
//! ever; a page changed in an image with every CRC put right (what anyone
//! who can write the checkpoint directory can do) is restored by a QEMU
//! without the key, and refused by the manifest's MAC, by the image's MAC
//! in QEMU, and by `mekha image verify` with it.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{cluster_job, json_of, mekha_all, reference_checksum, summary_of, wait_mid_exchange};
use common::{CLUSTER_CHUNK as CHUNK, CLUSTER_COMPUTE as COMPUTE};
use mekha_ckpt_core::image::{Image, SectionKind};
use mekha_ckpt_core::session::commands::{QueryRestore, Restore};
use mekha_ckpt_core::session::restore::{self, Status};
use mekha_ckpt_core::width::to_usize;
use mekha_coordinator::cluster::ClusterCheckpoint;
use mekha_coordinator::qmp::{Qmp, QmpError};
use mekha_rig::{Artifacts, Cluster};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(120);
const MSGS: u64 = 300;

fn run(artifacts: &Artifacts, args: &[&str]) -> Output {
    Command::new(&artifacts.mekha).args(args).output().unwrap()
}

/// Changes one non-zero page of `path` and rewrites its CRC, PAGE_CRCS'
/// CRC and the header's: an image every CRC check passes. Returns the
/// new header CRC.
fn forge_page(path: &Path) -> u32 {
    let image = Image::open(path).unwrap();
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut data = vec![0u8; 4096];
    let page = (256..image.layout().total_pages())
        .find(|&p| {
            file.read_exact_at(&mut data, image.page_data_offset(p)).unwrap();
            data.iter().any(|&b| b != 0)
        })
        .expect("a non-zero page");
    data[123] ^= 0x42;
    file.write_all_at(&data, image.page_data_offset(page)).unwrap();
    let crcs = *image.section(SectionKind::PageCrcs).unwrap();
    file.write_all_at(&crc32c(&data).to_le_bytes(), crcs.offset + 4 * page).unwrap();
    let mut table = vec![0u8; to_usize(crcs.length)];
    file.read_exact_at(&mut table, crcs.offset).unwrap();
    let mut header = vec![0u8; 4096];
    file.read_exact_at(&mut header, 0).unwrap();
    let entry = (0..header[24] as usize).map(|i| 64 + 32 * i).find(|&e| header[e] == 2).unwrap();
    header[entry + 24..entry + 28].copy_from_slice(&crc32c(&table).to_le_bytes());
    header[28..32].fill(0);
    let header_crc = crc32c(&header);
    header[28..32].copy_from_slice(&header_crc.to_le_bytes());
    file.write_all_at(&header, 0).unwrap();
    header_crc
}

fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// The outcome of `__org.mekha_restore` of `image` into the incoming
/// QEMU behind `qmp`, with the key if given, left paused: the restore's
/// end, or the command's refusal.
async fn restore_directly(qmp: &Qmp, image: &str, key_hex: Option<&str>) -> Result<restore::Info, QmpError> {
    let mut args = restore::Args { path: image.into(), start: Some(false), ..Default::default() };
    if let Some(hex) = key_hex {
        qmp.execute("object-add", json!({ "qom-type": "secret", "id": "k", "data": hex, "format": "raw" }))
            .await
            .unwrap();
        args.key_secret = Some("k".into());
    }
    qmp.call::<Restore>(&args).await?;
    for _ in 0..600 {
        let state = qmp.call::<QueryRestore>(&Default::default()).await.unwrap();
        if state.status != Status::Loading {
            return Ok(state);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the restore of {image} did not end");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_cluster_restarts_and_a_forged_page_is_refused() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("sealed-images");
    let (images, key, other_key) = (dir.join("images"), dir.join("cluster.key"), dir.join("other.key"));
    for k in [&key, &other_key] {
        let made = run(&artifacts, &["key", "new", k.to_str().unwrap()]);
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    }
    let key_arg = key.to_str().unwrap();
    let mut cluster = Cluster::launch(&artifacts, &dir.join("run1"), &cluster_job(2, MSGS)).unwrap();
    wait_mid_exchange(&cluster.vms.iter().map(|vm| vm.log()).collect::<Vec<_>>(), BOOT);

    let summary: ClusterCheckpoint = summary_of(&mekha_all(
        &artifacts,
        &["checkpoint", "--json", "--key-file", key_arg],
        &cluster.cli_qmp_paths(),
        &images,
    ));
    let manifest: Value = serde_json::from_slice(&std::fs::read(images.join("MANIFEST.json")).unwrap()).unwrap();
    assert!(manifest["mac"].is_string(), "{manifest}");
    for (vm, entry) in summary.vms.iter().zip(manifest["vms"].as_array().unwrap()) {
        assert_eq!(vm.progress.mac.as_deref(), entry["mac"].as_str(), "the manifest records what QEMU sealed");
    }
    let verify = |key: &str| run(&artifacts, &["image", "verify", "--key-file", key, images.to_str().unwrap()]);
    let verified = verify(key_arg);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
    let elsewhere = verify(other_key.to_str().unwrap());
    assert_eq!(elsewhere.status.code(), Some(5), "verified under another key");

    // A restart under the key: pages read and checked, the job goes on.
    cluster.relaunch_incoming(&artifacts, &dir.join("run2")).unwrap();
    for vm in &mut cluster.vms {
        vm.qmp().await.unwrap();
    }
    let restored = json_of(&mekha_all(
        &artifacts,
        &["restore", "--json", "--key-file", key_arg],
        &cluster.cli_qmp_paths(),
        &images,
    ));
    assert_eq!(restored["generation"], 1, "{restored}");
    let state = cluster.vms[1].qmp().await.unwrap().call::<QueryRestore>(&Default::default()).await.unwrap();
    assert_eq!((state.lazy, state.mac.as_deref()), (false, manifest["vms"][1]["mac"].as_str()), "{state:?}");
    let reference = reference_checksum(COMPUTE, CHUNK);
    for vm in &cluster.vms {
        let done = vm.log().wait_for("done", Duration::from_secs(600), |e| e.ev == "done").unwrap();
        assert_eq!(done.json["compute"]["checksum"].as_str(), Some(reference.as_str()), "{}", vm.config.name);
        for link in done.json["net"].as_array().unwrap() {
            assert_eq!((link["lost"].as_u64(), link["corrupt"].as_u64()), (Some(0), Some(0)), "{link}");
        }
    }

    // Someone who can write the directory changes a page of node1 and
    // puts every CRC right, the manifest's record included.
    let node1 = images.join(manifest["vms"][1]["image"].as_str().unwrap());
    let header_crc = forge_page(&node1);
    let mut edited = manifest.clone();
    edited["vms"][1]["header_crc32c"] = header_crc.into();
    std::fs::write(images.join("MANIFEST.json"), serde_json::to_vec(&edited).unwrap()).unwrap();
    let plain = run(&artifacts, &["image", "verify", images.to_str().unwrap()]);
    assert!(plain.status.success(), "the CRCs are meant to be fooled: {}", String::from_utf8_lossy(&plain.stdout));
    let caught = verify(key_arg);
    assert_eq!(caught.status.code(), Some(5), "{}", String::from_utf8_lossy(&caught.stdout));

    cluster.relaunch_incoming(&artifacts, &dir.join("run3")).unwrap();
    for vm in &mut cluster.vms {
        vm.qmp().await.unwrap();
    }
    let refused = mekha_all(&artifacts, &["restore", "--key-file", key_arg], &cluster.cli_qmp_paths(), &images);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("does not match its MAC"), "{stderr}");
    // In QEMU itself (as libvirt would ask it): refused with the key,
    // restored without one.
    let key_hex = std::fs::read_to_string(&key).unwrap();
    let qmp = cluster.vms[1].qmp().await.unwrap();
    let with_key = restore_directly(&qmp, node1.to_str().unwrap(), Some(key_hex.trim())).await;
    let said = match &with_key {
        Ok(state) => state.error.clone().unwrap_or_default(),
        Err(refused) => refused.to_string(),
    };
    assert!(said.contains("was changed after it was written"), "{with_key:?}");
    let qmp = cluster.vms[0].qmp().await.unwrap();
    let node0 = images.join(manifest["vms"][0]["image"].as_str().unwrap());
    let intact = restore_directly(&qmp, node0.to_str().unwrap(), Some(key_hex.trim())).await;
    assert_eq!(intact.as_ref().map(|i| i.status).ok(), Some(Status::Completed), "{intact:?}");
    cluster.relaunch_incoming(&artifacts, &dir.join("run4")).unwrap();
    let qmp = cluster.vms[1].qmp().await.unwrap();
    let without = restore_directly(&qmp, node1.to_str().unwrap(), None).await;
    assert_eq!(
        without.as_ref().map(|i| i.status).ok(),
        Some(Status::Completed),
        "a forged image a CRC cannot tell: {without:?}"
    );
}
