"""What tests and benchmarks look at in /proc and the kernel, in one place: the BPF objects a process holds
(fdinfo), what is left in the kernel after a process, a process's CPU time, and "wait until the tracer has
attached". Not part of pytracer (the package); tests/ and bench/ import it with the repository root on
sys.path."""
import os
import time


def fdinfo_ids(pid):
    """BPF program, map and link ids held through file descriptors of process `pid`."""
    out = {"prog": set(), "map": set(), "link": set()}
    base = f"/proc/{pid}/fdinfo"
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        try:
            with open(os.path.join(base, name)) as f:
                text = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if "link_id" in fields:
            out["link"].add(int(fields["link_id"]))
        elif "map_id" in fields:
            out["map"].add(int(fields["map_id"]))
        elif "prog_id" in fields:
            out["prog"].add(int(fields["prog_id"]))
    return out


def all_held_ids(exclude=()):
    """Union of fdinfo_ids over every live process (except `exclude`)."""
    out = {"prog": set(), "map": set(), "link": set()}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in exclude:
            continue
        for k, v in fdinfo_ids(int(d)).items():
            out[k] |= v
    return out


def kernel_snapshot():
    from pytracer import inventory

    return inventory.snapshot()


def leftovers(own, before=None, settle=5.0):
    """What is left of `own` (ids a finished process held) in the kernel, polling up to `settle` s for
    deferred frees. With `before` (a snapshot from before it started), also new ids that no live process
    holds (a leak that the process never had an fd for); ids held by other processes (concurrent users of
    BPF on this machine) are not counted."""
    deadline = time.monotonic() + settle
    while True:
        now = kernel_snapshot()
        left = {k: sorted(own.get(k, set()) & now[k]) for k in ("prog", "map", "link")}
        if before is not None:
            fresh = {k: now[k] - before[k] - set(left[k]) for k in ("prog", "map", "link")}
            if any(fresh.values()):
                held = all_held_ids()
                for k in fresh:
                    orphan = sorted(fresh[k] - held[k])
                    if orphan:
                        left[k] = sorted(set(left[k]) | set(orphan))
        left = {k: v for k, v in left.items() if v}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def wait_attached(tracer, timeout=60):
    """Wait until process `tracer` (a Popen) holds BPF links and their number has been stable for 0.3 s
    (every program attached), or died. Returns the ids it holds."""
    deadline = time.monotonic() + timeout
    last, stable_since = None, None
    while time.monotonic() < deadline:
        if tracer.poll() is not None:
            err = tracer.stderr.read() if tracer.stderr else ""
            raise RuntimeError(f"the tracer exited with {tracer.returncode}: {err[-2000:]}")
        ids = fdinfo_ids(tracer.pid)
        n = len(ids["link"])
        if n and n == last:
            if time.monotonic() - stable_since >= 0.3:
                return ids
        else:
            last, stable_since = n, time.monotonic()
        time.sleep(0.05)
    raise RuntimeError("the tracer did not attach in time")
