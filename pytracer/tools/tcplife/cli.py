"""`pytracer tcplife`: a line per closed TCP connection, with libbpf-tools' columns and flags (-p -L -D -T -t
-w -4 -6) and the common ones (-u -c -P --cgroup -j -d)."""
import socket
import sys
import time

from ...errors import PytracerError
from ...toolkit import cli as tool_cli
from ...toolkit import sockowner
from ...toolkit.objects import object_path
from ...toolkit.owners import escape_comm
from ...toolkit.tracer import RingBufferTracer
from ...toolkit.writers import JsonLinesWriter, TextWriter

DESCRIPTION = ("Trace the lifespan of TCP connections: one line when each closes, named after the process "
               "holding the socket (tcplife for Linux, eBPF tracepoints only).")
MAX_PORTS = 8       # tcplife.bpf.c: MAX_LIFE_PORTS
# a line: (ts, pid, uid, comm, family, laddr, lport, raddr, rport, netns, tx_bytes, rx_bytes, duration_ms)
JSON_FIELDS = ("ts", "pid", "uid", "comm", "family", "laddr", "lport", "raddr", "rport", "netns", "tx_bytes",
               "rx_bytes", "duration_ms")
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


class TcpLife(RingBufferTracer):
    RECORD = "tcplife_event"

    def start(self):
        if self.obj is not None:
            return self
        super().start()
        try:
            sockowner.seed(self.obj)        # connections open now are named when they close
            self._epoch = time.time() - time.monotonic()
        except BaseException:
            self.close()
            raise
        return self

    def convert(self, records, out):
        epoch = self._epoch
        for ts_ns, span_ns, tx, rx, pid, uid, netns, lport, rport, laddr, raddr, comm, family, known in records:
            if family == socket.AF_INET:
                fam, la, ra = 4, socket.inet_ntop(socket.AF_INET, laddr[:4]), socket.inet_ntop(socket.AF_INET, raddr[:4])
            else:
                fam, la, ra = 6, socket.inet_ntop(socket.AF_INET6, laddr), socket.inet_ntop(socket.AF_INET6, raddr)
            out.append((epoch + ts_ns / 1e9, pid if known else None, uid if known else None,
                        escape_comm(comm) if known else None, fam, la, lport, ra, rport, netns, tx, rx,
                        round(span_ns / 1e6, 3) if span_ns else None))


def port_list(text):
    """-L/-D: a comma-separated list of ports."""
    try:
        ports = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise PytracerError(f"not a port list: {text!r} (ports separated by commas, e.g. 80,443)") from None
    if not ports or any(not 0 < p < 65536 for p in ports):
        raise PytracerError(f"ports must be between 1 and 65535: {text!r}")
    return ports


def _flags(p):
    p.add_argument("-L", "--localport", action="append", default=[], metavar="PORTS",
                   help="only connections with one of these local ports (comma-separated)")
    p.add_argument("-D", "--remoteport", action="append", default=[], metavar="PORTS",
                   help="only connections with one of these remote ports (comma-separated)")
    p.add_argument("-T", "--time", action="store_true", help="print the time of day (HH:MM:SS) as a column")
    p.add_argument("-w", "--wide", action="store_true", help="wide address columns (IPv6)")


def parse_args(argv):
    return tool_cli.parse(tool_cli.parser("pytracer tcplife", DESCRIPTION, _flags), argv)


def _ports_rodata(name, lists):
    ports = [p for text in lists for p in port_list(text)]
    if len(ports) > MAX_PORTS:
        raise PytracerError(f"at most {MAX_PORTS} ports with {'-L' if name == 'local' else '-D'}")
    if not ports:
        return {}
    return {f"{name}_ports": b"".join(p.to_bytes(2, "little") for p in ports), f"n_{name}_ports": len(ports)}


def make_tracer(a):
    rodata = dict(tool_cli.filters(a).rodata(), **_ports_rodata("local", a.localport),
                  **_ports_rodata("remote", a.remoteport))
    have_sock_len = sockowner.have_sock_length_tracepoints()
    t = TcpLife(object_path("tcplife"), rodata, a.ringbuf_mb << 20, use_cache=not a.no_cache,
                programs=lambda p: sockowner.wanted_program(p, have_sock_len, per_packet=False,
                                                            syscall_fallback=False))
    if not have_sock_len:
        t.fallbacks.append("sock:sock_send_length is missing (Linux < 6.3): a socket handed to another process "
                           "is named after the process that accepted, connected or closed it")
    return t


class ColumnsWriter(TextWriter):
    """libbpf-tools' tcplife columns: [TIME] [TIME(s)] PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS."""

    def __init__(self, out, a, t0):
        super().__init__(out)
        self.t0, self.time, self.timestamps = t0, a.time, a.timestamp
        self.w = 26 if a.wide or a.ipv6 else 15     # as libbpf-tools: 26 wide

    def header(self):
        w = self.w
        self.out.write(("%-8s " % "TIME" if self.time else "") + ("%-9s " % "TIME(s)" if self.timestamps else "")
                       + "%-7s %-16s %-*s %-5s %-*s %-5s %-6s %-6s %s\n"
                       % ("PID", "COMM", w, "LADDR", "LPORT", w, "RADDR", "RPORT", "TX_KB", "RX_KB", "MS"))
        self.out.flush()

    def write(self, lines):
        w, parts = self.w, []
        for ts, pid, _uid, comm, _fam, la, lport, ra, rport, _ns, tx, rx, ms in lines:
            if self.time:
                parts.append("%-8s " % time.strftime("%H:%M:%S", time.localtime(ts)))
            if self.timestamps:
                parts.append("%-9.3f " % (ts - self.t0))
            parts.append("%-7s %-16s %-*s %-5d %-*s %-5d %-6.2f %-6.2f %s\n"
                         % ("-" if pid is None else pid, "-" if comm is None else comm, w, la, lport, w, ra,
                            rport, tx / 1024, rx / 1024, "-" if ms is None else "%.2f" % ms))
        self.emit(parts)


def make_writer(a, t0):
    return JsonLinesWriter(sys.stdout, JSON_FIELDS) if a.json else ColumnsWriter(sys.stdout, a, t0)


def run(argv=None):
    return tool_cli.run(argv, parse_args, make_tracer, make_writer)
