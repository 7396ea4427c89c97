"""Overhead on the traced work: the same workload with no tracer and with each tracer, alternating
(no tracer, A, no tracer, B, ..., no tracer) in every round, tracer order rotated between rounds.

Workloads:
  conn       short loopback connections, 8 in parallel, flat out, for S seconds (connections/s)
  bulk-lo    one iperf3 TCP stream over loopback (Gbit/s)
  bulk-veth  one iperf3 TCP stream between two namespaces over a veth pair (Gbit/s)

Each tracer run's ratio = its result / the mean of the no-tracer runs right before and after it; reported
are the medians of those ratios over rounds, with the tracer's CPU time, lines and peak RSS. Tracers trace
everything (no filter), output to a file on tmpfs.

    python bench/overhead.py [--workloads conn,bulk-lo,bulk-veth] [--rounds N] [--seconds S] [--tools a,b]
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TOOLS = "pytracer --no-data,pytracer,pytracer -w,tcpdump -w,tcplife,tcpstates,bpftrace"
WORKLOADS = "conn,bulk-lo,bulk-veth"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default=WORKLOADS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--tools", default=TOOLS)
    a = ap.parse_args(argv)
    common.need_root()
    all_tools = common.tools()
    names = [n for n in a.tools.split(",") if n]
    workloads = [w for w in a.workloads.split(",") if w]
    res = {"rounds": a.rounds, "seconds": a.seconds, "loadgen": common.loadgen_kind(), "missing": {},
           "failed": {}, "workloads": {}}
    for n in names:
        if not all_tools[n].available():
            res["missing"][n] = "not installed"
    if any(w.startswith("bulk") for w in workloads) and not shutil.which("iperf3"):
        res["missing"]["iperf3"] = "not installed: bulk workloads skipped"
        workloads = [w for w in workloads if not w.startswith("bulk")]
    live = [n for n in names if n not in res["missing"]]
    with common.Namespaces(veth="bulk-veth" in workloads) as ns:
        for wl in workloads:
            servers = []
            try:
                if wl == "conn":
                    servers.append(common.Server(ns.lo, "server"))

                    def work():
                        d = common.short_conns(ns.lo, a.seconds, 0)
                        return {"value": d["rate"], "unit": "connections/s", "errors": d["errors"]}
                elif wl == "bulk-lo":
                    servers.append(common.IperfServer(ns.lo))

                    def work():
                        return {"value": common.iperf3(ns.lo, "127.0.0.1", a.seconds), "unit": "Gbit/s"}
                else:
                    servers.append(common.IperfServer(ns.a))

                    def work():
                        return {"value": common.iperf3(ns.b, ns.addr_a, a.seconds), "unit": "Gbit/s"}
                res["workloads"][wl] = run_workload(wl, work, live, all_tools, a.rounds, res["failed"])
            finally:
                for s in servers:
                    s.close()
    common.emit(res)
    return 0


def run_workload(wl, work, names, all_tools, rounds, failed):
    base, runs = [], {n: [] for n in names}
    seq = []
    for r in range(rounds):
        order = names[r % max(1, len(names)):] + names[:r % max(1, len(names))]
        for name in order:
            if name in failed:
                continue
            if not seq or seq[-1][0] is not None:
                w, _ = common.traced(None, work)
                base.append(w["value"])
                seq.append((None, w["value"]))
            try:
                w, t = common.traced(all_tools[name], work)
            except common.ToolFailed as e:
                failed[name] = e.msg
                common.log(f"overhead {wl}: {name} failed: {e.msg}")
                continue
            seq.append((name, w["value"]))
            runs[name].append({"value": w["value"], "cpu_s": t["cpu_s"], "lines": t["lines"],
                               "lost": t["lost"], "maxrss_kb": t["maxrss_kb"], "exit_s": t["exit_s"],
                               "forced": t["forced"], "idx": len(seq) - 1})
            common.log(f"overhead {wl} round {r + 1}: {name} {w['value']:.4g} {w.get('unit', '')} "
                       f"(baseline {base[-1]:.4g}) lines {t['lines']} lost {t['lost']} cpu {t['cpu_s']}")
        w, _ = common.traced(None, work)
        base.append(w["value"])
        seq.append((None, w["value"]))
    # ratio of each run to the mean of its neighbouring baselines
    for name, rs in runs.items():
        for run in rs:
            i = run["idx"]
            before = next((v for n, v in reversed(seq[:i]) if n is None), None)
            after = next((v for n, v in seq[i + 1:] if n is None), None)
            nb = [v for v in (before, after) if v]
            run["ratio"] = run["value"] / (sum(nb) / len(nb)) if nb else None
    out = {"unit": "connections/s" if wl == "conn" else "Gbit/s", "baseline": common.median(base),
           "baseline_runs": base, "tools": {}}
    for name, rs in runs.items():
        if not rs:
            continue
        out["tools"][name] = {
            "median": common.median([r["value"] for r in rs]),
            "ratio": common.median([r["ratio"] for r in rs]),
            "ratios": [r["ratio"] for r in rs],
            "cpu_s": common.median([r["cpu_s"] for r in rs]),
            "lines": common.median([r["lines"] for r in rs]),
            "lost": sum(r["lost"] for r in rs),
            "maxrss_kb": max(r["maxrss_kb"] or 0 for r in rs),
            "exit_s": common.median([r["exit_s"] for r in rs]),
            "forced": [r["forced"] for r in rs if r["forced"]],
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
