// SPDX-License-Identifier: GPL-2.0-or-later
//! This VM's side of a cluster checkpoint's network cut by markers (the
//! protocol is `mekha_ckpt_core::netcut`'s).
//!
//! The hold filter on every NIC's netdev (`net_hold`) hands each frame
//! toward the guest to [`mekha_net_frame`], from the machine's start on:
//! the source MACs each NIC sees tell a coordinator who shares its
//! segment (query-info's `nics`), and markers never reach a guest. A cut
//! begins with `checkpoint-end` (its id and each NIC's peers, so that a
//! peer's marker coming before this VM's stop is not missed); at the stop
//! this VM sends its own markers and starts saving the frames in flight;
//! once it runs again and every peer's marker came, the frames for the
//! image are complete ([`wait_complete`]).

use std::sync::{Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mekha_ckpt_core::image::{NetFrames, MAX_FRAME_LEN, MAX_NETDEV_ID_LEN};
use mekha_ckpt_core::netcut::{self, Cut, CutProgress, Neighbours, Verdict};
use mekha_ckpt_core::session::checkpoint::{NetCut, NetdevPeers};
use mekha_ckpt_core::session::library::NicInfo;
use mekha_ckpt_core::session::{Error, ErrorKind, Result};

use crate::boundary;
use crate::net_hold::MAX_HOLD_BYTES;
use crate::qemu::{self, net, Bql};

struct State {
    neighbours: Neighbours,
    cut: Option<Cut>,
}

static STATE: LazyLock<Mutex<State>> =
    LazyLock::new(|| Mutex::new(State { neighbours: Neighbours::default(), cut: None }));
/// Signalled whenever a cut may have become complete.
static CHANGED: Condvar = Condvar::new();
/// The longest a waiter sleeps between two looks at the cut.
const WAIT_STEP: Duration = Duration::from_millis(10);

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// See `mekha_net_frame` in include/mekha.h.
///
/// # Safety
/// Called by QEMU from the main loop with the BQL held; `netdev` and
/// `data` (`len` bytes) are valid for the call.
#[no_mangle]
pub unsafe extern "C" fn mekha_net_frame(
    netdev: *const boundary::MekhaNetdev,
    flags: u32,
    data: *const u8,
    len: usize,
) -> boundary::MekhaNetVerdict {
    let verdict = std::panic::catch_unwind(|| {
        // SAFETY: the caller's promise (an empty frame may come as NULL).
        let (netdev, data) = unsafe {
            (net::netdev_ref(netdev), if data.is_null() { &[][..] } else { std::slice::from_raw_parts(data, len) })
        };
        on_frame(&netdev, net::frame_flags(flags), data)
    });
    match verdict.unwrap_or(Verdict::Pass) {
        Verdict::Pass => boundary::MekhaNetVerdict::MEKHA_NET_PASS,
        Verdict::Drop => boundary::MekhaNetVerdict::MEKHA_NET_DROP,
        Verdict::Hold => boundary::MekhaNetVerdict::MEKHA_NET_HOLD,
    }
}

fn on_frame(netdev: &net::NetdevRef, flags: u32, data: &[u8]) -> Verdict {
    let frame = netcut::Frame::classify(netcut::ethernet(data, netdev.vnet_hdr_len, flags));
    let mut state = state();
    if let netcut::Frame::Data { src } | netcut::Frame::Marker { src, .. } = frame {
        state.neighbours.saw(netdev.id, src);
    }
    match &mut state.cut {
        Some(cut) => {
            let was_complete = cut.is_complete();
            let verdict = cut.on_frame(netdev.id, netdev.vnet_hdr_len, flags, data);
            if cut.is_complete() != was_complete {
                CHANGED.notify_all();
            }
            verdict
        }
        // No cut: a marker is a stray one (late, or another cluster's).
        None if matches!(frame, netcut::Frame::Marker { .. }) => Verdict::Drop,
        None => Verdict::Pass,
    }
}

/// The NICs and the source MACs their netdevs saw (query-info); attaches
/// the hold filters where a NIC lacks one (one hot-plugged since).
pub(crate) fn nics(bql: &Bql) -> Vec<NicInfo> {
    let netdevs = net::attach(bql);
    let state = state();
    netdevs.into_iter().map(|n| NicInfo { neighbours: state.neighbours.of(&n.id), netdev: n.id, mac: n.mac }).collect()
}

/// A checkpoint starts, or ended without completing its cut: any cut is
/// over, and what it held early is released.
pub(crate) fn reset(bql: &Bql) {
    let old = state().cut.take();
    if old.is_some_and(|c| c.holds_early()) {
        net::release(bql);
    }
}

/// `checkpoint-end` came: the cut begins (markers of peers that stop
/// before this VM are counted from now on). A NIC whose frames bypass
/// QEMU (vhost, multiqueue) sees no marker: it waits for none, and its
/// frames in flight are lost as with stock QEMU (warned about when the
/// checkpoint started).
pub(crate) fn begin(bql: &Bql, cut: Option<&NetCut>) {
    let cut = match cut {
        Some(c) => {
            let unheld: Vec<String> =
                net::attach(bql).into_iter().filter(|n| n.error.is_some()).map(|n| n.id).collect();
            let peers: Vec<NetdevPeers> = c.peers.iter().filter(|p| !unheld.contains(&p.netdev)).cloned().collect();
            Cut::new(Some(c.id), &peers, MAX_HOLD_BYTES)
        }
        None => Cut::new(None, &[], MAX_HOLD_BYTES),
    };
    state().cut = Some(cut);
}

/// The VM stopped, its hold filters holding: saves the frames the NICs
/// had queued, and sends this VM's marker on every NIC ahead of anything
/// its guest sends later.
pub(crate) fn stopped(bql: &Bql) {
    let held = net::held(bql);
    let mut state = state();
    let cut = state.cut.get_or_insert_with(|| Cut::new(None, &[], MAX_HOLD_BYTES));
    cut.stopped(&held);
    let Some(id) = cut.id() else { return };
    drop(state);
    for netdev in net::attach(bql) {
        if !net::send(bql, &netdev.id, &netcut::marker_frame(netdev.mac, id)) {
            qemu::report::warn(&format!(
                "the checkpoint's marker could not be sent on netdev {} (its link is down, or the netdev refused \
                 it): its peers will wait for it in vain",
                netdev.id
            ));
        }
    }
}

/// The VM runs again.
pub(crate) fn resumed() {
    let mut state = state();
    if let Some(cut) = &mut state.cut {
        cut.resumed();
        CHANGED.notify_all();
    }
}

/// NICs per netdev, for a message: `netdev net0: MAC, MAC; netdev ...`.
fn named(per_netdev: &[NetdevPeers]) -> String {
    let named: Vec<String> = per_netdev
        .iter()
        .map(|p| {
            let macs: Vec<String> = p.macs.iter().map(ToString::to_string).collect();
            format!("netdev {}: {}", p.netdev, macs.join(", "))
        })
        .collect();
    named.join("; ")
}

/// How the cut stands (none before a checkpoint stopped this VM).
pub(crate) fn progress() -> Option<CutProgress> {
    state().cut.as_ref().map(Cut::progress)
}

/// Waits until the cut is complete, at most until `deadline`; returns the
/// frames to save in the image, or says which markers did not come.
/// `on_change` is told how the cut stands as it goes.
pub(crate) fn wait_complete(deadline: Instant, on_change: impl Fn(&CutProgress)) -> Result<NetFrames> {
    loop {
        let progress = progress().ok_or_else(|| Error::internal("the network cut is gone"))?;
        on_change(&progress);
        if !progress.unexpected.is_empty() {
            return Err(Error::new(
                ErrorKind::MarkerUnexpected,
                format!(
                    "the checkpoint's marker came from NICs not known as this VM's peers ({}): their frames in \
                     flight toward this VM were not all saved. They shared no frame with this VM before the \
                     checkpoint; they are known now, and the next checkpoint waits for them",
                    named(&progress.unexpected)
                ),
            ));
        }
        if progress.complete {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::new(
                ErrorKind::MarkerMissing,
                format!(
                    "the markers of these peers did not arrive within the lease, so the frames in flight toward \
                     this VM are not all known ({}); the network between them drops or holds frames",
                    named(&progress.waiting)
                ),
            ));
        }
        // Bounded: a change between the look above and this wait is seen
        // at the next look.
        let state = state();
        let _ = CHANGED.wait_timeout(state, (deadline - now).min(WAIT_STEP));
    }
    let cut = state().cut.take().ok_or_else(|| Error::internal("the network cut is gone"))?;
    let mut frames = cut.into_frames();
    for n in frames.take_unstorable().netdevs {
        qemu::report::warn(&format!(
            "{} frame(s) in flight toward netdev {:?} cannot be stored in the image (ids of 1 to \
             {MAX_NETDEV_ID_LEN} bytes, frames of 1 to {MAX_FRAME_LEN}): a restore of this checkpoint will not \
             have them",
            n.frames.len(),
            n.netdev.chars().take(64).collect::<String>()
        ));
    }
    Ok(frames)
}
