"""CO-RE: rewrite a program's field offsets, sizes, type facts and enum values for the running kernel.

The rules are libbpf's (tools/lib/bpf/relo_core.c), restated here so that an object behaves the same
whether pytracer or libbpf loads it:

* An access string "0:1:2" is a path from the relocation's root type: the first number indexes an
  array of the root type, each later one is a member index (struct/union) or an array index.  Locally,
  anonymous struct/union members leave no trace in the path; in the target they are searched through
  by name.
* Candidates are the target types of the same kind (enum and enum64 count as one kind) whose
  essential name (the name without a "___flavor" suffix) equals the local one.  A candidate matches
  when every named member on the path exists with a compatible type.  Every matching candidate must
  give the same answer; candidates that fail to match are dropped for later relocations of the same
  local type.
* No match: FIELD_EXISTS/ENUMVAL_EXISTS and the type-based kinds become 0; the other kinds poison the
  instruction (it becomes a call to helper CORE_POISON_HELPER) so the program still loads if that
  instruction is dead code, and the verifier points at it otherwise.
* Before patching, the instruction must hold the value computed from the local BTF, which catches
  relocation records that do not belong to the instruction.
"""
import os
import sys
from typing import Dict, List, Optional

from . import abi, uapi
from .abi import BTFKind, CoreReloKind as K
from .btf import BTF, BTF_INT_SIGNED, essential_name
from .errors import BTFError, CORERelocationError, KernelFeatureError
from .spec import INSN_SIZE, ObjectSpec

__all__ = ["apply_core_relocations"]

SPEC_MAX_LEN = 64           # libbpf's BPF_CORE_SPEC_MAX_LEN: longest access path
_U64 = (1 << 64) - 1
_SHRT_MAX = 0x7FFF

_FIELD_KINDS = frozenset({K.FIELD_BYTE_OFFSET, K.FIELD_BYTE_SIZE, K.FIELD_EXISTS, K.FIELD_SIGNED,
                          K.FIELD_LSHIFT_U64, K.FIELD_RSHIFT_U64})
_TYPE_KINDS = frozenset({K.TYPE_ID_LOCAL, K.TYPE_ID_TARGET, K.TYPE_EXISTS, K.TYPE_SIZE,
                         K.TYPE_MATCHES})
_ENUMVAL_KINDS = frozenset({K.ENUMVAL_EXISTS, K.ENUMVAL_VALUE})
_ENUMS = (BTFKind.ENUM, BTFKind.ENUM64)
_COMPOSITES = (BTFKind.STRUCT, BTFKind.UNION)

# code, dst/src register nibbles, off, imm; instructions are in host byte order
_INSN = uapi.BPF_INSN.struct

# load/store size field <-> bytes
_SIZE_BYTES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}
_BYTES_SIZE = {v: k for k, v in _SIZE_BYTES.items()}
_BPF_MEMSX = 0x80


class _Poison(Exception):
    """The relocation cannot be satisfied: poison the instruction (libbpf's -EUCLEAN)."""


class _Acc:
    """One step of an access path (libbpf's bpf_core_accessor); name is None for array indexing."""

    __slots__ = ("type_id", "idx", "name")

    def __init__(self, type_id, idx, name):
        self.type_id = type_id
        self.idx = idx
        self.name = name


class _Spec:
    """An access path resolved against one BTF (libbpf's bpf_core_spec)."""

    __slots__ = ("btf", "root_type_id", "kind", "accs", "raw", "bit_offset")

    def __init__(self, btf, root_type_id, kind):
        self.btf = btf
        self.root_type_id = root_type_id
        self.kind = kind
        self.accs: List[_Acc] = []
        self.raw: List[int] = []
        self.bit_offset = 0


class _Result:
    """What to do with the instruction (libbpf's bpf_core_relo_res)."""

    __slots__ = ("orig_val", "new_val", "poison", "validate", "fail_memsz_adjust", "orig_sz",
                 "new_sz", "orig_type_id", "new_type_id", "why")

    def __init__(self):
        self.orig_val = self.new_val = 0
        self.poison = False
        self.validate = True
        self.fail_memsz_adjust = False
        self.orig_sz = self.new_sz = 0
        self.orig_type_id = self.new_type_id = 0
        self.why = ""


class _Fail(Exception):
    """A relocation error without program context; _Relocator adds it."""


def apply_core_relocations(spec: ObjectSpec, local: BTF, target: BTF) -> List[str]:
    """Apply every program's CO-RE relocations against `target` (normally vmlinux BTF).

    Patches ProgramSpec.insns, empties core_relocs, sets attach_btf_id for tp_btf and iter programs
    and marks the spec relocated.  Returns one message per poisoned instruction (program,
    instruction, what is missing), for the loader to show if the verifier trips over one.  Raises
    CORERelocationError for relocations that are malformed or ambiguous, KernelFeatureError for a
    missing tp_btf target (a missing iterator target leaves attach_btf_id 0, see _iter_btf_id).  On
    error, `spec` is left unchanged.
    """
    _prefetch_target_names(spec, local, target)
    relocator = _Relocator(local, target)
    messages: List[str] = []
    new_insns: Dict[str, bytes] = {}
    attach_ids: Dict[str, int] = {}
    for key, prog in spec.programs.items():
        if prog.core_relocs:
            insns = bytearray(prog.insns)
            for num, relo in enumerate(prog.core_relocs):
                msg = relocator.apply(prog.name, num, insns, relo)
                if msg:
                    messages.append(msg)
            new_insns[key] = bytes(insns)
        if prog.attach_kind == "tp_btf":
            attach_ids[key] = _tp_btf_id(target, prog)
        elif prog.attach_kind == "iter":
            attach_ids[key] = _iter_btf_id(target, prog)
    for key, prog in spec.programs.items():
        if key in new_insns:
            prog.insns = new_insns[key]
        prog.core_relocs = []
        if key in attach_ids:
            prog.attach_btf_id = attach_ids[key]
    spec.relocated = True
    return messages


def _prefetch_target_names(spec: ObjectSpec, local: BTF, target: BTF) -> None:
    """Give the target every name the relocations below will look up, in one batch (see
    BTF.prefetch_names); bad ids are skipped here and reported by the relocation that uses them."""
    names = set()
    for prog in spec.programs.values():
        if prog.attach_kind == "tp_btf":
            names.add("btf_trace_" + prog.attach_target)
        elif prog.attach_kind == "iter":
            names.add(abi.ITER_FUNC_PREFIX + prog.attach_target)
        for relo in prog.core_relocs:
            if relo.kind != K.TYPE_ID_LOCAL:
                try:
                    names.add(local.name_of(relo.type_id))
                except BTFError:
                    pass
    target.prefetch_names(names)


def _tp_btf_id(target: BTF, prog) -> int:
    name = "btf_trace_" + prog.attach_target
    try:
        ids = target.find_by_name(name, BTFKind.TYPEDEF)
    except BTFError as e:
        raise CORERelocationError(f"program '{prog.name}': looking up {name}: {e}") from None
    if not ids:
        raise KernelFeatureError(
            f"program '{prog.name}' ({prog.section}) needs the BTF-enabled tracepoint "
            f"'{prog.attach_target}', but the running kernel ({os.uname().release}) has no type "
            f"'{name}': the tracepoint does not exist in this kernel", feature=f"tracepoint {prog.attach_target}")
    return ids[0]


def _iter_btf_id(target: BTF, prog) -> int:
    """The id of the FUNC bpf_iter_<target> (libbpf's rule for iter/ sections), or 0 when this kernel
    has no such iterator: unlike a missing tp_btf target, that is not an error for the whole object
    (a tool may load its other programs without the iterator); loading this program reports it
    (program.load), and 0 is what the cached spec keeps."""
    name = abi.ITER_FUNC_PREFIX + prog.attach_target
    try:
        ids = target.find_by_name(name, BTFKind.FUNC)
    except BTFError as e:
        raise CORERelocationError(f"program '{prog.name}': looking up {name}: {e}") from None
    return ids[0] if ids else 0


class _Relocator:
    def __init__(self, local: BTF, target: BTF):
        self.local = local
        self.target = target
        # local root type id -> target candidate ids; narrowed to the candidates that matched
        self._cands: Dict[int, List[int]] = {}
        self._member_cache: Dict[tuple, object] = {}

    # --- driver ------------------------------------------------------------------------------------

    def apply(self, prog_name: str, num: int, insns: bytearray, relo) -> Optional[str]:
        where = f"program '{prog_name}': CO-RE relocation #{num} (insn {relo.insn_index}"
        try:
            kind = K(relo.kind)
        except ValueError:
            raise CORERelocationError(f"{where}): unknown relocation kind {relo.kind}") from None
        where += f", {kind.name}"
        try:
            where += f", {self.local.describe(relo.type_id)}, access '{relo.access}')"
            res, local_spec = self._calc(kind, relo)
            return self._patch(insns, relo.insn_index, res, local_spec, prog_name)
        except _Fail as e:
            raise CORERelocationError(f"{where}: {e}") from None
        except BTFError as e:
            raise CORERelocationError(f"{where}: bad BTF: {e}") from None

    def _calc(self, kind, relo):
        local_spec = self._parse_spec(relo.type_id, relo.access, kind)
        if kind == K.TYPE_ID_LOCAL:
            # Nothing to look up; the object BTF is loaded as is, so local ids stay valid.  The
            # immediate is not validated: linking may renumber types.
            res = _Result()
            res.validate = False
            res.orig_val = res.new_val = local_spec.root_type_id
            return res, local_spec
        if kind == K.TYPE_MATCHES:
            raise _Fail("TYPE_MATCHES (bpf_core_type_matches) is not supported by pytracer")
        if not self.local.name_of(relo.type_id):
            raise _Fail("relocations against anonymous types are not supported (libbpf neither)")

        cands = self._candidates(relo.type_id)
        result = targ = None
        matched = []
        best_fail = None
        for cand in cands:
            cand_spec, fail = self._spec_match(local_spec, cand)
            if cand_spec is None:
                if fail is not None and (best_fail is None or fail[0] > best_fail[0]):
                    best_fail = fail
                continue
            res = self._calc_relo(kind, local_spec, cand_spec)
            if result is None:
                result, targ = res, cand_spec
            elif cand_spec.bit_offset != targ.bit_offset:
                raise _Fail(f"ambiguous: candidates [{targ.root_type_id}] and [{cand}] in the "
                            f"kernel BTF put the field at different bit offsets "
                            f"({targ.bit_offset} != {cand_spec.bit_offset})")
            elif res.poison != result.poison or res.new_val != result.new_val:
                raise _Fail(f"ambiguous: candidates [{targ.root_type_id}] and [{cand}] in the "
                            f"kernel BTF give different results ({result.new_val} != "
                            f"{res.new_val})")
            matched.append(cand)
        if matched:
            # libbpf keeps only matching candidates for later relocations of this type
            self._cands[relo.type_id] = matched
            return result, local_spec
        res = self._calc_relo(kind, local_spec, None)
        if res.poison:
            res.why = self._why_missing(local_spec, bool(cands), best_fail)
        return res, local_spec

    def _candidates(self, local_id: int) -> List[int]:
        cands = self._cands.get(local_id)
        if cands is None:
            local_kind = self.local.kind(local_id)
            cands = [i for i in self.target.find_by_essential_name(self.local.name_of(local_id))
                     if _kind_compat(self.target.kind(i), local_kind)]
            self._cands[local_id] = cands
        return cands

    # --- access strings -------------------------------------------------------------------------------

    def _parse_spec(self, type_id: int, access: str, kind) -> _Spec:
        """libbpf's bpf_core_parse_spec against the local BTF."""
        btf = self.local
        if not access or access[0] == ":":
            raise _Fail(f"invalid access string '{access}'")
        btf.kind(type_id)       # range check
        spec = _Spec(btf, type_id, kind)
        if kind in _TYPE_KINDS:
            if access != "0":
                raise _Fail(f"type relocation with access string '{access}' (expected '0')")
            return spec
        try:
            raw = [int(part) for part in access.split(":")]
        except ValueError:
            raise _Fail(f"invalid access string '{access}'") from None
        if len(raw) > SPEC_MAX_LEN:
            raise _Fail(f"access string '{access}' is too long")
        if any(i < 0 for i in raw):
            raise _Fail(f"negative index in access string '{access}'")
        spec.raw = raw
        cur = btf.skip_mods_and_typedefs(type_id)
        first = raw[0]
        spec.accs.append(_Acc(cur, first, None))
        if kind in _ENUMVAL_KINDS:
            t = btf.type(cur)
            if t.kind not in _ENUMS or len(raw) > 1 or first >= t.vlen:
                raise _Fail(f"enum relocation access '{access}' does not name a value of "
                            f"{btf.describe(type_id)}")
            spec.accs[0].name = t.values[first].name
            return spec
        if kind not in _FIELD_KINDS:
            raise _Fail("unsupported relocation kind")
        spec.bit_offset = first * btf.resolve_size(cur) * 8
        for idx in raw[1:]:
            cur = btf.skip_mods_and_typedefs(cur)
            t = btf.type(cur)
            if t.kind in _COMPOSITES:
                if idx >= t.vlen:
                    raise _Fail(f"member index {idx} out of range for {btf.describe(cur)}")
                m = t.members[idx]
                spec.bit_offset += m.bit_offset
                if m.name:
                    spec.accs.append(_Acc(cur, idx, m.name))
                cur = m.type
            elif t.kind == BTFKind.ARRAY:
                arr = t.array
                elem = btf.skip_mods_and_typedefs(arr.elem_type)
                if not _is_flex_arr(btf, spec.accs[-1], arr) and idx >= arr.nelems:
                    raise _Fail(f"array index {idx} out of range ({arr.nelems} elements)")
                spec.accs.append(_Acc(elem, idx, None))
                spec.bit_offset += idx * btf.resolve_size(elem) * 8
                cur = elem
            else:
                raise _Fail(f"access string '{access}' steps into {btf.describe(cur)}, which is "
                            f"neither a struct/union nor an array")
        return spec

    def _spec_match(self, local_spec: _Spec, targ_id: int):
        """libbpf's bpf_core_spec_match: (target spec, None) or (None, (depth, failed accessor))."""
        target = self.target
        spec = _Spec(target, targ_id, local_spec.kind)
        kind = local_spec.kind
        if kind in _TYPE_KINDS:
            if _types_are_compat(self.local, local_spec.root_type_id, target, targ_id):
                return spec, None
            return None, None
        if kind in _ENUMVAL_KINDS:
            targ_id = target.skip_mods_and_typedefs(targ_id)
            t = target.type(targ_id)
            if t.kind not in _ENUMS:
                return None, None
            want = essential_name(local_spec.accs[0].name)
            for i, value in enumerate(t.values):
                if essential_name(value.name) == want:
                    spec.accs.append(_Acc(targ_id, i, value.name))
                    spec.raw.append(i)
                    return spec, None
            return None, (0, local_spec.accs[0])
        for depth, lacc in enumerate(local_spec.accs):
            targ_id = target.skip_mods_and_typedefs(targ_id)
            if lacc.name is not None:
                found = self._match_member(lacc, targ_id, spec)
                if found is None:
                    return None, (depth, lacc)
                targ_id = found
            else:
                if depth > 0:
                    t = target.type(targ_id)
                    if t.kind != BTFKind.ARRAY:
                        return None, (depth, lacc)
                    arr = t.array
                    if not _is_flex_arr(target, spec.accs[-1], arr) and lacc.idx >= arr.nelems:
                        return None, (depth, lacc)
                    targ_id = target.skip_mods_and_typedefs(arr.elem_type)
                if len(spec.raw) >= SPEC_MAX_LEN:
                    raise _Fail("access path too deep in the kernel BTF")
                spec.accs.append(_Acc(targ_id, lacc.idx, None))
                spec.raw.append(lacc.idx)
                spec.bit_offset += lacc.idx * target.resolve_size(targ_id) * 8
        return spec, None

    def _match_member(self, lacc: _Acc, targ_id: int, spec: _Spec) -> Optional[int]:
        """Find the local member named by `lacc` in target composite `targ_id` (looking inside
        anonymous members); on success extend `spec` and return the member's type id, else None.

        The search result depends only on (local member, target type), and the same fields are
        relocated many times (every program that inlines a helper repeats its relocations), so it
        is memoised as the list of steps to replay onto the spec.
        """
        key = (lacc.type_id, lacc.idx, targ_id)
        found = self._member_cache.get(key, False)
        if found is False:
            lmember = self.local.type(lacc.type_id).members[lacc.idx]
            steps: List[tuple] = []
            found = self._search_member(lmember, targ_id, steps)
            if found is not None:
                found = (tuple(steps), found)
            self._member_cache[key] = found
        if found is None:
            return None
        steps, (owner, idx, name, mtype) = found
        if len(spec.raw) + len(steps) > SPEC_MAX_LEN:
            raise _Fail("access path too deep in the kernel BTF")
        for i, bit_offset in steps:
            spec.raw.append(i)
            spec.bit_offset += bit_offset
        spec.accs.append(_Acc(owner, idx, name))
        return mtype

    def _search_member(self, lmember, targ_id: int, steps: list):
        """libbpf's bpf_core_match_member: depth-first through anonymous members, in order.

        Appends (member index, bit offset) for each level descended; returns (owner id, index, name,
        member type id) or None.  A same-named member of an incompatible type ends the search at its
        level, as in libbpf.
        """
        target = self.target
        targ_id = target.skip_mods_and_typedefs(targ_id)
        t = target.type(targ_id)
        if t.kind not in _COMPOSITES:
            return None
        if len(steps) >= SPEC_MAX_LEN:
            raise _Fail("access path too deep in the kernel BTF")
        for i, m in enumerate(t.members):
            if not m.name:
                steps.append((i, m.bit_offset))
                found = self._search_member(lmember, m.type, steps)
                if found is not None:
                    return found
                steps.pop()
            elif m.name == lmember.name:
                if _fields_are_compat(self.local, lmember.type, target, m.type):
                    steps.append((i, m.bit_offset))
                    return targ_id, i, m.name, m.type
                return None
        return None

    # --- values ------------------------------------------------------------------------------------

    def _calc_relo(self, kind, local_spec: _Spec, targ_spec: Optional[_Spec]) -> _Result:
        """libbpf's bpf_core_calc_relo: the local (expected) and new value of the instruction."""
        res = _Result()
        try:
            if kind in _FIELD_KINDS:
                res.orig_val, res.orig_sz, res.orig_type_id, validate = _field_value(kind, local_spec)
                res.validate = validate
                res.new_val, res.new_sz, res.new_type_id, _ = _field_value(kind, targ_spec)
                if res.orig_sz != res.new_sz:
                    # Changing a load's width is only value-preserving for pointers (32-bit kernels)
                    # and unsigned integers (zero extension).
                    lt = self.local.type(res.orig_type_id)
                    tt = self.target.type(res.new_type_id)
                    ok = (lt.kind == BTFKind.PTR and tt.kind == BTFKind.PTR) or (
                        lt.kind == BTFKind.INT and tt.kind == BTFKind.INT
                        and not lt.int_encoding & BTF_INT_SIGNED
                        and not tt.int_encoding & BTF_INT_SIGNED)
                    res.fail_memsz_adjust = not ok
            elif kind in _TYPE_KINDS:
                res.orig_val, validate = _type_value(kind, local_spec)
                res.validate = validate
                res.new_val, _ = _type_value(kind, targ_spec)
            else:
                res.orig_val = _enumval_value(kind, local_spec)
                res.new_val = _enumval_value(kind, targ_spec)
        except _Poison:
            res.poison = True
        return res

    def _why_missing(self, local_spec: _Spec, had_cands: bool, fail) -> str:
        local = self.local
        root = local.skip_mods_and_typedefs(local_spec.root_type_id)
        root_desc = _essential_desc(local, root)
        if not had_cands:
            return f"{root_desc} does not exist in the running kernel"
        if local_spec.kind in _ENUMVAL_KINDS:
            value = essential_name(local_spec.accs[0].name)
            return f"{root_desc} has no value '{value}' in the running kernel"
        if fail is None:
            return f"{root_desc} does not match the running kernel's definition"
        _, acc = fail
        path = _path(local_spec)
        if acc.name is None:
            return f"{root_desc}: array index {acc.idx} is out of range in the running kernel " \
                   f"(access {path})"
        owner = _essential_desc(local, acc.type_id)
        via = f" (access {path})" if path != acc.name else ""
        return f"{owner} has no field '{acc.name}' in the running kernel{via}"

    # --- instruction patching -----------------------------------------------------------------------

    def _patch(self, insns: bytearray, idx: int, res: _Result, local_spec, prog_name):
        """libbpf's bpf_core_patch_insn.  Returns a message when the instruction was poisoned."""
        count = len(insns) // INSN_SIZE
        if not 0 <= idx < count:
            raise _Fail(f"instruction {idx} is outside the program ({count} instructions)")
        pos = idx * INSN_SIZE
        code, regs, off, imm = _INSN.unpack_from(insns, pos)
        cls = code & 0x07
        is_ldimm64 = code == abi.INSN_LD_IMM64
        if is_ldimm64 and idx + 1 >= count:
            raise _Fail("ld_imm64 instruction is missing its second half")

        if res.poison:
            return self._poison_insn(insns, idx, is_ldimm64, prog_name, res.why)

        orig, new = res.orig_val & _U64, res.new_val & _U64
        if cls in (abi.BPF_ALU, abi.BPF_ALU64):
            if code & 0x08:
                raise _Fail(f"cannot relocate ALU instruction with a register source "
                            f"(code {code:#04x})")
            if res.validate and imm & _U64 != orig:
                raise _Fail(f"instruction holds {imm}, expected {orig} from the object's BTF")
            if new > 0xFFFFFFFF and new < 0xFFFFFFFF80000000:
                raise _Fail(f"value {new} does not fit in a 32-bit immediate")
            new_imm = new & 0xFFFFFFFF
            if new_imm & 0x80000000:
                new_imm -= 1 << 32
            _INSN.pack_into(insns, pos, code, regs, off, new_imm)
        elif cls in (abi.BPF_LDX, abi.BPF_ST, abi.BPF_STX):
            if res.validate and off & _U64 != orig:
                raise _Fail(f"instruction offset is {off}, expected {orig} from the object's BTF")
            if new > _SHRT_MAX:
                raise _Fail(f"offset {new} is too large for a load/store instruction")
            if res.fail_memsz_adjust:
                owner = _essential_desc(self.local, local_spec.root_type_id)
                return self._poison_insn(
                    insns, idx, False, prog_name,
                    f"field '{_path(local_spec)}' of {owner} is {res.new_sz} bytes in the running "
                    f"kernel but {res.orig_sz} bytes in the program; only pointers and unsigned "
                    f"integers can be read at a different width")
            if res.new_sz != res.orig_sz:
                size_bytes = _SIZE_BYTES[code & 0x18]
                if size_bytes != res.orig_sz:
                    raise _Fail(f"instruction accesses {size_bytes} bytes, but the field is "
                                f"{res.orig_sz} bytes in the object's BTF")
                if res.new_sz not in _BYTES_SIZE:
                    raise _Fail(f"field is {res.new_sz} bytes in the running kernel, which no "
                                f"single load/store can access")
                if code & 0xE0 == _BPF_MEMSX:
                    raise _Fail("cannot change the width of a sign-extending load")
                code = (code & 0xE0) | _BYTES_SIZE[res.new_sz] | cls
            _INSN.pack_into(insns, pos, code, regs, new, imm)
        elif is_ldimm64:
            code2, regs2, off2, imm2 = _INSN.unpack_from(insns, pos + INSN_SIZE)
            if _src_reg(regs):
                raise _Fail("ld_imm64 has a source register (it loads a map or BTF id, not a "
                            "constant)")
            if off or code2 or regs2 or off2:
                raise _Fail("ld_imm64 instruction has an unexpected form")
            cur = (imm & 0xFFFFFFFF) | ((imm2 & 0xFFFFFFFF) << 32)
            if res.validate and cur != orig:
                raise _Fail(f"instruction holds {cur}, expected {orig} from the object's BTF")
            lo, hi = new & 0xFFFFFFFF, new >> 32
            _INSN.pack_into(insns, pos, code, regs, off, lo - (1 << 32) if lo >> 31 else lo)
            _INSN.pack_into(insns, pos + INSN_SIZE, 0, 0, 0, hi - (1 << 32) if hi >> 31 else hi)
        else:
            raise _Fail(f"cannot relocate instruction with code {code:#04x}")
        return None

    @staticmethod
    def _poison_insn(insns, idx, is_ldimm64, prog_name, why):
        pos = idx * INSN_SIZE
        if is_ldimm64:
            # both halves, so the verifier does not complain about the second one instead
            _poison(insns, pos + INSN_SIZE)
        _poison(insns, pos)
        return f"program '{prog_name}' insn {idx}: {why or 'CO-RE relocation failed'}"


def _src_reg(regs: int) -> int:
    return regs >> 4 if sys.byteorder == "little" else regs & 0x0F


def _poison(insns: bytearray, pos: int) -> None:
    """Turn the instruction into `call CORE_POISON_HELPER`, as libbpf does."""
    _INSN.pack_into(insns, pos, abi.INSN_CALL, 0, 0, abi.CORE_POISON_HELPER)


# --- value computation (libbpf's bpf_core_calc_{field,type,enumval}_relo) ------------------------------


def _field_value(kind, spec: Optional[_Spec]):
    """(value, field size for load adjustment, field type id, validate) for a field relocation."""
    if kind == K.FIELD_EXISTS:
        return (1 if spec is not None else 0), 0, 0, True
    if spec is None:
        raise _Poison()
    btf = spec.btf
    acc = spec.accs[-1]
    if acc.name is None:
        # the path ends in an array element (or the root itself)
        size = btf.resolve_size(acc.type_id)
        if kind == K.FIELD_BYTE_OFFSET:
            return spec.bit_offset // 8, size, acc.type_id, True
        if kind == K.FIELD_BYTE_SIZE:
            return size, 0, 0, True
        raise _Fail(f"{kind.name} cannot be applied to an array element")

    owner = btf.type(acc.type_id)
    member = owner.members[acc.idx]
    field_type_id = btf.skip_mods_and_typedefs(member.type)
    mt = btf.type(field_type_id)
    bit_off = spec.bit_offset
    bit_sz = member.bitfield_size
    bitfield = bit_sz > 0
    field_sz = 0
    if bitfield:
        if mt.size is None or mt.size == 0:
            raise _Fail(f"bitfield '{acc.name}' has a type without a size")
        byte_sz = mt.size
        byte_off = bit_off // 8 // byte_sz * byte_sz
        # smallest power-of-two load (from the natural alignment) that covers the whole bitfield
        while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:
            if byte_sz >= 8:
                raise _Fail(f"bitfield '{acc.name}' cannot be read with a single 64-bit load")
            byte_sz *= 2
            byte_off = bit_off // 8 // byte_sz * byte_sz
    else:
        byte_sz = btf.resolve_size(field_type_id)
        byte_off = bit_off // 8
        bit_sz = byte_sz * 8
    # For bitfields the compiler may have chosen a different (equally valid) load, so only the
    # unambiguous values are checked against the instruction.
    validate = not bitfield
    if kind == K.FIELD_BYTE_OFFSET:
        if not bitfield:
            field_sz = byte_sz
        return byte_off, field_sz, (field_type_id if not bitfield else 0), validate
    if kind == K.FIELD_BYTE_SIZE:
        return byte_sz, 0, 0, validate
    if kind == K.FIELD_SIGNED:
        signed = (mt.kind in _ENUMS and mt.kind_flag) or (
            mt.kind == BTFKind.INT and bool(mt.int_encoding & BTF_INT_SIGNED))
        return int(signed), 0, 0, True
    if kind == K.FIELD_LSHIFT_U64:
        if sys.byteorder == "little":
            return 64 - (bit_off + bit_sz - byte_off * 8), 0, 0, validate
        return (8 - byte_sz) * 8 + (bit_off - byte_off * 8), 0, 0, validate
    if kind == K.FIELD_RSHIFT_U64:
        return 64 - bit_sz, 0, 0, True
    raise _Fail(f"unsupported field relocation {kind.name}")


def _type_value(kind, spec: Optional[_Spec]):
    """(value, validate); a missing type gives 0 for every type-based kind."""
    if spec is None:
        return 0, True
    if kind == K.TYPE_ID_TARGET:
        return spec.root_type_id, False     # ids may change during linking: not validated
    if kind in (K.TYPE_EXISTS, K.TYPE_MATCHES):
        return 1, True
    if kind == K.TYPE_SIZE:
        return spec.btf.resolve_size(spec.root_type_id), True
    raise _Fail(f"unsupported type relocation {kind.name}")


def _enumval_value(kind, spec: Optional[_Spec]) -> int:
    if kind == K.ENUMVAL_EXISTS:
        return 1 if spec is not None else 0
    if spec is None:
        raise _Poison()
    acc = spec.accs[0]
    t = spec.btf.type(acc.type_id)
    if t.kind == BTFKind.ENUM:
        # libbpf reads btf_enum.val as s32 whatever the signedness flag says, and widens it
        raw = t.values[acc.idx].value & 0xFFFFFFFF
        return (raw - (1 << 32) if raw >> 31 else raw) & _U64
    return t.values[acc.idx].value & _U64


# --- compatibility rules ------------------------------------------------------------------------------


def _kind_compat(a, b) -> bool:
    return a == b or (a in _ENUMS and b in _ENUMS)


def _is_flex_arr(btf: BTF, acc: _Acc, arr) -> bool:
    """A zero-length array that is the last member of the struct the previous accessor named."""
    if acc.name is None or arr.nelems > 0:
        return False
    return acc.idx == btf.type(acc.type_id).vlen - 1


def _fields_are_compat(local: BTF, local_id: int, target: BTF, targ_id: int) -> bool:
    """libbpf's bpf_core_fields_are_compat: may a local field be read from this target field?"""
    for _ in range(SPEC_MAX_LEN):
        lt = local.type(local.skip_mods_and_typedefs(local_id))
        tt = target.type(target.skip_mods_and_typedefs(targ_id))
        if lt.kind in _COMPOSITES and tt.kind in _COMPOSITES:
            return True
        if not _kind_compat(lt.kind, tt.kind):
            return False
        if lt.kind in (BTFKind.PTR, BTFKind.FLOAT):
            return True
        if lt.kind in (BTFKind.FWD, BTFKind.ENUM, BTFKind.ENUM64):
            ln, tn = essential_name(lt.name), essential_name(tt.name)
            return not ln or not tn or ln == tn
        if lt.kind == BTFKind.INT:
            # only the deprecated bitfield-style ints (nonzero offset) are rejected
            return lt.int_offset == 0 and tt.int_offset == 0
        if lt.kind == BTFKind.ARRAY:
            local_id, targ_id = lt.array.elem_type, tt.array.elem_type
            continue
        return False
    raise _Fail("type nesting too deep while comparing fields")


def _types_are_compat(local: BTF, local_id: int, target: BTF, targ_id: int, level: int = 32) -> bool:
    """libbpf's bpf_core_types_are_compat (for TYPE_EXISTS, TYPE_SIZE, TYPE_ID_TARGET)."""
    if not _kind_compat(local.kind(local_id), target.kind(targ_id)):
        return False
    for _ in range(32):
        local_id = local.skip_mods_and_typedefs(local_id)
        targ_id = target.skip_mods_and_typedefs(targ_id)
        lt, tt = local.type(local_id), target.type(targ_id)
        if not _kind_compat(lt.kind, tt.kind):
            return False
        if lt.kind in (BTFKind.UNKN, BTFKind.STRUCT, BTFKind.UNION, BTFKind.ENUM, BTFKind.FWD,
                       BTFKind.ENUM64):
            return True
        if lt.kind == BTFKind.INT:
            return lt.int_offset == 0 and tt.int_offset == 0
        if lt.kind == BTFKind.PTR:
            local_id, targ_id = lt.type, tt.type
        elif lt.kind == BTFKind.ARRAY:
            local_id, targ_id = lt.array.elem_type, tt.array.elem_type
        elif lt.kind == BTFKind.FUNC_PROTO:
            if len(lt.params) != len(tt.params):
                return False
            for lp, tp in zip(lt.params, tt.params):
                if level <= 0:
                    raise _Fail("function prototype nesting too deep")
                if not _types_are_compat(local, local.skip_mods_and_typedefs(lp.type), target,
                                         target.skip_mods_and_typedefs(tp.type), level - 1):
                    return False
            local_id, targ_id = lt.type, tt.type
        else:
            return False
    raise _Fail("type nesting too deep while comparing types")


# --- messages ------------------------------------------------------------------------------------------


def _essential_desc(btf: BTF, type_id: int) -> str:
    """"struct sock" for local "struct sock___mine": messages talk about the kernel's type."""
    desc = btf.describe(type_id)
    name = btf.name_of(type_id)
    return desc.replace(name, essential_name(name), 1) if name else desc


def _path(spec: _Spec) -> str:
    """The access path in C-ish form: "__sk_common.skc_family", "[2].x", "u6_addr32[3]"."""
    parts = [f"[{spec.accs[0].idx}]"] if spec.accs and spec.accs[0].idx else []
    for acc in spec.accs[1:]:
        parts.append(f"[{acc.idx}]" if acc.name is None else f".{acc.name}")
    return "".join(parts).lstrip(".") or "(whole object)"
