"""What the kernel holds: ids of every loaded BPF program, map, link and BTF object (BPF_*_GET_NEXT_ID).
Used to prove that pytracer leaves nothing behind, whatever way it exits."""
import errno

from . import abi, uapi
from .syscall import bpf, raise_from_oserror

KINDS = {"prog": abi.Cmd.PROG_GET_NEXT_ID, "map": abi.Cmd.MAP_GET_NEXT_ID,
         "link": abi.Cmd.LINK_GET_NEXT_ID, "btf": abi.Cmd.BTF_GET_NEXT_ID}


def ids(kind):
    """Sorted ids of all kernel objects of `kind` ('prog', 'map', 'link' or 'btf')."""
    cmd = KINDS[kind]
    out, start = [], 0
    while True:
        attr = bytearray(uapi.ATTR_GET_ID.pack(start_id=start))
        try:
            bpf(cmd, attr)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return out
            raise_from_oserror(f"listing BPF {kind} ids", e)
        start = uapi.ATTR_GET_ID.get(attr, "next_id")
        out.append(start)


def snapshot():
    return {kind: set(ids(kind)) for kind in KINDS}
