"""`pytracer tcpdrop`: one entry per TCP packet the kernel dropped, in bcc's columns (TIME PID IP
SADDR:SPORT > DADDR:DPORT STATE (FLAGS)) plus the drop reason, then the kernel stack, one frame a line.

Reasons are enum skb_drop_reason's names read from the running kernel's BTF (the values differ between
kernels); the tracepoint passes them from Linux 5.17 on. SKB_NOT_DROPPED_YET and SKB_CONSUMED are no drops
and are left out in the kernel; NOT_SPECIFIED is a drop whose caller gave no reason (kfree_skb() without
one), so it is shown."""
import struct
import sys
import time

from ...errors import KernelFeatureError
from ...toolkit import cli as tool_cli
from ...toolkit.addresses import endpoint, ip_version, ntop
from ...toolkit.kallsyms import Kallsyms
from ...toolkit.kernel_btf import enum_names, tracepoint_args
from ...toolkit.objects import object_path
from ...toolkit.owners import escape_comm
from ...toolkit.tracer import RingBufferTracer
from ...toolkit.writers import JsonLinesWriter, TextWriter

FIELDS = ("ts", "pid", "comm", "family", "saddr", "sport", "daddr", "dport", "state", "tcpflags", "reason",
          "stack")
UNKNOWN_REASON = "unknown (needs Linux 5.17)"
PROGRAM_BY_ARGS = {2: "on_drop", 3: "on_drop_reason", 4: "on_drop_rx_sk"}
FLAG_ORDER = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")


def program_for_kernel():
    n = tracepoint_args("kfree_skb")
    if n is None:
        raise KernelFeatureError("this kernel has no tracepoint skb:kfree_skb with BTF", feature="skb:kfree_skb",
                                 since="5.5")
    return PROGRAM_BY_ARGS[min(max(n, 2), 4)]


TRACING_FRAMES = ("bpf_trace_run", "__bpf_trace_", "__traceiter_")


def drop_tracing_frames(frames):
    """The stack from the function that freed the packet on: less the BPF program's frame and the
    tracepoint's own frames above it (bpf_get_stack starts where it is called). The program's own frame
    may have no name (it was loaded after kallsyms was read)."""
    for i, f in enumerate(frames[:4]):
        if f.startswith(TRACING_FRAMES):
            return frames[i + 1:]
    return frames


class TcpDrop(RingBufferTracer):
    RECORD, ENUMS = "tcpdrop_event", ("tcp_state", "tcp_flag")

    def __init__(self, *args, **kw):
        self.program = program_for_kernel()
        super().__init__(*args, programs=[self.program], **kw)
        self.kallsyms = Kallsyms()
        self.reasons = enum_names("skb_drop_reason", "SKB_DROP_REASON_") or {}

    def start(self):
        super().start()
        # once attached, while the tool waits for drops (the first one read waits for it, if it comes first)
        self.kallsyms.load_in_background()
        self.states = {v: k[4:] for k, v in self.k.items() if k.startswith("TCP_")}
        self.flags = [(self.k["TH_" + f], f) for f in FLAG_ORDER]
        return self

    def convert(self, records, out):
        now, sym, states, reasons = time.time(), self.kallsyms.symbol, self.states, self.reasons
        for stack, nbytes, reason, pid, sport, dport, saddr, daddr, comm, family, state, flags in records:
            n = max(nbytes, 0) // 8
            frames = drop_tracing_frames([sym(a) for a in struct.unpack_from(f"<{n}Q", stack)])
            out.append((now, pid or None, escape_comm(comm) if pid else None, ip_version(family),
                        ntop(family, saddr), sport, ntop(family, daddr), dport,
                        states.get(state, str(state)) if state else None,
                        [name for bit, name in self.flags if flags & bit],
                        UNKNOWN_REASON if reason == 0xFFFFFFFF else reasons.get(reason, str(reason)), frames))


class DropColumns(TextWriter):
    def __init__(self, out, t0=None):
        super().__init__(out)
        self.t0 = t0

    def header(self):
        self.out.write("%-8s %-7s %-2s %-22s > %-22s %s\n"
                       % ("TIME", "PID", "IP", "SADDR:SPORT", "DADDR:DPORT", "STATE (FLAGS) REASON"))
        self.out.flush()

    def write(self, lines):
        t0, parts = self.t0, []
        for ts, pid, _comm, fam, saddr, sport, daddr, dport, state, flags, reason, stack in lines:
            when = "%-8.3f" % (ts - t0) if t0 is not None else time.strftime("%H:%M:%S", time.localtime(ts))
            parts.append("%-8s %-7s %-2d %-22s > %-22s %s (%s) %s\n"
                         % (when, pid if pid else "", fam, endpoint(fam, saddr, sport), endpoint(fam, daddr, dport),
                            state or "-", "|".join(flags), reason))
            parts.extend(f"\t{frame}\n" for frame in stack)
            parts.append("\n")
        self.emit(parts)


def make_tracer(a):
    reasons = enum_names("skb_drop_reason") or {}
    by_name = {v: k for k, v in reasons.items()}
    rodata = tool_cli.filters(a).rodata()
    # the reasons that are no drop, as this kernel numbers them (a value no reason has when it lacks one)
    rodata["not_drop_a"] = by_name.get("SKB_NOT_DROPPED_YET", 0)
    rodata["not_drop_b"] = by_name.get("SKB_CONSUMED", 0xFFFFFFFE)
    return TcpDrop(object_path("tcpdrop"), rodata, a.ringbuf_mb << 20, use_cache=not a.no_cache)


def make_writer(a, t0):
    if a.json:
        return JsonLinesWriter(sys.stdout, FIELDS)
    return DropColumns(sys.stdout, t0 if a.timestamp else None)


def run(argv=None):
    # no owner filters: most drops happen in softirq, where no process is at hand
    p = tool_cli.parser("pytracer tcpdrop", "Trace TCP packets the kernel drops.", owner_flags=False)
    return tool_cli.run(argv, lambda argv: tool_cli.parse(p, argv), make_tracer, make_writer)
