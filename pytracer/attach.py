"""Attaching loaded programs: classic tracepoints (tracefs id + perf_event_open, then a BPF perf link or the
older ioctl), and BTF-typed / raw tracepoints (BPF_RAW_TRACEPOINT_OPEN)."""
import errno
import os
import threading

from . import abi, features, syscall, uapi
from .errors import AttachError, KernelFeatureError, PytracerError
from .syscall import Buffer, bpf, ioctl, perf_event_open, privilege_error, raise_from_oserror

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_tracefs = None


def _has_events(path):
    return os.path.isdir(os.path.join(path, "events"))


def tracefs(mount=True):
    """Path of a mounted tracefs; mounts it at /sys/kernel/tracing when neither location is mounted."""
    global _tracefs
    if _tracefs:
        return _tracefs
    for p in TRACEFS_CANDIDATES:
        if _has_events(p):
            _tracefs = p
            return p
    if mount and os.path.isdir(TRACEFS_CANDIDATES[0]):
        err = syscall.mount("nodev", TRACEFS_CANDIDATES[0], "tracefs")
        if err == 0 and _has_events(TRACEFS_CANDIDATES[0]):
            _tracefs = TRACEFS_CANDIDATES[0]
            return _tracefs
        hint = os.strerror(err) if err != 0 else "mounted but has no events directory"
    else:
        hint = "no /sys/kernel/tracing directory"
    features.refuse_confidentiality_lockdown()
    raise AttachError(
        f"tracefs is not mounted and could not be mounted ({hint}). Mount it with: "
        f"mount -t tracefs nodev /sys/kernel/tracing")


def tracepoint_exists(target):
    """True if tracepoint 'category/name' exists on this kernel."""
    return os.path.exists(os.path.join(tracefs(), "events", target, "id"))


def tracepoint_id(target):
    path = os.path.join(tracefs(), "events", target, "id")
    try:
        with open(path) as f:
            return int(f.read())
    except FileNotFoundError:
        raise AttachError(f"tracepoint {target.replace('/', ':')} does not exist on this kernel "
                          f"({os.uname().release})", target=target) from None
    except PermissionError:
        raise privilege_error(f"reading {path}", errno.EACCES) from None
    except (OSError, ValueError) as e:
        raise AttachError(f"cannot read the id of tracepoint {target}: {e}") from None


class Link:
    """An attachment. Closing it detaches the program (every fd it holds is released, last opened first).

    `slow_fds` are the perf events of classic tracepoints. Detaching a program from one waits for the
    tracepoint's running callers (an RCU grace period; an RCU-tasks-trace one on the faultable syscall
    tracepoints of Linux 6.13+, 25-70 ms each, one after the other), which is why such a link can be left
    to another process (see `release_in_background`)."""

    def __init__(self, description, fds, slow_fds=()):
        self.description = description
        self.fds = list(fds)
        self.slow_fds = set(slow_fds)

    def close(self, keep_slow=None):
        """Close every fd; or, given a list `keep_slow` and a link with slow fds, move all its fds there."""
        if keep_slow is not None and self.slow_fds:
            keep_slow.extend(reversed(self.fds))
            self.fds.clear()
        while self.fds:
            fd = self.fds.pop()
            try:
                os.close(fd)
            except OSError:
                pass


def release_in_background(fds):
    """Close `fds` in a short-lived grandchild process instead of waiting here: for a
    command's exit, whose process is then gone as soon as it has dropped its own references. The grandchild
    starts only once this process and the intermediate child have dropped theirs (the end of a pipe tells
    it), so that the last reference, the one that waits, is its own; it holds nothing else (not stdout: a
    reader of the pipe sees its end at once), leaves the terminal's process group (a second Ctrl-C is not
    for it) and is reaped by init. Where fork fails, the fds are closed here."""
    if not fds:
        return
    try:
        r, w = os.pipe()
        pid = os.fork()
    except OSError:
        _close_all(fds)
        return
    if pid == 0:
        try:
            if os.fork() == 0:
                os.setsid()
                low = 0
                for fd in sorted(set(fds) | {r}):
                    os.closerange(low, fd)
                    low = fd + 1
                os.closerange(low, os.sysconf("SC_OPEN_MAX"))
                os.read(r, 1)           # end of file: every other copy is gone
                os.close(r)
                # at once, not one after the other: concurrent detaches share grace periods
                closers = [threading.Thread(target=_close_all, args=([fd],)) for fd in fds]
                for t in closers:
                    t.start()
                for t in closers:
                    t.join()
        finally:
            os._exit(0)
    os.close(r)
    _close_all(fds)
    os.close(w)
    os.waitpid(pid, 0)


def _close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


_perf_link_supported = None


def attach_tracepoint(program, target):
    """Attach a BPF_PROG_TYPE_TRACEPOINT program to tracepoint 'category/name'."""
    global _perf_link_supported
    tp_id = tracepoint_id(target)
    attr = uapi.PERF_EVENT_ATTR.pack(type=abi.PERF_TYPE_TRACEPOINT, size=abi.PERF_ATTR_SIZE_VER5, config=tp_id,
                                     sample_period=1, sample_type=abi.PERF_SAMPLE_RAW,
                                     wakeup_events=1).ljust(abi.PERF_ATTR_SIZE_VER5, b"\0")
    try:
        # pid -1, cpu 0: for tracepoints the BPF program runs on every CPU; one event is enough.
        pfd = perf_event_open(attr, -1, 0, -1, abi.PERF_FLAG_FD_CLOEXEC)
    except OSError as e:
        raise_from_oserror(f"perf_event_open for tracepoint {target}", e)
    try:
        if _perf_link_supported is not False:
            try:
                lfd = bpf(abi.Cmd.LINK_CREATE, uapi.ATTR_LINK_CREATE.pack(
                    upto="flags", prog_fd=program.fd, target_fd=pfd, attach_type=abi.AttachType.PERF_EVENT))
                _perf_link_supported = True
                return Link(f"tracepoint {target}", [pfd, lfd], slow_fds=[pfd])
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, abi.ENOTSUPP):
                    raise
                _perf_link_supported = False  # kernels before 5.15: fall back to the ioctl
                features.note("this kernel has no BPF perf-event links (Linux < 5.15): tracepoint programs are "
                              "attached with the perf ioctl instead")
        ioctl(pfd, abi.PERF_EVENT_IOC_SET_BPF, program.fd)
        ioctl(pfd, abi.PERF_EVENT_IOC_ENABLE, 0)
        return Link(f"tracepoint {target}", [pfd], slow_fds=[pfd])
    except OSError as e:
        os.close(pfd)
        if e.errno in (errno.EPERM, errno.EACCES):
            raise privilege_error(f"attaching to tracepoint {target}", e.errno) from None
        raise AttachError(f"attaching {program.name} to tracepoint {target}: {os.strerror(e.errno)}",
                          target=target) from None
    except PytracerError:
        os.close(pfd)
        raise


def attach_raw_tracepoint(program, target=None):
    """Attach a raw tracepoint program (target name given) or a tp_btf program (target from its BTF id)."""
    name = Buffer(target.encode() + b"\0") if target else None
    try:
        fd = bpf(abi.Cmd.RAW_TRACEPOINT_OPEN, uapi.ATTR_RAW_TRACEPOINT_OPEN.pack(
            name=name.addr if name else 0, prog_fd=program.fd))
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            raise privilege_error(f"attaching {program.name}", e.errno) from None
        if e.errno == errno.ENOENT:
            raise AttachError(f"raw tracepoint {target} does not exist on this kernel", target=target) from None
        if e.errno == errno.EINVAL:
            raise KernelFeatureError(f"this kernel cannot attach {program.name} (raw tracepoints: Linux 4.17+, "
                                     f"tp_btf: 5.5+)", feature=f"{program.spec.attach_kind} programs") from None
        raise AttachError(f"attaching {program.name}: {os.strerror(e.errno)}") from None
    return Link(f"{program.spec.attach_kind} {program.spec.attach_target}", [fd])


def attach(program):
    kind, target = program.spec.attach_kind, program.spec.attach_target
    if kind == "tracepoint":
        return attach_tracepoint(program, target)
    if kind == "raw_tracepoint":
        return attach_raw_tracepoint(program, target)
    if kind == "tp_btf":
        return attach_raw_tracepoint(program, None)
    raise AttachError(f"do not know how to attach {program.name} ({program.spec.section})")
