"""The user-space half of bpf_bytecode/sockowner.bpf.h (which process owns each TCP socket): which of its
programs a tool loads on this kernel, the start-up iterators that register the sockets that exist already,
and `HeldRecords`, where a tool keeps the records of a connection whose owner is not known yet (a passive
socket before accept(), a socket whose owner let go while others hold it) until a record names the owner."""
from collections import OrderedDict

from ..attach import tracepoint_exists
from ..errors import PytracerError

# Run once, after the live programs are attached (so no socket falls between the two): processes'
# descriptors first (sockets with their owners), then the sockets no process holds.
SEED_ITERATORS = ("seed_owners", "seed_sockets")
PER_PACKET = ("on_queue",)      # the header's per-packet program: adopts the sender of a queued segment


def have_sock_length_tracepoints():
    """Whether this kernel has sock:sock_{send,recv}_length (Linux 6.3+); without them the owner refresh
    falls back to the syscall-entry program."""
    return tracepoint_exists("sock/sock_send_length") and tracepoint_exists("sock/sock_recv_length")


def wanted_program(prog, have_sock_len, per_packet=True, syscall_fallback=True):
    """Whether to load `prog` (a ProgramSpec of an object that includes sockowner.bpf.h). The owner refresh
    comes from sock:sock_{send,recv}_length where the kernel has them (Linux 6.3+; raw tracepoints, attached
    by name), and otherwise, if `syscall_fallback`, from the syscall-entry program (much more costly: it
    runs on every syscall, and sees close() too); without it only accept, connect, close, exit and the
    state changes name owners. `per_packet` False leaves out on_queue. The other programs are tp_btf: the
    loader itself refuses them when the kernel's BTF lacks their tracepoint."""
    kind, target = prog.attach_kind, prog.attach_target
    name = target.rsplit("/", 1)[-1]
    if name in ("sock_send_length", "sock_recv_length"):
        return have_sock_len
    if name == "sys_enter_close":
        return have_sock_len or not syscall_fallback    # below 6.3 the syscall-entry program sees close() too
    if kind == "tp_btf" and target == "sys_enter":
        return syscall_fallback and not have_sock_len
    if not per_packet and prog.name in PER_PACKET:
        return False
    if kind == "tracepoint" and not tracepoint_exists(target):
        raise PytracerError(f"this kernel has no tracepoint {target.replace('/', ':')}, which pytracer needs "
                            f"({prog.name})")
    return True


def seed(obj):
    """Register the sockets that exist now (run after obj.attach())."""
    for name in SEED_ITERATORS:
        obj.run_iterator(name)


class HeldRecords:
    """Records held per connection (any hashable key) until their owner is known, bounded: at most
    `max_conns` connections (the oldest is dropped first) of `max_per_conn` records each. What is dropped
    is counted in `lost`, except records for which `counts(item)` is false (e.g. handshake packets of a
    connection never accepted: no process's, so no loss). `by_conn` is the OrderedDict itself, for a
    tool's hot loop (`if held.by_conn and key in held.by_conn`)."""

    def __init__(self, max_conns, max_per_conn, counts=lambda item: True):
        self.max_conns, self.max_per_conn, self.counts = max_conns, max_per_conn, counts
        self.by_conn = OrderedDict()
        self.lost = 0

    def hold(self, key, item):
        held = self.by_conn.get(key)
        if held is None:
            if len(self.by_conn) >= self.max_conns:
                _, dropped = self.by_conn.popitem(last=False)
                self.lost += self.losses(dropped)
            held = self.by_conn[key] = []
        if len(held) >= self.max_per_conn:
            if self.counts(item):
                self.lost += 1
            return
        held.append(item)

    def pop(self, key):
        """The records held for `key` (None if none), no longer held."""
        return self.by_conn.pop(key, None)

    def losses(self, items):
        """How many of `items` count as lost if they are never shown."""
        counts = self.counts
        return sum(1 for item in items if counts(item))

    def abandon(self):
        """Stopping: what is still held is lost (as `losses` counts it)."""
        for held in self.by_conn.values():
            self.lost += self.losses(held)
        self.by_conn.clear()
