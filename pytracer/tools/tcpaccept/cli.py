"""`pytracer tcpaccept`: one line per TCP connection accept()/accept4() returned, named after the process
that accepted it (the syscall's return runs in that process; the handshake before it ran in softirq)."""
import sys

from ...toolkit import cli as tool_cli
from ...toolkit.addresses import ip_version, ntop
from ...toolkit.inet import Clock
from ...toolkit.objects import object_path
from ...toolkit.owners import escape_comm
from ...toolkit.tracer import RingBufferTracer
from ...toolkit.writers import JsonLinesWriter, TextWriter

DESCRIPTION = "Trace TCP accepts (accept(), accept4()) by the process that accepted (tracepoints only)."
FIELDS = ("ts", "pid", "uid", "comm", "family", "laddr", "lport", "raddr", "rport", "netns")


class TcpAccept(RingBufferTracer):
    RECORD = "tcpaccept_event"
    RECORD_FIELDS = ("ts_ns", "pid", "uid", "netns", "lport", "rport", "laddr", "raddr", "comm", "family")

    def start(self):
        super().start()
        self.clock = Clock()
        return self

    def convert(self, records, out):
        wall = self.clock.wall
        for ts, pid, uid, netns, lport, rport, laddr, raddr, comm, family in records:
            out.append((wall(ts), pid, uid, escape_comm(comm), ip_version(family),
                        ntop(family, laddr), lport, ntop(family, raddr), rport, netns))


class Columns(TextWriter):
    """bcc's columns: [TIME(s)] PID COMM IP RADDR RPORT LADDR LPORT."""

    def __init__(self, out, t0, timestamps, wide):
        super().__init__(out)
        self.t0, self.timestamps = t0, timestamps
        self.w = 39 if wide else 16

    def _row(self, ts, pid, comm, ip, raddr, rport, laddr, lport):
        w = self.w
        row = "%-7s %-16s %-2s %-*s %-5s %-*s %s\n" % (pid, comm, ip, w, raddr, rport, w, laddr, lport)
        return ("%-9s " % ts + row) if self.timestamps else row

    def header(self):
        self.out.write(self._row("TIME(s)", "PID", "COMM", "IP", "RADDR", "RPORT", "LADDR", "LPORT"))
        self.out.flush()

    def write(self, lines):
        row, t0 = self._row, self.t0
        self.emit(row("%.3f" % (ts - t0), pid, comm, ip, raddr, rport, laddr, lport)
                  for ts, pid, _uid, comm, ip, laddr, lport, raddr, rport, _ns in lines)


def parse_args(argv):
    p = tool_cli.parser("pytracer tcpaccept", DESCRIPTION,
                        helps={"--port": "only connections accepted on this local port (repeatable, or a "
                                         "comma-separated list)", **tool_cli.owner_helps("accepts")})
    return tool_cli.parse(p, argv)


def make_tracer(a):
    return TcpAccept(object_path("tcpaccept"), tool_cli.filters(a).rodata(), a.ringbuf_mb << 20,
                     use_cache=not a.no_cache)


def make_writer(a, t0):
    return JsonLinesWriter(sys.stdout, FIELDS) if a.json else Columns(sys.stdout, t0, a.timestamp, a.ipv6)


def run(argv=None):
    return tool_cli.run(argv, parse_args, make_tracer, make_writer)
