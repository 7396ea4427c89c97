"""TCP retransmissions with their connection and state (tcp:tcp_retransmit_skb, tcp_retransmit_synack); -c counts.

bcc's tcpretrans on tracepoints: bpf_bytecode/tcpretrans.bpf.c and tcpretrans.h, and cli.py."""
