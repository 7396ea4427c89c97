"""A tool's command line: the common flags (-t -p -u -c -P -4 -6 --cgroup -j -d, --ringbuf-mb,
--no-cache, --version) and the read loop with Unix-tool manners (Ctrl-C, SIGTERM, -d and a closed stdout
end quietly with status 0; errors are one clear message with the error's exit status).

A tool's front end gives `run()` two functions: one making its tracer from the parsed arguments, one making
its writer. The tracer is anything with start(), close(), poll_lines(timeout), drain_lines(),
new_losses(), last_losses, fallbacks (notes for stderr) and obj (None once closed); see
pytracer/tools/tcpsnoop/tracer.py.
"""
import argparse
import contextlib
import os
import signal
import sys
import time

from .. import __version__, kernel_report
from ..errors import PytracerError, on_warning
from . import stdout
from .filters import Filters


class Stop(Exception):
    """Raised from the SIGTERM handler to leave the read loop through the normal cleanup path."""


class _StopSignals:
    """SIGTERM (and SIGINT) end the run by raising Stop (KeyboardInterrupt) in the main thread, but not while
    a batch is in hand. Records taken from the ring buffer live only in Python until their lines are
    written, and an exception raised between the two dropped them unreported (a segment missing from the
    lines after a SIGTERM that found the tracer still working through a burst). So inside `with signals:`
    a signal is only noted, and raise_noted() raises it once the batch is out. Start-up is the same
    (`with signals.starting():`): once a program is attached its records wait in the ring buffer, which a
    stop there would leave unread and unreported; a second signal during start-up ends it at once. One
    poll_lines() call both waits and reads, so the wait is inside too; that the stop does not wait for
    the poll's timeout, the signal also writes to a wakeup pipe the ring buffer's poll watches
    (`watch`)."""

    def __init__(self):
        self.busy = False
        self.impatient = False      # starting(): a second signal is not held back
        self.noted = None           # the exception a signal asked for while busy
        self._pipe = self._old_wakeup = None

    def handler(self, exc):
        def on_signal(signum, frame):
            if not self.busy or (self.impatient and self.noted is not None):
                raise exc()
            self.noted = self.noted or exc
        return on_signal

    def watch(self, rb):
        """Make a signal end `rb.poll()`'s wait (the interpreter writes a byte to the pipe per signal)."""
        r, w = self._pipe = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        rb.wake_on(r)

    @contextlib.contextmanager
    def starting(self):
        self.busy = self.impatient = True
        try:
            yield
        finally:
            self.busy = self.impatient = False

    def __enter__(self):
        self.busy = True

    def __exit__(self, *exc):
        self.busy = False

    def raise_noted(self):
        exc, self.noted = self.noted, None
        if exc is not None:
            raise exc()
        if self._pipe is not None:
            try:
                os.read(self._pipe[0], 256)     # a signal that asked for nothing (none of ours)
            except BlockingIOError:
                pass

    def close(self):
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None


def port_list(text):
    """-P's value: one port or a comma-separated list of them ("80,443")."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port or a comma-separated list of ports: {text!r}") from None


def owner_helps(what):
    """`parser(helps=...)` wording of the owner flags for a tool whose lines are `what` (e.g. "connects")."""
    return {"--pid": f"only {what} by this process (repeatable)", "--uid": f"only {what} by this user id",
            "--comm": f"only {what} by a task with this name",
            "--cgroup": f"only {what} by tasks in this cgroup v2 (or below)"}


def parser(prog, description, tool_flags=None, own_short=(), helps=None, owner_flags=True, port_flag=True):
    """An ArgumentParser with the common flags; `tool_flags(parser)` adds the tool's own (after --cgroup).
    `own_short`: short options the tool gives a meaning of its own (e.g. tcpconnect's -c, count), which the
    common flags then spell long only (--comm). `helps`: the tool's wording of common flags, by long option
    (e.g. {"--port": "only connections to this remote port"}). A tool whose events have no owner to filter on
    (they run in softirq) leaves out the owner flags (-p -u -c --cgroup: `owner_flags=False`), and one with
    port flags of its own -P (`port_flag=False`), so that it can give those letters bcc's meaning."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    helps = helps or {}

    def flag(short, long, help, **kw):
        p.add_argument(*([long] if short in own_short else [short, long]), help=helps.get(long, help), **kw)

    flag("-t", "--timestamp", action="store_true", help="print seconds since start as the first column")
    if owner_flags:
        flag("-p", "--pid", type=int, action="append", default=[], metavar="PID",
             help="only sockets owned by this process (repeatable)")
        flag("-u", "--uid", type=int, help="only sockets owned by this user id")
        flag("-c", "--comm", help="only sockets owned by a task with this name")
    if port_flag:
        flag("-P", "--port", type=port_list, action="extend", default=[], metavar="PORT",
             help="only connections with this local or remote port (repeatable, or a comma-separated list)")
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("-4", "--ipv4", action="store_true", help="IPv4 only")
    fam.add_argument("-6", "--ipv6", action="store_true", help="IPv6 only (wide address columns)")
    if owner_flags:
        p.add_argument("--cgroup", metavar="PATH",
                       help=helps.get("--cgroup", "only sockets owned by tasks in this cgroup v2 (or below)"))
    if tool_flags is not None:
        tool_flags(p)
    p.add_argument("-j", "--json", action="store_true", help="one JSON object per line (schema: README)")
    p.add_argument("-d", "--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("--ringbuf-mb", type=int, default=4, metavar="MB",
                   help="kernel ring buffer size in MiB, a power of two (default 4)")
    p.add_argument("--no-cache", action="store_true", help="do not use the relocated-program cache")
    p.add_argument("--version", action=kernel_report.version_action(__version__))  # and the kernel features
    return p


def parse(p, argv):
    """Parse and check the common flags."""
    a = p.parse_args(argv)
    mb = a.ringbuf_mb
    if mb <= 0 or mb & (mb - 1):
        p.error("--ringbuf-mb must be a power of two")
    if a.duration is not None and a.duration < 0:
        p.error("--duration must not be negative")
    return a


def family(a):
    """4, 6 or None from -4/-6."""
    return 4 if a.ipv4 else 6 if a.ipv6 else None


def filters(a):
    """The Filters the common flags ask for."""
    return Filters(pids=getattr(a, "pid", ()), uid=getattr(a, "uid", None), comm=getattr(a, "comm", None),
                   ports=getattr(a, "port", ()), family=family(a), cgroup=getattr(a, "cgroup", None))


def _quiet_stdout():
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush cannot complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass


def run(argv, parse_args, make_tracer, make_writer):
    """Parse `argv` with `parse_args`, then trace until -d, Ctrl-C, SIGTERM or a closed stdout: the tool's
    exit status. `make_tracer(args)` returns the tracer (not started), `make_writer(args, t0)` its writer."""
    signals = _StopSignals()
    # first of all, so that a SIGTERM at any moment takes the same quiet way out
    signal.signal(signal.SIGTERM, signals.handler(Stop))
    # and Ctrl-C/SIGINT the same way where Python's own handler is in place, or where SIGINT was ignored (a
    # background job of a shell script: Python would keep ignoring it and the tracer could only be stopped
    # by SIGTERM); an embedding program's own handler stays
    old_int = signal.getsignal(signal.SIGINT)
    own_int = old_int in (signal.SIG_IGN, signal.default_int_handler)
    if own_int:
        signal.signal(signal.SIGINT, signals.handler(KeyboardInterrupt))
    a = parse_args(sys.argv[1:] if argv is None else argv)
    from ..syscall import missing_capabilities

    if os.geteuid() != 0 and missing_capabilities():
        print(f"pytracer: needs root, or CAP_BPF and CAP_PERFMON (missing: {', '.join(missing_capabilities())}). "
              f"Run it with sudo.", file=sys.stderr)
        return 4
    if a.no_cache:
        os.environ["PYTRACER_CACHE_DIR"] = "off"
    tracer = writer = None
    # library code never prints; its warnings are shown here
    quiet = on_warning(lambda message: print(f"pytracer: warning: {message}", file=sys.stderr))
    try:
        with signals.starting():
            tracer = make_tracer(a)
            tracer.start()
            from .. import features

            for note in tracer.fallbacks + features.take_notes():
                print(f"pytracer: note: {note}", file=sys.stderr)
            writer = make_writer(a, time.time())
            writer.header()
        signals.raise_noted()       # a signal during start-up: what the programs captured is printed
        if getattr(tracer, "rb", None) is not None:
            signals.watch(tracer.rb)
        end = None if a.duration is None else time.monotonic() + a.duration
        last_loss_check = 0.0
        idle = getattr(writer, "idle", None)    # a writer holding lines back gets a tick when none come
        while True:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            wait = 0.5 if end is None else min(0.5, end - now)
            with signals:
                lines = tracer.poll_lines(wait)
                if lines:
                    writer.write(lines)
                elif idle is not None:
                    idle()
                if now - last_loss_check >= 0.5:
                    last_loss_check = now
                    _report_losses(tracer, writer)
            signals.raise_noted()
        with signals:
            _drain(tracer, writer)
            _finish(writer)
        return 0
    except (KeyboardInterrupt, Stop):
        with signals:    # a second signal cannot cut the final drain short either
            _final_report(tracer, writer)
        return 0
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except PytracerError as e:
        print(f"pytracer: {e}", file=sys.stderr)
        return e.exit_status
    finally:
        quiet()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if own_int:
            signal.signal(signal.SIGINT, old_int)
        signals.close()
        if tracer is not None:
            if tracer.obj is not None:
                tracer.obj.close(background=True)      # the process exits next
            tracer.close()


def _report_losses(tracer, writer):
    lost = tracer.new_losses()
    if lost:
        writer.lost(lost, tracer.last_losses)


def _drain(tracer, writer):
    """Print what is already in the ring buffer, and any losses."""
    lines = tracer.drain_lines()
    if lines:
        writer.write(lines)
    _report_losses(tracer, writer)


def _final_report(tracer, writer):
    """On Ctrl-C/SIGTERM: print what is already read and any losses, then go."""
    if writer is None or tracer is None or tracer.obj is None:
        return
    try:
        _drain(tracer, writer)
        _finish(writer)
    except BrokenPipeError:
        _quiet_stdout()
    except (PytracerError, KeyboardInterrupt, Stop):
        pass


def _finish(writer):
    """The end of the run: the writer's summary (tcpconnect -c's counts), then, for a writer that keeps
    state to the end (a capture file's last blocks), its close()."""
    for name in ("summary", "close"):
        step = getattr(writer, name, None)
        if step is not None:
            step()


def _observed():
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)       # Python 3.12+ (cProfile uses it from 3.12)
    return monitoring is not None and any(monitoring.get_tool(i) for i in range(6))


def main(run_tool):
    """The process's exit: `run_tool()` returns the status (Ctrl-C during start-up is status 0 too)."""
    stdout.install()
    try:
        status = run_tool()
    except (KeyboardInterrupt, Stop):
        status = 0
    # Everything of the tool's is closed by now; what is left is the interpreter's teardown of its modules,
    # ~20 ms that only delays the shell's prompt. Flush, then end the process directly, unless a profiler,
    # coverage tool or debugger is watching: it writes its results at the interpreter's exit.
    if _observed():
        sys.exit(status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            _quiet_stdout()
        except (OSError, ValueError):
            pass
    os._exit(status)
