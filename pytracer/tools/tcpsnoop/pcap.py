"""tcpsnoop's packets as pcapng (`pytracer -w FILE`) and back (`pytracer -r FILE`).

Writing: every packet line carries its Capture (the tracer runs with a snap length). A packet is one
Enhanced Packet Block per interface it crossed, as a capture on that interface shows it. On loopback the
kernel reports one packet twice, sent and received, on two sockets: the two lines become one block,
labelled with both ends (the receiving end first: `tcpdump -i lo` sees loopback packets as received).
The pair is found by the skb's address and identical bytes; a line waits for its partner at most
PAIR_WAIT_S (its partner may be held by the tracer until a connection's owner is known, e.g. a SYN until
accept()). Blocks are written in the order of their timestamps (on loopback the receiving end's, where a
capture on `lo` sees the packet): a block waiting for its other end holds back every block after it in time. Lines that are no packet (close, the size-0 accept line of a handshake older than
pytracer) go into the comment of an Interface Statistics Block, the one block pcapng readers do not
count as a frame. The label format is documented in README ("pcapng") and parsed back by `read_lines`.

Reading: any pcap/pcapng file (toolkit/pcapng.py); packets with pytracer's label give back the lines
that were written; packets of other files give one line each with no process (pid/uid None).
"""
import re
import socket
import struct
import sys
import time
import heapq
from collections import OrderedDict

from ...toolkit import pcapng
from ...toolkit.losses import describe_losses
from .tracer import Conn

ARPHRD_LOOPBACK = 772
PAIR_WAIT_S = 1.0
LABEL_PREFIX = "pid="
EVENT_PREFIX = "pytracer-event "
_ESCAPES = {" ": "\\x20", "|": "\\x7c", "=": "\\x3d"}
_UNESCAPE = re.compile(r"\\x(20|7c|3d)")


def _escape(comm):
    """A comm (already escape_comm'd: backslashes are \\x5c) made free of the label's separators."""
    if " " in comm or "|" in comm or "=" in comm:
        return "".join(_ESCAPES.get(ch, ch) for ch in comm)
    return comm


def _unescape(text):
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def end_label(event, d, conn):
    """One end of a packet: `pid=P comm=C uid=U netns=N cgroup=G event=E dir=D`."""
    return "pid=%d comm=%s uid=%d netns=%d cgroup=%d event=%s dir=%s" % (
        conn.pid, _escape(conn.comm), conn.uid, conn.netns, conn.cgroup or 0, event, d)


class _Block:
    __slots__ = ("lines", "cap", "ready", "first_ts")

    def __init__(self, line, cap, ready):
        self.lines = [line]
        self.cap = cap
        self.ready = ready
        self.first_ts = line[0]


class PcapngWriter:
    """A tcpsnoop output format (header/write/lost, as the text writers): pcapng on `out` (binary).
    `also` is a text writer that prints the same lines (--print), or None."""

    def __init__(self, out, snaplen, also=None, loss_text=None, owns_out=False):
        self.out = out
        self.owns_out = owns_out    # close `out` at the end (a file -w opened; not stdout)
        self.snaplen = snaplen
        self.also = also
        self.w = None
        self.ifaces = {}            # (netns, ifindex, name, linktype) -> interface id
        self.conn_iface = OrderedDict()     # Conn.key -> interface id of its last packet
        self.heap = []              # (timestamp ns, n, _Block) of the blocks ready to be written
        self.n = 0
        self.waiting = OrderedDict()    # loopback _Block waiting for its other end -> None
        self.open = {}              # (netns, skb) -> [loopback _Block waiting for its other end]
        self.lost_total = 0
        self.newest = 0.0           # the latest line's time seen
        self.alone = OrderedDict()  # ((netns, skb), bytes) -> dir of loopback packets written with one end
        self.late_ends = 0          # their other ends, which came too late for the label
        self.loss_text = loss_text
        self.start_ns = time.time_ns()

    def header(self):
        from ... import __version__

        self.w = pcapng.Writer(self.out, f"pytracer {__version__}")
        self.out.flush()
        if self.also is not None:
            self.also.header()

    def write(self, lines):
        if self.also is not None:
            self.also.write(lines)
        for line in lines:
            if line[0] > self.newest:
                self.newest = line[0]
            cap = line[7]
            if cap is None:
                if line[6] is not None or line[4] == 0:     # close, or the accept line of an old handshake
                    self._ready(_Block(line, None, True), round(line[0] * 1e9))
                # else: a packet whose bytes were lost (counted by the tracer as a "capture" loss)
                continue
            if cap.dev_type == ARPHRD_LOOPBACK:
                # its other end: the same skb, the other direction, the same bytes (an skb's address is
                # reused as soon as it is freed, and a held line can come after several reuses)
                key = (cap.netns, cap.skb)
                waiting = self.open.get(key)
                if waiting:
                    b = next((b for b in waiting if b.lines[0][2] != line[2] and b.cap.data == cap.data), None)
                    if b is not None:
                        b.lines.append(line)
                        b.ready = True
                        waiting.remove(b)
                        if not waiting:
                            del self.open[key]
                        del self.waiting[b]
                        # the receiving end's time: when a capture on lo sees it
                        rx = line if line[2] == "in" else b.lines[0]
                        self._ready(b, rx[7].ts_ns)
                        continue
                late = self.alone.pop((key, cap.data), None)
                if late is not None and late != line[2]:
                    # the other end of a packet already written alone (it waited longer than
                    # PAIR_WAIT_S, e.g. a handshake accepted late): the packet is in the file once
                    self.late_ends += 1
                    continue
                b = _Block(line, cap, False)
                self.open.setdefault(key, []).append(b)
                self.waiting[b] = None
            else:
                self._ready(_Block(line, cap, True), cap.ts_ns)
        # waited long enough: by the records' own clock (a reader running behind must not give up on a
        # partner that is still in the ring buffer)
        self._flush(self.newest - PAIR_WAIT_S)
        self.out.flush()

    def idle(self):
        """No lines for a while (the read loop's tick; the ring buffer is empty): what waited long enough by
        the wall clock goes out."""
        if self.heap or self.waiting:
            self._flush(time.time() - PAIR_WAIT_S)
            self.out.flush()

    def _ready(self, b, ts_ns):
        self.n += 1
        heapq.heappush(self.heap, (ts_ns, self.n, b))

    def _flush(self, older_than):
        """Give up waiting for the other end of blocks older than `older_than` (seconds), then write the
        ready blocks, in time order, up to the oldest block still waiting (its packet's time is not before
        its first end's)."""
        for b in [b for b in self.waiting if b.first_ts < older_than]:
            del self.waiting[b]
            key = (b.cap.netns, b.cap.skb)
            waiting = self.open.get(key)
            if waiting and b in waiting:
                waiting.remove(b)
                if not waiting:
                    del self.open[key]
            if len(self.alone) >= 4096:
                self.alone.popitem(last=False)
            self.alone[(key, b.cap.data)] = b.lines[0][2]
            b.ready = True
            self._ready(b, b.cap.ts_ns)
        mark = min(b.cap.ts_ns for b in self.waiting) if self.waiting else None
        heap = self.heap
        while heap and (mark is None or heap[0][0] <= mark):
            self._write_block(heapq.heappop(heap)[2])

    def _iface(self, cap):
        linktype = pcapng.LINKTYPE_ETHERNET if cap.link_hlen == 14 else pcapng.LINKTYPE_RAW
        key = (cap.netns, cap.ifindex, cap.ifname, linktype)
        i = self.ifaces.get(key)
        if i is None:
            i = self.ifaces[key] = self.w.add_interface(linktype, self.snaplen, cap.ifname,
                                                        f"netns={cap.netns} ifindex={cap.ifindex}")
        return i

    def _event_iface(self, conn):
        i = self.conn_iface.get(conn.key)
        if i is not None:
            return i
        if not self.ifaces:
            # an event before any packet: an interface that carries no packets, for the statistics block
            self.ifaces[None] = self.w.add_interface(pcapng.LINKTYPE_RAW, self.snaplen, "pytracer",
                                                     "connection events only, no packets")
        return next(iter(self.ifaces.values()))

    def _write_block(self, b):
        line = b.lines[0]
        if b.cap is None:
            ts, event, d, conn, size, payload, close, _ = line
            # ts: the line's time exactly (the block's nanoseconds would not give back the same float)
            text = "%s%s family=%d laddr=%s lport=%d raddr=%s rport=%d ts=%r" % (
                EVENT_PREFIX, end_label(event, d, conn), conn.family, conn.laddr, conn.lport, conn.raddr,
                conn.rport, ts)
            if close is not None:
                tx, rx, dur = close
                text += " tx_bytes=%d rx_bytes=%d duration_ms=%s" % (tx, rx, "-" if dur is None else repr(dur))
            self.w.statistics(self._event_iface(conn), round(ts * 1e9), comment=text)
            return
        lines = b.lines
        if len(lines) == 2 and lines[0][2] == "out":
            lines = [lines[1], lines[0]]        # the receiving end first, as a loopback capture shows it
        first = lines[0]
        cap = first[7]
        label = end_label(first[1], first[2], first[3])
        if len(lines) == 2:
            peer = lines[1]
            label += " | peer " + end_label(peer[1], peer[2], peer[3]) + " dt_ns=%d" % (peer[7].ts_ns - cap.ts_ns)
        i = self._iface(cap)
        if len(self.conn_iface) > 65536:
            self.conn_iface.popitem(last=False)
        self.conn_iface[first[3].key] = i
        self.w.packet(i, cap.ts_ns, cap.data, cap.length,
                      pcapng.DIR_INBOUND if first[2] == "in" else pcapng.DIR_OUTBOUND, [label])

    def lost(self, count, reasons):
        self.lost_total += count
        text = describe_losses(reasons, self.loss_text) if self.loss_text else describe_losses(reasons)
        sys.stderr.write(f"pytracer: {count} events lost ({text})\n")
        sys.stderr.flush()
        if self.w is not None:
            self.w.statistics(self._loss_iface(), time.time_ns(), ifdrop=self.lost_total, start_ns=self.start_ns,
                              comment=f"pytracer: {count} lost ({text})")
            self.out.flush()

    def _loss_iface(self):
        if not self.ifaces:
            self.ifaces[None] = self.w.add_interface(pcapng.LINKTYPE_RAW, self.snaplen, "pytracer",
                                                     "connection events only, no packets")
        return next(iter(self.ifaces.values()))

    def close(self):
        """Write what is still waiting, and the final statistics (isb_ifdrop: every loss of the run)."""
        if self.w is None:
            return
        self._flush(float("inf"))
        self.w.statistics(self._loss_iface(), time.time_ns(), ifdrop=self.lost_total, start_ns=self.start_ns,
                          comment="pytracer: end of capture, %d lost%s" % (
                              self.lost_total, "; %d loopback ends came too late for their packet's label"
                              % self.late_ends if self.late_ends else ""))
        self.out.flush()
        self.w = None
        if self.owns_out:
            self.out.close()


# ---- reading ----------------------------------------------------------------------------------------------
_LINK_HLEN = {pcapng.LINKTYPE_ETHERNET: 14, pcapng.LINKTYPE_RAW: 0, pcapng.LINKTYPE_LINUX_SLL: 16,
              pcapng.LINKTYPE_LINUX_SLL2: 20, 12: 0, 14: 0, 228: 0, 229: 0}   # 12/14: DLT_RAW, 228/229: IPv4/IPv6


def parse_tcp(data, link_hlen):
    """(family, src, dst, sport, dport, hdr_len, flags) of an IP+TCP packet after `link_hlen` bytes, or
    None if it is not one (or too short to tell)."""
    ip = data[link_hlen:]
    if len(ip) < 20:
        return None
    v = ip[0] >> 4
    if v == 4:
        ihl = (ip[0] & 15) * 4
        if ip[9] != 6 or ihl < 20 or len(ip) < ihl + 20:
            return None
        fam, off = 4, ihl
        src, dst = socket.inet_ntop(socket.AF_INET, ip[12:16]), socket.inet_ntop(socket.AF_INET, ip[16:20])
    elif v == 6:
        if len(ip) < 40:
            return None
        nxt, off = ip[6], 40
        while nxt in (0, 43, 60) and len(ip) >= off + 2:
            nxt, off = ip[off], off + (ip[off + 1] + 1) * 8
        if nxt != 6 or len(ip) < off + 20:
            return None
        fam, src, dst = 6, socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(socket.AF_INET6, ip[24:40])
    else:
        return None
    sport, dport = struct.unpack_from(">HH", ip, off)
    thl = (ip[off + 12] >> 4) * 4
    return fam, src, dst, sport, dport, off + thl, ip[off + 13]


def _fields(text):
    out = {}
    for part in text.split(" "):
        k, sep, v = part.partition("=")
        if sep:
            out[k] = v
    return out


def _conn(f, fam, laddr, lport, raddr, rport, netns=None):
    pid = int(f["pid"]) if "pid" in f else None
    uid = int(f["uid"]) if "uid" in f else None
    c = Conn(0, pid, uid, _unescape(f.get("comm", "")), fam, laddr, lport, raddr, rport,
             int(f.get("netns", netns or 0)), int(f.get("cgroup", 0)))
    return c


def _unlabelled_event(flags, d):
    if flags & 0x04:
        return "reset"
    if flags & 0x02 and not flags & 0x10:
        return "connect"
    return "recv" if d == "in" else "send"


def read_lines(path, f, on_loss=None):
    """Yield tcpsnoop lines (as the tracer makes them, capture None) from the capture file open as `f`."""
    for item in pcapng.read(path, f):
        if isinstance(item, pcapng.Statistics):
            for c in item.comments:
                if c.startswith(EVENT_PREFIX):
                    try:
                        line = _event_line(item.ts_ns, _fields(c[len(EVENT_PREFIX):]))
                    except ValueError:
                        continue        # not a label pytracer wrote: nothing to print
                    yield line
            if item.ifdrop and on_loss is not None and any(c.startswith("pytracer: end") for c in item.comments):
                on_loss(item.ifdrop)
            continue
        hlen = _LINK_HLEN.get(item.interface.linktype)
        if hlen is None:
            continue
        p = parse_tcp(item.data, hlen)
        if p is None:
            continue
        fam, src, dst, sport, dport, hdr_len, flags = p
        ip_len = item.orig_len - hlen
        size, payload = ip_len + 14, max(0, ip_len - hdr_len)
        label = next((c for c in item.comments if c.startswith(LABEL_PREFIX)), None)
        netns = _netns_of(item.interface)
        ends = None
        if label is not None:
            try:
                ends = _labelled(label, item, p, size, payload, netns)
            except ValueError:
                ends = None     # a comment that only looks like pytracer's label: a packet without one
        if ends is not None:
            yield from ends
        else:
            d = "in" if item.direction == pcapng.DIR_INBOUND else "out"
            loc = (dst, dport, src, sport) if d == "in" else (src, sport, dst, dport)
            c = Conn(0, None, None, "", fam, loc[0], loc[1], loc[2], loc[3], netns or 0)
            yield (item.ts_ns / 1e9, _unlabelled_event(flags, d), d, c, size, payload, None, None)


def _labelled(label, item, p, size, payload, netns):
    """The lines of a packet's label (ValueError if it is not one pytracer wrote)."""
    fam, src, dst, sport, dport = p[:5]
    ends = []
    for n, text in enumerate(label.split(" | peer ")):
        f = _fields(text)
        d = f.get("dir", "out")
        loc = (dst, dport, src, sport) if d == "in" else (src, sport, dst, dport)
        c = _conn(f, fam, *loc, netns=netns)
        ts_ns = item.ts_ns + (int(f.get("dt_ns", 0)) if n else 0)
        ends.append((ts_ns / 1e9, f.get("event", "send"), d, c, size, payload, None, None))
    if len(ends) == 2 and ends[1][0] < ends[0][0]:
        ends.reverse()      # the sending end's line first, as pytracer printed them
    return ends


def _netns_of(iface):
    m = re.search(r"netns=(\d+)", iface.description or "")
    return int(m.group(1)) if m else None


def _event_line(ts_ns, f):
    fam = int(f.get("family", 4))
    c = _conn(f, fam, f.get("laddr", ""), int(f.get("lport", 0)), f.get("raddr", ""), int(f.get("rport", 0)))
    close = None
    if f.get("event") == "close":
        dur = f.get("duration_ms", "-")
        close = (int(f.get("tx_bytes", 0)), int(f.get("rx_bytes", 0)), None if dur == "-" else float(dur))
    ts = float(f["ts"]) if "ts" in f else ts_ns / 1e9
    return (ts, f.get("event", "close"), f.get("dir", "out"), c, 0, 0, close, None)
