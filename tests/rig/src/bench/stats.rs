// SPDX-License-Identifier: GPL-2.0-or-later
//! The few statistics the benches report, and how they print figures.

use std::time::{SystemTime, UNIX_EPOCH};

/// The host's wall clock (CLOCK_REALTIME) in seconds: the clock of QEMU's
/// event timestamps, so that both go on one axis.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The median of the values present (the mean of the middle two for an
/// even count); none when no value is.
pub fn median(values: &[Option<f64>]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().flatten().copied().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// Largest minus smallest of the values present.
pub fn spread(values: &[Option<f64>]) -> Option<f64> {
    let v: Vec<f64> = values.iter().flatten().copied().collect();
    let max = v.iter().copied().reduce(f64::max)?;
    let min = v.iter().copied().reduce(f64::min)?;
    Some(max - min)
}

/// The spread, but only when every value is present (a VM without the
/// figure makes the spread over the others meaningless).
pub fn spread_all(values: &[Option<f64>]) -> Option<f64> {
    if values.iter().any(Option::is_none) {
        return None;
    }
    spread(values)
}

/// `a / b`, none when either is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// Seconds to milliseconds, keeping a missing value missing.
pub fn ms(seconds: Option<f64>) -> Option<f64> {
    seconds.map(|s| s * 1000.0)
}

/// A figure for a table: `digits` decimals, thousands grouped with commas,
/// `suffix` after it; `-` when missing.
pub fn fmt(value: Option<f64>, digits: usize, suffix: &str) -> String {
    let Some(v) = value else { return "-".into() };
    let text = format!("{:.*}", digits, v.abs());
    let (int, frac) = text.split_once('.').map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if v.is_sign_negative() { "-" } else { "" };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}{suffix}"),
        None => format!("{sign}{grouped}{suffix}"),
    }
}

/// A figure for a log line: `digits` decimals, no grouping; `-` when
/// missing.
pub fn plain(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_skips_missing_values() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[None, None]), None);
        assert_eq!(median(&[Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median(&[Some(4.0), Some(1.0), Some(2.0), Some(3.0)]), Some(2.5));
    }

    #[test]
    fn spread_is_largest_minus_smallest() {
        assert_eq!(spread(&[Some(1.5), None, Some(4.0), Some(2.0)]), Some(2.5));
        assert_eq!(spread(&[None]), None);
        assert_eq!(spread_all(&[Some(1.0), None, Some(3.0)]), None);
        assert_eq!(spread_all(&[Some(1.0), Some(3.0)]), Some(2.0));
    }

    #[test]
    fn ratio_needs_both_and_a_nonzero_divisor() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }

    #[test]
    fn figures_print_as_the_tables_want_them() {
        assert_eq!(fmt(None, 1, ""), "-");
        assert_eq!(fmt(Some(1234567.891), 1, ""), "1,234,567.9");
        assert_eq!(fmt(Some(999.6), 0, ""), "1,000");
        assert_eq!(fmt(Some(0.0004), 3, ""), "0.000");
        assert_eq!(fmt(Some(-1234.5), 0, "x"), "-1,234x");
        assert_eq!(fmt(Some(12.25), 2, " ms"), "12.25 ms");
        assert_eq!(plain(Some(1234.56), 1), "1234.6");
        assert_eq!(plain(None, 1), "-");
    }
}
