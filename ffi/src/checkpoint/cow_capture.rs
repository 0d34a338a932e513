// SPDX-License-Identifier: GPL-2.0-or-later
//! Copy-on-write capture: the VM stops only to write-protect its RAM and
//! save its devices; then pages are copied into staging while it runs,
//! each before the guest may change it (`mekha_ckpt_core::cow`).
//!
//! While RAM is protected, any QEMU thread writing guest memory — a vCPU,
//! a device model holding the BQL — waits for this thread. So from the
//! restart to the end of the copy this thread takes no QEMU lock.

use std::time::{Duration, Instant};

use mekha_ckpt_core::cow::{CowStats, WriteProtect};
use mekha_ckpt_core::persist::Persister;

use super::worker::{Params, Stopped, Tracking};
use super::{Shared, Status};
use crate::guest_time;
use crate::qemu;
use crate::rendezvous;

/// Waits for the instant (at once, or on the end command with `hold`),
/// protects RAM during a short stop, copies it all; returns the device
/// state and the clocks. Dropping `wp` on any error releases every page.
pub(super) fn capture(
    shared: &Shared,
    params: &Params,
    mut wp: WriteProtect,
    persist: &mut Persister,
    tracking: &mut Tracking,
) -> Result<Stopped, String> {
    let start = Instant::now();
    wp.populate();
    // Ready: the pause is protect + device state, whatever the guest does.
    shared.update(|info| {
        info.ready = true;
        info.pause_estimate_ns = 2_000_000;
    });
    if params.mtd.hold {
        while !shared.end_requested() {
            if let Some(abandon) = shared.abandoned() {
                return Err(abandon.message().into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        shared.update(|info| info.end_reason = Some("end-command".into()));
    }
    shared.update(|info| {
        info.live_ns = start.elapsed().as_nanos() as u64;
        info.status = Status::Paused;
    });

    let end = shared.end_args();
    let (bql, stopped_at) = rendezvous::lock_at(end.stop_at);
    qemu::ckpt::vm_stop(&bql)?;
    let stopped = Instant::now();
    let time = guest_time::capture(&bql);
    // Whatever happens now, the VM runs again before the BQL is released;
    // a failed protect leaves nothing protected.
    let result = wp.protect().map_err(|e| e.to_string()).and_then(|()| qemu::ckpt::save_devices(&bql));
    let resumed_at = rendezvous::wait_until(end.resume_at.filter(|_| result.is_ok()));
    qemu::ckpt::vm_start(&bql);
    let pause = stopped.elapsed();
    tracking.stop(&bql);
    drop(bql);
    let device_state = result?;
    shared.update(|info| {
        info.pause_ns = pause.as_nanos() as u64;
        info.stopped_at_ns = Some(stopped_at);
        info.resumed_at_ns = Some(resumed_at);
        info.device_state_bytes = device_state.len() as u64;
        info.status = Status::Capturing;
    });

    wp.capture(persist, |stats, persist| report(shared, stats, persist)).map_err(|e| e.to_string())?;
    Ok(Stopped { device_state, time })
}

fn report(shared: &Shared, stats: &CowStats, persist: &Persister) {
    let staging = persist.staging();
    let written = persist.stats().bytes;
    shared.update(|info| {
        info.copied_pages = stats.pages;
        info.wp_faults = stats.faults;
        info.capture_ns = stats.capture.as_nanos() as u64;
        info.staged_bytes = staging.resident_bytes();
        info.staging_peak_bytes = staging.peak_resident_bytes();
        info.written_bytes = written;
    });
}
