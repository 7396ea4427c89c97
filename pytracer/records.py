"""Record layouts, read from the BPF object's BTF, and the fast decoders derived from them.

A record's C struct (in the tool's header, e.g. bpf_bytecode/tcpsnoop.h) is its only definition: clang
puts it in the object's BTF, `construct_from_btf` turns that into a construct Struct (integers, enums,
byte arrays; members named `_...` and holes are padding), and `layout()` turns a construct Struct of
fixed-size fields into a `struct.Struct` (millions of records/s; construct parses a few tens of thousands)
plus the field names and offsets. Enum values (event types, flags) come from the same BTF (`enum_values`).

What is derived is cached per object (keyed by the object's hash, see `cache.key_for`), in this process
and on disk, so a warm start neither parses BTF nor imports construct.

Pure: no system call. `python -m pytracer.records OBJECT STRUCT` prints a record's offsets.
"""
from __future__ import annotations

import struct
import sys
from collections import namedtuple

from .errors import ObjectFormatError

Field = namedtuple("Field", "name offset size code")
Layout = namedtuple("Layout", "struct names fields")


# --- from BTF -------------------------------------------------------------------------------------------
def _btf(btf):
    from .btf import BTF

    return btf if isinstance(btf, BTF) else BTF(btf)


def _struct_type(btf, name):
    from .abi import BTFKind

    for tid in btf.find_by_name(name, BTFKind.STRUCT):
        t = btf.type(tid)
        if t.vlen or t.size:
            return t
    raise ObjectFormatError(f"the object's BTF has no struct {name} (is it referenced by the program? "
                            f"an unused pointer to it keeps it, see __unused_event in tcpsnoop.bpf.c)")


def construct_from_btf(btf, name: str):
    """The construct Struct of `struct name` from BTF (bytes or btf.BTF), little-endian."""
    import construct
    from .abi import BTFKind

    btf = _btf(btf)
    t = _struct_type(btf, name)
    ints = {(1, False): construct.Int8ul, (2, False): construct.Int16ul, (4, False): construct.Int32ul,
            (8, False): construct.Int64ul, (1, True): construct.Int8sl, (2, True): construct.Int16sl,
            (4, True): construct.Int32sl, (8, True): construct.Int64sl}
    subcons, off = [], 0
    for m in t.members:
        if m.bitfield_size or m.bit_offset % 8:
            raise ObjectFormatError(f"struct {name}: bitfield {m.name} cannot be a record field")
        start = m.bit_offset // 8
        if start < off:
            raise ObjectFormatError(f"struct {name}: member {m.name} overlaps the one before it")
        if start > off:
            subcons.append(construct.Padding(start - off))
        size = btf.resolve_size(m.type)
        mt = btf.type(btf.skip_mods_and_typedefs(m.type))
        if m.name.startswith("_") or not m.name:
            sub = construct.Padding(size)
        elif mt.kind == BTFKind.INT or mt.is_any_enum:
            if (size, mt.is_signed) not in ints:
                raise ObjectFormatError(f"struct {name}: member {m.name} is a {size}-byte integer")
            sub = m.name / ints[(size, mt.is_signed)]
        elif mt.kind == BTFKind.ARRAY and btf.resolve_size(mt.array.elem_type) == 1:
            sub = m.name / construct.Bytes(size)
        else:
            raise ObjectFormatError(f"struct {name}: member {m.name} ({btf.describe(m.type)}) is not an "
                                    f"integer, an enum or a byte array")
        subcons.append(sub)
        off = start + size
    if t.size > off:
        subcons.append(construct.Padding(t.size - off))
    return construct.Struct(*subcons)


def enum_values(btf, name: str) -> dict[str, int]:
    """{constant name: value} of `enum name` in BTF (bytes or btf.BTF)."""
    from .abi import BTFKind

    btf = _btf(btf)
    out = {}
    for kind in (BTFKind.ENUM, BTFKind.ENUM64):
        for tid in btf.find_by_name(name, kind):
            out.update(dict(btf.type(tid).values))
    if not out:
        raise ObjectFormatError(f"the object's BTF has no enum {name} (is a variable of that type kept? "
                                f"see __unused_enums in tcpsnoop.bpf.c)")
    return out


# --- construct -> struct ------------------------------------------------------------------------------
def _code(subcon):
    """struct-module code for one fixed-size construct field."""
    import construct

    while isinstance(subcon, construct.Renamed):
        subcon = subcon.subcon
    if isinstance(subcon, construct.FormatField):
        return subcon.fmtstr.lstrip("<>=!@"), struct.calcsize(subcon.fmtstr)
    if isinstance(subcon, construct.Bytes) and isinstance(subcon.length, int):
        return f"{subcon.length}s", subcon.length
    if isinstance(subcon, construct.Padded) and isinstance(subcon.subcon, construct.Pass.__class__):
        return f"{subcon.length}x", subcon.length
    raise TypeError(f"cannot derive a struct code for {subcon!r}")


def layout(con) -> Layout:
    """struct.Struct, field names (in tuple order) and field offsets for a construct Struct."""
    import construct

    codes, names, fields, off = [], [], [], 0
    for sc in con.subcons:
        code, size = _code(sc)
        codes.append(code)
        name = sc.name if isinstance(sc, construct.Renamed) else None
        if name is not None:
            names.append(name)
            fields.append(Field(name, off, size, code))
        off += size
    s = struct.Struct("<" + "".join(codes))
    assert s.size == con.sizeof(), "struct and construct disagree on the record size"
    return Layout(s, tuple(names), tuple(fields))


def split(lay: Layout, first: str) -> tuple[struct.Struct, struct.Struct]:
    """Two structs for a record whose fields from `first` to the end form a key (e.g. a connection's
    identity): `head` decodes the fields before `first` one by one and everything after as one bytes
    object (hashable, cheap to compare); `tail` decodes that bytes object into its fields."""
    start = next(f.offset for f in lay.fields if f.name == first)

    def fmt(fields, base, end):
        codes, off = [], base
        for f in fields:
            if f.offset > off:
                codes.append(f"{f.offset - off}x")
            codes.append(f.code)
            off = f.offset + f.size
        if end > off:
            codes.append(f"{end - off}x")
        return "<" + "".join(codes)

    size = lay.struct.size
    head = struct.Struct(fmt([f for f in lay.fields if f.offset < start], 0, start) + f"{size - start}s")
    tail = struct.Struct(fmt([f for f in lay.fields if f.offset >= start], start, size))
    return head, tail


# --- cached per object -----------------------------------------------------------------------------------
_memo = {}


def _cached(key, what, make, encode, decode):
    """`make()`, kept in this process and in the on-disk cache under (object key, what)."""
    memo_key = (key, what)
    hit = _memo.get(memo_key)
    if hit is not None:
        return hit
    from . import cache

    disk_key = cache.derived_key(key, what) if key else None
    value = None
    raw = cache.get(disk_key) if disk_key else None
    if raw is not None:
        try:
            value = decode(raw)
        except (KeyError, TypeError, ValueError, struct.error):
            value = None
    if value is None:
        value = make()
        if disk_key:
            cache.put(disk_key, encode(value))
    if key:
        _memo[memo_key] = value
    return value


def record_layout(btf, name: str, key: str | None = None) -> Layout:
    """Layout of `struct name`; `btf` is the object's BTF (bytes, a btf.BTF, or a callable returning
    either, called only on a cache miss); `key` identifies the object (cache.key_for of its bytes)."""
    return _cached(
        key, "record:" + name, lambda: layout(construct_from_btf(btf() if callable(btf) else btf, name)),
        lambda lay: {"format": lay.struct.format, "names": lay.names, "fields": lay.fields},
        lambda hit: Layout(struct.Struct(hit["format"]), tuple(hit["names"]),
                           tuple(Field(*f) for f in hit["fields"])))


def enums(btf, names, key: str | None = None) -> dict[str, int]:
    """{constant: value} of every `enum name` for name in `names`, in one dict (arguments as for
    record_layout)."""
    def make():
        b = _btf(btf() if callable(btf) else btf)
        out = {}
        for name in names:
            out.update(enum_values(b, name))
        return out

    return _cached(key, "enums:" + ",".join(names), make, dict,
                   lambda hit: {str(k): int(v) for k, v in hit.items()})


def object_btf(path: str):
    """(BTF bytes, cache key) of a BPF object file, without loading it (pure: for tests and tools that
    decode records of an object they do not load)."""
    from . import cache
    from .elf import read_object

    with open(path, "rb") as f:
        data = f.read()
    return (lambda: read_object(data, path).btf), cache.key_for(data)


def object_layout(path: str, name: str) -> Layout:
    """record_layout of `struct name` in the BPF object file at `path` (cached like the loader's)."""
    btf, key = object_btf(path)
    return record_layout(btf, name, key)


def main(argv=None):
    """`python -m pytracer.records OBJECT STRUCT`: the record's fields, offsets and sizes, from BTF."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m pytracer.records OBJECT.bpf.o STRUCT", file=sys.stderr)
        return 2
    btf, _key = object_btf(argv[0])
    lay = layout(construct_from_btf(btf(), argv[1]))
    print(f"struct {argv[1]}: {lay.struct.size} bytes")
    for f in lay.fields:
        print(f"  {f.offset:4d} {f.name:<12} {f.size:3d}  {f.code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
