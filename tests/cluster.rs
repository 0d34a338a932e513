// SPDX-License-Identifier: GPL-2.0-or-later
//! Three VMs on a bridge inside a network namespace: the probes exchange
//! sequenced, checksummed TCP and UDP messages with every peer and compute
//! the same deterministic result; each VM's mekha library answers over QMP.

mod common;

use std::time::Duration;

use mekha_rig::{Cluster, ClusterConfig};

const MSGS: u64 = 150;
const VMS: usize = 3;

#[tokio::test(flavor = "multi_thread")]
async fn three_vms_exchange_tcp_and_udp_without_loss() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("cluster");
    let config = ClusterConfig {
        vms: VMS,
        memory_mib: 256,
        probe_args: [
            format!("probe.msgs={MSGS}"),
            "probe.msg_interval_ms=20".into(),
            "probe.compute=300000000".into(),
            "probe.compute_chunk=67108864".into(),
            "probe.mem=8".into(),
            "probe.rate=16".into(),
        ]
        .to_vec(),
    };
    let mut cluster = Cluster::launch(&artifacts, &dir, &config).unwrap();

    for (i, vm) in cluster.vms.iter_mut().enumerate() {
        let qmp = vm.qmp().await.unwrap();
        let info = mekha_coordinator::info::query(&qmp).await.unwrap();
        assert_eq!(info.vm_name, Some(format!("node{i}")));
    }

    let mut checksums = Vec::new();
    for vm in &cluster.vms {
        let done = vm.log().wait_for("done", Duration::from_secs(240), |e| e.ev == "done").unwrap();
        let net = done.json["net"].as_array().expect("net summary");
        // One stream per peer and protocol.
        assert_eq!(net.len(), 2 * (VMS - 1), "{}: {net:?}", vm.config.name);
        for link in net {
            for counter in ["lost", "dup", "reordered", "corrupt"] {
                assert_eq!(link[counter], 0, "{}: {counter} in {link}", vm.config.name);
            }
            assert_eq!(link["received"], MSGS, "{}: {link}", vm.config.name);
            assert_eq!(link["sent"], MSGS, "{}: {link}", vm.config.name);
        }
        assert_eq!(done.json["compute"]["done"], true);
        checksums.push(done.json["compute"]["checksum"].as_str().unwrap().to_owned());
        let anomalies: Vec<_> = vm.log().events().into_iter().filter(|e| e.ev == "net_anomaly").collect();
        assert!(anomalies.is_empty(), "{}: {anomalies:?}", vm.config.name);
    }
    // Same computation, same result, on every VM.
    assert!(checksums.windows(2).all(|w| w[0] == w[1]), "checksums differ: {checksums:?}");
    for vm in &mut cluster.vms {
        assert!(vm.is_running(), "{} died: {}", vm.config.name, vm.stderr());
    }
}
