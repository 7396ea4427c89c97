"""Loss accounting: lost records are never silent. Every tool's object reports through channel.h (the
`events` ring buffer, and the per-CPU `lost` counter of records it could not reserve); the kernel counts
program runs it skipped (recursion_misses); the ring buffer reader counts records of an unexpected size.
A tool adds its own reasons (counters it keeps, or other per-CPU maps) and their wording."""

# reason -> wording, {n} the count; a tool extends it with its own reasons
LOSS_TEXT = {
    "ringbuf": "{n} found the ring buffer full: try --ringbuf-mb or filters",
    "skipped": "{n} tracepoint runs skipped by the kernel while a BPF program already ran on that CPU",
    "malformed": "{n} records of an unexpected size: the BPF object does not match this pytracer",
}


NESTED = "_nested"         # nest.bpf.h: the twin of program X is X_nested, its map X_nest
NEST_HANDLED_OFFSET = 64   # nest.bpf.h: struct nest_state's `handled` (after 4 slots of 16 bytes)


def twin_of(name):
    """The program whose nest.bpf.h twin `name` is (X for X_nested), or None."""
    return name[:-len(NESTED)] if name.endswith(NESTED) else None


def with_twins(names):
    """A program predicate for BPFObject(programs=...): the programs named and the nest.bpf.h twin of each
    (a tool names X; X_nested, which makes the runs of X the kernel skips, comes with it)."""
    names = frozenset(names)
    return lambda prog: prog.name in names or twin_of(prog.name) in names


def skipped_runs(obj):
    """Program runs the kernel skipped, of a loaded object: a tracing program does not nest in itself on
    one CPU.  For a pair of nest.bpf.h (X, X_nested, and their map X_nest), the runs of X that X_nested
    did not make in its place; X_nested's own misses are runs X made (see nest.bpf.h)."""
    programs = obj.programs
    total = 0
    for name, prog in programs.items():
        if twin_of(name) in programs:
            continue
        missed = prog.recursion_misses()
        if missed and name + NESTED in programs:
            missed = max(0, missed - obj.maps[name + "_nest"].sum_percpu_u64(offset=NEST_HANDLED_OFFSET))
        total += missed
    return total


def describe_losses(reasons, text=LOSS_TEXT):
    """One line of wording for {reason: count}."""
    return "; ".join(text[k].format(n=n) for k, n in sorted(reasons.items()))


class Losses:
    """Totals of every loss reason of one loaded object and ring buffer, and what is new since the last
    look. `counters` maps extra reasons to callables returning a running total (a tool's own counters, or
    `obj.maps[name].sum_percpu_u64` for a per-CPU map its BPF side increments)."""

    def __init__(self, obj, ringbuf, counters=None):
        self.obj = obj
        self.ringbuf = ringbuf
        self.counters = dict(counters or {})
        self._lost_map = obj.maps["lost"]
        self._reported = {}
        self.totals = {}

    def new(self):
        """{reason: count} of what was lost since the last call (reasons with nothing new left out)."""
        totals = {"ringbuf": self._lost_map.sum_percpu_u64(),
                  "skipped": skipped_runs(self.obj)}
        for reason, total in self.counters.items():
            totals[reason] = total()
        totals["malformed"] = self.ringbuf.malformed
        new = {k: v - self._reported.get(k, 0) for k, v in totals.items() if v - self._reported.get(k, 0)}
        self._reported = self.totals = totals
        return new
