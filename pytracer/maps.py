"""BPF maps: creation from a MapSpec, element access, and the global-data (.rodata/.data/.bss) helpers."""
from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator

from . import abi, uapi
from .errors import KernelFeatureError, PytracerError
from .spec import MapSpec
from .syscall import Buffer, bpf, raise_from_oserror

_MAP_NAME_OK = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


def possible_cpus():
    """Number of possible CPUs: per-CPU map values have one slot for each (not just online ones)."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
    except OSError:
        return os.cpu_count() or 1
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n


def kernel_name(name):
    """Map/program names: at most 15 characters of [A-Za-z0-9_.] (the kernel rejects others)."""
    raw = bytes(c if c in _MAP_NAME_OK else ord("_") for c in name.encode()[: abi.BPF_OBJ_NAME_LEN - 1])
    return raw.ljust(abi.BPF_OBJ_NAME_LEN, b"\0")


class Map:
    """An open BPF map. Owns its fd; `close()` releases it (the kernel frees the map with its last user)."""

    def __init__(self, spec, fd):
        self.spec = spec
        self.name = spec.name
        self.fd = fd
        self.key_size = spec.key_size
        self.value_size = spec.value_size
        self.percpu = spec.map_type in abi.PERCPU_MAP_TYPES
        self.ncpus = possible_cpus() if self.percpu else 1
        # per-CPU values are exchanged as one 8-byte-aligned slot per possible CPU
        self.slot = (self.value_size + 7) & ~7 if self.percpu else self.value_size

    @classmethod
    def create(cls, spec):
        attr = uapi.ATTR_MAP_CREATE.pack(map_type=spec.map_type, key_size=spec.key_size,
                                         value_size=spec.value_size, max_entries=spec.max_entries,
                                         map_flags=spec.flags, map_name=kernel_name(spec.name))
        try:
            fd = bpf(abi.Cmd.MAP_CREATE, attr)
        except OSError as e:
            if e.errno == errno.EINVAL and spec.map_type == abi.MapType.RINGBUF:
                from . import features

                if not features.have_ringbuf():
                    raise KernelFeatureError(
                        f"this kernel ({os.uname().release}) has no BPF ring buffer, which pytracer needs: "
                        f"BPF_MAP_TYPE_RINGBUF came in Linux 5.8", feature="BPF_MAP_TYPE_RINGBUF",
                        since="5.8") from None
                raise PytracerError(f"the kernel refused ring buffer '{spec.name}' of {spec.max_entries} bytes: "
                                    f"the size must be a power of two and a multiple of the page size") from None
            if e.errno == errno.EINVAL:
                raise PytracerError(
                    f"the kernel refused to create map '{spec.name}' (type {spec.map_type}, key {spec.key_size}, "
                    f"value {spec.value_size}, {spec.max_entries} entries, flags {spec.flags:#x}): invalid "
                    f"argument") from None
            raise_from_oserror(f"creating BPF map '{spec.name}'", e)
        return cls(spec, fd)

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        """Open an existing map by its kernel id (BPF_MAP_GET_FD_BY_ID; any process's map, as root)."""
        try:
            fd = bpf(abi.Cmd.MAP_GET_FD_BY_ID, uapi.ATTR_GET_ID.pack(start_id=map_id))
        except OSError as e:
            raise_from_oserror(f"opening BPF map id {map_id}", e)
        try:
            i = info_by_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(MapSpec(name=i["name"], map_type=i["type"], key_size=i["key_size"],
                           value_size=i["value_size"], max_entries=i["max_entries"], flags=i["map_flags"]), fd)

    def info(self) -> dict:
        """The kernel's struct bpf_map_info for this map, as a dict (name decoded)."""
        return info_by_fd(self.fd)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- element access ------------------------------------------------------------------------------
    def _elem(self, cmd, key, value_buf=None, flags=0):
        kbuf = Buffer(key) if key is not None else None
        attr = uapi.ATTR_MAP_ELEM.pack(map_fd=self.fd, key=kbuf.addr if kbuf else 0,
                                       value=value_buf.addr if value_buf else 0, flags=flags)
        return bpf(cmd, attr)

    def lookup(self, key: bytes) -> bytes | list[bytes] | None:
        """Value bytes for `key` (for per-CPU maps: a list with one bytes per possible CPU), or None."""
        vbuf = Buffer(self.slot * self.ncpus)
        try:
            self._elem(abi.Cmd.MAP_LOOKUP_ELEM, key, vbuf)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise_from_oserror(f"reading map '{self.name}'", e)
        raw = vbuf.raw
        if self.percpu:
            return [raw[i * self.slot:i * self.slot + self.value_size] for i in range(self.ncpus)]
        return raw

    def update(self, key: bytes, value: bytes, flags: int = abi.BPF_ANY) -> None:
        try:
            self._elem(abi.Cmd.MAP_UPDATE_ELEM, key, Buffer(value), flags)
        except OSError as e:
            raise_from_oserror(f"writing map '{self.name}'", e)

    def delete(self, key: bytes) -> bool:
        try:
            self._elem(abi.Cmd.MAP_DELETE_ELEM, key)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise_from_oserror(f"deleting from map '{self.name}'", e)
        return True

    def keys(self) -> Iterator[bytes]:
        key = None
        nbuf = Buffer(self.key_size)
        while True:
            try:
                self._elem(abi.Cmd.MAP_GET_NEXT_KEY, key, nbuf)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return
                raise_from_oserror(f"iterating map '{self.name}'", e)
            key = nbuf.raw
            yield key

    def __len__(self):
        return sum(1 for _ in self.keys())

    def freeze(self):
        try:
            bpf(abi.Cmd.MAP_FREEZE, uapi.ATTR_MAP_ELEM.pack(upto="map_fd", map_fd=self.fd))
        except OSError as e:
            raise_from_oserror(f"freezing map '{self.name}'", e)

    def sum_percpu_u64(self, key: bytes = b"\0\0\0\0", offset: int = 0) -> int:
        """Sum of a per-CPU u64 counter (e.g. records the BPF side could not reserve), at `offset` in the
        value."""
        vals = self.lookup(key)
        if vals is None:
            return 0
        if not self.percpu:
            vals = [vals]
        return sum(struct.unpack_from("<Q", v, offset)[0] for v in vals)


def info_by_fd(fd: int) -> dict:
    """struct bpf_map_info of an open map fd, as a dict of its fields (`name` as text)."""
    layout = uapi.BPF_MAP_INFO
    buf = Buffer(layout.size)
    try:
        bpf(abi.Cmd.OBJ_GET_INFO_BY_FD, uapi.ATTR_OBJ_INFO.pack(bpf_fd=fd, info_len=layout.size, info=buf.addr))
    except OSError as e:
        raise_from_oserror("reading information about a BPF map", e)
    info = layout.unpack(buf.raw)
    info["name"] = info["name"].split(b"\0", 1)[0].decode(errors="replace")
    return info


def patch_variables(spec: MapSpec, values: dict[str, bytes | int]) -> None:
    """Write `values` (name -> bytes or int) into a global-data MapSpec's initial image before load.

    This is how `const volatile` settings (filters) reach the kernel: they are part of .rodata, which the
    verifier then treats as constants, so disabled filters cost nothing at run time."""
    image = bytearray(spec.initial or bytes(spec.value_size))
    for name, value in values.items():
        if name not in spec.variables:
            raise PytracerError(f"{spec.section} has no variable '{name}' (have: {', '.join(sorted(spec.variables))})")
        off, size, _tid = spec.variables[name]
        if isinstance(value, int):
            value = value.to_bytes(size, "little", signed=value < 0)
        if len(value) > size:
            raise PytracerError(f"value for '{name}' is {len(value)} bytes; the variable holds {size}")
        image[off:off + size] = bytes(value).ljust(size, b"\0")
    spec.initial = bytes(image)
