// SPDX-License-Identifier: GPL-2.0-or-later
//! The values of the command line's enumerated options, as it spells and
//! documents them (`--mode`, `--time`, `--policy`, `--role`); each becomes
//! the library's own type, which knows nothing of clap (as the spec file
//! has its own spellings in `spec`).

use mekha_coordinator::ckpt::{CaptureMode, TimePolicy};
use mekha_coordinator::tls::Role;

/// [`CaptureMode`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Copy-on-write where the VM and host allow it, MTD otherwise.
    Auto,
    /// MTD: copy while running, stop for the last dirty pages.
    Mtd,
    /// Copy-on-write: stop only to write-protect RAM.
    Cow,
}

impl From<ModeArg> for CaptureMode {
    fn from(m: ModeArg) -> CaptureMode {
        match m {
            ModeArg::Auto => CaptureMode::Auto,
            ModeArg::Mtd => CaptureMode::Mtd,
            ModeArg::Cow => CaptureMode::Cow,
        }
    }
}

/// [`TimePolicy`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TimeArg {
    /// Every guest clock resumes from the checkpoint instant.
    Continue,
    /// Stock QEMU: the RTC jumps to the host's time.
    Host,
    /// Resume from the instant, then run faster until caught up with the host.
    CatchUp,
}

impl From<TimeArg> for TimePolicy {
    fn from(t: TimeArg) -> TimePolicy {
        match t {
            TimeArg::Continue => TimePolicy::Continue,
            TimeArg::Host => TimePolicy::Host,
            TimeArg::CatchUp => TimePolicy::CatchUp,
        }
    }
}

/// [`Role`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Reads only: an agent's storage report, its VMs' pids, checks of
    /// committed images.
    Monitor,
    /// Checkpoints and restores running VMs: QMP sockets, checkpoint parts.
    Operator,
    /// Starts and stops VMs (QEMU as root with the spec's arguments).
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Monitor => Role::Monitor,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;
    use mekha_ckpt_core::session::checkpoint::Mode;
    use mekha_ckpt_core::vtime;

    /// The command line spells each value as the library does (QMP's and
    /// the certificates' spellings).
    #[test]
    fn spellings_are_the_librarys() {
        for m in ModeArg::value_variants() {
            assert_eq!(m.to_possible_value().unwrap().get_name(), Mode::from(CaptureMode::from(*m)).as_str());
        }
        for t in TimeArg::value_variants() {
            assert_eq!(
                t.to_possible_value().unwrap().get_name(),
                vtime::TimePolicy::from(TimePolicy::from(*t)).as_str()
            );
        }
        for r in RoleArg::value_variants() {
            assert_eq!(r.to_possible_value().unwrap().get_name(), Role::from(*r).as_str());
        }
    }
}
