// SPDX-License-Identifier: GPL-2.0-or-later
//! Scratch space for targets whose parsers read files: in memory, so that
//! a run costs no disk and leaves nothing behind.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

/// An anonymous in-memory file (memfd) and a path that opens it again,
/// as a parser that takes a path needs.
pub struct MemFile {
    file: File,
    path: PathBuf,
}

impl MemFile {
    pub fn new(name: &CStr) -> io::Result<MemFile> {
        // SAFETY: memfd_create takes a NUL-terminated name and returns a
        // new descriptor, which the File owns from here on.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor no one else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Ok(MemFile { file, path })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Opening this path opens the same file anew (a new file offset).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A fresh directory in memory (`/dev/shm` where there is one).
pub fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    made.expect("a scratch directory")
}
