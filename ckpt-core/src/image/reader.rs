// SPDX-License-Identifier: GPL-2.0-or-later
//! Opening an image: everything about its structure is checked up front so
//! that a restore never starts from an image it cannot finish.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use zerocopy::FromBytes;

use super::auth::{ImageKey, Mac, MacHeader, PageTag, Seal, SealError, PAGE_TAG_LEN};
use super::error::{ImageError, Result};
use super::format::{
    check_identity, HeaderBlock, IdentityRecord, Producer, Section, SectionKind, FORMAT_MAJOR, HEADER_SIZE, MAGIC,
    MAX_SECTIONS, PAGE_SIZE_FIELD, ZERO_PAGE_CRC,
};
use super::layout::{Identity, Layout, RAM_START};
use super::net_frames::NetFrames;
use crate::vtime::TimeRecord;
use crate::width::to_usize;
use crate::PAGE_SIZE;

/// Sections an image must have, whatever their flags say.
const MANDATORY: [SectionKind; 4] =
    [SectionKind::Identity, SectionKind::PageCrcs, SectionKind::DeviceState, SectionKind::Ram];

/// Reads are split so that a huge section never needs one huge buffer.
pub(crate) const READ_CHUNK: usize = 8 << 20;

/// The header's fields, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HeaderInfo {
    /// Format major version: always [`FORMAT_MAJOR`] in an opened image.
    pub major: u16,
    /// Format minor version: any (an older minor lacks newer optional sections).
    pub minor: u16,
    /// Header flags as stored; none is defined, unknown bits are ignored.
    pub flags: u32,
    /// When the image was written, ns since the Unix epoch.
    pub created_unix_ns: u64,
    /// The header block's CRC32C, which names this exact image.
    pub header_crc32c: u32,
}

/// An image whose header, section directory, IDENTITY and PAGE_CRCS are
/// valid (and, opened with a key, whose MAC holds).
pub struct Image {
    path: PathBuf,
    file: File,
    file_len: u64,
    header: HeaderInfo,
    sections: Vec<Section>,
    record: IdentityRecord,
    layout: Layout,
    page_crcs: Vec<u32>,
    sealed: Option<Sealed>,
}

/// What an image opened with its key checks besides the CRCs.
struct Sealed {
    seal: Seal,
    page_tags: Vec<PageTag>,
    zero_page_tag: PageTag,
}

impl Image {
    /// Opens an image, checking its structure and CRCs (a MAC, if it has
    /// one, is not checked: see [`open_sealed`](Self::open_sealed)).
    pub fn open(path: &Path) -> Result<Image> {
        Image::open_with(path, None)
    }

    /// Opens an image that must carry a MAC under `key`: refused unless it
    /// holds; then every section read and every page checked is also
    /// checked against its tag.
    pub fn open_sealed(path: &Path, key: &ImageKey) -> Result<Image> {
        Image::open_with(path, Some(key))
    }

    /// [`open_sealed`](Self::open_sealed) with a key, else [`open`](Self::open).
    pub fn open_with(path: &Path, key: Option<&ImageKey>) -> Result<Image> {
        let file = File::open(path).map_err(ImageError::io("opening image", path))?;
        let meta = file.metadata().map_err(ImageError::io("reading image", path))?;
        if !meta.is_file() {
            return Err(ImageError::io("reading image", path)(io::Error::other("not a regular file")));
        }
        let file_len = meta.len();
        let (header, mac_header, sections) = read_header(&file, path, file_len)?;
        let section = |kind| *sections.iter().find(|s| s.kind == kind).expect("mandatory sections are present");
        let seal = key.map(|key| open_seal(&file, path, key, &mac_header, &sections)).transpose()?;
        let read_checked = |s: &Section| read_section(&file, path, seal.as_ref(), s);

        let identity_bytes = read_checked(&section(SectionKind::Identity))?;
        let record: IdentityRecord = serde_json::from_slice(&identity_bytes)
            .map_err(|e| ImageError::malformed(path, format!("the IDENTITY section is not valid: {e}")))?;
        check_identity(&record.vm).map_err(|e| ImageError::malformed(path, format!("IDENTITY: {e}")))?;
        let layout = Layout::new(&record.vm.ram_blocks);

        let ram = section(SectionKind::Ram);
        if ram.offset != RAM_START || ram.end() != layout.ram_end() {
            return Err(ImageError::malformed(
                path,
                format!(
                    "the RAM section spans {:#x}..{:#x} but the RAM blocks in IDENTITY need {RAM_START:#x}..{:#x}",
                    ram.offset,
                    ram.end(),
                    layout.ram_end()
                ),
            ));
        }
        let crcs = section(SectionKind::PageCrcs);
        if crcs.length != layout.total_pages() * 4 {
            return Err(ImageError::malformed(
                path,
                format!(
                    "PAGE_CRCS holds {} bytes but the RAM blocks have {} pages ({} bytes of checksums)",
                    crcs.length,
                    layout.total_pages(),
                    layout.total_pages() * 4
                ),
            ));
        }
        let page_crcs =
            read_checked(&crcs)?.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        let sealed = match seal {
            Some(seal) => {
                let tags = sections.iter().find(|s| s.kind == SectionKind::PageTags).copied();
                let tags =
                    tags.filter(|t| t.length == layout.total_pages() * PAGE_TAG_LEN as u64).ok_or_else(|| {
                        ImageError::malformed(path, "its PAGE_TAGS section is missing or does not match the RAM blocks")
                    })?;
                let page_tags = read_section(&file, path, Some(&seal), &tags)?
                    .chunks_exact(PAGE_TAG_LEN)
                    .map(|c| c.try_into().expect("a whole tag"))
                    .collect();
                let zero_page_tag = seal.key.page_tag(&[0; PAGE_SIZE]);
                Some(Sealed { seal, page_tags, zero_page_tag })
            }
            None => None,
        };
        Ok(Image { path: path.to_owned(), file, file_len, header, sections, record, layout, page_crcs, sealed })
    }

    /// The image's MAC, when it was opened with its key.
    pub fn mac(&self) -> Option<Mac> {
        self.sealed.as_ref().map(|s| s.seal.mac)
    }

    /// Whether `data` is what page `page` held when the image was written:
    /// its tag, opened with a key (which finds any change a CRC would), else
    /// its CRC32C.
    pub fn page_matches(&self, page: u64, data: &[u8]) -> bool {
        match &self.sealed {
            Some(s) => constant_time_eq::constant_time_eq_16(&s.seal.key.page_tag(data), &s.page_tags[to_usize(page)]),
            None => super::format::page_crc(data) == self.page_crcs[to_usize(page)],
        }
    }

    /// Whether page `page` was all zeros when the image was written (as a
    /// hole of the file reads).
    pub fn page_was_zero(&self, page: u64) -> bool {
        self.page_crcs[to_usize(page)] == ZERO_PAGE_CRC
            && self
                .sealed
                .as_ref()
                .is_none_or(|s| constant_time_eq::constant_time_eq_16(&s.zero_page_tag, &s.page_tags[to_usize(page)]))
    }

    /// A section's bytes, checked against its CRC32C and, opened with a
    /// key, its tag.
    pub(crate) fn read_section(&self, section: &Section) -> Result<Vec<u8>> {
        read_section(&self.file, &self.path, self.sealed.as_ref().map(|s| &s.seal), section)
    }

    /// Opened with a key: the seal that held (its key, its tags).
    pub(crate) fn seal(&self) -> Option<&Seal> {
        self.sealed.as_ref().map(|s| &s.seal)
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, read-only: RAM is read (or mapped) through it.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file's length in bytes when opened.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The header's fields.
    pub fn header(&self) -> &HeaderInfo {
        &self.header
    }

    /// The directory, in file order, unknown optional kinds included.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The directory entry of `kind`, if the image has that section.
    pub fn section(&self, kind: SectionKind) -> Option<&Section> {
        self.sections.iter().find(|s| s.kind == kind)
    }

    /// The VM the image was taken from (IDENTITY), checked by
    /// [`check_identity`].
    pub fn identity(&self) -> &Identity {
        &self.record.vm
    }

    /// The mekha that wrote the image.
    pub fn producer(&self) -> &Producer {
        &self.record.mekha
    }

    /// Where each page is in the file, from the identity's RAM blocks.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// One CRC32C per global page.
    pub fn page_crcs(&self) -> &[u32] {
        &self.page_crcs
    }

    /// File offset of global page `page`'s data.
    pub fn page_data_offset(&self, page: u64) -> u64 {
        self.layout.page_offset(page)
    }

    /// The block holding global page `page` and the page's byte offset in it.
    pub fn page_place(&self, page: u64) -> (&str, u64) {
        let (block, index) = self.layout.locate(page);
        (&self.record.vm.ram_blocks[block].name, index * PAGE_SIZE as u64)
    }

    /// Reads global page `page` into `buf` (one page long), checking its CRC32C.
    pub fn read_page(&self, page: u64, buf: &mut [u8]) -> Result<()> {
        assert_eq!(buf.len(), PAGE_SIZE, "a page is {PAGE_SIZE} bytes");
        self.file
            .read_exact_at(buf, self.page_data_offset(page))
            .map_err(ImageError::io("reading image", &self.path))?;
        if !self.page_matches(page, buf) {
            let (block, offset_in_block) = self.page_place(page);
            return Err(ImageError::PageChecksum {
                path: self.path.clone(),
                page,
                block: block.to_owned(),
                offset_in_block,
            });
        }
        Ok(())
    }

    /// QEMU's device state stream, checksum-checked.
    pub fn device_state(&self) -> Result<Vec<u8>> {
        let section = self.section(SectionKind::DeviceState).expect("mandatory sections are present");
        self.read_section(section)
    }

    /// The clocks at the checkpoint instant (TIME section; none in 1.0).
    pub fn time(&self) -> Result<Option<TimeRecord>> {
        let Some(section) = self.section(SectionKind::Time) else { return Ok(None) };
        let bytes = self.read_section(section)?;
        let record = TimeRecord::read_from_bytes(&bytes).map_err(|_| {
            ImageError::malformed(&self.path, format!("the TIME section is {} bytes, not 32", bytes.len()))
        })?;
        record.check().map_err(|e| ImageError::malformed(&self.path, format!("the TIME section holds {e}")))?;
        Ok(Some(record))
    }

    /// The network frames in flight toward the VM at the checkpoint
    /// (NET_FRAMES section; none in 1.0 and in images of VMs without a NIC
    /// from before it).
    pub fn net_frames(&self) -> Result<Option<NetFrames>> {
        let Some(section) = self.section(SectionKind::NetFrames) else { return Ok(None) };
        let bytes = self.read_section(section)?;
        NetFrames::decode(&bytes)
            .map(Some)
            .map_err(|e| ImageError::malformed(&self.path, format!("the NET_FRAMES section is not valid: {e}")))
    }

    /// The free-form statistics of the INFO section, if the image has one.
    pub fn info(&self) -> Result<Option<serde_json::Value>> {
        let Some(section) = self.section(SectionKind::Info) else { return Ok(None) };
        let bytes = self.read_section(section)?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::malformed(&self.path, format!("the INFO section is not valid JSON: {e}")))?;
        Ok(Some(value))
    }
}

// By hand: the derived form would print every page's checksum.
impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.path)
            .field("file_len", &self.file_len)
            .field("header", &self.header)
            .field("sections", &self.sections)
            .field("identity", &self.record)
            .field("pages", &self.page_crcs.len())
            .field("mac", &self.mac())
            .finish_non_exhaustive()
    }
}

/// Reads and validates the header block and the section directory.
fn read_header(file: &File, path: &Path, file_len: u64) -> Result<(HeaderInfo, MacHeader, Vec<Section>)> {
    let mut buf = vec![0u8; HEADER_SIZE];
    let available = to_usize(file_len.min(HEADER_SIZE as u64));
    file.read_exact_at(&mut buf[..available], 0).map_err(ImageError::io("reading image", path))?;
    let magic_bytes = available.min(MAGIC.len());
    if buf[..magic_bytes] != MAGIC[..magic_bytes] {
        return Err(ImageError::BadMagic { path: path.to_owned() });
    }
    if available < HEADER_SIZE {
        return Err(ImageError::Truncated {
            path: path.to_owned(),
            what: "the header".into(),
            end: HEADER_SIZE as u64,
            file_len,
        });
    }
    let block = HeaderBlock::read_from_bytes(&buf).expect("the buffer is one header block");
    let h = &block.header;
    let (major, minor) = (h.major.get(), h.minor.get());
    // The version comes before the checksum: another major may checksum differently.
    if major > FORMAT_MAJOR {
        return Err(ImageError::NewerFormat { path: path.to_owned(), major, minor });
    }
    if major < FORMAT_MAJOR {
        return Err(ImageError::OlderFormat { path: path.to_owned(), major, minor });
    }
    let (stored, computed) = (h.header_crc32c.get(), block.compute_crc());
    if stored != computed {
        return Err(ImageError::HeaderChecksum { path: path.to_owned(), stored, computed });
    }
    if h.page_size.get() != PAGE_SIZE_FIELD {
        return Err(ImageError::malformed(
            path,
            format!("pages of {} bytes (this mekha handles {PAGE_SIZE})", h.page_size.get()),
        ));
    }
    let count = h.section_count.get() as usize;
    if count > MAX_SECTIONS {
        return Err(ImageError::malformed(path, format!("{count} sections, at most {MAX_SECTIONS} fit the header")));
    }
    let header = HeaderInfo {
        major,
        minor,
        flags: h.flags.get(),
        created_unix_ns: h.created_unix_ns.get(),
        header_crc32c: stored,
    };
    let mac_header =
        MacHeader { major: h.major, minor: h.minor, page_size: h.page_size, created_unix_ns: h.created_unix_ns };
    let mut sections: Vec<Section> = block.entries().iter().map(Section::from_entry).collect();
    check_sections(&mut sections, path, file_len)?;
    Ok((header, mac_header, sections))
}

/// Kinds, then bounds in file order, then overlaps. Sorts `sections` by offset.
fn check_sections(sections: &mut [Section], path: &Path, file_len: u64) -> Result<()> {
    let mut seen = HashSet::new();
    for s in sections.iter() {
        if !s.kind.is_known() {
            if s.required {
                return Err(ImageError::UnknownRequiredSection { path: path.to_owned(), kind: s.kind });
            }
            continue;
        }
        if !seen.insert(s.kind) {
            return Err(ImageError::malformed(path, format!("section {} appears twice", s.kind)));
        }
    }
    if let Some(missing) = MANDATORY.iter().find(|k| !seen.contains(k)) {
        return Err(ImageError::malformed(path, format!("the {missing} section is missing")));
    }

    sections.sort_by_key(|s| (s.offset, s.length));
    for s in sections.iter() {
        if s.length > 0 && s.offset < HEADER_SIZE as u64 {
            return Err(ImageError::malformed(path, format!("section {} starts inside the header", s.kind)));
        }
        if s.offset.checked_add(s.length).is_none() {
            return Err(ImageError::malformed(path, format!("section {} ends beyond 2^64", s.kind)));
        }
        if s.end() > file_len {
            return Err(ImageError::Truncated {
                path: path.to_owned(),
                what: format!("section {}", s.kind),
                end: s.end(),
                file_len,
            });
        }
    }
    let mut previous: Option<&Section> = None;
    for s in sections.iter().filter(|s| s.length > 0) {
        if let Some(p) = previous.filter(|p| p.end() > s.offset) {
            return Err(ImageError::malformed(path, format!("sections {} and {} overlap", p.kind, s.kind)));
        }
        previous = Some(s);
    }
    Ok(())
}

/// The most of a section of each kind read into memory. The file's length
/// bounds nothing (a sparse file is as long as it says), nor does a CRC
/// (anyone can compute one): what an image asks for is checked against
/// what such a section can honestly be, and against this host's memory.
fn max_in_memory(kind: SectionKind) -> u64 {
    match kind {
        SectionKind::Identity | SectionKind::Info | SectionKind::Time => 16 << 20,
        // QEMU's device state (RAM excluded) and held frames: far below.
        SectionKind::DeviceState | SectionKind::NetFrames => 1 << 30,
        // 4 bytes a page, of at most MAX_GUEST_RAM (checked with IDENTITY).
        SectionKind::PageCrcs => (super::format::MAX_GUEST_RAM / PAGE_SIZE as u64) * 4,
        SectionKind::PageTags => (super::format::MAX_GUEST_RAM / PAGE_SIZE as u64) * PAGE_TAG_LEN as u64,
        // A header and a tag per section: a few KiB.
        SectionKind::Auth => 1 << 20,
        SectionKind::Ram | SectionKind::Unknown(_) => 0,
    }
}

/// This host's physical memory, in bytes (`u64::MAX` if unknown).
pub(crate) fn host_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    if pages <= 0 || size <= 0 {
        return u64::MAX;
    }
    (pages as u64).saturating_mul(size as u64)
}

/// Checks an image's AUTH under `key`, or says why it does not hold.
fn open_seal(file: &File, path: &Path, key: &ImageKey, header: &MacHeader, sections: &[Section]) -> Result<Seal> {
    let Some(auth) = sections.iter().find(|s| s.kind == SectionKind::Auth) else {
        return Err(ImageError::Unsealed { path: path.to_owned() });
    };
    let bytes = read_section(file, path, None, auth)?;
    Seal::open(key, header, sections, &bytes).map_err(|e| match e {
        SealError::Malformed(why) => ImageError::malformed(path, why),
        SealError::OtherKey(key_id) => ImageError::OtherKey { path: path.to_owned(), key_id, ours: key.id_hex() },
        SealError::Mismatch => ImageError::Tampered { path: path.to_owned(), what: "its header or directory".into() },
    })
}

/// A section's bytes, refused unless they match its CRC32C and, with a
/// seal, its tag.
fn read_section(file: &File, path: &Path, seal: Option<&Seal>, section: &Section) -> Result<Vec<u8>> {
    // A quarter of the host's memory at most, whatever the kind allows.
    let limit = max_in_memory(section.kind).min(host_memory() / 4);
    if section.length > limit {
        return Err(ImageError::malformed(
            path,
            format!(
                "its {:?} section claims {} bytes, more than mekha reads of one ({limit})",
                section.kind, section.length
            ),
        ));
    }
    let mut bytes = vec![0u8; to_usize(section.length)];
    file.read_exact_at(&mut bytes, section.offset).map_err(ImageError::io("reading image", path))?;
    let computed = crc32c::crc32c(&bytes);
    if computed != section.crc32c {
        return Err(ImageError::SectionChecksum {
            path: path.to_owned(),
            kind: section.kind,
            stored: section.crc32c,
            computed,
        });
    }
    if seal.is_some_and(|seal| !seal.section_matches(section.kind, &bytes)) {
        return Err(ImageError::Tampered { path: path.to_owned(), what: format!("section {}", section.kind) });
    }
    Ok(bytes)
}

/// CRC32C of a byte range, read in [`READ_CHUNK`] pieces, also fed to
/// `tag` (a section's keyed hasher) if given.
pub(crate) fn sums_of_range(
    file: &File,
    offset: u64,
    length: u64,
    mut tag: Option<&mut blake3::Hasher>,
) -> io::Result<u32> {
    let mut buf = vec![0u8; to_usize(length).min(READ_CHUNK)];
    let (mut crc, mut done) = (0u32, 0u64);
    while done < length {
        let n = to_usize(length - done).min(buf.len());
        file.read_exact_at(&mut buf[..n], offset + done)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        if let Some(tag) = tag.as_mut() {
            tag.update(&buf[..n]);
        }
        done += n as u64;
    }
    Ok(crc)
}
