"""Shared test fixtures. Kernel tests run against the real kernel; where it cannot (not root, no BPF), they
skip — unless PYTRACER_REQUIRE_KERNEL=1 (set by .ci/run), which turns every such skip into a failure."""
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJDIR = os.path.join(ROOT, "pytracer", "bpf")
REQUIRE = os.environ.get("PYTRACER_REQUIRE_KERNEL") == "1"


# Wire sizes (IP packet + 14) of a handshake's SYN, SYN-ACK and ACK with Linux's default TCP options (MSS,
# SACK, timestamps, window scaling: 20 option bytes on SYNs, 12 on the ACK), and of a bare RST+ACK. The tracer
# measures them; tests/test_capture_oracle.py holds them against tcpdump's capture.
HANDSHAKE = {4: (74, 74, 66), 6: (94, 94, 86)}
BARE_RST = {4: 54, 6: 74}


def kernel_unavailable(reason):
    """Skip for lack of kernel support, or fail when the kernel is required."""
    if REQUIRE:
        pytest.fail(f"kernel test could not run (PYTRACER_REQUIRE_KERNEL=1): {reason}")
    pytest.skip(reason)


def _kernel_reason():
    if os.geteuid() != 0:
        return "kernel tests need root"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "kernel has no BTF"
    try:
        from pytracer import inventory

        inventory.ids("prog")
    except Exception as e:  # noqa: BLE001 - any failure means no usable bpf()
        return f"bpf() unusable: {e}"
    return None


_REASON = None
_CHECKED = False


@pytest.fixture
def kernel():
    """Depend on this fixture in every test that needs the real kernel."""
    global _REASON, _CHECKED
    if not _CHECKED:
        _REASON, _CHECKED = _kernel_reason(), True
    if _REASON:
        kernel_unavailable(_REASON)


@pytest.fixture
def no_leaks(kernel):
    """Asserts the test leaves no BPF program, map or link behind."""
    from pytracer import inventory

    before = inventory.snapshot()
    yield
    assert_nothing_left(before)


def assert_nothing_left(before, what="the test", timeout=5.0):
    """The kernel frees programs, then their maps, after RCU grace periods and deferred work: poll.
    Objects that processes outside this test run hold (other BPF users of the machine) are not ours."""
    from pytracer import inventory

    deadline = time.monotonic() + timeout
    while True:
        after = inventory.snapshot()
        left = {k: after[k] - before[k] for k in ("prog", "map", "link") if after[k] - before[k]}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if left:
        # only now, not while polling: the scan is thousands of system calls (see _held_by_others)
        foreign = _held_by_others()
        left = {k: sorted(v - foreign[k]) for k, v in left.items() if v - foreign[k]}
    assert not left, f"left in the kernel after {what}: {left}"


def _held_by_others():
    """Ids of the BPF programs, maps and links that processes other than this one and its descendants hold
    through file descriptors (from /proc/PID/fdinfo).

    Not called while tracers may still be exiting: on Linux 6.1 under qemu's TCG, a burst of system calls while
    another process detaches a sys_enter program (patching that tracepoint's static branch) twice left both
    guest CPUs spinning at the patched instruction (soft lockup)."""
    parent = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass

    def ours(pid):
        for _ in range(64):
            if pid == os.getpid():
                return True
            if pid not in parent or pid <= 1:
                return False
            pid = parent[pid]
        return False

    held = {"prog": set(), "map": set(), "link": set()}
    for pid in parent:
        if ours(pid):
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    text = f.read()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in ("prog_id", "map_id", "link_id") and value.strip().isdigit():
                    held[key[:-3]].add(int(value))
    return held


def obj_path(name):
    return os.path.join(OBJDIR, f"{name}.bpf.o")


def need_tool(name):
    if shutil.which(name) is None:
        kernel_unavailable(f"{name} is not installed")


def pytracer_cmd(*args):
    return [sys.executable, "-m", "pytracer", *args]


def run_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def sh(cmd, check=True):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=check, capture_output=True, text=True)


def without_notes(stderr):
    """stderr less pytracer's informational notes (e.g. which fallback a kernel needs): what remains must
    be empty when a run is expected to be quiet."""
    return "\n".join(ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("pytracer: note:"))


def wait_attached(proc, timeout=120.0):
    """Wait until a pytracer process holds BPF links (it has attached), e.g. in JSON mode, which prints no
    header. Generous timeout: under emulation (vmtest) start-up takes seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            for fd in os.listdir(f"/proc/{proc.pid}/fdinfo"):
                with open(f"/proc/{proc.pid}/fdinfo/{fd}") as f:
                    if "link_id:" in f.read():
                        time.sleep(0.5)     # the remaining links and the ring buffer follow within ms
                        return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("pytracer did not attach")


def start_tool(tool, *args):
    """`pytracer TOOL ARGS` with stdout and stderr piped, returned once its programs are attached."""
    p = subprocess.Popen(pytracer_cmd(tool, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=run_env())
    try:
        wait_attached(p)
    except BaseException:
        stop_tool(p)
        raise
    return p


def stop_tool(p, timeout=60):
    """SIGTERM (the tool drains what it read and exits 0): its stdout and stderr; exit 0 is asserted."""
    import signal

    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    assert p.returncode == 0, err
    return out, err
