"""Where pytracer's startup goes: run in a fresh interpreter by startup.py; replays what `python -m pytracer`
does up to its header line, timing each phase by wrapping pytracer's functions from the outside (pytracer
itself is not modified). Prints one JSON object of milliseconds.

A phase whose function does not exist (the code moved) is simply absent from the output.
"""
import json
import os
import sys
import time

T0 = time.perf_counter()
acc = {}


def timed(label, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[label] = acc.get(label, 0.0) + (time.perf_counter() - t) * 1000
    return wrapper


def patch(obj, name, label):
    fn = getattr(obj, name, None)
    if fn is not None:
        setattr(obj, name, timed(label, fn))


def step(label, fn):
    t = time.perf_counter()
    r = fn()
    acc[label] = acc.get(label, 0.0) + (time.perf_counter() - t) * 1000
    return r


def main():
    import importlib

    step("import pytracer.cli", lambda: importlib.import_module("pytracer.cli"))
    cli = importlib.import_module("pytracer.tools.tcpsnoop.cli")
    a = step("parse args", lambda: cli.parse_args([]))
    step("import tcpsnoop+syscall", lambda: (importlib.import_module("pytracer.syscall"),
                                              importlib.import_module("pytracer.tcpsnoop")))
    step("import loader, maps, program, attach, ringbuf",
         lambda: importlib.import_module("pytracer.loader"))
    from pytracer import attach, cache, loader, maps, program, records

    d = cache.cache_dir()
    cold = not (d and os.path.isdir(d) and os.listdir(d))
    if cold:
        # the relocation path (cache miss) imports these; time their import separately
        step("import elf/btf/core (cold path)", lambda: [importlib.import_module("pytracer." + m)
                                                         for m in ("elf", "btf", "core")])
        from pytracer import btf, core, elf
        patch(elf, "read_object", "ELF parse")
        if hasattr(btf, "BTF"):
            patch(btf.BTF, "load_vmlinux", "vmlinux BTF load")
        patch(core, "apply_core_relocations", "CO-RE relocation")
        patch(cache, "put", "cache write")
    patch(cache, "get", "cache read")
    patch(loader, "prepare", "prepare total (cache or ELF+BTF+CO-RE)")
    patch(maps.Map, "create", "map create")
    patch(program, "load", "program load (verifier)")
    patch(attach, "attach", "attach")
    patch(attach, "tracepoint_exists", "tracepoint lookup")
    patch(loader.BPFObject, "ring_buffer", "ring buffer mmap")
    patch(records, "record_layout", "record layout (BTF -> construct)")
    from pytracer.tcpsnoop import TcpSnoop

    snoop = TcpSnoop(ringbuf_size=a.ringbuf_mb << 20)
    try:
        step("TcpSnoop.start total", snoop.start)

        class Null:
            def write(self, s):
                pass

            def flush(self):
                pass

        step("header", lambda: cli.ClassicWriter(Null(), False, False, 0.0).header())
        acc["script total (after interpreter start)"] = (time.perf_counter() - T0) * 1000
    finally:
        t = time.perf_counter()
        snoop.close()
        acc["close"] = (time.perf_counter() - t) * 1000
    acc["cold"] = 1 if cold else 0
    json.dump(acc, sys.stdout)


if __name__ == "__main__":
    main()
