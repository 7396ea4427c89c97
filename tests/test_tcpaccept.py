"""`pytracer tcpaccept` on the real kernel: N connections from a known client to a server that accepts in a thread
of its own, on loopback (IPv4, IPv6, v4-mapped) and across a veth pair between two namespaces. On loopback the
handshake runs in softirq in the *client's* context (its connect() sends the SYN, and the receive path runs at
once on that CPU): every line must still name the server's process, never the client, never the thread id."""
import pytest

from conntools import ADDR_A, ADDR_B, LOOPBACK, Peer, Tool, accepted, connects, netns_inode, netns_pair  # noqa: F401

N = 6


def accept_run(family, bind_host, host, n, server_netns=None, client_netns=None, tool_args=None, client_family=None):
    srv = Peer("acceptor", "tasrv", family, bind_host, n, netns=server_netns)
    cli = None
    try:
        with Tool("tcpaccept", "-j", *(("-P", srv.port) if tool_args is None else tool_args)) as tool:
            cli = Peer("connector", "tacli", client_family or family, host, srv.port, n, netns=client_netns)
            cli.go()
            seen = connects(cli)
            got = accepted(srv)
            lines = tool.stop()
    finally:
        srv.kill()
        if cli:
            cli.kill()
    assert [r for _, r in seen] == ["OK"] * n
    assert sorted(got) == sorted(p for p, _ in seen)
    return lines, srv, got


def check_lines(lines, srv, peer_ports, family, laddr, raddr, netns):
    """Exactly one line per accepted connection, in accept order, named after the server process."""
    assert len(lines) == len(peer_ports), lines
    for line, rport in zip(lines, peer_ports):
        assert line == dict(line, pid=srv.pid, uid=0, comm=srv.name, family=family, laddr=laddr, lport=srv.port,
                            raddr=raddr, rport=rport, netns=netns), line


@pytest.mark.parametrize("family", ["4", "6"])
def test_loopback_accepts_name_the_server(kernel, no_leaks, family):
    host = LOOPBACK[family]
    lines, srv, got = accept_run(family, host, host, N)
    check_lines(lines, srv, got, int(family), host, host, netns_inode())


def test_v4_mapped_prints_as_ipv4(kernel):
    """A dual-stack IPv6 listener accepting IPv4 clients: an AF_INET6 socket, IPv4 on the wire and in the lines."""
    lines, srv, got = accept_run("6", "::", "127.0.0.1", 3, client_family="4")
    check_lines(lines, srv, got, 4, "127.0.0.1", "127.0.0.1", netns_inode())


@pytest.mark.parametrize("family", ["4", "6"])
def test_between_namespaces_over_veth(kernel, netns_pair, family):
    a, b = netns_pair
    lines, srv, got = accept_run(family, ADDR_A[family], ADDR_A[family], N, server_netns=a, client_netns=b)
    check_lines(lines, srv, got, int(family), ADDR_A[family], ADDR_B[family], netns_inode(a))


def test_filters_local_port_and_pid(kernel):
    """-P is the local (listening) port, -p the accepting process: two servers, each filter sees one."""
    s1 = Peer("acceptor", "tasrv", "4", "127.0.0.1", 4)
    s2 = Peer("acceptor", "taother", "4", "127.0.0.1", 3)
    peers = [s1, s2]
    try:
        with Tool("tcpaccept", "-j", "-P", s1.port) as by_port, Tool("tcpaccept", "-j", "-p", s2.pid) as by_pid:
            c1 = Peer("connector", "tacli", "4", "127.0.0.1", s1.port, 4)
            c2 = Peer("connector", "tacli", "4", "127.0.0.1", s2.port, 3)
            peers += [c1, c2]
            c1.go()
            c2.go()
            connects(c1)
            connects(c2)
            got1, got2 = accepted(s1), accepted(s2)
            port_lines, pid_lines = by_port.stop(), by_pid.stop()
    finally:
        for p in peers:
            p.kill()
    check_lines(port_lines, s1, got1, 4, "127.0.0.1", "127.0.0.1", netns_inode())
    check_lines(pid_lines, s2, got2, 4, "127.0.0.1", "127.0.0.1", netns_inode())


def test_columns(kernel):
    """bcc's columns: PID COMM IP RADDR RPORT LADDR LPORT (and TIME(s) with -t)."""
    srv = Peer("acceptor", "tasrv", "4", "127.0.0.1", 2)
    cli = None
    try:
        with Tool("tcpaccept", "-t", "-4", "-P", srv.port) as tool:
            cli = Peer("connector", "tacli", "4", "127.0.0.1", srv.port, 2)
            cli.go()
            connects(cli)
            got = accepted(srv)
            out = tool.stop()
    finally:
        srv.kill()
        if cli:
            cli.kill()
    assert out[0].split() == ["TIME(s)", "PID", "COMM", "IP", "RADDR", "RPORT", "LADDR", "LPORT"]
    rows = [ln.split() for ln in out[1:]]
    assert [r[1:] for r in rows] == [[str(srv.pid), "tasrv", "4", "127.0.0.1", str(p), "127.0.0.1", str(srv.port)]
                                     for p in got], out
