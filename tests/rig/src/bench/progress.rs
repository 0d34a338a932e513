// SPDX-License-Identifier: GPL-2.0-or-later
//! Guest progress from the probe's `compute` events, against host time:
//! the steady rate, the work lost over a window, the longest stall and the
//! progress line of the timeline. Pure functions of (host time, step)
//! points, in order.

use anyhow::{bail, Result};

/// One `compute` event: the host time its line was seen (s) and the step
/// the guest had reached.
pub type Point = (f64, f64);

/// Steps done at host time `t`, interpolated between the events around it.
pub fn step_at(points: &[Point], t: f64) -> Result<f64> {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        bail!("no compute events around t={t:.3}");
    };
    if t < first.0 || t > last.0 {
        bail!("no compute events around t={t:.3} (events from {:.3} to {:.3})", first.0, last.0);
    }
    if points.len() == 1 {
        return Ok(first.1);
    }
    // The last point at or before t, and the one after it.
    let hi = points.partition_point(|p| p.0 <= t).clamp(1, points.len() - 1);
    let ((t1, s1), (t2, s2)) = (points[hi - 1], points[hi]);
    if t2 == t1 {
        return Ok(s1);
    }
    Ok(s1 + (s2 - s1) * (t - t1) / (t2 - t1))
}

/// Steps per host second over the events within `[a, b]`.
pub fn rate_between(points: &[Point], a: f64, b: f64) -> Result<f64> {
    let inside: Vec<&Point> = points.iter().filter(|p| a <= p.0 && p.0 <= b).collect();
    if inside.len() < 2 {
        bail!("fewer than 2 compute events in [{a:.3}, {b:.3}]");
    }
    let ((t1, s1), (t2, s2)) = (inside[0], inside[inside.len() - 1]);
    Ok((s2 - s1) / (t2 - t1))
}

/// The work lost over `[ts, te]` against `rate`, in ms of steady progress.
pub fn lost_ms(points: &[Point], rate: f64, ts: f64, te: f64) -> Result<f64> {
    let expected = rate * (te - ts);
    let actual = step_at(points, te)? - step_at(points, ts)?;
    Ok((expected - actual) / rate * 1000.0)
}

/// `(t - t0, % of rate)` every `STEP` s over `[a, b]`: the rate over the
/// `WIDTH` s centred on each instant (events come every few tens of ms and
/// the guest shares its vCPU between computing and dirtying, so a shorter
/// window is mostly noise).
pub fn progress_series(points: &[Point], rate: f64, t0: f64, a: f64, b: f64) -> Vec<(f64, f64)> {
    const STEP: f64 = 0.025;
    const WIDTH: f64 = 0.1;
    let (Some(first), Some(last)) = (points.first(), points.last()) else { return Vec::new() };
    let end = b.min(last.0 - WIDTH / 2.0);
    let mut t = a.max(first.0 + WIDTH / 2.0);
    let mut out = Vec::new();
    while t <= end {
        if let (Ok(hi), Ok(lo)) = (step_at(points, t + WIDTH / 2.0), step_at(points, t - WIDTH / 2.0)) {
            out.push((t - t0, 100.0 * (hi - lo) / WIDTH / rate));
        }
        t += STEP;
    }
    out
}

/// The longest time without an event over `[t0, te]`, counting from the
/// last event before it to the first after it: (length s, its start).
pub fn longest_stall(points: &[Point], t0: f64, te: f64) -> Option<(f64, f64)> {
    let before = points.iter().rev().find(|p| p.0 < t0);
    let after = points.iter().find(|p| p.0 > te);
    let edges: Vec<f64> =
        before.into_iter().chain(points.iter().filter(|p| t0 <= p.0 && p.0 <= te)).chain(after).map(|p| p.0).collect();
    edges.windows(2).map(|w| (w[1] - w[0], w[0])).max_by(|x, y| x.0.total_cmp(&y.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event every 0.1 s from t=10 to t=20, none between 14.0 and 14.9.
    fn stalled() -> Vec<Point> {
        (0..=100).filter(|i| !(41..49).contains(i)).map(|i| (10.0 + f64::from(i) * 0.1, f64::from(i))).collect()
    }

    #[test]
    fn steps_interpolate_between_events() {
        let pts = [(1.0, 0.0), (2.0, 100.0), (4.0, 100.0)];
        assert_eq!(step_at(&pts, 1.5).unwrap(), 50.0);
        assert_eq!(step_at(&pts, 2.0).unwrap(), 100.0);
        assert_eq!(step_at(&pts, 4.0).unwrap(), 100.0);
        assert!(step_at(&pts, 0.5).is_err());
        assert!(step_at(&[], 1.0).is_err());
        assert_eq!(step_at(&[(1.0, 7.0)], 1.0).unwrap(), 7.0);
    }

    #[test]
    fn lost_work_is_the_shortfall_against_the_steady_rate() {
        let pts = [(0.0, 0.0), (1.0, 1000.0), (2.0, 1000.0), (3.0, 2000.0)];
        let rate = rate_between(&pts, 0.0, 1.0).unwrap();
        assert_eq!(rate, 1000.0);
        // One second without progress in [0.5, 2.5].
        assert!((lost_ms(&pts, rate, 0.5, 2.5).unwrap() - 1000.0).abs() < 1e-9);
        assert!(rate_between(&pts, 0.1, 0.9).is_err());
    }

    #[test]
    fn the_longest_stall_spans_the_window_edges() {
        let pts = stalled();
        let (gap, at) = longest_stall(&pts, 13.0, 16.0).unwrap();
        assert!((gap - 0.9).abs() < 1e-6, "{gap}");
        assert!((at - 14.0).abs() < 1e-6, "{at}");
        // A window between two events: the gap around it.
        let (gap, _) = longest_stall(&[(0.0, 0.0), (2.0, 1.0)], 0.5, 1.5).unwrap();
        assert_eq!(gap, 2.0);
        assert_eq!(longest_stall(&[], 0.0, 1.0), None);
    }

    #[test]
    fn the_progress_line_is_a_percentage_of_the_rate() {
        let pts: Vec<Point> = (0..=40).map(|i| (f64::from(i) * 0.05, f64::from(i) * 50.0)).collect();
        let line = progress_series(&pts, 1000.0, 1.0, 0.0, 2.0);
        assert!(!line.is_empty());
        assert!(line.iter().all(|&(_, pct)| (pct - 100.0).abs() < 1e-6));
        assert!((line[0].0 - (0.05 - 1.0)).abs() < 1e-9);
    }
}
