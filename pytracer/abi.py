"""Kernel ABI numbers, named once, here (the structs are in uapi.py).  Sources:
include/uapi/linux/{bpf,btf,perf_event}.h."""
import enum
import os

# --- syscall numbers (bpf and perf_event_open are not in the C library's public API) --------------------
# Little-endian machines only: every kernel struct (uapi.py) and BPF object is read and packed little-endian.
_SYSCALLS = {
    "x86_64": {"bpf": 321, "perf_event_open": 298},
    "aarch64": {"bpf": 280, "perf_event_open": 241},
    "riscv64": {"bpf": 280, "perf_event_open": 241},
    "ppc64le": {"bpf": 361, "perf_event_open": 319},
}
MACHINE = os.uname().machine
SYSCALLS = _SYSCALLS.get(MACHINE, {})


class Cmd(enum.IntEnum):
    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    OBJ_PIN = 6
    OBJ_GET = 7
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_TEST_RUN = 10
    PROG_GET_NEXT_ID = 11
    MAP_GET_NEXT_ID = 12
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16
    RAW_TRACEPOINT_OPEN = 17
    BTF_LOAD = 18
    BTF_GET_FD_BY_ID = 19
    TASK_FD_QUERY = 20
    MAP_LOOKUP_AND_DELETE_ELEM = 21
    MAP_FREEZE = 22
    BTF_GET_NEXT_ID = 23
    MAP_LOOKUP_BATCH = 24
    MAP_LOOKUP_AND_DELETE_BATCH = 25
    MAP_UPDATE_BATCH = 26
    MAP_DELETE_BATCH = 27
    LINK_CREATE = 28
    LINK_UPDATE = 29
    LINK_GET_FD_BY_ID = 30
    LINK_GET_NEXT_ID = 31
    ENABLE_STATS = 32
    ITER_CREATE = 33
    LINK_DETACH = 34


class MapType(enum.IntEnum):
    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    RINGBUF = 27


PERCPU_MAP_TYPES = {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH}


class ProgType(enum.IntEnum):
    UNSPEC = 0
    SOCKET_FILTER = 1
    KPROBE = 2
    SCHED_CLS = 3
    SCHED_ACT = 4
    TRACEPOINT = 5
    XDP = 6
    PERF_EVENT = 7
    RAW_TRACEPOINT = 17
    TRACING = 26


class AttachType(enum.IntEnum):
    NONE = 0
    TRACE_RAW_TP = 23
    TRACE_FENTRY = 24
    TRACE_ITER = 28
    PERF_EVENT = 41


# map_flags
BPF_F_NO_PREALLOC = 1 << 0
BPF_F_RDONLY_PROG = 1 << 7
BPF_F_MMAPABLE = 1 << 10

# prog_flags / misc
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_OBJ_NAME_LEN = 16

# --- BPF iterators (BPF_TRACE_ITER) ----------------------------------------------------------------
# An iterator program's attach_btf_id is the vmlinux BTF FUNC named ITER_FUNC_PREFIX + target
# (kernel/bpf/bpf_iter.c registers each target as the function bpf_iter_<target>).
ITER_FUNC_PREFIX = "bpf_iter_"
# (A read() of an iterator fd that visited 1,000,000 objects without output returns EAGAIN,
# kernel/bpf/bpf_iter.c MAX_ITER_OBJECTS; reading again continues where it stopped.)

# --- instructions ---------------------------------------------------------------------------------
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ST = 0x02
BPF_STX = 0x03
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_ALU64 = 0x07
BPF_IMM = 0x00
BPF_DW = 0x18
BPF_MEM = 0x60
BPF_CALL = 0x80
BPF_EXIT = 0x90
BPF_MOV = 0xB0
BPF_K = 0x00
INSN_LD_IMM64 = BPF_LD | BPF_DW | BPF_IMM        # 0x18, two instruction slots
INSN_CALL = BPF_JMP | BPF_CALL                    # 0x85
BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2
BPF_PSEUDO_BTF_ID = 3
BPF_PSEUDO_CALL = 1
BPF_PSEUDO_FUNC = 4
# libbpf's marker for an instruction whose CO-RE relocation failed: the verifier reports a call to
# this "helper" only if the poisoned instruction is reachable.
CORE_POISON_HELPER = 0xBAD2310


# --- BTF ------------------------------------------------------------------------------------------
BTF_MAGIC = 0xEB9F


class BTFKind(enum.IntEnum):
    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


class CoreReloKind(enum.IntEnum):
    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12


# --- perf_event_open ------------------------------------------------------------------------------
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_ATTR_SIZE_VER5 = 112
# _IO('$', n) / _IOW('$', n, u32): '$' == 0x24
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408

# --- misc kernel facts ------------------------------------------------------------------------------
# the kernel-internal 'operation not supported' errno that leaks to user space from bpf()
ENOTSUPP = 524
AF_INET = 2
AF_INET6 = 10
IPPROTO_TCP = 6
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
RLIMIT_MEMLOCK = 8
# helper ids (include/uapi/linux/bpf.h, enum bpf_func_id)
BPF_FUNC_KTIME_GET_COARSE_NS = 160

