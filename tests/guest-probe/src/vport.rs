// SPDX-License-Identifier: GPL-2.0-or-later
//! A sequenced stream toward the host on a virtio-serial port (a guest
//! agent's channel): records of [`RECORD`] bytes, numbered from 0, written
//! as fast as the port takes them. The host checks that the numbers follow
//! each other, across a checkpoint and a restore.
//!
//! A record: `MKVP`, the number (u64, little endian), and a check word
//! (u32) derived from the number, so that a reader can find record
//! boundaries in a stream it joins midway.

use std::fs::File;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::output::Output;

/// Bytes per record.
pub const RECORD: usize = 16;
const MAGIC: &[u8; 4] = b"MKVP";
/// Records per write(2): one page.
const BATCH: usize = 4096 / RECORD;

/// The check word of record `seq`.
pub fn check(seq: u64) -> u32 {
    (seq & 0xffff_ffff) as u32 ^ (seq >> 32) as u32 ^ 0x5a5a_5a5a
}

/// Record `seq`.
pub fn record(seq: u64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..4].copy_from_slice(MAGIC);
    r[4..12].copy_from_slice(&seq.to_le_bytes());
    r[12..].copy_from_slice(&check(seq).to_le_bytes());
    r
}

/// The record at the start of `bytes`, if it is one (the host's side,
/// tests/capture.rs, reads them so).
#[cfg(test)]
fn parse(bytes: &[u8]) -> Option<u64> {
    let r: &[u8; RECORD] = bytes.get(..RECORD)?.try_into().ok()?;
    let seq = u64::from_le_bytes(r[4..12].try_into().ok()?);
    (&r[..4] == MAGIC && u32::from_le_bytes(r[12..].try_into().ok()?) == check(seq)).then_some(seq)
}

/// The device of the virtio-serial port named `name` (the `name=` of
/// QEMU's virtserialport), waiting for its driver to show it.
pub fn find_port(name: &str) -> io::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if port_name.trim() == name {
                    return Ok(format!("/dev/{}", entry.file_name().to_string_lossy()));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no virtio-serial port named {name}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes the stream to port `name` forever; reports `vport` events once
/// a second.
pub fn run(name: &str, out: &Output) -> io::Result<()> {
    let path = find_port(name)?;
    let mut port = File::options().write(true).open(&path)?;
    out.emit("vport_open", json!({ "port": name, "path": path }));
    let mut seq = 0u64;
    let mut buf = Vec::with_capacity(BATCH * RECORD);
    let mut next_report = Instant::now() + Duration::from_secs(1);
    loop {
        buf.clear();
        for s in seq..seq + BATCH as u64 {
            buf.extend_from_slice(&record(s));
        }
        // A blocking port takes whole writes (or none, while the host is
        // away); a short one is finished all the same.
        port.write_all(&buf)?;
        seq += BATCH as u64;
        if Instant::now() >= next_report {
            out.emit("vport", json!({ "port": name, "written": seq }));
            next_report = Instant::now() + Duration::from_secs(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_back_and_damage_is_seen() {
        for seq in [0, 1, 255, 1 << 40] {
            assert_eq!(parse(&record(seq)), Some(seq));
        }
        let mut r = record(7);
        r[5] ^= 1;
        assert_eq!(parse(&r), None);
        assert_eq!(parse(&record(7)[1..]), None);
    }
}
