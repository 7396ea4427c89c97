"""Who owns a socket, as tools show and filter it: task names as safe text, cgroup v2 ids and levels."""
import os

from ..errors import PytracerError


def escape_comm(raw: bytes) -> str:
    """A task name as printable text. The traced process chooses it (prctl), so control characters,
    escape sequences and invalid UTF-8 are shown as \\xNN escapes, never passed to the terminal; a
    backslash itself is escaped too, so a name cannot pass for another one in the output."""
    raw = raw.split(b"\0", 1)[0]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable() and "\\" not in text:
        return text
    out = []
    for b in raw.decode("utf-8", "surrogateescape"):
        o = ord(b)
        if 0xDC80 <= o <= 0xDCFF:          # an undecodable byte
            out.append("\\x%02x" % (o - 0xDC00))
        elif b == "\\" or not b.isprintable():
            out.append("\\x%02x" % o if o < 256 else b.encode("unicode_escape").decode())
        else:
            out.append(b)
    return "".join(out)


def cgroup2_mount():
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid
    systems), or None."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return None


def cgroup_id_and_level(path):
    """cgroup v2 id (the directory's inode number) and its depth below the root, for --cgroup. `path` is a
    directory in the cgroup2 mount, or a path relative to its root (as in /proc/PID/cgroup)."""
    root = cgroup2_mount()
    if root is None:
        raise PytracerError("--cgroup needs the cgroup v2 hierarchy, and none is mounted")
    full = path if os.path.isabs(path) and path.startswith(root) else os.path.join(root, path.lstrip("/"))
    try:
        st = os.stat(full)
    except OSError as e:
        raise PytracerError(f"--cgroup {path}: {e.strerror} ({full})") from None
    rel = os.path.relpath(os.path.realpath(full), os.path.realpath(root))
    if rel.startswith(".."):
        raise PytracerError(f"--cgroup {path} is not inside the cgroup v2 hierarchy at {root}")
    level = 0 if rel == "." else len(rel.split(os.sep))
    return st.st_ino, level
