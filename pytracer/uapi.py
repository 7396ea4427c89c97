"""Kernel structures, each defined once, here, as a named layout (include/uapi/linux/bpf.h, perf_event.h).

Pure data: no system call, no ctypes; the object parsers (elf, core) use the instruction layout and the
syscall layer packs `union bpf_attr` and reads `struct bpf_*_info` with these.  Everything is
little-endian, like the BPF objects pytracer loads (abi.SYSCALLS lists only little-endian machines).

A `union bpf_attr` member may be sent shorter than the kernel's union (the kernel zero-fills the rest, and
an older kernel rejects unknown non-zero tail bytes), so `KStruct.pack(..., upto=field)` stops after
`field`.
"""
import struct


class KStruct:
    """A kernel struct: field names, `struct` codes and offsets, packed little-endian with no implicit
    padding (every layout here is written so that its fields fall where the C compiler puts them)."""

    __slots__ = ("name", "fields", "codes", "offsets", "struct", "size", "_prefix")

    def __init__(self, name, *fields):
        self.name = name
        self.fields = tuple(n for n, _ in fields)
        self.codes = dict(fields)
        self.offsets, off = {}, 0
        for n, code in fields:
            self.offsets[n] = off
            off += struct.calcsize("<" + code)
        self.struct = struct.Struct("<" + "".join(c for _, c in fields))
        self.size = self.struct.size
        self._prefix = {}

    def _upto(self, last):
        s = self._prefix.get(last)
        if s is None:
            n = self.fields.index(last) + 1
            names = self.fields[:n]
            s = self._prefix[last] = (names, struct.Struct("<" + "".join(self.codes[f] for f in names)))
        return s

    def pack(self, upto=None, **values):
        """Bytes of the struct (through field `upto` if given); fields not named are zero."""
        unknown = set(values) - set(self.fields)
        if unknown:
            raise TypeError(f"{self.name} has no field(s) {', '.join(sorted(unknown))}")
        names, s = self._upto(upto or self.fields[-1])
        return s.pack(*(values.get(f, b"" if self.codes[f].endswith("s") else 0) for f in names))

    def get(self, data, field):
        """One field's value from a buffer holding (at least the start of) this struct."""
        return struct.unpack_from("<" + self.codes[field], data, self.offsets[field])[0]

    def unpack(self, data):
        """Every field, as a dict (`data` at least `size` bytes)."""
        return dict(zip(self.fields, self.struct.unpack_from(data)))

    def end(self, field):
        """Offset just past `field`: how much of the struct a kernel must fill for it to be there."""
        return self.offsets[field] + struct.calcsize("<" + self.codes[field])


# --- instructions and BTF.ext records --------------------------------------------------------------
# struct bpf_insn: code, dst_reg:4 | src_reg:4 (dst in the low nibble), off, imm
BPF_INSN = KStruct("bpf_insn", ("code", "B"), ("regs", "B"), ("off", "h"), ("imm", "i"))
BPF_FUNC_INFO = KStruct("bpf_func_info", ("insn_off", "I"), ("type_id", "I"))
BPF_LINE_INFO = KStruct("bpf_line_info", ("insn_off", "I"), ("file_name_off", "I"), ("line_off", "I"),
                        ("line_col", "I"))

# --- union bpf_attr, one member per command ----------------------------------------------------------
ATTR_MAP_CREATE = KStruct(
    "bpf_attr.map_create", ("map_type", "I"), ("key_size", "I"), ("value_size", "I"), ("max_entries", "I"),
    ("map_flags", "I"), ("inner_map_fd", "I"), ("numa_node", "I"), ("map_name", "16s"))
# MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY (value is next_key there), MAP_FREEZE
ATTR_MAP_ELEM = KStruct(
    "bpf_attr.map_elem", ("map_fd", "I"), ("_pad0", "I"), ("key", "Q"), ("value", "Q"), ("flags", "Q"))
ATTR_PROG_LOAD = KStruct(
    "bpf_attr.prog_load", ("prog_type", "I"), ("insn_cnt", "I"), ("insns", "Q"), ("license", "Q"),
    ("log_level", "I"), ("log_size", "I"), ("log_buf", "Q"), ("kern_version", "I"), ("prog_flags", "I"),
    ("prog_name", "16s"), ("prog_ifindex", "I"), ("expected_attach_type", "I"), ("prog_btf_fd", "I"),
    ("func_info_rec_size", "I"), ("func_info", "Q"), ("func_info_cnt", "I"), ("line_info_rec_size", "I"),
    ("line_info", "Q"), ("line_info_cnt", "I"), ("attach_btf_id", "I"))
ATTR_BTF_LOAD = KStruct(
    "bpf_attr.btf_load", ("btf", "Q"), ("btf_log_buf", "Q"), ("btf_size", "I"), ("btf_log_size", "I"),
    ("btf_log_level", "I"))
# PROG/MAP/LINK/BTF_GET_NEXT_ID (start_id) and *_GET_FD_BY_ID (the same word is the id)
ATTR_GET_ID = KStruct("bpf_attr.get_id", ("start_id", "I"), ("next_id", "I"), ("open_flags", "I"))
ATTR_OBJ_INFO = KStruct("bpf_attr.info", ("bpf_fd", "I"), ("info_len", "I"), ("info", "Q"))
ATTR_RAW_TRACEPOINT_OPEN = KStruct("bpf_attr.raw_tracepoint", ("name", "Q"), ("prog_fd", "I"))
ATTR_LINK_CREATE = KStruct(
    "bpf_attr.link_create", ("prog_fd", "I"), ("target_fd", "I"), ("attach_type", "I"), ("flags", "I"),
    ("iter_info", "Q"), ("iter_info_len", "I"))
ATTR_ITER_CREATE = KStruct("bpf_attr.iter_create", ("link_fd", "I"), ("flags", "I"))
# union bpf_iter_link_info.task (Linux 6.1+): at most one of tid, pid, pid_fd non-zero.  Earlier kernels
# ignore it for task iterators (they have no attach_target hook), so programs must filter themselves.
ITER_LINK_INFO_TASK = KStruct("bpf_iter_link_info.task", ("tid", "I"), ("pid", "I"), ("pid_fd", "I"))

# --- what BPF_OBJ_GET_INFO_BY_FD fills ---------------------------------------------------------------
BPF_PROG_INFO = KStruct(
    "bpf_prog_info", ("type", "I"), ("id", "I"), ("tag", "8s"), ("jited_prog_len", "I"),
    ("xlated_prog_len", "I"), ("jited_prog_insns", "Q"), ("xlated_prog_insns", "Q"), ("load_time", "Q"),
    ("created_by_uid", "I"), ("nr_map_ids", "I"), ("map_ids", "Q"), ("name", "16s"), ("ifindex", "I"),
    ("gpl_compatible", "I"), ("netns_dev", "Q"), ("netns_ino", "Q"), ("nr_jited_ksyms", "I"),
    ("nr_jited_func_lens", "I"), ("jited_ksyms", "Q"), ("jited_func_lens", "Q"), ("btf_id", "I"),
    ("func_info_rec_size", "I"), ("func_info", "Q"), ("nr_func_info", "I"), ("nr_line_info", "I"),
    ("line_info", "Q"), ("jited_line_info", "Q"), ("nr_jited_line_info", "I"), ("line_info_rec_size", "I"),
    ("jited_line_info_rec_size", "I"), ("nr_prog_tags", "I"), ("prog_tags", "Q"), ("run_time_ns", "Q"),
    ("run_cnt", "Q"), ("recursion_misses", "Q"))      # recursion_misses: Linux 5.12+
BPF_MAP_INFO = KStruct(
    "bpf_map_info", ("type", "I"), ("id", "I"), ("key_size", "I"), ("value_size", "I"), ("max_entries", "I"),
    ("map_flags", "I"), ("name", "16s"), ("ifindex", "I"), ("btf_vmlinux_value_type_id", "I"),
    ("netns_dev", "Q"), ("netns_ino", "Q"), ("btf_id", "I"), ("btf_key_type_id", "I"),
    ("btf_value_type_id", "I"), ("_pad0", "I"), ("map_extra", "Q"))

# --- perf_event_open ------------------------------------------------------------------------------
# struct perf_event_attr up to wakeup_events; sent as PERF_ATTR_SIZE_VER5 (112) bytes, the rest zero.
# `flags` is the word of bitfields (disabled, inherit, ...).
PERF_EVENT_ATTR = KStruct(
    "perf_event_attr", ("type", "I"), ("size", "I"), ("config", "Q"), ("sample_period", "Q"),
    ("sample_type", "Q"), ("read_format", "Q"), ("flags", "Q"), ("wakeup_events", "I"))
