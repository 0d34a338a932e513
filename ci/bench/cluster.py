#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Cluster checkpoint benchmark: mekha's coordinated checkpoint and restart
of N VMs beside stock QEMU driven the way a user would script it, on the
cluster targets of the design ("Targets" in docs/design.md).

Run through ci/bench-cluster (which builds everything first). For each N
(default 1,2,3,4) and repetition, each method gets a fresh cluster: N VMs
(TCG, 256 MiB, named node0..node{N-1}) on bridge br0 inside a network
namespace this script creates (one tap per VM, QEMU started with `ip netns
exec`, as tests/rig/src/cluster.rs does), each VM with two QMP monitors
(qmp.sock for this script, cli-qmp.sock for the mekha CLI, as
tests/rig/src/vm.rs) and its serial console read through a socket so that
every probe line gets a host timestamp (ci/bench/vm.py). Every guest probe
computes without end, dirties a 32 MiB set at 64 MiB/s and exchanges
sequenced TCP and UDP messages with every other VM (mekha.ip=10.77.0.X/24,
probe.peers, probe.msgs, probe.msg_interval_ms). The checkpoint comes once
every probe has received MIN_RX messages on every link, mid-exchange.

Methods, each on its own fresh cluster:
  mekha  `mekha checkpoint --json --qmp ... --dir DIR` (attach mode, on the
         second monitors); the checkpointed cluster runs on AFTER_S, every
         QEMU is killed and started again with -incoming defer, and
         `mekha restore --json --qmp ... --dir DIR` restarts it.
  stock  QMP `stop` sent to every VM, then the answers awaited; `migrate`
         file:PATH sent to every VM, then each MIGRATION completed awaited;
         `cont` sent to every VM (again while QEMU says the migration is not
         finalized); the images fsync'ed (concurrently) for durability, as
         mekha's are. Restart: every QEMU killed and started with -incoming
         defer, `migrate-incoming file:PATH` sent to each, each completion
         awaited, `cont` to every VM.
Before each restart the images' page cache is dropped (fsync, then
posix_fadvise DONTNEED), so both restarts read from the disk.

Measured, from QMP events on the first monitor of every VM (QEMU's own
timestamps, microseconds of the host's CLOCK_REALTIME; the host receive
times are kept in results.json): cluster pause = first STOP to last RESUME;
suspend (resume) skew = latest minus earliest STOP (RESUME) event of the
VMs; checkpoint latency = host time from starting the command (spawning the
mekha CLI, or sending the first `stop`) until every image is durable (the
CLI exits with its manifest committed; the last fsync returns); bytes
written (mekha's written-bytes, the stock images' sizes); restart time =
from starting the restart (spawning `mekha restore`, or sending the first
`migrate-incoming`) to the last RESUME event; restart resume skew = spread
of those RESUME events. mekha's own figures (stopped-at-ns and
resumed-at-ns of every VM, skew to its rendezvous instants, latency_ms,
live_ms, pause-ns) are reported beside them.

After each restart: whether the job went on: every probe's `net_done` per
(peer, proto) (lost, dup, reordered, corrupt, complete), `net_anomaly`,
`dirty_anomaly`, a reboot (`start`), and the computation's checksums after
the restart against a run of the probe on the host (the probe binary of
target/x86_64-unknown-linux-gnu/release, when present). Reported, never a
failure of the bench. A method that fails is reported as failed; the bench
goes on. Every QEMU is killed and the namespace deleted at exit, on Ctrl-C
and on errors; images are deleted once measured.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster_report  # noqa: E402
import common  # noqa: E402
from common import drop_cache, fmt, log, remove  # noqa: E402
from qmp import QmpError  # noqa: E402
from vm import Artifacts, Vm, kill_all  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

MEM_MIB = 256
DIRTY_MIB = 32
DIRTY_RATE = 64                  # MiB/s
COMPUTE_STEPS = 1 << 62          # never ends during a run
COMPUTE_CHUNK = 1 << 23          # steps between compute events
MSGS = 1000                      # messages per peer per protocol
MSG_INTERVAL_MS = 20             # 20 s of exchange per link
MIN_RX = 50                      # messages received on every link before the checkpoint
STEADY_S = 1.0                   # then this long before the checkpoint
AFTER_S = 1.0                    # the checkpointed cluster runs on this long before it is killed
BOOT_TIMEOUT_S = 180
CMD_TIMEOUT_S = 600              # one checkpoint or restart, at most
JOB_TIMEOUT_S = 120              # after the restart, beyond the messages left at MSG_INTERVAL_MS
COMPUTE_AFTER = 3                # compute events wanted from every restored VM
SUBNET = "10.77.0"
NS_PREFIX = "mekha-b"            # this bench's namespaces: mekha-b<pid>
BRIDGE = "br0"
METHODS = ("mekha", "stock")
PROTOS = ("tcp", "udp")


def spread(values):
    values = [v for v in values if v is not None]
    return max(values) - min(values) if values else None


def ms(seconds):
    return None if seconds is None else seconds * 1000.0


# ---------------------------------------------------------------------------
# The network namespace


def ip(*args, check=True):
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p


class Netns:
    """A namespace holding bridge br0 and one tap per VM slot: the
    cluster's network, reached from nowhere else (tests/rig/src/netns.rs)."""

    def __init__(self):
        self._sweep_stale()
        self.name = f"{NS_PREFIX}{os.getpid()}"
        self.taps = []
        self.deleted = False
        ip("netns", "add", self.name)
        ip("-n", self.name, "link", "set", "lo", "up")
        ip("-n", self.name, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", self.name, "link", "set", BRIDGE, "up")

    def tap(self, i):
        """Tap i, created (enslaved to the bridge, up) on first use."""
        while len(self.taps) <= i:
            tap = f"tap{len(self.taps)}"
            ip("-n", self.name, "tuntap", "add", "dev", tap, "mode", "tap")
            ip("-n", self.name, "link", "set", tap, "master", BRIDGE)
            ip("-n", self.name, "link", "set", tap, "up")
            self.taps.append(tap)
        return self.taps[i]

    def delete(self):
        """Kills what still runs inside (only this bench's QEMUs run there)
        and deletes the namespace."""
        if self.deleted:
            return
        self.deleted = True
        p = ip("netns", "pids", self.name, check=False)
        for pid in p.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        ip("netns", "del", self.name, check=False)

    @staticmethod
    def _sweep_stale():
        """Deletes this bench's namespaces left by runs that died, when
        nothing runs in them any more."""
        p = ip("netns", "list", check=False)
        for line in p.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            rest = name[len(NS_PREFIX):] if name.startswith(NS_PREFIX) else None
            if not rest or not rest.isdigit() or Path(f"/proc/{rest}").exists():
                continue
            if ip("netns", "pids", name, check=False).stdout.split():
                log(f"stale namespace {name} still has processes: left alone")
                continue
            ip("netns", "del", name, check=False)
            log(f"deleted stale namespace {name}")


class NsArtifacts:
    """Artifacts whose `qemu` is a wrapper running the patched QEMU inside
    the namespace, so that vm.Vm starts it unchanged (`exec` all the way:
    the process vm.Vm kills is QEMU itself)."""

    def __init__(self, art, netns, out):
        self.kernel, self.initrd, self.mekha = art.kernel, art.initrd, art.mekha
        self.qemu = out / "qemu-in-netns"
        self.qemu.write_text(f"#!/bin/sh\nexec ip netns exec {netns.name} {art.qemu} \"$@\"\n")
        self.qemu.chmod(0o755)


def host_ip(i):
    return f"{SUBNET}.{11 + i}"


class Node(Vm):
    """A cluster VM: vm.Vm plus a NIC on a tap of the namespace and a
    second QMP monitor (cli-qmp.sock) for the mekha CLI."""

    def __init__(self, art, netns, directory, i, n, incoming=False):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.index = i
        self.ip = host_ip(i)
        self.peers = [host_ip(j) for j in range(n) if j != i]
        self.cli_qmp_path = directory / "cli-qmp.sock"
        if len(str(self.cli_qmp_path)) > 100:
            raise SystemExit(f"socket path too long for AF_UNIX: {self.cli_qmp_path} (use a shorter --out)")
        remove(self.cli_qmp_path)
        # no_timer_check: with several TCG guests booting at once on a busy
        # host, the kernel's early IO-APIC timer check can starve and panic
        # ("IO-APIC + timer doesn't work!"); the probe ignores the word.
        probe = ["no_timer_check", f"mekha.id={i}", f"mekha.ip={self.ip}/24",
                 f"probe.mem={DIRTY_MIB}", f"probe.rate={DIRTY_RATE}",
                 f"probe.compute={COMPUTE_STEPS}", f"probe.compute_chunk={COMPUTE_CHUNK}", "probe.clock_ms=0",
                 f"probe.msgs={MSGS}", f"probe.msg_interval_ms={MSG_INTERVAL_MS}"]
        if self.peers:
            probe.append(f"probe.peers={','.join(self.peers)}")
        extra = ["-qmp", f"unix:{self.cli_qmp_path},server=on,wait=off",
                 "-netdev", f"tap,id=net0,ifname={netns.tap(i)},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=net0,mac=52:54:00:77:00:{11 + i:02x},romfile="]
        super().__init__(art, directory, f"node{i}", MEM_MIB, probe, extra_args=extra, incoming=incoming)

    def links(self):
        """The (peer, proto) streams this VM's probe runs."""
        return [(p, proto) for p in self.peers for proto in PROTOS]

    def latest(self, ev):
        """The latest `ev` event per (peer, proto)."""
        out = {}
        for e in self.probe_events():
            if e.ev == ev and "peer" in e.data:
                out[(e.data["peer"], e.data.get("proto"))] = e
        return out


# ---------------------------------------------------------------------------
# QMP on every VM at once


def send_all(vms, command, args_of=lambda vm: None):
    """Sends `command` to every VM, then waits for every answer; returns
    [(host time sent, host time answered)]; raises on the first error, after
    every answer arrived."""
    sent = [vm.qmp.send(command, args_of(vm)) for vm in vms]
    out, errors = [], []
    for vm, (cid, t) in zip(vms, sent):
        try:
            _, got = vm.qmp.answer(cid, 60)
            out.append((t, got))
        except QmpError as e:
            errors.append(f"{vm.name}: {command}: {e}")
            out.append((t, None))
    if errors:
        raise RuntimeError("; ".join(errors))
    return out


def cont_all(vms, timeout=30.0):
    """`cont` to every VM at once; again to those whose migration QEMU has
    not finalized yet (MIGRATION completed comes a moment before, and
    `cont` is refused until then). Host times of the accepted answers."""
    deadline = time.time() + timeout
    pending = list(range(len(vms)))
    accepted = [None] * len(vms)
    refused = [0] * len(vms)
    while pending:
        sent = [(i, vms[i].qmp.send("cont")[0]) for i in pending]
        retry = []
        for i, cid in sent:
            try:
                accepted[i] = vms[i].qmp.answer(cid, 60)[1]
            except QmpError as e:
                if "not finalized" not in str(e) or time.time() > deadline:
                    raise RuntimeError(f"{vms[i].name}: cont: {e}")
                refused[i] += 1
                retry.append(i)
        pending = retry
        if pending:
            time.sleep(0.001)
    return accepted, refused


def enable_events(vms):
    for vm in vms:
        vm.qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})


def wait_migrations(vms, marks, timeout):
    """Each VM's MIGRATION completed event; raises on failure."""
    done = []
    for vm, mark in zip(vms, marks):
        e = vm.qmp.wait_event(lambda e: e.name == "MIGRATION"
                              and e.data.get("status") in ("completed", "failed", "cancelled"), mark, timeout)
        if e is None or e.data["status"] != "completed":
            try:
                info = vm.qmp.execute("query-migrate", timeout=5)
            except Exception as x:  # noqa: BLE001 - only for the message
                info = f"query-migrate failed: {x}"
            raise RuntimeError(f"{vm.name}: migration {e.data['status'] if e else 'did not end'}: {info}")
        done.append(e)
    return done


def first_event(vm, mark, name, pred=lambda e: True):
    return next((e for e in vm.qmp.events_since(mark) if e.name == name and pred(e)), None)


def wait_resumed(vms, marks, timeout=30.0):
    """Each VM's first RESUME event since its mark."""
    out = []
    for vm, mark in zip(vms, marks):
        e = vm.qmp.wait_event(lambda e: e.name == "RESUME", mark, timeout)
        if e is None:
            raise RuntimeError(vm.diagnose("no RESUME event"))
        out.append(e)
    return out


def fsync_all(paths):
    """fsyncs every file concurrently; the host time each one returned."""
    ends = [None] * len(paths)
    errors = []

    def one(i):
        try:
            fd = os.open(paths[i], os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            ends[i] = time.time()
        except OSError as e:
            errors.append(f"{paths[i]}: {e}")
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("fsync: " + "; ".join(errors))
    return ends


# ---------------------------------------------------------------------------
# The computation's reference


class Reference:
    """The probe's checksums at every chunk boundary, from the probe run on
    the host (the same deterministic computation)."""

    def __init__(self, target):
        self.probe = target / "x86_64-unknown-linux-gnu/release/mekha-probe"
        self.sums = {}
        self.upto = 0

    def available(self):
        return self.probe.exists()

    def checksums(self, max_step):
        if max_step > self.upto:
            t = time.time()
            p = subprocess.Popen([str(self.probe), "--cmdline",
                                  f"probe.compute={max_step} probe.compute_chunk={COMPUTE_CHUNK} probe.clock_ms=0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            sums = {}
            try:
                for line in p.stdout:
                    i = line.find("@probe {")
                    if i < 0:
                        continue
                    d = json.loads(line[i + 7:])
                    if d.get("ev") == "compute":
                        sums[d["step"]] = d["checksum"]
                    elif d.get("ev") == "compute_done":
                        break
            finally:
                p.kill()
                p.wait()
            self.sums, self.upto = sums, max_step
            log(f"computation reference up to step {max_step} on the host: {time.time() - t:.1f} s")
        return self.sums


# ---------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.vms_dir = self.out / "vms"
        self.images = self.out / "images"
        base = Artifacts(ROOT)
        if not base.mekha.exists():
            raise SystemExit(f"missing {base.mekha}: run ci/build")
        self.base = base
        self.netns = None
        self.art = None
        self.reference = Reference(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")))
        self.runs = []          # one dict per (n, rep, method)

    def setup(self):
        for d in (self.vms_dir, self.images):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        self.netns = Netns()
        self.art = NsArtifacts(self.base, self.netns, self.out)
        log(f"network namespace {self.netns.name}, bridge {BRIDGE}")

    def cleanup(self):
        kill_all()
        if self.netns is not None:
            self.netns.delete()

    # -- the cluster ---------------------------------------------------------

    def boot(self, tag, n, incoming=False):
        vms = []
        try:
            for i in range(n):
                vms.append(Node(self.art, self.netns, self.vms_dir / tag / f"node{i}", i, n, incoming=incoming))
        except BaseException:
            for vm in vms:
                vm.kill()
            raise
        return vms

    def boot_settled(self, tag, n, r):
        """A fresh cluster exchanging messages; booted once more if the
        first did not get there (a guest that panicked at boot, say)."""
        for attempt in (1, 2):
            sub = "run" if attempt == 1 else "run-again"
            vms = self.boot(f"{tag}/{sub}", n)
            try:
                r["settle_s"] = self.settle(vms)
                return vms
            except Exception as e:  # noqa: BLE001 - retried once, then reported
                self.kill(vms)
                if attempt == 2:
                    raise
                r["boot_retry"] = str(e)
                log(f"{tag}: the cluster did not come up ({e}); booting it again")
        raise AssertionError("unreachable")

    @staticmethod
    def kill(vms):
        for vm in vms:
            vm.kill()

    def settle(self, vms):
        """Waits until every probe computes, dirties and has received
        MIN_RX messages on every link, then STEADY_S more."""
        t = time.time()
        for vm in vms:
            vm.wait_probe("compute", lambda e: e.ev == "compute", BOOT_TIMEOUT_S)
            vm.wait_probe("dirty", lambda e: e.ev == "dirty" and e.data.get("pages_written", 0) > 0, BOOT_TIMEOUT_S)
        deadline = t + BOOT_TIMEOUT_S
        while True:
            short = []
            for vm in vms:
                latest = vm.latest("net")
                for link in vm.links():
                    e = latest.get(link)
                    if e is None or e.data.get("received", 0) < MIN_RX:
                        short.append(f"{vm.name}<-{link[0]}/{link[1]}:{e.data.get('received') if e else 0}")
            if not short:
                break
            if time.time() > deadline:
                raise RuntimeError(f"the probes exchange too little after {BOOT_TIMEOUT_S} s: {', '.join(short)}")
            for vm in vms:
                if not vm.alive():
                    raise RuntimeError(vm.diagnose("QEMU died during boot"))
            time.sleep(0.2)
        time.sleep(STEADY_S)
        return time.time() - t

    def wait_inmigrate(self, vms):
        for vm in vms:
            st = vm.qmp.execute("query-status")
            if st["status"] != "inmigrate":
                raise RuntimeError(f"{vm.name}: QEMU not waiting for an incoming migration: {st}")

    def mekha(self, verb, vms, ckdir, log_dir):
        """Runs `mekha VERB --json --qmp ... --dir DIR`: (summary, host time
        started, host time exited)."""
        argv = [str(self.base.mekha), verb, "--json"]
        for vm in vms:
            argv += ["--qmp", str(vm.cli_qmp_path)]
        argv += ["--dir", str(ckdir)]
        t0 = time.time()
        p = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
        t1 = time.time()
        (log_dir / f"mekha-{verb}.stdout").write_text(p.stdout)
        (log_dir / f"mekha-{verb}.stderr").write_text(p.stderr)
        if p.returncode != 0:
            raise RuntimeError(f"mekha {verb} exited {p.returncode}: {p.stderr.strip()[-1500:]}")
        try:
            return json.loads(p.stdout), t0, t1
        except ValueError as e:
            raise RuntimeError(f"mekha {verb}: no JSON summary ({e}): {p.stdout[:500]!r}")

    # -- checkpoint ----------------------------------------------------------

    def checkpoint_mekha(self, vms, ckdir, log_dir):
        marks = [vm.qmp.mark() for vm in vms]
        s, t0, t1 = self.mekha("checkpoint", vms, ckdir, log_dir)
        resumed = wait_resumed(vms, marks)
        by_name = {v["vm"]: v for v in s.get("vms", [])}
        per_vm, images = [], []
        for vm, mark, res in zip(vms, marks, resumed):
            v = by_name.get(vm.name)
            if v is None:
                raise RuntimeError(f"mekha checkpoint: no summary of {vm.name}: {s}")
            prog = v["progress"]
            images.append(Path(v["image"]))
            stop = first_event(vm, mark, "STOP")
            statuses = {}
            for e in vm.qmp.events_since(mark):
                if e.name == "__org.mekha_CHECKPOINT":
                    statuses.setdefault(e.data.get("status"), e.qemu_t)
            stopped = prog.get("stopped-at-ns")
            resumed_at = prog.get("resumed-at-ns")
            t_stop = stop.qemu_t if stop else None
            t_resume = res.qemu_t
            t_live = statuses.get("live", t0)
            t_paused = stopped / 1e9 if stopped else t_stop
            t_running = resumed_at / 1e9 if resumed_at else t_resume
            # Copy-on-write only prepares RAM for protection before the stop.
            spans = [("preparing" if prog.get("mode") == "cow" else "live", t_live, t_paused),
                     ("paused", t_paused, t_running)]
            t_after = t_running
            if "capturing" in statuses:
                end = statuses.get("staged") or statuses.get("persisting") or statuses.get("completed")
                spans.append(("capturing", t_running, end))
                t_after = end or t_after
            if "staged" in statuses and "persisting" in statuses:
                spans.append(("staged", max(statuses["staged"], t_after), statuses["persisting"]))
            if "persisting" in statuses:
                spans.append(("persisting", statuses["persisting"], statuses.get("completed", t1)))
            per_vm.append({
                "vm": vm.name, "stop_t": t_stop, "stop_host_t": stop.host_t if stop else None,
                "resume_t": t_resume, "resume_host_t": res.host_t,
                "stopped_at_ns": stopped, "resumed_at_ns": resumed_at,
                "pause_ms": prog["pause-ns"] / 1e6 if prog.get("pause-ns") is not None else None,
                "event_pause_ms": ms(t_resume - t_stop) if t_stop else None,
                "mode": prog.get("mode"), "written_bytes": prog.get("written-bytes"),
                "statuses": statuses, "spans": spans, "progress": prog,
                "events": [e.as_json() for e in vm.qmp.events_since(mark)],
            })
        stops = [v["stopped_at_ns"] for v in per_vm]
        resumes = [v["resumed_at_ns"] for v in per_vm]
        return {
            "t0": t0, "t_durable": t1, "latency_ms": ms(t1 - t0),
            "written_bytes": s.get("written_bytes"),
            "mekha": {
                "latency_ms": s.get("latency_ms"), "live_ms": s.get("live_ms"),
                "stop_skew_ms": s["stop_skew_ns"] / 1e6 if s.get("stop_skew_ns") is not None else None,
                "resume_skew_ms": s["resume_skew_ns"] / 1e6 if s.get("resume_skew_ns") is not None else None,
                "stop_spread_ms": spread(stops) / 1e6 if None not in stops else None,
                "resume_spread_ms": spread(resumes) / 1e6 if None not in resumes else None,
                "max_pause_ms": s["max_pause_ns"] / 1e6 if s.get("max_pause_ns") is not None else None,
                "max_stopped_to_resumed_ms": max(((r - t) / 1e6 for t, r in zip(stops, resumes)
                                                  if t is not None and r is not None), default=None),
                "all_ready": s.get("all_ready"), "stop_at_ns": s.get("stop_at_ns"),
                "resume_at_ns": s.get("resume_at_ns"), "generation": s.get("generation"),
                "modes": sorted({str(v["mode"]) for v in per_vm}),
            },
            "vms": per_vm,
            "summary": s,
        }, images

    def checkpoint_stock(self, vms, image_dir):
        image_dir.mkdir(parents=True, exist_ok=True)
        paths = [image_dir / f"{vm.name}.migrate" for vm in vms]
        enable_events(vms)
        marks = [vm.qmp.mark() for vm in vms]
        t0 = time.time()
        stops = send_all(vms, "stop")
        t_stopped = time.time()
        migs = send_all(vms, "migrate", lambda vm: {"uri": f"file:{paths[vms.index(vm)]}"})
        done = wait_migrations(vms, marks, CMD_TIMEOUT_S)
        t_written = time.time()
        conts, refused = cont_all(vms)
        t_cont = time.time()
        fsyncs = fsync_all(paths)
        t_durable = max(fsyncs)
        resumed = wait_resumed(vms, marks)
        per_vm = []
        for vm, mark, res, d, path, f_end, (t_sent, _), (t_mig, _) in zip(vms, marks, resumed, done, paths, fsyncs,
                                                                         stops, migs):
            stop = first_event(vm, mark, "STOP")
            if stop is None:
                raise RuntimeError(f"{vm.name}: no STOP event")
            setup = first_event(vm, mark, "MIGRATION", lambda e: e.data.get("status") == "setup")
            spans = [("paused", stop.qemu_t, res.qemu_t),
                     ("persisting", setup.qemu_t if setup else t_mig, d.qemu_t),
                     ("fsync", t_cont, f_end)]
            per_vm.append({
                "vm": vm.name, "stop_t": stop.qemu_t, "stop_host_t": stop.host_t,
                "resume_t": res.qemu_t, "resume_host_t": res.host_t,
                "stop_sent_t": t_sent, "migrate_sent_t": t_mig, "migrated_t": d.qemu_t,
                "pause_ms": ms(res.qemu_t - stop.qemu_t), "event_pause_ms": ms(res.qemu_t - stop.qemu_t),
                "image_bytes": os.stat(path).st_size, "image_alloc_bytes": os.stat(path).st_blocks * 512,
                "spans": spans, "events": [e.as_json() for e in vm.qmp.events_since(mark)],
            })
        return {
            "t0": t0, "t_durable": t_durable, "latency_ms": ms(t_durable - t0),
            "written_bytes": sum(v["image_bytes"] for v in per_vm),
            "stock": {
                "stop_answered_ms": ms(t_stopped - t0), "written_ms": ms(t_written - t0),
                "cont_answered_ms": ms(t_cont - t0), "fsync_ms": ms(t_durable - t_cont),
                "cont_accepted_t": conts, "cont_refused": refused,
                "cont_spread_ms": ms(spread(conts)),
            },
            "vms": per_vm,
        }, paths

    # -- restart -------------------------------------------------------------

    def restart_mekha(self, vms, ckdir, log_dir):
        marks = [vm.qmp.mark() for vm in vms]
        s, t0, t1 = self.mekha("restore", vms, ckdir, log_dir)
        resumed = wait_resumed(vms, marks)
        by_name = {v["vm"]: v for v in s.get("vms", [])}
        per_vm = []
        for vm, mark, res in zip(vms, marks, resumed):
            loaded = first_event(vm, mark, "__org.mekha_RESTORE")
            prog = (by_name.get(vm.name) or {}).get("progress", {})
            t_loaded = loaded.qemu_t if loaded else None
            per_vm.append({"vm": vm.name, "loaded_t": t_loaded, "resume_t": res.qemu_t, "resume_host_t": res.host_t,
                           "resumed_at_ns": prog.get("resumed-at-ns"), "progress": prog,
                           "events": [e.as_json() for e in vm.qmp.events_since(mark)],
                           "spans": [("loading", t0, t_loaded or res.qemu_t),
                                     ("loaded, paused", t_loaded or res.qemu_t, res.qemu_t)]})
        resumes = [v["resumed_at_ns"] for v in per_vm]
        return {
            "t0": t0, "cli_exit_t": t1,
            "mekha": {"latency_ms": s.get("latency_ms"),
                      "resume_skew_ms": s["resume_skew_ns"] / 1e6 if s.get("resume_skew_ns") is not None else None,
                      "resume_spread_ms": spread(resumes) / 1e6 if None not in resumes else None,
                      "cli_wall_ms": ms(t1 - t0), "generation": s.get("generation"),
                      "cli_after_resume_ms": ms(t1 - max(v["resume_t"] for v in per_vm))},
            "vms": per_vm, "summary": s,
        }

    def restart_stock(self, vms, paths):
        enable_events(vms)
        marks = [vm.qmp.mark() for vm in vms]
        t0 = time.time()
        send_all(vms, "migrate-incoming", lambda vm: {"uri": f"file:{paths[vms.index(vm)]}"})
        done = wait_migrations(vms, marks, CMD_TIMEOUT_S)
        t_loaded = time.time()
        # The image of a stopped VM restores stopped: resume every VM, as
        # its user would.
        conts, refused = cont_all(vms)
        resumed = wait_resumed(vms, marks)
        per_vm = [{"vm": vm.name, "loaded_t": d.qemu_t, "resume_t": res.qemu_t, "resume_host_t": res.host_t,
                   "spans": [("loading", t0, d.qemu_t), ("loaded, paused", d.qemu_t, res.qemu_t)],
                   "events": [e.as_json() for e in vm.qmp.events_since(mark)]}
                  for vm, mark, d, res in zip(vms, marks, done, resumed)]
        return {"t0": t0, "stock": {"loaded_ms": ms(t_loaded - t0), "cont_refused": refused,
                                    "cont_spread_ms": ms(spread(conts))},
                "vms": per_vm}

    # -- the job after the restart -------------------------------------------

    def job_check(self, vms, originals, t_stop):
        """Whether the job went on after the restart: every link's
        net_done (a stream already done at the checkpoint counts from the
        checkpointed guest's own log), anomalies, reboots, computation."""
        deadline = time.time() + JOB_TIMEOUT_S + MSGS * MSG_INTERVAL_MS / 1000
        before = []
        for orig in originals:
            before.append({k: e for k, e in orig.latest("net_done").items() if e.t < t_stop})

        def done_links(vm, i):
            d = dict(before[i])
            d.update(vm.latest("net_done"))
            return d
        while True:
            missing = [f"{vm.name}<-{l[0]}/{l[1]}" for i, vm in enumerate(vms) for l in vm.links()
                       if l not in done_links(vm, i)]
            computing = all(sum(1 for e in vm.probe_events() if e.ev == "compute") >= COMPUTE_AFTER for vm in vms)
            if (not missing and computing) or time.time() > deadline or not all(vm.alive() for vm in vms):
                break
            time.sleep(0.5)
        r = {"missing": missing, "links": 0, "lost": 0, "dup": 0, "reordered": 0, "corrupt": 0, "incomplete": 0,
             "rebooted": [], "net_anomalies": {}, "dirty_anomalies": 0, "dead": [], "compute_events": {},
             "compute_samples": {}, "done": 0, "received": 0}
        for i, vm in enumerate(vms):
            evs = vm.probe_events()
            if not vm.alive():
                r["dead"].append(vm.name)
            if any(e.ev == "start" for e in evs):
                r["rebooted"].append(vm.name)
            for e in evs:
                if e.ev == "net_anomaly":
                    k = e.data.get("kind", "?")
                    r["net_anomalies"][k] = r["net_anomalies"].get(k, 0) + 1
                elif e.ev == "dirty_anomaly":
                    r["dirty_anomalies"] += 1
                elif e.ev == "done":
                    r["done"] += 1
            # Counters: net_done where there is one, else the last `net`.
            finals = {**vm.latest("net"), **done_links(vm, i)}
            for link in vm.links():
                e = finals.get(link)
                if e is None:
                    continue
                r["links"] += 1
                for k in ("lost", "dup", "reordered", "corrupt"):
                    r[k] += e.data.get(k, 0) or 0
                r["received"] += e.data.get("received", 0) or 0
                if e.ev == "net_done" and not e.data.get("complete", False):
                    r["incomplete"] += 1
            comp = [(e.data["step"], e.data["checksum"]) for e in evs if e.ev == "compute"]
            r["compute_events"][vm.name] = len(comp)
            r["compute_samples"][vm.name] = comp
        r["expected_links"] = sum(len(vm.links()) for vm in vms)
        r["clean"] = (not r["missing"] and not r["rebooted"] and not r["dead"] and r["dirty_anomalies"] == 0
                      and not r["net_anomalies"] and r["incomplete"] == 0
                      and all(r[k] == 0 for k in ("lost", "dup", "reordered", "corrupt"))
                      and all(c >= COMPUTE_AFTER for c in r["compute_events"].values()))
        return r

    def verify_compute(self):
        """The restored guests' computation against the host's."""
        samples = [(run, vm, s) for run in self.runs if run.get("job")
                   for vm, s in run["job"].pop("compute_samples", {}).items()]
        if not samples:
            return
        if not self.reference.available():
            log(f"no {self.reference.probe}: the computation's checksums are not checked")
            return
        top = max((step for _, _, ss in samples for step, _ in ss), default=0)
        try:
            ref = self.reference.checksums(top)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            log(f"computation reference failed: {e}")
            return
        for run, vm, ss in samples:
            job = run["job"]
            c = job.setdefault("compute_check", {"checked": 0, "mismatches": 0, "first_mismatch": None})
            for step, sum_ in ss:
                if step in ref:
                    c["checked"] += 1
                    if ref[step] != sum_:
                        c["mismatches"] += 1
                        c["first_mismatch"] = c["first_mismatch"] or {"vm": vm, "step": step, "guest": sum_,
                                                                      "host": ref[step]}
            if c["mismatches"]:
                job["clean"] = False

    # -- one method on one fresh cluster --------------------------------------

    def measure(self, n, rep, method):
        tag = f"n{n}-r{rep}-{method}"
        log(f"{tag}: booting {n} VM(s)")
        r = {"n": n, "rep": rep, "method": method}
        ckdir = self.images / tag
        run_dir = self.vms_dir / tag
        run_dir.mkdir(parents=True, exist_ok=True)
        images = []
        originals = []
        t_stop = None
        try:
            vms = self.boot_settled(tag, n, r)
            originals = vms
            try:
                r["loadavg_before"] = open("/proc/loadavg").read().split()[:3]
                if method == "mekha":
                    ck, images = self.checkpoint_mekha(vms, ckdir, run_dir)
                else:
                    ck, images = self.checkpoint_stock(vms, ckdir)
                stops = [v["stop_t"] for v in ck["vms"]]
                resumes = [v["resume_t"] for v in ck["vms"]]
                ck.update({
                    "cluster_pause_ms": ms(max(resumes) - min(stops)) if None not in stops else None,
                    "max_vm_pause_ms": max((v["event_pause_ms"] for v in ck["vms"]
                                            if v["event_pause_ms"] is not None), default=None),
                    "suspend_skew_ms": ms(spread(stops)) if None not in stops else None,
                    "resume_skew_ms": ms(spread(resumes)),
                    "suspend_skew_host_ms": ms(spread([v["stop_host_t"] for v in ck["vms"]])),
                    "resume_skew_host_ms": ms(spread([v["resume_host_t"] for v in ck["vms"]])),
                })
                t_stop = min((v["stop_host_t"] for v in ck["vms"] if v["stop_host_t"]), default=None)
                r["checkpoint"] = ck
                log(f"{tag}: checkpoint: cluster pause {fmt(ck['cluster_pause_ms'], 1)} ms, suspend skew "
                    f"{fmt(ck['suspend_skew_ms'], 3)} ms, resume skew {fmt(ck['resume_skew_ms'], 3)} ms, latency "
                    f"{fmt(ck['latency_ms'])} ms, {fmt(ck['written_bytes'] / 2**20, 1)} MiB written")
                time.sleep(AFTER_S)
                for vm in vms:
                    if not vm.alive():
                        raise RuntimeError(vm.diagnose("QEMU died after the checkpoint"))
            finally:
                self.kill(vms)
        except Exception as e:  # noqa: BLE001 - reported in the table, the bench goes on
            log(f"{tag}: checkpoint failed: {e}")
            r["error"] = f"checkpoint: {e}"
            self.cleanup_images(ckdir, images)
            return r
        try:
            for path in (self.image_files(ckdir) if method == "mekha" else images):
                drop_cache(path)
            vms = self.boot(tag + "/restart", n, incoming=True)
            try:
                self.wait_inmigrate(vms)
                if method == "mekha":
                    rs = self.restart_mekha(vms, ckdir, run_dir)
                else:
                    rs = self.restart_stock(vms, images)
                resumes = [v["resume_t"] for v in rs["vms"]]
                rs["restart_ms"] = ms(max(resumes) - rs["t0"])
                rs["resume_skew_ms"] = ms(spread(resumes))
                rs["resume_skew_host_ms"] = ms(spread([v["resume_host_t"] for v in rs["vms"]]))
                rs["loaded_ms"] = ms(max(v["loaded_t"] or v["resume_t"] for v in rs["vms"]) - rs["t0"])
                r["restart"] = rs
                log(f"{tag}: restart: all running after {fmt(rs['restart_ms'])} ms, resume skew "
                    f"{fmt(rs['resume_skew_ms'], 3)} ms; waiting for the job")
                job = self.job_check(vms, originals, t_stop or rs["t0"])
                r["job"] = job
                log(f"{tag}: job after the restart: {'clean' if job['clean'] else 'NOT clean'} "
                    f"({job['links']}/{job['expected_links']} links, lost {job['lost']}, dup {job['dup']}, "
                    f"reordered {job['reordered']}, corrupt {job['corrupt']}, missing {len(job['missing'])}, "
                    f"rebooted {job['rebooted']}, anomalies {job['net_anomalies']} / {job['dirty_anomalies']})")
                self.restart_end_spans(r)
            finally:
                self.kill(vms)
        except Exception as e:  # noqa: BLE001
            log(f"{tag}: restart failed: {e}")
            r["restart_error"] = str(e)
        finally:
            self.cleanup_images(ckdir, images)
        return r

    @staticmethod
    def restart_end_spans(r):
        rs = r["restart"]
        end = time.time()
        for v in rs["vms"]:
            v["spans"].append(("running (restored)", v["resume_t"], end))

    @staticmethod
    def image_files(ckdir):
        return sorted(p for p in Path(ckdir).rglob("*.mekha") if p.is_file())

    @staticmethod
    def cleanup_images(ckdir, images):
        for p in images:
            remove(p)
        shutil.rmtree(ckdir, ignore_errors=True)

    # -- the run -------------------------------------------------------------

    def run(self):
        started = time.time()
        for n in self.args.sizes:
            for rep in range(self.args.reps):
                order = METHODS if rep % 2 == 0 else tuple(reversed(METHODS))
                for method in order:
                    self.runs.append(self.measure(n, rep, method))
        self.verify_compute()
        return time.time() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 1,3 and one repetition")
    ap.add_argument("--out", default=str(ROOT / "target/bench/cluster"), help="output directory")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    ap.add_argument("--sizes", help="cluster sizes, comma-separated (default 1,2,3,4; --quick 1,3)")
    ap.add_argument("--nice", type=int, default=-10,
                    help="nice value of this script, its QEMUs and the mekha CLI (default -10; 0 to leave it)")
    args = ap.parse_args()
    args.sizes = [int(x) for x in (args.sizes or ("1,3" if args.quick else "1,2,3,4")).split(",")]
    if any(n < 1 or n > 200 for n in args.sizes):
        ap.error("cluster sizes must be within 1..200")
    args.reps = args.reps or (1 if args.quick else 3)
    if os.geteuid() != 0:
        raise SystemExit("ci/bench-cluster needs root (network namespaces, taps)")
    if shutil.which("ip") is None:
        raise SystemExit("ip (iproute2) not found")

    bench = Bench(args)
    bench.out.mkdir(parents=True, exist_ok=True)
    common.setup_process("bench-cluster", args.nice, bench.cleanup)
    log(f"output in {bench.out}; N = {','.join(map(str, args.sizes))}; {args.reps} repetition(s)")

    def measure():
        bench.setup()
        return bench.run()
    elapsed, host = common.run(measure, bench.cleanup, bench.images)
    data = {
        "quick": args.quick, "reps": args.reps, "sizes": args.sizes, "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "elapsed_s": elapsed,
        "workload": {"memory_mib": MEM_MIB, "dirty_mib": DIRTY_MIB, "dirty_rate_mib_s": DIRTY_RATE,
                     "compute_chunk": COMPUTE_CHUNK, "msgs": MSGS, "msg_interval_ms": MSG_INTERVAL_MS,
                     "min_rx": MIN_RX, "steady_s": STEADY_S, "after_s": AFTER_S},
        "host": host,
        "runs": bench.runs,
    }
    cluster_report.write(bench.out, data)
    log(f"done in {elapsed / 60:.1f} min")


if __name__ == "__main__":
    main()
