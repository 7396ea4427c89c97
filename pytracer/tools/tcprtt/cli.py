"""`pytracer tcprtt`: a histogram of the smoothed RTT of TCP connections as they receive segments, counted
in the kernel and printed at the end or every -i seconds; libbpf-tools' flags (-i -d -T -m -p -P -a -A -b -B
-e -4 -6) and -j (one JSON object per histogram)."""
import json
import socket
import struct
import sys
import time

from ...errors import PytracerError
from ...toolkit import cli as tool_cli
from ...toolkit.addresses import ip_version, ntop, parse_address
from ...toolkit.losses import LOSS_TEXT
from ...toolkit.objects import object_path
from ...toolkit.tracer import RingBufferTracer
from ...toolkit.writers import TextWriter, Writer
from .histogram import bucket_bounds, render

LOSSES = dict(LOSS_TEXT, unbinned="{n} samples of addresses beyond the table of 10240 not counted")
KEY_BY = {None: 0, "laddr": 1, "raddr": 2}


class Histogram:
    """One printed histogram: `key` None (all addresses) or (ip version, address text)."""
    __slots__ = ("ts", "by", "key", "unit", "latency", "cnt", "slots")

    def __init__(self, ts, by, key, unit, latency, cnt, slots):
        self.ts, self.by, self.key, self.unit = ts, by, key, unit
        self.latency, self.cnt, self.slots = latency, cnt, slots

    @property
    def avg(self):
        return self.latency // self.cnt if self.cnt else 0


class TcpRtt(RingBufferTracer):
    """Reads the `hists` map: every `interval` seconds (None: only at the end), the counts added since the
    last read."""
    RECORD = "rtt_key"          # no records are read; the key's layout decodes the map's keys

    def __init__(self, path, rodata, interval, by, unit, **kw):
        super().__init__(path, rodata, 4096, **kw)
        self.interval, self.by, self.unit = interval, by, unit
        self.seen = {}              # key bytes -> the totals last printed
        self.printed = False
        self.next_print = None

    def start(self):
        super().start()
        self.hists = self.obj.maps["hists"]
        self.nslots = self.hists.value_size // 8 - 2
        self.next_print = None if self.interval is None else time.monotonic() + self.interval
        return self

    def loss_counters(self):
        return {"unbinned": self.obj.maps["unbinned"].sum_percpu_u64}

    def _read(self, only_if_new):
        """The histograms of what was counted since the last read (per key; keys with nothing new are left
        out unless no key has anything: then one empty histogram of all addresses, as libbpf-tools
        prints)."""
        now, out, fmt = time.time(), [], f"<{2 + self.nslots}Q"
        for k in list(self.hists.keys()):
            raw = self.hists.lookup(k)
            if raw is None:
                continue
            totals = struct.unpack(fmt, raw[:struct.calcsize(fmt)])
            before = self.seen.get(k, (0,) * len(totals))
            diff = [a - b for a, b in zip(totals, before)]
            self.seen[k] = totals
            if diff[1] == 0:
                continue
            addr, family = k[:16], k[16]
            key = None if self.by is None else (ip_version(family), ntop(family, addr))
            out.append(Histogram(now, self.by, key, self.unit, diff[0], diff[1], diff[2:]))
        if not out and not (only_if_new and self.printed):
            out.append(Histogram(now, self.by if self.by is None else None, None, self.unit, 0, 0,
                                 [0] * self.nslots))
        if out:
            self.printed = True
        out.sort(key=lambda h: (h.key is not None, h.key or ()))
        return out

    def poll_lines(self, timeout=None):
        if self.next_print is None:
            time.sleep(timeout or 0)
            return []
        wait = max(0.0, min(timeout if timeout is not None else self.interval, self.next_print - time.monotonic()))
        time.sleep(wait)
        if time.monotonic() < self.next_print:
            return []
        self.next_print += self.interval
        return self._read(only_if_new=False)

    def drain_lines(self):
        """At the end: what was counted since the last print (with -i: only if anything was)."""
        if self.obj is None:
            return []
        return self._read(only_if_new=self.interval is not None)


def label(h):
    if h.key is None:
        return "All Addresses = ******"
    return f"{'Local' if h.by == 'laddr' else 'Remote'} Address = {h.key[1]}"


class HistColumns(TextWriter):
    loss_text = LOSSES

    def __init__(self, out, extended, timestamps):
        super().__init__(out)
        self.extended, self.timestamps = extended, timestamps

    def header(self):
        self.out.write("Tracing TCP RTT... Hit Ctrl-C to end.\n")
        self.out.flush()

    def write(self, hists):
        parts = []
        if self.timestamps and hists:
            parts.append("%-8s\n" % time.strftime("%H:%M:%S", time.localtime(hists[0].ts)))
        for h in hists:
            parts.append(label(h) + (f" [AVG {h.avg}]" if self.extended else "") + "\n")
            parts.extend(render(h.slots, h.unit))
            parts.append("\n")
        self.emit(parts)


class HistJson(Writer):
    """One object per histogram (schema: README)."""
    loss_text = LOSSES

    def write(self, hists):
        rows = []
        for h in hists:
            last = max((i for i, v in enumerate(h.slots) if v), default=-1)
            rows.append(json.dumps({
                "ts": round(h.ts, 6), "event": "histogram", "key": h.by or "all",
                "family": h.key[0] if h.key else None, "addr": h.key[1] if h.key else None,
                "unit": h.unit, "count": h.cnt, "avg": h.avg, "sum": h.latency,
                "buckets": [{"low": bucket_bounds(i)[0], "high": bucket_bounds(i)[1], "count": h.slots[i]}
                            for i in range(last + 1)]}) + "\n")
        self.emit(rows)

    def lost(self, count, reasons):
        self.out.write('{"ts": %.6f, "event": "lost", "count": %d, "reasons": %s}\n'
                       % (time.time(), count, json.dumps(reasons, sort_keys=True)))
        self.out.flush()


def port(text):
    p = int(text)
    if not 0 < p < 65536:
        raise ValueError(text)
    return p


def tool_flags(p):
    p.add_argument("-i", "--interval", type=float, metavar="SECONDS", help="print a histogram every SECONDS")
    p.add_argument("-T", dest="timestamp", action="store_true", help="print the time before each histogram")
    p.add_argument("-m", "--millisecond", action="store_true", help="milliseconds (default microseconds)")
    p.add_argument("-p", "--lport", type=port, metavar="LPORT", help="only connections with this local port")
    p.add_argument("-P", "--rport", type=port, metavar="RPORT", help="only connections with this remote port")
    p.add_argument("-a", "--laddr", metavar="LADDR", help="only connections with this local address")
    p.add_argument("-A", "--raddr", metavar="RADDR", help="only connections with this remote address")
    by = p.add_mutually_exclusive_group()
    by.add_argument("-b", "--byladdr", action="store_true", help="a histogram per local address")
    by.add_argument("-B", "--byraddr", action="store_true", help="a histogram per remote address")
    p.add_argument("-e", "--extension", action="store_true", help="show the average too")


def parse(p, argv):
    a = tool_cli.parse(p, argv)
    if a.interval is not None and a.interval <= 0:
        p.error("--interval must be positive")
    for name in ("laddr", "raddr"):
        text = getattr(a, name)
        if text is not None:
            try:
                setattr(a, name, parse_address(text))
            except ValueError as e:
                p.error(f"--{name}: {e}")
    return a


def make_tracer(a):
    rodata = tool_cli.filters(a).rodata()
    if a.lport:
        rodata["filter_lport"] = a.lport
    if a.rport:
        rodata["filter_rport"] = a.rport
    for name in ("laddr", "raddr"):
        if getattr(a, name):
            af, raw = getattr(a, name)
            if tool_cli.family(a) and tool_cli.family(a) != ip_version(af):
                raise PytracerError(f"--{name} is an IPv{ip_version(af)} address, and -{tool_cli.family(a)} "
                                    f"was given")
            rodata[f"filter_{name}"] = raw
            rodata[f"{name}_family"] = af
    by = "laddr" if a.byladdr else "raddr" if a.byraddr else None
    rodata["key_by"] = KEY_BY[by]
    rodata["in_ms"] = int(a.millisecond)
    return TcpRtt(object_path("tcprtt"), rodata, a.interval, by, "msecs" if a.millisecond else "usecs",
                  use_cache=not a.no_cache)


def make_writer(a, t0):
    if a.json:
        return HistJson(sys.stdout)
    return HistColumns(sys.stdout, a.extension, a.timestamp)


def run(argv=None):
    # libbpf-tools' -p/-P are ports (local, remote): no owner flags (tcp_probe runs in softirq) nor -P PORT
    p = tool_cli.parser("pytracer tcprtt", "Summarize TCP round trip times as a histogram.", tool_flags,
                        owner_flags=False, port_flag=False)
    return tool_cli.run(argv, lambda argv: parse(p, argv), make_tracer, make_writer)
