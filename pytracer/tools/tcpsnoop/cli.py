"""`pytracer tcpsnoop` (the default tool, so also plain `python -m pytracer`): tcpsnoop's command line and its
two output formats, classic columns and JSON lines (schema: README). The flags and the read loop are the
toolkit's (pytracer/toolkit/cli.py)."""
import json
import sys

from ...errors import PytracerError
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
    "capture": "{n} packets whose bytes did not fit in the capture ring buffer (-w): try --ringbuf-mb or filters",
})


DEFAULT_SNAPLEN = 262144     # as tcpdump's: as much of each packet as the kernel lets pytracer read


def _flags(p):
    p.add_argument("--no-data", action="store_true",
                   help="connections, resets and closes only: no per-segment lines")
    p.add_argument("-w", "--write", metavar="FILE",
                   help="write the packets as pcapng, each labelled with its process ('-': stdout)")
    p.add_argument("-r", "--read", metavar="FILE",
                   help="print the lines of a capture file (pytracer's pcapng, or any pcap/pcapng)")
    p.add_argument("-s", "--snaplen", type=int, metavar="SNAPLEN",
                   help=f"with -w: bytes of each packet to keep (default {DEFAULT_SNAPLEN}; headers are "
                        f"always kept; at most {MAX_CAPTURE} bytes can be read from the kernel per packet)")
    p.add_argument("--print", action="store_true", dest="print_lines",
                   help="with -w FILE: print the lines too")


MAX_CAPTURE = 2048      # bpf_bytecode/capture.bpf.h: CAPTURE_MAX


def parse_args(argv):
    p = tool_cli.parser("pytracer", DESCRIPTION, _flags)
    a = tool_cli.parse(p, argv)
    if a.write and a.read:
        p.error("-w and -r do not go together")
    if a.snaplen is not None and not a.write:
        p.error("-s goes with -w")
    if a.snaplen is not None and not 0 < a.snaplen <= 262144:
        p.error("-s must be between 1 and 262144")
    if a.print_lines and (not a.write or a.write == "-"):
        p.error("--print goes with -w FILE (not -w -, whose stdout is the capture)")
    if a.write and a.no_data:
        p.error("-w writes every packet: --no-data does not go with it")
    if a.read and (a.pid or a.uid is not None or a.comm or a.port or a.ipv4 or a.ipv6 or a.cgroup or
                   a.duration is not None):
        p.error("-r prints the whole file: the filters and -d apply when tracing (-w)")
    return a


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
        """(prefix for '->', prefix for '<-', prefix for a close line, suffix). A line of a capture file
        that names no process (-r of tcpdump's file) has empty UID and PID columns."""
        w = self.w
        if c.pid is None:
            cols = "%5s %6s %-*s %5d %%s %-*s %5d " % ("", "", w, c.laddr, c.lport, w, c.raddr, c.rport)
        else:
            cols = "%5d %6d %-*s %5d %%s %-*s %5d " % (c.uid, c.pid, w, c.laddr, c.lport, w, c.raddr, c.rport)
        return cols % "->", cols % "<-", cols % "--", " " + c.comm

    def write(self, lines):
        rendered, t0, ts_on = self.rendered, self.t0, self.timestamps
        parts = []
        for ts, event, d, conn, size, _payload, close, _cap in lines:
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
        return (', "pid": %s, "uid": %s, "comm": %s, "family": %d, "laddr": "%s", "lport": %d, "raddr": "%s", '
                '"rport": %d, "netns": %d' % ("null" if c.pid is None else "%d" % c.pid,
                                              "null" if c.uid is None else "%d" % c.uid, json.dumps(c.comm),
                                              c.family, c.laddr, c.lport, c.raddr, c.rport, c.netns))

    def write(self, lines):
        rendered = self.rendered
        parts = []
        for ts, event, d, conn, size, payload, close, _cap in lines:
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


def snaplen(a):
    return (a.snaplen or DEFAULT_SNAPLEN) if a.write else 0


def make_tracer(a):
    from .tracer import TcpSnoop

    return TcpSnoop(filters=tool_cli.filters(a), no_data=a.no_data, ringbuf_size=a.ringbuf_mb << 20,
                    use_cache=not a.no_cache, snaplen=min(snaplen(a), MAX_CAPTURE))


def _text_writer(a, t0):
    return JsonWriter(sys.stdout) if a.json else ClassicWriter(sys.stdout, a.timestamp, a.ipv6, t0)


def make_writer(a, t0):
    if not a.write:
        return _text_writer(a, t0)
    from .pcap import PcapngWriter

    if a.write == "-":
        out = sys.stdout.buffer
    else:
        try:
            out = open(a.write, "wb")
        except OSError as e:
            raise PytracerError(f"-w {a.write}: {e.strerror}") from None
    # the interfaces' snap length: what the kernel side may capture; 0 (none declared) when -s is below
    # it, since the headers are kept whole even where they are longer than -s
    declared = MAX_CAPTURE if snaplen(a) >= MAX_CAPTURE else 0
    return PcapngWriter(out, declared, _text_writer(a, t0) if a.print_lines else None, LOSS_TEXT,
                        owns_out=a.write != "-")


def read_file(a):
    """-r FILE: the lines of a capture file, in the chosen format. Exit status 1 for a bad file."""
    from .pcap import read_lines

    writer = _text_writer(a, None)
    reported = []
    try:
        f = sys.stdin.buffer if a.read == "-" else open(a.read, "rb")
    except OSError as e:
        print(f"pytracer: -r {a.read}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        writer.header()
        batch = []
        t0 = None
        for line in read_lines(a.read, f, on_loss=reported.append):
            if t0 is None:
                t0 = writer.t0 = line[0]
            batch.append(line)
            if len(batch) >= 1024:
                writer.write(batch)
                batch = []
        if batch:
            writer.write(batch)
        for n in reported:
            print(f"pytracer: the capture records {n} events lost while it was written", file=sys.stderr)
        return 0
    except PytracerError as e:
        if batch:
            writer.write(batch)
        print(f"pytracer: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        tool_cli._quiet_stdout()
        return 0
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def run(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.read:
        return read_file(args)
    return tool_cli.run(argv, lambda _argv: args, make_tracer, make_writer)


def main(argv=None):
    tool_cli.main(lambda: run(argv))
