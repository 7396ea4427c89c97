"""pytracer's start-up with many open TCP sockets: at start TcpSnoop runs two BPF iterators (SEED_ITERATORS:
iter/task_file over every process's descriptors, then iter/tcp over the TCP sockets of pytracer's network
namespace) to register the sockets that exist already. What that costs, three scenarios alternated in every
round:

  host     the host as it is
  netns    + --pairs connected loopback pairs (2 sockets each) held by one process in a network namespace
           made for the run: iter/task_file sees them (it walks every process), iter/tcp does not (it visits
           the reader's namespace only, though it walks the shared established-hash table to skip them)
  hostns   the same pairs held in the host namespace: both iterators see them

Per scenario visit, --runs times each (alternated):
  exec     `python -m pytracer` exec -> header line on a pty, warm cache (as startup.py's "warm")
  seed     a child that times TcpSnoop.start() and each run_iterator() call in it (wrapped from outside),
           then runs both iterators again (every socket now registered: the walk without the inserts)
  none     the same child with toolkit.sockowner.SEED_ITERATORS = () (monkeypatched): start() without the pass
and once per visit a `stats` child: the seed child with the kernel's BPF run-time statistics on
(BPF_ENABLE_STATS, only while that child runs), for the time spent in the iterator programs themselves
(run_time_ns), in the first pass and in the second, and how many objects each visited (run_cnt); the rest
of a pass is the kernel's walk and the read() around it. With --profile, after the rounds, one more seed
child per scenario under `perf record -g`: the kernel samples in the iterator reads, by part (PROFILE_PARTS).

    python bench/startup_sockets.py [--rounds 5] [--runs 3] [--pairs 5000] [--profile]      prints JSON
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import startup  # noqa: E402

SCENARIOS = ("host", "netns", "hostns")
# struct bpf_prog_info: run_time_ns, run_cnt (Linux 5.1+)
PROG_INFO_RUN_TIME = 192
BPF_STATS_RUN_TIME = 0


def inner(mode):
    """In a fresh interpreter (host network namespace): time TcpSnoop.start(), its iterator calls, a second
    pass of each iterator; prints JSON (milliseconds)."""
    sys.path.insert(0, common.ROOT)
    from pytracer import abi, tcpsnoop
    from pytracer.toolkit import sockowner
    from pytracer.loader import BPFObject
    from pytracer.syscall import bpf

    res, calls = {"mode": mode}, {}
    real = BPFObject.run_iterator

    def run_iterator(self, name, *a, **k):
        t = time.perf_counter()
        try:
            return real(self, name, *a, **k)
        finally:
            calls[name] = calls.get(name, 0.0) + (time.perf_counter() - t) * 1000

    BPFObject.run_iterator = run_iterator
    if mode == "none":
        sockowner.SEED_ITERATORS = ()
    stats_fd = bpf(abi.Cmd.ENABLE_STATS, struct.pack("<I", BPF_STATS_RUN_TIME)) if mode == "stats" else None
    snoop = tcpsnoop.TcpSnoop()
    try:
        t = time.perf_counter()
        snoop.start()
        res["start_ms"] = (time.perf_counter() - t) * 1000
        res["iterators_ms"] = dict(calls)
        def prog_stats():
            return {name: struct.unpack_from("<QQ", snoop.obj.programs[name].info(), PROG_INFO_RUN_TIME)
                    for name in sockowner.SEED_ITERATORS}

        if mode == "stats":
            first = prog_stats()
            res["programs"] = {name: {"run_ms": ns / 1e6, "run_cnt": cnt} for name, (ns, cnt) in first.items()}
        if mode != "none":
            calls.clear()
            for name in sockowner.SEED_ITERATORS:
                snoop.obj.run_iterator(name)
            res["rerun_ms"] = dict(calls)
        if mode == "stats":
            for name, (ns, cnt) in prog_stats().items():
                res["programs"][name]["rerun_run_ms"] = (ns - first[name][0]) / 1e6
    finally:
        snoop.close()
        if stats_fd is not None:
            os.close(stats_fd)
    common.emit(res)


def child(mode, cache_dir):
    r = subprocess.run([common.PY, os.path.abspath(__file__), "--inner", mode], env=common.pytracer_env(cache_dir),
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"the {mode} child failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return json.loads(r.stdout)


# Where a pass's kernel time goes, from a perf profile of the seed child: a sample in the iterator read
# (bpf_seq_read) is counted in the first of these its stack holds (any frame; order matters).
PROFILE_PARTS = (
    ("LRU map inserts (socks, tuples)", ("htab_lru_map_update_elem", "bpf_lru_", "htab_lru_map_delete_elem")),
    ("map lookups", ("lookup_elem", "htab_map_hash", "lookup_nulls_elem_raw")),
    ("file_to_tcp_sk: is this file a TCP socket (probe reads)", ("file_to_tcp_sk",)),
    ("other probe reads (BPF_CORE_READ of the socket, the task)", ("copy_from_kernel_nofault", "bpf_probe_read")),
    ("the programs' own code", ("seed_owners", "seed_sockets")),
    ("task_file: the file-table walk", ("fget_task_next", "task_file_seq", "task_seq_get_next", "fput")),
    ("tcp: the established-hash walk", ("established_get_", "bpf_iter_tcp", "listening_get_")),
)


def profile(cache_dir, hz=20000):
    """perf record -g of one seed child (both passes: in start() and again); kernel samples under
    bpf_seq_read by part, in ms of samples (1/hz each)."""
    if not shutil.which("perf"):
        return {"error": "perf is not installed"}
    work = common.workdir()
    try:
        data = os.path.join(work, "perf.data")
        r = subprocess.run(["perf", "record", "-q", "-F", str(hz), "-g", "-o", data, "--", common.PY,
                            os.path.abspath(__file__), "--inner", "seed"], env=common.pytracer_env(cache_dir),
                           capture_output=True, text=True, timeout=120)
        if r.returncode:
            return {"error": f"perf record: {r.stderr.strip()[-300:]}"}
        r = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym"], capture_output=True, text=True,
                           timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stacks, cur = [], []
    for ln in r.stdout.splitlines() + [""]:
        parts = ln.split(None, 1)
        if not parts:
            if cur:
                stacks.append(cur)
            cur = []
        else:
            cur.append(parts[1] if len(parts) > 1 else "?")
    res = {"hz": hz}
    for it, marks in (("seed_sockets", ("bpf_iter_tcp", "seed_sockets")), ("seed_owners", None)):
        mine = [st for st in stacks if any("bpf_seq_read" in fr for fr in st)]
        if marks:
            mine = [st for st in mine if any(m in fr for fr in st for m in marks)]
        else:
            mine = [st for st in mine if not any(m in fr for fr in st for m in ("bpf_iter_tcp", "seed_sockets"))]
        parts = {}
        for st in mine:
            label = next((lb for lb, keys in PROFILE_PARTS if any(k in fr for fr in st for k in keys)), "other")
            parts[label] = parts.get(label, 0) + 1
        res[it] = {"ms": round(len(mine) * 1000 / hz, 1),
                   "parts": {k: round(v / len(mine), 3) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])}
                   if mine else {}}
    return res


def spread(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    return {"median": round(common.median(xs), 2), "min": round(xs[0], 2), "max": round(xs[-1], 2), "n": len(xs)}


def visit(name, runs, cache_dir, tool, out):
    d = out[name]
    d["open_files"].append(common.open_files())
    for i in range(runs):
        order = ("exec", "seed", "none") if i % 2 == 0 else ("none", "seed", "exec")
        for kind in order:
            if kind == "exec":
                r = startup.run_once(tool)
                if r.get("error") or r.get("first_line_s") is None:
                    raise RuntimeError(f"pytracer did not start: {r.get('error')}")
                d["exec_ms"].append(r["first_line_s"] * 1000)
            else:
                d[kind].append(child(kind, cache_dir))
    d["stats"].append(child("stats", cache_dir))


def summarise(raw):
    out = {}
    for name, d in raw.items():
        if not d["exec_ms"]:
            continue
        seed, none = d["seed"], d["none"]
        s = {"open_files": common.median(d["open_files"]), "exec_ms": spread(d["exec_ms"]),
             "start_seed_ms": spread([x["start_ms"] for x in seed]),
             "start_none_ms": spread([x["start_ms"] for x in none])}
        s["start_diff_ms"] = round(s["start_seed_ms"]["median"] - s["start_none_ms"]["median"], 2)
        names = sorted({k for x in seed for k in x["iterators_ms"]})
        s["iterators"] = {}
        for it in names:
            e = {"first_ms": spread([x["iterators_ms"].get(it) for x in seed]),
                 "rerun_ms": spread([x["rerun_ms"].get(it) for x in seed])}
            progs = [x["programs"][it] for x in d["stats"] if it in x.get("programs", {})]
            if progs:
                e["bpf_run_ms"] = round(common.median([p["run_ms"] for p in progs]), 2)
                e["bpf_rerun_ms"] = round(common.median([p["rerun_run_ms"] for p in progs]), 2)
                e["visited"] = common.median([p["run_cnt"] for p in progs])
                e["stats_pass_ms"] = round(common.median([x["iterators_ms"][it] for x in d["stats"]]), 2)
            s["iterators"][it] = e
        s["pass_ms"] = round(sum(e["first_ms"]["median"] for e in s["iterators"].values()), 2)
        out[name] = s
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3, help="runs of each kind per scenario visit")
    ap.add_argument("--pairs", type=int, default=5000, help="connected TCP pairs held open")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--profile", action="store_true", help="also a perf profile of each scenario's pass")
    ap.add_argument("--inner", choices=("seed", "none", "stats"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    common.need_root()
    if a.inner:
        inner(a.inner)
        return 0
    names = [n for n in a.scenarios.split(",") if n]
    result = {"rounds": a.rounds, "runs": a.runs, "pairs": a.pairs, "scenarios": names}
    try:
        with open("/proc/sys/net/ipv4/tcp_child_ehash_entries") as f:
            result["tcp_child_ehash_entries"] = int(f.read())
    except OSError:
        pass
    raw = {n: {"open_files": [], "exec_ms": [], "seed": [], "none": [], "stats": []} for n in names}
    cache_dir = common.private_cache_dir()
    try:
        tool = common.tools(cache_dir=cache_dir)["pytracer"]
        startup.run_once(tool)          # fills the cache: every measured run is warm
        with common.Namespaces() as ns:
            where = {"host": None, "netns": ns.lo, "hostns": ""}
            for r in range(a.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    if where[name] is None:
                        visit(name, a.runs, cache_dir, tool, raw)
                    else:
                        with common.SocketHolder(a.pairs, where[name] or None) as h:
                            result["holder_sockets"] = h.sockets
                            visit(name, a.runs, cache_dir, tool, raw)
                    common.log(f"startup_sockets round {r + 1}/{a.rounds} {name}: exec "
                               f"{raw[name]['exec_ms'][-1]:.1f} ms, start {raw[name]['seed'][-1]['start_ms']:.1f}"
                               f" ms (without the pass {raw[name]['none'][-1]['start_ms']:.1f} ms), iterators "
                               + ", ".join(f"{k} {v:.1f} ms" for k, v in raw[name]["seed"][-1]["iterators_ms"].items()))
            if a.profile:
                result["profile"] = {}
                for name in names:
                    if where[name] is None:
                        result["profile"][name] = profile(cache_dir)
                    else:
                        with common.SocketHolder(a.pairs, where[name] or None):
                            result["profile"][name] = profile(cache_dir)
    except Exception as e:  # noqa: BLE001 - a bench reports its failure in its JSON
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    result["runs_raw"] = raw
    result["summary"] = summarise(raw)
    common.emit(result)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
