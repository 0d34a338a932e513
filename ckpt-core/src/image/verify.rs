// SPDX-License-Identifier: GPL-2.0-or-later
//! Checking a whole image: every section's and every page's CRC32C, and,
//! for an image opened with its key, every tag.
//!
//! RAM is read sequentially in large chunks. Holes of the sparse file
//! (pages never written) are not read: they are zeros by definition, so
//! their pages only need to carry the zero-page checksum.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{ImageError, Result};
use super::format::{page_crc, SectionKind, ZERO_PAGE_CRC};
use super::layout::RAM_START;
use super::reader::{sums_of_range, Image, READ_CHUNK};
use crate::width::{page_bytes, to_usize};
use crate::PAGE_SIZE;

/// Bad pages listed one by one in a report; the rest are only counted.
pub const MAX_REPORTED_BAD_PAGES: usize = 32;

/// The outcome of [`verify`] on an image whose structure is valid.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The image file.
    pub path: PathBuf,
    /// The image's MAC, hex, when it was opened with its key: then every
    /// tag was checked too.
    pub mac: Option<String>,
    /// Sections whose checksum was checked (all but RAM, checked by page).
    pub sections_checked: usize,
    /// The sections that failed their check, in file order.
    pub bad_sections: Vec<BadSection>,
    /// Pages checked: every page of every RAM block.
    pub pages_checked: u64,
    /// Pages whose data does not match their checksum.
    pub bad_pages: u64,
    /// The first [`MAX_REPORTED_BAD_PAGES`] of them.
    pub first_bad_pages: Vec<BadPage>,
}

/// A section whose bytes do not match its CRC32C or its tag.
#[derive(Debug, Clone, Serialize)]
pub struct BadSection {
    /// The section's kind, e.g. `DEVICE_STATE`, or `kind N` when unknown.
    pub kind: String,
    /// The CRC32C in its directory entry.
    pub stored_crc32c: u32,
    /// The CRC32C of its bytes as read.
    pub computed_crc32c: u32,
    /// The CRC matches but the tag under the key does not: changed on purpose.
    pub mac_mismatch: bool,
}

/// A page whose data does not match its PAGE_CRCS entry or its tag.
#[derive(Debug, Clone, Serialize)]
pub struct BadPage {
    /// The global page number.
    pub page: u64,
    /// The RAM block holding the page.
    pub block: String,
    /// The page's byte offset in that block.
    pub offset_in_block: u64,
    /// The page's byte offset in the file.
    pub file_offset: u64,
    /// Its PAGE_CRCS entry.
    pub stored_crc32c: u32,
    /// The CRC32C of its data as read (a hole reads as zeros).
    pub computed_crc32c: u32,
    /// The CRC matches but the tag under the key does not: changed on purpose.
    pub mac_mismatch: bool,
}

impl VerifyReport {
    /// Whether every section and every page checked out.
    pub fn is_intact(&self) -> bool {
        self.bad_sections.is_empty() && self.bad_pages == 0
    }

    /// One line per problem, for people.
    pub fn problems(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .bad_sections
            .iter()
            .map(|s| match s.mac_mismatch {
                true => format!("section {} does not match its MAC (changed after it was written)", s.kind),
                false => format!(
                    "section {} checksum mismatch (stored {:#010x}, computed {:#010x})",
                    s.kind, s.stored_crc32c, s.computed_crc32c
                ),
            })
            .collect();
        lines.extend(self.first_bad_pages.iter().map(|p| {
            let what = if p.mac_mismatch { "does not match its MAC" } else { "checksum mismatch" };
            format!("page {} ({} + {:#x}) {what}", p.page, p.block, p.offset_in_block)
        }));
        let unlisted = self.bad_pages - self.first_bad_pages.len() as u64;
        if unlisted > 0 {
            lines.push(format!("... and {unlisted} more bad pages"));
        }
        lines
    }
}

/// Everything [`Image::open`] checks, plus every section and every page.
/// An `Err` means the image could not even be opened as one. (An image
/// opened with [`Image::open_sealed`] and given to [`verify_image`] has
/// its tags checked too.)
pub fn verify(path: &Path) -> Result<VerifyReport> {
    verify_image(&Image::open(path)?)
}

/// [`verify`] on an image already open.
pub fn verify_image(image: &Image) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        path: image.path().to_owned(),
        mac: image.mac().map(|m| m.to_hex()),
        sections_checked: 0,
        bad_sections: Vec::new(),
        pages_checked: 0,
        bad_pages: 0,
        first_bad_pages: Vec::new(),
    };
    check_sections(image, &mut report).map_err(ImageError::io("reading image", image.path()))?;
    check_pages(image, &mut report).map_err(ImageError::io("reading image", image.path()))?;
    Ok(report)
}

fn check_sections(image: &Image, report: &mut VerifyReport) -> std::io::Result<()> {
    for section in image.sections().iter().filter(|s| s.kind != SectionKind::Ram) {
        // Open already checked these (and, with a key, AUTH and PAGE_TAGS).
        let opened = match section.kind {
            SectionKind::Identity | SectionKind::PageCrcs => true,
            SectionKind::Auth | SectionKind::PageTags => image.mac().is_some(),
            _ => false,
        };
        if !opened {
            let seal = image.seal();
            let mut hasher = seal.map(|s| s.key.section_hasher());
            let computed = sums_of_range(image.file(), section.offset, section.length, hasher.as_mut())?;
            let mac_mismatch =
                seal.zip(hasher).is_some_and(|(s, h)| !s.section_tag_is(section.kind, h.finalize().as_bytes()));
            if computed != section.crc32c || mac_mismatch {
                report.bad_sections.push(BadSection {
                    kind: section.kind.to_string(),
                    stored_crc32c: section.crc32c,
                    computed_crc32c: computed,
                    mac_mismatch: computed == section.crc32c,
                });
            }
        }
        report.sections_checked += 1;
    }
    Ok(())
}

fn check_pages(image: &Image, report: &mut VerifyReport) -> std::io::Result<()> {
    let layout = image.layout();
    let extents = DataExtents::of(image.file(), RAM_START, layout.ram_end());
    let mut buf = vec![0u8; READ_CHUNK];
    for block in 0..image.identity().ram_blocks.len() {
        let (first_page, pages) = layout.block_pages(block);
        let block_offset = layout.block_offset(block);
        let chunk_pages = (READ_CHUNK / PAGE_SIZE) as u64;
        let mut done = 0;
        while done < pages {
            let n = chunk_pages.min(pages - done);
            let offset = block_offset + done * PAGE_SIZE as u64;
            let len = n as usize * PAGE_SIZE;
            let in_hole = !extents.has_data(offset, offset + len as u64);
            if !in_hole {
                image.file().read_exact_at(&mut buf[..len], offset)?;
            }
            for i in 0..n {
                let page = first_page + done + i;
                let start = page_bytes(i);
                let data = (!in_hole).then(|| &buf[start..start + PAGE_SIZE]);
                record_page(image, report, page, data);
            }
            done += n;
        }
    }
    Ok(())
}

/// Checks one page: its bytes, or `None` for a hole (zeros).
fn record_page(image: &Image, report: &mut VerifyReport, page: u64, data: Option<&[u8]>) {
    report.pages_checked += 1;
    let matches = match data {
        Some(data) => image.page_matches(page, data),
        None => image.page_was_zero(page),
    };
    if matches {
        return;
    }
    let computed = data.map_or(ZERO_PAGE_CRC, page_crc);
    let stored = image.page_crcs()[to_usize(page)];
    report.bad_pages += 1;
    if report.first_bad_pages.len() < MAX_REPORTED_BAD_PAGES {
        let (block, offset_in_block) = image.page_place(page);
        report.first_bad_pages.push(BadPage {
            page,
            block: block.to_owned(),
            offset_in_block,
            file_offset: image.page_data_offset(page),
            stored_crc32c: stored,
            computed_crc32c: computed,
            mac_mismatch: stored == computed,
        });
    }
}

/// The ranges of a file that hold data, as `SEEK_DATA`/`SEEK_HOLE` report
/// them; everything counts as data where the file system cannot tell.
struct DataExtents(Vec<(u64, u64)>);

impl DataExtents {
    fn of(file: &File, start: u64, end: u64) -> DataExtents {
        let fd = file.as_raw_fd();
        let mut extents = Vec::new();
        let mut pos = start;
        while pos < end {
            // SAFETY: lseek on a descriptor we own; reads go through pread,
            // so moving the file position is harmless.
            let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                    break; // only a hole up to the end of the file
                }
                return DataExtents(vec![(start, end)]);
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            let (data, hole) = (data as u64, if hole < 0 { end } else { (hole as u64).min(end) });
            if data >= end {
                break;
            }
            if hole <= data {
                extents.push((data, end)); // cannot happen; stay conservative
                break;
            }
            extents.push((data, hole));
            pos = hole;
        }
        DataExtents(extents)
    }

    /// Whether any byte of `start..end` may hold data.
    fn has_data(&self, start: u64, end: u64) -> bool {
        let i = self.0.partition_point(|&(_, e)| e <= start);
        self.0.get(i).is_some_and(|&(s, _)| s < end)
    }
}
