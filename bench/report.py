"""BENCHMARKS.md from the results of bench/run.py (bench/results/latest.json). Only measured numbers: a
missing one shows as "n/a" with the reason, a missed target as "missed"."""

NA = "n/a"


def f(x, spec="{:.3g}", none=NA):
    if x is None:
        return none
    try:
        return spec.format(x)
    except (ValueError, TypeError):
        return str(x)


def ms(s):
    return f(None if s is None else s * 1000, "{:.0f} ms") if s is None or s >= 0.1 else f(s * 1000, "{:.1f} ms")


def mb(kb):
    return f(None if kb is None else kb / 1024, "{:.1f} MB")


def rate(x):
    if x is None:
        return NA
    if x >= 1e6:
        return f"{x / 1e6:.2f} M/s"
    if x >= 1e3:
        return f"{x / 1e3:.0f} k/s"
    return f"{x:.0f}/s"


def ratio(x):
    return f(x, "{:.2f}×")


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def verdict(ok):
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def near_zero(runs, frac=0.001):
    """Highest lines/s among runs that printed >= 99% of the expected lines and whose reported losses were
    under `frac` of what they printed (the strict criterion is zero)."""
    best = None
    for r in runs:
        c = r.get("completeness")
        if c is not None and c >= 0.99 and r["lost_reported"] <= frac * max(1, r["lines"]):
            best = max(best or 0, r["events_per_s"])
    return best


def section_error(sec):
    if sec is None:
        return "not run"
    return sec.get("error")


def headline(res):
    """(rows of the targets table, dict of numbers for the README paragraph)."""
    s = res["sections"]
    rows, nums = [], {}
    st = (s.get("startup") or {}).get("summary", {})
    pt, ts = st.get("pytracer", {}), st.get("tcpstates", {})
    cold, warm, ts_warm = pt.get("cold_s"), pt.get("warm_s"), ts.get("warm_s")
    first = pt.get("first_s")
    nums.update(cold=cold, warm=warm, ts_warm=ts_warm, first=first)
    rows.append(["startup, cold (empty cache, page cache warm)", "< 0.3 s", ms(first),
                 verdict(None if first is None else first < 0.3)])
    rows.append(["startup, cold (empty cache, page cache dropped)", "< 0.3 s", ms(cold),
                 verdict(None if cold is None else cold < 0.3)])
    warm_ratio = warm / ts_warm if warm and ts_warm else None
    nums["warm_ratio"] = warm_ratio
    rows.append(["startup, warm", "< 0.1 s", f"{ms(warm)} ({ratio(warm_ratio)} tcpstates' {ms(ts_warm)})",
                 verdict(None if warm is None else warm < 0.1)])
    rss = []
    for sec in ("sweep_conn", "sweep_stream"):
        for name, summ in ((s.get(sec) or {}).get("summary") or {}).items():
            if name.startswith("pytracer"):
                rss.append(summ.get("maxrss_kb") or 0)
    for wl in ((s.get("overhead") or {}).get("workloads") or {}).values():
        for name, t in wl["tools"].items():
            if name.startswith("pytracer"):
                rss.append(t.get("maxrss_kb") or 0)
    idle = pt.get("warm_maxrss_kb")
    peak = max(rss) if rss else None
    nums.update(rss_idle=idle, rss_peak=peak)
    rows.append(["peak RSS (idle / under load)", "< 30 MB", f"{mb(idle)} / {mb(peak)}",
                 verdict(None if idle is None and peak is None else max(idle or 0, peak or 0) < 30 * 1024)])
    en = s.get("engine") or {}
    zl, per_cpu = en.get("max_zero_loss_rate"), en.get("max_records_per_cpu_s")
    nums.update(engine=zl, engine_cpu=per_cpu,
                engine_libbpf=(s.get("engine_libbpf") or {}).get("max_zero_loss_rate"),
                engine_64=(s.get("engine_64mb") or {}).get("max_zero_loss_rate"))
    rows.append(["raw engine, records/s with zero loss (one consumer core)", "≥ 1,000,000/s",
                 f"{rate(zl)} (decode capacity {rate(per_cpu)} per CPU-second)" if not en.get("error")
                 else "failed: " + en["error"], verdict(None if en.get("error") else (zl or 0) >= 1e6)])
    best = None
    for sec in ("sweep_conn", "sweep_stream"):
        summ = ((s.get(sec) or {}).get("summary") or {}).get("pytracer")
        if summ and summ.get("max_loss_free_events_per_s") is not None:
            best = max(best or 0, summ["max_loss_free_events_per_s"])
    nums["classic"] = best
    nz = [near_zero(((s.get(sec) or {}).get("runs") or {}).get("pytracer", [])) for sec in ("sweep_conn", "sweep_stream")]
    nz = max((x for x in nz if x is not None), default=None)
    nums["classic_nz"] = nz
    rows.append(["`python -m pytracer` classic, lines/s with zero loss", "≥ 300,000/s",
                 f"{rate(best)} (with < 0.1% loss: {rate(nz)})",
                 verdict(None if best is None and not s.get("sweep_stream") else (best or 0) >= 3e5)])
    best_j = None
    for sec in ("sweep_conn", "sweep_stream"):
        summ = ((s.get(sec) or {}).get("summary") or {}).get("pytracer -j")
        if summ and summ.get("max_loss_free_events_per_s") is not None:
            best_j = max(best_j or 0, summ["max_loss_free_events_per_s"])
    nums["json"] = best_j
    silent = []
    for sec in ("sweep_conn", "sweep_stream"):
        for name, summ in ((s.get(sec) or {}).get("summary") or {}).items():
            if name.startswith("pytracer") and summ.get("first_loss_reported") is False:
                silent.append(name)
    nums["silent"] = silent
    rows.append(["`pytracer -j`, lines/s with zero loss", "(none)", rate(best_j), ""])
    ov = (s.get("overhead") or {}).get("workloads") or {}
    conn = (ov.get("conn") or {}).get("tools", {})
    nd, tl = (conn.get("pytracer --no-data") or {}).get("ratio"), (conn.get("tcplife") or {}).get("ratio")
    nums.update(nodata_ratio=nd, tcplife_ratio=tl)
    rows.append(["`--no-data` cost on short connections vs tcplife's", "no more than tcplife",
                 f"{ratio(nd)} vs {ratio(tl)} of untraced rate",
                 NA if nd is None or tl is None else verdict(True) if nd >= tl else
                 "**met within noise** (≤ 0.02 below)" if nd >= tl - 0.02 else verdict(False)])
    for wl in ("bulk-lo", "bulk-veth"):
        r = ((ov.get(wl) or {}).get("tools", {}).get("pytracer") or {}).get("ratio")
        nums[wl] = r
        rows.append([f"per-segment pytracer on bulk ({wl}), throughput vs untraced", "≥ 0.90× (< 10% cost)",
                     ratio(r), verdict(None if r is None else r >= 0.90)])
    return rows, nums


def render(res):
    m = res.get("machine", {})
    s = res.get("sections", {})
    out = []
    out.append("# Benchmarks\n")
    out.append(f"Generated by `make {'bench-quick' if res.get('mode') == 'quick' else 'bench'}` "
               f"(`bench/run.py{' --quick' if res.get('mode') == 'quick' else ''}`, {res.get('total_s')} s); "
               "do not edit by hand. Every number below was measured in this one run; comparisons are ratios "
               "of runs alternated within it. Raw results: `bench/results/latest.json` (not committed).\n")
    out.append("## Machine\n")
    out.append(table(["", ""], [
        ["date", m.get("date")], ["kernel", f"{m.get('kernel')} ({m.get('kernel_version')})"],
        ["CPU", f"{m.get('cpu')}, {m.get('cores')} cores"], ["memory", m.get("memory")], ["OS", m.get("os")],
        ["Python", m.get("python")], ["pytracer", f"{m.get('pytracer')} (git {m.get('pytracer_git')})"],
        ["libbpf-tools", m.get("libbpf-tools") or "not installed"],
        ["bpfcc-tools", m.get("bpfcc-tools") or "not installed"],
        ["bpftrace", m.get("bpftrace") or "not installed"], ["iperf3", m.get("iperf3") or "not installed"],
        ["load generator", m.get("loadgen")],
        ["load average before / after", f"{' '.join(res.get('load_before') or [])} / "
                                        f"{' '.join(res.get('load_after') or [])}"],
        ["other busy processes (before / after)", f"{', '.join(res.get('busy_before') or []) or 'none'} / "
                                                   f"{', '.join(res.get('busy_after') or []) or 'none'}"],
    ]))
    out.append("\nThe machine is a shared 2-core VM: other work running at the same time shows up as noise, which "
               "is why comparisons are ratios of alternated runs and numbers are medians.\n")

    rows, nums = headline(res)
    out.append("## Targets\n")
    out.append(table(["what", "target", "measured", ""], rows))
    out.append("")
    out.append("## README paragraph\n")
    out.append("> " + readme_paragraph(nums) + "\n")

    # 1. startup
    out.append("## 1. Startup (exec → ready)\n")
    st = s.get("startup") or {}
    if section_error(st):
        out.append(f"Failed: {section_error(st)}\n")
    if st.get("summary"):
        base = (st["summary"].get("tcpstates") or {})
        rows = []
        for name, d in st["summary"].items():
            extra = ""
            if name == "bpftrace":
                extra = f" (READY from BEGIN: cold {ms(d.get('cold_ready_s'))}, warm {ms(d.get('warm_ready_s'))})"
            rows.append([name, ms(d.get("cold_s")), ms(d.get("first_s")), ms(d.get("warm_s")) + extra,
                         ratio(d["cold_s"] / base["cold_s"]) if d.get("cold_s") and base.get("cold_s") else NA,
                         ratio(d["warm_s"] / base["warm_s"]) if d.get("warm_s") and base.get("warm_s") else NA,
                         d.get("error", "")])
        out.append(table(["tool", "cold", "first run", "warm", "cold ÷ tcpstates", "warm ÷ tcpstates", "error"],
                         rows))
        out.append(f"\nMedians of {len(next(iter(st['runs'].values()))['cold'])} rounds, tools alternated. "
                   "Ready = first line on the terminal (a pty): pytracer's and tcpstates' header; bpftrace's "
                   "\"Attaching N probes...\" (printed before it attaches; the READY printed by our script's BEGIN "
                   "probe, once attached, in parentheses). Cold: page cache dropped, and for pytracer a new empty "
                   "root-only `PYTRACER_CACHE_DIR`; warm: the next run, same cache directory; first run: a new "
                   "empty cache directory again, page cache warm (pytracer's cold path without a cold "
                   "interpreter's disk reads).\n")
        for note in st.get("notes", []):
            out.append(f"Note: {note}\n")
    if st.get("phases_warm") or st.get("phases_cold"):
        out.append("### Where pytracer's startup goes\n")
        pc, pw = st.get("phases_cold") or {}, st.get("phases_warm") or {}
        keys = [k for k in list(pc) + [k for k in pw if k not in pc] if k not in ("cold", "close")]
        order = ["import pytracer.cli", "parse args", "import tcpsnoop+syscall",
                 "import loader, maps, program, attach, ringbuf", "import elf/btf/core (cold path)",
                 "TcpSnoop.start total", "prepare total (cache or ELF+BTF+CO-RE)", "cache read", "ELF parse",
                 "vmlinux BTF load", "CO-RE relocation", "cache write", "map create", "program load (verifier)",
                 "tracepoint lookup", "attach", "ring buffer mmap", "record layout (construct)", "header",
                 "script total (after interpreter start)"]
        keys = [k for k in order if k in keys] + [k for k in keys if k not in order]
        rows = [[("  ↳ " if k in INNER else "") + k, f(pc.get(k), "{:.1f}"), f(pw.get(k), "{:.1f}")]
                for k in keys]
        rows.append(["interpreter start (`python -c pass`)", "", f(st.get("python_floor_s") and
                                                                   st["python_floor_s"] * 1000, "{:.1f}")])
        rows.append(["exit (`TcpSnoop.close()`, not part of startup)", f(pc.get("close"), "{:.1f}"),
                     f(pw.get("close"), "{:.1f}")])
        out.append(table(["phase (ms)", "cold", "warm"], rows))
        out.append("\nMeasured by `bench/startup_phases.py`: it replays `python -m pytracer` up to the header in a "
                   "fresh interpreter and times pytracer's own functions by wrapping them from outside "
                   "(↳ = part of the line above it). Indented phases overlap their parent.\n")
        imp = st.get("imports_warm") or {}
        if imp.get("top"):
            out.append(f"`python -X importtime -m pytracer -d 0` (warm): {f(imp.get('total_ms'), '{:.1f}')} ms of "
                       "imports; largest top-level ones: " +
                       ", ".join(f"`{t['module']}` {t['ms']:.1f} ms" for t in imp["top"][:8]) + ".\n")

    ex = st.get("exit")
    if ex:
        out.append("### Exit (SIGINT → process gone)\n")
        out.extend(exit_section(ex))
    ss = s.get("startup_sockets")
    if ss is not None:
        out.extend(startup_sockets_section(ss))

    # 2. memory
    out.append("## 2. Memory (peak RSS)\n")
    rows = []
    idle = (st.get("summary") or {})
    under = {}
    for sec in ("sweep_conn", "sweep_stream"):
        for name, summ in ((s.get(sec) or {}).get("summary") or {}).items():
            under[name] = max(under.get(name, 0), summ.get("maxrss_kb") or 0)
    for wl in ((s.get("overhead") or {}).get("workloads") or {}).values():
        for name, t in wl["tools"].items():
            under[name] = max(under.get(name, 0), t.get("maxrss_kb") or 0)
    for name in sorted(set(idle) | set(under)):
        rows.append([name, mb((idle.get(name) or {}).get("warm_maxrss_kb")), mb(under.get(name) or None)])
    out.append(table(["tool", "started, idle (warm start)", "highest under load (sweeps, overhead runs)"], rows))
    out.append("\nru_maxrss of the tracer process (wait4), in MiB. \"Idle\" is the startup runs "
               "(`pytracer` there is classic mode).\n")

    # 3. capacity
    out.append("## 3. Event capacity\n")
    en = s.get("engine") or {}
    out.append("### (a) Raw engine: synthetic producer → ring buffer → `RingBuffer.read` (decoded tuples)\n")
    if en.get("error"):
        out.append(f"Failed: {en['error']}\n")
    if en.get("summary"):
        rows = [[rate(x["offered_rate"]) if x["offered_rate"] else "flat out", rate(x["producer_rate"]),
                 rate(x["read_rate"]), rate(x["records_per_cpu_s"]), x["lost"],
                 "yes" if x["zero_loss_all_reps"] else "no"] for x in en["summary"]]
        out.append(table(["offered", "produced", "read (wall)", "read per consumer CPU-second", "lost (all reps)",
                          "zero loss in every rep"], rows))
        out.append(f"\nProducer: `loadgen producer` calling getppid() at a paced rate, pinned to CPU 1; consumer: "
                   f"`pytracer.loader.BPFObject` + `RingBuffer.poll/read` with the `probe_event` struct, pinned to "
                   f"CPU 0 ({en.get('ringbuf_mb')} MiB ring buffer, only the object's `getppid_probe` program "
                   f"attached). Medians of {max((r['rep'] for r in en.get('runs', [])), default=0) + 1} reps. "
                   f"Highest rate with zero loss in every rep: **{rate(en.get('max_zero_loss_rate'))}**.\n")
    for key, intro in (
            ("engine_64mb", "Same, with a {mb} MiB ring buffer (room for every record of a run, so a loss here is "
                            "not the consumer falling behind):"),
            ("engine_libbpf", "Same producer, object and {mb} MiB ring buffer, consumed in C by libbpf's "
                              "`ring_buffer__poll` (`bench/rbcheck.c`; producer pinned to CPU 1 and busy-waiting "
                              "between bursts, consumer on CPU 0):"),
            ("engine_64mb_native_store", "Diagnostic: the {mb} MiB runs again, with `pytracer.ringbuf._U64` replaced "
                                         "(in the bench process only) by a native `struct.Struct(\"Q\")`, so the "
                                         "consumer position is published with one 8-byte store instead of "
                                         "`'<Q'`'s byte-by-byte write:")):
        e = s.get(key) or {}
        if not (e.get("summary") or e.get("error")):
            continue
        out.append(intro.format(mb=e.get("ringbuf_mb")) + "\n")
        if e.get("error"):
            out.append(f"Failed: {e['error']}\n")
            continue
        rows = [[rate(x["offered_rate"]) if x["offered_rate"] else "flat out", rate(x["producer_rate"]),
                 rate(x["read_rate"]), rate(x["records_per_cpu_s"]), x["lost"],
                 "yes" if x["zero_loss_all_reps"] else "no"] for x in e["summary"]]
        out.append(table(["offered", "produced", "read (wall)", "read per consumer CPU-second",
                          "lost (all reps)", "zero loss in every rep"], rows))
        out.append("")
    for sec, title in (("sweep_conn", "(b, c, 6) Under a load generator: short connections"),
                       ("sweep_stream", "(b, c, 6) Under a load generator: a stream of small segments")):
        d = s.get(sec) or {}
        out.append(f"### {title}\n")
        if d.get("error"):
            out.append(f"Failed: {d['error']}\n")
        for name, msg in (d.get("failed") or {}).items():
            out.append(f"- {name} failed: `{msg[:300]}`\n")
        for name, msg in (d.get("missing") or {}).items():
            out.append(f"- {name}: {msg}\n")
        if d.get("summary"):
            rows = []
            for name, x in d["summary"].items():
                fl = x.get("first_loss_rate")
                rows.append([name, f(x.get("calibrated_lines_per_unit"), "{:.2f}"),
                             rate(x.get("max_loss_free_events_per_s")), rate(x.get("max_loss_free_rate")),
                             rate(near_zero(d["runs"].get(name, []))),
                             rate(fl) if fl else "none up to the highest rate",
                             NA if fl is None else ("yes" if x.get("first_loss_reported") else "**no (silent)**"),
                             f(x.get("cpu_us_per_event"), "{:.2f}")])
            unit = "connection" if d.get("workload") == "conn" else "kernel segment"
            load = "connections" if d.get("workload") == "conn" else "64-byte writes"
            out.append(table(["tool", f"lines per {unit}", "max loss-free lines/s",
                              f"at {load}/s", "max lines/s with < 0.1% loss", f"first loss at {load}/s",
                              "loss reported?",
                              "tracer CPU µs per line"], rows))
            out.append("\nPer rate (lines/s printed; completeness = lines per unit ÷ the lowest rate's; "
                       "`lost` = what the tool itself reported):\n")
            rows = []
            for name, rs in d["runs"].items():
                for r in rs:
                    rows.append([name, rate(r["offered_rate"]) if r["offered_rate"] else "flat out",
                                 rate(r["achieved_rate"]), rate(r["events_per_s"]),
                                 f(r.get("completeness"), "{:.3f}"), r["lost_reported"],
                                 f(r["cpu_s"], "{:.2f}"), f(r.get("cpu_us_per_event"), "{:.2f}")])
            out.append(table(["tool", "offered", "achieved", "lines/s", "completeness", "lost", "tracer CPU s",
                              "µs/line"], rows))
            out.append("")
    pinned = any((s.get(k) or {}).get("pinned") for k in ("sweep_conn", "sweep_stream"))
    if pinned:
        out.append("Pinned: the tracer runs on CPU 0 and the load generator (client and server) on CPU 1, so these "
                   "tables measure a tracer's capacity on one core (other processes on the machine still compete "
                   "for CPU 0; see Machine). Section 4 shows the unpinned case.\n")
    out.append("Workloads run in a network namespace of their own (so the kernel's TCP counters there count only "
               "this traffic); pytracer runs with `-P PORT` and the peers' lines are counted by port. Output goes "
               "to a file on tmpfs. `stream`: 64-byte TCP_NODELAY writes on 4 connections, lines per kernel "
               "segment (InSegs+OutSegs). A run is loss-free when the tool reported no loss and completeness "
               "≥ 0.99; a shortfall the tool did not report is marked silent.\n")

    # 4. overhead
    out.append("## 4. Overhead on the traced work\n")
    ov = s.get("overhead") or {}
    if ov.get("error"):
        out.append(f"Failed: {ov['error']}\n")
    for name, msg in (ov.get("failed") or {}).items():
        out.append(f"- {name} failed: `{msg[:300]}`\n")
    for name, msg in (ov.get("missing") or {}).items():
        out.append(f"- {name}: {msg}\n")
    for wl, d in (ov.get("workloads") or {}).items():
        out.append(f"### {wl}: untraced {f(d['baseline'], '{:.4g}')} {d['unit']} (median)\n")
        rows = [[name, f(t["median"], "{:.4g}"), ratio(t["ratio"]),
                 " ".join(f(r, "{:.2f}") for r in t["ratios"]), f(t["lines"], "{:.0f}"), t["lost"],
                 f(t["cpu_s"], "{:.2f}"),
                 f(t["cpu_s"] / t["lines"] * 1e6, "{:.1f}") if t.get("cpu_s") and t.get("lines") else NA]
                for name, t in d["tools"].items()]
        out.append(table(["tracer", d["unit"], "ratio to untraced (median)", "per round", "lines",
                          "lost (reported)", "tracer CPU s", "µs/line"], rows))
        out.append("")
    if ov.get("workloads"):
        out.append(f"{ov.get('rounds')} rounds of {ov.get('seconds')} s each: untraced, A, untraced, B, …; each "
                   "traced run is divided by the mean of the untraced runs around it. Tracers trace everything "
                   "(no filter). conn = 8 parallel short loopback connections flat out; bulk = one iperf3 stream "
                   "(loopback, or between two namespaces over veth). Flat-out short connections overload every "
                   "tracer, so `lost` is large there: the ratio is the cost to the traced work.\n")

    # 5. cpu per event
    out.append("## 5. CPU per event\n")
    rows = []
    for sec in ("sweep_conn", "sweep_stream"):
        d = s.get(sec) or {}
        for name, x in (d.get("summary") or {}).items():
            busy = [r.get("cpu_us_per_event") for r in d["runs"].get(name, [])
                    if (r.get("completeness") or 0) >= 0.99 and r["lines"] > 1000]
            rows.append([name, d.get("workload"), f(x.get("cpu_us_per_event"), "{:.2f}"),
                         f(__import__("statistics").median(busy) if busy else None, "{:.2f}")])
    out.append(table(["tool", "workload", "µs per line, loss-free runs > 1000 lines (median)",
                      "µs per line, runs with ≥ 99% of lines (median)"], rows))
    out.append("\nFrom /proc/PID/stat (utime+stime, all threads) between ready and the end of the run, divided by "
               "lines printed. The BPF programs' own cost is paid by the traced processes, not here (see 4).\n")

    # 6. loss
    out.append("## 6. Loss under overload\n")
    rows = []
    for sec in ("sweep_conn", "sweep_stream"):
        d = s.get(sec) or {}
        for name, x in (d.get("summary") or {}).items():
            fl = x.get("first_loss_rate")
            rows.append([name, d.get("workload"), rate(x.get("max_loss_free_events_per_s")),
                         rate(x.get("first_loss_events_per_s_offered")) if fl else "no loss seen",
                         NA if fl is None else ("reported" if x.get("first_loss_reported") else "**silent**"),
                         f(x.get("first_loss_completeness"), "{:.2f}")])
    out.append(table(["tool", "workload", "highest loss-free lines/s", "first loss at (lines/s offered)",
                      "reported?", "completeness there"], rows))
    out.append("\npytracer reports losses as a stderr line (classic) or `{\"event\": \"lost\"}` (JSON); libbpf-tools "
               "print \"lost N events on CPU #n\" (perf buffer); bpftrace prints \"Lost N events\".\n")

    # 7. iterator pass
    it = s.get("iterator")
    if it is not None:
        out.append("## 7. BPF iterator pass (iter/task_file)\n")
        if section_error(it):
            out.append(f"Failed: {section_error(it)}\n")
        rows = []
        for key, label in (("host", "host as it is"), ("sockets", f"+ {it.get('pairs')} connected TCP pairs")):
            r = it.get(key)
            if not r:
                continue

            def med(name):
                return f((r.get(name) or {}).get("median_ms"), "{:.2f} ms")

            rows.append([label, f(r.get("open_files"), "{}"), f(r.get("lines_all"), "{}"), med("all"),
                         med("one_process"), med("one_process_link_info"), med("reread"), med("parse"),
                         f"{med('tcp')} ({f(r.get('tcp_records'), '{}')} sockets)", med("tcp_parse")])
        out.append(table(["scenario", "open files", "socket lines", "run_iterator, all processes",
                          "one process (BPF filter)", "one process (link info, 6.1+)", "re-read on a kept link",
                          "parse text lines", "iter/tcp (own netns)", "parse binary records"], rows))
        out.append(f"\nMedians of {it.get('rounds')} passes, by `bench/iterator.py`: `BPFObject.run_iterator()` "
                   "over tests/bpf/iter_fixture.bpf.c's `socket_fds` (one text line per socket fd; the whole "
                   "file table of every process is walked, with link info only that process's) and "
                   "`tcp_sockets` (one binary record per TCP socket of the reader's network namespace). The "
                   "sockets are held by one helper process in a network namespace made for the run.\n")

    # peers
    out.append("## Peers that cannot run here\n")
    pe = s.get("peers") or {}
    rows = [[k, v.get("package", ""), v["status"], f(v.get("rc"), "{}"), f"`{v['error']}`" if v.get("error") else ""]
            for k, v in pe.items() if not k.startswith("_") and isinstance(v, dict)]
    out.append(table(["tool", "package", "status", "exit", "what it printed"], rows))
    out.append("\nThis kernel has no kprobes (so libbpf-tools' tcpconnect, tcptracer and tcptop cannot attach) and "
               "no kernel headers (bcc compiles its programs at run time from them, so every bcc tool fails). "
               "pytracer, tcpstates, tcplife and bpftrace use tracepoints only.\n")
    errs = [(k, v["error"]) for k, v in s.items() if isinstance(v, dict) and v.get("error")]
    if errs:
        out.append("## Sections that failed\n")
        for k, e in errs:
            out.append(f"- {k}: `{e[:500]}`")
        out.append("")
    return "\n".join(out) + "\n"


def spread_ms(d):
    """A {"median", "min", "max", "n"} of milliseconds as "M ms (min–max)"."""
    if not d:
        return NA
    return f"{d['median']:.1f} ms ({d['min']:.1f}–{d['max']:.1f})"


def exit_section(ex):
    out = []
    if ex.get("error"):
        return [f"Failed: {ex['error']}\n"]
    b = ex.get("breakdown_ms") or {}
    rows = [["**`python -m pytracer`, SIGINT → reaped**",
             f"**{f(ex.get('median_ms'), '{:.1f}')}** ({f(ex.get('min_ms'), '{:.0f}')}–{f(ex.get('max_ms'), '{:.0f}')}, "
             f"{len(ex.get('runs_ms') or [])} runs)"],
            ["SIGINT → its programs gone from the kernel (the releasing child done)",
             f"{f(ex.get('released_median_ms'), '{:.1f}')} (max {f(ex.get('released_max_ms'), '{:.0f}')})"]]
    for k, v in b.items():
        rows.append([("↳ " + k.strip()) if k.startswith("  ") else k, f(v, "{:.1f}")])
    out.append(table(["part", "ms (median)"], rows))
    cl = ex.get("classic_link_close_ms")
    if cl:
        out.append(f"\nThe {cl['count']} classic tracepoint links closed in the process: each took "
                   f"{cl['median_each']:.1f} ms (median; {cl['min_each']:.1f}–{cl['max_each']:.1f}). Per fd (median ms): " +
                   ", ".join(f"{k} {v:.2f}" for k, v in (ex.get("per_fd_ms") or {}).items() if v >= 1) + ".")
    ks = ex.get("kernel_stacks") or {}
    if ks.get("top"):
        out.append(f"\nKernel stack of the exiting process, sampled every 0.5 ms during one more exit "
                   f"({f(ks.get('exit_ms'), '{:.0f}')} ms, {ks.get('samples')} samples):\n")
        out.append(table(["share", "stack (innermost first)"],
                         [[f(t["share"] * 100, "{:.0f}%"), f"`{t['stack']}`"] for t in ks["top"]]))
    out.append("\nMeasured by `bench/startup.py` (exit_times): pytracer started with a warm cache, idle for 0.3 s "
               "once it waits for events, then SIGINT; time from kill() to wait4() returning, from outside, and "
               "until none of its programs is left in the kernel: detaching from the syscall tracepoints waits for "
               "RCU-tasks-trace grace periods (Linux 6.13+), which a short-lived child of pytracer's does after it "
               "has exited (`attach.release_in_background`). "
               "The breakdown is the median of as many runs alternated with those, of `bench/exit_phases.py` "
               "(pytracer's own main, with `BPFObject.close()` and each fd it closes timed from outside; "
               "CLOCK_MONOTONIC timestamps shared with the parent). Indented rows are parts of "
               "`BPFObject.close`.\n")
    return out


SCENARIO_LABELS = {"host": "host as it is", "netns": "+ {n:,} sockets in another netns",
                   "hostns": "+ {n:,} sockets in the host netns"}


def startup_sockets_section(ss):
    n = 2 * (ss.get("pairs") or 0)
    out = [f"### Start-up with {n:,} open sockets\n"]
    if section_error(ss):
        out.append(f"Failed: {section_error(ss)}\n")
    summ = ss.get("summary") or {}
    if not summ:
        return out
    names = [x for x in (ss.get("scenarios") or summ) if x in summ]
    rows = []
    for name in names:
        d = summ[name]
        rows.append([SCENARIO_LABELS.get(name, name).format(n=n), f(d.get("open_files"), "{:.0f}"),
                     spread_ms(d.get("exec_ms")), spread_ms(d.get("start_seed_ms")), spread_ms(d.get("start_none_ms")),
                     f(d.get("start_diff_ms"), "{:+.1f} ms"), f(d.get("pass_ms"), "{:.1f} ms")])
    out.append(table(["scenario", "open files", "exec → header (warm)", "TcpSnoop.start",
                      "start without the pass", "difference", "the pass (both run_iterator calls)"], rows))
    out.append("\nWhere the pass goes, per iterator (ms; medians):\n")
    rows = []
    for name in names:
        for prog, what in (("seed_owners", "iter/task_file"), ("seed_sockets", "iter/tcp")):
            e = (summ[name].get("iterators") or {}).get(prog) or {}
            rows.append([SCENARIO_LABELS.get(name, name).format(n=n), f"`{prog}` ({what})",
                         spread_ms(e.get("first_ms")), f((e.get("rerun_ms") or {}).get("median"), "{:.1f}"),
                         f(e.get("visited"), "{:.0f}"), f(e.get("stats_pass_ms"), "{:.1f}"),
                         f(e.get("bpf_run_ms"), "{:.1f}"), f(e.get("bpf_rerun_ms"), "{:.1f}")])
    out.append(table(["scenario", "iterator", "pass in start()", "same pass again (all registered)",
                      "objects visited", "pass in start(), statistics on", "BPF program time in it",
                      "BPF program time, again"], rows))
    out.append(f"\nMedians (min–max) of {ss.get('rounds')} rounds × {ss.get('runs')} runs, scenarios alternated "
               "(a round visits each, rotating the order), by `bench/startup_sockets.py`. The sockets are "
               f"{ss.get('pairs'):,} connected loopback pairs held by one process, in a network namespace made "
               "for the run or in the host's; `iter/task_file` walks every process's descriptors whatever their "
               "namespace, `iter/tcp` only registers the sockets of pytracer's namespace (the kernel still walks "
               f"the established-hash table they share: tcp_child_ehash_entries = "
               f"{ss.get('tcp_child_ehash_entries', '?')}). \"Without the pass\": a child with "
               "`toolkit.sockowner.SEED_ITERATORS = ()`; the pass is each `run_iterator()` call inside start(), timed by "
               "wrapping it; \"again\": the same pass right after (every socket registered already: the walk "
               "and a lookup per socket, no inserts); objects visited and the BPF programs' own run time from "
               "the kernel's BPF statistics (BPF_ENABLE_STATS, on only in a separate child per visit; the rest "
               "of a pass is the kernel's walk and the read() around it).\n")
    prof = ss.get("profile") or {}
    rows = []
    for name in names:
        pr = prof.get(name) or {}
        if pr.get("error"):
            rows.append([SCENARIO_LABELS.get(name, name).format(n=n), "", "failed: " + pr["error"], ""])
            continue
        for prog in ("seed_owners", "seed_sockets"):
            e = pr.get(prog)
            if e:
                rows.append([SCENARIO_LABELS.get(name, name).format(n=n), f"`{prog}`", f(e.get("ms"), "{:.1f}"),
                             ", ".join(f"{k} {v * 100:.0f}%" for k, v in e["parts"].items() if v >= 0.01)])
    if rows:
        out.append("Kernel profile of the pass (`perf record -g` at "
                   f"{next((p.get('hz') for p in prof.values() if p.get('hz')), '?')} Hz of one more seed child "
                   "per scenario, after the rounds: its samples in the iterator reads, `bpf_seq_read`, both passes "
                   "— in start() and again — together; a sample counts in the first part its stack holds, in "
                   "this order: map inserts, lookups, file_to_tcp_sk, other probe reads, program code, walks):\n")
        out.append(table(["scenario", "iterator", "ms sampled", "where"], rows))
        out.append("")
    return out


INNER = {"cache read", "ELF parse", "vmlinux BTF load", "CO-RE relocation", "cache write", "map create",
         "program load (verifier)", "tracepoint lookup", "attach", "ring buffer mmap", "record layout (construct)",
         "prepare total (cache or ELF+BTF+CO-RE)"}


def readme_paragraph(n):
    def r(x):
        return ratio(x)
    parts = []
    if n.get("warm") is not None:
        parts.append(f"pytracer is ready {ms(n['warm'])} after exec with a warm cache "
                     f"({r(n.get('warm_ratio'))} libbpf-tools' tcpstates, {ms(n.get('ts_warm'))}), "
                     f"{ms(n.get('first'))} on a first run (empty cache) and {ms(n.get('cold'))} with the page "
                     f"cache dropped too")
    if n.get("rss_idle") is not None:
        parts.append(f"uses {mb(n['rss_idle'])} of memory at rest ({mb(n.get('rss_peak'))} at most under load)")
    if n.get("engine") is not None or n.get("engine_cpu") is not None:
        ref = max(n.get("engine_64") or 0, n.get("engine_libbpf") or 0)
        if ref <= (n.get("engine") or 0):
            t = (f"its engine decodes {rate(n.get('engine_cpu'))} ring-buffer records per CPU-second and reads "
                 f"{rate(n.get('engine'))} with zero loss")
        else:
            t = (f"its engine decodes {rate(n.get('engine_cpu'))} ring-buffer records per CPU-second but reports a "
                 f"few lost records per second above {rate(n.get('engine'))} with its default 8 MiB ring")
        if ref > (n.get("engine") or 0):
            t += (f" (none with a 64 MiB ring up to {rate(n.get('engine_64'))}, none with libbpf's C consumer "
                  f"up to {rate(n.get('engine_libbpf'))})")
        parts.append(t)
    if n.get("classic") is not None:
        parts.append(f"and `python -m pytracer` prints up to {rate(n['classic'])} lines without loss "
                     f"({rate(n.get('classic_nz'))} with under 0.1% reported loss)")
    text = "On a 2-core VM (Linux 6.18), " + ", ".join(parts) + "." if parts else "No results."
    if n.get("nodata_ratio") is not None:
        text += (f" Under a flat-out short-connection load, `--no-data` keeps {r(n['nodata_ratio'])} of the untraced "
                 f"connection rate (tcplife: {r(n.get('tcplife_ratio'))})")
        if n.get("bulk-lo") is not None:
            text += (f", and per-segment tracing keeps {r(n['bulk-lo'])} of bulk loopback throughput"
                     f" ({r(n.get('bulk-veth'))} over veth)")
        text += "."
    if n.get("silent"):
        text += " Under overload some loss went unreported (" + ", ".join(n["silent"]) + ")."
    else:
        text += " Under overload it reports every loss it has."
    text += " Numbers: BENCHMARKS.md (`make bench`)."
    return text
