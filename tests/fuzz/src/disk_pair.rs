// SPDX-License-Identifier: GPL-2.0-or-later
//! Two disk layer files as one fuzz input: a parent and the layer over it
//! (`mekha_ckpt_core::disk`), with optional checksum fix-ups so that
//! mutations reach what the CRC32Cs guard instead of stopping at them.
//! The parser sees the files as written, fix-ups included.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | fix-ups: [`FIX_TABLE_CRCS`], [`FIX_HEADER_CRCS`], [`FIX_PARENT_CRC`] |
//! | 1 | 4 | the parent's length `p`, u32 LE (cut to what the input holds) |
//! | 5 | `p` | the parent file |
//! | 5 + `p` | … | the layer file |

use std::fs;
use std::io;
use std::path::Path;

/// Fix-up: each file's extent table CRC32C is recomputed.
pub const FIX_TABLE_CRCS: u8 = 1;
/// Fix-up: each file's header CRC32C is recomputed (after the table's).
pub const FIX_HEADER_CRCS: u8 = 2;
/// Fix-up: the layer records its parent's header CRC32C (before its own
/// header CRC is recomputed).
pub const FIX_PARENT_CRC: u8 = 4;

/// Where the header's fields are (the format of `mekha_ckpt_core::disk`).
const HEADER_SIZE: usize = 4096;
const HEADER_CRC_AT: usize = 24;
const PARENT_CRC_AT: usize = 44;
const DATA_END_AT: usize = 64;
const TABLE_LEN_AT: usize = 72;
const TABLE_CRC_AT: usize = 80;

/// The two files of one input.
#[derive(Debug, Clone, Default)]
pub struct DiskPair {
    pub fixups: u8,
    pub parent: Vec<u8>,
    pub layer: Vec<u8>,
}

impl DiskPair {
    pub fn decode(data: &[u8]) -> DiskPair {
        let Some((&fixups, rest)) = data.split_first() else { return DiskPair::default() };
        let Some((len, rest)) = rest.split_first_chunk::<4>() else { return DiskPair { fixups, ..Default::default() } };
        let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
        DiskPair { fixups, parent: rest[..len].to_vec(), layer: rest[len..].to_vec() }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.fixups];
        out.extend_from_slice(&u32::try_from(self.parent.len()).expect("a small parent").to_le_bytes());
        out.extend_from_slice(&self.parent);
        out.extend_from_slice(&self.layer);
        out
    }

    /// Writes the parent and the layer, fix-ups applied.
    pub fn write_to(&self, parent: &Path, layer: &Path) -> io::Result<()> {
        let (mut p, mut l) = (self.parent.clone(), self.layer.clone());
        for file in [&mut p, &mut l] {
            if self.fixups & FIX_TABLE_CRCS != 0 {
                fix_table_crc(file);
            }
        }
        if self.fixups & FIX_HEADER_CRCS != 0 {
            fix_header_crc(&mut p);
        }
        if self.fixups & FIX_PARENT_CRC != 0 && p.len() >= HEADER_SIZE && l.len() >= HEADER_SIZE {
            let crc: [u8; 4] = p[HEADER_CRC_AT..HEADER_CRC_AT + 4].try_into().unwrap();
            l[PARENT_CRC_AT..PARENT_CRC_AT + 4].copy_from_slice(&crc);
        }
        if self.fixups & FIX_HEADER_CRCS != 0 {
            fix_header_crc(&mut l);
        }
        fs::write(parent, p)?;
        fs::write(layer, l)
    }
}

fn field(file: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(file[at..at + 8].try_into().unwrap())
}

fn fix_table_crc(file: &mut [u8]) {
    if file.len() < HEADER_SIZE {
        return;
    }
    let (start, len) = (field(file, DATA_END_AT), field(file, TABLE_LEN_AT));
    let Some(end) = start.checked_add(len).filter(|&end| end <= file.len() as u64) else { return };
    let crc = crc32c::crc32c(&file[start as usize..end as usize]);
    file[TABLE_CRC_AT..TABLE_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

fn fix_header_crc(file: &mut [u8]) {
    if file.len() < HEADER_SIZE {
        return;
    }
    file[HEADER_CRC_AT..HEADER_CRC_AT + 4].fill(0);
    let crc = crc32c::crc32c(&file[..HEADER_SIZE]);
    file[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}
