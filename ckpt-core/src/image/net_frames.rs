// SPDX-License-Identifier: GPL-2.0-or-later
//! The NET_FRAMES section: network frames toward the guest that were in
//! flight at the checkpoint instant, per netdev, in the order the NIC
//! would have received them (layout in the module doc of
//! [`crate::image`]).

use crate::width::to_usize;
use serde::Serialize;

/// QEMU's largest frame (`NET_BUFSIZE`: 64 KiB of payload plus headers);
/// longer ones are refused.
pub const MAX_FRAME_LEN: usize = 4096 + 65536;
/// Frame flag: the netdev sent the frame raw (`QEMU_NET_PACKET_FLAG_RAW`).
pub const FRAME_RAW: u32 = 1;
/// The frame flags this mekha knows.
const KNOWN_FLAGS: u32 = FRAME_RAW;
/// Bytes of a netdev id at most.
pub const MAX_NETDEV_ID_LEN: usize = 255;

/// One frame, as the netdev passed it on toward the NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetFrame {
    /// `FRAME_*` flags.
    pub flags: u32,
    /// The bytes: `vnet_hdr_len` bytes of virtio-net header, then the
    /// Ethernet frame.
    pub data: Vec<u8>,
}

/// The held frames of one netdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetdevFrames {
    /// The netdev's id (`-netdev ...,id=`), which a restore matches.
    pub netdev: String,
    /// Bytes of virtio-net header before each frame's Ethernet data.
    pub vnet_hdr_len: u32,
    /// Oldest first.
    pub frames: Vec<NetFrame>,
}

/// The NET_FRAMES section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetFrames {
    /// Each netdev at most once.
    pub netdevs: Vec<NetdevFrames>,
}

/// What NET_FRAMES holds, for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetFramesSummary {
    /// Frames of all netdevs together.
    pub frames: u64,
    /// Their bytes, virtio-net headers included.
    pub bytes: u64,
    /// Per netdev: (id, frames).
    pub netdevs: Vec<(String, u64)>,
}

impl NetFrames {
    /// Appends a frame behind the others of `netdev`.
    pub fn push(&mut self, netdev: &str, vnet_hdr_len: u32, flags: u32, data: &[u8]) {
        let frame = NetFrame { flags, data: data.to_vec() };
        match self.netdevs.iter_mut().rfind(|n| n.netdev == netdev) {
            Some(n) => n.frames.push(frame),
            None => self.netdevs.push(NetdevFrames { netdev: netdev.to_owned(), vnet_hdr_len, frames: vec![frame] }),
        }
    }

    /// Removes and returns what the section cannot hold (a netdev id
    /// empty or longer than [`MAX_NETDEV_ID_LEN`], a frame empty or longer
    /// than [`MAX_FRAME_LEN`] or with an unknown flag), which
    /// [`encode`](Self::encode) would refuse: QEMU's ids have no length
    /// limit, so a VM may well hold such frames.
    pub fn take_unstorable(&mut self) -> NetFrames {
        let mut unstorable = NetFrames::default();
        self.netdevs.retain_mut(|n| {
            if n.netdev.is_empty() || n.netdev.len() > MAX_NETDEV_ID_LEN {
                unstorable.netdevs.push(n.clone());
                return false;
            }
            let storable = |f: &NetFrame| (1..=MAX_FRAME_LEN).contains(&f.data.len()) && f.flags & !KNOWN_FLAGS == 0;
            for f in n.frames.iter().filter(|f| !storable(f)) {
                unstorable.push(&n.netdev, n.vnet_hdr_len, f.flags, &f.data);
            }
            n.frames.retain(storable);
            !n.frames.is_empty()
        });
        unstorable
    }

    /// Frames of all netdevs together.
    pub fn frame_count(&self) -> u64 {
        self.netdevs.iter().map(|n| n.frames.len() as u64).sum()
    }

    /// Bytes of all frames, virtio-net headers included (no record headers).
    pub fn byte_count(&self) -> u64 {
        self.netdevs.iter().flat_map(|n| &n.frames).map(|f| f.data.len() as u64).sum()
    }

    /// The counts `inspect` shows.
    pub fn summary(&self) -> NetFramesSummary {
        NetFramesSummary {
            frames: self.frame_count(),
            bytes: self.byte_count(),
            netdevs: self.netdevs.iter().map(|n| (n.netdev.clone(), n.frames.len() as u64)).collect(),
        }
    }

    /// The section's bytes.
    ///
    /// # Panics
    /// On what the format cannot hold: a netdev id empty or longer than
    /// [`MAX_NETDEV_ID_LEN`], a netdev twice, a frame empty or longer than
    /// [`MAX_FRAME_LEN`], an unknown flag ([`take_unstorable`](Self::take_unstorable)
    /// takes those out first).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + to_usize(self.byte_count()) + 8 * to_usize(self.frame_count()));
        out.extend_from_slice(&u32::try_from(self.netdevs.len()).expect("netdevs fit u32").to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for (i, n) in self.netdevs.iter().enumerate() {
            assert!(
                !n.netdev.is_empty() && n.netdev.len() <= MAX_NETDEV_ID_LEN,
                "netdev id {:?} cannot be stored",
                n.netdev
            );
            assert!(self.netdevs[..i].iter().all(|m| m.netdev != n.netdev), "netdev {} twice", n.netdev);
            out.extend_from_slice(&u32::try_from(n.frames.len()).expect("frames fit u32").to_le_bytes());
            out.extend_from_slice(&n.vnet_hdr_len.to_le_bytes());
            out.extend_from_slice(&u16::try_from(n.netdev.len()).expect("checked above").to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(n.netdev.as_bytes());
            for f in &n.frames {
                assert!((1..=MAX_FRAME_LEN).contains(&f.data.len()), "a frame of {} bytes", f.data.len());
                assert_eq!(f.flags & !KNOWN_FLAGS, 0, "unknown frame flags {:#x}", f.flags);
                out.extend_from_slice(&u32::try_from(f.data.len()).expect("checked above").to_le_bytes());
                out.extend_from_slice(&f.flags.to_le_bytes());
                out.extend_from_slice(&f.data);
            }
        }
        out
    }

    /// Parses the section's bytes; Err says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<NetFrames, String> {
        let mut r = Reader { bytes, at: 0 };
        let count = r.u32("the netdev count")?;
        if r.u32("the reserved field")? != 0 {
            return Err("reserved bytes are not zero".into());
        }
        let mut netdevs: Vec<NetdevFrames> = Vec::new();
        for _ in 0..count {
            let frames = r.u32("a netdev's frame count")?;
            let vnet_hdr_len = r.u32("a netdev's header length")?;
            let id_len = r.u16("a netdev id's length")? as usize;
            if r.u16("the reserved field")? != 0 {
                return Err("reserved bytes are not zero".into());
            }
            if id_len == 0 || id_len > MAX_NETDEV_ID_LEN {
                return Err(format!("a netdev id of {id_len} bytes"));
            }
            let netdev = std::str::from_utf8(r.take(id_len, "a netdev id")?)
                .map_err(|_| "a netdev id is not UTF-8".to_string())?
                .to_owned();
            if netdevs.iter().any(|n| n.netdev == netdev) {
                return Err(format!("netdev {netdev} appears twice"));
            }
            // Each frame takes at least 9 bytes: no allocation beyond the input.
            let mut list = Vec::with_capacity((frames as usize).min(r.remaining() / 9));
            for _ in 0..frames {
                let len = r.u32("a frame's length")? as usize;
                let flags = r.u32("a frame's flags")?;
                if !(1..=MAX_FRAME_LEN).contains(&len) {
                    return Err(format!("netdev {netdev}: a frame of {len} bytes"));
                }
                if flags & !KNOWN_FLAGS != 0 {
                    return Err(format!("netdev {netdev}: a frame with unknown flags {flags:#x}"));
                }
                let data = r.take(len, "a frame")?.to_vec();
                list.push(NetFrame { flags, data });
            }
            netdevs.push(NetdevFrames { netdev, vnet_hdr_len, frames: list });
        }
        if r.remaining() != 0 {
            return Err(format!("{} bytes after the last frame", r.remaining()));
        }
        Ok(NetFrames { netdevs })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!("{what} runs past the end of the section"));
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NetFrames {
        let mut f = NetFrames::default();
        f.push("net0", 12, 0, &[1; 60]);
        f.push("hub0port1", 0, FRAME_RAW, &[2; 42]);
        f.push("net0", 12, 0, &[3; 1514]);
        f
    }

    #[test]
    fn round_trip_keeps_order_per_netdev() {
        let f = sample();
        assert_eq!(f.netdevs.len(), 2);
        assert_eq!(f.netdevs[0].frames.iter().map(|x| x.data[0]).collect::<Vec<_>>(), [1, 3]);
        assert_eq!((f.frame_count(), f.byte_count()), (3, 60 + 42 + 1514));
        let bytes = f.encode();
        assert_eq!(bytes.len(), 8 + (12 + 4) + (12 + 9) + 3 * 8 + 60 + 42 + 1514);
        assert_eq!(NetFrames::decode(&bytes).unwrap(), f);
        let empty = NetFrames::default().encode();
        assert_eq!(empty, [0; 8]);
        assert_eq!(NetFrames::decode(&empty).unwrap(), NetFrames::default());
    }

    #[test]
    fn layout_is_the_documented_one() {
        let mut f = NetFrames::default();
        f.push("n", 10, FRAME_RAW, &[0xab, 0xcd]);
        assert_eq!(
            f.encode(),
            [
                1, 0, 0, 0, 0, 0, 0, 0, // one netdev, reserved
                1, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0, 0, b'n', // one frame, header 10, id "n"
                2, 0, 0, 0, 1, 0, 0, 0, 0xab, 0xcd, // 2 bytes, raw
            ]
        );
    }

    #[test]
    fn malformed_sections_are_refused() {
        let good = sample().encode();
        // Every truncation, and a byte too many.
        for len in 0..good.len() {
            assert!(NetFrames::decode(&good[..len]).is_err(), "truncated to {len}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(NetFrames::decode(&long).unwrap_err().contains("after the last frame"));

        let edit = |at: usize, value: &[u8]| {
            let mut b = good.clone();
            b[at..at + value.len()].copy_from_slice(value);
            NetFrames::decode(&b).unwrap_err()
        };
        assert!(edit(4, &[1]).contains("reserved"));
        assert!(edit(16, &[0, 0]).contains("netdev id of 0 bytes"));
        assert!(edit(20, &[0xff]).contains("UTF-8"));
        // The first frame's length and flags.
        assert!(edit(24, &[0, 0, 0, 0]).contains("a frame of 0 bytes"));
        assert!(edit(24, &[0, 0, 2, 0]).contains("a frame of 131072 bytes"));
        assert!(edit(28, &[2]).contains("unknown flags"));
        // The second netdev renamed to the first.
        let second = 8 + 16 + 2 * 8 + 60 + 1514;
        let mut b = good.clone();
        b[second + 8..second + 10].copy_from_slice(&4u16.to_le_bytes());
        b.splice(second + 12..second + 21, *b"net0");
        assert!(NetFrames::decode(&b).unwrap_err().contains("net0 appears twice"));
        // A huge frame count allocates nothing up front.
        assert!(
            NetFrames::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 0, 0, 0, b'x']).is_err()
        );
    }

    #[test]
    fn what_the_format_cannot_hold_is_taken_out_before_encoding() {
        let long = "n".repeat(MAX_NETDEV_ID_LEN + 1);
        let mut f = NetFrames::default();
        f.push("net0", 12, 0, &[1; 60]);
        f.push(&long, 12, 0, &[2; 60]);
        f.push("net0", 12, 0x80, &[3; 60]);
        f.push("net1", 0, 0, &[]);
        let taken = f.take_unstorable();
        assert_eq!(f.summary().netdevs, [("net0".to_owned(), 1)]);
        assert_eq!(taken.summary().netdevs, [("net0".to_owned(), 1), (long, 1), ("net1".to_owned(), 1)]);
        assert_eq!(NetFrames::decode(&f.encode()).unwrap(), f);
    }
}
