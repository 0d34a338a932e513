// SPDX-License-Identifier: GPL-2.0-or-later
//! Which NICs of a cluster share an Ethernet segment, and so whose
//! markers each VM waits for in a checkpoint's network cut
//! (`mekha_ckpt_core::netcut`).
//!
//! The coordinator cannot see the network: bridges, a veth or a VXLAN
//! between hosts, VLANs. The VMs' QEMUs can: each NIC reports the source
//! MACs its frames came from since the machine was built (its guest's ARP
//! and neighbour discovery at boot, its traffic, the markers of earlier
//! checkpoints). Two NICs of the cluster are on one segment when either
//! saw the other, or both are on one segment with a third: the segments
//! are the connected parts of the "saw" relation, so that a frame seen in
//! one direction only, or not at all between two VMs that talk through a
//! third, still puts them together. A NIC that no other NIC of the
//! cluster has seen, and that has seen none, is alone: it waits for no
//! marker, and none waits for its.

use std::collections::HashMap;

use mekha_ckpt_core::netcut::{Mac, NetdevPeers};
use mekha_ckpt_core::session::library::NicInfo;

/// Per VM (in the order of `nics`), each NIC's peers on its segment;
/// `names` names the VMs for errors. Two NICs of the cluster with one MAC
/// are refused: their frames cannot be told apart.
pub(super) fn peers(names: &[String], nics: &[Vec<NicInfo>]) -> Result<Vec<Vec<NetdevPeers>>, String> {
    // Every NIC of the cluster, by MAC.
    let all: Vec<(usize, &NicInfo)> =
        nics.iter().enumerate().flat_map(|(vm, n)| n.iter().map(move |nic| (vm, nic))).collect();
    let mut by_mac: HashMap<Mac, usize> = HashMap::new();
    for (i, (vm, nic)) in all.iter().enumerate() {
        if nic.mac == Mac::default() {
            continue;
        }
        if let Some(&j) = by_mac.get(&nic.mac) {
            let (other_vm, other) = all[j];
            return Err(format!(
                "{} (netdev {}) and {} (netdev {}) have one MAC address, {}: the network cut cannot tell their \
                 frames apart; give each NIC its own MAC",
                names[other_vm], other.netdev, names[*vm], nic.netdev, nic.mac
            ));
        }
        by_mac.insert(nic.mac, i);
    }
    let mut segments = Segments::new(all.len());
    for (i, (_, nic)) in all.iter().enumerate() {
        for seen in nic.neighbours.iter().filter_map(|mac| by_mac.get(mac)) {
            segments.join(i, *seen);
        }
    }
    let mut out: Vec<Vec<NetdevPeers>> = vec![Vec::new(); nics.len()];
    // A NIC without a MAC (none is ever on a segment) has no peers.
    for (i, (vm, nic)) in all.iter().enumerate().filter(|(_, (_, nic))| by_mac.contains_key(&nic.mac)) {
        let mut macs: Vec<Mac> = (0..all.len())
            .filter(|&j| j != i && by_mac.contains_key(&all[j].1.mac) && segments.same(i, j))
            .map(|j| all[j].1.mac)
            .collect();
        macs.sort_unstable();
        if !macs.is_empty() {
            out[*vm].push(NetdevPeers { netdev: nic.netdev.clone(), macs });
        }
    }
    Ok(out)
}

/// Whose NIC each MAC of the cluster is, to name them in errors.
#[derive(Debug, Default)]
pub(super) struct NicNames(Vec<(Mac, String)>);

impl NicNames {
    /// The NICs of `nics`, per VM named by `names`.
    pub(super) fn new(names: &[String], nics: &[Vec<NicInfo>]) -> NicNames {
        let all = names.iter().zip(nics).flat_map(|(vm, n)| n.iter().map(move |nic| (vm, nic)));
        NicNames(all.map(|(vm, nic)| (nic.mac, format!("{vm}'s netdev {}", nic.netdev))).collect())
    }

    /// `message` with the NICs whose MACs it names told by name.
    pub(super) fn explain(&self, message: &str) -> String {
        let named: Vec<String> = self
            .0
            .iter()
            .filter(|(mac, _)| message.contains(&mac.to_string()))
            .map(|(mac, nic)| format!("{mac} is {nic}"))
            .collect();
        if named.is_empty() {
            message.to_owned()
        } else {
            format!("{message} ({})", named.join(", "))
        }
    }
}

/// Disjoint sets of NICs (union-find, by index).
struct Segments {
    parent: Vec<usize>,
}

impl Segments {
    fn new(n: usize) -> Segments {
        Segments { parent: (0..n).collect() }
    }

    fn root(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.root(a), self.root(b));
        self.parent[a] = b;
    }

    fn same(&mut self, a: usize, b: usize) -> bool {
        self.root(a) == self.root(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    fn nic(netdev: &str, own: u8, seen: &[u8]) -> NicInfo {
        NicInfo { netdev: netdev.into(), mac: mac(own), neighbours: seen.iter().map(|&n| mac(n)).collect() }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("vm{i}")).collect()
    }

    fn of(netdev: &str, macs: &[u8]) -> NetdevPeers {
        NetdevPeers { netdev: netdev.into(), macs: macs.iter().map(|&n| mac(n)).collect() }
    }

    #[test]
    fn nics_that_saw_each_other_one_way_or_through_a_third_share_a_segment() {
        // vm0 saw vm1 (not back); vm2 saw vm1; vm0's second NIC is on a
        // segment of its own with a gateway (0x99) outside the cluster.
        let nics = vec![
            vec![nic("net0", 1, &[2]), nic("mgmt", 11, &[0x99])],
            vec![nic("net0", 2, &[])],
            vec![nic("net0", 3, &[2, 0x99])],
        ];
        let peers = peers(&names(3), &nics).unwrap();
        assert_eq!(peers[0], vec![of("net0", &[2, 3])]);
        assert_eq!(peers[1], vec![of("net0", &[1, 3])]);
        assert_eq!(peers[2], vec![of("net0", &[1, 2])]);
    }

    #[test]
    fn two_segments_stay_apart() {
        let nics = vec![vec![nic("a", 1, &[2]), nic("b", 11, &[12])], vec![nic("a", 2, &[1]), nic("b", 12, &[11])]];
        let peers = peers(&names(2), &nics).unwrap();
        assert_eq!(peers[0], vec![of("a", &[2]), of("b", &[12])]);
        assert_eq!(peers[1], vec![of("a", &[1]), of("b", &[11])]);
    }

    #[test]
    fn a_nic_nobody_saw_waits_for_no_marker() {
        let nics = vec![vec![nic("net0", 1, &[])], vec![nic("net0", 2, &[])]];
        assert_eq!(peers(&names(2), &nics).unwrap(), vec![Vec::new(), Vec::new()]);
    }

    #[test]
    fn errors_naming_macs_are_told_whose_nics_they_are() {
        let nics = vec![vec![nic("net0", 1, &[])], vec![nic("net0", 2, &[])]];
        let names = NicNames::new(&names(2), &nics);
        assert_eq!(
            names.explain("no marker from 52:54:00:00:00:02"),
            "no marker from 52:54:00:00:00:02 (52:54:00:00:00:02 is vm1's netdev net0)"
        );
        assert_eq!(names.explain("no MAC here"), "no MAC here");
    }

    #[test]
    fn a_nic_without_a_mac_has_no_peers() {
        let mut hub = nic("hub0port0", 0, &[1]);
        hub.mac = Mac::default();
        let nics = vec![vec![nic("net0", 1, &[2]), hub], vec![nic("net0", 2, &[])]];
        let peers = peers(&names(2), &nics).unwrap();
        assert_eq!(peers[0], vec![of("net0", &[2])]);
    }

    #[test]
    fn one_mac_on_two_nics_is_refused() {
        let nics = vec![vec![nic("net0", 1, &[])], vec![nic("net1", 1, &[])]];
        let e = peers(&names(2), &nics).unwrap_err();
        assert!(e.contains("vm0 (netdev net0) and vm1 (netdev net1)") && e.contains("52:54:00:00:00:01"), "{e}");
    }
}
