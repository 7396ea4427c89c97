"""`pytracer tcptop` end to end on the real kernel (Linux 6.3+; older kernels get one sentence naming 6.3):
real peers, the bytes each process moved on each connection summed over the intervals, compared with what
the programs sent; the table's clearing and COUNT."""
import json
import signal
import subprocess
import time

import pytest

import traffic
from conftest import pytracer_cmd, run_env, wait_attached
from pytracer.toolkit.sockowner import have_sock_length_tracepoints

NSEND, NRECV = 300_000, 7_000


@pytest.fixture
def kernel_63(kernel):
    if not have_sock_length_tracepoints():
        r = subprocess.run(pytracer_cmd("tcptop", "1", "1"), capture_output=True, text=True, env=run_env(),
                           timeout=60)
        assert r.returncode == 3 and "Linux 6.3" in r.stderr and "Traceback" not in r.stderr, r.stderr
        pytest.skip("tcptop needs sock:sock_send_length (Linux 6.3); its message on this kernel was checked")


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
def test_bytes_per_process_and_connection(kernel_63, no_leaks, fam, host):
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


def test_handed_over_socket_counts_under_the_process_doing_io(kernel_63, no_leaks):
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
def test_table_and_count(kernel_63, no_leaks, clear):
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
