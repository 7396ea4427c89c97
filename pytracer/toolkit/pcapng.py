"""pcapng (and classic pcap) in pure Python: a writer of the blocks pytracer needs and a reader of any
capture file tcpdump or Wireshark writes.

The format is the IETF draft "PCAP Next Generation (pcapng) Capture File Format": a file is a sequence of
blocks (type, total length, body, total length again), each 32-bit aligned; a Section Header Block (SHB)
starts every section and fixes its byte order; Interface Description Blocks (IDB) declare interfaces,
numbered in order within the section; Enhanced Packet Blocks (EPB) carry packets with an interface id, a
64-bit timestamp in the interface's resolution (if_tsresol), captured and original length; Interface
Statistics Blocks (ISB) carry counters such as isb_ifdrop. Options are (code, length, value) padded to 32
bits and ended by opt_endofopt.

Writer: one section, little-endian, nanosecond interfaces (if_tsresol 9). Reader: every section and byte
order, if_tsresol in powers of 10 or 2, Simple Packet Blocks, and classic pcap files (micro- or
nanosecond magic). Bad input raises CaptureFormatError with the byte offset, never a struct.error.
"""
import struct
from typing import NamedTuple

from ..errors import PytracerError

# block types
SHB, IDB, SPB, NRB, ISB, EPB = 0x0A0D0D0A, 1, 3, 4, 5, 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D
# option codes
OPT_ENDOFOPT, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_NAME, IF_DESCRIPTION, IF_TSRESOL = 2, 3, 9
EPB_FLAGS = 2
ISB_STARTTIME, ISB_ENDTIME, ISB_IFRECV, ISB_IFDROP = 2, 3, 4, 5
# epb_flags bits 0-1: direction
DIR_UNKNOWN, DIR_INBOUND, DIR_OUTBOUND = 0, 1, 2
# link types (tcpdump.org/linktypes.html)
LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 1, 101, 113, 276
# classic pcap magics, as read little-endian: microseconds, nanoseconds
PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D
MAX_BLOCK = 64 << 20        # a block longer than this is corruption, not a packet


class CaptureFormatError(PytracerError):
    """A capture file that is not pcap/pcapng, or is truncated or corrupt."""

    def __init__(self, path, offset, what):
        self.path, self.offset = path, offset
        super().__init__(f"{path}: not a readable capture file at byte {offset}: {what}")


def _pad4(n):
    return (4 - n % 4) % 4


def _options(opts):
    """Encode [(code, bytes)] as pcapng options (little-endian), ended by opt_endofopt if any."""
    if not opts:
        return b""
    parts = []
    for code, value in opts:
        parts.append(struct.pack("<HH", code, len(value)) + value + b"\0" * _pad4(len(value)))
    parts.append(b"\0\0\0\0")
    return b"".join(parts)


def _block(btype, body):
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


# ---- writing ---------------------------------------------------------------------------------------------
class Writer:
    """Writes one little-endian pcapng section to `out` (a binary file object). Interfaces get ids in the
    order they are added; every timestamp is in nanoseconds since the epoch."""

    def __init__(self, out, application="pytracer"):
        self.out = out
        self.interfaces = 0
        body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options([(SHB_USERAPPL, application.encode())])
        self.out.write(_block(SHB, body))

    def add_interface(self, linktype, snaplen, name, description=None):
        """Declare an interface (if_tsresol 9: nanoseconds); returns its id."""
        opts = [(IF_NAME, name.encode()), (IF_TSRESOL, b"\x09")]
        if description:
            opts.append((IF_DESCRIPTION, description.encode()))
        self.out.write(_block(IDB, struct.pack("<HHI", linktype, 0, snaplen) + _options(opts)))
        self.interfaces += 1
        return self.interfaces - 1

    def packet(self, if_id, ts_ns, data, orig_len, direction=DIR_UNKNOWN, comments=()):
        """An Enhanced Packet Block: `data` as captured (maybe shorter than `orig_len`: truncated)."""
        opts = [(OPT_COMMENT, c.encode()) for c in comments]
        if direction:
            opts.append((EPB_FLAGS, struct.pack("<I", direction)))
        head = struct.pack("<IIIII", if_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data), orig_len)
        self.out.write(_block(EPB, head + data + b"\0" * _pad4(len(data)) + _options(opts)))

    def statistics(self, if_id, ts_ns, ifdrop=None, start_ns=None, comment=None):
        """An Interface Statistics Block at `ts_ns`, with isb_ifdrop if given."""
        opts = []
        if comment:
            opts.append((OPT_COMMENT, comment.encode()))
        if start_ns is not None:
            opts.append((ISB_STARTTIME, struct.pack("<II", start_ns >> 32, start_ns & 0xFFFFFFFF)))
        opts.append((ISB_ENDTIME, struct.pack("<II", ts_ns >> 32, ts_ns & 0xFFFFFFFF)))
        if ifdrop is not None:
            opts.append((ISB_IFDROP, struct.pack("<Q", ifdrop)))
        self.out.write(_block(ISB, struct.pack("<III", if_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF) + _options(opts)))

    def flush(self):
        self.out.flush()


# ---- reading ---------------------------------------------------------------------------------------------
class Interface(NamedTuple):
    linktype: int
    snaplen: int
    name: str
    description: str
    tsresol: int            # timestamp units per second


class Packet(NamedTuple):
    interface: Interface
    if_id: int              # within its section
    ts_ns: int              # nanoseconds since the epoch
    data: bytes
    orig_len: int
    direction: int          # DIR_*; DIR_UNKNOWN if the block has no epb_flags
    comments: tuple


class Statistics(NamedTuple):
    interface: Interface
    if_id: int
    ts_ns: int
    ifdrop: object          # int, or None if the block has no isb_ifdrop
    comments: tuple


def _parse_options(buf, pos, end, e, path, base):
    """{code: [bytes, ...]} of the options in buf[pos:end]."""
    opts = {}
    while pos + 4 <= end:
        code, length = struct.unpack_from(e + "HH", buf, pos)
        pos += 4
        if code == OPT_ENDOFOPT:
            break
        if pos + length > end:
            raise CaptureFormatError(path, base + pos, f"option {code} runs past its block")
        opts.setdefault(code, []).append(bytes(buf[pos:pos + length]))
        pos += length + _pad4(length)
    return opts


def _text(values):
    return values[0].decode("utf-8", "replace").rstrip("\0") if values else ""


def _tsresol(values):
    if not values or not values[0]:
        return 10 ** 6
    v = values[0][0]
    return 2 ** (v & 0x7F) if v & 0x80 else 10 ** v


def _to_ns(ts, units):
    return ts * 10 ** 9 // units if units != 10 ** 9 else ts


def read(path, f):
    """Yield Packet and Statistics items of the pcapng or pcap file open as `f` (binary)."""
    head = f.read(4)
    if len(head) < 4:
        raise CaptureFormatError(path, 0, "the file is empty or shorter than a header")
    magic_le = struct.unpack("<I", head)[0]
    if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) or struct.unpack(">I", head)[0] in (PCAP_MAGIC_US,
                                                                                      PCAP_MAGIC_NS):
        yield from _read_pcap(path, f, head)
    elif magic_le == SHB:
        yield from _read_pcapng(path, f, head)
    else:
        raise CaptureFormatError(path, 0, f"unknown magic number 0x{magic_le:08x} (neither pcap nor pcapng)")


def _read_exact(f, n, path, offset, what):
    b = f.read(n)
    if len(b) < n:
        raise CaptureFormatError(path, offset, f"the file ends inside {what} ({len(b)} of {n} bytes)")
    return b


def _read_pcap(path, f, head):
    rest = _read_exact(f, 20, path, 4, "the pcap file header")
    e = "<" if struct.unpack("<I", head)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
    magic = struct.unpack(e + "I", head)[0]
    units = 10 ** 9 if magic == PCAP_MAGIC_NS else 10 ** 6
    _vmaj, _vmin, _zone, _sig, snaplen, linktype = struct.unpack(e + "HHiIII", rest)
    iface = Interface(linktype & 0xFFFF, snaplen, "", "", units)
    offset = 24
    while True:
        rec = f.read(16)
        if not rec:
            return
        if len(rec) < 16:
            raise CaptureFormatError(path, offset, "the file ends inside a packet header")
        sec, frac, incl, orig = struct.unpack(e + "IIII", rec)
        if incl > MAX_BLOCK:
            raise CaptureFormatError(path, offset, f"a packet claims {incl} captured bytes")
        data = _read_exact(f, incl, path, offset + 16, "a packet")
        yield Packet(iface, 0, sec * 10 ** 9 + _to_ns(frac, units), data, orig, DIR_UNKNOWN, ())
        offset += 16 + incl


def _read_pcapng(path, f, head):
    e = "<"
    interfaces = []
    offset = 0
    first = True
    while True:
        if first:
            btype_raw = head
            first = False
        else:
            btype_raw = f.read(4)
            if not btype_raw:
                return
        lenb = _read_exact(f, 4, path, offset + len(btype_raw), "a block header")
        if len(btype_raw) < 4:
            raise CaptureFormatError(path, offset, "the file ends inside a block header")
        if struct.unpack("<I", btype_raw)[0] == SHB:
            # the byte-order magic (next 4 bytes) fixes how to read this section, its length included
            bom = _read_exact(f, 4, path, offset + 8, "a section header")
            if struct.unpack("<I", bom)[0] == BYTE_ORDER_MAGIC:
                e = "<"
            elif struct.unpack(">I", bom)[0] == BYTE_ORDER_MAGIC:
                e = ">"
            else:
                raise CaptureFormatError(path, offset + 8, "bad byte-order magic in a section header")
            total = struct.unpack(e + "I", lenb)[0]
            if total < 28 or total % 4 or total > MAX_BLOCK:
                raise CaptureFormatError(path, offset, f"section header block of bad length {total}")
            body = bom + _read_exact(f, total - 12 - 4, path, offset + 12, "a section header block")
            interfaces = []
        else:
            total = struct.unpack(e + "I", lenb)[0]
            if total < 12 or total % 4 or total > MAX_BLOCK:
                raise CaptureFormatError(path, offset, f"block of bad length {total}")
            body = _read_exact(f, total - 12, path, offset + 8, "a block")
        trailer = _read_exact(f, 4, path, offset + total - 4, "a block trailer")
        if struct.unpack(e + "I", trailer)[0] != total:
            raise CaptureFormatError(path, offset + total - 4, "block trailer does not repeat its length")
        btype = struct.unpack(e + "I", btype_raw)[0]
        base = offset + 8
        if btype == IDB:
            if len(body) < 8:
                raise CaptureFormatError(path, offset, "interface description block too short")
            linktype, _res, snaplen = struct.unpack_from(e + "HHI", body, 0)
            o = _parse_options(body, 8, len(body), e, path, base)
            interfaces.append(Interface(linktype, snaplen, _text(o.get(IF_NAME)), _text(o.get(IF_DESCRIPTION)),
                                        _tsresol(o.get(IF_TSRESOL))))
        elif btype == EPB:
            if len(body) < 20:
                raise CaptureFormatError(path, offset, "enhanced packet block too short")
            if_id, hi, lo, caplen, orig = struct.unpack_from(e + "IIIII", body, 0)
            if if_id >= len(interfaces):
                raise CaptureFormatError(path, offset, f"packet on interface {if_id}, which is not described")
            if 20 + caplen > len(body):
                raise CaptureFormatError(path, offset, f"packet of {caplen} captured bytes runs past its block")
            iface = interfaces[if_id]
            o = _parse_options(body, 20 + caplen + _pad4(caplen), len(body), e, path, base)
            flags = struct.unpack(e + "I", o[EPB_FLAGS][0])[0] if EPB_FLAGS in o and len(o[EPB_FLAGS][0]) == 4 else 0
            comments = tuple(c.decode("utf-8", "replace") for c in o.get(OPT_COMMENT, ()))
            yield Packet(iface, if_id, _to_ns((hi << 32) | lo, iface.tsresol), bytes(body[20:20 + caplen]),
                         orig, flags & 3, comments)
        elif btype == SPB:
            if not interfaces or len(body) < 4:
                raise CaptureFormatError(path, offset, "simple packet block without an interface")
            orig = struct.unpack_from(e + "I", body, 0)[0]
            data = bytes(body[4:4 + min(orig, interfaces[0].snaplen or orig)])
            yield Packet(interfaces[0], 0, 0, data, orig, DIR_UNKNOWN, ())
        elif btype == ISB:
            if len(body) < 12:
                raise CaptureFormatError(path, offset, "interface statistics block too short")
            if_id, hi, lo = struct.unpack_from(e + "III", body, 0)
            if if_id >= len(interfaces):
                raise CaptureFormatError(path, offset, f"statistics of interface {if_id}, which is not described")
            o = _parse_options(body, 12, len(body), e, path, base)
            drop = struct.unpack(e + "Q", o[ISB_IFDROP][0])[0] if len(o.get(ISB_IFDROP, [b""])[0]) == 8 else None
            comments = tuple(c.decode("utf-8", "replace") for c in o.get(OPT_COMMENT, ()))
            yield Statistics(interfaces[if_id], if_id, _to_ns((hi << 32) | lo, interfaces[if_id].tsresol), drop,
                             comments)
        # other blocks (name resolution, custom, ...) carry nothing pytracer reads
        offset += total
