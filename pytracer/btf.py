"""BTF and BTF.ext parsing (format: Documentation/bpf/btf.rst, include/uapi/linux/btf.h).

Two very different inputs go through here:

* the kernel's /sys/kernel/btf/vmlinux: ~5 MB, ~130k types, parsed on every start of the tool, so
  construction only builds an id -> offset index (plus each type's name offset) in one tight loop and
  decodes a type into a BTFType object when somebody asks for it;
* a BPF object's .BTF / .BTF.ext: small, but untrusted, so every offset is checked and every problem
  becomes a BTFError (never IndexError, struct.error, UnicodeError, ...).

Only host byte order is supported: BPF objects are built for the machine they run on, and the kernel's
BTF is in host order by definition.
"""
import os
import re
import struct
from array import array
from collections import namedtuple
from itertools import compress, count
from typing import Dict, List, Optional

from .abi import BTF_MAGIC, BTFKind
from .errors import BTFError

__all__ = [
    "BTF", "BTFExt", "BTFType", "Member", "ArrayInfo", "Param", "VarSecinfo", "EnumValue",
    "FuncInfoRec", "LineInfoRec", "CoreReloRec", "essential_name",
    "BTF_INT_SIGNED", "BTF_INT_CHAR", "BTF_INT_BOOL", "BTF_VAR_STATIC", "BTF_VAR_GLOBAL_ALLOCATED",
    "BTF_VAR_GLOBAL_EXTERN", "BTF_FUNC_STATIC", "BTF_FUNC_GLOBAL", "BTF_FUNC_EXTERN",
]

# INT encoding bits and VAR/FUNC linkage values (uapi/linux/btf.h).
BTF_INT_SIGNED = 1
BTF_INT_CHAR = 2
BTF_INT_BOOL = 4
BTF_VAR_STATIC = 0
BTF_VAR_GLOBAL_ALLOCATED = 1
BTF_VAR_GLOBAL_EXTERN = 2
BTF_FUNC_STATIC = 0
BTF_FUNC_GLOBAL = 1
BTF_FUNC_EXTERN = 2

PTR_SIZE = 8                # BPF is a 64-bit target; pointers in BTF are 8 bytes
_MAX_CHAIN = 64             # modifier/typedef/array chains longer than this are treated as corrupt

_HDR = struct.Struct("=HBBIIIII")          # struct btf_header
_HDR_SIZE = _HDR.size                      # 24
_EXT_HDR = struct.Struct("=HBBIIIII")      # struct btf_ext_header up to line_info_len
_EXT_CORE = struct.Struct("=II")           # core_relo_off, core_relo_len (present when hdr_len >= 32)

Member = namedtuple("Member", "name type bit_offset bitfield_size")
ArrayInfo = namedtuple("ArrayInfo", "elem_type index_type nelems")
Param = namedtuple("Param", "name type")
VarSecinfo = namedtuple("VarSecinfo", "type offset size")
EnumValue = namedtuple("EnumValue", "name value")

# Size of each kind's record in 32-bit words: three words of struct btf_type, plus a fixed tail, plus
# `vlen` repeated items.  These drive the index walk.
_LAYOUT = {
    BTFKind.INT: (4, 0),
    BTFKind.PTR: (3, 0),
    BTFKind.ARRAY: (6, 0),
    BTFKind.STRUCT: (3, 3),
    BTFKind.UNION: (3, 3),
    BTFKind.ENUM: (3, 2),
    BTFKind.FWD: (3, 0),
    BTFKind.TYPEDEF: (3, 0),
    BTFKind.VOLATILE: (3, 0),
    BTFKind.CONST: (3, 0),
    BTFKind.RESTRICT: (3, 0),
    BTFKind.FUNC: (3, 0),           # vlen holds the linkage, not a count
    BTFKind.FUNC_PROTO: (3, 2),
    BTFKind.VAR: (4, 0),
    BTFKind.DATASEC: (3, 3),
    BTFKind.FLOAT: (3, 0),
    BTFKind.DECL_TAG: (4, 0),
    BTFKind.TYPE_TAG: (3, 0),
    BTFKind.ENUM64: (3, 3),
}
# The walk indexes these tables with the top 16 bits of `info`: bits 8..12 are the kind, bit 15 the
# kind_flag, and every other bit is reserved (must be zero).  Anything invalid gets a step so large
# that the walk overshoots the end, which is diagnosed once after the loop instead of being tested
# for on every type.
_BAD_STEP = 1 << 40
_STEP_BASE = [_BAD_STEP] * 65536
_STEP_VLEN = [0] * 65536
for _kind, (_base, _per) in _LAYOUT.items():
    for _kflag in (0, 1):
        _STEP_BASE[(_kflag << 15) | (_kind << 8)] = _base
        _STEP_VLEN[(_kflag << 15) | (_kind << 8)] = _per
del _kind, _base, _per, _kflag

_KINDS = tuple(BTFKind(k) if k in BTFKind._value2member_map_ else k for k in range(32))
_SIZED = frozenset({BTFKind.INT, BTFKind.STRUCT, BTFKind.UNION, BTFKind.ENUM, BTFKind.ENUM64,
                    BTFKind.DATASEC, BTFKind.FLOAT})
_REFERS = frozenset({BTFKind.PTR, BTFKind.TYPEDEF, BTFKind.VOLATILE, BTFKind.CONST,
                     BTFKind.RESTRICT, BTFKind.TYPE_TAG, BTFKind.FUNC, BTFKind.VAR,
                     BTFKind.DECL_TAG, BTFKind.FUNC_PROTO})
_MODIFIERS = frozenset({BTFKind.CONST, BTFKind.VOLATILE, BTFKind.RESTRICT, BTFKind.TYPE_TAG})
_MODS_AND_TYPEDEF = _MODIFIERS | {BTFKind.TYPEDEF}
_KIND_WORDS = {BTFKind.STRUCT: "struct", BTFKind.UNION: "union", BTFKind.ENUM: "enum",
               BTFKind.ENUM64: "enum", BTFKind.FWD: "struct"}


def essential_name(name: str) -> str:
    """`name` without its CO-RE flavor suffix: "sock___v510" -> "sock", "a___b___c" -> "a___b".

    libbpf's rule: the suffix starts at the last "X___Y" where X and Y are not underscores.
    """
    for i in range(len(name) - 5, -1, -1):
        if name[i] != "_" and name[i + 1:i + 4] == "___" and name[i + 4] != "_":
            return name[:i + 1]
    return name


class BTFType:
    """One decoded BTF type.  Attributes not meaningful for a kind are None."""

    __slots__ = ("id", "kind", "name", "name_off", "kind_flag", "vlen", "size", "type", "members",
                 "array", "values", "params", "vars", "int_encoding", "int_offset", "int_bits",
                 "linkage", "component_idx")

    def __init__(self, id, kind, name, name_off=0, kind_flag=False, vlen=0):
        self.id = id
        self.kind = kind
        self.name = name
        self.name_off = name_off
        self.kind_flag = kind_flag
        self.vlen = vlen
        self.size = None            # INT STRUCT UNION ENUM ENUM64 DATASEC FLOAT
        self.type = None            # PTR TYPEDEF CONST VOLATILE RESTRICT TYPE_TAG FUNC VAR DECL_TAG,
        #                             and the return type of a FUNC_PROTO
        self.members = None         # STRUCT UNION: [Member]
        self.array = None           # ARRAY: ArrayInfo
        self.values = None          # ENUM ENUM64: [EnumValue]
        self.params = None          # FUNC_PROTO: [Param]
        self.vars = None            # DATASEC: [VarSecinfo]
        self.int_encoding = None    # INT
        self.int_offset = None
        self.int_bits = None
        self.linkage = None         # VAR FUNC
        self.component_idx = None   # DECL_TAG (-1: the tag is on the type itself)

    @property
    def is_any_enum(self) -> bool:
        return self.kind in (BTFKind.ENUM, BTFKind.ENUM64)

    @property
    def is_signed(self) -> bool:
        """INT with the SIGNED bit, or an enum whose kind_flag says its values are signed."""
        if self.kind == BTFKind.INT:
            return bool(self.int_encoding & BTF_INT_SIGNED)
        return self.is_any_enum and self.kind_flag

    def __repr__(self):
        extra = []
        for attr in ("size", "type", "linkage", "int_encoding", "int_bits", "int_offset", "array",
                     "component_idx"):
            value = getattr(self, attr)
            if value is not None:
                extra.append(f"{attr}={value!r}")
        for attr in ("members", "values", "params", "vars"):
            value = getattr(self, attr)
            if value is not None:
                extra.append(f"{attr}=[{len(value)}]")
        kind = self.kind.name if isinstance(self.kind, BTFKind) else self.kind
        return f"<BTFType [{self.id}] {kind} {self.name!r} {' '.join(extra)}>"


class BTF:
    """Raw BTF: header, type section and string section.

    Construction validates the header, the section bounds and the extent of every type record and
    checks that every type's name offset is inside the string section; the rest (member names, referenced
    type ids, ...) is checked when a type is decoded.
    """

    _vmlinux_cache: Dict[str, "BTF"] = {}

    def __init__(self, data):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BTFError(f"BTF data must be bytes, not {type(data).__name__}")
        # a private immutable copy: the index must not go stale if the caller reuses its buffer
        self._parse(data if isinstance(data, bytes) else bytes(data))

    def _parse(self, buf):
        """Validate and index `buf` (bytes, or a bytearray nobody else holds)."""
        self._buf = buf
        self._raw = buf if isinstance(buf, bytes) else None
        if len(buf) < _HDR_SIZE:
            raise BTFError(f"BTF is truncated: {len(buf)} bytes, the header alone needs {_HDR_SIZE}")
        magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = _HDR.unpack_from(buf, 0)
        if magic != BTF_MAGIC:
            if magic == 0x9FEB:
                raise BTFError("BTF is in the other byte order than this machine; not supported")
            raise BTFError(f"bad BTF magic {magic:#06x} (expected {BTF_MAGIC:#06x})")
        if version != 1:
            raise BTFError(f"unsupported BTF version {version}")
        if hdr_len < _HDR_SIZE or hdr_len > len(buf):
            raise BTFError(f"bad BTF header length {hdr_len} (data is {len(buf)} bytes)")
        type_start = hdr_len + type_off
        str_start = hdr_len + str_off
        if type_start + type_len > len(buf):
            raise BTFError(f"BTF type section ({type_len} bytes at {type_start}) extends past the "
                           f"end of the data ({len(buf)} bytes)")
        if str_start + str_len > len(buf):
            raise BTFError(f"BTF string section ({str_len} bytes at {str_start}) extends past the "
                           f"end of the data ({len(buf)} bytes)")
        if type_off % 4 or type_len % 4 or type_start % 4:
            raise BTFError(f"BTF type section is not 4-byte aligned (offset {type_off}, "
                           f"length {type_len})")
        if str_len == 0 or buf[str_start] != 0 or buf[str_start + str_len - 1] != 0:
            raise BTFError("BTF string section must start and end with a NUL byte")
        self.flags = flags
        self.hdr_len = hdr_len
        self._type_start = type_start
        self._type_len = type_len
        self._str_start = str_start
        self._str_end = str_start + str_len
        self._words = memoryview(buf)[type_start:type_start + type_len].cast("I")
        self._offs, self._names = self._walk(self._words)
        if len(self._names) > 1:
            top = max(self._names)
            if top >= str_len:
                bad = self._names.index(top)
                raise BTFError(f"BTF type [{bad}] has name offset {top} outside the string section "
                               f"({str_len} bytes)")
        self._cache: Dict[int, BTFType] = {}
        self._str_cache: Dict[int, str] = {}
        self._skip_mods_cache: Dict[int, int] = {}
        self._skip_all_cache: Dict[int, int] = {}
        self._name_cache: Dict[str, List[int]] = {}
        self._ess_cache: Dict[str, List[int]] = {}
        self._names_bytes: Optional[bytes] = None
        self._name_off_set: Optional[set] = None
        self._flavored: Optional[Dict[str, List[int]]] = None
        # True when every type name is a whole string of the string section (see prefetch_names)
        self._whole_string_names = False

    @staticmethod
    def _walk(words):
        """Index every type record: word offset (into the type section) and name offset, by type id.

        This is the hot loop of start-up (~130k iterations for vmlinux), hence the local aliases, the
        table lookups instead of branches and the error check deferred to after the loop.
        """
        offs = array("I", [0])          # id 0 is void, which has no record
        names = array("I", [0])
        add_off = offs.append
        add_name = names.append
        base = _STEP_BASE
        per = _STEP_VLEN
        n = len(words)
        i = 0
        try:
            while i < n:
                info = words[i + 1]
                hi = info >> 16
                add_off(i)
                add_name(words[i])
                i += base[hi] + (info & 0xFFFF) * per[hi]
        except IndexError:
            raise BTFError(f"BTF type section is truncated inside type [{len(offs)}] "
                           f"(4 bytes left, a type needs at least 12)") from None
        if i != n:
            last = len(offs) - 1
            info = words[offs[last] + 1]
            kind = (info >> 24) & 0x1F
            if base[info >> 16] == _BAD_STEP:
                if kind not in _LAYOUT:
                    raise BTFError(f"BTF type [{last}] has unknown kind {kind}")
                raise BTFError(f"BTF type [{last}] has reserved bits set in its info word "
                               f"({info:#010x})")
            raise BTFError(f"BTF type [{last}] ({_KINDS[kind].name}, vlen {info & 0xFFFF}) extends "
                           f"past the end of the type section")
        return offs, names

    # --- construction from the kernel ---------------------------------------------------------------

    @classmethod
    def load_vmlinux(cls, path: str = "/sys/kernel/btf/vmlinux") -> "BTF":
        """The running kernel's BTF, parsed once per process."""
        btf = cls._vmlinux_cache.get(path)
        if btf is None:
            btf = cls.__new__(cls)
            btf._parse(_read_file(path))    # the buffer is ours alone: no copy
            # pahole writes kernel BTF through libbpf, which stores each string once and whole
            btf._whole_string_names = True
            cls._vmlinux_cache[path] = btf
        return btf

    # --- basic accessors --------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of types including void (so valid ids are 0 .. len-1)."""
        return len(self._offs)

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = bytes(self._buf)
        return self._raw

    def string(self, off: int) -> str:
        """The NUL-terminated string at `off` in the string section."""
        s = self._str_cache.get(off)
        if s is not None:
            return s
        if not isinstance(off, int) or off < 0 or self._str_start + off >= self._str_end:
            raise BTFError(f"BTF string offset {off} is outside the string section "
                           f"({self._str_end - self._str_start} bytes)")
        start = self._str_start + off
        # The section ends with NUL (checked in __init__), so index() always finds one.
        end = self._buf.index(b"\0", start, self._str_end)
        s = self._buf[start:end].decode("utf-8", "replace")
        self._str_cache[off] = s
        return s

    def kind(self, type_id: int):
        """Kind of a type without decoding it (BTFKind; UNKN for void)."""
        self._check_id(type_id)
        if type_id == 0:
            return BTFKind.UNKN
        return _KINDS[(self._words[self._offs[type_id] + 1] >> 24) & 0x1F]

    def name_of(self, type_id: int) -> str:
        """Name of a type without decoding it ("" for void and anonymous types)."""
        self._check_id(type_id)
        return self.string(self._names[type_id]) if type_id else ""

    def _check_id(self, type_id):
        if not isinstance(type_id, int) or type_id < 0 or type_id >= len(self._offs):
            raise BTFError(f"BTF type id {type_id!r} out of range (BTF has {len(self._offs)} types "
                           f"including void)")

    def _ref(self, type_id):
        """Third word of a type record (size or referenced type id)."""
        return self._words[self._offs[type_id] + 2]

    # --- decoding -----------------------------------------------------------------------------------

    def type(self, type_id: int) -> BTFType:
        """Decoded type `type_id` (cached).  Id 0 is void."""
        t = self._cache.get(type_id)
        if t is not None:
            return t
        self._check_id(type_id)
        if type_id == 0:
            t = BTFType(0, BTFKind.UNKN, "")
            self._cache[0] = t
            return t
        w = self._words
        o = self._offs[type_id]
        name_off, info, size_type = w[o], w[o + 1], w[o + 2]
        kind = _KINDS[(info >> 24) & 0x1F]
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        t = BTFType(type_id, kind, self.string(name_off), name_off, kflag, vlen)
        tail = o + 3
        if kind in _SIZED:
            t.size = size_type
        elif kind in _REFERS:
            t.type = size_type
        if kind == BTFKind.INT:
            v = w[tail]
            t.int_encoding = (v >> 24) & 0x0F
            t.int_offset = (v >> 16) & 0xFF
            t.int_bits = v & 0xFF
        elif kind == BTFKind.ARRAY:
            t.array = ArrayInfo(w[tail], w[tail + 1], w[tail + 2])
        elif kind in (BTFKind.STRUCT, BTFKind.UNION):
            members = []
            for j in range(tail, tail + 3 * vlen, 3):
                off = w[j + 2]
                if kflag:
                    members.append(Member(self.string(w[j]), w[j + 1], off & 0xFFFFFF, off >> 24))
                else:
                    members.append(Member(self.string(w[j]), w[j + 1], off, 0))
            t.members = members
        elif kind == BTFKind.ENUM:
            values = []
            for j in range(tail, tail + 2 * vlen, 2):
                v = w[j + 1]
                if kflag and v & 0x80000000:
                    v -= 1 << 32
                values.append(EnumValue(self.string(w[j]), v))
            t.values = values
        elif kind == BTFKind.ENUM64:
            values = []
            for j in range(tail, tail + 3 * vlen, 3):
                v = w[j + 1] | (w[j + 2] << 32)
                if kflag and v >> 63:
                    v -= 1 << 64
                values.append(EnumValue(self.string(w[j]), v))
            t.values = values
        elif kind == BTFKind.FUNC_PROTO:
            t.params = [Param(self.string(w[j]), w[j + 1]) for j in range(tail, tail + 2 * vlen, 2)]
        elif kind == BTFKind.DATASEC:
            t.vars = [VarSecinfo(w[j], w[j + 1], w[j + 2]) for j in range(tail, tail + 3 * vlen, 3)]
        elif kind == BTFKind.VAR:
            t.linkage = w[tail]
        elif kind == BTFKind.FUNC:
            t.linkage = vlen
        elif kind == BTFKind.DECL_TAG:
            v = w[tail]
            t.component_idx = v - (1 << 32) if v & 0x80000000 else v
        self._cache[type_id] = t
        return t

    def __iter__(self):
        """All decoded types, void first."""
        return (self.type(i) for i in range(len(self._offs)))

    def describe(self, type_id: int) -> str:
        """Human name for messages: "struct sock", "enum bpf_map_type", "u32", "void", "[42] anon struct"."""
        try:
            kind = self.kind(type_id)
            name = self.name_of(type_id)
        except BTFError:
            return f"[{type_id}] <invalid>"
        if type_id == 0:
            return "void"
        word = _KIND_WORDS.get(kind)
        if kind == BTFKind.FWD and self.type(type_id).kind_flag:
            word = "union"
        if name:
            return f"{word} {name}" if word else name
        return f"[{type_id}] anonymous {word or kind.name.lower()}"

    # --- type arithmetic -----------------------------------------------------------------------------

    def skip_modifiers(self, type_id: int) -> int:
        """Follow const/volatile/restrict/type_tag to the first other type."""
        return self._skip(type_id, _MODIFIERS, self._skip_mods_cache)

    def skip_mods_and_typedefs(self, type_id: int) -> int:
        """Follow modifiers and typedefs to the first other type."""
        return self._skip(type_id, _MODS_AND_TYPEDEF, self._skip_all_cache)

    def _skip(self, type_id, kinds, cache):
        found = cache.get(type_id)
        if found is not None:
            return found
        start = type_id
        for _ in range(_MAX_CHAIN):
            if self.kind(type_id) not in kinds:
                cache[start] = type_id
                return type_id
            type_id = self._ref(type_id)
        raise BTFError(f"BTF type chain starting at [{start}] is too long or cyclic")

    def resolve_size(self, type_id: int) -> int:
        """Size in bytes of an object of this type (libbpf's btf__resolve_size rules)."""
        start = type_id
        nelems = 1
        for _ in range(_MAX_CHAIN):
            kind = self.kind(type_id)
            if kind in _SIZED:
                size = self._ref(type_id)
                break
            if kind == BTFKind.PTR:
                size = PTR_SIZE
                break
            if kind in (BTFKind.TYPEDEF, BTFKind.VOLATILE, BTFKind.CONST, BTFKind.RESTRICT,
                        BTFKind.VAR, BTFKind.DECL_TAG, BTFKind.TYPE_TAG):
                type_id = self._ref(type_id)
            elif kind == BTFKind.ARRAY:
                arr = self.type(type_id).array
                nelems *= arr.nelems
                if nelems > 0xFFFFFFFF:
                    raise BTFError(f"BTF type [{start}] is too large")
                type_id = arr.elem_type
            else:
                raise BTFError(f"BTF type [{start}] ({self.describe(start)}) has no size "
                               f"(resolves to {self.describe(type_id)})")
        else:
            raise BTFError(f"BTF type chain starting at [{start}] is too long or cyclic")
        total = size * nelems
        if total > 0xFFFFFFFF:
            raise BTFError(f"BTF type [{start}] is too large")
        return total

    # --- lookup by name ----------------------------------------------------------------------------

    def find_by_name(self, name: str, kind=None) -> List[int]:
        """Ids of all types named exactly `name` (optionally only of `kind`), ascending."""
        ids = self._name_cache.get(name)
        if ids is None:
            if name == "":
                ids = self._anonymous_ids()
            else:
                ids = self._ids_at(self._string_offsets(name.encode() + b"\0"))
            self._name_cache[name] = ids
        if kind is None:
            return list(ids)
        return [i for i in ids if self.kind(i) == kind]

    def find_by_essential_name(self, name: str) -> List[int]:
        """Ids of all types whose essential (flavor-less) name equals essential_name(name).

        This is libbpf's CO-RE candidate rule: local "sock___old" matches target "sock" and
        "sock___new" alike.
        """
        ess = essential_name(name)
        ids = self._ess_cache.get(ess)
        if ids is None:
            if not ess:
                ids = []
            else:
                offs = self._string_offsets(ess.encode() + b"\0")
                offs.extend(self._flavored_names().get(ess, ()))
                ids = self._ids_at(offs)
            self._ess_cache[ess] = ids
        return list(ids)

    def prefetch_names(self, names) -> None:
        """Look up many names in one pass, so that find_by_name() and find_by_essential_name() answer
        them from cache.  A no-op unless the BTF is the kernel's.

        One lookup on its own scans the ~2 MB string section for every place the name occurs (names
        share tails: "sock" ends "inet_sock") and then the name offsets of all types, ~2.5 ms for
        vmlinux; CO-RE needs ~20 of them.  Here one regex pass finds every whole string that is one of
        the names or a "___flavor" of one, and one pass over the name offsets finds their types
        (~13 ms for all).  Matching whole strings only is exact for BTF whose writer stores each
        string once and whole, as libbpf does for pahole; hand-made BTF whose type names point into
        the tails of other strings is left to the exact one-at-a-time path.
        """
        if not self._whole_string_names:
            return
        wanted = {n for n in names if n and n not in self._name_cache}
        if not wanted:
            return
        alternatives = sorted({essential_name(n) for n in wanted}, key=len, reverse=True)
        essentials = set(alternatives) - self._ess_cache.keys()
        pattern = re.compile(b"\\0(" + b"|".join(re.escape(a.encode()) for a in alternatives)
                             + b")(?:___[^\\0]*)?(?=\\0)")
        base = self._str_start
        exact: Dict[bytes, List[int]] = {}
        for m in pattern.finditer(self._buf, base, self._str_end):
            exact.setdefault(bytes(m[0][1:]), []).append(m.start() + 1 - base)
        offsets = {off for offs in exact.values() for off in offs}
        ids_at: Dict[int, List[int]] = {}
        if offsets:
            for type_id in compress(count(), map(offsets.__contains__, self._names)):
                ids_at.setdefault(self._names[type_id], []).append(type_id)

        def ids_of(offs):
            return sorted(i for off in offs for i in ids_at.get(off, ()))

        for n in wanted:
            self._name_cache[n] = ids_of(exact.get(n.encode(), ()))
        for e in essentials:
            self._ess_cache[e] = ids_of(off for full, offs in exact.items()
                                        if essential_name(full.decode("utf-8", "replace")) == e
                                        for off in offs)

    def _string_offsets(self, needle: bytes) -> List[int]:
        """Every offset in the string section where `needle` starts (names may share tails)."""
        buf, base, end = self._buf, self._str_start, self._str_end
        found = []
        pos = buf.find(needle, base, end)
        while pos >= 0:
            found.append(pos - base)
            pos = buf.find(needle, pos + 1, end)
        return found

    def _name_offsets(self) -> set:
        """Set of all name offsets used by types, built on first use (~6 ms for vmlinux).

        Most places where a name occurs in the string section are tails of longer strings ("sock"
        in "inet_sock") that no type points at; this set rejects them without scanning the index.
        """
        if self._name_off_set is None:
            self._name_off_set = set(self._names)
            self._names_bytes = self._names.tobytes()
        return self._name_off_set

    def _flavored_names(self) -> Dict[str, List[int]]:
        """essential name -> name offsets of types whose name carries a "___flavor" suffix.

        Built once with a single scan for "___" (rare in real BTF), so that each essential-name
        lookup needs only one pass over the string section.
        """
        if self._flavored is None:
            used = self._name_offsets()
            buf, base, end = self._buf, self._str_start, self._str_end
            flavored: Dict[str, List[int]] = {}
            seen = set()
            pos = buf.find(b"___", base, end)
            while pos >= 0:
                start = buf.rfind(b"\0", base, pos) + 1      # the string containing the hit
                stop = buf.index(b"\0", pos, end)
                pos = buf.find(b"___", stop, end)
                if start in seen:
                    continue
                seen.add(start)
                # any offset inside the string may be a (tail-shared) type name
                for off in range(start - base, stop - base):
                    if off in used:
                        name = self.string(off)
                        ess = essential_name(name)
                        if ess != name:
                            flavored.setdefault(ess, []).append(off)
            self._flavored = flavored
        return self._flavored

    def _ids_at(self, name_offs) -> List[int]:
        """Ids of the types whose name offset is in `name_offs`, ascending."""
        if not name_offs:
            return []
        used = self._name_offsets()
        nb = self._names_bytes
        ids = []
        for off in set(name_offs):
            if off not in used:
                continue
            # bytes.find over the packed name offsets runs at C speed (measured ~3x faster than
            # array.index); matches must be word-aligned.
            needle = struct.pack("=I", off)
            pos = nb.find(needle, 4)            # skip void's slot
            while pos >= 0:
                if pos % 4 == 0:
                    ids.append(pos // 4)
                pos = nb.find(needle, pos + 1)
        ids.sort()
        return ids

    def _anonymous_ids(self) -> List[int]:
        buf, base = self._buf, self._str_start
        empty = [off for off in self._name_offsets() if buf[base + off] == 0]
        return self._ids_at(empty)

    # --- preparing object BTF for the kernel ----------------------------------------------------------

    def with_datasec_fixups(self, section_sizes: Dict[str, int],
                            symbol_offsets: Dict[str, int]) -> bytes:
        """Raw BTF with DATASEC sizes and VAR offsets filled in, ready for BPF_BTF_LOAD.

        clang emits DATASEC size 0 and VAR offset 0 and leaves it to the loader (libbpf) to fill them
        in from the ELF section and symbol tables.  `section_sizes` maps ELF section name -> size,
        `symbol_offsets` maps variable name -> st_value.  A DATASEC that already has a size (e.g. a
        statically linked object) keeps its offsets.  Secinfos are also sorted by offset because the
        kernel requires ascending, non-overlapping entries.  Type ids are unchanged, so ids in
        relocations and .BTF.ext stay valid.

        Everything else clang emits is accepted as is by Linux 6.1 and later (all kinds up to
        ENUM64 exist there).  Extern functions and variables (kfuncs, .kconfig, .ksyms) are not
        supported and raise BTFError here rather than an obscure verifier log later.
        """
        out = bytearray(self._buf)
        base = self._type_start
        pack = struct.pack_into
        for type_id in range(1, len(self)):
            kind = self.kind(type_id)
            if kind == BTFKind.FUNC and self.type(type_id).linkage == BTF_FUNC_EXTERN:
                # The kernel rejects extern linkage ("Invalid func linkage"); libbpf rewrites
                # such kfunc declarations, which pytracer does not support.
                raise BTFError(f"the object calls extern function '{self.name_of(type_id)}' "
                               f"(a kfunc or an unlinked function), which pytracer does not support")
            if kind != BTFKind.DATASEC:
                continue
            sec = self.type(type_id)
            size = sec.size
            fix_offsets = False
            if size == 0:
                if sec.name in (".kconfig", ".ksyms"):
                    raise BTFError(f"the object uses extern variables (section '{sec.name}'), "
                                   f"which pytracer does not support")
                if sec.name not in section_sizes:
                    raise BTFError(f"DATASEC '{sec.name}' has size 0 and there is no ELF section of "
                                   f"that name to take it from")
                size = section_sizes[sec.name]
                if not isinstance(size, int) or not 0 < size <= 0xFFFFFFFF:
                    raise BTFError(f"bad size {size!r} for section '{sec.name}'")
                fix_offsets = True
            entries = []
            for vsi in sec.vars:
                offset = vsi.offset
                target = self.type(vsi.type) if 0 < vsi.type < len(self) else None
                if target is None or target.kind not in (BTFKind.VAR, BTFKind.FUNC):
                    raise BTFError(f"DATASEC '{sec.name}' refers to [{vsi.type}], which is not a "
                                   f"variable or function")
                if fix_offsets and target.kind == BTFKind.VAR:
                    if target.name not in symbol_offsets:
                        raise BTFError(f"no ELF symbol for variable '{target.name}' in section "
                                       f"'{sec.name}'")
                    offset = symbol_offsets[target.name]
                if not isinstance(offset, int) or offset < 0 or offset + vsi.size > size:
                    raise BTFError(f"variable '{target.name}' ({vsi.size} bytes at offset {offset}) "
                                   f"does not fit in section '{sec.name}' ({size} bytes)")
                entries.append((offset, vsi.type, vsi.size))
            entries.sort()
            rec = base + self._offs[type_id] * 4
            pack("=I", out, rec + 8, size)
            for k, (offset, vtype, vsize) in enumerate(entries):
                pack("=III", out, rec + 12 + 12 * k, vtype, offset, vsize)
        return bytes(out)


def _read_file(path: str) -> bytearray:
    """Whole file into a preallocated buffer.

    sysfs hands out at most one page per read, so this loops; readv into a memoryview avoids the
    intermediate bytes objects (and the final join) of a buffered read().
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise BTFError(f"cannot open kernel BTF {path}: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = os.readv(fd, [view[got:]])
            if n <= 0:
                break
            got += n
        if got < size:
            raise BTFError(f"kernel BTF {path} is shorter than its reported size "
                           f"({got} < {size} bytes)")
        # A file that grew (or reports size 0, as some pseudo-files do) is read to its real end.
        if size == 0 or os.read(fd, 1):
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            buf = bytearray(b"".join(chunks))
        view.release()
        return buf
    except OSError as e:
        raise BTFError(f"cannot read kernel BTF {path}: {e.strerror}") from None
    finally:
        os.close(fd)


# --- .BTF.ext ----------------------------------------------------------------------------------------

FuncInfoRec = namedtuple("FuncInfoRec", "insn_off_bytes type_id")
CoreReloRec = namedtuple("CoreReloRec", "insn_off_bytes type_id access_str kind")


class LineInfoRec(namedtuple("LineInfoRec", "insn_off_bytes file_name_off line_off line_col")):
    """bpf_line_info: string offsets into the object's BTF; line_col packs line << 10 | column."""

    __slots__ = ()

    @property
    def line(self) -> int:
        return self.line_col >> 10


class BTFExt:
    """.BTF.ext: per-section func_info, line_info and CO-RE relocation records.

    Each of func_info, line_info and core_relos maps an ELF section name to its records, whose
    insn_off_bytes count bytes from the start of that section.  Records longer than the layout known
    here (a newer compiler) are read for their known prefix.
    """

    # minimum record sizes: bpf_func_info, bpf_line_info, bpf_core_relo
    _MIN_FUNC, _MIN_LINE, _MIN_CORE = 8, 16, 16

    def __init__(self, data, btf: BTF):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BTFError(f".BTF.ext data must be bytes, not {type(data).__name__}")
        data = bytes(data)
        self.btf = btf
        if len(data) < _EXT_HDR.size:
            raise BTFError(f".BTF.ext is truncated: {len(data)} bytes, the header needs "
                           f"{_EXT_HDR.size}")
        (magic, version, flags, hdr_len, func_off, func_len, line_off,
         line_len) = _EXT_HDR.unpack_from(data, 0)
        if magic != BTF_MAGIC:
            raise BTFError(f"bad .BTF.ext magic {magic:#06x} (expected {BTF_MAGIC:#06x})")
        if version != 1:
            raise BTFError(f"unsupported .BTF.ext version {version}")
        if hdr_len < _EXT_HDR.size or hdr_len > len(data):
            raise BTFError(f"bad .BTF.ext header length {hdr_len} (data is {len(data)} bytes)")
        core_off = core_len = 0
        if hdr_len >= _EXT_HDR.size + _EXT_CORE.size:
            core_off, core_len = _EXT_CORE.unpack_from(data, _EXT_HDR.size)
        self.flags = flags
        self.func_info_rec_size, self.func_info = self._section(
            data, hdr_len, func_off, func_len, self._MIN_FUNC, "func_info", self._func_rec)
        self.line_info_rec_size, self.line_info = self._section(
            data, hdr_len, line_off, line_len, self._MIN_LINE, "line_info", self._line_rec)
        self.core_relo_rec_size, self.core_relos = self._section(
            data, hdr_len, core_off, core_len, self._MIN_CORE, "core_relo", self._core_rec)

    def _func_rec(self, words):
        return FuncInfoRec(words[0], words[1])

    def _line_rec(self, words):
        return LineInfoRec(words[0], words[1], words[2], words[3])

    def _core_rec(self, words):
        return CoreReloRec(words[0], words[1], self.btf.string(words[2]), words[3])

    def _section(self, data, hdr_len, off, length, min_rec, what, make):
        """Parse one info block: rec_size, then (sec_name_off, num_info, records...) repeated."""
        if length == 0:
            return min_rec, {}
        start = hdr_len + off
        end = start + length
        if end > len(data):
            raise BTFError(f".BTF.ext {what} ({length} bytes at {start}) extends past the end of "
                           f"the data ({len(data)} bytes)")
        if length < 4:
            raise BTFError(f".BTF.ext {what} is too short to hold its record size")
        (rec_size,) = struct.unpack_from("=I", data, start)
        if rec_size < min_rec or rec_size % 4:
            raise BTFError(f".BTF.ext {what} record size {rec_size} is invalid (minimum {min_rec}, "
                           f"multiple of 4)")
        nwords = min_rec // 4
        rec = struct.Struct(f"={nwords}I{rec_size - min_rec}x")
        sections: Dict[str, list] = {}
        pos = start + 4
        while pos < end:
            if pos + 8 > end:
                raise BTFError(f".BTF.ext {what} is truncated in a section header at {pos}")
            name_off, count = struct.unpack_from("=II", data, pos)
            pos += 8
            name = self.btf.string(name_off)
            if count > (end - pos) // rec_size:
                raise BTFError(f".BTF.ext {what} for section '{name}' claims {count} records of "
                               f"{rec_size} bytes, more than the {end - pos} bytes left")
            chunk = data[pos:pos + count * rec_size]
            sections.setdefault(name, []).extend(make(w) for w in rec.iter_unpack(chunk))
            pos += count * rec_size
        return rec_size, sections

