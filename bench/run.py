"""pytracer benchmarks against its peers, in one run: `python bench/run.py [--quick] [--out BENCHMARKS.md]`.

Runs every bench script (each its own process, printing JSON), keeps the raw results in
bench/results/latest.json and writes the report (BENCHMARKS.md by default). Needs root. `make bench` installs
the peers first (bench/setup.sh). A section that fails is reported as failed, with its error; the others run.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import report  # noqa: E402

FULL = {
    "peers": ["peers_status.py", "--seconds", "6"],
    "startup": ["startup.py", "--rounds", "5"],
    "engine": ["engine.py", "--reps", "3", "--seconds", "1",
               "--rates", "100000,250000,500000,1000000,1500000,0"],
    # the same with a ring buffer the run cannot fill (64 MiB = 1.6 M records): any loss left is not capacity
    "engine_64mb": ["engine.py", "--reps", "3", "--seconds", "1", "--rates", "250000,500000,1000000",
                    "--ringbuf-mb", "64"],
    # the same producer, object and 8 MiB ring, consumed by libbpf in C: whose losses are they?
    "engine_libbpf": ["engine.py", "--reps", "3", "--seconds", "1", "--rates", "250000,500000,1000000",
                      "--consumer", "libbpf"],
    "sweep_conn": ["sweep.py", "--pin", "--workload", "conn", "--seconds", "2", "--rates", "1000,5000,10000,15000,0"],
    "sweep_stream": ["sweep.py", "--pin", "--workload", "stream", "--seconds", "2",
                     "--rates", "20000,50000,100000,150000,200000,0"],
    "overhead": ["overhead.py", "--rounds", "3", "--seconds", "2"],
    "iterator": ["iterator.py", "--rounds", "20", "--pairs", "5000"],
    "startup_sockets": ["startup_sockets.py", "--rounds", "5", "--runs", "3", "--pairs", "5000", "--profile"],
}
QUICK = {
    "peers": ["peers_status.py", "--seconds", "3", "--only", "tcpconnect,tcpstates-bpfcc"],
    "startup": ["startup.py", "--rounds", "2", "--tools", "pytracer,tcpstates,bpftrace", "--exit-runs", "3"],
    "engine": ["engine.py", "--reps", "1", "--seconds", "0.5", "--rates", "250000,1000000,0"],
    "sweep_conn": ["sweep.py", "--pin", "--workload", "conn", "--seconds", "1", "--rates", "2000,0",
                   "--tools", "pytracer,pytracer --no-data,tcplife,tcpstates"],
    "sweep_stream": ["sweep.py", "--pin", "--workload", "stream", "--seconds", "1", "--rates", "50000,0",
                     "--tools", "pytracer"],
    "overhead": ["overhead.py", "--rounds", "1", "--seconds", "1", "--workloads", "conn",
                 "--tools", "pytracer --no-data,pytracer,tcplife"],
    "iterator": ["iterator.py", "--rounds", "5", "--pairs", "5000"],
    "startup_sockets": ["startup_sockets.py", "--rounds", "1", "--runs", "2", "--pairs", "5000"],
}


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:3]
    except OSError:
        return None


def busy_processes(n=5):
    """The biggest CPU users other than us right now (the machine is shared)."""
    r = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True)
    out = []
    for ln in r.stdout.splitlines()[:n]:
        parts = ln.split(None, 1)
        if len(parts) == 2 and float(parts[0]) >= 5:
            out.append(f"{parts[1]} {parts[0]}%")
    return out


def run_section(name, argv):
    t0 = time.monotonic()
    common.log(f"== {name}: {' '.join(argv)}")
    p = subprocess.run([common.PY, os.path.join(common.HERE, argv[0])] + argv[1:], stdout=subprocess.PIPE,
                       text=True)
    try:
        data = json.loads(p.stdout)
    except ValueError:
        data = {"error": f"exit {p.returncode}, no JSON result: {p.stdout[-500:]}"}
    if p.returncode and "error" not in data:
        data["error"] = f"exit status {p.returncode}"
    data["_seconds"] = round(time.monotonic() - t0, 1)
    return data


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smaller run (under a minute)")
    ap.add_argument("--out", default=os.path.join(common.ROOT, "BENCHMARKS.md"))
    ap.add_argument("--sections", help="comma-separated subset of: " + ",".join(FULL))
    ap.add_argument("--render-only", metavar="JSON", help="only render this results file")
    ap.add_argument("--json", default=os.path.join(common.HERE, "results", "latest.json"),
                    help="where to keep the raw results")
    a = ap.parse_args(argv)
    if a.render_only:
        with open(a.render_only) as f:
            results = json.load(f)
    else:
        common.need_root()
        plan = QUICK if a.quick else FULL
        if a.sections:
            plan = {k: v for k, v in plan.items() if k in a.sections.split(",")}
        results = {"mode": "quick" if a.quick else "full", "machine": common.machine(),
                   "load_before": loadavg(), "busy_before": busy_processes(), "sections": {}}
        t0 = time.monotonic()
        for name, args in plan.items():
            results["sections"][name] = run_section(name, args)
        results["load_after"] = loadavg()
        results["busy_after"] = busy_processes()
        results["total_s"] = round(time.monotonic() - t0, 1)
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    text = report.render(results)
    with open(a.out, "w") as f:
        f.write(text)
    common.log(f"wrote {a.out} ({results.get('total_s')} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
