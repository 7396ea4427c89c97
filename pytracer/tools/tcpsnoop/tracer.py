"""TcpSnoop: the embeddable TCP tracer (the Python API behind `python -m pytracer`).

    from pytracer.tcpsnoop import TcpSnoop
    with TcpSnoop(ports=[8080]) as snoop:
        for ev in snoop.events(duration=5):
            print(ev.event, ev.pid, ev.comm, ev.raddr, ev.size)

Kernel records (one per segment, accept, reset or close) become "lines", one per line tcpsnoop would print:
tuples (ts, event, dir, conn, size, payload, close, capture) where `conn` is a Conn shared by every line of
the same socket and owner (so output formats render a connection's constant columns once), `close` is
(tx_bytes, rx_bytes, duration_ms) for close lines, else None, and `capture` the packet's bytes (a Capture,
with snaplen set: `pytracer -w`), else None. API users get Event objects.
"""
import socket
import time
import types
from typing import NamedTuple

from ... import abi, records
from ...errors import PytracerError
from ...toolkit import sockowner
from ...toolkit.filters import Filters
from ...toolkit.losses import Losses
from ...toolkit.objects import object_path
from ...toolkit.owners import escape_comm
from ...toolkit.sockowner import have_sock_length_tracepoints  # noqa: F401 (pytracer.tcpsnoop's API)

OBJECT = object_path("tcpsnoop")
DEFAULT_RINGBUF = 4 << 20
# Records taken from the ring buffer per read: big enough to amortise the call, small enough that the
# lines made from one batch stay a few MB (memory stays flat under load).
READ_BATCH = 4096
# Segments of connections not yet accepted are held in user space; bounded so a listener that never
# accepts cannot grow pytracer's memory (each held line is a tuple of ~17 fields, ~250 bytes).
PENDING_MAX_SOCKETS = 1024
PENDING_MAX_PER_SOCKET = 256

# A line: what one printed line / JSON object holds, in this order.
LINE_FIELDS = ("ts", "event", "dir", "pid", "uid", "comm", "family", "laddr", "lport", "raddr", "rport",
               "size", "payload", "netns", "tx_bytes", "rx_bytes", "duration_ms")
CONN_FIELDS = ("pid", "uid", "comm", "family", "laddr", "lport", "raddr", "rport", "netns")
MAX_CONNS = 4096
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
# The record (bpf_bytecode/tcpsnoop.h) and its constants are read from the object's BTF. convert() unpacks
# records by position, in this order; use_types() checks it against the record in BTF.
RECORD = "tcpsnoop_event"
ENUMS = ("ev_type", "ev_attr", "ev_dir", "tcp_flag")
HEAD_FIELDS = ("ts_ns", "tx_bytes", "rx_bytes", "start_ns", "cgroup_id", "capture", "size", "payload", "type", "dir",
               "tcp_flags", "attr", "gso_segs", "gso_size")
CAPTURE_FIELDS = ("id", "skb", "len", "caplen", "ifindex", "netns", "dev_type", "link_hlen", "dir", "ifname")
IDENTITY_FIELDS = ("sk", "pid", "uid", "netns", "lport", "rport", "laddr", "raddr", "comm", "family")


def object_types(path=OBJECT):
    """(record layout, constants) of a tcpsnoop object, from its BTF, without loading it (for tests and
    tools that decode records they did not read from the kernel)."""
    btf, key = records.object_btf(path)
    return records.record_layout(btf, RECORD, key), types.SimpleNamespace(**records.enums(btf, ENUMS, key))


class Conn:
    """A socket as seen with one owner: the columns that stay the same on all its lines (and the owner's
    cgroup id as the first record of this socket and owner said, for pcapng labels)."""

    __slots__ = CONN_FIELDS + ("sk", "key", "cgroup")

    def __init__(self, sk, pid, uid, comm, family, laddr, lport, raddr, rport, netns, cgroup=0):
        self.sk, self.pid, self.uid, self.comm, self.family = sk, pid, uid, comm, family
        self.laddr, self.lport, self.raddr, self.rport, self.netns = laddr, lport, raddr, rport, netns
        self.cgroup = cgroup
        # the connection, whoever owns it: what lines held for an unknown owner are kept under
        self.key = (netns, laddr, lport, raddr, rport)

    def with_owner(self, other):
        return Conn(self.sk, other.pid, other.uid, other.comm, self.family, self.laddr, self.lport, self.raddr,
                    self.rport, self.netns, other.cgroup)


class Capture(NamedTuple):
    """A packet's bytes as the kernel had them (bpf_bytecode/capture.bpf.h, struct capture_hdr): `data`
    holds the first bytes of the packet (the Ethernet header if link_hlen is 14, then the IP packet);
    `length` is the whole packet's, link header included; `data` is shorter when the rest was in paged
    fragments or beyond the snap length."""
    skb: int
    length: int
    ifindex: int
    netns: int
    dev_type: int
    link_hlen: int
    dir: int
    ifname: str
    data: bytes
    ts_ns: int = 0          # wall clock, ns since the epoch (set when its record is read)


class Event:
    """One traced packet, connection event or loss report (see README, "JSON schema")."""

    __slots__ = LINE_FIELDS + ("count", "reasons")

    def __init__(self, line=None, losses=None):
        if line is not None:
            ts, self.event, self.dir, conn, self.size, self.payload, close = line[:7]
            self.ts = ts
            for k in CONN_FIELDS:
                setattr(self, k, getattr(conn, k))
            self.tx_bytes, self.rx_bytes, self.duration_ms = close or (None, None, None)
            self.count = self.reasons = None
        else:
            for k in LINE_FIELDS:
                setattr(self, k, None)
            self.event, self.ts = "lost", time.time()
            self.reasons = dict(losses)
            self.count = sum(self.reasons.values())

    def as_dict(self):
        if self.event == "lost":
            return {"ts": self.ts, "event": "lost", "count": self.count, "reasons": self.reasons}
        d = {k: getattr(self, k) for k in LINE_FIELDS}
        if self.event != "close":
            for k in ("tx_bytes", "rx_bytes", "duration_ms"):
                del d[k]
        return d

    def __repr__(self):
        return f"Event({self.as_dict()!r})"


class TcpSnoop:
    """Load, attach, read. Use as a context manager (or call close()): every kernel object is released."""

    def __init__(self, pids=(), uid=None, comm=None, ports=(), family=None, cgroup=None, no_data=False,
                 ringbuf_size=DEFAULT_RINGBUF, object_path=OBJECT, use_cache=True, filters=None, snaplen=0):
        """The filters as keywords (pids, uid, comm, ports, family, cgroup) or as one toolkit Filters.
        With `snaplen`, every packet line carries its Capture (at most that many bytes, headers always)."""
        self.filters = filters if filters is not None else Filters(pids, uid, comm, ports, family, cgroup)
        self.no_data = no_data
        self.snaplen = snaplen
        self._captures = {}         # capture id -> Capture, read but not yet claimed by its record
        self.ringbuf_size = ringbuf_size
        self.object_path = object_path
        self.use_cache = use_cache
        self.obj = None
        self.lost_kernel = 0        # records the BPF side could not reserve (ring buffer full)
        self.skipped = 0            # program runs the kernel skipped (recursion protection)
        self.last_losses = {}
        # Conn.key -> [records whose owner is not known yet]; handshake packets of connections never
        # accepted are no process's, so no loss
        self._held = sockowner.HeldRecords(PENDING_MAX_SOCKETS, PENDING_MAX_PER_SOCKET,
                                           lambda item: item[1] != self.k.EV_HANDSHAKE)
        self._pending = self._held.by_conn
        self._conns = {}            # identity bytes (see tcpsnoop.h) -> Conn
        self.fallbacks = []         # human-readable notes about kernel features we worked around
        self.started = False

    # -- lifetime --------------------------------------------------------------------------------------
    def start(self):
        from ...loader import BPFObject

        if self.started:
            return self
        have_sock_len = have_sock_length_tracepoints()
        if not have_sock_len:
            self.fallbacks.append("sock:sock_send_length is missing (Linux < 6.3): process attribution "
                                  "uses syscall tracepoints instead")
        rodata = dict(self.filters.rodata(), no_data=int(self.no_data))
        sizes = {"events": self.ringbuf_size}
        if self.snaplen:
            rodata["snaplen"] = self.snaplen
            sizes["captures"] = self.ringbuf_size
        self.obj = BPFObject(self.object_path, rodata=rodata, map_max_entries=sizes,
                             programs=lambda p: sockowner.wanted_program(p, have_sock_len),
                             use_cache=self.use_cache)
        try:
            self.obj.attach()
            sockowner.seed(self.obj)    # sockets that exist already
            self.rb = self.obj.ring_buffer("events")
            self.captures_rb = self.obj.ring_buffer("captures") if self.snaplen else None
            if self.snaplen:
                self._capture_hdr = self.obj.record("capture_hdr")
                if self._capture_hdr.names != CAPTURE_FIELDS:
                    raise PytracerError(f"{self.object_path}: struct capture_hdr has the fields "
                                        f"{', '.join(self._capture_hdr.names)}; this pytracer decodes "
                                        f"{', '.join(CAPTURE_FIELDS)}")
            self.use_types(self.obj.record(RECORD), types.SimpleNamespace(**self.obj.enums(*ENUMS)))
            unattributed = self.obj.maps["unattributed"]
            counters = {"pending": lambda: self.lost_pending, "unattributed": unattributed.sum_percpu_u64}
            if self.snaplen:
                capture_lost = self.obj.maps["capture_lost"]
                counters["capture"] = capture_lost.sum_percpu_u64
            self._losses = Losses(self.obj, self.rb, counters)
            self._epoch_ns = epoch_ns()
            self._epoch_at = time.monotonic()
        except BaseException:
            self.close()
            raise
        self.started = True
        return self

    def use_types(self, layout, k):
        """Decode records with `layout` (records.Layout of struct tcpsnoop_event) and name their types and
        flags with `k` (the constants of its enums), both from the object's BTF."""
        if layout.names != HEAD_FIELDS + IDENTITY_FIELDS:
            raise PytracerError(f"{self.object_path}: struct {RECORD} has the fields {', '.join(layout.names)}; "
                                f"this pytracer decodes {', '.join(HEAD_FIELDS + IDENTITY_FIELDS)}")
        self._record, self._identity = records.split(layout, "sk")
        self.k = k
        self._names = {k.EV_CONNECT: "connect", k.EV_ACCEPT: "accept", k.EV_SEND: "send", k.EV_RECV: "recv",
                       k.EV_RESET: "reset", k.EV_CLOSE: "close"}

    def close(self):
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        self.started = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- reading ---------------------------------------------------------------------------------------
    def poll_lines(self, timeout=None):
        """Wait up to `timeout` seconds, then return the lines of every record read (maybe none)."""
        out = []
        if self.rb.poll(timeout):
            now = time.monotonic()
            if now - self._epoch_at > 1.0:
                # the wall clock moves against CLOCK_MONOTONIC (NTP, settimeofday, a suspend): follow it
                self._epoch_ns, self._epoch_at = epoch_ns(), now
            records = self.rb.read(self._record, READ_BATCH)
            if self.captures_rb is not None:
                self._read_captures()
            self.convert(records, out)
        return out

    def _read_captures(self):
        """Take every capture in the `captures` ring: the kernel writes a packet's capture before it
        reserves its record, so the captures of every record read so far are there."""
        hdr = self._capture_hdr
        size = hdr.struct.size
        unpack = hdr.struct.unpack_from
        caps = self._captures
        bound = 2 * (self.ringbuf_size // self._record.size) + READ_BATCH
        if len(caps) > bound:
            # Captures whose record the kernel could not reserve (counted as "ringbuf" already): their id is
            # never asked for. Past twice the records the ring can hold, the oldest are of that kind.
            for cid in sorted(caps, key=lambda c: c >> 16)[:len(caps) - bound // 2]:
                del caps[cid]
        for raw in self.captures_rb.read_raw():
            cid, skb, length, caplen, ifindex, netns, dev_type, link_hlen, d, ifname = unpack(raw)
            caps[cid] = Capture(skb, length, ifindex, netns, dev_type, link_hlen, d,
                                ifname.split(b"\0", 1)[0].decode("ascii", "replace"),
                                bytes(raw[size:size + caplen]))

    def drain_lines(self):
        """The lines of what is in the ring buffer now (used when stopping). Bounded by the buffer's size,
        so a kernel that keeps producing cannot keep us here."""
        out = []
        left = self.ringbuf_size // self._record.size + 1
        while left > 0:
            records = self.rb.read(self._record, min(READ_BATCH, left))
            if not records:
                break
            left -= len(records)
            if self.captures_rb is not None:
                self._read_captures()
            self.convert(records, out)
        self.abandon_pending()
        return out

    def new_losses(self):
        """Events lost since the last call, in total; `self.last_losses` says why: "ringbuf" (the kernel
        found the ring buffer full), "skipped" (the kernel skipped a program run because another BPF
        program was running on that CPU), "pending" (the bounded pre-accept buffer overflowed), "malformed"
        (records of an unexpected size: the object and this pytracer disagree on the layout)."""
        if self.obj is None:
            return 0
        self.last_losses = self._losses.new()
        self.lost_kernel = self._losses.totals["ringbuf"]
        self.skipped = self._losses.totals["skipped"]
        return sum(self.last_losses.values())

    def events(self, duration=None, timeout=0.25):
        """Yield Event objects until `duration` seconds have passed (forever if None); losses appear as
        Event(event="lost")."""
        if not self.started:
            self.start()
        end = None if duration is None else time.monotonic() + duration
        while end is None or time.monotonic() < end:
            wait = timeout if end is None else max(0.0, min(timeout, end - time.monotonic()))
            for line in self.poll_lines(wait):
                yield Event(line)
            if self.new_losses():
                yield Event(losses=self.last_losses)
        for line in self.drain_lines():
            yield Event(line)
        if self.new_losses():
            yield Event(losses=self.last_losses)

    # -- record -> lines -------------------------------------------------------------------------------
    def _conn(self, ident, cgroup=0):
        """The Conn for an identity blob (socket, owner, addresses), made once and then shared."""
        sk, pid, uid, netns, lport, rport, laddr, raddr, comm, family = self._identity.unpack(ident)
        if family == abi.AF_INET:
            fam, la, ra = 4, socket.inet_ntop(socket.AF_INET, laddr[:4]), socket.inet_ntop(socket.AF_INET, raddr[:4])
        elif laddr[:12] == _V4_MAPPED and raddr[:12] == _V4_MAPPED:   # IPv4-mapped IPv6 prints as IPv4
            fam, la, ra = 4, socket.inet_ntop(socket.AF_INET, laddr[12:]), socket.inet_ntop(socket.AF_INET, raddr[12:])
        else:
            fam, la, ra = 6, socket.inet_ntop(socket.AF_INET6, laddr), socket.inet_ntop(socket.AF_INET6, raddr)
        if len(self._conns) >= MAX_CONNS:
            self._conns.clear()
        c = self._conns[ident] = Conn(sk, pid, uid, escape_comm(comm), fam, la, lport, ra, rport, netns, cgroup)
        return c

    def convert(self, records, out):
        """Turn kernel records (tuples from the `head` struct of records.split) into lines appended to `out`."""
        epoch_ns = self._epoch_ns
        captures = self._captures
        pending = self._pending
        conns = self._conns
        k = self.k
        names = self._names
        send, recv, connect, reset = k.EV_SEND, k.EV_RECV, k.EV_CONNECT, k.EV_RESET
        unknown = k.ATTR_OWNER_UNKNOWN

        for (ts_ns, tx, rx, start_ns, cg, cap, size, payload, etype, direction, flags, attr, _segs, _segsize,
             ident) in records:
            conn = conns.get(ident)
            if conn is None:
                conn = self._conn(ident, cg)
            ts = (ts_ns + epoch_ns) / 1e9
            if cap:
                cap = captures.pop(cap, None)
                if cap is not None:
                    cap = cap._replace(ts_ns=ts_ns + epoch_ns)
            else:
                cap = None
            if etype == send or etype == recv or etype == connect or etype == reset:
                if attr & unknown:
                    self._hold(conn.key, (ts, etype, direction, conn, size, payload, flags, cap))
                    continue
                if pending and conn.key in pending:
                    self._flush(conn.key, conn, out)
                out.append((ts, names[etype], "in" if direction else "out", conn, size, payload, None, cap))
            elif etype == k.EV_HANDSHAKE:
                self._hold(conn.key, (ts, etype, direction, conn, size, payload, flags, cap))
            elif etype == k.EV_ACCEPT or etype == k.EV_OWNER:
                if attr & k.ATTR_DISCARD:
                    pending.pop(conn.key, None)
                    continue
                held = self._flush(conn.key, conn, out)
                if etype == k.EV_ACCEPT and not held & _HELD_HANDSHAKE:
                    # the handshake happened before pytracer started: one line stands for it
                    out.append(((start_ns + epoch_ns) / 1e9 if start_ns else ts, "accept", "in", conn, 0, 0, None,
                                None))
            elif etype == k.EV_CLOSE:
                if attr & unknown:
                    held = pending.pop(conn.key, None)
                    if held and not self.filters.by_owner:   # never owned: cannot pass an owner filter
                        self._lines(held, None, out)
                elif pending and conn.key in pending:
                    self._flush(conn.key, conn, out)
                dur = (ts_ns - start_ns) / 1e6 if start_ns else None
                out.append((ts, "close", "out", conn, 0, 0, (tx, rx, dur), None))
                del conns[ident]        # what is open stays cached, not everything ever seen
            elif etype == k.EV_RESET_CLOSED_PORT:
                held = pending.pop(conn.key, None)
                if held:   # the SYN(s) this RST answers
                    self._lines(held, None, out)
                out.append((ts, "reset", "out", conn, size, payload, None, cap))

    @property
    def lost_pending(self):
        """Records dropped from the bounded pre-accept buffer."""
        return self._held.lost

    def _hold(self, key, item):
        self._held.hold(key, item)

    def _flush(self, key, owner, out):
        """Print what was held for connection `key` under `owner` (the record that names it passed the
        kernel's owner filter). Returns _HELD_* bits saying what was held."""
        held = self._pending.pop(key, None)
        if not held:
            return 0
        return self._lines(held, owner, out)

    def _lines(self, held, owner, out):
        k = self.k
        what = 0
        no_data = self.no_data
        relabelled = {}
        acked = False
        for ts, etype, direction, conn, size, payload, flags, cap in held:
            if owner is not None:
                c = relabelled.get(conn)
                if c is None:
                    c = relabelled[conn] = conn.with_owner(owner)
            else:
                c = conn
            if etype == k.EV_HANDSHAKE:
                what |= _HELD_HANDSHAKE
                # the SYN, the SYN-ACK, and the first packet that completes the handshake (the ACK, or
                # data that overtook it) are the accept lines; anything after them is data
                if flags & k.TH_SYN or (direction and not acked and not flags & k.TH_RST):
                    acked = acked or not flags & k.TH_SYN
                    name = "accept" if owner is not None else "recv" if direction else "send"
                elif flags & k.TH_RST:
                    name = "reset"
                elif no_data:      # a handshake packet after the accept lines is data
                    continue
                else:
                    name = "recv" if direction else "send"
            else:
                what |= _HELD_SEGMENT
                name = self._names[etype]
            out.append((ts, name, "in" if direction else "out", c, size, payload, None, cap))
        return what

    def abandon_pending(self):
        """Stopping: segments still held for an owner that never became known are lost ("pending")."""
        self._held.abandon()


_HELD_HANDSHAKE, _HELD_SEGMENT = 1, 2


def epoch_ns(samples=5):
    """CLOCK_REALTIME - CLOCK_MONOTONIC in nanoseconds (bpf_ktime_get_ns() is CLOCK_MONOTONIC): the
    tightest of a few bracketed readings, so a record's wall-clock time is right to about a microsecond."""
    best = None
    for _ in range(samples):
        m0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, r - (m0 + m1) // 2)
    return best[1]
