"""What the kernel holds: ids of every loaded BPF program, map, link and BTF object (BPF_*_GET_NEXT_ID).
Used to prove that pytracer leaves nothing behind, whatever way it exits."""
import errno
import struct

from . import abi
from .syscall import bpf, raise_from_oserror

KINDS = {"prog": abi.Cmd.PROG_GET_NEXT_ID, "map": abi.Cmd.MAP_GET_NEXT_ID,
         "link": abi.Cmd.LINK_GET_NEXT_ID, "btf": abi.Cmd.BTF_GET_NEXT_ID}


def ids(kind):
    """Sorted ids of all kernel objects of `kind` ('prog', 'map', 'link' or 'btf')."""
    cmd = KINDS[kind]
    out, start = [], 0
    while True:
        attr = bytearray(struct.pack("<III", start, 0, 0))
        try:
            bpf(cmd, attr)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return out
            raise_from_oserror(f"listing BPF {kind} ids", e)
        start = struct.unpack_from("<I", attr, 4)[0]
        out.append(start)


def snapshot():
    return {kind: set(ids(kind)) for kind in KINDS}
