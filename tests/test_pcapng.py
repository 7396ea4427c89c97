"""`pytracer -w FILE` (pcapng, each packet labelled with its process) and `pytracer -r FILE`, against the
real kernel, with tcpdump and tshark as the readers nobody here wrote.

For the same traffic (curl against python's http.server, IPv4 and IPv6, and tests/traffic.py peers), the
packets of pytracer's file must be those of a concurrent `tcpdump -i lo` capture (on veth: tcpdump on each
namespace's device): the same number, the same order on each connection, the same original length and the
same bytes from the link header to the end of the TCP header (options included; the TCP checksum too: on
loopback the kernel leaves a partial checksum in the packet, and tcpdump and pytracer read the same memory).
tshark must open the file with nothing on stderr; `frame.comment contains "comm=curl"` must select exactly
curl's packets; the lines of `-r FILE -j` must be those pytracer printed live (`--print -j`), byte for byte.

Needs tcpdump, tshark and curl (a missing one is a skip naming its Debian package, or a failure under
PYTRACER_REQUIRE_KERNEL=1). The qemu VMs (tests/vm/) run on the host's root file system, so they have them:
the file is in VM_TESTS (under TCG: the veth tests passed on 5.10 in 82 s and 49 s, the loopback and
stdout tests on 6.1 in 356 s together).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import traffic
from conftest import ROOT
from test_real_programs import SYSTEM_PYTHON, curl, free_port, need
from test_tcpsnoop import netns_pair  # noqa: F401 - a fixture

from pytracer.toolkit import pcapng
from pytracer.tools.tcpsnoop.pcap import parse_tcp

LOOPBACK = {4: "127.0.0.1", 6: "::1"}
LINK_HLEN = {pcapng.LINKTYPE_ETHERNET: 14, pcapng.LINKTYPE_RAW: 0}


def _quiet_stderr(text):
    """tshark's and tcpdump's stderr less their notes that running as root is dangerous / what they read."""
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Running as user")
            and not ln.startswith("reading from file")]


@pytest.fixture
def tools(kernel):
    return {"tcpdump": need("tcpdump", "tcpdump"), "tshark": need("tshark", "tshark"), "curl": need("curl", "curl")}


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="pytracer-pcapng-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Pytracer:
    """`python -m pytracer ARGS` as a process, from this checkout; ready once its capture file has begun."""

    def __init__(self, *args, path=None, stdout=subprocess.PIPE):
        self.path = path
        self.p = subprocess.Popen([sys.executable, "-m", "pytracer", *args], cwd=ROOT, stdout=stdout,
                                  stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def wait_ready(self, timeout=180):       # a first start under qemu TCG takes a while
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                pytest.fail(f"pytracer exited with {self.p.returncode}: {self.p.stderr.read().decode()}")
            if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
                return self
            time.sleep(0.05)
        pytest.fail("pytracer did not start")

    def stop(self, timeout=30):
        """SIGTERM: pytracer writes what it holds and its last statistics, and exits 0."""
        if self.p.poll() is None:
            time.sleep(0.5)          # the last records reach the ring buffer and are read
            self.p.send_signal(signal.SIGTERM)
        out, err = self.p.communicate(timeout=timeout)
        assert self.p.returncode == 0, err.decode()
        assert b"Traceback" not in err, err.decode()
        # a loss is reported, yet the capture could then not equal tcpdump's: say so rather than differ
        assert b"events lost" not in err, err.decode()
        return out, err.decode()

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


class Tcpdump:
    """tcpdump -w on one interface (inside a namespace if given), ready once it says it is listening."""

    def __init__(self, tcpdump, iface, path, bpf_filter, netns=None):
        cmd = [tcpdump, "-i", iface, "-n", "-U", "--immediate-mode", "-B", "65536", "-s", "262144", "-Z", "root",
               "-w", path, bpf_filter]
        if netns:
            cmd = ["ip", "netns", "exec", netns] + cmd
        self.path = path
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
        line = self.p.stderr.readline()
        if "listening on" not in line:
            self.kill()
            pytest.fail(f"tcpdump did not start: {line}")

    def stop(self):
        time.sleep(0.3)
        self.p.send_signal(signal.SIGINT)
        err = self.p.communicate(timeout=15)[1]
        dropped = [int(ln.split()[0]) for ln in err.splitlines() if "dropped by kernel" in ln]
        assert dropped == [0], err

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def packets(path):
    """[(interface, Packet, (family, src, dst, sport, dport, hdr_len, flags))] of the TCP packets of a file."""
    out = []
    with open(path, "rb") as f:
        for item in pcapng.read(path, f):
            if isinstance(item, pcapng.Packet):
                p = parse_tcp(item.data, LINK_HLEN[item.interface.linktype])
                if p is not None:
                    out.append((item.interface, item, p))
    return out


def conn_key(p):
    fam, src, dst, sport, dport = p[:5]
    return (fam,) + tuple(sorted([(src, sport), (dst, dport)]))


def per_flow(pkts):
    """(connection, sender) -> [(original length, bytes from the link header to the end of the TCP header)]
    in order.  Order is compared per direction only: the two ends of a loopback connection send from two
    CPUs at once (both ACKs of a close, say), and which of two such packets a tap sees first is a race,
    between tcpdump's tap and ours as between two runs of tcpdump."""
    out = {}
    for iface, pkt, p in pkts:
        hdr = LINK_HLEN[iface.linktype] + p[5]
        out.setdefault((conn_key(p), (p[1], p[3])), []).append((pkt.orig_len, pkt.data[:hdr]))
    return out


def differences(ours, theirs):
    """Per flow, where pytracer's packets first differ from tcpdump's (for the failure message)."""
    a, b = per_flow(ours), per_flow(theirs)
    out = []
    for k in sorted(set(a) | set(b), key=str):
        x, y = a.get(k, []), b.get(k, [])
        if x != y:
            i = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
            out.append(f"{k}: {len(x)} packets vs tcpdump's {len(y)}; first difference at #{i}: "
                       f"{x[i] if i < len(x) else None} vs {y[i] if i < len(y) else None}")
    return "\n".join(out)


def assert_same_packets(ours, theirs, more_than):
    """pytracer's file holds tcpdump's packets (more than `more_than` of them), flow by flow, in order."""
    assert len(ours) == len(theirs) and len(ours) > more_than, differences(ours, theirs)
    assert per_flow(ours) == per_flow(theirs), differences(ours, theirs)


def tshark_ok(tshark, path):
    """tshark reads the whole file with nothing to say on stderr; returns its frame count."""
    r = subprocess.run([tshark, "-r", path, "-q", "-z", "io,stat,0"], capture_output=True, text=True)
    assert r.returncode == 0 and not _quiet_stderr(r.stderr), r.stderr
    r = subprocess.run([tshark, "-r", path, "-T", "fields", "-e", "frame.number"], capture_output=True, text=True)
    assert r.returncode == 0 and not _quiet_stderr(r.stderr), r.stderr
    return len(r.stdout.split())


def tshark_count(tshark, path, display_filter):
    r = subprocess.run([tshark, "-r", path, "-Y", display_filter, "-T", "fields", "-e", "frame.number"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not _quiet_stderr(r.stderr), r.stderr
    return len(r.stdout.split())


def read_back(path, *args):
    r = subprocess.run([sys.executable, "-m", "pytracer", "-r", path, *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return r.stdout


@pytest.mark.parametrize("family", [4, 6])
def test_loopback_packets_equal_tcpdump(no_leaks, tools, tmp, family):
    """curl -> http.server and a traffic.py pair on loopback: the file holds tcpdump's packets, byte for byte in
    the headers, each labelled with both ends; comm=curl selects curl's packets; -r gives back the live lines."""
    web, peer_port, closed = free_port(family), free_port(family), free_port(family)
    host = LOOPBACK[family]
    url_host = host if family == 4 else f"[{host}]"
    out = os.path.join(tmp, "out.pcapng")
    flt = f"tcp port {web} or tcp port {peer_port} or tcp port {closed}"
    srv = subprocess.Popen([SYSTEM_PYTHON, "-m", "http.server", "-b", host, str(web), "-d", tmp],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dump = tracer = None
    try:
        _wait_listening(host, web)
        dump = Tcpdump(tools["tcpdump"], "lo", os.path.join(tmp, "dump.pcap"), flt)
        tracer = Pytracer("-P", str(web), "-P", str(peer_port), "-P", str(closed), "-w", out, "--print", "-j",
                          path=out).wait_ready()
        # a SYN to a port nobody listens on, answered by the kernel's RST (an end of no process)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, closed), timeout=5)
        with open(os.path.join(tmp, "f.bin"), "wb") as f:
            f.write(os.urandom(50000))
        curl_pid, res = curl(tools["curl"], f"http://{url_host}:{web}/f.bin", f"http://{url_host}:{web}/")
        s = traffic.server("tsrv", str(family), host, 3000, 20000, port=peer_port)
        c = traffic.client("tcli", str(family), host, s.port, 3000, 20000)
        c.go()
        c.wait()
        s.wait()
        live, err = tracer.stop()
        dump.stop()
    finally:
        for p in (tracer, dump):
            if p is not None:
                p.kill()
        srv.terminate()
        srv.wait()

    ours, theirs = packets(out), packets(dump.path)
    assert_same_packets(ours, theirs, more_than=0)
    assert {iface.name for iface, _, _ in ours} == {"lo"}
    # every loopback packet names both of its ends: two local sockets, both followed
    for _, pkt, _ in ours:
        assert len(pkt.comments) == 1 and " | peer pid=" in pkt.comments[0], pkt.comments
    # exactly curl's packets: those of its connections (its local ports, as curl reported them)
    curl_ports = {r[3] for r in res}
    curls = [p for _, _, p in ours if p[3] in curl_ports or p[4] in curl_ports]
    assert curls and tshark_count(tools["tshark"], out, 'frame.comment contains "comm=curl"') == len(curls)
    assert tshark_count(tools["tshark"], out, f'frame.comment contains "pid={curl_pid} comm=curl"') == len(curls)
    peers = [p for _, _, p in ours if peer_port in (p[3], p[4])]
    assert peers and tshark_count(tools["tshark"], out, 'frame.comment contains "comm=tcli"') == len(peers)
    refused = [pkt.comments[0] for _, pkt, p in ours if closed in (p[3], p[4])]
    assert len(refused) == 2 and "pid=0 comm= uid=0" in refused[1], refused      # the SYN, the kernel's RST
    assert tshark_ok(tools["tshark"], out) == len(ours)
    # round trip: the lines -r gives are those printed live, byte for byte (order: by time, within a packet
    # the sending end first, as live; live order across CPUs may differ, so compare sorted)
    live_lines = live.decode().splitlines()
    back = read_back(out, "-j").splitlines()
    assert sorted(back) == sorted(live_lines)
    assert {json.loads(ln)["event"] for ln in back} >= {"connect", "accept", "send", "recv", "close"}


def test_iperf3_bulk_equals_tcpdump(no_leaks, tools, tmp):
    """A real bulk sender (iperf3, its control and data connections, paced to 40 Mbit/s for 2 s on loopback):
    the same packets as tcpdump's capture, GSO super-packets included (one block each, as both taps see the
    skb), every one labelled iperf3 at both ends; the payload beyond the skb's linear part is truncation."""
    iperf3 = need("iperf3", "iperf3")
    port = free_port(4)
    out = os.path.join(tmp, "out.pcapng")
    srv = subprocess.Popen([iperf3, "-s", "-1", "-B", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    dump = tracer = None
    try:
        _wait_listening("127.0.0.1", port)
        dump = Tcpdump(tools["tcpdump"], "lo", os.path.join(tmp, "dump.pcap"), f"tcp port {port}")
        tracer = Pytracer("-P", str(port), "-w", out, path=out).wait_ready()
        r = subprocess.run([iperf3, "-c", "127.0.0.1", "-p", str(port), "-b", "40M", "-t", "2"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        srv.wait(timeout=20)
        tracer.stop()
        dump.stop()
    finally:
        for p in (tracer, dump):
            if p is not None:
                p.kill()
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    ours, theirs = packets(out), packets(dump.path)
    assert_same_packets(ours, theirs, more_than=100)
    assert len({conn for conn, _ in per_flow(ours)}) == 2     # control and data connections
    assert max(pkt.orig_len for _, pkt, _ in ours) > 2048       # GSO super-packets, as tcpdump saw them
    for _, pkt, _ in ours:
        assert pkt.comments[0].count("comm=iperf3") == 2, pkt.comments   # both ends, on every packet
        assert len(pkt.data) <= pkt.orig_len


def test_redis_equals_tcpdump(no_leaks, tools, tmp):
    """redis-server and redis-benchmark (10 clients, pipelined SET/GET) on loopback: the same packets as
    tcpdump's capture, each labelled with both ends, redis-server's and redis-benchmark's."""
    redis_server, bench = need("redis-server", "redis-server"), need("redis-benchmark", "redis-tools")
    port = free_port(4)
    out = os.path.join(tmp, "out.pcapng")
    srv = subprocess.Popen([redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dump = tracer = None
    try:
        _wait_listening("127.0.0.1", port)
        dump = Tcpdump(tools["tcpdump"], "lo", os.path.join(tmp, "dump.pcap"), f"tcp port {port}")
        tracer = Pytracer("-P", str(port), "-w", out, path=out).wait_ready()
        r = subprocess.run([bench, "-h", "127.0.0.1", "-p", str(port), "-c", "10", "-n", "2000", "-P", "4",
                            "-t", "set,get", "-q"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        tracer.stop()
        dump.stop()
    finally:
        for p in (tracer, dump):
            if p is not None:
                p.kill()
        srv.terminate()
        srv.wait()
    ours, theirs = packets(out), packets(dump.path)
    assert_same_packets(ours, theirs, more_than=100)
    for _, pkt, _ in ours:
        (label,) = pkt.comments     # both ends: the server and the benchmark client
        assert " | peer pid=" in label and "comm=redis-server" in label and "comm=redis-benchmark" in label, label


def _wait_listening(host, port, timeout=20):
    """Until a socket listens on `port` (read from /proc/net/tcp*: a probe connection's packets could fall
    into the captures, half before pytracer started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(name) as f:
                for ln in f.readlines()[1:]:
                    local, state = ln.split()[1], ln.split()[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        return
        time.sleep(0.05)
    pytest.fail(f"nothing listens on {host} port {port}")


VETH_SERVER = {4: ("169.254.77.1", "169.254.77.2"), 6: ("fd77::1", "fd77::2")}    # netns_pair's addresses


@pytest.mark.parametrize("family", [4, 6])
def test_veth_between_namespaces_shows_both_interfaces(no_leaks, tools, tmp, netns_pair, family):
    """Server in namespace A, client in B: each packet is on B's veth end (sent) and on A's (received), one
    interface description each, with its namespace; each interface's packets are those tcpdump sees there."""
    a, b = netns_pair
    tag = a[3:]
    out = os.path.join(tmp, "out.pcapng")
    port = 18000 + int(tag, 16) % 20000
    dumps, tracer = [], None
    try:
        dumps = [Tcpdump(tools["tcpdump"], f"va{tag}", os.path.join(tmp, "a.pcap"), f"tcp port {port}", netns=a),
                 Tcpdump(tools["tcpdump"], f"vb{tag}", os.path.join(tmp, "b.pcap"), f"tcp port {port}", netns=b)]
        tracer = Pytracer("-P", str(port), "-w", out, path=out).wait_ready()
        srv_addr = VETH_SERVER[family][0]
        s = traffic.server("tsrv", str(family), srv_addr, 5000, 30000, netns=a, port=port)
        c = traffic.client("tcli", str(family), srv_addr, s.port, 5000, 30000, netns=b)
        c.go()
        c.wait()
        s.wait()
        tracer.stop()
        for d in dumps:
            d.stop()
    finally:
        for p in [tracer] + dumps:
            if p is not None:
                p.kill()
    ours = packets(out)
    ns_a, ns_b = (os.stat(f"/run/netns/{n}").st_ino for n in (a, b))
    by_iface = {}
    for iface, pkt, p in ours:
        by_iface.setdefault((iface.name, iface.description.split()[0]), []).append((iface, pkt, p))
    assert set(by_iface) == {(f"va{tag}", f"netns={ns_a}"), (f"vb{tag}", f"netns={ns_b}")}
    for (name, _), mine in by_iface.items():
        theirs = packets(dumps[0].path if name == f"va{tag}" else dumps[1].path)
        assert len(mine) == len(theirs) and per_flow(mine) == per_flow(theirs), name
        # direction: B's end sends what the client sends, A's end receives it
        for _, pkt, p in mine:
            client_sent = p[1] == VETH_SERVER[family][1]
            want = pcapng.DIR_OUTBOUND if (name == f"vb{tag}") == client_sent else pcapng.DIR_INBOUND
            assert pkt.direction == want
            assert " | peer " not in pkt.comments[0]       # over veth each end is its own packet
            assert ("comm=tcli" if (name == f"vb{tag}") else "comm=tsrv") in pkt.comments[0]
    assert tshark_ok(tools["tshark"], out) == len(ours)


def test_owner_filter_and_stdout_into_tcpdump(no_leaks, tools, tmp):
    """-c curl -w - | tcpdump -r -: tcpdump reads the stream; only curl's connection is in it, every packet
    labelled with curl alone (the server fails the filter), none lost or doubled against tcpdump -i lo."""
    web = free_port(4)
    srv = subprocess.Popen([SYSTEM_PYTHON, "-m", "http.server", "-b", "127.0.0.1", str(web), "-d", tmp],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    other = free_port(4)
    dump = tracer = reader = None
    stream = os.path.join(tmp, "stream.pcapng")
    try:
        _wait_listening("127.0.0.1", web)
        dump = Tcpdump(tools["tcpdump"], "lo", os.path.join(tmp, "dump.pcap"), f"tcp port {web} or tcp port {other}")
        tracer = Pytracer("-c", "curl", "-P", str(web), "-P", str(other), "-w", "-", path=stream)
        # tcpdump -r - reads pytracer's stdout; a tee to a file tells when pytracer has started
        tee = subprocess.Popen(["tee", stream], stdin=tracer.p.stdout, stdout=subprocess.PIPE)
        tracer.p.stdout.close()
        reader = subprocess.Popen([tools["tcpdump"], "-n", "-r", "-"], stdin=tee.stdout, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        tee.stdout.close()
        tracer.wait_ready()
        _, res = curl(tools["curl"], f"http://127.0.0.1:{web}/")
        s = traffic.server("tsrv", "4", "127.0.0.1", 100, 100, port=other)    # not curl: filtered out
        c = traffic.client("tcli", "4", "127.0.0.1", s.port, 100, 100)
        c.go()
        c.wait()
        s.wait()
        tracer.stop()
        text, err = reader.communicate(timeout=30)
        tee.wait(timeout=10)
        dump.stop()
    finally:
        for p in (tracer, dump):
            if p is not None:
                p.kill()
        if reader is not None and reader.poll() is None:
            reader.kill()
        srv.terminate()
        srv.wait()
    assert reader.returncode == 0 and not _quiet_stderr(err), err
    port = res[0][3]
    lines = [ln for ln in text.splitlines() if " IP " in ln]
    want = [p for _, _, p in packets(dump.path) if port in (p[3], p[4])]
    assert len(lines) == len(want) and all(f".{port}" in ln for ln in lines), text
    ours = packets(stream)
    assert per_flow(ours) == per_flow([x for x in packets(dump.path) if port in (x[2][3], x[2][4])])
    for _, pkt, _ in ours:
        assert "comm=curl" in pkt.comments[0] and " | peer " not in pkt.comments[0], pkt.comments


def test_reads_tcpdump_files_and_rejects_broken_ones(kernel, tools, tmp):
    """A plain tcpdump capture prints with empty process columns; truncated or foreign files are one clear
    error (status 1), no traceback."""
    port = free_port(4)
    dump = Tcpdump(tools["tcpdump"], "lo", os.path.join(tmp, "dump.pcap"), f"tcp port {port}")
    try:
        s = traffic.server("tsrv", "4", "127.0.0.1", 10, 10, port=port)
        c = traffic.client("tcli", "4", "127.0.0.1", s.port, 10, 10)
        c.go()
        c.wait()
        s.wait()
        dump.stop()
    finally:
        dump.kill()
    n = len(packets(dump.path))
    text = read_back(dump.path).splitlines()
    assert text[0].split() == ["UID", "PID", "LADDR", "LPORT", "DR", "RADDR", "RPORT", "SIZE", "CMD"]
    assert len(text) == n + 1 and n >= 8
    for ln in text[1:]:
        assert ln[:12].strip() == "" and ln.split()[0] == "127.0.0.1", ln
    js = [json.loads(ln) for ln in read_back(dump.path, "-j").splitlines()]
    assert len(js) == n and all(o["pid"] is None and o["uid"] is None and o["comm"] == "" for o in js)
    # the same packets converted to pcapng by tshark read the same
    ng = os.path.join(tmp, "dump.pcapng")
    subprocess.run([tools["tshark"], "-r", dump.path, "-F", "pcapng", "-w", ng], check=True, capture_output=True)
    assert [ln.split()[:7] for ln in read_back(ng).splitlines()] == [ln.split()[:7] for ln in text]

    data = open(dump.path, "rb").read()
    cases = {"truncated.pcap": data[:len(data) - 7], "empty.pcap": b"", "foreign.txt": b"hello, not a capture\n"}
    for name, content in cases.items():
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(content)
        r = subprocess.run([sys.executable, "-m", "pytracer", "-r", path], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 1 and "Traceback" not in r.stderr, (name, r.stderr)
        assert r.stderr.startswith(f"pytracer: {path}: not a readable capture file at byte"), (name, r.stderr)
    r = subprocess.run([sys.executable, "-m", "pytracer", "-r", os.path.join(tmp, "missing")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "No such file" in r.stderr and "Traceback" not in r.stderr


def _synthetic_lines(comm):
    """Lines as the tracer makes them with -w: a loopback SYN seen sent and received, then a close line."""
    from pytracer.tools.tcpsnoop.tracer import Capture, Conn

    ip = bytes.fromhex("45000028000140004006") + b"\0\0" + socket.inet_aton("127.0.0.1") * 2
    tcp = struct_pack_tcp(40000, 8080)
    frame = b"\0" * 12 + b"\x08\x00" + ip + tcp
    t = time.time_ns()
    cli = Conn(1, 4242, 1000, comm, 4, "127.0.0.1", 40000, "127.0.0.1", 8080, 4026531840, 77)
    srv = Conn(2, 99, 0, "srv", 4, "127.0.0.1", 8080, "127.0.0.1", 40000, 4026531840, 1)
    cap = Capture(0xffff888000001000, len(frame), 1, 4026531840, 772, 14, 0, "lo", frame)
    return [(t / 1e9, "connect", "out", cli, 54, 0, None, cap._replace(ts_ns=t)),
            ((t + 5000) / 1e9, "accept", "in", srv, 54, 0, None, cap._replace(dir=1, ts_ns=t + 5000)),
            ((t + 9000) / 1e9, "close", "out", cli, 0, 0, (0, 0, 1.25), None)]


def struct_pack_tcp(sport, dport):
    import struct
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)


def test_labels_losses_and_events_read_back(tmp, tools):
    """Without a kernel: a comm with the label's separators in it, a loopback pair, a close line and a loss
    report survive writing and reading; tshark reads the file cleanly and sees one frame."""
    from pytracer.tools.tcpsnoop.pcap import PcapngWriter, read_lines

    path = os.path.join(tmp, "s.pcapng")
    lines = _synthetic_lines("a b|c=d\\x5c")
    with open(path, "wb") as f:
        w = PcapngWriter(f, 2048)
        w.header()
        w.write(lines)
        w.lost(3, {"ringbuf": 3})
        w.close()
    with open(path, "rb") as f:
        items = list(pcapng.read(path, f))
    pkts = [i for i in items if isinstance(i, pcapng.Packet)]
    stats = [i for i in items if isinstance(i, pcapng.Statistics)]
    assert len(pkts) == 1 and pkts[0].direction == pcapng.DIR_INBOUND
    assert pkts[0].comments == ("pid=99 comm=srv uid=0 netns=4026531840 cgroup=1 event=accept dir=in | peer "
                                "pid=4242 comm=a\\x20b\\x7cc\\x3dd\\x5c uid=1000 netns=4026531840 cgroup=77 "
                                "event=connect dir=out dt_ns=-5000",)
    assert [s.ifdrop for s in stats] == [None, 3, 3]        # the close line's block, the loss, the end
    with open(path, "rb") as f:
        back = list(read_lines(path, f))
    key = [(ln[0], ln[1], ln[2], ln[3].pid, ln[3].uid, ln[3].comm, ln[3].laddr, ln[3].lport, ln[3].raddr,
            ln[3].rport, ln[3].netns, ln[3].cgroup, ln[4], ln[5], ln[6]) for ln in lines]
    got = [(ln[0], ln[1], ln[2], ln[3].pid, ln[3].uid, ln[3].comm, ln[3].laddr, ln[3].lport, ln[3].raddr,
            ln[3].rport, ln[3].netns, ln[3].cgroup, ln[4], ln[5], ln[6]) for ln in back]
    assert got == key
    assert tshark_ok(tools["tshark"], path) == 1


def test_reader_never_fails_with_a_traceback(tmp):
    """Every truncation, and every single-byte corruption in the blocks' framing, of a pcapng file is read
    as packets or as a CaptureFormatError naming the offset: never another exception. (No kernel.)"""
    from pytracer.tools.tcpsnoop.pcap import PcapngWriter

    path = os.path.join(tmp, "s.pcapng")
    with open(path, "wb") as f:
        w = PcapngWriter(f, 2048)
        w.header()
        w.write(_synthetic_lines("curl"))
        w.close()
    good = open(path, "rb").read()

    def read_all(data):
        bad = os.path.join(tmp, "bad.pcapng")
        with open(bad, "wb") as f:
            f.write(data)
        with open(bad, "rb") as f:
            try:
                return list(pcapng.read(bad, f))
            except pcapng.CaptureFormatError as e:
                assert e.path == bad and 0 <= e.offset <= len(data)
                return None

    assert len(read_all(good)) == 3          # the packet, the close line's ISB, the end ISB
    for n in range(len(good)):
        read_all(good[:n])
    for i in range(len(good)):
        for v in (0x00, 0xFF, good[i] ^ 0x80):
            read_all(good[:i] + bytes([v]) + good[i + 1:])


def test_foreign_comments_are_no_labels(tmp):
    """A comment that looks like pytracer's label but is not (someone's note) leaves the packet unlabelled;
    an ISB comment that looks like an event but is not is ignored. (No kernel.)"""
    from pytracer.tools.tcpsnoop.pcap import read_lines

    frame = _synthetic_lines("x")[0][7].data
    path = os.path.join(tmp, "f.pcapng")
    with open(path, "wb") as f:
        w = pcapng.Writer(f)
        i = w.add_interface(pcapng.LINKTYPE_ETHERNET, 0, "eth0")
        w.packet(i, 10 ** 18, frame, len(frame), pcapng.DIR_OUTBOUND, ["pid=me comm=notes"])
        w.statistics(i, 10 ** 18, comment="pytracer-event pid=?? lport=x")
    with open(path, "rb") as f:
        lines = list(read_lines(path, f))
    assert len(lines) == 1
    ts, event, d, conn = lines[0][:4]
    assert (event, d, conn.pid, conn.comm, conn.lport, conn.rport) == ("connect", "out", None, "", 40000, 8080)
