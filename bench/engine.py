"""Raw engine capacity: records read and decoded per second, with zero loss, from a synthetic producer.

pytracer/bpf/enginetest.bpf.o emits one `probe_event` record into the ring buffer `events` for every getppid()
of the process `target_tgid` (a rodata constant); records it cannot reserve are counted in the per-CPU map
`lost`. The producer (loadgen producer: getppid() at a paced rate) runs on one CPU, this script's consumer
(RingBuffer.poll + RingBuffer.read with the layout's struct: tuples) on the other, each pinned.

For each offered rate: records produced (getppid calls), read, lost, consumer CPU time.

    python bench/engine.py [--rates 250000,500000,0] [--seconds 1] [--reps 3] [--ringbuf-mb 8]
(rate 0 = the producer flat out)
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

OBJ = os.path.join(common.ROOT, "pytracer", "bpf", "enginetest.bpf.o")
PROGRAM = "getppid_probe"


def one_run(rate, seconds, rb_bytes, cpus):
    from pytracer import records as events
    from pytracer.loader import BPFObject

    layout = events.object_layout(OBJ, "probe_event")
    prod_cpu, cons_cpu = cpus
    prod = subprocess.Popen(common.loadgen_cmd() + ["producer", str(seconds), str(rate)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, {prod_cpu})) if prod_cpu is not None
                            else None)
    try:
        # only the ring-buffer program: the object's other two count every syscall of the machine
        with BPFObject(OBJ, rodata={"target_tgid": prod.pid}, map_max_entries={"events": rb_bytes},
                       programs=[PROGRAM]) as obj:
            obj.attach([PROGRAM])
            rb = obj.ring_buffer("events")
            rec = layout.struct
            n = 0
            seq_min = seq_max = None
            prod.stdin.write("go\n")
            prod.stdin.flush()
            t0 = time.perf_counter()
            c0 = time.thread_time()
            max_backlog = 0
            max_gap = 0.0
            last = time.perf_counter()
            while True:
                now = time.perf_counter()
                max_gap = max(max_gap, now - last)
                last = now
                backlog = rb.pending_bytes()
                if backlog > max_backlog:
                    max_backlog = backlog
                if rb.poll(0.05):
                    recs = rb.read(rec)
                    if recs:
                        n += len(recs)
                        if seq_min is None:
                            seq_min = recs[0][0]
                        seq_max = recs[-1][0]
                elif prod.poll() is not None:
                    recs = rb.read(rec)
                    n += len(recs)
                    if recs:
                        seq_max = recs[-1][0]
                    break
            wall = time.perf_counter() - t0
            cpu = time.thread_time() - c0
            lost = obj.maps["lost"].sum_percpu_u64()
        out = common.parse_done(prod.stdout.read())
    finally:
        if prod.poll() is None:
            prod.kill()
        prod.wait()
    produced = out["count"]
    return {"offered_rate": rate, "produced": produced, "producer_rate": produced / out["seconds"],
            "read": n, "lost": lost, "complete": n == produced and lost == 0, "wall_s": wall,
            "consumer_cpu_s": cpu, "read_rate": n / wall if wall else None,
            "records_per_cpu_s": n / cpu if cpu else None,
            "seq_span": None if seq_min is None else seq_max - seq_min + 1,
            "max_backlog_bytes": max_backlog, "max_loop_gap_s": max_gap}


def libbpf_run(rate, seconds, rb_bytes):
    """The same producer and object, consumed in C by libbpf's ring_buffer__poll (bench/build/rbcheck)."""
    exe = os.path.join(common.BUILD, "rbcheck")
    r = subprocess.run([exe, OBJ, str(rate), str(seconds), str(rb_bytes)], capture_output=True, text=True,
                       timeout=seconds + 30)
    parts = r.stdout.split()
    if r.returncode or len(parts) != 6:
        raise RuntimeError(f"rbcheck failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    produced, n, lost = int(parts[1]), int(parts[3]), int(parts[5])
    return {"offered_rate": rate, "produced": produced, "producer_rate": produced / seconds, "read": n,
            "lost": lost, "complete": n == produced and lost == 0, "wall_s": seconds, "consumer_cpu_s": None,
            "read_rate": n / seconds, "records_per_cpu_s": None}


def build_rbcheck():
    exe = os.path.join(common.BUILD, "rbcheck")
    src = os.path.join(common.HERE, "rbcheck.c")
    if os.path.exists(exe) and os.path.getmtime(exe) >= os.path.getmtime(src):
        return exe
    cc = common.compiler()
    if not cc or not os.path.exists("/usr/include/bpf/libbpf.h"):
        return None
    os.makedirs(common.BUILD, exist_ok=True)
    r = subprocess.run([cc, "-O2", "-o", exe, src, "-lbpf"], capture_output=True, text=True)
    return exe if r.returncode == 0 else None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="250000,500000,1000000,1500000,2000000,0")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ringbuf-mb", type=int, default=8)
    ap.add_argument("--consumer", choices=("pytracer", "libbpf"), default="pytracer",
                    help="libbpf: consume with libbpf in C (bench/rbcheck.c), to compare")
    ap.add_argument("--native-consumer-store", action="store_true",
                    help="diagnostic: make RingBuffer publish consumer_pos with one 8-byte store (native struct "
                         "'Q', a memcpy) instead of '<Q' (CPython writes that byte by byte, so the kernel can read "
                         "a torn position); pytracer's file is not changed, its module global is replaced here")
    a = ap.parse_args(argv)
    common.need_root()
    sys.path.insert(0, common.ROOT)
    res = {"object": os.path.relpath(OBJ, common.ROOT), "ringbuf_mb": a.ringbuf_mb, "runs": [],
           "loadgen": common.loadgen_kind(), "native_consumer_store": a.native_consumer_store,
           "consumer": a.consumer}
    if a.consumer == "libbpf" and not build_rbcheck():
        res["error"] = "bench/rbcheck.c could not be built (needs a C compiler and libbpf-dev)"
        common.emit(res)
        return 1
    if a.native_consumer_store:
        import struct

        from pytracer import ringbuf
        ringbuf._U64 = struct.Struct("Q")
    if not os.path.exists(OBJ):
        res["error"] = f"{res['object']} does not exist (not built yet)"
        common.emit(res)
        return 1
    ncpu = os.cpu_count() or 1
    cpus = (1, 0) if ncpu >= 2 else (None, None)
    if cpus[1] is not None:
        os.sched_setaffinity(0, {cpus[1]})
    rates = [int(float(r)) for r in a.rates.split(",")]
    try:
        for rep in range(a.reps):
            for rate in rates:
                if a.consumer == "libbpf":
                    r = libbpf_run(rate, a.seconds, a.ringbuf_mb << 20)
                else:
                    r = one_run(rate, a.seconds, a.ringbuf_mb << 20, cpus)
                r["rep"] = rep
                res["runs"].append(r)
                common.log(f"engine ({a.consumer}) rate {rate or 'max'}: produced {r['producer_rate']:.0f}/s read "
                           f"{r['read']} lost {r['lost']} consumer cpu {r['consumer_cpu_s']}")
    except Exception as e:  # noqa: BLE001 - report what failed, as data
        res["error"] = f"{type(e).__name__}: {e}"
        common.emit(res)
        return 1
    finally:
        os.sched_setaffinity(0, set(range(ncpu)))
    by_rate = {}
    for r in res["runs"]:
        by_rate.setdefault(r["offered_rate"], []).append(r)
    summary = []
    for rate, rs in by_rate.items():
        summary.append({
            "offered_rate": rate,
            "producer_rate": common.median([r["producer_rate"] for r in rs]),
            "read_rate": common.median([r["read_rate"] for r in rs]),
            "records_per_cpu_s": common.median([r["records_per_cpu_s"] for r in rs]),
            "lost": sum(r["lost"] for r in rs),
            "zero_loss_all_reps": all(r["complete"] for r in rs)})
    res["summary"] = summary
    ok = [s for s in summary if s["zero_loss_all_reps"]]
    res["max_zero_loss_rate"] = max((s["producer_rate"] for s in ok), default=None)
    res["max_read_rate"] = max((s["read_rate"] or 0 for s in summary), default=None)
    res["max_records_per_cpu_s"] = max((s["records_per_cpu_s"] or 0 for s in summary), default=None)
    common.emit(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
