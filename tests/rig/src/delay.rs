// SPDX-License-Identifier: GPL-2.0-or-later
//! A link with latency, as between hosts: this kernel has no netem, so a
//! relay in this process delays the frames toward one tap.
//!
//! The tap moves to a bridge of its own (`br1`), joined to the
//! namespace's bridge by two taps of this process, which copy frames
//! toward it `delay` late (and back at once). Each direction is one FIFO:
//! no frame overtakes another (a checkpoint's marker included), and none
//! is dropped unless the kernel refuses a write (counted: `lost`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{Netns, BRIDGE};

/// The bridge the delayed tap moves to.
const FAR_BRIDGE: &str = "br1";

/// The relay; dropping it stops it (the tap stays on `br1`).
pub struct DelayLine {
    stop: Arc<AtomicBool>,
    /// Frames the line failed to pass on.
    lost: Arc<AtomicU64>,
    /// Frames passed on, toward the tap and back.
    passed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl DelayLine {
    /// Delays the frames toward `tap` (in `netns`, on its bridge) by
    /// `delay`. One line per namespace.
    pub fn insert(netns: &Netns, tap: &str, delay: Duration) -> Result<DelayLine> {
        netns.ip(&["link", "add", FAR_BRIDGE, "type", "bridge"])?;
        netns.ip(&["link", "set", FAR_BRIDGE, "up"])?;
        netns.ip(&["link", "set", tap, "master", FAR_BRIDGE])?;
        let [near, far] = open_taps(netns.name(), ["dl0", "dl1"])?;
        for (dev, bridge) in [("dl0", BRIDGE), ("dl1", FAR_BRIDGE)] {
            netns.ip(&["link", "set", dev, "master", bridge])?;
            netns.ip(&["link", "set", dev, "up"])?;
        }
        // Room for seconds of frames while a relay thread waits for a
        // host CPU (TCG guests keep both busy).
        for dev in ["dl0", "dl1", tap] {
            netns.ip(&["link", "set", dev, "txqueuelen", "100000"])?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicU64::new(0));
        let passed = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let (near_w, far_w) = (near.try_clone()?, far.try_clone()?);
        let s = stop.clone();
        let toward = std::thread::spawn(move || {
            relay(near, &s, |frame| tx.send((Instant::now() + delay, frame.to_vec())).is_ok())
        });
        let (s, l, p) = (stop.clone(), lost.clone(), passed.clone());
        let late = std::thread::spawn(move || {
            let mut far_w = far_w;
            while let Ok((due, frame)) = rx.recv() {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                if s.load(Ordering::Relaxed) {
                    return;
                }
                pass(&mut far_w, &frame, &l, &p);
            }
        });
        let (s, l, p) = (stop.clone(), lost.clone(), passed.clone());
        let back = std::thread::spawn(move || {
            let mut near_w = near_w;
            relay(far, &s, |frame| {
                pass(&mut near_w, frame, &l, &p);
                true
            })
        });
        Ok(DelayLine { stop, lost, passed, threads: vec![toward, late, back] })
    }

    /// Frames the line failed to pass on (none, or a test means nothing).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Frames the line passed on, both ways.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Writes `frame` to `tap`, counting it passed or lost.
fn pass(tap: &mut File, frame: &[u8], lost: &AtomicU64, passed: &AtomicU64) {
    let counter = if tap.write(frame).ok() == Some(frame.len()) { passed } else { lost };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Reads frames from `tap` and hands each to `forward` until `stop` (or
/// until `forward` says no).
fn relay(mut tap: File, stop: &AtomicBool, mut forward: impl FnMut(&[u8]) -> bool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd { fd: tap.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        match tap.read(&mut buf) {
            Ok(n) if n > 0 => {
                if !forward(&buf[..n]) {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Creates taps (no packet information) in namespace `netns`, owned by
/// this process: a thread enters the namespace to create them.
fn open_taps<const N: usize>(netns: &str, names: [&str; N]) -> Result<[File; N]> {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
                // SAFETY: this thread alone moves to the namespace, and ends.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {path}: {}", std::io::Error::last_os_error());
                }
                let mut taps = Vec::with_capacity(N);
                for name in names {
                    let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
                    let mut ifr = [0u8; 40];
                    ifr[..name.len()].copy_from_slice(name.as_bytes());
                    let flags = i16::try_from(libc::IFF_TAP | libc::IFF_NO_PI)?;
                    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
                    // SAFETY: TUNSETIFF reads a struct ifreq (40 bytes) we own.
                    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) };
                    if rc != 0 {
                        bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
                    }
                    taps.push(tun);
                }
                taps.try_into().map_err(|_| anyhow::anyhow!("tap count"))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread opening taps panicked"))?
    })
}
