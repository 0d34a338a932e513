#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The checkpoint bench's timelines: reads results.json, which
mekha-bench-checkpoint (tests/rig/src/bin) wrote into OUT, and draws per VM
size the phases of each method's run with the median lost work and the
guest's progress line into OUT/timeline-<size>M.png (and -zoom.png when a
long live migration would squash the others). Only plots: the figures,
tables and targets are the bench's own.

    checkpoint_timeline.py OUT
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

# Methods in table order, and their labels.
LABELS = {
    "mekha": "mekha MTD checkpoint",
    "mekha-cow": "mekha copy-on-write checkpoint",
    "mekha-sealed": "mekha copy-on-write, sealed under a key",
    "stop-migrate": "stock stop + migrate file: + cont",
    "live-migrate": "stock live migrate file:",
    "bg-snapshot": "stock background-snapshot",
    "snapshot-save": "stock snapshot-save (qcow2)",
}
SPAN_COLORS = {
    "live copy": "#4C72B0",
    "preparing": "#8FAADC",
    "capturing": "#55A868",
    "migrating": "#8172B2",
    "paused": "#C44E52",
    "persisting": "#DD8452",
    "writing (paused)": "#C44E52",
}
LINE_COLORS = {
    "mekha": "#2CA02C",
    "mekha-cow": "#17BECF",
    "mekha-sealed": "#8C564B",
    "stop-migrate": "#D62728",
    "live-migrate": "#9467BD",
    "bg-snapshot": "#1F77B4",
    "snapshot-save": "#FF7F0E",
}


def fmt(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"


def representative(runs):
    """The run with the median lost work."""
    runs = sorted(runs, key=lambda r: r["lost_ms"])
    return runs[(len(runs) - 1) // 2]


def phases(ax, order, chosen):
    labels = []
    for i, m in enumerate(order):
        r = chosen[m]
        y = len(order) - 1 - i
        ax.broken_barh([(0, r["window_s"])], (y - 0.35, 0.7), facecolors="#EEEEEE", edgecolor="none")
        for kind, a, b in r["spans"]:
            if a is None or b is None:
                continue
            if kind == "writing (paused)":
                ax.broken_barh([(a, max(b - a, 1e-4))], (y - 0.12, 0.24), facecolors="none", edgecolor="white",
                               hatch="////", linewidth=0)
                continue
            ax.broken_barh([(a, max(b - a, 1e-4))], (y - 0.35, 0.7), facecolors=SPAN_COLORS[kind],
                           edgecolor=SPAN_COLORS[kind] if kind == "paused" else "none", linewidth=0.8)
        ended = "" if r["ended"] else ", did not end"
        pause = f"{fmt(r['pause_ms'], 1)} ms" if r.get("pause_ms") is not None else "n/a"
        labels.append((y, f"{LABELS[m]}\npause {pause}, lost {fmt(r['lost_ms'])} ms,\n"
                          f"longest stall {fmt(r.get('stall_ms'))} ms{ended}"))
    ax.set_yticks([y for y, _ in labels])
    ax.set_yticklabels([t for _, t in labels], fontsize=8)
    ax.set_ylim(-0.6, len(order) - 0.4)
    ax.axvline(0, color="black", linewidth=0.8)
    handles = [Patch(color="#EEEEEE", label="running (lost-work window)")]
    handles += [Patch(color=SPAN_COLORS[k], label=k + (" (guest runs)" if k != "paused" else " (guest stopped)"))
                for k in ("live copy", "preparing", "migrating", "paused", "capturing", "persisting")]
    handles.append(Patch(facecolor=SPAN_COLORS["paused"], edgecolor="white", hatch="////",
                         label="image written while stopped"))
    ax.legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=6, frameon=False)


def progress(ax, order, chosen, end):
    for m in order:
        pts = chosen[m]["progress"]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=LINE_COLORS[m], linewidth=1.0, label=LABELS[m])
    ax.axhline(100, color="grey", linewidth=0.6, linestyle="--")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_ylim(0, 150)
    ax.set_ylabel("guest progress\n% of steady rate", fontsize=8)
    ax.set_xlabel("host time since the checkpoint command (s)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.22), ncol=5, frameon=False)
    ax.set_xlim(-1.0, end + 0.1)


def timelines(out, data):
    files = []
    for size in sorted({r["size_mib"] for r in data["results"]}):
        runs = {}
        for r in data["results"]:
            if r["size_mib"] == size:
                runs.setdefault(r["method"], []).append(r)
        order = [m for m in LABELS if m in runs]
        chosen = {m: representative(runs[m]) for m in order}
        full_end = max(r["window_s"] for r in chosen.values())
        short = [r["window_s"] for m, r in chosen.items() if m != "live-migrate" or r["window_s"] < 15]
        zoom_end = max(short) if short else full_end
        views = [("", full_end)]
        if zoom_end < full_end * 0.8:
            views.append(("-zoom", zoom_end))
        for suffix, end in views:
            fig, (ax, ax2) = plt.subplots(2, 1, figsize=(13, 8), sharex=True,
                                          gridspec_kw={"height_ratios": [len(order) * 0.75 + 0.5, 3]})
            phases(ax, order, chosen)
            ax.set_title(f"{size} MiB VM, {data['workload']['hot_mib']} MiB hot set: phases from the checkpoint "
                         f"command (run with the median lost work of each method)", fontsize=10, pad=22)
            progress(ax2, order, chosen, end)
            fig.tight_layout()
            path = out / f"timeline-{size}M{suffix}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            files.append(path)
    return files


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.strip().splitlines()[-1].strip())
    out = Path(sys.argv[1])
    data = json.loads((out / "results.json").read_text())
    pngs = timelines(out, data)
    print("Timelines: " + (", ".join(p.name for p in pngs) if pngs else "none (no run measured)"))


if __name__ == "__main__":
    main()
