"""BPF ring buffer reader (kernel Documentation/bpf/ringbuf.rst).

Layout: page 0 (read-write) holds consumer_pos; from page 1 (read-only) come producer_pos's page and then
the data area. The kernel offers the data area twice in a row, so that a record wrapping around the end is
contiguous; we map it once (a second mapping would count its pages twice in our resident memory) and join
the two parts of the rare wrapping record ourselves.
Every record starts with an 8-byte header (u32 len with BUSY/DISCARD bits, u32 page offset) and is padded
to 8 bytes. Positions only grow; the data index is pos & (size - 1).

The hot path decodes a run of fixed-size records with one `struct.iter_unpack` call over the mapped memory
(C speed) after checking, also in C, that every header in the run is committed and of the expected length.

The positions the kernel shares with us (and record headers) are read and written through native-format
memoryviews: one aligned 8-byte (4-byte) load or store each, as libbpf does. struct's "<Q" goes a byte at a
time, and the kernel reads consumer_pos while we write it: stored that way, at 22 k records/s through a
4 MiB ring that never held more than 18 KB, 38-97 records per 8 s were refused as if the ring were full
(0 stored whole; tests/test_tcpsnoop.py::test_no_loss_when_the_reader_keeps_up). producer_pos read byte by
byte once produced 3 more lines than records were written (0 read whole).
"""
from __future__ import annotations

import mmap
import os
import select
import struct

from .errors import PytracerError

BUSY = 1 << 31
DISCARD = 1 << 30
HDR = 8


class RingBuffer:
    def __init__(self, map_fd: int, size: int):
        if size <= 0 or size & (size - 1) or size % mmap.PAGESIZE:
            raise PytracerError(f"ring buffer size {size} is not a power-of-two multiple of the page size")
        page = mmap.PAGESIZE
        self.size = size
        self.mask = size - 1
        self._cons_map = self._prod_map = None
        self._epoll = None
        try:
            self._cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._prod_map = mmap.mmap(map_fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
            self._epoll = select.epoll(1)
            self._epoll.register(map_fd, select.EPOLLIN)
        except OSError as e:
            self.close()
            raise PytracerError(f"cannot map the BPF ring buffer: {os.strerror(e.errno)}") from None
        self._use_memory(self._cons_map, self._prod_map)

    def _use_memory(self, cons, prod):
        """Read the consumer page `cons` and the producer page + data area `prod` (the mmaps, or plain
        buffers laid out alike in tests)."""
        self._prod = memoryview(prod)
        self._data = self._prod[mmap.PAGESIZE:mmap.PAGESIZE + self.size]
        self._cons_view = memoryview(cons)
        # single aligned 64-bit loads and stores (see the module docstring); headers as 32-bit words
        self._cons_pos = self._cons_view[:8].cast("Q")
        self._prod_pos = self._prod[:8].cast("Q")
        self._words = self._data.cast("I")
        self._fixed = {}
        self.malformed = 0      # records skipped by read() because their length was not the expected one

    # -- positions -------------------------------------------------------------------------------------
    def _consumer(self):
        return self._cons_pos[0]

    def _producer(self):
        return self._prod_pos[0]

    def pending_bytes(self) -> int:
        return self._producer() - self._consumer()

    # -- waiting ---------------------------------------------------------------------------------------
    def poll(self, timeout: float | None) -> bool:
        """Wait up to `timeout` seconds (None: forever) for data. True if there may be records."""
        if self._producer() != self._consumer():
            return True
        try:
            return bool(self._epoll.poll(-1 if timeout is None else timeout))
        except InterruptedError:  # pragma: no cover - Python retries EINTR itself since 3.5
            return False

    def wake_on(self, fd: int) -> None:
        """Also end poll()'s wait when `fd` is readable (a command's signal wakeup pipe: a stop request
        does not wait for the poll's timeout). poll() then returns True with maybe no record."""
        self._epoll.register(fd, select.EPOLLIN)

    # -- reading ---------------------------------------------------------------------------------------
    def read(self, record: struct.Struct, limit: int = 1 << 30) -> list[tuple]:
        """Drain committed records, decoding each with `record` (a struct.Struct of the record payload).

        Returns a list of tuples. Discarded records are skipped; records of another length are skipped and
        counted in `self.malformed` (a layout mismatch must not look like silence). Stops at the first
        record still being written (BUSY)."""
        out = []
        size = record.size
        stride = (size + HDR + 7) & ~7
        fixed = self._fixed.get(record.format)
        if fixed is None:
            fixed = struct.Struct("<8x" + record.format.lstrip("<=@!>") + "x" * (stride - HDR - size))
            self._fixed[record.format] = fixed
        data, mask, ring = self._data, self.mask, self.size
        cons = self._consumer()
        prod = self._producer()
        while cons < prod and len(out) < limit:
            off = cons & mask
            avail = min(prod - cons, ring - off, (limit - len(out)) * stride)   # up to the area's end
            n = avail // stride
            if n:
                # How many leading headers are committed, not discarded, and of our length? Checked in C
                # for the common case (all of them); otherwise found once, so a batch stays linear.
                lens = data[off:off + n * stride].cast("I")[::stride // 4].tolist()
                if lens.count(size) != n:
                    n = next(i for i, v in enumerate(lens) if v != size)
                if n:
                    out.extend(fixed.iter_unpack(data[off:off + n * stride]))
                    cons += n * stride
                    continue
            # slow path: one record at a time
            hdr = self._words[off >> 2]
            if hdr & BUSY:
                break
            length = hdr & ~(BUSY | DISCARD)
            if not hdr & DISCARD:
                if length != size:
                    self.malformed += 1
                elif off + HDR + size <= ring:
                    out.append(record.unpack_from(data, off + HDR))
                else:
                    out.append(record.unpack(self._wrapped(off + HDR, size)))
            cons += (length + HDR + 7) & ~7
        self._cons_pos[0] = cons
        return out

    def _wrapped(self, start, length):
        """`length` bytes from data offset `start`, continued from the area's beginning past its end. (A
        header never wraps: records are 8-byte aligned in an area of whole pages.)"""
        start &= self.mask
        first = min(length, self.size - start)
        return bytes(self._data[start:start + first]) + bytes(self._data[:length - first])

    def read_raw(self, limit: int = 1 << 30) -> list[bytes]:
        """Drain committed records as bytes (any length)."""
        out = []
        data, mask = self._data, self.mask
        cons = self._consumer()
        prod = self._producer()
        while cons < prod and len(out) < limit:
            off = cons & mask
            hdr = self._words[off >> 2]
            if hdr & BUSY:
                break
            length = hdr & ~(BUSY | DISCARD)
            if not hdr & DISCARD:
                out.append(self._wrapped(off + HDR, length))
            cons += (length + HDR + 7) & ~7
        self._cons_pos[0] = cons
        return out

    def close(self):
        for name in ("_words", "_cons_pos", "_prod_pos", "_data", "_prod", "_cons_view"):
            v = getattr(self, name, None)
            if v is not None:
                v.release()
                setattr(self, name, None)
        for name in ("_cons_map", "_prod_map"):
            m = getattr(self, name, None)
            if m is not None:
                try:
                    m.close()
                except BufferError:  # a caller still holds a view; it goes with the process
                    pass
                setattr(self, name, None)
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

