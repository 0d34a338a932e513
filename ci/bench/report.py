# SPDX-License-Identifier: GPL-2.0-or-later
"""Tables (stdout, results.md), results.json and timeline PNGs of the
checkpoint benchmark."""

import json
import statistics

LABELS = {
    "mekha": "mekha MTD checkpoint",
    "mekha-cow": "mekha copy-on-write checkpoint",
    "mekha-sealed": "mekha copy-on-write, sealed under a key",
    "stop-migrate": "stock stop + migrate file: + cont",
    "live-migrate": "stock live migrate file:",
    "bg-snapshot": "stock background-snapshot",
    "snapshot-save": "stock snapshot-save (qcow2)",
    "mekha-lazy": "mekha restore, lazy",
    "mekha-bulk": "mekha restore, lazy=false",
    "mekha-keyed": "mekha restore of a sealed image with its key (read, tags checked)",
    "stock-incoming": "stock migrate-incoming file:",
}
# Checkpoint methods in table order.
ORDER = ("mekha", "mekha-cow", "mekha-sealed", "stop-migrate", "live-migrate", "bg-snapshot", "snapshot-save")
SPAN_COLORS = {
    "live copy": "#4C72B0",
    "preparing": "#8FAADC",
    "capturing": "#55A868",
    "migrating": "#8172B2",
    "paused": "#C44E52",
    "persisting": "#DD8452",
    "writing (paused)": "#C44E52",
}
# The clock measurement's methods, in column order.
CLOCK_COLUMNS = (("mekha", "mekha (continue)"), ("stock", "stock QEMU"))
CLOCK_ROWS = (
    ("CLOCK_MONOTONIC: advance beyond one sampling interval (ms)", "mono_ms", 1),
    ("CLOCK_REALTIME: advance beyond one sampling interval (ms)", "real_ms", 1),
    ("TSC: advance beyond one sampling interval (ms)", "tsc_ms", 1),
    ("RTC - CLOCK_REALTIME after restore (s)", "rtc_minus_real_s", 2),
    ("RTC - CLOCK_REALTIME before the checkpoint (s)", "rtc_minus_real_before_s", 2),
    ("RTC - CLOCK_REALTIME: change across the restore (s)", "rtc_change_s", 2),
    ("host time from the checkpoint to the restored VM running (s)", "host_gap_s", 1),
)
CLOCK_LIMIT_MS = 100             # mekha: every clock advances at most this across the gap
RTC_LIMIT_S = 1.0                # mekha: RTC within this of CLOCK_REALTIME after restore
LINE_COLORS = {
    "mekha": "#2CA02C",
    "mekha-cow": "#17BECF",
    "mekha-sealed": "#8C564B",
    "stop-migrate": "#D62728",
    "live-migrate": "#9467BD",
    "bg-snapshot": "#1F77B4",
    "snapshot-save": "#FF7F0E",
}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def f(v, digits=0, suffix=""):
    return "-" if v is None else f"{v:,.{digits}f}{suffix}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def summarize(data):
    """Medians per (size, method) and per (size, restore)."""
    dd = median([d["mbps"] for d in data["dd"]])
    sizes = sorted({r["size_mib"] for r in data["results"]})
    out = {"dd_mbps": dd, "dd_all_mbps": [d["mbps"] for d in data["dd"]], "sizes": {}}
    for size in sizes:
        rows = {}
        for r in data["results"]:
            if r["size_mib"] != size:
                continue
            rows.setdefault(r["method"], []).append(r)
        methods = {}
        for method, rs in rows.items():
            m = {"n": len(rs), "ended": sum(1 for r in rs if r["ended"])}
            ended = [r for r in rs if r["ended"]]
            cancelled = [r for r in rs if not r["ended"]]
            # What only a save that ended has, over those only.
            for key in ("pause_ms", "total_ms", "image_mib", "image_alloc_mib", "write_mbps", "fsync_ms",
                        "downtime_ms"):
                m[key] = median([r.get(key) for r in ended])
                m[key + "_all"] = [r.get(key) for r in rs]
            m["cancelled_sent_mib"] = median([r["transferred_bytes"] / 2**20 for r in cancelled
                                              if r.get("transferred_bytes") is not None])
            for key in ("lost_ms", "control_ms", "staging_peak_mib", "staging_budget_mib", "live_ms", "persist_ms",
                        "transferred_bytes", "cancelled_after_ms", "window_s", "steady_rate", "pause_host_ms",
                        "pause_qemu_ms", "persist_staged_mbps", "written_bytes",
                        "written_during_live_bytes", "staged_at_persist_bytes", "stall_ms", "event_interval_ms"):
                m[key] = median([r.get(key) for r in rs])
                m[key + "_all"] = [r.get(key) for r in rs]
            m["direct_io"] = [r.get("direct_io") for r in rs]
            for phase in ("cpu_steady", "cpu_window"):
                for key in ("vcpu", "vcpu_wait", "other"):
                    m[f"{phase}_{key}"] = median([r[phase].get(key) for r in rs if r.get(phase)])
            m["loadavg"] = [r.get("loadavg_before", [None])[0] for r in rs]
            if method == "mekha-cow":
                m["wp_faults"] = median([r.get("wp_faults") for r in rs])
                m["capture_ms"] = median([r.get("capture_ms") for r in rs])
            if method == "mekha":
                m["final_pages"] = median([r["info"]["final-pages"] for r in rs])
                m["end_reason"] = sorted({r["info"].get("end-reason") for r in rs})
                m["epochs"] = median([r["info"]["epochs"] for r in rs])
                m["device_state_bytes"] = median([r["info"]["device-state-bytes"] for r in rs])
            methods[method] = m
        restores = {}
        for r in data["restores"]:
            if r["size_mib"] != size:
                continue
            restores.setdefault(r["restore"], []).append(r)
        rest = {}
        for kind, rs in restores.items():
            rest[kind] = {"n": len(rs), "ok": sum(1 for r in rs if r["ok"])}
            for key in ("running_ms", "first_progress_ms", "rss_mib", "rss_1s_mib", "image_mib"):
                rest[kind][key] = median([r.get(key) for r in rs])
                rest[kind][key + "_all"] = [r.get(key) for r in rs]
        out["sizes"][size] = {"methods": methods, "restores": rest}
    return out


def tables(data, summary):
    lines = []
    dd = summary["dd_mbps"]
    reps = data["reps"]
    lines.append(f"# mekha checkpoint benchmark ({'--quick, ' if data['quick'] else ''}median of {reps})")
    lines.append("")
    lines.append(f"Workload: guest probe rewriting a {data['workload']['hot_mib']} MiB hot set with no rate limit, "
                 f"plus a compute loop; TCG, 1 vCPU; host {data['host']['cpus']} CPUs, kernel "
                 f"{data['host']['kernel']}. Lost work: window from the command to "
                 f"{data['workload']['tail_s']:.0f} s after completion, against the steady rate of the "
                 f"{data['workload']['steady_s']:.0f} s before. dd oflag=direct (512 MiB, conv=fsync): "
                 f"{f(dd)} MB/s (all: {', '.join(f(x) for x in summary['dd_all_mbps'])}).")
    for size, s in summary["sizes"].items():
        ms = s["methods"]
        lines.append("")
        lines.append(f"## {size} MiB VM")
        lines.append("")
        lines.append("| method | pause ms | total ms | lost work ms | longest stall ms | staging peak MiB | image MiB "
                     "| write MB/s (% dd) | +fsync ms | O_DIRECT | ended |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for method in ORDER:
            m = ms.get(method)
            if m is None:
                continue
            label = LABELS[method]
            image = f(m["image_mib"])
            if m["image_alloc_mib"] is not None and m["image_alloc_mib"] < 0.9 * (m["image_mib"] or 0):
                image += f" ({f(m['image_alloc_mib'])} allocated)"
            if method == "live-migrate":
                label += f" (cap {data['live_cap_s']:.0f} s)"
            write = "-"
            if m["write_mbps"] is not None:
                write = f"{f(m['write_mbps'])} ({f(ratio(m['write_mbps'], dd) * 100 if dd else None)}%)"
                if not method.startswith("mekha"):
                    write += " buffered"
            dio = m["direct_io"]
            dio_s = "yes" if all(dio) else ("no" if not any(dio) else f"{sum(1 for d in dio if d)}/{len(dio)}")
            staging = "-"
            if m["staging_peak_mib"] is not None:
                staging = f"{f(m['staging_peak_mib'])} / {f(m['staging_budget_mib'])}"
            ended = f"{m['ended']}/{m['n']}"
            if m["ended"] < m["n"]:
                ended += (f"; {m['n'] - m['ended']} did not end in {data['live_cap_s']:.0f} s, cancelled after "
                          f"{f(m['cancelled_sent_mib'])} MiB sent")
            pause = f(m["pause_ms"], 1) if m["pause_ms"] is not None else "n/a"
            if m.get("downtime_ms") is not None and method == "live-migrate":
                pause += f" (QEMU downtime {f(m['downtime_ms'])})"
            lines.append(f"| {label} | {pause} | {f(m['total_ms'])} | {f(m['lost_ms'])} | {f(m['stall_ms'])} | {staging} "
                         f"| {image} | {write} | {f(m['fsync_ms'])} | {dio_s} | {ended} |")
        controls = [m["control_ms"] for m in ms.values() if m["control_ms"] is not None]
        all_controls = [c for m in ms.values() for c in m["control_ms_all"] if c is not None]
        lines.append(f"| no checkpoint (noise floor: {data['workload']['steady_s']:.0f} s window, every VM) | - | - | "
                     f"{f(median(controls))} (range {f(min(all_controls) if all_controls else None)} .. "
                     f"{f(max(all_controls) if all_controls else None)}) | {f(median([m['event_interval_ms'] for m in ms.values()]))} "
                     f"(event interval) | - | - | - | - | - | - |")
        lines.append("")
        mk = ms.get("mekha", {})
        ratios = []
        for method in ("stop-migrate", "bg-snapshot", "snapshot-save", "live-migrate"):
            m = ms.get(method)
            if m is None:
                continue
            pr = ratio(m["pause_ms"], mk.get("pause_ms"))
            lr = ratio(m["lost_ms"], mk.get("lost_ms")) if (mk.get("lost_ms") or 0) > 0 else None
            tr = ratio(m["total_ms"], mk.get("total_ms"))
            ratios.append(f"- {LABELS[method]} / mekha: pause {f(pr, 1)}x, lost work {f(lr, 1)}x, "
                          f"total {f(tr, 2)}x")
        cow = ms.get("mekha-cow")
        if cow:
            for method in ("bg-snapshot", "stop-migrate"):
                m = ms.get(method)
                if m is None:
                    continue
                lr = ratio(m["lost_ms"], cow["lost_ms"]) if (cow["lost_ms"] or 0) > 0 else None
                ratios.append(f"- {LABELS[method]} / mekha copy-on-write: pause {f(ratio(m['pause_ms'], cow['pause_ms']), 1)}x, "
                              f"lost work {f(lr, 1)}x")
        sealed = ms.get("mekha-sealed")
        if cow and sealed:
            ratios.append(f"- cost of the key: {LABELS['mekha-sealed']} / mekha copy-on-write: pause "
                          f"{f(ratio(sealed['pause_ms'], cow['pause_ms']), 2)}x, total "
                          f"{f(ratio(sealed['total_ms'], cow['total_ms']), 2)}x, lost work {f(sealed['lost_ms'])} ms "
                          f"vs {f(cow['lost_ms'])} ms")
        rs = s["restores"]
        if rs.get("mekha-keyed") and rs.get("mekha-bulk"):
            ratios.append(f"- cost of the key at restore: {LABELS['mekha-keyed']} / {LABELS['mekha-bulk']}: to running "
                          f"{f(ratio(rs['mekha-keyed']['running_ms'], rs['mekha-bulk']['running_ms']), 2)}x")
        lines.append("Ratios (same run, medians):")
        lines.extend(ratios)
        if cow:
            lines.append(f"- mekha copy-on-write details: pause all reps {', '.join(f(x, 2) for x in cow['pause_ms_all'])} ms; "
                         f"{f(cow['wp_faults'])} guest writes waited for a copy; every page copied "
                         f"{f(cow['capture_ms'])} ms after the restart; lost all reps: "
                         f"{', '.join(f(x) for x in cow['lost_ms_all'])} ms")
        if mk and cow:
            best = min((("mtd", mk), ("cow", cow)), key=lambda x: x[1]["lost_ms"] if x[1]["lost_ms"] is not None else 1e9)
            lines.append(f"- least guest work lost at {size} MiB: {best[0]} ({f(best[1]['lost_ms'])} ms; mtd "
                         f"{f(mk['lost_ms'])}, cow {f(cow['lost_ms'])}); pause mtd {f(mk['pause_ms'], 1)} ms, "
                         f"cow {f(cow['pause_ms'], 2)} ms")
        if mk:
            lines.append(f"- mekha write throughput: {f(ratio(mk.get('write_mbps'), dd) * 100 if dd and mk.get('write_mbps') else None)}% "
                         f"of dd oflag=direct (target >= 80%)")
            lines.append(f"- mekha details: live phase {f(mk['live_ms'])} ms (end: {', '.join(str(x) for x in mk['end_reason'])}, "
                         f"{f(mk['epochs'])} epochs), final copy {f(mk['final_pages'])} pages "
                         f"({f(mk['final_pages'] * 4096 / 2**20 if mk['final_pages'] is not None else None, 1)} MiB), "
                         f"device state {f(mk['device_state_bytes'] / 1024 if mk['device_state_bytes'] else None)} KiB, "
                         f"persist {f(mk['persist_ms'])} ms, in which "
                         f"{f(mk['staged_at_persist_bytes'] / 2**20 if mk['staged_at_persist_bytes'] else None)} MiB staged "
                         f"were checksummed and written or skipped as zero pages "
                         f"({f(mk['persist_staged_mbps'])} MB/s of staged data; "
                         f"{f(mk['written_bytes'] / 2**20 if mk['written_bytes'] else None)} MiB written in all, "
                         f"{f(mk['written_during_live_bytes'] / 2**20 if mk['written_during_live_bytes'] is not None else None)} "
                         f"MiB of it before the pause); pause all reps: "
                         f"{', '.join(f(x, 1) for x in mk['pause_ms_all'])} ms; lost all reps: "
                         f"{', '.join(f(x) for x in mk['lost_ms_all'])} ms")
        lines.append("")
        lines.append(f"Host CPU of the VM's QEMU, % of one CPU (steady state -> lost-work window; the vCPU thread "
                     f"from schedstat), and the 1-min load average before each run (host of {data['host']['cpus']} "
                     f"CPUs, load of other users included):")
        lines.append("")
        lines.append("| method | vCPU thread on a CPU | vCPU thread waiting for a CPU | other QEMU threads "
                     "(mekha worker, I/O, migration, main loop) | load avg |")
        lines.append("|---|---:|---:|---:|---|")
        for method in ORDER:
            m = ms.get(method)
            if m is None:
                continue

            def pct(key, m=m):
                a, b = m.get(f"cpu_steady_{key}"), m.get(f"cpu_window_{key}")
                return f"{f(a * 100 if a is not None else None)} -> {f(b * 100 if b is not None else None)}"
            lines.append(f"| {LABELS[method]} | {pct('vcpu')} | {pct('vcpu_wait')} | {pct('other')} | "
                         f"{', '.join(str(x) for x in m['loadavg'])} |")
        rs = s["restores"]
        if rs:
            lines.append("")
            lines.append(f"### Restore, {size} MiB (image page cache dropped before each)")
            lines.append("")
            lines.append("| restore | to running ms | to first guest progress ms | RSS after MiB | RSS +1 s MiB "
                         "| image MiB | / stock | guest ok |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---|")
            stock = rs.get("stock-incoming", {}).get("running_ms")
            for kind in ("mekha-lazy", "mekha-bulk", "mekha-keyed", "stock-incoming"):
                r = rs.get(kind)
                if r is None:
                    continue
                lines.append(f"| {LABELS[kind]} | {f(r['running_ms'])} | {f(r['first_progress_ms'])} | "
                             f"{f(r['rss_mib'])} | {f(r['rss_1s_mib'])} | {f(r['image_mib'])} | "
                             f"{f(ratio(r['running_ms'], stock), 2)} | {r['ok']}/{r['n']} |")
    if data.get("clocks"):
        lines.extend(clock_table(data["clocks"]))
    lines.append("")
    lines.append("## Targets (docs/design.md), this run")
    lines.append("")
    lines.extend(checks(summary, data.get("clocks")))
    lines.append("")
    params = [r.get("migrate_parameters") for r in data["results"] if r.get("migrate_parameters")]
    if params:
        p = params[0]
        lines.append(f"Stock migration parameters (defaults, unchanged): max-bandwidth "
                     f"{f(p['max-bandwidth'] / 2**20 if p.get('max-bandwidth') is not None else None)} MiB/s, "
                     f"downtime-limit {p.get('downtime-limit')} ms.")
        lines.append("")
    lines.append("Longest stall: the longest time without a `compute` event in the lost-work window (events "
                 "normally come every 'event interval' ms): the guest's computation made no visible progress for "
                 "that long, whatever the pause says.")
    lines.append("")
    lines.append("Notes: pause of stop+migrate = host time from sending `stop` to the answer to `cont`; of a live "
                 "migration that ended, from its STOP to the RESUME of the `cont` sent at once after it (QEMU refuses "
                 "`cont` until the migration is finalized; medians over the runs that ended); "
                 "background-snapshot's pause = query-migrate `downtime`; snapshot-save's = STOP to RESUME events. "
                 "Stock images are written through the page cache: their write MB/s is not disk bandwidth, and "
                 "'+fsync ms' is what an fsync of the finished image took afterwards (mekha's image is durable "
                 "at completion). Restores read the image from disk (page cache dropped); the stock image of a stopped "
                 "VM restores paused, so its 'to running' includes the `cont` that resumes it. Lost work is measured "
                 "in host time on a TCG guest sharing the host's CPUs with QEMU's own threads and any other host "
                 "load: compare it with the noise floor. A VM's progress line interpolates between compute events "
                 "(about 30 a second), so a stopped guest shows a small residual rate instead of 0.")
    return "\n".join(lines) + "\n"


def clock_table(clocks):
    """The guest clocks across a restore gap: one column per method."""
    lines = ["", f"## Guest clocks across a {f(clocks['gap_s'])} s restore gap", ""]
    ms = clocks["methods"]
    cols = [(k, label) for k, label in CLOCK_COLUMNS if k in ms]
    lines.append("| clock | " + " | ".join(label for _, label in cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for label, key, digits in CLOCK_ROWS:
        cells = ["failed" if "error" in ms[k] else f(ms[k].get(key), digits, "") for k, _ in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    failed = [f"- {label} failed: {ms[k]['error']}" for k, label in cols if "error" in ms[k]]
    if failed:
        lines.extend(failed + [""])
    lines.append(f"{clocks['size_mib']} MiB VM, the same workload, the probe sampling its clocks every "
                 f"{clocks['interval_ms']} ms of CLOCK_MONOTONIC; a checkpoint (mekha's, or stock stop + "
                 f"migrate file:), QEMU killed, {f(clocks['gap_s'])} s without QEMU, then a restore into a fresh "
                 f"QEMU (mekha's with time continue, or stock migrate-incoming file: + cont). Advance = first "
                 f"sample of the restored guest - last sample the checkpointed guest had taken - one sampling "
                 f"interval: 0 when the clock went on as if no time had passed, about the gap when it jumped "
                 f"(TSC in ms at the rate measured before the checkpoint). RTC - CLOCK_REALTIME is already off "
                 f"by up to 2 s after boot, by chance (the RTC has whole seconds, and QEMU's RTC seconds tick "
                 f"at the sub-second phase of QEMU's start): its change across the restore is 0 when the RTC "
                 f"went on with the system clock (up to 1 s either way from the whole seconds), about the gap "
                 f"when the RTC jumped to the host's time and the system clock did not.")
    return lines


def checks(summary, clocks=None):
    out = []
    dd = summary["dd_mbps"]

    def check(ok, text):
        out.append(f"- [{'ok' if ok else 'MISS' if ok is not None else '?'}] {text}")

    cow_pauses = []
    for size, s in summary["sizes"].items():
        ms, rs = s["methods"], s["restores"]
        cow = ms.get("mekha-cow")
        if cow:
            p = cow["pause_ms"]
            cow_pauses.append((size, p))
            check(p is not None and p <= 2, f"{size} MiB: mekha copy-on-write pause {f(p, 2)} ms <= 2 ms")
            check(cow["lost_ms"] is not None and cow["lost_ms"] <= 30,
                  f"{size} MiB: mekha copy-on-write lost work {f(cow['lost_ms'])} ms <= 30 ms")
            check(cow["staging_peak_mib"] is not None and cow["staging_peak_mib"] <= cow["staging_budget_mib"],
                  f"{size} MiB: copy-on-write staging peak {f(cow['staging_peak_mib'])} MiB <= budget "
                  f"{f(cow['staging_budget_mib'])} MiB")
            w = ratio(cow["write_mbps"], dd)
            check(w is not None and w >= 0.8, f"{size} MiB: copy-on-write write {f(cow['write_mbps'])} MB/s = "
                                              f"{f(w * 100 if w is not None else None)}% of dd >= 80%")
            check(cow["ended"] == cow["n"], f"{size} MiB: every copy-on-write checkpoint completed "
                                            f"({cow['ended']}/{cow['n']})")
        mk = ms.get("mekha")
        if not mk:
            continue
        p = mk["pause_ms"]
        check(p is not None and p <= 30, f"{size} MiB: mekha pause {f(p, 1)} ms <= 30 ms")
        sm = ms.get("stop-migrate")
        if sm:
            r = ratio(sm["pause_ms"], p)
            check(r is not None and r >= 40, f"{size} MiB: stop+migrate pause / mekha pause = {f(r, 1)}x >= 40x")
        check(mk["lost_ms"] is not None and mk["lost_ms"] <= 30,
              f"{size} MiB: mekha lost work {f(mk['lost_ms'])} ms <= 30 ms")
        check(mk["staging_peak_mib"] is not None and mk["staging_peak_mib"] <= mk["staging_budget_mib"],
              f"{size} MiB: staging peak {f(mk['staging_peak_mib'])} MiB <= budget {f(mk['staging_budget_mib'])} MiB")
        w = ratio(mk["write_mbps"], dd)
        check(w is not None and w >= 0.8, f"{size} MiB: mekha write {f(mk['write_mbps'])} MB/s = "
                                          f"{f(w * 100 if w is not None else None)}% of dd >= 80%")
        check(all(mk["direct_io"]), f"{size} MiB: mekha image written with O_DIRECT ({mk['direct_io']})")
        check(mk["ended"] == mk["n"], f"{size} MiB: every mekha checkpoint completed ({mk['ended']}/{mk['n']})")
        stock = rs.get("stock-incoming", {}).get("running_ms")
        for kind in ("mekha-lazy", "mekha-bulk"):
            if kind in rs:
                r = ratio(rs[kind]["running_ms"], stock)
                check(r is not None and r <= 0.5, f"{size} MiB: {LABELS[kind]} to running / stock = {f(r, 2)} <= 0.5")
    if len(cow_pauses) > 1 and all(p is not None for _, p in cow_pauses):
        (small, p0), (large, p1) = cow_pauses[0], cow_pauses[-1]
        check(p1 <= max(2 * p0, 2.0), f"copy-on-write pause flat as memory grows: {f(p0, 2)} ms at {small} MiB, "
                                      f"{f(p1, 2)} ms at {large} MiB")
    mk = (clocks or {}).get("methods", {}).get("mekha")
    if mk:
        gap = f(clocks["gap_s"])
        if "error" in mk:
            check(False, f"mekha: every clock advances <= {CLOCK_LIMIT_MS} ms across a {gap} s gap "
                         f"(failed: {mk['error']})")
            check(False, f"mekha: RTC agrees with CLOCK_REALTIME within {RTC_LIMIT_S:.0f} s after the restore, "
                         f"as before the checkpoint (failed)")
        else:
            adv = [mk.get(k) for k in ("mono_ms", "real_ms", "tsc_ms")]
            check(all(a is not None and abs(a) <= CLOCK_LIMIT_MS for a in adv),
                  f"mekha: every clock advances <= {CLOCK_LIMIT_MS} ms across a {gap} s gap (CLOCK_MONOTONIC "
                  f"{f(adv[0], 1)}, CLOCK_REALTIME {f(adv[1], 1)}, TSC {f(adv[2], 1)} ms)")
            d = mk.get("rtc_change_s")
            check(d is not None and abs(d) <= RTC_LIMIT_S,
                  f"mekha: RTC agrees with CLOCK_REALTIME within {RTC_LIMIT_S:.0f} s after the restore, as before "
                  f"the checkpoint (RTC - CLOCK_REALTIME {f(mk.get('rtc_minus_real_before_s'), 2)} s before, "
                  f"{f(mk.get('rtc_minus_real_s'), 2)} s after: {f(d, 2)} s)")
    return out


def representative(runs):
    """The run with the median lost work."""
    runs = sorted(runs, key=lambda r: r["lost_ms"])
    return runs[(len(runs) - 1) // 2]


def timelines(out, data, summary):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for size in summary["sizes"]:
        runs = {}
        for r in data["results"]:
            if r["size_mib"] == size:
                runs.setdefault(r["method"], []).append(r)
        order = [m for m in ORDER if m in runs]
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
            labels = []
            for i, m in enumerate(order):
                r = chosen[m]
                y = len(order) - 1 - i
                ax.broken_barh([(0, r["window_s"])], (y - 0.35, 0.7), facecolors="#EEEEEE", edgecolor="none")
                for kind, a, b in r["spans"]:
                    if a is None or b is None:
                        continue
                    if kind == "writing (paused)":
                        ax.broken_barh([(a, max(b - a, 1e-4))], (y - 0.12, 0.24), facecolors="none",
                                       edgecolor="white", hatch="////", linewidth=0)
                        continue
                    ax.broken_barh([(a, max(b - a, 1e-4))], (y - 0.35, 0.7), facecolors=SPAN_COLORS[kind],
                                   edgecolor=SPAN_COLORS[kind] if kind == "paused" else "none", linewidth=0.8)
                ended = "" if r["ended"] else ", did not end"
                pause = f"{f(r['pause_ms'], 1)} ms" if r.get("pause_ms") is not None else "n/a"
                labels.append((y, f"{LABELS[m]}\npause {pause}, lost {f(r['lost_ms'])} ms,\n"
                                  f"longest stall {f(r.get('stall_ms'))} ms{ended}"))
            ax.set_yticks([y for y, _ in labels])
            ax.set_yticklabels([t for _, t in labels], fontsize=8)
            ax.set_ylim(-0.6, len(order) - 0.4)
            ax.axvline(0, color="black", linewidth=0.8)
            handles = [matplotlib.patches.Patch(color="#EEEEEE", label="running (lost-work window)")]
            handles += [matplotlib.patches.Patch(color=SPAN_COLORS[k], label=k + (" (guest runs)" if k != "paused" else
                                                                                    " (guest stopped)"))
                        for k in ("live copy", "preparing", "migrating", "paused", "capturing", "persisting")]
            handles.append(matplotlib.patches.Patch(facecolor=SPAN_COLORS["paused"], edgecolor="white", hatch="////",
                                                    label="image written while stopped"))
            ax.legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=6,
                      frameon=False)
            ax.set_title(f"{size} MiB VM, {data['workload']['hot_mib']} MiB hot set: phases from the checkpoint "
                         f"command (run with the median lost work of each method)", fontsize=10, pad=22)
            for m in order:
                pts = chosen[m]["progress"]
                if pts:
                    ax2.plot([p[0] for p in pts], [p[1] for p in pts],
                             color=LINE_COLORS[m], linewidth=1.0, label=LABELS[m])
            ax2.axhline(100, color="grey", linewidth=0.6, linestyle="--")
            ax2.axvline(0, color="black", linewidth=0.8)
            ax2.set_ylim(0, 150)
            ax2.set_ylabel("guest progress\n% of steady rate", fontsize=8)
            ax2.set_xlabel("host time since the checkpoint command (s)")
            ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.22), ncol=5, frameon=False)
            ax2.set_xlim(-1.0, end + 0.1)
            fig.tight_layout()
            path = out / f"timeline-{size}M{suffix}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            files.append(path)
    return files


def write(out, data):
    summary = summarize(data)
    data["summary"] = summary
    text = tables(data, summary)
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    pngs = timelines(out, data, summary)
    text += "\nTimelines: " + ", ".join(p.name for p in pngs) + "\n"
    (out / "results.md").write_text(text)
    print(text)
