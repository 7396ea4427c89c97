"""Event capacity, loss under overload, CPU per event: every tracer under a rising, paced load.

Workloads (in a network namespace of our own, so the kernel's TCP counters there count only our traffic):
  conn    short loopback connections (connect, 64 B each way, close) at a paced rate of connections/s
  stream  64-byte TCP_NODELAY writes over 4 loopback connections at a paced rate of writes/s
          (per-segment pytracer only: the peers trace state changes, not segments)

For each tool and offered rate: lines printed (ours only: pytracer runs with -P PORT, peers' lines are
counted by port), losses the tool reported, the tracer's CPU time, the kernel's segment count (InSegs +
OutSegs in the namespace). The lowest rate calibrates lines per unit (per connection, or per kernel segment)
for each tool; completeness at a rate = lines per unit / calibrated lines per unit. A run is loss-free when
the tool reported no loss and completeness >= 0.99; a loss the tool did not report is "silent".
Tools alternate within every rate (ABAB), rates rise.

    python bench/sweep.py [--workload conn|stream] [--rates ...] [--seconds S] [--tools a,b]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

DEFAULTS = {
    "conn": {"rates": "1000,4000,8000,12000,16000,0",
             "tools": "pytracer,pytracer -j,pytracer --no-data,pytracer tcplife,tcplife,pytracer tcpstates,tcpstates,"
                       "bpftrace"},
    "stream": {"rates": "10000,50000,100000,150000,200000,0", "tools": "pytracer,pytracer -j"},
}
COMPLETE = 0.99


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=sorted(DEFAULTS), default="conn")
    ap.add_argument("--rates")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--tools")
    ap.add_argument("--conc", type=int, default=8)
    ap.add_argument("--pin", action="store_true",
                    help="tracer on CPU 0, load generator (client and server) on CPU 1: the tracer's own capacity "
                         "on one core, instead of its share of a machine the load generator saturates")
    a = ap.parse_args(argv)
    common.need_root()
    wl = a.workload
    rates = [int(float(r)) for r in (a.rates or DEFAULTS[wl]["rates"]).split(",")]
    names = [n for n in (a.tools or DEFAULTS[wl]["tools"]).split(",") if n]
    port = common.PORT if wl == "conn" else common.SINK_PORT
    all_tools = common.tools(port=port)
    pin_tracer = pin_load = None
    if a.pin and (os.cpu_count() or 1) >= 2:
        pin_tracer, pin_load = [0], [1]
        for t in all_tools.values():
            t.cpus = pin_tracer
    res = {"workload": wl, "seconds": a.seconds, "rates": rates, "loadgen": common.loadgen_kind(),
           "pinned": pin_tracer is not None, "missing": {}, "failed": {}, "runs": {n: [] for n in names}}
    for n in names:
        if not all_tools[n].available():
            res["missing"][n] = "not installed"
    live = [n for n in names if n not in res["missing"]]
    with common.Namespaces() as ns:
        srv = common.Server(ns.lo, "server" if wl == "conn" else "sink", port=port, cpus=pin_load)
        try:
            for i, rate in enumerate(rates):
                order = live[i % max(1, len(live)):] + live[:i % max(1, len(live))]
                for name in order:
                    if name in res["failed"]:
                        continue
                    tool = all_tools[name]
                    seg0 = common.Namespaces.tcp_segments(ns.lo)

                    def work():
                        if wl == "conn":
                            return common.short_conns(ns.lo, a.seconds, rate, conc=a.conc, port=port, cpus=pin_load)
                        return common.stream(ns.lo, a.seconds, rate, port=port, cpus=pin_load)
                    try:
                        w, t = common.traced(tool, work, port=port, settle=0.5)
                    except common.ToolFailed as e:
                        res["failed"][name] = e.msg
                        common.log(f"sweep {wl}: {name} failed: {e.msg}")
                        continue
                    segs = common.Namespaces.tcp_segments(ns.lo) - seg0
                    units = w["count"] if wl == "conn" else segs
                    run = {"offered_rate": rate, "achieved_rate": w["rate"], "units": units, "segments": segs,
                           "seconds": w["seconds"], "lines": t["port_lines"], "all_lines": t["lines"],
                           "lost_reported": t["lost"], "cpu_s": t["cpu_s"], "maxrss_kb": t["maxrss_kb"],
                           "events_per_s": t["port_lines"] / w["seconds"],
                           "lines_per_unit": t["port_lines"] / units if units else None}
                    res["runs"][name].append(run)
                    common.log(f"sweep {wl} {name} @ {rate or 'max'}: {w['rate']:.0f}/s -> {run['events_per_s']:.0f}"
                               f" lines/s, per unit {run['lines_per_unit']}, lost {t['lost']}, cpu {t['cpu_s']}")
        finally:
            srv.close()
    res["summary"] = {n: summarize(rs) for n, rs in res["runs"].items() if rs}
    common.emit(res)
    return 0


def summarize(runs):
    calib = runs[0]["lines_per_unit"]
    best = None
    first_loss = None
    for r in runs:
        r["completeness"] = (r["lines_per_unit"] / calib) if calib and r["lines_per_unit"] is not None else None
        r["loss_free"] = r["lost_reported"] == 0 and r["completeness"] is not None and r["completeness"] >= COMPLETE
        r["silent_loss"] = r["lost_reported"] == 0 and r["completeness"] is not None and \
            r["completeness"] < COMPLETE
        r["cpu_us_per_event"] = (r["cpu_s"] / r["lines"] * 1e6) if r["cpu_s"] is not None and r["lines"] else None
        if r["loss_free"]:
            if best is None or r["events_per_s"] > best["events_per_s"]:
                best = r
        elif first_loss is None:
            first_loss = r
    busy = [r for r in runs if r["loss_free"] and r["lines"] > 1000]
    return {
        "calibrated_lines_per_unit": calib,
        "max_loss_free_events_per_s": best["events_per_s"] if best else None,
        "max_loss_free_rate": best["achieved_rate"] if best else None,
        "first_loss_events_per_s_offered": (first_loss["events_per_s"] / first_loss["completeness"]
                                            if first_loss and first_loss["completeness"] else None),
        "first_loss_rate": first_loss["achieved_rate"] if first_loss else None,
        "first_loss_reported": (first_loss["lost_reported"] > 0) if first_loss else None,
        "first_loss_completeness": first_loss["completeness"] if first_loss else None,
        "cpu_us_per_event": common.median([r["cpu_us_per_event"] for r in busy]),
        "maxrss_kb": max((r["maxrss_kb"] or 0) for r in runs),
    }


if __name__ == "__main__":
    sys.exit(main())
