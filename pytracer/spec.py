"""Specs: what an object file asks for, as plain data, before anything touches the kernel.

The pipeline is ELF reading (elf.py) -> ObjectSpec -> CO-RE relocation (core.py) -> load (loader.py).
A relocated ObjectSpec depends only on the object and the running kernel, so it is what cache.py stores;
it therefore holds only bytes, ints, strings, lists and dicts (to_dict/from_dict round-trip exactly).
"""
INSN_SIZE = 8


class _Record:
    """A small record class: FIELDS lists (name, default); defaults that are lists/dicts are copied.
    (Not dataclasses: importing them costs ~10 ms, a tenth of the warm-start budget.)"""

    FIELDS = ()
    __slots__ = ()

    def __init__(self, *args, **kwargs):
        names = [n for n, _ in self.FIELDS]
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} arguments")
        values = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names or k in values:
                raise TypeError(f"{type(self).__name__}: bad or repeated argument {k!r}")
            values[k] = v
        for n, default in self.FIELDS:
            if n in values:
                v = values[n]
            elif default is _REQUIRED:
                raise TypeError(f"{type(self).__name__} needs {n!r}")
            else:
                v = type(default)() if isinstance(default, (list, dict)) else default
            setattr(self, n, v)

    def __eq__(self, other):
        return type(self) is type(other) and all(getattr(self, n) == getattr(other, n) for n, _ in self.FIELDS)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n, _ in self.FIELDS)})"


_REQUIRED = object()


def _fields(*pairs):
    return tuple((p, _REQUIRED) if isinstance(p, str) else p for p in pairs)


class CoreReloSpec(_Record):
    """One CO-RE relocation, already re-based onto the linked program.

    insn_index: index (in 8-byte instructions) into ProgramSpec.insns.
    type_id: local (object) BTF type id the relocation is about.
    access: the access string, e.g. "0:1:2".
    kind: BPF_CORE_* relocation kind (abi.CoreReloKind).
    """

    FIELDS = _fields("insn_index", "type_id", "access", "kind")
    __slots__ = tuple(n for n, _ in FIELDS)


class MapRelocSpec(_Record):
    """An ld_imm64 at insn_index that must receive the fd of map `map_name`.

    For global data (.rodata/.data/.bss) `offset` is the byte offset of the symbol inside the section and
    the instruction becomes BPF_PSEUDO_MAP_VALUE (fd + offset); for a plain map it is BPF_PSEUDO_MAP_FD.
    """

    FIELDS = _fields("insn_index", "map_name", ("offset", 0), ("is_value", False))
    __slots__ = tuple(n for n, _ in FIELDS)


class ProgramSpec(_Record):
    FIELDS = _fields(
        "name",                     # function name (symbol), also the kernel program name (truncated)
        "section",                  # e.g. "tracepoint/sock/inet_sock_set_state"
        "prog_type",                # abi.ProgType
        ("expected_attach_type", 0),  # abi.AttachType
        ("attach_kind", ""),        # "tracepoint" | "tp_btf" | "raw_tracepoint" | "iter"
        ("attach_target", ""),      # "sock/inet_sock_set_state", "net_dev_queue" or "task_file" (iter)
        ("insns", b""),             # linked program (main function followed by the subprograms it calls)
        ("map_relocs", []),         # [MapRelocSpec]
        ("core_relocs", []),        # [CoreReloSpec], emptied by core.py once applied
        ("func_info", b""),         # packed bpf_func_info records (insn_off in instructions)
        ("func_info_rec_size", 8),
        ("line_info", b""),         # packed bpf_line_info records (insn_off in instructions)
        ("line_info_rec_size", 16),
        ("attach_btf_id", 0),       # vmlinux BTF id of btf_trace_<name> for tp_btf, of the FUNC
                                    # bpf_iter_<target> for iter (0: this kernel lacks it); set by core.py
    )
    __slots__ = tuple(n for n, _ in FIELDS)


class MapSpec(_Record):
    FIELDS = _fields(
        "name", "map_type", "key_size", "value_size", "max_entries",   # map_type: abi.MapType
        ("flags", 0),
        ("section", ".maps"),       # ".maps", ".rodata", ".data", ".bss"
        ("initial", None),          # initial contents (global data); .bss is all zero
        ("freeze", False),          # .rodata is frozen after it is filled
        # global data: variable name -> (offset, size, BTF type id), so `const volatile` settings can be set
        ("variables", {}),
    )
    __slots__ = tuple(n for n, _ in FIELDS)


class ObjectSpec(_Record):
    FIELDS = _fields(
        "path", "license",
        "programs",                 # name -> ProgramSpec
        "maps",                     # name -> MapSpec
        ("btf", b""),               # object BTF, ready for BPF_BTF_LOAD (DATASECs fixed up)
        ("relocated", False),       # True once core.py has run against a kernel BTF
    )
    __slots__ = tuple(n for n, _ in FIELDS)

    def to_dict(self):
        def conv(obj):
            if isinstance(obj, bytes):
                return {"__bytes__": obj.hex()}
            if isinstance(obj, (list, tuple)):
                return [conv(o) for o in obj]
            if isinstance(obj, dict):
                return {k: conv(v) for k, v in obj.items()}
            if isinstance(obj, _Record):
                return {k: conv(getattr(obj, k)) for k, _ in obj.FIELDS}
            return obj

        return conv(self)

    @classmethod
    def from_dict(cls, d):
        def b(v):
            return bytes.fromhex(v["__bytes__"]) if isinstance(v, dict) and "__bytes__" in v else v

        progs = {}
        for name, p in d["programs"].items():
            p = {k: b(v) for k, v in p.items()}
            p["map_relocs"] = [MapRelocSpec(**r) for r in p["map_relocs"]]
            p["core_relocs"] = [CoreReloSpec(**r) for r in p["core_relocs"]]
            progs[name] = ProgramSpec(**p)
        maps = {}
        for name, m in d["maps"].items():
            m = {k: b(v) for k, v in m.items()}
            m["variables"] = {k: tuple(v) for k, v in m["variables"].items()}
            maps[name] = MapSpec(**m)
        return cls(path=d["path"], license=d["license"], programs=progs, maps=maps, btf=b(d["btf"]),
                   relocated=d["relocated"])
