// SPDX-License-Identifier: GPL-2.0-or-later
//! The fault matrix, agent and transport rows: a two-VM cluster run
//! through `mekha agent`s (spec mode, two "hosts", mutual TLS, one shared
//! checkpoint directory), the coordinator reaching h1's agent through a
//! TCP relay of the test's. While the coordinator stands at each step of a
//! checkpoint, in both capture modes, and of a restart, either h1's agent
//! is killed (SIGKILL; its VM runs on, as a VM outlives its agent) or the
//! relay cuts the coordinator's connections to it and refuses new ones (a
//! transport cut: the forwarded QMP connection and any agent request).
//! After each: the checkpoint fails naming node1 or its agent and commits
//! nothing — but once every image is durable, where the cut is whole and
//! is committed —, both VMs settle and run (none paused beyond its
//! lease), the latest generation verifies; a restart that loses h1 while
//! the VMs load runs none of them, and the next restart runs the job on.
//! The test prints the rows; docs/fault-matrix.md holds them.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fault::{
    checkpoint_verdict, committed_generation, settled_and_running, stderr, stopped_at, verifies, wait_new_event,
    wait_running, CHECKPOINT_STEPS, LEASE_MS, MODES,
};
use common::{cluster_job, json_of};
use mekha_rig::netns::BRIDGE;
use mekha_rig::{Artifacts, FakeHosts, ProbeLog, SpecVm};

const BOOT: Duration = Duration::from_secs(120);
/// Where the coordinator reaches h1's agent: the relay. h1's agent has a
/// certificate for this name.
const RELAY: &str = "127.0.0.2";

/// A TCP relay to one agent that the test can cut: every connection it
/// carries is shut down, and new ones are closed at once, until healed.
struct Relay {
    cut: Arc<AtomicBool>,
    carried: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(listen: &str, upstream: String) -> Relay {
        let listener = TcpListener::bind(listen).unwrap();
        let relay = Relay { cut: Arc::default(), carried: Arc::default() };
        let (cut, carried) = (relay.cut.clone(), relay.carried.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let mut carried = carried.lock().unwrap();
                // Finished connections go at the next cut.
                carried.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        relay
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.carried.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s direction.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.flush();
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// The failure injected at a step, and its repair before the next case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    AgentKilled,
    TransportCut,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::AgentKilled => "agent killed",
            Fault::TransportCut => "transport cut",
        }
    }
}

/// The two hosts, their agents, the relay to h1's and the spec.
struct Rig {
    artifacts: Artifacts,
    dir: PathBuf,
    hosts: FakeHosts,
    relay: Relay,
    spec: PathBuf,
    ckpt: PathBuf,
    state: PathBuf,
}

impl Rig {
    fn policy(&self) -> Vec<String> {
        let root = self.dir.display().to_string();
        let qemu = self.artifacts.qemu.display().to_string();
        ["--state-root", root.as_str(), "--checkpoint-root", root.as_str(), "--qemu", qemu.as_str()]
            .map(str::to_owned)
            .to_vec()
    }

    fn start_agent(&mut self, i: usize) {
        let bundle =
            self.dir.join("tls").join(if i == 1 { RELAY.to_owned() } else { self.hosts.hosts[i].address.clone() });
        let policy = self.policy();
        let policy: Vec<&str> = policy.iter().map(String::as_str).collect();
        self.hosts.start_agent(i, &self.artifacts.mekha, &bundle, &policy, &self.dir).unwrap();
    }

    fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::AgentKilled => self.hosts.kill_agent(1),
            Fault::TransportCut => self.relay.cut(),
        }
    }

    fn repair(&mut self, fault: Fault) {
        match fault {
            Fault::AgentKilled => self.start_agent(1),
            Fault::TransportCut => self.relay.heal(),
        }
    }

    fn mekha(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.artifacts.mekha);
        cmd.args(args).arg("--spec").arg(&self.spec);
        cmd
    }

    /// VM `i`'s QMP socket, on its host (a path this machine sees too).
    fn qmp_path(&self, i: usize) -> PathBuf {
        self.state.join(format!("h{i}/node{i}.qmp"))
    }

    fn pid(&self, i: usize) -> i32 {
        let pid = std::fs::read_to_string(self.state.join(format!("h{i}/node{i}.pid"))).unwrap();
        pid.trim().parse().unwrap()
    }

    fn log(&self, i: usize) -> ProbeLog {
        ProbeLog::new(self.dir.join(format!("node{i}.serial")))
    }

    /// QEMU's output of VM `i`'s last start.
    fn qemu_log(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.state.join(format!("h{i}/node{i}.log"))).unwrap();
        log.rsplit("--- mekha: QEMU started").next().unwrap().to_owned()
    }

    /// Waits for both VMs to run the job on (past `since` events each),
    /// none having rebooted.
    fn job_goes_on(&self, since: &[usize]) {
        for (i, &since) in since.iter().enumerate() {
            let log = self.log(i);
            wait_new_event(&log, since, "net", Duration::from_secs(60));
            assert_eq!(log.events().iter().filter(|e| e.ev == "start").count(), 1, "node{i} rebooted");
        }
    }

    fn events(&self) -> Vec<usize> {
        (0..2).map(|i| self.log(i).events().len()).collect()
    }
}

/// Kills the spec's QEMUs on drop, panics included: the agents that
/// started them may be gone.
struct KillVms(Vec<PathBuf>);

impl Drop for KillVms {
    fn drop(&mut self) {
        for pid_file in &self.0 {
            if let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: a plain signal to a QEMU this test had started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Whether process `pid` is gone (or a zombie: it exited, unreaped since
/// its agent was killed).
fn exited(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z'))
}

fn setup(artifacts: Artifacts, dir: &Path) -> Rig {
    let hosts = FakeHosts::create(2, &dir.join("hosts")).unwrap();
    let tls = dir.join("tls");
    let ca = dir.join("ca");
    let mut init = Command::new(&artifacts.mekha);
    init.args(["tls", "init", "--ca-dir"]).arg(&ca).arg("--dir").arg(&tls);
    init.args(["--agent", &hosts.hosts[0].address, "--agent", RELAY]);
    let out = init.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let relay = Relay::start(&format!("{RELAY}:{}", mekha_rig::hosts::AGENT_PORT), hosts.agent_address(1));
    let mut rig = Rig {
        spec: dir.join("cluster.toml"),
        ckpt: dir.join("ckpt"),
        state: dir.join("state"),
        artifacts,
        dir: dir.to_owned(),
        hosts,
        relay,
    };
    rig.start_agent(0);
    rig.start_agent(1);

    let ips = ["10.78.0.11", "10.78.0.12"];
    let mut spec = format!(
        "name = \"faults\"\ncheckpoint_dir = \"ckpt\"\nstate_dir = \"state\"\nqemu = {:?}\ntls_dir = \"tls\"\n\n\
         [network]\nbridge = \"{BRIDGE}\"\n\n[checkpoint]\nlease_ms = {LEASE_MS}\n",
        rig.artifacts.qemu.display().to_string()
    );
    for i in 0..2 {
        let agent =
            if i == 1 { format!("{RELAY}:{}", mekha_rig::hosts::AGENT_PORT) } else { rig.hosts.agent_address(i) };
        spec += &format!("\n[[host]]\nname = \"h{i}\"\nagent = \"{agent}\"\n");
        let mut probe_args = vec![format!("mekha.id={i}"), format!("mekha.ip={}/24", ips[i])];
        probe_args.push(format!("probe.peers={}", ips[1 - i]));
        probe_args.extend(cluster_job(2, 100_000).probe_args);
        let vm = SpecVm {
            name: format!("node{i}"),
            memory_mib: 256,
            probe_args,
            serial: dir.join(format!("node{i}.serial")),
            mac: format!("52:54:00:78:00:{:02x}", 11 + i),
            host: Some(format!("h{i}")),
        };
        spec += &vm.toml(&rig.artifacts);
    }
    std::fs::write(&rig.spec, spec).unwrap();
    rig
}

/// Whether a failure names node1 or the way to it.
fn names_node1(out: &Output) -> bool {
    let said = stderr(out);
    said.contains("node1") || said.contains(RELAY)
}

/// One row: `fault` at every step.
async fn row(rig: &mut Rig, fault: Fault, rows: &mut Vec<String>) {
    let name = fault.name();
    for mode in MODES {
        for step in CHECKPOINT_STEPS {
            let case = format!("{name}/{mode}/{step}");
            let before = committed_generation(&rig.ckpt);
            let cmd = rig.mekha(&["checkpoint", "--mode", mode]);
            let (reached, out) = stopped_at(cmd, step, |_| rig.inject(fault));
            let settled = settled_and_running(&case, &[rig.qmp_path(0), rig.qmp_path(1)]).await;
            let outcome = checkpoint_verdict(&case, step, &out, before, RELAY, &rig.artifacts, &rig.ckpt);
            rig.repair(fault);
            rows.push(format!(
                "| {name} | {step} | {mode} | at {} ms; {outcome}; checkpoints {}; VMs running; verifies |",
                reached.as_millis(),
                settled.join("/")
            ));
        }
    }

    // While the VMs load: the restart fails, both QEMUs exit at the end of
    // their leases without their guests having run.
    // Counted once the restart stopped the running VMs: from then on, only
    // a restored guest that runs adds events.
    let mut since = Vec::new();
    let (_, out) = stopped_at(rig.mekha(&["restart"]), "restore-loading", |_| {
        since = rig.events();
        rig.inject(fault)
    });
    assert!(!out.status.success() && names_node1(&out), "{name}/restore-loading: {}", stderr(&out));
    let pids = [rig.pid(0), rig.pid(1)];
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pids.iter().all(|&pid| exited(pid)) {
        assert!(Instant::now() < deadline, "{name}/restore-loading: a QEMU waits on after its lease");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..2 {
        assert!(rig.qemu_log(i).contains("lease expired"), "node{i}: {}", rig.qemu_log(i));
    }
    assert_eq!(rig.events(), since, "{name}/restore-loading: a guest ran");
    verifies(&rig.artifacts, &rig.ckpt);
    rig.repair(fault);
    // The next restart, whole, runs the job on.
    json_of(&rig.mekha(&["restart", "--json"]).output().unwrap());
    rig.job_goes_on(&since);
    rows.push(format!(
        "| {name} | restore loading | - | the restart failed naming node1; both QEMUs exited at the end of their \
         leases, no guest ran; generation {} verifies; the next restart runs the job on |",
        committed_generation(&rig.ckpt)
    ));

    // Once every VM has the resume instant: both resume together.
    // Counted once the restart stopped the running VMs: from then on, only
    // a restored guest that runs adds events.
    let mut since = Vec::new();
    let (_, out) = stopped_at(rig.mekha(&["restart"]), "restore-resuming", |_| {
        since = rig.events();
        rig.inject(fault)
    });
    let said = if out.status.success() { "succeeded".to_owned() } else { "reported node1 lost".to_owned() };
    assert!(out.status.success() || names_node1(&out), "{name}/restore-resuming: {}", stderr(&out));
    rig.repair(fault);
    for i in 0..2 {
        wait_running(&rig.qmp_path(i)).await;
    }
    rig.job_goes_on(&since);
    rows.push(format!(
        "| {name} | restore resuming | - | both VMs resumed at the instant, the job goes on; the restart {said} |"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_or_its_connection_lost_at_any_step_loses_nothing() {
    let artifacts = common::artifacts();
    let dir = common::test_dir("fault-matrix-agents");
    let mut rig = setup(artifacts, &dir);
    let _vms = KillVms((0..2).map(|i| rig.state.join(format!("h{i}/node{i}.pid"))).collect());
    json_of(&rig.mekha(&["up", "--json"]).output().unwrap());
    for i in 0..2 {
        rig.log(i).wait_for("compute", BOOT, |e| e.ev == "compute").unwrap();
    }
    json_of(&rig.mekha(&["checkpoint", "--json"]).output().unwrap());

    let mut rows = Vec::new();
    for fault in [Fault::AgentKilled, Fault::TransportCut] {
        let started = Instant::now();
        row(&mut rig, fault, &mut rows).await;
        eprintln!("{}: {} s", fault.name(), started.elapsed().as_secs());
    }
    let down = rig.mekha(&["down"]).output().unwrap();
    assert!(down.status.success(), "{}", stderr(&down));
    eprintln!("| fault | step | mode | outcome |\n|---|---|---|---|\n{}", rows.join("\n"));
}
