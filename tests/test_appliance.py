"""pytracer as an appliance (issue 15): the single file dist/pytracer.pyz (tools/pyz.py, `make pyz`) and the
package vendored as a read-only directory, both run by a bare interpreter (`python3 -I -S`: no site
packages, no PYTHONPATH, no user site) on the real kernel."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT, kernel_unavailable, wait_attached

PYZ_TOOL = os.path.join(ROOT, "tools", "pyz.py")
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
BARE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

# A process that connects over loopback when told to (a line on stdin), so that the tracer can be started
# on its pid first.
CLIENT = r"""
import os, socket, sys
srv = socket.create_server(("127.0.0.1", 0))
print(os.getpid(), srv.getsockname()[1], flush=True)
sys.stdin.readline()
c = socket.create_connection(srv.getsockname())
a, _ = srv.accept()
c.sendall(b"hello")
a.recv(16)
c.close(); a.close(); srv.close()
"""


@pytest.fixture(scope="module")
def deps(tmp_path_factory):
    """pyelftools and construct as `make pyz` takes them: pip's newest that run on Python 3.9."""
    d = str(tmp_path_factory.mktemp("pyz-deps") / "deps")
    r = subprocess.run([sys.executable, PYZ_TOOL, "--deps", d, "--dir", d + "-probe"], capture_output=True,
                       text=True)
    if r.returncode and ("Could not find a version" in r.stderr or "connection" in r.stderr.lower()):
        kernel_unavailable(f"no package index reachable: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def pyz(tmp_path_factory, deps):
    out = str(tmp_path_factory.mktemp("pyz") / "pytracer.pyz")
    r = subprocess.run([sys.executable, PYZ_TOOL, "--deps", deps, "--out", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def bare(python=SYSTEM_PYTHON):
    return [python, "-I", "-S"]


def trace_one_connection(cmd, env, cwd="/"):
    """Run the tracer `cmd` (-j -p PID added) on a client that makes one loopback connection; the JSON
    lines it printed for that pid."""
    client = subprocess.Popen([SYSTEM_PYTHON, "-c", CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        pid, port = map(int, client.stdout.readline().split())
        tracer = subprocess.Popen([*cmd, "-j", "-p", str(pid), "-d", "60"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        try:
            wait_attached(tracer)
            client.stdin.write("go\n")
            client.stdin.flush()
            assert client.wait(timeout=30) == 0
            lines = []
            for ln in tracer.stdout:
                ev = json.loads(ln)
                lines.append(ev)
                if ev["event"] == "close" and ev["rport"] == port:
                    break
            tracer.send_signal(signal.SIGINT)
            _, err = tracer.communicate(timeout=30)
        finally:
            if tracer.poll() is None:
                tracer.kill()
                tracer.wait()
        assert tracer.returncode == 0, err
    finally:
        if client.poll() is None:
            client.kill()
        client.wait()
    return pid, port, lines, err


def assert_traced(pid, port, lines):
    connect = [e for e in lines if e["event"] == "connect" and e["rport"] == port]
    assert connect and all(e["pid"] == pid for e in connect), lines
    close = [e for e in lines if e["event"] == "close" and e["rport"] == port]
    assert close and close[0]["tx_bytes"] == 5 and close[0]["pid"] == pid, lines


# ---- the single file --------------------------------------------------------------------------------
def test_pyz_contents(pyz):
    with zipfile.ZipFile(pyz) as z:
        names = set(z.namelist())
        licences = z.read("licenses/LICENSES.txt").decode()
    for need in ("__main__.py", "pytracer/__init__.py", "pytracer/cli.pyc", "pytracer/bpf/tcpsnoop.bpf.o",
                 "elftools/__init__.py", "construct/__init__.py", "licenses/pytracer/LICENSE",
                 "licenses/pyelftools/LICENSE", "licenses/construct/LICENSE"):
        assert need in names, need
    assert not any(n.endswith(("enginetest.bpf.o", "invalid.bpf.o")) for n in names)   # test fixtures
    assert "GPL-2.0-only" in licences and "pyelftools" in licences and "MIT" in licences
    assert "Requires-Python >=3.10" not in licences         # the archive runs on 3.9
    with open(pyz, "rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"
    assert os.stat(pyz).st_mode & stat.S_IXUSR


def test_pyz_is_reproducible(pyz, deps, tmp_path):
    again = str(tmp_path / "again.pyz")
    subprocess.run([sys.executable, PYZ_TOOL, "--deps", deps, "--out", again], check=True, capture_output=True)
    with open(pyz, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()


def test_pyz_runs_with_a_bare_interpreter(pyz):
    # The bare interpreter really has no dependency of pytracer to fall back on.
    r = subprocess.run([*bare(), "-c", "import elftools"], capture_output=True, text=True, env=BARE_ENV)
    assert r.returncode != 0 and "No module named 'elftools'" in r.stderr
    r = subprocess.run([*bare(), pyz, "--version"], capture_output=True, text=True, env=BARE_ENV, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("pytracer ") and "ring buffer:" in r.stdout
    r = subprocess.run([*bare(), pyz, "--ringbuf-mb", "3"], capture_output=True, text=True, env=BARE_ENV)
    assert r.returncode == 2 and "power of two" in r.stderr          # argparse errors, as `python -m pytracer`


def test_pyz_traces_with_a_warm_cache(kernel, no_leaks, pyz, tmp_path):
    """A real trace from the archive (the BPF object read from the zip), first with an empty cache, then
    warm: the second run imports neither pyelftools nor construct (the relocated spec and the record
    layout come from the cache)."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    env = dict(BARE_ENV, PYTRACER_CACHE_DIR=str(cache))
    pid, port, lines, _ = trace_one_connection([*bare(), pyz], env)
    assert_traced(pid, port, lines)
    assert len(os.listdir(cache)) >= 2          # the relocated spec and the layout
    pid, port, lines, err = trace_one_connection([*bare(), "-X", "importtime", pyz], env)
    assert_traced(pid, port, lines)
    imported = {ln.split("|")[-1].strip() for ln in err.splitlines() if ln.startswith("import time:")}
    assert "pytracer.cli" in imported
    assert not {m for m in imported if m.split(".")[0] in ("elftools", "construct")}, sorted(imported)


# ---- vendored as a read-only directory -------------------------------------------------------------------
def vendor(dest, deps):
    """What README's "Vendoring" section says: `tools/pyz.py --dir DEST` (pytracer/ less the test fixtures,
    elftools/ and construct/ from their installed distributions, licenses/, __main__.py), its bytecode
    compiled at build time, here also for the system python3 the tree is then run with."""
    r = subprocess.run([sys.executable, PYZ_TOOL, "--deps", deps, "--dir", str(dest)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    subprocess.run([SYSTEM_PYTHON, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", str(dest)],
                   check=True)


def tree_listing(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files)


def run_vendored(tree, tmp_path):
    """`python3 -I TREE --version` and a short real trace of one loopback connection, from `tree`."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    env = dict(BARE_ENV, PYTRACER_CACHE_DIR=str(cache))      # no PYTHONDONTWRITEBYTECODE: nothing to write
    before = tree_listing(tree)
    r = subprocess.run([SYSTEM_PYTHON, "-I", str(tree), "--version"], capture_output=True, text=True, env=env,
                       cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("pytracer ") and "perf links:" in r.stdout
    pid, port, lines, _ = trace_one_connection([SYSTEM_PYTHON, "-I", str(tree)], env)
    assert_traced(pid, port, lines)
    assert tree_listing(tree) == before        # nothing written into the tree
    # every module imported came from the bytecode compiled at build time
    check = subprocess.run([SYSTEM_PYTHON, "-I", "-c",
                            f"import sys, os; sys.path.insert(0, {str(tree)!r}); import pytracer.cli, pytracer.loader, "
                            "pytracer.tcpsnoop, pytracer.btf, pytracer.core, elftools.elf.elffile, construct; "
                            f"print(sorted(n for n, m in sys.modules.items() if (getattr(m, '__file__', '') or '')"
                            f".startswith({str(tree)!r}) and not os.path.exists(m.__cached__ or '')))"],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0 and check.stdout.strip() == "[]", check.stdout + check.stderr


def test_vendored_read_only_tree(kernel, no_leaks, tmp_path, deps):
    """Copied, made read-only (mode bits), run with `python3 -I`."""
    tree = tmp_path / "vendor"
    vendor(tree, deps)
    for d, dirs, files in os.walk(tree):
        for f in files:
            os.chmod(os.path.join(d, f), 0o444)
        os.chmod(d, 0o555)
    try:
        run_vendored(tree, tmp_path)
    finally:
        for d, dirs, files in os.walk(tree):
            os.chmod(d, 0o755)


def test_vendored_tree_on_a_read_only_mount(kernel, no_leaks, tmp_path, deps):
    """Root ignores mode bits: a read-only bind mount is the real thing (as an appliance's read-only /usr)."""
    if os.geteuid() != 0:
        kernel_unavailable("a read-only bind mount needs root")
    tree = tmp_path / "vendor"
    vendor(tree, deps)
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "--bind", str(tree), str(ro)], capture_output=True, text=True)
    if r.returncode:
        kernel_unavailable(f"cannot bind-mount: {r.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        with pytest.raises(OSError):
            open(ro / "probe", "w").close()
        run_vendored(ro, tmp_path)
    finally:
        subprocess.run(["umount", "-l", str(ro)])
