"""BPF iterators (iter/<target> programs, BPFObject.run_iterator) on the real kernel.

The fixture, tests/bpf/iter_fixture.bpf.c, is compiled here with clang-16 (it is not package data). What is
asserted is what a user would check by hand: this process's own socket fds with their ports and states, a
listening port in state LISTEN, this process and one of its threads in the task list, task counts against
/proc; and that nothing (no link, no fd) is left behind, also when reading fails half-way.
"""
import enum
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import threading

import pytest

from conftest import ROOT, assert_nothing_left
from pytracer import abi, elf, inventory, iterator, program as program_mod
from pytracer.errors import AttachError, KernelFeatureError, PytracerError
from pytracer.loader import BPFObject, prepare

FIXTURE_C = os.path.join(ROOT, "tests", "bpf", "iter_fixture.bpf.c")
class TCPState(enum.IntEnum):
    """include/net/tcp_states.h"""
    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12


CLANG = shutil.which("clang-16")
BPFTOOL = shutil.which("bpftool")
ITERATORS = {"count_tasks": "task", "list_tasks": "task", "socket_fds": "task_file", "tcp_sockets": "tcp"}
TCP_RECORD = struct.Struct("<HHHBBI")    # struct tcp_record: family, lport, dport, state, pad, uid


def _compile(out, *defines):
    if CLANG is None:
        pytest.skip("clang-16 is not installed: cannot build tests/bpf/iter_fixture.bpf.c")
    if os.uname().machine != "x86_64":
        pytest.skip("the fixture's tracepoint programs use x86_64 syscall numbers")
    cmd = [CLANG, "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-D__TARGET_ARCH_x86",
           "-I/usr/include/x86_64-linux-gnu", "-I" + os.path.join(ROOT, "bpf_bytecode"), "-Wall",
           "-Wno-unused-function", *defines, "-c", FIXTURE_C, "-o", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
    return out


@pytest.fixture(scope="module")
def fixture_obj(tmp_path_factory):
    return _compile(str(tmp_path_factory.mktemp("iter") / "iter_fixture.bpf.o"))


@pytest.fixture(scope="module")
def missing_obj(tmp_path_factory):
    return _compile(str(tmp_path_factory.mktemp("iter") / "iter_missing.bpf.o"), "-DMISSING_TARGET")


def _open(path, **kw):
    kw.setdefault("use_cache", False)
    return BPFObject(path, rodata={"target_tgid": os.getpid()}, **kw)


def _own_socket_fds():
    """fd -> inode of every socket this process holds, from /proc (the independent view)."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue    # the directory fd of the listing itself
        if target.startswith("socket:["):
            out[int(fd)] = int(target[8:-1])
    return out


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


def _u64(m, key):
    return struct.unpack("<Q", m.lookup(struct.pack("<I", key)))[0]


# --- the object: sections, attach ids, the cache ---------------------------------------------------------


def test_iter_sections_become_tracing_programs(fixture_obj):
    spec = elf.read_object(fixture_obj)
    for name, target in ITERATORS.items():
        p = spec.programs[name]
        assert (p.prog_type, p.expected_attach_type) == (abi.ProgType.TRACING, abi.AttachType.TRACE_ITER)
        assert (p.attach_kind, p.attach_target) == ("iter", target)
    assert abi.AttachType.TRACE_ITER == 28 and abi.Cmd.ITER_CREATE == 33  # include/uapi/linux/bpf.h
    assert {p.attach_kind for p in spec.programs.values()} == {"iter", "tracepoint", "tp_btf", "raw_tracepoint"}


def test_attach_btf_id_is_the_vmlinux_function(kernel, fixture_obj):
    """The id is that of the BTF FUNC bpf_iter_<target>, as bpftool lists it (not the STRUCT bpf_iter_task
    of the open-coded iterator kfuncs, which has the same name as the task iterator's FUNC)."""
    if BPFTOOL is None:
        pytest.skip("bpftool is not installed")
    dump = subprocess.run([BPFTOOL, "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "raw"],
                          capture_output=True, text=True, check=True).stdout
    funcs = {}
    for line in dump.splitlines():
        if "] FUNC 'bpf_iter_" in line:
            funcs[line.split("'")[1]] = int(line[1:line.index("]")])
    spec, _ = prepare(fixture_obj, use_cache=False)
    for name, target in ITERATORS.items():
        assert spec.programs[name].attach_btf_id == funcs["bpf_iter_" + target], name


def test_cached_spec_keeps_iterators(no_leaks, fixture_obj, tmp_path, monkeypatch):
    """The relocated spec read back from the cache still knows its iterators and their attach ids."""
    monkeypatch.setenv("PYTRACER_CACHE_DIR", str(tmp_path / "cache"))
    os.chmod(tmp_path, 0o700)
    outputs = []
    for attempt in range(2):
        with _open(fixture_obj, use_cache=True, programs=["socket_fds"]) as obj:
            outputs.append(obj.run_iterator("socket_fds"))
        (entry,) = os.listdir(tmp_path / "cache")
    assert outputs[0] == outputs[1]
    with open(tmp_path / "cache" / entry) as f:
        cached = json.load(f)["spec"]["programs"]["socket_fds"]
    fresh, _ = prepare(fixture_obj, use_cache=False)
    assert (cached["attach_kind"], cached["attach_target"]) == ("iter", "task_file")
    assert cached["attach_btf_id"] == fresh.programs["socket_fds"].attach_btf_id > 0


# --- what the iterators see ----------------------------------------------------------------------------------


def test_task_file_lists_own_socket_fds(no_leaks, fixture_obj):
    with socket.socket() as listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        a, b = socket.socketpair()
        try:
            with _open(fixture_obj, programs=["socket_fds"]) as obj:
                expected = _own_socket_fds()
                out = obj.run_iterator("socket_fds").decode()
            rows = [tuple(int(x) for x in ln.split()) for ln in out.splitlines()]
            by_fd = {fd: (fam, lport, state) for tgid, fd, fam, lport, state in rows}
            assert {r[0] for r in rows} == {os.getpid()}
            assert sorted(by_fd) == sorted(expected), (out, expected)
            assert by_fd[listener.fileno()] == (socket.AF_INET, port, TCPState.LISTEN)
            assert by_fd[client.fileno()] == (socket.AF_INET, client.getsockname()[1],
                                              TCPState.ESTABLISHED)
            assert by_fd[server.fileno()] == (socket.AF_INET, port, TCPState.ESTABLISHED)
            assert by_fd[udp.fileno()][0] == socket.AF_INET
            assert by_fd[a.fileno()][0] == by_fd[b.fileno()][0] == socket.AF_UNIX
        finally:
            for s in (client, server, a, b):
                s.close()


def test_tcp_iterator_finds_listening_port(no_leaks, fixture_obj):
    with socket.socket() as listener, socket.socket(socket.AF_INET6) as listener6:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        listener6.bind(("::1", 0))
        listener6.listen()
        port6 = listener6.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            with _open(fixture_obj, programs=["tcp_sockets"]) as obj:
                out = obj.run_iterator("tcp_sockets")
            assert len(out) % TCP_RECORD.size == 0
            recs = [r[:4] + r[5:] for r in TCP_RECORD.iter_unpack(out)]
            cport = client.getsockname()[1]
            assert (socket.AF_INET, port, 0, TCPState.LISTEN, os.getuid()) in recs
            assert (socket.AF_INET6, port6, 0, TCPState.LISTEN, os.getuid()) in recs
            assert (socket.AF_INET, cport, port, TCPState.ESTABLISHED, os.getuid()) in recs
            # the accepted end, not yet accept()ed, is an established socket with the ports swapped
            assert (socket.AF_INET, port, cport, TCPState.ESTABLISHED, os.getuid()) in recs


def _proc_counts(skip=()):
    procs = threads = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) in skip:
            continue
        try:
            threads += len(os.listdir(f"/proc/{pid}/task"))
            procs += 1
        except OSError:
            pass    # exited meanwhile
    return procs, threads


def test_task_iterator_counts_match_proc(no_leaks, fixture_obj):
    """count_tasks only updates a map: its output is empty. Its counts agree with /proc, up to the tasks
    that start or exit in between.  Some kernels hide pid 1 and its threads from task iterators (a
    sandbox's 6.18: bpftool's iterators do not see it either); /proc is counted without it there."""
    with _open(fixture_obj, programs=["count_tasks", "list_tasks"]) as obj:
        listed = obj.run_iterator("list_tasks").decode().splitlines()[1:]
        skip = () if any(ln.startswith("1 ") for ln in listed) else (1,)
        before = _proc_counts(skip)
        out = obj.run_iterator("count_tasks")
        after = _proc_counts(skip)
        threads, procs = _u64(obj.maps["task_counts"], 0), _u64(obj.maps["task_counts"], 1)
    assert out == b""
    for seen, (lo, hi) in ((procs, sorted([before[0], after[0]])), (threads, sorted([before[1], after[1]]))):
        slack = max(5, hi // 20)
        assert lo - slack <= seen <= hi + slack, (procs, threads, before, after)
    assert 0 < procs <= threads


def test_task_iterator_lists_this_process_and_its_thread(no_leaks, fixture_obj):
    started, stop = threading.Event(), threading.Event()
    tids = []

    def worker():
        tids.append(threading.get_native_id())
        started.set()
        stop.wait()

    t = threading.Thread(target=worker)
    t.start()
    started.wait()
    try:
        with _open(fixture_obj, programs=["list_tasks"]) as obj:
            out = obj.run_iterator("list_tasks").decode()
    finally:
        stop.set()
        t.join()
    lines = out.splitlines()
    assert lines[0] == "tgid pid comm"      # printed once, for the object with seq_num 0
    rows = {(int(tgid), int(pid)): comm for tgid, pid, comm in (ln.split(" ", 2) for ln in lines[1:])}
    with open("/proc/self/comm") as f:
        comm = f.read().rstrip("\n")
    pid = os.getpid()
    assert rows[(pid, pid)] == comm
    assert (pid, tids[0]) in rows
    assert len(rows) == len(lines) - 1      # every task once


def _release():
    return tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])


def test_link_info_limits_task_iterator_to_one_process(no_leaks, fixture_obj):
    """iterator.task_link_info(pid=...) makes the kernel walk one process's tasks only (Linux 6.1+); earlier
    kernels refuse it, which is a missing kernel feature naming 6.1."""
    if _release() < (6, 1):
        with _open(fixture_obj, programs=["list_tasks"]) as obj:
            with pytest.raises(KernelFeatureError) as e:
                obj.run_iterator("list_tasks", iterator.task_link_info(pid=os.getpid()))
        assert e.value.since == "6.1"
        return
    started, stop = threading.Event(), threading.Event()
    t = threading.Thread(target=lambda: (started.set(), stop.wait()))
    t.start()
    started.wait()
    try:
        with _open(fixture_obj, programs=["list_tasks"]) as obj:
            mine = obj.run_iterator("list_tasks", iterator.task_link_info(pid=os.getpid())).decode()
            one = obj.run_iterator("list_tasks", iterator.task_link_info(tid=t.native_id)).decode()
    finally:
        stop.set()
        t.join()
    pid = os.getpid()
    rows = {tuple(map(int, ln.split()[:2])) for ln in mine.splitlines()[1:]}
    assert rows == {(pid, int(tid)) for tid in os.listdir("/proc/self/task")} | {(pid, t.native_id)}
    assert one.splitlines()[1:] and {tuple(map(int, ln.split()[:2])) for ln in one.splitlines()[1:]} == \
        {(pid, t.native_id)}
    with pytest.raises(PytracerError, match="not both"):
        iterator.task_link_info(pid=1, tid=1)


# --- lifetime: nothing left behind -----------------------------------------------------------------------------


def test_run_iterator_leaves_no_link_or_fd(no_leaks, fixture_obj):
    with _open(fixture_obj, programs=["socket_fds", "count_tasks"]) as obj:
        links, fds = set(inventory.ids("link")), _open_fds()
        for _ in range(3):
            obj.run_iterator("socket_fds")
            assert obj.run_iterator("count_tasks") == b""
        assert set(inventory.ids("link")) <= links
        assert _open_fds() == fds
        assert _u64(obj.maps["task_counts"], 0) > 0


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError(errno.EIO, "injected")])
def test_exception_while_reading_closes_everything(no_leaks, fixture_obj, monkeypatch, exc):
    """A failure (or Ctrl-C) after the first chunk still closes the iterator fd and the link."""
    real_read = os.read
    calls = []

    def failing_read(fd, n):
        calls.append(fd)
        if len(calls) > 1:
            raise exc
        return real_read(fd, 16)    # a short read: the iterator has more to give

    with _open(fixture_obj, programs=["list_tasks"]) as obj:
        links, fds = set(inventory.ids("link")), _open_fds()
        monkeypatch.setattr(os, "read", failing_read)
        with pytest.raises(KeyboardInterrupt if exc is KeyboardInterrupt else PytracerError):
            obj.run_iterator("list_tasks")
        monkeypatch.undo()
        assert len(calls) == 2
        assert set(inventory.ids("link")) <= links
        assert _open_fds() == fds
        assert obj.run_iterator("list_tasks").startswith(b"tgid pid comm\n")   # and it runs again


def test_short_reads_and_eagain_are_retried(no_leaks, fixture_obj, monkeypatch):
    """The output does not depend on the read size; EAGAIN (1M objects without output) means read again."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with _open(fixture_obj, programs=["socket_fds"]) as obj:
            whole = obj.run_iterator("socket_fds")
            real_read, calls = os.read, []

            def small_read(fd, n):
                calls.append(n)
                if len(calls) == 1:
                    raise BlockingIOError(errno.EAGAIN, "injected")
                return real_read(fd, 7)

            monkeypatch.setattr(os, "read", small_read)
            pieces = obj.run_iterator("socket_fds")
            monkeypatch.undo()
        port = listener.getsockname()[1]
    assert pieces == whole and b" %d %d\n" % (port, TCPState.LISTEN) in whole
    assert len(calls) > len(whole) // 7


def test_iterator_object_runs_repeatedly(no_leaks, fixture_obj):
    """BPFObject.iterator() keeps one link for several runs; the object closes it."""
    with _open(fixture_obj, programs=["count_tasks"]) as obj:
        it = obj.iterator("count_tasks")
        assert it.read() == b"" and it.read() == b""
        first = _u64(obj.maps["task_counts"], 0)
        assert it.read() == b""
        assert _u64(obj.maps["task_counts"], 0) > first > 0
    assert it.fd == -1


# --- iterators next to ordinary programs; errors -------------------------------------------------------------


def test_attach_skips_iterators(no_leaks, fixture_obj):
    with _open(fixture_obj) as obj:
        links = obj.attach()
        assert sorted(link.description for link in links) == [
            "raw_tracepoint sys_enter", "tp_btf sys_enter", "tracepoint syscalls/sys_enter_getppid"]
        os.getppid()
        assert [_u64(obj.maps["getppid_calls"], i) for i in range(3)] == [1, 1, 1]
        # the iterators work in the same object, with the tracepoints attached
        assert b"\n%d %d " % (os.getpid(), os.getpid()) in obj.run_iterator("list_tasks")
        with pytest.raises(AttachError, match="run_iterator"):
            obj.attach(["list_tasks"])
        with pytest.raises(PytracerError, match="not a BPF iterator"):
            obj.run_iterator("tp_getppid")
        with pytest.raises(PytracerError, match="does not exist"):
            obj.run_iterator("no_such_program")
    with _open(fixture_obj, programs=["count_tasks"]) as obj:
        assert obj.attach() == []
        with pytest.raises(PytracerError, match="was not loaded"):
            obj.run_iterator("list_tasks")


def test_missing_iterator_target_is_a_kernel_feature_error(no_leaks, missing_obj):
    """A target this kernel lacks fails only the program that needs it, with a message, not a traceback."""
    with pytest.raises(KernelFeatureError, match=r"'no_such_target' .*iter/pytracer_no_such_target.*"
                                                 r"'pytracer_no_such_target', which this kernel"):
        _open(missing_obj)
    with _open(missing_obj, programs=lambda p: p.name != "no_such_target") as obj:
        assert obj.run_iterator("count_tasks") == b""


@pytest.mark.parametrize("target, version", [("task", "5.8"), ("task_file", "5.8"), ("tcp", "5.9"),
                                             ("udp", "5.9"), ("task_vma", "5.12")])
def test_missing_target_names_the_kernel_version(fixture_obj, target, version):
    """What an older kernel says: core.py finds no bpf_iter_<target> and leaves attach_btf_id 0."""
    spec = elf.read_object(fixture_obj).programs["count_tasks"]
    spec.attach_target, spec.section, spec.attach_btf_id = target, f"iter/{target}", 0
    with pytest.raises(KernelFeatureError) as e:
        program_mod.load(spec, {}, -1, "GPL")
    msg = str(e.value)
    assert f"iterator over '{target}'" in msg and f"Linux {version}" in msg and os.uname().release in msg
    assert iterator.SINCE[target] == version
