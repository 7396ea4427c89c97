#!/usr/bin/env python3
"""What the syscall-entry fallback (kernels without sock:sock_{send,recv}_length, Linux < 6.3) costs each
system call of every process: a C loop times getppid() and a 1-byte write() to /dev/null, untraced, with
tcpsnoop loaded as this kernel would load it, and with tcpsnoop forced onto the fallback (its tp_btf
sys_enter program), and with tcptop forced onto its fallback (sys_enter and sys_exit programs that count the
bytes of each read/write). Rounds alternate the four; medians of ns per call and the extra ns per call are printed as
JSON.

    sudo .venv/bin/python bench/fallback_cost.py [--calls N] [--rounds R]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    int fd = open("/dev/null", O_WRONLY);
    double t0 = now();
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    double t1 = now();
    for (long i = 0; i < n; i++) if (write(fd, "x", 1) != 1) return 1;
    double t2 = now();
    printf("%.2f %.2f\n", (t1 - t0) / n, (t2 - t1) / n);
    return 0;
}
"""


def build(tmp):
    src, exe = os.path.join(tmp, "loop.c"), os.path.join(tmp, "loop")
    with open(src, "w") as f:
        f.write(LOOP_C)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


def measure(exe, calls):
    out = subprocess.run([exe, str(calls)], check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    from pytracer import tcpsnoop
    from pytracer.tcpsnoop import TcpSnoop

    native = tcpsnoop.have_sock_length_tracepoints()
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        res = {"untraced": [], "tcpsnoop": [], "tcpsnoop_fallback": [], "tcptop_fallback": []}
        def untraced():
            res["untraced"].append(measure(exe, a.calls))

        def traced():
            with TcpSnoop(use_cache=False):
                res["tcpsnoop"].append(measure(exe, a.calls))

        def fallback():
            real = tcpsnoop.have_sock_length_tracepoints
            tcpsnoop.have_sock_length_tracepoints = lambda: False
            try:
                with TcpSnoop(use_cache=False) as s:
                    assert any(p.spec.attach_target == "sys_enter" for p in s.obj.programs.values())
                    res["tcpsnoop_fallback"].append(measure(exe, a.calls))
            finally:
                tcpsnoop.have_sock_length_tracepoints = real

        def top_fallback():
            from pytracer.toolkit import sockowner
            from pytracer.tools.tcptop import cli as top

            real = sockowner.have_sock_length_tracepoints
            sockowner.have_sock_length_tracepoints = lambda: False
            t = top.make_tracer(top.parse_args(["10"]))
            try:
                t.start()
                assert {p.spec.attach_target for p in t.obj.programs.values()} >= {"sys_enter", "sys_exit"}
                res["tcptop_fallback"].append(measure(exe, a.calls))
            finally:
                t.close()
                sockowner.have_sock_length_tracepoints = real

        order = [untraced, traced, fallback, top_fallback]
        for r in range(a.rounds):       # each round in another order: no configuration always goes first
            for fn in order[r % 4:] + order[:r % 4]:
                fn()
    out = {"kernel": os.uname().release, "sock_length_tracepoints": native, "calls": a.calls,
           "rounds": a.rounds}
    for k, v in res.items():
        out[k] = {"getppid_ns": statistics.median(x[0] for x in v),
                  "write_devnull_ns": statistics.median(x[1] for x in v)}
    # The machine is shared: besides the medians, the median of each round's own difference (the four
    # configurations run back to back in a round) and the difference of the fastest runs.
    for k in ("tcpsnoop", "tcpsnoop_fallback", "tcptop_fallback"):
        for i, name in ((0, "getppid"), (1, "write")):
            paired = [b[i] - u[i] for b, u in zip(res[k], res["untraced"])]
            out[k][f"{name}_extra_ns_paired_median"] = round(statistics.median(paired), 1)
            out[k][f"{name}_extra_ns_of_fastest"] = round(min(x[i] for x in res[k]) -
                                                          min(x[i] for x in res["untraced"]), 1)
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
