"""Record layouts, written once with construct (mirroring bpf_bytecode/*.h), and the fast decoders derived
from them.

construct is the single definition; per-record construct parsing is far too slow for the ring buffer's hot
path (tens of thousands of records/s), so `layout()` turns a construct Struct of fixed-size fields into a
`struct.Struct` (millions of records/s) plus the field names and offsets. Tests check each layout against
the object's BTF, field by field.
"""
import struct
from collections import namedtuple

Field = namedtuple("Field", "name offset size code")
Layout = namedtuple("Layout", "struct names fields")

# Event types and attributes: must match bpf_bytecode/tcpsnoop.h (a test checks them against BTF enums).
(EV_CONNECT, EV_ACCEPT, EV_SEND, EV_RECV, EV_RESET, EV_CLOSE, EV_RESET_CLOSED_PORT, EV_HANDSHAKE,
 EV_OWNER) = range(1, 10)
ATTR_OWNER_UNKNOWN = 1   # no process is known to hold the socket now: owner fields are empty
ATTR_RETRANS = 2         # the segment's payload had all been sent before
ATTR_DISCARD = 4         # EV_ACCEPT/EV_OWNER whose owner fails the filters: drop what was held for it
DIR_OUT, DIR_IN = 0, 1
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 1, 2, 4, 8, 16


def tcpsnoop_event():
    """struct tcpsnoop_event (bpf_bytecode/tcpsnoop.h)."""
    from construct import Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Padding, Struct

    return Struct(
        "ts_ns" / Int64ul,
        "tx_bytes" / Int64ul,
        "rx_bytes" / Int64ul,
        "start_ns" / Int64ul,
        "cgroup_id" / Int64ul,
        "size" / Int32ul,
        "payload" / Int32ul,
        "type" / Int8ul,
        "dir" / Int8ul,
        "tcp_flags" / Int8ul,
        "attr" / Int8ul,
        "gso_segs" / Int16ul,
        "gso_size" / Int16ul,
        # the connection's identity, contiguous (see tcpsnoop.h): decoded as one key by group()
        "sk" / Int64ul,
        "pid" / Int32ul,
        "uid" / Int32ul,
        "netns" / Int32ul,
        "lport" / Int16ul,
        "rport" / Int16ul,
        "laddr" / Bytes(16),
        "raddr" / Bytes(16),
        "comm" / Bytes(16),
        "family" / Int8ul,
        Padding(7),
    )


def probe_event():
    """struct probe_event (bpf_bytecode/enginetest.h): the synthetic producer's record."""
    from construct import Int32ul, Int64ul, Struct

    return Struct(
        "seq" / Int64ul,
        "ts_ns" / Int64ul,
        "tgid" / Int32ul,
        "cpu" / Int32ul,
        "arg" / Int64ul,
    )


LAYOUTS = {"tcpsnoop_event": tcpsnoop_event, "probe_event": probe_event}


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


def layout(con):
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


def split(lay, first):
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


_cache = {}


def get_layout(name):
    """Layout by record name, derived from construct once, then kept in this process and in the on-disk
    cache (keyed by this file's text), so a warm start does not import construct at all."""
    lay = _cache.get(name)
    if lay is not None:
        return lay
    from . import cache

    try:
        from . import resources

        key = cache.key_for(resources.read(__file__), extra="layout:" + name)
    except OSError:
        key = None
    hit = cache.get(key) if key else None
    if hit is not None:
        try:
            lay = Layout(struct.Struct(hit["format"]), tuple(hit["names"]), tuple(Field(*f) for f in hit["fields"]))
        except (KeyError, TypeError, ValueError, struct.error):
            lay = None
    if lay is None:
        lay = layout(LAYOUTS[name]())
        if key:
            cache.put(key, {"format": lay.struct.format, "names": lay.names, "fields": lay.fields})
    _cache[name] = lay
    return lay
