"""`pytracer tcplife` end to end on the real kernel: the command a user runs, real peers (tests/peers.py),
curl against python's http.server, IPv4, IPv6 and a veth pair between two namespaces; every row checked
against what the programs did (who held each socket, how many bytes each side sent), and libbpf-tools'
tcplife side by side where it is installed."""
import json
import os
import pwd
import signal
import subprocess
import threading
import time

import pytest

import traffic
from conftest import pytracer_cmd, run_env, wait_attached
from test_real_programs import SYSTEM_PYTHON, curl, daemon, free_port, need, workdir  # noqa: F401 (fixture)
from test_tcpsnoop import netns_inode, netns_pair  # noqa: F401 (fixture)

NSEND, NRECV = 300_000, 7_000
KEYS = ["ts", "pid", "uid", "comm", "family", "laddr", "lport", "raddr", "rport", "netns", "tx_bytes", "rx_bytes",
        "duration_ms"]


class Life:
    """`pytracer tcplife ARGS` running: its stdout read by a thread, stopped (SIGINT) and reaped on exit."""

    def __init__(self, *args, json_lines=True, attach_wait=True):
        self.p = subprocess.Popen(pytracer_cmd("tcplife", *(["-j"] if json_lines else []), *map(str, args)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env())
        self.lines, self.json = [], json_lines
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        if attach_wait:
            wait_attached(self.p)

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)

    def rows(self, want, match=lambda r: True, timeout=20.0):
        """The rows that `match`, once there are `want` of them (or the time is up), plus a short wait to
        see that no extra row follows."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self._matching(match)) < want:
            time.sleep(0.05)
        time.sleep(0.3)
        return self._matching(match)

    def _matching(self, match):
        rows = [json.loads(ln) for ln in list(self.lines)] if self.json else list(self.lines)
        return [r for r in rows if match(r)]

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.t.join(timeout=5)
        self.stderr = self.p.stderr.read()
        self.p.stderr.close()
        self.p.stdout.close()
        return self.p.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def on_port(port):
    return lambda r: port in (r["lport"], r["rport"])


def check_pair(rows, s_port, server, client, fam, laddr, to_server, to_client, netns=(None, None)):
    """Exactly one row per end of one connection, each naming the process at that end, with exact bytes."""
    assert len(rows) == 2, rows
    (srow,) = [r for r in rows if r["lport"] == s_port]
    (crow,) = [r for r in rows if r["rport"] == s_port]
    assert list(srow) == KEYS
    assert (srow["pid"], srow["comm"], srow["uid"]) == server, srow
    assert (crow["pid"], crow["comm"], crow["uid"]) == client, crow
    assert (srow["rport"], srow["raddr"], srow["laddr"]) == (crow["lport"], crow["laddr"], crow["raddr"])
    assert srow["family"] == crow["family"] == fam and laddr in (srow["laddr"], crow["laddr"])
    assert (crow["tx_bytes"], crow["rx_bytes"]) == (to_server, to_client), crow
    assert (srow["tx_bytes"], srow["rx_bytes"]) == (to_client, to_server), srow
    for r in rows:
        assert 0 < r["duration_ms"] < 30_000, r
    for r, ns in ((srow, netns[0]), (crow, netns[1])):
        assert r["netns"] == (ns or os.stat("/proc/self/ns/net").st_ino), r
    return srow, crow


@pytest.mark.parametrize("fam,host", [(4, "127.0.0.1"), (6, "::1")])
def test_peers_on_loopback(kernel, no_leaks, fam, host):
    """Server and client in processes of their own: the server's row names the server, the client's the
    client, with what each sent and received."""
    with Life() as life:
        s, c = traffic.conversation(str(fam), host, NSEND, NRECV)
        rows = life.rows(2, on_port(s.port))
    check_pair(rows, s.port, (s.pids["tsrv"], "tsrv", 0), (c.pids["tcli"], "tcli", 0), fam, host, NSEND, NRECV)


def test_one_row_per_connection(kernel, no_leaks):
    """20 connections at once between two processes: 40 rows, one per end, none twice, each named right."""
    n = 20
    with Life() as life:
        s = traffic.server("tmsrv", "4", "127.0.0.1", 3_000, 5_000, mode="mserver", extra=(n,))
        c = traffic.Peer("mclient", "tmcli", "4", "127.0.0.1", s.port, n, 3_000, 5_000)
        c.read_until("PID")
        c.go()
        c.wait()
        s.wait()
        rows = life.rows(2 * n, on_port(s.port))
    server_rows = [r for r in rows if r["lport"] == s.port]
    client_rows = [r for r in rows if r["rport"] == s.port]
    assert len(server_rows) == len(client_rows) == n, rows
    assert len({r["rport"] for r in server_rows}) == n and {r["rport"] for r in server_rows} == \
        {r["lport"] for r in client_rows}
    assert {(r["pid"], r["comm"], r["tx_bytes"], r["rx_bytes"]) for r in server_rows} == \
        {(s.pids["tmsrv"], "tmsrv", 5_000, 3_000)}
    assert {(r["pid"], r["comm"], r["tx_bytes"], r["rx_bytes"]) for r in client_rows} == \
        {(c.pids["tmcli"], "tmcli", 3_000, 5_000)}


@pytest.mark.parametrize("fam,srv", [(4, "169.254.77.1"), (6, "fd77::1")])
def test_between_namespaces_over_veth(kernel, no_leaks, netns_pair, fam, srv):  # noqa: F811
    """The server in one namespace, the client in another, joined by a veth pair: each row carries its own
    namespace, and the server's row names the server even though its segments arrive in softirq."""
    a, b = netns_pair
    with Life() as life:
        s, c = traffic.conversation(str(fam), srv, NSEND, NRECV, netns_srv=a, netns_cli=b)
        rows = life.rows(2, on_port(s.port))
    check_pair(rows, s.port, (s.pids["tsrv"], "tsrv", 0), (c.pids["tcli"], "tcli", 0), fam, srv, NSEND, NRECV,
               netns=(netns_inode(a), netns_inode(b)))


def http_server(workdir, size):  # noqa: F811
    nobody = pwd.getpwnam("nobody")
    with open(os.path.join(workdir, "file.bin"), "wb") as f:
        f.write(os.urandom(size))
    os.chmod(os.path.join(workdir, "file.bin"), 0o644)
    port = free_port()
    cmd = [SYSTEM_PYTHON, "-m", "http.server", "--bind", "127.0.0.1", "--directory", workdir, str(port)]
    return port, nobody.pw_uid, daemon(cmd, workdir, "http.server", user=nobody.pw_uid, group=nobody.pw_gid,
                                       extra_groups=[])


def test_curl_python_http_server(kernel, no_leaks, workdir):  # noqa: F811
    """curl fetches a file from `python3 -m http.server` (running as nobody, closing first): the server's
    row names python3, the client's curl, with the request and the response to the byte."""
    curl_bin = need("curl", "curl")
    need(SYSTEM_PYTHON, "python3")
    size = 150_001
    port, nobody, srv_cm = http_server(workdir, size)
    with srv_cm as srv:
        srv.wait_listening(port, timeout=60)     # under emulation, beside a loading tracer: seconds
        with Life("-P", port) as life:
            cpid, [(req, hdr, body, lport, code)] = curl(curl_bin, f"http://127.0.0.1:{port}/file.bin")
            rows = life.rows(2)
    assert (code, body) == (200, size)
    srow, crow = check_pair(rows, port, (srv.pid, "python3", nobody), (cpid, "curl", 0), 4, "127.0.0.1",
                            req, hdr + body)
    assert crow["lport"] == lport


def test_port_and_pid_filters(kernel, no_leaks):
    """-L takes the local ports, -D the remote ports (lists), -p the owner: each keeps its one row."""
    s = traffic.server("tsrv", "4", "127.0.0.1", NSEND, NRECV)
    c = traffic.client("tcli", "4", "127.0.0.1", s.port, NSEND, NRECV)
    other = free_port()
    with Life("-L", f"{other},{s.port}") as local, Life("-D", s.port) as remote, \
            Life("-p", s.pids["tsrv"], "-P", s.port) as by_pid:
        c.go()
        c.wait()
        s.wait()
        got = [life.rows(1, on_port(s.port)) for life in (local, remote, by_pid)]
    assert [[(r["pid"], r["lport"] == s.port) for r in rows] for rows in got] == \
        [[(s.pids["tsrv"], True)], [(c.pids["tcli"], False)], [(s.pids["tsrv"], True)]]


def test_columns_as_libbpf_tools(kernel, no_leaks):
    """The default output: libbpf-tools' header, and a row with the owner, ports, KB and milliseconds."""
    s = traffic.server("tsrv", "4", "127.0.0.1", NSEND, NRECV)
    c = traffic.client("tcli", "4", "127.0.0.1", s.port, NSEND, NRECV)
    with Life("-P", s.port, "-T", json_lines=False) as life:
        c.go()
        c.wait()
        s.wait()
        lines = life.rows(3)
    assert lines[0].split() == ["TIME", "PID", "COMM", "LADDR", "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB", "MS"]
    rows = [ln.split() for ln in lines[1:]]
    srv = [r for r in rows if r[4] == str(s.port)]
    assert len(rows) == 2 and len(srv) == 1, lines
    t, pid, comm, laddr, lport, raddr, rport, tx, rx, ms = srv[0]
    assert (pid, comm, laddr, raddr, tx, rx) == (str(s.pids["tsrv"]), "tsrv", "127.0.0.1", "127.0.0.1",
                                                 "%.2f" % (NRECV / 1024), "%.2f" % (NSEND / 1024))
    assert len(t) == 8 and t[2] == t[5] == ":" and float(ms) > 0


@pytest.mark.parametrize("args,words", [(["-L", "80,http"], "not a port list"),
                                        (["-D", "70000"], "between 1 and 65535"),
                                        (["-L", ",".join(str(p) for p in range(1, 10))], "at most 8 ports")])
def test_bad_port_lists_are_one_clear_message(args, words):
    r = subprocess.run(pytracer_cmd("tcplife", *args), capture_output=True, text=True, env=run_env(), timeout=60)
    assert r.returncode != 0 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


# ---- side by side with libbpf-tools' tcplife ---------------------------------------------------------------
LIBBPF_TCPLIFE = "/usr/sbin/tcplife"


def libbpf_rows(lines, port):
    """libbpf-tools' rows on `port`: (pid, comm, laddr, lport, raddr, rport, tx_kb, rx_kb)."""
    out = []
    for ln in lines:
        f = ln.split()
        if len(f) == 9 and f[0].isdigit() and port in (int(f[3]), int(f[5])):
            out.append((int(f[0]), f[1], f[2], int(f[3]), f[4], int(f[5]), float(f[6]), float(f[7])))
    return out


def test_side_by_side_with_libbpf_tools(kernel, no_leaks, workdir):  # noqa: F811
    """Both tools on the same curl/http.server traffic: they agree on every connection's tuple and bytes;
    on the server's rows pytracer names the server while libbpf-tools names whoever ran when the socket
    closed. Why: http.server closes first, so its socket reaches TCP_CLOSE (FIN_WAIT2 -> TIME_WAIT) when
    curl's FIN arrives, in softirq, which on loopback runs in curl's own system call; libbpf-tools' tcplife
    remembers a process only at connect() and at LAST_ACK, and otherwise takes the current task."""
    tool = need(LIBBPF_TCPLIFE, "libbpf-tools")
    curl_bin = need("curl", "curl")
    need(SYSTEM_PYTHON, "python3")
    requests = 8
    port, nobody, srv_cm = http_server(workdir, 40_000)
    # line-buffered: its stdout is a pipe here, which C stdio would fill 4 KB at a time
    lb = subprocess.Popen(["stdbuf", "-oL", tool], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lb_lines = []
    reader = threading.Thread(target=lambda: lb_lines.extend(lb.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not lb_lines and time.monotonic() < deadline and lb.poll() is None:   # its header: attached
            time.sleep(0.05)
        assert lb_lines and lb_lines[0].split()[0] == "PID", lb.stderr.read() if lb.poll() is not None else ""
        with srv_cm as srv:
            srv.wait_listening(port, timeout=60)     # under emulation, beside a loading tracer: seconds
            with Life("-P", port) as life:
                clients = [curl(curl_bin, f"http://127.0.0.1:{port}/file.bin") for _ in range(requests)]
                rows = life.rows(2 * requests)
            deadline = time.monotonic() + 20
            while len(libbpf_rows(lb_lines, port)) < 2 * requests and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
    finally:
        lb.send_signal(signal.SIGINT)
        try:
            lb.wait(timeout=20)
        except subprocess.TimeoutExpired:
            lb.kill()
            lb.wait()
        reader.join(timeout=5)
        lb.stdout.close()
        lb.stderr.close()
    theirs = libbpf_rows(lb_lines, port)
    assert len(rows) == len(theirs) == 2 * requests, (rows, theirs)
    ours = {(r["laddr"], r["lport"], r["raddr"], r["rport"]): r for r in rows}
    by_tuple = {t[2:6]: t for t in theirs}
    assert set(ours) == set(by_tuple)          # the same connections, each once
    cpids = {pid for pid, _ in clients}
    for key, r in ours.items():
        t = by_tuple[key]
        # bytes: libbpf-tools prints the raw counters in KB, which also count the SYN and the FINs as one
        # sequence number each; pytracer prints payload bytes (what curl and http.server wrote)
        assert abs(t[6] * 1024 - r["tx_bytes"]) <= 2 + 0.005 * 1024 and abs(t[7] * 1024 - r["rx_bytes"]) <= 2 + 0.005 * 1024, (r, t)
        if r["lport"] == port:
            assert (r["pid"], r["comm"]) == (srv.pid, "python3"), r
        else:
            assert r["comm"] == "curl" and r["pid"] in cpids, r
            assert (t[0], t[1]) == (r["pid"], "curl"), t      # connect(): both name curl
    wrong = [t for t in theirs if t[3] == port and t[0] != srv.pid]
    assert wrong, "libbpf-tools named the server on every server row: this test no longer shows the difference"
    assert {t[1] for t in wrong} <= {"curl", "swapper/0", "swapper/1", "ksoftirqd/0", "ksoftirqd/1"}, wrong
