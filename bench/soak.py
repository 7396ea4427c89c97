#!/usr/bin/env python3
"""Soak: run `python -m pytracer -j` for a long time under a mixed TCP workload and watch it for growth.

Workload (separate processes, so the tracer sees real owners):
  * short connections (IPv4 and IPv6 loopback): connect, a small request and answer, close;
  * bulk transfers (IPv4 and IPv6 loopback): a few MB each way;
  * connections to a closed port (the kernel answers the SYN with a RST);
  * fork hand-offs: an inetd-style server accepts and forks a child that does the I/O;
  * a pair of network namespaces joined by a veth: short connections and bulk between them.

Sampled every --interval seconds: the tracer's RSS, open fds (/proc/PID/fd), the occupancy of its `socks`
and `tuples` maps and the lost-record count it reported. Map occupancy is read without the tracer's help
and without BPFObject: the tracer's map ids come from /proc/PID/fdinfo, each map is opened by id
(BPF_MAP_GET_FD_BY_ID), named with BPF_OBJ_GET_INFO_BY_FD and its keys are counted with
BPF_MAP_GET_NEXT_KEY.

At the end the workload stops, a quiet tail (--tail seconds, default 75: longer than TCP's 60 s TIME_WAIT)
shows whether map entries drain once every socket is gone, then the tracer gets SIGTERM (must exit 0), and
the BPF programs, maps and links it held must be gone from the kernel.

    python3 bench/soak.py                         # 10 minutes (SOAK_SECONDS / --seconds to change)
    python3 bench/soak.py --seconds 60 --tail 0 --json soak.json

Exit status: 0 all checks passed, 1 a check failed (growth, leftovers, exit status, invalid output), 2 setup.
"""
import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import sh  # noqa: E402
from support.procview import cpu_seconds, fdinfo_ids, kernel_snapshot, leftovers, wait_attached  # noqa: E402

THIS = os.path.abspath(__file__)


def _open_map(map_id):
    """The map with kernel id `map_id` (pytracer's Map: keys(), info(), close()), or None if it is gone."""
    from pytracer.errors import PytracerError
    from pytracer.maps import Map

    try:
        return Map.from_id(map_id)
    except PytracerError:
        return None


def tuples_per_netns(map_ids, limit=1 << 22):
    """netns inode -> number of `tuples` entries (the key starts with the netns inode, a u32)."""
    out = {}
    for mid in sorted(map_ids):
        m = _open_map(mid)
        if m is None:
            continue
        try:
            if m.name == "tuples":
                for i, k in enumerate(m.keys()):
                    if i >= limit:
                        break
                    ns = struct.unpack_from("<I", k)[0]
                    out[ns] = out.get(ns, 0) + 1
        finally:
            m.close()
    return out


def map_occupancy(map_ids, names=("socks", "tuples"), limit=1 << 22):
    """name -> (entries, max_entries) for the named maps among `map_ids`."""
    out = {}
    for mid in sorted(map_ids):
        m = _open_map(mid)
        if m is None:
            continue            # gone meanwhile
        try:
            if m.name in names:
                n = 0
                for n, _ in enumerate(m.keys(), 1):
                    if n >= limit:
                        break
                out[m.name] = (n, m.spec.max_entries)
        finally:
            m.close()
    return out


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# =====================================================================================================
# Workload roles (each runs as its own process: `soak.py --role ROLE ...`)
# =====================================================================================================

PR_SET_NAME = 15


def set_name(name):
    import ctypes

    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def recv_exactly(s, n):
    got = 0
    while got < n:
        chunk = s.recv(min(1 << 16, n - got))
        if not chunk:
            break
        got += len(chunk)
    return got


BLOCK = b"s" * (1 << 16)


def send_n(s, n):
    while n > 0:
        n -= s.send(BLOCK[:min(n, len(BLOCK))])


def handle(conn):
    """Server side of the tiny protocol: 9-byte request (mode, n); mode 'e' echoes n bytes, 'b' receives n
    bytes and sends n back."""
    try:
        hdr = b""
        while len(hdr) < 9:
            chunk = conn.recv(9 - len(hdr))
            if not chunk:
                return
            hdr += chunk
        mode, n = hdr[:1], struct.unpack("<Q", hdr[1:])[0]
        recv_exactly(conn, n)
        send_n(conn, n)
        conn.shutdown(socket.SHUT_WR)
        recv_exactly(conn, 1)
    except OSError:
        pass
    finally:
        conn.close()


def listen(family, host, port=0):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(512)
    return s


def role_server(args):
    """Threaded servers on the given addresses; prints 'PORT family host port' per listener."""
    set_name(args.name)
    listeners = []
    for spec in args.listen:
        fam, host = spec.split("/", 1)
        s = listen(socket.AF_INET6 if fam == "6" else socket.AF_INET, host)
        listeners.append(s)
        print(f"PORT {fam} {host} {s.getsockname()[1]}", flush=True)
    print("READY", flush=True)

    def serve(s):
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    for s in listeners:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    while True:                 # until SIGTERM (default action: exit)
        time.sleep(3600)


def role_forkserver(args):
    """inetd style: accept, fork, the child (renamed) does the I/O; single-threaded."""
    set_name(args.name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)       # children are reaped by the kernel
    s = listen(socket.AF_INET, "127.0.0.1")
    print(f"PORT 4 127.0.0.1 {s.getsockname()[1]}", flush=True)
    print("READY", flush=True)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    while True:
        try:
            c, _ = s.accept()
        except InterruptedError:
            continue
        pid = os.fork()
        if pid == 0:
            s.close()
            set_name("soakchild")
            handle(c)
            os._exit(0)
        c.close()


def role_canary(args):
    """A long-lived, mostly idle connection: one exchange at start, then another on SIGUSR1 (after the
    workload has churned through the tracer's maps). Its lines must still be reported then."""
    set_name(args.name)
    fam, host, port = args.target[0].split("/")
    c = socket.socket(socket.AF_INET6 if fam == "6" else socket.AF_INET, socket.SOCK_STREAM)
    c.connect((host, int(port)))
    print(f"CANARY {c.getsockname()[1]}", flush=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    c.sendall(b"c" * 1000)
    recv_exactly(c, 1000)
    print("READY", flush=True)
    signal.sigwait({signal.SIGUSR1})
    c.sendall(b"d" * args.bulk_bytes)
    got = recv_exactly(c, args.bulk_bytes)
    print(f"DONE {got}", flush=True)
    time.sleep(1)
    c.close()


def role_echo(args):
    """Echo server for the canary: echoes whatever arrives, until the peer closes."""
    set_name(args.name)
    s = listen(socket.AF_INET, "127.0.0.1")
    print(f"PORT 4 127.0.0.1 {s.getsockname()[1]}", flush=True)
    print("READY", flush=True)
    c, _ = s.accept()
    while True:
        data = c.recv(1 << 16)
        if not data:
            break
        c.sendall(data)
    c.close()


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n


def role_clients(args):
    """Client loops against the targets until SIGTERM or --seconds; prints JSON counters at the end."""
    set_name(args.name)
    stop = threading.Event()
    counter = Counter()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())

    def request(fam, host, port, n, kind):
        c = socket.socket(socket.AF_INET6 if fam == "6" else socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(20)
        try:
            c.connect((host, port))
            c.sendall(kind + struct.pack("<Q", n))
            send_n(c, n)
            recv_exactly(c, n)
            counter.add(f"{kind.decode()}{fam}")
            counter.add("bytes", 2 * n)
        except OSError as e:
            counter.add(f"error:{e.__class__.__name__}")
        finally:
            c.close()

    def closed_port():
        c = socket.socket()
        try:
            c.connect(("127.0.0.1", args.closed_port))
            counter.add("closed-port-unexpectedly-open")
        except ConnectionRefusedError:
            counter.add("reset")
        except OSError as e:
            counter.add(f"error:{e.__class__.__name__}")
        finally:
            c.close()

    def loop(fn, pause):
        while not stop.is_set():
            fn()
            stop.wait(pause)

    threads = []
    for t in args.target:
        # kind/fam/host/port/pause, e.g. e/4/127.0.0.1/4000/0.01
        kind, fam, host, port, pause = t.split("/")
        n = 300 if kind == "e" else args.bulk_bytes
        threads.append(threading.Thread(
            target=loop, args=(lambda k=kind, f=fam, h=host, p=int(port), n=n: request(f, h, p, n, k.encode()),
                               float(pause)), daemon=True))
    if args.closed_port:
        threads.append(threading.Thread(target=loop, args=(closed_port, 0.05), daemon=True))
    for th in threads:
        th.start()
    end = time.monotonic() + args.seconds if args.seconds else None
    while not stop.is_set() and (end is None or time.monotonic() < end):
        stop.wait(0.2)
    stop.set()
    for th in threads:
        th.join(timeout=25)
    print(json.dumps(counter.counts), flush=True)


# =====================================================================================================
# Orchestration
# =====================================================================================================

class NetnsPair:
    """Two network namespaces joined by a veth pair: A 169.254.88.1 / fd88::1, B .2 / ::2."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"soakA{tag}", f"soakB{tag}"
        self.tag = tag

    def __enter__(self):
        a, b, tag = self.a, self.b, self.tag
        try:
            for cmd in (f"ip netns add {a}", f"ip netns add {b}",
                        f"ip link add sa{tag} netns {a} type veth peer name sb{tag} netns {b}",
                        f"ip -n {a} addr add 169.254.88.1/24 dev sa{tag}",
                        f"ip -n {b} addr add 169.254.88.2/24 dev sb{tag}",
                        f"ip -n {a} addr add fd88::1/64 dev sa{tag} nodad",
                        f"ip -n {b} addr add fd88::2/64 dev sb{tag} nodad",
                        f"ip -n {a} link set sa{tag} up", f"ip -n {b} link set sb{tag} up",
                        f"ip -n {a} link set lo up", f"ip -n {b} link set lo up"):
                sh(*cmd.split())
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        sh("ip", "netns", "del", self.a, check=False)
        sh("ip", "netns", "del", self.b, check=False)

    def inodes(self):
        return {os.stat(f"/run/netns/{n}").st_ino & 0xFFFFFFFF for n in (self.a, self.b)}


class Proc:
    """A workload process that announces PORT lines then READY."""

    def __init__(self, argv, netns=None):
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True)
        self.ports = []

    def ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.p.args} exited: {self.p.stderr.read()[-2000:]}")
            parts = line.split()
            if parts[0] == "PORT":
                self.ports.append((parts[1], parts[2], int(parts[3])))
            elif parts[0] == "CANARY":
                self.ports.append(("canary", "", int(parts[1])))
            elif parts[0] == "READY":
                return self
        raise RuntimeError(f"{self.p.args} did not get ready")

    def stop(self, timeout=30):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            out, err = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            out, err = self.p.communicate()
        return out, err


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class OutputReader(threading.Thread):
    """Drains the tracer's stdout: counts lines and events, checks every line is JSON, sums lost records."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.lines = 0
        self.invalid = []
        self.lost = 0
        self.events = {}
        self.comms = set()
        self.watch_ports = set()
        self.watched = []

    def run(self):
        for raw in self.stream:
            self.lines += 1
            try:
                d = json.loads(raw)
            except ValueError:
                if len(self.invalid) < 20:
                    self.invalid.append(raw[:200])
                continue
            ev = d.get("event")
            self.events[ev] = self.events.get(ev, 0) + 1
            if ev == "lost":
                self.lost += d.get("count", 0)
            elif len(self.comms) < 1000:
                self.comms.add(d.get("comm"))
            if self.watch_ports and (d.get("lport") in self.watch_ports or d.get("rport") in self.watch_ports):
                if len(self.watched) < 100000:
                    self.watched.append(d)


def workload_argv(role, name, *extra):
    return [sys.executable, THIS, "--role", role, "--name", name, *extra]


def start_servers(netns):
    """The workload's servers (no traffic yet). Returns (servers, ports): ports are what the tracer is told
    to follow (-P), so that other traffic on the machine does not mix into the soak."""
    servers = [Proc(workload_argv("server", "soaksrv", "--listen", "4/127.0.0.1", "--listen", "6/::1")).ready(),
               Proc(workload_argv("forkserver", "soakinetd")).ready(),
               Proc(workload_argv("echo", "soakecho")).ready()]
    if netns is not None:
        servers.append(Proc(workload_argv("server", "soaknsrv", "--listen", "4/169.254.88.1",
                                          "--listen", "6/fd88::1"), netns=netns.a).ready())
    ports = {"closed": closed_port()}
    ports["v4"], ports["v6"] = servers[0].ports[0][2], servers[0].ports[1][2]
    ports["fork"] = servers[1].ports[0][2]
    ports["echo"] = servers[2].ports[0][2]
    if netns is not None:
        ports["ns4"], ports["ns6"] = servers[3].ports[0][2], servers[3].ports[1][2]
    return servers, ports


def start_clients(netns, ports, bulk_bytes):
    p = ports
    targets = [f"e/4/127.0.0.1/{p['v4']}/0.01", f"e/6/::1/{p['v6']}/0.02", f"b/4/127.0.0.1/{p['v4']}/0.5",
               f"b/6/::1/{p['v6']}/0.7", f"e/4/127.0.0.1/{p['fork']}/0.05"]
    clients = [Proc(workload_argv("clients", "soakcli", "--closed-port", str(p["closed"]),
                                  "--bulk-bytes", str(bulk_bytes),
                                  *sum((["--target", t] for t in targets), [])))]
    if netns is not None:
        clients.append(Proc(workload_argv("clients", "soaknscli", "--bulk-bytes", str(bulk_bytes),
                                          "--target", f"e/4/169.254.88.1/{p['ns4']}/0.02",
                                          "--target", f"e/6/fd88::1/{p['ns6']}/0.03",
                                          "--target", f"b/4/169.254.88.1/{p['ns4']}/1.0"), netns=netns.b))
    return clients


CANARY_BYTES = 200_000


def check_canary(canary, port, reader):
    """Wake the idle canary connection; both ends must see all its bytes again, with the right owners."""
    reader.watched.clear()
    os.kill(canary.p.pid, signal.SIGUSR1)
    line = canary.p.stdout.readline().split()
    time.sleep(2.0)                       # let the tracer print
    lines = list(reader.watched)
    cli = [d for d in lines if d.get("lport") == port]
    srv = [d for d in lines if d.get("rport") == port]
    out = {
        "port": port, "exchanged": int(line[1]) if line[:1] == ["DONE"] else None,
        "client_sent": sum(d["payload"] for d in cli if d["event"] == "send"),
        "client_received": sum(d["payload"] for d in cli if d["event"] == "recv"),
        "server_received": sum(d["payload"] for d in srv if d["event"] == "recv"),
        "server_sent": sum(d["payload"] for d in srv if d["event"] == "send"),
        "client_comms": sorted({d["comm"] for d in cli}), "server_comms": sorted({d["comm"] for d in srv}),
    }
    out["ok"] = (out["exchanged"] == CANARY_BYTES and all(out[k] == CANARY_BYTES for k in (
        "client_sent", "client_received", "server_received", "server_sent"))
        and out["client_comms"] == ["soakcanary"] and out["server_comms"] == ["soakecho"])
    return out


def tracer_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


F_SETPIPE_SZ = 1031


def start_tracer(extra=()):
    p = subprocess.Popen([sys.executable, "-m", "pytracer", "-j", *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=tracer_env(), bufsize=1 << 16)
    # A deep pipe: the sampler briefly holding the GIL must not stall the tracer's writes (which would
    # fill its ring buffer and show up as losses that are ours, not the tracer's).
    import fcntl

    for size in (16 << 20, 4 << 20, 1 << 20):
        try:
            fcntl.fcntl(p.stdout.fileno(), F_SETPIPE_SZ, size)
            break
        except OSError:
            continue
    return p


def growth(samples, key, warm_index):
    vals = [s[key] for s in samples[warm_index:] if s.get(key) is not None]
    if len(vals) < 2:
        return None, None
    n = len(vals)
    ts = [s["t"] for s in samples[warm_index:] if s.get(key) is not None]
    mt, mv = sum(ts) / n, sum(vals) / n
    var = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (v - mv) for t, v in zip(ts, vals)) / var if var else 0.0
    return vals[-1] - vals[0], slope * 60          # total, per minute


def soak(seconds=600, interval=10.0, tail=None, warmup=None, bulk_bytes=2 << 20, use_netns=True,
         rss_limit_kb=32 * 1024, fd_limit=2, progress=print, only_ours=True):
    """Run the soak; returns a report dict (report["ok"] says whether every check passed)."""
    if tail is None:
        tail = 75 if seconds >= 300 else 0
    work_seconds = max(5.0, seconds - tail)
    if warmup is None:
        warmup = min(60.0, max(5.0, work_seconds * 0.15))
    before = kernel_snapshot()
    report = {"seconds": seconds, "workload_seconds": work_seconds, "tail_seconds": tail, "interval": interval,
              "samples": [], "checks": {}}
    netns = NetnsPair() if use_netns else None
    tracer = servers = clients = reader = canary = None
    own = {"prog": set(), "map": set(), "link": set()}
    try:
        if netns is not None:
            netns.__enter__()
        servers, ports = start_servers(netns)
        report["ports"] = ports
        tracer = start_tracer(sum((["-P", str(v)] for v in ports.values()), []) if only_ours else [])
        reader = OutputReader(tracer.stdout)
        reader.start()
        own = wait_attached(tracer)
        report["tracer_ids"] = {k: sorted(v) for k, v in own.items()}
        canary = Proc(workload_argv("canary", "soakcanary", "--bulk-bytes", str(CANARY_BYTES),
                                    "--target", f"4/127.0.0.1/{ports['echo']}")).ready()
        canary_port = canary.ports[0][2]
        reader.watch_ports.add(canary_port)
        servers.append(canary)
        clients = start_clients(netns, ports, bulk_bytes)
        t0 = time.monotonic()
        next_sample = 0.0
        phase = "work"
        while True:
            t = time.monotonic() - t0
            if phase == "work" and t >= work_seconds:
                phase = "tail"
                for c in clients:
                    out, err = c.stop()
                    try:
                        counts = json.loads(out.strip().splitlines()[-1])
                    except (ValueError, IndexError):
                        counts = {"error": err[-500:]}
                    report.setdefault("workload", []).append(counts)
                # the churn is over: now the idle connection speaks again
                lost_before = reader.lost
                report["canary"] = check_canary(canary, canary_port, reader)
                report["canary"]["records_lost_meanwhile"] = reader.lost - lost_before
                for s in servers:
                    s.stop()
                clients = servers = None
            if t >= work_seconds + tail:
                break
            if t >= next_sample:
                if tracer.poll() is not None:
                    raise RuntimeError(f"the tracer died (status {tracer.returncode}): {tracer.stderr.read()[-2000:]}")
                occ = map_occupancy(fdinfo_ids(tracer.pid)["map"])
                sample = {"t": round(t, 1), "phase": phase, "rss_kb": rss_kb(tracer.pid),
                          "cpu_s": cpu_seconds(tracer.pid),
                          "fds": fd_count(tracer.pid), "lines": reader.lines, "lost": reader.lost,
                          "socks": occ.get("socks", (None, None))[0], "tuples": occ.get("tuples", (None, None))[0]}
                report["samples"].append(sample)
                report["map_max_entries"] = {k: v[1] for k, v in occ.items()}
                if progress:
                    progress(f"t={sample['t']:>6.1f}s {phase:4} rss={sample['rss_kb']} kB fds={sample['fds']} "
                             f"cpu={sample['cpu_s']}s "
                             f"socks={sample['socks']} tuples={sample['tuples']} lines={sample['lines']} "
                             f"lost={sample['lost']}")
                next_sample += interval
            time.sleep(min(0.2, max(0.0, next_sample - (time.monotonic() - t0))))
        if netns is not None:
            # entries the tracer keeps for the namespaces' connections, all of which are over by now
            per_ns = tuples_per_netns(fdinfo_ids(tracer.pid)["map"])
            report["netns_tuples_at_end"] = sum(per_ns.get(i, 0) for i in netns.inodes())
            report["netns_connections_in_time_wait_at_end"] = sum(
                len(sh("ip", "netns", "exec", n, "ss", "-tanH", "state", "time-wait", check=False)
                    .stdout.splitlines()) for n in (netns.a, netns.b))
        # stop the tracer the way a service manager does
        tracer.send_signal(signal.SIGTERM)
        try:
            status = tracer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            tracer.kill()
            status = tracer.wait()
            report["checks"]["sigterm_exit_within_30s"] = False
        reader.join(timeout=30)
        stderr = tracer.stderr.read()
        report["tracer_exit_status"] = status
        report["tracer_stderr_tail"] = stderr[-2000:]
    finally:
        for group in (clients, servers):
            for p in group or ():
                p.stop()
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        if netns is not None:
            netns.__exit__()
    left = leftovers(own, before)
    report["left_in_kernel"] = left
    report["lines"] = reader.lines
    report["events"] = reader.events
    report["lost"] = reader.lost
    report["invalid_json_lines"] = reader.invalid
    samples = report["samples"]
    work = [s for s in samples if s["phase"] == "work"]
    warm_index = next((i for i, s in enumerate(work) if s["t"] >= warmup), max(0, len(work) - 2))
    report["warmup_seconds"] = warmup
    for key in ("rss_kb", "fds", "socks", "tuples"):
        total, per_min = growth(work, key, warm_index)
        report[f"{key}_growth"] = total
        report[f"{key}_growth_per_min"] = None if per_min is None else round(per_min, 2)
    if tail and samples:
        tail_s = [s for s in samples if s["phase"] == "tail"]
        if tail_s:
            report["socks_after_tail"] = tail_s[-1]["socks"]
            report["tuples_after_tail"] = tail_s[-1]["tuples"]
            report["socks_peak"] = max((s["socks"] or 0) for s in samples)
    checks = report["checks"]
    checks["tracer_exit_0_on_sigterm"] = report.get("tracer_exit_status") == 0
    checks["no_traceback"] = "Traceback" not in report.get("tracer_stderr_tail", "")
    checks["all_output_is_json"] = not reader.invalid
    checks["nothing_left_in_kernel"] = not left
    checks["rss_growth_bounded"] = report["rss_kb_growth"] is not None and report["rss_kb_growth"] < rss_limit_kb
    checks["fds_flat"] = report["fds_growth"] is not None and report["fds_growth"] <= fd_limit
    if tail >= 65 and "netns_tuples_at_end" in report:
        # every namespace connection ended more than TCP's 60 s TIME_WAIT ago: nothing should be kept
        checks["no_tuples_kept_after_time_wait"] = report["netns_tuples_at_end"] <= \
            report["netns_connections_in_time_wait_at_end"]
    checks["idle_connection_still_traced"] = bool(report.get("canary", {}).get("ok"))
    checks["saw_traffic"] = reader.lines > 0 and all(report["events"].get(e, 0) for e in ("connect", "accept",
                                                                                          "close", "reset"))
    report["ok"] = all(checks.values())
    return report


def timewait_demo(connections=300, wait=70.0, progress=print):
    """Reproducer: `connections` ordinary connections inside a fresh namespace (so nothing else on the machine
    mixes in), then `wait` seconds (> TCP's 60 s TIME_WAIT); count the tracer's `tuples` entries for that
    namespace. Every connection is gone by then; a non-zero count is entries that are never deleted."""
    ns = NetnsPair()
    with ns:
        inode = os.stat(f"/run/netns/{ns.a}").st_ino & 0xFFFFFFFF
        tracer = start_tracer(["-P", "1"])
        try:
            wait_attached(tracer)
            script = ("import socket\n"
                      "s = socket.create_server(('127.0.0.1', 0)); p = s.getsockname()[1]\n"
                      f"for i in range({connections}):\n"
                      "    c = socket.create_connection(('127.0.0.1', p)); a, _ = s.accept()\n"
                      "    c.sendall(b'x' * 100); a.recv(100); c.close(); a.close()\n")
            sh("ip", "netns", "exec", ns.a, sys.executable, "-c", script)
            samples = []
            t0 = time.monotonic()
            while True:
                t = time.monotonic() - t0
                n = tuples_per_netns(fdinfo_ids(tracer.pid)["map"]).get(inode, 0)
                tw = len(sh("ip", "netns", "exec", ns.a, "ss", "-tanH", "state", "time-wait",
                            check=False).stdout.splitlines())
                samples.append((round(t), n, tw))
                if progress:
                    progress(f"t={t:5.1f}s tuples for the namespace: {n}; sockets in TIME_WAIT there: {tw}")
                if t >= wait:
                    break
                time.sleep(10)
        finally:
            tracer.terminate()
            tracer.wait()
    return samples


CHURN = r"""
import os, socket, sys
n, procs = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_server(("0.0.0.0", 0), backlog=4096)
port = s.getsockname()[1]
kids = []
for k in range(procs):
    pid = os.fork()
    if pid == 0:
        if k == 0:                       # the acceptor
            while True:
                a, _ = s.accept()
                a.close()
        ok = failed = 0
        for i in range(n // (procs - 1)):
            # many destination addresses (all of 127/8 is loopback): no ephemeral-port exhaustion
            try:
                c = socket.create_connection(("127.0.%d.%d" % (k, 1 + i % 200), port))
                c.close()                # active close: TIME_WAIT on this side
                ok += 1
            except OSError:
                failed += 1
        print(ok, failed, flush=True)
        os._exit(0)
    kids.append(pid)
for pid in kids[1:]:
    os.waitpid(pid, 0)
os.kill(kids[0], 9)
"""


def eviction_demo(churn=90_000, procs=4, progress=print):
    """Reproducer: an idle connection inside a fresh namespace, then `churn` short connections (whose tuples
    outlive TIME_WAIT in the LRU map); then the idle connection exchanges data again. Returns what the tracer
    reported for that exchange."""
    ns = NetnsPair()
    with ns:
        echo = Proc(workload_argv("echo", "soakecho"), netns=ns.a).ready()
        port = echo.ports[0][2]
        tracer = start_tracer(["-P", str(port)])
        reader = OutputReader(tracer.stdout)
        reader.start()
        try:
            wait_attached(tracer)
            canary = Proc(workload_argv("canary", "soakcanary", "--bulk-bytes", str(CANARY_BYTES),
                                        "--target", f"4/127.0.0.1/{port}"), netns=ns.a).ready()
            cport = canary.ports[0][2]
            reader.watch_ports.add(cport)
            inode = os.stat(f"/run/netns/{ns.a}").st_ino & 0xFFFFFFFF
            before = tuples_per_netns(fdinfo_ids(tracer.pid)["map"]).get(inode, 0)
            t0 = time.monotonic()
            r = sh("ip", "netns", "exec", ns.a, sys.executable, "-c", CHURN, str(churn), str(procs))
            made = [tuple(map(int, ln.split())) for ln in r.stdout.split("\n") if ln.strip()]
            took = time.monotonic() - t0
            occ = map_occupancy(fdinfo_ids(tracer.pid)["map"])
            if progress:
                progress(f"{sum(m[0] for m in made)} short connections ({sum(m[1] for m in made)} failed) in "
                         f"{took:.0f} s; tuples {occ.get('tuples')}, "
                         f"socks {occ.get('socks')} (namespace tuples before: {before})")
            result = check_canary(canary, cport, reader)
            result["tuples_after_churn"] = occ.get("tuples")
            result["churn_connections"] = sum(m[0] for m in made)
            result["records_lost"] = reader.lost
            canary.stop()
        finally:
            echo.stop()
            tracer.terminate()
            tracer.wait()
    return result


def summarize(report):
    s = report["samples"]
    out = [f"soak: {report['workload_seconds']:.0f} s workload + {report['tail_seconds']} s quiet tail, "
           f"{len(s)} samples, {report['lines']:,} output lines, {report['lost']:,} records lost",
           f"  RSS  {s[0]['rss_kb'] if s else '?'} kB at start -> {s[-1]['rss_kb'] if s else '?'} kB at end; "
           f"growth after warm-up {report['rss_kb_growth']} kB ({report['rss_kb_growth_per_min']} kB/min)",
           f"  fds  {s[0]['fds'] if s else '?'} -> {s[-1]['fds'] if s else '?'}; growth after warm-up "
           f"{report['fds_growth']}",
           f"  socks {[x['socks'] for x in s]}",
           f"  tuples {[x['tuples'] for x in s]}",
           f"  map max_entries {report.get('map_max_entries')}"]
    if "socks_after_tail" in report:
        out.append(f"  after the {report['tail_seconds']} s quiet tail: socks {report['socks_after_tail']}, "
                   f"tuples {report['tuples_after_tail']} (peak socks {report['socks_peak']})")
    if "netns_tuples_at_end" in report:
        out.append(f"  tuples entries for the namespace pair at the end: {report['netns_tuples_at_end']} "
                   f"(connections still in TIME_WAIT there: {report['netns_connections_in_time_wait_at_end']})")
    out.append(f"  events {report['events']}")
    out.append(f"  idle canary connection after the workload: {report.get('canary')}")
    out.append(f"  workload {report.get('workload')}")
    out.append(f"  tracer exit status {report.get('tracer_exit_status')}; left in kernel: "
               f"{report['left_in_kernel'] or 'nothing'}")
    for k, v in report["checks"].items():
        out.append(f"  [{'ok' if v else 'FAIL'}] {k}")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    p.add_argument("--interval", type=float, default=None, help="seconds between samples")
    p.add_argument("--tail", type=float, default=None, help="quiet seconds after the workload (default 75 "
                   "for runs of 5 minutes or more, else 0)")
    p.add_argument("--bulk-bytes", type=int, default=2 << 20)
    p.add_argument("--no-netns", action="store_true")
    p.add_argument("--all-traffic", action="store_true",
                   help="trace everything on the machine (default: only the workload's ports, -P)")
    p.add_argument("--json", metavar="FILE", help="write the full report here")
    p.add_argument("--eviction-demo", type=int, metavar="N", default=0,
                   help="only show whether an idle connection is still traced after N short connections")
    p.add_argument("--timewait-demo", action="store_true",
                   help="only demonstrate what happens to `tuples` entries after TIME_WAIT (~80 s)")
    # workload roles (internal)
    p.add_argument("--role", choices=("server", "forkserver", "clients", "canary", "echo"),
                   help=argparse.SUPPRESS)
    p.add_argument("--name", default="soak", help=argparse.SUPPRESS)
    p.add_argument("--listen", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--target", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--closed-port", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.role:
        {"server": role_server, "forkserver": role_forkserver, "clients": role_clients, "canary": role_canary,
         "echo": role_echo}[a.role](a)
        return 0
    if os.geteuid() != 0:
        print("soak: needs root (it runs the tracer and creates network namespaces)", file=sys.stderr)
        return 2
    if a.eviction_demo:
        r = eviction_demo(a.eviction_demo)
        print(json.dumps(r))
        return 0 if r["ok"] else 1
    if a.timewait_demo:
        samples = timewait_demo()
        left = samples[-1][1]
        print(f"after {samples[-1][0]} s: {left} tuples entries kept for connections that no longer exist"
              if left > samples[-1][2] else "no entries kept after TIME_WAIT")
        return 1 if left > samples[-1][2] else 0
    interval = a.interval or max(1.0, min(10.0, a.seconds / 60))
    try:
        report = soak(a.seconds, interval, a.tail, bulk_bytes=a.bulk_bytes, use_netns=not a.no_netns,
                      only_ours=not a.all_traffic)
    except RuntimeError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 2
    print(summarize(report))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
