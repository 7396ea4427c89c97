"""tcpsnoop: which process is causing this TCP traffic? (bpf_bytecode/tcpsnoop.bpf.c, tcpsnoop.h)"""
