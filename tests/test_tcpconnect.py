"""`pytracer tcpconnect` on the real kernel: connections from a known client process to a server on loopback
(IPv4, IPv6) and across a veth pair between two namespaces of the test's own; refused, timed-out, unreachable
and abandoned connects with their error; -c counts; the -p/-u/-P/--comm filters, which the kernel applies."""
import subprocess
import time

import pytest

from conntools import (ADDR_A, ADDR_B, LOOPBACK, Peer, Tool, accepted, connects, netns_inode, netns_pair,  # noqa: F401
                       nft_input_rule)
from test_real_programs import free_port

N = 6


def check_lines(lines, client, ports_results, family, laddr, raddr, rport, netns, uid=0):
    """Exactly one line per connect the client made, in order, with its tuple, owner and result."""
    assert len(lines) == len(ports_results), lines
    for line, (lport, result) in zip(lines, ports_results):
        want_result, want_error = ("established", None) if result == "OK" else ("failed", result)
        assert line == dict(line, pid=client.pid, uid=uid, comm=client.name, family=int(family), laddr=laddr,
                            lport=lport, raddr=raddr, rport=rport, netns=netns, result=want_result,
                            error=want_error), line
        assert line["latency_us"] >= 0


def connect_run(family, host, n, server_netns=None, client_netns=None):
    """A server accepting n connections and a client making them, traced with -P (the server's port); (lines,
    server, client, what the client saw)."""
    srv = Peer("acceptor", "tcsrv", family, host, n, netns=server_netns)
    cli = None
    try:
        with Tool("tcpconnect", "-j", "-P", srv.port) as tool:
            cli = Peer("connector", "tccli", family, host, srv.port, n, netns=client_netns)
            cli.go()
            seen = connects(cli)
            assert sorted(accepted(srv)) == sorted(p for p, _ in seen)
            lines = tool.stop()
    finally:
        srv.kill()
        if cli:
            cli.kill()
    assert [r for _, r in seen] == ["OK"] * n
    return lines, srv, cli, seen


@pytest.mark.parametrize("family", ["4", "6"])
def test_loopback_connects(kernel, no_leaks, family):
    host = LOOPBACK[family]
    lines, srv, cli, seen = connect_run(family, host, N)
    check_lines(lines, cli, seen, family, host, host, srv.port, netns_inode())


@pytest.mark.parametrize("family", ["4", "6"])
def test_between_namespaces_over_veth(kernel, netns_pair, family):
    a, b = netns_pair
    lines, srv, cli, seen = connect_run(family, ADDR_A[family], N, server_netns=a, client_netns=b)
    check_lines(lines, cli, seen, family, ADDR_B[family], ADDR_A[family], srv.port, netns_inode(b))


@pytest.mark.parametrize("family", ["4", "6"])
def test_refused_connects_name_the_error_and_the_process(kernel, family):
    """A closed port: the peer's RST ends the handshake in softirq; the line still names the client."""
    port = free_port(int(family))
    with Tool("tcpconnect", "-j", "-P", port) as tool:
        cli = Peer("connector", "tccli", family, LOOPBACK[family], port, 3)
        try:
            cli.go()
            seen = connects(cli)
        finally:
            cli.kill()
        lines = tool.stop()
    assert [r for _, r in seen] == ["ECONNREFUSED"] * 3
    check_lines(lines, cli, seen, family, LOOPBACK[family], LOOPBACK[family], port, netns_inode())


def test_timeout_and_unreachable(kernel, netns_pair):
    """SYNs dropped in the server's namespace: the kernel gives up after TCP_SYNCNT=1 retries (ETIMEDOUT,
    ~3 s); SYNs answered with ICMP host-unreachable: EHOSTUNREACH at once; a program's own connect timeout
    (non-blocking connect, then close): result "closed", no error."""
    a, b = netns_pair
    dropped, rejected = free_port(), free_port()
    nft_input_rule(a, f"tcp dport {dropped} drop\n  tcp dport {rejected} reject with icmpx type host-unreachable")
    clis = []
    with Tool("tcpconnect", "-j", "-P", f"{dropped},{rejected}") as tool:
        try:
            for port, opts in ((dropped, ("--syncnt", 1)), (rejected, ()), (dropped, ("--timeout", 0.3))):
                clis.append(Peer("connector", "tccli", "4", ADDR_A["4"], port, 1, *opts, netns=b))
            t0 = time.monotonic()
            for c in clis:
                c.go()
            seen = [connects(c) for c in clis]
            took = time.monotonic() - t0
        finally:
            for c in clis:
                c.kill()
        lines = tool.stop()
    assert [s[0][1] for s in seen] == ["ETIMEDOUT", "EHOSTUNREACH", "TIMEOUT"], seen
    assert took >= 2.5, "TCP_SYNCNT=1: the SYN and one retry, 1 s then 2 s"
    by_port = {ln["lport"]: ln for ln in lines}
    assert len(lines) == 3, lines
    for c, s, (result, error) in zip(clis, seen, (("failed", "ETIMEDOUT"), ("failed", "EHOSTUNREACH"),
                                                  ("closed", None))):
        line = by_port[s[0][0]]
        assert (line["pid"], line["comm"], line["result"], line["error"]) == (c.pid, "tccli", result, error), line
        assert (line["laddr"], line["raddr"], line["netns"]) == (ADDR_B["4"], ADDR_A["4"], netns_inode(b))
    assert by_port[seen[0][0][0]]["latency_us"] >= 2_500_000


def test_count(kernel):
    """-c: connects per (source, destination, port), printed at Ctrl-C, exact."""
    srv1 = Peer("acceptor", "tcsrv", "4", "127.0.0.1", 5)
    srv2 = Peer("acceptor", "tcsrv", "4", "127.0.0.1", 3)
    closed = free_port()
    try:
        with Tool("tcpconnect", "-c", "-P", f"{srv1.port},{srv2.port},{closed}") as tool:
            runs = [Peer("connector", "tccli", "4", "127.0.0.1", port, n)
                    for port, n in ((srv1.port, 5), (srv2.port, 3), (closed, 2))]
            for c in runs:
                c.go()
            for c in runs:
                connects(c)
            out = tool.stop()
    finally:
        for p in [srv1, srv2] + runs:
            p.kill()
    assert out[0].split() == ["LADDR", "RADDR", "RPORT", "CONNECTS"]
    rows = sorted(tuple(ln.split()) for ln in out[1:])
    assert rows == sorted([("127.0.0.1", "127.0.0.1", str(srv1.port), "5"),
                           ("127.0.0.1", "127.0.0.1", str(srv2.port), "3"),
                           ("127.0.0.1", "127.0.0.1", str(closed), "2")]), out


def test_filters_pid_uid_port_comm(kernel):
    """Two clients of one server, one of them as uid 65534: each filter keeps exactly that client's lines."""
    srv = Peer("acceptor", "tcsrv", "4", "127.0.0.1", 8)
    other = Peer("acceptor", "tcsrv", "4", "127.0.0.1", 2)
    peers = [srv, other]
    try:
        tools = [Tool("tcpconnect", "-j", *args) for args in
                 (("-P", srv.port, "-u", 65534), ("-P", srv.port, "--comm", "tcnobody"), ("-P", other.port))]
        for t in tools:
            t.__enter__()
        try:
            root = Peer("connector", "tccli", "4", "127.0.0.1", srv.port, 4)
            nobody = Peer("connector", "tcnobody", "4", "127.0.0.1", srv.port, 4, "--uid", 65534)
            third = Peer("connector", "tcthird", "4", "127.0.0.1", other.port, 2)
            peers += [root, nobody, third]
            with Tool("tcpconnect", "-j", "-p", root.pid) as by_pid:
                for c in (root, nobody, third):
                    c.go()
                seen = {c: connects(c) for c in (root, nobody, third)}
                pid_lines = by_pid.stop()
            uid_lines, comm_lines, port_lines = (t.stop() for t in tools)
        finally:
            for t in tools:
                t.__exit__()
    finally:
        for p in peers:
            p.kill()
    lo = "127.0.0.1"
    check_lines(pid_lines, root, seen[root], "4", lo, lo, srv.port, netns_inode())
    check_lines(uid_lines, nobody, seen[nobody], "4", lo, lo, srv.port, netns_inode(), uid=65534)
    check_lines(comm_lines, nobody, seen[nobody], "4", lo, lo, srv.port, netns_inode(), uid=65534)
    check_lines(port_lines, third, seen[third], "4", lo, lo, other.port, netns_inode())


def test_columns(kernel):
    """The default output: libbpf-tools' columns (with -t, -U, -L) and RESULT."""
    srv = Peer("acceptor", "tcsrv", "6", "::1", 1)
    closed = free_port(6)
    try:
        with Tool("tcpconnect", "-t", "-U", "-L", "-6", "-P", f"{srv.port},{closed}") as tool:
            cli = Peer("connector", "tccli", "6", "::1", srv.port, 1)
            ref = Peer("connector", "tccli", "6", "::1", closed, 1)
            cli.go()
            ((lport, _),) = connects(cli)
            ref.go()
            ((rlport, _),) = connects(ref)
            out = tool.stop()
    finally:
        srv.kill()
    assert out[0].split() == ["TIME(s)", "UID", "PID", "COMM", "IP", "SADDR", "LPORT", "DADDR", "DPORT", "RESULT"]
    rows = [ln.split() for ln in out[1:]]
    assert [r[1:] for r in rows] == [
        ["0", str(cli.pid), "tccli", "6", "::1", str(lport), "::1", str(srv.port), "OK"],
        ["0", str(ref.pid), "tccli", "6", "::1", str(rlport), "::1", str(closed), "ECONNREFUSED"]], out
    assert all(float(r[0]) >= 0 for r in rows)


def test_failure_inside_connect_takes_its_return_value(kernel, netns_pair):
    """No local port left (a namespace whose ephemeral range is two ports, both in use towards the same
    server): connect() fails with EADDRNOTAVAIL after the state change to SYN_SENT, with no sk_err; the line
    takes the error from connect()'s return."""
    a, b = netns_pair
    r = subprocess.run(["ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40001"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    srv = Peer("acceptor", "tcsrv", "4", ADDR_A["4"], 2, netns=a)
    cli = None
    try:
        with Tool("tcpconnect", "-j", "-P", srv.port) as tool:
            cli = Peer("connector", "tccli", "4", ADDR_A["4"], srv.port, 3, "--hold", 1, netns=b)
            cli.go()
            seen = connects(cli)
            lines = tool.stop()
    finally:
        srv.kill()
        if cli:
            cli.kill()
    assert [r for _, r in seen] == ["OK", "OK", "EADDRNOTAVAIL"], seen
    check_lines(lines, cli, seen, "4", ADDR_B["4"], ADDR_A["4"], srv.port, netns_inode(b))


def test_no_syscall_tracepoints_is_a_note_not_a_failure(kernel):
    """Where the kernel has no syscall tracepoint for connect() (CONFIG_FTRACE_SYSCALLS off), its two programs
    stay out and the user is told what that costs; the state-change program is all the rest needs."""
    import types

    from pytracer.tools.tcpconnect.cli import TcpConnect

    t = TcpConnect("unused.bpf.o")
    missing = types.SimpleNamespace(attach_kind="tracepoint", attach_target="syscalls/sys_exit_connect_nonexistent")
    present = types.SimpleNamespace(attach_kind="tracepoint", attach_target="syscalls/sys_exit_connect")
    btf = types.SimpleNamespace(attach_kind="tp_btf", attach_target="inet_sock_set_state")
    assert [t.wanted(p) for p in (missing, missing, present, btf)] == [False, False, True, True]
    assert t.fallbacks == ["this kernel has no tracepoint syscalls:sys_exit_connect_nonexistent: a connect() that "
                           "fails by itself with no socket error (EADDRNOTAVAIL: no local port left) shows as CLOSED"]


def test_v4_mapped_connects_print_as_ipv4(kernel):
    """An AF_INET6 socket connecting to ::ffff:127.0.0.1 sends IPv4: the lines say IPv4, as tcpsnoop's do."""
    srv = Peer("acceptor", "tcsrv", "4", "127.0.0.1", 3)
    cli = None
    try:
        with Tool("tcpconnect", "-j", "-P", srv.port) as tool:
            cli = Peer("connector", "tccli", "4", "127.0.0.1", srv.port, 3, "--v6socket", 1)
            cli.go()
            seen = connects(cli)
            accepted(srv)
            lines = tool.stop()
    finally:
        srv.kill()
        if cli:
            cli.kill()
    check_lines(lines, cli, seen, "4", "127.0.0.1", "127.0.0.1", srv.port, netns_inode())


def test_count_json(kernel):
    """-c -j: one object per (family, source, destination, port) at the end, the failed connects counted too."""
    srv = Peer("acceptor", "tcsrv", "6", "::1", 4)
    closed = free_port(6)
    runs = []
    try:
        with Tool("tcpconnect", "-c", "-j", "-P", f"{srv.port},{closed}") as tool:
            runs = [Peer("connector", "tccli", "6", "::1", port, n) for port, n in ((srv.port, 4), (closed, 3))]
            for c in runs:
                c.go()
            for c in runs:
                connects(c)
            rows = tool.stop()
    finally:
        for p in [srv] + runs:
            p.kill()
    assert sorted(rows, key=lambda r: r["rport"]) == sorted(
        [{"family": 6, "laddr": "::1", "raddr": "::1", "rport": srv.port, "connects": 4},
         {"family": 6, "laddr": "::1", "raddr": "::1", "rport": closed, "connects": 3}], key=lambda r: r["rport"])
