// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha tls`: the cluster CA and the certificates of agents and
//! coordinators.

use std::path::PathBuf;

use clap::Subcommand;
use mekha_coordinator::tls;

use super::values::RoleArg;

#[derive(Subcommand)]
pub enum TlsCommand {
    /// Make a cluster CA in its own directory (or reuse the one there),
    /// the coordinator's bundle (an admin client certificate) in DIR, and
    /// for each --agent a bundle DIR/NAME/ to copy to that host (its
    /// `mekha agent --tls-dir`). The CA's key stays in CA_DIR.
    Init {
        /// The CA's directory (default $MEKHA_CA_DIR or /etc/mekha/ca).
        #[arg(long, value_name = "CA_DIR")]
        ca_dir: Option<PathBuf>,
        /// The coordinator's TLS directory (default $MEKHA_TLS_DIR or
        /// /etc/mekha/tls).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Host name or IP address the coordinator dials an agent by
        /// (repeat for each host).
        #[arg(long, value_name = "NAME")]
        agent: Vec<String>,
        /// Lifetime of the certificates made.
        #[arg(long, value_name = "N", default_value_t = tls::DEFAULT_DAYS)]
        days: u32,
    },
    /// Issue a client bundle (ca.pem, crl.pem, client.pem, client-key.pem)
    /// into DIR, replacing one there: for another coordinator, or a
    /// monitor that may only read.
    Client {
        #[arg(long, value_name = "CA_DIR")]
        ca_dir: Option<PathBuf>,
        /// Where to write it.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Its holder, as agents' logs and refusals name it.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// What agents do for it.
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long, value_name = "N", default_value_t = tls::DEFAULT_DAYS)]
        days: u32,
    },
    /// Re-issue the certificates of bundle directories (a coordinator's
    /// client.pem, an agent's agent.pem) with new keys, for the same
    /// name, role and host, valid N days from now.
    Renew {
        #[arg(long, value_name = "CA_DIR")]
        ca_dir: Option<PathBuf>,
        #[arg(long, value_name = "N", default_value_t = tls::DEFAULT_DAYS)]
        days: u32,
        /// Bundle directories.
        #[arg(value_name = "DIR", required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Revoke certificates: the CA's crl.pem lists them, and with --dir
    /// the bundles there get the new list. Copy crl.pem to every host:
    /// agents reload it at their next connection.
    Revoke {
        #[arg(long, value_name = "CA_DIR")]
        ca_dir: Option<PathBuf>,
        /// A TLS directory whose bundles (it and its subdirectories) get
        /// the new crl.pem.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Certificate files or serial numbers (hex).
        #[arg(value_name = "CERT|SERIAL", required = true)]
        certificates: Vec<String>,
    },
}

pub fn run(command: TlsCommand) -> Result<Vec<PathBuf>, String> {
    let ca = |dir: Option<PathBuf>| dir.unwrap_or_else(tls::default_ca_dir);
    match command {
        TlsCommand::Init { ca_dir, dir, agent, days } => {
            tls::ca::init(&ca(ca_dir), &dir.unwrap_or_else(tls::default_dir), &agent, days)
        }
        TlsCommand::Client { ca_dir, dir, name, role, days } => {
            let role = tls::Role::from(role);
            let (written, serial) = tls::ca::client(&ca(ca_dir), &dir, &name, role, days)?;
            eprintln!("issued {name:?} ({role}), serial {serial}");
            Ok(written)
        }
        TlsCommand::Renew { ca_dir, days, dirs } => {
            let ca_dir = ca(ca_dir);
            let mut written = Vec::new();
            for dir in dirs {
                written.extend(tls::ca::renew(&ca_dir, &dir, days)?);
            }
            Ok(written)
        }
        TlsCommand::Revoke { ca_dir, dir, certificates } => {
            let (revoked, written) = tls::ca::revoke(&ca(ca_dir), &certificates, dir.as_deref())?;
            for serial in revoked {
                eprintln!("revoked serial {serial}");
            }
            Ok(written)
        }
    }
}
