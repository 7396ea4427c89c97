"""BPF iterators (BPF_TRACE_ITER): a program in an `iter/<target>` section runs once for every kernel object
of its target (a task, an open file of a task, a TCP socket, ...) while user space reads an iterator fd, and
what it writes with bpf_seq_printf()/bpf_seq_write() is what the read returns.

An iterator is not a standing attachment.  A run is: BPF_LINK_CREATE (the iterator link binds the program to
its target), BPF_ITER_CREATE (a fresh seq_file over that link), read() to EOF, then close both.  `Iterator`
keeps the link so that it can run the program again; `run()` does one pass and leaves nothing behind.
"""
import errno
import os

from . import abi, uapi
from .errors import KernelFeatureError, PytracerError
from .syscall import Buffer, bpf, privilege_error, raise_from_oserror

# The first Linux release with each iterator target, for the message on an older kernel.
SINCE = {
    "task": "5.8", "task_file": "5.8", "bpf_map": "5.8", "netlink": "5.8", "ipv6_route": "5.8",
    "bpf_map_elem": "5.9", "bpf_sk_storage_map": "5.9", "tcp": "5.9", "udp": "5.9",
    "sockmap": "5.10", "task_vma": "5.12", "unix": "5.17", "ksym": "6.0", "cgroup": "6.1",
}
# A read() returns at most the kernel's seq_file buffer (8 pages); a larger buffer only costs memory.
READ_SIZE = 1 << 16


def _since(target):
    version = SINCE.get(target)
    return f"Linux {version}" if version else "a kernel that registers it"


def missing_target_error(spec):
    """The error for an iterator program whose target this kernel does not have (no vmlinux BTF function
    bpf_iter_<target>, or the kernel refused the program without a verifier log)."""
    return KernelFeatureError(
        f"program '{spec.name}' ({spec.section}) is a BPF iterator over '{spec.attach_target}', which this "
        f"kernel ({os.uname().release}) does not have: the {spec.attach_target} iterator needs "
        f"{_since(spec.attach_target)} with BTF", feature=f"{spec.attach_target} iterator",
        since=SINCE.get(spec.attach_target))


def task_link_info(pid=0, tid=0):
    """A union bpf_iter_link_info that limits a task, task_file or task_vma iterator to one process (pid)
    or one thread (tid).  Linux 6.1+ honours it; earlier kernels refuse it (KernelFeatureError, since 6.1):
    there, run without it and filter in the program."""
    if pid and tid:
        raise PytracerError("an iterator can be limited to a process or to a thread, not both")
    return uapi.ITER_LINK_INFO_TASK.pack(tid=tid, pid=pid)


def is_iterator(program):
    return program.spec.attach_kind == "iter"


class Iterator:
    """The iterator link of one loaded iter/ program; `read()` runs the program over its target once.
    Closing it (or the owning BPFObject) releases the link."""

    def __init__(self, program, link_info=b""):
        if not is_iterator(program):
            raise PytracerError(f"program {program.name} ({program.spec.section}) is not a BPF iterator")
        self.program = program
        self.description = f"iterator {program.spec.attach_target}"
        self.fd = _link_create(program, link_info)

    def read(self):
        """Run the program over every object of its target and return all it wrote (b"" if it wrote
        nothing, e.g. when it only updates maps)."""
        if self.fd < 0:
            raise PytracerError(f"{self.description} of {self.program.name} is closed")
        try:
            ifd = bpf(abi.Cmd.ITER_CREATE, uapi.ATTR_ITER_CREATE.pack(link_fd=self.fd))
        except OSError as e:
            raise_from_oserror(f"creating an iterator fd for {self.program.name}", e)
        try:
            return _read_to_eof(ifd, self.program)
        finally:
            os.close(ifd)

    def close(self):
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def run(program, link_info=b""):
    """One pass of an iterator program: link, read to EOF, and close everything, on every path."""
    with Iterator(program, link_info) as it:
        return it.read()


def _link_create(program, link_info):
    """BPF_LINK_CREATE with attach type BPF_TRACE_ITER; the link info (if any) is passed by pointer."""
    # Task, task_file and tcp iterators need no link info: then the attr stops after flags.
    info = Buffer(link_info) if link_info else None
    attr = uapi.ATTR_LINK_CREATE.pack(upto="iter_info_len" if info else "flags", prog_fd=program.fd,
                                      attach_type=abi.AttachType.TRACE_ITER, iter_info=info.addr if info else 0,
                                      iter_info_len=len(link_info))
    try:
        return bpf(abi.Cmd.LINK_CREATE, attr)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            raise privilege_error(f"creating the iterator link of {program.name}", e.errno) from None
        # (before 6.1 the kernel's link info union is smaller than a task's: a non-zero tail is E2BIG)
        if e.errno in (errno.EINVAL, errno.E2BIG) and link_info:
            raise KernelFeatureError(
                f"the kernel refused the link info for iterator {program.name} ({program.spec.section}); "
                f"limiting task iterators to one process or thread needs Linux 6.1",
                feature="task iterator link info", since="6.1") from None
        if e.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTSUP, abi.ENOTSUPP):
            raise KernelFeatureError(
                f"the kernel cannot create a link for iterator {program.name} ({program.spec.section}): "
                f"{os.strerror(e.errno)} (BPF iterators need Linux 5.8; the {program.spec.attach_target} "
                f"iterator needs {_since(program.spec.attach_target)})",
                feature=f"{program.spec.attach_target} iterator", since=SINCE.get(program.spec.attach_target)) from None
        raise_from_oserror(f"creating the iterator link of {program.name}", e)


def _read_to_eof(fd, program):
    """Everything the iterator writes.  Each read() returns at most one seq_file buffer (short reads are
    normal); EINTR is retried by os.read itself (PEP 475) unless a signal handler raises, and then the
    exception propagates to the caller, which closes the fds."""
    chunks = []
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            # EAGAIN: this read visited 1,000,000 objects without output; the next one continues
            continue
        except OSError as e:
            if e.errno == errno.E2BIG:
                raise PytracerError(
                    f"iterator {program.name} wrote more for one object than the kernel's seq_file buffer "
                    f"holds (8 pages)") from None
            raise_from_oserror(f"reading iterator {program.name}", e)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
