"""The engine on the real kernel: load the committed enginetest object, attach its tracepoint, tp_btf and raw
tracepoint programs, trigger them with real system calls, and read back what they recorded."""
import os
import struct
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, assert_nothing_left, obj_path, run_env
from pytracer import errors, inventory, records as events
from pytracer.loader import BPFObject

ENGINE = obj_path("enginetest")


def getppid_n(n):
    for _ in range(n):
        os.getppid()


def test_load_attach_read(no_leaks):
    lay = events.object_layout(ENGINE, "probe_event")
    with BPFObject(ENGINE, rodata={"target_tgid": os.getpid()}, use_cache=False) as obj:
        obj.attach()
        rb = obj.ring_buffer("events")
        getppid_n(1000)
        recs = rb.read(lay.struct)
        assert len(recs) == 1000
        seqs = [r[lay.names.index("seq")] for r in recs]
        assert seqs == sorted(seqs) and len(set(seqs)) == 1000
        assert {r[lay.names.index("tgid")] for r in recs} == {os.getpid()}
        assert obj.maps["lost"].sum_percpu_u64() == 0
        # the tp_btf and raw_tracepoint programs counted exactly our calls, in per-CPU slots of ARRAY maps,
        # and the classic tracepoint program in a HASH keyed by CPU
        for name in ("btf_counts", "raw_counts", "counts"):
            m = obj.maps[name]
            total = sum(struct.unpack("<Q", m.lookup(k))[0] for k in m.keys())
            assert total == 1000, (name, total)


def test_cached_spec_loads_the_same(no_leaks, tmp_path, monkeypatch):
    """A relocated spec written to the cache and read back loads and behaves the same."""
    monkeypatch.setenv("PYTRACER_CACHE_DIR", str(tmp_path / "cache"))
    os.chmod(tmp_path, 0o700)
    lay = events.object_layout(ENGINE, "probe_event")
    for attempt in range(2):
        with BPFObject(ENGINE, rodata={"target_tgid": os.getpid()}) as obj:
            obj.attach()
            getppid_n(10)
            assert len(obj.ring_buffer("events").read(lay.struct)) == 10
        assert len(os.listdir(tmp_path / "cache")) == 1


def test_cache_refuses_group_writable_dir(tmp_path, monkeypatch, caplog, kernel):
    """Refused, with a warning: to the `pytracer` logger (library code never prints; the CLI shows it)."""
    from pytracer import cache

    d = tmp_path / "c"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(d, 0o777)
    monkeypatch.setenv("PYTRACER_CACHE_DIR", str(d))
    monkeypatch.setattr(cache, "_warned", False)
    assert cache.put("k", {"x": 1}) is False
    assert os.listdir(d) == []
    assert "writable by group or others" in caplog.text


def test_ring_buffer_overflow_is_counted(no_leaks):
    """With a one-page ring buffer most records cannot be reserved: delivered + lost == produced."""
    lay = events.object_layout(ENGINE, "probe_event")
    with BPFObject(ENGINE, rodata={"target_tgid": os.getpid()}, map_max_entries={"events": 4096},
                   use_cache=False) as obj:
        obj.attach()
        rb = obj.ring_buffer("events")
        getppid_n(5000)
        delivered = len(rb.read(lay.struct))
        lost = obj.maps["lost"].sum_percpu_u64()
        assert lost > 0
        assert delivered + lost == 5000


# getppid() n times at about 50 k/s: a pace the reader keeps up with, so the ring never fills
PRODUCER = textwrap.dedent("""
    import os, sys, time
    sys.stdin.readline()
    for i in range({n}):
        os.getppid()
        if i % 500 == 499:
            time.sleep(0.01)
""")


def test_reading_while_another_process_produces(no_leaks):
    """Records written by another process while we read, 6 MB through a 1 MiB ring (so the positions wrap
    many times): every sequence number arrives exactly once, in order, none lost, none malformed."""
    n = 150_000
    lay = events.object_layout(ENGINE, "probe_event")
    seq_at = lay.names.index("seq")
    with subprocess.Popen([sys.executable, "-c", PRODUCER.format(n=n)], stdin=subprocess.PIPE, text=True) as child:
        try:
            with BPFObject(ENGINE, rodata={"target_tgid": child.pid}, map_max_entries={"events": 1 << 20},
                           programs=["getppid_probe"], use_cache=False) as obj:
                obj.attach()
                rb = obj.ring_buffer("events")
                child.stdin.write("go\n")
                child.stdin.flush()
                seqs = []
                while child.poll() is None:
                    if rb.poll(0.1):
                        seqs.extend(r[seq_at] for r in rb.read(lay.struct, 4096))
                seqs.extend(r[seq_at] for r in rb.read(lay.struct))
                assert (rb.malformed, obj.maps["lost"].sum_percpu_u64()) == (0, 0)
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == 0
    assert len(seqs) == n and seqs == list(range(n))


def test_verifier_rejection_shows_log_and_source(kernel):
    with pytest.raises(errors.VerifierError) as ei:
        BPFObject(obj_path("invalid"), use_cache=False)
    msg = str(ei.value)
    assert "verifier rejected program" in msg
    assert "invalid.bpf.c" in msg          # source location from BTF line info
    assert "verifier log:" in msg and "R" in ei.value.log


def _mutated(tmp_path, old, new):
    data = open(ENGINE, "rb").read()
    assert old in data and len(old) == len(new)
    p = tmp_path / "mutated.bpf.o"
    p.write_bytes(data.replace(old, new))
    return str(p)


def test_unknown_section_is_a_clear_error(tmp_path, kernel):
    p = _mutated(tmp_path, b"tracepoint/syscalls/sys_enter_getppid", b"kprobe/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
    with pytest.raises(errors.ObjectFormatError, match="unknown program section 'kprobe/"):
        BPFObject(p, use_cache=False)


def test_missing_tracepoint_is_a_clear_error(tmp_path, no_leaks):
    p = _mutated(tmp_path, b"tracepoint/syscalls/sys_enter_getppid", b"tracepoint/syscalls/sys_enter_nothere")
    with BPFObject(p, use_cache=False) as obj:
        with pytest.raises(errors.AttachError, match="tracepoint syscalls:sys_enter_nothere does not exist"):
            obj.attach()


@pytest.mark.parametrize("cut", [0, 10, 64, 1000, -200])
def test_truncated_object(tmp_path, cut):
    data = open(ENGINE, "rb").read()
    p = tmp_path / "t.bpf.o"
    p.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.raises(errors.ObjectFormatError):
        BPFObject(str(p), use_cache=False)


def test_garbage_object(tmp_path):
    p = tmp_path / "g.bpf.o"
    p.write_bytes(os.urandom(4096))
    with pytest.raises(errors.ObjectFormatError, match="not an ELF file"):
        BPFObject(str(p), use_cache=False)


def test_corrupt_btf_section(tmp_path):
    data = bytearray(open(ENGINE, "rb").read())
    from elftools.elf.elffile import ELFFile
    import io

    sec = ELFFile(io.BytesIO(bytes(data))).get_section_by_name(".BTF")
    off = sec["sh_offset"]
    data[off:off + 2] = b"\x00\x00"          # bad magic
    p = tmp_path / "b.bpf.o"
    p.write_bytes(bytes(data))
    with pytest.raises(errors.ObjectFormatError):
        BPFObject(str(p), use_cache=False)


CHILD = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {root!r})
    from pytracer.loader import BPFObject
    how = sys.argv[1]
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with SIGINT ignored (`cmd &`)
    with BPFObject({obj!r}, rodata={{"target_tgid": os.getpid()}}, use_cache=False) as obj:
        obj.attach()
        rb = obj.ring_buffer("events")
        os.getppid()
        print("ATTACHED", flush=True)
        if how == "exception":
            raise RuntimeError("boom")
        if how in ("sigint", "sigterm", "sigkill"):
            time.sleep(60)
""")


@pytest.mark.parametrize("how", ["return", "exception", "sigint", "sigterm", "sigkill"])
def test_nothing_left_in_kernel(how, kernel, tmp_path):
    before = inventory.snapshot()
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=ROOT, obj=ENGINE))
    p = subprocess.Popen([sys.executable, str(script), how], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=run_env())
    assert p.stdout.readline().strip() == "ATTACHED"
    during = inventory.snapshot()
    assert during["prog"] - before["prog"], "the child loaded no program?"
    sig = {"sigint": 2, "sigterm": 15, "sigkill": 9}.get(how)
    if sig:
        p.send_signal(sig)
    p.wait(timeout=20)
    assert_nothing_left(before, how)


# Creates a map in a process that is not ours: a grandchild reparented away from the test, as another BPF
# user on the machine would be. It prints its pid and holds the map until killed.
FOREIGN_HOLDER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    if os.fork():
        os._exit(0)
    os.setsid()
    from pytracer import abi, maps
    from pytracer.spec import MapSpec
    m = maps.Map.create(MapSpec(name="foreign", map_type=int(abi.MapType.ARRAY), key_size=4, value_size=8,
                                max_entries=1))
    print(os.getpid(), flush=True)
    time.sleep(60)
""")


def test_leak_check_tells_ours_from_other_bpf_users(kernel):
    """The leak check every kernel test relies on ignores what another process holds while it runs, and
    still catches what this process leaves."""
    from pytracer import abi, maps
    from pytracer.spec import MapSpec

    before = inventory.snapshot()
    with subprocess.Popen([sys.executable, "-c", FOREIGN_HOLDER.format(root=ROOT)], stdout=subprocess.PIPE,
                          text=True, env=run_env()) as p:
        holder = int(p.stdout.readline())      # the grandchild keeps the pipe open: read its one line
    try:
        assert inventory.snapshot()["map"] - before["map"], "the foreign holder created no map?"
        assert_nothing_left(before, "another process's map", timeout=0.5)
        ours = maps.Map.create(MapSpec(name="ours", map_type=int(abi.MapType.ARRAY), key_size=4,
                                       value_size=8, max_entries=1))
        try:
            with pytest.raises(AssertionError, match="left in the kernel"):
                assert_nothing_left(before, "our own map", timeout=0.5)
        finally:
            ours.close()
    finally:
        os.kill(holder, 9)
    assert_nothing_left(before, "the foreign holder's exit")


def test_record_layout_from_btf():
    """The record decoders are built from the C structs in the objects' BTF: every named member, at its
    offset, with its size; members named _... and holes are padding."""
    from pytracer.btf import BTF
    from pytracer.elf import read_object

    for objname, sname in (("tcpsnoop", "tcpsnoop_event"), ("enginetest", "probe_event")):
        btf = BTF(read_object(obj_path(objname)).btf)
        t = btf.type(btf.find_by_name(sname)[0])
        c_fields = [(m.name, m.bit_offset // 8, btf.resolve_size(m.type)) for m in t.members
                    if not m.name.startswith("_")]
        lay = events.object_layout(obj_path(objname), sname)
        assert [(f.name, f.offset, f.size) for f in lay.fields] == c_fields
        assert lay.struct.size == t.size
    assert events.object_layout(ENGINE, "probe_event").struct.format == "<QQLLQ"


def test_enum_values_from_btf():
    from pytracer import tcpsnoop

    _lay, k = tcpsnoop.object_types()
    assert (k.EV_CONNECT, k.EV_ACCEPT, k.EV_SEND, k.EV_RECV, k.EV_RESET, k.EV_CLOSE, k.EV_RESET_CLOSED_PORT,
            k.EV_HANDSHAKE, k.EV_OWNER) == tuple(range(1, 10))
    assert (k.ATTR_OWNER_UNKNOWN, k.ATTR_RETRANS, k.ATTR_DISCARD, k.DIR_SENT, k.DIR_RECEIVED) == (1, 2, 4, 0, 1)
    assert (k.TH_FIN, k.TH_SYN, k.TH_RST, k.TH_PSH, k.TH_ACK) == (1, 2, 4, 8, 16)


def test_struct_decoder_equals_construct():
    """The derived struct decoder gives the same values as construct's own parser."""
    from pytracer.elf import read_object

    con = events.construct_from_btf(read_object(obj_path("tcpsnoop")).btf, "tcpsnoop_event")
    lay = events.layout(con)
    raw = bytes(range(256))[:lay.struct.size]
    parsed = con.parse(raw)
    for name, value in zip(lay.names, lay.struct.unpack(raw)):
        assert parsed[name] == value, name


def test_layout_cache_is_keyed_by_the_object(tmp_path, monkeypatch):
    """Layouts are cached per object (its hash), not per source file: two objects, two entries."""
    from pytracer import cache

    monkeypatch.setenv("PYTRACER_CACHE_DIR", str(tmp_path / "c"))
    os.chmod(tmp_path, 0o755)
    monkeypatch.setattr(events, "_memo", {})
    a = events.object_layout(ENGINE, "probe_event")
    monkeypatch.setattr(events, "_memo", {})
    b = events.object_layout(ENGINE, "probe_event")               # from disk this time
    assert (b.struct.format, b.names, b.fields) == (a.struct.format, a.names, a.fields)
    events.object_layout(obj_path("tcpsnoop"), "tcpsnoop_event")
    _btf, key = events.object_btf(ENGINE)
    assert cache.get(cache.derived_key(key, "record:probe_event"))["format"] == "<QQLLQ"
    assert len(os.listdir(tmp_path / "c")) == 2
