// SPDX-License-Identifier: GPL-2.0-or-later
//! The checkpoint bench's measurement: mekha's checkpoints beside stock
//! QEMU's ways of saving a running VM, each on a freshly booted VM, then
//! restores of their images into fresh QEMUs (docs/benchmarks.md says
//! what it measures and why).
//!
//! Every VM is the rig's ([`Vm`]: TCG, the guest probe rewriting a
//! [`HOT_MIB`] MiB hot set as fast as it can and computing). The bench
//! holds its first monitor and records its events ([`EventLog`]) and
//! follows its console ([`Console`]) so that every probe line has a host
//! time. Guest work lost is computed from the probe's `compute` events
//! ([`progress`](super::progress)).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use mekha_ckpt_core::session::{checkpoint, restore};
use mekha_coordinator::qmp::{Qmp, QmpError};
use serde_json::{json, Value};

use super::checkpoint_data::{ClockGap, Clocks, Dd, Method, MigrateParameters, Restore, RestoreKind, Run, Workload};
use super::clocks::{checkpoint_mono_ns, clock_advance, is_fresh, ClockSample};
use super::cluster_data::Span;
use super::console::{Console, TimedProbeEvent};
use super::cpu::{CpuShare, CpuTimes};
use super::events::{EventLog, TimedEvent};
use super::host::{drop_cache, loadavg};
use super::progress::{longest_stall, lost_ms, progress_series, rate_between, Point};
use super::stats::{now, plain};
use super::{fresh_dirs, log};
use crate::{Artifacts, Vm, VmConfig};

pub const HOT_MIB: u32 = 64;
/// Never ends during a run.
const COMPUTE_STEPS: u64 = 1 << 62;
/// After dirty and compute events flow.
const WARMUP_S: f64 = 2.0;
/// The rate measurement, and the noise-floor window before it.
pub const STEADY_S: f64 = 3.0;
/// The lost-work window goes on this long after completion.
pub const TAIL_S: f64 = 1.0;
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// One checkpoint or restore, at most.
const DONE_TIMEOUT: Duration = Duration::from_secs(600);
/// The wanted rate of compute events; the chunk adapts to it.
const EVENTS_PER_S: (f64, f64) = (10.0, 60.0);
/// The image key of mekha-sealed: a fixed one, only the cost is measured.
const KEY_SECRET: &str = "mekha-bench-key";
const KEY_BYTE_HEX: &str = "6d";
const CHECKPOINT_EVENT: &str = "__org.mekha_CHECKPOINT";
/// The VM of the clock measurement.
const CLOCK_MIB: u32 = 512;
/// The probe's clock sampling interval there.
const CLOCK_MS: u64 = 1000;
/// Clock samples of the original guest before its checkpoint, at least.
const CLOCK_BEFORE: usize = 4;
/// Clock samples of the restored guest, at least.
const CLOCK_AFTER: usize = 3;

pub fn workload() -> Workload {
    Workload { hot_mib: HOT_MIB, rate: 0, steady_s: STEADY_S, tail_s: TAIL_S }
}

/// The steady state of a VM before its checkpoint.
struct Steady {
    rate: f64,
    control_ms: f64,
    events_per_s: f64,
    dirty_mib_per_s: Option<f64>,
    loadavg: Vec<String>,
    cpu: CpuShare,
}

/// The bench's hold on one VM: QEMU, its first monitor, that monitor's
/// events, its console's probe events.
struct Guest {
    tag: String,
    vm: Vm,
    qmp: Qmp,
    events: EventLog,
    console: Console,
}

impl Guest {
    async fn execute(&self, command: &str, args: Value) -> Result<Value> {
        self.qmp.execute(command, args).await.with_context(|| format!("{}: {command}", self.tag))
    }

    /// Runs a command; the host times it was sent and answered.
    async fn timed(&self, command: &str, args: Value) -> Result<(Value, f64, f64)> {
        let t0 = now();
        let reply = self.execute(command, args).await?;
        Ok((reply, t0, now()))
    }

    async fn status(&self) -> String {
        match self.qmp.execute("query-status", Value::Null).await {
            Ok(s) => s["status"].as_str().unwrap_or("?").to_owned(),
            Err(e) => format!("unknown ({e})"),
        }
    }

    fn compute_points(&self) -> Vec<Point> {
        compute_points(&self.console.events())
    }

    /// Waits for a probe event satisfying `pred`; fails at once on a probe
    /// error or when QEMU exits.
    async fn wait_probe(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&TimedProbeEvent) -> bool,
    ) -> Result<TimedProbeEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let events = self.console.events();
            if let Some(e) = events.iter().find(|e| pred(e)) {
                return Ok(e.clone());
            }
            if let Some(e) = events.iter().find(|e| e.event.ev == "error") {
                bail!("{}: probe error while waiting for {what}: {}", self.tag, e.event.json);
            }
            if !self.vm.is_running() {
                bail!("{}: QEMU exited while waiting for {what}: {}", self.tag, self.vm.stderr());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: no {what} within {timeout:?} (QEMU {}, {} probe events); console tail:\n{}",
                    self.tag,
                    self.status().await,
                    events.len(),
                    self.vm.log().tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for `n` clock samples satisfying `pred`.
    async fn wait_clocks(
        &mut self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&ClockSample) -> bool,
    ) -> Result<Vec<ClockSample>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let samples = clock_samples(&self.console.events());
            if samples.iter().filter(|s| pred(s)).count() >= n {
                return Ok(samples);
            }
            if !self.vm.is_running() {
                bail!("{}: QEMU exited while waiting for {n} clock samples: {}", self.tag, self.vm.stderr());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: not {n} clock samples within {timeout:?}; console tail:\n{}",
                    self.tag,
                    self.vm.log().tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The RESUME event since `mark`.
    async fn resumed(&self, mark: usize, timeout: Duration) -> Result<TimedEvent> {
        match self.events.wait(mark, "RESUME", timeout, |_| true).await {
            Some(e) => Ok(e),
            None => bail!("{}: the VM did not resume (status {})", self.tag, self.status().await),
        }
    }

    /// `cont` as soon as QEMU accepts it: MIGRATION completed comes a
    /// moment before the migration is finalized, and `cont` is refused
    /// until then. The host time of the accepted answer.
    async fn cont(&self) -> Result<f64> {
        let deadline = now() + 30.0;
        loop {
            match self.qmp.execute("cont", Value::Null).await {
                Ok(_) => return Ok(now()),
                Err(QmpError::Command { desc, .. }) if desc.contains("not finalized") && now() <= deadline => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => bail!("{}: cont: {e}", self.tag),
            }
        }
    }

    /// Turns on MIGRATION events and `more` capabilities; the migration
    /// parameters in force (QEMU's defaults: nothing else is changed).
    async fn enable_migration_events(&self, more: &[&str]) -> Result<MigrateParameters> {
        let caps: Vec<Value> = ["events"].iter().chain(more).map(|c| json!({"capability": c, "state": true})).collect();
        self.execute("migrate-set-capabilities", json!({ "capabilities": caps })).await?;
        let params = self.execute("query-migrate-parameters", Value::Null).await?;
        Ok(serde_json::from_value(params)?)
    }

    /// The MIGRATION event since `mark` that ends it.
    async fn migration_end(&self, mark: usize, timeout: Duration) -> Option<TimedEvent> {
        let ends = |e: &TimedEvent| matches!(e.status(), Some("completed" | "failed" | "cancelled"));
        self.events.wait(mark, "MIGRATION", timeout, ends).await
    }

    /// Waits for a migration (or migrate-incoming) to complete.
    async fn migration_completed(&self, mark: usize, what: &str) -> Result<TimedEvent> {
        match self.migration_end(mark, DONE_TIMEOUT).await {
            Some(e) if e.status() == Some("completed") => Ok(e),
            end => {
                let mig = self.qmp.execute("query-migrate", Value::Null).await.unwrap_or_default();
                bail!("{}: {what}: {}: {mig}", self.tag, end.map_or("no end".into(), |e| e.data.to_string()))
            }
        }
    }

    /// Puts the bench's image key into this QEMU as a secret.
    async fn lend_key(&self) -> Result<()> {
        let key = KEY_BYTE_HEX.repeat(32);
        self.execute("object-add", json!({"qom-type": "secret", "id": KEY_SECRET, "data": key, "format": "raw"}))
            .await?;
        Ok(())
    }

    fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.vm.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

/// The probe's `clock` events.
fn clock_samples(events: &[TimedProbeEvent]) -> Vec<ClockSample> {
    let field = |e: &TimedProbeEvent, k: &str| e.event.json.get(k).and_then(Value::as_f64);
    events
        .iter()
        .filter(|e| e.event.ev == "clock")
        .filter_map(|e| {
            Some(ClockSample {
                t: e.t,
                mono_ns: field(e, "mono_ns")?,
                real_ns: field(e, "real_ns")?,
                tsc: field(e, "tsc"),
                rtc_s: field(e, "rtc_s"),
            })
        })
        .collect()
}

fn compute_points(events: &[TimedProbeEvent]) -> Vec<Point> {
    events.iter().filter(|e| e.event.ev == "compute").filter_map(|e| Some((e.t, e.event.u64("step")? as f64))).collect()
}

/// The first time of each status of mekha's checkpoint events, and the
/// event's data then.
fn checkpoint_status(events: &[TimedEvent], status: &str) -> Option<TimedEvent> {
    events.iter().find(|e| e.event == CHECKPOINT_EVENT && e.status() == Some(status)).cloned()
}

fn first_named(events: &[TimedEvent], name: &str) -> Option<f64> {
    events.iter().find(|e| e.event == name).map(|e| e.qemu_t)
}

/// A file's size and its allocated blocks, in MiB.
fn file_mib(path: &Path) -> Result<(f64, f64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok((m.len() as f64 / MIB, (m.blocks() * 512) as f64 / MIB))
}

const MIB: f64 = (1u64 << 20) as f64;

/// How long an fsync of the finished file takes, ms.
fn fsync_ms(path: &Path) -> Result<f64> {
    let t = now();
    std::fs::File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("fsync {}", path.display()))?;
    Ok((now() - t) * 1000.0)
}

/// The compute chunk for about 25 events a second at `rate` steps/s.
#[expect(clippy::cast_possible_truncation, reason = "a float cast saturates; a rate's 25th fits u64")]
fn chunk_for(rate: f64) -> u64 {
    let target = (rate / 25.0).round().max(1.0) as u64;
    let bits = 64 - target.leading_zeros();
    1u64 << bits.saturating_sub(1).max(10)
}

/// The options of a run.
pub struct Options {
    pub sizes: Vec<u32>,
    pub reps: usize,
    pub methods: Vec<Method>,
    /// The cap of stock live migration, s.
    pub live_cap_s: f64,
    /// The gap of the clock measurement, s, when it is run.
    pub clock_gap_s: Option<f64>,
}

/// The bench: where it writes, what it measured so far.
pub struct Bench {
    artifacts: Artifacts,
    out: PathBuf,
    vms_dir: PathBuf,
    images: PathBuf,
    /// Steps between compute events, adapted to the guest's speed.
    chunk: u64,
    pub results: Vec<Run>,
    pub restores: Vec<Restore>,
    pub dd: Vec<Dd>,
    /// The noise floor of every VM.
    pub controls: Vec<f64>,
    pub errors: Vec<String>,
    pub clocks: Option<Clocks>,
}

impl Bench {
    pub fn new(artifacts: Artifacts, out: &Path) -> Result<Bench> {
        let (vms_dir, images) = fresh_dirs(out)?;
        Ok(Bench {
            artifacts,
            out: out.to_path_buf(),
            vms_dir,
            images,
            chunk: 1 << 22,
            results: Vec::new(),
            restores: Vec::new(),
            dd: Vec::new(),
            controls: Vec::new(),
            errors: Vec::new(),
            clocks: None,
        })
    }

    fn probe_args(&self) -> Vec<String> {
        vec![
            "mekha.id=1".into(),
            format!("probe.mem={HOT_MIB}"),
            "probe.rate=0".into(),
            format!("probe.compute={COMPUTE_STEPS}"),
            format!("probe.compute_chunk={}", self.chunk),
            "probe.clock_ms=0".into(),
        ]
    }

    /// For each size and repetition: dd, every method, then the restores
    /// of their images; dd once more at the end.
    pub async fn run(&mut self, opts: &Options) {
        // Only the clocks: no VM size to measure.
        let sizes: &[u32] = if opts.methods.is_empty() { &[] } else { &opts.sizes };
        for &mib in sizes {
            for rep in 0..opts.reps {
                self.dd_once();
                let mut images: Vec<(Method, PathBuf, Vec<String>)> = Vec::new();
                for &method in &opts.methods {
                    match self.measure(mib, method, rep, opts.live_cap_s).await {
                        Ok((r, image)) => {
                            if let Some(image) = image {
                                images.push((method, image, r.probe_args.clone()));
                            }
                            self.results.push(r);
                        }
                        Err(e) => self.failed(format!("{mib}-{rep}-{}: {e:#}", method.name())),
                    }
                }
                for kind in RestoreKind::ALL {
                    let source = kind.sources().iter().find_map(|m| images.iter().find(|(s, _, _)| s == m));
                    let Some((_, image, probe_args)) = source else { continue };
                    match self.restore(mib, kind, rep, image, probe_args).await {
                        Ok(r) => self.restores.push(r),
                        Err(e) => self.failed(format!("{mib}-{rep}-restore-{}: {e:#}", kind.name())),
                    }
                }
                for (_, image, _) in images {
                    let _ = std::fs::remove_file(image);
                }
            }
        }
        if !opts.methods.is_empty() {
            self.dd_once();
        }
        if let Some(gap_s) = opts.clock_gap_s {
            let mut methods = std::collections::BTreeMap::new();
            for mekha in [true, false] {
                let r = self.clock_gap(mekha, gap_s).await;
                methods.insert(r.method.clone(), r);
            }
            self.clocks = Some(Clocks { gap_s, interval_ms: CLOCK_MS, size_mib: CLOCK_MIB, methods });
        }
        let _ = std::fs::remove_dir_all(&self.images);
    }

    fn failed(&mut self, what: String) {
        log(&format!("{what}: failed"));
        self.errors.push(what);
    }

    fn dd_once(&mut self) {
        match dd(&self.out.join("dd.tmp")) {
            Ok(d) => {
                log(&format!("dd oflag=direct: {:.0} MB/s", d.mbps));
                self.dd.push(d);
            }
            Err(e) => self.failed(format!("dd: {e:#}")),
        }
    }

    async fn boot(
        &self,
        tag: &str,
        mib: u32,
        probe_args: Vec<String>,
        extra_args: Vec<String>,
        incoming: bool,
    ) -> Result<Guest> {
        let dir = self.vms_dir.join(tag);
        let _ = std::fs::remove_dir_all(&dir);
        let config =
            VmConfig { memory_mib: mib, probe_args, extra_args, incoming, ..VmConfig::new(format!("bench-{mib}")) };
        let mut vm = Vm::launch(&self.artifacts, None, &dir, config)?;
        let qmp = vm.qmp().await?;
        let events = EventLog::record(&qmp);
        let console = Console::follow(&dir.join("serial.log"));
        Ok(Guest { tag: tag.to_owned(), vm, qmp, events, console })
    }

    /// A VM started with -incoming defer, checked to wait for its state.
    async fn boot_incoming(&self, tag: &str, mib: u32, probe_args: &[String]) -> Result<Guest> {
        let guest = self.boot(tag, mib, probe_args.to_vec(), Vec::new(), true).await?;
        let status = guest.status().await;
        if status != "inmigrate" {
            bail!("{tag}: QEMU not waiting for an incoming migration: {status}");
        }
        Ok(guest)
    }

    /// Waits for the workload to run steadily: the steady rate over the
    /// last STEADY_S and the noise floor over the STEADY_S before.
    async fn settle(&mut self, g: &mut Guest) -> Result<Steady> {
        g.wait_probe("compute", BOOT_TIMEOUT, |e| e.event.ev == "compute").await?;
        g.wait_probe("dirty", BOOT_TIMEOUT, |e| e.event.ev == "dirty" && e.event.u64("pages_written") > Some(0))
            .await?;
        tokio::time::sleep(Duration::from_secs_f64(WARMUP_S)).await;
        let ta = now();
        tokio::time::sleep(Duration::from_secs_f64(STEADY_S)).await;
        let tb = now();
        let cpu_b = CpuTimes::sample(g.vm.pid());
        tokio::time::sleep(Duration::from_secs_f64(STEADY_S)).await;
        let tc = now();
        let cpu_c = CpuTimes::sample(g.vm.pid());
        g.wait_probe("compute", Duration::from_secs(30), |e| e.event.ev == "compute" && e.t > tc).await?;
        let pts = g.compute_points();
        let rate_before = rate_between(&pts, ta, tb)?;
        let rate = rate_between(&pts, tb, tc)?;
        let control_ms = lost_ms(&pts, rate_before, tb, tc)?;
        let events_per_s = pts.iter().filter(|p| tb <= p.0 && p.0 <= tc).count() as f64 / STEADY_S;
        if !(EVENTS_PER_S.0..=EVENTS_PER_S.1).contains(&events_per_s) {
            let chunk = chunk_for(rate);
            log(&format!(
                "compute events at {events_per_s:.1}/s with chunk {}: chunk {chunk} for the next VMs",
                self.chunk
            ));
            self.chunk = chunk;
        }
        self.controls.push(control_ms);
        let dirty = g.console.events().into_iter().rev().find(|e| e.event.ev == "dirty");
        let dirty_mib_per_s = dirty.and_then(|e| e.event.json.get("mib_per_s").and_then(Value::as_f64));
        Ok(Steady {
            rate,
            control_ms,
            events_per_s,
            dirty_mib_per_s,
            loadavg: loadavg(),
            cpu: cpu_b.share_until(&cpu_c),
        })
    }

    /// One method on a fresh VM: the run, and the image to restore.
    async fn measure(
        &mut self,
        mib: u32,
        method: Method,
        rep: usize,
        live_cap_s: f64,
    ) -> Result<(Run, Option<PathBuf>)> {
        let tag = format!("{mib}-{rep}-{}", method.name());
        let probe_args = self.probe_args();
        // snapshot-save saves into a qcow2 disk of the VM.
        let disk = self.images.join(format!("{tag}.qcow2"));
        let mut extra_args = Vec::new();
        if method == Method::SnapshotSave {
            create_qcow2(&disk)?;
            extra_args = [
                "-drive",
                &format!("file={},format=qcow2,if=none,id=drive-d0,node-name=d0", disk.display()),
                "-device",
                "virtio-blk-pci,drive=drive-d0",
            ]
            .map(str::to_owned)
            .to_vec();
        }
        let measured = self.measure_on(&tag, mib, method, &probe_args, extra_args, &disk, live_cap_s).await;
        let _ = std::fs::remove_file(&disk);
        let (mut r, image) = measured?;
        r.size_mib = mib;
        r.method = Some(method);
        r.rep = rep;
        r.probe_args = probe_args;
        log(&format!(
            "{tag}: pause {} ms, total {} ms, lost {:.0} ms, ended {}",
            plain(r.pause_ms, 0),
            plain(r.total_ms, 0),
            r.lost_ms,
            if r.ended { "True" } else { "False" }
        ));
        Ok((r, image))
    }

    /// The measurement of [`Bench::measure`] on a VM booted with
    /// `extra_args`.
    #[allow(clippy::too_many_arguments)]
    async fn measure_on(
        &mut self,
        tag: &str,
        mib: u32,
        method: Method,
        probe_args: &[String],
        extra_args: Vec<String>,
        disk: &Path,
        live_cap_s: f64,
    ) -> Result<(Run, Option<PathBuf>)> {
        let mut g = self.boot(tag, mib, probe_args.to_vec(), extra_args, false).await?;
        let steady = self.settle(&mut g).await?;
        log(&format!(
            "{tag}: steady {:.1} M steps/s, {:.0} events/s, dirtying {} MiB/s; noise floor {:+.0} ms",
            steady.rate / 1e6,
            steady.events_per_s,
            steady.dirty_mib_per_s.map_or("None".into(), |v| format!("{v}")),
            steady.control_ms
        ));
        let cpu_start = CpuTimes::sample(g.vm.pid());
        let image = self.images.join(format!("{tag}.{}", if method.is_mekha() { "mekha" } else { "migrate" }));
        let (mut r, t0, t_done) = match method {
            Method::Mekha => mekha(&g, &image, checkpoint::Mode::Mtd, false).await?,
            Method::MekhaCow => mekha(&g, &image, checkpoint::Mode::Cow, false).await?,
            Method::MekhaSealed => {
                g.lend_key().await?;
                mekha(&g, &image, checkpoint::Mode::Cow, true).await?
            }
            Method::StopMigrate => stop_migrate(&g, &image).await?,
            Method::LiveMigrate => live_migrate(&g, &image, live_cap_s).await?,
            Method::BgSnapshot => bg_snapshot(&g, &image).await?,
            Method::SnapshotSave => snapshot_save(&g, disk).await?,
        };
        // Only the images of these are restored.
        let restorable = method.is_mekha() || method == Method::StopMigrate;
        if !restorable {
            let _ = std::fs::remove_file(&image);
        }
        window(&mut g, &steady, &cpu_start, t0, t_done, &mut r).await?;
        if !g.vm.is_running() {
            bail!("{tag}: QEMU died: {}", g.vm.stderr());
        }
        Ok((r, restorable.then_some(image)))
    }

    /// Checkpoint (mekha's, or stock stop + migrate file:), kill QEMU, wait
    /// `gap_s`, restore into a fresh QEMU: each clock's advance.
    async fn clock_gap(&self, mekha: bool, gap_s: f64) -> ClockGap {
        let kind = if mekha { "mekha" } else { "stock" };
        let tag = format!("clocks-{kind}");
        let probe_args: Vec<String> = self
            .probe_args()
            .into_iter()
            .map(|a| if a.starts_with("probe.clock_ms=") { format!("probe.clock_ms={CLOCK_MS}") } else { a })
            .collect();
        let path = self.images.join(format!("{tag}.{}", if mekha { "mekha" } else { "migrate" }));
        let mut r = ClockGap {
            method: kind.to_owned(),
            size_mib: CLOCK_MIB,
            gap_s,
            interval_ms: CLOCK_MS,
            probe_args,
            ..ClockGap::default()
        };
        if let Err(e) = self.clock_gap_into(&tag, mekha, &path, &mut r).await {
            log(&format!("{tag}: failed: {e:#}"));
            r.error = Some(format!("{e:#}"));
        }
        let _ = std::fs::remove_file(&path);
        r
    }

    async fn clock_gap_into(&self, tag: &str, mekha: bool, path: &Path, r: &mut ClockGap) -> Result<()> {
        let mut g = self.boot(tag, CLOCK_MIB, r.probe_args.clone(), Vec::new(), false).await?;
        g.wait_clocks(CLOCK_BEFORE, BOOT_TIMEOUT, |_| true).await?;
        let t_paused = if mekha {
            let (mark, _, _, info) = mekha_checkpoint(&g, json!({ "path": path })).await?;
            r.checkpoint_mode = info.mode;
            let evs = g.events.since(mark);
            first_named(&evs, "STOP").or_else(|| checkpoint_status(&evs, "paused").map(|e| e.qemu_t))
        } else {
            g.enable_migration_events(&[]).await?;
            let mark = g.events.mark();
            g.execute("stop", Value::Null).await?;
            g.execute("migrate", json!({"uri": format!("file:{}", path.display())})).await?;
            g.migration_completed(mark, "stop+migrate").await?;
            first_named(&g.events.since(mark), "STOP")
        };
        let t_paused = t_paused.ok_or_else(|| anyhow!("{tag}: no STOP event for the checkpoint"))?;
        g.vm.kill();
        let t_killed = now();
        // The console's last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let original = clock_samples(&g.console.events());
        drop(g);
        let m_ck = checkpoint_mono_ns(&original, t_paused)?;
        log(&format!(
            "{tag}: checkpoint done, QEMU killed; {} clock samples; no QEMU for {:.0} s",
            original.len(),
            r.gap_s
        ));
        tokio::time::sleep(Duration::from_secs_f64((t_killed + r.gap_s - now()).max(0.0))).await;
        let mut g = self.boot_incoming(&format!("{tag}-restore"), CLOCK_MIB, &r.probe_args).await?;
        if !mekha {
            g.enable_migration_events(&[]).await?;
        }
        let mark = g.events.mark();
        if mekha {
            g.execute("__org.mekha_restore", json!({"path": path, "time": "continue"})).await?;
            let ends = |e: &TimedEvent| matches!(e.status(), Some("completed" | "failed"));
            g.events.wait(mark, "__org.mekha_RESTORE", DONE_TIMEOUT, ends).await;
            let info: restore::Info =
                serde_json::from_value(g.execute("__org.mekha_query-restore", Value::Null).await?)?;
            if info.status != restore::Status::Completed {
                bail!("{tag}: mekha restore: {info:?}");
            }
        } else {
            g.execute("migrate-incoming", json!({"uri": format!("file:{}", path.display())})).await?;
            g.migration_completed(mark, "migrate-incoming").await?;
            if g.status().await != "running" {
                g.cont().await?;
            }
        }
        let resumed = g.resumed(mark, Duration::from_secs(60)).await?;
        r.host_gap_s = Some(resumed.qemu_t - t_paused);
        if mekha {
            r.time_info = Some(match g.qmp.execute("__org.mekha_query-time", Value::Null).await {
                Ok(v) => v,
                Err(e) => Value::String(e.to_string()),
            });
        }
        let restored = g.wait_clocks(CLOCK_AFTER, Duration::from_secs(120), |s| is_fresh(s, &original, m_ck)).await?;
        let rebooted = g.console.events().iter().any(|e| e.event.ev == "start");
        drop(g);
        if rebooted {
            bail!("{tag}: the restored guest booted again");
        }
        let a = clock_advance(&original, &restored, t_paused, CLOCK_MS as f64)?;
        let f2 = |v: Option<f64>| plain(v, 2);
        log(&format!(
            "{tag}: advance across {:.0} s: CLOCK_MONOTONIC {:.1} ms, CLOCK_REALTIME {:.1} ms, TSC {} ms; RTC - \
             CLOCK_REALTIME {} s ({} s from before the checkpoint)",
            r.gap_s,
            a.mono_ms,
            a.real_ms,
            plain(a.tsc_ms, 1),
            f2(a.rtc_minus_real_s),
            f2(a.rtc_change_s)
        ));
        r.samples_before = Some(original.len());
        r.advance = Some(a);
        Ok(())
    }

    /// Restores `image` into a fresh QEMU, its page cache dropped first.
    async fn restore(
        &self,
        mib: u32,
        kind: RestoreKind,
        rep: usize,
        image: &Path,
        probe_args: &[String],
    ) -> Result<Restore> {
        let tag = format!("{mib}-{rep}-restore-{}", kind.name());
        drop_cache(image)?;
        let mut g = self.boot_incoming(&tag, mib, probe_args).await?;
        if kind == RestoreKind::StockIncoming {
            g.enable_migration_events(&[]).await?;
        }
        let mark = g.events.mark();
        let (mut info, mut query_migrate) = (None, None);
        let t0 = if kind == RestoreKind::StockIncoming {
            let (_, t0, _) = g.timed("migrate-incoming", json!({"uri": format!("file:{}", image.display())})).await?;
            g.migration_completed(mark, "migrate-incoming").await?;
            query_migrate = Some(g.execute("query-migrate", Value::Null).await?);
            // The image of a stopped VM restores stopped (QEMU's global
            // state): resume it, as its user would.
            if g.status().await != "running" {
                g.cont().await?;
            }
            t0
        } else {
            let mut args = json!({"path": image, "lazy": kind == RestoreKind::MekhaLazy});
            if kind == RestoreKind::MekhaKeyed {
                g.lend_key().await?;
                args["key-secret"] = KEY_SECRET.into();
            }
            let (_, t0, _) = g.timed("__org.mekha_restore", args).await?;
            g.events.wait(mark, "__org.mekha_RESTORE", DONE_TIMEOUT, |_| true).await;
            let i: restore::Info = serde_json::from_value(g.execute("__org.mekha_query-restore", Value::Null).await?)?;
            if i.status != restore::Status::Completed {
                bail!("{tag}: mekha restore: {i:?}");
            }
            info = Some(i);
            t0
        };
        let resumed = g.resumed(mark, Duration::from_secs(60)).await?;
        let running_ms = (resumed.qemu_t - t0) * 1000.0;
        let rss_mib = g.rss_mib();
        let first =
            g.wait_probe("compute after restore", Duration::from_secs(120), |e| e.event.ev == "compute").await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let events = g.console.events();
        let rss_1s_mib = g.rss_mib();
        drop(g);
        let rebooted = events.iter().any(|e| e.event.ev == "start");
        let dirty_anomalies = events.iter().filter(|e| e.event.ev == "dirty_anomaly").count();
        let r = Restore {
            size_mib: mib,
            restore: kind,
            rep,
            running_ms,
            first_progress_ms: (first.t - t0) * 1000.0,
            rss_mib,
            rss_1s_mib,
            image_mib: file_mib(image)?.0,
            ok: !rebooted && dirty_anomalies == 0,
            rebooted,
            dirty_anomalies,
            info,
            query_migrate,
        };
        log(&format!(
            "{tag}: running after {running_ms:.0} ms, first progress {:.0} ms, RSS {} MiB, guest ok {}",
            r.first_progress_ms,
            plain(r.rss_mib, 0),
            if r.ok { "True" } else { "False" }
        ));
        Ok(r)
    }
}

/// Lost work, the longest stall and the progress line over the window
/// from `t0` to TAIL_S after `t_done`; the spans made relative to `t0`.
async fn window(g: &mut Guest, steady: &Steady, cpu_start: &CpuTimes, t0: f64, t_done: f64, r: &mut Run) -> Result<()> {
    let te = t_done + TAIL_S;
    tokio::time::sleep(Duration::from_secs_f64((te - now()).max(0.0))).await;
    let cpu_end = CpuTimes::sample(g.vm.pid());
    let status = g.status().await;
    if status != "running" {
        bail!("{}: the VM is {status} after the checkpoint", g.tag);
    }
    g.wait_probe("compute after the window", Duration::from_secs(60), |e| e.event.ev == "compute" && e.t > te + 0.05)
        .await?;
    let pts = g.compute_points();
    let stall = longest_stall(&pts, t0, te);
    r.lost_ms = lost_ms(&pts, steady.rate, t0, te)?;
    r.stall_ms = stall.map(|(gap, _)| gap * 1000.0);
    r.stall_at_s = stall.map(|(_, at)| at - t0);
    r.event_interval_ms = (steady.events_per_s > 0.0).then(|| 1000.0 / steady.events_per_s);
    r.control_ms = steady.control_ms;
    r.steady_rate = steady.rate;
    r.events_per_s = steady.events_per_s;
    r.dirty_mib_per_s = steady.dirty_mib_per_s;
    r.loadavg_before = steady.loadavg.clone();
    r.cpu_steady = steady.cpu.clone();
    r.cpu_window = cpu_start.share_until(&cpu_end);
    for Span(_, a, b) in &mut r.spans {
        *a = a.map(|t| t - t0);
        *b = b.map(|t| t - t0);
    }
    r.progress = progress_series(&pts, steady.rate, t0, t0 - 1.0, te + 0.05);
    r.window_s = te - t0;
    Ok(())
}

/// Runs `__org.mekha_checkpoint` with `args` to completion: the event
/// mark before it, the host time it was sent, the completion event and
/// the final query-checkpoint.
async fn mekha_checkpoint(g: &Guest, args: Value) -> Result<(usize, f64, TimedEvent, checkpoint::Info)> {
    let mark = g.events.mark();
    let (_, t0, _) = g.timed("__org.mekha_checkpoint", args).await?;
    let ends = |e: &TimedEvent| matches!(e.status(), Some("completed" | "failed"));
    let done = g
        .events
        .wait(mark, CHECKPOINT_EVENT, DONE_TIMEOUT, ends)
        .await
        .ok_or_else(|| anyhow!("{}: mekha checkpoint did not complete in {DONE_TIMEOUT:?}", g.tag))?;
    let info: checkpoint::Info = serde_json::from_value(g.execute("__org.mekha_query-checkpoint", Value::Null).await?)?;
    if info.status != checkpoint::Status::Completed {
        bail!("{}: mekha checkpoint failed: {:?}", g.tag, info.error);
    }
    Ok((mark, t0, done, info))
}

/// `__org.mekha_checkpoint` into `path`: the run (spans in host time), the
/// host time of the command and QEMU's of its completion.
async fn mekha(g: &Guest, path: &Path, mode: checkpoint::Mode, sealed: bool) -> Result<(Run, f64, f64)> {
    let mut args = json!({"path": path, "mode": mode});
    if sealed {
        args["key-secret"] = KEY_SECRET.into();
    }
    let (mark, t0, done, info) = mekha_checkpoint(g, args).await?;
    let evs = g.events.since(mark);
    let (stop, resume) = (first_named(&evs, "STOP"), first_named(&evs, "RESUME"));
    let paused = checkpoint_status(&evs, "paused").map(|e| e.qemu_t);
    let persisting = checkpoint_status(&evs, "persisting");
    let t_persist = persisting.as_ref().map(|e| e.qemu_t);
    let t_paused = stop.or(paused);
    let t_resumed = resume.or(t_persist);
    let t_done = done.qemu_t;
    let at_persist = |key: &str| persisting.as_ref().and_then(|e| e.data.get(key)).and_then(Value::as_u64);
    let written_before = at_persist("written-bytes").unwrap_or(0);
    let staged_at_persist = at_persist("staged-bytes");
    let persist_s = t_persist.map(|t| t_done - t);
    let (image_mib, image_alloc_mib) = file_mib(path)?;
    let mut spans = vec![
        Span::new("live copy", Some(t0), t_paused),
        Span::new("paused", t_paused, t_resumed),
        Span::new("persisting", t_persist, Some(t_done)),
    ];
    if mode == checkpoint::Mode::Cow {
        // Before the stop: only registering and populating RAM.
        spans[0] = Span::new("preparing", Some(t0), t_paused);
        spans.insert(2, Span::new("capturing", t_resumed, t_persist));
    }
    let positive = persist_s.filter(|&s| s > 0.0);
    let r = Run {
        pause_ms: Some(info.pause_ns as f64 / 1e6),
        pause_host_ms: stop.zip(resume).map(|(s, r)| (r - s) * 1000.0),
        total_ms: Some((t_done - t0) * 1000.0),
        total_qemu_ms: Some(info.total_ns as f64 / 1e6),
        live_ms: Some(info.live_ns as f64 / 1e6),
        persist_ms: persist_s.map(|s| s * 1000.0),
        staging_peak_mib: Some(info.staging_peak_bytes as f64 / MIB),
        staging_budget_mib: Some(info.staging_budget_bytes as f64 / MIB),
        image_mib: Some(image_mib),
        image_alloc_mib: Some(image_alloc_mib),
        written_bytes: Some(info.written_bytes),
        written_during_live_bytes: Some(written_before),
        write_mbps: positive.map(|s| (info.written_bytes - written_before) as f64 / s / 1e6),
        staged_at_persist_bytes: staged_at_persist,
        persist_staged_mbps: positive.zip(staged_at_persist.filter(|&b| b > 0)).map(|(s, b)| b as f64 / s / 1e6),
        direct_io: info.direct_io,
        mode: info.mode,
        wp_faults: Some(info.wp_faults),
        capture_ms: Some(info.capture_ns as f64 / 1e6),
        ended: true,
        fsync_ms: Some(fsync_ms(path)?),
        spans,
        info: Some(info),
        ..Run::default()
    };
    Ok((r, t0, t_done))
}

/// Stock stop, migrate file:, wait, cont: the run, the host time of `stop`
/// and QEMU's of the RESUME.
async fn stop_migrate(g: &Guest, path: &Path) -> Result<(Run, f64, f64)> {
    let params = g.enable_migration_events(&[]).await?;
    let mark = g.events.mark();
    let (_, t0, _) = g.timed("stop", Value::Null).await?;
    let (_, t_mig, _) = g.timed("migrate", json!({"uri": format!("file:{}", path.display())})).await?;
    let done = g.migration_completed(mark, "stop+migrate").await?;
    let mig = g.execute("query-migrate", Value::Null).await?;
    let t_cont = g.cont().await?;
    let resume = g.resumed(mark, Duration::from_secs(30)).await?.qemu_t;
    let evs = g.events.since(mark);
    let stop = first_named(&evs, "STOP").ok_or_else(|| anyhow!("{}: no STOP event", g.tag))?;
    let setup = evs.iter().find(|e| e.event == "MIGRATION" && e.status() == Some("setup")).map(|e| e.qemu_t);
    let (image_mib, image_alloc_mib) = file_mib(path)?;
    let r = Run {
        // Host: `stop` sent to `cont` answered.
        pause_ms: Some((t_cont - t0) * 1000.0),
        pause_qemu_ms: Some((resume - stop) * 1000.0),
        total_ms: Some((t_cont - t0) * 1000.0),
        image_mib: Some(image_mib),
        image_alloc_mib: Some(image_alloc_mib),
        write_mbps: Some(image_mib * MIB / (done.qemu_t - t_mig) / 1e6),
        direct_io: false,
        ended: true,
        fsync_ms: Some(fsync_ms(path)?),
        spans: vec![
            Span::new("paused", Some(stop), Some(resume)),
            Span::new("writing (paused)", Some(setup.unwrap_or(t_mig)), Some(done.qemu_t)),
        ],
        query_migrate: Some(mig),
        migrate_parameters: Some(params),
        ..Run::default()
    };
    Ok((r, t0, resume))
}

/// Stock live migrate file:, cancelled when it does not end within
/// `cap_s`: the run, the host time of `migrate` and QEMU's of its end
/// (the RESUME after it, when it completed).
async fn live_migrate(g: &Guest, path: &Path, cap_s: f64) -> Result<(Run, f64, f64)> {
    let params = g.enable_migration_events(&[]).await?;
    let mark = g.events.mark();
    let (_, t0, _) = g.timed("migrate", json!({"uri": format!("file:{}", path.display())})).await?;
    let mut mig = None;
    let mut done = g.migration_end(mark, Duration::from_secs_f64(cap_s)).await;
    if done.is_none() {
        // Not ended within the cap: cancel. It may still end meanwhile.
        mig = Some(g.execute("query-migrate", Value::Null).await?);
        let mark = g.events.mark();
        if let Err(e) = g.qmp.execute("migrate_cancel", Value::Null).await {
            log(&format!("{}: migrate_cancel: {e}", g.tag));
        }
        done = g.migration_end(mark, Duration::from_secs(120)).await;
    }
    let Some(done) = done else {
        bail!("{}: live migration neither cancelled nor ended (status {})", g.tag, g.status().await);
    };
    let mut r = Run { direct_io: false, migrate_parameters: Some(params), ..Run::default() };
    let transferred = |m: &Option<Value>| m.as_ref().and_then(|m| m["ram"]["transferred"].as_u64());
    let t_end = match done.status() {
        Some("completed") => {
            // A source that migrated stays stopped (postmigrate): resume
            // it, as a user of a live save to file would.
            let m = g.execute("query-migrate", Value::Null).await?;
            let t_cont = g.cont().await?;
            let resumed = g.events.wait(mark, "RESUME", Duration::from_secs(30), |_| true).await;
            let stop = first_named(&g.events.since(mark), "STOP");
            let resume = resumed.map_or(t_cont, |e| e.qemu_t);
            let (image_mib, image_alloc_mib) = file_mib(path)?;
            r.spans = vec![
                Span::new("migrating", Some(t0), Some(stop.unwrap_or(done.qemu_t))),
                Span::new("paused", Some(stop.unwrap_or(done.qemu_t)), Some(resume)),
            ];
            r.ended = true;
            r.pause_ms = stop.map(|s| (resume - s) * 1000.0);
            r.downtime_ms = m["downtime"].as_f64();
            r.total_ms = Some((resume - t0) * 1000.0);
            r.image_mib = Some(image_mib);
            r.image_alloc_mib = Some(image_alloc_mib);
            r.write_mbps = Some(image_mib * MIB / (done.qemu_t - t0) / 1e6);
            r.fsync_ms = Some(fsync_ms(path)?);
            mig = Some(m);
            r.transferred_bytes = transferred(&mig);
            resume
        }
        Some("cancelled") => {
            r.spans = vec![Span::new("migrating", Some(t0), Some(done.qemu_t))];
            r.ended = false;
            r.cancelled_after_ms = Some((done.qemu_t - t0) * 1000.0);
            r.transferred_bytes = transferred(&mig);
            r.partial_image_mib = file_mib(path).ok().map(|(size, _)| size);
            done.qemu_t
        }
        _ => {
            let m = g.execute("query-migrate", Value::Null).await.unwrap_or_default();
            bail!("{}: live migrate: {}: {m}", g.tag, done.data);
        }
    };
    r.query_migrate = mig;
    Ok((r, t0, t_end))
}

/// Stock migrate file: with the background-snapshot capability: the run,
/// the host time of `migrate` and QEMU's of its completion.
async fn bg_snapshot(g: &Guest, path: &Path) -> Result<(Run, f64, f64)> {
    let params = g.enable_migration_events(&["background-snapshot"]).await?;
    let mark = g.events.mark();
    let (_, t0, _) = g.timed("migrate", json!({"uri": format!("file:{}", path.display())})).await?;
    let done = g.migration_completed(mark, "background-snapshot").await?;
    let mig = g.execute("query-migrate", Value::Null).await?;
    let evs = g.events.since(mark);
    let (stop, resume) = (first_named(&evs, "STOP"), first_named(&evs, "RESUME"));
    let t_end = done.qemu_t;
    let mut spans = Vec::new();
    if let (Some(s), Some(r)) = (stop, resume) {
        spans.push(Span::new("paused", Some(s), Some(r)));
    }
    spans.push(Span::new("migrating", Some(resume.unwrap_or(t0)), Some(t_end)));
    let (image_mib, image_alloc_mib) = file_mib(path)?;
    let r = Run {
        pause_ms: mig["downtime"].as_f64(),
        pause_host_ms: stop.zip(resume).map(|(s, r)| (r - s) * 1000.0),
        total_ms: Some((t_end - t0) * 1000.0),
        image_mib: Some(image_mib),
        image_alloc_mib: Some(image_alloc_mib),
        write_mbps: Some(image_mib * MIB / (t_end - t0) / 1e6),
        direct_io: false,
        ended: true,
        fsync_ms: Some(fsync_ms(path)?),
        spans,
        query_migrate: Some(mig),
        migrate_parameters: Some(params),
        ..Run::default()
    };
    Ok((r, t0, t_end))
}

/// Stock snapshot-save of the VM state and the disk into the VM's qcow2
/// disk `disk`: the run, the host time of the command and QEMU's of the
/// job's end (or of the RESUME, if later).
async fn snapshot_save(g: &Guest, disk: &Path) -> Result<(Run, f64, f64)> {
    const JOB: &str = "bench-save";
    let mark = g.events.mark();
    let args = json!({"job-id": JOB, "tag": "bench", "vmstate": "d0", "devices": ["d0"]});
    let (_, t0, _) = g.timed("snapshot-save", args).await?;
    let concluded = |e: &TimedEvent| e.data["id"] == JOB && e.status() == Some("concluded");
    let done = g
        .events
        .wait(mark, "JOB_STATUS_CHANGE", DONE_TIMEOUT, concluded)
        .await
        .ok_or_else(|| anyhow!("{}: snapshot-save did not conclude", g.tag))?;
    let jobs = g.execute("query-jobs", Value::Null).await?;
    let job = jobs.as_array().and_then(|js| js.iter().find(|j| j["id"] == JOB));
    if let Some(error) = job.and_then(|j| j.get("error")) {
        bail!("{}: snapshot-save: {error}", g.tag);
    }
    g.execute("job-dismiss", json!({ "id": JOB })).await?;
    let evs = g.events.since(mark);
    let (Some(stop), Some(resume)) = (first_named(&evs, "STOP"), first_named(&evs, "RESUME")) else {
        bail!("{}: snapshot-save: no STOP/RESUME events", g.tag);
    };
    let t_end = done.qemu_t.max(resume);
    let (image_mib, image_alloc_mib) = file_mib(disk)?;
    let r = Run {
        pause_ms: Some((resume - stop) * 1000.0),
        total_ms: Some((t_end - t0) * 1000.0),
        image_mib: Some(image_mib),
        image_alloc_mib: Some(image_alloc_mib),
        write_mbps: Some(image_mib * MIB / (resume - stop) / 1e6),
        direct_io: false,
        ended: true,
        fsync_ms: Some(fsync_ms(disk)?),
        spans: vec![
            Span::new("paused", Some(stop), Some(resume)),
            Span::new("writing (paused)", Some(stop), Some(resume)),
        ],
        ..Run::default()
    };
    Ok((r, t0, t_end))
}

/// A 64 MiB qcow2 disk for snapshot-save.
fn create_qcow2(path: &Path) -> Result<()> {
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("64M")
        .status()
        .context("running qemu-img (Debian package qemu-utils)")?;
    if !status.success() {
        bail!("qemu-img create {}: {status}", path.display());
    }
    Ok(())
}

/// dd oflag=direct of 512 MiB with conv=fsync: the disk's direct-write
/// bandwidth beside which the image writes are judged.
fn dd(path: &Path) -> Result<Dd> {
    let out = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=512", "oflag=direct", "conv=fsync"])
        .arg(format!("of={}", path.display()))
        .output()
        .context("running dd");
    let _ = std::fs::remove_file(path);
    let out = out?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("dd: {stderr}");
    }
    parse_dd(&stderr).ok_or_else(|| anyhow!("cannot read dd's output: {stderr}"))
}

/// `N bytes (...) copied, S s, ...` from dd's report.
fn parse_dd(stderr: &str) -> Option<Dd> {
    let line = stderr.lines().find(|l| l.contains(" bytes") && l.contains(" copied, "))?;
    let bytes: u64 = line.split_whitespace().next()?.parse().ok()?;
    let after = line.split(" copied, ").nth(1)?;
    let seconds: f64 = after.split_whitespace().next()?.replace(',', ".").parse().ok()?;
    Some(Dd { bytes, seconds, mbps: bytes as f64 / seconds / 1e6 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dd_reports_parse_in_either_locale() {
        let d = parse_dd(
            "512+0 records in\n512+0 records out\n536870912 bytes (537 MB, 512 MiB) copied, 2.5 s, 215 MB/s\n",
        )
        .unwrap();
        assert_eq!(d.bytes, 536_870_912);
        assert_eq!(d.seconds, 2.5);
        assert!((d.mbps - 214.748_364_8).abs() < 1e-6);
        assert_eq!(parse_dd("536870912 bytes copied, 1,25 s, 429 MB/s").unwrap().seconds, 1.25);
        assert!(parse_dd("dd: error").is_none());
    }

    #[test]
    fn the_chunk_aims_at_about_25_events_a_second() {
        assert_eq!(chunk_for(25.0 * 4096.0), 4096);
        assert_eq!(chunk_for(25.0 * 5000.0), 4096);
        assert_eq!(chunk_for(10.0), 1024);
    }
}
