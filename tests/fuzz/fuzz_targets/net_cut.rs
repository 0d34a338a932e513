// SPDX-License-Identifier: GPL-2.0-or-later
//! Frames from the wire through a VM's network cut (`netcut::Cut`): any
//! host on the segment sends what it likes, markers of any cut included.
//! The first bytes pick the cut's phase and each frame's length; what the
//! cut saves is bounded, a marker never reaches the guest, and a cut whose
//! peers all sent their marker completes once the VM ran again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mekha_ckpt_core::image::NetFrames;
use mekha_ckpt_core::netcut::{marker_frame, Cut, Frame, Mac, NetdevPeers, Verdict};

const ID: u64 = 0x6d65_6b68_6100_0001;
const PEER: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
const MAX_BYTES: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&header, mut rest)) = data.split_first() else { return };
    let hdr_len = u32::from(header & 0x0f);
    let mut cut = Cut::new(Some(ID), &[NetdevPeers { netdev: "net0".into(), macs: vec![PEER] }], MAX_BYTES);
    let mut phase = 0u8;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        rest = tail;
        let flags = u32::from(len % 3 == 0);
        let verdict = cut.on_frame("net0", hdr_len, flags, frame);
        let header = if flags == 1 { 0 } else { hdr_len as usize };
        if let Frame::Marker { .. } = Frame::classify(frame.get(header..).unwrap_or_default()) {
            assert_eq!(verdict, Verdict::Drop, "a marker reached the guest");
        }
        // Every eighth frame moves the VM on: stop, then resume.
        if len % 8 == 7 && phase < 2 {
            phase += 1;
            if phase == 1 {
                cut.stopped(&NetFrames::default());
            } else {
                cut.resumed();
            }
        }
    }
    let progress = cut.progress();
    assert!(progress.saved_bytes <= MAX_BYTES);
    if phase < 2 {
        cut.stopped(&NetFrames::default());
        cut.resumed();
    }
    let mut marker = vec![0u8; hdr_len as usize];
    marker.extend_from_slice(&marker_frame(PEER, ID));
    assert_eq!(cut.on_frame("net0", hdr_len, 0, &marker), Verdict::Drop);
    assert!(cut.is_complete(), "every peer's marker came and the VM runs");
    let frames = cut.into_frames();
    assert!(frames.byte_count() <= MAX_BYTES);
});
