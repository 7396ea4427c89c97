"""Kernel support (issue 10): on a kernel that cannot run pytracer, one sentence naming what is missing and
the kernel version or configuration option that brings it, exit status 3, nothing left in the kernel; on a
kernel that lacks something pytracer can work around, the fallback is chosen by a probe and said once on
stderr.

Where no kernel in the CI matrix lacks the feature (BTF, the ring buffer map type, bpf() itself), the kernel's
answer is mocked at the lowest layer pytracer has (the system call, the BTF path), and everything above it
runs for real."""
import ctypes
import errno
import os
import resource
import subprocess

import pytest

from conftest import pytracer_cmd, run_env
from pytracer import abi, cli, features, loader, syscall
from pytracer.tcpsnoop import have_sock_length_tracepoints


@pytest.fixture
def fresh_probes(monkeypatch):
    """Probe answers and notes of this process start empty and are restored afterwards."""
    monkeypatch.setattr(features, "_cache", {})
    monkeypatch.setattr(features, "_notes", [])
    monkeypatch.setattr(features, "_said", set())
    monkeypatch.setenv("PYTRACER_CACHE_DIR", "off")


def run_cli(capsys, *args):
    status = cli.run(["-d", "0", *args])
    signal_default = capsys.readouterr()
    return status, signal_default.err


def one_sentence(err):
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("pytracer: note:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("pytracer: ") and "Traceback" not in err, err
    return lines[0]


def fake_bpf_syscall(monkeypatch, fails):
    """Route bpf(2) through `fails(cmd, attr_bytes)`: an errno to fail that call with, or None to make it."""
    real = syscall._syscall

    def fake(nr, *args):
        if nr == syscall.NR_BPF:
            cmd, attr, size = args
            err = fails(int(cmd.value), ctypes.string_at(attr, size.value))
            if err:
                ctypes.set_errno(err)
                return -1
        return real(nr, *args)

    monkeypatch.setattr(syscall, "_syscall", fake)


def test_no_ring_buffer_map_type(no_leaks, fresh_probes, monkeypatch, capsys):
    """A kernel before 5.8 answers EINVAL to BPF_MAP_TYPE_RINGBUF; the probe tells that from a bad size."""
    def fails(cmd, attr):
        if cmd == abi.Cmd.MAP_CREATE and int.from_bytes(attr[:4], "little") == abi.MapType.RINGBUF:
            return errno.EINVAL
        return None

    fake_bpf_syscall(monkeypatch, fails)
    status, err = run_cli(capsys)
    line = one_sentence(err)
    assert status == 3, err
    assert "no BPF ring buffer" in line and "BPF_MAP_TYPE_RINGBUF" in line and "Linux 5.8" in line, line
    assert features.have_ringbuf() is False


def test_ring_buffer_of_a_bad_size_is_not_a_missing_feature(no_leaks, fresh_probes):
    from pytracer.errors import KernelFeatureError, PytracerError
    from pytracer.tcpsnoop import TcpSnoop

    with pytest.raises(PytracerError) as ei:
        TcpSnoop(ringbuf_size=3 << 12, use_cache=False).start()
    assert not isinstance(ei.value, KernelFeatureError)
    assert "power of two" in str(ei.value)
    assert features.have_ringbuf() is True


def test_no_bpf_system_call(no_leaks, fresh_probes, monkeypatch, capsys):
    """CONFIG_BPF_SYSCALL=n: every bpf() answers ENOSYS."""
    fake_bpf_syscall(monkeypatch, lambda cmd, attr: errno.ENOSYS)
    status, err = run_cli(capsys)
    line = one_sentence(err)
    assert status == 3, err
    assert "no bpf() system call" in line and "CONFIG_BPF_SYSCALL" in line, line


def test_no_kernel_btf(no_leaks, fresh_probes, monkeypatch, capsys, tmp_path):
    """No /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF off, or before 5.4)."""
    monkeypatch.setattr(loader, "VMLINUX_BTF", str(tmp_path / "no-vmlinux"))
    status, err = run_cli(capsys)
    line = one_sentence(err)
    assert status == 3, err
    assert "no BTF" in line and "CONFIG_DEBUG_INFO_BTF" in line and "5.4" in line, line


def _release():
    major, minor = os.uname().release.split("-")[0].split(".")[:2]
    return int(major), int(minor)


def test_fallbacks_are_probed_and_said_once(kernel, no_leaks):
    """With the default 64 KiB RLIMIT_MEMLOCK of older distributions, pytracer runs on every kernel: where
    BPF memory is charged to that limit (before 5.11) it lifts it and says so; before 5.15 it attaches with
    the perf ioctl and says so; before 6.3 owners come from system calls, said so. Each note exactly once,
    and only where the kernel needs it (the test's oracle is the kernel version; pytracer's is its probes)."""
    def low_memlock():
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 << 10, 64 << 10))

    # -P 1: no connection of the machine's other traffic is shown (nor lost) while the notes are counted
    r = subprocess.run(pytracer_cmd("-d", "0.5", "--no-cache", "-P", "1"), env=run_env(), capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, preexec_fn=low_memlock, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("pytracer: note:")]
    assert len(notes) == len(set(notes)), r.stderr
    release = _release()
    expect = {
        "RLIMIT_MEMLOCK": release < (5, 11),
        "perf-event links": release < (5, 15),
        "sock:sock_send_length": release < (6, 3),
    }
    assert expect["sock:sock_send_length"] == (not have_sock_length_tracepoints())
    for key, wanted in expect.items():
        said = [n for n in notes if key in n]
        assert len(said) == (1 if wanted else 0), (key, release, r.stderr)


def test_lockdown_confidentiality(no_leaks, fresh_probes, monkeypatch, capsys, tmp_path):
    """Lockdown in confidentiality mode: tracefs is refused, and BPF may not read kernel memory. Booted so
    (`make vmtest-lockdown`: lockdown=confidentiality on the guest's command line) the real kernel says
    no; elsewhere the lockdown file and an unusable tracefs are mocked. The same assertions either way."""
    from pytracer import attach

    real = features.lockdown_mode() == "confidentiality"
    expected = os.environ.get("PYTRACER_EXPECT_LOCKDOWN")
    if expected:
        assert features.lockdown_mode() == expected, "the kernel was meant to boot with lockdown=" + expected
    if not real:
        lock = tmp_path / "lockdown"
        lock.write_text("none integrity [confidentiality]\n")
        monkeypatch.setattr(features, "LOCKDOWN", str(lock))
        monkeypatch.setattr(attach, "TRACEFS_CANDIDATES", (str(tmp_path / "no-tracefs"),))
    monkeypatch.setattr(attach, "_tracefs", None)
    status, err = run_cli(capsys)
    line = one_sentence(err)
    assert status == 3, err
    assert "lockdown is in confidentiality mode" in line and "lockdown=confidentiality" in line, line
