"""`pytracer tcptop [INTERVAL [COUNT]]`: bcc's tcptop columns (PID COMM LADDR RADDR RX_KB TX_KB) every
INTERVAL seconds, the screen cleared with ANSI codes (-C: not cleared), or with -j one JSON object per process
per interval. The kernel keeps cumulative totals per (owner, connection) in the `top` map; every interval
this reads them and prints what each moved since the last."""
import json
import socket
import sys
import time

from ...toolkit import cli as tool_cli
from ...toolkit import sockowner
from ...toolkit.losses import LOSS_TEXT as COMMON_LOSS_TEXT, skipped_runs, with_twins
from ...toolkit.objects import object_path
from ...toolkit.owners import escape_comm
from ...toolkit.writers import TextWriter

DESCRIPTION = ("Summarize TCP send/recv throughput by process and connection every interval (tcptop for "
               "Linux, eBPF tracepoints only).")
# the owner-tracking programs tcptop needs besides its counters (which refresh owners at every send/recv);
# their nest.bpf.h twins come with them (losses.with_twins)
OWNER_PROGRAMS = ("on_state", "on_destroy")
COUNTERS = ("top_send", "top_recv")
# below Linux 6.3 (no sock:sock_*_length) in place of COUNTERS: the same calls, from syscall entry (which also
# refreshes owners and sees close()) to exit
FALLBACK_COUNTERS = ("top_sys_enter", "top_sys_exit")
LOSS_TEXT = dict(COMMON_LOSS_TEXT, table_full="{n} sends/receives of connections not counted: the kernel's "
                                              "table of connections was full")
CLEAR = "\033[H\033[2J"
IDLE_INTERVALS = 2       # an entry unchanged this many intervals is removed from the kernel's table


class TcpTop:
    """Reads the kernel's per-(owner, connection) totals every `interval` seconds: poll_lines() returns
    one item per interval, (ts, interval, rows), rows being (pid, uid, comm, family, laddr, lport, raddr,
    rport, netns, rx_bytes, tx_bytes) of what moved in that interval."""

    def __init__(self, filters, interval, count=None, use_cache=True):
        self.filters, self.interval, self.count, self.use_cache = filters, interval, count, use_cache
        self.obj = None
        self.fallbacks = []
        self.last_losses = {}
        self._prev = {}          # key bytes -> (rx, tx, intervals without change)
        self._reported = {}
        self.intervals = 0

    def start(self):
        from ...loader import BPFObject

        if self.obj is not None:
            return self
        counters = COUNTERS
        if not sockowner.have_sock_length_tracepoints():
            counters = FALLBACK_COUNTERS
            self.fallbacks.append("sock:sock_send_length is missing (Linux < 6.3): bytes are counted between "
                                  "syscall entry and exit instead (read, write, send, recv and their v/to/msg "
                                  "forms; sendfile, splice and sendmmsg/recvmmsg are not seen)")
        self.obj = BPFObject(object_path("tcptop"), rodata=self.filters.rodata(),
                             programs=with_twins(OWNER_PROGRAMS + counters), use_cache=self.use_cache)
        try:
            self.obj.attach()
            self.top = self.obj.maps["top"]
            self.key = self.obj.record("tcptop_key")
            self.value = self.obj.record("tcptop_value")
        except BaseException:
            self.close()
            raise
        self._next = time.monotonic() + self.interval
        return self

    def close(self):
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def poll_lines(self, timeout=None):
        if self.count is not None and self.intervals >= self.count:
            raise tool_cli.Stop()            # COUNT intervals printed: done
        now = time.monotonic()
        if timeout is not None and now + timeout < self._next:
            time.sleep(timeout)
            return []
        time.sleep(max(0.0, self._next - now))
        self._next += self.interval
        self.intervals += 1
        return [(time.time(), self.interval, self.snapshot())]

    def drain_lines(self):
        """Stopping (Ctrl-C, SIGTERM, -d) within an interval: what moved since the last table, as a last,
        shorter one (nothing once COUNT tables are printed)."""
        if self.obj is None or (self.count is not None and self.intervals >= self.count):
            return []
        rows = self.snapshot()
        return [(time.time(), round(self.interval - (self._next - time.monotonic()), 3), rows)] if rows else []

    def snapshot(self):
        """What every (owner, connection) moved since the last snapshot; idle entries leave the table."""
        rows, seen = [], {}
        for kb in list(self.top.keys()):
            vb = self.top.lookup(kb)
            if vb is None:
                continue
            tx, rx, uid, comm = self.value.struct.unpack_from(vb)
            prx, ptx, idle = self._prev.get(kb, (0, 0, 0))
            if (rx, tx) == (prx, ptx):
                if idle + 1 >= IDLE_INTERVALS:
                    self.top.delete(kb)      # (a send racing this delete is not counted: rare, idle entry)
                    continue
                seen[kb] = (rx, tx, idle + 1)
                continue
            seen[kb] = (rx, tx, 0)
            pid, netns, lport, rport, family, laddr, raddr = self.key.struct.unpack_from(kb)
            if family == socket.AF_INET:
                fam, la, ra = 4, socket.inet_ntop(socket.AF_INET, laddr[:4]), socket.inet_ntop(socket.AF_INET, raddr[:4])
            else:
                fam, la, ra = 6, socket.inet_ntop(socket.AF_INET6, laddr), socket.inet_ntop(socket.AF_INET6, raddr)
            rows.append((pid, uid, escape_comm(comm), fam, la, lport, ra, rport, netns, rx - prx, tx - ptx))
        self._prev = seen
        rows.sort(key=lambda r: (-(r[9] + r[10]), r[0]))
        return rows

    def new_losses(self):
        if self.obj is None:
            return 0
        totals = {"table_full": self.obj.maps["top_full"].sum_percpu_u64(),
                  "skipped": skipped_runs(self.obj)}
        new = {k: v - self._reported.get(k, 0) for k, v in totals.items() if v - self._reported.get(k, 0)}
        self._reported, self.last_losses = totals, new
        return sum(new.values())


def _flags(p):
    p.add_argument("-C", "--noclear", action="store_true", help="do not clear the screen between intervals")
    p.add_argument("-S", "--nosummary", action="store_true", help="no time and load average line")
    p.add_argument("-r", "--maxrows", type=int, default=20, help="at most this many rows per interval (20)")
    p.add_argument("interval", nargs="?", type=float, default=1.0, help="seconds between tables (1)")
    p.add_argument("count", nargs="?", type=int, help="stop after this many tables")


def parse_args(argv):
    p = tool_cli.parser("pytracer tcptop", DESCRIPTION, _flags)
    a = tool_cli.parse(p, argv)
    if not a.interval > 0:
        p.error("the interval must be a positive number of seconds")
    if a.count is not None and a.count < 1:
        p.error("the count must be at least 1")
    if a.maxrows < 1:
        p.error("--maxrows must be at least 1")
    return a


def make_tracer(a):
    return TcpTop(tool_cli.filters(a), a.interval, a.count, use_cache=not a.no_cache)


def _endpoint(addr, port, fam):
    return f"[{addr}]:{port}" if fam == 6 else f"{addr}:{port}"


class TableWriter(TextWriter):
    loss_text = LOSS_TEXT

    def __init__(self, out, a, t0):
        super().__init__(out)
        self.clear, self.load_line, self.maxrows, self.t0, self.timestamps = \
            not a.noclear, not a.nosummary, a.maxrows, t0, a.timestamp

    def write(self, tables):
        parts = []
        for ts, _interval, rows in tables:
            if self.clear:
                parts.append(CLEAR)
            if self.load_line:
                with open("/proc/loadavg") as f:
                    load = f.read().strip()
                stamp = "%.3f" % (ts - self.t0) if self.timestamps else time.strftime("%H:%M:%S", time.localtime(ts))
                parts.append(f"{stamp} loadavg: {load}\n\n")
            w = max([21] + [len(_endpoint(r[4], r[5], r[3])) for r in rows[:self.maxrows]]
                    + [len(_endpoint(r[6], r[7], r[3])) for r in rows[:self.maxrows]])
            parts.append("%-7s %-12s %-*s %-*s %6s %6s\n" % ("PID", "COMM", w, "LADDR", w, "RADDR", "RX_KB", "TX_KB"))
            for pid, _uid, comm, fam, la, lport, ra, rport, _ns, rx, tx in rows[:self.maxrows]:
                parts.append("%-7d %-12.12s %-*s %-*s %6d %6d\n" % (pid, comm, w, _endpoint(la, lport, fam), w,
                                                                  _endpoint(ra, rport, fam), rx // 1024, tx // 1024))
            if not self.clear:
                parts.append("\n")
        self.emit(parts)


class JsonWriter(TextWriter):
    """One object per process per interval, its connections inside; losses as tcpsnoop's loss lines."""

    def write(self, tables):
        parts = []
        for ts, interval, rows in tables:
            procs = {}
            for pid, uid, comm, fam, la, lport, ra, rport, ns, rx, tx in rows:
                p = procs.setdefault((pid, comm), {"ts": round(ts, 6), "interval_s": interval, "pid": pid,
                                                   "uid": uid, "comm": comm, "rx_bytes": 0, "tx_bytes": 0,
                                                   "connections": []})
                p["rx_bytes"] += rx
                p["tx_bytes"] += tx
                p["connections"].append({"family": fam, "laddr": la, "lport": lport, "raddr": ra, "rport": rport,
                                         "netns": ns, "rx_bytes": rx, "tx_bytes": tx})
            parts.extend(json.dumps(p) + "\n" for p in procs.values())
        self.emit(parts)

    def lost(self, count, reasons):
        self.out.write('{"ts": %.6f, "event": "lost", "count": %d, "reasons": %s}\n'
                       % (time.time(), count, json.dumps(reasons, sort_keys=True)))
        self.out.flush()


def make_writer(a, t0):
    return JsonWriter(sys.stdout) if a.json else TableWriter(sys.stdout, a, t0)


def run(argv=None):
    return tool_cli.run(argv, parse_args, make_tracer, make_writer)
