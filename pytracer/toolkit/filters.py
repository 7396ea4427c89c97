"""The common filters (-p -u -c -P -4 -6 --cgroup): checked here, evaluated in the kernel on a socket's
owner by bpf_bytecode/filters.bpf.h, whose `const volatile` settings `rodata()` fills."""
from ..errors import PytracerError
from .owners import cgroup_id_and_level

MAX_PIDS = 8        # filters.bpf.h: MAX_FILTER_PIDS
MAX_PORTS = 8       # filters.bpf.h: MAX_FILTER_PORTS


class Filters:
    """What to trace: owners (pids, uid, comm, cgroup), ports (local or remote) and the address family."""

    def __init__(self, pids=(), uid=None, comm=None, ports=(), family=None, cgroup=None):
        self.pids = [int(p) for p in pids]
        self.uid = uid
        self.comm = comm
        self.ports = [int(p) for p in ports]
        self.family = family
        self.cgroup = cgroup
        if len(self.pids) > MAX_PIDS:
            raise PytracerError(f"at most {MAX_PIDS} --pid filters")
        if len(self.ports) > MAX_PORTS:
            raise PytracerError(f"at most {MAX_PORTS} --port filters")
        if any(not 0 < p < 65536 for p in self.ports):
            raise PytracerError("ports must be between 1 and 65535")
        if family not in (None, 4, 6):
            raise PytracerError("family must be 4 or 6")
        if comm is not None and len(comm.encode()) > 15:
            raise PytracerError("--comm matches the kernel's task name, at most 15 bytes")

    @property
    def by_owner(self) -> bool:
        """Whether a filter applies to the owner (then records of no known owner cannot pass)."""
        return bool(self.pids or self.uid is not None or self.comm is not None or self.cgroup)

    def rodata(self) -> dict:
        """The `const volatile` settings of filters.bpf.h for these filters (BPFObject(rodata=...))."""
        vals = {}
        if self.pids:
            vals["filter_pids"] = b"".join(p.to_bytes(4, "little") for p in self.pids)
            vals["n_pids"] = len(self.pids)
        if self.uid is not None:
            vals["filter_uid"] = self.uid
            vals["has_uid"] = 1
        if self.comm is not None:
            vals["filter_comm"] = self.comm.encode()
            vals["has_comm"] = 1
        if self.ports:
            vals["filter_ports"] = b"".join(p.to_bytes(2, "little") for p in self.ports)
            vals["n_ports"] = len(self.ports)
        if self.family:
            vals["filter_family"] = self.family
        if self.cgroup:
            cg_id, level = cgroup_id_and_level(self.cgroup)
            vals["filter_cgroup_id"] = cg_id
            vals["filter_cgroup_level"] = level
            vals["has_cgroup"] = 1
        return vals
