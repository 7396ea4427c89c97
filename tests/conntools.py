"""What the connection tools' tests share (tests/test_tcpconnect.py, test_tcpaccept.py, test_tcpconnlat.py): a tool
run as a user runs it (`pytracer TOOL -j ...`, stopped with Ctrl-C), the peers of tests/connpeers.py, and
network namespaces of the test's own (a veth pair; nftables rules inside them)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import kernel_unavailable, pytracer_cmd, run_env, without_notes

HERE = os.path.dirname(os.path.abspath(__file__))
CONNPEERS = os.path.join(HERE, "connpeers.py")
# the two ends of netns_pair's veth: A (the server's side) and B (the client's)
ADDR_A = {"4": "169.254.78.1", "6": "fd78::1"}
ADDR_B = {"4": "169.254.78.2", "6": "fd78::2"}
LOOPBACK = {"4": "127.0.0.1", "6": "::1"}


def wait_tracing(proc, timeout=120.0):
    """Wait until a pytracer process has attached a program (-j prints no header to wait for): it holds a BPF
    link, or, where classic tracepoints attach without links (before Linux 5.15), a perf event. The remaining
    attachments follow within milliseconds. Generous timeout: under emulation (vmtest) start-up takes seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
            if any(os.readlink(f"/proc/{proc.pid}/fd/{fd}") in ("anon_inode:bpf_link", "anon_inode:[perf_event]")
                   for fd in fds):
                time.sleep(0.5)
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"pytracer did not attach: {proc.args}")


class Tool:
    """`pytracer TOOL ARGS` with a pipe for stdout; stop() sends SIGINT (Ctrl-C) and returns what it printed:
    JSON objects with -j, else the lines. Always stopped and reaped, also when the test fails."""

    def __init__(self, tool, *args):
        self.args = [tool, *map(str, args)]
        self.p = None

    def __enter__(self):
        self.p = subprocess.Popen(pytracer_cmd(*self.args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=run_env())
        try:
            wait_tracing(self.p)
        except BaseException:
            self.__exit__()
            raise
        return self

    def stop(self):
        self.p.send_signal(signal.SIGINT)
        out, err = self.p.communicate(timeout=60)
        assert self.p.returncode == 0, (self.p.returncode, err)
        assert not without_notes(err), err
        if "-j" in self.args:
            return [json.loads(line) for line in out.splitlines()]
        return out.splitlines()

    def __exit__(self, *exc):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


class Peer:
    """One connpeers.py process; `lines` collects what it said after its PID line."""

    def __init__(self, *args, netns=None):
        cmd = [sys.executable, CONNPEERS, *map(str, args)]
        if netns:
            cmd = ["ip", "netns", "exec", netns] + cmd
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.name = str(args[1])
        self.pid = int(self.expect("PID")[2])
        self.port = int(self.expect("LISTEN")[1]) if args[0] == "acceptor" else None

    def expect(self, word):
        line = self.p.stdout.readline().split()
        assert line and line[0] == word, f"peer said {line}, expected {word}"
        return line

    def go(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()

    def finish(self, timeout=60):
        """Wait for the peer to exit; the words of every line it said."""
        out, _ = self.p.communicate(timeout=timeout)
        assert self.p.returncode == 0, f"peer {self.p.args} exited with {self.p.returncode}"
        return [ln.split() for ln in out.splitlines()]

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def connects(peer, timeout=60):
    """A connector's (local port, result) of each connect, in order."""
    return [(int(w[1]), w[2]) for w in peer.finish(timeout) if w[0] == "CONNECT"]


def accepted(peer, timeout=60):
    """An acceptor's peer ports, in order."""
    return [int(w[1]) for w in peer.finish(timeout) if w[0] == "ACCEPTED"]


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture
def netns_pair(kernel):
    """Two network namespaces, A and B, joined by a veth pair (ADDR_A, ADDR_B); lo up in both."""
    if shutil.which("ip") is None:
        kernel_unavailable("iproute2 is not installed")
    tag = uuid.uuid4().hex[:6]
    a, b = f"ptcA{tag}", f"ptcB{tag}"
    cmds = [f"ip netns add {a}", f"ip netns add {b}",
            f"ip link add ca{tag} netns {a} type veth peer name cb{tag} netns {b}",
            f"ip -n {a} addr add {ADDR_A['4']}/24 dev ca{tag}", f"ip -n {b} addr add {ADDR_B['4']}/24 dev cb{tag}",
            f"ip -n {a} addr add {ADDR_A['6']}/64 dev ca{tag} nodad",
            f"ip -n {b} addr add {ADDR_B['6']}/64 dev cb{tag} nodad",
            f"ip -n {a} link set ca{tag} up", f"ip -n {b} link set cb{tag} up",
            f"ip -n {a} link set lo up", f"ip -n {b} link set lo up"]
    try:
        for cmd in cmds:
            r = run(cmd.split())
            if r.returncode:
                kernel_unavailable(f"cannot set up network namespaces: {cmd}: {r.stderr.strip()}")
        yield a, b
    finally:
        run(["ip", "netns", "del", a])
        run(["ip", "netns", "del", b])


def netns_inode(name=None):
    """The inode of a named network namespace, or of this process's."""
    return os.stat(f"/run/netns/{name}" if name else "/proc/self/ns/net").st_ino


def nft(netns, script):
    """Load an nftables ruleset into a namespace (nft -f -)."""
    if shutil.which("nft") is None:
        kernel_unavailable("nftables (nft) is not installed")
    r = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def nft_input_rule(netns, rule):
    """One rule on the namespace's input path, in a table of its own (`inet pytracer_test`)."""
    nft(netns, "table inet pytracer_test {\n chain input {\n  type filter hook input priority 0;\n"
               f"  {rule}\n }}\n}}\n")


def nft_flush(netns):
    nft(netns, "delete table inet pytracer_test\n")
