"""Startup: exec -> ready, cold and warm, for pytracer and its peers (alternating tools in every round),
plus where pytracer's startup time goes (imports, and each phase of TcpSnoop.start()).

Ready = the first header line on the terminal (tcpstates, tcplife, pytracer classic); for bpftrace both its
"Attaching N probes..." line (printed before it attaches) and the READY line of our script's BEGIN probe
(printed once every probe is attached). Stdout is a pty, as for a person at a terminal, so C stdio is
line-buffered. Cold = page cache dropped (and for pytracer an empty PYTRACER_CACHE_DIR); warm = the run
straight after, with the same cache directory; first = a first run (a new empty PYTRACER_CACHE_DIR) with the
page cache warm, i.e. pytracer's own cold path without the disk reads of a cold interpreter.

    python bench/startup.py [--rounds N] [--tools a,b]     prints JSON
"""
import argparse
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

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
            import json
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


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tools", default=",".join(DEFAULT_TOOLS))
    ap.add_argument("--no-breakdown", action="store_true")
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
    common.emit(res)


if __name__ == "__main__":
    main()
