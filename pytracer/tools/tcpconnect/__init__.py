"""Active TCP opens (connect()) by process, with how the handshake ended: established or its error.

BPF side: bpf_bytecode/tcpconnect.bpf.c and its record tcpconnect.h; the connects in flight are kept by
bpf_bytecode/active_open.bpf.h (shared with tcpconnlat). Python side: cli.py."""
