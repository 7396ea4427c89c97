"""`python -m pytracer`: tcpsnoop for Linux. Argument parsing, output formats, and Unix-tool manners
(Ctrl-C, SIGTERM, -d and a closed stdout end quietly with status 0; errors are one clear message)."""
import argparse
import json
import os
import signal
import sys
import time

from . import __version__, features
from .errors import PytracerError

CLASSIC_HEADER = "%5s %6s %-*s %5s %2s %-*s %5s %5s %s"
DIRS = {"out": "->", "in": "<-"}


LOSS_TEXT = {
    "ringbuf": "{n} found the ring buffer full: try --ringbuf-mb or filters",
    "skipped": "{n} tracepoint runs skipped by the kernel while another BPF program ran on that CPU",
    "pending": "{n} held for connections whose owner was not known yet (not accepted, or handed off), "
               "beyond the buffer's bound or when pytracer stopped",
    "unattributed": "{n} segments of no socket pytracer knows (evicted from its tables, or never seen)",
    "malformed": "{n} records of an unexpected size: the BPF object does not match this pytracer",
}


def describe_losses(reasons):
    return "; ".join(LOSS_TEXT[k].format(n=n) for k, n in sorted(reasons.items()))


class _Stop(Exception):
    """Raised from the SIGTERM handler to leave the read loop through the normal cleanup path."""


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="pytracer",
        description="Trace TCP connections and segments, named after the process that caused them "
                    "(tcpsnoop for Linux, eBPF tracepoints only).")
    p.add_argument("-t", "--timestamp", action="store_true", help="print seconds since start as the first column")
    p.add_argument("-p", "--pid", type=int, action="append", default=[], metavar="PID",
                   help="only sockets owned by this process (repeatable)")
    p.add_argument("-u", "--uid", type=int, help="only sockets owned by this user id")
    p.add_argument("-c", "--comm", help="only sockets owned by a task with this name")
    p.add_argument("-P", "--port", type=int, action="append", default=[], metavar="PORT",
                   help="only connections with this local or remote port (repeatable)")
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("-4", "--ipv4", action="store_true", help="IPv4 only")
    fam.add_argument("-6", "--ipv6", action="store_true", help="IPv6 only (wide address columns)")
    p.add_argument("--cgroup", metavar="PATH", help="only sockets owned by tasks in this cgroup v2 (or below)")
    p.add_argument("--no-data", action="store_true",
                   help="connections, resets and closes only: no per-segment lines")
    p.add_argument("-j", "--json", action="store_true", help="one JSON object per line (schema: README)")
    p.add_argument("-d", "--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("--ringbuf-mb", type=int, default=4, metavar="MB",
                   help="kernel ring buffer size in MiB, a power of two (default 4)")
    p.add_argument("--no-cache", action="store_true", help="do not use the relocated-program cache")
    p.add_argument("--version", action=features.version_action(__version__))  # and the kernel features
    a = p.parse_args(argv)
    mb = a.ringbuf_mb
    if mb <= 0 or mb & (mb - 1):
        p.error("--ringbuf-mb must be a power of two")
    if a.duration is not None and a.duration < 0:
        p.error("--duration must not be negative")
    return a


class _Writer:
    """Formats lines. A connection's constant columns are rendered once per Conn and reused: per line only
    the time, size and (JSON) event fields are formatted."""

    MAX_CACHED = 65536

    def __init__(self, out):
        self.out = out
        self._conn_text = {}

    def rendered(self, conn):
        text = self._conn_text.get(conn)
        if text is None:
            if len(self._conn_text) >= self.MAX_CACHED:
                self._conn_text.clear()
            text = self._conn_text[conn] = self.render(conn)
        return text

    def emit(self, parts):
        self.out.write("".join(parts))
        self.out.flush()


class ClassicWriter(_Writer):
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
        self.emit(parts)

    def lost(self, count, reasons):
        sys.stderr.write(f"pytracer: {count} events lost ({describe_losses(reasons)})\n")
        sys.stderr.flush()


class JsonWriter(_Writer):
    def header(self):
        pass

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
        self.emit(parts)

    def lost(self, count, reasons):
        self.out.write('{"ts": %.6f, "event": "lost", "count": %d, "reasons": %s}\n'
                       % (time.time(), count, json.dumps(reasons, sort_keys=True)))
        self.out.flush()


def _quiet_stdout():
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush cannot complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass


def run(argv=None):
    def on_term(signum, frame):
        raise _Stop()

    # first of all, so that a SIGTERM at any moment takes the same quiet way out
    signal.signal(signal.SIGTERM, on_term)
    a = parse_args(sys.argv[1:] if argv is None else argv)
    from .syscall import missing_capabilities
    from .tcpsnoop import TcpSnoop

    if os.geteuid() != 0 and missing_capabilities():
        print(f"pytracer: needs root, or CAP_BPF and CAP_PERFMON (missing: {', '.join(missing_capabilities())}). "
              f"Run it with sudo.", file=sys.stderr)
        return 4
    if a.no_cache:
        os.environ["PYTRACER_CACHE_DIR"] = "off"
    family = 4 if a.ipv4 else 6 if a.ipv6 else None
    snoop = writer = None
    try:
        snoop = TcpSnoop(pids=a.pid, uid=a.uid, comm=a.comm, ports=a.port, family=family, cgroup=a.cgroup,
                         no_data=a.no_data, ringbuf_size=a.ringbuf_mb << 20, use_cache=not a.no_cache)
        snoop.start()
        for note in snoop.fallbacks:
            print(f"pytracer: note: {note}", file=sys.stderr)
        t0 = time.time()
        writer = JsonWriter(sys.stdout) if a.json else ClassicWriter(sys.stdout, a.timestamp, a.ipv6, t0)
        writer.header()
        end = None if a.duration is None else time.monotonic() + a.duration
        last_loss_check = 0.0
        while True:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            wait = 0.5 if end is None else min(0.5, end - now)
            lines = snoop.poll_lines(wait)
            if lines:
                writer.write(lines)
            if now - last_loss_check >= 0.5:
                last_loss_check = now
                _report_losses(snoop, writer)
        _drain(snoop, writer)
        return 0
    except (KeyboardInterrupt, _Stop):
        _final_report(snoop, writer)
        return 0
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except PytracerError as e:
        print(f"pytracer: {e}", file=sys.stderr)
        return e.exit_status
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if snoop is not None:
            snoop.close()


def _report_losses(snoop, writer):
    lost = snoop.new_losses()
    if lost:
        writer.lost(lost, snoop.last_losses)


def _drain(snoop, writer):
    """Print what is already in the ring buffer, and any losses."""
    lines = snoop.drain_lines()
    if lines:
        writer.write(lines)
    _report_losses(snoop, writer)


def _final_report(snoop, writer):
    """On Ctrl-C/SIGTERM: print what is already read and any losses, then go."""
    if writer is None or snoop is None or snoop.obj is None:
        return
    try:
        _drain(snoop, writer)
    except BrokenPipeError:
        _quiet_stdout()
    except (PytracerError, KeyboardInterrupt, _Stop):
        pass


def main():
    try:
        status = run()
    except (KeyboardInterrupt, _Stop):
        status = 0
    sys.exit(status)
