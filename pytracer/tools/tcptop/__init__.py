"""Which processes move the most TCP bytes? A table per interval of KB received and sent per process and connection.

BPF side: bpf_bytecode/tcptop.bpf.c (its map layout in tcptop.h) counts in the kernel per (owner,
connection), on sockowner.bpf.h's owner tracking. Python side: cli.py (reads the counters every interval;
the table, or JSON objects, one per process)."""
