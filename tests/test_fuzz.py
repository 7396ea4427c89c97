"""Fuzzing (issue #5, part 1): a short, bounded run of every fuzz target on each test run.

The targets and the mutation engine live in tests/fuzz/harness.py (shared with the long `make fuzz` run).
Contract for every input: success or a PytracerError subclass; no other exception, no hang (per-example
deadline), bounded memory. Hypothesis shrinks a failure to the shortest mutation program; the failing
program is printed, and `python tests/fuzz/harness.py --target T --repro FILE` replays saved inputs.

Scale with PYTRACER_FUZZ_EXAMPLES (multiplier, default 1): `make fuzz` runs this file with a large one
when atheris is not installed.
"""
import json
import os
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from fuzz import harness

ev = harness.constants()    # tcpsnoop's EV_*, ATTR_*, TH_* from its object's BTF

SCALE = float(os.environ.get("PYTRACER_FUZZ_EXAMPLES", "1"))


def fuzz_settings(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), print_blob=True)


U32 = st.integers(0, 0xFFFFFFFF)
OP = st.tuples(st.sampled_from(harness.OPS), U32, U32, U32)
OPS = st.lists(OP, min_size=1, max_size=4)
SEED = st.integers(0, 255)


def R(v):
    """Op argument `c` that writes the raw value v (harness.interesting: multiples of 3 are raw)."""
    return 3 * v


# op argument `c` for the table values of harness.interesting
U32MAX, U64MAX, S32MAX, LEN = 3 * 17 + 1, 3 * 18 + 1, 3 * 15 + 1, 3 * 20 + 1


def need_objects():
    if not harness.object_seeds():
        pytest.fail("no committed BPF objects in pytracer/bpf/ to fuzz")


def need_vmlinux():
    if harness.vmlinux_bytes() is None:
        pytest.skip("no /sys/kernel/btf/vmlinux on this machine")


def check(result):
    """Targets return "ok" or the PytracerError class name; Finding (an AssertionError) fails the test."""
    assert result == "ok" or result.endswith("Error"), result


# --- seeds parse as they are ------------------------------------------------------------------------

def test_seeds_parse_unmutated():
    """The fuzz seeds themselves must be accepted, or every mutation only tests the first check."""
    need_objects()
    from pytracer.btf import BTF, BTFExt
    from pytracer.elf import read_object

    for name, data in harness.object_seeds().items():
        read_object(data, name)
        btf = BTF(harness.section_seeds(".BTF")[name])
        if name in harness.section_seeds(".BTF.ext"):
            BTFExt(harness.section_seeds(".BTF.ext")[name], btf)
    if harness.vmlinux_bytes() is not None:
        BTF(harness.vmlinux_slice(100))
        assert len(harness.vmlinux_btf()) > 1000


# --- ELF reader ---------------------------------------------------------------------------------------

# Hand-picked programs for the corruptions that matter most (they always run, before the random ones).
@fuzz_settings(300)
@given(seed=SEED, ops=OPS)
@example(seed=0, ops=[("ehdr", 0, 11, R(0))])                  # e_shnum = 0
@example(seed=0, ops=[("ehdr", 0, 12, R(0xFF00))])             # e_shstrndx out of range
@example(seed=0, ops=[("ehdr", 0, 5, U64MAX)])                 # e_shoff far past the end
@example(seed=0, ops=[("ehdr", 0, 10, R(1))])                  # e_shentsize = 1
@example(seed=0, ops=[("shdr", 1, 4, LEN)])                    # a section offset at the very end
@example(seed=0, ops=[("shdr", 2, 5, U64MAX)])                 # a section size of 2**64-1
@example(seed=0, ops=[("shdr", 7, 9, R(0))])                   # sh_entsize = 0 (division by zero)
@example(seed=0, ops=[("shdr", 3, 6, R(60000))])               # sh_link out of range
@example(seed=0, ops=[("shdr", 4, 7, R(60000))])               # sh_info (reloc target) out of range
@example(seed=0, ops=[("sym", 5, 3, R(0xFFF0))])               # symbol in a reserved section index
@example(seed=0, ops=[("sym", 9, 4, S32MAX)])                  # symbol value far outside its section
@example(seed=0, ops=[("rel", 3, 2, R(0xFFFFFF))])             # relocation against a missing symbol
@example(seed=0, ops=[("rel", 300, 0, R(0x7FFFFFF))])          # relocation offset outside the section
@example(seed=0, ops=[("trunc", 63, 0, 0)])
@example(seed=0, ops=[("btfhdr", 0, 5, U32MAX)])               # BTF type_len huge, inside the ELF
@example(seed=0, ops=[("exthdr", 0, 9, U32MAX)])               # BTF.ext core_relo_len huge
def test_fuzz_read_object(seed, ops):
    """read_object on mutated committed objects: bit flips, truncations, header/section/symbol/relocation
    field corruption, splices."""
    need_objects()
    check(harness.target_elf(seed, ops))


def _with_section_size(name, section, size):
    data = bytearray(harness.object_seeds()[name])
    secs = harness.elf_sections(bytes(data))
    e_shoff, = struct.unpack_from("<Q", data, 40)
    struct.pack_into("<Q", data, e_shoff + 64 * secs[section]["index"] + 32, size)     # sh_size
    return bytes(data)


def test_huge_nobits_section_is_refused():
    """Found by `make fuzz` (atheris, elf target): a .bss (SHT_NOBITS) section header may claim any size
    without the file growing. read_object allocates that much for the map's initial value (and the cache
    then stores it hex-encoded): a 9.5 KB object claiming a 256 MB .bss made loader.prepare() peak at
    1.5 GB RSS and write a 512 MB cache entry. It must be refused, within a small memory budget."""
    need_objects()
    from pytracer.elf import read_object

    cases = [(name, sec) for name, data in harness.object_seeds().items()
             for sec, info in harness.elf_sections(data).items() if info["type"] == 8]       # SHT_NOBITS
    if not cases:
        pytest.skip("no committed object has a NOBITS section")
    for name, sec in cases:
        for size in (1 << 30, (1 << 64) - 1):
            outcome = harness.run_target(read_object, _with_section_size(name, sec, size), name,
                                         memory=256 << 20)
            assert outcome != "ok", f"{name}: {sec} of {size} bytes accepted"


@fuzz_settings(150)
@given(seed=SEED, ops=OPS)
@example(seed=0, ops=[("extword", 4000, 0, R(3))])             # a CO-RE record's kind/type id
@example(seed=0, ops=[("btfstr", 100, 1, 10)])                 # a ':' inside a name or access string
def test_fuzz_object_pipeline(seed, ops):
    """ELF -> spec -> CO-RE against the running kernel's BTF -> cache JSON round trip, as loader.prepare
    does, on mutated objects (mutated .BTF.ext relocation records reach the relocator this way)."""
    need_objects()
    check(harness.target_pipeline(seed, ops))


# --- BTF ---------------------------------------------------------------------------------------------

@fuzz_settings(1000)
@given(seed=SEED, ops=OPS)
@example(seed=0, ops=[("btftype", 5, 1, 1 + 4 * 31)])          # unknown kind
@example(seed=0, ops=[("btftype", 5, 2, R(6))])                # a size/type reference to itself
@example(seed=0, ops=[("btftype", 9, 0, U32MAX)])              # name offset past the strings
@example(seed=0, ops=[("btfhdr", 0, 3, U32MAX)])               # hdr_len huge
@example(seed=0, ops=[("btfhdr", 0, 6, U32MAX)])               # str_off overflow
def test_fuzz_btf_object_sections(seed, ops):
    """BTF(...) plus every query (type, describe, resolve_size, skip_*, find_by_*, datasec fix-ups) on
    mutated object .BTF sections."""
    need_objects()
    check(harness.target_btf_object(seed, ops))


@fuzz_settings(60)
@given(seed=st.integers(0, 1 << 16), ops=st.lists(OP, max_size=3))
@example(seed=15, ops=[("btftype", 1000, 1, 1 + 4 * 3)])       # whole vmlinux, one kind changed
@example(seed=15, ops=[("trunc", 3_000_000, 0, 0)])            # whole vmlinux cut in a type
@example(seed=2999, ops=[])                                    # a 3000-type slice, unmutated
def test_fuzz_btf_vmlinux(seed, ops):
    """Slices of /sys/kernel/btf/vmlinux (first K types, or K types from the middle, with the full string
    section: references dangle) and mutations of them; every 16th example mutates the whole thing."""
    need_vmlinux()
    check(harness.target_btf_vmlinux(seed, ops))


@fuzz_settings(800)
@given(seed=SEED, ops=OPS)
@example(seed=0, ops=[("exthdr", 0, 3, R(8))])                 # hdr_len below the minimum
@example(seed=0, ops=[("exthdr", 0, 9, U32MAX)])               # core_relo_len = 0xffffffff
@example(seed=0, ops=[("extword", 4, 0, R(0xFFFFF))])          # a record count far too large
@example(seed=0, ops=[("exthdr", 0, 4, R(0)), ("extword", 0, 0, R(4))])  # record size 4
@example(seed=0, ops=[("btfstr", 7, 0, 0)])                    # a NUL inside a section name
def test_fuzz_btf_ext(seed, ops):
    """BTFExt(...) on mutated .BTF.ext sections (sometimes with a mutated .BTF under them)."""
    need_objects()
    if not harness.section_seeds(".BTF.ext"):
        pytest.fail("no committed object has a .BTF.ext section")
    check(harness.target_btf_ext(seed, ops))


# --- CO-RE relocator ---------------------------------------------------------------------------------

RELO = st.tuples(st.integers(0, 1 << 20), st.integers(0, 15) | st.integers(0, 255), st.integers(0, 40),
                 st.integers(0, 255), st.integers(-(1 << 63), (1 << 63) - 1) | st.integers(-4, 4096),
                 st.lists(st.integers(0, 255), max_size=8))


@fuzz_settings(400)
@given(which=st.integers(0, 15), params=st.lists(RELO, min_size=1, max_size=4))
@example(which=0, params=[(0, 12, 0, 0, 0, [0])])                  # TYPE_MATCHES
@example(which=0, params=[(1, 0, 4, 0, 0, [0, 200, 200, 200])])    # member index out of range
@example(which=0, params=[(1, 0, 11, 0, 0, [0, 0])])               # ld_imm64 at the end of a program
def test_fuzz_core_relocations(which, params):
    """Random CO-RE relocation records (types of the right kind, access paths walked through real members
    with out-of-range and malformed steps, every relocation kind, assorted instruction shapes) applied to
    object or vmlinux BTF against vmlinux BTF or slices of it."""
    need_vmlinux()
    check(harness.target_core(which, params))


# --- records -> lines -> output ------------------------------------------------------------------------

def field_strategy(field):
    """Values for one record field, biased towards what matters to convert()."""
    name, size = field.name, field.size
    if name == "family":
        return st.sampled_from([2, 10, 0, 1, 255]) | st.integers(0, 255)
    if name == "type":
        return st.integers(0, 8) | st.integers(0, 255)
    if name == "attr":
        return st.sampled_from([0, 1, 2, 4, 5, 7]) | st.integers(0, 255)
    if name == "dir":
        return st.sampled_from([0, 1]) | st.integers(0, 255)
    if name == "sk":
        return st.sampled_from([0, 1, 2, 3, 0xFFFF888000000000])
    if name == "comm":
        hostile = st.sampled_from([b"\x1b[31mred\x1b[0m", b"\xff\xfe", b"a\nb\rc\td", b"\x7f\x9b\x00x",
                                   b"\xe2\x80\xae", b"\xc3", b"\\x41", b"\xf0\x9f\x98\x80", b"tsrv"])
        return (hostile | st.binary(max_size=16)).map(lambda b: b[:16].ljust(16, b"\0"))
    if name in ("laddr", "raddr"):
        mapped = st.binary(min_size=4, max_size=4).map(lambda b: bytes(10) + b"\xff\xff" + b)
        return st.binary(min_size=16, max_size=16) | mapped
    if size in (1, 2, 4, 8) and field.name:
        top = (1 << (8 * size)) - 1
        return st.sampled_from([0, 1, top]) | st.integers(0, top)
    return st.binary(min_size=size, max_size=size)


def record_strategy():
    """{field name: value} for every field of the record layout (whatever its current order)."""
    lay = harness.record_layout()
    return st.fixed_dictionaries({f.name: field_strategy(f) for f in lay.fields})


@fuzz_settings(300)
@given(records=st.lists(record_strategy(), max_size=12), by_owner=st.booleans())
def test_fuzz_convert_records(records, by_owner):
    """TcpSnoop.convert on random records (every field, biased to the values that steer it), then the API's
    Event view and both output formats: lines or nothing, never an exception; the README's JSON schema;
    classic output free of control bytes; JSON output saying what the API says."""
    check(harness.target_records(records, by_owner))


@fuzz_settings(800)
@given(raw=st.binary(max_size=136 * 24), by_owner=st.booleans())
def test_fuzz_convert_random_bytes(raw, by_owner):
    """Random bytes decoded as the ring buffer reader decodes records, converted."""
    check(harness.target_records_raw(raw, by_owner))


def test_every_comm_byte_is_escaped():
    """Each byte value in a task name (alone, and after a printable prefix) comes out printable, and
    distinct names stay distinct."""
    from pytracer.toolkit.owners import escape_comm

    seen = {}
    for b in range(1, 256):
        for raw in (bytes([b]), b"ab" + bytes([b]) + b"cd", bytes([b]) * 15):
            text = escape_comm(raw.ljust(16, b"\0"))
            assert text.isprintable(), (raw, text)
            assert harness._control_free(text), (raw, text)
            json.loads(json.dumps(text))
            seen.setdefault(text, set()).add(raw)
    clashes = {t: r for t, r in seen.items() if len(r) > 1}
    assert not clashes, clashes


def test_comm_escape_is_unambiguous():
    """A task may call itself '\\x1b' (four printable characters); it must not print the same as a name
    holding the ESC byte, or a hostile process can pass for another one in the output."""
    from pytracer.toolkit.owners import escape_comm

    literal = escape_comm(b"\\x1b[31m".ljust(16, b"\0"))
    real = escape_comm(b"\x1b[31m".ljust(16, b"\0"))
    assert literal != real, f"both print as {real!r}"


# --- ring buffer reader on simulated memory ------------------------------------------------------------

HDR = st.sampled_from([0, 1 << 31, 1 << 30]).flatmap(
    lambda flags: st.one_of(st.just(flags | 128), st.just(flags | 136), st.integers(0, (1 << 30) - 1)
                            .map(lambda n: flags | n)))


@fuzz_settings(300)
@given(size_exp=st.integers(0, 2),
       records=st.lists(st.tuples(HDR, st.binary(max_size=160)), max_size=40),
       gap=st.integers(0, 64))
def test_fuzz_ringbuf_reader(size_exp, records, gap):
    """RingBuffer.read/read_raw over simulated mapped memory with arbitrary headers (busy, discarded,
    odd lengths, lengths past the buffer, wrap-around): no exception, no endless loop."""
    check(harness.target_ringbuf(size_exp, records, gap))


# --- memory bounds -----------------------------------------------------------------------------------

def _records(values_list):
    return harness.decode_records(b"".join(harness.pack_record(v) for v in values_list))


def _rec(**kw):
    base = {"family": 2, "laddr": b"\x7f\0\0\x01", "raddr": b"\x7f\0\0\x01", "lport": 80, "rport": 4000,
            "size": 100, "comm": b"x"}
    base.update(kw)
    return base


RENAMES = r"""
import os, sys, time
sys.path.insert(0, %(root)r)
sys.path.insert(0, %(tests)r)
from fuzz import harness

ev = harness.constants()    # tcpsnoop's EV_*, ATTR_*, TH_* from its object's BTF
from pytracer.tools.tcpsnoop.cli import JsonWriter

def rss():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])

snoop = harness.make_snoop()
writer = JsonWriter(open(os.devnull, "w"))
sizes = []
n = 0
for phase in range(4):
    for k in range(12):
        recs = []
        for i in range(2000):
            n += 1
            recs.append(harness.pack_record({"sk": n, "type": ev.EV_SEND, "family": 2, "laddr": b"\x7f\0\0\x01",
                                             "raddr": b"\x7f\0\0\x01", "lport": 1, "rport": 2, "size": 60,
                                             "comm": b"n%%013d" %% n}))
        out = []
        snoop.convert(harness.decode_records(b"".join(recs)), out)
        writer.write(out)
    sizes.append(rss())
print(" ".join(map(str, sizes)))
"""


def test_memory_is_bounded_with_ever_new_task_names():
    """A traced process can rename itself (prctl) as often as it likes, and every name makes a new
    connection identity: 96k distinct names through convert() and the JSON writer, more than ten times what
    any of their caches may hold (4096 entries). Whatever each caches must stop growing: the second 48k
    names may not add more than 8 MB of RSS to the first 48k's (uncapped caches add 28 MB here)."""
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-c", RENAMES % {"root": os.path.dirname(here), "tests": here}],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rss = [int(x) for x in r.stdout.split()]           # kB after 24k, 48k, 72k, 96k names
    assert rss[3] - rss[1] < 8 * 1024, f"RSS kept growing with new task names: {rss} kB"


def test_pending_buffer_memory_is_bounded():
    """Segments of not-yet-accepted connections are held in user space (PENDING_MAX_SOCKETS sockets x
    PENDING_MAX_PER_SOCKET lines). Measure what a held line costs and extrapolate to the cap: a local user
    who opens connections to a listener that never accepts must not be able to make pytracer hold more
    than 256 MB."""
    from pytracer import tcpsnoop

    snoop = harness.make_snoop()
    socks, per = 32, tcpsnoop.PENDING_MAX_PER_SOCKET
    batches = [_records([_rec(sk=sk, ts_ns=10**9 + i, type=ev.EV_RECV, attr=ev.ATTR_OWNER_UNKNOWN, payload=i,
                              size=100 + i, rport=1024 + sk) for i in range(per)]) for sk in range(1, socks + 1)]
    out = []
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for b in batches:
            snoop.convert(b, out)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert out == [] and snoop.lost_pending == 0
    per_line = used / (socks * per)
    worst = per_line * tcpsnoop.PENDING_MAX_SOCKETS * tcpsnoop.PENDING_MAX_PER_SOCKET
    assert worst < 256 << 20, (f"a held line costs {per_line:.0f} bytes; at the cap ({tcpsnoop.PENDING_MAX_SOCKETS}"
                               f" sockets x {per} lines) the pre-accept buffer holds {worst / 2**20:.0f} MB")


def test_pending_buffer_books_balance():
    """Every held line is either shown (when the accept names the owner) or counted as lost: feed more
    sockets and lines than the caps allow, accept them all, and count."""
    from pytracer import tcpsnoop
    from pytracer.tcpsnoop import Event

    snoop = harness.make_snoop()
    socks = tcpsnoop.PENDING_MAX_SOCKETS + 50
    per = 3
    fed = 0
    out = []
    for sk in range(1, socks + 1):
        snoop.convert(_records([_rec(sk=sk, type=ev.EV_RECV, attr=ev.ATTR_OWNER_UNKNOWN)] * per), out)
        fed += per
    extra = tcpsnoop.PENDING_MAX_PER_SOCKET + 10
    snoop.convert(_records([_rec(sk=socks, type=ev.EV_RECV, attr=ev.ATTR_OWNER_UNKNOWN)] * extra), out)
    fed += extra
    assert out == []
    for sk in range(1, socks + 1):
        snoop.convert(_records([_rec(sk=sk, type=ev.EV_ACCEPT, pid=42, comm=b"owner")]), out)
    events = [Event(line) for line in out]
    shown = sum(1 for e in events if e.event == "recv")
    assert shown + snoop.lost_pending == fed, (shown, snoop.lost_pending, fed)
    assert {(e.pid, e.comm) for e in events} == {(42, "owner")}
