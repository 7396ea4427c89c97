"""BPFObject: one object file taken all the way into the kernel, and the single owner of everything that
creates (BTF fd, maps, programs, links, ring buffer mmaps). `close()` or the context manager releases it all,
in reverse order, on every exit path.

    with BPFObject(path, rodata={"target_tgid": os.getpid()}) as obj:
        obj.attach()                            # every program but the iterators
        rb = obj.ring_buffer("events")
        text = obj.run_iterator("dump_tasks")   # an iter/task program: one pass, its output
"""
from __future__ import annotations

import errno
import os

from . import abi, uapi, attach as attach_mod, cache, features, iterator, maps as maps_mod, program as program_mod, records
from . import resources
from .errors import AttachError, KernelFeatureError, PytracerError, warn
from .ringbuf import RingBuffer
from .spec import ObjectSpec
from .syscall import Buffer, bpf, raise_from_oserror

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"


def prepare(path: str, use_cache: bool = True) -> tuple[ObjectSpec, list[str]]:
    """ObjectSpec relocated for the running kernel, plus the CO-RE failure messages (from cache if any)."""
    spec, failures, _key = _prepare(path, use_cache)
    return spec, failures


def _prepare(path, use_cache):
    """prepare(), and the object's cache key (None with use_cache=False)."""
    try:
        data = resources.read(path)      # a file, or a resource in the zip pytracer runs from
    except OSError as e:
        raise PytracerError(f"cannot read BPF object {path}: {e.strerror}") from None
    key = cache.key_for(data) if use_cache else None
    if key:
        hit = cache.get(key)
        if hit is not None:
            try:
                spec = ObjectSpec.from_dict(hit["spec"])
                spec.path = path
                return spec, hit["core_failures"], key
            except (KeyError, TypeError, ValueError):
                pass  # an entry from another layout: rebuild it
    from . import elf
    from .btf import BTF
    from .core import apply_core_relocations

    spec = elf.read_object(data, path)
    failures = []
    if spec.programs and (any(p.core_relocs for p in spec.programs.values())
                          or any(p.attach_kind in ("tp_btf", "iter") for p in spec.programs.values())):
        if not os.path.exists(VMLINUX_BTF):
            raise KernelFeatureError(
                f"this kernel exposes no BTF ({VMLINUX_BTF} is missing; it needs CONFIG_DEBUG_INFO_BTF=y, "
                f"Linux 5.4+), so CO-RE relocation, BTF-typed tracepoints and BPF iterators are impossible",
                feature="kernel BTF", since="5.4")
        failures = apply_core_relocations(spec, BTF(spec.btf), BTF.load_vmlinux(VMLINUX_BTF)) or []
    spec.relocated = True
    if key:
        cache.put(key, {"spec": spec.to_dict(), "core_failures": failures})
    return spec, failures, key


class BPFObject:
    def __init__(self, path: str, rodata: dict[str, bytes | int] | None = None,
                 map_max_entries: dict[str, int] | None = None, programs=None, use_cache: bool = True):
        """Load `path`: `rodata` sets `const volatile` globals, `map_max_entries` resizes maps (e.g. the
        ring buffer), `programs` limits which programs are loaded: names, or a predicate on ProgramSpec
        (default: all). Programs that will not be attached are best not loaded: verifying costs time."""
        self.path = path
        self.maps = {}
        self.programs = {}
        self.links = []
        self._ringbufs = []
        self.btf_fd = -1
        self._key = None
        try:
            self._load(rodata or {}, map_max_entries or {}, programs, use_cache)
        except BaseException:
            self.close()
            raise

    # -- loading ----------------------------------------------------------------------------------------
    def _load(self, rodata, sizes, wanted, use_cache):
        features.raise_memlock_rlimit()
        self.spec, self.core_failures, self._key = _prepare(self.path, use_cache)
        spec = self.spec
        if callable(wanted):
            wanted = [name for name, p in spec.programs.items() if wanted(p)]
        if wanted is not None:
            unknown = set(wanted) - set(spec.programs)
            if unknown:
                raise PytracerError(f"{self.path} has no program(s) {', '.join(sorted(unknown))}")
        for name, n in sizes.items():
            if name not in spec.maps:
                raise PytracerError(f"{self.path} has no map '{name}'")
            spec.maps[name].max_entries = n
        if rodata:
            ro = [m for m in spec.maps.values() if m.section == ".rodata"]
            if not ro:
                raise PytracerError(f"{self.path} has no .rodata section to configure")
            maps_mod.patch_variables(ro[0], rodata)
        self._load_btf(spec.btf)
        for mspec in spec.maps.values():
            m = maps_mod.Map.create(mspec)
            self.maps[mspec.name] = m
            if mspec.initial is not None and any(mspec.initial):
                m.update(b"\0\0\0\0", mspec.initial)
            if mspec.freeze:
                m.freeze()
        for name, pspec in spec.programs.items():
            if wanted is not None and name not in wanted:
                continue
            self.programs[name] = program_mod.load(pspec, self.maps, self.btf_fd, spec.license,
                                                   self._source_btf, self.core_failures)

    # -- the object's types -----------------------------------------------------------------------------
    def record(self, name: str) -> records.Layout:
        """records.Layout of `struct name`, a ring buffer record, built from this object's BTF (the C
        header is the only definition; cached per object)."""
        return records.record_layout(lambda: self.spec.btf, name, self._key)

    def enums(self, *names: str) -> dict[str, int]:
        """{constant: value} of the enums `names` in this object's BTF (event types, flags), in one dict."""
        return records.enums(lambda: self.spec.btf, names, self._key)

    def _source_btf(self):
        """The object's BTF, parsed only when a rejection is to be annotated with C source lines."""
        from .btf import BTF

        return BTF(self.spec.btf)

    def _load_btf(self, raw):
        if not raw:
            return
        buf = Buffer(raw)
        for log_size in (0, 1 << 20):
            log = Buffer(log_size) if log_size else None
            attr = uapi.ATTR_BTF_LOAD.pack(btf=buf.addr, btf_log_buf=log.addr if log else 0, btf_size=len(raw),
                                           btf_log_size=log_size, btf_log_level=1 if log else 0)
            try:
                self.btf_fd = bpf(abi.Cmd.BTF_LOAD, attr)
                return
            except OSError as e:
                if e.errno in (errno.EPERM, errno.EACCES, errno.ENOSYS):
                    raise_from_oserror("loading BTF", e)
                if log is None:
                    continue
                text = log.raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
                # Programs still load without object BTF; only source lines in verifier logs are lost.
                warn(f"the kernel refused the object's BTF ({os.strerror(e.errno)}"
                     f"{': ' + text.splitlines()[-1] if text else ''}); loading without line info")
                self.btf_fd = -1
                return

    # -- attaching and reading ---------------------------------------------------------------------------
    def attach(self, names: list[str] | None = None) -> list[attach_mod.Link]:
        """Attach the named programs (default: every loaded one that is not an iterator; iterators run on
        demand, see run_iterator). Returns the new links."""
        if names is None:
            names = [n for n, p in self.programs.items() if not iterator.is_iterator(p)]
        new = []
        for name in names:
            if iterator.is_iterator(self._program(name)):
                raise AttachError(f"program {name} is a BPF iterator: it is not attached to an event but "
                                  f"run on demand, with run_iterator('{name}')")
            link = attach_mod.attach(self.programs[name])
            self.links.append(link)
            new.append(link)
        return new

    def run_iterator(self, name: str, link_info: bytes = b"") -> bytes:
        """Run iterator program `name` (an iter/<target> section) over every object of its target once
        and return what it wrote (b"" if it only updates maps). Nothing stays in the kernel afterwards.
        `link_info` is a union bpf_iter_link_info, e.g. iterator.task_link_info(pid=...)."""
        return iterator.run(self._iterator_program(name), link_info)

    def iterator(self, name: str, link_info: bytes = b"") -> iterator.Iterator:
        """An Iterator for program `name` that keeps its link, for repeated runs (`.read()`); this object
        owns it and closes it with its links."""
        it = iterator.Iterator(self._iterator_program(name), link_info)
        self.links.append(it)
        return it

    def _program(self, name):
        prog = self.programs.get(name)
        if prog is None:
            why = "was not loaded" if name in self.spec.programs else "does not exist"
            raise PytracerError(f"program {name} of {self.path} {why}")
        return prog

    def _iterator_program(self, name):
        prog = self._program(name)
        if not iterator.is_iterator(prog):
            raise PytracerError(f"program {name} ({prog.spec.section}) is not a BPF iterator "
                                f"(iter/<target> section)")
        return prog

    def ring_buffer(self, map_name: str) -> RingBuffer:
        m = self.maps[map_name]
        if m.spec.map_type != abi.MapType.RINGBUF:
            raise PytracerError(f"map '{map_name}' is not a ring buffer")
        rb = RingBuffer(m.fd, m.spec.max_entries)
        self._ringbufs.append(rb)
        return rb

    # -- lifetime ----------------------------------------------------------------------------------------
    def close(self, background: bool = False) -> None:
        """Release everything, links first (so programs stop firing), then ring buffers, programs, maps.
        With `background`, for a process about to exit: what only waits for the kernel's housekeeping once
        every program is detached (classic tracepoints' perf events, see attach.Link) is closed by a
        short-lived process of its own instead of delaying this one's exit."""
        slow: list | None = [] if background else None
        while self.links:
            link = self.links.pop()
            if isinstance(link, attach_mod.Link):
                link.close(keep_slow=slow)
            else:
                link.close()            # an iterator's link: never slow
        while self._ringbufs:
            self._ringbufs.pop().close()
        for table in (self.programs, self.maps):
            for obj in table.values():
                obj.close()
            table.clear()
        if self.btf_fd >= 0:
            os.close(self.btf_fd)
            self.btf_fd = -1
        if slow:
            attach_mod.release_in_background(slow)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

