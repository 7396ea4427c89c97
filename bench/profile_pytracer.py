"""Where `python -m pytracer` spends its time per line: run it under cProfile while the stream workload
offers a fixed rate of segments, then print the functions with the most own time (JSON on stdout, a pstats
table on stderr). cProfile slows Python code down, so use the shares, not the absolute times.

    python bench/profile_pytracer.py [--rate 50000] [--seconds 4] [--mode classic|json|no-data]
"""
import argparse
import io
import os
import pstats
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=50000)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--mode", choices=("classic", "json", "no-data"), default="classic")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    common.need_root()
    wd = common.workdir()
    prof = os.path.join(wd, "prof.out")
    extra = {"classic": [], "json": ["-j"], "no-data": ["--no-data"]}[a.mode]
    wl = "conn" if a.mode == "no-data" else "stream"
    port = common.PORT if wl == "conn" else common.SINK_PORT
    argv_ = [common.PY, "-m", "cProfile", "-o", prof, "-m", "pytracer", "-P", str(port),
             "-d", str(a.seconds + 1.5)] + extra
    tool = common.Tool("pytracer (cProfile)", argv_, 0 if a.mode == "json" else 1, common.pytracer_env())
    try:
        with common.Namespaces() as ns:
            srv = common.Server(ns.lo, "server" if wl == "conn" else "sink", port=port)
            try:
                run = common.Running(tool, wd)
                if wl == "conn":
                    w = common.short_conns(ns.lo, a.seconds, a.rate, port=port)
                else:
                    w = common.stream(ns.lo, a.seconds, a.rate, port=port)
                while run.p.poll() is None:      # -d ends it; cProfile then writes its file
                    time.sleep(0.1)
                out = run.output(port)
            finally:
                srv.close()
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("tottime").print_stats(a.top)
        print(s.getvalue(), file=sys.stderr)
        total = sum(v[2] for v in st.stats.values())
        rows = sorted(((k, v) for k, v in st.stats.items()), key=lambda kv: -kv[1][2])[:a.top]
        common.emit({
            "mode": a.mode, "workload": wl, "offered_rate": a.rate, "achieved_rate": w["rate"],
            "lines": out["lines"], "lost": out["lost"], "total_own_s": total,
            "top": [{"function": f"{os.path.relpath(k[0], common.ROOT) if k[0].startswith(common.ROOT) else k[0]}"
                                 f":{k[1]}({k[2]})", "calls": v[1], "own_s": v[2], "share": v[2] / total,
                     "cumulative_s": v[3]} for k, v in rows]})
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
