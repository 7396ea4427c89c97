"""Where the tools' BPF objects are: pytracer/bpf/<name>.bpf.o, built from bpf_bytecode/<name>.bpf.c by
`make bytecode` (every *.bpf.c there, so a new tool needs no Makefile edit) and shipped as package data."""
import os

BPF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bpf")


def object_path(name: str) -> str:
    """The path of the shipped object `name` (e.g. "tcpsnoop" -> .../pytracer/bpf/tcpsnoop.bpf.o)."""
    return os.path.join(BPF_DIR, f"{name}.bpf.o")
