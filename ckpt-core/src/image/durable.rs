// SPDX-License-Identifier: GPL-2.0-or-later
//! Small file-system helpers for crash-safe writes: a file is durable only
//! once its data and the directory entry naming it are both synced.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Flushes a directory's entries (renames, creations, removals in it).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `partial` afresh, read-write for its owner only, first
/// removing a stale one that a crashed run left.
pub(crate) fn create_partial(partial: &Path) -> io::Result<File> {
    match fs::remove_file(partial) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io::Error::new(e.kind(), format!("removing the stale one: {e}")));
        }
        _ => {}
    }
    crate::private::file_options().read(true).write(true).create_new(true).open(partial)
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `path` with `suffix` appended to its file name (`a/b.mekha` → `a/b.mekha.partial`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

pub(crate) fn now_unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| crate::width::saturating_u64(d.as_nanos()))
}
