// SPDX-License-Identifier: GPL-2.0-or-later
//! Which generations the disk layers of kept generations still need.
//!
//! A generation's disk layer may be a delta over a layer in an older
//! generation (see [`crate::disk`]): that older generation must stay as
//! long as a kept one's chain reaches it, whatever its age.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::generation::{generation_name, GenEntry};
use crate::disk::{Chain, LAYER_EXTENSION};

/// The generations the disk layers of `kept` (in checkpoint directory
/// `dir`) reach through their parents, `kept` included; none when a
/// layer or chain cannot be read, so that the caller removes nothing it
/// cannot prove unneeded.
pub(super) fn reached(dir: &Path, kept: &[u64]) -> Option<BTreeSet<u64>> {
    let mut reached: BTreeSet<u64> = kept.iter().copied().collect();
    for &number in kept {
        let name = generation_name(number);
        let listing = match fs::read_dir(dir.join(&name)) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return None,
        };
        for entry in listing {
            let file = entry.ok()?.file_name().into_string().ok()?;
            if !file.ends_with(&format!(".{LAYER_EXTENSION}")) {
                continue;
            }
            let chain = Chain::open(dir, &format!("{name}/{file}"), None).ok()?;
            for layer in chain.layers() {
                let generation = layer.name.split('/').next()?;
                match GenEntry::parse(generation)? {
                    GenEntry::Committed(n) => reached.insert(n),
                    GenEntry::Partial(_) => return None,
                };
            }
        }
    }
    Some(reached)
}
