"""Startup: exec -> ready, cold and warm, for pytracer and its peers (alternating tools in every round),
plus where pytracer's startup time goes (imports, and each phase of TcpSnoop.start()).

Ready = the first header line on the terminal (tcpstates, tcplife, pytracer classic); for bpftrace both its
"Attaching N probes..." line (printed before it attaches) and the READY line of our script's BEGIN probe
(printed once every probe is attached). Stdout is a pty, as for a person at a terminal, so C stdio is
line-buffered. Cold = page cache dropped (and for pytracer an empty PYTRACER_CACHE_DIR); warm = the run
straight after, with the same cache directory; first = a first run (a new empty PYTRACER_CACHE_DIR) with the
page cache warm, i.e. pytracer's own cold path without the disk reads of a cold interpreter.

Exit (pytracer only, --exit-runs, default 7): `python -m pytracer` started (warm cache), idle once it waits
for events, then SIGINT; the time from the kill() to the process reaped (wait4), measured from outside.
Alternated with as many runs of bench/exit_phases.py (pytracer's main with its closing functions timed from
outside), which say where that time goes: the signal, the drain before closing, each fd closed (perf events
of the classic tracepoints, BPF links, ...), ring buffers, programs, maps, and the interpreter's teardown.

    python bench/startup.py [--rounds N] [--tools a,b] [--exit-runs N]     prints JSON
"""
import argparse
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from pytracer import inventory  # noqa: E402
from support import procview  # noqa: E402

DEFAULT_TOOLS = ("pytracer", "tcpstates", "tcplife", "bpftrace")


def run_once(tool, timeout=60.0):
    """Spawn `tool` on a pty; return times (s) to its first line (and READY), its peak RSS and status."""
    master, slave = pty.openpty()
    t0 = time.perf_counter()
    p = subprocess.Popen(tool.argv, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         env=tool.env, start_new_session=True, preexec_fn=common.default_signals)
    os.close(slave)
    buf = b""
    first = ready = None
    want_ready = tool.name == "bpftrace"
    end = t0 + timeout
    try:
        while time.perf_counter() < end:
            r, _, _ = select.select([master], [], [], 0.05)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                now = time.perf_counter()
                if first is None and b"\n" in buf:
                    first = now - t0
                if want_ready and ready is None and b"READY" in buf:
                    ready = now - t0
                if first is not None and (not want_ready or ready is not None):
                    break
            elif p.poll() is not None:
                break
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGINT)
        # keep the pty drained until it exits
        deadline = time.monotonic() + 15
        status = ru = None
        while time.monotonic() < deadline:
            pid, st, ru_ = os.wait4(p.pid, os.WNOHANG)
            if pid:
                status, ru = st, ru_
                break
            r, _, _ = select.select([master], [], [], 0.02)
            if r:
                try:
                    os.read(master, 65536)
                except OSError:
                    pass
        if status is None:
            os.killpg(p.pid, signal.SIGKILL)
            _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode("utf-8", "replace")
        p.stderr.close()
        os.close(master)
    first_line = buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    res = {"first_line_s": first, "first_line": first_line[:80], "maxrss_kb": ru.ru_maxrss, "rc": p.returncode}
    if want_ready:
        res["ready_s"] = ready
    if first is None:
        res["error"] = err.strip()[-300:]
    return res


def rounds(names, n, drop):
    results = {name: {"cold": [], "warm": [], "first": []} for name in names}
    notes = []
    if not drop:
        notes.append("could not drop the page cache: 'cold' is only cold for pytracer's cache")
    for r in range(n):
        order = names[r % len(names):] + names[:r % len(names)]    # rotate: ABAB across rounds
        for name in order:
            cache_dir = common.private_cache_dir()
            try:
                tool = common.tools(cache_dir=cache_dir)[name]
                if drop:
                    common.drop_caches()
                results[name]["cold"].append(run_once(tool))
                results[name]["warm"].append(run_once(tool))
            finally:
                shutil.rmtree(cache_dir, ignore_errors=True)
            cache_dir = common.private_cache_dir()
            try:
                results[name]["first"].append(run_once(common.tools(cache_dir=cache_dir)[name]))
            finally:
                shutil.rmtree(cache_dir, ignore_errors=True)
            common.log(f"startup round {r + 1}/{n} {name}: cold {results[name]['cold'][-1].get('first_line_s')}"
                       f" warm {results[name]['warm'][-1].get('first_line_s')}"
                       f" first {results[name]['first'][-1].get('first_line_s')}")
    summary = {}
    for name, d in results.items():
        s = {}
        for kind in ("cold", "warm", "first"):
            runs = d[kind]
            s[kind + "_s"] = common.median([x["first_line_s"] for x in runs])
            if name == "bpftrace":
                s[kind + "_ready_s"] = common.median([x.get("ready_s") for x in runs])
            s[kind + "_maxrss_kb"] = common.median([x["maxrss_kb"] for x in runs])
            errs = [x["error"] for x in runs if "error" in x]
            if errs:
                s["error"] = errs[0]
        summary[name] = s
    return {"runs": results, "summary": summary, "notes": notes}


IMPORT_RE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def import_breakdown(cache_dir):
    """python -X importtime of a real `python -m pytracer -d 0` run: top-level imports by cumulative time."""
    env = common.pytracer_env(cache_dir)
    r = subprocess.run([common.PY, "-X", "importtime", "-m", "pytracer", "-d", "0"], env=env,
                       capture_output=True, text=True, timeout=60)
    top = {}
    total = 0
    for ln in r.stderr.splitlines():
        m = IMPORT_RE.match(ln)
        if not m:
            continue
        cum, indent, mod = int(m.group(2)), len(m.group(3)), m.group(4)
        if indent == 1:      # imported directly by the program (not by another module)
            top[mod] = top.get(mod, 0) + cum
            total += cum
    items = sorted(top.items(), key=lambda kv: -kv[1])
    return {"total_ms": total / 1000, "top": [{"module": k, "ms": v / 1000} for k, v in items[:12]],
            "rc": r.returncode}


def phases(cache_dir, cold, reps):
    out = []
    for _ in range(reps):
        if cold:
            for f in os.listdir(cache_dir):
                os.unlink(os.path.join(cache_dir, f))
            common.drop_caches()
        r = subprocess.run([common.PY, os.path.join(common.HERE, "startup_phases.py")],
                           env=common.pytracer_env(cache_dir), capture_output=True, text=True, timeout=120)
        try:
            out.append(json.loads(r.stdout))
        except ValueError:
            return {"error": (r.stderr or r.stdout).strip()[-500:]}
    keys = out[0].keys()
    return {k: common.median([o.get(k) for o in out]) for k in keys}


def interpreter_floor(reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([common.PY, "-c", "pass"], check=True)
        ts.append(time.perf_counter() - t0)
    return common.median(ts)


def kernel_stack(pid, frames=8):
    """The process's kernel stack now (root: /proc/PID/stack), innermost first, offsets dropped."""
    try:
        with open(f"/proc/{pid}/stack") as f:
            st = f.read()
    except OSError:
        return None
    return " < ".join(ln.split()[1].split("+")[0] for ln in st.splitlines()[:frames]
                      if len(ln.split()) > 1) or "(none: running in user space)"


def exit_once(argv, env, idle=0.3, timeout=60.0, sample=False):
    """Start `argv`, wait until it waits for events, let it idle, SIGINT it; seconds from kill() to reaped.
    With `sample`, its kernel stack is sampled every 0.5 ms until it is gone (counts by stack)."""
    wd = common.workdir()
    try:
        with open(os.path.join(wd, "out"), "wb") as out, open(os.path.join(wd, "err"), "wb") as err:
            p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                 start_new_session=True, preexec_fn=common.default_signals)
        end = time.monotonic() + timeout
        while not common.blocked_waiting(p.pid):
            if p.poll() is not None or time.monotonic() > end:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                raise RuntimeError(f"{' '.join(argv)} did not start (exit {p.returncode}): "
                                   f"{common.Running._tail(os.path.join(wd, 'err'))}")
            time.sleep(0.005)
        time.sleep(idle)
        progs = procview.fdinfo_ids(p.pid)["prog"]
        guard = threading.Timer(15.0, lambda: os.killpg(p.pid, signal.SIGKILL))
        guard.start()
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGINT)
        stacks = {}
        while sample:
            pid, status, _ = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            st = kernel_stack(p.pid)
            if st is not None:
                stacks[st] = stacks.get(st, 0) + 1
            time.sleep(0.0005)
        else:
            _, status, _ = os.wait4(p.pid, 0)
        t1 = time.monotonic()
        guard.cancel()
        while progs & set(inventory.ids("prog")) and time.monotonic() < t1 + 10:
            time.sleep(0.002)       # the releasing child (attach.release_in_background) detaches the rest
        t2 = time.monotonic()
        p.returncode = os.waitstatus_to_exitcode(status)
        res = {"exit_s": t1 - t0, "released_s": t2 - t0, "rc": p.returncode, "t_kill": t0, "t_gone": t1}
        if sample:
            res["stacks"] = stacks
        return res
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def exit_breakdown(run, rec):
    """Milliseconds of each part of one instrumented exit (exit_phases.py's record + our kill/reap times)."""
    ms = lambda a, b: (b - a) * 1000 if a is not None and b is not None else None  # noqa: E731
    d = {"total": ms(run["t_kill"], run["t_gone"]), "signal delivery": ms(run["t_kill"], rec.get("t_signal")),
         "signal -> close (drain, final report)": ms(rec.get("t_signal"), rec.get("t_close0")),
         "BPFObject.close": ms(rec.get("t_close0"), rec.get("t_close1")),
         "close -> os._exit": ms(rec.get("t_close1"), rec.get("t_atexit")),
         "os._exit -> reaped (process exit)": ms(rec.get("t_atexit"), run["t_gone"])}
    fds = rec.get("fds", [])
    classic = [x for x in fds if x["link"].startswith("tracepoint ") and x["fd"] != "handed over"]
    d["  classic tracepoint links handed to the releasing child"] = sum(x["fd"] == "handed over" for x in fds)
    # a classic tracepoint's Link holds its perf event and the BPF link over it, closed link first
    perf = [x["ms"] for x in classic if x["fd"] != "anon_inode:[perf_event]"]
    d["  BPF perf links of classic tracepoints (detach)"] = sum(perf)
    d["  their perf events"] = sum(x["ms"] for x in classic if x["fd"] == "anon_inode:[perf_event]")
    d["  other links (tp_btf, raw tracepoints)"] = sum(x["ms"] for x in fds if not x["link"].startswith("tracepoint "))
    for g in ("ring buffers", "programs", "maps"):
        d["  " + g] = rec.get("groups", {}).get(g, 0.0)
    return d, perf, fds


def r2(x):
    return None if x is None else round(x, 2)


def exit_times(cache_dir, reps):
    env = common.pytracer_env(cache_dir)
    plain = [common.PY, "-m", "pytracer"]
    instrumented = [common.PY, os.path.join(common.HERE, "exit_phases.py")]
    subprocess.run(plain + ["-d", "0"], env=env, capture_output=True, timeout=120)     # warm the cache
    runs, parts, per_fd, perf_each = [], [], {}, []
    for i in range(reps):
        for kind in (("plain", "instrumented") if i % 2 == 0 else ("instrumented", "plain")):
            if kind == "plain":
                runs.append(exit_once(plain, env))
                continue
            fd, path = tempfile.mkstemp(prefix="ptbench-exit-", suffix=".json")
            os.close(fd)
            try:
                run = exit_once(instrumented, dict(env, EXIT_PHASES_OUT=path))
                with open(path) as f:
                    rec = json.load(f)
            finally:
                os.unlink(path)
            d, perf, fds = exit_breakdown(run, rec)
            parts.append(d)
            perf_each += perf
            for x in fds:
                per_fd.setdefault(f"{x['link']}: {x['fd']}", []).append(x["ms"])
        common.log(f"exit {i + 1}/{reps}: {runs[-1]['exit_s'] * 1000:.1f} ms (instrumented "
                   f"{parts[-1]['total']:.1f} ms, classic tracepoint links "
                   f"{parts[-1]['  BPF perf links of classic tracepoints (detach)']:.1f} ms)")
    sampled = exit_once(plain, env, sample=True)     # not among the timed runs: sampling costs CPU
    n = sum(sampled["stacks"].values()) or 1
    top = sorted(sampled["stacks"].items(), key=lambda kv: -kv[1])[:5]
    ex = sorted(r["exit_s"] * 1000 for r in runs)
    rel = sorted(r["released_s"] * 1000 for r in runs)
    return {"runs_ms": [round(r["exit_s"] * 1000, 2) for r in runs], "median_ms": round(common.median(ex), 2),
            "min_ms": round(ex[0], 2), "max_ms": round(ex[-1], 2), "rc": sorted({r["rc"] for r in runs}),
            "released_median_ms": round(common.median(rel), 2), "released_max_ms": round(rel[-1], 2),
            "breakdown_ms": {k: r2(common.median([p[k] for p in parts])) for k in parts[0]},
            "classic_link_close_ms": {"count": len(perf_each) // len(parts), "median_each": round(common.median(
                perf_each), 2), "min_each": round(min(perf_each), 2), "max_each": round(max(perf_each), 2)}
            if perf_each else None,
            "per_fd_ms": {k: round(common.median(v), 2) for k, v in per_fd.items()},
            "kernel_stacks": {"exit_ms": round(sampled["exit_s"] * 1000, 2), "samples": n,
                              "top": [{"stack": k, "share": round(v / n, 3)} for k, v in top]}}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tools", default=",".join(DEFAULT_TOOLS))
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--exit-runs", type=int, default=7, help="pytracer exit measurements (0: none)")
    a = ap.parse_args(argv)
    common.need_root()
    all_tools = common.tools()
    names = [n for n in a.tools.split(",") if n]
    missing = {n: "not installed" for n in names if not all_tools[n].available()}
    names = [n for n in names if n not in missing]
    drop = common.drop_caches()
    res = rounds(names, a.rounds, drop)
    res["missing"] = missing
    res["page_cache_dropped"] = drop
    if not a.no_breakdown and "pytracer" in names:
        cache_dir = common.private_cache_dir()
        try:
            res["python_floor_s"] = interpreter_floor(max(3, a.rounds))
            res["phases_cold"] = phases(cache_dir, True, max(1, a.rounds // 2))
            res["phases_warm"] = phases(cache_dir, False, max(1, a.rounds))
            res["imports_warm"] = import_breakdown(cache_dir)
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
    if a.exit_runs and "pytracer" in names:
        cache_dir = common.private_cache_dir()
        try:
            res["exit"] = exit_times(cache_dir, a.exit_runs)
        except Exception as e:  # noqa: BLE001 - reported in the JSON
            res["exit"] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
    common.emit(res)


if __name__ == "__main__":
    main()
