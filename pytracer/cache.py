"""On-disk cache of relocated object specs, so a warm start skips ELF, BTF and CO-RE work.

What is cached depends only on the object file, the running kernel and pytracer itself, and it is
bytecode that root will load: the directory must be owned by root (or by us) and writable by nobody else,
all the way up, or it is refused.  Entries are written atomically with mode 0600.
"""
import json
import os
import stat

from .errors import CacheError, warn

# The interpreter's own SHA-256 when it has one: hashlib's loads OpenSSL's libcrypto, 3.4 MB of resident
# memory for two hashes at start-up.
try:
    from _sha2 import sha256            # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256      # 3.9 - 3.11
    except ImportError:
        from hashlib import sha256

DEFAULT_DIR = "/var/cache/pytracer"
FORMAT = 2          # 2: MapSpec without BTF key/value type ids
_warned = False


def cache_dir():
    """The configured cache directory, or None when caching is off (PYTRACER_CACHE_DIR=off)."""
    d = os.environ.get("PYTRACER_CACHE_DIR", DEFAULT_DIR)
    return None if d.lower() in ("", "off", "none", "0") else d


def kernel_identity():
    u = os.uname()
    try:
        btf_size = os.stat("/sys/kernel/btf/vmlinux").st_size
    except OSError:
        btf_size = -1
    return f"{u.release}|{u.version}|{u.machine}|{btf_size}"


def key_for(object_bytes, extra=""):
    from . import __version__

    h = sha256()
    for part in (str(FORMAT), __version__, kernel_identity(), extra):
        h.update(part.encode() + b"\0")
    h.update(object_bytes)
    return h.hexdigest()


def derived_key(key, what):
    """The key of something derived from the object `key` names (a record layout, an enum)."""
    return sha256(f"{key}\0{what}".encode()).hexdigest()


def check_safe(path):
    """Refuse a directory (or any parent) that someone other than root/us can write."""
    euid = os.geteuid()
    p = os.path.abspath(path)
    while True:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(p)
        if st.st_uid not in (0, euid):
            raise CacheError(f"cache directory {path} is unsafe: {p} is owned by uid {st.st_uid}")
        sticky = st.st_mode & stat.S_ISVTX
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (sticky and p != os.path.abspath(path)):
            raise CacheError(f"cache directory {path} is unsafe: {p} is writable by group or others")
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent


def _warn(msg):
    global _warned
    if not _warned:
        _warned = True
        warn(f"{msg}; continuing without the cache")


def _usable_dir(create):
    d = cache_dir()
    if d is None:
        return None
    try:
        if create and not os.path.isdir(d):
            os.makedirs(d, mode=0o700, exist_ok=True)
        if not os.path.isdir(d):
            return None
        check_safe(d)
    except CacheError as e:
        _warn(str(e))
        return None
    except OSError:
        return None
    return d


def get(key):
    d = _usable_dir(create=False)
    if d is None:
        return None
    try:
        with open(os.path.join(d, key + ".json"), "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid not in (0, os.geteuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                _warn(f"cache entry {f.name} is writable by others")
                return None
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def put(key, payload):
    d = _usable_dir(create=True)
    if d is None:
        return False
    final = os.path.join(d, key + ".json")
    tmp = f"{final}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, final)
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
