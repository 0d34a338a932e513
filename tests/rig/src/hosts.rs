// SPDX-License-Identifier: GPL-2.0-or-later
//! Several "hosts" on one machine, for multi-host tests: each a network
//! namespace with its own bridge for VMs, an sshd and (on demand) a
//! `mekha agent` listening on an address that the root namespace reaches
//! over a veth pair. The hosts'
//! bridges are joined by veth pairs, so that their VMs share one L2
//! segment, as VMs of one cluster spread over hosts would. Traffic stays
//! inside these namespaces and the veths to them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{Netns, BRIDGE};

pub struct FakeHost {
    // Field order is drop order: the daemons before their namespace.
    agent: Option<Child>,
    sshd: Child,
    pub netns: Netns,
    /// The sshd's address, reachable from the root namespace.
    pub address: String,
    /// A directory this host sees as a filesystem of its own (see
    /// [`FakeHosts::give_own_storage`]).
    own_storage: Option<PathBuf>,
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        for daemon in self.agent.iter_mut().chain([&mut self.sshd]) {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

/// The port the fake hosts' agents listen on.
pub const AGENT_PORT: u16 = 7441;

pub struct FakeHosts {
    pub hosts: Vec<FakeHost>,
    /// `-o` options for ssh to reach them: the client key, no host key
    /// checks (fresh host keys per test).
    pub ssh_options: Vec<String>,
    root_links: Vec<String>,
}

impl Drop for FakeHosts {
    fn drop(&mut self) {
        for link in &self.root_links {
            let _ = Command::new("ip").args(["link", "delete", link]).output();
        }
    }
}

const SSHD: &str = "/usr/sbin/sshd";

impl FakeHosts {
    /// `n` hosts, host `i` at 10.99.`i`.2; keys and configs in `dir`.
    pub fn create(n: usize, dir: &Path) -> Result<FakeHosts> {
        if !Path::new(SSHD).exists() {
            bail!("{SSHD} is missing: install openssh-server (ci/deps does)");
        }
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all("/run/sshd")?;
        let client_key = dir.join("client");
        let host_key = dir.join("host");
        for key in [&client_key, &host_key] {
            let _ = std::fs::remove_file(key);
            run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(key))?;
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized)?;
        let mut fake = FakeHosts {
            hosts: Vec::new(),
            ssh_options: vec![
                format!("IdentityFile={}", client_key.display()),
                "IdentitiesOnly=yes".into(),
                "UserKnownHostsFile=/dev/null".into(),
                "StrictHostKeyChecking=no".into(),
                "LogLevel=ERROR".into(),
            ],
            root_links: Vec::new(),
        };
        let tag = std::process::id() % 10_000;
        for i in 0..n {
            let netns = Netns::create()?;
            let root_link = format!("mkh{tag}-{i}");
            run(Command::new("ip").args([
                "link",
                "add",
                &root_link,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns.name(),
            ]))?;
            fake.root_links.push(root_link.clone());
            run(Command::new("ip").args(["addr", "add", &format!("10.99.{i}.1/24"), "dev", &root_link]))?;
            run(Command::new("ip").args(["link", "set", &root_link, "up"]))?;
            let address = format!("10.99.{i}.2");
            netns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
            netns.ip(&["link", "set", "eth0", "up"])?;
            let config = dir.join(format!("sshd-{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "ListenAddress {address}\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\nUsePAM no\nStrictModes no\nPidFile {}\nAllowStreamLocalForwarding yes\n",
                    host_key.display(),
                    authorized.display(),
                    dir.join(format!("sshd-{i}.pid")).display()
                ),
            )?;
            let sshd = netns
                .command(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("sshd-{i}.log")))?)
                .spawn()
                .context("starting sshd")?;
            fake.hosts.push(FakeHost { agent: None, sshd, netns, address, own_storage: None });
        }
        // One L2 segment: a veth pair between consecutive hosts' bridges.
        for i in 1..n {
            let (a, b) = (&fake.hosts[i - 1].netns, &fake.hosts[i].netns);
            a.ip(&["link", "add", "uplink", "type", "veth", "peer", "name", "downlink", "netns", b.name()])?;
            a.ip(&["link", "set", "uplink", "master", BRIDGE])?;
            a.ip(&["link", "set", "uplink", "up"])?;
            b.ip(&["link", "set", "downlink", "master", BRIDGE])?;
            b.ip(&["link", "set", "downlink", "up"])?;
        }
        for host in &fake.hosts {
            fake.wait_for_sshd(host)?;
        }
        Ok(fake)
    }

    /// Starts `mekha agent` on every host, on its address, with the TLS
    /// directory `tls/ADDRESS` (what `mekha tls init --agent ADDRESS`
    /// makes) and `policy`'s options (`--state-root` ...); its output goes
    /// to `logs/agent-I.log`.
    pub fn start_agents(&mut self, mekha: &Path, tls: &Path, policy: &[&str], logs: &Path) -> Result<()> {
        for i in 0..self.hosts.len() {
            let bundle = tls.join(&self.hosts[i].address);
            self.start_agent(i, mekha, &bundle, policy, logs)?;
        }
        Ok(())
    }

    /// Starts (or starts again, once killed) host `i`'s agent with the TLS
    /// bundle `bundle`, as [`FakeHosts::start_agents`] does; returns once
    /// it listens. Its output is appended to `logs/agent-I.log`. A host
    /// given storage of its own gets a new, empty one.
    pub fn start_agent(&mut self, i: usize, mekha: &Path, bundle: &Path, policy: &[&str], logs: &Path) -> Result<()> {
        let host = &mut self.hosts[i];
        let mut command = match &host.own_storage {
            // `ip netns exec` runs its command in a mount namespace of
            // its own (a slave of the root one): a tmpfs mounted there
            // is seen by the agent and the QEMUs it starts only.
            Some(dir) => {
                let mut c = host.netns.command("sh");
                c.args(["-c", r#"mkdir -p "$0" && mount -t tmpfs -o size=1g mekha-own "$0" && exec "$@""#])
                    .arg(dir)
                    .arg(mekha);
                c
            }
            None => host.netns.command(mekha),
        };
        let log = std::fs::File::options().create(true).append(true).open(logs.join(format!("agent-{i}.log")))?;
        let agent = command
            .args(["agent", "--listen", &format!("{}:{AGENT_PORT}", host.address)])
            .arg("--tls-dir")
            .arg(bundle)
            .args(policy)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mekha agent")?;
        host.agent = Some(agent);
        let deadline = Instant::now() + Duration::from_secs(15);
        let address = format!("{}:{AGENT_PORT}", host.address);
        while std::net::TcpStream::connect(&address).is_err() {
            if Instant::now() > deadline {
                bail!("mekha agent on {address} does not listen");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills host `i`'s agent (SIGKILL) and reaps it; its VMs run on.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut agent) = self.hosts[i].agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    /// Makes host `i` (whose agent is not started yet) and the VMs its
    /// agent starts see `dir` as an empty filesystem of their own, as a
    /// host with a local disk where the others have theirs.
    pub fn give_own_storage(&mut self, i: usize, dir: &Path) {
        self.hosts[i].own_storage = Some(dir.to_owned());
    }

    /// Host `i`'s agent process, once started.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.hosts[i].agent.as_ref().map(Child::id)
    }

    /// `HOST:PORT` of host `i`'s agent.
    pub fn agent_address(&self, i: usize) -> String {
        format!("{}:{AGENT_PORT}", self.hosts[i].address)
    }

    /// `ssh://root@ADDRESS/PATH` of a socket on host `i`.
    pub fn qmp_url(&self, i: usize, socket: &Path) -> PathBuf {
        PathBuf::from(format!("ssh://root@{}{}", self.hosts[i].address, socket.display()))
    }

    fn wait_for_sshd(&self, host: &FakeHost) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut ssh = Command::new("ssh");
            for o in &self.ssh_options {
                ssh.arg("-o").arg(o);
            }
            let ok = ssh
                .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=2"])
                .arg(format!("root@{}", host.address))
                .arg("true")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("sshd at {} does not accept the test's key", host.address);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
