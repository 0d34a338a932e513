# SPDX-License-Identifier: GPL-2.0-or-later
"""A test VM for the benchmark, started as the system tests start theirs
(tests/rig/src/vm.rs), except for the serial console.

The serial console is a chardev *socket* that this script reads, not a
file: a reader thread timestamps every line with the host time at which
its bytes arrived (time.time()), which is what the host-side measure of
guest progress needs. The lines are also written to serial.log with those
times.

Every QEMU started here is recorded and killed at exit, on Ctrl-C and on
errors (kill_all, registered with atexit by the caller).
"""

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from qmp import Qmp

_RUNNING = []
_RUNNING_LOCK = threading.Lock()


def kill_all():
    with _RUNNING_LOCK:
        vms = list(_RUNNING)
    for vm in vms:
        vm.kill()


class Artifacts:
    def __init__(self, root):
        target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
        self.qemu = target / "qemu/bin/qemu-system-x86_64"
        self.kernel = target / "guest/vmlinuz"
        self.initrd = target / "guest/initrd.img"
        self.mekha = target / "release/mekha"
        for p in (self.qemu, self.kernel, self.initrd):
            if not p.exists():
                raise SystemExit(f"missing {p}: run ci/build")


class ProbeEvent:
    __slots__ = ("t", "ev", "data")

    def __init__(self, t, data):
        self.t = t
        self.ev = data.get("ev")
        self.data = data


class Vm:
    """A QEMU process with its QMP monitor and its serial console."""

    def __init__(self, artifacts, directory, name, memory_mib, probe_args, extra_args=(), incoming=False):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.memory_mib = memory_mib
        self.qmp_path = self.dir / "qmp.sock"
        self.serial_path = self.dir / "serial.sock"
        for p in (self.qmp_path, self.serial_path):
            if len(str(p)) > 100:
                raise SystemExit(f"socket path too long for AF_UNIX: {p} (use a shorter --out)")
            if p.exists():
                p.unlink()
        append = " ".join(["console=ttyS0", "quiet", "loglevel=3", "panic=-1", *probe_args])
        self.argv = [
            str(artifacts.qemu),
            "-accel", "tcg", "-nodefaults", "-display", "none", "-no-reboot", "-no-user-config",
            # debug-threads=on only names QEMU's host threads ("CPU 0/TCG"),
            # for the CPU accounting of cpu_times().
            "-name", f"guest={name},debug-threads=on",
            "-m", str(memory_mib), "-smp", "1",
            "-kernel", str(artifacts.kernel),
            "-initrd", str(artifacts.initrd),
            "-append", append,
            "-chardev", f"socket,id=serial0,path={self.serial_path},server=on,wait=off",
            "-serial", "chardev:serial0",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            *extra_args,
        ]
        if incoming:
            self.argv += ["-incoming", "defer"]
        (self.dir / "cmdline").write_text(" ".join(self.argv) + "\n")
        self.cond = threading.Condition()
        self.probe = []          # ProbeEvent, in arrival order
        self.serial_closed = False
        self._serial_sock = None
        self.last_rx = None
        self.rx_bytes = 0
        self.qmp = None
        self.started = time.time()
        stderr = open(self.dir / "qemu.stderr", "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        stderr.close()
        with _RUNNING_LOCK:
            _RUNNING.append(self)
        try:
            self._connect_serial()
            self.qmp = Qmp(self.qmp_path)
        except BaseException:
            self.kill()
            raise

    def _connect_serial(self, timeout=30.0):
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited ({self.proc.returncode}): {self.stderr()}")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.serial_path))
                break
            except OSError:
                s.close()
                if time.time() > deadline:
                    raise RuntimeError(f"no serial socket at {self.serial_path}") from None
                time.sleep(0.02)
        self._serial_sock = s
        threading.Thread(target=self._serial_reader, name=f"serial-{self.name}", daemon=True).start()

    def _serial_reader(self):
        buf = b""
        log = open(self.dir / "serial.log", "w", encoding="utf-8", errors="replace")
        try:
            while True:
                try:
                    chunk = self._serial_sock.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                now = time.time()
                self.last_rx = now
                self.rx_bytes += len(chunk)
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    log.write(f"{now:.6f} {line}\n")
                    i = line.find("@probe {")
                    if i < 0:
                        continue
                    try:
                        data = json.loads(line[i + 7:])
                    except ValueError:
                        continue
                    with self.cond:
                        self.probe.append(ProbeEvent(now, data))
                        self.cond.notify_all()
        finally:
            log.close()
            with self.cond:
                self.serial_closed = True
                self.cond.notify_all()

    def wait_probe(self, what, pred, timeout):
        """The first probe event satisfying pred; raises after timeout."""
        deadline = time.time() + timeout
        with self.cond:
            i = 0
            while True:
                while i < len(self.probe):
                    if pred(self.probe[i]):
                        return self.probe[i]
                    i += 1
                left = deadline - time.time()
                if left <= 0 or self.serial_closed:
                    raise RuntimeError(self.diagnose(f"no probe event '{what}' within {timeout:.0f} s"))
                self.cond.wait(left)

    def diagnose(self, what):
        """`what`, with what might explain it."""
        status = None
        if self.qmp is not None and not self.qmp.closed:
            try:
                status = self.qmp.execute("query-status", timeout=5)
            except Exception as e:  # noqa: BLE001 - only for the message
                status = f"query-status failed: {e}"
        last = f"{time.time() - self.last_rx:.1f} s ago" if self.last_rx else "never"
        return (f"{self.name}: {what} (serial: {self.dir / 'serial.log'}, "
                f"{'closed' if self.serial_closed else 'open'}, {self.rx_bytes} bytes, last {last}; "
                f"QEMU {'running' if self.alive() else 'exited'}, status {status}; stderr {self.stderr()!r})")

    def compute_points(self):
        """[(host time, step)] of every compute event so far."""
        with self.cond:
            return [(e.t, e.data["step"]) for e in self.probe if e.ev == "compute"]

    def probe_events(self):
        with self.cond:
            return list(self.probe)

    def cpu_times(self):
        """(host time, {thread name: CPU seconds used so far}) of this QEMU,
        with the whole process's (exited threads included) under "*", and
        the vCPU threads' time on a CPU and waiting for one (schedstat)
        under "vcpu-run" and "vcpu-wait"."""
        out = {}
        tick = os.sysconf("SC_CLK_TCK")
        base = f"/proc/{self.proc.pid}/task"
        now = time.time()
        try:
            stat = open(f"/proc/{self.proc.pid}/stat").read()
            fields = stat[stat.rindex(")") + 2:].split()
            out["*"] = (int(fields[11]) + int(fields[12])) / tick
            tids = os.listdir(base)
        except OSError:
            return now, out
        for tid in tids:
            try:
                stat = open(f"{base}/{tid}/stat").read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
            if name.startswith("CPU "):
                # On a CPU, and runnable but waiting for one (ns).
                try:
                    run, wait, _ = open(f"{base}/{tid}/schedstat").read().split()
                    out["vcpu-run"] = out.get("vcpu-run", 0.0) + int(run) / 1e9
                    out["vcpu-wait"] = out.get("vcpu-wait", 0.0) + int(wait) / 1e9
                except (OSError, ValueError):
                    pass
        return now, out

    def rss_kib(self):
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def stderr(self):
        try:
            return (self.dir / "qemu.stderr").read_text(errors="replace").strip()
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        if self.qmp is not None:
            self.qmp.close()
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        if self._serial_sock is not None:
            try:
                self._serial_sock.close()
            except OSError:
                pass
        with _RUNNING_LOCK:
            if self in _RUNNING:
                _RUNNING.remove(self)
