"""Every error pytracer raises on purpose derives from PytracerError.

The CLI prints ``str(err)`` and exits with ``err.exit_status``; anything else escaping is a bug.
"""


class PytracerError(Exception):
    """Base class: a clear, user-facing message; never a traceback."""

    exit_status = 1


class ObjectFormatError(PytracerError):
    """A BPF object file (ELF, BTF, BTF.ext) is truncated, corrupt or uses something unsupported."""


class BTFError(ObjectFormatError):
    """BTF (object or kernel) could not be parsed."""


class CORERelocationError(PytracerError):
    """A CO-RE relocation could not be satisfied against the running kernel's BTF."""


class KernelFeatureError(PytracerError):
    """The running kernel lacks something we need (names the feature and the kernel version)."""

    exit_status = 3


class PermissionError_(PytracerError):
    """Missing privileges (names the capability)."""

    exit_status = 4


class VerifierError(PytracerError):
    """The kernel verifier rejected a program; carries the log, annotated with C source lines."""

    def __init__(self, message, log=""):
        super().__init__(message)
        self.log = log

    def __str__(self):
        base = super().__str__()
        return f"{base}\n{self.log}" if self.log else base


class SyscallError(PytracerError):
    """A bpf()/perf_event_open()/ioctl call failed in a way we did not expect."""

    def __init__(self, message, errno_=0):
        super().__init__(message)
        self.errno = errno_


class AttachError(PytracerError):
    """A program could not be attached (missing tracepoint, tracefs unavailable, ...)."""


class CacheError(PytracerError):
    """The on-disk cache is unsafe (writable by others) or unusable."""
