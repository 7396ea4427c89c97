"""Output writers: the base a tool's output formats build on. A tool's lines carry a connection object
whose constant columns are rendered once (`render`, cached per object) and reused; per line only what
changes is formatted, and a batch of lines is written with one write()."""
import json
import sys
import time

from .losses import LOSS_TEXT, describe_losses


class Writer:
    """Base of an output format: `header()`, `write(lines)`, `lost(count, reasons)`, `summary()` (what it
    prints when tracing ends: -d, Ctrl-C, SIGTERM); subclasses define `render(conn)` (the text reused for
    every line of that connection) and `write`."""

    # Rendered text of the connections seen lately; a close line drops its connection's (`forget`), so
    # this holds what is open, and at most MAX_CACHED of that (~1 KB each with the connection).
    MAX_CACHED = 4096
    loss_text = LOSS_TEXT       # a tool's wording of its loss reasons (see losses.py)

    def __init__(self, out):
        self.out = out
        self._conn_text = {}

    def rendered(self, conn):
        text = self._conn_text.get(conn)
        if text is None:
            if len(self._conn_text) >= self.MAX_CACHED:
                self._conn_text.clear()
            text = self._conn_text[conn] = self.render(conn)
        return text

    def forget(self, conn):
        """The connection is closed: its text is not needed again (if it is, it is rendered again)."""
        self._conn_text.pop(conn, None)

    def render(self, conn):
        raise NotImplementedError

    def header(self):
        pass

    def summary(self):
        pass

    def emit(self, parts):
        self.out.write("".join(parts))
        self.out.flush()


class TextWriter(Writer):
    """A columns format: losses are reported on stderr, in words."""

    def lost(self, count, reasons):
        sys.stderr.write(f"pytracer: {count} events lost ({describe_losses(reasons, self.loss_text)})\n")
        sys.stderr.flush()


class ColumnsWriter(TextWriter):
    """Lines that are tuples, printed with one %-format (`fmt`); the header is the `fields` in capitals."""

    def __init__(self, out, fmt, fields):
        super().__init__(out)
        self.fmt, self.fields = fmt, fields

    def header(self):
        self.out.write(self.fmt % tuple(f.upper() for f in self.fields))
        self.out.flush()        # the header says the tool is attached: now, not with the first line

    def write(self, lines):
        self.emit(self.fmt % line for line in lines)


class JsonLinesWriter(Writer):
    """One JSON object per line: losses are an object of their own, {"event": "lost", ...}. With `fields`,
    lines that are tuples are written as objects with those keys."""

    def __init__(self, out, fields=None):
        super().__init__(out)
        self.fields = fields

    def write(self, lines):
        fields = self.fields
        self.emit(json.dumps(dict(zip(fields, line))) + "\n" for line in lines)

    def lost(self, count, reasons):
        self.out.write('{"ts": %.6f, "event": "lost", "count": %d, "reasons": %s}\n'
                       % (time.time(), count, json.dumps(reasons, sort_keys=True)))
        self.out.flush()
