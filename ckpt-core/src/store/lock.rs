// SPDX-License-Identifier: GPL-2.0-or-later
//! One writer per checkpoint directory: `DIR/.lock`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::error::{Result, StoreError};
use crate::private;

pub(super) const LOCK: &str = ".lock";

/// Exclusive `flock` on `dir/.lock`, released when the file closes (also
/// when the process dies, so it never goes stale). Tried for a short
/// while: a child forked while an earlier holder had the file open keeps
/// the lock until it execs, microseconds later.
pub(super) fn exclusive(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let file = private::file_options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| StoreError::NotWritable { path: dir.to_owned(), source })?;
    for attempt in 0.. {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock {
            return Err(StoreError::io("locking", &path)(e));
        }
        if attempt == 20 {
            return Err(StoreError::Busy { path: dir.to_owned() });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(file)
}
