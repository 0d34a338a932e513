// SPDX-License-Identifier: GPL-2.0-or-later
//! Commands from the host on a virtio-serial port (`probe.ctl=NAME`), one
//! a line; what they do is reported as events on the console.
//!
//! | command    | what the probe does                                               |
//! |------------|-------------------------------------------------------------------|
//! | `scan`     | reads each disk with O_DIRECT: a `disk_scan` event per disk        |
//! | `crc L O N`| CRC-32 of N bytes of disk L's device from O (multiples of 512), read with O_DIRECT: a `disk_crc` event |
//! | `shutdown` | stops the disk writers, unmounts the disks, syncs, `exit` (reason `shutdown`), powers the VM off |
//!
//! While the host has not connected, the port reads as end of file: the
//! reader polls. A restored VM keeps the port open across the restore.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::disk::Disks;
use crate::output::Output;
use crate::vport;

/// How often an unconnected port is read again.
const POLL: Duration = Duration::from_millis(100);

/// Reads and runs commands forever (the VM powers off at `shutdown`).
pub fn run(name: &str, disks: Option<Arc<Disks>>, out: &Output) -> io::Result<()> {
    let path = vport::find_port(name)?;
    let mut port = File::open(&path)?;
    out.emit("ctl_open", json!({ "port": name, "path": path }));
    let mut pending = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let n = match port.read(&mut buf) {
            Ok(0) => {
                std::thread::sleep(POLL);
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let command = String::from_utf8_lossy(&line).trim().to_owned();
            out.emit("ctl", json!({ "command": command }));
            let words: Vec<&str> = command.split_whitespace().collect();
            match (words.as_slice(), &disks) {
                ([], _) => {}
                (["shutdown"], d) => shutdown(d.as_deref(), out),
                (["scan"], Some(d)) => d.scan(out),
                (["crc", disk, offset, len], Some(d)) => match (offset.parse(), len.parse()) {
                    (Ok(offset), Ok(len)) => d.crc(disk, offset, len, out),
                    _ => out.error(format!("ctl: {command:?}: offset and length are numbers of bytes")),
                },
                (["scan" | "crc", ..], None) => out.error(format!("ctl: {command:?} without probe.disks")),
                _ => out.error(format!("ctl: unknown command {command:?}")),
            }
        }
    }
}

/// Unmounts the disks, syncs and powers off: the clean shutdown after
/// which the host checks the file systems (`e2fsck -fn`).
fn shutdown(disks: Option<&Disks>, out: &Output) -> ! {
    if let Some(d) = disks {
        d.shutdown(out);
    }
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    out.emit("exit", json!({ "code": 0, "reason": "shutdown" }));
    out.drain();
    // SAFETY: reboot with a valid command; the probe runs as root.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    let e = io::Error::last_os_error();
    out.error(format!("power off: {e}"));
    std::process::exit(1)
}
