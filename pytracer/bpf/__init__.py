"""The compiled BPF objects pytracer ships (package data: tcpsnoop.bpf.o; built by `make bytecode`).

enginetest.bpf.o and invalid.bpf.o here are test fixtures: they stay in the tree, out of the wheel."""
