// SPDX-License-Identifier: GPL-2.0-or-later
//! Why a command or a session failed, as a kind a program can act on and
//! a message a person can: `__org.mekha_ErrorKind` beside the `error`
//! text of `query-checkpoint` and `query-restore`. The kind is set where
//! the error is made, never guessed from its text.

use std::io;

use serde::{Deserialize, Serialize};

use crate::cow::CowError;
use crate::disk::DiskError;
use crate::image::ImageError;
use crate::persist::PersistError;

/// `__org.mekha_ErrorKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// An argument is refused (out of range, malformed, contradictory).
    InvalidArgument,
    /// A checkpoint or restore of this VM already runs.
    Busy,
    /// No checkpoint or restore is in a status that allows the command.
    WrongStatus,
    /// This host, this QEMU or this VM cannot do what was asked (no
    /// userfaultfd write protection, shared RAM, writable disks, no
    /// `-incoming defer`).
    Unsupported,
    /// The coordinator was not heard from within its lease.
    LeaseExpired,
    /// The coordinator cancelled it.
    Cancelled,
    /// The file system holding the image is full.
    NoSpace,
    /// The staging budget cannot hold what the pause must copy (the pause
    /// never waits for the disk).
    StagingFull,
    /// Any other failure of the system: reading or writing a file,
    /// userfaultfd.
    Io,
    /// The image is damaged, truncated, of an unknown format, or made
    /// for another VM.
    ImageInvalid,
    /// The image is not the one its key and MAC vouch for.
    NotAuthentic,
    /// QEMU refused a step (stopping or starting the VM, loading the
    /// device state).
    Qemu,
    /// A defect in mekha (a panic inside the library).
    Internal,
    /// The marker of a peer on a NIC's Ethernet segment did not arrive
    /// within the lease: the network cut is incomplete.
    MarkerMissing,
    /// A NIC got the checkpoint's marker from a NIC the coordinator did
    /// not name as its peer: the frames from that NIC were not all saved.
    MarkerUnexpected,
}

/// A failure of the library: its kind and what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// What a program can act on.
    pub kind: ErrorKind,
    /// What happened, worded for the person who has to act.
    pub message: String,
}

/// A result of the library's commands and sessions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }

    /// An argument is refused: [`ErrorKind::InvalidArgument`].
    pub fn invalid_argument(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// The command does not fit the status now: [`ErrorKind::WrongStatus`].
    pub fn wrong_status(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::WrongStatus, message)
    }

    /// This host, QEMU or VM cannot do it: [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// QEMU refused a step: [`ErrorKind::Qemu`].
    pub fn qemu(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Qemu, message)
    }

    /// A defect in mekha: [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }

    /// An I/O failure while doing `what`: no-space for a full file
    /// system, io otherwise.
    pub fn io(what: impl std::fmt::Display, e: &io::Error) -> Error {
        Error::new(io_kind(e), format!("{what}: {e}"))
    }

    /// The same error, its message after `what` was being done.
    pub fn context(self, what: impl std::fmt::Display) -> Error {
        Error { kind: self.kind, message: format!("{what}: {}", self.message) }
    }
}

fn io_kind(e: &io::Error) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
        _ if e.kind() == io::ErrorKind::StorageFull => ErrorKind::NoSpace,
        _ => ErrorKind::Io,
    }
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Error {
        let kind = match &e {
            ImageError::Io { source, .. } => io_kind(source),
            ImageError::Unsealed { .. } | ImageError::OtherKey { .. } | ImageError::Tampered { .. } => {
                ErrorKind::NotAuthentic
            }
            ImageError::BadIdentity(_) => ErrorKind::Unsupported,
            _ => ErrorKind::ImageInvalid,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<DiskError> for Error {
    fn from(e: DiskError) -> Error {
        let kind = match &e {
            DiskError::Io { source, .. } => io_kind(source),
            DiskError::Unsealed { .. } | DiskError::OtherKey { .. } | DiskError::Tampered { .. } => {
                ErrorKind::NotAuthentic
            }
            DiskError::BadExtent { .. } | DiskError::BadRead { .. } | DiskError::BadLayout { .. } => {
                ErrorKind::Internal
            }
            _ => ErrorKind::ImageInvalid,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<PersistError> for Error {
    fn from(e: PersistError) -> Error {
        let kind = match &e {
            PersistError::Write { source, .. }
            | PersistError::Ring(source)
            | PersistError::Sync(source)
            | PersistError::Size(source) => io_kind(source),
        };
        Error::new(kind, e.to_string())
    }
}

impl From<CowError> for Error {
    fn from(e: CowError) -> Error {
        let kind = match &e {
            CowError::Unavailable(_) | CowError::Register { .. } => ErrorKind::Unsupported,
            CowError::StagingFull { .. } => ErrorKind::StagingFull,
            CowError::Aborted => ErrorKind::Cancelled,
            CowError::Stray(_) => ErrorKind::Internal,
            CowError::Protect(_) | CowError::Unprotect(_) | CowError::Events(_) => ErrorKind::Io,
        };
        Error::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_system_is_told_from_other_io_errors() {
        let full = Error::io("writing the image", &io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.kind, ErrorKind::NoSpace);
        assert!(full.message.starts_with("writing the image: No space left"), "{full}");
        let denied = Error::io("image directory /x", &io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(denied.kind, ErrorKind::Io);
        let written = PersistError::Write {
            first_page: 0,
            pages: 1,
            more: 0,
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(Error::from(written).kind, ErrorKind::NoSpace);
    }

    #[test]
    fn context_keeps_the_kind() {
        let e = Error::invalid_argument("too large").context("staging-mib");
        assert_eq!(e, Error::invalid_argument("staging-mib: too large"));
    }

    #[test]
    fn kinds_are_the_schema_names() {
        assert_eq!(serde_json::to_value(ErrorKind::LeaseExpired).unwrap(), "lease-expired");
        assert_eq!(serde_json::from_value::<ErrorKind>("no-space".into()).unwrap(), ErrorKind::NoSpace);
    }
}
