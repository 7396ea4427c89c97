"""pytracer against real programs nobody here wrote, as a new user would try it on a fresh machine.

Third-party clients and servers from Debian packages talk over loopback while pytracer watches them twice:
through the API (TcpSnoop, in this process) and through the command line (`python -m pytracer -j -P PORT`, a
subprocess started before the traffic). Both must report the same lines, lose nothing, name the right
process and user on every line (also across hand-offs: inetd, socat's fork, sshd's privilege separation),
and count payload bytes exactly (checked against what the programs themselves say they sent and received).
TCP Fast Open (curl and nginx both support it) runs in a private network namespace, whose sysctl we may set.

Debian packages (for .ci/run): curl nginx-light openbsd-inetd socat openssh-server openssh-client
(plus python3 and util-linux, already there). A missing program is a skip here and a failure in CI
(PYTRACER_REQUIRE_KERNEL=1).
"""
import collections
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

from conftest import BARE_RST, HANDSHAKE, kernel_unavailable, pytracer_cmd, run_env
from pytracer.tcpsnoop import Event, TcpSnoop

HDRS = {4: 14 + 20 + 20, 6: 14 + 40 + 20}  # smallest wire size of a segment, before payload
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
AF = {4: socket.AF_INET, 6: socket.AF_INET6}
SYSTEM_PYTHON = "/usr/bin/python3"


# ---- programs and daemons ------------------------------------------------------------------------------
def need(prog, package):
    """Absolute path of a program (also looked up in the sbin directories), or a skip/CI failure."""
    found = prog if os.path.isabs(prog) else shutil.which(prog, path=os.environ.get("PATH", "") +
                                                         ":/usr/sbin:/sbin:/usr/bin:/bin")
    if not found or not os.access(found, os.X_OK):
        kernel_unavailable(f"{prog} is not installed (Debian package {package})")
    return found


def free_port(family=4):
    """A port nobody uses now, chosen by the kernel (so concurrent test runs cannot collide)."""
    s = socket.socket(AF[family], socket.SOCK_STREAM)
    try:
        s.bind((LOOPBACK[family], 0))
    except OSError as e:
        s.close()
        kernel_unavailable(f"no IPv{family} loopback: {e}")
    port = s.getsockname()[1]
    s.close()
    return port


def listening(port, family, pid="self"):
    """Is a socket listening on `port` (in the network namespace of `pid`)? Read from /proc, so that checking
    makes no traffic."""
    try:
        with open(f"/proc/{pid}/net/tcp" if family == 4 else f"/proc/{pid}/net/tcp6") as f:
            lines = f.readlines()[1:]
    except OSError:       # the process just exited
        return False
    for line in lines:
        parts = line.split()
        if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
            return True
    return False


def proc_status(pid):
    """(ppid, uid, comm) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return None
    return int(fields["PPid"]), int(fields["Uid"].split()[0]), fields["Name"]


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_status(int(d))
            if st and st[0] == pid:
                out.append(int(d))
    return out


def retrans_segs(pid="self"):
    """TCP segments retransmitted so far in the network namespace of `pid` (Tcp: RetransSegs)."""
    with open(f"/proc/{pid}/net/snmp") as f:
        tcp = [line.split() for line in f if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("RetransSegs")])


class Daemon:
    """A server started for one test: own process group, output in a log file, stopped in finally."""

    def __init__(self, cmd, logdir, name, **kw):
        self.log = os.path.join(logdir, f"{name}.log")
        self.name = name
        with open(self.log, "ab") as lf:
            self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                      start_new_session=True, **kw)
        self.pid = self.p.pid

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def wait_listening(self, port, family=4, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not listening(port, family, self.pid):
            if self.p.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.p.returncode} before listening:\n{self.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} does not listen on port {port} after {timeout} s:\n{self.log_text()}")
            time.sleep(0.02)

    def stop(self):
        # the daemon and whatever it forked are in its own process group (its pid)
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            try:
                self.p.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


@contextlib.contextmanager
def daemon(cmd, logdir, name, **kw):
    d = Daemon(cmd, logdir, name, **kw)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def workdir():
    """A temp directory other users (www-data, nobody) can read: the servers drop privileges."""
    d = tempfile.mkdtemp(prefix="pytracer-real-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(cmd, timeout=20, **kw):
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{cmd[0]} timed out after {timeout} s: {e.stderr!r}")


# ---- the tracer, twice ---------------------------------------------------------------------------------
OWNER = ("pid", "uid", "comm")
KEY = ("event", "dir", "pid", "uid", "comm", "family", "laddr", "lport", "raddr", "rport", "size", "payload",
       "netns", "tx_bytes", "rx_bytes")


class Trace:
    """pytracer through the API and through the CLI at once, both filtered on `ports` plus a probe port.

    The CLI prints no header in JSON mode; it is attached once it reports a probe connection to a closed
    port (more robust than sleeping: a cold start relocates the programs, which takes longer). Only lines
    of the network namespace of `netns_of` (a pid) and of `also_netns` (inodes) are kept, and the probe's are
    dropped."""

    def __init__(self, *ports, netns_of="self", also_netns=()):
        self.ports = ports
        self.netns_of = netns_of
        self.also_netns = set(also_netns)
        self.retransmitted = None
        self.probe = free_port()
        self.snoop = None
        self.cli = None
        self.cli_lines = []
        self.lock = threading.Lock()
        self.events = []
        self.cli_events = []

    def __enter__(self):
        self.retrans_before = retrans_segs(self.netns_of)
        # other programs on this host may use the same port numbers in other network namespaces
        self.netns = os.stat(f"/proc/{self.netns_of}/ns/net").st_ino
        self.netnses = {self.netns} | self.also_netns
        self.snoop = TcpSnoop(ports=[*self.ports, self.probe]).start()
        args = ["-j"]
        for p in (*self.ports, self.probe):
            args += ["-P", str(p)]
        self.cli = subprocess.Popen(pytracer_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=run_env(), cwd="/")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            self._wait_attached()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _read(self):
        for line in self.cli.stdout:
            with self.lock:
                self.cli_lines.append(line)

    def _wait_attached(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        tag = f'"lport": {self.probe},'
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.probe), timeout=1).close()
            t = time.monotonic()
            while time.monotonic() < t + 0.2:
                with self.lock:
                    if any(tag in ln for ln in self.cli_lines):
                        return
                time.sleep(0.01)
            if self.cli.poll() is not None:
                pytest.fail(f"pytracer CLI exited with {self.cli.returncode}: {self.cli.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail(f"pytracer CLI not attached after {timeout} s")

    def __exit__(self, *exc):
        if self.cli is not None and self.cli.poll() is None:
            self.cli.kill()
            self.cli.wait(timeout=10)
        if self.snoop is not None:
            self.snoop.close()
            self.snoop = None

    def finish(self, done, limit=20.0, quiet=0.3):
        """Read the API's events until done(events) holds and nothing new came for `quiet` seconds; then
        stop the CLI (SIGINT, as Ctrl-C) and read its JSON. Returns the API's events (probe excluded) after
        checking that neither lost anything; same_in_cli() then compares the connections under test."""
        evs, lost, why = [], 0, collections.Counter()
        deadline = time.monotonic() + limit
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            lines = self.snoop.poll_lines(0.05)
            if lines:
                evs.extend(lines)
                last_new = time.monotonic()
            lost += self.snoop.new_losses()
            why.update(self.snoop.last_losses)
            if time.monotonic() - last_new > quiet and done(self._events(evs)):
                break
        evs.extend(self.snoop.drain_lines())
        lost += self.snoop.new_losses()
        why.update(self.snoop.last_losses)
        self.retransmitted = retrans_segs(self.netns_of) - self.retrans_before
        self.events = self._events(evs)
        assert done(self.events), f"the traffic did not finish within {limit} s: {self.events}"
        assert lost == 0, f"the API lost {lost} records: {dict(why)}"

        self.cli.send_signal(signal.SIGINT)
        try:
            _, err = self.cli.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("pytracer CLI did not stop on SIGINT")
        self.reader.join(timeout=5)
        assert self.cli.returncode == 0, err
        assert not [ln for ln in err.splitlines() if not ln.startswith("pytracer: note:")], err
        objs = [json.loads(ln) for ln in self.cli_lines]
        assert not [o for o in objs if o["event"] == "lost"], \
            f"the CLI lost records: {[o for o in objs if o['event'] == 'lost']}"
        self.cli_events = [o for o in objs
                           if self.probe not in (o["lport"], o["rport"]) and o["netns"] in self.netnses]
        return self.events

    def same_in_cli(self, lines):
        """The CLI printed exactly these lines (the API's) for these connections. Compared per connection:
        programs elsewhere on the host may reuse the port numbers, and the two tracers' windows differ.

        One difference is the kernel's, not the CLI's: the two tracers' programs run one after the other on
        a tracepoint, so a segment that arrives on the other CPU between them while its owner hands the
        socket over (in close(), say) is named after the old owner by one and the new by the other. So a
        send/recv/reset line may differ in its owner alone, the two owners being one hand-off of that
        connection (consecutive in its order of owners). How many lines fall between the two programs is not
        bounded (the host may pause a virtual CPU between them: seen under qemu, 8 segments), but each tracer names
        the connection's owners in the same order, each owner one run of lines, so the lines that differ are
        those between the two tracers' moments of each hand-off."""
        def conn(o):
            return o["netns"], o["laddr"], o["lport"], o["raddr"], o["rport"]

        api_lines = [e.as_dict() for e in lines]
        conns = {conn(o) for o in api_lines}
        cli_lines = [o for o in self.cli_events if conn(o) in conns]
        rest = [k for k in KEY if k not in OWNER]
        api_rest = collections.Counter(tuple(o.get(k) for k in rest) for o in api_lines)
        cli_rest = collections.Counter(tuple(o.get(k) for k in rest) for o in cli_lines)
        assert api_rest == cli_rest, f"API and CLI disagree:\nAPI only: {api_rest - cli_rest}\n" \
                                     f"CLI only: {cli_rest - api_rest}"
        api = collections.Counter(tuple(o.get(k) for k in KEY) for o in api_lines)
        cli = collections.Counter(tuple(o.get(k) for k in KEY) for o in cli_lines)
        if api == cli:
            return
        # pair the differing lines by everything but the owner: the two owners of a pair must be a hand-off
        def split(key):
            o = dict(zip(KEY, key))
            return tuple(o[k] for k in rest), (o["pid"], o["comm"], o["uid"])     # as owner() orders them

        api_only, cli_only = api - cli, cli - api
        for c in conns:
            a = stages([e for e in lines if conn(e.as_dict()) == c])
            b = stages([SimpleNamespace(**o) for o in cli_lines if conn(o) == c])
            assert a == b, f"API and CLI disagree on the order of owners of {c}: {a} vs {b}"
        for r in {split(k)[0] for k in api_only.elements()}:
            o = dict(zip(rest, r))
            assert o["event"] in ("send", "recv", "reset"), f"API and CLI disagree on the owner of {o}"
            order = stages([e for e in lines if conn(e.as_dict()) == conn(o)])
            handoffs = set(zip(order, order[1:]))
            a = [w for x, w in map(split, api_only.elements()) if x == r]
            c = [w for x, w in map(split, cli_only.elements()) if x == r]
            for x, y in zip(a, c):
                assert (x, y) in handoffs or (y, x) in handoffs, \
                    f"API and CLI disagree on the owner of {o}: {x} vs {y}, not a hand-off of {order}"

    def _events(self, lines):
        return [e for e in map(Event, lines) if self.probe not in (e.lport, e.rport) and e.netns in self.netnses]


# ---- what a connection must look like ------------------------------------------------------------------
def of(events, **kw):
    return [e for e in events if all(getattr(e, k) == v for k, v in kw.items())]


def owner(e):
    return (e.pid, e.comm, e.uid)


def closes_of(events, port):
    return [e for e in events if e.event == "close" and port in (e.lport, e.rport)]


def both_closed(port, n=1):
    """done(): every connection to `port` has been closed on both ends (n connections)."""
    return lambda evs: len(closes_of(evs, port)) >= 2 * n


def connection(events, port, client_pid):
    """The one connection `client_pid` opened to `port`: (client-side lines, server-side lines)."""
    syns = [e for e in events if e.event == "connect" and e.rport == port and e.pid == client_pid]
    assert len(syns) == 1, f"expected one connect line from pid {client_pid} to port {port}: {events}"
    cport = syns[0].lport
    cs = [e for e in events if e.lport == cport and e.rport == port]
    ss = [e for e in events if e.lport == port and e.rport == cport]
    assert len(cs) + len(ss) == len([e for e in events if cport in (e.lport, e.rport)])
    return cs, ss


def stages(lines):
    """Owners of a socket in order, consecutive repeats folded: [(pid, comm, uid), ...]."""
    out = []
    for e in lines:
        if not out or out[-1] != owner(e):
            out.append(owner(e))
    return out


def sent(lines):
    """Payload of the segments a socket sent (a SYN may carry data: TCP Fast Open)."""
    return sum(e.payload for e in lines if e.dir == "out" and e.event != "close")


def received(lines):
    return sum(e.payload for e in lines if e.dir == "in")


def check_connection(cs, ss, family, client, acceptor, final_server, c_tx, c_rx, retransmitted, netns=None):
    """What must hold for every connection traced between two real programs.

    client: (pid, comm, uid) of the connecting program, the owner of every client-side line.
    acceptor: owner named on the three accept lines. final_server: owner of the server's close summary.
    c_tx, c_rx: payload bytes the client sent and received, as the programs themselves report them.
    retransmitted: segments the namespace retransmitted meanwhile (a loaded host drops on loopback too, and a
    retransmitted segment is a line of its own): if any, the per-segment sums may exceed the totals."""
    addr, (syn_size, synack_size, ack_size) = LOOPBACK[family], HANDSHAKE[family]
    netns = netns or os.stat("/proc/self/ns/net").st_ino
    for e in cs + ss:
        assert (e.family, e.laddr, e.raddr, e.netns) == (family, addr, addr, netns), e
    # client: one SYN line named after the process that called connect(), and every line its own
    (syn,) = of(cs, event="connect")
    assert (syn.dir, syn.size) == ("out", syn_size + syn.payload), syn     # TCP Fast Open: data in the SYN
    assert cs[0] is syn, f"the SYN is the client's first line: {cs[:3]}"
    assert set(map(owner, cs)) == {client}, stages(cs)
    # server: tcpsnoop's three accept lines, named after the process that accepted
    acc = of(ss, event="accept")
    assert [(e.dir, e.size, owner(e)) for e in acc] == [("in", syn.size, acceptor), ("out", synack_size, acceptor),
                                                        ("in", ack_size, acceptor)], acc
    # (rarely seen broken under load when adopt(), now in sockowner.bpf.h with tcpsnoop's hook, published the
    # owner before it reserved the EV_ACCEPT record: a segment on another CPU was reported, named, before the
    # accept lines)
    assert ss[:3] == acc, f"accept lines come first: {ss[:4]}"
    assert not of(ss, event="connect") and not of(cs, event="accept")
    # payload per direction: the per-segment lines add up to what the programs sent, on both ends
    if not retransmitted:
        assert (sent(cs), received(ss)) == (c_tx, c_tx), "client -> server payload"
        assert (sent(ss), received(cs)) == (c_rx, c_rx), "server -> client payload"
    else:
        assert sent(cs) >= received(ss) >= c_tx, "client -> server payload (with retransmissions)"
        assert sent(ss) >= received(cs) >= c_rx, "server -> client payload (with retransmissions)"
    for e in of(cs, event="send") + of(cs, event="recv") + of(ss, event="send") + of(ss, event="recv"):
        assert e.size >= HDRS[family] + e.payload, e
    assert not of(cs, event="reset") and not of(ss, event="reset"), "a clean exchange has no RST"
    # close summaries: exact totals, the right owner, a duration
    (cc,) = of(cs, event="close")
    (sc,) = of(ss, event="close")
    assert (owner(cc), cc.tx_bytes, cc.rx_bytes) == (client, c_tx, c_rx), cc
    assert (owner(sc), sc.tx_bytes, sc.rx_bytes) == (final_server, c_rx, c_tx), sc
    for c in (cc, sc):
        assert c.duration_ms is not None and 0 <= c.duration_ms < 30_000, c


# ---- 1 and 4: curl against HTTP servers ----------------------------------------------------------------
CURL_W = "%{size_request} %{size_header} %{size_download} %{local_port} %{http_code}\\n"


def curl(curl_bin, *urls, timeout=20, options=(), prefix=()):
    """Run curl (its pid is the client's); returns (pid, [(request, header, body, local_port, code)])."""
    args = [*prefix, curl_bin, "-sS", "-g", "--max-time", "10", *options, "-w", CURL_W]
    for url in urls:
        args += [url, "-o", "/dev/null"]     # each -o goes with one URL
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("curl timed out")
    assert p.returncode == 0, err
    return p.pid, [tuple(map(int, ln.split())) for ln in out.splitlines()]


def test_curl_python_http_server(kernel, no_leaks, workdir):
    """curl fetches a file from `python3 -m http.server`, which runs as nobody."""
    curl_bin = need("curl", "curl")
    need(SYSTEM_PYTHON, "python3")
    nobody = pwd.getpwnam("nobody")
    size = 150_001
    with open(os.path.join(workdir, "file.bin"), "wb") as f:
        f.write(os.urandom(size))
    os.chmod(os.path.join(workdir, "file.bin"), 0o644)
    port = free_port()
    cmd = [SYSTEM_PYTHON, "-m", "http.server", "--bind", "127.0.0.1", "--directory", workdir, str(port)]
    with daemon(cmd, workdir, "http.server", user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[]) as srv:
        srv.wait_listening(port)
        with Trace(port) as t:
            cpid, [(req, hdr, body, lport, code)] = curl(curl_bin, f"http://127.0.0.1:{port}/file.bin")
            events = t.finish(both_closed(port))
    assert (code, body) == (200, size)
    cs, ss = connection(events, port, cpid)
    t.same_in_cli(cs + ss)
    assert cs[0].lport == lport
    server = (srv.pid, "python3", nobody.pw_uid)
    check_connection(cs, ss, 4, (cpid, "curl", 0), server, server, req, hdr + body, t.retransmitted)
    assert set(map(owner, ss)) == {server}


NGINX_CONF = """
daemon off;
master_process on;
worker_processes {workers};
user www-data;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    {access_log}
    {http_extra}
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {listen};
        root {d}/www;
    }}
}}
"""


def nginx_error_log_option(nginx_bin, workdir):
    """`-e FILE` (the log nginx opens before reading its configuration), from nginx 1.19.5 on; older ones
    (Debian 11's 1.18, in the Python matrix) open their built-in path, which the package creates."""
    out = subprocess.run([nginx_bin, "-v"], capture_output=True, text=True).stderr
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    if m and tuple(map(int, m.groups())) < (1, 19, 5):
        return []
    return ["-e", os.path.join(workdir, "nginx-error.log")]


@contextlib.contextmanager
def nginx(workdir, family, port, listen_opts="", prefix=(), http_extra="", workers=1, host=None,
          access_log="access_log off;"):
    """nginx-light on loopback (or `host`) serving workdir/www, started by root, `workers` workers running as
    www-data: yields (master Daemon, a worker's pid); master.workers lists them all."""
    nginx_bin = need("nginx", "nginx-light")
    host = host or LOOPBACK[family]
    listen = (f"{host}:{port}" if family == 4 else f"[{host}]:{port}") + listen_opts
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(d=workdir, listen=listen, http_extra=http_extra, workers=workers,
                                  access_log=access_log))
    cmd = [*prefix, nginx_bin, "-p", workdir, "-c", conf, *nginx_error_log_option(nginx_bin, workdir)]
    with daemon(cmd, workdir, "nginx") as master:
        master.wait_listening(port, family)
        deadline = time.monotonic() + 10
        while True:
            www_data = (pwd.getpwnam("www-data").pw_uid, "nginx")
            found = [c for c in children(master.pid) if (proc_status(c) or (0,))[1:] == www_data]
            if len(found) >= workers:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"no nginx worker running as www-data: {master.log_text()}")
            time.sleep(0.02)
        master.workers = found
        yield master, found[0]


def web_root(workdir, sizes):
    """workdir/www with files of these sizes, readable by nginx's www-data worker."""
    www = os.path.join(workdir, "www")
    os.makedirs(www)
    os.chmod(workdir, 0o755)
    os.chmod(www, 0o755)
    for name, n in sizes.items():
        with open(os.path.join(www, name), "wb") as f:
            f.write(os.urandom(n))
        os.chmod(os.path.join(www, name), 0o644)


@pytest.mark.parametrize("family", [4, 6])
def test_curl_nginx_keepalive(kernel, no_leaks, workdir, family):
    """curl fetches two files over one kept-alive connection from nginx; the worker (www-data) accepts."""
    curl_bin = need("curl", "curl")
    sizes = {"a.bin": 250_001, "b.bin": 7}
    web_root(workdir, sizes)
    port = free_port(family)
    host = LOOPBACK[family] if family == 4 else f"[{LOOPBACK[family]}]"
    with nginx(workdir, family, port) as (master, worker):
        with Trace(port) as t:
            cpid, transfers = curl(curl_bin, *(f"http://{host}:{port}/{n}" for n in sizes))
            events = t.finish(both_closed(port))
    assert [(code, body) for _, _, body, _, code in transfers] == [(200, n) for n in sizes.values()]
    assert len({lport for *_, lport, _ in transfers}) == 1, "curl reused the connection"
    cs, ss = connection(events, port, cpid)
    t.same_in_cli(cs + ss)
    assert cs[0].lport == transfers[0][3]
    www_data = (worker, "nginx", pwd.getpwnam("www-data").pw_uid)
    req = sum(t[0] for t in transfers)
    got = sum(t[1] + t[2] for t in transfers)
    check_connection(cs, ss, family, (cpid, "curl", 0), www_data, www_data, req, got, t.retransmitted)
    assert set(map(owner, ss)) == {www_data}, "the master (root) never touches the connection"
    assert master.pid not in {e.pid for e in events}


@pytest.fixture
def netns(kernel):
    """A network namespace of our own with its loopback up: for sysctls the host must keep."""
    ip = need("ip", "iproute2")
    name = f"ptreal{uuid.uuid4().hex[:8]}"
    r = run([ip, "netns", "add", name])
    if r.returncode:
        kernel_unavailable(f"cannot create a network namespace: {r.stderr.decode().strip()}")
    try:
        r = run([ip, "-n", name, "link", "set", "lo", "up"])
        assert r.returncode == 0, r.stderr
        yield name
    finally:
        run([ip, "netns", "del", name])


def fast_open_everywhere(ip, netns):
    """net.ipv4.tcp_fastopen = 0x207 in the namespace: client and server, data in the SYN without a cookie.
    Returns the command prefix that runs a program in the namespace."""
    r = run([ip, "netns", "exec", netns, "sh", "-c", "echo 519 > /proc/sys/net/ipv4/tcp_fastopen"])
    assert r.returncode == 0, r.stderr
    return (ip, "netns", "exec", netns)


def test_curl_nginx_tcp_fast_open(kernel, no_leaks, workdir, netns):
    """TCP Fast Open, as curl (--tcp-fastopen) and nginx (`listen ... fastopen=N`) do it: curl's request rides
    in the SYN. In a namespace with net.ipv4.tcp_fastopen = 0x207 (client and server, no cookie needed),
    so the first connection carries data already; with the common setting 3 every connection but the first
    to a server does. The request bytes must be counted on the server too, like any received payload."""
    curl_bin = need("curl", "curl")
    ip = need("ip", "iproute2")
    in_ns = fast_open_everywhere(ip, netns)
    size = 20_001
    web_root(workdir, {"f.bin": size})
    port = free_port()
    with nginx(workdir, 4, port, listen_opts=" fastopen=16", prefix=in_ns) as (master, worker):
        with Trace(port, netns_of=master.pid) as t:
            cpid, [(req, hdr, body, lport, code)] = curl(curl_bin, f"http://127.0.0.1:{port}/f.bin",
                                                         options=["--tcp-fastopen"], prefix=in_ns)
            events = t.finish(both_closed(port))
    assert (code, body) == (200, size)
    cs, ss = connection(events, port, cpid)
    (syn,) = of(cs, event="connect")
    assert syn.payload == req, f"the SYN did not carry the request (no TCP Fast Open?): {syn}"
    www_data = (worker, "nginx", pwd.getpwnam("www-data").pw_uid)
    (sc,) = of(ss, event="close")
    assert (sc.tx_bytes, sc.rx_bytes) == (hdr + body, req), f"nginx's close summary: {sc}"
    check_connection(cs, ss, 4, (cpid, "curl", 0), www_data, www_data, req, hdr + body, t.retransmitted,
                     netns=os.stat(f"/run/netns/{netns}").st_ino)
    t.same_in_cli(cs + ss)     # after the checks above: see test_tcp_fast_open_lines_name_the_right_server


def test_tcp_fast_open_lines_name_the_right_server(kernel, no_leaks, workdir, netns):
    """Two nginx servers with TCP Fast Open in one namespace; curl alternates between them, one new connection
    per request (keepalive_timeout 0: nginx closes first, so its sockets end in TIME_WAIT, as on any busy
    server). Every line of a server's connections must name that server's worker, and each connection must
    start with its accept lines, whatever connections the kernel's socket memory served before."""
    curl_bin = need("curl", "curl")
    ip = need("ip", "iproute2")
    in_ns = fast_open_everywhere(ip, netns)
    www_uid = pwd.getpwnam("www-data").pw_uid
    dirs = [os.path.join(workdir, x) for x in "ab"]
    for d in dirs:
        web_root(d, {"f.bin": 1001})
    ports = [free_port(), free_port()]
    rounds = 10
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(nginx(d, 4, p, listen_opts=" fastopen=16", prefix=in_ns,
                                             http_extra="keepalive_timeout 0;")) for d, p in zip(dirs, ports)]
        with Trace(*ports, netns_of=servers[0][0].pid) as t:
            urls = [f"http://127.0.0.1:{p}/f.bin" for _ in range(rounds) for p in ports]
            cpid, transfers = curl(curl_bin, *urls, options=["--tcp-fastopen"], prefix=in_ns)
            events = t.finish(lambda evs: all(both_closed(p, rounds)(evs) for p in ports))
    assert [(code, body) for _, _, body, _, code in transfers] == [(200, 1001)] * len(urls)
    workers = {p: (w, "nginx", www_uid) for p, (_, w) in zip(ports, servers)}
    server_lines = [e for e in events if e.lport in workers]
    wrong = [e for e in server_lines if owner(e) != workers[e.lport]]
    assert not wrong, (f"{len(wrong)} lines of a server's connections name another process "
                       f"(workers {workers}): {wrong[:3]}")
    conns = collections.defaultdict(list)
    for e in server_lines:
        conns[(e.lport, e.rport)].append(e)
    assert len(conns) == len(urls)
    late = {k: v[0] for k, v in conns.items() if v[0].event != "accept"}
    assert not late, f"{len(late)} connections have a line before their accept lines: {list(late.values())[:3]}"
    t.same_in_cli(server_lines)


# ---- 5: a closed port ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", [4, 6])
def test_curl_connection_refused(kernel, no_leaks, family):
    curl_bin = need("curl", "curl")
    port = free_port(family)                # nobody listens on it
    host = LOOPBACK[family] if family == 4 else f"[{LOOPBACK[family]}]"
    with Trace(port) as t:
        p = subprocess.Popen([curl_bin, "-sS", "-g", "--max-time", "10", f"http://{host}:{port}/"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, err = p.communicate(timeout=20)
        events = t.finish(lambda evs: len(of(evs, pid=p.pid, event="reset")) >= 1 and len(of(evs, pid=0)) >= 2)
    assert p.returncode == 7, err               # CURLE_COULDNT_CONNECT
    addr, hs = LOOPBACK[family], HANDSHAKE[family][0]
    (syn,) = of(events, event="connect")
    assert (syn.pid, syn.comm, syn.uid, syn.dir, syn.size, syn.family, syn.laddr, syn.raddr, syn.rport) == \
        (p.pid, "curl", 0, "out", hs, family, addr, addr, port)
    kernel_lines = [e for e in events if e.lport == port]
    assert [(e.dir, e.event, e.size, e.uid, e.pid, e.comm, e.rport, e.raddr) for e in kernel_lines] == \
        [("in", "recv", hs, 0, 0, "", syn.lport, addr), ("out", "reset", BARE_RST[family], 0, 0, "", syn.lport, addr)]
    mine = [e for e in events if e.lport == syn.lport]
    assert [e.event for e in mine if e.event != "close"] == ["connect", "reset"], mine
    (rst,) = of(mine, event="reset")
    assert (rst.dir, rst.pid, rst.comm, rst.size, rst.payload) == ("in", p.pid, "curl", HDRS[family], 0)
    for c in of(mine, event="close"):   # a refused connect may be summarised: nothing was exchanged
        assert (c.pid, c.tx_bytes, c.rx_bytes) == (p.pid, 0, 0), c
    assert len(events) == len(kernel_lines) + len(mine)
    t.same_in_cli(events)


# ---- 2: inetd-style hand-offs --------------------------------------------------------------------------
def socat_client(socat_bin, port, data_path, out_path):
    """socat as a client: sends the file, half-closes, reads until the server closes. Returns its pid."""
    with open(data_path, "rb") as fin, open(out_path, "wb") as fout:
        p = subprocess.Popen([socat_bin, "-t", "10", "-T", "15", "-", f"TCP:127.0.0.1:{port}"], stdin=fin,
                             stdout=fout, stderr=subprocess.PIPE)
    try:
        _, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("socat client timed out")
    assert p.returncode == 0, err
    return p.pid


def echo_handler(workdir, record):
    """A per-connection handler script: records its pid (or its parent's), then becomes /bin/cat."""
    pidfile = os.path.join(workdir, "handler.pid")
    with open(pidfile, "w"):
        pass
    os.chmod(pidfile, 0o666)                    # the handler may run as nobody
    script = os.path.join(workdir, "handler.sh")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\necho {record} > {pidfile}\nexec /bin/cat\n")
    os.chmod(script, 0o755)
    return script, pidfile


def payload_file(workdir, n):
    path = os.path.join(workdir, "request.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(n))
    return path


def check_handoff(ss, first, then):
    """The server side: `first` (the listener) accepts, then the child takes over for good."""
    assert stages(ss) == [first, then], stages(ss)
    assert any(e.payload for e in ss if owner(e) == then), "the child's data lines name the child"


def test_openbsd_inetd_execs_handler(kernel, no_leaks, workdir):
    """openbsd-inetd (private config, foreground) accepts as root, forks and execs an echo handler as nobody:
    accept lines name inetd; once the child does I/O, every line and the close summary name it."""
    inetd_bin = need("inetd", "openbsd-inetd")
    socat_bin = need("socat", "socat")
    need("/bin/cat", "coreutils")
    nobody = pwd.getpwnam("nobody")
    n = 300_001
    script, pidfile = echo_handler(workdir, "$$")
    port = free_port()
    conf = os.path.join(workdir, "inetd.conf")
    with open(conf, "w") as f:
        f.write(f"127.0.0.1:{port} stream tcp nowait nobody {script} handler.sh\n")
    data, out = payload_file(workdir, n), os.path.join(workdir, "reply.bin")
    with daemon([inetd_bin, "-d", "-i", conf], workdir, "inetd") as srv:
        srv.wait_listening(port)
        with Trace(port) as t:
            cpid = socat_client(socat_bin, port, data, out)
            events = t.finish(both_closed(port))
        log = srv.log_text()
    with open(data, "rb") as a, open(out, "rb") as b:
        assert a.read() == b.read(), "the echo came back whole"
    with open(pidfile) as f:
        child = int(f.read())
    cs, ss = connection(events, port, cpid)
    t.same_in_cli(cs + ss)
    inetd, handler = (srv.pid, "inetd", 0), (child, "cat", nobody.pw_uid)
    check_connection(cs, ss, 4, (cpid, "socat", 0), inetd, handler, n, n, t.retransmitted)
    check_handoff(ss, inetd, handler)
    assert f"{child} execv" in log, log


def test_socat_fork_exec(kernel, no_leaks, workdir):
    """socat TCP-LISTEN,fork accepts in the listener and serves each connection in a forked child (which
    relays to an exec'd echo handler): accept lines name the listener, the rest the forked child."""
    socat_bin = need("socat", "socat")
    need("/bin/cat", "coreutils")
    n = 200_003
    script, pidfile = echo_handler(workdir, "$PPID")    # the handler's parent is socat's forked child
    port = free_port()
    data, out = payload_file(workdir, n), os.path.join(workdir, "reply.bin")
    cmd = [socat_bin, f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"EXEC:{script}"]
    with daemon(cmd, workdir, "socat") as srv:
        srv.wait_listening(port)
        with Trace(port) as t:
            cpid = socat_client(socat_bin, port, data, out)
            events = t.finish(both_closed(port))
    with open(data, "rb") as a, open(out, "rb") as b:
        assert a.read() == b.read()
    with open(pidfile) as f:
        forked = int(f.read())
    assert forked not in (srv.pid, cpid)
    cs, ss = connection(events, port, cpid)
    t.same_in_cli(cs + ss)
    listener, child = (srv.pid, "socat", 0), (forked, "socat", 0)
    check_connection(cs, ss, 4, (cpid, "socat", 0), listener, child, n, n, t.retransmitted)
    check_handoff(ss, listener, child)


# ---- 3: sshd's privilege separation --------------------------------------------------------------------
SSHD_CONF = """
Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
PrintMotd no
LogLevel DEBUG1
"""


@contextlib.contextmanager
def privsep_dir():
    """sshd refuses to start without its privilege separation directory (/run/sshd on Debian; created by
    the init script, so missing on a machine where sshd never ran as a service)."""
    path = "/run/sshd"
    made = False
    if not os.path.isdir(path):
        os.mkdir(path, 0o755)
        made = True
    try:
        yield
    finally:
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(path)


def test_ssh_to_sshd_privsep(kernel, no_leaks, workdir):
    """ssh runs `head -c N /dev/zero` on sshd (temp config and keys). The listener accepts and forks a
    per-connection sshd (the monitor), which forks an unprivileged child (user sshd) for key exchange and
    authentication, then serves the session itself (root login: no post-auth privilege separation). Every
    line must name the sshd process that used the socket at that moment, never the listener after the
    hand-off; the client lines name ssh; both ends count the same payload per direction."""
    sshd_bin = need("/usr/sbin/sshd", "openssh-server")
    ssh_bin = need("ssh", "openssh-client")
    keygen = need("ssh-keygen", "openssh-client")
    n = 200_000
    for key in ("host_key", "client_key"):
        r = run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(workdir, key)])
        assert r.returncode == 0, r.stderr
    shutil.copy(os.path.join(workdir, "client_key.pub"), os.path.join(workdir, "authorized_keys"))
    port = free_port()
    conf = os.path.join(workdir, "sshd_config")
    with open(conf, "w") as f:
        f.write(SSHD_CONF.format(port=port, d=workdir))
    log = os.path.join(workdir, "sshd-debug.log")
    ssh_cmd = [ssh_bin, "-F", "/dev/null", "-i", os.path.join(workdir, "client_key"), "-o", "IdentitiesOnly=yes",
               "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-p", str(port), "root@127.0.0.1",
               f"head -c {n} /dev/zero"]
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir}      # no agent, no user config
    with privsep_dir(), daemon([sshd_bin, "-D", "-E", log, "-f", conf], workdir, "sshd") as srv:
        srv.wait_listening(port)
        with Trace(port) as t:
            c = subprocess.Popen(ssh_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=env)
            try:
                out, err = c.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                c.kill()
                pytest.fail("ssh timed out")
            assert c.returncode == 0, f"{err!r}\n{open(log).read()[-3000:]}"
            events = t.finish(both_closed(port))
        with open(log) as f:
            sshd_log = f.read()
    assert len(out) == n and not out.strip(b"\0")
    forked = [int(ln.split()[-1].rstrip(".")) for ln in sshd_log.splitlines() if "Forked child" in ln]
    assert len(forked) == 1, sshd_log
    monitor = forked[0]
    # OpenSSH 9.8 execs the per-connection monitor as sshd-session, OpenSSH 10 (Debian 13) the pre-auth
    # stage as sshd-auth; before, both are forks of sshd named sshd.
    version = subprocess.run([sshd_bin, "-V"], capture_output=True, text=True).stderr
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", version)
    ver = tuple(map(int, m.groups())) if m else (0, 0)
    monitor_comm = "sshd-session" if ver >= (9, 8) else "sshd"
    auth_comm = "sshd-auth" if ver >= (10, 0) else monitor_comm
    cs, ss = connection(events, port, c.pid)
    t.same_in_cli(cs + ss)
    listener = (srv.pid, "sshd", 0)
    # find the unprivileged pre-auth child among the owners: user sshd, neither the listener nor the monitor
    sshd_uid = pwd.getpwnam("sshd").pw_uid
    preauth = {owner(e) for e in ss if e.uid == sshd_uid}
    assert len(preauth) == 1, f"one unprivileged pre-auth child (uid {sshd_uid}) expected: {stages(ss)}"
    (unpriv,) = preauth
    assert unpriv[0] not in (srv.pid, monitor) and unpriv[1] == auth_comm
    # the byte totals of the two ends must agree; what ssh sent is what sshd received
    (cc,) = of(cs, event="close")
    (sc,) = of(ss, event="close")
    assert (cc.tx_bytes, cc.rx_bytes) == (sc.rx_bytes, sc.tx_bytes)
    assert cc.rx_bytes > n > cc.tx_bytes > 0
    check_connection(cs, ss, 4, (c.pid, "ssh", 0), listener, (monitor, monitor_comm, 0), cc.tx_bytes, cc.rx_bytes,
                     t.retransmitted)
    # listener -> monitor (version exchange) -> unprivileged child (kex, auth) -> monitor (session)
    want = [listener, (monitor, monitor_comm, 0), unpriv, (monitor, monitor_comm, 0)]
    got = stages(ss)
    if ver >= (10, 0) and len(got) == 5:
        # OpenSSH 10: after authentication the monitor forks the user's session process (root here), which
        # carries the session before the monitor closes the socket
        session = got[3]
        assert session[1:] == (monitor_comm, 0) and session[0] not in (srv.pid, monitor, unpriv[0]), got
        want.insert(3, session)
    assert got == want, got
    assert any(e.payload for e in ss if owner(e) == unpriv)
    after = ss[[owner(e) for e in ss].index((monitor, monitor_comm, 0)):]
    assert srv.pid not in {e.pid for e in after}, "nothing after the hand-off names the listener"
