"""Faults (issue #5, parts 4 and 5): `python -m pytracer` as a user runs it, hurt in every way we could think
of. Each case needs a clear message (one line, no traceback), the documented exit status (0 for the ways of
stopping it, 1 error, 3 missing kernel feature, 4 missing privileges) and nothing left in the kernel.

What "nothing left" means here: the BPF programs, maps and links the tracer process held (read from
/proc/PID/fdinfo while it ran) are gone from the kernel afterwards, and no new BPF object appeared that no live
process holds (pytracer.inventory snapshots before/after; objects of other processes that use BPF at the
same time are not ours and are ignored).

Every tracer here is told `-P PORT` for the test's own server port, so other traffic on the machine (other
test runs) does not flood it; the hostile-name test reads the whole output.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import traffic
from conftest import HANDSHAKE, without_notes, ROOT, need_tool, pytracer_cmd, run_env

from support import procview as kernel_view  # noqa: E402  (fdinfo ids, leftovers, wait_attached)

NSEND, NRECV = 200_000, 5_000
TRACEBACK = re.compile(r"Traceback|Exception ignored|Error:.*\n\s+File ")


# --- helpers ------------------------------------------------------------------------------------------

class Tracer:
    """`python -m pytracer ARGS` with stdout and stderr in files (no pipe can fill up and stall it)."""

    def __init__(self, tmp_path, *args, name="t", cmd=None, env=None, cwd=None):
        self.out_path = tmp_path / f"{name}.out"
        self.err_path = tmp_path / f"{name}.err"
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        cmd = cmd or pytracer_cmd(*args)
        self.p = subprocess.Popen(cmd, stdout=self._out, stderr=self._err, env=env or run_env(),
                                  stdin=subprocess.DEVNULL, cwd=cwd)
        self.pid = self.p.pid
        self.ids = None

    def attached(self, timeout=60):
        try:
            self.ids = kernel_view.wait_attached(self.p, timeout)
        except RuntimeError as e:
            pytest.fail(f"{e}\nstderr: {self.stderr()}")
        return self

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            pytest.fail(f"the tracer did not exit within {timeout} s of signal {sig}")

    def wait(self, timeout=30):
        rc = self.p.wait(timeout=timeout)
        self._out.close()
        self._err.close()
        return rc

    def stdout(self):
        return self.out_path.read_bytes()

    def stderr(self):
        return self.err_path.read_bytes().decode(errors="replace")

    def json_lines(self):
        out = []
        for raw in self.stdout().splitlines():
            out.append(json.loads(raw))       # every line must be valid JSON
        return out


def assert_quiet_exit(tracer, status):
    err = tracer.stderr()
    assert tracer.p.returncode == status, f"exit status {tracer.p.returncode}, expected {status}; stderr: {err}"
    assert not TRACEBACK.search(err), f"traceback on stderr:\n{err}"


def assert_nothing_left(own, before, what):
    left = kernel_view.leftovers(own or {}, before)
    assert not left, f"left in the kernel after {what}: {left}"


def conversation_with(tracers_start, nsend=NSEND, nrecv=NRECV, fam="4", host="127.0.0.1"):
    """Start a server, let `tracers_start(port)` start (and attach) tracers, then run one conversation.
    Returns (server peer, client peer)."""
    s = traffic.server("tsrv", fam, host, nsend, nrecv)
    c = traffic.client("tcli", fam, host, s.port, nsend, nrecv)
    tracers_start(s.port)
    c.go()
    c.wait()
    s.wait()
    return s, c


def check_connection(events, s, c, nsend=NSEND, nrecv=NRECV):
    """The tracer reported the conversation correctly: the client's connect, the server's accept, both closes
    with exact byte counts, owners right on every line."""
    port, spid, cpid = s.port, s.pids["tsrv"], c.pids["tcli"]
    mine = [e for e in events if e.get("event") != "lost" and port in (e["lport"], e["rport"])]
    cs = [e for e in mine if e["rport"] == port]
    ss = [e for e in mine if e["lport"] == port]
    assert [(e["pid"], e["comm"], e["size"]) for e in cs if e["event"] == "connect"] == [(cpid, "tcli", HANDSHAKE[4][0])], cs[:4]
    assert [(e["dir"], e["pid"], e["comm"]) for e in ss if e["event"] == "accept"] == [
        ("in", spid, "tsrv"), ("out", spid, "tsrv"), ("in", spid, "tsrv")], ss[:4]
    for side, who in ((cs, (cpid, "tcli")), (ss, (spid, "tsrv"))):
        owners = {(e["pid"], e["comm"]) for e in side}
        assert owners == {who}, f"owners {owners}, expected {who}"
    (cc,) = [e for e in cs if e["event"] == "close"]
    (sc,) = [e for e in ss if e["event"] == "close"]
    assert (cc["tx_bytes"], cc["rx_bytes"]) == (nsend, nrecv)
    assert (sc["tx_bytes"], sc["rx_bytes"]) == (nrecv, nsend)
    # segment lines carry every byte (retransmissions show again; the close totals above are exact), unless
    # the tracer reported losses (a slow reader under emulation): a shortfall is never silent
    lost = [e for e in events if e.get("event") == "lost"]
    for side, want in ((ss, nsend), (cs, nrecv)):
        got = sum(e["payload"] for e in side if e["event"] == "recv")
        assert got >= want or lost, f"recv lines carry {got} of {want} bytes and no loss was reported"
    return mine


def quiet_wait(tracer, seconds=0.5):
    """Let the tracer read what the kernel already wrote (it polls every <= 0.5 s)."""
    time.sleep(seconds)


# --- SIGKILL, restart, SIGTERM, SIGINT ------------------------------------------------------------------

def test_sigkill_mid_run_then_restart(kernel, tmp_path):
    """SIGKILL gives pytracer no chance to clean up: the kernel must still free everything (every object
    hangs off the process's fds), and a second run must work normally."""
    before = kernel_view.kernel_snapshot()
    first = Tracer(tmp_path, "-j", "-P", "1", name="killed").attached()
    assert first.ids["prog"] and first.ids["map"] and first.ids["link"], first.ids
    first.stop(signal.SIGKILL)
    assert first.p.returncode == -signal.SIGKILL
    assert_nothing_left(first.ids, before, "SIGKILL")

    holder = {}

    def start(port):
        holder["t"] = Tracer(tmp_path, "-j", "-P", str(port), name="second").attached()

    s, c = conversation_with(start)
    second = holder["t"]
    quiet_wait(second)
    assert second.stop() == 0
    assert_quiet_exit(second, 0)
    check_connection(second.json_lines(), s, c)
    assert_nothing_left(second.ids, before, "SIGTERM after a restart")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_quietly_and_reports_what_it_read(kernel, tmp_path, sig):
    """SIGTERM (service managers) and SIGINT (Ctrl-C): exit 0, no traceback, what was read is printed,
    nothing left in the kernel."""
    before = kernel_view.kernel_snapshot()
    holder = {}

    def start(port):
        holder["t"] = Tracer(tmp_path, "-j", "-P", str(port)).attached()

    s, c = conversation_with(start)
    t = holder["t"]
    # no pause: the records may still be in the ring buffer when the signal arrives; they must be printed
    assert t.stop(sig) == 0
    assert_quiet_exit(t, 0)
    check_connection(t.json_lines(), s, c)
    assert_nothing_left(t.ids, before, signal.Signals(sig).name)


# pytracer whose start-up pauses after TcpSnoop.start() (programs attached, iterators run, nothing read yet)
SLOW_START = r"""
import os, sys, time
sys.path.insert(0, {root!r})
from pytracer.tools.tcpsnoop import tracer as T
start = T.TcpSnoop.start
def slow_start(self):
    start(self)
    open({marker!r}, "w").close()
    time.sleep({pause!r})
    open({marker!r} + ".over", "w").close()
    return self
T.TcpSnoop.start = slow_start
from pytracer.cli import main
main()
"""


@pytest.mark.parametrize("impatient", [False, True], ids=["once", "twice"])
def test_a_signal_during_start_up_ends_it_with_what_was_captured(kernel, tmp_path, impatient):
    """SIGTERM once the programs are attached, before pytracer reads a record (a start-up held up there):
    the run ends when start-up is done, exit 0, and what the programs captured meanwhile is printed, not
    dropped unreported. A second signal ends it at once, quietly, nothing left in the kernel."""
    before = kernel_view.kernel_snapshot()
    marker = str(tmp_path / "started")
    wrapper = tmp_path / "slow_start.py"
    wrapper.write_text(SLOW_START.format(root=ROOT, marker=marker, pause=5.0))
    holder = {}

    def start(port):
        t = holder["t"] = Tracer(tmp_path, cmd=[sys.executable, str(wrapper), "-j", "-P", str(port)])
        deadline = time.monotonic() + 60
        while not os.path.exists(marker):
            assert t.p.poll() is None and time.monotonic() < deadline, t.stderr()
            time.sleep(0.05)
        t.ids = kernel_view.fdinfo_ids(t.pid)

    s, c = conversation_with(start)
    t = holder["t"]
    assert not os.path.exists(marker + ".over"), "the conversation outlasted the pause: nothing was tested"
    if impatient:       # a second signal does not wait for the start-up to end
        t.p.send_signal(signal.SIGTERM)
        time.sleep(0.2)
    assert t.stop(signal.SIGTERM) == 0
    assert_quiet_exit(t, 0)
    if impatient:
        assert not os.path.exists(marker + ".over")
    else:
        check_connection(t.json_lines(), s, c)
    assert_nothing_left(t.ids, before, "SIGTERM during start-up")


def _holders_of(link_ids, exclude):
    """{pid: [fd link targets]} of the processes (other than `exclude`) that hold any of `link_ids`."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == exclude:
            continue
        if kernel_view.fdinfo_ids(int(name))["link"] & link_ids:
            try:
                out[int(name)] = sorted(os.readlink(f"/proc/{name}/fd/{fd}") for fd in os.listdir(f"/proc/{name}/fd"))
            except OSError:
                pass
    return out


def test_exit_leaves_only_the_detaching_to_a_child(kernel, tmp_path):
    """The process exits at once after SIGINT: detaching from classic (syscall) tracepoints waits for RCU
    grace periods, so those links go to a short-lived grandchild. It holds only links and perf events (no
    stdout: a pipe reader sees its end when pytracer exits), is in a session of its own, and everything is
    gone from the kernel soon after."""
    before = kernel_view.kernel_snapshot()
    p = subprocess.Popen(pytracer_cmd("-P", "1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env=run_env())
    try:
        ids = kernel_view.wait_attached(p, 60)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)      # returns at the pipes' end of file: no child holds them
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert b"Traceback" not in err
    for pid, targets in _holders_of(ids["link"], p.pid).items():
        assert os.getsid(pid) == pid, targets
        assert set(targets) <= {"anon_inode:bpf_link", "anon_inode:[perf_event]"}, targets
    assert_nothing_left(ids, before, "exit")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_burst_drops_no_record(kernel, tmp_path, sig):
    """A signal that arrives while the tracer works through a burst of records: every record it took from
    the ring buffer is still printed. (The handler used to raise at once, and a batch read but not yet
    written vanished unreported: about 10,000 of 40,000 one-byte segments on 6.18; on 6.1 under emulation one
    segment of test_signal_ends_quietly_and_reports_what_it_read.) The tracer is stopped (SIGSTOP) while
    the burst is sent, so it has many records to work through when it continues and gets the signal."""
    nseg = 10_000 if os.environ.get("VMTEST") else 40_000
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    port = ls.getsockname()[1]
    got = []

    def serve():
        c, _ = ls.accept()
        n = 0
        while True:
            b = c.recv(65536)
            if not b:
                break
            n += len(b)
        c.close()
        got.append(n)

    server = threading.Thread(target=serve)
    server.start()
    t = Tracer(tmp_path, "-j", "-P", str(port), "--ringbuf-mb", "64").attached()
    try:
        os.kill(t.pid, signal.SIGSTOP)
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(nseg):
                c.send(b"x")
    finally:
        os.kill(t.pid, signal.SIGCONT)
        server.join(60)
        ls.close()
    time.sleep(0.05)        # it is working through the burst now
    assert t.stop(sig) == 0
    assert_quiet_exit(t, 0)
    events = t.json_lines()
    lost = [e for e in events if e.get("event") == "lost"]
    recv = sum(e["payload"] for e in events if e.get("event") == "recv" and e["lport"] == port)
    assert got == [nseg]
    assert recv >= nseg or lost, f"recv lines carry {recv} of {nseg} bytes and no loss was reported"


def test_sigterm_while_starting(kernel, tmp_path):
    """SIGTERM during start-up (loading, relocating, attaching) also ends in status 0 with nothing left.

    Only while the interpreter itself starts (before pytracer's __main__ installs its handler: ~0.05 s here,
    seconds under emulation) may the default action end the process instead (status -SIGTERM); it holds
    no BPF object then. Once attached, SIGTERM must always give status 0."""
    before = kernel_view.kernel_snapshot()
    for delay in (0.05, 0.15, 0.25, 0.35, 0.5, 0.7):
        t = Tracer(tmp_path, "-j", "-P", "1", name=f"early{delay}")
        time.sleep(delay)
        ids = kernel_view.fdinfo_ids(t.pid)
        rc = t.stop()
        held = any(ids.values())
        if rc == -signal.SIGTERM and not held:
            continue                      # killed before pytracer's code ran: nothing could be left
        assert_quiet_exit(t, 0)
        assert_nothing_left(ids, before, f"SIGTERM {delay} s after start")
    t = Tracer(tmp_path, "-j", "-P", "1", name="attached").attached()
    ids = kernel_view.fdinfo_ids(t.pid)
    t.stop()
    assert_quiet_exit(t, 0)
    assert_nothing_left(ids, before, "SIGTERM once attached")


def test_two_tracers_see_the_same_connection(kernel, tmp_path):
    before = kernel_view.kernel_snapshot()
    tracers = []

    def start(port):
        tracers.append(Tracer(tmp_path, "-j", "-P", str(port), name="one").attached())
        tracers.append(Tracer(tmp_path, "-j", "-P", str(port), name="two").attached())

    s, c = conversation_with(start)
    quiet_wait(tracers[0])
    views = []
    for t in tracers:
        assert t.stop() == 0
        assert_quiet_exit(t, 0)
        mine = check_connection(t.json_lines(), s, c)
        views.append(sorted((e["event"], e["dir"], e["pid"], e["lport"], e["rport"], e["size"], e["payload"])
                            for e in mine))
    assert views[0] == views[1], "the two tracers disagree about the same connection"
    for t in tracers:
        assert_nothing_left(t.ids, before, "two tracers")


# --- stdout closed early --------------------------------------------------------------------------------

class LoopbackTraffic:
    """A server thread and a client thread making a small exchange every `pause` seconds, until stopped."""

    def __init__(self, pause=0.05):
        import socket
        import threading

        self.srv = socket.create_server(("127.0.0.1", 0))
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.stop_ev = threading.Event()
        self.pause = pause
        self.done = 0
        self.threads = [threading.Thread(target=self._serve, daemon=True),
                        threading.Thread(target=self._client, daemon=True)]

    def _serve(self):
        while not self.stop_ev.is_set():
            try:
                conn, _ = self.srv.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.recv(4096)
                    conn.sendall(b"r" * 500)
                except OSError:
                    pass

    def _client(self):
        import socket

        while not self.stop_ev.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
                    c.sendall(b"q" * 500)
                    c.recv(4096)
                self.done += 1
            except OSError:
                pass
            self.stop_ev.wait(self.pause)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=10)
        self.srv.close()


@pytest.mark.parametrize("fmt", [(), ("-j",)], ids=["classic", "json"])
def test_stdout_closed_early(kernel, tmp_path, fmt):
    """`pytracer | head -n 2` with traffic running: pytracer ends promptly, status 0, nothing on stderr."""
    before = kernel_view.kernel_snapshot()
    err = open(tmp_path / "err", "wb")
    with LoopbackTraffic() as load:
        tracer = subprocess.Popen(pytracer_cmd(*fmt, "-P", str(load.port)), stdout=subprocess.PIPE, stderr=err,
                                  env=run_env())
        head = subprocess.Popen(["head", "-n", "2"], stdin=tracer.stdout, stdout=subprocess.PIPE)
        tracer.stdout.close()           # only head reads the pipe now
        ids = {"prog": set(), "map": set(), "link": set()}

        def watch():                    # every BPF id the tracer holds at any time, until it exits
            while tracer.poll() is None:
                for k, v in kernel_view.fdinfo_ids(tracer.pid).items():
                    ids[k] |= v
                time.sleep(0.02)

        import threading

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            got = head.communicate(timeout=30)[0]
            closed_at = time.monotonic()
            rc = tracer.wait(timeout=15)
            took = time.monotonic() - closed_at
        finally:
            if tracer.poll() is None:
                tracer.kill()
                tracer.wait()
            err.close()
    watcher.join(timeout=5)
    assert len(got.splitlines()) == 2
    assert ids["link"], "the tracer never attached"
    stderr = (tmp_path / "err").read_text(errors="replace")
    assert rc == 0, f"exit status {rc}; stderr: {stderr}"
    assert not without_notes(stderr), f"stderr not empty: {stderr}"
    assert took < 3, f"pytracer took {took:.1f} s to notice the closed pipe"
    assert_nothing_left(ids, before, "a closed stdout")


# --- privileges ---------------------------------------------------------------------------------------

PRIV_MSG = re.compile(r"^pytracer: .*(CAP_BPF|CAP_PERFMON|root)", re.S)


def _refused(t, missing):
    """The tracer exited 4 with a one-line message (no traceback) naming each of `missing`; returns the line."""
    rc = t.wait(timeout=60)
    err = t.stderr()
    assert rc == 4, f"exit status {rc}, expected 4; stderr: {err}"
    assert not TRACEBACK.search(err), err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected a one-line message, got:\n{err}"
    for cap in missing:
        assert cap in lines[0], f"message does not name {cap}: {lines[0]}"
    return lines[0]


def _priv_case(tmp_path, cmd, expect_missing):
    t = Tracer(tmp_path, cmd=cmd)
    line = _refused(t, expect_missing)
    assert PRIV_MSG.search(line), line
    assert t.stdout() == b"", "nothing should be printed on stdout"


def test_not_root(kernel, tmp_path):
    """As user nobody (a python that nobody may run, and a readable checkout)."""
    need_tool("setpriv")
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    probe = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", python, "-c",
                            f"import sys; sys.path.insert(0, {ROOT!r}); import pytracer.cli"],
                           capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"user nobody cannot import pytracer from {ROOT} with {python}: {probe.stderr[-300:]}")
    env_cmd = ["env", f"PYTHONPATH={ROOT}", python, "-m", "pytracer", "-d", "2", "-P", "1"]
    _priv_case(tmp_path, ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"] + env_cmd,
               ["CAP_BPF", "CAP_PERFMON"])


@pytest.mark.parametrize("drop,missing", [
    ("cap_bpf,cap_perfmon,cap_sys_admin", ["CAP_BPF", "CAP_PERFMON"]),
    ("cap_perfmon,cap_sys_admin", ["CAP_PERFMON"]),
    ("cap_bpf,cap_sys_admin", ["CAP_BPF"]),
])
def test_capabilities_dropped(kernel, tmp_path, drop, missing):
    """Root without the capabilities (containers, systemd CapabilityBoundingSet=...): still exit 4 with a
    message that names exactly what is missing, and nothing left behind by the partial load."""
    need_tool("capsh")
    before = kernel_view.kernel_snapshot()
    cmd = " ".join(pytracer_cmd("-d", "2", "-P", "1"))
    t = Tracer(tmp_path, cmd=["capsh", f"--drop={drop}", "--", "-c", f"exec {cmd}"])
    line = _refused(t, missing)
    others = {"CAP_BPF", "CAP_PERFMON"} - set(missing)
    for cap in others:
        assert f"lacks {cap}" not in line and f"missing: {cap}" not in line, line
    assert_nothing_left({}, before, f"dropping {drop}")


# --- tracefs ------------------------------------------------------------------------------------------

def _in_private_mount_ns(script, tmp_path, name):
    need_tool("unshare")
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], stdout=o, stderr=e,
                           env=run_env(), timeout=120)
    return p.returncode, out.read_text(errors="replace"), err.read_text(errors="replace")


# debugfs too: its "tracing" directory is an automount point that would bring tracefs back on first access;
# and any other tracefs mount the machine has (a chroot's, say), in this private namespace only
UNMOUNT = ("umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; "
           "umount -l /sys/kernel/debug 2>/dev/null; "
           "for m in $(awk '$3 == \"tracefs\" { print $2 }' /proc/self/mounts); do umount -l \"$m\" 2>/dev/null; done; "
           "if grep -q ' tracefs ' /proc/self/mounts; then echo STILL_MOUNTED >&2; exit 99; fi; ")


def test_tracefs_not_mounted_is_mounted_by_pytracer(kernel, tmp_path):
    """No tracefs anywhere (a private mount namespace where it is unmounted): pytracer mounts it itself and
    traces a connection normally."""
    import threading

    before = kernel_view.kernel_snapshot()
    s = traffic.server("tsrv", "4", "127.0.0.1", 1000, 100)
    c = traffic.client("tcli", "4", "127.0.0.1", s.port, 1000, 100)
    # classic output: the header line says the tracer is attached
    script = UNMOUNT + " ".join(pytracer_cmd("-d", "8", "-P", str(s.port))) + \
        "; echo EXIT=$? >&2; grep ' tracefs ' /proc/self/mounts | sed 's/^/MOUNT: /' >&2"
    box = {}
    th = threading.Thread(target=lambda: box.update(r=_in_private_mount_ns(script, tmp_path, "ns")))
    th.start()
    deadline = time.monotonic() + 60
    out_file = tmp_path / "ns.out"
    while time.monotonic() < deadline and th.is_alive():
        if out_file.exists() and b"RPORT" in out_file.read_bytes():
            break
        time.sleep(0.05)
    c.go()
    c.wait()
    s.wait()
    th.join(timeout=60)
    rc, out, err = box["r"]
    assert rc == 0 and "EXIT=0" in err, f"status {rc}; stderr: {err}"
    assert "STILL_MOUNTED" not in err
    assert not TRACEBACK.search(err), err
    lines = [ln.split() for ln in out.splitlines()[1:]]
    ours = [ln for ln in lines if str(s.port) in ln]
    said = f"{out}\nstderr: {err}"
    assert any(ln[-1] == "tcli" and ln[4] == "->" and ln[-2] == str(HANDSHAKE[4][0]) for ln in ours), said
    assert [int(ln[-2]) for ln in ours if ln[-1] == "tsrv"][:3] == list(HANDSHAKE[4]), said
    assert "MOUNT:" in err, "expected pytracer to have mounted tracefs"
    assert_nothing_left({}, before, "a run that mounted tracefs")


def test_tracefs_cannot_be_mounted_says_how(kernel, tmp_path):
    """No tracefs and no right to mount it (CAP_SYS_ADMIN dropped; CAP_BPF and CAP_PERFMON kept): one clear
    line that says how to mount it, a non-zero status, no traceback, nothing left."""
    need_tool("capsh")
    before = kernel_view.kernel_snapshot()
    cmd = " ".join(pytracer_cmd("-d", "2", "-P", "1"))
    rc, out, err = _in_private_mount_ns(UNMOUNT + f'exec capsh --drop=cap_sys_admin -- -c "exec {cmd}"',
                                        tmp_path, "nomount")
    assert rc not in (0, 99), f"status {rc}; stderr: {err}"
    assert not TRACEBACK.search(err), err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "tracefs" in lines[0] and "mount -t tracefs" in lines[0], lines[0]
    assert_nothing_left({}, before, "a run without tracefs")


# --- a broken object file -----------------------------------------------------------------------------

def _package_copy(tmp_path, mutate):
    """A copy of the pytracer package whose tcpsnoop.bpf.o `mutate` replaces (path -> None)."""
    dst = tmp_path / "pkg"
    shutil.copytree(os.path.join(ROOT, "pytracer"), dst / "pytracer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    mutate(dst / "pytracer" / "bpf" / "tcpsnoop.bpf.o")
    env = run_env()
    env["PYTHONPATH"] = str(dst)
    env["PYTRACER_CACHE_DIR"] = str(tmp_path / "cache")   # a fresh cache: the bad object must really be read
    os.chmod(tmp_path, 0o700)
    return env


def _garbage(p):
    p.write_bytes(os.urandom(64 << 10))


def _truncated(p):
    p.write_bytes(p.read_bytes()[:5000])


def _empty(p):
    p.write_bytes(b"")


def _other_elf(p):
    shutil.copy("/bin/true", p)


def _bitrot(p):
    data = bytearray(p.read_bytes())
    for i in range(len(data) // 3, len(data), 997):
        data[i] ^= 0x5A
    p.write_bytes(bytes(data))


def _directory(p):
    p.unlink()
    p.mkdir()


def _missing(p):
    p.unlink()


@pytest.mark.parametrize("mutate", [_garbage, _truncated, _empty, _other_elf, _bitrot, _directory, _missing],
                         ids=lambda f: f.__name__.strip("_"))
def test_broken_object_file(kernel, tmp_path, mutate):
    before = kernel_view.kernel_snapshot()
    env = _package_copy(tmp_path, mutate)
    # cwd: `python -m` looks in the current directory first; it must find the copy, not the checkout
    t = Tracer(tmp_path, "-d", "2", "-P", "1", env=env, cwd=tmp_path)
    rc = t.wait(timeout=60)
    err = t.stderr()
    assert rc not in (0, None), f"exit status {rc}; stderr: {err}"
    assert not TRACEBACK.search(err), err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("pytracer: "), f"expected one clear line, got:\n{err}"
    assert "tcpsnoop.bpf.o" in lines[0], f"the message should name the object file: {lines[0]}"
    assert len(lines[0]) < 400, f"message too long: {lines[0]}"
    assert_nothing_left({}, before, f"a {mutate.__name__.strip('_')} object")


# --- hostile task names (part 5) ----------------------------------------------------------------------

HOSTILE_NAMES = [b"\x1b[31mred\x1b[0m", b"bell\x07bs\x08del\x7f", b"\xff\xfeinvalid", b"tab\tnl\ncr\r",
                 b"\x9b31mcsi", b"\xe2\x80\xaertl"]

NAMED_CLIENT = r"""
import ctypes, socket, sys
name = bytes.fromhex(sys.argv[1])
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)
with open("/proc/self/comm", "rb") as f:
    print(f.read().rstrip(b"\n").hex(), flush=True)
c = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
c.sendall(b"h" * 1000)
c.recv(100)
c.close()
"""


def expected_comm(raw):
    """The documented rendering: printable characters as they are, every other byte as \\xNN (computed here
    from the bytes, independently of pytracer's escape_comm)."""
    out = []
    text = raw.decode("utf-8", "surrogateescape")
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:                 # an undecodable byte
            out.append("\\x%02x" % (o - 0xDC00))
        elif ch.isprintable():
            out.append(ch)
        elif o < 0x100:
            out.append("\\x%02x" % o)
        else:
            out.append("\\u%04x" % o)       # a non-printable character beyond Latin-1 (e.g. U+202E)
    return "".join(out)


def test_hostile_task_names(kernel, tmp_path):
    """A traced process renames itself (prctl PR_SET_NAME) to names with terminal escape sequences, other
    control bytes, C1 controls and invalid UTF-8, then connects. Classic output must carry no raw control
    byte (each is shown as \\xNN); every JSON line must be valid JSON and carry the escaped name."""
    import socket
    import threading

    before = kernel_view.kernel_snapshot()
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                got = 0
                while got < 1000:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    got += len(chunk)
                conn.sendall(b"k" * 100)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    classic = Tracer(tmp_path, "-P", str(port), name="classic").attached()
    js = Tracer(tmp_path, "-j", "-P", str(port), name="json").attached()
    comms = {}
    try:
        for name in HOSTILE_NAMES:
            r = subprocess.run([sys.executable, "-c", NAMED_CLIENT, name.hex(), str(port)], capture_output=True,
                               text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            comms[name] = bytes.fromhex(r.stdout.strip())      # what the kernel kept (15 bytes at most)
        quiet_wait(classic, 1.0)
    finally:
        stop.set()
        for t in (classic, js):
            t.stop()
        th.join()
        srv.close()
    for t in (classic, js):
        assert_quiet_exit(t, 0)

    raw = classic.stdout()
    text = raw.decode("utf-8")                     # classic output is valid UTF-8...
    bad = [(i, ch) for i, ch in enumerate(text) if (ord(ch) < 0x20 and ch != "\n") or 0x7F <= ord(ch) < 0xA0]
    assert not bad, f"raw control characters in classic output: {bad[:5]}"   # ...without control bytes
    for name, kept in comms.items():
        assert expected_comm(kept) in text, f"{kept!r} should appear as {expected_comm(kept)!r}"

    events = js.json_lines()
    seen = {e["comm"] for e in events if e.get("event") == "connect"}
    for name, kept in comms.items():
        assert expected_comm(kept) in seen, f"{kept!r} should appear in JSON as {expected_comm(kept)!r}: {seen}"
    for e in events:
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in e.get("comm", "")), e
    assert_nothing_left(classic.ids, before, "the classic tracer")
    assert_nothing_left(js.ids, before, "the JSON tracer")
