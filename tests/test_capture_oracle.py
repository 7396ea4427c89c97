"""The capture oracle (issue 9, item 5): tcpdump captures what the tracer traces, and they must agree.

For every workload, on loopback and between two network namespaces over veth: each captured packet is exactly
one line on its sending socket and one on its receiving socket (both are local on loopback; over veth each
namespace's capture covers its own sockets), with the same SIZE (IP packet + 14) and payload; the close
lines' tx_bytes/rx_bytes equal the capture's payload (retransmitted bytes once); no line is lost; and every
line names the socket's rightful owner (pid, uid, comm) as the test knows it from the programs themselves.
The JSON lines checked are those of `python -m pytracer -j` (Trace in test_real_programs runs it next to
the API and checks they agree).

Target semantics: the connect line is the real SYN; the three accept lines are the real SYN, SYN-ACK and ACK,
named after the accepting process; every other packet is a send/recv/reset line on each local socket it
crosses, with the size tcpdump shows (send lines after GSO splitting, where taps see packets).

Run as root: .venv/bin/python -m pytest -q tests/test_capture_oracle.py (needs tcpdump, curl, nginx-light,
openbsd-inetd, socat; a missing one is a skip, or a failure under PYTRACER_REQUIRE_KERNEL=1). The last tests
check the oracle itself on synthetic packets and need no kernel.
"""
import contextlib
import os
import pwd
import re
import subprocess
import time

import pytest

import traffic
from capture import Capture, attribution, netns_inode, oracle, report
from conntools import nft_flush, nft_input_rule
from test_real_programs import (SYSTEM_PYTHON, Trace, both_closed, curl, daemon, echo_handler, free_port, need,
                                nginx, proc_status, web_root, workdir)  # noqa: F401 - workdir is a fixture
from test_tcpsnoop import netns_pair  # noqa: F401 - a fixture

VETH = {4: "169.254.77.1", 6: "fd77::1"}     # the server's end of netns_pair's veth
LOOPBACK = {4: "127.0.0.1", 6: "::1"}


class Net:
    """Where a workload runs: on the host's loopback, or server in namespace A and client in B over veth."""

    def __init__(self, kind, pair=None):
        self.kind = kind
        if kind == "lo":
            self.srv_ns = self.cli_ns = None
            self.addr = LOOPBACK
            self.inodes = ()
        else:
            self.srv_ns, self.cli_ns = pair
            self.addr = VETH
            self.inodes = (netns_inode(self.srv_ns), netns_inode(self.cli_ns))

    @staticmethod
    def _prefix(ns):
        return ("ip", "netns", "exec", ns) if ns else ()

    @property
    def srv_prefix(self):
        return self._prefix(self.srv_ns)

    @property
    def cli_prefix(self):
        return self._prefix(self.cli_ns)

    def url_host(self, family):
        return self.addr[family] if family == 4 else f"[{self.addr[family]}]"

    @contextlib.contextmanager
    def capture(self, *ports):
        """tcpdump on lo, or inside each namespace (-i any), for traffic of these ports."""
        flt = " or ".join(f"tcp port {p}" for p in ports)
        with contextlib.ExitStack() as stack:
            if self.kind == "lo":
                caps = [stack.enter_context(Capture(flt))]
            else:
                caps = [stack.enter_context(Capture(flt, netns=ns)) for ns in (self.srv_ns, self.cli_ns)]
            yield caps

    def trace(self, *ports):
        return Trace(*ports, also_netns=self.inodes)


@pytest.fixture(params=["lo", "veth"])
def net(request, kernel):
    need("tcpdump", "tcpdump")
    if request.param == "lo":
        return Net("lo")
    return Net("veth", request.getfixturevalue("netns_pair"))


def sides(port, client, acceptor, server):
    """expected(line) for attribution(): a server-side line (local port `port`) names `acceptor` on the accept
    lines and `server` on all others; a client-side line names `client`. Each is an owner (pid, uid, comm)
    or a function of the line giving one."""
    def pick(who, o):
        return who(o) if callable(who) else who

    def expected(o):
        if o["lport"] == port:
            return pick(acceptor if o["event"] == "accept" else server, o)
        return pick(client, o)
    return expected


def check(t, caps, port, expected, events):
    """The oracle and the attribution on the CLI's JSON lines, reported together; then API == CLI."""
    problems = oracle(caps, t.cli_events, server_ports=(port,)) + attribution(t.cli_events, expected)
    assert not problems, report(problems)
    t.same_in_cli(events)


def socket_holders(ns_pid, lport, rport):
    """Pids holding the established socket lport->rport (IPv4, in the network namespace of ns_pid), from
    /proc/PID/net/tcp (its inode) and every process's fd table."""
    inode = None
    with open(f"/proc/{ns_pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if (parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == lport
                    and int(parts[2].rsplit(":", 1)[1], 16) == rport):
                inode = parts[9]
    if inode is None:
        return set()
    target, out = f"socket:[{inode}]", set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    out.add(int(pid))
                    break
            except OSError:
                pass
    return out


def handed_over(client, ns_pid, port, comm, timeout=10.0):
    """The client (delay="go") has connected: wait until one process other than the acceptor, named `comm`,
    holds the server's end alone (ground truth from /proc), then let the client send. Returns that owner
    (pid, uid, comm)."""
    cport = int(client.read_until("CONNECTED")[1])
    deadline = time.monotonic() + timeout
    while True:
        held = socket_holders(ns_pid, port, cport)
        if len(held) == 1:
            (pid,) = held
            st = proc_status(pid)
            if st and st[2] == comm and pid != ns_pid:
                break
        assert time.monotonic() < deadline, f"the connection was not handed over to {comm}: held by {held}"
        time.sleep(0.01)
    client.go()
    return pid, st[1], st[2]


def nobody():
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def as_nobody():
    uid, gid = nobody()
    return ("setpriv", "--reuid", str(uid), "--regid", str(gid), "--clear-groups")


# ---- curl against python http.server -----------------------------------------------------------------
@pytest.mark.parametrize("family", [4, 6, "mapped"])
def test_curl_http_server(no_leaks, workdir, net, family):
    """curl fetches a file from `python3 -m http.server` running as nobody; "mapped": the server listens on
    :: (dual stack) and curl connects over IPv4, so the server's socket has IPv4-mapped IPv6 addresses,
    which the tracer reports as IPv4, as the wire (and the capture) has them."""
    curl_bin = need("curl", "curl")
    bind = "::" if family == "mapped" else net.addr[family]
    family, listen_family = (4, 6) if family == "mapped" else (family, family)
    need(SYSTEM_PYTHON, "python3")
    size = 150_001
    with open(os.path.join(workdir, "file.bin"), "wb") as f:
        f.write(os.urandom(size))
    os.chmod(os.path.join(workdir, "file.bin"), 0o644)
    port = free_port()
    cmd = [*net.srv_prefix, *as_nobody(), SYSTEM_PYTHON, "-m", "http.server", "--bind", bind,
           "--directory", workdir, str(port)]
    with daemon(cmd, workdir, "http.server") as srv:
        srv.wait_listening(port, listen_family)
        with net.capture(port) as caps, net.trace(port) as t:
            cpid, [(req, hdr, body, lport, code)] = curl(curl_bin, f"http://{net.url_host(family)}:{port}/file.bin",
                                                         prefix=net.cli_prefix)
            events = t.finish(both_closed(port))
    assert (code, body) == (200, size)
    server = (srv.pid, nobody()[0], "python3")
    check(t, caps, port, sides(port, (cpid, 0, "curl"), server, server), events)


# ---- nginx, several workers ----------------------------------------------------------------------------
def test_nginx_workers(no_leaks, workdir, net):
    """8 curl processes at once against nginx with 4 workers (www-data); each connection's server lines name
    the worker that served it (nginx's access log says which: $pid, $remote_port)."""
    curl_bin = need("curl", "curl")
    web_root(workdir, {"f.bin": 200_001})
    port = free_port()
    log = os.path.join(workdir, "access.log")
    fmt = "log_format who '$pid $remote_port $status';"
    www = pwd.getpwnam("www-data").pw_uid
    n = 8
    with nginx(workdir, 4, port, prefix=net.srv_prefix, workers=4, host=net.addr[4],
               access_log=f"{fmt} access_log {log} who;") as (master, _):
        with net.capture(port) as caps, net.trace(port) as t:
            url = f"http://{net.addr[4]}:{port}/f.bin"
            procs = [subprocess.Popen([*net.cli_prefix, curl_bin, "-sS", "--max-time", "10", "-o", "/dev/null",
                                       "-w", "%{local_port} %{http_code}", url], stdout=subprocess.PIPE, text=True)
                     for _ in range(n)]
            outs = [p.communicate(timeout=30)[0] for p in procs]
            assert [p.returncode for p in procs] == [0] * n
            events = t.finish(both_closed(port, n))
        workers = set(master.workers)
    clients = {}
    for p, out in zip(procs, outs):
        lport, code = map(int, out.split())
        assert code == 200
        clients[lport] = (p.pid, 0, "curl")
    deadline = time.monotonic() + 5
    while True:                    # nginx writes the log line after the response
        with open(log) as f:
            served = {int(rp): int(pid) for pid, rp, _ in (ln.split() for ln in f if ln.strip())}
        if set(served) >= set(clients) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert set(served) == set(clients), f"access log {served}, curl ports {sorted(clients)}"
    assert set(served.values()) <= workers

    def worker(o):
        return (served[o["rport"]], www, "nginx")
    check(t, caps, port, sides(port, lambda o: clients[o["lport"]], worker, worker), events)


# ---- many busy connections at once ---------------------------------------------------------------------
def test_many_concurrent_connections(no_leaks, net):
    """50 connections open at once between two processes, each carrying 20 kB each way concurrently."""
    n, each = 50, 20_000
    s = traffic.Peer("mserver", "tmsrv", 4, net.addr[4], 0, n, each, each, netns=net.srv_ns)
    s.read_until("LISTEN")
    c = traffic.Peer("mclient", "tmcli", 4, net.addr[4], s.port, n, each, each, netns=net.cli_ns)
    c.read_until("PID")
    with net.capture(s.port) as caps, net.trace(s.port) as t:
        c.go()
        c.wait()
        s.wait()
        events = t.finish(both_closed(s.port, n))
    srv, cli = (s.pids["tmsrv"], 0, "tmsrv"), (c.pids["tmcli"], 0, "tmcli")
    check(t, caps, s.port, sides(s.port, cli, srv, srv), events)


# ---- after the close: segments no socket receives -----------------------------------------------------
@pytest.mark.parametrize("net", ["veth"], indirect=True)
def test_segments_after_the_close_are_the_connections(no_leaks, net):
    """The client aborts (SO_LINGER 0: a RST, its socket gone at once, no TIME_WAIT). An nftables rule in the
    server's namespace drops that RST after the device, where tcpdump and the tracer see it, so the server,
    still connected, sends its FIN to a tuple with no socket; the client's kernel answers it with a RST, and
    every retransmission of it, until the rule goes and a RST gets through. Those segments are the client
    connection's: lines after its close line, named after its last owner, as the capture has them."""
    s = traffic.Peer("finish", "tfin", 4, net.addr[4], 0, netns=net.srv_ns)
    s.read_until("LISTEN")
    with net.capture(s.port) as caps, net.trace(s.port) as t:
        c = traffic.Peer("abort", "tabort", 4, net.addr[4], s.port, netns=net.cli_ns)
        cport = int(c.read_until("CONNECTED")[1])
        s.read_until("ACCEPTED")
        nft_input_rule(net.srv_ns, f"tcp dport {s.port} tcp flags rst drop")
        try:
            c.go()
            c.wait()
            s.go()
            time.sleep(1.0)         # the FIN goes out at once and meets no socket; its answer is dropped
        finally:
            nft_flush(net.srv_ns)   # the next retransmission's RST gets through
        s.wait()
        events = t.finish(both_closed(s.port))
    srv, cli = (s.pids["tfin"], 0, "tfin"), (c.pids["tabort"], 0, "tabort")
    check(t, caps, s.port, sides(s.port, cli, srv, srv), events)
    (client_cap,) = [cap for cap in caps if cap.netns == netns_inode(net.cli_ns)]
    fins = [p for p in client_cap.packets if p.dport == cport and "F" in p.flags]
    rsts = [p for p in client_cap.packets if p.sport == cport and "R" in p.flags]
    assert len(fins) >= 2 and len(rsts) == len(fins) + 1, (fins, rsts)    # the abort's RST, then one a FIN
    mine = [e for e in events if e.lport == cport and e.rport == s.port]
    after = mine[[e.event for e in mine].index("close") + 1:]
    assert [(e.event, e.dir) for e in after] == [("reset", "out")] + [("recv", "in"), ("reset", "out")] * len(fins)
    assert {(e.pid, e.uid, e.comm) for e in mine} == {cli}


# ---- bulk: GSO super-packets ---------------------------------------------------------------------------
def test_bulk_transfer(no_leaks, net):
    """40 MB one way: the stack moves GSO super-packets (up to 64 kB on lo), which tcpdump sees whole. Under
    emulation (make vmtest) PYTRACER_BULK_BYTES makes it smaller: the same GSO traffic, in the same time."""
    nsend = int(os.environ.get("PYTRACER_BULK_BYTES", 40_000_000))
    s = traffic.server("tsrv", "4", net.addr[4], nsend, 1000, netns=net.srv_ns)
    c = traffic.client("tcli", "4", net.addr[4], s.port, nsend, 1000, netns=net.cli_ns)
    with net.capture(s.port) as caps, net.trace(s.port) as t:
        c.go()
        c.wait(timeout=60)
        s.wait(timeout=60)
        events = t.finish(both_closed(s.port), limit=60)
    srv, cli = (s.pids["tsrv"], 0, "tsrv"), (c.pids["tcli"], 0, "tcli")
    check(t, caps, s.port, sides(s.port, cli, srv, srv), events)


# ---- openbsd-inetd nowait: the child execs cat ---------------------------------------------------------
def test_inetd_nowait_cat(no_leaks, workdir, net):
    """inetd (root) accepts and forks a child that execs cat as nobody; the client sends 0.5 s after
    connecting, once /proc shows cat alone holding the connection (blocked in read()): every server line
    after the accept lines names cat."""
    inetd_bin = need("inetd", "openbsd-inetd")
    need("/bin/cat", "coreutils")
    n = 100_000
    script, pidfile = echo_handler(workdir, "$$")
    port = free_port()
    conf = os.path.join(workdir, "inetd.conf")
    with open(conf, "w") as f:
        f.write(f"{net.addr[4]}:{port} stream tcp nowait nobody {script} handler.sh\n")
    with daemon([*net.srv_prefix, inetd_bin, "-d", "-i", conf], workdir, "inetd") as srv:
        srv.wait_listening(port)
        c = traffic.client("tcli", "4", net.addr[4], port, n, n, netns=net.cli_ns, delay="go")
        with net.capture(port) as caps, net.trace(port) as t:
            c.go()
            time.sleep(0.5)             # cat is blocked in read() by now
            child = handed_over(c, srv.pid, port, "cat")
            c.wait()
            events = t.finish(both_closed(port))
    with open(pidfile) as f:
        assert int(f.read()) == child[0]
    assert child[1:] == (nobody()[0], "cat")
    check(t, caps, port, sides(port, (c.pids["tcli"], 0, "tcli"), (srv.pid, 0, "inetd"), child), events)


# ---- socat fork ----------------------------------------------------------------------------------------
def test_socat_fork(no_leaks, workdir, net):
    """socat TCP-LISTEN,fork: the listener accepts, a forked socat serves (relaying to an exec'd cat); the
    client sends once /proc shows the forked child alone holding the connection."""
    socat_bin = need("socat", "socat")
    need("/bin/cat", "coreutils")
    n = 100_000
    script, pidfile = echo_handler(workdir, "$PPID")    # the handler's parent is socat's forked child
    port = free_port()
    cmd = [*net.srv_prefix, socat_bin, f"TCP-LISTEN:{port},bind={net.addr[4]},fork,reuseaddr", f"EXEC:{script}"]
    with daemon(cmd, workdir, "socat") as srv:
        srv.wait_listening(port)
        c = traffic.client("tcli", "4", net.addr[4], port, n, n, netns=net.cli_ns, delay="go")
        with net.capture(port) as caps, net.trace(port) as t:
            c.go()
            time.sleep(0.5)
            forked = handed_over(c, srv.pid, port, "socat")
            c.wait()
            events = t.finish(both_closed(port))
    with open(pidfile) as f:
        assert int(f.read()) == forked[0]
    check(t, caps, port, sides(port, (c.pids["tcli"], 0, "tcli"), (srv.pid, 0, "socat"), forked), events)


# ---- fd hand-off over a unix socket --------------------------------------------------------------------
def test_fd_passed_over_unix_socket(no_leaks, net):
    """The acceptor passes the connection (SCM_RIGHTS) to another process and closes its copy; the client
    sends once /proc shows the receiver alone holding it: every server line after the accept lines names
    the receiver."""
    n = 100_000
    s = traffic.server("tpass", "4", net.addr[4], n, n, mode="fdpass", extra=("trecv",), netns=net.srv_ns)
    c = traffic.client("tcli", "4", net.addr[4], s.port, n, n, netns=net.cli_ns, delay="go")
    with net.capture(s.port) as caps, net.trace(s.port) as t:
        c.go()
        time.sleep(0.5)
        receiver = handed_over(c, s.pids["tpass"], s.port, "trecv")
        c.wait()
        s.wait()
        events = t.finish(both_closed(s.port))
    assert receiver == (s.pids["trecv"], 0, "trecv")
    check(t, caps, s.port, sides(s.port, (c.pids["tcli"], 0, "tcli"), (s.pids["tpass"], 0, "tpass"), receiver),
          events)


# ---- a listening socket inherited across exec; threads -----------------------------------------------
SERVICE = r"""
import os, socket, sys, threading
n = int(sys.argv[1])
def serve(c):
    got = 0
    while got < n:
        b = c.recv(65536)
        if not b:
            break
        got += len(b)
    c.sendall(b"r" * n)
    c.close()
if os.environ.get("LISTEN_FDS") == "1":          # systemd socket activation: the listener is fd 3
    lsock = socket.socket(fileno=3)
else:
    lsock = socket.socket()
    lsock.bind((sys.argv[2], 0))
    lsock.listen()
    print("LISTEN", lsock.getsockname()[1], flush=True)
c, _ = lsock.accept()
if sys.argv[3] == "thread":                      # accepted by the main thread, served by another
    t = threading.Thread(target=serve, args=(c,))
    t.start()
    t.join()
else:
    serve(c)
"""


def test_socket_activation(no_leaks, workdir, net):
    """systemd-socket-activate creates the listener and execs the service (same pid, new name), which
    accepts on the inherited socket (fd 3): every server line names the service."""
    activate = need("systemd-socket-activate", "systemd")
    n = 50_000
    script = os.path.join(workdir, "service.py")
    with open(script, "w") as f:
        f.write(SERVICE)
    port = free_port()
    cmd = [*net.srv_prefix, activate, "-l", f"{net.addr[4]}:{port}", SYSTEM_PYTHON, script, str(n), "-", "serve"]
    with daemon(cmd, workdir, "activate") as srv:
        srv.wait_listening(port)
        c = traffic.client("tcli", "4", net.addr[4], port, n, n, netns=net.cli_ns)
        with net.capture(port) as caps, net.trace(port) as t:
            c.go()
            c.wait()
            events = t.finish(both_closed(port))
    service = (srv.pid, 0, "python3")
    check(t, caps, port, sides(port, (c.pids["tcli"], 0, "tcli"), service, service), events)


def test_threaded_server(no_leaks, net):
    """One thread accepts, another serves: the process (its pid) owns every server line."""
    n = 50_000
    cmd = [*net.srv_prefix, SYSTEM_PYTHON, "-c", SERVICE, str(n), net.addr[4], "thread"]
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline().split()[1])
        c = traffic.client("tcli", "4", net.addr[4], port, n, n, netns=net.cli_ns)
        with net.capture(port) as caps, net.trace(port) as t:
            c.go()
            c.wait()
            events = t.finish(both_closed(port))
        assert srv.wait(timeout=20) == 0
    finally:
        srv.kill()
    server = (srv.pid, 0, "python3")
    check(t, caps, port, sides(port, (c.pids["tcli"], 0, "tcli"), server, server), events)


# ---- a process that execs, keeping its connection ------------------------------------------------------
EXEC_SERVER = r"""
import socket, sys, time
lsock = socket.socket()
lsock.bind((sys.argv[1], 0))
lsock.listen()
print("LISTEN", lsock.getsockname()[1], flush=True)
c, _ = lsock.accept()
got = 0
while got < 1000:
    got += len(c.recv(65536))
time.sleep(1.0)                     # the client has exec'd cat, which is blocked in read()
c.sendall(b"s" * 2000)
got = 0
while got < 2000:
    got += len(c.recv(65536))
c.close()
"""
EXEC_CLIENT = r"""
import os, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(b"c" * 1000)
time.sleep(0.3)
print("EXEC", time.time(), flush=True)
os.dup2(c.fileno(), 0)
os.dup2(c.fileno(), 1)
os.execv("/bin/cat", ["cat"])
"""


def test_exec_keeps_the_connection(no_leaks, net):
    """A client sends, then execs cat on its connection (dup2 onto stdin/stdout): the lines after the exec
    name cat, same pid, even those received before cat's first read returns."""
    need("/bin/cat", "coreutils")
    srv = subprocess.Popen([*net.srv_prefix, SYSTEM_PYTHON, "-c", EXEC_SERVER, net.addr[4]], stdout=subprocess.PIPE,
                           text=True)
    try:
        port = int(srv.stdout.readline().split()[1])
        with net.capture(port) as caps, net.trace(port) as t:
            cli = subprocess.Popen([*net.cli_prefix, SYSTEM_PYTHON, "-c", EXEC_CLIENT, net.addr[4], str(port)],
                                   stdout=subprocess.PIPE, text=True)
            exec_ts = float(cli.stdout.readline().split()[1])
            assert cli.wait(timeout=20) == 0 and srv.wait(timeout=20) == 0
            events = t.finish(both_closed(port))
    finally:
        srv.kill()
    server = (srv.pid, 0, "python3")

    def client(o):
        return (cli.pid, 0, "python3" if o["ts"] < exec_ts else "cat")
    assert any(o["comm"] == "cat" and o["event"] == "recv" and o["payload"] for o in t.cli_events)
    check(t, caps, port, sides(port, client, server, server), events)


# ---- a connection opened before the tracer started -----------------------------------------------------
def test_connection_opened_before_tracer(no_leaks, net):
    """Connect, wait, then start capture and tracer, then 3000 bytes each way and close: the tracer must show
    every packet of it, named after its processes."""
    s = traffic.server("tsrv", "4", net.addr[4], 3000, 3000, netns=net.srv_ns)
    c = traffic.Peer("preclient", "tpre", 4, net.addr[4], s.port, 3000, 3000, netns=net.cli_ns)
    c.read_until("CONNECTED")
    time.sleep(0.5)
    with net.capture(s.port) as caps, net.trace(s.port) as t:
        c.go()
        c.wait()
        s.wait()
        events = t.finish(both_closed(s.port))
    srv, cli = (s.pids["tsrv"], 0, "tsrv"), (c.pids["tpre"], 0, "tpre")
    check(t, caps, s.port, sides(s.port, cli, srv, srv), events)


# ---- a SYN to a closed port ----------------------------------------------------------------------------
@pytest.mark.parametrize("family", [4, 6])
def test_closed_port(no_leaks, net, family):
    """curl to a port nobody listens on: its connect line and the RST it receives name curl; the kernel's
    lines for the closed port (`recv` the SYN, `reset` the RST) are the only ones with pid 0."""
    curl_bin = need("curl", "curl")
    port = free_port()
    with net.capture(port) as caps, net.trace(port) as t:
        p = subprocess.Popen([*net.cli_prefix, curl_bin, "-sS", "-g", "--max-time", "10",
                              f"http://{net.url_host(family)}:{port}/"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        p.communicate(timeout=20)
        events = t.finish(lambda evs: [e.event for e in evs if e.lport == port] == ["recv", "reset"] and
                          any(e.event == "reset" and e.pid == p.pid for e in evs))
    assert p.returncode == 7                  # CURLE_COULDNT_CONNECT
    check(t, caps, port, sides(port, (p.pid, 0, "curl"), (0, 0, ""), (0, 0, "")), events)


# ---- the oracle itself (no kernel) ---------------------------------------------------------------------
def _ipv4_tcp(src, dst, sport, dport, seq, flags, payload, tot_len=None, options=b""):
    import socket
    import struct
    fl = sum(1 << "FSRPAUEC".index(c) for c in flags)
    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq, 0, (5 + len(options) // 4) << 4, fl, 65535, 0, 0) + options
    n = 20 + len(tcp) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, n if tot_len is None else tot_len, 0, 0, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + tcp, n


def _pcap(path, linktype, frames, nano=False, big_endian=False):
    """Write frames [(ip_bytes, ip_len_on_wire)] as a pcap with a 40-byte snap length."""
    import struct
    e = ">" if big_endian else "<"
    with open(path, "wb") as f:
        f.write(struct.pack(e + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 40 + 20, linktype))
        for i, (ip, n) in enumerate(frames):
            if linktype == 1:
                hdr = b"\0" * 12 + b"\x08\x00"
            elif linktype == 113:         # LINUX_SLL: pkttype, hatype, halen, addr[8], protocol
                hdr = b"\0" * 14 + b"\x08\x00"
            else:                       # LINUX_SLL2: protocol, reserved, ifindex, hatype, pkttype, halen, addr
                hdr = b"\x08\x00" + b"\0" * 18
            data = (hdr + ip)[:len(hdr) + 40 + 20]
            f.write(struct.pack(e + "IIII", 1, i, len(data), len(hdr) + n))
            f.write(data)


class _Cap:
    def __init__(self, packets, local=("127.0.0.1",), netns=7):
        self.packets, self.local, self.netns = packets, set(local), netns


def _line(event, d, laddr, lport, raddr, rport, size, payload, **kw):
    return dict(event=event, dir=d, laddr=laddr, lport=lport, raddr=raddr, rport=rport, size=size,
                payload=payload, netns=7, pid=1, uid=0, comm="x", **{"ts": 0, **kw})


@pytest.mark.parametrize("linktype,nano,big", [(1, False, False), (113, False, False), (276, True, False),
                                               (276, False, True)])
def test_pcap_reader(tmp_path, linktype, nano, big):
    from capture import read_pcap
    syn = _ipv4_tcp("10.0.0.1", "10.0.0.2", 1000, 80, 5, "S", 0, options=b"\x02\x04\x05\xb4" + b"\x01" * 16)
    gso = _ipv4_tcp("10.0.0.1", "10.0.0.2", 1000, 80, 6, "PA", 130_000, tot_len=0)     # BIG TCP: length 0
    path = str(tmp_path / "t.pcap")
    _pcap(path, linktype, [syn, gso], nano=nano, big_endian=big)
    a, b = read_pcap(path)
    assert (a.src, a.sport, a.dst, a.dport, a.size, a.payload, a.flags, a.seq) == \
        ("10.0.0.1", 1000, "10.0.0.2", 80, 74, 0, "S", 5)
    assert (b.size, b.payload, b.flags) == (130_000 + 54, 130_000, "PA")
    assert abs((b.ts - a.ts) - (1e-9 if nano else 1e-6)) < 1e-12


def test_unique_payload_counts_retransmissions_once():
    from capture import Packet, unique_payload
    base = 0xFFFFFFF0                 # the sequence numbers wrap past 0
    pk = [Packet(0, "a", 1, "b", 2, 0, 0, base, "S"), Packet(0, "a", 1, "b", 2, 0, 100, base + 1, "PA"),
          Packet(0, "a", 1, "b", 2, 0, 100, base + 1, "PA"),                  # retransmitted
          Packet(0, "a", 1, "b", 2, 0, 50, (base + 101) & 0xFFFFFFFF, "FPA")]
    assert unique_payload(pk) == 150


def test_oracle_agrees_and_reports_mismatches():
    from capture import Packet
    L, C, S = "127.0.0.1", 40000, 80
    pk = [Packet(1, L, C, L, S, 74, 0, 0, "S"), Packet(2, L, S, L, C, 74, 0, 0, "SA"),
          Packet(3, L, C, L, S, 66, 0, 1, "A"), Packet(4, L, C, L, S, 166, 100, 1, "PA"),
          Packet(5, L, S, L, C, 66, 0, 1, "A"), Packet(6, L, C, L, S, 166, 100, 1, "PA")]   # a retransmission
    cli = [_line("connect", "out", L, C, L, S, 74, 0), _line("send", "out", L, C, L, S, 66, 0),
           _line("send", "out", L, C, L, S, 166, 100), _line("send", "out", L, C, L, S, 166, 100),
           _line("recv", "in", L, C, L, S, 74, 0), _line("recv", "in", L, C, L, S, 66, 0),
           _line("close", "out", L, C, L, S, 0, 0, tx_bytes=100, rx_bytes=0)]
    srv = [_line("accept", "in", L, S, L, C, 74, 0), _line("accept", "out", L, S, L, C, 74, 0),
           _line("accept", "in", L, S, L, C, 66, 0), _line("recv", "in", L, S, L, C, 166, 100),
           _line("recv", "in", L, S, L, C, 166, 100), _line("send", "out", L, S, L, C, 66, 0),
           _line("close", "out", L, S, L, C, 0, 0, tx_bytes=0, rx_bytes=100)]
    assert oracle([_Cap(pk)], cli + srv, server_ports=(S,)) == []
    # today's kind of mismatch: 54-byte handshake lines, one segment missing, a close total off
    bad = [dict(o, size=54) if o["event"] in ("connect", "accept") else o for o in cli + srv]
    bad.remove(srv[4])
    bad[-1] = dict(srv[-1], rx_bytes=200)
    text = report(oracle([_Cap(pk)], bad, server_ports=(S,)))
    assert "client 127.0.0.1:40000->127.0.0.1:80 (netns 7): connect line(s) (size, payload) [(54, 0)], " \
           "capture's SYN [(74, 0)]" in text, text
    assert "capture's SYN, SYN-ACK, ACK [('in', 74, 0), ('out', 74, 0), ('in', 66, 0)]" in text, text
    assert "server 127.0.0.1:80->127.0.0.1:40000 (netns 7) in: capture 2 packets/200 B payload, tracer 1 " \
           "lines/100 B; missing from the lines (size/payload flags): [166/100 PA]; extra lines" in text, text
    assert "close says tx 0 rx 200, capture tx 0 rx 100" in text, text
    # the first socket with a missing segment, as a timeline of both
    assert "server 127.0.0.1:80->127.0.0.1:40000 (netns 7), the capture and the lines in time order:" in text, text
    assert "6.000000 packet in  PA   166/100 seq 1" in text, text
    # a lost line fails; owners are checked line by line
    assert "lost" in report(oracle([_Cap(pk)], cli + srv + [{"event": "lost", "count": 1}]))
    wrong = attribution(cli + srv, lambda o: (1, 0, "x") if o["lport"] == C else (2, 0, "y"))
    assert len(wrong) == 1 and wrong[0].startswith("7 of 14 lines name the wrong owner")
