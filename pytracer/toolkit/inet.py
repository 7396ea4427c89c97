"""Kernel times (bpf_ktime_get_ns, CLOCK_MONOTONIC) as wall-clock seconds, as the tools print them.
(Addresses as text are toolkit/addresses.py's.)"""
import time


class Clock:
    """Converts bpf_ktime_get_ns() values to time.time() seconds (both clocks read once, at creation)."""

    def __init__(self):
        self.epoch = time.time() - time.monotonic()

    def wall(self, ktime_ns):
        return self.epoch + ktime_ns / 1e9
