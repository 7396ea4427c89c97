"""What one BPF iterator pass costs: `BPFObject.run_iterator()` over iter/task_file, as a tool would run it at
every start to learn which process holds which socket.

The program is tests/bpf/iter_fixture.bpf.c's `socket_fds` (one text line per socket fd; compiled here with
clang-16): with target_tgid 0 it prints every socket of every process, with a pid only that process's, but
it walks every open file of every process either way. Measured twice: on the host as it is, and with
--pairs connected TCP pairs (2 sockets each, on loopback in a network namespace made for the run) held open
by one helper process. Per scenario, medians over --rounds passes (ms):

  all           run_iterator (link, iterator fd, read to EOF, close), every process's sockets printed
  one_process   the same, only the helper's sockets printed (a pid filter in the program)
  one_process_link_info   the same with the kernel's filter (iterator.task_link_info(pid), Linux 6.1+):
                only the helper's files are walked
  reread        Iterator.read() on a kept link (the iterator fd and the read only)
  parse         splitting the `all` output (text) into integer tuples in Python
  tasks         iter/task that only counts tasks into a map (the task walk alone)
  tcp           iter/tcp `tcp_sockets` in the sockets' network namespace (binary records, bpf_seq_write),
                and tcp_parse, struct.iter_unpack of its output

plus the lines printed, the open files on the machine (from /proc) and the object's load time (verifier;
the first scenario's also includes parsing vmlinux BTF).

    python bench/iterator.py [--rounds 20] [--pairs 5000]
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

FIXTURE_C = os.path.join(common.ROOT, "tests", "bpf", "iter_fixture.bpf.c")
TCP_RECORD = struct.Struct("<HHHBBI")    # the fixture's struct tcp_record

def build(out_dir):
    clang = shutil.which("clang-16")
    if clang is None:
        raise RuntimeError("clang-16 is needed to build tests/bpf/iter_fixture.bpf.c")
    out = os.path.join(out_dir, "iter_fixture.bpf.o")
    subprocess.run([clang, "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-D__TARGET_ARCH_x86",
                    "-I/usr/include/%s-linux-gnu" % os.uname().machine,
                    "-I" + os.path.join(common.ROOT, "bpf_bytecode"), "-c", FIXTURE_C, "-o", out],
                   check=True, capture_output=True, text=True)
    return out


def timed(fn, rounds):
    times, result = [], None
    for _ in range(rounds):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"median_ms": round(common.median(times), 3), "min_ms": round(times[0], 3),
            "max_ms": round(times[-1], 3)}, result


def parse(out):
    return [tuple(map(int, ln.split())) for ln in out.splitlines()]


def scenario(obj_path, rounds, holder_pid):
    from pytracer import iterator
    from pytracer.loader import BPFObject

    res = {"open_files": common.open_files()}
    t = time.perf_counter()
    obj = BPFObject(obj_path, rodata={"target_tgid": 0}, programs=["socket_fds", "count_tasks"], use_cache=False)
    res["load_ms"] = round((time.perf_counter() - t) * 1000, 1)
    with obj, BPFObject(obj_path, rodata={"target_tgid": holder_pid or os.getpid()}, programs=["socket_fds"],
                        use_cache=False) as one:
        obj.run_iterator("socket_fds")   # warm-up: first-touch costs are not per-pass costs
        res["all"], out = timed(lambda: obj.run_iterator("socket_fds"), rounds)
        res["lines_all"], res["bytes_all"] = out.count(b"\n"), len(out)
        res["one_process"], out1 = timed(lambda: one.run_iterator("socket_fds"), rounds)
        res["lines_one_process"] = out1.count(b"\n")
        info = iterator.task_link_info(pid=holder_pid or os.getpid())
        res["one_process_link_info"], out2 = timed(lambda: one.run_iterator("socket_fds", info), rounds)
        res["lines_one_process_link_info"] = out2.count(b"\n")
        it = obj.iterator("socket_fds")
        res["reread"], _ = timed(it.read, rounds)
        res["parse"], _ = timed(lambda: parse(out.decode()), rounds)
        res["tasks"], _ = timed(lambda: obj.run_iterator("count_tasks"), rounds)
    return res


def tcp_pass(obj_path, rounds):
    """iter/tcp sees the sockets of the network namespace of the process that creates the iterator fd."""
    from pytracer.loader import BPFObject

    with BPFObject(obj_path, programs=["tcp_sockets"], use_cache=False) as obj:
        obj.run_iterator("tcp_sockets")
        res, out = timed(lambda: obj.run_iterator("tcp_sockets"), rounds)
        parsed, recs = timed(lambda: list(TCP_RECORD.iter_unpack(out)), rounds)
    return {"tcp": res, "tcp_parse": parsed, "tcp_records": len(recs)}


def tcp_in_netns(ns, obj_path, rounds):
    r = subprocess.run(common.Namespaces.prefix(ns) + [common.PY, os.path.abspath(__file__), "--tcp-inner",
                                                        obj_path, "--rounds", str(rounds)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"iter/tcp in {ns} failed: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=5000, help="connected TCP pairs held open (0: host only)")
    ap.add_argument("--tcp-inner", metavar="OBJ", help=argparse.SUPPRESS)   # run by tcp_in_netns
    a = ap.parse_args(argv)
    common.need_root()
    sys.path.insert(0, common.ROOT)
    if a.tcp_inner:
        common.emit(tcp_pass(a.tcp_inner, a.rounds))
        return 0
    result = {"rounds": a.rounds, "pairs": a.pairs}
    work = common.workdir()
    try:
        obj = build(work)
        common.log("iterator: host as it is")
        result["host"] = scenario(obj, a.rounds, None)
        result["host"].update(tcp_pass(obj, a.rounds))
        if a.pairs:
            with common.Namespaces() as ns:
                common.log(f"iterator: {a.pairs} connected pairs held by one process in netns {ns.lo}")
                with common.SocketHolder(a.pairs, ns.lo) as holder:
                    res = scenario(obj, a.rounds, holder.pid)
                    res["holder_sockets"] = holder.sockets
                    res.update(tcp_in_netns(ns.lo, obj, a.rounds))
                    if res["lines_one_process"] != holder.sockets:
                        res["error"] = (f"the iterator saw {res['lines_one_process']} of the helper's "
                                        f"{holder.sockets} sockets")
                    result["sockets"] = res
    except Exception as e:  # noqa: BLE001 - a bench reports its failure in its JSON
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name in ("host", "sockets"):
        r = result.get(name)
        if r:
            common.log(f"{name}: {r['open_files']} open files, {r['lines_all']} socket lines; run_iterator "
                       f"all {r['all']['median_ms']} ms, one process {r['one_process']['median_ms']} ms, "
                       f"one process by link info {r['one_process_link_info']['median_ms']} ms, "
                       f"re-read {r['reread']['median_ms']} ms, parse {r['parse']['median_ms']} ms, "
                       f"task walk {r['tasks']['median_ms']} ms; iter/tcp {r['tcp_records']} sockets "
                       f"{r['tcp']['median_ms']} ms, parse {r['tcp_parse']['median_ms']} ms; "
                       f"load {r['load_ms']} ms")
    common.emit(result)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
