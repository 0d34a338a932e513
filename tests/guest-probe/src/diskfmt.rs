// SPDX-License-Identifier: GPL-2.0-or-later
//! The on-disk formats of the probe's disk workload, shared by the probe
//! (which writes them) and the host's checker (tests/rig, which reads them
//! back from a stopped VM's disk image).
//!
//! # The log (`LOG_FILE` at the root of each disk's file system)
//!
//! Fixed-length text lines of [`LINE`] bytes:
//!
//! ```text
//! MKDL <seq:016x> <counter:016x> <prev:08x> <payload:PAYLOAD_HEX hex> <crc:08x>\n
//! ```
//!
//! `seq` is the line's index in the file (the file's size / `LINE` when it
//! was written), `counter` the probe's in-memory count of lines it wrote
//! (the two agree unless memory and file diverged), `prev` the `crc` of the
//! line before (0 for line 0), so the lines form a chain: a line of another
//! run spliced in breaks it. `payload` is random (from the host through
//! virtio-rng where there is one: the original VM and a restored one write
//! different lines after the checkpoint). `crc` is CRC-32 of everything
//! before it (the space included).
//!
//! # Marks (`MARK_DIR/<seq:016x>-<nonce:016x>`)
//!
//! Files of [`MARK_BLOCKS`] blocks of [`BLOCK`] bytes, made now and then
//! besides the log: content that only one run writes (the nonce is random),
//! so that a disk holding a mark a restored run did not make shows a write
//! of the original VM after the checkpoint. Each block: `MKDM`, `seq` (u64
//! LE, the log's line count when the mark was made), `nonce` (u64 LE), the
//! block's index (u32 LE), CRC-32 of those 24 bytes (u32 LE), then bytes
//! derived from the nonce up to the block's end. A scan of the raw device
//! finds them wherever the file system put them.

use std::fmt;

/// Bytes per log line, newline included.
pub const LINE: usize = 128;
/// The log's file name, at the root of the disk's file system.
pub const LOG_FILE: &str = "probe.log";
/// The marks' directory, at the root of the disk's file system.
pub const MARK_DIR: &str = "marks";
/// Bytes of a block: the unit of O_DIRECT reads and of marks.
pub const BLOCK: usize = 4096;
/// Blocks per mark file.
pub const MARK_BLOCKS: usize = 2;

const LINE_MAGIC: &str = "MKDL ";
const MARK_MAGIC: &[u8; 4] = b"MKDM";
/// Bytes of a mark block's header (magic, seq, nonce, index, crc).
const MARK_HEADER: usize = 28;
/// `MKDL ` + seq + counter + prev (each with its space) + payload + space +
/// crc + newline.
const FIXED: usize = LINE_MAGIC.len() + 17 + 17 + 9 + 1 + 8 + 1;
/// Hex digits of a line's payload.
pub const PAYLOAD_HEX: usize = LINE - FIXED;
/// Random bytes of a line's payload.
pub const PAYLOAD_BYTES: usize = PAYLOAD_HEX / 2;
/// Where a line's crc starts.
const CRC_AT: usize = LINE - 9;

/// One log line, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub seq: u64,
    pub counter: u64,
    pub prev: u32,
    pub crc: u32,
}

/// The line `seq` with `counter`, chained to `prev`, carrying `payload`.
pub fn encode_line(seq: u64, counter: u64, prev: u32, payload: &[u8; PAYLOAD_BYTES]) -> ([u8; LINE], u32) {
    let mut text = format!("{LINE_MAGIC}{seq:016x} {counter:016x} {prev:08x} ");
    for b in payload {
        text.push_str(&format!("{b:02x}"));
    }
    // An odd PAYLOAD_HEX leaves one digit: pad it.
    while text.len() < CRC_AT - 1 {
        text.push('0');
    }
    text.push(' ');
    let crc = crc32fast::hash(text.as_bytes());
    text.push_str(&format!("{crc:08x}\n"));
    let mut line = [0u8; LINE];
    line.copy_from_slice(text.as_bytes());
    (line, crc)
}

/// Why bytes are not a good line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// All zeros: never written (or a block the file system zeroed).
    Zero,
    /// Not a line: wrong magic, field or length.
    Malformed,
    /// A line whose crc does not match its bytes.
    Crc,
}

fn hex_field<T>(bytes: &[u8], parse: fn(&str, u32) -> Result<T, std::num::ParseIntError>) -> Option<T> {
    let s = std::str::from_utf8(bytes).ok()?;
    s.bytes().all(|b| b.is_ascii_hexdigit()).then(|| parse(s, 16).ok()).flatten()
}

/// Parses the [`LINE`] bytes of one line.
pub fn parse_line(bytes: &[u8]) -> Result<Line, LineError> {
    if bytes.len() != LINE {
        return Err(LineError::Malformed);
    }
    if bytes.iter().all(|&b| b == 0) {
        return Err(LineError::Zero);
    }
    let spaces = [4, 21, 38, 47, CRC_AT - 1];
    if !bytes.starts_with(LINE_MAGIC.as_bytes())
        || spaces.iter().any(|&i| bytes[i] != b' ')
        || bytes[LINE - 1] != b'\n'
        || !bytes[48..CRC_AT - 1].iter().all(u8::is_ascii_hexdigit)
    {
        return Err(LineError::Malformed);
    }
    let field = |from: usize, len: usize| hex_field(&bytes[from..from + len], u64::from_str_radix);
    let (Some(seq), Some(counter)) = (field(5, 16), field(22, 16)) else {
        return Err(LineError::Malformed);
    };
    let prev = hex_field(&bytes[39..47], u32::from_str_radix).ok_or(LineError::Malformed)?;
    let crc = hex_field(&bytes[CRC_AT..LINE - 1], u32::from_str_radix).ok_or(LineError::Malformed)?;
    if crc32fast::hash(&bytes[..CRC_AT]) != crc {
        return Err(LineError::Crc);
    }
    Ok(Line { seq, counter, prev, crc })
}

/// What a whole log holds, checked line by line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogSummary {
    /// Good lines from the start, up to the first problem.
    pub lines: u64,
    /// The last good line's crc (0: none).
    pub last_crc: u32,
    /// The last good line's counter.
    pub last_counter: Option<u64>,
    /// The first problem, if any.
    pub error: Option<LogError>,
}

/// The first thing wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogError {
    /// The file's length is not a whole number of lines.
    Length { bytes: u64 },
    /// Line `index` does not parse.
    Line { index: u64, error: LineError },
    /// Line `index` says it is line `seq` (a gap or a duplicate).
    Seq { index: u64, seq: u64 },
    /// Line `index`'s in-memory counter differs from its position.
    Counter { index: u64, counter: u64 },
    /// Line `index` does not follow the line before it (another run's).
    Chain { index: u64, prev: u32, expected: u32 },
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Length { bytes } => write!(f, "{bytes} bytes is not a whole number of {LINE}-byte lines"),
            LogError::Line { index, error } => write!(f, "line {index}: {error:?}"),
            LogError::Seq { index, seq } => write!(f, "line {index} has seq {seq} (a gap or a duplicate)"),
            LogError::Counter { index, counter } => {
                write!(f, "line {index} has counter {counter}: memory and file disagree")
            }
            LogError::Chain { index, prev, expected } => {
                write!(f, "line {index} follows a line with crc {prev:08x}, not {expected:08x} (another run's line)")
            }
        }
    }
}

/// Checks a whole log: every line good, numbered from 0 without gap or
/// duplicate, counter equal to seq, each chained to the one before.
pub fn check_log(bytes: &[u8]) -> LogSummary {
    let mut s = LogSummary::default();
    for (index, chunk) in (0u64..).zip(bytes.chunks(LINE)) {
        let line = match parse_line(chunk) {
            Ok(line) => line,
            Err(_) if chunk.len() != LINE => {
                s.error = Some(LogError::Length { bytes: bytes.len() as u64 });
                break;
            }
            Err(error) => {
                s.error = Some(LogError::Line { index, error });
                break;
            }
        };
        let error = if line.seq != index {
            Some(LogError::Seq { index, seq: line.seq })
        } else if line.counter != index {
            Some(LogError::Counter { index, counter: line.counter })
        } else if line.prev != s.last_crc {
            Some(LogError::Chain { index, prev: line.prev, expected: s.last_crc })
        } else {
            None
        };
        if error.is_some() {
            s.error = error;
            break;
        }
        s.lines += 1;
        s.last_crc = line.crc;
        s.last_counter = Some(line.counter);
    }
    s
}

/// A mark block's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mark {
    pub seq: u64,
    pub nonce: u64,
}

impl Mark {
    /// The mark's file name in [`MARK_DIR`].
    pub fn file_name(&self) -> String {
        format!("{:016x}-{:016x}", self.seq, self.nonce)
    }

    /// The mark a file name in [`MARK_DIR`] names.
    pub fn from_file_name(name: &str) -> Option<Mark> {
        let (seq, nonce) = name.split_once('-')?;
        if seq.len() != 16 || nonce.len() != 16 {
            return None;
        }
        Some(Mark { seq: u64::from_str_radix(seq, 16).ok()?, nonce: u64::from_str_radix(nonce, 16).ok()? })
    }

    /// The content of the mark's file.
    pub fn content(&self) -> Vec<u8> {
        let mut out = vec![0u8; BLOCK * MARK_BLOCKS];
        for (index, block) in (0u32..).zip(out.chunks_mut(BLOCK)) {
            block[..4].copy_from_slice(MARK_MAGIC);
            block[4..12].copy_from_slice(&self.seq.to_le_bytes());
            block[12..20].copy_from_slice(&self.nonce.to_le_bytes());
            block[20..24].copy_from_slice(&index.to_le_bytes());
            let crc = crc32fast::hash(&block[..24]);
            block[24..MARK_HEADER].copy_from_slice(&crc.to_le_bytes());
            // The rest from the nonce (splitmix64), so that the whole block
            // is this mark's alone.
            let mut x = self.nonce ^ u64::from(index);
            for word in block[MARK_HEADER..].chunks_mut(8) {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
            }
        }
        out
    }
}

/// The mark whose block starts `block`, if it holds one (header check
/// only: a block half overwritten still names the run that wrote it).
pub fn parse_mark_block(block: &[u8]) -> Option<Mark> {
    let header = block.get(..MARK_HEADER)?;
    if &header[..4] != MARK_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(header[24..28].try_into().ok()?);
    if crc32fast::hash(&header[..24]) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(header[4..12].try_into().ok()?);
    let nonce = u64::from_le_bytes(header[12..20].try_into().ok()?);
    Some(Mark { seq, nonce })
}

/// Every mark found at the start of a [`BLOCK`] of `bytes` (a device or an
/// image read from offset 0, or any block-aligned part of one).
pub fn scan_marks(bytes: &[u8]) -> Vec<Mark> {
    bytes.chunks(BLOCK).filter_map(parse_mark_block).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = 0;
        for seq in 0..n {
            let (line, crc) = encode_line(seq, seq, prev, &[seq.to_le_bytes()[0]; PAYLOAD_BYTES]);
            out.extend_from_slice(&line);
            prev = crc;
        }
        out
    }

    #[test]
    fn lines_round_trip() {
        let (line, crc) = encode_line(7, 9, 0xdead_beef, &[0xab; PAYLOAD_BYTES]);
        assert_eq!(line.len(), LINE);
        assert!(line.starts_with(b"MKDL 0000000000000007 0000000000000009 deadbeef abab"));
        assert_eq!(parse_line(&line), Ok(Line { seq: 7, counter: 9, prev: 0xdead_beef, crc }));
        let mut bad = line;
        bad[60] = if bad[60] == b'a' { b'b' } else { b'a' };
        assert_eq!(parse_line(&bad), Err(LineError::Crc));
        assert_eq!(parse_line(&[0; LINE]), Err(LineError::Zero));
        assert_eq!(parse_line(&line[1..]), Err(LineError::Malformed));
    }

    #[test]
    fn a_good_log_and_what_breaks_it() {
        let good = log(40);
        let s = check_log(&good);
        assert_eq!((s.lines, s.error.clone(), s.last_counter), (40, None, Some(39)));
        assert_eq!(s.last_crc, parse_line(&good[39 * LINE..]).unwrap().crc);
        assert_eq!(check_log(&[]), LogSummary::default());

        // A duplicate line, a gap.
        let mut dup = good[..10 * LINE].to_vec();
        dup.extend_from_slice(&good[9 * LINE..10 * LINE]);
        assert_eq!(check_log(&dup).error, Some(LogError::Seq { index: 10, seq: 9 }));
        let mut gap = good[..10 * LINE].to_vec();
        gap.extend_from_slice(&good[11 * LINE..12 * LINE]);
        assert_eq!(check_log(&gap).error, Some(LogError::Seq { index: 10, seq: 11 }));
        // Another run's line 20: same seq, other payload, chained to the
        // same line 19, but line 21 no longer follows it.
        let mut spliced = good.clone();
        let prev = parse_line(&good[19 * LINE..20 * LINE]).unwrap().crc;
        spliced[20 * LINE..21 * LINE].copy_from_slice(&encode_line(20, 20, prev, &[1; PAYLOAD_BYTES]).0);
        assert!(matches!(check_log(&spliced).error, Some(LogError::Chain { index: 21, .. })));
        // Memory and file disagree.
        let (line, _) = encode_line(40, 41, s.last_crc, &[0; PAYLOAD_BYTES]);
        let mut off = good.clone();
        off.extend_from_slice(&line);
        assert_eq!(check_log(&off).error, Some(LogError::Counter { index: 40, counter: 41 }));
        // A torn end, zeros.
        assert_eq!(check_log(&good[..LINE * 3 + 5]).error, Some(LogError::Length { bytes: LINE as u64 * 3 + 5 }));
        let mut zeros = good[..LINE].to_vec();
        zeros.extend_from_slice(&[0; LINE]);
        assert_eq!(check_log(&zeros).error, Some(LogError::Line { index: 1, error: LineError::Zero }));
    }

    #[test]
    fn marks_are_found_in_a_device() {
        let a = Mark { seq: 3, nonce: 0x1234_5678_9abc_def0 };
        let b = Mark { seq: 9, nonce: 42 };
        assert_eq!(Mark::from_file_name(&a.file_name()), Some(a));
        assert_eq!(Mark::from_file_name("x-y"), None);
        let mut device = vec![0u8; BLOCK * 3];
        device.extend(a.content());
        device.extend(vec![7u8; BLOCK]);
        device.extend(b.content());
        assert_eq!(scan_marks(&device), vec![a, a, b, b]);
        assert_ne!(a.content()[BLOCK..], b.content()[BLOCK..]);
        // A damaged header is no mark.
        device[3 * BLOCK + 5] ^= 1;
        assert_eq!(scan_marks(&device), vec![a, b, b]);
    }
}
