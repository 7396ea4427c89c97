"""`pytracer tcptop` end to end on the real kernel: real peers, the bytes each process moved on each connection
summed over the intervals, compared with what the programs sent; the table's clearing and COUNT. Linux 6.3+
counts at sock:sock_*_length, older kernels between syscall entry and exit; the second way is also run here
on kernels that have the first (its probe answered no), the same assertions."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

import traffic
from conftest import pytracer_cmd, run_env, wait_attached

NSEND, NRECV = 300_000, 7_000


def run_top(args, traffic_fn, stop_after=None, timeout=60):
    """`pytracer tcptop ARGS` while `traffic_fn()` runs, stopped with SIGINT `stop_after` seconds after it
    (None: it stops by itself, COUNT); returns (peers, stdout lines, status)."""
    p = subprocess.Popen(pytracer_cmd("tcptop", *map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=run_env())
    try:
        wait_attached(p)
        peers = traffic_fn()
        if stop_after is not None:
            time.sleep(stop_after)       # two intervals or more: the last bytes are in a printed table
            p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert "Traceback" not in err, err
    return peers, out.splitlines(), p.returncode


def per_process(objs, port):
    """{(pid, comm): [rx, tx]} summed over the intervals, and the connections' (pid, lport, rport) seen."""
    tot, conns = {}, set()
    for o in objs:
        for c in o["connections"]:
            if port in (c["lport"], c["rport"]):
                t = tot.setdefault((o["pid"], o["comm"]), [0, 0])
                t[0] += c["rx_bytes"]
                t[1] += c["tx_bytes"]
                conns.add((o["pid"], c["lport"] == port))
    return tot, conns


@pytest.mark.parametrize("fam,host", [("4", "127.0.0.1"), ("6", "::1")])
def test_bytes_per_process_and_connection(kernel, no_leaks, fam, host):
    """Every byte each peer sent and received, under its own pid, once, over the intervals (JSON)."""
    s = traffic.server("tsrv", fam, host, NSEND, NRECV)
    c = traffic.client("tcli", fam, host, s.port, NSEND, NRECV)

    def talk():
        c.go()
        c.wait()
        s.wait()

    _, lines, rc = run_top(["-j", "-P", s.port, "0.3"], talk, stop_after=1.0)
    assert rc == 0
    objs = [json.loads(ln) for ln in lines]
    assert all(set(o) == {"ts", "interval_s", "pid", "uid", "comm", "rx_bytes", "tx_bytes", "connections"}
               for o in objs)
    # one object per process per interval
    assert len({(o["ts"], o["pid"]) for o in objs}) == len(objs)
    tot, conns = per_process(objs, s.port)
    assert tot == {(s.pids["tsrv"], "tsrv"): [NSEND, NRECV], (c.pids["tcli"], "tcli"): [NRECV, NSEND]}
    assert conns == {(s.pids["tsrv"], True), (c.pids["tcli"], False)}


def test_handed_over_socket_counts_under_the_process_doing_io(kernel, no_leaks):
    """inetd accepts and execs a handler on the socket: the bytes are the handler's, not inetd's."""
    s = traffic.server("tinetd", "4", "127.0.0.1", NSEND, NRECV, mode="inetd", extra=("thandler",))
    c = traffic.client("tcli", "4", "127.0.0.1", s.port, NSEND, NRECV)

    def talk():
        c.go()
        c.wait()
        s.wait()

    _, lines, rc = run_top(["-j", "-P", s.port, "0.3"], talk, stop_after=1.0)
    assert rc == 0
    tot, _ = per_process([json.loads(ln) for ln in lines], s.port)
    assert tot == {(s.pids["thandler"], "thandler"): [NSEND, NRECV], (c.pids["tcli"], "tcli"): [NRECV, NSEND]}


@pytest.mark.parametrize("clear", [True, False])
def test_table_and_count(kernel, no_leaks, clear):
    """COUNT tables, then exit 0 on its own; the screen cleared with ANSI codes unless -C; bcc's columns."""
    _, lines, rc = run_top((["-C"] if not clear else []) + ["0.2", "3"], lambda: None)
    assert rc == 0
    text = "\n".join(lines)
    assert text.count("\033[H\033[2J") == (3 if clear else 0)
    headers = [ln.replace("\033[H\033[2J", "").split() for ln in lines if "RX_KB" in ln]
    assert headers == [["PID", "COMM", "LADDR", "RADDR", "RX_KB", "TX_KB"]] * 3
    assert sum("loadavg:" in ln for ln in lines) == 3


@pytest.mark.parametrize("args,words", [(["0"], "interval must be a positive"), (["1", "0"], "count must be")])
def test_bad_arguments_are_one_clear_message(args, words):
    r = subprocess.run(pytracer_cmd("tcptop", *args), capture_output=True, text=True, env=run_env(), timeout=60)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_fallback_counts_between_syscall_entry_and_exit(kernel, no_leaks, monkeypatch):
    """The counting of kernels before 6.3 (forced where the kernel has sock:sock_*_length): the bytes of
    each peer's read/write/send/recv under its pid, what MSG_PEEK looked at not counted twice, and the
    kernel's note said."""
    from pytracer.toolkit import sockowner
    from pytracer.tools.tcptop import cli as top

    monkeypatch.setattr(sockowner, "have_sock_length_tracepoints", lambda: False)
    s = traffic.server("tsrv", "4", "127.0.0.1", NSEND, NRECV)
    c = traffic.client("tcli", "4", "127.0.0.1", s.port, NSEND, NRECV)
    lsn = socket.create_server(("127.0.0.1", 0))
    own_port = lsn.getsockname()[1]
    t = top.make_tracer(top.parse_args(["-P", f"{s.port},{own_port}", "10"])).start()
    try:
        assert len(t.fallbacks) == 1 and "syscall entry and exit" in t.fallbacks[0]
        # the owner programs came with their nest.bpf.h twins, the fallback counters in place of top_send/recv
        assert set(t.obj.programs) == {"on_state", "on_state_nested", "on_destroy", "on_destroy_nested",
                                       "top_sys_enter", "top_sys_exit"}
        c.go()
        c.wait()
        s.wait()
        # a connection of this process's own: 1000 bytes peeked, then received, once each way
        a = socket.create_connection(("127.0.0.1", own_port))
        b, _ = lsn.accept()
        a.sendall(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            got = b.recv(1000, socket.MSG_PEEK | socket.MSG_WAITALL)
        assert len(b.recv(1000, socket.MSG_WAITALL)) == 1000
        rows = t.snapshot()
        a.close()
        b.close()
    finally:
        t.close()
        lsn.close()
    # (pid, comm, rx, tx) of each end of the peers' connection
    mine = sorted((r[0], r[2], r[9], r[10]) for r in rows if s.port in (r[5], r[7]))
    assert mine == sorted([(s.pids["tsrv"], "tsrv", NSEND, NRECV), (c.pids["tcli"], "tcli", NRECV, NSEND)])
    own = sorted((r[9], r[10]) for r in rows if r[0] == os.getpid() and own_port in (r[5], r[7]))
    assert own == [(0, 1000), (1000, 0)]
