"""Standard output that never loses part of a write.

A signal that arrives while a blocking write(2) to a full pipe waits (a SIGTERM for a tracer whose reader
is slow) makes the call return short, and CPython's BufferedWriter (3.9 to 3.13 at least) then drops the
rest of a write larger than its buffer: a line cut in two and the lines after it gone, with nothing
reported.  Below the buffered layers, this raw stream's write() returns only once every byte is out."""
import io
import os
import sys


class WholeWrites(io.RawIOBase):
    """A file descriptor (not owned: closing this leaves it open) whose write() writes everything."""

    def __init__(self, fd):
        super().__init__()
        self._fd = fd

    def fileno(self):
        return self._fd

    def writable(self):
        return True

    def isatty(self):
        return os.isatty(self._fd)

    def write(self, data):
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            view = view[os.write(self._fd, view):]
        return total


def install():
    """Put sys.stdout (and its .buffer) on WholeWrites, keeping its encoding and buffering (-u and
    PYTHONUNBUFFERED included)."""
    old = sys.stdout
    try:
        fd = old.fileno()
    except (AttributeError, OSError, ValueError):
        return                  # not a file descriptor (an embedding's or a test's stream)
    old.flush()
    raw = WholeWrites(fd)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw), encoding=old.encoding, errors=old.errors,
                                  line_buffering=old.line_buffering,
                                  write_through=getattr(old, "write_through", False))
