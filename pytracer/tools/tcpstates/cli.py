"""`pytracer tcpstates`: one line per TCP state change; record and state names from the object's BTF."""
import socket
import sys

from ...errors import PytracerError
from ...toolkit import cli as tool_cli
from ...toolkit.objects import object_path
from ...toolkit.owners import escape_comm
from ...toolkit.tracer import RingBufferTracer
from ...toolkit.writers import ColumnsWriter, JsonLinesWriter

FIELDS = ("pid", "comm", "laddr", "lport", "raddr", "rport", "oldstate", "newstate")
COLUMNS = "%6s %-15s %-15s %5s %-15s %5s %s -> %s\n"


class TcpStates(RingBufferTracer):
    RECORD, ENUMS = "tcpstates_event", ("tcp_state",)

    def convert(self, records, out):
        names = {v: k[4:] for k, v in self.k.items()}        # 1: "ESTABLISHED", ...
        for pid, lport, rport, laddr, raddr, comm, family, old, new in records:
            af, n = (socket.AF_INET, 4) if family == socket.AF_INET else (socket.AF_INET6, 16)
            out.append((pid, escape_comm(comm), socket.inet_ntop(af, laddr[:n]), lport,
                        socket.inet_ntop(af, raddr[:n]), rport, names.get(old, old), names.get(new, new)))


def make_tracer(a):
    if a.pid or a.uid is not None or a.comm or a.cgroup:
        raise PytracerError("tcpstates filters on ports and family only (state changes run in softirq)")
    return TcpStates(object_path("tcpstates"), tool_cli.filters(a).rodata(), a.ringbuf_mb << 20,
                     use_cache=not a.no_cache)


def make_writer(a, t0):
    return JsonLinesWriter(sys.stdout, FIELDS) if a.json else ColumnsWriter(sys.stdout, COLUMNS, FIELDS)


def run(argv=None):
    p = tool_cli.parser("pytracer tcpstates", "Trace TCP state changes.")
    return tool_cli.run(argv, lambda argv: tool_cli.parse(p, argv), make_tracer, make_writer)
