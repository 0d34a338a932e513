// SPDX-License-Identifier: GPL-2.0-or-later
//! Images written, read back, damaged in every way a disk or a crash can
//! damage them, and refused with a message naming the damage.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::json;
use tempfile::TempDir;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, IntoBytes};

use super::format::{HeaderBlock, FORMAT_MINOR, HEADER_SIZE};
use super::*;
use crate::width::to_usize;
use crate::PAGE_SIZE;

const DEVICE_STATE: &[u8] = b"QEVM\0\0\0\x03 pretend device state";

fn identity() -> Identity {
    let block = |name: &str, length| RamBlock { name: name.into(), length, page_size: 4096 };
    Identity {
        vm_name: "node1".into(),
        machine: "pc-i440fx-10.0".into(),
        qemu_version: "10.0.2".into(),
        // 768 + 2 + 64 pages; pc.bios is page 770 onwards.
        ram_blocks: vec![block("pc.ram", 3 << 20), block("vga.vram", 8192), block("pc.bios", 256 << 10)],
    }
}

/// A page whose bytes say which page it is.
#[expect(clippy::cast_possible_truncation, reason = "a fill pattern: the low byte")]
fn page_data(page: u64) -> Vec<u8> {
    (0..PAGE_SIZE).map(|i| (to_usize(page) * 7 + i) as u8 | 1).collect()
}

const WRITTEN: [u64; 5] = [0, 1, 767, 768, 770];

fn build_into(dir: &Path, identity: &Identity, pages: &[u64]) -> FinishedImage {
    build_with(dir, identity, pages, None)
}

/// [`build_into`], sealed under `key` if given.
fn build_with(dir: &Path, identity: &Identity, pages: &[u64], key: Option<&ImageKey>) -> FinishedImage {
    let path = dir.join("node1.mekha");
    let mut builder = ImageBuilder::create(&path, identity).unwrap();
    builder.set_build_id("test-build");
    if let Some(key) = key {
        builder.set_key(key);
    }
    for &p in pages {
        builder.write_page(p, &page_data(p)).unwrap();
    }
    builder.finish(DEVICE_STATE, Some(&json!({ "passes": 3 }))).unwrap()
}

fn build() -> (TempDir, PathBuf, FinishedImage) {
    let dir = tempfile::tempdir().unwrap();
    let finished = build_into(dir.path(), &identity(), &WRITTEN);
    (dir, finished.path.clone(), finished)
}

fn flip_bit(path: &Path, offset: u64) {
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x10;
    file.write_all_at(&byte, offset).unwrap();
}

/// Edits the header block and stores a valid checksum for the edit.
fn rewrite_header(path: &Path, edit: impl FnOnce(&mut HeaderBlock)) {
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut buf = vec![0u8; HEADER_SIZE];
    file.read_exact_at(&mut buf, 0).unwrap();
    let mut block = HeaderBlock::read_from_bytes(&buf).unwrap();
    edit(&mut block);
    block.header.header_crc32c = U32::new(block.compute_crc());
    file.write_all_at(block.as_bytes(), 0).unwrap();
}

fn section_of(path: &Path, kind: SectionKind) -> Section {
    *Image::open(path).unwrap().section(kind).unwrap()
}

fn open_err(path: &Path) -> ImageError {
    Image::open(path).expect_err("the image must be refused")
}

#[test]
fn round_trip() {
    let (dir, path, finished) = build();
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "only the final image is left");
    assert_eq!(fs::metadata(&path).unwrap().len(), finished.size);

    let image = Image::open(&path).unwrap();
    assert_eq!(image.identity(), &identity());
    assert_eq!(image.producer().build_id, "test-build");
    assert_eq!(image.header().major, 1);
    assert_eq!(image.header().header_crc32c, finished.header_crc32c);
    assert_eq!(image.device_state().unwrap(), DEVICE_STATE);
    assert_eq!(image.info().unwrap(), Some(json!({ "passes": 3 })));
    assert_eq!(image.layout().total_pages(), 834);
    let mut page = vec![0u8; PAGE_SIZE];
    for p in 0..image.layout().total_pages() {
        image.read_page(p, &mut page).unwrap();
        let expected = if WRITTEN.contains(&p) { page_data(p) } else { vec![0; PAGE_SIZE] };
        assert_eq!(page, expected, "page {p}");
    }
    assert_eq!(image.page_data_offset(770), layout::RAM_START + (6 << 20));

    let report = verify(&path).unwrap();
    assert!(report.is_intact(), "{:?}", report.problems());
    assert_eq!(report.pages_checked, 834);
    assert_eq!(report.sections_checked, 4);

    let inspection = inspect(&path).unwrap();
    assert_eq!(inspection.zero_pages, 834 - WRITTEN.len() as u64);
    assert_eq!(inspection.ram_blocks[2].zero_pages, 63);
    assert_eq!(inspection.sections.len(), 5);
    assert_eq!(inspection.sections[0].kind, "RAM");
    serde_json::to_string(&inspection).unwrap();
}

#[test]
fn an_image_never_written_is_all_zero_pages() {
    let dir = tempfile::tempdir().unwrap();
    let finished = build_into(dir.path(), &identity(), &[]);
    let report = verify(&finished.path).unwrap();
    assert!(report.is_intact(), "{:?}", report.problems());
    assert_eq!(inspect(&finished.path).unwrap().zero_pages, 834);
}

#[test]
fn pages_across_read_chunks() {
    // One 20 MiB block spans three 8 MiB read chunks.
    let identity = Identity {
        ram_blocks: vec![RamBlock { name: "pc.ram".into(), length: 20 << 20, page_size: 4096 }],
        ..identity()
    };
    let dir = tempfile::tempdir().unwrap();
    let finished = build_into(dir.path(), &identity, &[2047, 2048, 4095, 4096, 4097, 5119]);
    assert!(verify(&finished.path).unwrap().is_intact());
    flip_bit(&finished.path, layout::RAM_START + 4097 * PAGE_SIZE as u64 + 5);
    let report = verify(&finished.path).unwrap();
    assert_eq!(report.bad_pages, 1);
    assert_eq!(report.first_bad_pages[0].page, 4097);
    assert_eq!(report.problems(), vec!["page 4097 (pc.ram + 0x1001000) checksum mismatch"]);
}

#[test]
fn partial_file_until_finished() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node1.mekha");
    let partial = dir.path().join("node1.mekha.partial");

    let builder = ImageBuilder::create(&path, &identity()).unwrap();
    assert_eq!(builder.partial_path(), partial);
    assert_eq!(fs::metadata(&partial).unwrap().len(), builder.layout().ram_end());
    assert!(!path.exists());
    builder.abort().unwrap();
    assert!(!partial.exists());

    drop(ImageBuilder::create(&path, &identity()).unwrap());
    assert!(!partial.exists(), "dropping a builder removes its partial file");

    fs::write(&partial, b"stale, from a crashed run").unwrap();
    let builder = ImageBuilder::create(&path, &identity()).unwrap();
    assert_eq!(fs::metadata(&partial).unwrap().len(), builder.layout().ram_end());
    builder.finish(b"", None).unwrap();
    assert!(!partial.exists());
    assert!(Image::open(&path).unwrap().info().unwrap().is_none());
}

#[test]
fn builder_refuses_identities_the_layout_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.mekha");
    let mut twice = identity();
    twice.ram_blocks[1].name = "pc.ram".into();
    let err = ImageBuilder::create(&path, &twice).err().unwrap();
    assert!(err.to_string().contains("RAM block pc.ram appears twice"), "{err}");
    let mut odd = identity();
    odd.ram_blocks[0].length = 1000;
    let err = ImageBuilder::create(&path, &odd).err().unwrap();
    assert!(err.to_string().contains("not a whole number of 4096-byte pages"), "{err}");
    // Lengths whose layout would overflow a file offset.
    let mut huge = identity();
    huge.ram_blocks[0].length = u64::MAX - 4095;
    let err = ImageBuilder::create(&path, &huge).err().unwrap();
    assert!(err.to_string().contains("add up to more than"), "{err}");
    let mut many = identity();
    many.ram_blocks = (0..5000).map(|i| RamBlock { name: format!("b{i}"), length: 4096, page_size: 4096 }).collect();
    let err = ImageBuilder::create(&path, &many).err().unwrap();
    assert!(err.to_string().contains("5000 RAM blocks"), "{err}");
}

/// A crafted image whose directory claims a section far larger than any
/// honest one, in a sparse file long enough to hold it: refused before
/// anything is allocated (a matching checksum of its zeros would be no
/// defence).
#[test]
fn a_section_larger_than_any_honest_one_is_refused_before_reading() {
    let (_dir, path, _) = build();
    let claimed: u64 = 2 << 30;
    let image = Image::open(&path).unwrap();
    let device = *image.section(SectionKind::DeviceState).unwrap();
    let end = image.file_len();
    drop(image);
    // The section moves past the file's end, into a hole of `claimed` bytes.
    OpenOptions::new().write(true).open(&path).unwrap().set_len(end + claimed).unwrap();
    rewrite_header(&path, |h| {
        let i = h.entries().iter().position(|e| e.kind.get() == SectionKind::DeviceState.number()).unwrap();
        h.sections[i].offset = end.into();
        h.sections[i].length = claimed.into();
    });
    let image = Image::open(&path).unwrap();
    assert_ne!(image.section(SectionKind::DeviceState).unwrap().offset, device.offset);
    let err = image.device_state().unwrap_err();
    assert!(err.to_string().contains("more than mekha reads of one"), "{err}");
}

#[test]
fn truncation_names_what_is_missing() {
    let (_dir, path, finished) = build();
    let original = fs::read(&path).unwrap();
    let page_crcs = section_of(&path, SectionKind::PageCrcs);
    let device = section_of(&path, SectionKind::DeviceState);
    let info = section_of(&path, SectionKind::Info);
    let cases: Vec<(u64, String)> = vec![
        (0, "the header ends at 4096".into()),
        (100, "the header ends at 4096".into()),
        (4095, "the header ends at 4096".into()),
        (4096, format!("section RAM ends at {}", finished.ram_end)),
        (layout::RAM_START + 12345, format!("section RAM ends at {}", finished.ram_end)),
        (finished.ram_end, "section IDENTITY ends at".into()),
        (page_crcs.offset + 10, format!("section PAGE_CRCS ends at {}", page_crcs.end())),
        (device.offset + 3, format!("section DEVICE_STATE ends at {}", device.end())),
        (finished.size - 1, format!("section INFO ends at {}", info.end())),
    ];
    for (len, expected) in cases {
        fs::write(&path, &original).unwrap();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len).unwrap();
        let err = open_err(&path);
        assert!(matches!(err, ImageError::Truncated { .. }), "at {len}: {err}");
        let message = err.to_string();
        assert!(message.contains("is truncated"), "{message}");
        assert!(message.contains(&expected), "at {len}: {message:?} lacks {expected:?}");
        assert!(message.contains(&format!("the file has {len} bytes")), "{message}");
        assert!(verify(&path).is_err());
    }
}

#[test]
fn flipped_bits_in_the_header_are_caught() {
    let (_dir, path, _) = build();
    let original = fs::read(&path).unwrap();
    // Creation time, a directory entry's offset, the zero padding.
    for offset in [17, 64 + 32 + 9, 3000] {
        fs::write(&path, &original).unwrap();
        flip_bit(&path, offset);
        let err = open_err(&path);
        assert!(matches!(err, ImageError::HeaderChecksum { .. }), "at {offset}: {err}");
        assert!(err.to_string().contains("header checksum mismatch"), "{err}");
    }
}

#[test]
fn flipped_bits_in_sections_are_caught() {
    let (_dir, path, _) = build();
    let original = fs::read(&path).unwrap();

    // IDENTITY and PAGE_CRCS are needed to open the image at all.
    for kind in [SectionKind::Identity, SectionKind::PageCrcs] {
        fs::write(&path, &original).unwrap();
        flip_bit(&path, section_of(&path, kind).offset + 2);
        let err = open_err(&path);
        assert!(matches!(err, ImageError::SectionChecksum { kind: k, .. } if k == kind), "{err}");
        assert!(err.to_string().contains(&format!("section {kind} checksum mismatch")), "{err}");
    }

    // DEVICE_STATE is checked when read, and by verify.
    fs::write(&path, &original).unwrap();
    flip_bit(&path, section_of(&path, SectionKind::DeviceState).offset + 5);
    let image = Image::open(&path).unwrap();
    let err = image.device_state().unwrap_err();
    assert!(err.to_string().contains("section DEVICE_STATE checksum mismatch"), "{err}");
    let report = verify(&path).unwrap();
    assert!(!report.is_intact());
    assert_eq!(report.bad_sections.len(), 1);
    assert!(report.problems()[0].starts_with("section DEVICE_STATE checksum mismatch"), "{:?}", report.problems());
}

#[test]
fn flipped_bits_in_pages_are_caught() {
    let (_dir, path, _) = build();
    let image = Image::open(&path).unwrap();
    // A written page, and a never-written one (a hole) that gains data.
    flip_bit(&path, image.page_data_offset(770) + 4000);
    flip_bit(&path, image.page_data_offset(833) + 4095);
    let report = verify(&path).unwrap();
    assert_eq!(report.bad_pages, 2, "{:?}", report.problems());
    assert_eq!(
        report.problems(),
        vec!["page 770 (pc.bios + 0x0) checksum mismatch", "page 833 (pc.bios + 0x3f000) checksum mismatch"]
    );
    assert_eq!(report.first_bad_pages[0].file_offset, image.page_data_offset(770));
    let err = image.read_page(770, &mut vec![0; PAGE_SIZE]).unwrap_err();
    assert_eq!(err.to_string(), format!("image {}: page 770 (pc.bios + 0x0) checksum mismatch", path.display()));
}

#[test]
fn many_bad_pages_are_counted_but_few_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node1.mekha");
    let mut builder = ImageBuilder::create(&path, &identity()).unwrap();
    for p in 100..140 {
        builder.set_page_crc(p, 1234);
    }
    builder.finish(DEVICE_STATE, None).unwrap();
    let report = verify(&path).unwrap();
    assert_eq!(report.bad_pages, 40);
    assert_eq!(report.first_bad_pages.len(), MAX_REPORTED_BAD_PAGES);
    assert_eq!(report.problems().last().unwrap(), "... and 8 more bad pages");
}

#[test]
fn other_files_are_not_images() {
    let (dir, path, _) = build();
    flip_bit(&path, 0);
    let err = open_err(&path);
    assert!(matches!(err, ImageError::BadMagic { .. }));
    assert!(err.to_string().ends_with("is not a mekha image (bad magic)"), "{err}");

    let text = dir.path().join("notes.txt");
    fs::write(&text, "hello").unwrap();
    assert!(matches!(open_err(&text), ImageError::BadMagic { .. }));

    let err = Image::open(&dir.path().join("missing.mekha")).unwrap_err();
    assert!(!err.is_damage());
    assert!(err.to_string().starts_with("opening image"), "{err}");
}

#[test]
fn versions() {
    let (_dir, path, _) = build();
    let original = fs::read(&path).unwrap();

    // A newer major is refused before its checksum is even looked at.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&2u16.to_le_bytes(), 8).unwrap();
    let err = open_err(&path);
    assert!(matches!(err, ImageError::NewerFormat { major: 2, .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("format 2.{FORMAT_MINOR}, which is newer than this mekha (1.x)")),
        "{err}"
    );

    fs::write(&path, &original).unwrap();
    rewrite_header(&path, |h| h.header.major = U16::new(0));
    assert!(matches!(open_err(&path), ImageError::OlderFormat { major: 0, .. }));

    // A newer minor only adds what 1.0 readers may ignore.
    fs::write(&path, &original).unwrap();
    rewrite_header(&path, |h| {
        h.header.minor = U16::new(7);
        h.header.flags = U32::new(0x8000);
    });
    let image = Image::open(&path).unwrap();
    assert_eq!((image.header().major, image.header().minor), (1, 7));
    assert!(verify(&path).unwrap().is_intact());
}

#[test]
fn time_record_round_trips_and_is_checked() {
    use crate::vtime::TimeRecord;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node1.mekha");
    let builder = ImageBuilder::create(&path, &identity()).unwrap();
    builder.finish(DEVICE_STATE, None).unwrap();
    assert_eq!(Image::open(&path).unwrap().time().unwrap(), None, "no TIME section: None");

    let record = TimeRecord::new(1_700_000_000_000_000_000, 1_700_000_030_000_000_000, 123_456_789);
    let mut builder = ImageBuilder::create(&path, &identity()).unwrap();
    builder.set_time(record);
    builder.finish(DEVICE_STATE, None).unwrap();
    let image = Image::open(&path).unwrap();
    assert_eq!(image.header().minor, FORMAT_MINOR);
    assert_eq!(image.time().unwrap(), Some(record));
    assert_eq!(verify(&path).unwrap().sections_checked, 4, "the TIME section is checked by verify");

    // A flipped bit in it is damage, named.
    let offset = image.section(SectionKind::Time).unwrap().offset;
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0xff], offset + 3).unwrap();
    let err = Image::open(&path).unwrap().time().unwrap_err();
    assert!(err.is_damage() && err.to_string().contains("TIME"), "{err}");
    assert!(!verify(&path).unwrap().is_intact());
}

/// Found by the image fuzz target: a TIME section's clocks fed the
/// restore's offset arithmetic unchecked, which overflowed.
#[test]
fn time_records_no_clock_can_show_are_refused() {
    use crate::vtime::TimeRecord;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node1.mekha");
    let now = 1_700_000_000_000_000_000;
    for (guest, host) in [(i64::MIN, now), (now, i64::MAX), (-1, now), (now, -5)] {
        let mut builder = ImageBuilder::create(&path, &identity()).unwrap();
        builder.set_time(TimeRecord::new(guest, host, 0));
        builder.finish(DEVICE_STATE, None).unwrap();
        let err = Image::open(&path).unwrap().time().unwrap_err();
        assert!(err.is_damage() && err.to_string().contains("TIME section holds a wall clock"), "{err}");
    }
}

#[test]
fn unknown_sections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node1.mekha");
    let mut builder = ImageBuilder::create(&path, &identity()).unwrap();
    builder.add_section(SectionKind::Unknown(1000), false, b"from the future".to_vec());
    builder.finish(DEVICE_STATE, None).unwrap();
    let image = Image::open(&path).unwrap();
    assert!(image.section(SectionKind::Unknown(1000)).is_some());
    let report = verify(&path).unwrap();
    assert!(report.is_intact());
    assert_eq!(report.sections_checked, 4, "the unknown section's checksum is checked too");

    let kind = SectionKind::Unknown(1001);
    let mut builder = ImageBuilder::create(&path, &identity()).unwrap();
    builder.add_section(kind, true, b"must be understood".to_vec());
    builder.finish(DEVICE_STATE, None).unwrap();
    let err = open_err(&path);
    assert!(matches!(err, ImageError::UnknownRequiredSection { .. }), "{err}");
    assert!(err.to_string().contains(&format!("needs section {kind}, which this mekha does not know")), "{err}");
}

#[test]
fn net_frames_round_trip_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node1.mekha");
    ImageBuilder::create(&path, &identity()).unwrap().finish(DEVICE_STATE, None).unwrap();
    assert_eq!(Image::open(&path).unwrap().net_frames().unwrap(), None, "no NET_FRAMES section: None");

    let mut frames = NetFrames::default();
    frames.push("net0", 12, 0, &[0x5a; 98]);
    frames.push("net0", 12, FRAME_RAW, &[0xa5; 60]);
    let mut builder = ImageBuilder::create(&path, &identity()).unwrap();
    builder.set_net_frames(frames.clone());
    builder.finish(DEVICE_STATE, None).unwrap();
    let image = Image::open(&path).unwrap();
    assert_eq!(image.net_frames().unwrap(), Some(frames.clone()));
    let section = *image.section(SectionKind::NetFrames).unwrap();
    assert!(!section.required, "a reader that cannot give frames back may still restore");
    assert_eq!(verify(&path).unwrap().sections_checked, 4, "the NET_FRAMES section is checked by verify");
    let summary = inspect(&path).unwrap().net_frames.unwrap();
    assert_eq!((summary.frames, summary.bytes, summary.netdevs), (2, 158, vec![("net0".to_string(), 2)]));

    // An empty hold is written too: the checkpoint held nothing.
    let mut builder = ImageBuilder::create(&path, &identity()).unwrap();
    builder.set_net_frames(NetFrames::default());
    builder.finish(DEVICE_STATE, None).unwrap();
    assert_eq!(Image::open(&path).unwrap().net_frames().unwrap(), Some(NetFrames::default()));

    // A flipped bit in it is damage, named.
    let mut builder = ImageBuilder::create(&path, &identity()).unwrap();
    builder.set_net_frames(frames);
    builder.finish(DEVICE_STATE, None).unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0xff], section.offset + 40).unwrap();
    let err = Image::open(&path).unwrap().net_frames().unwrap_err();
    assert!(err.is_damage() && err.to_string().contains("NET_FRAMES"), "{err}");
    assert!(!verify(&path).unwrap().is_intact());
    assert!(inspect(&path).unwrap().warnings.iter().any(|w| w.contains("NET_FRAMES")));
}

#[test]
fn malformed_directories_are_refused() {
    let (_dir, path, _) = build();
    let original = fs::read(&path).unwrap();
    let index_of = |kind: SectionKind| {
        let mut buf = vec![0u8; HEADER_SIZE];
        fs::File::open(&path).unwrap().read_exact_at(&mut buf, 0).unwrap();
        let block = HeaderBlock::read_from_bytes(&buf).unwrap();
        block.entries().iter().position(|e| e.kind.get() == kind.number()).unwrap()
    };
    type Edit = Box<dyn Fn(&mut HeaderBlock, usize)>;
    let cases: Vec<(SectionKind, Edit, &str)> = vec![
        (
            SectionKind::DeviceState,
            Box::new(|h, i| h.sections[i].kind = U32::new(2)),
            "section PAGE_CRCS appears twice",
        ),
        (
            SectionKind::DeviceState,
            Box::new(|h, i| {
                let identity = h.entries().iter().find(|e| e.kind.get() == 1).unwrap().offset;
                h.sections[i].offset = identity;
            }),
            "sections DEVICE_STATE and IDENTITY overlap",
        ),
        (
            SectionKind::Info,
            Box::new(|h, i| h.sections[i].offset = 100.into()),
            "section INFO starts inside the header",
        ),
        (SectionKind::Ram, Box::new(|h, i| h.sections[i].length = 4096.into()), "the RAM section spans"),
        (
            SectionKind::DeviceState,
            Box::new(|h, i| {
                let last = h.header.section_count.get() as usize - 1;
                h.sections[i] = h.sections[last];
                h.header.section_count = U32::new(u32::try_from(last).unwrap());
            }),
            "the DEVICE_STATE section is missing",
        ),
    ];
    for (kind, edit, expected) in cases {
        fs::write(&path, &original).unwrap();
        let i = index_of(kind);
        rewrite_header(&path, |h| edit(h, i));
        let err = open_err(&path);
        assert!(err.to_string().contains(expected), "{err:?} lacks {expected:?}");
    }
}

// Sealed images: a MAC under a key over what a restore trusts.

fn key(n: u8) -> ImageKey {
    ImageKey::from_bytes(&[n; 32])
}

fn build_sealed(key: &ImageKey) -> (TempDir, PathBuf, FinishedImage) {
    let dir = tempfile::tempdir().unwrap();
    let finished = build_with(dir.path(), &identity(), &WRITTEN, Some(key));
    (dir, finished.path.clone(), finished)
}

/// Flips byte `at` of `data`, then four bytes from `fix` so that its
/// CRC32C stays the same: what anyone can do to a CRC, since a CRC is
/// affine over GF(2) (each bit flipped flips a fixed set of CRC bits).
fn forge_same_crc(data: &mut [u8], at: usize, fix: usize) {
    let before = crc32c::crc32c(data);
    data[at] ^= 0x5a;
    let base = crc32c::crc32c(data);
    let effect = |bit: usize| {
        let mut d = data.to_vec();
        d[fix + bit / 8] ^= 1 << (bit % 8);
        crc32c::crc32c(&d) ^ base
    };
    // An XOR basis of the 32 effects, each row (effect, bits flipped),
    // leading bits distinct, highest first.
    let mut basis: Vec<(u32, u32)> = Vec::new();
    for bit in 0..32 {
        let (mut e, mut m) = (effect(bit), 1u32 << bit);
        for &(be, bm) in &basis {
            if e ^ be < e {
                (e, m) = (e ^ be, m ^ bm);
            }
        }
        if e != 0 {
            basis.push((e, m));
            basis.sort_by_key(|&(e, _)| std::cmp::Reverse(e));
        }
    }
    let (mut rest, mut flips) = (base ^ before, 0u32);
    for &(be, bm) in &basis {
        if rest ^ be < rest {
            (rest, flips) = (rest ^ be, flips ^ bm);
        }
    }
    assert_eq!(rest, 0, "a CRC32C can always be kept");
    for (i, byte) in flips.to_le_bytes().iter().enumerate() {
        data[fix + i] ^= byte;
    }
    assert_eq!(crc32c::crc32c(data), before);
}

#[test]
fn a_sealed_image_opens_under_its_key_only() {
    let (_dir, path, finished) = build_sealed(&key(1));
    let mac = finished.mac.expect("a sealed image has a MAC");
    let image = Image::open_sealed(&path, &key(1)).unwrap();
    assert_eq!(image.mac(), Some(mac));
    let report = verify_image(&image).unwrap();
    assert!(report.is_intact(), "{:?}", report.problems());
    assert_eq!(report.mac, Some(mac.to_hex()));
    let mut buf = vec![0u8; PAGE_SIZE];
    image.read_page(768, &mut buf).unwrap();
    assert_eq!(buf, page_data(768));
    assert!(image.page_was_zero(2) && !image.page_was_zero(768));
    // Readers without the key read it as any image.
    let plain = Image::open(&path).unwrap();
    assert_eq!(plain.mac(), None);
    assert!(verify_image(&plain).unwrap().is_intact());

    let err = Image::open_sealed(&path, &key(2)).unwrap_err();
    assert!(matches!(err, ImageError::OtherKey { .. }) && err.to_string().contains("another image key"), "{err}");
    let (_d, unsealed, _) = build();
    let err = Image::open_sealed(&unsealed, &key(1)).unwrap_err();
    assert!(matches!(err, ImageError::Unsealed { .. }), "{err}");
    // Without its AUTH entry, a sealed image is just unsealed.
    rewrite_header(&path, |block| {
        let count = block.header.section_count.get() as usize;
        let auth = block.sections[..count].iter().position(|e| e.kind.get() == 8).unwrap();
        block.sections[auth] = block.sections[count - 1];
        block.sections[count - 1] = Default::default();
        block.header.section_count = U32::new(u32::try_from(count).unwrap() - 1);
    });
    assert!(matches!(Image::open_sealed(&path, &key(1)).unwrap_err(), ImageError::Unsealed { .. }));
}

#[test]
fn a_page_changed_with_its_crc_kept_is_caught_only_by_the_mac() {
    let (_dir, path, _) = build_sealed(&key(1));
    let offset = Image::open(&path).unwrap().page_data_offset(768);
    let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut page = vec![0u8; PAGE_SIZE];
    file.read_exact_at(&mut page, offset).unwrap();
    forge_same_crc(&mut page, 100, 0);
    file.write_all_at(&page, offset).unwrap();

    // The CRCs are fooled: this is what a restore without a key runs.
    assert!(verify_image(&Image::open(&path).unwrap()).unwrap().is_intact());
    let image = Image::open_sealed(&path, &key(1)).unwrap();
    assert!(!image.page_matches(768, &page));
    let err = image.read_page(768, &mut vec![0u8; PAGE_SIZE]).unwrap_err();
    assert!(matches!(err, ImageError::PageChecksum { page: 768, .. }), "{err}");
    let report = verify_image(&image).unwrap();
    assert_eq!(report.bad_pages, 1);
    assert!(report.first_bad_pages[0].mac_mismatch);
    assert!(report.problems()[0].contains("does not match its MAC"), "{:?}", report.problems());
}

#[test]
fn a_section_changed_with_its_crc_kept_is_refused() {
    let (_dir, path, _) = build_sealed(&key(1));
    let section = section_of(&path, SectionKind::DeviceState);
    let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut bytes = vec![0u8; to_usize(section.length)];
    file.read_exact_at(&mut bytes, section.offset).unwrap();
    forge_same_crc(&mut bytes, 20, 8);
    file.write_all_at(&bytes, section.offset).unwrap();

    assert_eq!(Image::open(&path).unwrap().device_state().unwrap(), bytes, "the CRC is fooled");
    let image = Image::open_sealed(&path, &key(1)).unwrap();
    let err = image.device_state().unwrap_err();
    assert!(
        matches!(&err, ImageError::Tampered { what, .. } if what == "section DEVICE_STATE") && err.is_damage(),
        "{err}"
    );
    let report = verify_image(&image).unwrap();
    assert!(report.bad_sections.iter().any(|s| s.kind == "DEVICE_STATE" && s.mac_mismatch), "{report:?}");
}

#[test]
fn a_header_or_directory_changed_is_refused() {
    let (_dir, path, _) = build_sealed(&key(1));
    // A valid header CRC, as anyone can write.
    rewrite_header(&path, |block| block.header.created_unix_ns = (block.header.created_unix_ns.get() + 1).into());
    Image::open(&path).unwrap();
    let err = Image::open_sealed(&path, &key(1)).unwrap_err();
    assert!(matches!(&err, ImageError::Tampered { what, .. } if what.contains("directory")), "{err}");
}

#[test]
fn keys_parse_from_hex_only_and_never_print() {
    let text = format!("  {}\n", "0f".repeat(32));
    let key = ImageKey::parse(text.as_bytes()).unwrap();
    assert_eq!(key.to_hex(), "0f".repeat(32));
    assert_eq!(key.id(), ImageKey::from_bytes(&[0x0f; 32]).id());
    assert!(!format!("{key:?}").contains("0f0f"), "{key:?}");
    for bad in ["", "0f", &"zz".repeat(32), &"0f".repeat(33)] {
        assert!(ImageKey::parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
    assert!(Mac::parse(&"ab".repeat(32)).is_ok() && Mac::parse("ab").is_err());
}
