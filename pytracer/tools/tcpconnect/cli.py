"""`pytracer tcpconnect`: one line per active TCP open, named after the process that called connect(), printed
when the handshake ends (established, or failed with the kernel's error); `-c` counts them instead.

Lines are printed at the outcome, not when connect() is called as libbpf-tools' tcpconnect does: only then
is the result known, and the local port too (the kernel picks it after the state change that starts the
connection). An established connection's line comes one round trip after the connect(); a failing one when
the kernel gives up (a reset at once, a timeout after the SYN retries: ~127 s by default).
"""
import errno
import json
import sys

from ...attach import tracepoint_exists
from ...toolkit import cli as tool_cli
from ...toolkit.addresses import ip_version, ntop
from ...toolkit.inet import Clock
from ...toolkit.objects import object_path
from ...toolkit.owners import escape_comm
from ...toolkit.tracer import RingBufferTracer
from ...toolkit.writers import JsonLinesWriter, TextWriter

DESCRIPTION = ("Trace TCP active opens (connect()) by process, with their result: established, or the error "
               "the kernel gave (tracepoints only).")
# A line: what one printed line / JSON object holds, in this order.
FIELDS = ("ts", "pid", "uid", "comm", "family", "laddr", "lport", "raddr", "rport", "netns", "result", "error",
          "latency_us")
RESULTS = {"CONNECT_ESTABLISHED": "established", "CONNECT_FAILED": "failed", "CONNECT_CLOSED": "closed"}


def error_name(n):
    return errno.errorcode.get(n, str(n)) if n else None


class TcpConnect(RingBufferTracer):
    RECORD, ENUMS = "tcpconnect_event", ("connect_result",)
    RECORD_FIELDS = ("start_ns", "end_ns", "pid", "uid", "netns", "error", "lport", "rport", "laddr", "raddr",
                     "comm", "family", "result")

    def __init__(self, *args, **kw):
        super().__init__(*args, programs=self.wanted, **kw)

    def wanted(self, prog):
        """Every program; the connect() syscall's pair only where the kernel has syscall tracepoints
        (CONFIG_FTRACE_SYSCALLS): without them a connect() that fails by itself is still reported."""
        if prog.attach_kind == "tracepoint" and not tracepoint_exists(prog.attach_target):
            note = (f"this kernel has no tracepoint {prog.attach_target.replace('/', ':')}: a connect() that "
                    "fails by itself with no socket error (EADDRNOTAVAIL: no local port left) shows as CLOSED")
            if note not in self.fallbacks:
                self.fallbacks.append(note)
            return False
        return True

    def start(self):
        super().start()
        self.clock = Clock()
        self.results = {v: RESULTS.get(k, k.lower()) for k, v in self.k.items()}
        return self

    def convert(self, records, out):
        wall, results = self.clock.wall, self.results
        for start, end, pid, uid, netns, err, lport, rport, laddr, raddr, comm, family, result in records:
            out.append((wall(end), pid, uid, escape_comm(comm), ip_version(family),
                        ntop(family, laddr), lport, ntop(family, raddr), rport, netns,
                        results.get(result, str(result)), error_name(err), (end - start) // 1000))


class Columns(TextWriter):
    """libbpf-tools' columns ([TIME(s)] [UID] PID COMM IP SADDR [LPORT] DADDR DPORT) and RESULT: OK, the error's
    name, or CLOSED (closed by the program before the handshake ended)."""

    def __init__(self, out, t0, timestamps, uid, lport, wide):
        super().__init__(out)
        self.t0, self.timestamps, self.uid, self.lport = t0, timestamps, uid, lport
        self.w = 39 if wide else 16

    def _row(self, ts, uid, pid, comm, ip, saddr, lport, daddr, dport, result):
        parts = []
        if self.timestamps:
            parts.append("%-9s" % ts)
        if self.uid:
            parts.append("%-6s" % uid)
        parts.append("%-7s %-16s %-2s %-*s" % (pid, comm, ip, self.w, saddr))
        if self.lport:
            parts.append("%-6s" % lport)
        parts.append("%-*s %-5s %s" % (self.w, daddr, dport, result))
        return " ".join(parts) + "\n"

    def header(self):
        self.out.write(self._row("TIME(s)", "UID", "PID", "COMM", "IP", "SADDR", "LPORT", "DADDR", "DPORT",
                                 "RESULT"))
        self.out.flush()

    def write(self, lines):
        row, t0 = self._row, self.t0
        self.emit(row("%.3f" % (ts - t0), uid, pid, comm, ip, laddr, lport, raddr, rport,
                      "OK" if result == "established" else err or result.upper())
                  for ts, pid, uid, comm, ip, laddr, lport, raddr, rport, _ns, result, err, _lat in lines)


class Json(JsonLinesWriter):
    def __init__(self, out):
        super().__init__(out, FIELDS)


class Counts(TextWriter):
    """-c: connects per (source address, destination address, destination port), printed when tracing ends."""

    def __init__(self, out, json_lines):
        super().__init__(out)
        self.json_lines = json_lines
        self.counts = {}

    def write(self, lines):
        counts = self.counts
        for line in lines:
            key = (line[4], line[5], line[7], line[8])          # ip, laddr, raddr, rport
            counts[key] = counts.get(key, 0) + 1

    def lost(self, count, reasons):
        if self.json_lines:
            JsonLinesWriter.lost(self, count, reasons)
        else:
            super().lost(count, reasons)

    def summary(self):
        rows = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if self.json_lines:
            self.emit(json.dumps({"family": ip, "laddr": laddr, "raddr": raddr, "rport": rport,
                                  "connects": n}) + "\n" for (ip, laddr, raddr, rport), n in rows)
            return
        w = max([16] + [len(k[1]) for k, _ in rows] + [len(k[2]) for k, _ in rows])
        self.emit(["%-*s %-*s %-5s %s\n" % (w, "LADDR", w, "RADDR", "RPORT", "CONNECTS")] +
                  ["%-*s %-*s %-5d %d\n" % (w, laddr, w, raddr, rport, n) for (_ip, laddr, raddr, rport), n in rows])


def _flags(p):
    p.add_argument("-c", "--count", action="store_true",
                   help="count connects per source address, destination address and port; print at the end")
    p.add_argument("-U", "--print-uid", action="store_true", help="show the UID column")
    p.add_argument("-L", "--lport", action="store_true", help="show the LPORT column (the local port)")


def parse_args(argv):
    p = tool_cli.parser("pytracer tcpconnect", DESCRIPTION, _flags, own_short=("-c",),
                        helps={"--port": "only connects to this remote port (repeatable, or a comma-separated list)",
                               **tool_cli.owner_helps("connects")})
    return tool_cli.parse(p, argv)


def make_tracer(a):
    return TcpConnect(object_path("tcpconnect"), tool_cli.filters(a).rodata(), a.ringbuf_mb << 20,
                      use_cache=not a.no_cache)


def make_writer(a, t0):
    if a.count:
        return Counts(sys.stdout, a.json)
    if a.json:
        return Json(sys.stdout)
    return Columns(sys.stdout, t0, a.timestamp, a.print_uid, a.lport, a.ipv6)


def run(argv=None):
    return tool_cli.run(argv, parse_args, make_tracer, make_writer)
