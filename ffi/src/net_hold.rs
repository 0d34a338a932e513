// SPDX-License-Identifier: GPL-2.0-or-later
//! Network frames in flight across a checkpoint and a restore.
//!
//! When the VMs of a cluster stop at one instant T, a frame one of them
//! sent before T may not have reached another's guest yet: it waits in
//! the receiver's tap, in its NIC's queue, or is still on its way. The
//! receiver's image must hold it, or the restarted cluster loses it.
//!
//! A hold filter on every NIC's netdev (QEMU's side, see `mekha_qemu_net_*`
//! in include/mekha.h) is attached once the machine is built (and when a
//! checkpoint starts, for a NIC hot-plugged since). Just before the VM
//! stops, it starts to hold: every frame toward the guest is queued, the
//! NIC's queued ones first, so that the stop purges none. Right after the
//! resume, the hold is released and the running guest gets them, in
//! order. Which frames the image keeps (its NET_FRAMES section) is the
//! network cut's business (`net_cut`), which the filters also serve.
//!
//! Frames toward a NIC that cannot be held (vhost, multiqueue) wait in
//! the tap or in QEMU's queue during the pause and reach the guest after
//! it, as with stock QEMU: they are not in the image.
//!
//! A restore queues the image's frames in the holds of the netdevs of the
//! same ids, ahead of anything the netdevs read meanwhile, and releases
//! them once the VM first runs (at once, or at `__org.mekha_resume`'s
//! instant). A netdev of the image that this VM lacks, or that cannot take
//! its frames (no hold filter, another virtio-net header length), is named
//! in a warning and its frames are dropped.

use std::sync::atomic::{AtomicBool, Ordering};

use mekha_ckpt_core::image::NetFrames;

use crate::qemu::{self, clocks, net, Bql};

/// The most a netdev's hold keeps: 64 MiB is 50 ms of a 10 Gbit/s link,
/// far more than flies between two stops of a cluster. Frames beyond are
/// dropped and counted, as a full switch would.
pub(crate) const MAX_HOLD_BYTES: u64 = 64 << 20;

/// Attaches the hold filters once the machine is built, so that the
/// network cut knows the NICs' neighbours from the start; a NIC that
/// cannot be held is warned about when a checkpoint starts.
pub(crate) fn on_machine_ready(bql: &Bql) {
    net::attach(bql);
}

/// Attaches the hold filters (when a checkpoint starts, so that the stop
/// only flips them), warning about NICs whose frames cannot be held.
pub(crate) fn prepare(bql: &Bql) {
    for netdev in net::attach(bql) {
        if let Some(error) = netdev.error {
            crate::qemu::report::warn(&format!(
                "frames toward the guest through netdev {} cannot be held across a checkpoint: {error}",
                netdev.id
            ));
        }
    }
}

/// Holds every frame toward the guest from now on (just before the stop).
pub(crate) fn begin(bql: &Bql) {
    net::hold_begin(bql, MAX_HOLD_BYTES);
}

/// Passes the held frames on to the guests; returns how many were
/// dropped for want of room.
pub(crate) fn release(bql: &Bql) -> u64 {
    net::release(bql)
}

/// What a restore did with the image's frames.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Injected {
    pub frames: u64,
    pub dropped: u64,
}

/// The holds wait for the VM's first run to release the image's frames.
static RELEASE_ON_RUN: AtomicBool = AtomicBool::new(false);

/// Restore: queues the image's frames toward each NIC (before the VM
/// runs; the device state is loaded, so each netdev's header length is
/// the guest's), to be released when the VM first runs.
pub(crate) fn restore(bql: &Bql, frames: &NetFrames, image: &str) -> Injected {
    let netdevs = net::attach(bql);
    net::hold_begin(bql, MAX_HOLD_BYTES);
    RELEASE_ON_RUN.store(true, Ordering::Relaxed);
    clocks::watch_run_state(bql);
    let mut done = Injected::default();
    for held in &frames.netdevs {
        let count = held.frames.len() as u64;
        let refusal = match netdevs.iter().find(|n| n.id == held.netdev) {
            None => Some("this VM has no such netdev".to_owned()),
            Some(n) => match &n.error {
                Some(error) => Some(error.clone()),
                None if n.vnet_hdr_len != held.vnet_hdr_len => Some(format!(
                    "its frames carry a {}-byte virtio-net header, the image's {} bytes",
                    n.vnet_hdr_len, held.vnet_hdr_len
                )),
                None => None,
            },
        };
        if let Some(why) = refusal {
            crate::qemu::report::warn(&format!(
                "restore of {image}: the {count} frame(s) in flight toward netdev {} are dropped: {why}",
                held.netdev
            ));
            done.dropped += count;
            continue;
        }
        for frame in &held.frames {
            if net::inject(bql, &held.netdev, frame.flags, &frame.data) {
                done.frames += 1;
            } else {
                done.dropped += 1;
            }
        }
    }
    done
}

/// A restore that failed: the holds pass on what they have (the VM does
/// not run, but may be resumed by hand).
pub(crate) fn abandon_restore(bql: &Bql) {
    RELEASE_ON_RUN.store(false, Ordering::Relaxed);
    net::release(bql);
}

/// QEMU's run-state hook (BQL held): the restored VM's first run releases
/// the image's frames, from the main loop once the start is complete (the
/// NICs take frames only then).
pub(crate) fn on_run_state(running: bool) {
    if running && RELEASE_ON_RUN.swap(false, Ordering::Relaxed) {
        qemu::main_loop_call(|| {
            // SAFETY: main-loop calls run with the BQL held.
            let bql = unsafe { Bql::assume_held() };
            let dropped = net::release(&bql);
            if dropped > 0 {
                crate::qemu::report::warn(&format!(
                    "{dropped} frame(s) toward the restored guest were dropped: its hold was full"
                ));
            }
        });
    }
}
