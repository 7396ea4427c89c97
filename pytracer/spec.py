"""Specs: what an object file asks for, as plain data, before anything touches the kernel.

The pipeline is ELF reading (elf.py) -> ObjectSpec -> CO-RE relocation (core.py) -> load (loader.py).
A relocated ObjectSpec depends only on the object and the running kernel, so it is what cache.py stores;
it therefore holds only bytes, ints, strings, lists and dicts (to_dict/from_dict round-trip exactly).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

INSN_SIZE = 8


@dataclass
class CoreReloSpec:
    """One CO-RE relocation, already re-based onto the linked program.

    insn_index: index (in 8-byte instructions) into ProgramSpec.insns.
    type_id: local (object) BTF type id the relocation is about.
    access: the access string, e.g. "0:1:2".
    kind: BPF_CORE_* relocation kind (abi.CoreReloKind).
    """

    insn_index: int
    type_id: int
    access: str
    kind: int


@dataclass
class MapRelocSpec:
    """An ld_imm64 at insn_index that must receive the fd of map `map_name`.

    For global data (.rodata/.data/.bss) `offset` is the byte offset of the symbol inside the section and
    the instruction becomes BPF_PSEUDO_MAP_VALUE (fd + offset); for a plain map it is BPF_PSEUDO_MAP_FD.
    """

    insn_index: int
    map_name: str
    offset: int = 0
    is_value: bool = False


@dataclass
class ProgramSpec:
    name: str                       # function name (symbol), also the kernel program name (truncated)
    section: str                    # e.g. "tracepoint/sock/inet_sock_set_state"
    prog_type: int                  # abi.ProgType
    expected_attach_type: int = 0   # abi.AttachType
    attach_kind: str = ""           # "tracepoint" | "tp_btf" | "raw_tracepoint"
    attach_target: str = ""         # "sock/inet_sock_set_state" or "net_dev_queue"
    insns: bytes = b""              # linked program (main function followed by the subprograms it calls)
    map_relocs: List[MapRelocSpec] = field(default_factory=list)
    core_relocs: List[CoreReloSpec] = field(default_factory=list)   # emptied by core.py once applied
    func_info: bytes = b""          # packed bpf_func_info records (insn_off in instructions)
    func_info_rec_size: int = 8
    line_info: bytes = b""          # packed bpf_line_info records (insn_off in instructions)
    line_info_rec_size: int = 16
    attach_btf_id: int = 0          # vmlinux BTF id of btf_trace_<name> for tp_btf (set by core.py)


@dataclass
class MapSpec:
    name: str
    map_type: int                   # abi.MapType
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0
    section: str = ".maps"          # ".maps", ".rodata", ".data", ".bss"
    initial: Optional[bytes] = None  # initial contents (global data); .bss is all zero
    freeze: bool = False            # .rodata is frozen after it is filled
    # Global data: variable name -> (offset, size, BTF type id) so Python can write `const volatile` settings.
    variables: Dict[str, Tuple[int, int, int]] = field(default_factory=dict)


@dataclass
class ObjectSpec:
    path: str
    license: str
    programs: Dict[str, ProgramSpec]
    maps: Dict[str, MapSpec]
    btf: bytes = b""                # object BTF, ready for BPF_BTF_LOAD (DATASECs fixed up)
    relocated: bool = False         # True once core.py has run against a kernel BTF

    def to_dict(self):
        def conv(obj):
            if isinstance(obj, bytes):
                return {"__bytes__": obj.hex()}
            if isinstance(obj, (list, tuple)):
                return [conv(o) for o in obj]
            if isinstance(obj, dict):
                return {k: conv(v) for k, v in obj.items()}
            if hasattr(obj, "__dataclass_fields__"):
                return {k: conv(getattr(obj, k)) for k in obj.__dataclass_fields__}
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
