"""TCP connections accepted (accept(), accept4()), named after the process that accepted them.

BPF side: bpf_bytecode/tcpaccept.bpf.c and its record tcpaccept.h (the descriptor -> socket helpers of
bpf_bytecode/fd.bpf.h). Python side: cli.py."""
