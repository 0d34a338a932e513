// SPDX-License-Identifier: GPL-2.0-or-later
//! How the coordinator reaches a VM's QMP socket: a local path, or
//! `ssh://[USER@]HOST[:PORT]/PATH` on another host, through OpenSSH's
//! forwarding of the remote Unix socket to a local one.
//!
//! ssh does the authentication and the encryption (keys, known hosts,
//! agents: whatever the user's ssh setup says, plus `-o` options given
//! with `--ssh-option`); nothing new listens on the network, and no peer
//! that ssh did not authenticate can reach a QMP monitor. The forwarding
//! lives as long as the [`Tunnel`].
//!
//! Images are written by each VM's QEMU on its own host, at the path the
//! coordinator gives: the checkpoint directory must be the same path on
//! every host (a shared filesystem, as batch clusters have).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Where a VM's QMP socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Local(PathBuf),
    Ssh { destination: String, port: Option<u16>, socket: PathBuf },
}

impl Endpoint {
    /// `ssh://[USER@]HOST[:PORT]/ABSOLUTE/PATH`, or a local path.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let Some(rest) = text.strip_prefix("ssh://") else { return Ok(Endpoint::Local(PathBuf::from(text))) };
        let bad = || format!("{text}: expected ssh://[USER@]HOST[:PORT]/ABSOLUTE/PATH/OF/QMP.sock");
        let slash = rest.find('/').ok_or_else(bad)?;
        let (authority, socket) = rest.split_at(slash);
        let (destination, port) = match authority.rsplit_once(':') {
            // An IPv6 literal in brackets keeps its colons.
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                (host.to_owned(), Some(port.parse::<u16>().map_err(|_| bad())?))
            }
            _ => (authority.to_owned(), None),
        };
        if destination.is_empty() || socket.len() < 2 {
            return Err(bad());
        }
        Ok(Endpoint::Ssh { destination, port, socket: PathBuf::from(socket) })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Local(path) => write!(f, "{}", path.display()),
            Endpoint::Ssh { destination, port: Some(p), socket } => {
                write!(f, "ssh://{destination}:{p}{}", socket.display())
            }
            Endpoint::Ssh { destination, port: None, socket } => write!(f, "ssh://{destination}{}", socket.display()),
        }
    }
}

/// An ssh process forwarding a remote QMP socket to a local one; killed
/// (and its local socket removed) on drop.
pub struct Tunnel {
    child: Child,
    dir: tempfile::TempDir,
}

impl Tunnel {
    pub fn local_socket(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// How long ssh may take to authenticate and set up the forwarding.
const SSH_SETUP: Duration = Duration::from_secs(20);

/// The local socket to connect to for `endpoint`, with the tunnel that
/// carries it when the endpoint is remote.
pub async fn open(endpoint: &Endpoint, ssh_options: &[String]) -> Result<(PathBuf, Option<Tunnel>), String> {
    let (destination, port, socket) = match endpoint {
        Endpoint::Local(path) => return Ok((path.clone(), None)),
        Endpoint::Ssh { destination, port, socket } => (destination, port, socket),
    };
    let dir = tempfile::Builder::new().prefix("mekha-ssh-").tempdir().map_err(|e| format!("{endpoint}: {e}"))?;
    let local = dir.path().join("qmp.sock");
    let mut cmd = Command::new("ssh");
    cmd.args(["-N", "-T", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes"]);
    for option in ssh_options {
        cmd.arg("-o").arg(option);
    }
    if let Some(port) = port {
        cmd.arg("-p").arg(port.to_string());
    }
    cmd.arg("-L").arg(format!("{}:{}", local.display(), socket.display())).arg("--").arg(destination);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{endpoint}: running ssh: {e}"))?;
    let started = Instant::now();
    loop {
        if local.exists() {
            return Ok((local, Some(Tunnel { child, dir })));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut message = String::new();
            if let Some(mut err) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = err.read_to_string(&mut message).await;
            }
            return Err(format!("{endpoint}: ssh exited ({status}): {}", message.trim()));
        }
        if started.elapsed() > SSH_SETUP {
            return Err(format!("{endpoint}: ssh set up no forwarding within {} s", SSH_SETUP.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(Endpoint::parse("/run/vm1.qmp").unwrap(), Endpoint::Local("/run/vm1.qmp".into()));
        assert_eq!(
            Endpoint::parse("ssh://root@node7:2222/run/vm1.qmp").unwrap(),
            Endpoint::Ssh { destination: "root@node7".into(), port: Some(2222), socket: "/run/vm1.qmp".into() }
        );
        assert_eq!(
            Endpoint::parse("ssh://node7/run/vm1.qmp").unwrap(),
            Endpoint::Ssh { destination: "node7".into(), port: None, socket: "/run/vm1.qmp".into() }
        );
        for bad in ["ssh://node7", "ssh:///run/x", "ssh://node7:x/run/x", "ssh://node7/"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let e = Endpoint::parse("ssh://u@h:22/a/b.sock").unwrap();
        assert_eq!(e.to_string(), "ssh://u@h:22/a/b.sock");
    }
}
