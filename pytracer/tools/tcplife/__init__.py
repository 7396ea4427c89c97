"""One line per TCP connection when it closes: its process, addresses, bytes sent and received, duration.

BPF side: bpf_bytecode/tcplife.bpf.c (its record in tcplife.h) on sockowner.bpf.h's owner tracking, so the
line names the process that holds the socket (the client that connected, the server that accepted), never
the softirq's. Python side: cli.py (flags, columns as libbpf-tools' tcplife, JSON lines)."""
