// SPDX-License-Identifier: GPL-2.0-or-later
//! A capture file packed into a layer.
//!
//! A disk's capture at a checkpoint writes the disk as it was at the
//! instant into a sparse raw file of the disk's size (QEMU's backup job
//! does it, see the library's `disks::capture`): everything for a whole
//! capture, the clusters written since the base for an incremental one.
//! Packing reads what was copied, in cluster-aligned chunks, and adds it
//! to a [`LayerWriter`]: all-zero clusters as zeros (a whole layer
//! needs no record of them at all), the others as data.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{DiskError, LayerWriter, Result};
use crate::width::to_usize;

/// Bytes read from the capture file at a time.
const CHUNK: u64 = 4 << 20;

/// What a capture file holds.
#[derive(Debug, Clone, Copy)]
pub enum Copied<'a> {
    /// The whole disk: a region never written is a hole, and zeros.
    Whole,
    /// Only these `(offset, len)` byte ranges, in order: the clusters
    /// written since the base.
    Since(&'a [(u64, u64)]),
}

/// Adds what `capture` (at `path`, of the disk's `size`) holds to
/// `writer`, whose clusters are `cluster` bytes.
pub fn pack(
    capture: &File,
    path: &Path,
    copied: Copied<'_>,
    size: u64,
    cluster: u64,
    writer: &mut LayerWriter,
) -> Result<()> {
    let ranges = match copied {
        Copied::Whole => data_regions(capture, path, size)?,
        Copied::Since(extents) => extents.to_vec(),
    };
    let record_zeros = matches!(copied, Copied::Since(_));
    let mut buf = vec![0u8; to_usize(CHUNK)];
    for (start, end) in whole_clusters(&ranges, cluster, size) {
        let mut at = start;
        while at < end {
            let len = (end - at).min(CHUNK);
            let chunk = &mut buf[..to_usize(len)];
            capture.read_exact_at(chunk, at).map_err(DiskError::io("reading the capture file", path))?;
            for (offset, run, zero) in runs(chunk, at, cluster) {
                match (zero, record_zeros) {
                    (true, true) => writer.add_zero(offset, run.len() as u64)?,
                    (true, false) => {}
                    (false, _) => writer.add_data(offset, run)?,
                }
            }
            at += len;
        }
    }
    Ok(())
}

/// The `[start, end)` ranges holding data in a sparse file (its holes
/// read as zeros), from SEEK_DATA and SEEK_HOLE.
fn data_regions(file: &File, path: &Path, size: u64) -> Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence: i32| -> Result<Option<u64>> {
        let offset = libc::off_t::try_from(offset).unwrap_or(libc::off_t::MAX);
        // SAFETY: lseek on a file descriptor this `File` owns.
        let at = unsafe { libc::lseek(fd, offset, whence) };
        if at < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(DiskError::io("looking for data in the capture file", path)(e)),
            };
        }
        Ok(Some(at as u64))
    };
    let mut regions = Vec::new();
    let mut at = 0;
    while at < size {
        let Some(start) = seek(at, libc::SEEK_DATA)? else { break };
        if start >= size {
            break;
        }
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        regions.push((start, end - start));
        at = end;
    }
    Ok(regions)
}

/// `(offset, len)` ranges widened to whole clusters (the last one ends at
/// the disk's end), merged where they then touch, as `[start, end)`.
fn whole_clusters(ranges: &[(u64, u64)], cluster: u64, size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(offset, len) in ranges {
        if len == 0 || offset >= size {
            continue;
        }
        let start = offset / cluster * cluster;
        let end = offset.saturating_add(len).min(size).next_multiple_of(cluster).min(size);
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// `chunk` (the disk's bytes from `offset`) cut into runs of clusters
/// that are all zero or all not: `(offset, bytes, zero)`.
fn runs(chunk: &[u8], offset: u64, cluster: u64) -> Vec<(u64, &[u8], bool)> {
    let mut out: Vec<(u64, &[u8], bool)> = Vec::new();
    let mut run_start = 0usize;
    let mut run_zero = None;
    let cluster = to_usize(cluster);
    for (i, c) in chunk.chunks(cluster).enumerate() {
        let zero = c.iter().all(|&b| b == 0);
        let at = i * cluster;
        match run_zero {
            Some(z) if z == zero => {}
            Some(z) => {
                out.push((offset + run_start as u64, &chunk[run_start..at], z));
                run_start = at;
                run_zero = Some(zero);
            }
            None => run_zero = Some(zero),
        }
    }
    if let Some(z) = run_zero {
        out.push((offset + run_start as u64, &chunk[run_start..], z));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_widen_to_clusters_and_merge() {
        let c = 65536;
        assert_eq!(whole_clusters(&[(100, 10)], c, 1 << 20), vec![(0, c)]);
        assert_eq!(whole_clusters(&[(0, c), (c, c)], c, 1 << 20), vec![(0, 2 * c)]);
        assert_eq!(whole_clusters(&[(0, 10), (c + 5, 1)], c, 1 << 20), vec![(0, 2 * c)]);
        // The disk's last, partial cluster ends at the disk's end.
        assert_eq!(whole_clusters(&[(c, 10)], c, c + 100), vec![(c, c + 100)]);
        assert_eq!(whole_clusters(&[(2 * c, 10)], c, c + 100), vec![]);
    }

    #[test]
    fn runs_split_zero_and_data_clusters() {
        let c = 4096usize;
        let mut chunk = vec![0u8; 4 * c];
        chunk[c] = 1;
        chunk[2 * c + 7] = 9;
        let r = runs(&chunk, 8192, c as u64);
        let shape: Vec<(u64, usize, bool)> = r.iter().map(|(o, b, z)| (*o, b.len(), *z)).collect();
        assert_eq!(shape, vec![(8192, 4096, true), (8192 + 4096, 8192, false), (8192 + 12288, 4096, true)]);
    }
}
