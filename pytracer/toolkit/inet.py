"""Connections as the connection tools print them: addresses of a record as text, the IP version column,
and kernel times (bpf_ktime_get_ns, CLOCK_MONOTONIC) as wall-clock seconds."""
import socket
import time

IP_VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}


def address(family, raw):
    """A record's 16-byte address field as text (IPv4 in its first 4 bytes)."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


class Clock:
    """Converts bpf_ktime_get_ns() values to time.time() seconds (both clocks read once, at creation)."""

    def __init__(self):
        self.epoch = time.time() - time.monotonic()

    def wall(self, ktime_ns):
        return self.epoch + ktime_ns / 1e9
