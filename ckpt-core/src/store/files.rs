// SPDX-License-Identifier: GPL-2.0-or-later
//! Small files of a checkpoint directory (the manifest, the directory's
//! id) replaced atomically and durably.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};
use crate::image::sync_dir;
use crate::private;

/// Replaces `dir/name` with `bytes` atomically and durably: written to
/// `name.tmp` (owner-only) and synced, renamed, the directory synced. A
/// crash leaves the old file or the new one, and perhaps the `.tmp`.
pub(super) fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = write_tmp(dir, name, bytes)?;
    install_tmp(dir, &tmp, name)
}

/// [`replace_file`]'s first half: `dir/name.tmp`, written and synced.
pub(super) fn write_tmp(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = private::create_file(&tmp).map_err(StoreError::io("writing", &tmp))?;
    file.write_all(bytes).map_err(StoreError::io("writing", &tmp))?;
    file.sync_all().map_err(StoreError::io("syncing", &tmp))?;
    Ok(tmp)
}

/// [`replace_file`]'s second half: `tmp` renamed to `dir/name`, durably.
pub(super) fn install_tmp(dir: &Path, tmp: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    fs::rename(tmp, &path).map_err(StoreError::io("replacing", &path))?;
    sync_dir(dir).map_err(StoreError::io("syncing", dir))
}

pub(super) fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("removing", path)(e)),
        _ => Ok(()),
    }
}
