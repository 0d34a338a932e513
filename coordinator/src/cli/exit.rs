// SPDX-License-Identifier: GPL-2.0-or-later
//! Exit codes of the `mekha` tool, stable for batch schedulers' scripts.

/// Success.
pub const OK: u8 = 0;
/// Any failure not covered below.
pub const FAILURE: u8 = 1;
/// Bad command line (clap's own code).
pub const USAGE: u8 = 2;
/// A VM could not be reached over QMP (or ssh, or its host's agent did not
/// answer or refused our certificate).
pub const UNREACHABLE: u8 = 3;
/// A VM's QEMU does not have the mekha patches.
pub const NOT_MEKHA: u8 = 4;
/// An image or checkpoint is damaged (`mekha image verify`/`inspect`).
pub const DAMAGED: u8 = 5;

/// Why a command did not succeed, and its exit code.
#[derive(Debug)]
pub struct CommandFailure {
    pub code: u8,
    pub message: String,
}

impl CommandFailure {
    pub fn new(code: u8, message: impl Into<String>) -> CommandFailure {
        CommandFailure { code, message: message.into() }
    }
}

impl From<mekha_coordinator::qmp::QmpError> for CommandFailure {
    fn from(e: mekha_coordinator::qmp::QmpError) -> CommandFailure {
        use mekha_coordinator::qmp::QmpError;
        let code = match &e {
            QmpError::Connect { .. } | QmpError::Closed { .. } | QmpError::Protocol { .. } => UNREACHABLE,
            e if e.is_command_not_found() => NOT_MEKHA,
            _ => FAILURE,
        };
        let message = if code == NOT_MEKHA {
            format!("{e} (this QEMU was not built with the mekha patches)")
        } else {
            e.to_string()
        };
        CommandFailure { code, message }
    }
}

impl From<mekha_coordinator::ckpt::CkptError> for CommandFailure {
    fn from(e: mekha_coordinator::ckpt::CkptError) -> CommandFailure {
        match e {
            mekha_coordinator::ckpt::CkptError::Qmp(q) => CommandFailure::from(q),
            mekha_coordinator::ckpt::CkptError::Unreachable(message) => CommandFailure { code: UNREACHABLE, message },
            e => CommandFailure { code: FAILURE, message: e.to_string() },
        }
    }
}
