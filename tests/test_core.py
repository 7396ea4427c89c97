"""pytracer.core: CO-RE relocation of tests/bpf/core_fixture.bpf.c against real BTF.

Expected values never come from pytracer.btf: they are read from `bpftool btf dump` of the kernel's
BTF, and, where the kernel allows it, compared relocation by relocation with what libbpf itself does
to the same object (bpftool's debug log).
"""
import copy
import os
import re
import shutil
import struct
import subprocess
import time

import pytest

from pytracer import abi
from pytracer.abi import CoreReloKind as K
from pytracer.btf import BTF, BTFExt
from pytracer.core import apply_core_relocations
from pytracer.errors import CORERelocationError, KernelFeatureError
from pytracer.spec import CoreReloSpec, ObjectSpec, ProgramSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_C = os.path.join(ROOT, "tests", "bpf", "core_fixture.bpf.c")
VMLINUX = "/sys/kernel/btf/vmlinux"
CLANG = shutil.which("clang-16")
BPFTOOL = shutil.which("bpftool")
SEC = "tp_btf/net_dev_queue"
MAIN, TARGETS = "handle_net_dev_queue", "handle_targets"
_INSN = struct.Struct("<BBhi")
POISON = (abi.INSN_CALL, 0, 0, abi.CORE_POISON_HELPER)


# --- building the fixture and an ObjectSpec from it (pyelftools, not pytracer.elf) ----------------------


def _compile(out_dir, *defines):
    if CLANG is None:
        pytest.skip("clang-16 is not installed: cannot build tests/bpf/core_fixture.bpf.c")
    out = os.path.join(out_dir, "target.o" if defines else "core.o")
    cmd = [CLANG, "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", *defines, "-c",
           FIXTURE_C, "-o", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
    return out


class Obj:
    """The compiled fixture: its BTF, its programs (one per function) and its CO-RE records."""

    def __init__(self, path):
        from elftools.elf.elffile import ELFFile   # test-only dependency

        self.path = path
        with open(path, "rb") as f:
            elf = ELFFile(f)
            self.btf_raw = elf.get_section_by_name(".BTF").data()
            ext = elf.get_section_by_name(".BTF.ext")     # the target build has no code
            ext_raw = ext.data() if ext is not None else None
            self.funcs = {}
            for sym in elf.get_section_by_name(".symtab").iter_symbols():
                if sym["st_info"]["type"] == "STT_FUNC":
                    sec = elf.get_section(sym["st_shndx"])
                    code = sec.data()[sym["st_value"]:sym["st_value"] + sym["st_size"]]
                    self.funcs[sym.name] = (sec.name, sym["st_value"], code)
        self.btf = BTF(self.btf_raw)
        self.ext = BTFExt(ext_raw, self.btf) if ext_raw else None

    def relos(self, func):
        sec, start, code = self.funcs[func]
        return [CoreReloSpec((r.insn_off_bytes - start) // 8, r.type_id, r.access_str, r.kind)
                for r in self.ext.core_relos.get(sec, ())
                if start <= r.insn_off_bytes < start + len(code)]

    def spec(self, funcs=(MAIN,), attach_kind="tp_btf", select=None):
        progs = {}
        for func in funcs:
            sec, _, code = self.funcs[func]
            relos = [r for r in self.relos(func) if select is None or select(r)]
            progs[func] = ProgramSpec(name=func, section=sec, prog_type=int(abi.ProgType.TRACING),
                                      attach_kind=attach_kind, attach_target="net_dev_queue",
                                      insns=code, core_relocs=relos)
        return ObjectSpec(path=self.path, license="GPL", programs=progs, maps={}, btf=self.btf_raw)


@pytest.fixture(scope="module")
def objs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("bpf"))
    return Obj(_compile(d)), Obj(_compile(d, "-DCORE_TARGET"))


@pytest.fixture(scope="module")
def obj(objs):
    return objs[0]


@pytest.fixture(scope="module")
def vmlinux():
    if not os.path.exists(VMLINUX):
        pytest.skip("kernel exposes no BTF (/sys/kernel/btf/vmlinux)")
    return BTF.load_vmlinux()


def insn(code, idx):
    return _INSN.unpack_from(code, idx * 8)


def imm64(code, idx):
    return (insn(code, idx)[3] & 0xFFFFFFFF) | ((insn(code, idx + 1)[3] & 0xFFFFFFFF) << 32)


# --- an independent reading of BTF: bpftool's text dump -------------------------------------------------

_HEAD = re.compile(r"^\[(\d+)\] (\w+) '(.*?)'(.*)$")
_KV = re.compile(r"(\w+)=(\S+?),?(?=\s|$)")
_MEMBER = re.compile(r"^\t'(.*?)' (.*)$")


class Dump:
    def __init__(self, path):
        if BPFTOOL is None:
            pytest.skip("bpftool is not installed (it provides the reference values)")
        out = subprocess.run([BPFTOOL, "btf", "dump", "file", path], capture_output=True, text=True,
                             check=True).stdout
        self.types = {}
        self.by_name = {}
        for line in out.splitlines():
            m = _HEAD.match(line)
            if m:
                cur = {"kind": m.group(2), "name": "" if m.group(3) == "(anon)" else m.group(3),
                       "attrs": dict(_KV.findall(m.group(4))), "items": []}
                tid = int(m.group(1))
                self.types[tid] = cur
                self.by_name.setdefault((cur["kind"], cur["name"]), []).append(tid)
                continue
            m = _MEMBER.match(line)
            if m:
                cur["items"].append(("" if m.group(1) == "(anon)" else m.group(1),
                                     dict(_KV.findall(m.group(2)))))

    def id(self, kind, name):
        (tid,) = self.by_name[(kind, name)]
        return tid

    def strip(self, tid):
        while self.types[tid]["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            tid = int(self.types[tid]["attrs"]["type_id"])
        return tid

    def size(self, tid):
        t = self.types[self.strip(tid)]
        if t["kind"] == "PTR":
            return 8
        if t["kind"] == "ARRAY":
            return int(t["attrs"]["nr_elems"]) * self.size(int(t["attrs"]["type_id"]))
        return int(t["attrs"]["size"])

    def member(self, tid, name):
        """(bit offset, bitfield size, type id) of `name` in composite `tid`, through anonymous members."""
        for mname, kv in self.types[self.strip(tid)]["items"]:
            off = int(kv["bits_offset"])
            if mname == name:
                return off, int(kv.get("bitfield_size", 0)), int(kv["type_id"])
            if not mname and self.types[self.strip(int(kv["type_id"]))]["kind"] in ("STRUCT", "UNION"):
                inner = self.member(int(kv["type_id"]), name)
                if inner:
                    return off + inner[0], inner[1], inner[2]
        return None

    def offset(self, struct_name, path):
        """Byte offset of path "a.b[3].c" inside struct `struct_name`."""
        tid = self.id("STRUCT", struct_name)
        bits = 0
        for part in path.split("."):
            m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", part)
            off, _, tid = self.member(tid, m.group(1))
            bits += off
            if m.group(2):
                arr = self.types[self.strip(tid)]["attrs"]
                tid = int(arr["type_id"])
                bits += int(m.group(2)) * self.size(tid) * 8
        return bits // 8

    def enum_value(self, name, value):
        for kind in ("ENUM", "ENUM64"):
            for tid in self.by_name.get((kind, name), ()):
                for vname, kv in self.types[tid]["items"]:
                    if vname == value:
                        return int(re.sub(r"(ULL|LL)$", "", kv["val"]))
        raise KeyError(value)


@pytest.fixture(scope="module")
def kdump(vmlinux):
    return Dump(VMLINUX)


@pytest.fixture(scope="module")
def local_dump(obj):
    return Dump(obj.path)


def describe_relo(dump, relo):
    """(kind, root type name, "a.b[3]" path) for a relocation, read from bpftool's dump of the object."""
    kind = K(relo.kind)
    root = dump.types[relo.type_id]["name"]
    idx = [int(x) for x in relo.access.split(":")]
    if kind in (K.ENUMVAL_EXISTS, K.ENUMVAL_VALUE):
        return kind.name, root, dump.types[dump.strip(relo.type_id)]["items"][idx[0]][0]
    parts = []
    tid = dump.strip(relo.type_id)
    for i in idx[1:]:
        t = dump.types[tid]
        if t["kind"] == "ARRAY":
            parts[-1] += f"[{i}]"
            tid = dump.strip(int(t["attrs"]["type_id"]))
            continue
        name, kv = t["items"][i]
        if name:
            parts.append(name)
        tid = dump.strip(int(kv["type_id"]))
    return kind.name, root, ".".join(parts)


# --- relocation against the running kernel -----------------------------------------------------------------


@pytest.fixture(scope="module")
def relocated(obj, vmlinux):
    spec = obj.spec((MAIN, TARGETS))
    relos = {f: obj.relos(f) for f in (MAIN, TARGETS)}
    messages = apply_core_relocations(spec, BTF(spec.btf), vmlinux)
    return spec, relos, messages


def test_spec_is_marked_relocated(relocated, vmlinux, kdump):
    spec, _, messages = relocated
    assert spec.relocated
    assert isinstance(messages, list)
    for prog in spec.programs.values():
        assert prog.core_relocs == []
        assert prog.attach_btf_id == kdump.id("TYPEDEF", "btf_trace_net_dev_queue")


def test_values_follow_kernel_layout(obj, relocated, kdump, local_dump):
    spec, relos, _ = relocated
    code = spec.programs[MAIN].insns
    orig = obj.funcs[MAIN][2]
    sock, skc = "sock", "sock_common"

    def bitfield(struct_name, field):
        off, nbits, tid = kdump.member(kdump.id("STRUCT", struct_name), field)
        size = kdump.size(tid)
        byte_off = off // 8 // size * size
        return byte_off, size, 64 - (off + nbits - byte_off * 8), 64 - nbits

    reuse, kern_sock = bitfield(skc, "skc_reuse"), bitfield(sock, "sk_kern_sock")
    task = kdump.id("STRUCT", "task_struct")
    # (kind, local root, path) -> expected value, from the kernel's BTF as bpftool reads it
    field_loads = {
        ("sk_buff", "sk"): kdump.offset("sk_buff", "sk"),
        ("sock_common___mine", "skc_family"): kdump.offset(skc, "skc_family"),
        ("sock_common___mine", "skc_dport"): kdump.offset(skc, "skc_dport"),
        ("sock_common___mine", "skc_v6_daddr.in6_u.u6_addr32[3]"):
            kdump.offset(skc, "skc_v6_daddr.in6_u.u6_addr32[3]"),
        ("sock", "sk_protocol"): kdump.offset(sock, "sk_protocol"),
        ("sock", "__sk_common.skc_num"): kdump.offset(sock, "__sk_common.skc_num"),
        ("task_struct", "tgid"): kdump.offset("task_struct", "tgid"),
    }
    alu = {
        ("FIELD_BYTE_OFFSET", "sock", "__sk_common"): 0,
        ("FIELD_EXISTS", "sock", "sk_foo"): 0,
        ("FIELD_EXISTS", "sock_common___mine", "skc_family"): 1,
        ("FIELD_EXISTS", "sock_common___mine", "skc_not_in_kernel"): 0,
        ("FIELD_EXISTS", "sock_common___mine", "skc_bound_dev_if"): 1,
        ("FIELD_BYTE_SIZE", "sock_common___mine", "skc_v6_daddr"): kdump.size(kdump.id("STRUCT", "in6_addr")),
        ("FIELD_BYTE_SIZE", "sock", "sk_protocol"): kdump.size(kdump.member(kdump.id("STRUCT", sock), "sk_protocol")[2]),
        ("FIELD_BYTE_OFFSET", "sock_common___mine", "skc_v6_daddr"): kdump.offset(skc, "skc_v6_daddr"),
        ("FIELD_BYTE_OFFSET", "sock_common___mine", "skc_reuse"): reuse[0],
        ("FIELD_BYTE_SIZE", "sock_common___mine", "skc_reuse"): reuse[1],
        ("FIELD_LSHIFT_U64", "sock_common___mine", "skc_reuse"): reuse[2],
        ("FIELD_RSHIFT_U64", "sock_common___mine", "skc_reuse"): reuse[3],
        ("FIELD_SIGNED", "sock_common___mine", "skc_reuse"): 0,
        ("FIELD_BYTE_OFFSET", "sock", "sk_kern_sock"): kern_sock[0],
        ("FIELD_BYTE_SIZE", "sock", "sk_kern_sock"): kern_sock[1],
        ("FIELD_LSHIFT_U64", "sock", "sk_kern_sock"): kern_sock[2],
        ("FIELD_RSHIFT_U64", "sock", "sk_kern_sock"): kern_sock[3],
        ("FIELD_SIGNED", "sock", "sk_kern_sock"): 0,
        ("FIELD_SIGNED", "sock_common___mine", "skc_bound_dev_if"): 1,    # int in the kernel
        ("TYPE_EXISTS", "task_struct", ""): 1,
        ("TYPE_EXISTS", "no_such_struct___x", ""): 0,
        ("TYPE_SIZE", "task_struct", ""): kdump.size(task),
        ("TYPE_SIZE", "no_such_struct___x", ""): 0,
        ("FIELD_BYTE_SIZE", "task_struct", "tgid"): 4,
    }
    ldimm64 = {
        ("TYPE_ID_TARGET", "task_struct", ""): task,
        ("TYPE_ID_LOCAL", "task_struct", ""): local_dump.id("STRUCT", "task_struct"),
        ("ENUMVAL_EXISTS", "sk_pacing___mine", "SK_PACING_FQ___mine"): 1,
        ("ENUMVAL_EXISTS", "sk_pacing___mine", "SK_PACING_BOGUS___mine"): 0,
        ("ENUMVAL_EXISTS", "no_such_enum___x", "NO_SUCH_VALUE___x"): 0,
        ("ENUMVAL_VALUE", "sk_pacing___mine", "SK_PACING_FQ___mine"): kdump.enum_value("sk_pacing", "SK_PACING_FQ"),
        ("ENUMVAL_VALUE", "perf_callchain_context___mine", "PERF_CONTEXT_KERNEL___mine"):
            kdump.enum_value("perf_callchain_context", "PERF_CONTEXT_KERNEL") & ((1 << 64) - 1),
    }
    poisoned = {
        ("FIELD_BYTE_OFFSET", "sock", "sk_foo"),
        ("ENUMVAL_VALUE", "sk_pacing___mine", "SK_PACING_BOGUS___mine"),
        ("FIELD_BYTE_OFFSET", "sock_common___mine", "skc_bound_dev_if"),   # signed, 8 -> 4 bytes
    }
    seen = set()
    for relo in relos[MAIN]:
        key = describe_relo(local_dump, relo)
        i = relo.insn_index
        seen.add(key)
        if key in poisoned:
            assert insn(code, i) == POISON, key
            if insn(orig, i)[0] == abi.INSN_LD_IMM64:
                assert insn(code, i + 1) == POISON, key
        elif key[0] == "FIELD_BYTE_OFFSET" and key[1:] in field_loads:
            assert insn(code, i)[2] == field_loads[key[1:]], key
        elif key in alu:
            assert insn(code, i)[0] & 0x07 in (abi.BPF_ALU, abi.BPF_ALU64), key
            assert insn(code, i)[3] == alu[key], key
        elif key in ldimm64:
            assert insn(code, i)[0] == abi.INSN_LD_IMM64, key
            assert imm64(code, i) == ldimm64[key], key
        else:
            pytest.fail(f"relocation {key} not covered by the test")
    expected = ({("FIELD_BYTE_OFFSET",) + k for k in field_loads} | set(alu) | set(ldimm64) | poisoned)
    assert expected == seen
    # the 1-byte local sk_protocol load reads the kernel's 2-byte field
    (proto,) = [r for r in relos[MAIN] if describe_relo(local_dump, r) == ("FIELD_BYTE_OFFSET", "sock", "sk_protocol")]
    assert insn(orig, proto.insn_index)[0] == abi.BPF_LDX | abi.BPF_MEM | 0x10        # u8
    assert insn(code, proto.insn_index)[0] == abi.BPF_LDX | abi.BPF_MEM | 0x08        # u16
    # registers are untouched by patching
    for relo in relos[MAIN]:
        if insn(code, relo.insn_index) != POISON:
            assert insn(code, relo.insn_index)[1] == insn(orig, relo.insn_index)[1]
    # nothing but relocated instructions changed
    touched = {r.insn_index for r in relos[MAIN]} | {r.insn_index + 1 for r in relos[MAIN]
                                                     if insn(orig, r.insn_index)[0] == abi.INSN_LD_IMM64}
    for i in range(len(orig) // 8):
        if i not in touched:
            assert insn(code, i) == insn(orig, i)


def test_poison_messages(relocated):
    spec, relos, messages = relocated
    text = "\n".join(messages)
    assert "program 'handle_net_dev_queue'" in text
    assert "struct sock has no field 'sk_foo' in the running kernel" in text
    assert "enum sk_pacing has no value 'SK_PACING_BOGUS' in the running kernel" in text
    assert "field 'skc_bound_dev_if' of struct sock_common is 4 bytes in the running kernel but 8" in text
    assert "struct amb does not exist in the running kernel" in text
    # every poisoned instruction has a message naming its index, and vice versa
    for name, prog in spec.programs.items():
        poisoned = {r.insn_index for r in relos[name] if insn(prog.insns, r.insn_index) == POISON}
        named = {int(m.group(1)) for m in re.finditer(rf"program '{name}' insn (\d+):", text)}
        assert poisoned == named, name
    code = spec.programs[TARGETS].insns
    assert all(insn(code, r.insn_index) == POISON for r in relos[TARGETS])


def test_matches_libbpf(obj, relocated, kernel, tmp_path):
    """Load the same object with libbpf (bpftool -d) and compare every CO-RE decision it logs."""
    if BPFTOOL is None:
        pytest.skip("bpftool is not installed")
    pin = f"/sys/fs/bpf/pytracer_test_core_{os.getpid()}"
    try:
        log = subprocess.run([BPFTOOL, "-d", "prog", "loadall", obj.path, pin], capture_output=True,
                             text=True, timeout=60).stderr
    finally:
        shutil.rmtree(pin, ignore_errors=True)   # the load fails (poisoned insn is live), but be sure
    spec = relocated[0]
    patched = re.findall(r"prog '(\w+)': relo #\d+: patched insn #(\d+) \(([\w/]+)\) (imm64|imm|off) "
                         r"(\d+) -> (\d+)", log)
    resized = re.findall(r"prog '(\w+)': relo #\d+: patched insn #(\d+) \(LDX/ST/STX\) mem_sz "
                         r"(\d+) -> (\d+)", log)
    poisoned = re.findall(r"prog '(\w+)': relo #\d+: substituting insn #(\d+) w/ invalid insn", log)
    if not patched:
        pytest.skip("this bpftool/libbpf does not log CO-RE decisions in the expected form")
    n_relos = sum(len(r) for r in relocated[1].values())
    assert len({(p, i) for p, i, *_ in patched} | {(p, i) for p, i in poisoned}) >= n_relos
    for prog, idx, what, field, _old, new in patched:
        code, i, new = spec.programs[prog].insns, int(idx), int(new)
        if field == "imm64":
            assert imm64(code, i) == new, (prog, i)
        elif field == "imm":
            assert insn(code, i)[3] & 0xFFFFFFFF == new, (prog, i)
        else:
            assert insn(code, i)[2] == new, (prog, i)
    sizes = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}
    for prog, idx, _old, new in resized:
        assert insn(spec.programs[prog].insns, int(idx))[0] & 0x18 == sizes[int(new)]
    for prog, idx in poisoned:
        assert insn(spec.programs[prog].insns, int(idx)) == POISON, (prog, idx)
    # and nothing that libbpf left alone was poisoned by us
    libbpf_poisoned = {(p, int(i)) for p, i in poisoned}
    for name, prog in spec.programs.items():
        for i in range(len(prog.insns) // 8):
            if insn(prog.insns, i) == POISON:
                assert (name, i) in libbpf_poisoned


def test_performance(obj):
    if not os.path.exists(VMLINUX):
        pytest.skip("kernel exposes no BTF")
    with open(VMLINUX, "rb") as f:
        raw = f.read()
    t0 = time.perf_counter()
    target = BTF(raw)                   # fresh instance: no lookups cached yet
    t1 = time.perf_counter()
    spec = obj.spec((MAIN, TARGETS))
    n = sum(len(p.core_relocs) for p in spec.programs.values())
    apply_core_relocations(spec, BTF(spec.btf), target)
    t2 = time.perf_counter()
    spec = obj.spec((MAIN, TARGETS))
    apply_core_relocations(spec, BTF(spec.btf), target)
    t3 = time.perf_counter()
    print(f"\nCO-RE: index vmlinux {(t1 - t0) * 1e3:.1f} ms; {n} relocations: first apply "
          f"{(t2 - t1) * 1e3:.1f} ms (includes name lookups), again {(t3 - t2) * 1e3:.1f} ms")
    assert t2 - t1 < 1.0


# --- relocation against other targets ------------------------------------------------------------------------


def test_relocating_against_itself_changes_nothing(obj, local_dump):
    """Against its own BTF every relocation must reproduce the compiler's value (and pass validation).

    Bitfields are the exception, as in libbpf: clang may pick a wider load window than libbpf's rule,
    so there the (offset, size, lshift, rshift) quadruples must select the same bits instead.
    """
    spec = obj.spec((MAIN, TARGETS), attach_kind="")
    messages = apply_core_relocations(spec, BTF(spec.btf), BTF(spec.btf))
    assert messages == []
    bitfield_kinds = {"FIELD_BYTE_OFFSET", "FIELD_BYTE_SIZE", "FIELD_LSHIFT_U64", "FIELD_RSHIFT_U64"}
    windows = {}
    for func, prog in spec.programs.items():
        orig = obj.funcs[func][2]
        skip = set()
        for relo in obj.relos(func):
            kind, root, path = describe_relo(local_dump, relo)
            owner = local_dump.types[local_dump.strip(relo.type_id)]
            member = dict(owner["items"]).get(path, {})
            if kind in bitfield_kinds and "bitfield_size" in member:
                skip.add(relo.insn_index)
                for which, code in (("clang", orig), ("ours", prog.insns)):
                    windows.setdefault((root, path, which), {})[kind] = insn(code, relo.insn_index)[3]
        for i in range(len(orig) // 8):
            if i not in skip:
                assert insn(prog.insns, i) == insn(orig, i), (func, i)
        assert prog.attach_btf_id == 0

    def bits(w):   # little endian: value = (load(size @ off) << lshift) >> rshift
        width = 64 - w["FIELD_RSHIFT_U64"]
        return w["FIELD_BYTE_OFFSET"] * 8 + 64 - w["FIELD_LSHIFT_U64"] - width, width

    fields = {(root, path) for root, path, _ in windows}
    assert len(fields) == 2      # skc_reuse and sk_kern_sock
    for root, path in fields:
        assert bits(windows[(root, path, "clang")]) == bits(windows[(root, path, "ours")]), path


def test_ambiguous_candidates(objs):
    obj, target = objs
    tbtf = BTF(target.btf_raw)
    local_dump = Dump(obj.path)

    def only(root):
        return lambda r: describe_relo(local_dump, r)[1] == root

    # amb and amb___v2 both match amb___local.a, at different offsets: refuse to guess
    spec = obj.spec((TARGETS,), attach_kind="", select=only("amb___local"))
    before = copy.deepcopy(spec)
    with pytest.raises(CORERelocationError, match=r"ambiguous.*different bit offsets"):
        apply_core_relocations(spec, BTF(spec.btf), tbtf)
    assert spec == before        # untouched on error
    # agree and agree___v2 put x at the same offset: fine
    spec = obj.spec((TARGETS,), attach_kind="", select=only("agree___local"))
    assert apply_core_relocations(spec, BTF(spec.btf), tbtf) == []
    (relo,) = obj.spec((TARGETS,), select=only("agree___local")).programs[TARGETS].core_relocs
    assert insn(spec.programs[TARGETS].insns, relo.insn_index)[2] == 0
    # a field beyond the 16-bit offset of a load cannot be relocated
    spec = obj.spec((TARGETS,), attach_kind="", select=only("big___local"))
    with pytest.raises(CORERelocationError, match="too large for a load/store"):
        apply_core_relocations(spec, BTF(spec.btf), tbtf)


def _one_relo_spec(obj, relo, func=MAIN, attach_kind=""):
    spec = obj.spec((func,), attach_kind=attach_kind, select=lambda r: False)
    spec.programs[func].core_relocs = [relo]
    return spec


def test_malformed_relocations(obj, vmlinux, local_dump):
    relos = {describe_relo(local_dump, r): r for r in obj.relos(MAIN)}
    family = relos[("FIELD_BYTE_OFFSET", "sock_common___mine", "skc_family")]
    dport = relos[("FIELD_BYTE_OFFSET", "sock_common___mine", "skc_dport")]
    n_insns = len(obj.funcs[MAIN][2]) // 8
    exit_idx = max(i for i in range(n_insns) if insn(obj.funcs[MAIN][2], i)[0] == 0x95)
    cases = [
        (CoreReloSpec(n_insns + 3, family.type_id, family.access, family.kind), "outside the program"),
        (CoreReloSpec(dport.insn_index, family.type_id, family.access, family.kind),
         "instruction offset is 2, expected 0"),
        (CoreReloSpec(exit_idx, family.type_id, family.access, family.kind), "cannot relocate"),
        (CoreReloSpec(family.insn_index, family.type_id, "0:99", family.kind), "out of range"),
        (CoreReloSpec(family.insn_index, family.type_id, "0:x", family.kind), "invalid access"),
        (CoreReloSpec(family.insn_index, family.type_id, "", family.kind), "invalid access"),
        (CoreReloSpec(family.insn_index, family.type_id, "0", int(K.TYPE_MATCHES)), "not supported"),
        (CoreReloSpec(family.insn_index, family.type_id, "0:0", 77), "unknown relocation kind 77"),
        (CoreReloSpec(family.insn_index, 10 ** 6, "0:0", family.kind), "bad BTF"),
    ]
    for relo, match in cases:
        spec = _one_relo_spec(obj, relo)
        with pytest.raises(CORERelocationError, match=match):
            apply_core_relocations(spec, BTF(spec.btf), vmlinux)
        assert not spec.relocated


def test_tp_btf_target_missing(obj, vmlinux):
    spec = obj.spec((MAIN,), select=lambda r: False)
    spec.programs[MAIN].attach_target = "no_such_tracepoint_xyz"
    with pytest.raises(KernelFeatureError, match="btf_trace_no_such_tracepoint_xyz"):
        apply_core_relocations(spec, BTF(spec.btf), vmlinux)
