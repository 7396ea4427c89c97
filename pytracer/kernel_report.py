"""What the running kernel offers pytracer, for `pytracer --version`: one line per feature.

Cheap and, but for one check, unprivileged: the kernel's own BTF (/sys/kernel/btf/vmlinux, world-readable)
names what the kernel was built with, so looking a name up in its string table (no type parsing) tells
whether the ring buffer map type, the iterator targets, the sock_*_length tracepoints and perf links exist.
As root, the ring buffer is confirmed by creating one (a 4 KiB map, closed at once) and the tracepoints by
tracefs; without root those lines say they come from BTF alone.
"""
import os
import struct

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"


def btf_strings(path=VMLINUX_BTF):
    """The string section of a raw BTF blob as bytes with NUL separators (b"" if unreadable)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        magic, _ver, _flags, hdr_len, _toff, _tlen, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
    except (OSError, struct.error):
        return b""
    if magic != 0xEB9F:
        return b""
    start = hdr_len + str_off
    return b"\0" + data[start:start + str_len] + b"\0"


def _has(strings, *names):
    return all(b"\0" + n.encode() + b"\0" in strings for n in names)


def _root():
    return os.geteuid() == 0


def _ringbuf_created():
    """True/False when root could try to create a ring buffer map, None when it cannot be tried."""
    if not _root():
        return None
    try:
        from . import abi
        from .syscall import bpf

        fd = bpf(abi.Cmd.MAP_CREATE, struct.pack("<IIII", abi.MapType.RINGBUF, 0, 0, 4096))
    except OSError:
        return False
    except Exception:  # noqa: BLE001 - no bpf() number for this machine, ...
        return None
    os.close(fd)
    return True


def _tracepoints(*names):
    """True/False from tracefs (root), None when tracefs cannot be read."""
    if not _root():
        return None
    try:
        from .attach import tracepoint_exists

        return all(tracepoint_exists(n) for n in names)
    except Exception:  # noqa: BLE001 - tracefs not mounted and not mountable
        return None


def probe():
    """[(feature, available: bool, how it was found)] for the running kernel."""
    strings = btf_strings()
    have_btf = bool(strings)
    out = []
    if have_btf:
        btf = ("BTF", True, f"{VMLINUX_BTF}, {os.path.getsize(VMLINUX_BTF) / 1e6:.1f} MB")
    else:
        btf = ("BTF", False, f"{VMLINUX_BTF} missing or unreadable (CONFIG_DEBUG_INFO_BTF=y, Linux 5.4+)")
    by_btf = "from BTF" + ("" if _root() else "; root confirms it")

    made = _ringbuf_created()
    if made is not None:
        out.append(("ring buffer", made, "created a BPF_MAP_TYPE_RINGBUF map" if made else
                    "creating a BPF_MAP_TYPE_RINGBUF map failed (Linux 5.8+)"))
    else:
        out.append(("ring buffer", _has(strings, "BPF_MAP_TYPE_RINGBUF"), f"BPF_MAP_TYPE_RINGBUF, {by_btf}"))
    out.append(btf)

    targets = [t for t in ("task_file", "tcp") if _has(strings, "bpf_iter_" + t)]
    out.append(("iterators", _has(strings, "BPF_TRACE_ITER") and len(targets) == 2,
                f"targets task_file and tcp wanted, found: {', '.join(targets) or 'none'}, from BTF"))

    tps = ("sock/sock_send_length", "sock/sock_recv_length")
    seen = _tracepoints(*tps)
    if seen is not None:
        out.append(("sock_*_length", seen, "sock:sock_send_length, sock:sock_recv_length in tracefs"
                    + ("" if seen else " missing (Linux < 6.3: syscall tracepoints are used instead)")))
    else:
        have = _has(strings, "btf_trace_sock_send_length", "btf_trace_sock_recv_length")
        out.append(("sock_*_length", have, f"sock:sock_send_length, sock:sock_recv_length, {by_btf}"
                    + ("" if have else " (Linux < 6.3: syscall tracepoints are used instead)")))

    have = _has(strings, "BPF_LINK_TYPE_PERF_EVENT")
    out.append(("perf links", have, "BPF_LINK_TYPE_PERF_EVENT, from BTF"
                + ("" if have else " (Linux < 5.15: tracepoints are attached with the older ioctl)")))
    return out


def report(version):
    u = os.uname()
    lines = [f"pytracer {version}", f"kernel {u.release} ({u.machine})"]
    found = probe()
    width = max(len(name) for name, _, _ in found)
    for name, ok, how in found:
        lines.append(f"  {name + ':':<{width + 1}} {'yes' if ok else 'no '} ({how})")
    return "\n".join(lines)


def version_action(version):
    """An argparse action for --version that prints the version and the kernel features, then exits."""
    import argparse
    import sys

    class Version(argparse.Action):
        def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
            super().__init__(option_strings, dest=dest, default=default, nargs=0,
                             help=help or "print the version and the kernel features found, and exit")

        def __call__(self, parser, namespace, values, option_string=None):
            sys.stdout.write(report(version) + "\n")
            parser.exit()

    return Version
