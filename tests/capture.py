"""A packet-capture oracle for the tracer: tcpdump sees the same traffic, and every captured packet must be
exactly one tracer line on each local socket it crosses, with the same size and payload.

    with Capture("tcp port 8080") as cap:            # tcpdump -i lo (or -i any inside a namespace)
        ...traffic...
    problems = oracle([cap], lines)                  # lines: the tracer's JSON objects (dicts)
    assert not problems, report(problems)

Pieces:
- Capture: starts tcpdump (-U -w FILE, large -B, --immediate-mode), waits for its "listening on" line before
  the test makes traffic, stops it with SIGINT and fails if the kernel dropped packets; then parses the file.
- read_pcap / parse: a small pcap reader (DLT_EN10MB, LINUX_SLL, LINUX_SLL2; micro- and nanosecond magic)
  and an IPv4/IPv6 + TCP parser. SIZE is what the tracer prints: the IP packet + 14 (Ethernet wire size),
  taken from the captured frame's original length less its link-layer header, so GSO super-packets (whose IP
  length field is 0 under BIG TCP) count whole.
- oracle(): per connection, side (socket) and direction, the multiset of (size, payload) of the packets
  against the tracer's connect/accept/send/recv/reset lines; the payload totals; the close line's
  tx_bytes/rx_bytes against the capture's payload sequence coverage (retransmitted bytes counted once).
"""
import collections
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest

ETH_WIRE = 14
LINK_HEADER = {1: 14, 113: 16, 276: 20}          # DLT_EN10MB, DLT_LINUX_SLL, DLT_LINUX_SLL2
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
TCP_FLAGS = "FSRPAUEC"


# ---- namespaces ----------------------------------------------------------------------------------------
def netns_inode(name=None):
    """Inode of a named network namespace (ip netns), or of ours: what the tracer's `netns` says."""
    return os.stat(f"/run/netns/{name}" if name else "/proc/self/ns/net").st_ino


def local_addresses(netns=None):
    """The addresses of a network namespace's interfaces, from `ip -j addr` (as inet_ntop prints them)."""
    import ipaddress
    cmd = (["ip", "-n", netns] if netns else ["ip"]) + ["-j", "addr", "show"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {str(ipaddress.ip_address(a["local"])) for link in out for a in link.get("addr_info", [])}


# ---- tcpdump -------------------------------------------------------------------------------------------
class Capture:
    """tcpdump on `lo` (host) or on `any` inside a network namespace, for the duration of a `with` block.

    After the block: `packets` (list of Packet), `netns` (inode), `local` (addresses of that namespace)."""

    def __init__(self, bpf_filter, netns=None, snaplen=256, buffer_kib=131072, ready_timeout=20.0):
        self.filter = bpf_filter
        self.netns_name = netns
        self.netns = netns_inode(netns)
        self.local = local_addresses(netns)
        self.snaplen = snaplen
        self.buffer_kib = buffer_kib
        self.ready_timeout = ready_timeout
        self.dir = tempfile.mkdtemp(prefix="pytracer-cap-")
        self.path = os.path.join(self.dir, "cap.pcap")
        self.proc = None
        self.stderr = []
        self.packets = None
        self._ready = threading.Event()

    def start(self):
        iface = "any" if self.netns_name else "lo"
        cmd = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-B", str(self.buffer_kib),
               "-s", str(self.snaplen), "-Z", "root", "-w", self.path, self.filter]
        if self.netns_name:
            cmd = ["ip", "netns", "exec", self.netns_name] + cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._ready.wait(self.ready_timeout):
            self._kill()
            pytest.fail(f"tcpdump not listening after {self.ready_timeout} s: {''.join(self.stderr)}")
        if self.proc.poll() is not None:
            pytest.fail(f"tcpdump exited with {self.proc.returncode}: {''.join(self.stderr)}")
        return self

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)
            if "listening on" in line:
                self._ready.set()
        self._ready.set()       # exited: start() reports it

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def settle(self, quiet=0.3, limit=10.0):
        """Wait until tcpdump has written nothing new for `quiet` seconds (its last packets are on disk)."""
        deadline = time.monotonic() + limit
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            if size != last:
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.05)

    def stop(self):
        """SIGINT (tcpdump flushes and prints its statistics); fail if the kernel dropped any packet."""
        if self.proc is None or self.packets is not None:
            return
        self.settle()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._kill()
            pytest.fail("tcpdump did not stop on SIGINT")
        time.sleep(0.05)          # the stderr reader has the last lines
        text = "".join(self.stderr)
        dropped = [int(ln.split()[0]) for ln in text.splitlines() if "dropped by kernel" in ln]
        assert dropped == [0], f"tcpdump's capture is incomplete (packets dropped by kernel): {text}"
        self.packets = read_pcap(self.path)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                self.stop()
        finally:
            self._kill()
            for name in os.listdir(self.dir):
                os.unlink(os.path.join(self.dir, name))
            os.rmdir(self.dir)


# ---- pcap ----------------------------------------------------------------------------------------------
Packet = collections.namedtuple("Packet", "ts src sport dst dport size payload seq flags")


def read_pcap(path):
    """Every TCP packet of a pcap file (not pcapng: tcpdump -w writes pcap) as a Packet."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise ValueError(f"{path}: no pcap header ({len(data)} bytes)")
    magic = data[:4]
    for endian in ("<", ">"):
        m = struct.unpack(endian + "I", magic)[0]
        if m in (0xA1B2C3D4, 0xA1B23C4D):
            frac = 1e-6 if m == 0xA1B2C3D4 else 1e-9
            break
    else:
        raise ValueError(f"{path}: not a pcap file (magic {magic.hex()})")
    linktype = struct.unpack(endian + "I", data[20:24])[0] & 0x0FFFFFFF
    if linktype not in LINK_HEADER:
        raise ValueError(f"{path}: link type {linktype} not handled")
    rec = struct.Struct(endian + "IIII")
    out, off = [], 24
    while off + 16 <= len(data):
        sec, sub, incl, orig = rec.unpack_from(data, off)
        off += 16
        frame = data[off:off + incl]
        off += incl
        p = parse_frame(linktype, frame, orig, sec + sub * frac)
        if p is not None:
            out.append(p)
    return out


def parse_frame(linktype, frame, orig_len, ts):
    """A Packet from one captured frame (None if it is not TCP over IPv4/IPv6)."""
    hl = LINK_HEADER[linktype]
    if linktype == 1:
        proto = struct.unpack_from(">H", frame, 12)[0]
    elif linktype == 113:
        proto = struct.unpack_from(">H", frame, 14)[0]
    else:
        proto = struct.unpack_from(">H", frame, 0)[0]
    ip = frame[hl:]
    wire_ip_len = orig_len - hl          # the whole IP packet, also for GSO super-packets
    if proto == ETH_P_IP:
        ihl = (ip[0] & 0x0F) * 4
        tot = struct.unpack_from(">H", ip, 2)[0]
        if ip[9] != 6:
            return None
        src, dst = socket.inet_ntop(socket.AF_INET, ip[12:16]), socket.inet_ntop(socket.AF_INET, ip[16:20])
        ip_len = tot if tot else wire_ip_len          # BIG TCP: tot_len 0
        l4 = ihl
    elif proto == ETH_P_IPV6:
        plen = struct.unpack_from(">H", ip, 4)[0]
        nxt, l4 = ip[6], 40
        while nxt in (0, 43, 60):                      # hop-by-hop, routing, destination options
            nxt, l4 = ip[l4], l4 + (ip[l4 + 1] + 1) * 8
        if nxt != 6:
            return None
        src, dst = socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(socket.AF_INET6, ip[24:40])
        ip_len = 40 + plen if plen else wire_ip_len   # BIG TCP: payload length 0
    else:
        return None
    sport, dport, seq = struct.unpack_from(">HHI", ip, l4)
    doff = (ip[l4 + 12] >> 4) * 4
    fl = ip[l4 + 13]
    flags = "".join(c for i, c in enumerate(TCP_FLAGS) if fl & (1 << i))
    payload = min(ip_len, wire_ip_len) - l4 - doff
    return Packet(ts, src, sport, dst, dport, wire_ip_len + ETH_WIRE, payload, seq, flags)


# ---- the oracle ----------------------------------------------------------------------------------------
def _line(o):
    """A tracer line as a dict (JSON object), from a dict or a pytracer Event."""
    return o if isinstance(o, dict) else o.as_dict()


def sock_key(netns, laddr, lport, raddr, rport):
    return (netns, laddr, lport, raddr, rport)


def fmt_sock(k):
    return f"{k[1]}:{k[2]}->{k[3]}:{k[4]} (netns {k[0]})"


def packets_by_socket(captures):
    """socket -> {'out': [packets it sent], 'in': [packets it received]}, for every local socket (an end whose
    address is local to the capture's namespace) of every captured packet."""
    packets = collections.defaultdict(lambda: {"out": [], "in": []})
    for cap in captures:
        for p in cap.packets:
            if p.src in cap.local:
                packets[sock_key(cap.netns, p.src, p.sport, p.dst, p.dport)]["out"].append(p)
            if p.dst in cap.local:
                packets[sock_key(cap.netns, p.dst, p.dport, p.src, p.sport)]["in"].append(p)
    return packets


def refused(packets):
    """'closed port' for the 4-tuple of a SYN answered by a RST (no socket), 'refused' for the socket whose
    SYN got that RST, else None."""
    sent, recvd = packets["out"], packets["in"]
    if any("S" in p.flags for p in sent + recvd if "A" in p.flags):
        return None
    if any("S" in p.flags for p in recvd) and any("R" in p.flags for p in sent):
        return "closed port"
    if any("S" in p.flags for p in sent) and any("R" in p.flags for p in recvd):
        return "refused"
    return None


def unique_payload(pkts):
    """Payload bytes covered by these packets' sequence ranges: retransmitted bytes count once."""
    if not pkts:
        return 0
    base = pkts[0].seq
    spans = []
    for p in pkts:
        start = (p.seq - base) & 0xFFFFFFFF
        if start >= 1 << 31:
            start -= 1 << 32
        if "S" in p.flags:
            start += 1           # the SYN takes a sequence number; TFO data follows it
        if p.payload:
            spans.append((start, start + p.payload))
    total, end = 0, None
    for a, b in sorted(spans):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def _sizes(counter, label=None):
    """'2x54/0 accept' for a Counter of (size, payload); `label` names what each key was (flags, events)."""
    out = []
    for (s, pl), n in sorted(counter.items()):
        tag = f" {label[(s, pl)]}" if label and (s, pl) in label else ""
        out.append(f"{n}x{s}/{pl}{tag}" if n > 1 else f"{s}/{pl}{tag}")
    return ", ".join(out)


def _labels(items):
    """(size, payload) -> the distinct names of the items with it, e.g. 'S' / 'A' or 'accept+send'."""
    names = collections.defaultdict(list)
    for key, name in items:
        if name not in names[key]:
            names[key].append(name)
    return {k: "+".join(v) for k, v in names.items()}


def handshake(packets, lines_of):
    """The connect line is the socket's SYN; the accept lines (in, out, in) are the SYN it received, its
    SYN-ACK and the first packet it received after that. Returns (problems, the handshake packets), for
    one socket; the other packets are matched against its send/recv/reset lines."""
    sent, recvd = packets["out"], packets["in"]
    syn_out = [p for p in sent if "S" in p.flags and "A" not in p.flags]
    syn_in = [p for p in recvd if "S" in p.flags and "A" not in p.flags]
    synack = [p for p in sent if "S" in p.flags and "A" in p.flags]
    connect = [(o["size"], o["payload"]) for o in lines_of if o["event"] == "connect"]
    accept = [(o["dir"], o["size"], o["payload"]) for o in lines_of if o["event"] == "accept"]
    out, used = [], []
    if syn_out:
        used.append(syn_out[0])
        want = [(syn_out[0].size, syn_out[0].payload)]
        if connect != want:
            out.append(f"connect line(s) (size, payload) {connect}, capture's SYN {want}")
    elif connect:
        out.append(f"connect line(s) {connect} but the capture has no SYN from this socket")
    if syn_in and synack:
        third = [p for p in recvd if p.ts >= synack[0].ts and p is not syn_in[0]][:1]
        used += [syn_in[0], synack[0], *third]
        want = [("in", syn_in[0].size, syn_in[0].payload), ("out", synack[0].size, synack[0].payload)]
        want += [("in", p.size, p.payload) for p in third]
        if accept != want:
            out.append(f"accept lines (dir, size, payload) {accept}, capture's SYN, SYN-ACK, ACK {want}")
    elif accept:
        out.append(f"accept lines {accept} but the capture has no SYN answered by this socket")
    return out, used


def timeline(packets, lines_of, limit=60):
    """One socket's packets (both directions) and lines, by time: where a report says what is missing, this
    says when (the last `limit` entries: losses tend to be at the end of a connection)."""
    rows = [(p.ts, f"packet {d:3} {p.flags or '.':4} {p.size}/{p.payload} seq {p.seq}")
            for d in ("out", "in") for p in packets[d]]
    rows += [(o["ts"], f"line   {o.get('dir') or '-':3} {o['event']:6} {o.get('size')}/{o.get('payload')} "
                       f"pid {o.get('pid')}") for o in lines_of]
    rows.sort(key=lambda r: r[0])
    return [f"{ts:.6f} {text}" for ts, text in rows[-limit:]]


def _section(title, rows, max_examples):
    if not rows:
        return []
    more = f"\n  ... and {len(rows) - max_examples} more" if len(rows) > max_examples else ""
    return [f"{len(rows)} {title}:\n  " + "\n  ".join(rows[:max_examples]) + more]


def oracle(captures, lines, server_ports=(), max_examples=12):
    """Compare captured packets with the tracer's lines; returns a list of problems (empty: they agree).

    `lines`: the tracer's lines (JSON dicts or Events) for the traffic the captures' filters selected. Every
    local socket of a captured packet must have, per direction, exactly the packets' (size, payload)
    multiset on its connect/accept/send/recv/reset lines (the connect and accept lines being its handshake
    packets, see handshake()); its close line's tx_bytes/rx_bytes must equal the payload the capture shows
    it sent and received, each byte once; any `lost` line is a problem. `server_ports` only label sockets
    "server"/"client" in the report."""
    lines = [_line(o) for o in lines]
    problems = []
    lost = [o for o in lines if o["event"] == "lost"]
    if lost:
        problems.append(f"the tracer lost records: {lost}")
    packets = packets_by_socket(captures)

    def name(k):
        role = "server" if k[2] in server_ports else "client" if k[4] in server_ports else "socket"
        return f"{role} {fmt_sock(k)}"

    by_sock = collections.defaultdict(list)
    for o in lines:
        if o["event"] != "lost":
            by_sock[sock_key(o["netns"], o["laddr"], o["lport"], o["raddr"], o["rport"])].append(o)
    hs, mism, bad, mism_socks = [], [], [], []
    for k in sorted(set(packets) | set(by_sock)):
        pk = packets.get(k, {"out": [], "in": []})
        mine = by_sock.get(k, [])
        problems_hs, used = handshake(pk, mine)
        hs += [f"{name(k)}: {p}" for p in problems_hs]
        used = {id(p) for p in used}
        for d in ("out", "in"):
            rest = [p for p in pk[d] if id(p) not in used]
            other = [o for o in mine if o["dir"] == d and o["event"] in ("send", "recv", "reset")]
            w = collections.Counter((p.size, p.payload) for p in rest)
            g = collections.Counter((o["size"], o["payload"]) for o in other)
            if w == g:
                continue
            mism_socks.append((k, pk, mine))
            flags = _labels(((p.size, p.payload), p.flags or ".") for p in rest)
            events = _labels(((o["size"], o["payload"]), o["event"]) for o in other)
            mism.append(
                f"{name(k)} {d}: capture {len(rest)} packets/{sum(p.payload for p in rest)} B payload, tracer "
                f"{len(other)} lines/{sum(o['payload'] for o in other)} B; missing from the lines (size/payload "
                f"flags): [{_sizes(w - g, flags)}]; extra lines (size/payload event): [{_sizes(g - w, events)}]")
        # close totals
        tx, rx = unique_payload(pk["out"]), unique_payload(pk["in"])
        cl = [o for o in mine if o["event"] == "close"]
        fate = refused(pk)
        if not pk["out"] and not pk["in"]:
            if cl:
                bad.append(f"{name(k)}: close line for a socket the capture never saw: {cl}")
        elif fate == "closed port":        # no socket: the kernel answered a SYN with a RST
            if cl:
                bad.append(f"{name(k)}: close line(s) for a closed port's RST: {cl}")
        elif fate == "refused" and not cl:  # a refused connect may be summarised or not
            pass
        elif len(cl) != 1:
            bad.append(f"{name(k)}: {len(cl)} close lines (capture payload tx {tx} rx {rx})")
        elif (cl[0]["tx_bytes"], cl[0]["rx_bytes"]) != (tx, rx):
            bad.append(f"{name(k)}: close says tx {cl[0]['tx_bytes']} rx {cl[0]['rx_bytes']}, "
                       f"capture tx {tx} rx {rx}")
    problems += _section("handshakes disagree with the capture (connect/accept lines)", hs, max_examples)
    problems += _section("socket directions disagree with the capture (send/recv/reset lines vs the other "
                         "packets)", mism, max_examples)
    problems += _section("close lines disagree with the capture", bad, max_examples)
    if mism_socks:
        k, pk, mine = mism_socks[0]
        problems.append(f"{name(k)}, the capture and the lines in time order:\n  " + "\n  ".join(timeline(pk, mine)))
    if not packets:
        problems.append("the capture saw no packets")
    return problems


def attribution(lines, expected, max_examples=12):
    """Every line names its socket's rightful owner: expected(line) -> (pid, uid, comm); returns problems.
    No line may have pid 0 except a closed-port recv/reset pair (expected() returns (0, 0, '') for those)."""
    wrong = collections.Counter()
    example = {}
    n = 0
    for o in map(_line, lines):
        if o["event"] == "lost":
            continue
        n += 1
        want = expected(o)
        have = (o["pid"], o["uid"], o["comm"])
        if have != want:
            k = (sock_key(o["netns"], o["laddr"], o["lport"], o["raddr"], o["rport"]), o["event"], o["dir"], have,
                 want)
            wrong[k] += 1
            example.setdefault(k, o)
    if not wrong:
        return []
    rows = [f"{n_}x {ev} {d} on {fmt_sock(k)}: named pid/uid/comm {have}, should be {want} (e.g. size "
            f"{example[(k, ev, d, have, want)]['size']})" for (k, ev, d, have, want), n_ in wrong.most_common()]
    return [f"{sum(wrong.values())} of {n} lines name the wrong owner:\n  " + "\n  ".join(rows[:max_examples])
            + ("\n  ..." if len(rows) > max_examples else "")]


def report(problems):
    return "\n".join(problems)
