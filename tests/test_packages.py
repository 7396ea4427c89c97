"""The one package list (.ci/packages) against what the tests really run (issue 15, part 4): every program a
test looks up comes from a package on the list, so `make test` (which installs the list as root on Debian,
.ci/install-packages) never skips a test for a program it could have installed."""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIST = os.path.join(ROOT, ".ci", "packages")
INSTALLER = os.path.join(ROOT, ".ci", "install-packages")
SOURCES = [os.path.join(ROOT, "tests", f) for f in sorted(os.listdir(os.path.join(ROOT, "tests")))
           if f.endswith(".py")] + [os.path.join(ROOT, "tests", "vm", "vmtest")]
# Programs that are part of every Debian system (essential packages), not worth listing.
ESSENTIAL = {"coreutils", "util-linux", "bash", "dash", "grep", "sed", "findutils", "mount", "dpkg"}


def listed():
    with open(LIST) as f:
        return {ln.split("#")[0].strip() for ln in f if ln.split("#")[0].strip()}


def used_programs():
    """(program, package or None) for every program the tests look up by name."""
    found = set()
    for path in SOURCES:
        with open(path) as f:
            text = f.read()
        found |= {(p, pkg) for p, pkg in re.findall(r'\bneed\("([^"]+)", "([^"]+)"\)', text)}
        found |= {(p, None) for p in re.findall(r'\bneed_tool\("([^"]+)"\)', text)}
        found |= {(p, None) for p in re.findall(r'shutil\.which\("([^"]+)"', text)}
    return found


def test_list_is_clean():
    pkgs = listed()
    assert pkgs and all(re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", p) for p in pkgs), pkgs


def test_named_packages_are_listed():
    missing = {pkg for _, pkg in used_programs() if pkg and pkg not in ESSENTIAL and pkg not in listed()}
    assert not missing, f"tests name Debian packages that .ci/packages lacks: {sorted(missing)}"


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="not a Debian system: packages cannot be resolved")
def test_every_program_comes_from_a_listed_package():
    """Each program the tests look up resolves (dpkg -S) to a package on the list, or an essential one."""
    pkgs = listed()
    # A program may come from a direct dependency of a listed package (cc: gcc -> gcc-12; nginx:
    # nginx-light -> nginx; python3 -> python3-minimal).
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Depends},${Pre-Depends}\n", *sorted(pkgs)],
                         capture_output=True, text=True)
    deps = {re.split(r"[ :(]", d.strip())[0] for d in re.split(r"[,|]", out.stdout) if d.strip()}
    pkgs |= deps
    unlisted = {}
    for prog in sorted({p for p, _ in used_programs()}):
        path = prog if os.path.isabs(prog) else shutil.which(prog, path="/usr/sbin:/usr/bin:/sbin:/bin")
        assert path, f"{prog} is not installed: run .ci/install-packages as root"
        real = os.path.realpath(path)
        owner = None
        for candidate in (path, real, real.replace("/usr/", "/", 1)):
            out = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
            # (lines such as "diversion by linux-perf from: /usr/bin/perf" name no owner)
            lines = [ln for ln in out.stdout.splitlines() if not ln.startswith("diversion by ")]
            if out.returncode == 0 and lines:
                owner = {p.strip().split(":")[0] for p in lines[0].split(": ")[0].split(",")}
                break
        if owner is None or not owner & (pkgs | ESSENTIAL):
            unlisted[prog] = owner
    assert not unlisted, f"programs from packages .ci/packages lacks: {unlisted}"


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system")
def test_installer_check_mode_lists_missing(tmp_path):
    """--check reports what is missing and never runs apt; with everything installed it is silent."""
    fake = tmp_path / ".ci"
    fake.mkdir()
    shutil.copy(INSTALLER, fake / "install-packages")
    (fake / "packages").write_text("# comment\ncoreutils\npytracer-no-such-package-xyz\n")
    out = subprocess.run([str(fake / "install-packages"), "--check"], capture_output=True, text=True)
    assert out.returncode == 1
    assert "pytracer-no-such-package-xyz" in out.stderr and "coreutils" not in out.stderr
    (fake / "packages").write_text("coreutils\n")
    out = subprocess.run([str(fake / "install-packages"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == ""


def test_ci_and_make_share_the_list():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    with open(os.path.join(ROOT, "Makefile")) as f:
        mk = f.read()
    assert ".ci/install-packages" in ci and ".ci/install-packages" in mk
    assert "apt-get install" not in ci, ".ci/run installs packages only through .ci/packages"
