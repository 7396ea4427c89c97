"""What the tools share, above the engine: owner filters (filters), task names and cgroups (owners),
loss accounting and its wording (losses), output writers (writers), the common command-line flags and the
read loop with its Unix manners (cli), and where the BPF objects are (objects).

The engine (loader, maps, ringbuf, ...) never imports this package; a tool imports the engine and this.
"""
