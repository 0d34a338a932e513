// SPDX-License-Identifier: GPL-2.0-or-later
//! The agent's side: accept, authenticate, authorize, run one request per
//! connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mekha_ckpt_core::store::{Store, StoreError};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::policy::{self, Policy};
use super::{Reply, Request, MAX_LINE};
use crate::qmp::json_line;
use crate::{launch, storage, tls};

/// How long a peer may take to authenticate and send its request.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// How often a running agent looks at its certificate's expiry.
const EXPIRY_CHECK: Duration = Duration::from_secs(6 * 3600);

/// The QEMUs this agent started: reaped when they exit (a guest powered
/// off, a VM killed), so that no zombie stays behind for the agent's life.
type Children = Arc<Mutex<Vec<Child>>>;

/// The TLS setup, read again when a file of the TLS directory changes: a
/// CRL or a renewed certificate copied there applies to the next
/// connection, without a restart that would drop forwarded monitors.
struct Tls {
    dir: PathBuf,
    current: Mutex<(Vec<Option<SystemTime>>, TlsAcceptor)>,
}

impl Tls {
    fn load(dir: &Path) -> Result<Tls, String> {
        let stamp = Tls::stamp(dir);
        let acceptor = TlsAcceptor::from(tls::server_config(dir)?);
        Ok(Tls { dir: dir.to_owned(), current: Mutex::new((stamp, acceptor)) })
    }

    fn stamp(dir: &Path) -> Vec<Option<SystemTime>> {
        tls::server_files(dir).iter().map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok()).collect()
    }

    /// The acceptor for a new connection. A directory that no longer
    /// loads (a file half copied) keeps the last good setup until it does.
    fn acceptor(&self) -> TlsAcceptor {
        let stamp = Tls::stamp(&self.dir);
        let mut current = self.current.lock().unwrap();
        if stamp != current.0 {
            match tls::server_config(&self.dir) {
                Ok(config) => {
                    eprintln!("mekha agent: reloaded {}", self.dir.display());
                    *current = (stamp, TlsAcceptor::from(config));
                }
                Err(e) => eprintln!("mekha agent: keeping the TLS setup loaded before: {e}"),
            }
        }
        current.1.clone()
    }
}

/// Listens on `listen` until the process ends; TLS files from `tls_dir`,
/// requests authorized by `policy`.
pub async fn serve(listen: SocketAddr, tls_dir: &Path, policy: Policy) -> Result<(), String> {
    let tls = Arc::new(Tls::load(tls_dir)?);
    let policy = Arc::new(policy);
    let children: Children = Arc::default();
    let reaped = children.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            reaped.lock().unwrap().retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        }
    });
    let certificate = tls_dir.join(tls::AGENT);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EXPIRY_CHECK).await;
            match tls::Identity::from_pem_file(&certificate) {
                Ok(id) if id.lifetime(tls::cert::now()) == tls::Lifetime::Expired => eprintln!(
                    "mekha agent: certificate {} ({id}) expired on {}: coordinators refuse this agent",
                    certificate.display(),
                    id.expiry()
                ),
                Ok(id) if id.lifetime(tls::cert::now()) == tls::Lifetime::ExpiresSoon => {
                    eprintln!("mekha agent: warning: {}", tls::expiry_warning(&certificate, &id))
                }
                Ok(_) => {}
                Err(e) => eprintln!("mekha agent: {e}"),
            }
        }
    });
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("listening on {listen}: {e}"))?;
    eprintln!("mekha agent: listening on {listen} (mutual TLS, {}); {}", tls_dir.display(), policy.describe());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                eprintln!("mekha agent: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = tls.acceptor();
        let children = children.clone();
        let policy = policy.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(acceptor, tcp, peer, &policy, children).await {
                eprintln!("mekha agent: {peer}: {e}");
            }
        });
    }
}

async fn handle(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    policy: &Policy,
    children: Children,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    // A peer without a certificate the CA signed, or with one it revoked,
    // ends here.
    let tls = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp))
        .await
        .map_err(|_| "no TLS handshake within 10 s".to_owned())?
        .map_err(|e| format!("refused: {e}"))?;
    let client = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(der) => tls::Identity::from_der(der)?,
        None => return Err("no client certificate".into()),
    };
    let who = format!("{peer} {client}");
    let mut stream = BufReader::new(tls);
    let mut line = Vec::new();
    let read = tokio::time::timeout(HANDSHAKE, (&mut stream).take(MAX_LINE as u64).read_until(b'\n', &mut line))
        .await
        .map_err(|_| format!("{who}: no request within 10 s"))?;
    read.map_err(|e| format!("{who}: {e}"))?;
    let request = match Request::from_line(&line) {
        Ok(r) => r,
        Err(e) => return answer(&mut stream, Reply::Error(e)).await,
    };
    if let Err(refusal) = policy.authorize(&client, &request) {
        eprintln!("mekha agent: {peer}: {refusal}");
        return answer(&mut stream, Reply::Error(refusal)).await;
    }
    eprintln!("mekha agent: {who}: {}", describe(&request));
    let operation = policy::operation(&request);
    match request {
        Request::Qmp { socket } => forward_qmp(stream, &socket).await.map_err(|e| format!("{who}: {e}")),
        request => {
            let reply = match run(request, &children).await {
                Ok(value) => Reply::Ok(value),
                Err(message) => {
                    eprintln!("mekha agent: {who}: {operation} failed: {message}");
                    Reply::Error(message)
                }
            };
            answer(&mut stream, reply).await
        }
    }
}

fn describe(request: &Request) -> String {
    match request {
        Request::Storage { dir } => format!("storage {}", dir.display()),
        Request::Launch { spec, incoming } => format!(
            "launch {} ({}){}",
            spec.name,
            spec.vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", "),
            if *incoming { ", incoming" } else { "" }
        ),
        Request::Stop { spec, .. } => format!("stop {}", spec.name),
        Request::Status { spec } => format!("status {}", spec.name),
        Request::Qmp { socket } => format!("qmp {}", socket.display()),
        Request::PartBegin { dir, generation, .. } => format!("begin part {generation} in {}", dir.display()),
        Request::PartSeal { dir, generation, .. } => format!("seal part {generation} in {}", dir.display()),
        Request::PartAbort { dir, generation } => format!("abort part {generation} in {}", dir.display()),
        Request::PartCheck { dir, generation, .. } => format!("check part {generation} in {}", dir.display()),
    }
}

async fn answer(stream: &mut BufReader<TlsStream<TcpStream>>, reply: Reply) -> Result<(), String> {
    let line = json_line(&reply);
    let stream = stream.get_mut();
    stream.write_all(&line).await.map_err(|e| e.to_string())?;
    stream.shutdown().await.map_err(|e| e.to_string())
}

/// Runs a request [`Request::from_line`] accepted.
async fn run(request: Request, children: &Children) -> Result<Value, String> {
    match request {
        Request::Storage { dir } => Ok(json!(storage::probe(&dir)?)),
        Request::Launch { spec, incoming } => {
            let started = launch::start_all(&spec, incoming).await?;
            children.lock().unwrap().extend(started);
            Ok(pids(&spec))
        }
        Request::Stop { spec, grace_ms, network } => {
            launch::stop_all(&spec, Duration::from_millis(grace_ms)).await;
            if network {
                launch::remove_network(&spec);
            }
            Ok(Value::Null)
        }
        Request::Status { spec } => Ok(pids(&spec)),
        Request::Qmp { .. } => unreachable!("forwarded, not run"),
        part => tokio::task::spawn_blocking(move || run_part(part)).await.map_err(|e| e.to_string())?,
    }
}

/// The store operations on this host's part of a checkpoint (they sync
/// files: off the reactor).
fn run_part(request: Request) -> Result<Value, String> {
    let text = |e: StoreError| e.to_string();
    match request {
        Request::PartBegin { dir, generation, keep, committer, cluster } => {
            Store::open(&dir).and_then(|s| s.begin_part(generation, &keep, &committer, &cluster)).map_err(text)?;
            Ok(Value::Null)
        }
        Request::PartSeal { dir, generation, vms } => {
            let sealed = Store::open_existing(&dir).and_then(|s| s.seal_part(generation, &vms)).map_err(text)?;
            Ok(json!(sealed))
        }
        Request::PartAbort { dir, generation } => {
            Store::open_existing(&dir).and_then(|s| s.abort_part(generation)).map_err(text)?;
            Ok(Value::Null)
        }
        Request::PartCheck { dir, generation, vms } => {
            let store = Store::open_existing(&dir).map_err(text)?;
            vms.iter().try_for_each(|vm| store.check_image(generation, vm)).map_err(text)?;
            Ok(Value::Null)
        }
        other => Err(format!("not a part request: {}", describe(&other))),
    }
}

fn pids(spec: &crate::spec::Spec) -> Value {
    spec.vms.iter().map(|vm| (vm.name.clone(), json!(launch::running_pid(spec, &vm.name)))).collect()
}

/// Connects to a local QMP socket and joins it to the connection. Only a
/// socket that greets as a QMP monitor is forwarded: the agent is no
/// general gateway to the host's Unix sockets.
async fn forward_qmp(mut stream: BufReader<TlsStream<TcpStream>>, socket: &Path) -> Result<(), String> {
    let unix = match UnixStream::connect(socket).await {
        Ok(u) => u,
        Err(e) => {
            let message = format!("cannot connect to QMP socket {}: {e}", socket.display());
            return answer(&mut stream, Reply::Error(message)).await;
        }
    };
    let mut monitor = BufReader::new(unix);
    let mut greeting = Vec::new();
    let got = tokio::time::timeout(HANDSHAKE, (&mut monitor).take(64 << 10).read_until(b'\n', &mut greeting)).await;
    let is_qmp = serde_json::from_slice::<Value>(&greeting).is_ok_and(|g| g.get("QMP").is_some());
    if !matches!(got, Ok(Ok(n)) if n > 0) || !is_qmp {
        let message =
            format!("{} is not a QMP monitor, or another client holds it (no greeting within 10 s)", socket.display());
        return answer(&mut stream, Reply::Error(message)).await;
    }
    let mut line = json_line(&Reply::Ok(Value::Null));
    line.extend_from_slice(&greeting);
    let tls = stream.get_mut();
    tls.write_all(&line).await.map_err(|e| e.to_string())?;
    // Whatever either side buffered beyond its first line goes on first.
    let pending_tls = stream.buffer().to_vec();
    let pending_monitor = monitor.buffer().to_vec();
    let mut tls = stream.into_inner();
    let mut unix = monitor.into_inner();
    unix.write_all(&pending_tls).await.map_err(|e| e.to_string())?;
    tls.write_all(&pending_monitor).await.map_err(|e| e.to_string())?;
    // Ends when either side closes: a coordinator that dies drops its
    // monitor connection, as if it had been local.
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut unix).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;

    #[test]
    fn a_spec_whose_names_leave_the_state_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "name = \"job\"\ncheckpoint_dir = {:?}\nstate_dir = {:?}\n[[vm]]\nname = \"node0\"\nargs = []\n",
            dir.path().join("ckpt"),
            dir.path().join("state")
        );
        let path = dir.path().join("job.toml");
        std::fs::write(&path, text).unwrap();
        let mut spec = Spec::load(&path).unwrap();
        // What a client could send that no spec file would pass.
        spec.vms[0].name = "../../../etc/cron.d/x".into();
        for request in [
            Request::Launch { spec: Box::new(spec.clone()), incoming: false },
            Request::Stop { spec: Box::new(spec.clone()), grace_ms: 0, network: false },
            Request::Status { spec: Box::new(spec.clone()) },
        ] {
            let e = Request::from_line(&json_line(&request)).unwrap_err();
            assert!(e.contains("VM name"), "{e}");
        }
        assert!(!dir.path().join("state").exists(), "something was created");
    }
}
