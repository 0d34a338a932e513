// SPDX-License-Identifier: GPL-2.0-or-later
//! mekha-probe: the workload that runs inside test VMs.
//!
//! It dirties memory, computes, exchanges checked messages with peer VMs
//! and samples clocks, and reports everything as lines on the serial
//! console, which the tests on the host read. Those lines are the contract.
//!
//! # Options
//!
//! Read from the kernel command line (/proc/cmdline), or from
//! `--cmdline "..."` when run on the host (tests). Words other than
//! `mekha.id` and `probe.*` are ignored; an unknown `probe.*` key or a bad
//! value is reported as an `error` event, then `exit` with code 2, and the
//! probe exits with status 2. All keys are optional:
//!
//! | key                     | default      | meaning                                           |
//! |-------------------------|--------------|---------------------------------------------------|
//! | `mekha.id=N`            | 0            | this VM's index (u32), in every event and message |
//! | `probe.mem=MiB`         | 0 (off)      | memory set to dirty, one u64 per 4 KiB page/pass  |
//! | `probe.rate=MiB/s`      | 0 (no limit) | dirty rate                                        |
//! | `probe.compute=N`       | 0 (off)      | steps of the deterministic computation            |
//! | `probe.compute_chunk=N` | 1048576      | steps between `compute` events (> 0)              |
//! | `probe.peers=IP,IP,...` | none         | peers' IPv4 addresses (no names, no DNS)          |
//! | `probe.port=P`          | 7700         | TCP and UDP port (listened on and sent to)        |
//! | `probe.msgs=N`          | 0 (no limit) | messages per peer per protocol                    |
//! | `probe.msg_interval_ms` | 10           | pause between messages of one stream              |
//! | `probe.udp_rate=N`      | 0 (interval) | datagrams per second of each UDP stream, paced    |
//! | `probe.clock_ms=N`      | 1000         | clock sample interval (0: no `clock` events)      |
//! | `probe.duration=S`      | 0 (forever)  | after S s: `exit` with the summary, status 0      |
//! | `probe.out=PATH`        | /dev/console | output file (`-` = stdout; stdout by default with `--cmdline`) |
//! | `probe.vport=NAME`      | none         | virtio-serial port to stream numbered records to (see `vport`) |
//! | `probe.disks=L,L,...`   | none         | ext4 labels of disks to mount at /mnt/L and write a log and marks to (see `disk`) |
//! | `probe.disk_tick_ms=N`  | 50           | pause between two log lines (> 0)                 |
//! | `probe.disk_sync=N`     | 1            | log lines per fsync (> 0)                         |
//! | `probe.disk_mark_ms=N`  | 1000         | pause between two mark files (0: none)            |
//! | `probe.ctl=NAME`        | none         | virtio-serial port to read commands from (see `ctl`: `scan`, `crc`, `shutdown`) |
//!
//! # Output
//!
//! One line per event, `@probe {json}\n`, written with one write(2). The
//! object starts with `"ev"` (event name), `"id"` (mekha.id) and
//! `"mono_ns"` (CLOCK_MONOTONIC at the event, or at the sample for `clock`).
//!
//! | event            | fields                                                               |
//! |------------------|----------------------------------------------------------------------|
//! | `start`          | `config` (the options), `version`; the TCP and UDP port is bound     |
//! | `error`          | `message`                                                            |
//! | `exit`           | `code`, `reason` (`duration`: with the summary fields of `done`; `shutdown`: the VM powers off next; `options`, `error`, `panic`) |
//! | `clock`          | `real_ns`, `tsc` (null off x86), `rtc_s` (RTC seconds, null if none) |
//! | `dirty`          | once a second: `passes`, `pages_written`, `mib_per_s`, `mismatches`  |
//! | `dirty_anomaly`  | a page lost what the previous pass wrote: `pass`, `page`, `expected`, `found` |
//! | `compute`        | every chunk: `step`, `total`, `checksum` (16 hex digits)             |
//! | `compute_done`   | `steps`, `checksum`                                                  |
//! | `net`            | once a second per (peer, proto) that changed: `peer`, `proto` (`tcp`/`udp`), `peer_id`, `sent`, `received`, `next_seq`, `lost`, `dup`, `reordered`, `corrupt` |
//! | `net_anomaly`    | at once: `peer`, `proto`, `kind` = `lost` (`first`, `last`, `count`, `seq`), `reordered`/`dup` (`seq`, `next_seq`), `corrupt` (`reason` = crc/payload/length, `seq`, `sender` or `len`), `sender` (`old`, `new`), `unknown_peer`, `suppressed` (after 1000 events of one link, the rest only counted) |
//! | `net_connect`    | TCP: `peer`, `proto`, `dir` (`out`: `attempts`, `next_seq`; or `in`) |
//! | `net_disconnect` | TCP: `peer`, `proto`, `dir`, `error` (`out`: `next_seq`)             |
//! | `udp`            | once a second when they changed: the guest kernel's UDP drops (/proc/net/snmp) `in_errors`, `rcvbuf_errors` |
//! | `net_done`       | per (peer, proto) once all msgs were sent and received: the `net` counters, `complete`, `clean` |
//! | `vport_open`     | `port`, `path`: the stream to the host starts                        |
//! | `vport`          | once a second: `port`, `written` (records)                           |
//! | `disk_open`      | a disk is mounted and its log opened: `disk` (label), `dev`, `mnt`, `log`, `random` (`hwrng`: from the host; or `getrandom`) |
//! | `disk`           | once a second per disk: `disk`, `counter` (lines written, kept in memory), `synced` (lines fsynced), `last_crc` (the chain's head, 8 hex digits), `marks`, `anomalies` |
//! | `disk_mark`      | a mark file made: `disk`, `seq` (the counter then), `nonce` (16 hex digits), `file`, `physical` (its byte offset on the device, null unless in one piece) |
//! | `disk_anomaly`   | at once: `disk`, `kind` = `tail` (the device's blocks at the log's end, the last and the next, hold what this run did not write there, reported once per place: `line`, `counter`, `synced`, `physical`, `found`) or `file` (the file's size disagrees with the counter: `size`, `counter`) |
//! | `disk_scan`      | per disk, at the control port's `scan`: `disk`, `dev`, `bytes`, `crc` (CRC-32 of the whole device, read with O_DIRECT), `marks` [{`seq`, `nonce`}] found at block starts on the device, `marks_found` (distinct marks), `orphans` (the marks found whose file the marks directory, listed after the read, lacks: written by another run, e.g. the original VM after the checkpoint a restored disk should not hold), `orphans_found`, `log` {`bytes`, `lines`, `last_crc`, `error`}: the log read with O_DIRECT and checked |
//! | `disk_crc`       | at the control port's `crc`: `disk`, `offset`, `len`, `crc` (CRC-32 of that range of the device, read with O_DIRECT) |
//! | `disk_closed`    | per disk at `shutdown`, once its writer stopped and synced and the disk is unmounted: the `disk` event's fields, `unmounted` |
//! | `ctl_open`, `ctl`| the control port is open: `port`, `path`; a command arrived: `command` |
//! | `done`           | all bounded activities finished (compute and every `net_done`); never if there is none: `elapsed_ms`, `compute` {`steps`, `checksum`, `done`}, `dirty` {...}, `net` [per (peer, proto) counters with `configured`, `done`] |
//!
//! `received` counts valid messages, duplicates included; `lost` counts
//! sequence numbers skipped and not (yet) arrived; a late one turns from
//! lost into reordered. The computation is `s(0) = 0`,
//! `s(i+1) = splitmix64(s(i) ^ i)`, checksum = `s(N)` in hex. After `done`
//! the probe keeps sampling clocks; it only exits at `probe.duration`.

mod clock;
mod compute;
mod ctl;
mod dirty;
mod disk;
mod net;
mod options;
mod output;
mod seqcheck;
mod vport;
mod wire;

use std::process;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use net::Net;
use options::Options;
use output::Output;

const USAGE: &str = "usage: mekha-probe [--cmdline \"mekha.id=N probe.key=value ...\"]";

/// The command line to parse: `--cmdline` (host mode) or /proc/cmdline.
fn cmdline_source() -> Result<(String, bool), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => std::fs::read_to_string("/proc/cmdline")
            .map(|c| (c, false))
            .map_err(|e| format!("reading /proc/cmdline: {e}")),
        [flag, c] if flag == "--cmdline" => Ok((c.clone(), true)),
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}\n(options and output: see the source, src/main.rs)");
            process::exit(0)
        }
        _ => Err(format!("bad arguments {args:?}\n{USAGE}")),
    }
}

/// Everything that runs, for the summaries.
struct Probe {
    opts: Options,
    started: Instant,
    compute: Arc<compute::Status>,
    dirty: Arc<dirty::Stats>,
    net: Arc<Net>,
}

impl Probe {
    fn summary(&self) -> serde_json::Map<String, Value> {
        let compute = (self.opts.compute > 0).then(|| {
            let c = self.compute.snapshot();
            json!({
                "steps": c.step,
                "checksum": compute::checksum_hex(c.state),
                "done": self.compute.done.load(Ordering::Acquire),
            })
        });
        let dirty = (self.opts.mem_mib > 0).then(|| {
            json!({
                "passes": self.dirty.passes.load(Ordering::Relaxed),
                "pages_written": self.dirty.pages_written.load(Ordering::Relaxed),
                "mismatches": self.dirty.mismatches.load(Ordering::Relaxed),
            })
        });
        let mut m = serde_json::Map::new();
        m.insert("elapsed_ms".into(), u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX).into());
        m.insert("compute".into(), compute.into());
        m.insert("dirty".into(), dirty.into());
        m.insert("net".into(), self.net.summary());
        m
    }

    /// Compute is finished and every stream with a peer is done.
    fn bounded_done(&self) -> bool {
        (self.opts.compute == 0 || self.compute.done.load(Ordering::Acquire))
            && (self.opts.msgs == 0 || self.net.all_done())
    }

    fn has_bounded(&self) -> bool {
        self.opts.compute > 0 || (self.opts.msgs > 0 && !self.opts.peers.is_empty())
    }
}

fn fatal(out: &Output, code: i32, message: String) -> ! {
    out.error(message);
    out.emit("exit", json!({ "code": code, "reason": "error" }));
    process::exit(code)
}

fn spawn(name: &str, out: &Arc<Output>, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = thread::Builder::new().name(name.into()).spawn(f) {
        fatal(out, 1, format!("starting thread {name}: {e}"));
    }
}

fn main() {
    let (cmdline, host) = cmdline_source().unwrap_or_else(|e| {
        eprintln!("mekha-probe: {e}");
        process::exit(2)
    });
    let (opts, errors) = options::parse(&cmdline);
    let default_out = if host { "-" } else { "/dev/console" };
    let path = opts.out.clone().unwrap_or_else(|| default_out.into());
    let out = match Output::open(&path, opts.id) {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("mekha-probe: opening {path}: {e}");
            for e in &errors {
                eprintln!("mekha-probe: {e}");
            }
            process::exit(if errors.is_empty() { 1 } else { 2 })
        }
    };
    // A panic in any thread ends the probe, visibly: a probe with a dead
    // thread would go on reporting half of what it should.
    let hook_out = out.clone();
    std::panic::set_hook(Box::new(move |info| {
        hook_out.error(format!("panic: {info}"));
        hook_out.emit("exit", json!({ "code": 101, "reason": "panic" }));
        process::exit(101)
    }));
    if !errors.is_empty() {
        for e in errors {
            out.error(e);
        }
        out.emit("exit", json!({ "code": 2, "reason": "options" }));
        process::exit(2);
    }
    run(opts, out)
}

fn run(opts: Options, out: Arc<Output>) -> ! {
    // Listen first: "start" means peers may connect from now on.
    let bound =
        Net::bind(out.clone(), opts.id, opts.port, opts.peers.clone(), opts.msgs, opts.msg_interval_ms, opts.udp_rate)
            .unwrap_or_else(|e| fatal(&out, 1, format!("listening on port {}: {e}", opts.port)));
    out.emit("start", json!({ "config": opts.to_json(), "version": env!("CARGO_PKG_VERSION") }));
    let net = bound.start().unwrap_or_else(|e| fatal(&out, 1, format!("starting the network threads: {e}")));
    let probe = Probe { started: Instant::now(), compute: Arc::default(), dirty: Arc::default(), net, opts };
    let opts = &probe.opts;

    if opts.compute > 0 {
        let (total, chunk, o, s) = (opts.compute, opts.compute_chunk, out.clone(), probe.compute.clone());
        spawn("compute", &out, move || compute::run(total, chunk, &o, &s));
    }
    if opts.mem_mib > 0 {
        let (mem, rate, o, s) = (opts.mem_mib, opts.rate_mib_s, out.clone(), probe.dirty.clone());
        spawn("dirty", &out, move || dirty::run(mem, rate, &o, &s));
    }
    let disks = (!opts.disks.is_empty()).then(|| {
        let cfg = disk::Config {
            labels: opts.disks.clone(),
            tick_ms: opts.disk_tick_ms,
            sync_every: opts.disk_sync,
            mark_ms: opts.disk_mark_ms,
        };
        disk::Disks::start(cfg, &out).unwrap_or_else(|e| fatal(&out, 1, format!("starting the disk logs: {e}")))
    });
    if let Some(name) = opts.ctl.clone() {
        let o = out.clone();
        spawn("ctl", &out, move || {
            if let Err(e) = ctl::run(&name, disks, &o) {
                o.error(format!("control port {name}: {e}"));
            }
        });
    }
    if let Some(name) = opts.vport.clone() {
        let o = out.clone();
        spawn("vport", &out, move || {
            if let Err(e) = vport::run(&name, &o) {
                o.error(format!("virtio-serial port {name}: {e}"));
            }
        });
    }

    let clock_every = Duration::from_millis(opts.clock_ms);
    let second = Duration::from_secs(1);
    let end = (opts.duration_s > 0).then(|| probe.started + Duration::from_secs(opts.duration_s));
    let mut next_clock = probe.started;
    let mut next_report = probe.started + second;
    let mut done_sent = !probe.has_bounded();
    let mut udp_reported = None;
    loop {
        let now = Instant::now();
        if opts.clock_ms > 0 && now >= next_clock {
            let (mono, fields) = clock::sample();
            out.emit_at("clock", mono, fields);
            next_clock += clock_every;
            if next_clock <= now {
                next_clock = now + clock_every; // skip, do not burst, after a stall
            }
        }
        if now >= next_report {
            probe.net.report();
            let udp = Net::udp_drops();
            if udp.is_some() && udp != udp_reported {
                out.emit("udp", udp.clone().unwrap_or_default());
                udp_reported = udp;
            }
            next_report += second;
            if next_report <= now {
                next_report = now + second;
            }
        }
        if !done_sent && probe.bounded_done() {
            done_sent = true;
            probe.net.report();
            out.emit("done", Value::Object(probe.summary()));
        }
        if let Some(end) = end {
            if now >= end {
                probe.net.report();
                let mut s = probe.summary();
                s.insert("code".into(), 0.into());
                s.insert("reason".into(), "duration".into());
                out.emit("exit", Value::Object(s));
                process::exit(0);
            }
        }
        let mut wake = now + Duration::from_millis(100);
        if opts.clock_ms > 0 {
            wake = wake.min(next_clock);
        }
        if let Some(end) = end {
            wake = wake.min(end);
        }
        thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
}
