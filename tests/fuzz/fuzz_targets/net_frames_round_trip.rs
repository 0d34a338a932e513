// SPDX-License-Identifier: GPL-2.0-or-later
//! NET_FRAMES encoding: held frames as a checkpoint collects them
//! (`NetFrames::push`, netdev by netdev), within what the format holds,
//! encode and decode to the same frames.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use mekha_ckpt_core::image::{NetFrames, FRAME_RAW, MAX_FRAME_LEN};

/// Netdev ids come from a few, so that frames of one netdev interleave
/// with another's as on a cluster's bridge.
fn frames(u: &mut Unstructured) -> Result<NetFrames> {
    let ids: Vec<String> = (0..u.int_in_range(1..=4)?)
        .map(|_| u.arbitrary::<String>())
        .filter(|id| id.as_ref().is_ok_and(|id| (1..=255).contains(&id.len())))
        .collect::<Result<_>>()?;
    let mut frames = NetFrames::default();
    if ids.is_empty() {
        return Ok(frames);
    }
    while !u.is_empty() {
        let id = u.choose(&ids)?;
        let vnet_hdr_len = u.arbitrary()?;
        let flags = if u.arbitrary()? { FRAME_RAW } else { 0 };
        let len = u.int_in_range(1..=MAX_FRAME_LEN)?;
        let data = u.bytes(len.min(u.len()).max(1)).unwrap_or(&[0]);
        frames.push(id, vnet_hdr_len, flags, data);
    }
    Ok(frames)
}

fuzz_target!(|data: &[u8]| {
    let Ok(frames) = frames(&mut Unstructured::new(data)) else { return };
    let bytes = frames.encode();
    assert_eq!(NetFrames::decode(&bytes).as_ref(), Ok(&frames), "encoded frames decode to others");
    assert_eq!(frames.summary().bytes, frames.byte_count());
});
