// SPDX-License-Identifier: GPL-2.0-or-later
//! The host around a bench: its facts, its page cache, the bench's
//! priority.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What the host was doing around a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Host {
    pub cpus: usize,
    pub kernel: String,
    pub loadavg_start: Vec<String>,
    pub loadavg_end: Vec<String>,
}

impl Host {
    /// The host's facts, with the load average at the start of a run.
    pub fn at_start() -> Host {
        Host {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            loadavg_start: loadavg(),
            loadavg_end: Vec::new(),
        }
    }
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg prints them.
pub fn loadavg() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).map(str::to_owned).collect()
}

/// Writes `path` back and drops it from the page cache: its next read
/// comes from the disk.
pub fn drop_cache(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.sync_all()?;
    // SAFETY: the descriptor is open for the call; the advice changes no memory of ours.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc)).context(format!("fadvise {}", path.display()));
    }
    Ok(())
}

/// Sets this process's nice value (inherited by what it starts, threads
/// included, when set before they are); the value in force.
pub fn set_nice(nice: i32) -> i32 {
    if nice != 0 {
        // SAFETY: plain system calls on this process.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
            eprintln!("cannot set the nice value to {nice}: {}", std::io::Error::last_os_error());
        }
    }
    // SAFETY: as above.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}
