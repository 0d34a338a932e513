// SPDX-License-Identifier: GPL-2.0-or-later
//! Each guest clock's advance across a restore gap, from the probe's
//! `clock` events of a checkpointed guest and of its restored copy. Pure
//! functions; the measurement is [`checkpoint`](super::checkpoint)'s.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// One `clock` event: the host time its line was seen (s) and the
/// guest's clocks then.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockSample {
    #[serde(skip)]
    pub t: f64,
    pub mono_ns: f64,
    pub real_ns: f64,
    pub tsc: Option<f64>,
    /// The RTC, in whole seconds.
    pub rtc_s: Option<f64>,
}

impl ClockSample {
    fn rtc_minus_real(&self) -> Option<f64> {
        self.rtc_s.map(|rtc| rtc - self.real_ns / 1e9)
    }
}

/// The advance of each clock beyond one sampling interval: 0 when it went
/// on as if no time had passed, about the gap when it jumped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClockAdvance {
    pub mono_ms: f64,
    pub real_ms: f64,
    /// In ms at the TSC rate measured before the checkpoint.
    pub tsc_ms: Option<f64>,
    pub tsc_per_ns: Option<f64>,
    /// Already off by up to 2 s at boot, by chance (the RTC has whole
    /// seconds, and QEMU's RTC seconds tick at its start's sub-second
    /// phase): what the restore did is the change.
    pub rtc_minus_real_s: Option<f64>,
    pub rtc_minus_real_before_s: Option<f64>,
    pub rtc_change_s: Option<f64>,
    pub checkpoint_mono_ns: f64,
    /// The last sample the checkpointed state had taken, and the first
    /// of the restored guest.
    pub before: ClockSample,
    pub after: ClockSample,
    /// Lines of the checkpointed guest the restored copy printed again.
    pub re_emitted: usize,
}

/// The guest's CLOCK_MONOTONIC when it paused for its checkpoint at host
/// time `t_paused`: a sample's mono_ns plus the host time from its
/// arrival to the pause (the VM clock follows the host's while the VM
/// runs). The sample that arrived soonest after it was taken gives the
/// closest, and never later, value.
pub fn checkpoint_mono_ns(samples: &[ClockSample], t_paused: f64) -> Result<f64> {
    let best = samples.iter().filter(|s| s.t < t_paused).map(|s| s.mono_ns + (t_paused - s.t) * 1e9).reduce(f64::max);
    match best {
        Some(m) => Ok(m),
        None => bail!("no clock sample before the checkpoint"),
    }
}

/// Whether a restored guest's sample is its own: not a line of the
/// checkpointed guest printed again (same mono_ns), nor one taken before
/// the checkpoint.
pub fn is_fresh(s: &ClockSample, original: &[ClockSample], m_ck: f64) -> bool {
    s.mono_ns > m_ck && !original.iter().any(|o| o.mono_ns == s.mono_ns)
}

/// Each clock's advance across the gap. R is the restored guest's first
/// fresh sample. P is the last sample the checkpointed state had taken:
/// the original's last with mono_ns below R's, taken before the
/// checkpoint instant (a mekha checkpoint is live: the original goes on
/// sampling until it is killed, and those samples are not in the image)
/// and in an earlier sampling slot than R's.
pub fn clock_advance(
    original: &[ClockSample],
    restored: &[ClockSample],
    t_paused: f64,
    interval_ms: f64,
) -> Result<ClockAdvance> {
    if original.len() < 2 {
        bail!("{} clock sample(s) from the original guest", original.len());
    }
    let m_ck = checkpoint_mono_ns(original, t_paused)?;
    let Some(r) = restored.iter().find(|s| is_fresh(s, original, m_ck)).copied() else {
        bail!("no clock sample from the restored guest");
    };
    let half = interval_ms * 1e6 / 2.0;
    // A 10 ms margin: a sample taken just before the pause whose line
    // came late (m_ck errs early by the quickest line's latency).
    let limit = (r.mono_ns - half).min(m_ck + 10e6);
    let p = original.iter().filter(|s| s.mono_ns < limit).max_by(|a, b| a.mono_ns.total_cmp(&b.mono_ns)).copied();
    let Some(p) = p else { bail!("no clock sample of the original guest before the restored guest's first") };
    let (first, last) = (original[0], original[original.len() - 1]);
    let tsc_per_ns = match (first.tsc, last.tsc) {
        (Some(a), Some(b)) if last.mono_ns > first.mono_ns => Some((b - a) / (last.mono_ns - first.mono_ns)),
        _ => None,
    };
    let tsc_ms = match (tsc_per_ns, r.tsc, p.tsc) {
        (Some(rate), Some(rt), Some(pt)) if rate != 0.0 => Some((rt - pt) / rate / 1e6 - interval_ms),
        _ => None,
    };
    let (after, before) = (r.rtc_minus_real(), p.rtc_minus_real());
    Ok(ClockAdvance {
        mono_ms: (r.mono_ns - p.mono_ns) / 1e6 - interval_ms,
        real_ms: (r.real_ns - p.real_ns) / 1e6 - interval_ms,
        tsc_ms,
        tsc_per_ns,
        rtc_minus_real_s: after,
        rtc_minus_real_before_s: before,
        rtc_change_s: after.zip(before).map(|(a, b)| a - b),
        checkpoint_mono_ns: m_ck,
        before: p,
        after: r,
        re_emitted: restored.iter().filter(|s| original.iter().any(|o| o.mono_ns == s.mono_ns)).count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample at host time `t` (s) of a guest whose clocks read
    /// `mono_s` and `real_s`, TSC at 2 ticks/ns of mono.
    fn sample(t: f64, mono_s: f64, real_s: f64) -> ClockSample {
        ClockSample {
            t,
            mono_ns: mono_s * 1e9,
            real_ns: real_s * 1e9,
            tsc: Some(mono_s * 2e9),
            rtc_s: Some(real_s.floor()),
        }
    }

    #[test]
    fn clocks_that_continue_advance_by_nothing() {
        // Sampled every second from t=100 (mono 10), paused at t=103.5,
        // restored 30 s later with every clock going on from the pause.
        let original: Vec<_> =
            (0..6).map(|i| sample(100.0 + f64::from(i), 10.0 + f64::from(i), 1000.0 + f64::from(i))).collect();
        // The restored guest samples in the same slots, a microsecond off
        // the original's samples of them (taken after the checkpoint).
        let restored: Vec<_> = (0..3)
            .map(|i| sample(134.0 + f64::from(i), 14.000_001 + f64::from(i), 1_004.000_001 + f64::from(i)))
            .chain([original[3]]) // a line printed again
            .collect();
        let a = clock_advance(&original, &restored, 103.5, 1000.0).unwrap();
        assert_eq!(a.before.mono_ns, 13e9);
        assert!((a.after.mono_ns - 14.000_001e9).abs() < 1.0);
        assert!(a.mono_ms.abs() < 0.01 && a.real_ms.abs() < 0.01, "{a:?}");
        assert!(a.tsc_ms.unwrap().abs() < 0.01);
        assert!(a.rtc_change_s.unwrap().abs() < 1e-3);
        assert_eq!(a.re_emitted, 1);
        assert!((a.checkpoint_mono_ns - 13.5e9).abs() < 1.0);
    }

    #[test]
    fn a_realtime_clock_that_jumps_advances_by_the_gap() {
        let original: Vec<_> =
            (0..4).map(|i| sample(100.0 + f64::from(i), 10.0 + f64::from(i), 1000.0 + f64::from(i))).collect();
        let restored = [sample(140.0, 14.0, 1040.0)];
        let a = clock_advance(&original, &restored, 103.5, 1000.0).unwrap();
        assert!(a.mono_ms.abs() < 1e-6);
        assert!((a.real_ms - 36_000.0).abs() < 1e-6, "{a:?}");
        assert!(clock_advance(&original[..1], &restored, 103.5, 1000.0).is_err());
        assert!(clock_advance(&original, &[], 103.5, 1000.0).is_err());
        assert!(checkpoint_mono_ns(&original, 99.0).is_err());
    }
}
