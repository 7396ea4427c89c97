"""Start-up of dist/pytracer.pyz next to the installed package (issue 15): exec -> first header line on a
pty, first run (empty cache) and warm (same cache again), the variants alternated in every round.

    python bench/startup_pyz.py [--rounds N] [--pyz dist/pytracer.pyz]     prints JSON (root; `make pyz` first)

Variants: `python -m pytracer` (this interpreter, the package from the tree with its compiled bytecode, as
installed), `python3 -I dist/pytracer.pyz` with the same interpreter version (bytecode in the archive) and,
when the system python3 is another version, with it (sources compiled at every start).
"""
import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from startup import run_once  # noqa: E402


def variants(pyz, cache_dir):
    env = common.pytracer_env(cache_dir)
    bare = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTRACER_CACHE_DIR": cache_dir}
    out = {"python -m pytracer": common.Tool("python -m pytracer", [common.PY, "-m", "pytracer"], 1, env),
           "pytracer.pyz": common.Tool("pytracer.pyz", [common.PY, "-I", pyz], 1, bare)}
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system and os.path.realpath(system) != os.path.realpath(sys.executable):
        out["pytracer.pyz (system python3)"] = common.Tool("pytracer.pyz (system python3)", [system, "-I", pyz], 1,
                                                           bare)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pyz", default=os.path.join(common.ROOT, "dist", "pytracer.pyz"))
    a = ap.parse_args(argv)
    common.need_root()
    if not os.path.exists(a.pyz):
        raise SystemExit(f"{a.pyz} is missing: run `make pyz`")
    names = list(variants(a.pyz, "/nonexistent"))
    runs = {n: {"first": [], "warm": []} for n in names}
    for r in range(a.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            cache_dir = common.private_cache_dir()
            try:
                tool = variants(a.pyz, cache_dir)[name]
                runs[name]["first"].append(run_once(tool))
                runs[name]["warm"].append(run_once(tool))
            finally:
                shutil.rmtree(cache_dir, ignore_errors=True)
    summary = {n: {k + "_ms": round(1000 * common.median([x["first_line_s"] for x in v[k]]), 1)
                   for k in ("first", "warm")} for n, v in runs.items()}
    errors = {n: x["error"] for n, v in runs.items() for k in v for x in v[k] if "error" in x}
    print(json.dumps({"summary": summary, "rounds": a.rounds, "pyz_bytes": os.path.getsize(a.pyz),
                      "python": sys.version.split()[0], "errors": errors}, indent=1))


if __name__ == "__main__":
    main()
