// SPDX-License-Identifier: GPL-2.0-or-later
//! A restarted guest's way back to its steady rate: when its progress
//! (compute steps, or messages received) holds a share of the rate it had
//! before the checkpoint again. A restored TCG guest starts with an empty
//! translation cache and, restored lazily, faults its pages in: it runs
//! slower for a while, and a UDP receiver may overrun then. Pure functions
//! of (host time, count) points, in order (the points of [`progress`]).
//!
//! [`progress`]: super::progress

use std::collections::BTreeMap;

use super::console::TimedProbeEvent;
use super::progress::{step_at, Point};

/// The instants tried, this far apart (s).
const STEP: f64 = 0.025;

/// Seconds from `t0` until the rate over `[t, t + hold]` is at least
/// `share` of `rate` for the first time; none when the points end before.
/// The rate is averaged over `hold` since single events come every few
/// tens of ms (compute) or every second (messages).
pub fn back_after(points: &[Point], rate: f64, t0: f64, share: f64, hold: f64) -> Option<f64> {
    let last = points.last()?.0;
    if rate <= 0.0 || hold <= 0.0 {
        return None;
    }
    let mut t = t0;
    while t + hold <= last {
        let (a, b) = (step_at(points, t).ok()?, step_at(points, t + hold).ok()?);
        if (b - a) / hold >= share * rate {
            return Some(t - t0);
        }
        t += STEP;
    }
    None
}

/// Every receive counter of a VM's probe as one count over time: at each
/// `net` event, the sum of the latest `received` of every stream.
pub fn messages(events: &[TimedProbeEvent]) -> Vec<Point> {
    let mut latest: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e.event.ev == "net") {
        let (Some(peer), Some(received)) = (e.event.str("peer"), e.event.u64("received")) else { continue };
        let proto = e.event.str("proto").unwrap_or("").to_owned();
        latest.insert((peer.to_owned(), proto), received);
        let total: u64 = latest.values().sum();
        // Events of one report share their host time: keep the last sum.
        if out.last().is_some_and(|p: &Point| p.0 == e.t) {
            out.pop();
        }
        out.push((e.t, total as f64));
    }
    out
}

/// The compute steps of a VM's probe over time.
pub fn steps(events: &[TimedProbeEvent]) -> Vec<Point> {
    events.iter().filter(|e| e.event.ev == "compute").filter_map(|e| Some((e.t, e.event.u64("step")? as f64))).collect()
}

/// Messages the probe counted lost (`net_anomaly` of kind `lost`), split by
/// the host time it reported them: before `t_back`, while it was still
/// slow, and from then on.
pub fn lost_split(events: &[TimedProbeEvent], t_back: Option<f64>) -> (u64, u64) {
    let mut split = (0, 0);
    for e in events.iter().filter(|e| e.event.ev == "net_anomaly" && e.event.str("kind") == Some("lost")) {
        let count = e.event.u64("count").unwrap_or(1);
        if t_back.is_none_or(|t| e.t < t) {
            split.0 += count;
        } else {
            split.1 += count;
        }
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::parse_line;

    fn event(t: f64, line: &str) -> TimedProbeEvent {
        TimedProbeEvent { t, event: parse_line(&format!("@probe {line}")).unwrap() }
    }

    #[test]
    fn back_once_the_rate_holds_the_share() {
        // 1000 steps/s, nothing for 1 s after t=10, then 500/s for 1 s,
        // then 1000/s again from t=12.
        let mut pts = vec![(9.0, 0.0), (10.0, 1000.0), (11.0, 1000.0), (12.0, 1500.0)];
        pts.extend((1..=40).map(|i| (12.0 + f64::from(i) * 0.1, 1500.0 + f64::from(i) * 100.0)));
        let back = back_after(&pts, 1000.0, 10.0, 0.9, 0.5).unwrap();
        // [t, t+0.5] averages 900/s once 0.1 s of it is still at 500/s.
        assert!((back - 1.9).abs() < STEP, "{back}");
        assert_eq!(back_after(&pts, 1000.0, 10.0, 0.9, 10.0), None, "the points end first");
        assert_eq!(back_after(&pts, 0.0, 10.0, 0.9, 0.5), None);
        // Already at the rate: back at once.
        assert_eq!(back_after(&pts, 1000.0, 12.0, 0.9, 0.5), Some(0.0));
    }

    #[test]
    fn messages_add_up_every_stream() {
        let events = [
            event(1.0, r#"{"ev":"net","peer":"a","proto":"tcp","received":10}"#),
            event(1.0, r#"{"ev":"net","peer":"a","proto":"udp","received":5}"#),
            event(1.5, r#"{"ev":"compute","step":7}"#),
            event(2.0, r#"{"ev":"net","peer":"a","proto":"tcp","received":20}"#),
        ];
        assert_eq!(messages(&events), [(1.0, 15.0), (2.0, 25.0)]);
        assert_eq!(steps(&events), [(1.5, 7.0)]);
    }

    #[test]
    fn losses_split_at_the_instant_the_guest_was_back() {
        let events = [
            event(1.0, r#"{"ev":"net_anomaly","kind":"lost","count":3}"#),
            event(2.0, r#"{"ev":"net_anomaly","kind":"dup"}"#),
            event(3.0, r#"{"ev":"net_anomaly","kind":"lost","count":2}"#),
        ];
        assert_eq!(lost_split(&events, Some(2.5)), (3, 2));
        assert_eq!(lost_split(&events, None), (5, 0), "never back: every loss while slow");
    }
}
