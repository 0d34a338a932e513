// SPDX-License-Identifier: GPL-2.0-or-later
//! Time virtualization with real VMs: a VM checkpointed, killed and
//! restored after a gap sees every clock continue from the checkpoint
//! instant (continue), sees the gap on its RTC (host), or catches up with
//! the host at a bounded rate without a jump (catch-up).
//!
//! The guest probe samples CLOCK_MONOTONIC, CLOCK_REALTIME, the TSC and
//! the RTC once a second, on a schedule of CLOCK_MONOTONIC. The restored
//! guest's first sample follows the last one its checkpointed state had
//! taken by one interval of guest time; a clock that jumped across the gap
//! shows it there.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{json_of, mekha};
use mekha_ckpt_core::session::commands::QueryTime;
use mekha_ckpt_core::session::{time, Empty};
use mekha_ckpt_core::vtime::TimePolicy;
use mekha_coordinator::qmp::Qmp;
use mekha_rig::{Artifacts, ProbeEvent, ProbeLog, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(120);
/// The probe's clock sampling interval.
const INTERVAL_MS: i64 = 1000;
/// What a clock may advance across a restore beyond one interval.
const SLACK_MS: i64 = 100;

fn clock_vm(name: &str) -> VmConfig {
    let mut config = VmConfig::new(name);
    config.memory_mib = 256;
    config.probe_args = vec!["mekha.id=1".into(), "probe.mem=8".into(), format!("probe.clock_ms={INTERVAL_MS}")];
    config
}

/// A clock sample of the probe.
#[derive(Debug, Clone, Copy)]
struct Sample {
    mono_ns: i64,
    real_ns: i64,
    tsc: i64,
    rtc_s: i64,
}

fn samples(log: &ProbeLog) -> Vec<Sample> {
    let field =
        |e: &ProbeEvent, k: &str| e.json[k].as_i64().unwrap_or_else(|| panic!("clock event without {k}: {}", e.json));
    log.events()
        .iter()
        .filter(|e| e.ev == "clock")
        .map(|e| Sample {
            mono_ns: field(e, "mono_ns"),
            real_ns: field(e, "real_ns"),
            tsc: field(e, "tsc"),
            rtc_s: field(e, "rtc_s"),
        })
        .collect()
}

/// TSC ticks per ns, from the first and last samples of a log.
fn tsc_per_ns(samples: &[Sample]) -> f64 {
    let (a, b) = (samples.first().unwrap(), samples.last().unwrap());
    assert!(b.mono_ns - a.mono_ns > 2_000_000_000, "too few samples to rate the TSC: {samples:?}");
    (b.tsc - a.tsc) as f64 / (b.mono_ns - a.mono_ns) as f64
}

/// How far each clock moved between the last sample `before` had taken
/// at the checkpoint instant and the first sample after the restore, in
/// ms: (monotonic, realtime, TSC).
#[expect(clippy::cast_possible_truncation, reason = "TSC ticks over a float rate: ms of a gap fit")]
fn advance_across(before: &[Sample], after: &[Sample], tsc_rate: f64) -> (i64, i64, i64) {
    let first = after[0];
    let last = before.iter().rfind(|s| s.mono_ns < first.mono_ns).expect("a sample before the instant");
    let ms = |ns: i64| ns / 1_000_000;
    (
        ms(first.mono_ns - last.mono_ns),
        ms(first.real_ns - last.real_ns),
        ms(((first.tsc - last.tsc) as f64 / tsc_rate) as i64),
    )
}

/// Every clock continued: none advanced more than an interval plus slack.
fn assert_continuous(what: &str, before: &[Sample], after: &[Sample], tsc_rate: f64) {
    let (mono, real, tsc) = advance_across(before, after, tsc_rate);
    for (clock, advance) in [("CLOCK_MONOTONIC", mono), ("CLOCK_REALTIME", real), ("TSC", tsc)] {
        assert!(
            (0..=INTERVAL_MS + SLACK_MS).contains(&advance),
            "{what}: {clock} advanced {advance} ms across the restore (sampled every {INTERVAL_MS} ms)"
        );
    }
}

/// RTC seconds minus CLOCK_REALTIME seconds, per sample.
fn rtc_minus_real(samples: &[Sample]) -> Vec<f64> {
    samples.iter().map(|s| s.rtc_s as f64 - s.real_ns as f64 / 1e9).collect()
}

/// The RTC agrees with CLOCK_REALTIME after a restore as it did before
/// the checkpoint, within 1 s. Compared with before, not with 0: the RTC
/// counts whole seconds from a phase set when QEMU started, and the guest
/// set CLOCK_REALTIME from a whole-second read at boot, so the two differ
/// by up to 2 s on a VM that was never checkpointed.
fn assert_rtc_agrees(what: &str, before: &[Sample], after: &[Sample]) {
    let mut base = rtc_minus_real(before);
    base.sort_by(f64::total_cmp);
    let base = base[base.len() / 2];
    for d in rtc_minus_real(after) {
        assert!((d - base).abs() <= 1.0, "{what}: RTC - CLOCK_REALTIME is {d:.2} s, {base:.2} s before: {after:?}");
    }
}

/// Guest timers after the restore neither burst nor stall: sleeps of one
/// interval take about one interval.
fn assert_steady(what: &str, after: &[Sample]) {
    for pair in after.windows(2) {
        let gap = (pair[1].mono_ns - pair[0].mono_ns) / 1_000_000;
        assert!(
            (INTERVAL_MS * 9 / 10..=INTERVAL_MS * 3 / 2).contains(&gap),
            "{what}: samples {gap} ms apart: {after:?}"
        );
    }
}

struct Run {
    artifacts: Artifacts,
    dir: std::path::PathBuf,
    images: std::path::PathBuf,
    config: VmConfig,
}

impl Run {
    fn new(name: &str) -> Run {
        let dir = common::test_dir(name);
        Run { artifacts: common::artifacts(), images: dir.join("images"), dir, config: clock_vm(name) }
    }

    /// Boots the VM and waits for `n` clock samples.
    async fn boot(&self, n: usize) -> Vm {
        let mut vm = Vm::launch(&self.artifacts, None, &self.dir.join("run0"), self.config.clone()).unwrap();
        vm.qmp().await.unwrap();
        wait_samples(&vm.log(), n);
        vm
    }

    /// Checkpoints `vm`, kills it, waits `gap`, restores a fresh QEMU with
    /// `restore_args`; waits for `n` samples of the restored guest.
    async fn cycle(&self, vm: &mut Vm, round: usize, gap: Duration, restore_args: &[&str], n: usize) -> Vm {
        json_of(&mekha(&self.artifacts, &["checkpoint", "--json"], &vm.cli_qmp_path(), &self.images));
        vm.kill();
        std::thread::sleep(gap);
        let mut config = self.config.clone();
        config.incoming = true;
        let mut restored = Vm::launch(&self.artifacts, None, &self.dir.join(format!("run{round}")), config).unwrap();
        restored.qmp().await.unwrap();
        let mut args = vec!["restore", "--json"];
        args.extend_from_slice(restore_args);
        json_of(&mekha(&self.artifacts, &args, &restored.cli_qmp_path(), &self.images));
        wait_samples(&restored.log(), n);
        restored
    }
}

fn wait_samples(log: &ProbeLog, n: usize) {
    let deadline = std::time::Instant::now() + BOOT;
    while samples(log).len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no {n} clock samples in {}:\n{}",
            log.path().display(),
            log.tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn query_time(qmp: &Qmp) -> time::Info {
    qmp.call::<QueryTime>(&Empty {}).await.unwrap()
}

fn host_now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn continue_policy_resumes_every_clock_from_the_checkpoint_instant() {
    let run = Run::new("time-continue");
    let mut vm = run.boot(4).await;
    let first = samples(&vm.log());
    let tsc_rate = tsc_per_ns(&first);

    // 30 s on disk, then a restore of the restored VM after 10 s more.
    let mut restored = run.cycle(&mut vm, 1, Duration::from_secs(30), &["--time", "continue"], 4).await;
    let after = samples(&restored.log());
    assert_continuous("first restore", &first, &after, tsc_rate);
    assert_steady("first restore", &after);
    assert_rtc_agrees("after a 30 s gap", &first, &after);
    let time = query_time(&restored.qmp().await.unwrap()).await;
    assert_eq!(time.policy, TimePolicy::Continue, "{time:?}");
    let lag_s = time.lag_ns as f64 / 1e9;
    assert!((30.0..40.0).contains(&lag_s), "the guest wall clock should lag by the gap: {time:?}");

    let mut again = run.cycle(&mut restored, 2, Duration::from_secs(10), &[], 4).await;
    let after2 = samples(&again.log());
    assert_continuous("second restore", &after, &after2, tsc_rate);
    assert_steady("second restore", &after2);
    assert_rtc_agrees("after two restores", &first, &after2);
    let lag2_s = query_time(&again.qmp().await.unwrap()).await.lag_ns as f64 / 1e9;
    assert!((lag_s + 10.0..lag_s + 20.0).contains(&lag2_s), "lags compose: {lag_s} s then {lag2_s} s");
    assert!(again.is_running(), "{}", again.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn host_policy_shows_the_gap_on_the_rtc_like_stock_qemu() {
    let run = Run::new("time-host");
    let mut vm = run.boot(4).await;
    let first = samples(&vm.log());
    let tsc_rate = tsc_per_ns(&first);
    let mut restored = run.cycle(&mut vm, 1, Duration::from_secs(30), &["--time", "host"], 3).await;
    let after = samples(&restored.log());
    // The guest's system clocks continue, as in stock QEMU...
    assert_continuous("host policy", &first, &after, tsc_rate);
    // ...but the RTC reads the host's time: 30 s and more ahead.
    let base = rtc_minus_real(&first).into_iter().fold(f64::MIN, f64::max);
    for d in rtc_minus_real(&after) {
        assert!(d - base >= 28.0, "the RTC should show the gap under the host policy: {d:.2} s, {base:.2} s before");
    }
    let time = query_time(&restored.qmp().await.unwrap()).await;
    assert_eq!((time.policy, time.lag_ns), (TimePolicy::Host, 0), "{time:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn catch_up_policy_rejoins_host_time_without_a_jump() {
    let run = Run::new("time-catch-up");
    let mut vm = run.boot(4).await;
    let first = samples(&vm.log());
    let tsc_rate = tsc_per_ns(&first);
    // 8 s behind, caught up at 50%: about 16 s after the restore.
    let mut restored =
        run.cycle(&mut vm, 1, Duration::from_secs(8), &["--time", "catch-up", "--catch-up-ppm", "500000"], 2).await;
    let after = samples(&restored.log());
    assert_continuous("catch-up", &first, &after, tsc_rate);
    let qmp = restored.qmp().await.unwrap();
    let time = query_time(&qmp).await;
    assert_eq!((time.policy, time.catching_up), (TimePolicy::CatchUp, true), "{time:?}");
    let lag0 = time.lag_ns as f64 / 1e9;
    assert!(lag0 > 5.0, "{time:?}");

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let time = loop {
        let time = query_time(&qmp).await;
        if !time.catching_up || std::time::Instant::now() > deadline {
            break time;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!((time.catching_up, time.lag_ns), (false, 0), "{time:?}");
    // Under TCG the VM clock caught up too, and the guest's CLOCK_REALTIME
    // with it: a fresh sample reads the host's time.
    assert!(time.advanced_ns as f64 / 1e9 > lag0 - 1.0, "{time:?}");
    let log = restored.log();
    let n = samples(&log).len();
    wait_samples(&log, n + 1);
    let now = host_now_s();
    let last = *samples(&log).last().unwrap();
    let behind = now - last.real_ns as f64 / 1e9;
    assert!((-0.5..1.5).contains(&behind), "guest CLOCK_REALTIME {behind} s behind the host after catching up");
    // Sampling went on all along: guest time ran faster, never jumped.
    let all = samples(&log);
    for pair in all.windows(2) {
        let real_ms = (pair[1].real_ns - pair[0].real_ns) / 1_000_000;
        assert!(real_ms <= INTERVAL_MS + SLACK_MS, "CLOCK_REALTIME jumped {real_ms} ms between samples: {all:?}");
    }
}
