"""`pytracer tcpconnlat`: one line per active TCP open whose handshake completed, with its latency (SYN sent to
SYN-ACK received, retransmissions included), named after the process that called connect()."""
import argparse
import sys

from ...toolkit import cli as tool_cli
from ...toolkit.addresses import ip_version, ntop
from ...toolkit.inet import Clock
from ...toolkit.objects import object_path
from ...toolkit.owners import escape_comm
from ...toolkit.tracer import RingBufferTracer
from ...toolkit.writers import JsonLinesWriter, TextWriter

DESCRIPTION = ("Trace TCP connect latency (SYN sent to handshake done) by the process that connected "
               "(tracepoints only).")
FIELDS = ("ts", "pid", "uid", "comm", "family", "laddr", "lport", "raddr", "rport", "netns", "latency_us")


class TcpConnLat(RingBufferTracer):
    RECORD = "tcpconnlat_event"
    RECORD_FIELDS = ("latency_ns", "end_ns", "pid", "uid", "netns", "lport", "rport", "laddr", "raddr", "comm",
                     "family")

    def start(self):
        super().start()
        self.clock = Clock()
        return self

    def convert(self, records, out):
        wall = self.clock.wall
        for lat, end, pid, uid, netns, lport, rport, laddr, raddr, comm, family in records:
            out.append((wall(end), pid, uid, escape_comm(comm), ip_version(family),
                        ntop(family, laddr), lport, ntop(family, raddr), rport, netns, lat // 1000))


class Columns(TextWriter):
    """libbpf-tools' columns: [TIME(s)] PID COMM IP SADDR [LPORT] DADDR DPORT LAT(ms)."""

    def __init__(self, out, t0, timestamps, lport, wide):
        super().__init__(out)
        self.t0, self.timestamps, self.lport = t0, timestamps, lport
        self.w = 39 if wide else 16

    def _row(self, ts, pid, comm, ip, saddr, lport, daddr, dport, lat):
        w = self.w
        parts = ["%-9s" % ts] if self.timestamps else []
        parts.append("%-7s %-16s %-2s %-*s" % (pid, comm, ip, w, saddr))
        if self.lport:
            parts.append("%-6s" % lport)
        parts.append("%-*s %-5s %s" % (w, daddr, dport, lat))
        return " ".join(parts) + "\n"

    def header(self):
        self.out.write(self._row("TIME(s)", "PID", "COMM", "IP", "SADDR", "LPORT", "DADDR", "DPORT", "LAT(ms)"))
        self.out.flush()

    def write(self, lines):
        row, t0 = self._row, self.t0
        self.emit(row("%.3f" % (ts - t0), pid, comm, ip, laddr, lport, raddr, rport, "%.2f" % (lat / 1000))
                  for ts, pid, _uid, comm, ip, laddr, lport, raddr, rport, _ns, lat in lines)


def min_ms(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds: {text!r}") from None
    if not 0 <= v < 1e12:
        raise argparse.ArgumentTypeError("the minimum latency must be 0 ms or more")
    return v


def _flags(p):
    p.add_argument("-L", "--lport", action="store_true", help="show the LPORT column (the local port)")
    p.add_argument("min_ms", nargs="?", type=min_ms, default=0.0,
                   help="only handshakes that took at least this many milliseconds (default 0: all)")


def parse_args(argv):
    p = tool_cli.parser("pytracer tcpconnlat", DESCRIPTION, _flags,
                        helps={"--port": "only connects to this remote port (repeatable, or a comma-separated list)",
                               **tool_cli.owner_helps("connects")})
    return tool_cli.parse(p, argv)


def make_tracer(a):
    rodata = dict(tool_cli.filters(a).rodata(), min_latency_ns=int(a.min_ms * 1e6))
    return TcpConnLat(object_path("tcpconnlat"), rodata, a.ringbuf_mb << 20, use_cache=not a.no_cache)


def make_writer(a, t0):
    if a.json:
        return JsonLinesWriter(sys.stdout, FIELDS)
    return Columns(sys.stdout, t0, a.timestamp, a.lport, a.ipv6)


def run(argv=None):
    return tool_cli.run(argv, parse_args, make_tracer, make_writer)
