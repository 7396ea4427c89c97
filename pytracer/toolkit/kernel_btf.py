"""What tools ask of the running kernel's own BTF (/sys/kernel/btf/vmlinux), so that they follow the kernel
at hand rather than a version number: how many arguments a tracepoint passes (tracepoints gain arguments
over the years; a tp_btf program may read only those that exist), and the names of a kernel enum's
constants (their values move between kernels). Parsing the kernel's BTF takes a few tenths of a second, so
the answers are kept in the relocated-program cache (pytracer/cache.py), keyed by the kernel: a warm start
reads no BTF."""
from .. import cache
from ..abi import BTFKind
from ..btf import BTF
from ..errors import KernelFeatureError

VMLINUX = "/sys/kernel/btf/vmlinux"


def vmlinux():
    """The running kernel's BTF (parsed once per process)."""
    try:
        return BTF.load_vmlinux(VMLINUX)
    except FileNotFoundError:
        raise KernelFeatureError(f"this kernel has no BTF ({VMLINUX}): pytracer needs CONFIG_DEBUG_INFO_BTF",
                                 feature="CONFIG_DEBUG_INFO_BTF", since="5.2") from None


def _cached(what, compute, decode=lambda v: v):
    key = cache.key_for(b"", extra=f"toolkit.kernel_btf:{what}")
    hit = cache.get(key)
    if hit is not None:
        return decode(hit["value"])
    value = compute()
    cache.put(key, {"value": value})
    return value


def tracepoint_args(name: str):
    """The number of arguments tracepoint `name` passes to BPF (its TP_PROTO), or None if the kernel has
    no such tracepoint. From the typedef btf_trace_<name>: a pointer to a function whose first parameter
    is the tracepoint's private data, not an argument."""
    return _cached(f"tracepoint_args:{name}", lambda: _tracepoint_args(name))


def _tracepoint_args(name):
    btf = vmlinux()
    for tid in btf.find_by_name(f"btf_trace_{name}", BTFKind.TYPEDEF):
        t = btf.type(btf.skip_modifiers(btf.type(tid).type))
        if t.kind == BTFKind.PTR:
            proto = btf.type(btf.skip_modifiers(t.type))
            if proto.kind == BTFKind.FUNC_PROTO:
                return len(proto.params) - 1
    return None


def enum_names(name: str, prefix: str = ""):
    """{value: constant name less `prefix`} of the kernel's `enum name`, or None if it has none."""
    return _cached(f"enum_names:{name}:{prefix}", lambda: _enum_names(name, prefix),
                   lambda v: None if v is None else {int(k): n for k, n in v.items()})


def _enum_names(name, prefix):
    btf = vmlinux()
    out = {}
    for kind in (BTFKind.ENUM, BTFKind.ENUM64):
        for tid in btf.find_by_name(name, kind):
            for const, value in btf.type(tid).values:
                out.setdefault(value, const[len(prefix):] if const.startswith(prefix) else const)
    return out or None
