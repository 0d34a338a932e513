// SPDX-License-Identifier: GPL-2.0-or-later
//! Reading the guest probe's events (`@probe {json}` lines) from a VM's
//! serial console log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

const MARK: &str = "@probe {";

/// One event of the probe (see tests/guest-probe/src/main.rs).
#[derive(Debug, Clone)]
pub struct ProbeEvent {
    /// Event name (`start`, `clock`, `compute`, `net`, `done`, ...).
    pub ev: String,
    /// The whole JSON object.
    pub json: Value,
}

impl ProbeEvent {
    pub fn u64(&self, field: &str) -> Option<u64> {
        self.json.get(field).and_then(Value::as_u64)
    }
    pub fn str(&self, field: &str) -> Option<&str> {
        self.json.get(field).and_then(Value::as_str)
    }
}

/// A VM's serial console log, read as it grows.
#[derive(Debug, Clone)]
pub struct ProbeLog {
    path: PathBuf,
}

impl ProbeLog {
    pub fn new(path: impl AsRef<Path>) -> ProbeLog {
        ProbeLog { path: path.as_ref().to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every probe event logged so far, in order.
    pub fn events(&self) -> Vec<ProbeEvent> {
        let text = std::fs::read(&self.path).unwrap_or_default();
        String::from_utf8_lossy(&text).lines().filter_map(parse_line).collect()
    }

    /// Messages received so far on the probe's busiest link.
    pub fn received(&self) -> u64 {
        self.events().iter().filter(|e| e.ev == "net").filter_map(|e| e.u64("received")).max().unwrap_or(0)
    }

    /// The last `n` lines of the console, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read(&self.path).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until an event satisfies `pred` and returns it. Fails after
    /// `timeout`, or at once when the probe reports an error.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&ProbeEvent) -> bool,
    ) -> Result<ProbeEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events();
            if let Some(e) = events.iter().find(|e| pred(e)) {
                return Ok(e.clone());
            }
            if let Some(e) = events.iter().find(|e| e.ev == "error") {
                bail!("probe error while waiting for {what}: {}", e.json);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no probe event '{what}' within {timeout:?} in {}; console tail:\n{}",
                    self.path.display(),
                    self.tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Parses `... @probe {json}`: kernel output may precede the mark.
pub(crate) fn parse_line(line: &str) -> Option<ProbeEvent> {
    let start = line.find(MARK)?;
    let json: Value = serde_json::from_str(&line[start + MARK.len() - 1..]).ok()?;
    let ev = json.get("ev")?.as_str()?.to_owned();
    Some(ProbeEvent { ev, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_marked_lines_only() {
        assert!(parse_line("[    1.2] virtio_net virtio0 eth0: renamed").is_none());
        assert!(parse_line("@probe {broken").is_none());
        let e = parse_line("noise@probe {\"ev\":\"clock\",\"id\":2,\"mono_ns\":5}").unwrap();
        assert_eq!(e.ev, "clock");
        assert_eq!(e.u64("id"), Some(2));
    }
}
