"""Where pytracer's exit goes: run by startup.py (exit_times) instead of `python -m pytracer`; runs pytracer's
own main (`pytracer.cli.main`, same arguments) with its closing functions wrapped from outside (pytracer is
not modified), and at exit writes to $EXIT_PHASES_OUT one JSON object of CLOCK_MONOTONIC timestamps (s, as
time.monotonic(): comparable with the parent's) and durations:

  t_signal            SIGINT arrives (our handler: records the time, then does what Python's does)
  t_close0, t_close1  BPFObject.close() entered / returned
  t_atexit            pytracer's main calls os._exit (everything closed, output flushed)
  fds                 every fd BPFObject.close() closed: what it was (/proc/self/fd link target, link
                      description), its close() in ms, in order; links handed to the releasing child
                      (attach.release_in_background) as one entry each, "handed over"
  groups              ms per kind: links (each fd of each Link), ring buffers, programs, maps
"""
import atexit
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

rec = {"fds": [], "groups": {}}


def _kind(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def _group(label, fn):
    def wrapper(*a, **k):
        t = time.monotonic()
        try:
            return fn(*a, **k)
        finally:
            rec["groups"][label] = rec["groups"].get(label, 0.0) + (time.monotonic() - t) * 1000
    return wrapper


def install():
    from pytracer import attach, loader, maps, program, ringbuf

    real_link_close = attach.Link.close

    def link_close(self, keep_slow=None):
        t = time.monotonic()
        if keep_slow is not None and self.slow_fds:
            rec["fds"].append({"link": self.description, "fd": "handed over", "ms": 0.0})
            return real_link_close(self, keep_slow)
        while self.fds:
            fd = self.fds.pop()
            what = _kind(fd)
            t1 = time.monotonic()
            try:
                os.close(fd)
            except OSError:
                pass
            rec["fds"].append({"link": self.description, "fd": what, "ms": (time.monotonic() - t1) * 1000})
        rec["groups"]["links"] = rec["groups"].get("links", 0.0) + (time.monotonic() - t) * 1000

    attach.Link.close = link_close
    ringbuf.RingBuffer.close = _group("ring buffers", ringbuf.RingBuffer.close)
    program.Program.close = _group("programs", program.Program.close)
    maps.Map.close = _group("maps", maps.Map.close)
    real_close = loader.BPFObject.close

    def obj_close(self, background=False):
        first = "t_close0" not in rec and bool(self.links)
        if first:
            rec["t_close0"] = time.monotonic()
        try:
            return real_close(self, background)
        finally:
            if first:
                rec["t_close1"] = time.monotonic()

    loader.BPFObject.close = obj_close

    def on_int(signum, frame):
        rec.setdefault("t_signal", time.monotonic())
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_int)

    main_pid, real_exit = os.getpid(), os._exit

    def done():
        if os.getpid() != main_pid or "t_atexit" in rec:
            return                      # the releasing child's own exit, or written already
        rec["t_atexit"] = time.monotonic()
        out = os.environ.get("EXIT_PHASES_OUT")
        if out:
            with open(out, "w") as f:
                json.dump(rec, f)

    def exiting(status):
        done()
        real_exit(status)

    os._exit = exiting
    atexit.register(done)


if __name__ == "__main__":
    install()
    from pytracer import cli

    sys.argv[0] = "pytracer"
    cli.main()
