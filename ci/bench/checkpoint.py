#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""End-to-end checkpoint benchmark: mekha's MTD and copy-on-write checkpoints beside stock
QEMU's ways of saving a running VM, on the reference workload of the
design's "Targets" (docs/design.md).

Run through ci/bench-checkpoint (which builds everything first). Every VM
is a fresh QEMU (the patched binary, which is also stock QEMU for every
stock command) started as the system tests start theirs, with the guest
probe rewriting a 64 MiB hot set as fast as it can (probe.mem=64,
probe.rate=0) and computing (probe.compute), and the serial console read
through a socket so that every probe line gets a host timestamp.

Methods, each on its own freshly booted VM:
  mekha          __org.mekha_checkpoint mode=mtd into a file (default
                 staging = RAM)
  mekha-cow      the same with mode=cow (copy-on-write capture)
  mekha-sealed   mekha-cow with the image sealed under a key (key-secret:
                 every page tagged, a MAC over the image)
  stop-migrate   stop, migrate file:, wait, cont
  live-migrate   migrate file: with the VM running, capped; migrate_cancel
                 when it does not end
  bg-snapshot    migrate file: with the background-snapshot capability
  snapshot-save  the snapshot-save job into a qcow2 disk (vmstate and devices)
and restores into a fresh QEMU started with -incoming defer: mekha's
__org.mekha_restore (lazy and bulk) from the mekha image, the same
with the key from the sealed image (pages read and their tags checked), stock
migrate-incoming file: from the stop-migrate image, each with the image's
page cache dropped first (posix_fadvise DONTNEED after fsync).

Guest work lost, from the host side: the probe's `compute` events give
steps against host time. Steady rate = steps per host second over the
STEADY_S seconds before the checkpoint command; lost work = (steady rate x
window - steps done in the window) / steady rate, over the window from the
command to TAIL_S after completion (steps at the window's ends are
interpolated between events). The same computation over a window without
any checkpoint (the STEADY_S before, against the rate of the STEADY_S
before that) is reported as the noise floor. Beside it: the longest time
without a compute event in the window (a stall the pause may not show),
and the host CPU the VM's vCPU thread and its other threads got (QEMU runs
with -name ...,debug-threads=on so that the vCPU thread is named).

Guest clocks across a restore gap (`clocks`, once per run, after the
checkpoint methods): on a VM whose probe samples its clocks every
CLOCK_MS (`clock` events: CLOCK_MONOTONIC, CLOCK_REALTIME, the TSC and
the RTC), a mekha checkpoint and a stock stop + migrate file:, each
followed by killing QEMU, --clock-gap seconds (default 30) with no QEMU,
and a restore into a fresh QEMU: __org.mekha_restore with time
"continue", and stock migrate-incoming file: + cont. Each clock's advance
across the gap is the first sample of the restored guest minus the last
sample the checkpointed guest had taken, less one sampling interval: 0
when the clock continued as if no time had passed, about the gap when it
jumped. Beside them, the RTC minus CLOCK_REALTIME after the restore, and
its change from before the checkpoint (the offset is already up to 2 s
after boot, by chance).

The script, its QEMUs and dd run at nice -10 by default (--nice) to damp
the noise of other load on the host. Every QEMU is killed at exit, on
Ctrl-C and on errors; images are deleted once measured.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import report  # noqa: E402
from common import drop_cache, fmt, log, remove  # noqa: E402
from qmp import QmpError  # noqa: E402
from vm import Artifacts, Vm, kill_all  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

HOT_MIB = 64
COMPUTE_STEPS = 1 << 62          # never ends during a run
WARMUP_S = 2.0                   # after dirty and compute events flow
STEADY_S = 3.0                   # rate measurement (and the noise-floor window before it)
TAIL_S = 1.0                     # lost-work window goes on this long after completion
BOOT_TIMEOUT_S = 120
DONE_TIMEOUT_S = 600             # one checkpoint or restore, at most
EVENTS_PER_S = (10, 60)          # wanted rate of compute events; the chunk adapts

METHODS = ["mekha", "mekha-cow", "mekha-sealed", "stop-migrate", "live-migrate", "bg-snapshot", "snapshot-save"]
CLOCKS = "clocks"                # the --methods value of the clock measurement
RESTORES = ["mekha-lazy", "mekha-bulk", "mekha-keyed", "stock-incoming"]
# The image key of mekha-sealed: a fixed one, since only the cost is measured.
KEY_SECRET = "mekha-bench-key"
KEY_HEX = "6d" * 32

CLOCK_MIB = 512                  # VM of the clock measurement
CLOCK_MS = 1000                  # the probe's clock sampling interval there
CLOCK_GAP_S = 30.0               # default --clock-gap: no QEMU between checkpoint and restore
CLOCK_BEFORE = 4                 # clock samples of the original guest before its checkpoint, at least
CLOCK_AFTER = 3                  # clock samples of the restored guest, at least
CLOCK_KINDS = ("mekha", "stock")


# ---------------------------------------------------------------------------
# Guest progress


def step_at(points, t):
    """Steps done at host time t, interpolated between compute events."""
    if not points or t < points[0][0] or t > points[-1][0]:
        raise RuntimeError(f"no compute events around t={t:.3f} "
                           f"(events from {points[0][0] if points else None} to {points[-1][0] if points else None})")
    lo, hi = 0, len(points) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if points[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (t1, s1), (t2, s2) = points[lo], points[hi]
    if t2 == t1:
        return s1
    return s1 + (s2 - s1) * (t - t1) / (t2 - t1)


def rate_between(points, a, b):
    """Steps per host second over the compute events within [a, b]."""
    inside = [p for p in points if a <= p[0] <= b]
    if len(inside) < 2:
        raise RuntimeError(f"fewer than 2 compute events in [{a:.3f}, {b:.3f}]")
    (t1, s1), (t2, s2) = inside[0], inside[-1]
    return (s2 - s1) / (t2 - t1)


def lost_ms(points, rate, ts, te):
    expected = rate * (te - ts)
    actual = step_at(points, te) - step_at(points, ts)
    return (expected - actual) / rate * 1000.0


def progress_series(points, rate, t0, a, b, step=0.025, width=0.1):
    """[(t - t0, percent of the steady rate)] every `step` s over [a, b]:
    the rate over the `width` s centred on each point (events come every
    few tens of ms and the guest's scheduler shares its vCPU between the
    computation and the dirtier, so a shorter window is mostly noise)."""
    out = []
    if not points:
        return out
    t = max(a, points[0][0] + width / 2)
    end = min(b, points[-1][0] - width / 2)
    while t <= end:
        r = (step_at(points, t + width / 2) - step_at(points, t - width / 2)) / width
        out.append((t - t0, 100.0 * r / rate))
        t += step
    return out


def checkpoint_mono_ns(samples, t_paused):
    """The guest's CLOCK_MONOTONIC when it paused for its checkpoint, at
    host time `t_paused`, from its `clock` events before the pause: a
    sample's mono_ns plus the host time from its arrival to the pause (the
    VM clock follows the host's while the VM runs). The sample that arrived
    soonest after it was taken gives the closest (and never later) value."""
    before = [e for e in samples if e.t < t_paused]
    if not before:
        raise RuntimeError("no clock sample before the checkpoint")
    return max(e.data["mono_ns"] + (t_paused - e.t) * 1e9 for e in before)


def clock_advance(original, restored, t_paused, interval_ms):
    """Each clock's advance across a restore gap, from the `clock` events of
    the checkpointed guest and of its restored copy.

    R is the first sample the restored guest took: not a line of the
    checkpointed guest's serial output that the restored copy emits again
    (same mono_ns), nor a sample taken before the checkpoint. P is the last
    sample the checkpointed state had taken: the last sample of the original
    guest with mono_ns below R's, but taken before the checkpoint instant
    (a mekha checkpoint is live: the original guest goes on sampling until
    it is killed, and those samples are not in the image) and in an earlier
    sampling slot than R's (the original's post-checkpoint sample in R's
    slot has about R's mono_ns)."""
    if len(original) < 2:
        raise RuntimeError(f"{len(original)} clock sample(s) from the original guest")
    m_ck = checkpoint_mono_ns(original, t_paused)
    seen = {e.data["mono_ns"] for e in original}
    fresh = [e for e in restored if e.data["mono_ns"] > m_ck and e.data["mono_ns"] not in seen]
    if not fresh:
        raise RuntimeError("no clock sample from the restored guest")
    R = fresh[0].data
    half = interval_ms * 1e6 / 2
    # A 10 ms margin: a sample taken just before the pause whose line came
    # late (m_ck errs early by the quickest line's latency).
    cands = [e.data for e in original
             if e.data["mono_ns"] < min(R["mono_ns"] - half, m_ck + 10e6)]
    if not cands:
        raise RuntimeError("no clock sample of the original guest before the restored guest's first")
    P = max(cands, key=lambda d: d["mono_ns"])
    first, last = original[0].data, original[-1].data
    tsc_per_ns = None
    if first.get("tsc") is not None and last.get("tsc") is not None and last["mono_ns"] > first["mono_ns"]:
        tsc_per_ns = (last["tsc"] - first["tsc"]) / (last["mono_ns"] - first["mono_ns"])

    def rtc_minus_real(d):
        return d["rtc_s"] - d["real_ns"] / 1e9 if d.get("rtc_s") is not None else None

    tsc_ms = None
    if tsc_per_ns and R.get("tsc") is not None and P.get("tsc") is not None:
        tsc_ms = (R["tsc"] - P["tsc"]) / tsc_per_ns / 1e6 - interval_ms
    rtc_after, rtc_before = rtc_minus_real(R), rtc_minus_real(P)
    return {
        "mono_ms": (R["mono_ns"] - P["mono_ns"]) / 1e6 - interval_ms,
        "real_ms": (R["real_ns"] - P["real_ns"]) / 1e6 - interval_ms,
        "tsc_ms": tsc_ms,
        "tsc_per_ns": tsc_per_ns,
        # Already off by up to 2 s at boot, by chance (the RTC has whole
        # seconds, and QEMU's RTC seconds tick at its start's sub-second
        # phase): what the restore did is the change.
        "rtc_minus_real_s": rtc_after,
        "rtc_minus_real_before_s": rtc_before,
        "rtc_change_s": rtc_after - rtc_before if rtc_after is not None and rtc_before is not None else None,
        "checkpoint_mono_ns": m_ck,
        "before": P, "after": R,
        "re_emitted": sum(1 for e in restored if e.data["mono_ns"] in seen),
    }


def cpu_share(before, after):
    """Shares of one host CPU between two Vm.cpu_times() samples: the vCPU
    thread on a CPU and runnable but waiting for one, and all the other
    threads of the QEMU process (mekha's worker, io_uring workers, the main
    loop, migration threads), exited ones included."""
    (t1, a), (t2, b) = before, after
    span = t2 - t1
    ticks = sum(v - a.get(k, 0.0) for k, v in b.items() if k.startswith("CPU ")) / span
    total = (b.get("*", 0.0) - a.get("*", 0.0)) / span
    if "vcpu-run" in b and "vcpu-run" in a:
        vcpu = (b["vcpu-run"] - a["vcpu-run"]) / span
        wait = (b["vcpu-wait"] - a["vcpu-wait"]) / span
    else:
        vcpu, wait = ticks, None
    return {"vcpu": vcpu, "vcpu_wait": wait, "other": max(0.0, total - ticks)}


# ---------------------------------------------------------------------------
# Files


def fsync_ms(path):
    t = time.time()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return (time.time() - t) * 1000.0


def file_mib(path):
    st = os.stat(path)
    return st.st_size / 2**20, st.st_blocks * 512 / 2**20


# ---------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.vms_dir = self.out / "vms"
        self.images = self.out / "images"
        self.art = Artifacts(ROOT)
        self.chunk = 1 << 22
        self.results = []       # one dict per (size, method, rep)
        self.restores = []      # one dict per (size, restore, rep)
        self.dd = []            # one dict per measurement
        self.controls = []      # noise floor per VM
        self.cpu_start = None   # Vm.cpu_times() just before a method's command
        self.clocks = None      # the clock measurement, if run

    def probe_args(self, chunk=None):
        return ["mekha.id=1", f"probe.mem={HOT_MIB}", "probe.rate=0",
                f"probe.compute={COMPUTE_STEPS}", f"probe.compute_chunk={chunk or self.chunk}",
                "probe.clock_ms=0"]

    def clock_probe_args(self):
        return [a if not a.startswith("probe.clock_ms=") else f"probe.clock_ms={CLOCK_MS}"
                for a in self.probe_args()]

    def boot(self, tag, mib, extra=(), incoming=False, probe_args=None):
        return Vm(self.art, self.vms_dir / tag, f"bench-{mib}", mib, probe_args or self.probe_args(),
                  extra_args=extra, incoming=incoming)

    def boot_incoming(self, tag, mib, probe_args):
        """A VM started with -incoming defer, checked to wait for its state
        (killed again if it does not)."""
        vm = self.boot(tag, mib, incoming=True, probe_args=probe_args)
        st = vm.qmp.execute("query-status")
        if st["status"] != "inmigrate":
            vm.kill()
            raise RuntimeError(f"{tag}: QEMU not waiting for an incoming migration: {st}")
        return vm

    def settle(self, vm):
        """Waits for the workload to run steadily; returns the steady rate
        (steps per host second over the last STEADY_S) and the noise floor."""
        vm.wait_probe("compute", lambda e: e.ev == "compute", BOOT_TIMEOUT_S)
        vm.wait_probe("dirty", lambda e: e.ev == "dirty" and e.data.get("pages_written", 0) > 0, BOOT_TIMEOUT_S)
        time.sleep(WARMUP_S)
        ta = time.time()
        time.sleep(STEADY_S)
        tb = time.time()
        cpu_b = vm.cpu_times()
        time.sleep(STEADY_S)
        tc = time.time()
        cpu_c = vm.cpu_times()
        vm.wait_probe("compute", lambda e: e.ev == "compute" and e.t > tc, 30)
        pts = vm.compute_points()
        rate_a = rate_between(pts, ta, tb)
        rate = rate_between(pts, tb, tc)
        control = lost_ms(pts, rate_a, tb, tc)
        loadavg = open("/proc/loadavg").read().split()[:3]
        n = len([p for p in pts if tb <= p[0] <= tc])
        per_s = n / STEADY_S
        if not EVENTS_PER_S[0] <= per_s <= EVENTS_PER_S[1]:
            chunk = 1 << max(10, round(rate / 25).bit_length() - 1)
            log(f"compute events at {per_s:.1f}/s with chunk {self.chunk}: chunk {chunk} for the next VMs")
            self.chunk = chunk
        self.controls.append(control)
        dirty = [e.data for e in vm.probe_events() if e.ev == "dirty"]
        return {"rate": rate, "rate_before": rate_a, "control_ms": control, "events_per_s": per_s,
                "dirty_mib_per_s": dirty[-1].get("mib_per_s") if dirty else None, "loadavg": loadavg,
                "cpu_steady": cpu_share(cpu_b, cpu_c)}

    def window_result(self, vm, steady, t0, t_done, spans, extra):
        """Lost work and the progress line over [t0, t_done + TAIL_S]."""
        te = t_done + TAIL_S
        time.sleep(max(0.0, te - time.time()))
        cpu_end = vm.cpu_times()
        status = vm.qmp.execute("query-status")["status"]
        if status != "running":
            raise RuntimeError(vm.diagnose(f"the VM is {status} after the checkpoint"))
        vm.wait_probe("compute after the window", lambda e: e.ev == "compute" and e.t > te + 0.05, 60)
        pts = vm.compute_points()
        rate = steady["rate"]
        # The longest time without a compute event in the window: a stalled
        # guest (or computation) whatever the pause says.
        inside = [t for t, _ in pts if t0 <= t <= te]
        before = [t for t, _ in pts if t < t0]
        after = [t for t, _ in pts if t > te]
        edges = before[-1:] + inside + after[:1]
        gaps = [(b - a, a) for a, b in zip(edges, edges[1:], strict=False)]
        gap, gap_at = max(gaps) if gaps else (None, None)
        r = {
            "lost_ms": lost_ms(pts, rate, t0, te),
            "stall_ms": gap * 1000 if gap is not None else None,
            "stall_at_s": gap_at - t0 if gap_at is not None else None,
            "event_interval_ms": 1000.0 / steady["events_per_s"] if steady["events_per_s"] else None,
            "control_ms": steady["control_ms"],
            "steady_rate": rate,
            "events_per_s": steady["events_per_s"],
            "dirty_mib_per_s": steady["dirty_mib_per_s"],
            "loadavg_before": steady["loadavg"],
            "cpu_steady": steady["cpu_steady"],
            "cpu_window": cpu_share(self.cpu_start, cpu_end),
            "spans": [(k, a - t0, b - t0) for k, a, b in spans],
            "progress": progress_series(pts, rate, t0, t0 - 1.0, te + 0.05),
            "window_s": te - t0,
        }
        r.update(extra)
        return r

    # -- methods -------------------------------------------------------------

    def run_mekha_cow(self, vm, steady, tag):
        return self.run_mekha(vm, steady, tag, mode="cow")

    def run_mekha_sealed(self, vm, steady, tag):
        lend_key(vm.qmp)
        return self.run_mekha(vm, steady, tag, mode="cow", sealed=True)

    def run_mekha(self, vm, steady, tag, mode="mtd", sealed=False):
        path = self.images / f"{tag}.mekha"
        q = vm.qmp
        args = {"path": str(path), "mode": mode}
        if sealed:
            args["key-secret"] = KEY_SECRET
        mark, t0, done, info = mekha_checkpoint(q, args)
        evs = q.events_since(mark)
        status_t = {}
        status_info = {}
        for e in evs:
            if e.name == "__org.mekha_CHECKPOINT":
                s = e.data.get("status")
                status_t.setdefault(s, e.qemu_t)
                status_info.setdefault(s, e.data)
        stop = next((e.qemu_t for e in evs if e.name == "STOP"), None)
        resume = next((e.qemu_t for e in evs if e.name == "RESUME"), None)
        t_paused = stop or status_t.get("paused")
        t_resumed = resume or status_t.get("persisting")
        t_persist = status_t.get("persisting")
        t_done = done.qemu_t
        written_before = status_info.get("persisting", {}).get("written-bytes", 0)
        staged_at_persist = status_info.get("persisting", {}).get("staged-bytes")
        persist_s = t_done - t_persist
        image_mib, image_alloc = file_mib(path)
        spans = [("live copy", t0, t_paused), ("paused", t_paused, t_resumed), ("persisting", t_persist, t_done)]
        if mode == "cow":
            # Before the stop: only registering and populating RAM.
            spans[0] = ("preparing", t0, t_paused)
            spans.insert(2, ("capturing", t_resumed, t_persist))
        extra = {
            "pause_ms": info["pause-ns"] / 1e6,
            "pause_host_ms": (resume - stop) * 1000 if stop and resume else None,
            "total_ms": (t_done - t0) * 1000,
            "total_qemu_ms": info["total-ns"] / 1e6,
            "live_ms": info["live-ns"] / 1e6,
            "persist_ms": persist_s * 1000,
            "staging_peak_mib": info["staging-peak-bytes"] / 2**20,
            "staging_budget_mib": info["staging-budget-bytes"] / 2**20,
            "image_mib": image_mib,
            "image_alloc_mib": image_alloc,
            "written_bytes": info["written-bytes"],
            "written_during_live_bytes": written_before,
            "write_mbps": (info["written-bytes"] - written_before) / persist_s / 1e6 if persist_s > 0 else None,
            "staged_at_persist_bytes": staged_at_persist,
            "persist_staged_mbps": staged_at_persist / persist_s / 1e6 if staged_at_persist and persist_s > 0 else None,
            "direct_io": info["direct-io"],
            "mode": info.get("mode"),
            "wp_faults": info.get("wp-faults"),
            "capture_ms": info.get("capture-ns", 0) / 1e6,
            "ended": True,
            "fsync_ms": fsync_ms(path),
            "info": info,
        }
        return self.window_result(vm, steady, t0, t_done, spans, extra), path

    def enable_events(self, q, **caps):
        """Turns on MIGRATION events (and `caps`); returns the migration
        parameters in force (QEMU's defaults: nothing else is changed)."""
        caps = {"events": True, **caps}
        q.execute("migrate-set-capabilities",
                  {"capabilities": [{"capability": k.replace("_", "-"), "state": v} for k, v in caps.items()]})
        params = q.execute("query-migrate-parameters")
        return {k: params.get(k) for k in ("max-bandwidth", "downtime-limit")}

    def cont(self, q, timeout=30.0):
        """`cont` as soon as QEMU accepts it: MIGRATION completed comes a
        moment before the migration is finalized, and `cont` is refused
        until then. Returns the host time of the accepted answer."""
        deadline = time.time() + timeout
        while True:
            try:
                return q.timed("cont")[2]
            except QmpError as e:
                if "not finalized" not in str(e) or time.time() > deadline:
                    raise
                time.sleep(0.001)

    def wait_migration(self, q, mark, timeout, statuses=("completed", "failed", "cancelled")):
        return q.wait_event(lambda e: e.name == "MIGRATION" and e.data.get("status") in statuses, mark, timeout)

    def migration_t(self, evs, status):
        return next((e.qemu_t for e in evs if e.name == "MIGRATION" and e.data.get("status") == status), None)

    def run_stop_migrate(self, vm, steady, tag):
        path = self.images / f"{tag}.migrate"
        q = vm.qmp
        params = self.enable_events(q)
        mark = q.mark()
        _, t0, _ = q.timed("stop")
        _, t_mig, _ = q.timed("migrate", {"uri": f"file:{path}"})
        done = self.wait_migration(q, mark, DONE_TIMEOUT_S)
        if done is None or done.data["status"] != "completed":
            raise RuntimeError(f"stop+migrate: {done.data if done else 'no end'}: {q.execute('query-migrate')}")
        mig = q.execute("query-migrate")
        t_cont = self.cont(q)
        q.wait_event(lambda e: e.name == "RESUME", mark, 30)
        evs = q.events_since(mark)
        stop = next(e.qemu_t for e in evs if e.name == "STOP")
        resume = next(e.qemu_t for e in evs if e.name == "RESUME")
        image_mib, image_alloc = file_mib(path)
        mig_s = done.qemu_t - t_mig
        spans = [("paused", stop, resume), ("writing (paused)", self.migration_t(evs, "setup") or t_mig, done.qemu_t)]
        extra = {
            "pause_ms": (t_cont - t0) * 1000,           # host: stop sent to cont answered
            "pause_qemu_ms": (resume - stop) * 1000,
            "total_ms": (t_cont - t0) * 1000,
            "image_mib": image_mib, "image_alloc_mib": image_alloc,
            "write_mbps": os.stat(path).st_size / mig_s / 1e6,
            "direct_io": False, "ended": True,
            "fsync_ms": fsync_ms(path),
            "query_migrate": mig,
            "migrate_parameters": params,
        }
        return self.window_result(vm, steady, t0, resume, spans, extra), path

    def run_live_migrate(self, vm, steady, tag):
        path = self.images / f"{tag}.live"
        q = vm.qmp
        params = self.enable_events(q)
        mark = q.mark()
        _, t0, _ = q.timed("migrate", {"uri": f"file:{path}"})
        done = self.wait_migration(q, mark, self.args.live_cap)
        extra = {"direct_io": False, "migrate_parameters": params}
        mig = None
        if done is None:
            # Not ended within the cap: cancel. It may still end meanwhile.
            mig = q.execute("query-migrate")
            mark2 = q.mark()
            try:
                q.execute("migrate_cancel")
            except QmpError as e:
                log(f"{tag}: migrate_cancel: {e}")
            done = self.wait_migration(q, mark2, 120)
            if done is None:
                raise RuntimeError(vm.diagnose("live migration neither cancelled nor ended"))
        if done.data["status"] == "completed":
            # A source that migrated stays stopped (postmigrate): resume it,
            # as a user of a live save to file would.
            mig = q.execute("query-migrate")
            t_cont = self.cont(q)
            resumed = q.wait_event(lambda e: e.name == "RESUME", mark, 30)
            evs = q.events_since(mark)
            stop = next((e.qemu_t for e in evs if e.name == "STOP"), None)
            resume = resumed.qemu_t if resumed else t_cont
            spans = [("migrating", t0, stop or done.qemu_t), ("paused", stop or done.qemu_t, resume)]
            image_mib, image_alloc = file_mib(path)
            extra.update(ended=True, pause_ms=(resume - stop) * 1000 if stop else None,
                         downtime_ms=mig.get("downtime"), total_ms=(resume - t0) * 1000,
                         image_mib=image_mib, image_alloc_mib=image_alloc,
                         transferred_bytes=mig.get("ram", {}).get("transferred"),
                         write_mbps=os.stat(path).st_size / (done.qemu_t - t0) / 1e6,
                         fsync_ms=fsync_ms(path), query_migrate=mig)
            t_end = resume
        elif done.data["status"] == "cancelled":
            t_end = done.qemu_t
            spans = [("migrating", t0, t_end)]
            extra.update(ended=False, pause_ms=None, total_ms=None,
                         cancelled_after_ms=(t_end - t0) * 1000,
                         transferred_bytes=mig.get("ram", {}).get("transferred"),
                         partial_image_mib=os.stat(path).st_size / 2**20 if path.exists() else None,
                         query_migrate=mig)
        else:
            raise RuntimeError(f"live migrate: {done.data}: {q.execute('query-migrate')}")
        r = self.window_result(vm, steady, t0, t_end, spans, extra)
        remove(path)
        return r, None

    def run_bg_snapshot(self, vm, steady, tag):
        path = self.images / f"{tag}.bgsnap"
        q = vm.qmp
        params = self.enable_events(q, background_snapshot=True)
        mark = q.mark()
        _, t0, _ = q.timed("migrate", {"uri": f"file:{path}"})
        done = self.wait_migration(q, mark, DONE_TIMEOUT_S)
        if done is None or done.data["status"] != "completed":
            raise RuntimeError(f"background-snapshot: {done.data if done else 'no end'}: {q.execute('query-migrate')}")
        mig = q.execute("query-migrate")
        evs = q.events_since(mark)
        stop = next((e.qemu_t for e in evs if e.name == "STOP"), None)
        resume = next((e.qemu_t for e in evs if e.name == "RESUME"), None)
        t_end = done.qemu_t
        spans = []
        if stop and resume:
            spans.append(("paused", stop, resume))
        spans.append(("migrating", resume or t0, t_end))
        image_mib, image_alloc = file_mib(path)
        extra = {
            "pause_ms": mig.get("downtime"),
            "pause_host_ms": (resume - stop) * 1000 if stop and resume else None,
            "total_ms": (t_end - t0) * 1000,
            "image_mib": image_mib, "image_alloc_mib": image_alloc,
            "write_mbps": os.stat(path).st_size / (t_end - t0) / 1e6,
            "direct_io": False, "ended": True,
            "fsync_ms": fsync_ms(path),
            "query_migrate": mig,
            "migrate_parameters": params,
        }
        r = self.window_result(vm, steady, t0, t_end, spans, extra)
        remove(path)
        return r, None

    def run_snapshot_save(self, vm, steady, tag, disk):
        q = vm.qmp
        mark = q.mark()
        _, t0, _ = q.timed("snapshot-save", {"job-id": "bench-save", "tag": "bench", "vmstate": "d0",
                                             "devices": ["d0"]})
        done = q.wait_event(lambda e: e.name == "JOB_STATUS_CHANGE" and e.data.get("id") == "bench-save"
                            and e.data.get("status") == "concluded", mark, DONE_TIMEOUT_S)
        if done is None:
            raise RuntimeError("snapshot-save did not conclude")
        jobs = [j for j in q.execute("query-jobs") if j["id"] == "bench-save"]
        if jobs and jobs[0].get("error"):
            raise RuntimeError(f"snapshot-save: {jobs[0]['error']}")
        q.execute("job-dismiss", {"id": "bench-save"})
        evs = q.events_since(mark)
        stop = next((e.qemu_t for e in evs if e.name == "STOP"), None)
        resume = next((e.qemu_t for e in evs if e.name == "RESUME"), None)
        if stop is None or resume is None:
            raise RuntimeError("snapshot-save: no STOP/RESUME events")
        t_end = max(done.qemu_t, resume)
        image_mib, image_alloc = file_mib(disk)
        spans = [("paused", stop, resume), ("writing (paused)", stop, resume)]
        extra = {
            "pause_ms": (resume - stop) * 1000,
            "total_ms": (t_end - t0) * 1000,
            "image_mib": image_mib, "image_alloc_mib": image_alloc,
            "write_mbps": os.stat(disk).st_size / (resume - stop) / 1e6,
            "direct_io": False, "ended": True,
            "fsync_ms": fsync_ms(disk),
        }
        return self.window_result(vm, steady, t0, t_end, spans, extra), None

    def measure(self, mib, method, rep):
        tag = f"{mib}-{rep}-{method}"
        extra_args = []
        disk = None
        if method == "snapshot-save":
            disk = self.images / f"{tag}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
            extra_args = ["-drive", f"file={disk},format=qcow2,if=none,id=drive-d0,node-name=d0",
                          "-device", "virtio-blk-pci,drive=drive-d0"]
        probe_args = self.probe_args()
        vm = self.boot(tag, mib, extra_args, probe_args=probe_args)
        try:
            steady = self.settle(vm)
            log(f"{tag}: steady {steady['rate'] / 1e6:.1f} M steps/s, {steady['events_per_s']:.0f} events/s, "
                f"dirtying {steady['dirty_mib_per_s']} MiB/s; noise floor {steady['control_ms']:+.0f} ms")
            self.cpu_start = vm.cpu_times()
            if method == "snapshot-save":
                r, image = self.run_snapshot_save(vm, steady, tag, disk)
            else:
                r, image = getattr(self, "run_" + method.replace("-", "_"))(vm, steady, tag)
            if not vm.alive():
                raise RuntimeError(f"{tag}: QEMU died: {vm.stderr()}")
        finally:
            vm.kill()
            if disk is not None:
                remove(disk)
        r.update(size_mib=mib, method=method, rep=rep, probe_args=probe_args)
        log(f"{tag}: pause {fmt(r.get('pause_ms'))} ms, total {fmt(r.get('total_ms'))} ms, "
            f"lost {r['lost_ms']:.0f} ms, ended {r['ended']}")
        return r, image

    # -- restores ------------------------------------------------------------

    def restore(self, mib, kind, rep, image, probe_args):
        tag = f"{mib}-{rep}-restore-{kind}"
        drop_cache(image)
        vm = self.boot_incoming(tag, mib, probe_args)
        try:
            q = vm.qmp
            if kind == "stock-incoming":
                self.enable_events(q)
            mark = q.mark()
            if kind.startswith("mekha"):
                args = {"path": str(image), "lazy": kind == "mekha-lazy"}
                if kind == "mekha-keyed":
                    lend_key(q)
                    args["key-secret"] = KEY_SECRET
                _, t0, _ = q.timed("__org.mekha_restore", args)
                done = q.wait_event(lambda e: e.name == "__org.mekha_RESTORE", mark, DONE_TIMEOUT_S)
                info = q.execute("__org.mekha_query-restore")
                if info["status"] != "completed":
                    raise RuntimeError(f"{tag}: mekha restore: {info}")
            else:
                _, t0, _ = q.timed("migrate-incoming", {"uri": f"file:{image}"})
                done = self.wait_migration(q, mark, DONE_TIMEOUT_S)
                if done is None or done.data["status"] != "completed":
                    raise RuntimeError(f"{tag}: migrate-incoming: {done.data if done else 'no end'}")
                info = q.execute("query-migrate")
                # The image of a stopped VM restores stopped (QEMU's global
                # state): resume it, as its user would.
                if q.execute("query-status")["status"] != "running":
                    self.cont(q)
            resumed = q.wait_event(lambda e: e.name == "RESUME", mark, 60)
            if resumed is None:
                raise RuntimeError(f"{tag}: the VM did not resume: {q.execute('query-status')}")
            running_ms = (resumed.qemu_t - t0) * 1000
            rss = vm.rss_kib()
            first = vm.wait_probe("compute after restore", lambda e: e.ev == "compute", 120)
            time.sleep(1.0)
            evs = vm.probe_events()
            rebooted = any(e.ev == "start" for e in evs)
            anomalies = sum(1 for e in evs if e.ev == "dirty_anomaly")
            rss_later = vm.rss_kib()
        finally:
            vm.kill()
        r = {"size_mib": mib, "restore": kind, "rep": rep, "running_ms": running_ms,
             "first_progress_ms": (first.t - t0) * 1000, "rss_mib": rss / 1024 if rss else None,
             "rss_1s_mib": rss_later / 1024 if rss_later else None,
             "image_mib": os.stat(image).st_size / 2**20, "ok": not rebooted and anomalies == 0,
             "rebooted": rebooted, "dirty_anomalies": anomalies, "info": info}
        log(f"{tag}: running after {running_ms:.0f} ms, first progress {r['first_progress_ms']:.0f} ms, "
            f"RSS {fmt(r['rss_mib'])} MiB, guest ok {r['ok']}")
        return r

    # -- guest clocks across a restore gap -----------------------------------

    def wait_clocks(self, vm, n, what, timeout, pred=lambda e: True):
        """The n-th `clock` event satisfying pred."""
        count = [0]

        def nth(e):
            if e.ev == "clock" and pred(e):
                count[0] += 1
            return count[0] >= n
        return vm.wait_probe(what, nth, timeout)

    def clock_gap(self, kind, gap):
        """Checkpoint (mekha, or stock stop + migrate file:), kill QEMU, wait
        `gap` s, restore into a fresh QEMU; each clock's advance."""
        tag = f"clocks-{kind}"
        probe_args = self.clock_probe_args()
        path = self.images / (f"{tag}.mekha" if kind == "mekha" else f"{tag}.migrate")
        r = {"method": kind, "size_mib": CLOCK_MIB, "gap_s": gap, "interval_ms": CLOCK_MS, "probe_args": probe_args}
        try:
            vm = self.boot(tag, CLOCK_MIB, probe_args=probe_args)
            try:
                self.wait_clocks(vm, CLOCK_BEFORE, f"{CLOCK_BEFORE} clock samples", BOOT_TIMEOUT_S)
                q = vm.qmp
                if kind == "mekha":
                    mark, _, _, info = mekha_checkpoint(q, {"path": str(path)})
                    evs = q.events_since(mark)
                    t_paused = next((e.qemu_t for e in evs if e.name == "STOP"), None) or next(
                        (e.qemu_t for e in evs if e.name == "__org.mekha_CHECKPOINT"
                         and e.data.get("status") == "paused"), None)
                    r["checkpoint_mode"] = info.get("mode")
                else:
                    self.enable_events(q)
                    mark = q.mark()
                    q.execute("stop")
                    q.execute("migrate", {"uri": f"file:{path}"})
                    done = self.wait_migration(q, mark, DONE_TIMEOUT_S)
                    if done is None or done.data["status"] != "completed":
                        raise RuntimeError(f"stop+migrate: {done.data if done else 'no end'}: "
                                           f"{q.execute('query-migrate')}")
                    t_paused = next((e.qemu_t for e in q.events_since(mark) if e.name == "STOP"), None)
                if t_paused is None:
                    raise RuntimeError(f"{tag}: no STOP event for the checkpoint")
            finally:
                vm.kill()
            t_killed = time.time()
            original = [e for e in vm.probe_events() if e.ev == "clock"]
            m_ck = checkpoint_mono_ns(original, t_paused)
            seen = {e.data["mono_ns"] for e in original}
            log(f"{tag}: checkpoint done, QEMU killed; {len(original)} clock samples; no QEMU for {gap:.0f} s")
            time.sleep(max(0.0, t_killed + gap - time.time()))
            vm = self.boot_incoming(tag + "-restore", CLOCK_MIB, probe_args)
            try:
                q = vm.qmp
                if kind == "stock":
                    self.enable_events(q)
                mark = q.mark()
                if kind == "mekha":
                    q.execute("__org.mekha_restore", {"path": str(path), "time": "continue"})
                    q.wait_event(lambda e: e.name == "__org.mekha_RESTORE"
                                 and e.data.get("status") in ("completed", "failed"), mark, DONE_TIMEOUT_S)
                    info = q.execute("__org.mekha_query-restore")
                    if info["status"] != "completed":
                        raise RuntimeError(f"{tag}: mekha restore: {info}")
                else:
                    q.execute("migrate-incoming", {"uri": f"file:{path}"})
                    done = self.wait_migration(q, mark, DONE_TIMEOUT_S)
                    if done is None or done.data["status"] != "completed":
                        raise RuntimeError(f"{tag}: migrate-incoming: {done.data if done else 'no end'}")
                    if q.execute("query-status")["status"] != "running":
                        self.cont(q)
                resumed = q.wait_event(lambda e: e.name == "RESUME", mark, 60)
                if resumed is None:
                    raise RuntimeError(f"{tag}: the VM did not resume: {q.execute('query-status')}")
                r["host_gap_s"] = resumed.qemu_t - t_paused
                if kind == "mekha":
                    try:
                        r["time_info"] = q.execute("__org.mekha_query-time")
                    except QmpError as e:
                        r["time_info"] = f"{e}"
                self.wait_clocks(vm, CLOCK_AFTER, f"{CLOCK_AFTER} clock samples after the restore", 120,
                                 lambda e: e.data["mono_ns"] > m_ck and e.data["mono_ns"] not in seen)
                evs = vm.probe_events()
            finally:
                vm.kill()
            if any(e.ev == "start" for e in evs):
                raise RuntimeError(f"{tag}: the restored guest booted again")
            r.update(clock_advance(original, [e for e in evs if e.ev == "clock"], t_paused, CLOCK_MS))
            r["samples_before"] = len(original)
            log(f"{tag}: advance across {gap:.0f} s: CLOCK_MONOTONIC {fmt(r['mono_ms'], 1)} ms, CLOCK_REALTIME "
                f"{fmt(r['real_ms'], 1)} ms, TSC {fmt(r['tsc_ms'], 1)} ms; RTC - CLOCK_REALTIME "
                f"{fmt(r['rtc_minus_real_s'], 2)} s ({fmt(r['rtc_change_s'], 2)} s from before the checkpoint)")
        except Exception as e:  # noqa: BLE001 - reported in the table, the bench goes on
            log(f"{tag}: failed: {e}")
            r["error"] = str(e)
        finally:
            remove(path)
        return r

    def clock_gaps(self):
        gap = self.args.clock_gap
        return {"gap_s": gap, "interval_ms": CLOCK_MS, "size_mib": CLOCK_MIB,
                "methods": {kind: self.clock_gap(kind, gap) for kind in CLOCK_KINDS}}

    # -- dd ------------------------------------------------------------------

    def dd_measure(self):
        path = self.out / "dd.tmp"
        try:
            p = subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=512", "oflag=direct",
                                "conv=fsync"], capture_output=True, text=True, check=True)
        finally:
            remove(path)
        m = re.search(r"^(\d+) bytes.* copied, ([0-9.,]+) s", p.stderr, re.M)
        if not m:
            raise RuntimeError(f"cannot read dd's output: {p.stderr}")
        nbytes, secs = int(m.group(1)), float(m.group(2).replace(",", "."))
        r = {"bytes": nbytes, "seconds": secs, "mbps": nbytes / secs / 1e6}
        log(f"dd oflag=direct: {r['mbps']:.0f} MB/s")
        return r

    # -- the run -------------------------------------------------------------

    def run(self):
        sizes = self.args.sizes
        reps = self.args.reps
        for d in (self.vms_dir, self.images):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        started = time.time()
        methods = [m for m in self.args.methods if m != CLOCKS]
        for mib in sizes if methods else ():
            for rep in range(reps):
                self.dd.append(self.dd_measure())
                images = {}
                for method in methods:
                    r, image = self.measure(mib, method, rep)
                    self.results.append(r)
                    if image is not None:
                        images[method] = (image, r["probe_args"])
                for kind in RESTORES:
                    source = "stop-migrate"
                    if kind == "mekha-keyed":
                        source = "mekha-sealed"
                    elif kind.startswith("mekha"):
                        source = "mekha" if "mekha" in images else "mekha-cow"
                    if source not in images:
                        continue
                    image, probe_args = images[source]
                    self.restores.append(self.restore(mib, kind, rep, image, probe_args))
                for image, _ in images.values():
                    remove(image)
        if methods:
            self.dd.append(self.dd_measure())
        if CLOCKS in self.args.methods:
            self.clocks = self.clock_gaps()
        return time.time() - started


def lend_key(q):
    """Puts the bench's image key into the QEMU behind `q` as a secret."""
    q.execute("object-add", {"qom-type": "secret", "id": KEY_SECRET, "data": KEY_HEX, "format": "raw"})


def mekha_checkpoint(q, args):
    """Runs __org.mekha_checkpoint with `args` to completion; returns the
    event mark before it, the host time it was sent, the completion event
    and the final query-checkpoint. Raises if it fails or hangs."""
    mark = q.mark()
    _, t0, _ = q.timed("__org.mekha_checkpoint", args)
    done = q.wait_event(lambda e: e.name == "__org.mekha_CHECKPOINT"
                        and e.data.get("status") in ("completed", "failed"), mark, DONE_TIMEOUT_S)
    if done is None:
        raise RuntimeError(f"mekha checkpoint did not complete in {DONE_TIMEOUT_S} s")
    info = q.execute("__org.mekha_query-checkpoint")
    if info["status"] != "completed":
        raise RuntimeError(f"mekha checkpoint failed: {info.get('error')}")
    return mark, t0, done, info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="512 MiB only, 1 repetition, live migration capped at 20 s")
    ap.add_argument("--out", default=str(ROOT / "target/bench/checkpoint"), help="output directory")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    ap.add_argument("--live-cap", type=float, help="cap of stock live migration, s (default 60, --quick 20)")
    ap.add_argument("--nice", type=int, default=-10,
                    help="nice value of this script, its QEMUs and dd (default -10: less noise from other "
                         "host load; 0 to leave it)")
    ap.add_argument("--sizes", help="VM sizes in MiB, comma-separated (default 512,2048; --quick 512)")
    ap.add_argument("--methods", default=",".join(METHODS + [CLOCKS]),
                    help=f"subset of {','.join(METHODS + [CLOCKS])} (default: all; {CLOCKS}: the guest clocks "
                         f"across a restore gap, once per run, after the others)")
    ap.add_argument("--no-clocks", action="store_true", help=f"leave out {CLOCKS}")
    ap.add_argument("--clock-gap", type=float, default=CLOCK_GAP_S,
                    help=f"seconds without QEMU between checkpoint and restore in {CLOCKS} "
                         f"(default {CLOCK_GAP_S:.0f}, also with --quick)")
    args = ap.parse_args()
    args.sizes = [int(x) for x in (args.sizes or ("512" if args.quick else "512,2048")).split(",")]
    args.methods = [m for m in args.methods.split(",") if not (args.no_clocks and m == CLOCKS)]
    for m in args.methods:
        if m not in METHODS + [CLOCKS]:
            ap.error(f"unknown method {m}")
    args.reps = args.reps or (1 if args.quick else 3)
    args.live_cap = args.live_cap or (20.0 if args.quick else 60.0)
    if shutil.which("qemu-img") is None:
        raise SystemExit("qemu-img not found (Debian package qemu-utils)")

    common.setup_process("bench-checkpoint", args.nice, kill_all)
    bench = Bench(args)
    bench.out.mkdir(parents=True, exist_ok=True)
    log(f"output in {bench.out}; {args.reps} repetition(s); live migration capped at {args.live_cap:.0f} s")
    elapsed, host = common.run(bench.run, kill_all, bench.images)
    data = {
        "quick": args.quick, "reps": args.reps, "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "live_cap_s": args.live_cap, "elapsed_s": elapsed,
        "workload": {"hot_mib": HOT_MIB, "rate": 0, "steady_s": STEADY_S, "tail_s": TAIL_S},
        "host": host,
        "results": bench.results, "restores": bench.restores, "dd": bench.dd, "controls_ms": bench.controls,
        "clocks": bench.clocks,
    }
    report.write(bench.out, data)
    log(f"done in {elapsed / 60:.1f} min")


if __name__ == "__main__":
    main()
