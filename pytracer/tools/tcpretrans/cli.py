"""`pytracer tcpretrans`: one line per TCP retransmission, in bcc's columns (TIME PID IP LADDR:LPORT T>
RADDR:RPORT STATE); -l tells tail loss probes apart, -c counts per connection in the kernel and prints the
counts at exit. The PID is the process holding the socket's lock when the retransmission ran in its context
(tcp_sock.bpf.h: lock_holder), blank when it ran from a timer or softirq."""
import sys
import time

from ...errors import KernelFeatureError
from ...toolkit import cli as tool_cli
from ...toolkit.addresses import endpoint, ip_version, ntop
from ...toolkit.kernel_btf import tracepoint_args
from ...toolkit.losses import LOSS_TEXT
from ...toolkit.objects import object_path
from ...toolkit.owners import escape_comm
from ...toolkit.tracer import RingBufferTracer
from ...toolkit.writers import JsonLinesWriter, TextWriter

FIELDS = ("ts", "pid", "comm", "family", "laddr", "lport", "raddr", "rport", "state", "type")
COUNT_FIELDS = ("family", "laddr", "lport", "raddr", "rport", "type", "count")
TYPES = {"RT_SEGMENT": "retrans", "RT_TLP": "tlp", "RT_SYNACK": "synack"}     # enum retrans_type -> JSON
LETTERS = {"retrans": "R", "tlp": "L", "synack": "S"}                            # -> the T column
LOSSES = dict(LOSS_TEXT, uncounted="{n} retransmissions of connections beyond -c's table of 16384 not counted")


def wanted_programs(prog):
    """on_retransmit_err where tcp_retransmit_skb passes the error (Linux 6.17+: it fires for failed
    retransmissions too, which it skips), on_retransmit where it does not; on_synack always."""
    if prog.name == "on_synack":
        return tracepoint_args("tcp_retransmit_synack") is not None
    n = tracepoint_args("tcp_retransmit_skb")
    if n is None:
        raise KernelFeatureError("this kernel has no tracepoint tcp:tcp_retransmit_skb with BTF (Linux 4.15 "
                                 "brought it)", feature="tcp:tcp_retransmit_skb", since="4.15")
    return prog.name == ("on_retransmit_err" if n >= 3 else "on_retransmit")


class TcpRetrans(RingBufferTracer):
    RECORD, ENUMS = "tcpretrans_event", ("tcp_state", "retrans_type")

    def __init__(self, *args, count_only=False, **kw):
        super().__init__(*args, programs=wanted_programs, **kw)
        self.count_only = count_only
        self.counted = False

    def start(self):
        super().start()
        self.states = {v: k[4:] for k, v in self.k.items() if k.startswith("TCP_")}
        self.types = {v: TYPES[k] for k, v in self.k.items() if k in TYPES}
        return self

    def loss_counters(self):
        return {"uncounted": self.obj.maps["uncounted"].sum_percpu_u64}

    def convert(self, records, out):
        now, states, types = time.time(), self.states, self.types
        for pid, lport, rport, laddr, raddr, comm, family, state, kind in records:
            out.append((now, pid or None, escape_comm(comm) if pid else None, ip_version(family),
                        ntop(family, laddr), lport, ntop(family, raddr), rport, states.get(state, str(state)),
                        types.get(kind, str(kind))))

    def drain_lines(self):
        if not self.count_only:
            return super().drain_lines()
        if self.counted or self.obj is None:
            return []
        self.counted = True                 # the counts are printed once, at exit
        key = self.obj.record("retrans_key").struct
        counts, m = [], self.obj.maps["counts"]
        for k in list(m.keys()):
            v = m.lookup(k)
            if v is None:
                continue
            laddr, raddr, lport, rport, family, kind = key.unpack(k)[:6]
            counts.append((ip_version(family), ntop(family, laddr), lport, ntop(family, raddr), rport,
                           self.types.get(kind, str(kind)), int.from_bytes(v[:8], "little")))
        counts.sort(key=lambda c: (-c[-1], c[:-1]))
        return counts


class RetransColumns(TextWriter):
    """bcc's columns; TIME is the wall clock, or seconds since start with -t."""
    loss_text = LOSSES

    def __init__(self, out, t0=None):
        super().__init__(out)
        self.t0 = t0

    def header(self):
        self.out.write("%-8s %-7s %-2s %-22s %2s %-22s %s\n"
                       % ("TIME", "PID", "IP", "LADDR:LPORT", "T>", "RADDR:RPORT", "STATE"))
        self.out.flush()

    def write(self, lines):
        t0, parts = self.t0, []
        for ts, pid, _comm, fam, laddr, lport, raddr, rport, state, kind in lines:
            when = "%-8.3f" % (ts - t0) if t0 is not None else time.strftime("%H:%M:%S", time.localtime(ts))
            t = LETTERS.get(kind, "?")
            parts.append("%-8s %-7s %-2d %-22s %s> %-22s %s\n"
                         % (when, pid if pid else "", fam, endpoint(fam, laddr, lport), t,
                            endpoint(fam, raddr, rport), state))
        self.emit(parts)


class CountColumns(TextWriter):
    """-c: a line per connection at exit."""
    loss_text = LOSSES

    def header(self):
        pass

    def write(self, lines):
        parts = ["%-28s %-28s %-7s %s\n" % ("LADDR:LPORT", "RADDR:RPORT", "TYPE", "RETRANSMITS")]
        for fam, laddr, lport, raddr, rport, kind, n in lines:
            parts.append("%-28s %-28s %-7s %d\n" % (endpoint(fam, laddr, lport), endpoint(fam, raddr, rport),
                                                     kind, n))
        self.emit(parts)


class RetransJson(JsonLinesWriter):
    loss_text = LOSSES


def tool_flags(p):
    p.add_argument("-l", "--lossprobe", action="store_true",
                   help="tell tail loss probe retransmissions apart (type tlp, T column L)")
    p.add_argument("-c", "--count", action="store_true",
                   help="count retransmissions per connection in the kernel; print the counts at exit")


def make_tracer(a):
    rodata = tool_cli.filters(a).rodata()
    rodata["count_only"] = int(a.count)
    rodata["mark_tlp"] = int(a.lossprobe)
    return TcpRetrans(object_path("tcpretrans"), rodata, a.ringbuf_mb << 20, use_cache=not a.no_cache,
                      count_only=a.count)


def make_writer(a, t0):
    if a.json:
        return RetransJson(sys.stdout, COUNT_FIELDS if a.count else FIELDS)
    if a.count:
        return CountColumns(sys.stdout)
    return RetransColumns(sys.stdout, t0 if a.timestamp else None)


def run(argv=None):
    # no owner filters: most retransmissions run from a timer or softirq, where no process is at hand
    p = tool_cli.parser("pytracer tcpretrans", "Trace TCP retransmissions.", tool_flags, owner_flags=False)
    return tool_cli.run(argv, lambda argv: tool_cli.parse(p, argv), make_tracer, make_writer)
