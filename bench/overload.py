#!/usr/bin/env python3
"""Overload accounting: every event is either delivered or counted as lost, at every rate.

A generator process calls getppid() a known number of times at increasing rates; enginetest.bpf.o (with
`target_tgid` set to the generator) writes one record per call into its `events` ring buffer, or counts a
reservation failure in the per-CPU `lost` map. This process drains the ring buffer meanwhile, as fast as it
can (optionally spending --work-us per record, as a slower consumer would). For each rate it proves

    delivered + lost == generated == the kernel's own per-CPU call count (map `counts`)

exactly, and, from the records' sequence numbers (one per call, in reservation order), that no record was
delivered twice and that the missing sequence numbers are exactly the lost ones. It reports the first rate at
which losses begin.

    python3 bench/overload.py                         # default ladder, 64 KiB ring buffer
    python3 bench/overload.py --ring-kb 4 --count 100000 --rates 1000,10000,100000,0 --json

A rate of 0 means "as fast as the generator can go". Exit status 0 when the books balance at every rate,
1 when they do not, 2 on a setup problem.
"""
import argparse
import json
import os
import select
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

OBJECT = os.path.join(ROOT, "pytracer", "bpf", "enginetest.bpf.o")
DEFAULT_RATES = (10_000, 30_000, 100_000, 200_000, 300_000, 500_000, 700_000, 1_000_000, 0)

# The generator: waits for "COUNT RATE" lines, makes exactly COUNT getppid() calls paced at RATE per second
# (0: unpaced), answers "DONE COUNT SECONDS". It makes no other getppid() call.
GENERATOR = r"""
import os, sys, time
getppid, perf, sleep = os.getppid, time.perf_counter, time.sleep
out = os.fdopen(1, "w", buffering=1)
out.write("READY %d\n" % os.getpid())
for line in sys.stdin:
    count, rate = map(int, line.split())
    t0 = perf()
    done = 0
    if rate <= 0:
        for _ in range(count):
            getppid()
        done = count
    else:
        chunk = max(1, rate // 2000)            # ~0.5 ms worth of calls per burst
        while done < count:
            n = min(chunk, count - done)
            for _ in range(n):
                getppid()
            done += n
            ahead = t0 + done / rate - perf()
            if ahead > 0:
                sleep(ahead)
    out.write("DONE %d %.6f\n" % (done, perf() - t0))
"""


class Setup(Exception):
    pass


def _sum_array(m, ncpus):
    total = 0
    for cpu in range(ncpus):
        v = m.lookup(struct.pack("<I", cpu))
        if v is not None:
            total += struct.unpack_from("<Q", v)[0]
    return total


def _sum_hash(m):
    return sum(struct.unpack_from("<Q", m.lookup(k))[0] for k in list(m.keys()))


class Counters:
    """The kernel's books: reservation failures and the three programs' call counts."""

    def __init__(self, obj):
        from pytracer.maps import possible_cpus

        self.obj = obj
        self.ncpus = possible_cpus()

    def read(self):
        maps = self.obj.maps
        out = {"lost": maps["lost"].sum_percpu_u64(), "counts": _sum_hash(maps["counts"])}
        for name in ("btf_counts", "raw_counts"):
            if name in maps:
                out[name] = _sum_array(maps[name], self.ncpus)
        return out


def _work(us):
    """Busy-wait `us` microseconds (a consumer doing real work per record)."""
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


def run_step(gen, rb, record, counters, rate, count, seq_base, work_us=0.0, timeout=None):
    """One rate: returns a result dict. `seq_base` is the first sequence number this step will produce."""
    seq_i = record_fields(record)["seq"]
    if timeout is None:
        timeout = 60.0 + (2.0 * count / rate if rate > 0 else 0.0) + count * work_us / 1e6 * 2
    before = counters.read()
    seen = bytearray(count)
    delivered = dups = out_of_range = 0
    gen.stdin.write(f"{count} {rate}\n")
    gen.stdin.flush()
    fd = gen.stdout.fileno()
    reply = b""
    done = None
    deadline = time.monotonic() + timeout
    max_pending = 0
    t0 = time.monotonic()
    while True:
        if done is None:
            r, _, _ = select.select([fd], [], [], 0)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise Setup("the generator died")
                reply += chunk
                if b"\n" in reply:
                    parts = reply.split(b"\n", 1)[0].split()
                    if parts[0] != b"DONE":
                        raise Setup(f"generator said {reply!r}")
                    done = (int(parts[1]), float(parts[2]))
        max_pending = max(max_pending, rb.pending_bytes())
        if rb.poll(0.002 if done is None else 0):
            recs = rb.read(record)
            for r in recs:
                k = r[seq_i] - seq_base
                if 0 <= k < count:
                    if seen[k]:
                        dups += 1
                    seen[k] = 1
                else:
                    out_of_range += 1
                if work_us:
                    _work(work_us)
            delivered += len(recs)
        if done is not None and rb.pending_bytes() == 0:
            break
        if time.monotonic() > deadline:
            raise Setup(f"step at rate {rate} did not finish in {timeout} s")
    wall = time.monotonic() - t0
    after = counters.read()
    generated, gen_seconds = done
    delta = {k: after[k] - before.get(k, 0) for k in after}
    lost = delta.pop("lost")
    missing = count - sum(seen)
    row = {
        "rate": rate, "achieved_rate": round(generated / gen_seconds) if gen_seconds > 0 else None,
        "generated": generated, "kernel_counted": delta["counts"], "delivered": delivered, "lost": lost,
        "missing_seqs": missing, "duplicates": dups, "foreign_seqs": out_of_range,
        "max_pending_bytes": max_pending, "seconds": round(wall, 3),
    }
    for k in ("btf_counts", "raw_counts"):
        if k in delta:
            row[k] = delta[k]
    row["balanced"] = (delivered + lost == generated == delta["counts"] and missing == lost and dups == 0
                       and out_of_range == 0 and all(row.get(k, generated) == generated
                                                     for k in ("btf_counts", "raw_counts")))
    return row


def record_fields(record_layout_struct):
    from pytracer import records as events

    lay = events.object_layout(OBJECT, "probe_event")
    return {n: i for i, n in enumerate(lay.names)}


def run(rates=DEFAULT_RATES, count=200_000, ring_bytes=64 << 10, work_us=0.0, object_path=OBJECT,
        progress=None):
    """Run the ladder; returns (rows, first rate with losses or None)."""
    from pytracer import records as events
    from pytracer.loader import BPFObject

    if not os.path.exists(object_path):
        raise Setup(f"{object_path} does not exist (make bytecode)")
    gen = subprocess.Popen([sys.executable, "-c", GENERATOR], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True, bufsize=1)
    try:
        first = gen.stdout.readline().split()
        if not first or first[0] != "READY":
            raise Setup("the generator did not start")
        tgid = int(first[1])
        record = events.object_layout(object_path, "probe_event").struct
        rows = []
        with BPFObject(object_path, rodata={"target_tgid": tgid}, map_max_entries={"events": ring_bytes},
                       use_cache=False) as obj:
            obj.attach()
            rb = obj.ring_buffer("events")
            counters = Counters(obj)
            seq_base = 0
            for rate in rates:
                row = run_step(gen, rb, record, counters, rate, count, seq_base, work_us)
                seq_base += row["kernel_counted"]
                rows.append(row)
                if progress:
                    progress(row)
        first_loss = next((r["rate"] for r in rows if r["lost"]), None)
        return rows, first_loss
    finally:
        try:
            gen.stdin.close()
        except OSError:
            pass
        try:
            gen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait()


def fmt_row(r):
    rate = "max" if r["rate"] == 0 else f"{r['rate']:,}/s"
    ok = "balanced" if r["balanced"] else "NOT BALANCED"
    return (f"{rate:>12} achieved {r['achieved_rate'] or 0:>9,}/s  generated {r['generated']:>9,}  "
            f"delivered {r['delivered']:>9,}  lost {r['lost']:>9,}  "
            f"(kernel counted {r['kernel_counted']:,}; missing seqs {r['missing_seqs']:,}; "
            f"dups {r['duplicates']})  {ok}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=200_000, help="events per rate (default 200000)")
    p.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)),
                   help="comma-separated events/s, 0 = unpaced (default %(default)s)")
    p.add_argument("--ring-kb", type=int, default=64, help="ring buffer size in KiB (power of two, >= 4)")
    p.add_argument("--work-us", type=float, default=0.0, help="consumer work per record, microseconds")
    p.add_argument("--json", action="store_true", help="one JSON object per rate, then a summary")
    a = p.parse_args(argv)
    rates = [int(x) for x in a.rates.split(",") if x.strip()]

    def progress(row):
        print(json.dumps(row) if a.json else fmt_row(row), flush=True)

    if not a.json:
        print(f"enginetest overload: {a.count:,} events per rate, ring buffer {a.ring_kb} KiB, "
              f"consumer work {a.work_us} us/record, {os.cpu_count()} CPUs")
    try:
        rows, first_loss = run(rates, a.count, a.ring_kb << 10, a.work_us, progress=progress)
    except Exception as e:  # noqa: BLE001 - a benchmark: say what went wrong
        from pytracer.errors import PytracerError

        if isinstance(e, (Setup, PytracerError)):
            print(f"overload: {e}", file=sys.stderr)
            return 2
        raise
    balanced = all(r["balanced"] for r in rows)
    summary = {"summary": True, "balanced_at_every_rate": balanced,
               "losses_begin_at": ("max" if first_loss == 0 else first_loss),
               "ring_kb": a.ring_kb, "work_us": a.work_us}
    if a.json:
        print(json.dumps(summary))
    else:
        where = "no losses at any rate" if first_loss is None else \
            f"losses begin at {'the unpaced rate' if first_loss == 0 else f'{first_loss:,}/s'}"
        print(f"books {'balance' if balanced else 'DO NOT balance'} at every rate; {where}")
    return 0 if balanced else 1


if __name__ == "__main__":
    sys.exit(main())
