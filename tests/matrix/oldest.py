#!/usr/bin/env python3
"""Pins for the Python matrix (tests/matrix/run): each install_requires of setup.cfg at its oldest allowed
version (`--oldest`: the lowest release on the index that satisfies `>=X`) or left as a range (newest).

    python3 tests/matrix/oldest.py --oldest     ->  pyelftools==0.32 construct==2.10.53
"""
import configparser
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def requirements():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]


def key(v):
    return tuple(int(x) for x in re.findall(r"\d+", v))


def oldest(req):
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", req)
    if not m:
        raise SystemExit(f"oldest: cannot read {req!r} (expected NAME>=VERSION)")
    name, floor = m.groups()
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name], capture_output=True, text=True)
    found = re.search(r"Available versions: (.*)", out.stdout)
    if not found:
        raise SystemExit(f"oldest: pip index versions {name} failed: {out.stderr[-300:]}")
    versions = [v.strip() for v in found.group(1).split(",") if re.fullmatch(r"[0-9.]+", v.strip())]
    ok = sorted((v for v in versions if key(v) >= key(floor)), key=key)
    if not ok:
        raise SystemExit(f"oldest: no release of {name} >= {floor}")
    return f"{name}=={ok[0]}"


if __name__ == "__main__":
    reqs = requirements()
    print(" ".join(oldest(r) for r in reqs) if "--oldest" in sys.argv else " ".join(reqs))
