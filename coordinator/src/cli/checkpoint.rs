// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha checkpoint` and `mekha restore` in attach mode: the VMs behind
//! the given QMP sockets, checkpointed together and restarted together.
//!
//! Batch-scheduler habits: one JSON summary with `--json`, exit codes of
//! [`super::exit`], progress on a terminal only, and `--on-signal` to
//! checkpoint when the scheduler signals (Slurm's `--signal=B:USR1@T`):
//! SIGUSR1 checkpoints and goes on waiting, SIGTERM checkpoints and exits.
//! Without it, SIGINT or SIGTERM during a checkpoint cancels it cleanly.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mekha_ckpt_core::session::{checkpoint, restore};
use mekha_coordinator::stall::Reported;
use tokio::signal::unix::{signal, SignalKind};

use mekha_coordinator::ckpt::{CaptureMode, CheckpointOptions, RestoreOptions, MIN_LEASE_MS};
use mekha_coordinator::cluster::{self, Attached, ClusterCheckpoint, ClusterOptions, ClusterRestore};
use mekha_coordinator::spec::{CheckpointSpec, Spec};
use mekha_coordinator::transport::Reach;

use super::exit::{self, CommandFailure};
use super::key;
use super::values::{ModeArg, TimeArg};

/// How remote QMP sockets are reached (see `transport`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReachArgs {
    /// An ssh option (`-o`) for `ssh://` QMP sockets, e.g.
    /// IdentityFile=/path (repeat for several).
    #[arg(long, value_name = "OPT")]
    pub ssh_option: Vec<String>,
    /// TLS directory for `mekha://` QMP sockets (ca.pem, client.pem,
    /// client-key.pem; default $MEKHA_TLS_DIR or /etc/mekha/tls).
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
}

impl ReachArgs {
    pub fn reach(&self) -> Reach {
        Reach { ssh_options: self.ssh_option.clone(), tls_dir: self.tls_dir.clone() }
    }
}

/// `mekha checkpoint`.
#[derive(Debug, clap::Args)]
pub struct CheckpointCmd {
    /// QMP socket of a VM (repeat for every VM of the cluster).
    #[arg(long = "qmp", value_name = "SOCK", required_unless_present = "spec", conflicts_with = "spec")]
    pub qmp: Vec<PathBuf>,
    /// Checkpoint directory (created if missing).
    #[arg(long, value_name = "DIR", required_unless_present = "spec", conflicts_with = "spec")]
    pub dir: Option<PathBuf>,
    /// The cluster of a spec file started by `mekha up` (its VMs, its
    /// checkpoint directory and its [checkpoint] settings, which the
    /// options given here override).
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// How guest RAM is captured: cow stops each VM only to write-protect
    /// its RAM (pause independent of the dirty rate); mtd copies while it
    /// runs and stops for the last dirty pages; auto takes cow where RAM is
    /// private anonymous and the kernel has userfaultfd write protection.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// End the live phase of every VM after this long, whatever the dirty
    /// rates (the stop then copies more; default 10000).
    #[arg(long, value_name = "MS")]
    pub time_budget_ms: Option<u64>,
    /// Memory budget of each VM's staging area in MiB (default: its RAM).
    #[arg(long, value_name = "MIB")]
    pub staging_mib: Option<u64>,
    /// MTD epoch: dirty-bitmap sync interval.
    #[arg(long, value_name = "MS")]
    pub epoch_ms: Option<u64>,
    /// How long a VM waits for a silent coordinator before it gives up
    /// the checkpoint on its own (the VM always runs on; default 5000).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(MIN_LEASE_MS..))]
    pub lease_ms: Option<u64>,
    /// Images written at once (default 2).
    #[arg(long, value_name = "N")]
    pub persist_concurrency: Option<usize>,
    /// Give the checkpoint up when a VM shows no progress for this long
    /// while it is waited for (to stage or write its image; default 60000).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_timeout_ms: Option<u64>,
    /// Leave the VMs' writable disks out of the checkpoint: snapshot them
    /// yourself (by default each is captured at the checkpoint's instant
    /// and put back at a restart).
    #[arg(long)]
    pub allow_writable_disks: bool,
    /// Wait for signals: SIGUSR1 checkpoints and waits again, SIGTERM
    /// checkpoints and exits (for Slurm's --signal).
    #[arg(long)]
    pub on_signal: bool,
    /// Seal every image and the manifest under this image key (`mekha
    /// key new`): a restart with the key refuses anything changed or
    /// put in place without it.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    #[command(flatten)]
    pub reach: ReachArgs,
    /// Print one JSON summary per checkpoint instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `mekha restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreCmd {
    /// QMP socket of a QEMU started with its VM's command line plus
    /// `-incoming defer` (repeat for every VM of the cluster).
    #[arg(long = "qmp", value_name = "SOCK", required = true)]
    pub qmp: Vec<PathBuf>,
    /// Checkpoint directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Leave the VMs paused once restored (resume with QMP
    /// `__org.mekha_resume` or `cont`).
    #[arg(long)]
    pub paused: bool,
    /// How the restored VMs' clocks stand to the host's: continue (every
    /// clock resumes from the checkpoint instant), host (stock: the RTC
    /// jumps by the gap), catch-up (continue, then run guest time faster
    /// until it has caught up with the host).
    #[arg(long, value_enum, default_value_t = TimeArg::Continue)]
    pub time: TimeArg,
    /// Catch-up rate in parts per million (default 50000: 5% faster).
    #[arg(long, value_name = "PPM")]
    pub catch_up_ppm: Option<u32>,
    /// The guest wall clocks' lag behind the host at resume, instead of
    /// the time since the checkpoint.
    #[arg(long, value_name = "NS", allow_negative_numbers = true)]
    pub lag_ns: Option<i64>,
    /// How long a loaded VM waits for a silent coordinator before its
    /// QEMU shuts down without having run (default 5000; not with
    /// --paused).
    #[arg(long, value_name = "MS", conflicts_with = "paused",
          value_parser = clap::value_parser!(u64).range(MIN_LEASE_MS..))]
    pub lease_ms: Option<u64>,
    /// Give the restart up when a VM loads without progress this long
    /// (default 60000).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_timeout_ms: Option<u64>,
    /// Restore only what holds under this image key: the manifest, and
    /// in each VM the very image it sealed (pages are then read, never
    /// mapped from the file).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    #[command(flatten)]
    pub reach: ReachArgs,
    /// Print one JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run_checkpoint(cmd: CheckpointCmd) -> Result<(), CommandFailure> {
    let (vms, dir, defaults, key_file) = match &cmd.spec {
        Some(path) => {
            let spec = Spec::load(path).map_err(|e| CommandFailure::new(exit::USAGE, e))?;
            let mut reach = spec.reach();
            reach.tls_dir = cmd.reach.tls_dir.clone().or(reach.tls_dir);
            let key_file = cmd.key_file.clone().or(spec.key_file.clone());
            (cluster::attach(&spec.qmp_endpoints(), &reach).await?, spec.checkpoint_dir, spec.checkpoint, key_file)
        }
        None => (
            cluster::attach(&cmd.qmp, &cmd.reach.reach()).await?,
            cmd.dir.clone().expect("clap requires it"),
            Default::default(),
            cmd.key_file.clone(),
        ),
    };
    let mut options = cmd.options(&defaults);
    options.vm.key = key::load(key_file.as_deref())?;
    checkpoint_vms(&vms, &dir, &options, cmd.json, cmd.on_signal).await
}

impl CheckpointCmd {
    /// The options given here, else the spec's, else the defaults.
    fn options(&self, spec: &CheckpointSpec) -> ClusterOptions {
        let d = ClusterOptions::default();
        ClusterOptions {
            vm: CheckpointOptions {
                mode: self.mode.map(CaptureMode::from).or(spec.mode.map(Into::into)).unwrap_or_default(),
                staging_mib: self.staging_mib.or(spec.staging_mib),
                epoch_ms: self.epoch_ms,
                allow_writable_disks: self.allow_writable_disks || spec.allow_writable_disks.unwrap_or(false),
                ..Default::default()
            },
            time_budget: self.time_budget_ms.or(spec.time_budget_ms).map_or(d.time_budget, Duration::from_millis),
            lease: self.lease_ms.or(spec.lease_ms).map_or(d.lease, Duration::from_millis),
            persist_concurrency: self.persist_concurrency.or(spec.persist_concurrency).unwrap_or(d.persist_concurrency),
            progress_timeout: self
                .progress_timeout_ms
                .or(spec.progress_timeout_ms)
                .map_or(d.progress_timeout, Duration::from_millis),
        }
    }
}

/// Checkpoints `vms` into `dir` once, or on every signal with `on_signal`.
pub async fn checkpoint_vms(
    vms: &[Attached],
    dir: &Path,
    options: &ClusterOptions,
    json: bool,
    on_signal: bool,
) -> Result<(), CommandFailure> {
    if !on_signal {
        let mut interrupt = Interrupt::new()?;
        return checkpoint_once(vms, dir, options, json, &mut interrupt).await;
    }
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(signal_failure)?;
    let mut term = signal(SignalKind::terminate()).map_err(signal_failure)?;
    if !json {
        eprintln!("mekha: waiting for SIGUSR1 (checkpoint) or SIGTERM (checkpoint and exit)");
    }
    loop {
        let last = tokio::select! {
            _ = usr1.recv() => false,
            _ = term.recv() => true,
        };
        // Signals during the checkpoint wait their turn: it is never
        // cancelled here, since the scheduler asked for it.
        let mut never = Interrupt::never();
        let outcome = checkpoint_once(vms, dir, options, json, &mut never).await;
        if last {
            return outcome;
        }
        if let Err(f) = outcome {
            eprintln!("mekha: {}", f.message);
        }
    }
}

async fn checkpoint_once(
    vms: &[Attached],
    dir: &Path,
    options: &ClusterOptions,
    json: bool,
    interrupt: &mut Interrupt,
) -> Result<(), CommandFailure> {
    let mut progress = progress_line(!json && std::io::stderr().is_terminal(), vms);
    let outcome = tokio::select! {
        r = cluster::checkpoint(vms, dir, options, &mut progress) => r,
        _ = interrupt.wait() => {
            cluster::cancel_all(vms).await;
            end_progress(&json);
            return Err(CommandFailure::new(exit::FAILURE, "interrupted: the checkpoint was cancelled; \
                                                           every VM runs on and nothing was committed"));
        }
    };
    end_progress(&json);
    let summary = outcome?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).expect("JSON encodes"));
    } else {
        print_checkpoint(&summary);
    }
    Ok(())
}

pub async fn run_restore(cmd: RestoreCmd) -> Result<(), CommandFailure> {
    let key = key::load(cmd.key_file.as_deref())?;
    let vms = cluster::attach(&cmd.qmp, &cmd.reach.reach()).await?;
    let d = RestoreOptions::default();
    let options = RestoreOptions {
        paused: cmd.paused,
        time: cmd.time.into(),
        catch_up_ppm: cmd.catch_up_ppm,
        lag_ns: cmd.lag_ns,
        lease: cmd.lease_ms.map_or(d.lease, Duration::from_millis),
        progress_timeout: cmd.progress_timeout_ms.map_or(d.progress_timeout, Duration::from_millis),
        key,
    };
    restore_vms(&vms, &cmd.dir, &options, cmd.json).await
}

/// Restores `vms` from the latest checkpoint of `dir` and reports.
pub async fn restore_vms(
    vms: &[Attached],
    dir: &Path,
    options: &RestoreOptions,
    json: bool,
) -> Result<(), CommandFailure> {
    let mut progress = progress_line(!json && std::io::stderr().is_terminal(), vms);
    let outcome = cluster::restore(vms, dir, options, &mut progress).await;
    end_progress(&json);
    let summary = outcome?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).expect("JSON encodes"));
    } else {
        print_restore(&summary, options.paused);
    }
    Ok(())
}

/// SIGINT or SIGTERM, or nothing ever.
struct Interrupt(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Interrupt {
    fn new() -> Result<Interrupt, CommandFailure> {
        let int = signal(SignalKind::interrupt()).map_err(signal_failure)?;
        let term = signal(SignalKind::terminate()).map_err(signal_failure)?;
        Ok(Interrupt(Some((int, term))))
    }

    fn never() -> Interrupt {
        Interrupt(None)
    }

    async fn wait(&mut self) {
        match &mut self.0 {
            Some((int, term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
    }
}

fn signal_failure(e: std::io::Error) -> CommandFailure {
    CommandFailure::new(exit::FAILURE, format!("cannot handle signals: {e}"))
}

/// What the progress line shows of a VM's checkpoint or restore.
trait Shown: Reported {
    /// Live and ready to stop.
    fn ready(&self) -> bool;
    fn staged_bytes(&self) -> u64;
    fn written_bytes(&self) -> u64;
}

impl Shown for checkpoint::Info {
    fn ready(&self) -> bool {
        self.ready && self.status == checkpoint::Status::Live
    }

    fn staged_bytes(&self) -> u64 {
        self.staged_bytes
    }

    fn written_bytes(&self) -> u64 {
        self.written_bytes
    }
}

impl Shown for restore::Info {
    fn ready(&self) -> bool {
        false
    }

    fn staged_bytes(&self) -> u64 {
        0
    }

    fn written_bytes(&self) -> u64 {
        0
    }
}

/// One line on a terminal, rewritten: how many VMs are where.
fn progress_line<T: Shown>(enabled: bool, vms: &[Attached]) -> impl FnMut(&[T]) + Send {
    let names: Vec<String> = vms.iter().map(|vm| vm.name.clone()).collect();
    move |states: &[T]| {
        if !enabled {
            return;
        }
        let mib = |bytes: fn(&T) -> u64| states.iter().map(bytes).sum::<u64>() >> 20;
        let parts: Vec<String> = names
            .iter()
            .zip(states)
            .map(|(name, s)| {
                let ready = if s.ready() { "(ready)" } else { "" };
                format!("{name} {}{ready}", s.status_name())
            })
            .collect();
        eprint!(
            "\r\x1b[K{}; staged {} MiB, written {} MiB",
            parts.join(", "),
            mib(T::staged_bytes),
            mib(T::written_bytes)
        );
    }
}

fn end_progress(json: &bool) {
    if !*json && std::io::stderr().is_terminal() {
        eprintln!();
    }
}

fn us(ns: i64) -> f64 {
    ns as f64 / 1e3
}

fn print_checkpoint(s: &ClusterCheckpoint) {
    println!(
        "checkpoint generation {} committed in {}: {} VM{} stopped at one instant (skew up to {:.0} us), each \
         resumed after its own capture; live phase {:.0} ms{}, committed after {:.0} ms; longest pause {:.2} ms; \
         {} network frame{} in flight saved; {} MiB written",
        s.generation,
        s.dir.display(),
        s.vms.len(),
        if s.vms.len() == 1 { "" } else { "s" },
        us(s.stop_skew_ns),
        s.live_ms,
        if s.all_ready { "" } else { " (ended by the time budget)" },
        s.latency_ms,
        s.max_pause_ns as f64 / 1e6,
        s.net_saved_frames,
        if s.net_saved_frames == 1 { "" } else { "s" },
        s.written_bytes >> 20,
    );
    for vm in &s.vms {
        let p = &vm.progress;
        let how = match p.mode {
            Some(checkpoint::Mode::Cow) => format!("copy-on-write, {} guest writes waited for a copy", p.wp_faults),
            _ => format!("MTD, {} pages copied in the pause", p.final_pages),
        };
        println!(
            "  {}: paused {:.2} ms ({how}), stop skew {:+.0} us, {} frame(s) in flight saved, staging peak {} MiB",
            vm.vm,
            p.pause_ns as f64 / 1e6,
            us(vm.stop_skew_ns),
            p.net_saved_frames,
            p.staging_peak_bytes >> 20,
        );
        if let Some(reason) = &p.mode_reason {
            println!("  {}: copy-on-write was not possible, MTD used: {reason}", vm.vm);
        }
    }
}

fn print_restore(s: &ClusterRestore, paused: bool) {
    let state = if paused {
        "loaded and left paused".to_owned()
    } else {
        format!("resumed together (skew up to {:.0} us)", us(s.resume_skew_ns))
    };
    println!(
        "restored {} VM{} from generation {} of {}: {state}, after {:.0} ms",
        s.vms.len(),
        if s.vms.len() == 1 { "" } else { "s" },
        s.generation,
        s.dir.display(),
        s.latency_ms
    );
    for vm in &s.vms {
        let p = &vm.progress;
        println!(
            "  {}: {} MiB {} in {:.0} ms",
            vm.vm,
            p.ram_bytes >> 20,
            if p.lazy { "mapped lazily" } else { "read" },
            p.total_ns as f64 / 1e6
        );
    }
}
