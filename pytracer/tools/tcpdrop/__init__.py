"""TCP packets the kernel drops, with the drop reason and the kernel stack (skb:kfree_skb).

bcc's tcpdrop on a tracepoint: bpf_bytecode/tcpdrop.bpf.c and tcpdrop.h, and cli.py."""
