// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha agent`: the thin per-host helper for what neither ssh to a QMP
//! socket nor a manager's own transport covers — launching a spec's VMs on
//! its host, reporting the host's storage, keeping its part of a cluster
//! checkpoint when it does not share the checkpoint directory (see
//! `mekha_ckpt_core::store::part`) — over mutually authenticated TLS
//! (see `tls`). It also forwards QMP sockets, so the coordinator needs
//! nothing else to reach that host's VMs.
//!
//! Each request is authorized before it runs ([`policy`]): the client
//! certificate's role bounds the operations (monitor reads, operator
//! checkpoints and restores, admin launches and stops), the agent's
//! roots bound the paths, and its `--qemu` list the binaries it launches.
//! A refusal names the operation, the client (name, serial, role) and
//! why, in the reply and in the agent's log.
//!
//! Protocol: the coordinator opens a TLS connection and sends one request,
//! a JSON line; the agent answers with one JSON line, `{"ok": VALUE}` or
//! `{"error": MESSAGE}`. After a successful `qmp` request the connection
//! carries the monitor's bytes both ways until either side closes.
//! The agent holds no state of its own: its VMs' pid files, sockets and
//! logs live in the spec's state directory for the host, as with `mekha
//! up` on one host, and a VM outlives the agent.

mod client;
pub mod policy;
mod server;

use std::path::PathBuf;

use mekha_ckpt_core::store::ManifestVm;
use serde::{Deserialize, Serialize};

pub use client::{AgentClient, AgentError};
pub use policy::Policy;
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
    /// Starts this host's part of checkpoint generation `generation` in
    /// `dir`, keeping of the earlier ones only those in `keep`, for the
    /// checkpoint directory with id `cluster` on host `committer`.
    PartBegin { dir: PathBuf, generation: u64, keep: Vec<u64>, committer: String, cluster: String },
    /// Seals this host's part: answers the manifest entries of `vms`.
    PartSeal { dir: PathBuf, generation: u64, vms: Vec<String> },
    /// Drops this host's unfinished part.
    PartAbort { dir: PathBuf, generation: u64 },
    /// Checks that the images of `vms` kept here are the committed ones.
    PartCheck { dir: PathBuf, generation: u64, vms: Vec<ManifestVm> },
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

impl Request {
    /// A request line as the agent reads it: JSON, and every spec in it
    /// checked as a spec file is, since its names become file names (VM
    /// logs, pid files) and options of root's QEMUs. Err says what is wrong.
    pub fn from_line(line: &[u8]) -> Result<Request, String> {
        let request: Request = serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))?;
        if let Request::Launch { spec, .. } | Request::Stop { spec, .. } | Request::Status { spec } = &request {
            spec.check().map_err(|e| format!("spec {}: {e}", spec.name))?;
        }
        Ok(request)
    }
}

impl Reply {
    /// A reply line as the client reads it.
    pub fn from_line(line: &[u8]) -> Result<Reply, String> {
        serde_json::from_slice(line).map_err(|e| format!("bad reply: {e}"))
    }
}
