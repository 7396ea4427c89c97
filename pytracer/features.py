"""Kernel feature probes, and the notes that say which fallback this kernel needs.

A probe asks the kernel itself (a tiny map or program), never the version number: distribution kernels
backport features. Probes run only where their answer changes what pytracer does, and each answer is kept
for the life of the process. A fallback is said once: `note()` records it, `take_notes()` hands each note
to the command line exactly once (it prints them on stderr as `pytracer: note: ...`).
"""
import errno
import os
import struct

from . import abi
from .syscall import Buffer, bpf

_notes = []
_said = set()
_cache = {}


def note(text):
    """Record that a fallback is in use (each text once per process)."""
    if text not in _said:
        _said.add(text)
        _notes.append(text)


def take_notes():
    """The notes recorded since the last call."""
    out = list(_notes)
    del _notes[:]
    return out


def _probe(name, fn):
    if name not in _cache:
        _cache[name] = fn()
    return _cache[name]


def have_ringbuf():
    """BPF_MAP_TYPE_RINGBUF (Linux 5.8): create a one-page ring buffer. An older kernel does not know the
    map type and answers EINVAL."""
    def probe():
        page = os.sysconf("SC_PAGE_SIZE")
        try:
            fd = bpf(abi.Cmd.MAP_CREATE, struct.pack("<IIII", abi.MapType.RINGBUF, 0, 0, page))
        except OSError as e:
            return e.errno != errno.EINVAL     # EPERM and the like say nothing about the map type
        os.close(fd)
        return True

    return _probe("ringbuf", probe)


# r0 = bpf_ktime_get_coarse_ns(); r0 = 0; exit
_COARSE_NS_PROG = struct.pack("<BBhiBBhiBBhi", 0x85, 0, 0, abi.BPF_FUNC_KTIME_GET_COARSE_NS,
                              0xB7, 0, 0, 0, 0x95, 0, 0, 0)


def have_memcg_accounting():
    """Whether the kernel charges BPF memory to the memory cgroup (Linux 5.11) instead of RLIMIT_MEMLOCK.
    Both came in 5.11 together with the bpf_ktime_get_coarse_ns helper, so a program that calls that
    helper loads exactly where the limit no longer applies (the probe libbpf uses too). A socket filter:
    tracing programs may not call that helper on any kernel."""
    def probe():
        insns = Buffer(_COARSE_NS_PROG)
        lic = Buffer(b"GPL\0")
        attr = struct.pack("<IIQQ", abi.ProgType.SOCKET_FILTER, len(_COARSE_NS_PROG) // 8, insns.addr, lic.addr)
        try:
            fd = bpf(abi.Cmd.PROG_LOAD, attr)
        except OSError as e:
            # EINVAL: unknown helper, an older kernel. Anything else (EPERM, ...): assume the old rules,
            # raising the limit is harmless where it is not needed.
            return False if e.errno == errno.EINVAL else None
        os.close(fd)
        return True

    return _probe("memcg", probe)


def raise_memlock_rlimit():
    """Kernels without memory-cgroup accounting of BPF memory (before 5.11) charge maps and programs to
    RLIMIT_MEMLOCK, which is far too small for a 4 MiB ring buffer by default: lift it there (root may)."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY or have_memcg_accounting():
        return
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        return
    note("this kernel charges BPF memory to RLIMIT_MEMLOCK (no memory-cgroup accounting before Linux 5.11): "
         "pytracer lifted the limit")


LOCKDOWN = "/sys/kernel/security/lockdown"


def lockdown_mode():
    """The kernel's lockdown mode ("none", "integrity", "confidentiality"), or None if securityfs does not
    say (not mounted, or no lockdown LSM)."""
    try:
        with open(LOCKDOWN) as f:
            text = f.read()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def refuse_confidentiality_lockdown():
    """Lockdown in confidentiality mode forbids tracefs and BPF programs that read kernel memory: nothing
    pytracer could fall back to. Called where tracefs turns out unusable, to name the real cause."""
    if lockdown_mode() == "confidentiality":
        from .errors import KernelFeatureError

        raise KernelFeatureError(
            "kernel lockdown is in confidentiality mode (lockdown=confidentiality on the kernel command line or "
            "CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY=y), which forbids tracefs and BPF programs that read "
            "kernel memory, so pytracer cannot run; integrity mode (lockdown=integrity) allows it")
