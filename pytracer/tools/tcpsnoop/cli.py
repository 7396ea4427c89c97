"""`pytracer tcpsnoop` (the default tool, so also plain `python -m pytracer`): tcpsnoop's command line and its
two output formats, classic columns and JSON lines (schema: README). The flags and the read loop are the
toolkit's (pytracer/toolkit/cli.py)."""
import json
import sys

from ...toolkit import cli as tool_cli
from ...toolkit.losses import LOSS_TEXT as COMMON_LOSS_TEXT
from ...toolkit.writers import JsonLinesWriter, TextWriter

DESCRIPTION = ("Trace TCP connections and segments, named after the process that caused them "
               "(tcpsnoop for Linux, eBPF tracepoints only).")
CLASSIC_HEADER = "%5s %6s %-*s %5s %2s %-*s %5s %5s %s"

# the wording of tcpsnoop's own loss reasons, next to the common ones
LOSS_TEXT = dict(COMMON_LOSS_TEXT, **{
    "pending": "{n} held for connections whose owner was not known yet (not accepted, or handed off), "
               "beyond the buffer's bound or when pytracer stopped",
    "unattributed": "{n} segments of sockets pytracer could not follow (its socket table was full)",
})


def _flags(p):
    p.add_argument("--no-data", action="store_true",
                   help="connections, resets and closes only: no per-segment lines")


def parse_args(argv):
    return tool_cli.parse(tool_cli.parser("pytracer", DESCRIPTION, _flags), argv)


class ClassicWriter(TextWriter):
    loss_text = LOSS_TEXT

    def __init__(self, out, timestamps, wide, t0):
        super().__init__(out)
        self.t0 = t0
        self.w = 39 if wide else 15
        self.timestamps = timestamps

    def header(self):
        h = CLASSIC_HEADER % ("UID", "PID", self.w, "LADDR", "LPORT", "DR", self.w, "RADDR", "RPORT", "SIZE", "CMD")
        self.out.write(("%-9s " % "TIME(s)" if self.timestamps else "") + h + "\n")
        self.out.flush()

    def render(self, c):
        """(prefix for '->', prefix for '<-', prefix for a close line, suffix)."""
        w = self.w
        cols = "%5d %6d %-*s %5d %%s %-*s %5d " % (c.uid, c.pid, w, c.laddr, c.lport, w, c.raddr, c.rport)
        return cols % "->", cols % "<-", cols % "--", " " + c.comm

    def write(self, lines):
        rendered, t0, ts_on = self.rendered, self.t0, self.timestamps
        parts = []
        for ts, event, d, conn, size, _payload, close in lines:
            out_pre, in_pre, close_pre, suffix = rendered(conn)
            if ts_on:
                parts.append("%-9.3f " % (ts - t0))
            if close is None:
                parts.append("%s%5d%s\n" % (out_pre if d == "out" else in_pre, size, suffix))
            else:
                tx, rx, dur = close
                parts.append("%s    -%s close tx=%d rx=%d ms=%s\n" % (
                    close_pre, suffix, tx, rx, "-" if dur is None else "%.3f" % dur))
                self.forget(conn)
        self.emit(parts)


class JsonWriter(JsonLinesWriter):
    loss_text = LOSS_TEXT

    def render(self, c):
        return (', "pid": %d, "uid": %d, "comm": %s, "family": %d, "laddr": "%s", "lport": %d, "raddr": "%s", '
                '"rport": %d, "netns": %d' % (c.pid, c.uid, json.dumps(c.comm), c.family, c.laddr, c.lport,
                                              c.raddr, c.rport, c.netns))

    def write(self, lines):
        rendered = self.rendered
        parts = []
        for ts, event, d, conn, size, payload, close in lines:
            if close is None:
                parts.append('{"ts": %.6f, "event": "%s", "dir": "%s"%s, "size": %d, "payload": %d}\n'
                             % (ts, event, d, rendered(conn), size, payload))
            else:
                tx, rx, dur = close
                parts.append('{"ts": %.6f, "event": "close", "dir": "%s"%s, "size": 0, "payload": 0, '
                             '"tx_bytes": %d, "rx_bytes": %d, "duration_ms": %s}\n'
                             % (ts, d, rendered(conn), tx, rx, "null" if dur is None else "%.3f" % dur))
                self.forget(conn)
        self.emit(parts)


def make_tracer(a):
    from .tracer import TcpSnoop

    return TcpSnoop(filters=tool_cli.filters(a), no_data=a.no_data, ringbuf_size=a.ringbuf_mb << 20,
                    use_cache=not a.no_cache)


def make_writer(a, t0):
    return JsonWriter(sys.stdout) if a.json else ClassicWriter(sys.stdout, a.timestamp, a.ipv6, t0)


def run(argv=None):
    return tool_cli.run(argv, parse_args, make_tracer, make_writer)


def main(argv=None):
    tool_cli.main(lambda: run(argv))
