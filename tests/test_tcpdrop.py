"""pytracer tcpdrop on the real kernel: TCP packets dropped on purpose inside a pair of network namespaces
(a SYN to a port nobody listens on, an nftables drop rule, a full accept queue), each reported once with
the packet's tuple and flags, the drop reason as the running kernel names it and a kernel stack that runs
through the function that dropped it."""
import json
import subprocess
import sys
import time

import pytest

from conftest import start_tool, stop_tool
from netlab import NetnsPair
from pytracer.toolkit.kernel_btf import enum_names, tracepoint_args


@pytest.fixture
def pair(kernel):
    with NetnsPair() as p:
        yield p


def expected_reason(name, older=None):
    """What the tool must print for a drop the kernel gives reason `name`: that name where this kernel's
    enum skb_drop_reason has it, else `older` (the reason such kernels give), and with no reason argument
    at all (before 5.17) the tool's wording of that."""
    if tracepoint_args("kfree_skb") < 3:
        return "unknown (needs Linux 5.17)"
    names = set((enum_names("skb_drop_reason", "SKB_DROP_REASON_") or {}).values())
    return name if name in names else older


def start_tracer(*args):
    return start_tool("tcpdrop", "-j", *args)


def stop_tracer(p):
    out, err = stop_tool(p)
    lines = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    assert not [e for e in lines if e.get("event") == "lost"], lines
    return lines


def in_ns(pair, ns, code, *args, timeout=30):
    """Run Python `code` in namespace `ns`; its stdout."""
    r = subprocess.run(pair.exec_cmd(ns) + [sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


CONNECT = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("CONNECTED", s.getsockname()[1])
except ConnectionRefusedError:
    print("REFUSED", s.getsockname()[1])
except (socket.timeout, TimeoutError):
    print("TIMEOUT", s.getsockname()[1])
"""


def of_tuple(lines, saddr, sport, daddr, dport):
    return [e for e in lines if (e["saddr"], e["sport"], e["daddr"], e["dport"]) == (saddr, sport, daddr, dport)]


def frames(e):
    return [f.split("+")[0] for f in e["stack"]]


@pytest.mark.parametrize("family", [4, 6])
def test_syn_to_a_closed_port(pair, family):
    """One SYN to a port of the server's namespace where nobody listens: dropped once (NO_SOCKET) by
    tcp_v{4,6}_rcv, which answers with a RST; no socket, so no state and no pid."""
    cli, srv = pair.addr[family]
    port = 40000 + (hash(pair.b) % 20000)
    tracer = start_tracer("-P", str(port))
    try:
        verdict, cport = in_ns(pair, pair.a, CONNECT, srv, port, 5).split()
    finally:
        time.sleep(0.3)
        lines = stop_tracer(tracer)
    assert verdict == "REFUSED"
    mine = of_tuple(lines, cli, int(cport), srv, port)
    assert len(mine) == 1, lines
    e = mine[0]
    assert (e["family"], e["tcpflags"], e["state"], e["pid"]) == (family, ["SYN"], None, None)
    assert e["reason"] == expected_reason("NO_SOCKET")
    assert f"tcp_v{family}_rcv" in frames(e), e["stack"]


@pytest.mark.parametrize("family", [4, 6])
def test_netfilter_drop(pair, family):
    """An nftables rule drops the client's SYNs: as many drop lines (NETFILTER_DROP, from nf_hook_slow) as
    the rule's counter counted."""
    cli, srv = pair.addr[family]
    port = 40000 + (hash(pair.a) % 20000)
    pair.nft(pair.b, f"""table inet pytr {{
    counter drops {{ }}
    chain input {{ type filter hook input priority 0; policy accept;
        tcp dport {port} counter name drops drop
    }}
}}""")
    tracer = start_tracer("-P", str(port))
    try:
        verdict, cport = in_ns(pair, pair.a, CONNECT, srv, port, 2.5).split()    # SYN, and one at +1 s
        drops = pair.counter(pair.b, "drops")
    finally:
        time.sleep(0.3)
        lines = stop_tracer(tracer)
    assert verdict == "TIMEOUT" and drops >= 2
    mine = of_tuple(lines, cli, int(cport), srv, port)
    assert len(mine) == drops, (drops, mine)
    assert {(e["tcpflags"] == ["SYN"], e["reason"]) for e in mine} == {(True, expected_reason("NETFILTER_DROP"))}
    assert all("nf_hook_slow" in frames(e) for e in mine), mine[0]["stack"]


LISTEN_NO_ACCEPT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind((sys.argv[1], 0))
s.listen(1)                      # the accept queue is full with 2 connections; nobody accepts them
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
"""

THREE_CLIENTS = """
import socket, struct, sys, time
addr, port, late = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
first = socket.create_connection((addr, port))          # queued
late_one = socket.socket()
late_one.bind((sys.argv[4], late))
late_one.connect((addr, port))  # done on the SYN-ACK; its ACK is dropped: a request socket on the server
third = socket.create_connection((addr, port))          # (a syncookie: the request queue is full) queued: full
print("CONNECTED", flush=True)
sys.stdin.readline()
late_one.send(b"x" * 200)       # would complete its handshake: the accept queue is full
print("SENT", flush=True)
sys.stdin.readline()
# a RST, and no more retransmissions: then the counter and the tracer can be read without a race
late_one.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
late_one.close()
print("CLOSED", flush=True)
"""


def test_full_accept_queue(pair):
    """A listener with backlog 1 that never accepts: two connections fill its accept queue while a third
    client's handshake is held half-done (an nftables rule in the client's namespace drops the ACK that
    would complete it). That client's first data segment, which would complete it, finds the queue full:
    dropped on tcp_check_req's listen-overflow path (TCP_LISTEN_OVERFLOW, 6.15+), and again on every
    retransmission. A counter of that client's data segments arriving in the server's namespace says how
    many."""
    cli, srv = pair.addr[4]
    late = 20000 + hash(pair.a) % 20000
    server = subprocess.Popen(pair.exec_cmd(pair.b) + [sys.executable, "-c", LISTEN_NO_ACCEPT, srv],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    clients = tracer = None
    try:
        port = int(server.stdout.readline())
        pair.nft(pair.a, f"""table inet pytr {{
    chain output {{ type filter hook output priority 0; policy accept;
        tcp sport {late} tcp flags & (syn | ack | fin | rst | psh) == ack meta length < 100 drop
    }}
}}""")
        pair.nft(pair.b, f"""table inet pytr {{
    counter drops {{ }}
    chain input {{ type filter hook input priority 0; policy accept;
        tcp sport {late} tcp dport {port} meta length > 200 counter name drops
    }}
}}""")
        tracer = start_tracer("-P", str(port))
        clients = subprocess.Popen(pair.exec_cmd(pair.a) + [sys.executable, "-c", THREE_CLIENTS, srv, str(port),
                                                            str(late), cli],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert clients.stdout.readline().strip() == "CONNECTED"
        pair.nft(pair.a, "delete table inet pytr")
        clients.stdin.write("go\n")
        clients.stdin.flush()
        assert clients.stdout.readline().strip() == "SENT"
        time.sleep(1.0)         # the RTO retransmissions, dropped likewise
        clients.stdin.write("go\n")
        clients.stdin.flush()
        assert clients.stdout.readline().strip() == "CLOSED"
        time.sleep(0.3)
        arrived = pair.counter(pair.b, "drops")
        time.sleep(0.3)
        lines = stop_tracer(tracer)
        tracer = None
    finally:
        for p in (clients, server):
            if p is not None:
                p.kill()
                p.wait()
        if tracer is not None:
            stop_tracer(tracer)
    data = [e for e in of_tuple(lines, cli, late, srv, port) if "PSH" in e["tcpflags"]]
    assert arrived >= 2 and len(data) == arrived, (arrived, len(data), [(e["reason"], e["tcpflags"]) for e in data])
    assert all("tcp_v4_rcv" in frames(e) for e in data), data[0]["stack"]
    reason = expected_reason("TCP_LISTEN_OVERFLOW")
    if reason is not None:
        assert {e["reason"] for e in data} == {reason}
    else:
        # 5.17 - 6.14 give this drop no reason of its own (tcp_v4_rcv's default): one, whichever it is
        assert len({e["reason"] for e in data}) == 1
    if tracepoint_args("kfree_skb") >= 4:
        # 6.11+ pass the receiving socket, the listener (skb->sk is not set yet): its state
        assert {e["state"] for e in data} == {"LISTEN"}


def test_columns(pair):
    """bcc's layout: TIME PID IP SADDR:SPORT > DADDR:DPORT STATE (FLAGS), then the reason, then the stack
    one frame a line (tab-indented), then an empty line."""
    cli, srv = pair.addr[6]
    port = 40000 + (hash(pair.b) % 20000)
    p = start_tool("tcpdrop", "-P", str(port))
    try:
        verdict, cport = in_ns(pair, pair.a, CONNECT, srv, port, 5).split()
        time.sleep(0.3)
    finally:
        out, err = stop_tool(p)
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "PID", "IP", "SADDR:SPORT", ">", "DADDR:DPORT", "STATE", "(FLAGS)", "REASON"]
    at = [i for i, ln in enumerate(lines) if f"[{cli}]:{cport} " in ln]
    assert len(at) == 1
    head = lines[at[0]].split()
    # no pid (no socket): TIME IP SADDR:SPORT > DADDR:DPORT STATE (FLAGS) REASON
    assert head[1:] == ["6", f"[{cli}]:{cport}", ">", f"[{srv}]:{port}", "-", "(SYN)",
                        *expected_reason("NO_SOCKET").split()]
    stack = []
    for ln in lines[at[0] + 1:]:
        if not ln:
            break
        assert ln.startswith("\t")
        stack.append(ln.strip().split("+")[0])
    assert "tcp_v6_rcv" in stack
