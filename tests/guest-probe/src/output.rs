// SPDX-License-Identifier: GPL-2.0-or-later
//! Event output: one `@probe {json}\n` line per event, one write(2) per line.
//!
//! The envelope fields `ev`, `id` and `mono_ns` come first, in that order,
//! then the event's own fields (sorted by name).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::sync::Mutex;

use serde_json::Value;

use crate::clock;

/// The prefix that marks probe lines among the console's other output.
pub const PREFIX: &str = "@probe ";

pub struct Output {
    file: Mutex<File>,
    id: u32,
}

impl Output {
    /// Open `path` for appending (`-` is stdout). Events carry `id`.
    pub fn open(path: &str, id: u32) -> io::Result<Output> {
        let file = if path == "-" {
            // A duplicate of fd 1 as a plain File: writes go straight to
            // write(2), without std's stdout buffer in between.
            // SAFETY: dup has no memory preconditions.
            let fd = unsafe { libc::dup(1) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a descriptor just made, owned by no one else.
            unsafe { File::from_raw_fd(fd) }
        } else {
            OpenOptions::new().append(true).create(true).custom_flags(libc::O_NOCTTY).open(path)?
        };
        Ok(Output { file: Mutex::new(file), id })
    }

    /// Emit event `ev` with `fields` (a JSON object), stamped now.
    pub fn emit(&self, ev: &str, fields: Value) {
        self.emit_at(ev, clock::mono_ns(), fields)
    }

    /// Emit event `ev` with `fields`, stamped with `mono_ns`.
    pub fn emit_at(&self, ev: &str, mono_ns: u64, fields: Value) {
        let line = format_line(ev, self.id, mono_ns, &fields);
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // One write(2) for the whole line; only a short write (which a tty
        // or pipe should not do for a line this small) needs a second one.
        let mut buf = line.as_bytes();
        while !buf.is_empty() {
            match file.write(buf) {
                Ok(0) => break,
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // nowhere left to report it
            }
        }
    }

    /// Waits until what was written went out (a tty's queue drains to the
    /// serial port): before the VM powers off.
    pub fn drain(&self) {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: a descriptor owned by `file`; tcdrain fails harmlessly
        // (ENOTTY) on anything but a terminal.
        unsafe { libc::tcdrain(file.as_raw_fd()) };
    }

    /// Emit an `error` event.
    pub fn error(&self, message: impl Into<String>) {
        self.emit("error", serde_json::json!({ "message": message.into() }))
    }
}

/// The line for one event, newline included.
pub fn format_line(ev: &str, id: u32, mono_ns: u64, fields: &Value) -> String {
    let mut line = format!("{PREFIX}{{\"ev\":{},\"id\":{id},\"mono_ns\":{mono_ns}", Value::from(ev));
    if let Value::Object(map) = fields {
        for (k, v) in map {
            if matches!(k.as_str(), "ev" | "id" | "mono_ns") {
                continue;
            }
            line.push(',');
            line.push_str(&Value::from(k.as_str()).to_string());
            line.push(':');
            line.push_str(&v.to_string());
        }
    }
    line.push_str("}\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_first_and_valid_json() {
        let line = format_line("net", 2, 123, &json!({"peer": "10.0.0.1", "lost": 0, "id": 9}));
        assert_eq!(line, "@probe {\"ev\":\"net\",\"id\":2,\"mono_ns\":123,\"lost\":0,\"peer\":\"10.0.0.1\"}\n");
        let v: Value = serde_json::from_str(line.strip_prefix(PREFIX).unwrap()).unwrap();
        assert_eq!(v["ev"], "net");
        assert_eq!(v["id"], 2);
    }

    #[test]
    fn escapes_and_empty_fields() {
        let line = format_line("error", 0, 1, &json!({"message": "a\"b\nc"}));
        assert_eq!(line.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(line.strip_prefix(PREFIX).unwrap()).unwrap();
        assert_eq!(v["message"], "a\"b\nc");
        assert_eq!(format_line("exit", 0, 1, &Value::Null), "@probe {\"ev\":\"exit\",\"id\":0,\"mono_ns\":1}\n");
    }
}
