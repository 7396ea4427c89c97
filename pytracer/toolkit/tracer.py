"""RingBufferTracer: the common life of a tool's tracer. Load the tool's object (filters and settings into
.rodata), attach its programs, decode its records from the `events` ring buffer with the layout the
object's BTF gives, account losses, close everything. A tool defines `RECORD` (its struct's name) and
`convert(records, out)`, which turns decoded records (tuples in the struct's field order, see
`self.layout.names`) into the lines its writers print; `RECORD_FIELDS`, the names convert() unpacks in order,
is then checked against the object's record at start."""
from __future__ import annotations

from ..errors import PytracerError
from .losses import Losses

READ_BATCH = 4096


class RingBufferTracer:
    RECORD = ""                 # the record's struct name in the tool's header
    RECORD_FIELDS = ()          # if set: the record's field names, in order, that convert() unpacks
    ENUMS = ()                  # enums whose constants the tool wants (self.k: name -> value)

    def __init__(self, object_path: str, rodata: dict | None = None,
                 ringbuf_size: int = 4 << 20, use_cache: bool = True, programs=None):
        self.object_path = object_path
        self.rodata = dict(rodata or {})
        self.ringbuf_size = ringbuf_size
        self.use_cache = use_cache
        self.programs = programs
        self.obj = None
        self.fallbacks: list[str] = []      # notes for the user about kernel features worked around
        self.last_losses: dict[str, int] = {}

    def start(self) -> RingBufferTracer:
        from ..loader import BPFObject

        if self.obj is not None:
            return self
        self.obj = BPFObject(self.object_path, rodata=self.rodata, map_max_entries={"events": self.ringbuf_size},
                             programs=self.programs, use_cache=self.use_cache)
        try:
            self.obj.attach()
            self.rb = self.obj.ring_buffer("events")
            self.layout = self.obj.record(self.RECORD)
            if self.RECORD_FIELDS and tuple(self.layout.names) != tuple(self.RECORD_FIELDS):
                raise PytracerError(f"{self.object_path}: struct {self.RECORD} has the fields "
                                    f"{', '.join(self.layout.names)}; this pytracer decodes "
                                    f"{', '.join(self.RECORD_FIELDS)}")
            self.k = self.obj.enums(*self.ENUMS) if self.ENUMS else {}
            self._losses = Losses(self.obj, self.rb, self.loss_counters())
        except BaseException:
            self.close()
            raise
        return self

    def loss_counters(self):
        """Extra loss reasons of the tool: {reason: callable returning a running total}."""
        return {}

    def convert(self, records, out):
        out.extend(records)

    def poll_lines(self, timeout: float | None = None) -> list:
        """Wait up to `timeout` seconds, then return the lines of every record read (maybe none)."""
        out: list = []
        if self.rb.poll(timeout):
            self.convert(self.rb.read(self.layout.struct, READ_BATCH), out)
        return out

    def drain_lines(self) -> list:
        """The lines of what is in the ring buffer now (bounded by its size)."""
        out: list = []
        left = self.ringbuf_size // self.layout.struct.size + 1
        while left > 0:
            records = self.rb.read(self.layout.struct, min(READ_BATCH, left))
            if not records:
                break
            left -= len(records)
            self.convert(records, out)
        return out

    def new_losses(self) -> int:
        if self.obj is None:
            return 0
        self.last_losses = self._losses.new()
        return sum(self.last_losses.values())

    def close(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
