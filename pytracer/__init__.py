"""pytracer: which process is causing this TCP traffic? A tcpsnoop for Linux in pure Python and eBPF.

The engine (ELF -> specs -> BTF/CO-RE -> load -> attach -> ring buffer) lives in small modules here; what
the tools share is in `pytracer.toolkit`, the tools in `pytracer.tools.<name>` (docs/architecture.md). The
TCP tracer's embeddable API is `pytracer.tcpsnoop.TcpSnoop`. Heavy modules are imported lazily so that
`python -m pytracer` starts fast.
"""
__version__ = "0.1.0"
