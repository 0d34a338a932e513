// SPDX-License-Identifier: GPL-2.0-or-later
//! NET_FRAMES decoding of any bytes. The format has one encoding of each
//! value (no padding, reserved fields zero), so what decodes encodes back
//! to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mekha_ckpt_core::image::NetFrames;

fuzz_target!(|data: &[u8]| {
    if let Ok(frames) = NetFrames::decode(data) {
        let _ = frames.summary();
        assert_eq!(frames.encode(), data, "a decoded section encodes to other bytes");
    }
});
