// SPDX-License-Identifier: GPL-2.0-or-later
//! An asynchronous QMP client.
//!
//! One task reads the socket: replies are routed to their caller by the
//! command's `id`, events are broadcast to every subscriber. Commands may be
//! issued concurrently from several tasks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mekha_ckpt_core::session::{self, Command};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, Mutex as AsyncMutex};

pub use mekha_ckpt_core::session::PREFIX as MEKHA_PREFIX;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("QMP socket {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("QMP connection to {path} closed")]
    Closed { path: PathBuf },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("QMP command {command} timed out after {timeout:?}")]
    Timeout { command: String, timeout: Duration },
}

impl QmpError {
    /// True when QEMU does not know the command (e.g. a QEMU without mekha).
    pub fn is_command_not_found(&self) -> bool {
        matches!(self, QmpError::Command { class, .. } if class == "CommandNotFound")
    }
}

/// An asynchronous event from QEMU.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub event: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub timestamp: Value,
}

impl Event {
    /// The data of mekha event `E`, if this is one.
    pub fn mekha<E: session::Event>(&self) -> Option<E::Data> {
        (self.event == E::NAME).then(|| serde_json::from_value(self.data.clone()).ok()).flatten()
    }

    /// The data of stock event `name` as `T`, if this is one.
    pub fn data_as<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        (self.event == name).then(|| serde_json::from_value(self.data.clone()).ok()).flatten()
    }
}

/// `value` as one line of JSON, as QMP (and the agent protocol) send it.
pub fn json_line(value: &impl Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).expect("JSON encodes");
    line.push(b'\n');
    line
}

/// The commands waiting for their reply; `None` once the connection
/// closed, so that a command sent after that fails at once rather than
/// wait out its timeout for a reply that cannot come (a peer gone, such
/// as an agent or a tunnel, may still take writes).
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value, (String, String)>>>>>>;

/// A byte stream a QMP monitor speaks over: its Unix socket, or a
/// forwarding of it (see `transport`).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

type BoxedStream = Box<dyn Stream>;

/// A QMP connection that has completed capability negotiation.
pub struct Qmp {
    path: PathBuf,
    writer: AsyncMutex<WriteHalf<BoxedStream>>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<Event>,
    greeting: Value,
    timeout: Duration,
    /// The task reading the monitor: aborted on drop, which closes the
    /// connection (QEMU serves one client per monitor at a time).
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to a QMP socket and negotiates capabilities.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Qmp, QmpError> {
        let path = path.as_ref().to_path_buf();
        let stream =
            UnixStream::connect(&path).await.map_err(|source| QmpError::Connect { path: path.clone(), source })?;
        Qmp::over(Box::new(stream), path).await
    }

    /// Speaks QMP over `stream`, a monitor's socket or a forwarding of
    /// it; `path` names it in errors.
    pub async fn over(stream: Box<dyn Stream>, path: PathBuf) -> Result<Qmp, QmpError> {
        let (read, write) = tokio::io::split(stream);
        let mut lines = BufReader::new(read).lines();
        let protocol = |message: String| QmpError::Protocol { path: path.clone(), message };

        let greeting_line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| protocol("no QMP greeting within 10 s (is another client holding this monitor?)".into()))?
            .map_err(|e| protocol(e.to_string()))?
            .ok_or_else(|| protocol("closed before the greeting".into()))?;
        let greeting: Value =
            serde_json::from_str(&greeting_line).map_err(|e| protocol(format!("bad greeting: {e}")))?;
        if greeting.get("QMP").is_none() {
            return Err(protocol(format!("not a QMP monitor (greeting: {greeting_line})")));
        }

        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (events, _) = broadcast::channel(1024);
        let reader = tokio::spawn(read_loop(lines, pending.clone(), events.clone()));
        let qmp = Qmp {
            path,
            writer: AsyncMutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events,
            greeting,
            timeout: Duration::from_secs(60),
            reader,
        };
        qmp.execute("qmp_capabilities", Value::Null).await?;
        Ok(qmp)
    }

    /// The socket this connection talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// QEMU's greeting (`{"QMP": {"version": ..., "capabilities": ...}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs a command; `args` is an object or `Value::Null` for none.
    pub async fn execute(&self, command: &str, args: Value) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = json!({ "execute": command, "id": id });
        if !args.is_null() {
            request["arguments"] = args;
        }
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().unwrap().as_mut() {
            Some(pending) => pending.insert(id, tx),
            None => return Err(QmpError::Closed { path: self.path.clone() }),
        };
        let sent = self.writer.lock().await.write_all(&json_line(&request)).await;
        if sent.is_err() {
            self.pending.lock().unwrap().as_mut().map(|p| p.remove(&id));
            return Err(QmpError::Closed { path: self.path.clone() });
        }
        let reply = tokio::time::timeout(self.timeout, rx).await.map_err(|_| {
            self.pending.lock().unwrap().as_mut().map(|p| p.remove(&id));
            QmpError::Timeout { command: command.into(), timeout: self.timeout }
        })?;
        match reply {
            Ok(Ok(value)) => Ok(value),
            Ok(Err((class, desc))) => Err(QmpError::Command { command: command.into(), class, desc }),
            Err(_) => Err(QmpError::Closed { path: self.path.clone() }),
        }
    }

    /// Runs one of mekha's commands, named without the downstream prefix
    /// (callers use [`Qmp::call`], typed).
    async fn execute_mekha(&self, command: &str, args: Value) -> Result<Value, QmpError> {
        self.execute(&format!("{MEKHA_PREFIX}{command}"), args).await
    }

    /// Runs mekha command `C` with its contract's arguments and reply.
    pub async fn call<C: Command>(&self, args: &C::Args) -> Result<C::Reply, QmpError> {
        let args = serde_json::to_value(args).expect("arguments encode");
        let reply = self.execute_mekha(C::NAME, args).await?;
        self.reply_as(C::NAME, reply)
    }

    /// Runs a stock QEMU command and reads its reply as `T`.
    pub async fn execute_as<T: DeserializeOwned>(&self, command: &str, args: Value) -> Result<T, QmpError> {
        let reply = self.execute(command, args).await?;
        self.reply_as(command, reply)
    }

    fn reply_as<T: DeserializeOwned>(&self, command: &str, reply: Value) -> Result<T, QmpError> {
        serde_json::from_value(reply).map_err(|e| QmpError::Protocol {
            path: self.path.clone(),
            message: format!("unexpected reply to {command}: {e}"),
        })
    }

    /// `query-status`: whether the VM runs, and its run state.
    pub async fn status(&self) -> Result<StatusInfo, QmpError> {
        self.execute_as("query-status", Value::Null).await
    }
}

/// The reply of stock QEMU's `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    pub running: bool,
    /// QEMU's run state: `running`, `paused`, `inmigrate`, ...
    pub status: String,
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<ReadHalf<BoxedStream>>>,
    pending: Pending,
    events: broadcast::Sender<Event>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else { continue };
        if msg.get("event").is_some() {
            if let Ok(event) = serde_json::from_value::<Event>(msg) {
                let _ = events.send(event);
            }
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else { continue };
        let Some(waiter) = pending.lock().unwrap().as_mut().and_then(|p| p.remove(&id)) else { continue };
        let outcome = if let Some(ret) = msg.get("return") {
            Ok(ret.clone())
        } else {
            let err = &msg["error"];
            Err((
                err["class"].as_str().unwrap_or("GenericError").to_owned(),
                err["desc"].as_str().unwrap_or("(no description)").to_owned(),
            ))
        };
        let _ = waiter.send(outcome);
    }
    // Dropping the senders wakes every waiter with Closed; later commands
    // fail at once.
    pending.lock().unwrap().take();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that has closed its side but still takes writes (an agent
    /// or a tunnel gone): a command sent afterwards fails at once.
    #[tokio::test]
    async fn a_command_after_the_peer_closed_fails_at_once() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (read, mut write) = tokio::io::split(theirs);
        let monitor = tokio::spawn(async move {
            write.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").await.unwrap();
            let mut lines = BufReader::new(read).lines();
            lines.next_line().await.unwrap();
            write.write_all(b"{\"return\": {}, \"id\": 1}\n").await.unwrap();
            // Ends its side; keeps reading what comes.
            write.shutdown().await.unwrap();
            while let Ok(Some(_)) = lines.next_line().await {}
        });
        let qmp = Qmp::over(Box::new(ours), "peer".into()).await.unwrap();
        while !qmp.reader.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let asked = tokio::time::timeout(Duration::from_secs(5), qmp.execute("query-status", Value::Null)).await;
        assert!(matches!(asked, Ok(Err(QmpError::Closed { .. }))), "{asked:?}");
        drop(qmp);
        monitor.await.unwrap();
    }
}
