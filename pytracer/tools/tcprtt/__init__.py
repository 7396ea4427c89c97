"""A histogram of TCP's smoothed round trip time, counted in the kernel (tcp:tcp_probe); per address with -b/-B.

libbpf-tools' tcprtt on a tracepoint: bpf_bytecode/tcprtt.bpf.c and tcprtt.h, cli.py (flags, reading the
map) and histogram.py (the log2 histogram as text)."""
