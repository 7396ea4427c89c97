"""TCP connect latency: SYN sent to handshake done, by the process that called connect().

BPF side: bpf_bytecode/tcpconnlat.bpf.c and its record tcpconnlat.h; the connects in flight are kept by
bpf_bytecode/active_open.bpf.h (shared with tcpconnect). Python side: cli.py."""
