"""`pytracer tcpconnlat` on the real kernel: every completed active open with the connecting process and its latency;
a delay caused on purpose (the server's namespace drops SYNs until the client has sent its first one, so the
handshake completes with the retransmission, 1 s later) measured within bounds; the minimum-latency argument,
applied in the kernel; failed connects print nothing."""
import time

import pytest

from conntools import (ADDR_A, ADDR_B, LOOPBACK, Peer, Tool, accepted, connects, netns_inode, netns_pair,  # noqa: F401
                       nft_flush, nft_input_rule)
from test_real_programs import free_port

N = 5


def check_lines(lines, cli, seen, family, laddr, raddr, rport, netns):
    assert len(lines) == len(seen), lines
    for line, (lport, _) in zip(lines, seen):
        assert line == dict(line, pid=cli.pid, uid=0, comm=cli.name, family=int(family), laddr=laddr, lport=lport,
                            raddr=raddr, rport=rport, netns=netns), line


@pytest.mark.parametrize("family", ["4", "6"])
def test_loopback_latencies(kernel, no_leaks, family):
    host = LOOPBACK[family]
    srv = Peer("acceptor", "tlsrv", family, host, N)
    closed = free_port(int(family))
    cli = ref = None
    try:
        with Tool("tcpconnlat", "-j", "-P", f"{srv.port},{closed}") as tool:
            cli = Peer("connector", "tlcli", family, host, srv.port, N)
            ref = Peer("connector", "tlcli", family, host, closed, 2)
            cli.go()
            ref.go()
            seen = connects(cli)
            assert [r for _, r in connects(ref)] == ["ECONNREFUSED"] * 2
            accepted(srv)
            lines = tool.stop()
    finally:
        for p in (srv, cli, ref):
            if p:
                p.kill()
    check_lines(lines, cli, seen, family, host, host, srv.port, netns_inode())   # none for the refused ones
    assert all(0 < ln["latency_us"] < 1_000_000 for ln in lines), lines


def test_a_retransmitted_syn_is_in_the_latency(kernel, netns_pair):
    """The server's namespace drops SYNs to one port until 0.3 s after the client's connect(): the handshake
    completes with the client's first retransmission (initial RTO 1 s). A second client, to a port nothing
    drops, connects at the same time. `tcpconnlat 500` (the minimum, in ms) shows only the slow one."""
    a, b = netns_pair
    slow_srv = Peer("acceptor", "tlsrv", "4", ADDR_A["4"], 1, netns=a)
    fast_srv = Peer("acceptor", "tlsrv", "4", ADDR_A["4"], 1, netns=a)
    peers = [slow_srv, fast_srv]
    nft_input_rule(a, f"tcp dport {slow_srv.port} tcp flags syn drop")
    try:
        ports = f"{slow_srv.port},{fast_srv.port}"
        with Tool("tcpconnlat", "-j", "-P", ports) as every, Tool("tcpconnlat", "-j", "-P", ports, "500") as slow:
            slow_cli = Peer("connector", "tlslow", "4", ADDR_A["4"], slow_srv.port, 1, netns=b)
            fast_cli = Peer("connector", "tlfast", "4", ADDR_A["4"], fast_srv.port, 1, netns=b)
            peers += [slow_cli, fast_cli]
            t0 = time.monotonic()
            slow_cli.go()
            fast_cli.go()
            time.sleep(0.3)
            nft_flush(a)
            slow_seen, fast_seen = connects(slow_cli), connects(fast_cli)
            took = time.monotonic() - t0
            every_lines, slow_lines = every.stop(), slow.stop()
    finally:
        for p in peers:
            p.kill()
    lines = {ln["comm"]: ln for ln in every_lines}
    assert len(every_lines) == 2 and set(lines) == {"tlslow", "tlfast"}, every_lines
    check_lines([lines["tlslow"]], slow_cli, slow_seen, "4", ADDR_B["4"], ADDR_A["4"], slow_srv.port, netns_inode(b))
    check_lines([lines["tlfast"]], fast_cli, fast_seen, "4", ADDR_B["4"], ADDR_A["4"], fast_srv.port, netns_inode(b))
    # at least the initial RTO; at most what the client itself waited (a loaded host may make it the second
    # retransmission, 3 s after the connect())
    assert 1_000_000 <= lines["tlslow"]["latency_us"] <= took * 1e6, (lines, took)
    assert lines["tlfast"]["latency_us"] < 1_000_000, lines
    # the other tracer's own programs stamped the same state changes: the same line, to the clock's noise
    (same,) = slow_lines
    other = lambda ln: {k: v for k, v in ln.items() if k not in ("ts", "latency_us")}  # noqa: E731
    assert other(same) == other(lines["tlslow"]) and abs(same["latency_us"] - lines["tlslow"]["latency_us"]) < 50_000


def test_columns(kernel):
    """libbpf-tools' columns: PID COMM IP SADDR [LPORT] DADDR DPORT LAT(ms), TIME(s) first with -t."""
    srv = Peer("acceptor", "tlsrv", "4", "127.0.0.1", 1)
    cli = None
    try:
        with Tool("tcpconnlat", "-t", "-L", "-P", srv.port) as tool:
            cli = Peer("connector", "tlcli", "4", "127.0.0.1", srv.port, 1)
            cli.go()
            ((lport, _),) = connects(cli)
            accepted(srv)
            out = tool.stop()
    finally:
        srv.kill()
        if cli:
            cli.kill()
    assert out[0].split() == ["TIME(s)", "PID", "COMM", "IP", "SADDR", "LPORT", "DADDR", "DPORT", "LAT(ms)"]
    (row,) = [ln.split() for ln in out[1:]]
    assert row[1:-1] == [str(cli.pid), "tlcli", "4", "127.0.0.1", str(lport), "127.0.0.1", str(srv.port)], out
    assert 0 < float(row[-1]) < 1000


def test_bad_minimum_is_a_clear_error(kernel):
    import subprocess

    from conftest import pytracer_cmd, run_env

    r = subprocess.run(pytracer_cmd("tcpconnlat", "soon"), capture_output=True, text=True, env=run_env(), timeout=60)
    assert r.returncode == 2 and "not a number of milliseconds: 'soon'" in r.stderr and "Traceback" not in r.stderr
