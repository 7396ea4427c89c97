"""Which process is causing this TCP traffic? One line per TCP segment, named after the socket's owner.

BPF side: bpf_bytecode/tcpsnoop.bpf.c, its record and constants in bpf_bytecode/tcpsnoop.h. Python side:
tracer.py (TcpSnoop: records -> lines; the embeddable API) and cli.py (flags and output formats)."""
