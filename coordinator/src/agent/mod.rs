// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha agent`: the thin per-host helper for what neither ssh to a QMP
//! socket nor a manager's own transport covers — launching a spec's VMs on
//! its host, reporting the host's storage — over mutually authenticated TLS
//! (see `tls`). It also forwards QMP sockets, so the coordinator needs
//! nothing else to reach that host's VMs.
//!
//! Protocol: the coordinator opens a TLS connection and sends one request,
//! a JSON line; the agent answers with one JSON line, `{"ok": VALUE}` or
//! `{"error": MESSAGE}`. After a successful `qmp` request the connection
//! carries the monitor's bytes both ways until either side closes.
//! The agent holds no state of its own: its VMs' pid files, sockets and
//! logs live in the spec's state directory for the host, as with `mekha
//! up` on one host, and a VM outlives the agent.

mod client;
mod server;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use client::{AgentClient, AgentError};
pub use server::serve;

use crate::spec::Spec;

/// The port an agent listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7441;

/// What the coordinator asks an agent. Specs are whole, already narrowed
/// to the agent's host (`Spec::for_host`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// `storage::probe` of a checkpoint directory.
    Storage { dir: PathBuf },
    /// Starts the spec's VMs (`-incoming defer` if `incoming`).
    Launch { spec: Box<Spec>, incoming: bool },
    /// Quits the spec's VMs (killed after `grace_ms`); with `network`,
    /// also removes the network `launch` made.
    Stop { spec: Box<Spec>, grace_ms: u64, network: bool },
    /// Every VM's pid, or null when it does not run.
    Status { spec: Box<Spec> },
    /// Turns the connection into the QMP socket's byte stream.
    Qmp { socket: PathBuf },
}

/// An agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(String),
}

/// Longest request line an agent reads (a spec is a few KiB).
const MAX_LINE: usize = 1 << 20;
