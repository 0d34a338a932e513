// SPDX-License-Identifier: GPL-2.0-or-later
//! The `mekha` command line: its arguments (clap) and what each command
//! runs. The library below it knows nothing of the command line.

pub mod checkpoint;
pub mod exit;
pub mod image;
pub mod key;
pub mod spec;
pub mod tls;
pub mod values;
pub mod vm;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use mekha_coordinator::{agent, image_key};

use exit::CommandFailure;
use key::KeyCommand;
use tls::TlsCommand;
use values::TimeArg;

/// Exit codes: 0 success, 1 failure, 2 bad usage, 3 a VM unreachable over
/// QMP, 4 a VM whose QEMU lacks the mekha patches, 5 an image or checkpoint
/// is damaged (`image verify`, `image inspect`).
#[derive(Parser)]
#[command(name = "mekha", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    Checkpoint(checkpoint::CheckpointCmd),
    /// Restore the VMs behind the QMP sockets (QEMUs started with their
    /// VMs' command lines plus `-incoming defer`) from the latest committed
    /// checkpoint of a directory, and resume them together.
    Restore(checkpoint::RestoreCmd),
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
        time: Option<TimeArg>,
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
        policy: Option<TimeArg>,
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
        command: image::ImageCommand,
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

/// Runs `command` to its end.
pub async fn run(command: Command) -> Result<(), CommandFailure> {
    type Failure = CommandFailure;
    match command {
        Command::Info { qmp, json } => vm::info(qmp, json).await,
        Command::Time { qmp, policy, catch_up_ppm, json } => {
            vm::time(qmp, policy.map(Into::into), catch_up_ppm, json).await
        }
        Command::Checkpoint(cmd) => checkpoint::run_checkpoint(cmd).await,
        Command::Restore(cmd) => checkpoint::run_restore(cmd).await,
        Command::Up { spec, json } => spec::up(&spec, json).await,
        Command::Restart { spec, time, json } => spec::restart(&spec, time.map(Into::into), json).await,
        Command::Down { spec } => spec::down(&spec).await,
        Command::Status { spec, json } => spec::status(&spec, json).await,
        Command::Image { command } => image::run(command),
        Command::Agent { listen, tls_dir, state_root, checkpoint_root, qemu } => {
            let dir = tls_dir.unwrap_or_else(mekha_coordinator::tls::default_dir);
            let policy =
                agent::Policy::new(&state_root, &checkpoint_root, &qemu).map_err(|e| Failure::new(exit::USAGE, e))?;
            agent::serve(listen, &dir, policy).await.map_err(|e| Failure::new(exit::FAILURE, e))
        }
        Command::Key { command: KeyCommand::New { file } } => {
            let key = image_key::create(&file).map_err(|e| Failure::new(exit::FAILURE, e))?;
            println!("{}: image key {}", file.display(), key.id_hex());
            Ok(())
        }
        Command::Tls { command } => {
            for path in tls::run(command).map_err(|e| Failure::new(exit::FAILURE, e))? {
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}
