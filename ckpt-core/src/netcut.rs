// SPDX-License-Identifier: GPL-2.0-or-later
//! The network cut of a cluster checkpoint, by markers.
//!
//! Every VM of a cluster stops at one instant T. A frame a VM sent before
//! T may still be on its way to another VM then: on a longer path, in a
//! queue, in a receiver busy elsewhere. The receiver's image must hold it,
//! or the restarted cluster loses it; a frame sent after T must not be in
//! it, or the restarted sender sends it again. Which is which is told by
//! markers, as in Chandy and Lamport's snapshot over FIFO channels: at its
//! stop, every VM sends a marker frame ([`marker_frame`]) on each NIC
//! ahead of any later frame. A receiver saves, from its own stop, every
//! frame from a peer whose marker has not arrived yet; a peer's frames
//! after its marker belong to the time after T and are only passed on.
//! The cut is complete when every peer's marker arrived ([`Cut`]).
//!
//! Peers are told apart by the frames' source MAC address; who is a peer
//! on which segment the coordinator works out from the source MACs each
//! NIC has seen ([`Neighbours`]).
//!
//! Frames from outside the cluster (a gateway, a host on the LAN) have no
//! marker: one reaching a VM while it is stopped is saved (the guest gets
//! it after T in both worlds), the others are not part of the cut.
//!
//! Everything here is pure: the library feeds it the frames QEMU's hold
//! filters see.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::image::{NetFrames, FRAME_RAW};

/// mekha's EtherType: IEEE 802's "local experimental 1".
pub const MARKER_ETHERTYPE: u16 = 0x88B5;
/// What opens a mekha marker's payload (other users of the experimental
/// EtherType do not).
const MARKER_MAGIC: &[u8; 8] = b"MEKHAMRK";
/// The marker format this mekha sends and understands.
const MARKER_VERSION: u8 = 1;
/// Ethernet's shortest frame, without the frame check sequence.
const MIN_FRAME_LEN: usize = 60;
/// Destination, source and EtherType.
const ETHERNET_HEADER_LEN: usize = 14;
/// Source MACs kept per NIC: enough for any cluster segment, bounded on a
/// large LAN.
pub const MAX_NEIGHBOURS: usize = 1024;

/// A MAC address, written `52:54:00:12:34:56` in the contract.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The Ethernet broadcast address.
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Whether it names a group (multicast or broadcast): never a frame's
    /// source.
    pub fn is_group(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Mac, String> {
        macaddr::MacAddr6::from_str(s)
            .map(|m| Mac(m.into_array()))
            .map_err(|e| format!("{s:?} is not a MAC address: {e}"))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Mac, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The marker a VM sends on a NIC with MAC `src` when it stops for the
/// cluster checkpoint `cut_id`: broadcast, so that the segment's bridges
/// take it to every peer.
pub fn marker_frame(src: Mac, cut_id: u64) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MIN_FRAME_LEN);
    frame.extend_from_slice(&Mac::BROADCAST.0);
    frame.extend_from_slice(&src.0);
    frame.extend_from_slice(&MARKER_ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(MARKER_MAGIC);
    frame.push(MARKER_VERSION);
    frame.extend_from_slice(&cut_id.to_be_bytes());
    frame.resize(MIN_FRAME_LEN, 0);
    frame
}

/// What an Ethernet frame is to the cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A mekha marker of cut `cut_id` (none: a format this mekha does not
    /// know), sent by the NIC `src`.
    Marker {
        /// The sending NIC.
        src: Mac,
        /// The cluster checkpoint it marks.
        cut_id: Option<u64>,
    },
    /// Any other frame, from `src`.
    Data {
        /// The sending NIC.
        src: Mac,
    },
    /// Too short to have an Ethernet header.
    Runt,
}

impl Frame {
    /// Reads the Ethernet frame `eth` (no virtio-net header).
    pub fn classify(eth: &[u8]) -> Frame {
        if eth.len() < ETHERNET_HEADER_LEN {
            return Frame::Runt;
        }
        let src = Mac(eth[6..12].try_into().expect("6 bytes"));
        let payload = &eth[ETHERNET_HEADER_LEN..];
        if u16::from_be_bytes([eth[12], eth[13]]) != MARKER_ETHERTYPE || !payload.starts_with(MARKER_MAGIC) {
            return Frame::Data { src };
        }
        let cut_id = match payload.get(MARKER_MAGIC.len()..MARKER_MAGIC.len() + 9) {
            Some([MARKER_VERSION, id @ ..]) => Some(u64::from_be_bytes(id.try_into().expect("8 bytes"))),
            _ => None,
        };
        Frame::Marker { src, cut_id }
    }
}

/// What becomes of a frame toward the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// On toward the guest (held while the hold filter holds).
    Pass,
    /// Never reaches the guest (a marker).
    Drop,
    /// Held, with every later frame, until the hold is released: a peer's
    /// frame after its marker came before this VM stopped, and must reach
    /// the guest only after the stop.
    Hold,
}

/// The source MACs each NIC's netdev has seen: who shares its segment.
#[derive(Debug, Default)]
pub struct Neighbours {
    netdevs: HashMap<String, Recent>,
}

/// Source MACs by the order of their last frame, the most recent kept.
#[derive(Debug, Default)]
struct Recent {
    last_seen: HashMap<Mac, u64>,
    clock: u64,
}

impl Neighbours {
    /// A frame from `src` reached `netdev`.
    pub fn saw(&mut self, netdev: &str, src: Mac) {
        if src.is_group() {
            return;
        }
        let recent = match self.netdevs.get_mut(netdev) {
            Some(r) => r,
            None => self.netdevs.entry(netdev.to_owned()).or_default(),
        };
        recent.clock += 1;
        recent.last_seen.insert(src, recent.clock);
        if recent.last_seen.len() > 2 * MAX_NEIGHBOURS {
            // Forgets the older half at once: one pass per MAX_NEIGHBOURS
            // new sources, not one per frame.
            let mut clocks: Vec<u64> = recent.last_seen.values().copied().collect();
            let (_, &mut cutoff, _) = clocks.select_nth_unstable(recent.last_seen.len() - MAX_NEIGHBOURS);
            recent.last_seen.retain(|_, &mut seen| seen >= cutoff);
        }
    }

    /// What `netdev` has seen, at most [`MAX_NEIGHBOURS`], in order.
    pub fn of(&self, netdev: &str) -> Vec<Mac> {
        let Some(recent) = self.netdevs.get(netdev) else { return Vec::new() };
        let mut by_age: Vec<(u64, Mac)> = recent.last_seen.iter().map(|(&mac, &seen)| (seen, mac)).collect();
        by_age.sort_unstable_by(|a, b| b.cmp(a));
        let mut macs: Vec<Mac> = by_age.into_iter().take(MAX_NEIGHBOURS).map(|(_, mac)| mac).collect();
        macs.sort_unstable();
        macs
    }
}

/// A NIC's peers on its segment, as the contract names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NetdevPeers {
    /// The id of the NIC's netdev.
    pub netdev: String,
    /// The MACs of the cluster's other NICs on the segment.
    pub macs: Vec<Mac>,
}

/// The Ethernet frame of `data` as a netdev passed it: behind
/// `vnet_hdr_len` bytes of virtio-net header, but for a raw frame
/// ([`FRAME_RAW`] in `flags`).
pub fn ethernet(data: &[u8], vnet_hdr_len: u32, flags: u32) -> &[u8] {
    let header = if flags & FRAME_RAW != 0 { 0 } else { crate::width::to_usize(u64::from(vnet_hdr_len)) };
    data.get(header..).unwrap_or_default()
}

/// The non-empty sets `set` picks of each netdev, by netdev id.
fn per_netdev(netdevs: &HashMap<String, NetdevCut>, set: impl Fn(&NetdevCut) -> &BTreeSet<Mac>) -> Vec<NetdevPeers> {
    let mut out: Vec<NetdevPeers> = netdevs
        .iter()
        .filter(|(_, n)| !set(n).is_empty())
        .map(|(id, n)| NetdevPeers { netdev: id.clone(), macs: set(n).iter().copied().collect() })
        .collect();
    out.sort_by(|a, b| a.netdev.cmp(&b.netdev));
    out
}

/// How a [`Cut`] stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutProgress {
    /// Frames saved so far.
    pub saved_frames: u64,
    /// Their bytes.
    pub saved_bytes: u64,
    /// Frames in flight the bound on saved bytes left out.
    pub dropped_frames: u64,
    /// Whether the cut is complete ([`Cut::is_complete`]).
    pub complete: bool,
    /// Per netdev, the peers whose marker has not come yet.
    pub waiting: Vec<NetdevPeers>,
    /// Per netdev, NICs not named as peers whose marker for this cut
    /// came: the cut cannot be consistent ([`Cut::on_frame`]).
    pub unexpected: Vec<NetdevPeers>,
}

/// One VM's side of a cluster checkpoint's network cut: what it saves of
/// the frames toward its guests, and which markers it still waits for.
#[derive(Debug)]
pub struct Cut {
    id: Option<u64>,
    netdevs: HashMap<String, NetdevCut>,
    /// The VM stopped for the checkpoint.
    started: bool,
    /// The VM is stopped now.
    stopped: bool,
    /// Bytes saved per netdev at most; frames beyond are counted.
    max_bytes: u64,
}

#[derive(Debug, Default)]
struct NetdevCut {
    vnet_hdr_len: u32,
    peers: BTreeSet<Mac>,
    /// Peers whose marker has not arrived.
    waiting: BTreeSet<Mac>,
    /// NICs not named as peers whose marker for this cut came.
    unexpected: BTreeSet<Mac>,
    /// A peer's marker came before the stop: frames are held since.
    early_hold: bool,
    /// Frames held before the stop because a peer's marker came first.
    early_held: usize,
    /// Saved: the frames the NIC had queued at the stop, those held early,
    /// those that came after the stop; in this order they reached the NIC.
    saved: [Vec<(u32, Vec<u8>)>; 3],
    bytes: u64,
    dropped: u64,
}

/// Which of [`NetdevCut::saved`] a frame goes to.
#[derive(Clone, Copy)]
enum Saved {
    Queued = 0,
    Early = 1,
    Later = 2,
}

impl NetdevCut {
    fn save(&mut self, to: Saved, flags: u32, frame: &[u8], max_bytes: u64) {
        let len = frame.len() as u64;
        if self.bytes + len > max_bytes {
            self.dropped += 1;
            return;
        }
        self.bytes += len;
        self.saved[to as usize].push((flags, frame.to_vec()));
    }

    /// Whether a frame from `src` is in flight at the cut: from a peer
    /// whose marker has not come, or from outside the cluster while the
    /// VM is stopped (`stopped`).
    fn in_flight(&self, src: Option<Mac>, stopped: bool) -> bool {
        match src {
            Some(src) if self.waiting.contains(&src) => true,
            Some(src) if self.peers.contains(&src) => false,
            _ => stopped,
        }
    }
}

impl Cut {
    /// The cut `id` (none: a VM checkpointed alone, which waits for no
    /// marker) with each netdev's `peers`, saving at most `max_bytes` per
    /// netdev.
    pub fn new(id: Option<u64>, peers: &[NetdevPeers], max_bytes: u64) -> Cut {
        let netdevs = peers
            .iter()
            .map(|p| {
                let macs: BTreeSet<Mac> = p.macs.iter().copied().collect();
                (p.netdev.clone(), NetdevCut { peers: macs.clone(), waiting: macs, ..NetdevCut::default() })
            })
            .collect();
        Cut { id, netdevs, started: false, stopped: false, max_bytes }
    }

    /// The cluster checkpoint's id.
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    fn netdev(&mut self, netdev: &str, vnet_hdr_len: u32) -> &mut NetdevCut {
        // Without an allocation per frame for a netdev seen before.
        if !self.netdevs.contains_key(netdev) {
            self.netdevs.insert(netdev.to_owned(), NetdevCut::default());
        }
        let n = self.netdevs.get_mut(netdev).expect("inserted above");
        n.vnet_hdr_len = vnet_hdr_len;
        n
    }

    /// A frame toward the guest reached `netdev` (its first `vnet_hdr_len`
    /// bytes a virtio-net header, but for a raw frame): saves it if it is
    /// in flight at the cut, notes a marker. A marker of this cut from a
    /// NIC not named as a peer makes the cut fail: that NIC's frames
    /// before it were taken for frames from outside.
    pub fn on_frame(&mut self, netdev: &str, vnet_hdr_len: u32, flags: u32, data: &[u8]) -> Verdict {
        let (id, started, stopped, max_bytes) = (self.id, self.started, self.stopped, self.max_bytes);
        let n = self.netdev(netdev, vnet_hdr_len);
        let src = match Frame::classify(ethernet(data, vnet_hdr_len, flags)) {
            Frame::Marker { src, cut_id } => {
                if id.is_none() || cut_id != id {
                    return Verdict::Drop;
                }
                if !n.peers.contains(&src) {
                    n.unexpected.insert(src);
                } else if n.waiting.remove(&src) && !started {
                    // The peer stopped before this VM: its later frames
                    // belong after the cut and must not reach the guest
                    // before this VM's stop, so from now on all wait.
                    n.early_hold = true;
                }
                return Verdict::Drop;
            }
            Frame::Data { src } => Some(src),
            Frame::Runt => None,
        };
        if !started {
            if !n.early_hold {
                return Verdict::Pass;
            }
            n.early_held += 1;
            if n.in_flight(src, true) {
                n.save(Saved::Early, flags, data, max_bytes);
            }
            return Verdict::Hold;
        }
        if n.in_flight(src, stopped) {
            n.save(Saved::Later, flags, data, max_bytes);
        }
        Verdict::Pass
    }

    /// The VM stopped; `held` are the frames the hold filters had at the
    /// stop, oldest first: those the NICs had queued, then those held
    /// early ([`Verdict::Hold`]). The queued ones are in flight, and
    /// saved ahead of every other.
    pub fn stopped(&mut self, held: &NetFrames) {
        let max_bytes = self.max_bytes;
        self.started = true;
        self.stopped = true;
        for h in &held.netdevs {
            let n = self.netdev(&h.netdev, h.vnet_hdr_len);
            let queued = h.frames.len().saturating_sub(n.early_held);
            for f in &h.frames[..queued] {
                n.save(Saved::Queued, f.flags, &f.data, max_bytes);
            }
        }
    }

    /// The VM runs again: frames from outside the cluster are no longer
    /// in flight at the cut.
    pub fn resumed(&mut self) {
        self.stopped = false;
    }

    /// Whether any netdev holds frames since a peer's early marker: the
    /// hold must be released if the VM does not stop after all.
    pub fn holds_early(&self) -> bool {
        self.netdevs.values().any(|n| n.early_hold)
    }

    /// Whether the VM stopped and ran again, and every peer's marker came:
    /// the frames to save are all known.
    pub fn is_complete(&self) -> bool {
        self.started && !self.stopped && self.netdevs.values().all(|n| n.waiting.is_empty())
    }

    /// Per netdev, the NICs not named as peers whose marker came.
    pub fn unexpected(&self) -> Vec<NetdevPeers> {
        per_netdev(&self.netdevs, |n| &n.unexpected)
    }

    /// Per netdev, the peers whose marker has not come yet.
    pub fn waiting(&self) -> Vec<NetdevPeers> {
        per_netdev(&self.netdevs, |n| &n.waiting)
    }

    /// How the cut stands.
    pub fn progress(&self) -> CutProgress {
        let mut p = CutProgress {
            complete: self.is_complete(),
            waiting: self.waiting(),
            unexpected: self.unexpected(),
            ..CutProgress::default()
        };
        for n in self.netdevs.values() {
            p.saved_frames += n.saved.iter().map(Vec::len).sum::<usize>() as u64;
            p.saved_bytes += n.bytes;
            p.dropped_frames += n.dropped;
        }
        p
    }

    /// The saved frames, per netdev in the order they reached it.
    pub fn into_frames(self) -> NetFrames {
        let mut ids: Vec<&String> = self.netdevs.keys().collect();
        ids.sort();
        let mut frames = NetFrames::default();
        for id in ids {
            let n = &self.netdevs[id];
            for (flags, data) in n.saved.iter().flatten() {
                frames.push(id, n.vnet_hdr_len, *flags, data);
            }
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = Mac([0x52, 0x54, 0, 0, 0, 0xa]);
    const B: Mac = Mac([0x52, 0x54, 0, 0, 0, 0xb]);
    const GATEWAY: Mac = Mac([0x02, 0, 0, 0, 0, 1]);
    const HDR: u32 = 12;

    /// A data frame from `src` behind a virtio-net header, tagged `n`.
    fn data(src: Mac, n: u8) -> Vec<u8> {
        let mut f = vec![0u8; HDR as usize];
        f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 0xc]);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend_from_slice(&[n; 46]);
        f
    }

    fn marker(src: Mac, id: u64) -> Vec<u8> {
        let mut f = vec![0u8; HDR as usize];
        f.extend_from_slice(&marker_frame(src, id));
        f
    }

    fn tags(frames: &NetFrames) -> Vec<u8> {
        frames.netdevs.iter().flat_map(|n| &n.frames).map(|f| *f.data.last().unwrap()).collect()
    }

    fn cut_with_peers(peers: &[Mac]) -> Cut {
        Cut::new(Some(7), &[NetdevPeers { netdev: "net0".into(), macs: peers.to_vec() }], u64::MAX)
    }

    fn feed(cut: &mut Cut, frame: &[u8]) -> Verdict {
        cut.on_frame("net0", HDR, 0, frame)
    }

    #[test]
    fn markers_are_told_from_other_frames() {
        let m = marker_frame(A, 0x0102_0304_0506_0708);
        assert_eq!(m.len(), 60);
        assert_eq!(Frame::classify(&m), Frame::Marker { src: A, cut_id: Some(0x0102_0304_0506_0708) });
        assert_eq!(Frame::classify(&data(B, 1)[HDR as usize..]), Frame::Data { src: B });
        assert_eq!(Frame::classify(&m[..13]), Frame::Runt);
        // Another user of the experimental EtherType: not a marker.
        let mut foreign = m.clone();
        foreign[14] = b'X';
        assert_eq!(Frame::classify(&foreign), Frame::Data { src: A });
        // A marker of a format this mekha does not know: still never a guest's.
        let mut newer = m;
        newer[22] = MARKER_VERSION + 1;
        assert_eq!(Frame::classify(&newer), Frame::Marker { src: A, cut_id: None });
    }

    #[test]
    fn macs_read_and_write_as_colon_hex() {
        let mac: Mac = "52:54:00:AB:cd:0e".parse().unwrap();
        assert_eq!(mac, Mac([0x52, 0x54, 0, 0xab, 0xcd, 0x0e]));
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0e");
        assert_eq!(serde_json::to_string(&mac).unwrap(), "\"52:54:00:ab:cd:0e\"");
        assert_eq!(serde_json::from_str::<Mac>("\"52:54:00:ab:cd:0e\"").unwrap(), mac);
        assert!("52:54:00".parse::<Mac>().unwrap_err().contains("not a MAC address"));
        assert!(Mac::BROADCAST.is_group() && !mac.is_group());
    }

    #[test]
    fn neighbours_keep_the_most_recent_sources_per_netdev() {
        let mut n = Neighbours::default();
        n.saw("net0", B);
        n.saw("net0", A);
        n.saw("net0", Mac::BROADCAST);
        n.saw("net1", GATEWAY);
        assert_eq!(n.of("net0"), vec![A, B]);
        assert_eq!(n.of("net1"), vec![GATEWAY]);
        assert!(n.of("net2").is_empty());
        for i in 0..3 * MAX_NEIGHBOURS {
            let b = u32::try_from(i).unwrap().to_be_bytes();
            n.saw("net0", Mac([2, 0, b[0], b[1], b[2], b[3]]));
        }
        n.saw("net0", A);
        let kept = n.of("net0");
        assert_eq!(kept.len(), MAX_NEIGHBOURS);
        assert!(kept.contains(&A), "the latest source is kept");
        assert!(!kept.contains(&B), "the oldest is forgotten");
    }

    #[test]
    fn a_peer_s_frames_are_saved_until_its_marker() {
        let mut cut = cut_with_peers(&[A, B]);
        assert_eq!(feed(&mut cut, &data(A, 1)), Verdict::Pass, "before the stop");
        let mut queued = NetFrames::default();
        queued.push("net0", HDR, 0, &data(B, 2));
        cut.stopped(&queued);
        assert_eq!(feed(&mut cut, &data(A, 3)), Verdict::Pass);
        assert_eq!(feed(&mut cut, &marker(A, 7)), Verdict::Drop);
        assert_eq!(feed(&mut cut, &data(A, 4)), Verdict::Pass, "after A's marker: not saved");
        assert_eq!(feed(&mut cut, &data(GATEWAY, 5)), Verdict::Pass, "outside, while stopped: saved");
        cut.resumed();
        assert_eq!(feed(&mut cut, &data(GATEWAY, 6)), Verdict::Pass, "outside, running: not saved");
        assert_eq!(feed(&mut cut, &data(B, 8)), Verdict::Pass, "B's marker has not come: saved");
        assert!(!cut.is_complete());
        assert_eq!(cut.waiting(), vec![NetdevPeers { netdev: "net0".into(), macs: vec![B] }]);
        assert_eq!(feed(&mut cut, &marker(B, 6)), Verdict::Drop, "another cut's marker");
        assert!(!cut.is_complete());
        feed(&mut cut, &marker(B, 7));
        assert!(cut.is_complete() && cut.waiting().is_empty());
        feed(&mut cut, &data(B, 9));
        assert_eq!(cut.progress().saved_frames, 4);
        assert_eq!(tags(&cut.into_frames()), vec![2, 3, 5, 8]);
    }

    #[test]
    fn the_cut_is_complete_only_once_the_vm_ran_again() {
        let mut cut = Cut::new(None, &[], u64::MAX);
        assert!(!cut.is_complete(), "not stopped yet");
        cut.stopped(&NetFrames::default());
        assert!(!cut.is_complete(), "frames reaching a stopped VM are still saved");
        cut.resumed();
        assert!(cut.is_complete());
        // Alone, a VM takes no marker for its own.
        assert_eq!(cut.on_frame("net0", 0, 0, &marker_frame(A, 7)), Verdict::Drop);
    }

    #[test]
    fn a_marker_before_the_stop_holds_the_peer_s_later_frames() {
        let mut cut = cut_with_peers(&[A, B]);
        assert_eq!(feed(&mut cut, &marker(A, 7)), Verdict::Drop);
        assert!(cut.holds_early());
        // After A's marker: held (it reached the guest after T in the
        // sender's world), not saved; B's and the gateway's: held and saved.
        assert_eq!(feed(&mut cut, &data(A, 1)), Verdict::Hold);
        assert_eq!(feed(&mut cut, &data(B, 2)), Verdict::Hold);
        assert_eq!(feed(&mut cut, &data(GATEWAY, 3)), Verdict::Hold);
        // At the stop the hold has the NIC's queued frame first, then the
        // three held early.
        let mut held = NetFrames::default();
        for f in [data(B, 0), data(A, 1), data(B, 2), data(GATEWAY, 3)] {
            held.push("net0", HDR, 0, &f);
        }
        cut.stopped(&held);
        feed(&mut cut, &data(B, 4));
        feed(&mut cut, &marker(B, 7));
        cut.resumed();
        assert!(cut.is_complete());
        assert_eq!(tags(&cut.into_frames()), vec![0, 2, 3, 4]);
    }

    #[test]
    fn a_marker_from_a_nic_not_named_as_a_peer_is_told() {
        let mut cut = cut_with_peers(&[A]);
        cut.stopped(&NetFrames::default());
        feed(&mut cut, &data(B, 1));
        assert_eq!(feed(&mut cut, &marker(B, 7)), Verdict::Drop);
        feed(&mut cut, &marker(A, 7));
        cut.resumed();
        assert_eq!(cut.progress().unexpected, vec![NetdevPeers { netdev: "net0".into(), macs: vec![B] }]);
        // Another cut's marker from anyone is only dropped.
        let mut other = cut_with_peers(&[A]);
        assert_eq!(feed(&mut other, &marker(B, 8)), Verdict::Drop);
        assert!(other.progress().unexpected.is_empty());
    }

    #[test]
    fn a_raw_frame_has_no_virtio_net_header() {
        let mut cut = cut_with_peers(&[A]);
        cut.stopped(&NetFrames::default());
        cut.resumed();
        let raw = marker_frame(A, 7);
        assert_eq!(cut.on_frame("net0", HDR, FRAME_RAW, &raw), Verdict::Drop);
        assert!(cut.is_complete(), "the raw marker counted");
    }

    #[test]
    fn frames_beyond_the_bound_are_counted_not_saved() {
        let frame = data(A, 1);
        let mut cut = Cut::new(Some(7), &[NetdevPeers { netdev: "net0".into(), macs: vec![A] }], frame.len() as u64);
        cut.stopped(&NetFrames::default());
        feed(&mut cut, &frame);
        feed(&mut cut, &frame);
        let p = cut.progress();
        assert_eq!((p.saved_frames, p.saved_bytes, p.dropped_frames), (1, frame.len() as u64, 1));
    }
}
