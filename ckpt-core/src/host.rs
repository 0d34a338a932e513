// SPDX-License-Identifier: GPL-2.0-or-later
//! What this host's kernel offers mekha, probed at run time.
//!
//! A kernel may be too old, or a seccomp policy or sysctl may forbid a
//! facility (io_uring_disabled, vm.unprivileged_userfaultfd): only trying it
//! tells.

use std::sync::OnceLock;

/// Kernel facilities mekha can use on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// io_uring rings can be created (background image writes).
    pub io_uring: bool,
    /// userfaultfd works for this process.
    pub userfaultfd: bool,
    /// userfaultfd supports write-protect faults (copy-on-write capture).
    pub userfaultfd_wp: bool,
}

impl Capabilities {
    /// Probes once per process; later calls return the first answer.
    pub fn probe() -> Capabilities {
        static PROBED: OnceLock<Capabilities> = OnceLock::new();
        *PROBED.get_or_init(|| {
            let (userfaultfd, userfaultfd_wp) = probe_userfaultfd();
            Capabilities { io_uring: probe_io_uring(), userfaultfd, userfaultfd_wp }
        })
    }

    /// Names as reported over QMP (`capabilities` of `__org.mekha_query-info`).
    pub fn names(&self) -> Vec<&'static str> {
        [(self.io_uring, "io-uring"), (self.userfaultfd, "userfaultfd"), (self.userfaultfd_wp, "userfaultfd-wp")]
            .into_iter()
            .filter_map(|(present, name)| present.then_some(name))
            .collect()
    }
}

fn probe_io_uring() -> bool {
    io_uring::IoUring::new(2).is_ok()
}

/// Returns (userfaultfd works, write-protect supported).
fn probe_userfaultfd() -> (bool, bool) {
    let open = |features| {
        userfaultfd::UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(false)
            .require_features(features)
            .create()
            .is_ok()
    };
    let works = open(userfaultfd::FeatureFlags::empty());
    (works, works && open(userfaultfd::FeatureFlags::PAGEFAULT_FLAG_WP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_is_stable_and_named() {
        let caps = Capabilities::probe();
        assert_eq!(caps, Capabilities::probe());
        let names = caps.names();
        assert_eq!(names.contains(&"io-uring"), caps.io_uring);
        assert_eq!(names.contains(&"userfaultfd-wp"), caps.userfaultfd_wp);
        // write-protect support implies userfaultfd itself works.
        assert!(!caps.userfaultfd_wp || caps.userfaultfd);
    }

    #[test]
    fn this_host_has_io_uring() {
        // mekha's test machines run kernels with io_uring enabled; a host
        // without it must be reported as such, not crash the probe.
        if std::env::var_os("MEKHA_EXPECT_NO_IO_URING").is_none() {
            assert!(Capabilities::probe().io_uring);
        }
    }
}
