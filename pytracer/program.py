"""Program loading: map fds patched in, BPF_PROG_LOAD with BTF func/line info, verifier log on rejection."""
import errno
import os
import re

from . import abi, iterator, uapi
from .errors import KernelFeatureError, PytracerError, VerifierError
from .maps import kernel_name
from .syscall import Buffer, bpf, privilege_error, raise_from_oserror

LOG_START = 1 << 20
LOG_MAX = 1 << 28          # the kernel's own limit for log_size is UINT_MAX >> 2
LOAD_TRIES = 5             # BPF_PROG_LOAD on EAGAIN (a signal cut the verifier short), as libbpf does
_INSN = uapi.BPF_INSN.struct
PROG_INFO_SIZE = uapi.BPF_PROG_INFO.end("recursion_misses")


def relocate_maps(prog, maps):
    """Return prog.insns with every ld_imm64 that names a map turned into a map fd / map value load."""
    code = bytearray(prog.insns)
    for r in prog.map_relocs:
        m = maps.get(r.map_name)
        if m is None:
            raise PytracerError(f"program {prog.name} uses map '{r.map_name}' which was not created")
        op, regs, off, _imm = _INSN.unpack_from(code, r.insn_index * 8)
        src = abi.BPF_PSEUDO_MAP_VALUE if r.is_value else abi.BPF_PSEUDO_MAP_FD
        _INSN.pack_into(code, r.insn_index * 8, op, (regs & 0x0F) | (src << 4), off, m.fd)
        if r.is_value:
            op2, regs2, off2, _ = _INSN.unpack_from(code, (r.insn_index + 1) * 8)   # the second slot's imm
            _INSN.pack_into(code, (r.insn_index + 1) * 8, op2, regs2, off2, r.offset)
    return bytes(code)


class Program:
    """A loaded BPF program; owns its fd."""

    def __init__(self, spec, fd):
        self.spec = spec
        self.name = spec.name
        self.fd = fd

    def info(self):
        """The kernel's struct bpf_prog_info for this program (raw bytes, as long as this kernel fills)."""
        buf = Buffer(PROG_INFO_SIZE)
        try:
            bpf(abi.Cmd.OBJ_GET_INFO_BY_FD, uapi.ATTR_OBJ_INFO.pack(bpf_fd=self.fd, info_len=PROG_INFO_SIZE,
                                                                     info=buf.addr))
        except OSError as e:
            raise_from_oserror(f"reading information about program {self.name}", e)
        return buf.raw

    def recursion_misses(self):
        """Runs the kernel skipped because a BPF program was already running on that CPU (Linux 5.12+;
        0 where the kernel does not count them). Such skips are lost events, so callers report them."""
        return uapi.BPF_PROG_INFO.get(self.info(), "recursion_misses")

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def load(prog, maps, btf_fd, license_, source_btf=None, core_failures=()):
    """Load one program. `source_btf`, a callable returning the object's btf.BTF, is called only to annotate
    a verifier rejection with C source lines (parsing BTF is not free)."""
    if prog.attach_kind == "iter" and not prog.attach_btf_id:
        raise iterator.missing_target_error(prog)  # core.py found no bpf_iter_<target> in vmlinux BTF
    insns = relocate_maps(prog, maps)
    ibuf = Buffer(insns)
    lbuf = Buffer(license_.encode() + b"\0")
    fi = Buffer(prog.func_info) if (btf_fd >= 0 and prog.func_info) else None
    li = Buffer(prog.line_info) if (btf_fd >= 0 and prog.line_info) else None

    def attempt(log_level, log_size):
        logbuf = Buffer(log_size) if log_size else None
        fields = dict(prog_type=prog.prog_type, insn_cnt=len(insns) // 8, insns=ibuf.addr, license=lbuf.addr,
                      log_level=log_level, log_size=log_size, log_buf=logbuf.addr if logbuf else 0,
                      prog_name=kernel_name(prog.name), expected_attach_type=prog.expected_attach_type)
        upto = "expected_attach_type"
        if btf_fd >= 0:
            upto = "line_info_cnt"
            fields.update(prog_btf_fd=btf_fd)
            if fi:
                fields.update(func_info_rec_size=prog.func_info_rec_size, func_info=fi.addr,
                              func_info_cnt=len(prog.func_info) // prog.func_info_rec_size)
            if li:
                fields.update(line_info_rec_size=prog.line_info_rec_size, line_info=li.addr,
                              line_info_cnt=len(prog.line_info) // prog.line_info_rec_size)
        if prog.attach_btf_id:
            upto = "attach_btf_id"
            fields.update(attach_btf_id=prog.attach_btf_id)
        attr = uapi.ATTR_PROG_LOAD.pack(upto=upto, **fields)
        for tries_left in reversed(range(LOAD_TRIES)):
            try:
                return bpf(abi.Cmd.PROG_LOAD, attr), None
            except OSError as e:
                # the verifier gives up with EAGAIN when a signal arrives (one pytracer defers during
                # start-up, see toolkit/cli.py): it was delivered on the way out, so load again
                if e.errno == errno.EAGAIN and tries_left:
                    continue
                log = logbuf.raw.split(b"\0", 1)[0].decode("utf-8", "replace") if logbuf else ""
                return None, (e, log)

    fd, failure = attempt(0, 0)
    if fd is not None:
        return Program(prog, fd)
    err, _ = failure
    if err.errno in (errno.EPERM,):
        raise privilege_error(f"loading BPF program {prog.name}", err.errno)
    if err.errno not in (errno.EINVAL, errno.EACCES, errno.E2BIG, errno.ENOSPC, errno.EFAULT):
        raise_from_oserror(f"loading BPF program {prog.name}", err)
    # Rejected: load again with a verifier log, growing the buffer until the whole log fits.
    size = LOG_START
    while True:
        fd, failure = attempt(1, size)
        if fd is not None:  # accepted the second time (rare: resource pressure); keep it
            return Program(prog, fd)
        err, log = failure
        if err.errno == errno.ENOSPC and size < LOG_MAX:
            size *= 4
            continue
        break
    if err.errno == errno.EINVAL and not log:
        if prog.attach_kind == "tp_btf":
            raise KernelFeatureError(
                f"the kernel refused BTF-typed tracepoint program {prog.name} (tp_btf, Linux 5.5+ with "
                f"/sys/kernel/btf/vmlinux)", feature="tp_btf programs", since="5.5") from None
        if prog.attach_kind == "iter":
            raise iterator.missing_target_error(prog) from None
        raise PytracerError(f"the kernel refused program {prog.name} ({prog.section}): invalid argument "
                            f"and no verifier log") from None
    missing = _UNKNOWN_HELPER.search(log)
    if missing and not core_failures:
        raise KernelFeatureError(
            f"this kernel ({os.uname().release}) does not let {prog.section.split('/', 1)[0]} programs call the "
            f"BPF helper {missing.group(1)}, which program {prog.name} needs"
            f"{' (' + HELPER_SINCE[missing.group(1)] + ')' if missing.group(1) in HELPER_SINCE else ''}") from None
    raise VerifierError(summarise_rejection(prog, log, source_btf() if source_btf else None, core_failures),
                        annotate_log(log), program=prog.name, section=prog.section) from None


# A helper the kernel does not know, or does not offer to this program type (a poisoned CO-RE call reads
# "invalid func unknown#...", not this).
_UNKNOWN_HELPER = re.compile(r"^unknown func (bpf_\w+)#\d+", re.M)
# Where the kernel's answer alone does not say it: since when tracing programs may call a helper.
HELPER_SINCE = {
    "bpf_get_current_ancestor_cgroup_id": "tracing programs may since Linux 5.14",
}


_INSN_LINE = re.compile(r"^(\d+): \(")


def summarise_rejection(prog, log, source_btf, core_failures):
    """One sentence: which program, the verifier's last complaint, and the C line it points at."""
    lines = [ln for ln in log.strip().splitlines() if ln.strip()]
    reason = ""
    for ln in reversed(lines):
        if not ln.startswith(("processed ", "verification time", "stack depth", ";")) and \
                not _INSN_LINE.match(ln):
            reason = ln.strip()
            break
    last_insn = None
    for ln in reversed(lines):
        m = _INSN_LINE.match(ln)
        if m:
            last_insn = int(m.group(1))
            break
    where = source_line(prog, last_insn, source_btf) if last_insn is not None else None
    msg = f"the kernel verifier rejected program {prog.name} ({prog.section})"
    if reason:
        msg += f": {reason}"
    if where:
        msg += f"\n  at {where}"
    poisoned = abi.CORE_POISON_HELPER
    if core_failures and (str(poisoned) in log or "invalid func unknown#" in log):
        msg += "\n  because a CO-RE relocation failed: " + "; ".join(core_failures)
    return msg + "\nverifier log:"


def source_line(prog, insn_index, btf):
    """'file:line: source text' for an instruction, from the program's BTF line info."""
    if btf is None or not prog.line_info:
        return None
    best = None
    for off in range(0, len(prog.line_info), prog.line_info_rec_size):
        insn_off, file_off, line_off, col = uapi.BPF_LINE_INFO.struct.unpack_from(prog.line_info, off)
        if insn_off > insn_index:
            break
        best = (file_off, line_off, col)
    if best is None:
        return None
    try:
        fname = btf.string(best[0])
        text = btf.string(best[1]).strip()
    except PytracerError:
        return None
    return f"{fname}:{best[2] >> 10}: {text}"


def annotate_log(log):
    """The kernel already interleaves '; source line @ file:line' comments when line info was loaded;
    we only indent the log so it reads as a block under the summary."""
    return "\n".join("    " + ln for ln in log.rstrip().splitlines()[-200:])
