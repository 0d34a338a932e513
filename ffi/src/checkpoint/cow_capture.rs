// SPDX-License-Identifier: GPL-2.0-or-later
//! Copy-on-write capture: the VM stops only to write-protect its RAM and
//! save its devices; then pages are copied into staging while it runs,
//! each before the guest may change it (`mekha_ckpt_core::cow`).
//!
//! While RAM is protected, any QEMU thread writing guest memory — a vCPU,
//! a device model holding the BQL — waits for this thread. So from the
//! restart to the end of the copy this thread takes no QEMU lock, and RAM
//! is protected only once this thread holds the BQL for good: between the
//! stop and the resume instant it leaves the BQL free (QEMU's main loop
//! then reads the network frames that reach the stopped VM into the hold),
//! and a main-loop writer blocked on a protected page would deadlock it.
//! Nothing writes guest RAM while the VM is stopped, so RAM protected at
//! the resume holds what it held at the stop. A NIC whose frames are not
//! held would queue one that reached it meanwhile, and deliver it into
//! protected RAM from this very thread when the VM starts: with such a
//! NIC the BQL stays taken, as if nothing were held.

use std::time::{Duration, Instant};

use mekha_ckpt_core::cow::{CowStats, WriteProtect};
use mekha_ckpt_core::persist::Persister;

use super::worker::{self, Params, Resumed, StopWindow, Stopped, Tracking};
use super::{Shared, Status};
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
    net_held: bool,
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

    let StopWindow { bql, end, stopped_at, stopped, time, resume_guard } = worker::stop_vm(shared)?;
    // Whatever happens now, the VM runs again before this thread lets go
    // of the BQL for good, and the frames held meanwhile are released; a
    // failed protect leaves nothing protected.
    let devices = qemu::ckpt::save_devices(&bql);
    let resume_at = end.resume_at.filter(|_| devices.is_ok());
    let (bql, resumed_at) = if net_held {
        rendezvous::wait_unlocked(bql, resume_at)
    } else {
        let now = rendezvous::wait_until(resume_at);
        (bql, now)
    };
    let result = devices.and_then(|state| {
        if qemu::ckpt::vm_is_running(&bql) {
            return Err("the VM was resumed by someone else during the checkpoint's pause".into());
        }
        wp.protect().map_err(|e| e.to_string())?;
        Ok(state)
    });
    let Resumed { net_frames, net_dropped, pause } = worker::resume_vm(bql, stopped, tracking, resume_guard);
    let device_state = result?;
    shared.update(|info| {
        info.pause_ns = pause.as_nanos() as u64;
        info.stopped_at_ns = Some(stopped_at);
        info.resumed_at_ns = Some(resumed_at);
        info.device_state_bytes = device_state.len() as u64;
        info.set_net(&net_frames, net_dropped);
        info.status = Status::Capturing;
    });

    wp.capture(persist, |stats, persist| report(shared, stats, persist)).map_err(|e| e.to_string())?;
    Ok(Stopped { device_state, time, net_frames })
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
