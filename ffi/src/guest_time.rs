// SPDX-License-Identifier: GPL-2.0-or-later
//! Time virtualization: a restored VM's clocks continue from the
//! checkpoint instant (or follow the policy asked for), over any number of
//! checkpoint and restore cycles.
//!
//! QEMU's VM clock — and with it the TCG TSC, and under KVM kvmclock and
//! the TSC, which QEMU saves and reloads — runs only while the VM runs and
//! already continues across a restore. The guest's wall clock does not:
//! the RTC reads QEMU's host clock, the host's wall time. So the
//! checkpoint records the clocks at its instant (the image's TIME
//! section), and the restore sets an offset on QEMU's host clock: first
//! before the device state loads (the RTC's state is checked against it),
//! then again when the VM first runs, so that the time spent loading or
//! waiting paused is no gap either. `catch-up` then shrinks the lag at a
//! bounded rate; under TCG it also moves the VM clock and the TSC forward
//! at that rate, so that the guest's system time catches up too. Under
//! KVM, kvmclock and the TSC are left alone (only the RTC catches up).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mekha_ckpt_core::instant::wall_ns;
use mekha_ckpt_core::session::time::{catch_up_ppm, Info, SetArgs};
use mekha_ckpt_core::session::Result;
use mekha_ckpt_core::vtime::{catch_up_step, resume_offset, TimePolicy, TimeRecord, DEFAULT_CATCH_UP_PPM};
use mekha_ckpt_core::width::saturating_i64;

use crate::qemu::{self, clocks, Bql, QemuThread};

/// How often catch-up moves the clocks: 10 ms steps of at most `ppm`
/// parts of it (0.5 ms at the default 5%).
const CATCH_UP_PERIOD: Duration = Duration::from_millis(10);

/// What a restore asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RestoreTime {
    pub policy: TimePolicy,
    pub ppm: u32,
    pub lag_ns: Option<i64>,
}

impl RestoreTime {
    pub(crate) fn new(policy: Option<TimePolicy>, ppm: Option<u32>, lag_ns: Option<i64>) -> Result<RestoreTime> {
        let policy = policy.unwrap_or_default();
        Ok(RestoreTime { policy, ppm: catch_up_ppm(ppm)?, lag_ns })
    }
}

struct State {
    policy: TimePolicy,
    ppm: u32,
    /// The instant to resume from at the VM's next start, after a restore.
    pending: Option<(Option<TimeRecord>, Option<i64>)>,
    running: bool,
    /// Bumped on each policy change; a catch-up thread of an older one stops.
    generation: u64,
    catching_up: bool,
    advanced_ns: i64,
}

static STATE: Mutex<State> = Mutex::new(State {
    policy: TimePolicy::Host,
    ppm: DEFAULT_CATCH_UP_PPM,
    pending: None,
    running: false,
    generation: 0,
    catching_up: false,
    advanced_ns: 0,
});

/// The clocks now, for the image of a checkpoint taken with the VM stopped.
pub(crate) fn capture(_bql: &Bql) -> TimeRecord {
    let c = clocks::read();
    TimeRecord::new(c.host_ns, wall_ns(), c.virtual_ns)
}

/// Before a restore loads the device state: puts QEMU's host clock at the
/// checkpoint instant (per the policy) and arranges to do it again when
/// the VM first runs.
pub(crate) fn prepare_restore(bql: &Bql, record: Option<TimeRecord>, asked: RestoreTime) {
    let mut state = STATE.lock().unwrap();
    state.policy = asked.policy;
    state.ppm = asked.ppm;
    state.generation += 1;
    state.catching_up = false;
    clocks::set_host_offset(bql, resume_offset(asked.policy, record.as_ref(), asked.lag_ns, wall_ns()));
    state.pending = (asked.policy != TimePolicy::Host).then_some((record, asked.lag_ns));
    clocks::watch_run_state(bql);
}

/// QEMU's run-state hook (BQL held, main loop).
pub(crate) fn on_run_state(running: bool) {
    // SAFETY: QEMU calls the hook with the BQL held.
    let bql = unsafe { Bql::assume_held() };
    let mut state = STATE.lock().unwrap();
    state.running = running;
    if !running {
        return;
    }
    if let Some((record, lag)) = state.pending.take() {
        clocks::set_host_offset(&bql, resume_offset(state.policy, record.as_ref(), lag, wall_ns()));
        if state.policy == TimePolicy::CatchUp {
            start_catch_up(&mut state);
        }
    }
}

/// `__org.mekha_query-time`.
pub(crate) fn query() -> Info {
    let state = STATE.lock().unwrap();
    let c = clocks::read();
    Info {
        policy: state.policy,
        lag_ns: -c.host_offset_ns,
        catch_up_ppm: (state.policy == TimePolicy::CatchUp).then_some(state.ppm),
        catching_up: state.catching_up,
        advanced_ns: state.advanced_ns,
        virtual_ns: c.virtual_ns,
    }
}

/// `__org.mekha_set-time`.
pub(crate) fn set(args: SetArgs) -> Result<()> {
    let ppm = catch_up_ppm(args.catch_up_ppm)?;
    // SAFETY: QMP handlers run with the BQL held.
    let bql = unsafe { Bql::assume_held() };
    let mut state = STATE.lock().unwrap();
    state.policy = args.policy;
    state.ppm = ppm;
    state.generation += 1;
    state.catching_up = false;
    match args.policy {
        TimePolicy::Host => {
            state.pending = None;
            clocks::set_host_offset(&bql, 0);
        }
        // Keeps the lag as it is now (a pending restore keeps its instant).
        TimePolicy::Continue => {}
        TimePolicy::CatchUp if state.pending.is_none() => start_catch_up(&mut state),
        TimePolicy::CatchUp => {}
    }
    Ok(())
}

fn start_catch_up(state: &mut State) {
    state.catching_up = true;
    let (generation, ppm) = (state.generation, state.ppm);
    let vm_clock = qemu::vm_identity().accelerator == "tcg" && !clocks::read().icount;
    let spawned = std::thread::Builder::new().name("mekha-time".into()).spawn(move || {
        let _thread = QemuThread::register();
        catch_up(generation, ppm, vm_clock);
    });
    if let Err(e) = spawned {
        crate::qemu::report::warn(&format!("cannot start time catch-up, the guest keeps its lag: {e}"));
        state.catching_up = false;
    }
}

/// Shrinks the lag by `ppm` of host time until it is gone or the policy
/// changes; with `vm_clock`, moves the VM clock and the TSC forward alike.
fn catch_up(generation: u64, ppm: u32, vm_clock: bool) {
    let ticks_per_ns = if vm_clock { measure_ticks_per_ns(generation) } else { None };
    let mut last = Instant::now();
    loop {
        std::thread::sleep(CATCH_UP_PERIOD);
        let bql = Bql::lock();
        let mut state = STATE.lock().unwrap();
        if state.generation != generation {
            return;
        }
        let now = Instant::now();
        let elapsed = saturating_i64(now.duration_since(last).as_nanos());
        last = now;
        let offset = clocks::read().host_offset_ns;
        let step = catch_up_step(offset, elapsed, ppm);
        if step > 0 {
            clocks::set_host_offset(&bql, offset + step);
            if let (Some(rate), true) = (ticks_per_ns, state.running) {
                #[expect(clippy::cast_possible_truncation, reason = "a float cast saturates; a step's ticks fit")]
                let ticks = (step as f64 * rate) as i64;
                clocks::advance_vm_clock(&bql, step, ticks);
                state.advanced_ns += step;
            }
        }
        if offset + step >= 0 {
            state.catching_up = false;
            return;
        }
    }
}

/// The TCG tick counter's rate against the VM clock (the host's TSC rate),
/// measured over 100 ms of the VM running. None if the policy changes
/// first.
fn measure_ticks_per_ns(generation: u64) -> Option<f64> {
    loop {
        let a = clocks::read();
        std::thread::sleep(Duration::from_millis(100));
        let b = clocks::read();
        if STATE.lock().unwrap().generation != generation {
            return None;
        }
        let (dv, dt) = (b.virtual_ns - a.virtual_ns, b.ticks - a.ticks);
        // Only a VM that ran the whole time gives a rate.
        if dv > 50_000_000 && dt > 0 {
            return Some(dt as f64 / dv as f64);
        }
    }
}
