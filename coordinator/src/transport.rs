// SPDX-License-Identifier: GPL-2.0-or-later
//! How the coordinator reaches a VM's QMP monitor: a local socket path;
//! `ssh://[USER@]HOST[:PORT]/PATH` on another host, through OpenSSH's
//! forwarding of the remote Unix socket to a local one;
//! `mekha://HOST[:PORT]/PATH` through that host's `mekha agent`; or
//! `URI#DOMAIN`, a libvirt domain's monitor through libvirt's remote API
//! (`qemu:///system#vm1`, `qemu+ssh://HOST/system#vm1`,
//! `qemu+tls://HOST/system#vm1`; see `libvirt`).
//!
//! ssh does the authentication and the encryption (keys, known hosts,
//! agents: whatever the user's ssh setup says, plus `-o` options given
//! with `--ssh-option`); nothing new listens on the network, and no peer
//! that ssh did not authenticate can reach a QMP monitor. The forwarding
//! lives as long as the [`Tunnel`]. An agent authenticates both ends with
//! the cluster's TLS certificates (see `tls`).
//!
//! Images are written by each VM's QEMU on its own host, at the path the
//! coordinator gives: the checkpoint directory must be the same path on
//! every host (a shared filesystem, as batch clusters have).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::agent::AgentClient;
use crate::qmp::Stream;

/// Where a VM's QMP socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Local(PathBuf),
    Ssh {
        destination: String,
        port: Option<u16>,
        socket: PathBuf,
    },
    /// `address` is the agent's `HOST[:PORT]`.
    Agent {
        address: String,
        socket: PathBuf,
    },
    /// A domain of the libvirt at `uri`.
    Libvirt {
        uri: String,
        domain: String,
    },
}

impl Endpoint {
    /// `ssh://[USER@]HOST[:PORT]/ABSOLUTE/PATH`,
    /// `mekha://HOST[:PORT]/ABSOLUTE/PATH`, `LIBVIRT-URI#DOMAIN`, or a
    /// local path.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        if let Some(libvirt) = parse_libvirt(text) {
            return libvirt;
        }
        if let Some(rest) = text.strip_prefix("mekha://") {
            let bad = || format!("{text}: expected mekha://HOST[:PORT]/ABSOLUTE/PATH/OF/QMP.sock");
            let slash = rest.find('/').ok_or_else(bad)?;
            let (address, socket) = rest.split_at(slash);
            if address.is_empty() || socket.len() < 2 {
                return Err(bad());
            }
            return Ok(Endpoint::Agent { address: address.to_owned(), socket: PathBuf::from(socket) });
        }
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

/// `URI#DOMAIN` for a URI of libvirt's QEMU driver (`qemu:///system`,
/// `qemu+ssh://HOST/system`, `qemu+tls://HOST/system`, ...); `None` for
/// any other text.
fn parse_libvirt(text: &str) -> Option<Result<Endpoint, String>> {
    let (scheme, _) = text.split_once("://")?;
    if scheme != "qemu" && !scheme.starts_with("qemu+") {
        return None;
    }
    Some(match text.rsplit_once('#') {
        Some((uri, domain)) if !domain.is_empty() && !text.contains('\0') => {
            Ok(Endpoint::Libvirt { uri: uri.to_owned(), domain: domain.to_owned() })
        }
        _ => Err(format!(
            "{text}: expected a libvirt URI and a domain name, URI#DOMAIN (e.g. qemu+ssh://node7/system#vm1)"
        )),
    })
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Local(path) => write!(f, "{}", path.display()),
            Endpoint::Ssh { destination, port: Some(p), socket } => {
                write!(f, "ssh://{destination}:{p}{}", socket.display())
            }
            Endpoint::Ssh { destination, port: None, socket } => write!(f, "ssh://{destination}{}", socket.display()),
            Endpoint::Agent { address, socket } => write!(f, "mekha://{address}{}", socket.display()),
            Endpoint::Libvirt { uri, domain } => write!(f, "{uri}#{domain}"),
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

/// What remote endpoints need: ssh's options, the TLS directory for agents.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    pub ssh_options: Vec<String>,
    /// Default: `tls::default_dir()`.
    pub tls_dir: Option<PathBuf>,
}

impl Reach {
    pub fn tls_dir(&self) -> PathBuf {
        self.tls_dir.clone().unwrap_or_else(crate::tls::default_dir)
    }

    /// A client for the agent at `address`, with this reach's certificates.
    pub fn agent(&self, address: &str) -> Result<AgentClient, String> {
        AgentClient::new(address, crate::tls::client_config(&self.tls_dir())?)
    }
}

/// A byte stream to the QMP monitor at `endpoint`, with the tunnel that
/// carries it when ssh does.
pub async fn connect(endpoint: &Endpoint, reach: &Reach) -> Result<(Box<dyn Stream>, Option<Tunnel>), String> {
    let unix = |path: PathBuf| async move {
        UnixStream::connect(&path).await.map_err(|e| format!("cannot connect to QMP socket {}: {e}", path.display()))
    };
    match endpoint {
        Endpoint::Local(path) => Ok((Box::new(unix(path.clone()).await?), None)),
        Endpoint::Agent { address, socket } => Ok((reach.agent(address)?.open_qmp(socket).await?, None)),
        #[cfg(feature = "libvirt")]
        Endpoint::Libvirt { uri, domain } => Ok((crate::libvirt::open(uri, domain).await?, None)),
        #[cfg(not(feature = "libvirt"))]
        Endpoint::Libvirt { .. } => {
            Err(format!("{endpoint}: this mekha was built without libvirt (feature \"libvirt\")"))
        }
        Endpoint::Ssh { .. } => {
            let (stream, tunnel) = open_tunnel(endpoint, &reach.ssh_options).await?;
            Ok((Box::new(stream), Some(tunnel)))
        }
    }
}

/// ssh forwarding `endpoint`'s socket to a local one, and a connection
/// through it.
async fn open_tunnel(endpoint: &Endpoint, ssh_options: &[String]) -> Result<(UnixStream, Tunnel), String> {
    let Endpoint::Ssh { destination, port, socket } = endpoint else { unreachable!("an ssh endpoint") };
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
        // ssh binds the socket before it listens: refused until then.
        if local.exists() {
            match UnixStream::connect(&local).await {
                Ok(stream) => return Ok((stream, Tunnel { child, dir })),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(format!("cannot connect to QMP socket {}: {e}", local.display())),
            }
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
        assert_eq!(
            Endpoint::parse("mekha://node7:7441/run/vm1.qmp").unwrap(),
            Endpoint::Agent { address: "node7:7441".into(), socket: "/run/vm1.qmp".into() }
        );
        assert_eq!(Endpoint::parse("mekha://node7/a.qmp").unwrap().to_string(), "mekha://node7/a.qmp");
        for bad in ["mekha://node7", "mekha:///x", "mekha://node7/"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let e = Endpoint::parse("qemu+ssh://root@node7/system?keyfile=/k#vm1").unwrap();
        assert_eq!(
            e,
            Endpoint::Libvirt { uri: "qemu+ssh://root@node7/system?keyfile=/k".into(), domain: "vm1".into() }
        );
        assert_eq!(e.to_string(), "qemu+ssh://root@node7/system?keyfile=/k#vm1");
        assert_eq!(
            Endpoint::parse("qemu:///system#a#b").unwrap(),
            Endpoint::Libvirt { uri: "qemu:///system#a".into(), domain: "b".into() }
        );
        for bad in ["qemu:///system", "qemu+tls://node7/system#"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        // Not libvirt: a socket whose file name has a '#'.
        assert_eq!(Endpoint::parse("/run/a#b.qmp").unwrap(), Endpoint::Local("/run/a#b.qmp".into()));
    }
}
