"""ELF reading: a clang-built BPF object file -> ObjectSpec (programs linked with their subprograms, maps,
global data), with BTF.ext func/line info and CO-RE relocations re-based onto each linked program.

Nothing here touches the kernel; CO-RE relocations are only collected (core.py applies them).
"""
import bisect
import io
import os
import re
import struct
from collections import namedtuple

from . import abi, uapi
from .btf import BTF, BTFExt
from .errors import ObjectFormatError
from .spec import CoreReloSpec, MapRelocSpec, MapSpec, ObjectSpec, ProgramSpec

EM_BPF = 247
SHT_SYMTAB = 2
SHT_NOBITS = 8
SHT_REL = 9
SHF_EXECINSTR = 0x4
STT_OBJECT, STT_FUNC, STT_SECTION = 1, 2, 3
SHN_LORESERVE = 0xFF00      # section indexes from here up are special (ABS, COMMON, ...), not sections
GLOBAL_DATA_SECTIONS = (".rodata", ".data", ".bss")
# A global-data section becomes one array map value; refuse absurd sizes before allocating them.
MAX_GLOBAL_DATA = 1 << 24
_INSN = uapi.BPF_INSN.struct
_SYM = struct.Struct("<IBBHQQ")     # Elf64_Sym: name, info, other, shndx, value, size
_REL = struct.Struct("<QQ")         # Elf64_Rel: offset, info (symbol index << 32 | type)

# BPF_CALL with src_reg BPF_PSEUDO_CALL (a call to a BPF function): opcode byte, then dst/src nibbles
_PSEUDO_CALL = re.compile(re.escape(bytes([abi.INSN_CALL])) + b"[\\x%02x-\\x%02x]"
                          % (abi.BPF_PSEUDO_CALL << 4, abi.BPF_PSEUDO_CALL << 4 | 0xF))

def _parser_errors():
    """The exceptions pyelftools (and construct, which it parses with) raise on a corrupt file; anything
    else (MemoryError, RecursionError, a bug) is not turned into a format error."""
    import construct
    from elftools.common.exceptions import ELFError

    return (ELFError, construct.ConstructError, struct.error, ValueError, IndexError, KeyError, UnicodeError,
            OverflowError, AssertionError)


# A symbol-table entry; `type` is STT_*, `shndx` the raw section index.
Symbol = namedtuple("Symbol", "name type shndx value size")

# section prefix -> (program type, expected attach type, attach kind)
SECTION_TYPES = (
    ("tracepoint/", abi.ProgType.TRACEPOINT, 0, "tracepoint"),
    ("tp/", abi.ProgType.TRACEPOINT, 0, "tracepoint"),
    ("tp_btf/", abi.ProgType.TRACING, abi.AttachType.TRACE_RAW_TP, "tp_btf"),
    ("raw_tracepoint/", abi.ProgType.RAW_TRACEPOINT, 0, "raw_tracepoint"),
    ("raw_tp/", abi.ProgType.RAW_TRACEPOINT, 0, "raw_tracepoint"),
    # BPF iterators: run on demand (BPFObject.run_iterator), never attached to an event
    ("iter/", abi.ProgType.TRACING, abi.AttachType.TRACE_ITER, "iter"),
)
SUPPORTED_SECTIONS = ", ".join(p + "..." for p, *_ in SECTION_TYPES)


def program_type_for(section):
    for prefix, ptype, atype, kind in SECTION_TYPES:
        if section.startswith(prefix) and len(section) > len(prefix):
            return ptype, atype, kind, section[len(prefix):]
    return None


class _Func:
    """A function inside an executable section, in instruction units."""

    __slots__ = ("name", "section", "start", "end")

    def __init__(self, name, section, start, end):
        self.name, self.section, self.start, self.end = name, section, start, end


def read_object(path_or_bytes, name=None):
    """Parse a BPF ELF object (path or bytes) into an ObjectSpec. Raises ObjectFormatError on bad input."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data, path = bytes(path_or_bytes), name or "<memory>"
    else:
        path = os.fspath(path_or_bytes)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ObjectFormatError(f"cannot read BPF object {path}: {e.strerror}") from None
    try:
        return _Reader(data, path).read()
    except ObjectFormatError as e:      # BTFError too: the BTF parser does not know the file's name
        if e.path is None:
            e.path = path
        raise e from None
    except _parser_errors() as e:        # what pyelftools raises on corrupt input
        raise ObjectFormatError(f"not a valid BPF object file ({type(e).__name__}: {e})", path=path) from None


class _Reader:
    def _error(self, message, section=None):
        return ObjectFormatError(message, path=self.path, section=section)

    def __init__(self, data, path):
        from elftools.elf.elffile import ELFFile  # imported here: it is the slowest import on the cold path

        self.path = path
        if data[:4] != b"\x7fELF":
            raise self._error("not an ELF file")
        self.elf = ELFFile(io.BytesIO(data))
        if self.elf["e_machine"] not in ("EM_BPF", EM_BPF):
            raise self._error(f"ELF machine is {self.elf['e_machine']}, not BPF")
        if not self.elf.little_endian or self.elf.elfclass != 64:
            raise self._error("only 64-bit little-endian BPF objects are supported")
        self.sections = list(self.elf.iter_sections())
        self.by_name = {s.name: (i, s) for i, s in enumerate(self.sections)}
        symtab = self.by_name.get(".symtab")
        if symtab is None or symtab[1]["sh_type"] not in ("SHT_SYMTAB", SHT_SYMTAB):
            raise self._error("no symbol table")
        self.symbols = self._read_symbols(symtab[1])

    def _read_symbols(self, symtab):
        """The symbol table, unpacked in one call: pyelftools builds a construct container per symbol,
        which costs ~20 ms for an object of a few hundred symbols, a large share of a cold start."""
        data = symtab.data()
        if len(data) % _SYM.size:
            raise self._error(f"symbol table size {len(data)} is not a multiple of "
                                    f"{_SYM.size}")
        link = symtab["sh_link"]
        if not 0 < link < len(self.sections):
            raise self._error(f"symbol table names string table {link}, which "
                                    f"does not exist")
        strtab = self.sections[link].data()
        symbols = []
        for name_off, info, _other, shndx, value, size in _SYM.iter_unpack(data):
            end = strtab.find(b"\0", name_off)
            if name_off >= len(strtab) or end < 0:
                raise self._error(f"symbol name offset {name_off} is outside the "
                                        f"string table ({len(strtab)} bytes)")
            if SHN_LORESERVE > shndx >= len(self.sections):
                raise self._error(f"symbol in section {shndx}, which does not exist")
            name = strtab[name_off:end].decode("utf-8", "replace")
            symbols.append(Symbol(name, info & 0xF, shndx, value, size))
        return symbols

    @staticmethod
    def _in_section(sym):
        """Whether `sym` is defined in a real section (not undefined, absolute or common)."""
        return 0 < sym.shndx < SHN_LORESERVE

    # ------------------------------------------------------------------------------------------
    def read(self):
        btf_sec = self.by_name.get(".BTF")
        if btf_sec is None:
            raise self._error("no .BTF section (compile with clang -g)")
        self.btf = BTF(btf_sec[1].data())
        ext_sec = self.by_name.get(".BTF.ext")
        self.ext = BTFExt(ext_sec[1].data(), self.btf) if ext_sec else None

        lic = self.by_name.get("license")
        license_ = lic[1].data().split(b"\0", 1)[0].decode("ascii", "replace") if lic else ""
        if not license_:
            raise self._error("no license section")

        self._index_code()
        maps = self._read_maps()
        self.map_sections = {sec: m.name for m in maps.values() if m.section != ".maps"
                             for sec in [m.section]}
        programs = {}
        for f in self.funcs:
            if f.section == ".text":
                continue
            ptype, atype, kind, target = self.prog_kinds[f.section]
            prog = self._link(f)
            prog.prog_type, prog.expected_attach_type = int(ptype), int(atype)
            prog.attach_kind, prog.attach_target = kind, target
            programs[f.name] = prog
        if not programs:
            raise self._error("no BPF programs found")

        sizes, offsets = {}, {}
        for i, s in enumerate(self.sections):
            sizes[s.name] = s["sh_size"]
        for sym in self.symbols:
            if sym.type == STT_OBJECT and sym.name:
                offsets[sym.name] = sym.value
        btf_bytes = self.btf.with_datasec_fixups(sizes, offsets)
        return ObjectSpec(path=self.path, license=license_, programs=programs, maps=maps, btf=btf_bytes)

    # ------------------------------------------------------------------------------------------
    def _index_code(self):
        """Find program sections and the functions inside every executable section."""
        self.code = {}        # section name -> bytes
        self.prog_kinds = {}  # section name -> (ptype, atype, kind, target)
        for idx, s in enumerate(self.sections):
            if not (s["sh_flags"] & SHF_EXECINSTR) or s["sh_size"] == 0:
                continue
            if s.name != ".text":
                kinds = program_type_for(s.name)
                if kinds is None:
                    raise self._error(
                        f"unknown program section '{s.name}' (pytracer loads only "
                        f"{SUPPORTED_SECTIONS}; kprobes are not used)")
                self.prog_kinds[s.name] = kinds
            data = s.data()
            if len(data) % 8:
                raise self._error(f"section {s.name} is not a whole number of instructions")
            self.code[s.name] = data
        self.funcs = []
        self.funcs_by_sec = {}
        for sym in self.symbols:
            if sym.type != STT_FUNC or not self._in_section(sym):
                continue
            sec = self.sections[sym.shndx]
            if sec.name not in self.code:
                continue
            start, size = sym.value, sym.size
            if start % 8 or size % 8 or start + size > len(self.code[sec.name]) or size == 0:
                raise self._error(f"function {sym.name} lies outside its section")
            f = _Func(sym.name, sec.name, start // 8, (start + size) // 8)
            self.funcs.append(f)
            self.funcs_by_sec.setdefault(sec.name, []).append(f)
        for sec in self.prog_kinds:
            if sec not in self.funcs_by_sec:
                raise self._error(f"section {sec} has code but no function symbol")
        # relocations per target section: insn byte offset -> symbol
        self.relocs = {}
        for s in self.sections:
            if s["sh_type"] not in ("SHT_REL", SHT_REL):
                continue
            if not 0 < s["sh_info"] < len(self.sections):
                raise self._error(f"relocation section {s.name} applies to section "
                                        f"{s['sh_info']}, which does not exist")
            target = self.sections[s["sh_info"]]
            if target.name not in self.code:
                continue
            data = s.data()
            if len(data) % _REL.size:
                raise self._error(f"relocation section {s.name} size {len(data)} is "
                                        f"not a multiple of {_REL.size}")
            table = self.relocs.setdefault(target.name, {})
            for offset, info in _REL.iter_unpack(data):
                if info >> 32 >= len(self.symbols):
                    raise self._error(f"relocation in {s.name} names symbol "
                                            f"{info >> 32}, which does not exist")
                if offset % 8:
                    raise self._error(f"relocation in {s.name} at offset {offset} "
                                            f"is not on an instruction boundary")
                table[offset] = self.symbols[info >> 32]
        # Instructions _link must look at, per section: relocated ones and BPF-to-BPF calls (found
        # with a regex over the code: far cheaper than decoding every instruction in Python).  Any
        # 8-byte slot that looks like a call is one: the second half of an ld_imm64 starts with 0.
        self.sites = {}
        for name, code in self.code.items():
            calls = {m.start() for m in _PSEUDO_CALL.finditer(code) if m.start() % 8 == 0}
            self.sites[name] = sorted(calls.union(self.relocs.get(name, ())))

    def _func_at(self, section, insn_idx):
        for f in self.funcs_by_sec.get(section, ()):
            if f.start == insn_idx:
                return f
        raise self._error(f"call into the middle of a function ({section}+{insn_idx})")

    def _link(self, main):
        """Copy `main` and every subprogram it reaches into one instruction stream."""
        out = bytearray()
        placed = {}           # (section, start) -> base index in `out`
        order = [main]
        placed[(main.section, main.start)] = 0
        prog = ProgramSpec(name=main.name, section=main.section, prog_type=0)
        func_info, line_info = [], []
        i = 0
        while i < len(order):
            f = order[i]
            i += 1
            base = placed[(f.section, f.start)]
            code = bytearray(self.code[f.section][f.start * 8:f.end * 8])
            relocs = self.relocs.get(f.section, {})
            sites = self.sites[f.section]
            first = bisect.bisect_left(sites, f.start * 8)
            last = bisect.bisect_left(sites, f.end * 8)
            for site in sites[first:last]:
                k = site // 8 - f.start
                op, regs, off, imm = _INSN.unpack_from(code, k * 8)
                src = regs >> 4
                sym = relocs.get((f.start + k) * 8)
                if op == abi.INSN_CALL and src == abi.BPF_PSEUDO_CALL:
                    if sym is not None:
                        if not self._in_section(sym):
                            raise self._error(f"{main.name} calls undefined function "
                                                    f"'{sym.name}'")
                        tsec = self.sections[sym.shndx].name
                        tidx = sym.value // 8 + imm + 1
                    else:
                        tsec, tidx = f.section, f.start + k + imm + 1
                    callee = self._func_at(tsec, tidx)
                    key = (callee.section, callee.start)
                    if key not in placed:
                        placed[key] = sum(g.end - g.start for g in order)
                        order.append(callee)
                    _INSN.pack_into(code, k * 8, op, regs, off, placed[key] - (base + k) - 1)
                elif sym is not None and op == abi.INSN_LD_IMM64:
                    self._data_reloc(prog, code, k, base, sym, imm, src)
                elif sym is not None:
                    raise self._error(
                        f"{main.name} has a relocation against '{sym.name}' on an "
                        f"instruction pytracer cannot relocate (opcode {op:#x}; kfuncs, externs and "
                        f"callbacks are not supported)")
            out += code
            self._collect_ext(f, base, prog, func_info, line_info)
        prog.insns = bytes(out)
        if self.ext is not None:
            prog.func_info = b"".join(uapi.BPF_FUNC_INFO.struct.pack(*rec) for rec in sorted(func_info))
            prog.line_info = b"".join(uapi.BPF_LINE_INFO.struct.pack(*rec) for rec in sorted(line_info))
        return prog

    def _data_reloc(self, prog, code, k, base, sym, imm, src):
        if not self._in_section(sym):
            raise self._error(f"{prog.name} refers to undefined symbol '{sym.name}' "
                                    f"(extern variables are not supported)")
        sec = self.sections[sym.shndx].name
        if sec == ".maps":
            prog.map_relocs.append(MapRelocSpec(base + k, sym.name))
            return
        if sec in self.map_sections:
            offset = (sym.value if sym.type != STT_SECTION else 0) + imm
            prog.map_relocs.append(MapRelocSpec(base + k, self.map_sections[sec], offset, True))
            # the kernel reads the offset from the second slot's imm; clear the first
            struct.pack_into("<i", code, k * 8 + 4, 0)
            return
        if src == abi.BPF_PSEUDO_FUNC or sec in self.code:
            raise self._error(f"{prog.name} takes the address of a function "
                                    f"(callbacks are not supported)")
        raise self._error(f"{prog.name} refers to section '{sec}' which pytracer "
                                f"does not load (only .maps, .rodata, .data and .bss)")

    def _collect_ext(self, f, base, prog, func_info, line_info):
        if self.ext is None:
            return
        lo, hi = f.start * 8, f.end * 8
        for off, tid in self.ext.func_info.get(f.section, ()):
            if lo <= off < hi:
                func_info.append((base + off // 8 - f.start, tid))
        for off, file_off, line_off, col in self.ext.line_info.get(f.section, ()):
            if lo <= off < hi:
                line_info.append((base + off // 8 - f.start, file_off, line_off, col))
        for off, tid, access, kind in self.ext.core_relos.get(f.section, ()):
            if lo <= off < hi:
                prog.core_relocs.append(CoreReloSpec(base + off // 8 - f.start, tid, access, kind))

    # ------------------------------------------------------------------------------------------
    def _read_maps(self):
        maps = {}
        objname = os.path.basename(self.path).split(".")[0][:7] or "obj"
        for sec in GLOBAL_DATA_SECTIONS:
            entry = self.by_name.get(sec)
            if entry is None or entry[1]["sh_size"] == 0:
                continue
            s = entry[1]
            size = s["sh_size"]
            if size > MAX_GLOBAL_DATA:
                raise self._error(f"section {sec} claims {size} bytes; global data is "
                                        f"limited to {MAX_GLOBAL_DATA} bytes")
            initial = bytes(size) if s["sh_type"] in ("SHT_NOBITS", SHT_NOBITS) else s.data()
            variables = {}
            for sym in self.symbols:
                if sym.shndx == entry[0] and sym.type == STT_OBJECT and sym.name:
                    ids = self.btf.find_by_name(sym.name, abi.BTFKind.VAR)
                    tid = self.btf.type(ids[0]).type if ids else 0
                    variables[sym.name] = (sym.value, sym.size, tid)
            mname = f"{objname}{sec}"
            maps[mname] = MapSpec(
                name=mname, map_type=int(abi.MapType.ARRAY), key_size=4, value_size=size, max_entries=1,
                flags=abi.BPF_F_RDONLY_PROG if sec == ".rodata" else 0, section=sec, initial=initial,
                freeze=(sec == ".rodata"), variables=variables)
        if ".maps" not in self.by_name:
            return maps
        ids = self.btf.find_by_name(".maps", abi.BTFKind.DATASEC)
        if not ids:
            raise self._error(".maps section without BTF (legacy maps are not supported)")
        for var_id, _off, _size in self.btf.type(ids[0]).vars:
            var = self.btf.type(var_id)
            maps[var.name] = self._map_from_btf(var.name, var.type)
        return maps

    def _map_from_btf(self, name, type_id):
        btf = self.btf
        t = btf.type(btf.skip_mods_and_typedefs(type_id))
        if t.kind != abi.BTFKind.STRUCT:
            raise self._error(f"map '{name}' is not a struct in BTF")
        fields = {}
        for m in t.members:
            mt = btf.type(btf.skip_mods_and_typedefs(m.type))
            if m.name in ("type", "max_entries", "map_flags", "key_size", "value_size", "numa_node",
                          "pinning", "map_extra"):
                # __uint(x, N) is encoded as `int (*x)[N]`
                if mt.kind != abi.BTFKind.PTR:
                    raise self._error(f"map '{name}' field {m.name} is not __uint()")
                arr = btf.type(btf.skip_mods_and_typedefs(mt.type))
                if arr.kind != abi.BTFKind.ARRAY:
                    raise self._error(f"map '{name}' field {m.name} is not __uint()")
                fields[m.name] = arr.array.nelems
            elif m.name in ("key", "value"):
                if mt.kind != abi.BTFKind.PTR:
                    raise self._error(f"map '{name}' field {m.name} is not __type()")
                fields[m.name + "_size"] = btf.resolve_size(mt.type)
            else:
                raise self._error(f"map '{name}' uses unsupported attribute '{m.name}'")
        if "type" not in fields:
            raise self._error(f"map '{name}' has no type")
        mtype = fields["type"]
        key_size = fields.get("key_size", 0)
        value_size = fields.get("value_size", 0)
        max_entries = fields.get("max_entries", 0)
        if mtype == abi.MapType.RINGBUF:
            key_size = value_size = 0
        return MapSpec(name=name, map_type=mtype, key_size=key_size, value_size=value_size,
                       max_entries=max_entries, flags=fields.get("map_flags", 0))
