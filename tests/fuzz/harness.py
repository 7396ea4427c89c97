"""Fuzz harness for pytracer's parsers, relocator and record decoder (issue #5, part 1).

One set of targets serves two drivers:

* tests/test_fuzz.py (pytest + hypothesis, a few seconds per target in CI; hypothesis shrinks a failure to
  a minimal list of mutations);
* ``python tests/fuzz/harness.py`` (``make fuzz``): a long coverage-guided run with atheris when it is
  installed, else hypothesis with many examples.

Inputs are *mutation programs* applied to real seeds: the committed BPF objects (pytracer/bpf/*.bpf.o),
their .BTF and .BTF.ext sections, and the running kernel's /sys/kernel/btf/vmlinux. A program is a list of
operations ``(op, a, b, c)`` (four unsigned ints): generic ones (bit flip, byte/word overwrite with
"interesting" values, truncation, deletion, insertion, splice) and format-aware ones that hit a field of the
ELF header, a section header, a symbol, a relocation, the BTF header, a BTF type record or a .BTF.ext
record. Programs are short, shrink well and replay exactly: ``--repro FILE`` decodes an atheris crash file.

The contract checked for every input (``run_target``): the call ends in success or raises a PytracerError
subclass; nothing else escapes; it finishes within a per-example deadline (SIGALRM; the exception raised
is a BaseException so that no ``except Exception`` in the code under test can swallow it); it stays within
a memory budget (RLIMIT_AS is lowered around the call); and a PytracerError must not hide a MemoryError or
RecursionError in its context chain (read_object converts every exception into ObjectFormatError, so this is
the only way to see a blow-up there).
"""
import contextlib
import functools
import glob
import io
import json
import mmap
import os
import random
import re
import resource
import signal
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

OBJDIR = os.path.join(ROOT, "pytracer", "bpf")
VMLINUX = "/sys/kernel/btf/vmlinux"
CRASHDIR = os.path.join(HERE, "crashes")

DEADLINE = float(os.environ.get("PYTRACER_FUZZ_DEADLINE", "5"))          # seconds per example
MEMORY_BUDGET = int(os.environ.get("PYTRACER_FUZZ_MEMORY_MB", "1024")) << 20  # extra address space


# --------------------------------------------------------------------------------------------------
# outcome checking
# --------------------------------------------------------------------------------------------------

class Hang(BaseException):
    """The per-example deadline passed (BaseException: code under test cannot swallow it)."""


class Finding(AssertionError):
    """An input broke the contract. `.ops` / `.target` make it reproducible."""


def _vm_size():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def bounded(seconds=DEADLINE, memory=MEMORY_BUDGET):
    """Run the body with a wall-clock deadline and an address-space cap of current + `memory` bytes."""
    def on_alarm(signum, frame):
        raise Hang(f"example took longer than {seconds} s")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_as = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + memory if memory else None
    if limit and (old_as[1] == resource.RLIM_INFINITY or limit < old_as[1]):
        resource.setrlimit(resource.RLIMIT_AS, (limit, old_as[1]))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, old_as)


_BLOWUPS = (MemoryError, RecursionError)


def _chain(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


# Exceptions that a catch-all (read_object's `except Exception`) turned into a PytracerError: not contract
# breaches, but each one raised inside pytracer's own code is a bug hidden behind a generic message.
# (type name, deepest pytracer frame) -> count
MASKED = {}


def _note_masked(err):
    inner = err.__context__
    if inner is None or "not a valid BPF object file (" not in str(err):
        return
    where = "?"
    tb = inner.__traceback__
    while tb is not None:
        fname = tb.tb_frame.f_code.co_filename
        if os.sep + "pytracer" + os.sep in fname or os.sep + "elftools" + os.sep in fname:
            where = f"{os.path.basename(os.path.dirname(fname))}/{os.path.basename(fname)}:{tb.tb_lineno}"
        tb = tb.tb_next
    key = (type(inner).__name__, where)
    MASKED[key] = MASKED.get(key, 0) + 1


def run_target(fn, *args, seconds=DEADLINE, memory=MEMORY_BUDGET):
    """Call fn(*args) under the contract; returns "ok" or the PytracerError class name; raises Finding."""
    from pytracer.errors import PytracerError

    t0 = time.monotonic()
    try:
        with bounded(seconds, memory):
            fn(*args)
        outcome = "ok"
    except Hang as e:
        raise Finding(f"hang: {e}") from None
    except PytracerError as e:
        for inner in _chain(e):
            if isinstance(inner, _BLOWUPS):
                raise Finding(f"{type(e).__name__} hides {type(inner).__name__}: {e}") from inner
        _note_masked(e)
        try:
            str(e)              # the CLI prints it: it must be printable
        except Exception as inner:  # noqa: BLE001
            raise Finding(f"str() of {type(e).__name__} raises {type(inner).__name__}") from inner
        outcome = type(e).__name__
    except BaseException as e:  # noqa: BLE001 - anything else is the finding
        if isinstance(e, KeyboardInterrupt):
            raise
        raise Finding(f"{type(e).__name__} escaped: {e}") from e
    took = time.monotonic() - t0
    if took > seconds:
        raise Finding(f"example took {took:.2f} s (deadline {seconds} s)")
    return outcome


# --------------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------------

_seed_cache = {}


def object_paths():
    return sorted(glob.glob(os.path.join(OBJDIR, "*.bpf.o")))


def object_seeds():
    """name -> bytes of every committed BPF object (pytracer/bpf/*.bpf.o)."""
    if "objects" not in _seed_cache:
        _seed_cache["objects"] = {os.path.basename(p): open(p, "rb").read() for p in object_paths()}
    return _seed_cache["objects"]


def vmlinux_bytes():
    if "vmlinux" not in _seed_cache:
        try:
            with open(VMLINUX, "rb") as f:
                _seed_cache["vmlinux"] = f.read()
        except OSError:
            _seed_cache["vmlinux"] = None
    return _seed_cache["vmlinux"]


def vmlinux_btf():
    """The parsed (unmutated) kernel BTF, or None."""
    if "vmlinux_btf" not in _seed_cache:
        from pytracer.btf import BTF

        raw = vmlinux_bytes()
        _seed_cache["vmlinux_btf"] = BTF(raw) if raw else None
    return _seed_cache["vmlinux_btf"]


def elf_sections(data):
    """name -> (offset, size) of every section, read with plain struct (independent of the code under test)."""
    e_shoff, = struct.unpack_from("<Q", data, 40)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 58)
    hdrs = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    str_off, str_size = hdrs[e_shstrndx][4], hdrs[e_shstrndx][5]
    out = {}
    for i, h in enumerate(hdrs):
        end = data.index(b"\0", str_off + h[0])
        out[data[str_off + h[0]:end].decode()] = dict(index=i, type=h[1], offset=h[4], size=h[5],
                                                      entsize=h[9], link=h[6])
    return out


def section_seeds(name):
    """object file name -> bytes of section `name` (".BTF" or ".BTF.ext") for every committed object."""
    key = ("section", name)
    if key not in _seed_cache:
        out = {}
        for obj, data in object_seeds().items():
            secs = elf_sections(data)
            if name in secs:
                s = secs[name]
                out[obj] = data[s["offset"]:s["offset"] + s["size"]]
        _seed_cache[key] = out
    return _seed_cache[key]


# --------------------------------------------------------------------------------------------------
# format knowledge for the format-aware mutations (plain struct, nothing from pytracer)
# --------------------------------------------------------------------------------------------------

# (offset, struct code) of each field
EHDR_FIELDS = [(16, "H"), (18, "H"), (20, "I"), (24, "Q"), (32, "Q"), (40, "Q"), (48, "I"), (52, "H"),
               (54, "H"), (56, "H"), (58, "H"), (60, "H"), (62, "H"), (4, "B"), (5, "B")]
SHDR_FIELDS = [(0, "I"), (4, "I"), (8, "Q"), (16, "Q"), (24, "Q"), (32, "Q"), (40, "I"), (44, "I"),
               (48, "Q"), (56, "Q")]
SYM_FIELDS = [(0, "I"), (4, "B"), (5, "B"), (6, "H"), (8, "Q"), (16, "Q")]
REL_FIELDS = [(0, "Q"), (8, "Q"), (12, "I"), (8, "I")]   # r_offset, r_info, r_info.sym, r_info.type
BTF_HDR_FIELDS = [(0, "H"), (2, "B"), (3, "B"), (4, "I"), (8, "I"), (12, "I"), (16, "I"), (20, "I")]
EXT_HDR_FIELDS = [(0, "H"), (2, "B"), (3, "B"), (4, "I"), (8, "I"), (12, "I"), (16, "I"), (20, "I"),
                  (24, "I"), (28, "I")]
# BTF kind -> (fixed words, words per vlen item)
BTF_LAYOUT = {1: (4, 0), 2: (3, 0), 3: (6, 0), 4: (3, 3), 5: (3, 3), 6: (3, 2), 7: (3, 0), 8: (3, 0),
              9: (3, 0), 10: (3, 0), 11: (3, 0), 12: (3, 0), 13: (3, 2), 14: (4, 0), 15: (3, 3),
              16: (3, 0), 17: (4, 0), 18: (3, 0), 19: (3, 3)}


def btf_type_offsets(btf, limit=None):
    """Byte offsets (into `btf`) of the type records, by walking the type section with plain struct."""
    if len(btf) < 24:
        return []
    hdr_len, type_off, type_len = struct.unpack_from("<III", btf, 4)
    start = hdr_len + type_off
    end = min(start + type_len, len(btf))
    offs, pos = [], start
    while pos + 12 <= end and (limit is None or len(offs) < limit):
        info, = struct.unpack_from("<I", btf, pos + 4)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind not in BTF_LAYOUT:
            break
        base, per = BTF_LAYOUT[kind]
        offs.append(pos)
        pos += 4 * (base + vlen * per)
    return offs


class Layout:
    """Where the interesting structures of a seed are, computed once per seed."""

    def __init__(self, data, kind):
        self.kind = kind                # "elf", "btf", "ext"
        self.shdrs = []                 # byte offsets of section headers
        self.syms = []                  # (offset, count) of the symbol table
        self.rels = []                  # (offset, count) of each SHT_REL section
        self.btf = None                 # (base offset, [type record offsets]) of the BTF
        self.ext = None                 # (base offset, size) of the BTF.ext
        if kind == "elf":
            e_shoff, = struct.unpack_from("<Q", data, 40)
            e_shentsize, e_shnum = struct.unpack_from("<HH", data, 58)
            self.shdrs = [e_shoff + i * e_shentsize for i in range(e_shnum)]
            for name, s in elf_sections(data).items():
                if s["type"] == 2:
                    self.syms = (s["offset"], s["size"] // 24)
                elif s["type"] == 9:
                    self.rels.append((s["offset"], s["size"] // 16))
                if name == ".BTF":
                    blob = data[s["offset"]:s["offset"] + s["size"]]
                    self.btf = (s["offset"], btf_type_offsets(blob, 5000))
                elif name == ".BTF.ext":
                    self.ext = (s["offset"], s["size"])
        elif kind == "btf":
            self.btf = (0, btf_type_offsets(data, 200000))
        elif kind == "ext":
            self.ext = (0, len(data))


_layouts = {}


def layout_of(key, data, kind):
    lay = _layouts.get(key)
    if lay is None:
        lay = _layouts[key] = Layout(data, kind)
    return lay


# --------------------------------------------------------------------------------------------------
# mutation programs
# --------------------------------------------------------------------------------------------------

OPS = ("flip", "byte", "word", "trunc", "delete", "insert", "splice", "ehdr", "shdr", "sym", "rel",
       "btfhdr", "btftype", "btfstr", "exthdr", "extword", "dup")
MAX_OPS = 8


def interesting(c, n):
    """A value that tends to break parsers, chosen by c (n: the input length)."""
    table = (0, 1, 2, 3, 4, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
             0x80000000, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0x7FFFFFFFFFFFFFFF, n, n - 1, n + 1, n // 2,
             n * 2, 1 << 32, 24, 12, 16, 0xEB9F, 0x9FEB)
    c &= 0xFFFFFFFF
    if c % 3 == 0:
        return c // 3                       # a raw value
    return table[(c // 3) % len(table)] & 0xFFFFFFFFFFFFFFFF


def _put(buf, off, code, value):
    size = struct.calcsize(code)
    if 0 <= off and off + size <= len(buf):
        struct.pack_into("<" + code, buf, off, value & ((1 << (8 * size)) - 1))


def apply_ops(data, ops, lay):
    """Apply a mutation program to `data` (bytes); returns new bytes. Never raises."""
    buf = bytearray(data)
    for op in ops[:MAX_OPS]:
        name, a, b, c = op
        n = len(buf)
        if name == "trunc":
            del buf[a % (n + 1):]
            continue
        if n == 0:
            if name == "insert":
                buf += bytes([b & 0xFF]) * (1 + c % 64)
            continue
        if name == "flip":
            pos = a % (n * 8)
            buf[pos // 8] ^= 1 << (pos % 8)
        elif name == "byte":
            buf[a % n] = b & 0xFF
        elif name == "word":
            _put(buf, (a % n) & ~3, ("I", "Q", "H")[b % 3], interesting(c, n))
        elif name == "delete":
            p = a % n
            del buf[p:p + 1 + b % 256]
        elif name == "insert":
            p = a % (n + 1)
            buf[p:p] = bytes([b & 0xFF]) * (1 + c % 64)
        elif name == "splice":
            # copy a chunk from one place of the input to another (overwriting)
            src, dst, length = a % n, b % n, 1 + c % 512
            chunk = bytes(buf[src:src + length])
            buf[dst:dst + len(chunk)] = chunk
        elif name == "dup":
            # duplicate a chunk in place (grows the input; shifts everything after it)
            p, length = a % n, 1 + b % 4096
            buf[p:p] = buf[p:p + length]
        elif name == "ehdr" and lay.kind == "elf":
            off, code = EHDR_FIELDS[b % len(EHDR_FIELDS)]
            _put(buf, off, code, interesting(c, n))
        elif name == "shdr" and lay.shdrs:
            base = lay.shdrs[a % len(lay.shdrs)]
            off, code = SHDR_FIELDS[b % len(SHDR_FIELDS)]
            _put(buf, base + off, code, interesting(c, n))
        elif name == "sym" and lay.syms and lay.syms[1]:
            base = lay.syms[0] + 24 * (a % lay.syms[1])
            off, code = SYM_FIELDS[b % len(SYM_FIELDS)]
            _put(buf, base + off, code, interesting(c, n))
        elif name == "rel" and lay.rels:
            sec_off, count = lay.rels[a % len(lay.rels)]
            if count:
                base = sec_off + 16 * ((a >> 8) % count)
                off, code = REL_FIELDS[b % len(REL_FIELDS)]
                _put(buf, base + off, code, interesting(c, n))
        elif name == "btfhdr" and lay.btf:
            off, code = BTF_HDR_FIELDS[b % len(BTF_HDR_FIELDS)]
            _put(buf, lay.btf[0] + off, code, interesting(c, n))
        elif name == "btftype" and lay.btf and lay.btf[1]:
            # one word of one type record: name_off, info (kind/vlen/kflag), size/type, or a tail word
            rec = lay.btf[1][a % len(lay.btf[1])]
            word = b % 6
            if word == 1 and c % 2:
                # keep the rest of info, change just the kind or the vlen
                old, = struct.unpack_from("<I", buf, rec + 4) if rec + 8 <= n else (0,)
                value = (old & ~(0x1F << 24)) | ((c >> 1) % 32) << 24 if c % 4 == 1 else \
                    (old & ~0xFFFF) | interesting(c >> 2, n) & 0xFFFF
                _put(buf, rec + 4, "I", value)
            else:
                _put(buf, rec + 4 * word, "I", interesting(c, n))
        elif name == "btfstr" and lay.btf:
            # a byte inside the BTF string section (names, access strings)
            base = lay.btf[0]
            if base + 24 <= n:
                hdr_len, _, _, str_off, str_len = struct.unpack_from("<IIIII", buf, base + 4)
                if str_len:
                    p = base + hdr_len + str_off + a % str_len
                    if p < n:
                        buf[p] = (b"0123456789:_\0\xff"[c % 14]) if b % 2 else c & 0xFF
        elif name == "exthdr" and lay.ext:
            off, code = EXT_HDR_FIELDS[b % len(EXT_HDR_FIELDS)]
            _put(buf, lay.ext[0] + off, code, interesting(c, n))
        elif name == "extword" and lay.ext and lay.ext[1] > 32:
            p = lay.ext[0] + 32 + ((a % (lay.ext[1] - 32)) & ~3)
            _put(buf, p, "I", interesting(c, n))
        else:
            # a format-aware op with no structure to hit: a plain bit flip instead
            pos = a % (n * 8)
            buf[pos // 8] ^= 1 << (pos % 8)
    return bytes(buf)


def ops_from_bytes(raw):
    """Decode a mutation program from raw bytes (atheris input, crash files): 13 bytes per op."""
    ops = []
    for i in range(0, min(len(raw), 13 * MAX_OPS) - 12, 13):
        name = OPS[raw[i] % len(OPS)]
        a, b, c = struct.unpack_from("<III", raw, i + 1)
        ops.append((name, a, b, c))
    return ops


def ops_to_bytes(ops):
    return b"".join(bytes([OPS.index(n)]) + struct.pack("<III", a & 0xFFFFFFFF, b & 0xFFFFFFFF,
                                                        c & 0xFFFFFFFF) for n, a, b, c in ops)


# --------------------------------------------------------------------------------------------------
# targets: each takes (seed index, mutation program) and runs one input through the code under test
# --------------------------------------------------------------------------------------------------

def _pick(seeds, idx):
    names = sorted(seeds)
    if not names:
        return None, None
    name = names[idx % len(names)]
    return name, seeds[name]


def exercise_btf(btf, budget=400):
    """Touch what construction leaves lazy: decode types and use every query on them."""
    from pytracer.errors import PytracerError

    n = len(btf)
    ids = range(n) if n <= budget else sorted({(i * 7919) % n for i in range(budget)} | {n - 1})
    names = []
    for i in ids:
        # every accessor on its own: one failing must not hide the others
        for call in (btf.type, btf.describe, btf.kind, btf.name_of, btf.skip_modifiers,
                     btf.skip_mods_and_typedefs, btf.resolve_size):
            try:
                call(i)
            except PytracerError:
                pass
        try:
            names.append(btf.name_of(i))
        except PytracerError:
            pass
    for name in names[:40]:
        try:
            btf.find_by_name(name)
            btf.find_by_essential_name(name)
        except PytracerError:
            pass
    try:
        list(btf.find_by_name("", None))[:3]
    except PytracerError:
        pass
    btf.raw  # noqa: B018


def _on_mutated_object(fn, seed_idx, ops):
    """run_target(fn, mutated object bytes, its name) for a committed object mutated by `ops`."""
    name, data = _pick(object_seeds(), seed_idx)
    if data is None:
        return "no seed"
    mutated = apply_ops(data, ops, layout_of(("elf", name), data, "elf"))
    return run_target(fn, mutated, name)


def target_elf(seed_idx, ops):
    """read_object on a mutated committed object."""
    from pytracer.elf import read_object

    return _on_mutated_object(read_object, seed_idx, ops)


def _pipeline(mutated, name):
    """What loader.prepare does without the kernel: ELF -> spec -> CO-RE against vmlinux -> cache format."""
    from pytracer.btf import BTF
    from pytracer.core import apply_core_relocations
    from pytracer.elf import read_object
    from pytracer.spec import ObjectSpec

    spec = read_object(mutated, name)
    target = vmlinux_btf()
    if target is not None:
        apply_core_relocations(spec, BTF(spec.btf), target)
    # the relocated spec goes to the JSON cache and back
    back = ObjectSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec, "cache round trip changed the spec"


def target_pipeline(seed_idx, ops):
    return _on_mutated_object(_pipeline, seed_idx, ops)


def _btf_and_use(blob):
    from pytracer.btf import BTF

    btf = BTF(blob)
    exercise_btf(btf)
    # what read_object asks of the object's BTF
    sizes = {".rodata": 112, ".data": 64, ".bss": 64, ".maps": 112, "license": 4}
    btf.with_datasec_fixups(sizes, {})


def target_btf_object(seed_idx, ops):
    """BTF(...) and every query on a mutated object .BTF section."""
    name, blob = _pick(section_seeds(".BTF"), seed_idx)
    if blob is None:
        return "no seed"
    mutated = apply_ops(blob, ops, layout_of(("btf", name), blob, "btf"))
    return run_target(_btf_and_use, mutated)


def vmlinux_slice(seed_idx):
    """A small, valid-looking BTF cut out of vmlinux: its header, the first K types and the whole string
    section (so type references past K dangle), K chosen by seed_idx."""
    raw = vmlinux_bytes()
    if raw is None:
        return None
    if "vmlinux_offsets" not in _seed_cache:
        _seed_cache["vmlinux_offsets"] = btf_type_offsets(raw)
    offs = _seed_cache["vmlinux_offsets"]
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", raw, 4)
    k = 1 + seed_idx % 3000
    # every 4th slice starts further into the type section (ids shift: references point elsewhere)
    first = 0 if seed_idx % 4 else (seed_idx * 2654435761) % max(1, len(offs) - k)
    t0 = offs[first]
    t1 = offs[first + k] if first + k < len(offs) else hdr_len + type_off + type_len
    types = raw[t0:t1]
    strings = raw[hdr_len + str_off:hdr_len + str_off + str_len]
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def target_btf_vmlinux(seed_idx, ops):
    """Slices of the kernel's BTF, mutated; or (seed_idx % 16 == 15) the whole vmlinux BTF, mutated."""
    raw = vmlinux_bytes()
    if raw is None:
        return "no seed"
    if seed_idx % 16 == 15:
        lay = layout_of(("btf", "vmlinux"), raw, "btf")
        return run_target(_btf_and_use, apply_ops(raw, ops, lay), seconds=max(DEADLINE, 10))
    blob = vmlinux_slice(seed_idx)
    lay = Layout(blob, "btf")
    return run_target(_btf_and_use, apply_ops(blob, ops, lay))


def _btf_ext(ext_blob, btf_blob):
    from pytracer.btf import BTF, BTFExt

    ext = BTFExt(ext_blob, BTF(btf_blob))
    for table in (ext.func_info, ext.line_info, ext.core_relos):
        for sec, recs in table.items():
            str(sec)
            len(recs)


def target_btf_ext(seed_idx, ops):
    """BTFExt(...) on a mutated .BTF.ext (against the object's real .BTF, or a mutated one when the
    program also touches the BTF: ops on 'btfhdr'/'btftype'/'btfstr' go to the .BTF)."""
    name, ext = _pick(section_seeds(".BTF.ext"), seed_idx)
    if ext is None:
        return "no seed"
    btf = section_seeds(".BTF")[name]
    ext_ops = [op for op in ops if not op[0].startswith("btf")]
    btf_ops = [op for op in ops if op[0].startswith("btf")]
    m_ext = apply_ops(ext, ext_ops, layout_of(("ext", name), ext, "ext"))
    m_btf = apply_ops(btf, btf_ops, layout_of(("btf", name), btf, "btf")) if btf_ops else btf
    return run_target(_btf_ext, m_ext, m_btf)


# --- CO-RE ------------------------------------------------------------------------------------------

# instruction shapes the relocator patches (and some it must refuse)
INSN_SHAPES = (
    ("alu_imm", 0xB7), ("alu32_imm", 0xB4), ("add_imm", 0x07), ("alu_reg", 0xBF),
    ("ldx_w", 0x61), ("ldx_dw", 0x79), ("ldx_h", 0x69), ("ldx_b", 0x71), ("ldsx_w", 0x81),
    ("st_w", 0x62), ("stx_dw", 0x7B), ("ld_imm64", 0x18), ("call", 0x85), ("exit", 0x95), ("raw", None),
)


def _insns(shape, value, regs, extra):
    name, code = shape
    if code is None:
        return struct.pack("<Q", extra & 0xFFFFFFFFFFFFFFFF) * 2
    if name == "ld_imm64":
        v = value & 0xFFFFFFFFFFFFFFFF
        second = struct.pack("<BBhI", 0, 0, 0, v >> 32) if extra % 5 else struct.pack("<Q", extra & 0xFFFFFFFFFFFFFFFF)
        return struct.pack("<BBhI", code, regs, 0, v & 0xFFFFFFFF) + second
    if code & 0x07 in (0x01, 0x02, 0x03):   # memory access: the value goes in `off`
        off = value if -0x8000 <= value < 0x8000 else (extra & 0xFFFF) - 0x8000
        return struct.pack("<BBhi", code, regs, off, extra & 0x7FFFFFFF) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    imm = value & 0xFFFFFFFF
    return struct.pack("<BBhI", code, regs, 0, imm) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def access_path(btf, type_id, kind, choices):
    """An access string for `type_id` built by walking real members/elements, steered by `choices`
    (a list of ints); out-of-range indices and odd shapes appear when choices ask for them."""
    from pytracer.errors import PytracerError

    ch = list(choices) or [0]
    state = [0]

    def take():
        i = state[0]
        state[0] += 1
        return ch[i % len(ch)] + i // len(ch)
    if kind in (6, 7, 8, 9, 12):
        return "0" if take() % 8 else str(take() % 3) + (":1" if take() % 2 else "")
    if kind in (10, 11):
        try:
            vlen = btf.type(btf.skip_mods_and_typedefs(type_id)).vlen or 1
        except PytracerError:
            vlen = 1
        return str(take() % (vlen + 1))
    parts = [str(0 if take() % 6 else take() % 4)]
    cur = type_id
    for _ in range(1 + take() % 6):
        try:
            cur = btf.skip_mods_and_typedefs(cur)
            t = btf.type(cur)
        except PytracerError:
            break
        if t.members is not None and t.members:
            i = take() % (len(t.members) + (1 if take() % 10 == 0 else 0))
            parts.append(str(i))
            if i >= len(t.members):
                break
            cur = t.members[i].type
        elif t.array is not None:
            n = t.array.nelems
            parts.append(str(take() % (n + 2) if n else take() % 3))
            cur = t.array.elem_type
        else:
            break
    s = ":".join(parts)
    junk = take() % 40
    if junk == 1:
        s += ":"
    elif junk == 2:
        s = ":" + s
    elif junk == 3:
        s = s.replace(":", "::", 1)
    elif junk == 4:
        s += ":-1"
    elif junk == 5:
        s = "x" + s
    elif junk == 6:
        s = ""
    elif junk == 7:
        s = ":".join(["0"] * 70)
    elif junk == 8:
        s += ":99999999999999999999"
    return s


def _core_once(local, target, relos, shapes):
    from pytracer.core import apply_core_relocations
    from pytracer.spec import CoreReloSpec, ObjectSpec, ProgramSpec

    insns = b"".join(shapes)
    prog = ProgramSpec(name="fuzz", section="tracepoint/x/y", prog_type=5, attach_kind="tracepoint",
                       attach_target="x/y", insns=insns,
                       core_relocs=[CoreReloSpec(*r) for r in relos])
    spec = ObjectSpec(path="<fuzz>", license="GPL", programs={"fuzz": prog}, maps={})
    return apply_core_relocations(spec, local, target), spec


_EXPECTED = re.compile(r"(?:holds|offset is) -?\d+, expected (-?\d+)")


_by_kind = {}


def typical_roots(btf):
    """Named type ids of `btf` grouped the way relocations use them: 'field' (structs, unions and
    typedefs of them), 'enum', 'any' (every named type)."""
    key = id(btf)
    if key not in _by_kind:
        from pytracer.abi import BTFKind

        groups = {"field": [], "enum": [], "any": []}
        for i in range(1, len(btf)):
            k = btf.kind(i)
            if not btf.name_of(i):
                continue
            groups["any"].append(i)
            if k in (BTFKind.STRUCT, BTFKind.UNION, BTFKind.TYPEDEF):
                groups["field"].append(i)
            elif k in (BTFKind.ENUM, BTFKind.ENUM64):
                groups["enum"].append(i)
        _by_kind[key] = (btf, groups)
    return _by_kind[key][1]


def core_input(local, params):
    """Relocation records and instructions from `params`: a list of (type choice, kind, shape, regs,
    extra, [path choices]) tuples, one per relocation."""
    n_local = len(local)
    roots = typical_roots(local)
    relos, shapes = [], []
    for i, (tchoice, kind, shape, regs, extra, path) in enumerate(params):
        group = roots["enum"] if kind % 16 in (10, 11) else roots["field"] if kind % 16 < 6 else roots["any"]
        if tchoice % 13 == 0 or not group:
            type_id = tchoice % (n_local + 2) if tchoice % 26 else tchoice   # any id, maybe out of range
        else:
            type_id = group[tchoice % len(group)]
        access = access_path(local, type_id, kind, path)
        sh = INSN_SHAPES[shape % len(INSN_SHAPES)]
        slot = sum(len(s) for s in shapes) // 8
        shapes.append(_insns(sh, extra, regs & 0xFF, extra))
        insn_index = slot if extra % 17 else (extra % 5000) - 2      # sometimes outside the program
        relos.append((insn_index, type_id, access, kind % 16 if kind % 11 else kind))
    return relos, shapes


def _core(local, target, params, relos, shapes):
    """Relocate; when the instruction does not hold the object's value, retry once with the value the
    relocator expected, so the patching code is reached too."""
    from pytracer.errors import CORERelocationError

    try:
        _core_once(local, target, relos, shapes)
    except CORERelocationError as e:
        m = _EXPECTED.search(str(e))
        if not m:
            raise
        value = int(m.group(1))
        num = int(re.search(r"relocation #(\d+)", str(e)).group(1))
        shape = INSN_SHAPES[params[num][2] % len(INSN_SHAPES)]
        shapes[num] = _insns(shape, value, params[num][3] & 0xFF, value)
        _core_once(local, target, relos, shapes)


def core_btfs(which):
    """(local, target) BTF pairs: the object's BTF or vmlinux as local; vmlinux or a slice as target."""
    from pytracer.btf import BTF
    from pytracer.elf import read_object

    if "core_local" not in _seed_cache:
        locals_ = []
        for path in object_paths():
            try:
                locals_.append(BTF(read_object(path).btf))
            except Exception:  # noqa: BLE001 - an unreadable committed object is reported elsewhere
                pass
        _seed_cache["core_local"] = locals_
    vm = vmlinux_btf()
    locals_ = _seed_cache["core_local"]
    options = [(loc, vm) for loc in locals_ if vm is not None]
    if vm is not None:
        options.append((vm, vm))
        for k in (7, 300, 2999):
            blob = vmlinux_slice(k)
            try:
                options.append((locals_[0] if locals_ else vm, BTF(blob)))
            except Exception:  # noqa: BLE001
                pass
    if not options:
        return None, None
    return options[which % len(options)]


def target_core(which, params):
    local, target = core_btfs(which)
    if local is None:
        return "no seed"
    relos, shapes = core_input(local, params)
    return run_target(_core, local, target, params, relos, shapes)


# --- records -> lines -> output ------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _object_types():
    # Once per process: object_types() hashes the whole object for its cache key, and pack_record runs
    # for every record a test makes.
    from pytracer import tcpsnoop

    return tcpsnoop.object_types()


def record_layout():
    return _object_types()[0]


def constants():
    """tcpsnoop's event types and flags (EV_*, ATTR_*, TH_*), from its object's BTF."""
    return _object_types()[1]


def record_codec():
    """(full layout, record struct, identity struct or None): the record struct is what TcpSnoop.start()
    hands the ring buffer reader, so its tuples are exactly what convert() receives in real life. (Mirrors
    start(): when events.split exists, records are decoded as head fields + the connection identity.)"""
    from pytracer import records as events

    lay = record_layout()
    split = getattr(events, "split", None)
    if split is not None:
        head, ident = split(lay, "sk")
        return lay, head, ident
    return lay, lay.struct, None


def pack_record(values):
    """Raw record bytes from {field name: value} (missing fields are zero), through the full layout."""
    lay = record_layout()
    vals = []
    for f in lay.fields:
        v = values.get(f.name)
        if v is None:
            v = b"" if "s" in getattr(f, "code", "") or f.name in ("laddr", "raddr", "comm") else 0
        vals.append(v)
    return lay.struct.pack(*vals)


def decode_records(raw):
    """Cut raw bytes into records and decode them as the ring buffer reader does."""
    _, rec, _ = record_codec()
    return [rec.unpack_from(raw, i) for i in range(0, len(raw) - rec.size + 1, rec.size)]


def make_snoop(by_owner=False):
    """A TcpSnoop that convert() can run on, without loading anything into the kernel: the attributes
    start() sets for convert (the clock offset, the record decoders)."""
    from pytracer import tcpsnoop
    from pytracer.tcpsnoop import TcpSnoop

    snoop = TcpSnoop(pids=[1] if by_owner else ())
    snoop._epoch_ns = tcpsnoop.epoch_ns()
    snoop.use_types(*tcpsnoop.object_types())
    return snoop


def _control_free(text):
    return not any(ord(ch) < 0x20 and ch != "\n" or 0x7F <= ord(ch) < 0xA0 for ch in text)


# README, "JSON schema": key -> allowed types
SCHEMA = {"ts": (float,), "event": (str,), "dir": (str,), "pid": (int,), "uid": (int,), "comm": (str,),
          "family": (int,), "laddr": (str,), "lport": (int,), "raddr": (str,), "rport": (int,), "size": (int,),
          "payload": (int,), "netns": (int,)}
CLOSE_SCHEMA = {"tx_bytes": (int,), "rx_bytes": (int,), "duration_ms": (float, type(None))}
EVENTS = {"connect", "accept", "send", "recv", "reset", "close"}


def check_schema(d):
    keys = dict(SCHEMA, **CLOSE_SCHEMA) if d.get("event") == "close" else SCHEMA
    assert set(d) == set(keys), f"keys {sorted(d)} != schema {sorted(keys)}"
    for k, types in keys.items():
        assert isinstance(d[k], types) and not isinstance(d[k], bool), (k, d[k])
    assert d["event"] in EVENTS and d["dir"] in ("in", "out") and d["family"] in (4, 6), d
    assert 0 <= d["lport"] < 65536 and 0 <= d["rport"] < 65536, d
    assert _control_free(d["comm"]) and d["comm"].isprintable(), d["comm"]


def check_lines(snoop, records):
    """convert(), then the API's Event view and both output formats; every line must be well formed, and
    the JSON output must say what the API says."""
    from pytracer.tools.tcpsnoop.cli import ClassicWriter, JsonWriter
    from pytracer.tcpsnoop import Event

    out = []
    snoop.convert(records, out)
    api = [Event(line).as_dict() for line in out]
    for d in api:
        check_schema(d)
    for wide in (False, True):
        buf = io.StringIO()
        ClassicWriter(buf, True, wide, 0.0).write(out)
        text = buf.getvalue()
        assert _control_free(text), f"control character in classic output: {text!r}"
        assert text.count("\n") == len(out)
    buf = io.StringIO()
    JsonWriter(buf).write(out)
    lines = buf.getvalue().splitlines()
    assert len(lines) == len(out)
    for s, want in zip(lines, api):
        d = json.loads(s)
        check_schema(d)
        for k, v in want.items():
            if isinstance(v, float):
                assert d[k] is not None and abs(d[k] - v) <= 1e-3 * max(1.0, abs(v)), (k, d[k], v)
            else:
                assert d[k] == v, (k, d[k], v)
    return out


def target_records_raw(raw, by_owner=False):
    """Random bytes cut into records and decoded as the ring buffer reader does, then converted."""
    return run_target(check_lines, make_snoop(by_owner), decode_records(raw))


def target_records(values_list, by_owner=False):
    """Records from field values ({name: value} each), packed and decoded as in real life."""
    raw = b"".join(pack_record(v) for v in values_list)
    return run_target(check_lines, make_snoop(by_owner), decode_records(raw))


# --- ring buffer reader on simulated memory ------------------------------------------------------------

def simulated_ring(size, records, producer_gap=0):
    """A RingBuffer whose 'mapped memory' is plain Python buffers: `records` is a list of (header, payload)
    written consecutively from position 0, wrapping around the data area's end as in the kernel."""
    from pytracer.ringbuf import RingBuffer

    area = bytearray(size)
    pos = 0
    for hdr, payload in records:
        chunk = struct.pack("<II", hdr, 0) + payload
        chunk += b"\0" * (-len(chunk) % 8)
        for i, byte in enumerate(chunk):
            area[(pos + i) % size] = byte
        pos += len(chunk)
    page = mmap.PAGESIZE
    prod = bytearray(page) + area
    struct.pack_into("<Q", prod, 0, pos + producer_gap)
    rb = RingBuffer.__new__(RingBuffer)
    rb.size, rb.mask = size, size - 1
    rb._cons_map = rb._prod_map = rb._epoll = None
    rb._use_memory(bytearray(page), prod)
    return rb


def _ring(size, records, gap):
    _, rec, _ = record_codec()
    rb = simulated_ring(size, records, gap)
    rb.read(rec)
    rb2 = simulated_ring(size, records, gap)
    rb2.read_raw()


def target_ringbuf(size_exp, records, gap):
    return run_target(_ring, 1 << (12 + size_exp % 3), records, gap)


# --------------------------------------------------------------------------------------------------
# the long run (make fuzz)
# --------------------------------------------------------------------------------------------------

BYTE_TARGETS = {
    "elf": target_elf,
    "pipeline": target_pipeline,
    "btf_object": target_btf_object,
    "btf_vmlinux": target_btf_vmlinux,
    "btf_ext": target_btf_ext,
}
ALL_TARGETS = tuple(BYTE_TARGETS) + ("core", "records")


def one_input(target, raw):
    """Run one raw input (atheris / crash file) through `target`. Raises Finding on a contract breach."""
    if target in BYTE_TARGETS:
        seed_idx = raw[0] if raw else 0
        return BYTE_TARGETS[target](seed_idx, ops_from_bytes(raw[1:]))
    if target == "records":
        if raw[:1] == b"\1":
            return target_records_raw(raw[1:], by_owner=True)
        return target_records_raw(raw[1:])
    if target == "core":
        which = raw[0] if raw else 0
        params, i = [], 1
        while i + 13 <= len(raw) and len(params) < 8:
            tchoice, kind, shape, regs, extra = struct.unpack_from("<HBBBQ", raw, i)
            path = list(raw[i + 13:i + 21])
            params.append((tchoice, kind, shape, regs, extra - (1 << 63), path))
            i += 21
        return target_core(which, params or [(0, 0, 0, 0, 0, [0])])
    raise ValueError(f"unknown target {target}")


def save_crash(target, raw, err):
    os.makedirs(CRASHDIR, exist_ok=True)
    import hashlib

    path = os.path.join(CRASHDIR, f"{target}-{hashlib.sha1(raw).hexdigest()[:12]}")
    with open(path, "wb") as f:
        f.write(raw)
    with open(path + ".txt", "w") as f:
        f.write(f"target: {target}\nerror: {err}\nops: {ops_from_bytes(raw[1:]) if target in BYTE_TARGETS else '-'}\n")
    return path


def initial_inputs(target, n=24):
    """Starting corpus for atheris: the unmutated seeds, then short random programs of every op."""
    rng = random.Random(1)
    out = []
    if target in BYTE_TARGETS:
        for seed_idx in range(4):
            out.append(bytes([seed_idx]))
        for i in range(n):
            ops = [(OPS[(i + k) % len(OPS)], rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(32))
                   for k in range(1 + i % 3)]
            out.append(bytes([rng.randrange(256)]) + ops_to_bytes(ops))
    elif target == "core":
        for i in range(n):
            out.append(bytes([i % 16]) + b"".join(
                struct.pack("<HBBBQ", rng.getrandbits(16), rng.randrange(13), rng.randrange(15),
                            rng.getrandbits(8), rng.getrandbits(64)) + rng.randbytes(8) for _ in range(1 + i % 3)))
    elif target == "records":
        size = record_layout().struct.size
        for i in range(n):
            out.append(bytes([i % 2]) + rng.randbytes(size * (1 + i % 5)))
    return out


def _atheris_main(target, seconds, corpus, extra_args):
    import atheris

    with atheris.instrument_imports(include=["pytracer", "elftools"]):
        import pytracer.btf  # noqa: F401
        import pytracer.core  # noqa: F401
        import pytracer.elf  # noqa: F401
        import pytracer.tcpsnoop  # noqa: F401
        import pytracer.tools.tcpsnoop.cli  # noqa: F401

    # warm the seeds outside the timed inputs
    object_seeds(), vmlinux_btf(), section_seeds(".BTF"), section_seeds(".BTF.ext")

    def test_one(raw):
        try:
            one_input(target, raw)
        except Finding as e:
            print(f"\n*** {target}: {e}", flush=True)
            print(f"*** saved {save_crash(target, raw, e)}", flush=True)
            raise

    os.makedirs(corpus, exist_ok=True)
    if not os.listdir(corpus):
        for i, raw in enumerate(initial_inputs(target)):
            with open(os.path.join(corpus, f"seed-{i:03d}"), "wb") as f:
                f.write(raw)
    args = [sys.argv[0], corpus, f"-max_total_time={int(seconds)}", f"-timeout={int(DEADLINE) + 5}",
            "-rss_limit_mb=4096", "-max_len=512", "-len_control=0", "-print_final_stats=1",
            f"-artifact_prefix={CRASHDIR}{os.sep}{target}-libfuzzer-"] + list(extra_args)
    os.makedirs(CRASHDIR, exist_ok=True)
    atheris.Setup(args, test_one)
    atheris.Fuzz()


def _finding_key(err):
    """Distinct findings: the exception type and the deepest frame in pytracer or elftools."""
    inner = err.__cause__ or err
    where = "?"
    tb = inner.__traceback__
    while tb is not None:
        fname = tb.tb_frame.f_code.co_filename
        if os.sep + "pytracer" + os.sep in fname or os.sep + "elftools" + os.sep in fname:
            where = f"{os.path.basename(fname)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f"{str(err).split(':')[0]} at {where}"


def _random_main(target, seconds, seed, keep_going=False):
    """Fallback without atheris: seeded random inputs (reproducible with --seed). With keep_going, every
    distinct finding is saved and the run goes on."""
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    n = 0
    outcomes = {}
    findings = {}
    while time.monotonic() < end:
        raw = bytes([rng.randrange(256)]) + rng.randbytes(13 * rng.choice((1, 1, 1, 2, 2, 3, 5, 8)))
        if target == "core":
            raw = bytes([rng.randrange(256)]) + rng.randbytes(21 * rng.randrange(1, 6))
        if target == "records":
            raw = bytes([rng.randrange(2)]) + rng.randbytes(record_layout().struct.size * rng.randrange(1, 40))
        try:
            out = one_input(target, raw)
        except Finding as e:
            key = _finding_key(e)
            if key not in findings:
                findings[key] = save_crash(target, raw, e)
                print(f"*** {target}: {e}\n*** saved {findings[key]}", flush=True)
            if not keep_going:
                return 1
            out = "FINDING"
        outcomes[out] = outcomes.get(out, 0) + 1
        n += 1
    print(f"{target}: {n} inputs in {seconds:.0f} s, {len(findings) or 'no'} distinct finding(s); "
          f"outcomes {outcomes}", flush=True)
    for (name, where), count in sorted(MASKED.items(), key=lambda kv: -kv[1]):
        if "pytracer/" in where:
            print(f"  masked by a catch-all: {name} at {where} x{count}")
    for key, path in findings.items():
        print(f"  finding: {key} (input {path})")
    return 1 if findings else 0


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=ALL_TARGETS, required=True)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep-going", action="store_true", help="random engine: record every distinct finding")
    p.add_argument("--repro", metavar="FILE", help="run one saved input and show what happens")
    a, extra = p.parse_known_args(argv)
    if a.repro:
        raw = open(a.repro, "rb").read()
        if a.target in BYTE_TARGETS:
            print("ops:", ops_from_bytes(raw[1:]), "seed index:", raw[0] if raw else 0)
        try:
            print("outcome:", one_input(a.target, raw))
            return 0
        except Finding as e:
            import traceback

            traceback.print_exception(e.__cause__ or e)
            print("FINDING:", e)
            return 1
    engine = a.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "random"
    if engine == "atheris":
        corpus = os.path.join(HERE, "corpus", a.target)
        return _atheris_main(a.target, a.seconds, corpus, extra)
    return _random_main(a.target, a.seconds, a.seed if a.seed is not None else int(time.time()), a.keep_going)


if __name__ == "__main__":
    sys.exit(main())
