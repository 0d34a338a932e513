// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha`: coordinated checkpoint-restart for clusters of QEMU VMs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mekha_coordinator::ckpt::TimePolicy;
use mekha_coordinator::exit::CommandFailure;
use mekha_coordinator::transport::Reach;
use mekha_coordinator::{agent, ckpt_cmd, cluster, exit, image_cmd, image_key, info, spec_cmd, tls};

/// Exit codes: 0 success, 1 failure, 2 bad usage, 3 a VM unreachable over
/// QMP, 4 a VM whose QEMU lacks the mekha patches, 5 an image or checkpoint
/// is damaged (`image verify`, `image inspect`).
#[derive(Parser)]
#[command(name = "mekha", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what the mekha library in each VM's QEMU reports.
    Info {
        /// QMP socket of a VM (repeat for several VMs).
        #[arg(long = "qmp", value_name = "SOCK", required = true)]
        qmp: Vec<PathBuf>,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Checkpoint the VMs behind the QMP sockets together, at one
    /// consistent instant, into a checkpoint directory; exits 0 once the
    /// cluster checkpoint is committed.
    Checkpoint(ckpt_cmd::CheckpointCmd),
    /// Restore the VMs behind the QMP sockets (QEMUs started with their
    /// VMs' command lines plus `-incoming defer`) from the latest committed
    /// checkpoint of a directory, and resume them together.
    Restore(ckpt_cmd::RestoreCmd),
    /// Start the cluster of a spec file: its network and every VM.
    Up {
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Restart the cluster of a spec file from its latest committed
    /// checkpoint: every VM started again, restored, resumed together.
    Restart {
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
        /// Time policy (default: the spec's [restore] time, else continue).
        #[arg(long, value_enum)]
        time: Option<TimePolicy>,
        /// Print one JSON summary instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop every VM of a spec file and remove the network `up` made.
    Down {
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
    },
    /// Show the VMs of a spec file and its latest checkpoint.
    Status {
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show how a VM's clocks stand to the host's, or change its time
    /// policy (`--policy`).
    Time {
        /// QMP socket of the VM.
        #[arg(long = "qmp", value_name = "SOCK")]
        qmp: PathBuf,
        /// New policy: continue keeps the current lag, host drops it (the
        /// RTC jumps to the host's time), catch-up runs guest time faster
        /// until the lag is gone.
        #[arg(long, value_enum)]
        policy: Option<TimePolicy>,
        /// Catch-up rate in parts per million (default 50000).
        #[arg(long, value_name = "PPM", requires = "policy")]
        catch_up_ppm: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inspect or verify checkpoint images (a file, or a checkpoint directory).
    Image {
        #[command(subcommand)]
        command: image_cmd::ImageCommand,
    },
    /// Serve this host to a coordinator over mutually authenticated TLS:
    /// launch a spec's VMs here, report storage, forward QMP sockets.
    /// Each request needs a role in the client's certificate (monitor:
    /// storage, status; operator: QMP, checkpoint parts; admin: launch,
    /// stop) and may only name paths under the roots given here.
    Agent {
        /// Address and port to listen on.
        #[arg(long, value_name = "ADDR:PORT", default_value_t = SocketAddr::from(([0, 0, 0, 0], agent::DEFAULT_PORT)))]
        listen: SocketAddr,
        /// TLS directory: ca.pem, crl.pem, agent.pem, agent-key.pem
        /// (default $MEKHA_TLS_DIR or /etc/mekha/tls).
        #[arg(long, value_name = "DIR")]
        tls_dir: Option<PathBuf>,
        /// Where specs' state directories (VMs' sockets, logs, pid files)
        /// may be; QMP sockets are forwarded from there only (repeat for
        /// several).
        #[arg(long, value_name = "DIR", required = true)]
        state_root: Vec<PathBuf>,
        /// Where checkpoint directories may be (repeat for several).
        #[arg(long, value_name = "DIR", required = true)]
        checkpoint_root: Vec<PathBuf>,
        /// A QEMU binary specs may launch, as specs name it (repeat for
        /// several); without it, this agent launches no VMs.
        #[arg(long, value_name = "PATH")]
        qemu: Vec<PathBuf>,
    },
    /// Certificates for agents and the coordinator.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// The cluster's image key, which seals images and manifests
    /// (`--key-file`, a spec's `key_file`).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Write a new random image key to FILE, readable by its owner only
    /// (an existing file is never replaced: what it sealed would be
    /// refused). Prints the key's id.
    New {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
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
        role: tls::Role,
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

fn run_tls(command: TlsCommand) -> Result<Vec<PathBuf>, String> {
    let ca = |dir: Option<PathBuf>| dir.unwrap_or_else(tls::default_ca_dir);
    match command {
        TlsCommand::Init { ca_dir, dir, agent, days } => {
            tls::ca::init(&ca(ca_dir), &dir.unwrap_or_else(tls::default_dir), &agent, days)
        }
        TlsCommand::Client { ca_dir, dir, name, role, days } => {
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

type Failure = CommandFailure;

async fn run_time(sock: PathBuf, policy: Option<TimePolicy>, ppm: Option<u32>, json: bool) -> Result<(), Failure> {
    let (qmp, _, _tunnel) = cluster::open(&sock, &Reach::default()).await?;
    if let Some(policy) = policy {
        let mut args = serde_json::json!({ "policy": policy.as_str() });
        if let Some(ppm) = ppm {
            args["catch-up-ppm"] = ppm.into();
        }
        qmp.execute_mekha("set-time", args).await?;
    }
    let t = qmp.execute_mekha("query-time", serde_json::Value::Null).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&t).expect("JSON encodes"));
        return Ok(());
    }
    let s = |k: &str| t[k].as_i64().unwrap_or(0) as f64 / 1e9;
    let catching = match t["catching-up"].as_bool() {
        Some(true) => format!(", catching up at {} ppm", t["catch-up-ppm"]),
        _ => String::new(),
    };
    println!(
        "{}: time policy {}, guest wall clock {:.3} s behind the host{catching}; VM clock {:.3} s (catch-up moved it {:.3} s)",
        sock.display(),
        t["policy"].as_str().unwrap_or("?"),
        s("lag-ns"),
        s("virtual-ns"),
        s("advanced-ns"),
    );
    Ok(())
}

async fn run_info(sockets: Vec<PathBuf>, json: bool) -> Result<(), Failure> {
    let mut all = Vec::new();
    for sock in &sockets {
        let (qmp, _, _tunnel) = cluster::open(sock, &Reach::default()).await?;
        let info = info::query(&qmp)
            .await
            .map_err(Failure::from)
            .map_err(|f| Failure { message: format!("{}: {}", sock.display(), f.message), ..f })?;
        all.push((sock, info));
    }
    if json {
        let doc: Vec<_> = all.iter().map(|(sock, info)| serde_json::json!({ "qmp": sock, "info": info })).collect();
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON encodes"));
        return Ok(());
    }
    for (sock, info) in all {
        println!(
            "{}: VM {} ({}, {}), QEMU {}, mekha {} ({}), {} MiB RAM in {} blocks, capabilities: {}",
            sock.display(),
            info.vm_name.as_deref().unwrap_or("(unnamed)"),
            info.machine,
            info.accelerator,
            info.qemu_version,
            info.version,
            info.build_id,
            info.ram_size >> 20,
            info.ram_blocks.len(),
            if info.capabilities.is_empty() { "none".to_owned() } else { info.capabilities.join(", ") },
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Info { qmp, json } => run_info(qmp, json).await,
            Command::Time { qmp, policy, catch_up_ppm, json } => run_time(qmp, policy, catch_up_ppm, json).await,
            Command::Checkpoint(cmd) => ckpt_cmd::run_checkpoint(cmd).await,
            Command::Restore(cmd) => ckpt_cmd::run_restore(cmd).await,
            Command::Up { spec, json } => spec_cmd::up(&spec, json).await,
            Command::Restart { spec, time, json } => spec_cmd::restart(&spec, time, json).await,
            Command::Down { spec } => spec_cmd::down(&spec).await,
            Command::Status { spec, json } => spec_cmd::status(&spec, json).await,
            Command::Image { command } => image_cmd::run(command),
            Command::Agent { listen, tls_dir, state_root, checkpoint_root, qemu } => {
                let dir = tls_dir.unwrap_or_else(tls::default_dir);
                let policy = agent::Policy::new(&state_root, &checkpoint_root, &qemu)
                    .map_err(|e| Failure::new(exit::USAGE, e))?;
                agent::serve(listen, &dir, policy).await.map_err(|e| Failure::new(exit::FAILURE, e))
            }
            Command::Key { command: KeyCommand::New { file } } => {
                let key = image_key::create(&file).map_err(|e| Failure::new(exit::FAILURE, e))?;
                println!("{}: image key {}", file.display(), key.id_hex());
                Ok(())
            }
            Command::Tls { command } => {
                for path in run_tls(command).map_err(|e| Failure::new(exit::FAILURE, e))? {
                    println!("{}", path.display());
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::from(exit::OK as u8),
        Err(f) => {
            eprintln!("mekha: {}", f.message);
            ExitCode::from(f.code as u8)
        }
    }
}
