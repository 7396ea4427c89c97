#!/usr/bin/env python3
"""Build dist/pytracer.pyz (issue 15): one file that runs with a bare `python3`, no pip packages needed.

    python3 tools/pyz.py [--deps DIR] [--out dist/pytracer.pyz]
    python3 tools/pyz.py --dir DEST                     the same tree as a directory, for vendoring:
                                                        run it as `python3 -I DEST [options]`

A zipapp (PEP 441: a zip with a __main__.py, behind a `#!/usr/bin/env python3` line) holding:
  pytracer/              the package as the wheel has it (its modules, the tools' bpf/*.bpf.o; no test fixtures)
  elftools/, construct/  its pure-Python dependencies, copied from DIR (a `pip install --target DIR`; `make
                         pyz` fills build/pyz-deps with the newest versions that still run on Python 3.9,
                         pyelftools 0.33 needing 3.10) or, without --deps, from this interpreter's
  licenses/              pytracer's, pyelftools' and construct's licence files (and LICENSES.txt, a summary)
  __main__.py            what `python -m pytracer` runs

Each module is stored as source and as bytecode compiled by the building interpreter (unchecked-hash .pyc
next to the .py, where zipimport looks): that interpreter's version imports the bytecode, any other (3.9 to
3.13) compiles the sources at each start (zipimport cannot write bytecode back into the archive). The
archive is reproducible: sorted entries, fixed timestamps (SOURCE_DATE_EPOCH, else 1980-01-01).

With --dir the sources are written to DEST and compiled there (__pycache__, unchecked-hash bytecode, which
stays valid when the tree is copied without its timestamps) by this interpreter; compile them for another
one with `python3.X -m compileall -q --invalidation-mode unchecked-hash DEST`.
"""
import argparse
import importlib.metadata
import importlib.util
import io
import os
import py_compile
import stat
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPS = {"pyelftools": "elftools", "construct": "construct"}    # distribution -> top-level package
FIXTURES = ("enginetest.bpf.o", "invalid.bpf.o")                # the engine tests' objects, not shipped
# as setup.cfg's package_data: every tool's object (each tool needs its own)
PACKAGE_DATA = tuple(f"bpf/{n}" for n in sorted(os.listdir(os.path.join(ROOT, "pytracer", "bpf")))
                     if n.endswith(".bpf.o") and n not in FIXTURES)
MAIN = '''\
# pytracer.pyz: run as `python3 pytracer.pyz [options]`, exactly `python -m pytracer [options]`.
import signal
import sys

signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))

from pytracer.cli import main  # noqa: E402

main()
'''


def date_time():
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))
    return time.gmtime(max(epoch, 315532800))[:6]


def package_files(pkg_dir, include_data=()):
    """(path relative to pkg_dir's parent, absolute path) of a package's modules and listed data files."""
    base = os.path.dirname(pkg_dir)
    out = []
    for d, dirs, files in os.walk(pkg_dir):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__" and os.path.exists(os.path.join(d, x, "__init__.py")))
        for f in sorted(files):
            if f.endswith(".py"):
                p = os.path.join(d, f)
                out.append((os.path.relpath(p, base), p))
    for rel in include_data:
        p = os.path.join(pkg_dir, rel)
        out.append((os.path.relpath(p, base), p))
    return out


def requirements():
    """install_requires from setup.cfg (one place for the dependency ranges)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]


def fetch_deps(deps, python_version="3.9"):
    """pip install --target DEPS: the newest versions setup.cfg allows that run on `python_version`."""
    import subprocess

    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", deps,
           "--python-version", python_version, "--only-binary=:all:", "--no-compile", *requirements()]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"pyz: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")


def distribution(name, deps):
    if deps is None:
        return importlib.metadata.distribution(name)
    found = list(importlib.metadata.distributions(name=name, path=[deps]))
    if not found:
        raise SystemExit(f"pyz: {name} is not installed in {deps}")
    return found[0]


def licence_files(dist):
    """The licence files of an installed distribution (from its RECORD), with their text."""
    found = []
    for f in dist.files or ():
        name = os.path.basename(str(f)).upper()
        if name.startswith(("LICENSE", "LICENCE", "COPYING", "UNLICENSE")):
            found.append((os.path.basename(str(f)), f.locate().read_bytes()))
    meta = dist.metadata
    return found, meta.get("License-Expression") or meta.get("License") or ""


COMPILER = r"""
import py_compile, sys
src, names = sys.argv[1], sys.argv[2:]
for name in names:
    py_compile.compile(f"{src}/{name}", cfile=f"{src}/{name}c", dfile=name, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


def compile_all(entries):
    """{name.pyc: bytecode} for every .py entry, compiled by this interpreter in a child process with a fixed
    hash seed (set and frozenset constants are marshalled in hash order: a random seed changes the bytes)."""
    import subprocess

    names = sorted(n for n in entries if n.endswith(".py"))
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            path = os.path.join(tmp, *n.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(entries[n])
        env = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run([sys.executable, "-s", "-c", COMPILER, tmp, *names], check=True, env=env)  # not -I: it ignores PYTHONHASHSEED
        out = {}
        for n in names:
            with open(os.path.join(tmp, *n.split("/")) + "c", "rb") as f:
                out[n + "c"] = f.read()
    return out


def collect(with_bytecode=True, deps=None):
    """{archive name: bytes} of everything the archive holds."""
    entries = {}          # arcname -> bytes

    def add(arcname, data):
        entries[arcname.replace(os.sep, "/")] = data

    sys.path.insert(0, ROOT)
    import pytracer

    for rel, path in package_files(os.path.join(ROOT, "pytracer"), PACKAGE_DATA):
        with open(path, "rb") as f:
            add(rel, f.read())
    summary = [f"pytracer {pytracer.__version__}: GPL-2.0-only (licenses/pytracer/LICENSE)"]
    with open(os.path.join(ROOT, "LICENSE"), "rb") as f:
        add("licenses/pytracer/LICENSE", f.read())
    for dist_name, top in DEPS.items():
        dist = distribution(dist_name, deps)
        top_dir = os.path.join(deps, top) if deps else os.path.dirname(importlib.util.find_spec(top).origin)
        requires = dist.metadata.get("Requires-Python") or ""
        for rel, path in package_files(top_dir):
            with open(path, "rb") as f:
                add(rel, f.read())
        lic, what = licence_files(dist)
        if not lic:
            raise SystemExit(f"pyz: {dist_name} {dist.version} ships no licence file")
        for name, text in lic:
            add(f"licenses/{dist_name}/{name}", text)
        summary.append(f"{dist_name} {dist.version}: {what or 'see its licence file'} "
                       f"(licenses/{dist_name}/{lic[0][0]}); Requires-Python {requires or 'any'}")
    summary.append("elftools/construct is pyelftools' own copy of an older construct (2.5), MIT-licensed by the "
                   "same authors; pyelftools' wheel ships no separate licence file for it (pyelftools' LICENSE "
                   "points to construct's), licenses/construct/LICENSE is that MIT licence")
    add("licenses/LICENSES.txt", ("\n".join(summary) + "\n").encode())
    add("__main__.py", MAIN.encode())
    if with_bytecode:
        entries.update(compile_all(entries))
    return entries


def build_dir(dest, deps=None):
    """The archive's tree, as files under `dest` (which must not exist), compiled by this interpreter."""
    import compileall

    entries = collect(with_bytecode=False, deps=deps)
    os.makedirs(dest)
    for name, data in sorted(entries.items()):
        path = os.path.join(dest, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    ok = compileall.compile_dir(dest, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    if not ok:
        raise SystemExit(f"pyz: compiling {dest} failed")
    return len(entries)


def build(out, deps=None):
    stamp = date_time()
    entries = collect(deps=deps)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            z.writestr(info, entries[name])
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
    return len(entries), os.path.getsize(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "dist", "pytracer.pyz"))
    ap.add_argument("--dir", help="write the tree to this new directory instead (vendoring)")
    ap.add_argument("--deps", help="take pyelftools and construct from this `pip install --target` directory "
                                   "(filled by pip, for --min-python, when it does not exist)")
    ap.add_argument("--min-python", default="3.9", help="oldest Python the fetched dependencies must run on")
    a = ap.parse_args()
    if a.deps and not os.path.isdir(a.deps):
        fetch_deps(a.deps, a.min_python)
    if a.dir:
        n = build_dir(a.dir, a.deps)
        print(f"pyz: {a.dir}: {n} files, compiled for Python {sys.version_info[0]}.{sys.version_info[1]}; "
              f"run it with `python3 -I {a.dir}`")
        return
    n, size = build(a.out, a.deps)
    print(f"pyz: {os.path.relpath(a.out)}: {n} files, {size / 1024:.0f} KiB "
          f"(bytecode for Python {sys.version_info[0]}.{sys.version_info[1]})")


if __name__ == "__main__":
    main()
