"""tcpsnoop end to end on the real kernel: real client and server processes with known PIDs, real TCP
traffic on loopback (IPv4, IPv6) and between network namespaces, and assertions on what the tracer says."""
import errno
import os
import shutil
import subprocess
import time
import uuid

import pytest

import traffic
from conftest import BARE_RST, HANDSHAKE, kernel_unavailable
from pytracer.tcpsnoop import TcpSnoop

NSEND, NRECV = 300_000, 7_000


def of(events, **kw):
    return [e for e in events if all(getattr(e, k) == v for k, v in kw.items())]


def sides(events, s, c):
    """Split a conversation's events into the client's and the server's socket."""
    spid, cpid = s.pids["tsrv"], c.pids["tcli"]
    conn = [e for e in events if e.event != "lost" and (e.lport == s.port or e.rport == s.port)]
    client_side = [e for e in conn if e.rport == s.port]
    server_side = [e for e in conn if e.lport == s.port]
    return client_side, server_side, spid, cpid


def check_conversation(events, s, c, family, nsend=NSEND, nrecv=NRECV):
    cs, ss, spid, cpid = sides(events, s, c)
    syn, synack, ack = HANDSHAKE[family]
    # outbound: one SYN line named after the process that called connect()
    conn = of(cs, event="connect")
    assert len(conn) == 1, cs[:5]
    assert (conn[0].dir, conn[0].pid, conn[0].comm, conn[0].size, conn[0].family) == ("out", cpid, "tcli", syn, family)
    # inbound: tcpsnoop's three handshake lines (the real SYN, SYN-ACK and ACK), named after the process
    # that accepted
    acc = of(ss, event="accept")
    assert [(e.dir, e.size, e.pid, e.comm) for e in acc] == [("in", syn, spid, "tsrv"), ("out", synack, spid, "tsrv"),
                                                            ("in", ack, spid, "tsrv")]
    # every line of each socket names its owner, never whatever ran in softirq
    for side, who in ((cs, (cpid, "tcli", 0)), (ss, (spid, "tsrv", 0))):
        owners = {(e.pid, e.comm, e.uid) for e in side}
        assert owners == {who}, f"owners {owners}, expected {who}"
    # payload per direction: every byte the peers sent is on a segment line (a retransmitted segment, which
    # a loaded or emulated machine can cause, shows again); the close totals below count each byte once
    for side, event, want in ((cs, "send", nsend), (ss, "recv", nsend), (ss, "send", nrecv), (cs, "recv", nrecv)):
        got = sum(e.payload for e in of(side, event=event))
        assert got >= want, f"{event} lines carry {got} of {want} bytes"
    # pure ACKs and FINs are segments too
    assert any(e.payload == 0 for e in of(cs, event="send"))
    # sizes: IP packet + 14
    iphdr = 20 if family == 4 else 40
    for e in of(cs, event="send") + of(ss, event="recv"):
        assert e.size >= iphdr + 20 + 14 + e.payload
    # close summaries carry exact payload totals and a duration
    (cc,) = of(cs, event="close")
    (sc,) = of(ss, event="close")
    assert (cc.tx_bytes, cc.rx_bytes, cc.pid) == (nsend, nrecv, cpid)
    assert (sc.tx_bytes, sc.rx_bytes, sc.pid) == (nrecv, nsend, spid)
    assert cc.duration_ms is not None and 0 < cc.duration_ms < 30_000
    return cs, ss


@pytest.fixture
def snoop(kernel, no_leaks):
    with TcpSnoop() as s:
        yield s


def test_loopback_ipv4(snoop):
    s, c = traffic.conversation("4", "127.0.0.1", NSEND, NRECV)
    events = traffic.collect(snoop)
    cs, ss = check_conversation(events, s, c, 4)
    assert all(e.laddr == "127.0.0.1" and e.raddr == "127.0.0.1" for e in cs + ss)
    assert not of(events, event="lost")


def test_loopback_ipv6(snoop):
    s, c = traffic.conversation("6", "::1", NSEND, NRECV)
    cs, ss = check_conversation(traffic.collect(snoop), s, c, 6)
    assert all(e.laddr == "::1" and e.family == 6 for e in cs + ss)


def test_ipv4_mapped_prints_as_ipv4(snoop):
    """A dual-stack IPv6 listener accepting an IPv4 client: its socket is AF_INET6, the lines say IPv4."""
    s = traffic.server("tsrv", "6", "::", NSEND, NRECV)
    c = traffic.client("tcli", "4", "127.0.0.1", s.port, NSEND, NRECV)
    c.go()
    c.wait()
    s.wait()
    cs, ss = check_conversation(traffic.collect(snoop), s, c, 4)
    assert {e.laddr for e in ss} == {"127.0.0.1"}


@pytest.fixture
def netns_pair(kernel):
    """Two network namespaces joined by a veth pair (traffic stays inside them)."""
    if shutil.which("ip") is None:
        kernel_unavailable("iproute2 is not installed")
    tag = uuid.uuid4().hex[:6]
    a, b = f"ptA{tag}", f"ptB{tag}"
    cmds = [f"ip netns add {a}", f"ip netns add {b}",
            f"ip link add va{tag} netns {a} type veth peer name vb{tag} netns {b}",
            f"ip -n {a} addr add 169.254.77.1/24 dev va{tag}", f"ip -n {b} addr add 169.254.77.2/24 dev vb{tag}",
            f"ip -n {a} addr add fd77::1/64 dev va{tag} nodad", f"ip -n {b} addr add fd77::2/64 dev vb{tag} nodad",
            f"ip -n {a} link set va{tag} up", f"ip -n {b} link set vb{tag} up",
            f"ip -n {a} link set lo up", f"ip -n {b} link set lo up"]
    try:
        for cmd in cmds:
            r = subprocess.run(cmd.split(), capture_output=True, text=True)
            if r.returncode:
                kernel_unavailable(f"cannot set up network namespaces: {cmd}: {r.stderr.strip()}")
        yield a, b
    finally:
        subprocess.run(["ip", "netns", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", b], capture_output=True)


def netns_inode(name):
    return os.stat(f"/run/netns/{name}").st_ino


@pytest.mark.parametrize("family,srv,cli", [("4", "169.254.77.1", "169.254.77.1"), ("6", "fd77::1", "fd77::1")])
def test_between_namespaces_over_veth(snoop, netns_pair, family, srv, cli):
    a, b = netns_pair
    s, c = traffic.conversation(family, cli, NSEND, NRECV, netns_srv=a, netns_cli=b, srv_host=srv)
    cs, ss = check_conversation(traffic.collect(snoop), s, c, int(family))
    assert {e.netns for e in ss} == {netns_inode(a)}
    assert {e.netns for e in cs} == {netns_inode(b)}
    if family == "4":
        assert {(e.laddr, e.raddr) for e in cs} == {("169.254.77.2", "169.254.77.1")}


def test_closed_port_resets(snoop):
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                      # nobody listens on `port` now
    c = traffic.client("tcli", "4", "127.0.0.1", port, 10, 10)
    c.go()
    c.p.wait(timeout=10)               # the client fails with ECONNREFUSED
    events = traffic.collect(snoop)
    pair = [e for e in events if e.pid == 0 and e.lport == port]
    assert [(e.dir, e.event, e.size, e.uid, e.comm) for e in pair] == [("in", "recv", HANDSHAKE[4][0], 0, ""),
                                                                       ("out", "reset", BARE_RST[4], 0, "")]
    mine = of(events, pid=c.pids["tcli"])
    assert [e.event for e in mine if e.event in ("connect", "reset")] == ["connect", "reset"]
    assert of(mine, event="reset")[0].dir == "in"


def test_inetd_style_fork_exec_handoff(snoop):
    s = traffic.server("tinetd", "4", "127.0.0.1", NSEND, NRECV, mode="inetd", extra=("thandler",))
    c = traffic.client("tcli", "4", "127.0.0.1", s.port, NSEND, NRECV)
    c.go()
    c.wait()
    s.wait()
    events = traffic.collect(snoop)
    ss = [e for e in events if e.lport == s.port]
    assert {e.comm for e in of(ss, event="accept")} == {"tinetd"}
    handler = s.pids["thandler"]
    # data is sent by the handler; ACKs the kernel sent before the handler's first I/O may name inetd
    data_out = [e for e in of(ss, event="send") if e.payload]
    assert data_out and {(e.pid, e.comm) for e in data_out} == {(handler, "thandler")}
    later = ss[ss.index(data_out[0]):]
    assert {(e.pid, e.comm) for e in later} == {(handler, "thandler")}
    (close,) = of(ss, event="close")
    assert (close.pid, close.comm, close.tx_bytes, close.rx_bytes) == (handler, "thandler", NRECV, NSEND)


def test_fd_passed_over_unix_socket(snoop):
    s = traffic.server("tpass", "4", "127.0.0.1", NSEND, NRECV, mode="fdpass", extra=("trecv",))
    c = traffic.client("tcli", "4", "127.0.0.1", s.port, NSEND, NRECV)
    c.go()
    c.wait()
    s.wait()
    ss = [e for e in traffic.collect(snoop) if e.lport == s.port]
    receiver = s.pids["trecv"]
    assert {e.comm for e in of(ss, event="accept")} == {"tpass"}
    data_out = [e for e in of(ss, event="send") if e.payload]
    assert data_out and {(e.pid, e.comm) for e in data_out} == {(receiver, "trecv")}
    assert {(e.pid, e.comm) for e in ss[ss.index(data_out[0]):]} == {(receiver, "trecv")}
    assert of(ss, event="close")[0].pid == receiver


def test_connection_opened_before_tracer(kernel, no_leaks):
    """A connection established before tracing starts is shown from its first I/O, with the right process."""
    s = traffic.server("tsrv", "4", "127.0.0.1", NSEND, NRECV)
    c = traffic.Peer("client", "tcli", "4", "127.0.0.1", s.port, NSEND, NRECV)
    c.read_until("PID")
    # connect happens only after "go"; so make a raw pre-established connection with our own helper instead
    import socket

    pre_srv = socket.create_server(("127.0.0.1", 0))
    pre_cli = socket.create_connection(pre_srv.getsockname())
    conn, _ = pre_srv.accept()
    with TcpSnoop() as snoop:
        pre_cli.sendall(b"a" * 5000)
        conn.recv(65536)
        conn.sendall(b"b" * 3000)
        pre_cli.recv(65536)
        pre_cli.close()
        conn.close()
        c.go()
        c.wait()
        s.wait()
        events = traffic.collect(snoop)
    port = pre_srv.getsockname()[1]
    pre_srv.close()
    pre = [e for e in events if port in (e.lport, e.rport)]
    assert of(pre, event="send") and {e.pid for e in pre} == {os.getpid()}
    closes = of(pre, event="close")
    assert len(closes) == 2 and all(e.duration_ms is None for e in closes)
    # the new connection in the same trace is complete as usual
    check_conversation(events, s, c, 4)


def _filtered(filters, start_clients):
    """Run two conversations (distinct names, ports) with a filtered tracer; return (events, peers)."""
    s1 = traffic.server("tsrv", "4", "127.0.0.1", 1000, 100)
    s2 = traffic.server("tsrv", "6", "::1", 1000, 100)
    c1 = traffic.client("tcli", "4", "127.0.0.1", s1.port, 1000, 100, prefix=start_clients[0])
    c2 = traffic.client("tother", "6", "::1", s2.port, 1000, 100, prefix=start_clients[1])
    f = filters(s1, s2, c1, c2)
    with TcpSnoop(**f) as snoop:
        for c in (c1, c2):
            c.go()
        for p in (c1, c2, s1, s2):
            p.wait()
        events = traffic.collect(snoop)
    return events, (s1, s2, c1, c2)


@pytest.mark.parametrize("name", ["pid", "uid", "comm", "port", "family4", "family6", "no_data"])
def test_filters(kernel, no_leaks, name):
    prefixes = ((), ())
    if name == "uid":
        prefixes = (("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"), ())
    specs = {
        "pid": lambda s1, s2, c1, c2: {"pids": [c1.pids["tcli"]]},
        "uid": lambda s1, s2, c1, c2: {"uid": 65534},
        "comm": lambda s1, s2, c1, c2: {"comm": "tother"},
        "port": lambda s1, s2, c1, c2: {"ports": [s1.port]},
        "family4": lambda s1, s2, c1, c2: {"family": 4},
        "family6": lambda s1, s2, c1, c2: {"family": 6},
        "no_data": lambda s1, s2, c1, c2: {"no_data": True},
    }
    events, (s1, s2, c1, c2) = _filtered(specs[name], prefixes)
    events = [e for e in events if e.event != "lost"]
    assert events
    if name in ("pid", "uid"):
        assert {e.pid for e in events} == {c1.pids["tcli"]}
        assert of(events, event="connect") and of(events, event="close")
    elif name == "comm":
        assert {e.comm for e in events} == {"tother"}
    elif name == "port":
        assert all(s1.port in (e.lport, e.rport) for e in events)
        assert {e.comm for e in events} == {"tcli", "tsrv"}
    elif name in ("family4", "family6"):
        assert {e.family for e in events} == {int(name[-1])}
    else:   # (its own connections: another program's refused SYN shows as a recv line with its RST)
        mine = [e for e in events if {e.lport, e.rport} & {s1.port, s2.port}]
        assert {e.event for e in mine} <= {"connect", "accept", "reset", "close"}
        closes = of(mine, event="close")
        assert sorted(e.tx_bytes for e in closes) == [100, 100, 1000, 1000]


def test_cgroup_filter(kernel, no_leaks):
    from pytracer.toolkit.owners import cgroup2_mount

    root = cgroup2_mount()
    if root is None:
        kernel_unavailable("no cgroup v2 hierarchy is mounted")
    cg = os.path.join(root, f"pytracer-test-{uuid.uuid4().hex[:6]}")
    os.mkdir(cg)
    peers = []
    try:
        s = traffic.server("tsrv", "4", "127.0.0.1", 1000, 100)
        peers.append(s)
        c = traffic.client("tcli", "4", "127.0.0.1", s.port, 1000, 100)
        peers.append(c)
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(c.pids["tcli"]))
        with TcpSnoop(cgroup=cg) as snoop:
            c.go()
            c.wait()
            s.wait()
            events = traffic.collect(snoop)
        assert events and {e.pid for e in events} == {c.pids["tcli"]}
        assert of(events, event="connect") and of(events, event="close")
    finally:
        # A peer still waiting (the test failed before it ran) keeps the cgroup populated: end it first.
        for p in peers:
            if p.p.poll() is None:
                p.p.kill()
            p.p.wait()
        # The kernel may take a moment to let go of the cgroup after its last task is reaped.
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(cg)
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


# N short connections at RATE/s to a server in the same process: connect, send 100 bytes, read 100, close.
CHURN = r"""
import socket, sys, threading, time
n, rate = int(sys.argv[1]), float(sys.argv[2])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(512)
print(srv.getsockname()[1], flush=True)
sys.stdin.readline()

def exactly(sock, n):
    got = 0
    while got < n:
        got += len(sock.recv(n - got))

def serve():
    while True:
        c, _ = srv.accept()
        exactly(c, 100)
        c.sendall(b"y" * 100)
        c.close()

threading.Thread(target=serve, daemon=True).start()
t0 = time.monotonic()
for i in range(n):
    s = socket.create_connection(srv.getsockname())
    s.sendall(b"x" * 100)
    exactly(s, 100)
    s.close()
    ahead = t0 + (i + 1) / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
"""


def test_no_loss_when_the_reader_keeps_up(kernel, no_leaks):
    """22 k lines/s for 4 s through the default 4 MiB ring buffer, which then never holds more than a few KB:
    the kernel must never find it full. (consumer_pos stored byte by byte, as struct's "<Q" does, once let
    the kernel see it half-written and refuse 4-5 records in such a run; stored whole, none.)"""
    import sys

    from pytracer.tcpsnoop import Event

    n = 4000
    churn = subprocess.Popen([sys.executable, "-c", CHURN, str(n), "1000"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(churn.stdout.readline())
        with TcpSnoop(ports=[port]) as snoop:
            churn.stdin.write("go\n")
            churn.stdin.flush()
            lines, lost = [], {}

            def count_losses():
                snoop.new_losses()
                for why, count in snoop.last_losses.items():
                    lost[why] = lost.get(why, 0) + count

            while churn.poll() is None:
                lines += snoop.poll_lines(0.25)
                count_losses()
            events = [Event(line) for line in lines] + traffic.collect(snoop)
            count_losses()
    finally:
        churn.kill()
        churn.wait()
    assert churn.returncode in (0, -9)
    assert lost.get("ringbuf", 0) == 0, lost
    connects = [e for e in events if e.event == "connect"]
    assert n - sum(lost.values()) <= len(connects) <= n, lost
