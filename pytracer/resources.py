"""Package data read as package resources, so pytracer runs from a directory, an installed wheel or a zip
(dist/pytracer.pyz, see `make pyz`) alike.

`object_path(name)` names a shipped BPF object (pytracer/bpf/NAME) the way the rest of pytracer expects, a
string; `read(path)` returns a file's bytes: from the filesystem when it is there, else through
importlib.resources (the zip the package was imported from).
"""
import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def object_path(name):
    """The path of a BPF object shipped in pytracer/bpf (inside the archive when pytracer runs from a zip)."""
    return os.path.join(PACKAGE_DIR, "bpf", name)


def read(path):
    """The bytes of `path`: a file, or a resource of this package inside the archive it was imported from."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        rel = os.path.relpath(os.path.abspath(path), PACKAGE_DIR)
        if rel.startswith(os.pardir) or os.path.isdir(PACKAGE_DIR):
            raise
    import importlib.resources

    res = importlib.resources.files(__package__)
    for part in rel.split(os.sep):
        res = res.joinpath(part)
    try:
        return res.read_bytes()
    except (KeyError, OSError) as e:
        raise FileNotFoundError(2, f"no resource {rel} in package {__package__}: {e}", path) from None
