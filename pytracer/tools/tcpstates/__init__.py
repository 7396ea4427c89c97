"""Every TCP state change (SYN_SENT -> ESTABLISHED -> ...), from sock:inet_sock_set_state.

The worked example of docs/architecture.md: bpf_bytecode/tcpstates.bpf.c and tcpstates.h, and cli.py."""
