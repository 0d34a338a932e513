// SPDX-License-Identifier: GPL-2.0-or-later
//! Copy-on-write capture: the VM stops only to write-protect its RAM and
//! save its devices; then pages are copied into staging while it runs,
//! each before the guest may change it (`mekha_ckpt_core::cow`).
//!
//! The instant is one hold of the BQL with the VM stopped: RAM is
//! protected first, the devices saved after, so nothing can change either
//! between the two. Afterwards QEMU's main loop may write guest RAM of the
//! stopped VM (virtio-serial flushes a port's output once its host side
//! reads, a chardev connected meanwhile gets its open event delivered
//! when the VM starts, a NIC whose frames are not held flushes them into
//! the guest from `vm_start`): every such write meets the protection and
//! is copied first, so the image holds RAM and devices of one instant.
//!
//! Any thread writing protected RAM waits until the page is copied. The
//! copies are made by a thread of their own, the copier, which takes no
//! QEMU lock and never writes guest RAM: so this thread, which stops and
//! starts the VM (and whose `vm_start` writes guest RAM), and the main
//! loop may write protected pages, and may hold the BQL meanwhile, without
//! waiting on themselves. The copier never writes to disk either (staging
//! holds all of RAM, see `worker::Prepared`): a writer waits for a memory
//! copy at most.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mekha_ckpt_core::cow::{CowError, CowStats, WriteProtect};
use mekha_ckpt_core::persist::Persister;
use mekha_ckpt_core::session::{Error, Result};
use mekha_ckpt_core::width::saturating_u64;

use super::pause::{self, StopWindow, Stopped, Tracking};
use super::Params;
use super::{Session, Status};
use crate::disks::capture::Capture as DiskCapture;
use crate::qemu;

/// Waits for the instant (at once, or on the end command with `hold`),
/// protects RAM and saves the devices during a short stop, copies it all;
/// returns the device state and the clocks. Dropping `wp` on any error
/// releases every page.
pub(super) fn capture(
    shared: &Session,
    params: &Params,
    wp: WriteProtect,
    persist: &mut Persister,
    tracking: &mut Tracking,
    disks: &mut DiskCapture,
) -> Result<Stopped> {
    let start = Instant::now();
    wp.populate();
    // Ready: the pause is protect + device state, whatever the guest does.
    shared.update(|info| {
        info.ready = true;
        info.pause_estimate_ns = 2_000_000;
    });
    if params.mtd.hold {
        let settled = |s: &Session| s.end_requested() || s.abandoned().is_some();
        shared.wait_for(settled);
        if let Some(abandon) = shared.abandoned().filter(|_| !shared.end_requested()) {
            return Err(abandon.error());
        }
        shared.update(|info| info.end_reason = Some("end-command".into()));
    }
    shared.update(|info| {
        info.live_ns = saturating_u64(start.elapsed().as_nanos());
        info.status = Status::Paused;
    });

    let abort = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let StopWindow { bql, stopped_at, stopped, time, resume_guard } = pause::stop_vm(shared)?;
        // Whatever happens now, the VM runs again before this thread lets
        // go of the BQL for good, and the frames held meanwhile are
        // released; a failed protect leaves nothing protected, and a
        // copier that cannot start releases what was.
        let mut wp = wp;
        let copier = wp.protect().map_err(Error::from).and_then(|()| spawn_copier(scope, shared, wp, persist, &abort));
        // The disks' copies start last: their I/O would compete with the
        // rest of the pause for the host's CPUs.
        let devices = copier
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|_| qemu::ckpt::save_devices(&bql))
            .and_then(|state| disks.start(&bql).map(|()| state));
        if devices.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        // Protected and saved: the VM runs again at once.
        let resumed = pause::resume_vm(bql, stopped, tracking, resume_guard);
        shared.update(|info| resumed.record(info, stopped_at));
        let (copier, device_state) = match (copier, devices) {
            (Ok(copier), Ok(state)) => (copier, state),
            (copier, devices) => {
                // Told to stop, the copier ends soon and releases every page.
                if let Ok(copier) = copier {
                    let _ = copier.join();
                }
                return Err(devices.err().unwrap_or_else(|| Error::internal("the copy-on-write capture failed")));
            }
        };
        shared.update(|info| {
            info.device_state_bytes = device_state.len() as u64;
            info.status = Status::Capturing;
        });
        match copier.join() {
            Ok(copied) => copied?,
            Err(panic) => {
                return Err(Error::internal(format!(
                    "internal error in the copy-on-write thread: {}",
                    crate::panic_message(&panic)
                )))
            }
        };
        Ok(Stopped { device_state, time })
    })
}

/// Starts the copier: it serves the write faults and sweeps until every
/// page is copied, or until `abort`; when it ends, however, `wp` goes with
/// it and releases every page left.
fn spawn_copier<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    shared: &'scope Session,
    mut wp: WriteProtect,
    persist: &'scope mut Persister,
    abort: &'scope AtomicBool,
) -> Result<std::thread::ScopedJoinHandle<'scope, Result<CowStats, CowError>>> {
    std::thread::Builder::new()
        .name("mekha-cow".into())
        .spawn_scoped(scope, move || wp.capture(persist, abort, |stats, persist| report(shared, stats, persist)))
        .map_err(|e| Error::internal(format!("cannot start the copy-on-write thread: {e}")))
}

fn report(shared: &Session, stats: &CowStats, persist: &Persister) {
    let staging = persist.staging();
    let written = persist.stats().bytes;
    shared.update(|info| {
        info.copied_pages = stats.pages;
        info.wp_faults = stats.faults;
        info.capture_ns = saturating_u64(stats.capture.as_nanos());
        info.staged_bytes = staging.resident_bytes();
        info.staging_peak_bytes = staging.peak_resident_bytes();
        info.written_bytes = written;
    });
}
