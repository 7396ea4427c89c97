"""The wheel and sdist are what they say (issue 15, part 5): `python -m build` makes a pure wheel and an
sdist without setuptools warnings, `twine check` passes, and the wheel holds what a user needs and nothing
else (no test fixtures); `pytracer --version` names the kernel features it found."""
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from conftest import ROOT, kernel_unavailable, pytracer_cmd, run_env

# every module of the package, subpackages (toolkit, tools/*) included, relative to pytracer/
PACKAGE_MODULES = sorted(os.path.relpath(os.path.join(d, f), os.path.join(ROOT, "pytracer"))
                         for d, _dirs, files in os.walk(os.path.join(ROOT, "pytracer")) for f in files
                         if f.endswith(".py"))
# the tools' objects, not the engine tests' fixtures
TOOL_OBJECTS = ("tcplife.bpf.o", "tcpsnoop.bpf.o", "tcpstates.bpf.o", "tcptop.bpf.o")
FIXTURES = ("enginetest.bpf.o", "invalid.bpf.o")


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """`python -m build` of a clean copy of the tree (the checkout's build/ and egg-info left out)."""
    src = tmp_path_factory.mktemp("src") / "pytracer"
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "results")
    shutil.copytree(ROOT, src, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)   # else build_py warns that it cannot byte-compile
    proc = subprocess.run([sys.executable, "-m", "build", "-o", str(out), str(src)], capture_output=True,
                          text=True, env=env)
    log = proc.stdout + proc.stderr
    if proc.returncode and ("Could not find a version" in log or "connection" in log.lower()):
        kernel_unavailable(f"no package index reachable for the isolated build: {log[-300:]}")
    assert proc.returncode == 0, log[-3000:]
    wheels = sorted(out.glob("*.whl"))
    sdists = sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, os.listdir(out)
    return wheels[0], sdists[0], log


def test_build_has_no_warnings(dists):
    _, _, log = dists
    warnings = [ln for ln in log.splitlines() if re.search(r"warning|!!|deprecat", ln, re.I)]
    assert not warnings, "\n".join(warnings)


def test_wheel_is_pure_and_holds_only_what_users_need(dists):
    whl, _, _ = dists
    assert whl.name.endswith("-py3-none-any.whl"), whl.name
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        wheel_meta = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Root-Is-Purelib: true" in wheel_meta
    package = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    want = ({f"pytracer/{m}" for m in PACKAGE_MODULES} | {f"pytracer/bpf/{o}" for o in TOOL_OBJECTS}
            | {"pytracer/py.typed"})
    assert package == want, (sorted(package - want), sorted(want - package))
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert "Requires-Dist: pyelftools>=0.32" in meta and "Requires-Dist: construct>=2.10" in meta
    assert "Requires-Python: >=3.9" in meta


def test_sdist_has_sources_and_fixtures(dists):
    _, sdist, _ = dists
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for need in ("LICENSE", "Makefile", "bpf_bytecode/tcpsnoop.bpf.c", "pytracer/bpf/tcpsnoop.bpf.o",
                 *(f"pytracer/bpf/{f}" for f in FIXTURES), "tests/conftest.py", "tests/bpf/core_fixture.bpf.c"):
        assert need in names, need


def test_twine_check(dists):
    whl, sdist, _ = dists
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(whl), str(sdist)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


# ---- --version: the kernel features -------------------------------------------------------------------
FEATURES = ("ring buffer", "BTF", "iterators", "sock_*_length", "perf links")


def version_lines(user=None):
    cmd = pytracer_cmd("--version")
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), cwd="/")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("pytracer ") and lines[1].startswith(f"kernel {os.uname().release} ")
    found = {}
    for ln in lines[2:]:
        m = re.fullmatch(r"  (.+?): +(yes|no) +\((.*)\)", ln)
        assert m, ln
        found[m.group(1)] = (m.group(2) == "yes", m.group(3))
    assert tuple(found) == FEATURES, lines
    return found


def test_version_features_match_the_kernel(kernel):
    """As root the ring buffer is really created and the tracepoints are looked up in tracefs; what BTF
    says must agree, and the answers match what the tracer itself decides."""
    from pytracer import kernel_report as features
    from pytracer.tcpsnoop import have_sock_length_tracepoints

    found = version_lines()
    assert found["ring buffer"] == (True, "created a BPF_MAP_TYPE_RINGBUF map")
    assert found["BTF"][0] is os.path.exists("/sys/kernel/btf/vmlinux")
    assert found["sock_*_length"][0] is have_sock_length_tracepoints()
    strings = features.btf_strings()
    assert found["sock_*_length"][0] is features._has(strings, "btf_trace_sock_send_length")
    assert found["iterators"][0] is True          # tcpsnoop's start-up needs them: the suite would fail
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    assert found["perf links"][0] is (release >= (5, 15))


def test_version_features_without_root(kernel):
    """Unprivileged, every line still answers (from BTF) and says that root confirms what it could not."""
    if shutil.which("setpriv") is None:
        kernel_unavailable("setpriv is not installed (util-linux)")
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                            f"import sys; sys.path.insert(0, {ROOT!r}); import pytracer"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"user nobody cannot import pytracer from {ROOT}")
    root = version_lines()
    nobody = version_lines(user="65534")
    assert {k: v[0] for k, v in nobody.items()} == {k: v[0] for k, v in root.items()}
    assert "root confirms it" in nobody["ring buffer"][1]
    assert "root confirms it" in nobody["sock_*_length"][1]
