// SPDX-License-Identifier: GPL-2.0-or-later
//! Options from the kernel command line: `mekha.id` and the `probe.*` keys.
//!
//! Other words of the command line (kernel parameters, other `mekha.*` keys
//! such as `mekha.ip` that the init script reads) are ignored. An unknown
//! `probe.*` key or a value that does not parse is an error. When a key is
//! given twice the last one wins, as for the kernel.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

/// Default TCP and UDP port of the message exchange.
pub const DEFAULT_PORT: u16 = 7700;
/// Default number of compute steps between two `compute` events.
pub const DEFAULT_COMPUTE_CHUNK: u64 = 1 << 20;
/// Default pause between two disk log lines.
pub const DEFAULT_DISK_TICK_MS: u64 = 50;
/// Default pause between two disk mark files.
pub const DEFAULT_DISK_MARK_MS: u64 = 1000;
/// Longest ext4 label (`mkfs.ext4 -L`).
const MAX_LABEL: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `mekha.id`: this VM's index.
    pub id: u32,
    /// `probe.mem`: MiB of memory to dirty (0: no dirtier).
    pub mem_mib: u64,
    /// `probe.rate`: dirty rate in MiB/s (0: as fast as possible).
    pub rate_mib_s: u64,
    /// `probe.compute`: steps of the computation (0: none).
    pub compute: u64,
    /// `probe.compute_chunk`: steps between `compute` events (> 0).
    pub compute_chunk: u64,
    /// `probe.peers`: the peers' IPv4 addresses.
    pub peers: Vec<Ipv4Addr>,
    /// `probe.port`: TCP and UDP port (> 0).
    pub port: u16,
    /// `probe.msgs`: messages per peer per protocol (0: unbounded).
    pub msgs: u64,
    /// `probe.msg_interval_ms`: pause between two messages of one stream.
    pub msg_interval_ms: u64,
    /// `probe.udp_rate`: datagrams per second of each UDP stream, paced
    /// (0: one per `msg_interval_ms`, as TCP).
    pub udp_rate: u64,
    /// `probe.clock_ms`: clock sample interval (0: off).
    pub clock_ms: u64,
    /// `probe.duration`: seconds until the probe stops (0: no limit).
    pub duration_s: u64,
    /// `probe.out`: output file; `None` means the default of the caller
    /// (/dev/console in a VM, stdout with `--cmdline`); `-` is stdout.
    pub out: Option<String>,
    /// `probe.vport`: name of a virtio-serial port to stream records to.
    pub vport: Option<String>,
    /// `probe.disks`: ext4 labels of the disks to write logs to.
    pub disks: Vec<String>,
    /// `probe.disk_tick_ms`: pause between two log lines (> 0).
    pub disk_tick_ms: u64,
    /// `probe.disk_sync`: log lines per fsync (> 0).
    pub disk_sync: u64,
    /// `probe.disk_mark_ms`: pause between two mark files (0: none).
    pub disk_mark_ms: u64,
    /// `probe.ctl`: name of a virtio-serial port to read commands from.
    pub ctl: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            id: 0,
            mem_mib: 0,
            rate_mib_s: 0,
            compute: 0,
            compute_chunk: DEFAULT_COMPUTE_CHUNK,
            peers: Vec::new(),
            port: DEFAULT_PORT,
            msgs: 0,
            msg_interval_ms: 10,
            udp_rate: 0,
            clock_ms: 1000,
            duration_s: 0,
            out: None,
            vport: None,
            disks: Vec::new(),
            disk_tick_ms: DEFAULT_DISK_TICK_MS,
            disk_sync: 1,
            disk_mark_ms: DEFAULT_DISK_MARK_MS,
            ctl: None,
        }
    }
}

impl Options {
    /// The options as JSON, for the `start` event.
    pub fn to_json(&self) -> Value {
        json!({
            "mem_mib": self.mem_mib,
            "rate_mib_s": self.rate_mib_s,
            "compute": self.compute,
            "compute_chunk": self.compute_chunk,
            "peers": self.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "port": self.port,
            "msgs": self.msgs,
            "msg_interval_ms": self.msg_interval_ms,
            "udp_rate": self.udp_rate,
            "clock_ms": self.clock_ms,
            "duration_s": self.duration_s,
            "out": self.out,
            "vport": self.vport,
            "disks": self.disks,
            "disk_tick_ms": self.disk_tick_ms,
            "disk_sync": self.disk_sync,
            "disk_mark_ms": self.disk_mark_ms,
            "ctl": self.ctl,
        })
    }
}

/// Split a command line into words: whitespace separates words, except
/// inside double quotes (`key="a b"`), which are removed, as the kernel does.
pub fn split_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

fn num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{key}={value}: not a valid number"))
}

fn positive(key: &str, value: &str) -> Result<u64, String> {
    match num::<u64>(key, value)? {
        0 => Err(format!("{key}={value}: must be greater than 0")),
        n => Ok(n),
    }
}

fn peers(key: &str, value: &str) -> Result<Vec<Ipv4Addr>, String> {
    value
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|_| format!("{key}: {p:?} is not an IPv4 address (no host names)")))
        .collect()
}

/// `value`, which must not be empty (`what` it names, for the error).
fn non_empty(key: &str, value: &str, what: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err(format!("{key}: empty {what}"));
    }
    Ok(value.to_owned())
}

fn labels(key: &str, value: &str) -> Result<Vec<String>, String> {
    let labels: Vec<String> = value.split(',').filter(|l| !l.is_empty()).map(str::to_owned).collect();
    for l in &labels {
        if l.len() > MAX_LABEL || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(format!("{key}: {l:?} is not an ext4 label of at most {MAX_LABEL} letters, digits, - or _"));
        }
    }
    let mut sorted = labels.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != labels.len() {
        return Err(format!("{key}: a label is given twice"));
    }
    Ok(labels)
}

/// Apply one `key=value` to `opts`; keys outside `mekha.id`/`probe.*` are
/// not ours and are skipped.
fn apply(opts: &mut Options, key: &str, value: Option<&str>) -> Result<(), String> {
    if key != "mekha.id" && !key.starts_with("probe.") {
        return Ok(());
    }
    let known = matches!(
        key,
        "mekha.id"
            | "probe.mem"
            | "probe.rate"
            | "probe.compute"
            | "probe.compute_chunk"
            | "probe.peers"
            | "probe.port"
            | "probe.msgs"
            | "probe.msg_interval_ms"
            | "probe.udp_rate"
            | "probe.clock_ms"
            | "probe.duration"
            | "probe.out"
            | "probe.vport"
            | "probe.disks"
            | "probe.disk_tick_ms"
            | "probe.disk_sync"
            | "probe.disk_mark_ms"
            | "probe.ctl"
    );
    if !known {
        return Err(format!("unknown option {key}"));
    }
    let Some(v) = value else {
        return Err(format!("{key} needs a value ({key}=...)"));
    };
    match key {
        "mekha.id" => opts.id = num(key, v)?,
        "probe.mem" => opts.mem_mib = num(key, v)?,
        "probe.rate" => opts.rate_mib_s = num(key, v)?,
        "probe.compute" => opts.compute = num(key, v)?,
        "probe.compute_chunk" => opts.compute_chunk = positive(key, v)?,
        "probe.peers" => opts.peers = peers(key, v)?,
        "probe.port" => {
            opts.port = u16::try_from(positive(key, v)?).map_err(|_| format!("{key}={v}: not a port number"))?
        }
        "probe.msgs" => opts.msgs = num(key, v)?,
        "probe.msg_interval_ms" => opts.msg_interval_ms = num(key, v)?,
        "probe.udp_rate" => opts.udp_rate = num(key, v)?,
        "probe.clock_ms" => opts.clock_ms = num(key, v)?,
        "probe.duration" => opts.duration_s = num(key, v)?,
        "probe.out" => opts.out = Some(non_empty(key, v, "path")?),
        "probe.vport" => opts.vport = Some(non_empty(key, v, "port name")?),
        "probe.disks" => opts.disks = labels(key, v)?,
        "probe.disk_tick_ms" => opts.disk_tick_ms = positive(key, v)?,
        "probe.disk_sync" => opts.disk_sync = positive(key, v)?,
        "probe.disk_mark_ms" => opts.disk_mark_ms = num(key, v)?,
        "probe.ctl" => opts.ctl = Some(non_empty(key, v, "port name")?),
        _ => unreachable!("key list and match disagree: {key}"),
    }
    Ok(())
}

/// Parse a command line. Returns the options (defaults where a key is
/// missing or wrong) and the errors, one message per bad word.
pub fn parse(cmdline: &str) -> (Options, Vec<String>) {
    let mut opts = Options::default();
    let mut errors = Vec::new();
    for word in split_words(cmdline) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word.as_str(), None),
        };
        if let Err(e) = apply(&mut opts, key, value) {
            errors.push(e);
        }
    }
    (opts, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(cmdline: &str) -> Options {
        let (opts, errors) = parse(cmdline);
        assert!(errors.is_empty(), "{cmdline:?}: {errors:?}");
        opts
    }

    #[test]
    fn defaults_when_nothing_is_given() {
        let opts = ok("console=ttyS0 quiet loglevel=3 mekha.ip=10.0.0.1/24 mekha.shell=0 --");
        assert_eq!(opts, Options::default());
        assert_eq!(opts.port, 7700);
        assert_eq!(opts.compute_chunk, 1 << 20);
        assert_eq!(opts.msg_interval_ms, 10);
        assert_eq!(opts.clock_ms, 1000);
        assert_eq!(opts.out, None);
        assert_eq!(ok(""), Options::default());
    }

    #[test]
    fn every_key() {
        let opts = ok("root=/dev/x mekha.id=3 probe.mem=64 probe.rate=10 probe.compute=5000 \
             probe.compute_chunk=100 probe.peers=10.77.0.11,10.77.0.12 probe.port=9000 \
             probe.msgs=200 probe.msg_interval_ms=5 probe.udp_rate=2000 probe.clock_ms=0 probe.duration=30 \
             probe.out=/tmp/x probe.vport=org.qemu.guest_agent.0 probe.disks=qcow,raw-1 \
             probe.disk_tick_ms=20 probe.disk_sync=4 probe.disk_mark_ms=0 probe.ctl=org.mekha.ctl");
        assert_eq!(
            opts,
            Options {
                id: 3,
                mem_mib: 64,
                rate_mib_s: 10,
                compute: 5000,
                compute_chunk: 100,
                peers: vec!["10.77.0.11".parse().unwrap(), "10.77.0.12".parse().unwrap(),],
                port: 9000,
                msgs: 200,
                msg_interval_ms: 5,
                udp_rate: 2000,
                clock_ms: 0,
                duration_s: 30,
                out: Some("/tmp/x".into()),
                vport: Some("org.qemu.guest_agent.0".into()),
                disks: vec!["qcow".into(), "raw-1".into()],
                disk_tick_ms: 20,
                disk_sync: 4,
                disk_mark_ms: 0,
                ctl: Some("org.mekha.ctl".into()),
            }
        );
    }

    #[test]
    fn last_word_wins_and_empty_peer_list() {
        let opts = ok("mekha.id=1 mekha.id=2 probe.peers=10.0.0.1 probe.peers=");
        assert_eq!(opts.id, 2);
        assert!(opts.peers.is_empty());
    }

    #[test]
    fn quotes_and_whitespace() {
        assert_eq!(split_words("  a=\"x y\"\tb  \"c d\"\n"), vec!["a=x y", "b", "c d"]);
        assert_eq!(ok("probe.out=\"/tmp/a b\"").out.as_deref(), Some("/tmp/a b"));
    }

    #[test]
    fn unknown_probe_key_is_an_error() {
        let (opts, errors) = parse("mekha.id=4 probe.bogus=1 probe.mem=8");
        assert_eq!(errors, vec!["unknown option probe.bogus"]);
        // The rest still parsed, so the error event can carry the id.
        assert_eq!(opts.id, 4);
        assert_eq!(opts.mem_mib, 8);
        // Even without a value.
        assert_eq!(parse("probe.nope").1.len(), 1);
    }

    #[test]
    fn bad_values_are_errors() {
        for bad in [
            "mekha.id=-1",
            "mekha.id=4294967296",
            "probe.mem=lots",
            "probe.mem",
            "probe.compute_chunk=0",
            "probe.port=0",
            "probe.port=70000",
            "probe.peers=10.0.0.1,peer2",
            "probe.peers=10.0.0.256",
            "probe.peers=fd00::1",
            "probe.out=",
            "probe.vport=",
            "probe.duration=1.5",
            "probe.disks=a,b,a",
            "probe.disks=seventeen-letters",
            "probe.disks=a/b",
            "probe.disk_tick_ms=0",
            "probe.disk_sync=0",
            "probe.ctl=",
        ] {
            let (_, errors) = parse(bad);
            assert_eq!(errors.len(), 1, "{bad} should fail once: {errors:?}");
        }
    }

    #[test]
    fn other_keys_are_ignored() {
        ok("mekha.ip=10.0.0.1/24 mekha.shell=1 mekha.unknown=z probex.mem=3 probe=1");
    }
}
