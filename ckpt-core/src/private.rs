// SPDX-License-Identifier: GPL-2.0-or-later
//! Files and directories only their owner can open. An image is a VM's
//! memory (its keys and passwords), and whoever can write a checkpoint
//! directory can put code into a guest at its next restart: everything
//! mekha creates for a checkpoint is 0600 (files) or 0700 (directories)
//! from the moment it exists, whatever the umask.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of every file mekha creates for a checkpoint: read-write, owner only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory mekha creates for a checkpoint: owner only.
pub const DIR_MODE: u32 = 0o700;

/// Options for a new file readable and writable by its owner only.
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates (or truncates) `path` as an owner-only file for writing.
pub fn create_file(path: &Path) -> io::Result<File> {
    file_options().write(true).create(true).truncate(true).open(path)
}

/// Creates directory `path` for its owner only.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Creates directory `path` and its missing parents for their owner only
/// (existing ones keep their modes: they are the user's).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The mode bits of `path`.
    pub fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn what_is_created_is_the_owners_only() {
        let tmp = tempfile::tempdir().unwrap();
        create_dir_all(&tmp.path().join("a/b")).unwrap();
        create_dir(&tmp.path().join("a/b/c")).unwrap();
        create_file(&tmp.path().join("a/b/c/f")).unwrap();
        for dir in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&tmp.path().join(dir)), DIR_MODE, "{dir}");
        }
        assert_eq!(mode(&tmp.path().join("a/b/c/f")), FILE_MODE);
    }
}
