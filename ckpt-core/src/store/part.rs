// SPDX-License-Identifier: GPL-2.0-or-later
//! A host's part of a cluster checkpoint, for a host that does not share
//! the checkpoint directory with the host that commits the manifest.
//!
//! ```text
//! DIR/PARTS.json             marker: this DIR keeps parts, naming the committer
//! DIR/gen-000007/node3.mekha this host's images of generation 7
//! DIR/gen-000008.partial/    generation 8 being written
//! ```
//!
//! There is no manifest here: the committing host's `DIR/MANIFEST.json`
//! names these images (with this host). The committer drives each step by
//! generation number — [`Store::begin_part`] before the images are written,
//! [`Store::seal_part`] once they are (synced, directory renamed to its
//! final name: ready to be named) or [`Store::abort_part`] — and decides
//! which generations stay: a host cannot tell by itself which of its sealed
//! generations a manifest names, so it keeps exactly those it is told to.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{remove_if_present, replace_file};
use super::generation::{generation_name, seal_images, GenEntry};
use super::{ManifestVm, Result, Store, StoreError, IMAGE_EXTENSION, MANIFEST};
use crate::image::sync_dir;
use crate::private;

/// File name of the marker of a directory keeping parts.
pub const PARTS_MARKER: &str = "PARTS.json";

/// `DIR/PARTS.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartsMarker {
    /// The host whose manifest names this directory's images.
    pub committer: String,
    /// The id of the committer's checkpoint directory ([`Store::id`]): the
    /// cluster whose images these are. Absent in markers of mekha before
    /// it had ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

impl PartsMarker {
    /// The marker of `dir`, if it keeps parts.
    pub fn read(dir: &Path) -> Result<Option<PartsMarker>> {
        let path = dir.join(PARTS_MARKER);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::BadManifest { path, reason: e.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("reading", &path)(e)),
        }
    }

    fn write(&self, dir: &Path) -> Result<()> {
        replace_file(dir, PARTS_MARKER, &serde_json::to_vec(self).expect("a marker encodes as JSON"))
    }
}

impl Store {
    /// Starts this host's part of generation `number` for `committer`,
    /// whose checkpoint directory has id `cluster`: removes every generation
    /// not in `keep` (what the committer's manifest may still name) and
    /// creates `gen-<N>.partial/`. A directory keeping another cluster's
    /// parts, or generations no marker claims, is refused: nothing of
    /// another cluster is ever deleted.
    pub fn begin_part(&self, number: u64, keep: &[u64], committer: &str, cluster: &str) -> Result<PathBuf> {
        let _lock = super::lock::exclusive(&self.dir)?;
        if self.dir.join(MANIFEST).exists() {
            return Err(StoreError::HoldsManifest { path: self.dir.clone() });
        }
        let marker = PartsMarker { committer: committer.to_owned(), cluster: Some(cluster.to_owned()) };
        match PartsMarker::read(&self.dir)? {
            Some(found) if found == marker => {}
            // The same cluster, committed from another host now; or a
            // marker from before ids, of the same committer: adopted.
            Some(found) if found.cluster.as_deref() == Some(cluster) => marker.write(&self.dir)?,
            Some(found) if found.cluster.is_none() && found.committer == committer => marker.write(&self.dir)?,
            Some(found) => {
                return Err(StoreError::OtherCluster {
                    path: self.dir.clone(),
                    committer: found.committer,
                    cluster: found.cluster.unwrap_or_else(|| "unknown".into()),
                })
            }
            None => {
                self.refuse_unnamed_generations()?;
                marker.write(&self.dir)?;
            }
        }
        // What the kept generations' disk layers build on stays too; all
        // does when that cannot be read.
        let reached = super::chains::reached(&self.dir, keep);
        let kept = |n: u64| reached.as_ref().is_none_or(|r| r.contains(&n));
        for (name, entry) in self.generation_entries()? {
            if matches!(entry, GenEntry::Partial(_)) || !kept(entry.number()) {
                let path = self.dir.join(name);
                fs::remove_dir_all(&path).map_err(StoreError::io("removing generation", &path))?;
            }
        }
        let path = self.part_path(number);
        private::create_dir(&path).map_err(StoreError::io("creating generation directory", &path))?;
        sync_dir(&self.dir).map_err(StoreError::io("syncing", &self.dir))?;
        Ok(path)
    }

    /// Seals this host's part of generation `number`: every image of
    /// `vms` is there, valid and synced, and the directory has its final
    /// name. Returns the images' manifest entries (without the host, which
    /// the committer fills in).
    pub fn seal_part(&self, number: u64, vms: &[String]) -> Result<Vec<ManifestVm>> {
        let _lock = super::lock::exclusive(&self.dir)?;
        let partial = self.part_path(number);
        let final_name = generation_name(number);
        let images: Vec<(&str, PathBuf)> =
            vms.iter().map(|vm| (vm.as_str(), partial.join(format!("{vm}.{IMAGE_EXTENSION}")))).collect();
        let entries = seal_images(&partial, &final_name, &images, self.key.as_ref())?;
        let final_path = self.dir.join(&final_name);
        fs::rename(&partial, &final_path).map_err(StoreError::io("renaming generation to", &final_path))?;
        sync_dir(&self.dir).map_err(StoreError::io("syncing", &self.dir))?;
        Ok(entries)
    }

    /// Drops this host's unfinished part of generation `number`, if any.
    pub fn abort_part(&self, number: u64) -> Result<()> {
        let _lock = super::lock::exclusive(&self.dir)?;
        let path = self.part_path(number);
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(StoreError::io("removing", &path)(e)),
            _ => {}
        }
        remove_if_present(&self.dir.join(format!("{PARTS_MARKER}.tmp")))?;
        sync_dir(&self.dir).map_err(StoreError::io("syncing", &self.dir))
    }

    fn part_path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{}.partial", generation_name(number)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{checkpoint, listing, write_images};
    use super::*;

    /// The committer's directory id (made by its first begin).
    fn cluster(committer: &Store) -> String {
        committer.id().unwrap().expect("begin made the id")
    }

    /// What a committer does with one part host: begin, write, seal, commit.
    fn checkpoint_with_part(committer: &Store, host: &Store, local: &[&str], remote: &[&str]) -> u64 {
        let generation = committer.begin().unwrap();
        let keep: Vec<u64> = committer.latest().unwrap().map(|m| m.generation).into_iter().collect();
        let part = host.begin_part(generation.number(), &keep, "committer", &cluster(committer)).unwrap();
        assert_eq!(part, generation.path().file_name().map(|f| host.dir().join(f)).unwrap());
        let vms = write_images(&generation, local);
        super::super::tests::write_images_in(&part, generation.number(), remote);
        let names: Vec<String> = remote.iter().map(|s| s.to_string()).collect();
        let mut sealed = host.seal_part(generation.number(), &names).unwrap();
        for e in &mut sealed {
            e.host = Some("h1".into());
        }
        let number = generation.number();
        generation.commit_with_parts(&vms, sealed).unwrap();
        number
    }

    #[test]
    fn a_part_is_named_by_the_committers_manifest_and_checks_out_on_its_host() {
        let root = tempfile::tempdir().unwrap();
        let committer = Store::open(&root.path().join("here")).unwrap();
        let host = Store::open(&root.path().join("there")).unwrap();
        let n = checkpoint_with_part(&committer, &host, &["a"], &["b", "c"]);
        let manifest = committer.latest().unwrap().unwrap();
        assert_eq!(manifest.generation, n);
        assert_eq!(manifest.vm("b").unwrap().host.as_deref(), Some("h1"));
        assert_eq!(manifest.vm("a").unwrap().host, None);
        host.check_image(n, manifest.vm("b").unwrap()).unwrap();
        committer.check_image(n, manifest.vm("a").unwrap()).unwrap();
        // The part's image is not in the committer's directory.
        assert!(committer.check_image(n, manifest.vm("c").unwrap()).is_err());
        assert_eq!(listing(host.dir()), vec![PARTS_MARKER.to_owned(), format!("gen-{n:06}")]);
        assert_eq!(PartsMarker::read(host.dir()).unwrap().unwrap().committer, "committer");
    }

    #[test]
    fn a_host_keeps_what_the_committer_may_still_name_and_drops_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let committer = Store::open(&root.path().join("here")).unwrap();
        let host = Store::open(&root.path().join("there")).unwrap();
        let first = checkpoint_with_part(&committer, &host, &[], &["b"]);
        let second = checkpoint_with_part(&committer, &host, &[], &["b"]);
        // The committed one and the previous stay, as in the committer's directory.
        assert_eq!(listing(host.dir()), vec![PARTS_MARKER.into(), generation_name(first), generation_name(second)]);
        // A generation that fails midway (written, never sealed): aborted.
        let generation = committer.begin().unwrap();
        host.begin_part(generation.number(), &[second], "committer", &cluster(&committer)).unwrap();
        host.abort_part(generation.number()).unwrap();
        generation.abort().unwrap();
        assert_eq!(listing(host.dir()), vec![PARTS_MARKER.into(), generation_name(second)]);
        // Sealed on the host but never committed (the committer died): the
        // next begin drops it, keeping what the manifest names.
        let generation = committer.begin().unwrap();
        let lost = generation.number();
        host.begin_part(lost, &[second], "committer", &cluster(&committer)).unwrap();
        super::super::tests::write_images_in(&host.part_path(lost), lost, &["b"]);
        host.seal_part(lost, &["b".into()]).unwrap();
        drop(generation);
        let next = checkpoint_with_part(&committer, &host, &[], &["b"]);
        assert_eq!(listing(host.dir()), vec![PARTS_MARKER.into(), generation_name(second), generation_name(next)]);
        let manifest = committer.latest().unwrap().unwrap();
        host.check_image(next, manifest.vm("b").unwrap()).unwrap();
    }

    /// Found by the store fuzz target: a part's entry (an agent's answer)
    /// went into the manifest as it came, and a manifest that the next
    /// `latest` refuses stops every later checkpoint and restart.
    #[test]
    fn a_part_no_manifest_can_name_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let committer = Store::open(root.path()).unwrap();
        checkpoint(&committer, &["a"]);
        let part = |name: &str, image: &str| ManifestVm {
            name: name.into(),
            image: image.into(),
            size: 1,
            header_crc32c: 1,
            host: Some("n1".into()),
            mac: None,
        };
        for (bad, why) in [
            (part("b", "gen-000001/b.mekha"), "not in the generation's directory gen-000002"),
            (part("b", "../b.mekha"), "not inside the checkpoint directory"),
            (part("../b", "gen-000002/b.mekha"), "invalid VM name"),
        ] {
            let generation = committer.begin().unwrap();
            let e = generation.commit_with_parts(&[] as &[(&str, &Path)], vec![bad]).unwrap_err();
            assert!(matches!(e, StoreError::BadPart { .. }) && e.to_string().contains(why), "{e}");
            assert_eq!(committer.latest().unwrap().unwrap().generation, 1);
        }
        let generation = committer.begin().unwrap();
        let good = part("b", &format!("gen-{:06}/b.mekha", generation.number()));
        let manifest = generation.commit_with_parts(&[] as &[(&str, &Path)], vec![good]).unwrap();
        assert_eq!(committer.latest().unwrap(), Some(manifest));
    }

    #[test]
    fn a_seal_refuses_a_missing_image_and_keeps_the_partial_directory() {
        let root = tempfile::tempdir().unwrap();
        let host = Store::open(root.path()).unwrap();
        host.begin_part(1, &[], "committer", "c1").unwrap();
        let e = host.seal_part(1, &["gone".into()]).unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
        assert_eq!(listing(host.dir()), vec![PARTS_MARKER.to_owned(), "gen-000001.partial".into()]);
    }

    #[test]
    fn another_clusters_parts_are_refused_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let first = Store::open(&root.path().join("first")).unwrap();
        let host = Store::open(&root.path().join("there")).unwrap();
        let n = checkpoint_with_part(&first, &host, &[], &["b"]);
        // A second cluster (another committer directory) pointed at the
        // same part directory, even from the same host name.
        let second = Store::open(&root.path().join("second")).unwrap();
        let generation = second.begin().unwrap();
        let e = host.begin_part(generation.number(), &[], "committer", &cluster(&second)).unwrap_err();
        assert!(matches!(e, StoreError::OtherCluster { .. }), "{e}");
        assert!(e.to_string().contains(&cluster(&first)), "{e}");
        // The first cluster's committed images are still there and check out.
        assert_eq!(listing(host.dir()), vec![PARTS_MARKER.to_owned(), generation_name(n)]);
        host.check_image(n, first.latest().unwrap().unwrap().vm("b").unwrap()).unwrap();
        // The same cluster committed from another host name: its own.
        let next = first.begin().unwrap();
        host.begin_part(next.number(), &[n], "login2", &cluster(&first)).unwrap();
        assert_eq!(PartsMarker::read(host.dir()).unwrap().unwrap().committer, "login2");
    }

    #[test]
    fn a_marker_from_before_ids_is_adopted_by_its_committer_only() {
        let root = tempfile::tempdir().unwrap();
        let host = Store::open(root.path()).unwrap();
        fs::write(root.path().join(PARTS_MARKER), br#"{"committer":"login1"}"#).unwrap();
        let e = host.begin_part(1, &[], "login2", "c2").unwrap_err();
        assert!(matches!(e, StoreError::OtherCluster { .. }), "{e}");
        host.begin_part(1, &[], "login1", "c1").unwrap();
        assert_eq!(PartsMarker::read(host.dir()).unwrap().unwrap().cluster.as_deref(), Some("c1"));
    }

    #[test]
    fn generations_without_a_marker_are_refused_not_deleted() {
        let root = tempfile::tempdir().unwrap();
        let host = Store::open(root.path()).unwrap();
        fs::create_dir(root.path().join("gen-000004")).unwrap();
        super::super::tests::write_images_in(&root.path().join("gen-000004"), 4, &["b"]);
        let e = host.begin_part(5, &[], "login1", "c1").unwrap_err();
        assert!(matches!(e, StoreError::NoManifest { .. }), "{e}");
        assert_eq!(listing(host.dir()), ["gen-000004"]);
    }

    #[test]
    fn parts_and_a_manifest_never_share_a_directory() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        checkpoint(&store, &["a"]);
        assert!(matches!(store.begin_part(7, &[], "x", "c1"), Err(StoreError::HoldsManifest { .. })));
        let other = Store::open(&root.path().join("parts")).unwrap();
        other.begin_part(1, &[], "login1", "c1").unwrap();
        let e = other.begin().unwrap_err();
        assert!(matches!(e, StoreError::HoldsParts { .. }), "{e}");
        assert!(e.to_string().contains("login1"), "{e}");
    }
}
