// SPDX-License-Identifier: GPL-2.0-or-later
//! `__org.mekha_query-time` and `__org.mekha_set-time`: how a VM's clocks
//! stand to the host's, and changing the policy of a running VM.

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use crate::vtime::{TimePolicy, DEFAULT_CATCH_UP_PPM};

/// `__org.mekha_TimeInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Info {
    /// The time policy in force.
    pub policy: TimePolicy,
    /// How far the guest's wall clock (QEMU's host clock, which the RTC
    /// reads) lags the host's, ns.
    pub lag_ns: i64,
    /// The catch-up rate, parts per million (only under catch-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_ppm: Option<u32>,
    /// Whether guest time is catching up now.
    pub catching_up: bool,
    /// How far catch-up moved the VM clock forward so far, ns.
    pub advanced_ns: i64,
    /// The VM clock: ns of guest time run so far.
    pub virtual_ns: i64,
}

/// The arguments of `__org.mekha_set-time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SetArgs {
    /// The new policy: continue keeps the lag, host drops it at once,
    /// catch-up runs guest time faster until it is gone.
    pub policy: TimePolicy,
    /// With catch-up, the rate, parts per million (default 50000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_ppm: Option<u32>,
}

/// A catch-up rate (`catch-up-ppm`), checked; the default without one.
pub fn catch_up_ppm(ppm: Option<u32>) -> Result<u32> {
    match ppm {
        Some(0) => Err(Error::invalid_argument("catch-up-ppm must be positive")),
        Some(p) if p > 1_000_000 => {
            Err(Error::invalid_argument("catch-up-ppm above 1000000 would run guest time more than twice as fast"))
        }
        Some(p) => Ok(p),
        None => Ok(DEFAULT_CATCH_UP_PPM),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_rates_are_checked() {
        assert_eq!(catch_up_ppm(None), Ok(DEFAULT_CATCH_UP_PPM));
        assert_eq!(catch_up_ppm(Some(1_000_000)), Ok(1_000_000));
        assert_eq!(catch_up_ppm(Some(0)).unwrap_err().kind, crate::session::ErrorKind::InvalidArgument);
        assert!(catch_up_ppm(Some(1_000_001)).is_err());
    }
}
