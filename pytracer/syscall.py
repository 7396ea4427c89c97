"""Raw system calls: bpf(2), perf_event_open(2) and ioctl(2) through ctypes.

Each bpf command gets its attribute block packed only up to the last field it uses: the kernel accepts a
shorter `union bpf_attr` (it zero-fills the rest), and an older kernel rejects a longer one with unknown,
non-zero tail bytes, so sending just what we mean is both the fastest and the most portable choice.
"""
import ctypes
import errno
import os

from . import abi
from .errors import KernelFeatureError, PermissionError_, SyscallError

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_ioctl = _libc.ioctl
_ioctl.restype = ctypes.c_int

NR_BPF = abi.SYSCALLS.get("bpf")
NR_PERF_EVENT_OPEN = abi.SYSCALLS.get("perf_event_open")


def _need(nr, name):
    if nr is None:
        raise KernelFeatureError(f"pytracer does not know the {name}() system call number on {abi.MACHINE}")
    return nr


class Buffer:
    """A C buffer that stays alive as long as the Python object; `.addr` is what bpf_attr points to."""

    __slots__ = ("buf", "addr", "size")

    def __init__(self, data_or_size):
        if isinstance(data_or_size, int):
            self.buf = ctypes.create_string_buffer(max(data_or_size, 1))
            self.size = data_or_size
        else:
            self.buf = ctypes.create_string_buffer(bytes(data_or_size), max(len(data_or_size), 1))
            self.size = len(data_or_size)
        self.addr = ctypes.addressof(self.buf)

    @property
    def raw(self):
        return self.buf.raw[: self.size]


def bpf(cmd, attr):
    """Run bpf(cmd, attr). `attr` is bytes (or a bytearray updated in place). Returns the result or raises
    OSError with the errno (callers turn that into a PytracerError with context)."""
    nr = _need(NR_BPF, "bpf")
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    ret = _syscall(nr, ctypes.c_int(int(cmd)), buf, ctypes.c_uint(len(attr)))
    if isinstance(attr, bytearray):
        attr[:] = buf.raw
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({abi.Cmd(cmd).name}): {os.strerror(err)}")
    return ret


def perf_event_open(attr_bytes, pid, cpu, group_fd, flags):
    nr = _need(NR_PERF_EVENT_OPEN, "perf_event_open")
    buf = ctypes.create_string_buffer(attr_bytes, len(attr_bytes))
    ret = _syscall(nr, buf, ctypes.c_int(pid), ctypes.c_int(cpu), ctypes.c_int(group_fd), ctypes.c_ulong(flags))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open: {os.strerror(err)}")
    return ret


def mount(source, target, fstype):
    """mount(2) with no flags or data; returns 0 or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(0), None)
    return ctypes.get_errno() if rc != 0 else 0


def ioctl(fd, request, arg=0):
    ret = _ioctl(ctypes.c_int(fd), ctypes.c_ulong(request), ctypes.c_ulong(arg))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ioctl({request:#x}): {os.strerror(err)}")
    return ret


# --- capability and privilege helpers --------------------------------------------------------------
def effective_caps():
    """The effective capability set of this process, as an int (from /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def missing_capabilities():
    """Names of the capabilities we lack for loading and attaching tracing programs (empty if none)."""
    caps = effective_caps()
    if caps & (1 << abi.CAP_SYS_ADMIN):
        return []
    missing = []
    if not caps & (1 << abi.CAP_BPF):
        missing.append("CAP_BPF")
    if not caps & (1 << abi.CAP_PERFMON):
        missing.append("CAP_PERFMON")
    return missing


def privilege_error(what, err):
    """Turn EPERM/EACCES from the kernel into a message that names what is missing."""
    missing = missing_capabilities()
    if missing:
        return PermissionError_(
            f"{what}: permission denied ({os.strerror(err)}). pytracer needs root, or CAP_BPF and "
            f"CAP_PERFMON (or CAP_SYS_ADMIN); this process lacks {' and '.join(missing)}. "
            f"Run it with sudo.", missing=missing)
    return PermissionError_(
        f"{what}: permission denied ({os.strerror(err)}) although this process has the capabilities; "
        f"kernel lockdown, a security module or kernel.perf_event_paranoid may forbid it.")


def raise_from_oserror(what, exc):
    """Map an OSError from a syscall to the project's error types."""
    err = exc.errno or 0
    if err in (errno.EPERM, errno.EACCES):
        raise privilege_error(what, err) from None
    if err == errno.ENOSYS:
        raise KernelFeatureError(f"{what}: this kernel has no bpf() system call (CONFIG_BPF_SYSCALL)",
                                 feature="bpf() system call") from None
    raise SyscallError(f"{what}: {os.strerror(err)}", err) from None
