// SPDX-License-Identifier: GPL-2.0-or-later
//! An image file as a fuzz input: the file's length and the extents that
//! hold data, so that a seed made from a real image (its RAM starts at
//! 2 MiB) is a few KiB; and optional checksum fix-ups, so that mutations
//! reach what the CRC32Cs guard instead of stopping at them. The parser
//! sees the file as written, fix-ups included: nothing is bypassed.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | fix-ups: [`FIX_SECTION_CRCS`], [`FIX_HEADER_CRC`] |
//! | 1 | 8 | file length, u64 LE, modulo [`MAX_FILE_LEN`] + 1 |
//! | 9 | … | extents, each: offset u64 LE (modulo the file length), length u16 LE, that many bytes |
//!
//! An extent cut short by the end of the input keeps the bytes it has;
//! bytes past the file length are dropped.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use mekha_ckpt_core::image::format::{HEADER_SIZE, MAX_SECTIONS};
use mekha_ckpt_core::image::SectionKind;

/// Fix-up: each section's CRC32C (all but RAM's) is recomputed from the
/// bytes the section spans, where it lies in the file.
pub const FIX_SECTION_CRCS: u8 = 1;
/// Fix-up: the header CRC32C is recomputed (after the sections').
pub const FIX_HEADER_CRC: u8 = 2;
/// The longest file an input makes: bounds the RAM a layout may span, so
/// that one run stays quick.
pub const MAX_FILE_LEN: u64 = 64 << 20;
/// Sections longer than this keep their CRC (a fix-up reads the section).
const MAX_FIXED_SECTION: u64 = 1 << 20;

/// Where the header's fields are (the format of `mekha_ckpt_core::image`).
const SECTION_COUNT_AT: usize = 24;
const HEADER_CRC_AT: usize = 28;
const DIRECTORY_AT: usize = 64;
const ENTRY_SIZE: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseImage {
    pub fixups: u8,
    pub len: u64,
    pub extents: Vec<(u64, Vec<u8>)>,
}

impl SparseImage {
    /// Any input is some file.
    pub fn decode(mut data: &[u8]) -> SparseImage {
        let mut take = |n: usize| {
            let (head, rest) = data.split_at(n.min(data.len()));
            data = rest;
            head
        };
        let fixups = take(1).first().copied().unwrap_or(0);
        let len = le_u64(take(8)) % (MAX_FILE_LEN + 1);
        let mut extents = Vec::new();
        loop {
            let header = take(10);
            if header.len() < 10 {
                break;
            }
            let offset = if len == 0 { 0 } else { le_u64(&header[..8]) % len };
            let n = u16::from_le_bytes([header[8], header[9]]) as usize;
            let bytes = take(n);
            let kept = (len - offset).min(bytes.len() as u64) as usize;
            extents.push((offset, bytes[..kept].to_vec()));
        }
        SparseImage { fixups, len, extents }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.fixups];
        out.extend_from_slice(&self.len.to_le_bytes());
        for (offset, bytes) in &self.extents {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    /// The form of the file at `path`: its non-zero runs (zeros are
    /// holes), without fix-ups.
    pub fn of_file(path: &Path) -> io::Result<SparseImage> {
        let bytes = std::fs::read(path)?;
        let len = bytes.len() as u64;
        if len > MAX_FILE_LEN {
            return Err(io::Error::other(format!("{} is longer than {MAX_FILE_LEN} bytes", path.display())));
        }
        // Runs of data; fewer than GAP zeros between two do not split them.
        const GAP: usize = 64;
        let mut extents: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut at = 0;
        while let Some(start) = bytes[at..].iter().position(|&b| b != 0).map(|i| at + i) {
            let mut end = start;
            let mut zeros = 0;
            let mut i = start;
            while i < bytes.len() && zeros < GAP && i - start < u16::MAX as usize {
                if bytes[i] == 0 {
                    zeros += 1;
                } else {
                    zeros = 0;
                    end = i + 1;
                }
                i += 1;
            }
            extents.push((start as u64, bytes[start..end].to_vec()));
            at = end;
        }
        Ok(SparseImage { fixups: 0, len, extents })
    }

    /// Makes `file` this image: truncated, extents written, length set,
    /// fix-ups applied.
    pub fn write_to(&self, file: &File) -> io::Result<()> {
        file.set_len(0)?;
        for (offset, bytes) in &self.extents {
            file.write_all_at(bytes, *offset)?;
        }
        file.set_len(self.len)?;
        if self.fixups & (FIX_SECTION_CRCS | FIX_HEADER_CRC) == 0 || self.len < HEADER_SIZE as u64 {
            return Ok(());
        }
        let mut header = vec![0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0)?;
        if self.fixups & FIX_SECTION_CRCS != 0 {
            let count = (le_u32(&header[SECTION_COUNT_AT..]) as usize).min(MAX_SECTIONS);
            for entry in header[DIRECTORY_AT..].chunks_exact_mut(ENTRY_SIZE).take(count) {
                let (kind, offset, length) = (le_u32(&entry[0..]), le_u64(&entry[8..]), le_u64(&entry[16..]));
                let inside = offset.checked_add(length).is_some_and(|end| end <= self.len);
                if kind == SectionKind::Ram.number() || !inside || length > MAX_FIXED_SECTION {
                    continue;
                }
                let mut bytes = vec![0u8; length as usize];
                file.read_exact_at(&mut bytes, offset)?;
                entry[24..28].copy_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
            }
        }
        if self.fixups & FIX_HEADER_CRC != 0 {
            header[HEADER_CRC_AT..HEADER_CRC_AT + 4].fill(0);
            let crc = crc32c::crc32c(&header);
            header[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        }
        file.write_all_at(&header, 0)
    }
}

/// Little-endian, zero-extended when short.
fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(b)
}

fn le_u32(bytes: &[u8]) -> u32 {
    le_u64(&bytes[..bytes.len().min(4)]) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut bytes = vec![0u8; 300_000];
        bytes[5] = 1;
        bytes[100..200].fill(7);
        bytes[150] = 0;
        bytes[250_000..250_010].fill(9);
        std::fs::write(&path, &bytes).unwrap();
        let sparse = SparseImage::of_file(&path).unwrap();
        // The zero at 150 stays inside its run; 95 zeros split two.
        let extents: Vec<(u64, usize)> = sparse.extents.iter().map(|(at, b)| (*at, b.len())).collect();
        assert_eq!(extents, [(5, 1), (100, 100), (250_000, 10)]);
        assert_eq!(SparseImage::decode(&sparse.encode()), sparse);
        let out = tempfile::tempfile().unwrap();
        sparse.write_to(&out).unwrap();
        let mut back = vec![0u8; bytes.len()];
        out.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, bytes);
    }
}
