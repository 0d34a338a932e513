# SPDX-License-Identifier: GPL-2.0-or-later
"""What both benches (checkpoint.py, cluster.py) do around their
measurements: the log, the process set-up (signals, nice value, prompt
reader threads), the run with its clean-up, the host's facts, and small
file helpers."""

import atexit
import os
import shutil
import signal
import sys
import time

_name = "bench"


def log(msg):
    print(f"[{_name} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def setup_process(name, nice, cleanup):
    """Names the log; `cleanup` runs at exit, on errors and on SIGINT,
    SIGTERM and SIGHUP; the script (and what it starts) runs at `nice`."""
    global _name
    _name = name
    atexit.register(cleanup)

    def on_signal(signum, _frame):
        log(f"signal {signum}: stopping")
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    # The readers timestamp lines and events: let them run promptly.
    sys.setswitchinterval(0.0005)
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as e:
            log(f"cannot set the nice value to {nice}: {e}")


def run(measure, cleanup, images):
    """Runs `measure()` (returning the elapsed seconds), then `cleanup()`
    and removes `images`, whatever happens. Returns the elapsed seconds and
    the host's facts around the run."""
    load_start = _loadavg()
    try:
        elapsed = measure()
    except KeyboardInterrupt:
        log("interrupted")
        raise SystemExit(130) from None
    finally:
        cleanup()
        shutil.rmtree(images, ignore_errors=True)
    host = {"cpus": os.cpu_count(), "kernel": os.uname().release, "loadavg_start": load_start,
            "loadavg_end": _loadavg()}
    return elapsed, host


def _loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def drop_cache(path):
    """Makes the next read of `path` come from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fmt(v, digits=0):
    return "-" if v is None else f"{v:.{digits}f}"
