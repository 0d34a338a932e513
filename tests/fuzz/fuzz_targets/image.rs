// SPDX-License-Identifier: GPL-2.0-or-later
//! The image reader and verifier on any file (`mekha_fuzz::sparse_image`):
//! `Image::open` (and `Image::open_sealed`, whose AUTH parsing must
//! refuse, not panic), then everything a restore, `mekha image inspect`
//! and `mekha image verify` read of an image it accepted. Nothing may
//! panic, and an accepted image is consistent with itself.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mekha_ckpt_core::image::layout::BLOCK_ALIGN;
use mekha_ckpt_core::image::{check_compatible, inspect_image, verify_image, Image, ImageKey, NetFrames};
use mekha_ckpt_core::vtime::{resume_offset, TimePolicy};
use mekha_ckpt_core::PAGE_SIZE;
use mekha_fuzz::scratch::MemFile;
use mekha_fuzz::sparse_image::SparseImage;

static FILE: LazyLock<MemFile> = LazyLock::new(|| MemFile::new(c"mekha-fuzz-image").expect("a memfd"));

/// A host wall clock to resume at: some day in 2026.
const HOST_NOW_NS: i64 = 1_780_000_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    SparseImage::decode(data).write_to(FILE.file()).expect("writing the memfd");
    if let Ok(image) = Image::open(FILE.path()) {
        exercise(&image);
    }
    if let Ok(image) = Image::open_sealed(FILE.path(), &KEY) {
        exercise(&image);
    }
});

static KEY: LazyLock<ImageKey> = LazyLock::new(|| ImageKey::from_bytes(&[0x6d; 32]));

fn exercise(image: &Image) {
    let layout = image.layout();
    assert_eq!(image.page_crcs().len() as u64, layout.total_pages());
    for (i, block) in image.identity().ram_blocks.iter().enumerate() {
        let (first, pages) = layout.block_pages(i);
        assert_eq!(pages * PAGE_SIZE as u64, block.length);
        assert_eq!(layout.block_offset(i) % BLOCK_ALIGN, 0);
        assert!(layout.block_offset(i) + block.length <= layout.ram_end());
        if pages > 0 {
            for page in [first, first + pages - 1] {
                assert_eq!(image.page_place(page).0, block.name);
                let mut buf = vec![0u8; PAGE_SIZE];
                let _ = image.read_page(page, &mut buf);
            }
        }
    }

    // What a restore reads (ffi's restore), in its order.
    if let Ok(Some(time)) = image.time() {
        let _ = time.lag_ns();
        for policy in [TimePolicy::Continue, TimePolicy::Host, TimePolicy::CatchUp] {
            let _ = resume_offset(policy, Some(&time), None, HOST_NOW_NS);
        }
    }
    if let Ok(Some(frames)) = image.net_frames() {
        let _ = frames.summary();
        assert_eq!(NetFrames::decode(&frames.encode()).as_ref(), Ok(&frames), "NET_FRAMES re-encoded");
    }
    let own = check_compatible(image.identity(), image.identity()).expect("an image fits the VM it was taken from");
    assert!(own.image_block.iter().copied().eq(0..image.identity().ram_blocks.len()));
    let _ = image.device_state();
    let _ = image.info();

    // `mekha image inspect` and `mekha image verify`.
    let inspection = inspect_image(image).expect("inspecting an image that opened");
    serde_json::to_string(&inspection).expect("an inspection encodes");
    let report = verify_image(image).expect("verifying an image that opened");
    let _ = report.problems();
    assert_eq!(report.pages_checked, layout.total_pages());
}
