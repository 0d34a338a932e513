// SPDX-License-Identifier: GPL-2.0-or-later
//! Writing one image: a sparse `.partial` file that page writers fill at
//! fixed offsets, then sections, header, fsync and the rename that makes
//! the image exist under its final name.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromZeros, IntoBytes};

use super::auth::{self, ImageKey, Mac, MacHeader, PageTag};
use super::durable::{create_partial, now_unix_ns, parent_dir, sync_dir, with_suffix};
use super::error::{ImageError, Result};
use super::format::{
    check_identity, page_crc, HeaderBlock, IdentityRecord, Producer, Section, SectionKind, FORMAT_MAJOR, FORMAT_MINOR,
    MAGIC, MAX_SECTIONS, PAGE_SIZE_FIELD, SECTION_ALIGN, ZERO_PAGE_CRC,
};
use super::layout::{Identity, Layout, RAM_START};
use super::net_frames::NetFrames;
use crate::vtime::TimeRecord;
use crate::width::to_usize;
use crate::PAGE_SIZE;

/// An image being written. Dropping it without [`finish`](Self::finish)
/// removes the partial file, like [`abort`](Self::abort).
pub struct ImageBuilder {
    path_final: PathBuf,
    path_partial: PathBuf,
    file: File,
    identity: Identity,
    layout: Layout,
    /// One CRC32C per global page; pages never written keep the zero-page CRC.
    page_crcs: Vec<u32>,
    /// With an image key: the key and one tag per global page, as
    /// `page_crcs`.
    seal: Option<(ImageKey, Vec<PageTag>)>,
    extra_sections: Vec<(SectionKind, bool, Vec<u8>)>,
    time: Option<TimeRecord>,
    net_frames: Option<NetFrames>,
    created_unix_ns: u64,
    build_id: String,
    /// Finished or aborted: nothing left for `Drop` to clean.
    settled: bool,
}

/// Where a finished image ended up and what its header says.
#[derive(Debug, Clone)]
pub struct FinishedImage {
    /// The image's final path (the `.partial` is renamed to it).
    pub path: PathBuf,
    /// File length in bytes (the file is sparse: unwritten pages take no space).
    pub size: u64,
    /// File offset where the RAM data ends and the metadata sections start.
    pub ram_end: u64,
    /// The header's CRC32C, which names this exact image (a manifest records it).
    pub header_crc32c: u32,
    /// The section directory as written.
    pub sections: Vec<Section>,
    /// The MAC, when written with an image key.
    pub mac: Option<Mac>,
}

impl ImageBuilder {
    /// Starts `<path_final>.partial`, replacing a stale one from a crashed
    /// run, as a sparse file as long as the RAM data.
    pub fn create(path_final: &Path, identity: &Identity) -> Result<ImageBuilder> {
        check_identity(identity).map_err(ImageError::BadIdentity)?;
        let path_partial = with_suffix(path_final, ".partial");
        let file = create_partial(&path_partial).map_err(ImageError::io("creating image", &path_partial))?;
        let layout = Layout::new(&identity.ram_blocks);
        let builder = ImageBuilder {
            path_final: path_final.to_owned(),
            path_partial,
            file,
            identity: identity.clone(),
            page_crcs: vec![ZERO_PAGE_CRC; to_usize(layout.total_pages())],
            seal: None,
            layout,
            extra_sections: Vec::new(),
            time: None,
            net_frames: None,
            created_unix_ns: now_unix_ns(),
            build_id: "unknown".to_owned(),
            settled: false,
        };
        builder
            .file
            .set_len(builder.layout.ram_end())
            .map_err(ImageError::io("sizing image", &builder.path_partial))?;
        Ok(builder)
    }

    /// The partial file, open read-write. Page data goes at
    /// `layout().page_offset(page)`; writing through another descriptor of
    /// the same file (e.g. `O_DIRECT`) is fine: [`finish`](Self::finish)'s
    /// fsync covers the whole file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Path of the partial file, for writers that open their own descriptor.
    pub fn partial_path(&self) -> &Path {
        &self.path_partial
    }

    /// Where each page of the VM goes in the file.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The VM description the image is written for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Records the CRC32C of the data written for global page `page`.
    pub fn set_page_crc(&mut self, page: u64, crc: u32) {
        let total = self.page_crcs.len();
        *self
            .page_crcs
            .get_mut(to_usize(page))
            .unwrap_or_else(|| panic!("page {page} beyond the image's {total} pages")) = crc;
    }

    /// Seals the image under `key` (PAGE_TAGS and AUTH): every page's tag
    /// must then be recorded as its CRC is. Pages never written keep the
    /// zero page's tag.
    pub fn set_key(&mut self, key: &ImageKey) {
        let zero = key.page_tag(&[0; PAGE_SIZE]);
        self.seal = Some((key.clone(), vec![zero; self.page_crcs.len()]));
    }

    /// Records the tag of the data written for global page `page`.
    pub fn set_page_tag(&mut self, page: u64, tag: PageTag) {
        let (_, tags) = self.seal.as_mut().expect("set_key() before page tags");
        tags[to_usize(page)] = tag;
    }

    /// Writes one page through [`file`](Self::file) and records its CRC32C
    /// (and tag).
    pub fn write_page(&mut self, page: u64, data: &[u8]) -> Result<()> {
        assert_eq!(data.len(), PAGE_SIZE, "a page is {PAGE_SIZE} bytes");
        self.file
            .write_all_at(data, self.layout.page_offset(page))
            .map_err(ImageError::io("writing image", &self.path_partial))?;
        self.set_page_crc(page, page_crc(data));
        if let Some((key, tags)) = &mut self.seal {
            tags[to_usize(page)] = key.page_tag(data);
        }
        Ok(())
    }

    /// The build id recorded in IDENTITY (the QEMU library passes its own).
    pub fn set_build_id(&mut self, build_id: &str) {
        self.build_id = build_id.to_owned();
    }

    /// Records the clocks at the checkpoint instant (the TIME section).
    pub fn set_time(&mut self, time: TimeRecord) {
        self.time = Some(time);
    }

    /// Records the network frames in flight toward the VM at the
    /// checkpoint instant (the NET_FRAMES section, written even when empty).
    pub fn set_net_frames(&mut self, frames: NetFrames) {
        self.net_frames = Some(frames);
    }

    /// Adds a section of a kind the builder does not write itself (e.g. a
    /// test's unknown kind).
    pub fn add_section(&mut self, kind: SectionKind, required: bool, data: Vec<u8>) {
        assert!(
            !matches!(
                kind,
                SectionKind::Identity
                    | SectionKind::PageCrcs
                    | SectionKind::DeviceState
                    | SectionKind::Ram
                    | SectionKind::Info
                    | SectionKind::Time
                    | SectionKind::NetFrames
                    | SectionKind::Auth
                    | SectionKind::PageTags
            ),
            "{kind} is written by finish()"
        );
        assert!(kind.number() != 0, "section kind 0 is invalid");
        self.extra_sections.push((kind, required, data));
    }

    /// Writes the sections after the RAM data, then the header; syncs the
    /// file, renames it to its final name and syncs the directory.
    pub fn finish(mut self, device_state: &[u8], info: Option<&serde_json::Value>) -> Result<FinishedImage> {
        let record = IdentityRecord { vm: self.identity.clone(), mekha: Producer::this(&self.build_id) };
        let identity_json = serde_json::to_vec(&record).expect("an identity encodes as JSON");
        let page_crcs: Vec<u8> = self.page_crcs.iter().flat_map(|crc| crc.to_le_bytes()).collect();
        let info_json = info.map(|v| serde_json::to_vec(v).expect("a JSON value encodes"));

        let mut payloads: Vec<(SectionKind, bool, &[u8])> = vec![
            (SectionKind::Identity, true, &identity_json),
            (SectionKind::PageCrcs, true, &page_crcs),
            (SectionKind::DeviceState, true, device_state),
        ];
        if let Some(info) = &info_json {
            payloads.push((SectionKind::Info, false, info));
        }
        let time = self.time;
        if let Some(time) = &time {
            payloads.push((SectionKind::Time, false, time.as_bytes()));
        }
        let net_frames = self.net_frames.as_ref().map(NetFrames::encode);
        if let Some(frames) = &net_frames {
            payloads.push((SectionKind::NetFrames, false, frames));
        }
        let page_tags = self.seal.as_ref().map(|(_, tags)| tags.as_flattened());
        if let Some(tags) = page_tags {
            payloads.push((SectionKind::PageTags, false, tags));
        }
        payloads.extend(self.extra_sections.iter().map(|(kind, required, data)| (*kind, *required, data.as_slice())));
        // One more for AUTH.
        assert!(payloads.len() + 1 < MAX_SECTIONS, "too many sections");

        let ram_end = self.layout.ram_end();
        let mut sections = vec![Section {
            kind: SectionKind::Ram,
            required: true,
            offset: RAM_START,
            length: ram_end - RAM_START,
            crc32c: 0,
        }];
        let mut offset = ram_end;
        for &(kind, required, data) in &payloads {
            self.file.write_all_at(data, offset).map_err(ImageError::io("writing image", &self.path_partial))?;
            sections.push(Section { kind, required, offset, length: data.len() as u64, crc32c: crc32c::crc32c(data) });
            offset = (offset + data.len() as u64).next_multiple_of(SECTION_ALIGN);
        }
        // AUTH last: its MAC covers the directory of all the others.
        let mut mac = None;
        if let Some((key, _)) = &self.seal {
            let tagged: Vec<(SectionKind, &[u8])> = payloads.iter().map(|(kind, _, data)| (*kind, *data)).collect();
            let (bytes, sealed) = auth::seal(key, &self.mac_header(), &sections, &tagged);
            self.file.write_all_at(&bytes, offset).map_err(ImageError::io("writing image", &self.path_partial))?;
            let length = bytes.len() as u64;
            sections.push(Section {
                kind: SectionKind::Auth,
                required: false,
                offset,
                length,
                crc32c: crc32c::crc32c(&bytes),
            });
            mac = Some(sealed);
        }
        // The file ends exactly where the last section does.
        let size = sections.iter().map(Section::end).max().unwrap_or(ram_end);
        self.file.set_len(size).map_err(ImageError::io("sizing image", &self.path_partial))?;

        let header = self.header_block(&sections);
        let header_crc32c = header.header.header_crc32c.get();
        self.file.write_all_at(header.as_bytes(), 0).map_err(ImageError::io("writing image", &self.path_partial))?;
        self.file.sync_all().map_err(ImageError::io("syncing image", &self.path_partial))?;
        fs::rename(&self.path_partial, &self.path_final).map_err(ImageError::io("renaming image", &self.path_final))?;
        self.settled = true;
        let dir = parent_dir(&self.path_final);
        sync_dir(dir).map_err(ImageError::io("syncing directory", dir))?;
        Ok(FinishedImage { path: self.path_final.clone(), size, ram_end, header_crc32c, sections, mac })
    }

    /// Gives up: removes the partial file.
    pub fn abort(mut self) -> Result<()> {
        self.settled = true;
        fs::remove_file(&self.path_partial).map_err(ImageError::io("removing partial image", &self.path_partial))
    }

    /// The header's fields as the MAC covers them (`header_block` writes
    /// the same values).
    fn mac_header(&self) -> MacHeader {
        MacHeader {
            major: U16::new(FORMAT_MAJOR),
            minor: U16::new(FORMAT_MINOR),
            page_size: U32::new(PAGE_SIZE_FIELD),
            created_unix_ns: U64::new(self.created_unix_ns),
        }
    }

    fn header_block(&self, sections: &[Section]) -> HeaderBlock {
        let mut block = HeaderBlock::new_zeroed();
        block.header.magic = MAGIC;
        block.header.major = U16::new(FORMAT_MAJOR);
        block.header.minor = U16::new(FORMAT_MINOR);
        block.header.created_unix_ns = U64::new(self.created_unix_ns);
        block.header.section_count = U32::new(u32::try_from(sections.len()).expect("at most MAX_SECTIONS"));
        block.header.page_size = U32::new(PAGE_SIZE_FIELD);
        for (entry, section) in block.sections.iter_mut().zip(sections) {
            *entry = section.to_entry();
        }
        block.header.header_crc32c = U32::new(block.compute_crc());
        block
    }
}

impl Drop for ImageBuilder {
    fn drop(&mut self) {
        if !self.settled {
            // Best effort: a leftover is also removed by the next create().
            let _ = fs::remove_file(&self.path_partial);
        }
    }
}
