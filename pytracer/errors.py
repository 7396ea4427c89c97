"""Every error pytracer raises on purpose derives from PytracerError, and carries what a caller needs to
decide on (fields), not only a message: decide on the type and the fields, never on the text.

The CLI prints ``str(err)`` and exits with ``err.exit_status``; anything else escaping is a bug.
Library code never prints: warnings go to the ``pytracer`` logger (see ``warn``), which the CLI shows.
"""
_warning_handlers = []


def warn(message):
    """A warning for the user. Library code never prints: with a handler installed (`on_warning`; the CLI
    installs one that prints ``pytracer: warning: ...``) it gets the message, otherwise it goes to the
    ``pytracer`` logger like any logging record (logging is imported only then: it costs start-up time)."""
    if _warning_handlers:
        for handler in _warning_handlers:
            handler(message)
        return
    import logging

    logging.getLogger("pytracer").warning("%s", message)


def on_warning(handler):
    """Send warnings to `handler(message)` instead of the logger; returns a function that undoes it."""
    _warning_handlers.append(handler)
    return lambda: _warning_handlers.remove(handler)


class PytracerError(Exception):
    """Base class: a clear, user-facing message; never a traceback."""

    exit_status = 1


class ObjectFormatError(PytracerError):
    """A BPF object file (ELF, BTF, BTF.ext) is truncated, corrupt or uses something unsupported.

    `path` is the object (None until the reader that knows it fills it in), `section` the ELF section at
    fault when there is one."""

    def __init__(self, message, path=None, section=None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.section = section

    def __str__(self):
        return f"{self.path}: {self.message}" if self.path else self.message


class BTFError(ObjectFormatError):
    """BTF (object or kernel) could not be parsed."""


class CORERelocationError(PytracerError):
    """A CO-RE relocation could not be satisfied against the running kernel's BTF."""


class KernelFeatureError(PytracerError):
    """The running kernel lacks something we need: `feature` names it and `since` is the Linux release
    that brings it (None when no single release does)."""

    exit_status = 3

    def __init__(self, message, feature=None, since=None):
        super().__init__(message)
        self.feature = feature
        self.since = since


class PermissionError_(PytracerError):
    """Missing privileges; `missing` lists the capabilities this process lacks (empty: it has them, and
    something else, such as lockdown, forbids it)."""

    exit_status = 4

    def __init__(self, message, missing=()):
        super().__init__(message)
        self.missing = list(missing)


class VerifierError(PytracerError):
    """The kernel verifier rejected `program` (in ELF section `section`); carries the log, annotated with
    C source lines."""

    def __init__(self, message, log="", program=None, section=None):
        super().__init__(message)
        self.log = log
        self.program = program
        self.section = section

    def __str__(self):
        base = super().__str__()
        return f"{base}\n{self.log}" if self.log else base


class SyscallError(PytracerError):
    """A bpf()/perf_event_open()/ioctl call failed in a way we did not expect."""

    def __init__(self, message, errno_=0):
        super().__init__(message)
        self.errno = errno_


class AttachError(PytracerError):
    """A program could not be attached (missing tracepoint, tracefs unavailable, ...); `target` is what it
    was to be attached to, when known."""

    def __init__(self, message, target=None):
        super().__init__(message)
        self.target = target


class CacheError(PytracerError):
    """The on-disk cache is unsafe (writable by others) or unusable."""
