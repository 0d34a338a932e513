// SPDX-License-Identifier: GPL-2.0-or-later
//! Where a checkpoint directory's bytes go: its storage target (the device
//! or network filesystem that absorbs the writes) and its free space, as
//! the host that writes there sees them. The coordinator schedules image
//! writes per target and checks space before writing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Filesystems whose bytes go to a server several hosts share: one target
/// whichever host writes.
const SHARED_FILESYSTEMS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "ceph",
    "fuse.ceph",
    "lustre",
    "gpfs",
    "beegfs",
    "glusterfs",
    "fuse.glusterfs",
    "9p",
    "virtiofs",
    "ocfs2",
    "gfs2",
    "fuse.sshfs",
    "orangefs",
    "pvfs2",
];

/// One checkpoint directory as seen from the host that writes into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageReport {
    pub dir: PathBuf,
    /// Same string = same storage: `HOST:MAJOR:MINOR` for a local
    /// filesystem, `FSTYPE:SOURCE[ROOT]` for a shared one.
    pub target: String,
    pub fs_type: String,
    pub shared: bool,
    /// Space an unprivileged writer may still use, and the filesystem's size.
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// Reports on `dir`, or on its nearest existing ancestor if it is yet to
/// be made.
pub fn probe(dir: &Path) -> Result<StorageReport, String> {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let real = existing.canonicalize().map_err(|e| format!("{}: {e}", existing.display()))?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let mount = mount_of(&mountinfo, &real).ok_or_else(|| format!("{}: no mount point holds it", real.display()))?;
    let (free_bytes, total_bytes) = space(&real)?;
    let shared = SHARED_FILESYSTEMS.contains(&mount.fs_type.as_str());
    let target = if shared {
        let root = if mount.root == "/" { String::new() } else { mount.root.clone() };
        format!("{}:{}{root}", mount.fs_type, mount.source)
    } else {
        format!("{}:{}", host_name(), mount.device)
    };
    Ok(StorageReport { dir: dir.to_owned(), target, fs_type: mount.fs_type, shared, free_bytes, total_bytes })
}

/// This host's name (the agents' and the coordinator's view agree on it).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "localhost".into(), |h| h.trim().to_owned())
}

#[derive(Debug, PartialEq, Eq)]
struct Mount {
    device: String,
    root: String,
    fs_type: String,
    source: String,
}

/// The mount holding `path` (canonical): the longest mount point that is
/// a prefix of it; of several at the same point, the last (on top).
fn mount_of(mountinfo: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<(usize, Mount)> = None;
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 2 {
            continue;
        }
        let point = PathBuf::from(unescape(left[4]));
        if !path.starts_with(&point) {
            continue;
        }
        let depth = point.components().count();
        if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            let mount = Mount {
                device: left[2].to_owned(),
                root: unescape(left[3]),
                fs_type: right[0].to_owned(),
                source: unescape(right[1]),
            };
            best = Some((depth, mount));
        }
    }
    best.map(|(_, m)| m)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if bytes[i] == b'\\' => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn space(path: &Path) -> Result<(u64, u64), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a plain C struct, for which zeros are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs fills the struct we own from a valid C string.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!("statvfs {}: {}", path.display(), std::io::Error::last_os_error()));
    }
    Ok((st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /scratch rw,relatime shared:7 - nfs4 fs1:/export/scratch rw,vers=4.2
31 30 0:26 /jobs /scratch/jobs rw - nfs fs2:/vol rw
32 22 0:27 / /mnt/with\\040space rw - xfs /dev/sdb1 rw
33 22 0:28 / /tmp rw - ext4 /dev/sda2 rw
34 22 0:29 / /tmp rw - tmpfs tmpfs rw
";

    #[test]
    fn the_deepest_and_topmost_mount_holds_a_path() {
        let m = mount_of(MOUNTINFO, Path::new("/scratch/job42/ckpt")).unwrap();
        assert_eq!((m.fs_type.as_str(), m.source.as_str()), ("nfs4", "fs1:/export/scratch"));
        let m = mount_of(MOUNTINFO, Path::new("/scratch/jobs/x")).unwrap();
        assert_eq!((m.source.as_str(), m.root.as_str()), ("fs2:/vol", "/jobs"));
        assert_eq!(mount_of(MOUNTINFO, Path::new("/scratchy")).unwrap().device, "8:1");
        assert_eq!(mount_of(MOUNTINFO, Path::new("/mnt/with space/a")).unwrap().fs_type, "xfs");
        assert_eq!(mount_of(MOUNTINFO, Path::new("/tmp/a")).unwrap().fs_type, "tmpfs");
    }

    #[test]
    fn a_real_directory_has_a_target_and_space() {
        let dir = tempfile::tempdir().unwrap();
        let report = probe(&dir.path().join("not/yet")).unwrap();
        assert!(report.total_bytes >= report.free_bytes && report.total_bytes > 0, "{report:?}");
        assert_eq!(report.target, probe(dir.path()).unwrap().target);
        assert!(report.target.starts_with(&host_name()) || report.shared, "{report:?}");
    }
}
