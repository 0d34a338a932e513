// SPDX-License-Identifier: GPL-2.0-or-later
//! The VM's writable disks in a checkpoint: captured at the stop instant
//! with RAM and devices (`capture`), incremental from the last committed
//! generation (`tracking`), written as one layer file per disk next to
//! the VM's image.

pub(crate) mod capture;
pub(crate) mod restore;
pub(crate) mod tracking;

use std::path::{Path, PathBuf};

use mekha_ckpt_core::disk;

/// A file-name-safe key for a disk, from its device id (a qdev id, or a
/// QOM path for a device without one): readable, and unique by a hash.
pub(crate) fn disk_key(device: &str) -> String {
    let readable: String = device
        .rsplit('/')
        .find(|part| !part.is_empty() && *part != "virtio-backend")
        .unwrap_or(device)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(32)
        .collect();
    format!("{readable}-{:08x}", crc32c::crc32c(device.as_bytes()))
}

/// `image`'s sibling `<image stem>.<suffix>`: the files of a VM's image.
pub(crate) fn sibling(image: &Path, suffix: &str) -> PathBuf {
    let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    image.with_file_name(format!("{stem}.{suffix}"))
}

/// The layer file of the disk keyed `key` (see [`disk_key`]) beside
/// `image`.
pub(crate) fn layer_path(image: &Path, key: &str) -> PathBuf {
    sibling(image, &format!("{key}.{}", disk::LAYER_EXTENSION))
}

/// `path`'s name relative to its checkpoint directory: its generation
/// directory's name and its own (`gen-000007/node1.vda-1234abcd.mdisk`).
pub(crate) fn name_in_checkpoint(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let generation = path.parent()?.file_name()?.to_str()?;
    Some(format!("{generation}/{file}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_readable_and_distinct() {
        let a = disk_key("/machine/peripheral-anon/device[0]/virtio-backend");
        let b = disk_key("/machine/peripheral-anon/device[1]/virtio-backend");
        assert!(a.starts_with("device-0--"), "{a}");
        assert_ne!(a, b);
        assert!(disk_key("disk0").starts_with("disk0-"));
    }
}
