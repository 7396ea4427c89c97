"""Drive real peers (tests/peers.py) and the tracer, for the end-to-end tests."""
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.path.join(HERE, "peers.py")


class Peer:
    """One peers.py process; knows the pids and names it announced and the port it listens on."""

    def __init__(self, *args, netns=None, prefix=()):
        cmd = list(prefix) + [sys.executable, PEERS, *[str(a) for a in args]]
        if netns:
            cmd = ["ip", "netns", "exec", netns] + cmd
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pids = {}
        self.port = None

    def read_until(self, word):
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"peer exited before saying {word}")
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "PID":
                self.pids[parts[1]] = int(parts[2])
            elif parts[0] == "LISTEN":
                self.port = int(parts[1])
            if parts[0] == word:
                return parts

    def go(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()

    def wait(self, timeout=30):
        for line in self.p.stdout:
            parts = line.split()
            if parts and parts[0] == "PID":
                self.pids[parts[1]] = int(parts[2])
        rc = self.p.wait(timeout=timeout)
        assert rc == 0, f"peer {self.p.args} exited with {rc}"


def server(name, fam, host, recv, send, mode="server", extra=(), netns=None, port=0):
    if mode == "server":
        args = ("server", name, fam, host, port, recv, send)
    else:
        args = (mode, name, fam, host, port, *extra, recv, send)
    s = Peer(*args, netns=netns)
    s.read_until("LISTEN")
    return s


def client(name, fam, host, port, send, recv, netns=None, prefix=(), delay=None):
    """A client peer, started; it connects on go(), and sends `delay` seconds after connecting if given (with
    delay="go": it says CONNECTED and sends on a second go())."""
    extra = () if delay is None else (delay,)
    c = Peer("client", name, fam, host, port, send, recv, *extra, netns=netns, prefix=prefix)
    c.read_until("PID")
    return c


def collect(snoop, until_quiet=0.3, limit=10.0):
    """Read events until nothing new arrives for `until_quiet` seconds."""
    out = []
    deadline = time.monotonic() + limit
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        lines = snoop.poll_lines(0.05)
        if lines:
            out.extend(lines)
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > until_quiet:
            break
    out.extend(snoop.drain_lines())
    from pytracer.tcpsnoop import Event

    return [Event(line) for line in out]


def conversation(fam, host, nsend, nrecv, netns_srv=None, netns_cli=None, srv_host=None):
    """A client sends nsend bytes, the server answers nrecv bytes; returns (server peer, client peer)."""
    s = server("tsrv", fam, srv_host or host, nsend, nrecv, netns=netns_srv)
    c = client("tcli", fam, host, s.port, nsend, nrecv, netns=netns_cli)
    c.go()
    c.wait()
    s.wait()
    return s, c
