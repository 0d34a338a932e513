// SPDX-License-Identifier: GPL-2.0-or-later
//! The coordinator's side of the agent protocol.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{Reply, Request, DEFAULT_PORT, MAX_LINE};
use crate::qmp::{json_line, Stream};

/// Why an agent request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No authenticated exchange with the agent (down, unreachable,
    /// refused our certificate or presented a wrong one).
    #[error("agent {address}: {message}")]
    Unreachable { address: String, message: String },
    /// The agent answered with an error.
    #[error("agent {address}: {message}")]
    Failed { address: String, message: String },
}

impl AgentError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, AgentError::Unreachable { .. })
    }
}

impl From<AgentError> for String {
    fn from(e: AgentError) -> String {
        e.to_string()
    }
}

/// How long connecting and authenticating may take.
const CONNECT: Duration = Duration::from_secs(10);

/// One agent, by `HOST[:PORT]`.
#[derive(Clone)]
pub struct AgentClient {
    address: String,
    host: String,
    port: u16,
    config: Arc<ClientConfig>,
}

impl AgentClient {
    /// `HOST[:PORT]` (`[V6ADDR]:PORT` for IPv6); the agent's certificate
    /// must name HOST.
    pub fn new(address: &str, config: Arc<ClientConfig>) -> Result<AgentClient, String> {
        let bad = || format!("agent address {address:?}: expected HOST[:PORT]");
        let (host, port) = match address.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || (h.starts_with('[') && h.ends_with(']')) => {
                (h.trim_start_matches('[').trim_end_matches(']'), p.parse::<u16>().map_err(|_| bad())?)
            }
            _ if address.contains(':') && !address.starts_with('[') => (address, DEFAULT_PORT),
            _ => (address.trim_start_matches('[').trim_end_matches(']'), DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(AgentClient { address: address.to_owned(), host: host.to_owned(), port, config })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn unreachable(&self, message: impl std::fmt::Display) -> AgentError {
        AgentError::Unreachable { address: self.address.clone(), message: message.to_string() }
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, AgentError> {
        let name = ServerName::try_from(self.host.clone()).map_err(|e| self.unreachable(e))?;
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            TlsConnector::from(self.config.clone()).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))
        };
        tokio::time::timeout(CONNECT, connect)
            .await
            .map_err(|_| self.unreachable(format!("no answer within {} s", CONNECT.as_secs())))?
            .map_err(|e| self.unreachable(e))
    }

    /// Sends `request`; the reply's line is read, and what follows it stays
    /// in the returned reader.
    async fn exchange(&self, request: &Request) -> Result<(Value, BufReader<TlsStream<TcpStream>>), AgentError> {
        let mut tls = self.connect().await?;
        let line = json_line(request);
        let failed = |e: std::io::Error| {
            // TLS 1.3: the agent judges our certificate after the
            // handshake, so its refusal arrives as an alert on the read.
            let hint = if e.to_string().contains("alert") {
                " (the agent refused this client certificate: is it signed by the agent's CA, \
                 not revoked, not expired?)"
            } else {
                ""
            };
            self.unreachable(format!("{e}{hint}"))
        };
        tls.write_all(&line).await.map_err(failed)?;
        tls.flush().await.map_err(failed)?;
        let mut reader = BufReader::new(tls);
        let mut answer = Vec::new();
        (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut answer).await.map_err(failed)?;
        if answer.is_empty() {
            // The agent closed: most often it refused our certificate.
            return Err(self.unreachable("closed the connection (does it accept this client certificate?)"));
        }
        match Reply::from_line(&answer) {
            Ok(Reply::Ok(value)) => Ok((value, reader)),
            Ok(Reply::Error(message)) => Err(AgentError::Failed { address: self.address.clone(), message }),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    /// Runs one request; `{"ok": VALUE}` gives VALUE.
    pub async fn call(&self, request: &Request) -> Result<Value, AgentError> {
        Ok(self.exchange(request).await?.0)
    }

    /// A stream to the QMP socket at `socket` on the agent's host.
    pub async fn open_qmp(&self, socket: &Path) -> Result<Box<dyn Stream>, AgentError> {
        let (_, reader) = self.exchange(&Request::Qmp { socket: socket.to_owned() }).await?;
        // The monitor's greeting may already sit in the reader's buffer.
        Ok(Box::new(reader))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        crate::tls::ca::init(&dir.path().join("ca"), &tls, &[], crate::tls::DEFAULT_DAYS).unwrap();
        let config = crate::tls::client_config(&tls).unwrap();
        let parse = |a: &str| AgentClient::new(a, config.clone()).map(|c| (c.host, c.port));
        assert_eq!(parse("node7").unwrap(), ("node7".into(), DEFAULT_PORT));
        assert_eq!(parse("node7:99").unwrap(), ("node7".into(), 99));
        assert_eq!(parse("10.0.0.1:99").unwrap(), ("10.0.0.1".into(), 99));
        assert_eq!(parse("[fd00::1]:99").unwrap(), ("fd00::1".into(), 99));
        assert_eq!(parse("fd00::1").unwrap(), ("fd00::1".into(), DEFAULT_PORT));
        assert!(parse("node7:x").is_err() && parse(":1").is_err());
    }
}
