"""Shared machinery for the pytracer benchmarks: helpers (C, or Python fallbacks), network namespaces,
tracer processes (pytracer and its peers) with readiness, CPU, peak RSS and loss accounting, statistics.

Every bench script prints one JSON object on stdout (its results) and its progress on stderr.
"""
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.join(HERE, "build")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from support.procview import cpu_seconds  # noqa: E402,F401  (the one definition, shared with tests/)

PY = os.environ.get("BENCH_PYTHON", sys.executable)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
BPFTRACE_SCRIPT = os.path.join(HERE, "peer_tcpstates.bt")
PORT = 47123            # the load generator's server port (our traffic only)
SINK_PORT = 47124
IPERF_PORT = 47125


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def emit(obj):
    """A bench script's result: one JSON document on stdout."""
    json.dump(obj, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def need_root():
    if os.geteuid() != 0:
        sys.exit("bench: needs root (BPF, network namespaces, drop_caches)")


# ---- helpers: the C load generator, or its Python stand-in --------------------------------------------

def compiler():
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang-16", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def loadgen_cmd():
    """argv prefix of the load generator: bench/build/loadgen (compiled here, if a C compiler exists)
    or bench/loadgen.py (same command line, much slower)."""
    src = os.path.join(HERE, "loadgen.c")
    exe = os.path.join(BUILD, "loadgen")
    if os.environ.get("BENCH_PY_LOADGEN") != "1":
        if os.path.exists(exe) and os.path.getmtime(exe) >= os.path.getmtime(src):
            return [exe]
        cc = compiler()
        if cc:
            os.makedirs(BUILD, exist_ok=True)
            tmp = exe + ".tmp%d" % os.getpid()
            r = subprocess.run([cc, "-O2", "-Wall", "-pthread", "-o", tmp, src], capture_output=True, text=True)
            if r.returncode == 0:
                os.replace(tmp, exe)
                return [exe]
            log(f"compiling loadgen.c with {cc} failed, using loadgen.py:\n{r.stderr}")
    return [PY, os.path.join(HERE, "loadgen.py")]


def loadgen_kind():
    return "C" if len(loadgen_cmd()) == 1 else "Python"


def parse_done(text):
    m = re.search(r"done (\d+) elapsed_s ([\d.]+) errors (\d+)", text)
    if not m:
        raise RuntimeError(f"load generator printed no result: {text!r}")
    return {"count": int(m.group(1)), "seconds": float(m.group(2)), "errors": int(m.group(3))}


# ---- network namespaces ------------------------------------------------------------------------------

def sh(*cmd, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


class Namespaces:
    """`lo`: a namespace with only loopback; `a`/`b`: two namespaces joined by a veth pair
    (169.254.88.1 in a, .2 in b). Traffic stays inside namespaces we made; removed on exit."""

    def __init__(self, veth=False):
        tag = "%d" % os.getpid()
        self.lo = f"ptbench-lo-{tag}"
        self.a = f"ptbench-a-{tag}" if veth else None
        self.b = f"ptbench-b-{tag}" if veth else None
        self.addr_a, self.addr_b = "169.254.88.1", "169.254.88.2"

    def __enter__(self):
        try:
            for ns in filter(None, (self.lo, self.a, self.b)):
                sh("ip", "netns", "add", ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65000")
                sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1")
            if self.a:
                tag = "%d" % (os.getpid() % 100000)
                sh("ip", "link", "add", f"pba{tag}", "netns", self.a, "type", "veth", "peer", "name", f"pbb{tag}",
                   "netns", self.b)
                sh("ip", "-n", self.a, "addr", "add", self.addr_a + "/24", "dev", f"pba{tag}")
                sh("ip", "-n", self.b, "addr", "add", self.addr_b + "/24", "dev", f"pbb{tag}")
                sh("ip", "-n", self.a, "link", "set", f"pba{tag}", "up")
                sh("ip", "-n", self.b, "link", "set", f"pbb{tag}", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for ns in filter(None, (self.lo, self.a, self.b)):
            sh("ip", "netns", "del", ns, check=False)

    @staticmethod
    def prefix(ns):
        return ["ip", "netns", "exec", ns] if ns else []

    @staticmethod
    def tcp_segments(ns):
        """InSegs + OutSegs of a namespace (kernel counters, only our traffic there)."""
        r = sh("ip", "netns", "exec", ns, "cat", "/proc/net/snmp")
        rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("Tcp:")]
        d = dict(zip(rows[0][1:], map(int, rows[1][1:])))
        return d["InSegs"] + d["OutSegs"]


class Server:
    """A load-generator server (short-connection `server` or `sink`) in a namespace."""

    def __init__(self, ns, mode="server", port=PORT, resp=64, cpus=None):
        args = ["server", str(port), str(resp)] if mode == "server" else ["sink", str(port)]
        self.p = subprocess.Popen(Namespaces.prefix(ns) + taskset(cpus) + loadgen_cmd() + args, stdout=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True)
        line = self.p.stdout.readline()
        if "READY" not in line:
            self.close()
            raise RuntimeError(f"load generator server did not start: {line!r}")

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def taskset(cpus):
    """argv prefix pinning a command to `cpus` (None: no pinning)."""
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus is not None else []


def short_conns(ns, seconds, rate=0, conc=8, host="127.0.0.1", port=PORT, req=64, resp=64, cpus=None):
    """Run the short-connection client; returns {"count", "seconds", "errors", "rate"}."""
    r = subprocess.run(Namespaces.prefix(ns) + taskset(cpus) + loadgen_cmd() +
                       ["client", host, str(port), str(conc), str(seconds), str(rate), str(req), str(resp)],
                       capture_output=True, text=True, timeout=seconds + 60)
    d = parse_done(r.stdout)
    d["rate"] = d["count"] / d["seconds"]
    return d


def iperf3(ns_client, host, seconds, port=IPERF_PORT):
    """Bulk throughput in Gbit/s of one iperf3 TCP stream (server must run)."""
    r = subprocess.run(Namespaces.prefix(ns_client) + ["iperf3", "-c", host, "-p", str(port), "-t",
                                                       str(max(1, int(seconds))), "-J"],
                       capture_output=True, text=True, timeout=seconds + 30)
    d = json.loads(r.stdout)
    if "error" in d:
        raise RuntimeError("iperf3: " + d["error"])
    return d["end"]["sum_received"]["bits_per_second"] / 1e9


class IperfServer:
    def __init__(self, ns, port=IPERF_PORT):
        self.p = subprocess.Popen(Namespaces.prefix(ns) + ["iperf3", "-s", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def close(self):
        self.p.kill()
        self.p.wait()


# ---- open sockets: a process holding connected loopback pairs -------------------------------------------

# The helper that holds the sockets: a listener and `pairs` connected pairs, accepted as they connect (the
# backlog stays short), then it waits for stdin to close. It then closes them with SO_LINGER 0 (a reset):
# no TIME_WAIT sockets are left behind to weigh on the next measurement.
HOLDER = r"""
import os, resource, socket, struct, sys
pairs = int(sys.argv[1])
need = 2 * pairs + 64
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < need:
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen(1024)
port = lst.getsockname()[1]
held = []
for _ in range(pairs):
    c = socket.create_connection(("127.0.0.1", port))
    s, _ = lst.accept()
    held += (c, s)
print("READY", os.getpid(), port, len(held) + 1, flush=True)
sys.stdin.read()
for s in held:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
"""


class SocketHolder:
    """One process holding `pairs` connected TCP pairs on 127.0.0.1 (2 sockets each, plus its listener) in
    network namespace `ns` (None: the host's). `.pid`, `.sockets` (sockets it holds, listener included);
    leaving the context closes them (resets, no TIME_WAIT) and waits for it."""

    def __init__(self, pairs, ns=None):
        self.pairs, self.ns = pairs, ns
        self.p = None

    def __enter__(self):
        self.p = subprocess.Popen(Namespaces.prefix(self.ns) + [PY, "-c", HOLDER, str(self.pairs)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().split()
        if not line or line[0] != "READY":
            self.__exit__()
            raise RuntimeError(f"the socket holder did not start: {line!r}")
        self.pid, self.port, self.sockets = int(line[1]), int(line[2]), int(line[3])
        return self

    def __exit__(self, *exc):
        if self.p is not None:
            try:
                self.p.stdin.close()
                self.p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
            self.p.stdout.close()
            self.p = None


def open_files():
    """Open file descriptors of every process on the machine (from /proc)."""
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


# ---- tracers -----------------------------------------------------------------------------------------

LIBBPF_TOOLS = {"tcpstates": "/usr/sbin/tcpstates", "tcplife": "/usr/sbin/tcplife"}


def pytracer_env(cache_dir=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if cache_dir:
        env["PYTRACER_CACHE_DIR"] = cache_dir
    return env


class Tool:
    """How to run one tracer: argv, its header lines, how it reports losses."""

    def __init__(self, name, argv, header_lines, env=None, kind="peer", ready_text=None):
        self.name, self.argv, self.header_lines, self.env, self.kind = name, argv, header_lines, env, kind
        self.cpus = None    # pin the tracer to these CPUs
        # ready once stderr says this (a tool with no BPF link to wait for: tcpdump); else blocked_waiting
        self.ready_text = ready_text

    def available(self):
        exe = self.argv[0]
        return os.path.exists(exe) if os.path.isabs(exe) else shutil.which(exe) is not None


def tools(cache_dir=None, port=None):
    """The tracers compared. `port` narrows pytracer to our traffic (-P) for counting runs."""
    pyargs = [PY, "-m", "pytracer"] + (["-P", str(port)] if port else [])
    env = pytracer_env(cache_dir)
    return {
        "pytracer": Tool("pytracer", pyargs, 1, env, "pytracer"),
        "pytracer --no-data": Tool("pytracer --no-data", pyargs + ["--no-data"], 1, env, "pytracer"),
        "pytracer -j": Tool("pytracer -j", pyargs + ["-j"], 0, env, "pytracer"),
        # the packets as pcapng (stdout goes to a file on tmpfs), next to tcpdump writing the same packets
        # ("lines" then counts newline bytes in the capture: not comparable)
        "pytracer -w": Tool("pytracer -w", pyargs + ["-w", "-"], 0, env, "pytracer"),
        "tcpdump -w": Tool("tcpdump -w", ["tcpdump", "-i", "any", "-n", "-U", "-s", "262144", "-w", "-",
                                          f"tcp port {port}" if port else "tcp"], 0, ready_text=b"listening on"),
        # pytracer's tools next to their libbpf-tools counterparts (same workload, CPU per event)
        # (unfiltered, as libbpf-tools' tcplife: a row for each end of every connection)
        "pytracer tcplife": Tool("pytracer tcplife", [PY, "-m", "pytracer", "tcplife"], 1, env, "pytracer"),
        "pytracer tcpstates": Tool("pytracer tcpstates", [PY, "-m", "pytracer", "tcpstates"] +
                                   (["-P", str(port)] if port else []), 1, env, "pytracer"),
        "tcplife": Tool("tcplife", [LIBBPF_TOOLS["tcplife"]], 1),
        "tcpstates": Tool("tcpstates", [LIBBPF_TOOLS["tcpstates"]], 1),
        "bpftrace": Tool("bpftrace", ["bpftrace", BPFTRACE_SCRIPT], 2),
    }


LOSS_PATTERNS = [
    re.compile(r"pytracer: (\d+) events lost"),                 # pytracer classic (stderr)
    re.compile(r'"event": "lost", "count": (\d+)'),             # pytracer JSON (stdout)
    re.compile(r"lost (\d+) events on CPU"),                    # libbpf-tools perf buffers (stderr)
    re.compile(r"Lost (\d+) events"),                           # bpftrace
]

WAIT_SYSCALLS = {7, 23, 232, 270, 271, 281, 441}   # poll select epoll_wait pselect6 ppoll epoll_pwait(2)


def blocked_waiting(pid):
    """True if the process's main thread sits in poll/epoll and it holds an attached BPF link or perf
    event: it has attached and is waiting for events (works whatever its stdout buffering)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            nr = f.read().split()[0]
        if not nr.isdigit() or int(nr) not in WAIT_SYSCALLS:
            return False
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if t in ("anon_inode:bpf_link", "anon_inode:[perf_event]"):
                return True
    except (OSError, IndexError):
        pass
    return False


def default_signals(cpus=None):
    """In the child: Ctrl-C must work even if we were started with SIGINT ignored (background jobs);
    optionally pin it to `cpus`."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if cpus is not None:
        os.sched_setaffinity(0, set(cpus))


class Running:
    """A tracer started with stdout and stderr to files; `stop()` returns its accounting."""

    def __init__(self, tool, workdir, ready_timeout=60.0):
        self.tool = tool
        self.out_path = os.path.join(workdir, "out.txt")
        self.err_path = os.path.join(workdir, "err.txt")
        self.t0 = time.monotonic()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.p = subprocess.Popen(tool.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                      env=tool.env, start_new_session=True,
                                      preexec_fn=lambda: default_signals(tool.cpus))
        end = self.t0 + ready_timeout
        while not self._ready():
            if self.p.poll() is not None:
                raise ToolFailed(tool.name, self.p.returncode, self._tail(self.err_path))
            if time.monotonic() > end:
                self.stop()
                raise ToolFailed(tool.name, None, "not ready after %.0fs: %s" % (ready_timeout,
                                                                                  self._tail(self.err_path)))
            time.sleep(0.005)
        self.ready_s = time.monotonic() - self.t0
        time.sleep(0.05)
        self.cpu0 = cpu_seconds(self.p.pid)

    def _ready(self):
        if self.tool.ready_text is None:
            return blocked_waiting(self.p.pid)
        with open(self.err_path, "rb") as f:
            return self.tool.ready_text in f.read()

    @staticmethod
    def _tail(path, n=600):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace").strip()[-n:]
        except OSError:
            return ""

    def cpu_since_ready(self):
        return cpu_seconds(self.p.pid) - self.cpu0

    def stop(self, settle=0.3, port=None):
        """SIGINT (as Ctrl-C), wait; returns cpu_s (since ready), maxrss_kb, rc, lines, lost (reported)."""
        time.sleep(settle)   # let the tracer drain what the workload produced
        cpu = None
        try:
            cpu = self.cpu_since_ready()
        except (OSError, AttributeError):
            pass
        ru, rc, forced, t_stop = None, None, None, time.monotonic()
        if self.p.returncode is None:
            # Ctrl-C; if still there after 10 s SIGTERM, after 15 s SIGKILL (and say so)
            steps = [(0.0, signal.SIGINT), (10.0, signal.SIGTERM), (15.0, signal.SIGKILL)]
            while True:
                el = time.monotonic() - t_stop
                while steps and el >= steps[0][0]:
                    _, sig = steps.pop(0)
                    if sig != signal.SIGINT:
                        forced = signal.Signals(sig).name
                    try:
                        (os.killpg if sig == signal.SIGKILL else os.kill)(self.p.pid, sig)
                    except ProcessLookupError:
                        pass
                pid, status, ru = os.wait4(self.p.pid, os.WNOHANG)
                if pid:
                    rc = self.p.returncode = os.waitstatus_to_exitcode(status)
                    break
                time.sleep(0.01)
        return {"cpu_s": cpu, "maxrss_kb": ru.ru_maxrss if ru else None, "rc": rc,
                "exit_s": time.monotonic() - t_stop, "forced": forced, **self.output(port)}

    def output(self, port=None):
        lines = port_lines = json_lost = json_lost_lines = 0
        pat = re.compile(rb"\b%d\b" % port) if port else None
        lost_json = re.compile(rb'"event": "lost", "count": (\d+)')
        is_bpftrace = self.tool.name == "bpftrace"
        with open(self.out_path, "rb") as f:
            for ln in f:
                lines += 1
                if b'"lost"' in ln:
                    m = lost_json.search(ln)
                    if m:
                        json_lost += int(m.group(1))
                        json_lost_lines += 1
                        continue
                elif ln.startswith(b"Lost ") and is_bpftrace:      # bpftrace reports losses inline
                    m = re.match(rb"Lost (\d+) events", ln)
                    if m:
                        json_lost += int(m.group(1))
                        json_lost_lines += 1
                        continue
                if pat is not None and pat.search(ln):
                    port_lines += 1
        text = self._tail(self.err_path, 1 << 20)
        lost = json_lost
        for pat_l in (LOSS_PATTERNS[0], LOSS_PATTERNS[2], LOSS_PATTERNS[3]):
            for m in pat_l.finditer(text):
                lost += int(m.group(1))
        d = {"lines": max(0, lines - self.tool.header_lines - json_lost_lines), "lost": lost,
             "stderr_tail": text[-300:]}
        if port:
            d["port_lines"] = port_lines
        return d


class ToolFailed(Exception):
    def __init__(self, name, rc, msg):
        super().__init__(f"{name} failed (exit {rc}): {msg}")
        self.name, self.rc, self.msg = name, rc, msg


def workdir():
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return tempfile.mkdtemp(prefix="ptbench-", dir=base)


def private_cache_dir():
    d = tempfile.mkdtemp(prefix="ptbench-cache-")
    os.chmod(d, 0o700)
    return d


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


# ---- the machine ---------------------------------------------------------------------------------------

def _first(path, key):
    try:
        with open(path) as f:
            for ln in f:
                if ln.startswith(key):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def pkg_version(name):
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def machine():
    sys.path.insert(0, ROOT)
    try:
        from pytracer import __version__ as ptv
    except Exception:  # noqa: BLE001
        ptv = "?"
    git = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True)
    mem_kb = _first("/proc/meminfo", "MemTotal")
    try:
        with open("/etc/debian_version") as f:
            deb = f.read().strip()
    except OSError:
        deb = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "cpu": _first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory": mem_kb,
        "os": f"Debian {deb}" if deb else platform.platform(),
        "python": platform.python_version(),
        "pytracer": ptv,
        "pytracer_git": git.stdout.strip() or None,
        "libbpf-tools": pkg_version("libbpf-tools"),
        "bpfcc-tools": pkg_version("bpfcc-tools"),
        "bpftrace": pkg_version("bpftrace"),
        "iperf3": pkg_version("iperf3"),
        "loadgen": loadgen_kind(),
    }





def traced(tool, work, port=None, settle=0.3):
    """Run `work()` (returns a dict) with `tool` tracing (None: no tracer). Returns (work result, tracer
    result or None). The tracer's output goes to a tmpfs file, counted afterwards."""
    if tool is None:
        return work(), None
    wd = workdir()
    try:
        run = Running(tool, wd)
        try:
            w = work()
        finally:
            t = run.stop(settle=settle, port=port)
        t["ready_s"] = run.ready_s
        return w, t
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def stream(ns, seconds, rate=0, conns=4, host="127.0.0.1", port=SINK_PORT, msg=64, cpus=None):
    """Small TCP_NODELAY writes over `conns` connections; returns {"count" (writes), "seconds", "rate"}."""
    r = subprocess.run(Namespaces.prefix(ns) + taskset(cpus) + loadgen_cmd() +
                       ["stream", host, str(port), str(conns), str(seconds), str(rate), str(msg)],
                       capture_output=True, text=True, timeout=seconds + 60)
    d = parse_done(r.stdout)
    d["rate"] = d["count"] / d["seconds"]
    return d
