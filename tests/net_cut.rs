// SPDX-License-Identifier: GPL-2.0-or-later
//! The network cut of a coordinated checkpoint, with a link 50 ms long.
//!
//! VMs exchange sequenced TCP messages and paced UDP datagrams (10,000 a
//! second and more in all) while a delay line (`mekha_rig::DelayLine`)
//! makes one link 50 ms long, as between hosts joined by a real network:
//! at the checkpoint instant T, 50 ms of frames toward one VM are on the
//! line. The cluster is checkpointed through the `mekha` CLI, every QEMU
//! is killed (SIGKILL) and the cluster restarted
//! from the images through the CLI, in copy-on-write mode and in MTD mode
//! one after the other in one boot. In both the world that went on after
//! the checkpoint and the restored one, no message may be lost,
//! duplicated, reordered or corrupted: the frames in flight at T must be
//! in their receiver's image, whatever the link's latency.
//!
//! Then a peer's tap is unplugged from its bridge right before a
//! checkpoint: its marker never arrives, so the checkpoint fails naming
//! the missing marker, commits nothing (the latest generation stays, and
//! verifies) and leaves every VM running.
//!
//! On one host (three VMs on one bridge, the delay on one VM's tap; the
//! unplugged peer too), and over two fake hosts (network namespaces whose
//! bridges are joined into one segment; the delay on the link between the
//! hosts, one way): attached through ssh, and in spec mode through the
//! hosts' agents (`mekha up`, `mekha restart`).
//!
//! Frames lost by the guests themselves (a full UDP receive buffer in a
//! guest just restored, a full tap queue while a QEMU waits for a host
//! CPU) are reported beside a failure, apart from the checkpoint's.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::fault::{committed_generation, verifies};
use common::summary_of;
use mekha_coordinator::cluster::{ClusterCheckpoint, ClusterRestore};
use mekha_coordinator::qmp::Qmp;
use mekha_rig::netns::BRIDGE;
use mekha_rig::vm::Nic;
use mekha_rig::{Artifacts, DelayLine, FakeHosts, Netns, ProbeEvent, ProbeLog, SpecVm, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(240);
/// The latency of the delayed link.
const LINK_DELAY: Duration = Duration::from_millis(50);
/// Datagrams per second over all UDP streams of the cluster, at least.
const UDP_IN_ALL: u64 = 10_000;
/// TCP: a message per millisecond per stream (as fast as the guest's
/// sleep goes).
const TCP_INTERVAL_MS: u64 = 1;
/// Messages every stream must carry in a world (after a checkpoint, or
/// after a restart) before its counters are read.
const MSGS_AFTER: u64 = 1000;
/// How long a world may take to carry them (TCG guests, restored ones
/// faulting their pages in).
const EXCHANGE: Duration = Duration::from_secs(120);
/// The rate is measured over this window of the running exchange.
const RATE_WINDOW: Duration = Duration::from_secs(5);
const SUBNET: &str = "10.77.0";

/// One cluster at a time: two on two host cores would slow both.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the VMs run and how the CLI reaches them.
enum Place {
    /// One namespace; the CLI attaches to the VMs' QMP sockets.
    OneHost(Netns),
    /// Two fake hosts; the CLI attaches to the VMs through ssh.
    Ssh(FakeHosts),
    /// Two fake hosts whose agents start the VMs of a spec (`mekha up`).
    Agents { hosts: FakeHosts, spec: PathBuf, state: PathBuf },
}

impl Place {
    fn hosts(&self) -> Option<&FakeHosts> {
        match self {
            Place::OneHost(_) => None,
            Place::Ssh(hosts) | Place::Agents { hosts, .. } => Some(hosts),
        }
    }
}

/// How a test places its VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    OneHost,
    Ssh,
    Agents,
}

/// A cluster of probes with a delay line.
struct Rig {
    // Field order is drop order: the VMs, the line, then their namespaces.
    /// The VMs this test started (none in spec mode: the agents did).
    vms: Vec<Vm>,
    configs: Vec<VmConfig>,
    delay: DelayLine,
    /// The VM that frames from some peer reach 50 ms late.
    behind_line: usize,
    place: Place,
    /// The fake host of each VM (0 on one host).
    host_of: Vec<usize>,
    artifacts: Artifacts,
    dir: PathBuf,
    /// The worlds started so far (the first boot is world 0).
    world: usize,
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn ip_of(i: usize) -> String {
    format!("{SUBNET}.{}", 11 + i)
}

fn node_of_ip(ip: &str) -> String {
    let last: usize = ip.rsplit('.').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    format!("node{}", last.saturating_sub(11))
}

/// Room for a burst while a QEMU waits for a host CPU (the default 1000
/// frames are 100 ms of this exchange).
fn long_queue(netns: &Netns, link: &str) {
    netns.ip(&["link", "set", link, "txqueuelen", "10000"]).unwrap();
}

impl Rig {
    /// Boots a probe per entry of `host_of` (VM `i` on fake host
    /// `host_of[i]`, unless on one host).
    async fn launch(artifacts: Artifacts, dir: &Path, how: How, host_of: Vec<usize>) -> Rig {
        let vms = host_of.len();
        let mut place = match how {
            How::OneHost => Place::OneHost(Netns::create().unwrap()),
            How::Ssh => Place::Ssh(FakeHosts::create(2, &dir.join("hosts")).unwrap()),
            How::Agents => Place::Agents {
                hosts: FakeHosts::create(2, &dir.join("hosts")).unwrap(),
                spec: dir.join("cluster.toml"),
                state: dir.join("state"),
            },
        };
        // Every stream paced alike, twice 10,000 datagrams a second in
        // all: three TCG guests on a busy two-core host fall short of
        // their schedule (a clean-room run made 74% of it).
        let streams = (vms * (vms - 1)) as u64;
        let udp_rate = (UDP_IN_ALL * 2).div_ceil(streams);
        let mut configs = Vec::new();
        for (i, &host) in host_of.iter().enumerate() {
            let netns = match &mut place {
                Place::OneHost(ns) => Some(ns),
                Place::Ssh(hosts) => Some(&mut hosts.hosts[host].netns),
                // Spec mode: `mekha up` makes the taps.
                Place::Agents { .. } => None,
            };
            let tap = match netns {
                Some(netns) => {
                    let tap = netns.add_tap().unwrap();
                    long_queue(netns, &tap);
                    tap
                }
                None => String::new(),
            };
            let peers: Vec<String> = (0..vms).filter(|&j| j != i).map(ip_of).collect();
            let mut config = VmConfig::new(format!("node{i}"));
            config.memory_mib = 256;
            config.nic = Some(Nic { tap, mac: format!("52:54:00:77:00:{:02x}", 11 + i) });
            config.probe_args = vec![
                format!("mekha.id={i}"),
                format!("mekha.ip={}/24", ip_of(i)),
                format!("probe.peers={}", peers.join(",")),
                "probe.msgs=0".into(),
                format!("probe.msg_interval_ms={TCP_INTERVAL_MS}"),
                format!("probe.udp_rate={udp_rate}"),
            ];
            configs.push(config);
        }
        // One host: the last VM's tap is 50 ms away from the bridge. Two:
        // the link between the hosts, from the second host's end; what
        // the second host's VMs send reaches the first's 50 ms late.
        let (delay, behind_line) = match &place {
            Place::OneHost(ns) => {
                let tap = configs[vms - 1].nic.as_ref().unwrap().tap.clone();
                (DelayLine::insert(ns, &tap, LINK_DELAY).unwrap(), vms - 1)
            }
            Place::Ssh(hosts) | Place::Agents { hosts, .. } => {
                (DelayLine::insert(&hosts.hosts[1].netns, "downlink", LINK_DELAY).unwrap(), 0)
            }
        };
        let dir = dir.to_owned();
        let mut rig = Rig { vms: Vec::new(), configs, delay, behind_line, place, host_of, artifacts, dir, world: 0 };
        if how == How::Agents {
            rig.up();
        } else {
            for i in 0..vms {
                let vm = Vm::launch(&rig.artifacts, Some(rig.netns(i)), &rig.world_dir(i), rig.configs[i].clone());
                rig.vms.push(vm.unwrap());
            }
        }
        rig
    }

    /// Spec mode: the agents of the fake hosts start, then `mekha up`
    /// has each start its VMs.
    fn up(&mut self) {
        let Place::Agents { hosts, spec, state } = &mut self.place else { unreachable!("up without agents") };
        let (artifacts, dir) = (&self.artifacts, &self.dir);
        let tls = dir.join("tls");
        let mut init = vec!["tls".to_owned(), "init".into(), "--ca-dir".into(), path(&dir.join("ca"))];
        init.extend(["--dir".into(), path(&tls)]);
        for h in &hosts.hosts {
            init.extend(["--agent".into(), h.address.clone()]);
        }
        let out = Command::new(&artifacts.mekha).args(&init).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let root = path(dir);
        let policy = ["--state-root", &root, "--checkpoint-root", &root, "--qemu", &path(&artifacts.qemu)];
        hosts.start_agents(&artifacts.mekha, &tls, &policy, dir).unwrap();
        let mut toml = format!(
            "name = \"net-cut\"\ncheckpoint_dir = {:?}\nstate_dir = {:?}\nqemu = {:?}\ntls_dir = {:?}\n\n\
             [network]\nbridge = \"{BRIDGE}\"\n",
            path(&dir.join("images")),
            path(state),
            path(&artifacts.qemu),
            path(&tls),
        );
        for i in 0..hosts.hosts.len() {
            toml += &format!("\n[[host]]\nname = \"h{i}\"\nagent = \"{}\"\n", hosts.agent_address(i));
        }
        for (i, config) in self.configs.iter().enumerate() {
            let vm = SpecVm {
                name: config.name.clone(),
                memory_mib: config.memory_mib,
                probe_args: config.probe_args.clone(),
                serial: dir.join(format!("{}.serial", config.name)),
                mac: config.nic.as_ref().unwrap().mac.clone(),
                host: Some(format!("h{}", self.host_of[i])),
            };
            toml += &vm.toml(artifacts);
        }
        std::fs::write(&*spec, toml).unwrap();
        let up = Command::new(&artifacts.mekha).args(["up", "--spec", &path(spec)]).output().unwrap();
        assert!(up.status.success(), "mekha up: {}", String::from_utf8_lossy(&up.stderr));
        // The taps `up` made, on the hosts' bridges.
        for host in &hosts.hosts {
            let out = host.netns.command("ip").args(["-j", "link", "show", "master", BRIDGE]).output().unwrap();
            let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            for link in links.as_array().into_iter().flatten() {
                let name = link["ifname"].as_str().unwrap_or_default();
                if name.starts_with("mk") {
                    long_queue(&host.netns, name);
                }
            }
        }
    }

    fn netns(&self, i: usize) -> &Netns {
        match &self.place {
            Place::OneHost(ns) => ns,
            Place::Ssh(hosts) | Place::Agents { hosts, .. } => &hosts.hosts[self.host_of[i]].netns,
        }
    }

    fn world_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("world{}/node{i}", self.world))
    }

    /// The probes' consoles (in spec mode, one file per VM across worlds).
    fn logs(&self) -> Vec<ProbeLog> {
        match &self.place {
            Place::Agents { .. } => {
                self.configs.iter().map(|c| ProbeLog::new(self.dir.join(format!("{}.serial", c.name)))).collect()
            }
            _ => self.vms.iter().map(Vm::log).collect(),
        }
    }

    /// `mekha ARGS` on every VM (through ssh over the fake hosts, or
    /// their agents in spec mode) with the checkpoint directory `images`
    /// (in spec mode, the spec's).
    fn mekha(&self, args: &[&str], images: &Path) -> Output {
        let mut cmd = Command::new(&self.artifacts.mekha);
        cmd.args(args);
        let endpoints: Vec<OsString> = match &self.place {
            Place::OneHost(_) => self.vms.iter().map(|vm| vm.cli_qmp_path().into()).collect(),
            Place::Ssh(hosts) => {
                for o in &hosts.ssh_options {
                    cmd.arg("--ssh-option").arg(o);
                }
                let url = |(i, vm): (usize, &Vm)| hosts.qmp_url(self.host_of[i], &vm.cli_qmp_path()).into();
                self.vms.iter().enumerate().map(url).collect()
            }
            Place::Agents { spec, .. } => {
                assert_eq!(images, self.dir.join("images"), "the spec's checkpoint directory");
                return cmd.arg("--spec").arg(spec).output().unwrap();
            }
        };
        for e in endpoints {
            cmd.arg("--qmp").arg(e);
        }
        cmd.arg("--dir").arg(images).output().unwrap()
    }

    /// Every QEMU killed (SIGKILL), the cluster restarted from `images`
    /// through the CLI: the next world. The restart's summary, and where
    /// the new world begins in each console's events.
    async fn kill_and_restart(&mut self, images: &Path) -> (ClusterRestore, Vec<usize>) {
        self.world += 1;
        // The killed world's last frames drain from the delay line into
        // taps nobody reads (dropped there) before any new QEMU opens one:
        // a restart comes after a failure, not within 50 ms of it.
        let drained = || std::thread::sleep(LINK_DELAY * 20);
        if let Place::Agents { state, .. } = &self.place {
            for (i, config) in self.configs.iter().enumerate() {
                let pid_file = state.join(format!("h{}", self.host_of[i])).join(format!("{}.pid", config.name));
                let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
                // SAFETY: a plain signal to the QEMU the agent started for this test.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                // Gone, or a zombie its agent has yet to reap.
                let deadline = Instant::now() + Duration::from_secs(10);
                while std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
                {
                    assert!(Instant::now() < deadline, "{} outlives SIGKILL", config.name);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            drained();
            let since = self.logs().iter().map(|l| l.events().len()).collect();
            let out = self.mekha(&["restart", "--json"], images);
            return (summary_of(&out), since);
        }
        for vm in &mut self.vms {
            vm.kill();
        }
        drained();
        for i in 0..self.vms.len() {
            let mut config = self.configs[i].clone();
            config.incoming = true;
            self.vms[i] = Vm::launch(&self.artifacts, Some(self.netns(i)), &self.world_dir(i), config).unwrap();
            self.vms[i].qmp().await.unwrap();
        }
        let since = self.logs().iter().map(|l| l.events().len()).collect();
        let out = self.mekha(&["restore", "--json"], images);
        (summary_of(&out), since)
    }

    /// The links of the VMs' namespaces that dropped frames (a full tap
    /// queue: a QEMU that did not read its tap in time), for failures.
    fn link_drops(&self) -> Vec<String> {
        let namespaces: Vec<&Netns> = match self.place.hosts() {
            None => (0..1).map(|i| self.netns(i)).collect(),
            Some(hosts) => hosts.hosts.iter().map(|h| &h.netns).collect(),
        };
        let mut drops = Vec::new();
        for netns in namespaces {
            let out = netns.command("ip").args(["-s", "-j", "link", "show"]).output().unwrap();
            let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for link in links.as_array().into_iter().flatten() {
                let stats = &link["stats64"];
                let (rx, tx) =
                    (stats["rx"]["dropped"].as_u64().unwrap_or(0), stats["tx"]["dropped"].as_u64().unwrap_or(0));
                if rx + tx > 0 {
                    drops.push(format!("{} {}: rx {rx} tx {tx} dropped", netns.name(), link["ifname"]));
                }
            }
        }
        drops
    }

    /// Every VM's QEMU runs and reports `running`.
    async fn all_running(&mut self) -> Result<(), String> {
        if let Place::Agents { .. } = self.place {
            let out = self.mekha(&["status", "--json"], &self.dir.join("images"));
            let status = common::json_of(&out);
            for vm in status["vms"].as_array().into_iter().flatten() {
                if vm["state"] != "running" {
                    return Err(format!("{vm}"));
                }
            }
            return Ok(());
        }
        for vm in &mut self.vms {
            if !vm.is_running() {
                return Err(format!("{} died: {}", vm.config.name, vm.stderr()));
            }
            let status = Qmp::connect(vm.qmp_path()).await.unwrap().status().await.unwrap();
            if status.status != "running" {
                return Err(format!("{} is {status:?}", vm.config.name));
            }
        }
        Ok(())
    }
}

/// A probe's counters of each stream it receives, by (peer, proto).
type Streams = BTreeMap<(String, String), ProbeEvent>;

/// Where a world begins, for its streams' progress.
#[derive(Clone, Copy)]
enum WorldStart<'a> {
    /// Each probe's counters when it began (a world that went on).
    Counters(&'a [Streams]),
    /// Each console's first event in it (a restored world).
    Event(&'a [usize]),
}

/// The counters of each stream a probe receives, by (peer, proto): the
/// latest `net` event of each, or the first one after event `since`.
fn streams_at(log: &ProbeLog, since: usize, latest: bool) -> Streams {
    let mut found = BTreeMap::new();
    for e in log.events().into_iter().skip(since).filter(|e| e.ev == "net") {
        let key = (e.str("peer").unwrap_or_default().to_owned(), e.str("proto").unwrap_or_default().to_owned());
        if latest || !found.contains_key(&key) {
            found.insert(key, e);
        }
    }
    found
}

fn streams(log: &ProbeLog) -> Streams {
    streams_at(log, 0, true)
}

/// Datagrams sent per second over all the cluster's UDP streams, over
/// `RATE_WINDOW` of the running exchange: each stream's sent count across
/// the window by its probe's own clock.
fn udp_rate(logs: &[ProbeLog]) -> (f64, Vec<String>) {
    let since: Vec<usize> = logs.iter().map(|l| l.events().len()).collect();
    std::thread::sleep(RATE_WINDOW);
    let mut rate = 0.0;
    let mut streams = Vec::new();
    for (i, (log, since)) in logs.iter().zip(since).enumerate() {
        let mut window: BTreeMap<String, (ProbeEvent, ProbeEvent)> = BTreeMap::new();
        for e in log.events().into_iter().skip(since) {
            if e.ev == "net" && e.str("proto") == Some("udp") {
                let peer = e.str("peer").unwrap_or_default().to_owned();
                window.entry(peer).and_modify(|(_, last)| *last = e.clone()).or_insert((e.clone(), e));
            }
        }
        for (first, last) in window.values() {
            let sent = last.u64("sent").unwrap_or(0) - first.u64("sent").unwrap_or(0);
            let ns = last.u64("mono_ns").unwrap_or(0) - first.u64("mono_ns").unwrap_or(0);
            if ns > 0 {
                rate += sent as f64 * 1e9 / ns as f64;
            }
            streams.push(format!("node{i} to {}: {sent} in {} ms", first.str("peer").unwrap_or("?"), ns / 1_000_000));
        }
    }
    (rate, streams)
}

/// Waits until every stream each probe receives carried `more` messages
/// since the world began (from its first counters there, in a restored
/// world).
fn wait_streams_carry(logs: &[ProbeLog], from: WorldStart<'_>, more: u64, what: &str) {
    let deadline = Instant::now() + EXCHANGE;
    let streams_per_vm = 2 * (logs.len() - 1);
    loop {
        let behind: Vec<String> = logs
            .iter()
            .enumerate()
            .flat_map(|(i, log)| {
                // A console may hold the worlds before (spec mode appends).
                let (now, base_of) = match from {
                    WorldStart::Counters(counters) => (streams(log), counters[i].clone()),
                    WorldStart::Event(since) => (streams_at(log, since[i], true), streams_at(log, since[i], false)),
                };
                let mut behind = Vec::new();
                if now.len() < streams_per_vm {
                    behind.push(format!("node{i}: {} of {streams_per_vm} streams reported", now.len()));
                }
                for (key, e) in now {
                    let base = base_of.get(&key).and_then(|b| b.u64("received")).unwrap_or(0);
                    let received = e.u64("received").unwrap_or(0);
                    if received < base + more {
                        behind.push(format!("node{i} from {}: {received} {} received", node_of_ip(&key.0), key.1));
                    }
                }
                behind
            })
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: the streams do not carry {more} messages: {behind:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What one world showed of the cut: per stream (receiver, sender,
/// proto), the messages lost, duplicated, reordered and corrupted, from
/// the probes' anomaly events since each log's event `since[i]`.
#[derive(Debug, Default)]
struct Damage {
    per_stream: BTreeMap<String, [u64; 4]>,
    /// The guest kernels' own UDP drops (a full receive buffer), which no
    /// checkpoint causes: told apart from a lost frame.
    guest_udp_drops: Vec<String>,
    other: Vec<String>,
}

impl Damage {
    fn of(logs: &[ProbeLog], since: &[usize]) -> Damage {
        let mut damage = Damage::default();
        for (i, log) in logs.iter().enumerate() {
            for e in log.events().into_iter().skip(since.get(i).copied().unwrap_or(0)) {
                match e.ev.as_str() {
                    "net_anomaly" => {
                        let stream = format!(
                            "{}->node{i} {}",
                            node_of_ip(e.str("peer").unwrap_or_default()),
                            e.str("proto").unwrap_or_default()
                        );
                        let counts = damage.per_stream.entry(stream).or_default();
                        match e.str("kind") {
                            Some("lost") => counts[0] += e.u64("count").unwrap_or(1),
                            Some("dup") => counts[1] += 1,
                            Some("reordered") => counts[2] += 1,
                            Some("corrupt") => counts[3] += 1,
                            _ => damage.other.push(format!("node{i}: {}", e.json)),
                        }
                    }
                    "udp" if e.u64("rcvbuf_errors").unwrap_or(0) + e.u64("in_errors").unwrap_or(0) > 0 => {
                        damage.guest_udp_drops.push(format!("node{i}: {}", e.json));
                    }
                    "error" | "start" => damage.other.push(format!("node{i}: {}", e.json)),
                    _ => {}
                }
            }
        }
        damage
    }

    fn is_clean(&self) -> bool {
        self.per_stream.is_empty() && self.other.is_empty()
    }

    fn describe(&self) -> String {
        if self.is_clean() && self.guest_udp_drops.is_empty() {
            return "nothing lost, duplicated, reordered or corrupted".into();
        }
        let mut parts: Vec<String> = self
            .per_stream
            .iter()
            .map(|(s, [lost, dup, reordered, corrupt])| {
                format!("{s}: {lost} lost, {dup} dup, {reordered} reordered, {corrupt} corrupt")
            })
            .collect();
        parts.extend(self.other.iter().cloned());
        if !self.guest_udp_drops.is_empty() {
            parts.push(format!("guest UDP drops (not the checkpoint's): {:?}", self.guest_udp_drops));
        }
        parts.join("; ")
    }
}

/// One checkpoint and restart in `mode`, checked in both worlds; what
/// went wrong, if anything (every check is made, so that a failing run
/// still measures both modes).
async fn checkpoint_kill_restart(rig: &mut Rig, mode: &str, images: &Path, failures: &mut Vec<String>) {
    let case = format!("{mode}, {} VMs", rig.configs.len());
    let logs = rig.logs();
    let since: Vec<usize> = logs.iter().map(|l| l.events().len()).collect();
    let out = rig.mekha(&["checkpoint", "--json", "--mode", mode], images);
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        failures
            .push(format!("{case}: the checkpoint failed: {said}; links that dropped frames: {:?}", rig.link_drops()));
        return;
    }
    let summary: ClusterCheckpoint = summary_of(&out);
    let saved: BTreeMap<String, u64> =
        summary.vms.iter().map(|v| (v.vm.clone(), v.progress.net_saved_frames)).collect();
    let dropped: Vec<u64> = summary.vms.iter().map(|v| v.progress.net_dropped_frames).collect();
    let pauses: Vec<u64> = summary.vms.iter().map(|v| v.progress.pause_ns / 1000).collect();
    eprintln!(
        "{case}: generation {} committed; frames saved per VM {saved:?}, dropped {dropped:?}; pauses {pauses:?} us, \
         stop skew {} us",
        summary.generation,
        summary.stop_skew_ns / 1000
    );
    let late = rig.behind_line;
    if saved.get(&format!("node{late}")).copied().unwrap_or(0) == 0 {
        failures.push(format!("{case}: nothing saved toward node{late}, 50 ms behind a peer"));
    }
    if dropped.iter().any(|&d| d > 0) {
        failures.push(format!("{case}: frames dropped at the checkpoint: {dropped:?}"));
    }
    let incomplete: Vec<&str> =
        summary.vms.iter().filter(|v| !v.progress.cut_complete).map(|v| v.vm.as_str()).collect();
    if !incomplete.is_empty() {
        failures.push(format!("{case}: committed with the cut incomplete on {incomplete:?}"));
    }

    // (a) The world that went on after the checkpoint.
    let at_checkpoint: Vec<_> = logs.iter().map(streams).collect();
    wait_streams_carry(
        &logs,
        WorldStart::Counters(&at_checkpoint),
        MSGS_AFTER,
        &format!("{case}, after the checkpoint"),
    );
    let went_on = Damage::of(&logs, &since);
    eprintln!("{case}, the world that went on: {}", went_on.describe());
    if !went_on.is_clean() {
        failures.push(format!("{case}, the world that went on: {}", went_on.describe()));
    }

    // (b) Every QEMU killed; the restored world.
    let (restored, since) = rig.kill_and_restart(images).await;
    let injected: BTreeMap<String, u64> =
        restored.vms.iter().map(|v| (v.vm.clone(), v.progress.net_injected_frames)).collect();
    let refused: Vec<u64> = restored.vms.iter().map(|v| v.progress.net_dropped_frames).collect();
    eprintln!("{case}: restored generation {}; frames injected {injected:?}, dropped {refused:?}", restored.generation);
    if injected != saved || refused.iter().any(|&d| d > 0) {
        failures.push(format!("{case}: saved {saved:?} but injected {injected:?}, dropped {refused:?} at the restore"));
    }
    let logs = rig.logs();
    wait_streams_carry(&logs, WorldStart::Event(&since), MSGS_AFTER, &format!("{case}, restored"));
    let restored = Damage::of(&logs, &since);
    eprintln!("{case}, the restored world: {}", restored.describe());
    if !restored.is_clean() {
        failures.push(format!("{case}, the restored world: {}", restored.describe()));
    }
}

/// Once the exchange runs, measures its rate, then checkpoints and
/// restarts in both modes: what failed.
async fn cut_in_both_modes(rig: &mut Rig, images: &Path) -> Vec<String> {
    for log in rig.logs() {
        log.wait_for("UDP at full rate", BOOT, |e| {
            e.ev == "net" && e.str("proto") == Some("udp") && e.u64("received").unwrap_or(0) > 2000
        })
        .unwrap();
    }
    let (rate, streams) = udp_rate(&rig.logs());
    eprintln!("{} VMs: {rate:.0} UDP datagrams per second in all ({})", rig.configs.len(), streams.join(", "));

    let mut failures = Vec::new();
    // Checked, but only at the end: the cut is measured whatever the rate.
    if rate < UDP_IN_ALL as f64 {
        failures.push(format!(
            "the probes sent {rate:.0} datagrams per second in all, not {UDP_IN_ALL}: {}",
            streams.join(", ")
        ));
    }
    let mut modes = vec!["mtd"];
    if mekha_ckpt_core::host::Capabilities::probe().userfaultfd_wp {
        modes.insert(0, "cow");
    } else {
        mekha_test_skip::skip("this host has no userfaultfd write protection: copy-on-write mode not tried");
    }
    for mode in modes {
        checkpoint_kill_restart(rig, mode, images, &mut failures).await;
    }
    if rig.delay.lost() > 0 {
        failures.push(format!("the delay line failed to pass {} frames on", rig.delay.lost()));
    }
    eprintln!("the delay line passed {} frames; links that dropped frames: {:?}", rig.delay.passed(), rig.link_drops());
    if !failures.is_empty() {
        failures.push(format!("links that dropped frames (not the checkpoint): {:?}", rig.link_drops()));
    }
    failures
}

/// A peer whose tap is unplugged from the bridge right before a
/// checkpoint: its marker never arrives. The checkpoint fails naming
/// it, commits nothing, and every VM runs.
async fn missing_marker_commits_nothing(rig: &mut Rig, images: &Path, failures: &mut Vec<String>) {
    let before = committed_generation(images);
    assert!(before > 0, "no checkpoint committed before");
    let peer = 1;
    let tap = rig.configs[peer].nic.as_ref().unwrap().tap.clone();
    rig.netns(peer).ip(&["link", "set", &tap, "nomaster"]).unwrap();
    let out = rig.mekha(&["checkpoint", "--json"], images);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("node{peer} unplugged: exit {:?}: {}", out.status.code(), said.trim());
    if out.status.success() {
        failures.push(format!(
            "node{peer} unplugged: the checkpoint was committed: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    } else if !said.contains("marker") {
        failures.push(format!("node{peer} unplugged: the error does not name the missing marker: {said}"));
    }
    let after = committed_generation(images);
    if after != before {
        failures.push(format!("node{peer} unplugged: generation {after} committed (was {before})"));
    }
    verifies(&rig.artifacts, images);
    if let Err(e) = rig.all_running().await {
        failures.push(format!("node{peer} unplugged: not every VM runs: {e}"));
    }
}

/// One test: the VMs of `host_of` placed `how`, the cut in both modes,
/// then (with `unplug`) the missing marker, in one boot.
async fn cut_case(name: &str, how: How, host_of: Vec<usize>, unplug: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let artifacts = common::artifacts();
    let dir = common::test_dir(name);
    let images = dir.join("images");
    let mut rig = Rig::launch(artifacts, &dir, how, host_of).await;
    let mut failures = cut_in_both_modes(&mut rig, &images).await;
    if unplug {
        missing_marker_commits_nothing(&mut rig, &images, &mut failures).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn three_vms_on_one_host_lose_nothing_over_a_50ms_link() {
    cut_case("net-cut-one-host", How::OneHost, vec![0; 3], true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_vms_over_two_hosts_lose_nothing_over_a_50ms_link() {
    cut_case("net-cut-two-hosts", How::Ssh, vec![0, 1], false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_vms_started_by_agents_lose_nothing_over_a_50ms_link() {
    cut_case("net-cut-agents", How::Agents, vec![0, 1], false).await;
}
