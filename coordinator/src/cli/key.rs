// SPDX-License-Identifier: GPL-2.0-or-later
//! `mekha key` and `--key-file`: the cluster's image key on the command
//! line.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use mekha_ckpt_core::image::ImageKey;

use super::exit::{self, CommandFailure};

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Write a new random image key to FILE, readable by its owner only
    /// (an existing file is never replaced: what it sealed would be
    /// refused). Prints the key's id.
    New {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Loads `--key-file` (or a spec's `key_file`), if given: a key that
/// cannot be used is a usage error.
pub fn load(path: Option<&Path>) -> Result<Option<ImageKey>, CommandFailure> {
    path.map(ImageKey::load).transpose().map_err(|e| CommandFailure::new(exit::USAGE, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_unusable_key_file_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let key = mekha_coordinator::image_key::create(&path).unwrap();
        assert_eq!(load(Some(&path)).unwrap().unwrap().id(), key.id());
        assert!(load(None).unwrap().is_none());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let refused = load(Some(&path)).unwrap_err();
        assert!(refused.code == exit::USAGE && refused.message.contains("chmod 600"), "{}", refused.message);
    }
}
