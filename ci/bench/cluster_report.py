# SPDX-License-Identifier: GPL-2.0-or-later
"""Tables (stdout, results.md), results.json and the timeline PNG of the
cluster benchmark (ci/bench/cluster.py)."""

import json

from report import f, median, ratio

METHODS = ("mekha", "stock")
LABELS = {"mekha": "mekha", "stock": "stock QEMU (scripted QMP)"}
SKEW_LIMIT_MS = 1.0              # docs/design.md: suspend skew <= 1 ms on one host
RESTART_RATIO = 0.5              # restore to running <= 0.5x stock migrate-incoming

# (label, section, key, digits, scale)
ROWS = (
    ("cluster pause: first STOP to last RESUME (ms)", "checkpoint", "cluster_pause_ms", 1, 1),
    ("longest pause of one VM: its STOP to its RESUME (ms)", "checkpoint", "max_vm_pause_ms", 1, 1),
    ("suspend skew: spread of the STOP events (ms)", "checkpoint", "suspend_skew_ms", 3, 1),
    ("resume skew: spread of the RESUME events (ms)", "checkpoint", "resume_skew_ms", 3, 1),
    ("checkpoint latency: command to every image durable (ms)", "checkpoint", "latency_ms", 0, 1),
    ("bytes written (MiB)", "checkpoint", "written_bytes", 1, 1 / 2**20),
    ("restart time: first command to every VM running (ms)", "restart", "restart_ms", 0, 1),
    ("restart resume skew: spread of the RESUME events (ms)", "restart", "resume_skew_ms", 3, 1),
)
MEKHA_DETAILS = (
    ("stop spread, mekha's stopped-at-ns (ms)", "checkpoint", "stop_spread_ms", 3),
    ("resume spread, mekha's resumed-at-ns (ms)", "checkpoint", "resume_spread_ms", 3),
    ("largest |stop - T| (stop_skew_ns, ms)", "checkpoint", "stop_skew_ms", 3),
    ("largest |resume - T2| (resume_skew_ns, ms)", "checkpoint", "resume_skew_ms", 3),
    ("longest pause-ns of a VM (ms)", "checkpoint", "max_pause_ms", 2),
    ("longest resumed-at-ns - stopped-at-ns of a VM (ms)", "checkpoint", "max_stopped_to_resumed_ms", 2),
    ("live phase: first command to T (live_ms)", "checkpoint", "live_ms", 0),
    ("CLI latency_ms: first command to manifest committed", "checkpoint", "latency_ms", 0),
    ("restart: CLI latency_ms (first command to every VM running)", "restart", "latency_ms", 0),
    ("restart: largest |resume - T| (resume_skew_ns, ms)", "restart", "resume_skew_ms", 3),
    ("restart: CLI wall time (ms)", "restart", "cli_wall_ms", 0),
    ("restart: CLI exit after the last RESUME event (ms)", "restart", "cli_after_resume_ms", 0),
)
STOCK_DETAILS = (
    ("every `stop` answered (ms after the first was sent)", "checkpoint", "stop_answered_ms", 1),
    ("every image written: MIGRATION completed (ms)", "checkpoint", "written_ms", 0),
    ("every `cont` answered (ms)", "checkpoint", "cont_answered_ms", 0),
    ("spread of the accepted `cont` answers (ms)", "checkpoint", "cont_spread_ms", 1),
    ("`cont` refused as not finalized yet (times, all VMs)", "checkpoint", "cont_refused", 0),
    ("fsync of the images after `cont` (ms)", "checkpoint", "fsync_ms", 0),
    ("restart: every migrate-incoming completed (ms)", "restart", "loaded_ms", 0),
    ("restart: `cont` refused as not finalized yet (times)", "restart", "cont_refused", 0),
)
# Both methods: the same skews from the host times at which this script
# received the events (QEMU's own timestamps are in the table).
HOST_DETAILS = (
    ("suspend skew", "checkpoint", "suspend_skew_host_ms", 3),
    ("resume skew", "checkpoint", "resume_skew_host_ms", 3),
    ("restart resume skew", "restart", "resume_skew_host_ms", 3),
)
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


def get(run, section, key, sub=None):
    d = run.get(section) or {}
    if sub:
        d = d.get(sub) or {}
    v = d.get(key)
    return sum(v) if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) else v


def summarize(data):
    """Medians per (N, method)."""
    out = {}
    for n in data["sizes"]:
        per = {}
        for method in METHODS:
            runs = [r for r in data["runs"] if r["n"] == n and r["method"] == method]
            if not runs:
                continue
            m = {"runs": len(runs), "errors": [r.get("error") or r.get("restart_error") for r in runs
                                               if r.get("error") or r.get("restart_error")],
                 "boot_retries": [r["boot_retry"] for r in runs if r.get("boot_retry")]}
            for _, section, key, _, _ in ROWS:
                vals = [get(r, section, key) for r in runs]
                m[f"{section}.{key}"] = median(vals)
                m[f"{section}.{key}_all"] = vals
            details = MEKHA_DETAILS if method == "mekha" else STOCK_DETAILS
            for _, section, key, _ in details:
                vals = [get(r, section, key, method) for r in runs]
                m[f"{method}.{section}.{key}"] = median(vals)
                m[f"{method}.{section}.{key}_all"] = vals
            for _, section, key, _ in HOST_DETAILS:
                vals = [get(r, section, key) for r in runs]
                m[f"host.{section}.{key}"] = median(vals)
            jobs = [r["job"] for r in runs if r.get("job")]
            m["job_runs"] = len(jobs)
            m["job_clean"] = sum(1 for j in jobs if j["clean"])
            for k in ("lost", "dup", "reordered", "corrupt", "incomplete", "dirty_anomalies"):
                m[f"job.{k}"] = sum(j[k] for j in jobs)
            m["job.missing"] = sum(len(j["missing"]) for j in jobs)
            m["job.rebooted"] = sum(len(j["rebooted"]) for j in jobs)
            m["job.links"] = sum(j["links"] for j in jobs)
            m["job.expected_links"] = sum(j["expected_links"] for j in jobs)
            m["job.net_anomalies"] = {}
            for j in jobs:
                for k, v in j["net_anomalies"].items():
                    m["job.net_anomalies"][k] = m["job.net_anomalies"].get(k, 0) + v
            cc = [j.get("compute_check") for j in jobs if j.get("compute_check")]
            m["job.compute_checked"] = sum(c["checked"] for c in cc) if cc else None
            m["job.compute_mismatches"] = sum(c["mismatches"] for c in cc) if cc else None
            m["modes"] = sorted({mode for r in runs for mode in (get(r, "checkpoint", "modes", "mekha") or [])})
            per[method] = m
        out[n] = per
    return out


def job_cell(m):
    if m is None:
        return "-"
    if not m["job_runs"]:
        return "not measured"
    s = (f"{'clean' if m['job_clean'] == m['job_runs'] else 'NOT clean'} {m['job_clean']}/{m['job_runs']}: "
         f"lost {m['job.lost']}, dup {m['job.dup']}, reordered {m['job.reordered']}, corrupt {m['job.corrupt']}")
    extra = []
    if m["job.missing"]:
        extra.append(f"{m['job.missing']} stream(s) not done")
    if m["job.incomplete"]:
        extra.append(f"{m['job.incomplete']} done incomplete")
    if m["job.rebooted"]:
        extra.append(f"{m['job.rebooted']} rebooted")
    if m["job.net_anomalies"]:
        extra.append("anomalies " + ", ".join(f"{k} {v}" for k, v in sorted(m["job.net_anomalies"].items())))
    if m["job.dirty_anomalies"]:
        extra.append(f"{m['job.dirty_anomalies']} memory anomalies")
    if m["job.compute_mismatches"]:
        extra.append(f"{m['job.compute_mismatches']} wrong checksums")
    return s + (f" ({'; '.join(extra)})" if extra else "")


def tables(data, summary):
    w = data["workload"]
    lines = [f"# mekha cluster benchmark ({'--quick, ' if data['quick'] else ''}median of {data['reps']})", ""]
    lines.append(f"Each VM: TCG, 1 vCPU, {w['memory_mib']} MiB; guest probe computing, dirtying {w['dirty_mib']} MiB "
                 f"at {w['dirty_rate_mib_s']} MiB/s, and exchanging {w['msgs']} sequenced TCP and UDP messages per "
                 f"peer and protocol ({w['msg_interval_ms']} ms apart) with every other VM over a bridge in a "
                 f"network namespace; checkpoint once every link received {w['min_rx']} messages. Fresh VMs per "
                 f"method; the images' page cache dropped before each restart. Host: {data['host']['cpus']} CPUs, "
                 f"kernel {data['host']['kernel']}, load average {' '.join(data['host']['loadavg_start'])} at the "
                 f"start, {' '.join(data['host']['loadavg_end'])} at the end.")
    for n, per in summary.items():
        mk, st = per.get("mekha"), per.get("stock")
        lines += ["", f"## N = {n} VM{'s' if n > 1 else ''}", ""]
        lines.append("| | mekha | stock | stock / mekha |")
        lines.append("|---|---:|---:|---:|")
        for label, section, key, digits, scale in ROWS:
            a = mk.get(f"{section}.{key}") if mk else None
            b = st.get(f"{section}.{key}") if st else None
            a = a * scale if a is not None else None
            b = b * scale if b is not None else None
            r = ratio(b, a) if a else None
            lines.append(f"| {label} | {f(a, digits)} | {f(b, digits)} | {f(r, 1, 'x')} |")
        lines.append(f"| job after the restart (probes' net_done, anomalies) | {job_cell(mk)} | {job_cell(st)} | |")
        for method, m in (("mekha", mk), ("stock", st)):
            if m and m["errors"]:
                lines.append("")
                lines.append(f"{LABELS[method]}: {len(m['errors'])} of {m['runs']} run(s) failed: "
                             + " | ".join(m["errors"]))
            if m and m["boot_retries"]:
                lines.append("")
                lines.append(f"{LABELS[method]}: the cluster was booted again in {len(m['boot_retries'])} run(s), "
                             f"the first boot having failed: " + " | ".join(m["boot_retries"]))
        if mk:
            lines.append("")
            lines.append(f"mekha's own figures (capture mode {', '.join(mk['modes']) or '-'}): " + "; ".join(
                f"{label} {f(mk.get(f'mekha.{section}.{key}'), digits)}"
                for label, section, key, digits in MEKHA_DETAILS) + ".")
        if st:
            lines.append("")
            lines.append("stock details: " + "; ".join(
                f"{label} {f(st.get(f'stock.{section}.{key}'), digits)}"
                for label, section, key, digits in STOCK_DETAILS) + ".")
        lines.append("")
        host = "; ".join(f"{label} {f(mk.get(f'host.{section}.{key}') if mk else None, digits)} / "
                         f"{f(st.get(f'host.{section}.{key}') if st else None, digits)}"
                         for label, section, key, digits in HOST_DETAILS)
        lines.append(f"Skews from the host times at which this script received the events (ms, mekha / stock): "
                     f"{host}.")
        if data["reps"] > 1:
            lines.append("")
            lines.append("Every repetition (ms): " + "; ".join(
                f"{label.split(':')[0]} " + ", ".join(
                    f"{method} " + "/".join(f(v * scale if v is not None else None, digits)
                                            for v in per[method][f'{section}.{key}_all'])
                    for method in METHODS if method in per)
                for label, section, key, digits, scale in ROWS if key.endswith("_ms")) + ".")
    lines += ["", "## Targets (docs/design.md), this run", ""]
    lines += checks(summary)
    lines += ["", "Notes: every time is a QMP event timestamp of QEMU (the host's CLOCK_REALTIME) or a host time of "
              "this script on the same clock. mekha's checkpoint latency and restart time start when the `mekha` "
              "CLI is spawned (its own latency_ms, from its first QMP command, is in its figures); stock's when the "
              "first QMP command is sent on connections already open. A stock image is written through the page "
              "cache, so its latency includes an fsync of every image after `cont` (mekha's images are durable when "
              "its manifest is committed). stock / mekha > 1: mekha is that many times shorter. A suspend skew of "
              "one VM is 0 by definition. The job check waits for every stream's net_done (those done before the "
              "checkpoint count from the checkpointed guest's log) and compares the computation's checksums after "
              "the restart with a host run of the probe; the computation never ends, so the probes never print "
              "`done`."]
    return "\n".join(lines) + "\n"


def checks(summary):
    out = []

    def check(ok, text):
        out.append(f"- [{'ok' if ok else 'MISS' if ok is not None else '?'}] {text}")

    for n, per in summary.items():
        mk, st = per.get("mekha"), per.get("stock")
        if mk is None:
            continue
        if n >= 2:
            own = mk.get("mekha.checkpoint.stop_spread_ms")
            ev = mk.get("checkpoint.suspend_skew_ms")
            check(own <= SKEW_LIMIT_MS if own is not None else None,
                  f"N={n}: mekha suspend skew {f(own, 3)} ms <= {SKEW_LIMIT_MS:g} ms (spread of the VMs' "
                  f"stopped-at-ns, median)")
            check(ev <= SKEW_LIMIT_MS if ev is not None else None,
                  f"N={n}: mekha suspend skew {f(ev, 3)} ms <= {SKEW_LIMIT_MS:g} ms (spread of the STOP events, "
                  f"as for stock: {f(st.get('checkpoint.suspend_skew_ms') if st else None, 3)} ms)")
            if mk["job_runs"]:
                bad = mk["job.lost"] + mk["job.dup"] + mk["job.reordered"]
                check(bad == 0 and mk["job.missing"] == 0,
                      f"N={n}: zero lost, duplicated or reordered messages across mekha's checkpoint and restart "
                      f"(lost {mk['job.lost']}, dup {mk['job.dup']}, reordered {mk['job.reordered']}, streams not "
                      f"done {mk['job.missing']}, over {mk['job_runs']} run(s))")
            else:
                check(None, f"N={n}: messages across mekha's checkpoint and restart: not measured")
        if mk["job_runs"]:
            sums = ("unchecked" if mk["job.compute_checked"] is None else
                    f"checked {mk['job.compute_checked']}x, {mk['job.compute_mismatches']} wrong")
            check(mk["job_clean"] == mk["job_runs"],
                  f"N={n}: the job went on cleanly after every mekha restart ({mk['job_clean']}/{mk['job_runs']}: "
                  f"no reboot, no anomaly, computation checksums {sums})")
        a, b = mk.get("restart.restart_ms"), st.get("restart.restart_ms") if st else None
        r = ratio(a, b)
        check(r <= RESTART_RATIO if r is not None else None,
              f"N={n}: mekha restart time / stock = {f(r, 2)} <= {RESTART_RATIO:g} ({f(a)} ms vs {f(b)} ms)")
        for method, m in (("mekha", mk), ("stock", st)):
            if m:
                check(not m["errors"], f"N={n}: every {method} run completed ({m['runs'] - len(m['errors'])}/"
                                       f"{m['runs']})")
    return out


# ---------------------------------------------------------------------------
# Timeline


def pick_runs(data):
    """The largest N with both methods measured; the first repetition where
    both checkpointed (and restarted, if any did)."""
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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

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
                      ("; dashed: its stopped-at-ns; dotted: T)" if m == "mekha" else ")"), fontsize=7)
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


def write(out, data):
    summary = summarize(data)
    data["summary"] = {str(n): v for n, v in summary.items()}
    text = tables(data, summary)
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    try:
        png = timeline(out, data)
        text += f"\nTimeline: {png.name if png else 'none (no run measured)'}\n"
    except Exception as e:  # noqa: BLE001 - the tables are worth more than the picture
        text += f"\nTimeline: failed ({e})\n"
    (out / "results.md").write_text(text)
    print(text)
