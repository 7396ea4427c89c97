"""The tools: one package each, pytracer/tools/<name>/, found by looking at this folder (adding a tool
edits nothing else). A tool's package has a one-line docstring (what `pytracer --list` shows) and a front
end, <name>/cli.py, with `run(argv) -> exit status`; its BPF side is bpf_bytecode/<name>.bpf.c."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = "tcpsnoop"


def exists(name: str) -> bool:
    """Whether `name` is a tool (a package with a front end here)."""
    return (name.isidentifier() and not name.startswith("_")
            and os.path.isfile(os.path.join(HERE, name, "cli.py")))


def names():
    """Every tool's name, sorted."""
    return sorted(n for n in os.listdir(HERE) if exists(n))


def summary(name: str) -> str:
    """The first line of a tool's package docstring."""
    import importlib

    doc = importlib.import_module(f"{__name__}.{name}").__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def front_end(name: str):
    """The module with the tool's `run(argv)`."""
    import importlib

    return importlib.import_module(f"{__name__}.{name}.cli")
