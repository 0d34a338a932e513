#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The cluster bench's timeline: reads results.json, which
mekha-bench-cluster (tests/rig/src/bin) wrote into OUT, and draws every VM's
phases for the largest N measured into OUT/timeline-nN.png. Only plots:
the figures, tables and targets are the bench's own.

    cluster_timeline.py OUT
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

METHODS = ("mekha", "mekha-mtd", "stock")
LABELS = {"mekha": "mekha copy-on-write", "mekha-mtd": "mekha MTD", "stock": "stock QEMU (scripted QMP)"}

GUEST_COLORS = {
    "live": "#4C72B0",
    "preparing": "#8FAADC",
    "paused": "#C44E52",
    "capturing": "#55A868",
    "loading": "#8172B2",
    "loaded, paused": "#DA8BC3",
    "running (restored)": "#8DD3A0",
}
IMAGE_COLORS = {
    "staged": "#CCB974",
    "persisting": "#DD8452",
    "fsync": "#937860",
}
SPAN_LABELS = {
    "live": "live copy (guest runs)",
    "preparing": "preparing copy-on-write (guest runs)",
    "paused": "paused",
    "capturing": "copy-on-write capture (guest runs)",
    "loading": "restoring (loading the image)",
    "loaded, paused": "restored, paused until resumed",
    "running (restored)": "restored, running",
    "staged": "image staged in memory",
    "persisting": "image being written",
    "fsync": "fsync of the image",
}

def f(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"


def pick_runs(data):
    """The largest N with every method measured; the first repetition where
    each checkpointed (and restarted, if any did)."""
    for n in sorted(data["sizes"], reverse=True):
        reps = sorted({r["rep"] for r in data["runs"] if r["n"] == n})
        for rep in reps:
            pair = {r["method"]: r for r in data["runs"] if r["n"] == n and r["rep"] == rep and r.get("checkpoint")}
            if len(pair) == len(METHODS):
                return n, rep, pair
        for rep in reps:
            pair = {r["method"]: r for r in data["runs"] if r["n"] == n and r["rep"] == rep and r.get("checkpoint")}
            if pair:
                return n, rep, pair
    return None, None, {}


def timeline(out, data):
    n, rep, pair = pick_runs(data)
    if not pair:
        return None
    methods = [m for m in METHODS if m in pair]
    fig, axes = plt.subplots(len(methods), 3, figsize=(17, 1.3 + 1.25 * n * len(methods) + 1.2), squeeze=False,
                             gridspec_kw={"width_ratios": [5, 3, 4]})
    ck_end = max(max((b for v in pair[m]["checkpoint"]["vms"] for _, _, b in v["spans"] if b), default=0)
                 - pair[m]["checkpoint"]["t0"] for m in methods)
    rs_end = max((max((v["resume_t"] for v in pair[m]["restart"]["vms"]), default=0) - pair[m]["restart"]["t0"]
                  for m in methods if pair[m].get("restart")), default=1.0) + 1.0
    used = set()

    def lanes(ax, vms, t0, scale, x0, x1):
        for i, v in enumerate(vms):
            y = n - 1 - i
            ax.broken_barh([(x0, x1 - x0)], (y, 0.38), facecolors="#EEEEEE", edgecolor="none")
            for kind, a, b in v["spans"]:
                if a is None or b is None:
                    continue
                a, b = (a - t0) * scale, (b - t0) * scale
                if kind in IMAGE_COLORS:
                    ax.broken_barh([(a, max(b - a, 1e-6))], (y - 0.34, 0.26), facecolors=IMAGE_COLORS[kind],
                                   edgecolor="none")
                else:
                    c = GUEST_COLORS[kind]
                    ax.broken_barh([(a, max(b - a, 1e-6))], (y, 0.38), facecolors=c,
                                   edgecolor=c if kind == "paused" else "none", linewidth=0.8)
                used.add(kind)
        ax.set_yticks([n - 1 - i + 0.02 for i in range(len(vms))])
        ax.set_yticklabels([v["vm"] for v in vms], fontsize=8)
        ax.set_ylim(-0.5, n - 0.4)
        ax.set_xlim(x0, x1)
        ax.axvline(0, color="black", linewidth=0.7)

    for row, m in enumerate(methods):
        run = pair[m]
        ck = run["checkpoint"]
        vms = ck["vms"]
        # Checkpoint, from the command.
        ax = axes[row][0]
        lanes(ax, vms, ck["t0"], 1.0, -0.1, ck_end + 0.3)
        ax.axvline(ck["t_durable"] - ck["t0"], color="black", linestyle="--", linewidth=0.8)
        ax.set_title(f"{LABELS[m]}: checkpoint (dashed: every image durable, {f(ck['latency_ms'])} ms)", fontsize=9)
        ax.set_xlabel("s since the checkpoint command", fontsize=8)
        # Around the stop instant.
        ax = axes[row][1]
        t_first = min(v["stop_t"] for v in vms if v["stop_t"])
        last_stop = max(v["stop_t"] for v in vms if v["stop_t"]) - t_first
        last_resume = max(v["resume_t"] for v in vms) - t_first
        end_ms = max(2.0, (last_resume if last_resume < 0.05 else last_stop) * 1000 * 1.3 + 0.5)
        marks = [(v["stopped_at_ns"] / 1e9 - t_first) * 1000 for v in vms if v.get("stopped_at_ns")]
        stop_at = (ck.get("mekha") or {}).get("stop_at_ns")
        if stop_at:
            marks.append((stop_at / 1e9 - t_first) * 1000)
        start_ms = min([-0.5] + [x - 0.3 for x in marks])
        lanes(ax, vms, t_first, 1000.0, start_ms, end_ms)
        for i, v in enumerate(vms):
            y = n - 1 - i
            if v["stop_t"]:
                ax.plot([(v["stop_t"] - t_first) * 1000] * 2, [y - 0.05, y + 0.43], color="black", linewidth=1.2)
            if v.get("stopped_at_ns"):
                x = (v["stopped_at_ns"] / 1e9 - t_first) * 1000
                ax.plot([x] * 2, [y - 0.05, y + 0.43], color="#555555", linewidth=1.0, linestyle="--")
        if stop_at:
            ax.axvline((stop_at / 1e9 - t_first) * 1000, color="#2CA02C", linestyle=":", linewidth=1.2)
        ax.set_title(f"around the stop: suspend skew {f(ck['suspend_skew_ms'], 3)} ms, resume skew "
                     f"{f(ck['resume_skew_ms'], 3)} ms", fontsize=9)
        ax.set_xlabel("ms since the first STOP event (solid ticks: each VM's STOP event" +
                      ("; dashed: its stopped-at-ns; dotted: T)" if m != "stock" else ")"), fontsize=7)
        # Restart, from the command.
        ax = axes[row][2]
        rs = run.get("restart")
        if rs:
            lanes(ax, rs["vms"], rs["t0"], 1.0, -0.1, rs_end)
            job = run.get("job") or {}
            verdict = "clean" if job.get("clean") else ("NOT clean" if job else "not checked")
            ax.set_title(f"restart: all running after {f(rs['restart_ms'])} ms, resume skew "
                         f"{f(rs['resume_skew_ms'], 3)} ms; job after it: {verdict}", fontsize=9)
        else:
            ax.text(0.5, 0.5, f"restart failed: {run.get('restart_error', '?')[:120]}", ha="center",
                    va="center", fontsize=8, transform=ax.transAxes, wrap=True)
            ax.set_yticks([])
        ax.set_xlabel("s since the restart command", fontsize=8)
    handles = [Patch(color="#EEEEEE", label="guest running")]
    handles += [Patch(color=GUEST_COLORS[k], label=SPAN_LABELS[k]) for k in GUEST_COLORS if k in used]
    handles += [Patch(color=IMAGE_COLORS[k], label=SPAN_LABELS[k] + " (lower lane)") for k in IMAGE_COLORS
                if k in used]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(f"Cluster of {n} VMs (repetition {rep}): every VM's phases, mekha and stock QEMU on fresh VMs",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    path = out / f"timeline-n{n}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.strip().splitlines()[-1].strip())
    out = Path(sys.argv[1])
    data = json.loads((out / "results.json").read_text())
    png = timeline(out, data)
    print(f"Timeline: {png if png else 'none (no run measured)'}")


if __name__ == "__main__":
    main()
